"""One function per reuse strategy the demo compares; each builds a LightningModule for the new data."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from torch import nn

from lightning_reuse.modules.classifier import ImageClassifier


@dataclass
class Strategy:
    """A named way of reusing the source: ``build(source, num_classes) -> LightningModule``."""

    name: str
    description: str
    build: Callable[[nn.Module, int], pl.LightningModule]
    paper: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _full(source: nn.Module, num_classes: int, lr: float = 1e-3) -> pl.LightningModule:
    return ImageClassifier(copy.deepcopy(source), trainable="all", lr=lr)


def _linear_probe(source: nn.Module, num_classes: int) -> pl.LightningModule:
    return ImageClassifier(copy.deepcopy(source), trainable="head", lr=1e-2)


def _scratch(source: nn.Module, num_classes: int) -> pl.LightningModule:
    return ImageClassifier(copy.deepcopy(source), trainable="scratch", lr=3e-3)


def baseline_strategies() -> list[Strategy]:
    """Full fine-tuning, linear probe, and training from scratch (the reference)."""
    return [
        Strategy("full fine-tuning", "all weights trained from the source (Adam, lr 1e-3)", _full),
        Strategy("linear probe", "only the classification head trained", _linear_probe),
        Strategy("from scratch", "same architecture, re-initialised: the retraining reference", _scratch),
    ]


def available_strategies() -> list[Strategy]:
    """Every strategy the installed parts provide, cheapest-to-build first, scratch last."""
    return baseline_strategies()
