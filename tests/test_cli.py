"""The ``dataflow`` command line: every subcommand in-process through
``dataflow.cli.main`` (capsys), the installed console script in a real subprocess, and
the contract for mistakes in user input: ONE line starting with ``dataflow: error:``
on stderr, exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bits import same_bits

import dataflow as df
import scheduler
from dataflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("demo", "run", "profile", "show", "bench")


def console_script() -> list[str]:
    """The installed ``dataflow`` script (next to this Python, as in .venv/bin)."""
    script = Path(sys.executable).with_name("dataflow")
    if script.exists():
        return [str(script)]
    found = shutil.which("dataflow")
    if found:
        return [found]
    pytest.fail("the dataflow console script is not installed: pip install -e .")


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run ``main(argv)`` in-process: (exit status, stdout, stderr). argparse exits
    through SystemExit; the commands return their status."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dataflow: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A saved graph (loss and its gradient), a feed file, and the expected values.
    The test runs in tmp_path, so that default outputs (results.npz) land there."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    with df.Graph("cli") as g:
        x = df.placeholder("x", (None, 3))
        w = df.constant(rng.standard_normal((3, 2)), name="w")
        loss = df.sum(df.tanh(x @ w))
        (gw,) = df.gradients(loss, [w])
    x_value = rng.standard_normal((4, 3))
    graph_path = tmp_path / "graph.json"
    df.save(g, graph_path)
    feed_path = tmp_path / "x.npy"
    np.save(feed_path, x_value)
    expected = dict(zip([loss.name, gw.name],
                        scheduler.run([loss, gw], {x: x_value}, executor="inline")))
    return {"graph": str(graph_path), "feed": f"x={feed_path}", "x": x_value,
            "loss": loss.name, "grad": gw.name, "expected": expected, "tmp": tmp_path}


# -- help ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_on_every_subcommand(command, capsys):
    code, out, _ = cli([command, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: dataflow {command}")


def test_top_level_help_lists_every_subcommand(capsys):
    code, out, _ = cli(["--help"], capsys)
    assert code == 0
    for command in SUBCOMMANDS:
        assert command in out


def test_no_subcommand_prints_help_and_fails(capsys):
    code, out, _ = cli([], capsys)
    assert code == 2
    assert out.startswith("usage: dataflow")


# -- demo ------------------------------------------------------------------------------

def _accuracy(out: str) -> float:
    match = re.search(r"^test accuracy: (\d\.\d+)$", out, re.MULTILINE)
    assert match, out
    return float(match.group(1))


def test_demo_in_process(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, _ = cli(["demo", "--epochs", "5", "--out", str(out_dir), "--no-progress",
                        "--executor", "inline"], capsys)
    assert code == 0
    assert _accuracy(out) >= 0.9
    for name in ("trace.json", "gantt.png", "summary.txt"):
        assert (out_dir / name).stat().st_size > 0


def test_demo_console_script(tmp_path):
    """The installed script end to end, as a user runs it (a fresh process)."""
    proc = subprocess.run(
        [*console_script(), "demo", "--epochs", "5", "--out", "prof", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _accuracy(proc.stdout) >= 0.9
    assert "Traceback" not in proc.stderr
    trace = json.loads((tmp_path / "prof" / "trace.json").read_text())
    assert trace["traceEvents"]
    assert (tmp_path / "prof" / "gantt.png").read_bytes().startswith(b"\x89PNG")
    assert "wall time" in (tmp_path / "prof" / "summary.txt").read_text()
    assert "prof" in proc.stdout  # it names the folder it wrote


# -- run -------------------------------------------------------------------------------

@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_run_fetches_into_npz(saved, executor, capsys):
    out = saved["tmp"] / "results.npz"
    code, stdout, err = cli(["run", saved["graph"], "--feed", saved["feed"],
                             "--fetch", saved["loss"], "--fetch", saved["grad"],
                             "--executor", executor, "--out", str(out)], capsys)
    assert code == 0, err
    with np.load(out) as results:
        assert sorted(results.files) == sorted(saved["expected"])
        for name, want in saved["expected"].items():
            assert same_bits(results[name], want)  # bitwise
    assert f"wrote {out}" in stdout
    assert f"{saved['grad']}: shape (3, 2) dtype float64" in stdout


def test_run_defaults_to_the_graph_outputs(saved, capsys):
    code, stdout, err = cli(["run", saved["graph"], "--feed", saved["feed"]], capsys)
    assert code == 0, err
    with np.load(saved["tmp"] / "results.npz") as results:  # the default --out
        assert sorted(results.files) == sorted(saved["expected"])


def test_run_names_the_file_np_savez_writes(saved, capsys):
    out = saved["tmp"] / "values"  # np.savez adds .npz
    code, stdout, _ = cli(["run", saved["graph"], "--feed", saved["feed"], "--out", str(out)],
                          capsys)
    assert code == 0
    assert f"wrote {out}.npz" in stdout
    assert Path(f"{out}.npz").exists()


def test_run_a_saved_node_list(tmp_path, capsys):
    """load() may return nodes rather than a graph; the CLI runs their graph."""
    with df.Graph():
        a = df.placeholder("a", (2,))
        b = df.exp(a)
    df.save([b], tmp_path / "nodes.json")
    np.save(tmp_path / "a.npy", np.array([0.0, 1.0]))
    code, _, err = cli(["run", str(tmp_path / "nodes.json"), "--feed",
                        f"a={tmp_path / 'a.npy'}", "--fetch", b.name,
                        "--out", str(tmp_path / "r.npz")], capsys)
    assert code == 0, err
    with np.load(tmp_path / "r.npz") as results:
        np.testing.assert_array_equal(results[b.name], np.exp([0.0, 1.0]))


# -- profile ---------------------------------------------------------------------------

def test_profile_writes_trace_gantt_and_summary(saved, capsys):
    out_dir = saved["tmp"] / "prof"
    code, stdout, err = cli(["profile", saved["graph"], "--feed", saved["feed"],
                             "--fetch", saved["grad"], "--out", str(out_dir),
                             "--repeat", "1"], capsys)
    assert code == 0, err
    trace = json.loads((out_dir / "trace.json").read_text())
    assert trace["traceEvents"]
    assert (out_dir / "gantt.png").read_bytes().startswith(b"\x89PNG")
    summary = (out_dir / "summary.txt").read_text()
    assert "wall time" in summary and "critical path" in summary
    assert summary in stdout
    assert "trace.json" in stdout and "gantt.png" in stdout


# -- show ------------------------------------------------------------------------------

def test_show_summary(saved, capsys):
    code, out, _ = cli(["show", saved["graph"]], capsys)
    assert code == 0
    assert out.startswith("graph 'cli': ")
    assert "placeholders: x (?, 3) float64" in out
    assert re.search(r"^  matmul +2$", out, re.MULTILINE)
    assert saved["loss"] in out and saved["grad"] in out  # the outputs


def test_show_dot_to_stdout_and_file(saved, capsys):
    code, out, _ = cli(["show", saved["graph"], "--format", "dot"], capsys)
    assert code == 0
    assert out.startswith('digraph "cli" {') and out.rstrip().endswith("}")
    path = saved["tmp"] / "g.dot"
    code, out, _ = cli(["show", saved["graph"], "--format", "dot", "--out", str(path)], capsys)
    assert code == 0
    assert path.read_text().startswith("digraph")
    assert f"wrote {path}" in out


def test_show_svg(saved, capsys):
    path = saved["tmp"] / "g.svg"
    code, out, _ = cli(["show", saved["graph"], "--format", "svg", "--out", str(path)], capsys)
    assert code == 0
    assert "<svg" in path.read_text()
    assert f"wrote {path}" in out


# -- bench -----------------------------------------------------------------------------

def test_bench_runs_the_sections_it_is_given(monkeypatch, capsys):
    # The real sections take seconds to minutes; this one checks the plumbing: section
    # selection, the machine line and the table. The suite pins BLAS threads (the
    # variables, where unset, and the running library); both are restored afterwards.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    from dataflow.bench import suite
    calls = []

    def fake_section():
        calls.append("gradients")
        return [suite.Row("fake workload", "ours", 1.0, "anchor", 2.0, "s", "<= 1", True)]

    monkeypatch.setitem(suite.SECTIONS, "gradients", fake_section)
    code, out, err = cli(["bench", "gradients"], capsys)
    assert code == 0, err
    assert calls == ["gradients"]
    assert out.startswith("machine: ")
    assert "fake workload" in out


def test_bench_unknown_section(capsys):
    code, _, err = cli(["bench", "no-such-section"], capsys)
    assert_one_line_error(code, err, "no-such-section", "gradients")


# -- user errors: one line, status 2, no traceback ------------------------------------

def _corrupt_files(tmp: Path) -> dict[str, Path]:
    files = {
        "garbage": b"\x00\x01 not json at all",
        "truncated": b'{"format": "dataflow.graph", "version": 1, "nodes": [',
        "wrong format": json.dumps({"format": "something else", "version": 1}).encode(),
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        path = tmp / (name.replace(" ", "_") + ".json")
        path.write_bytes(data)
        paths[name] = path
    return paths


@pytest.mark.parametrize("command", ["run", "profile", "show"])
def test_missing_graph_file(command, tmp_path, capsys):
    missing = tmp_path / "missing.json"
    code, _, err = cli([command, str(missing)], capsys)
    assert_one_line_error(code, err, str(missing), "No such file")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong format", "empty"])
@pytest.mark.parametrize("command", ["run", "show"])
def test_corrupt_graph_file(command, kind, tmp_path, capsys):
    path = _corrupt_files(tmp_path)[kind]
    code, _, err = cli([command, str(path)], capsys)
    assert_one_line_error(code, err, str(path))


@pytest.mark.parametrize("feed", ["x.npy", "=x.npy", "x=", "x"])
def test_bad_feed_syntax(saved, feed, capsys):
    code, _, err = cli(["run", saved["graph"], "--feed", feed], capsys)
    assert_one_line_error(code, err, "NAME=FILE.npy")


@pytest.mark.parametrize("option", ["--feed", "--fetch"])
def test_unknown_node_name(saved, option, capsys):
    value = f"nosuchnode={saved['tmp'] / 'x.npy'}" if option == "--feed" else "nosuchnode"
    code, _, err = cli(["run", saved["graph"], option, value], capsys)
    assert_one_line_error(code, err, "'nosuchnode'")


def test_feed_problems(saved, capsys):
    tmp = saved["tmp"]
    (tmp / "not.npy").write_text("not an array")
    np.save(tmp / "wrong_shape.npy", np.ones((4, 5)))
    cases = {
        f"x={tmp / 'absent.npy'}": "absent.npy",
        f"x={tmp / 'not.npy'}": "not.npy",
        f"x={tmp / 'wrong_shape.npy'}": "(4, 5)",
    }
    for feed, fragment in cases.items():
        code, _, err = cli(["run", saved["graph"], "--feed", feed], capsys)
        assert_one_line_error(code, err, fragment)
    code, _, err = cli(["run", saved["graph"]], capsys)  # x not fed
    assert_one_line_error(code, err, "'x'")
    code, _, err = cli(["run", saved["graph"], "--feed", saved["feed"], "--feed", saved["feed"]],
                       capsys)
    assert_one_line_error(code, err, "more than once")


@pytest.mark.parametrize("epochs", ["0", "-3", "abc", "1.5"])
def test_bad_epochs(epochs, capsys):
    code, _, err = cli(["demo", "--epochs", epochs], capsys)
    assert_one_line_error(code, err, "--epochs", epochs)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["frobnicate"], "frobnicate"),
    (["run"], "graph"),
    (["show", "g.json", "--format", "pdf"], "--format"),
    (["run", "g.json", "--executor", "gpu"], "--executor"),
    (["run", "g.json", "--workers", "0"], "--workers"),
    (["demo", "--workers", "two"], "--workers"),
    (["profile", "g.json", "--repeat", "-1"], "--repeat"),
    (["show", "g.json", "--no-such-option"], "--no-such-option"),
])
def test_bad_command_lines(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(argv, capsys)  # refused while parsing, before g.json is opened
    assert_one_line_error(code, err, fragment)


def test_unwritable_output(saved, capsys):
    out = saved["tmp"] / "no" / "such" / "dir" / "r.npz"
    code, _, err = cli(["run", saved["graph"], "--feed", saved["feed"], "--out", str(out)],
                       capsys)
    assert_one_line_error(code, err, "No such file")


def test_user_error_in_a_real_process(tmp_path):
    """The console script: exit status 2, one stderr line, nothing on stdout."""
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    for argv in (["run", str(bad)], ["demo", "--epochs", "zero"]):
        proc = subprocess.run([*console_script(), *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert_one_line_error(proc.returncode, proc.stderr)
        assert proc.stdout == ""


def test_a_node_that_fails_is_named_in_the_one_line_error(tmp_path, capsys):
    """A node's own error (a ValueError here) reaches the CLI as raised; the note that
    names the node is part of the one line."""
    with df.Graph() as g:
        labels = df.placeholder("labels", (None,), dtype=np.int64)
        encoded = df.one_hot(labels, 3)
    graph_path = tmp_path / "graph.json"
    df.save(g, graph_path)
    np.save(tmp_path / "labels.npy", np.array([5]))
    code, _, err = cli(["run", str(graph_path), "--feed", f"labels={tmp_path / 'labels.npy'}",
                        "--fetch", encoded.name, "--out", str(tmp_path / "out.npz")], capsys)
    assert_one_line_error(code, err, "labels must lie in", f"node {encoded.name!r}")

# -- names and keys ----------------------------------------------------------------------

def test_run_uses_the_keys_a_dict_was_saved_with(tmp_path, capsys):
    with df.Graph():
        x = df.placeholder("x", (3,))
        loss = df.sum(df.square(x))
        (gx,) = df.gradients(loss, [x])
    df.save({"loss": loss, "grad_x": gx}, tmp_path / "g.json")
    np.save(tmp_path / "x.npy", np.array([1.0, 2.0, 3.0]))
    feed = f"x={tmp_path / 'x.npy'}"
    out = tmp_path / "r.npz"
    code, stdout, err = cli(["run", str(tmp_path / "g.json"), "--feed", feed,
                             "--fetch", "grad_x", "--out", str(out)], capsys)
    assert code == 0, err
    with np.load(out) as results:
        assert results.files == ["grad_x"]
        np.testing.assert_array_equal(results["grad_x"], [2.0, 4.0, 6.0])
    assert "grad_x: shape (3,)" in stdout
    # Without --fetch: the saved outputs, under their keys.
    code, _, err = cli(["run", str(tmp_path / "g.json"), "--feed", feed, "--out", str(out)],
                       capsys)
    assert code == 0, err
    with np.load(out) as results:
        assert results.files == ["loss", "grad_x"]
        assert results["loss"] == 14.0
    # A node name still works next to the keys; the gradient is named after x.
    code, _, err = cli(["run", str(tmp_path / "g.json"), "--feed", feed, "--fetch", "grad/x",
                        "--fetch", "loss", "--out", str(out)], capsys)
    assert code == 0, err
    with np.load(out) as results:
        assert results.files == ["grad/x", "loss"]
    code, _, err = cli(["run", str(tmp_path / "g.json"), "--feed", feed, "--fetch", "loss",
                        "--fetch", "loss"], capsys)
    assert_one_line_error(code, err, "--fetch loss given more than once")


def test_every_fetched_name_reaches_the_npz(tmp_path, capsys):
    """Names that are np.savez's own parameters, or hold a slash, are kept."""
    names = ["file", "allow_pickle", "args", "kwds", "grad/W1", "a b.npy"]
    with df.Graph() as g:
        for i, name in enumerate(names):
            df.constant([i + 1.0, 2 * (i + 1.0)], name)
    df.save(g, tmp_path / "g.json")
    out = tmp_path / "r.npz"
    for argv in ([], [arg for name in names for arg in ("--fetch", name)]):
        code, _, err = cli(["run", str(tmp_path / "g.json"), "--out", str(out), *argv],
                           capsys)
        assert code == 0, err
        with np.load(out) as results:
            assert sorted(results.files) == sorted(names)
            for i, name in enumerate(names):
                np.testing.assert_array_equal(results[name], [i + 1.0, 2 * (i + 1.0)])


