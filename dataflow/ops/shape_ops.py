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
from ..shapes import broadcast, fmt, is_known, normalize_axes, product, same_or_unknown


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


def sum_to(g: Node, x: Node) -> Node:
    """``g`` summed over the axes along which ``x`` was broadcast to ``g``'s shape."""
    if g.shape == x.shape and is_known(x.shape):
        return g
    if is_known(g.shape) and is_known(x.shape):
        from .reductions import sum as sum_

        lead = len(g.shape) - len(x.shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(x.shape) if d == 1 and g.shape[lead + i] != 1
        )
        out = sum_(g, axis=axes, keepdims=True) if axes else g
        return reshape(out, x.shape) if lead else out
    shape, extra = _static_or_ref(x)
    return apply(SumTo(shape=shape), g, *extra)


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


def broadcast_to(x: Node, shape: Sequence[int]) -> Node:
    shape = tuple(int(d) for d in shape)
    if isinstance(x, Node) and x.shape == shape:
        return x
    return apply(BroadcastTo(shape=shape), x)


def broadcast_as(g: Node, x: Node) -> Node:
    """``g`` broadcast to ``x``'s shape (static when known, else read at run time)."""
    if g.shape == x.shape and is_known(x.shape):
        return g
    shape, extra = _static_or_ref(x)
    return apply(BroadcastTo(shape=shape), g, *extra)


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


def reshape(x: Node, shape: Sequence[int] | int) -> Node:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    if isinstance(x, Node) and x.shape == shape:
        return x
    return apply(Reshape(shape=shape), x)


def reshape_as(g: Node, x: Node) -> Node:
    if g.shape == x.shape and is_known(x.shape):
        return g
    shape, extra = _static_or_ref(x)
    return apply(Reshape(shape=shape), g, *extra)


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


def transpose(x: Node, axes: Sequence[int] | None = None) -> Node:
    if axes is not None:
        ndim = len(x.shape)
        axes = tuple(int(a) for a in axes)
        if any(not -ndim <= a < ndim for a in axes):
            raise ShapeError(f"transpose: axes {axes} are out of range for an input of shape "
                             f"{fmt(x.shape)}")
        axes = tuple(a % ndim for a in axes)
        if axes == tuple(range(len(x.shape))):
            return x
    return apply(Transpose(axes=axes), x)


def swapaxes(x: Node, a: int, b: int) -> Node:
    perm = list(range(len(x.shape)))
    perm[a], perm[b] = perm[b], perm[a]
    return transpose(x, perm)


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


def expand_dims(x: Node, axes: int | Sequence[int]) -> Node:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return apply(ExpandDims(axes=axes), x) if axes else x


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


def getitem(x: Node, index: Any) -> Node:
    return apply(GetItem(index=_normalize_index(index, len(x.shape))), x)


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


def concatenate(xs: Sequence[Node], axis: int = 0) -> Node:
    xs = list(xs)
    if not xs:
        raise ValueError("concatenate needs at least one input")
    return apply(Concatenate(axis=int(axis)), *xs)


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


def stack(xs: Sequence[Node], axis: int = 0) -> Node:
    xs = list(xs)
    if not xs:
        raise ValueError("stack needs at least one input")
    return apply(Stack(axis=int(axis)), *xs)
