"""The main job, end to end: train an MLP on the handwritten digits bundled with
scikit-learn (offline) with SGD through the engine, report test accuracy, and write a
profile of one training step. ``dataflow demo`` and ``make demo`` run it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import scheduler

from .models import accuracy, build_mlp, sgd_train


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the demo needs scikit-learn's bundled digits: "
                         "pip install 'dataflow-graph-engine[demo]'") from None
    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0) + 1e-6
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def run_demo(out: str | Path = "profile-out", *, epochs: int = 30, hidden: int = 64,
             executor: str = "threads", workers: int | None = None, show_progress: bool = True,
             seed: int = 0) -> dict[str, Any]:
    """Train, evaluate and profile; returns the figures it printed."""
    # The engine first: a bad executor or workers argument fails here, before any
    # data is loaded, folder made or progress bar drawn.
    with scheduler.Engine(executor, workers) as engine:
        x_train, y_train, x_test, y_test = load_digits_split(seed)
        model = build_mlp((64, hidden, hidden, 10))
        params = model.init_params(seed)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        bar = _progress_bar(epochs, show_progress)
        started = time.perf_counter()
        history = sgd_train(model, engine, params, x_train, y_train, epochs=epochs,
                            batch_size=32, lr=0.05, seed=seed,
                            progress=bar.step if bar else None)
        if bar:
            bar.close()
        train_seconds = time.perf_counter() - started
        test_acc = accuracy(model, engine, params, x_test, y_test)
        profile_files = _profile_one_step(model, engine, params, x_train[:32], y_train[:32], out)
    print(f"trained {epochs} epochs in {train_seconds:.1f} s "
          f"(final training loss {history[-1]:.4f}) on executor {executor!r}")
    print(f"test accuracy: {test_acc:.3f}")
    if profile_files:
        print(f"profile of one training step written to {out}/: " + ", ".join(profile_files))
    return {"test_accuracy": test_acc, "loss_history": history, "out": str(out),
            "profile_files": profile_files}


class _EpochBar:
    def __init__(self, epochs: int):
        from tqdm import tqdm

        self.bar = tqdm(total=epochs, desc="training", unit="epoch")
        self.epoch = 0

    def step(self, epoch: int, step: int, loss: float) -> None:
        if epoch != self.epoch:
            self.bar.update(epoch - self.epoch)
            self.epoch = epoch
        self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def close(self) -> None:
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def _progress_bar(epochs: int, show: bool) -> _EpochBar | None:
    if not show:
        return None
    try:
        return _EpochBar(epochs)
    except ImportError:
        return None


def _profile_one_step(model: Any, engine: Any, params: list, x: np.ndarray, y: np.ndarray,
                      out: Path) -> list[str]:
    profiler_cls = getattr(scheduler, "Profiler", None)
    if profiler_cls is None:
        return []
    prof = profiler_cls()
    engine.run([model.loss, *model.grads], model.feeds(params, x, y), callbacks=[prof])
    prof.to_chrome_trace(out / "trace.json")
    (out / "summary.txt").write_text(prof.summary())
    files = ["trace.json", "summary.txt"]
    try:
        prof.plot_gantt(out / "gantt.png")
        files.append("gantt.png")
    except ImportError:
        pass
    return files
