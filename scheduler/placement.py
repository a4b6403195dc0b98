"""Where a ready task runs: on the driving thread, in the pool, or held until a slot frees.

This module owns that decision and the knowledge it rests on; the engine's drivers
consult it and carry no copy of the rules. The rules, in order:

1. The ``inline`` executor (and a re-entrant run, already inside a worker) runs every
   task on the driving thread: it has no pool.
2. Executors that isolate (``processes``, ``dask``, any ``ProcessPoolExecutor``) never
   run a user kernel on the caller: a crashing or GIL-holding task must not take the
   caller down or stall it. Only literals, feeds and the engine's own pass-throughs
   (aliases, lists of keys) are handled there.
3. Elsewhere, a task runs on the driving thread only when it is *known* to be cheap:
   measured (by this plan, or by the engine for tasks of the same cost key) or hinted
   by its source (``TaskSpec.cost_hint``, from shapes) below the inline threshold.
   A task whose cost is unknown is presumed expensive and goes to the pool, as
   TensorFlow's executor presumes its kernels expensive unless marked cheap and dask
   sends everything to its pool: a first call of unknown (say, I/O-bound) tasks is
   parallel from its first task. Tasks wait in a ready heap (held) while the pool has
   ``IN_FLIGHT_PER_WORKER`` tasks per worker in flight, so that the priority still
   decides what starts next; a root task known to make a large value
   (``LARGE_ROOT_BYTES``) waits until a worker is free.
4. A run with a deadline or a cancel event only ever runs known-cheap tasks on the
   driving thread, so that it can raise on time.
5. A pool pays only where its workers compute at the same time. Tasks that hold the
   GIL (pure-Python loops, much of pandas) run one at a time in any thread pool, and
   each hand-off between threads then costs more than it saves. So the engine
   measures each plain pooled run: the process's CPU time over the run's wall time. A
   run whose tasks kept about one core busy (``ONE_CORE``), though the pool had
   several workers, makes the next plain run of the same kind of graph (the same set
   of cost keys, :func:`graph_kind`) a walk on the driving thread, timed. From then on
   the faster of the two ways is used, and the other is measured again every
   ``RECHECK_EVERY`` runs (:class:`PoolVerdicts`). A graph whose tasks wait (I/O,
   sleeps) keeps the process's CPU near zero and is never walked; nor is a run with a
   deadline, a cancel event or callbacks, nor any run of an engine with
   ``inline_threshold=0``.

Tasks that wait for one another (meet at a barrier, pass items through a queue) are
beyond what timing can tell: once they all run at once, each takes microseconds and
is learned as cheap, and the driving thread would then call one of them and wait for
the others forever. Run such graphs on an engine with ``inline_threshold=0``, which
sends every task to the pool, or pass ``scheduler.get`` a pool of your own (``pool=``:
an engine made for the call, which knows nothing, so every task goes to the pool).

Costs are learned: a task run on the driving thread is timed there; a task run in the
pool reports its duration too, which may set an unknown estimate or lower a known one
(a pool thread also counts the time it waits for the GIL, so it never raises one).
The engine-wide :class:`CostTable` carries estimates across plans and calls, bounded,
and keyed so that it keeps no user callable (nor what a closure captured) alive.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable
from functools import partial
from typing import Any, cast

#: Ready tasks in flight per pool worker, at most: a worker that finishes starts its
#: next task at once, without waiting for the driving thread; more would decide
#: priorities early.
IN_FLIGHT_PER_WORKER = 2

#: A root task (one that waits for no other task: it loads or makes data) whose value
#: last took at least this many bytes is not handed to a busy pool ahead of a worker
#: freeing: it waits in the ready heap, so that the priority decides what starts when a
#: worker frees. Started early, it makes new data while the consumers that would free
#: older data wait behind it in the pool's queue; this is why dask.distributed queues
#: root tasks instead of sending them all to its workers. A process pool takes every
#: task ahead: its hand-off alone takes about a millisecond.
LARGE_ROOT_BYTES = 1 << 20

#: The band of the process's CPU time over a pooled run's wall time that counts as one
#: busy core: the run's tasks computed, but one at a time. Below it the tasks mostly
#: waited (a walk would serialise their waits); above it the workers computed side by
#: side. A run shorter than ``MIN_MEASURED_SECONDS`` is not judged (clock resolution).
ONE_CORE = (0.5, 1.5)
MIN_MEASURED_SECONDS = 2e-3

#: A kind of graph that runs one way (walked or pooled) is run the other way every
#: this many runs, so that a change (larger inputs, a busier machine) is noticed.
RECHECK_EVERY = 16

#: Executor kinds that run tasks in other processes.
ISOLATING_KINDS = frozenset({"processes", "dask"})


def is_isolating(kind: str, pool: Any = None) -> bool:
    """Whether tasks of this executor must never run in the caller's process."""
    return kind in ISOLATING_KINDS or isinstance(pool, cf.ProcessPoolExecutor) or \
        hasattr(pool, "run_plan")


