"""Stitching layers between a sender's activation and a receiver's layer, and their choice from shapes.

- Bansal, Nakkiran, Barak, "Revisiting Model Stitching to Compare Neural Representations", NeurIPS 2021:
  ``BN -> 1x1 conv -> BN`` between conv maps of equal size (:class:`ConvStitch`), ``BN1d -> Linear ->
  BN1d`` between pooled vectors (:class:`LinearStitch`).
- Hernandez, Dangovski, Lu, Soljacic, "Model Stitching: Looking For Functional Similarity Between
  Representations", arXiv 2303.11277: shape adapters when sizes differ: a conv with kernel = stride = the
  size ratio when the sender is spatially larger (:class:`DownsampleStitch`), nearest upsampling then a
  1x1 conv when it is smaller (:class:`UpsampleStitch`), flatten + linear into a head
  (:class:`FlattenLinearStitch`). The paper's adapters are bare (``make_stitch(adapter="paper")``: no
  BatchNorm anywhere, the configuration the stitching sweep uses by default). ``adapter="hernandez"`` wraps
  the conv adapters in BatchNorm like Bansal's stitch (an option, not the paper's): BN re-normalises
  whatever the sender emits, which stabilises short trainings but also makes random-weight senders easy
  to use, the very thing the paper's controls exist to rule out.
- All stitch BatchNorms keep cumulative running statistics (``momentum=None``): a stitch trains for few
  steps, and an exponential average started at (0, 1) is still far off when the stitch is evaluated.
- Csiszarik et al., NeurIPS 2021: a training-free affine stitch fitted in closed form by least squares
  (:class:`AffineStitch`).

Shapes are per sample: ``(C, H, W)`` for conv maps, ``(D,)`` for vectors.

Example:
    >>> import torch
    >>> choose_stitch((16, 8, 8), (32, 4, 4))
    'downsample'
    >>> stitch = make_stitch((16, 8, 8), (32, 4, 4))
    >>> stitch(torch.zeros(2, 16, 8, 8)).shape
    torch.Size([2, 32, 4, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_reuse.functional.stitching import channel_rows, least_squares_affine

StitchKind = Literal["conv1x1", "downsample", "upsample", "flatten_linear", "linear"]
STITCH_KINDS: tuple[str, ...] = ("conv1x1", "downsample", "upsample", "flatten_linear", "linear")
Adapter = Literal["paper", "hernandez", "pooled"]
ADAPTERS: tuple[str, ...] = ("paper", "hernandez", "pooled")


def _bn2d(channels: int) -> nn.BatchNorm2d:
    # Cumulative (not exponential) running statistics: a stitch trains for few steps, and an exponential
    # average started at (0, 1) would still be far from the data's statistics when it is evaluated.
    return nn.BatchNorm2d(channels, momentum=None)


class ConvStitch(nn.Sequential):
    """Bansal's stitch between conv maps of the same spatial size: ``BN2d -> Conv1x1 -> BN2d``."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        super().__init__(
            _bn2d(in_channels) if batch_norm else nn.Identity(),
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            _bn2d(out_channels) if batch_norm else nn.Identity(),
        )


class LinearStitch(nn.Sequential):
    """Bansal's stitch between pooled vectors: ``BN1d -> Linear -> BN1d``."""

    def __init__(self, in_features: int, out_features: int, batch_norm: bool = True) -> None:
        super().__init__(
            nn.BatchNorm1d(in_features, momentum=None) if batch_norm else nn.Identity(),
            nn.Linear(in_features, out_features),
            nn.BatchNorm1d(out_features, momentum=None) if batch_norm else nn.Identity(),
        )


class DownsampleStitch(nn.Sequential):
    """Hernandez's adapter for a spatially larger sender: a conv with ``kernel = stride = factor``."""

    def __init__(
        self, in_channels: int, out_channels: int, factor: int | tuple[int, int], batch_norm: bool = True
    ) -> None:
        super().__init__(
            _bn2d(in_channels) if batch_norm else nn.Identity(),
            nn.Conv2d(in_channels, out_channels, kernel_size=factor, stride=factor),
            _bn2d(out_channels) if batch_norm else nn.Identity(),
        )


