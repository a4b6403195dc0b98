"""Where kernels run: turning ``executor=`` (a name or an object) into a pool.

Every pool follows ``concurrent.futures.Executor`` (``submit`` returns a future), so
the engine drives thread pools, process pools, dask clients and user executors alike.
The engine owns the pools it creates here and shuts them down when it closes. The
worker processes of a process pool made here end when the process that made it does,
however it ends (SIGKILL included): nothing else would stop them, and while they live
the forkserver and the resource tracker (which unlinks the shared-memory blocks left
behind) live on too.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.thread  # noqa: F401 - cf loads it lazily, inside a first run
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from . import shared_arrays
from .errors import sendable, unsendable

EXECUTOR_NAMES = ("inline", "threads", "asyncio", "processes", "dask")

_in_kernel = threading.local()


def inside_kernel() -> bool:
    """True while this thread is running a kernel for an engine (a re-entrant run)."""
    return getattr(_in_kernel, "depth", 0) > 0


def call_timed(kernel: Any, args: tuple) -> tuple[Any, float, float, str]:
    """Run one kernel in a worker and report (value, start, end, worker name).

    ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, shared by all processes of the
    machine, so times taken in pool processes line up with the driver's."""
    _in_kernel.depth = getattr(_in_kernel, "depth", 0) + 1
    try:
        start = time.perf_counter()
        value = kernel(*args)
        end = time.perf_counter()
    finally:
        _in_kernel.depth -= 1
    return value, start, end, worker_name()


def call_chain(steps: list[tuple], stop: threading.Event
               ) -> tuple[list[tuple[Any, float, float]], tuple | None, str]:
    """Run a chain of kernels in a worker, each taking the value of the one before it
    at its ``slots``: ``(kernel, args, slots)`` per step. Reports each step's
    ``(value, start, end)`` up to the first that raised, that step's index and error
    (or None), and the worker's name. Values a later step has consumed are reported
    as None, so that they die as soon as they are used. Once ``stop`` is set (the run
    failed, timed out or was cancelled), no further step starts."""
    results: list[tuple[Any, float, float]] = []
    previous: Any = None
    for i, (kernel, args, slots) in enumerate(steps):
        if stop.is_set():
            break
        if slots:
            args = list(args)
            for j in slots:
                args[j] = previous
            if results:
                value, start, end = results[-1]
                results[-1] = (None, start, end)
        try:
            previous, start, end, _ = call_timed(kernel, args)
        except BaseException as exc:  # noqa: BLE001 - reported as that step's node error
            return results, (i, exc), worker_name()
        args = None
        results.append((previous, start, end))
    return results, None, worker_name()


class TaskRaised(Exception):
    """Carries a task's own exception back from a worker process.

    A process pool reports a task, argument or result that could not be pickled as a
    bare exception of the pickling error's type, which a task could raise too; a task's
    own exception comes back wrapped in this instead, so that the driver can tell the
    two apart (the first is the pool's failure, the second the task's)."""

    def original(self) -> BaseException:
        """The task's exception; the worker's formatted traceback becomes its cause
        (pickling drops the traceback and the cause)."""
        exc = self.args[0]
        if exc.__cause__ is None and self.__cause__ is not None:
            exc.__cause__ = self.__cause__
        return exc


def call_timed_isolated(kernel: Any, args: tuple) -> tuple[Any, float, float, str]:
    """``call_timed`` in a worker process, sure to report back. The task's own exception
    goes back as ``TaskRaised``, made sendable first: an exception that pickles but does
    not unpickle would break the whole pool, as if a worker had died, so it is replaced
    by a ``RemoteError`` describing it. A value that cannot be sent back is raised bare,
    as the pool's failure (no exception of the task's)."""
    failure = None
    try:
        result = call_timed(kernel, args)
    except BaseException as exc:  # noqa: BLE001 - any task error, unpacked by the driver
        failure = sendable(exc)
    if failure is not None:
        raise TaskRaised(failure)  # outside the ``except``: no context holding the original
    problem = unsendable(result[0])
    if problem is not None:
        raise problem
    return result


def call_timed_shared(kernel: Any, call: shared_arrays.SharedCall) -> tuple[Any, float, float, str]:
    """``call_timed_isolated`` in a process pool's worker, large arrays crossing as
    shared memory: the arguments of ``call`` are mapped read-only, a large array result
    goes back as a handle (see ``shared_arrays``)."""
    value, start, end, worker = call_timed_isolated(kernel, shared_arrays.open_args(call))
    return shared_arrays.share_result(value, call), start, end, worker


