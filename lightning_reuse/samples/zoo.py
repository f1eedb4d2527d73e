"""Small pre-trained sources made here, reproducibly, in seconds (nothing is downloaded).

``pretrained_small_cnn`` trains a :class:`~lightning_reuse.samples.models.SmallCNN` on the clean digits (or a
class subset) with a fixed seed and caches the weights, so recipes, the demo and benchmarks share one source.

Example:
    >>> net = pretrained_small_cnn(width=8, epochs=2, cache_dir=None)
    >>> net.training, sum(p.numel() for p in net.parameters()) > 0
    (False, True)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lightning_reuse.samples.digits import load_digits_tensors, split_indices
from lightning_reuse.samples.models import SmallCNN, train_classifier


def default_cache_dir() -> Path:
    """``$LIGHTNING_REUSE_CACHE`` or ``~/.cache/lightning_reuse``."""
    return Path(os.environ.get("LIGHTNING_REUSE_CACHE", Path.home() / ".cache" / "lightning_reuse"))


def pretrained_small_cnn(
    classes: Sequence[int] | None = None,
    width: int = 32,
    depth: int = 2,
    epochs: int = 30,
    lr: float = 1e-2,
    seed: int = 0,
    train_fraction: float = 0.6,
    cache_dir: str | Path | None = "default",
) -> SmallCNN:
    """Return a SmallCNN trained on the first ``train_fraction`` of the clean digits (split seed 0).

    The training split is the same as :class:`~lightning_reuse.samples.datamodule.DigitsDataModule`'s (seed 0), so the
    source never saw the validation and test samples of the new data. Weights are cached by configuration
    (``cache_dir=None`` disables the cache).
    """
    config = {
        "classes": None if classes is None else list(classes),
        "width": width,
        "depth": depth,
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "train_fraction": train_fraction,
        "v": 1,
    }
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    num_classes = 10 if classes is None else len(classes)
    net = SmallCNN(num_classes=num_classes, width=width, depth=depth)
    path = None if cache_dir is None else Path(default_cache_dir() if cache_dir == "default" else cache_dir)
    file = None if path is None else path / f"small_cnn_{key}.pt"
    if file is not None and file.exists():
        net.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        return net.eval()
    x, y = load_digits_tensors()
    tr = split_indices(len(x), (train_fraction, 1.0 - train_fraction), seed=0)[0]
    x, y = x[tr], y[tr]
    if classes is not None:
        keep = torch.isin(y, torch.tensor(list(classes)))
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(list(classes))] = torch.arange(num_classes)
        x, y = x[keep], remap[y[keep]]
    torch.manual_seed(seed)
    net = SmallCNN(num_classes=num_classes, width=width, depth=depth)
    train_classifier(net, x, y, epochs=epochs, lr=lr, seed=seed)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        tmp.replace(file)  # atomic: a concurrent reader never sees half a file
    return net.eval()


class PretrainedSmallCNN(SmallCNN):
    """A :class:`SmallCNN` constructed with pre-trained weights (see :func:`pretrained_small_cnn`).

    A class (not a function) so LightningCLI recipes can say
    ``model: {class_path: lightning_reuse.samples.zoo.PretrainedSmallCNN, init_args: {width: 32}}``.
    """

    def __init__(
        self, width: int = 32, depth: int = 2, epochs: int = 30, seed: int = 0, frozen: bool = False
    ) -> None:
        super().__init__(num_classes=10, width=width, depth=depth)
        trained = pretrained_small_cnn(width=width, depth=depth, epochs=epochs, seed=seed)
        self.load_state_dict(trained.state_dict())
        self.eval()
        if frozen:  # e.g. the base of additive fine-tuning
            self.requires_grad_(False)
