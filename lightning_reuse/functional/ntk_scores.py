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
from torch import Tensor, nn

from lightning_reuse.functional._ntk_linalg import (
    KernelView,
    Spectrum,
    crossfit_accuracy,
    kernel_view,
    ridge_solve,
    spectrum,
)
from lightning_reuse.functional.ntk import assert_per_sample, prompt_jacobian
from lightning_reuse.functional.ntk_config import (
    ScreeningConfig,
    ScreeningThresholds,
    check_inputs,
    check_labels,
    degenerate_reasons,
    resolve_config,
)
from lightning_reuse.functional.probe import linear_probe_accuracy
from lightning_reuse.functional.transferability import logme
from lightning_reuse.nn.label_mapping import count_matrix, greedy_one_to_one

__all__ = [
    "ScreeningConfig",
    "ScreeningScores",
    "ScreeningThresholds",
    "decide",
    "residual_at_init",
    "screen_reprogramming",
    "screening_scores",
    "source_guard",
    "stratified_subset",
]


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
    degenerate: bool = False
    baselines: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str = "ntk/") -> dict[str, float]:
        """Scalar metrics for a logger (decision as 0 = PASS, 1 = WARN, 2 = FAIL)."""
        out = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float)) and v is not None}
        out["decision"] = float(("PASS", "WARN", "FAIL").index(self.decision))
        out.update({f"baseline/{k}": float(v) for k, v in self.baselines.items()})
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
        raise ValueError(f"`n` must be >= 1, got {n}. HINT: screen at least one sample.")
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


def _degenerate_scores(n: int, num_classes: int, reasons: list[str]) -> ScreeningScores:
    """FAIL with ``reasons``, no score computed (every score is NaN)."""
    nan = float("nan")
    return ScreeningScores(
        rho=nan,
        q_true=nan,
        q_permuted=[],
        e_tau=nan,
        r_eff=nan,
        lam_bar=nan,
        eigenvalues=[],
        n=n,
        num_classes=num_classes,
        decision="FAIL",
        reasons=reasons,
        degenerate=True,
    )


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


# --------------------------------------------------------------------------- scores
def _residual_columns(logits: Tensor, y: Tensor, cfg: ScreeningConfig) -> list[Tensor]:
    """Right-hand sides: ``r0`` of the true and of permuted labels, then the centred one-hot labels likewise.

    Each is ``[n, C]`` with the pseudo-NTK, else a column ``[nC, 1]``.
    """
    n, c = logits.shape
    g = torch.Generator().manual_seed(cfg.seed)
    ys = [y] + [y[torch.randperm(n, generator=g)] for _ in range(cfg.num_permutations)]
    res = [residual_at_init(logits.double(), yy, c) for yy in ys]  # each [n, C]
    centred = torch.nn.functional.one_hot(y, c).double() - 1.0 / c  # labels of a zero-output model
    res_y = [centred] + [centred[torch.randperm(n, generator=g)] for _ in range(cfg.num_permutations)]
    return [r if cfg.pseudo else r.reshape(-1, 1) for r in res + res_y]


def _complexities(k: KernelView, spec: Spectrum, cols: list[Tensor], eps: float) -> list[float]:
    """``q = lam_bar r^T (K + eps lam_bar I)^-1 r / ||r||^2`` of every column block."""
    lam_bar = k.trace / k.dim
    b = torch.cat(cols, 1)
    sol = ridge_solve(k, spec, b, eps * lam_bar)
    w = b.shape[1] // len(cols)
    return [
        lam_bar
        * float((b[:, j * w : (j + 1) * w] * sol[:, j * w : (j + 1) * w]).sum())
        / float(r.pow(2).sum())
        for j, r in enumerate(cols)
    ]


def _decision(
    ntk_accuracy: float,
    rho: float,
    e_tau: float,
    y: Tensor,
    c: int,
    source_logits: Tensor | None,
    thresholds: ScreeningThresholds,
) -> dict[str, Any]:
    """Source guard and gate, the NTK score and the PASS/WARN/FAIL decision (fields of ScreeningScores)."""
    guard, gate = None, 1.0
    if source_logits is not None:
        conf, nmi, _ = source_guard(source_logits, y, c)
        guard = (conf, nmi)
        gate = min(1.0, max(0.0, (conf - 1.0) / (thresholds.gate_confidence - 1.0)))
    ntk_norm = (ntk_accuracy - 1 / c) / (1 - 1 / c)
    decision, reasons = decide(rho, e_tau, guard, thresholds, ntk_norm * gate)
    return {
        "ntk_accuracy": ntk_accuracy,
        "ntk_accuracy_norm": ntk_norm,
        "source_gate": gate,
        "ntk_score": ntk_norm * gate,
        "guard_confidence": None if guard is None else guard[0],
        "guard_nmi": None if guard is None else guard[1],
        "decision": decision,
        "reasons": reasons,
    }


