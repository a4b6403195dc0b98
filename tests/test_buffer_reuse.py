"""Buffer reuse: an elementwise op writes its result into an input that dies at it
(``TaskSpec.reusable``, ``scheduler.engine._call_reusing``). It must never be seen:
the same bits as a fresh result, and no value that anyone still holds is overwritten.
Arrays here are over ``REUSE_MIN_BYTES``, under which buffers are never reused."""

from __future__ import annotations

import tracemalloc
import weakref

import numpy as np
import pytest
from bits import same_bits

import dataflow as df
import scheduler
from dataflow.lowering import reusable_inputs


class Fresh:
    """A custom op's forward that returns a new array and remembers it."""

    def __init__(self, keep: bool = False):
        self.made: list[np.ndarray] = []
        self.keep = keep

    def __call__(self, x):
        out = np.array(x, dtype=x.dtype, copy=True) * 2
        if self.keep:
            self.made.append(out)  # the op holds on to its result: never reusable
        return out


def fresh_op(forward: Fresh):
    return df.custom_op("fresh", forward, bprop=lambda inputs, output, grad: (grad * 2,))


def run_inline(fetches, feeds):
    with scheduler.Engine("inline") as engine:
        return engine.run(fetches, feeds)


def run_without_reuse(fetches, feeds):
    # The callback-driven path never reuses buffers.
    with scheduler.Engine("inline") as engine:
        return engine.run(fetches, feeds, callbacks=[scheduler.Callback()])


def peak_bytes(fetches, feeds, callbacks=()) -> int:
    """The most memory allocated at once during a second (planned) inline run."""
    with scheduler.Engine("inline") as engine:
        engine.run(fetches, feeds)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            engine.run(fetches, feeds, callbacks=callbacks)
            return tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()


def test_a_dying_fresh_value_is_written_in_place():
    double = df.custom_op("double", lambda v: np.multiply(v, 2.0))  # one new array
    with df.Graph():
        x = df.placeholder("x", (40_000,))
        y = df.tanh(double(x) + 1.0)
    feeds = {x: np.linspace(-1, 1, 40_000)}
    out = run_inline(y, feeds)
    assert np.array_equal(out, np.tanh(2 * feeds[x] + 1.0))
    # add and tanh both wrote into double's buffer: one 320 KB array at a time, where
    # fresh results (the callback-driven path) need two at once.
    size = feeds[x].nbytes
    assert peak_bytes(y, feeds) < 1.5 * size
    assert peak_bytes(y, feeds, [scheduler.Callback()]) >= 2 * size


def test_a_value_its_kernel_holds_weakly_is_never_overwritten():
    cache: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def cached(v):
        out = np.multiply(v, 2.0)
        cache["last"] = out  # a weak cache: invisible to the reference count
        return out

    with df.Graph():
        x = df.placeholder("x", (40_000,))
        y = df.tanh(df.custom_op("weakly_cached", cached)(x) + 1.0)
    feeds = {x: np.linspace(-1, 1, 40_000)}
    for kind in ("inline", "threads"):
        out = scheduler.run(y, feeds, executor=kind)
        assert np.array_equal(out, np.tanh(2 * feeds[x] + 1.0))
        held = cache.get("last")
        assert held is None or np.array_equal(held, 2 * feeds[x]), kind


def test_feeds_fetches_views_and_held_values_are_never_overwritten():
    held = Fresh(keep=True)
    with df.Graph():
        x = df.placeholder("x", (256, 160))
        fed_sum = x + 1.0  # x is fed: the caller's array
        a = fresh_op(Fresh())(x)
        fetched_twice = a * 3.0  # a is also fetched below
        b = fresh_op(Fresh())(x)
        view = df.transpose(b)
        through_view = b + 1.0  # b dies here, but its transpose is still to be read
        late = df.matmul(view, x)
        kept = fresh_op(held)(x)
        after_kept = kept - 1.0  # the op kept its result
    value = np.arange(256 * 160.0).reshape(256, 160)
    feeds = {x: value.copy()}
    fetches = [fed_sum, a, fetched_twice, through_view, late, after_kept]
    got = run_inline(fetches, feeds)
    assert np.array_equal(feeds[x], value)
    assert np.array_equal(got[1], 2 * value)
    assert np.array_equal(got[4], (2 * value).T @ value)
    assert np.array_equal(held.made[0], 2 * value)
    for fresh, ref in zip(got, run_without_reuse(fetches, feeds)):
        assert np.array_equal(fresh, ref)


