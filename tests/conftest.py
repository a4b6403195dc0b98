"""Shared fixtures: every test fails if it leaves threads or child processes behind."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

import scheduler


def _threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


@pytest.fixture(autouse=True)
def no_leaked_threads_or_processes():
    before = _threads()
    yield
    # scheduler.run and scheduler.get share default engines across calls; closing them
    # must leave nothing behind either.
    scheduler.close_default_engines()
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate()
                  if t.ident not in before and t.is_alive() and not _ignored(t)]
        children = multiprocessing.active_children()
        if not leaked and not children:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    names = [t.name for t in leaked] + [f"process {p.pid}" for p in children]
    pytest.fail(f"test left threads or processes behind: {names}")


def _ignored(thread: threading.Thread) -> bool:
    # asyncio's default executor belongs to the event loop fixture, not to the test;
    # the queue-feeder thread of a process pool lingers briefly after shutdown.
    # dask.distributed keeps one process-wide offload thread once it has been used.
    return thread.name.startswith(("asyncio_", "QueueFeederThread", "Dask-Offload"))
