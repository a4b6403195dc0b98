"""The one rule every feed follows (``dataflow.ops.core.convert_feed``): arrays, lists
and scalars alike are converted to the fed node's dtype only to the same or a later
kind (bool < integer < float < complex) and only when every value fits; nothing wraps
around or overflows to infinity, and a feed that does not fit is a ``FeedError``
naming the node, raised before any node runs. ``constant(value, dtype=...)`` follows
the same rule."""

from __future__ import annotations

import re

import numpy as np
import pytest
from bits import same_bits

import dataflow as df
import scheduler
from scheduler import FeedError

EXECUTORS = ["inline", "threads"]


def spied_graph(dtype, shape=()):
    """A placeholder of ``dtype`` and a node after it that records that it ran."""
    ran = []

    def record(v):
        ran.append(True)
        return v

    spy = df.custom_op("tests.feeds.spy", record)
    with df.Graph():
        x = df.placeholder("x", shape, dtype=dtype)
        out = spy(x)
    return x, out, ran


def forms(value, dtype):
    """The same value as an array (of ``dtype``), a list and a scalar (when 0-d)."""
    array = np.asarray(value, dtype=dtype)
    found = {"array": array, "list": array.tolist()}
    if array.ndim == 0:
        found["numpy scalar"] = array[()]
    return found


WRAPPING = [
    # (fed value, its dtype, the placeholder's dtype, the value named in the error)
    (2**40 + 7, np.int64, np.int32, "1099511627783"),
    ([[1, 2**40 + 7]], np.int64, np.int32, "1099511627783"),
    (-(2**31) - 1, np.int64, np.int32, "-2147483649"),
    (-1, np.int64, np.uint8, "-1"),
    ([0, 256], np.int64, np.uint8, "256"),
    (2**63, np.uint64, np.int64, "9223372036854775808"),
    (1e300, np.float64, np.float32, "1e+300"),
    ([[0.5, -1e300]], np.float64, np.float32, "-1e+300"),
    (70000.0, np.float64, np.float16, "70000.0"),
    (70000, np.int64, np.float16, "70000"),
    (1e300 + 1e300j, np.complex128, np.complex64, "(1e+300+1e+300j)"),
]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("value, src, dst, named", WRAPPING)
def test_a_value_that_does_not_fit_is_a_feed_error_naming_the_placeholder(
        executor, value, src, dst, named):
    shape = np.shape(value)
    x, out, ran = spied_graph(dst, shape)
    message = rf"placeholder 'x'.*{re.escape(named)} does not fit its dtype {np.dtype(dst)}"
    for fed in forms(value, src).values():
        with pytest.raises(FeedError, match=message):
            scheduler.run(out, {x: fed}, executor=executor)
    assert ran == []


def test_python_scalars_that_do_not_fit_are_refused_too():
    x, out, ran = spied_graph(np.int32)
    with pytest.raises(FeedError, match="placeholder 'x'.*does not fit its dtype int32"):
        scheduler.run(out, {x: 2**40 + 7}, executor="inline")
    f, out32, _ = spied_graph(np.float32)
    with pytest.raises(FeedError, match="placeholder 'x'.*overflow to infinity"):
        scheduler.run(out32, {f: 1e300}, executor="inline")
    with pytest.raises(FeedError, match="placeholder 'x'.*not numeric"):
        scheduler.run(out, {x: 2**70}, executor="inline")  # beyond 64 bits: an object array
    assert ran == []


FITTING = [
    (2**31 - 1, np.int64, np.int32),
    ([[-(2**31), 5]], np.int64, np.int32),
    ([0, 255], np.int64, np.uint8),
    ([[1, 2, 3]], np.int64, np.float64),
    ([[1, 2, 3]], np.int64, np.float32),
    (2**53 + 1, np.int64, np.float64),  # rounds, like every float conversion
    ([0.1, -2.5e38], np.float64, np.float32),
    ([np.inf, -np.inf, np.nan], np.float64, np.float32),  # already not finite: kept
    (1e-300, np.float64, np.float32),  # underflows to zero, as astype does
    ([True, False], np.bool_, np.float64),
    ([1.5, 2.0], np.float32, np.float64),
    ([1.5, 2.0], np.float64, np.complex64),
]


