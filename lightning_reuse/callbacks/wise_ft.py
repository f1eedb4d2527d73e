"""WiSE-FT: after fine-tuning, interpolate pre-trained and fine-tuned weights (Wortsman et al., CVPR 2022).

Thin glue over :func:`lightning_reuse.optim.anchors.interpolate_state_dicts`: the callback snapshots the
model's state_dict when fit starts (the pre-trained weights; kept in its own checkpoint state so a resumed
run still knows them), and when fit ends sweeps ``alphas``, evaluating each interpolation
``(1 - a) * w0 + a * w_ft`` with ``eval_fn``, logs the sweep and leaves the model at the chosen ``alpha``.
The entries selected by ``exclude`` (default: the module named ``head``, a new head whose value at fit start
is a random initialisation) are not interpolated: they keep their fine-tuned value for every alpha.

Example:
    >>> cb = WiSEFT(alphas=(0.0, 0.5, 1.0), alpha="best", monitor="acc", eval_fn=None)
    Traceback (most recent call last):
    ...
    ValueError: `alpha='best'` needs `eval_fn` (a function module -> {metric: value}) ...
    >>> cb = WiSEFT(alphas=(0.0, 0.5, 1.0), alpha=0.5)
    >>> cb.alphas
    (0.0, 0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_reuse.callbacks._windows import measurement_window
from lightning_reuse.optim.anchors import (
    ExcludeSpec,
    excluded_state_keys,
    interpolate_state_dicts,
    normalize_name,
)

__all__ = ["WiSEFT"]

EvalFn = Callable[[pl.LightningModule], Mapping[str, float]]


class WiSEFT(Callback):
    """Weight-space ensembling of the pre-trained and the fine-tuned model, with a sweep over ``alpha``.

    Args:
        alphas: the mixing coefficients to evaluate (0 = pre-trained, 1 = fine-tuned).
        alpha: the coefficient the model is left at after fit: a number in [0, 1], or ``"best"`` (the best
            ``monitor`` value of the sweep; needs ``eval_fn``).
        eval_fn: ``module -> {metric: value}``, called in eval mode under ``torch.no_grad`` for every alpha
            (e.g. accuracy on a held-out split). Without it nothing is evaluated and ``alpha`` is applied.
        monitor: the metric of ``eval_fn`` that ``alpha="best"`` maximises (``mode="max"``) or minimises.
        mode: ``"max"`` or ``"min"``.
        pretrained: the pre-trained state_dict; default: the module's state_dict when fit starts.
        exclude: the entries without a pre-trained counterpart (a new head), which keep their fine-tuned value
            at every alpha: same forms as :class:`~lightning_reuse.optim.FTP`'s ``exclude`` (a module name or
            list of names, parameters, a module, or a predicate ``(name, tensor) -> bool``), applied to the
            state_dict: a name or module rule also covers its buffers. Default ``"head"`` (a rule that matches
            nothing warns); ``None`` interpolates every entry present in ``pretrained``.

    After fit: :attr:`results` (one dict per alpha: ``{"alpha": a, **metrics}``), :attr:`chosen_alpha` and
    :attr:`finetuned` (the fine-tuned state_dict on CPU, before interpolation); from fit start,
    :attr:`excluded_keys` (the state_dict keys ``exclude`` selected).
    Entries selected by ``exclude`` and entries without a pre-trained counterpart (absent from ``pretrained``
    or of another shape) keep their fine-tuned value; so do integer buffers (counters).
    """

    def __init__(
        self,
        alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        alpha: float | Literal["best"] = 0.5,
        eval_fn: EvalFn | None = None,
        monitor: str | None = None,
        mode: Literal["max", "min"] = "max",
        pretrained: Mapping[str, torch.Tensor] | None = None,
        exclude: ExcludeSpec = "head",
    ) -> None:
        self.alphas = tuple(float(a) for a in alphas)
        if not self.alphas or any(not 0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"`alphas` must be a non-empty list of numbers in [0, 1], got {alphas!r}.")
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}.")
        if alpha == "best":
            if eval_fn is None or monitor is None:
                raise ValueError(
                    "`alpha='best'` needs `eval_fn` (a function module -> {metric: value}) and `monitor` "
                    f"(the metric to optimise); got eval_fn={eval_fn!r}, monitor={monitor!r}. "
                    "HINT: pass both, or a fixed `alpha=0.5`."
                )
        elif not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"`alpha` must be a number in [0, 1] or 'best', got {alpha!r}.")
        self.alpha, self.eval_fn, self.monitor, self.mode = alpha, eval_fn, monitor, mode
        self.pretrained = None if pretrained is None else _cpu_copy(pretrained)
        self.exclude = exclude
        self.excluded_keys: set[str] = set()
        self.results: list[dict[str, float]] = []
        self.chosen_alpha: float | None = None
        self.finetuned: dict[str, torch.Tensor] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pretrained is None:
            self.pretrained = _cpu_copy(pl_module.state_dict())
        self.excluded_keys = excluded_state_keys(
            self.exclude,
            pl_module,
            consequence="it will be interpolated towards its value when fit started. HINT: pass the new head's "
            "module name as `exclude=`, or `exclude=None` to interpolate every entry",
        )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.pretrained is not None
        finetuned = self.finetuned = _cpu_copy(pl_module.state_dict())
        self.results = []
        with measurement_window(trainer, "wise-ft-sweep"):
            if self.eval_fn is not None:
                for i, a in enumerate(self.alphas):
                    self._apply(pl_module, finetuned, a)
                    metrics = self._evaluate(pl_module)
                    self.results.append({"alpha": a, **metrics})
                    for logger in trainer.loggers:
                        logger.log_metrics({f"wise_ft/{k}": v for k, v in self.results[-1].items()}, step=i)
            self.chosen_alpha = self._choose()
            self._apply(pl_module, finetuned, self.chosen_alpha)
        if self.monitor is not None and self.results:
            for logger in trainer.loggers:
                logger.log_metrics({"wise_ft/chosen_alpha": self.chosen_alpha}, step=len(self.alphas))
        if self.results and trainer.is_global_zero:
            self._wandb_table(trainer)

    def _wandb_table(self, trainer: pl.Trainer) -> None:
        """The sweep as a W&B table ``wise_ft/sweep`` when a ``WandbLogger`` is attached (rank 0 only)."""
        from lightning.pytorch.loggers import WandbLogger

        columns = list(self.results[0])
        rows = [[r[c] for c in columns] for r in self.results]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="wise_ft/sweep", columns=columns, data=rows)

    def _apply(self, pl_module: pl.LightningModule, finetuned: Mapping[str, torch.Tensor], a: float) -> None:
        pretrained = {k: v for k, v in self.pretrained.items() if normalize_name(k) not in self.excluded_keys}
        mixed = interpolate_state_dicts(pretrained, finetuned, a)
        pl_module.load_state_dict(mixed)

    def _evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            out = self.eval_fn(pl_module)
        pl_module.train(was_training)
        if not isinstance(out, Mapping):
            raise TypeError(f"`eval_fn` must return a mapping metric -> number, got {type(out).__name__}.")
        return {k: float(v) for k, v in out.items()}

    def _choose(self) -> float:
        if self.alpha != "best":
            return float(self.alpha)
        if self.monitor not in self.results[0]:
            raise ValueError(
                f"`monitor={self.monitor!r}` is not among the metrics `eval_fn` returned: "
                f"{sorted(k for k in self.results[0] if k != 'alpha')}. HINT: monitor one of them."
            )
        sign = 1.0 if self.mode == "max" else -1.0
        best = max(self.results, key=lambda r: sign * r[self.monitor])
        return best["alpha"]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"pretrained": self.pretrained, "chosen_alpha": self.chosen_alpha, "results": self.results}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pretrained = state_dict.get("pretrained")
        self.chosen_alpha = state_dict.get("chosen_alpha")
        self.results = list(state_dict.get("results", []))


def _cpu_copy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}
