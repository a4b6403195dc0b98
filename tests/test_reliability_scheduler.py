"""Reliability of the execution layer's shared state: the pause of the garbage
collector across threads, and an engine's pools when it is closed or collected on a
thread of its own."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from scheduler.plan import gc_paused


@pytest.fixture
def gc_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_overlapping_gc_pauses_keep_the_collector_off_until_the_last_ends(gc_on):
    first, second = gc_paused(), gc_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # ends before the second, as on another thread
    assert not gc.isenabled(), "the collector came back while a pause was still in effect"
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_gc_pauses_on_16_threads_never_leave_the_collector_off(gc_on):
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as much as possible
    errors: list = []
    start = threading.Barrier(16)

    def pauser() -> None:
        try:
            start.wait()
            for _ in range(3000):
                with gc_paused():
                    pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        for _ in range(6):
            threads = [threading.Thread(target=pauser) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert gc.isenabled(), "the cyclic collector was left disabled"
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors[:3]
