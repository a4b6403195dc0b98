"""``scheduler.get`` as a drop-in dask scheduler, shown through dask's public API:
``.compute()``, ``dask.compute``, ``dask.config.set(scheduler=...)`` and
``dask.diagnostics``, with dask's own synchronous scheduler as the reference.

1. a task's own exception reaches the caller as the original object (with a note
   naming the node), on every executor;
2. dask's ``get`` signature: ``cache``, ``num_workers``, ``pool`` and ``dask.config``;
3. dask's callbacks and diagnostics, with dask's nesting rules;
4. dask's errors for malformed graphs.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import io
import threading
from functools import partial
from multiprocessing.pool import ThreadPool

import pytest

import scheduler

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
from dask import delayed  # noqa: E402
from dask._task_spec import Task, TaskRef  # noqa: E402
from dask.callbacks import Callback as DaskCallback  # noqa: E402
from dask.diagnostics import CacheProfiler, Profiler, ProgressBar, ResourceProfiler  # noqa: E402
from dask.utils import key_split  # noqa: E402
from dask.utils_test import GetFunctionTestMixin, add, inc  # noqa: E402


class Kaput(Exception):
    """A user's own exception class, with an attribute of its own."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message, code)
        self.code = code


def kaput(v):
    raise Kaput(f"kaput {v}", code=7)


def slow_inc(v):
    import time

    time.sleep(0.02)
    return v + 1


# -- 1. exceptions keep their type ---------------------------------------------------------

def test_compute_raises_the_tasks_own_exception_object():
    error = Kaput("the very object", code=3)

    @delayed
    def fails(v):
        raise error

    with pytest.raises(Kaput) as info:
        fails(1).compute(scheduler=scheduler.get)
    assert info.value is error  # not a copy, not a wrapper
    assert not isinstance(info.value, scheduler.NodeError)
    assert len(info.value.__notes__) == 1 and "fails" in info.value.__notes__[0]


def test_collections_raise_what_their_tasks_raise():
    x = da.arange(8, chunks=4)
    bad = x.map_blocks(lambda b: 1 / 0, dtype=float)
    with dask.config.set(scheduler=scheduler.get), pytest.raises(ZeroDivisionError):
        bad.compute()
    db = pytest.importorskip("dask.bag")
    with pytest.raises(Kaput, match="kaput 2"):
        db.from_sequence([1, 2, 3], npartitions=3).map(
            lambda v: kaput(v) if v == 2 else v).compute(scheduler=scheduler.get)


def test_dataframe_errors_keep_their_type():
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    df = dd.from_pandas(pd.DataFrame({"a": [1, 2, 3, 4]}), npartitions=2)
    with pytest.raises(KeyError):
        df.map_partitions(lambda part: part["missing"], meta=("a", "i8")).compute(
            scheduler=scheduler.get)


@pytest.mark.parametrize("kind", ["inline", "threads", "asyncio", "processes", "external",
                                  "threadpool"])
def test_every_executor_raises_the_original_type_with_a_note(kind):
    """Pooled (``inline_threshold=0``), so that the task runs in the pool, not on the
    driving thread: in a process pool the exception crosses a process boundary."""
    tasks = {"a": 1, "b": (inc, "a"), "c": (kaput, "b"), "d": (inc, "c")}
    if kind == "external":
        pool = cf.ThreadPoolExecutor(2)
        executor = pool
    elif kind == "threadpool":
        pool = ThreadPool(2)
        executor = scheduler.dask_compat.PoolExecutor(pool)
    else:
        pool, executor = None, kind
    try:
        with scheduler.Engine(executor, workers=2, inline_threshold=0) as engine:
            for _ in range(2):  # the engine stays usable
                with pytest.raises(Kaput, match="kaput 2") as info:
                    engine.get(tasks, "d")
                assert info.value.code == 7
                assert info.value.__notes__ == ["node 'c' (op kaput) failed"]
            assert engine.get(tasks, "b") == 2
    finally:
        if kind == "external":
            pool.shutdown()
        elif kind == "threadpool":
            pool.terminate()
            pool.join()


def test_a_failure_that_is_no_tasks_own_exception_is_a_node_error():
    tasks = {"a": 1, "lock": (threading.Lock,), "b": (id, "lock")}
    with scheduler.Engine("processes", workers=1, inline_threshold=0) as engine:
        with pytest.raises(scheduler.NodeError, match="'lock'") as info:
            engine.get(tasks, "b", timeout=60)
    assert isinstance(info.value.__cause__, TypeError)  # the lock could not be pickled


