"""The engine's state machine, stepped by hand: exact pending counts, ready heaps,
releases and plan layout after each transition."""

from __future__ import annotations

import heapq
import os
import signal
import threading
import time

import numpy as np
import pytest

import scheduler
from scheduler.engine import _Run
from scheduler.plan import Plan
from scheduler.spec import TaskSpec


def spec_source(graph: dict):
    """A tiny source: {key: (kernel, deps) or literal}."""
    def spec_of(key):
        entry = graph[key]
        if isinstance(entry, tuple):
            kernel, deps = entry
            return TaskSpec(kernel, tuple(deps), str(key), kernel.__name__, cost_key=kernel)
        return TaskSpec(None, (), str(key), "literal", value=entry)
    return spec_of


def add(a, b):
    return a + b


def neg(a):
    return -a


DIAMOND = {
    "a": 1,                      # literal: not a task
    "b": (neg, ["a"]),
    "c": (neg, ["a"]),
    "d": (add, ["b", "c"]),
    "e": (add, ["d", "d"]),      # the same parent twice counts once
}


def test_plan_layout_is_a_depth_first_post_order():
    plan = Plan(["e"], [], spec_source(DIAMOND))
    assert plan.keys == ["a", "b", "c", "d", "e"]
    assert plan.compute == [1, 2, 3, 4]
    assert plan.initial_pending == [0, 0, 0, 2, 1]
    assert plan.initial_ready == [1, 2]
    assert plan.parents[4] == (3,) and plan.args[4] == (3, 3)
    assert plan.children == [(1, 2), (3,), (3,), (4,), ()]
    assert plan.keep == [False, False, False, False, True]
    # In the sequential walk, "a" dies after "c" (its last consumer), "b"/"c" after "d".
    assert plan.dies_after == [(), (), (0,), (1, 2), (3,)]


def step(run: _Run) -> int:
    """Take the highest-priority ready task and run it, as the driving loop does."""
    p = heapq.heappop(run.cheap)
    run._run_inline(p)
    return p


def test_transitions_exact_state():
    plan = Plan(["e"], [], spec_source(DIAMOND))
    engine = scheduler.Engine("inline")
    values = list(plan.template)
    run = _Run(engine, plan, values, None, (), None, inline=True)
    assert run.cheap == [1, 2] and run.pending == [0, 0, 0, 2, 1]
    assert run.consumers_left == [2, 1, 1, 1, 0]

    assert step(run) == 1                      # b finishes
    assert values[1] == -1 and run.pending[3] == 1 and run.cheap == [2]
    assert run.consumers_left[0] == 1 and values[0] == 1   # a still has a consumer

    assert step(run) == 2                      # c finishes: d becomes ready, a is released
    assert run.pending[3] == 0 and run.cheap == [3]
    assert values[0] is None and run.consumers_left[0] == 0

    assert step(run) == 3                      # d: b and c released, e ready
    assert values[1] is None and values[2] is None and run.cheap == [4]
    assert step(run) == 4
    assert values[4] == -4 and values[3] is None and run.finished == 4
    assert bytes(run.done) == b"\x00\x01\x01\x01\x01"
    engine.close()


def test_expensive_tasks_go_to_the_costly_heap():
    plan = Plan(["e"], [], spec_source(DIAMOND))
    for p in plan.compute:
        plan.estimates[p], plan.samples[p] = 1e-6, 2   # measured cheap...
    plan.estimates[1] = 1.0                            # ...but b measured slow, twice
    plan.reclassify(40e-6)
    assert plan.expensive == [False, True, False, False, False] and plan.any_expensive
    assert plan.all_known
    engine = scheduler.Engine("threads")
    run = _Run(engine, plan, list(plan.template), None, (), None, inline=False)
    assert run.costly == [1] and run.cheap == [2]
    engine.close()


def test_tasks_of_unknown_cost_go_to_the_costly_heap():
    """Nothing measured, nothing hinted: presumed expensive, so a first call of unknown
    (maybe I/O-bound) tasks is parallel from its first task."""
    plan = Plan(["e"], [], spec_source(DIAMOND))
    plan.reclassify(40e-6)
    assert plan.expensive == [False, True, True, True, True] and not plan.all_known
    assert plan.use_pool
    engine = scheduler.Engine("threads")
    run = _Run(engine, plan, list(plan.template), None, (), None, inline=False)
    assert run.costly == [1, 2] and run.cheap == []
    engine.close()


def test_the_engine_cost_table_places_tasks_the_plan_has_not_measured():
    plan = Plan(["e"], [], spec_source(DIAMOND))
    engine = scheduler.Engine("threads")
    engine._costs.observe(neg, 1e-6)                   # known cheap from other plans
    plan.seed_estimates(engine._costs, engine.inline_threshold)
    run = _Run(engine, plan, list(plan.template), None, (), None, inline=False)
    assert run.cheap == [1, 2] and run.costly == []
    engine.close()


def test_isolating_executors_keep_every_user_task_off_the_driving_thread():
    plan = Plan(["e"], [], spec_source(DIAMOND))
    for p in plan.compute:
        plan.estimates[p], plan.samples[p] = 1e-6, 2   # known cheap: still not here
    plan.reclassify(40e-6)
    engine = scheduler.Engine("processes", workers=1)
    assert engine.placement.isolating and not engine.placement.may_walk(plan)
    run = _Run(engine, plan, list(plan.template), None, (), None, inline=False)
    assert run.costly == [1, 2] and run.cheap == []
    engine.close()


def test_static_hints_decide_before_anything_ran():
    def spec_of(key):
        entry = DIAMOND[key]
        if isinstance(entry, tuple):
            kernel, deps = entry
            hint = 0.5 if key == "b" else 1e-6
            return TaskSpec(kernel, tuple(deps), key, kernel.__name__, cost_key=key,
                            cost_hint=hint)
        return TaskSpec(None, (), key, "literal", value=entry)

    plan = Plan(["e"], [], spec_of)
    plan.seed_estimates(scheduler.placement.CostTable(), 40e-6)
    assert plan.all_known and plan.expensive == [False, True, False, False, False]


def test_cycle_is_reported_with_its_path():
    graph = {"a": (neg, ["c"]), "b": (neg, ["a"]), "c": (neg, ["b"]), "out": (neg, ["c"])}
    with pytest.raises(scheduler.CycleError) as info:
        Plan(["out"], [], spec_source(graph))
    path = info.value.path
    assert path[0] == path[-1] and set(path) == {"a", "b", "c"}


def test_ctrl_c_interrupts_a_run_promptly():
    def slow(x):
        time.sleep(0.5)
        return x

    tasks = {f"s{i}": (slow, 1) for i in range(40)}
    tasks["out"] = (lambda *xs: sum(xs), *[f"s{i}" for i in range(40)])
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    with scheduler.Engine("threads", workers=2, inline_threshold=0) as engine:
        timer.start()
        start = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            engine.get(tasks, "out")
        assert time.perf_counter() - start < 2.0
        timer.join()
        # the engine stays usable
        assert engine.get({"x": 1, "y": (neg, "x")}, "y") == -1


def test_numerics_of_literals_are_not_checked_but_outputs_are():
    tasks = {"x": np.array([1.0, 0.0]), "y": (np.reciprocal, "x")}
    with scheduler.Engine("inline", check_numerics=True) as engine:
        with np.errstate(divide="ignore"), pytest.raises(scheduler.NumericsError, match="Inf"):
            engine.get(tasks, "y")
