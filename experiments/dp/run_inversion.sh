#!/usr/bin/env bash
# ModIvA canary inversion (README section "Canary extraction by model inversion"): a text classifier trained on
# Topical-Chat turns with a LENGTH-digit canary ("my pin code is d d d d", label Disgusted) inserted REPS times;
# one canary per training run (secret drawn with --seed c, c = 0..CANARIES-1: the same secrets in every cell of a
# length). Every run is attacked by `trustml-audit invert` (no candidate list) and ranked by
# `trustml-audit canary` (exposure: every candidate scored), both on the weights after the last epoch; the `none`
# arm's runs are attacked a second time on their best-validation checkpoint, which is the early-stopping arm
# (training stopped at the epoch of best val/acc, its weights restored). summarize_inversion.py writes the table.
#
# Arms (fixed before any run of this version): none = AdamW at the model's lr, every dropout 0 (the head's and, for
# the small BERT, the encoder's hidden and attention dropout); dropout = the same with every dropout 0.3;
# early_stopping = none's best.ckpt; dp_eps8 / dp_eps1 = DP-Adam at the model's lr calibrated to epsilon 8 / 1
# (delta 0.1/N, the planned 15 epochs), dropout 0. The model's lr: 1e-3 for the small BERT, 5e-5 for MiniLM (at
# 1e-3 its fine-tuning diverged to the majority class within 2-8 epochs in a first attempt).
# Models: small = BERT from scratch (2 layers, width 64, MiniLM's tokenizer, every weight trained); minilm = the
# offline all-MiniLM-L6-v2 fine-tuned whole (its own encoder dropout 0.1 cannot be changed from the config; head
# dropout as the arm says).
#
# Usage (from anywhere): experiments/dp/run_inversion.sh
#   env: MODEL=small|minilm LENGTH=4 REPS="100 10" ARMS="none dropout dp_eps8" CANARIES=10 FIRST=0
#        CONVERSATIONS=30 TEST_LINES=500 EPOCHS=15 STEPS=200 RESTARTS=8 LR TRUSTML_LOG_DIR TRUSTML_SHARED_DATA
#        EXPOSURE_SAMPLE=N: the exposure rank estimated from N uniformly sampled candidates (`trustml-audit canary
#        --sample N`, exact when no sampled candidate scores at or below the secret) instead of every candidate
# Canaries FIRST..CANARIES-1 of a cell train in one Hydra sweep; a canary whose run finished is not trained again
# and one already attacked is skipped, so a stopped run continues where it stopped and cells split over processes
# (FIRST=0 CANARIES=5 / FIRST=5 CANARIES=10).
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG=${TRUSTML_LOG_DIR:-$PWD/experiments/dp/logs}/inversion
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MODEL_KIND=${MODEL:-small}
LENGTH=${LENGTH:-4}
REPS=${REPS:-"100 10"}
ARMS=${ARMS:-"none dropout dp_eps8 dp_eps1"}
FIRST=${FIRST:-0}
CANARIES=${CANARIES:-10}
CONVERSATIONS=${CONVERSATIONS:-30}
TEST_LINES=${TEST_LINES:-500}
EPOCHS=${EPOCHS:-15}
STEPS=${STEPS:-200}
RESTARTS=${RESTARTS:-8}
EXPOSURE_SAMPLE=${EXPOSURE_SAMPLE:-0}
DATA=${TRUSTML_SHARED_DATA:-../shared/data}/topical_chat
NICE=(nice -n 10)
QUIET=(trainer.enable_progress_bar=false print_results=false logger=csv)

dropout_overrides() {  # $1: the dropout probability of every dropout site of the model
  if [ "$MODEL_KIND" = small ]; then
    echo "model.dropout=$1 +model.random_init_config.hidden_dropout_prob=$1 +model.random_init_config.attention_probs_dropout_prob=$1"
  else
    echo "model.dropout=$1"
  fi
}
case $MODEL_KIND in
  small) LR=${LR:-0.001}; MODEL=(model=hf_tiny model.freeze_encoder=false model.max_length=48 model.random_init_config.hidden_size=64
               model.random_init_config.intermediate_size=128 model.random_init_config.num_attention_heads=4) ;;
  minilm) LR=${LR:-0.00005}; MODEL=(model=hf_encoder model.freeze_encoder=false model.cache_embeddings=false model.max_length=48) ;;
  *) echo "unknown MODEL '$MODEL_KIND' (small, minilm)" >&2; exit 2 ;;
