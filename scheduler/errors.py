"""Errors raised by the execution layer, and the note that names a failing task.

Every error that concerns one task names it (its name and op), so that a failure
deep inside a 100,000-node graph can be traced back to the node that caused it. A
task's own exception reaches the caller as the original object, of its own type, with
a PEP 678 note naming the node (:func:`add_node_note`), as dask, ``concurrent.futures``
and joblib re-raise it; :class:`NodeError` is only for failures that are no task's
own exception (a worker died, a task or its result could not be sent).
"""

from __future__ import annotations

import sys
from typing import NoReturn


class SchedulerError(Exception):
    """Base class of the errors the execution layer raises itself."""


def node_note(name: str, op: str) -> str:
    """The note that :func:`add_node_note` adds."""
    return f"node {name!r} (op {op}) failed"


def add_node_note(exc: BaseException, name: str, op: str) -> BaseException:
    """Add a PEP 678 note naming the node (and its op) that raised ``exc``; returns
    ``exc``. A note already there is not added twice (the same exception object may be
    raised again, by a retried run or a nested one)."""
    note = node_note(name, op)
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list) and note in notes:
        return exc
    try:
        if sys.version_info >= (3, 11):
            exc.add_note(note)
        elif isinstance(notes, list):
            notes.append(note)
        else:
            exc.__notes__ = [note]
    except (AttributeError, TypeError):  # an exception object that takes no attributes
        pass
    return exc


class NodeError(SchedulerError):
    """A task failed in a way that is not its own exception.

    Its worker died, or the task, its arguments or its result could not be sent to or
    back from the worker. A task that raises gives its own exception instead (see
    :func:`add_node_note`).

    Parameters
    ----------
    name : str
        The failed task's name (``node_name`` attribute).
    op : str
        Its op (``op`` attribute).
    cause : BaseException, optional
        What the pool raised (``original`` attribute, and ``__cause__``).
    """

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


class CycleError(SchedulerError, ValueError, RuntimeError):
    """The task graph has a cycle.

    Also a ``RuntimeError``, which is what dask raises for a cycle.

    Parameters
    ----------
    path : list
        The keys around the cycle (``path`` attribute).
    """

    def __init__(self, path: list):
        self.path = list(path)
        super().__init__("task graph has a cycle: " + " -> ".join(repr(k) for k in self.path))


class UnknownKeyError(KeyError):
    """A task graph has no such key (what a task graph source raises when asked)."""


class MissingDependencyError(SchedulerError, ValueError):
    """A task depends on a key that the task graph does not hold and nothing feeds:
    dask's ``ValueError("Missing dependency ...")``. ``key`` is the missing key,
    ``dependents`` the tasks found waiting for it."""

    def __init__(self, key: object, dependents: list):
        self.key = key
        self.dependents = list(dependents)
        super().__init__(f"Missing dependency {key!r} for dependents {self.dependents!r}")


class NumericsError(SchedulerError, FloatingPointError):
    """``check_numerics`` found NaN or Inf in a task's output.

    Parameters
    ----------
    name : str
        The task's name (``node_name`` attribute).
    op : str
        Its op (``op`` attribute).
    what : str
        What was found (``"NaN"``, ``"Inf"``).
    """

    def __init__(self, name: str, op: str, what: str):
        self.node_name = name
        self.op = op
        super().__init__(f"node {name!r} (op {op}) produced {what}")


def raise_task_error(name: str, op: str, exc: BaseException) -> NoReturn:
    """Raise the run's error for its task ``name`` (op ``op``), which raised ``exc``:
    ``exc`` itself, with a note naming the task (:func:`add_node_note`). One definition
    of how a failing task is reported, shared by the plan's walks and its compiled
    form, so that all name the task alike."""
    raise add_node_note(exc, name, op)
