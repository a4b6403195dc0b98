"""The benchmark suite, measured against the anchors: ``dataflow bench``,
``python -m dataflow.bench`` or, in a source checkout, ``make bench`` /
``python -m benchmarks``.

It lives inside the package so that an installed wheel carries it; nothing else in
``dataflow`` or ``scheduler`` imports it except the command line's ``bench`` command.
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def pin_blas_threads(n: int = 1) -> threadpool_limits:
    """Run BLAS on ``n`` threads here and in the processes this one starts; used as a
    context manager, restores this process's former thread counts on exit.

    numpy is already loaded when this package is imported (``dataflow`` imports it),
    so the environment variables come too late for this process's BLAS: threadpoolctl
    sets the running library instead. The variables (only where unset) carry the same
    choice into the fresh interpreters the suite starts per section and into dask
    workers."""
    for var in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(var, str(n))
    return threadpool_limits(limits=n)
