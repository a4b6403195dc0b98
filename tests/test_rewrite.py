"""dataflow.simplify: each rewrite keeps values and gradients (on random inputs) and
removes nodes; results are deterministic; 100,000-node chains under the default
recursion limit; and the engine's use of it (on by default, switchable off)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import dataflow as df
import scheduler
from dataflow.graph import ancestors
from dataflow.rewrite import plan_rewrite


def run(fetches, feeds=None, simplify=False):
    with scheduler.Engine("inline", simplify=simplify) as engine:
        return engine.run(fetches, feeds)


def bits(a):
    a = np.asarray(a)
    return a.dtype.str, a.shape, a.tobytes()


def same_bits(a, b):
    return bits(a) == bits(b)


def size_before(fetches):
    return len(ancestors([f for f in fetches if f is not None]))


def check(fetch, feeds, *, expect_fewer=True, exact_gradients=True, **options):
    """Simplify ``fetch``; its value and its gradient with respect to every float
    placeholder fed (``sum(fetch)`` differentiated in each graph) must be bitwise
    equal; the new graph must be smaller. Returns (new fetch, mapping).

    Differentiating a graph after CSE sums the gradients of merged nodes before it
    multiplies them by the shared local derivative (``(g1 + g2) * t'`` rather than
    ``g1 * t' + g2 * t'``), which rounds differently: there, gradients agree to 1e-12.
    (The engine simplifies after the gradients are built, so its results stay bitwise.)"""
    new, mapping = df.simplify(fetch, return_mapping=True, **options)
    new_feeds = {mapping[k]: v for k, v in feeds.items() if k in mapping}
    assert same_bits(run(fetch, feeds), run(new, new_feeds))
    if expect_fewer:
        assert len(new.graph) < size_before([fetch])
    xs = [k for k in feeds if k.dtype.kind == "f"]
    if fetch.dtype.kind == "f" and xs:
        old_grads = df.gradients(df.sum(fetch), xs)
        with new.graph:
            new_xs = [mapping.get(x) for x in xs]
            connected = [x for x in new_xs if x is not None]
            new_grads = df.gradients(df.sum(new), connected) if connected else []
        by_x = dict(zip([x for x in new_xs if x is not None], new_grads))
        want = run(old_grads, feeds)
        got = run([by_x.get(x) for x in new_xs if x is not None], new_feeds)
        present = [w for w, x in zip(want, new_xs) if x is not None]
        for w, g in zip(present, got):
            if exact_gradients:
                assert same_bits(w, g)
            else:
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=0)
    return new, mapping


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# -- algebraic identities ----------------------------------------------------------------

@pytest.mark.parametrize("form", ["x*1", "1*x", "x+0", "0+x", "x-0", "x/1"])
def test_neutral_elements_vanish(form, rng):
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        one = df.constant(np.ones((), np.float64))
        zero = df.constant(np.zeros((), np.float64))
        y = {"x*1": lambda: x * one, "1*x": lambda: one * x, "x+0": lambda: x + zero,
             "0+x": lambda: zero + x, "x-0": lambda: x - zero, "x/1": lambda: x / one}[form]()
        out = df.tanh(y)
    new, mapping = check(out, {x: rng.normal(size=(3, 4))})
    assert new.inputs == (mapping[x],)


def test_neutral_element_that_broadcasts_keeps_shape(rng):
    with df.Graph():
        x = df.placeholder("x", (4,))
        y = x * df.constant(np.ones((3, 4)))
    new, mapping = check(y, {x: rng.normal(size=4)}, expect_fewer=False)
    assert new.op.name == "broadcast_to" and new.shape == (3, 4)
    assert new.inputs == (mapping[x],)


def test_neutral_element_that_promotes_keeps_dtype(rng):
    with df.Graph():
        i = df.placeholder("i", (5,), np.int32)
        y = i + df.constant(np.zeros(5, np.float64))
    new, mapping = check(y, {i: rng.integers(-9, 9, 5)})
    assert new.op.name == "cast" and new.dtype == np.float64 and new.inputs == (mapping[i],)


def test_neutral_element_of_unknown_shape_is_kept(rng):
    """``x + zeros_like(z)`` with an unknown shape could broadcast ``x``: kept."""
    with df.Graph():
        x = df.placeholder("x", (None,))
        z = df.placeholder("z", (None,))
        y = x + df.zeros_like(z)
    new = df.simplify(y)
    assert new.op.name == "add"
    with df.Graph():
        x = df.placeholder("x", (None, 3))
        y = x + df.zeros_like(x)      # zeros shaped like x itself: safe
    new, mapping = check(y, {x: rng.normal(size=(2, 3))})
    assert new is mapping[x]


def test_zero_product_becomes_zeros(rng):
    with df.Graph():
        x = df.placeholder("x", (3, 4))
        w = df.placeholder("w", (3, 4))
        y = w + x * df.constant(np.zeros(4))
    new, mapping = check(y, {x: rng.normal(size=(3, 4)), w: rng.normal(size=(3, 4))})
    assert new is mapping[w]           # w + 0 -> w, and x is no longer needed
    assert x not in mapping or mapping[x].graph.consumers(mapping[x]) == ()


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_zero_product_nan_semantics_are_explicit():
    with df.Graph():
        x = df.placeholder("x", (3,))
        y = x * 0.0
    feeds = {x: np.array([np.nan, np.inf, -1.0])}

    def ieee(v):
        return np.isnan(v[0]) and np.isnan(v[1]) and v[2] == 0 and np.signbit(v[2])

    assert ieee(run(y, feeds))
    fast = df.simplify(y)                                   # TF/Theano semantics
    assert fast.op.name == "constant"
    assert same_bits(run(fast), np.zeros(3))
    exact = df.simplify(y, assume_finite=False)             # IEEE semantics kept
    assert exact.op.name == "multiply"
    assert ieee(run(exact, {exact.inputs[0]: feeds[x]}))


def test_integer_zero_product_is_always_rewritten(rng):
    with df.Graph():
        i = df.placeholder("i", (4,), np.int64)
        y = i * df.constant(np.zeros(4, np.int64))
    new = df.simplify(y, assume_finite=False)
    assert new.op.name == "constant" and same_bits(run(new), np.zeros(4, np.int64))


def test_double_negation(rng):
    with df.Graph():
        x = df.placeholder("x", (5,))
        y = df.exp(df.negative(df.negative(x)))
    new, mapping = check(y, {x: rng.normal(size=5)})
    assert new.inputs == (mapping[x],)


def test_zero_terms_of_add_n_are_dropped(rng):
    with df.Graph():
        a = df.placeholder("a", (2, 3))
        b = df.placeholder("b", (2, 3))
        z = df.zeros_like(a)
        three = df.add_n([z, a, z, b])
        one = df.add_n([a, df.zeros_like(b)])
        none = df.add_n([z, df.constant(np.zeros((2, 3)))])
    feeds = {a: rng.normal(size=(2, 3)), b: rng.normal(size=(2, 3))}
    new, mapping = check(three, feeds)
    assert new.op.name == "add_n" and new.inputs == (mapping[a], mapping[b])
    new, mapping = check(one, feeds)
    assert new is mapping[a]
    assert df.simplify(none).op.name == "constant"


def test_add_n_of_mixed_dtypes_is_kept():
    """Dropping a wider zero would move the point where the running sum is promoted."""
    with df.Graph():
        a = df.placeholder("a", (3,), np.float32)
        b = df.placeholder("b", (3,), np.float32)
        total = df.add_n([a, df.constant(np.zeros(3)), b])
    assert df.simplify(total).op.name == "add_n"
    assert len(df.simplify(total).inputs) == 3


def test_transpose_of_transpose(rng):
    with df.Graph():
        x = df.placeholder("x", (2, 3, 4))
        back = df.tanh(df.transpose(df.transpose(x, (2, 0, 1)), (1, 2, 0)))
        composed = df.transpose(df.transpose(x, (1, 0, 2)), (2, 0, 1))
        matrix = df.placeholder("m", (3, 5))
        twice_t = matrix.T.T + 1.0
    feeds = {x: rng.normal(size=(2, 3, 4))}
    new, mapping = check(back, feeds)
    assert new.inputs == (mapping[x],)
    new, mapping = check(composed, feeds)
    assert new.op.name == "transpose" and new.inputs == (mapping[x],)
    assert new.op.axes == (2, 1, 0)
    new, mapping = check(twice_t, {matrix: rng.normal(size=(3, 5))})
    assert new.inputs[0] is mapping[matrix]


def test_reshape_chains(rng):
    with df.Graph():
        x = df.placeholder("x", (2, 6))
        one = df.reshape(df.reshape(df.expand_dims(x, 0), (3, 4)), (4, 3))
        back = df.sin(df.reshape(df.reshape(x, (12,)), (2, 6)))
        dynamic = df.placeholder("d", (None, 6))
        dyn = df.reshape(df.reshape(dynamic, (-1, 2, 3)), (-1, 3))
    feeds = {x: rng.normal(size=(2, 6))}
    new, mapping = check(one, feeds)
    assert new.op.name == "reshape" and new.inputs == (mapping[x],)
    new, mapping = check(back, feeds)
    assert new.inputs == (mapping[x],)
    new, mapping = check(dyn, {dynamic: rng.normal(size=(4, 6))})
    assert new.op.name == "reshape" and new.inputs == (mapping[dynamic],)


def test_broadcast_then_sum_back_is_identity(rng):
    with df.Graph():
        x = df.placeholder("x", (3,))
        b = df.broadcast_to(x, (1, 1, 3))          # adds size-1 axes only: no copies
        y = df.sum(b, axis=(0, 1)) * 2.0
        z = df.mean(b, axis=0, keepdims=True)
    new, mapping = check(y, {x: rng.normal(size=3)})
    assert new.op.name == "multiply" and new.inputs[0] is mapping[x]
    new, mapping = check(z, {x: rng.normal(size=3)})
    assert new.op.name == "reshape" and new.inputs == (mapping[x],)


def test_broadcast_with_copies_summed_back_is_kept(rng):
    """sum over k > 1 broadcast copies is k*x, which would round differently."""
    with df.Graph():
        x = df.placeholder("x", (3,))
        y = df.sum(df.broadcast_to(x, (5, 3)), axis=0)
    new = df.simplify(y)
    assert new.op.name == "sum"
    check(y, {x: rng.normal(size=3)}, expect_fewer=False)


def test_broadcast_of_broadcast(rng):
    with df.Graph():
        x = df.placeholder("x", (3,))
        y = df.broadcast_to(df.broadcast_to(x, (2, 3)), (4, 2, 3))
    new, mapping = check(y, {x: rng.normal(size=3)})
    assert new.op.name == "broadcast_to" and new.inputs == (mapping[x],)


# -- CSE, folding, dead nodes ----------------------------------------------------------------

def test_common_subexpressions_merge(rng):
    with df.Graph():
        x = df.placeholder("x", (4,))
        a = df.tanh(x * 2.0)
        b = df.tanh(x * 2.0)                      # same op, same inputs (after merging 2.0)
        c = df.sum(x, axis=0) + df.sum(x, axis=0)
        d = df.sum(x, axis=None) + df.sum(x, axis=(0,))   # different attrs: kept apart
        y = a * b + c + d
    check(y, {x: rng.normal(size=4)}, exact_gradients=False)
    ops = [n.op.name for n in df.simplify(y).graph]
    assert ops.count("tanh") == 1 and ops.count("constant") == 1
    assert ops.count("sum") == 3           # axis=0 twice: one; axis=None, axis=(0,): two


def test_constants_merge_by_value_dtype_and_shape():
    with df.Graph():
        parts = [df.constant(np.float64(2)), df.constant(np.float64(2)),
                 df.constant(np.float32(2)), df.constant(np.array([2.0])),
                 df.constant(np.float64(-0.0)), df.constant(np.float64(0.0))]
        x = df.placeholder("x", ())
        ys = [df.maximum(x, p) for p in parts]
    new = df.simplify(ys)
    constants = [n for n in new[0].graph if n.op.name == "constant"]
    assert len(constants) == 5            # the two float64 2.0 merge; -0.0 and 0.0 do not


def test_constant_folding(rng):
    with df.Graph():
        x = df.placeholder("x", (3,))
        c = df.sqrt(df.constant(np.arange(3.0)) * 2.0 + 1.0)
        y = x * c
    new, mapping = check(y, {x: rng.normal(size=3)})
    folded = new.inputs[1]
    assert folded.op.name == "constant"
    assert same_bits(folded.op.value, np.sqrt(np.arange(3.0) * 2.0 + 1.0))
    assert not folded.op.value.flags.writeable


def test_folding_respects_the_size_limit():
    with df.Graph():
        big = df.constant(np.arange(1000.0)) * 3.0
        huge = df.broadcast_to(df.constant(np.float64(1.0)), (100, 100))  # a view, 10^4
    assert df.simplify(big).op.name == "constant"
    assert df.simplify(big, fold_limit=100).op.name == "multiply"
    assert df.simplify(huge).op.name == "broadcast_to"


def test_folding_leaves_failures_and_warnings_to_run_time():
    with df.Graph():
        bad = df.log(df.constant(np.array([-1.0, 1.0])))                 # invalid: warns
        labels = df.one_hot(df.constant(np.array([5])), 3)              # raises in forward
    assert df.simplify(bad).op.name == "log"
    assert df.simplify(labels).op.name == "one_hot"
    with pytest.raises(ValueError, match="one_hot"):
        with scheduler.Engine("inline") as engine:
            engine.run(labels)


def test_dead_nodes_are_removed():
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
        unused = df.placeholder("unused", (3,))
        y = df.exp(x)
        for _ in range(10):
            df.tanh(y + unused)                   # not an ancestor of the fetch
        z = df.reshape(df.reshape(df.sin(y), (3, 1)), (3,))   # the inner reshape dies
    new, mapping = df.simplify(z, return_mapping=True)
    assert [n.op.name for n in new.graph] == ["placeholder", "exp", "sin"]
    assert len(g) > 20
    assert unused not in mapping and mapping[x].name == "x"


def test_stateful_ops_are_never_merged_or_folded():
    class Noise(df.Op):
        name = "test_rewrite.noise"
        stateful = True

        def infer(self, x):
            return x.shape, x.dtype

        def forward(self, x):
            return x + np.random.default_rng().normal(size=np.shape(x))

    with df.Graph():
        c = df.constant(np.zeros(3))
        a = df.apply(Noise(), c)
        b = df.apply(Noise(), c)
        y = a - b
    new = df.simplify(y)
    assert [n.op.name for n in new.graph].count("test_rewrite.noise") == 2


def test_structures_and_placeholder_names_are_kept():
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = df.placeholder("why", (2,))
        a, b = x * 1.0, df.exp(y)
    out, mapping = df.simplify({"a": a, "rest": [b, (a, None)]}, return_mapping=True)
    assert set(out) == {"a", "rest"} and isinstance(out["rest"], list)
    assert out["a"] is mapping[x] and out["rest"][1] == (mapping[x], None)
    assert mapping[x].name == "x" and mapping[y].name == "why"
    assert mapping[y].graph.node_by_name("why") is mapping[y]
    assert df.simplify([]) == [] and df.simplify({}) == {}


def test_nodes_of_two_graphs_are_refused():
    with df.Graph():
        a = df.placeholder("a", ())
    with df.Graph():
        b = df.placeholder("b", ())
    with pytest.raises(df.GraphError):
        df.simplify([a, b])


def test_fed_nodes_are_opaque(rng):
    with df.Graph():
        x = df.placeholder("x", (3,))
        h = df.exp(x) * 1.0
        y = df.tanh(h)
    new, mapping = df.simplify(y, feeds=[h], return_mapping=True)
    assert x not in mapping and mapping[h].op.name == "fed"
    value = rng.normal(size=3)
    assert same_bits(run(y, {h: value}), run(new, {mapping[h]: value}))


# -- determinism, idempotence, scale ------------------------------------------------------

def _mlp_fetches():
    model = df.models.build_mlp((6, 5, 4, 3))
    return model, [model.loss, *model.grads, *df.gradients(model.grads[0].sum(),
                                                            model.params[:2])]


def _describe(graph):
    return [(n.id, n.name, n.op.key(), tuple(p.id for p in n.inputs), n.shape, n.dtype.str)
            for n in graph]


def test_deterministic():
    model, fetches = _mlp_fetches()
    one = df.simplify(fetches)
    two = df.simplify(fetches)
    assert [n.id for n in one] == [n.id for n in two]
    assert _describe(one[0].graph) == _describe(two[0].graph)


def test_idempotent():
    model, fetches = _mlp_fetches()
    once = df.simplify(fetches)
    twice = df.simplify(once)
    assert len(twice[0].graph) == len(once[0].graph)


def test_mlp_values_and_gradients_unchanged(rng):
    model, fetches = _mlp_fetches()
    params = model.init_params(seed=3)
    feeds = model.feeds(params, rng.normal(size=(8, 6)), rng.integers(0, 3, 8))
    new, mapping = df.simplify(fetches, return_mapping=True)
    assert len(new[0].graph) < size_before(fetches)
    got = run(new, {mapping[k]: v for k, v in feeds.items()})
    for want, have in zip(run(fetches, feeds), got, strict=True):
        assert same_bits(want, have)


def test_hundred_thousand_node_chain_iteratively():
    limit = sys.getrecursionlimit()
    with df.Graph():
        x = df.placeholder("x", (2,))
        h = x
        steps = [lambda v: v * 1.0, lambda v: df.negative(df.negative(v)), df.sin,
                 lambda v: df.reshape(df.reshape(v, (1, 2)), (2,))]
        for i in range(100_000):
            h = steps[i % 4](h)
    new, mapping = df.simplify(h, return_mapping=True)
    assert sys.getrecursionlimit() == limit
    assert [n.op.name for n in new.graph].count("sin") == 25_000
    assert len(new.graph) == 25_001               # x and the sins: the rest was identities
    value = np.array([0.3, -0.2])
    assert same_bits(run(new, {mapping[x]: value}), run(h, {x: value}))


# -- the engine ------------------------------------------------------------------------------

class Keys(scheduler.Callback):
    def __init__(self):
        self.keys = []

    def posttask(self, run, record):
        self.keys.append(record.key)


def _mlp_run(rng):
    model, fetches = _mlp_fetches()
    feeds = model.feeds(model.init_params(seed=1), rng.normal(size=(8, 6)),
                        rng.integers(0, 3, 8))
    return model, fetches, feeds


@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_engine_results_bitwise_equal_with_simplify_on_and_off(executor, rng):
    model, fetches, feeds = _mlp_run(rng)
    with scheduler.Engine(executor, workers=2, simplify=False) as off, \
            scheduler.Engine(executor, workers=2) as on:
        assert on.simplify and not off.simplify
        for _ in range(3):  # the first runs, and the runs of the cached plans
            want, got = off.run(fetches, feeds), on.run(fetches, feeds)
            for a, b in zip(want, got, strict=True):
                assert same_bits(a, b)
        assert len(on.plan(fetches, feeds)) < len(off.plan(fetches, feeds))


def test_engine_plan_speaks_in_original_nodes(rng):
    model, fetches, feeds = _mlp_run(rng)
    seen = Keys()
    with scheduler.Engine("inline", callbacks=[seen]) as engine:
        engine.run(fetches, feeds)
        plan = engine.plan(fetches, feeds)
    originals = set(map(id, model.graph.nodes))
    assert all(id(f) in map(id, plan.keys) for f in fetches)
    assert sum(id(k) in originals for k in plan.keys) >= len(plan) - 2
    assert [id(k) for k in seen.keys] == [id(plan.keys[p]) for p, *_ in plan.steps]
    assert {p: k for p, k, _ in plan.feed_slots}.keys() <= set(range(len(plan)))
    assert {id(k) for _, k, _ in plan.feed_slots} == {id(k) for k in feeds}


def test_engine_off_compiles_the_original_graph(rng):
    model, fetches, feeds = _mlp_run(rng)
    with scheduler.Engine("inline", simplify=False) as engine:
        plan = engine.plan(fetches, feeds)
    assert all(k.graph is model.graph for k in plan.keys)
    assert len(plan) == size_before(fetches)


def test_engine_simplifies_once_per_cached_plan(monkeypatch, rng):
    import dataflow.rewrite as rewrite

    calls = []

    def counting(fetch_keys, fed_keys):
        calls.append(len(fetch_keys))
        return plan_rewrite(fetch_keys, fed_keys)

    monkeypatch.setattr(rewrite, "plan_rewrite", counting)
    model, fetches, feeds = _mlp_run(rng)
    with scheduler.Engine("inline") as engine:
        for _ in range(4):
            engine.run(fetches, feeds)
        assert len(calls) == 1
        engine.run(model.loss, feeds)           # another request: another plan
        assert len(calls) == 2


def test_engine_feeds_intermediate_nodes_and_fetches_fed_ones(rng):
    with df.Graph():
        x = df.placeholder("x", (3,))
        h = df.exp(x) * 1.0
        y = df.tanh(h) + 0.0
    value = rng.normal(size=3)
    with scheduler.Engine("inline") as on, scheduler.Engine("inline", simplify=False) as off:
        for fetches, feeds in [(y, {h: value}), ([h, y], {h: value}), ([y, h], {x: value}),
                               (h, {h: value, x: value})]:
            for a, b in zip(on.run(fetches, feeds) if isinstance(fetches, list)
                            else [on.run(fetches, feeds)],
                            off.run(fetches, feeds) if isinstance(fetches, list)
                            else [off.run(fetches, feeds)]):
                assert same_bits(a, b)


def test_engine_fetches_stay_fresh_arrays(rng):
    """Fetches are preserved: an identity or a fold never hands back the fed array or
    a read-only constant where the unsimplified run computes a new array."""
    with df.Graph():
        x = df.placeholder("x", (3,))
        same = x * 1.0
        folded = df.constant(np.arange(3.0)) * 2.0
        a, b = df.exp(x), df.exp(x)                 # equal: one task, one array
    value = rng.normal(size=3)
    with scheduler.Engine("inline") as engine:
        got_same, got_folded, got_a, got_b = engine.run([same, folded, a, b], {x: value})
    assert got_same is not value and got_same.flags.writeable
    assert got_folded.flags.writeable and same_bits(got_folded, np.arange(3.0) * 2.0)
    assert same_bits(got_a, got_b)


def test_engine_feed_errors_unchanged_when_a_rewrite_drops_an_input(rng):
    """``x * 0`` no longer needs ``x``, but a run must still ask for it and check it."""
    with df.Graph():
        x = df.placeholder("x", (3,))
        w = df.placeholder("w", (3,))
        y = w + x * 0.0
    with scheduler.Engine("inline") as engine:
        with pytest.raises(scheduler.FeedError, match="'x'"):
            engine.run(y, {w: np.ones(3)})
        with pytest.raises(scheduler.FeedError, match="'x'"):
            engine.run(y, {w: np.ones(3), x: np.ones(4)})
        assert same_bits(engine.run(y, {w: np.ones(3), x: np.full(3, 2.0)}), np.ones(3))
    new_keys, new_fed, origin = plan_rewrite([y], [w, x])
    assert [origin[k] for k in new_fed] == [w, x]


def test_plan_rewrite_leaves_foreign_keys_alone():
    assert plan_rewrite(["a", "b"], ["a"]) == (["a", "b"], ["a"], {})
    assert scheduler.get({"a": 1, "b": (lambda v: v + 1, "a")}, "b", executor="inline") == 2


def test_engine_runs_keep_nan_and_inf_propagation():
    """``simplify`` may assume finite values; the engine's own rewrite may not."""
    with df.Graph():
        x = df.placeholder("x", (3,))
        out = x * 0.0 + 1.0
    feeds = {x: np.array([np.inf, np.nan, -2.0])}
    with np.errstate(invalid="ignore"):
        expected = feeds[x] * 0.0 + 1.0
        got = scheduler.run(out, feeds, executor="inline")
    assert np.array_equal(got, expected, equal_nan=True)
    with scheduler.Engine("inline", check_numerics=True) as engine, np.errstate(invalid="ignore"):
        with pytest.raises(scheduler.NumericsError):
            engine.run(out, feeds)
