"""dataflow.graph: graph contexts, graph membership, node identity and immutability,
operator overloading, the seed's subroutines, naming, and export (networkx, DOT)."""

from __future__ import annotations

import operator
import re
import threading

import numpy as np
import pytest

import dataflow as df
import scheduler


def run(fetches, feeds=None):
    return scheduler.run(fetches, feeds, executor="inline")


# -- graph contexts ------------------------------------------------------------------

def test_with_block_makes_graph_the_default_and_exit_restores():
    outer = df.get_default_graph()
    with df.Graph() as g:
        assert df.get_default_graph() is g
        x = df.placeholder("x")
        c = df.constant(1.0)
    assert df.get_default_graph() is outer
    assert x.graph is g and c.graph is g
    assert x in g and c in g
    assert x not in outer


def test_nested_blocks_use_the_innermost_graph_and_unwind():
    with df.Graph() as g1:
        a = df.constant(1.0)
        with df.Graph() as g2:
            b = df.constant(2.0)
            with df.Graph() as g3:
                c = df.placeholder("c")
                assert df.get_default_graph() is g3
            assert df.get_default_graph() is g2
            d = df.constant(3.0)
        assert df.get_default_graph() is g1
        e = df.placeholder("e")
    assert (a.graph, b.graph, c.graph, d.graph, e.graph) == (g1, g2, g3, g2, g1)
    assert [n.name for n in g1] == [a.name, "e"]
    assert len(g2) == 2 and len(g3) == 1


def test_exit_restores_after_an_exception():
    outer = df.get_default_graph()
    with pytest.raises(RuntimeError, match="boom"):
        with df.Graph():
            raise RuntimeError("boom")
    assert df.get_default_graph() is outer


def test_reentering_the_same_graph():
    g = df.Graph()
    with g:
        a = df.constant(1.0)
    with g:
        b = df.constant(2.0)
        with g:
            c = df.constant(3.0)
    assert a.graph is b.graph is c.graph is g
    assert len(g) == 3


def test_exiting_out_of_order_is_an_error():
    g1, g2 = df.Graph(), df.Graph()
    g1.__enter__()
    g2.__enter__()
    try:
        with pytest.raises(df.GraphError):
            g1.__exit__(None, None, None)
    finally:
        g2.__exit__(None, None, None)
        g1.__exit__(None, None, None)


def test_graph_context_is_thread_local():
    main_default = df.get_default_graph()
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def worker():
        seen["before"] = df.get_default_graph()
        with df.Graph() as mine:
            seen["mine"] = mine
            seen["leaf"] = df.constant(1.0)
            inside.set()
            release.wait(10)
            seen["still_mine"] = df.get_default_graph()
        seen["after"] = df.get_default_graph()

    with df.Graph() as g:
        t = threading.Thread(target=worker)
        t.start()
        assert inside.wait(10)
        # The worker's with-block is active right now; it must not leak into this thread.
        assert df.get_default_graph() is g
        x = df.placeholder("x")
        release.set()
        t.join(10)
    assert not t.is_alive()
    assert x.graph is g
    # And this thread's block did not leak into the worker.
    assert seen["before"] is main_default
    assert seen["leaf"].graph is seen["mine"]
    assert seen["still_mine"] is seen["mine"]
    assert seen["after"] is main_default
    assert df.get_default_graph() is main_default


def test_threads_each_build_their_own_graph_concurrently():
    results = {}
    barrier = threading.Barrier(4)

    def worker(i):
        with df.Graph() as g:
            barrier.wait(10)
            x = df.placeholder("x")
            y = x * float(i) + 1.0
            barrier.wait(10)
            results[i] = (g, x, y, df.get_default_graph() is g)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    graphs = {id(results[i][0]) for i in range(4)}
    assert len(graphs) == 4
    for i in range(4):
        g, x, y, ok = results[i]
        assert ok and x.graph is g and y.graph is g
        assert [n.name for n in g] == ["x", "constant", "multiply", "constant_1", "add"]
        assert run(y, {x: 2.0}) == 2.0 * i + 1.0


def test_default_graph_outside_any_block():
    g = df.reset_default_graph()
    assert df.get_default_graph() is g
    c = df.constant(1.0)
    assert c.graph is g
    g2 = df.reset_default_graph()
    assert g2 is not g and df.get_default_graph() is g2 and len(g2) == 0


