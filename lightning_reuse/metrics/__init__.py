"""torchmetrics ``Metric`` s: streaming, DDP-synchronised versions of the functional statistics."""

from typing import TYPE_CHECKING

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name; the TYPE_CHECKING block mirrors it.
_NAMES: dict[str, str] = {
    "RESQUEDist": ".resque",
    "RESQUETask": ".resque",
    "HScore": ".transferability",
    "KNNAccuracy": ".transferability",
    "LEEP": ".transferability",
    "LinearProbeAccuracy": ".transferability",
    "LogME": ".transferability",
    "NCE": ".transferability",
}

if TYPE_CHECKING:
    from lightning_reuse.metrics.resque import RESQUEDist, RESQUETask
    from lightning_reuse.metrics.transferability import (
        LEEP,
        NCE,
        HScore,
        KNNAccuracy,
        LinearProbeAccuracy,
        LogME,
    )

__all__ = [
    "RESQUEDist",
    "RESQUETask",
    "HScore",
    "KNNAccuracy",
    "LEEP",
    "LinearProbeAccuracy",
    "LogME",
    "NCE",
]
__getattr__, __dir__ = attach(__name__, _NAMES)
