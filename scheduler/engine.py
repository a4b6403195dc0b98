"""The engine: runs a plan's tasks, each as soon as its parents' values exist.

State machine of one run (``_Run`` is the single owner of every transition; pool
workers only run a kernel and report ``(value, start, end, worker)`` back)::

    waiting --(last computed parent finished: pending count hits 0)--> ready
    ready   --(known cheap: the driving thread runs it inline)-------> finished
    ready   --(unknown or expensive, a pool slot free)----------------> running
    ready   --(unknown or expensive, the pool full)-------------------> held (stays ready)
    running --(its worker reported back)-----------------------------> finished
    finished --(its last consumer finished, and it is not fetched)---> released

Where a ready task runs is decided in one place, ``placement.py``; the rules:

- the ``inline`` executor (and a run re-entered from inside a kernel) runs everything
  on the driving thread;
- executors that isolate (``processes``, ``dask``, a ``ProcessPoolExecutor``) never run
  a user kernel on the caller; only literals, feeds and the engine's pass-throughs;
- elsewhere only tasks *known* to be cheap (measured, or hinted from shapes, below the
  inline threshold) run on the driving thread; a task of unknown cost is presumed
  expensive and goes to the pool, so a first call of unknown tasks is parallel;
- a run with a deadline or a cancel event never runs an unknown or expensive task on
  the driving thread, so it can raise on time;
- a plain run of a kind of graph whose pooled run kept only one core busy (its tasks
  hold the GIL) is walked on the driving thread, timed, and the faster way is kept.

``pending[p]`` counts the computed parents ``p`` still waits for (Kahn's algorithm);
``consumers_left[p]`` counts the children that have not finished yet. Ready tasks wait
in two heaps ordered by the plan's priority (its position: a depth-first order, made
memory-aware for cached plans, see ``plan.py``). Costs are learned from measured
durations, per task and per cost key (TensorFlow's executor does the same): a thread
hand-off costs tens of microseconds, a tiny numpy op less than one, so tiny tasks never
leave the driving thread and heavy ones go to the pool, two per worker at most, so that
the priority still decides what starts next. Literals and fed values are available at
the start.

A task sent to a thread pool in a plain run takes its chain along: the tasks that can
only run right after it, one after another (each the single consumer of the one before
and waiting for nothing else). They run in the same pool job and pass
``ready -> running`` with it, which saves a hand-off per task and keeps a worker on the
branch whose data its caches hold; the pool's first-in-first-out queue then hands out
whole branches, which also keeps parallel branches ending together.

Which driver a run gets (``Engine._dispatch``): the ``inline`` executor walks the plan's
order on the calling thread; so does a plain run (no callbacks, deadline, cancel event
or numerics check) of a plan whose every task has a known cost and whose estimated
parallel gain does not pay for the pool, with no per-task bookkeeping beyond freeing
dead values (its learning runs time every task and hand over to the pooled driver once
a kind of task proves expensive); so does a plain run of a kind of graph the pool did
not pay for (``placement.PoolVerdicts``); everything else goes through ``_Run``, timed
against the process's CPU time when plain, for those verdicts.

On the first error nothing new starts, the tasks in flight are drained, and the error
is raised (TensorFlow's ``NodeDone``): a task's own exception as the original object
with a note naming the node and op, a pool's failure (a worker died, a value that
could not be sent) as ``NodeError``. ``timeout=`` raises ``TimeoutError`` naming the
running nodes as soon as the deadline passes (on the ``inline`` executor, between two
tasks); a run whose tasks all finished returns.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import contextlib
import heapq
import os
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from .blas import IntraOpThreads
from .callbacks import Callback, RunInfo, TaskRecord
from .compiled import compiled_for, fast_key, fast_runner
from .dask_compat import DaskGet
from .direct import scan, walk
from .errors import (
    FeedError,
    NodeError,
    NumericsError,
    RemoteError,
    RunCancelled,
    add_node_note,
    raise_task_error,
)
from .executors import (
    EXECUTOR_NAMES,
    TaskRaised,
    call_chain,
    call_timed,
    default_workers,
    inside_kernel,
    make_pool,
    pool_is_broken,
    runs_on_current_thread,
    start_threads,
    submit_shared,
    worker_name,
)
from .names import resolve_names
from .placement import IN_FLIGHT_PER_WORKER, CostTable, Placement, PoolVerdicts, graph_kind
from .plan import DEFAULT_INLINE_THRESHOLD, Plan, gc_paused
from .results import distinct_arrays
from .reuse import reuse_into
from .spec import TaskSpec

# Every LEARN_EVERY-th run of an all-cheap plan is timed, so that a task whose cost
# grows (a larger feed) is noticed; the runs in between pay no timing at all.
LEARN_EVERY = 32
# How often a cancellable run that waits on the pool looks at its cancel flag.
CANCEL_POLL_SECONDS = 0.02
# The longest single wait on the pool: a far deadline is waited for in such steps
# (queue waits refuse timeouts beyond threading.TIMEOUT_MAX).
MAX_WAIT_SECONDS = 3600.0


def _spec_of_object(key: Hashable) -> TaskSpec:
    task = getattr(key, "__task__", None)
    if task is None:
        raise TypeError(f"cannot run {key!r}: fetches must be graph nodes (objects with __task__)")
    return task()


class Engine:
    """Runs graphs on an executor. A context manager; closes what it started.

    One engine may be used from many threads at once: each run has its own state.
    Plans are compiled once per (fetches, fed nodes) and cached, and the placement
    policy (``placement.py``), from learned durations and static hints, decides which
    nodes go to the pool.

    Parameters
    ----------
    executor : str or concurrent.futures.Executor, default "threads"
        ``"inline" | "threads" | "asyncio" | "processes" | "dask"``, or any object with
        ``submit`` (a ``concurrent.futures.Executor``), which the engine uses but does
        not shut down.
    workers : int, optional
        Pool size; the executor's own, else the number of CPUs.
    callbacks : iterable of Callback, optional
        Hooks called around every run of this engine.
    check_numerics : bool, default False
        Raise ``NumericsError`` naming the first node that produced NaN or Inf.
    inline_threshold : float
        Tasks known (measured, or hinted from shapes) to take at most this many seconds
        run on the driving thread; the rest, and those of unknown cost, go to the pool
        (see ``placement.py``). 0 sends every task to the pool.
    plan_cache_size : int, default 256
        Compiled plans kept (least recently used dropped).
    simplify : bool, default True
        Let the fetched objects rewrite their graph when a plan is compiled (for
        dataflow nodes, :func:`dataflow.simplify`).
    intra_op_threads : int, optional
        BLAS/OpenMP threads each worker's kernels may use; by default
        ``workers x intra_op_threads <= cores`` (see ``blas.py``).
    fuse : bool, default False
        Also let the fetched objects fuse elementwise work into single compiled kernels
        when a plan is compiled (for dataflow nodes, ``dataflow.fusion``: kernels over
        large arrays, and whole regions of small-array ops as one call; compiled by
        numba, whose machine code is kept in a cache folder across processes).

    Raises
    ------
    ValueError
        For an unknown executor name or a bad ``workers``.
    TypeError
        For an executor that is neither a name nor has ``submit``.

    Examples
    --------
    >>> import numpy as np, dataflow as df, scheduler
    >>> with df.Graph():
    ...     x = df.placeholder("x", (2,))
    ...     y = df.sum(x * 3.0)
    >>> with scheduler.Engine("threads", workers=2) as engine:
    ...     print(engine.run(y, {x: np.ones(2)}))
    6.0
    """

    def __init__(self, executor: Any = "threads", workers: int | None = None,
                 callbacks: Iterable[Callback] = (), *, check_numerics: bool = False,
                 inline_threshold: float = DEFAULT_INLINE_THRESHOLD, plan_cache_size: int = 256,
                 simplify: bool = True, intra_op_threads: int | None = None,
                 fuse: bool = False):
        if isinstance(executor, str):
            if executor not in EXECUTOR_NAMES:
                raise ValueError(f"unknown executor {executor!r}; expected one of "
                                 f"{', '.join(EXECUTOR_NAMES)} or a concurrent.futures.Executor")
            if executor == "dask":
                _require_distributed()
            self.kind = executor
            self._external = None
        elif callable(getattr(executor, "submit", None)):
            self.kind = "external"
            self._external = executor
        else:
            raise TypeError(f"executor must be a name or an object with submit(), got {executor!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.workers = workers or getattr(executor, "_max_workers", None) or default_workers()
        self.callbacks = tuple(callbacks)
        self.check_numerics = check_numerics
        #: where ready tasks run (see ``placement.py``)
        self.placement = Placement(self.kind, float(inline_threshold), self._external)
        self._plans: OrderedDict[Hashable, Plan] = OrderedDict()
        #: ``run``'s fast path: (fetch structure, fed keys) -> the whole cached run,
        #: compiled (``compiled.fast_runner``); plain inline runs only
        self._fast_runs: dict[Hashable, Any] = {}
        self._plan_cache_size = plan_cache_size
        #: let the fetch objects rewrite their graph when a plan is compiled (their
        #: class's ``__plan_rewrite__``; for dataflow nodes, ``dataflow.simplify``)
        self.simplify = simplify
        #: also let them fuse elementwise work into single kernels (``__plan_rewrite__``
        #: called with ``fuse=True``; for dataflow nodes, ``dataflow.fusion``)
        self.fuse = fuse
        self._costs = CostTable()
        #: the size of the value of root tasks run in the pool, by cost key (bytes)
        self._root_bytes = CostTable()
        self._direct_gets = 0  # plain gets that skipped compiling a plan (pooled kinds)
        #: per kind of graph, whether the pool paid (placement.py, rule 5)
        self._verdicts = PoolVerdicts()
        self._lock = threading.Lock()
        self._owned: dict[str, Any] = {}  # pools this engine created: closed with it
        #: BLAS/OpenMP threads per worker (see ``blas.py``); given back when the engine closes
        self.intra_op = self._owned["intra_op"] = IntraOpThreads(
            intra_op_threads, self.kind, self.workers, external=self._external is not None)
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown_pools, self._owned)
        if self.kind in ("threads", "asyncio"):
            # Start the pool's threads with the engine, as TensorFlow starts its pools with
            # the session: a first run then waits for no thread start-up on its way.
            start_threads(self._pool())

    @property
    def inline_threshold(self) -> float:
        """Tasks known to take at most this many seconds run on the driving thread; the
        rest, and those of unknown cost, go to the pool. 0 sends every task to the pool."""
        return self.placement.threshold

    @inline_threshold.setter
    def inline_threshold(self, seconds: float) -> None:
        self.placement.threshold = float(seconds)

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut down the pools this engine started. Runs in flight finish their tasks."""
        with self._lock:  # a run creating a pool right now either stores it first or fails
            self._closed = True
        self._fast_runs.clear()
        self._finalizer()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Engine executor={self.kind} workers={self.workers}{state}>"

    def _pool(self) -> Any:
        if self._external is not None:
            return self._external
        with self._lock:
            if self._closed:
                raise RuntimeError("this engine is closed")
            pool = self._owned.get("pool")
            if pool is not None and pool_is_broken(pool):
                # A dead worker broke the pool; the failed run reported it, the next gets a new one.
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
            if pool is None:
                pool = self._owned["pool"] = make_pool(self.kind, self.workers,
                                                       *self.intra_op.initializer())
            return pool

    # -- running dataflow nodes ----------------------------------------------------------
    def run(self, fetches: Any, feeds: Mapping | None = None, *, timeout: float | None = None,
            callbacks: Iterable[Callback] = ()) -> Any:
        """Compute ``fetches`` and return their values.

        Parameters
        ----------
        fetches : node, name, list/tuple or dict of them
            What to compute; only their ancestors run (fed nodes cut theirs off). A
            name is looked up in the graph of the request's nodes (``scheduler.names``).
        feeds : mapping, optional
            Values of placeholders (and of any other node to feed), keyed by node or name.
        timeout : float, optional
            Seconds the run may take; then ``TimeoutError`` naming the running nodes.
        callbacks : iterable of Callback, optional
            Hooks for this run only (besides the engine's own).

        Returns
        -------
        object
            The values in the structure of ``fetches``, as numpy arrays: one array of its
            own per distinct fetch (a node fetched twice gives one array twice).

        Raises
        ------
        FeedError
            For missing, extra or ill-shaped feeds, before any node runs.
        TimeoutError
            When ``timeout`` passes first.
        Exception
            A failing node's own exception, with a note naming the node and its op;
            nothing new starts after it and the engine stays usable.
        """
        if timeout is None and not callbacks and self._fast_runs:
            try:
                fast = self._fast_runs.get(fast_key(fetches, feeds))
            except TypeError:  # an unhashable fetch structure: the ordinary path says why
                fast = None
            if fast is not None:
                return fast(feeds)
        return self._run(fetches, feeds, timeout, callbacks, None)

    def _run(self, fetches: Any, feeds: Mapping | None, timeout: float | None,
             callbacks: Iterable[Callback], cancel: threading.Event | None,
             keep_plan: bool = True) -> Any:
        resolved, resolved_feeds = resolve_names(fetches, feeds)
        # A request by name takes the ordinary path every time (the fast path is keyed
        # by the objects given, and names are looked up per run).
        by_name = resolved is not fetches or resolved_feeds is not feeds
        fetches, feeds = resolved, resolved_feeds
        keys, pack = _flatten_fetches(fetches)
        given, feeds = feeds, dict(feeds or {})
        plan = self.plan(keys, feeds, keep=keep_plan)
        values = self.execute(plan, feeds, timeout=timeout, callbacks=callbacks, cancel=cancel)
        if plan.compiled and self.kind == "inline" and timeout is None and cancel is None \
                and not by_name and not self.callbacks and not callbacks \
                and not self.check_numerics:
            self._remember_fast_run(fetches, given, plan, pack)
        return pack(distinct_arrays([_as_array(v) for v in values]))

    def _remember_fast_run(self, fetches: Any, feeds: Mapping | None, plan: Plan,
                           pack: Any) -> None:
        """Let later runs of these fetches and fed keys go straight to the compiled plan
        (a plain inline run only walks the plan, so the whole run may be compiled)."""
        try:
            key = fast_key(fetches, feeds)
        except TypeError:
            return
        if len(self._fast_runs) >= self._plan_cache_size:
            self._fast_runs.clear()
        if isinstance(fetches, (list, tuple, dict)):
            self._fast_runs[key] = fast_runner(
                plan.compiled, lambda values: pack(distinct_arrays(values)))
        else:  # one fetch: nothing to keep apart
            self._fast_runs[key] = fast_runner(plan.compiled, None)

    async def run_async(self, fetches: Any, feeds: Mapping | None = None, *,
                        timeout: float | None = None, callbacks: Iterable[Callback] = ()) -> Any:
        """:meth:`run` from inside an event loop.

        The run is driven from a coordinator thread and its kernels run there or in the
        pool, never on the loop, which stays free. Cancelling the awaiting task stops
        the run: no node starts afterwards (the nodes running then finish in the
        background, as after a timeout).

        Parameters
        ----------
        fetches : node, name, list/tuple or dict of them
            What to compute; only their ancestors run (fed nodes cut theirs off).
        feeds : mapping, optional
            Values of placeholders (and of any other node to feed), keyed by node or name.
        timeout : float, optional
            Seconds the run may take; then ``TimeoutError`` naming the running nodes.
        callbacks : iterable of Callback, optional
            Hooks for this run only (besides the engine's own).

        Returns
        -------
        object
            As for :meth:`run`.
        """
        # Names are looked up here: a name-only request reads this thread's default graph.
        fetches, feeds = resolve_names(fetches, feeds)
        cancel = threading.Event()
        try:
            job = self._coordinators().submit(self._run, fetches, feeds, timeout, callbacks,
                                              cancel)
        except RuntimeError:  # closed meanwhile: the pool refuses new work
            if self._closed:
                raise RuntimeError("this engine is closed") from None
            raise
        # Shielded, so that a cancelled ``job`` (``close()`` cancels the runs still
        # queued for a coordinator) is told apart from a cancel of the awaiting task.
        outcome = asyncio.wrap_future(job)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            if outcome.cancelled() and self._closed:
                raise RuntimeError("the engine was closed before the run started") from None
            cancel.set()
            job.cancel()  # a run still queued never starts
            outcome.add_done_callback(_ignore_outcome)
            raise

    def _coordinators(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("this engine is closed")
            pool = self._owned.get("coordinators")
            if pool is None:
                # Each coordinator drives one run and holds the GIL while it walks cheap
                # tasks: a few of them keep the pool busy; many would only contend for
                # the GIL and stall the event loop. Further runs queue up.
                pool = self._owned["coordinators"] = cf.ThreadPoolExecutor(
                    max_workers=max(2, self.workers), thread_name_prefix="dataflow-coordinator")
            return pool

    def plan(self, keys: list, feeds: Mapping, *, keep: bool = True) -> Plan:
        """The cached plan for these fetch keys and fed keys (compiled on first use).

        Parameters
        ----------
        keys : list
            Fetch keys (graph nodes).
        feeds : mapping
            The feeds; only their keys matter.
        keep : bool, default True
            Cache a newly compiled plan. A cached plan holds its graph's nodes; the
            shared default engines of one-shot ``scheduler.run`` calls keep none, so
            that a service's graphs die with their last reference.

        Returns
        -------
        Plan

        Raises
        ------
        FeedError
            If a feed key is not a node of the fetches' graph.
        """
        cache_key = (tuple(keys), frozenset(feeds))
        with self._lock:
            plan = self._plans.get(cache_key)
            if plan is not None:
                self._plans.move_to_end(cache_key)
                return plan
        # Checked once per plan: a cached plan's fed keys passed these checks.
        for key in keys:
            if not hasattr(key, "__task__"):  # before the feeds: they are judged by the fetches
                raise TypeError(f"cannot run {key!r}: fetches must be graph nodes or their names")
        graph = getattr(keys[0], "graph", None) if keys else None
        for key in feeds:
            if not hasattr(key, "__task__"):
                raise FeedError(f"feed key {key!r} is not a graph node")
            if getattr(key, "graph", None) is not graph:
                raise FeedError(f"feed {getattr(key, 'name', key)!r} belongs to another graph "
                                "than the fetches")
        plan = _compile(keys, list(feeds), self.simplify, self.fuse)
        plan.workers = self.workers
        plan.seed_estimates(self._costs, self.inline_threshold)
        if not keep:
            return plan
        with self._lock:
            self._plans[cache_key] = plan
            if len(self._plans) > self._plan_cache_size:
                self._plans.popitem(last=False)
        return plan

    # -- running a compiled plan ---------------------------------------------------------
    def execute(self, plan: Plan, feeds: Mapping, *, timeout: float | None = None,
                callbacks: Iterable[Callback] = (),
                cancel: threading.Event | None = None) -> list[Any]:
        """Run a compiled plan.

        Parameters
        ----------
        plan : Plan
            From :meth:`plan` (or built directly).
        feeds : mapping
            Values keyed like the plan's keys.
        timeout : float, optional
            Seconds the run may take.
        callbacks : iterable of Callback, optional
            Hooks for this run only.
        cancel : threading.Event, optional
            Once set (from another thread), no node starts and the run raises
            ``RunCancelled``.

        Returns
        -------
        list
            The fetched values, in the plan's fetch order.
        """
        if self._closed:
            raise RuntimeError("this engine is closed")
        values = list(plan.template)
        for p, key, check in plan.feed_slots:
            value = feeds[key]
            if check is not None:
                try:
                    value = check(value)
                except (TypeError, ValueError) as exc:
                    raise FeedError(str(exc)) from None
            values[p] = value
        cbs = self.callbacks + tuple(callbacks)
        deadline = deadline_after(timeout)
        if self.kind == "dask" or hasattr(self._external, "run_plan"):
            # A cluster runs the whole plan as one graph of its own (dask_executor.py).
            return self._pool().run_plan(plan, values, deadline=deadline, callbacks=cbs,
                                         check_numerics=self.check_numerics, cancel=cancel)
        plain = not cbs and not self.check_numerics and deadline is None
        reentrant = inside_kernel()
        sequential = self.kind == "inline" or reentrant
        learn = not sequential and (plan.runs < 2 or plan.runs % LEARN_EVERY == 0)
        plan.runs += 1
        # The cyclic collector would fire every few hundred tasks (each allocates its
        # argument list) and rescan the whole heap; worse, always inside the same task,
        # whose measured cost it inflates run after run. Reference counting still frees
        # every value on time.
        with gc_paused():
            self._dispatch(plan, values, cbs, deadline, cancel, plain, sequential, learn)
        return [values[p] for p in plan.fetch_positions]

    def _dispatch(self, plan: Plan, values: list, cbs: tuple, deadline: float | None,
                  cancel: threading.Event | None, plain: bool, sequential: bool,
                  learn: bool) -> None:
        """Choose the driver for this run (see the module docstring); the placement
        policy says whether the plan may be walked on this thread. A cancellable walk
        runs known-cheap tasks only, and checks the cancel event before each."""
        if sequential:
            if plain:
                _walk(plan, values, cancel)
            else:
                _Run(self, plan, values, None, cbs, deadline, True, cancel=cancel).drive()
        elif plain and self.placement.may_walk(plan) and (
                cancel is None or not plan.any_expensive):
            if learn and self.inline_threshold > 0:
                # Timed on the driving thread alone: a task timed in the pool also
                # counts the time it waited for the GIL.
                self._learning_walk(plan, values, cancel)
            else:
                _walk(plan, values, cancel)
        elif plain and cancel is None and self._judges_pool():
            # Rule 5 of placement.py: walk this kind of graph if the pool did not pay.
            kind = plan.kind
            if self._verdicts.walk_next(kind):
                self._verdicts.time_walk(kind, lambda: _walk(plan, values))
            else:
                run = _Run(self, plan, values, self._pool(), cbs, deadline, False)
                self._verdicts.time_pooled(kind, run.drive, self.workers)
        else:
            _Run(self, plan, values, self._pool(), cbs, deadline, False, cancel=cancel).drive()

    def _judges_pool(self) -> bool:
        """Whether plain runs of this engine may be walked where the pool did not pay
        (rule 5 of ``placement.py``): a thread pool of several workers that may run
        tasks on the driving thread at all."""
        return (self.workers > 1 and self.inline_threshold > 0
                and not self.placement.isolating)

    def _learning_walk(self, plan: Plan, values: list,
                       cancel: threading.Event | None = None) -> None:
        """Walk the plan on this thread like ``_walk``, timing every task. Once a cost key
        proves expensive (twice), hand the rest of the run to the pooled driver, so that
        a task that became slow (a larger feed) is noticed within the run."""
        durations: dict[int, float] = {}
        done = _timed_walk(plan, values, durations, self._costs, self.inline_threshold,
                           cancel)
        if done < len(plan.steps):
            run = _Run(self, plan, values, self._pool(), (), None, False,
                       finished=plan.compute[:done], cancel=cancel)
            run.durations = durations
            run.relearned.add(plan.cost_keys[plan.compute[done - 1]])
            run.drive()
        else:
            plan.learn(durations, self._costs, self.inline_threshold)

    # -- running plain task graphs ---------------------------------------------------------
    def get(self, tasks: Mapping, keys: Any, *, feeds: Mapping | None = None,
            timeout: float | None = None, callbacks: Iterable[Callback] = ()) -> Any:
        """Run a task graph in dask's conventions.

        Parameters
        ----------
        tasks : mapping
            ``{key: (callable, *args)}``; an arg that is a key of ``tasks`` stands for
            that task's value; anything else is a literal. A dask collection's graph is
            accepted too.
        keys : hashable or nested list of hashable
            What to compute.
        feeds : mapping, optional
            Values for keys of ``tasks``, which then do not run.
        timeout : float, optional
            Seconds the run may take.
        callbacks : iterable of Callback, optional
            Hooks for this run only.

        Returns
        -------
        object
            The values of ``keys``, in the same nesting.

        Raises
        ------
        KeyError
            If a key is not in the task graph.
        CycleError
            If the task graph has a cycle.
        """
        from .taskgraph import TaskGraphSource, as_task_mapping, flatten_keys, pack_results

        tasks = as_task_mapping(tasks)
        source = TaskGraphSource(tasks)
        wanted = flatten_keys(keys)
        for key in wanted:
            if key not in source:
                raise KeyError(f"key {key!r} is not in the task graph")
        feeds = dict(feeds or {})
        for key in feeds:
            if key not in source:
                raise FeedError(f"feed key {key!r} is not in the task graph")
        cbs = self.callbacks + tuple(callbacks)
        spec_of = source.spec
        kind = None  # the set of the graph's cost keys, once the scan has it
        if not cbs and timeout is None and not self.check_numerics and self._may_walk_directly():
            with gc_paused():
                direct = scan(source, wanted, feeds)
                if self.kind == "inline" or inside_kernel():
                    return pack_results(keys, walk(direct))
                kind = graph_kind(direct.cost_keys())
                if self._all_cheap(kind):
                    return pack_results(keys, walk(direct))
                if self._judges_pool() and self._verdicts.walk_next(kind):
                    return pack_results(keys, self._verdicts.time_walk(kind, lambda: walk(direct)))
            # The pool it is: the plan reuses the specs the scan built (a dask graph's
            # task objects cost more to read than the rest of the plan).
            scanned = direct.specs
            spec_of = lambda key: scanned.get(key) or source.spec(key)  # noqa: E731
        # A pool runs ready tasks by plan position: the memory-aware layout lets a
        # value's consumers follow it (dask's ``order.py`` does the same), where the
        # plain post-order would finish one fetch's whole subgraph before the next
        # touches values they share, keeping all of them alive meanwhile.
        plan = Plan(wanted, list(feeds), spec_of, memory_order=self.kind != "inline")
        if kind is not None:
            plan.kind = kind  # the scan's: the same set of cost keys
        plan.workers = self.workers
        if self.kind != "inline":  # the inline executor never consults estimates
            plan.seed_estimates(self._costs, self.inline_threshold)
        values = self.execute(plan, feeds, timeout=timeout, callbacks=callbacks)
        return pack_results(keys, dict(zip(wanted, values)))

    def _may_walk_directly(self) -> bool:
        """Whether a plain ``get`` may skip compiling a plan (``scheduler/direct.py``):
        always for the inline executor; for a pool that may run tasks on this thread,
        only when the engine has measured tasks before (``_all_cheap`` decides after
        the scan), and not on every ``LEARN_EVERY``-th call, which goes through a plan's
        learning walk so that a kind of task that became slow is noticed."""
        if self._closed:
            raise RuntimeError("this engine is closed")
        if self.kind == "inline":
            return True
        if self.placement.isolating or not self._costs or self.inline_threshold <= 0:
            return False
        self._direct_gets += 1
        return self._direct_gets % LEARN_EVERY != 0

    def _all_cheap(self, cost_keys: Iterable[Hashable]) -> bool:
        """Every kind of task (``cost_keys``) is known to be cheap, so the pooled driver
        would run them all on this thread anyway."""
        costs, cheap = self._costs, self.placement.cheap
        return all(cheap(costs.get(key)) for key in cost_keys)


def _compile(keys: list, fed: list, rewrite: bool, fuse: bool = False) -> Plan:
    """The plan for fetch ``keys`` and ``fed`` keys. With ``rewrite``, the fetch objects'
    class may first rewrite their graph: ``type(keys[0]).__plan_rewrite__(keys, fed)``
    returns ``(new keys, new fed keys, {new key: original key})``: the new keys position
    for position, and the fed keys the new graph still reads (each in the mapping).
    The plan is compiled from the new keys but speaks in the original ones: feeds are
    looked up by the original fed keys, and each task that stands for an original key
    is reported (callbacks, ``plan.keys``) under it. With ``fuse``, the hook is called
    with ``simplify=rewrite, fuse=True``."""
    hook = getattr(type(keys[0]), "__plan_rewrite__", None) if (rewrite or fuse) and keys \
        else None
    if hook is None:
        return Plan(keys, fed, _spec_of_object, memory_order=True)
    new_keys, new_fed, origin = hook(keys, fed, simplify=rewrite, fuse=True) if fuse else \
        hook(keys, fed)
    plan = Plan(new_keys, new_fed, _spec_of_object, memory_order=True)
    if origin:
        plan.keys = [origin.get(k, k) for k in plan.keys]
        plan.feed_slots = [(p, origin[k], check) for p, k, check in plan.feed_slots]
    return plan


def _walk(plan: Plan, values: list, cancel: threading.Event | None = None) -> None:
    """Run every task in the plan's order on this thread, freeing values as they die
    (compiled to one function once the plan is walked again, see ``compiled.py``)."""
    if cancel is None:
        compiled = compiled_for(plan)
        if compiled is not None:
            compiled.run_table(values)
            return
    p = -1
    try:
        for p, kernel, args, dies, donor in _steps(plan, cancel):
            # Most kernels take one or two arguments: calling them without building an
            # argument list (a list comprehension is a frame of its own) is this loop's
            # main saving.
            if donor >= 0:
                values[p] = _call_reusing(kernel, values, args, donor)
            elif len(args) == 1:
                values[p] = kernel(values[args[0]])
            elif len(args) == 2:
                values[p] = kernel(values[args[0]], values[args[1]])
            else:
                values[p] = kernel(*[values[a] for a in args])
            for d in dies:
                values[d] = None
    except RunCancelled:
        raise
    except Exception as exc:
        raise_task_error(plan.names[p], plan.ops[p], exc)


def _steps(plan: Plan, cancel: threading.Event | None) -> Any:
    """The plan's steps, for a walk; with ``cancel``, a walk that raises ``RunCancelled``
    before the first step after the event is set (an uncancellable walk pays nothing)."""
    if cancel is None:
        return plan.steps
    return _until_cancelled(plan.steps, cancel)


def _until_cancelled(steps: list, cancel: threading.Event) -> Any:
    for i, step in enumerate(steps):
        if cancel.is_set():
            raise RunCancelled(f"run cancelled with {len(steps) - i} unfinished nodes")
        yield step


def _call_reusing(kernel: Any, values: list, args: tuple[int, ...], donor: int) -> Any:
    """``kernel(*args)``, written into the donor's buffer when that is safe
    (``reuse.reuse_into``'s rule): the donor dies at this step, so the walk lets go of
    it first."""
    argv = [values[a] for a in args]
    values[donor] = None
    return reuse_into(kernel, argv, args.index(donor))


def _timed_walk(plan: Plan, values: list, durations: dict[int, float],
                costs: CostTable, threshold: float,
                cancel: threading.Event | None = None) -> int:
    """``_walk`` that records each task's duration and stops after the task that
    confirms a cost key as expensive (the second slow task of that key in a row: a fast
    one in between means the first was a pause, GC or preemption, not the task).
    Returns the number of steps done; freeing follows the sequential order, so it is
    right at any stop."""
    perf_counter = time.perf_counter
    cost_keys = plan.cost_keys
    slow_once: dict = {}  # cost key -> the duration of its last task, which was slow
    p = -1
    try:
        for i, (p, kernel, args, dies, donor) in enumerate(_steps(plan, cancel)):
            start = perf_counter()
            if donor < 0:
                values[p] = kernel(*[values[a] for a in args])
            else:
                values[p] = _call_reusing(kernel, values, args, donor)
            seconds = durations[p] = perf_counter() - start
            for d in dies:
                values[d] = None
            if seconds > threshold:
                key = cost_keys[p]
                if key is None:
                    continue
                if key in slow_once:
                    costs[key] = min(seconds, slow_once[key])
                    return i + 1
                slow_once[key] = seconds
            elif slow_once:
                slow_once.pop(cost_keys[p], None)
    except RunCancelled:
        raise
    except Exception as exc:
        raise_task_error(plan.names[p], plan.ops[p], exc)
    return len(plan.steps)


class _Run:
    """The state of one run. Only the driving thread touches it."""

    def __init__(self, engine: Engine, plan: Plan, values: list, pool: Any,
                 callbacks: tuple[Callback, ...], deadline: float | None, inline: bool,
                 finished: Iterable[int] = (), cancel: threading.Event | None = None):
        self.engine = engine
        self.cancel = cancel
        self.plan = plan
        self.values = values
        self.pool = pool
        self.callbacks = callbacks
        self.deadline = deadline
        self.inline = inline
        self.check_numerics = engine.check_numerics
        self.threshold = engine.inline_threshold
        self.pending = list(plan.initial_pending)
        self.consumers_left = list(plan.consumers)
        self.cheap: list[int] = []
        self.costly: list[int] = []
        self.waits_for = plan.initial_pending  # how many tasks each waits for: 0 for roots
        self.in_flight = 0
        #: the positions in flight, in submission order, and their futures
        self.running: dict[int, cf.Future] = {}
        self.finished = 0
        self.done = bytearray(len(plan))
        #: tasks already handed to the pool as part of a chain (see ``_chain_from``)
        self.claimed = bytearray(len(plan))
        #: whether pooled tasks may take their chain along: thread pools, and only in
        #: plain runs (callbacks and numerics checks see every task finish on its own)
        self.fuse = isinstance(pool, cf.ThreadPoolExecutor) and not callbacks and \
            not engine.check_numerics
        #: set when the run stops (an error, a timeout, a cancel, or its end): a chain
        #: in the pool then starts none of its remaining tasks
        self.stop = threading.Event()
        self.durations: dict[int, float] = {}  # of tasks run on the driving thread
        self.pooled_durations: dict[int, float] = {}  # of tasks run in the pool
        self.slow_once: dict = {}  # cost key -> the duration of its last task, if slow
        #: cost keys confirmed slow during this run: their tasks' plan estimates are stale
        self.relearned: set = set()
        self.placement = engine.placement
        # Looked up once per run, not once per ready task (``_make_ready``).
        self.isolating = engine.placement.isolating
        self.cheap_enough = engine.placement.cheap
        self.costs = engine._costs
        self.error: tuple[int, BaseException] | None = None
        self.completions: queue.SimpleQueue = queue.SimpleQueue()
        self.started = time.perf_counter()
        self.ready_at = [self.started] * len(plan) if callbacks else None
        self.driver = worker_name()
        self.info = RunInfo(plan, engine.kind, 0 if inline else engine.workers, self.started,
                            list(plan.keys[p] for p in plan.fetch_positions))
        finished = list(finished)
        if finished:
            self._resume_after(finished)
        else:
            for p in plan.initial_ready:
                self._make_ready(p)

    def _resume_after(self, finished: list[int]) -> None:
        """Take over a run whose ``finished`` tasks already ran on this thread (their
        values, and the releases of the sequential walk, are in place)."""
        plan, pending, left, done = self.plan, self.pending, self.consumers_left, self.done
        for p in finished:
            done[p] = 1
            for c in plan.children[p]:
                pending[c] -= 1
            for q in plan.parents[p]:
                left[q] -= 1
        self.finished = len(finished)
        for p in plan.compute:
            if not done[p] and pending[p] == 0:
                self._make_ready(p)

    # -- transitions ---------------------------------------------------------------------
    def _make_ready(self, p: int) -> None:
        if self.claimed[p]:  # it runs in the pool with the rest of its chain
            return
        if self.inline:
            heapq.heappush(self.cheap, p)
            return
        plan = self.plan
        if self.isolating:  # only the engine's pass-throughs stay on this thread
            inline = self.placement.inline_ok(None, plan.kernels[p])
        else:
            estimate = plan.estimates[p]
            key = plan.cost_keys[p]
            if key is not None and (estimate is None or (self.relearned
                                                         and key in self.relearned)):
                # Not measured in this plan, or proven slow within this run: go by what
                # its kind of task took elsewhere, or just now.
                estimate = self.costs.get(key, estimate)
            elif plan.expensive[p]:
                estimate = None  # confirmed expensive in this plan: the pool, as if unknown
            inline = self.cheap_enough(estimate)
        heapq.heappush(self.cheap if inline else self.costly, p)

    def _finish(self, p: int, value: Any, start: float, end: float, worker: str) -> None:
        plan = self.plan
        if self.check_numerics:
            _check_finite(plan, p, value)
        self.values[p] = value
        self.finished += 1
        self.done[p] = 1
        if worker == self.driver:
            self.durations[p] = end - start
        else:
            self.pooled_durations[p] = end - start
            if not self.waits_for[p]:  # a root task: learn the size of its value
                self._learn_root_bytes(p, value)
        if self.callbacks:
            record = TaskRecord(p, plan.keys[p], plan.names[p], plan.ops[p], worker,
                                self.ready_at[p], start, end, value)  # type: ignore[index]
            for cb in self.callbacks:
                cb.posttask(self.info, record)
        pending, ready_at = self.pending, self.ready_at
        for c in plan.children[p]:
            left_c = pending[c] - 1
            pending[c] = left_c
            if left_c == 0:
                if ready_at is not None:
                    ready_at[c] = end
                self._make_ready(c)
        left, keep, values = self.consumers_left, plan.keep, self.values
        for q in plan.parents[p]:
            left[q] -= 1
            if left[q] == 0 and not keep[q]:
                values[q] = None

    def _run_inline(self, p: int) -> None:
        plan, values = self.plan, self.values
        for cb in self.callbacks:
            cb.pretask(self.info, p)
        start = time.perf_counter()
        try:
            value = plan.kernels[p](*[values[a] for a in plan.args[p]])  # type: ignore[misc]
        except Exception as exc:
            self.error = (p, exc)
            return
        end = time.perf_counter()
        if not self.inline and end - start > self.threshold:
            self._learn_now(p, end - start)
        elif self.slow_once:
            self.slow_once.pop(plan.cost_keys[p], None)
        self._finish(p, value, start, end, self.driver)

    def _learn_now(self, p: int, seconds: float) -> None:
        """A task thought cheap took long. Once the next task of the same cost key
        confirms it (one slow sample may be a GC pause; a fast one in between resets),
        its siblings still waiting in this run go to the pool, not only those of the
        next run."""
        key = self.plan.cost_keys[p]
        if key is None:
            return
        if key in self.slow_once:
            table = self.costs
            table[key] = max(table.get(key) or 0.0, min(seconds, self.slow_once[key]))
            self.relearned.add(key)
        else:
            self.slow_once[key] = seconds

    def _may_go_ahead(self, p: int) -> bool:
        """Whether pooled task ``p`` may be handed to a pool whose workers are all busy
        (``placement.LARGE_ROOT_BYTES``): asked only then, once per such hand-off."""
        if self.waits_for[p]:
            return True
        key = self.plan.cost_keys[p]
        return key is None or self.placement.root_may_go_ahead(self.engine._root_bytes.get(key))

    def _learn_root_bytes(self, p: int, value: Any) -> None:
        """Remember the size of root task ``p``'s value by its cost key, where its type
        declares ``nbytes`` (arrays, pandas Series). Asked of the type first: a
        DataFrame's ``__getattr__`` would look for a column of that name, at a cost of
        tenths of a millisecond."""
        key = self.plan.cost_keys[p]
        if key is not None and hasattr(type(value), "nbytes"):
            nbytes = value.nbytes
            if type(nbytes) is int:
                self.engine._root_bytes[key] = nbytes

    def _submit(self, p: int) -> None:
        plan, values = self.plan, self.values
        for cb in self.callbacks:
            cb.pretask(self.info, p)
        args = tuple(values[a] for a in plan.args[p])
        put = self.completions.put
        chain = self._chain_from(p) if self.fuse else None
        try:
            if chain is not None:
                future = self.pool.submit(call_chain, self._chain_steps(chain, args), self.stop)
            elif isinstance(self.pool, cf.ProcessPoolExecutor):  # large arrays via shared memory
                # Copies of arguments are shared by this run's tasks only (scope: the
                # run's own event): a later run may find the caller's arrays changed.
                future = submit_shared(self.pool, plan.kernels[p], args, self.stop)
            else:
                future = self.pool.submit(call_timed, plan.kernels[p], args)
        except Exception as exc:  # a closed or broken pool refuses new work
            if self.error is None:
                self.error = self._pool_error(p, exc, started=False)
            return
        self.in_flight += 1
        if chain is None:
            self.running[p] = future
            future.add_done_callback(lambda f, p=p: put((p, f)))
            return
        for q in chain:
            self.running[q] = future
            self.claimed[q] = 1
        future.add_done_callback(lambda f, c=tuple(chain): put((c, f)))

    def _chain_from(self, p: int) -> list[int] | None:
        """``p`` and the tasks that can only run right after it, one after another: each
        the single consumer of the one before, whose other arguments are all available
        already (literals, feeds). Running them in the same pool job saves a hand-off
        per task and keeps the worker on the branch it has in its caches; nothing could
        have run in parallel with them anyway. A fetched value ends a chain."""
        plan = self.plan
        children, keep, pending = plan.children, plan.keep, self.pending
        chain = [p]
        while True:
            nxt = children[p]
            if len(nxt) != 1 or keep[p]:
                break
            c = nxt[0]  # a child is always a computed task
            if pending[c] != 1:
                break
            chain.append(c)
            p = c
        return chain if len(chain) > 1 else None

    def _chain_steps(self, chain: list[int], first_args: tuple) -> list[tuple]:
        """``call_chain``'s steps: each task's kernel, its arguments, and where the value
        of the task before it goes among them."""
        plan, values = self.plan, self.values
        steps = [(plan.kernels[chain[0]], first_args, ())]
        for before, q in zip(chain, chain[1:]):
            args = plan.args[q]
            slots = tuple(i for i, a in enumerate(args) if a == before)
            steps.append((plan.kernels[q], tuple(None if a == before else values[a] for a in args),  # type: ignore[arg-type]
                          slots))
        return steps

    def _complete(self, p: Any, future: cf.Future) -> None:
        if type(p) is tuple:
            self._complete_chain(p, future)
            return
        self.in_flight -= 1
        try:
            value, start, end, worker = future.result()
        except BaseException as exc:  # noqa: BLE001 - reported as the node's error
            if self.error is None:
                self.error = self._pool_error(p, exc, started=True)
            return
        finally:
            del self.running[p]
        if self.error is None:
            try:
                self._finish(p, value, start, end, worker)
            except Exception as exc:  # a callback or the numerics check, not the node
                self.error = (-1, exc)

    def _complete_chain(self, chain: tuple[int, ...], future: cf.Future) -> None:
        """Finish the tasks of a chain that ran, in order; the first that raised is the
        run's error, and the tasks after it never ran."""
        self.in_flight -= 1
        try:
            results, failed, worker = future.result()
        except BaseException as exc:  # noqa: BLE001 - the pool itself failed
            if self.error is None:
                self.error = self._pool_error(chain[0], exc, started=True)
            for q in chain:
                self.running.pop(q, None)
            return
        for q in chain:
            del self.running[q]
        # A chain told to stop reports fewer results: its other tasks never ran, and
        # the run is ending with an error.
        for q, (value, start, end) in zip(chain, results):
            if self.error is None:
                self._finish(q, value, start, end, worker)
        if failed is not None and self.error is None:
            self.error = (chain[failed[0]], failed[1])

    def _pool_error(self, p: int, exc: BaseException, started: bool) -> tuple[int, BaseException]:
        """The error to report when task ``p`` failed in (or was refused by) the pool.

        A closed engine's pool refuses new tasks and cancels queued ones: that is the
        run's error, not the task's. A broken pool (a worker process died) fails every
        task in flight with the same exception, in no telling order, so all of them are
        named as suspects; a task the broken pool refused never ran and is not one.

        A task's own exception is the task's error (``p``); what the pool failed at (a
        dead worker, a task, argument or result a process pool could not send) is a
        ``NodeError`` naming the task, raised as the run's error (-1)."""
        if isinstance(exc, TaskRaised):  # a worker process sent the task's own exception
            original = exc.original()
            if isinstance(original, RemoteError):  # ...or only a summary: it could not come
                return -1, _pool_failure(self.plan, p, original)
            return p, original
        if self.engine._closed and (not started or isinstance(exc, cf.CancelledError)):
            return -1, RuntimeError(
                f"the engine was closed during the run ({len(self.plan.compute) - self.finished} "
                "nodes did not run)")
        suspects = list(self.running)
        if isinstance(exc, cf.BrokenExecutor) and suspects and (len(suspects) > 1 or not started):
            names = ", ".join(self.plan.describe(q) for q in suspects)
            broken = type(exc)(f"{exc} A worker died while {len(suspects)} node(s) were in "
                               f"flight: {names}; one of them took it down.")
            broken.__cause__ = exc
            return -1, _pool_failure(self.plan, p if started else suspects[0], broken)
        if isinstance(exc, cf.BrokenExecutor) or isinstance(self.pool, cf.ProcessPoolExecutor):
            return -1, _pool_failure(self.plan, p, exc)
        return p, exc

    # -- the driving loop --------------------------------------------------------------------
    def drive(self) -> None:
        failure: BaseException | None = None
        try:
            for cb in self.callbacks:
                cb.start(self.info)
            self._loop()
            if self.error is not None:
                # A task's own error (a nested run's included) is raised as is, with a
                # note naming the task; the run's errors (p < 0) are raised as is.
                p, exc = self.error
                if p >= 0:
                    add_node_note(exc, self.plan.names[p], self.plan.ops[p])
                raise exc
            if not self.inline:
                self.plan.learn(self.durations, self.engine._costs, self.engine.inline_threshold,
                                pooled=self.pooled_durations)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.stop.set()
            # A timeout or a cancel leaves tasks in flight: those not started yet never will.
            for future in self.running.values():
                future.cancel()
            _finish_callbacks(self.callbacks, self.info, failure)

    def _loop(self) -> None:
        plan = self.plan
        # Two tasks per worker in flight: a worker that finishes starts its next task at
        # once instead of idling until this thread has handled the completion. More
        # would decide priorities too early; a large root waits for a free worker
        # (``placement.LARGE_ROOT_BYTES``).
        workers = self.engine.workers
        depth = IN_FLIGHT_PER_WORKER * workers
        costly, may_go_ahead = self.costly, self._may_go_ahead
        completions = self.completions
        watched = self.deadline is not None or self.cancel is not None
        while True:
            if self.error is not None:
                self.stop.set()  # chains in flight start nothing more
            else:
                if watched:  # also between completions that keep arriving
                    self._check_deadline()
                while costly and self.in_flight < depth and self.error is None and \
                        (self.in_flight < workers or may_go_ahead(costly[0])):
                    try:
                        self._submit(heapq.heappop(costly))
                    except Exception as exc:  # a pretask callback
                        self.error = (-1, exc)
                if self.cheap and self.error is None:
                    try:
                        self._run_inline(heapq.heappop(self.cheap))
                    except Exception as exc:  # a callback or the numerics check
                        if self.error is None:
                            self.error = (-1, exc)
                    while self.in_flight:
                        try:
                            self._complete(*completions.get_nowait())
                        except queue.Empty:
                            break
                    continue
            if not self.in_flight:
                break
            wait = None
            if self.deadline is not None and self.error is None:
                wait = min(max(self.deadline - time.perf_counter(), 0.0), MAX_WAIT_SECONDS)
            if self.cancel is not None and self.error is None:
                # Look at the cancel flag between completions too: a run waiting on long
                # nodes stops within CANCEL_POLL_SECONDS of it being set.
                wait = CANCEL_POLL_SECONDS if wait is None else min(wait, CANCEL_POLL_SECONDS)
            try:
                item = completions.get(timeout=wait)
            except queue.Empty:  # the deadline or the cancel poll: checked at the top
                continue
            self._complete(*item)
        if self.error is None and self.finished < len(plan.compute):
            raise RuntimeError("the run stopped with tasks left unfinished (an engine bug)")

    def _check_deadline(self) -> None:
        """Raise if the run timed out or was cancelled (the nodes in flight, if any,
        finish in the background; their values are dropped). A run whose tasks have
        all finished is done, whatever the clock says."""
        if self.finished == len(self.plan.compute):
            return
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self._raise_timeout()
        if self.cancel is not None and self.cancel.is_set():
            unfinished = sum(1 for p in self.plan.compute if not self.done[p])
            raise RunCancelled(f"run cancelled with {unfinished} unfinished nodes")

    def _raise_timeout(self) -> None:
        """``TimeoutError`` naming the nodes that were running, then those not started."""
        plan, done = self.plan, self.done
        # A chain is one pool job: only its first unfinished task can be running.
        running, jobs = [], set()
        for p, future in self.running.items():
            if not done[p] and id(future) not in jobs:
                jobs.add(id(future))
                running.append(p)
        started = set(running)
        waiting = [p for p in plan.compute if not done[p] and p not in started]
        parts = []
        if running:
            parts.append(f"{len(running)} running: " + _names(plan, running))
        if waiting:
            parts.append(f"{len(waiting)} not started: " + _names(plan, waiting))
        seconds = self.deadline - self.started if self.deadline is not None else 0.0
        raise TimeoutError(f"run timed out after {seconds:.3g} s with "
                           f"{len(running) + len(waiting)} unfinished nodes; "
                           + "; ".join(parts))


def _names(plan: Plan, positions: list[int], shown: int = 10) -> str:
    text = ", ".join(plan.describe(p) for p in positions[:shown])
    return text + (f" and {len(positions) - shown} more" if len(positions) > shown else "")


def deadline_after(timeout: Any) -> float | None:
    """The ``time.perf_counter()`` deadline of a run given ``timeout=`` seconds, after
    checking it once for every executor: ``None`` or ``inf`` is no deadline; anything
    else must be a real, non-negative number of seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer,
                                                            np.floating)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    seconds = float(timeout)
    if seconds != seconds or seconds < 0:  # NaN or negative
        raise ValueError(f"timeout must be a non-negative number of seconds or None, "
                         f"got {timeout!r}")
    if seconds == float("inf"):
        return None
    return time.perf_counter() + seconds


def _ignore_outcome(future: asyncio.Future) -> None:
    """Retrieve the outcome of an abandoned run (asyncio logs one left unretrieved)."""
    if not future.cancelled():
        future.exception()


def _finish_callbacks(callbacks: tuple[Callback, ...], info: RunInfo,
                      error: BaseException | None) -> None:
    """Call every callback's ``finish``, even when one of them raises; re-raise the first."""
    first: BaseException | None = None
    for cb in callbacks:
        try:
            cb.finish(info, error)
        except BaseException as exc:  # noqa: BLE001
            first = first or exc
    if first is not None and error is None:
        raise first


def _pool_failure(plan: Plan, p: int, exc: BaseException) -> NodeError:
    """The ``NodeError`` for a pool that failed at task ``p`` (not the task itself)."""
    error = NodeError(plan.names[p], plan.ops[p], exc)
    error.__cause__ = exc
    return error


def _check_finite(plan: Plan, p: int, value: Any) -> None:
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "fc":
        if not np.isfinite(value).all():
            what = "NaN" if np.isnan(value).any() else "Inf"
            raise NumericsError(plan.names[p], plan.ops[p], what)


def _as_array(value: Any) -> Any:
    return np.asarray(value) if isinstance(value, np.generic) else value


def _flatten_fetches(fetches: Any) -> tuple[list, Any]:
    """The distinct fetch keys, and a function that puts values back in the fetches' shape."""
    if isinstance(fetches, dict):
        names = list(fetches)
        keys = list(dict.fromkeys(fetches[n] for n in names))
        where = {k: i for i, k in enumerate(keys)}
        return keys, lambda vals: {n: vals[where[fetches[n]]] for n in names}
    if isinstance(fetches, (list, tuple)):
        keys = list(dict.fromkeys(fetches))
        where = {k: i for i, k in enumerate(keys)}
        kind = type(fetches)
        return keys, lambda vals: kind(vals[where[f]] for f in fetches)
    return [fetches], lambda vals: vals[0]


def _require_distributed() -> None:
    import importlib.util

    try:
        found = importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):  # a module blocked or half-imported
        found = False
    if not found:
        raise ImportError("executor 'dask' needs dask.distributed: "
                          "pip install 'dataflow-graph-engine[distributed]'")


