"""dask's scheduler contract for :func:`scheduler.get`: the options of a dask ``get``
function, dask's callbacks (and so ``dask.diagnostics``), and their nesting rules.

This module owns what makes ``scheduler.get`` a drop-in for ``dask.threaded.get``
(``dask/threaded.py`` and ``dask/local.py`` are the reference):

- **Options.** ``num_workers`` sizes the pool; ``pool`` is a
  ``concurrent.futures.Executor`` (used, never shut down) or a ``multiprocessing.pool``
  pool such as ``ThreadPool`` (wrapped as an executor, :class:`PoolExecutor`);
  ``cache`` is dask's scheduler cache: a dict of values already known, used instead
  of computing those keys (also for keys the graph lacks); as in dask, it is the run's
  ``state["cache"]``: data and computed values go in as they become available, and
  leave once released, so the requested values are there at the end.
  When not passed, ``pool``, ``num_workers`` and ``cache`` come from ``dask.config``.
- **Callbacks.** ``dask.callbacks.Callback`` objects, and dask's 5-tuples of hooks,
  passed as ``callbacks=`` or active globally (``with ProgressBar():``,
  ``Callback.register()``): ``start(dsk)`` before anything else, ``start_state(dsk,
  state)`` once the run's plan is known, ``pretask(key, dsk, state)`` and ``posttask(key,
  result, dsk, state, worker_id)`` around every task, and ``finish(dsk, state,
  failed)``, which runs for every callback whose ``start`` ran, even when a task or a
  callback raised. ``state`` has the shape of dask's scheduler state (``ready``,
  ``waiting``, ``running``, ``finished``, ``released``, ``cache``, ``dependencies``,
  ``dependents``, ``waiting_data``) and is kept up to date from the engine's own
  :class:`~scheduler.callbacks.Callback` hooks (:class:`DaskCallbacks`), so
  ``ProgressBar``, ``Profiler``, ``ResourceProfiler`` and ``CacheProfiler`` work.
- **Nesting**, as dask's ``local_callbacks``: without dask callbacks passed to the
  call, the globally active ones are used and ``Callback.active`` is empty while the
  tasks run (a nested ``compute`` inside a task does not report to them), then
  restored; callbacks passed to the call leave ``Callback.active`` alone.

dask is never imported here: its callbacks and config can only be in use once the
program has imported dask, so this module looks for it in ``sys.modules``, and a call
that uses none of the above costs a few attribute lookups.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from .callbacks import Callback, RunInfo, TaskRecord
from .taskgraph import as_task_mapping

__all__ = ["DaskCallbacks", "DaskGet", "PoolExecutor"]

#: dask's hooks, in the order of a callback tuple
_HOOKS = ("_start", "_start_state", "_pretask", "_posttask", "_finish")


class PoolExecutor(cf.Executor):
    """A ``multiprocessing.pool.Pool`` (a ``ThreadPool`` above all) seen as a
    ``concurrent.futures.Executor``, as dask's ``MultiprocessingPoolExecutor`` does.
    The pool stays the caller's: shutting this down leaves it running."""

    def __init__(self, pool: Any):
        self.pool = pool
        self._max_workers = max(1, int(getattr(pool, "_processes", 1) or 1))

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        self.pool.apply_async(fn, args, kwargs, lambda v: _settle(future.set_result, v),
                              lambda e: _settle(future.set_exception, e))
        return future


def _settle(setter: Callable[[Any], None], value: Any) -> None:
    try:
        setter(value)
    except cf.InvalidStateError:  # cancelled meanwhile (the run ended): nobody waits
        pass


