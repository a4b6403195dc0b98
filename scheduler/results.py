"""How fetched values are handed back: every distinct fetch as an array of its own.

One value can reach two fetches: a plan rewrite merges two fetches that compute the
same thing into one task, and a kernel may return a view of (or the very array of)
another fetched task's value (a reshape, a transpose, an identity). Returned as they
are, changing one result in place would change the other. ``distinct_arrays`` copies
each value that could share memory with one earlier in the fetch order, so that the
caller gets as many independent arrays as distinct fetches, whichever executor ran
them; a key fetched twice is still one array (the caller asked for the same thing).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def distinct_arrays(values: list[Any]) -> list[Any]:
    """``values`` (one per distinct fetch), where every array that is, or could share
    memory with, an array earlier in the list is replaced by a copy. The first fetch
    that holds some memory keeps it; overlap is judged by byte bounds, as
    ``np.may_share_memory`` judges it, so none is ever missed."""
    if len(values) < 2:
        return values
    # Common case first: each array's memory belongs to an ndarray at the end of its
    # chain of bases, and arrays with different owners cannot overlap. Only arrays of
    # one owner are compared. Memory from elsewhere (a buffer, shared memory) takes
    # the general sweep.
    owners: dict[int, list[int]] = {}
    for i, value in enumerate(values):
        if not isinstance(value, np.ndarray):
            continue
        root = value
        while isinstance(root.base, np.ndarray):
            root = root.base
        if root.base is not None or not root.flags.owndata:
            return _by_byte_bounds(values)
        owners.setdefault(id(root), []).append(i)
    out = values
    for members in owners.values():
        if len(members) < 2:
            continue
        kept: list[np.ndarray] = []
        for i in members:  # in fetch order
            value = values[i]
            if any(value is k or np.may_share_memory(value, k) for k in kept):
                if out is values:
                    out = list(values)
                out[i] = value.copy(order="K")
            else:
                kept.append(value)
    return out


def _by_byte_bounds(values: list[Any]) -> list[Any]:
    """``distinct_arrays`` for arrays of any provenance: overlapping byte ranges are
    found by a sweep in address order."""
    spans = []  # (start, end, position) of the memory each array spans
    seen: dict[int, int] = {}  # id of each array -> its first position
    repeats: list[int] = []
    for i, value in enumerate(values):
        if not isinstance(value, np.ndarray):
            continue
        if seen.setdefault(id(value), i) != i:
            repeats.append(i)  # the same object again (an empty one has no bytes to span)
            continue
        start, end = _byte_bounds(value)
        if end > start:
            spans.append((start, end, i))
    # For each array, the earlier-fetched arrays whose memory it may share.
    spans.sort()
    earlier: dict[int, list[int]] = {}
    active: list[tuple[int, int]] = []  # (end, position) of the spans still open
    for start, end, i in spans:
        active = [(e, j) for e, j in active if e > start]
        for _, j in active:
            first, later = min(i, j), max(i, j)
            earlier.setdefault(later, []).append(first)
        active.append((end, i))
    if not earlier and not repeats:
        return values
    out = list(values)
    copied = set(repeats)
    # In fetch order, so the choice of which value is copied never depends on addresses.
    for i in sorted(earlier):
        if any(j not in copied for j in earlier[i]):
            copied.add(i)
    for i in sorted(copied):
        out[i] = values[i].copy(order="K")
    return out


def _byte_bounds(array: np.ndarray) -> tuple[int, int]:
    """The first byte and one past the last byte that ``array`` can reach."""
    low = high = array.__array_interface__["data"][0]
    for n, stride in zip(array.shape, array.strides):
        if n == 0:
            return low, low
        if stride < 0:
            low += (n - 1) * stride
        else:
            high += (n - 1) * stride
    return low, high + array.itemsize
