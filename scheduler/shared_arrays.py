"""Large numpy arrays between the driver and process-pool workers, through shared memory.

A process pool pickles a task's arguments and its result through a pipe: an 8 MB array
is copied into a pickle, written through the pipe in 64 KiB pieces, and copied again out
of it. Here an array of at least ``MIN_BYTES`` bytes crosses as an :class:`ArrayHandle`
instead, a few hundred bytes naming a block of POSIX shared memory
(``multiprocessing.shared_memory.SharedMemory``) and the array's place in it (offset,
shape, dtype, strides). Smaller arrays, arrays of Python objects, ndarray subclasses and
everything that is not an array are pickled as before. A block keeps the source's
strides and its address modulo 64, so kernels see the same memory layout as under the
``inline`` executor and compute bitwise the same results.

This module owns the lifetime of every block; the rules:

1. Names. Every block is named ``dfshm_<driver pid>_<pool number>_<random>``, so a
   pool's blocks, and a driver's, can be found and swept by prefix.
2. A name exists only while a block is in transit. An argument block is created and
   filled by the driver. When workers can reach the driver's open descriptor
   (``/proc/<driver pid>/fd/<fd>``, checked once per pool by a probe task) its name is
   unlinked at once, before the task is submitted; otherwise the name lives until the
   task has finished. A result block is created by a worker, which closes its mapping
   before it returns the handle; the driver maps it and unlinks the name as soon as the
   result arrives (in the pool's result thread, whether or not anyone reads the
   result), so after a run ``/dev/shm`` holds nothing of it.
3. Mappings. An array the driver receives is a plain ``ndarray`` whose ``base`` chain
   ends in a :class:`_Mapping`, which holds the ``SharedMemory`` (mapping and
   descriptor): the memory lives exactly as long as some array refers to it. Arguments
   are mapped read-only in the worker and unmapped when the task's arguments die.
4. Copies. The driver copies an argument into a block once per run and stretch of
   time in which that run's tasks using it are in flight (consumers submitted together
   share the block). A copy is never shared with another run, not even one that starts
   while a task of an earlier, abandoned run (a timeout, a cancel) still holds it: the
   caller may have changed the array in place since, and nothing but a new copy can
   tell (comparing the contents costs as much as copying them).
   An array that already lives in a block the driver holds (a result that is now an
   argument, or a view of one) is not copied: its handle names the driver's descriptor
   and the task pins the mapping until it finishes. Where descriptors cannot be
   reached that way, such an array is copied like any other.
5. The resource tracker. Pool workers (``spawn``, ``forkserver``, and ``fork`` once the
   tracker runs) share the driver's ``resource_tracker``, which keeps a *set* of names
   and unlinks, with a "leaked shared_memory objects" warning, whatever is still in it
   when the last process exits. A name is registered once, by its creator, and
   unregistered once, by the ``SharedMemory.unlink`` of whoever unlinks it (the driver,
   or a sweep); attaching re-registers, a no-op for a name in the set. A worker whose
   tracker is its own (a ``fork`` pool forked before the driver's tracker started)
   unregisters what it creates or attaches, handing the block to the driver, whose
   attach registers it with the driver's tracker.
6. Deaths. If the driver dies, even by SIGKILL, the workers of the pools the engine
   made exit at once (``executors.exit_with_driver``), the tracker then sees its last
   user go and unlinks what was registered. If a worker
   dies, blocks it had created but not handed over (and argument blocks of tasks failed
   by the broken pool, whose names are kept until no worker can still attach to them)
   are unlinked by :class:`ProcessPool`'s shutdown once its workers are gone, which the
   engine calls when it replaces a broken pool and when it closes; a sweep of the
   driver's prefix at interpreter exit catches the rest (external pools included).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import errno
import itertools
import mmap
import os
import secrets
import threading
import weakref
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any, NamedTuple

import numpy as np

#: Arrays smaller than this are pickled: setting up a block costs more than it saves.
MIN_BYTES = 64 * 1024
#: Where POSIX shared memory lives (Linux); used only to sweep names by prefix.
SHM_DIR = "/dev/shm"
PREFIX = "dfshm"
#: A block keeps its array's address modulo this, so SIMD loops see the same alignment.
ALIGN = 64
#: A view spread over more than this many times its own bytes is copied compactly.
MAX_SPREAD = 4
#: Shared memory as used here needs POSIX (named blocks that outlive their mappings).
AVAILABLE = os.name == "posix"

_JOIN_TIMEOUT = 10.0
_pool_numbers = itertools.count(1)


class ArrayHandle(NamedTuple):
    """Where an array lives: a block (by name, or by a descriptor of process ``pid``),
    its size, and the array's offset, shape, dtype and strides (in bytes) inside it."""

    name: str
    pid: int
    fd: int
    size: int
    offset: int
    shape: tuple
    dtype: np.dtype
    strides: tuple


