"""Every Python example in the README runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr


def test_demo_example_reaches_accuracy(tmp_path):
    sys.path.insert(0, str(README.parent / "examples"))
    try:
        import mlp_digits
    finally:
        sys.path.pop(0)
    figures = mlp_digits.main(["--epochs", "15", "--out", str(tmp_path), "--no-progress"])
    assert figures["test_accuracy"] >= 0.9
