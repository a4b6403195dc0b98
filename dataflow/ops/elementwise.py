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

def add(x: Any, y: Any) -> Node:
    return apply(Add(), x, y)


def subtract(x: Any, y: Any) -> Node:
    return apply(Subtract(), x, y)


def multiply(x: Any, y: Any) -> Node:
    return apply(Multiply(), x, y)


def divide(x: Any, y: Any) -> Node:
    return apply(Divide(), x, y)


def negative(x: Any) -> Node:
    return apply(Negative(), x)


def power(x: Any, p: Any) -> Node:
    return apply(Power(), x, p)


def maximum(x: Any, y: Any) -> Node:
    return apply(Maximum(), x, y)


def minimum(x: Any, y: Any) -> Node:
    return apply(Minimum(), x, y)


def exp(x: Any) -> Node:
    return apply(Exp(), x)


def log(x: Any) -> Node:
    return apply(Log(), x)


def sin(x: Any) -> Node:
    return apply(Sin(), x)


def cos(x: Any) -> Node:
    return apply(Cos(), x)


def tanh(x: Any) -> Node:
    return apply(Tanh(), x)


def sqrt(x: Any) -> Node:
    return apply(Sqrt(), x)


def square(x: Any) -> Node:
    return apply(Square(), x)


def abs(x: Any) -> Node:  # noqa: A001 - numpy's name
    return apply(Abs(), x)


def sign(x: Any) -> Node:
    return apply(Sign(), x)


def greater(x: Any, y: Any) -> Node:
    return apply(Greater(), x, y)


def greater_equal(x: Any, y: Any) -> Node:
    return apply(GreaterEqual(), x, y)


def less(x: Any, y: Any) -> Node:
    return apply(Less(), x, y)


def less_equal(x: Any, y: Any) -> Node:
    return apply(LessEqual(), x, y)


def equal(x: Any, y: Any) -> Node:
    return apply(Equal(), x, y)


def not_equal(x: Any, y: Any) -> Node:
    return apply(NotEqual(), x, y)


def where(cond: Any, x: Any, y: Any) -> Node:
    return apply(Where(), cond, x, y)
