"""How a node looks to the execution layer: a ``scheduler.TaskSpec``.

The engine knows nothing about ops or derivatives; it sees a kernel, the nodes whose
values the kernel takes, a literal (for constants) or a feed check (for placeholders),
and a cost key that lets it learn how long nodes of this op and these shapes take.
"""

from __future__ import annotations

from typing import Any

from scheduler.spec import TaskSpec

from .graph import Node
from .ops.core import Constant, Placeholder


def task_spec(node: Node) -> TaskSpec:
    op = node.op
    if isinstance(op, Constant):
        return TaskSpec(None, (), node.name, op.name, value=op.value)
    if isinstance(op, Placeholder):
        def check_feed(value: Any, _op: Placeholder = op, _name: str = node.name) -> Any:
            return _op.check_feed(_name, value)

        return TaskSpec(None, (), node.name, op.name, check_feed=check_feed)
    cost_key = (op.name, tuple(p.shape for p in node.inputs), node.dtype.char)
    return TaskSpec(op.kernel(), node.inputs, node.name, op.name, cost_key=cost_key)
