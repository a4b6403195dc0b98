"""Plain task graphs in dask's conventions, turned into the ``TaskSpec``s the planner runs.

This module owns the translation of a mapping ``{key: task}`` (what ``scheduler.get``
receives) into one :class:`~scheduler.spec.TaskSpec` per key, and the packing of a
possibly nested list of requested keys into results of the same shape. It knows
nothing about running: the planner asks :meth:`TaskGraphSource.spec` for each key it
reaches, so a spec is built from one entry alone and the graph is never walked here.

Conventions understood (the same as ``dask.get`` in dask 2024.12 and later):

- ``(f, *args)`` with ``f`` callable is a task. An arg that is a key of the graph is
  replaced by that key's value; an arg that is itself a task is evaluated; lists,
  tuples and sets are rebuilt with their items treated the same way; a dict is passed
  as is (dask does not look inside dicts, except to evaluate dask ``GraphNode``
  values); anything else, strings that are not keys included, is a literal.
- A value that is a key of the graph is an alias of it.
- A list, tuple or set value that holds keys or tasks is rebuilt like an arg; any
  other value is a literal.
- ``dask._task_spec`` objects (``Task``, ``DataNode``, ``Alias``, ``List``, ``Dict``,
  ``TaskRef`` ...) are understood when dask has been imported; dask itself is never
  imported here, since such objects cannot exist before it is.

Kernels are called as ``kernel(*values_of(deps))``. ``(f, k1, k2)`` with distinct keys
gets ``f`` itself as its kernel, so the engine adds no wrapper call on the common path.
Every other task gets one small callable object, built once per spec, that rebuilds the
argument structure from the positional values. Kernels are module-level classes rather
than closures so that they pickle (for process pools) whenever the task's own
functions do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Mapping
from functools import partial
from operator import itemgetter
from typing import Any

from scheduler.errors import UnknownKeyError
from scheduler.placement import stable_cost_key
from scheduler.spec import NO_VALUE, TaskSpec

__all__ = ["TaskGraphSource", "as_task_mapping", "cost_key_of", "flatten_keys", "func_name",
           "pack_results", "plain_args"]

# How a piece of an argument structure is obtained from the tuple of dep values.
_CONST = 0  # payload: the value itself
_DEP = 1  # payload: index into the dep values
_BUILD = 2  # payload: a maker, called as maker(vals)

_Entry = tuple  # (kind, payload)


# --------------------------------------------------------------------------- kernels
#
# A *maker* is called with the tuple of dep values and returns one piece of an argument
# structure; a *kernel* is called with the dep values as positional arguments.


def _alias(value: Any) -> Any:
    """Kernel of an alias: the value of its only dep."""
    return value


def _as_list(*values: Any) -> list:
    """Kernel of a list of distinct keys."""
    return list(values)


# The engine's own pass-throughs: they run no user code, so even an executor that
# isolates user code from the caller may run them on the driving thread.
_alias.pass_through = True  # type: ignore[attr-defined]
_as_list.pass_through = True  # type: ignore[attr-defined]


class _Const:
    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __call__(self, vals: tuple) -> Any:
        return self.value

    def __reduce__(self):
        return _Const, (self.value,)


class _CallMaker:
    """A nested task: ``func(*pieces, **kwpieces)``."""

    __slots__ = ("func", "makers", "kwmakers")

    def __init__(self, func: Callable, makers: tuple, kwmakers: tuple = ()):
        self.func = func
        self.makers = makers
        self.kwmakers = kwmakers

    def __call__(self, vals: tuple) -> Any:
        args = [m(vals) for m in self.makers]
        if self.kwmakers:
            return self.func(*args, **{k: m(vals) for k, m in self.kwmakers})
        return self.func(*args)

    def __reduce__(self):
        return _CallMaker, (self.func, self.makers, self.kwmakers)


class _ContainerMaker:
    """A list, tuple or set rebuilt from its pieces; ``star`` for namedtuples."""

    __slots__ = ("typ", "makers", "star")

    def __init__(self, typ: type, makers: tuple, star: bool = False):
        self.typ = typ
        self.makers = makers
        self.star = star

    def __call__(self, vals: tuple) -> Any:
        items = [m(vals) for m in self.makers]
        if self.typ is list:
            return items
        if self.star:
            return self.typ(*items)
        return self.typ(items)

    def __reduce__(self):
        return _ContainerMaker, (self.typ, self.makers, self.star)


class _DictMaker:
    """A dict whose values are partly dask graph nodes (rebuilt as a plain dict)."""

    __slots__ = ("keys", "makers")

    def __init__(self, keys: tuple, makers: tuple):
        self.keys = keys
        self.makers = makers

    def __call__(self, vals: tuple) -> Any:
        return dict(zip(self.keys, [m(vals) for m in self.makers], strict=True))

    def __reduce__(self):
        return _DictMaker, (self.keys, self.makers)


class _NodeMaker:
    """A dask ``GraphNode`` this module cannot see into: called with ``{key: value}``."""

    __slots__ = ("node", "pairs")

    def __init__(self, node: Any, pairs: tuple):
        self.node = node
        self.pairs = pairs  # ((dep key, index into vals), ...)

    def __call__(self, vals: tuple) -> Any:
        return self.node({k: vals[i] for k, i in self.pairs})

    def __reduce__(self):
        return _NodeMaker, (self.node, self.pairs)


class _FlatKernel:
    """``func(*args)`` where every arg is a dep value or a literal (no nesting)."""

    __slots__ = ("func", "template", "fills")

    def __init__(self, func: Callable, template: list, fills: tuple):
        self.func = func
        self.template = template  # literals in place, None where a dep value goes
        self.fills = fills  # ((position in template, index into vals), ...)

    def __call__(self, *vals: Any) -> Any:
        args = self.template.copy()
        for pos, i in self.fills:
            args[pos] = vals[i]
        return self.func(*args)

    def __reduce__(self):
        return _FlatKernel, (self.func, self.template, self.fills)

    def __repr__(self) -> str:
        return f"<kernel {func_name(self.func)}>"


class _Kernel:
    """Any other task: a maker applied to the tuple of dep values."""

    __slots__ = ("maker",)

    def __init__(self, maker: Callable[[tuple], Any]):
        self.maker = maker

    def __call__(self, *vals: Any) -> Any:
        return self.maker(vals)

    def __reduce__(self):
        return _Kernel, (self.maker,)

    def __repr__(self) -> str:
        func = getattr(self.maker, "func", None)
        what = func_name(func) if func is not None else type(self.maker).__name__
        return f"<kernel {what}>"


# --------------------------------------------------------------------------- helpers


def func_name(func: Any) -> str:
    while isinstance(func, partial):
        func = func.func
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__


def cost_key_of(func: Any) -> Hashable:
    """The key all tasks of one function share their timings under (see
    ``placement.stable_cost_key``: it keeps no closure or partial alive)."""
    return stable_cost_key(func)


_new_tuple = tuple.__new__
_func_descriptions: dict = {}


def _describe_func(func: Any) -> tuple[str, Hashable]:
    """``(func_name(func), cost_key_of(func))``, remembered per function: a graph of
    20,000 ``inc`` tasks asks 20,000 times. Only functions that live as long as their
    module are remembered; a closure or lambda could hold large data alive."""
    try:
        found = _func_descriptions.get(func)
    except TypeError:  # an unhashable callable
        return func_name(func), cost_key_of(func)
    if found is None:
        found = (func_name(func), cost_key_of(func))
        qualname = getattr(func, "__qualname__", "<")
        if "<" not in qualname and getattr(func, "__closure__", None) is None:
            _func_descriptions[func] = found
    return found


def _is_task(x: Any) -> bool:
    return type(x) is tuple and bool(x) and callable(x[0])


def _stable_order(key: Any) -> tuple:
    # Sets and frozensets have no reproducible order (string hashing is salted), so
    # their items are put in an order that does not depend on the process.
    return (type(key).__qualname__, repr(key))


class _DaskTypes:
    """The classes of ``dask._task_spec``, once dask has been imported by someone."""

    __slots__ = ("mod", "graph_types", "GraphNode", "TaskRef", "Task", "Alias", "DataNode")

    def __init__(self, mod: Any):
        self.mod = mod
        self.GraphNode = mod.GraphNode
        self.TaskRef = mod.TaskRef
        self.Task = mod.Task
        self.Alias = mod.Alias
        self.DataNode = mod.DataNode
        self.graph_types = (mod.GraphNode, mod.TaskRef)


_dask_types: _DaskTypes | None = None


def _dask() -> _DaskTypes | None:
    global _dask_types
    if _dask_types is None:
        mod = sys.modules.get("dask._task_spec")
        if mod is None:
            return None
        try:
            _dask_types = _DaskTypes(mod)
        except AttributeError:  # an older dask, or the module is still being imported
            return None
    return _dask_types


def _node_dependencies(node: Any, dt: _DaskTypes) -> list:
    """The deps of a dask ``GraphNode`` in first-occurrence order, walked iteratively."""
    found: dict = {}
    stack = [iter((node,))]
    while stack:
        for item in stack[-1]:
            if isinstance(item, dt.TaskRef):
                found.setdefault(item.key, None)
            elif isinstance(item, dt.Alias):
                found.setdefault(item.target, None)
            elif isinstance(item, dt.Task):
                stack.append(iter((*item.args, *item.kwargs.values())))
                break
            elif isinstance(item, dt.GraphNode):
                for k in sorted(item.dependencies, key=_stable_order):
                    found.setdefault(k, None)
        else:
            stack.pop()
    declared = node.dependencies
    order = [k for k in found if k in declared]
    missing = [k for k in declared if k not in found]
    if missing:
        order.extend(sorted(missing, key=_stable_order))
    return order


# --------------------------------------------------------------------------- compiling


class _Compiler:
    """Turns one task's argument structure into makers; collects its deps in order."""

    __slots__ = ("tasks", "dt", "deps")

    def __init__(self, tasks: Mapping, dt: _DaskTypes | None):
        self.tasks = tasks
        self.dt = dt
        self.deps: dict = {}  # dep key -> position in the kernel's arguments

    def dep(self, key: Any) -> _Entry:
        i = self.deps.get(key)
        if i is None:
            i = self.deps[key] = len(self.deps)
        return (_DEP, i)

    def is_key(self, x: Any) -> bool:
        try:
            return x in self.tasks
        except TypeError:  # unhashable: never a key
            return False

    # Legacy (tuple) conventions ----------------------------------------------------

    def arg(self, a: Any) -> _Entry:
        dt = self.dt
        if dt is not None and isinstance(a, dt.graph_types):
            return self.node(a)
        if _is_task(a):
            return self.call(a[0], a[1:])
        if self.is_key(a):
            return self.dep(a)
        if isinstance(a, (list, tuple)):
            return self.container(a, a)
        if isinstance(a, (set, frozenset)):
            return self.container(a, sorted(a, key=_stable_order))
        if isinstance(a, dict) and dt is not None:
            entries = [self.node(v) if isinstance(v, dt.graph_types) else (_CONST, v)
                       for v in a.values()]
            if any(kind != _CONST for kind, _ in entries):
                makers = tuple(_maker(e) for e in entries)
                return (_BUILD, _DictMaker(tuple(a), makers))
        return (_CONST, a)

    def container(self, original: Any, items: Any) -> _Entry:
        entries = [self.arg(x) for x in items]
        if all(kind == _CONST for kind, _ in entries):
            return (_CONST, original)
        typ = type(original)
        star = issubclass(typ, tuple) and hasattr(typ, "_fields")  # a namedtuple
        return (_BUILD, _ContainerMaker(typ, tuple(_maker(e) for e in entries), star))

    def call(self, func: Callable, args: tuple, kwargs: Mapping | None = None,
             literal_args: bool = False) -> _Entry:
        piece = self.node_piece if literal_args else self.arg
        makers = tuple(_maker(piece(a)) for a in args)
        kwmakers = tuple((k, _maker(piece(v))) for k, v in kwargs.items()) if kwargs else ()
        return (_BUILD, _CallMaker(func, makers, kwmakers))

    # dask GraphNode objects ------------------------------------------------------------

    def node_piece(self, a: Any) -> _Entry:
        """An arg of a dask ``Task``: graph nodes are evaluated, all else is literal."""
        if isinstance(a, self.dt.graph_types):  # type: ignore[union-attr]
            return self.node(a)
        return (_CONST, a)

    def node(self, a: Any) -> _Entry:
        dt = self.dt
        assert dt is not None  # dask GraphNode objects only come with dask installed
        if isinstance(a, dt.TaskRef):
            return self.dep(a.key)
        if type(a) is dt.Alias:
            return self.dep(a.target)
        if type(a) is dt.DataNode:
            return (_CONST, a.value)
        if isinstance(a, dt.Task) and type(a).__call__ is dt.Task.__call__:
            return self.call(a.func, a.args, a.kwargs, literal_args=True)
        pairs = tuple((k, self.dep(k)[1]) for k in _node_dependencies(a, dt))
        return (_BUILD, _NodeMaker(a, pairs))


