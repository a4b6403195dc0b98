"""Fuzzing with hypothesis: random dataflow graphs on every executor, and random plain
task graphs through ``scheduler.get``.

Dataflow graphs are drawn as *programs*: a list of steps over numbered values (the
inputs first), each step one or a few registry ops with numpy semantics (elementwise,
broadcasting, reductions, matmul, shape ops). While a program is drawn, every step is
also evaluated with plain numpy (the "shadow" values), which

- keeps the graph numerically tame: an op is only drawn where its inputs are in its
  safe domain (positive logs, divisors away from zero), away from kinks and ties
  (``abs``, ``relu``, ``maximum``, ``max``, ``where``), and magnitudes are scaled back
  by powers of two, so that finite differences are meaningful;
- is an independent reference for the forward values.

A program replays into any graph, so the same function builds the graph the
executors run and the one ``df.check_grads`` differentiates. Checked: the inline run
agrees with numpy, every executor (threads, threads with everything pooled, asyncio
through ``run_async``, processes) gives bitwise the same forward values and gradients
as inline, and the gradients agree with central differences. On every run, two
invariants hold: every distinct fetch is an array of its own (no two share memory; a
node fetched twice is one array), and no fed array is written.

Elementwise graphs over arrays large enough for buffer reuse (an op writing into an
input that dies at it) check that reuse is never seen: feeds, fetched values and
values a kernel still holds, strongly or weakly (in a weak cache), are never
overwritten, and the values are bitwise numpy's.

Plain task graphs mix literals, aliases, nested tasks and containers of keys; they
are checked against a small reference evaluator of dask's conventions written here,
and against ``dask.get`` when dask is installed.

Quick settings by default; ``STRESS=1`` (``make stress``) runs many more examples.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import engines as shared_engines
import numpy as np
import pytest
from bits import same_bits
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import dataflow as df
import scheduler

STRESS = os.environ.get("STRESS", "") not in ("", "0")


def fuzz_settings(quick: int, stress: int) -> settings:
    return settings(
        max_examples=stress if STRESS else quick,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


# ======================================================================================
# Random dataflow programs
# ======================================================================================

MARGIN = 1e-2  # distance kept from kinks and ties, far beyond finite differences' reach
BOUND = 8.0  # values larger than this are scaled back by a power of two


@dataclass
class Program:
    """Steps over numbered values: ``inputs`` first, then one value per step."""

    input_shapes: list[tuple[int, ...]]
    input_static: list[tuple]  # placeholder shapes (None for an unknown dim)
    inputs: list[np.ndarray]
    steps: list[tuple] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)  # of the loss, per output
    fed: int | None = None  # an intermediate value fed (its ancestors are cut off)

    def __repr__(self) -> str:
        lines = [f"inputs {self.input_static} (concrete {self.input_shapes})"]
        n = len(self.inputs)
        for k, step in enumerate(self.steps):
            shown = tuple(f"const{s.shape}" if isinstance(s, np.ndarray) else s for s in step)
            lines.append(f"  v{n + k} = {shown}")
        lines.append(f"outputs {self.outputs}, fed intermediate {self.fed}")
        return "\n".join(lines)


UNARY: dict[str, tuple[Callable, Callable]] = {
    "negative": (df.negative, np.negative),
    "neg_operator": (lambda x: -x, np.negative),
    "sin": (df.sin, np.sin),
    "cos": (df.cos, np.cos),
    "tanh": (df.tanh, np.tanh),
    "square": (df.square, np.square),
    "sigmoid": (df.sigmoid, lambda v: 1.0 / (1.0 + np.exp(-v))),
    "exp": (df.exp, np.exp),
    "log": (df.log, np.log),
    "sqrt": (df.sqrt, np.sqrt),
    "abs": (df.abs, np.abs),
    "relu": (df.relu, lambda v: np.maximum(v, 0.0)),
    "log1p_square": (lambda x: df.log(df.square(x) + 1.0), lambda v: np.log(np.square(v) + 1.0)),
}

BINARY: dict[str, tuple[Callable, Callable]] = {
    "add": (df.add, np.add),
    "subtract": (df.subtract, np.subtract),
    "multiply": (df.multiply, np.multiply),
    "divide": (df.divide, np.divide),
    "maximum": (df.maximum, np.maximum),
    "minimum": (df.minimum, np.minimum),
    "power": (df.power, np.power),
    "add_operator": (lambda x, y: x + y, np.add),
    "mul_operator": (lambda x, y: x * y, np.multiply),
    "div_smooth": (lambda x, y: x / (df.square(y) + 1.0), lambda a, b: a / (np.square(b) + 1.0)),
}

# (operator form, numpy) with a Python scalar on the left ("r") or the right ("l")
SCALAR: dict[str, tuple[Callable, Callable]] = {
    "add": (lambda x, c: x + c, np.add),
    "radd": (lambda x, c: c + x, lambda v, c: c + v),
    "rsub": (lambda x, c: c - x, lambda v, c: c - v),
    "mul": (lambda x, c: x * c, np.multiply),
    "rmul": (lambda x, c: c * x, lambda v, c: c * v),
    "div": (lambda x, c: x / c, np.divide),
    "pow": (lambda x, c: x ** c, np.power),
}

REDUCE: dict[str, tuple[Callable, Callable]] = {
    "sum": (df.sum, np.sum),
    "mean": (df.mean, np.mean),
    "max": (df.max, np.max),
    "min": (df.min, np.min),
}


def _np_logsumexp(v: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
    m = np.max(v, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(v - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis if axis is not None
                                           else tuple(range(v.ndim)))


def _np_softmax(v: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(v - np.max(v, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def build_step(step: tuple, nodes: list) -> df.Node:
    """Apply one program step to graph nodes (the numbered values so far)."""
    kind = step[0]
    if kind == "unary":
        return UNARY[step[1]][0](nodes[step[2]])
    if kind == "binary":
        return BINARY[step[1]][0](nodes[step[2]], nodes[step[3]])
    if kind == "scalar":
        return SCALAR[step[1]][0](nodes[step[2]], step[3])
    if kind == "reduce":
        return REDUCE[step[1]][0](nodes[step[2]], axis=step[3], keepdims=step[4])
    if kind == "logsumexp":
        return df.logsumexp(nodes[step[1]], axis=step[2], keepdims=step[3])
    if kind == "softmax":
        return df.softmax(nodes[step[1]], axis=step[2])
    if kind == "log_softmax":
        return df.log_softmax(nodes[step[1]], axis=step[2])
    if kind == "matmul":
        return nodes[step[1]] @ nodes[step[2]]
    if kind == "const":
        return df.constant(step[1], graph=nodes[0].graph)
    if kind == "reshape":
        return df.reshape(nodes[step[1]], step[2])
    if kind == "transpose":
        return df.transpose(nodes[step[1]], step[2])
    if kind == "broadcast_to":
        return df.broadcast_to(nodes[step[1]], step[2])
    if kind == "getitem":
        return nodes[step[1]][step[2]]
    if kind == "expand_dims":
        return df.expand_dims(nodes[step[1]], step[2])
    if kind == "concatenate":
        return df.concatenate([nodes[i] for i in step[1]], axis=step[2])
    if kind == "stack":
        return df.stack([nodes[i] for i in step[1]], axis=step[2])
    if kind == "add_n":
        return df.add_n([nodes[i] for i in step[1]])
    if kind == "where":
        return df.where(nodes[step[1]] > 0.0, nodes[step[2]], nodes[step[3]])
    if kind == "cross_entropy":
        logits = nodes[step[1]]
        if logits.shape[1] is None:  # the number of classes must be static
            logits = df.reshape(logits, (-1, step[3]))
        return df.softmax_cross_entropy(logits, np.asarray(step[2]))
    raise AssertionError(f"unknown step {step!r}")


def shadow_step(step: tuple, vals: list) -> np.ndarray:
    """The same step in plain numpy."""
    kind = step[0]
    if kind == "unary":
        return UNARY[step[1]][1](vals[step[2]])
    if kind == "binary":
        return BINARY[step[1]][1](vals[step[2]], vals[step[3]])
    if kind == "scalar":
        return SCALAR[step[1]][1](vals[step[2]], step[3])
    if kind == "reduce":
        return REDUCE[step[1]][1](vals[step[2]], axis=step[3], keepdims=step[4])
    if kind == "logsumexp":
        return _np_logsumexp(vals[step[1]], step[2], step[3])
    if kind == "softmax":
        return _np_softmax(vals[step[1]], step[2])
    if kind == "log_softmax":
        return np.log(_np_softmax(vals[step[1]], step[2]))
    if kind == "matmul":
        return np.matmul(vals[step[1]], vals[step[2]])
    if kind == "const":
        return step[1]
    if kind == "reshape":
        return np.reshape(vals[step[1]], step[2])
    if kind == "transpose":
        return np.transpose(vals[step[1]], step[2])
    if kind == "broadcast_to":
        return np.broadcast_to(vals[step[1]], step[2])
    if kind == "getitem":
        return vals[step[1]][step[2]]
    if kind == "expand_dims":
        return np.expand_dims(vals[step[1]], step[2])
    if kind == "concatenate":
        return np.concatenate([vals[i] for i in step[1]], axis=step[2])
    if kind == "stack":
        return np.stack([vals[i] for i in step[1]], axis=step[2])
    if kind == "add_n":
        out = vals[step[1][0]]
        for i in step[1][1:]:
            out = out + vals[i]
        return out
    if kind == "where":
        return np.where(vals[step[1]] > 0.0, vals[step[2]], vals[step[3]])
    if kind == "cross_entropy":
        logp = np.log(_np_softmax(vals[step[1]], -1))
        return -np.mean(logp[np.arange(len(step[2])), list(step[2])])
    raise AssertionError(f"unknown step {step!r}")


def replay(program: Program, xs: Sequence[df.Node]) -> list[df.Node]:
    nodes = list(xs)
    for step in program.steps:
        nodes.append(build_step(step, nodes))
    return nodes


def loss_of(program: Program, nodes: list[df.Node]) -> df.Node:
    """A scalar reduction of the outputs: ``sum_k sum(output_k * weight_k)``."""
    g = nodes[0].graph
    terms = [df.sum(nodes[i] * df.constant(w, graph=g))
             for i, w in zip(program.outputs, program.weights)]
    return df.add_n(terms) if len(terms) > 1 else terms[0]


# -- drawing programs ------------------------------------------------------------------

def _broadcasts(a: tuple, b: tuple) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def _matmul_ok(a: tuple, b: tuple) -> bool:
    if not a or not b:
        return False
    try:
        np.matmul(np.zeros(a), np.zeros(b))
    except ValueError:
        return False
    return True


def _gap_ok(v: np.ndarray, axis: Any) -> bool:
    """The extremum along ``axis`` is unique with a margin (no tie for max/min)."""
    if v.size == 0:
        return False
    axes = tuple(range(v.ndim)) if axis is None else (
        (axis,) if isinstance(axis, int) else tuple(axis))
    axes = tuple(a % v.ndim for a in axes) if v.ndim else ()
    rest = [a for a in range(v.ndim) if a not in axes]
    flat = np.transpose(v, rest + list(axes)).reshape([v.shape[a] for a in rest] + [-1])
    if flat.shape[-1] < 2:
        return True
    s = np.sort(flat, axis=-1)
    return bool(np.all(s[..., -1] - s[..., -2] > MARGIN) and np.all(s[..., 1] - s[..., 0] > MARGIN))


def _safe(step: tuple, vals: list) -> bool:
    """Whether a step's inputs are inside its domain and away from its kinks."""
    kind = step[0]
    if kind == "unary":
        v = vals[step[2]]
        name = step[1]
        if name == "exp":
            return bool(np.all(v < 2.0))
        if name in ("log", "sqrt"):
            return bool(np.all(v > 0.25))
        if name in ("abs", "relu"):
            return bool(np.all(np.abs(v) > MARGIN))
        return True
    if kind == "binary":
        x, y = vals[step[2]], vals[step[3]]
        name = step[1]
        if name == "divide":
            return bool(np.all(np.abs(y) > 0.25))
        if name in ("maximum", "minimum"):
            return bool(np.all(np.abs(x - y) > MARGIN))
        if name == "power":
            return bool(np.all(x > 0.25) and np.all(np.abs(y) < 3.0))
        return True
    if kind == "scalar":
        v, c = vals[step[2]], step[3]
        if step[1] == "div":
            return c != 0
        if step[1] == "pow":
            return float(c).is_integer() and c >= 0 or bool(np.all(v > 0.25))
        return True
    if kind == "reduce" and step[1] in ("max", "min"):
        return _gap_ok(vals[step[2]], step[3])
    if kind == "where":
        return bool(np.all(np.abs(vals[step[1]]) > MARGIN))
    return True


