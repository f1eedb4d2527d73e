"""Address a model's layers by name: look-up with a helpful error, and feature capture by forward hook.

Used by RESQUE (features of a named layer), stitching (cut points), additive fine-tuning (side input) and
reprogramming. Names are those of ``model.named_modules()`` (e.g. ``"layer2.1"``, ``"block1"``).

Example:
    >>> import torch
    >>> from lightning_reuse.samples import SmallCNN
    >>> net = SmallCNN(width=4)
    >>> with capture_output(net, "block1") as store:
    ...     _ = net(torch.zeros(2, 1, 8, 8))
    >>> tuple(store["output"].shape)
    (2, 4, 8, 8)
    >>> get_layer(net, "blok1")
    Traceback (most recent call last):
    ...
    lightning_reuse.nn.layers.LayerNotFoundError: No layer named 'blok1' in SmallCNN. Did you mean: 'block1', ...? Valid names: ...
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn


class LayerNotFoundError(KeyError, ValueError):
    """A layer name that the model does not have (the message lists the valid names)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def layer_names(model: nn.Module) -> list[str]:
    """All addressable sub-module names of ``model`` (``named_modules`` order, the root ``""`` excluded)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, layer: str) -> nn.Module:
    """Return the sub-module called ``layer``; raise :class:`LayerNotFoundError` listing valid names."""
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return modules[layer]
    names = layer_names(model)
    close = difflib.get_close_matches(str(layer), names, n=3)
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(repr(n) for n in names[:40]) + (
        f", ... ({len(names)} in all)" if len(names) > 40 else ""
    )
    raise LayerNotFoundError(
        f"No layer named {layer!r} in {type(model).__name__}.{hint} Valid names: {shown}. "
        "HINT: list them with `lightning_reuse.nn.layers.layer_names(model)`."
    )


@contextlib.contextmanager
def capture_output(model: nn.Module, layer: str, detach: bool = True) -> Iterator[dict[str, Any]]:
    """Within the block, ``store["output"]`` holds the latest output of ``layer`` (a forward hook).

    The hook is removed on exit, also on error. Tuple outputs keep their first tensor. With ``detach`` the
    stored tensor is a detached copy, so a following in-place operation cannot change it.
    """
    module = get_layer(model, layer)
    store: dict[str, Any] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        # clone: an in-place op after the layer (e.g. ReLU(inplace=True)) would overwrite a mere view
        store["output"] = out.detach().clone() if detach and isinstance(out, Tensor) else out

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