class DaskGet:
    """One call of :func:`scheduler.get`, with dask's options resolved.

    ``executor``, ``workers``, ``tasks``, ``feeds`` and ``callbacks`` are what the
    engine gets; :meth:`run` wraps the engine's run in dask's callback protocol and
    fills ``cache``."""

    __slots__ = ("executor", "workers", "tasks", "feeds", "callbacks", "keys", "cache",
                 "dask_callbacks", "use_global")

    def __init__(self, tasks: Any, keys: Any, *, cache: Any = None, num_workers: int | None = None,
                 pool: Any = None, executor: Any = "threads", workers: int | None = None,
                 feeds: Mapping | None = None, callbacks: Iterable | None = ()):
        config = _dask_config()
        if config is not None:
            if pool is None and isinstance(executor, str) and executor == "threads":
                pool = config.get("pool", None)
            if num_workers is None:
                num_workers = config.get("num_workers", None)
            if cache is None:
                cache = config.get("cache", None)
        if pool is not None:
            if not (isinstance(executor, str) and executor == "threads"):
                raise ValueError("give either executor= or pool=, not both")
            executor = _as_executor(pool)
            num_workers = None  # the pool's size decides, as in dask
        self.executor = executor
        self.workers = workers or num_workers
        self.keys = keys
        self.cache = cache
        engine_cbs: list[Callback] = []
        dask_cbs: list[tuple] = []
        given = False  # dask callbacks were passed to this call
        for cb in callbacks or ():
            if isinstance(cb, Callback):
                engine_cbs.append(cb)
                continue
            hooks = _dask_hooks(cb)
            if hooks is None:
                raise TypeError(f"callbacks must be scheduler.Callback or dask callbacks "
                                f"(dask.callbacks.Callback or a tuple of hooks), got {cb!r}")
            given = True
            dask_cbs.append(hooks)
        self.use_global = not given and _dask_callback_class() is not None
        self.dask_callbacks = dask_cbs
        self.callbacks = tuple(engine_cbs)
        if cache:
            # Cached values stand for their keys (also keys the graph lacks), as in dask.
            tasks = dict(as_task_mapping(tasks))
            fed = dict(cache)
            for key in fed:
                if key not in tasks:
                    tasks[key] = None  # a placeholder, fed below
            if feeds:
                fed.update(feeds)
            feeds = fed
        self.tasks = tasks
        self.feeds = feeds

    def run(self, compute: Callable[[Any, Mapping | None, tuple], Any]) -> Any:
        """``compute(tasks, feeds, engine callbacks)`` inside dask's callback protocol;
        the requested values go into ``cache`` (if one was given)."""
        if (self.dask_callbacks or self.cache is not None
                or (self.use_global and _dask_callback_class().active)):
            result = self._run_with_callbacks(compute)
        else:  # no dask callback anywhere: Callback.active is left as it is (empty)
            return compute(self.tasks, self.feeds, self.callbacks)
        if self.cache is not None:  # a requested key that nothing reached (no task ran)
            _store(self.cache, self.keys, result)
        return result

    def _run_with_callbacks(self, compute: Callable) -> Any:
        hooks = list(self.dask_callbacks)
        saved = None
        if self.use_global:
            # dask's local_callbacks: the globally active callbacks serve this run only
            # (the outermost scheduler); tasks that compute something see none.
            callback_class = _dask_callback_class()
            saved = callback_class.active
            callback_class.active = set()
            hooks = [tuple(h) + (None,) * (5 - len(h)) for h in saved] + hooks
        try:
            dsk = _as_dask_graph(as_task_mapping(self.tasks))
            adapter = DaskCallbacks(hooks, dsk, self.cache)
            started: list[tuple] = []
            failed = True
            try:
                for h in hooks:
                    if h[0]:
                        h[0](dsk)
                    started.append(h)
                result = compute(self.tasks, self.feeds, self.callbacks + (adapter,))
                failed = False
                return result
            finally:
                _finish_all(started, dsk, adapter.state, failed)
        finally:
            if saved is not None:
                _dask_callback_class().active = saved


def _finish_all(started: list[tuple], dsk: Mapping, state: dict, failed: bool) -> None:
    """Every started callback's ``finish``, even when one raises; the first error is
    re-raised when nothing else is on its way out."""
    first: BaseException | None = None
    for h in started:
        if h[4]:
            try:
                h[4](dsk, state, failed)
            except BaseException as exc:  # noqa: BLE001 - the first is re-raised
                first = first or exc
    if first is not None and not failed:
        raise first


