"""scheduler.taskgraph: dask-style task graphs turned into TaskSpecs.

Kernels are called directly with hand-computed dep values; where dask is installed,
whole graphs are also evaluated through the specs and compared with ``dask.get``.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections import namedtuple
from collections.abc import Mapping
from functools import partial
from operator import add, mul

import pytest

from scheduler.placement import stable_cost_key
from scheduler.spec import NO_VALUE, TaskSpec
from scheduler.taskgraph import TaskGraphSource, flatten_keys, pack_results


def inc(x):
    return x + 1


def collect(*args, **kwargs):
    return (args, kwargs)


class Scale:  # a callable object without __name__
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x


Pair = namedtuple("Pair", ["left", "right"])


def spec_of(tasks, key):
    s = TaskGraphSource(tasks).spec(key)
    assert isinstance(s, TaskSpec)
    return s


def evaluate(tasks, keys):
    """Run a graph through its specs, iteratively, like a one-thread engine would."""
    source = TaskGraphSource(tasks)
    specs = {}
    values = {}
    for root in flatten_keys(keys):
        stack = [root]
        while stack:
            key = stack[-1]
            if key in values:
                stack.pop()
                continue
            s = specs.get(key)
            if s is None:
                s = specs[key] = source.spec(key)
            elif any(d not in values for d in s.deps):
                raise AssertionError(f"cycle through {key!r}")
            missing = [d for d in s.deps if d not in values]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            if s.kernel is None:
                values[key] = s.value
            else:
                values[key] = s.kernel(*[values[d] for d in s.deps])
    return pack_results(keys, values)


# --------------------------------------------------------------------------- legacy tuples


def test_fast_path_kernel_is_the_function_itself():
    tasks = {"a": 1, "b": 2, "c": (add, "a", "b"), "d": (inc, "c")}
    s = spec_of(tasks, "c")
    assert s.kernel is add
    assert s.deps == ("a", "b")
    assert (s.name, s.op, s.cost_key) == ("c", "add", stable_cost_key(add))
    assert s.value is NO_VALUE
    s = spec_of(tasks, "d")
    assert s.kernel is inc and s.deps == ("c",) and s.op == "inc"
    assert s.cost_key == stable_cost_key(inc)


def test_task_without_args_is_fast_path():
    s = spec_of({"t": (list,)}, "t")
    assert s.kernel is list and s.deps == () and s.op == "list"


def test_literals():
    tasks = {"a": 5, "s": "not-a-key", "l": [1, 2, "x"], "n": None, "d": {"k": 1}, "e": [],
             "t": (1, "x"), "f": frozenset({1})}
    for key, value in tasks.items():
        s = spec_of(tasks, key)
        assert s.kernel is None and s.deps == () and s.op == "literal"
        assert s.value is value


def test_alias():
    tasks = {"a": 7, "b": "a", ("x", 0): "b"}
    s = spec_of(tasks, "b")
    assert s.deps == ("a",) and s.op == "alias"
    assert s.kernel(7) == 7
    s = spec_of(tasks, ("x", 0))
    assert s.deps == ("b",) and s.kernel("v") == "v"


def test_nested_tasks():
    tasks = {"a": 1, "b": 10, "c": (add, (inc, "a"), (mul, "b", (inc, 2)))}
    s = spec_of(tasks, "c")
    assert s.deps == ("a", "b")
    assert s.op == "add" and s.cost_key is add
    assert s.kernel is not add
    assert s.kernel(1, 10) == (1 + 1) + 10 * 3
    assert s.kernel(5, 0) == 6  # no state kept between calls


def test_nested_task_without_deps_is_evaluated_each_call():
    calls = []

    def tick():
        calls.append(1)
        return len(calls)

    s = spec_of({"t": (inc, (tick,))}, "t")
    assert s.deps == ()
    assert s.kernel() == 2 and s.kernel() == 3


def test_list_of_keys_argument():
    tasks = {"a": 1, "b": 2, "c": 3, "s": (sum, ["a", "b", "c"])}
    s = spec_of(tasks, "s")
    assert s.deps == ("a", "b", "c") and s.op == "sum"
    assert s.kernel(1, 2, 3) == 6
    got = []
    s = spec_of({"a": 1, "b": 2, "f": (got.append, ["b", ["a", "b", 9], (inc, "a")])}, "f")
    assert s.deps == ("b", "a")
    s.kernel(20, 10)
    assert got == [[20, [10, 20, 9], 11]]
    assert type(got[0][1]) is list


def test_list_value():
    tasks = {"a": 1, "b": 2, "l": ["a", "b"], "m": ["b", (inc, "a"), 3, ["a"]]}
    s = spec_of(tasks, "l")
    assert s.deps == ("a", "b") and s.op == "list"
    assert s.kernel(1, 2) == [1, 2]
    s = spec_of(tasks, "m")
    assert s.deps == ("b", "a") and s.op == "list"
    assert s.kernel(2, 1) == [2, 2, 3, [1]]
    s = spec_of({"a": 1, "l": ["a", "a"]}, "l")  # repeated keys in a list value
    assert s.deps == ("a",) and s.kernel(4) == [4, 4]


def test_repeated_keys_in_args():
    tasks = {"a": 3, "b": 4, "r": (collect, "a", "b", "a", ["b", "a"])}
    s = spec_of(tasks, "r")
    assert s.deps == ("a", "b")
    assert s.kernel is not collect
    assert s.kernel(3, 4) == ((3, 4, 3, [4, 3]), {})
    s = spec_of({"a": 3, "b": 4, "f": (collect, "b", 0, "a", "b")}, "f")  # flat, no nesting
    assert s.deps == ("b", "a")
    assert s.kernel(4, 3) == ((4, 0, 3, 4), {})
    assert s.kernel(5, 6) == ((5, 0, 6, 5), {})
    s = spec_of({"a": 3, "sq": (mul, "a", "a")}, "sq")
    assert s.deps == ("a",) and s.kernel(3) == 9 and s.cost_key is mul


def test_string_arg_that_is_not_a_key_stays_a_string():
    tasks = {"a": 1, "t": (collect, "a", "zzz", 2.5, None)}
    s = spec_of(tasks, "t")
    assert s.deps == ("a",)
    assert s.kernel(1) == ((1, "zzz", 2.5, None), {})


def test_dict_arguments_follow_dask_and_stay_literal():
    # dask.get passes a dict arg as is (values are not looked up) -- checked against
    # dask itself in test_matches_dask_get.
    d = {"x": "a", "y": 1}
    s = spec_of({"a": 1, "t": (collect, "a", d)}, "t")
    assert s.deps == ("a",)
    args, _ = s.kernel(1)
    assert args == (1, {"x": "a", "y": 1})
    assert args[1] is d


def test_tuple_and_set_args_are_searched_for_keys():
    tasks = {"a": 1, "b": 2, "t": (collect, ("a", 5, ("b",))), "u": (collect, {"a", "b", 9})}
    s = spec_of(tasks, "t")
    assert s.deps == ("a", "b")
    assert s.kernel(1, 2) == (((1, 5, (2,)),), {})
    s = spec_of(tasks, "u")
    assert sorted(s.deps) == ["a", "b"]
    va, vb = {"a": 10, "b": 20}[s.deps[0]], {"a": 10, "b": 20}[s.deps[1]]
    assert s.kernel(va, vb) == (({10, 20, 9},), {})


def test_set_deps_order_does_not_depend_on_string_hashing():
    code = (
        "from scheduler.taskgraph import TaskGraphSource as S;"
        "t = {k: 0 for k in 'abcdefgh'}; t['s'] = (len, set('abcdefgh'));"
        "print(S(t).spec('s').deps)"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(outs) == 1


def test_namedtuple_argument_is_rebuilt_with_its_type():
    s = spec_of({"a": 1, "t": (collect, Pair("a", 2))}, "t")
    (arg,), _ = s.kernel(7)
    assert type(arg) is Pair and arg == Pair(7, 2)


def test_tuple_keys():
    tasks = {("x", 0, 1): 1, ("x", 1, 1): 2, ("y", 0): (add, ("x", 0, 1), ("x", 1, 1))}
    s = spec_of(tasks, ("y", 0))
    assert s.name == "('y', 0)"
    assert s.deps == (("x", 0, 1), ("x", 1, 1))
    assert s.kernel is add
    assert spec_of(tasks, ("x", 0, 1)).name == "('x', 0, 1)"
    # a tuple arg that is not a key is rebuilt with its key items substituted
    s = spec_of({"x": 1, "t": (collect, ("x", 9))}, "t")
    assert s.deps == ("x",) and s.kernel(1) == (((1, 9),), {})


def test_integer_keys():
    tasks = {0: 10, 1: (inc, 0), 2: (add, 0, 1), 3: [0, 1], 4: 0}
    s = spec_of(tasks, 1)
    assert s.kernel is inc and s.deps == (0,) and s.name == "1"
    s = spec_of(tasks, 2)
    assert s.kernel is add and s.deps == (0, 1)
    assert spec_of(tasks, 3).kernel(10, 11) == [10, 11]
    s = spec_of(tasks, 4)
    assert s.op == "alias" and s.deps == (0,)


def test_unhashable_args_are_literals():
    arr = [[1, 2]]
    s = spec_of({"a": 1, "t": (collect, "a", arr, {"k": [1]})}, "t")
    assert s.deps == ("a",)
    assert s.kernel(1) == ((1, [[1, 2]], {"k": [1]}), {})


def test_op_names():
    tasks = {
        "a": 1,
        "p": (partial(partial(add, 1)), "a"),
        "o": (Scale(3), "a"),
        "l": (lambda x: x, "a"),
        "n": (partial(add, 1), "a", 2),
    }
    src = TaskGraphSource(tasks)
    assert src.spec("p").op == "add"
    assert src.spec("p").kernel is tasks["p"][0]
    # Cost keys hold no partial (nor what it binds): the wrapped function's code.
    assert src.spec("p").cost_key == stable_cost_key(add)
    assert not isinstance(src.spec("p").cost_key, partial)
    assert src.spec("o").op == "Scale" and src.spec("o").cost_key is Scale
    assert src.spec("l").op == "<lambda>"
    assert src.spec("n").op == "add" and src.spec("n").cost_key == stable_cost_key(add)


def test_unhashable_callable_gets_a_usable_cost_key():
    class Unhashable(Scale):
        __hash__ = None

    s = spec_of({"a": 1, "t": (Unhashable(2), "a")}, "t")
    hash(s.cost_key)
    assert s.kernel(4) == 8


def test_missing_key_raises_keyerror_and_contains():
    src = TaskGraphSource({"a": 1, ("t", 1): 2})
    with pytest.raises(KeyError):
        src.spec("b")
    assert "a" in src and ("t", 1) in src
    assert "b" not in src and [1] not in src  # unhashable: simply not a key


def test_spec_reads_only_the_entry_it_is_asked_for():
    class NoWalking(Mapping):
        def __init__(self, d):
            self.d = d

        def __getitem__(self, k):
            return self.d[k]

        def __contains__(self, k):
            return k in self.d

        def __iter__(self):
            raise AssertionError("the graph was walked")

        def __len__(self):
            raise AssertionError("the graph was walked")

    tasks = NoWalking({"a": 1, "b": (inc, "a"), "c": (collect, "b", (inc, "a"), ["a"])})
    src = TaskGraphSource(tasks)
    assert src.spec("b").kernel is inc
    s = src.spec("c")
    assert s.deps == ("b", "a")
    assert s.kernel(2, 1) == ((2, 2, [1]), {})


def test_kernels_pickle_when_their_functions_do():
    tasks = {"a": 1, "b": 2, "c": (add, (inc, "a"), "b"), "d": (collect, "a", "zz"),
             "e": ["a", (inc, "b")], "f": "a", "g": ["a", "b"]}
    src = TaskGraphSource(tasks)
    for key, args in {"c": (1, 2), "d": (1,), "e": (1, 2), "f": (1,), "g": (1, 2)}.items():
        kernel = src.spec(key).kernel
        clone = pickle.loads(pickle.dumps(kernel))
        assert clone(*args) == kernel(*args)


def test_deep_chain_specs_and_evaluation_do_not_recurse():
    n = 20_000
    tasks = {("c", 0): 0}  # not {0: 0}: a literal equal to a key is an alias of it
    for i in range(1, n):
        tasks[("c", i)] = (inc, ("c", i - 1))
    assert evaluate(tasks, ("c", n - 1)) == n - 1


def test_self_alias_is_a_cycle_for_the_planner_to_report():
    # dask.get fails on these too; the planner sees a task that depends on itself.
    assert spec_of({"a": "a"}, "a").deps == ("a",)
    assert spec_of({0: 0}, 0).deps == (0,)


def test_works_without_dask():
    code = (
        "import sys; sys.modules['dask'] = None\n"
        "from operator import add\n"
        "from scheduler.taskgraph import TaskGraphSource\n"
        "s = TaskGraphSource({'a': 1, 'b': (add, 'a', (add, 'a', 2))}).spec('b')\n"
        "assert s.deps == ('a',) and s.kernel(1) == 4\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --------------------------------------------------------------------------- keys


def test_flatten_keys():
    assert flatten_keys("a") == ["a"]
    assert flatten_keys(("x", 1)) == [("x", 1)]
    assert flatten_keys([]) == []
    assert flatten_keys(["a", ["b", ("x", 1), ["a", "c"]], [], "b"]) == ["a", "b", ("x", 1), "c"]


def test_pack_results():
    values = {"a": 1, "b": 2, ("x", 1): 3}
    assert pack_results("a", values) == 1
    assert pack_results(("x", 1), values) == 3
    packed = pack_results(["a", ["b", [("x", 1)], []], "a"], values)
    assert packed == (1, (2, (3,), ()), 1)  # dask returns tuples for lists of keys
    assert type(packed[1]) is tuple and type(packed[1][1]) is tuple


def test_keys_nesting_deeper_than_the_recursion_limit():
    depth = sys.getrecursionlimit() * 3
    keys = "a"
    for _ in range(depth):
        keys = [keys]
    assert flatten_keys(keys) == ["a"]
    packed = pack_results(keys, {"a": 1})
    for _ in range(depth):
        assert type(packed) is tuple and len(packed) == 1
        packed = packed[0]
    assert packed == 1


# --------------------------------------------------------------------------- dask


LEGACY_GRAPHS = {
    "chain": ({"a": 1, "b": (inc, "a"), "c": (add, "b", "a")}, "c"),
    "nested": ({"a": 1, "b": 10, "c": (add, (inc, "a"), (mul, "b", (inc, 2)))}, "c"),
    "list arg": ({"a": 1, "b": (collect, ["a", ["a", 2], (inc, "a")])}, "b"),
    "dict arg": ({"a": 1, "b": (collect, {"x": "a", "y": (inc, "a")})}, "b"),
    "tuple arg": ({"a": 1, "b": (collect, ("a", 2))}, "b"),
    "set arg": ({"a": 1, "b": (collect, {"a", 5})}, "b"),
    "tuple value": ({"a": 1, "b": ("a", 2)}, "b"),
    "list value": ({"a": 1, "b": ["a", (inc, "a"), 3]}, "b"),
    "dict value": ({"a": 1, "b": {"k": "a"}}, "b"),
    "alias": ({"a": 1, "b": "a", "c": "b"}, "c"),
    "string literal": ({"a": 1, "b": (collect, "zzz", "a")}, "b"),
    "repeats": ({"a": 2, "b": (collect, "a", "a", ["a"])}, "b"),
    "tuple keys": ({("x", 0): 1, ("x", 1): 2, "s": (sum, [("x", 0), ("x", 1)])}, "s"),
    "int keys": ({0: 3, 1: (inc, 0), 2: [0, 1]}, [2, [1]]),
    "namedtuple arg": ({"a": 1, "b": (collect, Pair("a", (inc, "a")))}, "b"),
    "empty containers": ({"a": 1, "b": (collect, (), [], "a")}, "b"),
    "several outputs": ({"a": 1, "b": (inc, "a"), "c": (inc, "b")}, [["c"], "a", ["b", "c"]]),
}


@pytest.mark.parametrize("case", sorted(LEGACY_GRAPHS))
def test_matches_dask_get(case):
    dask = pytest.importorskip("dask")
    tasks, keys = LEGACY_GRAPHS[case]
    assert evaluate(tasks, keys) == dask_get(dask, tasks, keys)


def dask_get(dask, tasks, keys):
    # dask.get returns nested tuples for nested key lists; scheduler.get keeps lists.
    return pack_results(keys, {k: dask.get(tasks, k) for k in flatten_keys(keys)})


@pytest.mark.parametrize("case", sorted(LEGACY_GRAPHS))
def test_converted_task_spec_graph_matches_dask_get(case):
    dask = pytest.importorskip("dask")
    ts = pytest.importorskip("dask._task_spec")
    tasks, keys = LEGACY_GRAPHS[case]
    converted = ts.convert_legacy_graph(tasks)
    assert all(isinstance(v, ts.GraphNode) for v in converted.values())
    assert evaluate(converted, keys) == dask_get(dask, tasks, keys)


def test_new_style_task_fast_path():
    ts = pytest.importorskip("dask._task_spec")
    tasks = {
        "a": ts.DataNode("a", 1),
        "b": ts.DataNode("b", 2),
        "c": ts.Task("c", add, ts.TaskRef("a"), ts.TaskRef("b")),
        "d": ts.Task("d", inc, ts.Alias("c")),
    }
    src = TaskGraphSource(tasks)
    s = src.spec("a")
    assert s.kernel is None and s.value == 1 and s.op == "literal"
    s = src.spec("c")
    assert s.kernel is add and s.deps == ("a", "b") and s.op == "add" and s.cost_key is add
    s = src.spec("d")
    assert s.kernel is inc and s.deps == ("c",)
    s = TaskGraphSource({"a": 3, "sq": ts.Task("sq", mul, ts.TaskRef("a"), ts.TaskRef("a"))})
    s = s.spec("sq")
    assert s.deps == ("a",) and s.kernel is not mul and s.kernel(3) == 9


def test_new_style_task_with_literals_nesting_and_kwargs():
    ts = pytest.importorskip("dask._task_spec")
    t = ts.Task(
        "t", collect,
        ts.TaskRef("b"), "zzz", ts.Task(None, inc, ts.TaskRef("a")),
        ts.List(ts.TaskRef("a"), 5, ts.TaskRef("b")),
        ts.Dict({"k": ts.TaskRef("a")}),
        scale=ts.TaskRef("b"), lit=[1],
    )
    tasks = {"a": ts.DataNode("a", 1), "b": ts.DataNode("b", 10), "t": t}
    s = TaskGraphSource(tasks).spec("t")
    assert s.deps == ("b", "a")
    assert s.op == "collect"
    expected = t({"a": 1, "b": 10})
    assert s.kernel(10, 1) == expected
    assert expected == ((10, "zzz", 2, [1, 5, 10], {"k": 1}), {"scale": 10, "lit": [1]})


def test_new_style_containers_and_alias_values():
    ts = pytest.importorskip("dask._task_spec")
    tasks = {
        "a": ts.DataNode("a", 1),
        "l": ts.List(ts.TaskRef("a"), ts.Task(None, inc, ts.TaskRef("a"))),
        "d": ts.Dict(k=ts.TaskRef("l")),
        "al": ts.Alias("al", "d"),
    }
    src = TaskGraphSource(tasks)
    s = src.spec("l")
    assert s.op == "list" and s.deps == ("a",) and s.kernel(1) == [1, 2]
    s = src.spec("d")
    assert s.op == "dict" and s.deps == ("l",) and s.kernel([1, 2]) == {"k": [1, 2]}
    s = src.spec("al")
    assert s.op == "alias" and s.deps == ("d",) and s.kernel("v") == "v"


def test_task_objects_inside_legacy_tuples():
    ts = pytest.importorskip("dask._task_spec")
    tasks = {"a": 1, "b": 2, "c": (collect, ts.TaskRef("b"), ts.Task(None, inc, ts.TaskRef("a")))}
    s = TaskGraphSource(tasks).spec("c")
    assert s.deps == ("b", "a")
    assert s.kernel(2, 1) == ((2, 2), {})


def test_dict_argument_with_task_refs_in_a_legacy_tuple():
    dask = pytest.importorskip("dask")
    ts = pytest.importorskip("dask._task_spec")
    tasks = {"a": 1, "b": (collect, {"k": ts.TaskRef("a"), "j": "a", "t": (inc, 1)})}
    s = TaskGraphSource(tasks).spec("b")
    assert s.deps == ("a",)
    (arg,), _ = s.kernel(1)
    assert type(arg) is dict
    assert arg == {"k": 1, "j": "a", "t": (inc, 1)}
    assert s.kernel(1) == dask.get(tasks, "b")


def test_dask_collection_graphs():
    pytest.importorskip("numpy")
    da = pytest.importorskip("dask.array")
    delayed = pytest.importorskip("dask").delayed

    x = da.arange(20, chunks=3)
    y = ((x + 1) * 2).sum()
    graph = dict(y.__dask_graph__())
    assert evaluate(graph, y.__dask_keys__()) == y.compute(scheduler="sync")

    z = (x[::2] + x[1::2].T).reshape((2, 5)).rechunk((1, 5))
    expected = z.compute(scheduler="sync")
    blocks = evaluate(dict(z.__dask_graph__()), z.__dask_keys__())
    assert len(blocks) == 2 and (blocks[0][0] == expected[:1]).all()

    @delayed
    def combine(parts, scale=1, meta=None):
        return (sum(parts) * scale, meta)

    out = combine([delayed(inc)(i) for i in range(4)], scale=delayed(inc)(1), meta={"m": 1})
    assert evaluate(dict(out.__dask_graph__()), out.key) == out.compute(scheduler="sync")
