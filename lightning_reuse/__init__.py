"""lightning_reuse: PyTorch Lightning plugins for reusing pre-trained models sustainably.

Public names are imported lazily, so ``import lightning_reuse`` is cheap and each part loads on first use:

>>> import lightning_reuse
>>> lightning_reuse.__version__
'0.1.0'
"""

from lightning_reuse.__about__ import __version__
from lightning_reuse._lazy import attach

_NAMES = {
    "FTP": ".optim.ftp",
    "RESQUECheck": ".callbacks.resque_check",
    "NTKScreening": ".callbacks.ntk_screening",
    "EnergyMonitor": ".callbacks.energy_monitor",
    "AdditiveFineTuning": ".modules.additive",
    "ModelReprogramming": ".modules.reprogramming",
    "ModelStitching": ".modules.stitching",
}

__all__ = ["__version__", *_NAMES]
__getattr__, __dir__ = attach(__name__, _NAMES)
