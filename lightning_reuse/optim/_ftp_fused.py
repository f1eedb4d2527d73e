"""The fused FTP path: state in persistent flat buffers, two row kernels around the base step (Triton on CUDA).

Tian et al., "Fast Trainable Projection for Robust Fine-Tuning", NeurIPS 2023. Same maths as
:mod:`lightning_reuse.optim._ftp_functional`; what changes is where the state lives and how many passes a
step makes over memory:

- anchors and previous directions of all projected tensors live end to end in two flat buffers, radii and
  radius moments in three ``[T]`` vectors: a cache of the optimizer's ``state[p]``, whose ``ftp_*`` entries
  are *views* into the buffers, so ``state[p]`` stays the source of truth for ``state_dict``, resume and
  the other paths. When an entry is replaced from outside (``load_state_dict``, Lightning moving
  ``optimizer.state``), the buffers are rebuilt from ``state[p]``;
- before the base step, one row kernel computes each row's share of ``h = sum(g_t * c_prev / n_prev)``
  (reading the gradients in place through a table of data pointers: nothing is concatenated), and one
  per-tensor kernel sums them and runs the radius Adam;
- after the base step, one row kernel computes ``c = p' - p0`` and the row norm ``n``, then writes
  ``p = p0 + clamp(gamma / n, 0, 1) c`` in place and ``c / n`` for the next step; a last per-tensor kernel
  clips the stored radius to ``[1e-8, max(n)]``.

Clipping the radius *after* the projection is exact: with ``g = max(gamma, 1e-8)``,
``clamp(min(g, max n) / n, 0, 1) == min(g / n, 1)`` for every row, since ``g >= max n`` makes both sides 1.
Rows are launched in buckets of row length (<= 1024, 4096, 8192, longer) so that short rows do not
waste a wide block and a row that fits in one block is read once and kept in registers. No atomics: results
are deterministic, as DDP needs. Memory traffic per fp32 element: 8 bytes before the base step, 16 after
(rows longer than 8192 are read twice, mostly from L2); with the 28 of a fused AdamW step, 52 bytes, a floor
of about 1.9x fused AdamW for this design.

Without Triton (CPU, or a CUDA machine without it), for tensors the kernels do not take (not fp32, not
contiguous), or when param groups differ in ``ftp_k``, ``ftp_mu`` or ``ftp_step`` (the kernels take one
value of each), the same step runs with ``torch._foreach_*`` ops on the same flat-buffer views. A tensor's
first step (no FTP state yet) is left to the per-tensor paths, which create its state; so the kernels'
per-tensor mode 1 ("first step": reset the radius) is no longer launched.

Example (the torch fallback, on CPU):
    >>> import torch
    >>> from lightning_reuse.optim import FTP
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> w = torch.nn.Parameter(torch.randn(3, 4))
    >>> opt = FTP(torch.optim.SGD([w], lr=0.1), implementation="fused")
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     (w - 1.0).pow(2).sum().backward()
    ...     opt.step()
    >>> s = opt.state[w]
    >>> bool(((w - s["ftp_anchor"]).abs().sum(1) <= s["ftp_gamma"] + 1e-6).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_reuse.optim import _ftp_functional as F

try:  # pragma: no cover - exercised on CUDA machines only
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - CPU-only installs
    triton = tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "FusedFTPEngine", "kernels_available"]

# row-length buckets: (largest row length, BLOCK, num_warps); the last bucket loops over longer rows
_BUCKETS = ((1024, 1024, 4), (4096, 4096, 8), (8192, 8192, 16), (None, 4096, 8))
_TENSOR_BLOCK = 1024

WARM = 2  # per-tensor modes: 0 no gradient this step (untouched); 1 (first step) is no longer launched


if HAS_TRITON:  # pragma: no cover - compiled and run on CUDA machines only

    @triton.jit
    def _hgrad_rows(
        rows_ptr,
        row_tensor_ptr,
        row_local_ptr,
        row_flat_ptr,
        row_len_ptr,
        mode_ptr,
        grad_ptrs,
        dir_ptr,
        h_row_ptr,
        BLOCK: tl.constexpr,
    ):
        r = tl.load(rows_ptr + tl.program_id(0))
        ti = tl.load(row_tensor_ptr + r)
        if tl.load(mode_ptr + ti) == 2:
            length = tl.load(row_len_ptr + r)
            flat = tl.load(row_flat_ptr + r)
            g_base = tl.load(grad_ptrs + ti).to(tl.pointer_type(tl.float32)) + tl.load(row_local_ptr + r)
            d_base = dir_ptr + flat
            offs = tl.arange(0, BLOCK)
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, length, BLOCK):
                idx = start + offs
                mask = idx < length
                g = tl.load(g_base + idx, mask=mask, other=0.0)
                d = tl.load(d_base + idx, mask=mask, other=0.0)
                acc += g * d
            tl.store(h_row_ptr + r, tl.sum(acc, axis=0))

    @triton.jit
    def _radius_tensors(
        mode_ptr,
        row_begin_ptr,
        row_end_ptr,
        h_row_ptr,
        gamma_ptr,
        m_ptr,
        v_ptr,
        k,
        mu,
        bc1,
        bc2,
        BLOCK: tl.constexpr,
    ):
        i = tl.program_id(0)
        mode = tl.load(mode_ptr + i)
        if mode == 1:  # first step of this tensor: radius 1e-8, moments 0
            tl.store(gamma_ptr + i, 1e-8)
            tl.store(m_ptr + i, 0.0)
            tl.store(v_ptr + i, 0.0)
        if mode == 2:
            rb = tl.load(row_begin_ptr + i)
            re = tl.load(row_end_ptr + i)
            offs = tl.arange(0, BLOCK)
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(rb, re, BLOCK):
                idx = start + offs
                acc += tl.load(h_row_ptr + idx, mask=idx < re, other=0.0)
            h = tl.sum(acc, axis=0)
            h = tl.where(h > 0, h * k, h)
            m = tl.load(m_ptr + i) * 0.9 + h * 0.1
            v = tl.load(v_ptr + i) * 0.999 + (h * h) * 0.001
            denom = tl.sqrt_rn(tl.div_rn(v, bc2)) + 1e-8
            gamma = tl.load(gamma_ptr + i) - mu * tl.div_rn(tl.div_rn(m, bc1), denom)
            tl.store(m_ptr + i, m)
            tl.store(v_ptr + i, v)
            tl.store(gamma_ptr + i, gamma)

    @triton.jit
    def _project_rows(
        rows_ptr,
        row_tensor_ptr,
        row_local_ptr,
        row_flat_ptr,
        row_len_ptr,
        mode_ptr,
        param_ptrs,
        anchor_ptr,
        dir_ptr,
        gamma_ptr,
        n_row_ptr,
        BLOCK: tl.constexpr,
        SINGLE: tl.constexpr,
    ):
        r = tl.load(rows_ptr + tl.program_id(0))
        ti = tl.load(row_tensor_ptr + r)
        if tl.load(mode_ptr + ti) != 0:
            length = tl.load(row_len_ptr + r)
            flat = tl.load(row_flat_ptr + r)
            p_base = tl.load(param_ptrs + ti).to(tl.pointer_type(tl.float32)) + tl.load(row_local_ptr + r)
            a_base = anchor_ptr + flat
            d_base = dir_ptr + flat
            offs = tl.arange(0, BLOCK)
            if SINGLE:  # the row fits in one block: read once, keep it in registers
                mask = offs < length
                p = tl.load(p_base + offs, mask=mask, other=0.0)
                c = p - tl.load(a_base + offs, mask=mask, other=0.0)
                n = tl.sum(tl.abs(c), axis=0) + 1e-8
                tl.store(n_row_ptr + r, n)
                gamma = tl.maximum(tl.load(gamma_ptr + ti), 1e-8)
                scale = tl.where(gamma >= n, 1.0, tl.div_rn(gamma, n))
                inv_n = tl.div_rn(n * 0.0 + 1.0, n)
                tl.store(p_base + offs, p + c * (scale - 1.0), mask=mask)
                tl.store(d_base + offs, c * inv_n, mask=mask)
            else:  # a long row: one loop for the norm, one for the projection (mostly from L2)
                acc = tl.zeros([BLOCK], dtype=tl.float32)
                for start in range(0, length, BLOCK):
                    idx = start + offs
                    mask = idx < length
                    p = tl.load(p_base + idx, mask=mask, other=0.0)
                    a = tl.load(a_base + idx, mask=mask, other=0.0)
                    acc += tl.abs(p - a)
                n = tl.sum(acc, axis=0) + 1e-8
                tl.store(n_row_ptr + r, n)
                gamma = tl.maximum(tl.load(gamma_ptr + ti), 1e-8)
                scale = tl.where(gamma >= n, 1.0, tl.div_rn(gamma, n))
                inv_n = tl.div_rn(n * 0.0 + 1.0, n)
                for start in range(0, length, BLOCK):
                    idx = start + offs
                    mask = idx < length
                    p = tl.load(p_base + idx, mask=mask, other=0.0)
                    c = p - tl.load(a_base + idx, mask=mask, other=0.0)
                    tl.store(p_base + idx, p + c * (scale - 1.0), mask=mask)
                    tl.store(d_base + idx, c * inv_n, mask=mask)

    @triton.jit
    def _clip_tensors(mode_ptr, row_begin_ptr, row_end_ptr, n_row_ptr, gamma_ptr, BLOCK: tl.constexpr):
        i = tl.program_id(0)
        if tl.load(mode_ptr + i) != 0:
            rb = tl.load(row_begin_ptr + i)
            re = tl.load(row_end_ptr + i)
            offs = tl.arange(0, BLOCK)
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(rb, re, BLOCK):
                idx = start + offs
                acc = tl.maximum(acc, tl.load(n_row_ptr + idx, mask=idx < re, other=0.0))
            max_n = tl.max(acc, axis=0)
            gamma = tl.minimum(tl.maximum(tl.load(gamma_ptr + i), 1e-8), max_n)
            tl.store(gamma_ptr + i, gamma)


def kernels_available(param: Tensor | None) -> bool:
    """Whether the Triton kernels can run FTP on ``param`` (Triton installed, an fp32 parameter on CUDA)."""
    if not HAS_TRITON or param is None:
        return False
    return param.device.type == "cuda" and param.dtype == torch.float32


def _to_device(values: Tensor, device: torch.device) -> Tensor:
    """Host tensor to ``device`` without a host synchronisation (pinned, asynchronous on CUDA)."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


