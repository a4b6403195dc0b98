"""Large arrays through shared memory for the ``processes`` executor (scheduler.shared_arrays)."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import json
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest
from bits import same_bits

import dataflow as df
import scheduler
from scheduler import NodeError
from scheduler import shared_arrays as sa
from scheduler.executors import call_timed_shared

pytestmark = pytest.mark.skipif(not sa.AVAILABLE or not os.path.isdir(sa.SHM_DIR),
                                reason="needs POSIX shared memory in /dev/shm")

MB8 = (1024, 1024)  # float64: 8 MiB


@pytest.fixture(autouse=True)
def no_leftover_blocks():
    yield
    gc.collect()
    assert sa.leftovers() == []


def arrays():
    """Arrays of every layout and dtype the round trips must preserve."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((64, 48))
    readonly = base.copy()
    readonly.flags.writeable = False
    return {
        "zero_d": np.array(3.25),
        "float32": rng.standard_normal((33, 17)).astype(np.float32),
        "int64": rng.integers(-(2**62), 2**62, (40, 9), dtype=np.int64),
        "bool": rng.random((31, 7)) > 0.5,
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "strided": base[1:, 1::2],
        "sparse": base[::16, ::12],  # spread far beyond its bytes: packed like pickle
        "reversed": base[::-1, ::-2],
        "broadcast": np.broadcast_to(np.arange(48.0), (64, 48)),
        "readonly": readonly,
        "big_endian": base.astype(">f8"),
        "complex": (base + 1j * base[::-1]).astype(np.complex64),
        "structured": np.array([(1, 2.5), (3, -1.0)] * 40, dtype=[("a", "<i4"), ("b", "<f8")]),
        "nan": np.array([np.nan, -0.0, np.inf, 1.0]),
        "datetime": np.arange("2020-01-01", "2020-03-01", dtype="datetime64[D]"),
    }


def same(a, b, layout=True, align=True):
    """Bitwise equal, and (``layout``) with the same strides and (``align``) the same
    address modulo ALIGN."""
    assert type(b) is np.ndarray
    assert a.dtype == b.dtype and a.shape == b.shape
    assert same_bits(a, b)  # bitwise, NaN and -0.0 included
    if layout:
        assert a.strides == b.strides
    if layout and align:
        assert sa._address(a) % sa.ALIGN == sa._address(b) % sa.ALIGN


def prefix():
    return f"{sa.PREFIX}_{os.getpid()}_test_"


# -- round trips in one process ------------------------------------------------------------
@pytest.mark.parametrize("reach", [True, False], ids=["by-descriptor", "by-name"])
@pytest.mark.parametrize("name", list(arrays()))
def test_argument_round_trip(name, reach):
    a = arrays()[name]
    sharing = sa.Sharing(prefix(), reach=reach, min_bytes=1)
    call, pins = sharing.share((a, "not an array", 7))
    handle = call.args[0]
    assert type(handle) is sa.ArrayHandle and call.args[1:] == ("not an array", 7)
    assert len(pickle.dumps(call)) < 1024
    # by descriptor, the name is gone before the worker ever sees the task
    assert (handle.name == "") == reach and (sa.leftovers() == []) == reach
    got, text, seven = sa.open_args(call)
    same(a, got, layout=name != "sparse")
    assert not got.flags.writeable
    with pytest.raises(ValueError):
        got.flags.writeable = True
    del got
    sharing.release(pins)
    assert sa.leftovers() == []


@pytest.mark.parametrize("name", list(arrays()))
def test_result_round_trip(name):
    a = arrays()[name]
    call = sa.SharedCall((), prefix(), 1, sa._tracker_id())
    handle = sa.share_result(a, call)
    assert type(handle) is sa.ArrayHandle and len(pickle.dumps(handle)) < 1024
    assert sa.leftovers() == [handle.name]  # in transit: the worker holds no mapping
    got = sa.open_result(pickle.loads(pickle.dumps(handle)))
    assert sa.leftovers() == []  # unlinked as soon as the driver has mapped it
    same(a, got, layout=name != "sparse")
    assert got.flags.writeable  # like an unpickled array
    mapping = weakref.ref(sa._mapping_of(got))
    view = got[..., ::-1] if got.ndim else got[()]
    del got
    gc.collect()
    assert (mapping() is not None) == isinstance(view, np.ndarray)  # views keep it mapped
    del view
    assert mapping() is None  # unmapped with the last array


