#!/usr/bin/env bash
# MLM-head probes (train_mlm_head.py) of the offline MiniLM and of the fine-tuned encoders of the study
# (logs/study2/train/<task>_s<seed>), each scored on CrowS-Pairs by trustml-fairness; one shared setting for all.
# Usage: experiments/fairness/run_mlm_probes.sh NAME...   (NAME = offline_minilm | topical_chat_s0 | massive_s1 | ...)
# Writes experiments/fairness/logs/mlm_head_runs/<NAME>/ (the probe + metrics.json) and .../<NAME>_crows/ (results).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=experiments/fairness/logs/mlm_head_runs
SETTINGS=(--max-sentences 4000 --maskings 1 --epochs 3)
CROWS=experiments/fairness/logs/crows_pairs_sample150.csv
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
for name in "$@"; do
    if [ "$name" = offline_minilm ]; then run=(); else run=(--run-dir "experiments/fairness/logs/study2/train/$name"); fi
    echo "$(date -u +%T) start $name"
    nice -n 10 .venv/bin/python experiments/fairness/train_mlm_head.py "${SETTINGS[@]}" "${run[@]}" \
        --out "$OUT/$name" > "$OUT/$name.log" 2>&1
    echo "$(date -u +%T) probe trained $name"
    nice -n 10 .venv/bin/trustml-fairness ceat.enabled=false crows_pairs.mlm="$OUT/$name" crows_pairs.path="$CROWS" \
        hydra.run.dir="$OUT/${name}_crows" > "$OUT/${name}_crows.log" 2>&1
    echo "$(date -u +%T) crows scored $name"
done
