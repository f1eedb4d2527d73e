"""Empirical neural tangent kernels: a general torch.func NTK and the prompt-NTK fast path.

NTK-based screening following Chung et al. 2025 ("Model Reprogramming Demystified: A Neural Tangent
Kernel Perspective", arXiv 2506.00620); score definitions from Arora et al. 2019 (arXiv 1901.08584).

For a model reprogrammed by an input prompt, :math:`g(x;\\theta) = L(f_s(T_\\theta(x)))` with a frozen,
per-sample source :math:`f_s` and an element-wise transform :math:`u = T_\\theta(x)`,

.. math::
    \\frac{\\partial g(x)}{\\partial \\theta} = \\frac{\\partial (L \\circ f_s)}{\\partial u}\\Big|_{u=T_\\theta(x)}
    \\operatorname{diag}\\Big(\\frac{\\partial u}{\\partial \\theta}\\Big),

so the prompt-NTK is the source's masked input-gradient kernel. Because samples are independent,
the gradient of :math:`\\sum_i g_c(u_i)` w.r.t. the batch ``u`` holds every sample's row for output
``c``: :func:`prompt_jacobian` costs one forward and ``C`` backward passes per batch (no vmap).

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> k = empirical_ntk(net, torch.randn(5, 4))
    >>> tuple(k.shape)  # [N1, N2, O, O]
    (5, 5, 3, 3)
    >>> jac = prompt_jacobian(net, torch.randn(6, 4))
    >>> tuple(jac.phi.shape), tuple(jac.logits.shape)  # [n, C, P] and [n, C]
    ((6, 3, 4), (6, 3))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

NTKMode = Literal["jacobian_contraction", "ntk_vector_products"]
SketchKind = Literal["none", "gaussian", "countsketch"]
_MODES = ("jacobian_contraction", "ntk_vector_products")
_SKETCHES = ("none", "gaussian", "countsketch")

__all__ = [
    "PromptJacobian",
    "assert_per_sample",
    "empirical_ntk",
    "features_to_kernel",
    "ntk_matrix",
    "ntk_vector_product",
    "prompt_jacobian",
    "topk_eigh",
]


# --------------------------------------------------------------------------- general empirical NTK
def _select_params(
    model: nn.Module, params: Mapping[str, Tensor] | Iterable[str] | None
) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    if params is None:
        chosen = {k: v.detach() for k, v in named.items() if v.requires_grad}
    elif isinstance(params, Mapping):
        chosen = {k: v.detach() for k, v in params.items()}
    else:
        names = list(params)
        missing = [n for n in names if n not in named]
        if missing:
            raise ValueError(
                f"`params` names {missing} are not parameters of {type(model).__name__}; "
                f"valid names: {sorted(named)}. HINT: pick names from `model.named_parameters()`."
            )
        chosen = {n: named[n].detach() for n in names}
    if not chosen:
        raise ValueError(
            "`params` selects no parameter (the model has no parameter with requires_grad=True). "
            "HINT: pass a list of parameter names or a {name: tensor} dict."
        )
    return chosen


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    params: Mapping[str, Tensor] | Iterable[str] | None = None,
    mode: NTKMode = "jacobian_contraction",
    chunk_size: int | None = None,
) -> Tensor:
    """The empirical NTK :math:`K[i, j, a, b] = \\langle \\partial f_a(x_{1,i})/\\partial p, \\partial f_b(x_{2,j})/\\partial p \\rangle`.

    Two torch.func implementations (as in the PyTorch "Neural Tangent Kernels" tutorial):

    - ``"jacobian_contraction"``: per-sample Jacobians by ``vmap(jacrev)``, then contraction over the
      parameters. Cost ``O(N O P)`` memory for the Jacobians and ``O(N1 N2 O^2 P)`` for the contraction;
      the reliable default for small models. The model sees one sample at a time, so it must be a
      per-sample function (eval-mode BatchNorm is fine; train-mode BatchNorm is not).
    - ``"ntk_vector_products"``: ``K = J1 J2^T`` column by column, one VJP + one JVP per column of the
      ``N1 O`` identity (vmapped); no Jacobian is stored. Cheaper in memory when ``P >> N O``; the
      model sees whole batches.

    Args:
        model: Any ``nn.Module`` whose output is ``[N, *out]`` (flattened to ``O`` outputs). Its
            train/eval mode is used as is.
        x1: Inputs ``[N1, ...]``.
        x2: Inputs ``[N2, ...]``; ``None`` means ``x1``.
        params: The parameters to differentiate: ``None`` = all with ``requires_grad``; a list of names
            of ``model.named_parameters()``; or a ``{name: tensor}`` dict of values to evaluate at
            (parameters not named stay fixed at the module's values).
        mode: ``"jacobian_contraction"`` or ``"ntk_vector_products"``.
        chunk_size: Samples per vmapped Jacobian (contraction mode) or identity columns per vmap
            (NTK-vector-product mode); ``None`` = all at once. Bounds the memory for large models.

    Returns:
        ``[N1, N2, O, O]`` tensor. :func:`ntk_matrix` flattens it to ``[N1 O, N2 O]`` (sample-major).
    """
    if mode not in _MODES:
        raise ValueError(
            f"`mode` must be one of {_MODES}, got {mode!r}. HINT: pass mode='jacobian_contraction' (the default)."
        )
    p = _select_params(model, params)
    x2_ = x1 if x2 is None else x2

    def f_batch(p_: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p_, (x,)).flatten(1)

    if mode == "jacobian_contraction":

        def f_single(p_: dict[str, Tensor], x: Tensor) -> Tensor:
            return f_batch(p_, x.unsqueeze(0)).squeeze(0)

        def jac(x: Tensor) -> list[Tensor]:
            j = vmap(jacrev(f_single), (None, 0), chunk_size=chunk_size)(p, x)
            return [t.flatten(2) for t in j.values()]  # each [N, O, P_k]

        j1 = jac(x1)
        j2 = j1 if x2 is None else jac(x2_)
        return sum(torch.einsum("iap,jbp->ijab", a, b) for a, b in zip(j1, j2))

    out1, vjp_fn = vjp(lambda p_: f_batch(p_, x1), p)
    n1, o = out1.shape

    def column(v: Tensor) -> Tensor:
        (tangent,) = vjp_fn(v)
        return jvp(lambda p_: f_batch(p_, x2_), (p,), (tangent,))[1]

    basis = torch.eye(n1 * o, dtype=out1.dtype, device=out1.device).view(n1 * o, n1, o)
    cols = vmap(column, chunk_size=chunk_size)(basis)  # [N1 O, N2, O]
    return cols.view(n1, o, cols.shape[1], o).permute(0, 2, 1, 3)


def ntk_matrix(k: Tensor) -> Tensor:
    """Flatten an ``[N1, N2, O, O]`` NTK to the ``[N1 O, N2 O]`` matrix with rows ordered ``(i, a)``."""
    n1, n2, o1, o2 = k.shape
    return k.permute(0, 2, 1, 3).reshape(n1 * o1, n2 * o2)


def ntk_vector_product(
    model: nn.Module, x: Tensor, v: Tensor, params: Mapping[str, Tensor] | Iterable[str] | None = None
) -> Tensor:
    """Matrix-free ``K v`` for the NTK on ``x``: one VJP and one JVP. ``v: [N, O]`` -> ``[N, O]``."""
    p = _select_params(model, params)

    def f(p_: dict[str, Tensor]) -> Tensor:
        return functional_call(model, p_, (x,)).flatten(1)

    _, vjp_fn = vjp(f, p)
    (tangent,) = vjp_fn(v)
    return jvp(f, (p,), (tangent,))[1]


# --------------------------------------------------------------------------- prompt-NTK fast path
_CROSS_SAMPLE = (nn.modules.batchnorm._BatchNorm,)


def assert_per_sample(module: nn.Module, name: str = "model") -> None:
    """Raise ``ValueError`` if ``module`` mixes samples or is random in its current mode.

    The fast path relies on each output row depending only on its own input: train-mode BatchNorm
    (batch statistics) and train-mode Dropout (random masks) break that.
    """
    bad = [
        f"{n or '<root>'} ({type(m).__name__})"
        for n, m in module.named_modules()
        if m.training and isinstance(m, (*_CROSS_SAMPLE, nn.Dropout, nn.Dropout2d, nn.Dropout3d))
    ]
    if bad:
        raise ValueError(
            f"The NTK of `{name}` is not per-sample: {', '.join(bad[:5])} in training mode mixes samples "
            "(batch statistics) or draws random masks. HINT: call `.eval()` on the frozen source before "
            "screening (reprogramming keeps the source in eval mode), or replace BatchNorm by GroupNorm."
        )


@dataclass
class PromptJacobian:
    """Rows of the prompt Jacobian and the logits at the initial prompt.

    Attributes:
        phi: ``[n, C, s]`` (or ``[n, s]`` for the pseudo-NTK): masked (and sketched) input-gradient
            rows; ``K = phi.reshape(n C, s) @ phi.reshape(n C, s).T``.
        logits: ``[n, C]`` outputs of ``head`` at the prompted inputs.
        support: ``[P_m]`` indices (into the flattened input) where the scale is non-zero.
        sketch: The sketch used (``"none"``, ``"gaussian"``, ``"countsketch"``).
    """

    phi: Tensor
    logits: Tensor
    support: Tensor
    sketch: str


def _sketcher(kind: str, p_m: int, dim: int, seed: int, device: torch.device) -> Callable[[Tensor], Tensor]:
    if kind == "none":
        return lambda rows: rows
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        s = (torch.randn(p_m, dim, generator=g) / math.sqrt(dim)).to(device)
        return lambda rows: rows @ s.to(rows.dtype)
    bucket = torch.randint(0, dim, (p_m,), generator=g).to(device)
    sign = (torch.randint(0, 2, (p_m,), generator=g) * 2 - 1).to(device)

    def countsketch(rows: Tensor) -> Tensor:
        out = rows.new_zeros(rows.shape[0], dim)
        return out.index_add_(1, bucket, rows * sign.to(rows.dtype))

    return countsketch


def _batch_rows(
    head: Callable[[Tensor], Tensor],
    u: Tensor,
    support: Tensor,
    s_vals: Tensor,
    project: Callable[[Tensor], Tensor],
    pseudo: bool,
) -> tuple[Tensor, Tensor]:
    """Sketched masked input-gradient rows ``[b, C or 1, s]`` and the logits ``[b, C]`` of one batch."""
    ub = u.detach().requires_grad_(True)
    out = head(ub)
    if out.dim() != 2:
        raise ValueError(
            f"`head` must return logits [batch, C], got shape {tuple(out.shape)}. "
            "HINT: flatten the output, or map it to class logits."
        )
    c = out.shape[1]
    targets = [out.sum(1) / math.sqrt(c)] if pseudo else [out[:, k] for k in range(c)]
    rows = []
    for k, t in enumerate(targets):
        (gu,) = torch.autograd.grad(t.sum(), ub, retain_graph=k < len(targets) - 1)
        rows.append(project(gu.reshape(gu.shape[0], -1)[:, support] * s_vals))
    return torch.stack(rows, 1).detach(), out.detach()


def prompt_jacobian(
    head: Callable[[Tensor], Tensor],
    u: Tensor,
    scale: Tensor | None = None,
    *,
    batch_size: int = 128,
    sketch: SketchKind = "none",
    sketch_dim: int = 4096,
    seed: int = 0,
    pseudo: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PromptJacobian:
    """Masked input-gradient rows of ``head`` at the prompted inputs ``u``: the prompt-NTK features.

    For each batch: one forward of ``head`` and ``C`` backward passes (one per output) w.r.t. the
    batch, so ``phi[i, c] = (d head_c(u_i) / d u_i * scale)[support] @ S``. With ``pseudo=True`` one
    backward of the sum of logits gives the ``[n, s]`` pseudo-NTK rows (scaled by ``1/sqrt(C)``).

    Args:
        head: ``u [b, ...] -> logits [b, C]``, i.e. ``L o f_s`` (including any normalisation); must be
            per-sample (eval mode), which :func:`assert_per_sample` checks when ``head`` is a module.
        u: The prompted inputs ``[n, ...]`` at the initial prompt.
        scale: ``du/dtheta`` (element-wise), broadcastable to ``u.shape[1:]``, e.g. ``M * sigmoid'(theta)``
            for a padding prompt; zero entries (unmasked pixels) are dropped. ``None`` = all ones.
        batch_size: Samples per forward/backward.
        sketch: ``"none"`` (exact rows), ``"gaussian"`` (dense ``P_m x s`` N(0, 1/s) matrix) or
            ``"countsketch"`` (one signed bucket per input entry; ``O(P_m)`` memory).
        sketch_dim: ``s``, columns after sketching (ignored for ``"none"``).
        seed: Seed of the sketch.
        pseudo: Return the pseudo-NTK rows (one backward per batch) instead of ``C`` rows per sample.
        progress: Called with the number of samples done after each batch.
    """
    if sketch not in _SKETCHES:
        raise ValueError(
            f"`sketch` must be one of {_SKETCHES}, got {sketch!r}. HINT: pass sketch='none' for exact rows."
        )
    if batch_size < 1 or sketch_dim < 1:
        raise ValueError(
            f"`batch_size` and `sketch_dim` must be >= 1, got {batch_size} and {sketch_dim}. "
            "HINT: pass positive ints (the defaults are 128 and 4096)."
        )
    if isinstance(head, nn.Module):
        assert_per_sample(head, "head")
    shape = u.shape[1:]
    s_full = torch.ones(shape, dtype=u.dtype, device=u.device) if scale is None else scale
    s_full = torch.broadcast_to(s_full.to(u.device, u.dtype), shape).reshape(-1)
    support = torch.nonzero(s_full, as_tuple=False).squeeze(1)
    s_vals = s_full[support]
    project = _sketcher(sketch, support.numel(), sketch_dim, seed, u.device)
    phis, logits = [], []
    with torch.enable_grad():
        for start in range(0, u.shape[0], batch_size):
            rows, out = _batch_rows(head, u[start : start + batch_size], support, s_vals, project, pseudo)
            phis.append(rows)
            logits.append(out)
            if progress is not None:
                progress(min(start + batch_size, u.shape[0]))
    phi = torch.cat(phis)
    return PromptJacobian(phi.squeeze(1) if pseudo else phi, torch.cat(logits), support, sketch)


def features_to_kernel(phi: Tensor) -> Tensor:
    """``K = Phi Phi^T`` from ``[n, C, s]`` (rows ``(i, a)``, sample-major) or ``[n, s]`` features."""
    f = phi.reshape(-1, phi.shape[-1])
    return f @ f.T


# --------------------------------------------------------------------------- randomized top-k
def topk_eigh(
    operator: Tensor | Callable[[Tensor], Tensor],
    k: int,
    dim: int | None = None,
    *,
    oversample: int = 10,
    n_iter: int = 4,
    features: bool = False,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenpairs of a PSD operator by randomized subspace iteration (Halko et al. 2011).

    Args:
        operator: A dense PSD matrix ``[d, d]``; features ``Phi [d, s]`` with ``features=True`` (the
            operator is ``Phi Phi^T``, solved by a randomized SVD of ``Phi``); or a callable ``V [d, m]
            -> K V`` (matrix-free, e.g. NTK-vector products), which needs ``dim``.
        k: Number of eigenpairs.
        dim: ``d`` (only for a callable).
        oversample: Extra probe vectors.
        n_iter: Power iterations (each one matmul with ``K``).
        features: Interpret a tensor ``operator`` as ``Phi``.
        seed: Seed of the random probes.

    Returns:
        ``(eigenvalues [k] descending, eigenvectors [d, k])``.
    """
    if isinstance(operator, Tensor):
        mat = operator.reshape(-1, operator.shape[-1]) if features else operator
        d = mat.shape[0]
        dtype, device = mat.dtype, mat.device
        matmul = (lambda v: mat @ (mat.T @ v)) if features else (lambda v: mat @ v)
    else:
        if dim is None:
            raise ValueError(
                "`dim` is required when `operator` is a callable (matrix-free). HINT: pass dim=<operator size>."
            )
        d, matmul, dtype, device = dim, operator, torch.float64, torch.device("cpu")
    k = min(k, d)
    m = min(d, k + oversample)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, m, generator=g, dtype=dtype).to(device)
    if isinstance(operator, Tensor) and features and mat.shape[1] < d:
        q = mat @ torch.randn(mat.shape[1], m, generator=g, dtype=dtype).to(device)
    q, _ = torch.linalg.qr(q)
    for _ in range(n_iter):
        q, _ = torch.linalg.qr(matmul(q))
    b = q.T @ matmul(q)
    vals, vecs = torch.linalg.eigh((b + b.T) / 2)
    order = torch.argsort(vals, descending=True)[:k]
    return vals[order], q @ vecs[:, order]