def test_small_and_other_values_pass_through_untouched():
    sharing = sa.Sharing(prefix(), reach=True)
    small = np.ones(sa.MIN_BYTES // 8 - 1)
    objects = np.array([object()] * 10000)
    masked = np.ma.masked_array(np.ones((200, 200)))
    values = (small, objects, masked, np.float64(2.0), [np.ones(100000)], None, np.empty((0, 9)))
    call, pins = sharing.share(values)
    assert all(a is b for a, b in zip(call.args, values, strict=True)) and pins == []
    assert all(sa.share_result(v, call) is v for v in values)


def test_an_argument_in_flight_twice_is_copied_once():
    sharing = sa.Sharing(prefix(), reach=False, min_bytes=1)
    a = np.arange(100000.0)
    run = object()
    call1, pins1 = sharing.share((a, a), run)
    call2, pins2 = sharing.share((a,), run)
    assert call1.args[0] == call1.args[1] == call2.args[0]
    assert len(sa.leftovers()) == 1
    sharing.release(pins1)
    assert len(sa.leftovers()) == 1  # still in flight for the second task
    sharing.release(pins2)
    assert sa.leftovers() == []


@pytest.mark.parametrize("reach", [True, False], ids=["by-descriptor", "by-name"])
def test_a_copy_is_never_shared_with_another_run(reach):
    """A task of an abandoned run still holds its copy of a caller's array; the caller
    changes the array in place and runs again: the new run gets the new contents."""
    sharing = sa.Sharing(prefix(), reach=reach, min_bytes=1)
    a = np.zeros(100000)
    old_call, old_pins = sharing.share((a,), object())
    a[:] = 1.0
    for scope in (object(), None):  # a new run, and a task with no run at all
        call, pins = sharing.share((a,), scope)
        assert call.args[0] != old_call.args[0]
        (got,) = sa.open_args(call)
        assert got.sum() == 100000.0
        del got
        sharing.release(pins)
    sharing.release(old_pins)
    assert sa.leftovers() == []


def test_a_result_passed_on_as_an_argument_is_not_copied():
    call = sa.SharedCall((), prefix(), 1, sa._tracker_id())
    result = sa.open_result(sa.share_result(np.arange(200000.0).reshape(400, 500), call))
    view = result[10:, ::3].T  # a view of it too
    sharing = sa.Sharing(prefix(), reach=True)
    call, pins = sharing.share((result, view))
    mapping = sa._mapping_of(result)
    assert [h.name for h in call.args] == ["", ""]
    assert [(h.pid, h.fd) for h in call.args] == [(os.getpid(), mapping.fd)] * 2
    assert pins == [mapping, mapping] and sa.leftovers() == []
    got, got_view = sa.open_args(call)
    same(result, got)
    same(view, got_view)
    sharing.release(pins)


def test_names_of_a_broken_pools_tasks_are_left_to_the_sweep():
    sharing = sa.Sharing(prefix(), reach=False)
    call, pins = sharing.share((np.ones(100000),))
    sharing.release(pins, keep_names=True)  # a worker of a broken pool may still attach
    assert sa.leftovers() == [call.args[0].name]
    assert sa.sweep(prefix()) == 1


def test_a_full_dev_shm_falls_back_to_pickling(monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sa, "_create", full)
    a = np.ones(100000)
    call, pins = sa.Sharing(prefix(), reach=True).share((a,))
    assert call.args[0] is a and pins == []
    assert sa.share_result(a, sa.SharedCall((), prefix(), 1, ())) is a


def test_sweep_unlinks_by_prefix_and_balances_the_tracker():
    shm = SharedMemory(name=prefix() + "orphan", create=True, size=4096)
    shm.close()
    other = SharedMemory(name=f"{sa.PREFIX}_{os.getpid()}_elsewhere", create=True, size=4096)
    try:
        assert sa.sweep(prefix()) == 1
        assert sa.leftovers() == [other.name]
    finally:
        other.close()
        other.unlink()


# -- through a process pool ------------------------------------------------------------------
def affine(a, b):
    return a.T * 2.0 + b


def reduce_rows(a):
    return a.sum(axis=1)


def fortran_out(a):
    return np.asfortranarray(a[::-1] * 3.0).astype(np.float32)


def flags(a, b):
    return np.array([a.flags.writeable, b.flags.writeable, a.flags.f_contiguous,
                     a.strides == (8, 8 * 1024)])


def identity(a):
    return a


def boom(a):
    raise ValueError("kaput")


def die(a):
    os._exit(3)


def slow_big(a):
    time.sleep(0.5)
    return a + 1.0


def orphan_then_die(prefix_, a):
    """Leave a registered block of the pool's prefix behind, then die (as a worker
    killed between creating its result block and sending it back would)."""
    shm = SharedMemory(name=prefix_ + "orphan", create=True, size=1 << 20)
    shm.buf[:4] = b"dead"
    os._exit(4)


def big_graph():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(MB8)
    return {
        "x": x,
        "xf": np.asfortranarray(rng.standard_normal(MB8)),  # Fortran-ordered literal
        "xt": rng.standard_normal(MB8).T,  # non-contiguous literal
        "y": (affine, "x", "xf"),
        "z": (affine, "y", "xt"),  # a worker's result as an argument
        "r": (reduce_rows, "z"),
        "f": (fortran_out, "z"),
        "i32": (np.multiply, "f", "f"),
        "flags": (flags, "xf", "z"),
        "same": (identity, "z"),
    }


KEYS = ["y", "z", "r", "f", "i32", "same"]


def processes():
    return scheduler.Engine("processes", workers=2, inline_threshold=0)


@pytest.mark.parametrize("reach", [True, False], ids=["by-descriptor", "names-only"])
def test_process_run_of_8mb_arrays_is_bitwise_inline(reach, monkeypatch):
    if not reach:  # as where /proc is missing: names in transit, results copied as arguments
        monkeypatch.setattr(sa, "_start_probe", lambda pool, sharing: None)
    tasks = big_graph()
    with scheduler.Engine("inline") as eng:
        expected = eng.get(tasks, KEYS)
    with processes() as eng:
        for _ in range(3):  # the first run also covers the time before the probe answers
            got = eng.get(tasks, KEYS)
            for a, b in zip(expected, got, strict=True):
                same(a, b, align=False)  # each process's allocator aligns its own way
            assert sa.leftovers() == []  # results hold mappings, not names
        assert bool(sa.sharing_of(eng._pool()).reach) is reach
        # arguments are read-only in workers; the Fortran literal kept its layout
        assert eng.get(tasks, "flags").tolist() == [False, False, True, True]


def test_process_run_of_a_dataflow_graph_is_bitwise_inline():
    with df.Graph():
        x = df.placeholder("x", MB8)
        w = df.placeholder("w", MB8)
        h = df.tanh(x @ w)
        loss = df.mean(df.square(h)) + df.sum(df.sin(x))
        gx, gw = df.gradients(loss, [x, w])
    rng = np.random.default_rng(2)
    feeds = {x: rng.standard_normal(MB8) / 32, w: np.asfortranarray(rng.standard_normal(MB8))}
    expected = scheduler.run([loss, gx, gw, h], feeds, executor="inline")
    with processes() as eng:
        for _ in range(2):
            for a, b in zip(expected, eng.run([loss, gx, gw, h], feeds), strict=True):
                same(np.asarray(a), np.asarray(b), layout=False)


class CountingPool(cf.ProcessPoolExecutor):
    """Records the pickled size of every task's arguments and of every raw result."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[int] = []
        self.received: list[int] = []

    def submit(self, fn, /, *args, **kwargs):
        if fn is call_timed_shared:
            self.sent.append(len(pickle.dumps((fn, args))))
        future = super().submit(fn, *args, **kwargs)
        if fn is call_timed_shared:  # runs before the result's handles are opened
            future.add_done_callback(lambda f: self.received.append(len(pickle.dumps(f.result()))))
        return future


def test_bytes_pickled_per_task_are_small_for_large_arrays():
    tasks = big_graph()
    pool = CountingPool(2, mp_context=multiprocessing.get_context("forkserver"))
    try:
        with scheduler.Engine(pool, inline_threshold=0) as eng:
            eng.get(tasks, KEYS)
            eng.get(tasks, KEYS)
        assert len(pool.sent) == len(pool.received) == 2 * len(KEYS)
        # an 8 MiB array would pickle to 8 MiB; a task's handles take a few hundred bytes
        # (r, 1024 row sums, is below MIN_BYTES and is pickled: 8 KiB)
        assert max(pool.sent) < 2048, pool.sent
        assert sorted(pool.received)[-3] < 1024 < max(pool.received) < 9000, pool.received
    finally:
        pool.shutdown()
        sa.sweep(sa.sharing_of(pool).prefix)


def test_a_task_error_leaves_no_blocks_and_the_engine_stays_usable():
    tasks = {"x": np.ones(MB8), "bad": (boom, "x"), "y": (slow_big, "x"), "ok": (np.negative, "x")}
    with processes() as eng:
        with pytest.raises(ValueError, match="kaput") as info:
            eng.get(tasks, ["bad", "y"])
        assert not isinstance(info.value, NodeError)  # the task's own error, as raised
        assert "node 'bad' (op boom) failed" in info.value.__notes__
        assert sa.leftovers() == []  # the in-flight result was mapped and dropped
        assert np.array_equal(eng.get(tasks, "ok"), -np.ones(MB8))


def test_a_timed_out_run_leaves_no_blocks_once_its_tasks_end():
    tasks = {"x": np.ones(MB8), "y": (slow_big, "x")}
    with processes() as eng:
        eng.get(tasks, "y")  # learn nothing; start the workers
        with pytest.raises(TimeoutError):
            eng.get(tasks, "y", timeout=0.1)
    assert sa.leftovers() == []


def test_an_abandoned_task_ending_after_a_timeout_logs_no_callback_error(caplog):
    tasks = {"x": np.ones(MB8), "y": (slow_big, "x"), "small": (slow_big, 1.0)}
    with processes() as eng:
        eng.get(tasks, "small")  # start the workers
        for key in ("y", "small"):  # with and without a shared-memory argument
            with pytest.raises(TimeoutError):
                eng.get(tasks, key, timeout=0.1)
        time.sleep(0.5)  # the abandoned tasks end, and report back to nobody
        assert np.array_equal(eng.get(tasks, "y"), np.full(MB8, 2.0))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def slow_sum(a):
    time.sleep(1.5)
    return a.sum()


def test_a_run_after_an_abandoned_one_sees_the_callers_changes():
    """The abandoned task still holds its shared copy of ``x`` when the caller changes
    ``x`` in place and runs again: the new run must compute on the new contents."""
    tasks = {"x": 0, "slow": (slow_sum, "x"), "total": (np.sum, "x")}
    x = np.zeros(100000)
    with processes() as eng:
        eng.get(tasks, "total", feeds={"x": x})  # start the workers
        with pytest.raises(TimeoutError):
            eng.get(tasks, "slow", feeds={"x": x}, timeout=0.1)
        x[:] = 1.0
        assert eng.get(tasks, "total", feeds={"x": x}) == 100000.0


def test_a_dead_worker_leaves_no_blocks():
    tasks = {"x": np.ones(MB8), "dead": (die, "x"), "y": (slow_big, "x")}
    with processes() as eng:
        with pytest.raises(NodeError, match="dead"):
            eng.get(tasks, ["dead", "y"], timeout=60)
        eng._pool()  # the broken pool is shut down and swept
        assert sa.leftovers() == []
        orphan = {"x": np.ones(MB8), "o": (orphan_then_die, pool_prefix(eng), "x")}
        with pytest.raises(NodeError, match="'o'"):
            eng.get(orphan, "o", timeout=60)
        assert np.array_equal(eng.get(tasks, "y"), np.full(MB8, 2.0))
        assert sa.leftovers() == []


SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import numpy as np
import scheduler
from scheduler import shared_arrays as sa
import test_shared_arrays as t


def engine_pool():
    tasks = t.big_graph()
    with scheduler.Engine("processes", workers=2, inline_threshold=0) as eng:
        kept = eng.get(tasks, t.KEYS)  # held until exit: mappings, no names
        scenarios = ((lambda: {{"dead": (t.die, "x"), "y": (t.slow_big, "x")}}, ["dead", "y"]),
                     (lambda: {{"o": (t.orphan_then_die, t.pool_prefix(eng), "x")}}, "o"),
                     (lambda: {{"b": (t.boom, "z")}}, "b"))
        for extra, keys in scenarios:
            try:
                eng.get({{**tasks, **extra()}}, keys, timeout=60)
            except (scheduler.NodeError, ValueError):
                pass
        try:
            eng.get({{**tasks, "s": (t.slow_big, "z")}}, "s", timeout=0.05)
        except TimeoutError:
            pass
    return kept


def early_fork_pool():
    import concurrent.futures as cf, multiprocessing as mp
    # forked before this process has a resource tracker: each worker starts its own
    pool = cf.ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
    pool.submit(os.getpid).result()
    with scheduler.Engine(pool, inline_threshold=0) as eng:
        for _ in range(2):
            kept = eng.get(t.big_graph(), t.KEYS)
    pool.shutdown()
    return kept


if __name__ == "__main__":
    print("PID", os.getpid(), flush=True)
    kept = {scenario}()
    print("LEFT", sa.leftovers())
"""


def pool_prefix(eng):
    return sa.sharing_of(eng._pool()).prefix


@pytest.mark.parametrize("scenario", ["engine_pool", "early_fork_pool"])
def test_no_tracker_warnings_and_no_blocks_after_exit(scenario):
    if scenario == "early_fork_pool" and "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method")
    here = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(SCRIPT).format(tests=here, scenario=scenario)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, cwd=os.path.dirname(here))
    assert done.returncode == 0, done.stderr
    assert "LEFT []" in done.stdout, done.stdout
    assert "leaked" not in done.stderr and "resource_tracker" not in done.stderr, done.stderr
    pid = done.stdout.split()[1]
    assert sa.leftovers(f"{sa.PREFIX}_{pid}_") == []


