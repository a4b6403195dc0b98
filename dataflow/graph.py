"""The graph model: ``Graph`` (an append-only DAG) and ``Node`` (one immutable value in it).

Nodes are created in topological order, so a node's ``id`` (its creation index within
its graph) is larger than the ids of all its inputs. Every walk in this package relies
on that: sorting by ``id`` gives a topological order without recursion, and iterating
by ``id`` instead of over sets keeps results and new node ids deterministic.

``with Graph() as g:`` pushes ``g`` on a thread-local stack; leaf nodes (placeholders,
constants) go into the innermost graph, or into a process-wide default graph when no
``with`` block is active. Ops applied to existing nodes join their inputs' graph.

Names are unique within a graph: ``g["loss"]`` and ``g.get("loss")`` find a node by
name. A name given to an op is used as is; a node built without one is named after its
op (``tanh``, ``tanh_1``, ...), under the active ``g.name_scope(...)`` if any
(``gradients/tanh``).

The process-wide default graph keeps only the nodes that are still referenced (by the
program, or as inputs of referenced nodes): a long-running process that builds small
graphs outside any ``with`` block does not accumulate them. Its ids still only grow, so
creation order stays topological. A graph made with ``Graph()`` keeps every node for as
long as the graph lives, so its nodes can be looked up by name at any time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import weakref
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from scheduler.names import set_default_lookup

from .errors import GraphError, UnknownNameError
from .shapes import fmt

if TYPE_CHECKING:
    import networkx

    from .op import Op

_local = threading.local()
_default_graph: Graph | None = None
_default_lock = threading.Lock()


def _graph_stack() -> list[Graph]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def get_default_graph() -> Graph:
    """The graph new leaf nodes go into.

    Returns
    -------
    Graph
        The innermost ``with Graph()`` block of this thread, else the process-wide
        default graph.
    """
    stack = _graph_stack()
    if stack:
        return stack[-1]
    global _default_graph
    with _default_lock:
        if _default_graph is None:
            _default_graph = Graph(_keep_unreferenced=False)
        return _default_graph


@contextlib.contextmanager
def building_gradients() -> Iterator[None]:
    """Mark the nodes this thread creates inside the block as gradient nodes
    (:meth:`Graph.is_gradient`); ``dataflow.gradients`` builds its nodes inside one."""
    previous = getattr(_local, "gradients", False)
    _local.gradients = True
    try:
        yield
    finally:
        _local.gradients = previous


def reset_default_graph() -> Graph:
    """Replace the process-wide default graph by an empty one.

    Returns
    -------
    Graph
        The new, empty default graph.
    """
    global _default_graph
    with _default_lock:
        _default_graph = Graph(_keep_unreferenced=False)
        return _default_graph


def _lookup_in_default_graph(name: str) -> Node:
    """How a request made of names only finds its nodes (``scheduler.names``)."""
    graph = get_default_graph()
    node = graph.get(name)
    if node is None:
        where = "the graph of the innermost `with` block" if _graph_stack() else \
            "the default graph"
        raise LookupError(f"{where} ({graph.name!r}) has no node named {name!r}; a request "
                          "made of names only is looked up there (pass a node to look "
                          "names up in its graph)")
    return node


def check_name(name: object, what: str = "name") -> str:
    """``name`` if it is a non-empty string, else a ``TypeError`` naming ``what``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what} must be a non-empty string, got {name!r}")
    return name


