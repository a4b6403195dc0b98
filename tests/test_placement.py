"""The conformance suite, part two: where tasks run (``scheduler/placement.py``).

Every executor must keep these promises on a first call, when nothing about the tasks
has been measured: unknown tasks run in parallel, isolating executors never run user
code in the caller, a task that kills its worker is an error and never the caller's
death, ``timeout=`` raises on time naming the running node, and a run whose tasks all
finished returns. The cost table keeps nothing of the user's alive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import gc
import importlib.util
import os
import threading
import time
import weakref

import numpy as np
import pytest

import dataflow as df
import scheduler
from scheduler import Callback, NodeError
from scheduler.placement import (
    MIN_MEASURED_SECONDS,
    RECHECK_EVERY,
    CostTable,
    PoolVerdicts,
    graph_kind,
    stable_cost_key,
)

HAS_DISTRIBUTED = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAS_DISTRIBUTED, reason="dask.distributed not installed")

POOLED = ["threads", "asyncio", "processes", "external-pool"]
ISOLATING = ["processes", pytest.param("dask", marks=needs_dask)]


class Driver:
    """One way of calling an engine per executor kind: ``asyncio`` through
    ``run_async`` on a fresh loop, an ``external-pool`` through a user's executor."""

    def __init__(self, kind: str, workers: int = 2):
        self.kind = kind
        self.external = cf.ThreadPoolExecutor(workers) if kind == "external-pool" else None
        self.engine = scheduler.Engine(self.external or kind, workers=workers)

    def run(self, *args, **kwargs):
        if self.kind == "asyncio":
            return asyncio.run(self.engine.run_async(*args, **kwargs))
        return self.engine.run(*args, **kwargs)

    def get(self, *args, **kwargs):
        return self.engine.get(*args, **kwargs)

    def close(self) -> None:
        self.engine.close()
        if self.external is not None:
            self.external.shutdown()


@pytest.fixture
def driver(request):
    d = Driver(request.param, workers=getattr(request, "workers", 2))
    try:
        yield d
    finally:
        d.close()


# -- module-level task functions (process pools must import them) ----------------------------

def pid_of(_: object = None) -> int:
    return os.getpid()


def exit_worker() -> None:
    os._exit(3)


