"""The engine embedded in an asyncio application: many concurrent graph runs, one
responsive event loop.

A toy prediction service: one graph (a tanh MLP classifier, 64-128-128-10, built once)
and ``--requests`` concurrent "requests", each a coroutine that brings its own batch
of inputs and awaits ``engine.run_async(...)``. While they are served, a ticker task
wakes every millisecond and records how late it woke: that lateness is the event
loop's lag, the time anything else on the loop (accepting connections, answering a
health check) would have waited. The script prints the throughput, the latency of
the requests and the loop's lag, and checks every answer against the same graph run
synchronously.

    python examples/asyncio_service.py [--requests 200] [--concurrency 4] [--fast]

Why the loop stays free: ``run_async`` drives each run from a coordinator thread of
the engine and the kernels run there or in the pool, never on the loop thread; the
loop only awaits a future. (Calling the blocking ``engine.run`` inside a coroutine
would stall the loop for the whole run.)

Admission control still helps. The engine drives at most a few runs at a time (its
coordinator threads; the rest queue inside the engine), and those threads take turns
holding the GIL for the engine's Python bookkeeping, so the loop thread waits its turn
behind them. An ``asyncio.Semaphore`` that lets only ``--concurrency`` runs into the
engine at a time keeps the queue on the loop, where waiting costs nothing. The script
serves the requests both ways and prints both figures.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

import scheduler
from dataflow.models import build_mlp


async def _ticker(interval: float, lags: list[float], stop: asyncio.Event) -> None:
    """Sleep ``interval`` again and again; record how much later than asked each wake-up is."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked = loop.time() + interval
        await asyncio.sleep(interval)
        lags.append(max(0.0, loop.time() - asked))


async def serve(engine: scheduler.Engine, model, params: list[np.ndarray],
                inputs: list[np.ndarray], tick: float, concurrency: int) -> dict:
    """Answer every request concurrently, with at most ``concurrency`` runs in the
    engine at a time (0: no limit), while the ticker measures the loop's lag."""
    admission = asyncio.Semaphore(concurrency) if concurrency > 0 else None
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(tick, lags, stop))
    await asyncio.sleep(tick * 3)  # a few ticks of an idle loop first, as a baseline
    idle_lags = len(lags)

    async def request(x: np.ndarray) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        feeds = model.feeds(params, x)
        if admission is None:
            logits = await engine.run_async(model.logits, feeds)
        else:
            async with admission:
                logits = await engine.run_async(model.logits, feeds)
        return np.argmax(logits, axis=1), time.perf_counter() - started

    started = time.perf_counter()
    answers = await asyncio.gather(*(request(x) for x in inputs))
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    busy_lags = lags[idle_lags:] or [0.0]
    return {"predictions": [a for a, _ in answers], "latencies": [t for _, t in answers],
            "elapsed": elapsed, "max_lag": max(busy_lags),
            "p99_lag": float(np.percentile(busy_lags, 99)), "ticks": len(busy_lags)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--requests", type=int, default=200, help="concurrent requests")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="most runs in the engine at once (0: no limit)")
    parser.add_argument("--batch", type=int, default=16, help="inputs per request")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--executor", default="asyncio", choices=["asyncio", "threads", "inline"],
                        help="the engine's executor (asyncio: a thread pool for run_async)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tick", type=float, default=0.001, help="ticker period in seconds")
    parser.add_argument("--fast", action="store_true", help="CI-sized: 40 requests")
    args = parser.parse_args(argv)
    if args.fast:
        args.requests = 40

    model = build_mlp((64, args.hidden, args.hidden, 10))
    params = model.init_params(seed=0)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((args.batch, 64)) for _ in range(args.requests)]

    limits = [args.concurrency] + ([0] if args.concurrency > 0 else [])
    results = {}
    with scheduler.Engine(args.executor, workers=args.workers) as engine:
        engine.run(model.logits, model.feeds(params, inputs[0]))  # compile the plan once
        for limit in limits:
            results[limit] = asyncio.run(serve(engine, model, params, inputs, args.tick, limit))
        expected = [np.argmax(engine.run(model.logits, model.feeds(params, x)), axis=1)
                    for x in inputs]

    print(f"{args.requests} concurrent requests, each a batch of {args.batch} through an MLP "
          f"64-{args.hidden}-{args.hidden}-10 (executor {args.executor!r}, "
          f"{args.workers} workers)")
    passes = []
    for limit, result in results.items():
        correct = all(np.array_equal(p, e) for p, e in zip(result["predictions"], expected))
        latencies = np.array(result["latencies"])
        throughput = args.requests / result["elapsed"]
        print(f"runs in flight {'at most ' + str(limit) if limit else 'unlimited'}:")
        print(f"  served in {result['elapsed'] * 1e3:.1f} ms, throughput {throughput:.0f} "
              f"requests/s")
        print(f"  request latency: median {np.median(latencies) * 1e3:.2f} ms, "
              f"max {latencies.max() * 1e3:.2f} ms")
        print(f"  event loop lag ({result['ticks']} ticks of {args.tick * 1e3:g} ms): "
              f"max {result['max_lag'] * 1e3:.2f} ms, p99 {result['p99_lag'] * 1e3:.2f} ms")
        print(f"  answers match a synchronous run: {correct}")
        passes.append({"concurrency": limit, "elapsed_seconds": result["elapsed"],
                       "throughput": throughput, "median_latency": float(np.median(latencies)),
                       "max_latency": float(latencies.max()), "max_lag": result["max_lag"],
                       "p99_lag": result["p99_lag"], "ticks": result["ticks"],
                       "correct": correct})
    first = passes[0]
    return {"requests": args.requests, "passes": passes, "throughput": first["throughput"],
            "max_lag": first["max_lag"], "correct": all(p["correct"] for p in passes)}


if __name__ == "__main__":
    main()
