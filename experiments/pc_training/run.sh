#!/usr/bin/env bash
# Reproduces every table of README.md: per data set, the old model, then ONE multirun over the
# positive-congruent variants x 3 seeds (on digits also one BCT multirun and the epoch-time benchmark);
# then summarize.py.
# Usage (from anywhere): experiments/pc_training/run.sh [digits] [topical_chat]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG=${TRUSTML_LOG_DIR:-$PWD/experiments/pc_training/logs}
export TRUSTML_LOG_DIR=$LOG
TRUSTML=(.venv/bin/python -m trustml.cli.main)
SEARCH=hydra.searchpath=[file://experiments/pc_training/conf]
QUIET=(trainer.enable_progress_bar=false print_results=false)

datasets=("$@")
[ ${#datasets[@]} -gt 0 ] || datasets=(digits topical_chat)
for dataset in "${datasets[@]}"; do
  case $dataset in
    digits)
      # a smaller training split (35%) leaves a 50% test split (899 samples) so that flips are countable
      DATA=(experiment=digits_erm data.val_fraction=0.15 data.test_fraction=0.5 trainer.max_epochs=20)
      OLD=(model.hidden_sizes=[64]) ;;         # old: MLP 64; new: MLP 256-128 (digits_erm)
    topical_chat)
      # all 1,078 conversations of the training files (21.0k train / 2.3k val turns) and the 539 of the
      # test file (11.8k turns); MiniLM embeddings are cached on disk after the first run
      DATA=(experiment=topical_chat_sentiment_minilm trainer.max_epochs=10)
      OLD=(model.head_hidden_sizes=[]) ;;      # old: linear head on frozen MiniLM; new: 256-unit MLP head
    *) echo "unknown data set '$dataset' (digits, topical_chat)" >&2; exit 2 ;;
  esac
  "${TRUSTML[@]}" "${DATA[@]}" "${QUIET[@]}" "${OLD[@]}" seed=100 hydra.run.dir="$LOG/$dataset/old"
  # shared variants, and the focal/LDI ones whose lambda was chosen on this data set's validation split
  VARIANTS=+pc_variant=untreated,naive,distill,$dataset/fd_kl,$dataset/fd_lm,$dataset/ldi
  "${TRUSTML[@]}" -m "$SEARCH" "${DATA[@]}" "${QUIET[@]}" method=pc \
    "method.old_run_dirs=[$LOG/$dataset/old]" "$VARIANTS" seed=0,1,2 hydra.sweep.dir="$LOG/$dataset/new"
  if [ "$dataset" = digits ]; then
    # BCT: old MLP 64-64 (20 epochs); new MLP 512-64 (60 epochs). Influence weight 0 is an independently
    # trained new model (the reference); 1 and 10 are BCT (10 chosen on the validation queries, README)
    "${TRUSTML[@]}" "${DATA[@]}" "${QUIET[@]}" model.hidden_sizes=[64,64] seed=100 hydra.run.dir="$LOG/$dataset/bct_old"
    "${TRUSTML[@]}" -m "${DATA[@]}" "${QUIET[@]}" method=bct "method.old_run_dir=$LOG/$dataset/bct_old" \
      model.hidden_sizes=[512,64] trainer.max_epochs=60 method.influence_weight=0,1,10 seed=0,1,2 \
      hydra.sweep.dir="$LOG/$dataset/bct"
    # epoch time of PC against untreated, variants interleaved in one process (writes its README table)
    (cd experiments/pc_training && ../../.venv/bin/python epoch_time.py "$LOG/$dataset/old")
  fi
done
.venv/bin/python experiments/pc_training/summarize.py "$LOG"
