"""Lightning callbacks: thin glue from trainer hooks to the functional core."""

from typing import TYPE_CHECKING

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "WiSEFT": ".wise_ft",
    "RESQUECheck": ".resque_check",
    "RESQUEAssumptionWarning": ".resque_check",
    "NTKScreening": ".ntk_screening",
    "NTKScreeningWarning": ".ntk_screening",
    "EnergyMonitor": ".energy_monitor",
}

if TYPE_CHECKING:
    from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
    from lightning_reuse.callbacks.ntk_screening import NTKScreening, NTKScreeningWarning
    from lightning_reuse.callbacks.resque_check import RESQUEAssumptionWarning, RESQUECheck
    from lightning_reuse.callbacks.wise_ft import WiSEFT

__all__ = [
    "WiSEFT",
    "RESQUECheck",
    "RESQUEAssumptionWarning",
    "NTKScreening",
    "NTKScreeningWarning",
    "EnergyMonitor",
]
__getattr__, __dir__ = attach(__name__, _NAMES)
