"""What a user meets the first time: calls of tasks the engine has never measured.

Each first call runs in a fresh interpreter (``fresh_seconds``), so that no learned
cost, warm pool or cached plan of an earlier measurement helps it; the contenders of a
row run round-robin, one fresh interpreter each per round, and the median counts.

- ``io``: 8 distinct I/O-bound callables (``time.sleep``), ``scheduler.get`` on 8
  threads against ``dask.threaded.get(num_workers=8)``, first call each.
- ``gil``: 4 GIL-bound pure-Python loops on 2 processes, on a warm engine, against
  ``dask.multiprocessing.get`` and a warm ``ProcessPoolExecutor(2).map``.
- ``timeouts``: how long after its deadline ``timeout=`` raises, per executor.
- ``firstrun``: the first run of a fresh threads(2) engine on the 16 x 4 matmul graph,
  as a plain task graph (unknown tasks) and as dataflow nodes (costs hinted from
  shapes), against the inline executor.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

from .suite import Row, interleaved

ROUNDS = 5


def fresh_seconds(code: str) -> float:
    """Run ``code`` in a fresh interpreter (BLAS on one thread, as in the whole suite);
    it prints one number of seconds last."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    return float(done.stdout.split()[-1])


def fresh_medians(codes: list[str], rounds: int = ROUNDS) -> list[float]:
    """Median of each snippet's figure over ``rounds`` round-robin fresh interpreters."""
    times: list[list[float]] = [[] for _ in codes]
    for r in range(rounds):
        for i in range(len(codes)):
            j = (i + r) % len(codes)
            times[j].append(fresh_seconds(codes[j]))
    return [statistics.median(t) for t in times]


# -- 8 distinct I/O-bound tasks, first call ---------------------------------------------------

IO_GRAPH = """
import time
def sleeper(i):
    def io(x):
        time.sleep(0.2)
        return x + i
    return io
dsk = {f"t{i}": (sleeper(i), i) for i in range(8)}
keys = list(dsk)
"""


def io_tasks() -> list[Row]:
    ours, dask_ = fresh_medians([
        IO_GRAPH + """
import scheduler
start = time.perf_counter()
scheduler.get(dsk, keys, executor="threads", workers=8)
print(time.perf_counter() - start)
""",
        IO_GRAPH + """
import dask.threaded
start = time.perf_counter()
dask.threaded.get(dsk, keys, num_workers=8)
print(time.perf_counter() - start)
"""])
    return [Row("8 distinct I/O tasks (sleep 0.2 s), first call", "threads(8) get", ours,
                "dask.threaded.get(8)", dask_, "s", "<= 1.1x", ours <= 1.1 * dask_)]


# -- 4 GIL-bound tasks on 2 processes ----------------------------------------------------------

def gil_tasks() -> list[Row]:
    import concurrent.futures as cf
    import multiprocessing

    import dask.multiprocessing

    import scheduler

    from . import workloads as w

    dsk = {f"loop{i}": (w.python_loop, w.LOOP_N) for i in range(4)}
    keys = list(dsk)
    context = multiprocessing.get_context("forkserver")
    with cf.ProcessPoolExecutor(2, mp_context=context) as pool:
        engine = scheduler.default_engine("processes", 2)
        ours, dask_mp, pool_map = interleaved([
            lambda: scheduler.get(dsk, keys, executor="processes", workers=2),
            lambda: dask.multiprocessing.get(dsk, keys, num_workers=2),
            lambda: list(pool.map(w.python_loop, [w.LOOP_N] * 4)),
        ], reps=7, warmup=1)
        engine.close()
    return [Row("4 GIL-bound Python loops, warm", "processes(2) get", ours,
                "dask.multiprocessing.get(2)", dask_mp, "s", "<= 1.1x", ours <= 1.1 * dask_mp),
            Row("4 GIL-bound Python loops, warm", "processes(2) get", ours,
                "ProcessPoolExecutor(2).map", pool_map, "s", "<= 1.1x",
                ours <= 1.1 * pool_map)]


# -- timeout latency ---------------------------------------------------------------------------

TIMEOUT = 0.3
SLOW = 2.0


def timeout_latency(executor: str, reps: int = 3) -> float:
    """Median seconds between the deadline and the ``TimeoutError`` on ``executor``."""
    import scheduler

    from . import workloads as w

    dsk = {"slow": (w.sleep_then, SLOW, 1), "out": (w.add, "slow", 1)}
    late = []
    with scheduler.Engine(executor, workers=2) as engine:
        if executor in ("processes", "dask"):
            engine.get({"warm": (w.add, 1, 1)}, "warm")  # start the workers first
        for _ in range(reps):
            start = time.perf_counter()
            try:
                engine.get(dsk, "out", timeout=TIMEOUT)
            except TimeoutError:
                late.append(time.perf_counter() - start - TIMEOUT)
            else:
                raise AssertionError(f"{executor}: the run did not time out")
    return statistics.median(late)


def timeouts() -> list[Row]:
    import importlib.util

    rows = []
    for executor in ("threads", "asyncio", "processes", "dask"):
        if executor == "dask" and importlib.util.find_spec("distributed") is None:
            continue
        seconds = timeout_latency(executor)
        rows.append(Row(f"timeout={TIMEOUT} s, a {SLOW} s task", f"{executor}: raised after",
                        seconds * 1e3, "deadline + 50 ms", 50.0, "ms", "<= 50 ms",
                        seconds <= 0.05))
    return rows


# -- the first run of a fresh engine on parallel matmuls ---------------------------------------

FIRST_RUN_DICT = """
import os, time
import scheduler
from dataflow.bench import workloads as w
dsk, out = w.parallel_graph()
with scheduler.Engine("{executor}", workers=2) as engine:
    start = time.perf_counter()
    engine.get(dsk, out)
    print(time.perf_counter() - start)
"""

FIRST_RUN_NODES = """
import time
import scheduler
from dataflow.bench import workloads as w
out, feeds = w.parallel_nodes()
with scheduler.Engine("{executor}", workers=2) as engine:
    start = time.perf_counter()
    engine.run(out, feeds)
    print(time.perf_counter() - start)
"""


def first_run(rounds: int = 9) -> list[Row]:
    """The benchmark's own graph (a plain task graph: every task unknown) carries the
    target. The same work as dataflow nodes is shown for context: its first run also
    compiles the plan (simplify, lowering: a few ms, serial) and ends in one 16-input
    ``add_n`` where the task graph adds pairwise in parallel, so its ceiling is lower."""
    rows = []
    for label, code, target in (("task graph, unknown costs", FIRST_RUN_DICT, True),
                                ("dataflow nodes, costs from shapes", FIRST_RUN_NODES, False)):
        inline, threads = fresh_medians([code.format(executor="inline"),
                                         code.format(executor="threads")], rounds)
        speedup = inline / threads
        rows.append(Row(f"16 branches x 4 matmuls 384^2, first run ({label})",
                        "fresh threads(2) speedup", speedup, "fresh inline", 1.0, "x",
                        ">= 1.8x" if target else "(context)",
                        speedup >= 1.8 if target else None))
    return rows


SECTIONS = {
    "io": io_tasks,
    "gil": gil_tasks,
    "timeouts": timeouts,
    "firstrun": first_run,
}


def main() -> None:  # ``python -m dataflow.bench.first_contact [section ...]``
    from .suite import format_table

    names = sys.argv[1:] or list(SECTIONS)
    rows = [r for name in names for r in SECTIONS[name]()]
    print(format_table(rows))
    print(json.dumps(len(rows)), file=sys.stderr)


if __name__ == "__main__":
    main()
