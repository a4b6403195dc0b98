"""The op library against numpy: forward values, static shape/dtype inference (with
unknown dims), build-time ``ShapeError``s, float32 and integer dtypes, tie-breaking in
``max``/``min`` gradients, the basic-indexing limit, and user-defined ops (``custom_op``
and ``df.Op`` subclasses). Gradients proper are checked in ``test_op_gradients.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from bits import same_bits
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dataflow as df
import scheduler

_rng = np.random.default_rng(7)


def run(fetches: Any, feeds: dict | None = None) -> Any:
    return scheduler.run(fetches, feeds or {}, executor="inline")


def normal(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape)


def positive(*shape: int) -> np.ndarray:
    return _rng.uniform(0.5, 2.0, shape)


def ints(*shape: int) -> np.ndarray:
    return _rng.integers(-5, 6, shape)


def np_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def np_logsumexp(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    return np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


_labels = np.array([0, 3, 1, 4])


def np_sce(z: np.ndarray) -> np.ndarray:
    return -np.mean(np_log_softmax(z)[np.arange(len(_labels)), _labels])


_cond = np.array([[True, False, True, True], [False, False, True, False],
                  [True, True, False, True]])

# (id, df function of placeholders, numpy reference of arrays, args). Every public op.
FORWARD: list[tuple[str, Callable[..., df.Node], Callable[..., Any], list[np.ndarray]]] = [
    ("add", df.add, np.add, [normal(3, 4), normal(4)]),
    ("add-3x1-1x4", df.add, np.add, [normal(3, 1), normal(1, 4)]),
    ("subtract", df.subtract, np.subtract, [normal(3, 1), normal(1, 4)]),
    ("multiply", df.multiply, np.multiply, [normal(), normal(3, 4)]),
    ("divide", df.divide, np.divide, [normal(3, 4), positive(3, 4)]),
    ("negative", df.negative, np.negative, [normal(3, 4)]),
    ("power-node", df.power, np.power, [positive(3, 4), normal(4)]),
    ("power-scalar", lambda x: df.power(x, 3), lambda x: np.power(x, 3), [normal(3, 4)]),
    ("matmul-2d@2d", df.matmul, np.matmul, [normal(3, 4), normal(4, 2)]),
    ("matmul-1d@2d", df.matmul, np.matmul, [normal(4), normal(4, 2)]),
    ("matmul-2d@1d", df.matmul, np.matmul, [normal(3, 4), normal(4)]),
    ("matmul-1d@1d", df.matmul, np.matmul, [normal(4), normal(4)]),
    ("matmul-batched", df.matmul, np.matmul, [normal(2, 1, 3, 4), normal(5, 4, 2)]),
    ("exp", df.exp, np.exp, [normal(3, 4)]),
    ("log", df.log, np.log, [positive(3, 4)]),
    ("sin", df.sin, np.sin, [normal(3, 4)]),
    ("cos", df.cos, np.cos, [normal(3, 4)]),
    ("tanh", df.tanh, np.tanh, [normal(3, 4)]),
    ("sqrt", df.sqrt, np.sqrt, [positive(3, 4)]),
    ("square", df.square, np.square, [normal(3, 4)]),
    ("abs", df.abs, np.abs, [normal(3, 4)]),
    ("maximum", df.maximum, np.maximum, [normal(3, 1), normal(4)]),
    ("minimum", df.minimum, np.minimum, [normal(3, 4), normal()]),
    ("where", lambda x, y: df.where(_cond, x, y), lambda x, y: np.where(_cond, x, y),
     [normal(3, 1), normal(4)]),
    ("sum", df.sum, np.sum, [normal(2, 3, 4)]),
    ("sum-axis1", lambda x: df.sum(x, axis=1), lambda x: np.sum(x, axis=1), [normal(2, 3, 4)]),
    ("sum-axes-keepdims", lambda x: df.sum(x, axis=(0, -1), keepdims=True),
     lambda x: np.sum(x, axis=(0, -1), keepdims=True), [normal(2, 3, 4)]),
    ("mean", lambda x: df.mean(x, axis=-1), lambda x: np.mean(x, axis=-1), [normal(2, 3, 4)]),
    ("max", lambda x: df.max(x, axis=0), lambda x: np.max(x, axis=0), [normal(2, 3, 4)]),
    ("min", lambda x: df.min(x, axis=(1, 2), keepdims=True),
     lambda x: np.min(x, axis=(1, 2), keepdims=True), [normal(2, 3, 4)]),
    ("reshape", lambda x: df.reshape(x, (4, -1)), lambda x: np.reshape(x, (4, -1)),
     [normal(2, 3, 4)]),
    ("transpose", df.transpose, np.transpose, [normal(2, 3, 4)]),
    ("transpose-axes", lambda x: df.transpose(x, (1, 2, 0)),
     lambda x: np.transpose(x, (1, 2, 0)), [normal(2, 3, 4)]),
    ("broadcast_to", lambda x: df.broadcast_to(x, (2, 3, 4)),
     lambda x: np.broadcast_to(x, (2, 3, 4)), [normal(3, 1)]),
    ("concatenate", lambda a, b: df.concatenate([a, b], axis=1),
     lambda a, b: np.concatenate([a, b], axis=1), [normal(3, 2), normal(3, 4)]),
    ("stack", lambda a, b: df.stack([a, b], axis=-1), lambda a, b: np.stack([a, b], axis=-1),
     [normal(3, 2), normal(3, 2)]),
    ("getitem-slices", lambda x: x[1:4, ::2], lambda x: x[1:4, ::2], [normal(5, 6)]),
    ("getitem-int", lambda x: x[-1], lambda x: x[-1], [normal(5, 6)]),
    ("getitem-newaxis", lambda x: x[:, None], lambda x: x[:, None], [normal(5, 6)]),
    ("getitem-ellipsis", lambda x: x[..., 0], lambda x: x[..., 0], [normal(2, 3, 4)]),
    ("sigmoid", df.sigmoid, np_sigmoid, [normal(3, 4)]),
    ("relu", df.relu, lambda x: np.maximum(x, 0), [normal(3, 4)]),
    ("softmax", df.softmax, np_softmax, [normal(3, 4)]),
    ("softmax-axis0", lambda x: df.softmax(x, axis=0), lambda x: np_softmax(x, axis=0),
     [normal(3, 4)]),
    ("log_softmax", df.log_softmax, np_log_softmax, [normal(3, 4)]),
    ("logsumexp", df.logsumexp, np_logsumexp, [normal(3, 4)]),
    ("logsumexp-axis-keepdims", lambda x: df.logsumexp(x, axis=1, keepdims=True),
     lambda x: np_logsumexp(x, axis=1, keepdims=True), [normal(3, 4)]),
    ("softmax_cross_entropy", lambda z: df.softmax_cross_entropy(z, _labels), np_sce,
     [normal(4, 5)]),
    ("cast", lambda x: df.cast(x, np.float16), lambda x: x.astype(np.float16), [normal(3, 4)]),
    ("stop_gradient", df.stop_gradient, lambda x: x, [normal(3, 4)]),
    ("op-2*x", lambda x: 2 * x, lambda x: 2 * x, [normal(3, 4)]),
    ("op-10.0/x", lambda x: 10.0 / x, lambda x: 10.0 / x, [positive(3, 4)]),
    ("op-x**3", lambda x: x ** 3, lambda x: x ** 3, [normal(3, 4)]),
    ("op-1-x", lambda x: 1 - x, lambda x: 1 - x, [normal(3, 4)]),
]

FORWARD_IDS = [f[0] for f in FORWARD]

# Ops whose forward numpy also runs on integer inputs (dtype promotion checked too).
INT_OPS = {
    "add", "add-3x1-1x4", "subtract", "multiply", "negative", "matmul-2d@2d", "matmul-1d@1d",
    "matmul-batched", "exp", "sin", "tanh", "square", "abs", "maximum", "minimum", "where",
    "sum", "sum-axis1", "sum-axes-keepdims", "mean", "max", "min", "reshape", "transpose",
    "transpose-axes", "broadcast_to", "concatenate", "stack", "getitem-slices", "getitem-int",
    "getitem-newaxis", "getitem-ellipsis", "sigmoid", "relu", "softmax", "log_softmax",
    "logsumexp", "cast", "stop_gradient", "op-2*x", "op-1-x",
}


def _inputs(args: list[np.ndarray], dtype: str) -> list[np.ndarray]:
    if dtype == "int64":
        return [np.round(a * 3).astype(np.int64) for a in args]
    return [a.astype(dtype) for a in args]


def _build(fn: Callable[..., df.Node], arrays: list[np.ndarray],
           unknown: str = "none") -> tuple[df.Node, list[df.Node]]:
    """Placeholders for ``arrays`` (dims all known, first dim unknown or all unknown)."""
    def shape_of(a: np.ndarray) -> tuple:
        if unknown == "all":
            return (None,) * a.ndim
        if unknown == "first" and a.ndim:
            return (None,) + a.shape[1:]
        return a.shape

    with df.Graph():
        xs = [df.placeholder(f"a{i}", shape_of(a), a.dtype) for i, a in enumerate(arrays)]
        return fn(*xs), xs


def _compatible(static: tuple, actual: tuple) -> bool:
    return len(static) == len(actual) and all(s is None or s == a for s, a in zip(static, actual))


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
@pytest.mark.parametrize(("case_id", "fn", "ref", "args"), FORWARD, ids=FORWARD_IDS)
def test_forward_matches_numpy_and_static_inference(case_id, fn, ref, args, dtype) -> None:
    if dtype == "int64" and case_id not in INT_OPS:
        pytest.skip("float-only op")
    arrays = _inputs(args, dtype)
    out, xs = _build(fn, arrays)
    value = run(out, dict(zip(xs, arrays)))
    expected = np.asarray(ref(*arrays))
    assert value.shape == expected.shape
    assert value.dtype == expected.dtype, f"{value.dtype} != numpy's {expected.dtype}"
    tol = 1e-5 if value.dtype in (np.float32, np.float16) else 1e-12
    np.testing.assert_allclose(value, expected, rtol=tol, atol=tol)
    # what was inferred while building is what came out
    assert out.shape == value.shape
    assert out.dtype == value.dtype


@pytest.mark.parametrize("unknown", ["first", "all"])
@pytest.mark.parametrize(("case_id", "fn", "ref", "args"), FORWARD, ids=FORWARD_IDS)
def test_static_inference_with_unknown_dims(case_id, fn, ref, args, unknown) -> None:
    if case_id == "softmax_cross_entropy" and unknown == "all":
        with pytest.raises(df.ShapeError, match="classes"):
            _build(fn, args, unknown)
        return
    out, xs = _build(fn, args, unknown)
    value = run(out, dict(zip(xs, args)))
    assert _compatible(out.shape, value.shape), f"static {out.shape}, actual {value.shape}"
    assert out.dtype == value.dtype
    np.testing.assert_allclose(value, ref(*args), rtol=1e-12, atol=1e-12)


# -- gradients through the run-time-shape paths -----------------------------------------

UNKNOWN_GRADS: list[tuple[str, Callable[..., df.Node], list[np.ndarray]]] = [
    ("add-broadcast", lambda x, y: x + y, [normal(3, 1), normal(4)]),
    ("multiply-scalar", lambda x, y: x * y, [normal(), normal(3, 4)]),
    ("mean", lambda x: df.mean(x, axis=0), [normal(3, 4)]),
    ("mean-all", df.mean, [normal(3, 4)]),
    ("max", lambda x: df.max(x, axis=1), [normal(3, 4)]),
    ("sum-keepdims", lambda x: df.sum(x, axis=-1, keepdims=True), [normal(3, 4)]),
    ("reshape", lambda x: df.reshape(x, (-1,)), [normal(3, 4)]),
    ("broadcast_to", lambda x: df.broadcast_to(x, (2, 3, 4)), [normal(3, 1)]),
    ("getitem", lambda x: x[1:, None, -1], [normal(3, 4)]),
    ("concatenate", lambda a, b: df.concatenate([a, b * b]), [normal(2, 3), normal(4, 3)]),
    ("stack", lambda a, b: df.stack([a, b], axis=1), [normal(2, 3), normal(2, 3)]),
    ("matmul-batched", df.matmul, [normal(2, 1, 3, 4), normal(5, 4, 2)]),
    ("matmul-1d", df.matmul, [normal(4), normal(2, 4, 3)]),
    ("softmax", df.softmax, [normal(3, 4)]),
    ("logsumexp", lambda x: df.logsumexp(x, axis=0), [normal(3, 4)]),
    ("sce", lambda z: df.softmax_cross_entropy(z, _labels), [normal(4, 5)]),
    ("where", lambda x, y: df.where(_cond, x, y), [normal(3, 1), normal(4)]),
    ("transpose", df.transpose, [normal(2, 3, 4)]),
]


@pytest.mark.parametrize("unknown", ["first", "all"])
@pytest.mark.parametrize(("case_id", "fn", "args"), UNKNOWN_GRADS,
                         ids=[c[0] for c in UNKNOWN_GRADS])
def test_gradients_with_unknown_dims_equal_static_ones(case_id, fn, args, unknown) -> None:
    if case_id == "sce" and unknown == "all":
        pytest.skip("softmax_cross_entropy needs a static number of classes")

    def grads(mode: str) -> list[np.ndarray]:
        out, xs = _build(fn, args, mode)
        gs = df.gradients(out, xs)  # seeds of unknown shape: ones computed at run time
        second = df.gradients(df.add_n([df.sum(g * g) for g in gs]), xs)
        return run(gs + second, dict(zip(xs, args)))

    static, dynamic = grads("none"), grads(unknown)
    for a, b in zip(static, dynamic):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


# -- broadcasting and indexing shape rules against numpy, over many shapes --------------

@settings(max_examples=60, deadline=None)
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3))
def test_broadcast_shapes_match_numpy(shapes) -> None:
    a, b = (np.ones(s) for s in shapes.input_shapes)
    with df.Graph():
        x, y = df.placeholder("x", a.shape), df.placeholder("y", b.shape)
        out = x * y
        gx, gy = df.gradients(out, [x, y])
    assert out.shape == shapes.result_shape
    value, vx, vy = run([out, gx, gy], {x: a, y: b})
    assert value.shape == shapes.result_shape
    assert vx.shape == a.shape and vy.shape == b.shape


@st.composite
def basic_indices(draw) -> tuple[tuple[int, ...], tuple]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    index = draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    return shape, index


@settings(max_examples=80, deadline=None)
@given(basic_indices())
def test_basic_indexing_matches_numpy(case) -> None:
    shape, index = case
    a = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    with df.Graph():
        x = df.placeholder("x", shape)
        out = x[index]
        (g,) = df.gradients(df.sum(out * out), [x])
    expected = a[index]
    assert out.shape == expected.shape
    value, grad = run([out, g], {x: a})
    np.testing.assert_array_equal(value, expected)
    # the adjoint writes 2 * x back where it was read (each element read at most once)
    mask = np.zeros(shape, bool)
    mask[index] = True
    np.testing.assert_array_equal(grad, np.where(mask, 2 * a, 0.0))


# -- ShapeError at build time, naming the op and the shapes -----------------------------

def _shape_error(fn: Callable[[], Any], *needles: str) -> str:
    with pytest.raises(df.ShapeError) as info:
        fn()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_shape_error_binary_ops_name_op_and_both_shapes() -> None:
    with df.Graph():
        a, b = df.placeholder("a", (3,)), df.placeholder("b", (4,))
        for name in ["add", "subtract", "multiply", "divide", "power", "maximum", "minimum"]:
            _shape_error(lambda n=name: getattr(df, n)(a, b), name, "(3,)", "(4,)")
        _shape_error(lambda: a + b, "add", "(3,)", "(4,)")
        m = df.placeholder("m", (2, 3))
        _shape_error(lambda: df.where(_cond, m, m), "where", "(3, 4)", "(2, 3)")
        u = df.placeholder("u", (None, 3))
        _shape_error(lambda: u * b, "multiply", "(?, 3)", "(4,)")


def test_shape_error_matmul() -> None:
    with df.Graph():
        a, b = df.placeholder("a", (3, 4)), df.placeholder("b", (5, 2))
        _shape_error(lambda: a @ b, "matmul", "(3, 4)", "(5, 2)")
        _shape_error(lambda: df.matmul(df.placeholder("v", (5,)), a), "matmul", "(5,)", "(3, 4)")
        _shape_error(lambda: df.matmul(df.placeholder("s", ()), a), "matmul", "()", "(3, 4)")
        c, d = df.placeholder("c", (2, 3, 4)), df.placeholder("d", (3, 4, 2))
        _shape_error(lambda: c @ d, "matmul", "(2, 3, 4)", "(3, 4, 2)")


def test_shape_error_reshape_and_broadcast_to() -> None:
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        _shape_error(lambda: df.reshape(x, (5, 2)), "reshape", "(3, 4)", "(5, 2)")
        _shape_error(lambda: df.reshape(x, (5, -1)), "reshape", "(3, 4)")
        _shape_error(lambda: df.reshape(x, (-1, -1)), "reshape")
        _shape_error(lambda: df.broadcast_to(x, (4, 3)), "broadcast_to", "(3, 4)", "(4, 3)")
        _shape_error(lambda: df.broadcast_to(x, (4,)), "broadcast_to", "(3, 4)", "(4,)")


def test_shape_error_concatenate_and_stack() -> None:
    with df.Graph():
        a, v = df.placeholder("a", (3, 4)), df.placeholder("v", (4,))
        _shape_error(lambda: df.concatenate([a, v]), "concatenate", "(3, 4)", "(4,)")
        b = df.placeholder("b", (3, 5))
        _shape_error(lambda: df.concatenate([a, b], axis=0), "concatenate", "(3, 4)", "(3, 5)")
        _shape_error(lambda: df.concatenate([a, b], axis=2), "concatenate", "axis 2")
        _shape_error(lambda: df.stack([a, b]), "stack", "(3, 4)", "(3, 5)")
        _shape_error(lambda: df.stack([a, a], axis=3), "stack", "axis 3")


def test_shape_error_bad_axis() -> None:
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        for name in ["sum", "mean", "max", "min", "logsumexp"]:
            _shape_error(lambda n=name: getattr(df, n)(x, axis=2), name, "axis 2", "rank 2")
            _shape_error(lambda n=name: getattr(df, n)(x, axis=-3), name, "axis -3")
            _shape_error(lambda n=name: getattr(df, n)(x, axis=(0, 0)), name, "repeated")
        for name in ["softmax", "log_softmax"]:
            _shape_error(lambda n=name: getattr(df, n)(x, axis=2), name, "axis 2")
        _shape_error(lambda: df.transpose(x, (0, 2)), "transpose", "(3, 4)")
        _shape_error(lambda: df.transpose(x, (1, 0, 2)), "transpose", "(3, 4)")
        _shape_error(lambda: df.transpose(x, (0, 0)), "transpose", "(3, 4)")
        _shape_error(lambda: df.transpose(x, (2, 0)), "transpose", "(3, 4)")
        _shape_error(lambda: df.transpose(x, (1, -3)), "transpose", "(3, 4)")
        _shape_error(lambda: df.sum(x, axis=1.5), "sum", "axis")


def test_shape_error_getitem_and_softmax_cross_entropy() -> None:
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        _shape_error(lambda: x[1, 2, 3], "getitem", "rank 2")
        _shape_error(lambda: x[3], "getitem", "3")
        _shape_error(lambda: x[:, -5], "getitem", "-5")
        z = df.placeholder("z", (4, 5))
        _shape_error(lambda: df.softmax_cross_entropy(z, np.array([0, 1, 2])),
                     "softmax_cross_entropy", "(3,)", "(4, 5)")
        _shape_error(lambda: df.softmax_cross_entropy(z, np.zeros(4)),
                     "softmax_cross_entropy", "integer")
        _shape_error(lambda: df.softmax_cross_entropy(df.placeholder("w", (5,)), _labels[:1]),
                     "softmax_cross_entropy", "(5,)")


def test_shape_errors_are_raised_before_anything_runs() -> None:
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
        before = len(g)
        with pytest.raises(df.ShapeError):
            x + df.constant(np.ones(4))
        assert len(g) == before + 1  # only the constant, no add node


# -- float32 and integer dtypes ---------------------------------------------------------

FLOAT32_FNS: list[tuple[str, Callable[[df.Node], df.Node]]] = [
    ("2*x", lambda x: 2 * x),
    ("x*2", lambda x: x * 2),
    ("x/3.0", lambda x: x / 3.0),
    ("10.0/x", lambda x: 10.0 / x),
    ("1-x", lambda x: 1 - x),
    ("x+0.5", lambda x: x + 0.5),
    ("x**3", lambda x: x ** 3),
    ("x**2", lambda x: x ** 2),
    ("x**0.5", lambda x: x ** 0.5),
    ("2.0**x", lambda x: 2.0 ** x),
    ("np.float32(2)*x", lambda x: np.float32(2) * x),
    ("exp", df.exp),
    ("log", df.log),
    ("tanh", df.tanh),
    ("sqrt", df.sqrt),
    ("square", df.square),
    ("abs", df.abs),
    ("sin", df.sin),
    ("sigmoid", df.sigmoid),
    ("relu", df.relu),
    ("maximum-0.5", lambda x: df.maximum(x, 0.5)),
    ("where-0.0", lambda x: df.where(x > 1.0, x, 0.0)),
    ("softmax", df.softmax),
    ("log_softmax", df.log_softmax),
    ("logsumexp", lambda x: df.logsumexp(x, axis=0)),
    ("sum", df.sum),
    ("mean", lambda x: df.mean(x, axis=1)),
    ("max", lambda x: df.max(x, axis=0)),
    ("matmul", lambda x: x @ df.transpose(x)),
    ("matmul-const", lambda x: x @ np.ones((4, 2), np.float32)),
    ("getitem", lambda x: x[1:, ::2]),
    ("concatenate", lambda x: df.concatenate([x, x * x])),
    ("stack", lambda x: df.stack([x, x], axis=1)),
    ("reshape", lambda x: df.reshape(x, (-1,))),
    ("broadcast_to", lambda x: df.broadcast_to(x[0], (2, 4))),
    ("sce", lambda x: df.softmax_cross_entropy(x, np.array([0, 3, 1]))),
    ("cast-roundtrip", lambda x: df.cast(df.cast(x, np.float64), np.float32)),
    ("stop_gradient", lambda x: x * df.stop_gradient(x)),
]


@pytest.mark.parametrize("fn", [f[1] for f in FLOAT32_FNS], ids=[f[0] for f in FLOAT32_FNS])
def test_float32_stays_float32_through_forward_and_gradients(fn) -> None:
    a = positive(3, 4).astype(np.float32)
    with df.Graph():
        x = df.placeholder("x", (3, 4), np.float32)
        out = fn(x)
        (g,) = df.gradients(out, [x])
        (gg,) = df.gradients(df.sum(g * g), [x])
    assert out.dtype == np.float32
    assert g.dtype == np.float32 and gg.dtype == np.float32
    value, gv, ggv = run([out, g, gg], {x: a})
    assert value.dtype == np.float32
    assert gv.dtype == np.float32 and ggv.dtype == np.float32
    # and the float32 gradient is the float64 one, rounded
    with df.Graph():
        x64 = df.placeholder("x", (3, 4))
        (g64,) = df.gradients(fn(x64), [x64])
    np.testing.assert_allclose(gv, run(g64, {x64: a.astype(np.float64)}), rtol=2e-5, atol=1e-6)


def test_gradient_has_the_dtype_of_its_input_under_promotion() -> None:
    # float32 x meets a float64 node: the product is float64 (numpy's promotion), but
    # the gradient of x is float32, like x.
    with df.Graph():
        x = df.placeholder("x", (3,), np.float32)
        y = df.placeholder("y", (3,))
        out = df.sum(x * y)
        assert out.dtype == np.float64
        gx, gy = df.gradients(out, [x, y])
    assert gx.dtype == np.float32 and gy.dtype == np.float64
    vx, vy = run([gx, gy], {x: np.arange(3, dtype=np.float32), y: np.ones(3)})
    assert vx.dtype == np.float32 and vy.dtype == np.float64
    np.testing.assert_array_equal(vx, np.ones(3, np.float32))


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_softmax_cross_entropy_with_integer_labels(label_dtype) -> None:
    z = normal(4, 5)
    labels = _labels.astype(label_dtype)
    with df.Graph():
        logits = df.placeholder("z", (None, 5))
        y = df.placeholder("y", (None,), label_dtype)
        loss = df.softmax_cross_entropy(logits, y)
        gz, gy = df.gradients(loss, [logits, y])
    assert loss.shape == () and loss.dtype == np.float64
    assert gy.dtype == label_dtype  # integers are constants to the gradient: zeros
    value, gzv, gyv = run([loss, gz, gy], {logits: z, y: labels})
    np.testing.assert_allclose(value, np_sce(z), rtol=1e-12)
    onehot = np.eye(5)[_labels]
    np.testing.assert_allclose(gzv, (np_softmax(z) - onehot) / 4, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(gyv, np.zeros(4, label_dtype))


def test_softmax_cross_entropy_rejects_out_of_range_labels() -> None:
    with df.Graph():
        z = df.placeholder("z", (2, 3))
        loss = df.softmax_cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="labels must lie in") as info:
        run(loss, {z: np.zeros((2, 3))})
    assert any("one_hot" in note for note in info.value.__notes__)


def test_integer_inputs_work_forward_and_cast_into_float_gradients() -> None:
    with df.Graph():
        i = df.placeholder("i", (3,), np.int32)
        x = df.placeholder("x", (3,))
        out = df.sum(df.cast(i, np.float64) * x + i * 2)
        gx, gi = df.gradients(out, [x, i])
    assert out.dtype == np.float64
    v, gxv, giv = run([out, gx, gi], {i: np.array([1, 2, 3], np.int32), x: np.ones(3)})
    assert v == 18.0
    np.testing.assert_array_equal(gxv, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(giv, [0, 0, 0])


# -- max/min gradients go to the first arg-extremum only -------------------------------

@pytest.mark.parametrize(("name", "pick"), [("max", np.argmax), ("min", np.argmin)])
def test_max_min_gradient_goes_to_the_first_extremum_only(name, pick) -> None:
    a = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 2.0, 0.0, 2.0], [-1.0, -1.0, -1.0, -1.0]])
    if name == "min":
        a = -a
    fn = getattr(df, name)
    with df.Graph():
        x = df.placeholder("x", a.shape)
        rows = fn(x, axis=1)
        cols = fn(x, axis=0, keepdims=True)
        whole = fn(x)
        grads = [df.grad(df.sum(r), x) for r in (rows, cols, whole)]
    g_rows, g_cols, g_whole = run(grads, {x: a})
    expected_rows = np.zeros_like(a)
    expected_rows[np.arange(3), pick(a, axis=1)] = 1
    expected_cols = np.zeros_like(a)
    expected_cols[pick(a, axis=0), np.arange(4)] = 1
    expected_whole = np.zeros(a.size)
    expected_whole[pick(a)] = 1
    np.testing.assert_array_equal(g_rows, expected_rows)
    np.testing.assert_array_equal(g_cols, expected_cols)
    np.testing.assert_array_equal(g_whole, expected_whole.reshape(a.shape))
    assert g_rows.sum() == 3 and g_cols.sum() == 4 and g_whole.sum() == 1


def test_max_gradient_over_a_tuple_of_axes_picks_one_element_per_slice() -> None:
    a = np.ones((2, 3, 2))  # all tied: the first in C order of the reduced axes wins
    with df.Graph():
        x = df.placeholder("x", a.shape)
        (g,) = df.gradients(df.sum(df.max(x, axis=(0, 2))), [x])
    expected = np.zeros_like(a)
    expected[0, :, 0] = 1
    np.testing.assert_array_equal(run(g, {x: a}), expected)


def test_maximum_of_a_node_with_itself_passes_the_gradient_once() -> None:
    with df.Graph():
        x = df.placeholder("x", (3,))
        gmax, gmin = df.grad(df.sum(df.maximum(x, x)), x), df.grad(df.sum(df.minimum(x, x)), x)
        grelu = df.grad(df.sum(df.relu(x)), x)
    v1, v2, v3 = run([gmax, gmin, grelu], {x: np.array([-1.0, 0.0, 2.0])})
    np.testing.assert_array_equal(v1, np.ones(3))
    np.testing.assert_array_equal(v2, np.ones(3))
    np.testing.assert_array_equal(v3, [0.0, 0.0, 1.0])


# -- indexing: basic only --------------------------------------------------------------

@pytest.mark.parametrize("index", [
    [0, 1],
    np.array([0, 1]),
    np.array([True, False, True]),
    (slice(None), [0, 2]),
    True,
    1.5,
    "a",
], ids=["list", "int-array", "bool-array", "list-in-tuple", "bool", "float", "str"])
def test_advanced_indexing_raises_a_clear_type_error(index) -> None:
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        with pytest.raises(TypeError, match="basic indexing"):
            x[index]


def test_indexing_with_a_node_raises_a_clear_type_error() -> None:
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        i = df.placeholder("i", (), np.int64)
        with pytest.raises(TypeError, match="basic indexing"):
            x[i]
        with pytest.raises(TypeError, match="basic indexing"):
            x[x > 0]


def test_numpy_integer_indices_are_basic() -> None:
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        out = x[np.int64(1), np.int32(-1)]
    a = normal(3, 4)
    assert run(out, {x: a}) == a[1, -1]


# -- user-defined ops ------------------------------------------------------------------

def _cube_bprop(inputs, output, grad):
    (x,) = inputs
    return (grad * 3.0 * df.square(x),)


cube = df.custom_op("test_ops.cube", lambda x: x * x * x, bprop=_cube_bprop)
no_grad_op = df.custom_op("test_ops.no_grad", lambda x: np.sort(x, axis=-1))
row_norm = df.custom_op(
    "test_ops.row_norm",
    lambda x: np.sqrt(np.sum(x * x, axis=-1)),
    shape_rule=lambda x: (x.shape[:-1], x.dtype),
    bprop=lambda inputs, output, grad: (
        df.expand_dims(grad / output, -1) * inputs[0],),
)
scaled_sum = df.custom_op("test_ops.scaled_sum", lambda a, b: a + 2 * b,
                          bprop=lambda inputs, output, grad: (
                              df.sum_to(grad, inputs[0]), df.sum_to(grad * 2.0, inputs[1])))


def test_custom_op_with_bprop_forward_and_gradients() -> None:
    a = normal(3, 4)
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        y = cube(x)
        (g,) = df.gradients(df.sum(y), [x])
    assert y.op.name == "test_ops.cube" and y.shape == (3, 4) and y.dtype == np.float64
    value, gv = run([y, g], {x: a})
    np.testing.assert_allclose(value, a ** 3, rtol=1e-14)
    np.testing.assert_allclose(gv, 3 * a ** 2, rtol=1e-14)
    df.check_grads(cube, [a], order=2)


def test_custom_op_with_a_shape_rule() -> None:
    a = normal(3, 4)
    with df.Graph():
        x = df.placeholder("x", (None, 4))
        y = row_norm(x)
    assert y.shape == (None,) and y.dtype == np.float64
    np.testing.assert_allclose(run(y, {x: a}), np.linalg.norm(a, axis=-1), rtol=1e-14)
    df.check_grads(row_norm, [a], order=2)


def test_custom_op_default_shape_rule_is_elementwise_broadcasting() -> None:
    with df.Graph():
        a = df.placeholder("a", (3, 1), np.float32)
        b = df.placeholder("b", (4,), np.float32)
        y = scaled_sum(a, b)
        assert y.shape == (3, 4) and y.dtype == np.float32
        with pytest.raises(df.ShapeError, match="test_ops.scaled_sum"):
            scaled_sum(b, df.placeholder("c", (2,), np.float32))
    df.check_grads(scaled_sum, [normal(3, 1), normal(4)], order=2)


def test_custom_op_without_bprop() -> None:
    a = normal(3, 4)
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        y = no_grad_op(x)
        assert not y.op.has_bprop
        np.testing.assert_array_equal(run(y, {x: a}), np.sort(a, axis=-1))
        with pytest.raises(df.GradientError, match="test_ops.no_grad"):
            df.gradients(df.sum(y), [x])
        # fine when no gradient has to pass through it
        (g,) = df.gradients(df.sum(no_grad_op(df.stop_gradient(x)) * x), [x])
        np.testing.assert_array_equal(run(g, {x: a}), np.sort(a, axis=-1))
        # or when it is in the graph but off the path from x to y
        side = no_grad_op(x)
        (g2,) = df.gradients(df.sum(x * 2.0), [x])
        assert side not in df.get_inputs(g2)
        np.testing.assert_array_equal(run(g2, {x: a}), np.full((3, 4), 2.0))


def test_custom_op_needs_a_name() -> None:
    with pytest.raises(ValueError):
        df.custom_op("", np.negative)


class Cube(df.Op):
    """The example of ``dataflow.op``'s docstring."""

    name = "test_ops.cube_subclass"

    def forward(self, x):
        return x * x * x

    def infer(self, x):
        return x.shape, x.dtype

    def bprop(self, inputs, output, grad, wanted):
        (x,) = inputs
        return (grad * 3.0 * df.square(x),)


