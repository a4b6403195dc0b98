"""``scheduler.profile``: warm an engine, then profile one run, in one call."""

from __future__ import annotations

import numpy as np
import pytest

import dataflow as df
import scheduler


class CountRuns(scheduler.Callback):
    def __init__(self) -> None:
        self.runs = 0

    def start(self, run: scheduler.RunInfo) -> None:
        self.runs += 1


@pytest.fixture
def graph():
    rng = np.random.default_rng(0)
    with df.Graph():
        x = df.placeholder("x", (8, 8))
        branches = [df.tanh(x @ df.constant(rng.standard_normal((8, 8)))) for _ in range(3)]
        out = df.sum(branches[0] + branches[1] + branches[2])
    return x, out, {x: rng.random((8, 8))}


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_profile_warms_the_given_engine_then_profiles_one_run(graph, warmup):
    x, out, feeds = graph
    counter = CountRuns()
    with scheduler.Engine("threads", workers=2, callbacks=[counter]) as engine:
        prof = scheduler.profile(out, feeds, engine=engine, warmup=warmup)
        assert counter.runs == warmup + 1
        # the engine stays open and usable: the caller owns it
        assert engine.run(out, feeds) == prof_value(out, feeds)
    assert isinstance(prof, scheduler.Profiler)
    assert len(prof.runs) == 1
    names = {r.name for r in prof.records}
    assert sum(n.startswith("matmul") for n in names) == 3  # three distinct branches ran
    assert prof.wall_time > 0


def prof_value(out, feeds):
    return scheduler.run(out, feeds, executor="inline")


@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_profile_makes_and_closes_its_own_engine(graph, executor):
    x, out, feeds = graph
    prof = scheduler.profile(out, feeds, executor=executor, workers=2)
    assert prof.last.executor == executor
    assert {r.op for r in prof.records} >= {"matmul", "tanh", "sum"}


def test_profile_accepts_structured_fetches(graph):
    x, out, feeds = graph
    prof = scheduler.profile({"out": out, "x2": x * 2.0}, feeds, executor="inline", warmup=0)
    assert any(r.fetched for r in prof.records)


@pytest.mark.parametrize("warmup", [-1, 1.5, True, "2"])
def test_profile_rejects_a_bad_warmup(graph, warmup):
    x, out, feeds = graph
    with pytest.raises(ValueError, match="warmup"):
        scheduler.profile(out, feeds, executor="inline", warmup=warmup)


def test_profile_rejects_engine_with_executor(graph):
    x, out, feeds = graph
    with scheduler.Engine("inline") as engine:
        with pytest.raises(ValueError, match="engine"):
            scheduler.profile(out, feeds, engine=engine, executor="threads", workers=2)


def test_profile_errors_propagate_and_close_the_engine(graph):
    x, out, feeds = graph
    with pytest.raises(scheduler.FeedError):
        scheduler.profile(out, {}, executor="threads", workers=2)
