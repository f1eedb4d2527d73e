"""Lazy attribute loading for package ``__init__`` files.

Importing :mod:`lightning_reuse` must stay cheap (no lightning, wandb or codecarbon import until a part
is used) and must not break when one optional part fails to import. Each package maps its public names to
the module that defines them; :func:`attach` turns that map into a module ``__getattr__``.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def attach(
    package: str, names: Mapping[str, str], moved: Mapping[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` resolving ``names[attr]`` (a module path relative to ``package``).

    ``moved`` maps names that used to live here to their new (absolute) module: they still resolve, with a
    :class:`DeprecationWarning` naming the new path, for one release.

    Example:
        >>> getattr_, dir_ = attach("lightning_reuse", {"__version__": ".__about__"})
        >>> isinstance(getattr_("__version__"), str)
        True
    """
    moved = dict(moved or {})

    def __getattr__(attr: str) -> Any:
        if attr in moved:
            warnings.warn(
                f"`{package}.{attr}` moved to `{moved[attr]}.{attr}`; the old path goes in the next release."
                f" HINT: `from {moved[attr]} import {attr}`.",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(importlib.import_module(moved[attr]), attr)
        try:
            module_name = names[attr]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}") from None
        module = importlib.import_module(module_name, package)
        return getattr(module, attr)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__


def moved_module(old: str, new: str) -> Callable[[str], Any]:
    """Return the ``__getattr__`` of a deprecated alias module: ``old`` moved to ``new``.

    Each public attribute of ``new`` resolves from ``old`` with a :class:`DeprecationWarning` naming the new
    path; ``new`` is imported on first use only.
    """

    def __getattr__(attr: str) -> Any:
        target = importlib.import_module(new)
        if attr.startswith("_") or not hasattr(target, attr):
            raise AttributeError(f"module {old!r} has no attribute {attr!r}")
        return attach(old, {}, moved={attr: new})[0](attr)

    return __getattr__
