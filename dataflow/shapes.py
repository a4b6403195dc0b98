"""Static shape rules: numpy broadcasting, axes and reductions with unknown (None) dims.

A shape is a tuple whose entries are ints or ``None`` (unknown until run time). The
rules here are shared by the ops' shape inference; they raise ``ShapeError`` naming
the op and the shapes so that mistakes surface while the graph is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import ShapeError

Shape = tuple  # tuple[int | None, ...]


def fmt(shape: Shape) -> str:
    """A shape as users write it, with ``?`` for unknown dims."""
    inner = ", ".join("?" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def is_known(shape: Shape) -> bool:
    return all(d is not None for d in shape)


def broadcast(op: str, *shapes: Shape) -> Shape:
    """The broadcast of ``shapes`` under numpy's rules; an unknown dim matches anything."""
    if len(shapes) == 2 and shapes[0] == shapes[1]:
        return shapes[0]  # the common case, on the hot path of building gradients
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(-ndim, 0):
        dim: int | None = 1
        for s in shapes:
            if -axis > len(s):
                continue
            d = s[axis]
            if d == 1:
                continue
            if d is None:
                dim = None if dim == 1 else dim
            elif dim is None or dim == 1:
                dim = d
            elif dim != d:
                raise ShapeError(
                    f"{op}: shapes {', '.join(fmt(s) for s in shapes)} cannot be broadcast together"
                )
        out.append(dim)
    return tuple(out)


def normalize_axes(op: str, axis: int | Iterable[int] | None, ndim: int) -> tuple[int, ...]:
    """``axis`` (int, tuple or None for all) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axes: tuple = (axis,)
    elif isinstance(axis, Iterable) and not isinstance(axis, str):
        axes = tuple(axis)
    else:
        raise ShapeError(f"{op}: axis must be an int, a tuple of ints or None, got {axis!r}")
    result = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            raise ShapeError(f"{op}: axis must be an int, a tuple of ints or None, got {a!r}")
        if not -ndim <= a < ndim:
            raise ShapeError(f"{op}: axis {a} is out of range for an input of rank {ndim}")
        result.append(a % ndim)
    if len(set(result)) != len(result):
        raise ShapeError(f"{op}: repeated axis in {axis!r}")
    return tuple(sorted(result))


def reduced(shape: Shape, axes: Sequence[int], keepdims: bool) -> Shape:
    """The shape left after reducing ``axes``."""
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def same_or_unknown(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def product(shape: Shape) -> int | None:
    size = 1
    for d in shape:
        if d is None:
            return None
        size *= d
    return size


def shape_argument(what: str, shape: Any, *, allow_unknown: bool = False,
                   allow_minus_one: bool = False) -> tuple:
    """``shape`` (an int or a sequence of ints) as a tuple of ints, or a ``TypeError``
    or ``ShapeError`` naming ``what`` and the bad entry."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    elif isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) and not (
            isinstance(shape, np.ndarray) and shape.ndim == 1):
        raise TypeError(f"{what}: shape must be a tuple of ints (or an int), got {shape!r}")
    out: list[int | None] = []
    for d in shape:
        if d is None and allow_unknown:
            out.append(None)
            continue
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"{what}: bad dimension {d!r} in shape {tuple(shape)!r}: dims "
                            "must be ints" + (" or None" if allow_unknown else ""))
        if d < 0 and not (allow_minus_one and d == -1):
            raise ShapeError(f"{what}: bad dimension {int(d)} in shape {tuple(shape)!r}: dims "
                             "must not be negative")
        out.append(int(d))
    return tuple(out)
