"""The direct path of ``scheduler.get`` (``scheduler/direct.py``): same values, same
kernel order and same memory behaviour as a compiled plan, and the engine's choice
between the two."""

from __future__ import annotations

import random
import threading
import time
from operator import add

import pytest
from engines import Blob, blob_kernel
from test_taskgraph import LEGACY_GRAPHS, evaluate

import scheduler
import scheduler.engine as engine_module
from scheduler.direct import scan, walk
from scheduler.engine import LEARN_EVERY
from scheduler.taskgraph import TaskGraphSource, flatten_keys, pack_results


def inc(x):
    return x + 1


def direct_get(tasks, keys, feeds=None):
    wanted = flatten_keys(keys)
    return pack_results(keys, walk(scan(TaskGraphSource(tasks), wanted, feeds or {})))


def plan_get(tasks, keys, feeds=None):
    """``get`` through a compiled plan (what a pooled engine does on its first call)."""
    with scheduler.Engine("threads", workers=2) as engine:
        return engine.get(tasks, keys, feeds=feeds)


class CountingPlan(scheduler.Plan):
    compiled = 0

    def __init__(self, *args, **kwargs):
        type(self).compiled += 1
        super().__init__(*args, **kwargs)


@pytest.fixture
def plans_compiled(monkeypatch):
    """Counts the plans ``Engine.get`` compiles."""
    CountingPlan.compiled = 0
    monkeypatch.setattr(engine_module, "Plan", CountingPlan)
    return CountingPlan


@pytest.mark.parametrize("case", sorted(LEGACY_GRAPHS))
def test_same_values_as_the_specs_and_the_plan(case):
    tasks, keys = LEGACY_GRAPHS[case]
    expected = evaluate(tasks, keys)
    assert direct_get(tasks, keys) == expected
    assert plan_get(tasks, keys) == expected


@pytest.mark.parametrize("case", sorted(LEGACY_GRAPHS))
def test_dask_task_objects_take_the_spec_path(case):
    ts = pytest.importorskip("dask._task_spec")
    tasks, keys = LEGACY_GRAPHS[case]
    converted = ts.convert_legacy_graph(tasks)
    assert direct_get(converted, keys) == evaluate(tasks, keys)


def random_layered(seed: int, layers: int = 12, width: int = 6) -> tuple[dict, list]:
    rng = random.Random(seed)
    calls: list = []

    def record(key):
        def kernel(*values):
            calls.append(key)
            return sum(values) + 1
        return kernel

    tasks: dict = {f"x{i}": i for i in range(width)}
    prev = list(tasks)
    for layer in range(layers):
        cur = []
        for i in range(width):
            key = f"v{layer}_{i}"
            tasks[key] = (record(key), *rng.sample(prev, rng.randint(1, 3)))
            cur.append(key)
        prev = cur
    wanted = rng.sample(prev, 3) + [rng.choice(list(tasks))]
    return tasks, wanted, calls


@pytest.mark.parametrize("seed", range(10))
def test_kernels_run_in_the_plans_order(seed):
    tasks, wanted, calls = random_layered(seed)
    direct = direct_get(tasks, wanted)
    direct_calls = list(calls)
    calls.clear()
    # Once its tasks are known to be cheap, a pooled engine walks them on the calling
    # thread in the same order (the first call, of unknown tasks, used the pool).
    with scheduler.Engine("threads", workers=2, inline_threshold=1.0) as engine:
        assert engine.get(tasks, wanted) == direct
        calls.clear()
        assert engine.get(tasks, wanted) == direct
    assert calls == direct_calls
    plan = scheduler.Plan(flatten_keys(wanted), [], TaskGraphSource(tasks).spec)
    assert [k for k in plan.keys if k in set(direct_calls)] == direct_calls


def test_values_are_freed_after_their_last_consumer():
    grow, high = blob_kernel()

    # A chain with a skip connection every 10 steps: at most 3 values alive at once.
    tasks: dict = {"b0": (grow,)}
    for i in range(1, 2000):
        deps = [f"b{i - 1}"] + ([f"b{i - 10}"] if i % 10 == 0 else [])
        tasks[f"b{i}"] = (grow, *deps)
    kept = direct_get(tasks, ["b1999", "b5"])
    assert all(isinstance(v, Blob) for v in kept)
    assert high[0] <= 12


def zero(value):
    return 0


def test_a_pooled_get_runs_a_values_consumers_before_making_more_values():
    # Each source feeds one task of each of two fetches (dask's ``x.mean(axis=0),
    # x.std(axis=1)``): the depth-first order would make every source for the first
    # fetch before the second reads any, so all of them would be alive at once.
    grow, high = blob_kernel()
    n = 16
    tasks: dict = {}
    for i in range(n):
        tasks[f"s{i}"] = (grow,)
        tasks[f"a{i}"] = (zero, f"s{i}")
        tasks[f"b{i}"] = (zero, f"s{i}")
    tasks["A"] = (sum, [f"a{i}" for i in range(n)])
    tasks["B"] = (sum, [f"b{i}" for i in range(n)])
    # One worker, of unknown tasks (the first call): every task goes through the pool in
    # the plan's priority order.
    with scheduler.Engine("threads", workers=1) as engine:
        assert engine.get(tasks, ["A", "B"]) == (0, 0)
    assert high[0] <= 4


