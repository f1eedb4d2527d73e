"""``ModelReprogramming``: train an input prompt (and optionally a label mapping) for a frozen source model.

``g(x) = L(f_s(T_theta(x)))``: the source ``f_s`` stays frozen and in eval mode during the whole fit; only
the prompt ``theta`` (and a learned linear mapping) train. Frequency (FLM) and iterative (ILM) label mappings
are (re)computed from the training data under the current prompt at the start of the scheduled epochs.
Checkpoints hold only what trains (prompt, mapping) plus a reference description of the source.

References: Chen, Liu, Li, Zhang, Wang, Liu, "Understanding and Improving Visual Prompting: A Label-Mapping
Perspective", CVPR 2023 (ILM-VP: padding prompt + ILM, Adam lr 0.01, MultiStepLR at 50% / 72% of training,
gamma 0.1, 200 epochs, batch 128); Elsayed, Goodfellow, Sohl-Dickstein, "Adversarial Reprogramming of
Neural Networks", ICLR 2019.

Example:
    >>> import lightning.pytorch as pl
    >>> from lightning_reuse.samples.digits import digits_loader, load_digits_tensors
    >>> from lightning_reuse.nn import IterativeLabelMapping, PaddingPrompt
    >>> from lightning_reuse.samples import SmallCNN
    >>> x, y = load_digits_tensors()
    >>> module = ModelReprogramming(
    ...     SmallCNN(num_classes=10, width=4), PaddingPrompt((1, 8, 8), (1, 12, 12)), IterativeLabelMapping(10, 10)
    ... )
    >>> trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    ...                      enable_model_summary=False, limit_train_batches=2)
    >>> trainer.fit(module, digits_loader(x[:256], y[:256], batch_size=128))
    >>> [entry["epoch"] for entry in module.remap_history]  # ILM re-mapped at the start of every epoch
    [0, 1]
    >>> module.model.source.training
    False
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.nn.label_mapping import FrequencyLabelMapping, IterativeLabelMapping, LabelMapping
from lightning_reuse.nn.prompts import InputTransform
from lightning_reuse.nn.reprogrammed import ReprogrammedModel

SOURCE_PREFIX = "model.source."
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


def source_fingerprint(source: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``source.state_dict()`` (parameters and buffers)."""
    digest = hashlib.sha256()
    for name, tensor in source.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def describe_source(source: nn.Module, name: str | None = None) -> dict[str, Any]:
    """A reference description of the source model: class, optional name, parameter count, fingerprint."""
    cls = type(source)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "name": name,
        "num_parameters": sum(p.numel() for p in source.parameters()),
        "fingerprint": source_fingerprint(source),
    }


