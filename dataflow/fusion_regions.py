"""Elementwise fusion on small arrays: whole regions of a graph as one compiled loop.

On arrays of a few elements an op costs its dispatch, not its arithmetic: a numpy
call is some 0.2 µs whatever it computes, so a chain of thousands of tiny ops (a
forward pass and its gradient on a handful of scalars) runs at numpy's call rate.
``fuse_regions`` rewrites a graph (as ``fusion.fuse`` does) so that each *region* of
small elementwise nodes becomes one node whose kernel runs the whole region element by
element: a numpy ufunc with several outputs, compiled by numba's ``guvectorize`` from
the region's source. Nothing inside is written to memory; a 6000-op forward and
gradient on 4 elements is one call.

A region is a set of fusable nodes of one static shape (under ``fusion.MIN_SIZE``
elements; larger arrays get ``fusion.fuse``'s single-output kernels) that is
*convex*: no path leaves it and comes back, so it can run as one step. Regions are
found without search, as levels: a node's level is the most edges that cannot join a
region on any path from a source to it (an edge joins when both ends are fusable and
of the same shape, and its end is no ``broadcast_to``), and a region is a connected
set of joining edges within one level. Levels never fall along a path and an edge that
cannot join raises them, so a path from a region back into it stays at its level over
joining edges only: each node on it is in the region too, and no path leaves a region
and comes back. Its outputs are the members read outside it (fetched, or the input of
another node); its inputs, what its members read from outside (scalar float constants
enter the source as literals), which the ufunc broadcasts (a region whose inputs are
all smaller than its shape, say one ``broadcast_to`` of a ``(1,)`` value, is handed
output arrays of its shape). A region needs ``MIN_REGION_OPS`` ops to pay for its
call and its compile, and at most ``MAX_REGION_OPS`` ops (numba's compile time grows
faster than linearly: a 6000-op region compiles in about half a minute) and
``MAX_REGION_ARGS`` operands (numpy's ufuncs take a bounded number): a larger one is
cut into runs of its topological order within these bounds (``_segments``), and a run
of too few ops stays unfused.

Fusable: ``fusion.TEMPLATES``'s ops, which IEEE arithmetic rounds exactly (numba
compiles without fast-math, so nothing is reassociated or contracted), and the
float64 transcendental functions of ``TRANSCENDENTAL`` for which numba's compiled
code gives bitwise numpy's values: ``exact_functions`` checks this once per process
on a probe of values across each function's range, because it holds only where numpy
calls the C library's function (as numpy does for float64 ``sin`` and ``cos`` on
x86-64) and not where numpy has a vectorized implementation of its own. So a fused
plan gives bitwise the unfused plan's values here too (a NaN's sign excepted, as there).
Comparisons (``x > 0`` for a ``where``) are not fused: compiled, an ordered comparison
with a NaN raises the floating-point "invalid" flag, which numpy's quiet comparisons
do not, so a fused plan would warn (or raise, under ``np.errstate``) where numpy does
not; a comparison ends its region's level instead.
"""

from __future__ import annotations

import functools
import heapq
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import fusion
from .fusion import _MISSING, _TYPES, TEMPLATES, CompiledOp, _broadcasts_to, _fusable, _literal
from .graph import Graph, Node, ancestors
from .kernel_cache import compile_kernel
from .op import Op
from .ops.core import AddN, Placeholder
from .ops.elementwise import Cos, Elementwise, Exp, Log, Sin, Tanh
from .ops.shape_ops import BroadcastTo
from .rewrite import copy_node, rewritable
from .shapes import product

__all__ = ["MAX_REGION_ARGS", "MAX_REGION_OPS", "MIN_REGION_OPS", "TRANSCENDENTAL",
           "FusedOutput", "FusedRegion", "RegionKernel", "exact_functions", "fuse_regions"]

#: the fewest ops worth a region: its call costs about what a few numpy calls do
MIN_REGION_OPS = 8
#: the most ops in one region (compile time)
MAX_REGION_OPS = 8192
#: the most inputs plus outputs of one region's ufunc (numpy 1.x allows 32 operands)
MAX_REGION_ARGS = 32

#: float64 functions a region may compute, as numba source, when ``exact_functions``
#: finds numba's compiled code bitwise equal to numpy's ufunc
TRANSCENDENTAL: dict[type[Elementwise], str] = {
    Sin: "math.sin", Cos: "math.cos", Exp: "math.exp", Log: "math.log", Tanh: "math.tanh"}


