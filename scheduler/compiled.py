"""Compiled plans: a plan's sequential walk as one straight-line Python function.

The plain walk (``engine._walk``) pays, per task, for a loop iteration, a tuple unpack,
indexing a value table for each argument and storing the result back. A plan that is
run many times (a training step, a service call) can skip all of that: it is compiled
once into the source of a function, one line per task in the plan's order, whose
values are local variables (``v12 = k3(v3, v7)``), each dropped with ``del`` right
after its last consumer, exactly where the walk drops it, and whose kernels and
literals are globals of the generated module. This is what TensorFlow's
``make_callable`` and PyTensor's VM do for their graphs.

The function takes its inputs in one of two ways:

- ``fn(feeds)``: it reads each fed key from ``feeds`` and passes it through the key's
  ``check_feed`` in line (a failing check raises ``FeedError``, as ``Engine.execute``
  does), so a cached run needs no value table at all (``Engine.run``'s fast path);
- ``fn(None, table)``: it reads fed values from an ``execute``-style value table, whose
  feeds were checked already (``engine._walk``).

and returns the fetched values in the plan's fetch order. The kernels are called in
the walk's order with the walk's arguments, and an input's buffer is reused under the
walk's rule (see ``reuse_into``), so the results are bitwise the walk's. A task that
raises is reported through ``errors.raise_task_error`` like the walk's: the failing
line of the generated function names its task, so the happy path tracks nothing.

Compiling costs CPython's compiler some microseconds per task, about what a hundred
walks of the plan save, so a plan is compiled once it has been walked
``COMPILE_ON_RUN`` times and, for large plans, once per ``STEPS_PER_WALK_BEFORE_COMPILE``
tasks (a one-off run never pays for it; a 6000-task plan compiles on its sixth run),
and only up to ``MAX_COMPILED_STEPS`` tasks: beyond that, compiling takes seconds and
the walk's own overhead per task is small next to a plan that size anyway. Runs with
callbacks, numerics checks, timeouts or cancellation never come here: they go through
the walk or the engine's driver.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

from .errors import FeedError, RunCancelled, raise_task_error
from .plan import gc_paused
from .reuse import reuse_into

__all__ = ["COMPILE_ON_RUN", "MAX_COMPILED_STEPS", "STEPS_PER_WALK_BEFORE_COMPILE",
           "CompiledPlan", "compile_plan", "compiled_for", "fast_key", "fast_runner",
           "reuse_into"]

#: plans with more tasks than this are walked, never compiled
MAX_COMPILED_STEPS = 20_000
#: the sequential run of a plan (counting from 1) on which it gets compiled at the
#: earliest; a large plan waits for one more walk per this many tasks
COMPILE_ON_RUN = 2
STEPS_PER_WALK_BEFORE_COMPILE = 1000

#: a fast-path run of a plan with more tasks than this pauses the cyclic collector, as
#: ``Engine.execute`` does (below it, the pause costs more than the collector would)
GC_PAUSE_MIN_STEPS = 64

# What ``compiled_for`` stores on a plan that must not be compiled (too large, or its
# source failed to compile): it is walked from then on, without asking again.
_NOT_COMPILED = False


class CompiledPlan:
    """A plan's walk as a generated function (see the module docstring)."""

    __slots__ = ("fn", "source", "lines", "plan")

    def __init__(self, fn: Callable[..., list], source: str, lines: dict[int, int], plan: Any):
        #: ``fn(feeds)`` or ``fn(None, table)`` -> the fetched values, in fetch order
        self.fn = fn
        #: the generated source (for debugging and tests)
        self.source = source
        #: line of the generated source -> the plan position of the task it runs
        self.lines = lines
        self.plan = plan

    def run_table(self, values: list) -> None:
        """Run with the fed values in ``values`` (an ``execute`` value table) and store
        the fetched values there, as the walk would leave them."""
        out = self.fn(None, values)
        for p, value in zip(self.plan.fetch_positions, out):
            values[p] = value


