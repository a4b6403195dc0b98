"""Profile one training step of a 784-512-512-10 tanh MLP (batch 256, softmax
cross-entropy, forward + gradients of every weight and bias) on the thread pool, and
write a Chrome trace, a text summary and a Gantt chart.

    python examples/profile_mlp_step.py [--out profile-out] [--fast] [--workers 2]

Open ``trace.json`` in https://ui.perfetto.dev (or chrome://tracing). The data is
random: this measures scheduling, not learning.

The first runs of a plan teach the engine which nodes are cheap (run inline on the
driving thread) and which are worth a pool thread; the profiled step is the one after
``--warmup`` such runs. Note that numpy's BLAS may start its own threads inside each
matmul: on a small machine, ``OMP_NUM_THREADS=1`` leaves the parallelism to the pool.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import dataflow as df
import scheduler


def build_mlp_step(sizes: list[int], dtype: np.dtype, seed: int = 0):
    """The graph of one step: placeholders, parameters (constants), loss, gradients."""
    rng = np.random.default_rng(seed)
    with df.Graph() as graph:
        x = df.placeholder("x", (None, sizes[0]), dtype)
        labels = df.placeholder("labels", (None,), np.int64)
        params = []
        h = x
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            w = df.constant((rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in))
                            .astype(dtype), name=f"w{i}")
            b = df.constant(np.zeros(fan_out, dtype), name=f"b{i}")
            params += [w, b]
            h = h @ w + b
            if i < len(sizes) - 2:
                h = df.tanh(h)
        loss = df.softmax_cross_entropy(h, labels)
        grads = df.gradients(loss, params)
    return graph, x, labels, loss, grads


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="profile-out", help="output directory")
    parser.add_argument("--fast", action="store_true",
                        help="small sizes (64-32-32-10, batch 32) for a quick check")
    parser.add_argument("--workers", type=int, default=None, help="pool threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled runs first")
    args = parser.parse_args(argv)

    sizes, batch = ([64, 32, 32, 10], 32) if args.fast else ([784, 512, 512, 10], 256)
    dtype = np.dtype(args.dtype)
    graph, x, labels, loss, grads = build_mlp_step(sizes, dtype)
    rng = np.random.default_rng(1)
    feeds = {x: rng.standard_normal((batch, sizes[0])).astype(dtype),
             labels: rng.integers(0, sizes[-1], batch)}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prof = scheduler.Profiler()
    with scheduler.Engine("threads", workers=args.workers) as engine:
        for _ in range(args.warmup):
            engine.run([loss, *grads], feeds)
        value, *_ = engine.run([loss, *grads], feeds, callbacks=[prof])

    title = (f"MLP {'-'.join(map(str, sizes))}, batch {batch}, {dtype}: one step "
             f"({len(prof.records)} nodes, {prof.wall_time * 1e3:.2f} ms)")
    paths = {
        "trace": prof.to_chrome_trace(out / "trace.json"),
        "gantt_png": prof.plot_gantt(out / "gantt.png", title=title),
        "gantt_svg": prof.plot_gantt(out / "gantt.svg", title=title),
    }
    summary = f"{title}\nloss {float(value):.4f}\n\n{prof.summary()}\n"
    summary_path = out / "summary.txt"
    summary_path.write_text(summary, encoding="utf-8")
    paths["summary"] = os.fspath(summary_path)

    print(summary)
    print("wrote:")
    for what, path in paths.items():
        print(f"  {what:<10} {path}")
    print("open the trace in https://ui.perfetto.dev or chrome://tracing")
    sys.stdout.flush()
    return {"profiler": prof, "paths": paths, "loss": float(value)}


if __name__ == "__main__":
    main()
