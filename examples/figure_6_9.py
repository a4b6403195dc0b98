"""Back-propagation adds a number of nodes linear in depth, where summing over paths
would be exponential (Deep Learning, section 6.5.3 and figure 6.9).

The graph is a chain in which every step uses the previous node several times:

- ``poly`` (default): ``h = h * h * 0.5 + h``: ``h`` feeds the product twice and the sum
  once, so 3 paths lead from one step back to the previous one and ``3 ** depth``
  paths lead from the output back to ``x``;
- ``sin``: ``h = sin(h) * h``: 2 paths per step, ``2 ** depth`` in all.

The chain rule written as a sum over paths (equation 6.49 of the book: ``dy/dx`` is
the sum, over every path from ``x`` to ``y``, of the product of the local derivatives
on its edges) does work proportional to the number of paths. Back-propagation visits
each node once, sums what arrives from its consumers, and so adds a fixed number of
gradient nodes per step. The script prints, for several depths, the forward nodes,
the gradient nodes that ``df.gradients`` added and the number of paths; then, for
small depths, it really enumerates the paths and checks that both give the same
derivative, which it also checks against the product of the per-step derivatives
computed in numpy.

    python examples/figure_6_9.py [--step poly|sin] [--max-depth 128] [--fast]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import dataflow as df
import scheduler

STEPS = {
    # the step on nodes, the same step and its derivative on floats, x, paths per step
    "poly": (lambda h: h * h * 0.5 + h, lambda h: h * h * 0.5 + h, lambda h: h + 1.0,
             0.01, 3),
    # x = pi/2 is a fixed point of sin(h) * h, so the values stay finite at any depth
    "sin": (lambda h: df.sin(h) * h, lambda h: np.sin(h) * h,
            lambda h: np.cos(h) * h + np.sin(h), np.pi / 2, 2),
}


def build_chain(step: str, depth: int):
    """``x`` and the output of ``depth`` steps, in a new graph."""
    fn = STEPS[step][0]
    with df.Graph(f"chain{depth}") as graph:
        x = df.placeholder("x", (), np.float64)
        h = x
        for _ in range(depth):
            h = fn(h)
    return graph, x, h


def count_paths(graph: df.Graph, x: df.Node, y: df.Node) -> int:
    """Number of paths from ``x`` to ``y`` (an edge per input slot, so ``h * h``
    counts twice), by dynamic programming over the nodes in creation order, which is
    a topological order. Python integers: the count is exact however large."""
    paths: dict[int, int] = {x.id: 1}
    for node in graph.nodes:
        if node is not x:
            paths[node.id] = sum(paths[p.id] for p in node.inputs)
    return paths[y.id]


def _local_derivative(node: df.Node, slot: int, values: dict[int, float]) -> float:
    """d node / d node.inputs[slot], for the few ops these chains use."""
    op = node.op.name
    if op == "add":
        return 1.0
    if op == "multiply":
        return values[node.inputs[1 - slot].id]
    if op == "sin":
        return float(np.cos(values[node.inputs[0].id]))
    raise ValueError(f"no local derivative for op {op}")


def enumerate_paths(graph: df.Graph, x: df.Node, y: df.Node,
                    values: dict[int, float]) -> tuple[float, int, int]:
    """``dy/dx`` as the sum over all paths of the product of local derivatives (an
    iterative depth-first walk). Returns the derivative, the number of paths and the
    number of multiplications done."""
    reaches = {x.id}
    for node in graph.nodes:
        if any(p.id in reaches for p in node.inputs):
            reaches.add(node.id)
    total, paths, multiplications = 0.0, 0, 0
    stack = [(y, 1.0)]
    while stack:
        node, product = stack.pop()
        if node is x:
            total += product
            paths += 1
            continue
        for slot, parent in enumerate(node.inputs):
            if parent.id in reaches:
                stack.append((parent, product * _local_derivative(node, slot, values)))
                multiplications += 1
    return total, paths, multiplications


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--step", choices=sorted(STEPS), default="poly")
    parser.add_argument("--max-depth", type=int, default=128, help="deepest chain (a power of 2)")
    parser.add_argument("--enumerate-depth", type=int, default=10,
                        help="enumerate the paths for depths up to this")
    parser.add_argument("--fast", action="store_true",
                        help="CI-sized: depths up to 32, paths enumerated up to depth 6")
    args = parser.parse_args(argv)
    if args.fast:
        args.max_depth, args.enumerate_depth = 32, 6
    _, step_value, derivative, x0, per_step = STEPS[args.step]
    depths = [1 << k for k in range(args.max_depth.bit_length()) if 1 << k <= args.max_depth]

    rows = []
    with scheduler.Engine("inline") as engine:
        for depth in depths:
            graph, x, y = build_chain(args.step, depth)
            forward_nodes = len(graph)
            (dy_dx,) = df.gradients(y, [x])
            gradient_nodes = len(graph) - forward_nodes
            paths = count_paths(graph, x, y)
            backprop = float(engine.run(dy_dx, {x: x0}))
            h, chain = x0, 1.0  # the chain rule step by step, in numpy
            for _ in range(depth):
                chain *= derivative(h)
                h = step_value(h)
            rows.append({"depth": depth, "forward_nodes": forward_nodes,
                         "gradient_nodes": gradient_nodes, "paths": paths,
                         "backprop": backprop, "chain_rule": chain})

        enumerated = []
        for depth in range(1, args.enumerate_depth + 1):
            graph, x, y = build_chain(args.step, depth)
            forward_nodes = len(graph)
            (dy_dx,) = df.gradients(y, [x])
            gradient_nodes = len(graph) - forward_nodes
            forward = graph.nodes[:forward_nodes]
            values = dict(zip((n.id for n in forward), engine.run(list(forward), {x: x0})))
            started = time.perf_counter()
            naive, paths, multiplications = enumerate_paths(graph, x, y, values)
            naive_seconds = time.perf_counter() - started
            backprop = float(engine.run(dy_dx, {x: x0}))
            enumerated.append({"depth": depth, "paths": paths,
                               "multiplications": multiplications,
                               "gradient_nodes": gradient_nodes, "naive": naive,
                               "backprop": backprop, "naive_seconds": naive_seconds})

    step_text = {"poly": "h = h*h*0.5 + h", "sin": "h = sin(h)*h"}[args.step]
    print(f"chain {step_text}: {per_step} paths per step, so {per_step}^depth paths x -> y")
    print(f"{'depth':>6} {'forward nodes':>14} {'gradient nodes':>15} {'per step':>9} "
          f"{'paths x -> y':>14}  dy/dx (back-prop vs chain rule)")
    for r in rows:
        print(f"{r['depth']:>6} {r['forward_nodes']:>14} {r['gradient_nodes']:>15} "
              f"{r['gradient_nodes'] / r['depth']:>9.2f} {r['paths']:>14.4g}  "
              f"{r['backprop']:.12g} vs {r['chain_rule']:.12g}")
    print("summing over paths instead (the paths really enumerated):")
    print(f"{'depth':>6} {'paths':>8} {'multiplications':>16} {'gradient nodes':>15} "
          f"{'seconds':>9}  dy/dx (paths vs back-prop)")
    for e in enumerated:
        print(f"{e['depth']:>6} {e['paths']:>8} {e['multiplications']:>16} "
              f"{e['gradient_nodes']:>15} {e['naive_seconds']:>9.4f}  "
              f"{e['naive']:.12g} vs {e['backprop']:.12g}")
    per_depth = [r["gradient_nodes"] / r["depth"] for r in rows]
    print(f"gradient nodes per step: {min(per_depth):.2f} to {max(per_depth):.2f} "
          "(linear in depth); paths grow exponentially")
    return {"step": args.step, "paths_per_step": per_step, "rows": rows,
            "enumerated": enumerated}


if __name__ == "__main__":
    main()
