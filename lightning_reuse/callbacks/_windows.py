"""Measure a named piece of work with the attached EnergyMonitor, if any (used by pre-check callbacks).

The functions live in :mod:`lightning_reuse.energy.windows` (public: ``from lightning_reuse.energy import
measurement_window``); this module keeps the callbacks' import path.
"""

from lightning_reuse.energy.windows import find_energy_monitor, measurement_window

__all__ = ["find_energy_monitor", "measurement_window"]