def _probe_values(op: type) -> np.ndarray:
    """Values across ``op``'s domain: small, large, tiny and special arguments."""
    r = np.random.default_rng(20261130)
    if op is Log:
        core = [r.uniform(0, 10, 2048), 10.0 ** r.uniform(-300, 300, 1024),
                r.uniform(0.5, 2.0, 1024), [0.0, 1.0, np.inf, -1.0, np.nan, 5e-324]]
    elif op is Exp:
        core = [r.uniform(-20, 20, 2048), r.uniform(-745, 710, 1024),
                r.standard_normal(1024) * 1e-6, [0.0, -0.0, 709.78, -745.2, np.inf, -np.inf]]
    else:
        core = [r.uniform(-10, 10, 2048), r.uniform(-1e6, 1e6, 1024),
                r.standard_normal(1024) * 1e-8,
                [0.0, -0.0, np.pi, -np.pi / 2, 1e300, 5e-324, np.inf, np.nan]]
    return np.concatenate([np.asarray(c, np.float64) for c in core])


@functools.lru_cache(maxsize=1)
def exact_functions() -> frozenset[type]:
    """The ops of ``TRANSCENDENTAL`` whose numba-compiled form (as a region compiles
    it) gives bitwise numpy's float64 values on the probe, in this process."""
    import warnings

    found = set()
    for op, call in TRANSCENDENTAL.items():
        kernel = _compiled_region(f"def region(i0, o0):\n    o0[0] = {call}(i0)\n",
                                  "void(float64, float64[:])", "()->()")
        values = _probe_values(op)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            ours, numpys = kernel(values), op.ufunc(values)
        if np.array_equal(ours.view(np.int64), numpys.view(np.int64)):
            found.add(op)
    return frozenset(found)


@functools.lru_cache(maxsize=256)
def _compiled_region(source: str, signature: str, layout: str) -> Any:
    """The numpy ufunc of a region's source, compiled once per process."""
    try:
        import numba
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    # Our own source: names i0.., t0.., o0.. and the templates' operators only.
    return compile_kernel(source, "region", {"np": np, "math": math},
                          lambda function, cache: numba.guvectorize(
                              [signature], layout, nopython=True, cache=cache)(function).ufunc)


class RegionKernel:
    """A region's kernel: ``kernel(*inputs)`` gives its outputs, a tuple when it has
    several. Picklable as its source, so that process pools and clusters can run it;
    each process compiles it once."""

    __slots__ = ("source", "signature", "layout", "allocate", "_ufunc")

    def __init__(self, source: str, signature: str, layout: str,
                 allocate: tuple | None = None):
        self.source = source
        self.signature = signature
        self.layout = layout
        #: ``(shape, dtypes)`` of the outputs, for a region whose inputs are all smaller
        #: than its shape (the ufunc would loop over their broadcast shape only)
        self.allocate = allocate
        self._ufunc: Any = None

    def __call__(self, *values: Any) -> Any:
        ufunc = self._ufunc
        if ufunc is None:
            self._check_functions()
            ufunc = self._ufunc = _compiled_region(self.source, self.signature, self.layout)
        if self.allocate is not None:
            shape, dtypes = self.allocate
            return ufunc(*values, out=tuple(np.empty(shape, d) for d in dtypes))
        return ufunc(*values)

    def _check_functions(self) -> None:
        """Refuse to compile, in a process (a pool's worker, a cluster's) whose numba
        and numpy disagree on a transcendental function the region calls: the plan's
        process found them equal, but this one's libraries may differ."""
        calls = [(op, call) for op, call in TRANSCENDENTAL.items() if f"{call}(" in self.source]
        if not calls:
            return
        exact = exact_functions()
        wrong = [call for op, call in calls if op not in exact]
        if wrong:
            raise RuntimeError(
                f"a fused region calls {', '.join(wrong)}, whose compiled form does not give "
                f"numpy's bits in this process (pid {os.getpid()}); run this plan with "
                "fuse=False here, or with the same numpy and C library as the caller")

    def __reduce__(self) -> Any:
        return RegionKernel, (self.source, self.signature, self.layout, self.allocate)

    def __repr__(self) -> str:
        return f"region({self.layout})"


