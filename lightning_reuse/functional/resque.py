r"""RESQUE: one forward pass of the old model scores how far new data (or a new task) is from what it knows.

Sangarya and Kim, "RESQUE: Quantifying Estimator to Task and Distribution Shift for Sustainable Model
Reusability", AAAI 2025 (arXiv:2412.15511). The score correlates with the cost of retraining (epochs to a
target accuracy, energy, CO2); :mod:`lightning_reuse.energy.ledger` turns it into a cost estimate.

- :func:`resque_dist` (distribution shift, same task): for every class ``c`` sum the features of the
  original samples (:math:`s_c`) and of the shifted samples (:math:`s'_c`);

  .. math:: \mathrm{RESQUE_{dist}} = \frac{1}{|C|} \sum_{c \in C} \frac{\angle(s_c, s'_c)}{\pi} \in [0, 1]

  over the classes ``C`` present on both sides. Sums are float64 and the angle is
  :math:`2\,\mathrm{atan2}(\lVert u - v\rVert, \lVert u + v\rVert)` of the unit vectors (exact near 0, where
  ``arccos`` of a float32 dot product is off by ~1e-4).
- :func:`resque_task` (task change): k-means on the old model's features of the new task's data, started at
  the true class centroids; :math:`\mathrm{RESQUE_{task}} = 1 - \mathrm{ARI}(y, \text{clusters}) \in [0, 1.5]`.

Features come from a forward hook on one named layer (:func:`lightning_reuse.nn.layers.capture_output`)
reduced to one vector per sample by :func:`pool_features`.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> feats, labels = torch.randn(100, 8, generator=g), torch.arange(100) % 4
    >>> round(float(resque_dist(feats, labels, feats, labels)), 6)
    0.0
    >>> rotated = feats @ torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    >>> 0.0 < float(resque_dist(feats, labels, rotated, labels)) <= 1.0
    True
    >>> blobs = torch.cat([torch.randn(20, 2, generator=g) * 0.1 + 10 * k for k in range(3)])
    >>> float(resque_task(blobs, torch.arange(60) // 20))
    0.0
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.functional._clustering import adjusted_rand_index, kmeans_lloyd, kmeans_plusplus_init

Pooling = Literal["default", "flatten", "cls", "token_mean", "feature_mean"]
POOLINGS: tuple[str, ...] = ("default", "flatten", "cls", "token_mean", "feature_mean")
TaskInit = Literal["centroids", "k-means++"]


class RESQUEClassSkippedWarning(LightningReuseWarning):
    """A class could not be scored (absent on one side, or a zero feature sum) and was left out of the mean."""


def pool_features(output: Tensor, pooling: Pooling = "default", mask: Tensor | None = None) -> Tensor:
    """Reduce a layer output to one feature vector per sample, ``[B, D]``.

    Args:
        output: the raw module output: ``[B, C, H, W]`` (conv), ``[B, D]`` (linear) or ``[B, T, D]`` (tokens).
        pooling: ``"default"``: channel mean over ``H, W`` for 4-D outputs (the paper's choice), 2-D as is,
            and for 3-D token outputs the masked mean over the tokens (``"token_mean"``; chosen on a patch
            transformer and a text encoder, see ``docs/resque.md``);
            ``"flatten"``: every value (``C*H*W``; the authors' alternative for RESQUE_task);
            ``"cls"``: the first token of a ``[B, T, D]`` output; ``"token_mean"``: the mean over the tokens
            that ``mask`` keeps (all when no mask); ``"feature_mean"``: the mean over the last dimension (what
            the authors' code does for tokens: one value per token, so its width follows ``T``).
        mask: ``[B, T]`` attention mask of a token output (1 for a token, 0 for padding), or None.

    Raises:
        ValueError: an output of the wrong rank, a pooling that does not apply to it, or a mask whose shape
            does not match the tokens.

    Example:
        >>> pool_features(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
        >>> pool_features(torch.ones(2, 5, 7), "cls").shape
        torch.Size([2, 7])
        >>> tokens = torch.tensor([[[1.0], [3.0], [100.0]]])  # one sample, the last token is padding
        >>> pool_features(tokens, "token_mean", mask=torch.tensor([[1, 1, 0]])).tolist()
        [[2.0]]
    """
    _check_pooling(pooling)
    return _pool_checked(output, pooling, mask)


def _check_pooling(pooling: str) -> None:
    """Raise a ValueError naming the allowed poolings unless ``pooling`` is one of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise ValueError(
            f"`pooling` must be one of {POOLINGS}, got {pooling!r}. HINT: pass pooling='default' (channel "
            "mean for conv outputs) or another of these."
        )


def _masked_token_mean(output: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the tokens of ``[B, T, D]`` that ``mask`` ``[B, T]`` keeps; padding never enters it."""
    if mask is None:
        return output.mean(1)
    if tuple(mask.shape) != tuple(output.shape[:2]):
        raise ValueError(
            f"the attention mask has shape {tuple(mask.shape)}, but the token output {tuple(output.shape)} "
            f"needs [B, T] = {list(output.shape[:2])}. HINT: hook a layer whose token axis is the input's "
            "(e.g. an encoder block), or pass `batch_fn=` returning the inputs without the mask."
        )
    weights = (mask != 0).to(output.dtype).unsqueeze(-1)
    return (output * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _pool_checked(output: Tensor, pooling: Pooling, mask: Tensor | None = None) -> Tensor:
    """:func:`pool_features` for a ``pooling`` already validated (by :func:`_check_pooling` or a config)."""
    if not isinstance(output, Tensor) or output.ndim < 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"RESQUE needs a layer output of shape [B, D], [B, T, D] or [B, C, H, W], got {shape}. "
            "HINT: hook a Conv or Linear layer (its name in `model.named_modules()`)."
        )
    if pooling == "flatten":
        return output.flatten(1)
    if output.ndim == 2:
        return output
    if output.ndim == 4 and pooling == "default":
        return output.mean(dim=(2, 3))
    if output.ndim == 3:
        if pooling == "cls":
            return output[:, 0]
        if pooling in ("token_mean", "default"):
            return _masked_token_mean(output, mask)
        return output.mean(-1)  # "feature_mean": the authors' reduction
    if pooling == "feature_mean":
        return output.flatten(2).mean(-1)
    raise ValueError(
        f"`pooling={pooling!r}` does not apply to a {output.ndim}-D output {tuple(output.shape)}. "
        "HINT: use 'default' or 'flatten'."
    )


def _raise_not_finite(features: Tensor, name: str) -> None:
    bad = int((~torch.isfinite(features)).any(1).sum())
    raise ValueError(
        f"`{name}` contains NaN or inf in {bad} of {features.shape[0]} samples. HINT: check the inputs "
        "and the layer (e.g. overflow in half precision); RESQUE needs finite features."
    )


def _check_structure(features: Tensor, labels: Tensor | None, name: str = "features") -> None:
    """Shapes and dtypes only (no look at the values, so no host-device sync)."""
    if labels is None:
        raise ValueError(
            f"RESQUE groups `{name}` by class, but no labels were given. HINT: pass the class labels "
            "(batches as `(x, y)`), or group the shifted data by the model's own predictions "
            "(`labels=model(x).argmax(-1)`, or `label_source='prediction'` in RESQUECheck)."
        )
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(
            f"`{name}` must be a [N, D] tensor, got {shape}. HINT: reduce a layer output with `pool_features`."
        )
    if features.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (0 samples). HINT: check that the dataloader yields batches.")
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"labels of `{name}` must be a [N={features.shape[0]}] tensor, got {shape}. "
            "HINT: pass one class index per feature row."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(
            f"labels of `{name}` must be integer class indices, got dtype {labels.dtype}. "
            "HINT: convert them with `labels.long()`."
        )


def _check_inputs(
    features: Tensor, labels: Tensor | None, name: str = "features", check_finite: bool = True
) -> tuple[int, int]:
    """Validate a batch; return the smallest and largest label."""
    _check_structure(features, labels, name)
    low, high = (int(v) for v in torch.aminmax(labels))
    if low < 0:
        raise ValueError(
            f"labels of `{name}` must be >= 0, got minimum {low}. HINT: remap the labels to [0, num_classes)."
        )
    if check_finite and not bool(torch.isfinite(features).all()):
        _raise_not_finite(features, name)
    return low, high


def _resque_dist_update(
    features: Tensor, labels: Tensor | None, num_classes: int, name: str = "features"
) -> tuple[Tensor, Tensor]:
    """Per-class float64 feature sums ``[K, D]`` and sample counts ``[K]`` of one batch."""
    _, high = _check_inputs(features, labels, name, check_finite=False)
    if high >= num_classes:
        raise ValueError(
            f"label {high} is out of range for num_classes={num_classes}. "
            "HINT: raise `num_classes` or remap the labels to [0, num_classes)."
        )
    feats = features.detach().to(torch.float64)
    labels = labels.to(feats.device)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, labels, feats)
    if not bool(torch.isfinite(sums).all()):  # NaN / inf propagate into the sums: one check on [K, D]
        _raise_not_finite(features, name)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return sums, counts


def _resque_dist_update_lazy(
    features: Tensor, labels: Tensor | None, num_classes: int, name: str = "features"
) -> tuple[Tensor, Tensor, Tensor]:
    """Like :func:`_resque_dist_update` but without a host-device sync (for streaming on accelerators).

    Out-of-range labels are not added; their number is returned (``[]`` int64) so that ``compute`` can
    refuse. NaN / inf reach the sums, where ``_resque_dist_compute`` detects them.
    """
    _check_structure(features, labels, name)
    feats = features.detach().to(torch.float64)
    labels = labels.to(feats.device)
    valid = (labels >= 0) & (labels < num_classes)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, safe, torch.where(valid[:, None], feats, torch.zeros_like(feats)))
    counts = torch.zeros(num_classes, dtype=torch.float64, device=feats.device)
    counts.index_add_(0, safe, valid.to(torch.float64))
    return sums, counts, (~valid).sum()


def angular_distance(u: Tensor, v: Tensor) -> Tensor:
    """Row-wise angle between ``u`` and ``v`` divided by pi, in [0, 1], computed stably in float64.

    ``2 * atan2(|a - b|, |a + b|)`` of the unit vectors ``a, b``. Zero rows give NaN.

    >>> float(angular_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))[0])
    0.5
    """
    u, v = u.to(torch.float64), v.to(torch.float64)
    a = u / u.norm(dim=-1, keepdim=True)
    b = v / v.norm(dim=-1, keepdim=True)
    return 2.0 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1)) / torch.pi


def _resque_dist_compute(
    sums: Tensor, counts: Tensor, shifted_sums: Tensor, shifted_counts: Tensor, warn: bool = True
) -> tuple[Tensor, Tensor]:
    """Score and per-class angles (NaN for classes that cannot be scored) from the accumulated sums."""
    if float(counts.sum()) == 0 or float(shifted_counts.sum()) == 0:
        side = "original" if float(counts.sum()) == 0 else "shifted"
        raise ValueError(
            f"RESQUE_dist saw no {side} samples. HINT: check that the {side} dataloader is not empty."
        )
    for side, total in (("original", sums), ("shifted", shifted_sums)):
        if not bool(torch.isfinite(total).all()):
            raise ValueError(
                f"RESQUE_dist: the {side} features contained NaN or inf. HINT: check the inputs and the layer "
                "(e.g. overflow in half precision); RESQUE needs finite features."
            )
    theta = angular_distance(sums, shifted_sums)
    present = (counts > 0) & (shifted_counts > 0)
    degenerate = present & ((sums.norm(dim=1) == 0) | (shifted_sums.norm(dim=1) == 0))
    scored = present & ~degenerate
    if warn:
        only = [c for c in range(len(counts)) if (counts[c] > 0) != (shifted_counts[c] > 0)]
        if only:
            warnings.warn(
                f"RESQUE_dist: classes {only} appear on one side only and are skipped "
                f"(the score averages over the {int(scored.sum())} classes present on both sides). "
                "HINT: give both sides samples of every class to score them all.",
                RESQUEClassSkippedWarning,
                stacklevel=3,
            )
        if bool(degenerate.any()):
            warnings.warn(
                f"RESQUE_dist: classes {torch.nonzero(degenerate).flatten().tolist()} have an all-zero feature "
                "sum (no direction) and are skipped. HINT: hook a layer before the ReLU.",
                RESQUEClassSkippedWarning,
                stacklevel=3,
            )
    if not bool(scored.any()):
        raise ValueError(
            "RESQUE_dist: no class has samples on both sides, so there is nothing to compare. Original "
            f"classes: {torch.nonzero(counts > 0).flatten().tolist()}; shifted classes: "
            f"{torch.nonzero(shifted_counts > 0).flatten().tolist()}. HINT: give both sides samples of the same classes."
        )
    per_class = torch.where(scored, theta, torch.full_like(theta, float("nan")))
    return per_class[scored].mean(), per_class


def class_specificity(sums: Tensor, shifted_sums: Tensor) -> float:
    r"""How much closer each shifted class sum is to its own original class than to the other classes.

    With :math:`\theta_{cd} = \angle(s'_c, s_d)/\pi` over the classes scored on both sides (non-zero sums),
    :math:`\mathrm{spec} = \overline{(\bar\theta_{c,\ne c} - \theta_{cc})} / \overline{\bar\theta_{c,\ne c}}`,
    where :math:`\bar\theta_{c,\ne c}` is the mean angle to the other classes. RESQUE_dist assumes the same
    label space and related inputs, so the shifted class ``c`` sits nearer the original class ``c``:
    ``spec > 0`` (mild shifts: 0.3 to 0.8 on the digits CNN; strong noise: ~0.05). ``spec <= 0`` means the
    class labels do not correspond (unrelated datasets, another label space). NaN with fewer than 2 classes.

    Args:
        sums: ``[K, D]`` per-class feature sums of the original data.
        shifted_sums: ``[K, D]`` per-class feature sums of the shifted data.

    Example:
        >>> s = torch.eye(3, dtype=torch.float64)
        >>> class_specificity(s, s), class_specificity(s, s[[1, 2, 0]])
        (1.0, -1.0)
    """
    keep = (sums.norm(dim=1) > 0) & (shifted_sums.norm(dim=1) > 0)
    a, b = sums[keep].to(torch.float64), shifted_sums[keep].to(torch.float64)
    k = a.shape[0]
    if k < 2:
        return float("nan")
    theta = angular_distance(b[:, None, :].expand(k, k, -1), a[None, :, :].expand(k, k, -1))
    own = theta.diagonal()
    other = (theta.sum(1) - own) / (k - 1)
    return float((other - own).mean() / other.mean().clamp_min(1e-12))


def resque_dist(
    features: Tensor,
    labels: Tensor,
    shifted_features: Tensor,
    shifted_labels: Tensor | None = None,
    num_classes: int | None = None,
    return_per_class: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""RESQUE_dist: mean over classes of the angle between the class feature sums, divided by pi.

    Args:
        features: ``[N, D]`` features of the original-distribution samples.
        labels: ``[N]`` their class indices.
        shifted_features: ``[M, D]`` features of the shifted samples (not paired with ``features``).
        shifted_labels: ``[M]`` their class indices; ``None`` means paired mode (the same samples, shifted:
            ``M == N`` and ``labels`` is reused).
        num_classes: number of classes, an int >= 1 (default ``None``: the largest label + 1).
        return_per_class: also return the ``[K]`` per-class angles (NaN where skipped).

    Returns:
        A float64 scalar in [0, 1] (and the per-class tensor).

    Warns:
        RESQUEClassSkippedWarning: a class present on one side only (it is left out of the mean).

    Example:
        >>> u = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
        >>> v = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
        >>> float(resque_dist(u, torch.tensor([0, 0]), v))  # 45 degrees
        0.25
    """
    if shifted_labels is None:
        if shifted_features.shape[0] != features.shape[0]:
            raise ValueError(
                "Paired mode (`shifted_labels=None`) needs as many shifted samples as original ones, got "
                f"{shifted_features.shape[0]} and {features.shape[0]}. HINT: pass `shifted_labels`."
            )
        shifted_labels = labels
    _check_inputs(features, labels, "features")
    _check_inputs(shifted_features, shifted_labels, "shifted_features")
    if features.shape[1] != shifted_features.shape[1]:
        raise ValueError(
            f"`features` and `shifted_features` must have the same width, got {features.shape[1]} and "
            f"{shifted_features.shape[1]}. HINT: take both from the same layer with the same pooling."
        )
    if num_classes is None:
        k = max(int(labels.max()), int(shifted_labels.max())) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be an int >= 1 (or None to use the largest label + 1), got {num_classes!r}. "
            "HINT: pass the number of classes of the task, or leave `num_classes` out."
        )
    else:
        k = num_classes
    s, n = _resque_dist_update(features, labels, k)
    s2, n2 = _resque_dist_update(shifted_features, shifted_labels, k)
    score, per_class = _resque_dist_compute(s, n, s2, n2)
    return (score, per_class) if return_per_class else score


def _resque_task_compute(
    features: Tensor,
    labels: Tensor,
    init: TaskInit = "centroids",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
) -> Tensor:
    """1 - ARI between the labels and k-means clusters of the features (k = number of distinct labels)."""
    _check_inputs(features, labels)
    if init not in ("centroids", "k-means++"):
        raise ValueError(
            f"`init` must be 'centroids' or 'k-means++', got {init!r}. HINT: pass init='centroids' (the default)."
        )
    classes, y = torch.unique(labels, return_inverse=True)
    k = classes.numel()
    if k < 2:
        raise ValueError(
            f"RESQUE_task needs at least 2 classes in the new task, got {k} ({classes.tolist()}). "
            "HINT: check the labels of the new task's dataloader."
        )
    x = features.detach().to(torch.float64)
    if init == "centroids":
        start = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, y, x)
        start = start / torch.bincount(y, minlength=k).to(torch.float64)[:, None]
    else:
        start = kmeans_plusplus_init(x, k, seed=seed)
    clusters = kmeans_lloyd(x, start, max_iter=max_iter, tol=tol)
    return 1.0 - adjusted_rand_index(y, clusters)


def resque_task(
    features: Tensor,
    labels: Tensor,
    init: TaskInit = "centroids",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
) -> Tensor:
    r"""RESQUE_task: how badly the old representation separates the new task's classes.

    k-means (Lloyd; ``max_iter``, relative ``tol`` as in scikit-learn) on the features, started at the
    true class centroids (``init="centroids"``, the default) or at a seeded k-means++ draw; the score is
    :math:`1 - \mathrm{ARI}(\text{labels}, \text{clusters})`: 0 when the features already separate the new
    classes, about 1 for random labels, at most 1.5. Equals scikit-learn's
    ``KMeans(k, init=centroids, n_init=1)`` followed by ``1 - adjusted_rand_score``.

    Known blind spot: coarse relabelings (e.g. digit parity) make multi-modal classes that k-means scores
    as hard although a linear head learns them quickly.

    Args:
        features: ``[N, D]`` old-model features of the new task's training samples.
        labels: ``[N]`` new-task labels (any integers; at least 2 distinct values).
        init: ``"centroids"`` or ``"k-means++"``.
        max_iter: k-means iterations.
        tol: relative k-means tolerance.
        seed: seed of the k-means++ draw (unused with centroid init).

    Returns:
        A float64 scalar in [0, 1.5].

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 4, generator=g)
        >>> 0.9 < float(resque_task(x, torch.randint(0, 3, (200,), generator=g))) < 1.1  # random labels
        True
    """
    return _resque_task_compute(features, labels, init=init, max_iter=max_iter, tol=tol, seed=seed)