KILLED_DRIVER = """
import json, os, sys
sys.path.insert(0, {tests!r})
from multiprocessing import forkserver, resource_tracker
import numpy as np
import scheduler
from scheduler import shared_arrays as sa
import test_shared_arrays as t

if __name__ == "__main__":
    sa._start_probe = lambda pool, sharing: None  # names live while their tasks run
    eng = scheduler.Engine("processes", workers=2, inline_threshold=0)
    x = np.ones(t.MB8)
    eng.get({{"x": x, "p": (t.worker_pid, "x")}}, "p")
    pool = eng._pool()
    pids = list(pool._processes)
    fs = getattr(forkserver._forkserver, "_forkserver_pid", None)
    print(json.dumps({{"driver": os.getpid(), "workers": pids,
                      "helpers": [p for p in (fs, resource_tracker._resource_tracker._pid) if p]}}),
          flush=True)
    eng.get({{"x": x, "a": (t.snooze, "x"), "b": (t.snooze, "x")}}, ["a", "b"])
"""


def worker_pid(a):
    return os.getpid()


def snooze(a):
    time.sleep(120)
    return a


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_workers_and_blocks_go_when_the_driver_is_killed():
    """SIGKILL of the driving process mid-run: its pool workers notice and exit, then
    the forkserver and the resource tracker, which unlinks the blocks still in /dev/shm."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(KILLED_DRIVER).format(tests=here)
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(here))
    info: dict = {}
    try:
        info = json.loads(driver.stdout.readline())
        prefix = f"{sa.PREFIX}_{info['driver']}_"
        deadline = time.monotonic() + 30
        while not sa.leftovers(prefix) and time.monotonic() < deadline:
            time.sleep(0.05)  # the run's argument block is named while its tasks run
        assert sa.leftovers(prefix), "the run never shared its argument"
        driver.kill()
        driver.wait(30)
        processes = info["workers"] + info["helpers"]
        deadline = time.monotonic() + 30  # generous: the workers exit within milliseconds
        while ((any(alive(p) for p in processes) or sa.leftovers(prefix))
               and time.monotonic() < deadline):
            time.sleep(0.1)
        assert not [p for p in processes if alive(p)], "orphans outlived the driver"
        assert sa.leftovers(prefix) == []
    finally:  # whatever happened, leave no process and no block behind
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for group in ("workers", "helpers"):  # the helpers end once the workers are gone
            for pid in info.get(group, []):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        if info:
            sa.sweep(f"{sa.PREFIX}_{info['driver']}_")
        driver.stdout.close()
