"""Pooled chains: a task sent to a thread pool takes along the tasks that can only run
right after it (``_Run._chain_from``), in one pool job. Same values, same errors, values
freed as early, one worker per chain."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest
from bits import same_bits
from engines import Blob, blob_kernel

import scheduler

where: dict[str, str] = {}


def step(key):
    def kernel(*values):
        where[key] = threading.current_thread().name
        time.sleep(0.002)
        return sum(values) + 1
    return kernel


def chains_graph(branches: int = 4, length: int = 5) -> tuple[dict, list]:
    tasks: dict = {"one": 1}
    ends = []
    for b in range(branches):
        prev = "one"
        for i in range(length):
            key = f"b{b}_{i}"
            tasks[key] = (step(key), prev, "one")  # a literal beside the chain's value
            prev = key
        ends.append(prev)
    tasks["total"] = (sum, ends)
    return tasks, ends


class CountingPool(cf.ThreadPoolExecutor):
    def __init__(self, workers: int):
        super().__init__(workers)
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


def test_each_chain_is_one_pool_job_on_one_worker():
    tasks, ends = chains_graph()
    where.clear()
    with CountingPool(2) as pool, scheduler.Engine(pool, inline_threshold=0) as engine:
        assert engine.get(tasks, "total") == 4 * 11  # 3, 5, 7, 9, 11 along each chain
    assert pool.submitted == 4 + 1  # the chains, then the sum
    for b in range(4):
        workers = {where[f"b{b}_{i}"] for i in range(5)}
        assert len(workers) == 1 and threading.current_thread().name not in workers


def test_a_fetched_value_inside_a_chain_comes_back():
    tasks, ends = chains_graph(branches=2)
    with scheduler.Engine("threads", workers=2, inline_threshold=0) as engine:
        assert engine.get(tasks, ["b0_2", "total", "b1_0"]) == (7, 22, 3)


def test_a_failure_inside_a_chain_names_its_node_and_stops_the_chain():
    ran: list[str] = []

    def ok(key):
        def kernel(v):
            ran.append(key)
            return v
        return kernel

    def boom(v):
        raise ValueError("broken link")

    tasks = {"a": 1, "c0": (ok("c0"), "a"), "c1": (boom, "c0"), "c2": (ok("c2"), "c1")}
    with scheduler.Engine("threads", workers=2, inline_threshold=0) as engine:
        with pytest.raises(ValueError, match="broken link") as info:
            engine.get(tasks, "c2")
    assert info.value.__notes__ == ["node 'c1' (op boom) failed"]
    assert ran == ["c0"]


def test_a_chain_lets_each_value_die_once_the_next_task_has_it():
    grow, high = blob_kernel()
    tasks = {"x0": (grow,)}
    for i in range(1, 50):
        tasks[f"x{i}"] = (grow, f"x{i - 1}")
    with scheduler.Engine("threads", workers=2, inline_threshold=0) as engine:
        assert isinstance(engine.get(tasks, "x49"), Blob)
    assert high[0] <= 2


def test_dataflow_chains_match_the_inline_run_bitwise():
    import dataflow as df

    with df.Graph():
        x = df.placeholder("x", (64, 64))
        branches = []
        for b in range(4):
            h = x * float(b + 1)
            for _ in range(6):
                h = df.tanh(df.matmul(h, x)) + 0.5
            branches.append(h)
        y = df.add_n(branches)
        (g,) = df.gradients(df.sum(y * y), [x])
    feeds = {x: np.random.default_rng(0).standard_normal((64, 64)) / 8}
    with scheduler.Engine("inline") as inline:
        expected = inline.run([y, g], feeds)
    with scheduler.Engine("threads", workers=2, inline_threshold=0) as pooled:
        got = pooled.run([y, g], feeds)
    for a, b in zip(got, expected):
        assert same_bits(a, b)


def test_profiled_runs_see_every_task_finish_on_its_own():
    tasks, _ = chains_graph(branches=2, length=3)
    profiler = scheduler.Profiler()
    with scheduler.Engine("threads", workers=2, inline_threshold=0) as engine:
        engine.get(tasks, "total", callbacks=[profiler])
    assert {r.name for r in profiler.records} >= {f"b{b}_{i}" for b in range(2) for i in range(3)}


def test_a_chain_starts_nothing_more_once_the_run_has_failed():
    started: list[str] = []

    def slow(key):
        def kernel(v):
            started.append(key)
            time.sleep(0.05)
            return v
        return kernel

    def fail_soon(v):
        time.sleep(0.01)
        raise RuntimeError("elsewhere")

    tasks = {"a": 1, "bad": (fail_soon, "a")}
    prev = "a"
    for i in range(6):
        tasks[f"c{i}"] = (slow(f"c{i}"), prev)
        prev = f"c{i}"
    tasks["out"] = (lambda *v: v, "bad", prev)
    with scheduler.Engine("threads", workers=2, inline_threshold=0) as engine:
        with pytest.raises(RuntimeError, match="'bad'"):
            engine.get(tasks, "out")
    assert len(started) <= 2  # the chain's first task, and perhaps the one running then


class Interrupted(BaseException):
    """Not an Exception: what a kernel interrupted from outside raises."""


def test_a_base_exception_inside_a_chain_names_the_task_that_raised():
    def interrupted(v):
        raise Interrupted("stop")

    tasks = {"a": (abs, -1), "b": (abs, "a"), "c": (interrupted, "b"), "d": (abs, "c")}
    with scheduler.Engine("threads", workers=2, inline_threshold=0) as engine:
        with pytest.raises(Interrupted, match=r"'c' \(op interrupted\)"):
            engine.get(tasks, "d")
