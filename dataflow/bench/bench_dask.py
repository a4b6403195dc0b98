"""Our dask executor against raw ``client.get`` and against our thread pool.

``python -m dataflow.bench.bench_dask`` starts one ``LocalCluster`` (2 worker processes of
one thread each, loopback) and times, per workload, the median wall time of a run:

- ``threads``: ``Engine("threads", workers=2)``, no cluster at all;
- ``dask executor``: ``Engine(DaskExecutor(client=client))``, which fuses linear chains,
  scatters large inputs and submits the whole plan as one graph;
- ``raw client.get``: the equivalent dask graph, one task per node with the inputs in
  the graph (what a dask user would write), through ``client.get`` on the same client.

The goal is ``dask executor / raw client.get <= 1.3``. Workloads: the forward and
gradient graph of the anchor MLP (784-512-512-10, batch 256, float64) and the anchor's
16 branches x 4 matmuls 384x384 (the same dict for our engine and for dask).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import pin_blas_threads

WARMUP, REPEAT = 2, 7


def _median_seconds(fn: Callable[[], Any], repeat: int = REPEAT) -> float:
    from .suite import median_of

    return median_of(fn, reps=repeat, warmup=WARMUP)


def _plan_as_dask_graph(plan: Any, values: list) -> tuple[dict, list]:
    """One dask task per plan node; literals and fed values as data in the graph."""
    dsk: dict = {}
    for p in range(len(plan)):
        if plan.is_source[p]:
            dsk[f"n{p}"] = values[p]
        else:
            dsk[f"n{p}"] = (plan.kernels[p], *[f"n{a}" for a in plan.args[p]])
    return dsk, [f"n{p}" for p in plan.fetch_positions]


Workload = tuple[str, Any, Callable[[Any], Any], Callable[[Any], Any]]  # name, plan, ours, raw


def _mlp_workload() -> Workload:
    import scheduler
    from dataflow.models import build_mlp

    from .workloads import B, C, D, H, mlp_params

    model = build_mlp((D, H, H, C), np.float64, batch=B)
    params, x, y = mlp_params(np.float64)
    feeds = model.feeds(params, x, y)
    fetches = [model.loss, *model.grads]
    with scheduler.Engine("inline") as inline:
        plan = inline.plan(fetches, feeds)
        values = list(plan.template)
        for p, key, check in plan.feed_slots:
            values[p] = feeds[key] if check is None else check(feeds[key])
    dsk, keys = _plan_as_dask_graph(plan, values)
    return ("MLP 784-512-512-10 fwd+grad", plan,
            lambda engine: engine.run(fetches, feeds),
            lambda client: client.get(dsk, keys))


def _parallel_workload() -> Workload:
    from scheduler import Plan
    from scheduler.taskgraph import TaskGraphSource

    from .workloads import parallel_graph

    dsk, key = parallel_graph()
    plan = Plan([key], [], TaskGraphSource(dsk).spec)
    return ("16 branches x 4 matmuls 384^2", plan,
            lambda engine: engine.get(dsk, key),
            lambda client: client.get(dsk, key))


def _check_same(got: Any, want: Any, name: str) -> None:
    got = got if isinstance(got, list) else [got]
    want = want if isinstance(want, list) else [want]
    for a, b in zip(got, want, strict=True):
        if np.asarray(a).tobytes() != np.asarray(b).tobytes():
            raise AssertionError(f"{name}: the dask executor's result differs from threads'")


def main() -> int:
    import distributed

    import scheduler
    from scheduler.dask_executor import DaskExecutor

    # One BLAS thread here and in each worker (they inherit the variables), as in the
    # rest of the suite.
    pin_blas_threads(1)
    workers = 2
    rows = []
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", protocol="tcp://",
                                       dashboard_address=None,
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = distributed.Client(cluster, set_as_default=False)
    try:
        executor = DaskExecutor(client=client)
        for make in (_mlp_workload, _parallel_workload):
            name, plan, ours, raw = make()
            with scheduler.Engine("threads", workers=workers) as engine:
                want = ours(engine)
                threads = _median_seconds(lambda e=engine, f=ours: f(e))
            with scheduler.Engine(executor) as engine:
                _check_same(ours(engine), want, name)
                dask_ours = _median_seconds(lambda e=engine, f=ours: f(e))
            tasks = f"{len(executor.layout(plan).chains)}/{len(plan.compute)}"
            with warnings.catch_warnings():  # dask's advice on large graphs: that is the point
                warnings.simplefilter("ignore", UserWarning)
                dask_raw = _median_seconds(lambda f=raw: f(client))
            rows.append((name, threads, dask_ours, dask_raw, tasks))
        executor.shutdown()
    finally:
        client.close()
        cluster.close()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"dask executor vs raw client.get and vs threads: {workers} worker processes x 1 "
          f"thread, loopback; median of {REPEAT} runs; load average {load:.1f}")
    head = (f"{'workload':32s} {'threads':>9s} {'dask exec':>10s} {'raw get':>9s} "
            f"{'exec/raw':>9s} {'tasks/nodes':>12s}")
    print(head)
    print("-" * len(head))
    for name, threads, dask_ours, dask_raw, tasks in rows:
        print(f"{name:32s} {threads * 1e3:7.1f}ms {dask_ours * 1e3:8.1f}ms "
              f"{dask_raw * 1e3:7.1f}ms {dask_ours / dask_raw:8.2f}x {tasks:>12s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