# -- graph membership ----------------------------------------------------------------

def test_ops_join_their_inputs_graph_even_outside_the_block():
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
    y = x + 1
    z = df.sum(df.tanh(y) * 2.0)
    assert y.graph is g and z.graph is g
    # the lifted constants follow too
    assert all(n.graph is g for n in y.inputs)
    with df.Graph() as other:
        w = x * 3.0
        leaf = df.constant(0.0)
    assert w.graph is g and all(n.graph is g for n in w.inputs)
    assert leaf.graph is other and len(other) == 1
    np.testing.assert_allclose(run(z, {x: np.zeros(3)}), 2.0 * 3 * np.tanh(1.0))


def test_mixing_two_graphs_raises_graph_error():
    with df.Graph() as g1:
        a = df.placeholder("a", (2,))
    with df.Graph() as g2:
        b = df.placeholder("b", (2,))
    for fn in (operator.add, operator.sub, operator.mul, operator.truediv, operator.pow,
               operator.matmul, df.maximum):
        with pytest.raises(df.GraphError):
            fn(a, b)
    assert len(g1) == 1 and len(g2) == 1  # a refused op adds nothing to either graph
    with pytest.raises(df.GraphError):
        a @ df.constant(np.ones((2, 2)), graph=g2)
    with pytest.raises(df.GraphError):
        df.where(a > 0, a, b)
    with pytest.raises(df.GraphError):
        df.get_inputs(a, g2)
    with pytest.raises(df.GraphError):
        df.get_consumers(a, g2)
    with pytest.raises(df.GraphError):
        df.gradients(df.sum(a), [b])


def test_mixing_graphs_in_list_ops_raises_graph_error():
    with df.Graph():
        a = df.placeholder("a", (2,))
    with df.Graph():
        b = df.placeholder("b", (2,))
    with pytest.raises(df.GraphError):
        df.stack([a, b])
    with pytest.raises(df.GraphError):
        df.concatenate([a, b])


# -- node identity and immutability --------------------------------------------------

def test_nodes_are_immutable():
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = x + 1.0
    for attr, value in [("name", "z"), ("shape", (3,)), ("dtype", np.float32),
                        ("inputs", ()), ("op", None), ("graph", None), ("new_attr", 1)]:
        with pytest.raises(AttributeError):
            setattr(y, attr, value)
    with pytest.raises(AttributeError):
        del y.name
    assert y.name == "add" and y.shape == (2,) and y.inputs[0] is x
    with pytest.raises(AttributeError):
        y.op.extra = 1


def test_eq_and_hash_are_identity_based():
    with df.Graph():
        x = df.placeholder("x", (2,))
        a = x + 1.0
        b = x + 1.0
    assert (a == a) is True
    assert (a == b) is False
    assert (a != b) is True
    assert (a != a) is False
    assert hash(a) == hash(a) and hash(a) == object.__hash__(a)
    d = {a: 1, b: 2, x: 3}
    assert d[a] == 1 and d[b] == 2 and d[x] == 3 and len(d) == 3
    assert {a, b, a} == {a, b}
    assert a in [b, a] and x not in [a, b]
    # nodes of the same name in two graphs are different keys
    with df.Graph():
        x2 = df.placeholder("x", (2,))
    assert x2 != x and len({x: 0, x2: 1}) == 2


def test_feed_dicts_keyed_by_nodes():
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = df.placeholder("y", (2,))
        z = x * y
    assert run(z, {x: np.array([1.0, 2.0]), y: np.array([3.0, 4.0])}).tolist() == [3.0, 8.0]


def test_iterating_a_node_raises_type_error():
    with df.Graph():
        x = df.placeholder("x", (3,))
    with pytest.raises(TypeError):
        iter(x)
    with pytest.raises(TypeError):
        list(x)
    with pytest.raises(TypeError):
        a, b, c = x


def test_bool_of_a_node_raises_type_error():
    with df.Graph():
        x = df.placeholder("x", (3,))
    with pytest.raises(TypeError):
        bool(x)
    with pytest.raises(TypeError):
        if x > 0:
            pass
    with pytest.raises(TypeError):
        0 < x < 1  # noqa: B015 - the chained comparison calls bool()
    with pytest.raises(TypeError):
        not x  # noqa: B015,B018


