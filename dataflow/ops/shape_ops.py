"""Ops that move data without arithmetic: reshape, transpose, broadcast_to, expand_dims,
basic indexing, concatenate, stack, and the un-broadcasting sum that gradients need.

Several gradient ops need the shape of another node. When that shape is static they
carry it as an attribute; when it has unknown dims they take the node as an extra
``ref`` input and read its shape at run time (its values are never used).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, methodcaller
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..graph import Node
from ..op import Op, apply, contiguous
from ..shapes import (
    broadcast,
    fmt,
    is_known,
    normalize_axes,
    product,
    same_or_unknown,
    shape_argument,
)


def _target(op: Op, ref: Any) -> tuple:
    return op.shape if op.shape is not None else np.shape(ref)


def _static_or_ref(x: Node) -> tuple[tuple | None, tuple[Node, ...]]:
    """(shape attr, extra inputs) for an op that must produce ``x``'s shape."""
    return (x.shape, ()) if is_known(x.shape) else (None, (x,))


# -- un-broadcasting -----------------------------------------------------------------

class SumTo(Op):
    """Sum ``g`` down to a shape it was broadcast from (the adjoint of broadcasting)."""

    name = "sum_to"
    attr_names = ("shape",)

    def infer(self, g, ref=None):
        target = self.shape if self.shape is not None else ref.shape
        if len(target) > len(g.shape) or not all(
                map(same_or_unknown, broadcast(self.name, g.shape, target), g.shape)):
            raise ShapeError(f"{self.name}: {fmt(g.shape)} cannot be summed to {fmt(target)}")
        return target, g.dtype

    def forward(self, g, ref=None):
        target = _target(self, ref)
        g = contiguous(np.asarray(g))
        lead = g.ndim - len(target)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(target) if d == 1 and g.shape[lead + i] != 1
        )
        out = np.sum(g, axis=axes, keepdims=True) if axes else g
        return out.reshape(target) if lead else out

    def bprop(self, inputs, output, grad, wanted):
        return (broadcast_as(grad, inputs[0]),) + (None,) * (len(inputs) - 1)


def sum_to(g: Node, x: Node, *, name: str | None = None) -> Node:
    """``g`` summed over the axes along which ``x`` was broadcast to ``g``'s shape: the
    adjoint of broadcasting, which gradients use to bring a gradient back to the shape of
    a broadcast operand.

    Parameters
    ----------
    g : Node
        A value of a shape that ``x``'s shape broadcasts to.
    x : Node
        The node whose shape the result takes (its values are not read; its shape is
        read at run time when it has unknown dims).
    name : str, optional
        Name of the result node. Without one, ``g`` itself is returned when it already
        has ``x``'s static shape.

    Returns
    -------
    Node
        ``x``'s shape, ``g``'s dtype.

    Notes
    -----
    Gradient: ``grad`` broadcast back to ``g``'s shape.
    """
    if g.shape == x.shape and is_known(x.shape) and name is None:
        return g
    if is_known(g.shape) and is_known(x.shape):
        from .reductions import sum as sum_

        lead = len(g.shape) - len(x.shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(x.shape) if d == 1 and g.shape[lead + i] != 1
        )
        if not axes and not lead:
            return apply(SumTo(shape=x.shape), g, name=name)
        if not lead:
            return sum_(g, axis=axes, keepdims=True, name=name)
        out = sum_(g, axis=axes, keepdims=True) if axes else g
        return reshape(out, x.shape, name=name)
    shape, extra = _static_or_ref(x)
    return apply(SumTo(shape=shape), g, *extra, name=name)


# -- broadcast_to --------------------------------------------------------------------

