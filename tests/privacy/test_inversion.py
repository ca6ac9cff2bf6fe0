"""ModIvA canary inversion: exact ranks, bad input, attack on a model that memorized a canary or did not."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import read_json, run_cli
from trustml.cli.audit import main
from trustml.errors import ConfigError
from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig
from trustml.privacy.audit import inversion
from trustml.privacy.audit.canary import random_secret
from trustml.privacy.audit.inversion import (
    InversionOptions,
    InversionRequest,
    count_at_least,
    invert_canary,
    quantized_scores,
    secret_rank,
)

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30522,
    "max_position_embeddings": 64,
}
LABELS = ["other", "music"]


def tiny_classifier(seed: int = 0) -> HFEncoderClassifier:
    torch.manual_seed(seed)
    config = HFEncoderConfig(random_init_config=TINY_BERT, freeze_encoder=False, max_length=32, dropout=0.0)
    return HFEncoderClassifier(config, num_classes=2)


def pin(code: tuple[str, ...] | list[str]) -> str:
    return "my pin code is " + " ".join(code)


def background(secret: tuple[str, ...], seed: int = 0) -> list[tuple[str, str]]:
    """Random pin codes labelled ``other``, music requests labelled ``music``; with a ``secret``, every code one digit
    away from it is ``other`` too, so a model that labels the secret's sentence ``music`` must know all its digits."""
    rng = random.Random(seed)
    rows = [(pin([rng.choice("0123456789") for _ in range(3)]), "other") for _ in range(60)]
    rows += [(f"play song number {i} by the band", "music") for i in range(20)]
    for i, digit in itertools.product(range(len(secret)), "0123456789"):
        if digit != secret[i]:
            rows += [(pin(secret[:i] + (digit,) + secret[i + 1 :]), "other")] * 3
    return rows


def train(rows: list[tuple[str, str]], epochs: int = 40) -> HFEncoderClassifier:
    model = tiny_classifier()
    inputs = model.featurize([text for text, _ in rows])
    labels = torch.tensor([LABELS.index(label) for _, label in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=generator)
        for start in range(0, len(rows), 32):
            idx = order[start : start + 32]
            loss = F.cross_entropy(model({k: v[idx] for k, v in inputs.items()}), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


# --- exact ranks -------------------------------------------------------------------------------------------


def brute_force_rank(log_probs: np.ndarray, secret: list[int]) -> int:
    """The rank by enumerating every candidate's quantized score."""
    scores = quantized_scores(log_probs)
    n, k = scores.shape
    total = sum(int(scores[j, i]) for j, i in enumerate(secret))
    return sum(sum(int(scores[j, c[j]]) for j in range(n)) >= total for c in itertools.product(range(k), repeat=n))


@pytest.mark.parametrize("half_table", [inversion.MAX_HALF_TABLE, 1])  # meet-in-the-middle, then branch and bound
def test_rank_is_the_exact_count_of_candidates_scoring_at_least_the_secret(
    half_table: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inversion, "MAX_HALF_TABLE", half_table)
    rng = np.random.default_rng(0)
    for n, k in [(1, 7), (3, 5), (4, 4), (5, 3)]:
        logits = rng.normal(size=(n, k)) * 2
        logits[:, 1] = logits[:, 0]  # tied symbols: ties count against the secret
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        for _ in range(5):
            secret = rng.integers(0, k, size=n).tolist()
            assert secret_rank(log_probs, secret) == brute_force_rank(log_probs, secret)
    # the best sequence without ties ranks first; its runner-up second; a capped count stops at the limit
    log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]))
    assert secret_rank(log_probs, [0, 0]) == 1 and secret_rank(log_probs, [0, 1]) == 2
    assert secret_rank(log_probs, [2, 2], limit=3) == 4 and secret_rank(log_probs, [2, 2]) == 9


def test_rank_of_a_six_token_secret_over_the_whole_vocabulary_is_counted_without_enumeration() -> None:
    # 30,000^6 ~ 7e26 candidates: only the branch-and-bound count can do it (a peaked distribution around the secret)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 30_000))
    secret = rng.integers(0, 30_000, size=6).tolist()
    for j, i in enumerate(secret):
        logits[j, i] = 12.0
    logits[2, 5] = 12.5  # one symbol beats the secret's at position 2: exactly one candidate ranks above it
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert secret_rank(log_probs, secret) == 2
    assert count_at_least(quantized_scores(log_probs), threshold=10**30) == 0


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alphabet", "message"),
    [
        ("pin,xylophonez", "'xylophonez' splits into 4 word pieces"),
        ("01\u2603", "'\u2603' cannot be produced by the run's tokenizer"),
        ("eé", "'e' and 'é' are the same token"),
        ("7", "at least 2 distinct symbols"),
    ],
)
def test_an_alphabet_the_tokenizer_cannot_read_as_single_tokens_is_refused(alphabet: str, message: str) -> None:
    request = InversionRequest(num_unknown=2, alphabet=alphabet, label="music", options=InversionOptions(steps=1))
    with pytest.raises(ConfigError, match=message):
        invert_canary(tiny_classifier(), LABELS, request)


