"""A package's names loaded when first used (PEP 562), for the packages that do it (the top
package, ``_runtime`` and ``_storage``): one loader, so that the three agree on how a name is
found, cached and listed.

Each package keeps its own ``TYPE_CHECKING`` imports (what type checkers and editors read) and
its own table of where each name lives; this module imports nothing but :mod:`importlib`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    namespace: dict[str, Any], where: Mapping[str, str], *, submodules: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of the package whose ``globals()`` is
    ``namespace``: a name of ``where`` is imported from the module it maps to (relative to the
    package) and kept in ``namespace``, so it is looked up only once; a name of ``submodules``
    is the submodule itself (importing it sets the attribute)."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace["__all__"]))

    return __getattr__, __dir__
