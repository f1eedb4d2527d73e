"""One RESQUE pass of the frozen source: how far shifted new samples are from their clean versions."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_reuse import ImageClassifier, RESQUECheck
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.data import clean_data, new_data
from lightning_reuse.demo.sources import RESQUE_LAYERS, resque_layer
from lightning_reuse.demo.training import energy_monitor

RESQUE_LAYER = RESQUE_LAYERS["smallcnn"]  # the last conv of the SmallCNN inside ImageClassifier


def resque_check_for(config: DemoConfig, level: float, baselines: bool = True) -> RESQUECheck:
    """A RESQUECheck comparing clean and shifted versions of the same new training samples.

    Args:
        config: The demo's configuration.
        level: The shift strength.
        baselines: Also compute the transferability baselines on the shifted samples (``result.baselines``).
    """
    shifted = new_data(config, level=level)
    original = clean_data(config)
    return RESQUECheck(
        shifted.train_dataloader(),
        layer=resque_layer(config),
        original_dataloader=original.train_dataloader(),
        num_classes=shifted.num_classes,
        progress_bar=False,
        baselines=baselines,
    )


def resque_score(config: DemoConfig, source: torch.nn.Module, level: float, baselines: bool = False) -> Any:
    """One RESQUE pass of the frozen source at this shift level (its cost measured by an EnergyMonitor).

    Args:
        config: The demo's configuration.
        source: The pre-trained source (copied, never changed).
        level: The shift strength.
        baselines: Also compute the transferability baselines (the demo's own level; not the calibration's).

    Returns:
        The check's result: ``score``, ``per_class``, ``baselines``, ``duration_s`` and ``energy`` (the
        monitor's record).
    """
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[energy_monitor(config)],
    )
    return resque_check_for(config, level, baselines).run(
        trainer, ImageClassifier(copy.deepcopy(source), trainable="all")
    )
