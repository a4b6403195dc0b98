"""Ops: the unit of computation. Each op is one class holding its numpy forward, its
shape/dtype rule and its bprop side by side, and registering itself by name.

Writing your own op
-------------------
Subclass :class:`Op` (or call :func:`custom_op` with plain functions)::

    class Cube(df.Op):
        name = "my.cube"                          # registry name, unique

        def forward(self, x):                     # numpy in, numpy out
            return x * x * x

        def infer(self, x):                       # shape/dtype rule on input *nodes*;
            return x.shape, x.dtype               # this one is also the default

        def bprop(self, inputs, output, grad, wanted):   # returns nodes (symbolic)
            (x,) = inputs
            return (grad * 3.0 * df.square(x),)

    cube = lambda x: df.apply(Cube(), x)

``infer`` raises ``ShapeError`` for inputs that cannot go together; without it an op
is elementwise: the inputs' broadcast shape and promoted dtype. ``forward`` must keep
that rule: a run checks each result of a user-defined op against its node's shape
(the dims ``infer`` knows) and dtype, and a result that breaks it fails that node with
a ``NodeError`` naming it.

``bprop`` implements ``sum_i (grad_X op.f(inputs)_i) G_i`` of algorithm 6.5/6.6: given
the input nodes, the output node and the gradient ``grad`` with respect to the output,
it returns one node (or ``None`` for "no gradient") per input, shaped like that input.
``wanted[i]`` says whether input ``i`` needs its gradient at all, so an op can skip
building nodes nobody asked for. An op without ``bprop`` is allowed; asking for a
gradient through it raises :class:`GradientError` naming it. An op whose gradient is
always ``None`` (like ``stop_gradient``) sets ``stops_gradient = True``.

Ops with attributes (an axis, a shape) declare them in ``attr_names`` and receive them
as keyword arguments; two ops are interchangeable when their names and attrs are equal.
Custom ops are code: graph files can only name built-in ops, never load user code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import GradientError, GraphError, ShapeError
from .graph import Graph, Node, get_default_graph
from .shapes import broadcast

REGISTRY: dict[str, type[Op]] = {}


class Op:
    """Base class of every op. Subclasses set ``name`` and override what they need.

    An op is immutable; it holds its attributes (``attr_names``) and says how to
    compute its value (``forward``), its static shape and dtype (``infer``) and its
    gradient (``bprop``). See the module docstring for a worked example.

    Parameters
    ----------
    **attrs
        One keyword argument per name in the class's ``attr_names`` (an axis, a shape
        ...), no more and no fewer.

    Raises
    ------
    TypeError
        If an attribute is missing or unexpected.
    """

    name: ClassVar[str] = ""
    attr_names: ClassVar[tuple[str, ...]] = ()
    #: True for the ops this package ships; only these may be loaded from graph files.
    builtin: ClassVar[bool] = False
    #: True when the op's value is always a numpy array or numpy scalar, whatever numeric
    #: values it is given (numpy functions and ufuncs, feeds, constants); not for ops
    #: that hand a value on unchanged (stop_gradient) or user-defined ops.
    returns_numpy: ClassVar[bool] = False
    #: True when ``kernel()`` takes numpy values only (a C-level array method). Nodes
    #: whose inputs do not all come from ``returns_numpy`` ops run ``forward`` instead.
    kernel_takes_numpy_only: ClassVar[bool] = False
    #: True when ``bprop`` never gives any input a gradient (stop_gradient, masks,
    #: comparisons): ``gradients`` then does not walk past the op at all, so an op
    #: without a bprop upstream of it (``f(stop_gradient(x))``) is never asked for one.
    stops_gradient: ClassVar[bool] = False

    if TYPE_CHECKING:
        # The attributes named in ``attr_names`` are set per instance by ``__init__``;
        # for the type checker they are attributes of any type.
        def __getattr__(self, name: str) -> Any: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            existing = REGISTRY.get(name)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise GraphError(f"op name {name!r} is already registered by "
                                 f"{existing.__qualname__}")
            REGISTRY[name] = cls
            cls.builtin = cls.__module__.startswith("dataflow.")

    def __init__(self, **attrs: Any):
        missing = [a for a in self.attr_names if a not in attrs]
        extra = [a for a in attrs if a not in self.attr_names]
        if missing or extra:
            raise TypeError(f"op {self.name}: missing attrs {missing}, unexpected attrs {extra}")
        for key, value in attrs.items():
            object.__setattr__(self, key, value)

    # -- what subclasses implement ------------------------------------------------------
    def forward(self, *values: Any) -> Any:
        """Compute the op's value from its input values.

        Parameters
        ----------
        *values
            One numpy value per input node, in slot order.

        Returns
        -------
        numpy.ndarray or numpy scalar
            Of the shape and dtype that :meth:`infer` promised.
        """
        raise NotImplementedError(f"op {self.name} has no forward")

    def infer(self, *inputs: Node) -> tuple[tuple, np.dtype]:
        """The static shape and dtype of the output, checked while the graph is built.

        The default is elementwise: the inputs' broadcast shape and their promoted
        dtype (``forward`` is never called).

        Parameters
        ----------
        *inputs : Node
            The input nodes, in slot order.

        Returns
        -------
        tuple
            ``(shape, dtype)``; ``None`` in the shape marks an unknown dimension.

        Raises
        ------
        ShapeError
            If the inputs' shapes or dtypes cannot go together; the message names the op.
        """
        shape = broadcast(self.name, *(n.shape for n in inputs))
        return shape, np.result_type(*(n.dtype for n in inputs))

    def bprop(self, inputs: Sequence[Node], output: Node, grad: Node,
              wanted: Sequence[bool]) -> Sequence[Node | None]:
        """Build the gradient with respect to each input, as new nodes.

        Implements ``sum_i (grad_X op.f(inputs)_i) G_i`` of back-propagation
        (algorithms 6.5/6.6 of *Deep Learning*): vector-Jacobian products, symbolically.

        Parameters
        ----------
        inputs : sequence of Node
            The op's input nodes.
        output : Node
            The op's output node.
        grad : Node
            The gradient of the differentiated sum with respect to ``output``.
        wanted : sequence of bool
            Whether each input needs its gradient (skip building the others).

        Returns
        -------
        sequence of Node or None
            One per input, shaped like it; ``None`` for no gradient.

        Raises
        ------
        GradientError
            By default: the op has no gradient; the message names it.
        """
        raise GradientError(f"op {self.name!r} has no bprop, so no gradient can flow through it")

    def kernel(self) -> Callable[..., Any]:
        """The callable the engine runs on input values.

        Ops override it to hand over a numpy function directly and save a Python call
        per node; the default is :meth:`forward`.

        Returns
        -------
        callable
            Takes the input values, returns the output value.
        """
        return self.forward

    def flops(self, input_shapes: Sequence[tuple[int, ...]],
              output_shape: tuple[int, ...]) -> float:
        """Arithmetic operations one run of the op takes, for the engine's static cost
        hint (see ``dataflow.lowering.cost_hint``).

        Default: one per element read or written, as for elementwise ops, reductions
        and copies; ops whose work grows faster (``matmul``) override it.

        Parameters
        ----------
        input_shapes : sequence of tuple of int
            The inputs' static shapes.
        output_shape : tuple of int
            The output's static shape.

        Returns
        -------
        float
        """
        return float(sum(math.prod(s) for s in input_shapes) + math.prod(output_shape))

    #: the rate ``flops`` are done at, for the cost hint: plain numpy loops; BLAS-backed
    #: ops are much faster per operation
    flops_per_second: ClassVar[float] = 1e9

    # -- derived ------------------------------------------------------------------------
    @property
    def has_bprop(self) -> bool:
        """Whether the op defines a gradient (overrides :meth:`bprop`)."""
        return type(self).bprop is not Op.bprop

    def attrs(self) -> dict[str, Any]:
        """The op's attributes as a new dict, ``{name: value}`` in ``attr_names`` order.

        Returns
        -------
        dict
        """
        return {a: getattr(self, a) for a in self.attr_names}

    def key(self) -> tuple:
        """The op's identity for merging equal computations.

        Returns
        -------
        tuple
            Its name and attributes, in a hashable form: two ops with equal keys
            compute the same function.
        """
        return (self.name, tuple((k, _hashable(v)) for k, v in self.attrs().items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.attrs().items())
        return f"{self.name}({inner})"

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"ops are immutable (tried to set {key!r} on {self.name})")


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, slice):
        return ("slice", value.start, value.stop, value.step)
    if isinstance(value, np.dtype):
        return value.str
    return value


# -- building nodes -------------------------------------------------------------------

def apply(op: Op, *args: Any, name: str | None = None) -> Node:
    """Add ``op(*args)`` to the graph of its node arguments.

    Shapes and dtypes are checked statically (``op.infer``) before the node is made.

    Parameters
    ----------
    op : Op
        The operation.
    *args : Node, array_like or scalar
        Its inputs; values that are not nodes become constants (a Python scalar takes
        the dtype numpy would give it next to the node arguments).
    name : str, optional
        The new node's name; by default the op's name, numbered to stay unique.

    Returns
    -------
    Node
        The new node, in the graph of the node arguments (the default graph if none).

    Raises
    ------
    GraphError
        If the node arguments come from different graphs, or ``name`` is taken.
    ShapeError
        If the op's shape rule refuses the inputs.
    """
    graph: Graph | None = None
    like: np.dtype | None = None
    for arg in args:
        if isinstance(arg, Node):
            if like is None or like.kind == "b":
                like = arg.dtype  # a scalar next to a bool condition takes the data's dtype
            if graph is None:
                graph = arg.graph
            elif arg.graph is not graph:
                raise GraphError(
                    f"op {op.name}: inputs come from different graphs "
                    f"({graph.name!r} and {arg.graph.name!r})"
                )
    if graph is None:
        graph = get_default_graph()
    inputs = tuple(a if isinstance(a, Node) else lift(a, graph, like) for a in args)
    shape, dtype = op.infer(*inputs)
    return graph._add(op, inputs, tuple(shape), np.dtype(dtype), name)


def lift(value: Any, graph: Graph, like: np.dtype | None = None) -> Node:
    """A constant node for a non-node operand. A Python scalar takes the dtype numpy
    would give it next to ``like`` (so ``2 * x`` keeps float32 ``x`` in float32)."""
    from .ops.core import constant

    if isinstance(value, (bool, int, float, complex)) and like is not None:
        dtype = np.result_type(like, value)
        return constant(np.asarray(value, dtype=dtype), graph=graph)
    return constant(value, graph=graph)


def contiguous(x: Any) -> Any:
    """``x`` itself when it is C- or F-contiguous, else a C-ordered copy.

    Kernels that accumulate (reductions, matmul) take other paths, and round
    differently, on arrays that are neither; and a value that crosses to a worker
    process arrives packed in C order. Such kernels call this on their inputs, so that
    they give the same bits whichever executor ran the nodes before them."""
    if isinstance(x, np.ndarray) and not (x.flags.c_contiguous or x.flags.f_contiguous):
        return np.ascontiguousarray(x)
    return x


_dtype_cache: dict[tuple, np.dtype] = {}


def result_dtype(fn: Callable[..., Any], dtypes: Sequence[np.dtype]) -> np.dtype:
    """The dtype numpy gives ``fn`` on these input dtypes (found by probing 0-d arrays)."""
    # Bound methods (one per op instance) are not cached: the cache would keep every
    # op alive and grow with the graph. Numpy functions and ufuncs are few and shared.
    cacheable = not hasattr(fn, "__self__") or isinstance(fn, np.ufunc)
    key = (fn, *dtypes)
    out = _dtype_cache.get(key) if cacheable else None
    if out is None:
        with np.errstate(all="ignore"):
            out = np.asarray(fn(*[np.ones((), d) for d in dtypes])).dtype
        if cacheable:
            _dtype_cache[key] = out
    return out


def elementwise_infer(op: Op, inputs: Sequence[Node]) -> tuple[tuple, np.dtype]:
    shape = broadcast(op.name, *(n.shape for n in inputs))
    return shape, result_dtype(op.kernel(), [n.dtype for n in inputs])


# -- custom ops from plain functions ----------------------------------------------------

def custom_op(name: str, forward: Callable[..., Any],
              shape_rule: Callable[..., tuple[tuple, Any]] | None = None,
              bprop: Callable[..., Sequence[Node | None]] | None = None) -> Callable[..., Node]:
    """Define an op from functions and return a function that applies it.

    Parameters
    ----------
    name : str
        The op's registry name, unique (``"my.cube"``).
    forward : callable
        ``forward(*arrays) -> array``: the numpy computation.
    shape_rule : callable, optional
        ``shape_rule(*input_nodes) -> (shape, dtype)``: the static rule. The default is
        elementwise: the inputs' broadcast shape and their promoted dtype (``forward``
        is never called while the graph is built).
    bprop : callable, optional
        ``bprop(inputs, output, grad) -> tuple`` of one node (or ``None``) per input.
        Without it the op works forward and raises ``GradientError`` under
        ``gradients``.

    Returns
    -------
    callable
        ``f(*inputs, name=None) -> Node``; ``f.op`` is the op instance.

    Examples
    --------
    >>> import numpy as np, dataflow as df
    >>> cube = df.custom_op("doc.cube", forward=lambda x: x ** 3,
    ...                     bprop=lambda inputs, out, g: (g * 3.0 * df.square(inputs[0]),))
    >>> df.check_grads(lambda x: df.sum(cube(x)), [np.array([0.5, -1.0])])
    """
    if not name or not isinstance(name, str):
        raise ValueError("custom_op needs a non-empty name")
    namespace: dict[str, Any] = {"name": name, "__module__": "dataflow.custom"}

    def _forward(self: Op, *values: Any) -> Any:
        return forward(*values)

    namespace["forward"] = _forward
    if shape_rule is not None:
        def _infer(self: Op, *inputs: Node) -> tuple[tuple, np.dtype]:
            shape, dtype = shape_rule(*inputs)
            if not isinstance(shape, tuple):
                raise ShapeError(f"op {name}: shape rule returned {shape!r}, not a tuple")
            return shape, np.dtype(dtype)

        namespace["infer"] = _infer
    if bprop is not None:
        def _bprop(self: Op, inputs: Sequence[Node], output: Node, grad: Node,
                   wanted: Sequence[bool]) -> Sequence[Node | None]:
            return bprop(inputs, output, grad)

        namespace["bprop"] = _bprop
    cls: type[Op] = type(f"CustomOp[{name}]", (Op,), namespace)
    cls.builtin = False
    op = cls()

    def make(*args: Any, name: str | None = None) -> Node:
        return apply(op, *args, name=name)

    make.op = op  # type: ignore[attr-defined]
    make.__name__ = name.replace(".", "_")
    return make
