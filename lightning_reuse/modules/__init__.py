"""LightningModules for reuse strategies: additive fine-tuning, reprogramming, stitching."""

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "AdditiveFineTuning": ".additive",
    "ModelReprogramming": ".reprogramming",
    "ModelStitching": ".stitching",
    "ImageClassifier": ".classifier",
}

__all__ = list(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
