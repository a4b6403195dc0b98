"""The dask.distributed executor (scheduler/dask_executor.py) and ``scheduler.get`` as the
scheduler of dask collections.

Clusters run on loopback. Each test starts and closes its own cluster, so that the
leak fixture (tests/conftest.py) checks that closing leaves no thread or process
behind; in-process clusters (``processes=False``) start in a fraction of a second, and
one test pays for worker processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from bits import same_bits  # noqa: E402
from engines import RaisingIn  # noqa: E402

import dataflow as df  # noqa: E402
import scheduler  # noqa: E402
from dataflow.models import build_mlp  # noqa: E402
from scheduler import Callback, FeedError, NodeError, NumericsError  # noqa: E402
from scheduler.dask_executor import DaskExecutor, RemoteError, RemoteValue, _Layout  # noqa: E402
from scheduler.taskgraph import TaskGraphSource  # noqa: E402

# distributed keeps one process-wide offload thread for its whole life (its own test
# utilities start it at import for the same reason): start it before any test runs.
try:
    from distributed.utils import _offload_executor

    _offload_executor.submit(lambda: None).result()
except ImportError:  # pragma: no cover - a distributed without it
    pass


# --------------------------------------------------------------------------- helpers

def mlp_problem(seed: int = 0):
    model = build_mlp((20, 16, 10))
    rng = np.random.default_rng(seed)
    params = model.init_params(seed + 1)
    feeds = model.feeds(params, rng.standard_normal((8, 20)), rng.integers(0, 10, 8))
    return model, [model.loss, model.logits, *model.grads], feeds


def assert_bitwise_equal(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert same_bits(a, b)


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def fail(x):
    raise ValueError(f"bad value {x}")


def slow(x):
    time.sleep(1.5)
    return x


class Recorder(Callback):
    def __init__(self):
        self.started = self.finished = 0
        self.pre: list[int] = []
        self.records: list = []
        self.error = None

    def start(self, run):
        self.started += 1

    def pretask(self, run, position):
        self.pre.append(position)

    def posttask(self, run, record):
        self.records.append(record)

    def finish(self, run, error):
        self.finished += 1
        self.error = error


@pytest.fixture
def local_executor():
    """A dask executor on its own in-process cluster (2 workers x 1 thread, loopback)."""
    executor = DaskExecutor(n_workers=2, processes=False)
    try:
        yield executor
    finally:
        executor.shutdown()


# --------------------------------------------------------------------------- fusion

def test_linear_chains_fuse_into_one_task_and_fetched_nodes_end_tasks():
    # a -> b -> c -> d is one chain; fetching b cuts it after b.
    dsk = {"x": 1, "a": (inc, "x"), "b": (inc, "a"), "c": (inc, "b"), "d": (inc, "c")}
    source = TaskGraphSource(dsk)
    whole = _Layout(scheduler.Plan(["d"], [], source.spec), False)
    assert [[whole.chains[0].steps[i][1] for i in range(4)]] == [["a", "b", "c", "d"]]
    assert whole.outputs == [0] and whole.sources == [0]

    cut = _Layout(scheduler.Plan(["d", "b"], [], source.spec), False)
    assert [[s[1] for s in c.steps] for c in cut.chains] == [["a", "b"], ["c", "d"]]
    assert cut.outputs == [1, 0]


def test_fan_out_and_fan_in_are_not_fused():
    # a feeds two nodes (not fused into either); s has two computed parents.
    dsk = {"x": 1, "a": (inc, "x"), "b": (inc, "a"), "c": (inc, "a"), "s": (add, "b", "c"),
           "t": (inc, "s")}
    plan = scheduler.Plan(["t"], [], TaskGraphSource(dsk).spec)
    layout = _Layout(plan, False)
    assert sorted(tuple(s[1] for s in c.steps) for c in layout.chains) == [
        ("a",), ("b",), ("c",), ("s", "t")]


def test_mlp_fuses_some_nodes():
    _, fetches, feeds = mlp_problem()
    with scheduler.Engine("inline") as engine:
        plan = engine.plan(fetches, feeds)
    layout = _Layout(plan, False)
    assert len(layout.chains) < len(plan.compute)
    assert sorted(p for m in layout.members for p in m) == sorted(plan.compute)


# --------------------------------------------------------------------------- in-process cluster

def test_forward_and_gradient_equal_inline_bitwise(local_executor):
    _, fetches, feeds = mlp_problem()
    want = scheduler.run(fetches, feeds, executor="inline")
    with scheduler.Engine(local_executor) as engine:
        for _ in range(2):  # the second run reuses the cached plan and fusion
            assert_bitwise_equal(engine.run(fetches, feeds), want)
        local_executor.scatter_threshold = 0  # now every input is scattered, not embedded
        assert_bitwise_equal(engine.run(fetches, feeds), want)
        # Feeds are validated before anything reaches the cluster.
        bad = dict(feeds)
        bad[next(iter(bad))] = np.zeros((3, 3))
        with pytest.raises(FeedError):
            engine.run(fetches, bad)
        # Fetching only fed values needs no cluster at all.
        x = next(iter(feeds))
        assert engine.run(x, {x: feeds[x]}) is feeds[x]


def test_plain_task_graphs_with_odd_literals(local_executor):
    # Literals that look like dask tasks or keys stay literals on the cluster too.
    dsk = {"t": ("x", 1), "s": {"k": (inc, 1)}, "n": (len, "t"), "m": (len, "s"),
           "out": (add, "n", "m")}
    for threshold in (10**9, 0):
        local_executor.scatter_threshold = threshold
        assert scheduler.get(dsk, ["out", "t"], executor=local_executor) == \
            scheduler.get(dsk, ["out", "t"], executor="inline")


def test_a_task_error_is_raised_as_is_with_a_note_naming_the_node(local_executor):
    dsk = {"x": 1, "a": (inc, "x"), "boom": (fail, "a"), "after": (inc, "boom")}
    with pytest.raises(ValueError, match="bad value 2") as info:
        scheduler.get(dsk, "after", executor=local_executor)
    assert type(info.value) is ValueError
    assert info.value.__notes__ == ["node 'boom' (op fail) failed"]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_check_numerics_raises_numerics_error(local_executor):
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = df.log(x)
        z = y * 2.0
    with scheduler.Engine(local_executor, check_numerics=True) as engine:
        with pytest.raises(NumericsError, match="NaN"):
            engine.run(z, {x: np.array([1.0, -1.0])})
        assert np.array_equal(engine.run(z, {x: np.array([1.0, 2.0])}), np.log([1.0, 2.0]) * 2)


def test_callbacks_get_records_with_dask_worker_names(local_executor):
    _, fetches, feeds = mlp_problem()
    rec = Recorder()
    with scheduler.Engine(local_executor) as engine:
        plan = engine.plan(fetches, feeds)
        engine.run(fetches, feeds, callbacks=[rec])
    assert rec.started == rec.finished == 1 and rec.error is None
    assert sorted(r.position for r in rec.records) == sorted(plan.compute)
    assert sorted(rec.pre) == sorted(plan.compute)
    workers = set(local_executor.client.scheduler_info()["workers"])
    ends = {r.position: r.end for r in rec.records}
    for r in rec.records:
        assert r.worker in workers and r.worker.startswith("tcp://127.0.0.1:")
        assert r.ready <= r.start <= r.end
        for q in plan.parents[r.position]:  # no node starts before its parents ended
            assert ends.get(q, r.start) <= r.start
        if r.position in plan.fetch_positions:
            assert isinstance(r.value, (np.ndarray, np.generic))
        else:
            assert isinstance(r.value, RemoteValue) and r.value.nbytes >= 0


def test_profiler_records_come_back_with_dask_worker_names(local_executor):
    _, fetches, feeds = mlp_problem()
    prof = scheduler.Profiler()
    with scheduler.Engine(local_executor) as engine:
        plan = engine.plan(fetches, feeds)
        engine.run(fetches, feeds, callbacks=[prof])
    records = prof.records
    assert len(records) == len(plan.compute)
    assert all(r.worker.startswith("tcp://127.0.0.1:") for r in records)
    assert any(r.shape is not None and r.nbytes > 0 for r in records)


def test_failed_run_still_reports_the_nodes_that_ran(local_executor):
    dsk = {"x": 1, "a": (inc, "x"), "b": (inc, "a"), "boom": (fail, "b")}
    rec = Recorder()
    with pytest.raises(ValueError):
        scheduler.get(dsk, "boom", executor=local_executor, callbacks=[rec])
    assert rec.finished == 1 and type(rec.error) is ValueError
    assert [r.name for r in rec.records] == ["a", "b"]


def test_timeout_names_unfinished_nodes(local_executor):
    dsk = {"x": 1, "a": (slow, "x"), "b": (inc, "a")}
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="unfinished nodes"):
        scheduler.get(dsk, "b", executor=local_executor, timeout=0.3)
    assert time.perf_counter() - start < 1.4
    time.sleep(1.5)  # let the worker's sleeping task end before the cluster closes


def test_submit_returns_concurrent_futures(local_executor):
    futures = [local_executor.submit(pow, 2, k) for k in range(5)]
    assert all(isinstance(f, cf.Future) for f in futures)
    assert [f.result(timeout=30) for f in cf.as_completed(futures, timeout=30)] != []
    assert sorted(f.result() for f in futures) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match="bad value 3"):
        local_executor.submit(fail, 3).result(timeout=30)


def test_given_client_is_used_and_not_closed():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  host="127.0.0.1", protocol="tcp://", dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                  ) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        executor = DaskExecutor(client=client)
        dsk = {"x": 2, "y": (inc, "x"), "z": (add, "x", "y")}
        assert scheduler.get(dsk, "z", executor=executor) == 5
        executor.shutdown()
        assert client.status == "running"
        assert client.get(dsk, "z") == 5


# --------------------------------------------------------------------------- worker processes

def test_engine_dask_with_worker_processes():
    """``Engine("dask", workers=2)``: its own LocalCluster of two worker processes,
    closed with the engine. One cluster start, so several checks share it."""
    _, fetches, feeds = mlp_problem(3)
    want = scheduler.run(fetches, feeds, executor="inline")
    engine = scheduler.Engine("dask", workers=2)
    try:
        assert_bitwise_equal(engine.run(fetches, feeds), want)
        executor = engine._pool()
        assert isinstance(executor, DaskExecutor) and executor.cluster is not None
        assert executor.client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert len(executor.client.scheduler_info()["workers"]) == 2

        # Errors raised in another process come back as raised, naming the node.
        dsk = {"x": 1, "a": (inc, "x"), "boom": (fail, "a"), "after": (inc, "boom")}
        with pytest.raises(ValueError, match="bad value 2") as info:
            engine.get(dsk, "after")
        assert info.value.__notes__ == ["node 'boom' (op fail) failed"]

        # A value that cannot travel back from the worker process names its node.
        with pytest.raises(NodeError, match="cannot be sent back") as info:
            engine.get({"x": 1, "lock": (make_lock, "x")}, "lock", timeout=60)
        assert info.value.node_name == "lock"
        assert isinstance(info.value.__cause__, TypeError)

        # Records from the worker processes, and a plain dask graph.
        prof = scheduler.Profiler()
        wide = {"x": np.arange(4.0)}
        for i in range(8):
            wide[f"b{i}"] = (np.multiply, "x", float(i))
        wide["total"] = (sum, [f"b{i}" for i in range(8)])
        got = engine.get(wide, "total", callbacks=[prof])
        assert np.array_equal(got, scheduler.get(wide, "total", executor="inline"))
        workers = set(executor.client.scheduler_info()["workers"])
        assert {r.worker for r in prof.records} <= workers
        assert len(prof.records) == 9
    finally:
        engine.close()
    assert executor.cluster.status.name == "closed"


def die(x):
    os._exit(3)


def make_lock(x):
    import threading

    return threading.Lock()


def test_worker_death_is_a_node_error_and_the_engine_recovers():
    """A task that kills its worker process: dask gives up on it at once (no retries
    allowed), the run fails promptly naming the node, the nanny restarts the worker,
    and the next run works."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        engine = scheduler.Engine("dask", workers=1)
        try:
            dsk = {"x": 1, "a": (inc, "x"), "killer": (die, "a"), "after": (inc, "killer")}
            started = time.perf_counter()
            with pytest.raises(NodeError) as info:
                engine.get(dsk, "after", timeout=60)
            assert "killer" in info.value.node_name  # with the nodes fused into its task
            assert type(info.value.__cause__).__name__ == "KilledWorker"
            assert time.perf_counter() - started < 30
            assert engine.get({"x": 1, "y": (inc, "x")}, "y", timeout=60) == 2
        finally:
            engine.close()


