"""``python -m benchmarks [section ...]``: run the suite and print one table of ratios
(each section in a fresh interpreter when there are several, see ``suite.run``)."""

import os

# One BLAS thread for everything measured here (see benchmarks.suite); set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402

from .suite import SECTIONS, format_table, machine, rows_to_json, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
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
