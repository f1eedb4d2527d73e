"""Lloyd k-means and the adjusted Rand index in pure torch (float64), as used by RESQUE_task.

Both follow scikit-learn's definitions so that RESQUE_task needs no NumPy round trip and runs on any device:
``kmeans_lloyd`` reproduces ``sklearn.cluster.KMeans(init=<array>, n_init=1, algorithm="lloyd")`` (same
relative tolerance, same stopping rules, same relocation of an emptied cluster to the farthest point);
``adjusted_rand_index`` reproduces ``sklearn.metrics.adjusted_rand_score`` (pair-counting form).

Example:
    >>> import torch
    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]], dtype=torch.float64)
    >>> labels = kmeans_lloyd(x, torch.tensor([[0.0], [5.0]], dtype=torch.float64))
    >>> labels.tolist()
    [0, 0, 1, 1]
    >>> float(adjusted_rand_index(torch.tensor([1, 1, 0, 0]), labels))
    1.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _assign(x: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest center of each row (squared Euclidean, scikit-learn's ``-2 x.c + |c|^2`` form) and the distance."""
    half = (centers * centers).sum(1)[None, :] - 2.0 * (x @ centers.T)
    labels = half.argmin(1)
    return labels, (half.gather(1, labels[:, None]).squeeze(1) + (x * x).sum(1)).clamp_min(0.0)


def kmeans_lloyd(x: Tensor, init: Tensor, max_iter: int = 300, tol: float = 1e-4) -> Tensor:
    """Lloyd's k-means from the given initial centers; returns the cluster label of every row of ``x``.

    Args:
        x: ``[N, D]`` samples (computed in float64).
        init: ``[K, D]`` initial centers.
        max_iter: maximum number of Lloyd iterations.
        tol: relative tolerance: stop when the summed squared center shift is at most
            ``tol * mean(var(x, dim=0))`` (scikit-learn's convention), or when no label changes.

    Returns:
        ``[N]`` int64 labels in ``[0, K)``.
    """
    x = x.to(torch.float64)
    centers = init.to(device=x.device, dtype=torch.float64).clone()
    k = centers.shape[0]
    mean = x.mean(0, keepdim=True)  # scikit-learn centers the data first (numerics only)
    x = x - mean
    centers = centers - mean
    tol_abs = float(x.var(0, unbiased=False).mean()) * tol
    labels_old = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
    labels = labels_old
    converged_strictly = False
    for _ in range(max_iter):
        labels, dist = _assign(x, centers)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(torch.float64)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():  # move each emptied center onto the point farthest from its own center
            far = torch.topk(dist, empty.numel()).indices
            for new_id, idx in zip(empty.tolist(), far.tolist()):
                old_id = int(labels[idx])
                sums[old_id] -= x[idx]
                counts[old_id] -= 1
                sums[new_id] = x[idx]
                counts[new_id] = 1
        new_centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if torch.equal(labels, labels_old):
            converged_strictly = True
            break
        if shift <= tol_abs:
            break
        labels_old = labels
    if not converged_strictly:
        labels, _ = _assign(x, centers)
    return labels


def kmeans_plusplus_init(x: Tensor, k: int, seed: int = 0) -> Tensor:
    """Greedy k-means++ seeding (``2 + log k`` candidates per step) with a seeded torch generator.

    Same algorithm as scikit-learn's ``init="k-means++"``, not the same random stream: results are
    deterministic for a given ``seed`` but not identical to scikit-learn's.
    """
    x = x.to(torch.float64)
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centers = [x[int(torch.randint(n, (1,), generator=g))]]
    closest = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than clusters: repeat a point
            centers.append(x[int(torch.randint(n, (1,), generator=g))])
            continue
        probs = (closest / total).cpu()
        cand = torch.multinomial(probs, trials, replacement=True, generator=g).to(x.device)
        cand_dist = torch.minimum(closest[None, :], torch.cdist(x[cand], x) ** 2)
        best = int(cand_dist.sum(1).argmin())
        closest = cand_dist[best]
        centers.append(x[cand[best]])
    return torch.stack(centers)


def adjusted_rand_index(labels_true: Tensor, labels_pred: Tensor) -> Tensor:
    """Adjusted Rand index (Hubert and Arabie, 1985) of two labelings of the same samples, float64 scalar.

    1 for identical partitions (up to renaming), about 0 for independent ones, at least -0.5.
    """
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError(
            f"adjusted_rand_index expects two 1-D label tensors of the same length, got shapes "
            f"{tuple(labels_true.shape)} and {tuple(labels_pred.shape)}. HINT: pass one label per sample in each."
        )
    _, a = torch.unique(labels_true, return_inverse=True)
    _, b = torch.unique(labels_pred, return_inverse=True)
    n = a.numel()
    ka, kb = int(a.max()) + 1 if n else 0, int(b.max()) + 1 if n else 0
    table = torch.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).to(torch.float64)
    sum_sq = (table**2).sum()
    rows, cols = table.sum(1), table.sum(0)
    tp = sum_sq - n
    fp = (table @ cols).sum() - sum_sq  # scikit-learn's pair confusion matrix (counts of ordered pairs)
    fn = (table.T @ rows).sum() - sum_sq
    tn = float(n) ** 2 - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return torch.tensor(1.0, dtype=torch.float64)
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
