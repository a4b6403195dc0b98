"""Intra-op threads: ``Engine(intra_op_threads=k)`` reaches the BLAS a kernel runs on,
checked with threadpoolctl from inside the kernel, in thread and process workers; the
default keeps workers x BLAS threads within the cores; a closed engine gives the
process's count back. (Only thread counts change here, never the BLAS variables.)"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import scheduler
from scheduler.blas import cores

pytestmark = pytest.mark.skipif(
    not [lib for lib in threadpool_info() if lib["user_api"] == "blas"],
    reason="threadpoolctl finds no BLAS library behind numpy")


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def probe() -> tuple[list[int], str, int]:
    """Run as a task: the BLAS thread counts where it runs, and where that is."""
    np.ones((8, 8)) @ np.ones((8, 8))
    return blas_threads(), threading.current_thread().name, os.getpid()


def run_probe(engine: scheduler.Engine) -> tuple[list[int], str, int]:
    return engine.get({"p": (probe,)}, "p")


@pytest.fixture(autouse=True)
def restore_blas():
    # Engines give the count back themselves (tested below); this only keeps a failing
    # test from changing the BLAS of the tests after it.
    with threadpool_limits(limits=None):
        yield


@pytest.fixture
def original() -> list[int]:
    return blas_threads()


# An odd count that neither a default nor the machine's own setting would give.
ODD = 3


@pytest.mark.parametrize("kind", ["inline", "threads", "asyncio"])
def test_explicit_threads_reach_the_kernel(kind, original):
    with scheduler.Engine(kind, workers=2, intra_op_threads=ODD, inline_threshold=0) as engine:
        counts, where, pid = run_probe(engine)
        assert blas_threads() == [ODD] * len(original)  # the engine's process too
    assert counts == [ODD] * len(original)
    assert pid == os.getpid()
    if kind != "inline":
        assert where.startswith(f"dataflow-{kind}")  # it did run in a pool worker
    assert blas_threads() == original


def test_explicit_threads_reach_process_workers(original):
    with scheduler.Engine("processes", workers=2, intra_op_threads=ODD,
                          inline_threshold=0) as engine:
        counts, _, pid = run_probe(engine)
    assert pid != os.getpid()
    assert counts and set(counts) == {ODD}  # the worker's own libraries (it may load fewer)
    assert blas_threads() == original


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_default_keeps_workers_times_blas_threads_within_the_cores(kind, original):
    workers = max(2, cores())
    with scheduler.Engine(kind, workers=workers, inline_threshold=0) as engine:
        counts, _, _ = run_probe(engine)
    per_worker = max(1, cores() // workers)
    expected = [min(n, per_worker) for n in original]
    if kind == "processes":  # the worker's own libraries (it may load fewer)
        assert counts and set(counts) <= set(expected)
    else:
        assert counts == expected
    assert all(workers * n <= max(cores(), workers) for n in counts)
    assert blas_threads() == original


def test_default_gives_every_executor_of_one_width_the_same_count(original):
    # One count per width, set from construction on, whatever path a run takes: the
    # same bits on every executor (OpenBLAS rounds differently on 1 and 2 threads).
    workers = max(2, cores())
    seen = {}
    for kind in ("inline", "threads", "processes"):
        with scheduler.Engine(kind, workers=workers, inline_threshold=0) as engine:
            before_any_run = blas_threads()
            counts, _, _ = run_probe(engine)
        if kind == "processes":  # the worker's own libraries (it may load fewer)
            assert counts and set(counts) <= set(before_any_run)
        else:
            assert counts == before_any_run
        seen[kind] = counts
    assert seen["inline"] == seen["threads"]
    assert set(seen["processes"]) <= set(seen["inline"])  # a worker may load fewer BLAS
    assert seen["inline"] == [min(n, max(1, cores() // workers)) for n in original]


def test_default_never_raises_a_lower_count(original):
    with threadpool_limits(limits=1):
        with scheduler.Engine("threads", workers=1, inline_threshold=0) as engine:
            counts, _, _ = run_probe(engine)
    assert counts == [1] * len(original)


def test_the_engine_opened_last_decides_and_closing_it_restores_the_one_before(original):
    first = scheduler.Engine("inline", intra_op_threads=1)
    second = scheduler.Engine("inline", intra_op_threads=ODD)
    assert blas_threads() == [ODD] * len(original)
    second.close()
    assert blas_threads() == [1] * len(original)
    third = scheduler.Engine("inline", intra_op_threads=2)
    first.close()  # not the last opened: the last one's count stays
    assert blas_threads() == [2] * len(original)
    third.close()
    assert blas_threads() == original


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_intra_op_threads_is_refused_at_construction(bad):
    with pytest.raises(ValueError, match="intra_op_threads"):
        scheduler.Engine("threads", intra_op_threads=bad)
