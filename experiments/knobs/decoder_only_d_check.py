"""Does knob D act on the decoder-only study's model? Reference NLL per token under D at large biases.

For the first ``--examples`` test turns of ``decoder_only_study.sh`` (``WORK/data/test_segments.jsonl``), prints the
mean per-token NLL of the references (teacher forcing, :meth:`CausalKnobGenerator.reference_token_nll`, the quantity
behind the sweep's ``reference_perplexity``) with ``self_attention.values.current`` / ``previous`` = each ``--values``.
Usage: ``python experiments/knobs/decoder_only_d_check.py --run /tmp/knobs_do/lm/runs/<run>``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trustml.data.segments_jsonl import InputTemplate
from trustml.knobs.attention_knobs import SelfAttentionBias
from trustml.knobs.generator import CausalKnobGenerator, KnobSettings
from trustml.knobs.prompts import TemplateInputBuilder
from trustml.run_record import load_model_from_run

TEMPLATE = "knowledge: {knowledge} history: {history} response:"


def main() -> None:
    """Print the reference NLL per knob value (module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", default="/tmp/knobs_do/data/test_segments.jsonl")
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--values", type=float, nargs="+", default=[1.0, 5.0, 20.0, 1000.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model_from_run(args.run, "best")
    model.eval()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()][: args.examples]
    builder = TemplateInputBuilder(
        model.tokenizer,
        InputTemplate.parse(TEMPLATE),
        layout="prompt",
        max_length=model.max_length - 24,
        bos_token_id=model.special_ids["bos_token_id"],
    )
    sources = builder([{k: r[k] for k in ("knowledge", "history")} for r in rows], [r["id"] for r in rows])
    eos = model.special_ids["eos_token_id"]
    ids = [model.tokenizer(r["reference"], add_special_tokens=False)["input_ids"] + [eos] for r in rows]
    targets = torch.full((len(ids), max(map(len, ids))), -100)
    for i, row in enumerate(ids):
        targets[i, : len(row)] = torch.tensor(row)
    for segment in ("current", "previous"):
        for value in args.values:
            settings = KnobSettings(self_attention=SelfAttentionBias(values={segment: value}))
            generator = CausalKnobGenerator(model.network, model.tokenizer, settings, vocabulary=builder.vocabulary)
            with torch.no_grad():
                nll = generator.reference_token_nll(
                    sources["input_ids"], sources["attention_mask"], targets, segment_ids=sources["segment_ids"]
                )
            print(f"D {segment} b={value:g}: reference NLL per token {float(nll.sum() / (targets != -100).sum()):.4f}")


if __name__ == "__main__":
    main()