def _shutdown_pools(owned: dict) -> None:
    """Shut down the pools an engine started, every one of them even if one fails.

    An engine can be closed, or collected, on a thread of one of its own pools (a node
    that closes it; an unclosed engine whose last reference dies in a coordinator):
    that thread cannot wait for its own pool, so the shutdown moves to a new thread."""
    if any(runs_on_current_thread(pool) for pool in list(owned.values())):
        threading.Thread(target=_shutdown_pools, args=(owned,),
                         name="dataflow-shutdown").start()
        return
    first: BaseException | None = None
    for name in list(owned):
        pool = owned.pop(name, None)
        if pool is None:  # another thread shut it down meanwhile
            continue
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except BaseException as exc:  # noqa: BLE001 - the others are still shut down
            first = first or exc
    if first is not None:
        raise first


# -- the shared default engines -------------------------------------------------------------

_default_engines: dict[tuple, Engine] = {}
_default_engines_lock = threading.Lock()


def default_engine(executor: Any = "threads", workers: int | None = None, *,
                   check_numerics: bool = False) -> Engine:
    """The engine that ``scheduler.run`` and ``scheduler.get`` use.

    One per executor name and worker count: created on first use, then shared
    (thread-safe), so that its pool and what it learned about task costs carry over
    from call to call, as dask keeps one default thread pool. Closed at interpreter
    exit, or by :func:`close_default_engines`. An executor object gets an engine of its
    own per call (the object's owner decides its life).

    Parameters
    ----------
    executor : str or concurrent.futures.Executor, default "threads"
        As for :class:`Engine`.
    workers : int, optional
        Pool size (``None``: the executor's default).
    check_numerics : bool, default False
        As for :class:`Engine`.

    Returns
    -------
    Engine
    """
    if not isinstance(executor, str):
        return Engine(executor, workers, check_numerics=check_numerics)
    key = (executor, workers, check_numerics)
    with _default_engines_lock:
        engine = _default_engines.get(key)
        if engine is None or engine._closed:
            engine = _default_engines[key] = Engine(executor, workers,
                                                    check_numerics=check_numerics)
        return engine