# --------------------------------------------------------------------------- TLS

def test_tls_cluster_on_loopback():
    pytest.importorskip("cryptography")
    from distributed.security import Security

    security = Security.temporary()
    _, fetches, feeds = mlp_problem(5)
    want = scheduler.run(fetches, feeds, executor="inline")
    owner = DaskExecutor(n_workers=1, processes=False, security=security)
    try:
        address = owner.cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        assert_bitwise_equal(scheduler.run(fetches, feeds, executor=owner), want)
        # A second client connects by address, with the same credentials.
        guest = DaskExecutor(address=address, security=security)
        try:
            assert guest.client.scheduler.address == address
            assert_bitwise_equal(scheduler.run(fetches, feeds, executor=guest), want)
        finally:
            guest.shutdown()
    finally:
        owner.shutdown()


# --------------------------------------------------------------------------- dask collections

def test_dask_array_with_scheduler_get():
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    x = da.arange(24, chunks=5, dtype=float).reshape(4, 6).rechunk((2, 3))
    y = ((x + x.sum(axis=0)) * 2).mean(axis=1)
    (got,) = dask.compute(y, scheduler=scheduler.get)
    want = y.compute(scheduler="sync")
    assert got.dtype == want.dtype and same_bits(got, want)


def test_dask_delayed_with_scheduler_get_and_profiler():
    dask = pytest.importorskip("dask")
    delayed = dask.delayed
    parts = [delayed(inc)(i) for i in range(6)]
    total = delayed(sum)(parts)
    result = delayed(add)(total, parts[0])
    prof = scheduler.Profiler()
    (got,) = dask.compute(result, scheduler=functools.partial(scheduler.get, callbacks=[prof]))
    assert got == result.compute(scheduler="sync") == 22
    assert len(prof.records) == 8  # six incs, the sum, the add


