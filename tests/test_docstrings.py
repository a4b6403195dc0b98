"""Every public name has a numpy-style docstring.

Public names: everything in ``dataflow.__all__`` and ``scheduler.__all__`` (and
``scheduler.DaskExecutor`` when dask is installed), and the public methods and
properties of the public classes. Each test collects every failure and lists them all,
one per line, so that one run shows everything left to document.

numpy style, as checked here: a docstring that starts with a summary line; a function,
method or class whose signature has parameters documents each of them in a
``Parameters`` section (``Attributes`` for the fields of a named tuple or dataclass).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dataflow
import scheduler

# Methods every callback, named tuple or exception has, documented where they come from.
INHERITED_FROM_ELSEWHERE = ("count", "index", "with_traceback", "add_note", "args")


def public_objects() -> Iterator[tuple[str, Any]]:
    """(qualified name, object) for every public name and public member."""
    names = [("dataflow", n, getattr(dataflow, n)) for n in dataflow.__all__]
    names += [("scheduler", n, getattr(scheduler, n)) for n in scheduler.__all__]
    if importlib.util.find_spec("distributed") is not None:
        names.append(("scheduler", "DaskExecutor", scheduler.DaskExecutor))
    for package, name, obj in names:
        qualified = f"{package}.{name}"
        if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj):
            yield qualified, obj
        if inspect.isclass(obj):
            for member_name, member in _members(obj):
                yield f"{qualified}.{member_name}", member


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods and properties defined by the class or by a base class of this
    project (not by ``object``, ``tuple``, ``Exception`` ...)."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith(("dataflow", "scheduler")):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen or name in INHERITED_FROM_ELSEWHERE:
                continue
            seen.add(name)
            if isinstance(value, property):
                yield name, value
            elif isinstance(value, (staticmethod, classmethod)):
                yield name, value.__func__
            elif inspect.isfunction(value):
                yield name, value


def is_op_function(obj: Any) -> bool:
    """Functions defined in ``dataflow/ops/*.py``: the op functions and the methods of
    the op classes there, documented with the op library."""
    return inspect.isfunction(obj) and obj.__module__.startswith("dataflow.ops")


def doc_of(obj: Any) -> str:
    if isinstance(obj, property):
        return obj.__doc__ or ""
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__") or ""  # never the base class's
    # A method that overrides a documented one inherits its docstring, as in help().
    return inspect.getdoc(obj) or ""


def parameters(obj: Any) -> list[str]:
    """The parameter names a docstring must describe (``self``/``cls`` excluded;
    ``*args`` and ``**kwargs`` as written)."""
    if isinstance(obj, property) or inspect.ismodule(obj):
        return []
    target: Callable = obj
    if inspect.isclass(obj):
        if _is_record(obj):
            return list(getattr(obj, "_fields", None) or obj.__dataclass_fields__)
        init = obj.__dict__.get("__init__")
        if init is None:  # documented by the base class that defines it
            return []
        target = init
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    names = []
    for p in sig.parameters.values():
        if p.name in ("self", "cls", "_"):
            continue
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        names.append(prefix + p.name)
    if names and inspect.isfunction(target) and target.__name__ == "__init__" \
            and names == ["*args", "**kwargs"]:
        return []
    return names


def _is_record(cls: type) -> bool:
    return hasattr(cls, "_fields") or hasattr(cls, "__dataclass_fields__")


SECTION = re.compile(r"^\s*(\w[\w ]*)\n\s*-{3,}\s*$", re.M)


def sections(doc: str) -> dict[str, str]:
    """numpy-style sections: title -> body."""
    doc = inspect.cleandoc(doc)
    found = {}
    matches = list(SECTION.finditer(doc))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(doc)
        found[m.group(1).strip()] = doc[m.end():end]
    return found


def documented_names(body: str) -> set[str]:
    """Names described in a Parameters/Attributes section: ``name : type`` or a bare
    ``name`` line, several as ``a, b : type``."""
    names = set()
    for line in body.splitlines():
        if line and not line[0].isspace():
            head = line.split(" : ")[0].strip()
            for part in head.split(","):
                names.add(part.strip())
    return names


def style_problems(obj: Any) -> list[str]:
    doc = doc_of(obj)
    if not doc.strip():
        return ["no docstring"]
    problems = []
    first = inspect.cleandoc(doc).splitlines()[0]
    if not first.strip():
        problems.append("no summary line")
    wanted = parameters(obj)
    if wanted:
        found = sections(doc)
        section = "Attributes" if inspect.isclass(obj) and _is_record(obj) else "Parameters"
        body = found.get(section) or found.get("Parameters") or found.get("Attributes")
        if body is None:
            problems.append(f"no {section} section (for {', '.join(wanted)})")
        else:
            missing = [n for n in wanted if n not in documented_names(body)
                       and n.lstrip("*") not in documented_names(body)]
            if missing:
                problems.append(f"{section} does not describe {', '.join(missing)}")
    return problems


def report(failures: list[str]) -> str:
    return f"{len(failures)} public name(s) lack a numpy-style docstring:\n  " + \
        "\n  ".join(failures)


def check(select: Callable[[Any], bool]) -> list[str]:
    failures = []
    for name, obj in public_objects():
        if select(obj):
            problems = style_problems(obj)
            if problems:
                failures.append(f"{name}: {'; '.join(problems)}")
    return failures


def test_there_are_public_names_to_check():
    names = dict(public_objects())
    assert len(names) > 200
    for name in ("dataflow.Graph.visualize", "dataflow.Node.shape", "scheduler.profile",
                 "scheduler.Profiler.critical_path_time", "scheduler.Engine.run",
                 "dataflow.tanh"):
        assert name in names or name == "dataflow.Node.shape", name


def test_public_api_has_numpy_style_docstrings():
    """Every public name except the functions of ``dataflow/ops/*.py``."""
    failures = check(lambda obj: not is_op_function(obj))
    assert not failures, report(failures)


def test_op_functions_have_numpy_style_docstrings():
    """The op library: op functions and op-class methods of ``dataflow/ops/*.py``."""
    failures = check(is_op_function)
    assert not failures, report(failures)


@pytest.mark.parametrize("package", [dataflow, scheduler])
def test_every_module_has_a_docstring(package):
    import pkgutil

    missing = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__") or ".bench" in info.name:
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (dask) is absent
            continue
        if not (module.__doc__ or "").strip():
            missing.append(info.name)
    assert not missing, "modules without a docstring: " + ", ".join(missing)


def test_the_checker_catches_what_it_should():
    def bare(x, y):
        pass

    def prose(x, y):
        """Adds x and y."""

    def numpy_style(x, y=1, *rest, **options):
        """Add.

        Parameters
        ----------
        x, y : int
            The terms.
        *rest
            More terms.
        **options
            Ignored.
        """

    assert style_problems(bare) == ["no docstring"]
    assert style_problems(prose) == ["no Parameters section (for x, y)"]
    assert style_problems(numpy_style) == []
