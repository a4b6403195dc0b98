"""Neural-network ops: sigmoid, relu, and numerically stable softmax, log_softmax,
logsumexp and softmax cross-entropy. Their bprops are built from other differentiable
ops, so second derivatives come for free."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from ..graph import Node
from ..op import Op, apply, contiguous, result_dtype
from ..shapes import fmt, normalize_axes, reduced
from .core import constant
from .elementwise import exp, greater, where
from .reductions import sum as sum_
from .shape_ops import broadcast_as, expand_dims


class Sigmoid(Op):
    name = "sigmoid"

    def infer(self, x):
        return x.shape, np.tanh(np.ones((), x.dtype)).dtype

    def forward(self, x):
        # 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x)).
        half = np.asarray(0.5, dtype=np.result_type(x, np.float16))
        return half * (np.tanh(half * x) + 1)

    def bprop(self, inputs, output, grad, wanted):
        one = constant(np.ones((), output.dtype), graph=output.graph)
        return (grad * (output * (one - output)),)


class Relu(Op):
    name = "relu"

    def infer(self, x):
        return x.shape, x.dtype

    def forward(self, x):
        return np.maximum(x, 0)

    def bprop(self, inputs, output, grad, wanted):
        (x,) = inputs
        zero = constant(np.zeros((), grad.dtype), graph=grad.graph)
        return (where(greater(x, zero), grad, zero),)


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype of exp(x): integers become floats the way numpy makes them."""
    return result_dtype(np.exp, [dtype])


class AxisOp(Op):
    attr_names = ("axis",)

    def infer(self, x):
        normalize_axes(self.name, self.axis, len(x.shape))
        return x.shape, _float_dtype(x.dtype)


class Softmax(AxisOp):
    name = "softmax"

    def forward(self, x):
        x = contiguous(x)
        shifted = x - np.max(x, axis=self.axis, keepdims=True)
        e = np.exp(shifted)
        return e / np.sum(e, axis=self.axis, keepdims=True)

    def bprop(self, inputs, output, grad, wanted):
        s = output
        inner = sum_(grad * s, axis=self.axis, keepdims=True)
        return (s * (grad - inner),)


class LogSoftmax(AxisOp):
    name = "log_softmax"

    def forward(self, x):
        x = contiguous(x)
        shifted = x - np.max(x, axis=self.axis, keepdims=True)
        return shifted - np.log(np.sum(np.exp(shifted), axis=self.axis, keepdims=True))

    def bprop(self, inputs, output, grad, wanted):
        total = sum_(grad, axis=self.axis, keepdims=True)
        return (grad - exp(output) * total,)


class LogSumExp(Op):
    name = "logsumexp"
    attr_names = ("axis", "keepdims")

    def infer(self, x):
        axes = normalize_axes(self.name, self.axis, len(x.shape))
        return reduced(x.shape, axes, self.keepdims), _float_dtype(x.dtype)

    def forward(self, x):
        x = contiguous(x)
        m = np.max(x, axis=self.axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        out = np.log(np.sum(np.exp(x - m), axis=self.axis, keepdims=True)) + m
        return out if self.keepdims else np.squeeze(out, axis=self.axis)

    def bprop(self, inputs, output, grad, wanted):
        (x,) = inputs
        out, g = output, grad
        if not self.keepdims:
            axes = normalize_axes(self.name, self.axis, len(x.shape))
            out, g = expand_dims(out, axes), expand_dims(g, axes)
        return (broadcast_as(g, x) * exp(x - out),)


class OneHot(Op):
    """``labels`` (integers) as one-hot rows of length ``depth``."""

    name = "one_hot"
    attr_names = ("depth", "dtype")
    stops_gradient = True

    def infer(self, labels):
        return labels.shape + (self.depth,), self.dtype

    def forward(self, labels):
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= self.depth):
            raise ValueError(f"one_hot: labels must lie in [0, {self.depth}), "
                             f"got values in [{labels.min()}, {labels.max()}]")
        if labels.dtype.kind in "iu" and labels.size:
            # Set one entry per row of zeros: a comparison against every class and a
            # cast make two more passes over the whole output.
            out = np.zeros(labels.shape + (self.depth,), self.dtype)
            out.reshape(-1, self.depth)[np.arange(labels.size), labels.reshape(-1)] = 1
            return out
        return (labels[..., None] == np.arange(self.depth)).astype(self.dtype)

    def bprop(self, inputs, output, grad, wanted):
        return (None,)


