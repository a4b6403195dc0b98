"""Leaf and plumbing ops: constants, placeholders, stop_gradient, cast, add_n, and the
zeros/ones that gradients start from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import GraphError, ShapeError
from ..graph import Graph, Node, get_default_graph
from ..op import Op, apply
from ..shapes import broadcast, fmt, is_known


class Constant(Op):
    """A value fixed when the graph is built (stored read-only)."""

    returns_numpy = True

    name = "constant"
    attr_names = ("value",)

    def infer(self) -> tuple[tuple, np.dtype]:
        return self.value.shape, self.value.dtype

    def forward(self) -> np.ndarray:
        return self.value

    def bprop(self, inputs, output, grad, wanted):
        return ()


def constant(value: Any, name: str | None = None, *, dtype: Any = None,
             graph: Graph | None = None) -> Node:
    """A constant node holding ``np.asarray(value, dtype)`` (copied and made read-only)."""
    if isinstance(value, Node):
        raise GraphError(f"constant() got node {value.name!r}; it is already a node")
    if dtype is not None:  # the feeds' rule: nothing wraps around or overflows
        value = convert_dtype(f"constant {name!r}" if name else "constant", value,
                              np.dtype(dtype))
    array = np.array(value)
    if array.dtype == object or array.dtype.kind == "V":
        raise TypeError(f"constant {name or ''}: unsupported dtype {array.dtype}")
    array.flags.writeable = False
    g = graph or get_default_graph()
    return g._add(Constant(value=array), (), array.shape, array.dtype, name)


def const_value(node: Node) -> np.ndarray | None:
    """The value of a constant node, else ``None``."""
    return node.op.value if isinstance(node.op, Constant) else None


class Placeholder(Op):
    """An input fed at run time; ``None`` dims are unknown until then."""

    returns_numpy = True  # check_feed makes every feed an array

    name = "placeholder"
    attr_names = ("shape", "dtype")

    def infer(self) -> tuple[tuple, np.dtype]:
        return self.shape, self.dtype

    def forward(self) -> np.ndarray:
        raise RuntimeError("placeholders are fed, never computed")

    def bprop(self, inputs, output, grad, wanted):
        return ()

    def check_feed(self, name: str, value: Any) -> np.ndarray:
        """Validate a fed value against the declared shape and dtype (see ``convert_feed``)."""
        return convert_feed(f"placeholder {name!r}", value, self.shape, self.dtype)


def convert_feed(what: str, value: Any, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """``value`` as an array of ``dtype`` and ``shape`` (``None`` dims match any size),
    by the one rule every feed follows, whether an array, a list or a scalar:

    - ``np.asarray(value)`` first (a list or scalar gets numpy's own dtype: int64,
      float64, bool, complex128); it must be numeric (bool, int, float or complex);
    - a value of another dtype is converted to ``dtype`` only when ``dtype`` is of the
      same kind or a later one in bool < integer (signed or unsigned) < float <
      complex (never floats to integers, complex to reals, or numbers to bool) and
      every value fits: integers within the target's range, no finite value that
      overflows to infinity. Floats round to the nearest value of ``dtype``, as
      ``astype`` rounds them. A value that does not fit raises ``ValueError`` naming
      the feed: nothing wraps around or overflows silently.

    ``what`` names the feed in errors ("placeholder 'x'")."""
    if isinstance(value, Node):
        raise TypeError(f"feed for {what} is a node; feed a value")
    array = convert_dtype(f"feed for {what}", value, dtype)
    if len(array.shape) != len(shape) or any(
        d is not None and d != a for d, a in zip(shape, array.shape)
    ):
        raise ValueError(f"feed for {what} has shape {fmt(array.shape)}, expected {fmt(shape)}")
    return array


def convert_dtype(what: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """``np.asarray(value)`` converted to ``dtype`` by ``convert_feed``'s dtype rule
    (also the rule of ``constant(value, dtype=...)``); errors start with ``what``."""
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"{what} is not numeric (got {type(value).__name__}; "
                        "integers beyond 64 bits and ragged lists are not numeric arrays)")
    if array.dtype == dtype:
        return array
    if _KIND_RANK.get(array.dtype.kind, 9) > _KIND_RANK.get(dtype.kind, -1):
        raise TypeError(f"{what} has dtype {array.dtype}, expected {dtype}")
    if np.can_cast(array.dtype, dtype, "safe") or array.size == 0:
        return array.astype(dtype)  # every value fits (ints into floats, rounded)
    if dtype.kind in "iu":  # from bool or another integer type
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise ValueError(f"{what}: value {bad} does not fit its dtype {dtype} "
                             f"(range {info.min} to {info.max}); it would wrap around")
        return array.astype(dtype)
    with np.errstate(all="ignore"):  # overflow is checked below; underflow rounds to 0
        converted = array.astype(dtype)
    overflowed = np.isfinite(array) & ~np.isfinite(converted)
    if overflowed.any():
        bad = array[np.unravel_index(int(np.argmax(overflowed)), array.shape)]
        raise ValueError(f"{what}: value {bad} does not fit its dtype {dtype} "
                         f"(largest {str(np.finfo(dtype).max)}); it would overflow to infinity")
    return converted


#: The kinds a value may be converted between, in order: only to the same or a later one.
_KIND_RANK = {"b": 0, "i": 1, "u": 1, "f": 2, "c": 3}


def placeholder(name: str, shape: Sequence[int | None] | None = None, dtype: Any = None,
                *, graph: Graph | None = None) -> Node:
    """An input fed at run time. ``shape=None`` means a scalar; a ``None`` entry is an
    unknown dim. ``dtype`` defaults to float64."""
    if not isinstance(name, str) or not name:
        raise GraphError("placeholder needs a non-empty name")
    shape = () if shape is None else tuple(shape)
    for d in shape:
        if d is not None and (not isinstance(d, (int, np.integer)) or d < 0):
            raise ShapeError(f"placeholder {name!r}: bad dimension {d!r} in shape {shape!r}")
    shape = tuple(None if d is None else int(d) for d in shape)
    dt = np.dtype(np.float64 if dtype is None else dtype)
    g = graph or get_default_graph()
    return g._add(Placeholder(shape=shape, dtype=dt), (), shape, dt, name)


class StopGradient(Op):
    """Identity forward; a constant to the gradient."""

    name = "stop_gradient"
    stops_gradient = True

    def infer(self, x):
        return x.shape, x.dtype

    def forward(self, x):
        return x

    def bprop(self, inputs, output, grad, wanted):
        return (None,)


def stop_gradient(x: Node) -> Node:
    return apply(StopGradient(), x)


class Cast(Op):
    """Convert to ``dtype``; gradients flow back converted to the input's dtype."""

    name = "cast"
    attr_names = ("dtype",)

    def infer(self, x):
        return x.shape, self.dtype

    def forward(self, x):
        return np.asarray(x).astype(self.dtype, copy=False)

    def bprop(self, inputs, output, grad, wanted):
        (x,) = inputs
        if x.dtype.kind not in "fc":
            return (None,)
        return (cast(grad, x.dtype),)