# -- feed files ---------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_feed_must_be_a_regular_file(saved):
    """A FIFO would block the command forever; it is refused at once."""
    fifo = saved["tmp"] / "x.fifo"
    os.mkfifo(fifo)
    proc = subprocess.run([*console_script(), "run", saved["graph"], "--feed", f"x={fifo}"],
                          cwd=saved["tmp"], capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc.returncode, proc.stderr, "x.fifo", "not a regular file")


def test_a_feed_header_claiming_a_huge_shape(saved, capsys):
    path = saved["tmp"] / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (1 << 40, 3)})
        f.write(b"\0" * 64)
    code, _, err = cli(["run", saved["graph"], "--feed", f"x={path}"], capsys)
    assert_one_line_error(code, err, "huge.npy", "holds 64 bytes")


def test_a_truncated_feed_and_a_pickled_feed(saved, capsys):
    good = saved["tmp"] / "good.npy"
    np.save(good, np.ones((4, 3)))
    truncated = saved["tmp"] / "truncated.npy"
    truncated.write_bytes(good.read_bytes()[:-8])
    pickled = saved["tmp"] / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path in (truncated, pickled):
        code, _, err = cli(["run", saved["graph"], "--feed", f"x={path}"], capsys)
        assert_one_line_error(code, err, path.name)