def one_hot(labels: Node, depth: int, dtype: Any = np.float64, *,
            name: str | None = None) -> Node:
    """Integer ``labels`` as one-hot rows of length ``depth``.

    Parameters
    ----------
    labels : Node or array_like
        Integer class indices; each must lie in ``[0, depth)`` (checked at run time).
    depth : int
        Number of classes.
    dtype : dtype, optional
        Dtype of the result (default float64).
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        Shape ``labels.shape + (depth,)``, in ``dtype``: 1 at each label, 0 elsewhere.

    Notes
    -----
    Gradient: none; the result is a constant to ``gradients``.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise TypeError(f"one_hot: depth must be a non-negative int, got {depth!r}")
    return apply(OneHot(depth=int(depth), dtype=np.dtype(dtype)), labels, name=name)


def sigmoid(x: Any, *, name: str | None = None) -> Node:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, elementwise.

    Computed as ``0.5 * (1 + tanh(x / 2))``, which never overflows.

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
    Gradient: ``grad * s * (1 - s)`` with ``s`` the output.
    """
    return apply(Sigmoid(), x, name=name)


def relu(x: Any, *, name: str | None = None) -> Node:
    """Rectified linear unit ``max(x, 0)``, elementwise.

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
    Gradient: ``grad`` where ``x > 0``, 0 elsewhere (0 at 0 too).
    """
    return apply(Relu(), x, name=name)


def softmax(x: Any, axis: int = -1, *, name: str | None = None) -> Node:
    """Softmax ``exp(x) / sum(exp(x))`` along ``axis``, computed stably (the maximum
    along the axis is subtracted first).

    Parameters
    ----------
    x : Node or array_like
        Input (logits).
    axis : int
        The axis that sums to 1 (default the last).
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape of ``x``; a float dtype (integers give float64).

    Notes
    -----
    Gradient: ``s * (grad - sum(grad * s, axis))`` with ``s`` the output.
    """
    return apply(Softmax(axis=axis), x, name=name)


def log_softmax(x: Any, axis: int = -1, *, name: str | None = None) -> Node:
    """``log(softmax(x))`` along ``axis``, computed stably as
    ``x - max - log(sum(exp(x - max)))``.

    Parameters
    ----------
    x : Node or array_like
        Input (logits).
    axis : int
        The axis to normalise over (default the last).
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape of ``x``; a float dtype (integers give float64).

    Notes
    -----
    Gradient: ``grad - exp(output) * sum(grad, axis)``.
    """
    return apply(LogSoftmax(axis=axis), x, name=name)


def logsumexp(x: Any, axis: Any = None, keepdims: bool = False, *,
              name: str | None = None) -> Node:
    """``log(sum(exp(x)))`` over ``axis``, computed stably (the maximum is factored out;
    an all ``-inf`` slice gives ``-inf``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    axis : int, tuple of ints or None
        Axes to reduce; ``None`` reduces all axes.
    keepdims : bool
        Keep the reduced axes, with size 1.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        ``x``'s shape without the reduced axes (size 1 with ``keepdims``); a float
        dtype (integers give float64).

    Notes
    -----
    Gradient: ``grad * exp(x - output)`` (the softmax of ``x`` over ``axis``).
    """
    if isinstance(axis, list):
        axis = tuple(axis)
    return apply(LogSumExp(axis=axis, keepdims=bool(keepdims)), x, name=name)


def softmax_cross_entropy(logits: Node, labels: Node, *, name: str | None = None) -> Node:
    """Mean over the batch of ``-log softmax(logits)[i, labels[i]]``.

    Parameters
    ----------
    logits : Node
        Unnormalised scores, shape ``(batch, classes)``; the number of classes must
        be static.
    labels : Node or array_like
        Integer class indices, shape ``(batch,)``, each in ``[0, classes)``.
    name : str, optional
        Name of the result node; by default the op's name, made unique.

    Returns
    -------
    Node
        A scalar (shape ``()``) in ``logits``' dtype. Built from ``log_softmax``,
        ``one_hot``, ``sum`` and ``mean``, so it is differentiable to any order.

    Notes
    -----
    Gradient: ``(softmax(logits) - one_hot(labels)) * grad / batch`` for ``logits``;
    none for ``labels``.
    """
    if not isinstance(logits, Node):
        raise TypeError(f"softmax_cross_entropy: logits must be a node, got "
                        f"{type(logits).__name__}")
    if len(logits.shape) != 2:
        raise ShapeError("softmax_cross_entropy: logits must be (batch, classes), "
                         f"got {fmt(logits.shape)}")
    if not isinstance(labels, Node):
        labels = constant(np.asarray(labels), graph=logits.graph)
    if labels.dtype.kind not in "iu":
        raise ShapeError("softmax_cross_entropy: labels must be integers, "
                         f"got dtype {labels.dtype}")
    if len(labels.shape) != 1 or not (
        labels.shape[0] is None or logits.shape[0] is None or labels.shape[0] == logits.shape[0]
    ):
        raise ShapeError(f"softmax_cross_entropy: labels {fmt(labels.shape)} do not match "
                         f"logits {fmt(logits.shape)}")
    if logits.shape[1] is None:
        raise ShapeError("softmax_cross_entropy: the number of classes must be static")
    from .reductions import mean

    targets = one_hot(labels, logits.shape[1], logits.dtype)
    return mean(-sum_(log_softmax(logits, axis=-1) * targets, axis=-1), name=name)