class ModelReprogramming(pl.LightningModule):
    """Model reprogramming as a LightningModule: frozen source, trainable input transform and label mapping.

    Args:
        source: the pre-trained model (any ``nn.Module`` taking an image batch and returning ``[N, K_s]``
            logits). It is frozen (``requires_grad=False``) and kept in eval mode.
        transform: the input transform, e.g. :class:`~lightning_reuse.nn.PaddingPrompt` (ILM-VP) or
            :class:`~lightning_reuse.nn.FullPrompt`.
        mapping: the label mapping; :class:`~lightning_reuse.nn.FrequencyLabelMapping` is fitted once at the
            start of the first epoch, :class:`~lightning_reuse.nn.IterativeLabelMapping` at the start of every
            ``remap_every``-th epoch (both from the training data under the current prompt);
            :class:`~lightning_reuse.nn.LinearLabelMapping` trains with the prompt.
        lr: learning rate (ILM-VP: 0.01 with Adam).
        milestones: fractions of training after which the learning rate is multiplied by ``gamma`` (ILM-VP:
            50% and 72%); epochs when ``max_epochs`` bounds the fit, else optimizer steps.
        gamma: the ``MultiStepLR`` factor.
        optimizer: ``"adam"`` (ILM-VP) or ``"sgd"`` (momentum 0.9).
        weight_decay: weight decay of the optimizer.
        remap_batches: at most this many training batches are used to count the FLM/ILM matrix (``None``: all).
        source_name: an optional human-readable reference stored in checkpoints (e.g. ``"efficientnet-lite0"``).

    Checkpoints: ``state_dict`` holds only ``model.transform.*`` and ``model.mapping.*``;
    ``checkpoint["reprogramming"]`` holds the source description (class, parameter count, SHA-256 fingerprint)
    and the re-mapping history. Load with
    ``ModelReprogramming.load_from_checkpoint(path, source=..., transform=..., mapping=...)``.
    """

    def __init__(
        self,
        source: nn.Module,
        transform: InputTransform,
        mapping: LabelMapping,
        lr: float = 0.01,
        milestones: Sequence[float] = (0.5, 0.72),
        gamma: float = 0.1,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        remap_batches: int | None = None,
        source_name: str | None = None,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"`lr` must be > 0, got {lr}.")
        if any(not 0 < f < 1 for f in milestones):
            raise ValueError(f"`milestones` are fractions of training in (0, 1), got {tuple(milestones)}.")
        if not 0 < gamma <= 1:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma}.")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {optimizer!r}.")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
        if remap_batches is not None and remap_batches < 1:
            raise ValueError(f"`remap_batches` must be None or >= 1, got {remap_batches}.")
        self.save_hyperparameters(ignore=["source", "transform", "mapping"])
        self.model = ReprogrammedModel(source, transform, mapping)
        self.source_reference = describe_source(source, source_name)
        self.remap_history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> ModelReprogramming:
        """Train/eval mode for the prompt and mapping; the source always stays in eval mode."""
        super().train(mode)
        self.model.source.eval()
        return self

    def on_fit_start(self) -> None:
        self.model.freeze_source()  # in case parameters were unfrozen after construction

    def on_train_epoch_start(self) -> None:
        self.model.source.eval()
        mapping = self.model.mapping
        if isinstance(mapping, IterativeLabelMapping):
            due = mapping.due(self.current_epoch)
        elif isinstance(mapping, FrequencyLabelMapping):
            due = not self.remap_history  # FLM: once, under the initial prompt
        else:
            return
        if due and not any(e["epoch"] == self.current_epoch for e in self.remap_history):
            self.remap()

    # ----------------------------------------------------------------------------------------- label mapping
    @torch.no_grad()
    def count_predictions(self, dataloader: Iterable[Any] | None = None) -> Tensor:
        """``[C, K_s]`` counts of the source's top-1 predictions on prompted inputs per target class.

        Uses the trainer's training dataloader by default; summed over processes under DDP.
        """
        loader = self.trainer.train_dataloader if dataloader is None else dataloader
        if loader is None:
            raise ValueError(
                "No dataloader to count source predictions on. HINT: call inside `trainer.fit`, or pass `dataloader`."
            )
        mapping = self.model.mapping
        counts = torch.zeros(mapping.num_target * mapping.num_source, dtype=torch.long, device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            for i, batch in enumerate(self._progress(loader)):
                if self.hparams.remap_batches is not None and i >= self.hparams.remap_batches:
                    break
                x, y = self._unpack(batch)
                pred = self.model.source_logits(x.to(self.device)).argmax(-1)
                counts += torch.bincount(
                    y.to(self.device).long() * mapping.num_source + pred, minlength=counts.numel()
                )
        finally:
            self.model.train(was_training)
        if self._trainer is not None and self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        return counts.view(mapping.num_target, mapping.num_source)

    def remap(self, dataloader: Iterable[Any] | None = None) -> Tensor:
        """Recompute an FLM/ILM mapping under the current prompt; record it in ``remap_history``."""
        mapping = self.model.mapping
        if not isinstance(mapping, FrequencyLabelMapping):
            raise TypeError(f"Only frequency/iterative label mappings re-map, got {type(mapping).__name__}.")
        old = mapping.mapping.clone()
        new = mapping.fit_counts(self.count_predictions(dataloader))
        changed = int((old != new).sum())
        epoch = self.current_epoch if self._trainer is not None else -1
        step = self.global_step if self._trainer is not None else -1
        self.remap_history.append({"epoch": epoch, "step": step, "mapping": new.tolist(), "changed": changed})
        if self._trainer is not None and self.trainer.training:
            self.log(
                "reprogramming/mapping_changed", changed / mapping.num_target, on_step=False, on_epoch=True
            )
        return new

    def _progress(self, loader: Iterable[Any]) -> Iterable[Any]:
        show = (
            self._trainer is not None
            and self.trainer.is_global_zero
            and self.trainer.progress_bar_callback is not None
        )
        if not show:
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, desc="label mapping", leave=False, dynamic_ncols=True)

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            return batch[0], batch[1]
        if isinstance(batch, dict) and {"x", "y"} <= batch.keys():
            return batch["x"], batch["y"]
        raise ValueError(
            f"ModelReprogramming expects batches (x, y) or {{'x': ..., 'y': ...}}, got {type(batch).__name__}. "
            "HINT: yield (images [N, C, H, W], labels [N]) from the dataloader."
        )

    # ----------------------------------------------------------------------------------------- steps
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        x, y = self._unpack(batch)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_acc", acc, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(x)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        params = self.model.trainable_parameters()
        hp = self.hparams
        if hp.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        max_epochs = self.trainer.max_epochs
        by_epoch = max_epochs is not None and max_epochs > 0 and self.trainer.max_steps == -1
        total = max_epochs if by_epoch else int(self.trainer.estimated_stepping_batches)
        milestones = sorted(max(1, int(f * total)) for f in hp.milestones)  # repeats compound, as in torch
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=hp.gamma)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch" if by_epoch else "step"},
        }

    # ----------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(SOURCE_PREFIX)]:
            del state[key]
        checkpoint["reprogramming"] = {
            "source": dict(self.source_reference),
            "remap_history": list(self.remap_history),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("reprogramming", {})
        saved = info.get("source", {})
        current = describe_source(self.model.source, self.source_reference.get("name"))
        if saved and saved.get("class") != current["class"]:
            raise ValueError(
                f"This checkpoint was trained on a source of class {saved.get('class')}, got {current['class']}. "
                "HINT: pass the same pre-trained source model as `source=` when loading."
            )
        if saved and saved.get("fingerprint") != current["fingerprint"]:
            warnings.warn(
                "The source model's weights differ from those this checkpoint was trained with (SHA-256 "
                f"{str(saved.get('fingerprint'))[:12]}... vs {current['fingerprint'][:12]}...); the prompt may not "
                "transfer.",
                LightningReuseWarning,
                stacklevel=2,
            )
        self.remap_history = list(info.get("remap_history", []))
        state = checkpoint.setdefault("state_dict", {})
        for (
            key,
            value,
        ) in self.model.source.state_dict().items():  # the source is not stored: keep the given one
            state.setdefault(SOURCE_PREFIX + key, value)
