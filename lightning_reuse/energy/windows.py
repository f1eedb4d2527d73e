"""Measure a named piece of work with the trainer's ``EnergyMonitor``, if one is attached.

Callbacks that want their own cost measured (pre-checks, weight sweeps) use :func:`measurement_window`;
it does nothing when no monitor is attached. Framework-free: the trainer is any object with ``callbacks``.

Example:
    >>> from types import SimpleNamespace
    >>> with measurement_window(SimpleNamespace(callbacks=[]), "my-precheck") as record:
    ...     pass
    >>> record is None  # no EnergyMonitor attached: nothing measured
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def find_energy_monitor(trainer: Any) -> Any | None:
    """Return the first attached callback that offers ``window(name)`` (an ``EnergyMonitor``), else ``None``."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if type(callback).__name__ == "EnergyMonitor" and callable(getattr(callback, "window", None)):
            return callback
    return None


@contextlib.contextmanager
def measurement_window(trainer: Any, name: str) -> Iterator[Any | None]:
    """``with measurement_window(trainer, "resque-precheck") as record: ...``.

    Yields the monitor's record for the window (filled when the block ends), or ``None`` when no
    EnergyMonitor is attached, in which case nothing is measured.
    """
    monitor = find_energy_monitor(trainer)
    if monitor is None:
        yield None
        return
    with monitor.window(name) as record:
        yield record
