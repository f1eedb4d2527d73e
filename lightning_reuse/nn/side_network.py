"""Additive fine-tuning blocks: small side networks ``g`` and the wrapper ``F(x) = f(x) + g(h(x))``.

Sohn, Kwon, An and Lee, "Memorization Capacity for Additive Fine-Tuning with Small ReLU Networks",
UAI 2024 (arXiv 2408.00359): a frozen pre-trained ``f`` plus a small trainable ReLU network ``g``; ``g``
reads the input ``x`` or the output ``h(x)`` of a named layer of ``f``. The last layer of every side
network built here is zero-initialised, so ``F == f`` exactly before the first optimizer step.

Example:
    >>> import torch
    >>> from lightning_reuse.samples import SmallCNN
    >>> base = SmallCNN(width=4).requires_grad_(False)
    >>> x = torch.rand(3, 1, 8, 8)
    >>> model = AdditiveModel.from_base(base, x, width=6, depth=3, layer="pool")
    >>> model.side.hidden_widths, model.side.num_neurons
    ((6, 6), 12)
    >>> torch.equal(model(x), base(x))  # exactly the base at step 0
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.nn.batch import forward_inputs, output_tensor
from lightning_reuse.nn.fingerprint import module_fingerprint
from lightning_reuse.nn.layers import capture_output, get_layer
from lightning_reuse.nn.parameter_count import count_parameters

SideKind = Literal["mlp", "conv"]


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be an integer >= 1, got {value!r}. HINT: the side network needs at least one "
            "neuron per hidden layer (see `lightning_reuse.functional.fine_tuning_capacity` for a size)."
        )


def _hidden_widths(width: int | Sequence[int], depth: int) -> tuple[int, ...]:
    if depth not in (2, 3):
        raise ValueError(
            f"`depth` must be 2 or 3 (layers of weights: one or two hidden ReLU layers), got {depth!r}."
        )
    widths = tuple(width) if isinstance(width, Sequence) else (width,) * (depth - 1)
    if len(widths) != depth - 1:
        raise ValueError(
            f"`width` must be one int or {depth - 1} ints for depth={depth}, got {width!r}. "
            "HINT: depth 3 takes `width=(a, b)` or one int used for both hidden layers."
        )
    for i, w in enumerate(widths):
        _check_positive(f"width[{i}]", w)
    return widths


class SideMLP(nn.Module):
    """ReLU MLP side network ``g`` with ``depth - 1`` hidden layers and a zero-initialised output layer.

    The input is flattened from dimension 1. ``num_neurons`` is the paper's ``m`` (hidden ReLUs).

    Args:
        in_features: size of the (flattened) side input.
        out_features: size of the base model's output.
        width: hidden width ``m`` (depth 2) or widths ``(a, b)`` (depth 3); one int is used for each layer.
        depth: layers of weights, 2 or 3 (the paper's 2- and 3-layer networks).
        zero_init: zero the last layer (weights and bias) so ``g == 0`` at step 0.

    Example:
        >>> g = SideMLP(4, 3, width=5)
        >>> bool((g(torch.randn(2, 4)) == 0).all()), g.num_neurons
        (True, 5)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int | Sequence[int] = 16,
        depth: int = 2,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("in_features", in_features)
        _check_positive("out_features", out_features)
        self.hidden_widths = _hidden_widths(width, depth)
        self.in_features, self.out_features, self.depth = in_features, out_features, depth
        layers: list[nn.Module] = [nn.Flatten(1)]
        prev = in_features
        for w in self.hidden_widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        self.out = nn.Linear(prev, out_features)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.body = nn.Sequential(*layers)

    @property
    def num_neurons(self) -> int:
        return sum(self.hidden_widths)

    @property
    def config(self) -> dict[str, Any]:
        """Plain values that rebuild this architecture with :func:`build_side_network`."""
        return {
            "kind": "mlp",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "width": list(self.hidden_widths),
            "depth": self.depth,
        }

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() < 2 or math.prod(h.shape[1:]) != self.in_features:
            raise ShapeMismatchError(
                f"SideMLP expects inputs of shape [batch, ...] with {self.in_features} features per sample, "
                f"got {tuple(h.shape)}. HINT: build it with `AdditiveModel.from_base(base, example_input, ...)`"
                " so sizes are read from the base."
            )
        return self.out(self.body(h))


class SideConv(nn.Module):
    """Convolutional side network for image-shaped inputs ``[B, C, H, W]``.

    ``depth - 1`` blocks ``conv(k x k, same padding)-ReLU`` of ``width`` channels, global average pool,
    zero-initialised linear output. ``num_neurons`` counts hidden channels.

    Example:
        >>> g = SideConv(1, 10, width=4)
        >>> out = g(torch.rand(2, 1, 8, 8))
        >>> out.shape, bool((out == 0).all())
        (torch.Size([2, 10]), True)
    """

    def __init__(
        self,
        in_channels: int,
        out_features: int,
        width: int | Sequence[int] = 8,
        depth: int = 2,
        kernel_size: int = 3,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_features", out_features)
        _check_positive("kernel_size", kernel_size)
        self.hidden_widths = _hidden_widths(width, depth)
        self.in_channels, self.out_features = in_channels, out_features
        self.depth, self.kernel_size = depth, kernel_size
        layers: list[nn.Module] = []
        prev = in_channels
        for w in self.hidden_widths:
            layers += [nn.Conv2d(prev, w, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            prev = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(prev, out_features)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def num_neurons(self) -> int:
        return sum(self.hidden_widths)

    @property
    def config(self) -> dict[str, Any]:
        """Plain values that rebuild this architecture with :func:`build_side_network`."""
        return {
            "kind": "conv",
            "in_channels": self.in_channels,
            "out_features": self.out_features,
            "width": list(self.hidden_widths),
            "depth": self.depth,
            "kernel_size": self.kernel_size,
        }

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() != 4 or h.shape[1] != self.in_channels:
            raise ShapeMismatchError(
                f"SideConv expects [batch, {self.in_channels}, H, W] inputs, got {tuple(h.shape)}. "
                "HINT: use kind='mlp' for flat features."
            )
        return self.out(self.body(h))


def build_side_network(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a side network from its ``config`` (``kind`` is ``"mlp"`` or ``"conv"``).

    >>> build_side_network(SideMLP(4, 2, width=3).config).config["width"]
    [3]
    """
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind == "mlp":
        return SideMLP(**cfg)
    if kind == "conv":
        return SideConv(**cfg)
    raise ValueError(f"Side network config needs `kind` in ('mlp', 'conv'), got {kind!r} in {dict(config)}.")


class ShapeMismatchError(ValueError):
    """The side network's input or output does not fit the base model."""


def base_fingerprint(module: nn.Module) -> str:
    """Deprecated alias of :func:`lightning_reuse.nn.module_fingerprint` (same hash); goes in the next release."""
    warnings.warn(
        "`base_fingerprint` is deprecated and goes in the next release. HINT: use "
        "`lightning_reuse.nn.module_fingerprint` (the same hash).",
        DeprecationWarning,
        stacklevel=2,
    )
    return module_fingerprint(module)


def _renamed_feature(layer: str | None, feature: str | None, who: str) -> str | None:
    """Resolve the deprecated ``feature`` argument (now ``layer``), with a :class:`DeprecationWarning`."""
    if feature is None:
        return layer
    warnings.warn(
        f"{who}: `feature` is deprecated and goes in the next release. HINT: pass `layer={feature!r}`.",
        DeprecationWarning,
        stacklevel=3,
    )
    return feature if layer is None else layer


def freeze_base(base: nn.Module, side: nn.Module) -> int:
    """Freeze ``base`` in place (``requires_grad_(False)``, eval mode); return how many values were trainable.

    Policy: a base with trainable parameters is frozen and a :class:`LightningReuseWarning` says so (the
    caller's object is modified); freeze it yourself first (``base.requires_grad_(False)``) to silence it.
    Parameters shared between base and side are refused: freezing them would freeze the side too.
    """
    side_ids = {id(p) for p in side.parameters()}
    shared = [n for n, p in base.named_parameters() if id(p) in side_ids]
    if shared:
        raise ValueError(
            f"The side network shares {len(shared)} parameter(s) with the base (e.g. {shared[:3]}); additive "
            "fine-tuning needs a separate side network. HINT: build a fresh one with `SideMLP`/`SideConv`."
        )
    trainable = count_parameters(base).trainable
    if trainable:
        warnings.warn(
            f"The base model had {trainable:,} trainable parameter values; additive fine-tuning froze them "
            "in place (requires_grad=False, eval mode). HINT: call `base.requires_grad_(False)` before "
            "wrapping to silence this warning.",
            LightningReuseWarning,
            stacklevel=3,
        )
    base.requires_grad_(False)
    base.eval()
    return trainable


def _base_output(base: nn.Module, x: Any) -> Tensor:
    """The base's output tensor for batch inputs ``x`` (logits of an output object, first of a tuple)."""
    return output_tensor(forward_inputs(base, x), keys=("logits", "last_hidden_state"), who="AdditiveModel")


def check_side_input(h: Any, layer: str | None, base: nn.Module) -> None:
    """Refuse a non-float side input (token ids): the side network needs a float feature.

    Raises:
        TypeError: ``h`` is an integer or boolean tensor; the message names embedding layers of ``base``.
    """
    if not isinstance(h, Tensor) or h.is_floating_point() or h.is_complex():
        return
    source = "the input" if layer is None else f"the output of layer {layer!r}"
    embeddings = [n for n, m in base.named_modules() if isinstance(m, nn.Embedding)]
    example = embeddings[0] if embeddings else "<an embedding or hidden layer>"
    known = f" (embedding layers of the base: {embeddings[:5]})" if embeddings else ""
    raise TypeError(
        f"The side network reads {source}, a {h.dtype} tensor of shape {list(h.shape)} (token ids?); it needs "
        f"a float feature. HINT: pass `layer=` naming an embedding or hidden layer of the base whose output is "
        f"float, e.g. layer={example!r}{known}."
    )


@torch.no_grad()
def _trace_side_input(base: nn.Module, example_input: Any, layer: str | None) -> tuple[Tensor, Tensor]:
    """``(side input, base output)`` of one eval-mode forward pass of ``base`` (its mode is restored).

    ``example_input`` is a batch's model inputs: a tensor, a tuple or a mapping (``base(**inputs)``).
    """
    if layer is not None:
        get_layer(base, layer)  # raises LayerNotFoundError listing valid names
    was_training = base.training
    base.eval()
    try:
        if layer is None:
            return example_input, _base_output(base, example_input)
        with capture_output(base, layer) as store:
            out = _base_output(base, example_input)
        return output_tensor(store["output"], who="AdditiveModel"), out
    finally:
        base.train(was_training)


class AdditiveModel(nn.Module):
    """``F(x) = base(x) + side(x)`` or ``base(x) + side(h(x))`` with a frozen base kept in eval mode.

    Args:
        base: the pre-trained model ``f``; frozen in place (see :func:`freeze_base` for the policy).
        side: the trainable side network ``g``; its output must have the base output's shape.
        layer: name of a layer of ``base`` (``named_modules``) whose output ``h(x)`` ``g`` reads; ``None``:
            the input.
        feature: deprecated spelling of ``layer`` (goes in the next release).

    ``train(mode)`` never puts the base in training mode, so BatchNorm statistics and dropout of the base
    stay as they were. The base runs without autograd unless the input itself requires grad.
    """

    def __init__(
        self, base: nn.Module, side: nn.Module, layer: str | None = None, *, feature: str | None = None
    ) -> None:
        super().__init__()
        layer = _renamed_feature(layer, feature, "AdditiveModel")
        if not isinstance(base, nn.Module) or not isinstance(side, nn.Module):
            raise TypeError(
                f"`base` and `side` must be torch.nn.Module, got {type(base).__name__} and "
                f"{type(side).__name__}."
            )
        if layer is not None:
            get_layer(base, layer)  # raises LayerNotFoundError listing valid names
        freeze_base(base, side)
        self.base, self.side, self.layer = base, side, layer

    @classmethod
    def from_base(
        cls,
        base: nn.Module,
        example_input: Any,
        width: int | Sequence[int] = 16,
        depth: int = 2,
        layer: str | None = None,
        kind: SideKind = "mlp",
        *,
        feature: str | None = None,
    ) -> AdditiveModel:
        """Build the side network with sizes read from one forward pass of ``base`` on ``example_input``.

        ``layer`` is the base layer the side network reads (``None``: the input); ``feature`` is its deprecated
        spelling.
        """
        layer = _renamed_feature(layer, feature, "AdditiveModel.from_base")
        if kind not in ("mlp", "conv"):
            raise ValueError(f"`kind` must be 'mlp' or 'conv', got {kind!r}.")
        h, out = _trace_side_input(base, example_input, layer)
        check_side_input(h, layer, base)
        if out.dim() != 2:
            raise ShapeMismatchError(
                f"The base output must be [batch, outputs] for a built side network, got {tuple(out.shape)}."
            )
        if kind == "mlp":
            side: nn.Module = SideMLP(math.prod(h.shape[1:]), out.shape[1], width=width, depth=depth)
        else:
            if h.dim() != 4:
                raise ShapeMismatchError(
                    f"kind='conv' needs an image-shaped side input [B, C, H, W], got {tuple(h.shape)} "
                    f"(layer={layer!r}). HINT: use kind='mlp'."
                )
            side = SideConv(h.shape[1], out.shape[1], width=width, depth=depth)
        return cls(base, side, layer=layer)

    @override
    def train(self, mode: bool = True) -> AdditiveModel:
        super().train(mode)
        self.base.eval()
        return self

    def side_input_and_base_output(self, x: Any) -> tuple[Tensor, Tensor]:
        """Run the frozen base once; return ``(side input, base output)``.

        ``x`` is what the batch holds for the model: a tensor, a tuple (``base(*x)``) or a mapping
        (``base(**x)``, e.g. ``input_ids`` and ``attention_mask``); an output object or tuple is read by
        :func:`~lightning_reuse.nn.batch.output_tensor` (``logits`` first).
        """
        grad = isinstance(x, Tensor) and x.requires_grad
        with torch.set_grad_enabled(torch.is_grad_enabled() and grad):
            if self.layer is None:
                if not isinstance(x, Tensor):
                    raise TypeError(
                        f"The side network reads the input itself (layer=None), but the batch inputs are a "
                        f"{type(x).__name__}. HINT: pass `layer=` naming a float hidden or embedding layer."
                    )
                return x, _base_output(self.base, x)
            with capture_output(self.base, self.layer, detach=not grad) as store:
                out = _base_output(self.base, x)
            return output_tensor(store["output"], who="AdditiveModel"), out

    def parts(self, x: Any) -> tuple[Tensor, Tensor]:
        """Return ``(base(x), side(...))`` separately (the output is their sum)."""
        h, out = self.side_input_and_base_output(x)
        check_side_input(h, self.layer, self.base)
        delta = self.side(h)
        if delta.shape != out.shape:
            raise ShapeMismatchError(
                f"Side network output {tuple(delta.shape)} does not match base output {tuple(out.shape)}. "
                f"HINT: the side network's output size must be the base's ({out.shape[1:]})."
            )
        return out, delta

    def forward(self, x: Any = None, **inputs: Any) -> Tensor:
        out, delta = self.parts(x if not inputs else inputs)
        return out + delta
