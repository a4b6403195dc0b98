"""``python -m dataflow.bench [section ...]``: run the suite and print one table of ratios
(each section in a fresh interpreter when there are several, see ``suite.run``)."""

from __future__ import annotations

import sys

from . import pin_blas_threads
from .suite import SECTIONS, format_table, machine, rows_to_json, run


def main(argv: list[str] | None = None) -> int:
    # One BLAS thread for everything measured here (see dataflow.bench.suite).
    with pin_blas_threads(1):
        return _main(sys.argv[1:] if argv is None else argv)


def _main(args: list[str]) -> int:
    if args[:1] == ["--json"]:  # one section for suite.run_isolated: rows as JSON
        print(rows_to_json(SECTIONS[args[1]]()))
        return 0
    unknown = [a for a in args if a not in SECTIONS]
    if unknown:
        print(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    rows = run(args or None)
    print(f"machine: {machine()}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
