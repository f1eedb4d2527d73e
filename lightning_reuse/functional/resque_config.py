"""The options of a RESQUE pass, declared and validated once: :class:`RESQUEConfig`.

Following PEFT's config pattern: :class:`~lightning_reuse.RESQUECheck` builds one config from its keyword
arguments and passes it through; the pass pools every batch with :meth:`RESQUEConfig.pool`, which does not
check ``pooling`` again.

Example:
    >>> import torch
    >>> config = RESQUEConfig(layer="net.block2", mode="dist", num_classes=10)
    >>> config.pool(torch.ones(4, 8, 3, 3)).shape
    torch.Size([4, 8])
    >>> RESQUEConfig(layer="net.block2", mode="task", pooling="max")
    Traceback (most recent call last):
    ...
    ValueError: `pooling` must be one of ('default', 'flatten', 'cls', 'token_mean', 'feature_mean'), got 'max'. HINT: pass pooling='default' (channel mean for conv outputs) or another of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from lightning_reuse.functional.resque import Pooling, _check_pooling, _pool_checked

__all__ = ["LABEL_SOURCES", "MODES", "RESQUEConfig"]

Mode = Literal["dist", "task"]
LabelSource = Literal["target", "prediction"]
MODES: tuple[str, ...] = ("dist", "task")
LABEL_SOURCES: tuple[str, ...] = ("target", "prediction")


def _positive_int_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


@dataclass(frozen=True)
class RESQUEConfig:
    """What one RESQUE pass computes (Sangarya and Kim, AAAI 2025): which layer, which score, how pooled.

    Args:
        layer: Name of the hooked Conv/Linear layer (a key of ``model.named_modules()``).
        mode: ``"dist"`` (RESQUE_dist: original vs shifted data, same task) or ``"task"`` (RESQUE_task: the
            new task's data).
        num_classes: Number of classes (required for ``"dist"`` and for a task reservoir).
        pooling: How a layer output becomes one vector per sample (see
            :func:`~lightning_reuse.functional.pool_features`).
        label_source: ``"target"`` (the batch labels) or ``"prediction"`` (group the shifted data by the
            model's own argmax; ``"dist"`` only).
        reservoir_size: Per-class bound on the features kept for ``"task"`` (``None``: all).

    Raises:
        ValueError: An option out of range, or options that do not go together; the message names the
            field, the value and a fix.
    """

    layer: str
    mode: Mode = "dist"
    num_classes: int | None = None
    pooling: Pooling = "default"
    label_source: LabelSource = "target"
    reservoir_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(
                f"`layer` must be the name of a layer (a key of `model.named_modules()`), got {self.layer!r}. "
                "HINT: list the names with `lightning_reuse.nn.layer_names(model)`."
            )
        if self.mode not in MODES:
            raise ValueError(
                f"`mode` must be 'auto' (RESQUECheck), 'dist' or 'task', got {self.mode!r}. HINT: 'dist' "
                "compares original and shifted data, 'task' scores a new task's data."
            )
        _check_pooling(self.pooling)
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(
                f"`label_source` must be 'target' or 'prediction', got {self.label_source!r}. "
                "HINT: pass label_source='target' (the batch labels, the default)."
            )
        self._check_counts()

    def _check_counts(self) -> None:
        if not _positive_int_or_none(self.num_classes):
            raise ValueError(
                f"`num_classes` must be an int >= 1 or None, got {self.num_classes!r}. "
                "HINT: pass the number of classes of the task."
            )
        if not _positive_int_or_none(self.reservoir_size):
            raise ValueError(
                f"`reservoir_size` must be a positive int or None, got {self.reservoir_size!r}. "
                "HINT: leave it out (None) to keep every feature."
            )
        if self.mode == "dist" and self.num_classes is None:
            raise ValueError(
                "`num_classes` is required for mode='dist' (states have a fixed size across ranks). "
                "HINT: pass num_classes=<number of classes>."
            )
        if self.mode == "task" and self.reservoir_size is not None and self.num_classes is None:
            raise ValueError(
                "`num_classes` is required with `reservoir_size` (one reservoir per class). "
                "HINT: pass num_classes=<number of classes>, or leave reservoir_size out."
            )
        if self.label_source == "prediction" and self.mode != "dist":
            raise ValueError(
                "`label_source='prediction'` applies to mode='dist' (a new task needs its labels). "
                "HINT: pass label_source='target' for mode='task'."
            )

    def pool(self, output: Tensor, mask: Tensor | None = None) -> Tensor:
        """One feature vector per sample, ``[B, D]``, from the layer's raw ``output`` (pooling already checked).

        ``mask`` is the ``[B, T]`` attention mask of a token output (padding is left out of token means).
        """
        return _pool_checked(output, self.pooling, mask)
