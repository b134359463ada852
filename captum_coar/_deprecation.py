"""Old import paths that keep working for one release, with a warning naming the new one.

Contract
--------
:func:`moved_names` builds a module-level ``__getattr__`` for a module whose public names
moved or were renamed. ``moved`` maps each old name to ``"new.module"`` (same name there) or to
``"new.module:new_name"`` (renamed). Reading an old name imports the new module, issues one
``DeprecationWarning`` per access that names the old and the new path and the release that
removes the old one (:data:`REMOVED_IN`), and returns the object itself, so identity and
``isinstance`` checks are unchanged. Any other missing name raises ``AttributeError`` as usual.
The helper imports nothing of the package at import time (a leaf of the import graph).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Dict, Mapping, Tuple

__all__ = ["REMOVED_IN", "moved_names", "new_path"]

#: the release that removes the old paths (they keep working, with a warning, until then)
REMOVED_IN = "0.4.0"


def new_path(target: str, old_name: str) -> Tuple[str, str]:
    """``(module, name)`` of a ``moved`` entry: ``"pkg.mod"`` or ``"pkg.mod:new_name"``."""
    module, _, name = target.partition(":")
    return module, name or old_name


def moved_names(module_name: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving the old names of ``module_name`` (see the module doc)."""
    table: Dict[str, str] = dict(moved)

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        module, new_name = new_path(table[name], name)
        warnings.warn(
            f"{module_name}.{name} is deprecated and will be removed in {REMOVED_IN}; import"
            f" {module}.{new_name} instead (from {module} import {new_name})",
            DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new_name)

    return __getattr__
