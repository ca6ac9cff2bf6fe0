"""``trustml-audit``: empirical privacy audits of finished runs.

- ``trustml-audit mia TARGET_RUN [--shadows SWEEP_DIR] --out DIR``: LOSS attack and offline LiRA; writes
  ``audit.json`` (ROC AUC, TPR at 1% and 0.1% FPR) and ``roc.png`` (log-scale ROC).
- ``trustml-audit insert-canary SOURCE DEST --label L --repetitions K``: a JSONL training file with a
  canary sentence inserted K times (spec in ``DEST.canary.json``).
- ``trustml-audit canary RUN --spec DEST.canary.json --out DIR``: the canary's rank and exposure under the
  run's model; writes ``canary.json``.
- ``trustml-audit invert RUN --spec DEST.canary.json --out DIR`` (or ``--template/--num-unknown/--alphabet/--label``
  without a spec): ModIvA model inversion of the canary's unknown tokens (:mod:`trustml.privacy.audit.inversion`);
  writes ``inversion.json`` (recovered tokens, the secret's rank among all candidates, success@1/@10) and the
  audit's run record (``run.json``, ``results.json``) to DIR.

``mia`` and ``canary`` also report ``test_acc``: the test accuracy of the checkpoint they attacked
(``--checkpoint best|last``), recomputed on the run's test split, and ``checkpoint_epoch``: the epoch those
weights are from (``run_last_epoch``: the run's last). A run's ``results.json`` holds the best checkpoint's
accuracy, which is not the attacked model's when ``--checkpoint last`` is audited.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trustml.config_schema import register_config_support
from trustml.errors import ConfigError, TrustMLError

PROG = "trustml-audit"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    mia = commands.add_parser("mia", help="membership inference: LOSS attack and offline LiRA")
    mia.add_argument("target", help="the audited run directory (with run.json and .hydra/config.yaml)")
    mia.add_argument("--shadows", default=None, help="sweep directory of shadow runs (data.train_subset_fraction=0.5)")
    mia.add_argument("--out", required=True, help="output directory for audit.json and roc.png")
    mia.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which weights to audit (their test accuracy is recomputed and reported as test_acc)",
    )
    mia.add_argument(
        "--lira-variance",
        choices=("global", "per-example"),
        default="global",
        help="LiRA 'out' variance: pooled over examples (better with few shadows) or per example",
    )
    mia.add_argument("--batch-size", type=int, default=512)

    insert = commands.add_parser("insert-canary", help="write a JSONL training file with a repeated canary")
    insert.add_argument("source", help="training file (JSONL or CSV) to copy")
    insert.add_argument("dest", help="JSONL file to write (train on it with data=text_classification data.path=DEST)")
    insert.add_argument("--label", required=True, help="label of the canary sentence (must occur in SOURCE)")
    insert.add_argument("--repetitions", type=int, required=True, help="how many copies of the canary to insert")
    insert.add_argument("--secret-length", type=int, default=4)
    insert.add_argument("--alphabet", default="0123456789")
    insert.add_argument("--template", default="my pin code is {secret}")
    insert.add_argument("--seed", type=int, default=0, help="seeds the secret and the insertion positions")
    insert.add_argument("--text-field", default="text")
    insert.add_argument("--label-field", default="label")
    insert.add_argument(
        "--encoding", default="utf-8", help="encoding of SOURCE: a codec name (latin-1, cp1252, ...) or auto"
    )

    canary = commands.add_parser("canary", help="rank and exposure of a canary under a trained run")
    canary.add_argument("run", help="run directory trained on the file written by insert-canary")
    canary.add_argument("--spec", required=True, help="the DEST.canary.json written by insert-canary")
    canary.add_argument("--out", required=True, help="output directory for canary.json")
    canary.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which weights to rank the canary under (their test accuracy is reported as test_acc)",
    )
    canary.add_argument("--batch-size", type=int, default=512)
    canary.add_argument(
        "--sample",
        type=int,
        default=0,
        help="estimate the rank from this many uniformly sampled candidates instead of scoring all (0: all); "
        "scored exactly anyway when the estimate's 95%% interval reaches the top --exact-top",
    )
    canary.add_argument("--sample-seed", type=int, default=0, help="seed of --sample's draw")
    canary.add_argument(
        "--exact-top", type=int, default=10, help="with --sample: score every candidate if the rank may be <= this"
    )

    invert = commands.add_parser("invert", help="recover a canary's unknown tokens by model inversion (ModIvA)")
    invert.add_argument("run", help="run directory of a text classifier (model=hf_encoder)")
    invert.add_argument(
        "--spec", default=None, help="insert-canary's DEST.canary.json: template, length, label, secret"
    )
    invert.add_argument("--out", required=True, help="output directory for inversion.json and the audit's run.json")
    invert.add_argument("--template", default=None, help="known text around the secret, with {secret}")
    invert.add_argument("--num-unknown", type=int, default=None, help="number of unknown tokens")
    invert.add_argument(
        "--alphabet", default=None, help="digits, letters, any (every token), or symbols (one per character or a,b,c)"
    )
    invert.add_argument("--label", default=None, help="the canary's label (a label name of the run)")
    invert.add_argument("--secret", default=None, help="the true secret, space-separated, to score the attack")
    invert.add_argument("--checkpoint", choices=("best", "last"), default="best")
    invert.add_argument("--steps", type=int, default=300)
    invert.add_argument("--lr", type=float, default=0.1)
    invert.add_argument("--restarts", type=int, default=8, help="independent starts, optimized as one batch")
    invert.add_argument("--temperature-start", type=float, default=1.0)
    invert.add_argument("--temperature-end", type=float, default=0.1)
    invert.add_argument("--entropy-weight", type=float, default=0.0, help="prior towards one token per position")
    invert.add_argument("--init-scale", type=float, default=0.1)
    invert.add_argument("--seed", type=int, default=0)
    return parser


def _inversion_request(args: argparse.Namespace):  # noqa: ANN202 - imports torch lazily
    from trustml.privacy.audit.canary_text import CanarySpec
    from trustml.privacy.audit.inversion import InversionOptions, InversionRequest

    options = InversionOptions(
        steps=args.steps,
        lr=args.lr,
        restarts=args.restarts,
        temperature_start=args.temperature_start,
        temperature_end=args.temperature_end,
        entropy_weight=args.entropy_weight,
        init_scale=args.init_scale,
        seed=args.seed,
    )
    if args.spec is not None:
        request = InversionRequest.from_spec(CanarySpec.load(args.spec), options, args.alphabet)
        for name in ("template", "num_unknown", "label"):
            if getattr(args, name) is not None:
                setattr(request, name, getattr(args, name))
        return request
    missing = [f"--{n.replace('_', '-')}" for n in ("template", "num_unknown", "label") if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"invert needs --spec (from insert-canary) or {', '.join(missing)}")
    return InversionRequest(
        template=args.template,
        num_unknown=args.num_unknown,
        alphabet=args.alphabet or "digits",
        label=args.label,
        secret=tuple(args.secret.split()) if args.secret else None,
        options=options,
    )


def _invert(args: argparse.Namespace, argv: list[str]) -> dict:
    """Run the inversion audit with its own run record in ``--out`` (``run.json``; ``results.json`` = the result)."""
    from trustml.privacy.audit.inversion import invert_run
    from trustml.run_record import RunRecord

    request = _inversion_request(args)
    record = RunRecord(args.out)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    record.start(
        seed=args.seed,
        seed_source="--seed",
        overrides=argv,
        source_dir=Path(__file__).resolve().parent,
        task="trustml-audit invert",
        audited_run=str(args.run),
    )
    try:
        result = invert_run(args.run, request, args.out, args.checkpoint)
    except BaseException as exc:
        record.fail(exc)
        raise
    record.complete(result)
    return result


def _run(args: argparse.Namespace, argv: list[str]) -> dict:
    if args.command == "invert":
        return _invert(args, argv)
    if args.command == "mia":
        from trustml.privacy.audit.membership_audit import audit_membership

        return audit_membership(
            args.target,
            args.out,
            shadow_dir=args.shadows,
            checkpoint=args.checkpoint,
            fix_variance=args.lira_variance == "global",
            batch_size=args.batch_size,
        )
    if args.command == "insert-canary":
        from trustml.privacy.audit.canary_text import canary_spec_path, write_canary_training_file

        spec = write_canary_training_file(
            args.source,
            args.dest,
            label=args.label,
            repetitions=args.repetitions,
            secret_length=args.secret_length,
            alphabet=args.alphabet,
            template=args.template,
            seed=args.seed,
            text_field=args.text_field,
            label_field=args.label_field,
            encoding=args.encoding,
        )
        return {"training_file": args.dest, "spec": str(canary_spec_path(args.dest)), "sentence": spec.sentence}
    from trustml.privacy.audit.canary_text import CanarySpec, canary_exposure
    from trustml.run_record import write_json_atomic

    if args.sample < 0:
        raise ConfigError(f"--sample {args.sample}: give a number of candidates to sample, or 0 to score all")
    result = canary_exposure(
        args.run,
        CanarySpec.load(args.spec),
        args.checkpoint,
        args.batch_size,
        sample=args.sample,
        sample_seed=args.sample_seed,
        exact_top=args.exact_top,
    )
    write_json_atomic(Path(args.out) / "canary.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``trustml-audit``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    register_config_support()
    try:
        result = _run(args, argv)
    except TrustMLError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        sys.exit(2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
