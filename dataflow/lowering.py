"""How a node looks to the execution layer: a ``scheduler.TaskSpec``.

The engine knows nothing about ops or derivatives; it sees a kernel, the nodes whose
values the kernel takes, a literal (for constants) or a feed check (for placeholders),
and a cost key that lets it learn how long nodes of this op and these shapes take.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scheduler.spec import REUSE_MIN_BYTES, TaskSpec

from .graph import Node
from .ops.core import Constant, Placeholder, convert_feed


def task_spec(node: Node) -> TaskSpec:
    op = node.op
    if isinstance(op, Constant):
        return TaskSpec(None, (), node.name, op.name, value=op.value)
    if isinstance(op, Placeholder):
        return TaskSpec(None, (), node.name, op.name, check_feed=feed_check(node))
    cost_key = (op.name, tuple(p.shape for p in node.inputs), node.dtype.char)
    numpy_inputs = all(i.op.returns_numpy and i.op.builtin for i in node.inputs)
    kernel = op.kernel() if numpy_inputs or not op.kernel_takes_numpy_only else op.forward
    return TaskSpec(kernel, node.inputs, node.name, op.name, cost_key=cost_key,
                    check_feed=feed_check(node), reusable=reusable_inputs(node, kernel))


def feed_check(node: Node) -> Any:
    """The check of a value fed to ``node``: ``convert_feed``'s one rule, for
    placeholders and fed computed nodes alike (the kernels after a computed node count
    on its static shape and dtype as much as those after a placeholder do)."""
    shape, dtype = node.shape, node.dtype  # a shape with unknown dims never matches below
    kind = "placeholder" if isinstance(node.op, Placeholder) else "node"
    what = f"{kind} {node.name!r}"

    def check_feed(value: Any) -> Any:
        # The common feed, an array of exactly the declared shape and dtype, passes in
        # a few comparisons: this runs for every fed node of every run.
        if type(value) is np.ndarray and value.dtype == dtype and value.shape == shape:
            return value
        return convert_feed(what, value, shape, dtype)

    return check_feed


def reusable_inputs(node: Node, kernel: Any) -> tuple[int, ...]:
    """The inputs whose buffer ``kernel`` (a one-output numpy ufunc) may write ``node``'s
    value into: same dtype, and a shape that is the output's whatever the unknown dims
    turn out to be; none for outputs known to be under ``REUSE_MIN_BYTES``. An input's
    unknown dim is safe only where every other input has no such dim or a 1 (else the
    other could be the larger one at run time)."""
    if not isinstance(kernel, np.ufunc) or kernel.nout != 1:
        return ()
    out_shape = node.shape
    if None not in out_shape and math.prod(out_shape) * node.dtype.itemsize < REUSE_MIN_BYTES:
        return ()
    found = []
    for i, candidate in enumerate(node.inputs):
        if candidate.dtype != node.dtype or candidate.shape != out_shape:
            continue
        safe = True
        for j, other in enumerate(node.inputs):
            if j == i:
                continue
            offset = len(out_shape) - len(other.shape)
            for axis, dim in enumerate(other.shape):
                if dim != 1 and out_shape[offset + axis] is None:
                    safe = False
        if safe:
            found.append(i)
    return tuple(found)
