"""Reliability of the execution layer's shared state: the pause of the garbage
collector across threads, and an engine's pools when it is closed or collected on a
thread of its own."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time

import pytest

import dataflow as df
import scheduler
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


# -- an engine closed or collected on one of its own threads --------------------------

def _dataflow_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dataflow-")]


def _wait_for_no_dataflow_threads() -> None:
    deadline = time.monotonic() + 10.0
    while _dataflow_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _dataflow_threads(), f"pools left running: {_dataflow_threads()}"


def _started_asyncio_engine() -> scheduler.Engine:
    """An asyncio engine with both its coordinators and its worker pool started."""
    engine = scheduler.Engine("asyncio", workers=2, inline_threshold=0)
    with df.Graph():
        x = df.placeholder("x", ())
        out = df.sin(x) + df.cos(x)
    assert asyncio.run(engine.run_async(out, {x: 0.0})) == 1.0
    assert sorted({name.rsplit("_", 1)[0] for name in _dataflow_threads()}) == [
        "dataflow-asyncio", "dataflow-coordinator"]
    return engine


def test_closing_an_engine_on_one_of_its_own_threads_shuts_every_pool_down():
    engine = _started_asyncio_engine()
    engine._coordinators().submit(engine.close).result(timeout=30)  # no "cannot join"
    _wait_for_no_dataflow_threads()


def test_an_unclosed_engine_collected_on_its_own_thread_shuts_every_pool_down(monkeypatch):
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    box = [_started_asyncio_engine()]
    coordinators = box[0]._coordinators()
    # The engine's last reference dies on one of its coordinator threads.
    coordinators.submit(box.clear).result(timeout=30)
    del coordinators
    _wait_for_no_dataflow_threads()
    assert not unraisable, [u.exc_value for u in unraisable]


# -- errors that cross process boundaries ------------------------------------------------

def test_scheduler_errors_survive_a_pickle_round_trip():
    """A nested run's NodeError raised in a worker process travels back pickled."""
    import pickle

    error = scheduler.NodeError("inner", "sin", ValueError("bad"))
    back = pickle.loads(pickle.dumps(error))
    assert (back.node_name, back.op, str(back)) == ("inner", "sin", str(error))
    assert isinstance(back.original, ValueError) and str(back.original) == "bad"
    numerics = pickle.loads(pickle.dumps(scheduler.NumericsError("n", "log", "NaN")))
    assert (numerics.node_name, numerics.op) == ("n", "log")
    assert str(numerics) == "node 'n' (op log) produced NaN"


def test_an_exception_that_cannot_travel_becomes_a_summary():
    from scheduler.errors import MAX_TRACEBACK_FRAMES, sendable

    class Local(Exception):  # defined here: cannot be pickled by reference
        pass

    def deep(n: int) -> None:
        if n == 0:
            raise Local("from below")
        deep(n - 1)

    try:
        deep(200)
    except Local as exc:
        summary = sendable(exc)
    assert isinstance(summary, scheduler.RemoteError)
    assert summary.type_name.endswith("Local") and summary.message == "from below"
    assert "deep" in summary.traceback_text
    frames = 0
    tb = summary.__traceback__
    while tb is not None:
        frames, tb = frames + 1, tb.tb_next
    assert frames <= MAX_TRACEBACK_FRAMES
    ok = ValueError("fine")
    assert sendable(ok) is ok
