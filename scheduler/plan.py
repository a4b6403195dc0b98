"""Plans: a (fetches, fed keys) request compiled once into flat arrays the engine runs.

Compiling walks the graph from the fetches (iteratively), stops at fed keys, reports
a cycle with its path, and lays the reachable tasks out in a depth-first post-order
from the fetches. That order is the tasks' priority: it finishes one branch before
starting the next, so values die young and memory stays low (the idea behind dask's
``order.py``), and it is a topological order, so the inline executor simply walks it.

A plan holds, per position ``p`` in that order: the kernel, the positions of its
arguments, how many computed parents it waits for, its children, how many consumers
must finish before its value can be freed, and, for the sequential walk, which values
die after ``p`` runs. Literals and fed values are not tasks: they sit in the value
array from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from .errors import CycleError, FeedError
from .spec import NO_VALUE, TaskSpec

SpecOf = Callable[[Hashable], TaskSpec]

# Per-task cost estimates start unknown; a task is "expensive" (worth a thread hand-off)
# once it has been measured above this many seconds. A hand-off costs tens of µs.
DEFAULT_INLINE_THRESHOLD = 40e-6


class Plan:
    """The compiled form of one (fetches, fed keys) request. Fed keys that the fetches
    do not need are ignored (as in TensorFlow: feeding a placeholder a fetch does not use
    is no error); whether a fed key belongs to the graph at all is the caller's check. Immutable apart from the
    learned per-task costs, which only affect scheduling choices, never results."""

    def __init__(self, fetch_keys: Sequence[Hashable], fed_keys: Sequence[Hashable],
                 spec_of: SpecOf):
        fed = set(fed_keys)
        order, specs = _post_order(fetch_keys, fed, spec_of)
        position = {key: p for p, key in enumerate(order)}
        n = len(order)
        self.keys: list[Hashable] = order
        self.names: list[str] = [s.name for s in specs]
        self.ops: list[str] = [s.op for s in specs]
        self.kernels: list[Callable[..., Any] | None] = [s.kernel for s in specs]
        self.cost_keys: list[Hashable] = [s.cost_key for s in specs]
        self.args: list[tuple[int, ...]] = [tuple(position[d] for d in s.deps) for s in specs]
        self.fetch_positions: list[int] = [position[k] for k in fetch_keys]

        #: literal values, and (position, key, check) of each value that must be fed
        self.template: list[Any] = [None] * n
        self.feed_slots: list[tuple[int, Hashable, Callable[[Any], Any] | None]] = []
        is_source = [False] * n
        for p, (key, spec) in enumerate(zip(order, specs)):
            if key in fed:
                self.feed_slots.append((p, key, spec.check_feed))
                is_source[p] = True
            elif spec.kernel is None:
                if spec.value is NO_VALUE:
                    raise FeedError(f"{spec.op} {spec.name!r} must be fed: no value was given for it")
                self.template[p] = spec.value
                is_source[p] = True
        # Distinct parents and children; a value feeding one task twice counts once.
        self.parents: list[tuple[int, ...]] = [tuple(dict.fromkeys(a)) for a in self.args]
        children: list[list[int]] = [[] for _ in range(n)]
        for p, parents in enumerate(self.parents):
            for q in parents:
                children[q].append(p)
        self.children: list[tuple[int, ...]] = [tuple(c) for c in children]
        self.is_source = is_source
        self.compute: list[int] = [p for p in range(n) if not is_source[p]]
        self.initial_pending: list[int] = [
            0 if is_source[p] else sum(1 for q in self.parents[p] if not is_source[q])
            for p in range(n)
        ]
        self.initial_ready: list[int] = [p for p in self.compute if self.initial_pending[p] == 0]
        fetched = set(self.fetch_positions)
        self.keep: list[bool] = [p in fetched for p in range(n)]
        self.consumers: list[int] = [len(c) for c in self.children]

        # For the sequential walk: the values whose last consumer is p die right after p.
        last_use = {}
        for p in self.compute:
            for q in self.parents[p]:
                last_use[q] = p
        dies_after: list[list[int]] = [[] for _ in range(n)]
        for q, p in last_use.items():
            if not self.keep[q]:
                dies_after[p].append(q)
        self.dies_after: list[tuple[int, ...]] = [tuple(d) for d in dies_after]
        #: (position, kernel, argument positions, positions freed afterwards) in order
        self.steps: list[tuple[int, Callable[..., Any], tuple[int, ...], tuple[int, ...]]] = [
            (p, self.kernels[p], self.args[p], self.dies_after[p]) for p in self.compute
        ]

        #: learned duration per position (seconds), None until measured, and how many
        #: samples it rests on: one sample alone never makes a task expensive
        self.estimates: list[float | None] = [None] * n
        self.samples: list[int] = [0] * n
        self.expensive: list[bool] = [False] * n
        self.any_expensive = False
        self.runs = 0

    def __len__(self) -> int:
        return len(self.keys)

    def describe(self, p: int) -> str:
        return f"{self.names[p]!r} (op {self.ops[p]})"

    def seed_estimates(self, table: dict[Hashable, float], threshold: float) -> None:
        """Start from the engine-wide estimates of tasks with the same cost key."""
        for p in self.compute:
            key = self.cost_keys[p]
            if key is not None and key in table:
                self.estimates[p] = table[key]
                self.samples[p] = 1
        self.reclassify(threshold)

    def learn(self, durations: dict[int, float], table: dict[Hashable, float],
              threshold: float) -> None:
        """Fold measured durations into the estimates (see ``updated_estimate``)."""
        estimates, cost_keys, samples = self.estimates, self.cost_keys, self.samples
        for p, seconds in durations.items():
            estimates[p] = updated_estimate(estimates[p], seconds)
            samples[p] += 1
            key = cost_keys[p]
            if key is not None:
                table[key] = updated_estimate(table.get(key), seconds)
        self.reclassify(threshold)

    def reclassify(self, threshold: float) -> None:
        """Mark the tasks worth a hand-off to the pool; with ``threshold`` 0, all of them."""
        self.expensive = [threshold == 0 or (e is not None and e > threshold and k >= 2)
                          for e, k in zip(self.estimates, self.samples)]
        self.any_expensive = any(self.expensive)


def updated_estimate(old: float | None, sample: float) -> float:
    """A duration estimate that drops at once and rises at most 4x per sample.

    A garbage-collection pause or a preemption inflates one measurement of a 1 µs task
    a thousandfold; believing it would send every task of that kind to the pool. A task
    that really became slower crosses the threshold after a few samples instead.
    """
    return sample if old is None else min(sample, 4 * old)


def _post_order(fetch_keys: Sequence[Hashable], fed: set,
                spec_of: SpecOf) -> tuple[list[Hashable], list[TaskSpec]]:
    """Depth-first post-order of the tasks the fetches need, without recursion.
    Raises ``CycleError`` with the path when the walk meets a task on its own stack."""
    order: list[Hashable] = []
    specs: list[TaskSpec] = []
    state: dict[Hashable, int] = {}  # 1: on the stack, 2: done
    spec_cache: dict[Hashable, TaskSpec] = {}
    for root in fetch_keys:
        if state.get(root) == 2:
            continue
        stack: list[tuple[Hashable, Any]] = []
        root_spec = _spec(root, fed, spec_of, spec_cache)
        state[root] = 1
        stack.append((root, iter(root_spec.deps)))
        while stack:
            key, deps = stack[-1]
            for dep in deps:
                s = state.get(dep)
                if s == 2:
                    continue
                if s == 1:
                    path = [k for k, _ in stack]
                    raise CycleError(path[path.index(dep):] + [dep])
                dep_spec = _spec(dep, fed, spec_of, spec_cache)
                state[dep] = 1
                stack.append((dep, iter(dep_spec.deps)))
                break
            else:
                stack.pop()
                state[key] = 2
                order.append(key)
                specs.append(spec_cache.pop(key))
    return order, specs


def _spec(key: Hashable, fed: set, spec_of: SpecOf, cache: dict) -> TaskSpec:
    spec = spec_of(key)
    if key in fed:
        spec = spec._replace(deps=())  # a fed value cuts its ancestors off
    cache[key] = spec
    return spec
