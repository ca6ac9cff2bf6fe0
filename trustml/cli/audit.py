"""``trustml-audit``: empirical privacy audits of finished runs.

- ``trustml-audit mia TARGET_RUN [--shadows SWEEP_DIR] --out DIR``: LOSS attack and offline LiRA; writes
  ``audit.json`` (ROC AUC, TPR at 1% and 0.1% FPR) and ``roc.png`` (log-scale ROC).
- ``trustml-audit insert-canary SOURCE DEST --label L --repetitions K``: a JSONL training file with a
  canary sentence inserted K times (spec in ``DEST.canary.json``).
- ``trustml-audit canary RUN --spec DEST.canary.json --out DIR``: the canary's rank and exposure under the
  run's model; writes ``canary.json``.

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
from trustml.errors import TrustMLError

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
    return parser


def _run(args: argparse.Namespace) -> dict:
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

    result = canary_exposure(args.run, CanarySpec.load(args.spec), args.checkpoint, args.batch_size)
    write_json_atomic(Path(args.out) / "canary.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``trustml-audit``."""
    args = _parser().parse_args(argv)
    register_config_support()
    try:
        result = _run(args)
    except TrustMLError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        sys.exit(2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
