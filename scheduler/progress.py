"""Progress bars for long runs and training loops, on tqdm.

``ProgressBar`` is a :class:`~scheduler.callbacks.Callback`: one bar per run, counting
finished nodes out of the run's computed nodes, closed in ``finish`` (also when the
run fails). ``progress(steps)`` wraps the iterable of a training loop.

tqdm is an optional dependency (the ``profile`` extra); it is imported when a bar is
made, and its absence is reported with the command that installs it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from .callbacks import Callback, RunInfo, TaskRecord

__all__ = ["ProgressBar", "progress"]

T = TypeVar("T")

INSTALL_HINT = "pip install 'dataflow-graph-engine[profile]' (or pip install tqdm)"


_bar_class: Any = None


def _tqdm() -> Any:
    """tqdm's bar class, without its monitor thread (a process-wide thread that outlives
    every bar; our bars are refreshed by their updates, so it adds nothing)."""
    global _bar_class
    if _bar_class is None:
        try:
            from tqdm import tqdm
        except ImportError:
            raise ImportError(f"progress bars need tqdm: {INSTALL_HINT}") from None

        class Bar(tqdm):
            monitor_interval = 0

        _bar_class = Bar
    return _bar_class


class ProgressBar(Callback):
    """A tqdm bar per run: ``engine.run(fetches, feeds, callbacks=[ProgressBar()])``.

    Concurrent runs get one bar each. After a run, ``completed`` is the number of
    nodes the last bar counted.

    Parameters
    ----------
    desc : str, default "nodes"
        The bar's label.
    **tqdm_kwargs
        Passed to ``tqdm`` (``file``, ``leave``, ``mininterval``, ``disable`` ...).

    Raises
    ------
    ImportError
        If tqdm is not installed (``pip install 'dataflow-graph-engine[profile]'``).
    """

    def __init__(self, desc: str = "nodes", **tqdm_kwargs: Any):
        self._tqdm = _tqdm()  # fail at construction, not in the middle of a run
        self.desc = desc
        self.tqdm_kwargs = {"unit": "node", "leave": False, "dynamic_ncols": True,
                            **tqdm_kwargs}
        self.completed = 0
        self._bars: dict[int, Any] = {}
        self._lock = threading.Lock()

    def start(self, run: RunInfo) -> None:
        bar = self._tqdm(total=len(run.plan.compute), desc=self.desc, **self.tqdm_kwargs)
        with self._lock:
            self._bars[id(run)] = bar

    def posttask(self, run: RunInfo, record: TaskRecord) -> None:
        self._bars[id(run)].update(1)

    def finish(self, run: RunInfo, error: BaseException | None) -> None:
        with self._lock:
            bar = self._bars.pop(id(run), None)
        if bar is None:
            return
        self.completed = bar.n
        if error is not None:
            bar.set_postfix_str(f"failed: {type(error).__name__}", refresh=False)
        bar.close()


def progress(steps: Iterable[T], desc: str = "steps", total: int | None = None,
             **tqdm_kwargs: Any) -> Iterator[T]:
    """Wrap the steps of a training loop in a progress bar::

        for step in progress(range(1000), desc="train"):
            loss, *grads = engine.run([loss_node, *grad_nodes], feeds)

    The bar closes when the loop ends, also on ``break`` or an exception (once the
    generator is closed).

    Parameters
    ----------
    steps : iterable
        The loop's steps.
    desc : str, default "steps"
        The bar's label.
    total : int, optional
        The number of steps; ``len(steps)`` when it has one.
    **tqdm_kwargs
        Passed to ``tqdm``.

    Yields
    ------
    object
        Each step of ``steps``.
    """
    tqdm = _tqdm()
    bar = tqdm(steps, desc=desc, total=total, unit="step", **tqdm_kwargs)
    try:
        yield from bar
    finally:
        bar.close()
