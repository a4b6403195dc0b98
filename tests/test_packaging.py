"""The distribution's metadata: the extras that name the project itself must name it
by its own distribution name, or pip installs another project from the package index
(the names ``dataflow`` and ``scheduler`` belong to others there)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent


def test_extras_refer_to_the_project_by_its_distribution_name():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = meta["name"]
    assert own not in ("dataflow", "scheduler")
    for extra, requirements in meta["optional-dependencies"].items():
        for requirement in requirements:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
            assert name not in ("dataflow", "scheduler"), (extra, requirement)


def test_install_hints_name_the_distribution():
    """Every ``pip install '...[extra]'`` hint in the code and the README installs this
    project, not the package index's ``dataflow``."""
    pattern = re.compile(r"pip install '?([A-Za-z0-9_.-]+)\[")
    for path in [ROOT / "README.md", *(ROOT / "dataflow").rglob("*.py"),
                 *(ROOT / "scheduler").rglob("*.py")]:
        for name in pattern.findall(path.read_text()):
            assert name == "dataflow-graph-engine", (path, name)
