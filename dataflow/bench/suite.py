"""The benchmark suite: each workload measured for this project and for its anchor in
the same run, reported as ratios against the targets of the performance issue.

BLAS is pinned to one thread for the whole suite (``dataflow.bench.pin_blas_threads``,
called by ``dataflow.bench.__main__``), so that inter-op parallelism is what the threads executor
adds and both sides of every ratio run the same kernels.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import dataflow as df
import scheduler

from . import workloads as w


@dataclass
class Row:
    workload: str
    ours: str
    ours_value: float
    anchor: str
    anchor_value: float
    unit: str
    target: str
    ok: bool | None

    @property
    def ratio(self) -> float:
        return self.ours_value / self.anchor_value if self.anchor_value else float("nan")


def best_of(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def median_of(fn: Callable[[], object], reps: int = 15, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: list[Callable[[], object]], reps: int = 15,
                warmup: int = 2) -> list[float]:
    """Median time of each of ``fns``, measured round-robin (one call of each per round),
    so that a slow phase of a shared machine hits every contender alike. Each round
    starts one contender further on: a call runs measurably faster or slower depending
    on what ran just before it (caches, the allocator's free lists), and rotating gives
    every contender every predecessor equally often."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    k = len(fns)
    for r in range(reps):
        for i in range(k):
            j = (r + i) % k
            start = time.perf_counter()
            fns[j]()
            times[j].append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


# -- 1. trivial-task graphs through scheduler.get ------------------------------------------

def overhead(n: int = 20_000) -> list[Row]:
    import dask
    import dask.threaded

    rows = []
    for name, (dsk, out) in [("chain", w.chain(n)), ("fan", w.fan(n // 2)),
                             ("layered", w.layered(n))]:
        m = len(dsk)
        loop = min(w.plain_loop_seconds(dsk) for _ in range(3)) / m
        dask_thr = best_of(lambda d=dsk, o=out: dask.threaded.get(d, o, num_workers=2),
                           reps=3) / m
        with scheduler.Engine("inline") as inline, scheduler.Engine("threads", workers=2) as thr:
            ours_inline = best_of(lambda d=dsk, o=out: inline.get(d, o), reps=7) / m
            ours_thr = best_of(lambda d=dsk, o=out: thr.get(d, o), reps=7) / m
        rows.append(Row(f"{name} {m} trivial tasks", "threads get", ours_thr * 1e6,
                        "dask.threaded.get(2)", dask_thr * 1e6, "us/node",
                        "<= 1/20", ours_thr * 20 <= dask_thr))
        rows.append(Row(f"{name} {m} trivial tasks", "inline get", ours_inline * 1e6,
                        "plain Python loop", loop * 1e6, "us/node", "<= 6x",
                        ours_inline <= 6 * loop))
    return rows


# -- 2. tiny-op chain forward + gradient ---------------------------------------------------

def tiny_ops() -> list[Row]:
    with df.Graph():
        x = df.placeholder("x", (4,))
        y = df.sum(w.tiny_chain((df.sin, df.multiply, df.add), x))
        (gx,) = df.gradients(y, [x])
    feeds = {x: w.TINY_X0}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(1)

        def anchor_step():
            tx = torch.tensor(w.TINY_X0, requires_grad=True)
            h = w.tiny_chain((torch.sin, torch.mul, torch.add), tx)
            return torch.autograd.grad(h.sum(), tx)[0]

        name = "torch autograd"
    else:
        def anchor_step():
            return w.tiny_chain((np.sin, np.multiply, np.add), w.TINY_X0)

        name = "numpy forward only (torch missing)"
    rows = []
    with scheduler.Engine("inline") as inline, scheduler.Engine("threads", workers=2) as thr:
        times = interleaved([anchor_step, lambda: inline.run([y, gx], feeds),
                             lambda: thr.run([y, gx], feeds)])
    anchor, *ours = (t / w.TINY_N for t in times)
    results = dict(zip(("inline", "threads"), ours))
    workload = f"tiny-op chain {w.TINY_N} fwd+grad"
    for kind, limit in (("inline", 0.5), ("threads", 0.6)):
        ok = results[kind] <= limit * anchor if torch is not None else None
        rows.append(Row(workload, kind, results[kind] * 1e6, name, anchor * 1e6, "us/op",
                        f"<= {limit}x", ok))
    return rows + tiny_ops_targets(y, gx, feeds, workload)


def tiny_ops_targets(y: df.Node, gx: df.Node, feeds: dict, workload: str) -> list[Row]:
    """The chain's absolute targets, timed among themselves (not after torch's steps,
    which leave the allocator and caches slower for whatever runs next): the compiled
    plan (<= 0.35 µs/op) and the fused plan (<= 0.1 µs/op). Context: hand-written numpy
    making the same ufunc calls, and those calls alone replayed from a list, the floor of
    any plan that calls numpy once per op."""
    x0 = feeds[next(iter(feeds))]
    ufunc_calls = w.tiny_chain_ufunc_calls(x0)
    with scheduler.Engine("inline") as inline, scheduler.Engine("inline", fuse=True) as fused:
        fused.run([y, gx], feeds)  # compiles the region (or loads it from the cache)
        hand, floor, compiled, fused_t = (t / w.TINY_N for t in interleaved([
            lambda: w.tiny_chain_numpy_grad(x0), ufunc_calls,
            lambda: inline.run([y, gx], feeds), lambda: fused.run([y, gx], feeds)], reps=25))
    return [Row(workload, "inline (compiled plan)", compiled * 1e6, "target", 0.35, "us/op",
                "<= 0.35 us/op", compiled * 1e6 <= 0.35),
            Row(workload, "inline (compiled plan)", compiled * 1e6,
                "numpy hand-written, same ufunc calls", hand * 1e6, "us/op", "(context)", None),
            Row(workload, "inline (compiled plan)", compiled * 1e6,
                "its ufunc calls alone, operands prepared", floor * 1e6, "us/op", "(context)",
                None),
            Row(workload, "inline fuse=True", fused_t * 1e6, "target", 0.1, "us/op",
                "<= 0.1 us/op", fused_t * 1e6 <= 0.1)]


# -- 3. MLP forward + gradient ---------------------------------------------------------------

def mlp_graph(dtype):
    model = df.models.build_mlp((w.D, w.H, w.H, w.C), dtype=dtype, batch=w.B)
    return model


def mlp() -> list[Row]:
    rows = []
    for dtype in (np.float32, np.float64):
        params, x, y = w.mlp_params(dtype)
        model = mlp_graph(dtype)
        feeds = model.feeds(params, x, y)
        fetches = [model.loss, *model.grads]
        with scheduler.Engine("inline") as inline, scheduler.Engine("threads", workers=2) as thr:
            numpy_time, *ours = interleaved([
                lambda p=params, x=x, y=y: w.numpy_mlp_step(p, x, y),
                lambda e=inline, f=fetches, d=feeds: e.run(f, d),
                lambda e=thr, f=fetches, d=feeds: e.run(f, d),
            ], reps=30)
        for kind, limit, t in (("inline", 1.03, ours[0]), ("threads", 1.05, ours[1])):
            rows.append(Row(f"MLP 784-512-512-10 {np.dtype(dtype).name}", kind, t * 1e3,
                            "numpy hand backprop", numpy_time * 1e3, "ms", f"<= {limit}x",
                            t <= limit * numpy_time))
    return rows


def mlp_blas_threads(threads: int = 2) -> list[Row]:
    """The float32 MLP step with BLAS on ``threads`` threads for every contender: the
    engines through ``intra_op_threads`` (threads(2) then runs 2 x 2 BLAS threads when
    both workers multiply at once), hand numpy through threadpoolctl."""
    from threadpoolctl import threadpool_limits

    params, x, y = w.mlp_params(np.float32)
    model = mlp_graph(np.float32)
    feeds = model.feeds(params, x, y)
    fetches = [model.loss, *model.grads]
    with threadpool_limits(limits=threads), \
            scheduler.Engine("inline", intra_op_threads=threads) as inline, \
            scheduler.Engine("threads", workers=2, intra_op_threads=threads) as thr:
        numpy_time, *ours = interleaved([
            lambda: w.numpy_mlp_step(params, x, y),
            lambda: inline.run(fetches, feeds),
            lambda: thr.run(fetches, feeds),
        ], reps=30)
    return [Row(f"MLP 784-512-512-10 float32, BLAS {threads} threads", kind, t * 1e3,
                f"numpy hand backprop, BLAS {threads} threads", numpy_time * 1e3, "ms",
                "(context)", None)
            for kind, t in (("inline", ours[0]), ("threads(2)", ours[1]))]


def tf1() -> list[Row]:
    from .anchors import tf1_rows

    return tf1_rows()


def pytensor() -> list[Row]:
    from .anchors import pytensor_rows

    return pytensor_rows()


def mlp_memory() -> list[Row]:
    params, x, y = w.mlp_params(np.float64)
    model = mlp_graph(np.float64)
    feeds = model.feeds(params, x, y)
    fetches = [model.loss, *model.grads]

    def peak(fn) -> int:
        fn()
        gc.collect()
        tracemalloc.start()
        fn()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    numpy_peak = peak(lambda: w.numpy_mlp_step([p.copy() for p in params], x, y))
    with scheduler.Engine("inline") as engine:
        ours = peak(lambda: engine.run(fetches, feeds))
    return [Row("MLP step peak memory (tracemalloc)", "inline", ours / 2**20,
                "numpy hand backprop", numpy_peak / 2**20, "MiB", "<= 1.15x",
                ours <= 1.15 * numpy_peak)]


# -- 4. inter-op parallelism ---------------------------------------------------------------

def parallel() -> list[Row]:
    import dask
    import dask.threaded

    dsk, out = w.parallel_graph()
    with scheduler.Engine("inline") as inline, scheduler.Engine("threads", workers=2) as thr:
        sequential_dask, dask_thr, ours_inline, ours_thr = interleaved([
            lambda: dask.get(dsk, out),
            lambda: dask.threaded.get(dsk, out, num_workers=2),
            lambda: inline.get(dsk, out),
            lambda: thr.get(dsk, out),
        ], reps=15, warmup=2)
    speedup = ours_inline / ours_thr
    dask_speedup = sequential_dask / dask_thr
    ceiling = w.raw_branch_speedup()
    return [Row("16 branches x 4 matmuls 384^2", "threads(2) speedup over inline", speedup,
                "dask threaded(2) speedup", dask_speedup, "x",
                ">= 1.9x and >= dask", speedup >= 1.9 and speedup >= dask_speedup),
            Row("16 branches x 4 matmuls 384^2", "threads(2) speedup over inline", speedup,
                "machine: 2 threads, one branch each, no scheduler", ceiling, "x",
                "(context)", None)]


# -- 5. building gradients -----------------------------------------------------------------

def gradient_build() -> list[Row]:
    times = {}
    for n in (10_000, 100_000):
        with df.Graph():
            x = df.placeholder("x", (3,))
            h = x
            for i in range(n):
                h = df.sin(h) if i % 2 else h * 1.0001
            y = df.sum(h)
            start = time.perf_counter()
            df.gradients(y, [x])
            times[n] = time.perf_counter() - start
    ratio = times[100_000] / times[10_000]
    return [Row("df.gradients on a 100k-node chain", "100k build", times[100_000], "10k build",
                times[10_000], "s", "<= 3 s, ratio <= 12",
                times[100_000] <= 3 and ratio <= 12)]


# -- 6. first contact: unknown tasks, I/O, GIL-bound work, timeouts (first_contact.py) ------

def _first_contact(section: str) -> list[Row]:
    from . import first_contact  # it builds on this module's rows and timers

    return first_contact.SECTIONS[section]()


def _dask_workloads() -> list[Row]:
    from .bench_dask_workloads import dask_workloads  # dask's collections, through get

    return dask_workloads()


# -- 7. per-call overhead of a cached plan (compiled plans) --------------------------------

def call_overhead(calls: int = 2000) -> list[Row]:
    """``engine.run`` of a one-add graph on the inline executor, per call, against the
    numpy call it makes."""
    with df.Graph():
        a = df.placeholder("a", ())
        b = df.placeholder("b", ())
        c = a + b
    feeds = {a: np.array(1.0), b: np.array(2.0)}
    values = list(feeds.values())

    def loop(fn: Callable[[], object]) -> Callable[[], None]:
        def run_many() -> None:
            for _ in range(calls):
                fn()
        return run_many

    with scheduler.Engine("inline") as inline:
        ours, anchor = interleaved([loop(lambda: inline.run(c, feeds)),
                                    loop(lambda: np.add(*values))], reps=21, warmup=2)
    ours, anchor = ours / calls, anchor / calls
    return [Row("one scalar add per call", "inline run", ours * 1e6, "numpy np.add alone",
                anchor * 1e6, "us/call", "<= 1.5 us", ours <= 1.5e-6)]


# -- 8. elementwise-heavy forward + gradient (Engine(fuse=True)) ----------------------------

def elementwise() -> list[Row]:
    with df.Graph():
        x = df.placeholder("x", (w.EW_N,), "float32")
        y = df.placeholder("y", (w.EW_N,), "float32")
        loss = df.sum(w.elementwise_forward(df, x, y))
        gx, gy = df.gradients(loss, [x, y])
    x0, y0 = w.elementwise_inputs()
    feeds = {x: x0, y: y0}
    fetches = [loss, gx, gy]
    with scheduler.Engine("inline", fuse=True) as fused, scheduler.Engine("inline") as plain:
        times = interleaved([lambda: w.numpy_elementwise_step(x0, y0),
                             lambda: fused.run(fetches, feeds),
                             lambda: plain.run(fetches, feeds)], reps=9, warmup=2)
    anchor, ours_fused, ours_plain = (t * 1e3 for t in times)
    name = f"10 elementwise ops on {w.EW_N // 10**6}M float32, fwd+grad"
    return [Row(name, "inline fuse=True", ours_fused, "numpy hand-written", anchor, "ms",
                "<= 0.5x", ours_fused <= 0.5 * anchor),
            Row(name, "inline unfused", ours_plain, "numpy hand-written", anchor, "ms",
                "(context)", None)]


SECTIONS = {
    "overhead": overhead,
    "tinyops": tiny_ops,
    "mlp": mlp,
    "mlp_blas2": mlp_blas_threads,
    "memory": mlp_memory,
    "parallel": parallel,
    "gradients": gradient_build,
    "io": functools.partial(_first_contact, "io"),
    "gil": functools.partial(_first_contact, "gil"),
    "timeouts": functools.partial(_first_contact, "timeouts"),
    "firstrun": functools.partial(_first_contact, "firstrun"),
    "tf1": tf1,
    "pytensor": pytensor,
    "daskwork": lambda: _dask_workloads(),
    "calls": call_overhead,
    "elementwise": elementwise,
}
# The sections that measure the MLP: run again without the kernel variables on request.
MLP_SECTIONS = ("mlp", "mlp_blas2")


def format_table(rows: list[Row]) -> str:
    header = ("workload", "ours", "value", "anchor", "anchor value", "ratio", "target", "met")
    lines = [[r.workload, r.ours, _value(r.ours_value, r.unit), r.anchor,
              _value(r.anchor_value, r.unit), _value(r.ratio, "", ".3f"), r.target,
              {True: "yes", False: "NO", None: "n/a"}[r.ok]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = [" | ".join(h.ljust(wd) for h, wd in zip(header, widths)),
           "-+-".join("-" * wd for wd in widths)]
    out += [" | ".join(str(x).ljust(wd) for x, wd in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _value(value: float, unit: str, spec: str = ".3g") -> str:
    if value != value:  # NaN: a skipped or context row
        return "-"
    return f"{value:{spec}} {unit}".rstrip()


def header() -> list[str]:
    """What the tables ran on: ``dataflow doctor``'s report of the machine, its BLAS
    kernels and threads and the variables steering them, and its flags (without the
    probe, which would start subprocesses of its own)."""
    from dataflow import doctor

    found = doctor.inspect()
    return doctor.header(found) + [f"! {f.kind}: {f.message}"
                                   for f in doctor.findings(found, probe=None)]


def run(sections: list[str] | None = None, unset: tuple[str, ...] = ()) -> list[Row]:
    """The rows of ``sections`` (default: all). One section runs in this process; several
    run each in a fresh interpreter, so that none measures the state another left
    behind: after the trivial-task section's large dicts, for instance, two threads
    allocating matrices fault pages in a grown heap and the parallel speedup of every
    contender, the machine's own ceiling included, drops by 5-10%. With ``unset``, every
    section runs in a fresh interpreter without those environment variables."""
    names = sections or list(SECTIONS)
    if len(names) == 1 and not unset:
        return SECTIONS[names[0]]()
    rows: list[Row] = []
    for name in names:
        rows += run_isolated(name, unset)
    return rows


def child_env(unset: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a fresh interpreter that imports the same ``dataflow`` as this
    process, installed or from a checkout, without the variables named in ``unset``."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    site = str(Path(df.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
    return env


def run_isolated(name: str, unset: tuple[str, ...] = ()) -> list[Row]:
    """Run one section in a fresh ``python -m dataflow.bench --json``, which prints its
    rows as JSON; its errors go to this process's stderr. The child imports the same
    ``dataflow`` as this process, installed or from a checkout; ``unset`` names
    variables removed from its environment (only there)."""
    done = subprocess.run([sys.executable, "-m", "dataflow.bench", "--json", name],
                          env=child_env(unset), stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:  # its traceback is on stderr; the other sections still run
        return [Row(f"section {name!r}", "failed", float("nan"), "see the error above",
                    float("nan"), "", "-", False)]
    return [Row(**fields) for fields in json.loads(done.stdout)]


def rows_to_json(rows: list[Row]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in rows])