class FusedLayout:
    """Flat buffers holding the FTP state of ``params`` (one device, one state dtype), and the row tables.

    Building it copies each ``state[p]`` entry into the buffers and puts a view into them back in its place,
    so ``state[p]`` stays the source of truth; :meth:`linked` says whether every entry is still that view.
    """

    def __init__(self, params: list[Tensor], states: list[F.State]) -> None:
        self.device = params[0].device
        self.dtype = states[0][F.ANCHOR].dtype
        self.params, self.states = list(params), list(states)
        self.shapes = [p.shape for p in params]
        self.sizes = [p.numel() for p in params]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self._build_buffers(states)
        self._build_row_tables([p.shape[0] if p.dim() >= 2 else 1 for p in params])
        dev, n = self.device, len(params)
        self.n_row = torch.empty(self.n_rows, device=dev, dtype=self.dtype)
        self.h_row = torch.empty(self.n_rows, device=dev, dtype=self.dtype)
        self.modes = torch.zeros(n, device=dev, dtype=torch.int32)
        self.pointers = torch.zeros(2, n, device=dev, dtype=torch.long)
        self.modes_key: tuple[int, ...] | None = None
        self.param_ptrs, self.grad_ptrs = self.pointers[0], self.pointers[1]
        self.param_key: tuple[int, ...] | None = None
        self.pointer_key: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self.kernel_ok = False  # whether the current pointers were validated for the kernels

    def _build_buffers(self, states: list[F.State]) -> None:
        dev, dtype = self.device, self.dtype
        self.anchor, self.direction = (
            torch.cat([s[key].reshape(-1).to(dev, dtype) for s in states]) for key in (F.ANCHOR, F.DIRECTION)
        )
        self.gamma, self.exp_avg, self.exp_avg_sq = (
            torch.stack([s[key].reshape(()).to(dev, dtype) for s in states])
            for key in (F.GAMMA, F.EXP_AVG, F.EXP_AVG_SQ)
        )
        self.dir_views = [self._view(self.direction, i) for i in range(len(states))]
        self.views: list[tuple[Tensor, ...]] = []
        for i, s in enumerate(states):
            views = (self._view(self.anchor, i), self.dir_views[i], self.gamma[i], self.exp_avg[i])
            views += (self.exp_avg_sq[i],)
            s.update(zip(F.STATE_KEYS, views))
            self.views.append(views)

    def _build_row_tables(self, rows: list[int]) -> None:
        """Rows of every tensor in order (dim 0 of a >= 2-D tensor, else the tensor is one row) and buckets."""
        dev = self.device
        rows_t = torch.tensor(rows, dtype=torch.long)
        lens_t = torch.tensor([size // r if r else 0 for size, r in zip(self.sizes, rows)], dtype=torch.long)
        row_tensor = torch.repeat_interleave(torch.arange(len(rows)), rows_t)
        row_len = lens_t[row_tensor]
        row_end = torch.cumsum(rows_t, 0)
        row_begin = row_end - rows_t
        row_local = (torch.arange(len(row_tensor)) - row_begin[row_tensor]) * row_len
        row_flat = torch.tensor(self.offsets[:-1], dtype=torch.long)[row_tensor] + row_local
        self.n_rows = len(row_tensor)
        self.row_tensor = _to_device(row_tensor.to(torch.int32), dev)
        self.row_local = _to_device(row_local, dev)
        self.row_flat = _to_device(row_flat, dev)
        self.row_len = _to_device(row_len.to(torch.int32), dev)
        self.row_begin = _to_device(row_begin.to(torch.int32), dev)
        self.row_end = _to_device(row_end.to(torch.int32), dev)
        # (row ids, count, BLOCK, num_warps, whether every row fits in one block)
        self.buckets: list[tuple[Tensor, int, int, int, bool]] = []
        lower = 0
        for upper, block, warps in _BUCKETS:  # rows of length 0 go to the last bucket
            sel = row_len > lower if upper is None else (row_len > lower) & (row_len <= upper)
            if upper is None:  # also the empty rows (length 0)
                sel = sel | (row_len == 0)
            ids = torch.nonzero(sel).flatten()
            if len(ids):
                bucket = (_to_device(ids.to(torch.int32), dev), len(ids), block, warps, upper is not None)
                self.buckets.append(bucket)
            lower = upper or 0

    def _view(self, flat: Tensor, i: int) -> Tensor:
        return flat[self.offsets[i] : self.offsets[i + 1]].view(self.shapes[i])

    def linked(self, params: list[Tensor], states: list[F.State]) -> bool:
        """Whether ``params`` are this layout's and every entry of their ``state[p]`` is still the view.

        False after ``load_state_dict`` or a move of ``optimizer.state`` (Lightning's ``optimizer_to``):
        the buffers are then rebuilt from ``state[p]``.
        """
        if len(params) != len(self.params) or any(p is not q for p, q in zip(params, self.params)):
            return False
        keys = F.STATE_KEYS
        return all(s[key] is v for s, views in zip(states, self.views) for key, v in zip(keys, views))


def _kernel_tensors_ok(tensors: list[Tensor | None], device: torch.device) -> bool:
    return all(
        t is None or (t.device == device and t.dtype == torch.float32 and t.is_contiguous()) for t in tensors
    )


class FusedFTPEngine:
    """Runs FTP steps on a :class:`FusedLayout`: a cache of ``state[p]`` built lazily and rebuilt when stale.

    Its interface is :meth:`step` (the groups of :class:`~lightning_reuse.optim._ftp_functional.ProjectedGroup`
    and the base optimizer's ``step``) and :meth:`invalidate`.
    """

    def __init__(self) -> None:
        self.layout: FusedLayout | None = None

    def invalidate(self) -> None:
        """Forget the buffers: the next step rebuilds them from ``state[p]`` (after the state was replaced)."""
        self.layout = None

    def step(self, groups: list[F.ProjectedGroup], base_step: Callable[[], object]) -> bool:
        """One full FTP step (radius, ``base_step()``, projection); False, touching nothing, if it cannot.

        It cannot when a parameter with a gradient has no FTP state yet (its first step: the per-tensor
        paths create the state) or when the parameters with state span several devices or state dtypes.
        The host work per tensor is a few identity checks (this path is meant to be launch-bound at worst).
        """
        params, states, hypers = [], [], []
        for g in groups:
            for p, s in zip(g.params, g.states):
                if F.ANCHOR in s:
                    params.append(p)
                    states.append(s)
                    hypers.append((g.t, g.k, g.mu))
                elif p.grad is not None:
                    return False
        layout = self._layout(params, states)
        if layout is None:
            return False
        grads = [p.grad for p in layout.params]
        modes = tuple([0 if g is None else WARM for g in grads])
        uniform = len(set(hypers)) == 1
        if uniform and self._kernels_usable(layout, grads):
            self._step_triton(layout, modes, hypers[0], base_step)
        else:
            self._step_torch(layout, grads, modes, hypers, base_step)
        return True

    def _layout(self, params: list[Tensor], states: list[F.State]) -> FusedLayout | None:
        layout = self.layout
        if layout is None or not layout.linked(params, states):
            layout = self.layout = None
            if (
                not params
                or len({p.device for p in params}) > 1
                or len({s[F.ANCHOR].dtype for s in states}) > 1
            ):
                return None
            layout = self.layout = FusedLayout(params, states)
        param_key = tuple([p.data_ptr() for p in layout.params])
        if param_key != layout.param_key:  # first step, or the parameters were moved or replaced
            if any(p.device != layout.device for p in layout.params):
                self.layout = None
                return None
            layout.param_key = param_key
        return layout

    @staticmethod
    def _kernels_usable(layout: FusedLayout, grads: list[Tensor | None]) -> bool:
        if not HAS_TRITON or layout.device.type != "cuda" or layout.dtype != torch.float32:
            return False
        key = (layout.param_key or (), tuple([0 if g is None else g.data_ptr() for g in grads]))
        if key != layout.pointer_key:
            layout.pointer_key = key
            layout.kernel_ok = _kernel_tensors_ok(layout.params, layout.device) and _kernel_tensors_ok(
                grads, layout.device
            )
            if layout.kernel_ok:
                layout.pointers.copy_(_to_device(torch.tensor(key, dtype=torch.long), layout.device))
        return layout.kernel_ok

    # --- Triton ------------------------------------------------------------------------------------------
    def _step_triton(
        self,
        layout: FusedLayout,
        modes: tuple[int, ...],
        hyper: tuple[int, float, float],
        base_step: Callable[[], object],
    ) -> None:  # pragma: no cover
        if modes != layout.modes_key:
            layout.modes_key = modes
            layout.modes.copy_(_to_device(torch.tensor(modes, dtype=torch.int32), layout.device))
        t, k, mu = hyper
        if WARM in modes:
            self._launch_hgrad(layout)
        bc1, bc2 = 1.0 - F.RADIUS_BETAS[0] ** t, 1.0 - F.RADIUS_BETAS[1] ** t
        n_tensors = len(layout.params)
        _radius_tensors[(n_tensors,)](
            layout.modes,
            layout.row_begin,
            layout.row_end,
            layout.h_row,
            layout.gamma,
            layout.exp_avg,
            layout.exp_avg_sq,
            float(k),
            float(mu),
            bc1,
            bc2,
            BLOCK=_TENSOR_BLOCK,
            num_warps=4,
        )
        base_step()
        self._launch_project(layout)
        _clip_tensors[(n_tensors,)](
            layout.modes,
            layout.row_begin,
            layout.row_end,
            layout.n_row,
            layout.gamma,
            BLOCK=_TENSOR_BLOCK,
            num_warps=4,
        )

    @staticmethod
    def _launch_hgrad(layout: FusedLayout) -> None:  # pragma: no cover
        for ids, count, block, warps, _ in layout.buckets:
            _hgrad_rows[(count,)](
                ids,
                layout.row_tensor,
                layout.row_local,
                layout.row_flat,
                layout.row_len,
                layout.modes,
                layout.grad_ptrs,
                layout.direction,
                layout.h_row,
                BLOCK=block,
                num_warps=warps,
            )

    @staticmethod
    def _launch_project(layout: FusedLayout) -> None:  # pragma: no cover
        for ids, count, block, warps, single in layout.buckets:
            _project_rows[(count,)](
                ids,
                layout.row_tensor,
                layout.row_local,
                layout.row_flat,
                layout.row_len,
                layout.modes,
                layout.param_ptrs,
                layout.anchor,
                layout.direction,
                layout.gamma,
                layout.n_row,
                BLOCK=block,
                SINGLE=single,
                num_warps=warps,
            )

    # --- torch fallback ----------------------------------------------------------------------------------
    def _step_torch(
        self,
        layout: FusedLayout,
        grads: list[Tensor | None],
        modes: tuple[int, ...],
        hypers: list[tuple[int, float, float]],
        base_step: Callable[[], object],
    ) -> None:
        states = layout.states
        by_hyper: dict[tuple[int, float, float], list[int]] = {}
        for i, mode in enumerate(modes):
            if mode == WARM:
                by_hyper.setdefault(hypers[i], []).append(i)
        for (t, k, mu), warm in by_hyper.items():  # one radius update per (t, k, mu): per-group values
            F.ftp_radius_foreach([grads[i] for i in warm], [states[i] for i in warm], t=t, k=k, mu=mu)
        base_step()
        active = [i for i, mode in enumerate(modes) if mode]
        if active:
            _project_fallback(layout, active)


def _project_fallback(layout: FusedLayout, active: list[int]) -> None:
    """The projection of the Triton kernels (clip after projecting) with ``_foreach`` ops on the views."""
    states = layout.states
    params = [layout.params[i] for i in active]
    anchors = [states[i][F.ANCHOR] for i in active]
    gammas = [states[i][F.GAMMA] for i in active]
    src = [p if p.dtype == a.dtype else p.to(a.dtype) for p, a in zip(params, anchors)]
    c = torch._foreach_sub(src, anchors)
    n = [F._row_l1(x) for x in c]
    torch._foreach_add_(n, F.NORM_EPS)
    for p, a, ci, ni, g in zip(params, anchors, c, n, gammas):
        # the radius is clipped below after the projection: min(max(g, 1e-8) / n, 1) is the same scale
        scale = torch.clamp(torch.clamp(g, min=F.GAMMA_MIN) / ni, max=1.0)
        if p.dtype == a.dtype:
            p.addcmul_(ci, scale - 1.0)
        else:
            p.copy_(a + scale * ci)
    torch._foreach_mul_(c, torch._foreach_reciprocal(n))
    torch._foreach_copy_([layout.dir_views[i] for i in active], c)
    torch._foreach_clamp_min_(gammas, F.GAMMA_MIN)
    torch._foreach_minimum_(gammas, torch._foreach_max(n))
