"""One table of cases that every public op passes through ``df.check_grads`` (the
idea of JAX's ``LAX_GRAD_OPS``): first and second order, in float64, against central
differences.

Each case is ``(id, fn, args)``: ``fn`` builds a node from one placeholder per array in
``args``. Inputs are chosen away from kinks and ties (``abs``, ``relu``, ``max``,
``maximum`` see well separated values, ``log``/``sqrt`` positive ones) so that the
finite differences are meaningful. A few cases are larger than ``check_grads``'
``full_limit`` so that its random-direction path runs too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import dataflow as df

_rng = np.random.default_rng(20240601)


# -- inputs ----------------------------------------------------------------------------

def normal(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape)


def positive(*shape: int) -> np.ndarray:
    """Values in [0.5, 2]: safe for log, sqrt and non-integer powers."""
    return _rng.uniform(0.5, 2.0, shape)


def nonzero(*shape: int) -> np.ndarray:
    """Values with magnitude in [0.5, 2] and random sign: safe as a divisor."""
    return _rng.uniform(0.5, 2.0, shape) * _rng.choice([-1.0, 1.0], shape)


def separated(*shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Arrays whose entries, all taken together, are pairwise at least 0.1 apart and at
    least 0.2 away from zero: no ties for max/min/maximum, no kink for abs/relu."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    magnitudes = 0.2 + 0.1 * _rng.permutation(sum(sizes))
    values = magnitudes * _rng.choice([-1.0, 1.0], magnitudes.shape)
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(values[start:start + size].reshape(shape))
        start += size
    return out


def sep(*shape: int) -> np.ndarray:
    return separated(shape)[0]


CASES: list[Any] = []


def case(case_id: str, fn: Callable[..., df.Node], *args: np.ndarray) -> None:
    CASES.append(pytest.param(fn, args, id=case_id))


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


# -- elementwise binary ops, with every broadcasting pattern ---------------------------

BROADCASTS = [
    ((3, 4), (3, 4)),
    ((3, 1), (1, 4)),
    ((4,), (3, 4)),
    ((3, 4), (4,)),
    ((), (3, 4)),
    ((3, 4), ()),
]

BINARY: list[tuple[str, Callable[..., df.Node], Callable[[tuple, tuple], list]]] = [
    ("add", df.add, lambda a, b: [normal(*a), normal(*b)]),
    ("subtract", df.subtract, lambda a, b: [normal(*a), normal(*b)]),
    ("multiply", df.multiply, lambda a, b: [normal(*a), normal(*b)]),
    ("divide", df.divide, lambda a, b: [normal(*a), nonzero(*b)]),
    ("power", df.power, lambda a, b: [positive(*a), normal(*b)]),  # node exponent
    ("maximum", df.maximum, lambda a, b: separated(a, b)),
    ("minimum", df.minimum, lambda a, b: separated(a, b)),
]

for _name, _fn, _make in BINARY:
    for _a, _b in BROADCASTS:
        case(f"{_name}-{shape_id(_a)}-{shape_id(_b)}", _fn, *_make(_a, _b))

# -- operator forms, Python scalars on either side -------------------------------------

case("op-x+y", lambda x, y: x + y, normal(3, 4), normal(4))
case("op-x-y", lambda x, y: x - y, normal(3, 1), normal(1, 4))
case("op-x*y", lambda x, y: x * y, normal(3, 4), normal(3, 4))
case("op-x/y", lambda x, y: x / y, normal(3, 4), nonzero(4))
case("op-x**y", lambda x, y: x ** y, positive(3, 4), normal(3, 4))
case("op-2*x", lambda x: 2 * x, normal(3, 4))
case("op-x*2", lambda x: x * 2, normal(3, 4))
case("op-1+x", lambda x: 1 + x, normal(3, 4))
case("op-x+1", lambda x: x + 1, normal(3, 4))
case("op-1-x", lambda x: 1 - x, normal(3, 4))
case("op-x-1", lambda x: x - 1, normal(3, 4))
case("op-10.0/x", lambda x: 10.0 / x, nonzero(3, 4))
case("op-x/3.0", lambda x: x / 3.0, normal(3, 4))
case("op-x**3", lambda x: x ** 3, normal(3, 4))
case("op-x**2", lambda x: x ** 2, normal(3, 4))
case("op-x**1", lambda x: x ** 1, normal(3, 4))
case("op-x**0.5", lambda x: x ** 0.5, positive(3, 4))
case("op-x**-1", lambda x: x ** -1, nonzero(3, 4))
case("op-x**-2.5", lambda x: x ** -2.5, positive(3, 4))
case("op-2.0**x", lambda x: 2.0 ** x, normal(3, 4))
case("op--x", lambda x: -x, normal(3, 4))
case("op-abs(x)", lambda x: abs(x), sep(3, 4))
case("op-x@y", lambda x, y: x @ y, normal(3, 4), normal(4, 2))
case("op-x[1:4,::2]", lambda x: x[1:4, ::2], normal(5, 6))
case("op-x.T", lambda x: x.T, normal(3, 4))
case("op-x.sum(axis=1)", lambda x: x.sum(axis=1), normal(3, 4))
case("op-x.mean()", lambda x: x.mean(), normal(3, 4))
case("op-x.reshape(4,3)", lambda x: x.reshape(4, 3), normal(3, 4))

# -- power with a scalar exponent ------------------------------------------------------

case("power-scalar-3", lambda x: df.power(x, 3), normal(3, 4))
case("power-scalar-2", lambda x: df.power(x, 2.0), normal(3, 4))
case("power-scalar-2.5", lambda x: df.power(x, 2.5), positive(3, 4))
case("power-scalar-base", lambda p: df.power(3.0, p), normal(3, 4))
case("power-array-exponent", lambda x: df.power(x, np.array([1.0, 2.0, 3.0, 0.5])),
     positive(3, 4))

# -- matmul ----------------------------------------------------------------------------

case("matmul-2d@2d", df.matmul, normal(3, 4), normal(4, 2))
case("matmul-1d@2d", df.matmul, normal(4), normal(4, 2))
case("matmul-2d@1d", df.matmul, normal(3, 4), normal(4))
case("matmul-1d@1d", df.matmul, normal(4), normal(4))
case("matmul-batched-broadcast", df.matmul, normal(2, 1, 3, 4), normal(5, 4, 2))
case("matmul-batched@2d", df.matmul, normal(2, 3, 4), normal(4, 2))
case("matmul-2d@batched", df.matmul, normal(3, 4), normal(2, 4, 2))
case("matmul-1d@batched", df.matmul, normal(4), normal(2, 4, 3))
case("matmul-batched@1d", df.matmul, normal(2, 3, 4), normal(4))
case("matmul-x@x.T", lambda x: x @ df.transpose(x), normal(3, 4))

# -- unary math ------------------------------------------------------------------------

UNARY: list[tuple[str, Callable[..., df.Node], Callable[..., np.ndarray]]] = [
    ("negative", df.negative, normal),
    ("exp", df.exp, normal),
    ("log", df.log, positive),
    ("sin", df.sin, normal),
    ("cos", df.cos, normal),
    ("tanh", df.tanh, normal),
    ("sqrt", df.sqrt, positive),
    ("square", df.square, normal),
    ("abs", df.abs, sep),
    ("sigmoid", df.sigmoid, normal),
    ("relu", df.relu, sep),
]
for _name, _fn, _make in UNARY:
    case(f"{_name}", _fn, _make(3, 4))
    case(f"{_name}-scalar", _fn, _make())

# -- where -----------------------------------------------------------------------------

_cond = np.array([[True, False, True, True], [False, False, True, False],
                  [True, True, False, True]])
case("where", lambda x, y: df.where(_cond, x, y), normal(3, 4), normal(3, 4))
case("where-broadcast", lambda x, y: df.where(_cond, x, y), normal(3, 1), normal(4))
case("where-scalar-branch", lambda x: df.where(_cond, x, 0.0), normal(3, 4))
case("where-scalar-first", lambda y: df.where(_cond, 2.0, y), normal(3, 4))
case("where-computed-cond", lambda x: df.where(x > 0, x, 2.0 * x), sep(3, 4))
case("where-scalar-cond", lambda x, y: df.where(np.array(False), x, y), normal(4), normal(3, 4))

# -- reductions ------------------------------------------------------------------------

AXES = [None, 0, 1, -1, (0, 2), (-1, 0)]
for _name, _fn in [("sum", df.sum), ("mean", df.mean), ("max", df.max), ("min", df.min)]:
    for _axis in AXES:
        for _keep in (False, True):
            case(f"{_name}-axis={_axis}-keepdims={_keep}".replace(" ", ""),
                 lambda x, _f=_fn, _ax=_axis, _k=_keep: _f(x, axis=_ax, keepdims=_k),
                 sep(2, 3, 4))
    case(f"{_name}-1d", _fn, sep(5))
    case(f"{_name}-axis=()", lambda x, _f=_fn: _f(x, axis=()), sep(2, 3))

# -- shape ops -------------------------------------------------------------------------

case("reshape-3x4-to-4x3", lambda x: df.reshape(x, (4, 3)), normal(3, 4))
case("reshape-to-2x-1", lambda x: df.reshape(x, (2, -1)), normal(3, 4))
case("reshape-to-flat-1", lambda x: df.reshape(x, -1), normal(3, 4))
case("reshape-3d-to-6x-1", lambda x: df.reshape(x, (6, -1)), normal(2, 3, 4))
case("reshape-to-12x1x1", lambda x: df.reshape(x, (12, 1, 1)), normal(3, 4))
case("reshape-to-scalar", lambda x: df.reshape(x, ()), normal(1, 1))
case("transpose-default", df.transpose, normal(2, 3, 4))
case("transpose-1,0,2", lambda x: df.transpose(x, (1, 0, 2)), normal(2, 3, 4))
case("transpose-2,0,1", lambda x: df.transpose(x, (2, 0, 1)), normal(2, 3, 4))
case("transpose-negative-axes", lambda x: df.transpose(x, (-1, 0, -2)), normal(2, 3, 4))
case("broadcast_to-3x1-to-2x3x4", lambda x: df.broadcast_to(x, (2, 3, 4)), normal(3, 1))
case("broadcast_to-4-to-3x4", lambda x: df.broadcast_to(x, (3, 4)), normal(4))
case("broadcast_to-scalar-to-2x3", lambda x: df.broadcast_to(x, (2, 3)), normal())
case("broadcast_to-1x4-to-3x4", lambda x: df.broadcast_to(x, (3, 4)), normal(1, 4))
case("concatenate-axis0", lambda a, b: df.concatenate([a, b]), normal(2, 3), normal(4, 3))
case("concatenate-axis1-three", lambda a, b, c: df.concatenate([a, b, c], axis=1),
     normal(3, 2), normal(3, 1), normal(3, 4))
case("concatenate-axis-1", lambda a, b: df.concatenate([a, b], axis=-1),
     normal(2, 2, 3), normal(2, 2, 1))
case("concatenate-same-input", lambda a: df.concatenate([a, a * 2.0], axis=0), normal(2, 3))
case("stack-axis0", lambda a, b, c: df.stack([a, b, c]), normal(2, 3), normal(2, 3),
     normal(2, 3))
case("stack-axis1", lambda a, b: df.stack([a, b], axis=1), normal(2, 3), normal(2, 3))
case("stack-axis-1", lambda a, b: df.stack([a, b], axis=-1), normal(2, 3), normal(2, 3))
case("getitem-[1:4,::2]", lambda x: df.getitem(x, (slice(1, 4), slice(None, None, 2))),
     normal(5, 6))
case("getitem-[-1]", lambda x: x[-1], normal(3, 4))
case("getitem-[:,None]", lambda x: x[:, None], normal(3, 4))
case("getitem-[...,0]", lambda x: x[..., 0], normal(2, 3, 4))
case("getitem-[1]", lambda x: x[1], normal(3, 4))
case("getitem-[::-1]", lambda x: x[::-1], normal(3, 4))
case("getitem-[None,1:,-2]", lambda x: x[None, 1:, -2], normal(3, 4))
case("getitem-[2:0:-1,...,None]", lambda x: x[2:0:-1, ..., None], normal(3, 4))
case("getitem-scalar-out", lambda x: x[1, 2], normal(3, 4))

# -- neural-network ops ----------------------------------------------------------------

case("softmax-axis-1", lambda x: df.softmax(x), normal(3, 4))
case("softmax-axis0", lambda x: df.softmax(x, axis=0), normal(3, 4))
case("softmax-1d", df.softmax, normal(5))
case("log_softmax-axis-1", lambda x: df.log_softmax(x), normal(3, 4))
case("log_softmax-axis0", lambda x: df.log_softmax(x, axis=0), normal(3, 4))
for _axis in [None, 0, -1, (0, 2)]:
    for _keep in (False, True):
        case(f"logsumexp-axis={_axis}-keepdims={_keep}".replace(" ", ""),
             lambda x, _ax=_axis, _k=_keep: df.logsumexp(x, axis=_ax, keepdims=_k),
             normal(2, 3, 4))
_labels = np.array([0, 3, 1, 4])
case("softmax_cross_entropy", lambda z: df.softmax_cross_entropy(z, _labels), normal(4, 5))
case("softmax_cross_entropy-int32-labels",
     lambda z: df.softmax_cross_entropy(z, df.constant(_labels.astype(np.int32))), normal(4, 5))

# -- plumbing: cast, stop_gradient -----------------------------------------------------

# Casting float64 -> float32 would lose the precision the check needs, so the cast
# round trip goes through a wider float (longdouble; equal to float64 on some
# platforms, where the cast is the identity).
case("cast-roundtrip", lambda x: df.cast(df.cast(x, np.longdouble) * 2.0, np.float64),
     normal(3, 4))
case("cast-same-dtype", lambda x: df.cast(x, np.float64) * 3.0, normal(3, 4))
# stop_gradient where it does not change the derivative: the shift of a logsumexp
# cancels, so the symbolic gradient without it must still match finite differences.
case("stop_gradient-logsumexp-shift",
     lambda x: (lambda m: df.log(df.sum(df.exp(x - m))) + m)(df.stop_gradient(df.max(x))),
     sep(3, 4))
case("stop_gradient-plus-zero", lambda x: x * x + df.stop_gradient(x) * 0.0, normal(3, 4))

# -- composites: shared subexpressions, gradients summed over paths --------------------

case("composite-mlp", lambda x, w, b: df.tanh(x @ w + b), normal(3, 4), normal(4, 2),
     normal(2))
case("composite-diamond", lambda x: (lambda y: y + y * df.sin(y))(x * x), normal(3, 4))
case("composite-normalize", lambda x: x / df.sqrt(df.sum(x * x, axis=-1, keepdims=True)),
     normal(3, 4))

# -- linear ops under a nonlinearity: their gradient depends on x, so the second-order
# check differentiates the adjoint ops (sum_to, scatter, broadcast, ...) in turn ------

LINEAR: list[tuple[str, Callable[[df.Node], df.Node], tuple[int, ...]]] = [
    ("sum-axis1", lambda x: df.sum(x, axis=1), (3, 4)),
    ("mean-keepdims", lambda x: df.mean(x, axis=0, keepdims=True), (3, 4)),
    ("reshape", lambda x: df.reshape(x, (2, -1)), (3, 4)),
    ("transpose", lambda x: df.transpose(x, (1, 2, 0)), (2, 3, 4)),
    ("broadcast_to", lambda x: df.broadcast_to(x, (2, 3, 4)), (3, 1)),
    ("getitem", lambda x: x[1:, None, ::-2], (3, 4)),
    ("getitem-int", lambda x: x[..., -1], (2, 3, 4)),
    ("concatenate", lambda x: df.concatenate([x, x[:1]], axis=0), (3, 4)),
    ("stack", lambda x: df.stack([x, -x], axis=1), (3, 4)),
    ("add-broadcast", lambda x: x + np.ones((2, 1, 1)), (3, 4)),
]
for _name, _fn, _shape in LINEAR:
    case(f"sin-of-{_name}", lambda x, _f=_fn: df.sin(_f(x)), normal(*_shape))

# -- large enough for check_grads' random-direction path (size > full_limit) ------------

case("large-tanh(x@w)", lambda x, w: df.tanh(x @ w), normal(10, 8), normal(8, 12))
case("large-softmax_cross_entropy",
     lambda z: df.softmax_cross_entropy(z, np.arange(20) % 10), normal(20, 10))
case("large-sum-of-squares", lambda x: df.sum(df.square(x) * df.sin(x)), normal(100))
case("large-max-axis0", lambda x: df.max(x, axis=0), sep(10, 9))


@pytest.mark.parametrize(("fn", "args"), CASES)
def test_check_grads(fn: Callable[..., df.Node], args: tuple[np.ndarray, ...]) -> None:
    df.check_grads(fn, args, order=2)


def test_table_covers_the_contract() -> None:
    """Every public op of the contract appears in the table (by the op it builds)."""
    contract = {
        "add", "subtract", "multiply", "divide", "negative", "power", "matmul", "exp",
        "log", "sin", "cos", "tanh", "sqrt", "square", "abs", "maximum", "minimum", "where",
        "sum", "mean", "max", "min", "reshape", "transpose", "broadcast_to", "concatenate",
        "stack", "getitem", "sigmoid", "relu", "softmax", "log_softmax", "logsumexp",
        "cast", "stop_gradient",
    }
    seen: set[str] = set()
    for param in CASES:
        fn, args = param.values
        with df.Graph():
            xs = [df.placeholder(f"a{i}", np.shape(a)) for i, a in enumerate(args)]
            out = fn(*xs)
        seen.update(node.op.name for node in out.graph.nodes)
    missing = contract - seen
    # softmax_cross_entropy is a composite of log_softmax, one_hot, sum and mean.
    assert "one_hot" in seen
    assert not missing, f"ops missing from the gradient table: {sorted(missing)}"
    ids = [param.id for param in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
