# The whole set-up is `make demo` (install, run the main job) and `make test`
# (install, run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install lint docs bench bench-anchors stress clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/activate

install: $(BIN)/activate

demo: install
	$(BIN)/dataflow demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check dataflow scheduler tests examples benchmarks.py
	$(BIN)/mypy

# The API reference, built from the docstrings: docs/_build/html/index.html
docs: install
	$(BIN)/pip install -q -e '.[docs]'
	$(BIN)/sphinx-build -q -b html docs docs/_build/html
	@echo "API reference: docs/_build/html/index.html"

bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks

# The same run with the graph-mode anchors (TensorFlow 1 sessions, PyTensor) installed.
bench-anchors: install
	$(BIN)/pip install -q -e '.[bench,bench-anchors]'
	$(BIN)/python -m benchmarks

stress: install
	STRESS=1 $(BIN)/python -m pytest -q -m "slow or not slow" tests

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