def compiled_for(plan: Any) -> CompiledPlan | None:
    """The compiled form of ``plan``, compiling it on its ``COMPILE_ON_RUN``-th call;
    ``None`` while it is walked instead (too early, too large, or not compilable)."""
    found = plan.compiled
    if found is not None:
        return found or None
    plan.sequential_runs += 1
    if plan.sequential_runs < max(COMPILE_ON_RUN,
                                  len(plan.steps) // STEPS_PER_WALK_BEFORE_COMPILE):
        return None
    if len(plan.steps) > MAX_COMPILED_STEPS:
        plan.compiled = _NOT_COMPILED
        return None
    compiled = compile_plan(plan)
    plan.compiled = compiled if compiled is not None else _NOT_COMPILED
    return compiled


def compile_plan(plan: Any) -> CompiledPlan | None:
    """Generate, compile and load the function for ``plan`` (``None`` if CPython
    refuses the source, which a plan within ``MAX_COMPILED_STEPS`` should never do)."""
    glob: dict[str, Any] = {"_FeedError": FeedError, "_RunCancelled": RunCancelled,
                            "_reuse": reuse_into, "__builtins__": __builtins__}
    src: list[str] = ["def run(feeds, table=None):"]
    # Locals are named by position; a literal is a global of the generated module.
    name = [f"v{p}" for p in range(len(plan.keys))]
    template, is_source = plan.template, plan.is_source
    fed = {p for p, _, _ in plan.feed_slots}
    for p in range(len(plan.keys)):
        if is_source[p] and p not in fed:
            name[p] = f"L{p}"
            glob[name[p]] = template[p]
    if plan.feed_slots:
        src.append("    if table is None:")
        src.append("        try:")
        for p, key, check in plan.feed_slots:
            glob[f"f{p}"] = key
            if check is None:
                src.append(f"            v{p} = feeds[f{p}]")
            else:
                glob[f"c{p}"] = check
                src.append(f"            v{p} = c{p}(feeds[f{p}])")
        src.append("        except (TypeError, ValueError) as exc:")
        src.append("            raise _FeedError(str(exc)) from None")
        src.append("    else:")
        for p, _, _ in plan.feed_slots:
            src.append(f"        v{p} = table[{p}]")
    src.append("    try:")
    lines: dict[int, int] = {}
    # One global per distinct kernel (a 6000-task chain of sin, multiply and add calls
    # three): a small globals table stays in the CPU's caches between runs.
    kernel_names: dict[int, str] = {}
    for p, kernel, args, dies, donor in plan.steps:
        k = kernel_names.get(id(kernel))
        if k is None:
            k = kernel_names[id(kernel)] = f"k{len(kernel_names)}"
            glob[k] = kernel
        argnames = ", ".join(name[a] for a in args)
        if donor >= 0:
            # The donor's variable goes before the call, so that the argument list is
            # its only holder when ``reuse_into`` counts references.
            src.append(f"        _a = [{argnames}]")
            src.append(f"        del {name[donor]}")
            lines[len(src) + 1] = p
            src.append(f"        v{p} = _reuse({k}, _a, {args.index(donor)})")
            src.append("        del _a")
        else:
            lines[len(src) + 1] = p
            src.append(f"        v{p} = {k}({argnames})")
        dead = [name[d] for d in dies if d != donor and not name[d].startswith("L")]
        if dead:
            src.append(f"        del {', '.join(dead)}")
    if not plan.steps:
        src.append("        pass")
    src.append("    except _RunCancelled:")
    src.append("        raise")
    src.append("    except Exception as exc:")
    src.append("        _fail(exc)")
    src.append(f"    return [{', '.join(name[p] for p in plan.fetch_positions)}]")
    source = "\n".join(src) + "\n"
    try:
        code = compile(source, f"<compiled plan of {len(plan.steps)} tasks>", "exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None
    compiled = CompiledPlan(None, source, lines, plan)  # type: ignore[arg-type]
    glob["_fail"] = compiled_failure(compiled)
    exec(code, glob)  # noqa: S102 - our own generated source, names and positions only
    compiled.fn = glob["run"]
    return compiled


def compiled_failure(compiled: CompiledPlan) -> Callable[[BaseException], None]:
    """The handler that turns an exception raised in the generated function into the
    run's error for the task whose line raised it."""
    def fail(exc: BaseException) -> None:
        tb = exc.__traceback__
        # The first entry is the generated function's frame: the exception was caught
        # there, at the line of the task that raised it.
        p = compiled.lines.get(tb.tb_lineno, -1) if tb is not None else -1
        if p < 0:
            raise exc
        plan = compiled.plan
        raise_task_error(plan.names[p], plan.ops[p], exc)

    return fail


def fast_key(fetches: Any, feeds: Mapping | None) -> Hashable:
    """The key of ``Engine.run``'s fast path for a fetch structure and fed keys (in the
    feeds' order: a different order only misses once). Raises ``TypeError`` for an
    unhashable structure, which then takes the ordinary path."""
    fed = tuple(feeds) if feeds else ()
    kind = type(fetches)
    if kind is list or kind is tuple:
        return kind, tuple(fetches), fed
    if kind is dict:
        return kind, tuple(fetches.items()), fed
    return fetches, fed


def fast_runner(compiled: CompiledPlan, pack: Callable[[list], Any] | None) -> Callable[[Any], Any]:
    """``Engine.run`` for one cached (fetch structure, fed keys) pair on the inline
    executor: feeds checked in line, the compiled function, the fetches packed back
    into their structure by ``pack`` (``None``: one fetch, not in a structure), numpy
    scalars made 0-d arrays, as ``Engine.run`` does."""
    fn = compiled.fn
    generic, asarray = np.generic, np.asarray
    pause = len(compiled.plan.steps) >= GC_PAUSE_MIN_STEPS
    if not pause and pack is None:
        def run_one(feeds: Any) -> Any:
            value = fn(feeds)[0]
            return asarray(value) if isinstance(value, generic) else value

        return run_one
    if pack is None:
        def pack(values: list) -> Any:
            return values[0]

    def run(feeds: Any) -> Any:
        if pause:
            with gc_paused():
                values = fn(feeds)
        else:
            values = fn(feeds)
        return pack([asarray(v) if isinstance(v, generic) else v for v in values])

    return run
