"""One function per reuse strategy the demo compares; each builds a LightningModule for the new data."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_reuse import AdditiveFineTuning, ModelReprogramming
from lightning_reuse.modules import ImageClassifier
from lightning_reuse.nn import FullPrompt, IterativeLabelMapping, SideConv
from lightning_reuse.optim import configure_ftp


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
    return ImageClassifier(copy.deepcopy(source), trainable="scratch", lr=1e-2)


def baseline_strategies() -> list[Strategy]:
    """Full fine-tuning, linear probe, and training from scratch (the reference)."""
    return [
        Strategy("full fine-tuning", "all weights trained from the source (Adam, lr 1e-3)", _full),
        Strategy("linear probe", "only the classification head trained", _linear_probe),
        Strategy(
            "from scratch",
            "same architecture, re-initialised (Adam, lr 1e-2): the retraining reference",
            _scratch,
        ),
    ]


def _ftp(source: nn.Module, num_classes: int) -> pl.LightningModule:
    net = copy.deepcopy(source)
    # the head is excluded from the projection (its anchor is not a pre-trained feature extractor)
    return ImageClassifier(
        net,
        trainable="all",
        optimizer=lambda params: configure_ftp(net, torch.optim.Adam, lr=1e-3, exclude="head"),
    )


def _additive(source: nn.Module, num_classes: int) -> pl.LightningModule:
    base = copy.deepcopy(source).requires_grad_(False).eval()
    return AdditiveFineTuning(base, SideConv(1, num_classes, width=8), lr=3e-3)


def _reprogramming(source: nn.Module, num_classes: int) -> pl.LightningModule:
    return ModelReprogramming(
        copy.deepcopy(source),
        FullPrompt((1, 8, 8), (1, 8, 8)),
        IterativeLabelMapping(num_source=10, num_target=num_classes),
        lr=0.01,
    )


def reuse_strategies() -> list[Strategy]:
    """The lightning_reuse strategies: FTP fine-tuning, additive side network, model reprogramming."""
    return [
        Strategy(
            "FTP fine-tuning",
            "all weights, FTP projection toward the source (Adam, lr 1e-3)",
            _ftp,
            paper="Tian et al., NeurIPS 2023",
        ),
        Strategy(
            "additive side network",
            "frozen source + small zero-initialised conv side network",
            _additive,
            paper="Sohn et al., UAI 2024",
        ),
        Strategy(
            "reprogramming",
            "frozen source, trainable full-image prompt + iterative label mapping",
            _reprogramming,
            paper="Chen et al., CVPR 2023 (ILM-VP)",
        ),
    ]


def available_strategies() -> list[Strategy]:
    """Every strategy the demo compares; training from scratch (the reference) last."""
    base = baseline_strategies()
    return base[:2] + reuse_strategies() + base[2:]
