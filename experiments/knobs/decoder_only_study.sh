#!/usr/bin/env bash
# The decoder-only knob study on Topical-Chat (experiments/knobs/README.md, "Decoder-only study").
# Usage: experiments/knobs/decoder_only_study.sh data|train|tokenizer|sweep [WORK]
#   data:  writes WORK/data/{train_lm,train_copy_lm,test_segments}.jsonl (decoder_only_data.py)
#   train: trains the GPT-2 (method=lm, data=text_lm) into WORK/NAME/runs/ (NAME: env, default lm) on
#          WORK/data/TEXTS (env, default train_lm.jsonl) for STEPS optimizer steps (env) or else MINUTES (env, default
#          30) of wall time; its WordPiece vocabulary is trained on the texts unless TOKENIZER=<dir> gives one;
#          RESUME=<a run's checkpoints/last.ckpt> continues a run (MINUTES then counts that run's time too)
#   tokenizer: saves LM_RUN's trained tokenizer to WORK/tokenizer (for a second model that must share it: knob B)
#   sweep: knob sweeps with method=knob_generator on the test turns into SWEEP/<knob>/ (SWEEP: env, default
#          WORK/sweep; LM_RUN: the lm run, default the newest under WORK/lm/runs), then decoder_only_tables.py
#          collects them; ONLY_A=1 stops after the neutral run and knob A; A_VALUES, D_VALUES: their -m lists;
#          SECONDARY_RUN=<run> adds knob B (mixing with that run's model, B_VALUES), ONLY_B=1 runs neutral and B only
# WORK defaults to /tmp/knobs_do (runs and checkpoints stay out of the repository). One torch thread, nice 10.
set -euo pipefail
stage=${1:?data, train or sweep}
work=${2:-/tmp/knobs_do}
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() { nice -n "${NICE:-10}" .venv/bin/trustml "$@" logger=none trainer.enable_progress_bar=false; }
case $stage in
  data)
    .venv/bin/python experiments/knobs/decoder_only_data.py --out "$work/data" --knowledge-words 32 --history-words 24
    ;;
  train)
    if [ -n "${STEPS:-}" ]; then budget=(+trainer.max_steps="$STEPS"); else
      budget=(+trainer.max_time=00:00:$(printf %02d "${MINUTES:-30}"):00); fi
    if [ -n "${TOKENIZER:-}" ]; then vocab=(model.tokenizer="$TOKENIZER" model.tokenizer_train_vocab_size=null); else
      vocab=(model.tokenizer_train_vocab_size=5000); fi
    TRUSTML_LOG_DIR=$work/${NAME:-lm} run experiment=topical_chat_lm seed=0 \
      "data.paths=[$work/data/${TEXTS:-train_lm.jsonl}]" data.format=jsonl data.group_field=conversation \
      data.val_fraction=0.05 data.test_fraction=0.02 data.max_eval_texts=300 data.batch_size=32 "${vocab[@]}" \
      "model.random_init_config={model_type: gpt2, n_embd: 192, n_layer: 4, n_head: 4, n_positions: 256}" \
      model.max_length=256 trainer.max_epochs=10 +trainer.val_check_interval=150 "${budget[@]}" \
      ${RESUME:+"ckpt_path=$RESUME"}
    ;;
  tokenizer)
    .venv/bin/python -c 'import sys
from trustml.run_record import load_model_from_run
load_model_from_run(sys.argv[1], "last")[0].tokenizer.save_pretrained(sys.argv[2])
print("saved", sys.argv[2])' "${LM_RUN:?the lm run whose tokenizer to save}" "$work/tokenizer"
    ;;
  sweep)
    lm=${LM_RUN:-$(ls -d "$work"/lm/runs/* | tail -1)}
    sweep=${SWEEP:-$work/sweep}
    common=(data=segments_jsonl model=hf_causal_lm method=knob_generator trainer.max_epochs=0 seed=0
      "data.path=$work/data/test_segments.jsonl" "data.template='knowledge: {knowledge} history: {history} response:'"
      data.eval_batch_size=20 "method.model_run_dir=$lm" model.tokenizer_train_vocab_size=5000
      "model.random_init_config={model_type: gpt2, n_embd: 192, n_layer: 4, n_head: 4, n_positions: 256}"
      model.max_length=256 "method.generation={num_beams: 1, do_sample: false, max_new_tokens: 24}")
    TRUSTML_LOG_DIR=$sweep/neutral run "${common[@]}"
    if [ -n "${SECONDARY_RUN:-}" ]; then
      TRUSTML_LOG_DIR=$sweep/B run -m "${common[@]}" "method.secondary_run_dir=$SECONDARY_RUN" \
        "method.knobs.mixing_weight=${B_VALUES:-0.2,0.4,0.6}"
    fi
    [ -z "${ONLY_B:-}" ] || exit 0
    TRUSTML_LOG_DIR=$sweep/A run -m "${common[@]}" "+method.knobs.prompt_attention.values.knowledge=${A_VALUES:-2,5,10}"
    [ -z "${ONLY_A:-}" ] || exit 0
    TRUSTML_LOG_DIR=$sweep/C run -m "${common[@]}" method.control_phrases_file=sample:questions \
      "+method.knobs.prompt_attention.values.control=1,5,20"
    TRUSTML_LOG_DIR=$sweep/D run -m "${common[@]}" "+method.knobs.self_attention.values.current=${D_VALUES:-2,5}"
    ;;
  *) echo "decoder_only_study.sh: stage '$stage' is not data, train, tokenizer or sweep" >&2; exit 2 ;;
esac
