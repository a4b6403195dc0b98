"""``python -m dataflow.bench.bench_rewrite``: what ``simplify`` removes from the MLP
gradient graph, and what gradient checkpointing saves on a 200-layer chain.

1. Node counts of the MLP 784-512-512-10 (loss and parameter gradients) before and
   after ``df.simplify``, per op, for an unknown and a fixed batch size; the tasks of
   the engine's plan with ``simplify`` on and off; the time ``simplify`` takes; and
   whether the fetched values are bitwise equal.
2. A chain ``h = tanh(h * w_i)`` of 200 layers on 131072 float64 (1 MiB activations),
   ``loss = sum(h)``, gradients with respect to ``x`` and every ``w_i``: peak traced
   memory (tracemalloc: numpy reports its buffers to it), and best-of wall and CPU time
   of one engine run, without and with ``checkpoints="auto"``, on the inline and threads
   executors; gradients compared bitwise.
3. ``simplify`` on a 100,000-node chain.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable

import numpy as np

import dataflow as df
import scheduler
from dataflow.checkpointing import auto_checkpoints
from dataflow.graph import ancestors
from dataflow.models import build_mlp, build_tanh_chain

MIB = 2**20


def best_of(fn: Callable[[], object], reps: int) -> float:
    return best_of_both(fn, reps)[0]


def best_of_both(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Best wall time and best CPU time of this process (all its threads) over ``reps``
    calls: CPU time is the work done, which other load on the machine barely changes."""
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        gc.collect()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def same_bits(a: object, b: object) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- 1. the MLP gradient graph -------------------------------------------------------------

def mlp_counts(batch: int | None, reps: int) -> None:
    model = build_mlp((784, 512, 512, 10), batch=batch)
    fetches = [model.loss, *model.grads]
    before = ancestors(fetches)
    start = time.perf_counter()
    after = df.simplify(fetches)
    took = time.perf_counter() - start
    new_graph = after[0].graph
    rng = np.random.default_rng(0)
    n = batch or 256
    feeds = model.feeds(model.init_params(seed=0), rng.normal(size=(n, 784)),
                        rng.integers(0, 10, n))
    with scheduler.Engine("inline", simplify=False) as off, scheduler.Engine("inline") as on:
        plan_off, plan_on = off.plan(fetches, feeds), on.plan(fetches, feeds)
        equal = all(same_bits(a, b) for a, b in zip(off.run(fetches, feeds),
                                                    on.run(fetches, feeds), strict=True))
        t_off = best_of(lambda: off.run(fetches, feeds), reps)
        t_on = best_of(lambda: on.run(fetches, feeds), reps)
    print(f"MLP 784-512-512-10, batch {batch if batch else 'unknown (None)'}: "
          f"loss + {len(model.grads)} gradients")
    print(f"  nodes        {len(before):4d} -> {len(new_graph):4d}   "
          f"(simplify took {took * 1e3:.1f} ms)")
    print(f"  plan tasks   {len(plan_off.compute):4d} -> {len(plan_on.compute):4d}   "
          f"(+ {len(plan_off) - len(plan_off.compute)} -> "
          f"{len(plan_on) - len(plan_on.compute)} literals and feeds)")
    print(f"  run (inline) {t_off * 1e3:7.2f} ms -> {t_on * 1e3:7.2f} ms   "
          f"bitwise equal: {equal}")
    old_ops, new_ops = Counter(n.op.name for n in before), Counter(n.op.name for n in new_graph)
    changed = [(op, old_ops[op], new_ops[op]) for op in sorted(set(old_ops) | set(new_ops))
               if old_ops[op] != new_ops[op]]
    print("  by op        " + ", ".join(f"{op} {a}->{b}" for op, a, b in changed))


# -- 2. checkpointing on a 200-layer chain -----------------------------------------------------

def chain_graph(layers: int, size: int, checkpoints: object):
    chain = build_tanh_chain(layers, size, checkpoints)
    return [chain.loss, *chain.grads], chain.feeds()


def traced_peak(engine: scheduler.Engine, fetches: list, feeds: dict) -> tuple[int, list]:
    engine.run(fetches, feeds)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        values = engine.run(fetches, feeds)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return peak, values


def checkpointing(layers: int, size: int, reps: int) -> None:
    activation = size * 8
    print(f"\nchain of {layers} layers h = tanh(h * w_i), {size} float64 "
          f"({activation / MIB:.2f} MiB activations); storing every activation: "
          f"{layers * activation / MIB:.0f} MiB")
    plain = chain_graph(layers, size, None)
    checked = chain_graph(layers, size, "auto")
    loss = plain[0][0]
    points = auto_checkpoints([loss], [p for p in plain[1] if p.op.name == "placeholder"])
    forward = sum(1 for n in loss.graph if n.op.name in ("tanh", "multiply") and n.id < loss.id)
    print(f"  checkpoints='auto': {len(points)} checkpoints on a forward chain of {forward} "
          f"nodes (sqrt = {forward ** 0.5:.1f})")
    print(f"  {'executor':9s} {'peak plain':>11s} {'peak ckpt':>10s} {'ratio':>6s} "
          f"{'vs all act.':>11s} {'wall plain':>10s} {'wall ckpt':>9s} {'ratio':>5s} "
          f"{'cpu plain':>9s} {'cpu ckpt':>8s} {'ratio':>5s}  bitwise")
    for executor in ("inline", "threads"):
        with scheduler.Engine(executor, workers=2) as engine:
            peak_plain, want = traced_peak(engine, *plain)
            peak_ckpt, got = traced_peak(engine, *checked)
            wall_plain, cpu_plain = best_of_both(lambda: engine.run(*plain), reps)
            wall_ckpt, cpu_ckpt = best_of_both(lambda: engine.run(*checked), reps)
        equal = all(same_bits(a, b) for a, b in zip(want, got, strict=True))
        print(f"  {executor:9s} {peak_plain / MIB:7.1f} MiB {peak_ckpt / MIB:6.1f} MiB "
              f"{peak_ckpt / peak_plain:6.1%} {peak_ckpt / (layers * activation):11.1%} "
              f"{wall_plain * 1e3:7.0f} ms {wall_ckpt * 1e3:6.0f} ms {wall_ckpt / wall_plain:5.2f} "
              f"{cpu_plain * 1e3:6.0f} ms {cpu_ckpt * 1e3:5.0f} ms {cpu_ckpt / cpu_plain:5.2f}"
              f"  {equal}")


# -- 3. scale --------------------------------------------------------------------------------

def long_chain(n: int) -> None:
    with df.Graph():
        x = df.placeholder("x", (4,))
        h = x
        start = time.perf_counter()
        for i in range(n):
            h = df.tanh(h) if i % 2 else h * 1.0
        built = time.perf_counter() - start
    start = time.perf_counter()
    new = df.simplify(h)
    took = time.perf_counter() - start
    print(f"\nsimplify of a {n}-op chain (half of them x*1): {took:.2f} s "
          f"({len(new.graph)} nodes left; building it took {built:.2f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataflow.bench.bench_rewrite",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--size", type=int, default=131072)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--chain", type=int, default=100_000)
    args = parser.parse_args(argv)
    mlp_counts(None, args.reps)
    mlp_counts(256, args.reps)
    checkpointing(args.layers, args.size, args.reps)
    long_chain(args.chain)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