def _maker(entry: _Entry) -> Callable[[tuple], Any]:
    kind, payload = entry
    if kind == _DEP:
        return itemgetter(payload)
    if kind == _CONST:
        return _Const(payload)
    return payload


def _call_kernel(func: Callable, entries: list, kwentries: tuple = ()) -> Callable:
    """The kernel of ``func(*entries, **kwentries)``: flat when nothing needs building."""
    if not kwentries and all(kind != _BUILD for kind, _ in entries):
        template = [payload if kind == _CONST else None for kind, payload in entries]
        fills = tuple((pos, payload) for pos, (kind, payload) in enumerate(entries)
                      if kind == _DEP)
        return _FlatKernel(func, template, fills)
    makers = tuple(_maker(e) for e in entries)
    kwmakers = tuple((k, _maker(e)) for k, e in kwentries)
    return _Kernel(_CallMaker(func, makers, kwmakers))


# --------------------------------------------------------------------------- the source


class TaskGraphSource:
    """The ``TaskSpec`` of each key of a dask-style task graph, built on demand.

    ``tasks`` is kept as given (never copied or walked); :meth:`spec` reads one entry
    and checks its args for membership, so it costs the size of that one task.
    """

    __slots__ = ("tasks", "_dask_types", "graph_types")

    def __init__(self, tasks: Mapping):
        self.tasks = tasks
        # dask's task classes, if dask is loaded: a graph can only hold its objects then.
        self._dask_types = _dask()
        #: the classes of dask graph nodes (``None`` while dask is not loaded)
        self.graph_types = self._dask_types.graph_types if self._dask_types else None

    def __contains__(self, key: object) -> bool:
        try:
            return key in self.tasks
        except TypeError:
            return False

    def __repr__(self) -> str:
        return f"<TaskGraphSource of {len(self.tasks)} tasks>"

    def spec(self, key: Hashable) -> TaskSpec:
        """The spec of ``key``; ``UnknownKeyError`` (a ``KeyError``) if the graph has no
        such key."""
        tasks = self.tasks
        try:
            value = tasks[key]
        except KeyError:
            raise UnknownKeyError(key) from None
        dt = self._dask_types
        name = key if type(key) is str else str(key)

        if type(value) is not tuple and dt is not None and isinstance(value, dt.graph_types):
            return self._node_spec(value, name, dt)

        if type(value) is tuple and value and callable(value[0]):
            func = value[0]
            args = plain_args(value, tasks, self.graph_types)
            # Fast path: (f, k1, k2, ...) with distinct keys needs no wrapper at all.
            if args is not None and (len(args) < 2 or len(set(args)) == len(args)):
                op, cost_key = _describe_func(func)
                # tuple.__new__ skips the named tuple's Python-level constructor: this
                # line runs once per task of every graph that scheduler.get compiles.
                return _new_tuple(TaskSpec, (func, args, name, op, NO_VALUE, cost_key, None, (),
                                             None))
            args = value[1:]
            comp = _Compiler(tasks, dt)
            kernel = _call_kernel(func, [comp.arg(a) for a in args])
            return TaskSpec(kernel, tuple(comp.deps), name, func_name(func),
                            cost_key=cost_key_of(func))

        comp = _Compiler(tasks, dt)
        if comp.is_key(value):
            return TaskSpec(_alias, (value,), name, "alias", cost_key=_alias)

        if isinstance(value, (list, tuple, set, frozenset)):
            typ = type(value)
            if typ is list and value and _all_distinct_keys(value, tasks, dt):  # type: ignore[arg-type]
                return TaskSpec(_as_list, tuple(value), name, "list", cost_key=_as_list)
            if isinstance(value, (list, tuple)):
                items = value
            else:
                items = sorted(value, key=_stable_order)
            kind, payload = comp.container(value, items)
            if kind == _BUILD:
                op = typ.__name__ if typ in (list, tuple, set, frozenset) else "container"
                return TaskSpec(_Kernel(payload), tuple(comp.deps), name, op, cost_key=typ)

        return TaskSpec(None, (), name, "literal", value=value)

    def _node_spec(self, node: Any, name: str, dt: _DaskTypes) -> TaskSpec:
        if isinstance(node, dt.DataNode):
            return TaskSpec(None, (), name, "literal", value=node.value)
        if isinstance(node, dt.TaskRef):  # a Future as a value: an alias of its key
            return TaskSpec(_alias, (node.key,), name, "alias", cost_key=_alias)
        if isinstance(node, dt.Alias):
            return TaskSpec(_alias, (node.target,), name, "alias", cost_key=_alias)
        comp = _Compiler(self.tasks, dt)
        if isinstance(node, dt.Task) and type(node).__call__ is dt.Task.__call__:
            func = node.func
            klass = getattr(type(node), "klass", None)
            op = klass.__name__ if isinstance(klass, type) else func_name(func)
            cost_key = klass if isinstance(klass, type) else cost_key_of(func)
            entries = [comp.node_piece(a) for a in node.args]
            kwargs = node.kwargs
            if (not kwargs and type(node) is dt.Task
                    and all(kind == _DEP for kind, _ in entries)
                    and len(comp.deps) == len(entries)):
                return TaskSpec(func, tuple(comp.deps), name, op, cost_key=cost_key)
            kwentries = tuple((k, comp.node_piece(v)) for k, v in kwargs.items())
            kernel = _call_kernel(func, entries, kwentries)
            return TaskSpec(kernel, tuple(comp.deps), name, op, cost_key=cost_key)
        # Some other GraphNode: let it evaluate itself from {dep: value}.
        maker = _maker(comp.node(node))
        return TaskSpec(_Kernel(maker), tuple(comp.deps), name, type(node).__name__.lower(),
                        cost_key=type(node))  # type: ignore[arg-type]


