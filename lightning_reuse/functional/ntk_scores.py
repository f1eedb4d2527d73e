"""Screening scores from an NTK and the target labels: complexity ratio, learnable fraction, effective rank.

NTK-based screening following Chung et al. 2025 (arXiv 2506.00620: the NTK eigenvalue spectrum on the
target data and the source's own effectiveness govern reprogramming); score definitions from Arora et
al. 2019 (arXiv 1901.08584, Thm 4.1: label energy in large-eigenvalue directions is learned fast;
Thm 5.1: the complexity :math:`y^T K^{-1} y`). With residual :math:`r_0 = \\mathrm{onehot}(y) -
\\mathrm{softmax}(g(X;\\theta_0))` and :math:`\\bar\\lambda = \\mathrm{tr}(K)/(nC)`:

.. math::
    q(Y) = \\bar\\lambda\\, r_0^T (K + \\epsilon\\bar\\lambda I)^{-1} r_0 / \\|r_0\\|^2, \\quad
    \\rho = q(Y) / \\mathrm{mean}_\\pi\\, q(Y_\\pi),

    E(\\tau) = \\sum_{i \\le k} (1 - e^{-2\\tau\\lambda_i/\\bar\\lambda}) (v_i^T r_0)^2 / \\|r_0\\|^2, \\quad
    r_{\\mathrm{eff}} = \\mathrm{tr}(K)^2 / \\|K\\|_F^2 / (nC).

``E`` uses the top-``k`` eigenpairs and counts the residual outside them as not learned (a lower bound;
exact when ``k = nC``). Every score is invariant to scaling ``K``.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> phi = torch.randn(40, 3, 16, generator=g, dtype=torch.float64)  # [n, C, s] features
    >>> y = torch.randint(0, 3, (40,), generator=g)
    >>> s = screening_scores(phi, torch.zeros(40, 3, dtype=torch.float64), y, top_k=8)
    >>> s.decision in ("PASS", "WARN", "FAIL"), 0.0 < s.r_eff <= 1.0
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_reuse.functional.ntk import topk_eigh

__all__ = [
    "ScreeningScores",
    "ScreeningThresholds",
    "decide",
    "frequency_mapping",
    "residual_at_init",
    "screening_scores",
    "source_guard",
    "stratified_subset",
]


@dataclass(frozen=True)
class ScreeningThresholds:
    """Decision thresholds (calibrated on the digits benchmark, see ``docs/ntk_screening.md``).

    FAIL if ``rho >= rho_fail`` or the source guard fails (``confidence < min_confidence`` or
    ``nmi < min_nmi``); WARN if ``rho_warn <= rho < rho_fail`` or ``E(tau) < e_warn``; else PASS.
    ``min_confidence`` is a multiple of the uniform level ``1/K_s``.
    """

    rho_fail: float = 0.95
    rho_warn: float = 0.85
    e_warn: float = 0.35
    min_confidence: float = 1.5
    min_nmi: float = 0.05


@dataclass
class ScreeningScores:
    """Everything the screening computed (plain values, ready to log)."""

    rho: float
    q_true: float
    q_permuted: list[float]
    e_tau: float
    r_eff: float
    lam_bar: float
    eigenvalues: list[float]
    n: int
    num_classes: int
    guard_confidence: float | None = None
    guard_nmi: float | None = None
    decision: str = "PASS"
    reasons: list[str] = field(default_factory=list)

    def metrics(self, prefix: str = "ntk/") -> dict[str, float]:
        """Scalar metrics for a logger (decision as 0 = PASS, 1 = WARN, 2 = FAIL)."""
        out = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float)) and v is not None}
        out["decision"] = float(("PASS", "WARN", "FAIL").index(self.decision))
        return {prefix + k: v for k, v in out.items()}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- small helpers
def stratified_subset(y: Tensor, n: int, seed: int = 0) -> Tensor:
    """Indices of ``min(n, len(y))`` samples with class proportions kept (each present class >= 1).

    >>> y = torch.tensor([0, 0, 0, 0, 1, 1])
    >>> y[stratified_subset(y, 3)].tolist()
    [0, 0, 1]
    """
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}.")
    if n >= len(y):
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(y, return_counts=True)
    quota = torch.clamp((counts.double() * n / len(y)).floor().long(), min=1)
    order = torch.argsort(-(counts.double() * n / len(y) - quota.double()))
    left = n - int(quota.sum())
    for i in order.tolist():  # largest remainders first
        if left <= 0:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
            left -= 1
    picked = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        idx = torch.nonzero(y == c).squeeze(1)
        picked.append(idx[torch.randperm(len(idx), generator=g)[:q]])
    return torch.cat(picked)[:n]


def residual_at_init(logits: Tensor, y: Tensor, num_classes: int | None = None) -> Tensor:
    """``r0 = onehot(y) - softmax(logits)``: ``[n, C]``."""
    c = logits.shape[1] if num_classes is None else num_classes
    return torch.nn.functional.one_hot(y, c).to(logits.dtype) - logits.softmax(-1)


def frequency_mapping(counts: Tensor) -> Tensor:
    """FLM (ILM-VP): greedy one-to-one source->target assignment by largest count.

    Args:
        counts: ``[K_s, C]`` number of target samples of class ``c`` whose source top-1 is ``k``.

    Returns:
        ``[C]`` source class index assigned to each target class.
    """
    k_s, c = counts.shape
    if c > k_s:
        raise ValueError(f"FLM needs at least as many source classes as target classes, got {k_s} < {c}.")
    work = counts.double().clone()
    out = torch.full((c,), -1, dtype=torch.long)
    for _ in range(c):
        flat = int(torch.argmax(work))
        k, t = divmod(flat, c)
        out[t] = k
        work[k, :] = -1
        work[:, t] = -1
    return out


def source_guard(source_logits: Tensor, y: Tensor, num_classes: int) -> tuple[float, float, Tensor]:
    """Claim 2 of Chung et al.: does the source have anything to offer on the prompted target inputs?

    Returns:
        ``(confidence, nmi, counts)``: the mean max-softmax of the source in units of the uniform level
        ``1/K_s`` (1 = uniform), the normalised mutual information ``I(top1; y) / H(y)`` of the FLM
        count matrix, and the count matrix ``[K_s, C]``.
    """
    k_s = source_logits.shape[1]
    conf = float(source_logits.double().softmax(-1).max(-1).values.mean()) * k_s
    top1 = source_logits.argmax(-1)
    counts = torch.zeros(k_s, num_classes, dtype=torch.float64)
    counts.index_put_((top1, y), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    p = counts / counts.sum()
    ps, py = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    mi = float((p[nz] * (p[nz] / (ps @ py)[nz]).log()).sum())
    hy = float(-(py[py > 0] * py[py > 0].log()).sum())
    return conf, (mi / hy if hy > 0 else 0.0), counts


def decide(
    rho: float,
    e_tau: float,
    guard: tuple[float, float] | None = None,
    thresholds: ScreeningThresholds = ScreeningThresholds(),
) -> tuple[str, list[str]]:
    """The PASS/WARN/FAIL decision and its reasons (see :class:`ScreeningThresholds`)."""
    t = thresholds
    fail, warn = [], []
    if rho >= t.rho_fail:
        fail.append(f"rho={rho:.3f} >= {t.rho_fail}: true labels are no easier for the NTK than random ones")
    elif rho >= t.rho_warn:
        warn.append(f"rho={rho:.3f} in [{t.rho_warn}, {t.rho_fail}): labels barely easier than random")
    if e_tau < t.e_warn:
        warn.append(f"E(tau)={e_tau:.3f} < {t.e_warn}: little label energy in fast-learned directions")
    if guard is not None:
        conf, nmi = guard
        if conf < t.min_confidence:
            fail.append(
                f"source confidence {conf:.2f}x uniform < {t.min_confidence}: near-uniform predictions"
            )
        if nmi < t.min_nmi:
            fail.append(
                f"source/target NMI {nmi:.3f} < {t.min_nmi}: source predictions ignore the target labels"
            )
    if fail:
        return "FAIL", fail + warn
    if warn:
        return "WARN", warn
    return "PASS", [f"rho={rho:.3f} < {t.rho_warn} and E(tau)={e_tau:.3f} >= {t.e_warn}"]


# --------------------------------------------------------------------------- linear algebra
def _cg(
    matmul: Callable[[Tensor], Tensor],
    b: Tensor,
    precond: Callable[[Tensor], Tensor],
    tol: float = 1e-8,
    max_iter: int = 2000,
) -> Tensor:
    """Preconditioned conjugate gradient for SPD ``A X = B`` on all columns of ``B`` at once."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum(0)
    bnorm = b.norm(dim=0).clamp_min(1e-300)
    for _ in range(max_iter):
        ap = matmul(p)
        alpha = rz / (p * ap).sum(0).clamp_min(1e-300)
        x += alpha * p
        r -= alpha * ap
        if bool((r.norm(dim=0) <= tol * bnorm).all()):
            break
        z = precond(r)
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz.clamp_min(1e-300)) * p
        rz = rz_new
    return x


