"""The linear algebra behind the screening scores: the kernel as an operator, its spectrum, ridge solves.

Private to :mod:`lightning_reuse.functional.ntk_scores`. The kernel is either dense (``K [dim, dim]``) or
features (``Phi [dim, s]``, ``K = Phi Phi^T``); every routine works in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_reuse.functional.ntk import topk_eigh


@dataclass
class KernelView:
    """The kernel as the solvers see it: ``dense`` ``K`` or ``feats`` ``Phi`` (the other is None)."""

    dense: Tensor | None
    feats: Tensor | None
    dim: int
    trace: float
    frob2: float  # ||K||_F^2
    gram: Tensor | None = None  # Phi^T Phi (features only)

    def matmul(self, v: Tensor) -> Tensor:
        """``K v``."""
        if self.feats is None:
            return self.dense @ v
        return self.feats @ (self.feats.T @ v)


def kernel_view(kernel: Tensor, dim: int, features: bool | None) -> KernelView:
    """Read ``kernel`` as dense ``K [dim, dim]`` or features (``features=None``: dense iff it is square).

    Features at least as wide as ``dim`` are turned into the dense ``K`` (cheaper).

    Raises:
        ValueError: If the kernel is zero (trace 0).
    """
    kd = kernel.double()
    is_dense = kd.shape == (dim, dim) if features is None else not features
    feats = None if is_dense else kd.reshape(dim, -1)
    if feats is not None and feats.shape[1] >= dim:  # a dense kernel is cheaper
        kd, feats, is_dense = feats @ feats.T, None, True
    if is_dense:
        view = KernelView(kd, None, dim, float(torch.diagonal(kd).sum()), float((kd * kd).sum()))
    else:
        gram = feats.T @ feats
        view = KernelView(None, feats, dim, float((feats * feats).sum()), float((gram * gram).sum()), gram)
    if view.trace <= 0:
        raise ValueError(
            "The kernel is zero (trace 0): the output does not depend on the prompt. HINT: check that the "
            "prompt reaches the source model's input (a mask of zeros, or a source that ignores its input)."
        )
    return view


@dataclass
class Spectrum:
    """Eigenpairs of ``K``, descending: every pair (``exact``) or the top-k (a randomized estimate)."""

    vals: Tensor
    vecs: Tensor
    exact: bool


def spectrum(k: KernelView, top_k: int, max_exact: int, seed: int) -> Spectrum:
    """Exact spectrum when affordable (eigh of the ``s x s`` Gram matrix, or of a dense ``K``), else top-k."""
    if k.feats is not None and k.feats.shape[1] <= max_exact:
        ev, v = torch.linalg.eigh(k.gram)
        keep = ev > ev.max() * 1e-13
        vals = ev[keep].flip(0)
        return Spectrum(vals, (k.feats @ v[:, keep].flip(1)) / vals.sqrt(), True)
    if k.feats is None and k.dim <= max_exact:
        ev, v = torch.linalg.eigh(k.dense)
        return Spectrum(ev.flip(0).clamp_min(0), v.flip(1), True)
    top = min(top_k, k.dim)
    operator = k.feats if k.feats is not None else k.dense
    vals, vecs = topk_eigh(operator, top, features=k.feats is not None, seed=seed)
    return Spectrum(vals.clamp_min(0), vecs, False)


def ridge_solve(k: KernelView, spec: Spectrum, b: Tensor, mu: float) -> Tensor:
    """``(K + mu I)^-1 b`` for every column of ``b``: from the eigenpairs, by Cholesky, or by CG."""
    if spec.exact:  # the complement of the eigenpairs' span has eigenvalue 0
        proj = spec.vecs.T @ b
        return spec.vecs @ (proj / (spec.vals + mu)[:, None]) + (b - spec.vecs @ proj) / mu
    if k.feats is None:
        chol = torch.linalg.cholesky(
            k.dense + mu * torch.eye(k.dim, dtype=k.dense.dtype, device=k.dense.device)
        )
        return torch.cholesky_solve(b, chol)
    vals, vecs = spec.vals, spec.vecs
    lam_k = float(vals[-1]) if len(vals) else 0.0

    def precond(r: Tensor) -> Tensor:  # exact on the top-k span, lam_k + mu outside it
        proj = vecs.T @ r
        return vecs @ (proj / (vals + mu)[:, None]) + (r - vecs @ proj) / (lam_k + mu)

    return conjugate_gradient(lambda v: k.matmul(v) + mu * v, b, precond)


def conjugate_gradient(
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


def _fold_delta(k: KernelView, a_rows: Tensor, b_rows: Tensor, rhs: Tensor, eps: float) -> Tensor:
    """``K_BA (K_AA + eps lam_bar_A I)^-1 rhs`` (features: push-through ``Phi_B (Phi_A^T Phi_A + mu I)^-1 Phi_A^T``)."""
    if k.feats is not None:
        fa, fb = k.feats[a_rows], k.feats[b_rows]
        mu = eps * float((fa * fa).sum()) / len(a_rows)
        gram = fa.T @ fa + mu * torch.eye(fa.shape[1], dtype=fa.dtype, device=fa.device)
        return fb @ torch.linalg.solve(gram, fa.T @ rhs)
    kd = k.dense
    kaa = kd[a_rows][:, a_rows]
    mu = eps * float(torch.diagonal(kaa).mean())
    eye = torch.eye(len(a_rows), dtype=kd.dtype, device=kd.device)
    return kd[b_rows][:, a_rows] @ torch.linalg.solve(kaa + mu * eye, rhs)


def crossfit_accuracy(
    k: KernelView, p0: Tensor, r0: Tensor, y: Tensor, eps: float, pseudo: bool, seed: int
) -> float:
    """Held-out accuracy of the linearised (NTK ridge) fit of the residual, two folds, averaged.

    Fold ``B`` is predicted as ``softmax(z0_B) + K_BA (K_AA + eps lam_bar_A I)^-1 r0_A``: what training the
    prompt to convergence in the NTK regime would give on unseen samples. ``p0 = softmax(z0)`` and ``r0``
    are ``[n, C]``.
    """
    n, c = r0.shape
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    folds = [perm[: n // 2], perm[n // 2 :]]
    per = 1 if pseudo else c

    def rows(idx: Tensor) -> Tensor:
        return (idx[:, None] * per + torch.arange(per)).flatten()

    correct = 0
    for a, b in (folds, folds[::-1]):
        rhs = r0[a] if pseudo else r0[a].reshape(-1, 1)
        pred = p0[b] + _fold_delta(k, rows(a), rows(b), rhs, eps).reshape(len(b), c)
        correct += int((pred.argmax(-1) == y[b]).sum())
    return correct / n
