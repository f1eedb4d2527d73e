"""lightning_reuse: PyTorch Lightning plugins for reusing pre-trained models sustainably.

Every public part imports from here. Names are loaded lazily, so ``import lightning_reuse`` is cheap and each
part loads on first use (type checkers see the real classes through the ``TYPE_CHECKING`` block):

>>> import lightning_reuse
>>> lightning_reuse.__version__
'0.1.0'

The layers underneath (see ``docs/glossary.md``): :mod:`~lightning_reuse.functional`, :mod:`~lightning_reuse.nn`,
:mod:`~lightning_reuse.optim`, :mod:`~lightning_reuse.energy`, :mod:`~lightning_reuse.metrics` (pure torch);
:mod:`~lightning_reuse.callbacks`, :mod:`~lightning_reuse.modules` (Lightning glue);
:mod:`~lightning_reuse.samples` (sample data and models for examples and tests).
"""

from typing import TYPE_CHECKING

from lightning_reuse.__about__ import __version__
from lightning_reuse._lazy import attach

# Public name -> defining module (relative). One line per public part; the TYPE_CHECKING block mirrors it.
_NAMES: dict[str, str] = {
    # pre-checks
    "RESQUECheck": ".callbacks.resque_check",
    "RetrainingLedger": ".energy.ledger",
    "CostEstimate": ".energy.ledger",
    "RESQUEDist": ".metrics.resque",
    "RESQUETask": ".metrics.resque",
    "RESQUEConfig": ".functional.resque_config",
    "NTKScreening": ".callbacks.ntk_screening",
    "ScreeningConfig": ".functional.ntk_config",
    "ScreeningThresholds": ".functional.ntk_config",
    "screen_reprogramming": ".functional.ntk_scores",
    # energy and carbon
    "EnergyMonitor": ".callbacks.energy_monitor",
    "EnergyConfig": ".energy.config",
    "EnergyRecord": ".energy.records",
    # fine-tuning that keeps the pre-trained model's robustness
    "FTP": ".optim.ftp",
    "FTPAdamW": ".optim.ftp_presets",
    "FTPSGD": ".optim.ftp_presets",
    "configure_ftp": ".optim.ftp_presets",
    "L2SP": ".optim.l2sp",
    "WiSEFT": ".callbacks.wise_ft",
    # reuse strategies as LightningModules
    "ImageClassifier": ".modules.classifier",
    "AdditiveFineTuning": ".modules.additive",
    "fine_tuning_capacity": ".functional.ftc",
    "ModelReprogramming": ".modules.reprogramming",
    "ModelStitching": ".modules.stitching",
    "stitching_sweep": ".modules.stitching_sweep",
}

if TYPE_CHECKING:
    from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
    from lightning_reuse.callbacks.ntk_screening import NTKScreening
    from lightning_reuse.callbacks.resque_check import RESQUECheck
    from lightning_reuse.callbacks.wise_ft import WiSEFT
    from lightning_reuse.energy.config import EnergyConfig
    from lightning_reuse.energy.ledger import CostEstimate, RetrainingLedger
    from lightning_reuse.energy.records import EnergyRecord
    from lightning_reuse.functional.ftc import fine_tuning_capacity
    from lightning_reuse.functional.ntk_config import ScreeningConfig, ScreeningThresholds
    from lightning_reuse.functional.ntk_scores import screen_reprogramming
    from lightning_reuse.functional.resque_config import RESQUEConfig
    from lightning_reuse.metrics.resque import RESQUEDist, RESQUETask
    from lightning_reuse.modules.additive import AdditiveFineTuning
    from lightning_reuse.modules.classifier import ImageClassifier
    from lightning_reuse.modules.reprogramming import ModelReprogramming
    from lightning_reuse.modules.stitching import ModelStitching
    from lightning_reuse.modules.stitching_sweep import stitching_sweep
    from lightning_reuse.optim.ftp import FTP
    from lightning_reuse.optim.ftp_presets import FTPSGD, FTPAdamW, configure_ftp
    from lightning_reuse.optim.l2sp import L2SP

__all__ = [
    "__version__",
    "RESQUECheck",
    "RetrainingLedger",
    "CostEstimate",
    "RESQUEDist",
    "RESQUETask",
    "RESQUEConfig",
    "NTKScreening",
    "ScreeningConfig",
    "ScreeningThresholds",
    "screen_reprogramming",
    "EnergyMonitor",
    "EnergyConfig",
    "EnergyRecord",
    "FTP",
    "FTPAdamW",
    "FTPSGD",
    "configure_ftp",
    "L2SP",
    "WiSEFT",
    "ImageClassifier",
    "AdditiveFineTuning",
    "fine_tuning_capacity",
    "ModelReprogramming",
    "ModelStitching",
    "stitching_sweep",
]
__getattr__, __dir__ = attach(__name__, _NAMES)
