"""Ready-made graphs used by the demo, the examples and the benchmarks: a tanh MLP
classifier with softmax cross-entropy (Deep Learning, algorithms 6.3/6.4), its
gradient nodes, and plain minibatch SGD that feeds parameters and fetches gradients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .gradients import gradients
from .graph import Graph, Node
from .ops import add, matmul, placeholder, softmax_cross_entropy, tanh
from .ops import sum as sum_


@dataclass
class MLP:
    """Nodes of ``logits = tanh(... tanh(x W1 + b1) ...) Wn + bn`` and its loss/gradients.

    Parameters are placeholders: graphs are immutable, so a training step feeds the
    current parameter values and fetches the loss and the gradients.
    """

    graph: Graph
    x: Node
    labels: Node
    params: list[Node]
    logits: Node
    loss: Node
    grads: list[Node]
    sizes: tuple[int, ...] = field(default=())
    dtype: np.dtype = field(default=np.dtype(np.float64))

    def init_params(self, seed: int = 0) -> list[np.ndarray]:
        """Glorot-uniform weights and zero biases, from a seeded generator."""
        rng = np.random.default_rng(seed)
        values = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            values.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(self.dtype))
            values.append(np.zeros(fan_out, dtype=self.dtype))
        return values

    def feeds(self, params: Sequence[np.ndarray], x: np.ndarray,
              labels: np.ndarray | None = None) -> dict[Node, Any]:
        feeds: dict[Node, Any] = dict(zip(self.params, params))
        feeds[self.x] = x
        if labels is not None:
            feeds[self.labels] = labels
        return feeds


def build_mlp(sizes: Sequence[int], dtype: Any = np.float64, batch: int | None = None) -> MLP:
    """An MLP with ``sizes = (inputs, hidden..., classes)``, tanh hidden layers."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError("build_mlp needs at least input and output sizes")
    dt = np.dtype(dtype)
    with Graph("mlp") as g:
        x = placeholder("x", (batch, sizes[0]), dt)
        labels = placeholder("labels", (batch,), np.int64)
        params: list[Node] = []
        h = x
        layers = len(sizes) - 1
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = placeholder(f"W{i + 1}", (fan_in, fan_out), dt)
            b = placeholder(f"b{i + 1}", (fan_out,), dt)
            params += [w, b]
            last = i == layers - 1
            h = add(matmul(h, w), b, name="logits" if last else None)
            if not last:
                h = tanh(h)
        loss = softmax_cross_entropy(h, labels, name="loss")
        grads = gradients(loss, params)
    return MLP(g, x, labels, params, h, loss, grads, sizes, dt)


def sgd_train(model: MLP, engine: Any, params: list[np.ndarray], x: np.ndarray,
              labels: np.ndarray, *, epochs: int, batch_size: int, lr: float,
              seed: int = 0, progress: Any = None) -> list[float]:
    """Minibatch SGD through ``engine``; returns the mean loss of each epoch.

    ``progress`` (optional) is called as ``progress(epoch, step, loss)`` after each step.
    """
    rng = np.random.default_rng(seed)
    history = []
    fetches = [model.loss, *model.grads]
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for step, start in enumerate(range(0, len(x), batch_size)):
            idx = order[start:start + batch_size]
            loss, *grads = engine.run(fetches, model.feeds(params, x[idx], labels[idx]))
            for p, g in zip(params, grads):
                p -= lr * g
            losses.append(float(loss))
            if progress is not None:
                progress(epoch, step, float(loss))
        history.append(float(np.mean(losses)))
    return history


def accuracy(model: MLP, engine: Any, params: Sequence[np.ndarray], x: np.ndarray,
             labels: np.ndarray) -> float:
    logits = engine.run(model.logits, model.feeds(params, x))
    return float(np.mean(np.argmax(logits, axis=1) == labels))


@dataclass
class TanhChain:
    """``h = tanh(h * w_i)`` for ``layers`` scalar weights, ``loss = sum(h)``, and the
    gradients with respect to ``x`` and every ``w_i``: the deep chain on which gradient
    checkpointing is measured (``checkpoints`` as for ``gradients``)."""

    graph: Graph
    x: Node
    weights: list[Node]
    loss: Node
    grads: list[Node]

    def feeds(self, seed: int = 0) -> dict[Node, Any]:
        rng = np.random.default_rng(seed)
        feeds: dict[Node, Any] = {self.x: rng.normal(size=self.x.shape)}
        feeds.update(zip(self.weights, rng.uniform(0.9, 1.1, len(self.weights))))
        return feeds


def build_tanh_chain(layers: int, size: int, checkpoints: Any = None) -> TanhChain:
    with Graph("tanh_chain") as g:
        x = placeholder("x", (size,))
        weights = [placeholder(f"w{i}", ()) for i in range(layers)]
        h = x
        for w in weights:
            h = tanh(h * w)
        loss = sum_(h)
        grads = gradients(loss, [x, *weights], checkpoints=checkpoints)
    return TanhChain(g, x, weights, loss, grads)