class FusedRegion(CompiledOp):
    """A region of elementwise nodes computed by one compiled kernel; its value is the
    tuple of the region's outputs (each taken out by a ``FusedOutput`` node), or the
    one output itself (``returns_numpy``: an array, or a tuple that only
    ``FusedOutput`` nodes read). Made by ``fuse_regions`` for a plan."""

    attr_names = ("source", "signature", "layout", "shape", "dtype", "ops", "allocate")

    def make_kernel(self) -> Any:
        return RegionKernel(self.source, self.signature, self.layout, self.allocate)

    def flops(self, input_shapes: Sequence[tuple[int, ...]],
              output_shape: tuple[int, ...]) -> float:
        return float(len(self.ops) * (product(output_shape) or 1))


class FusedOutput(Op):
    """One output of a ``FusedRegion`` of several: item ``index`` of its tuple."""

    attr_names = ("index", "shape", "dtype")
    builtin = True
    returns_numpy = True

    def infer(self, *inputs: Node) -> tuple[tuple, np.dtype]:
        return self.shape, self.dtype

    def forward(self, region: tuple) -> Any:
        return region[self.index]


# Named after the classes exist: never in the registry, never in a file.
FusedRegion.name = "fused_region"
FusedOutput.name = "fused_output"


def _region_candidate(node: Node, exact: frozenset[type]) -> bool:
    """Whether ``node`` may be computed inside a region (its shape small and known)."""
    size = product(node.shape)
    if size is None or not 0 < size < fusion.MIN_SIZE:
        return False
    if type(node.op) in TRANSCENDENTAL:
        return (type(node.op) in exact and node.dtype == np.float64
                and all(i.dtype == np.float64 for i in node.inputs))
    return _fusable(node)


def fuse_regions(fetch_keys: Sequence[Any], fed_keys: Sequence[Any]) -> tuple[list, list, dict]:
    """``fusion.fuse``'s second pass, in ``__plan_rewrite__``'s terms: the new fetch keys,
    the new keys of the fed keys, and ``{new key: key}``; the keys unchanged when no
    region forms."""
    identity: tuple[list, list, dict] = (list(fetch_keys), list(fed_keys), {})
    if not rewritable(fetch_keys, fed_keys):
        return identity
    fed = {k.id for k in fed_keys}
    order = ancestors(list(fetch_keys), cut=fed)
    cut = {n.id for n in order if n.id in fed or isinstance(n.op, Placeholder)}
    shapes = {n.shape for n in order if n.id not in cut}
    if not any((size := product(s)) is not None and 0 < size < fusion.MIN_SIZE
               for s in shapes):
        return identity
    try:
        exact = exact_functions() if any(type(n.op) in TRANSCENDENTAL for n in order) \
            else frozenset()
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    candidate = {n.id for n in order if n.id not in cut and _region_candidate(n, exact)}
    regions = _regions(order, cut, candidate, {k.id for k in fetch_keys})
    if not regions:
        return identity
    return _rebuild(order, fetch_keys, fed_keys, fed, regions)


class _Region:
    """One region: members in topological order, inputs, literals, outputs."""

    __slots__ = ("members", "inputs", "literals", "outputs", "allocate")

    def __init__(self, members: list[Node], inputs: list[Node], literals: dict[int, str],
                 outputs: list[Node], allocate: bool = False):
        self.members = members
        self.inputs = inputs
        self.literals = literals
        self.outputs = outputs
        #: whether the kernel allocates its outputs (its inputs broadcast to less than
        #: its shape)
        self.allocate = allocate


def _regions(order: list[Node], cut: set[int], candidate: set[int],
             fetched: set[int]) -> list[_Region]:
    """The regions of ``order`` (see the module docstring), each within its bounds."""
    level: dict[int, int] = {}
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    consumers: dict[int, list[Node]] = {}
    for node in order:
        parent[node.id] = node.id
        joins = []
        deepest = 0
        for i in (() if node.id in cut else node.inputs):  # a fed node's inputs: unread
            consumers.setdefault(i.id, []).append(node)
            joining = (node.id in candidate and i.id in candidate and i.shape == node.shape
                       and type(node.op) is not BroadcastTo)
            deepest = max(deepest, level[i.id] + (0 if joining else 1))
            if joining:
                joins.append(i)
        level[node.id] = deepest
        for i in joins:
            if level[i.id] == deepest:
                parent[root(i.id)] = root(node.id)
    components: dict[int, list[Node]] = {}
    for node in order:
        if node.id in candidate:
            components.setdefault(root(node.id), []).append(node)
    regions = []
    for members in components.values():
        whole = _region(members, consumers, fetched)
        if whole is not None:
            regions.append(whole)
            continue
        # Out of bounds as a whole: its runs may still be regions. (Only then: a run's
        # outputs include the values later runs read, a forward pass's for its gradient,
        # so a component that fits is never cut.)
        for segment in _segments(members, consumers, fetched):
            region = _region(segment, consumers, fetched)
            if region is not None:
                regions.append(region)
    return regions


