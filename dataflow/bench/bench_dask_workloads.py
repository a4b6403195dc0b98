"""dask workloads: ``scheduler.get`` against ``dask.threaded.get`` on dask's own
collections, on the same number of workers (the machine's cores), side by side.

``python -m dataflow.bench.bench_dask_workloads [--quick]`` prints one row per workload
(``--quick``: every size divided by ten, in this process, a smoke run, not a
measurement). :func:`dask_workloads` returns the rows for the suite
(``dataflow.bench.suite.Row``). Each workload is timed in ``PROCESSES`` fresh
interpreters, as pyperf does, and the row takes the median of their figures: how a
process's C allocator happens to lay out its threads' heaps (which of them it hands back
to the system after a run, and so faults in again on the next) moves either scheduler's
time by 10-20% on the array workloads, differently in each process, and one process
would let that luck decide. In each, the workload's graph is built and optimised by dask
once; the two schedulers then run that same graph, timed round-robin
(``suite.interleaved``), so a slow phase of a shared machine hits both alike. The goal is
ours / dask's <= 1.0 for every workload:

- ``(x @ x.T).sum()`` of a 4000^2 ``da.random`` array in 1000^2 chunks;
- ``x.mean(axis=0)`` and ``x.std(axis=1)`` of the same array (computed together);
- a ``dask.bag`` map/filter/sum over 200,000 items in 16 partitions;
- a ``dask.dataframe`` groupby-mean over 400,000 rows in 8 partitions;
- 16 ``dask.delayed`` tasks that each sleep 0.1 s.
"""

from __future__ import annotations

import os

# One BLAS thread per worker, as in the rest of the suite; set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

Workload = tuple[str, Any]  # (name, a dask collection or a tuple of them)


def _array_workloads(scale: int) -> list[Workload]:
    import dask.array as da

    n, chunk = 4000 // scale, 1000 // scale
    x = da.random.default_rng(0).random((n, n), chunks=chunk)
    return [(f"(x @ x.T).sum(), x {n}^2 in {chunk}^2 chunks", (x @ x.T).sum()),
            (f"x.mean(axis=0), x.std(axis=1), x {n}^2", (x.mean(axis=0), x.std(axis=1)))]


def _double(v: int) -> int:
    return 2 * v


def _third(v: int) -> bool:
    return v % 3 == 0


def _bag_workload(scale: int) -> Workload:
    import dask.bag as db

    n = 200_000 // scale
    bag = db.from_sequence(range(n), npartitions=16).map(_double).filter(_third).sum()
    return f"bag map/filter/sum, {n} items in 16 partitions", bag


def _dataframe_workload(scale: int) -> Workload | None:
    try:
        import dask.dataframe as dd
        import pandas as pd
    except ImportError:  # dask[dataframe] not installed: the row is left out
        return None
    import numpy as np

    n = 400_000 // scale
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"k": rng.integers(0, 100, n), "v": rng.random(n)})
    ddf = dd.from_pandas(frame, npartitions=8)
    return f"dataframe groupby-mean, {n} rows in 8 partitions", ddf.groupby("k").v.mean()


def _delayed_workload(scale: int) -> Workload:
    from dask import delayed

    seconds = 0.1 / scale
    return (f"16 delayed tasks sleeping {seconds:g} s",
            tuple(delayed(time.sleep)(seconds, dask_key_name=f"sleep-{i}") for i in range(16)))


def workloads(scale: int = 1) -> list[Workload]:
    found = [*_array_workloads(scale), _bag_workload(scale), _dataframe_workload(scale),
             _delayed_workload(scale)]
    return [w for w in found if w is not None]


def graph_of(collection: Any) -> tuple[dict, list]:
    """The optimised, materialised graph of a collection (or a tuple of them) and the
    keys of its outputs: what ``dask.compute`` hands a scheduler."""
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr
    from dask.core import flatten

    collections = list(collection) if isinstance(collection, tuple) else [collection]
    expr = FinalizeCompute(collections_to_expr(collections, True)).optimize()  # as dask.compute
    return dict(expr.__dask_graph__()), list(flatten(expr.__dask_keys__()))


#: seconds of rounds (one call of each scheduler) a workload is timed for, at least:
#: a median of a few rounds moves by several percent with this machine's load, and the
#: two schedulers are within a few percent of each other on most workloads
ROUNDS_SECONDS = 25.0
MAX_REPS = 41