def close_default_engines() -> None:
    """Close the shared default engines (their pools, processes and clusters). The next
    ``scheduler.run`` or ``scheduler.get`` starts new ones."""
    with _default_engines_lock:
        engines = list(_default_engines.values())
        _default_engines.clear()
    for engine in engines:
        engine.close()


def _forget_default_engines_in_child() -> None:
    # A forked child inherits the parent's engines without their threads: start afresh.
    global _default_engines_lock
    _default_engines.clear()
    _default_engines_lock = threading.Lock()


atexit.register(close_default_engines)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_default_engines_in_child)


def run(fetches: Any, feeds: Mapping | None = None, *, executor: Any = "threads",
        workers: int | None = None, timeout: float | None = None,
        callbacks: Iterable[Callback] = (), check_numerics: bool = False) -> Any:
    """Compute ``fetches`` on the shared default engine for ``executor`` and ``workers``.

    ``default_engine(executor, workers).run(fetches, feeds)``: the engine's pool and
    learned costs carry over between calls (see :func:`default_engine`); its plan is
    compiled per call and not kept, so that it keeps no graph alive (keep an
    :class:`Engine` to run a graph many times); an executor object gets an engine of its
    own, closed afterwards.

    Parameters
    ----------
    fetches : node, list/tuple or dict of nodes
        What to compute.
    feeds : mapping, optional
        Values of placeholders, keyed by node.
    executor : str or concurrent.futures.Executor, default "threads"
        As for :class:`Engine`.
    workers : int, optional
        Pool size.
    timeout : float, optional
        Seconds the run may take.
    callbacks : iterable of Callback, optional
        Hooks for the run.
    check_numerics : bool, default False
        Raise ``NumericsError`` on the first NaN or Inf.

    Returns
    -------
    object
        The values in the structure of ``fetches``.
    """
    engine = default_engine(executor, workers, check_numerics=check_numerics)
    with _closing_if_own(engine, executor):
        # One-shot: the plan is not kept (it would keep the graph's nodes alive in the
        # shared engine); the pool and the learned costs are.
        return engine._run(fetches, feeds, timeout, callbacks, None, keep_plan=False)


