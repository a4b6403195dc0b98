"""The execution layer's conformance suite: every executor must pass every test here."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest
from engines import ExitWorker, make_engine

import dataflow as df
import scheduler
from scheduler import Callback, FeedError, NodeError, NumericsError

EXECUTORS = ["inline", "threads", "threads-all-pooled", "asyncio", "processes", "external-pool"]


class AsyncEngine:
    """Drive an engine through ``run_async`` on a fresh event loop, as a sync facade."""

    def __init__(self, engine: scheduler.Engine):
        self.engine = engine

    def run(self, *args, **kwargs):
        return asyncio.run(self.engine.run_async(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture(params=EXECUTORS)
def engine(request):
    kind = request.param
    external = None
    if kind == "external-pool":
        external = cf.ThreadPoolExecutor(2)
        eng = scheduler.Engine(external, inline_threshold=0)
    else:
        eng = make_engine(kind)
    try:
        yield AsyncEngine(eng) if kind == "asyncio" else eng
    finally:
        eng.close()
        if external is not None:
            external.shutdown()


def small_graph():
    with df.Graph() as g:
        x = df.placeholder("x", (None, 3))
        w = df.constant(np.arange(6.0).reshape(3, 2) / 10, name="w")
        h = df.tanh(x @ w)
        loss = df.mean(df.square(h)) + df.sum(df.sin(x))
        gx, gw = df.gradients(loss, [x, w])
    return g, x, w, loss, gx, gw


def reference(fetches, feeds):
    return scheduler.run(fetches, feeds, executor="inline")


def test_results_match_inline_bitwise(engine):
    _, x, w, loss, gx, gw = small_graph()
    feeds = {x: np.random.default_rng(0).standard_normal((5, 3))}
    expected = reference([loss, gx, gw], feeds)
    for _ in range(3):
        got = engine.run([loss, gx, gw], feeds)
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b)


def test_fetch_structures(engine):
    _, x, w, loss, gx, gw = small_graph()
    feeds = {x: np.ones((2, 3))}
    single = engine.run(loss, feeds)
    assert isinstance(single, np.ndarray) and single.shape == ()
    as_tuple = engine.run((loss, gw), feeds)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    as_dict = engine.run({"loss": loss, "gw": gw, "again": loss}, feeds)
    assert set(as_dict) == {"loss", "gw", "again"}
    assert np.array_equal(as_dict["loss"], single) and np.array_equal(as_dict["again"], single)


def test_only_ancestors_of_fetches_run(engine):
    calls = []

    def spy(value):
        calls.append(1)
        return value

    record = df.custom_op("test.spy_engine", spy, shape_rule=lambda v: (v.shape, v.dtype))
    with df.Graph():
        a = df.constant(2.0)
        used = a * 3.0
        record(a + 1.0)  # not an ancestor of the fetch: must not run
    assert engine.run(used) == 6.0
    assert calls == []


def test_fed_node_cuts_its_ancestors(engine):
    with df.Graph():
        x = df.placeholder("x", (2,))
        mid = df.exp(x)
        out = mid * 2.0
    assert np.array_equal(engine.run(out, {mid: np.array([1.0, 2.0])}), [2.0, 4.0])


class BoomOp(df.Op):
    """Module-level, so that process pools can unpickle it."""

    name = "test.boom"

    def forward(self, x):
        raise ValueError("kaput")


def test_node_error_names_node_and_op_and_engine_stays_usable(engine):
    with df.Graph():
        x = df.placeholder("x", (3,))
        bad = df.apply(BoomOp(), x, name="the_bad_node")
        ok = df.sin(x)
    with pytest.raises(ValueError, match="kaput") as info:
        engine.run([ok, bad], {x: np.ones(3)})
    assert type(info.value) is ValueError
    assert info.value.__notes__ == ["node 'the_bad_node' (op test.boom) failed"]
    assert np.allclose(engine.run(ok, {x: np.zeros(3)}), 0.0)


@pytest.mark.parametrize("feeds, message", [
    ("missing", "x"),
    ("wrong-shape", "shape"),
    ("wrong-dtype", "dtype"),
    ("other-graph", "another graph"),
    ("not-a-node", "not a graph node"),
    ("name-and-node", "given twice"),
    ("unknown-name", "no node named 'y'"),
])
def test_bad_feeds_raise_before_anything_runs(engine, feeds, message):
    ran = []
    spy = df.custom_op("test.spy_feeds", lambda v: ran.append(1) or v,
                       shape_rule=lambda v: (v.shape, v.dtype))
    with df.Graph():
        x = df.placeholder("x", (2,))
        out = spy(x * 2.0)
    with df.Graph():
        other = df.placeholder("x", (2,))
    good = np.ones(2)
    feeds = {
        "missing": {},
        "wrong-shape": {x: np.ones(3)},
        "wrong-dtype": {x: np.array(["a", "b"])},
        "other-graph": {x: good, other: good},
        "not-a-node": {x: good, 3: good},
        "name-and-node": {x: good, "x": good},
        "unknown-name": {x: good, "y": good},
    }[feeds]
    with pytest.raises(FeedError, match=message):
        engine.run(out, feeds)
    assert ran == []


def test_unused_feed_of_the_same_graph_is_accepted(engine):
    with df.Graph():
        x = df.placeholder("x", (2,))
        labels = df.placeholder("labels", (2,))
        out = x * 2.0
    assert np.array_equal(engine.run(out, {x: np.ones(2), labels: np.zeros(2)}), [2.0, 2.0])


def test_check_numerics_names_first_bad_node():
    with df.Graph():
        x = df.placeholder("x", (2,))
        bad = df.log(x)
        out = bad * 2.0
    with scheduler.Engine("threads", check_numerics=True) as eng:
        with pytest.raises(NumericsError, match="'log'"):
            eng.run(out, {x: np.array([1.0, -1.0])})


def test_timeout_names_unfinished_nodes():
    slow = df.custom_op("test.sleep", lambda v: time.sleep(0.3) or v)
    with df.Graph():
        x = df.placeholder("x", ())
        out = slow(slow(x, name="first"), name="second")
    with scheduler.Engine("threads", workers=1) as eng:
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="second"):
            eng.run(out, {x: 1.0}, timeout=0.1)
        assert time.perf_counter() - start < 1.0


class Recorder(Callback):
    def __init__(self):
        self.events = []
        self.records = []

    def start(self, run):
        self.events.append("start")

    def pretask(self, run, position):
        self.events.append("pretask")

    def posttask(self, run, record):
        self.events.append("posttask")
        self.records.append(record)

    def finish(self, run, error):
        self.events.append(("finish", type(error).__name__ if error else None))


def test_callbacks_see_every_task_in_dependency_order(engine):
    _, x, w, loss, gx, gw = small_graph()
    rec = Recorder()
    engine.run([loss, gw], {x: np.ones((2, 3))}, callbacks=[rec])
    assert rec.events[0] == "start" and rec.events[-1] == ("finish", None)
    assert rec.events.count("pretask") == rec.events.count("posttask") == len(rec.records)
    end_of = {r.key: r.end for r in rec.records}
    for r in rec.records:
        assert r.ready <= r.start <= r.end
        for parent in r.key.inputs:
            if parent in end_of:
                assert end_of[parent] <= r.start


def test_finish_runs_for_every_callback_even_when_one_raises():
    class Raising(Callback):
        def posttask(self, run, record):
            raise RuntimeError("callback broke")

    other = Recorder()
    with df.Graph():
        out = df.sin(df.constant(1.0))
    with scheduler.Engine("threads") as eng:
        with pytest.raises(RuntimeError, match="callback broke"):
            eng.run(out, callbacks=[Raising(), other])
    assert other.events[-1] == ("finish", "RuntimeError")


def test_values_are_freed_after_last_consumer():
    """A chain of large arrays never holds more than a few of them alive."""
    import weakref

    alive = []

    class Big(np.ndarray):
        pass

    def grow(v):
        out = (np.asarray(v) + 1.0).view(Big)
        ref = weakref.ref(out)
        alive.append(ref)
        live = sum(1 for r in alive if r() is not None)
        peak[0] = max(peak[0], live)
        return out

    peak = [0]
    step = df.custom_op("test.grow", grow)
    with df.Graph():
        h = df.constant(np.zeros(1000))
        for _ in range(200):
            h = step(h)
    for kind in ["inline", "threads"]:
        peak[0] = 0
        alive.clear()
        scheduler.run(h, executor=kind)
        assert peak[0] <= 3, kind


def test_deep_chain_and_wide_fan_with_default_recursion_limit():
    with df.Graph():
        x = df.placeholder("x", ())
        h = x
        for _ in range(100_000):
            h = h + 1.0
        leaves = [x * float(i) for i in range(20_000)]
        fan = df.add_n(leaves)
    with scheduler.Engine("threads") as eng:
        assert eng.run(h, {x: 0.0}) == 100_000.0
        assert eng.run(fan, {x: 1.0}) == sum(range(20_000))


def test_one_engine_many_threads():
    _, x, w, loss, gx, gw = small_graph()
    inputs = [np.full((3, 3), float(i)) for i in range(8)]
    expected = [reference([loss, gw], {x: v}) for v in inputs]
    errors = []
    with scheduler.Engine("threads", workers=2) as eng:
        def worker(i):
            try:
                for _ in range(10):
                    got = eng.run([loss, gw], {x: inputs[i]})
                    assert all(np.array_equal(a, b) for a, b in zip(got, expected[i]))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_reentrant_run_inside_one_worker_pool_does_not_deadlock():
    with df.Graph():
        inner_x = df.placeholder("inner_x", ())
        inner = df.sin(inner_x) * 2.0
    with scheduler.Engine("threads", workers=1, inline_threshold=0) as eng:
        def nested(v):
            return eng.run(inner, {inner_x: float(v)})

        call_engine = df.custom_op("test.nested", nested)
        with df.Graph():
            outer = call_engine(df.constant(0.5)) + 1.0
        assert np.isclose(eng.run(outer, timeout=10), np.sin(0.5) * 2 + 1)


def test_processes_worker_death_is_a_node_error_and_engine_recovers():
    with df.Graph():
        x = df.placeholder("x", ())
        dead = df.apply(ExitWorker(), x, name="dies")
        fine = df.sin(x)
    with scheduler.Engine("processes", workers=1, inline_threshold=0) as eng:
        with pytest.raises(NodeError, match="dies"):
            eng.run(dead, {x: 1.0}, timeout=60)
        assert np.isclose(eng.run(fine, {x: 0.0}), 0.0)


def test_processes_unpicklable_result_is_a_node_error():
    with df.Graph():
        out = df.apply(LambdaOp(), df.constant(1.0), name="unpicklable")
    with scheduler.Engine("processes", workers=1, inline_threshold=0) as eng:
        with pytest.raises(NodeError, match="unpicklable"):
            eng.run(out, timeout=60)


class LambdaOp(df.Op):
    name = "test.returns_lambda"

    def forward(self, x):
        return lambda: x


async def test_many_concurrent_runs_on_one_loop():
    _, x, w, loss, gx, gw = small_graph()
    with scheduler.Engine("asyncio", workers=2) as eng:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        results = await asyncio.gather(*[
            eng.run_async(loss, {x: np.full((4, 3), float(i))}) for i in range(50)
        ])
        tick_task.cancel()
    for i, value in enumerate(results):
        assert np.array_equal(value, reference(loss, {x: np.full((4, 3), float(i))}))
    assert ticks > 0


def test_engine_rejects_unknown_executor_and_bad_workers():
    with pytest.raises(ValueError, match="unknown executor"):
        scheduler.Engine("gpu")
    with pytest.raises(ValueError, match="workers"):
        scheduler.Engine("threads", workers=0)


def test_closed_engine_refuses_runs():
    eng = scheduler.Engine("threads")
    eng.close()
    with df.Graph():
        out = df.constant(1.0) + 1.0
    with pytest.raises(RuntimeError, match="closed"):
        eng.run(out)
