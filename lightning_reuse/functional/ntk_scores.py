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

``E`` uses every eigenpair when the spectrum is computed exactly (Gram matrix of the features, or a
dense ``K`` up to ``max_exact``); otherwise the top-``k`` pairs, counting the residual outside them as
not learned (a lower bound). Diagnostics beside the spec's scores: ``rho_labels`` (rho with the
centred one-hot labels instead of ``r0``, Arora's :math:`y^T K^{-1} y`), ``residual``
(:math:`\\|r_0\\|^2 / (n(1 - 1/C))`, 1 = uniform predictions) and ``predicted_residual =
residual (1 - E)``. Every score is invariant to scaling ``K``.

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
    "residual_at_init",
    "screen_reprogramming",
    "screening_scores",
    "source_guard",
    "stratified_subset",
]


@dataclass(frozen=True)
class ScreeningThresholds:
    """Decision thresholds; a rule set to ``None`` is off. Defaults calibrated on the digits benchmark.

    The primary score is ``ntk_score = ntk_accuracy_norm * gate``: the cross-fitted NTK-predicted
    accuracy (0 = chance, 1 = perfect) times the source gate ``clip((confidence - 1) /
    (gate_confidence - 1), 0, 1)`` (the source's mean max-softmax in units of the uniform level
    ``1/K_s``: a near-uniform source has nothing to offer, claim 2 of Chung et al.).
    FAIL if ``ntk_score < ntk_accuracy_fail``, ``rho >= rho_fail``, ``confidence < min_confidence`` or
    ``nmi < min_nmi``; WARN if ``ntk_score < ntk_accuracy_warn``, ``rho >= rho_warn`` or
    ``E(tau) < e_warn``; else PASS.
    :meth:`spec` gives the specification's initial rho/E/guard rule, which the benchmark found
    unreliable (``docs/ntk_screening.md``).
    """

    ntk_accuracy_fail: float | None = 0.25
    ntk_accuracy_warn: float | None = 0.45
    gate_confidence: float = 1.5
    rho_fail: float | None = None
    rho_warn: float | None = None
    e_warn: float | None = None
    min_confidence: float | None = None
    min_nmi: float | None = None

    @classmethod
    def spec(cls) -> ScreeningThresholds:
        """The initial rule of the specification: rho 0.95 / 0.85, E(100) 0.35, guard 1.5x uniform, NMI 0.05."""
        return cls(None, None, rho_fail=0.95, rho_warn=0.85, e_warn=0.35, min_confidence=1.5, min_nmi=0.05)


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
    rho_labels: float = float("nan")
    residual: float = float("nan")
    predicted_residual: float = float("nan")
    exact_spectrum: bool = False
    ntk_accuracy: float = float("nan")
    ntk_accuracy_norm: float = float("nan")
    source_gate: float = 1.0
    ntk_score: float = float("nan")
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

    Each class gets ``floor(n * share)`` samples, at least one; largest remainders fill up to ``n``.
    When rare classes push the total above ``n``, the excess is taken from the largest classes.

    Raises:
        ValueError: If ``n < len(y)`` and ``n`` is smaller than the number of classes present (the
            subset cannot hold one sample per class).

    >>> y = torch.tensor([0, 0, 0, 0, 1, 1])
    >>> y[stratified_subset(y, 3)].tolist()
    [0, 0, 1]
    """
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}.")
    if n >= len(y):
        return torch.arange(len(y))
    classes, counts = torch.unique(y, return_counts=True)
    if n < len(classes):
        raise ValueError(
            f"`n` must be at least the number of classes present ({len(classes)}) to keep one sample "
            f"per class, got n={n}. HINT: screen more samples (n >= {len(classes)})."
        )
    g = torch.Generator().manual_seed(seed)
    ideal = counts.double() * n / len(y)
    quota = torch.clamp(ideal.floor().long(), min=1)
    while int(quota.sum()) > n:  # rare classes raised to 1: take the excess from the largest classes
        quota[int(torch.argmax(quota))] -= 1
    order = torch.argsort(-(ideal - quota.double()))
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
    return torch.cat(picked)


def residual_at_init(logits: Tensor, y: Tensor, num_classes: int | None = None) -> Tensor:
    """``r0 = onehot(y) - softmax(logits)``: ``[n, C]``."""
    c = logits.shape[1] if num_classes is None else num_classes
    return torch.nn.functional.one_hot(y, c).to(logits.dtype) - logits.softmax(-1)


def source_guard(source_logits: Tensor, y: Tensor, num_classes: int) -> tuple[float, float, Tensor]:
    """Claim 2 of Chung et al.: does the source have anything to offer on the prompted target inputs?

    Returns:
        ``(confidence, nmi, counts)``: the mean max-softmax of the source in units of the uniform level
        ``1/K_s`` (1 = uniform), the normalised mutual information ``I(top1; y) / H(y)`` of the FLM
        count matrix, and the count matrix ``[K_s, C]``.
    """
    k_s = source_logits.shape[1]
    conf = float(source_logits.double().softmax(-1).max(-1).values.mean()) * k_s
    top1, y = source_logits.argmax(-1).cpu(), y.cpu()
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
    ntk_accuracy_norm: float | None = None,
) -> tuple[str, list[str]]:
    """The PASS/WARN/FAIL decision and its reasons (see :class:`ScreeningThresholds`)."""
    t = thresholds
    fail, warn, ok = [], [], []
    on = [x for x in (t.ntk_accuracy_fail, t.ntk_accuracy_warn) if x is not None]
    if ntk_accuracy_norm is not None and on:  # each threshold applies on its own
        a = ntk_accuracy_norm
        what = "(NTK-predicted accuracy x source gate; 0 = chance, 1 = perfect)"
        if t.ntk_accuracy_fail is not None and a < t.ntk_accuracy_fail:
            fail.append(f"NTK score {a:.3f} < {t.ntk_accuracy_fail} {what}")
        elif t.ntk_accuracy_warn is not None and a < t.ntk_accuracy_warn:
            warn.append(f"NTK score {a:.3f} < {t.ntk_accuracy_warn} {what}")
        else:
            ok.append(f"NTK score {a:.3f} {what}")
    if t.rho_fail is not None and rho >= t.rho_fail:
        fail.append(f"rho={rho:.3f} >= {t.rho_fail}: true labels are no easier for the NTK than random ones")
    elif t.rho_warn is not None and rho >= t.rho_warn:
        warn.append(f"rho={rho:.3f} >= {t.rho_warn}: labels barely easier than random")
    elif t.rho_warn is not None:
        ok.append(f"rho={rho:.3f}")
    if t.e_warn is not None and e_tau < t.e_warn:
        warn.append(f"E(tau)={e_tau:.3f} < {t.e_warn}: little label energy in fast-learned directions")
    if guard is not None:
        conf, nmi = guard
        if t.min_confidence is not None and conf < t.min_confidence:
            fail.append(
                f"source confidence {conf:.2f}x uniform < {t.min_confidence}: near-uniform predictions"
            )
        if t.min_nmi is not None and nmi < t.min_nmi:
            fail.append(
                f"source/target NMI {nmi:.3f} < {t.min_nmi}: source predictions ignore the target labels"
            )
    if fail:
        return "FAIL", fail + warn
    if warn:
        return "WARN", warn
    return "PASS", ok or ["no rule enabled"]


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


def _crossfit_accuracy(
    kd: Tensor | None,
    feats: Tensor | None,
    logits: Tensor,
    y: Tensor,
    c: int,
    eps: float,
    pseudo: bool,
    seed: int,
) -> float:
    """Held-out accuracy of the linearised (NTK ridge) fit of the residual, two folds, averaged.

    Fold ``B`` is predicted as ``softmax(z0_B) + K_BA (K_AA + eps lam_bar_A I)^-1 r0_A``: what training the
    prompt to convergence in the NTK regime would give on unseen samples.
    """
    n = len(y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    folds = [perm[: n // 2], perm[n // 2 :]]
    p0 = logits.softmax(-1)
    r0 = residual_at_init(logits, y, c)
    per = 1 if pseudo else c

    def rows(idx: Tensor) -> Tensor:
        return (idx[:, None] * per + torch.arange(per)).flatten()

    correct = 0
    for a, b in (folds, folds[::-1]):
        ra, rb = rows(a), rows(b)
        rhs = r0[a] if pseudo else r0[a].reshape(-1, 1)
        if feats is not None:  # push-through: Phi_B (Phi_A^T Phi_A + mu I)^-1 Phi_A^T r
            fa, fb = feats[ra], feats[rb]
            mu = eps * float((fa * fa).sum()) / len(ra)
            gram = fa.T @ fa + mu * torch.eye(fa.shape[1], dtype=fa.dtype, device=fa.device)
            delta = fb @ torch.linalg.solve(gram, fa.T @ rhs)
        else:
            kaa = kd[ra][:, ra]
            mu = eps * float(torch.diagonal(kaa).mean())
            delta = kd[rb][:, ra] @ torch.linalg.solve(
                kaa + mu * torch.eye(len(ra), dtype=kd.dtype, device=kd.device), rhs
            )
        pred = p0[b] + delta.reshape(len(b), c)
        correct += int((pred.argmax(-1) == y[b]).sum())
    return correct / n


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
    max_exact: int = 4096,
    seed: int = 0,
    thresholds: ScreeningThresholds = ScreeningThresholds(),
) -> ScreeningScores:
    """Compute rho, E(tau), r_eff, the source guard and the decision.

    Args:
        kernel: Either the dense NTK ``[nC, nC]`` (rows ``(i, a)``, sample-major; ``[n, n]`` if
            ``pseudo``) or features ``Phi`` ``[n, C, s]`` (``[n, s]`` if ``pseudo``) with ``K = Phi Phi^T``.
            Features with ``s <= max_exact`` give the exact spectrum from the Gram matrix; larger ones
            are used matrix-free (randomized top-k, CG preconditioned by the top-k pairs).
        logits: ``[n, C]`` model outputs at the initial prompt.
        y: ``[n]`` target labels.
        source_logits: ``[n, K_s]`` source outputs on the prompted inputs for the guard (optional).
        features: Whether ``kernel`` holds features (``None``: features unless it is ``[dim, dim]``).
        pseudo: The kernel is the ``n x n`` pseudo-NTK, used as ``K ⊗ I_C`` (``C`` residual columns).
        num_permutations: Label permutations for the denominator of rho.
        eps: Ridge ``eps * lam_bar``.
        tau: Training time of E(tau), in units of ``1 / lam_bar``.
        top_k: Eigenvalues reported (and used by E(tau) when the spectrum is not exact).
        max_exact: Exact spectrum (eigh of the ``s x s`` Gram matrix, or of ``K`` when dense) up to this
            size; beyond it, randomized top-k eigenpairs and conjugate gradients.
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
    # Exact spectrum when affordable: eigh of the s x s Gram matrix (features) or of K (dense).
    exact = (feats is not None and feats.shape[1] <= max_exact) or (feats is None and dim <= max_exact)
    if exact and feats is not None:
        ev, v = torch.linalg.eigh(gram)
        keep = ev > ev.max() * 1e-13
        vals = ev[keep].flip(0)
        vecs = (feats @ v[:, keep].flip(1)) / vals.sqrt()
    elif exact:
        ev, v = torch.linalg.eigh(kd)
        vals, vecs = ev.flip(0).clamp_min(0), v.flip(1)
    else:
        vals, vecs = topk_eigh(feats if feats is not None else kd, k, features=feats is not None, seed=seed)
        vals = vals.clamp_min(0)

    g = torch.Generator().manual_seed(seed)
    ys = [y] + [y[torch.randperm(n, generator=g)] for _ in range(num_permutations)]
    res = [residual_at_init(logits.double(), yy, c) for yy in ys]  # each [n, C]
    centred = torch.nn.functional.one_hot(y, c).double() - 1.0 / c  # labels of a zero-output model
    res_y = [centred] + [centred[torch.randperm(n, generator=g)] for _ in range(num_permutations)]
    cols = [r if pseudo else r.reshape(-1, 1) for r in res + res_y]
    b = torch.cat(cols, 1)
    if exact:  # (K + mu I)^-1 b from the eigenpairs (the complement of their span has eigenvalue 0)
        proj = vecs.T @ b
        sol = vecs @ (proj / (vals + mu)[:, None]) + (b - vecs @ proj) / mu
    elif feats is None:
        chol = torch.linalg.cholesky(kd + mu * torch.eye(dim, dtype=kd.dtype, device=kd.device))
        sol = torch.cholesky_solve(b, chol)
    else:
        lam_k = float(vals[-1]) if len(vals) else 0.0

        def precond(r: Tensor) -> Tensor:
            proj = vecs.T @ r
            return vecs @ (proj / (vals + mu)[:, None]) + (r - vecs @ proj) / (lam_k + mu)

        sol = _cg(lambda v: matmul(v) + mu * v, b, precond)
    w = b.shape[1] // len(cols)
    q = [
        lam_bar
        * float((b[:, j * w : (j + 1) * w] * sol[:, j * w : (j + 1) * w]).sum())
        / float(r.pow(2).sum())
        for j, r in enumerate(cols)
    ]
    m = num_permutations + 1
    rho = q[0] / (sum(q[1:m]) / num_permutations)
    rho_labels = q[m] / (sum(q[m + 1 :]) / num_permutations)

    r0 = cols[0]
    energy = (vecs.T @ r0).pow(2).sum(1)
    e_tau = float(((1 - torch.exp(-2 * tau * vals / lam_bar)) * energy).sum() / r0.pow(2).sum())
    r_eff = trace**2 / frob2 / dim
    residual = float(r0.pow(2).sum()) / (n * (1 - 1 / c))
    ntk_acc = _crossfit_accuracy(kd, feats, logits.double(), y, c, eps, pseudo, seed)

    guard, gate = None, 1.0
    if source_logits is not None:
        conf, nmi, _ = source_guard(source_logits, y, c)
        guard = (conf, nmi)
        gate = min(1.0, max(0.0, (conf - 1.0) / (thresholds.gate_confidence - 1.0)))
    ntk_norm = (ntk_acc - 1 / c) / (1 - 1 / c)
    decision, reasons = decide(rho, e_tau, guard, thresholds, ntk_norm * gate)
    return ScreeningScores(
        rho=rho,
        q_true=q[0],
        q_permuted=q[1:m],
        e_tau=e_tau,
        r_eff=r_eff,
        lam_bar=lam_bar,
        eigenvalues=[float(v) for v in vals[:k]],
        n=n,
        num_classes=c,
        rho_labels=rho_labels,
        residual=residual,
        predicted_residual=residual * (1 - e_tau),
        ntk_accuracy=ntk_acc,
        ntk_accuracy_norm=ntk_norm,
        source_gate=gate,
        ntk_score=ntk_norm * gate,
        exact_spectrum=bool(exact),
        guard_confidence=None if guard is None else guard[0],
        guard_nmi=None if guard is None else guard[1],
        decision=decision,
        reasons=reasons,
    )


