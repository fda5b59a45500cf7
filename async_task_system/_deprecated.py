"""Old module paths that moved in the layered layout, kept for one release.

``import async_task_system.manager`` still works: it warns (``DeprecationWarning``) and hands back
the module at its new path, the very same module object, so ``isinstance`` checks, monkeypatching
and pickled references agree with the new path.
"""

from __future__ import annotations

import importlib
import sys
import warnings


def moved(old: str, new: str) -> None:
    """Make the module ``old`` (being imported now) an alias of ``new``, with a warning."""
    warnings.warn(
        f"{old} moved to {new}; import from there, or the public names from async_task_system "
        "(the old path will be removed in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)
