"""Reductions: sum, mean, max, min over an int axis, a tuple of axes or all axes,
with ``keepdims``. ``max``/``min`` send their gradient to the first arg-extremum."""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from ..graph import Node
from ..op import Op, apply, contiguous
from ..shapes import normalize_axes, product, reduced
from .core import constant
from .shape_ops import broadcast_as, expand_dims


class Reduction(Op):
    attr_names = ("axis", "keepdims")
    reducer: Any = None
    returns_numpy = True

    def infer(self, x):
        axes = normalize_axes(self.name, self.axis, len(x.shape))
        return reduced(x.shape, axes, self.keepdims), self._dtype(x.dtype)

    def _dtype(self, dtype: np.dtype) -> np.dtype:
        return dtype

    def forward(self, x):
        return type(self).reducer(contiguous(x), axis=self.axis, keepdims=self.keepdims)

    def expanded(self, grad: Node, x: Node) -> Node:
        """``grad`` with the reduced axes restored (size 1), then broadcast like ``x``."""
        if not self.keepdims:
            axes = normalize_axes(self.name, self.axis, len(x.shape))
            grad = expand_dims(grad, axes)
        return broadcast_as(grad, x)


class Sum(Reduction):
    name, reducer = "sum", np.sum

    def _dtype(self, dtype):
        return np.sum(np.ones((1,), dtype)).dtype

    def bprop(self, inputs, output, grad, wanted):
        return (self.expanded(grad, inputs[0]),)


