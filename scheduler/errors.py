"""Errors raised by the execution layer, and the note that names a failing task.

Every error that concerns one task names it (its name and op), so that a failure
deep inside a 100,000-node graph can be traced back to the node that caused it. A
task's own exception reaches the caller as the original object, of its own type, with
a PEP 678 note naming the node (:func:`add_node_note`), as dask, ``concurrent.futures``
and joblib re-raise it; :class:`NodeError` is only for failures that are no task's
own exception (a worker died, a task or its result could not be sent). Also how a
task's exception is made fit to cross from a worker process back to the driver
(``sendable``).
"""

from __future__ import annotations

import pickle
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, NoReturn

import numpy as np


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
            exc.__notes__ = [note]  # type: ignore[attr-defined]  # PEP 678 by hand
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

    def __reduce__(self) -> tuple:  # it crosses from worker processes (nested runs)
        return type(self), (self.node_name, self.op, self.original), self.__dict__


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
    """A task depends on a key that the task graph does not hold and nothing feeds.

    dask's ``ValueError("Missing dependency ...")``.

    Parameters
    ----------
    key : object
        The missing key (``key`` attribute).
    dependents : list
        The tasks found waiting for it (``dependents`` attribute).
    """

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
        self.what = what
        super().__init__(f"node {name!r} (op {op}) produced {what}")

    def __reduce__(self) -> tuple:
        return type(self), (self.node_name, self.op, self.what), self.__dict__


class RemoteError(Exception):
    """Stands in for a task's exception that could not be sent back from its worker.

    Such an exception does not survive a pickle round trip; this summary of it does.
    It reaches the caller as the cause of a ``NodeError`` naming the task.

    Parameters
    ----------
    type_name : str
        The exception's type's name (``type_name`` attribute).
    message : str
        Its message (``message`` attribute).
    traceback_text : str
        Its traceback in the worker, formatted (``traceback_text`` attribute).
    """

    def __init__(self, type_name: str, message: str, traceback_text: str):
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


#: an exception sent back from a worker keeps this many frames of each traceback: the
#: first and the last half (where it was called, and where it was raised)
MAX_TRACEBACK_FRAMES = 40


def _trim_traceback(tb: TracebackType | None) -> None:
    """Cut a traceback down to MAX_TRACEBACK_FRAMES frames, in place (a traceback is a
    linked list of frames whose ``tb_next`` is writable)."""
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    if len(frames) > MAX_TRACEBACK_FRAMES:
        half = MAX_TRACEBACK_FRAMES // 2
        frames[half - 1].tb_next = frames[-half]


def sendable(exc: BaseException, dumps: Callable[[Any], bytes] = pickle.dumps,
             loads: Callable[[bytes], Any] = pickle.loads) -> BaseException:
    """``exc``, made fit to travel from a worker process back to the driver with the
    pickler ``dumps``/``loads`` of the channel: the tracebacks of it and of the
    exceptions it was raised from or while handling, trimmed (a ``RecursionError``
    carries a thousand frames, too deep to pickle); then, if it still does not survive
    a round trip (an unpicklable argument, an ``__init__`` that unpickling cannot call),
    a :class:`RemoteError` describing it. An error that cannot be sent would otherwise
    never arrive (a dask run hangs) or break the channel (a process pool)."""
    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:  # its causes and contexts, iteratively (they may form a cycle)
        e = chain.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        _trim_traceback(e.__traceback__)
        chain.extend((e.__cause__, e.__context__))
    try:
        loads(dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to pickle means: send a summary
        pass
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__
        message = object.__repr__(exc)
    text = "".join(traceback.format_tb(exc.__traceback__))
    return RemoteError(type(exc).__qualname__, message, text).with_traceback(exc.__traceback__)


def unsendable(value: Any, dumps: Callable[[Any], bytes] = pickle.dumps,
               loads: Callable[[bytes], Any] = pickle.loads) -> BaseException | None:
    """Why a task's value cannot travel from a worker process back to the driver with
    the pickler ``dumps``/``loads`` (None if it can). Arrays of numbers and Python
    scalars always can, and are not pickled to find out; anything else is round-tripped
    (a value that pickles but does not unpickle would otherwise break the channel)."""
    if type(value) is np.ndarray:
        if not value.dtype.hasobject:
            return None
    elif isinstance(value, _PLAIN):
        return None
    try:
        loads(dumps(value))
    except Exception as exc:  # noqa: BLE001 - whatever pickling raised
        return TypeError(f"its value ({type(value).__name__}) cannot be sent back from the "
                         f"worker: {type(exc).__name__}: {exc}")
    return None


_PLAIN = (int, float, complex, bool, str, bytes, type(None), np.generic)


def raise_task_error(name: str, op: str, exc: BaseException) -> NoReturn:
    """Raise the run's error for its task ``name`` (op ``op``), which raised ``exc``:
    ``exc`` itself, with a note naming the task (:func:`add_node_note`). One definition
    of how a failing task is reported, shared by the plan's walks and its compiled
    form, so that all name the task alike."""
    raise add_node_note(exc, name, op)