esac

if [ ! -f "$LOG/train.jsonl" ]; then
  .venv/bin/python experiments/dp/topical_chat_jsonl.py --data-dir "$DATA" --max-conversations "$CONVERSATIONS" \
    --out "$LOG/train.jsonl"
  # the first TEST_LINES test turns: every audit recomputes the attacked checkpoint's test accuracy
  head -n "$TEST_LINES" "$LOG/test.jsonl" > "$LOG/test.tmp" && mv "$LOG/test.tmp" "$LOG/test.jsonl"
fi
for reps in $REPS; do
  data="$LOG/data/len$LENGTH/reps$reps"
  files=()
  for ((c = FIRST; c < CANARIES; c++)); do
    file="$data/canary$c.jsonl"
    [ -f "$file.canary.json" ] || .venv/bin/trustml-audit insert-canary "$LOG/train.jsonl" "$file" \
      --label Disgusted --repetitions "$reps" --secret-length "$LENGTH" --seed "$c" > /dev/null
    files+=("$file")
  done
  for arm in $ARMS; do
    case $arm in
      none) OPT=(optimizer=adamw optimizer.lr=$LR $(dropout_overrides 0.0)) ;;
      dropout) OPT=(optimizer=adamw optimizer.lr=$LR $(dropout_overrides 0.3)) ;;
      dp_eps8) OPT=(optimizer=dp_adam optimizer.target_epsilon=8 optimizer.lr=$LR $(dropout_overrides 0.0)) ;;
      dp_eps1) OPT=(optimizer=dp_adam optimizer.target_epsilon=1 optimizer.lr=$LR $(dropout_overrides 0.0)) ;;
      *) echo "unknown arm '$arm' (none, dropout, dp_eps8, dp_eps1; early stopping is none's best checkpoint)" >&2
         exit 2 ;;
    esac
    cell="$LOG/$MODEL_KIND/len$LENGTH/$arm/reps$reps"
    todo=()
    for ((c = FIRST; c < CANARIES; c++)); do
      [ -f "$cell/$c/results.json" ] || { rm -rf "${cell:?}/$c"; todo+=("$c"); }
    done
    for c in "${todo[@]}"; do
      # one run per canary, in the cell's folder as <canary>/ (not a sweep: canaries split over processes)
      "${NICE[@]}" .venv/bin/trustml data=text_classification "data.train_path=$data/canary$c.jsonl" \
        "data.val_path=$LOG/val.jsonl" "data.test_path=$LOG/test.jsonl" data.batch_size=32 "${MODEL[@]}" \
        trainer.max_epochs="$EPOCHS" "${QUIET[@]}" "${OPT[@]}" seed=0 hydra.run.dir="$cell/$c" > /dev/null
    done
    best=$([ "$arm" = none ] && echo 1 || echo 0)
    "${NICE[@]}" .venv/bin/python - "$cell" "$data" "$FIRST" "$CANARIES" "$STEPS" "$RESTARTS" "$best" \
    "$EXPOSURE_SAMPLE" <<'PY'
import sys
from pathlib import Path

from trustml.cli.audit import main

cell, data, first, canaries, steps, restarts, best, sample = sys.argv[1:]
sampling = ["--sample", sample] if int(sample) else []
checkpoints = [("last", "")] + ([("best", "_best")] if best == "1" else [])
for k in range(int(first), int(canaries)):
    run, spec = f"{cell}/{k}", f"{data}/canary{k}.jsonl.canary.json"
    for checkpoint, suffix in checkpoints:
        for name, argv in (
            ("invert/inversion.json", ["invert", run, "--spec", spec, "--steps", steps, "--restarts", restarts]),
            ("exposure/canary.json", ["canary", run, "--spec", spec, *sampling]),
        ):
            folder, file = name.split("/")
            out = f"{run}/{folder}{suffix}"
            if Path(out, file).is_file():
                continue
            try:
                main([*argv, "--checkpoint", checkpoint, "--out", out])
            except SystemExit as exc:
                if exc.code:
                    raise
PY
  done
done
