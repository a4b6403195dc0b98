"""``python -m dataflow.bench [section ...] [--native-kernels]``: run the suite and print
one table of ratios (each section in a fresh interpreter when there are several, see
``suite.run``) under ``dataflow doctor``'s header, which says what kernels it ran on.

``--native-kernels`` runs the MLP sections a second time, in fresh interpreters whose
environment lacks OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (this process keeps them), so
that the table also shows what the CPU's own kernel gives; those rows say so."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from . import pin_blas_threads, suite
from .suite import MLP_SECTIONS, SECTIONS, Row, format_table, header, rows_to_json, run

NATIVE_FLAG = "--native-kernels"


def main(argv: list[str] | None = None) -> int:
    # One BLAS thread for everything measured here (see dataflow.bench.suite).
    with pin_blas_threads(1):
        return _main(sys.argv[1:] if argv is None else argv)


def _main(args: list[str]) -> int:
    if args[:1] == ["--json"]:  # one section for suite.run_isolated: rows as JSON
        print(rows_to_json(SECTIONS[args[1]]()))
        return 0
    native = NATIVE_FLAG in args
    args = [a for a in args if a != NATIVE_FLAG]
    unknown = [a for a in args if a not in SECTIONS]
    if unknown:
        print(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)} "
              f"(and {NATIVE_FLAG})", file=sys.stderr)
        return 2
    rows = run(args or None)
    notes = []
    if native:
        extra, note = native_kernel_rows([a for a in args or SECTIONS if a in MLP_SECTIONS])
        rows += extra
        notes.append(note)
    print("\n".join(header()))
    print(format_table(rows))
    for note in notes:
        print(note)
    return 0


def native_kernel_rows(sections: list[str], env: Mapping[str, str] | None = None
                       ) -> tuple[list[Row], str]:
    """``sections`` again without the variables that force OpenBLAS's kernel (those set
    in ``env``, by default this process's environment), each row labelled with the
    kernel it ran; and a note on what was done."""
    from dataflow import doctor

    env = os.environ if env is None else env
    variables = tuple(v for v in doctor.KERNEL_VARIABLES["openblas"] if v in env)
    if not variables:
        return [], (f"{NATIVE_FLAG}: none of {', '.join(doctor.KERNEL_VARIABLES['openblas'])} is "
                    "set, so the rows above already ran on the kernel OpenBLAS picks itself")
    if not sections:
        return [], f"{NATIVE_FLAG}: no MLP section selected ({', '.join(MLP_SECTIONS)})"
    probe = doctor.run_probe(variables, reps=3)
    if probe.error is not None:
        return [], (f"{NATIVE_FLAG}: without {' and '.join(variables)} this BLAS fails "
                    f"({probe.error}); it needs them")
    label = f" [{' and '.join(variables)} unset: {probe.architecture or 'own'} kernel]"
    rows = suite.run(sections, unset=variables)
    for row in rows:
        row.workload += label
    return rows, (f"{NATIVE_FLAG}: rows marked '{label.strip()}' ran in subprocesses "
                  "without those variables; this process and the other rows kept them")


if __name__ == "__main__":
    sys.exit(main())
