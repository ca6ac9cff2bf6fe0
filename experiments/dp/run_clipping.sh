#!/usr/bin/env bash
# Automatic vs flat clipping (README section "Automatic vs flat clipping"), digits and MASSIVE intents.
# Protocol (fixed before any run of this version): DP-SGD calibrated to epsilon 3 and 8 (delta = the plugin's
# default 0.1/N), 30 epochs, expected batch 64 (Poisson), dropout 0, seeds 0-2. Flat clipping: bound
# C in {0.1, 1, 10} x lr in LRS; automatic clipping (gamma 0.01): C = 1 (it only scales the update) x lr in LRS.
# Selection: per (data, clipping, epsilon) the setting with the best mean val/acc_best over the seeds; its test
# accuracy is reported as mean +- std over the seeds (summarize_clipping.py).
# Models: digits = the MLP 256-128 of experiment=digits_erm; MASSIVE = frozen MiniLM (cached embeddings) with a
# 256-unit head, data.stage=updated of ../shared/data/massive_add_data (1,500 training utterances).
# Usage (from anywhere): experiments/dp/run_clipping.sh   (env: DATASETS="digits massive" SEEDS=0,1,2
#   LRS=0.1,0.5,2 TRUSTML_LOG_DIR TRUSTML_SHARED_DATA). A (data, clipping, LRS) sweep whose results exist is skipped;
#   each lands in LOG/clipping/<data>/<clipping>_lr<LRS>, so a second grid (LRS=0.2,1) adds runs beside the first.
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG=${TRUSTML_LOG_DIR:-$PWD/experiments/dp/logs}/clipping
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATASETS=${DATASETS:-"digits massive"}
SEEDS=${SEEDS:-0,1,2}
LRS=${LRS:-0.1,0.5,2}
MASSIVE=${TRUSTML_SHARED_DATA:-../shared/data}/massive_add_data
COMMON=(trainer.max_epochs=30 data.batch_size=64 model.dropout=0.0 trainer.enable_progress_bar=false
        print_results=false logger=csv optimizer=dp_sgd optimizer.target_epsilon=3,8 "optimizer.lr=$LRS"
        "seed=$SEEDS")
for data in $DATASETS; do
  case $data in
    digits) DATA=(experiment=digits_erm) ;;
    massive) DATA=(data=massive "data.path=$(realpath "$MASSIVE")" data.stage=updated model=hf_encoder
                   "model.head_hidden_sizes=[256]") ;;
    *) echo "unknown data set '$data' (digits, massive)" >&2; exit 2 ;;
  esac
  for clipping in flat automatic; do
    bounds=$([ "$clipping" = flat ] && echo 0.1,1,10 || echo 1)
    sweep="$LOG/$data/${clipping}_lr${LRS//,/_}"
    [ -f "$sweep/done" ] && continue
    rm -rf "$sweep"
    nice -n 10 .venv/bin/trustml -m "${DATA[@]}" "${COMMON[@]}" optimizer.clipping=$clipping \
      "optimizer.max_grad_norm=$bounds" hydra.sweep.dir="$sweep" > /dev/null
    touch "$sweep/done"
  done
done
