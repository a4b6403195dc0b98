"""Matrix product with numpy's ``matmul`` semantics: 1-D operands are promoted to
matrices and the added axis dropped again; leading (batch) axes broadcast."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..graph import Node
from ..op import Op, apply, contiguous
from ..shapes import broadcast, fmt, same_or_unknown
from .shape_ops import expand_dims, reshape_as, sum_to, swapaxes


class Matmul(Op):
    name = "matmul"
    returns_numpy = True

    def kernel(self):
        return _matmul

    def forward(self, a, b):
        return _matmul(a, b)

    def infer(self, a, b):
        sa, sb = a.shape, b.shape
        if not sa or not sb:
            raise ShapeError(f"matmul: scalar operands are not allowed, got {fmt(sa)} @ {fmt(sb)}")
        ma = sa if len(sa) > 1 else (1,) + sa
        mb = sb if len(sb) > 1 else sb + (1,)
        if not same_or_unknown(ma[-1], mb[-2]):
            raise ShapeError(f"matmul: inner dimensions differ: {fmt(sa)} @ {fmt(sb)}")
        try:
            batch = broadcast("matmul", ma[:-2], mb[:-2])
        except ShapeError:
            raise ShapeError(f"matmul: batch dimensions do not broadcast: "
                             f"{fmt(sa)} @ {fmt(sb)}") from None
        shape = batch + ((ma[-2],) if len(sa) > 1 else ()) + ((mb[-1],) if len(sb) > 1 else ())
        return shape, np.result_type(a.dtype, b.dtype)

    #: BLAS: tens of GFLOP/s per core, where numpy's elementwise loops do about one
    flops_per_second = 2e10

    def flops(self, input_shapes, output_shape):
        # Two operations (multiply, add) per output element per step of the inner axis.
        sa = input_shapes[0]
        inner = sa[-1] if sa else 1
        return 2.0 * math.prod(output_shape) * inner

    def bprop(self, inputs, output, grad, wanted):
        a, b = inputs
        # Work on the matrix forms; a 1-D operand's axis comes back into the gradient.
        a2 = a if len(a.shape) > 1 else expand_dims(a, 0)
        b2 = b if len(b.shape) > 1 else expand_dims(b, -1)
        if len(a.shape) == 1 and len(b.shape) == 1:
            g2 = expand_dims(grad, (0, 1))
        elif len(a.shape) == 1:
            g2 = expand_dims(grad, -2)
        elif len(b.shape) == 1:
            g2 = expand_dims(grad, -1)
        else:
            g2 = grad
        ga = gb = None
        if wanted[0]:
            ga = reshape_as(sum_to(matmul(g2, swapaxes(b2, -1, -2)), a2), a)
        if wanted[1]:
            gb = reshape_as(sum_to(matmul(swapaxes(a2, -1, -2), g2), b2), b)
        return ga, gb


def _matmul(a: Any, b: Any) -> Any:
    """``np.matmul`` on operands in a layout every executor agrees on (see ``contiguous``)."""
    return np.matmul(contiguous(a), contiguous(b))


def matmul(a: Any, b: Any, *, name: str | None = None) -> Node:
    """Matrix product ``a @ b`` with ``np.matmul``'s rules.

    Parameters
    ----------
    a, b : Node or array_like
        At least 1-D each. A 1-D ``a`` is a row vector and a 1-D ``b`` a column vector
        (the added axis is dropped from the result); axes before the last two are batch
        axes and broadcast as in numpy.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        Shape ``batch + (a.shape[-2], b.shape[-1])`` (without the axes of 1-D
        operands), in the dtype numpy promotes ``a`` and ``b`` to. Inner dimensions
        that differ, or a 0-d operand, raise ``ShapeError`` when the graph is built.

    Notes
    -----
    Gradient: ``grad @ b.T`` for ``a`` and ``a.T @ grad`` for ``b`` (``.T`` swaps the
    last two axes), summed over broadcast batch axes.
    """
    return apply(Matmul(), a, b, name=name)
