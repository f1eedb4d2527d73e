"""``ImageClassifier``: the plain reuse baselines (full fine-tuning, linear probe, training from scratch).

Example:
    >>> import torch
    >>> from lightning_reuse.samples import SmallCNN
    >>> module = ImageClassifier(SmallCNN(width=4), trainable="head")
    >>> module.num_trainable_parameters() < module.num_parameters()
    True
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_reuse.modules._shared import OptimizerCallable, check_optimizer, labelled_batch
from lightning_reuse.nn.parameter_count import count_parameters

Trainable = Literal["all", "head", "scratch"]


class ImageClassifier(pl.LightningModule):
    """Train a classifier network with cross-entropy, logging ``train_loss``, ``val_acc`` and ``test_acc``.

    Args:
        model: the network; its final linear layer is the attribute named ``head_layer``.
        trainable: ``"all"`` (full fine-tuning), ``"head"`` (linear probe: everything else frozen and kept in
            eval mode), ``"scratch"`` (all parameters re-initialised first: the from-scratch reference).
        lr: learning rate of the default optimizer.
        optimizer: factory ``params -> optimizer``; ``None`` (default): ``torch.optim.Adam(params, lr=lr)``.
            It receives the trainable ``(name, parameter)`` pairs of ``model``, so
            ``FTPAdamW(params, lr=1e-3, exclude="head")`` works (in YAML:
            ``optimizer: {class_path: lightning_reuse.optim.ftp_presets.FTPAdamW, init_args: ...}``).
        head_layer: attribute name of the classification head (an ``nn.Linear``).
        num_classes: output classes (for the accuracy metrics); read from the head when omitted.
        head_name: deprecated spelling of ``head_layer`` (checkpoints of the first release saved it; goes in
            the next release).
    """

    def __init__(
        self,
        model: nn.Module,
        trainable: Trainable = "all",
        lr: float = 1e-3,
        optimizer: OptimizerCallable | None = None,
        head_layer: str = "head",
        num_classes: int | None = None,
        head_name: str | None = None,
    ) -> None:
        super().__init__()
        if head_name is not None:
            warnings.warn(
                "ImageClassifier: `head_name` is deprecated and goes in the next release. HINT: pass "
                f"`head_layer={head_name!r}`.",
                DeprecationWarning,
                stacklevel=2,
            )
            head_layer = head_name
        if trainable not in ("all", "head", "scratch"):
            raise ValueError(f"`trainable` must be 'all', 'head' or 'scratch', got {trainable!r}.")
        if lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {lr}.")
        head = getattr(model, head_layer, None)
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"`head_layer={head_layer!r}` must name the model's final nn.Linear; got {type(head).__name__}. "
                "HINT: pass the attribute name of the classification layer."
            )
        self.model, self.trainable, self.lr, self.head_layer = model, trainable, lr, head_layer
        self.optimizer_factory = check_optimizer(optimizer, lr=lr, weight_decay=0.0, who="ImageClassifier")
        if trainable == "scratch":
            for module in model.modules():
                if hasattr(module, "reset_parameters") and module is not model:
                    module.reset_parameters()
        if trainable == "head":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(head_layer + "."))
        n = num_classes or head.out_features
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.save_hyperparameters(ignore=["model", "optimizer", "head_name"])
        self.train()  # a pre-trained model often arrives in eval mode; the frozen part stays in eval

    def num_parameters(self) -> int:
        """All parameter values of ``model`` (shared parameters once)."""
        return count_parameters(self.model).total

    def num_trainable_parameters(self) -> int:
        """Parameter values of ``model`` that train (``requires_grad``)."""
        return count_parameters(self.model).trainable

    @override
    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if self.trainable == "head":  # frozen body stays in eval mode (BatchNorm / dropout untouched)
            self.model.eval()
            getattr(self.model, self.head_layer).train(mode)
        return self

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = labelled_batch(batch, who="ImageClassifier")
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = labelled_batch(batch, who="ImageClassifier")
        logits = self(x)
        self.val_acc.update(logits, y)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), on_epoch=True)
        self.log("val_acc", self.val_acc, prog_bar=True, on_epoch=True)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = labelled_batch(batch, who="ImageClassifier")
        self.test_acc.update(self(x), y)
        self.log("test_acc", self.test_acc, on_epoch=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # named parameters (relative to ``model``): name rules such as FTP's ``exclude="head"`` resolve
        params = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        return torch.optim.Adam(params, lr=self.lr)