def test_node_error_names_the_task_and_its_op():
    def boom(v):
        raise ValueError("bad value")

    tasks = {"a": 1, "b": (inc, "a"), "c": (boom, "b"), "d": (sum, ["c", (inc, "b")])}
    with pytest.raises(ValueError, match=r"node 'c' \(op boom\) failed") as info:
        direct_get(tasks, "d")
    assert type(info.value) is ValueError and str(info.value) == "bad value"
    nested = {"a": 1, "b": (inc, (boom, "a"))}
    with pytest.raises(ValueError, match=r"node 'b' \(op inc\)"):
        direct_get(nested, "b")
    tuple_key = {("x", 0): 1, ("x", 1): (boom, ("x", 0))}
    with pytest.raises(ValueError, match=r"\('x', 1\)"):
        direct_get(tuple_key, ("x", 1))


def test_cycles_are_reported_with_their_path():
    tasks = {"a": (inc, "c"), "b": (inc, "a"), "c": (add, "b", "z"), "z": 1, "out": (inc, "a")}
    with pytest.raises(scheduler.CycleError) as info:
        direct_get(tasks, "out")
    assert info.value.path[0] == info.value.path[-1]
    assert set(info.value.path) == {"a", "b", "c"}
    with pytest.raises(scheduler.CycleError):
        direct_get({"s": (inc, "s")}, "s")


def test_feeds_cut_off_their_ancestors():
    def never(*_):
        raise AssertionError("an ancestor of a fed key ran")

    tasks = {"a": (never,), "b": (never, "a"), "c": (add, "b", "b"), "d": ["b", "c"]}
    assert direct_get(tasks, "c", feeds={"b": 5}) == 10
    assert direct_get(tasks, "d", feeds={"b": 1}) == [1, 2]
    with scheduler.Engine("inline") as engine:
        assert engine.get(tasks, ["c", "b"], feeds={"b": 2}) == (4, 2)


def test_deep_chain_does_not_recurse():
    tasks: dict = {"n0": 0}
    for i in range(1, 100_000):
        tasks[f"n{i}"] = (inc, f"n{i - 1}")
    assert direct_get(tasks, "n99999") == 99_999


def test_inline_engine_never_compiles_a_plan(plans_compiled):
    tasks = {"a": 1, "b": (inc, "a"), "c": (add, "a", "b")}
    with scheduler.Engine("inline") as engine:
        for _ in range(3):
            assert engine.get(tasks, "c") == 3
    assert plans_compiled.compiled == 0


def test_inline_engine_with_callbacks_or_a_timeout_compiles_a_plan(plans_compiled):
    tasks = {"a": 1, "b": (inc, "a")}
    with scheduler.Engine("inline") as engine:
        assert engine.get(tasks, "b", timeout=10) == 2
        assert engine.get(tasks, "b", callbacks=[scheduler.Callback()]) == 2
    assert plans_compiled.compiled == 2


def test_pooled_engine_walks_directly_once_every_kind_is_known_cheap(plans_compiled):
    tasks = {"a": 1, "b": (inc, "a"), "c": (add, "a", "b")}
    with scheduler.Engine("threads", workers=2) as engine:
        assert engine.get(tasks, "c") == 3  # unknown kinds: a plan's learning walk
        assert plans_compiled.compiled == 1
        for _ in range(2 * LEARN_EVERY):
            assert engine.get(tasks, "c") == 3
    # Every LEARN_EVERY-th call measures again through a plan.
    assert plans_compiled.compiled == 1 + 2


def test_pooled_engine_still_sends_slow_tasks_to_its_pool(plans_compiled):
    where: list[str] = []

    def slow(i):
        where.append(threading.current_thread().name)
        time.sleep(0.005)
        return i

    tasks = {f"s{i}": (slow, i) for i in range(8)}
    tasks["total"] = (sum, [f"s{i}" for i in range(8)])
    tasks["one"] = (inc, 1)
    with scheduler.Engine("threads", workers=2) as engine:
        assert engine.get(tasks, "one") == 2  # inc is now known cheap
        for _ in range(3):
            assert engine.get(tasks, "total") == sum(range(8))
    driver = threading.current_thread().name
    assert any(name != driver for name in where[-8:])
    assert plans_compiled.compiled == 4  # slow is never known cheap: always a plan


def test_closed_engine_refuses_a_get():
    engine = scheduler.Engine("inline")
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.get({"a": 1}, "a")
