"""What the planner needs to know about one task, whatever graph it comes from.

A graph source (a dict in dask's conventions, or the nodes of a ``dataflow.Graph``)
describes each of its keys as a :class:`TaskSpec`. The planner and engine see nothing
else, which is why the execution layer can run any DAG of Python callables.

Objects used as fetches in :meth:`scheduler.Engine.run` take part by having a
``__task__()`` method that returns their ``TaskSpec`` (the dataflow ``Node`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple


class _NoValue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Any = _NoValue()

#: The engine reuses an input's buffer only from this size on: below it, a fresh result
#: costs less than checking whether the buffer is free (numpy elides temporaries from
#: the same size on). Sources need not mark smaller outputs ``reusable`` at all.
REUSE_MIN_BYTES = 256 * 1024


class TaskSpec(NamedTuple):
    """One task: ``kernel(*values_of(deps))``, a literal ``value``, or a value to be fed.

    - ``kernel`` is called with the values of ``deps`` as positional arguments.
    - ``kernel is None`` and ``value is not NO_VALUE``: a literal, available at once.
    - ``kernel is None`` and ``value is NO_VALUE``: the task must be fed at run time.
    - ``check_feed(value)`` validates and converts a fed value (raising ``ValueError``
      or ``TypeError`` with a message); ``None`` accepts anything.
    - ``cost_key`` groups tasks whose durations are alike (same op, same shapes), so
      the cost model can guess a task's duration before it has run once.
    - ``reusable`` lists the indices of args whose buffer the kernel may write its
      result into, called as ``kernel(*args, out=that_arg)`` (a numpy ufunc): the
      arg has the result's shape and dtype. The engine does so only when that value
      dies at this task and nothing else holds it (TensorFlow forwards input buffers
      to outputs alike); the result is the same, bit for bit, minus an allocation.

    Attributes
    ----------
    kernel : callable or None
        The function to call, or ``None`` for a literal or a fed value.
    deps : tuple
        Keys (or literal arguments) whose values are the kernel's arguments.
    name, op : str
        The task's name and op, for messages and profiles.
    value : object
        A literal's value; ``NO_VALUE`` for computed and fed tasks.
    cost_key : hashable
        Groups tasks of alike durations for the cost model.
    check_feed : callable or None
        Validates and converts a fed value.
    reusable : tuple of int
        Args whose buffer the kernel may write its result into.
    cost_hint : float or None
        The source's static guess of the task's duration in seconds (from shapes:
        flops and bytes, as TensorFlow's cost model guesses), or ``None`` when it
        cannot tell. It decides where the task runs until it has been measured: a task
        of unknown cost is presumed expensive (see ``placement``).
    """

    kernel: Callable[..., Any] | None
    deps: tuple
    name: str
    op: str
    value: Any = NO_VALUE
    cost_key: Hashable = None
    check_feed: Callable[[Any], Any] | None = None
    reusable: tuple[int, ...] = ()
    cost_hint: float | None = None
