"""Compiled plans (``scheduler/compiled.py``): a plan walked again runs as one generated
function. It must give bitwise the walk's results, free and reuse buffers as the walk
does, report errors as the walk does, and step aside where the walk is not used."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from hypothesis import given, note
from test_fuzz import Built, Program, assert_bitwise, fuzz_settings, programs

import dataflow as df
import scheduler
from scheduler import compiled as compiled_mod
from scheduler.engine import _walk


def feed_table(plan, feeds) -> list:
    """An ``execute``-style value table: literals and checked feeds."""
    values = list(plan.template)
    for p, key, check in plan.feed_slots:
        values[p] = feeds[key] if check is None else check(feeds[key])
    return values


def walked(plan, feeds) -> list:
    """The plan's values as today's walk computes them (never compiled)."""
    saved = plan.compiled
    plan.compiled = False
    try:
        values = feed_table(plan, feeds)
        _walk(plan, values)
    finally:
        plan.compiled = saved
    return [values[p] for p in plan.fetch_positions]


@fuzz_settings(quick=60, stress=1000)
@given(program=programs())
def test_compiled_plans_are_bitwise_the_walk_on_random_graphs(program: Program):
    note(repr(program))
    built = Built(program)
    with scheduler.Engine("inline") as engine:
        plan = engine.plan(list(dict.fromkeys(built.fetches)), built.feeds)
        expected = walked(plan, built.feeds)
        compiled = compiled_mod.compile_plan(plan)
        assert compiled is not None
        assert_bitwise(compiled.fn(built.feeds), expected, "compiled, feeds checked in line")
        table = feed_table(plan, built.feeds)
        compiled.run_table(table)
        assert_bitwise([table[p] for p in plan.fetch_positions], expected, "compiled, table")
        # Through the engine: walked, then compiled on the second run, then the fast path.
        fresh = [engine.run(built.fetches, built.feeds) for _ in range(3)]
    assert plan.compiled
    for r, got in enumerate(fresh):
        assert_bitwise(got, fresh[0], f"engine run {r}")


def add_graph():
    with df.Graph():
        a = df.placeholder("a", ())
        b = df.placeholder("b", ())
        c = a + b
    return a, b, c


def test_a_plan_compiles_on_its_second_walk_and_then_runs_without_a_value_table():
    a, b, c = add_graph()
    feeds = {a: np.asarray(1.0), b: np.asarray(2.0)}
    with scheduler.Engine("inline") as engine:
        plan = engine.plan([c], feeds)
        assert engine.run(c, feeds) == 3.0
        assert plan.compiled is None
        assert engine.run(c, feeds) == 3.0
        assert isinstance(plan.compiled, compiled_mod.CompiledPlan)
        assert "def run(feeds" in plan.compiled.source
        assert engine._fast_runs  # the third run skips the plan lookup altogether
        out = engine.run(c, {a: np.asarray(5.0), b: np.asarray(-1.0)})
        assert type(out) is np.ndarray and out.shape == () and out == 4.0
        # Structures of fetches and another order of the same feeds
        assert engine.run([c, a], feeds) == [3.0, 1.0]
        assert engine.run((c,), {b: np.asarray(2.0), a: np.asarray(1.0)}) == (3.0,)
        for _ in range(3):
            assert engine.run({"c": c, "a": a}, feeds) == {"c": 3.0, "a": 1.0}


def test_feeds_are_checked_in_the_compiled_function():
    a, b, c = add_graph()
    with scheduler.Engine("inline") as engine:
        for _ in range(3):
            engine.run(c, {a: np.asarray(1.0), b: np.asarray(2.0)})
        with pytest.raises(scheduler.FeedError, match="'a'"):
            engine.run(c, {a: np.ones(3), b: np.asarray(2.0)})
        assert engine.run(c, {a: 1.0, b: 2}) == 3.0  # converted as before


def test_a_failing_node_is_named_when_compiled():
    def fragile(x):
        if x > 10:
            raise ArithmeticError("too large")
        return x * 2

    op = df.custom_op("fragile", fragile)
    with df.Graph():
        a = df.placeholder("a", ())
        bad = op(df.exp(a), name="the_fragile_node")
        out = df.sin(bad)
    with scheduler.Engine("inline") as engine:
        for _ in range(3):
            engine.run(out, {a: np.asarray(0.0)})
        plan = engine.plan([out], {a: 0})
        assert plan.compiled
        with pytest.raises(ArithmeticError, match="too large") as info:
            engine.run(out, {a: np.asarray(5.0)})
    # The node's own exception, noted with the node and op, as the walk reports it.
    assert info.value.__notes__ == ["node 'the_fragile_node' (op fragile) failed"]


def test_a_dying_value_is_written_in_place_when_compiled():
    made = []

    def fresh(x):
        out = np.array(x, copy=True) * 2
        made.append(out.ctypes.data)  # where it lives (a weak reference would forbid reuse)
        return out

    op = df.custom_op("fresh_compiled", fresh)
    with df.Graph():
        x = df.placeholder("x", (40_000,))
        y = df.tanh(op(x) + 1.0)
    feeds = {x: np.linspace(-1, 1, 40_000)}
    with scheduler.Engine("inline") as engine:
        outs = [engine.run(y, feeds) for _ in range(3)]
    assert engine.plan([y], feeds).compiled
    for out, address in zip(outs, made):
        assert out.ctypes.data == address  # add and tanh both wrote into fresh's buffer
        assert np.array_equal(out, np.tanh(2 * feeds[x] + 1.0))
    # A held value is never overwritten: the fed array, and a fetched intermediate.
    with df.Graph():
        x = df.placeholder("x", (40_000,))
        h = df.exp(x)
        y = df.tanh(h)
    feeds = {x: np.linspace(-1, 1, 40_000)}
    before = feeds[x].copy()
    with scheduler.Engine("inline") as engine:
        for _ in range(3):
            hv, yv = engine.run([h, y], feeds)
            assert not np.shares_memory(hv, yv)
            assert np.array_equal(hv, np.exp(before)) and np.array_equal(feeds[x], before)


def test_runs_with_callbacks_timeouts_or_cancel_are_not_compiled_runs():
    a, b, c = add_graph()
    feeds = {a: np.asarray(1.0), b: np.asarray(2.0)}
    with scheduler.Engine("inline") as engine:
        for _ in range(3):
            engine.run(c, feeds)
        prof = scheduler.Profiler()
        engine.run(c, feeds, callbacks=[prof])
        assert [r.name for r in prof.records] == [c.name]
        assert engine.run(c, feeds, timeout=5.0) == 3.0
    with scheduler.Engine("inline", callbacks=[prof := scheduler.Profiler()]) as engine:
        for _ in range(3):
            engine.run(c, feeds)
        assert not engine._fast_runs
        assert len(prof.records) == 1  # each run's records replace the last's


def test_a_closed_engine_refuses_fast_runs():
    a, b, c = add_graph()
    feeds = {a: np.asarray(1.0), b: np.asarray(2.0)}
    engine = scheduler.Engine("inline")
    for _ in range(3):
        engine.run(c, feeds)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.run(c, feeds)


def test_plans_over_the_size_limit_are_walked(monkeypatch):
    monkeypatch.setattr(compiled_mod, "MAX_COMPILED_STEPS", 50)
    with df.Graph():
        x = df.placeholder("x", (3,))
        y = x
        for _ in range(60):
            y = df.sin(y)
    feeds = {x: np.arange(3.0)}
    want = np.arange(3.0)
    for _ in range(60):
        want = np.sin(want)
    with scheduler.Engine("inline") as engine:
        for _ in range(3):
            assert np.array_equal(engine.run(y, feeds), want)
        assert engine.plan([y], feeds).compiled is False
        assert not engine._fast_runs


def test_threads_engines_walk_compiled_plans_too():
    a, b, c = add_graph()
    feeds = {a: np.asarray(1.0), b: np.asarray(2.0)}
    with scheduler.Engine("threads", workers=2) as engine:
        for _ in range(4):
            assert engine.run(c, feeds) == 3.0
        assert engine.plan([c], feeds).compiled
        assert not engine._fast_runs  # only the inline executor skips the dispatch


def test_the_largest_compilable_plan_compiles():
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = x
        for _ in range(compiled_mod.MAX_COMPILED_STEPS):
            y = y * 1.5 if _ % 2 else y + 1.0
    with scheduler.Engine("inline", simplify=False) as engine:
        plan = engine.plan([y], {x: 0})
        compiled = compiled_mod.compile_plan(plan)
    assert compiled is not None
    assert compiled.fn({x: np.zeros(2)})[0].shape == (2,)


def test_a_compiled_plan_never_overwrites_a_value_its_kernel_holds_weakly():
    """Compiled plans reuse buffers under the walk's one rule: a weak holder counts."""
    cache: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def cached(v):
        out = np.multiply(v, 2.0)
        cache["last"] = out  # a weak cache: invisible to the reference count
        return out

    op = df.custom_op("weakly_cached_compiled", cached)
    with df.Graph():
        x = df.placeholder("x", (40_000,))
        y = df.tanh(op(x) + 1.0)
    feeds = {x: np.linspace(-1, 1, 40_000)}
    with scheduler.Engine("inline") as engine:
        for _ in range(5):
            out = engine.run(y, feeds)
            held = cache.get("last")
            assert held is None or np.array_equal(held, 2 * feeds[x])
            assert np.array_equal(out, np.tanh(2 * feeds[x] + 1.0))
        assert engine.plan([y], feeds).compiled