class Scale(df.Op):
    """An op with an attribute."""

    name = "test_ops.scale"
    attr_names = ("factor",)

    def forward(self, x):
        return x * self.factor

    def infer(self, x):
        return x.shape, x.dtype

    def bprop(self, inputs, output, grad, wanted):
        return (grad * self.factor,) if wanted[0] else (None,)


class NoBprop(df.Op):
    name = "test_ops.no_bprop_subclass"

    def forward(self, x):
        return np.round(x)


def test_subclassing_op_as_documented() -> None:
    def cube_fn(x):
        return df.apply(Cube(), x)

    a = normal(3, 4)
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        y = cube_fn(x)
        (g,) = df.gradients(df.sum(y), [x])
    assert df.REGISTRY["test_ops.cube_subclass"] is Cube
    assert not Cube.builtin and Cube().has_bprop
    value, gv = run([y, g], {x: a})
    np.testing.assert_allclose(value, a ** 3, rtol=1e-14)
    np.testing.assert_allclose(gv, 3 * a ** 2, rtol=1e-14)
    df.check_grads(cube_fn, [a], order=2)


def test_op_with_attributes() -> None:
    op = Scale(factor=2.5)
    assert op.attrs() == {"factor": 2.5}
    assert op.key() == Scale(factor=2.5).key() != Scale(factor=3.0).key()
    with pytest.raises(AttributeError):
        op.factor = 3.0
    with pytest.raises(TypeError, match="factor"):
        Scale()
    with pytest.raises(TypeError, match="bogus"):
        Scale(factor=1.0, bogus=2)
    a = normal(4)
    with df.Graph():
        x = df.placeholder("x", (4,))
        y = df.apply(op, x)
    np.testing.assert_array_equal(run(y, {x: a}), a * 2.5)
    df.check_grads(lambda x: df.apply(Scale(factor=-1.5), x), [a], order=2)


