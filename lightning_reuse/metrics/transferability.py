r"""Streaming, DDP-synchronised transferability baselines as torchmetrics Metrics.

- :class:`LogME` and :class:`HScore` keep float64 feature Gram statistics (``F^T F``, ``F^T T``, per-class
  sums and counts; ``dist_reduce_fx="sum"``): streamed and DDP scores equal the one-shot functional ones.
- :class:`NCE` keeps the joint count table of (target, source) labels (``"sum"``), exactly.
- :class:`LEEP` keeps the joint probability table (``"sum"``) and, because LEEP takes the log of a
  per-sample sum over that table, the source probabilities themselves (``"cat"``, memory ``n x Z``).
- :class:`KNNAccuracy` and :class:`LinearProbeAccuracy` keep the features (``"cat"``, memory ``n x D``).

Example:
    >>> import torch
    >>> from lightning_reuse.functional import logme
    >>> g = torch.Generator().manual_seed(0)
    >>> f, y = torch.randn(64, 5, generator=g), torch.arange(64) % 2
    >>> metric = LogME(num_classes=2)
    >>> for i in range(0, 64, 16):
    ...     metric.update(f[i : i + 16], y[i : i + 16])
    >>> bool(torch.isclose(metric.compute(), logme(f, y)))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_reuse.functional.probe import knn_accuracy, linear_probe_accuracy
from lightning_reuse.functional.transferability import (
    _check_probs,
    _h_score_from_stats,
    _leep_from_table,
    _logme_from_stats,
    _nce_from_counts,
    check_features_labels,
    h_score,
    leep,
    logme,
    nce,
    one_hot64,
)

__all__ = [
    "BaselineFeatures",
    "HScore",
    "KNNAccuracy",
    "LEEP",
    "LinearProbeAccuracy",
    "LogME",
    "NCE",
    "baseline_scores",
]


def _check_count(value: Any, name: str, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}. HINT: {hint}")


def _check_labels_range(labels: Tensor, num_classes: int, who: str) -> None:
    if int(labels.max()) >= num_classes:
        raise ValueError(
            f"{who}: label {int(labels.max())} is out of range for num_classes={num_classes}. "
            "HINT: raise `num_classes` or remap the labels to [0, num_classes)."
        )


class _GramMetric(Metric):
    """Float64 ``sum f``, ``F^T F``, ``F^T T``, class counts; width ``D`` inferred from the first batch."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, num_features: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_count(num_classes, "num_classes", "pass the number of target classes (fixed across ranks).")
        if num_features is not None:
            _check_count(
                num_features, "num_features", "leave it out to infer the width from the first batch."
            )
        self.num_classes, d = num_classes, num_features or 0
        self.add_state("total", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("gram", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ft_t", torch.zeros(d, num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch of ``features [B, D]`` with class ``labels [B]``."""
        who = type(self).__name__
        check_features_labels(features, labels, who)
        _check_labels_range(labels, self.num_classes, who)
        f = features.detach().to(torch.float64)
        t = one_hot64(labels, self.num_classes).to(f.device)
        if self.gram.shape[0] == 0:
            d = f.shape[1]
            self.total, self.gram = f.new_zeros(d), f.new_zeros(d, d)
            self.ft_t = f.new_zeros(d, self.num_classes)
        if self.gram.shape[0] != f.shape[1]:
            raise ValueError(
                f"{who}: feature width changed from {self.gram.shape[0]} to {f.shape[1]} between batches. "
                "HINT: pool every batch to one fixed-width vector per sample."
            )
        self.total += f.sum(0)
        self.gram += f.T @ f
        self.ft_t += f.T @ t
        self.counts += t.sum(0)

    def _n(self) -> int:
        n = int(self.counts.sum())
        if n == 0:
            raise ValueError(
                f"{type(self).__name__} saw no samples. HINT: check that the loader is not empty."
            )
        return n


class LogME(_GramMetric):
    """LogME (:func:`lightning_reuse.functional.logme`) from streamed ``F^T F``, ``F^T T`` and class counts.

    Args:
        num_classes: number of target classes ``C``.
        num_features: feature width ``D`` (``None``: from the first batch; in DDP every rank must see one).
        max_iter, tol: as in :func:`~lightning_reuse.functional.logme`.
    """

    def __init__(
        self,
        num_classes: int,
        num_features: int | None = None,
        max_iter: int = 100,
        tol: float = 1e-8,
        **kw: Any,
    ) -> None:
        super().__init__(num_classes, num_features, **kw)
        self.max_iter, self.tol = max_iter, tol

    def compute(self) -> Tensor:
        """The float64 score (higher is better)."""
        n = self._n()
        return _logme_from_stats(self.gram, self.ft_t, self.counts, n, self.max_iter, self.tol)


class HScore(_GramMetric):
    """H-score (:func:`lightning_reuse.functional.h_score`) from streamed feature sums and Gram matrices.

    Args:
        num_classes: number of target classes.
        num_features: feature width (``None``: from the first batch).
        shrinkage: ``None`` (the original) or a shrinkage weight in ``[0, 1)``.
    """

    def __init__(
        self, num_classes: int, num_features: int | None = None, shrinkage: float | None = None, **kw: Any
    ) -> None:
        super().__init__(num_classes, num_features, **kw)
        if shrinkage is not None and not 0 <= shrinkage < 1:
            raise ValueError(f"`shrinkage` must be None or in [0, 1), got {shrinkage!r}. HINT: e.g. 0.1.")
        self.shrinkage = shrinkage

    def compute(self) -> Tensor:
        """The float64 score in ``[0, min(D, C - 1)]``."""
        self._n()
        return _h_score_from_stats(self.total, self.gram, self.ft_t.T, self.counts, self.shrinkage)


class NCE(Metric):
    """NCE (:func:`lightning_reuse.functional.nce`) from a streamed ``[C, Z]`` count table (exact in DDP).

    Args:
        num_classes: number of target classes ``C``.
        num_source: number of source classes ``Z``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, num_source: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_count(num_classes, "num_classes", "pass the number of target classes.")
        _check_count(num_source, "num_source", "pass the number of source classes (the head's outputs).")
        self.num_classes, self.num_source = num_classes, num_source
        self.add_state(
            "joint", torch.zeros(num_classes, num_source, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, source_labels: Tensor, labels: Tensor) -> None:
        """Add ``source_labels [B]`` (the source's hard labels) with target ``labels [B]``."""
        check_features_labels(source_labels[:, None], labels, "NCE", "source_labels")
        _check_labels_range(labels, self.num_classes, "NCE")
        _check_labels_range(source_labels, self.num_source, "NCE (source_labels)")
        self.joint += one_hot64(labels, self.num_classes).T @ one_hot64(source_labels, self.num_source)

    def compute(self) -> Tensor:
        """The float64 score ``<= 0``."""
        if float(self.joint.sum()) == 0:
            raise ValueError("NCE saw no samples. HINT: check that the loader is not empty.")
        return _nce_from_counts(self.joint)


class LEEP(Metric):
    """LEEP (:func:`lightning_reuse.functional.leep`): the joint table (``"sum"``) and the probabilities (``"cat"``).

    Args:
        num_classes: number of target classes ``C``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_count(num_classes, "num_classes", "pass the number of target classes.")
        self.num_classes = num_classes
        self.add_state("probs", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, source_probs: Tensor, labels: Tensor) -> None:
        """Add ``source_probs [B, Z]`` (softmax outputs of the source) with target ``labels [B]``."""
        _check_probs(source_probs, labels)
        _check_labels_range(labels, self.num_classes, "LEEP")
        self.probs.append(source_probs.detach().to(torch.float64))
        self.labels.append(labels.detach().long())

    def compute(self) -> Tensor:
        """The float64 score ``<= 0``."""
        if isinstance(self.probs, list) and not self.probs:
            raise ValueError("LEEP saw no samples. HINT: check that the loader is not empty.")
        probs, labels = dim_zero_cat(self.probs), dim_zero_cat(self.labels)
        joint = one_hot64(labels, self.num_classes).T @ probs / len(labels)
        return _leep_from_table(probs, labels, joint)


class _FeatureMetric(Metric):
    """Keeps every feature and label (``"cat"``)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("features", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch of ``features [B, D]`` with class ``labels [B]``."""
        check_features_labels(features, labels, type(self).__name__)
        self.features.append(features.detach().to(torch.float64))
        self.labels.append(labels.detach().long())

    def _data(self) -> tuple[Tensor, Tensor]:
        if isinstance(self.features, list) and not self.features:
            raise ValueError(
                f"{type(self).__name__} saw no samples. HINT: check that the loader is not empty."
            )
        return dim_zero_cat(self.features), dim_zero_cat(self.labels)


class KNNAccuracy(_FeatureMetric):
    """Leave-one-out cosine k-NN accuracy (:func:`lightning_reuse.functional.knn_accuracy`) of all samples seen.

    Args:
        k: neighbours per vote.
    """

    def __init__(self, k: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_count(k, "k", "use k=1.")
        self.k = k

    def compute(self) -> Tensor:
        """Accuracy in ``[0, 1]``."""
        return knn_accuracy(*self._data(), k=self.k)


class LinearProbeAccuracy(_FeatureMetric):
    """Cross-fitted ridge probe accuracy (:func:`lightning_reuse.functional.linear_probe_accuracy`).

    The folds are dealt over the samples in the order they were gathered (in DDP: rank by rank), so a
    DDP score equals the single-process score of the same samples in that order.

    Args:
        num_classes: number of target classes (``None``: ``labels.max() + 1``).
        folds, ridge, seed: as in :func:`~lightning_reuse.functional.linear_probe_accuracy`.
    """

    def __init__(
        self, num_classes: int | None = None, folds: int = 5, ridge: float = 1e-3, seed: int = 0, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.num_classes, self.folds, self.ridge, self.seed = num_classes, folds, ridge, seed

    def compute(self) -> Tensor:
        """Accuracy in ``[0, 1]``."""
        f, y = self._data()
        return linear_probe_accuracy(
            f, y, self.num_classes, folds=self.folds, ridge=self.ridge, seed=self.seed
        )


def baseline_scores(
    features: Tensor, labels: Tensor, logits: Tensor | None = None, source_accuracy: bool = False
) -> dict[str, float]:
    """Every baseline that applies to these samples, by name (the functional scores, as floats).

    ``logme``, ``h_score``, ``knn_accuracy`` and ``linear_probe_accuracy`` (5 folds, or ``n`` when
    fewer) on ``features``; with ``logits``: ``leep`` (their softmax) and ``nce`` (their arg-max), and with
    ``source_accuracy`` (same label space) ``source_accuracy``. A score these samples cannot give (one
    sample, one class) is left out.
    """
    y = labels.long()
    n, out = len(y), {}
    if n < 2 or int(torch.unique(y).numel()) < 2:
        return out
    out["logme"] = float(logme(features, y))
    out["h_score"] = float(h_score(features, y))
    out["knn_accuracy"] = float(knn_accuracy(features, y))
    out["linear_probe_accuracy"] = float(linear_probe_accuracy(features, y, folds=min(5, n)))
    if logits is not None:
        out["leep"] = float(leep(logits.double().softmax(-1), y))
        out["nce"] = float(nce(logits.argmax(-1), y))
        if source_accuracy and logits.shape[1] > int(y.max()):
            out["source_accuracy"] = float((logits.argmax(-1) == y).double().mean())
    return out


class BaselineFeatures(_FeatureMetric):
    """Keeps features, labels and (optionally) source logits (``"cat"``); ``compute`` gives every baseline.

    The pre-check callbacks feed it from their own pass, so the baselines cost no extra forward.

    Args:
        num_classes: unused by the scores (kept for the callers' records); ``None`` is fine.
    """

    def __init__(self, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("logits", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:  # type: ignore[override]
        """Add ``features [B, D]``, ``labels [B]`` and, when the model has them, ``logits [B, Z]``."""
        super().update(features, labels)
        if logits is not None:
            self.logits.append(logits.detach().to(torch.float64))

    def compute(self, source_accuracy: bool = False) -> dict[str, float]:  # type: ignore[override]
        """The baselines by name (see :func:`baseline_scores`)."""
        f, y = self._data()
        logits = None
        if not (isinstance(self.logits, list) and not self.logits):
            logits = dim_zero_cat(self.logits)
            logits = logits if len(logits) == len(y) else None
        return baseline_scores(f, y, logits, source_accuracy)
