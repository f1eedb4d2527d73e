"""The fused FTP path: state in persistent flat buffers, Triton row kernels around the base step on CUDA.

Tian et al., "Fast Trainable Projection for Robust Fine-Tuning", NeurIPS 2023. Same maths as
:mod:`lightning_reuse.optim._ftp_functional`; what changes is where the state lives and how many passes a
step makes over memory:

- anchors and previous directions of all projected tensors live end to end in two flat buffers, radii and
  radius moments in three ``[T]`` vectors: a cache of the optimizer's ``state[p]``, whose ``ftp_*`` entries
  are *views* into the buffers, so ``state[p]`` stays the source of truth for ``state_dict``, resume and
  the other paths. When an entry is replaced from outside (``load_state_dict``, Lightning moving
  ``optimizer.state``), the buffers are rebuilt from ``state[p]``;
- before the base step, one kernel computes each 4096-element chunk's share of ``h = sum(g_t * c_prev /
  n_prev)`` (reading the gradients in place through a table of data pointers: nothing is concatenated), and
  one per-tensor kernel sums them and runs the radius Adam;
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

Both Triton paths read FTP's step counter from the device (``t_dev``, advanced by the last kernel): nothing on
the host changes from step to step, so a step can be captured in a CUDA graph and replayed (build the base
with ``capturable=True``); ``state_dict()`` copies the device counter back into ``ftp_step``.

**One pass with an Adam base (the default where it applies; ``engine.one_pass = False`` turns it off).** When
the base optimizer is ``torch.optim.Adam`` or ``AdamW`` (no ``amsgrad``/``maximize``/``differentiable``, float
``lr``, one ``betas``/``eps`` for all groups, its ``step`` counters on the device: ``fused=True`` or
``capturable=True``), the base step is not called for the projected tensors: one kernel runs Adam's update
(torch's formula with fast square root and division by default, ``exact_math`` for the IEEE-rounded ones; its
moments and step counters updated in place) and the projection while each row is in registers, 44 bytes per
element in all (floor about 1.6x fused AdamW) instead of 52. Excluded parameters (and any other tensor the
kernel does not take) get the base optimizer's own step, with the projected gradients hidden. On one H100:
1.68x fused AdamW on ViT-B/16 and 1.47x on ResNet-50 (CUDA-graph replay; the two passes: 1.85x / 1.74x;
docs/ftp.md). With ``direction_dtype=torch.bfloat16`` the direction buffer is bf16 (the kernels round to
nearest even, bit for bit as torch): 40 bytes per element.

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

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_reuse.optim import _ftp_functional as F
from lightning_reuse.optim import _ftp_kernels as K
from lightning_reuse.optim._ftp_kernels import CHUNK, HAS_TRITON, INTERPRET, WARM

__all__ = ["HAS_TRITON", "FusedFTPEngine", "kernels_available"]

# row-length buckets of the projection pass: (largest row length, BLOCK, num_warps); the last loops
_BUCKETS = ((1024, 1024, 4), (4096, 4096, 8), (8192, 8192, 16), (None, 4096, 8))
# ... of the one-pass Adam kernel: (largest row length, BLOCK, rows per program, num_warps); the last loops
# (measured on one H100, docs/ftp.md: rows of up to 1024 one per program, not four to a 2-D block; 4 warps,
# not 8, for rows of 1025-4096)
_ADAM_BUCKETS = (
    (128, 128, 16, 4),
    (512, 512, 1, 4),
    (1024, 1024, 1, 4),
    (4096, 4096, 1, 4),
    (8192, 8192, 1, 16),
)
_ADAM_LONG = (2048, 8)
_TENSOR_BLOCK = 1024
# where kernels may run: CUDA, and CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, for debugging)
_KERNEL_DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)


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


def _segments(counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For per-tensor item counts: the tensor of each item, and each tensor's [begin, end) in item order."""
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
    end = torch.cumsum(counts, 0)
    return owner, end - counts, end