def _values(seed: int, shape: tuple) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2.0, 2.0, shape)


dims = st.integers(1, 3)
shapes = st.lists(dims, min_size=0, max_size=3).map(tuple)
step_kinds = st.sampled_from([
    "unary", "unary", "binary", "binary", "binary", "scalar", "reduce", "logsumexp",
    "softmax", "matmul", "reshape", "transpose", "broadcast_to", "getitem", "expand_dims",
    "concatenate", "stack", "add_n", "where", "cross_entropy",
])



@st.composite
def programs(draw: Any, max_nodes: int = 40) -> Program:
    """A random program of at most ``max_nodes`` values (inputs, constants, steps)."""
    n_inputs = draw(st.integers(1, 3))
    concrete = [draw(shapes) for _ in range(n_inputs)]
    static = []
    for shape in concrete:
        unknown = bool(shape) and draw(st.integers(0, 3)) == 0
        static.append((None,) + shape[1:] if unknown else shape)
    inputs = [_values(draw(st.integers(0, 2**32 - 1)), s) for s in concrete]
    prog = Program(concrete, static, inputs)
    vals: list[np.ndarray] = list(inputs)
    n_steps = draw(st.integers(0, max_nodes - n_inputs))
    for _ in range(n_steps):
        if len(vals) >= max_nodes - 2:
            break
        for step in _draw_step(draw, vals) or ():
            value = np.asarray(shadow_step(step, vals))
            vals.append(value)
            prog.steps.append(step)
        big = float(np.max(np.abs(vals[-1]))) if vals[-1].size else 0.0
        if big > BOUND:  # scale back by a power of two: exact, and keeps values tame
            step = ("scalar", "mul", len(vals) - 1, 2.0 ** -int(np.ceil(np.log2(big / BOUND))))
            vals.append(np.asarray(shadow_step(step, vals)))
            prog.steps.append(step)
    n = len(vals)
    prog.outputs = [n - 1] + draw(st.lists(st.integers(0, n - 1), max_size=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    prog.weights = [rng.uniform(-1.0, 1.0, vals[i].shape) for i in prog.outputs]
    if n > n_inputs and draw(st.integers(0, 3)) == 0:
        prog.fed = draw(st.integers(n_inputs, n - 1))
    prog.shadow = vals
    return prog


def _pick(draw: Any, candidates: list[int]) -> int:
    return candidates[draw(st.integers(0, len(candidates) - 1))]


def _const(draw: Any, shape: tuple, scale: float = 1.0) -> tuple:
    return ("const", _values(draw(st.integers(0, 2**32 - 1)), shape) * scale)


def _draw_step(draw: Any, vals: list) -> list[tuple] | None:
    """One or two steps over ``vals`` (a new constant, then the op reading it), or
    None where the drawn kind does not fit the drawn operand or would be unsafe."""
    n = len(vals)
    kind = draw(step_kinds)
    i = draw(st.integers(0, n - 1))
    shape, ndim = vals[i].shape, vals[i].ndim
    pre: list[tuple] = []  # a constant the step reads, at index n
    step: tuple | None = None
    if kind == "binary":
        name = draw(st.sampled_from(sorted(BINARY)))
        others = [j for j in range(n) if _broadcasts(shape, vals[j].shape)]
        if draw(st.booleans()):
            keep = draw(st.integers(0, ndim))
            pre = [_const(draw, tuple(d if draw(st.booleans()) else 1
                                      for d in shape[ndim - keep:]))]
            j = n
        else:
            j = _pick(draw, others)
        step = ("binary", name, j, i) if draw(st.booleans()) else ("binary", name, i, j)
    elif kind == "unary":
        step = ("unary", draw(st.sampled_from(sorted(UNARY))), i)
    elif kind == "scalar":
        c = draw(st.sampled_from([2.0, 0.5, -1.5, 3.0, 1.0, 0.0, 2, 3, -1]))
        step = ("scalar", draw(st.sampled_from(sorted(SCALAR))), i, c)
    elif kind in ("reduce", "logsumexp"):
        axis: Any = None
        if ndim and draw(st.booleans()):
            axes = draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim,
                                 unique_by=lambda a: a % ndim))
            axis = axes[0] if len(axes) == 1 and draw(st.booleans()) else tuple(axes)
        keepdims = draw(st.booleans())
        if kind == "reduce":
            step = ("reduce", draw(st.sampled_from(sorted(REDUCE))), i, axis, keepdims)
        else:
            step = ("logsumexp", i, axis, keepdims)
    elif kind == "softmax" and ndim:
        step = (draw(st.sampled_from(["softmax", "log_softmax"])), i,
                draw(st.integers(-ndim, ndim - 1)))
    elif kind == "matmul" and ndim:
        others = [j for j in range(n) if _matmul_ok(shape, vals[j].shape)]
        if others and draw(st.booleans()):
            step = ("matmul", i, _pick(draw, others))
        else:
            k = shape[-1]
            pre = [_const(draw, (k, draw(dims)) if draw(st.booleans()) else (k,), 1.0 / k)]
            step = ("matmul", i, n)
    elif kind == "reshape":
        target = list(draw(st.permutations(list(shape))))
        for _ in range(draw(st.integers(0, 2))):
            target.insert(draw(st.integers(0, len(target))), 1)
        if target and draw(st.booleans()):
            target[draw(st.integers(0, len(target) - 1))] = -1
        step = ("reshape", i, tuple(target))
    elif kind == "transpose" and ndim >= 2:
        axes = tuple(draw(st.permutations(range(ndim))))
        step = ("transpose", i, None if draw(st.booleans()) else axes)
    elif kind == "broadcast_to":
        target = tuple(draw(dims) if d == 1 else d for d in shape)
        step = ("broadcast_to", i, tuple(draw(st.lists(dims, max_size=2))) + target)
    elif kind == "getitem" and ndim:
        index: list = []
        for d in shape:
            choice = draw(st.integers(0, 3))
            if choice == 0:
                index.append(draw(st.integers(-d, d - 1)))
            elif choice == 1:
                start = draw(st.integers(0, d - 1))
                index.append(slice(start, draw(st.integers(start + 1, d)),
                                   draw(st.sampled_from([None, 1, 2]))))
            elif choice == 2:
                index.append(slice(None, None, -1))
            else:
                index.append(slice(None))
        if draw(st.booleans()):
            index.insert(draw(st.integers(0, len(index))), None)
        if len(index) > 1 and draw(st.booleans()):
            index = [Ellipsis] + index[draw(st.integers(1, len(index) - 1)):]
        step = ("getitem", i, index[0] if len(index) == 1 else tuple(index))
    elif kind == "expand_dims":
        step = ("expand_dims", i, draw(st.integers(-(ndim + 1), ndim)))
    elif kind in ("concatenate", "stack", "add_n"):
        same = [j for j in range(n) if vals[j].shape == shape]
        members = (i,) + tuple(_pick(draw, same) for _ in range(draw(st.integers(0, 2))))
        if kind == "add_n":
            step = ("add_n", members)
        elif kind == "concatenate" and ndim:
            step = ("concatenate", members, draw(st.integers(-ndim, ndim - 1)))
        elif kind == "stack":
            step = ("stack", members, draw(st.integers(-(ndim + 1), ndim)))
    elif kind == "where":
        others = [j for j in range(n) if _broadcasts(shape, vals[j].shape)]
        j = _pick(draw, others)
        both = np.broadcast_shapes(shape, vals[j].shape)
        step = ("where", _pick(draw, [c for c in range(n)
                                      if _broadcasts(both, vals[c].shape)]), i, j)
    elif kind == "cross_entropy" and ndim == 2:
        step = ("cross_entropy", i, tuple(draw(st.integers(0, shape[1] - 1))
                                          for _ in range(shape[0])), shape[1])
    if step is None:
        return None
    vals.extend(s[1] for s in pre)
    try:
        safe = _safe(step, vals)
    finally:
        del vals[n:]
    return pre + [step] if safe else None


