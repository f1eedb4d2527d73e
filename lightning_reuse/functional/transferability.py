r"""Transferability scores the field uses to rank pre-trained models before fine-tuning (pure torch).

- :func:`logme`: LogME (You et al., ICML 2021), the evidence of a Bayesian linear model on the features.
- :func:`leep`: LEEP (Nguyen et al., ICML 2020), from the source's softmax outputs.
- :func:`nce`: NCE (Tran et al., ICCV 2019), from the source's hard labels.
- :func:`h_score`: H-score (Bao et al., ICIP 2019), optionally with shrinkage (Ibrahim et al., ICLR 2022).

Every score is computed in float64 from statistics that add up over samples (feature Gram matrices, joint
tables), which the streaming :mod:`lightning_reuse.metrics.transferability` metrics keep; the private
``_*_from_stats`` functions are shared by both. Higher is better for all four. See ``docs/transferability.md``.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(200) % 4
    >>> good = torch.randn(200, 8, generator=g) + 3 * torch.nn.functional.one_hot(y, 8)
    >>> bad = torch.randn(200, 8, generator=g)
    >>> bool(logme(good, y) > logme(bad, y)), bool(h_score(good, y) > h_score(bad, y))
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["h_score", "leep", "logme", "nce"]


# --------------------------------------------------------------------------- checks
def check_features_labels(features: Tensor, labels: Tensor, who: str, name: str = "features") -> int:
    """Refuse mismatched or malformed ``features [n, D]`` / ``labels [n]``; return the number of classes."""
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] == 0:
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(
            f"{who}: `{name}` must be a non-empty [n, D] tensor, got {got}. "
            "HINT: pool each sample's layer output to one vector (e.g. pool_features)."
        )
    if not isinstance(labels, Tensor) or labels.shape != (features.shape[0],) or labels.is_floating_point():
        got = (
            (tuple(labels.shape), str(labels.dtype)) if isinstance(labels, Tensor) else type(labels).__name__
        )
        raise ValueError(
            f"{who}: `labels` must be an integer tensor of shape [{features.shape[0]}] (one per row of "
            f"`{name}`), got {got}. HINT: pass class indices in 0..C-1."
        )
    if int(labels.min()) < 0:
        raise ValueError(
            f"{who}: `labels` must be >= 0, got {int(labels.min())}. HINT: remap the labels to 0..C-1."
        )
    return int(labels.max()) + 1


def one_hot64(labels: Tensor, num_classes: int) -> Tensor:
    """``labels [n]`` -> float64 one-hot ``[n, num_classes]``."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)


def _row_space(features: Tensor) -> Tensor:
    """``F V`` for the thin SVD ``F = U S V^T``: the ``[n, D]`` features as ``[n, min(n, D)]`` coordinates in
    the span of their rows (for ``n < D``; LogME and H-score are the same there, see :func:`logme`)."""
    _, _, vh = torch.linalg.svd(features, full_matrices=False)
    return features @ vh.T