def timed_pair(dsk: dict, keys: list, workers: int, reps: int, warmup: int,
               budget: float = 0.0) -> tuple[float, float]:
    """Median seconds of ``scheduler.get`` and of ``dask.threaded.get`` on ``dsk``,
    ``workers`` threads each, measured round-robin: ``reps`` rounds, or more (up to
    ``MAX_REPS``) where the rounds take less than ``budget`` seconds in all."""
    import dask.threaded
    from dask.base import tokenize

    import scheduler

    from .suite import interleaved

    ours: Callable[[], Any] = lambda: scheduler.get(dsk, keys, num_workers=workers)  # noqa: E731
    theirs: Callable[[], Any] = lambda: dask.threaded.get(dsk, keys, num_workers=workers)  # noqa: E731
    # The same values, bit for bit (tokenize hashes array and frame contents), or no row.
    start = time.perf_counter()
    if tokenize(ours()) != tokenize(theirs()):
        raise AssertionError("scheduler.get and dask.threaded.get computed different values")
    one_round = time.perf_counter() - start
    reps = max(reps, min(MAX_REPS, int(budget / max(one_round, 1e-6))))
    t_ours, t_dask = interleaved([ours, theirs], reps=reps, warmup=warmup)
    return t_ours, t_dask


#: fresh interpreters each workload is timed in (see the module docstring)
PROCESSES = 3


def dask_workloads(scale: int = 1, reps: int = 7, warmup: int = 1,
                   budget: float = ROUNDS_SECONDS, processes: int = PROCESSES) -> list:
    """The section's rows: per workload, ``scheduler.get`` against ``dask.threaded.get``,
    each the median over ``processes`` fresh interpreters that share ``budget`` and
    ``reps`` (1: in this process)."""
    import scheduler.executors

    from .suite import Row

    workers = scheduler.executors.default_workers()
    rows = []
    for index, (name, collection) in enumerate(workloads(scale)):
        if processes > 1:
            figures = [_timed_in_fresh_process(index, scale, max(3, reps // processes),
                                               warmup, budget / processes)
                       for _ in range(processes)]
            t_ours = statistics.median(f[0] for f in figures)
            t_dask = statistics.median(f[1] for f in figures)
        else:
            dsk, keys = graph_of(collection)
            t_ours, t_dask = timed_pair(dsk, keys, workers, reps, warmup, budget)
        rows.append(Row(f"dask: {name}", f"scheduler.get({workers})", t_ours * 1e3,
                        f"dask.threaded.get({workers})", t_dask * 1e3, "ms", "<= 1.0",
                        t_ours <= t_dask))
    return rows


def _timed_in_fresh_process(index: int, scale: int, reps: int, warmup: int,
                            budget: float) -> tuple[float, float]:
    """``timed_pair`` of workload ``index`` in a fresh interpreter (``--one``), which
    imports the same package as this one; its errors go to this process's stderr."""
    from .suite import child_env

    done = subprocess.run(
        [sys.executable, "-m", "dataflow.bench.bench_dask_workloads", "--one", str(index),
         str(scale), str(reps), str(warmup), str(budget)],
        env=child_env(), stdout=subprocess.PIPE, text=True, check=True)
    t_ours, t_dask = json.loads(done.stdout.strip().splitlines()[-1])
    return t_ours, t_dask


def _one(args: list[str]) -> int:
    """``--one INDEX SCALE REPS WARMUP BUDGET``: time one workload, print its pair as JSON."""
    import scheduler.executors

    index, scale, reps, warmup = (int(a) for a in args[:4])
    budget = float(args[4])
    _, collection = workloads(scale)[index]
    dsk, keys = graph_of(collection)
    pair = timed_pair(dsk, keys, scheduler.executors.default_workers(), reps, warmup, budget)
    print(json.dumps(pair))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--one"]:
        return _one(args[1:])
    quick = "--quick" in args
    import platform

    import dask

    import scheduler.executors

    from .suite import format_table

    rows = dask_workloads(scale=10, reps=3, warmup=1, budget=0.0, processes=1) if quick \
        else dask_workloads()
    print(f"machine: {platform.machine()}, {scheduler.executors.default_workers()} cores, "
          f"Python {platform.python_version()}, dask {dask.__version__}"
          f"{' (--quick: sizes / 10, a smoke run)' if quick else ''}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
