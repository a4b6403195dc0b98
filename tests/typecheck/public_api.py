"""The public API as a user writes it, for the type checker: ``make lint`` runs mypy on
this file with the packages (pytest does not collect it). Each annotation states what a
user may rely on; mypy fails if a public signature stops providing it."""

from __future__ import annotations

import numpy as np

import dataflow as df
import scheduler


def build() -> tuple[df.Graph, dict[df.Node, np.ndarray], df.Node, df.Node]:
    with df.Graph("typed") as graph:
        x = df.placeholder("x", (None, 3))
        w = df.placeholder("w", (3, 2))
        loss: df.Node = df.mean(df.square(df.tanh(x @ w)))
        (gw,) = df.gradients(loss, [w])
        step: df.Node = w - 0.1 * gw  # a gradient is a node by default, not Optional
        maybe: df.Node | None = df.grad(loss, x, unconnected="none")
        assert maybe is not None
    return graph, {x: np.ones((4, 3)), w: np.ones((3, 2))}, loss, step


def inspect_graph(graph: df.Graph, node: df.Node) -> None:
    inputs: tuple[df.Node, ...] = graph.placeholders()
    nodes: tuple[df.Node, ...] = graph.nodes
    shape: tuple = node.shape
    dtype: np.dtype = node.dtype
    consumers: tuple[df.Node, ...] = df.get_consumers(node)
    op: df.Op = df.get_operation(node)
    dot: str = graph.to_dot()
    gradient: bool = graph.is_gradient(node)
    print(len(inputs), len(nodes), shape, dtype, len(consumers), op, len(dot), gradient)


def run_and_profile(feeds: dict[df.Node, np.ndarray], loss: df.Node, step: df.Node) -> None:
    with scheduler.Engine("threads", workers=2) as engine:
        value, new_w = engine.run([loss, step], feeds)
        prof: scheduler.Profiler = scheduler.profile(loss, feeds, engine=engine, warmup=1)
    wall: float = prof.wall_time  # a recorded fact: a property
    busy: float = prof.busy_time
    critical: float = prof.critical_path_time()  # an analysis: a method
    predicted: float = prof.simulate(workers=16)
    records: list[scheduler.NodeRecord] = prof.records
    summary: str = prof.summary(top=5)
    print(value, new_w, wall, busy, critical, predicted, len(records), len(summary))


def plain_task_graph() -> int:
    tasks = {"a": 1, "b": (sum, ["a", "a"])}
    result: int = scheduler.get(tasks, "b", executor="inline")
    return result


if __name__ == "__main__":
    graph, feeds, loss, step = build()
    inspect_graph(graph, loss)
    run_and_profile(feeds, loss, step)
    print(plain_task_graph())
