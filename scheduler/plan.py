"""Plans: a (fetches, fed keys) request compiled once into flat arrays the engine runs.

Compiling walks the graph from the fetches (iteratively), stops at fed keys, reports
a cycle with its path, and lays the reachable tasks out in a depth-first post-order
from the fetches. That order is the tasks' priority: it finishes one branch before
starting the next, so values die young and memory stays low (the idea behind dask's
``order.py``), and it is a topological order, so the inline executor simply walks it.

A plan holds, per position ``p`` in that order: the kernel, the positions of its
arguments, how many computed parents it waits for, its children, how many consumers
must finish before its value can be freed, and, for the sequential walk, which values
die after ``p`` runs. Literals and fed values are not tasks: they sit in the value
array from the start.
"""

from __future__ import annotations

import gc
import heapq
import statistics
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from .errors import CycleError, FeedError, MissingDependencyError, UnknownKeyError
from .placement import graph_kind
from .spec import NO_VALUE, TaskSpec

SpecOf = Callable[[Hashable], TaskSpec]

# Per-task cost estimates start unknown; a task is "expensive" (worth a thread hand-off)
# once it has been measured above this many seconds. A hand-off costs tens of µs.
DEFAULT_INLINE_THRESHOLD = 40e-6
# What the pooled driver costs over the plain walk: bookkeeping per task, and a thread
# hand-off per task sent to the pool (measured on the 2-core machines this runs on).
DRIVER_SECONDS_PER_TASK = 3e-6
HANDOFF_SECONDS = 30e-6
# The pool must also promise to save this fraction of the walk's time: running kernels
# on other threads has costs the figures above miss (their arrays allocated in other
# malloc arenas, caches on another core, the GIL passed back and forth), which ate all
# of an MLP step's 15% of inter-op parallelism on the machines this runs on.
MIN_PARALLEL_GAIN = 0.2


