"""``AdditiveFineTuning``: train only a small side network ``g`` added to a frozen pre-trained model ``f``.

Sohn, Kwon, An and Lee, "Memorization Capacity for Additive Fine-Tuning with Small ReLU Networks",
UAI 2024 (arXiv 2408.00359). The model is ``F(x) = f(x) + g(x or the output of a named layer of f)``; ``g``'s last layer
starts at zero, so ``F == f`` before the first step. Checkpoints hold the side network only, plus the
base's SHA-256 fingerprint (:func:`lightning_reuse.nn.module_fingerprint`) and what is needed to rebuild the
side network; load them with the same base:
``AdditiveFineTuning.load_from_checkpoint(path, base=base)``.

Example:
    >>> import torch
    >>> from lightning_reuse.samples import SmallCNN
    >>> from lightning_reuse.nn import SideMLP
    >>> base = SmallCNN(width=4).requires_grad_(False)
    >>> module = AdditiveFineTuning(base, SideMLP(64, 10, width=8))
    >>> x = torch.rand(2, 1, 8, 8)
    >>> torch.equal(module(x), base(x))
    True
    >>> module.parameter_count().trainable == 64 * 8 + 8 + 8 * 10 + 10
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_reuse.modules._shared import OptimizerCallable, batch_inputs, check_optimizer, labelled_batch
from lightning_reuse.nn.fingerprint import module_fingerprint
from lightning_reuse.nn.parameter_count import ParameterCount, count_parameters, format_parameter_count
from lightning_reuse.nn.side_network import AdditiveModel, build_side_network

LossName = Literal["cross_entropy", "mse"]
_BASE_PREFIX = "model.base."
_CKPT_KEY = "additive_fine_tuning"
IGNORE_INDEX = -100


class AdditiveFineTuning(pl.LightningModule):
    """Additive fine-tuning: the base is frozen (eval mode, no gradient), only ``side`` is optimised.

    Args:
        base: the pre-trained model ``f``. A base with trainable parameters is frozen in place with a
            :class:`~lightning_reuse._warnings.LightningReuseWarning` (see
            :func:`lightning_reuse.nn.side_network.freeze_base`).
        side: the side network ``g`` (e.g. :class:`~lightning_reuse.nn.side_network.SideMLP`), or its
            ``config`` mapping (how ``load_from_checkpoint`` rebuilds it).
        layer: name of the ``base`` layer whose output ``g`` reads; ``None`` reads the input, which must
            then be float: with integer token ids the first batch raises a ``TypeError`` that asks for
            ``layer=`` naming an embedding or hidden layer (e.g. ``layer="embed"``).
        loss: ``"cross_entropy"`` (targets are class indices; ``val_acc`` is logged; the label ``-100``
            means "no label term": such samples only feel ``output_penalty``, which keeps ``F`` at ``f``)
            or ``"mse"``.
        lr: learning rate of the default optimizer.
        weight_decay: weight decay of the default optimizer (side network only).
        output_penalty: weight of ``mean(g(.)^2)`` added to the loss; pulls ``F`` towards ``f`` on every
            sample (useful when only a few labels should change).
        optimizer: factory ``param_groups -> optimizer``; ``None`` (default):
            ``torch.optim.Adam(side parameters, lr=lr, weight_decay=weight_decay)``. A factory receives one group
            ``{"params": side parameters, "name": "side", "anchor": None}``. The side network has no
            pre-trained anchor: an optimizer with ``is_projected(p)`` (FTP) that would project a side
            parameter is refused with a ``ValueError``; pass ``exclude=groups[0]["params"]`` to FTP.
        check_base: when loading a checkpoint, refuse a base whose fingerprint differs from the one saved.
        feature: deprecated spelling of ``layer`` (goes in the next release).
    """

    def __init__(
        self,
        base: nn.Module,
        side: nn.Module | Mapping[str, Any],
        layer: str | None = None,
        loss: LossName = "cross_entropy",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        output_penalty: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        check_base: bool = True,
        *,
        feature: str | None = None,
    ) -> None:
        super().__init__()
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"`loss` must be 'cross_entropy' or 'mse', got {loss!r}.")
        if not lr > 0:
            raise ValueError(f"`lr` must be > 0, got {lr!r}.")
        if weight_decay < 0 or output_penalty < 0:
            raise ValueError(
                f"`weight_decay` and `output_penalty` must be >= 0, got {weight_decay!r}, {output_penalty!r}."
            )
        if feature is not None:
            warnings.warn(
                "AdditiveFineTuning: `feature` is deprecated and goes in the next release. HINT: pass "
                f"`layer={feature!r}`.",
                DeprecationWarning,
                stacklevel=2,
            )
            layer = feature if layer is None else layer
        if isinstance(side, Mapping):
            side = build_side_network(side)
        self.model = AdditiveModel(base, side, layer=layer)
        self.loss_name, self.lr, self.weight_decay = loss, lr, weight_decay
        self.output_penalty, self.check_base = output_penalty, check_base
        self.optimizer_factory = check_optimizer(
            optimizer, lr=lr, weight_decay=weight_decay, who="AdditiveFineTuning"
        )
        self.base_fingerprint = module_fingerprint(base)
        self.save_hyperparameters(ignore=["base", "side", "optimizer", "feature"])
        side_config = getattr(side, "config", None)
        if isinstance(side_config, Mapping):
            self.hparams["side"] = dict(side_config)

    # --- accounting -------------------------------------------------------------------------------
    def parameter_count(self) -> ParameterCount:
        """Trainable (side) and total (base + side) parameter values."""
        return count_parameters(self.model)

    def print_parameter_count(self) -> None:
        rank_zero_info(format_parameter_count(self.parameter_count()))

    # --- model --------------------------------------------------------------------------------------
    @override
    def forward(self, x: Any = None, **inputs: Any) -> Tensor:
        """``base(x) + side(...)``; keyword inputs (``input_ids=..., attention_mask=...``) reach the base as
        ``base(**inputs)``, so a part that calls ``module(**batch_inputs)`` (RESQUECheck) works too."""
        return self.model(x if not inputs else inputs)

    @override
    def train(self, mode: bool = True) -> AdditiveFineTuning:
        super().train(mode)
        self.model.base.eval()  # the frozen base never changes mode (BatchNorm statistics, dropout)
        return self

    def _loss(self, out: Tensor, target: Tensor) -> Tensor:
        if self.loss_name == "cross_entropy":
            if not (target != IGNORE_INDEX).any():  # only "keep" samples: the output penalty alone acts
                return out.sum() * 0.0
            return nn.functional.cross_entropy(out, target, ignore_index=IGNORE_INDEX)
        return nn.functional.mse_loss(out, target.to(out.dtype))

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        x, y = labelled_batch(batch, who="AdditiveFineTuning")
        base_out, delta = self.model.parts(x)
        out = base_out + delta
        loss = self._loss(out, y)
        total = loss + self.output_penalty * delta.pow(2).mean() if self.output_penalty else loss
        sync = stage != "train"
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=sync)
        if self.loss_name == "cross_entropy" and (y != IGNORE_INDEX).any():
            labelled = y != IGNORE_INDEX
            acc = (out.argmax(-1)[labelled] == y[labelled]).float().mean()
            self.log(
                f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train", sync_dist=sync
            )
        return total

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch_inputs(batch, who="AdditiveFineTuning"))

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.side.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        optimizer = self.optimizer_factory([{"params": params, "name": "side", "anchor": None}])
        is_projected = getattr(optimizer, "is_projected", None)  # FTP and other anchor-projecting wrappers
        if callable(is_projected) and any(is_projected(p) for p in params):
            raise ValueError(
                "The optimizer projects the side network towards an anchor, but the side network has no "
                "pre-trained values (it starts at zero output). HINT: exclude it, e.g. "
                "`optimizer=lambda groups: FTP(torch.optim.AdamW(groups, lr=1e-3), "
                "exclude=groups[0]['params'])`."
            )
        return optimizer

    @override
    def on_fit_start(self) -> None:
        trainable = [n for n, p in self.model.base.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(
                f"The base model has trainable parameters at fit start ({trainable[:3]}...): something "
                "unfroze it after wrapping. HINT: keep `base.requires_grad_(False)`; additive fine-tuning "
                "trains the side network only."
            )

    # --- checkpoints: side network only -------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(_BASE_PREFIX)]:
            del state[key]
        checkpoint[_CKPT_KEY] = {
            "base_fingerprint": self.base_fingerprint,
            "base_class": f"{type(self.model.base).__module__}.{type(self.model.base).__qualname__}",
            "layer": self.model.layer,
            "side_config": getattr(self.model.side, "config", None),
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get(_CKPT_KEY)
        if info is None:
            raise ValueError(
                "This checkpoint was not written by AdditiveFineTuning (no 'additive_fine_tuning' entry)."
            )
        if self.check_base and info["base_fingerprint"] != self.base_fingerprint:
            raise ValueError(
                f"The base passed ({type(self.model.base).__name__}, fingerprint "
                f"{self.base_fingerprint[:12]}) is not the base this side network was trained on "
                f"({info['base_class']}, fingerprint {info['base_fingerprint'][:12]}). HINT: load with the "
                "same pre-trained weights, or pass `check_base=False` to load anyway."
            )
        state = checkpoint.setdefault("state_dict", {})
        for key, value in self.model.base.state_dict().items():  # strict loading sees a complete state
            state[_BASE_PREFIX + key] = value
