"""Graph rewrites: ``simplify(fetches)`` returns equivalent fetches in a new graph.

Graphs are immutable, so a rewrite never edits one: it walks the ancestors of the
fetches once, in id (= topological) order, and rebuilds each node in a fresh graph
from the already rebuilt inputs, applying these passes on the way:

- **dead-node removal**: only ancestors of the fetches are visited, and a final copy
  keeps only the rebuilt nodes the new fetches still need (placeholders that were
  ancestors are carried over with their names even when a rewrite made them unneeded,
  so ``mapping[x]`` always exists for them);
- **common subexpression elimination**: a node whose op (class, name and attrs, as
  ``Op.key()`` says) and inputs equal those of a node already built is that node,
  found with one dict lookup keyed by ``(op key, input ids)``; constants are merged by
  dtype, shape and bytes (so ``0.0`` and ``-0.0`` stay apart);
- **constant folding**: a node whose inputs are all constants is computed now with the
  op's kernel (the very function the engine would call) unless its result would have
  more than ``fold_limit`` elements, the kernel raises, or numpy would warn (divide by
  zero, overflow, invalid): those stay in the graph and behave at run time as before.
  A result larger than every input (a broadcast) is folded only up to ``SMALL``
  elements: beyond that it stays a run-time view rather than a plan-long constant;
- **algebraic identities**: ``x*1``, ``1*x``, ``x+0``, ``0+x``, ``x-0``, ``x/1`` become
  ``x`` (cast and ``broadcast_to`` added when the constant would have changed ``x``'s
  dtype or shape), ``x*0`` and ``0*x`` become zeros of the result's shape and dtype,
  ``-(-x)`` becomes ``x``, zero terms of ``add_n`` are dropped, a transpose of a
  transpose becomes one transpose (none when the permutations cancel), chains of
  reshapes and ``expand_dims`` become one reshape (none when the shape comes back), a
  ``broadcast_to`` that adds only size-1 axes becomes a reshape and one that follows
  another ``broadcast_to`` replaces it, and ``sum``/``mean``/``max``/``min`` over axes
  of size 1 become reshapes, so that a broadcast that gradients add and sum straight
  back to the original shape disappears. ("Back to the original shape" is an identity
  only when the broadcast made no copies: summing ``k > 1`` broadcast copies gives
  ``k * x``, and computing that as a product would round differently, so it is kept.)

Values: every rewrite gives bitwise the values the original graph gives, except these
documented IEEE corners, where the choice follows TensorFlow's grappler and Theano:

- ``x + 0`` and ``0 + x`` return ``x``, so ``-0.0 + 0.0`` gives ``-0.0`` where IEEE
  gives ``+0.0`` (the two compare equal); the same holds for a dropped ``add_n`` term,
  and for ``sum``/``mean`` over size-1 axes (numpy's sum of one ``-0.0`` is ``+0.0``).
- ``x * 0`` gives ``+0.0`` where IEEE gives ``NaN`` for an infinite or NaN ``x`` and
  ``-0.0`` for a negative ``x``. This rewrite is on for floating dtypes only with
  ``assume_finite=True`` (the default of ``simplify``); integer and boolean products
  are exact and always rewritten. The engine passes ``assume_finite=False`` when it
  compiles a plan: a run must propagate NaN and Inf as numpy would (``check_numerics``
  has to see them).

Nothing is reassociated or reordered, so sums round exactly as before. Gradients taken
of a simplified graph equal those of the original (a product by a constant zero no
longer depends on ``x``, whose gradient through it was that zero), bitwise except after
CSE: the gradients of merged nodes are then added before they are multiplied by the
shared local derivative (``(g1 + g2) * t'`` instead of ``g1 * t' + g2 * t'``), which
rounds differently. The engine simplifies graphs whose gradients are already built, so
its results are bitwise those of the unsimplified graph (up to the corners above).

Ops are assumed pure. An op class that sets ``stateful = True`` (a random generator,
say) is never merged, folded or rewritten. Everything here is iterative (no recursion
along the graph), deterministic (walks go by id; no set is iterated) and linear in the
number of nodes visited.

The engine applies :func:`plan_rewrite` (through ``Node.__plan_rewrite__``) when it
compiles a plan; see ``scheduler.Engine(simplify=True)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any

import numpy as np

from scheduler.plan import gc_paused

from .errors import GraphError
from .graph import Graph, Node, ancestors
from .op import Op
from .ops.core import AddN, Cast, Constant, FilledLike, Placeholder
from .ops.elementwise import Add, Divide, Multiply, Negative, Subtract
from .ops.reductions import Max, Mean, Min, Sum
from .ops.shape_ops import BroadcastTo, ExpandDims, Reshape, SumTo, Transpose
from .shapes import is_known, normalize_axes, product

#: results of constant folding with more elements than this stay computed at run time
FOLD_LIMIT = 1_000_000
#: a folded result larger than all its inputs (a broadcast, say) is kept only up to
#: this many elements; a bigger one stays a cheap run-time view instead of a big constant
SMALL = 4096

__all__ = ["FOLD_LIMIT", "plan_rewrite", "simplify"]


class _FedValue(Op):
    """Stands, in a rewritten graph, for a node whose value the run feeds: its
    ancestors are cut off and nothing about it is known but its shape and dtype."""

    attr_names = ("shape", "dtype")

    def infer(self) -> tuple[tuple, np.dtype]:
        return self.shape, self.dtype

    def forward(self) -> Any:
        raise RuntimeError("a fed value is fed, never computed")


# Named after the class exists, so that it is not registered: it never reaches a file.
_FedValue.name = "fed"


def rewritable(fetch_keys: Sequence[Any], fed_keys: Sequence[Any]) -> bool:
    """Whether a plan's keys are nodes of one graph, which a rewrite may rebuild (for
    anything else, the keys are compiled as they are)."""
    keys = [*fetch_keys, *fed_keys]
    if not fetch_keys or not all(isinstance(k, Node) for k in keys):
        return False
    graph = fetch_keys[0].graph
    return all(k.graph is graph for k in keys)


def copy_node(new: Graph, old: Node, images: dict[int, Node], fed: Container[int]) -> Node:
    """``old`` added to the rewritten graph ``new`` as it is, reading the images of its
    inputs; a fed computed node becomes a ``_FedValue`` (its inputs are not read)."""
    if old.id in fed and not isinstance(old.op, Placeholder):
        return new._add(_FedValue(shape=old.shape, dtype=old.dtype), (), old.shape, old.dtype,
                        old.name)
    return new._add(old.op, tuple(images[i.id] for i in old.inputs), old.shape, old.dtype,
                    old.name)


# -- the public function -------------------------------------------------------------

def simplify(fetches: Any, feeds: Iterable[Node] | None = None, *, return_mapping: bool = False,
             fold_limit: int = FOLD_LIMIT, assume_finite: bool = True,
             preserve_fetches: bool = False) -> Any:
    """Equivalent fetches made of nodes of a new, simplified graph.

    Common subexpressions are merged, constants folded and algebraic identities
    applied; the original graph is not changed. The engine does this itself when it
    compiles a plan (``Engine(simplify=False)`` turns it off).

    Parameters
    ----------
    fetches : Node, list, tuple or dict of them, nested
        What to simplify; ``None`` entries pass through.
    feeds : iterable of Node or mapping keyed by Node, optional
        Nodes whose values will be fed: they become opaque leaves (never merged,
        folded or looked through) and their ancestors are cut off, as in a run.
    return_mapping : bool, default False
        Also return a mapping from each original node whose value the new graph still
        holds (every ancestor placeholder included) to its new node: feed
        ``mapping[x]`` where you fed ``x``.
    fold_limit : int
        The largest folded constant, in elements.
    assume_finite : bool, default True
        Rewrite float ``x * 0`` to zeros (see the module docstring).
    preserve_fetches : bool, default False
        Rebuild each fetch with its own op (its inputs simplified), never as a constant
        or as another node by an identity, so fetched arrays stay fresh and writable as
        without rewriting (the engine does this).

    Returns
    -------
    object or tuple
        The fetches in the same structure, or ``(new_fetches, mapping)`` with
        ``return_mapping``.
    """
    nodes, pack = _flatten(fetches)
    fed = _fed_nodes(feeds)
    if not nodes:
        return (pack([]), {}) if return_mapping else pack([])
    result = _rewrite(nodes, fed, fold_limit=fold_limit, assume_finite=assume_finite,
                      preserve_fetches=preserve_fetches, keep_dependencies=False)
    new_fetches = pack([result.images[n.id] for n in nodes])
    if not return_mapping:
        return new_fetches
    mapping = {old: result.images[old.id] for old in result.order if old.id in result.images}
    return new_fetches, mapping


def plan_rewrite(fetch_keys: Sequence[Any], fed_keys: Sequence[Any]) -> tuple[list, list, dict]:
    """The engine's hook (``Node.__plan_rewrite__``): the simplified fetch keys (position
    for position), the new keys of the fed keys that the new graph reads, and
    ``{new key: original key}`` for every new node that stands for an original one
    (the plan reports and feeds by those).

    Fetches are preserved (see ``simplify``), but two fetches that compute the same
    thing are still merged into one node, computed once: the engine then hands each
    distinct fetch an array of its own (``scheduler.results``).

    A rewrite must not change which values a run needs fed, so that missing and
    ill-shaped feeds fail exactly as before: if the full rewrite leaves a placeholder
    or fed node that the fetches need unused, it is redone without the rewrites that
    drop dependencies (``x * 0``, dropped zero terms).
    Fed keys that the fetches never needed are left out (the plan ignores them anyway).
    """
    identity: tuple[list, list, dict] = (list(fetch_keys), list(fed_keys), {})
    if not rewritable(fetch_keys, fed_keys):
        return identity
    fed = {k.id: k for k in fed_keys}
    result = None
    for keep in (False, True):
        result = _rewrite(list(fetch_keys), fed, fold_limit=FOLD_LIMIT, assume_finite=False,
                          preserve_fetches=True, keep_dependencies=keep)
        if not result.lost:
            break
    if result is None or result.lost:
        return identity
    images = result.images
    origin: dict = {}
    for old in result.order:
        new = images.get(old.id)
        if new is not None and new not in origin:
            origin[new] = old
    new_fed = [images[k.id] for k in fed_keys if k.id in images]
    return [images[k.id] for k in fetch_keys], new_fed, origin


# -- structures of fetches -------------------------------------------------------------

def _flatten(fetches: Any) -> tuple[list[Node], Callable[[list], Any]]:
    """The nodes of a fetch structure in order, and a function that rebuilds the
    structure from replacement nodes given in the same order."""
    found: list[Node] = []

    def walk(obj: Any) -> Callable[[Any], Any]:
        if obj is None:
            return lambda it: None
        if isinstance(obj, Node):
            found.append(obj)
            return lambda it: next(it)
        if isinstance(obj, dict):
            items = [(k, walk(v)) for k, v in obj.items()]
            return lambda it: {k: f(it) for k, f in items}
        if isinstance(obj, (list, tuple)):
            parts = [walk(v) for v in obj]
            kind = type(obj)
            if kind is list:
                return lambda it: [f(it) for f in parts]
            if kind is tuple:
                return lambda it: tuple(f(it) for f in parts)
            if hasattr(kind, "_fields"):  # a namedtuple
                return lambda it: kind(*[f(it) for f in parts])
            return lambda it: kind([f(it) for f in parts])
        raise GraphError(f"simplify: fetches must be nodes, lists, tuples or dicts of them, "
                         f"got {type(obj).__name__}")

    build = walk(fetches)
    return found, lambda new: build(iter(new))


def _fed_nodes(feeds: Iterable[Node] | None) -> dict[int, Node]:
    fed: dict[int, Node] = {}
    for node in feeds or ():
        if not isinstance(node, Node):
            raise GraphError(f"simplify: feeds must be nodes, got {type(node).__name__}")
        fed[node.id] = node
    return fed


# -- the rewrite -----------------------------------------------------------------------

class _Result:
    __slots__ = ("graph", "order", "images", "lost")

    def __init__(self, graph: Graph, order: list[Node], images: dict[int, Node],
                 lost: list[Node]):
        self.graph = graph  # the new graph
        self.order = order  # the original nodes visited, by id
        self.images = images  # original id -> new node, for values the new graph holds
        self.lost = lost  # placeholders and fed nodes the new fetches no longer need


def _rewrite(nodes: list[Node], fed: dict[int, Node], *, fold_limit: int, assume_finite: bool,
             preserve_fetches: bool, keep_dependencies: bool) -> _Result:
    with gc_paused():
        return _rewrite_paused(nodes, fed, fold_limit=fold_limit, assume_finite=assume_finite,
                               preserve_fetches=preserve_fetches,
                               keep_dependencies=keep_dependencies)


def _rewrite_paused(nodes: list[Node], fed: dict[int, Node], *, fold_limit: int,
                    assume_finite: bool, preserve_fetches: bool,
                    keep_dependencies: bool) -> _Result:
    graph = nodes[0].graph
    for node in [*nodes, *fed.values()]:
        if not isinstance(node, Node):
            raise GraphError(f"simplify: expected nodes, got {type(node).__name__}")
        if node.graph is not graph:
            raise GraphError(f"simplify: node {node.name!r} belongs to graph {node.graph.name!r}, "
                             f"not {graph.name!r}")
    order = ancestors(nodes, fed)
    preserve = {n.id for n in nodes} if preserve_fetches else set()

    builder = _Builder(graph, fed, fold_limit=fold_limit, assume_finite=assume_finite,
                       keep_dependencies=keep_dependencies)
    staged = builder.run(order, preserve)
    roots = [staged[n.id] for n in nodes]

    # Liveness in the staging graph, from the fetches: rewrites bypass nodes built earlier.
    staging = builder.graph.nodes
    live = bytearray(len(staging))
    for r in roots:
        live[r.id] = 1
    for i in range(len(staging) - 1, -1, -1):
        if live[i]:
            for p in staging[i].inputs:
                live[p.id] = 1
    leaves = [n for n in order if isinstance(n.op, Placeholder) or n.id in fed]
    lost = [n for n in leaves if not live[staged[n.id].id]]
    for n in leaves:  # carried over even when unneeded, so that they can still be fed
        if isinstance(n.op, Placeholder):
            live[staged[n.id].id] = 1

    if all(live):  # nothing was bypassed: the staging graph is the result
        return _Result(builder.graph, order, dict(staged), lost)
    new_graph = Graph(builder.graph.name)
    copies: dict[int, Node] = {}
    for node in staging:
        if live[node.id]:
            copies[node.id] = new_graph._add(node.op, tuple(copies[p.id] for p in node.inputs),
                                             node.shape, node.dtype, node.name)
    images = {old_id: copies[n.id] for old_id, n in staged.items() if n.id in copies}
    return _Result(new_graph, order, images, lost)


_UNKNOWN = object()


class _Builder:
    """Rebuilds nodes in a staging graph with CSE, folding and the algebraic rules."""

    def __init__(self, source: Graph, fed: dict[int, Node], *, fold_limit: int,
                 assume_finite: bool, keep_dependencies: bool):
        self.graph = Graph(f"{source.name}.simplified")
        self.fed = fed
        self.fold_limit = fold_limit
        self.assume_finite = assume_finite
        self.keep_dependencies = keep_dependencies
        self.reserved: set[str] = set()
        self.name_counts: dict[str, int] = {}
        self.cse: dict[tuple, Node] = {}
        self.constants: dict[tuple, list[Node]] = {}
        self.fills: dict[int, Any] = {}
        #: per staging node: whether it depends on a placeholder, a fed value or an op
        #: without inputs (what the rewrites must not drop when keep_dependencies is set)
        self.variable: list[bool] = []
        self.rules: dict[type, Callable[..., Node | None]] = {
            Add: self._add, Subtract: self._subtract, Multiply: self._multiply,
            Divide: self._divide, Negative: self._negative, AddN: self._add_n,
            Transpose: self._transpose, Reshape: self._reshape, ExpandDims: self._expand_dims,
            BroadcastTo: self._broadcast_to, SumTo: self._sum_to, Cast: self._cast,
            Sum: self._unit_reduction, Mean: self._unit_reduction,
            Max: self._unit_reduction, Min: self._unit_reduction,
        }

    # -- the walk --------------------------------------------------------------------------
    def run(self, order: list[Node], preserve: set[int]) -> dict[int, Node]:
        self.reserved = {n.name for n in order}
        images: dict[int, Node] = {}
        for old in order:
            op = old.op
            if isinstance(op, Placeholder):
                new = self._new(op, (), old.shape, old.dtype, old.name, variable=True)
            elif old.id in self.fed:
                new = self._new(_FedValue(shape=old.shape, dtype=old.dtype), (), old.shape,
                                old.dtype, old.name, variable=True)
            elif isinstance(op, Constant):
                new = self._constant(op.value, old.name, op)
            elif not old.inputs:  # an op without inputs: opaque (it may not be pure)
                new = self._new(op, (), old.shape, old.dtype, old.name, variable=True)
            else:
                inputs = tuple(images[p.id] for p in old.inputs)
                new = self.build(op, inputs, old.name, simplify=old.id not in preserve)
            images[old.id] = new
        return images

    def build(self, op: Op, inputs: tuple[Node, ...], name: str | None = None, *,
              simplify: bool = True) -> Node:
        """``op(*inputs)``, simplified, folded or found again when possible."""
        shape, dtype = op.infer(*inputs)
        shape, dtype = tuple(shape), np.dtype(dtype)
        pure = not getattr(op, "stateful", False)
        if simplify and pure:
            rule = self.rules.get(type(op))
            if rule is not None:
                out = rule(op, inputs, shape, dtype)
                if out is not None and out.shape == shape and out.dtype == dtype:
                    return out
            if all(isinstance(i.op, Constant) for i in inputs):
                out = self._fold(op, inputs, shape, dtype, name)
                if out is not None:
                    return out
        key = None
        if pure:
            key = (type(op), op.key(), tuple(i.id for i in inputs))
            try:
                hit = self.cse.get(key)
            except TypeError:  # an attr that cannot be hashed: no merging for this op
                key = hit = None
            if hit is not None:
                return hit
        node = self._new(op, inputs, shape, dtype, name)
        if key is not None:
            self.cse[key] = node
        return node

    def _new(self, op: Op, inputs: tuple[Node, ...], shape: tuple, dtype: np.dtype,
             name: str | None, variable: bool | None = None) -> Node:
        node = self.graph._add(op, inputs, shape, dtype, self._name(name, op))
        if variable is None:
            variable = any(self.variable[i.id] for i in inputs)
        self.variable.append(variable)
        return node

    def _name(self, name: str | None, op: Op) -> str:
        """``name`` if still free; else a fresh name that no original node has."""
        names = self.graph._names
        if name is not None and name not in names:
            return name
        base = op.name or "node"
        k = self.name_counts.get(base, 0)
        while True:
            candidate = base if k == 0 else f"{base}_{k}"
            k += 1
            if candidate not in names and candidate not in self.reserved:
                break
        self.name_counts[base] = k
        return candidate

    # -- constants -------------------------------------------------------------------------
    def _constant(self, value: np.ndarray, name: str | None = None,
                  op: Constant | None = None) -> Node:
        """The one constant node holding exactly these bytes (dtype and shape included)."""
        contiguous = np.ascontiguousarray(value)
        digest = hashlib.blake2b(contiguous.data, digest_size=16).digest()
        key = (value.dtype.str, value.shape, digest)
        same = self.constants.setdefault(key, [])
        for node in same:
            if node.op.value.tobytes() == value.tobytes():
                return node
        if op is None:
            array = np.array(value)  # a private, read-only copy (value may be a view)
            array.flags.writeable = False
            op = Constant(value=array)
        node = self._new(op, (), op.value.shape, op.value.dtype, name, variable=False)
        same.append(node)
        return node

    def _fold(self, op: Op, inputs: tuple[Node, ...], shape: tuple, dtype: np.dtype,
              name: str | None) -> Node | None:
        size = product(shape)  # None when a dimension is unknown
        if not inputs or size is None:
            return None
        if size > self.fold_limit or (size > SMALL and size > max(i.op.value.size for i in inputs)):
            return None
        try:
            # Anything numpy would warn about at run time stays for run time.
            with np.errstate(divide="raise", over="raise", invalid="raise"):
                value = op.kernel()(*[i.op.value for i in inputs])
        except Exception:  # noqa: BLE001 - the node fails (or warns) at run time, as before
            return None
        if not isinstance(value, (np.ndarray, np.generic)):
            return None
        value = np.asarray(value)
        if value.shape != shape or value.dtype != dtype:
            return None
        return self._constant(value, name)

    def _zeros(self, shape: tuple, dtype: np.dtype) -> Node | None:
        size = product(shape)  # None when a dimension is unknown
        if size is None:
            return None
        if size <= SMALL:
            return self._constant(np.zeros(shape, dtype))
        return self.build(BroadcastTo(shape=shape), (self._constant(np.zeros((), dtype)),))

    def _fill(self, node: Node) -> Any:
        """The one value every element of ``node`` holds, if known now, else None."""
        fill = self.fills.get(node.id, _UNKNOWN)
        if fill is not _UNKNOWN:
            return fill
        fill = None
        op = node.op
        source = node
        if isinstance(op, (BroadcastTo, Reshape, ExpandDims, Transpose)):
            source = node.inputs[0]  # one level: chains of these are collapsed anyway
        if isinstance(source.op, Constant):
            value = source.op.value
            if value.size:
                first = value.reshape(-1)[0]
                if bool(np.all(value == first)):
                    fill = first
        elif isinstance(source.op, FilledLike):
            fill = np.asarray(source.op.fill, dtype=source.op.dtype)[()]
        self.fills[node.id] = fill
        return fill

    def _is(self, node: Node, value: int) -> bool:
        fill = self._fill(node)
        return fill is not None and bool(fill == value)

    def _may_drop(self, *nodes: Node) -> bool:
        return not self.keep_dependencies or not any(self.variable[n.id] for n in nodes)

    # -- helpers for the rules -------------------------------------------------------------
    def _conform(self, x: Node, shape: tuple, dtype: np.dtype) -> Node | None:
        """``x`` cast to ``dtype`` and broadcast to ``shape`` (exactly what adding a
        zero or multiplying by a one of that shape and dtype would have done)."""
        if x.dtype != dtype:
            x = self.build(Cast(dtype=dtype), (x,))
        if x.shape != shape:
            if not is_known(shape):
                return None
            x = self.build(BroadcastTo(shape=shape), (x,))
        return x

    def _neutral(self, x: Node, c: Node, shape: tuple, dtype: np.dtype, value: int) -> Node | None:
        """``x`` for ``x op c`` when every element of ``c`` is ``op``'s neutral ``value``."""
        if not self._is(c, value):
            return None
        # c's run-time shape must be its static one (or x's), or it could broadcast x further.
        if not (is_known(c.shape) or (isinstance(c.op, FilledLike) and c.inputs[0] is x)):
            return None
        if not self._may_drop(c):
            return None
        return self._conform(x, shape, dtype)

    def _reshape_to(self, x: Node, shape: tuple) -> Node | None:
        if x.shape == shape:
            return x
        if sum(d is None for d in shape) > 1:
            return None
        return self.build(Reshape(shape=tuple(-1 if d is None else d for d in shape)), (x,))

    # -- the rules: each returns the replacement, or None -----------------------------------
    def _add(self, op, inputs, shape, dtype):
        x, y = inputs
        out = self._neutral(x, y, shape, dtype, 0)
        return out if out is not None else self._neutral(y, x, shape, dtype, 0)

    def _subtract(self, op, inputs, shape, dtype):
        x, y = inputs
        return self._neutral(x, y, shape, dtype, 0)

    def _multiply(self, op, inputs, shape, dtype):
        x, y = inputs
        out = self._neutral(x, y, shape, dtype, 1)
        if out is None:
            out = self._neutral(y, x, shape, dtype, 1)
        if out is None and (self._is(y, 0) or self._is(x, 0)):
            out = self._zero_product(x, y, shape, dtype)
        return out

    def _zero_product(self, x: Node, y: Node, shape: tuple, dtype: np.dtype) -> Node | None:
        if dtype.kind in "fc" and not self.assume_finite:
            return None
        if not (is_known(x.shape) and is_known(y.shape)) or not self._may_drop(x, y):
            return None
        return self._zeros(shape, dtype)

    def _divide(self, op, inputs, shape, dtype):
        x, y = inputs
        return self._neutral(x, y, shape, dtype, 1)

    def _negative(self, op, inputs, shape, dtype):
        (x,) = inputs
        return x.inputs[0] if isinstance(x.op, Negative) else None

    def _add_n(self, op, inputs, shape, dtype):
        # Only when every term already has the result's dtype: a dropped term of a
        # wider dtype would move the point where the running sum is promoted.
        if any(i.dtype != dtype for i in inputs):
            return None
        kept = [i for i in inputs
                if not (self._is(i, 0) and is_known(i.shape) and self._may_drop(i))]
        if len(kept) == len(inputs):
            return None
        if not kept:
            return self._zeros(shape, dtype)
        total = kept[0] if len(kept) == 1 else self.build(AddN(), tuple(kept))
        return self._conform(total, shape, dtype)

    def _transpose(self, op, inputs, shape, dtype):
        (x,) = inputs
        n = len(x.shape)
        outer = _permutation(op.axes, n)
        if outer == tuple(range(n)):
            return x
        if isinstance(x.op, Transpose):
            inner = _permutation(x.op.axes, n)
            composed = tuple(inner[i] for i in outer)
            source = x.inputs[0]
            if composed == tuple(range(n)):
                return source
            return self.build(Transpose(axes=composed), (source,))
        return None

    def _reshape(self, op, inputs, shape, dtype):
        x = inputs[0]
        if is_known(shape) and x.shape == shape:
            return x
        if isinstance(x.op, (Reshape, ExpandDims)) and self._may_drop(*x.inputs[1:]):
            source = x.inputs[0]
            if is_known(shape) and source.shape == shape:
                return source
            return self.build(Reshape(shape=op.shape), (source, *inputs[1:]))
        return None

    def _expand_dims(self, op, inputs, shape, dtype):
        (x,) = inputs
        if isinstance(x.op, (Reshape, ExpandDims)) and is_known(shape) \
                and self._may_drop(*x.inputs[1:]):
            source = x.inputs[0]
            if source.shape == shape:
                return source
            return self.build(Reshape(shape=shape), (source,))
        return None

    def _broadcast_to(self, op, inputs, shape, dtype):
        x = inputs[0]
        if is_known(shape) and x.shape == shape:
            return x
        if is_known(shape) and is_known(x.shape) and product(shape) == product(x.shape):
            return self.build(Reshape(shape=shape), (x,))  # only size-1 axes were added
        if op.shape is not None and isinstance(x.op, BroadcastTo) and x.op.shape is not None:
            return self.build(BroadcastTo(shape=op.shape), (x.inputs[0],))
        return None

    def _sum_to(self, op, inputs, shape, dtype):
        g = inputs[0]
        return g if is_known(shape) and g.shape == shape else None

    def _cast(self, op, inputs, shape, dtype):
        (x,) = inputs
        return x if x.dtype == dtype else None

    def _unit_reduction(self, op, inputs, shape, dtype):
        """A reduction over axes of size 1 only: a reshape (the one element is the sum,
        mean, max and min, exactly; numpy starts a reduction from the first element)."""
        (x,) = inputs
        axes = normalize_axes(op.name, op.axis, len(x.shape))
        if not all(x.shape[a] == 1 for a in axes):
            return None
        if x.dtype != dtype:
            x = self.build(Cast(dtype=dtype), (x,))
        return self._reshape_to(x, shape)


def _permutation(axes: Sequence[int] | None, n: int) -> tuple[int, ...]:
    return tuple(range(n))[::-1] if axes is None else tuple(int(a) for a in axes)