class Cached:
    """A custom op's forward that caches its results weakly, by input, and hands out
    the cached array again while it lives (as memoizing code does)."""

    def __init__(self):
        self.cache: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.calls = 0

    def __call__(self, x):
        key = x.tobytes()
        out = self.cache.get(key)
        if out is None:
            self.calls += 1
            out = self.cache[key] = x * 2.0
        return out


def test_a_weakly_held_value_is_never_overwritten():
    forward = Cached()
    cached = df.custom_op("cached", forward, bprop=lambda inputs, output, grad: (grad * 2,))
    with df.Graph():
        x = df.placeholder("x", (40_000,))
        y = df.tanh(cached(x))  # cached(x) dies here: the reference count sees no holder
    value = np.linspace(-1, 1, 40_000)
    expected = np.tanh(2 * value)
    with scheduler.Engine("inline") as engine:
        first = engine.run(y, {x: value})
        for cached_value in forward.cache.values():  # whatever the cache still hands out
            assert np.array_equal(cached_value, 2 * value), "the cached result was overwritten"
        second = engine.run(y, {x: value})  # may get a cached array back from the op
    assert np.array_equal(first, expected) and np.array_equal(second, expected)


def test_mixed_dtypes_and_layouts_fall_back_to_a_fresh_result():
    with df.Graph():
        x = df.placeholder("x", (256, 260), np.float32)
        f = fresh_op(Fresh())(x)
        fortran = df.custom_op("fortran", lambda v: np.asfortranarray(v * 1))(x)
        y = f + fortran  # the other operand is F-ordered: the result must be C, fresh
    feeds = {x: np.arange(256 * 260, dtype=np.float32).reshape(256, 260)}
    out = run_inline(y, feeds)
    assert np.array_equal(out, 3 * feeds[x]) and out.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_step_is_bitwise_the_same_with_and_without_reuse(dtype):
    model = df.models.build_mlp((300, 300, 300, 10), dtype=dtype, batch=256)
    rng = np.random.default_rng(1)
    feeds = model.feeds(model.init_params(), rng.standard_normal((256, 300)).astype(dtype),
                        rng.integers(0, 10, 256))
    fetches = [model.loss, *model.grads]
    with scheduler.Engine("inline") as engine:
        donors = [step[4] for step in engine.plan(fetches, feeds).steps if step[4] >= 0]
    assert len(donors) >= 6  # the biases' adds, the tanhs and the backward multiplies
    reused, fresh = run_inline(fetches, feeds), run_without_reuse(fetches, feeds)
    for a, b in zip(reused, fresh):
        assert a.dtype == b.dtype and same_bits(a, b)


UNARY = [df.tanh, df.exp, df.sin, df.cos, df.square, df.negative, df.abs, df.sqrt]
BINARY = [df.add, df.subtract, df.multiply, df.divide, df.maximum, df.minimum]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_reusable_op_gives_the_bits_of_a_fresh_result(dtype):
    rng = np.random.default_rng(0)
    with df.Graph():
        x = df.placeholder("x", (256, 257), dtype)
        r = df.placeholder("r", (257,), dtype)
        outs = [op(fresh_op(Fresh())(x)) for op in UNARY]
        outs += [op(fresh_op(Fresh())(x), r) for op in BINARY]
        outs += [op(r, fresh_op(Fresh())(x)) for op in BINARY]
        outs += [op(fresh_op(Fresh())(x), 0.37) for op in BINARY]
    feeds = {x: rng.uniform(0.1, 2.0, (256, 257)).astype(dtype),
             r: rng.uniform(0.1, 2.0, 257).astype(dtype)}
    for a, b in zip(run_inline(outs, feeds), run_without_reuse(outs, feeds)):
        assert a.dtype == b.dtype and same_bits(a, b)


def test_reusable_inputs_follow_shapes_dtypes_and_unknown_dims():
    with df.Graph():
        big = df.placeholder("big", (None, 4))
        row = df.placeholder("row", (40_000,))
        other = df.placeholder("other", (None, 4))
        one = df.placeholder("one", (1, 4))
        small = df.placeholder("small", (40_000,), np.float32)
        tiny = df.placeholder("tiny", (4,))
        cases = {
            "broadcast row": (big + tiny, (0,)),
            "unknown dims on both sides": (big * other, ()),
            "a 1 broadcasts": (big - one, (0,)),
            "dtype differs": (row + small, (0,)),
            "same shapes, static": (row * row, (0, 1)),
            "too small to be worth it": (tiny * tiny, ()),
        }
    for what, (node, expected) in cases.items():
        assert reusable_inputs(node, node.op.kernel()) == expected, what
    with df.Graph():
        m = df.placeholder("m", (3, 3))
        assert reusable_inputs(df.matmul(m, m), df.matmul(m, m).op.kernel()) == ()
