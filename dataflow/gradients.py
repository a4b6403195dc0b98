"""Symbol-to-symbol differentiation: back-propagation as graph construction
(Deep Learning, section 6.5.6, algorithms 6.5 and 6.6).

``gradients(ys, xs)`` adds the nodes that compute ``d(sum of ys)/d xs`` to the same
graph and returns them; nothing runs. Because the result is made of ordinary nodes,
gradients of gradients work the same way.

The walk holds no op-specific rule: each op's ``bprop`` says how a gradient passes
through it. It only visits nodes that lie between ``xs`` and ``ys`` and builds each
node's gradient once (so the result stays linear in the size of the forward graph,
figure 6.9), iterates instead of recursing, and sums the contributions that reach a
node by several paths in a fixed order (consumers by decreasing id), never in the
order they happen to be produced, so equal graphs give bitwise equal results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np

from scheduler.plan import gc_paused

from .errors import GradientError, GraphError, ShapeError
from .graph import Node, building_gradients
from .ops import add_n, cast, constant, ones_like, reshape, stack, zeros_like
from .shapes import fmt, is_known, same_or_unknown

UNCONNECTED = ("zero", "none", "raise")


def is_differentiable(node: Node) -> bool:
    """Only floating and complex values carry gradients; integers are constants to them."""
    return node.dtype.kind in "fc"


def _as_list(value: Any, what: str) -> tuple[list, bool]:
    if isinstance(value, Node):
        return [value], True
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, Node) for v in value):
            raise GraphError(f"gradients: every entry of {what} must be a Node")
        return list(value), False
    raise GraphError(f"gradients: {what} must be a node or a list of nodes, "
                     f"got {type(value).__name__}")


@overload
def gradients(ys: Node | Sequence[Node], xs: Node | Sequence[Node], grad_ys: Any = None, *,
              unconnected: Literal["zero", "raise"] = "zero",
              checkpoints: Any = None) -> list[Node]: ...
@overload
def gradients(ys: Node | Sequence[Node], xs: Node | Sequence[Node], grad_ys: Any = None, *,
              unconnected: str, checkpoints: Any = None) -> list[Node | None]: ...
def gradients(ys: Node | Sequence[Node], xs: Node | Sequence[Node],
              grad_ys: Any = None, *, unconnected: str = "zero",
              checkpoints: Any = None, name: str = "gradients") -> list[Node | None] | list[Node]:
    """The gradient of ``sum(ys)`` with respect to each of ``xs``, as new nodes.

    Back-propagation as graph construction (algorithms 6.5/6.6 of *Deep Learning*):
    nothing runs; the returned nodes join the graph of ``ys`` and can be fetched,
    saved, simplified or differentiated again. Integer-typed nodes carry no gradient.

    Each result that this call builds is named after the node it differentiates:
    ``grad/W1`` for ``W1`` (``grad/W1_1`` for a second gradient of ``W1``, and so on);
    the nodes it builds on the way are named under the scope ``name`` (``gradients/...``,
    then ``gradients_1/...`` for the next call; see ``Graph.name_scope``).

    Parameters
    ----------
    ys : Node or sequence of Node
        The values to differentiate; their sum (each weighted by ``grad_ys``) is.
    xs : Node or sequence of Node
        The nodes to differentiate with respect to.
    grad_ys : array_like, Node or sequence of them, optional
        One seed per y, shaped like it (the gradient flowing into y); ones by default.
    unconnected : {"zero", "none", "raise"}, default "zero"
        What an x that the ys do not depend on gets: zeros shaped like x, ``None``, or
        a ``GradientError``.
    checkpoints : None, "auto" or sequence of Node, optional
        Gradient checkpointing: the bprops see recomputed copies of the forward values,
        rebuilt from the checkpoints late in the backward pass, so that the forward
        values between checkpoints need not stay alive (see ``dataflow.checkpointing``).
    name : str, default "gradients"
        The scope the intermediate nodes are named under (``gradients/...``); each
        result is named ``grad/<x>``.

    Returns
    -------
    list of Node or None
        One per x, shaped like it (``None`` only with ``unconnected="none"``).

    Raises
    ------
    GradientError
        If the path from an x to the ys passes an op without a bprop (the message
        names it), or an x is unconnected under ``unconnected="raise"``.
    GraphError
        If the nodes come from different graphs.

    Examples
    --------
    >>> import dataflow as df
    >>> with df.Graph():
    ...     w = df.placeholder("w", (3,))
    ...     loss = df.sum(df.square(w))
    ...     (gw,) = df.gradients(loss, [w])
    >>> gw.shape
    (3,)
    """
    if unconnected not in UNCONNECTED:
        raise ValueError(f"gradients: unconnected must be one of {UNCONNECTED}, "
                         f"got {unconnected!r}")
    y_list, _ = _as_list(ys, "ys")
    x_list, _ = _as_list(xs, "xs")
    if not y_list:
        raise GraphError("gradients: ys is empty")
    graph = y_list[0].graph
    for node in y_list + x_list:
        if node.graph is not graph:
            raise GraphError(f"gradients: node {node.name!r} belongs to graph {node.graph.name!r}, "
                             f"not {graph.name!r}")
    # Every node made here lives as long as the graph: the cyclic collector would
    # rescan the growing graph many times for nothing (a third of the time on a
    # 100,000-node chain, and the time would no longer grow linearly).
    first_new = graph._next_id
    with gc_paused(), building_gradients(), graph.name_scope(name):
        results = _backprop(y_list, x_list, grad_ys, unconnected, checkpoints)
    _name_results(x_list, results, first_new)
    return results


def _name_results(x_list: list[Node], results: list[Node | None], first_new: int) -> None:
    """Name each gradient built by this call ``grad/<x>``. A result that existed before
    (a ``grad_ys`` node, say) keeps its name, and so does one that is the gradient of
    several xs after the first."""
    named: set[int] = set()
    for x, g in zip(x_list, results, strict=True):
        if g is not None and g.id >= first_new and g.id not in named:
            named.add(g.id)
            g.graph._rename(g, f"grad/{x.name}", exact=False)


def _backprop(y_list: list[Node], x_list: list[Node], grad_ys: Any, unconnected: str,
              checkpoints: Any) -> list[Node | None]:
    """Algorithm 6.5/6.6 proper: the gradient nodes of ``gradients``."""
    seeds = _seed_gradients(y_list, grad_ys)
    recompute = None
    if checkpoints is not None:
        from .checkpointing import Recomputer

        recompute = Recomputer(y_list, x_list, checkpoints)

    between = _nodes_between(x_list, y_list)
    contributions: dict[int, list[Node]] = {}
    for y, seed in zip(y_list, seeds, strict=True):
        if y.id in between:
            contributions.setdefault(y.id, []).append(seed)

    x_ids = {x.id for x in x_list}
    total: dict[int, Node] = {}
    for node_id in sorted(between, reverse=True):
        parts = contributions.pop(node_id, None)
        if not parts:
            continue  # no gradient reached this node (e.g. cut by stop_gradient)
        node = between[node_id]
        grad = add_n(parts)
        if node_id in x_ids:
            total[node_id] = grad
        wanted = tuple(parent.id in between for parent in node.inputs)
        if not any(wanted):
            continue
        if not node.op.has_bprop:
            raise GradientError(
                f"op {node.op.name!r} (node {node.name!r}) has no bprop, so no gradient can flow "
                "through it; wrap its input in stop_gradient or give the op a bprop"
            )
        if recompute is None:
            results = node.op.bprop(node.inputs, node, grad, wanted)
        else:
            results = recompute.bprop(node, grad, wanted)
        if len(results) != len(node.inputs):
            raise GradientError(f"op {node.op.name!r}: bprop returned {len(results)} gradients "
                                f"for {len(node.inputs)} inputs")
        for parent, want, g in zip(node.inputs, wanted, results, strict=True):
            if want and g is not None:
                _check_gradient_shape(node, parent, g)
                if g.dtype != parent.dtype:
                    # numpy's promotion may have widened it (float32 x times a float64
                    # node); a gradient always has the dtype of the value it is for
                    g = cast(g, parent.dtype)
                contributions.setdefault(parent.id, []).append(g)

    out: list[Node | None] = []
    for x in x_list:
        g = total.get(x.id)
        if g is None:
            if unconnected == "raise":
                names = ", ".join(repr(y.name) for y in y_list)
                raise GradientError(f"gradients: {x.name!r} is not connected to {names}")
            g = zeros_like(x) if unconnected == "zero" else None
        out.append(g)
    return out


def _seed_gradients(ys: list[Node], grad_ys: Any) -> list[Node]:
    if grad_ys is None:
        return [ones_like(y) for y in ys]
    # A list or tuple holds one seed per y; anything else is the one seed of a single y.
    # (Never ``list(grad_ys)`` on an array or node: that would split it along axis 0.)
    if isinstance(grad_ys, (list, tuple)):
        seeds_in = list(grad_ys)
    elif len(ys) == 1:
        seeds_in = [grad_ys]
    else:
        raise GraphError(f"gradients: grad_ys must be a list of {len(ys)} seeds, one per y, "
                         f"got {type(grad_ys).__name__}")
    if len(seeds_in) != len(ys):
        raise GraphError(f"gradients: {len(seeds_in)} grad_ys for {len(ys)} ys (grad_ys is a "
                         "list with one seed per y; a single y takes its seed as an array)")
    seeds = []
    for y, seed in zip(ys, seeds_in, strict=True):
        if seed is None:
            seeds.append(ones_like(y))
            continue
        if not isinstance(seed, Node):
            seed = constant(np.asarray(seed, dtype=y.dtype), graph=y.graph)
        elif seed.graph is not y.graph:
            raise GraphError(f"gradients: grad_ys entry {seed.name!r} is in another graph")
        if len(seed.shape) != len(y.shape) or not all(map(same_or_unknown, seed.shape, y.shape)):
            raise ShapeError(f"gradients: grad_ys shape {fmt(seed.shape)} does not match "
                             f"{y.name!r} of shape {fmt(y.shape)}")
        seeds.append(seed)
    return seeds


def _nodes_between(xs: list[Node], ys: list[Node]) -> dict[int, Node]:
    """Differentiable nodes that are ancestors of some y (or a y) and descendants of
    some x (or an x) through ops that pass gradients on (not ``stops_gradient``),
    keyed by id. Two iterative passes, no recursion."""
    ancestors: dict[int, Node] = {}
    stack = [y for y in ys if is_differentiable(y)]
    while stack:
        node = stack.pop()
        if node.id in ancestors:
            continue
        ancestors[node.id] = node
        stack.extend(p for p in node.inputs if p.id not in ancestors and is_differentiable(p))
    x_ids = {x.id for x in xs if is_differentiable(x)}
    between: dict[int, Node] = {}
    for node_id in sorted(ancestors):
        node = ancestors[node_id]
        if node_id in x_ids or (not node.op.stops_gradient
                                and any(p.id in between for p in node.inputs)):
            between[node_id] = node
    return between


def _check_gradient_shape(node: Node, parent: Node, g: Node) -> None:
    if not isinstance(g, Node):
        raise GradientError(f"op {node.op.name!r}: bprop returned {type(g).__name__}, not a node")
    if len(g.shape) != len(parent.shape) or not all(map(same_or_unknown, g.shape, parent.shape)):
        raise GradientError(
            f"op {node.op.name!r} (node {node.name!r}): bprop gave a gradient of shape "
            f"{fmt(g.shape)} for input {parent.name!r} of shape {fmt(parent.shape)}"
        )


@overload
def grad(y: Node, x: Node, grad_y: Any = None, *,
         unconnected: Literal["zero", "raise"] = "zero", name: str | None = None) -> Node: ...
@overload
def grad(y: Node, x: Node, grad_y: Any = None, *, unconnected: str,
         name: str | None = None) -> Node | None: ...
def grad(y: Node, x: Node, grad_y: Any = None, *, unconnected: str = "zero",
         name: str | None = None) -> Node | None:
    """The gradient of one ``y`` with respect to one ``x``: :func:`gradients` for one.

    Parameters
    ----------
    y : Node
        The value to differentiate.
    x : Node
        The node to differentiate with respect to.
    grad_y : array_like or Node, optional
        The seed, shaped like ``y``; ones by default.
    unconnected : {"zero", "none", "raise"}, default "zero"
        As for :func:`gradients`.
    name : str, optional
        Name of the result (default ``grad/<x>``).

    Returns
    -------
    Node or None
        Shaped like ``x``.
    """
    first_new = y.graph._next_id if isinstance(y, Node) else -1
    result = gradients([y], [x], None if grad_y is None else [grad_y],
                       unconnected=unconnected)[0]
    return _named(result, name, first_new)


def _named(node: Node | None, name: str | None, first_new: int = -1) -> Node | None:
    """``node`` renamed ``name`` when a name is given (a node this call built)."""
    if name is None or node is None:
        return node
    if node.id < first_new:
        raise GraphError(f"cannot name the result {name!r}: it is the existing node "
                         f"{node.name!r}")
    node.graph._rename(node, name)
    return node


def jacobian(y: Node, x: Node, *, name: str | None = None) -> Node:
    """The Jacobian ``d y / d x``.

    Built as one gradient per element of ``y``, so keep ``y`` small.

    Parameters
    ----------
    y : Node
        A node with a static shape.
    x : Node
        The node to differentiate with respect to (a static shape when ``y`` is not
        1-D or is empty).
    name : str, optional
        Name of the result.

    Returns
    -------
    Node
        Of shape ``y.shape + x.shape``.

    Raises
    ------
    ShapeError
        If a shape the result needs is not known statically.
    """
    first_new = y.graph._next_id
    result = _named(_jacobian(y, x), name, first_new)
    assert result is not None
    return result


def _jacobian(y: Node, x: Node) -> Node:
    if not is_known(y.shape):
        raise ShapeError(f"jacobian: {y.name!r} needs a static shape, got {fmt(y.shape)}")
    size = int(np.prod(y.shape, dtype=np.int64))
    if not y.shape:
        return grad(y, x)
    if size == 0:
        if not is_known(x.shape):
            raise ShapeError(f"jacobian: {x.name!r} needs a static shape when y is empty")
        return constant(np.zeros(y.shape + x.shape, dtype=x.dtype), graph=x.graph)
    rows = []
    for i in range(size):
        seed = np.zeros(size, dtype=y.dtype)
        seed[i] = 1
        rows.append(grad(y, x, seed.reshape(y.shape)))
    jac = stack(rows)
    if len(y.shape) == 1:
        return jac
    if not is_known(x.shape):
        raise ShapeError(f"jacobian: {x.name!r} needs a static shape when y is not 1-D")
    return reshape(jac, y.shape + x.shape)


def hessian_vector_product(y: Node, x: Node, v: Any, *, name: str | None = None) -> Node:
    """``H v``, where ``H`` is the Hessian of a scalar ``y`` with respect to ``x``.

    Computed as the gradient of ``<grad(y, x), v>``: no Hessian is formed.

    Parameters
    ----------
    y : Node
        A scalar node.
    x : Node
        The node to differentiate with respect to.
    v : array_like or Node
        The vector, shaped like ``x``.
    name : str, optional
        Name of the result (default ``grad/<x>_<n>``).

    Returns
    -------
    Node
        Shaped like ``x``.

    Raises
    ------
    ShapeError
        If ``y`` is not a scalar or ``v`` is not shaped like ``x``.
    """
    if y.shape != ():
        raise ShapeError(f"hessian_vector_product: {y.name!r} must be a scalar, got {fmt(y.shape)}")
    from .ops import sum as sum_

    v_shape = v.shape if isinstance(v, Node) else np.shape(v)
    if len(v_shape) != len(x.shape) or not all(map(same_or_unknown, v_shape, x.shape)):
        # ``g * v`` would broadcast and silently give the product with a summed v
        raise ShapeError(f"hessian_vector_product: v of shape {fmt(v_shape)} does not match "
                         f"{x.name!r} of shape {fmt(x.shape)}")
    g = grad(y, x)
    return grad(sum_(g * v), x, name=name)
