"""Errors raised by the execution layer.

Every error that concerns one task names it (its name and op), so that a failure
deep inside a 100,000-node graph can be traced back to the node that caused it.
"""

from __future__ import annotations

from typing import NoReturn


class SchedulerError(Exception):
    """Base class of the errors the execution layer raises itself."""


class NodeError(SchedulerError):
    """A task raised. ``__cause__`` holds the original exception."""

    def __init__(self, name: str, op: str, cause: BaseException | None = None):
        self.node_name = name
        self.op = op
        self.original = cause
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        super().__init__(f"node {name!r} (op {op}) failed{detail}")


class FeedError(SchedulerError, ValueError):
    """A feed is missing, unknown, ill-shaped or ill-typed. Raised before any task runs."""


class RunCancelled(SchedulerError):
    """The run was cancelled (``Engine.execute(cancel=...)``, or a cancelled
    ``run_async``); no node started after that."""


class CycleError(SchedulerError, ValueError):
    """The task graph has a cycle; ``path`` lists the keys around it."""

    def __init__(self, path: list):
        self.path = list(path)
        super().__init__("task graph has a cycle: " + " -> ".join(repr(k) for k in self.path))


class NumericsError(SchedulerError, FloatingPointError):
    """``check_numerics`` found NaN or Inf in a task's output."""

    def __init__(self, name: str, op: str, what: str):
        self.node_name = name
        self.op = op
        super().__init__(f"node {name!r} (op {op}) produced {what}")


def raise_task_error(name: str, op: str, exc: BaseException) -> NoReturn:
    """Raise the run's error for its task ``name`` (op ``op``), which raised ``exc``:
    one definition of how a failing task is reported, shared by the plan's walk and
    its compiled form so that both name the task alike."""
    raise NodeError(name, op, exc) from exc