class BroadcastTo(Op):
    name = "broadcast_to"
    attr_names = ("shape",)

    def infer(self, x, ref=None):
        target = self.shape if self.shape is not None else ref.shape
        out = broadcast(self.name, x.shape, target)
        if len(out) != len(target) or not all(same_or_unknown(a, b) for a, b in zip(out, target)):
            raise ShapeError(f"{self.name}: cannot broadcast {fmt(x.shape)} to {fmt(target)}")
        return target, x.dtype

    def forward(self, x, ref=None):
        return np.broadcast_to(x, _target(self, ref))

    def bprop(self, inputs, output, grad, wanted):
        return (sum_to(grad, inputs[0]),) + (None,) * (len(inputs) - 1)


def broadcast_to(x: Node, shape: Sequence[int] | int, *, name: str | None = None) -> Node:
    """``x`` broadcast to ``shape`` (``np.broadcast_to``: a read-only view).

    Parameters
    ----------
    x : Node or array_like
        Input; its shape must broadcast to ``shape`` by numpy's rules.
    shape : sequence of int, or int
        The target shape (all dims known).
    name : str, optional
        Name of the new node. Without one, ``x`` itself is returned when it already has
        that shape.

    Returns
    -------
    Node
        Shape ``shape``, ``x``'s dtype.

    Notes
    -----
    Gradient: ``grad`` summed back to ``x``'s shape (``sum_to``).
    """
    shape = shape_argument("broadcast_to", shape)
    if isinstance(x, Node) and x.shape == shape and name is None:
        return x
    return apply(BroadcastTo(shape=shape), x, name=name)


def broadcast_as(g: Node, x: Node, *, name: str | None = None) -> Node:
    """``g`` broadcast to ``x``'s shape (static when known, else read at run time).

    Parameters
    ----------
    g : Node
        Input; its shape must broadcast to ``x``'s.
    x : Node
        The node whose shape the result takes (its values are not read).
    name : str, optional
        Name of the new node. Without one, ``g`` itself is returned when it already has
        ``x``'s static shape.

    Returns
    -------
    Node
        ``x``'s shape, ``g``'s dtype.

    Notes
    -----
    Gradient: ``grad`` summed back to ``g``'s shape (``sum_to``).
    """
    if g.shape == x.shape and is_known(x.shape) and name is None:
        return g
    shape, extra = _static_or_ref(x)
    return apply(BroadcastTo(shape=shape), g, *extra, name=name)


# -- reshape, transpose, expand_dims -------------------------------------------------

class Reshape(Op):
    name = "reshape"
    attr_names = ("shape",)

    def infer(self, x, ref=None):
        if self.shape is None:
            return ref.shape, x.dtype
        target = list(self.shape)
        if target.count(-1) > 1:
            raise ShapeError(f"{self.name}: more than one -1 in {self.shape}")
        size = product(x.shape)
        if -1 in target:
            rest = product([d for d in target if d != -1])
            if size is None:
                target[target.index(-1)] = None
            elif rest == 0 or size % rest:
                raise ShapeError(f"{self.name}: cannot reshape {fmt(x.shape)} to {self.shape}")
            else:
                target[target.index(-1)] = size // rest
        elif size is not None and size != product(target):
            raise ShapeError(f"{self.name}: cannot reshape {fmt(x.shape)} to {fmt(tuple(target))}")
        return tuple(target), x.dtype

    returns_numpy = kernel_takes_numpy_only = True

    def forward(self, x, ref=None):
        return np.reshape(x, _target(self, ref))

    def kernel(self):
        # x.reshape(shape) called from C: np.reshape adds two Python frames per call.
        if self.shape is None:  # the shape of another input, read at run time
            return self.forward
        return methodcaller("reshape", tuple(self.shape))

    def bprop(self, inputs, output, grad, wanted):
        return (reshape_as(grad, inputs[0]),) + (None,) * (len(inputs) - 1)


