"""The two anchors closest to this project's design, on their own workloads, side by
side with this project in the same process: TensorFlow in graph mode (``tf.compat.v1``:
placeholders, ``tf.gradients``, ``Session.run``) and PyTensor (Theano's successor, its
compiled C VM). Both come with the optional ``bench-anchors`` extra; a section whose
anchor is not installed gives one row saying so.

Workloads, each built from one definition for every contender (``workloads.py``):
per-call overhead of a one-add graph; the tiny-op chain forward + gradient; the MLP
784-512-512-10 step in float32; the speedup of 16 branches x 4 matmuls 384^2 on two
threads (TF's inter-op pool against ours; PyTensor runs one node at a time); building a
10k-node chain and then its gradient. BLAS (and TF's intra-op pool) stay on one thread.
The sizes are arguments, so that a quick smoke run can shrink them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np

import dataflow as df
import scheduler

from . import workloads as w
from .suite import Row, interleaved, mlp_graph

INSTALL = "pip install 'dataflow-graph-engine[bench-anchors]'"
NAN = float("nan")


def skipped(anchor: str, error: ImportError) -> list[Row]:
    return [Row(f"{anchor} rows", "skipped", NAN, f"not installed ({error}): {INSTALL}", NAN,
                "", "(skipped)", None)]


def per_call(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    def loop() -> None:
        for _ in range(calls):
            fn()
    return loop


def time_row(workload: str, ours: str, ours_s: float, anchor: str, anchor_s: float,
             unit: str, scale: float) -> Row:
    """A row where less is better; met when ours is at most the anchor's."""
    return Row(workload, ours, ours_s * scale, anchor, anchor_s * scale, unit, "<= 1x",
               ours_s <= anchor_s)


# -- this project's side of each workload ---------------------------------------------

def ours_scalar_add() -> tuple[scheduler.Engine, Callable[[], object]]:
    with df.Graph():
        x = df.placeholder("x", ())
        y = x + 1.0
    engine = scheduler.Engine("inline")
    feeds = {x: 1.0}
    return engine, lambda: engine.run(y, feeds)


def ours_tiny(n: int, fuse: bool = False) -> tuple[scheduler.Engine, Callable[[], object]]:
    with df.Graph():
        x = df.placeholder("x", (4,))
        y = df.sum(w.tiny_chain((df.sin, df.multiply, df.add), x, n))
        (gx,) = df.gradients(y, [x])
    engine = scheduler.Engine("inline", fuse=fuse)
    feeds = {x: w.TINY_X0}
    engine.run([y, gx], feeds)  # a fused plan compiles its kernel (or loads it) here
    return engine, lambda: engine.run([y, gx], feeds)


def ours_mlp(dtype) -> tuple[scheduler.Engine, Callable[[], object]]:
    params, x, y = w.mlp_params(dtype)
    model = mlp_graph(dtype)
    feeds = model.feeds(params, x, y)
    fetches = [model.loss, *model.grads]
    engine = scheduler.Engine("inline")
    return engine, lambda: engine.run(fetches, feeds)


def ours_chain_build(n: int) -> tuple[float, float]:
    """Seconds to build an ``n``-node chain, and then its gradient."""
    with df.Graph():
        start = time.perf_counter()
        x = df.placeholder("x", (3,))
        h = x
        for i in range(n):
            h = df.sin(h) if i % 2 else h * 1.0001
        y = df.sum(h)
        built = time.perf_counter()
        df.gradients(y, [x])
        return built - start, time.perf_counter() - built


# -- TensorFlow 1 graph mode ----------------------------------------------------------

def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
    import tensorflow as tf

    return tf


def tf_session(tf, graph, inter_op: int = 2):
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1,
                                      inter_op_parallelism_threads=inter_op)
    return tf.compat.v1.Session(graph=graph, config=config)


def tf_mlp(tf, dtype):
    """The hand MLP's forward graph and ``tf.gradients``, params and data as placeholders."""
    v1 = tf.compat.v1
    params, x0, y0 = w.mlp_params(dtype)
    ph = [v1.placeholder(dtype, p.shape) for p in params]
    x = v1.placeholder(dtype, x0.shape)
    y = v1.placeholder(tf.int64, y0.shape)
    w1, b1, w2, b2, w3, b3 = ph
    h1 = tf.tanh(tf.matmul(x, w1) + b1)
    h2 = tf.tanh(tf.matmul(h1, w2) + b2)
    z = tf.matmul(h2, w3) + b3
    z = z - tf.reduce_max(z, 1, keepdims=True)
    e = tf.exp(z)
    p = e / tf.reduce_sum(e, 1, keepdims=True)
    picked = tf.gather_nd(p, tf.stack([tf.range(w.B, dtype=tf.int64), y], 1))
    loss = -tf.reduce_mean(tf.math.log(picked))
    grads = tf.gradients(loss, ph)
    feeds = {**dict(zip(ph, params)), x: x0, y: y0}
    return [loss, *grads], feeds