def screening_scores(
    kernel: Tensor,
    logits: Tensor,
    y: Tensor,
    *,
    source_logits: Tensor | None = None,
    pseudo: bool = False,
    features: bool | None = None,
    num_permutations: int = 8,
    eps: float = 1e-2,
    tau: float = 100.0,
    top_k: int = 64,
    seed: int = 0,
    thresholds: ScreeningThresholds = ScreeningThresholds(),
) -> ScreeningScores:
    """Compute rho, E(tau), r_eff, the source guard and the decision.

    Args:
        kernel: Either the dense NTK ``[nC, nC]`` (rows ``(i, a)``, sample-major; ``[n, n]`` if
            ``pseudo``) or features ``Phi`` ``[n, C, s]`` (``[n, s]`` if ``pseudo``) with ``K = Phi Phi^T``.
            Features are used matrix-free (randomized top-k, CG preconditioned by the top-k pairs).
        logits: ``[n, C]`` model outputs at the initial prompt.
        y: ``[n]`` target labels.
        source_logits: ``[n, K_s]`` source outputs on the prompted inputs for the guard (optional).
        features: Whether ``kernel`` holds features (``None``: features unless it is ``[dim, dim]``).
        pseudo: The kernel is the ``n x n`` pseudo-NTK, used as ``K ⊗ I_C`` (``C`` residual columns).
        num_permutations: Label permutations for the denominator of rho.
        eps: Ridge ``eps * lam_bar``.
        tau: Training time of E(tau), in units of ``1 / lam_bar``.
        top_k: Eigenpairs for E(tau) and the logged spectrum.
        seed: Seed of the permutations and of the randomized eigensolver.
        thresholds: Decision thresholds.
    """
    n, c = logits.shape
    if y.shape != (n,):
        raise ValueError(
            f"`y` must have shape [{n}] to match `logits` {tuple(logits.shape)}, got {tuple(y.shape)}."
        )
    if num_permutations < 1:
        raise ValueError(f"`num_permutations` must be >= 1, got {num_permutations}.")
    dim = n if pseudo else n * c
    kd = kernel.double()
    is_dense = kd.shape == (dim, dim) if features is None else not features
    feats = None if is_dense else kd.reshape(dim, -1)
    if feats is not None and feats.shape[1] >= dim:  # a dense kernel is cheaper
        kd, feats, is_dense = feats @ feats.T, None, True
    if is_dense:
        trace = float(torch.diagonal(kd).sum())
        frob2 = float((kd * kd).sum())

        def matmul(v: Tensor) -> Tensor:
            return kd @ v
    else:
        trace = float((feats * feats).sum())
        gram = feats.T @ feats
        frob2 = float((gram * gram).sum())

        def matmul(v: Tensor) -> Tensor:
            return feats @ (feats.T @ v)

    if trace <= 0:
        raise ValueError("The kernel is zero (trace 0): the output does not depend on the prompt.")
    lam_bar = trace / dim
    mu = eps * lam_bar
    k = min(top_k, dim)
    if is_dense and dim <= 2048:
        vals, vecs = torch.linalg.eigh(kd)
        vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
    else:
        vals, vecs = topk_eigh(feats if feats is not None else kd, k, features=feats is not None, seed=seed)
    vals = vals.clamp_min(0)

    g = torch.Generator().manual_seed(seed)
    ys = [y] + [y[torch.randperm(n, generator=g)] for _ in range(num_permutations)]
    res = [residual_at_init(logits.double(), yy, c) for yy in ys]  # each [n, C]
    cols = [r if pseudo else r.reshape(-1, 1) for r in res]
    b = torch.cat(cols, 1)
    if is_dense:
        chol = torch.linalg.cholesky(kd + mu * torch.eye(dim, dtype=kd.dtype))
        sol = torch.cholesky_solve(b, chol)
    else:
        lam_k = float(vals[-1]) if len(vals) else 0.0

        def precond(r: Tensor) -> Tensor:
            proj = vecs.T @ r
            return vecs @ (proj / (vals + mu)[:, None]) + (r - vecs @ proj) / (lam_k + mu)

        sol = _cg(lambda v: matmul(v) + mu * v, b, precond)
    w = b.shape[1] // len(ys)
    q = [
        lam_bar
        * float((b[:, j * w : (j + 1) * w] * sol[:, j * w : (j + 1) * w]).sum())
        / float(r.pow(2).sum())
        for j, r in enumerate(res)
    ]
    rho = q[0] / (sum(q[1:]) / num_permutations)

    r0 = cols[0]
    energy = (vecs.T @ r0).pow(2).sum(1)
    e_tau = float(((1 - torch.exp(-2 * tau * vals / lam_bar)) * energy).sum() / r0.pow(2).sum())
    r_eff = trace**2 / frob2 / dim

    guard = None
    if source_logits is not None:
        conf, nmi, _ = source_guard(source_logits, y, c)
        guard = (conf, nmi)
    decision, reasons = decide(rho, e_tau, guard, thresholds)
    return ScreeningScores(
        rho=rho,
        q_true=q[0],
        q_permuted=q[1:],
        e_tau=e_tau,
        r_eff=r_eff,
        lam_bar=lam_bar,
        eigenvalues=[float(v) for v in vals],
        n=n,
        num_classes=c,
        guard_confidence=None if guard is None else guard[0],
        guard_nmi=None if guard is None else guard[1],
        decision=decision,
        reasons=reasons,
    )
