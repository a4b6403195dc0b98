"""Scale and numerics: 100,000-node chains and fans (forward and gradient, with the
default recursion limit, and their reprs and error messages), the cost model under
timing noise, ``check_numerics``, float32 kept float32 through forward and gradient,
static shapes and dtypes that match the values, and empty arrays and zero-size batches.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from typing import Any

import numpy as np
import pytest
from bits import same_bits
from engines import make_engine

import dataflow as df
import scheduler
from scheduler import NumericsError
from scheduler.taskgraph import TaskGraphSource

N = 100_000


@pytest.fixture
def default_recursion_limit():
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # CPython's default: every walk must be iterative
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


# -- 100,000-node chains and fans ------------------------------------------------------

class Fail(df.Op):
    name = "test_scale.fail"

    def forward(self, x):
        raise ArithmeticError("at the end of the chain")


def test_100k_chain_forward_gradient_repr_and_errors(default_recursion_limit):
    c = np.array([0.99999, 1.00001])
    with df.Graph() as g:
        x = df.placeholder("x", (2,))
        factor = df.constant(c, name="factor")
        h = x
        for _ in range(N):
            h = h * factor
        loss = df.sum(h)
        (gx,) = df.gradients(loss, [x])
        broken = df.apply(Fail(), h, name="after_the_chain")
    assert len(g) > 2 * N
    feeds = {x: np.array([1.0, 2.0])}
    with scheduler.Engine("threads") as engine:
        for _ in range(2):  # the first run learns costs, the second uses them
            value, grad = engine.run([h, gx], feeds)
            np.testing.assert_allclose(value, c ** N * [1.0, 2.0], rtol=1e-9)
            np.testing.assert_allclose(grad, c ** N, rtol=1e-9)
        with pytest.raises(ArithmeticError, match="after_the_chain"):
            engine.run(broken, feeds)
        with pytest.raises(TimeoutError) as info:
            engine.run(broken, feeds, timeout=1e-9)
        message = str(info.value)
        assert len(message) < 2000 and "more" in message
    for node in (h, gx, loss):
        text = repr(node)
        assert node.name in text and len(text) < 200
    assert len(repr(g)) < 200
    assert np.array_equal(scheduler.run(gx, feeds, executor="inline"), grad)


def fan(n: int) -> tuple[df.Node, df.Node, df.Node, np.ndarray]:
    """One input read by ``n`` nodes, summed by one ``add_n``: the input's gradient
    gathers ``n`` contributions."""
    k = np.arange(n, dtype=np.float64) / n
    with df.Graph():
        x = df.placeholder("x", ())
        leaves = [df.sin(x * float(v)) for v in k]
        total = df.add_n(leaves)
        (gx,) = df.gradients(total, [x])
    return x, total, gx, k


def test_100k_fan_out_and_fan_in_forward_and_gradient(default_recursion_limit):
    x, total, gx, k = fan(N)
    # Without the graph rewrite, whose cost on 600,000 nodes is not what is tested here.
    with scheduler.Engine("threads", simplify=False) as engine:
        first = engine.run([total, gx], {x: 0.5})
        second = engine.run([total, gx], {x: 0.5})
    np.testing.assert_allclose(first[0], np.sum(np.sin(0.5 * k)), rtol=1e-9)
    np.testing.assert_allclose(first[1], np.sum(k * np.cos(0.5 * k)), rtol=1e-9)
    for a, b in zip(first, second):
        assert same_bits(a, b)  # contributions summed in a fixed order
    assert len(repr(total)) < 200 and len(repr(gx)) < 200


@pytest.mark.slow
def test_100k_fan_bitwise_the_same_on_every_executor(default_recursion_limit):
    x, total, gx, k = fan(N)
    expected = scheduler.run([total, gx], {x: 0.5}, executor="inline")
    for kind in ("threads", "threads-all-pooled"):
        with make_engine(kind) as engine:
            for a, b in zip(engine.run([total, gx], {x: 0.5}), expected):
                assert same_bits(a, b), kind


def test_100k_task_chain_and_fan_through_get(default_recursion_limit):
    tasks: dict = {"k0": 0}
    for i in range(1, N + 1):
        tasks[f"k{i}"] = (int.__add__, f"k{i - 1}", 1)
    tasks["fan"] = (sum, [f"k{i}" for i in range(0, N + 1, 10)])
    with scheduler.Engine("threads") as engine:
        assert engine.get(tasks, [f"k{N}", "fan"]) == (N, sum(range(0, N + 1, 10)))


# -- the cost model under timing noise ---------------------------------------------------

_calls = [0]
_threads: set = set()


def noisy_increment(v: int) -> int:
    """A tiny task that, twice in a long chain, is paused (as by GC or preemption)."""
    _calls[0] += 1
    _threads.add(threading.current_thread().name)
    if _calls[0] in (1000, 3000):
        time.sleep(0.005)
    return v + 1


def test_isolated_pauses_do_not_send_a_chain_of_tiny_tasks_to_the_pool():
    """A first run of a long chain of unknown tasks goes to the pool as one job (a
    chain: one hand-off, not one per task). Once measured cheap, the chain runs on the
    calling thread, and two slow samples of its cost key far apart are noise, not a
    slow task: it stays there (a hand-off costs tens of microseconds per task, a
    100,000-node chain would take 40 times longer)."""
    tasks: dict = {"k0": 0}
    for i in range(1, 5001):
        tasks[f"k{i}"] = (noisy_increment, f"k{i - 1}")
    with scheduler.Engine("threads", workers=2) as engine:
        _calls[0] = 0
        _threads.clear()
        assert engine.get(tasks, "k5000") == 5000
        assert len(_threads) == 1 and threading.current_thread().name not in _threads
        for _ in range(3):  # the direct walk, then a plan's learning walk
            _calls[0] = 0
            _threads.clear()
            assert engine.get(tasks, "k5000") == 5000
            assert _threads == {threading.current_thread().name}
        # A plan of the same tasks, compiled anew, learns on this thread as well.
        _calls[0] = 0
        _threads.clear()
        plan = scheduler.Plan(["k5000"], [], TaskGraphSource(tasks).spec)
        plan.seed_estimates(engine._costs, engine.inline_threshold)
        engine.execute(plan, {})
        assert _threads == {threading.current_thread().name}


# -- check_numerics ---------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # np.errstate does not reach pools
@pytest.mark.parametrize("kind", ["inline", "threads", "threads-all-pooled", "processes"])
def test_check_numerics_names_the_first_bad_node_forward_and_gradient(kind):
    with df.Graph():
        x = df.placeholder("x", (2,))
        root = df.sqrt(x)
        loss = df.sum(root * 3.0)
        (gx,) = df.gradients(loss, [x])
        logged = df.log(x - 1.0)
    with make_engine(kind, check_numerics=True) as engine, np.errstate(all="ignore"):
        clean = engine.run([loss, gx], {x: np.array([1.0, 4.0])})
        plain = scheduler.run([loss, gx], {x: np.array([1.0, 4.0])}, executor="inline")
        for a, b in zip(clean, plain):
            assert same_bits(a, b)
        # forward: log(0) is -Inf, log(-1) is NaN: the first bad node is named
        with pytest.raises(NumericsError, match="'log'.*NaN"):
            engine.run(logged, {x: np.array([1.0, 0.0])})
        with pytest.raises(NumericsError, match="'log'.*Inf"):
            engine.run(logged, {x: np.array([1.0, 2.0])})
        # gradient: d sqrt(x) / dx at 0 is Inf, in a gradient node, not in the forward
        assert engine.run(loss, {x: np.array([0.0, 4.0])}) == 6.0
        with pytest.raises(NumericsError, match="Inf") as info:
            engine.run(gx, {x: np.array([0.0, 4.0])})
        assert info.value.node_name not in ("sqrt", "x")
        assert engine.run(loss, {x: np.array([1.0, 4.0])}) == 9.0  # still usable


def test_check_numerics_off_lets_nan_through_and_get_checks_too():
    with df.Graph():
        x = df.placeholder("x", ())
        out = df.log(x)
    with np.errstate(all="ignore"):
        assert np.isnan(scheduler.run(out, {x: -1.0}))
        with pytest.raises(NumericsError, match="'y'"):
            scheduler.get({"x": -1.0, "y": (np.log, "x"), "z": (abs, "y")}, "z",
                          check_numerics=True)


# -- dtypes and shapes: float32 stays float32, static inference matches the values --------

def assert_static_matches_runtime(graph: df.Graph, feeds: dict, engine: Any) -> list:
    """Run every node of ``graph``; each value's dtype and shape match its node's."""
    nodes = list(graph.nodes)
    values = engine.run(nodes, feeds)
    for node, value in zip(nodes, values):
        value = np.asarray(value)
        assert value.dtype == node.dtype, f"{node!r} computed {value.dtype}"
        assert len(value.shape) == len(node.shape) and all(
            d is None or d == v for d, v in zip(node.shape, value.shape)
        ), f"{node!r} computed shape {value.shape}"
    return values


def float32_model(dtype: Any) -> tuple[df.Graph, dict, list]:
    rng = np.random.default_rng(0)
    with df.Graph() as g:
        x = df.placeholder("x", (None, 4), dtype=dtype)
        labels = df.placeholder("labels", (None,), dtype=np.int64)
        w1 = df.constant(rng.standard_normal((4, 5)).astype(dtype), name="w1")
        b1 = df.constant(np.zeros(5, dtype), name="b1")
        w2 = df.constant(rng.standard_normal((5, 3)).astype(dtype), name="w2")
        h = df.tanh(x @ w1 + b1)
        h = df.relu(h) * 0.5 + df.sigmoid(h) / 3.0 - 1.0  # Python scalars keep the dtype
        h = df.maximum(h, df.minimum(h ** 2, 2 - h))
        h = df.where(h > 0.1, h, df.exp(h) * 0.25)
        h = df.concatenate([h, df.sqrt(df.abs(h) + 1.0)], axis=1)[:, ::2]
        logits = df.reshape(df.transpose(h), (5, -1)).T @ (df.square(w2[::-1]) - 0.5) + 1
        probs = df.softmax(logits)
        loss = (df.softmax_cross_entropy(logits, labels) + df.mean(df.logsumexp(logits, axis=1))
                + df.sum(df.log(probs + 1.0)) / 10 + df.max(logits) - df.min(probs))
        grads = df.gradients(loss, [x, w1, b1, w2])
        hvp = df.hessian_vector_product(loss, w1, df.ones_like(w1))
    feeds = {x: rng.standard_normal((6, 4)).astype(dtype), labels: np.arange(6) % 3}
    return g, feeds, [loss, *grads, hvp]


@pytest.mark.parametrize("kind", ["inline", "threads-all-pooled", "processes"])
def test_float32_stays_float32_through_forward_and_gradients(kind):
    g, feeds, fetches = float32_model(np.float32)
    for node in g.nodes:
        assert node.dtype.kind != "f" or node.dtype == np.float32, f"{node!r} is not float32"
    with make_engine(kind) as engine:
        values = assert_static_matches_runtime(g, feeds, engine)
        assert all(np.isfinite(v).all() for v in values if np.asarray(v).dtype.kind == "f")
        got = engine.run(fetches, feeds)
    for value in got:
        assert value.dtype == np.float32
    # and float32 agrees with the same model in float64 to float32's precision
    g64, feeds64, fetches64 = float32_model(np.float64)
    feeds64 = {g64.node_by_name(k.name): v.astype(np.float64) if v.dtype == np.float32 else v
               for k, v in feeds.items()}
    reference = scheduler.run(fetches64, feeds64, executor="inline")
    for a, b in zip(got, reference):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_a_float32_placeholder_computes_in_float32_whatever_it_is_fed():
    """Feeds are converted to the placeholder's dtype (same kind only); the graph's
    arithmetic then stays in that dtype."""
    with df.Graph():
        x = df.placeholder("x", (2,), dtype=np.float32)
        out = df.sum(df.exp(x) * 2.0 + 1)
        (gx,) = df.gradients(out, [x])
    for fed in (np.ones(2), np.ones(2, np.float32), [1.0, 1.0], np.ones(2, np.float16)):
        value, grad = scheduler.run([out, gx], {x: fed}, executor="inline")
        assert value.dtype == grad.dtype == np.float32
    with pytest.raises(scheduler.FeedError, match="dtype"):
        scheduler.run(out, {x: np.ones(2, np.complex64)})


# -- empty arrays and zero-size batches -----------------------------------------------------

def mlp(batch_dim: Any = None) -> tuple[df.Graph, dict, list]:
    with df.Graph() as g:
        x = df.placeholder("x", (batch_dim, 3))
        labels = df.placeholder("labels", (batch_dim,), dtype=np.int64)
        w1 = df.constant(np.linspace(-1, 1, 12).reshape(3, 4), name="w1")
        b1 = df.constant(np.full(4, 0.1), name="b1")
        w2 = df.constant(np.linspace(-1, 1, 8).reshape(4, 2), name="w2")
        b2 = df.constant(np.zeros(2), name="b2")
        logits = df.relu(x @ w1 + b1) @ w2 + b2
        sum_loss = df.sum(df.square(logits))
        xent = df.softmax_cross_entropy(logits, labels)
        params = [x, w1, b1, w2, b2]
        grads_sum = df.gradients(sum_loss, params)
        grads_xent = df.gradients(xent, params)
    return g, {"x": x, "labels": labels, "params": params}, [sum_loss, *grads_sum, xent,
                                                              *grads_xent]


@pytest.mark.parametrize("kind", ["inline", "threads-all-pooled", "asyncio", "processes"])
def test_zero_size_batch_through_an_mlp_forward_and_gradient(kind):
    g, nodes, fetches = mlp()
    feeds = {nodes["x"]: np.zeros((0, 3)), nodes["labels"]: np.zeros(0, np.int64)}
    with make_engine(kind) as engine, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy: "Mean of empty slice"
        if kind == "asyncio":
            import asyncio

            got = asyncio.run(engine.run_async(fetches, feeds))
        else:
            got = engine.run(fetches, feeds)
        assert_static_matches_runtime(g, feeds, engine)
    sum_loss, *rest = got
    grads_sum, xent, grads_xent = rest[:5], rest[5], rest[6:]
    assert sum_loss == 0.0
    assert np.isnan(xent)  # the mean over no examples, as numpy has it
    for grads in (grads_sum, grads_xent):
        for grad, param in zip(grads, nodes["params"]):
            expected_shape = (0, 3) if param is nodes["x"] else param.shape
            assert grad.shape == expected_shape and grad.dtype == np.float64
            assert np.array_equal(grad, np.zeros(expected_shape))


def test_zero_size_batch_under_check_numerics_names_the_mean():
    g, nodes, fetches = mlp()
    feeds = {nodes["x"]: np.zeros((0, 3)), nodes["labels"]: np.zeros(0, np.int64)}
    with scheduler.Engine("threads", check_numerics=True) as engine, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert engine.run(fetches[0], feeds) == 0.0
        with pytest.raises(NumericsError, match="mean.*NaN"):
            engine.run(fetches[6], feeds)


def test_empty_arrays_through_every_kind_of_op():
    with df.Graph() as g:
        e = df.placeholder("e", (None,))
        m = df.placeholder("m", (2, None))
        outs = [
            df.sum(df.exp(e) * 2.0), df.mean(df.sin(m), axis=0), df.sum(m, axis=1),
            df.concatenate([e, e]), df.stack([e, e]), df.reshape(m, (-1,)), df.transpose(m),
            m @ df.transpose(m), df.transpose(m) @ m, df.broadcast_to(e, (3, 0)),
            df.softmax(m, axis=0), df.logsumexp(m, axis=0), df.where(e > 0, e, -e),
            df.expand_dims(e, 0)[:, 1:], df.maximum(e, 0.0), df.add_n([e, e, e]),
        ]
        loss = df.add_n([df.sum(o) for o in outs])
        grads = df.gradients(loss, [e, m])
    feeds = {e: np.zeros(0), m: np.zeros((2, 0))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for kind in ("inline", "threads-all-pooled"):
            with make_engine(kind) as engine:
                values = assert_static_matches_runtime(g, feeds, engine)
                assert engine.run(loss, feeds) == 0.0
                assert [v.shape for v in engine.run(grads, feeds)] == [(0,), (2, 0)]
    assert values[g.nodes.index(outs[8])].shape == (0, 0)
    assert np.array_equal(values[g.nodes.index(outs[7])], np.zeros((2, 2)))
    # a reduction with no identity over nothing is numpy's error, named after its node
    with df.Graph():
        e = df.placeholder("e", (None,))
        top = df.max(e)
    with pytest.raises(ValueError, match="'max'"):
        scheduler.run(top, {e: np.zeros(0)})


# -- memory layouts ---------------------------------------------------------------------------

def layout_graph() -> tuple[df.Graph, dict, list]:
    rng = np.random.default_rng(7)
    with df.Graph() as g:
        x = df.placeholder("x", (4, 5, 6))
        t = df.transpose(x, (2, 0, 1))  # a view that is neither C- nor F-contiguous
        s = x[:, ::2, 1:]  # a strided view
        outs = [df.sum(t, axis=(1, 2)), df.mean(t, axis=(0, 2)), df.logsumexp(t, axis=(0, 1)),
                df.softmax(t, axis=1), df.log_softmax(s, axis=0), df.max(t, axis=(0, 1)),
                t @ df.constant(rng.standard_normal((5, 3))),
                df.swapaxes(s, 1, 2) @ s[:, :, :2]]
        loss = df.add_n([df.sum(o * o) for o in outs])
        grads = df.gradients(loss, [x])
    return g, {x: rng.standard_normal((4, 5, 6))}, [*outs, loss, *grads]


@pytest.mark.parametrize("kind", ["threads-all-pooled", "processes"])
def test_accumulating_kernels_give_the_same_bits_whatever_the_layout(kind):
    """A value that crosses to a worker process arrives packed in C order, while the
    driving thread sees numpy's view; reductions and matmul round differently on the
    two, so they compute on a layout every executor agrees on."""
    g, feeds, fetches = layout_graph()
    expected = scheduler.run(fetches, feeds, executor="inline")
    with make_engine(kind) as engine:
        for a, b in zip(engine.run(fetches, feeds), expected):
            assert same_bits(a, b)
