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
      # the first 300 conversations of the training files and of the test file (~6.5k turns each)
      DATA=(experiment=topical_chat_sentiment_minilm data.max_conversations=300 trainer.max_epochs=10)
      OLD=(model.head_hidden_sizes=[]) ;;      # old: linear head on frozen MiniLM; new: 256-unit MLP head
    *) echo "unknown data set '$dataset' (digits, topical_chat)" >&2; exit 2 ;;
  esac
  "${TRUSTML[@]}" "${DATA[@]}" "${QUIET[@]}" "${OLD[@]}" seed=100 hydra.run.dir="$LOG/$dataset/old"
  # shared variants, and the focal/LDI ones whose lambda was chosen on this data set's validation split
  VARIANTS=+pc_variant=untreated,naive,distill,$dataset/fd_kl,$dataset/fd_lm,$dataset/ldi
  "${TRUSTML[@]}" -m "$SEARCH" "${DATA[@]}" "${QUIET[@]}" method=pc \
    "method.old_run_dirs=[$LOG/$dataset/old]" "$VARIANTS" seed=0,1,2 hydra.sweep.dir="$LOG/$dataset/new"
  if [ "$dataset" = digits ]; then
    # BCT: influence weight 0 is an independently trained new model (the reference); 1 and 3 are BCT
    "${TRUSTML[@]}" -m "${DATA[@]}" "${QUIET[@]}" method=bct "method.old_run_dir=$LOG/$dataset/old" \
      model.hidden_sizes=[256,64] method.influence_weight=0,1,3 seed=0,1,2 hydra.sweep.dir="$LOG/$dataset/bct"
    # epoch time of PC against untreated, variants interleaved in one process (writes its README table)
    (cd experiments/pc_training && ../../.venv/bin/python epoch_time.py "$LOG/$dataset/old")
  fi
done
.venv/bin/python experiments/pc_training/summarize.py "$LOG"