class Plan:
    """The compiled form of one (fetches, fed keys) request. Fed keys that the fetches
    do not need are ignored (as in TensorFlow: feeding a placeholder a fetch does not use
    is no error); whether a fed key belongs to the graph at all is the caller's check.
    Immutable apart from the learned per-task costs, which only affect scheduling
    choices, never results.

    Engines compile and cache plans themselves (:meth:`Engine.plan`); build one directly
    only to run it many times with :meth:`Engine.execute`.

    Parameters
    ----------
    fetch_keys : sequence of hashable
        The keys to compute.
    fed_keys : sequence of hashable
        The keys whose values will be fed (their ancestors are not run).
    spec_of : callable
        ``spec_of(key) -> TaskSpec``: how to compute each key.
    memory_order : bool, default False
        Reorder the tasks to keep fewer values alive at once.
    """

    def __init__(self, fetch_keys: Sequence[Hashable], fed_keys: Sequence[Hashable],
                 spec_of: SpecOf, *, memory_order: bool = False):
        # Compiling allocates a few small objects per task and keeps them all: the
        # cyclic collector would rescan the growing heap many times for nothing.
        with gc_paused():
            fed = set(fed_keys)
            order, specs = post_order(fetch_keys, fed, spec_of)
            self._build(order, specs, fetch_keys, fed)
            if memory_order:
                layout = _memory_order(self)
                if layout != list(range(len(order))):
                    self._build([order[p] for p in layout], [specs[p] for p in layout],
                                fetch_keys, fed)

    def _build(self, order: list[Hashable], specs: list[TaskSpec],
               fetch_keys: Sequence[Hashable], fed: set) -> None:
        for name in (*Plan._LINKS, "names", "ops"):  # a rebuild drops what it derived
            self.__dict__.pop(name, None)
        position = {key: p for p, key in enumerate(order)}
        n = len(order)
        self.keys: list[Hashable] = order
        self._specs = specs  # names and ops are read from them on first use
        self.kernels: list[Callable[..., Any] | None] = [s.kernel for s in specs]
        self.cost_keys: list[Hashable] = [s.cost_key for s in specs]
        self.fetch_positions: list[int] = [position[k] for k in fetch_keys]

        #: literal values, and (position, key, check) of each value that must be fed
        self.template: list[Any] = [None] * n
        self.feed_slots: list[tuple[int, Hashable, Callable[[Any], Any] | None]] = []
        #: argument positions (with repeats) and distinct parents, per position
        self.args: list[tuple[int, ...]] = []
        self.parents: list[tuple[int, ...]] = []
        is_source = [False] * n
        compute: list[int] = []
        last_use: dict[int, int] = {}
        # One pass in topological order: every parent's position is known already.
        for p, spec in enumerate(specs):
            deps = spec.deps
            if len(deps) == 1:
                args = parents = (position[deps[0]],)
            else:
                args = tuple([position[d] for d in deps])  # type: ignore[assignment]
                parents = tuple(dict.fromkeys(args)) if len(set(args)) < len(args) else args  # type: ignore[assignment]
            self.args.append(args)
            self.parents.append(parents)
            key = order[p]
            if fed and key in fed:
                self.feed_slots.append((p, key, spec.check_feed))
                is_source[p] = True
                continue
            if spec.kernel is None:
                if spec.value is NO_VALUE:
                    raise FeedError(f"{spec.op} {spec.name!r} must be fed: no value was given")
                self.template[p] = spec.value
                is_source[p] = True
                continue
            compute.append(p)
            for q in args:
                last_use[q] = p
        self.is_source = is_source
        self.compute = compute
        self.keep: list[bool] = [False] * n
        for p in self.fetch_positions:
            self.keep[p] = True

        # For the sequential walk: a value dies right after its last consumer (the
        # consumer latest in the order), unless it is fetched.
        dies_after: list[list[int]] = [[] for _ in range(n)]
        keep = self.keep
        for q, p in last_use.items():
            if not keep[q]:
                dies_after[p].append(q)
        self.dies_after: list[tuple[int, ...]] = [tuple(d) if d else () for d in dies_after]
        #: (position, kernel, argument positions, positions freed afterwards, donor) in
        #: order; the donor is the position of an argument whose buffer the kernel may
        #: write its result into (it dies at this step and is computed, not fed), or -1
        kernels, args_, dies_ = self.kernels, self.args, self.dies_after
        self.steps: list[tuple[int, Callable[..., Any], tuple[int, ...], tuple[int, ...], int]] = [
            (p, kernels[p], args_[p], dies_[p], _donor(specs[p], args_[p], dies_[p], is_source))  # type: ignore[misc]
            for p in compute
        ]

        #: duration estimate per position (seconds): the source's static hint
        #: (``TaskSpec.cost_hint``) or a measurement, None while unknown; and how many
        #: samples it rests on: one sample timed on the driving thread alone never
        #: makes a task expensive (it may have been a GC pause)
        self.hints: list[float | None] = [s.cost_hint for s in specs]
        self.estimates: list[float | None] = [None] * n
        self.samples: list[int] = [0] * n
        self.expensive: list[bool] = [False] * n
        self.any_expensive = False
        #: every computed task has an estimate (none is of unknown cost)
        self.all_known = not compute
        self.use_pool = False
        #: the pool size the engine will use (set by the engine; it weighs ``use_pool``)
        self.workers = 1
        self.runs = 0
        #: the plan's walk compiled to a function (``compiled.py``): ``None`` until it
        #: is, ``False`` if it never will be; and how many sequential walks asked for it
        self.compiled: Any = None
        self.sequential_runs = 0

    #: what only the pooled driver (and analyses of the plan) need; built on first use,
    #: so that a plan that is only ever walked (a one-off ``scheduler.get``) skips it
    _LINKS = frozenset({"children", "initial_pending", "initial_ready", "consumers"})

    def __getattr__(self, name: str) -> Any:
        if name in Plan._LINKS:
            self._link()
            return self.__dict__[name]
        if name == "kind":  # what placement.PoolVerdicts knows the plan by
            self.kind = graph_kind(self.cost_keys[p] for p in self.compute)
            return self.kind
        if name in ("names", "ops"):  # wanted for errors, callbacks and profiles only
            self.names = [s.name for s in self._specs]
            self.ops = [s.op for s in self._specs]
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _link(self) -> None:
        """Children, pending counts, initially ready tasks and consumer counts."""
        n = len(self.keys)
        children: list[list[int]] = [[] for _ in range(n)]
        pending = [0] * n
        is_source, parents = self.is_source, self.parents
        for p in self.compute:
            waiting = 0
            for q in parents[p]:
                children[q].append(p)
                if not is_source[q]:
                    waiting += 1
            pending[p] = waiting
        self.children: list[tuple[int, ...]] = [tuple(c) for c in children]
        self.initial_pending: list[int] = pending
        self.initial_ready: list[int] = [p for p in self.compute if pending[p] == 0]
        self.consumers: list[int] = [len(c) for c in children]

    def __len__(self) -> int:
        return len(self.keys)

    def describe(self, p: int) -> str:
        """``'name' (op op)`` of the task at position ``p``, for messages.

        Parameters
        ----------
        p : int
            A task position.

        Returns
        -------
        str
        """
        return f"{self.names[p]!r} (op {self.ops[p]})"

    def seed_estimates(self, table: Any, threshold: float) -> None:
        """Start from the engine-wide estimates of tasks with the same cost key, else
        from the source's static hints.

        Parameters
        ----------
        table : placement.CostTable
            The engine's estimates (seconds) by cost key.
        threshold : float
            Seconds above which a task is worth a pool worker.
        """
        hints, estimates, samples = self.hints, self.estimates, self.samples
        for p in self.compute:
            key = self.cost_keys[p]
            known = table.get(key) if key is not None else None
            if known is None:
                known = hints[p]
            if known is not None:
                estimates[p] = known
                samples[p] = 2  # history and hints stand for a confirmed sample
        self.reclassify(threshold)

    def learn(self, durations: dict[int, float], table: Any, threshold: float,
              pooled: dict[int, float] | None = None) -> None:
        """Fold measured durations into the estimates and the engine's ``table``.

        ``durations`` were timed on the driving thread: an estimate drops at once and
        rises at most 4x per sample (``CostTable.observe``). ``pooled`` durations were
        measured in pool threads, where a kernel also waits for the GIL while the
        driving thread runs cheap tasks: they set an unknown estimate and may lower a
        known one, never raise it (the next timed walk on the driving thread will).
        Pooled tasks of one cost key count with their typical duration in this run (the
        upper median), not each on its own: one task that happened to be fast (its
        input in cache, or the partner it waited for already there) does not make
        the whole kind look cheap.

        Parameters
        ----------
        durations : dict of int to float
            Seconds measured per task position on the driving thread.
        table : placement.CostTable
            The engine's estimates by cost key, updated too.
        threshold : float
            Seconds above which a task is worth a pool worker.
        pooled : dict of int to float, optional
            Seconds measured per task position in pool threads.
        """
        estimates, cost_keys, samples = self.estimates, self.cost_keys, self.samples
        for p, seconds in durations.items():
            # CostTable.observe, inlined: this loop runs over every task of a learning run
            old = estimates[p]
            estimates[p] = seconds if old is None or seconds < 4 * old else 4 * old
            samples[p] += 1
            key = cost_keys[p]
            if key is not None:
                table.observe(key, seconds)
        for key, positions, seconds in _typical_per_kind(pooled or {}, cost_keys):
            for p in positions:
                old = estimates[p]
                if old is None:
                    estimates[p] = seconds
                    samples[p] = 2  # it ran where an unknown task belongs; see placement
                elif seconds < old:
                    estimates[p] = seconds
            if key is not None:
                table.observe_pooled(key, seconds)
        self.reclassify(threshold)

    def reclassify(self, threshold: float) -> None:
        """Mark the tasks worth a hand-off to the pool: all of them with ``threshold``
        0, else those of unknown cost and those confirmed above ``threshold``; and
        decide whether a plain run should use the pool at all (``use_pool``).

        Parameters
        ----------
        threshold : float
            Seconds above which a task is worth a pool worker.
        """
        estimates, samples = self.estimates, self.samples
        expensive = [False] * len(estimates)
        all_known = True
        for p in self.compute:
            e = estimates[p]
            if e is None:
                all_known = False
                expensive[p] = True
            elif threshold == 0 or (e > threshold and samples[p] >= 2):
                expensive[p] = True
        self.expensive = expensive
        self.all_known = all_known
        self.any_expensive = any(expensive)
        self.use_pool = threshold == 0 or not all_known or (
            self.any_expensive and self._parallel_gain() > 0)

    def _parallel_gain(self) -> float:
        """Estimated seconds a pool of ``workers`` saves over walking the plan on one
        thread, minus what driving it costs and ``MIN_PARALLEL_GAIN`` of the walk. A
        chain gains nothing from a pool even if its tasks are slow; a wide graph of slow
        tasks gains up to ``1 - 1/workers``."""
        estimates, parents = self.estimates, self.parents
        finish = [0.0] * len(estimates)
        sequential = 0.0
        for p in self.compute:
            duration = estimates[p] or 0.0
            sequential += duration
            finish[p] = duration + max((finish[q] for q in parents[p]), default=0.0)
        critical = max(finish, default=0.0)
        parallel = max(critical, sequential / (self.workers + 1))  # +1: the driving thread
        handoffs = sum(self.expensive)
        overhead = DRIVER_SECONDS_PER_TASK * len(self.compute) + HANDOFF_SECONDS * handoffs
        return sequential - parallel - overhead - MIN_PARALLEL_GAIN * sequential


