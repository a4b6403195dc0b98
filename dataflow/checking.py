"""``check_grads``: finite-difference verification of symbolic gradients, shipped so
that users can check their own ops the way the built-in ones are checked.

First order compares the Jacobian ``d fn / d arg`` with central differences in float64:
in full for small shapes, and as ``u^T J v`` in random directions (from a private
seeded generator) for larger ones. Order ``k + 1`` is the first-order check of the
scalar ``<grad_k, w>`` for random ``u, w``: the gradient of a gradient, built as nodes.
Each gradient is also computed twice and must be bitwise identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import GradientError
from .gradients import gradients
from .graph import Graph, Node
from .ops import add_n, constant, placeholder
from .ops import sum as sum_


class GradientCheckError(AssertionError):
    """A symbolic gradient disagrees with finite differences (or with itself)."""


def check_grads(fn: Callable[..., Node], args: Sequence[Any], order: int = 2, *,
                eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7,
                full_limit: int = 64, directions: int = 4, seed: int = 0) -> None:
    """Check the gradients of ``fn`` at ``args`` against finite differences.

    Central differences in float64; full Jacobians for small shapes, ``v^T J u`` in
    random directions for large ones; order ``k`` checks the gradient of
    ``<gradient of order k - 1, v>``. Gradients computed twice must be bitwise equal.

    Parameters
    ----------
    fn : callable
        Builds a node from one placeholder node per entry of ``args``.
    args : sequence of array_like
        The point to check at (converted to float64).
    order : int, default 2
        The highest derivative order to check.
    eps : float, default 1e-6
        The finite-difference step.
    rtol, atol : float, default 1e-5, 1e-7
        Tolerances of the comparison.
    full_limit : int, default 64
        Largest input/output size for which full Jacobians are compared.
    directions : int, default 4
        Random directions compared above ``full_limit``.
    seed : int, default 0
        Seed of the private generator of directions.

    Raises
    ------
    GradientCheckError
        Describing the worst mismatch (a subclass of ``GradientError``).
    TypeError
        If ``fn`` does not return a node.
    """
    import scheduler

    if order < 1:
        raise ValueError("check_grads: order must be at least 1")
    arrays = [np.array(a, dtype=np.float64) for a in args]
    rng = np.random.default_rng(seed)
    with Graph("check_grads"):
        xs = [placeholder(f"arg{i}", a.shape) for i, a in enumerate(arrays)]
        out = fn(*xs)
    if not isinstance(out, Node):
        raise TypeError(f"check_grads: fn must return a node, got {type(out).__name__}")
    if out.dtype.kind != "f":
        raise GradientError(f"check_grads: fn returns dtype {out.dtype}, which has no gradient")
    feeds = dict(zip(xs, arrays))
    with scheduler.Engine("inline") as engine:
        level = out
        for k in range(1, order + 1):
            checker = _FirstOrder(engine, level, xs, arrays, eps, rtol, atol, full_limit,
                                  directions, rng, k)
            checker.check()
            if k == order:
                break
            shape = engine.run(level, feeds).shape
            u = constant(rng.standard_normal(shape), graph=level.graph)
            grads = gradients(level, xs, grad_ys=[u])
            terms = [sum_(g * constant(rng.standard_normal(a.shape), graph=level.graph))
                     for g, a in zip(grads, arrays)]
            level = add_n(terms)


class _FirstOrder:
    """The first-order check of one node ``f`` with respect to every placeholder."""

    def __init__(self, engine: Any, f: Node, xs: list[Node], arrays: list[np.ndarray],
                 eps: float, rtol: float, atol: float, full_limit: int, directions: int,
                 rng: np.random.Generator, order: int):
        self.engine, self.f, self.xs, self.arrays = engine, f, xs, arrays
        self.eps, self.rtol, self.atol = eps, rtol, atol
        self.full_limit, self.directions, self.rng, self.order = full_limit, directions, rng, order
        self.value = np.asarray(engine.run(f, dict(zip(xs, arrays))))
        self.u = _seed_placeholder(f, self.value.shape)
        self.grads = gradients(f, xs, grad_ys=[self.u])

    def evaluate(self, arrays: list[np.ndarray]) -> np.ndarray:
        return np.asarray(self.engine.run(self.f, dict(zip(self.xs, arrays))), dtype=np.float64)

    def vjp(self, u: np.ndarray) -> list[np.ndarray]:
        feeds = dict(zip(self.xs, self.arrays))
        feeds[self.u] = u
        first = self.engine.run(self.grads, feeds)
        second = self.engine.run(self.grads, feeds)
        for i, (a, b) in enumerate(zip(first, second)):
            if not np.array_equal(a, b, equal_nan=True):
                raise GradientCheckError(f"order {self.order}: the gradient for arg {i} differs "
                                         "between two identical runs")
        return [np.asarray(g, dtype=np.float64) for g in first]

    def check(self) -> None:
        for i, x in enumerate(self.arrays):
            if self.value.size <= self.full_limit and x.size <= self.full_limit:
                self._check_full(i)
            else:
                self._check_directions(i)

    def _numeric(self, i: int, direction: np.ndarray) -> np.ndarray:
        plus = [a.copy() for a in self.arrays]
        minus = [a.copy() for a in self.arrays]
        plus[i] = plus[i] + self.eps * direction
        minus[i] = minus[i] - self.eps * direction
        return (self.evaluate(plus) - self.evaluate(minus)) / (2 * self.eps)

    def _check_full(self, i: int) -> None:
        out_size, x = self.value.size, self.arrays[i]
        analytic = np.zeros((out_size, x.size))
        for row in range(out_size):
            u = np.zeros(out_size)
            u[row] = 1.0
            analytic[row] = self.vjp(u.reshape(self.value.shape))[i].reshape(-1)
        numeric = np.zeros((out_size, x.size))
        for col in range(x.size):
            e = np.zeros(x.size)
            e[col] = 1.0
            numeric[:, col] = self._numeric(i, e.reshape(x.shape)).reshape(-1)
        self._compare(i, analytic, numeric, "Jacobian")

    def _check_directions(self, i: int) -> None:
        x = self.arrays[i]
        for _ in range(self.directions):
            u = self.rng.standard_normal(self.value.shape)
            v = self.rng.standard_normal(x.shape)
            analytic = np.sum(self.vjp(u)[i] * v)
            numeric = np.sum(u * self._numeric(i, v))
            self._compare(i, np.asarray(analytic), np.asarray(numeric), "u^T J v")

    def _compare(self, i: int, analytic: np.ndarray, numeric: np.ndarray, what: str) -> None:
        if not np.allclose(analytic, numeric, rtol=self.rtol, atol=self.atol):
            err = np.max(np.abs(analytic - numeric))
            raise GradientCheckError(
                f"order {self.order}, arg {i}: {what} from gradients disagrees with central "
                f"differences (max abs error {err:.3g})\nsymbolic:\n{analytic}\nnumeric:\n{numeric}"
            )


def _seed_placeholder(f: Node, shape: tuple) -> Node:
    return placeholder(f"grad_seed_{f.id}", shape, graph=f.graph)