# -- running programs ------------------------------------------------------------------

class AsyncEngine:
    """``run`` through ``run_async`` on a fresh event loop (as the conformance suite)."""

    def __init__(self, engine: scheduler.Engine):
        self.engine = engine

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run(self.engine.run_async(*args, **kwargs))

    def close(self) -> None:
        self.engine.close()


def make_engine(kind: str) -> Any:
    if kind == "threads":
        return scheduler.Engine("threads", workers=2)
    if kind == "threads-all-pooled":
        return scheduler.Engine("threads", workers=2, inline_threshold=0)
    if kind == "asyncio":
        return AsyncEngine(scheduler.Engine("asyncio", workers=2))
    if kind == "processes":
        return scheduler.Engine("processes", workers=2, inline_threshold=0)
    raise AssertionError(kind)


class Built:
    """A program built into a graph: placeholders, outputs, loss and its gradients."""

    def __init__(self, program: Program):
        with df.Graph():
            self.xs = [df.placeholder(f"x{k}", s) for k, s in enumerate(program.input_static)]
        nodes = replay(program, self.xs)
        self.feeds = dict(zip(self.xs, program.inputs))
        if program.fed is not None:
            self.feeds[nodes[program.fed]] = program.shadow[program.fed]
        self.outputs = [nodes[i] for i in program.outputs]
        self.loss = loss_of(program, nodes)
        self.grads = df.gradients(self.loss, self.xs)
        self.fetches = self.outputs + [self.loss] + self.grads