def plain_args(task: Any, tasks: Mapping, graph_types: tuple | None) -> tuple | None:
    """The args of ``task`` when it is ``(f, *keys)`` with every arg a key of ``tasks``
    (repeats allowed), else ``None``. Such a task is ``f(*values)``: it needs no kernel
    of its own, which is what keeps the common task cheap to compile."""
    if type(task) is not tuple or not task or not callable(task[0]):
        return None
    args = task[1:]
    try:
        for a in args:
            if (type(a) is tuple and a and callable(a[0])) or a not in tasks or (
                    graph_types is not None and isinstance(a, graph_types)):
                return None
    except TypeError:  # an unhashable arg: a literal
        return None
    return args


def _all_distinct_keys(items: list, tasks: Mapping, dt: _DaskTypes | None) -> bool:
    seen: dict = {}
    for x in items:
        if (dt is not None and isinstance(x, dt.graph_types)) or _is_task(x):
            return False
        try:
            if x not in tasks or x in seen:
                return False
        except TypeError:
            return False
        seen[x] = None
    return True


# --------------------------------------------------------------------------- keys


def as_task_mapping(tasks: Any) -> Mapping:
    """``tasks`` as a mapping: a dask expression (what ``dask.compute`` hands a scheduler)
    becomes its graph; a mapping is returned as it is."""
    if not isinstance(tasks, Mapping) and hasattr(tasks, "__dask_graph__"):
        return tasks.__dask_graph__()
    return tasks