def test_nodes_are_not_picklable():
    import pickle

    with df.Graph():
        x = df.placeholder("x")
    with pytest.raises(TypeError):
        pickle.dumps(x)


def test_repr():
    with df.Graph(name="reprgraph") as g:
        x = df.placeholder("inp", (None, 3), dtype=np.float32)
    r = repr(x)
    assert "inp" in r and "placeholder" in r and "float32" in r and "3" in r
    assert "reprgraph" in repr(g) and "1" in repr(g)


# -- operators -----------------------------------------------------------------------

BINARY = [
    (operator.add, "add"), (operator.sub, "subtract"), (operator.mul, "multiply"),
    (operator.truediv, "divide"), (operator.pow, "power"),
]


@pytest.mark.parametrize("fn,opname", BINARY, ids=[n for _, n in BINARY])
def test_binary_operators_node_node(fn, opname):
    xv, yv = np.array([1.5, 2.0, 3.0]), np.array([0.5, 4.0, 2.0])
    with df.Graph():
        x = df.placeholder("x", (3,))
        y = df.placeholder("y", (3,))
        z = fn(x, y)
    assert isinstance(z, df.Node)
    assert z.op.name == opname and z.inputs == (x, y)
    np.testing.assert_array_equal(run(z, {x: xv, y: yv}), fn(xv, yv))


@pytest.mark.parametrize("fn,opname", BINARY, ids=[n for _, n in BINARY])
@pytest.mark.parametrize("scalar", [2, 10.0, np.float64(2.5), np.float32(3.0), np.int64(2)],
                         ids=["int", "float", "np.float64", "np.float32", "np.int64"])
def test_binary_operators_with_scalars_on_either_side(fn, opname, scalar):
    xv = np.array([1.5, 2.0, 3.0])
    with df.Graph():
        x = df.placeholder("x", (3,))
        right = fn(x, scalar)
        left = fn(scalar, x)
    for z in (right, left):
        assert isinstance(z, df.Node), type(z)
        assert z.op.name == opname
    assert left.inputs[1] is x and right.inputs[0] is x
    expect_r, expect_l = fn(xv, scalar), fn(scalar, xv)
    got_r, got_l = run([right, left], {x: xv})
    np.testing.assert_array_equal(got_r, expect_r)
    np.testing.assert_array_equal(got_l, expect_l)
    # static dtypes agree with numpy's promotion
    assert right.dtype == expect_r.dtype and left.dtype == expect_l.dtype


def test_examples_from_the_brief():
    with df.Graph():
        x = df.placeholder("x", (3,))
        f = df.placeholder("f", (3,))
        nodes = [2 * x, 10.0 / f, 1 - x, 2 ** x, np.float64(2) * x]
    assert all(isinstance(n, df.Node) for n in nodes)
    xv, fv = np.array([0.0, 1.0, 2.0]), np.array([1.0, 4.0, 5.0])
    got = run(nodes, {x: xv, f: fv})
    want = [2 * xv, 10.0 / fv, 1 - xv, 2 ** xv, np.float64(2) * xv]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_python_scalar_keeps_float32():
    with df.Graph():
        x = df.placeholder("x", (2,), dtype=np.float32)
    assert (2 * x).dtype == np.float32
    assert (x / 3.0).dtype == np.float32
    assert (1 - x).dtype == np.float32


def test_numpy_array_on_the_left_gives_a_node():
    with df.Graph():
        x = df.placeholder("x", (3,))
    a = np.array([1.0, 2.0, 3.0])
    for z in (a * x, a + x, a - x, a / x):
        assert isinstance(z, df.Node)
    np.testing.assert_array_equal(run(a - x, {x: np.ones(3)}), a - 1)


