"""Every distinct fetch comes back as an array of its own, on every executor: two
fetches that compute the same thing (merged into one task by the plan's rewrite), or
whose kernels return views of one another, never share memory; a node fetched twice
is one array."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from bits import same_bits
from engines import make_engine

import dataflow as df
import scheduler
from scheduler.results import distinct_arrays

try:  # distributed's process-wide offload thread: started before any test, not by one
    from distributed.utils import _offload_executor

    _offload_executor.submit(lambda: None).result()
except ImportError:  # no dask.distributed: its tests are skipped
    pass

EXECUTORS = ["inline", "threads", "threads-all-pooled", "asyncio", "processes", "dask"]


@pytest.fixture(params=EXECUTORS)
def run(request):
    """``run(fetches, feeds, simplify=True)`` on an engine of this executor."""
    kind = request.param
    engines = []
    dask_executor = None
    if kind == "dask":
        pytest.importorskip("distributed")
        from scheduler.dask_executor import DaskExecutor

        dask_executor = DaskExecutor(n_workers=2, processes=False)

    def run(fetches, feeds, simplify=True):
        if dask_executor is not None:
            engine = scheduler.Engine(dask_executor, simplify=simplify)
        elif kind == "asyncio":
            engine = make_engine("asyncio", simplify=simplify)
            engines.append(engine)
            import asyncio

            return asyncio.run(engine.run_async(fetches, feeds))
        else:
            engine = make_engine(kind, simplify=simplify)
        engines.append(engine)
        return engine.run(fetches, feeds)

    try:
        yield run
    finally:
        for engine in engines:
            engine.close()
        if dask_executor is not None:
            dask_executor.shutdown()


def assert_independent(arrays):
    for a, b in itertools.combinations(arrays, 2):
        assert a is not b
        assert not np.shares_memory(a, b)


@pytest.mark.parametrize("simplify", [True, False])
def test_fetches_built_alike_are_two_arrays(run, simplify):
    with df.Graph():
        x = df.placeholder("x", (4,))
        a = df.tanh(x)
        b = df.tanh(x)  # built separately: the rewrite merges it with a
    got_a, got_b = run([a, b], {x: np.linspace(-1, 1, 4)}, simplify)
    assert same_bits(got_a, got_b) and same_bits(got_b, np.tanh(np.linspace(-1, 1, 4)))
    assert_independent([got_a, got_b])
    got_a += 1.0
    assert same_bits(got_b, np.tanh(np.linspace(-1, 1, 4)))


@pytest.mark.parametrize("simplify", [True, False])
def test_fetched_views_of_one_another_are_arrays_of_their_own(run, simplify):
    with df.Graph():
        x = df.placeholder("x", (2, 3))
        y = df.exp(x)
        fetches = {"y": y, "flat": df.reshape(y, (6,)), "t": df.transpose(y),
                   "same": df.stop_gradient(y), "row": y[0], "times1": y * 1.0,
                   "z": df.exp(x) + 0.0}
    got = run(fetches, {x: np.arange(6.0).reshape(2, 3)}, simplify)
    want = np.exp(np.arange(6.0).reshape(2, 3))
    assert same_bits(got["y"], got["same"]) and same_bits(got["y"], want)
    assert np.array_equal(got["flat"], want.ravel()) and np.array_equal(got["t"], want.T)
    assert_independent(list(got.values()))


def test_a_node_fetched_twice_is_one_array(run):
    with df.Graph():
        x = df.placeholder("x", (3,))
        y = df.sin(x)
        z = df.sin(x)
    got = run([y, z, y], {x: np.ones(3)})
    assert got[0] is got[2]
    assert_independent(got[:2])
    named = run({"a": y, "b": y, "c": z}, {x: np.ones(3)})
    assert named["a"] is named["b"] and named["c"] is not named["a"]


@pytest.mark.parametrize("memory", ["owned", "foreign"])
def test_distinct_arrays_copies_only_what_may_share_memory(memory):
    base = np.arange(12.0)
    if memory == "foreign":  # memory that no ndarray owns (a buffer, shared memory)
        base = np.frombuffer(bytearray(base.tobytes()), dtype=base.dtype)
    other = np.ones(3)
    empty = np.zeros(0)
    values = [base[:6], other, base[6:], base[5:7], 3, base, empty, empty, base[::-1]]
    out = distinct_arrays(values)
    assert out[0] is values[0] and out[1] is other and out[2] is values[2]
    assert out[4] == 3 and out[6] is empty
    for i in (3, 5, 7, 8):  # overlap an earlier fetch (or are it again): copied
        assert out[i] is not values[i] and same_bits(out[i], values[i])
    assert_independent([v for v in out if isinstance(v, np.ndarray) and v.size])
    assert out[7] is not out[6]