def test_dask_collections_on_the_dask_executor(local_executor):
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    x = da.ones((6, 6), chunks=3) * da.arange(6, chunks=3)
    y = (x @ x.T).sum(axis=0)
    get = functools.partial(scheduler.get, executor=local_executor)
    (got,) = dask.compute(y, scheduler=get)
    want = y.compute(scheduler="sync")
    assert same_bits(got, want)


# --------------------------------------------------------------------------- optional extra

def test_core_imports_without_distributed_and_dask_names_the_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["distributed"] = None
        import scheduler
        assert "dask_executor" not in sys.modules.get("scheduler").__dict__
        try:
            scheduler.Engine("dask")  # refused at once, before anything starts
        except ImportError as exc:
            assert "pip install 'dataflow-graph-engine[distributed]'" in str(exc), exc
        else:
            raise SystemExit("no ImportError")
        try:
            scheduler.DaskExecutor
        except ImportError as exc:
            assert "pip install 'dataflow-graph-engine[distributed]'" in str(exc), exc
        else:
            raise SystemExit("no ImportError")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --------------------------------------------------------------------------- reliability

@pytest.mark.parametrize("hook", ["start", "pretask", "posttask", "finish"])
def test_a_raising_callback_still_lets_every_finish_run(local_executor, hook):
    dsk = {"x": 1, "a": (inc, "x"), "b": (inc, "a"), "c": (add, "a", "b")}
    before, after = Recorder(), Recorder()
    with pytest.raises(RuntimeError, match=f"callback broke in {hook}"):
        scheduler.get(dsk, "c", executor=local_executor,
                      callbacks=[before, RaisingIn(hook), after])
    for rec in (before, after):
        assert rec.finished == 1
        if hook != "finish":
            assert isinstance(rec.error, RuntimeError)
    assert scheduler.get(dsk, "c", executor=local_executor, callbacks=[before]) == 5


