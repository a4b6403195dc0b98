"""Fusion on small arrays (``Engine(fuse=True)``, ``dataflow/fusion_regions.py``):
convex regions of elementwise nodes run as one multi-output compiled kernel, with
bitwise the unfused values on every executor; kernels are cached on disk."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from test_fusion import assert_fused_bits, chain
from test_fuzz import Built, Program, assert_bitwise, fuzz_settings, programs

import dataflow as df
import scheduler
from dataflow import fusion_regions
from dataflow.bench import workloads as w
from dataflow.graph import ancestors
from dataflow.ops.core import Placeholder

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]


def tiny_chain(n: int = 60):
    """The benchmark's tiny-op chain: sin, * 1.0001, + 0.1 on 4 elements, and its
    gradient."""
    with df.Graph():
        x = df.placeholder("x", (4,))
        y = df.sum(w.tiny_chain((df.sin, df.multiply, df.add), x, n))
        (gx,) = df.gradients(y, [x])
    return [y, gx], {x: w.TINY_X0}


def plan_ops(engine, fetches, feeds) -> list[str]:
    plan = engine.plan(list(dict.fromkeys(fetches)), feeds)
    return [plan.ops[p] for p in plan.compute]


def test_a_forward_pass_and_its_gradient_become_one_kernel_with_the_unfused_bits():
    # 40 sin steps: their inputs, read again by the gradient, are more values than a
    # region's operands, yet none leaves the region.
    fetches, feeds = tiny_chain(120)
    with scheduler.Engine("inline") as plain:
        expected = plain.run(fetches, feeds)
    with scheduler.Engine("inline", fuse=True) as inline, \
            scheduler.Engine("threads", workers=2, fuse=True) as threads:
        ops = plan_ops(inline, fetches, feeds)
        if {fusion_regions.Sin, fusion_regions.Cos} <= fusion_regions.exact_functions():
            # The chain and the gradient's chain are one region; only the sum is not.
            assert sorted(ops) == ["fused_output", "fused_output", "fused_region", "sum"]
        else:
            assert "fused_region" in ops
        for r in range(3):  # the third inline run is a compiled plan's
            assert_bitwise(inline.run(fetches, feeds), expected, f"inline run {r}")
            assert_bitwise(threads.run(fetches, feeds), expected, f"threads run {r}")


def test_regions_run_in_worker_processes():
    fetches, feeds = tiny_chain(30)
    with scheduler.Engine("inline") as plain:
        expected = plain.run(fetches, feeds)
    with scheduler.Engine("processes", workers=2, fuse=True, inline_threshold=0) as engine:
        assert_bitwise(engine.run(fetches, feeds), expected, "processes")


def test_region_kernels_pickle_as_their_source():
    source = "def region(i0, i1, o0, o1):\n    t0 = i0 * i1\n    o0[0] = t0\n    o1[0] = t0 + i0\n"
    kernel = fusion_regions.RegionKernel(source, "void(float64, float64, float64[:], "
                                         "float64[:])", "(),()->(),()")
    a, b = np.arange(3.0), np.full(3, 2.0)
    copy = pickle.loads(pickle.dumps(kernel))
    for k in (kernel, copy):
        first, second = k(a, b)
        assert np.array_equal(first, a * b) and np.array_equal(second, a * b + a)


def test_a_region_never_swallows_a_path_that_leaves_it_and_comes_back():
    """``a`` and ``c`` are small, elementwise and of one shape, but ``c`` reads ``a``
    through a sum: one kernel for both would need its own output as an input."""
    with df.Graph():
        x = df.placeholder("x", (5,))
        a = x
        for _ in range(8):
            a = a * 1.5 + 0.25
        s = df.sum(a)             # leaves the region's level
        c = a * s                 # back at the shape of ``a``
        for _ in range(8):
            c = c * 0.5 + 0.125
    feeds = {x: np.linspace(-1, 1, 5)}
    with scheduler.Engine("inline", fuse=True) as engine, scheduler.Engine("inline") as plain:
        ops = plan_ops(engine, [c, a], feeds)
        assert ops.count("fused_region") == 2
        assert_bitwise(engine.run([c, a], feeds), plain.run([c, a], feeds), "two regions")


def test_bounds_short_chains_and_large_arrays_are_not_regions():
    with scheduler.Engine("inline", fuse=True) as engine:
        x, y = chain(fusion_regions.MIN_REGION_OPS - 1, 10)
        assert "fused_region" not in plan_ops(engine, [y], {x: np.zeros(10)})
        x, y = chain(fusion_regions.MIN_REGION_OPS, 10)
        assert plan_ops(engine, [y], {x: np.zeros(10)}) == ["fused_region"]
        x, y = chain(20, 70_000)  # large arrays: fusion.py's kernels, not a region
        assert "fused_region" not in plan_ops(engine, [y], {x: np.zeros(70_000)})


def test_a_region_takes_a_bounded_number_of_operands():
    with df.Graph():
        xs = [df.placeholder(f"p{k}", (3,)) for k in range(fusion_regions.MAX_REGION_ARGS)]
        total = xs[0]
        for x in xs[1:]:
            total = total + x * 2.0
    feeds = {x: np.full(3, float(k)) for k, x in enumerate(xs)}
    with scheduler.Engine("inline", fuse=True) as engine, scheduler.Engine("inline") as plain:
        # 32 inputs and an output are one operand too many: the chain is cut where its
        # run reaches the bound, and the last few ops (too few for a region) stay apart.
        plan = engine.plan([total], feeds)
        regions = [p for p in plan.compute if plan.ops[p] == "fused_region"]
        assert len(regions) == 1
        assert len(plan.args[regions[0]]) + 1 <= fusion_regions.MAX_REGION_ARGS
        assert 0 < len(plan.compute) - 1 < fusion_regions.MIN_REGION_OPS
        assert_bitwise([engine.run(total, feeds)], [plain.run(total, feeds)], "cut")


def test_a_region_over_its_op_bound_is_cut_into_runs(monkeypatch):
    monkeypatch.setattr(fusion_regions, "MAX_REGION_OPS", 10)
    fetches, feeds = tiny_chain(12)  # forward and gradient: 30 ops in one component
    with scheduler.Engine("inline") as plain:
        expected = plain.run(fetches, feeds)
    with scheduler.Engine("inline", fuse=True) as engine:
        plan = engine.plan(fetches, feeds)
        regions = [plan.keys[p].op for p in plan.compute if plan.ops[p] == "fused_region"]
        assert len(regions) >= 2
        assert all(len(op.ops) <= 10 for op in regions)
        for r in range(3):
            assert_bitwise(engine.run(fetches, feeds), expected, f"runs {r}")


@pytest.mark.parametrize("fn", ["sin", "cos", "exp", "log", "tanh"])
def test_transcendental_functions_fuse_only_where_bitwise_numpys(fn):
    with df.Graph():
        x = df.placeholder("x", (6,))
        y = x * 0.5 - 2.0
        for _ in range(4):
            y = getattr(df, fn)(df.abs(y) + 0.5) * 0.25 - 1.0
    feeds = {x: np.linspace(0.1, 3, 6)}
    op = {"sin": fusion_regions.Sin, "cos": fusion_regions.Cos, "exp": fusion_regions.Exp,
          "log": fusion_regions.Log, "tanh": fusion_regions.Tanh}[fn]
    with scheduler.Engine("inline", fuse=True) as engine, scheduler.Engine("inline") as plain:
        ops = plan_ops(engine, [y], feeds)
        assert (fn in ops) is (op not in fusion_regions.exact_functions())
        assert_bitwise([engine.run(y, feeds)], [plain.run(y, feeds)], fn)


@fuzz_settings(quick=15, stress=300)
@given(program=programs(max_nodes=25), cut=st.booleans())
def test_random_graphs_in_regions_give_the_unfused_bits(program: Program, cut: bool):
    note(repr(program))
    built = Built(program)
    saved = (fusion_regions.MIN_REGION_OPS, fusion_regions.MAX_REGION_OPS,
             fusion_regions.MAX_REGION_ARGS)
    fusion_regions.MIN_REGION_OPS = 2  # the fuzzer's graphs are small
    if cut:  # and bounds so small that components are cut into runs
        fusion_regions.MAX_REGION_OPS, fusion_regions.MAX_REGION_ARGS = 4, 4
    try:
        assert_fused_bits(built)
    finally:
        (fusion_regions.MIN_REGION_OPS, fusion_regions.MAX_REGION_OPS,
         fusion_regions.MAX_REGION_ARGS) = saved


SCRIPT = textwrap.dedent("""
    import numpy as np, dataflow as df, scheduler
    with df.Graph():
        x = df.placeholder("x", (4,))
        y = x
        for k in range(12):
            y = y * 1.25 - 0.5 if k % 2 else df.sqrt(df.abs(y) + 1.0)
    with scheduler.Engine("inline", fuse=True) as engine:
        plan = engine.plan([y], {x: np.ones(4)})
        assert "fused_region" in [plan.ops[p] for p in plan.compute]
        print(engine.run(y, {x: np.arange(4.0)}).tobytes().hex())