def _typical_per_kind(pooled: dict[int, float], cost_keys: list) -> list[tuple]:
    """``(cost key, its positions, their upper-median duration)`` for the ``pooled``
    durations; each task without a cost key (None) is a kind of its own."""
    groups: dict[Hashable, list[int]] = {}
    found: list[tuple] = []
    for p, seconds in pooled.items():
        key = cost_keys[p]
        if key is None:
            found.append((None, (p,), seconds))
        else:
            groups.setdefault(key, []).append(p)
    for key, positions in groups.items():
        seconds = pooled[positions[0]] if len(positions) == 1 else \
            statistics.median_high([pooled[p] for p in positions])
        found.append((key, positions, seconds))
    return found


def _donor(spec: TaskSpec, args: tuple[int, ...], dies: tuple[int, ...],
           is_source: list[bool]) -> int:
    """The first of the spec's reusable arguments that dies at this step and was
    computed by the plan (a fed or literal value belongs to the caller), else -1."""
    for i in spec.reusable:
        q = args[i]
        if q in dies and not is_source[q]:
            return q
    return -1


def _memory_order(plan: Plan) -> list[int]:
    """A topological layout of ``plan`` that frees memory sooner than its depth-first
    order: after each task, a ready task that is the last consumer of one of the
    values just used (so running it frees that value) runs next; otherwise the
    depth-first position decides, as before. The idea of dask's ``order.py``: finish
    what frees memory first. Sources (literals, feeds) go first; they wait for nothing."""
    n = len(plan.keys)
    parents, children, keep = plan.parents, plan.children, plan.keep
    pending = list(plan.initial_pending)
    left = list(plan.consumers)
    done = bytearray(n)
    out = [p for p in range(n) if plan.is_source[p]]
    heap = list(plan.initial_ready)
    heapq.heapify(heap)

    def ready(c: int) -> bool:
        return pending[c] == 0 and not done[c]

    while heap:
        first = heapq.heappop(heap)
        if done[first]:
            continue
        stack = [first]
        while stack:
            p = stack.pop()
            if done[p]:
                continue
            out.append(p)
            done[p] = 1
            for c in children[p]:
                pending[c] -= 1
                if pending[c] == 0:
                    heapq.heappush(heap, c)
            eager = []
            for q in parents[p]:
                left[q] -= 1
                if left[q] == 1 and not keep[q]:
                    last = next(c for c in children[q] if not done[c])
                    if ready(last):
                        eager.append(last)  # running it frees q
            for c in children[p]:
                if ready(c) and any(left[q] == 1 and not keep[q] for q in parents[c]):
                    eager.append(c)  # a new task that frees one of its inputs at once
            if eager:
                stack.extend(sorted(set(eager), reverse=True))
    return out