def assert_bitwise(got: Sequence[Any], expected: Sequence[Any], what: str) -> None:
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype, f"{what}: fetch {k} dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{what}: fetch {k} shape {a.shape} != {b.shape}"
        assert same_bits(a, b), f"{what}: fetch {k} differs from inline:\n{a}\n{b}"


def snapshot(feeds: dict) -> dict:
    """What the caller's feeds hold now: their bytes, dtype, shape and flags."""
    return {k: _state(v) for k, v in feeds.items()}


def _state(value: Any) -> tuple:
    array = np.asarray(value)
    return (array.dtype, array.shape, array.tobytes(), array.flags.writeable)


def assert_feeds_untouched(feeds: dict, before: dict, what: str) -> None:
    for key, value in feeds.items():
        assert _state(value) == before[key], f"{what}: the feed of {key!r} was written"


def assert_distinct_fetches(fetches: Sequence[Any], values: Sequence[Any], what: str) -> None:
    """Every distinct fetch its own array: no two share memory; a node fetched twice
    is one array."""
    assert len(fetches) == len(values)
    for (i, a), (j, b) in itertools.combinations(enumerate(values), 2):
        if fetches[i] is fetches[j]:
            assert a is b, f"{what}: fetch {i} fetched again at {j} is another array"
        elif isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            assert a is not b and not np.may_share_memory(a, b), (
                f"{what}: fetches {i} ({fetches[i]!r}) and {j} ({fetches[j]!r}) share memory")