def test_matmul_operator():
    with df.Graph():
        a = df.placeholder("a", (2, 3))
        b = df.placeholder("b", (3, 4))
        c = a @ b
        d = np.ones((4, 2)) @ a
        e = a @ np.ones(3)
    assert c.op.name == "matmul" and c.shape == (2, 4)
    assert isinstance(d, df.Node) and d.shape == (4, 3)
    assert e.shape == (2,)
    av, bv = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    gc, gd, ge = run([c, d, e], {a: av, b: bv})
    np.testing.assert_allclose(gc, av @ bv)
    np.testing.assert_allclose(gd, np.ones((4, 2)) @ av)
    np.testing.assert_allclose(ge, av @ np.ones(3))
    with pytest.raises(df.ShapeError):
        b @ a


def test_unary_operators():
    with df.Graph():
        x = df.placeholder("x", (3,))
        n = -x
        p = +x
        a = abs(x)
    assert n.op.name == "negative" and n.inputs == (x,)
    assert p is x
    xv = np.array([-1.0, 0.0, 2.0])
    gn, ga = run([n, a], {x: xv})
    np.testing.assert_array_equal(gn, -xv)
    np.testing.assert_array_equal(ga, np.abs(xv))


def test_indexing_and_slicing():
    xv = np.arange(24.0).reshape(2, 3, 4)
    with df.Graph():
        x = df.placeholder("x", (2, 3, 4))
        idx = [x[1], x[0, 2], x[:, 1:3], x[..., ::2], x[1, :, -1], x[None, 0], x[0, 1, 2]]
    expect = [xv[1], xv[0, 2], xv[:, 1:3], xv[..., ::2], xv[1, :, -1], xv[None, 0], xv[0, 1, 2]]
    for node, want in zip(idx, expect, strict=True):
        assert node.shape == want.shape
    for got, want in zip(run(idx, {x: xv}), expect, strict=True):
        np.testing.assert_array_equal(got, want)


def test_comparison_operators_build_nodes():
    with df.Graph():
        x = df.placeholder("x", (3,))
        nodes = [x < 1, x <= 1, x > 1, x >= 1]
    assert all(isinstance(n, df.Node) and n.dtype == np.bool_ for n in nodes)
    xv = np.array([0.0, 1.0, 2.0])
    got = run(nodes, {x: xv})
    for g, w in zip(got, [xv < 1, xv <= 1, xv > 1, xv >= 1], strict=True):
        np.testing.assert_array_equal(g, w)


# -- the seed's subroutines ----------------------------------------------------------

def test_get_operation_get_inputs_get_consumers():
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
        w = df.placeholder("w", (3,))
        sq = x * x
        s = df.sin(x)
        prod = s * w
        tot = sq + prod
    assert df.get_operation(sq) is sq.op and df.get_operation(sq).name == "multiply"
    assert df.get_operation(x).name == "placeholder"
    assert df.get_inputs(sq, g) == (x, x)
    assert df.get_inputs(prod) == (s, w)
    assert df.get_inputs(x, g) == ()
    # consumers in creation order, each once even though x * x uses x twice
    assert df.get_consumers(x, g) == (sq, s)
    assert df.get_consumers(x) == (sq, s)
    assert df.get_consumers(w, g) == (prod,)
    assert df.get_consumers(s, g) == (prod,)
    assert df.get_consumers(tot, g) == ()
    for fn in (df.get_operation, df.get_inputs, df.get_consumers):
        with pytest.raises(df.GraphError):
            fn(1.0)
    # an empty graph is falsy (len 0) but still the graph asked about
    empty = df.Graph()
    with pytest.raises(df.GraphError):
        df.get_consumers(x, empty)
    with pytest.raises(df.GraphError):
        df.get_inputs(x, empty)


def test_consumers_grow_as_nodes_are_added():
    with df.Graph() as g:
        x = df.placeholder("x")
        a = x + x + x
    assert df.get_consumers(x, g) == (a.inputs[0], a)
    b = df.exp(x)
    assert df.get_consumers(x, g) == (a.inputs[0], a, b)


# -- naming --------------------------------------------------------------------------

def test_auto_names_are_unique():
    with df.Graph() as g:
        x = df.placeholder("x", (2,))
        ys = [x + 1.0 for _ in range(5)]
    names = [n.name for n in g]
    assert len(set(names)) == len(names)
    assert [y.name for y in ys] == ["add", "add_1", "add_2", "add_3", "add_4"]
    assert g.node_by_name("add_3") is ys[3]


