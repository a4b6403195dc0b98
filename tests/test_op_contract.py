"""User-defined ops keep their shape rule: a kernel whose result has another shape
(where the rule knows it) or another dtype than its node declares fails at its own
node with a ``NodeError`` naming it, on every executor, instead of passing silently
or making the next node fail."""

from __future__ import annotations

import numpy as np
import pytest
from engines import make_engine

import dataflow as df
import scheduler
from scheduler import NodeError

try:  # distributed's process-wide offload thread: started before any test, not by one
    from distributed.utils import _offload_executor

    _offload_executor.submit(lambda: None).result()
except ImportError:  # no dask.distributed: its tests are skipped
    pass

EXECUTORS = ["inline", "threads", "threads-all-pooled", "processes", "dask"]


class Flatten(df.Op):
    """Declares ``(3, 2)``, returns ``(6,)``."""

    name = "tests.contract.flatten"

    def infer(self, x):
        return (3, 2), x.dtype

    def forward(self, x):
        return np.reshape(x, 6)


class ToInt(df.Op):
    """Declares its input's float dtype (the default rule), returns int64."""

    name = "tests.contract.to_int"

    def forward(self, x):
        return x.astype(np.int64)


class Rows(df.Op):
    """Declares ``(None, 3)``; returns ``n`` rows of ``width`` columns."""

    name = "tests.contract.rows"
    attr_names = ("width",)

    def infer(self, n):
        return (None, 3), np.dtype(np.float64)

    def forward(self, n):
        return np.zeros((int(n), self.width))


@pytest.fixture(params=EXECUTORS)
def engine(request):
    if request.param == "dask":
        pytest.importorskip("distributed")
        from scheduler.dask_executor import DaskExecutor

        executor = DaskExecutor(n_workers=1, processes=False)
        try:
            with scheduler.Engine(executor) as eng:
                yield eng
        finally:
            executor.shutdown()
    else:
        with make_engine(request.param) as eng:
            yield eng


def test_a_result_of_another_shape_names_the_node(engine):
    with df.Graph():
        x = df.placeholder("x", (6,))
        out = df.exp(df.apply(Flatten(), x, name="flat"))
    with pytest.raises(NodeError, match=r"'flat'.*returned shape \(6,\).*\(3, 2\)") as info:
        engine.run(out, {x: np.ones(6)})
    assert info.value.node_name == "flat"


def test_a_result_of_another_dtype_names_the_node_not_the_next_one(engine):
    # 512 KiB: the next node may write its result into this input's buffer, which is
    # where an int64 value made *it* fail with a casting error.
    with df.Graph():
        x = df.placeholder("x", (256, 256))
        out = df.exp(df.apply(ToInt(), x, name="to_int"))
    with pytest.raises(NodeError, match=r"'to_int'.*returned dtype int64.*float64") as info:
        engine.run(out, {x: np.ones((256, 256))})
    assert info.value.node_name == "to_int"


def test_unknown_dims_take_any_size_and_known_ones_are_checked(engine):
    with df.Graph():
        n = df.placeholder("n", (), dtype=np.int64)
        good = df.apply(Rows(width=3), n, name="good")
        bad = df.apply(Rows(width=4), n, name="bad")
    assert engine.run(good, {n: 5}).shape == (5, 3)
    with pytest.raises(NodeError, match=r"'bad'.*returned shape \(5, 4\).*\(\?, 3\)"):
        engine.run(bad, {n: 5})


def test_custom_op_results_are_made_numpy_when_they_keep_the_contract():
    total = df.custom_op("tests.contract.total", lambda v: float(np.sum(v)),
                         shape_rule=lambda v: ((), v.dtype))
    pair = df.custom_op("tests.contract.pair", lambda v: [float(v[0]), float(v[1])],
                        shape_rule=lambda v: ((2,), v.dtype))
    with df.Graph():
        x = df.placeholder("x", (2,))
        fetches = [total(x), pair(x) * 2.0]
    with make_engine("inline") as eng:
        got_total, got_pair = eng.run(fetches, {x: np.array([1.0, 2.0])})
    assert isinstance(got_total, np.ndarray) and got_total == 3.0
    assert got_pair.tolist() == [2.0, 4.0]
    wrong = df.custom_op("tests.contract.text", lambda v: "text")
    with df.Graph():
        y = df.placeholder("y", ())
        out = wrong(y, name="text")
    with make_engine("inline") as eng, pytest.raises(NodeError, match="'text'.*dtype <U4"):
        eng.run(out, {y: 1.0})
    opaque = df.custom_op("tests.contract.opaque", lambda v: {"not": "an array"})
    with df.Graph():
        z = df.placeholder("z", ())
        out = opaque(z, name="opaque")
    with make_engine("inline") as eng, pytest.raises(NodeError, match="'opaque'.*returned a dict"):
        eng.run(out, {z: 1.0})
