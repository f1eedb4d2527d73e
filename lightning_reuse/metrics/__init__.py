"""torchmetrics ``Metric`` s: streaming, DDP-synchronised versions of the functional statistics."""

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "RESQUEDist": ".resque",
    "RESQUETask": ".resque",
}

__all__ = list(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
