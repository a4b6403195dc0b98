"""The graph model: ``Graph`` (an append-only DAG) and ``Node`` (one immutable value in it).

Nodes are created in topological order, so a node's ``id`` (its creation index within
its graph) is larger than the ids of all its inputs. Every walk in this package relies
on that: sorting by ``id`` gives a topological order without recursion, and iterating
by ``id`` instead of over sets keeps results and new node ids deterministic.

``with Graph() as g:`` pushes ``g`` on a thread-local stack; leaf nodes (placeholders,
constants) go into the innermost graph, or into a process-wide default graph when no
``with`` block is active. Ops applied to existing nodes join their inputs' graph.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GraphError
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
    """The innermost ``with Graph()`` of this thread, else the process-wide default graph."""
    stack = _graph_stack()
    if stack:
        return stack[-1]
    global _default_graph
    with _default_lock:
        if _default_graph is None:
            _default_graph = Graph()
        return _default_graph


def reset_default_graph() -> Graph:
    """Replace the process-wide default graph by an empty one and return it."""
    global _default_graph
    with _default_lock:
        _default_graph = Graph()
        return _default_graph


class Graph:
    """An append-only DAG of :class:`Node`. Nodes never change once created."""

    _counter = itertools.count()

    def __init__(self, name: str | None = None):
        self.name = name or f"graph{next(Graph._counter)}"
        self._nodes: list[Node] = []
        self._consumers: list[list[Node]] = []
        self._names: dict[str, Node] = {}
        self._name_counts: dict[str, int] = {}
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
        return tuple(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(tuple(self._nodes))

    def __contains__(self, node: object) -> bool:
        return isinstance(node, Node) and node.graph is self

    def __repr__(self) -> str:
        return f"<Graph {self.name!r} with {len(self._nodes)} nodes>"

    def consumers(self, node: Node) -> tuple[Node, ...]:
        """The nodes that take ``node`` as an input, in creation order (each once)."""
        self._check_member(node)
        return tuple(self._consumers[node.id])

    def node_by_name(self, name: str) -> Node:
        try:
            return self._names[name]
        except KeyError:
            raise GraphError(f"graph {self.name!r} has no node named {name!r}") from None

    def placeholders(self) -> tuple[Node, ...]:
        return tuple(n for n in self._nodes if n.op.name == "placeholder")

    def _check_member(self, node: Node) -> None:
        if not isinstance(node, Node):
            raise GraphError(f"expected a Node, got {type(node).__name__}")
        if node.graph is not self:
            raise GraphError(f"node {node.name!r} belongs to graph {node.graph.name!r}, "
                             f"not {self.name!r}")

    def _add(self, op: Op, inputs: tuple[Node, ...], shape: tuple, dtype: np.dtype,
             name: str | None) -> Node:
        with self._lock:
            if name is None:
                base = op.name
                count = self._name_counts.get(base, 0)
                name = base if count == 0 else f"{base}_{count}"
                while name in self._names:
                    count += 1
                    name = f"{base}_{count}"
                self._name_counts[base] = count + 1
            elif name in self._names:
                raise GraphError(f"graph {self.name!r} already has a node named {name!r}")
            node = Node(self, len(self._nodes), name, op, inputs, shape, dtype)
            self._nodes.append(node)
            self._consumers.append([])
            self._names[name] = node
            for parent in dict.fromkeys(inputs):  # each distinct input once, in slot order
                self._consumers[parent.id].append(node)
        return node

    # -- export ----------------------------------------------------------------------
    def to_networkx(self) -> networkx.MultiDiGraph:
        """A ``networkx.MultiDiGraph`` keyed by node name; edge ``index`` is the input slot."""
        import networkx as nx

        g = nx.MultiDiGraph(name=self.name)
        for node in self._nodes:
            g.add_node(node.name, op=node.op.name, shape=node.shape, dtype=str(node.dtype))
        for node in self._nodes:
            for slot, parent in enumerate(node.inputs):
                g.add_edge(parent.name, node.name, index=slot)
        return g

    def to_dot(self) -> str:
        """Graphviz DOT text: one box per node (name, op, shape, dtype), edges parent -> child."""
        lines = [f'digraph "{_dot_escape(self.name)}" {{', "  node [shape=box, fontsize=10];"]
        for node in self._nodes:
            # Escape the parts, then join them with DOT's own line break ``\n``.
            label = _dot_escape(node.name) + "\\n" + _dot_escape(
                f"{node.op.name} {fmt(node.shape)} {node.dtype}")
            lines.append(f'  n{node.id} [label="{label}"];')
        for node in self._nodes:
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
        return len(self.shape)

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
        return _ops().transpose(self)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Node:
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Node:
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape: Any) -> Node:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def astype(self, dtype: Any) -> Node:
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
    """The op that computes ``v``."""
    if not isinstance(v, Node):
        raise GraphError(f"expected a Node, got {type(v).__name__}")
    return v.op


def get_inputs(v: Node, g: Graph | None = None) -> tuple[Node, ...]:
    """The parents of ``v`` (the op's inputs, in slot order)."""
    if not isinstance(v, Node):
        raise GraphError(f"expected a Node, got {type(v).__name__}")
    if g is not None:
        g._check_member(v)
    return v.inputs


def get_consumers(v: Node, g: Graph | None = None) -> tuple[Node, ...]:
    """The children of ``v`` in ``g``: the nodes that take ``v`` as an input."""
    if not isinstance(v, Node):
        raise GraphError(f"expected a Node, got {type(v).__name__}")
    return (v.graph if g is None else g).consumers(v)
