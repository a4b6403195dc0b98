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
from .ops.core import Constant, Placeholder


def task_spec(node: Node) -> TaskSpec:
    op = node.op
    if isinstance(op, Constant):
        return TaskSpec(None, (), node.name, op.name, value=op.value)
    if isinstance(op, Placeholder):
        shape, dtype = op.shape, op.dtype  # a shape with unknown dims never matches below

        def check_feed(value: Any, _op: Placeholder = op, _name: str = node.name) -> Any:
            # The common feed, an array of exactly the declared shape and dtype, passes
            # in a few comparisons: this runs for every placeholder of every run.
            if type(value) is np.ndarray and value.dtype == dtype and value.shape == shape:
                return value
            return _op.check_feed(_name, value)

        return TaskSpec(None, (), node.name, op.name, check_feed=check_feed)
    cost_key = (op.name, tuple(p.shape for p in node.inputs), node.dtype.char)
    numpy_inputs = all(i.op.returns_numpy and i.op.builtin for i in node.inputs)
    kernel = op.kernel() if numpy_inputs or not op.kernel_takes_numpy_only else op.forward
    return TaskSpec(kernel, node.inputs, node.name, op.name, cost_key=cost_key,
                    check_feed=_numpy_value, reusable=reusable_inputs(node, kernel))


def _numpy_value(value: Any) -> Any:
    """A value fed to a computed node, as numpy: the kernels after it may count on it."""
    return value if isinstance(value, (np.ndarray, np.generic)) else np.asarray(value)


def reusable_inputs(node: Node, kernel: Any) -> tuple[int, ...]:
    """The inputs whose buffer ``kernel`` (a one-output numpy ufunc, or a kernel that
    says it ``writes_out`` like one, such as a fused one) may write ``node``'s
    value into: same dtype, and a shape that is the output's whatever the unknown dims
    turn out to be; none for outputs known to be under ``REUSE_MIN_BYTES``. An input's
    unknown dim is safe only where every other input has no such dim or a 1 (else the
    other could be the larger one at run time)."""
    one_output_ufunc = isinstance(kernel, np.ufunc) and kernel.nout == 1
    if not one_output_ufunc and not getattr(kernel, "writes_out", False):
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
