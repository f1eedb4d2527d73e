"""Lazy attribute loading for package ``__init__`` files.

Importing :mod:`lightning_reuse` must stay cheap (no lightning, wandb or codecarbon import until a part
is used) and must not break when one optional part fails to import. Each package maps its public names to
the module that defines them; :func:`attach` turns that map into a module ``__getattr__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def attach(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` resolving ``names[attr]`` (a module path relative to ``package``).

    Example:
        >>> getattr_, dir_ = attach("lightning_reuse", {"__version__": ".__about__"})
        >>> isinstance(getattr_("__version__"), str)
        True
    """

    def __getattr__(attr: str) -> Any:
        try:
            module_name = names[attr]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}") from None
        module = importlib.import_module(module_name, package)
        return getattr(module, attr)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
