"""Gradient checkpointing: recompute forward values in the backward pass instead of
keeping them alive from the forward pass (Chen et al. 2016, "Training deep nets with
sublinear memory cost"; Deep Learning 6.5.3 names the trade-off).

``gradients(ys, xs, checkpoints=...)`` hands each op's ``bprop`` *recomputed* copies of
the op's inputs and output instead of the forward nodes themselves, except for
checkpoints and leaves (placeholders, constants, ops without inputs), which are used as
they are. A copy is the same op applied to the copies of its inputs, so the backward
pass re-runs each forward segment from the checkpoint below it, and once the forward
pass is done only the checkpoints are still needed: every other forward value dies as
soon as the next forward op has read it.

When a recomputation starts matters as much as what it recomputes: a copy whose inputs
are all checkpoints or leaves could run as soon as the forward pass made them, and a
parallel executor with an idle worker would do exactly that, recomputing every segment
right away and keeping it all alive. So the inputs of those first copies pass through
``after(x, token)``, an op that returns ``x`` and ignores ``token``, with ``token`` the
gradient that has just reached the segment (the output gradient of the node whose
bprop first asked for the copy). A segment thus starts only when the backward pass
reaches it, and the engine's depth-first priority order, which runs each task's inputs
just before the task, recomputes it right before its gradients consume it. For the
same reason every non-leaf value a bprop reads passes through ``after(value, grad)``
with that node's output gradient: what a bprop computes from forward values alone
(``1 - tanh(x)**2``) would otherwise be ready, and be computed by an idle worker and
kept alive, long before the backward pass needs it. ``after`` returns its input
array itself, so none of this copies anything. Peak memory falls from ``n`` stored
activations to about ``k + c * n / k`` (``k`` checkpoints, ``c`` values per layer
alive in the backward pass of a segment), for one extra forward computation.

``checkpoints="auto"`` picks about ``sqrt(n)`` checkpoints evenly along the longest
chain of the forward graph (``n`` its length), preferring nodes that separate the
graph (no edge passes over them, as in a chain or between residual blocks).

Gradients are bitwise the same as without checkpointing: the copies run the same
kernels on the same values, and the bprops build the same nodes on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import GraphError
from .graph import Node
from .op import Op, apply
from .ops.core import Constant

__all__ = ["After", "after", "auto_checkpoints"]


def _after(x: Any, *tokens: Any) -> Any:
    return x


class After(Op):
    """``x``, but only once every token exists: a scheduling edge, not a computation.

    The gradient flows to ``x`` unchanged and never to the tokens.
    """

    name = "after"

    def infer(self, x: Node, *tokens: Node) -> tuple:
        return x.shape, x.dtype

    def kernel(self) -> Any:
        return _after

    def forward(self, x: Any, *tokens: Any) -> Any:
        return x

    def bprop(self, inputs, output, grad, wanted):
        return (grad,) + (None,) * (len(inputs) - 1)


def after(x: Node, *tokens: Node, name: str | None = None) -> Node:
    """``x``, computed no earlier than ``tokens`` (whose values are ignored).

    Parameters
    ----------
    x : Node
        The value passed on.
    *tokens : Node
        Nodes that must have run first; their values are not read.
    name : str, optional
        Name of the new node. Without one, ``x`` itself is returned when there are no
        tokens.

    Returns
    -------
    Node
        ``x``'s value, shape and dtype.

    Notes
    -----
    Gradient: ``grad`` for ``x``; none for the tokens.
    """
    if not tokens and name is None:
        return x
    return apply(After(), x, *tokens, name=name)


def _is_leaf(node: Node) -> bool:
    return not node.inputs or getattr(node.op, "stateful", False)


def _ancestors(ys: Sequence[Node]) -> dict[int, Node]:
    seen: dict[int, Node] = {}
    stack = list(ys)
    while stack:
        node = stack.pop()
        if node.id not in seen:
            seen[node.id] = node
            stack.extend(p for p in node.inputs if p.id not in seen)
    return seen


def auto_checkpoints(ys: Sequence[Node], xs: Sequence[Node] = ()) -> list[Node]:
    """About ``sqrt(n)`` nodes spread evenly along the longest chain of the forward
    graph of ``ys`` (leaves, ``ys`` and ``xs`` excluded), ``n`` the chain's length.
    Where enough of the chain's nodes separate the graph (no edge between two other
    forward nodes passes over them), only those are used."""
    excluded = {n.id for n in (*ys, *xs)}
    forward = _ancestors(ys)
    order = [forward[i] for i in sorted(forward) if not _is_leaf(forward[i])]
    if not order:
        return []
    position = {n.id: k for k, n in enumerate(order)}

    # Longest chain: depth by dynamic programming in topological (id) order.
    depth = [0] * len(order)
    for k, node in enumerate(order):
        depth[k] = 1 + max((depth[position[p.id]] for p in node.inputs if p.id in position),
                           default=0)
    end = max(range(len(order)), key=lambda k: (depth[k], -k))
    chain = [end]
    while depth[chain[-1]] > 1:
        node = order[chain[-1]]
        want = depth[chain[-1]] - 1
        chain.append(min(position[p.id] for p in node.inputs
                         if p.id in position and depth[position[p.id]] == want))
    chain.reverse()

    # Separators: no edge (u -> w) with position(u) < k < position(w) passes over k.
    over = [0] * (len(order) + 1)
    for k, node in enumerate(order):
        for p in dict.fromkeys(node.inputs):
            j = position.get(p.id)
            if j is not None and k - j > 1:
                over[j + 1] += 1
                over[k] -= 1
    running, separator = 0, [False] * len(order)
    for k in range(len(order)):
        running += over[k]
        separator[k] = running == 0

    candidates = [k for k in chain if order[k].id not in excluded]
    count = max(1, round(math.sqrt(len(chain))))
    preferred = [k for k in candidates if separator[k]]
    if len(preferred) >= count:
        candidates = preferred
    if len(candidates) <= count:
        return [order[k] for k in candidates]
    step = len(candidates) / (count + 1)
    picked = dict.fromkeys(candidates[int(step * (i + 1))] for i in range(count))
    return [order[k] for k in picked]


class Recomputer:
    """Builds, on demand, the recomputed copies that ``gradients`` hands to bprops."""

    def __init__(self, ys: Sequence[Node], xs: Sequence[Node], checkpoints: Any):
        graph = ys[0].graph
        if isinstance(checkpoints, str):
            if checkpoints != "auto":
                raise ValueError(f"gradients: checkpoints must be None, 'auto' or a list of "
                                 f"nodes, got {checkpoints!r}")
            chosen = auto_checkpoints(ys, xs)
        elif isinstance(checkpoints, Node):
            chosen = [checkpoints]
        else:
            chosen = list(checkpoints)
        for node in chosen:
            if not isinstance(node, Node):
                raise GraphError(f"gradients: checkpoints must be nodes, got {type(node).__name__}")
            if node.graph is not graph:
                raise GraphError(f"gradients: checkpoint {node.name!r} belongs to graph "
                                 f"{node.graph.name!r}, not {graph.name!r}")
        self.checkpoints: list[Node] = chosen
        self._kept = {n.id for n in chosen}
        self._copies: dict[int, Node] = {}
        self._gates: dict[tuple[int, ...], Node] = {}
        self._held: dict[tuple[int, int], Node] = {}
        #: gradients sent to checkpoints and leaves since the last recomputation began
        self._finished: list[Node] = []

    def _recomputed(self, node: Node) -> bool:
        return node.id not in self._kept and not _is_leaf(node)

    def bprop(self, node: Node, grad: Node, wanted: Sequence[bool]) -> Sequence[Node | None]:
        """``node.op.bprop`` on recomputed copies of the node's inputs and output."""
        inputs, output = self.view(node, grad)
        results = node.op.bprop(inputs, output, grad, wanted)
        for parent, g in zip(node.inputs, results):
            if isinstance(g, Node) and not self._recomputed(parent):
                self._finished.append(g)
        return results

    def view(self, node: Node, grad: Node) -> tuple[tuple[Node, ...], Node]:
        """(inputs, output) of ``node`` as its bprop should see them: recomputed
        copies, built now if this is their first use.

        The first copies of a segment wait (``after``) for ``grad``, the gradient that
        has just reached it, and for the gradients that earlier bprops sent to leaves
        and checkpoints: those are where the backward pass of the segment above ends,
        and nothing else would make the engine's depth-first order compute them (a
        parameter's gradient is only reached from its own fetch), so without them the
        values of the segment above would stay alive until the very end.
        """
        self._build([*node.inputs, node], grad)
        copies = self._copies
        inputs = tuple(self._hold(copies.get(p.id, p), grad) for p in node.inputs)
        return inputs, self._hold(copies.get(node.id, node), grad)

    def _hold(self, value: Node, grad: Node) -> Node:
        """``value`` as a bprop reads it: not before ``grad`` exists, so that what the
        bprop computes from forward values alone (``1 - tanh**2``, say) is not done,
        and kept alive, long before the backward pass needs it. Leaves are free."""
        if not value.inputs:
            return value
        key = (value.id, grad.id)
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = after(value, grad)
        return held

    def _build(self, roots: list[Node], grad: Node) -> None:
        copies = self._copies
        todo: dict[int, Node] = {}
        stack = [r for r in roots if self._recomputed(r) and r.id not in copies]
        while stack:
            node = stack.pop()
            if node.id in todo:
                continue
            todo[node.id] = node
            stack.extend(p for p in node.inputs
                         if self._recomputed(p) and p.id not in copies and p.id not in todo)
        for node_id in sorted(todo):
            node = todo[node_id]
            inputs = [copies.get(p.id, p) for p in node.inputs]
            if not any(p.id in copies for p in node.inputs):
                # A first copy of its segment: it waits for the backward pass (see above).
                slot = next((i for i, p in enumerate(inputs) if not isinstance(p.op, Constant)), 0)
                inputs[slot] = self._gate(inputs[slot], grad)
            name: str | None = f"{node.name}/recomputed"
            if name in node.graph._names:
                name = None
            copies[node_id] = apply(node.op, *inputs, name=name)

    def _gate(self, value: Node, grad: Node) -> Node:
        tokens = list(dict.fromkeys([grad, *self._finished]))
        self._finished = []
        key = (value.id, *(t.id for t in tokens))
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = after(value, *tokens)
        return gate