def stable_cost_key(func: Any) -> Hashable:
    """A key under which the durations of ``func``'s tasks are learned, holding no strong
    reference to ``func`` itself when it could carry user data: a plain function (or a
    closure, lambda, ``functools.partial`` of one, bound method) is known by its code
    object and qualified name, which keep no captured value alive; a callable object
    by its class; builtins and numpy ufuncs, which live as long as their module, by
    themselves. Closures of one ``def`` share their timings."""
    while isinstance(func, partial):
        func = func.func
    if isinstance(func, types.MethodType):
        func = func.__func__
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        return (code, getattr(func, "__qualname__", code.co_name))
    if isinstance(func, (types.BuiltinFunctionType, type)) or type(func).__name__ == "ufunc":
        return func
    return cast(Hashable, type(func))  # classes hash by identity


class BoundedTable:
    """A dict that keeps its ``max_keys`` most recently written keys, so that a service
    that runs ever new graphs does not grow it forever. Thread-safe: runs of one engine
    learn from several threads at once."""

    def __init__(self, max_keys: int):
        self.max_keys = max_keys
        self._table: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._table)

    def __bool__(self) -> bool:
        return bool(self._table)

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._table.get(key, default)

    def __setitem__(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._table[key] = value
            self._table.move_to_end(key)
            if len(self._table) > self.max_keys:
                self._table.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._table.pop(key, None)


class CostTable(BoundedTable):
    """Learned figures by cost key, shared by an engine's plans: task durations
    (seconds), and the sizes of root tasks' values (bytes). Bounded (the least recently
    used keys are dropped beyond ``max_keys``) and thread-safe."""

    def __init__(self, max_keys: int = 4096):
        super().__init__(max_keys)

    def observe(self, key: Hashable, seconds: float) -> None:
        """A duration measured on the driving thread: the estimate drops at once and
        rises at most 4x per sample (one GC pause must not make a 1 µs task look
        expensive; a task that really became slower crosses over after a few)."""
        old = self._table.get(key)
        self[key] = seconds if old is None or seconds < 4 * old else 4 * old

    def observe_pooled(self, key: Hashable, seconds: float) -> None:
        """A duration measured in a pool thread: it sets an unknown estimate, and may
        lower a known one, never raise it (it includes waits for the GIL)."""
        old = self._table.get(key)
        if old is None or seconds < old:
            self[key] = seconds


def graph_kind(cost_keys: Any) -> frozenset:
    """What :class:`PoolVerdicts` knows a graph by: the set of its tasks' cost keys. A
    dask collection rebuilt with new key names, or a plan compiled again, is the same
    kind of graph."""
    return frozenset(cost_keys)


class PoolVerdicts:
    """Whether the pool pays for a kind of graph, measured (rule 5 of the module
    docstring): per kind, the wall time of its last pooled run and of its last walk
    on the driving thread.

    Bounded like :class:`CostTable`. Several threads may run graphs of one engine at
    once; then the process's CPU time counts all of them, which at worst starts a walk
    that its own timing then rejects."""

    __slots__ = ("_table",)

    def __init__(self, max_kinds: int = 1024):
        #: kind -> [last pooled wall, last walk wall (None: never walked), runs]
        self._table = BoundedTable(max_kinds)

    def __len__(self) -> int:
        return len(self._table)

    def walk_next(self, kind: frozenset) -> bool:
        """Whether the next plain run of ``kind`` walks on the driving thread: a first
        walk once a pooled run kept one core busy, then whichever way was faster, the
        other way every ``RECHECK_EVERY``-th run."""
        entry = self._table.get(kind)
        if entry is None:
            return False
        pooled, walked, runs = entry
        entry[2] = runs = runs + 1
        if walked is None:
            return True
        walk_wins = walked <= pooled
        return walk_wins != (runs % RECHECK_EVERY == 0)

    def pooled(self, kind: frozenset, wall: float, cpu: float, workers: int) -> None:
        """A plain pooled run of ``kind`` took ``wall`` seconds and ``cpu`` seconds of the
        process's CPU time, on ``workers`` workers."""
        if wall < MIN_MEASURED_SECONDS or workers < 2:
            return
        entry = self._table.get(kind)
        share = cpu / wall
        if share >= ONE_CORE[1]:
            self._table.pop(kind)  # the workers computed side by side: the pool it is
        elif entry is not None:
            entry[0] = wall
            self._table[kind] = entry  # recently used
        elif share >= ONE_CORE[0]:
            self._table[kind] = [wall, None, 0]

    def walked(self, kind: frozenset, wall: float) -> None:
        """A plain run of ``kind`` walked on the driving thread took ``wall`` seconds."""
        entry = self._table.get(kind)
        if entry is not None:
            entry[1] = wall

    def time_walk(self, kind: frozenset, walk: Callable[[], Any]) -> Any:
        """``walk()`` (a plain run of ``kind`` on the driving thread), timed for
        ``walked``; its result."""
        start = time.perf_counter()
        result = walk()
        self.walked(kind, time.perf_counter() - start)
        return result

    def time_pooled(self, kind: frozenset, run: Callable[[], Any], workers: int) -> Any:
        """``run()`` (a plain pooled run of ``kind``), timed with the process's CPU time
        for ``pooled``; its result."""
        start, cpu = time.perf_counter(), time.process_time()
        result = run()
        self.pooled(kind, time.perf_counter() - start, time.process_time() - cpu, workers)
        return result


class Placement:
    """The placement rules for one engine (see the module docstring).

    ``cheap(estimate)`` is the one test of "known to be cheap"; the drivers ask
    ``inline_ok`` for each ready task and ``may_walk`` for a whole plan."""

    __slots__ = ("threshold", "isolating")

    def __init__(self, kind: str, threshold: float, pool: Any = None):
        self.threshold = threshold
        self.isolating = is_isolating(kind, pool)

    def cheap(self, estimate: float | None) -> bool:
        """Known to be cheap: measured or hinted at most the inline threshold."""
        return estimate is not None and estimate <= self.threshold and self.threshold > 0

    def root_may_go_ahead(self, root_bytes: float | None) -> bool:
        """Whether a root task whose value took ``root_bytes`` last time (None: not
        known) may be handed to a pool whose workers are all busy (``LARGE_ROOT_BYTES``)."""
        return self.isolating or root_bytes is None or root_bytes < LARGE_ROOT_BYTES

    def inline_ok(self, estimate: float | None, kernel: Any = None) -> bool:
        """Whether a ready task with this estimate may run on the driving thread."""
        if self.isolating:
            return getattr(kernel, "pass_through", False) is True
        return self.cheap(estimate)

    def may_walk(self, plan: Any) -> bool:
        """Whether a plain run of ``plan`` (no deadline, cancel event, callbacks or
        numerics check) may walk it on the driving thread: every task's cost is known
        and the pool would not pay for itself (``Plan.use_pool``)."""
        return not self.isolating and plan.all_known and not plan.use_pool
