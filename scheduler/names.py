"""Fetches and feeds given by name: ``engine.run("loss", {"x": X})``.

A string where a graph node is expected is a node's name. It is looked up through a
node given in the same request: the first node among the fetches (in the order given),
else the first node among the feed keys, whose ``__key_named__(name)`` returns the
node of that name in its graph or raises ``LookupError``. A request made of names only
is looked up by the function given to ``set_default_lookup`` (``dataflow`` installs
one that looks in the current default graph). The scheduler thus needs no idea of
what a graph is.

The request comes back with every name replaced by its node, in the structure it was
given: a dict of fetches keeps its keys, a list stays a list, a single name gives a
single value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import FeedError, SchedulerError


class UnknownNameError(SchedulerError, KeyError):
    """A fetch was given by a name that no node of the request's graph has. A
    ``KeyError`` too; its message reads as written, not quoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_default_lookup: Callable[[str], Any] | None = None


def set_default_lookup(lookup: Callable[[str], Any] | None) -> None:
    """Install ``lookup(name) -> key`` (raising ``LookupError`` for an unknown name) for
    requests that hold names only; ``None`` removes it."""
    global _default_lookup
    _default_lookup = lookup


def resolve_names(fetches: Any, feeds: Mapping | None) -> tuple[Any, Mapping | None]:
    """``(fetches, feeds)`` with every name replaced by the node it names."""
    if feeds is not None and type(feeds) is not dict and not isinstance(feeds, Mapping):
        raise TypeError(f"feeds must be a dict of node (or name) -> value, got "
                        f"{type(feeds).__name__}")
    if not _has_names(fetches, feeds):
        return fetches, feeds  # the common case, on every run's path: nodes only
    flat = _flat_fetches(fetches)
    feed_keys = list(feeds) if feeds else []
    anchor = next((k for k in flat + feed_keys
                   if not isinstance(k, str) and hasattr(k, "__key_named__")), None)
    find = anchor.__key_named__ if anchor is not None else _default_lookup

    def lookup(name: str, what: str, error: type[Exception]) -> Any:
        if find is None:
            raise error(f"{what} {name!r} is a name, but no node among the fetches and "
                        "feeds says which graph to look it up in; pass a node, or "
                        f"look the node up with graph[{name!r}]")
        try:
            return find(name)
        except LookupError as exc:
            raise error(f"{what} {name!r}: {_message(exc)}") from None

    def fetch(item: Any) -> Any:
        return lookup(item, "fetch", UnknownNameError) if isinstance(item, str) else item

    if isinstance(fetches, dict):
        fetches = {key: fetch(value) for key, value in fetches.items()}
    elif isinstance(fetches, (list, tuple)):
        fetches = type(fetches)(fetch(f) for f in fetches)
    else:
        fetches = fetch(fetches)
    if feeds and any(isinstance(k, str) for k in feed_keys):
        resolved: dict = {}
        for key, value in feeds.items():
            node = lookup(key, "feed", FeedError) if isinstance(key, str) else key
            if node in resolved:
                raise FeedError(f"feed {_label(key)} is given twice (once by name, once as "
                                "a node); give it once")
            resolved[node] = value
        feeds = resolved
    return fetches, feeds


def _has_names(fetches: Any, feeds: Mapping | None) -> bool:
    if isinstance(fetches, str):
        return True
    items = fetches.values() if isinstance(fetches, dict) else (
        fetches if isinstance(fetches, (list, tuple)) else ())
    for item in items:
        if isinstance(item, str):
            return True
    if feeds:
        for key in feeds:
            if isinstance(key, str):
                return True
    return False


def _flat_fetches(fetches: Any) -> list:
    if isinstance(fetches, dict):
        return list(fetches.values())
    if isinstance(fetches, (list, tuple)):
        return list(fetches)
    return [fetches]


def _message(exc: BaseException) -> str:
    # A KeyError's str() is the repr of its argument; show the text itself.
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _label(key: Any) -> str:
    return repr(key) if isinstance(key, str) else repr(getattr(key, "name", key))
