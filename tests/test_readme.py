"""Every Python block in the README runs as written, saved as a file and run as a
script (as a reader would: ``python example.py``), each in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run_block(code: str, tmp_path: Path, index: int) -> subprocess.CompletedProcess:
    script = tmp_path / f"readme_block{index}.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_as_a_script(index, tmp_path):
    result = run_block(BLOCKS[index], tmp_path, index)
    assert result.returncode == 0, result.stderr


def test_profiling_example_profiles_distinct_branches(tmp_path):
    """The profiling block's branches must survive common-subexpression elimination
    (identical branches would run as one), so its profile shows eight matmuls."""
    (index,) = [i for i, b in enumerate(BLOCKS) if "scheduler.profile(" in b]
    code = BLOCKS[index] + (
        "\nprint('MATMULS', sum(r.op == 'matmul' for r in prof.records))"
        "\nprint('WORKERS', prof.last.pool_workers)\n")
    result = run_block(code, tmp_path, index)
    assert result.returncode == 0, result.stderr
    assert "MATMULS 8" in result.stdout
    assert "WORKERS 2" in result.stdout
    for name in ("trace.json", "gantt.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_readme_cites_only_files_in_the_repository():
    for path in re.findall(r"`((?:examples|benchmarks|dataflow|scheduler|docs)/[\w./-]+)`",
                           README.read_text()):
        if path.startswith("docs/_build/"):  # what `make docs` writes, not a source file
            continue
        assert (ROOT / path).exists(), path


def test_nothing_in_the_repository_cites_files_outside_it():
    outside = re.compile(r"/work/|DESIGN\.md")
    offenders = []
    for folder in ("dataflow", "scheduler", "examples", "tests", "docs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in {".py", ".md", ".txt", ".toml", ".yml"} and path.is_file():
                text = path.read_text(errors="replace")
                if path.name != Path(__file__).name and outside.search(text):
                    offenders.append(str(path.relative_to(ROOT)))
    for path in (README, ROOT / "pyproject.toml", ROOT / "Makefile", ROOT / "mkdocs.yml"):
        if path.exists() and outside.search(path.read_text()):
            offenders.append(path.name)
    assert offenders == []


def test_demo_example_reaches_accuracy(tmp_path):
    sys.path.insert(0, str(README.parent / "examples"))
    try:
        import mlp_digits
    finally:
        sys.path.pop(0)
    figures = mlp_digits.main(["--epochs", "15", "--out", str(tmp_path), "--no-progress"])
    assert figures["test_accuracy"] >= 0.9
