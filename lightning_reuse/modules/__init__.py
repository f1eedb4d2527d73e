"""LightningModules for reuse strategies: additive fine-tuning, reprogramming, stitching."""

from typing import TYPE_CHECKING

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "AdditiveFineTuning": ".additive",
    "ModelReprogramming": ".reprogramming",
    "ModelStitching": ".stitching",
    "ImageClassifier": ".classifier",
}

if TYPE_CHECKING:
    from lightning_reuse.modules.additive import AdditiveFineTuning
    from lightning_reuse.modules.classifier import ImageClassifier
    from lightning_reuse.modules.reprogramming import ModelReprogramming
    from lightning_reuse.modules.stitching import ModelStitching

__all__ = ["AdditiveFineTuning", "ModelReprogramming", "ModelStitching", "ImageClassifier"]
__getattr__, __dir__ = attach(__name__, _NAMES)