def get(tasks: Mapping, keys: Any, cache: Any = None, num_workers: int | None = None,
        pool: Any = None, *, executor: Any = "threads", workers: int | None = None,
        feeds: Mapping | None = None, timeout: float | None = None,
        callbacks: Iterable[Any] = (), check_numerics: bool = False,
        **dask_options: Any) -> Any:
    """Run a task graph ``{key: (callable, *args)}`` in dask's conventions.

    A drop-in for ``dask.threaded.get``: ``dask.compute(x, scheduler=scheduler.get)``.
    It runs on the shared default engine for ``executor`` and ``workers`` (see
    :func:`default_engine`), so pools and learned costs carry over between calls. dask's
    active callbacks (``dask.diagnostics``) are honoured as dask does
    (``scheduler/dask_compat.py``). A task's own exception is raised as is, with a note
    naming it.

    Parameters
    ----------
    tasks : mapping
        The task graph (see :meth:`Engine.get`).
    keys : hashable or nested list of hashable
        What to compute.
    cache : dict, optional
        Known values by key (they are not computed); it receives the requested ones.
    num_workers : int, optional
        The pool size (dask's name; ``workers`` is this package's).
    pool : concurrent.futures.Executor or multiprocessing.pool.ThreadPool, optional
        A pool to run on instead of the default engine's.
    executor : str or concurrent.futures.Executor, default "threads"
        As for :class:`Engine`.
    workers : int, optional
        Pool size.
    feeds : mapping, optional
        Values for keys of ``tasks``, which then do not run.
    timeout : float, optional
        Seconds the run may take.
    callbacks : iterable of Callback or dask callbacks, optional
        Hooks for the run.
    check_numerics : bool, default False
        Raise ``NumericsError`` on the first NaN or Inf.
    **dask_options
        dask's other scheduler options, accepted and ignored. Unset, ``num_workers``,
        ``pool`` and ``cache`` come from ``dask.config``.

    Returns
    -------
    object
        The values of ``keys``, in the same nesting.

    Examples
    --------
    >>> import operator, scheduler
    >>> scheduler.get({"a": 1, "b": (operator.add, "a", 10)}, "b")
    11
    """
    call = DaskGet(tasks, keys, cache=cache, num_workers=num_workers, pool=pool,
                   executor=executor, workers=workers, feeds=feeds, callbacks=callbacks)
    engine = default_engine(call.executor, call.workers, check_numerics=check_numerics)
    with _closing_if_own(engine, call.executor):
        return call.run(lambda tasks, feeds, cbs: engine.get(tasks, keys, feeds=feeds,
                                                             timeout=timeout, callbacks=cbs))


@contextlib.contextmanager
def _closing_if_own(engine: Engine, executor: Any) -> Any:
    """Close ``engine`` afterwards unless it is a shared default engine."""
    try:
        yield
    finally:
        if not isinstance(executor, str):
            engine.close()
