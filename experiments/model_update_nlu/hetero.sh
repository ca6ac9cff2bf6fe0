#!/usr/bin/env bash
# Heterogeneous retrieval on MASSIVE (updated split): a large gallery model (6-layer MiniLM), a small query model
# (its first 3 layers) trained independently and with BCT against the large one; then the cross matrix.
# Usage: [BCT_WEIGHTS="1 10"] experiments/model_update_nlu/hetero.sh SEED [SEED ...]   (logs: logs/hetero/seed<S>/{large,small,small_bct};
#        the matrix also goes to results/hetero_seed<S>.md, committed: the run folders stay out of git)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1
LOG=experiments/model_update_nlu/logs/hetero
DATA=${MASSIVE_DIR:-$(pwd)/../shared/data/massive_add_data}
TRUSTML="nice -n 10 .venv/bin/trustml"
COMMON=(data=massive "data.path=$DATA" data.stage=updated data.batch_size=32 data.eval_batch_size=256
        model=hf_encoder model.freeze_encoder=false model.cache_embeddings=false model.max_length=32
        optimizer=adamw optimizer.lr=1e-4 trainer.max_epochs=${EPOCHS:-8} print_results=false
        trainer.enable_progress_bar=false)
mkdir -p experiments/model_update_nlu/results
for SEED in "$@"; do
  D=$LOG/seed$SEED
  [ -f "$D/large/results.json" ] || $TRUSTML "${COMMON[@]}" method=erm seed=$SEED "hydra.run.dir=$D/large"
  [ -f "$D/small/results.json" ] || $TRUSTML "${COMMON[@]}" model.num_layers=3 method=erm seed=$SEED \
    "hydra.run.dir=$D/small"
  NAMES=(large small)
  for W in ${BCT_WEIGHTS:-1}; do  # BCT's influence weight; small_bct is weight 1, small_bct_w<W> the others
    NAME=small_bct$([ "$W" = 1 ] || echo "_w$W")
    NAMES+=("$NAME")
    [ -f "$D/$NAME/results.json" ] || $TRUSTML "${COMMON[@]}" model.num_layers=3 method=bct \
      method.old_run_dir=$D/large method.influence_weight=$W seed=$SEED "hydra.run.dir=$D/$NAME"
  done
  nice -n 10 .venv/bin/python experiments/model_update_nlu/cross_matrix.py "$D" "$DATA" "${NAMES[@]}" \
    | tee "$D/cross_matrix.md" "experiments/model_update_nlu/results/hetero_seed$SEED.md"
done