def cast(x: Node, dtype: Any) -> Node:
    dt = np.dtype(dtype)
    if isinstance(x, Node) and x.dtype == dt:
        return x
    return apply(Cast(dtype=dt), x)


class AddN(Op):
    """The sum of its inputs, added left to right (a fixed order, for bitwise
    reproducibility). Gradient contributions from several paths meet here."""

    name = "add_n"

    def infer(self, *xs):
        shape = broadcast(self.name, *(x.shape for x in xs))
        return shape, np.result_type(*(x.dtype for x in xs))

    def forward(self, *xs):
        total = np.add(xs[0], xs[1])
        for x in xs[2:]:
            total += x if total.shape == np.shape(x) else np.add(total, x)
        return total

    def bprop(self, inputs, output, grad, wanted):
        from .shape_ops import sum_to

        return tuple(sum_to(grad, x) if w else None for x, w in zip(inputs, wanted))


def add_n(xs: Sequence[Node]) -> Node:
    xs = list(xs)
    if not xs:
        raise ValueError("add_n needs at least one input")
    if len(xs) == 1:
        return xs[0]
    return apply(AddN(), *xs)


class FilledLike(Op):
    """An array shaped like its input, filled with ``fill`` (its values are not read)."""

    name = "filled_like"
    attr_names = ("fill", "dtype")
    stops_gradient = True

    def infer(self, x):
        return x.shape, self.dtype

    def forward(self, x):
        return np.full(np.shape(x), self.fill, dtype=self.dtype)

    def bprop(self, inputs, output, grad, wanted):
        return (None,)


def full_like(x: Node, fill: float, dtype: Any = None) -> Node:
    """``fill`` in ``x``'s shape: a constant when the shape is static, else computed."""
    dt = np.dtype(dtype or x.dtype)
    if is_known(x.shape):
        return constant(np.full(x.shape, fill, dtype=dt), graph=x.graph)
    return apply(FilledLike(fill=fill, dtype=dt), x)


def zeros_like(x: Node, dtype: Any = None) -> Node:
    return full_like(x, 0, dtype)


def ones_like(x: Node, dtype: Any = None) -> Node:
    return full_like(x, 1, dtype)