class SharedCall(NamedTuple):
    """A task's arguments with large arrays replaced by handles, and what a worker needs
    to share its result: the pool's name prefix, the threshold, the driver's tracker."""

    args: tuple
    prefix: str
    min_bytes: int
    tracker: tuple


# -- mappings ------------------------------------------------------------------------------
class _Mapping:
    """One mapping of a block; numpy arrays built on it keep it (and so the memory) alive.

    ``keep`` is the ``SharedMemory`` or ``mmap`` that owns the mapping; ``fd`` is an
    open descriptor of the block in process ``pid`` (-1 if none)."""

    __slots__ = ("keep", "address", "size", "readonly", "pid", "fd", "__weakref__")

    def __init__(self, keep: Any, buffer: Any, readonly: bool, fd: int = -1):
        probe = np.frombuffer(buffer, np.uint8)
        self.address = probe.ctypes.data
        self.size = probe.size
        del probe  # no export of the buffer may outlive this: closing would fail
        self.keep = keep
        self.readonly = readonly
        self.pid = os.getpid()
        self.fd = fd

    @property
    def __array_interface__(self) -> dict:
        return {"shape": (self.size,), "typestr": "|u1", "version": 3,
                "data": (self.address, self.readonly)}

    def view(self, handle: ArrayHandle) -> np.ndarray:
        raw = np.asarray(self)  # its base is self
        return np.ndarray(handle.shape, handle.dtype, buffer=raw, offset=handle.offset,
                          strides=handle.strides)


def _mapping_of(array: np.ndarray) -> _Mapping | None:
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, _Mapping) else None


def _fd_of(shm: SharedMemory) -> int:
    return getattr(shm, "_fd", -1)


def _eligible(value: Any, min_bytes: int) -> bool:
    """A plain array of plain bytes (no Python objects, no string heap) worth a block."""
    return (type(value) is np.ndarray and value.nbytes >= min_bytes and value.nbytes > 0
            and value.dtype.kind in "biufcmMSUV" and not value.dtype.hasobject)


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _extent(shape: tuple, strides: tuple) -> tuple[int, int]:
    """Byte offsets of the lowest and highest element relative to the first one."""
    lo = hi = 0
    for n, s in zip(shape, strides, strict=True):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _layout(array: np.ndarray) -> tuple[int, int, tuple]:
    """(offset of the first element, block size, strides) for a copy of ``array`` that
    keeps its strides and its address modulo ALIGN; a sparse view is packed in C order
    (as pickle would)."""
    itemsize, shape, strides = array.itemsize, array.shape, array.strides
    lo, hi = _extent(shape, strides)
    if hi - lo + itemsize > MAX_SPREAD * array.nbytes:
        strides = _c_strides(shape, itemsize)
        lo, hi = _extent(shape, strides)
    pad = (_address(array) + lo) % ALIGN
    return pad - lo, pad + hi - lo + itemsize, strides


