#!/usr/bin/env bash
# ModIvA canary inversion (README section "Canary extraction by model inversion"): a small BERT trained from
# scratch on Topical-Chat turns with a 4-digit canary ("my pin code is d d d d", label Disgusted) inserted
# REPS times; one canary per training run (secret drawn with --seed c, c = 0..CANARIES-1: the same secrets in
# every cell); arms: no defence (AdamW) and DP-Adam at epsilon 8. Every run is attacked by
# `trustml-audit invert` (no candidate list) and ranked by `trustml-audit canary` (exposure: all 10,000
# candidates scored), both on the weights after the last epoch; then summarize_inversion.py writes the table.
# Usage (from anywhere): experiments/dp/run_inversion.sh   (env: REPS="100 10" ARMS="nonprivate dp_eps8"
#   CANARIES=5 CONVERSATIONS=30 TEST_LINES=500 EPOCHS=15 STEPS=200 RESTARTS=8; TRUSTML_LOG_DIR;
#   TRUSTML_SHARED_DATA). The canaries of one cell train in one Hydra sweep (re-run unless every run of the
#   cell completed); canaries already attacked are skipped, so a stopped run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG=${TRUSTML_LOG_DIR:-$PWD/experiments/dp/logs}/inversion
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
REPS=${REPS:-"100 10"}
ARMS=${ARMS:-"nonprivate dp_eps8"}
CANARIES=${CANARIES:-5}
CONVERSATIONS=${CONVERSATIONS:-30}
TEST_LINES=${TEST_LINES:-500}
EPOCHS=${EPOCHS:-15}
STEPS=${STEPS:-200}
RESTARTS=${RESTARTS:-8}
DATA=${TRUSTML_SHARED_DATA:-../shared/data}/topical_chat
NICE=(nice -n 10)
QUIET=(trainer.enable_progress_bar=false print_results=false logger=csv)
# 2 layers, width 64, MiniLM's tokenizer, every weight trained (as the canary-exposure section)
MODEL=(model=hf_tiny model.freeze_encoder=false model.max_length=48 model.random_init_config.hidden_size=64
       model.random_init_config.intermediate_size=128 model.random_init_config.num_attention_heads=4)

if [ ! -f "$LOG/train.jsonl" ]; then
  .venv/bin/python experiments/dp/topical_chat_jsonl.py --data-dir "$DATA" --max-conversations "$CONVERSATIONS" \
    --out "$LOG/train.jsonl"
  # the first TEST_LINES test turns: every audit recomputes the attacked checkpoint's test accuracy
  head -n "$TEST_LINES" "$LOG/test.jsonl" > "$LOG/test.tmp" && mv "$LOG/test.tmp" "$LOG/test.jsonl"
fi
for reps in $REPS; do
  files=()
  for ((c = 0; c < CANARIES; c++)); do
    file="$LOG/data/reps$reps/canary$c.jsonl"
    [ -f "$file.canary.json" ] || .venv/bin/trustml-audit insert-canary "$LOG/train.jsonl" "$file" \
      --label Disgusted --repetitions "$reps" --secret-length 4 --seed "$c" > /dev/null
    files+=("$file")
  done
  for arm in $ARMS; do
    case $arm in
      nonprivate) OPT=(optimizer=adamw optimizer.lr=0.001) ;;
      dp_eps8) OPT=(optimizer=dp_adam optimizer.target_epsilon=8 optimizer.lr=0.001) ;;
      *) echo "unknown arm '$arm' (nonprivate, dp_eps8)" >&2; exit 2 ;;
    esac
    cell="$LOG/$arm/reps$reps"
    trained=0
    for ((c = 0; c < CANARIES; c++)); do [ -f "$cell/$c/results.json" ] && trained=$((trained + 1)); done
    [ "$trained" -eq "$CANARIES" ] || rm -rf "$cell"
    [ "$trained" -eq "$CANARIES" ] || "${NICE[@]}" .venv/bin/trustml -m data=text_classification "data.train_path=$(IFS=,; echo "${files[*]}")" \
      "data.val_path=$LOG/val.jsonl" "data.test_path=$LOG/test.jsonl" data.batch_size=32 "${MODEL[@]}" \
      trainer.max_epochs="$EPOCHS" "${QUIET[@]}" "${OPT[@]}" seed=0 hydra.sweep.dir="$cell"
    # sweep job k trained on canary k; attack and rank every one in one process
    "${NICE[@]}" .venv/bin/python - "$cell" "$LOG/data/reps$reps" "$CANARIES" "$STEPS" "$RESTARTS" <<'PY'
import sys
from pathlib import Path

from trustml.cli.audit import main

cell, data, canaries, steps, restarts = sys.argv[1:]
for k in range(int(canaries)):
    run, spec = f"{cell}/{k}", f"{data}/canary{k}.jsonl.canary.json"
    if Path(f"{run}/invert/inversion.json").is_file() and Path(f"{run}/exposure/canary.json").is_file():
        continue
    for argv in (
        ["invert", run, "--spec", spec, "--checkpoint", "last", "--steps", steps, "--restarts", restarts,
         "--out", f"{run}/invert"],
        ["canary", run, "--spec", spec, "--checkpoint", "last", "--out", f"{run}/exposure"],
    ):
        try:
            main(argv)
        except SystemExit as exc:
            if exc.code:
                raise
PY
  done
done
.venv/bin/python experiments/dp/summarize_inversion.py "$LOG"