class FusedLayout:
    """Flat buffers holding the FTP state of ``params`` (one device, one state dtype), and the row tables.

    Building it copies each ``state[p]`` entry into the buffers and puts a view into them back in its place,
    so ``state[p]`` stays the source of truth; :meth:`linked` says whether every entry is still that view.
    """

    def __init__(
        self, params: list[Tensor], states: list[F.State], direction_dtype: torch.dtype | None = None
    ) -> None:
        self.device = params[0].device
        self.dtype = states[0][F.ANCHOR].dtype
        self.direction_dtype = direction_dtype or self.dtype  # the kernels store into it (rounding once)
        self.params, self.states = list(params), list(states)
        self.shapes = [p.shape for p in params]
        self.sizes = [p.numel() for p in params]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self._build_buffers(states)
        self._build_row_tables([p.shape[0] if p.dim() >= 2 else 1 for p in params])
        self._build_chunk_tables()
        dev, n = self.device, len(params)
        self.n_row = torch.empty(self.n_rows, device=dev, dtype=self.dtype)
        self.modes = torch.zeros(n, device=dev, dtype=torch.int32)
        # data pointers: parameters, gradients, and with an Adam base its exp_avg, exp_avg_sq and step
        self.pointers = torch.zeros(5, n, device=dev, dtype=torch.long)
        self.modes_key: tuple[int, ...] | None = None
        self.param_ptrs, self.grad_ptrs = self.pointers[0], self.pointers[1]
        self.param_key: tuple[int, ...] | None = None
        self.pointer_key: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self.kernel_ok = False  # whether the current pointers were validated for the kernels
        self.adam: AdamPlan | None = None  # the one-pass Adam kernel's tables, built on first use
        self.t_dev = torch.zeros(1, device=dev, dtype=torch.float32)  # FTP's step counter, for the kernels
        self.t_seen: int | None = None  # the host counter last synchronised with t_dev

    def _build_buffers(self, states: list[F.State]) -> None:
        dev, dtype = self.device, self.dtype
        self.anchor, self.direction = (
            torch.cat([s[key].reshape(-1).to(dev, kind) for s in states])
            for key, kind in ((F.ANCHOR, dtype), (F.DIRECTION, self.direction_dtype))
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
        row_tensor, row_begin, row_end = _segments(rows_t)
        row_len = lens_t[row_tensor]
        row_local = (torch.arange(len(row_tensor)) - row_begin[row_tensor]) * row_len
        row_flat = torch.tensor(self.offsets[:-1], dtype=torch.long)[row_tensor] + row_local
        self.n_rows = len(row_tensor)
        self.row_len_host = row_len
        self.row_tensor = _to_device(row_tensor.to(torch.int32), dev)
        self.row_local = _to_device(row_local, dev)
        self.row_flat = _to_device(row_flat, dev)
        self.row_len = _to_device(row_len.to(torch.int32), dev)
        self.row_begin = _to_device(row_begin.to(torch.int32), dev)
        self.row_end = _to_device(row_end.to(torch.int32), dev)
        # (row ids, count, BLOCK, num_warps, whether every row fits in one block)
        self.buckets: list[tuple[Tensor, int, int, int, bool]] = []
        for ids, (upper, block, warps) in zip(self.bucket_rows([b[0] for b in _BUCKETS]), _BUCKETS):
            if len(ids):
                self.buckets.append(
                    (_to_device(ids.to(torch.int32), dev), len(ids), block, warps, upper is not None)
                )

    def bucket_rows(self, uppers: list[int | None]) -> list[Tensor]:
        """Row ids by row length, one bucket per upper bound (None: every longer row, and empty rows)."""
        out, lower, row_len = [], 0, self.row_len_host
        for upper in uppers:
            sel = (
                (row_len > lower) | (row_len == 0)
                if upper is None
                else (row_len > lower) & (row_len <= upper)
            )
            out.append(torch.nonzero(sel).flatten())
            lower = upper or 0
        return out

    def _build_chunk_tables(self) -> None:
        """Fixed-size chunks of every tensor for the hyper-gradient pre-pass (rows do not matter there)."""
        sizes = torch.tensor(self.sizes, dtype=torch.long)
        chunk_tensor, begin, end = _segments((sizes + CHUNK - 1) // CHUNK)
        chunk_local = (torch.arange(len(chunk_tensor)) - begin[chunk_tensor]) * CHUNK
        chunk_flat = torch.tensor(self.offsets[:-1], dtype=torch.long)[chunk_tensor] + chunk_local
        dev = self.device
        self.n_chunks = len(chunk_tensor)
        self.chunk_tensor = _to_device(chunk_tensor.to(torch.int32), dev)
        self.chunk_local = _to_device(chunk_local, dev)
        self.chunk_flat = _to_device(chunk_flat, dev)
        self.chunk_len = _to_device((sizes[chunk_tensor] - chunk_local).clamp(max=CHUNK).to(torch.int32), dev)
        self.chunk_begin = _to_device(begin.to(torch.int32), dev)
        self.chunk_end = _to_device(end.to(torch.int32), dev)
        self.h_chunk = torch.zeros(max(self.n_chunks, 1), device=dev, dtype=self.dtype)

    def _view(self, flat: Tensor, i: int) -> Tensor:
        return flat[self.offsets[i] : self.offsets[i + 1]].view(self.shapes[i])

    def sync_device(self, t: int) -> None:
        """Before a kernel step ``t``: reset the device counter unless it follows on (no host read)."""
        if self.t_seen != t - 1:  # first kernel step here, a load, or a step on another path in between
            self.t_dev.fill_(float(t - 1))
        self.t_seen = t

    def sync_host(self, groups: list[dict]) -> None:
        """Copy the device counter back into the groups' ``ftp_step`` (after CUDA-graph replays; a host read)."""
        if self.t_seen is None:
            return
        t = int(self.t_dev.item())
        if t != self.t_seen:
            for group in groups:
                group["ftp_step"] = t
            self.t_seen = t

    def linked(self, params: list[Tensor], states: list[F.State]) -> bool:
        """Whether ``params`` are this layout's and every entry of their ``state[p]`` is still the view.

        False after ``load_state_dict`` or a move of ``optimizer.state`` (Lightning's ``optimizer_to``):
        the buffers are then rebuilt from ``state[p]``.
        """
        if len(params) != len(self.params) or any(p is not q for p, q in zip(params, self.params)):
            return False
        keys = F.STATE_KEYS
        return all(s[key] is v for s, views in zip(states, self.views) for key, v in zip(keys, views))


_ADAM_STATE = ("exp_avg", "exp_avg_sq", "step")


class AdamPlan:
    """The one-pass Adam kernel's side of a layout: hyper-parameter tables, FTP's device step, buckets."""

    def __init__(
        self, layout: FusedLayout, base: torch.optim.Optimizer, buckets: tuple = _ADAM_BUCKETS
    ) -> None:
        dev = layout.device
        index = {id(p): i for i, p in enumerate(layout.params)}
        self.group_of = [0] * len(layout.params)
        self.others: list[Tensor] = []  # parameters the base optimizer steps itself (excluded, no FTP state)
        for gi, group in enumerate(base.param_groups):
            for p in group["params"]:
                if id(p) in index:
                    self.group_of[index[id(p)]] = gi
                else:
                    self.others.append(p)
        self.hyper = torch.zeros(2, len(layout.params), device=dev, dtype=torch.float32)  # lr, weight decay
        self.hyper_key: tuple[tuple[float, float], ...] | None = None
        self.state_key: tuple[int, ...] | None = None
        self.state_ok = False
        # (row ids, count, BLOCK, rows per program, num_warps); rows per program None: the looping long rows
        specs = [*buckets, (None, _ADAM_LONG[0], None, _ADAM_LONG[1])]
        self.buckets: list[tuple[Tensor, int, int, int | None, int]] = [
            (_to_device(ids.to(torch.int32), dev), len(ids), block, rows, warps)
            for ids, (_, block, rows, warps) in zip(layout.bucket_rows([spec[0] for spec in specs]), specs)
            if len(ids)
        ]

    def refresh(self, layout: FusedLayout, base: torch.optim.Optimizer) -> bool:
        """Per step, on the host only: pointers of the base's state and the lr / weight decay tables."""
        states = [base.state.get(p, {}) for p in layout.params]
        try:
            tensors = [s[key] for s in states for key in _ADAM_STATE]
        except KeyError:
            return False
        key = tuple([x.data_ptr() for x in tensors])
        if key != self.state_key:
            self.state_key = key
            self.state_ok = all(
                isinstance(x, Tensor)
                and x.device == layout.device
                and x.dtype == torch.float32
                and x.is_contiguous()
                for x in tensors
            ) and all(
                s["exp_avg"].shape == p.shape and s["step"].numel() == 1
                for s, p in zip(states, layout.params)
            )
            if self.state_ok:
                table = torch.tensor(key, dtype=torch.long).view(len(states), 3).T.contiguous()
                layout.pointers[2:].copy_(_to_device(table, layout.device))
        if not self.state_ok:
            return False
        hyper = tuple([(float(g["lr"]), float(g["weight_decay"])) for g in base.param_groups])
        if hyper != self.hyper_key:
            self.hyper_key = hyper
            table = torch.tensor([hyper[gi] for gi in self.group_of], dtype=torch.float32).T.contiguous()
            self.hyper.copy_(_to_device(table, layout.device))
        return True


def _adam_base(base: torch.optim.Optimizer) -> tuple[float, float, float, bool] | None:
    """``(beta1, beta2, eps, decoupled)`` when the one-pass kernel can replace ``base``'s step, else None."""
    if type(base) not in (torch.optim.Adam, torch.optim.AdamW):
        return None
    seen = set()
    for g in base.param_groups:
        if g.get("amsgrad") or g.get("maximize") or g.get("differentiable") or isinstance(g["lr"], Tensor):
            return None
        if not (g.get("fused") or g.get("capturable")):  # step counters on the host
            return None
        beta1, beta2 = g["betas"]
        if isinstance(beta1, Tensor) or isinstance(beta2, Tensor) or not (0 < beta1 < 1 and 0 < beta2 < 1):
            return None
        decoupled = bool(g.get("decoupled_weight_decay", type(base) is torch.optim.AdamW))
        seen.add((float(beta1), float(beta2), float(g["eps"]), decoupled))
    return next(iter(seen)) if len(seen) == 1 else None


def _kernel_tensors_ok(tensors: list[Tensor | None], device: torch.device) -> bool:
    return all(
        t is None or (t.device == device and t.dtype == torch.float32 and t.is_contiguous()) for t in tensors
    )


class FusedFTPEngine:
    """Runs FTP steps on a :class:`FusedLayout`: a cache of ``state[p]`` built lazily and rebuilt when stale.

    Its interface is :meth:`step` (the groups of :class:`~lightning_reuse.optim._ftp_functional.ProjectedGroup`
    and the base optimizer), :meth:`invalidate` and :meth:`sync_host`. ``one_pass`` (default True) runs
    the one-pass Adam kernel where it applies (an Adam/AdamW base with its step counters on the device, see
    :func:`_adam_base`; else the two passes); ``exact_math`` (default False: the fast square root and division,
    within a few ulp) and ``adam_buckets`` tune it (docs/ftp.md has the measurements).
    """

    def __init__(self, direction_dtype: torch.dtype | None = None) -> None:
        self.layout: FusedLayout | None = None
        self.one_pass = True  # measured faster than the two passes on both sets on one H100 (docs/ftp.md)
        self.exact_math = False  # True: IEEE sqrt and divisions as torch's kernel (slower, docs/ftp.md)
        self.adam_buckets = _ADAM_BUCKETS
        self.direction_dtype = direction_dtype  # FTP's ``direction_dtype``

    def invalidate(self) -> None:
        """Forget the buffers: the next step rebuilds them from ``state[p]`` (after the state was replaced)."""
        self.layout = None

    def sync_host(self, groups: list[dict]) -> None:
        """Bring ``ftp_step`` up to date with the kernels' device step counter (before a save)."""
        if self.layout is not None:
            self.layout.sync_host(groups)

    def step(self, groups: list[F.ProjectedGroup], base: torch.optim.Optimizer) -> bool:
        """One full FTP step (radius, the base step, projection); False, touching nothing, if it cannot.

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
            layout.sync_device(hypers[0][0])
            adam = _adam_base(base) if self.one_pass else None
            if adam is not None:
                if layout.adam is None:
                    layout.adam = AdamPlan(layout, base, self.adam_buckets)
                if layout.adam.refresh(layout, base):
                    self._step_adam(layout, modes, hypers[0], adam, base)
                    return True
            self._step_triton(layout, modes, hypers[0], base.step)
        else:
            self._step_torch(layout, grads, modes, hypers, base.step)
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
            layout = self.layout = FusedLayout(params, states, self.direction_dtype)
        param_key = tuple([p.data_ptr() for p in layout.params])
        if param_key != layout.param_key:  # first step, or the parameters were moved or replaced
            if any(p.device != layout.device for p in layout.params):
                self.layout = None
                return None
            layout.param_key = param_key
        return layout

    @staticmethod
    def _kernels_usable(layout: FusedLayout, grads: list[Tensor | None]) -> bool:
        if not HAS_TRITON or layout.device.type not in _KERNEL_DEVICES or layout.dtype != torch.float32:
            return False
        key = (layout.param_key or (), tuple([0 if g is None else g.data_ptr() for g in grads]))
        if key != layout.pointer_key:
            layout.pointer_key = key
            layout.kernel_ok = _kernel_tensors_ok(layout.params, layout.device) and _kernel_tensors_ok(
                grads, layout.device
            )
            if layout.kernel_ok:
                layout.pointers[:2].copy_(_to_device(torch.tensor(key, dtype=torch.long), layout.device))
        return layout.kernel_ok

    def _set_modes(self, layout: FusedLayout, modes: tuple[int, ...]) -> None:
        if modes != layout.modes_key:
            layout.modes_key = modes
            layout.modes.copy_(_to_device(torch.tensor(modes, dtype=torch.int32), layout.device))

    # --- Triton ------------------------------------------------------------------------------------------
    def _step_triton(
        self,
        layout: FusedLayout,
        modes: tuple[int, ...],
        hyper: tuple[int, float, float],
        base_step: Callable[[], object],
    ) -> None:  # pragma: no cover
        self._set_modes(layout, modes)
        _, k, mu = hyper
        self._launch_radius(layout, modes, k, mu, advance_steps=False)
        base_step()
        for ids, count, block, warps, single in layout.buckets:
            K._project_rows[(count,)](
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
                DIR_BF16=layout.direction.dtype == torch.bfloat16,
                num_warps=warps,
            )
        self._launch_clip(layout)

    def _step_adam(
        self,
        layout: FusedLayout,
        modes: tuple[int, ...],
        hyper: tuple[int, float, float],
        adam_hyper: tuple[float, float, float, bool],
        base: torch.optim.Optimizer,
    ) -> None:  # pragma: no cover
        """Base step for the other parameters (projected gradients hidden), then the one-pass kernels."""
        plan = layout.adam
        assert plan is not None
        if any(p.grad is not None for p in plan.others):
            hidden = [(p, p.grad) for p in layout.params if p.grad is not None]
            for p, _ in hidden:
                p.grad = None
            try:
                base.step()
            finally:
                for p, grad in hidden:
                    p.grad = grad
        self._set_modes(layout, modes)
        _, k, mu = hyper
        self._launch_radius(layout, modes, k, mu, advance_steps=True)
        beta1, beta2, eps, decoupled = adam_hyper
        common = (
            layout.row_tensor,
            layout.row_local,
            layout.row_flat,
            layout.row_len,
            layout.modes,
            layout.pointers[0],
            layout.pointers[1],
            layout.pointers[2],
            layout.pointers[3],
            layout.pointers[4],
            plan.hyper[0],
            plan.hyper[1],
            layout.anchor,
            layout.direction,
            layout.gamma,
            layout.n_row,
            beta1,
            beta2,
            math.log(beta1),
            math.log(beta2),
            eps,
        )
        dir_bf16 = layout.direction.dtype == torch.bfloat16
        for ids, count, block, rows, warps in plan.buckets:
            if rows is None or rows == 1:  # one row per program: in registers, or looping (rows None)
                K._adam_project_row[(count,)](
                    ids,
                    *common,
                    DECOUPLED=decoupled,
                    EXACT=self.exact_math,
                    BLOCK=block,
                    SINGLE=rows is not None,
                    DIR_BF16=dir_bf16,
                    num_warps=warps,
                )
            else:
                grid = ((count + rows - 1) // rows,)
                K._adam_project_rows[grid](
                    ids,
                    count,
                    *common,
                    DECOUPLED=decoupled,
                    EXACT=self.exact_math,
                    ROWS=rows,
                    BLOCK=block,
                    DIR_BF16=dir_bf16,
                    num_warps=warps,
                )
        self._launch_clip(layout)

    @staticmethod
    def _launch_radius(
        layout: FusedLayout, modes: tuple[int, ...], k: float, mu: float, advance_steps: bool
    ) -> None:  # pragma: no cover
        if WARM in modes and layout.n_chunks:
            K._hgrad_chunks[(layout.n_chunks,)](
                layout.chunk_tensor,
                layout.chunk_local,
                layout.chunk_flat,
                layout.chunk_len,
                layout.modes,
                layout.grad_ptrs,
                layout.direction,
                layout.h_chunk,
                BLOCK=CHUNK,
                num_warps=8,
            )
        K._radius_tensors[(len(layout.params),)](
            layout.modes,
            layout.chunk_begin,
            layout.chunk_end,
            layout.h_chunk,
            layout.gamma,
            layout.exp_avg,
            layout.exp_avg_sq,
            float(k),
            float(mu),
            layout.t_dev,
            layout.pointers[4],
            BLOCK=_TENSOR_BLOCK,
            ADVANCE_STEPS=advance_steps,
            num_warps=4,
        )

    @staticmethod
    def _launch_clip(layout: FusedLayout) -> None:  # pragma: no cover
        K._clip_tensors[(len(layout.params),)](
            layout.modes,
            layout.row_begin,
            layout.row_end,
            layout.n_row,
            layout.gamma,
            layout.t_dev,
            BLOCK=_TENSOR_BLOCK,
            num_warps=4,
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
