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

A group is a tree: a root, and the fusable producers that feed only the group (one
consumer, not fetched, not fed), so that it has one output and no value is computed
twice. Its size is bounded (``MAX_OPS`` ops, ``MAX_INPUTS`` inputs: a ufunc takes a
bounded number of operands), so a long chain becomes several kernels. Groups of one op
stay numpy's ufuncs, and so do groups on fewer than ``MIN_SIZE`` elements (or on
shapes not known statically): compiling a kernel takes a tenth of a second, which only
large arrays pay back, and on small arrays the compiled plan already removes the
per-op overhead.

Fusable: the ops of ``TEMPLATES`` (arithmetic, ``abs``, ``sqrt``, ``where``,
``add_n``) on float32 or float64 values whose inputs have the node's dtype
(``where``'s condition: bool), so the loop computes in the dtype numpy would. These
are all exactly rounded in IEEE arithmetic (numba compiles without fast-math, so
nothing is reassociated or contracted into fused multiply-adds), so a fused plan gives
bitwise the unfused plan's values, on every executor and every run. Transcendental
functions (``exp``, ``tanh``, ...) stay numpy's: its vectorized implementations are
several times faster than the C library's scalar ones a compiled loop would call,
and round differently in the last bits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .graph import Graph, Node, ancestors
from .op import Op
from .ops.core import AddN, Placeholder
from .ops.elementwise import Abs, Add, Divide, Multiply, Negative, Sqrt, Square, Subtract, Where

__all__ = ["MAX_INPUTS", "MAX_OPS", "MIN_SIZE", "TEMPLATES", "FusedElementwise", "FusedKernel",
           "fuse"]

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
}

_TYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
          np.dtype(np.bool_): "boolean"}

_MISSING = ("Engine(fuse=True) compiles fused kernels with numba, which is not installed: "
            "pip install 'dataflow[fusion]'")


@functools.lru_cache(maxsize=1024)
def _compiled_ufunc(params: tuple[str, ...], expression: str, signature: str) -> Any:
    """The ufunc of one expression, compiled once per process (plans that fuse the same
    group share it)."""
    try:
        import numba
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    namespace: dict[str, Any] = {"np": np}
    # Our own source: input names i0, i1, ... and the operators of TEMPLATES only.
    exec(f"def fused({', '.join(params)}):\n    return {expression}\n", namespace)  # noqa: S102
    return numba.vectorize([signature], nopython=True)(namespace["fused"])


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


class FusedElementwise(Op):
    """A group of elementwise nodes computed by one compiled kernel. Never registered:
    it is made by ``fuse`` for a plan, never saved to or loaded from a file."""

    attr_names = ("expression", "signature", "shape", "dtype", "ops")
    returns_numpy = True

    def infer(self, *inputs: Node) -> tuple[tuple, np.dtype]:
        return self.shape, self.dtype

    def kernel(self) -> Any:
        found = self.__dict__.get("_kernel")
        if found is None:
            params = tuple(f"i{k}" for k in range(self.signature.count(",") + 1))
            found = FusedKernel(params, self.expression, self.signature)
            object.__setattr__(self, "_kernel", found)
        return found

    def forward(self, *values: Any) -> Any:
        return self.kernel()(*values)


FusedElementwise.name = "fused"  # named after the class exists: never in the registry


def _fusable(node: Node) -> bool:
    op = node.op
    if type(op) not in TEMPLATES or node.dtype.kind != "f" or node.dtype not in _TYPES:
        return False
    if type(op) is Where:
        cond, *inputs = node.inputs
        if cond.dtype != np.bool_:
            return False
    else:
        inputs = node.inputs
    return all(i.dtype == node.dtype for i in inputs)


def _large(shape: tuple) -> bool:
    if MIN_SIZE <= 1:
        return True
    size = 1
    for dim in shape:
        if dim is None:
            return False
        size *= dim
    return size >= MIN_SIZE