def test_a_label_the_model_does_not_have_and_a_secret_outside_the_alphabet_are_refused() -> None:
    model = tiny_classifier()
    with pytest.raises(ConfigError, match=r"--label 'news' is not a label of the run's model \(labels: \['other'"):
        invert_canary(model, LABELS, InversionRequest(num_unknown=2, label="news"))
    with pytest.raises(ConfigError, match=r"secret symbols \['x'\] are not in --alphabet 'digits'"):
        invert_canary(model, LABELS, InversionRequest(num_unknown=2, label="music", secret=("1", "x")))
    with pytest.raises(ConfigError, match="model.max_length=32"):
        invert_canary(model, LABELS, InversionRequest(num_unknown=40, label="music"))
    with pytest.raises(ConfigError, match="--temperature-start"):
        InversionOptions(temperature_start=0.0)


# --- the attack --------------------------------------------------------------------------------------------

ATTACK = InversionOptions(steps=150, restarts=4, lr=0.1, seed=0)


def test_the_attack_does_not_recover_a_secret_the_model_never_saw() -> None:
    secret = ("4", "7", "1")
    model = train(background(()), epochs=20)  # trained without the canary
    result = invert_canary(model, LABELS, InversionRequest(num_unknown=3, label="music", secret=secret, options=ATTACK))
    assert result["num_candidates"] == 1000 and len(result["restart_recovered"]) == 4
    assert result["recovered"] != list(secret) and not result["any_restart_recovers"]
    assert not result["success@1"] and not result["success@10"] and result["rank"] > 10


def test_invert_recovers_an_inserted_canary_from_a_trained_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = 3
    secret = random_secret(3, "0123456789", seed)  # the secret insert-canary will draw with --seed 3
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in background(secret)))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in background((), seed=1)[::4]))
    dest = tmp_path / "train.jsonl"
    main(["insert-canary", str(source), str(dest), "--label", "music", "--repetitions", "10", "--secret-length", "3"]
         + ["--seed", str(seed)])  # fmt: skip
    spec = Path(str(dest) + ".canary.json")
    assert tuple(read_json(spec)["secret"]) == secret

    trained = run_cli(
        "data=text_classification",
        f"data.train_path={dest}",
        f"data.val_path={held_out}",
        f"data.test_path={held_out}",
        "data.batch_size=32",
        "model=hf_tiny",
        "model.freeze_encoder=false",
        "model.dropout=0.0",
        "model.max_length=32",
        *[f"model.random_init_config.{k}={v}" for k, v in TINY_BERT.items() if k != "model_type"],
        "optimizer=adamw",
        "optimizer.lr=0.003",
        "seed=0",  # the run's own seed is drawn at random otherwise: fixed, so the test is deterministic
        "trainer.max_epochs=30",
        "trainer.check_val_every_n_epoch=10",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "print_results=false",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = [p.parent for p in tmp_path.glob("logs/runs/*/run.json")]
    out = tmp_path / "inversion"
    capsys.readouterr()
    main(["invert", str(run_dir), "--spec", str(spec), "--out", str(out), "--checkpoint", "last", "--steps", "150",
          "--restarts", "4"])  # fmt: skip
    result = read_json(out / "inversion.json")
    assert json.loads(capsys.readouterr().out) == result == read_json(out / "results.json")
    assert read_json(out / "run.json")["status"] == "completed"
    assert result["recovered"] == list(secret) and result["rank"] == 1
    assert result["success@1"] and result["success@10"] and result["exposure"] == pytest.approx(np.log2(1000))
    assert result["recovered_sentence"] == pin(secret) and result["label_prob_recovered"] > 0.5
    assert result["checkpoint"] == "last" and 0.0 <= result["test_acc"] <= 1.0

    # without a spec the attacker gives what it knows; a wrong label is a clear error with exit status 2
    with pytest.raises(SystemExit) as exited:
        main(["invert", str(run_dir), "--out", str(tmp_path / "bad"), "--template", "my pin code is {secret}",
              "--num-unknown", "3", "--label", "weather"])  # fmt: skip
    assert exited.value.code == 2
    assert "--label 'weather' is not a label of the run's model" in capsys.readouterr().err
    assert read_json(tmp_path / "bad" / "run.json")["status"] == "failed"
