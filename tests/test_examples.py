"""Every script in examples/ runs with CI-sized settings and its figures are checked.

Each example is imported by path (examples/ is not a package) and its ``main(argv)``
called in-process; ``main`` returns a dict of what it printed. Timings are printed,
never asserted beyond being positive: the machine running the suite may be busy.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dataflow as df
import scheduler
from dataflow.ops import const_value

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
TESTED = {"mlp_digits", "profile_mlp_step", "wide_graph_speedup", "asyncio_service",
          "custom_op", "higher_order", "figure_6_9", "dask_scaleout"}


def load_example(name: str, monkeypatch: pytest.MonkeyPatch):
    """Import examples/<name>.py as a fresh module. Some examples set the BLAS thread
    variables at import (for their own process); monkeypatch puts them back after the
    test, so that they do not leak into later tests' subprocesses."""
    for var in BLAS_VARS:
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == TESTED


@pytest.mark.parametrize("name", sorted(TESTED))
def test_example_has_docstring_and_help(name, monkeypatch, capsys):
    module = load_example(name, monkeypatch)
    assert module.__doc__ and len(module.__doc__.strip().splitlines()) >= 3
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    assert "--fast" in out


def test_mlp_digits(tmp_path, monkeypatch):
    module = load_example("mlp_digits", monkeypatch)
    result = module.main(["--epochs", "5", "--out", str(tmp_path / "prof"), "--no-progress"])
    assert result["test_accuracy"] >= 0.9
    assert len(result["loss_history"]) == 5
    assert result["loss_history"][-1] < result["loss_history"][0]
    for name in result["profile_files"]:
        assert (tmp_path / "prof" / name).stat().st_size > 0
    assert {"trace.json", "summary.txt"} <= set(result["profile_files"])


def test_mlp_digits_fast(tmp_path, monkeypatch):
    module = load_example("mlp_digits", monkeypatch)
    result = module.main(["--fast", "--out", str(tmp_path / "prof")])
    assert len(result["loss_history"]) == 3
    assert result["loss_history"][-1] < result["loss_history"][0]


def test_profile_mlp_step(tmp_path, monkeypatch):
    module = load_example("profile_mlp_step", monkeypatch)
    result = module.main(["--fast", "--out", str(tmp_path), "--warmup", "1"])
    assert math.isfinite(result["loss"]) and result["loss"] > 0
    for path in result["paths"].values():
        assert Path(path).stat().st_size > 0
    assert len(result["profiler"].records) > 0


def test_wide_graph_speedup(monkeypatch, capsys):
    module = load_example("wide_graph_speedup", monkeypatch)
    result = module.main(["--fast"])
    out = capsys.readouterr().out
    assert result["identical"]  # inline and threads agree bitwise
    assert result["matmuls"] == 8 * 2
    assert result["workers"] == 2
    assert result["inline_seconds"] > 0 and result["threads_seconds"] > 0
    assert result["speedup"] == pytest.approx(result["inline_seconds"] / result["threads_seconds"])
    assert result["blas_threads"] in (1, None)
    assert f"speedup: {result['speedup']:.2f}x" in out


def test_wide_graph_is_wide(monkeypatch):
    module = load_example("wide_graph_speedup", monkeypatch)
    graph, feeds, total = module.build_wide_graph(branches=3, depth=2, size=4)
    assert len(feeds) == 3
    assert sum(n.op.name == "matmul" for n in graph.nodes) == 6
    a, b, c = feeds.values()
    w = [const_value(graph.node_by_name(f"w{i}_{k}")) for i in range(3) for k in range(2)]
    value = scheduler.run(total, feeds, executor="inline")
    want = a @ w[0] @ w[1] + b @ w[2] @ w[3] + c @ w[4] @ w[5]
    np.testing.assert_allclose(value, want, rtol=1e-12)


def test_asyncio_service(monkeypatch):
    module = load_example("asyncio_service", monkeypatch)
    result = module.main(["--fast"])
    assert result["requests"] == 40
    assert result["correct"]
    assert [p["concurrency"] for p in result["passes"]] == [4, 0]
    for p in result["passes"]:
        assert p["correct"]
        assert p["throughput"] > 0
        assert p["ticks"] >= 1
        # generous: the loop must never be blocked for a whole run of all requests
        assert 0 <= p["max_lag"] < 1.0
        assert p["max_latency"] >= p["median_latency"] > 0