def test_a_nested_computes_error_is_noted_by_both_runs():
    @delayed
    def inner(v):
        return kaput(v)

    @delayed
    def outer(v):
        return inner(v).compute(scheduler=scheduler.get)

    with pytest.raises(Kaput) as info:
        outer(5).compute(scheduler=scheduler.get)
    notes = info.value.__notes__
    assert len(notes) == 2 and "inner" in notes[0] and "outer" in notes[1]


def test_keyboard_interrupt_in_a_task_stays_a_keyboard_interrupt():
    def interrupted(v):
        raise KeyboardInterrupt

    for executor in ("inline", "threads"):
        with pytest.raises(KeyboardInterrupt):
            scheduler.get({"a": 1, "b": (interrupted, "a")}, "b", executor=executor)


# -- 2. dask's get signature -------------------------------------------------------------------

def test_the_signature_is_dasks():
    ours = list(inspect.signature(scheduler.get).parameters)
    theirs = list(inspect.signature(dask.threaded.get).parameters)
    assert ours[2:5] == theirs[2:5] == ["cache", "num_workers", "pool"]
    dsk = {"x": 1, "y": (inc, "x")}
    assert scheduler.get(dsk, "y", None, 2, None) == dask.get(dsk, "y") == 2


def barrier_graph(n: int, timeout: float = 10.0) -> tuple[dict, list]:
    barrier = threading.Barrier(n, timeout=timeout)

    def meet(i):
        barrier.wait()
        return i

    return {f"t{i}": (meet, i) for i in range(n)}, [f"t{i}" for i in range(n)]


def test_num_workers_tasks_run_at_the_same_time():
    """N tasks that must all be running at once (a barrier) complete with
    ``num_workers=N``, on the first call, with nothing learned about them."""
    tasks, keys = barrier_graph(4)
    assert scheduler.get(tasks, keys, num_workers=4) == (0, 1, 2, 3)


def test_num_workers_from_dask_config():
    tasks, keys = barrier_graph(3)
    with dask.config.set(num_workers=3):
        assert scheduler.get(tasks, keys) == (0, 1, 2)


def thread_names(n: int) -> tuple[dict, list]:
    def name(i):
        import time

        time.sleep(0.02)  # worth a pool: the engine sends such tasks there
        return threading.current_thread().name

    return {f"t{i}": (name, i) for i in range(n)}, [f"t{i}" for i in range(n)]


def test_a_thread_pool_from_multiprocessing_runs_the_tasks():
    tasks, keys = thread_names(12)
    with ThreadPool(2) as pool:
        workers = {t.name for t in pool._pool}
        names = set(scheduler.get(tasks, keys, pool=pool))
    here = threading.current_thread().name
    assert names - {here} and names - {here} <= workers


def test_a_pool_from_dask_config_is_used_and_not_shut_down():
    tasks, keys = thread_names(12)
    with cf.ThreadPoolExecutor(2, thread_name_prefix="configured") as pool:
        with dask.config.set(pool=pool):
            names = set(scheduler.get(tasks, keys))
        assert any(n.startswith("configured") for n in names)
        assert pool.submit(abs, -1).result() == 1  # still usable: it is the caller's


def test_pool_and_executor_together_are_refused():
    with cf.ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="pool"):
        scheduler.get({"x": 1}, "x", pool=pool, executor="inline")


def test_cache_gives_values_and_receives_results():
    ran = []

    def record(v):
        ran.append(v)
        return v + 1

    dsk = {"x": 1, "y": (record, "x"), "z": (record, "y")}
    cache = {"y": 10}
    assert scheduler.get(dsk, "z", cache=cache) == 11
    assert ran == [10]  # 'y' came from the cache, only 'z' ran
    assert cache["z"] == 11
    with dask.config.set(cache={"y": 20}):
        assert scheduler.get(dsk, ["z"]) == (21,)


def test_cache_is_the_runs_cache_as_in_dask():
    """dask's own ``test_cache_options``: the cache holds the data while tasks run, and
    ends as dask's does (values released once their dependents ran)."""
    caches = {}
    for name, get in (("dask", dask.get), ("ours", scheduler.get)):
        cache = caches[name] = {}

        def inc2(v, cache=cache):
            assert "y" in cache
            return v + 1

        with dask.config.set(cache=cache):
            assert get({"x": (inc2, "y"), "y": 1, "z": (inc, "x")}, "z") == 3
    assert caches["ours"] == caches["dask"] == {"z": 3}