class _GcPause:
    """The process-wide pause of the cyclic garbage collector: counted and locked, so
    that runs on many threads, whose pauses overlap in any order, never leave it off
    (two steps, "was it on?" then "turn it off", would race: a pause that reads "off"
    while another is ending, then disables it after that one re-enabled it, leaves it
    off for good) and never turn it back on while some pause is still in effect."""

    __slots__ = ()
    _lock = threading.Lock()
    _depth = 0
    _was_enabled = False

    def __enter__(self) -> None:
        cls = _GcPause
        with cls._lock:
            if cls._depth == 0:
                cls._was_enabled = gc.isenabled()
                gc.disable()
            cls._depth += 1

    def __exit__(self, *exc: object) -> None:
        cls = _GcPause
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0 and cls._was_enabled:
                gc.enable()


_GC_PAUSE = _GcPause()


def gc_paused() -> _GcPause:
    """Pause the cyclic garbage collector while in a ``with`` block (reference counting
    still frees everything). Pauses nest and overlap across threads: the collector is
    back on once the last of them has ended, if it was on when the first began."""
    return _GC_PAUSE


def post_order(fetch_keys: Sequence[Hashable], fed: set,
                spec_of: SpecOf) -> tuple[list[Hashable], list[TaskSpec]]:
    """Depth-first post-order of the tasks the fetches need, without recursion.
    Raises ``CycleError`` with the path when the walk meets a task on its own stack,
    ``MissingDependencyError`` when a task needs a key the graph does not have.
    A fed key's spec loses its dependencies: its value cuts its ancestors off."""
    order: list[Hashable] = []
    specs: list[TaskSpec] = []
    state: dict[Hashable, bool] = {}  # False: on the stack, True: done
    for root in fetch_keys:
        if state.get(root):
            continue
        spec = spec_of(root)
        if root in fed:
            spec = spec._replace(deps=())
        state[root] = False
        stack: list[tuple[Hashable, TaskSpec, Any]] = [(root, spec, iter(spec.deps))]
        while stack:
            key, spec, deps = stack[-1]
            for dep in deps:
                seen = state.get(dep)
                if seen:
                    continue
                if seen is False:
                    path = [k for k, _, _ in stack]
                    raise CycleError(path[path.index(dep):] + [dep])
                try:
                    dep_spec = spec_of(dep)
                except UnknownKeyError:
                    raise MissingDependencyError(dep, [key]) from None
                if fed and dep in fed:
                    dep_spec = dep_spec._replace(deps=())
                state[dep] = False
                stack.append((dep, dep_spec, iter(dep_spec.deps)))
                break
            else:
                stack.pop()
                state[key] = True
                order.append(key)
                specs.append(spec)
    return order, specs