def submit_shared(pool: cf.ProcessPoolExecutor, kernel: Any, args: tuple,
                  scope: object = None) -> cf.Future:
    """``pool.submit(call_timed, kernel, args)`` for a process pool, with large arrays
    passed through shared memory both ways; the future's result is ``call_timed``'s,
    a task's own exception comes back as ``TaskRaised``. Tasks given the same ``scope``
    (an object standing for one run) share the copies of their arguments; no copy is
    ever shared beyond its scope."""
    if not shared_arrays.AVAILABLE:
        return pool.submit(call_timed_isolated, kernel, args)
    return shared_arrays.submit(pool, call_timed_shared, kernel, args, scope)


def worker_name() -> str:
    thread = threading.current_thread()
    if multiprocessing.parent_process() is not None:
        return f"process-{os.getpid()}"
    return thread.name


def default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def make_pool(kind: str, workers: int, initializer: Callable[..., None] | None = None,
              initargs: tuple = ()) -> Any:
    """A new pool for a named executor kind (``None`` for ``inline``). ``initializer``
    runs in each worker as it starts (in a dask cluster's workers: once each, when the
    cluster is up)."""
    if kind == "inline":
        return None
    if kind in ("threads", "asyncio"):
        return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"dataflow-{kind}",
                                     initializer=initializer, initargs=initargs)
    if kind == "processes":
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        return shared_arrays.ProcessPool(max_workers=workers,
                                         mp_context=multiprocessing.get_context(method),
                                         initializer=_start_process_worker,
                                         initargs=(os.getpid(), initializer, initargs))
    if kind == "dask":
        from .dask_executor import DaskExecutor

        pool = DaskExecutor(n_workers=workers)
        if initializer is not None:
            pool.client.run(initializer, *initargs)
        return pool
    raise ValueError(f"unknown executor {kind!r}; expected one of {', '.join(EXECUTOR_NAMES)} "
                     "or a concurrent.futures.Executor")


#: how often a worker checks that its driver lives, where it cannot wait for its exit
DRIVER_POLL_SECONDS = 1.0


def _start_process_worker(driver: int, initializer: Callable[..., None] | None,
                          initargs: tuple) -> None:
    """A process pool worker's initializer: watch the driver, then the user's own."""
    exit_with_driver(driver)
    if initializer is not None:
        initializer(*initargs)


def exit_with_driver(driver: int) -> None:
    """In a pool worker (the pool's initializer): end this process as soon as process
    ``driver`` is gone. A forkserver's workers are not the driver's children, so their
    parent pid says nothing; a descriptor of the driver's process (Linux's
    ``pidfd_open``) becomes readable when it exits, and elsewhere it is polled."""
    threading.Thread(target=_watch_driver, args=(driver,), name="dataflow-driver-watch",
                     daemon=True).start()


def _watch_driver(driver: int) -> None:
    try:
        pidfd = os.pidfd_open(driver)
    except AttributeError:  # not Linux (or Python built without it): poll
        pidfd = None
    except OSError:  # gone already
        os._exit(1)
    if pidfd is not None:
        select.select([pidfd], [], [])
    else:
        while _alive(driver):
            time.sleep(DRIVER_POLL_SECONDS)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def start_threads(pool: Any) -> None:
    """Start every worker thread of a ``ThreadPoolExecutor`` now: it otherwise starts them
    one per ``submit``, and the submitting thread waits for each to come up."""
    adjust = getattr(pool, "_adjust_thread_count", None)
    if not isinstance(pool, cf.ThreadPoolExecutor) or adjust is None:
        return
    for _ in range(pool._max_workers):  # each call starts one while none is idle
        adjust()


def pool_is_broken(pool: Any) -> bool:
    return bool(getattr(pool, "_broken", False))


def runs_on_current_thread(pool: Any) -> bool:
    """Whether this thread is one of ``pool``'s own: a worker of a thread pool, or the
    thread of a process pool that settles its futures (and so runs their callbacks).
    Such a thread cannot wait for the pool to shut down: that would join itself."""
    current = threading.current_thread()
    if current is getattr(pool, "_executor_manager_thread", None):
        return True
    # A new worker thread runs its first task before the pool has added it to
    # ``_threads``; its name tells (the pools made here have prefixes of their own).
    prefix = getattr(pool, "_thread_name_prefix", "")
    return current in getattr(pool, "_threads", ()) or (
        bool(prefix) and current.name.startswith(prefix + "_"))