def test_subclass_with_default_infer_and_no_bprop() -> None:
    a = normal(3, 4) * 3
    with df.Graph():
        x = df.placeholder("x", (3, 1))
        y = df.placeholder("y", (4,))
        out = df.apply(NoBprop(), x * y)  # default infer: elementwise
        assert out.shape == (3, 4)
        with pytest.raises(df.GradientError, match="test_ops.no_bprop_subclass"):
            df.gradients(out, [x])
    xa, ya = a[:, :1], a[0]
    np.testing.assert_array_equal(run(out, {x: xa, y: ya}), np.round(xa * ya))


def test_op_names_are_unique_in_the_registry() -> None:
    with pytest.raises(df.GraphError, match=re.escape("'add'")):
        type("MyAdd", (df.Op,), {"name": "add", "__module__": __name__})


def test_view_ops_take_what_a_user_op_returns() -> None:
    # A user op may return a plain list, and built-in ops that pass values through
    # (stop_gradient, after) or a fed intermediate node hand it on as it is.
    as_list = df.custom_op("as_list", lambda x: x.tolist(),
                           shape_rule=lambda x: (x.shape, x.dtype))
    with df.Graph():
        x = df.placeholder("x", (2, 3))
        listed = as_list(x)
        passed = df.stop_gradient(listed)
        ordered = df.after(listed, x)
        doubled = x * 2.0
        outs = [df.transpose(listed), df.reshape(listed, (3, 2)), df.transpose(passed),
                df.reshape(passed, (3, 2)), df.transpose(doubled), df.transpose(x),
                df.transpose(ordered)]
    from dataflow.lowering import task_spec

    # After numpy-valued ops the C-level kernel runs; after the others, forward.
    assert task_spec(outs[5]).kernel != outs[5].op.forward
    assert all(task_spec(outs[i]).kernel == outs[i].op.forward for i in (0, 1, 2, 3, 6))
    value = np.arange(6.0).reshape(2, 3)
    for kind in ("inline", "threads"):
        with scheduler.Engine(kind, simplify=False) as engine:
            got = engine.run(outs, {x: value, doubled: (2 * value).tolist()})
        expected = [value.T, value.reshape(3, 2), value.T, value.reshape(3, 2),
                    (2 * value).T, value.T, value.T]
        for a, b in zip(got, expected, strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32])
def test_mean_gives_the_bits_of_np_mean(dtype) -> None:
    from dataflow.ops.reductions import Mean

    x = (np.random.default_rng(0).standard_normal((3, 4, 5)) * 100).astype(dtype)
    for axis in (None, 0, 1, 2, (0, 2), (0, 1, 2)):
        for keepdims in (False, True):
            got = Mean(axis=axis, keepdims=keepdims).forward(x)
            expected = np.mean(x, axis=axis, keepdims=keepdims)
            assert type(got) is type(expected) and np.shape(got) == np.shape(expected)
            assert np.asarray(got).dtype == np.asarray(expected).dtype
            assert same_bits(got, expected)


def test_one_hot_of_integer_and_float_labels() -> None:
    from dataflow.ops.nn import OneHot

    for labels in ([0, 3, 1, 2], [[1, 0], [2, 2]], np.zeros(0, np.int64), [1.0, 2.0]):
        for dtype in (np.float32, np.float64, np.bool_):
            got = OneHot(depth=4, dtype=np.dtype(dtype)).forward(labels)
            expected = (np.asarray(labels)[..., None] == np.arange(4)).astype(dtype)
            assert got.dtype == expected.dtype and same_bits(got, expected)