class DaskCallbacks(Callback):
    """The engine's callback that drives dask's ``start_state``, ``pretask`` and
    ``posttask`` hooks and keeps ``state`` in dask's shape (``dask/local.py``): a key is
    ``waiting`` for its computed parents, ``ready``, ``running``, then ``finished``;
    a value is ``released`` from ``state["cache"]`` once all its dependents finished,
    unless it was requested. ``ready`` is a set here (dask keeps a list in its own
    priority order; the engine has its own)."""

    def __init__(self, hooks: list[tuple], dsk: Mapping, cache: Any = None):
        self.dsk = dsk
        #: the caller's cache (``cache=``), kept as the state's cache; else a new dict
        self.cache = cache
        self.start_states = [h[1] for h in hooks if h[1]]
        self.pretasks = [h[2] for h in hooks if h[2]]
        self.posttasks = [h[3] for h in hooks if h[3]]
        #: dask's state of the run; empty until the engine starts the run
        self.state: dict = {}
        self._wanted: set = set()

    def start(self, run: RunInfo) -> None:
        plan = run.plan
        keys, parents, children = plan.keys, plan.parents, plan.children
        dependencies: dict = {}
        dependents: dict = {}
        waiting_data: dict = {}
        for p, key in enumerate(keys):
            dependencies[key] = {keys[q] for q in parents[p]}
            after = {keys[c] for c in children[p]}
            dependents[key] = after
            waiting_data[key] = set(after)
        waiting: dict = {}
        ready: set = set()
        is_source = plan.is_source
        for p in plan.compute:
            pending = {keys[q] for q in parents[p] if not is_source[q]}
            if pending:
                waiting[keys[p]] = pending
            else:
                ready.add(keys[p])
        self._wanted = {keys[p] for p in plan.fetch_positions}
        cache = {} if self.cache is None else self.cache
        fed = {p for p, _, _ in plan.feed_slots}
        for p, key in enumerate(keys):
            if is_source[p] and p not in fed and key not in cache:
                cache[key] = plan.template[p]  # data of the graph, as dask starts its cache
        self.state = {
            "dependencies": dependencies, "dependents": dependents, "waiting": waiting,
            "waiting_data": waiting_data, "cache": cache, "ready": ready, "running": set(),
            "finished": set(), "released": set(),
        }
        for f in self.start_states:
            f(self.dsk, self.state)

    def pretask(self, run: RunInfo, position: int) -> None:
        key = run.plan.keys[position]
        state = self.state
        state["ready"].discard(key)
        state["running"].add(key)
        for f in self.pretasks:
            f(key, self.dsk, state)

    def posttask(self, run: RunInfo, record: TaskRecord) -> None:
        key, value = record.key, record.value
        state = self.state
        state["cache"][key] = value
        self._finish_task(key)
        for f in self.posttasks:
            f(key, value, self.dsk, state, record.worker)

    def _finish_task(self, key: Hashable) -> None:
        """dask's ``finish_task``: wake the dependents, release dead values."""
        state = self.state
        waiting, ready = state["waiting"], state["ready"]
        for child in state["dependents"].get(key, ()):
            left = waiting.get(child)
            if left is not None:
                left.discard(key)
                if not left:
                    del waiting[child]
                    ready.add(child)
        waiting_data, cache, released = state["waiting_data"], state["cache"], state["released"]
        for parent in state["dependencies"].get(key, ()):
            left = waiting_data.get(parent)
            if left is None:
                continue
            left.discard(key)
            if not left and parent not in self._wanted:
                del waiting_data[parent]
                if parent in cache:
                    del cache[parent]
                released.add(parent)
        state["finished"].add(key)
        state["running"].discard(key)


# -- helpers ---------------------------------------------------------------------------
def _dask_config() -> Any:
    """``dask.config``, if dask is loaded (never imported here)."""
    dask = sys.modules.get("dask")
    return getattr(dask, "config", None) if dask is not None else None


def _dask_callback_class() -> Any:
    module = sys.modules.get("dask.callbacks")
    return getattr(module, "Callback", None) if module is not None else None


def _dask_hooks(cb: Any) -> tuple | None:
    """A dask callback as dask's 5-tuple of hooks (None: not a dask callback)."""
    callback_class = _dask_callback_class()
    if callback_class is not None and isinstance(cb, callback_class):
        return tuple(cb._callback)
    if isinstance(cb, tuple) and len(cb) <= 5 and all(h is None or callable(h) for h in cb):
        return tuple(cb) + (None,) * (5 - len(cb))
    return None


def _as_executor(pool: Any) -> Any:
    import multiprocessing.pool

    if isinstance(pool, multiprocessing.pool.Pool):
        return PoolExecutor(pool)
    if callable(getattr(pool, "submit", None)):
        return pool
    raise TypeError("pool must be a concurrent.futures.Executor or a multiprocessing.pool "
                    f"pool, got {pool!r}")


def _as_dask_graph(dsk: Mapping) -> Mapping:
    """The graph as dask's callbacks see it in dask's own schedulers: every entry a
    ``dask._task_spec`` node (``dsk[key]()`` computes a data entry). Only what the
    callbacks see; the engine runs the graph as given."""
    try:
        from dask._task_spec import convert_legacy_graph
    except ImportError:  # an older dask: its callbacks see plain entries
        return dsk
    return convert_legacy_graph(dsk)


def _store(cache: Any, keys: Any, result: Any) -> None:
    """Put the requested values into ``cache``: ``keys`` is one key or a nested list of
    them, ``result`` has the same structure (tuples for lists)."""
    stack = [(keys, result)]
    while stack:
        k, v = stack.pop()
        if isinstance(k, list):
            stack.extend(zip(k, v))
        else:
            cache[k] = v