def tf1_rows(tiny_n: int = w.TINY_N, chain_n: int = 10_000, calls: int = 2000,
             reps: int = 15) -> list[Row]:
    try:
        tf = _tf()
    except ImportError as exc:
        return skipped("TF1 Session", exc)
    v1 = tf.compat.v1
    anchor = f"TF {tf.__version__} Session.run"
    rows = []

    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float64, ())
        y = x + 1.0
    with tf_session(tf, g) as sess:
        engine, ours = ours_scalar_add()
        with engine:
            t_ours, t_tf = interleaved([per_call(ours, calls),
                                        per_call(lambda: sess.run(y, {x: 1.0}), calls)],
                                       reps=reps)
    rows.append(time_row("per-call overhead, one scalar add", "inline run", t_ours / calls,
                         anchor, t_tf / calls, "us/call", 1e6))

    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float64, (4,))
        yt = tf.reduce_sum(w.tiny_chain((tf.sin, tf.multiply, tf.add), x, tiny_n))
        (gt,) = tf.gradients(yt, [x])
    with tf_session(tf, g) as sess:
        engine, ours = ours_tiny(tiny_n)
        fused_engine, fused = ours_tiny(tiny_n, fuse=True)
        with engine, fused_engine:
            t_ours, t_fused, t_tf = interleaved(
                [ours, fused, lambda: sess.run([yt, gt], {x: w.TINY_X0})], reps=reps)
    for kind, t in (("inline", t_ours), ("inline fuse=True", t_fused)):
        rows.append(time_row(f"tiny-op chain {tiny_n} fwd+grad", kind, t / tiny_n, anchor,
                             t_tf / tiny_n, "us/op", 1e6))

    g = tf.Graph()
    with g.as_default():
        fetches, feeds = tf_mlp(tf, np.float32)
    with tf_session(tf, g) as sess:
        engine, ours = ours_mlp(np.float32)
        with engine:
            t_ours, t_tf = interleaved([ours, lambda: sess.run(fetches, feeds)], reps=reps)
    rows.append(time_row("MLP 784-512-512-10 float32", "inline", t_ours, anchor, t_tf, "ms",
                         1e3))

    rows.append(_tf_parallel_row(tf, reps, anchor))

    g = tf.Graph()
    with g.as_default():
        start = time.perf_counter()
        x = v1.placeholder(tf.float64, (3,))
        h = x
        for i in range(chain_n):
            h = tf.sin(h) if i % 2 else h * 1.0001
        yc = tf.reduce_sum(h)
        built = time.perf_counter()
        tf.gradients(yc, [x])
        tf_build, tf_grad = built - start, time.perf_counter() - built
    ours_build, ours_grad = ours_chain_build(chain_n)
    rows.append(time_row(f"build a {chain_n}-node chain", "df ops", ours_build, anchor.split(
        " Session")[0] + " ops", tf_build, "s", 1))
    rows.append(time_row(f"gradient of the {chain_n}-node chain", "df.gradients", ours_grad,
                         "tf.gradients", tf_grad, "s", 1))
    return rows


def _tf_parallel_row(tf, reps: int, anchor: str) -> Row:
    """16 branches x 4 matmuls: each contender's speedup from one to two threads."""
    v1 = tf.compat.v1
    ms = w.parallel_matrices()
    g = tf.Graph()
    with g.as_default():
        phs = [v1.placeholder(tf.float64, m.shape) for m in ms]
        ends = []
        for p in phs:
            h = p
            for _ in range(w.PAR_LAYERS):
                h = tf.matmul(h, p)
            ends.append(h)
        while len(ends) > 1:
            ends = [ends[j] + ends[j + 1] for j in range(0, len(ends), 2)]
        out = ends[0]
    feeds = dict(zip(phs, ms))
    dsk, key = w.parallel_graph()
    with tf_session(tf, g, inter_op=1) as one, tf_session(tf, g, inter_op=2) as two, \
            scheduler.Engine("inline") as inline, \
            scheduler.Engine("threads", workers=2) as threads:
        tf1, tf2, ours1, ours2 = interleaved([
            lambda: one.run(out, feeds), lambda: two.run(out, feeds),
            lambda: inline.get(dsk, key), lambda: threads.get(dsk, key)], reps=reps)
    ours, theirs = ours1 / ours2, tf1 / tf2
    return Row("16 branches x 4 matmuls 384^2", "threads(2) speedup over inline", ours,
               f"{anchor} inter_op 2 over 1", theirs, "x", ">= 1x", ours >= theirs)


# -- PyTensor -------------------------------------------------------------------------

def pytensor_mlp(pt, dtype):
    params, x0, y0 = w.mlp_params(dtype)
    name = np.dtype(dtype).name
    ph = [pt.tensor(dtype=name, shape=(None,) * p.ndim) for p in params]
    x = pt.matrix(dtype=name)
    y = pt.lvector()
    w1, b1, w2, b2, w3, b3 = ph
    h1 = pt.tanh(x @ w1 + b1)
    h2 = pt.tanh(h1 @ w2 + b2)
    z = h2 @ w3 + b3
    z = z - z.max(axis=1, keepdims=True)
    e = pt.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    loss = -pt.log(p[pt.arange(y.shape[0]), y]).mean()
    return [*ph, x, y], [loss, *pt.grad(loss, ph)], [*params, x0, y0.astype(np.int64)]