# -- blocks --------------------------------------------------------------------------------
def _create(prefix: str, size: int) -> SharedMemory:
    while True:
        try:
            shm = SharedMemory(name=prefix + secrets.token_hex(4), create=True, size=size)
            break
        except FileExistsError:
            continue
    if hasattr(os, "posix_fallocate"):
        # Claim the pages now: on a full /dev/shm this fails with ENOSPC, where writing
        # into a sparse block would kill the process with SIGBUS.
        try:
            os.posix_fallocate(_fd_of(shm), 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                _destroy(shm)
                raise
    return shm


def _destroy(shm: SharedMemory) -> None:
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def _write(prefix: str, array: np.ndarray) -> tuple[SharedMemory, ArrayHandle]:
    """A new block holding a copy of ``array`` (see ``_layout``), and its handle."""
    offset, size, strides = _layout(array)
    shm = _create(prefix, size)
    try:
        target = np.ndarray(array.shape, array.dtype, buffer=shm.buf, offset=offset,
                            strides=strides)
        try:
            np.copyto(target, array, casting="no")
        finally:
            del target
    except BaseException:
        _destroy(shm)
        raise
    return shm, ArrayHandle(shm.name, 0, -1, size, offset, array.shape, array.dtype, strides)


def _open_fd(handle: ArrayHandle) -> _Mapping:
    fd = os.open(f"/proc/{handle.pid}/fd/{handle.fd}", os.O_RDONLY)
    try:
        mapped = mmap.mmap(fd, handle.size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return _Mapping(mapped, mapped, readonly=True)


# -- the resource tracker ------------------------------------------------------------------
_trackers: dict[int, tuple] = {}


def _tracker_id() -> tuple:
    """Which resource tracker this process talks to (the pipe it writes to), starting one
    if it has none. Cached per process."""
    pid = os.getpid()
    ident = _trackers.get(pid)
    if ident is None:
        st = os.fstat(resource_tracker.getfd())  # type: ignore[arg-type]
        ident = _trackers[pid] = (st.st_dev, st.st_ino)
    return ident


def _hand_over(name: str, driver_tracker: tuple) -> None:
    """In a worker: let go of the tracker registration of a block the driver will own,
    unless the driver's tracker is this process's too (then it is the driver's already)."""
    if _tracker_id() != driver_tracker:
        resource_tracker.unregister("/" + name, "shared_memory")  # as SharedMemory did


# -- the worker's side ---------------------------------------------------------------------
def open_args(call: SharedCall) -> tuple:
    """In a worker: the task's arguments, handles mapped read-only as arrays (no copy)."""
    opened: dict[tuple, _Mapping] = {}
    args = []
    for value in call.args:
        if type(value) is ArrayHandle:
            key = (value.name, value.pid, value.fd)
            mapping = opened.get(key)
            if mapping is None:
                mapping = opened[key] = _open_arg(value, call.tracker)
            value = mapping.view(value)
        args.append(value)
    return tuple(args)


def _open_arg(handle: ArrayHandle, driver_tracker: tuple) -> _Mapping:
    if handle.fd >= 0:
        try:
            return _open_fd(handle)
        except OSError:
            if not handle.name:
                raise
    shm = SharedMemory(handle.name)
    _hand_over(shm.name, driver_tracker)
    return _Mapping(shm, shm.buf, readonly=True)


def share_result(value: Any, call: SharedCall) -> Any:
    """In a worker: a large array result copied into a new block, as its handle; the
    worker keeps no mapping, and the block is the driver's from here on. Anything else,
    or an array when /dev/shm is full, is returned as is (to be pickled)."""
    if not _eligible(value, call.min_bytes):
        return value
    try:
        shm, handle = _write(call.prefix, value)
    except OSError:
        return value
    shm.close()
    _hand_over(shm.name, call.tracker)
    return handle


def probe(pid: int, fd: int, token: bytes) -> bool:
    """In a worker: whether it can map the driver's descriptor ``fd`` (rule 2)."""
    try:
        mapping = _open_fd(ArrayHandle("", pid, fd, len(token), 0, (len(token),),
                                       np.dtype(np.uint8), (1,)))
    except OSError:
        return False
    return bytes(np.asarray(mapping)) == token


# -- the driver's side ---------------------------------------------------------------------
def open_result(handle: ArrayHandle) -> np.ndarray:
    """In the driver: map a worker's result block and unlink its name at once. The array
    (writeable, like an unpickled one) keeps the mapping alive; nothing else does."""
    shm = SharedMemory(handle.name)
    try:
        shm.unlink()
    except BaseException:
        shm.close()
        raise
    return _Mapping(shm, shm.buf, readonly=False, fd=_fd_of(shm)).view(handle)


class _Copy:
    """An argument copied into a block, shared by the tasks in flight that use it."""

    __slots__ = ("ident", "scope", "source", "key", "shm", "handle", "users", "named")

    def __init__(self, source: np.ndarray, scope: object, key: tuple, shm: SharedMemory,
                 handle: ArrayHandle, named: bool):
        self.ident = (id(scope), id(source))
        self.scope = scope
        self.source = weakref.ref(source)
        self.key = key
        self.shm = shm
        self.handle = handle
        self.users = 0
        self.named = named


class Sharing:
    """The driver's shared-memory state for one pool: its name prefix, whether its
    workers can reach the driver's descriptors (``reach``: None until the probe has
    answered), and the argument copies of the tasks in flight."""

    def __init__(self, prefix: str, reach: bool | None = None, min_bytes: int | None = None):
        self.prefix = prefix
        self.reach = reach
        self.min_bytes = MIN_BYTES if min_bytes is None else min_bytes
        self.tracker = _tracker_id()  # started before any worker forks, so they share it
        self._lock = threading.Lock()
        self._copies: dict[tuple[int, int], _Copy] = {}

    def share(self, args: tuple, scope: object = None) -> tuple[SharedCall, list]:
        """The task's call, and what it pins until it has finished (pass to ``release``).
        Tasks given the same ``scope`` (one run) share their copies of an argument; with
        ``scope`` None, the task's copies are its own (rule 4)."""
        min_bytes = self.min_bytes
        pins: list = []
        if not any(_eligible(a, min_bytes) for a in args):
            return SharedCall(args, self.prefix, min_bytes, self.tracker), pins
        if scope is None:
            scope = object()  # a scope of this task alone
        try:
            shared = tuple(self._share_one(a, pins, scope) if _eligible(a, min_bytes) else a
                           for a in args)
        except BaseException:
            self.release(pins)
            raise
        return SharedCall(shared, self.prefix, min_bytes, self.tracker), pins

    def _share_one(self, array: np.ndarray, pins: list, scope: object) -> Any:
        mapping = _mapping_of(array)
        if (mapping is not None and self.reach and mapping.fd >= 0
                and mapping.pid == os.getpid()):
            offset = _address(array) - mapping.address
            lo, hi = _extent(array.shape, array.strides)
            if offset + lo >= 0 and offset + hi + array.itemsize <= mapping.size:
                pins.append(mapping)
                return ArrayHandle("", mapping.pid, mapping.fd, mapping.size, offset,
                                   array.shape, array.dtype, array.strides)
        key = (_address(array), array.shape, array.strides, array.dtype)
        with self._lock:
            copy = self._copies.get((id(scope), id(array)))
            if (copy is not None and copy.scope is scope and copy.source() is array
                    and copy.key == key):
                copy.users += 1
                pins.append(copy)
                return copy.handle
        try:
            shm, handle = _write(self.prefix, array)
        except OSError:
            return array  # /dev/shm is full: pickle it
        named = not self.reach
        if not named:
            shm.unlink()  # workers open it through the descriptor
        handle = handle._replace(name=handle.name if named else "", pid=os.getpid(),
                                 fd=_fd_of(shm))
        copy = _Copy(array, scope, key, shm, handle, named)
        copy.users = 1
        with self._lock:
            self._copies.setdefault(copy.ident, copy)
        pins.append(copy)
        return handle

    def release(self, pins: list, keep_names: bool = False) -> None:
        """A task has finished: let go of what it pinned. ``keep_names``: leave the names
        of named copies to the pool's sweep (a broken pool's workers may still attach)."""
        done = []
        with self._lock:
            for pin in pins:
                if type(pin) is _Copy:
                    pin.users -= 1
                    if pin.users == 0:
                        if self._copies.get(pin.ident) is pin:
                            del self._copies[pin.ident]
                        done.append(pin)
        for copy in done:
            if copy.named and not keep_names:
                _destroy(copy.shm)
            else:
                copy.shm.close()
        pins.clear()

    def _probed(self, future: cf.Future, shm: SharedMemory) -> None:
        shm.close()
        self.reach = (not future.cancelled() and future.exception() is None
                      and future.result() is True)


_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()
_swept_at_exit: set[int] = set()


def sharing_of(pool: cf.Executor) -> Sharing:
    """The pool's ``Sharing`` (created on first use, with its probe submitted)."""
    sharing = _states.get(pool)
    if sharing is not None:
        return sharing
    with _states_lock:
        sharing = _states.get(pool)
        if sharing is None:
            sharing = _states[pool] = Sharing(f"{PREFIX}_{os.getpid()}_{next(_pool_numbers)}_")
            if os.getpid() not in _swept_at_exit:
                _swept_at_exit.add(os.getpid())
                atexit.register(_sweep_at_exit, os.getpid())
            _start_probe(pool, sharing)
    return sharing


def _start_probe(pool: cf.Executor, sharing: Sharing) -> None:
    if not os.path.isdir(f"/proc/{os.getpid()}/fd"):
        sharing.reach = False
        return
    token = secrets.token_bytes(16)
    try:
        shm = _create(sharing.prefix, len(token))
    except OSError:
        sharing.reach = False
        return
    shm.buf[:len(token)] = token  # type: ignore[index]
    shm.unlink()
    try:
        future = pool.submit(probe, os.getpid(), _fd_of(shm), token)
    except Exception:
        shm.close()
        sharing.reach = False
        return
    future.add_done_callback(lambda f: sharing._probed(f, shm))


def submit(pool: cf.Executor, fn: Any, kernel: Any, args: tuple,
           scope: object = None) -> cf.Future:
    """``pool.submit(fn, kernel, call)`` with ``call`` the ``SharedCall`` of ``args``;
    the returned future's result is ``fn``'s tuple with its handles opened as arrays.
    Tasks submitted with the same ``scope`` (the run's) share argument copies.

    Opening happens as soon as the result arrives (rule 2), and the task's pins are
    released then, whatever becomes of the future."""
    sharing = sharing_of(pool)
    call, pins = sharing.share(args, scope)
    try:
        inner = pool.submit(fn, kernel, call)
    except BaseException:
        sharing.release(pins)
        raise
    outer: cf.Future = cf.Future()
    deferred = isinstance(pool, ProcessPool)
    # Cancelling the returned future cancels the task too, if it has not started (its
    # pins are then released at once); a task already running ends on its own.
    outer.add_done_callback(lambda f: f.cancelled() and inner.cancel())
    inner.add_done_callback(lambda f: _settle(f, outer, sharing, pins, deferred))
    return outer


def _settle(inner: cf.Future, outer: cf.Future, sharing: Sharing, pins: list,
            deferred: bool) -> None:
    """The task's future is done: release its pins, open its result blocks (which
    unlinks their names, whether or not anyone wants the result), then settle
    ``outer``, unless its holder cancelled it meanwhile (a run that timed out or was
    cancelled abandons the tasks it had in flight): a cancelled future takes no result."""
    cancelled = inner.cancelled()
    exc = None if cancelled else inner.exception()
    try:
        sharing.release(pins, keep_names=deferred and isinstance(exc, BrokenProcessPool))
    except Exception:  # noqa: BLE001 - best effort; the future must settle regardless
        pass
    if cancelled:  # (only this function ever settles ``outer``)
        outer.cancel()
        outer.set_running_or_notify_cancel()
        return
    if exc is None:
        try:
            result = tuple(open_result(v) if type(v) is ArrayHandle else v
                           for v in inner.result())
        except BaseException as err:  # noqa: BLE001 - the task's error
            exc = err
    try:
        if exc is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(result)
    except cf.InvalidStateError:  # cancelled by its holder while this ran
        pass


# -- sweeping ------------------------------------------------------------------------------
def sweep(prefix: str) -> int:
    """Unlink every block whose name starts with ``prefix`` (balancing the tracker);
    return how many. Best effort: only where blocks show up in ``SHM_DIR``."""
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return 0
    count = 0
    for name in names:
        try:
            shm = SharedMemory(name)
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            # Not mapped (its creator died before sizing it), so never registered.
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                count += 1
            except OSError:
                pass
            continue
        shm.close()
        try:
            shm.unlink()
            count += 1
        except FileNotFoundError:
            pass
    return count


def _sweep_at_exit(pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child that exits through atexit
        sweep(f"{PREFIX}_{pid}_")


def leftovers(prefix: str = "") -> list[str]:
    """Names in ``SHM_DIR`` that start with ``prefix`` (default: this driver's)."""
    prefix = prefix or f"{PREFIX}_{os.getpid()}_"
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except OSError:
        return []


class ProcessPool(cf.ProcessPoolExecutor):
    """A process pool whose shutdown, once its workers are gone, sweeps the blocks they
    (or tasks the pool failed) left behind (rule 6). A broken pool's workers are already
    being killed, so even ``shutdown(wait=False)`` sweeps it, after they are."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        manager = getattr(self, "_executor_manager_thread", None)
        broken = bool(getattr(self, "_broken", False))
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if not (wait or broken):
            return
        if manager is not None:
            manager.join(_JOIN_TIMEOUT)
            if manager.is_alive():
                return  # left to the sweep at exit
        sharing = _states.get(self)
        if sharing is not None:
            sweep(sharing.prefix)