def run_checked(engine: Any, fetches: list, feeds: dict, what: str) -> list:
    """``engine.run`` (or the inline one-shot run) with the run invariants checked."""
    before = snapshot(feeds)
    if engine is None:
        got = scheduler.run(fetches, feeds, executor="inline")
    else:
        got = engine.run(fetches, feeds)
    assert_feeds_untouched(feeds, before, what)
    assert_distinct_fetches(fetches, got, what)
    return got


def check_program(program: Program, engines: dict[str, Any], runs: int = 2) -> None:
    note(repr(program))
    built = Built(program)
    expected = run_checked(None, built.fetches, built.feeds, "inline")
    # The inline run is numpy's arithmetic (the rewrites may reassociate nothing).
    for k, i in enumerate(program.outputs):
        want = program.shadow[i]
        got = expected[k]
        assert got.shape == want.shape, f"output v{i}: shape {got.shape} != numpy's {want.shape}"
        assert got.dtype == np.float64, f"output v{i}: dtype {got.dtype}"
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12,
                                   err_msg=f"output v{i} disagrees with numpy")
    # Every node's static shape and dtype (forward and gradient nodes) match its value.
    graph = built.xs[0].graph
    nodes = list(graph.nodes)
    for node, value in zip(nodes, run_checked(None, nodes, built.feeds, "every node")):
        value = np.asarray(value)
        assert value.dtype == node.dtype, f"{node!r} computed dtype {value.dtype}"
        assert len(value.shape) == len(node.shape) and all(
            d is None or d == v for d, v in zip(node.shape, value.shape)
        ), f"{node!r} computed shape {value.shape}"
    for kind, engine in engines.items():
        for r in range(runs):
            got = run_checked(engine, built.fetches, built.feeds, f"{kind} run {r}")
            assert_bitwise(got, expected, f"{kind} run {r}")