# -- bad executors -------------------------------------------------------------------------

def test_demo_checks_its_executor_before_starting(tmp_path, capsys):
    """A bad executor is refused before any data, folder or progress bar."""
    from dataflow.demo import run_demo

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="unknown executor 'bogus'"):
        run_demo(out, executor="bogus", epochs=1)
    assert not out.exists()
    assert capsys.readouterr().err == ""


def test_missing_extra_is_a_one_line_error(saved, monkeypatch, capsys):
    import scheduler.engine

    def missing() -> None:
        raise ImportError("executor 'dask' needs dask.distributed: "
                          "pip install 'dataflow-graph-engine[distributed]'")

    monkeypatch.setattr(scheduler.engine, "_require_distributed", missing)
    code, _, err = cli(["run", saved["graph"], "--feed", saved["feed"], "--executor", "dask"],
                       capsys)
    assert_one_line_error(code, err, "dask.distributed", "dataflow-graph-engine[distributed]")


def test_a_name_an_npz_cannot_hold_is_refused_before_the_run(tmp_path, capsys):
    with df.Graph() as g:
        df.constant(1.0, "a")
        df.constant(2.0, "a\0b")  # a zip member name would end at the NUL: "a" again
    df.save(g, tmp_path / "g.json")
    out = tmp_path / "r.npz"
    code, _, err = cli(["run", str(tmp_path / "g.json"), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "NUL")
    assert not out.exists()
