"""Leaf and plumbing ops: constants, placeholders, stop_gradient, cast, add_n, and the
zeros/ones that gradients start from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import GraphError
from ..graph import Graph, Node, get_default_graph
from ..op import Op, apply
from ..shapes import broadcast, fmt, is_known, shape_argument


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
    """A node whose value is fixed when the graph is built.

    Parameters
    ----------
    value : array_like
        The value: a numpy array, a scalar or nested lists of numbers. It is copied
        (``np.array(value, dtype)``) and the copy made read-only, so changing ``value``
        afterwards changes nothing.
    name : str, optional
        Name of the new node; by default ``constant``, made unique.
    dtype : dtype, optional
        The dtype to convert ``value`` to; by default numpy's choice for it.
    graph : Graph, optional
        The graph to add the node to; by default the innermost ``with Graph()`` block's,
        else the default graph.

    Returns
    -------
    Node
        ``value``'s shape and dtype. Values numpy can only hold as objects, and
        structured values, raise ``TypeError``.

    Notes
    -----
    Gradient: none; a constant is a leaf (its gradient is zeros if asked for).
    """
    if isinstance(value, Node):
        raise GraphError(f"constant() got node {value.name!r}; it is already a node")
    what = "constant" if name is None else f"constant {name!r}"
    if dtype is not None:  # the feeds' rule: nothing wraps around or overflows
        value = convert_dtype(what, value, _dtype_argument(what, dtype))
    array = np.array(value)
    if array.dtype == object or array.dtype.kind == "V":
        raise TypeError(f"{what}: unsupported dtype {array.dtype} (of a "
                        f"{type(value).__name__})")
    array.flags.writeable = False
    g = graph or get_default_graph()
    return g._add(Constant(value=array), (), array.shape, array.dtype, name)


def const_value(node: Node) -> np.ndarray | None:
    """The (read-only) value of a constant node, else ``None``.

    Parameters
    ----------
    node : Node
        Any node.

    Returns
    -------
    numpy.ndarray or None
    """
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
        """Validate a fed value against the declared shape and dtype.

        Parameters
        ----------
        name : str
            The placeholder's node name, for the error message.
        value : array_like
            The fed value.

        Returns
        -------
        numpy.ndarray
            The value converted by the one feed rule (see ``convert_feed``).

        Raises
        ------
        FeedError
            If the value does not fit the shape or the dtype.
        """
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


def placeholder(name: str, shape: Sequence[int | None] | int | None = None, dtype: Any = None,
                *, graph: Graph | None = None) -> Node:
    """An input whose value is fed at run time (``engine.run(..., {x: value})``, or by
    name: ``{"x": value}``).

    Parameters
    ----------
    name : str
        The node's name, unique in its graph; feeds and the command line find the
        placeholder by it.
    shape : sequence of int or None, or int, optional
        The static shape; ``None`` entries are dims known only at run time (a batch
        size). ``None`` (the default) means a scalar; an int ``n`` means ``(n,)``.
    dtype : dtype, optional
        The dtype of the fed value (default float64).
    graph : Graph, optional
        The graph to add the node to; by default the innermost ``with Graph()`` block's,
        else the default graph.

    Returns
    -------
    Node
        Shape ``shape`` and dtype ``dtype``. A fed value must have that rank, match the
        known dims and convert to ``dtype``; otherwise the run raises
        ``scheduler.FeedError`` naming the placeholder before any node runs.

    Notes
    -----
    Gradient: a placeholder is a leaf; ``gradients(y, [x])`` gives ``dy/dx`` for the
    fed value.
    """
    if not isinstance(name, str) or not name:
        raise GraphError(f"placeholder: name must be a non-empty string, got {name!r}")
    shape = () if shape is None else shape_argument(f"placeholder {name!r}", shape,
                                                    allow_unknown=True)
    dt = _dtype_argument(f"placeholder {name!r}", np.float64 if dtype is None else dtype)
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


def stop_gradient(x: Node, *, name: str | None = None) -> Node:
    """``x`` unchanged, but a constant to ``gradients``: no gradient flows through it.

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
    Gradient: none (``gradients`` does not walk past it).
    """
    return apply(StopGradient(), x, name=name)


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


def cast(x: Node, dtype: Any, *, name: str | None = None) -> Node:
    """``x`` converted to ``dtype`` (``x.astype(dtype)``, numpy's unsafe casting: floats
    to ints truncate, out-of-range values wrap). ``x.astype(dtype)`` builds the same.

    Parameters
    ----------
    x : Node or array_like
        Input.
    dtype : dtype
        The target dtype.
    name : str, optional
        Name of the new node. Without one, ``x`` itself is returned when it already has
        ``dtype``.

    Returns
    -------
    Node
        ``x``'s shape, dtype ``dtype``.

    Notes
    -----
    Gradient: ``grad`` cast back to ``x``'s dtype when ``x`` is floating or complex;
    none for an integer or bool ``x``.
    """
    dt = _dtype_argument("cast", dtype)
    if isinstance(x, Node) and x.dtype == dt and name is None:
        return x
    return apply(Cast(dtype=dt), x, name=name)


def _dtype_argument(what: str, dtype: Any) -> np.dtype:
    """``np.dtype(dtype)``, or a ``TypeError`` naming ``what`` and the bad value."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: dtype {dtype!r} is not a numpy dtype") from None
    if dt.kind not in "biufc":
        raise TypeError(f"{what}: dtype {dt} is not a bool or numeric dtype")
    return dt