class TestGetWithAThreadPool(GetFunctionTestMixin):
    """dask's own get-function tests, on a caller's ``multiprocessing`` ThreadPool."""

    @staticmethod
    def get(dsk, keys, **kwargs):
        with ThreadPool(2) as pool:
            return scheduler.get(dsk, keys, pool=pool, **kwargs)


# -- 3. callbacks and diagnostics --------------------------------------------------------------

def array_sum():
    x = da.random.default_rng(0).random((60, 60), chunks=20)
    return (x @ x.T).sum() + x.mean(axis=0).sum()


def test_progress_bar_prints_through_compute():
    out = io.StringIO()
    with ProgressBar(out=out, minimum=0), dask.config.set(scheduler=scheduler.get):
        array_sum().compute()
    assert "100% Completed" in out.getvalue()


def test_profilers_record_what_dasks_own_scheduler_records():
    expr = array_sum()
    found = {}
    for name, get in (("dask", dask.get), ("ours", scheduler.get)):
        with Profiler() as prof, CacheProfiler() as cache, ResourceProfiler(dt=0.01) as res:
            value = expr.compute(scheduler=get)
        # the same tasks, by kind (the final keys carry a token per compute)
        found[name] = (value, sorted(key_split(r.key) for r in prof.results),
                       sorted(key_split(r.key) for r in cache.results))
        assert len(res.results) >= 1
        assert all(r.end_time >= r.start_time for r in prof.results)
    assert found["ours"][1] and found["ours"] == found["dask"]


class Recorder(DaskCallback):
    def __init__(self):
        super().__init__()
        self.events: list = []

    def _start(self, dsk):
        self.events.append(("start", len(dsk)))

    def _start_state(self, dsk, state):
        self.events.append(("start_state", sorted(state["ready"]), sorted(state["waiting"])))

    def _pretask(self, key, dsk, state):
        assert key in state["running"] and key not in state["ready"]
        self.events.append(("pretask", key))

    def _posttask(self, key, result, dsk, state, worker_id):
        assert key in state["finished"] and state["cache"][key] is result
        self.events.append(("posttask", key, result))

    def _finish(self, dsk, state, failed):
        self.events.append(("finish", failed))


def test_callbacks_get_dasks_hooks_in_dasks_order():
    dsk = {"x": 1, "a": (inc, "x"), "b": (inc, "x"), "c": (add, "a", "b")}
    runs = {}
    for name, get in (("dask", dask.get), ("ours", scheduler.get)):
        with Recorder() as rec:
            assert get(dsk, "c") == 4
        runs[name] = rec.events
    ours, theirs = runs["ours"], runs["dask"]
    assert ours[0] == theirs[0] == ("start", 4)
    assert ours[1] == theirs[1] == ("start_state", ["a", "b"], ["c"])
    assert sorted(ours[2:-1], key=str) == sorted(theirs[2:-1], key=str)
    assert ours[-1] == theirs[-1] == ("finish", False)
    # each task's posttask follows its pretask; 'c' comes after both of its parents
    order = [e[:2] for e in ours[2:-1]]
    assert order.index(("posttask", "a")) < order.index(("pretask", "c"))


def test_callbacks_passed_to_compute_are_used_and_the_active_ones_are_not():
    passed, active = Recorder(), Recorder()
    with active:
        delayed(inc)(1).compute(scheduler=scheduler.get, callbacks=[passed])
        assert active._callback in DaskCallback.active
    assert any(e[0] == "pretask" for e in passed.events)
    assert active.events == []


def test_active_callbacks_are_cleared_while_tasks_run_and_restored_after():
    seen = []

    @delayed
    def look(v):
        seen.append(set(DaskCallback.active))
        return delayed(inc)(v).compute(scheduler=scheduler.get)  # nested: reports to none

    with Recorder() as rec:
        assert look(1).compute(scheduler=scheduler.get) == 2
        assert rec._callback in DaskCallback.active
    assert seen == [set()]
    assert rec._callback not in DaskCallback.active
    assert [e for e in rec.events if e[0] == "start"] == [("start", 1)]  # the outer run only


