"""The direct path of ``scheduler.get``: a plain task graph walked on the calling thread
without compiling a :class:`~scheduler.plan.Plan`.

A dict graph cannot be cached between calls (it may change under the same keys), so a
``Plan`` for it would be compiled to be walked once: per task a spec, positions,
argument tuples, consumer lists and estimates, most of them never read. When the
run needs no pool (the ``inline`` executor, a re-entrant run, or tasks all known to be
cheap), two passes do the same job at a third of the cost:

1. :func:`scan`: a depth-first post-order from the wanted keys (iterative; a cycle is
   reported with its path), reading each task once. The common task ``(f, *keys)`` is
   understood in place; any other entry goes through
   :meth:`~scheduler.taskgraph.TaskGraphSource.spec`, so both paths share dask's
   conventions. It records where each value is used for the last time.
2. :func:`walk`: the tasks in that order, each value dropped right after its last
   consumer unless it is wanted, so memory stays as low as in the plan's walk.

The order is the one ``Plan`` would choose without its memory-aware layout (the same
post-order), so results, and the order in which kernels are called, are the same on
both paths of the ``inline`` executor. A pooled engine lays out the plans of its pooled
calls memory-aware, which keeps the results and changes only the order.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from .errors import add_node_note
from .plan import post_order
from .taskgraph import TaskGraphSource, cost_key_of, func_name, plain_args

__all__ = ["DirectWalk", "scan", "walk"]


class DirectWalk:
    """What :func:`scan` found: the tasks in post-order, the values known before any
    task runs (literals and feeds), and which values die after which step."""

    __slots__ = ("steps", "values", "dies", "specs")

    def __init__(self, steps: list, values: dict, dies: dict, specs: dict):
        #: ``(key, kernel, argument keys)`` per task, in a topological order
        self.steps: list[tuple[Hashable, Any, tuple]] = steps
        #: literals and fed values, by key; ``walk`` adds the computed ones
        self.values: dict = values
        #: step index -> keys whose last consumer that step is (and that are not wanted)
        self.dies: dict[int, list] = dies
        #: the full spec of each task that is not a plain ``(f, *keys)``
        self.specs: dict = specs

    def cost_keys(self) -> set:
        """The cost keys of the tasks (what the engine's cost table is keyed by)."""
        specs = self.specs
        found = {cost_key_of(kernel) for key, kernel, _ in self.steps if key not in specs}
        found.update(spec.cost_key for spec in specs.values())
        return found


def scan(source: TaskGraphSource, wanted: list, feeds: Mapping) -> DirectWalk:
    """The post-order of the tasks ``wanted`` needs (fed keys cut their ancestors off)."""
    tasks = source.tasks
    graph_types = source.graph_types
    steps: list = []
    values: dict = {}
    specs: dict = {}
    state: dict = {}  # key -> False while on the walk's path, True once done
    last: dict = {}  # key -> index of the last step that reads it
    append = steps.append
    for root in wanted:
        if root in state:
            continue
        stack = [root]
        while stack:
            key = stack[-1]
            seen = state.get(key)
            if seen is None:  # first visit: push the deps not done yet
                state[key] = False
                try:
                    task = tasks[key]
                except KeyError:  # a missing dependency: the plan's walk names its dependent
                    post_order(wanted, set(feeds), source.spec)
                    raise
                deps = plain_args(task, tasks, graph_types)
                if deps is None:  # any other entry: the source's full spec
                    if feeds and key in feeds:
                        deps = ()
                        values[key] = feeds[key]
                    else:
                        spec = source.spec(key)
                        if spec.kernel is None:
                            deps = ()
                            values[key] = spec.value
                        else:
                            deps = spec.deps
                            specs[key] = spec
                elif feeds and key in feeds:
                    deps = ()
                    values[key] = feeds[key]
                for dep in reversed(deps):
                    dep_seen = state.get(dep)
                    if dep_seen is None:
                        stack.append(dep)
                    elif dep_seen is False:  # a cycle: let the plan's walk report its path
                        post_order(wanted, set(feeds), source.spec)
                continue
            stack.pop()
            if seen is False:  # all deps done: the task's turn
                state[key] = True
                if key in values:
                    continue
                spec = specs.get(key)  # type: ignore[assignment]
                if spec is None:
                    task = tasks[key]
                    kernel, args = task[0], task[1:]
                else:
                    kernel, args = spec.kernel, spec.deps
                i = len(steps)
                for a in args:
                    last[a] = i
                append((key, kernel, args))
    dies: dict[int, list] = {}
    keep = set(wanted)
    for key, i in last.items():
        if key not in keep:
            found = dies.get(i)
            if found is None:
                dies[i] = [key]
            else:
                found.append(key)
    return DirectWalk(steps, values, dies, specs)


def walk(direct: DirectWalk) -> dict:
    """Run the scanned tasks in order on this thread; returns the values by key (the
    wanted ones all there). A task that raises gives its own exception, with a note
    naming the task (``errors.add_node_note``)."""
    values = direct.values
    dies = direct.dies.get
    i = -1
    try:
        for i, (key, kernel, args) in enumerate(direct.steps):
            values[key] = kernel(*[values[a] for a in args])
            dead = dies(i)
            if dead is not None:
                for d in dead:
                    del values[d]
    except Exception as exc:
        key, kernel, _ = direct.steps[i]
        spec = direct.specs.get(key)
        name = key if type(key) is str else str(key)
        add_node_note(exc, name, spec.op if spec is not None else func_name(kernel))
        raise
    return values
