"""The benchmark workloads, built for the anchors (dask, torch, autograd, plain numpy)
and for this project from one definition each, so both measure the same work."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np

# -- trivial-task graphs (anchor_overhead.py) -----------------------------------------

def inc(x):
    return x + 1


def add(a, b):
    return a + b


def chain(n: int) -> tuple[dict, str]:
    dsk: dict = {"n0": 0}
    for i in range(1, n):
        dsk[f"n{i}"] = (inc, f"n{i - 1}")
    return dsk, f"n{n - 1}"


def fan(n: int) -> tuple[dict, str]:
    """One root, ``n`` leaves, then a binary-tree reduction."""
    dsk: dict = {"root": 1}
    layer = []
    for i in range(n):
        dsk[f"l{i}"] = (inc, "root")
        layer.append(f"l{i}")
    k = 0
    while len(layer) > 1:
        nxt = []
        for j in range(0, len(layer) - 1, 2):
            key = f"r{k}"
            k += 1
            dsk[key] = (add, layer[j], layer[j + 1])
            nxt.append(key)
        if len(layer) % 2:
            nxt.append(layer[-1])
        layer = nxt
    return dsk, layer[0]


def layered(n: int, width: int = 100, seed: int = 0) -> tuple[dict, list]:
    rng = random.Random(seed)
    dsk: dict = {}
    prev = []
    for i in range(width):
        dsk[f"x{i}"] = i
        prev.append(f"x{i}")
    k = 0
    while len(dsk) < n:
        cur = []
        for _ in range(width):
            a, b = rng.sample(prev, 2)
            key = f"v{k}"
            k += 1
            dsk[key] = (add, a, b)
            cur.append(key)
        prev = cur
    return dsk, prev


def plain_loop_seconds(dsk: dict) -> float:
    """Time of a plain Python loop calling the same functions in topological order."""
    import graphlib
    import time

    deps = {k: [a for a in (v[1:] if isinstance(v, tuple) else ()) if isinstance(a, str)]
            for k, v in dsk.items()}
    order = list(graphlib.TopologicalSorter(deps).static_order())
    start = time.perf_counter()
    vals = {}
    for k in order:
        v = dsk[k]
        vals[k] = v[0](*[vals[a] for a in v[1:]]) if isinstance(v, tuple) else v
    return time.perf_counter() - start


# -- tiny-op chain (anchor_tinyops.py) ------------------------------------------------

TINY_N = 3000
TINY_X0 = np.linspace(0.1, 0.4, 4)


def tiny_chain(step_fns: tuple, x, n: int = TINY_N):
    sin, mul, add_ = step_fns
    for i in range(n):
        k = i % 3
        x = sin(x) if k == 0 else (mul(x, 1.0001) if k == 1 else add_(x, 0.1))
    return x


def tiny_chain_numpy_grad(x: np.ndarray, n: int = TINY_N,
                          ufuncs: tuple = (np.sin, np.cos, np.multiply, np.add),
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The tiny-op chain's sum and its gradient by hand in numpy: the same ufunc calls
    as a graph's forward and gradient (sin, then cos and two multiplies per ``sin``
    step on the way back), in a Python loop."""
    sin, cos, mul, add_ = ufuncs
    c, b = np.array(1.0001), np.array(0.1)
    inputs = []
    for i in range(n):
        k = i % 3
        if k == 0:
            inputs.append(x)
            x = sin(x)
        else:
            x = mul(x, c) if k == 1 else add_(x, b)
    grad = np.ones_like(x)
    for i in range(n - 1, -1, -1):
        k = i % 3
        if k == 1:
            grad = mul(grad, c)
        elif k == 0:
            grad = mul(grad, cos(inputs.pop()))
    return x.sum(), grad


def tiny_chain_ufunc_calls(x: np.ndarray, n: int = TINY_N) -> Callable[[], None]:
    """A function making only the ufunc calls of ``tiny_chain_numpy_grad``, on operands
    recorded beforehand, with nothing between them but a loop: the floor of any plan
    that calls numpy once per op, whatever runs it."""
    calls: list[tuple[Any, tuple[np.ndarray, ...]]] = []

    def recorded(ufunc: Any) -> Callable[..., np.ndarray]:
        def call(*args: np.ndarray) -> np.ndarray:
            calls.append((ufunc, args))
            return ufunc(*args)
        return call

    tiny_chain_numpy_grad(x, n, tuple(recorded(u) for u in (np.sin, np.cos, np.multiply,
                                                            np.add)))

    def replay() -> None:
        for ufunc, args in calls:
            ufunc(*args)
    return replay


# -- MLP (anchor_mlp.py) ----------------------------------------------------------------

B, D, H, C = 256, 784, 512, 10