def test_custom_op(monkeypatch):
    module = load_example("custom_op", monkeypatch)
    result = module.main(["--fast"])
    assert result["forward_error"] < 1e-12
    assert len(result["checked"]) == 4
    assert result["wrong_bprop_error"] is not None
    assert result["no_bprop_forward_ok"]
    assert "examples.round" in result["no_bprop_error"]
    assert "custom op" in result["save_error"]


def test_custom_op_subclass_is_an_op(monkeypatch):
    module = load_example("custom_op", monkeypatch)
    with df.Graph():
        x = df.placeholder("x", (2, 3))
        y = module.scaled_softplus(x, 2.0)
        norms = module.row_norm(x)
    assert isinstance(y.op, df.Op) and y.op.beta == 2.0
    assert y.shape == (2, 3) and norms.shape == (2,)
    assert not y.op.builtin and not norms.op.builtin
    with pytest.raises(df.ShapeError):
        with df.Graph():
            module.row_norm(df.placeholder("s", ()))


def test_higher_order(monkeypatch):
    module = load_example("higher_order", monkeypatch)
    result = module.main(["--fast"])
    assert set(result["errors"]) == {"grad", "hvp", "jacobian", "hessian", "derivs"}
    for key, error in result["errors"].items():
        assert error < 1e-12, key
    assert result["hessian_symmetry"] < 1e-12
    assert result["hvp_vs_hessian"] < 1e-12
    assert result["order"] == 3
    assert result["total_nodes"] > result["forward_nodes"]


@pytest.mark.parametrize("step", ["poly", "sin"])
def test_figure_6_9(step, monkeypatch):
    module = load_example("figure_6_9", monkeypatch)
    result = module.main(["--fast", "--step", step])
    per_step = result["paths_per_step"]
    rows = result["rows"]
    assert [r["depth"] for r in rows] == [1, 2, 4, 8, 16, 32]
    for r in rows:
        assert r["paths"] == per_step ** r["depth"]  # exponential
        assert r["backprop"] == pytest.approx(r["chain_rule"], rel=1e-12)
    # back-propagation: exactly a fixed number of gradient nodes per step (affine in depth)
    slope = rows[1]["gradient_nodes"] - rows[0]["gradient_nodes"]
    offset = rows[0]["gradient_nodes"] - slope
    assert 0 < slope <= 8
    for r in rows:
        assert r["gradient_nodes"] == slope * r["depth"] + offset
        assert r["forward_nodes"] == 1 + (rows[0]["forward_nodes"] - 1) * r["depth"]
    enumerated = result["enumerated"]
    assert [e["depth"] for e in enumerated] == list(range(1, 7))
    for e in enumerated:
        assert e["paths"] == per_step ** e["depth"]
        assert e["naive"] == pytest.approx(e["backprop"], rel=1e-12)
    work = [e["multiplications"] for e in enumerated]
    assert all(later >= per_step * earlier for earlier, later in zip(work, work[1:]))


def test_figure_6_9_path_count_counts_repeated_inputs(monkeypatch):
    module = load_example("figure_6_9", monkeypatch)
    with df.Graph() as g:
        x = df.placeholder("x", ())
        y = x * x * x  # two multiplies: (x*x)*x, so 2 + 1 paths
    assert module.count_paths(g, x, y) == 3


@pytest.fixture(scope="module")
def dask_offload_thread():
    # distributed keeps one process-wide "Dask-Offload" thread for its whole life; start
    # it before the leak check (a function-scoped fixture) takes its snapshot.
    distributed_utils = pytest.importorskip("distributed.utils")
    offload = getattr(distributed_utils, "_offload_executor", None)
    if offload is not None:
        offload.submit(lambda: None).result()


def test_dask_scaleout(dask_offload_thread, monkeypatch):
    pytest.importorskip("distributed")
    module = load_example("dask_scaleout", monkeypatch)
    result = module.main(["--fast"])
    assert result["identical"]  # bitwise equal to inline
    assert result["outputs"] == 5  # loss and 4 gradients (64-32-10: two layers)
    assert result["workers"] == 2
    assert math.isfinite(result["loss"])
    assert result["startup_seconds"] > 0 and result["dask_seconds"] > 0


def test_example_runs_as_a_script():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "higher_order.py"), "--fast"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Hessian-vector product" in proc.stdout
    assert proc.stderr == ""
