"""Gradient checkpointing: ``gradients(ys, xs, checkpoints=...)`` gives bitwise the
gradients of plain back-propagation, recomputes forward segments late in the backward
pass (``after``), and lowers the peak memory of a run (tracemalloc, robust margins, no
timing assertions)."""

from __future__ import annotations

import gc
import math
import tracemalloc

import numpy as np
import pytest

import dataflow as df
import scheduler
from dataflow.checkpointing import After, auto_checkpoints
from dataflow.models import build_tanh_chain


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def run(fetches, feeds, executor="inline", simplify=True):
    with scheduler.Engine(executor, workers=2, simplify=simplify) as engine:
        return engine.run(fetches, feeds)


def chain(layers, size, checkpoints):
    """h = tanh(h * w_i), loss = sum(h); gradients with respect to x and every w_i."""
    c = build_tanh_chain(layers, size, checkpoints)
    return c.graph, c.x, c.weights, c.loss, c.grads


def chain_feeds(x, ws, size, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {x: rng.normal(size=size)}
    feeds.update({w: v for w, v in zip(ws, rng.uniform(0.8, 1.2, len(ws)))})
    return feeds


# -- after ----------------------------------------------------------------------------------

def test_after_passes_its_value_and_its_gradient_to_x_only():
    with df.Graph():
        x = df.placeholder("x", (3,))
        t = df.placeholder("t", (2,))
        y = df.after(x * 2.0, t, df.exp(t))
        gx, gt = df.gradients(df.sum(y * y), [x, t])
    value = np.array([1.0, -2.0, 0.5])
    got_y, got_gx, got_gt = run([y, gx, gt], {x: value, t: np.ones(2)})
    assert same_bits(got_y, value * 2.0)
    assert same_bits(got_gx, 2 * (value * 2.0) * 2.0)
    assert same_bits(got_gt, np.zeros(2))
    assert df.after(x) is x


def test_after_runs_after_its_tokens():
    order = []

    def note(name):
        return df.custom_op(f"test_checkpointing.note_{name}",
                            lambda v: order.append(name) or v)

    with df.Graph():
        x = df.placeholder("x", ())
        late = note("token")(x + 1.0)
        y = note("after")(df.after(x, late)) * 1.0
    run([y, late], {x: np.float64(1.0)})
    assert order == ["token", "after"]


# -- choosing checkpoints -------------------------------------------------------------------

def test_auto_checkpoints_spread_about_sqrt_n_along_a_chain():
    g, x, ws, loss, grads = chain(100, 4, None)
    points = auto_checkpoints([loss], [x, *ws])
    forward = [n for n in g if n.op.name in ("tanh", "multiply") and n.id < loss.id]
    assert len(forward) == 200
    assert len(points) == round(math.sqrt(len(forward) + 1))
    ids = [p.id for p in points]
    assert ids == sorted(ids)
    gaps = np.diff([forward.index(p) for p in points])
    assert gaps.max() - gaps.min() <= 2


def test_auto_checkpoints_prefer_nodes_that_separate_the_graph():
    """In a residual network only the block outputs separate the graph: every other
    node has the skip connection passing over it."""
    with df.Graph():
        x = df.placeholder("x", (4,))
        h = df.exp(x)
        outputs = [h]
        for _ in range(16):
            h = h + df.tanh(df.sin(h) * 2.0)
            outputs.append(h)
        loss = df.sum(h)
    points = auto_checkpoints([loss], [x])
    assert points and all(p in outputs for p in points)


def test_bad_checkpoints_are_refused():
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = df.sum(df.tanh(x))
    with df.Graph():
        other = df.placeholder("other", ())
    with pytest.raises(ValueError, match="checkpoints"):
        df.gradients(y, [x], checkpoints="sqrt")
    with pytest.raises(df.GraphError):
        df.gradients(y, [x], checkpoints=[other])
    with pytest.raises(df.GraphError):
        df.gradients(y, [x], checkpoints=[1])


# -- same gradients --------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoints", ["auto", [], "every-fifth"])
def test_chain_gradients_are_bitwise_equal(checkpoints):
    g, x, ws, loss, plain = chain(40, 16, None)
    if checkpoints == "every-fifth":
        checkpoints = [n for n in g if n.op.name == "tanh"][::5]
    with g:
        checked = df.gradients(loss, [x, *ws], checkpoints=checkpoints)
    assert any(isinstance(n.op, After) for n in g)
    feeds = chain_feeds(x, ws, 16)
    for executor in ("inline", "threads"):
        for simplify in (True, False):
            want = run(plain, feeds, executor, simplify)
            got = run(checked, feeds, executor, simplify)
            assert all(same_bits(a, b) for a, b in zip(want, got, strict=True))


def test_mlp_gradients_are_bitwise_equal():
    model = df.models.build_mlp((6, 8, 8, 8, 3))
    with model.graph:
        checked = df.gradients(model.loss, model.params, checkpoints="auto")
    rng = np.random.default_rng(2)
    feeds = model.feeds(model.init_params(seed=2), rng.normal(size=(5, 6)),
                        rng.integers(0, 3, 5))
    want = run(model.grads, feeds)
    got = run(checked, feeds)
    assert all(same_bits(a, b) for a, b in zip(want, got, strict=True))


def test_branches_several_ys_and_second_order_are_bitwise_equal():
    with df.Graph() as g:
        x = df.placeholder("x", (5,))
        w = df.placeholder("w", (5,))
        a = df.tanh(x * w)
        b = df.sin(a) + df.exp(a * 0.5)            # two paths from a
        c = df.tanh(b * w) + a                     # a skip connection
        d = df.square(c)
        ys = [df.sum(d), df.sum(c * b)]
        plain = df.gradients(ys, [x, w])
        checked = df.gradients(ys, [x, w], checkpoints=[b])
        plain2 = df.gradients(df.sum(plain[0] * plain[1]), [x, w])
        checked2 = df.gradients(df.sum(checked[0] * checked[1]), [x, w], checkpoints="auto")
    rng = np.random.default_rng(3)
    feeds = {x: rng.normal(size=5), w: rng.normal(size=5)}
    want = run(plain, feeds)
    got = run(checked, feeds)
    assert all(same_bits(a, b) for a, b in zip(want, got, strict=True))
    # Second order: the first-order graph differs (it reads recomputed copies), so its
    # own gradient sums the same terms at other nodes: equal to rounding only.
    for a, b in zip(run(plain2, feeds), run(checked2, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    assert sum(isinstance(n.op, After) for n in g) >= 2


# -- memory ------------------------------------------------------------------------------------

def peak_bytes(fetches, feeds, executor):
    with scheduler.Engine(executor, workers=2) as engine:
        for _ in range(5):  # plan, learn costs, compile the walk to a function
            engine.run(fetches, feeds)
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            values = engine.run(fetches, feeds)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return peak, values


@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_checkpointing_lowers_peak_memory(executor):
    layers, size = 100, 8192                      # 64 KiB activations
    activation = size * 8
    g, x, ws, loss, plain = chain(layers, size, None)
    with g:
        checked = df.gradients(loss, [x, *ws], checkpoints="auto")
    feeds = chain_feeds(x, ws, size)
    plain_peak, want = peak_bytes([loss, *plain], feeds, executor)
    checked_peak, got = peak_bytes([loss, *checked], feeds, executor)
    assert all(same_bits(a, b) for a, b in zip(want, got, strict=True))
    # Storing every activation costs at least `layers` of them; about 2*sqrt(2n) are
    # expected with checkpoints (here ~25 inline, ~35 threads).
    assert plain_peak > layers * activation
    assert checked_peak < 0.5 * layers * activation
    assert checked_peak < 0.35 * plain_peak
