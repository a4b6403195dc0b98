"""The API reference builds from the docstrings (what ``make docs`` runs), and both
packages ship their type hints (PEP 561)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_both_packages_ship_py_typed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    for package in ("dataflow", "scheduler"):
        assert (ROOT / package / "py.typed").is_file()
        assert "py.typed" in package_data[package]


def test_make_targets_build_docs_and_type_check():
    makefile = (ROOT / "Makefile").read_text()
    assert "sphinx-build" in makefile.split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    assert "mypy" in makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "tests/typecheck" in config["tool"]["mypy"]["files"]


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None,
                    reason="the API reference needs the docs extra (sphinx)")
def test_api_reference_builds_without_warnings(tmp_path):
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    pages = {name: (out / "api" / f"{name}.html").read_text()
             for name in ("dataflow", "scheduler", "visualize", "models")}
    for page, anchor in [("dataflow", "dataflow.Graph.visualize"),
                         ("dataflow", "dataflow.gradients"),
                         ("scheduler", "scheduler.profile"),
                         ("scheduler", "scheduler.Profiler.critical_path_time"),
                         ("scheduler", "scheduler.Engine.run"),
                         ("visualize", "dataflow.visualize.layered_layout"),
                         ("models", "dataflow.models.build_mlp")]:
        assert f'id="{anchor}"' in pages[page], anchor
    assert "Static shape" in pages["dataflow"]  # Node's attributes
