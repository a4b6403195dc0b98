"""Node-level profiling of runs: records, Chrome trace, summary, critical path,
utilisation, a schedule simulator and a Gantt chart.

``Profiler`` is a :class:`~scheduler.callbacks.Callback`. Pass it to
``engine.run(..., callbacks=[prof])``, ``scheduler.get(..., callbacks=[prof])`` or
``Engine(callbacks=[prof])``; after a run::

    prof.records                 # one NodeRecord per executed node, in finishing order
    prof.to_chrome_trace("t.json")   # open in https://ui.perfetto.dev or chrome://tracing
    prof.print_summary()
    prof.critical_path(), prof.critical_path_time(), prof.utilization()
    prof.simulate(workers=16)    # predicted makespan on 16 workers
    prof.plot_gantt("gantt.png")     # or .svg

What is kept: a profiler keeps the last ``history`` runs (default 10) as
:class:`RunProfile` objects in ``prof.runs``, oldest first; ``prof.records`` and every
analysis method of the profiler refer to the last finished run, and
``prof.runs[i].summary()`` (etc.) to an older one. Output values are never kept:
a record holds only the output's ``nbytes``, ``shape`` and ``dtype``.

Clock: every time is ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, shared by the
processes of one machine, so process-pool times line up with the driver's). Times in
the trace, the summary and the chart are relative to the run's start
(``RunProfile.started``, taken when the engine set the run up).

Cost: the hooks do no analysis while the run is going. ``posttask`` appends one small
tuple (position, worker, ready, start, end, nbytes, shape, dtype) per node; records
(names, ops, parents, input shapes) are built from those tuples and the plan on first
use of ``records`` or of any analysis. Measured on a 20,000-node chain of trivial
Python tasks (a compiled plan run repeatedly with ``engine.execute``; median of 11
interleaved repetitions; a 2-core machine under a load of about 6):

- inline executor: 0.6-0.9 µs per node with no callback (the engine's plain walk),
  3.8-6.6 µs with an empty ``Callback()`` (the engine's callback path: per-node timing
  and a ``TaskRecord``), 5.0-8.5 µs with a ``Profiler``; threads executor: 0.8-1.1,
  8.1-8.8 and 9.6-11.0 µs. So the profiler's own hooks add 1-2 µs per node on top of
  the callback path, which is what registering any callback costs;
- the hooks alone (``posttask`` for every node and ``finish``, called directly):
  0.8 µs per node for a Python int output, 1.7 µs for an ndarray output;
- after the run, building the records takes 4-5 µs per node, once; ``critical_path``
  30 ms, ``simulate`` 130-180 ms, ``summary`` (six simulations) 0.6-0.8 s and
  ``chrome_trace`` 0.8-1.2 s for the 20,000 nodes.
"""

from __future__ import annotations

import heapq
import html
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .callbacks import Callback, RunInfo, TaskRecord

if TYPE_CHECKING:
    from .engine import Engine
    from .plan import Plan

__all__ = ["NodeRecord", "Profiler", "RunProfile", "profile"]

# Notebooks chart runs of up to this many nodes and summarise larger ones.
MAX_DRAWN_RECORDS = 2000
# Worker counts shown in the summary's "what if" line.
WHAT_IF_WORKERS = (1, 2, 4, 8, 16)


class NodeRecord(NamedTuple):
    """One executed node. Times are ``time.perf_counter()`` seconds (absolute; subtract
    ``RunProfile.started`` for times since the run began).

    Attributes
    ----------
    position : int
        The node's position in the plan (its scheduling priority: lower first).
    node : hashable
        The graph node, or the key of a plain task graph.
    name, op : str
        The node's name and op.
    worker : str
        The thread name, ``"process-<pid>"`` or dask worker that ran it.
    ready : float
        When its last computed parent finished (the run's start for roots).
    start, end : float
        When it started and ended.
    nbytes : int
        Output size: ``ndarray.nbytes``, else an ``nbytes`` attribute, else getsizeof.
    shape : tuple or None
        Output shape, when the output has one.
    dtype : str or None
        Output dtype, when the output has one.
    input_shapes : tuple
        Shape of each argument, in argument order: measured for computed inputs and
        literals, the static shape (``None`` for unknown dims) for fed inputs, ``None``
        if unknown.
    parents : tuple of int
        Plan positions of the computed parents that ran in this run.
    fetched : bool
        The value was a fetch (it stays alive to the end of the run).
    """

    position: int  # the node's position in the plan (its scheduling priority: lower first)
    node: Hashable  # the graph node, or the key of a plain task graph
    name: str
    op: str
    worker: str  # thread name, "process-<pid>" or dask worker that ran it
    ready: float  # when its last computed parent finished (the run's start for roots)
    start: float
    end: float
    nbytes: int  # output size: ndarray.nbytes, else an ``nbytes`` attribute, else getsizeof
    shape: tuple | None  # output shape, when the output has one
    dtype: str | None  # output dtype, when the output has one
    # shape of each argument, in argument order: measured for computed inputs and
    # literals, the static shape (None for unknown dims) for fed inputs, None if unknown
    input_shapes: tuple
    parents: tuple[int, ...]  # plan positions of the computed parents that ran in this run
    fetched: bool  # the value was a fetch (it stays alive to the end of the run)

    @property
    def duration(self) -> float:
        """Seconds the node ran: ``end - start``."""
        return self.end - self.start

    @property
    def queue_wait(self) -> float:
        """Seconds between becoming ready and starting: scheduling delay."""
        return self.start - self.ready