@pytest.mark.parametrize("value, src, dst", FITTING)
def test_arrays_lists_and_scalars_that_fit_are_converted_alike(value, src, dst):
    shape = np.shape(value)
    with df.Graph():
        x = df.placeholder("x", shape, dtype=dst)
        out = df.stop_gradient(x)
    expected = np.asarray(value, dtype=src).astype(dst)
    for form, fed in forms(value, src).items():
        if form == "list" and src is np.float32:
            continue  # a list of floats is float64 to numpy; covered by the float64 rows
        with np.errstate(all="raise"):  # no overflow or invalid cast behind the scenes
            got = scheduler.run(out, {x: fed}, executor="inline")
        assert got.dtype == np.dtype(dst), form
        assert same_bits(got, expected), form


@pytest.mark.parametrize("value, src, dst", [
    ([1.0, 2.0], np.float64, np.int64),  # floats never become integers, even whole ones
    ([1.5], np.float64, np.int32),
    ([1 + 0j], np.complex128, np.float64),
    ([1, 0], np.int64, np.bool_),
    (["a", "b"], np.str_, np.float64),
])
def test_conversions_across_kinds_are_refused_for_every_form(value, src, dst):
    x, out, ran = spied_graph(dst, np.shape(value))
    for fed in forms(value, src).values():
        with pytest.raises(FeedError, match=r"placeholder 'x' has dtype .*, expected"):
            scheduler.run(out, {x: fed}, executor="inline")
    assert ran == []


def test_an_int64_array_feeds_a_float_placeholder_as_the_same_list_does():
    with df.Graph():
        x = df.placeholder("x", (1, 3))
        out = df.sum(x * 2.0)
    from_list = scheduler.run(out, {x: [[1, 2, 3]]}, executor="inline")
    from_array = scheduler.run(out, {x: np.array([[1, 2, 3]], dtype=np.int64)},
                               executor="inline")
    assert from_list == from_array == 12.0


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_fed_computed_node_follows_the_same_rule(executor):
    with df.Graph():
        x = df.placeholder("x", (2,), dtype=np.float32)
        hidden = df.exp(x)
        out = hidden * 2.0
    fed = scheduler.run(out, {hidden: [1, 2]}, executor=executor)
    assert fed.dtype == np.float32 and fed.tolist() == [2.0, 4.0]
    with pytest.raises(FeedError, match=r"node 'exp'.*1e\+300.*does not fit"):
        scheduler.run(out, {hidden: np.array([1e300, 1.0])}, executor=executor)
    with pytest.raises(FeedError, match=r"node 'exp' has shape \(3,\), expected \(2,\)"):
        scheduler.run(out, {hidden: np.ones(3, np.float32)}, executor=executor)


def test_a_constant_of_a_given_dtype_follows_the_same_rule():
    with df.Graph():
        assert df.constant([1, 2], dtype=np.float32).dtype == np.float32
        assert df.constant(np.int64(7), dtype=np.int8).op.value == 7
        with pytest.raises(ValueError, match=r"constant 'c': value 1099511627783 does not fit"):
            df.constant(np.int64(2**40 + 7), name="c", dtype=np.int32)
        with pytest.raises(ValueError, match=r"constant: value 1e\+300 does not fit"):
            df.constant(np.array([1e300]), dtype=np.float32)
        with pytest.raises(TypeError, match="constant 'f' has dtype float64, expected int64"):
            df.constant(1.5, name="f", dtype=np.int64)


@pytest.mark.parametrize("value", [1.5, 3, True, -0.0, 2**70, 1e300])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "bool"])
def test_python_numbers_fed_to_a_0d_node_follow_the_one_rule(value, dtype):
    """Python numbers take a short path into 0-d nodes of their own numpy dtype; every
    run (including compiled fast runs) gives what ``convert_feed`` gives, or its error."""
    from dataflow.ops.core import convert_feed

    with df.Graph():
        x = df.placeholder("x", (), dtype)
        y = df.where(df.constant(True), x, x)  # the fed value itself, through a node
    try:
        expected = convert_feed("placeholder 'x'", value, (), np.dtype(dtype))
    except (TypeError, ValueError) as exc:
        with scheduler.Engine("inline") as engine:
            for _ in range(3):
                with pytest.raises(FeedError, match=re.escape(str(exc))):
                    engine.run(y, {x: value})
        return
    with scheduler.Engine("inline") as engine:
        for _ in range(3):  # the third run is a compiled plan's fast path
            got = engine.run(y, {x: value})
            assert got.dtype == expected.dtype and same_bits(got, expected)