def _segments(members: list[Node], consumers: dict[int, list[Node]],
              fetched: set[int]) -> list[list[Node]]:
    """A component cut, where it exceeds ``MAX_REGION_OPS`` ops or ``MAX_REGION_ARGS``
    operands, into runs of consecutive members (in topological order), each as long as
    its bounds allow. A run of a convex set's topological order is convex itself: a path
    from the run back into it would pass a member between two of the run's members,
    which is in the run. The operand count is kept as members join: inputs met, and the
    members some node outside the run still reads (its outputs)."""
    segments: list[list[Node]] = []
    run: list[Node] = []
    inside: set[int] = set()
    inputs: set[int] = set()
    unread: dict[int, int] = {}  # a run member -> its consumers not (yet) in the run
    outputs = ops = 0
    for m in members:
        parents = list(dict.fromkeys(m.inputs))
        new_inputs = {i.id for i in parents if i.id not in inside and i.id not in inputs
                      and _literal(i) is None}
        freed = sum(1 for i in parents if i.id in inside and unread[i.id] == 1
                    and i.id not in fetched)
        cost = 0 if type(m.op) is BroadcastTo else 1
        if run and (len(inputs) + len(new_inputs) + outputs - freed + 1 > MAX_REGION_ARGS
                    or ops + cost > MAX_REGION_OPS):
            segments.append(run)
            run, inside, inputs, unread, outputs, ops = [], set(), set(), {}, 0, 0
            new_inputs = {i.id for i in parents if _literal(i) is None}
        for i in parents:
            if i.id in inside:
                unread[i.id] -= 1
                if unread[i.id] == 0 and i.id not in fetched:
                    outputs -= 1
        inputs |= new_inputs
        run.append(m)
        inside.add(m.id)
        unread[m.id] = len({c.id for c in consumers.get(m.id, ())})
        outputs += 1 if unread[m.id] or m.id in fetched else 0
        ops += cost
    if run:
        segments.append(run)
    return segments


def _region(members: list[Node], consumers: dict[int, list[Node]],
            fetched: set[int]) -> _Region | None:
    """A run of a component as a region, or ``None`` when it is outside the bounds."""
    ops = sum(type(m.op) is not BroadcastTo for m in members)
    if not MIN_REGION_OPS <= ops <= MAX_REGION_OPS:
        return None
    inside = {m.id for m in members}
    inputs: dict[int, Node] = {}
    literals: dict[int, str] = {}
    for m in members:
        for i in m.inputs:
            if i.id in inside or i.id in inputs or i.id in literals:
                continue
            text = _literal(i)
            if text is not None:
                literals[i.id] = text
            else:
                inputs[i.id] = i
    outputs = [m for m in members if m.id in fetched
               or any(c.id not in inside for c in consumers.get(m.id, ()))]
    shape = members[0].shape
    if not inputs or len(inputs) + len(outputs) > MAX_REGION_ARGS:
        return None
    shapes = [i.shape for i in inputs.values()]
    if _broadcasts_to(shape, shapes):
        return _Region(members, list(inputs.values()), literals, outputs)
    if _broadcasts_to(shape, [shape, *shapes]):  # inputs smaller than the region
        return _Region(members, list(inputs.values()), literals, outputs, allocate=True)
    return None