def reshape(x: Node, shape: Sequence[int] | int, *, name: str | None = None) -> Node:
    """``x`` with a new shape and the same elements in C order (``np.reshape``).

    Parameters
    ----------
    x : Node or array_like
        Input.
    shape : sequence of int, or int
        The new shape; one entry may be -1, inferred from the size. The sizes must
        agree (checked when the graph is built where the shape is static).
    name : str, optional
        Name of the new node. Without one, ``x`` itself is returned when it already has
        that shape.

    Returns
    -------
    Node
        Shape ``shape`` (the -1 filled in), ``x``'s dtype.

    Notes
    -----
    Gradient: ``grad`` reshaped back to ``x``'s shape.
    """
    shape = shape_argument("reshape", shape, allow_minus_one=True)
    if isinstance(x, Node) and x.shape == shape and name is None:
        return x
    return apply(Reshape(shape=shape), x, name=name)


def reshape_as(g: Node, x: Node, *, name: str | None = None) -> Node:
    """``g`` reshaped to ``x``'s shape (static when known, else read at run time).

    Parameters
    ----------
    g : Node
        Input, with as many elements as ``x``.
    x : Node
        The node whose shape the result takes (its values are not read).
    name : str, optional
        Name of the new node. Without one, ``g`` itself is returned when it already has
        ``x``'s static shape.

    Returns
    -------
    Node
        ``x``'s shape, ``g``'s dtype.

    Notes
    -----
    Gradient: ``grad`` reshaped back to ``g``'s shape.
    """
    if g.shape == x.shape and is_known(x.shape) and name is None:
        return g
    shape, extra = _static_or_ref(x)
    return apply(Reshape(shape=shape), g, *extra, name=name)


class Transpose(Op):
    name = "transpose"
    attr_names = ("axes",)

    def infer(self, x):
        axes = self.axes if self.axes is not None else tuple(range(len(x.shape)))[::-1]
        if sorted(axes) != list(range(len(x.shape))):
            raise ShapeError(f"{self.name}: axes {self.axes} do not match input of shape "
                             f"{fmt(x.shape)}")
        return tuple(x.shape[a] for a in axes), x.dtype

    returns_numpy = kernel_takes_numpy_only = True

    def forward(self, x):
        return np.transpose(x, self.axes)

    def kernel(self):
        # x.T or x.transpose(axes) called from C: np.transpose adds two Python frames.
        if self.axes is None:
            return attrgetter("T")
        return methodcaller("transpose", tuple(self.axes))

    def bprop(self, inputs, output, grad, wanted):
        n = len(inputs[0].shape)
        axes = self.axes if self.axes is not None else tuple(range(n))[::-1]
        return (transpose(grad, tuple(int(i) for i in np.argsort(axes))),)


def transpose(x: Node, axes: Sequence[int] | None = None, *,
              name: str | None = None) -> Node:
    """``x`` with its axes permuted (``np.transpose``); ``x.T`` reverses them.

    Parameters
    ----------
    x : Node
        Input.
    axes : sequence of int, optional
        A permutation of ``range(x.ndim)`` (negative entries count from the end); by
        default the axes are reversed.
    name : str, optional
        Name of the new node. Without one, ``x`` itself is returned for the identity
        permutation.

    Returns
    -------
    Node
        Shape ``tuple(x.shape[a] for a in axes)``, ``x``'s dtype.

    Notes
    -----
    Gradient: ``grad`` transposed by the inverse permutation.
    """
    if axes is not None:
        ndim = len(x.shape)
        if isinstance(axes, (str, bytes)) or not isinstance(axes, (Sequence, np.ndarray)) or any(
                isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in axes):
            raise TypeError(f"transpose: axes must be a sequence of ints, got {axes!r}")
        axes = tuple(int(a) for a in axes)
        if any(not -ndim <= a < ndim for a in axes):
            raise ShapeError(f"transpose: axes {axes} are out of range for an input of shape "
                             f"{fmt(x.shape)}")
        axes = tuple(a % ndim for a in axes)
        if axes == tuple(range(len(x.shape))) and name is None:
            return x
    return apply(Transpose(axes=axes), x, name=name)


