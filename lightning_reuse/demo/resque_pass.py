"""One RESQUE pass of the frozen source: how far shifted new samples are from their clean versions."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_reuse import ImageClassifier, RESQUECheck
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.data import clean_data, new_data
from lightning_reuse.demo.training import energy_monitor

RESQUE_LAYER = "model.block2.0"  # the last conv of the SmallCNN inside ImageClassifier


def resque_check_for(config: DemoConfig, level: float) -> RESQUECheck:
    """A RESQUECheck comparing clean and shifted versions of the same new training samples."""
    shifted = new_data(config, level=level)
    original = clean_data(config)
    return RESQUECheck(
        shifted.train_dataloader(),
        layer=RESQUE_LAYER,
        original_dataloader=original.train_dataloader(),
        num_classes=shifted.num_classes,
        progress_bar=False,
    )


def resque_score(config: DemoConfig, source: torch.nn.Module, level: float) -> Any:
    """One RESQUE pass of the frozen source at this shift level (its cost measured by an EnergyMonitor).

    Returns:
        The check's result: ``score``, ``per_class``, ``duration_s`` and ``energy`` (the monitor's record).
    """
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[energy_monitor(config)],
    )
    return resque_check_for(config, level).run(
        trainer, ImageClassifier(copy.deepcopy(source), trainable="all")
    )