def _region_op(region: _Region) -> FusedRegion:
    """The source and signature of a region's kernel: one statement per member, in
    topological order (no recursion), each output stored at the end."""
    names: dict[int, str] = {i.id: f"i{k}" for k, i in enumerate(region.inputs)}
    names.update(region.literals)
    lines = []
    for k, node in enumerate(region.members):
        op = type(node.op)
        inputs = node.inputs[:1] if op is BroadcastTo else node.inputs
        parts = [names[i.id] for i in inputs]
        if op is AddN:
            value = " + ".join(parts)  # added left to right, as add_n does
        elif op in TRANSCENDENTAL:
            value = f"{TRANSCENDENTAL[op]}({parts[0]})"
        else:
            value = TEMPLATES[op].format(*parts)
        names[node.id] = f"t{k}"
        lines.append(f"t{k} = {value}")
    outs = [f"o{k}" for k in range(len(region.outputs))]
    lines += [f"{o}[0] = {names[m.id]}" for o, m in zip(outs, region.outputs)]
    params = [f"i{k}" for k in range(len(region.inputs))] + outs
    source = f"def region({', '.join(params)}):\n    " + "\n    ".join(lines) + "\n"
    types = [_TYPES[i.dtype] for i in region.inputs]
    types += [f"{_TYPES[m.dtype]}[:]" for m in region.outputs]
    layout = ",".join("()" for _ in region.inputs) + "->" + \
        ",".join("()" for _ in region.outputs)
    first = region.outputs[0]
    return FusedRegion(source=source, signature=f"void({', '.join(types)})", layout=layout,
                       shape=first.shape if len(region.outputs) == 1 else (),
                       dtype=first.dtype if len(region.outputs) == 1 else np.dtype(object),
                       ops=tuple(m.op.name for m in region.members),
                       allocate=(first.shape, tuple(m.dtype.name for m in region.outputs))
                       if region.allocate else None)


def _rebuild(order: list[Node], fetch_keys: Sequence[Node], fed_keys: Sequence[Node],
             fed: set[int], regions: list[_Region]) -> tuple[list, list, dict]:
    """The new graph: each region one node (and one ``FusedOutput`` per output when it
    has several), the other nodes copied, in a topological order of the result."""
    graph = fetch_keys[0].graph
    new = Graph(f"{graph.name}.regions")
    unit: dict[int, int] = {n.id: k for k, n in enumerate(order)}  # node id -> unit
    for r, region in enumerate(regions):
        for m in region.members:
            unit[m.id] = len(order) + r
    # Each unit's inputs and its place among the others (Kahn's algorithm, the earliest
    # node first, so that the order stays close to the graph's own).
    needs: dict[int, set[int]] = {}
    first: dict[int, int] = {}
    for k, node in enumerate(order):
        u = unit[node.id]
        first.setdefault(u, k)
        deps = needs.setdefault(u, set())
        if node.id not in fed:
            deps.update(unit[i.id] for i in node.inputs if i.id in unit and unit[i.id] != u)
    waiting = {u: len(d) for u, d in needs.items()}
    users: dict[int, list[int]] = {}
    for u, deps in needs.items():
        for d in deps:
            users.setdefault(d, []).append(u)
    ready = [(first[u], u) for u, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    images: dict[int, Node] = {}
    origin: dict[Node, Node] = {}
    taken: set[str] = set()
    while ready:
        _, u = heapq.heappop(ready)
        if u >= len(order):
            region = regions[u - len(order)]
            op = _region_op(region)
            node = new._add(op, tuple(images[i.id] for i in region.inputs), op.shape,
                            op.dtype, region.outputs[0].name if len(region.outputs) == 1
                            else _region_name(graph, region, taken))
            if len(region.outputs) == 1:
                images[region.outputs[0].id] = node
                origin[node] = region.outputs[0]
            else:
                for k, m in enumerate(region.outputs):
                    image = new._add(FusedOutput(index=k, shape=m.shape, dtype=m.dtype),
                                     (node,), m.shape, m.dtype, m.name)
                    images[m.id] = image
                    origin[image] = m
        else:
            old = order[u]
            image = copy_node(new, old, images, fed)
            images[old.id] = image
            origin[image] = old
        for v in users.get(u, ()):
            waiting[v] -= 1
            if waiting[v] == 0:
                heapq.heappush(ready, (first[v], v))
    return ([images[k.id] for k in fetch_keys],
            [images[k.id] for k in fed_keys if k.id in images], origin)


def _region_name(graph: Graph, region: _Region, taken: set[str]) -> str:
    """The name of a region of several outputs: after its outputs, so that errors and
    profiles say what it computes, and no name of ``graph`` (whose nodes keep theirs in
    the new graph) or of another region."""
    names = [m.name for m in region.outputs[:4]]
    if len(region.outputs) > 4:
        names.append(f"+{len(region.outputs) - 4}")  # a name short enough to read
    base = f"fused_region[{','.join(names)}]"
    name, k = base, 0
    while name in taken or graph.get(name) is not None:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name
