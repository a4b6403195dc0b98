"""Scale-out: the same forward+gradient graph on a dask.distributed cluster, bitwise
identical to running it inline.

The graph is one SGD step of a tanh MLP (softmax cross-entropy, the gradients of every
weight and bias). ``scheduler.Engine("dask", workers=2)`` starts a ``LocalCluster`` of
two worker processes on loopback (127.0.0.1, no dashboard) and closes it with the
engine; the engine sends each run to the cluster as one dask graph (linear chains
fused into single tasks, large inputs scattered once). The script prints the cluster's
start-up time, the time per run on the cluster and inline, and checks that the loss
and every gradient are bitwise identical: gradient sums happen in a fixed order, never
in arrival order, so where a node runs cannot change its result.

    python examples/dask_scaleout.py [--workers 2] [--repeat 5] [--fast]

To use a cluster that is already running, pass ``--address tcp://host:8786``; its
workers need this package installed. Worker processes are started with
multiprocessing's spawn, which re-imports the main module: a script that starts a
local cluster needs the ``if __name__ == "__main__":`` guard at the bottom.

BLAS threads. dask's nanny starts every worker process with ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` set to 1 (the
``distributed.nanny.pre-spawn-environ`` setting), and OpenBLAS's multi-threaded matmul
does not always round like its single-threaded one (a 256x784 @ 784x512 product
differs in the last bits). So this script pins the driver's BLAS to one thread as
well, with the same variables set before numpy is imported (or ``threadpoolctl`` when
numpy was imported already, as under pytest): the comparison is then like for like.
With a different number of BLAS threads on each side, matmul results may differ by
an ulp, and so may everything computed from them.

dask.distributed costs about a millisecond per task and a network round trip per
run (see the dask table in the README's Benchmarks section, measured by
``benchmarks/bench_dask.py``), so a cluster pays off for graphs
whose nodes are large (big matmuls, many samples), not for small ones like this
demonstration's ``--fast`` setting.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # as dask's workers have it (see above)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import scheduler  # noqa: E402
from dataflow.models import build_mlp  # noqa: E402


def _blas_one_thread() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _engine(stack: contextlib.ExitStack, workers: int, address: str | None) -> scheduler.Engine:
    if address is None:
        return stack.enter_context(scheduler.Engine("dask", workers=workers))
    from scheduler.dask_executor import DaskExecutor

    # an executor object given to an engine is used, not owned: the stack closes it
    executor = stack.enter_context(DaskExecutor(address=address))
    return stack.enter_context(scheduler.Engine(executor))


def _timed_runs(engine: scheduler.Engine, fetches, feeds, repeat: int) -> tuple[list, float]:
    values = engine.run(fetches, feeds)  # first run: compiles (and, on dask, fuses) the plan
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        values = engine.run(fetches, feeds)
        best = min(best, time.perf_counter() - started)
    return values, best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--address", default=None, help="an existing scheduler's address")
    parser.add_argument("--sizes", default="784,512,512,10", help="layer sizes")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per executor")
    parser.add_argument("--fast", action="store_true",
                        help="CI-sized: sizes 64,32,10, batch 32, 2 timed runs")
    args = parser.parse_args(argv)
    if args.fast:
        args.sizes, args.batch, args.repeat = "64,32,10", 32, 2
    sizes = tuple(int(s) for s in args.sizes.split(","))

    model = build_mlp(sizes)
    params = model.init_params(seed=0)
    rng = np.random.default_rng(1)
    feeds = model.feeds(params, rng.standard_normal((args.batch, sizes[0])),
                        rng.integers(0, sizes[-1], args.batch))
    fetches = [model.loss, *model.grads]

    with _blas_one_thread(), scheduler.Engine("inline") as engine:
        inline_values, inline_seconds = _timed_runs(engine, fetches, feeds, args.repeat)

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        engine = _engine(stack, args.workers, args.address)
        engine.run(model.loss, feeds)  # starts the cluster (or connects) on first use
        startup_seconds = time.perf_counter() - started
        dask_values, dask_seconds = _timed_runs(engine, fetches, feeds, args.repeat)

    identical = all(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                    for a, b in zip(inline_values, dask_values, strict=True))
    where = args.address or f"LocalCluster of {args.workers} worker processes on 127.0.0.1"
    print(f"MLP {'-'.join(map(str, sizes))}, batch {args.batch}: loss and "
          f"{len(model.grads)} gradients ({len(model.graph)} graph nodes)")
    print(f"dask cluster: {where}; first run including start-up {startup_seconds:.2f} s")
    print(f"per run: inline {inline_seconds * 1e3:.2f} ms, dask {dask_seconds * 1e3:.2f} ms")
    print(f"loss {float(dask_values[0]):.6f}; dask results bitwise identical to inline: "
          f"{identical}")
    return {"identical": identical, "loss": float(dask_values[0]),
            "inline_seconds": inline_seconds, "dask_seconds": dask_seconds,
            "startup_seconds": startup_seconds, "workers": args.workers,
            "outputs": len(fetches)}


if __name__ == "__main__":
    main()
