"""Running plans on a dask.distributed cluster: ``Engine("dask")`` and ``DaskExecutor``.

This module owns the translation of a :class:`~scheduler.plan.Plan` into ONE dask graph
and the round trip of that graph through a ``distributed.Client``. dask.distributed
costs about a millisecond per task and a network round trip per request, so the
engine's per-node protocol (submit a node, wait, submit its children) would be slow
here. Instead :meth:`DaskExecutor.run_plan` sends the whole plan at once:

1. **Fusion** (once per plan, cached): a linear chain of nodes becomes one dask task.
   A node joins its parent's task when that parent is its only computed parent, it is
   the parent's only consumer, and the parent is not fetched. Such a node could never
   run in parallel with anything in the chain, so fusion costs no parallelism; fetched
   nodes always end a task, so they are task outputs.
2. **Inputs**: literal and fed values of at least ``scatter_threshold`` bytes are
   scattered to the cluster in one call; smaller ones are embedded in the tasks.
3. **One submission**: the graph goes out in one ``client.get(..., sync=False)``, the
   fetched tasks' results come back in one gather, and dask's own scheduler frees
   intermediate values as their consumers finish.

Errors: a kernel that raises inside a fused task is reported as ``_TaskFailed`` with
the node's plan position, which the client turns back into the kernel's own exception
with a note naming the node and op; a worker that died is a ``NodeError`` naming the
nodes of its task. What a worker sends back must pickle, or the error never arrives
and the run hangs: ``errors.sendable`` cuts its tracebacks short (a ``RecursionError``
brings a thousand frames) and replaces an exception that still does not survive a
pickle round trip by a ``RemoteError`` (then a ``NodeError``: the task's own exception
could not come back). Stopping: when
a run fails, times out or is cancelled (``execute(cancel=...)``, a cancelled
``run_async``), its futures are cancelled, so no task of it starts, and every worker
is told the run stopped, so that a fused task in progress starts no further node.
Profiling: when callbacks are
registered (or a timeout is set), each task records ``perf_counter`` timings of its
nodes on the worker; after the run they are collected with one ``client.run`` and fed
to the callbacks as ``TaskRecord``s whose ``worker`` is the dask worker's address.
``perf_counter`` is CLOCK_MONOTONIC on Linux, shared by every process of a machine, so
the times of a local cluster line up with the driver's; on a multi-machine cluster
they are only comparable within one worker.

dask is optional: ``import scheduler`` never imports this module; asking for the
``"dask"`` executor without dask.distributed installed raises ``ImportError`` with the
install command. Workers of a remote cluster need ``scheduler`` (this package)
installed, since the fused tasks refer to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np

from .callbacks import Callback, RunInfo, TaskRecord
from .errors import (
    NodeError,
    NumericsError,
    RemoteError,
    RunCancelled,
    SchedulerError,
    add_node_note,
    sendable,
    unsendable,
)
from .executors import default_workers
from .plan import Plan

_INSTALL = "pip install 'dataflow-graph-engine[distributed]'"

try:
    import distributed
    from dask._task_spec import Task, TaskRef
    from distributed.protocol import pickle as _wire  # how workers send errors back
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"the dask executor needs dask.distributed (dask 2024.12 or later): {_INSTALL}"
    ) from exc
try:  # wrapping the graph ourselves, with its token given, saves tokenizing it per run
    from dask._expr import LLGExpr
except ImportError:  # pragma: no cover - older dask: client.get wraps (and tokenizes) it
    LLGExpr = None  # type: ignore[misc,assignment]


__all__ = ["DaskExecutor", "RemoteError", "RemoteValue"]

#: literal and fed values at least this large (in bytes) are scattered, not embedded
DEFAULT_SCATTER_THRESHOLD = 64 * 1024
#: how often a cancellable run waiting on the cluster looks at its cancel flag (seconds)
CANCEL_POLL_SECONDS = 0.02


class RemoteValue:
    """Stands in, in a ``TaskRecord``, for a value that stayed on the cluster: its
    size, shape and dtype as measured on the worker (fetched values come back whole)."""

    __slots__ = ("nbytes", "shape", "dtype", "type_name")

    def __init__(self, nbytes: int, shape: tuple | None, dtype: str | None, type_name: str):
        self.nbytes = nbytes
        self.shape = shape
        self.dtype = dtype
        self.type_name = type_name

    def __repr__(self) -> str:
        what = self.type_name
        if self.shape is not None:
            what = f"{what}{self.shape} {self.dtype}"
        return f"<RemoteValue {what}, {self.nbytes} bytes>"


# --------------------------------------------------------------------------- worker side

# Records of the runs that asked for them, per run token, until the client collects
# them. Bounded, so that the records of an abandoned run (a timeout) cannot pile up.
_RECORDS: dict[str, list] = {}
_RECORDS_LOCK = threading.Lock()  # a worker may run several tasks at once
_MAX_PENDING_RUNS = 256


def _store_records(token: str, entries: list) -> None:
    with _RECORDS_LOCK:
        bucket = _RECORDS.get(token)
        if bucket is None:
            while len(_RECORDS) >= _MAX_PENDING_RUNS:
                _RECORDS.pop(next(iter(_RECORDS)))
            bucket = _RECORDS[token] = []
        bucket.extend(entries)


def _pop_records(token: str) -> list:
    """Run on every worker by ``client.run`` after a run: its records, now forgotten."""
    with _RECORDS_LOCK:
        return _RECORDS.pop(token, [])


# Tokens of the runs that stopped (failed, timed out, cancelled): a fused task of one
# of them starts no further node. Bounded like the records.
_STOPPED: dict[str, None] = {}


def _stop_run(token: str) -> None:
    """Run on every worker by ``client.run`` when a run stops early."""
    with _RECORDS_LOCK:
        while len(_STOPPED) >= _MAX_PENDING_RUNS:
            _STOPPED.pop(next(iter(_STOPPED)))
        _STOPPED[token] = None


def _worker_address() -> str:
    try:
        return distributed.get_worker().address
    except ValueError:  # not inside a worker (a task run by hand)
        return threading.current_thread().name


def _describe_value(value: Any) -> tuple[int, tuple | None, str | None, str]:
    """(nbytes, shape, dtype, type name) of a value that stays on the worker: the
    ``nbytes`` attribute where there is one, else ``sys.getsizeof`` (as the profiler)."""
    nbytes = getattr(value, "nbytes", None)
    if not isinstance(nbytes, int):
        try:
            nbytes = sys.getsizeof(value)
        except TypeError:
            nbytes = 0
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return (int(nbytes), tuple(shape) if isinstance(shape, tuple) else None,
            None if dtype is None else str(dtype), type(value).__name__)


def _nonfinite(value: Any) -> str | None:
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "fc":
        if not np.isfinite(value).all():
            return "NaN" if np.isnan(value).any() else "Inf"
    return None


class _TaskFailed(Exception):
    """A node of a fused task raised (or, with ``nonfinite``, produced NaN/Inf).

    The args are plain data so that it pickles back to the client: (position, name,
    op, the original exception made sendable, or None, "NaN"/"Inf" or None)."""

    def __str__(self) -> str:
        _, name, op, error, nonfinite = self.args
        if nonfinite is not None:
            return f"node {name!r} (op {op}) produced {nonfinite}"
        return f"node {name!r} (op {op}) failed: {type(error).__name__}: {error}"


class _Chain:
    """The callable of one dask task: a linear chain of plan nodes, run in order.

    ``steps`` holds ``(position, name, op, kernel, refs)`` per node; a ref ``r >= 0`` is
    the task's ``r``-th input, ``-1`` the value of the previous node of the chain.
    Called as ``chain(run, record, *inputs)``: ``run`` is the run's token, ``record``
    whether to record timings under it. Before each node the chain checks that the run
    has not stopped. A chain whose value goes back to the client (``sent_back``) checks
    that it can: a value that does not survive a pickle round trip is the last node's
    ``NodeError``, not a bare serialization error naming no node."""

    __slots__ = ("steps", "check_numerics", "sent_back")

    def __init__(self, steps: tuple, check_numerics: bool, sent_back: bool = False):
        self.steps = steps
        self.check_numerics = check_numerics
        self.sent_back = sent_back

    def __reduce__(self):
        return _Chain, (self.steps, self.check_numerics, self.sent_back)

    def __repr__(self) -> str:
        names = [s[1] for s in self.steps]
        return f"<chain {names[0]!r}{f' .. {names[-1]!r}' if len(names) > 1 else ''}>"

    def __call__(self, run: str, record: bool, *inputs: Any) -> Any:
        previous: Any = None
        entries: list | None = [] if record else None
        clock = time.perf_counter
        try:
            for p, name, op, kernel, refs in self.steps:
                if run in _STOPPED:
                    raise RunCancelled(f"the run stopped before node {name!r}")
                args = [previous if r < 0 else inputs[r] for r in refs]
                start = clock() if entries is not None else 0.0
                failure = None
                try:
                    value = kernel(*args)
                except Exception as exc:
                    failure = sendable(exc, _wire.dumps, _wire.loads)
                if failure is not None:  # raised out here: no context refers to ``exc``
                    raise _TaskFailed(p, name, op, failure, None).with_traceback(
                        failure.__traceback__)
                end = clock() if entries is not None else 0.0
                if self.check_numerics:
                    what = _nonfinite(value)
                    if what is not None:
                        raise _TaskFailed(p, name, op, None, what)
                if entries is not None:
                    entries.append((p, start, end, *_describe_value(value)))
                previous = value
                args = value = None  # type: ignore[assignment]  # let the chain's intermediate values die early
        finally:
            if entries:
                worker = _worker_address()
                _store_records(run, [(*e[:3], worker, *e[3:]) for e in entries])
        if self.sent_back:
            problem = unsendable(previous, _wire.dumps, _wire.loads)
            if problem is not None:
                p, name, op = self.steps[-1][:3]
                error = NodeError(name, op, problem)
                error.__cause__ = problem
                raise _TaskFailed(p, name, op, error, None)
        return previous


# --------------------------------------------------------------------------- layout


class _Layout:
    """A plan cut into chains: which nodes each dask task runs and what it takes."""

    __slots__ = ("chains", "members", "inputs", "outputs", "sources", "task_of", "labels")

    def __init__(self, plan: Plan, check_numerics: bool):
        task_of = [-1] * len(plan)
        members: list[list[int]] = []
        is_source, parents, children, keep = plan.is_source, plan.parents, plan.children, plan.keep
        for p in plan.compute:
            computed = [q for q in parents[p] if not is_source[q]]
            if len(computed) == 1:
                q = computed[0]
                if len(children[q]) == 1 and not keep[q]:
                    task_of[p] = task_of[q]
                    members[task_of[p]].append(p)
                    continue
            task_of[p] = len(members)
            members.append([p])

        chains: list[_Chain] = []
        #: per task, its inputs: ("source", position) or ("task", task index)
        inputs: list[tuple[tuple[str, int], ...]] = []
        for nodes in members:
            slot: dict[tuple[str, int], int] = {}
            steps = []
            for i, p in enumerate(nodes):
                refs = []
                for a in plan.args[p]:
                    if i > 0 and a == nodes[i - 1]:
                        refs.append(-1)
                        continue
                    ref = ("source", a) if is_source[a] else ("task", task_of[a])
                    if ref not in slot:
                        slot[ref] = len(slot)
                    refs.append(slot[ref])
                steps.append((p, plan.names[p], plan.ops[p], plan.kernels[p], tuple(refs)))
            chains.append(_Chain(tuple(steps), check_numerics))
            inputs.append(tuple(slot))
        self.chains = chains
        self.members = members
        self.inputs = inputs
        self.task_of = task_of
        fetched = dict.fromkeys(p for p in plan.fetch_positions if not is_source[p])
        #: the tasks whose results come back to the client, in fetch order
        self.outputs: list[int] = list(dict.fromkeys(task_of[p] for p in fetched))
        for t in self.outputs:
            chains[t].sent_back = True
        self.sources: list[int] = list(dict.fromkeys(
            x for ins in inputs for kind, x in ins if kind == "source"))
        #: a readable prefix per task for dask's keys (dashboards group by it)
        self.labels = [_label(plan.ops[nodes[-1]]) for nodes in members]


def _label(op: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in op)
    return cleaned or "task"


# --------------------------------------------------------------------------- executor


async def _result_of(future: Any) -> Any:
    return await future._result()


class DaskExecutor(cf.Executor):
    """A ``concurrent.futures``-style executor on a dask.distributed cluster, which the
    engine also hands whole plans to (:meth:`run_plan`).

    - neither ``address`` nor ``client``: starts and owns a ``LocalCluster`` on
      loopback (127.0.0.1, dashboard off) with ``n_workers`` workers (default: the
      number of cores) of ``threads_per_worker`` threads, in processes or not;
      with ``security`` the cluster speaks TLS.
    - ``address`` (and ``security`` for a TLS cluster): connects a client it owns.
    - ``client``: uses that client and owns nothing.

    ``shutdown`` closes what this executor owns. ``scatter_threshold`` is the size in
    bytes from which literal and fed values are scattered instead of embedded. Worker
    processes are started with multiprocessing's spawn, so a script that starts a local
    cluster needs the ``if __name__ == "__main__":`` guard.

    Parameters
    ----------
    address : str, optional
        The scheduler address of an existing cluster to connect to.
    client : distributed.Client, optional
        A client to use (not closed by :meth:`shutdown`).
    security : distributed.security.Security, optional
        TLS settings, for the local cluster or the connection.
    n_workers : int, optional
        Workers of the local cluster; the number of cores by default.
    processes : bool, default True
        Local workers in processes (else threads of this process).
    threads_per_worker : int, default 1
        Threads of each local worker.
    scatter_threshold : int
        Size in bytes from which literal and fed values are scattered.
    """

    def __init__(self, address: str | None = None, client: Any = None, security: Any = None,
                 n_workers: int | None = None, processes: bool = True,
                 threads_per_worker: int = 1, *,
                 scatter_threshold: int = DEFAULT_SCATTER_THRESHOLD):
        if address is not None and client is not None:
            raise ValueError("give either address or client, not both")
        self.scatter_threshold = int(scatter_threshold)
        self._owns_client = client is None
        self.cluster: Any = None
        self._layouts: WeakKeyDictionary[Plan, dict[bool, _Layout]] = WeakKeyDictionary()
        self._broken = False
        self._closed = False
        if client is not None:
            self.client = client
        elif address is not None:
            self.client = distributed.Client(address, security=security, set_as_default=False)
        else:
            kwargs: dict[str, Any] = dict(
                n_workers=n_workers or default_workers(), threads_per_worker=threads_per_worker,
                processes=processes, host="127.0.0.1", dashboard_address=None,
                protocol="tls://" if security is not None else "tcp://",
                # no dashboard; its health/metrics server on any free loopback port,
                # not on 8787 (which another cluster may hold)
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            )
            if security is not None:
                kwargs["security"] = security
            self.cluster = distributed.LocalCluster(**kwargs)
            try:
                self.client = distributed.Client(self.cluster, set_as_default=False)
            except BaseException:
                self.cluster.close()
                raise
        if self.cluster is not None:
            self._max_workers = (n_workers or default_workers()) * threads_per_worker
        else:
            self._max_workers = max(1, sum(self.client.nthreads().values()))

    def __repr__(self) -> str:
        return f"<DaskExecutor {self.client.scheduler.address} threads={self._max_workers}>"

    # -- concurrent.futures.Executor ----------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` on the cluster.

        Parameters
        ----------
        fn : callable
            The function (picklable, importable by the workers).
        *args, **kwargs
            Its arguments.

        Returns
        -------
        concurrent.futures.Future
        """
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future = self.client.submit(fn, *args, pure=False, **kwargs)
        return asyncio.run_coroutine_threadsafe(_result_of(future), self.client.loop.asyncio_loop)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Close the client and the cluster if this executor started them.

        Parameters
        ----------
        wait : bool, default True
            Accepted for ``concurrent.futures`` compatibility; closing always waits.
        cancel_futures : bool, default False
            Accepted for ``concurrent.futures`` compatibility.
        """
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    # -- whole plans ----------------------------------------------------------------------
    def layout(self, plan: Plan, check_numerics: bool = False) -> _Layout:
        """The plan's chains (computed once per plan and numerics setting).

        Parameters
        ----------
        plan : Plan
            The plan to lay out.
        check_numerics : bool, default False
            Whether the layout's tasks check their outputs for NaN and Inf.
        """
        cached = self._layouts.get(plan)
        if cached is None:
            cached = self._layouts[plan] = {}
        layout = cached.get(check_numerics)
        if layout is None:
            layout = cached[check_numerics] = _Layout(plan, check_numerics)
        return layout

    def run_plan(self, plan: Plan, values: list, *, deadline: float | None = None,
                 callbacks: Iterable[Callback] = (), check_numerics: bool = False,
                 executor_name: str = "dask",
                 cancel: threading.Event | None = None) -> list[Any]:
        """Run ``plan`` on the cluster as one dask graph and return the fetched values in
        the plan's fetch order.

        ``values`` is the plan's value array with literals and fed values filled in
        (``plan.template`` plus validated feeds); ``deadline`` a ``time.perf_counter()``
        time. Once ``cancel`` is set (from another thread), no node starts and the run
        raises ``RunCancelled``. Callbacks get ``start``, then ``pretask``/``posttask``
        for every node that ran (replayed from the workers' records once the graph is
        done), then ``finish`` (always).

        Parameters
        ----------
        plan : Plan
            The plan to run.
        values : list
            The plan's value array, literals and validated feeds filled in.
        deadline : float, optional
            ``time.perf_counter()`` time by which the run must end.
        callbacks : iterable of Callback, optional
            Hooks for the run.
        check_numerics : bool, default False
            Raise ``NumericsError`` on the first NaN or Inf.
        executor_name : str, default "dask"
            The name callbacks see in ``RunInfo.executor``.
        cancel : threading.Event, optional
            Once set, no node starts and the run raises ``RunCancelled``.

        Returns
        -------
        list
            The fetched values, in the plan's fetch order.
        """
        if self._closed:
            raise RuntimeError("this dask executor is closed (shut down)")
        callbacks = tuple(callbacks)
        layout = self.layout(plan, check_numerics)
        info = RunInfo(plan, executor_name, self._max_workers, time.perf_counter(),
                       [plan.keys[p] for p in plan.fetch_positions])
        failure: BaseException | None = None
        try:
            # Inside the ``try``: when a ``start`` raises, every ``finish`` still runs
            # (those whose ``start`` never ran included), as on the other executors.
            for cb in callbacks:
                cb.start(info)
            return self._run(plan, layout, values, deadline, cancel, callbacks, info)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            first: BaseException | None = None
            for cb in callbacks:
                try:
                    cb.finish(info, failure)
                except BaseException as exc:  # noqa: BLE001 - the first is re-raised
                    first = first or exc
            if first is not None and failure is None:
                raise first

    def _run(self, plan: Plan, layout: _Layout, values: list, deadline: float | None,
             cancel: threading.Event | None, callbacks: tuple[Callback, ...],
             info: RunInfo) -> list[Any]:
        if not layout.chains:  # everything fetched was fed or literal
            return [values[p] for p in plan.fetch_positions]
        if cancel is not None and cancel.is_set():
            raise RunCancelled(f"run cancelled with {len(plan.compute)} unfinished nodes")
        client = self.client
        token = uuid.uuid4().hex
        record = bool(callbacks) or deadline is not None or cancel is not None

        threshold = self.scatter_threshold
        large = [p for p in layout.sources if _size_of(values[p]) >= threshold]
        scattered: dict[int, Any] = {}
        if large:  # one round trip for all of them
            handles = client.scatter([values[p] for p in large], hash=False)
            scattered = dict(zip(large, handles, strict=True))

        keys = [(f"{label}-{token}", t) for t, label in enumerate(layout.labels)]
        graph = {}
        for t, chain in enumerate(layout.chains):
            args: list[Any] = [token, record]
            for kind, x in layout.inputs[t]:
                if kind == "task":
                    args.append(TaskRef(keys[x]))
                elif x in scattered:
                    args.append(TaskRef(scattered[x].key))
                else:
                    args.append(values[x])
            graph[keys[t]] = Task(keys[t], chain, *args)
        wanted = [keys[t] for t in layout.outputs]

        expr = graph if LLGExpr is None else LLGExpr(graph, _determ_token=token)
        futures = client.get(expr, wanted, sync=False)
        error: BaseException | None = None
        results: list[Any] = []
        try:
            if deadline is None and cancel is None:
                results = client.gather(futures)
            else:
                results = client.sync(self._gather_watched, futures, deadline, cancel)
        except BaseException as exc:  # noqa: BLE001 - translated below
            error = exc
            # Nothing more starts: no task (cancelled futures), and no further node of
            # a fused task running now (told by token). Running nodes drain.
            with contextlib.suppress(Exception):
                client.cancel(futures)
            if not self._closed:
                with contextlib.suppress(Exception):
                    client.run(_stop_run, token)
        finally:
            del futures
            scattered.clear()

        records = self._collect(token) if record else []
        if error is not None:
            self._replay(plan, layout, records, {}, callbacks, info)
            translated = self._translate(plan, layout, error, records)
            if translated is error or translated is _cause(error):  # a task's own, as is
                raise translated
            raise translated from _cause(error)
        out = dict(zip(layout.outputs, results, strict=True))
        fetched = {p: values[p] if plan.is_source[p] else out[layout.task_of[p]]
                   for p in plan.fetch_positions}
        if callbacks:
            self._replay(plan, layout, records, fetched, callbacks, info)
        return [fetched[p] for p in plan.fetch_positions]

    async def _gather_watched(self, futures: list, deadline: float | None,
                              cancel: threading.Event | None) -> list:
        """Gather ``futures`` on the client's loop, raising ``TimeoutError`` at the
        deadline and ``RunCancelled`` within CANCEL_POLL_SECONDS of ``cancel`` being set."""
        gathering = asyncio.ensure_future(self.client._gather(futures))
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise RunCancelled("run cancelled")
                wait = None if cancel is None else CANCEL_POLL_SECONDS
                if deadline is not None:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        raise TimeoutError("run timed out")
                    wait = left if wait is None else min(wait, left)
                done, _ = await asyncio.wait([gathering], timeout=wait)
                if done:
                    return gathering.result()
        finally:
            # Not cancelled (that leaves distributed's inner tasks' errors unretrieved,
            # which it logs): the run's futures are cancelled next, which ends it.
            gathering.add_done_callback(_retrieve)

    def _collect(self, token: str) -> list:
        try:
            per_worker = self.client.run(_pop_records, token)
        except Exception:  # noqa: BLE001 - a lost worker loses its records, nothing more
            return []
        records = [r for addr in sorted(per_worker) for r in per_worker[addr]]
        records.extend(_pop_records(token))  # tasks the client's own process ran, if any
        return records

    def _replay(self, plan: Plan, layout: _Layout, records: list, fetched: dict,
                callbacks: tuple[Callback, ...], info: RunInfo) -> None:
        """Feed the workers' records to the callbacks, in finishing order."""
        if not callbacks or not records:
            return
        records = sorted(records, key=lambda r: (r[2], r[0]))
        ended = {r[0]: r[2] for r in records}
        is_source = plan.is_source
        for p, start, end, worker, nbytes, shape, dtype, type_name in records:
            ready = max((ended.get(q, info.started) for q in plan.parents[p] if not is_source[q]),
                        default=info.started)
            value = fetched[p] if p in fetched else RemoteValue(nbytes, shape, dtype, type_name)
            task = TaskRecord(p, plan.keys[p], plan.names[p], plan.ops[p], worker,
                              ready, start, end, value)
            for cb in callbacks:
                cb.pretask(info, p)
            for cb in callbacks:
                cb.posttask(info, task)

    def _translate(self, plan: Plan, layout: _Layout, error: BaseException,
                   records: list) -> BaseException:
        if isinstance(error, _TaskFailed):
            p, _, _, original, nonfinite = error.args
            if nonfinite is not None:
                return NumericsError(plan.names[p], plan.ops[p], nonfinite)
            if isinstance(original, RemoteError):
                # The task's own error could not be sent back: only its summary came.
                return NodeError(plan.names[p], plan.ops[p], original)
            if original.__traceback__ is None:
                original.__traceback__ = error.__traceback__
            return add_node_note(original, plan.names[p], plan.ops[p])
        done = {r[0] for r in records}
        unfinished = [plan.names[p] for p in plan.compute if p not in done]
        if self._closed:
            # Shut down under the run (the engine closed): the client's cancelled futures
            # and closed connections are no error of the run's own, as on other executors.
            return RuntimeError(f"the engine was closed during the run ({len(unfinished)} "
                                "nodes did not finish)")
        if isinstance(error, TimeoutError) or type(error).__name__ == "TimeoutError":
            shown = ", ".join(repr(n) for n in unfinished[:10])
            more = f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else ""
            return TimeoutError(
                f"run timed out with {len(unfinished)} unfinished nodes: {shown}{more}")
        if isinstance(error, RunCancelled):
            return RunCancelled(f"run cancelled with {len(unfinished)} unfinished nodes")
        task_key = getattr(error, "task", None)  # KilledWorker names the dask key
        if isinstance(task_key, tuple) and len(task_key) == 2 and isinstance(task_key[1], int):
            t = task_key[1]
            if 0 <= t < len(layout.members):
                # The worker died inside a task that may hold several fused nodes: any
                # of them could be the culprit, so the error names them all.
                members = layout.members[t]
                names = ", ".join(plan.names[p] for p in members)
                ops = ", ".join(dict.fromkeys(plan.ops[p] for p in members))
                return NodeError(names, ops, error)
        return error


def _cause(error: BaseException) -> BaseException | None:
    if isinstance(error, _TaskFailed):
        original = error.args[3]  # the kernel's exception; None for NaN/Inf
        if isinstance(original, SchedulerError):  # raised as itself: keep its own cause
            if original.__cause__ is None:  # (not every pickler keeps it)
                return getattr(original, "original", None)
            return original.__cause__
        return original
    if isinstance(error, (TimeoutError, RunCancelled)) or type(error).__name__ == "TimeoutError":
        return None
    return error


def _retrieve(task: asyncio.Task) -> None:
    """Retrieve the outcome of an abandoned gather (asyncio logs one left unretrieved)."""
    if not task.cancelled():
        task.exception()


def _size_of(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return 0
