"""Elementwise ops with numpy semantics (broadcasting and dtype promotion included).

Each op hands the engine the numpy ufunc itself as its kernel. Gradients are summed
back to each input's shape with ``sum_to`` (the adjoint of broadcasting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..graph import Node
from ..op import Op, apply, elementwise_infer
from .core import const_value, constant
from .shape_ops import sum_to


class Elementwise(Op):
    """An op computed by one numpy ufunc; subclasses set ``ufunc`` and ``bprop``."""

    ufunc: Any = None
    returns_numpy = True

    def infer(self, *inputs):
        # The dtype numpy's ufunc gives (sin of an int is a float), found by probing.
        return elementwise_infer(self, inputs)

    def kernel(self):
        return self.ufunc

    def forward(self, *values):
        return self.ufunc(*values)


class NonDifferentiable(Elementwise):
    """Comparisons and friends: piecewise constant, so a constant to the gradient."""

    stops_gradient = True

    def bprop(self, inputs, output, grad, wanted):
        return (None,) * len(inputs)


def _define(name: str, ufunc: Any, base: type = Elementwise) -> type:
    return type(name.title().replace("_", ""), (base,), {"name": name, "ufunc": ufunc,
                                                          "__module__": __name__})


# -- arithmetic ----------------------------------------------------------------------

class Add(Elementwise):
    name, ufunc = "add", np.add

    def bprop(self, inputs, output, grad, wanted):
        x, y = inputs
        return (sum_to(grad, x) if wanted[0] else None, sum_to(grad, y) if wanted[1] else None)


class Subtract(Elementwise):
    name, ufunc = "subtract", np.subtract

    def bprop(self, inputs, output, grad, wanted):
        x, y = inputs
        return (sum_to(grad, x) if wanted[0] else None,
                sum_to(negative(grad), y) if wanted[1] else None)


class Multiply(Elementwise):
    name, ufunc = "multiply", np.multiply

    def bprop(self, inputs, output, grad, wanted):
        x, y = inputs
        return (sum_to(grad * y, x) if wanted[0] else None,
                sum_to(grad * x, y) if wanted[1] else None)


class Divide(Elementwise):
    name, ufunc = "divide", np.true_divide

    def bprop(self, inputs, output, grad, wanted):
        x, y = inputs
        gx = sum_to(grad / y, x) if wanted[0] else None
        gy = sum_to(negative(grad * output) / y, y) if wanted[1] else None
        return gx, gy


class Negative(Elementwise):
    name, ufunc = "negative", np.negative

    def bprop(self, inputs, output, grad, wanted):
        return (negative(grad),)


class Power(Elementwise):
    name, ufunc = "power", np.power

    def bprop(self, inputs, output, grad, wanted):
        x, p = inputs
        gx = gp = None
        if wanted[0]:
            pv = const_value(p)
            if pv is not None:
                # d/dx x**c = c * x**(c-1); fold the constant exponent at build time.
                if np.all(pv == 2):
                    slope = x * constant(np.asarray(2, x.dtype), graph=x.graph)
                elif np.all(pv == 1):
                    slope = None
                else:
                    slope = power(x, constant(pv - 1, graph=x.graph)) * p
            else:
                slope = power(x, p - 1) * p
            gx = sum_to(grad if slope is None else grad * slope, x)
        if wanted[1]:
            gp = sum_to(grad * output * log(x), p)
        return gx, gp


class Maximum(Elementwise):
    name, ufunc = "maximum", np.maximum

    def bprop(self, inputs, output, grad, wanted):
        x, y = inputs
        pick_x = greater_equal(x, y)  # ties go to the first operand
        return _route(pick_x, grad, x, y, wanted)


class Minimum(Elementwise):
    name, ufunc = "minimum", np.minimum

    def bprop(self, inputs, output, grad, wanted):
        x, y = inputs
        return _route(less_equal(x, y), grad, x, y, wanted)


def _route(pick_x: Node, grad: Node, x: Node, y: Node, wanted: Sequence[bool]) -> tuple:
    zero = constant(np.zeros((), grad.dtype), graph=grad.graph)
    gx = sum_to(where(pick_x, grad, zero), x) if wanted[0] else None
    gy = sum_to(where(pick_x, zero, grad), y) if wanted[1] else None
    return gx, gy


# -- unary math ----------------------------------------------------------------------

class Exp(Elementwise):
    name, ufunc = "exp", np.exp

    def bprop(self, inputs, output, grad, wanted):
        return (grad * output,)


class Log(Elementwise):
    name, ufunc = "log", np.log

    def bprop(self, inputs, output, grad, wanted):
        return (grad / inputs[0],)


class Sin(Elementwise):
    name, ufunc = "sin", np.sin

    def bprop(self, inputs, output, grad, wanted):
        return (grad * cos(inputs[0]),)


class Cos(Elementwise):
    name, ufunc = "cos", np.cos

    def bprop(self, inputs, output, grad, wanted):
        return (negative(grad * sin(inputs[0])),)


class Tanh(Elementwise):
    name, ufunc = "tanh", np.tanh

    def bprop(self, inputs, output, grad, wanted):
        one = constant(np.ones((), output.dtype), graph=output.graph)
        return (grad * (one - square(output)),)


class Sqrt(Elementwise):
    name, ufunc = "sqrt", np.sqrt

    def bprop(self, inputs, output, grad, wanted):
        half = constant(np.asarray(0.5, output.dtype), graph=output.graph)
        return (grad * half / output,)


class Square(Elementwise):
    name, ufunc = "square", np.square

    def bprop(self, inputs, output, grad, wanted):
        two = constant(np.asarray(2, inputs[0].dtype), graph=grad.graph)
        return (grad * (inputs[0] * two),)


class Abs(Elementwise):
    name, ufunc = "abs", np.abs

    def bprop(self, inputs, output, grad, wanted):
        return (grad * sign(inputs[0]),)


Sign = _define("sign", np.sign, NonDifferentiable)
Greater = _define("greater", np.greater, NonDifferentiable)
GreaterEqual = _define("greater_equal", np.greater_equal, NonDifferentiable)
Less = _define("less", np.less, NonDifferentiable)
LessEqual = _define("less_equal", np.less_equal, NonDifferentiable)
Equal = _define("equal", np.equal, NonDifferentiable)
NotEqual = _define("not_equal", np.not_equal, NonDifferentiable)


class Where(Elementwise):
    name, ufunc = "where", staticmethod(np.where)

    def infer(self, cond, x, y):
        from ..shapes import broadcast

        shape = broadcast(self.name, cond.shape, x.shape, y.shape)
        return shape, np.result_type(x.dtype, y.dtype)

    def bprop(self, inputs, output, grad, wanted):
        cond, x, y = inputs
        zero = constant(np.zeros((), grad.dtype), graph=grad.graph)
        gx = sum_to(where(cond, grad, zero), x) if wanted[1] else None
        gy = sum_to(where(cond, zero, grad), y) if wanted[2] else None
        return None, gx, gy


# -- public functions ----------------------------------------------------------------
#
# Every function takes nodes or values (a non-node operand becomes a constant; a Python
# scalar takes the dtype of the node next to it, so ``2 * x`` keeps a float32 ``x`` in
# float32), broadcasts them as numpy does, and gives the dtype numpy's ufunc gives.

def add(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise sum ``x + y`` (``np.add``).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique (``add_1``).

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, in the dtype numpy promotes them to.

    Notes
    -----
    Gradient: ``grad`` for both operands, each summed back to its own shape over the
    axes it was broadcast along.
    """
    return apply(Add(), x, y, name=name)


