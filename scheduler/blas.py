"""Intra-op parallelism: how many threads the BLAS and OpenMP libraries may start inside
one engine worker (TensorFlow's ``intra_op_parallelism_threads``), set through
threadpoolctl on the libraries already loaded.

What can be set where (the reason for the rules below):

- A *process* pool's workers each have their own libraries, so every worker gets
  exactly its count, set in the pool's initializer (numpy is imported there first, so
  that its BLAS is loaded when the limit is applied).
- In a *thread* pool, OpenBLAS, MKL and BLIS keep one thread count for the whole
  process (``openblas_set_num_threads`` is global); only OpenMP's count belongs to the
  thread that sets it. So a thread-backed engine sets the libraries' process-wide count
  (which also covers the driving thread and any code of yours running meanwhile) and,
  in each worker thread as it starts, OpenMP's count for that thread.
- An engine sets its process's count when it is made, for its whole life, and gives it
  back when it closes. While several engines are open, the one made last decides;
  closing it brings back the one before (``_settings``).

The default keeps ``workers x BLAS threads <= cores``: each of ``workers`` workers may
use ``cores // workers`` threads (at least one), and a library already set lower
(``OPENBLAS_NUM_THREADS=1``, say) is left as it is. It counts an inline engine's
``workers`` too (by default the cores, as for the pools) and applies from the engine's
construction whether or not a run ever uses the pool: OpenBLAS rounds a matmul
differently on 1 and 2 threads, so one count for every path of every executor of the
same width is what keeps their results bitwise equal. ``Engine("inline", workers=1)``
gives BLAS every core. An explicit ``intra_op_threads=k`` is applied as given, also
when it oversubscribes the machine (``dataflow doctor`` says so). An executor you pass
in is yours: only this process's count is set, and its workers are left as they are.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable
from typing import Any

from .executors import default_workers

_lock = threading.Lock()
# The process-wide settings of the open engines, oldest first: token -> (threads, cap).
_settings: dict[int, tuple[int, bool]] = {}
_tokens = itertools.count(1)
# Each library's thread count before the open engines changed it, by file path.
_originals: dict[str, int] = {}
_controller: tuple[int, Any] | None = None  # (len(sys.modules) when made, controller)


def cores() -> int:
    """The cores this process may run on."""
    return default_workers()


def default_threads(workers: int) -> int:
    """BLAS threads per worker that keep ``workers`` workers within the cores."""
    return max(1, cores() // max(1, workers))


def check_threads(threads: Any) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"intra_op_threads must be a positive int or None, got {threads!r}")
    return threads


def controller() -> Any:
    """A threadpoolctl controller over the libraries loaded now. Making one scans the
    process's shared objects (about half a millisecond); a library only arrives with
    an import, so the scan is redone only when ``sys.modules`` has grown."""
    global _controller
    from threadpoolctl import ThreadpoolController

    loaded = len(sys.modules)
    if _controller is None or _controller[0] != loaded:
        _controller = (loaded, ThreadpoolController())
    return _controller[1]


def per_thread(lib: Any) -> bool:
    """Whether a library's thread count belongs to the thread that sets it: OpenMP's,
    and OpenBLAS's when built on OpenMP; the others' (pthreads OpenBLAS, MKL, BLIS)
    belong to the process."""
    return lib.user_api == "openmp" or getattr(lib, "threading_layer", None) == "openmp"


def _set(lib: Any, threads: int) -> None:
    # threadpoolctl lets one thread at a time own a process-wide OpenBLAS (later calls
    # from other threads are silently dropped until it lets go); the open engines are
    # coordinated here instead (``_settings``, under ``_lock``), so this call takes the
    # ownership and hands it straight back.
    release = getattr(type(lib), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)
    try:
        lib.set_num_threads(threads)
    finally:
        if release is not None:
            release(force=True)


def _apply(threads: int | None, cap: bool, only_per_thread: bool = False) -> None:
    """Set every loaded library (only the per-thread ones with ``only_per_thread``) to
    ``threads`` (to at most ``threads`` with ``cap``), or back to its original count
    with None. A per-thread library is set for the calling thread."""
    for lib in controller().lib_controllers:
        if only_per_thread and not per_thread(lib):
            continue
        original = _originals.setdefault(lib.filepath, lib.num_threads)
        target = original if threads is None else min(original, threads) if cap else threads
        if lib.num_threads != target:
            _set(lib, target)


def limit_this_thread(threads: int, cap: bool) -> None:
    """Pool initializer of a thread-backed engine's workers: the per-thread libraries'
    count for this thread (the others' is the process's, set by the engine)."""
    with _lock:
        _apply(threads, cap, only_per_thread=True)


def limit_worker_process(threads: int, cap: bool) -> None:
    """Pool initializer of a process pool's workers (and, through ``client.run``, of a
    dask cluster's): load numpy's BLAS, then set this process's libraries."""
    import numpy  # noqa: F401 - its BLAS must be loaded for the limit to reach it

    with _lock:
        _apply(threads, cap)


class IntraOpThreads:
    """One engine's intra-op thread setting; ``shutdown`` (the engine closing) gives the
    process-wide count back."""

    def __init__(self, threads: int | None, kind: str, workers: int, external: bool):
        self.explicit = check_threads(threads) is not None
        self.threads = threads if threads is not None else default_threads(workers)
        self.kind = kind
        self.external = external
        self._token: int | None = None
        self._hold()

    def __repr__(self) -> str:
        how = "set" if self.explicit else "default"
        return f"<IntraOpThreads {self.threads} per worker ({how})>"

    @property
    def cap(self) -> bool:
        return not self.explicit

    def initializer(self) -> tuple[Callable[..., None] | None, tuple]:
        """The pool initializer for this engine's executor kind, and its arguments."""
        if self.external:
            return None, ()
        if self.kind in ("threads", "asyncio"):
            return limit_this_thread, (self.threads, self.cap)
        if self.kind in ("processes", "dask"):
            return limit_worker_process, (self.threads, self.cap)
        return None, ()

    def _hold(self) -> None:
        with _lock:
            if self._token is None:
                if not _settings:  # the counts to give back are today's, whoever set them
                    _originals.clear()
                self._token = next(_tokens)
                _settings[self._token] = (self.threads, self.cap)
                _apply(self.threads, self.cap)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with _lock:
            if self._token is None:
                return
            was_last = self._token == next(reversed(_settings))
            del _settings[self._token]
            self._token = None
            if was_last:
                _apply(*(_settings[next(reversed(_settings))] if _settings else (None, False)))
