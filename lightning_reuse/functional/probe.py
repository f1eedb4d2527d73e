r"""Cheap accuracy baselines on frozen features: leave-one-out k-NN and a cross-fitted ridge probe (pure torch).

Both answer "how well does a simple classifier on these features do on the new labels?", which often ranks
pre-trained models as well as the dedicated transferability scores (see ``docs/transferability.md``).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(120) % 3
    >>> f = torch.randn(120, 6, generator=g) + 4 * torch.nn.functional.one_hot(y, 6)
    >>> float(knn_accuracy(f, y)), float(linear_probe_accuracy(f, y))
    (1.0, 1.0)
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_reuse.functional.transferability import check_features_labels, one_hot64

__all__ = ["knn_accuracy", "linear_probe_accuracy", "probe_folds"]


def knn_accuracy(features: Tensor, labels: Tensor, k: int = 1, chunk_size: int = 1024) -> Tensor:
    r"""Leave-one-out k-nearest-neighbour accuracy under cosine similarity.

    Each sample is classified by a majority vote of its ``k`` most cosine-similar *other* samples
    (ties between classes go to the smallest class index); the score is the fraction classified correctly.

    .. math:: \mathrm{acc} = \frac1n\sum_i 1\Big[y_i = \arg\max_c \sum_{j\in N_k(i)} 1[y_j = c]\Big],\quad
        N_k(i) = \operatorname{top-}k_{j\ne i}\;\frac{f_i^\top f_j}{\lVert f_i\rVert\lVert f_j\rVert}

    Args:
        features: ``[n, D]`` features (``n >= k + 1``).
        labels: ``[n]`` class indices.
        k: Neighbours per vote.
        chunk_size: Rows of the ``n x n`` similarity computed at once (memory ``chunk_size x n``).

    Returns:
        A float64 scalar in ``[0, 1]``.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.9]])
        >>> float(knn_accuracy(f, torch.tensor([0, 0, 1, 1])))
        1.0
    """
    c = check_features_labels(features, labels, "knn_accuracy")
    n = len(labels)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(
            f"knn_accuracy: `k` must be an int in [1, n - 1] = [1, {n - 1}], got {k!r}. HINT: use k=1."
        )
    f = torch.nn.functional.normalize(features.detach().to(torch.float64), dim=1)
    hot = one_hot64(labels, c)
    correct = 0
    for start in range(0, n, chunk_size):
        sim = f[start : start + chunk_size] @ f.T
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + start] = -float("inf")  # leave the sample itself out
        idx = sim.topk(k, dim=1).indices
        votes = hot[idx].sum(1)
        correct += int((votes.argmax(1) == labels[start : start + chunk_size]).sum())
    return torch.tensor(correct / n, dtype=torch.float64)


def probe_folds(n: int, folds: int, seed: int) -> Tensor:
    """Fold index ``[n]`` of each sample: a seeded random permutation dealt round-robin into ``folds``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(n, dtype=torch.long)
    out[perm] = torch.arange(n) % folds
    return out


def _ridge_predict(train_f: Tensor, train_t: Tensor, test_f: Tensor, ridge: float) -> Tensor:
    """Scores ``[m, C]`` of the ridge fit on centred features and targets (intercept unpenalised)."""
    mu, t_bar = train_f.mean(0), train_t.mean(0)
    x = train_f - mu
    gram = x.T @ x
    d = gram.shape[0]
    scale = torch.trace(gram) / d
    lam = ridge * (scale if scale > 0 else 1.0)
    eye = torch.eye(d, dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram + lam * eye, x.T @ (train_t - t_bar))
    return (test_f - mu) @ w + t_bar


def linear_probe_accuracy(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    folds: int = 5,
    ridge: float = 1e-3,
    seed: int = 0,
) -> Tensor:
    r"""Cross-fitted accuracy of a closed-form ridge probe on one-hot targets.

    The samples are dealt into ``folds`` folds (:func:`probe_folds`); for each fold, a ridge regression
    with intercept is fitted on the other folds,

    .. math:: W = (X^\top X + \lambda I)^{-1} X^\top (T - \bar t),\quad
        \lambda = \mathrm{ridge}\cdot\frac{\mathrm{tr}(X^\top X)}{D}

    (``X`` the training features centred on their mean, ``T`` one-hot targets; ``lambda`` relative to the
    mean eigenvalue, so the probe does not depend on the feature scale), and each held-out sample is
    classified by the arg-max of its scores. The score is the fraction of all ``n`` samples classified
    correctly while held out.

    Args:
        features: ``[n, D]`` features.
        labels: ``[n]`` class indices.
        num_classes: number of classes (default ``labels.max() + 1``).
        folds: Number of folds (``2 <= folds <= n``).
        ridge: Relative ridge penalty (``> 0``).
        seed: Seed of the fold assignment.

    Returns:
        A float64 scalar in ``[0, 1]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 2
        >>> f = torch.randn(60, 3, generator=g) + 3 * y[:, None]
        >>> float(linear_probe_accuracy(f, y, folds=3))
        1.0
    """
    c = check_features_labels(features, labels, "linear_probe_accuracy")
    n = len(labels)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(
            f"linear_probe_accuracy: `folds` must be an int in [2, n = {n}], got {folds!r}. HINT: use folds=5."
        )
    if not ridge > 0:
        raise ValueError(f"linear_probe_accuracy: `ridge` must be > 0, got {ridge!r}. HINT: use ridge=1e-3.")
    f, t = features.detach().to(torch.float64), one_hot64(labels, num_classes or c)
    fold = probe_folds(n, folds, seed).to(f.device)
    correct = 0
    for k in range(folds):
        test = fold == k
        scores = _ridge_predict(f[~test], t[~test], f[test], ridge)
        correct += int((scores.argmax(1) == labels[test]).sum())
    return torch.tensor(correct / n, dtype=torch.float64)
