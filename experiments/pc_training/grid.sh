#!/usr/bin/env bash
# The validation grids from which select_weight.py chose the settings in conf/pc_variant/<dataset>/ (README,
# "Choosing the settings"). Needs the old model of run.sh (<log>/<dataset>/old). Every option of a grid
# point is given explicitly, so the grids do not depend on the chosen values in the variant files.
# Usage (from anywhere): experiments/pc_training/grid.sh digits|topical_chat|topical_chat_retrain
# (topical_chat_retrain: the exploratory same-architecture update; its old model is the new model's MLP head,
#  trained first: trustml experiment=topical_chat_sentiment_minilm trainer.max_epochs=10 seed=100
#  hydra.run.dir=<log>/topical_chat_retrain/old)
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG=${TRUSTML_LOG_DIR:-$PWD/experiments/pc_training/logs}
export TRUSTML_LOG_DIR=$LOG
SEARCH=hydra.searchpath=[file://experiments/pc_training/conf]
QUIET=(trainer.enable_progress_bar=false print_results=false)

dataset=${1:?usage: grid.sh digits|topical_chat|topical_chat_retrain}
case $dataset in
  digits)
    DATA=(experiment=digits_erm data.val_fraction=0.15 data.test_fraction=0.5 trainer.max_epochs=20)
    SEEDS=(0); WEIGHTS=0.01,0.03,0.1,0.3 ;;
  topical_chat|topical_chat_retrain)
    DATA=(experiment=topical_chat_sentiment_minilm trainer.max_epochs=10)
    SEEDS=(0 1); WEIGHTS=0.03,0.1,0.3,1,3 ;;
  *) echo "unknown data set '$dataset' (digits, topical_chat, topical_chat_retrain)" >&2; exit 2 ;;
esac
run() {  # run <sweep name> <seed> <overrides...>
  local name=$1 seed=$2; shift 2
  .venv/bin/python -m trustml.cli.main -m "$SEARCH" "${DATA[@]}" "${QUIET[@]}" method=pc \
    "method.old_run_dirs=[$LOG/$dataset/old]" seed="$seed" "$@" hydra.sweep.dir="$LOG/$dataset/grid/$name/seed$seed"
}
for seed in "${SEEDS[@]}"; do
  run untreated "$seed" +pc_variant=untreated
  # the issue's defaults: focal weights alpha=1, beta=5; KL at tau=100; LDI unweighted (beta=0)
  KL=(+pc_variant=$dataset/fd_kl) LM=(+pc_variant=$dataset/fd_lm)
  run fd_kl "$seed" "${KL[@]}" method.temperature=100 method.alpha=1 method.beta=5 method.weight=$WEIGHTS
  run fd_lm "$seed" "${LM[@]}" method.alpha=1 method.beta=5 method.weight=$WEIGHTS
  run ldi "$seed" +pc_variant=$dataset/ldi method.alpha=1 method.beta=0 method.weight=$WEIGHTS
  if [ "$dataset" = topical_chat ]; then
    # lower temperatures, and distillation only where the old model is right (alpha=0, beta=1)
    run kl_tau "$seed" "${KL[@]}" method.temperature=2,10 method.alpha=1 method.beta=5 method.weight=0.1,0.3,1,3
    run kl_old_right "$seed" "${KL[@]}" method.temperature=2 method.alpha=0 method.beta=1 method.weight=0.3,1,3,10
    run lm_old_right "$seed" "${LM[@]}" method.alpha=0 method.beta=1 method.weight=0.1,0.3,1,3
  fi
done
.venv/bin/python experiments/pc_training/select_weight.py "$LOG/$dataset"/grid/*/seed*