def subtract(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise difference ``x - y`` (``np.subtract``).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, in the dtype numpy promotes them to.

    Notes
    -----
    Gradient: ``grad`` for ``x`` and ``-grad`` for ``y``, each summed back to its
    operand's shape.
    """
    return apply(Subtract(), x, y, name=name)


def multiply(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise product ``x * y`` (``np.multiply``).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, in the dtype numpy promotes them to.

    Notes
    -----
    Gradient: ``grad * y`` for ``x`` and ``grad * x`` for ``y``, each summed back to
    its operand's shape.
    """
    return apply(Multiply(), x, y, name=name)


def divide(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise true division ``x / y`` (``np.true_divide``).

    Parameters
    ----------
    x, y : Node or array_like
        Numerator and denominator; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``; a float dtype (integers divide to
        float64, as in numpy).

    Notes
    -----
    Gradient: ``grad / y`` for ``x`` and ``-grad * (x / y) / y`` for ``y``, each
    summed back to its operand's shape.
    """
    return apply(Divide(), x, y, name=name)


def negative(x: Any, *, name: str | None = None) -> Node:
    """Elementwise negation ``-x`` (``np.negative``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape and dtype of ``x``.

    Notes
    -----
    Gradient: ``-grad``.
    """
    return apply(Negative(), x, name=name)


def power(x: Any, p: Any, *, name: str | None = None) -> Node:
    """Elementwise power ``x ** p`` (``np.power``).

    Parameters
    ----------
    x : Node or array_like
        Base.
    p : Node or array_like
        Exponent; broadcasts against ``x`` as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``p``, in the dtype numpy promotes them to.

    Notes
    -----
    Gradient: ``grad * p * x ** (p - 1)`` for ``x`` (a constant exponent is folded
    when the graph is built: ``x ** 2`` gives ``grad * 2x``) and
    ``grad * x ** p * log(x)`` for ``p``, each summed back to its operand's shape.
    """
    return apply(Power(), x, p, name=name)


def maximum(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise maximum of ``x`` and ``y`` (``np.maximum``; NaN propagates).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, in the dtype numpy promotes them to.

    Notes
    -----
    Gradient: ``grad`` goes to the operand that was picked; a tie goes to ``x``.
    """
    return apply(Maximum(), x, y, name=name)


def minimum(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise minimum of ``x`` and ``y`` (``np.minimum``; NaN propagates).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, in the dtype numpy promotes them to.

    Notes
    -----
    Gradient: ``grad`` goes to the operand that was picked; a tie goes to ``x``.
    """
    return apply(Minimum(), x, y, name=name)


def exp(x: Any, *, name: str | None = None) -> Node:
    """Elementwise exponential ``e ** x`` (``np.exp``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape of ``x``; a float dtype (integers give float64, as in numpy).

    Notes
    -----
    Gradient: ``grad * exp(x)`` (the output itself is reused).
    """
    return apply(Exp(), x, name=name)


def log(x: Any, *, name: str | None = None) -> Node:
    """Elementwise natural logarithm (``np.log``).

    Parameters
    ----------
    x : Node or array_like
        Input; ``log(0)`` is ``-inf`` and a negative input gives NaN, as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape of ``x``; a float dtype (integers give float64).

    Notes
    -----
    Gradient: ``grad / x``.
    """
    return apply(Log(), x, name=name)


def sin(x: Any, *, name: str | None = None) -> Node:
    """Elementwise sine, in radians (``np.sin``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape of ``x``; a float dtype (integers give float64).

    Notes
    -----
    Gradient: ``grad * cos(x)``.
    """
    return apply(Sin(), x, name=name)


def cos(x: Any, *, name: str | None = None) -> Node:
    """Elementwise cosine, in radians (``np.cos``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape of ``x``; a float dtype (integers give float64).

    Notes
    -----
    Gradient: ``-grad * sin(x)``.
    """
    return apply(Cos(), x, name=name)


def tanh(x: Any, *, name: str | None = None) -> Node:
    """Elementwise hyperbolic tangent (``np.tanh``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape of ``x``; a float dtype (integers give float64).

    Notes
    -----
    Gradient: ``grad * (1 - tanh(x) ** 2)`` (the output itself is reused).

    Examples
    --------
    >>> import numpy as np, dataflow as df, scheduler
    >>> with df.Graph():
    ...     x = df.placeholder("x", (2,))
    ...     y = df.tanh(x, name="y")
    ...     (gx,) = df.gradients(df.sum(y), [x])
    >>> scheduler.run([y, gx], {x: np.zeros(2)}, executor="inline")
    [array([0., 0.]), array([1., 1.])]
    """
    return apply(Tanh(), x, name=name)


def sqrt(x: Any, *, name: str | None = None) -> Node:
    """Elementwise non-negative square root (``np.sqrt``; a negative input gives NaN).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape of ``x``; a float dtype (integers give float64).

    Notes
    -----
    Gradient: ``grad * 0.5 / sqrt(x)`` (infinite at 0).
    """
    return apply(Sqrt(), x, name=name)


def square(x: Any, *, name: str | None = None) -> Node:
    """Elementwise square ``x * x`` (``np.square``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape and dtype of ``x``.

    Notes
    -----
    Gradient: ``grad * 2x``.
    """
    return apply(Square(), x, name=name)


def abs(x: Any, *, name: str | None = None) -> Node:  # noqa: A001 - numpy's name
    """Elementwise absolute value (``np.abs``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape and dtype of ``x`` (complex input gives the matching float dtype).

    Notes
    -----
    Gradient: ``grad * sign(x)`` (0 at 0).
    """
    return apply(Abs(), x, name=name)


def sign(x: Any, *, name: str | None = None) -> Node:
    """Elementwise sign: -1, 0 or 1 (``np.sign``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape and dtype of ``x``.

    Notes
    -----
    Gradient: none; piecewise constant, so a constant to ``gradients``.
    """
    return apply(Sign(), x, name=name)


def greater(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise comparison ``x > y`` (``np.greater``).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, dtype bool.

    Notes
    -----
    Gradient: none; a comparison is a constant to ``gradients``. ``x > y`` on nodes
    builds this op; ``==`` does not (nodes compare by identity), use :func:`equal`.
    """
    return apply(Greater(), x, y, name=name)


def greater_equal(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise comparison ``x >= y`` (``np.greater_equal``).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, dtype bool.

    Notes
    -----
    Gradient: none; a comparison is a constant to ``gradients``.
    """
    return apply(GreaterEqual(), x, y, name=name)


def less(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise comparison ``x < y`` (``np.less``).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, dtype bool.

    Notes
    -----
    Gradient: none; a comparison is a constant to ``gradients``.
    """
    return apply(Less(), x, y, name=name)


def less_equal(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise comparison ``x <= y`` (``np.less_equal``).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, dtype bool.

    Notes
    -----
    Gradient: none; a comparison is a constant to ``gradients``.
    """
    return apply(LessEqual(), x, y, name=name)


def equal(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise comparison of values ``x == y`` (``np.equal``).

    ``==`` between nodes compares their identity (nodes are dict keys); this function
    compares their values.

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, dtype bool.

    Notes
    -----
    Gradient: none; a comparison is a constant to ``gradients``.
    """
    return apply(Equal(), x, y, name=name)


def not_equal(x: Any, y: Any, *, name: str | None = None) -> Node:
    """Elementwise comparison of values ``x != y`` (``np.not_equal``).

    Parameters
    ----------
    x, y : Node or array_like
        Operands; they broadcast against each other as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of ``x`` and ``y``, dtype bool.

    Notes
    -----
    Gradient: none; a comparison is a constant to ``gradients``.
    """
    return apply(NotEqual(), x, y, name=name)


def where(cond: Any, x: Any, y: Any, *, name: str | None = None) -> Node:
    """``x`` where ``cond`` is true, else ``y``, elementwise (``np.where``).

    Parameters
    ----------
    cond : Node or array_like
        The condition, usually bool (other values are tested for non-zero).
    x, y : Node or array_like
        The values to pick from; ``cond``, ``x`` and ``y`` broadcast together.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The broadcast shape of the three inputs, in the dtype numpy promotes ``x`` and
        ``y`` to.

    Notes
    -----
    Gradient: ``grad`` where ``cond`` holds for ``x``, and where it does not for
    ``y`` (zeros elsewhere), each summed back to its operand's shape; none for
    ``cond``.
    """
    return apply(Where(), cond, x, y, name=name)