def mlp_params(dtype, seed: int = 0):
    r = np.random.default_rng(seed)
    w1 = (r.standard_normal((D, H)) / np.sqrt(D)).astype(dtype)
    b1 = np.zeros(H, dtype)
    w2 = (r.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    b2 = np.zeros(H, dtype)
    w3 = (r.standard_normal((H, C)) / np.sqrt(H)).astype(dtype)
    b3 = np.zeros(C, dtype)
    x = r.standard_normal((B, D)).astype(dtype)
    y = r.integers(0, C, B)
    return [w1, b1, w2, b2, w3, b3], x, y


def numpy_mlp_step(params, x, y):
    """Hand-written backprop (algorithms 6.3/6.4), exactly as in anchor_mlp.py."""
    w1, b1, w2, b2, w3, b3 = params
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    z = h2 @ w3 + b3
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(B), y]).mean()
    g = p
    g[np.arange(B), y] -= 1
    g /= B
    gw3 = h2.T @ g
    gb3 = g.sum(0)
    g = (g @ w3.T) * (1 - h2 * h2)
    gw2 = h1.T @ g
    gb2 = g.sum(0)
    g = (g @ w2.T) * (1 - h1 * h1)
    gw1 = x.T @ g
    gb1 = g.sum(0)
    return loss, [gw1, gb1, gw2, gb2, gw3, gb3]


# -- inter-op parallelism (anchor_parallel.py) -----------------------------------------

PAR_N, PAR_BRANCHES, PAR_LAYERS = 384, 16, 4


def mm(a, b):
    return a @ b


def parallel_matrices() -> list[np.ndarray]:
    """The branches' matrices (seeded), shared by the graph and the machine's ceiling."""
    r = np.random.default_rng(0)
    return [r.standard_normal((PAR_N, PAR_N)) / np.sqrt(PAR_N) for _ in range(PAR_BRANCHES)]


def parallel_graph() -> tuple[dict, str]:
    ms = parallel_matrices()
    dsk: dict = {}
    for b in range(PAR_BRANCHES):
        dsk[f"m{b}"] = ms[b]
        prev = f"m{b}"
        for layer in range(PAR_LAYERS):
            dsk[f"b{b}_{layer}"] = (mm, prev, f"m{b}")
            prev = f"b{b}_{layer}"
    layer_keys = [f"b{b}_{PAR_LAYERS - 1}" for b in range(PAR_BRANCHES)]
    k = 0
    while len(layer_keys) > 1:
        nxt = []
        for j in range(0, len(layer_keys), 2):
            dsk[f"s{k}"] = (add, layer_keys[j], layer_keys[j + 1])
            nxt.append(f"s{k}")
            k += 1
        layer_keys = nxt
    return dsk, layer_keys[0]


def raw_branch_speedup(reps: int = 9) -> float:
    """What this machine gives two threads on the same work with no scheduler at all:
    each branch's 4 matmuls as one job of a 2-thread pool, against the same loop on one
    thread (median of ``reps`` round-robin rounds). Shared memory bandwidth and caches
    keep it under 2; it is the ceiling of the parallel row."""
    import statistics
    import time
    from concurrent.futures import ThreadPoolExecutor

    ms = parallel_matrices()

    def branch(b: int) -> np.ndarray:
        x = ms[b]
        for _ in range(PAR_LAYERS):
            x = mm(x, ms[b])
        return x

    one, two = [], []
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(branch, range(PAR_BRANCHES)))
        for _ in range(reps):
            start = time.perf_counter()
            [branch(b) for b in range(PAR_BRANCHES)]
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            list(pool.map(branch, range(PAR_BRANCHES)))
            two.append(time.perf_counter() - start)
    return statistics.median(one) / statistics.median(two)


def parallel_nodes() -> tuple:
    """The same 16 x 4 matmul graph as dataflow nodes with static shapes (so the engine
    knows the matmuls are expensive from their shapes before it ran any), and its feeds."""
    import dataflow as df

    ms = parallel_matrices()
    with df.Graph():
        xs = [df.placeholder(f"m{b}", (PAR_N, PAR_N)) for b in range(PAR_BRANCHES)]
        tops = []
        for x in xs:
            h = x
            for _ in range(PAR_LAYERS):
                h = h @ x
            tops.append(h)
        out = df.add_n(tops)
    return out, dict(zip(xs, ms))


# -- first contact: I/O-bound and GIL-bound tasks (bench.first_contact) -------------------------

LOOP_N = 2_000_000


def python_loop(n: int) -> int:
    """Pure Python: holds the GIL for its whole run (about 0.1 s for LOOP_N)."""
    total = 0
    for i in range(n):
        total += i
    return total


def sleep_then(seconds: float, value):
    import time

    time.sleep(seconds)
    return value


# -- elementwise-heavy forward + gradient (fusion) ---------------------------------------

EW_N = 4_000_000


def elementwise_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return (r.standard_normal(EW_N).astype(np.float32),
            r.standard_normal(EW_N).astype(np.float32))


def elementwise_forward(ops: object, x, y):
    """Ten elementwise ops (``ops`` is ``dataflow`` or ``numpy``), mostly arithmetic, as
    in activations, losses and optimizer updates: the terms of the loss."""
    d = x - y
    ratio = (d * d + x * y) / (x * x + 1.0)  # subtract, 2 multiply, add, multiply, add, divide
    return ratio * ops.tanh(y) + y            # tanh, multiply, add


def numpy_elementwise_step(x: np.ndarray, y: np.ndarray):
    """Hand-written numpy: ``sum(elementwise_forward)`` and its gradients in x and y."""
    f32 = np.float32
    d = x - y
    b = x * x + f32(1)
    f = (d * d + x * y) / b
    t = np.tanh(y)
    loss = (f * t + y).sum()
    gx = (f32(2) * d + y - f32(2) * x * f) / b * t
    gy = (x - f32(2) * d) / b * t + f * (f32(1) - t * t) + f32(1)
    return loss, gx, gy
