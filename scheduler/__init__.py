"""The execution layer: runs any DAG of Python callables, each task as soon as its
parents' values exist, on a pluggable executor, with hooks for profiling.

- ``Engine(executor="threads", workers=None, callbacks=())`` and ``engine.run`` /
  ``engine.run_async`` for graph nodes (or their names); ``run(...)`` for one shot;
- ``get(tasks, keys)`` for plain task graphs in dask's conventions;
- ``Callback`` hooks and, on top of them, ``Profiler`` (node-level profiling;
  ``profile(...)`` profiles a warmed engine in one call) and ``ProgressBar`` (tqdm,
  optional).

It knows nothing about derivatives; ``dataflow`` uses it to run graphs.
"""

from typing import Any

from .callbacks import Callback, RunInfo, TaskRecord
from .engine import Engine, close_default_engines, default_engine, get, run
from .errors import (
    CycleError,
    FeedError,
    MissingDependencyError,
    NodeError,
    NumericsError,
    RemoteError,
    RunCancelled,
    SchedulerError,
)
from .names import UnknownNameError
from .plan import Plan
from .profiler import NodeRecord, Profiler, RunProfile, profile
from .progress import ProgressBar, progress
from .spec import NO_VALUE, TaskSpec

__all__ = [
    "Callback", "CycleError", "Engine", "FeedError", "MissingDependencyError", "NO_VALUE",
    "NodeError", "NodeRecord",
    "NumericsError", "Plan", "Profiler", "ProgressBar", "RunCancelled", "RunInfo", "RunProfile",
    "RemoteError", "SchedulerError", "TaskRecord", "TaskSpec", "UnknownNameError",
    "close_default_engines", "default_engine", "get", "profile", "progress", "run",
]


def __getattr__(name: str) -> Any:
    # dask is optional: DaskExecutor (scheduler/dask_executor.py) is imported on first use.
    if name == "DaskExecutor":
        from .dask_executor import DaskExecutor

        return DaskExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
