"""Bitwise comparison of arrays for the tests.

``assert same_bits(a, b)`` rather than ``assert a.tobytes() == b.tobytes()``: on a
failure pytest explains a comparison of two bytes objects by diffing their printed
forms line by line, which is quadratic in their length and, where pytest detects a CI
(it then turns its truncation off), runs for many minutes on one large array. A failed
``same_bits`` is reported with the two arrays as numpy prints them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def same_bits(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` (arrays, or anything ``np.asarray`` takes) hold the same
    bytes: NaN payloads and signed zeros included, dtype and shape not compared."""
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()
