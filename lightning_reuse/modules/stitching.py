"""``ModelStitching``: train only a stitch between a frozen sender and a frozen receiver, cut by layer name.

Hernandez, Dangovski, Lu, Soljacic, "Model Stitching: Looking For Functional Similarity Between
Representations", arXiv 2303.11277; Bansal, Nakkiran, Barak, "Revisiting Model Stitching to Compare
Neural Representations", NeurIPS 2021. The score is the stitched accuracy; beside it the stitching
penalty (stitched loss minus the receiver's own loss on the same batch) and the receiver's own accuracy.

Logged (``stage`` is ``train``, ``val`` or ``test``): ``{stage}_loss`` (stitched cross-entropy),
``{stage}_stitched_acc``; in ``val``/``test`` also ``{stage}_receiver_loss``, ``{stage}_receiver_acc``
and ``{stage}_penalty``.

For a matrix of many sender/receiver layer pairs (with controls) see
:func:`lightning_reuse.modules.stitching_sweep.stitching_sweep`, an experiment runner with its own loop.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from lightning_reuse.samples import SmallCNN, digits_loader
    >>> _ = torch.manual_seed(0)
    >>> a, b = SmallCNN(width=4).eval(), SmallCNN(width=4).eval()
    >>> x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    >>> module = ModelStitching(a, "block1", b, "block1", example_input=x[:8])
    >>> trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
    ...                      enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(module, digits_loader(x, y, batch_size=16))
    >>> module.model.sender.training, module.model.receiver.training
    (False, False)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_reuse.modules._shared import OptimizerCallable, check_optimizer, labelled_batch
from lightning_reuse.nn.stitched import StitchedModel

_METRICS: tuple[str, ...] = ("loss", "stitched_acc", "receiver_loss", "receiver_acc", "penalty")


class ModelStitching(pl.LightningModule):
    """Sender up to ``sender_layer`` -> trainable stitch -> receiver from ``receiver_layer``; only the stitch trains.

    Args:
        sender: the frozen model whose layers up to ``sender_layer`` are reused (kept in eval mode, also
            across Lightning's ``train()``/``eval()`` switches).
        sender_layer: name of the sender layer whose output is sent (a block output).
        receiver: the frozen model whose layers after ``receiver_layer`` are reused (kept in eval mode).
        receiver_layer: name of the receiver layer whose output the stitch replaces.
        stitch: an ``nn.Module``, ``"auto"`` (choose from the traced shapes) or a stitch kind.
        example_input: one batch to trace the shapes of both layers.
        receiver_input_shape: per-sample input shape of the receiver (default: the sender's).
        adapter: ``"paper"`` (the paper's bare shape adapters), ``"hernandez"`` (the same wrapped in BatchNorm,
            the default here) or ``"pooled"`` (pooling + channel-only stitch); see ``make_stitch``.
        input_shape: per-sample sender input shape, to trace shapes on zeros when no ``example_input``.
        optimizer: factory ``params -> optimizer`` given the stitch's trainable parameters; ``None`` (default,
            Bansal et al.): ``torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)``. Hernandez et al.:
            ``functools.partial(torch.optim.SGD, lr=1e-2, momentum=0.9, weight_decay=0.01)`` with
            ``warmup_fraction``. The schedule below applies to either. The strings ``"adam"``/``"sgd"`` are
            deprecated (one release).
        lr: learning rate of the default optimizer (Bansal 1e-3, Hernandez 1e-2).
        weight_decay: L2 weight decay of the default optimizer (Hernandez 0.01).
        warmup_fraction: fraction of the training steps with linear warm-up (0 = none).
        schedule: ``"cosine"`` decay to 0 over the fit, or ``"constant"``.
    """

    def __init__(
        self,
        sender: nn.Module,
        sender_layer: str,
        receiver: nn.Module,
        receiver_layer: str,
        stitch: nn.Module | str = "auto",
        example_input: Tensor | None = None,
        receiver_input_shape: Sequence[int] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.0,
        schedule: Literal["cosine", "constant"] = "cosine",
        adapter: Literal["paper", "hernandez", "pooled"] = "hernandez",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _check_schedule(lr, weight_decay, warmup_fraction, schedule)
        self.optimizer_factory = check_optimizer(
            optimizer, lr=lr, weight_decay=weight_decay, who="ModelStitching"
        )
        self.save_hyperparameters(ignore=["sender", "receiver", "stitch", "example_input", "optimizer"])
        self.model = StitchedModel(
            sender,
            sender_layer,
            receiver,
            receiver_layer,
            stitch=stitch,
            example_input=example_input,
            receiver_input_shape=receiver_input_shape,
            adapter=adapter,
            input_shape=input_shape,
        )
        if not any(p.requires_grad for p in self.model.stitch.parameters()):
            raise ValueError(
                "The stitch has no trainable parameter, so there is nothing to fit. HINT: for a "
                "training-free stitch use `AffineStitch.fit(...)` and evaluate with `Trainer.validate`."
            )
        self.metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in _METRICS}
        )

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = labelled_batch(batch, who="ModelStitching")
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_stitched_acc", (logits.argmax(-1) == y).float().mean())
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = labelled_batch(batch, who="ModelStitching")
        logits = self.model(x)
        with torch.no_grad():
            own = self.model.receiver(x)
        values = {
            "loss": F.cross_entropy(logits, y),
            "stitched_acc": (logits.argmax(-1) == y).float().mean(),
            "receiver_loss": F.cross_entropy(own, y),
            "receiver_acc": (own.argmax(-1) == y).float().mean(),
        }
        values["penalty"] = values["loss"] - values["receiver_loss"]
        for name, value in values.items():
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(value, weight=len(y))
            self.log(f"{stage}_{name}", metric, prog_bar=name == "stitched_acc")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @override
    def configure_optimizers(self) -> OptimizerLRScheduler:
        hp = self.hparams
        params = [p for p in self.model.stitch.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = self.optimizer_factory(params)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        factor = functools.partial(
            _lr_factor, warmup=int(hp.warmup_fraction * total), total=total, schedule=hp.schedule
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _check_schedule(lr: float, weight_decay: float, warmup_fraction: float, schedule: str) -> None:
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"`schedule` must be 'cosine' or 'constant'; got {schedule!r}.")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0; got {lr}.")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0; got {weight_decay}.")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"`warmup_fraction` must be in [0, 1); got {warmup_fraction}.")


def _lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then cosine to 0 or constant."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
