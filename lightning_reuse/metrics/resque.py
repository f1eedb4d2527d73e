"""Streaming, DDP-synchronised RESQUE (Sangarya and Kim, AAAI 2025, arXiv:2412.15511) as torchmetrics Metrics.

:class:`RESQUEDist` keeps per-class float64 feature sums and counts (``dist_reduce_fx="sum"``): they merge
exactly across batches and ranks, so the streamed score equals the one-shot one and DDP equals a single
process. :class:`RESQUETask` needs the features themselves (``dist_reduce_fx="cat"``) or, with
``reservoir_size``, a bounded uniform sample per class (a documented deviation from the paper, which uses
every sample).

Example:
    >>> import torch
    >>> metric = RESQUEDist(num_classes=2)
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(32, 5, generator=g), torch.arange(32) % 2
    >>> for i in range(0, 32, 8):
    ...     metric.update(x[i : i + 8], y[i : i + 8])
    ...     metric.update(x[i : i + 8], y[i : i + 8], shifted=True)
    >>> round(float(metric.compute()), 6)
    0.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_reuse.functional.resque import (
    TaskInit,
    _check_inputs,
    _resque_dist_compute,
    _resque_dist_update_lazy,
    _resque_task_compute,
)


def _check_num_classes(num_classes: Any, required: bool) -> None:
    if num_classes is None and not required:
        return
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive int, got {num_classes!r}. "
            "HINT: pass the number of classes of the task (fixed, so states match across ranks)."
        )


def _width_changed(before: int, now: int) -> ValueError:
    return ValueError(
        f"feature width changed from {before} to {now} between batches: the features must have one width, "
        "but this one follows something that varies per batch, such as the sequence length of padded token "
        "batches under pooling='feature_mean' (one value per token) or 'flatten'. HINT: pool tokens with "
        "pooling='token_mean' (the default) or 'cls', and hook one layer for every batch."
    )


class RESQUEDist(Metric):
    r"""RESQUE_dist over streamed batches of original and shifted features.

    .. math:: \frac{1}{|C|}\sum_{c\in C}\frac{\angle(s_c, s'_c)}{\pi},\quad
        s_c=\sum_{i: y_i=c} f(x_i),\; s'_c=\sum_{j: y'_j=c} f(x'_j)

    - ``update(features [B, D], labels [B], shifted=False)`` adds a batch to one side.
    - ``compute()`` returns the float64 score (and the ``[K]`` per-class angles with ``return_per_class``).

    Args:
        num_classes: number of classes ``K`` (fixed, so states have the same shape on every rank).
        num_features: feature width ``D``; ``None`` infers it from the first batch (in DDP every rank
            must then see at least one batch before ``compute``).
        return_per_class: ``compute`` returns ``(score, per_class)``; skipped classes are NaN.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self, num_classes: int, num_features: int | None = None, return_per_class: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _check_num_classes(num_classes, required=True)
        if num_features is not None and (not isinstance(num_features, int) or num_features < 1):
            raise ValueError(
                f"`num_features` must be a positive int or None, got {num_features!r}. "
                "HINT: leave it out to infer the width from the first batch."
            )
        self.num_classes = num_classes
        self.return_per_class = return_per_class
        width = num_features or 0
        for prefix in ("", "shifted_"):
            self.add_state(
                f"{prefix}sums", torch.zeros(num_classes, width, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(
                f"{prefix}counts", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum"
            )
        self.add_state("invalid", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, features: Tensor, labels: Tensor | None = None, shifted: bool = False) -> None:
        """Add a batch of ``features [B, D]`` with class ``labels [B]`` to the original or shifted side."""
        sums, counts, invalid = _resque_dist_update_lazy(  # no host-device sync per batch
            features, labels, self.num_classes, "shifted features" if shifted else "features"
        )
        if self.sums.shape[1] == 0:  # width inferred from the first batch
            self.sums = torch.zeros_like(sums)
            self.shifted_sums = torch.zeros_like(sums)
        current = self.shifted_sums if shifted else self.sums
        if current.shape[1] != sums.shape[1]:
            raise _width_changed(current.shape[1], sums.shape[1])
        current += sums
        (self.shifted_counts if shifted else self.counts).add_(counts)
        self.invalid.add_(invalid)

    def compute(self) -> Tensor | tuple[Tensor, Tensor]:
        """The score in [0, 1] (float64), or ``(score, per_class)``."""
        if int(self.invalid):
            raise ValueError(
                f"RESQUEDist: {int(self.invalid)} samples had labels outside [0, num_classes={self.num_classes}) "
                "and were not counted. HINT: raise `num_classes` or remap the labels to [0, num_classes)."
            )
        score, per_class = _resque_dist_compute(
            self.sums, self.counts, self.shifted_sums, self.shifted_counts
        )
        return (score, per_class) if self.return_per_class else score


class RESQUETask(Metric):
    r"""RESQUE_task over streamed batches of the new task's features: :math:`1 - \mathrm{ARI}(y, \mathrm{kmeans})`.

    Keeps every feature (``dist_reduce_fx="cat"``, memory ``N x D``) unless ``reservoir_size`` is set:
    then each class keeps a uniform random sample of at most ``reservoir_size`` features per rank
    (reservoir sampling, seeded), which bounds memory at ``K x reservoir_size x D`` per rank. This is a
    deviation from the paper (which clusters all samples): the score is then an estimate.

    Args:
        num_classes: number of classes (required with ``reservoir_size``).
        reservoir_size: per-class bound, or ``None`` to keep everything.
        init, max_iter, tol, seed: as in :func:`lightning_reuse.functional.resque.resque_task`
            (``seed`` also seeds the reservoir).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> metric = RESQUETask(num_classes=2, reservoir_size=50)
        >>> metric.update(torch.randn(200, 3, generator=g) + 8 * (torch.arange(200) % 2)[:, None], torch.arange(200) % 2)
        >>> float(metric.compute())
        0.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        num_classes: int | None = None,
        reservoir_size: int | None = None,
        init: TaskInit = "centroids",
        max_iter: int = 300,
        tol: float = 1e-4,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_num_classes(num_classes, required=reservoir_size is not None)
        if reservoir_size is not None and (not isinstance(reservoir_size, int) or reservoir_size < 1):
            raise ValueError(
                f"`reservoir_size` must be a positive int or None, got {reservoir_size!r}. "
                "HINT: leave it out (None) to keep every feature."
            )
        if init not in ("centroids", "k-means++"):
            raise ValueError(
                f"`init` must be 'centroids' or 'k-means++', got {init!r}. "
                "HINT: pass init='centroids' (the default)."
            )
        self.num_classes = num_classes
        self.reservoir_size = reservoir_size
        self.init, self.max_iter, self.tol, self.seed = init, max_iter, tol, seed
        if reservoir_size is None:
            self.add_state("features", [], dist_reduce_fx="cat")
            self.add_state("labels", [], dist_reduce_fx="cat")
        else:
            slots = num_classes * reservoir_size
            self.add_state("res_features", torch.zeros(slots, 0, dtype=torch.float64), dist_reduce_fx="cat")
            self.add_state("res_labels", torch.full((slots,), -1, dtype=torch.int64), dist_reduce_fx="cat")
            self.add_state("res_seen", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self._generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        super().reset()
        self._generator = torch.Generator().manual_seed(self.seed)

    def update(self, features: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch of new-task ``features [B, D]`` with their new-task ``labels [B]``."""
        _, high = _check_inputs(features, labels)
        feats = features.detach().to(torch.float64)
        if self.reservoir_size is None:
            if self.features and self.features[0].shape[1] != feats.shape[1]:
                raise _width_changed(self.features[0].shape[1], feats.shape[1])
            self.features.append(feats)
            self.labels.append(labels.detach().to(feats.device))
            return
        if high >= self.num_classes:
            raise ValueError(
                f"label {high} is out of range for num_classes={self.num_classes}. "
                "HINT: raise `num_classes` or remap the labels to [0, num_classes)."
            )
        if self.res_seen.sum() > 0 and self.res_features.shape[1] != feats.shape[1]:
            raise _width_changed(self.res_features.shape[1], feats.shape[1])
        if self.res_features.shape[1] == 0:
            self.res_features = torch.zeros(
                self.res_labels.shape[0], feats.shape[1], dtype=torch.float64, device=self.res_labels.device
            )
        r = self.reservoir_size
        for i, c in enumerate(labels.tolist()):  # Algorithm R, one reservoir per class
            seen = int(self.res_seen[c])
            slot = seen if seen < r else int(torch.randint(seen + 1, (1,), generator=self._generator))
            if slot < r:
                self.res_features[c * r + slot] = feats[i]
                self.res_labels[c * r + slot] = c
            self.res_seen[c] += 1

    def compute(self) -> Tensor:
        """The score in [0, 1.5] (float64)."""
        if self.reservoir_size is None:
            if isinstance(self.features, list) and not self.features:  # (a tensor after a DDP sync)
                raise ValueError("RESQUETask saw no samples. HINT: check that the dataloader is not empty.")
            feats, labels = dim_zero_cat(self.features), dim_zero_cat(self.labels)
        else:
            keep = self.res_labels >= 0
            if not bool(keep.any()):
                raise ValueError("RESQUETask saw no samples. HINT: check that the dataloader is not empty.")
            feats, labels = self.res_features[keep], self.res_labels[keep]
        return _resque_task_compute(
            feats, labels, init=self.init, max_iter=self.max_iter, tol=self.tol, seed=self.seed
        )