def screening_scores(
    kernel: Tensor,
    logits: Tensor,
    y: Tensor,
    *,
    source_logits: Tensor | None = None,
    features: bool | None = None,
    config: ScreeningConfig | None = None,
    **options: Any,
) -> ScreeningScores:
    """Compute rho, E(tau), r_eff, the source guard and the decision.

    Args:
        kernel: Either the dense NTK ``[nC, nC]`` (rows ``(i, a)``, sample-major; ``[n, n]`` with
            ``pseudo``) or features ``Phi`` ``[n, C, s]`` (``[n, s]`` with ``pseudo``) with ``K = Phi Phi^T``.
            Features with ``s <= max_exact`` give the exact spectrum from the Gram matrix; larger ones
            are used matrix-free (randomized top-k, CG preconditioned by the top-k pairs).
        logits: ``[n, C]`` model outputs at the initial prompt.
        y: ``[n]`` target labels.
        source_logits: ``[n, K_s]`` source outputs on the prompted inputs for the guard (optional).
        features: Whether ``kernel`` holds features (``None``: features unless it is ``[dim, dim]``).
        config: The options (:class:`ScreeningConfig`; this function reads ``pseudo``, ``num_permutations``,
            ``eps``, ``tau``, ``top_k``, ``max_exact``, ``seed`` and ``thresholds``).
        **options: Instead of ``config``: fields of :class:`ScreeningConfig` as keywords.
    """
    cfg = resolve_config(config, options, "screening_scores")
    n, c = logits.shape
    if y.shape != (n,):
        raise ValueError(
            f"`y` must have shape [{n}] to match `logits` {tuple(logits.shape)}, got {tuple(y.shape)}. "
            "HINT: pass one label per row of `logits`."
        )
    check_labels(y, c, "screening_scores")
    k = kernel_view(kernel, n if cfg.pseudo else n * c, features)
    reasons = degenerate_reasons(y)
    if reasons:
        return _degenerate_scores(n, c, reasons)
    spec = spectrum(k, cfg.top_k, cfg.max_exact, cfg.seed)
    cols = _residual_columns(logits, y, cfg)
    q, m = _complexities(k, spec, cols, cfg.eps), cfg.num_permutations + 1
    rho = q[0] / (sum(q[1:m]) / cfg.num_permutations)
    rho_labels = q[m] / (sum(q[m + 1 :]) / cfg.num_permutations)
    lam_bar, r0 = k.trace / k.dim, cols[0]
    energy = (spec.vecs.T @ r0).pow(2).sum(1)
    e_tau = float(((1 - torch.exp(-2 * cfg.tau * spec.vals / lam_bar)) * energy).sum() / r0.pow(2).sum())
    residual = float(r0.pow(2).sum()) / (n * (1 - 1 / c))
    p0, r0_nc = logits.double().softmax(-1), residual_at_init(logits.double(), y, c)
    ntk_acc = crossfit_accuracy(k, p0, r0_nc, y, cfg.eps, cfg.pseudo, cfg.seed)
    return ScreeningScores(
        rho=rho,
        q_true=q[0],
        q_permuted=q[1:m],
        e_tau=e_tau,
        r_eff=k.trace**2 / k.frob2 / k.dim,
        lam_bar=lam_bar,
        eigenvalues=[float(v) for v in spec.vals[: min(cfg.top_k, k.dim)]],
        n=n,
        num_classes=c,
        rho_labels=rho_labels,
        residual=residual,
        predicted_residual=residual * (1 - e_tau),
        exact_spectrum=bool(spec.exact),
        **_decision(ntk_acc, rho, e_tau, y, c, source_logits, cfg.thresholds),
    )


# --------------------------------------------------------------------------- end to end
@torch.no_grad()
def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _check_reprogrammed(model: nn.Module) -> None:
    missing = [a for a in ("source", "transform", "mapping") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"`model` must be a reprogrammed model with `source`, `transform` and `mapping` (e.g. "
            f"ReprogrammedModel); {type(model).__name__} lacks {missing}. HINT: wrap the source model in "
            "lightning_reuse.nn.ReprogrammedModel(source, prompt, label_mapping)."
        )
    assert_per_sample(model.source, "model.source")