def check_program_gradients(program: Program) -> None:
    """Gradients of the scalar loss against central differences (float64)."""
    def fn(*xs: df.Node) -> df.Node:
        return loss_of(program, replay(program, xs))

    df.check_grads(fn, program.inputs, order=1, rtol=1e-5, atol=1e-6)


@pytest.fixture
def engines(request: Any):
    made = {kind: make_engine(kind) for kind in request.param}
    try:
        yield made
    finally:
        for engine in made.values():
            engine.close()


@pytest.mark.parametrize("engines", [("threads", "threads-all-pooled", "asyncio")],
                         indirect=True, ids=["threads+pooled+asyncio"])
def test_random_graphs_bitwise_equal_on_every_executor(engines):
    @fuzz_settings(quick=100, stress=2000)
    @given(program=programs())
    def check(program: Program) -> None:
        check_program(program, engines)

    check()


@pytest.mark.parametrize("engines", [("processes",)], indirect=True, ids=["processes"])
def test_random_graphs_bitwise_equal_on_processes(engines):
    @fuzz_settings(quick=10, stress=200)
    @given(program=programs(max_nodes=20))
    def check(program: Program) -> None:
        check_program(program, engines, runs=1)

    check()


@fuzz_settings(quick=100, stress=2000)
@given(program=programs())
def test_random_graphs_gradients_match_finite_differences(program):
    note(repr(program))
    check_program_gradients(program)


# ======================================================================================
# Buffer reuse never seen: large elementwise graphs
# ======================================================================================

BIG = (256, 260)  # 520 KiB of float64: over REUSE_MIN_BYTES, so buffers may be reused

#: (weak reference, bytes when made) of each result a WeaklyCached kernel made
WEAK_CACHE: list[tuple[weakref.ref, bytes]] = []
#: (array, bytes when made) of each result a StronglyHeld kernel made and kept
HELD: list[tuple[np.ndarray, bytes]] = []


class WeaklyCached(df.Op):
    """A copy of its input, remembered in a weak cache, as a memoizing kernel would:
    the reference count does not show that anyone can still see it."""

    name = "tests.fuzz.weakly_cached"

    def forward(self, x):
        out = np.array(x, copy=True)
        WEAK_CACHE.append((weakref.ref(out), out.tobytes()))
        return out


class StronglyHeld(df.Op):
    """A copy of its input that the kernel keeps (a plain reference)."""

    name = "tests.fuzz.strongly_held"

    def forward(self, x):
        out = np.array(x, copy=True)
        HELD.append((out, out.tobytes()))
        return out


class Identity(df.Op):
    """Its input itself, unchanged: the value is then shared by two nodes (or is the
    caller's feed)."""

    name = "tests.fuzz.identity"

    def forward(self, x):
        return x


REUSE_UNARY = {"sin": (df.sin, np.sin), "cos": (df.cos, np.cos), "tanh": (df.tanh, np.tanh),
               "negative": (df.negative, np.negative)}
REUSE_BINARY = {"add": (df.add, np.add), "subtract": (df.subtract, np.subtract),
                "multiply": (df.multiply, np.multiply), "maximum": (df.maximum, np.maximum)}
REUSE_CUSTOM = {"weak": WeaklyCached, "held": StronglyHeld, "identity": Identity}


@dataclass
class ReuseProgram:
    inputs: list[np.ndarray]
    steps: list[tuple] = field(default_factory=list)
    fetches: list[int] = field(default_factory=list)
    fed: int | None = None  # a computed value that the caller feeds instead
    shadow: list[np.ndarray] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"{len(self.inputs)} inputs {BIG}, steps {self.steps}, "
                f"fetches {self.fetches}, fed {self.fed}")