class Mean(Reduction):
    name, reducer = "mean", np.mean

    def forward(self, x):
        x = contiguous(x)
        if type(x) is np.ndarray and x.dtype.char in "fd" and x.size:
            # What np.mean computes for these dtypes (a sum in the array's dtype, then a
            # true division by the count), without its two Python-level helpers.
            total = np.add.reduce(x, axis=self.axis, keepdims=self.keepdims)
            return np.true_divide(total, x.size // np.size(total))
        return np.mean(x, axis=self.axis, keepdims=self.keepdims)

    def _dtype(self, dtype):
        return np.mean(np.ones((1,), dtype)).dtype

    def bprop(self, inputs, output, grad, wanted):
        (x,) = inputs
        axes = normalize_axes(self.name, self.axis, len(x.shape))
        count = product([x.shape[a] for a in axes])
        if count is not None:
            scale = constant(np.asarray(1.0 / builtins.max(count, 1), grad.dtype), graph=grad.graph)
        else:
            scale = apply(InverseCount(axis=axes, dtype=grad.dtype), x)
        return (self.expanded(grad * scale, x),)


class InverseCount(Op):
    """1 / (number of elements along ``axis``) of its input's run-time shape."""

    name = "inverse_count"
    attr_names = ("axis", "dtype")
    stops_gradient = True

    def infer(self, x):
        return (), self.dtype

    def forward(self, x):
        shape = np.shape(x)
        count = int(np.prod([shape[a] for a in self.axis]))
        return np.asarray(1.0 / builtins.max(count, 1), self.dtype)

    def bprop(self, inputs, output, grad, wanted):
        return (None,)


class Max(Reduction):
    name, reducer = "max", np.max

    def bprop(self, inputs, output, grad, wanted):
        (x,) = inputs
        mask = apply(ExtremumMask(axis=self.axis, kind=self.name), x)
        return (mask * self.expanded(grad, x),)


class Min(Max):
    name, reducer = "min", np.min


class ExtremumMask(Op):
    """1 at the first arg-max (or arg-min) along the reduced axes, 0 elsewhere."""

    name = "extremum_mask"
    attr_names = ("axis", "kind")
    stops_gradient = True

    def infer(self, x):
        normalize_axes(self.name, self.axis, len(x.shape))
        return x.shape, x.dtype

    def forward(self, x):
        x = np.asarray(x)
        axes = normalize_axes(self.name, self.axis, x.ndim)
        rest = [a for a in range(x.ndim) if a not in axes]
        moved = np.transpose(x, rest + list(axes))
        flat = moved.reshape(moved.shape[: len(rest)] + (-1,))
        pick = np.argmax if self.kind == "max" else np.argmin
        mask = np.zeros_like(flat)
        if flat.shape[-1]:
            np.put_along_axis(mask, pick(flat, axis=-1)[..., None], 1, axis=-1)
        mask = mask.reshape(moved.shape)
        return np.transpose(mask, np.argsort(rest + list(axes)))

    def bprop(self, inputs, output, grad, wanted):
        return (None,)


def _reduce(cls: type, x: Node, axis: Any, keepdims: bool, name: str | None) -> Node:
    if isinstance(axis, list):
        axis = tuple(axis)
    if isinstance(axis, np.integer):
        axis = int(axis)
    return apply(cls(axis=axis, keepdims=bool(keepdims)), x, name=name)


def sum(x: Node, axis: Any = None, keepdims: bool = False, *,  # noqa: A001
        name: str | None = None) -> Node:
    """Sum of the elements over ``axis`` (``np.sum``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    axis : int, tuple of ints or None
        Axes to reduce (negative counts from the end); ``None`` reduces all axes.
    keepdims : bool
        Keep the reduced axes, with size 1.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        ``x``'s shape without the reduced axes (size 1 with ``keepdims``). The dtype is
        numpy's: bool and small integers sum as the platform integer (int64).

    Notes
    -----
    Gradient: ``grad`` broadcast back over the reduced axes.
    """
    return _reduce(Sum, x, axis, keepdims, name)


def mean(x: Node, axis: Any = None, keepdims: bool = False, *,
         name: str | None = None) -> Node:
    """Arithmetic mean of the elements over ``axis`` (``np.mean``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    axis : int, tuple of ints or None
        Axes to reduce (negative counts from the end); ``None`` reduces all axes.
    keepdims : bool
        Keep the reduced axes, with size 1.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        ``x``'s shape without the reduced axes (size 1 with ``keepdims``); a float
        dtype (integers give float64, float32 stays float32).

    Notes
    -----
    Gradient: ``grad / n`` broadcast back over the reduced axes, ``n`` the number of
    elements reduced (read at run time when the shape is not static).
    """
    return _reduce(Mean, x, axis, keepdims, name)


def max(x: Node, axis: Any = None, keepdims: bool = False, *,  # noqa: A001
        name: str | None = None) -> Node:
    """Largest element over ``axis`` (``np.max``; NaN propagates).

    Parameters
    ----------
    x : Node or array_like
        Input.
    axis : int, tuple of ints or None
        Axes to reduce (negative counts from the end); ``None`` reduces all axes.
    keepdims : bool
        Keep the reduced axes, with size 1.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        ``x``'s shape without the reduced axes (size 1 with ``keepdims``), in ``x``'s
        dtype. Reducing an empty axis fails at run time, as in numpy.

    Notes
    -----
    Gradient: ``grad`` goes to the first position holding the maximum (in C order
    over the reduced axes), zeros elsewhere.
    """
    return _reduce(Max, x, axis, keepdims, name)


def min(x: Node, axis: Any = None, keepdims: bool = False, *,  # noqa: A001
        name: str | None = None) -> Node:
    """Smallest element over ``axis`` (``np.min``; NaN propagates).

    Parameters
    ----------
    x : Node or array_like
        Input.
    axis : int, tuple of ints or None
        Axes to reduce (negative counts from the end); ``None`` reduces all axes.
    keepdims : bool
        Keep the reduced axes, with size 1.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        ``x``'s shape without the reduced axes (size 1 with ``keepdims``), in ``x``'s
        dtype. Reducing an empty axis fails at run time, as in numpy.

    Notes
    -----
    Gradient: ``grad`` goes to the first position holding the minimum (in C order
    over the reduced axes), zeros elsewhere.
    """
    return _reduce(Min, x, axis, keepdims, name)
