"""Custom ops with their bprop, defined two ways and verified to second order.

1. ``df.custom_op(name, forward, shape_rule=None, bprop=None)`` from plain functions:
   ``softplus(x) = log(1 + exp(x))`` (elementwise: the default shape rule) and
   ``row_norm(x) = sqrt(sum(x**2, axis=-1))`` (a reduction: its own shape rule, and a
   bprop that reuses the op's output node).
2. Subclassing ``df.Op`` (see the docstring of ``dataflow/op.py``): ``ScaledSoftplus``
   with an attribute ``beta``, ``log(1 + exp(beta x)) / beta``.

A bprop returns *nodes* built from differentiable ops, so the gradient of the
gradient exists too: every op is checked with ``df.check_grads(..., order=2)``
(central differences in float64, first and second order), and a deliberately wrong
bprop is shown to fail the check. The script also shows that
an op without a bprop runs forward and raises ``df.GradientError`` only when a
gradient through it is asked for, and that ``df.save`` refuses a graph with a custom
op: custom ops are code, and graph files only ever hold built-in ops.

    python examples/custom_op.py [--fast]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

import dataflow as df
import scheduler
from dataflow.checking import GradientCheckError

# -- 1. from functions ----------------------------------------------------------------

softplus = df.custom_op(
    "examples.softplus",
    forward=lambda x: np.logaddexp(0.0, x),  # log(1 + e^x) without overflow
    bprop=lambda inputs, output, grad: (grad * df.sigmoid(inputs[0]),),
)


def _row_norm_shape(x: df.Node) -> tuple[tuple, np.dtype]:
    if len(x.shape) < 1:
        raise df.ShapeError(f"examples.row_norm needs at least one dim, got {x.shape}")
    return x.shape[:-1], x.dtype


def _row_norm_bprop(inputs, output, grad):
    (x,) = inputs
    # d|x|/dx = x / |x|: the output node is reused, not recomputed
    return (df.expand_dims(grad, -1) * x / df.expand_dims(output, -1),)


row_norm = df.custom_op(
    "examples.row_norm",
    forward=lambda x: np.sqrt(np.sum(x * x, axis=-1)),
    shape_rule=_row_norm_shape,
    bprop=_row_norm_bprop,
)

# An op with no bprop: fine forward, an error only under df.gradients.
rounded = df.custom_op("examples.round", forward=np.round)

# A bprop with a mistake (a factor 1.01 too many), which check_grads must catch.
wrong_softplus = df.custom_op(
    "examples.wrong_softplus",
    forward=lambda x: np.logaddexp(0.0, x),
    bprop=lambda inputs, output, grad: (grad * df.sigmoid(inputs[0]) * 1.01,),
)


# -- 2. by subclassing df.Op ----------------------------------------------------------

class ScaledSoftplus(df.Op):
    """``log(1 + exp(beta * x)) / beta``; ``beta`` is an attribute of the op."""

    name = "examples.scaled_softplus"
    attr_names = ("beta",)

    def forward(self, x):
        return np.logaddexp(0.0, self.beta * x) / self.beta

    def infer(self, x):
        return x.shape, x.dtype

    def bprop(self, inputs, output, grad, wanted):
        (x,) = inputs
        return (grad * df.sigmoid(self.beta * x),)


def scaled_softplus(x: df.Node, beta: float = 1.0) -> df.Node:
    return df.apply(ScaledSoftplus(beta=float(beta)), x)


# -- checks ----------------------------------------------------------------------------

def _checks(n: int) -> dict[str, tuple]:
    """What each check runs: a function building a node from nodes, and its args."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n)
    m = rng.standard_normal((3, n))
    return {
        "softplus (custom_op)": (lambda a: softplus(a), [x]),
        "row_norm (custom_op, own shape rule)": (lambda a: row_norm(a), [m]),
        "scaled_softplus beta=2.5 (Op subclass)": (lambda a: scaled_softplus(a, 2.5), [x]),
        "composite: sum(row_norm(softplus(W) * x))":
            (lambda w, a: df.sum(row_norm(softplus(w) * a)), [m, x]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--size", type=int, default=6, help="length of the test vectors")
    parser.add_argument("--fast", action="store_true", help="CI-sized: vectors of length 3")
    args = parser.parse_args(argv)
    n = 3 if args.fast else args.size

    # Forward values against numpy.
    x = np.linspace(-3.0, 3.0, 7)
    with df.Graph():
        xs = df.placeholder("x", x.shape)
        nodes = [softplus(xs), scaled_softplus(xs, 2.5), row_norm(df.reshape(xs, (1, 7)))]
    got = scheduler.run(nodes, {xs: x}, executor="inline")
    want = [np.log1p(np.exp(x)), np.log1p(np.exp(2.5 * x)) / 2.5, [np.linalg.norm(x)]]
    forward_error = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    print(f"forward values match numpy: max abs error {forward_error:.1e}")

    passed = []
    for label, (fn, fn_args) in _checks(n).items():
        df.check_grads(fn, fn_args, order=2)  # raises GradientCheckError on a mismatch
        passed.append(label)
        print(f"check_grads order 2 ok: {label}")

    try:
        df.check_grads(lambda a: wrong_softplus(a), [np.linspace(-1.0, 1.0, n)], order=1)
        wrong_caught = None
    except GradientCheckError as exc:
        wrong_caught = str(exc).splitlines()[0]
    print(f"a wrong bprop is caught: {wrong_caught}")

    with df.Graph():
        xr = df.placeholder("x", (n,))
        y = df.sum(rounded(xr) * xr)
        forward_ok = scheduler.run(y, {xr: np.arange(n, dtype=float)}, executor="inline") \
            == float(np.sum(np.arange(n) ** 2))
        try:
            df.gradients(y, [xr])
            no_bprop_message = None
        except df.GradientError as exc:
            no_bprop_message = str(exc)
    print(f"an op without bprop runs forward ({forward_ok}) and refuses a gradient: "
          f"{no_bprop_message}")

    with df.Graph() as g:
        softplus(df.placeholder("x", (n,)))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            df.save(g, os.path.join(tmp, "graph.json"))
            save_message = None
        except TypeError as exc:
            save_message = str(exc)
    print(f"df.save refuses a custom op: {save_message}")
    return {"forward_error": forward_error, "checked": passed, "wrong_bprop_error": wrong_caught,
            "no_bprop_forward_ok": bool(forward_ok), "no_bprop_error": no_bprop_message,
            "save_error": save_message}


if __name__ == "__main__":
    main()