""")


def run_script(env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_kernels_are_cached_on_disk_for_the_next_process(tmp_path):
    env = {**os.environ, "DATAFLOW_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)  # numba's index then lies next to the source
    first = run_script(env)
    sources = list((tmp_path / "kernels").glob("dataflow_kernel_*.py"))
    assert sources
    cached = list((tmp_path / "kernels" / "__pycache__").glob("*.nbi"))
    assert cached  # numba's index of the compiled machine code
    stamps = {p: p.stat().st_mtime_ns for p in sources}
    assert run_script(env) == first  # loaded from the cache, same bits
    assert {p: p.stat().st_mtime_ns for p in sources} == stamps  # sources not rewritten


def test_an_unwritable_cache_folder_compiles_in_memory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "DATAFLOW_CACHE_DIR": str(blocker / "sub")}
    home = {**os.environ, "DATAFLOW_CACHE_DIR": str(tmp_path / "ok")}
    assert run_script(env) == run_script(home)


def two_output_region(extra_name: str | None = None):
    """A region of 16 ops with two outputs (``a`` is read by a sum outside it)."""
    with df.Graph():
        x = df.placeholder("x", (4,))
        a = x
        for _ in range(4):
            a = a * 1.5 + 0.25
        b = a
        for _ in range(4):
            b = b * 0.5 - 1.0
        s = df.sum(a, name=extra_name)
        out = b * s
    return x, a, b, out


def test_a_region_of_several_outputs_takes_no_name_of_the_graph():
    """The region node is added before the nodes after it are copied with their own
    names: a name it made up must not be one of theirs."""
    x, a, _, out = two_output_region(extra_name="fused_region")
    feeds = {x: np.arange(4.0)}
    with scheduler.Engine("inline", fuse=True) as engine, scheduler.Engine("inline") as plain:
        assert "fused_region" in plan_ops(engine, [out, a], feeds)
        assert_bitwise(engine.run([out, a], feeds), plain.run([out, a], feeds), "named")


def test_a_failing_region_names_the_nodes_it_computes(monkeypatch):
    x, a, b, out = two_output_region()

    def broken(self, *values):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(fusion_regions.RegionKernel, "__call__", broken)
    with scheduler.Engine("inline", fuse=True) as engine:
        with pytest.raises(Exception, match="kernel failed") as info:
            engine.run(out, {x: np.arange(4.0)})
    said = " ".join([str(info.value), *getattr(info.value, "__notes__", [])])
    assert a.name in said and b.name in said, said


def test_a_damaged_cache_source_is_written_again(tmp_path, monkeypatch):
    from dataflow import kernel_cache

    monkeypatch.setenv("DATAFLOW_CACHE_DIR", str(tmp_path))
    source = "def region(i0, o0):\n    o0[0] = i0 * 3.0\n"
    function, in_file = kernel_cache.load_function(source, "region", {})
    path = Path(function.__code__.co_filename)
    assert in_file and path.parent == tmp_path / "kernels"
    for damage in (b"\xff\xfe not text", b"def region(i0, o0):\n    o0[0] = i0\n"):
        path.write_bytes(damage)
        function, in_file = kernel_cache.load_function(source, "region", {})
        out = np.zeros(1)
        function(2.0, out)
        assert in_file and out[0] == 6.0


def _edge_graph(case: str):
    """Small graphs at the edges of what regions compute: ``(fetches, feeds)``."""
    with df.Graph():
        if case == "0-d":
            x = df.placeholder("x", ())
            a = steps(x, 8)
            return [steps(a, 8), a], {x: np.array(0.3)}
        if case == "float32":
            x = df.placeholder("x", (3,), "float32")
            y = steps(x, 8, 1.1, 0.1)
            z = df.where(x > 0, y, -y) / df.constant(np.float32(3.0))
            return [z, y], {x: np.array([0.1, -0.2, 0.3], np.float32)}
        if case == "specials":
            x = df.placeholder("x", (6,))
            y = steps(df.sqrt(df.abs(-x) - 1.0) + (1.0 / x) * -x, 8)
            return [y], {x: np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 0.5])}
        if case == "fed":
            x = df.placeholder("x", (4,))
            a = steps(x, 8)
            f = a * 3.0
            b = steps(f + a, 8)
            return [b, a, b, x], {x: np.arange(4.0), f: np.full(4, 7.0)}
        raise AssertionError(case)


def steps(y, n: int, scale: float = 1.5, shift: float = 0.25):
    """``n`` ops: alternately ``* scale`` and ``+ shift``."""
    for k in range(n):
        y = y * scale if k % 2 else y + shift
    return y


@pytest.mark.parametrize("case", ["0-d", "float32", "specials", "fed"])
def test_regions_at_the_edges_give_the_unfused_values_types_and_warnings(case):
    """0-d arrays, float32 (literals, a bool condition), NaN/inf/-0.0 and division by
    zero, a fed computed node, a node fetched twice and a fetched placeholder."""
    fetches, feeds = _edge_graph(case)

    def run(engine):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            values = engine.run(fetches, feeds)
        return values, {w.category for w in said}

    with scheduler.Engine("inline") as plain:
        expected, expected_warnings = run(plain)
    assert bool(expected_warnings) is (case == "specials")
    with scheduler.Engine("inline", fuse=True) as engine:
        assert "fused_region" in plan_ops(engine, fetches, feeds)
        for r in range(3):  # the third run is a compiled plan's
            got, got_warnings = run(engine)
            assert got_warnings == expected_warnings
            assert [type(v) for v in got] == [type(v) for v in expected]
            assert_bitwise(got, expected, f"{case} run {r}")


def test_a_cache_file_that_cannot_be_written_leaves_nothing_behind(tmp_path, monkeypatch):
    """A failed write (a full disk) compiles in memory and leaves no temporary file."""
    from dataflow import kernel_cache

    monkeypatch.setenv("DATAFLOW_CACHE_DIR", str(tmp_path))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kernel_cache.os, "replace", full)
    source = "def region(i0, o0):\n    o0[0] = i0 - 1.0\n"
    function, in_file = kernel_cache.load_function(source, "region", {})
    out = np.zeros(1)
    function(3.0, out)
    assert not in_file and out[0] == 2.0
    assert list((tmp_path / "kernels").iterdir()) == []


@fuzz_settings(quick=40, stress=1000)
@given(program=programs(max_nodes=25))
def test_random_graphs_regions_are_convex_and_rebuild_in_order(program: Program):
    """No path leaves a region and comes back (the level argument of the module
    docstring), and the rebuilt graph has every region after all its inputs; checked
    on the regions themselves, without compiling them."""
    note(repr(program))
    built = Built(program)
    fetches, fed = list(dict.fromkeys(built.fetches)), list(built.feeds)
    fed_ids = {k.id for k in fed}
    order = ancestors(fetches, cut=fed_ids)
    cut = {n.id for n in order if n.id in fed_ids or isinstance(n.op, Placeholder)}
    exact = fusion_regions.exact_functions()
    candidate = {n.id for n in order
                 if n.id not in cut and fusion_regions._region_candidate(n, exact)}
    consumers: dict[int, list] = {}
    for n in order:
        for i in () if n.id in cut else n.inputs:
            consumers.setdefault(i.id, []).append(n)
    saved = (fusion_regions.MIN_REGION_OPS, fusion_regions.MAX_REGION_OPS,
             fusion_regions.MAX_REGION_ARGS)
    # Small bounds, so that components are cut into runs too.
    fusion_regions.MIN_REGION_OPS, fusion_regions.MAX_REGION_OPS = 1, 3
    fusion_regions.MAX_REGION_ARGS = 4
    try:
        regions = fusion_regions._regions(order, cut, candidate, {k.id for k in fetches})
        for region in regions:
            inside = {m.id for m in region.members}
            assert len({m.shape for m in region.members}) == 1
            stack = [c for m in region.members for c in consumers.get(m.id, ())
                     if c.id not in inside]
            seen: set[int] = set()
            while stack:
                n = stack.pop()
                assert n.id not in inside, f"a path leaves a region and comes back at {n}"
                if n.id not in seen:
                    seen.add(n.id)
                    stack.extend(consumers.get(n.id, ()))
        # A cycle between units would leave a fetch without an image (a KeyError).
        keys, _, origin = fusion_regions.fuse_regions(fetches, fed)
        assert len(keys) == len(fetches)
        assert all(origin.get(k, k).shape == f.shape for k, f in zip(keys, fetches))
        for region in regions:
            assert len(region.inputs) + len(region.outputs) <= 4
            assert sum(m.op.name != "broadcast_to" for m in region.members) <= 3
    finally:
        (fusion_regions.MIN_REGION_OPS, fusion_regions.MAX_REGION_OPS,
         fusion_regions.MAX_REGION_ARGS) = saved


def test_a_region_feeding_a_large_group_with_a_fed_node_in_both_passes():
    """Both passes rebuild the graph: the plan still speaks in the original keys (the
    fed computed node's feed, the region's fetched member)."""
    with df.Graph():
        x = df.placeholder("x", (4,))
        big = df.placeholder("big", (70_000,))
        a = steps(x, 8)
        fed = big * 2.0 - 1.0  # fed: its inputs are not computed
        y = steps(fed * df.sum(a) + big, 6)
    feeds = {x: np.arange(4.0), big: np.linspace(0, 1, 70_000), fed: np.full(70_000, 3.0)}
    with scheduler.Engine("inline", fuse=True) as engine, scheduler.Engine("inline") as plain:
        assert sorted(plan_ops(engine, [y, a], feeds)) == ["fused", "fused_region", "sum"]
        for r in range(3):
            assert_bitwise(engine.run([y, a], feeds), plain.run([y, a], feeds), f"run {r}")


def test_a_region_refuses_to_compile_where_its_functions_are_not_numpys(monkeypatch):
    """A worker process whose libraries disagree with numpy on ``sin`` (simulated) gets
    a clear error rather than other bits; arithmetic-only regions still compile."""
    source = "def region(i0, o0):\n    t0 = math.sin(i0)\n    o0[0] = t0 * 2.0\n"
    kernel = fusion_regions.RegionKernel(source, "void(float64, float64[:])", "()->()")
    plain = fusion_regions.RegionKernel("def region(i0, o0):\n    o0[0] = i0 * 2.0\n",
                                        "void(float64, float64[:])", "()->()")
    monkeypatch.setattr(fusion_regions, "exact_functions", lambda: frozenset())
    with pytest.raises(RuntimeError, match=r"math\.sin.*fuse=False"):
        kernel(np.arange(3.0))
    assert np.array_equal(plain(np.arange(3.0)), np.arange(3.0) * 2.0)


def test_a_region_whose_inputs_are_smaller_than_it_allocates_its_outputs():
    """Every input of this region broadcasts: the ufunc alone would loop over shape
    (1, 3), not the region's (4, 3)."""
    with df.Graph():
        x = df.placeholder("x", (1, 3))
        w = df.placeholder("w", (3,))
        h = df.broadcast_to(x, (4, 3))
        for _ in range(4):
            h = (h * 1.5 + w) * 0.5 - 0.25
    feeds = {x: np.array([[0.5, -1.0, 2.0]]), w: np.array([0.1, 0.2, 0.3])}
    with scheduler.Engine("inline", fuse=True) as engine, scheduler.Engine("inline") as plain:
        assert plan_ops(engine, [h], feeds) == ["fused_region"]
        for _ in range(3):
            got = engine.run(h, feeds)
            assert got.shape == (4, 3)
            assert_bitwise([got], [plain.run(h, feeds)], "allocated outputs")
        plan = engine.plan([h], feeds)
        kernel = pickle.loads(pickle.dumps(plan.kernels[plan.compute[0]]))
    assert kernel.allocate == ((4, 3), ("float64",))
    assert_bitwise([kernel(feeds[x], feeds[w])], [got], "a pickled copy")
