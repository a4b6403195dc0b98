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
    """What a callback knows about the run in progress."""

    plan: Plan
    executor: str
    workers: int
    started: float  # time.perf_counter() when the run began
    fetch_keys: list = field(default_factory=list)


class TaskRecord(NamedTuple):
    """One executed task, as reported to ``posttask``. Times are ``time.perf_counter()``."""

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
    """Subclass and override the hooks you need."""

    def start(self, run: RunInfo) -> None:
        pass

    def pretask(self, run: RunInfo, position: int) -> None:
        pass

    def posttask(self, run: RunInfo, record: TaskRecord) -> None:
        pass

    def finish(self, run: RunInfo, error: BaseException | None) -> None:
        pass
