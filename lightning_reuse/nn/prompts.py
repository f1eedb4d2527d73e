"""Trainable input transforms ``T_theta`` for model reprogramming: padding and full-image visual prompts.

A transform maps a target image ``x`` (shape ``target_shape = (C_t, H_t, W_t)``, pixel values in [0, 1])
to the input ``u`` of a frozen source model (shape ``source_shape = (C_s, H_s, W_s)``):

.. math::

    u = T_\\theta(x) = \\frac{\\operatorname{place}(x) + \\phi(\\theta) \\odot M - \\mu}{\\sigma}

- ``place(x)``: optional resize of the target image, grey-to-colour channel repeat, zero padding into the
  centre of the source resolution (pixel space, no prompt);
- ``M``: the prompt mask (``PaddingPrompt``: 1 on the border around the placed image, 0 on it;
  ``FullPrompt``: 1 everywhere);
- ``phi``: ``sigmoid`` (padding prompt, ILM-VP), ``tanh`` or ``identity`` (full prompt);
- ``mu, sigma``: the source's normalisation (per channel), applied last as the source expects.

The prompt enters ``u`` additively with a diagonal Jacobian that is the same for every sample:
``du/dtheta = diag(M * phi'(theta) / sigma)`` (:meth:`InputTransform.jacobian_diag`). Hence for
``g = L f_s(u)`` the prompt Jacobian is ``dg/dtheta = L * df_s/du * diag(jacobian_diag())`` (the identity the
NTK screening uses).

References: Chen, Liu, Li, Zhang, Wang, Liu, "Understanding and Improving Visual Prompting: A Label-Mapping
Perspective", CVPR 2023 (ILM-VP: padding prompt, sigmoid, zero init); Bahng, Jahanian, Sankaranarayanan,
Isola, "Exploring Visual Prompts for Adapting Large-Scale Models", 2022; Elsayed, Goodfellow,
Sohl-Dickstein, "Adversarial Reprogramming of Neural Networks", ICLR 2019 (tanh prompt).

Example:
    >>> import torch
    >>> prompt = PaddingPrompt(target_shape=(1, 8, 8), source_shape=(3, 12, 12), mean=0.5, std=0.5)
    >>> u = prompt(torch.rand(4, 1, 8, 8))
    >>> tuple(u.shape), int(prompt.mask[0].sum())  # 12*12 - 8*8 border pixels per channel
    ((4, 3, 12, 12), 80)
    >>> float(prompt.prompt().detach().max())  # sigmoid(0) on the border at init
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shape3 = tuple[int, int, int]
Activation = Literal["sigmoid", "tanh", "identity"]
ACTIVATIONS: tuple[str, ...] = ("sigmoid", "tanh", "identity")
RESIZE_MODES: tuple[str, ...] = ("bilinear", "nearest", "bicubic", "area")


def _shape3(name: str, value: Sequence[int]) -> Shape3:
    shape = tuple(int(v) for v in value)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"`{name}` must be (channels, height, width) with positive entries, got {tuple(value)}. "
            "HINT: give the shape of ONE image, without the batch dimension, e.g. (3, 224, 224)."
        )
    return shape  # type: ignore[return-value]


def _per_channel(name: str, value: float | Sequence[float] | None, channels: int, default: float) -> Tensor:
    if value is None:
        value = default
    vals = [float(value)] * channels if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(vals) != channels:
        raise ValueError(
            f"`{name}` needs one value per source channel ({channels}), got {len(vals)}: {vals}. "
            "HINT: pass the source model's normalisation, e.g. ImageNet mean=(0.485, 0.456, 0.406)."
        )
    if name == "std" and min(vals) <= 0:
        raise ValueError(f"`std` must be > 0 for every channel, got {vals}.")
    return torch.tensor(vals, dtype=torch.float32).view(channels, 1, 1)


class InputTransform(nn.Module):
    """Base class: placement of the target image into the source resolution, mask, prompt, normalisation.

    Subclasses set the mask and the activation ``phi``. The trainable parameter is ``theta`` with shape
    ``source_shape``; only entries where ``mask == 1`` influence the output.

    Args:
        target_shape: ``(C_t, H_t, W_t)`` of one target image.
        source_shape: ``(C_s, H_s, W_s)`` the source model expects.
        resize: resize the target image to this ``(H, W)`` (or square ``int``) before placing it;
            ``None`` keeps ``(H_t, W_t)``.
        resize_mode: interpolation of the resize (``"bilinear"``, ``"nearest"``, ``"bicubic"``, ``"area"``).
        mean: source normalisation mean (one value or one per source channel); ``None`` = 0.
        std: source normalisation std; ``None`` = 1.
        activation: ``phi``, one of ``"sigmoid"``, ``"tanh"``, ``"identity"``.

    Raises:
        ValueError: the (resized) target is larger than the source, the channel counts are incompatible
            (``C_t`` must equal ``C_s`` or be 1), or an argument is malformed.
    """

    mask: Tensor
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        target_shape: Sequence[int],
        source_shape: Sequence[int],
        resize: int | Sequence[int] | None = None,
        resize_mode: str = "bilinear",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        activation: Activation = "sigmoid",
    ) -> None:
        super().__init__()
        self.target_shape = _shape3("target_shape", target_shape)
        self.source_shape = _shape3("source_shape", source_shape)
        c_t, h_t, w_t = self.target_shape
        c_s, h_s, w_s = self.source_shape
        if c_t != c_s and c_t != 1:
            raise ValueError(
                f"Channel counts do not fit: target_shape has {c_t} channels, source_shape has {c_s}. "
                "Expected the same count, or 1 target channel (repeated to every source channel). "
                "HINT: convert the target images, or check `target_shape`/`source_shape`."
            )
        if resize is None:
            self.placed_size: tuple[int, int] = (h_t, w_t)
        else:
            size = (int(resize), int(resize)) if isinstance(resize, int) else tuple(int(r) for r in resize)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"`resize` must be an int or (height, width) > 0, got {resize!r}.")
            self.placed_size = size  # type: ignore[assignment]
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {RESIZE_MODES}, got {resize_mode!r}.")
        self.resize = resize is not None and self.placed_size != (h_t, w_t)
        self.resize_mode = resize_mode
        h_p, w_p = self.placed_size
        if h_p > h_s or w_p > w_s:
            raise ValueError(
                f"The target image ({h_p}x{w_p} after resize={resize!r}) is larger than the source input "
                f"({h_s}x{w_s}). Expected target <= source in both dimensions. HINT: pass a smaller "
                "`resize`, or a larger `source_shape` (the source resolution)."
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {activation!r}.")
        self.activation: Activation = activation
        self.top, self.left = (h_s - h_p) // 2, (w_s - w_p) // 2
        self.register_buffer("mean", _per_channel("mean", mean, c_s, 0.0))
        self.register_buffer("std", _per_channel("std", std, c_s, 1.0))
        self.register_buffer("mask", self._make_mask())
        self.theta = nn.Parameter(torch.zeros(self.source_shape))

    def _make_mask(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def M(self) -> Tensor:
        """The prompt mask ``M`` (``[C_s, H_s, W_s]``, 0/1), alias of the ``mask`` buffer."""
        return self.mask

    @property
    def num_prompt_parameters(self) -> int:
        """Number of entries of ``theta`` that reach the output (``mask.sum()``)."""
        return int(self.mask.sum().item())

    def phi(self, theta: Tensor) -> Tensor:
        """The prompt activation ``phi(theta)``."""
        if self.activation == "sigmoid":
            return torch.sigmoid(theta)
        if self.activation == "tanh":
            return torch.tanh(theta)
        return theta

    def phi_prime(self, theta: Tensor | None = None) -> Tensor:
        """The derivative ``phi'(theta)`` (elementwise; ``theta`` defaults to the current parameter)."""
        theta = self.theta.detach() if theta is None else theta
        if self.activation == "sigmoid":
            s = torch.sigmoid(theta)
            return s * (1 - s)
        if self.activation == "tanh":
            return 1 - torch.tanh(theta) ** 2
        return torch.ones_like(theta)

    def prompt(self) -> Tensor:
        """The additive prompt in pixel space, ``phi(theta) * M`` (``[C_s, H_s, W_s]``)."""
        return self.phi(self.theta) * self.mask

    def jacobian_diag(self) -> Tensor:
        """Diagonal of ``du/dtheta`` (the same for every sample): ``M * phi'(theta) / std``, ``[C_s, H_s, W_s]``."""
        return self.mask * self.phi_prime() / self.std

    def check_input(self, x: Tensor) -> None:
        """Raise unless ``x`` is a float batch ``[N, *target_shape]`` (prompts are defined for images only).

        Raises:
            TypeError: ``x`` is not floating-point (integer token ids, or uint8 images).
            ValueError: ``x`` does not have the shape ``[N, *target_shape]``.
        """
        if not torch.is_floating_point(x):
            raise TypeError(
                f"{type(self).__name__} expects float target images [N, "
                f"{', '.join(map(str, self.target_shape))}] (pixel values in [0, 1]), got a {x.dtype} tensor of "
                f"shape {list(x.shape)}. Prompts are defined for image inputs; token-sequence inputs (integer "
                "token ids) are not supported. HINT: convert uint8 images with `x.float() / 255`."
            )
        if x.dim() != 4 or tuple(x.shape[1:]) != self.target_shape:
            raise ValueError(
                f"{type(self).__name__} expects target images of shape [N, {', '.join(map(str, self.target_shape))}]"
                f", got {list(x.shape)}. HINT: `target_shape` must describe one target image (C, H, W)."
            )

    def place(self, x: Tensor) -> Tensor:
        """Resize, repeat channels and zero-pad target images into the source resolution (pixel space)."""
        self.check_input(x)
        if self.resize:
            kwargs = {"align_corners": False} if self.resize_mode in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=self.placed_size, mode=self.resize_mode, **kwargs)
        c_s, h_s, w_s = self.source_shape
        if x.shape[1] != c_s:
            x = x.expand(-1, c_s, -1, -1)
        h_p, w_p = self.placed_size
        pad = (self.left, w_s - w_p - self.left, self.top, h_s - h_p - self.top)
        return F.pad(x, pad, value=0.0) if any(pad) else x

    def forward(self, x: Tensor) -> Tensor:
        """``T_theta(x)``: the normalised, prompted source input ``[N, C_s, H_s, W_s]``."""
        return (self.place(x) + self.prompt() - self.mean) / self.std

    def extra_repr(self) -> str:
        return (
            f"target_shape={self.target_shape}, source_shape={self.source_shape}, placed_size="
            f"{self.placed_size}, activation={self.activation!r}, prompt_parameters={self.num_prompt_parameters}"
        )


