"""A stitched network: sender up to a named layer -> stitch -> receiver from a named layer; cut-point discovery.

Model stitching (Bansal, Nakkiran, Barak, NeurIPS 2021; Hernandez, Dangovski, Lu, Soljacic, arXiv
2303.11277) asks whether the sender's representation at layer ``i`` can stand in for the receiver's at
layer ``j`` once a small stitch maps one to the other. Layers are addressed by ``named_modules`` names.

How the receiver runs "from layer j on" for any architecture: a forward hook on layer ``j`` replaces its
output with the stitched activation while the receiver runs on a zero input. This is general (residual
blocks, custom ``forward`` code) but costs one forward pass of the receiver's layers before ``j`` (no
autograd graph is built there: nothing upstream requires grad). The sender stops early: a hook raises
once layer ``i`` has produced its output, so the rest of the sender never runs.

Choose block outputs as cut points: inside a residual block the skip path bypasses the layer, so
replacing that layer's output does not carry the whole representation. :func:`stitchable_points`
checks this (``clean``): a cut is clean when the model's output depends on its input only through it.

Example:
    >>> import torch
    >>> from lightning_reuse.samples import SmallCNN
    >>> net = SmallCNN(width=4, depth=2).eval()
    >>> [(p.name, p.shape, p.clean) for p in stitchable_points(net, torch.randn(4, 1, 8, 8))][:3]
    [('block1.0', (4, 8, 8), True), ('block1.1', (4, 8, 8), True), ('block1', (4, 8, 8), True)]
    >>> stitched = StitchedModel(net, "block1", net, "block2", example_input=torch.randn(4, 1, 8, 8))
    >>> stitched(torch.randn(3, 1, 8, 8)).shape
    torch.Size([3, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_reuse.nn.layers import get_layer
from lightning_reuse.nn.stitch import STITCH_KINDS, make_stitch


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict):
        return next((v for v in out.values() if isinstance(v, Tensor)), None)
    return None


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


@dataclass(frozen=True)
class StitchPoint:
    """A layer where a model can be cut: its name, per-sample output shape and whether the cut is clean.

    ``clean`` is True when replacing this layer's output (on a different input) reproduces the model's
    output exactly, i.e. everything downstream flows through this layer (no skip path around it, not
    called twice); ``None`` when not checked.
    """

    name: str
    shape: tuple[int, ...]
    clean: bool | None = None


@torch.no_grad()
def stitchable_points(
    model: nn.Module, example_input: Tensor, check_cut: bool = True, max_depth: int | None = None
) -> list[StitchPoint]:
    """List the layers of ``model`` that output a tensor, in execution order, by tracing one batch.

    Args:
        model: any module; traced in eval mode (its mode is restored afterwards).
        example_input: one batch ``[N, ...]``; ``N >= 2`` recommended.
        check_cut: also test each cut for cleanliness (one extra forward pass per layer).
        max_depth: keep only names with at most this many dotted parts (``1``: top-level children).

    Returns:
        One :class:`StitchPoint` per layer that returned a tensor.
    """
    was_training = model.training
    model.eval()
    try:
        order, outputs, calls, reference = _trace(model, example_input, max_depth)
        other = _other_input(example_input) if check_cut else None
        points = []
        for name in order:
            clean = None
            if other is not None:
                clean = calls[name] == 1 and reference is not None
                if clean:
                    out = _first_tensor(run_with_replaced_output(model, name, other, outputs[name]))
                    clean = out is not None and torch.allclose(out, reference, rtol=1e-4, atol=1e-5)
            points.append(StitchPoint(name, tuple(outputs[name].shape[1:]), clean))
    finally:
        model.train(was_training)
    return points


def _trace(
    model: nn.Module, example_input: Tensor, max_depth: int | None
) -> tuple[list[str], dict[str, Tensor], dict[str, int], Tensor | None]:
    """One forward pass: layer names in execution order, their first tensor output, call counts, the output."""
    modules = {name: m for name, m in model.named_modules() if name}
    if max_depth is not None:
        modules = {n: m for n, m in modules.items() if n.count(".") < max_depth}
    order: list[str] = []
    outputs: dict[str, Tensor] = {}
    calls: dict[str, int] = {}

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            t = _first_tensor(out)
            if t is not None and name not in outputs:
                outputs[name] = t
                order.append(name)

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        reference = _first_tensor(model(example_input))
    finally:
        for h in handles:
            h.remove()
    return order, outputs, calls, reference


def _other_input(example_input: Tensor) -> Tensor:
    """A different input with the example's mean and spread (seeded): a clean cut makes it irrelevant."""
    g = torch.Generator(device="cpu").manual_seed(0)
    other = torch.randn(example_input.shape, generator=g).to(example_input)
    return other * example_input.float().std() + example_input.float().mean()