class AddN(Op):
    """The sum of its inputs, added left to right (a fixed order, for bitwise
    reproducibility). Gradient contributions from several paths meet here."""

    name = "add_n"

    def infer(self, *xs):
        shape = broadcast(self.name, *(x.shape for x in xs))
        return shape, np.result_type(*(x.dtype for x in xs))

    def forward(self, *xs):
        if len(xs) == 1:  # a named add_n of one node
            return np.array(xs[0])
        total = np.add(xs[0], xs[1])
        for x in xs[2:]:
            total += x if total.shape == np.shape(x) else np.add(total, x)
        return total

    def bprop(self, inputs, output, grad, wanted):
        from .shape_ops import sum_to

        return tuple(sum_to(grad, x) if w else None for x, w in zip(inputs, wanted))


def add_n(xs: Sequence[Node], *, name: str | None = None) -> Node:
    """The elementwise sum of ``xs``, added left to right in one op.

    The order is fixed, so the result is bitwise the same on every executor and run;
    ``gradients`` sums the contributions that reach a node by several paths with it.

    Parameters
    ----------
    xs : sequence of Node or array_like
        At least one input; they broadcast together as in numpy.
    name : str, optional
        Name of the new node. Without one, a single input is returned as it is.

    Returns
    -------
    Node
        The broadcast shape of the inputs, in the dtype numpy promotes them to.

    Notes
    -----
    Gradient: ``grad`` for every input, summed back to each input's shape.
    """
    if isinstance(xs, Node) or not isinstance(xs, (list, tuple)):
        raise TypeError(f"add_n: xs must be a list or tuple of nodes, got {type(xs).__name__}")
    xs = list(xs)
    if not xs:
        raise ValueError("add_n needs at least one input")
    if len(xs) == 1 and name is None:
        return xs[0]
    return apply(AddN(), *xs, name=name)


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


def full_like(x: Node, fill: float, dtype: Any = None, *, name: str | None = None) -> Node:
    """An array of ``x``'s shape filled with ``fill`` (``np.full_like``).

    Parameters
    ----------
    x : Node
        The node whose shape the result takes (its values are not read).
    fill : scalar
        The value of every element.
    dtype : dtype, optional
        The result's dtype; by default ``x``'s.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        ``x``'s shape, dtype ``dtype``: a constant when the shape is static, else a
        node computed from ``x``'s run-time shape.

    Notes
    -----
    Gradient: none; the result does not depend on ``x``'s values.
    """
    if not isinstance(x, Node):
        raise TypeError(f"full_like: x must be a node, got {type(x).__name__}")
    dt = _dtype_argument("full_like", x.dtype if dtype is None else dtype)
    if is_known(x.shape):
        return constant(np.full(x.shape, fill, dtype=dt), name, graph=x.graph)
    return apply(FilledLike(fill=fill, dtype=dt), x, name=name)


def zeros_like(x: Node, dtype: Any = None, *, name: str | None = None) -> Node:
    """Zeros of ``x``'s shape (``np.zeros_like``); see :func:`full_like`.

    Parameters
    ----------
    x : Node
        The node whose shape the result takes (its values are not read).
    dtype : dtype, optional
        The result's dtype; by default ``x``'s.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        ``x``'s shape, dtype ``dtype``.

    Notes
    -----
    Gradient: none.
    """
    return full_like(x, 0, dtype, name=name)


def ones_like(x: Node, dtype: Any = None, *, name: str | None = None) -> Node:
    """Ones of ``x``'s shape (``np.ones_like``); see :func:`full_like`.

    Parameters
    ----------
    x : Node
        The node whose shape the result takes (its values are not read).
    dtype : dtype, optional
        The result's dtype; by default ``x``'s.
    name : str, optional
        Name of the new node; by default the op's name, made unique.

    Returns
    -------
    Node
        ``x``'s shape, dtype ``dtype``.

    Notes
    -----
    Gradient: none.
    """
    return full_like(x, 1, dtype, name=name)
