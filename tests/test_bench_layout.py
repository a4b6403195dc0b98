"""Where the benchmark suite lives: inside the package, so that an installed wheel runs
``dataflow bench``; the checkout's ``python -m benchmarks`` is a shim over it; and no
library module imports the suite (only the command line does)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path, package: str) -> list[str]:
    """Absolute names of the modules ``path`` (a module of ``package``) imports."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.append(mod)
            names += [f"{mod}.{alias.name}" for alias in node.names]
    return names


def test_no_library_module_imports_the_suite():
    offenders = []
    for top in ("dataflow", "scheduler"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] == ("dataflow", "bench") or rel == Path("dataflow/cli.py"):
                continue
            package = ".".join(rel.with_suffix("").parts[:-1])
            for name in _imported_modules(path, package):
                if name.split(".")[0] == "benchmarks" or name.startswith("dataflow.bench"):
                    offenders.append(f"{rel}: {name}")
    assert offenders == []
    # The command line reaches the suite inside the package, never the checkout's folder.
    cli_imports = _imported_modules(ROOT / "dataflow" / "cli.py", "dataflow")
    assert not [n for n in cli_imports if n.split(".")[0] == "benchmarks"]
    assert "dataflow.bench.suite" in cli_imports


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, unpacked as pip installs it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("dataflow", "scheduler"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("dataflow_graph_engine-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def _run_installed(site: Path, *args: str) -> subprocess.CompletedProcess:
    # Run from an empty folder with only the unpacked wheel ahead of site-packages, so
    # that neither the checkout nor its editable install can be what gets imported.
    cwd = site.parent / "elsewhere"
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_wheel_carries_the_suite_and_not_the_shim(installed):
    assert (installed / "dataflow" / "bench" / "suite.py").is_file()
    assert (installed / "dataflow" / "bench" / "workloads.py").is_file()
    assert not (installed / "benchmarks.py").exists()
    assert not (installed / "benchmarks").exists()


def test_dataflow_bench_runs_from_the_installed_wheel(installed):
    done = _run_installed(installed, "-c",
                          "import dataflow.bench.suite as s; print(s.__file__)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(installed)
    # The command reaches the suite: an unknown section is refused with the suite's list.
    done = _run_installed(installed, "-m", "dataflow.cli", "bench", "no-such-section")
    assert done.returncode == 2, done.stderr
    assert "no-such-section" in done.stderr and "gradients" in done.stderr
    assert "Traceback" not in done.stderr


def test_checkout_shim_runs_the_packaged_suite():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "no-such-section"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no-such-section" in done.stderr and "gradients" in done.stderr