class UpsampleStitch(nn.Sequential):
    """Hernandez's adapter for a spatially smaller sender: nearest upsampling by ``factor``, then a 1x1 conv."""

    def __init__(
        self, in_channels: int, out_channels: int, factor: int | tuple[int, int], batch_norm: bool = True
    ) -> None:
        scale = tuple(float(f) for f in factor) if isinstance(factor, tuple) else float(factor)
        super().__init__(
            _bn2d(in_channels) if batch_norm else nn.Identity(),
            nn.Upsample(scale_factor=scale, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            _bn2d(out_channels) if batch_norm else nn.Identity(),
        )


class FlattenLinearStitch(nn.Sequential):
    """Hernandez's adapter from a conv map ``(C, H, W)`` into a vector input (a head): flatten + linear."""

    def __init__(self, in_shape: Sequence[int], out_features: int) -> None:
        in_features = 1
        for s in in_shape:
            in_features *= int(s)
        super().__init__(nn.Flatten(1), nn.Linear(in_features, out_features))


class PooledDownsampleStitch(nn.Sequential):
    """Low-capacity adapter for a larger sender: average-pool by ``factor``, then Bansal's BN-1x1 conv-BN.

    Unlike :class:`DownsampleStitch` it cannot mix pixels: it only maps channels, like Bansal's stitch.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int | tuple[int, int]) -> None:
        super().__init__(
            _bn2d(in_channels),
            nn.AvgPool2d(factor),
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            _bn2d(out_channels),
        )


class PooledLinearStitch(nn.Sequential):
    """Low-capacity adapter from a conv map into a vector: global average pool, then BN1d-Linear-BN1d."""

    def __init__(self, in_channels: int, out_features: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), *LinearStitch(in_channels, out_features))


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(
            f"`{name}` must be a per-sample shape (C, H, W) or (D,); got {shape}. "
            "HINT: drop the batch dimension (use `tensor.shape[1:]`)."
        )
    return shape


def _factor(big: tuple[int, int], small: tuple[int, int]) -> tuple[int, int]:
    if any(b % s for b, s in zip(big, small)):
        raise ValueError(
            f"Spatial sizes {big} and {small} are not integer multiples of each other, so no "
            "kernel = stride adapter fits. HINT: choose another layer pair or pass your own `stitch` module."
        )
    return big[0] // small[0], big[1] // small[1]


def choose_stitch(sender_shape: Sequence[int], receiver_shape: Sequence[int]) -> StitchKind:
    """Name of the adapter that maps a sender activation of ``sender_shape`` to ``receiver_shape``.

    ``conv1x1`` (same spatial size), ``downsample`` (sender larger), ``upsample`` (sender smaller),
    ``flatten_linear`` (conv map into a vector) or ``linear`` (vector to vector).

    >>> choose_stitch((8, 4, 4), (16, 8, 8)), choose_stitch((8, 4, 4), (10,)), choose_stitch((8,), (10,))
    ('upsample', 'flatten_linear', 'linear')
    """
    s, r = _check_shape(sender_shape, "sender_shape"), _check_shape(receiver_shape, "receiver_shape")
    if len(s) == 1 and len(r) == 1:
        return "linear"
    if len(r) == 1:
        return "flatten_linear"
    if len(s) == 1:
        raise ValueError(
            f"Cannot stitch a vector sender {s} into a conv-map receiver {r}: no spatial layout to restore. "
            "HINT: stitch into a receiver layer after its pooling, or pass your own `stitch` module."
        )
    (sh, sw), (rh, rw) = s[1:], r[1:]
    if (sh, sw) == (rh, rw):
        return "conv1x1"
    if sh >= rh and sw >= rw:
        _factor((sh, sw), (rh, rw))
        return "downsample"
    if sh <= rh and sw <= rw:
        _factor((rh, rw), (sh, sw))
        return "upsample"
    raise ValueError(
        f"Sender spatial size {(sh, sw)} is larger in one dimension and smaller in the other than the "
        f"receiver's {(rh, rw)}. HINT: pass your own `stitch` module."
    )


def make_stitch(
    sender_shape: Sequence[int],
    receiver_shape: Sequence[int],
    kind: StitchKind | Literal["auto"] = "auto",
    adapter: Adapter = "hernandez",
) -> nn.Module:
    """Build the trainable stitch for the given per-sample shapes (``kind="auto"``: :func:`choose_stitch`).

    ``adapter="paper"``: Hernandez et al.'s learned adapters as in the paper, bare (a 1x1 conv, a kernel =
    stride conv down, upsample + 1x1 conv up, flatten + linear into a head, a linear map between vectors; no
    BatchNorm). ``adapter="hernandez"``: the same adapters wrapped in Bansal's BatchNorms.
    ``adapter="pooled"`` replaces the down and head adapters by parameter-free average pooling followed by
    Bansal's channel-only stitch (:class:`PooledDownsampleStitch`, :class:`PooledLinearStitch`): less
    capacity, so less room for the stitch to solve the task by itself.

    >>> make_stitch((8,), (4,))
    LinearStitch(
      (0): BatchNorm1d(8, ...)
      (1): Linear(in_features=8, out_features=4, bias=True)
      (2): BatchNorm1d(4, ...)
    )
    """
    s, r = _check_shape(sender_shape, "sender_shape"), _check_shape(receiver_shape, "receiver_shape")
    auto = choose_stitch(s, r)
    if kind == "auto":
        kind = auto
    elif kind not in STITCH_KINDS:
        raise ValueError(f"`kind` must be 'auto' or one of {STITCH_KINDS}; got {kind!r}.")
    elif kind != auto:
        raise ValueError(
            f"`kind={kind!r}` does not fit sender shape {s} and receiver shape {r}; these shapes need "
            f"{auto!r}. HINT: use kind='auto'."
        )
    if adapter not in ADAPTERS:
        raise ValueError(
            f"`adapter` must be one of {ADAPTERS}; got {adapter!r}. HINT: 'paper' is the paper's bare adapter."
        )
    bn = adapter != "paper"
    if kind == "linear":
        return LinearStitch(s[0], r[0], batch_norm=bn)
    if kind == "flatten_linear":
        return PooledLinearStitch(s[0], r[0]) if adapter == "pooled" else FlattenLinearStitch(s, r[0])
    if kind == "conv1x1":
        return ConvStitch(s[0], r[0], batch_norm=bn)
    if kind == "downsample":
        if adapter == "pooled":
            return PooledDownsampleStitch(s[0], r[0], _factor(s[1:], r[1:]))
        return DownsampleStitch(s[0], r[0], _factor(s[1:], r[1:]), batch_norm=bn)
    return UpsampleStitch(s[0], r[0], _factor(r[1:], s[1:]), batch_norm=bn)


class AffineStitch(nn.Module):
    """Training-free stitch: a fixed resampling to the receiver's size, then an affine map fitted in closed form.

    Conv maps of the same size get a 1x1 affine map (the same map on every pixel); a larger sender is first
    average-pooled by the size ratio, a smaller one nearest-upsampled; a conv map into a vector is
    flattened. Call :meth:`fit` with paired activations before use (Csiszarik et al., NeurIPS 2021).

    >>> x = torch.randn(20, 3, 4, 4)
    >>> stitch = AffineStitch((3, 4, 4), (3, 4, 4)).fit(x, 2 * x + 1)
    >>> bool(torch.allclose(stitch(x), 2 * x + 1, atol=1e-4))
    True
    """

    def __init__(self, sender_shape: Sequence[int], receiver_shape: Sequence[int]) -> None:
        super().__init__()
        self.sender_shape = _check_shape(sender_shape, "sender_shape")
        self.receiver_shape = _check_shape(receiver_shape, "receiver_shape")
        self.kind = choose_stitch(self.sender_shape, self.receiver_shape)
        d_in = self.sender_shape[0]
        if self.kind == "flatten_linear":
            d_in = int(torch.tensor(self.sender_shape).prod())
        d_out = self.receiver_shape[0]
        self.register_buffer("weight", torch.zeros(d_out, d_in))
        self.register_buffer("bias", torch.zeros(d_out))
        self.register_buffer("fitted", torch.tensor(False))

    def resample(self, x: Tensor) -> Tensor:
        """The fixed, parameter-free part: bring ``x`` to the receiver's spatial size (or flatten it)."""
        if self.kind == "downsample":
            return F.avg_pool2d(x, _factor(self.sender_shape[1:], self.receiver_shape[1:]))
        if self.kind == "upsample":
            return F.interpolate(x, size=self.receiver_shape[1:], mode="nearest")
        if self.kind == "flatten_linear":
            return x.flatten(1)
        return x

    @torch.no_grad()
    def fit(self, sender_activation: Tensor, receiver_activation: Tensor, ridge: float = 0.0) -> AffineStitch:
        """Least-squares fit on paired activations ``[N, *sender_shape]`` and ``[N, *receiver_shape]``."""
        x = self.resample(sender_activation)
        w, b = least_squares_affine(channel_rows(x), channel_rows(receiver_activation), ridge=ridge)
        self.weight.copy_(w)
        self.bias.copy_(b)
        self.fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.fitted):
            raise RuntimeError("AffineStitch is used before `fit(sender_activation, receiver_activation)`.")
        x = self.resample(x)
        if x.dim() == 2:
            return F.linear(x, self.weight, self.bias)
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)