class Graph:
    """An append-only DAG of :class:`Node`. Nodes never change once created.

    ``with Graph() as g:`` makes ``g`` the graph that new leaf nodes (placeholders,
    constants) go into on this thread; ops applied to existing nodes join their inputs'
    graph. In Jupyter a graph shows as a drawing (a summary when it is large).

    Parameters
    ----------
    name : str, optional
        A name for messages and drawings; ``"graph<N>"`` by default.
    _keep_unreferenced : bool, default True
        Keep every node for the graph's life (a graph you make). The process-wide
        default graph is made with ``False``: it holds its nodes weakly, so that nodes
        built outside any ``with Graph()`` block die with their last reference.

    Examples
    --------
    >>> import dataflow as df
    >>> with df.Graph("example") as g:
    ...     x = df.placeholder("x", (None, 3))
    ...     y = df.sum(x * 2.0)
    >>> len(g), [n.name for n in g.placeholders()]
    (4, ['x'])
    """

    _counter = itertools.count()

    def __init__(self, name: str | None = None, *, _keep_unreferenced: bool = True):
        if name is not None:
            check_name(name, "graph name")
        self.name = name or f"graph{next(Graph._counter)}"
        # A graph made by the user holds its nodes; the default graph holds them weakly
        # (see the module docstring), and then finds consumers by scanning.
        self._strong = _keep_unreferenced
        self._nodes: Any = [] if self._strong else weakref.WeakValueDictionary()
        self._consumers: list[list[Node]] = []
        self._names: Any = {} if self._strong else weakref.WeakValueDictionary()
        self._name_counts: dict[str, int] = {}
        self._scope_counts: dict[str, int] = {}
        self._next_id = 0
        self._scope = threading.local()
        # ids of the nodes built by ``gradients`` (membership tests only)
        self._gradient_ids: set[int] = set()
        self._lock = threading.Lock()

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> Graph:
        _graph_stack().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        stack = _graph_stack()
        if not stack or stack[-1] is not self:
            raise GraphError(f"graph {self.name!r} exited out of order")
        stack.pop()

    # -- contents --------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[Node, ...]:
        """All nodes, in creation (= topological) order."""
        return tuple(self._nodes) if self._strong else tuple(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __contains__(self, item: object) -> bool:
        """``node in g`` (the node belongs to ``g``) or ``"name" in g``."""
        if isinstance(item, str):
            return item in self._names
        return isinstance(item, Node) and item.graph is self

    def __repr__(self) -> str:
        return f"<Graph {self.name!r} with {len(self._nodes)} nodes>"

    def consumers(self, node: Node) -> tuple[Node, ...]:
        """The nodes that take ``node`` as an input.

        Parameters
        ----------
        node : Node
            A node of this graph.

        Returns
        -------
        tuple of Node
            Its consumers in creation order, each once.

        Raises
        ------
        GraphError
            If ``node`` is not a node of this graph.
        """
        self._check_member(node)
        if self._strong:
            return tuple(self._consumers[node.id])
        return tuple(n for n in self.nodes if n.id > node.id and node in n.inputs)

    def __getitem__(self, name: str) -> Node:
        """The node named ``name``; ``UnknownNameError`` (a ``KeyError``) if none."""
        return self.node_by_name(name)

    def get(self, name: str, default: Any = None) -> Any:
        """The node named ``name``, or ``default`` when the graph has none.

        Parameters
        ----------
        name : str
            A node name.
        default : object, optional
            What to return when no node has that name (``None``).

        Returns
        -------
        Node or object
        """
        if not isinstance(name, str):
            raise TypeError(f"node names are strings, got {name!r}")
        return self._names.get(name, default)

    def node_by_name(self, name: str) -> Node:
        """The node called ``name``.

        Parameters
        ----------
        name : str
            A node name (names are unique within a graph).

        Returns
        -------
        Node

        Raises
        ------
        UnknownNameError
            If no node of this graph has that name (a ``GraphError`` and a ``KeyError``).
        """
        node = self.get(name)
        if node is None:
            raise UnknownNameError(f"graph {self.name!r} has no node named {name!r}")
        return node

    def placeholders(self) -> tuple[Node, ...]:
        """The placeholder nodes (the graph's inputs), in creation order.

        A method, not a property: it selects from all the nodes on each call.

        Returns
        -------
        tuple of Node
        """
        return tuple(n for n in self.nodes if n.op.name == "placeholder")

    @contextmanager
    def name_scope(self, scope: str) -> Iterator[str]:
        """Name the nodes built inside the block ``scope/<op>``.

        Inside ``with g.name_scope("block"):`` nodes of ``g`` built without a name are
        named ``block/<op>`` (on this thread). Scopes nest (``outer/inner/<op>``); each
        ``with`` gets a scope of its own (``block``, then ``block_1``, ...), whose full
        prefix it yields. Names given explicitly are used as they are.

        Parameters
        ----------
        scope : str
            The scope's name.

        Yields
        ------
        str
            The scope's full prefix (without the trailing ``/``).
        """
        check_name(scope, "scope")
        outer = getattr(self._scope, "prefix", "")
        with self._lock:
            base = outer + scope
            count = self._scope_counts.get(base, 0)
            self._scope_counts[base] = count + 1
        prefix = (base if count == 0 else f"{base}_{count}") + "/"
        self._scope.prefix = prefix
        try:
            yield prefix[:-1]
        finally:
            self._scope.prefix = outer

    def _free_name(self, base: str) -> str:
        # Called with the lock held.
        count = self._name_counts.get(base, 0)
        name = base if count == 0 else f"{base}_{count}"
        while name in self._names:
            count += 1
            name = f"{base}_{count}"
        self._name_counts[base] = count + 1
        return name

    def _rename(self, node: Node, name: str, *, exact: bool = True) -> str:
        """Give ``node`` the name ``name`` (``exact``) or the first free one of ``name``,
        ``name_1``, ... and return it. Only for nodes that nobody else has seen yet
        (``gradients`` names its results this way before returning them)."""
        check_name(name, "name")
        self._check_member(node)
        with self._lock:
            if not exact:
                name = self._free_name(name)
            elif name in self._names:
                raise GraphError(f"graph {self.name!r} already has a node named {name!r}")
            del self._names[node.name]
            object.__setattr__(node, "name", name)
            self._names[name] = node
        return name

    def is_gradient(self, node: Node) -> bool:
        """Whether ``node`` was built by :func:`dataflow.gradients`.

        Parameters
        ----------
        node : Node
            A node of this graph.

        Returns
        -------
        bool
            True for the nodes a ``gradients`` call (or ``grad``, ``jacobian``,
            ``hessian_vector_product``) added, in this process; a graph loaded from a
            file has no such record (its gradient nodes are known by name only).
        """
        self._check_member(node)
        return node.id in self._gradient_ids

    def visualize(self, path: str | os.PathLike, *, fed: Iterable[Node] = (),
                  layout: str = "auto") -> str:
        """Draw the graph to a file.

        Nodes are coloured by role: forward (blue), gradient (orange, built by
        ``gradients``) and fed (green: placeholders and the nodes in ``fed``).

        Parameters
        ----------
        path : str or os.PathLike
            The file to write; its suffix, ``.svg``, ``.png`` or ``.pdf``, sets the format.
        fed : iterable of Node, optional
            Nodes to colour as fed besides the placeholders.
        layout : {"auto", "graphviz", "layered"}, default "auto"
            ``"graphviz"`` needs the ``dot`` program and the ``graphviz`` package;
            ``"layered"`` needs matplotlib; ``"auto"`` uses graphviz when ``dot`` is
            installed, else the layered layout. See :mod:`dataflow.visualize`.

        Returns
        -------
        str
            The path written.
        """
        from .visualize import render

        return render(self.nodes, path, fed=fed, layout=layout, title=self.name)

    def _repr_html_(self) -> str:
        """Jupyter view: a drawing of small graphs, a summary of large ones."""
        from .visualize import notebook_html

        return notebook_html(self.nodes, title=f"graph {self.name!r}")

    def _check_member(self, node: Node) -> None:
        if not isinstance(node, Node):
            raise GraphError(f"expected a Node, got {type(node).__name__}")
        if node.graph is not self:
            raise GraphError(f"node {node.name!r} belongs to graph {node.graph.name!r}, "
                             f"not {self.name!r}")

    def _add(self, op: Op, inputs: tuple[Node, ...], shape: tuple, dtype: np.dtype,
             name: str | None) -> Node:
        if name is not None and (type(name) is not str or not name):
            check_name(name, f"op {op.name}: name")
        prefix = getattr(self._scope, "prefix", "")
        with self._lock:
            if name is None:
                name = self._free_name(prefix + op.name)
            elif name in self._names:
                raise GraphError(f"graph {self.name!r} already has a node named {name!r}")
            node_id = self._next_id
            self._next_id = node_id + 1
            node = Node(self, node_id, name, op, inputs, shape, dtype)
            self._names[name] = node
            if getattr(_local, "gradients", False):
                self._gradient_ids.add(node.id)
            if self._strong:
                self._nodes.append(node)
                self._consumers.append([])
                for parent in dict.fromkeys(inputs):  # each distinct input once, in slot order
                    self._consumers[parent.id].append(node)
            else:
                self._nodes[node_id] = node
        return node

    # -- export ----------------------------------------------------------------------
    def to_networkx(self) -> networkx.MultiDiGraph:
        """The graph as networkx data.

        Returns
        -------
        networkx.MultiDiGraph
            Keyed by node name, with node attributes ``op``, ``shape`` and ``dtype``; an
            edge per input, parent to child, whose ``index`` is the input slot.
        """
        import networkx as nx

        g = nx.MultiDiGraph(name=self.name)
        nodes = self.nodes
        for node in nodes:
            g.add_node(node.name, op=node.op.name, shape=node.shape, dtype=str(node.dtype))
        for node in nodes:
            for slot, parent in enumerate(node.inputs):
                g.add_edge(parent.name, node.name, index=slot)
        return g

    def to_dot(self) -> str:
        """The graph as Graphviz DOT text.

        Returns
        -------
        str
            One box per node labelled with its name, op, shape and dtype, and one edge
            per input, parent to child. :meth:`visualize` draws a styled version.
        """
        lines = [f'digraph "{_dot_escape(self.name)}" {{', "  node [shape=box, fontsize=10];"]
        nodes = self.nodes
        for node in nodes:
            # Escape the parts, then join them with DOT's own line break ``\n``.
            label = _dot_escape(node.name) + "\\n" + _dot_escape(
                f"{node.op.name} {fmt(node.shape)} {node.dtype}")
            lines.append(f'  n{node.id} [label="{label}"];')
        for node in nodes:
            for parent in node.inputs:
                lines.append(f"  n{parent.id} -> n{node.id};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    """Text for inside a DOT double-quoted string: backslashes and quotes escaped, line
    breaks as ``\\n`` (a raw newline or a lone backslash would change the label)."""
    return (text.replace("\\", "\\\\").replace('"', '\\"')
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n"))


class Node:
    """One value in a graph: the output of ``op`` applied to ``inputs``.

    Immutable. ``==`` and ``hash`` are identity-based so that nodes can key feed dicts;
    arithmetic operators build new nodes (``x + 1``, ``2 * x``, ``x @ w``, ``x[1:3]``).
    Nodes are made by op functions (``df.placeholder``, ``df.tanh``, ...), never
    directly; in Jupyter a node shows as a drawing of itself and its ancestors.

    Attributes
    ----------
    graph : Graph
        The graph the node belongs to.
    id : int
        Its creation index in ``graph``: larger than the ids of all its inputs.
    name : str
        Its name, unique in ``graph``.
    op : Op
        The operation that computes it.
    inputs : tuple of Node
        The op's inputs, in slot order.
    shape : tuple
        Static shape; ``None`` marks a dimension known only at run time.
    dtype : numpy.dtype
        Static dtype.
    """

    __slots__ = ("graph", "id", "name", "op", "inputs", "shape", "dtype", "__weakref__")
    # Make numpy defer to our reflected operators: ``np.float64(2) * x`` builds a node.
    __array_ufunc__ = None

    graph: Graph
    id: int
    name: str
    op: Op
    inputs: tuple[Node, ...]
    shape: tuple
    dtype: np.dtype

    def __init__(self, graph: Graph, id: int, name: str, op: Op, inputs: tuple[Node, ...],
                 shape: tuple, dtype: np.dtype):
        set_ = object.__setattr__
        set_(self, "graph", graph)
        set_(self, "id", id)
        set_(self, "name", name)
        set_(self, "op", op)
        set_(self, "inputs", inputs)
        set_(self, "shape", shape)
        set_(self, "dtype", dtype)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"nodes are immutable (tried to set {key!r} on {self.name!r})")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"nodes are immutable (tried to delete {key!r} on {self.name!r})")

    def __repr__(self) -> str:
        return f"<Node {self.name!r} op={self.op.name} shape={fmt(self.shape)} dtype={self.dtype}>"

    def __reduce__(self) -> Any:
        raise TypeError("nodes are not picklable; save graphs with dataflow.save")

    @property
    def ndim(self) -> int:
        """Number of dimensions, ``len(node.shape)``."""
        return len(self.shape)

    def _repr_html_(self) -> str:
        """Jupyter view: the node and its ancestors, drawn when few, else summarised."""
        from .visualize import notebook_html

        return notebook_html(ancestors([self]), title=f"node {self.name!r} and its ancestors")

    def __iter__(self) -> Iterator[Node]:
        raise TypeError(f"node {self.name!r} is not iterable; index it explicitly")

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth value of node {self.name!r} is only known at run time; "
            "use df.where or compare with `is`"
        )

    # -- the execution layer's view of a node ---------------------------------------
    def __task__(self) -> Any:
        from .lowering import task_spec

        return task_spec(self)

    def __key_named__(self, name: str) -> Node:
        """The node called ``name`` in this node's graph: how the engine resolves fetches
        and feeds given by name (``scheduler.names``). ``UnknownNameError`` (a
        ``LookupError``) if there is none."""
        return self.graph.node_by_name(name)

    @staticmethod
    def __plan_rewrite__(fetch_keys: list, fed_keys: list, *, simplify: bool = True,
                         fuse: bool = False) -> tuple[list, list, dict]:
        """Simplify the graph before the engine compiles a plan (``dataflow.rewrite``),
        and with ``fuse``, fuse its elementwise nodes (``dataflow.fusion``)."""
        from .rewrite import plan_rewrite

        keys, fed, origin = plan_rewrite(fetch_keys, fed_keys) if simplify else \
            (list(fetch_keys), list(fed_keys), {})
        if not fuse:
            return keys, fed, origin
        from .fusion import fuse as fuse_elementwise

        keys, fed, fused_origin = fuse_elementwise(keys, fed)
        for new, old in fused_origin.items():
            fused_origin[new] = origin.get(old, old)
        return keys, fed, fused_origin or origin

    # -- operators (implemented in dataflow.ops; imported lazily to avoid a cycle) -------
    def __add__(self, other: Any) -> Node:
        return _ops().add(self, other)

    def __radd__(self, other: Any) -> Node:
        return _ops().add(other, self)

    def __sub__(self, other: Any) -> Node:
        return _ops().subtract(self, other)

    def __rsub__(self, other: Any) -> Node:
        return _ops().subtract(other, self)

    def __mul__(self, other: Any) -> Node:
        return _ops().multiply(self, other)

    def __rmul__(self, other: Any) -> Node:
        return _ops().multiply(other, self)

    def __truediv__(self, other: Any) -> Node:
        return _ops().divide(self, other)

    def __rtruediv__(self, other: Any) -> Node:
        return _ops().divide(other, self)

    def __pow__(self, other: Any) -> Node:
        return _ops().power(self, other)

    def __rpow__(self, other: Any) -> Node:
        return _ops().power(other, self)

    def __matmul__(self, other: Any) -> Node:
        return _ops().matmul(self, other)

    def __rmatmul__(self, other: Any) -> Node:
        return _ops().matmul(other, self)

    def __neg__(self) -> Node:
        return _ops().negative(self)

    def __pos__(self) -> Node:
        return self

    def __abs__(self) -> Node:
        return _ops().abs(self)

    def __getitem__(self, index: Any) -> Node:
        return _ops().getitem(self, index)

    def __lt__(self, other: Any) -> Node:
        return _ops().less(self, other)

    def __le__(self, other: Any) -> Node:
        return _ops().less_equal(self, other)

    def __gt__(self, other: Any) -> Node:
        return _ops().greater(self, other)

    def __ge__(self, other: Any) -> Node:
        return _ops().greater_equal(self, other)

    # ``==``/``!=`` stay identity-based (nodes are dict keys); use df.equal for values.
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    # -- numpy-style conveniences ----------------------------------------------------
    @property
    def T(self) -> Node:
        """``transpose(self)``: a new node (a property, as numpy spells it)."""
        return _ops().transpose(self)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Node:
        """``dataflow.sum(self, axis, keepdims)``.

        Parameters
        ----------
        axis : int, tuple of int or None, optional
            Axes to sum over; all by default.
        keepdims : bool, default False
            Keep the summed axes with length 1.

        Returns
        -------
        Node
        """
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Node:
        """``dataflow.mean(self, axis, keepdims)``.

        Parameters
        ----------
        axis : int, tuple of int or None, optional
            Axes to average over; all by default.
        keepdims : bool, default False
            Keep the averaged axes with length 1.

        Returns
        -------
        Node
        """
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape: Any) -> Node:
        """``dataflow.reshape(self, shape)``; ``x.reshape(2, 3)`` or ``x.reshape((2, 3))``.

        Parameters
        ----------
        *shape : int or tuple of int
            The new shape (one ``-1`` allowed), as separate ints or one tuple.

        Returns
        -------
        Node
        """
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def astype(self, dtype: Any) -> Node:
        """``dataflow.cast(self, dtype)``.

        Parameters
        ----------
        dtype : numpy dtype or str
            The dtype to convert to.

        Returns
        -------
        Node
        """
        return _ops().cast(self, dtype)


_ops_module: Any = None


def _ops() -> Any:
    """The op library, imported on first use (it imports this module)."""
    global _ops_module
    if _ops_module is None:
        from . import ops

        _ops_module = ops
    return _ops_module


def ancestors(nodes: Iterable[Node], cut: Container[int] = ()) -> list[Node]:
    """``nodes`` and all their ancestors, in id (= topological) order, found without
    recursion. The inputs of a node whose id is in ``cut`` (a fed node) are not followed."""
    seen: dict[int, Node] = {}
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen[node.id] = node
        if node.id not in cut:
            stack.extend(p for p in node.inputs if p.id not in seen)
    return [seen[i] for i in sorted(seen)]


# -- the seed's three subroutines -----------------------------------------------------

def get_operation(v: Node) -> Op:
    """The op that computes ``v``.

    Parameters
    ----------
    v : Node

    Returns
    -------
    Op
        ``v.op``.
    """
    if not isinstance(v, Node):
        raise GraphError(f"expected a Node, got {type(v).__name__}")
    return v.op


def get_inputs(v: Node, g: Graph | None = None) -> tuple[Node, ...]:
    """The parents of ``v``: its op's inputs.

    Parameters
    ----------
    v : Node
    g : Graph, optional
        When given, ``v`` must belong to it (else ``GraphError``).

    Returns
    -------
    tuple of Node
        ``v.inputs``, in slot order.
    """
    if not isinstance(v, Node):
        raise GraphError(f"expected a Node, got {type(v).__name__}")
    if g is not None:
        g._check_member(v)
    return v.inputs


def get_consumers(v: Node, g: Graph | None = None) -> tuple[Node, ...]:
    """The children of ``v``: the nodes that take it as an input.

    Parameters
    ----------
    v : Node
    g : Graph, optional
        The graph to look in; ``v.graph`` by default (``v`` must belong to it).

    Returns
    -------
    tuple of Node
        In creation order, each once.
    """
    if not isinstance(v, Node):
        raise GraphError(f"expected a Node, got {type(v).__name__}")
    return (v.graph if g is None else g).consumers(v)


set_default_lookup(_lookup_in_default_graph)
