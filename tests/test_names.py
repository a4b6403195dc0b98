"""Names: ``name=`` on every op function, unique names, lookup by name in a graph,
gradients named after what they differentiate, fetches and feeds given by name to the
engine, the op functions' docstrings, clear errors for bad arguments, and a default
graph that keeps only the nodes still referenced."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading

import numpy as np
import pytest

import dataflow as df
import dataflow.ops
import scheduler
from dataflow.checkpointing import after

OP_FUNCTIONS = sorted(
    name for name in dataflow.ops.__all__
    if inspect.isfunction(getattr(dataflow.ops, name)) and name != "const_value"
)


def build_each(name: str, x: df.Node, labels: df.Node) -> df.Node:
    """One node of op function ``name``, built with ``name=`` set to ``"the_" + name``."""
    fn = getattr(df, name)
    given = "the_" + name
    two = {"add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "greater",
           "greater_equal", "less", "less_equal", "equal", "not_equal", "matmul", "sum_to",
           "broadcast_as", "reshape_as"}
    if name == "constant":
        return fn(np.ones(2), given)
    if name == "placeholder":
        return fn(given, (2,))
    if name in two:
        other = x if name not in ("matmul",) else df.transpose(x)
        return fn(x, other, name=given)
    extra: dict = {
        "broadcast_to": ((2, 2, 3),), "cast": (np.float32,), "concatenate": (), "stack": (),
        "expand_dims": (0,), "full_like": (3.0,), "getitem": ((0,),), "reshape": ((3, 2),),
        "swapaxes": (0, 1), "one_hot": (4,),
    }
    if name in ("concatenate", "stack", "add_n"):
        return fn([x, x], name=given)
    if name == "where":
        return fn(df.greater(x, 0.0), x, x, name=given)
    if name == "one_hot":
        return fn(labels, 4, name=given)
    if name == "softmax_cross_entropy":
        return fn(x, labels, name=given)
    return fn(x, *extra.get(name, ()), name=given)


# -- name= everywhere ----------------------------------------------------------------------

def test_every_op_function_takes_a_keyword_only_name():
    assert len(OP_FUNCTIONS) > 50
    for name in OP_FUNCTIONS:
        params = inspect.signature(getattr(df, name)).parameters
        assert "name" in params, name
        if name not in ("constant", "placeholder"):  # contract: positional there
            assert params["name"].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert inspect.signature(after).parameters["name"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("name", OP_FUNCTIONS)
def test_every_op_function_names_its_node(name):
    with df.Graph() as g:
        x = df.placeholder("x", (2, 3))
        labels = df.constant(np.array([0, 3]), name="labels")
        node = build_each(name, x, labels)
    assert node.name == "the_" + name
    assert g["the_" + name] is node


def test_a_named_op_that_would_return_its_input_still_builds_a_node():
    with df.Graph() as g:
        x = df.placeholder("x", (2, 3))
        same = [df.reshape(x, (2, 3), name="r"), df.cast(x, x.dtype, name="c"),
                df.transpose(x, (0, 1), name="t"), df.add_n([x], name="n"),
                df.broadcast_to(x, (2, 3), name="b"), df.expand_dims(x, (), name="e"),
                after(x, name="a")]
    assert all(n is not x for n in same)
    assert [g[k] for k in "rctnbea"] == same
    value = np.arange(6.0).reshape(2, 3)
    for got in scheduler.run(same, {x: value}, executor="inline"):
        np.testing.assert_array_equal(got, value)
    # Unnamed, they stay free: no node is added.
    with df.Graph() as g2:
        y = df.placeholder("y", (2, 3))
        assert df.reshape(y, (2, 3)) is y and df.add_n([y]) is y and df.cast(y, y.dtype) is y
    assert len(g2) == 1


def test_names_stay_unique():
    with df.Graph() as g:
        x = df.placeholder("x", (2,))
        df.tanh(x, name="t")
        with pytest.raises(df.GraphError, match="already has a node named 't'"):
            df.exp(x, name="t")
        with pytest.raises(df.GraphError, match="already has a node named 'x'"):
            df.placeholder("x", (2,))
        auto = [df.tanh(x) for _ in range(3)]
    assert [n.name for n in auto] == ["tanh", "tanh_1", "tanh_2"]
    assert len({n.name for n in g.nodes}) == len(g)


@pytest.mark.parametrize("bad", [3, "", None.__class__, b"x"])
def test_a_bad_name_is_a_clear_error(bad):
    with df.Graph():
        x = df.placeholder("x", (2,))
        with pytest.raises(TypeError, match=r"op tanh: name must be a non-empty string"):
            df.tanh(x, name=bad)


# -- lookup by name ---------------------------------------------------------------------------

def test_graph_looks_nodes_up_by_name():
    with df.Graph("g") as g:
        x = df.placeholder("x", (2,))
        loss = df.sum(df.tanh(x), name="loss")
    assert g["loss"] is loss and g.get("loss") is loss and g["x"] is x
    assert "loss" in g and "nope" not in g and loss in g
    assert g.get("nope") is None and g.get("nope", 7) == 7
    with pytest.raises(KeyError) as info:
        g["nope"]
    assert isinstance(info.value, df.GraphError)
    assert str(info.value) == "graph 'g' has no node named 'nope'"


def test_name_scopes_prefix_generated_names_only():
    with df.Graph() as g:
        x = df.placeholder("x", (2,))
        with g.name_scope("block") as scope:
            a = df.tanh(x)
            b = df.exp(x, name="mine")
            with g.name_scope("inner"):
                c = df.sin(x)
        with g.name_scope("block") as scope2:
            d = df.tanh(x)
        e = df.tanh(x)
    assert (scope, scope2) == ("block", "block_1")
    assert [a.name, b.name, c.name, d.name, e.name] == [
        "block/tanh", "mine", "block/inner/sin", "block_1/tanh", "tanh"]


# -- gradients are named after what they differentiate --------------------------------------

def test_gradients_are_named_after_their_x():
    with df.Graph() as g:
        x = df.placeholder("x", (None, 3))
        w1 = df.constant(np.ones((3, 2)), name="W1")
        b1 = df.constant(np.zeros(2), name="b1")
        loss = df.sum(df.tanh(x @ w1 + b1), name="loss")
        forward = {n.name for n in g.nodes}
        gw, gb = df.gradients(loss, [w1, b1])
        (again,) = df.gradients(loss, [w1])
    assert (gw.name, gb.name, again.name) == ("grad/W1", "grad/b1", "grad/W1_1")
    assert g["grad/W1"] is gw
    inner = [n.name for n in g.nodes if n.name not in forward
             and n not in (gw, gb, again)]
    assert inner and all(n.startswith(("gradients/", "gradients_1/")) for n in inner), inner
    assert any(n.startswith("gradients_1/") for n in inner)


def test_gradient_naming_leaves_existing_nodes_alone():
    with df.Graph() as g:
        x = df.placeholder("x", (2,))
        seed = df.constant(np.ones(2), name="seed")
        (gx,) = df.gradients(x, [x], [seed])  # d x / d x with a given seed: the seed
        (twice, same) = df.gradients(df.sum(df.sin(x)), [x, x])
        named = df.grad(df.sum(df.sin(x)), x, name="dsin")
        jac = df.jacobian(df.sin(x), x, name="J")
    assert gx is seed and seed.name == "seed"
    with pytest.raises(df.GraphError, match="it is the existing node 'seed'"):
        df.grad(x, x, seed, name="renamed")
    assert seed.name == "seed"
    assert twice is same and twice.name == "grad/x"
    assert g["dsin"] is named and g["J"] is jac and jac.shape == (2, 2)


# -- the engine takes names ------------------------------------------------------------------

@pytest.fixture
def two_graphs():
    """Two graphs with the same names, so that a name must resolve in the right one."""
    out = []
    for scale in (1.0, 10.0):
        with df.Graph() as g:
            x = df.placeholder("x", (3,))
            loss = df.sum(x * scale, name="loss")
            df.tanh(x, name="t")
        out.append((g, x, loss))
    return out


@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_fetches_and_feeds_by_name(two_graphs, executor):
    (g, x, loss), (g2, x2, loss2) = two_graphs
    value = np.array([1.0, 2.0, 3.0])
    with scheduler.Engine(executor) as engine:
        assert engine.run("loss", {x: value}) == 6.0
        assert engine.run(loss2, {"x": value}) == 60.0  # resolved in loss2's graph
        assert engine.run(["loss", x2], {"x": value})[0] == 60.0  # x2 is the anchor
        got = engine.run({"a": "loss", "b": "t", "c": loss}, {x: value})
        assert list(got) == ["a", "b", "c"] and got["a"] == 6.0 and got["c"] == 6.0
        np.testing.assert_array_equal(got["b"], np.tanh(value))
        assert isinstance(engine.run(("loss",), {x: value}), tuple)
        with g:  # names only: the graph of the innermost `with` block
            assert engine.run(["loss"], {"x": value}) == [6.0]
        with g2:
            assert engine.run("loss", {"x": value}) == 60.0


async def test_run_async_takes_names(two_graphs):
    (g, x, loss), (g2, x2, loss2) = two_graphs
    with scheduler.Engine("threads") as engine:
        got = await engine.run_async({"l": "loss"}, {x: np.ones(3)}, timeout=60)
        assert got == {"l": 3.0}
        with g2:  # names only: the caller's `with` block, not the coordinator thread's
            got = await engine.run_async({"l": "loss"}, {"x": np.ones(3)}, timeout=60)
        assert got == {"l": 30.0}


def test_unknown_names_are_clear_errors(two_graphs):
    (g, x, loss), _ = two_graphs
    value = np.ones(3)
    with pytest.raises(scheduler.UnknownNameError) as info:
        scheduler.run("sum", {x: value})
    assert str(info.value) == f"fetch 'sum': graph {g.name!r} has no node named 'sum'"
    assert isinstance(info.value, KeyError)
    with pytest.raises(scheduler.FeedError, match=r"feed 'q': graph .* has no node named 'q'"):
        scheduler.run(loss, {"q": value})
    with pytest.raises(scheduler.FeedError, match="feed 'x' is given twice"):
        scheduler.run(loss, {"x": value, x: value})
    with pytest.raises(TypeError, match="fetches must be graph nodes or their names"):
        scheduler.run(3, {x: value})
    with df.Graph("empty"), pytest.raises(scheduler.UnknownNameError,
                                          match="'empty'.* has no node named 'loss'"):
        scheduler.run("loss", {"x": value})


# -- clear errors for bad arguments ------------------------------------------------------------

def test_placeholder_arguments():
    with df.Graph():
        assert df.placeholder("q", 3).shape == (3,)  # an int is a 1-D shape, as in numpy
        assert df.placeholder("r", [None, 2]).shape == (None, 2)
        with pytest.raises(TypeError, match=r"placeholder 's': shape must be a tuple of ints"):
            df.placeholder("s", "ab")
        with pytest.raises(TypeError, match=r"placeholder 's': bad dimension 2.5"):
            df.placeholder("s", (2.5,))
        with pytest.raises(df.ShapeError, match=r"placeholder 's': bad dimension -1"):
            df.placeholder("s", (-1,))
        with pytest.raises(TypeError, match=r"placeholder 's': dtype 'bogus' is not a numpy"):
            df.placeholder("s", (2,), "bogus")
        with pytest.raises(df.GraphError, match="placeholder: name must be a non-empty"):
            df.placeholder(3, (2,))


def test_other_bad_arguments_name_themselves():
    with df.Graph():
        x = df.placeholder("x", (2, 3))
        with pytest.raises(TypeError, match="reshape: bad dimension 'a'"):
            df.reshape(x, (3, "a"))
        with pytest.raises(TypeError, match="cast: dtype 'nope' is not a numpy dtype"):
            df.cast(x, "nope")
        with pytest.raises(TypeError, match="concatenate: xs must be a list or tuple"):
            df.concatenate(x)
        with pytest.raises(TypeError, match="stack: axis must be an int"):
            df.stack([x, x], axis="0")
        with pytest.raises(TypeError, match="one_hot: depth must be a non-negative int"):
            df.one_hot(x, 2.5)
        with pytest.raises(df.ShapeError, match="swapaxes: axis b=5"):
            df.swapaxes(x, 0, 5)
        with pytest.raises(TypeError, match="add_n: xs must be a list or tuple"):
            df.add_n(x)
        with pytest.raises(TypeError, match="transpose: axes must be a sequence of ints"):
            df.transpose(x, "ab")
        with pytest.raises(TypeError, match="constant 'c': unsupported dtype object"):
            df.constant([1, "a", None], "c")
        with pytest.raises(TypeError, match="constant: dtype 'bogus' is not a numpy dtype"):
            df.constant(1, dtype="bogus")
        with pytest.raises(TypeError, match="full_like: dtype 'bogus'"):
            df.full_like(x, 1, "bogus")
    with pytest.raises(TypeError, match="feeds must be a dict of node"):
        scheduler.run(x, [np.ones((2, 3))])


# -- docstrings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OP_FUNCTIONS + ["after"])
def test_every_op_function_has_a_numpy_style_docstring(name):
    fn = after if name == "after" else getattr(df, name)
    doc = inspect.getdoc(fn) or ""
    for section in ("Parameters\n----------", "Returns\n-------", "Notes\n-----"):
        assert section in doc, (name, section)
    assert "Gradient" in doc, name
    params = [p for p in inspect.signature(fn).parameters if p not in ("args",)]
    for param in params:
        assert param in doc, (name, param)


# -- the default graph ---------------------------------------------------------------------------

def test_default_graph_keeps_only_referenced_nodes():
    """A long-running service building small graphs outside any `with` block."""
    default = df.reset_default_graph()
    try:
        kept = df.placeholder("kept", (3,))
        for i in range(2000):
            x = df.constant(np.full(3, float(i)))  # the request's data
            out = df.sum(df.tanh(x) * 2.0)
            assert scheduler.run(out, executor="inline") == 6.0 * np.tanh(float(i))
        del x, out
        gc.collect()
        assert len(default) < 10, len(default)
        assert default["kept"] is kept  # what is still referenced stays, with its name
        # Ids still only grow, so creation order stays a topological order.
        y = df.exp(kept)
        assert y.id > 8000 and y.inputs == (kept,)
        assert df.get_consumers(kept) == (y,)
        assert [n.name for n in default.nodes] == ["kept", "exp"]
    finally:
        df.reset_default_graph()


def test_a_graph_of_ones_own_keeps_every_node():
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
        df.tanh(x, name="t")
    del x
    gc.collect()
    assert [n.name for n in g.nodes] == ["x", "t"]
    assert scheduler.run("t", {g["x"]: np.zeros(3)}, executor="inline").tolist() == [0, 0, 0]


def test_default_graph_names_are_found_from_another_thread():
    default = df.reset_default_graph()
    try:
        x = df.placeholder("x", (2,))
        df.exp(x, name="e")  # held by nobody: gone from the default graph
        y = df.tanh(x, name="y")
        got = {}
        thread = threading.Thread(
            target=lambda: got.update(v=scheduler.run("y", {"x": np.zeros(2)}, executor="inline")))
        thread.start()
        thread.join()
        assert got["v"].tolist() == [0.0, 0.0]
        assert "e" not in default and default["y"] is y
    finally:
        df.reset_default_graph()


def test_names_resolve_in_the_loop_thread_too():
    with df.Graph() as g:
        x = df.placeholder("x", (2,))
        df.sum(x, name="s")

    async def main():
        with scheduler.Engine("asyncio") as engine:
            return await engine.run_async("s", {g["x"]: np.ones(2)})

    assert asyncio.run(main()) == 2.0


def test_op_docstring_examples_run():
    import doctest

    from dataflow.ops import core, elementwise, linalg, nn, reductions, shape_ops

    attempted = 0
    for module in (core, elementwise, linalg, nn, reductions, shape_ops):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted > 0