def flatten_keys(keys: Any) -> list:
    """The distinct leaf keys of ``keys`` (one key or nested lists of keys), in order.

    Only lists nest: a tuple is a key (dask's ``('x', 0, 1)``).
    """
    if not isinstance(keys, list):
        return [keys]
    found: dict = {}
    stack = [iter(keys)]
    while stack:
        for k in stack[-1]:
            if isinstance(k, list):
                stack.append(iter(k))
                break
            found.setdefault(k, None)
        else:
            stack.pop()
    return list(found)


def pack_results(keys: Any, values: Mapping) -> Any:
    """``values`` arranged like ``keys``: one value for one key, and a tuple for each
    list of keys, nested alike (dask's ``get`` convention)."""
    if not isinstance(keys, list):
        return values[keys]
    # Build nested lists first (iteratively), then turn them into tuples bottom-up.
    root: list = []
    built: list[list] = [root]
    stack = [(iter(keys), root)]
    while stack:
        it, out = stack[-1]
        for k in it:
            if isinstance(k, list):
                inner: list = []
                out.append(inner)
                built.append(inner)
                stack.append((iter(k), inner))
                break
            out.append(values[k])
        else:
            stack.pop()
    frozen: dict[int, tuple] = {}
    for lst in reversed(built):  # children were appended after their parents
        frozen[id(lst)] = tuple(frozen.get(id(v), v) if isinstance(v, list) else v for v in lst)
    return frozen[id(root)]