@st.composite
def reuse_programs(draw: Any, max_steps: int = 14) -> ReuseProgram:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    prog = ReuseProgram([rng.uniform(-1.0, 1.0, BIG) for _ in range(draw(st.integers(1, 2)))])
    vals = list(prog.inputs)
    for _ in range(draw(st.integers(1, max_steps))):
        i = draw(st.integers(0, len(vals) - 1))
        kind = draw(st.sampled_from(["unary", "binary", "binary", "custom"]))
        if kind == "unary":
            step: tuple = ("unary", draw(st.sampled_from(sorted(REUSE_UNARY))), i)
            value = REUSE_UNARY[step[1]][1](vals[i])
        elif kind == "binary":
            j = draw(st.integers(0, len(vals) - 1))
            step = ("binary", draw(st.sampled_from(sorted(REUSE_BINARY))), i, j)
            value = REUSE_BINARY[step[1]][1](vals[i], vals[j])
        else:
            step = ("custom", draw(st.sampled_from(sorted(REUSE_CUSTOM))), i)
            value = vals[i]
        prog.steps.append(step)
        vals.append(value)
        if float(np.max(np.abs(value))) > BOUND:  # keep magnitudes tame
            prog.steps.append(("unary", "tanh", len(vals) - 1))
            vals.append(np.tanh(value))
    n = len(vals)
    prog.fetches = [n - 1] + draw(st.lists(st.integers(0, n - 1), max_size=4))
    if n > len(prog.inputs) and draw(st.integers(0, 2)) == 0:
        prog.fed = draw(st.integers(len(prog.inputs), n - 1))
    prog.shadow = vals
    return prog


def build_reuse(program: ReuseProgram) -> tuple[list, dict]:
    """The fetch nodes and the feeds (the caller's own arrays) of a program."""
    with df.Graph():
        nodes = [df.placeholder(f"x{k}", BIG) for k in range(len(program.inputs))]
    for step in program.steps:
        if step[0] == "unary":
            nodes.append(REUSE_UNARY[step[1]][0](nodes[step[2]]))
        elif step[0] == "binary":
            nodes.append(REUSE_BINARY[step[1]][0](nodes[step[2]], nodes[step[3]]))
        else:
            nodes.append(df.apply(REUSE_CUSTOM[step[1]](), nodes[step[2]]))
    feeds = {nodes[k]: np.array(x, copy=True) for k, x in enumerate(program.inputs)}
    if program.fed is not None:
        feeds[nodes[program.fed]] = np.array(program.shadow[program.fed], copy=True)
    return [nodes[i] for i in program.fetches], feeds


def check_reuse_program(program: ReuseProgram, engines: dict[str, Any]) -> None:
    note(repr(program))
    fetches, feeds = build_reuse(program)
    expected = [program.shadow[i] for i in program.fetches]
    for kind, engine in [("inline", None), *engines.items()]:
        for r in range(2):
            what = f"{kind} run {r}"
            WEAK_CACHE.clear()
            HELD.clear()
            got = run_checked(engine, fetches, feeds, what)
            assert_bitwise(got, expected, what)
            for array, made in HELD:
                assert array.tobytes() == made, f"{what}: a value its kernel holds was written"
            for ref, made in WEAK_CACHE:
                array = ref()
                assert array is None or array.tobytes() == made, (
                    f"{what}: a value its kernel holds weakly was written")
            del got
    WEAK_CACHE.clear()
    HELD.clear()


@pytest.mark.parametrize("engines", [("threads", "asyncio")], indirect=True,
                         ids=["inline+threads+asyncio"])
def test_buffer_reuse_never_writes_what_anyone_holds(engines):
    @fuzz_settings(quick=25, stress=500)
    @given(program=reuse_programs())
    def check(program: ReuseProgram) -> None:
        check_reuse_program(program, engines)

    check()


# ======================================================================================
# Random plain task graphs through scheduler.get
# ======================================================================================

MODULUS = 1_000_003


def fold(value: Any) -> int:
    """A deterministic integer digest of a value's structure (types included), the same
    in every process (no salted string hashing)."""
    if isinstance(value, bool):
        return 7 + value
    if isinstance(value, int):
        return value % MODULUS
    if isinstance(value, str):
        return sum((k + 1) * ord(c) for k, c in enumerate(value)) % MODULUS
    if isinstance(value, (list, tuple)):
        tag = 3 if isinstance(value, list) else 5
        h = tag
        for item in value:
            h = (h * 31 + fold(item)) % MODULUS
        return h
    if isinstance(value, (set, frozenset)):
        return (11 + sum(fold(item) for item in value)) % MODULUS
    if isinstance(value, dict):
        return (13 + sum(fold(k) * 17 + fold(v) for k, v in value.items())) % MODULUS
    if value is None:
        return 19
    raise TypeError(f"fold: unexpected {type(value).__name__}")


def mix(*args: Any) -> int:
    return fold(list(args))


def inc(x: Any) -> int:
    return (fold(x) + 1) % MODULUS


def pair(a: Any, b: Any) -> tuple:
    return (a, b)


def listing(*args: Any) -> list:
    return list(args)


FUNCS = [mix, inc, pair, listing]