# --------------------------------------------------------------------------- end to end
@torch.no_grad()
def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def screen_reprogramming(
    model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    num_samples: int = 512,
    label_mapping: str = "flm",
    pseudo: bool = False,
    sketch: str = "auto",
    sketch_dim: int = 4096,
    max_exact_entries: int = 2**26,
    batch_size: int = 128,
    top_k: int = 64,
    num_permutations: int = 8,
    eps: float = 1e-2,
    tau: float = 100.0,
    seed: int = 0,
    thresholds: ScreeningThresholds = ScreeningThresholds(),
    progress: Callable[[int], None] | None = None,
) -> ScreeningScores:
    """Screen a reprogrammed model ``g = L(f_s(T_theta(x)))`` at its current prompt on target data.

    ``model`` needs ``source`` (frozen, eval mode), ``transform`` (``x -> u``; its ``jacobian_diag()``
    gives ``du/dtheta``, else all ones) and ``mapping`` (source logits -> target logits), like
    :class:`~lightning_reuse.nn.reprogrammed.ReprogrammedModel`. Nothing of ``model`` is modified.

    Args:
        model: The reprogrammed model.
        x: Target inputs ``[N, ...]`` (on the model's device).
        y: Target labels ``[N]``.
        num_samples: Size of the stratified subset screened.
        label_mapping: ``"flm"``: the frequency mapping of the source's top-1 predictions on this subset
            (what FLM/ILM training starts from); ``"model"``: ``model.mapping`` as it is.
        pseudo: Use the ``n x n`` pseudo-NTK (one backward per batch) instead of the ``nC x nC`` NTK.
        sketch: ``"auto"`` (exact rows if ``rows x P_m <= max_exact_entries`` or
            ``P_m <= sketch_dim``, else CountSketch),
            ``"none"``, ``"gaussian"`` or ``"countsketch"``.
        sketch_dim: Columns after sketching.
        max_exact_entries: Largest exact feature matrix (entries) for ``sketch="auto"``.
        batch_size: Samples per forward/backward.
        top_k, num_permutations, eps, tau, seed, thresholds: As in :func:`screening_scores`.
        progress: Called with the number of samples done.
    """
    from lightning_reuse.functional.ntk import assert_per_sample, prompt_jacobian
    from lightning_reuse.nn.label_mapping import count_matrix, greedy_one_to_one

    missing = [a for a in ("source", "transform", "mapping") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"`model` must be a reprogrammed model with `source`, `transform` and `mapping` (e.g. "
            f"ReprogrammedModel); {type(model).__name__} lacks {missing}."
        )
    if label_mapping not in ("flm", "model"):
        raise ValueError(f"`label_mapping` must be 'flm' or 'model', got {label_mapping!r}.")
    source, transform = model.source, model.transform
    assert_per_sample(source, "model.source")
    idx = stratified_subset(y.cpu(), num_samples, seed).to(y.device)
    xs, ys = x[idx], y[idx]
    num_classes = int(y.max()) + 1
    num_classes = max(num_classes, int(getattr(model.mapping, "num_target", num_classes)))
    u = _batched(transform, xs, batch_size)
    src_logits = _batched(source, u, batch_size)
    if label_mapping == "flm":
        counts = count_matrix(src_logits.argmax(-1).cpu(), ys.cpu(), src_logits.shape[1], num_classes)
        chosen = greedy_one_to_one(counts).to(u.device)

        def head(v: Tensor) -> Tensor:
            return source(v)[:, chosen]
    else:

        def head(v: Tensor) -> Tensor:
            return model.mapping(source(v))

    jd = getattr(transform, "jacobian_diag", None)
    scale = jd().detach() if callable(jd) else None
    p_m = int((scale != 0).sum()) if scale is not None else u[0].numel()
    rows = len(ys) * (1 if pseudo else num_classes)
    # "auto": exact rows when they fit, or when sketching would not shrink them (p_m <= sketch_dim).
    exact_fits = rows * p_m <= max_exact_entries or p_m <= sketch_dim
    kind = sketch if sketch != "auto" else ("none" if exact_fits else "countsketch")
    jac = prompt_jacobian(
        head,
        u,
        scale,
        batch_size=batch_size,
        sketch=kind,
        sketch_dim=sketch_dim,
        seed=seed,
        pseudo=pseudo,
        progress=progress,
    )
    return screening_scores(
        jac.phi,
        jac.logits,
        ys,
        source_logits=src_logits,
        pseudo=pseudo,
        features=True,
        num_permutations=num_permutations,
        eps=eps,
        tau=tau,
        top_k=top_k,
        seed=seed,
        thresholds=thresholds,
    )