def recurse_deep(x, depth=800):
    """Raise a RecursionError from 800 frames down (deep enough that its traceback does
    not pickle, short of the interpreter's limit, which would upset later compiles)."""
    if depth == 0:
        raise RecursionError("maximum recursion depth exceeded")
    return recurse_deep(x, depth - 1)


class Unpicklable(Exception):
    """An error that cannot travel: its argument is a lock."""


def raise_unpicklable(x):
    import threading

    raise Unpicklable(threading.Lock())


def test_a_recursion_error_reports_back(local_executor):
    """The traceback of a RecursionError holds up to a thousand frames: it must still
    arrive as the node's error, promptly, not hang the run or end it in a timeout."""
    dsk = {"x": 1, "a": (inc, "x"), "deep": (recurse_deep, "a")}
    started = time.perf_counter()
    with pytest.raises(RecursionError) as info:
        scheduler.get(dsk, "deep", executor=local_executor, timeout=30)
    assert any("'deep'" in note for note in getattr(info.value, "__notes__", ()))
    assert time.perf_counter() - started < 15


def test_an_unpicklable_error_reports_back_as_a_summary(local_executor):
    dsk = {"x": 1, "bad": (raise_unpicklable, "x")}
    with pytest.raises(NodeError, match="bad") as info:
        scheduler.get(dsk, "bad", executor=local_executor, timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteError) and cause.type_name == "Unpicklable"
    assert "lock" in cause.message and "raise_unpicklable" in cause.traceback_text


