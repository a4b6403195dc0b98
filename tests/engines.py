"""Helpers shared by the test modules: engines by executor name, and ops that fail in
ways only a worker process survives to report. Module-level, so that process pools can
unpickle the ops."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import dataflow as df
import scheduler
from scheduler import Callback


def make_engine(kind: str, **kwargs: Any) -> scheduler.Engine:
    """An engine of two workers; ``threads-all-pooled`` and ``processes`` send every
    task to the pool (``inline_threshold=0``) so that the pool is really exercised."""
    if kind == "threads-all-pooled":
        return scheduler.Engine("threads", workers=2, inline_threshold=0, **kwargs)
    if kind == "processes":
        return scheduler.Engine("processes", workers=2, inline_threshold=0, **kwargs)
    return scheduler.Engine(kind, workers=2, **kwargs)


class ExitWorker(df.Op):
    """Kills the process that runs it (``os._exit``)."""

    name = "tests.exit_worker"

    def forward(self, x):
        os._exit(3)


class Blob:
    """A value whose live instances are counted (``Blob.live``): for tests of when the
    engine lets values die."""

    live: weakref.WeakSet = weakref.WeakSet()

    def __init__(self) -> None:
        Blob.live.add(self)


def blob_kernel() -> tuple[Callable[..., Blob], list[int]]:
    """A kernel that makes a new ``Blob`` from any parents, and a one-item list holding
    the most blobs that were alive when it was called."""
    high = [0]

    def grow(*parents: Any) -> Blob:
        high[0] = max(high[0], len(Blob.live))
        return Blob()

    return grow, high


class RaisingIn(Callback):
    """A callback whose hook ``hook`` raises: every other callback's ``finish`` must
    still run."""

    def __init__(self, hook: str):
        self.hook = hook

    def _maybe(self, hook: str) -> None:
        if hook == self.hook:
            raise RuntimeError(f"callback broke in {hook}")

    def start(self, run: Any) -> None:
        self._maybe("start")

    def pretask(self, run: Any, position: int) -> None:
        self._maybe("pretask")

    def posttask(self, run: Any, record: Any) -> None:
        self._maybe("posttask")

    def finish(self, run: Any, error: BaseException | None) -> None:
        self._maybe("finish")