def _eigh_psd(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric PSD matrix; where LAPACK's ``eigh`` fails to converge
    (seen on 1280 x 1280 Gram matrices of EfficientNet features), the same from its SVD."""
    try:
        return torch.linalg.eigh(gram)
    except torch.linalg.LinAlgError:
        u, s, _ = torch.linalg.svd(gram)
        return s, u


def _pinv_psd(cov: Tensor) -> Tensor:
    """Pseudo-inverse of a symmetric PSD matrix (``eigh``; the SVD where ``eigh`` fails to converge)."""
    try:
        return torch.linalg.pinv(cov, hermitian=True)
    except torch.linalg.LinAlgError:
        return torch.linalg.pinv(cov)


# --------------------------------------------------------------------------- LogME
def _logme_fixed_point(
    s: Tensor, proj: Tensor, residual: Callable[[Tensor], Tensor], n: int, d: int, max_iter: int, tol: float
) -> Tensor:
    """LogME's fixed point and evidence from the ``r <= d`` eigenvalues ``s`` of ``F^T F``, the projections
    ``proj [r, C]`` of ``F^T t`` on their eigenvectors and ``residual(u) = ||F m - t||^2`` for ``m = V u``
    (the ``d - r`` missing eigenvalues are zero: each adds ``-log(alpha) / 2``).

    A class stops when ``alpha / beta`` changes by less than ``tol`` (relative), when its evidence changes by
    less than 1e-12 (relative), or before an update that is not finite: with ``n < D`` a class the features
    fit exactly has no fixed point (``beta`` grows without bound) while its evidence converges.
    """
    tiny = torch.finfo(torch.float64).tiny

    def evidence(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u = beta * proj / (alpha + beta * s[:, None])  # m = V u
        m_sq = (u * u).sum(0)
        res = residual(u).clamp_min(tiny)
        value = (
            n / 2 * beta.log()
            + d / 2 * alpha.log()
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * res
            - alpha / 2 * m_sq
            - 0.5 * (alpha + beta * s[:, None]).log().sum(0)
            - (d - len(s)) / 2 * alpha.log()
        )
        return value, m_sq, res

    alpha = torch.ones(proj.shape[1], dtype=torch.float64, device=proj.device)
    beta = torch.ones_like(alpha)
    done = torch.zeros_like(alpha, dtype=torch.bool)
    value, m_sq, res = evidence(alpha, beta)
    for _ in range(max_iter):
        gamma = (beta * s[:, None] / (alpha + beta * s[:, None])).sum(0)
        new_alpha, new_beta = gamma / m_sq.clamp_min(tiny), (n - gamma) / res
        done |= ~(torch.isfinite(new_alpha) & torch.isfinite(new_beta) & (new_alpha > 0) & (new_beta > 0))
        change = ((new_alpha / new_beta) - (alpha / beta)).abs() / (alpha / beta)
        alpha, beta = torch.where(done, alpha, new_alpha), torch.where(done, beta, new_beta)
        new_value, m_sq, res = evidence(alpha, beta)
        done |= (change < tol) | ((new_value - value).abs() <= 1e-12 * value.abs())
        value = new_value
        if bool(done.all()):
            break
    return (value / n).mean()


def _logme_from_stats(
    gram: Tensor, ft_t: Tensor, t_sq: Tensor, n: int, max_iter: int = 100, tol: float = 1e-8
) -> Tensor:
    """LogME from ``gram = F^T F [D, D]``, ``ft_t = F^T T [D, C]``, ``t_sq = diag(T^T T) [C]`` and ``n``."""
    s, v = _eigh_psd(gram)
    s = s.clamp_min(0)
    proj = v.T @ ft_t  # [D, C]: V^T F^T t per class

    def residual(u: Tensor) -> Tensor:  # ||F m - t||^2 from the statistics (cancels where the fit is close)
        return (s[:, None] * u * u).sum(0) - 2 * (u * proj).sum(0) + t_sq

    return _logme_fixed_point(s, proj, residual, n, gram.shape[0], max_iter, tol)


def _logme_from_features(f: Tensor, t: Tensor, max_iter: int = 100, tol: float = 1e-8) -> Tensor:
    """LogME from the thin SVD ``F = U S V^T`` (the authors' route for ``n < D``): the residual is computed
    in sample space, ``||S u - U^T t||^2 + ||t - U U^T t||^2``, with no cancellation."""
    left, sv, _ = torch.linalg.svd(f, full_matrices=False)
    ut = left.T @ t  # [r, C]
    outside = ((t * t).sum(0) - (ut * ut).sum(0)).clamp_min(0)  # the part of t outside F's column space

    def residual(u: Tensor) -> Tensor:
        return ((sv[:, None] * u - ut) ** 2).sum(0) + outside

    return _logme_fixed_point(sv * sv, sv[:, None] * ut, residual, f.shape[0], f.shape[1], max_iter, tol)


def logme(
    features: Tensor, labels: Tensor, num_classes: int | None = None, max_iter: int = 100, tol: float = 1e-8
) -> Tensor:
    r"""LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021).

    For each class :math:`c`, :math:`t = 1[y = c]` is regressed on the raw features with
    :math:`w \sim N(0, \alpha^{-1} I)`, noise :math:`N(0, \beta^{-1})`; with :math:`\sigma_i^2` the eigenvalues
    of :math:`F^\top F`, the fixed point

    .. math:: \gamma = \sum_i \frac{\beta\sigma_i^2}{\alpha + \beta\sigma_i^2},\;
        m = \beta(\alpha I + \beta F^\top F)^{-1}F^\top t,\;
        \alpha = \frac{\gamma}{m^\top m},\; \beta = \frac{n - \gamma}{\lVert Fm - t\rVert^2}

    is iterated until :math:`\alpha/\beta` changes by less than ``tol`` (relative; the authors stop at 1e-3
    or 11 steps, where the evidence is already flat), and the score is the mean over classes of :math:`L / n`,

    .. math:: L = \tfrac{n}{2}\log\beta + \tfrac{D}{2}\log\alpha - \tfrac{n}{2}\log 2\pi
        - \tfrac{\beta}{2}\lVert Fm - t\rVert^2 - \tfrac{\alpha}{2}m^\top m
        - \tfrac12\sum_i\log(\alpha + \beta\sigma_i^2).

    With ``n >= D`` it is computed from ``F^T F``, ``F^T t`` and ``t^T t`` (what the streaming metric keeps).
    With ``n < D`` (e.g. a few hundred samples of 1280-d features) the fit is nearly exact and the residual
    from those statistics cancels catastrophically (NaN or -inf on 60 x 200 random features where the formula
    is finite), so it is computed from the thin SVD of ``F`` with the residual in sample space, as the
    authors' code does for ``n < D``; the ``D - n`` zero eigenvalues enter the evidence in closed form. The
    streaming :class:`~lightning_reuse.metrics.LogME` keeps only the statistics: with ``n < D``, prefer this
    function on the collected features.

    Args:
        features: ``[n, D]`` raw features (no centring or scaling, as in the paper).
        labels: ``[n]`` class indices in ``0..C-1``.
        num_classes: ``C`` (default ``labels.max() + 1``); a class without samples still counts.
        max_iter: Most fixed-point steps.
        tol: Relative change of ``alpha / beta`` that stops the iteration.

    Returns:
        A float64 scalar; higher is better.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(100) % 2
        >>> f = torch.randn(100, 4, generator=g) + 2 * y[:, None]
        >>> round(float(logme(f, y)), 4)
        -0.5565
    """
    c = check_features_labels(features, labels, "logme")
    f, t = features.detach().to(torch.float64), one_hot64(labels, num_classes or c)
    if f.shape[0] < f.shape[1]:
        return _logme_from_features(f, t, max_iter, tol)
    return _logme_from_stats(f.T @ f, f.T @ t, t.sum(0), len(labels), max_iter, tol)


# --------------------------------------------------------------------------- LEEP and NCE
def _check_probs(source_probs: Tensor, labels: Tensor) -> None:
    check_features_labels(source_probs, labels, "leep", "source_probs")
    sums = source_probs.detach().to(torch.float64).sum(1)
    if bool((source_probs < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ValueError(
            "leep: `source_probs` must be probabilities (rows >= 0 summing to 1), got rows summing to "
            f"{float(sums.min()):.4g}..{float(sums.max()):.4g}. HINT: pass source_logits.softmax(-1)."
        )


def _leep_from_table(source_probs: Tensor, labels: Tensor, joint: Tensor) -> Tensor:
    """LEEP of the samples ``(source_probs, labels)`` given the joint table ``P(y, z)`` ``[C, Z]``."""
    marginal = joint.sum(0, keepdim=True)
    cond = torch.where(marginal > 0, joint / marginal.clamp_min(1e-300), torch.zeros_like(joint))  # P(y | z)
    eep = (source_probs.to(torch.float64) * cond[labels.long()]).sum(1)
    return eep.log().mean()


def leep(source_probs: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    r"""LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020).

    With :math:`\theta(x)` the source model's softmax over its :math:`Z` classes,

    .. math:: \hat P(y, z) = \frac1n\sum_i \theta(x_i)_z 1[y_i = y],\quad
        \hat P(y\mid z) = \frac{\hat P(y, z)}{\hat P(z)},\quad
        \mathrm{LEEP} = \frac1n\sum_i \log \sum_z \hat P(y_i\mid z)\,\theta(x_i)_z \le 0.

    Args:
        source_probs: ``[n, Z]`` source softmax outputs on the target inputs (rows sum to 1).
        labels: ``[n]`` target class indices.
        num_classes: number of target classes (default ``labels.max() + 1``).

    Returns:
        A float64 scalar ``<= 0``; higher is better.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
        >>> round(float(leep(probs, torch.tensor([0, 0, 1, 1]))), 4)
        -0.3426
    """
    _check_probs(source_probs, labels)
    c = num_classes or int(labels.max()) + 1
    probs = source_probs.detach().to(torch.float64)
    joint = one_hot64(labels, c).T @ probs / len(labels)
    return _leep_from_table(probs, labels, joint)


def _nce_from_counts(counts: Tensor) -> Tensor:
    """NCE from the joint count table ``[C, Z]`` (float64)."""
    joint = counts / counts.sum()
    marginal = joint.sum(0, keepdim=True).expand_as(joint)
    keep = joint > 0
    return (joint[keep] * (joint[keep] / marginal[keep]).log()).sum()


def nce(source_labels: Tensor, labels: Tensor, num_source: int | None = None) -> Tensor:
    r"""NCE (Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019).

    With :math:`z_i` the source model's hard label of sample :math:`i` and :math:`\hat P(y, z)` the
    empirical joint distribution of ``(labels, source_labels)``,

    .. math:: \mathrm{NCE} = -H(Y\mid Z) = \sum_{y, z}\hat P(y, z)\log\frac{\hat P(y, z)}{\hat P(z)} \le 0.

    Args:
        source_labels: ``[n]`` source class indices (e.g. ``source_logits.argmax(-1)``).
        labels: ``[n]`` target class indices.
        num_source: number of source classes (default ``source_labels.max() + 1``).

    Returns:
        A float64 scalar ``<= 0`` (0 when ``z`` determines ``y``); higher is better.

    Example:
        >>> round(float(nce(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))), 4)
        -0.3466
    """
    check_features_labels(
        source_labels[:, None] if isinstance(source_labels, Tensor) else source_labels,
        labels,
        "nce",
        "source_labels",
    )
    if source_labels.is_floating_point() or int(source_labels.min()) < 0:
        raise ValueError(
            f"nce: `source_labels` must be class indices >= 0, got dtype {source_labels.dtype}. "
            "HINT: pass source_logits.argmax(-1)."
        )
    z = num_source or int(source_labels.max()) + 1
    c = int(labels.max()) + 1
    counts = one_hot64(labels, c).T @ one_hot64(source_labels, z)
    return _nce_from_counts(counts)


# --------------------------------------------------------------------------- H-score
def _h_score_from_stats(
    total: Tensor, gram: Tensor, class_sums: Tensor, class_counts: Tensor, shrinkage: float | None = None
) -> Tensor:
    """H-score from ``sum f [D]``, ``F^T F [D, D]``, per-class sums ``[C, D]`` and counts ``[C]``."""
    n = class_counts.sum()
    mean = total / n
    cov_f = gram / n - torch.outer(mean, mean)
    present = class_counts > 0
    means = class_sums[present] / class_counts[present, None] - mean
    cov_g = (means.T * (class_counts[present] / n)) @ means
    if shrinkage is None:
        return torch.trace(_pinv_psd(cov_f) @ cov_g)
    d = cov_f.shape[0]
    target = torch.eye(d, dtype=cov_f.dtype, device=cov_f.device) * torch.trace(cov_f) / d
    shrunk = (1 - shrinkage) * cov_f + shrinkage * target
    return torch.trace(torch.linalg.solve(shrunk, (1 - shrinkage) * cov_g))


def h_score(
    features: Tensor, labels: Tensor, num_classes: int | None = None, shrinkage: float | None = None
) -> Tensor:
    r"""H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019).

    .. math:: H(f) = \mathrm{tr}\big(\mathrm{cov}(f)^{+}\,\mathrm{cov}(\mathbb E[f\mid y])\big)

    with covariances over the ``n`` samples (the ratio does not depend on their normalisation) and the
    pseudo-inverse (eigenvalues below ``D * eps`` times the largest are dropped). With ``n < D`` and no shrinkage
    it is computed in the features' row space (:func:`_row_space`): the centred features and the class means lie
    in it, so both covariances are ``V (.) V^T`` of theirs there and the trace is the same. With ``shrinkage = a`` (Ibrahim et al., ICLR
    2022): :math:`\mathrm{tr}\big(((1-a)\,\mathrm{cov}(f) + a\,\bar\sigma I)^{-1}(1-a)\,
    \mathrm{cov}(\mathbb E[f\mid y])\big)`, :math:`\bar\sigma = \mathrm{tr}\,\mathrm{cov}(f) / D`.

    Args:
        features: ``[n, D]`` features.
        labels: ``[n]`` class indices.
        num_classes: number of classes (default ``labels.max() + 1``).
        shrinkage: ``None`` (the original score) or a shrinkage weight in ``[0, 1)``.

    Returns:
        A float64 scalar in ``[0, min(D, C - 1)]``; higher is better.

    Example:
        >>> f = torch.tensor([[0.0, 1.0], [1.0, 0.0], [4.0, 1.0], [5.0, 0.0]])
        >>> round(float(h_score(f, torch.tensor([0, 0, 1, 1]))), 4)
        1.0
    """
    c = check_features_labels(features, labels, "h_score")
    if shrinkage is not None and not 0 <= shrinkage < 1:
        raise ValueError(
            f"h_score: `shrinkage` must be None or in [0, 1), got {shrinkage!r}. HINT: e.g. shrinkage=0.1."
        )
    f, t = features.detach().to(torch.float64), one_hot64(labels, num_classes or c)
    if shrinkage is None and f.shape[0] < f.shape[1]:  # the same score in the row space (see the docstring)
        f = _row_space(f)
    return _h_score_from_stats(f.sum(0), f.T @ f, t.T @ f, t.sum(0), shrinkage)