STEPS_STARTED: list[float] = []


def step(x):
    STEPS_STARTED.append(time.perf_counter())
    time.sleep(0.1)
    return x + 1


@pytest.mark.parametrize("how", ["event", "run_async"])
def test_cancel_stops_the_run_on_the_cluster(local_executor, how):
    """A chain of 8 nodes of 0.1 s (one fused dask task) cancelled at 0.2 s: the run
    raises at once, and at most the node running then ends; no node starts after."""
    import asyncio
    import threading

    dsk = {"x": 0}
    for i in range(8):
        dsk[f"s{i}"] = (step, "x" if i == 0 else f"s{i - 1}")
    STEPS_STARTED.clear()
    with scheduler.Engine(local_executor) as engine:
        if how == "event":
            plan = scheduler.Plan(["s7"], [], TaskGraphSource(dsk).spec)
            cancel = threading.Event()
            timer = threading.Timer(0.2, cancel.set)
            timer.start()
            with pytest.raises(scheduler.RunCancelled, match="unfinished nodes"):
                engine.execute(plan, {}, cancel=cancel)
            timer.join()
        else:
            with df.Graph():
                x = df.placeholder("x", ())
                h = x
                for i in range(8):
                    h = df.custom_op("tests.step", step)(h, name=f"step{i}")

            async def main():
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(engine.run_async(h, {x: 0.0}), 0.2)

            asyncio.run(main())
            engine.close()  # waits for the coordinator thread to end the abandoned run
        cancelled_at = time.perf_counter()
        time.sleep(1.0)  # what would still start on the cluster, starts now
        late = [t for t in STEPS_STARTED if t > cancelled_at + 0.05]
        assert not late, f"{len(late)} nodes started after the cancel"
        assert len(STEPS_STARTED) < 8
        assert scheduler.get(dsk, "s1", executor=local_executor) == 2


def test_close_during_a_run_gives_the_documented_error(monkeypatch):
    import threading

    import scheduler.engine as engine_module

    # Engine("dask") on an in-process cluster: it starts in a fraction of a second.
    monkeypatch.setattr(engine_module, "make_pool",
                        lambda kind, workers, *args: DaskExecutor(n_workers=1, processes=False))
    engine = scheduler.Engine("dask", workers=1)
    assert engine.get({"x": 1, "y": (inc, "x")}, "y") == 2  # the cluster is up
    dsk = {"x": 0, "a": (slow, "x"), "b": (inc, "a")}
    outcome: list = []

    def client():
        try:
            outcome.append(engine.get(dsk, "b"))
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.5)
    engine.close()
    thread.join(30)
    assert not thread.is_alive(), "the run hung after close()"
    (result,) = outcome
    assert isinstance(result, RuntimeError) and "closed" in str(result), repr(result)
    time.sleep(1.5)  # the worker's sleeping task ends before the process does
