"""Callback hooks around a run, in dask's style: ``start``, ``pretask``, ``posttask``
and ``finish`` (always called, in a ``finally``). All hooks run on the thread that
drives the run, one at a time, so a callback needs no locking. When no callback is
registered the engine takes a path that does not call or time anything extra.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .plan import Plan


@dataclass
class RunInfo:
    """What a callback knows about the run in progress.

    Attributes
    ----------
    plan : Plan
        The compiled plan being run (its ``names``, ``ops`` and ``keys`` describe each
        task position).
    executor : str
        The executor's name (``"inline"``, ``"threads"``, ...).
    workers : int
        The engine's pool size.
    started : float
        ``time.perf_counter()`` when the run began.
    fetch_keys : list
        The keys being fetched.
    """

    plan: Plan
    executor: str
    workers: int
    started: float  # time.perf_counter() when the run began
    fetch_keys: list = field(default_factory=list)


class TaskRecord(NamedTuple):
    """One executed task, as reported to ``posttask``.

    Attributes
    ----------
    position : int
        The task's index in the plan's arrays.
    key : hashable
        The graph node, or the key of a plain task graph.
    name, op : str
        The task's name and op.
    worker : str
        The thread, process or dask worker that ran it.
    ready, start, end : float
        When its last parent finished, when it started and when it ended, in
        ``time.perf_counter()`` seconds.
    value : object
        Its output (do not keep it: that would keep the array alive).
    """

    position: int  # index into the plan's arrays
    key: Hashable  # the graph node, or the key of a plain task graph
    name: str
    op: str
    worker: str  # which thread, process or dask worker ran it
    ready: float  # when its last parent finished
    start: float
    end: float
    value: Any


class Callback:
    """Hooks called around a run; subclass and override the ones you need.

    Pass instances as ``Engine(callbacks=[...])`` (every run) or
    ``engine.run(..., callbacks=[...])`` (one run). The hooks run on the thread that
    drives the run, one at a time. :class:`~scheduler.Profiler` and
    :class:`~scheduler.ProgressBar` are callbacks.
    """

    def start(self, run: RunInfo) -> None:
        """Called once before any task of the run starts.

        Parameters
        ----------
        run : RunInfo
            The run; the same object is passed to the other hooks of this run.
        """

    def pretask(self, run: RunInfo, position: int) -> None:
        """Called before a task starts (on the driving thread, when it hands the task on).

        Parameters
        ----------
        run : RunInfo
            The run.
        position : int
            The task's position in ``run.plan``.
        """

    def posttask(self, run: RunInfo, record: TaskRecord) -> None:
        """Called after each task finishes, with its timings and value.

        Parameters
        ----------
        run : RunInfo
            The run.
        record : TaskRecord
            What ran, where and when.
        """

    def finish(self, run: RunInfo, error: BaseException | None) -> None:
        """Called once when the run ends, whether it succeeded or not (in a ``finally``).

        Parameters
        ----------
        run : RunInfo
            The run.
        error : BaseException or None
            The error that ended the run, ``None`` on success.
        """
