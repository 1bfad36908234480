"""Keeps PySide6 6.12 from crashing CPython 3.11: it returns None, True and False without a reference.

Every void method call (setText, update, save, ...) takes one reference from None, and some bool
returns one from True/False; after a few thousand calls CPython aborts with "none_dealloc:
deallocating None" (or bool_dealloc). From 3.12 these objects are immortal (PEP 683), which is
what the bindings assume; on 3.11 we give them reference counts that cannot run out.
Importing this module applies the fix once; it is a no-op on 3.12+.
"""

from __future__ import annotations

import sys

_RESERVE = 1 << 40


def _affected_pyside() -> bool:
    """pyproject pins PySide6 below 6.12; this guards installs that got 6.12 anyway."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("PySide6").startswith("6.12")
    except PackageNotFoundError:
        return False


def pin_singletons() -> bool:
    """Adds a huge reserve to the reference counts of None, True and False (once)."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython" or not _affected_pyside():
        return False
    import ctypes

    applied = False
    for singleton in (None, True, False):
        refcount = ctypes.c_ssize_t.from_address(id(singleton))  # ob_refcnt: PyObject's first field
        if refcount.value < _RESERVE // 2:
            refcount.value += _RESERVE
            applied = True
    return applied


pin_singletons()
