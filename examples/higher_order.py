"""Higher-order derivatives are gradients of gradients: a Hessian-vector product, a
Jacobian, a full Hessian and repeated derivatives, each compared with its explicit
formula in numpy.

The function is ``f(x) = 0.5 * sum(tanh(W x) ** 2)`` with ``W`` of shape ``(m, n)``.
With ``t = tanh(W x)``:

- gradient           ``grad f = W^T (t (1 - t^2))``
- Hessian            ``H = W^T diag((1 - t^2)(1 - 3 t^2)) W``
- Hessian-vector     ``H v = W^T ((1 - t^2)(1 - 3 t^2) * (W v))``, by
  ``df.hessian_vector_product(f, x, v)`` (the gradient of ``<grad f, v>``; no Hessian
  is formed)
- Jacobian of ``t``  ``dt/dx = diag(1 - t^2) W``, by ``df.jacobian(t, x)``
- the full Hessian   ``df.jacobian(grad f, x)``: a Jacobian of gradient nodes

and ``d^k/dx^k sin(x) = sin(x + k pi / 2)`` by applying ``df.grad`` ``k`` times.
Every derivative is a node of the same graph, so all of them are fetched in one run.

    python examples/higher_order.py [--n 5] [--m 4] [--order 4] [--fast]
"""

from __future__ import annotations

import argparse

import numpy as np

import dataflow as df
import scheduler


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--n", type=int, default=5, help="size of x")
    parser.add_argument("--m", type=int, default=4, help="rows of W")
    parser.add_argument("--order", type=int, default=4, help="highest derivative of sin")
    parser.add_argument("--fast", action="store_true", help="CI-sized: n=3, m=2, order 3")
    args = parser.parse_args(argv)
    if args.fast:
        args.n, args.m, args.order = 3, 2, 3
    n, m = args.n, args.m

    rng = np.random.default_rng(0)
    w_value = rng.standard_normal((m, n)) / np.sqrt(n)
    x_value = rng.standard_normal(n)
    v_value = rng.standard_normal(n)

    with df.Graph() as graph:
        x = df.placeholder("x", (n,))
        w = df.constant(w_value, name="W")
        t = df.tanh(w @ x)
        f = 0.5 * df.sum(df.square(t))
        forward_nodes = len(graph)
        g = df.grad(f, x)
        hvp = df.hessian_vector_product(f, x, v_value)
        jac = df.jacobian(t, x)
        hessian = df.jacobian(g, x)  # gradients of gradients, one row per element of g
        derivs = [df.sin(x)]
        for _ in range(args.order):
            derivs.append(df.grad(df.sum(derivs[-1]), x))  # elementwise, so diagonal
    total_nodes = len(graph)

    with scheduler.Engine("inline") as engine:
        got = engine.run({"grad": g, "hvp": hvp, "jacobian": jac, "hessian": hessian,
                          **{f"d{k}": d for k, d in enumerate(derivs)}}, {x: x_value})

    tv = np.tanh(w_value @ x_value)
    curvature = (1 - tv ** 2) * (1 - 3 * tv ** 2)
    want = {
        "grad": w_value.T @ (tv * (1 - tv ** 2)),
        "hvp": w_value.T @ (curvature * (w_value @ v_value)),
        "jacobian": (1 - tv ** 2)[:, None] * w_value,
        "hessian": w_value.T @ (curvature[:, None] * w_value),
    }
    errors = {k: float(np.max(np.abs(got[k] - want[k]))) for k in want}
    errors["derivs"] = max(
        float(np.max(np.abs(d - np.sin(x_value + k * np.pi / 2))))
        for k, d in enumerate(got[f"d{k}"] for k in range(args.order + 1)))
    hessian_symmetry = float(np.max(np.abs(got["hessian"] - got["hessian"].T)))
    hvp_vs_hessian = float(np.max(np.abs(got["hessian"] @ v_value - got["hvp"])))

    print(f"f(x) = 0.5 * sum(tanh(W x)^2), W {m}x{n}: {forward_nodes} forward nodes, "
          f"{total_nodes} with every derivative below")
    labels = {"grad": "gradient", "hvp": "Hessian-vector product",
              "jacobian": f"Jacobian of tanh(W x) ({m}x{n})",
              "hessian": f"Hessian = jacobian(grad) ({n}x{n})",
              "derivs": f"d^k/dx^k sin(x), k = 0..{args.order}"}
    for key, label in labels.items():
        print(f"{label:<36} max abs error vs formula {errors[key]:.1e}")
    print(f"Hessian symmetric to {hessian_symmetry:.1e}; H @ v vs HVP {hvp_vs_hessian:.1e}")
    return {"errors": errors, "hessian_symmetry": hessian_symmetry,
            "hvp_vs_hessian": hvp_vs_hessian, "forward_nodes": forward_nodes,
            "total_nodes": total_nodes, "order": args.order}


if __name__ == "__main__":
    main()