def layer_output(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` only until ``layer`` has produced its output, and return that output."""
    module = get_layer(model, layer)
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        t = _first_tensor(out)
        if t is None:
            raise TypeError(f"Layer {layer!r} returned {type(out).__name__}, not a tensor; cut elsewhere.")
        store["out"] = t
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "out" not in store:
        raise RuntimeError(f"Layer {layer!r} of {type(model).__name__} did not run in the forward pass.")
    return store["out"]


def run_with_replaced_output(model: nn.Module, layer: str, dummy_input: Tensor, activation: Tensor) -> Any:
    """Run ``model`` on ``dummy_input`` with the output of ``layer`` replaced by ``activation``.

    The result is what the model computes "from ``layer`` on" given ``activation``, provided the cut is
    clean (see :func:`stitchable_points`). The layers before the cut run on ``dummy_input`` (wasted work).
    """
    module = get_layer(model, layer)

    def hook(_m: nn.Module, _i: Any, out: Any) -> Tensor:
        t = _first_tensor(out)
        if t is None or t.shape[1:] != activation.shape[1:]:
            got = None if t is None else tuple(t.shape[1:])
            raise ValueError(
                f"Cannot inject an activation of shape {tuple(activation.shape[1:])} at layer {layer!r}, "
                f"which outputs {got}. HINT: check the stitch's output shape."
            )
        return activation

    handle = module.register_forward_hook(hook)
    try:
        return model(dummy_input)
    finally:
        handle.remove()


class StitchedModel(nn.Module):
    """``receiver[receiver_layer:](stitch(sender[:sender_layer](x)))`` with both halves frozen in eval mode.

    Args:
        sender: the model whose early part is reused (frozen, eval mode).
        sender_layer: name of the sender layer whose output is sent.
        receiver: the model whose late part is reused (frozen, eval mode); may be ``sender`` itself.
        receiver_layer: name of the receiver layer whose output the stitch replaces.
        stitch: an ``nn.Module``, or ``"auto"`` / one of ``STITCH_KINDS`` to build one from the traced
            shapes (needs ``example_input``).
        example_input: one batch used to trace both layers' output shapes.
        receiver_input_shape: per-sample input shape of the receiver (default: that of the sender input);
            the receiver runs on zeros of this shape with the cut layer's output replaced.
        adapter: ``"paper"`` (bare, the paper's), ``"hernandez"`` (BN-wrapped) or ``"pooled"`` (see
            :func:`lightning_reuse.nn.stitch.make_stitch`), used
            when the stitch is built from shapes.
        input_shape: per-sample input shape of the sender; without ``example_input``, shapes are traced
            on a zero batch of this shape (default: ``receiver_input_shape``).
    """

    def __init__(
        self,
        sender: nn.Module,
        sender_layer: str,
        receiver: nn.Module,
        receiver_layer: str,
        stitch: nn.Module | Literal["auto"] | str = "auto",
        example_input: Tensor | None = None,
        receiver_input_shape: Sequence[int] | None = None,
        adapter: Literal["paper", "hernandez", "pooled"] = "hernandez",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        get_layer(sender, sender_layer), get_layer(receiver, receiver_layer)  # fail early on a bad name
        self.sender, self.receiver = sender, receiver
        self.sender_layer, self.receiver_layer = sender_layer, receiver_layer
        self.receiver_input_shape = None if receiver_input_shape is None else tuple(receiver_input_shape)
        for half in (sender, receiver):
            half.requires_grad_(False)
            half.eval()
        self.sender_shape: tuple[int, ...] | None = None
        self.receiver_shape: tuple[int, ...] | None = None
        if example_input is None and (input_shape or receiver_input_shape) is not None:
            example_input = torch.zeros(2, *(input_shape or receiver_input_shape))  # type: ignore[misc]
        if example_input is not None:
            with torch.no_grad():
                self.sender_shape = tuple(layer_output(sender, sender_layer, example_input).shape[1:])
                r_in = self._receiver_dummy(example_input) if receiver_input_shape else example_input
                self.receiver_shape = tuple(layer_output(receiver, receiver_layer, r_in).shape[1:])
        if isinstance(stitch, str):
            if stitch != "auto" and stitch not in STITCH_KINDS:
                raise ValueError(
                    f"`stitch` must be an nn.Module, 'auto' or one of {STITCH_KINDS}; got {stitch!r}."
                )
            if self.sender_shape is None or self.receiver_shape is None:
                raise ValueError(
                    f"`stitch={stitch!r}` builds the stitch from traced shapes, so `example_input` is "
                    "required. HINT: pass one batch as `example_input=x[:8]` (or "
                    "`input_shape=(1, 8, 8)`), or pass an nn.Module."
                )
            kind = stitch
            stitch = make_stitch(self.sender_shape, self.receiver_shape, kind=kind, adapter=adapter)  # type: ignore[arg-type]
        self.stitch = stitch

    def _receiver_dummy(self, x: Tensor) -> Tensor:
        """Zeros of the receiver's input shape for a batch like ``x`` (the receiver's prefix runs on it)."""
        if self.receiver_input_shape is None:
            return torch.zeros_like(x)
        return torch.zeros(len(x), *self.receiver_input_shape, dtype=x.dtype, device=x.device)

    @override
    def train(self, mode: bool = True) -> StitchedModel:
        """Set the stitch's mode; sender and receiver always stay in eval mode."""
        super().train(mode)
        self.sender.eval()
        self.receiver.eval()
        return self

    def sender_features(self, x: Tensor) -> Tensor:
        """The sender's output at ``sender_layer`` (no gradient: the sender is frozen)."""
        with torch.no_grad():
            return layer_output(self.sender, self.sender_layer, x)

    def receiver_features(self, x: Tensor) -> Tensor:
        """The receiver's own representation at ``receiver_layer`` for input ``x`` (for the controls).

        ``x`` must be a valid receiver input (the controls compare both models on the same inputs).
        """
        with torch.no_grad():
            return layer_output(self.receiver, self.receiver_layer, x)

    def stitch_output(self, x: Tensor) -> Tensor:
        """The stitched activation that replaces the receiver's representation at ``receiver_layer``."""
        return self.stitch(self.sender_features(x))

    def receiver_from(self, activation: Tensor, x: Tensor) -> Tensor:
        """Run the receiver from ``receiver_layer`` on, with ``activation`` in place of that layer's output."""
        out = run_with_replaced_output(
            self.receiver, self.receiver_layer, self._receiver_dummy(x), activation
        )
        return _first_tensor(out) if not isinstance(out, Tensor) else out  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        return self.receiver_from(self.stitch_output(x), x)


__all__ = [
    "StitchPoint",
    "StitchedModel",
    "layer_output",
    "run_with_replaced_output",
    "stitchable_points",
]
