"""Public names of a package imported on first use (PEP 562), so that importing the package, or one
light module of it, does not import every heavy dependency of its other modules."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, sources: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A package's `__getattr__` and `__all__` for `sources` (public name -> module, relative to
    the package as ".module" or absolute).

    Example:
        >>> __getattr__, __all__ = lazy_names(__name__, {"PostHocPPN": ".posthoc_ppn"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(sources[name], package), name)

    return __getattr__, sorted(sources)
