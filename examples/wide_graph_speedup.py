"""A wide graph of GIL-releasing numpy work runs faster on the thread pool than inline.

The graph has ``--branches`` independent branches, each a chain of ``--depth`` matmuls
of ``--size`` x ``--size`` float64 matrices (16 x 4 of 384 x 384 by default), summed
at the end. The same graph runs on ``Engine("inline")`` and on
``Engine("threads", workers=2)``; the script prints the best time of each, the
speedup, and checks that both gave bitwise identical results.

    python examples/wide_graph_speedup.py [--fast] [--workers 2] [--repeat 5]

BLAS threads. numpy's matmul calls a BLAS library (OpenBLAS, MKL) that by default
starts its own thread per core *inside every matmul*. Then the "inline" run is already
parallel and the pool's threads fight BLAS's threads for the same cores, so the
comparison would measure oversubscription, not the scheduler. The variables below,
set before numpy is imported, pin BLAS to one thread so that all parallelism comes
from the engine running independent branches at once (numpy releases the GIL inside
matmul, so two pool threads really compute on two cores). When numpy was already
imported (as under pytest), ``threadpoolctl`` (installed with scikit-learn) limits
the BLAS pool for the duration of the measurement instead, if it is available.

For comparison, dask's threaded scheduler reaches about 1.9x on 2 workers for this
workload (ideal 2x; ``benchmarks/suite.py``, section ``parallel``, measures both).
The speedup needs two idle cores: on a loaded machine it is lower.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import dataflow as df  # noqa: E402
import scheduler  # noqa: E402


def build_wide_graph(branches: int, depth: int, size: int, seed: int = 0):
    """``sum_b (x_b @ W_b1 @ ... @ W_bdepth)``: the ``x_b`` are placeholders, the
    weights constants. Returns the graph, the feeds and the sum.

    The inputs are fed rather than constant because the engine folds constant
    subgraphs when it compiles a plan: an all-constant graph would be computed once,
    at plan time, and every timed run would only hand back the folded result."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(size)  # keeps the entries of the products of order one
    with df.Graph("wide") as graph:
        outputs = []
        feeds = {}
        for b in range(branches):
            h = df.placeholder(f"x{b}", (size, size), np.float64)
            feeds[h] = rng.standard_normal((size, size))
            for k in range(depth):
                w = df.constant(rng.standard_normal((size, size)) * scale, name=f"w{b}_{k}")
                h = h @ w
            outputs.append(h)
        total = df.add_n(outputs) if len(outputs) > 1 else outputs[0]
    return graph, feeds, total


def best_times(engines: dict[str, scheduler.Engine], fetches, feeds: dict,
               repeat: int) -> dict[str, tuple[float, np.ndarray]]:
    """Best wall time and value of ``repeat`` runs on each engine. Two warm-up runs each
    first (they also teach the engine's cost model that the matmuls are worth a pool
    thread); the timed runs alternate between engines so that a busy moment of the
    machine costs them alike."""
    values = {}
    for name, engine in engines.items():
        for _ in range(2):
            values[name] = engine.run(fetches, feeds)
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(repeat):
        for name, engine in engines.items():
            started = time.perf_counter()
            values[name] = engine.run(fetches, feeds)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: (best[name], values[name]) for name in engines}


def _blas_one_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--branches", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4, help="matmuls per branch")
    parser.add_argument("--size", type=int, default=384, help="matrix side")
    parser.add_argument("--workers", type=int, default=2, help="pool threads")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per executor")
    parser.add_argument("--fast", action="store_true",
                        help="CI-sized: 8 branches x 2 matmuls of 192 x 192, 3 timed runs")
    args = parser.parse_args(argv)
    if args.fast:
        args.branches, args.depth, args.size, args.repeat = 8, 2, 192, 3

    graph, feeds, total = build_wide_graph(args.branches, args.depth, args.size)
    matmuls = args.branches * args.depth
    flops = 2.0 * matmuls * args.size ** 3
    with _blas_one_thread():
        blas_threads = _blas_threads()
        with scheduler.Engine("inline") as inline, \
                scheduler.Engine("threads", workers=args.workers) as threads:
            timings = best_times({"inline": inline, "threads": threads}, total, feeds,
                                 args.repeat)
    (t_inline, v_inline), (t_threads, v_threads) = timings["inline"], timings["threads"]
    identical = v_inline.tobytes() == v_threads.tobytes()
    speedup = t_inline / t_threads

    print(f"graph: {args.branches} branches x {args.depth} matmuls of "
          f"{args.size}x{args.size} float64 ({len(graph)} nodes, {flops / 1e9:.2f} GFLOP)")
    print(f"BLAS threads: {blas_threads if blas_threads is not None else 'unknown'} "
          f"(OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')})")
    print(f"inline:             {t_inline * 1e3:8.2f} ms  ({flops / t_inline / 1e9:.2f} GFLOP/s)")
    print(f"threads ({args.workers} workers): {t_threads * 1e3:8.2f} ms  "
          f"({flops / t_threads / 1e9:.2f} GFLOP/s)")
    print(f"speedup: {speedup:.2f}x (ideal {min(args.workers, args.branches)}x)")
    print(f"results bitwise identical: {identical}")
    return {"inline_seconds": t_inline, "threads_seconds": t_threads, "speedup": speedup,
            "workers": args.workers, "nodes": len(graph), "matmuls": matmuls,
            "blas_threads": blas_threads, "identical": identical}


if __name__ == "__main__":
    main()
