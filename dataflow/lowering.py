"""How a node looks to the execution layer: a ``scheduler.TaskSpec``.

The engine knows nothing about ops or derivatives; it sees a kernel, the nodes whose
values the kernel takes, a literal (for constants) or a feed check (for placeholders),
and a cost key that lets it learn how long nodes of this op and these shapes take.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import numpy as np

from scheduler.errors import NodeError
from scheduler.spec import REUSE_MIN_BYTES, TaskSpec

from .errors import ShapeError
from .graph import Node
from .ops.core import Constant, Placeholder, convert_feed
from .shapes import fmt


def task_spec(node: Node) -> TaskSpec:
    op = node.op
    if isinstance(op, Constant):
        return TaskSpec(None, (), node.name, op.name, value=op.value)
    if isinstance(op, Placeholder):
        return TaskSpec(None, (), node.name, op.name, check_feed=feed_check(node))
    cost_key = (op.name, tuple(p.shape for p in node.inputs), node.dtype.char)
    numpy_inputs = all(i.op.returns_numpy and i.op.builtin for i in node.inputs)
    kernel = op.kernel() if numpy_inputs or not op.kernel_takes_numpy_only else op.forward
    if not op.builtin:
        kernel = CheckedKernel(kernel, node.name, op.name, node.shape, node.dtype)
    return TaskSpec(kernel, node.inputs, node.name, op.name, cost_key=cost_key,
                    check_feed=feed_check(node), reusable=reusable_inputs(node, kernel),
                    cost_hint=cost_hint(node))


# What the static cost hint charges besides the op's arithmetic: the fixed cost of a
# numpy call, and moving each byte read or written through memory (a few GB/s).
SECONDS_PER_CALL = 1e-6
SECONDS_PER_BYTE = 0.25e-9


def cost_hint(node: Node) -> float | None:
    """A guess of ``node``'s run time in seconds from its static shapes, as TensorFlow's
    cost model guesses from flops and bytes: ``Op.flops`` at the op's
    ``flops_per_second``, plus the bytes its inputs and output move, plus a call. It
    only has to tell a 1 µs node from a 1 ms one, so that a large matmul is known to be
    worth a thread hand-off before it ever ran. ``None`` (unknown: the engine presumes
    it expensive) for ops users wrote, whose cost nothing tells, and for shapes with
    unknown dimensions."""
    op = node.op
    if not op.builtin:
        return None
    shapes = [i.shape for i in node.inputs]
    if None in node.shape or any(None in s for s in shapes):
        return None
    nbytes = sum(math.prod(i.shape) * i.dtype.itemsize for i in node.inputs)
    nbytes += math.prod(node.shape) * node.dtype.itemsize
    flops = op.flops(shapes, node.shape)
    return SECONDS_PER_CALL + flops / op.flops_per_second + nbytes * SECONDS_PER_BYTE


_PYTHON_SCALARS = (float, int, bool)


def feed_check(node: Node) -> Any:
    """The check of a value fed to ``node``: ``convert_feed``'s one rule, for
    placeholders and fed computed nodes alike (the kernels after a computed node count
    on its static shape and dtype as much as those after a placeholder do)."""
    shape, dtype = node.shape, node.dtype  # a shape with unknown dims never matches below
    scalar = shape == ()

    def check_feed(value: Any) -> Any:
        # The common feed, an array of exactly the declared shape and dtype, passes in
        # a few comparisons: this runs for every fed node of every run. Every computed
        # node gets this check, so the message is only built when it is needed.
        if type(value) is np.ndarray and value.dtype == dtype and value.shape == shape:
            return value
        if scalar and type(value) in _PYTHON_SCALARS:
            # A Python number fed to a 0-d node (``{x: 1.0}``): the array numpy makes of
            # it, when that has the node's dtype, is what ``convert_feed`` would return.
            array = np.asarray(value)
            if array.dtype == dtype:
                return array
        kind = "placeholder" if isinstance(node.op, Placeholder) else "node"
        return convert_feed(f"{kind} {node.name!r}", value, shape, dtype)

    return check_feed


class CheckedKernel:
    """A user-defined op's kernel, whose result is checked against the node's static
    shape (where known) and dtype: a kernel that breaks its op's shape rule fails at
    its own node, not at the next node (which would be blamed for it), and never
    passes silently. The result is made numpy (a Python scalar or list), as built-in
    kernels' results are. Built-in ops are trusted and run unwrapped.

    A plain class rather than a closure, so that process pools can pickle it (when
    the kernel itself can be)."""

    __slots__ = ("kernel", "name", "op", "shape", "dtype")

    def __init__(self, kernel: Any, name: str, op: str, shape: tuple, dtype: np.dtype):
        self.kernel = kernel
        self.name = name
        self.op = op
        self.shape = shape
        self.dtype = dtype

    def __call__(self, *values: Any) -> Any:
        value = self.kernel(*values)
        if not isinstance(value, (np.ndarray, np.generic)):
            given = type(value).__name__
            try:
                value = np.asarray(value)
            except Exception as exc:  # noqa: BLE001 - reported as the contract break
                self._broken(TypeError(f"op {self.op} returned a {given}, not an array of "
                                       f"dtype {self.dtype} ({exc})"))
            if value.dtype == object:
                self._broken(TypeError(f"op {self.op} returned a {given}, not an array of "
                                       f"dtype {self.dtype}"))
        shape = np.shape(value)
        if len(shape) != len(self.shape) or any(
                d is not None and d != a for d, a in zip(self.shape, shape)):
            self._broken(ShapeError(f"op {self.op} returned shape {fmt(shape)} where its "
                                    f"shape rule gave {fmt(self.shape)}"))
        if value.dtype != self.dtype:
            self._broken(TypeError(f"op {self.op} returned dtype {value.dtype} where its "
                                   f"shape rule gave {self.dtype}"))
        return value

    def _broken(self, reason: Exception) -> NoReturn:
        # The op broke its own contract: no exception of the kernel's, so a NodeError
        # naming the node (the kernel itself ran fine).
        raise NodeError(self.name, self.op, reason) from None

    def __reduce__(self) -> tuple:
        return (CheckedKernel, (self.kernel, self.name, self.op, self.shape, self.dtype))


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
