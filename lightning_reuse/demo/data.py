"""The demo's data and source model: digits with a shift (the new data) and a source that knows clean ones."""

from __future__ import annotations

from torch import nn

from lightning_reuse.demo import sources
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.samples import DigitsDataModule


def new_data(config: DemoConfig, level: float | None = None, shift: str | None = None) -> DigitsDataModule:
    """The new data of the demo, set up for fitting.

    Args:
        config: The demo's configuration (shift, level, batch size, seed, training samples).
        level: Shift strength instead of ``config.level`` (the ledger's calibration runs use other levels).
        shift: Shift instead of ``config.shift``; ``"none"`` (with ``level=0.0``) gives the clean version of
            the same samples.
    """
    dm = DigitsDataModule(
        shift=config.shift if shift is None else shift,
        level=config.level if level is None else level,
        batch_size=config.batch_size,
        seed=config.seed,
        split_seed=0,  # the split the zoo's sources were pre-trained on: val/test stay unseen
        train_limit=config.train_limit,
    )
    dm.setup("fit")
    return dm


def clean_data(config: DemoConfig) -> DigitsDataModule:
    """The same samples as :func:`new_data`, without the shift."""
    return new_data(config, shift="none", level=0.0)


def source_model(config: DemoConfig) -> nn.Module:
    """The source (``config.source``): a SmallCNN pre-trained on clean digits (made reproducibly and cached by
    the sample zoo), or EfficientNet-Lite0 with a digits head (see :mod:`~lightning_reuse.demo.sources`)."""
    return sources.source_model(config)