def nap(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def add(a, b):
    return a + b


class WorkerNames(Callback):
    def __init__(self) -> None:
        self.by_name: dict[str, str] = {}

    def posttask(self, run, record) -> None:
        self.by_name[record.name] = record.worker


# -- isolating executors never run user code in the caller -----------------------------------

@pytest.mark.parametrize("kind", ISOLATING)
def test_isolating_executors_run_tasks_in_a_worker_process(kind):
    with scheduler.Engine(kind, workers=1) as engine:
        assert engine.get({"a": (pid_of,)}, "a", timeout=60) != os.getpid()
        # Tiny dataflow nodes, hinted cheap from their shapes: still not in the caller.
        with df.Graph():
            x = df.placeholder("x", (3,))
            out = df.sum(df.tanh(x) * 2.0)
        names = WorkerNames()
        engine.run(out, {x: np.ones(3)}, callbacks=[names], timeout=60)
        assert set(names.by_name) >= {"tanh", "sum"}
        driver = threading.current_thread().name
        assert all(worker != driver for worker in names.by_name.values()), names.by_name


def test_processes_one_shot_get_runs_in_a_worker_process():
    assert scheduler.get({"a": (pid_of,)}, "a", executor="processes", workers=1) != os.getpid()


def test_a_task_that_kills_its_worker_is_a_node_error_and_the_caller_lives():
    with scheduler.Engine("processes", workers=1) as engine:
        with pytest.raises(NodeError, match="'dies'"):
            engine.get({"dies": (exit_worker,)}, "dies", timeout=60)
        assert engine.get({"a": 1, "b": (add, "a", 1)}, "b", timeout=60) == 2
    with pytest.raises(NodeError, match="'dies'"):
        scheduler.get({"dies": (exit_worker,)}, "dies", executor="processes", workers=1)


# -- unknown tasks are parallel from the first call ------------------------------------------

@pytest.mark.parametrize("kind", ["threads", "asyncio", "external-pool"])
def test_first_call_of_unknown_tasks_is_parallel(kind):
    """Four tasks that can only finish together (a barrier): run one after another on
    the caller, the first would wait forever; the barrier's timeout turns that into an
    error instead of a hang."""
    barrier = threading.Barrier(4, timeout=20)

    def meet(i):
        barrier.wait()
        return i

    waits = [df.custom_op(f"test.meet{i}", lambda v, i=i: meet(i) + v) for i in range(4)]
    with df.Graph():
        x = df.placeholder("x", ())
        out = df.add_n([w(x) for w in waits])
    d = Driver(kind, workers=4)
    try:
        assert d.run(out, {x: 0.0}) == 6.0
        barrier.reset()
        tasks = {f"t{i}": (meet, i) for i in range(4)}
        assert d.get(tasks, list(tasks)) == (0, 1, 2, 3)
    finally:
        d.close()


def test_one_shot_get_of_unknown_io_tasks_is_parallel_on_the_first_call():
    barrier = threading.Barrier(8, timeout=20)

    def io(i):
        barrier.wait()
        return i

    tasks = {f"t{i}": (functools.partial(io, i),) for i in range(8)}
    assert scheduler.get(tasks, list(tasks), executor="threads", workers=8) == tuple(range(8))


def test_processes_first_call_is_parallel():
    with scheduler.Engine("processes", workers=2) as engine:
        engine.get({"warm": (add, 1, 1)}, "warm", timeout=60)  # start the workers
        tasks = {f"n{i}": (nap, 0.6, i) for i in range(2)}
        start = time.perf_counter()
        assert engine.get(tasks, list(tasks), timeout=60) == (0, 1)
        assert time.perf_counter() - start < 1.15  # one after another: 1.2 s at least


def test_static_cost_hints_send_large_matmuls_to_the_pool_on_the_first_run():
    with df.Graph():
        a = df.placeholder("a", (256, 256))
        b = df.placeholder("b", (256, 256))
        left, right = df.matmul(a, a), df.matmul(b, b)
        tiny = df.placeholder("t", (3,))
        small = df.tanh(tiny)
    names = WorkerNames()
    with scheduler.Engine("threads", workers=2) as engine:
        feeds = {a: np.ones((256, 256)), b: np.ones((256, 256)), tiny: np.ones(3)}
        engine.run([left, right, small], feeds, callbacks=[names])
    driver = threading.current_thread().name
    assert names.by_name[left.name] != driver and names.by_name[right.name] != driver
    assert names.by_name[small.name] == driver  # known cheap from its shape: no hand-off


# -- timeouts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [*POOLED, pytest.param("dask", marks=needs_dask)])
def test_timeout_raises_on_time_naming_the_running_node(kind):
    d = Driver(kind)
    try:
        if kind in ("processes", "dask"):
            d.get({"warm": (add, 1, 1)}, "warm", timeout=60)  # start the workers first
        tasks = {"slow": (nap, 3.0, 1), "after": (add, "slow", 1)}
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="slow") as info:
            d.get(tasks, "after", timeout=0.3)
        late = time.perf_counter() - start - 0.3
        assert late < 0.5, f"raised {late:.3f} s after the deadline"  # the benchmark: 50 ms
        if kind != "dask":  # the cluster runs its own graph; the engine names what is left
            assert "running: 'slow'" in str(info.value)
    finally:
        d.close()


@pytest.mark.parametrize("timeout", [float("nan"), -1.0, "1", True])
@pytest.mark.parametrize("kind", ["inline", "threads", "processes"])
def test_bad_timeouts_are_one_clear_error_on_every_executor(kind, timeout):
    with scheduler.Engine(kind, workers=1) as engine:
        with pytest.raises((ValueError, TypeError), match="timeout must be"):
            engine.get({"a": (add, 1, 1)}, "a", timeout=timeout)