def test_auto_names_skip_explicit_names():
    with df.Graph() as g:
        x = df.placeholder("x", (2,))
        explicit = df.constant(1.0, name="add_1")
        a = x + 1.0
        b = x + 1.0
        c = x + 1.0
    assert explicit.name == "add_1"
    assert [a.name, b.name, c.name] == ["add", "add_2", "add_3"]
    names = [n.name for n in g]
    assert len(set(names)) == len(names)


def test_duplicate_explicit_name_raises():
    with df.Graph() as g:
        df.placeholder("x")
        with pytest.raises(df.GraphError, match="x"):
            df.placeholder("x")
        df.constant(1.0, name="c")
        with pytest.raises(df.GraphError):
            df.constant(2.0, name="c")
        auto = df.constant(3.0)
        with pytest.raises(df.GraphError):
            df.constant(4.0, name=auto.name)
    assert len(g) == 3
    with pytest.raises(df.GraphError):
        g.node_by_name("nope")
    # the same name in another graph is fine
    with df.Graph():
        df.placeholder("x")


# -- export --------------------------------------------------------------------------

def _small_graph():
    with df.Graph(name="small") as g:
        x = df.placeholder("x", (None, 3))
        w = df.constant(np.ones((3, 2)), name="w")
        h = x @ w
        y = df.sum(df.tanh(h) * h)
    return g, x, w, h, y


def test_to_networkx():
    nx = pytest.importorskip("networkx")
    g, x, w, h, y = _small_graph()
    G = g.to_networkx()
    assert isinstance(G, nx.MultiDiGraph)
    assert list(G.nodes) == [n.name for n in g]
    for n in g:
        attrs = G.nodes[n.name]
        assert attrs["op"] == n.op.name
        assert attrs["shape"] == n.shape
        assert attrs["dtype"] == str(n.dtype)
    edges = sorted((u, v, d["index"]) for u, v, d in G.edges(data=True))
    expect = sorted((p.name, n.name, i) for n in g for i, p in enumerate(n.inputs))
    assert edges == expect
    assert G.number_of_edges() == sum(len(n.inputs) for n in g)
    # tanh(h) * h: h feeds the multiply once and the tanh once
    assert G.number_of_edges(h.name, y.inputs[0].name) == 1
    assert nx.is_directed_acyclic_graph(G)
    assert [n for n in nx.topological_sort(G)][0] in ("x", "w")
    assert G.nodes["x"]["shape"] == (None, 3)


def test_to_networkx_keeps_parallel_edges():
    with df.Graph() as g:
        x = df.placeholder("x")
        sq = x * x
    G = g.to_networkx()
    assert G.number_of_edges("x", sq.name) == 2
    assert sorted(d["index"] for _, _, d in G.edges(data=True)) == [0, 1]


def test_to_dot():
    g, *_ = _small_graph()
    dot = g.to_dot()
    assert isinstance(dot, str)
    lines = dot.strip().splitlines()
    assert re.match(r'^digraph\s+"?[\w.-]+"?\s*\{$', lines[0])
    assert lines[-1] == "}"
    assert dot.count("{") == dot.count("}")
    # every node appears once as a declaration, with its name and op in the label
    decls = [ln for ln in lines if "[label=" in ln]
    assert len(decls) == len(g)
    for n in g:
        assert any(n.name in d and n.op.name in d for d in decls), n
    edges = [ln for ln in lines if "->" in ln]
    assert len(edges) == sum(len(n.inputs) for n in g)
    for ln in decls + edges:
        assert ln.rstrip().endswith(";")
    # quotes are balanced on every line
    for ln in lines:
        assert (ln.count('"') - ln.count('\\"')) % 2 == 0, ln


def test_to_dot_escapes_names():
    with df.Graph(name='we"ird') as g:
        df.placeholder('a"b')
        df.placeholder("back\\slash")
        df.placeholder("two\nlines")
    dot = g.to_dot()
    lines = dot.splitlines()
    assert len(lines) == 2 + 3 + 1  # header, default node style, three nodes, "}"
    for ln in lines:
        unescaped = re.sub(r"\\.", "", ln)
        assert unescaped.count('"') % 2 == 0, ln
    assert '\\"' in dot and "back\\\\slash" in dot