def reference_get(dsk: dict, keys: Any) -> Any:
    """dask's conventions, evaluated recursively (the graphs here are small and shallow)."""
    cache: dict = {}

    def is_key(x: Any) -> bool:
        try:
            return x in dsk
        except TypeError:
            return False

    def arg(a: Any) -> Any:
        if type(a) is tuple and a and callable(a[0]):
            return a[0](*[arg(x) for x in a[1:]])
        if is_key(a):
            return value(a)
        if isinstance(a, list):
            return [arg(x) for x in a]
        if isinstance(a, tuple):
            return tuple(arg(x) for x in a)
        if isinstance(a, (set, frozenset)):
            return type(a)(arg(x) for x in a)
        return a

    def value(key: Any) -> Any:
        if key not in cache:
            cache[key] = arg(dsk[key])
        return cache[key]

    def pack(k: Any) -> Any:  # a list of keys gives a tuple of values, as in dask
        return tuple(pack(x) for x in k) if isinstance(k, list) else value(k)

    return pack(keys)


def _key(i: int) -> Any:
    return f"k{i}" if i % 3 else ("t", i)


class _TaskDrawer:
    """Draws the value of one key from the keys before it (so the graph is a DAG)."""

    def __init__(self, draw: Any, earlier: list, int_valued: list):
        self.draw = draw
        self.earlier = earlier
        self.int_valued = int_valued  # keys whose value is an int: they may go into sets

    def pick(self, keys: list) -> Any:
        return keys[self.draw(st.integers(0, len(keys) - 1))]

    def literal(self) -> Any:
        return self.draw(st.one_of(st.integers(-5, 5), st.sampled_from(["lit", "k", "t"]),
                                   st.just(("t", 10_000)), st.just({"k0": 1})))

    def argument(self, depth: int) -> Any:
        choice = self.draw(st.integers(0, 5 if depth < 3 else 1))
        if choice == 0 or not self.earlier:
            return self.literal()  # strings and tuples that are not keys included
        if choice == 1:
            return self.pick(self.earlier)
        if choice == 2:
            return self.task(depth + 1)  # a nested task
        if choice == 3:
            return [self.argument(depth + 1) for _ in range(self.draw(st.integers(0, 3)))]
        if choice == 4:
            return tuple(self.argument(depth + 1) for _ in range(self.draw(st.integers(1, 3))))
        if not self.int_valued:
            return self.literal()
        return {self.pick(self.int_valued) for _ in range(self.draw(st.integers(1, 2)))}

    def task(self, depth: int) -> tuple:
        func = self.draw(st.sampled_from(FUNCS))
        if func is inc:
            return (inc, self.argument(depth))
        if func is pair:
            return (pair, self.argument(depth), self.argument(depth))
        return (func, *[self.argument(depth) for _ in range(self.draw(st.integers(0, 3)))])


@st.composite
def task_graphs(draw: Any, max_keys: int = 40) -> tuple[dict, Any]:
    """A dask-style graph of literals, aliases, lists of keys and (nested) tasks, and
    the keys to get: one key, a list of keys, or a list of lists."""
    n = draw(st.integers(1, max_keys))
    keys = [_key(i) for i in range(n)]
    dsk: dict = {}
    int_valued: list = []
    for i in range(n):
        drawer = _TaskDrawer(draw, keys[:i], list(int_valued))
        shape = draw(st.integers(0, 4)) if i else 0
        if shape == 0:
            value: Any = draw(st.one_of(st.integers(-9, 9), st.just("lit"), st.just([1, 2])))
            is_int = isinstance(value, int)
        elif shape == 1:
            value = drawer.pick(keys[:i])  # an alias
            is_int = value in int_valued
        elif shape == 2:
            value = [drawer.pick(keys[:i]) for _ in range(draw(st.integers(1, 3)))]
            is_int = False
        else:
            value = drawer.task(0)
            is_int = value[0] in (mix, inc)
        dsk[keys[i]] = value
        if is_int:
            int_valued.append(keys[i])
    order = draw(st.permutations(list(dsk)))
    dsk = {k: dsk[k] for k in order}
    wanted = draw(st.one_of(
        st.sampled_from(keys),
        st.lists(st.sampled_from(keys), min_size=1, max_size=4),
        st.lists(st.lists(st.sampled_from(keys), max_size=3), min_size=1, max_size=3),
    ))
    return dsk, wanted


GET_ENGINES = ["inline", "threads", "threads-all-pooled", "processes"]


@pytest.mark.parametrize("kind", GET_ENGINES)
def test_random_task_graphs_match_a_reference_evaluator(kind):
    try:
        import dask
    except ImportError:
        dask = None
    quick, stress = (8, 100) if kind == "processes" else (80, 2000)
    with shared_engines.make_engine(kind) as engine:
        @fuzz_settings(quick=quick, stress=stress)
        @given(graph=task_graphs(max_keys=20 if kind == "processes" else 40))
        def check(graph: tuple[dict, Any]) -> None:
            dsk, keys = graph
            note(f"graph {dsk!r}\nkeys {keys!r}")
            expected = reference_get(dsk, keys)
            assert engine.get(dsk, keys) == expected
            assert engine.get(dsk, keys) == expected  # a second, learned run
            if dask is not None and kind == "inline":
                assert dask.get(dsk, keys) == expected

        check()