@pytest.mark.parametrize("kind", ["inline", "threads", "processes"])
def test_far_and_infinite_timeouts_are_no_deadline(kind):
    with scheduler.Engine(kind, workers=1) as engine:
        assert engine.get({"a": (add, 1, 1)}, "a", timeout=1e10) == 2
        assert engine.get({"a": (add, 1, 2)}, "a", timeout=float("inf")) == 3


@pytest.mark.parametrize("kind", ["inline", "threads"])
def test_a_run_whose_tasks_all_finished_returns_its_results(kind):
    """The last task ends after the deadline, on the driving thread: every task has
    finished, so the run returns rather than discarding the results."""
    with scheduler.Engine(kind, workers=2, inline_threshold=10.0) as engine:
        tasks = {"s": 0.0, "last": (nap, "s", 5)}
        assert engine.get(tasks, "last") == 5              # 'nap' is now known cheap
        assert engine.get(tasks, "last", feeds={"s": 0.3}, timeout=0.1) == 5


# -- shared default engines and the cost table ---------------------------------------------

def test_one_shot_calls_share_a_default_engine_per_executor_and_workers():
    first = scheduler.default_engine("threads", 2)
    assert scheduler.default_engine("threads", 2) is first
    assert scheduler.default_engine("threads", 3) is not first
    found: list = []
    threads = [threading.Thread(target=lambda: found.append(scheduler.default_engine("inline")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e is found[0] for e in found)
    scheduler.get({"a": (add, 1, 1)}, "a", executor="threads", workers=2)
    assert first._costs, "the shared engine learned from the one-shot call"
    scheduler.close_default_engines()
    assert first._closed and scheduler.default_engine("threads", 2) is not first


class Payload:
    """Something a closure captures (weakly referenceable, so its death is observable)."""


def test_the_cost_table_keeps_no_closure_or_partial_alive():
    alive = []

    def closure_over(payload):
        def task():
            return payload is not None
        return task

    def uses(payload, x):
        return x

    for _ in range(20):
        payload = Payload()
        alive.append(weakref.ref(payload))
        tasks = {"a": (closure_over(payload),),
                 "b": (functools.partial(uses, payload), "a"),
                 "c": (lambda x, p=payload: x, "b")}
        assert scheduler.get(tasks, "c", executor="threads", workers=2) is True
        del payload, tasks
    gc.collect()
    assert not [r for r in alive if r() is not None]


def test_cost_keys_are_stable_and_the_table_is_bounded():
    def make():
        def task():
            return 1
        return task

    assert stable_cost_key(make()) == stable_cost_key(make())  # closures of one def
    assert stable_cost_key(np.add) is np.add
    table = CostTable(max_keys=3)
    for i in range(10):
        table.observe(("key", i), 1e-6)
    assert len(table) == 3 and ("key", 9) in table and ("key", 0) not in table
    table.observe_pooled(("key", 9), 5.0)  # a pool sample never raises an estimate
    assert table.get(("key", 9)) == 1e-6


class _LiveRoots:
    """How many roots have started whose consumers have not all finished, and the most
    seen when a root starts (counted in the tasks themselves, not by when the garbage
    is collected, so that it measures the scheduler's choices alone)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live = 0
        self.most = 0
        self.consumers_left: dict[int, int] = {}

    def started(self, i):
        with self.lock:
            self.most = max(self.most, self.live)
            self.live += 1
            self.consumers_left[i] = 2

    def consumed(self, i):
        with self.lock:
            self.consumers_left[i] -= 1
            if self.consumers_left[i] == 0:
                self.live -= 1


def _make_chunk(i, seen):
    seen.started(i)
    time.sleep(0.003)  # a load from disk, say: the GIL is free meanwhile
    return np.full(300_000, float(i))  # 2.4 MB


def _total(chunk, i, seen):
    time.sleep(0.001)
    seen.consumed(i)
    return float(chunk.sum())


def _largest(chunk, i, seen):
    time.sleep(0.001)
    seen.consumed(i)
    return float(chunk.max())


@pytest.mark.parametrize("large_root_bytes", [None, 1 << 40])
def test_large_roots_wait_for_a_free_worker_so_their_consumers_free_memory_first(
        large_root_bytes, monkeypatch):
    # Roots that make large values, each read by two consumers (so that no chain runs
    # a root and its consumer as one job), the last of which frees it: once their size
    # is known, at most one per worker is in flight, and the consumers of finished ones
    # go first, as in dask's local scheduler. Handed over ahead (the rule switched off),
    # roots start while the values of earlier ones still wait for their consumers.
    if large_root_bytes is not None:
        monkeypatch.setattr(scheduler.placement, "LARGE_ROOT_BYTES", large_root_bytes)
    seen = _LiveRoots()
    dsk = {f"chunk-{i}": (_make_chunk, i, seen) for i in range(16)}
    dsk.update({f"total-{i}": (_total, f"chunk-{i}", i, seen) for i in range(16)})
    dsk.update({f"largest-{i}": (_largest, f"chunk-{i}", i, seen) for i in range(16)})
    dsk["all"] = (sum, [f"total-{i}" for i in range(16)] + [f"largest-{i}" for i in range(16)])
    want = sum(300_000.0 * i + i for i in range(16))
    with scheduler.Engine("threads", workers=2) as engine:
        assert engine.get(dsk, "all") == want  # learns the roots' sizes
        seen.most = 0
        assert engine.get(dsk, "all") == want
    assert seen.live == 0
    if large_root_bytes is None:
        assert seen.most <= 2, seen.most
    else:
        assert seen.most >= 3, seen.most


class _Frame:
    """Like a pandas DataFrame: unknown attributes are looked up as columns."""

    lookups: list[str] = []

    def __getattr__(self, name):
        _Frame.lookups.append(name)
        raise AttributeError(name)


def _make_frame(i):
    time.sleep(0.001)
    return _Frame()


def test_learning_root_sizes_never_asks_a_value_for_a_missing_attribute():
    _Frame.lookups.clear()
    dsk = {f"frame-{i}": (_make_frame, i) for i in range(4)}
    dsk["all"] = (len, [f"frame-{i}" for i in range(4)])
    with scheduler.Engine("threads", workers=2) as engine:
        for _ in range(2):
            assert engine.get(dsk, "all") == 4
    assert "nbytes" not in _Frame.lookups


# -- a kind of graph the pool does not pay for is walked on the calling thread ----------------

def _decisions(verdicts, kind, runs):
    return [verdicts.walk_next(kind) for _ in range(runs)]


def test_a_kind_whose_pooled_run_kept_one_core_busy_is_walked_once_then_the_faster_way_wins():
    kind = graph_kind(["parse", "sum"])
    verdicts = PoolVerdicts()
    assert not verdicts.walk_next(kind)  # nothing measured: the pool
    verdicts.pooled(kind, wall=0.100, cpu=0.104, workers=2)  # one core busy of two
    assert verdicts.walk_next(kind)  # so the next run is a walk, timed
    verdicts.walked(kind, 0.080)  # faster: walks from now on, pooled every RECHECK_EVERY
    ways = _decisions(verdicts, kind, 2 * RECHECK_EVERY)
    assert ways.count(False) == 2 and ways[RECHECK_EVERY - 2] is False
    verdicts.pooled(kind, wall=0.060, cpu=0.062, workers=2)  # the pool became faster
    ways = _decisions(verdicts, kind, RECHECK_EVERY)
    assert ways.count(True) == 1  # the walk is only re-measured


def test_a_walk_slower_than_the_pool_leaves_the_kind_to_the_pool():
    kind = graph_kind(["load"])
    verdicts = PoolVerdicts()
    verdicts.pooled(kind, wall=0.100, cpu=0.090, workers=4)
    assert verdicts.walk_next(kind)
    verdicts.walked(kind, 0.250)
    assert _decisions(verdicts, kind, RECHECK_EVERY).count(True) == 1


@pytest.mark.parametrize("cpu, workers, wall", [
    (0.002, 2, 0.100),   # the tasks waited (I/O, sleeps, a barrier): a walk would serialise it
    (0.190, 2, 0.100),   # two cores computed side by side
    (0.100, 1, 0.100),   # one worker: nothing to compare
    (MIN_MEASURED_SECONDS / 4, 2, MIN_MEASURED_SECONDS / 4),  # too short to judge
])
def test_pooled_runs_that_used_the_cores_or_waited_are_never_walked(cpu, workers, wall):
    kind = graph_kind(["task"])
    verdicts = PoolVerdicts()
    verdicts.pooled(kind, wall=wall, cpu=cpu, workers=workers)
    assert not any(_decisions(verdicts, kind, 2 * RECHECK_EVERY))


def test_a_kind_found_parallel_again_goes_back_to_the_pool():
    kind = graph_kind(["task"])
    verdicts = PoolVerdicts()
    verdicts.pooled(kind, wall=0.100, cpu=0.100, workers=2)
    verdicts.walk_next(kind)
    verdicts.walked(kind, 0.090)
    verdicts.pooled(kind, wall=0.060, cpu=0.115, workers=2)  # larger inputs, say
    assert not any(_decisions(verdicts, kind, 2 * RECHECK_EVERY))


def test_pool_verdicts_are_bounded():
    verdicts = PoolVerdicts(max_kinds=3)
    for i in range(10):
        verdicts.pooled(graph_kind([i]), wall=0.1, cpu=0.1, workers=2)
    assert len(verdicts) == 3 and verdicts.walk_next(graph_kind([9]))
    assert not verdicts.walk_next(graph_kind([0]))


def _python_loop(i, n=60_000):
    """Pure Python: holds the GIL throughout, like much of dask.bag or pandas' apply.
    Returns the thread it ran on and its value."""
    total = 0
    for k in range(n):
        total += k % 7
    return threading.get_ident(), i + total


_LOOP_TOTAL = sum(k % 7 for k in range(60_000))


@pytest.mark.parametrize("entry", ["get", "run"])
def test_gil_bound_graphs_are_walked_on_the_caller_once_the_pool_did_not_pay(entry):
    """Eight GIL-bound tasks on two workers: the first run is pooled (nothing is known)
    and keeps one core busy, so a later run walks them all on the calling thread; the
    values are the same either way."""
    caller = threading.get_ident()
    threads: list[int] = []

    def loop_op(i):
        def kernel(v):
            ident, value = _python_loop(i)
            threads.append(ident)
            return float(value) + v
        return df.custom_op(f"test.loop{i}", kernel)

    with df.Graph():
        x = df.placeholder("x", ())
        out = df.add_n([loop_op(i)(x) for i in range(8)])
    tasks = {f"t{i}": (_python_loop, i) for i in range(8)}
    threads_per_run = []
    with scheduler.Engine("threads", workers=2) as engine:
        for _ in range(4):
            threads.clear()
            if entry == "get":
                results = engine.get(tasks, list(tasks))
                threads.extend(ident for ident, _ in results)
                assert [v for _, v in results] == [i + _LOOP_TOTAL for i in range(8)]
            else:
                assert engine.run(out, {x: 0.0}) == 8.0 * _LOOP_TOTAL + 28
            threads_per_run.append(set(threads))
    assert threads_per_run[0] != {caller}  # the first run: unknown tasks, the pool
    assert {caller} in threads_per_run[1:]  # then a walk on the caller


def test_tasks_that_meet_each_other_run_call_after_call_on_a_given_pool_or_with_no_inlining():
    """The documented ways to run tasks that wait for one another (placement.py): an
    engine with ``inline_threshold=0``, or ``scheduler.get(..., pool=)``; both keep
    every task in the pool however often the graph runs."""
    barrier = threading.Barrier(4, timeout=20)

    def meet(i):
        barrier.wait()
        return i

    tasks = {f"t{i}": (meet, i) for i in range(4)}
    with cf.ThreadPoolExecutor(4) as pool:
        for _ in range(10):
            assert scheduler.get(tasks, list(tasks), pool=pool) == (0, 1, 2, 3)
    with scheduler.Engine("threads", workers=4, inline_threshold=0) as engine:
        for _ in range(10):
            assert engine.get(tasks, list(tasks)) == (0, 1, 2, 3)
