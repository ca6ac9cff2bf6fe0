"""``trustml-report DIR``: render a run or sweep directory into Markdown plus PNG plots."""

from __future__ import annotations

import argparse
import sys

from trustml.errors import TrustMLError
from trustml.report.render import render_report


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``trustml-report``."""
    parser = argparse.ArgumentParser(prog="trustml-report", description=__doc__)
    parser.add_argument("directory", help="a run directory (with run.json) or a sweep directory")
    parser.add_argument("--out", default=None, help="where to write report.md and PNGs (default: the directory)")
    args = parser.parse_args(argv)
    try:
        path = render_report(args.directory, args.out)
    except TrustMLError as exc:
        sys.stderr.write(f"trustml-report: error: {exc}\n")
        sys.exit(2)
    print(path)


if __name__ == "__main__":
    main()