def pytensor_rows(tiny_n: int = w.TINY_N, chain_n: int = 10_000, calls: int = 2000,
                  reps: int = 15) -> list[Row]:
    limit = sys.getrecursionlimit()
    # pytensor.grad recurses along a chain: the tiny-op chain and the 10k-node one
    sys.setrecursionlimit(max(limit, 20 * max(chain_n, 3 * tiny_n)))
    try:
        return _pytensor_rows(tiny_n, chain_n, calls, reps)
    finally:
        sys.setrecursionlimit(limit)


def _pytensor_rows(tiny_n: int, chain_n: int, calls: int, reps: int) -> list[Row]:
    try:
        import pytensor
        import pytensor.tensor as pt
    except ImportError as exc:
        return skipped("PyTensor", exc)
    from pytensor.compile.mode import get_mode

    # PyTensor 3's FAST_RUN compiles whole graphs with numba (which runs out of memory
    # on the 6000-node chain); "CVM" is FAST_RUN's rewrites on Theano's C VM.
    vm = "C VM" if pytensor.config.cxx else "numba linker (no C compiler)"
    anchor = f"PyTensor {pytensor.__version__} {vm}"
    fast = get_mode("CVM" if pytensor.config.cxx else "FAST_RUN")
    unfused = fast.excluding("fusion")
    rows = []

    x = pt.dscalar("x")
    f = pytensor.function([x], x + 1.0, mode=fast)
    trusted = pytensor.function([x], x + 1.0, mode=fast)
    trusted.trust_input = True
    one = np.array(1.0)
    engine, ours = ours_scalar_add()
    with engine:
        t_ours, t_pt, t_trusted = interleaved(
            [per_call(ours, calls), per_call(lambda: f(1.0), calls),
             per_call(lambda: trusted(one), calls)], reps=reps)
    rows.append(time_row("per-call overhead, one scalar add", "inline run", t_ours / calls,
                         anchor, t_pt / calls, "us/call", 1e6))
    rows.append(time_row("per-call overhead, one scalar add", "inline run", t_ours / calls,
                         anchor + ", trust_input", t_trusted / calls, "us/call", 1e6))

    x = pt.dvector("x")
    yt = w.tiny_chain((pt.sin, pt.mul, pt.add), x, tiny_n).sum()
    gt = pytensor.grad(yt, x)
    start = time.perf_counter()
    f_unfused = pytensor.function([x], [yt, gt], mode=unfused)
    f_fused = pytensor.function([x], [yt, gt], mode=fast)
    compile_s = time.perf_counter() - start
    engine, ours = ours_tiny(tiny_n)
    start = time.perf_counter()
    fused_engine, ours_fused = ours_tiny(tiny_n, fuse=True)
    ours_compile_s = time.perf_counter() - start
    with engine, fused_engine:
        t_ours, t_ours_fused, t_unfused, t_fused = interleaved(
            [ours, ours_fused, lambda: f_unfused(w.TINY_X0), lambda: f_fused(w.TINY_X0)],
            reps=reps)
    workload = f"tiny-op chain {tiny_n} fwd+grad"
    rows.append(time_row(workload, "inline", t_ours / tiny_n, anchor + ", unfused",
                         t_unfused / tiny_n, "us/op", 1e6))
    rows.append(time_row(workload, f"inline fuse=True (built in {ours_compile_s:.1f} s)",
                         t_ours_fused / tiny_n,
                         anchor + f", fused (both compiled in {compile_s:.1f} s)",
                         t_fused / tiny_n, "us/op", 1e6))

    inputs, outputs, values = pytensor_mlp(pt, np.float32)
    f_mlp = pytensor.function(inputs, outputs, mode=fast)
    engine, ours = ours_mlp(np.float32)
    with engine:
        t_ours, t_pt = interleaved([ours, lambda: f_mlp(*values)], reps=reps)
    rows.append(time_row("MLP 784-512-512-10 float32", "inline", t_ours, anchor, t_pt, "ms",
                         1e3))

    start = time.perf_counter()
    x = pt.dvector("x")
    h = x
    for i in range(chain_n):
        h = pt.sin(h) if i % 2 else h * 1.0001
    yc = h.sum()
    built = time.perf_counter()
    pytensor.grad(yc, x)
    pt_build, pt_grad = built - start, time.perf_counter() - built
    ours_build, ours_grad = ours_chain_build(chain_n)
    rows.append(time_row(f"build a {chain_n}-node chain", "df ops", ours_build,
                         f"PyTensor {pytensor.__version__} ops", pt_build, "s", 1))
    rows.append(time_row(f"gradient of the {chain_n}-node chain", "df.gradients", ours_grad,
                         "pytensor.grad (not compiled)", pt_grad, "s", 1))
    rows.append(Row("16 branches x 4 matmuls 384^2", "(see the TF1 and parallel rows)", NAN,
                    f"{anchor}: runs one node at a time, no inter-op speedup", NAN, "",
                    "(context)", None))
    return rows
