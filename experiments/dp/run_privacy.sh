#!/usr/bin/env bash
# Reproduces sections 2 (privacy-utility) and 3 (audits) of README.md, then writes their tables (each between its
# own README markers: a run of some sections rewrites only the tables whose runs are in the log directory). The
# audit tables show the attacked checkpoint's epoch and test accuracy, as trustml-audit reports them.
# Usage (from anywhere): experiments/dp/run_privacy.sh [utility] [audit] [canary]   (default: all three)
# Topical-Chat parts read ../shared/data/topical_chat (override with TRUSTML_SHARED_DATA).
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG=${TRUSTML_LOG_DIR:-$PWD/experiments/dp/logs}
export TRUSTML_LOG_DIR=$LOG OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TRUSTML=(.venv/bin/trustml)
AUDIT=(.venv/bin/trustml-audit)
QUIET=(trainer.enable_progress_bar=false print_results=false logger=csv)
# The audits attack the end of training (--checkpoint last): the default callbacks rewrite last.ckpt after every
# epoch (conf/callbacks/default.yaml, callbacks.last_checkpoint).
SEEDS=seed=0,1,2
# learning rates tried for every privacy level; the best one on validation accuracy is reported
LRS=optimizer.lr=0.05,0.2,0.5

DIGITS=(experiment=digits_erm model.dropout=0.0 trainer.max_epochs=30)
# frozen MiniLM (embeddings cached), 256-unit MLP head, all conversations (21k training turns)
TOPICAL=(experiment=topical_chat_sentiment_minilm trainer.max_epochs=10)

sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(utility audit canary)
for section in "${sections[@]}"; do
  case $section in
    utility)
      # accuracy vs epsilon: DP-SGD calibrated to epsilon 1/3/8 (delta = 0.1/N) vs non-private SGD, same model,
      # batches, epochs and learning-rate grid
      for name in digits topical_chat; do
        if [ "$name" = digits ]; then DATA=("${DIGITS[@]}"); else DATA=("${TOPICAL[@]}"); fi
        "${TRUSTML[@]}" -m "${DATA[@]}" "${QUIET[@]}" optimizer=dp_sgd optimizer.target_epsilon=1,3,8 "$LRS" "$SEEDS" \
          hydra.sweep.dir="$LOG/utility/$name/dp"
        "${TRUSTML[@]}" -m "${DATA[@]}" "${QUIET[@]}" optimizer=sgd optimizer.momentum=0.0 "$LRS" "$SEEDS" \
          hydra.sweep.dir="$LOG/utility/$name/nonprivate"
      done ;;
    audit)
      # membership inference in an overfit setting: digits MLP on a random half of the training split,
      # 100 epochs, no dropout; 8 shadow runs on other random halves, trained exactly like their target (same
      # seed, so target and shadows differ only in their data)
      HALF=(experiment=digits_erm model.dropout=0.0 trainer.max_epochs=100 data.train_subset_fraction=0.5)
      for setting in nonprivate dp_eps8 dp_eps1; do
        case $setting in
          nonprivate) OPT=(optimizer=adam optimizer.lr=0.001) ;;
          dp_eps8) OPT=(optimizer=dp_sgd optimizer.target_epsilon=8 optimizer.lr=0.5) ;;
          dp_eps1) OPT=(optimizer=dp_sgd optimizer.target_epsilon=1 optimizer.lr=0.2) ;;
        esac
        "${TRUSTML[@]}" "${HALF[@]}" "${QUIET[@]}" "${OPT[@]}" data.train_subset_seed=1000 seed=0 \
          hydra.run.dir="$LOG/audit/$setting/target"
        "${TRUSTML[@]}" -m "${HALF[@]}" "${QUIET[@]}" "${OPT[@]}" data.train_subset_seed=0,1,2,3,4,5,6,7 seed=0 \
          hydra.sweep.dir="$LOG/audit/$setting/shadows"
        "${AUDIT[@]}" mia "$LOG/audit/$setting/target" --shadows "$LOG/audit/$setting/shadows" --checkpoint last \
          --out "$LOG/audit/$setting/result" > /dev/null
      done ;;
    canary)
      # canary exposure: "my pin code is d d d" (1,000 candidate secrets) labelled with a rare sentiment, inserted
      # 10 and 100 times into Topical-Chat turns. The classifier must be able to memorize tokens, so it is a small
      # BERT (2 layers, width 64, MiniLM's tokenizer) trained from scratch, all weights trainable; without DP
      # (AdamW) and with DP-Adam at epsilon 8.
      .venv/bin/python experiments/dp/topical_chat_jsonl.py --max-conversations 300 --out "$LOG/canary/train.jsonl"
      MODEL=(model=hf_tiny model.freeze_encoder=false model.max_length=48 model.random_init_config.hidden_size=64
             model.random_init_config.intermediate_size=128 model.random_init_config.num_attention_heads=4)
      for reps in 10 100; do
        "${AUDIT[@]}" insert-canary "$LOG/canary/train.jsonl" "$LOG/canary/train_canary$reps.jsonl" \
          --label Disgusted --repetitions "$reps" --secret-length 3 --seed 0 > /dev/null
        for setting in nonprivate dp_eps8; do
          case $setting in
            nonprivate) OPT=(optimizer=adamw optimizer.lr=0.001) ;;
            dp_eps8) OPT=(optimizer=dp_adam optimizer.target_epsilon=8 optimizer.lr=0.001) ;;
          esac
          run="$LOG/canary/$setting/reps$reps"
          "${TRUSTML[@]}" data=text_classification "data.train_path=$LOG/canary/train_canary$reps.jsonl" \
            "data.val_path=$LOG/canary/val.jsonl" "data.test_path=$LOG/canary/test.jsonl" data.batch_size=32 \
            "${MODEL[@]}" trainer.max_epochs=8 "${QUIET[@]}" "${OPT[@]}" seed=0 hydra.run.dir="$run/train"
          "${AUDIT[@]}" canary "$run/train" --spec "$LOG/canary/train_canary$reps.jsonl.canary.json" \
            --checkpoint last --out "$run" > /dev/null
        done
      done ;;
    *) echo "unknown section '$section' (utility, audit, canary)" >&2; exit 2 ;;
  esac
done
.venv/bin/python experiments/dp/summarize_privacy.py "$LOG" --write-readme
