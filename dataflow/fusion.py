"""Elementwise fusion: groups of elementwise nodes become one compiled loop.

``fuse(fetch_keys, fed_keys)`` rewrites a graph (into a new one, as ``rewrite.py``
does) so that each maximal group of fusable elementwise nodes is one node whose kernel
computes the group's whole expression element by element: a numpy ufunc made by
numba's ``vectorize`` from the expression's source (``Engine(fuse=True)`` applies it
when a plan is compiled). Unfused, an expression like ``(x * y + 0.5) * g - x * t``
makes one pass over memory and allocates one temporary per op; fused, it reads each
input once, writes the result once, keeps the intermediates in registers, and LLVM
vectorizes the loop for the CPU it runs on. Being a ufunc, a fused kernel broadcasts
like numpy and can write into a dying input's buffer (the engine's buffer reuse).

A group is a node that must be computed (fetched, or read by a node outside any
kernel) and the fusable producers above it, up to ``MAX_OPS`` ops and ``MAX_INPUTS``
inputs (a ufunc takes a bounded number of operands), so a long chain becomes several
kernels. Its kernel has one output, which numba's ufuncs need, and computes each
member once, in statements (``t0 = i0 - i1; t1 = t0 * t0; ...``), so a value used
twice inside costs once. A cheap producer that several kernels read is computed again
in each of them rather than written to memory and read back (as XLA does): these
loops are bound by memory traffic, not by a few more flops; so a forward pass and its
gradient often need only their transcendental ops and a few kernels. Constants enter
the source as literals of their dtype (a 0-d input would make the loop strided, and
numba vectorizes only unit-stride loops). Groups of one op stay numpy's ufuncs.
Arrays of fewer than ``MIN_SIZE`` elements (or of shapes not known statically) are not
grouped here: on them an op costs its call, not its memory traffic, and ``fuse``'s
second pass (``fusion_regions.py``) makes whole regions of them one call each.

Fusable: the ops of ``TEMPLATES`` (arithmetic, ``abs``, ``sqrt``, ``where``,
``add_n``, and ``broadcast_to``, which the kernel's own broadcasting replaces when the
result keeps its shape) on float32 or float64 values whose inputs have the node's dtype
(``where``'s condition: bool), so the loop computes in the dtype numpy would. These
are all exactly rounded in IEEE arithmetic (numba compiles without fast-math, so
nothing is reassociated or contracted into fused multiply-adds), so a fused plan gives
bitwise the unfused plan's values, on every executor and every run, with one
exception: the sign (and payload) of a NaN, which LLVM treats as unspecified (it folds
``-x + y`` into ``y - x``, which keeps the sign of a NaN ``x`` that numpy's
``negative`` flips); a NaN stays a NaN, at the same places. Transcendental
functions (``exp``, ``tanh``, ...) stay numpy's: its vectorized implementations are
several times faster than the C library's scalar ones a compiled loop would call,
and round differently in the last bits. Floating-point errors (a division by zero)
give the same values and numpy's warning (or error, under ``np.errstate``), which names
the kernel (``divide by zero encountered in fused``): numpy checks the processor's
flags after any ufunc's loop, a compiled one's too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .graph import Graph, Node, ancestors
from .kernel_cache import compile_kernel
from .op import Op
from .ops.core import AddN, Constant, Placeholder
from .ops.elementwise import Abs, Add, Divide, Multiply, Negative, Sqrt, Square, Subtract, Where
from .ops.shape_ops import BroadcastTo
from .rewrite import copy_node, rewritable
from .shapes import product

__all__ = ["MAX_INPUTS", "MAX_OPS", "MIN_SIZE", "TEMPLATES", "CompiledOp", "FusedElementwise",
           "FusedKernel", "fuse"]

#: the most ops and distinct inputs one fused kernel takes
MAX_OPS = 64
MAX_INPUTS = 16
#: groups whose result has fewer elements than this (or a shape not known statically)
#: are not fused: compiling a kernel costs more than they would save
MIN_SIZE = 65_536

#: the source of each fusable op, its inputs' expressions as ``{0}``, ``{1}``, ...
#: (``add_n`` is written by ``_fused_op``: ``((x0 + x1) + x2) + ...``, its order)
TEMPLATES: dict[type, str] = {
    Add: "({0} + {1})",
    Subtract: "({0} - {1})",
    Multiply: "({0} * {1})",
    Divide: "({0} / {1})",
    Negative: "(-{0})",
    Square: "({0} * {0})",
    Abs: "abs({0})",
    Sqrt: "np.sqrt({0})",
    Where: "({1} if {0} else {2})",
    AddN: "",
    BroadcastTo: "{0}",  # the kernel broadcasts its inputs itself
}

_TYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
          np.dtype(np.bool_): "boolean"}

_MISSING = ("Engine(fuse=True) compiles fused kernels with numba, which is not installed: "
            "pip install 'dataflow-graph-engine[fusion]'")


@functools.lru_cache(maxsize=1024)
def _compiled_ufunc(params: tuple[str, ...], expression: str, signature: str) -> Any:
    """The ufunc of one kernel body (``t0 = ...; t1 = ...; return t1``), compiled once
    per process (plans that fuse the same group share it)."""
    try:
        import numba
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    # Our own source: input names i0, i1, ... and the operators of TEMPLATES only.
    return compile_kernel(f"def fused({', '.join(params)}): {expression}\n", "fused",
                          {"np": np}, lambda function, cache: numba.vectorize(
                              [signature], nopython=True, cache=cache)(function))


class FusedKernel:
    """A fused group's kernel: ``kernel(*inputs, out=None)`` like a numpy ufunc (it is
    one, compiled on first use). Picklable as its source, so that process pools and
    clusters can run it; each process compiles it once."""

    __slots__ = ("params", "expression", "signature", "_ufunc")
    #: ``kernel(*args, out=buffer)`` works (see ``lowering.reusable_inputs``)
    writes_out = True

    def __init__(self, params: tuple[str, ...], expression: str, signature: str):
        self.params = params
        self.expression = expression
        self.signature = signature
        self._ufunc: Any = None

    def __call__(self, *values: Any, out: Any = None) -> Any:
        ufunc = self._ufunc
        if ufunc is None:
            ufunc = self._ufunc = _compiled_ufunc(self.params, self.expression, self.signature)
        return ufunc(*values) if out is None else ufunc(*values, out=out)

    def __reduce__(self) -> Any:
        return FusedKernel, (self.params, self.expression, self.signature)

    def __repr__(self) -> str:
        return f"fused({self.expression})"


class CompiledOp(Op):
    """An op whose value one compiled kernel computes: the base of the fusion passes'
    ops. Its shape and dtype are attributes (the fused nodes' own), and its kernel is
    made on first use (``make_kernel``) and kept: the op is what a plan holds, and
    compiling, even from numba's cache, costs far more than a call. Never registered:
    made for a plan, never saved to or loaded from a file."""

    returns_numpy = True
    #: this package's own kernel: trusted like the ops it fuses (its results are not
    #: checked as a user's op's are, and its cost is hinted from shapes)
    builtin = True

    def make_kernel(self) -> Any:
        """The callable that computes the op's value from its input values."""
        raise NotImplementedError

    def infer(self, *inputs: Node) -> tuple[tuple, np.dtype]:
        return self.shape, self.dtype

    def kernel(self) -> Any:
        found = self.__dict__.get("_kernel")
        if found is None:
            found = self.make_kernel()
            object.__setattr__(self, "_kernel", found)
        return found

    def forward(self, *values: Any) -> Any:
        return self.kernel()(*values)


class FusedElementwise(CompiledOp):
    """A group of elementwise nodes on large arrays computed by one compiled kernel."""

    attr_names = ("expression", "signature", "shape", "dtype", "ops")

    def make_kernel(self) -> Any:
        params = tuple(f"i{k}" for k in range(self.signature.count(",") + 1))
        return FusedKernel(params, self.expression, self.signature)


FusedElementwise.name = "fused"  # named after the class exists: never in the registry


def _fusable(node: Node) -> bool:
    op = node.op
    if type(op) not in TEMPLATES or node.dtype.kind != "f" or node.dtype not in _TYPES:
        return False
    inputs: Sequence[Node]
    if type(op) is Where:
        cond, *inputs = node.inputs
        if cond.dtype != np.bool_:
            return False
    elif type(op) is BroadcastTo:
        inputs = node.inputs[:1]
    else:
        inputs = node.inputs
    return all(i.dtype == node.dtype for i in inputs)


def _large(shape: tuple) -> bool:
    if MIN_SIZE <= 1:
        return True
    size = product(shape)
    return size is not None and size >= MIN_SIZE


def fuse(fetch_keys: Sequence[Any], fed_keys: Sequence[Any]) -> tuple[list, list, dict]:
    """The engine's fusion rewrite, in ``__plan_rewrite__``'s terms: the new fetch keys
    (position for position), the new keys of the fed keys, and ``{new key: original
    key}``. Large arrays get this module's kernels, then small ones the regions of
    ``fusion_regions``. Returns the keys unchanged when nothing fuses; raises
    ``ImportError`` without numba."""
    from .fusion_regions import fuse_regions

    keys, fed, origin = fuse_groups(fetch_keys, fed_keys)
    keys, fed, second = fuse_regions(keys, fed)
    if not second:
        return keys, fed, origin
    return keys, fed, {new: origin.get(old, old) for new, old in second.items()}


def fuse_groups(fetch_keys: Sequence[Any], fed_keys: Sequence[Any]) -> tuple[list, list, dict]:
    """``fuse``'s first pass: the groups of large arrays (see the module docstring)."""
    identity: tuple[list, list, dict] = (list(fetch_keys), list(fed_keys), {})
    if not rewritable(fetch_keys, fed_keys):
        return identity
    try:
        import numba  # noqa: F401 - asked for fusion: say now, not at the first run
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    graph = fetch_keys[0].graph
    fed = {k.id for k in fed_keys}
    fetched = {k.id for k in fetch_keys}
    order = ancestors(list(fetch_keys), cut=fed)
    consumers: dict[int, dict[int, None]] = {}
    for node in order:
        if node.id in fed:
            continue
        for i in node.inputs:
            consumers.setdefault(i.id, {})[node.id] = None
    groups = _groups(order, fed, fetched, consumers)
    if not groups:
        return identity
    new = Graph(f"{graph.name}.fused")
    images: dict[int, Node] = {}
    origin: dict[Node, Node] = {}
    for node in order:
        if node.id in groups and node.id not in fed:
            members, externals, literals = groups[node.id]
            if not members:
                continue  # computed only inside the kernels of its consumers
            op = _fused_op(node, members, externals, literals)
            image = new._add(op, tuple(images[e.id] for e in externals), node.shape,
                             node.dtype, node.name)
        else:
            image = copy_node(new, node, images, fed)
        images[node.id] = image
        origin[image] = node
    return ([images[k.id] for k in fetch_keys], [images[k.id] for k in fed_keys if k.id in images],
            origin)


def _groups(order: list[Node], fed: set[int], fetched: set[int],
            consumers: dict[int, dict[int, None]]
            ) -> dict[int, tuple[list[Node], list[Node], dict[int, str]]]:
    """Per node id: ``(members in id order, external inputs, {constant id: literal})``
    for the root of each group, ``([], [], {})`` for a node no one needs as a value
    (every consumer computes it inside its own kernel); nodes not in the result are
    computed as they are.

    Nodes are taken from the last back, so that when a node's turn comes, all its
    consumers have decided whether they need its value. A needed node that is fusable
    roots a group, which grows up through its fusable producers (a producer used
    elsewhere too is computed again in this kernel: cheap arithmetic costs less than
    writing and reading back an array) within the group's bounds; what does not join
    is an input, and so needed."""
    needed: set[int] = set(fetched)
    groups: dict[int, tuple[list[Node], list[Node], dict[int, str]]] = {}
    for node in reversed(order):
        if node.id not in needed and node.id not in fed and not isinstance(node.op, Placeholder):
            groups[node.id] = ([], [], {})
            continue
        if node.id in fed or type(node.op) is BroadcastTo or not _fusable(node) \
                or not _large(node.shape):
            needed.update(i.id for i in node.inputs)
            continue
        members: list[Node] = []
        externals: list[Node] = []
        budget, ops = MAX_OPS, 0
        while budget >= 2:
            members, externals, ops = _grow(node, fed, fetched, True, budget)
            if any(type(m.op) is BroadcastTo for m in members) and \
                    not _broadcasts_to(node.shape, [e.shape for e in externals]):
                members, externals, ops = _grow(node, fed, fetched, False, budget)
            if len(externals) <= MAX_INPUTS:
                break
            budget //= 2  # too many inputs: a smaller group reads fewer
        if ops < 2 or len(externals) > MAX_INPUTS:
            needed.update(i.id for i in node.inputs)
            continue
        literals = {e.id: text for e in externals if (text := _literal(e)) is not None}
        rest = [e for e in externals if e.id not in literals]
        if literals and rest and _broadcasts_to(node.shape, [e.shape for e in rest]):
            externals = rest  # written into the kernel's source instead
        else:
            literals = {}
        needed.update(e.id for e in externals)
        groups[node.id] = (members, externals, literals)
    return groups


def _literal(node: Node) -> str | None:
    """The source of a finite float constant of one element, in its dtype, or ``None``.
    Constants enter kernels as literals: a 0-d input would make the ufunc loop
    strided, which numba does not vectorize (several times slower)."""
    if not isinstance(node.op, Constant) or node.dtype.kind != "f":
        return None
    value = np.asarray(node.op.value)
    if value.size != 1 or not np.isfinite(value).all():
        return None
    number = repr(float(value.reshape(())))  # exact: a float32 is a float64 too
    return number if node.dtype == np.float64 else f"np.{node.dtype.name}({number})"


def _grow(root: Node, fed: set[int], fetched: set[int], broadcasts: bool,
          budget: int) -> tuple[list[Node], list[Node], int]:
    """The group rooted at ``root``, of at most ``budget`` ops: members in id order,
    external inputs (in the order first met), op count. A ``broadcast_to`` member (with
    ``broadcasts``) is no op of its own: its input enters the kernel as it is, and the
    kernel broadcasts it."""
    members = {root.id: root}
    externals: dict[int, Node] = {}
    ops = 1
    stack = list(reversed(root.inputs))
    while stack:
        node = stack.pop()
        if node.id in members or node.id in externals:
            continue
        is_broadcast = type(node.op) is BroadcastTo
        inputs = node.inputs[:1] if is_broadcast else node.inputs
        fresh = [i for i in inputs if i.id not in members and i.id not in externals]
        joins = (node.id not in fed and node.id not in fetched and _fusable(node)
                 and (broadcasts or not is_broadcast)
                 and ops < budget and len(externals) + len(fresh) <= MAX_INPUTS)
        if not joins:
            externals[node.id] = node
            continue
        members[node.id] = node
        ops += 0 if is_broadcast else 1
        stack.extend(reversed(inputs))
    in_order = sorted(members.values(), key=lambda n: n.id)
    return in_order, list(externals.values()), ops


def _broadcasts_to(shape: tuple, shapes: list[tuple]) -> bool:
    """Whether ``shapes`` broadcast to exactly ``shape`` (all known statically): then a
    group whose broadcasts were left to the kernel still has its root's shape."""
    if None in shape or any(None in s for s in shapes):
        return False
    try:
        return np.broadcast_shapes(*shapes) == tuple(shape)
    except ValueError:
        return False


def _fused_op(root: Node, members: list[Node], externals: list[Node],
              literals: dict[int, str]) -> FusedElementwise:
    """The source of a group's kernel, one statement per member (in id order, which is
    topological: each one's inputs are assigned before it; no recursion), and its numba
    signature."""
    names: dict[int, str] = {e.id: f"i{k}" for k, e in enumerate(externals)}
    names.update(literals)
    signature = f"{_TYPES[root.dtype]}({', '.join(_TYPES[e.dtype] for e in externals)})"
    lines = []
    for k, node in enumerate(members):
        inputs = node.inputs[:1] if type(node.op) is BroadcastTo else node.inputs
        parts = [names[i.id] for i in inputs]
        if type(node.op) is AddN:
            value = " + ".join(parts)  # added left to right, as add_n does
        else:
            value = TEMPLATES[type(node.op)].format(*parts)
        names[node.id] = f"t{k}"
        lines.append(f"t{k} = {value}")
    lines.append(f"return {names[root.id]}")
    return FusedElementwise(expression="; ".join(lines), signature=signature,
                            shape=root.shape, dtype=root.dtype,
                            ops=tuple(n.op.name for n in members))
