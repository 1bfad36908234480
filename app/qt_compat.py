"""Keeps PySide6 6.12 from crashing CPython 3.11: its void methods return None without a reference.

Every such call (setText, update, save, ...) takes one reference from None; after a few thousand
calls CPython aborts with "none_dealloc: deallocating None". From 3.12 None is immortal (PEP 683),
which is what the bindings assume; on 3.11 we give None a reference count that cannot run out.
Importing this module applies the fix once; it is a no-op on 3.12+.
"""

from __future__ import annotations

import sys

_RESERVE = 1 << 40


def pin_none() -> bool:
    """Adds a huge reserve to None's reference count (once); True if it was applied now."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    import ctypes

    refcount = ctypes.c_ssize_t.from_address(id(None))  # ob_refcnt is PyObject's first field
    if refcount.value >= _RESERVE // 2:
        return False
    refcount.value += _RESERVE
    return True


pin_none()