def fuse(fetch_keys: Sequence[Any], fed_keys: Sequence[Any]) -> tuple[list, list, dict]:
    """The engine's fusion rewrite, in ``__plan_rewrite__``'s terms: the new fetch keys
    (position for position), the new keys of the fed keys, and ``{new key: original
    key}``. Returns the keys unchanged when numexpr is missing or nothing fuses."""
    identity = (list(fetch_keys), list(fed_keys), {})
    keys = [*fetch_keys, *fed_keys]
    if not fetch_keys or not all(isinstance(k, Node) for k in keys):
        return identity
    try:
        import numba  # noqa: F401 - asked for fusion: say now, not at the first run
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    graph = fetch_keys[0].graph
    if any(k.graph is not graph for k in keys):
        return identity
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
    member_of = {m: root for root, (members, _) in groups.items() for m in members}
    new = Graph(f"{graph.name}.fused")
    images: dict[int, Node] = {}
    origin: dict[Node, Node] = {}
    for node in order:
        if node.id in fed and not isinstance(node.op, Placeholder):
            from .rewrite import _FedValue

            op = _FedValue(shape=node.shape, dtype=node.dtype)
            image = new._add(op, (), node.shape, node.dtype, node.name)
        elif node.id in groups:
            members, externals = groups[node.id]
            op = _fused_op(node, members, externals)
            image = new._add(op, tuple(images[e.id] for e in externals), node.shape,
                             node.dtype, node.name)
        elif node.id in member_of:
            continue  # computed inside its group's kernel
        else:
            image = new._add(node.op, tuple(images[i.id] for i in node.inputs), node.shape,
                             node.dtype, node.name)
        images[node.id] = image
        origin[image] = node
    return ([images[k.id] for k in fetch_keys], [images[k.id] for k in fed_keys if k.id in images],
            origin)


def _groups(order: list[Node], fed: set[int], fetched: set[int],
            consumers: dict[int, dict[int, None]]) -> dict[int, tuple[list[Node], list[Node]]]:
    """root id -> (members in id order, external inputs in first-use order), for every
    group of two ops or more. Roots are taken from the last node back, so each group
    grows as far up as it can (maximal); a producer joins when it is fusable, feeds
    this group only and keeps the group within its bounds."""
    taken: set[int] = set()
    groups: dict[int, tuple[list[Node], list[Node]]] = {}
    for root in reversed(order):
        if root.id in taken or root.id in fed or not _fusable(root) or not _large(root.shape):
            continue
        members = {root.id: root}
        externals: dict[int, Node] = {}
        ops = 1
        stack = list(reversed(root.inputs))
        while stack:
            node = stack.pop()
            if node.id in members:
                continue
            joins = (node.id not in taken and node.id not in fed and node.id not in fetched
                     and len(consumers.get(node.id, ())) == 1 and _fusable(node)
                     and ops < MAX_OPS
                     and len(externals) + len(node.inputs) <= MAX_INPUTS)
            if not joins:
                externals.setdefault(node.id, node)
                continue
            externals.pop(node.id, None)
            members[node.id] = node
            ops += 1
            stack.extend(reversed(node.inputs))
        if ops < 2:
            continue
        taken.update(members)
        in_order = sorted(members.values(), key=lambda n: n.id)
        groups[root.id] = (in_order, [e for e in externals.values() if e.id not in members])
    return groups


def _fused_op(root: Node, members: list[Node], externals: list[Node]) -> FusedElementwise:
    """The source of a group's expression and its numba signature (the members, in id
    order, are topological: each one's inputs are written before it, no recursion)."""
    text: dict[int, str] = {e.id: f"i{k}" for k, e in enumerate(externals)}
    signature = f"{_TYPES[root.dtype]}({', '.join(_TYPES[e.dtype] for e in externals)})"
    for node in members:
        parts = [text[i.id] for i in node.inputs]
        if type(node.op) is AddN:
            text[node.id] = "(" + " + ".join(parts) + ")"  # added left to right
        else:
            text[node.id] = TEMPLATES[type(node.op)].format(*parts)
    return FusedElementwise(expression=text[root.id], signature=signature,
                            shape=root.shape, dtype=root.dtype,
                            ops=tuple(n.op.name for n in members))