def test_dasks_own_callback_tests_on_our_get():
    """``dask/tests/test_callbacks.py``, with ``scheduler.get`` as the scheduler."""
    seen = {}

    class StartState(DaskCallback):
        def _start_state(self, dsk, state):
            seen["data"] = dsk["x"]()  # the graph as dask's schedulers show it
            seen["cached"] = len(state["cache"])

    with StartState():
        scheduler.get({"x": 1}, "x")
    assert seen == {"data": 1, "cached": 1}

    class Finish(DaskCallback):
        def _finish(self, dsk, state, errored):
            seen["errored"] = errored

    def interrupt():
        raise KeyboardInterrupt

    for task, error in ((lambda: 1 / 0, ZeroDivisionError), (interrupt, KeyboardInterrupt)):
        seen.clear()
        with pytest.raises(error), Finish():
            scheduler.get({"x": (task,)}, "x")
        assert seen == {"errored": True}

    class Nested(DaskCallback):
        def _start(self, dsk):
            self.dsk = dsk

        def _pretask(self, key, dsk, state):
            assert key in self.dsk

    inner_callback, outer_callback = Nested(), Nested()
    inner_dsk = {"x": (add, 1, 2), "y": (add, "x", 3)}

    def nested_call(v):
        assert not DaskCallback.active
        with inner_callback:
            return scheduler.get(inner_dsk, "y") + v

    outer_dsk = {"a": (nested_call, 1), "b": (add, "a", 2)}
    with outer_callback:
        assert scheduler.get(outer_dsk, "b") == 9
    assert not DaskCallback.active
    assert outer_callback.dsk.keys() == outer_dsk.keys()
    assert inner_callback.dsk.keys() == inner_dsk.keys()


class RaisesIn(DaskCallback):
    def __init__(self, hook: str):
        super().__init__()
        self.hook = hook

    def _start(self, dsk):
        if self.hook == "start":
            raise RuntimeError("start broke")

    def _pretask(self, key, dsk, state):
        if self.hook == "pretask":
            raise RuntimeError("pretask broke")

    def _posttask(self, key, result, dsk, state, worker_id):
        if self.hook == "posttask":
            raise RuntimeError("posttask broke")

    def _finish(self, dsk, state, failed):
        if self.hook == "finish":
            raise RuntimeError("finish broke")


@pytest.mark.parametrize("hook", ["start", "pretask", "posttask", "finish"])
def test_finish_always_runs_even_when_a_callback_raises(hook):
    first, last = Recorder(), Recorder()
    dsk = {"x": 1, "y": (inc, "x")}
    with pytest.raises(RuntimeError, match=f"{hook} broke"):
        scheduler.get(dsk, "y", callbacks=[first, RaisesIn(hook), last])
    assert first.events[-1] == ("finish", hook != "finish")
    if hook == "start":  # as in dask: finish runs for the callbacks that started
        assert last.events == []
    else:
        assert last.events[-1] == ("finish", hook != "finish")


def test_finish_runs_when_a_task_fails():
    rec = Recorder()
    with pytest.raises(Kaput):
        scheduler.get({"x": 1, "y": (kaput, "x")}, "y", callbacks=[rec])
    assert rec.events[-1] == ("finish", True)


def test_posttask_sees_released_values_leave_the_cache():
    released = []

    def posttask(key, result, dsk, state, worker_id):
        released.append((key, set(state["released"]), set(state["cache"])))

    dsk = {"x": 1, "a": (inc, "x"), "b": (inc, "a"), "c": (inc, "b")}
    scheduler.get(dsk, "c", callbacks=[(None, None, None, posttask, None)])
    key, gone, cached = released[-1]
    assert key == "c" and {"a", "b"} <= gone and "c" in cached and "a" not in cached


# -- 4. malformed graphs -------------------------------------------------------------------------

@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_missing_dependency_is_dasks_value_error(executor):
    dsk = {"y": Task("y", lambda v: v, TaskRef("x")), "z": (inc, "y")}
    for get in (dask.get, partial(scheduler.get, executor=executor)):
        with pytest.raises(ValueError, match="Missing dependency"):
            get(dsk, "z")
    with pytest.raises(scheduler.MissingDependencyError) as info:
        scheduler.get(dsk, "z", executor=executor)
    assert info.value.key == "x" and info.value.dependents == ["y"]
    assert scheduler.get(dsk, "z", cache={"x": 1}, executor=executor) == 2


def test_a_cycle_is_dasks_runtime_error_and_keeps_its_path():
    dsk = {"a": (inc, "c"), "b": (inc, "a"), "c": (inc, "b")}
    with pytest.raises(RuntimeError, match="Cycle detected"):
        dask.get(dsk, "a")
    with dask.config.set(scheduler=scheduler.get), pytest.raises(RuntimeError) as info:
        dask.compute(_from_graph(dsk, "a"))
    assert isinstance(info.value, scheduler.CycleError)
    assert info.value.path == ["a", "c", "b", "a"]


def _from_graph(dsk: dict, key: str):
    """A dask collection over a raw graph."""
    from dask.delayed import Delayed

    return Delayed(key, dsk)
