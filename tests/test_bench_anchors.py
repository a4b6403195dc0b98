"""The benchmark suite's anchor sections and header: a section whose anchor is not
installed gives one row saying so (the tests need neither anchor); the header is
``dataflow doctor``'s; ``--native-kernels`` reruns the MLP sections without the
variables that force OpenBLAS's kernel, in subprocesses only (faked here: nothing in
the tests changes those variables)."""

from __future__ import annotations

import sys

import pytest

from dataflow.bench import __main__ as bench_main
from dataflow.bench import anchors, suite
from dataflow.doctor import Probe


@pytest.mark.parametrize("module, rows", [("tensorflow", anchors.tf1_rows),
                                          ("pytensor", anchors.pytensor_rows)])
def test_a_missing_anchor_gives_one_skipped_row(monkeypatch, module, rows):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    (row,) = rows(tiny_n=3, chain_n=3, calls=1, reps=1)
    assert row.ours == "skipped" and row.ok is None
    assert "dataflow-graph-engine[bench-anchors]" in row.anchor
    table = suite.format_table([row])
    assert "skipped" in table and "(skipped)" in table and "nan" not in table


def test_anchor_sections_are_in_the_default_run():
    assert {"tf1", "pytensor", "mlp_blas2"} <= set(suite.SECTIONS)


def test_header_is_the_doctors():
    lines = suite.header()
    assert lines[0].startswith("machine: ")
    assert any(line.startswith("environment: ") for line in lines)
    assert any(line.startswith("cpu vector extensions: ") for line in lines)


FORCED = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}


def fake_rows(sections, unset=()):
    assert unset, "the rerun must unset the variables"
    return [suite.Row(f"{name} row", "inline", 1.0, "numpy", 1.0, "ms", "-", None)
            for name in sections]


def test_native_kernels_reruns_the_mlp_sections_without_the_variables(monkeypatch):
    asked = []

    def run(sections, unset=()):
        asked.append(unset)
        return fake_rows(sections, unset)

    monkeypatch.setattr(suite, "run", run)
    monkeypatch.setattr("dataflow.doctor.run_probe",
                        lambda unset, reps=20: Probe(1e-3, "SkylakeX"))
    rows, note = bench_main.native_kernel_rows(["mlp", "mlp_blas2"], env=FORCED)
    assert asked == [("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")]
    label = "[OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset: SkylakeX kernel]"
    assert [r.workload for r in rows] == [f"mlp row {label}", f"mlp_blas2 row {label}"]
    assert label in note


def test_native_kernels_with_nothing_to_unset_or_a_build_that_needs_them(monkeypatch):
    monkeypatch.setattr(suite, "run", lambda *a, **k: pytest.fail("nothing should run"))
    rows, note = bench_main.native_kernel_rows(["mlp"], env={"HOME": "/root"})
    assert rows == [] and "none of OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE is set" in note
    monkeypatch.setattr("dataflow.doctor.run_probe",
                        lambda unset, reps=20: Probe(None, None, "exit status -4"))
    rows, note = bench_main.native_kernel_rows(["mlp"], env=FORCED)
    assert rows == [] and "fails (exit status -4); it needs them" in note


@pytest.mark.slow
@pytest.mark.parametrize("rows", [anchors.tf1_rows, anchors.pytensor_rows])
def test_anchor_rows_smoke(rows):
    """With the anchors installed (``bench-anchors``), every row of a shrunken run has
    both values."""
    result = rows(tiny_n=6, chain_n=20, calls=5, reps=1)
    if result[0].ours == "skipped":
        pytest.skip(result[0].anchor)
    measured = [r for r in result if r.target != "(context)"]
    assert measured and all(r.ours_value > 0 and r.anchor_value > 0 for r in measured)


def test_dask_workloads_are_timed_in_fresh_interpreters_and_take_their_median(monkeypatch):
    """Each dask workload runs in several fresh interpreters; the row is the median of
    their figures, so that no one process's allocator state decides it."""
    pytest.importorskip("dask")
    from dataflow.bench import bench_dask_workloads as bench

    # One real child: the sleeping tasks at 1/50 of their size.
    t_ours, t_dask = bench._timed_in_fresh_process(4, 50, 3, 0, 0.0)
    assert 0.0 < t_ours < 1.0 and 0.0 < t_dask < 1.0
    # The rows: per workload, the median over the processes of each scheduler's time.
    figures = iter([(3.0, 4.0), (1.0, 9.0), (2.0, 1.0)] * 6)
    monkeypatch.setattr(bench, "_timed_in_fresh_process", lambda *args: next(figures))
    rows = bench.dask_workloads(scale=50, processes=3)
    assert len(rows) == len(bench.workloads(50))
    assert all(r.ours_value == 2000.0 and r.anchor_value == 4000.0 and r.ok for r in rows)
