"""dataflow.gradients: symbol-to-symbol back-propagation (Deep Learning 6.5.6).

Checked against hand-written numpy derivatives: the MLP of algorithms 6.3/6.4,
sums over several paths, seeds (grad_ys), unconnected inputs, integer nodes,
stop_gradient, ops without bprop, higher order (gradients of gradients, jacobian,
Hessian-vector products), the repeated-subexpression chain of figure 6.9, and a
100,000-node chain under the default recursion limit."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from bits import same_bits

import dataflow as df
import scheduler


def run(fetches, feeds=None, executor="inline"):
    return scheduler.run(fetches, feeds, executor=executor)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# -- algorithms 6.3 / 6.4: an MLP with two tanh hidden layers ------------------------

SIZES = (5, 7, 6, 4)  # input, hidden 1, hidden 2, classes
BATCH = 8
WEIGHT_DECAY = 0.01


def _mlp_params(rng):
    params = {}
    for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True), start=1):
        params[f"W{i}"] = rng.normal(0, 1 / np.sqrt(m), (m, n))
        params[f"b{i}"] = rng.normal(0, 0.1, (n,))
    x = rng.normal(size=(BATCH, SIZES[0]))
    labels = rng.integers(0, SIZES[-1], BATCH)
    return params, x, labels


def _numpy_backprop(params, x, labels, lam):
    """Algorithms 6.3 (forward) and 6.4 (backward), by hand, in float64."""
    W1, b1, W2, b2, W3, b3 = (params[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    a1 = x @ W1 + b1
    h1 = np.tanh(a1)
    a2 = h1 @ W2 + b2
    h2 = np.tanh(a2)
    o = h2 @ W3 + b3
    shifted = o - o.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = x.shape[0]
    loss = -logp[np.arange(n), labels].mean() + lam * sum(
        np.sum(params[k] ** 2) for k in ("W1", "W2", "W3"))

    onehot = np.zeros_like(o)
    onehot[np.arange(n), labels] = 1.0
    g = (np.exp(logp) - onehot) / n  # dL/do
    grads = {}
    grads["b3"] = g.sum(axis=0)
    grads["W3"] = h2.T @ g + 2 * lam * W3
    g = (g @ W3.T) * (1 - h2 ** 2)  # dL/da2
    grads["b2"] = g.sum(axis=0)
    grads["W2"] = h1.T @ g + 2 * lam * W2
    g = (g @ W2.T) * (1 - h1 ** 2)  # dL/da1
    grads["b1"] = g.sum(axis=0)
    grads["W1"] = x.T @ g + 2 * lam * W1
    return loss, grads


def _mlp_graph(lam=WEIGHT_DECAY):
    names = ("W1", "b1", "W2", "b2", "W3", "b3")
    with df.Graph() as g:
        x = df.placeholder("x", (None, SIZES[0]))
        labels = df.placeholder("labels", (None,), dtype=np.int64)
        p = {}
        for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True), start=1):
            p[f"W{i}"] = df.placeholder(f"W{i}", (m, n))
            p[f"b{i}"] = df.placeholder(f"b{i}", (n,))
        h = x
        for i in (1, 2):
            h = df.tanh(h @ p[f"W{i}"] + p[f"b{i}"])
        logits = h @ p["W3"] + p["b3"]
        loss = df.softmax_cross_entropy(logits, labels)
        loss = loss + lam * (df.sum(p["W1"] ** 2) + df.sum(p["W2"] ** 2) + df.sum(p["W3"] ** 2))
        grads = df.gradients(loss, [p[k] for k in names])
    return g, x, labels, p, loss, dict(zip(names, grads, strict=True))


def _mlp_feeds(x, labels, p, params, xv, yv):
    feeds = {x: xv, labels: yv}
    feeds.update({p[k]: v for k, v in params.items()})
    return feeds


@pytest.mark.parametrize("lam", [0.0, WEIGHT_DECAY])
def test_mlp_gradients_match_hand_written_backprop(rng, lam):
    params, xv, yv = _mlp_params(rng)
    _, x, labels, p, loss, grads = _mlp_graph(lam)
    assert {k: gn.shape for k, gn in grads.items()} == {k: v.shape for k, v in params.items()}
    assert all(gn.dtype == np.float64 for gn in grads.values())
    got_loss, *values = run([loss, *grads.values()], _mlp_feeds(x, labels, p, params, xv, yv))
    got = dict(zip(grads, values, strict=True))
    want_loss, want = _numpy_backprop(params, xv, yv, lam)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-10, atol=1e-10)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-10, err_msg=k)


def test_mlp_gradients_bitwise_reproducible_across_runs_and_executors(rng):
    params, xv, yv = _mlp_params(rng)
    _, x, labels, p, loss, grads = _mlp_graph()
    feeds = _mlp_feeds(x, labels, p, params, xv, yv)
    fetches = [loss, *grads.values()]
    ref = run(fetches, feeds)
    for executor in ("inline", "threads", "threads", "inline"):
        again = run(fetches, feeds, executor)
        for a, b in zip(ref, again, strict=True):
            assert same_bits(a, b)
    with scheduler.Engine("threads", workers=2) as engine:
        for _ in range(3):
            for a, b in zip(ref, engine.run(fetches, feeds), strict=True):
                assert same_bits(a, b)


# -- several paths, determinism ------------------------------------------------------

def test_gradients_from_several_paths_are_summed():
    xv = np.linspace(-2.0, 2.0, 7)
    with df.Graph():
        x = df.placeholder("x", (7,))
        y = x * x + df.sin(x) * x
        (gx,) = df.gradients(y, [x])
    assert gx.shape == (7,) and gx.dtype == np.float64
    want = 2 * xv + np.cos(xv) * xv + np.sin(xv)
    np.testing.assert_allclose(run(gx, {x: xv}), want, rtol=1e-14, atol=1e-15)


def test_several_paths_bitwise_identical_across_runs_builds_and_executors():
    xv = np.linspace(-2.0, 2.0, 1001)
    with df.Graph() as g:
        x = df.placeholder("x", (1001,))
        # many paths from x to y, with branches the threads executor can run in parallel
        terms = [df.sin(x * float(k)) * x + df.exp(-x * x / float(k)) for k in range(1, 9)]
        y = df.sum(df.add_n(terms) * x)
        n_before = len(g)
        (g1,) = df.gradients(y, [x])
        n_one = len(g) - n_before
        (g2,) = df.gradients(y, [x])
    assert len(g) - n_before == 2 * n_one  # each build adds the same nodes
    ref = run(g1, {x: xv})
    for executor in ("inline", "threads"):
        for _ in range(3):
            a, b = run([g1, g2], {x: xv}, executor)
            assert same_bits(a, ref)
            assert same_bits(b, ref)


def test_gradient_with_respect_to_an_intermediate_node():
    with df.Graph():
        x = df.placeholder("x", (3,))
        h = x * x
        y = df.sum(h * h + h)
        gh, gx = df.gradients(y, [h, x])
    xv = np.array([0.5, -1.0, 2.0])
    hv = xv * xv
    got_h, got_x = run([gh, gx], {x: xv})
    np.testing.assert_allclose(got_h, 2 * hv + 1)
    np.testing.assert_allclose(got_x, (2 * hv + 1) * 2 * xv)


def test_several_ys_and_duplicated_xs():
    with df.Graph():
        x = df.placeholder("x", (3,))
        y1 = df.sum(x * x)
        y2 = df.sum(df.sin(x))
        ga, gb = df.gradients([y1, y2, y1], [x, x])
        gy = df.grad(y1, y1)
    xv = np.array([0.1, 0.2, 0.3])
    a, b, c = run([ga, gb, gy], {x: xv})
    np.testing.assert_allclose(a, 4 * xv + np.cos(xv))
    np.testing.assert_array_equal(a, b)
    assert c == 1.0


def test_broadcasting_gradients_sum_back_to_the_input_shape():
    with df.Graph():
        x = df.placeholder("x", (4, 3))
        b = df.placeholder("b", (3,))
        s = df.placeholder("s", ())
        y = df.sum(df.tanh(x * s + b))
        gx, gb, gs = df.gradients(y, [x, b, s])
    assert (gx.shape, gb.shape, gs.shape) == ((4, 3), (3,), ())
    rng = np.random.default_rng(0)
    xv, bv, sv = rng.normal(size=(4, 3)), rng.normal(size=3), 0.7
    d = 1 - np.tanh(xv * sv + bv) ** 2
    got = run([gx, gb, gs], {x: xv, b: bv, s: sv})
    np.testing.assert_allclose(got[0], d * sv)
    np.testing.assert_allclose(got[1], d.sum(0))
    np.testing.assert_allclose(got[2], (d * xv).sum())


def test_gradients_do_not_change_the_forward_graph():
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
        y = df.sum(df.exp(x) * x)
        before = list(g)
        consumers = {n: df.get_consumers(n, g) for n in before}
        df.gradients(y, [x])
    assert list(g)[: len(before)] == before
    for n in before:
        assert n.inputs == tuple(n.inputs)  # unchanged nodes
        # new consumers are only appended, never inserted before existing ones
        assert df.get_consumers(n, g)[: len(consumers[n])] == consumers[n]


# -- grad_ys -------------------------------------------------------------------------

def test_grad_ys_as_arrays_and_nodes():
    xv = np.array([0.3, -0.4, 1.2])
    sv = np.array([1.0, 2.0, -3.0])
    with df.Graph():
        x = df.placeholder("x", (3,))
        seed = df.placeholder("seed", (3,))
        y = df.sin(x) * x
        z = df.sum(x * x)
        (from_array,) = df.gradients(y, [x], grad_ys=sv)
        (from_list,) = df.gradients([y], [x], grad_ys=[sv])
        (from_node,) = df.gradients(y, [x], grad_ys=seed)
        (from_node_list,) = df.gradients([y, z], [x], grad_ys=[seed, np.float64(0.5)])
        (partial,) = df.gradients([y, z], [x], grad_ys=[None, 2.0])
        (from_expr,) = df.gradients(y, [x], grad_ys=x * 2.0)
    dy = np.cos(xv) * xv + np.sin(xv)
    got = run([from_array, from_list, from_node, from_node_list, partial, from_expr],
              {x: xv, seed: sv})
    np.testing.assert_allclose(got[0], dy * sv)
    np.testing.assert_array_equal(got[1], got[0])
    np.testing.assert_array_equal(got[2], got[0])
    np.testing.assert_allclose(got[3], dy * sv + 0.5 * 2 * xv)
    np.testing.assert_allclose(got[4], dy + 2.0 * 2 * xv)
    np.testing.assert_allclose(got[5], dy * 2 * xv)


def test_grad_ys_with_a_wrong_shape_raises_shape_error():
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
        y = df.sin(x)
        s = df.sum(y)
        n = len(g)
        with pytest.raises(df.ShapeError, match=r"\(4,\)"):
            df.gradients(y, [x], grad_ys=np.ones(4))
        with pytest.raises(df.ShapeError):
            df.gradients(y, [x], grad_ys=np.ones((3, 1)))
        with pytest.raises(df.ShapeError):
            df.gradients(y, [x], grad_ys=1.0)  # no implicit broadcasting of seeds
        with pytest.raises(df.ShapeError):
            df.gradients(y, [x], grad_ys=df.placeholder("bad", (2,)))
        with pytest.raises(df.ShapeError):
            df.gradients(s, [x], grad_ys=np.ones(3))
        with pytest.raises(df.GraphError):
            df.gradients([y, s], [x], grad_ys=[np.ones(3)])  # one seed for two ys
        # an array or node is one seed, never split along its first axis into several
        with pytest.raises(df.GraphError):
            df.gradients([y, y * 2.0], [x], grad_ys=np.ones((2, 3)))
        with pytest.raises(df.GraphError):
            df.gradients([s, s * 2.0], [x], grad_ys=df.constant(np.ones(2)))
    with df.Graph():
        other = df.placeholder("other", (3,))
    with pytest.raises(df.GraphError):
        df.gradients(y, [x], grad_ys=other)
    assert n <= len(g)


def test_grad_ys_with_unknown_dims():
    with df.Graph():
        x = df.placeholder("x", (None, 2))
        y = x * 3.0
        (gx,) = df.gradients(y, [x], grad_ys=np.full((4, 2), 2.0))
        seed = df.placeholder("seed", (None, 2))
        (gs,) = df.gradients(y, [x], grad_ys=seed)
    np.testing.assert_array_equal(run(gx, {x: np.ones((4, 2))}), np.full((4, 2), 6.0))
    np.testing.assert_array_equal(
        run(gs, {x: np.ones((3, 2)), seed: np.ones((3, 2))}), np.full((3, 2), 3.0))


# -- unconnected inputs, integers, stop_gradient -------------------------------------

def test_unconnected_modes():
    with df.Graph():
        x = df.placeholder("x", (2, 3))
        w = df.placeholder("w", (3,))
        y = df.sum(df.exp(w))
        gx_zero, gw = df.gradients(y, [x, w])
        gx_default = df.gradients(y, [x])[0]
        gx_none = df.gradients(y, [x], unconnected="none")[0]
        with pytest.raises(df.GradientError, match="'x'"):
            df.gradients(y, [x, w], unconnected="raise")
        with pytest.raises(ValueError):
            df.gradients(y, [x], unconnected="ignore")
    assert gx_none is None
    assert gx_zero.shape == (2, 3) and gx_zero.dtype == np.float64
    wv = np.array([0.0, 1.0, 2.0])
    z, d, gwv = run([gx_zero, gx_default, gw], {w: wv})  # static zeros need no x
    np.testing.assert_array_equal(z, np.zeros((2, 3)))
    np.testing.assert_array_equal(d, np.zeros((2, 3)))
    np.testing.assert_allclose(gwv, np.exp(wv))


def test_unconnected_zero_with_unknown_shape():
    with df.Graph():
        x = df.placeholder("x", (None,))
        w = df.placeholder("w", ())
        (gx,) = df.gradients(w * 2.0, [x])
    assert gx.shape == (None,)
    np.testing.assert_array_equal(run(gx, {x: np.ones(5)}), np.zeros(5))


def test_integer_nodes_are_not_differentiable():
    with df.Graph():
        i = df.placeholder("i", (3,), dtype=np.int64)
        x = df.placeholder("x", (3,))
        y = df.sum(x * i)
        gi_none, gx = df.gradients(y, [i, x], unconnected="none")
        (gi_zero,) = df.gradients(y, [i])
        with pytest.raises(df.GradientError):
            df.gradients(y, [i], unconnected="raise")
        # a path through an integer node carries no gradient either
        through_int = df.sum(df.cast(df.cast(x * 10.0, np.int64), np.float64))
        assert df.gradients(through_int, [x], unconnected="none") == [None]
        # an integer y has no gradient at all
        k = df.sum(i * 2)
        assert df.gradients(k, [i, x], unconnected="none") == [None, None]
    assert gi_none is None
    iv, xv = np.array([1, 2, 3]), np.array([0.5, 0.25, 2.0])
    got_x, got_i, yv = run([gx, gi_zero, y], {i: iv, x: xv})
    np.testing.assert_array_equal(got_x, iv.astype(float))
    assert yv == np.dot(xv, iv)
    np.testing.assert_array_equal(got_i, 0)


def test_stop_gradient_cuts_the_path():
    xv = np.array([0.5, 1.5, -2.0])
    with df.Graph():
        x = df.placeholder("x", (3,))
        y = df.sum(x * df.stop_gradient(x))  # d/dx = stop(x), not 2x
        (gx,) = df.gradients(y, [x])
        cut = df.sum(df.stop_gradient(df.sin(x) * x))
        assert df.gradients(cut, [x], unconnected="none") == [None]
        with pytest.raises(df.GradientError):
            df.gradients(cut, [x], unconnected="raise")
        # one path cut, one path kept
        mixed = df.sum(df.stop_gradient(x * x) + df.exp(x))
        (gm,) = df.gradients(mixed, [x])
    value, gval, gmv = run([y, gx, gm], {x: xv})
    np.testing.assert_allclose(value, np.sum(xv * xv))
    np.testing.assert_allclose(gval, xv)
    np.testing.assert_allclose(gmv, np.exp(xv))


# -- ops without a bprop -------------------------------------------------------------

def test_op_without_bprop_raises_only_when_a_gradient_goes_through_it():
    nobprop = df.custom_op("nobprop", np.sin)
    assert not nobprop.op.has_bprop
    xv, wv = np.array([0.1, 0.2]), np.array([3.0, 4.0])
    with df.Graph():
        x = df.placeholder("x", (2,))
        w = df.placeholder("w", (2,))
        u = nobprop(x)
        y = df.sum(u * w) + df.sum(df.cos(w))
        # building and running the forward graph is fine
        np.testing.assert_allclose(run(y, {x: xv, w: wv}),
                                   np.sum(np.sin(xv) * wv) + np.sum(np.cos(wv)))
        # a gradient on another path of the same graph works
        (gw,) = df.gradients(y, [w])
        np.testing.assert_allclose(run(gw, {x: xv, w: wv}), np.sin(xv) - np.sin(wv))
        # through the op: GradientError naming it
        with pytest.raises(df.GradientError, match="nobprop"):
            df.gradients(y, [x])
        with pytest.raises(df.GradientError, match="nobprop"):
            df.gradients(y, [w, x])
        # cut by stop_gradient: no gradient is asked through it
        z = df.sum(df.stop_gradient(nobprop(x)) * x)
        (gz,) = df.gradients(z, [x])
        np.testing.assert_allclose(run(gz, {x: xv}), np.sin(xv))


def test_custom_op_with_bprop():
    cube = df.custom_op("test_gradients.cube", lambda a: a ** 3,
                        bprop=lambda inputs, output, grad: (grad * 3.0 * df.square(inputs[0]),))
    with df.Graph():
        x = df.placeholder("x", (3,))
        (gx,) = df.gradients(df.sum(cube(x) * x), [x])
    xv = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(run(gx, {x: xv}), 4 * xv ** 3)


# -- higher order --------------------------------------------------------------------

def test_gradients_of_gradients():
    xv = np.array([-1.5, 0.0, 0.5, 2.0])
    with df.Graph():
        x = df.placeholder("x", (4,))
        y = x ** 3
        d1 = df.gradients(y, [x])
        d2 = df.gradients(df.gradients(y, [x]), [x])
        d3 = df.gradients(d2, [x])
        d4 = df.gradients(d3, [x], unconnected="none")
    got1, got2, got3 = run([d1[0], d2[0], d3[0]], {x: xv})
    np.testing.assert_allclose(got1, 3 * xv ** 2)
    np.testing.assert_allclose(got2, 6 * xv)
    np.testing.assert_allclose(got3, 6.0)
    if d4[0] is not None:  # constants may or may not depend on x symbolically
        np.testing.assert_allclose(run(d4[0], {x: xv}), 0.0)


def test_second_derivative_of_a_composite():
    xv = np.array([0.3, -0.7])
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = df.sum(df.sin(x) * df.exp(x))
        (g1,) = df.gradients(y, [x])
        (g2,) = df.gradients(g1, [x])
    # d/dx sin e = e (sin + cos); d2 = e (sin + cos) + e (cos - sin) = 2 e cos
    np.testing.assert_allclose(run(g2, {x: xv}), 2 * np.exp(xv) * np.cos(xv), rtol=1e-13)


def test_jacobian_of_a_matrix_vector_product(rng):
    A = rng.normal(size=(3, 4))
    xv = rng.normal(size=4)
    with df.Graph():
        x = df.placeholder("x", (4,))
        y = df.constant(A) @ x
        J = df.jacobian(y, x)
        J2 = df.jacobian(df.tanh(y), x)
    assert J.shape == (3, 4)
    got, got2 = run([J, J2], {x: xv})
    np.testing.assert_allclose(got, A, rtol=0, atol=0)
    np.testing.assert_allclose(got2, (1 - np.tanh(A @ xv) ** 2)[:, None] * A, rtol=1e-13)


def test_jacobian_of_elementwise_tanh(rng):
    xv = rng.normal(size=5)
    Xv = rng.normal(size=(2, 3))
    with df.Graph():
        x = df.placeholder("x", (5,))
        J = df.jacobian(df.tanh(x), x)
        X = df.placeholder("X", (2, 3))
        JX = df.jacobian(df.tanh(X), X)
        Js = df.jacobian(df.sum(df.tanh(x)), x)
    assert J.shape == (5, 5) and JX.shape == (2, 3, 2, 3) and Js.shape == (5,)
    got, gotX, gots = run([J, JX, Js], {x: xv, X: Xv})
    np.testing.assert_allclose(got, np.diag(1 - np.tanh(xv) ** 2), rtol=1e-14)
    want = np.diag((1 - np.tanh(Xv) ** 2).ravel()).reshape(2, 3, 2, 3)
    np.testing.assert_allclose(gotX, want, rtol=1e-14)
    np.testing.assert_allclose(gots, 1 - np.tanh(xv) ** 2, rtol=1e-14)


def test_jacobian_with_respect_to_a_matrix(rng):
    Wv, xv = rng.normal(size=(3, 4)), rng.normal(size=4)
    with df.Graph():
        W = df.placeholder("W", (3, 4))
        y = W @ df.constant(xv)
        J = df.jacobian(y, W)
    assert J.shape == (3, 3, 4)
    want = np.einsum("ik,j->ikj", np.eye(3), xv)
    got, yv = run([J, y], {W: Wv})
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(yv, Wv @ xv)


def test_hessian_vector_product_of_a_quadratic_form(rng):
    Q = rng.normal(size=(4, 4))  # not symmetric: H = Q + Q^T
    xv, vv = rng.normal(size=4), rng.normal(size=4)
    H = Q + Q.T
    with df.Graph():
        x = df.placeholder("x", (4,))
        v = df.placeholder("v", (4,))
        y = df.sum(x * (df.constant(Q) @ x))
        hv_node = df.hessian_vector_product(y, x, v)
        hv_array = df.hessian_vector_product(y, x, vv)
        hess = df.jacobian(df.grad(y, x), x)
    assert hv_node.shape == (4,)
    a, b, h, yv = run([hv_node, hv_array, hess, y], {x: xv, v: vv})
    np.testing.assert_allclose(yv, xv @ Q @ xv)
    np.testing.assert_allclose(a, H @ vv, rtol=1e-12)
    np.testing.assert_allclose(b, H @ vv, rtol=1e-12)
    np.testing.assert_allclose(h, H, rtol=1e-12)


def test_hessian_vector_product_of_sum_tanh(rng):
    A = rng.normal(size=(5, 3))
    xv, vv = rng.normal(size=3), rng.normal(size=3)
    t = np.tanh(A @ xv)
    H = A.T @ np.diag(-2 * t * (1 - t ** 2)) @ A
    with df.Graph():
        x = df.placeholder("x", (3,))
        y = df.sum(df.tanh(df.constant(A) @ x))
        hv = df.hessian_vector_product(y, x, vv)
        hess = df.jacobian(df.grad(y, x), x)
        with pytest.raises(df.ShapeError):
            df.hessian_vector_product(df.tanh(x), x, vv)  # y must be a scalar
        for bad_v in (np.ones((3, 3)), np.ones(1), 1.0, df.placeholder("v", (3, 1))):
            with pytest.raises(df.ShapeError):  # v must be shaped like x, not broadcast
                df.hessian_vector_product(y, x, bad_v)
    got_hv, got_h = run([hv, hess], {x: xv})
    np.testing.assert_allclose(got_h, H, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_hv, H @ vv, rtol=1e-12, atol=1e-14)


# -- figure 6.9: repeated subexpressions, linear cost --------------------------------

def test_figure_6_9_chain_with_reused_nodes_stays_linear():
    depth, eps = 20_000, 1e-4
    x0 = np.array([0.3, -0.5, 1.1])
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
        e = df.constant(eps)
        h = x
        for _ in range(depth):
            h = h + e * (df.sin(h) * h)  # h used three times per step
        y = df.sum(h)
        n_forward = len(g)
        (gx,) = df.gradients(y, [x])
        n_gradient = len(g) - n_forward
    # a naive tree walk would be exponential; ours adds a bounded number per node
    assert n_gradient <= 2 * n_forward
    assert n_gradient >= depth  # something per step, of course

    hs = [x0]
    for _ in range(depth):
        hs.append(hs[-1] + eps * (np.sin(hs[-1]) * hs[-1]))
    gw = np.ones(3)
    for hk in reversed(hs[:-1]):
        gw = gw * (1 + eps * (np.cos(hk) * hk + np.sin(hk)))
    yv, got = run([y, gx], {x: x0})
    np.testing.assert_allclose(yv, hs[-1].sum(), rtol=1e-12)
    np.testing.assert_allclose(got, gw, rtol=1e-10)
    assert not np.allclose(got, 1.0)  # the test exercises a nontrivial gradient


def test_figure_6_9_exponential_paths_in_a_small_graph():
    # h_{k+1} = h_k * h_k: 2^depth paths from x to y, depth gradient steps
    depth = 40
    with df.Graph() as g:
        x = df.placeholder("x", ())
        h = x
        for _ in range(depth):
            h = h * h * 0.5 + h
        n_forward = len(g)
        (gx,) = df.gradients(h, [x])
        assert len(g) - n_forward <= 4 * n_forward
    xv = 1e-3
    hs = [xv]
    for _ in range(depth):
        hs.append(hs[-1] * hs[-1] * 0.5 + hs[-1])
    want = 1.0
    for hk in hs[:-1]:
        want *= hk + 1.0
    np.testing.assert_allclose(run(gx, {x: xv}), want, rtol=1e-12)


# -- a 100,000-node chain under the default recursion limit --------------------------

def test_100k_node_chain_builds_and_runs_without_recursion():
    depth = 100_000
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # CPython's default: iterative walks only
    try:
        with df.Graph() as g:
            x = df.placeholder("x", ())
            h = x
            for _ in range(depth):
                h = df.sin(h)
            n_forward = len(g)
            (gx,) = df.gradients(h, [x])
            n_total = len(g)
            assert n_forward == depth + 1
            assert n_total - n_forward <= 3 * depth
            value, grad = run([h, gx], {x: 0.5})
    finally:
        sys.setrecursionlimit(old_limit)
    hv, gv = 0.5, 1.0
    for _ in range(depth):
        gv *= np.cos(hv)
        hv = np.sin(hv)
    np.testing.assert_allclose(value, hv, rtol=1e-12)
    np.testing.assert_allclose(grad, gv, rtol=1e-9)


# -- argument checking ---------------------------------------------------------------

def test_bad_arguments():
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = df.sum(x)
    with pytest.raises(df.GraphError):
        df.gradients([], [x])
    with pytest.raises(df.GraphError):
        df.gradients(y, [np.ones(2)])
    with pytest.raises(df.GraphError):
        df.gradients(y, "x")
    with df.Graph():
        z = df.placeholder("z", (2,))
    with pytest.raises(df.GraphError):
        df.gradients(y, [z])
