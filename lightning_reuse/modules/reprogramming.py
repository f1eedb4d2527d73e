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
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from typing_extensions import override

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.modules._shared import OptimizerCallable, batch_inputs, check_optimizer, labelled_batch
from lightning_reuse.nn.fingerprint import module_fingerprint
from lightning_reuse.nn.label_mapping import FrequencyLabelMapping, IterativeLabelMapping, LabelMapping
from lightning_reuse.nn.parameter_count import count_parameters
from lightning_reuse.nn.prompts import InputTransform
from lightning_reuse.nn.reprogrammed import ReprogrammedModel

SOURCE_PREFIX = "model.source."


def source_fingerprint(source: nn.Module) -> str:
    """Deprecated alias of :func:`lightning_reuse.nn.module_fingerprint`; goes in the next release.

    It now returns the one module fingerprint (the hash it gave before differed in byte order).
    """
    warnings.warn(
        "`source_fingerprint` is deprecated and goes in the next release. HINT: use "
        "`lightning_reuse.nn.module_fingerprint`.",
        DeprecationWarning,
        stacklevel=2,
    )
    return module_fingerprint(source)


def _legacy_source_fingerprint(source: nn.Module) -> str:
    """The source fingerprint in checkpoints written by release 0.1 (read only: they still load without a warning)."""
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
        "num_parameters": count_parameters(source).total,
        "fingerprint": module_fingerprint(source),
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
        lr: learning rate of the default optimizer (ILM-VP: 0.01 with Adam).
        milestones: fractions of training after which the learning rate is multiplied by ``gamma`` (ILM-VP:
            50% and 72%); epochs when ``max_epochs`` bounds the fit, else optimizer steps.
        gamma: the ``MultiStepLR`` factor.
        optimizer: factory ``params -> optimizer`` given the trainable parameters (prompt and mapping);
            ``None`` (default, ILM-VP): ``torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)``. The
            ``MultiStepLR`` schedule applies to either. SGD with momentum:
            ``functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9)``; the strings ``"adam"``/``"sgd"``
            are deprecated (one release).
        weight_decay: weight decay of the default optimizer.
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
        optimizer: OptimizerCallable | None = None,
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
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
        if remap_batches is not None and remap_batches < 1:
            raise ValueError(f"`remap_batches` must be None or >= 1, got {remap_batches}.")
        self.optimizer_factory = check_optimizer(
            optimizer, lr=lr, weight_decay=weight_decay, who="ModelReprogramming"
        )
        self.save_hyperparameters(ignore=["source", "transform", "mapping", "optimizer"])
        self.model = ReprogrammedModel(source, transform, mapping)
        self.source_reference = describe_source(source, source_name)
        self.remap_history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------------- modes
    @override
    def train(self, mode: bool = True) -> ModelReprogramming:
        """Train/eval mode for the prompt and mapping; the source always stays in eval mode."""
        super().train(mode)
        self.model.source.eval()
        return self

    @override
    def on_fit_start(self) -> None:
        self.model.freeze_source()  # in case parameters were unfrozen after construction

    @override
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
                x, y = labelled_batch(batch, who="ModelReprogramming")
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
            self.log("train_mapping_changed", changed / mapping.num_target, on_step=False, on_epoch=True)
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

    # ----------------------------------------------------------------------------------------- steps
    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        x, y = labelled_batch(batch, who="ModelReprogramming")
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_acc", acc, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.model(batch_inputs(batch, who="ModelReprogramming"))

    @override
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        params = self.model.trainable_parameters()
        hp = self.hparams
        if self.optimizer_factory is None:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = self.optimizer_factory(params)
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
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(SOURCE_PREFIX)]:
            del state[key]
        checkpoint["reprogramming"] = {
            "source": dict(self.source_reference),
            "remap_history": list(self.remap_history),
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("reprogramming", {})
        self._check_source(info.get("source", {}))
        self.remap_history = list(info.get("remap_history", []))
        state = checkpoint.setdefault("state_dict", {})
        for (
            key,
            value,
        ) in self.model.source.state_dict().items():  # the source is not stored: keep the given one
            state.setdefault(SOURCE_PREFIX + key, value)

    def _check_source(self, saved: dict[str, Any]) -> None:
        """Refuse a source of another class; warn when its weights differ from the checkpoint's source."""
        if not saved:
            return
        current = describe_source(self.model.source, self.source_reference.get("name"))
        if saved.get("class") != current["class"]:
            raise ValueError(
                f"This checkpoint was trained on a source of class {saved.get('class')}, got {current['class']}. "
                "HINT: pass the same pre-trained source model as `source=` when loading."
            )
        fingerprint = saved.get("fingerprint")
        if fingerprint != current["fingerprint"] and fingerprint != _legacy_source_fingerprint(
            self.model.source
        ):
            warnings.warn(
                "The source model's weights differ from those this checkpoint was trained with (SHA-256 "
                f"{str(fingerprint)[:12]}... vs {current['fingerprint'][:12]}...); the prompt may not "
                "transfer.",
                LightningReuseWarning,
                stacklevel=2,
            )
