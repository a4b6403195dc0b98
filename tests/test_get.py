"""``scheduler.get``: dask's get-function contract, dask collections, and options."""

from __future__ import annotations

import numpy as np
import pytest

import scheduler

dask = pytest.importorskip("dask")
from dask.utils_test import GetFunctionTestMixin  # noqa: E402


class TestThreadsGet(GetFunctionTestMixin):
    get = staticmethod(scheduler.get)


def inline_get(dsk, keys, **kwargs):
    return scheduler.get(dsk, keys, executor="inline", **kwargs)


class TestInlineGet(GetFunctionTestMixin):
    get = staticmethod(inline_get)


def test_dask_array_through_scheduler_get():
    da = pytest.importorskip("dask.array")
    x = da.arange(10_000, chunks=1000, dtype=np.float64).reshape(100, 100).rechunk(25)
    y = (da.sin(x) @ x.T + 1).sum(axis=0)
    expected = y.compute(scheduler="sync")
    got = dask.compute(y, scheduler=scheduler.get)[0]
    assert np.array_equal(got, expected)


def test_dask_delayed_through_scheduler_get():
    from dask import delayed

    @delayed
    def inc(v):
        return v + 1

    @delayed
    def total(*vs):
        return sum(vs)

    out = total(*[inc(i) for i in range(50)])
    assert dask.compute(out, scheduler=scheduler.get)[0] == sum(range(1, 51))


def test_get_options_and_errors():
    def boom(v):
        raise RuntimeError("nope")

    tasks = {"a": 1, "b": (boom, "a"), "c": (lambda v: v * 2, "a")}
    with pytest.raises(RuntimeError, match="nope") as info:
        scheduler.get(tasks, ["b", "c"])
    assert info.value.__notes__ == ["node 'b' (op boom) failed"]
    assert scheduler.get(tasks, "c", executor="inline") == 2
    cyclic = {"a": (abs, "c"), "b": (abs, "a"), "c": (abs, "b")}
    with pytest.raises(scheduler.CycleError, match="'a' -> "):
        scheduler.get(cyclic, "a")