class PaddingPrompt(InputTransform):
    """ILM-VP padding prompt: the target image in the centre, ``sigmoid(theta)`` on the border, ``theta = 0``.

    ``M`` is 1 on the source-resolution border around the (resized) target image and 0 on the image, so the
    image pixels pass unchanged. ILM-VP (Chen et al., CVPR 2023) pads 32 px images (CIFAR-10/100, SVHN,
    GTSRB) straight into 224 px, without resizing; only the larger-image datasets are resized to 128 px
    before padding into 224 px. Arguments as :class:`InputTransform` (``activation`` defaults to ``"sigmoid"``).

    Raises:
        ValueError: also when the placed image fills the whole source input (no border left to train).

    Example:
        >>> import torch
        >>> p = PaddingPrompt((1, 8, 8), (1, 16, 16), resize=12)
        >>> p.placed_size, p.num_prompt_parameters
        ((12, 12), 112)
        >>> bool((p.place(torch.ones(1, 1, 8, 8)) * p.mask).sum() == 0)  # the image is outside the mask
        True
    """

    def __init__(
        self,
        target_shape: Sequence[int],
        source_shape: Sequence[int],
        resize: int | Sequence[int] | None = None,
        resize_mode: str = "bilinear",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        activation: Activation = "sigmoid",
    ) -> None:
        super().__init__(target_shape, source_shape, resize, resize_mode, mean, std, activation)
        if self.num_prompt_parameters == 0:
            raise ValueError(
                f"PaddingPrompt has no border to train: the placed target ({self.placed_size}) fills the source "
                f"input {self.source_shape[1:]}. HINT: pass a smaller `resize`, or use FullPrompt."
            )

    def _make_mask(self) -> Tensor:
        c_s, h_s, w_s = self.source_shape
        h_p, w_p = self.placed_size
        mask = torch.ones(c_s, h_s, w_s)
        mask[:, self.top : self.top + h_p, self.left : self.left + w_p] = 0.0
        return mask


class FullPrompt(InputTransform):
    """Full-image additive prompt: ``phi(theta)`` added to every pixel of the source input (``M = 1``).

    With ``activation="tanh"`` (Elsayed et al. 2019) or ``"identity"`` and ``theta = 0`` the prompt starts as
    zero, so the source first sees the plain (placed) target image. Arguments as :class:`InputTransform`
    (``activation`` defaults to ``"tanh"``).

    Example:
        >>> import torch
        >>> p = FullPrompt((1, 8, 8), (1, 8, 8))
        >>> x = torch.rand(2, 1, 8, 8)
        >>> torch.equal(p(x), x)  # zero prompt and no normalisation at init
        True
    """

    def __init__(
        self,
        target_shape: Sequence[int],
        source_shape: Sequence[int],
        resize: int | Sequence[int] | None = None,
        resize_mode: str = "bilinear",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        activation: Activation = "tanh",
    ) -> None:
        super().__init__(target_shape, source_shape, resize, resize_mode, mean, std, activation)

    def _make_mask(self) -> Tensor:
        return torch.ones(self.source_shape)
