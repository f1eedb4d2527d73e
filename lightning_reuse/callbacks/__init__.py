"""Lightning callbacks: thin glue from trainer hooks to the functional core."""

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "WiSEFT": ".wise_ft",
    "RESQUECheck": ".resque_check",
    "NTKScreening": ".ntk_screening",
    "EnergyMonitor": ".energy_monitor",
}

__all__ = list(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