class RunProfile:
    """The profile of one run: its records and every analysis of them.

    Made by :class:`Profiler` when a run finishes (``prof.runs``, ``prof.last``).
    Properties are the run's recorded facts; methods analyse the records.

    Parameters
    ----------
    raw : list of tuple
        The hooks' per-node tuples (records are built from them on first use).
    plan : Plan
        The plan that ran.
    started, finished : float
        ``time.perf_counter()`` at the run's start and at its ``finish`` hook.
    executor : str
        The executor's name.
    pool_workers : int
        The engine's pool size (0 for the inline executor).
    driver : str
        The name of the thread that drove the run.
    error : str or None
        ``repr`` of the error that ended the run, if any.
    """

    def __init__(self, raw: list[tuple], plan: Plan, started: float, finished: float,
                 executor: str, pool_workers: int, driver: str, error: str | None):
        # The hooks' raw tuples; records are built from them and the plan on first use,
        # so that a profiled run pays only for an append per node.
        self._raw: list[tuple] | None = raw
        self._plan: Plan | None = plan
        self._records: list[NodeRecord] = []
        self._by_position: dict[int, NodeRecord] = {}
        self._busy_time: float | None = None
        self._workers: list[str] | None = None
        #: perf_counter() when the run began and when its ``finish`` hook ran
        self.started = started
        self.finished = finished
        self.executor = executor
        #: the engine's pool size (0 for the inline executor)
        self.pool_workers = pool_workers
        #: the thread that drove the run (it runs cheap nodes inline)
        self.driver = driver
        #: ``repr`` of the error that ended the run, if any (never the exception itself,
        #: whose traceback would keep the run's arrays alive)
        self.error = error

    @property
    def records(self) -> list[NodeRecord]:
        """One record per executed node, in finishing order."""
        if self._raw is not None and self._plan is not None:
            self._records = _build_records(self._plan, self._raw)
            self._by_position = {r.position: r for r in self._records}
            self._raw = self._plan = None
        return self._records

    def _positions(self) -> dict[int, NodeRecord]:
        """The records by plan position."""
        self.records  # noqa: B018 - building the records builds the index too
        return self._by_position

    def __repr__(self) -> str:
        return (f"<RunProfile {len(self.records)} nodes, {len(self.workers)} workers, "
                f"wall {self.wall_time * 1e3:.3f} ms>")

    # -- basic facts ---------------------------------------------------------------------
    @property
    def wall_time(self) -> float:
        """Seconds from the run's start to its ``finish`` hook."""
        return self.finished - self.started

    @property
    def busy_time(self) -> float:
        """Sum of node durations (worker-seconds spent in kernels)."""
        if self._busy_time is None:  # a fact of the finished run: computed once
            self._busy_time = math.fsum(r.end - r.start for r in self.records)
        return self._busy_time

    @property
    def workers(self) -> list[str]:
        """Distinct workers that ran something: the driving thread first, then the
        others in natural order of their names."""
        if self._workers is None:  # a fact of the finished run: computed once
            names = {r.worker for r in self.records}
            rest = sorted(names - {self.driver}, key=_natural_key)
            self._workers = ([self.driver] if self.driver in names else []) + rest
        return list(self._workers)

    def record(self, node: Hashable) -> NodeRecord:
        """The record of one node.

        Parameters
        ----------
        node : hashable
            A graph node or a task key.

        Returns
        -------
        NodeRecord

        Raises
        ------
        KeyError
            If the node did not run in this run.
        """
        for r in self.records:
            if r.node is node or r.node == node:
                return r
        raise KeyError(f"{node!r} did not run in this run")

    # -- critical path, utilisation, simulation --------------------------------------------
    def critical_path(self) -> list[NodeRecord]:
        """The records on the longest path through the DAG, weighting each node by its
        measured duration, from the first node to the last."""
        if not self.records:
            return []
        by_pos = self._positions()
        longest: dict[int, float] = {}
        via: dict[int, int | None] = {}
        for p in sorted(by_pos):  # plan order is topological
            r = by_pos[p]
            best, best_q = 0.0, None
            for q in r.parents:
                if longest[q] > best or best_q is None:
                    best, best_q = longest[q], q
            longest[p] = best + (r.end - r.start)
            via[p] = best_q
        last = max(longest, key=lambda p: (longest[p], -p))
        path = []
        step: int | None = last
        while step is not None:
            path.append(by_pos[step])
            step = via[step]
        path.reverse()
        return path

    def critical_path_time(self) -> float:
        """Seconds: sum of the durations on the critical path (a lower bound on the
        makespan on any number of workers)."""
        return math.fsum(r.end - r.start for r in self.critical_path())

    def utilization(self, workers: int | None = None) -> float:
        """Busy worker-time / (``workers`` x wall time), clipped to [0, 1].

        Parameters
        ----------
        workers : int, optional
            The number of workers to divide by; by default the number of distinct
            workers that ran something (the driving thread counts when it ran nodes
            inline).

        Returns
        -------
        float
        """
        k = len(self.workers) if workers is None else workers
        if k < 1:
            raise ValueError(f"workers must be positive, got {workers!r}")
        wall = self.wall_time
        if wall <= 0 or not self.records:
            return 0.0
        return min(1.0, max(0.0, self.busy_time / (k * wall)))

    def simulate(self, workers: int) -> float:
        """Predicted makespan (seconds) of this run's nodes on ``workers`` virtual
        workers, replaying the measured durations with the engine's own policy: list
        scheduling where a free worker starts the ready node with the lowest plan
        position, and completions are handled one at a time in time order (as the
        engine's driving loop does). Scheduling itself is free in the simulation, and
        cheap nodes that the engine would run inline on the driving thread count as
        ordinary nodes.

        ``simulate(1)`` is the sum of the durations; for ``workers`` at least the
        graph's width it is the critical path time.

        Parameters
        ----------
        workers : int
            The number of virtual workers.

        Returns
        -------
        float
            The predicted makespan in seconds.

        Accuracy, measured on a 2-core machine (tests/test_profiler.py,
        ``test_simulate_matches_real_runs``): on a wide graph of 20 ms sleep tasks,
        predicting a real 1-worker run and, from the same 1-worker profile, a real
        2-worker run, the prediction was within 1-3 % of the measured wall time (the
        residue is the engine's hand-off and bookkeeping, 0.1-0.5 ms per node on a
        loaded machine); the test allows 10 %. For CPU-bound kernels it is an
        optimistic bound: it assumes the kernels scale (no GIL, BLAS-thread or
        memory-bandwidth contention between workers).
        """
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        by_pos = self._positions()
        if not by_pos:
            return 0.0
        pending = {p: len(r.parents) for p, r in by_pos.items()}
        children: dict[int, list[int]] = {p: [] for p in by_pos}
        for p, r in by_pos.items():
            for q in r.parents:
                children[q].append(p)
        ready = [p for p, n in pending.items() if n == 0]
        heapq.heapify(ready)
        running: list[tuple[float, int]] = []
        now = 0.0
        free = workers
        while True:
            while free and ready:
                p = heapq.heappop(ready)
                r = by_pos[p]
                heapq.heappush(running, (now + (r.end - r.start), p))
                free -= 1
            if not running:
                break
            now, p = heapq.heappop(running)
            free += 1
            for c in children[p]:
                pending[c] -= 1
                if pending[c] == 0:
                    heapq.heappush(ready, c)
        return now

    def scheduler_overhead(self) -> float:
        """Seconds: the measured wall time minus ``simulate(workers=len(self.workers))``,
        i.e. the time this run took beyond a zero-overhead list scheduler with the same
        workers, the same priorities and the same node durations. It is the cost of
        hand-offs, bookkeeping, callbacks and idle gaps. It can come out slightly
        negative when the engine's actual placement (cheap nodes inline on the driver)
        beats the simulated one."""
        if not self.records:
            return self.wall_time
        return self.wall_time - self.simulate(len(self.workers))

    # -- memory --------------------------------------------------------------------------
    def live_bytes(self) -> list[tuple[float, int]]:
        """``(seconds since the run's start, live bytes)`` after each change.

        A computed value becomes live when its node ends and dies when the last of its
        consumers in this run ends, unless it is fetched (then it lives to the end of
        the run). Fed values and literals are not counted."""
        deltas: list[tuple[float, int, int]] = []  # (time, 0 birth / 1 death, bytes)
        last_use: dict[int, float] = {}
        for r in self.records:
            for q in r.parents:
                if r.end > last_use.get(q, -math.inf):
                    last_use[q] = r.end
        for r in self.records:
            if not r.nbytes:
                continue
            deltas.append((r.end, 0, r.nbytes))
            if not r.fetched and r.position in last_use:
                deltas.append((last_use[r.position], 1, -r.nbytes))
        deltas.sort()
        # At one instant, births come before deaths (the engine stores a node's value
        # before it frees the node's inputs), and both states are kept in the timeline.
        timeline = [(0.0, 0)]
        live = 0
        last = (0.0, -1)
        for t, kind, n in deltas:
            live += n
            t = t - self.started
            if last == (t, kind):
                timeline[-1] = (t, live)
            else:
                timeline.append((t, live))
            last = (t, kind)
        return timeline

    def peak_live_bytes(self) -> int:
        """The most bytes of computed values alive at once (see :meth:`live_bytes`).

        Returns
        -------
        int
        """
        return max(n for _, n in self.live_bytes())

    # -- Chrome trace ----------------------------------------------------------------------
    def chrome_trace(self) -> dict:
        """The run as a Trace Event Format object (see ``to_chrome_trace``)."""
        t0 = self.started
        pid = 1
        tids = {w: i + 1 for i, w in enumerate(self.workers)}
        events: list[dict] = [
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
             "args": {"name": f"dataflow run ({self.executor})"}},
        ]
        for w, tid in tids.items():
            label = f"{w} (driver)" if w == self.driver else w
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                           "args": {"name": label}})
            events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                           "args": {"sort_index": tid}})
        by_pos = self._positions()
        for r in sorted(self.records, key=lambda r: (r.start, r.position)):
            events.append({
                "name": r.name, "cat": r.op, "ph": "X", "pid": pid, "tid": tids[r.worker],
                "ts": _us(r.start - t0), "dur": _us(r.duration),
                "args": {
                    "op": r.op, "position": r.position, "worker": r.worker,
                    "input_shapes": [None if s is None else list(s) for s in r.input_shapes],
                    "shape": None if r.shape is None else list(r.shape),
                    "dtype": r.dtype, "nbytes": r.nbytes,
                    "ready_us": _us(r.ready - t0), "queue_wait_us": _us(r.queue_wait),
                    "parents": [by_pos[q].name for q in r.parents],
                },
            })
        # Flow arrows parent -> child. Each end sits in the middle of its slice, so that
        # it binds to that slice (the enclosing one: "bp": "e" for the finish) whatever
        # order a viewer gives events with equal timestamps.
        flow_id = 0
        for r in sorted(self.records, key=lambda r: r.position):
            for q in r.parents:
                parent = by_pos[q]
                flow_id += 1
                events.append({"name": "dependency", "cat": "flow", "ph": "s", "id": flow_id,
                               "pid": pid, "tid": tids[parent.worker],
                               "ts": _us((parent.start + parent.end) / 2 - t0)})
                events.append({"name": "dependency", "cat": "flow", "ph": "f", "bp": "e",
                               "id": flow_id, "pid": pid, "tid": tids[r.worker],
                               "ts": _us((r.start + r.end) / 2 - t0)})
        for t, live in self.live_bytes():
            events.append({"name": "live bytes", "ph": "C", "pid": pid, "ts": _us(t),
                           "args": {"bytes": live}})
        end = _us(self.wall_time)
        events.append({"name": "live bytes", "ph": "C", "pid": pid, "ts": end,
                       "args": {"bytes": self.live_bytes()[-1][1]}})
        return {
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {
                "executor": self.executor, "pool_workers": self.pool_workers,
                "nodes": len(self.records), "wall_time_us": end,
                "critical_path_us": _us(self.critical_path_time()),
                "error": self.error,
            },
        }

    def to_chrome_trace(self, path: str | os.PathLike) -> str:
        """Write the run as Trace Event Format JSON (object form, ``traceEvents``) that
        opens in https://ui.perfetto.dev and chrome://tracing: one track per worker, one
        complete event per node (args: op, input and output shapes, dtype, nbytes, queue
        wait), flow arrows from each parent to its children, and a "live bytes" counter.
        Timestamps are microseconds since the run's start.

        Parameters
        ----------
        path : str or os.PathLike
            The JSON file to write.

        Returns
        -------
        str
            The path written.
        """
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.chrome_trace(), f)
        return path

    # -- summary -----------------------------------------------------------------------------
    def summary(self, top: int = 10) -> str:
        """A terminal-readable report of the run.

        Totals, a table by op, the slowest nodes, queue wait statistics, scheduler
        overhead and what-if predictions (:meth:`simulate`).

        Parameters
        ----------
        top : int, default 10
            How many of the slowest nodes to list.

        Returns
        -------
        str
        """
        recs = self.records
        wall, busy = self.wall_time, self.busy_time
        workers = self.workers
        lines = []
        status = "" if self.error is None else f"  FAILED: {self.error}"
        lines.append(f"Run profile: {len(recs)} nodes on {len(workers)} worker(s) "
                     f"[{self.executor} executor, pool of {self.pool_workers}]{status}")
        if not recs:
            lines.append(f"  wall time {_ms(wall)}; nothing ran")
            return "\n".join(lines)
        path = self.critical_path()
        cp = math.fsum(r.end - r.start for r in path)
        overhead = self.scheduler_overhead()
        lines += [
            f"  wall time            {_ms(wall):>12}",
            f"  busy time            {_ms(busy):>12}   (sum of node durations)",
            f"  utilization          {self.utilization():>11.1%}   "
            f"(busy / ({len(workers)} worker(s) x wall))",
            f"  critical path        {_ms(cp):>12}   ({len(path)} nodes; wall - critical path "
            f"= {_ms(wall - cp)})",
            f"  scheduler overhead   {_ms(overhead):>12}   ({overhead / len(recs) * 1e6:.1f} µs "
            f"per node: wall - simulate({len(workers)}))",
            f"  peak live bytes      {_bytes(self.peak_live_bytes()):>12}",
        ]
        whatif = [(k, self.simulate(k)) for k in WHAT_IF_WORKERS]
        lines.append("  simulated makespan   " + ", ".join(
            f"{k}w {_ms(t)}" for k, t in whatif) + f", inf {_ms(cp)}")

        # By op.
        by_op: dict[str, list[float]] = {}
        for r in recs:
            by_op.setdefault(r.op, []).append(r.end - r.start)
        rows = sorted(((op, len(ds), math.fsum(ds)) for op, ds in by_op.items()),
                      key=lambda row: (-row[2], row[0]))
        width = max(8, max(len(op) for op in by_op))
        lines += ["", "By op:",
                  f"  {'op':<{width}} {'count':>7} {'total ms':>10} {'mean µs':>10} {'share':>7}"]
        for op, count, total in rows:
            share = total / busy if busy > 0 else 0.0
            lines.append(f"  {op:<{width}} {count:>7} {total * 1e3:>10.3f} "
                         f"{total / count * 1e6:>10.1f} {share:>7.1%}")

        # Slowest nodes.
        on_path = {r.position for r in path}
        slow = sorted(recs, key=lambda r: (-(r.end - r.start), r.position))[:top]
        nw = max(4, max(len(r.name) for r in slow))
        ow = max(2, max(len(r.op) for r in slow))
        ww = max(6, max(len(r.worker) for r in slow))
        lines += ["", f"Slowest {len(slow)} nodes (* on the critical path):",
                  f"  {'node':<{nw}}  {'op':<{ow}}  {'worker':<{ww}} {'ms':>9} {'start ms':>9}"
                  f" {'wait µs':>9} {'output':>10}"]
        for r in slow:
            mark = "*" if r.position in on_path else " "
            lines.append(f"{mark} {r.name:<{nw}}  {r.op:<{ow}}  {r.worker:<{ww}} "
                         f"{(r.end - r.start) * 1e3:>9.3f} {(r.start - self.started) * 1e3:>9.3f}"
                         f" {(r.start - r.ready) * 1e6:>9.1f} {_bytes(r.nbytes):>10}")

        # Queue wait.
        waits = sorted(r.start - r.ready for r in recs)
        lines += ["", "Queue wait (start - ready), µs:",
                  f"  mean {statistics.fmean(waits) * 1e6:.1f}   median "
                  f"{_quantile(waits, 0.5) * 1e6:.1f}   p90 {_quantile(waits, 0.9) * 1e6:.1f}"
                  f"   max {waits[-1] * 1e6:.1f}   total {_ms(math.fsum(waits))}"]

        # Per worker.
        per_worker: dict[str, list[float]] = {w: [] for w in workers}
        for r in recs:
            per_worker[r.worker].append(r.end - r.start)
        ww = max(6, max(len(w) for w in workers))
        lines += ["", "By worker:", f"  {'worker':<{ww}} {'nodes':>7} {'busy ms':>10} {'busy':>7}"]
        for w in workers:
            ds = per_worker[w]
            b = math.fsum(ds)
            suffix = "  (driver: runs cheap nodes inline)" if w == self.driver else ""
            lines.append(f"  {w:<{ww}} {len(ds):>7} {b * 1e3:>10.3f} "
                         f"{(b / wall if wall > 0 else 0.0):>7.1%}{suffix}")
        return "\n".join(lines)

    def print_summary(self, top: int = 10, file: Any = None) -> None:
        """Print :meth:`summary`.

        Parameters
        ----------
        top : int, default 10
            How many of the slowest nodes to list.
        file : file-like, optional
            Where to print; standard output by default.
        """
        print(self.summary(top), file=file)

    # -- Gantt chart ---------------------------------------------------------------------------
    def plot_gantt(self, path: str | os.PathLike, *, title: str | None = None,
                   max_ops_in_legend: int = 16) -> str:
        """Draw a Gantt chart: a lane per worker, a bar per node colored by op (legend),
        critical path nodes outlined in black. PNG or SVG (or any format matplotlib
        knows) by the file's extension. Needs matplotlib (the ``profile`` extra); it
        draws off-screen and touches no global pyplot state.

        Parameters
        ----------
        path : str or os.PathLike
            The image to write.
        title : str, optional
            The chart's title; a line of key figures by default.
        max_ops_in_legend : int, default 16
            The busiest ops get their own colour and legend entry; the rest are grey.

        Returns
        -------
        str
            The path written.
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.patches import Patch
        except ImportError:
            raise ImportError(
                "plot_gantt needs matplotlib: pip install 'dataflow-graph-engine[profile]' "
                "(or pip install matplotlib)") from None
        path = os.fspath(path)
        workers = self.workers
        lane = {w: i for i, w in enumerate(workers)}
        # Ops by total time: the busiest get their own color and legend entry.
        totals: dict[str, float] = {}
        for r in self.records:
            totals[r.op] = totals.get(r.op, 0.0) + (r.end - r.start)
        ops = sorted(totals, key=lambda op: (-totals[op], op))
        named = ops[:max_ops_in_legend]
        palette = _palette(len(named))
        color = {op: palette[i] for i, op in enumerate(named)}
        other = (0.6, 0.6, 0.6, 1.0)
        on_path = {r.position for r in self.critical_path()}

        legend_rows = len(named) + (len(ops) > len(named)) + 1
        height = max(1.2 + 0.55 * max(1, len(workers)), 0.8 + 0.2 * legend_rows)
        fig = Figure(figsize=(12, height), layout="constrained")
        ax = fig.add_subplot()
        t0 = self.started
        wall_ms = max(self.wall_time * 1e3, 1e-6)
        for r in self.records:
            x = (r.start - t0) * 1e3
            width = max((r.end - r.start) * 1e3, wall_ms * 1e-4)  # keep tiny nodes visible
            crit = r.position in on_path
            ax.broken_barh([(x, width)], (lane[r.worker] - 0.4, 0.8),
                           facecolors=color.get(r.op, other),
                           edgecolors="black" if crit else "white",
                           linewidth=1.4 if crit else 0.3, zorder=3 if crit else 2)
        ax.set_yticks(range(len(workers)))
        ax.set_yticklabels([f"{w} (driver)" if w == self.driver else w for w in workers])
        ax.invert_yaxis()
        ax.set_xlim(0, wall_ms)
        ax.set_xlabel("ms since the run's start")
        ax.grid(axis="x", alpha=0.3, zorder=0)
        handles = [Patch(facecolor=color[op], label=op) for op in named]
        if len(ops) > len(named):
            handles.append(Patch(facecolor=other, label=f"{len(ops) - len(named)} other ops"))
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.4,
                             label="critical path"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize="small", frameon=False)
        ax.set_title(title or (f"{len(self.records)} nodes, wall {self.wall_time * 1e3:.2f} ms, "
                               f"critical path {self.critical_path_time() * 1e3:.2f} ms, "
                               f"utilization {self.utilization():.0%}"))
        fig.savefig(path, dpi=110)
        return path


    # -- notebooks -------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        """Jupyter view: the Gantt chart and the summary of a run of up to
        ``MAX_DRAWN_RECORDS`` nodes; the key figures of a larger one."""
        recs = self.records
        head = f"<p><b>{html.escape(repr(self))}</b></p>"
        if not recs:
            return head
        if len(recs) > MAX_DRAWN_RECORDS:
            facts = [("nodes", f"{len(recs)}"), ("workers", f"{len(self.workers)}"),
                     ("wall time", _ms(self.wall_time)), ("busy time", _ms(self.busy_time)),
                     ("critical path", _ms(self.critical_path_time())),
                     ("utilization", f"{self.utilization():.1%}")]
            rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in facts)
            return (f"{head}<table>{rows}</table><p>Too many nodes to chart here: "
                    "<code>summary()</code> and <code>plot_gantt(path)</code> give it all.</p>")
        chart = ""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.plot_gantt(os.path.join(tmp, "gantt.svg"))
                with open(path, encoding="utf-8") as f:
                    chart = f.read()
            chart = chart[chart.find("<svg"):]  # drop the XML prolog inside HTML
        except ImportError:  # no matplotlib: the summary alone
            pass
        return f"{head}<div>{chart}</div><pre>{html.escape(self.summary())}</pre>"


class Profiler(Callback):
    """Records every executed node of the runs it is passed to (see the module
    docstring). Keeps the last ``history`` runs in ``runs`` (oldest first);
    ``records`` and the analysis methods refer to the last finished run. One profiler
    may watch several runs at once (each run's hooks are matched to it). In Jupyter a
    profiler shows its last run's Gantt chart and summary.

    Parameters
    ----------
    history : int or None, default 10
        How many finished runs to keep; ``None`` keeps all.

    Examples
    --------
    >>> import numpy as np, dataflow as df, scheduler
    >>> with df.Graph():
    ...     x = df.placeholder("x", (3,))
    ...     y = df.sum(df.tanh(x))
    >>> prof = scheduler.Profiler()
    >>> _ = scheduler.run(y, {x: np.ones(3)}, executor="inline", callbacks=[prof])
    >>> sorted(r.op for r in prof.records)
    ['sum', 'tanh']
    """

    def __init__(self, history: int | None = 10):
        if history is not None and history < 1:
            raise ValueError(f"history must be a positive int or None, got {history!r}")
        self.runs: deque[RunProfile] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._active: dict[int, tuple[RunInfo, list, str]] = {}
        # (run, its raw list) of the latest run started: one attribute, read atomically,
        # so that a concurrent start cannot pair one run with another's list.
        self._latest: tuple[RunInfo | None, list] = (None, [])

    def __repr__(self) -> str:
        last = f", last: {self.runs[-1]!r}" if self.runs else ""
        return f"<Profiler {len(self.runs)} run(s){last}>"

    # -- hooks -----------------------------------------------------------------------------
    def start(self, run: RunInfo) -> None:
        raw: list = []
        with self._lock:
            self._active[id(run)] = (run, raw, threading.current_thread().name)
            self._latest = (run, raw)

    def posttask(self, run: RunInfo, record: TaskRecord) -> None:
        latest, raw = self._latest
        if latest is not run:
            raw = self._active[id(run)][1]
        value = record.value
        kind = type(value)
        if kind is np.ndarray:
            raw.append((record.position, record.worker, record.ready, record.start,
                        record.end, value.nbytes, value.shape, value.dtype))
        elif kind in _PLAIN_SCALARS:
            raw.append((record.position, record.worker, record.ready, record.start,
                        record.end, sys.getsizeof(value), None, None))
        else:
            raw.append((record.position, record.worker, record.ready, record.start,
                        record.end, *_describe_value(value)))

    def finish(self, run: RunInfo, error: BaseException | None) -> None:
        finished = time.perf_counter()
        with self._lock:
            entry = self._active.pop(id(run), None)
            if self._latest[0] is run:
                self._latest = (None, [])
        if entry is None:
            return
        _, raw, driver = entry
        profile = RunProfile(raw, run.plan, run.started, finished, run.executor, run.workers,
                             driver, None if error is None else repr(error))
        with self._lock:
            self.runs.append(profile)

    # -- the last run ---------------------------------------------------------------------
    @property
    def last(self) -> RunProfile:
        """The last finished run's profile."""
        if not self.runs:
            raise RuntimeError("this profiler has not seen a finished run yet: pass it as "
                               "callbacks=[profiler] to engine.run or scheduler.get")
        return self.runs[-1]

    @property
    def records(self) -> list[NodeRecord]:
        """The last run's records, in finishing order (empty before any run)."""
        return self.runs[-1].records if self.runs else []

    def clear(self) -> None:
        """Forget every kept run."""
        self.runs.clear()

    @property
    def started(self) -> float:
        """``time.perf_counter()`` when the last run began."""
        return self.last.started

    @property
    def wall_time(self) -> float:
        """Seconds from the last run's start to its ``finish`` hook."""
        return self.last.wall_time

    @property
    def busy_time(self) -> float:
        """Sum of the last run's node durations (worker-seconds spent in kernels)."""
        return self.last.busy_time

    @property
    def workers(self) -> list[str]:
        """Distinct workers that ran something in the last run, the driver first."""
        return self.last.workers

    def record(self, node: Hashable) -> NodeRecord:
        return self.last.record(node)

    def critical_path(self) -> list[NodeRecord]:
        return self.last.critical_path()

    def critical_path_time(self) -> float:
        return self.last.critical_path_time()

    def utilization(self, workers: int | None = None) -> float:
        return self.last.utilization(workers)

    def simulate(self, workers: int) -> float:
        return self.last.simulate(workers)

    def scheduler_overhead(self) -> float:
        return self.last.scheduler_overhead()

    def live_bytes(self) -> list[tuple[float, int]]:
        return self.last.live_bytes()

    def peak_live_bytes(self) -> int:
        return self.last.peak_live_bytes()

    def chrome_trace(self) -> dict:
        return self.last.chrome_trace()

    def to_chrome_trace(self, path: str | os.PathLike) -> str:
        return self.last.to_chrome_trace(path)

    def summary(self, top: int = 10) -> str:
        return self.last.summary(top)

    def print_summary(self, top: int = 10, file: Any = None) -> None:
        self.last.print_summary(top, file)

    def plot_gantt(self, path: str | os.PathLike, *, title: str | None = None,
                   max_ops_in_legend: int = 16) -> str:
        return self.last.plot_gantt(path, title=title, max_ops_in_legend=max_ops_in_legend)

    def _repr_html_(self) -> str:
        """Jupyter view of the last run (see :meth:`RunProfile._repr_html_`)."""
        if not self.runs:
            return f"<p><b>{html.escape(repr(self))}</b>: no finished run yet</p>"
        return self.last._repr_html_()

    # Keep RunProfile's docstrings on the delegating methods.
    for _name in ("record", "critical_path", "critical_path_time", "utilization", "simulate",
                  "scheduler_overhead", "live_bytes", "peak_live_bytes", "chrome_trace",
                  "to_chrome_trace", "summary", "print_summary", "plot_gantt"):
        locals()[_name].__doc__ = getattr(RunProfile, _name).__doc__
    del _name


def profile(fetches: Any, feeds: Mapping | None = None, *, engine: Engine | None = None,
            executor: Any = "threads", workers: int | None = None, warmup: int = 2,
            timeout: float | None = None) -> Profiler:
    """Profile one run of ``fetches`` on a warmed engine, in one call.

    The first runs of a graph on an engine compile its plan and teach the engine's cost
    model which nodes are worth a pool worker, so a profile of a cold engine shows
    compilation and learning rather than the steady state. This helper runs the request
    ``warmup`` times unprofiled, then once more with a fresh :class:`Profiler`.

    Parameters
    ----------
    fetches : node, list/tuple or dict of nodes, or names
        What to compute, as for :meth:`Engine.run`.
    feeds : mapping, optional
        Values for placeholders (and any other node to feed), as for :meth:`Engine.run`.
    engine : Engine, optional
        The engine to warm and profile (it stays open). When omitted, an
        ``Engine(executor, workers)`` is made for the call and closed after it.
    executor : str or concurrent.futures.Executor, default "threads"
        The executor of the engine made for the call; ignored when ``engine`` is given.
    workers : int, optional
        The pool size of the engine made for the call; ignored when ``engine`` is given.
    warmup : int, default 2
        Unprofiled runs before the profiled one (0 profiles the first run).
    timeout : float, optional
        Seconds each run may take (``TimeoutError`` after that).

    Returns
    -------
    Profiler
        The profiler that watched the last run: ``prof.summary()``,
        ``prof.critical_path_time()``, ``prof.simulate(workers=k)``, ...

    Raises
    ------
    ValueError
        If ``warmup`` is negative, or ``executor``/``workers`` are given with ``engine``.

    Examples
    --------
    >>> prof = scheduler.profile(loss, {x: batch}, workers=2)  # doctest: +SKIP
    >>> print(prof.summary())  # doctest: +SKIP
    """
    from .engine import Engine

    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    if engine is not None and (executor != "threads" or workers is not None):
        raise ValueError("pass either engine= or executor=/workers=, not both")
    owned = engine is None
    if engine is None:
        engine = Engine(executor, workers)
    try:
        for _ in range(warmup):
            engine.run(fetches, feeds, timeout=timeout)
        prof = Profiler(history=1)
        engine.run(fetches, feeds, timeout=timeout, callbacks=[prof])
    finally:
        if owned:
            engine.close()
    return prof


# -- helpers ------------------------------------------------------------------------------------
_PLAIN_SCALARS = frozenset({int, float, complex, bool, str, bytes, type(None)})


def _describe_value(value: Any) -> tuple[int, tuple | None, Any]:
    """(nbytes, shape, dtype) of an output, best effort, without keeping it."""
    if isinstance(value, (np.ndarray, np.generic)):
        return int(value.nbytes), tuple(value.shape), value.dtype
    nbytes = getattr(value, "nbytes", None)
    if not isinstance(nbytes, (int, np.integer)):
        try:
            nbytes = sys.getsizeof(value)
        except TypeError:
            nbytes = 0
    shape = getattr(value, "shape", None)
    if shape is not None:
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            shape = None
    dtype = getattr(value, "dtype", None)
    return int(nbytes), shape, None if dtype is None else str(dtype)


def _build_records(plan: Plan, raw: list) -> list[NodeRecord]:
    """Resolve names, ops, parents and input shapes from the plan, once per run."""
    shapes: dict[int, tuple | None] = {item[0]: item[6] for item in raw}
    keys, names, ops, args, parents, keep = (plan.keys, plan.names, plan.ops, plan.args,
                                             plan.parents, plan.keep)
    source_shapes: dict[int, tuple | None] = {}
    dtype_names: dict[Any, Any] = {None: None}
    make = NodeRecord
    records = []
    for p, worker, ready, start, end, nbytes, shape, dtype in raw:
        input_shapes = []
        for a in args[p]:
            if a in shapes:
                input_shapes.append(shapes[a])
            else:
                if a not in source_shapes:
                    source_shapes[a] = _source_shape(plan, a)
                input_shapes.append(source_shapes[a])
        dtype_name = dtype_names.get(dtype, dtype_names)
        if dtype_name is dtype_names:
            dtype_name = dtype_names[dtype] = str(dtype)
        records.append(make(p, keys[p], names[p], ops[p], worker, ready, start, end,
                            int(nbytes), shape, dtype_name, tuple(input_shapes),
                            tuple([q for q in parents[p] if q in shapes]), keep[p]))
    return records


def _source_shape(plan: Plan, p: int) -> tuple | None:
    """Shape of an argument that is not a computed node of this run: a literal's actual
    shape, else the static shape of a fed graph node (``None`` for unknown dims)."""
    value = plan.template[p]
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = getattr(plan.keys[p], "shape", None)
    if isinstance(shape, tuple):
        return shape
    return None


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]