def swapaxes(x: Node, a: int, b: int, *, name: str | None = None) -> Node:
    """``x`` with axes ``a`` and ``b`` interchanged (``np.swapaxes``).

    Parameters
    ----------
    x : Node
        Input.
    a, b : int
        The two axes (negative entries count from the end).
    name : str, optional
        Name of the new node. Without one, ``x`` itself is returned when ``a`` and
        ``b`` are the same axis.

    Returns
    -------
    Node
        ``x``'s shape with dims ``a`` and ``b`` swapped, ``x``'s dtype.

    Notes
    -----
    Gradient: ``grad`` with the same two axes swapped back.
    """
    ndim = len(x.shape)
    for arg, value in (("a", a), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
                -ndim <= value < ndim):
            raise ShapeError(f"swapaxes: axis {arg}={value!r} is not an axis of an input of "
                             f"shape {fmt(x.shape)}")
    perm = list(range(ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return transpose(x, perm, name=name)


class ExpandDims(Op):
    name = "expand_dims"
    attr_names = ("axes",)

    def infer(self, x):
        ndim = len(x.shape) + len(self.axes)
        axes = normalize_axes(self.name, self.axes, ndim)
        it = iter(x.shape)
        return tuple(1 if i in axes else next(it) for i in range(ndim)), x.dtype

    def forward(self, x):
        return np.expand_dims(x, self.axes)

    def bprop(self, inputs, output, grad, wanted):
        return (reshape_as(grad, inputs[0]),)


def expand_dims(x: Node, axes: int | Sequence[int], *, name: str | None = None) -> Node:
    """``x`` with new axes of size 1 inserted at ``axes`` (``np.expand_dims``).

    Parameters
    ----------
    x : Node
        Input.
    axes : int or sequence of int
        Positions of the new axes in the result (negative entries count from the end
        of the result).
    name : str, optional
        Name of the new node. Without one, ``x`` itself is returned for no axes.

    Returns
    -------
    Node
        ``x``'s shape with a 1 at each of ``axes``, ``x``'s dtype.

    Notes
    -----
    Gradient: ``grad`` reshaped back to ``x``'s shape.
    """
    axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    if not axes and name is None:
        return x
    return apply(ExpandDims(axes=axes), x, name=name)


# -- basic indexing ------------------------------------------------------------------

def _normalize_index(index: Any, ndim: int) -> tuple:
    """``index`` as a tuple of ints, slices and None with the Ellipsis expanded."""
    if not isinstance(index, tuple):
        index = (index,)
    for item in index:
        ok = item is None or item is Ellipsis or isinstance(item, slice) or (
            isinstance(item, (int, np.integer)) and not isinstance(item, bool))
        if not ok:
            raise TypeError(
                f"getitem: only basic indexing (ints, slices, None, ...) is supported, got {item!r}"
            )
    if sum(item is Ellipsis for item in index) > 1:
        raise IndexError("getitem: an index can only have a single ellipsis")
    used = sum(1 for item in index if item is not None and item is not Ellipsis)
    if used > ndim:
        raise ShapeError(f"getitem: too many indices ({used}) for an input of rank {ndim}")
    out: list = []
    for item in index:
        if item is Ellipsis:
            out.extend([slice(None)] * (ndim - used))
        elif isinstance(item, slice):
            out.append(slice(*(None if v is None else int(v)
                               for v in (item.start, item.stop, item.step))))
        elif item is None:
            out.append(None)
        else:
            out.append(int(item))
    if Ellipsis not in index:
        out.extend([slice(None)] * (ndim - used))
    return tuple(out)


class GetItem(Op):
    name = "getitem"
    attr_names = ("index",)

    def infer(self, x):
        used = sum(1 for item in self.index if item is not None)
        if used != len(x.shape):
            # getitem() normalizes every index to one entry per dim; anything else
            # (a hand-made op, a graph file) would make the static shape wrong.
            raise ShapeError(f"getitem: index {self.index!r} does not cover the "
                             f"{len(x.shape)} dims of {fmt(x.shape)}")
        shape: list = []
        dims = iter(x.shape)
        for item in self.index:
            if item is None:
                shape.append(1)
                continue
            d = next(dims)
            if isinstance(item, int):
                if d is not None and not -d <= item < d:
                    raise ShapeError(f"getitem: index {item} is out of bounds "
                                     f"for a dim of size {d}")
            elif d is None:
                shape.append(None)
            else:
                if item.step == 0:
                    raise ShapeError("getitem: slice step cannot be zero")
                shape.append(len(range(*item.indices(d))))
        return tuple(shape), x.dtype

    def forward(self, x):
        return x[self.index]

    def bprop(self, inputs, output, grad, wanted):
        (x,) = inputs
        shape, extra = _static_or_ref(x)
        return (apply(ScatterIndex(index=self.index, shape=shape), grad, *extra),)


def getitem(x: Node, index: Any, *, name: str | None = None) -> Node:
    """``x[index]`` with numpy's basic indexing; ``x[...]`` on a node builds this op.

    Parameters
    ----------
    x : Node
        Input.
    index : int, slice, None, Ellipsis, or a tuple of them
        Basic indexing only (no arrays or bool masks): ints drop an axis, slices keep
        it, ``None`` adds one of size 1.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The shape numpy's basic indexing gives, ``x``'s dtype. An int index out of a
        static dim raises ``ShapeError`` when the graph is built.

    Notes
    -----
    Gradient: zeros of ``x``'s shape with ``grad`` written at ``index``.
    """
    return apply(GetItem(index=_normalize_index(index, len(x.shape))), x, name=name)


class ScatterIndex(Op):
    """Zeros of a shape with ``g`` written at ``index`` (the adjoint of basic indexing)."""

    name = "scatter_index"
    attr_names = ("index", "shape")

    def infer(self, g, ref=None):
        return (self.shape if self.shape is not None else ref.shape), g.dtype

    def forward(self, g, ref=None):
        out = np.zeros(_target(self, ref), dtype=np.asarray(g).dtype)
        out[self.index] = g
        return out

    def bprop(self, inputs, output, grad, wanted):
        return (apply(GetItem(index=self.index), grad),) + (None,) * (len(inputs) - 1)


# -- concatenate and stack -----------------------------------------------------------

class Concatenate(Op):
    name = "concatenate"
    attr_names = ("axis",)

    def infer(self, *xs):
        first = xs[0].shape
        if not first:
            raise ShapeError(f"{self.name}: zero-dimensional inputs cannot be concatenated")
        (axis,) = normalize_axes(self.name, self.axis, len(first))
        total: int | None = 0
        shape = list(first)
        for x in xs:
            if len(x.shape) != len(first):
                raise ShapeError(f"{self.name}: inputs of rank {len(first)} and {len(x.shape)}: "
                                 f"{fmt(first)} and {fmt(x.shape)}")
            for i, (a, b) in enumerate(zip(shape, x.shape)):
                if i != axis:
                    if not same_or_unknown(a, b):
                        raise ShapeError(f"{self.name}: shapes {fmt(first)} and {fmt(x.shape)} "
                                         f"differ outside axis {axis}")
                    shape[i] = a if a is not None else b
            d = x.shape[axis]
            total = None if total is None or d is None else total + d
        shape[axis] = total
        return tuple(shape), np.result_type(*(x.dtype for x in xs))

    def forward(self, *xs):
        return np.concatenate(xs, axis=self.axis)

    def bprop(self, inputs, output, grad, wanted):
        ndim = len(inputs[0].shape)
        (axis,) = normalize_axes(self.name, self.axis, ndim)
        sizes = [x.shape[axis] for x in inputs]
        grads: list[Node | None] = []
        if all(s is not None for s in sizes):
            offset = 0
            for size, want in zip(sizes, wanted):
                index = (slice(None),) * axis + (slice(offset, offset + size),)
                grads.append(getitem(grad, index) if want else None)
                offset += size
            return tuple(grads)
        return tuple(apply(ConcatPiece(axis=axis, piece=i), grad, *inputs) if want else None
                     for i, want in enumerate(wanted))


class ConcatPiece(Op):
    """Piece ``piece`` of ``g`` cut along ``axis`` at the sizes of the other inputs."""

    name = "concat_piece"
    attr_names = ("axis", "piece")

    def infer(self, g, *xs):
        if not 0 <= self.piece < len(xs):
            raise ShapeError(f"{self.name}: piece {self.piece} of {len(xs)} inputs")
        normalize_axes(self.name, self.axis, len(g.shape))
        return xs[self.piece].shape, g.dtype

    def forward(self, g, *xs):
        offsets = np.cumsum([0] + [np.shape(x)[self.axis] for x in xs])
        index = (slice(None),) * self.axis + (slice(offsets[self.piece], offsets[self.piece + 1]),)
        return g[index]

    def bprop(self, inputs, output, grad, wanted):
        g, *xs = inputs
        pieces = [grad if i == self.piece else None for i in range(len(xs))]
        from .core import zeros_like

        parts = [p if p is not None else zeros_like(x, grad.dtype) for p, x in zip(pieces, xs)]
        return (concatenate(parts, axis=self.axis),) + (None,) * len(xs)


def concatenate(xs: Sequence[Node], axis: int = 0, *, name: str | None = None) -> Node:
    """The nodes of ``xs`` joined along an existing axis (``np.concatenate``).

    Parameters
    ----------
    xs : sequence of Node or array_like
        At least one input, all of the same rank (at least 1-D) and the same shape
        outside ``axis``.
    axis : int
        The axis to join along (negative counts from the end).
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The inputs' shape with the sizes along ``axis`` added up, in the dtype numpy
        promotes the inputs to.

    Notes
    -----
    Gradient: each input gets its own slice of ``grad`` along ``axis``.
    """
    xs = _node_list("concatenate", xs)
    return apply(Concatenate(axis=_axis_argument("concatenate", axis)), *xs, name=name)


class Stack(Op):
    name = "stack"
    attr_names = ("axis",)

    def infer(self, *xs):
        shape = list(xs[0].shape)
        for x in xs:
            if len(x.shape) != len(shape) or not all(map(same_or_unknown, shape, x.shape)):
                raise ShapeError(f"{self.name}: all inputs must have the same shape, got "
                                 f"{fmt(xs[0].shape)} and {fmt(x.shape)}")
            shape = [a if a is not None else b for a, b in zip(shape, x.shape)]
        (axis,) = normalize_axes(self.name, self.axis, len(shape) + 1)
        shape.insert(axis, len(xs))
        return tuple(shape), np.result_type(*(x.dtype for x in xs))

    def forward(self, *xs):
        return np.stack(xs, axis=self.axis)

    def bprop(self, inputs, output, grad, wanted):
        (axis,) = normalize_axes(self.name, self.axis, len(inputs[0].shape) + 1)
        return tuple(getitem(grad, (slice(None),) * axis + (i,)) if want else None
                     for i, want in enumerate(wanted))


def stack(xs: Sequence[Node], axis: int = 0, *, name: str | None = None) -> Node:
    """The nodes of ``xs`` joined along a new axis (``np.stack``).

    Parameters
    ----------
    xs : sequence of Node or array_like
        At least one input, all of the same shape.
    axis : int
        Position of the new axis in the result (negative counts from the end).
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        The inputs' shape with ``len(xs)`` inserted at ``axis``, in the dtype numpy
        promotes the inputs to.

    Notes
    -----
    Gradient: each input gets its own index of ``grad`` along ``axis``.
    """
    xs = _node_list("stack", xs)
    return apply(Stack(axis=_axis_argument("stack", axis)), *xs, name=name)


def _node_list(what: str, xs: Any) -> list:
    if isinstance(xs, Node) or not isinstance(xs, (list, tuple)):
        raise TypeError(f"{what}: xs must be a list or tuple of nodes, got "
                        f"{type(xs).__name__}")
    if not xs:
        raise ValueError(f"{what} needs at least one input")
    return list(xs)


def _axis_argument(what: str, axis: Any) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{what}: axis must be an int, got {axis!r}")
    return int(axis)
