"""Buffer reuse: when a kernel may write its result into a dying input's buffer.

One rule, used by the plan's walk (``engine``) and by compiled plans (``compiled``)
alike, so that both give the same bits and neither ever writes what someone can
observe. numpy elides temporaries in ``a + b * c`` the same way; TensorFlow forwards
input buffers to outputs alike.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from .spec import REUSE_MIN_BYTES


def _sole_owner_refcount() -> int:
    """What ``sys.getrefcount`` reports, in ``reuse_into``'s situation, for an array held
    by one argument list and one local only (interpreters count differently)."""
    argv = [np.empty(0)]
    buf = argv[0]
    return sys.getrefcount(buf)


_SOLE_OWNER_REFCOUNT = _sole_owner_refcount()


def reuse_into(kernel: Callable[..., Any], argv: list, i: int) -> Any:
    """``kernel(*argv)``, written into ``argv[i]``'s buffer when that is safe.

    The caller has already let go of its own reference to that value (it dies at this
    step). The buffer must then be an array that owns its memory, held by nothing but
    ``argv``: no view of it, no other value, no caller (the reference count says so),
    and no weak reference either, which that count misses (a kernel may keep its result
    in a ``WeakValueDictionary`` and hand it out again); large enough to be worth it,
    C-contiguous and writeable; and every other argument a C-contiguous array of its
    dtype (or a Python number for a float or complex buffer), so that the result has
    the dtype and layout, and so the bits, of a fresh one."""
    buf = argv[i]
    if (type(buf) is np.ndarray and buf.nbytes >= REUSE_MIN_BYTES and buf.base is None
            and sys.getrefcount(buf) == _SOLE_OWNER_REFCOUNT
            and not weakref.getweakrefcount(buf)
            and buf.flags.owndata and buf.flags.c_contiguous and buf.flags.writeable):
        dtype = buf.dtype
        numbers = (int, float) if dtype.kind in "fc" else ()
        for a in argv:
            if a is buf or type(a) in numbers:  # they adopt a float array's dtype
                continue
            if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
                return kernel(*argv)
        return kernel(*argv, out=buf)
    return kernel(*argv)