def _check_target_data(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Refuse inputs the prompts cannot take and labels out of range; return the number of target classes."""
    check_inputs(x)
    default = int(y.max()) + 1 if y.numel() and not y.is_floating_point() else 2
    num_classes = int(getattr(model.mapping, "num_target", default))
    check_labels(y, num_classes, "NTK screening")
    return num_classes


def _head(
    model: nn.Module, label_mapping: str, src_logits: Tensor, ys: Tensor, num_classes: int
) -> Callable[[Tensor], Tensor]:
    """The map from prompted inputs to target logits: the FLM of the source's top-1 predictions, or the model's."""
    source = model.source
    if label_mapping == "model":
        return lambda v: model.mapping(source(v))
    counts = count_matrix(src_logits.argmax(-1).cpu(), ys.cpu(), src_logits.shape[1], num_classes)
    chosen = greedy_one_to_one(counts).to(src_logits.device)
    return lambda v: source(v)[:, chosen]


def _sketch_kind(cfg: ScreeningConfig, rows: int, p_m: int) -> str:
    """``"auto"``: exact rows when they fit, or when sketching would not shrink them (``P_m <= sketch_dim``)."""
    if cfg.sketch != "auto":
        return cfg.sketch
    exact_fits = rows * p_m <= cfg.max_exact_entries or p_m <= cfg.sketch_dim
    return "none" if exact_fits else "countsketch"


def screen_reprogramming(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    config: ScreeningConfig | None = None,
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> ScreeningScores:
    """Screen a reprogrammed model ``g = L(f_s(T_theta(x)))`` at its current prompt on target data.

    ``model`` needs ``source`` (frozen, eval mode), ``transform`` (``x -> u``; its ``jacobian_diag()``
    gives ``du/dtheta``, else all ones) and ``mapping`` (source logits -> target logits), like
    :class:`~lightning_reuse.nn.reprogrammed.ReprogrammedModel`. Nothing of ``model`` is modified.

    Args:
        model: The reprogrammed model.
        x: Target inputs ``[N, ...]`` (on the model's device).
        y: Target labels ``[N]``.
        config: The options (:class:`ScreeningConfig`); default ``ScreeningConfig()``.
        progress: Called with the number of samples done.
        **options: Instead of ``config``: fields of :class:`ScreeningConfig` as keywords
            (``screen_reprogramming(model, x, y, num_samples=256)``).
    """
    cfg = resolve_config(config, options, "screen_reprogramming")
    _check_reprogrammed(model)
    num_classes = _check_target_data(model, x, y)
    idx = stratified_subset(y.cpu(), cfg.num_samples, cfg.seed).to(y.device)
    xs, ys = x[idx], y[idx]
    reasons = degenerate_reasons(ys)
    if reasons:
        return _degenerate_scores(len(ys), num_classes, reasons)
    u = _batched(model.transform, xs, cfg.batch_size)
    src_logits = _batched(model.source, u, cfg.batch_size)
    head = _head(model, cfg.label_mapping, src_logits, ys, num_classes)
    jd = getattr(model.transform, "jacobian_diag", None)
    scale = jd().detach() if callable(jd) else None
    p_m = int((scale != 0).sum()) if scale is not None else u[0].numel()
    rows = len(ys) * (1 if cfg.pseudo else num_classes)
    jac = prompt_jacobian(
        head,
        u,
        scale,
        batch_size=cfg.batch_size,
        sketch=_sketch_kind(cfg, rows, p_m),
        sketch_dim=cfg.sketch_dim,
        seed=cfg.seed,
        pseudo=cfg.pseudo,
        progress=progress,
    )
    scores = screening_scores(jac.phi, jac.logits, ys, source_logits=src_logits, features=True, config=cfg)
    if cfg.baselines:
        scores.baselines = screening_baselines(src_logits, jac.logits, ys, num_classes, cfg.seed)
    return scores


def screening_baselines(
    source_logits: Tensor, mapped_logits: Tensor, labels: Tensor, num_classes: int, seed: int = 0
) -> dict[str, float]:
    """The field's cheap baselines on the screened samples, from what the screening pass already computed.

    - ``zero_step_accuracy``: accuracy at the current prompt, zero training steps, through the screening's
      head: the frequency label mapping fitted on these same samples (``label_mapping="flm"``, so in-sample,
      an optimistic baseline) or the model's own mapping (``"model"``);
    - ``linear_probe``: cross-fitted ridge probe on the source logits
      (:func:`~lightning_reuse.functional.probe.linear_probe_accuracy`, 5 folds);
    - ``logme``: LogME of the source logits (:func:`~lightning_reuse.functional.transferability.logme`).
    """
    y = labels.long()
    feats = source_logits.detach().double()
    return {
        "zero_step_accuracy": float((mapped_logits.detach().argmax(-1) == y).double().mean()),
        "linear_probe": float(linear_probe_accuracy(feats, y, num_classes=num_classes, seed=seed)),
        "logme": float(logme(feats, y, num_classes=num_classes)),
    }
