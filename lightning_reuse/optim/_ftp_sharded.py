"""FTP on sharded parameters (FSDP2 ``fully_shard``, DTensor): local shards and one all-reduce per step.

Same maths as :mod:`lightning_reuse.optim._ftp_functional`; what changes is where the sums are taken.
FSDP2 shards every parameter on dim 0 (``Shard(0)``), and FTP's rows are dim 0, so:

- a matrix's (or conv kernel's) row L1 norms are local to the rank that holds the row: no communication;
- a 1-D tensor (bias, norm weight) is one row that spans the ranks: its L1 norm is a cross-rank sum;
- every per-tensor scalar needs the whole tensor: the radius hyper-gradient ``h = sum(g_t * c_prev / n_prev)``
  is a cross-rank sum, and the clip ``gamma <= max(n)`` a cross-rank max of the row norms.

All of these are packed into one flat vector and reduced by **one** ``all_reduce(SUM)`` per step over the
shard group: the local parts of ``h`` (one float per tensor that has FTP state), the local L1 sums of the
sharded 1-D tensors (one float each), and the local row-norm maxima of the sharded matrices, each rank
writing its own slot of a ``world_size x tensors`` block (a max through a sum: the other slots are 0, and
norms are >= 1e-8 > 0), i.e. ``h + one_row + world_size * matrices`` floats per step. The radius Adam moves
after the base step, once the sums are known; ``h`` itself is taken from the raw gradient before the base
step, so the result is the same as the single-process order. Ranks with an empty shard (uneven dim 0) join
the reduction with zeros, so every rank holds the same radius and radius-Adam state. ``Replicate``
placements (and plain tensors beside DTensors) hold whole tensors and are computed locally.

The anchors and previous directions are DTensors with the parameter's placement (taken after sharding), so
``torch.distributed.checkpoint`` and ``get/set_optimizer_state_dict`` save and load them sharded; the
radius and its moments are plain 0-D tensors, identical on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_reuse.optim import _ftp_functional as F

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - torch without DTensor
    DTensor = Replicate = Shard = None  # type: ignore[assignment,misc]

__all__ = ["check_shardable", "is_dtensor", "sharded_step"]

FSDP2_HINT = (
    "HINT: shard with FSDP2 (`torch.distributed.fsdp.fully_shard`, Lightning's `ModelParallelStrategy`), "
    "which keeps each parameter's shape and shards dim 0, and build the optimizer after sharding."
)


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (a parameter sharded by FSDP2 or tensor parallelism)."""
    return DTensor is not None and isinstance(t, DTensor)


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view: writing it writes the parameter), or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def _shard_dim(p: Tensor) -> int | None:
    """The mesh dim over which ``p`` is ``Shard(0)``, or None when it is whole on every rank."""
    if not is_dtensor(p):
        return None
    dims = [i for i, pl in enumerate(p.placements) if not isinstance(pl, Replicate)]
    return dims[0] if dims else None


def _describe(p: Tensor, name: str | None) -> str:
    return f"`{name}`" if name else f"a parameter of shape {list(p.shape)}"


def check_shardable(params: Sequence[Tensor], names: dict[int, str], implementation: str) -> None:
    """Refuse what FTP cannot project: FSDP1 flat parameters, DeepSpeed ZeRO partitions, other placements.

    Raises:
        ValueError: a parameter is an FSDP1 flat parameter or a DeepSpeed partition; a DTensor parameter
            has a placement other than ``Shard(0)`` / ``Replicate`` (tensor parallel ``Shard(1)``,
            ``Partial``), is sharded over more than one mesh dim or over another group than the others;
            or ``implementation`` is ``"flat"``/``"fused"`` with DTensor parameters.
    """
    groups: set[tuple[int, ...]] = set()  # the ranks of each shard group (each fully_shard has its mesh)
    for p in params:
        what = _describe(p, names.get(id(p)))
        if getattr(p, "_is_flat_param", False) or getattr(p, "_fsdp_flattened", False):
            raise ValueError(
                f"FTP cannot project {what}: it is an FSDP1 (`FullyShardedDataParallel`) flat parameter, "
                f"whose rows are flattened away. {FSDP2_HINT}"
            )
        if hasattr(p, "ds_id") or hasattr(p, "ds_numel"):
            raise ValueError(
                f"FTP cannot project {what}: it is a DeepSpeed ZeRO partition, whose rows are flattened "
                f"away (not verified with FTP). {FSDP2_HINT}"
            )
        if not is_dtensor(p):
            continue
        bad = [
            pl for pl in p.placements if not (isinstance(pl, Replicate) or type(pl) is Shard and pl.dim == 0)
        ]
        sharded = [i for i, pl in enumerate(p.placements) if not isinstance(pl, Replicate)]
        if bad or len(sharded) > 1:
            raise ValueError(
                f"FTP cannot project {what}: its placements are {tuple(p.placements)}; FTP's rows are dim 0, "
                "so it takes `Shard(0)` on one mesh dim (FSDP2) and `Replicate`, not tensor parallel "
                f"`Shard(1)`, `Partial` or a dim sharded twice. HINT: exclude it (`exclude=[...]`) or shard "
                "it with `fully_shard` only."
            )
        if sharded:
            groups.add(tuple(dist.get_process_group_ranks(p.device_mesh.get_group(sharded[0]))))
    if len(groups) > 1:
        raise ValueError(
            "FTP got parameters sharded over different groups of ranks; its one all-reduce per step needs "
            "one shard group. HINT: build one optimizer per mesh, or shard on one mesh."
        )
    if implementation in ("flat", "fused") and any(is_dtensor(p) for p in params):
        raise ValueError(
            f"Invalid `implementation`: {implementation!r} does not take sharded (DTensor) parameters; they "
            "run the foreach path on the local shards. HINT: leave implementation='auto' (or 'foreach')."
        )


def local_hyper_gradients(grads: list[Tensor], states: list[F.State]) -> list[Tensor]:
    """Each tensor's local share of ``h = sum(g_t * c_prev / n_prev)`` (0-D; before the base step)."""
    out = []
    for g, s in zip(grads, states):
        d, dtype = _local(s[F.DIRECTION]), s[F.ANCHOR].dtype
        out.append(torch.dot(_local(g).reshape(-1).to(dtype), d.reshape(-1).to(dtype)))
    return out


def _group_of(params: list[Tensor]) -> Any:
    for p in params:
        dim = _shard_dim(p)
        if dim is not None:
            return p.device_mesh.get_group(dim)
    return None


def init_sharded_state(param: Tensor, anchor: Tensor, direction_dtype: torch.dtype | None = None) -> F.State:
    """:func:`~lightning_reuse.optim._ftp_functional.init_state` plus a zero direction of the anchor's placement
    (in ``direction_dtype`` if given, else the anchor's dtype)."""
    state = F.init_state(param, anchor)
    state[F.DIRECTION] = torch.zeros_like(state[F.ANCHOR], dtype=direction_dtype)
    return state


def sharded_step(
    groups: list[F.ProjectedGroup],
    base_step: Callable[[], object],
    new_state: Callable[[Tensor], F.State],
    *,
    move_params: bool = True,
) -> None:
    """One FTP step on local shards: local ``h`` shares, the base step, one all-reduce, radius Adam, projection.

    ``new_state(p)`` returns a parameter's fresh state at its first step (after the base step, as the other
    paths). ``move_params=False`` creates and updates the state without writing the parameters.
    """
    warm = [
        (g, p, s) for g in groups for p, s in zip(g.params, g.states) if p.grad is not None and F.ANCHOR in s
    ]
    h_local = local_hyper_gradients([p.grad for _, p, _ in warm], [s for _, _, s in warm])
    base_step()
    active = [(p, s) for g in groups for p, s in zip(g.params, g.states) if p.grad is not None]
    for p, s in active:
        if F.ANCHOR not in s:
            s.update(new_state(p))
    if not active:
        return
    params, states = [p for p, _ in active], [s for _, s in active]
    c = [_local(p).to(s[F.ANCHOR].dtype) - _local(s[F.ANCHOR]) for p, s in active]
    rows = [F._row_l1(x) for x in c]  # local row sums; the local part of the sum for a sharded 1-D tensor
    warm_sharded = [_shard_dim(p) is not None for _, p, _ in warm]
    h, n, max_n = _reduce(params, c, rows, h_local, warm_sharded)
    for g in groups:
        idx = [i for i, (gw, _, _) in enumerate(warm) if gw is g]
        F.radius_adam_foreach([h[i] for i in idx], [warm[i][2] for i in idx], t=g.t, k=g.k, mu=g.mu)
    _project(params, states, c, n, max_n, move_params)


def _reduce(
    params: list[Tensor], c: list[Tensor], rows: list[Tensor], h_local: list[Tensor], warm_sharded: list[bool]
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Global ``h``, row norms ``n`` (+1e-8) and their maxima, through one ``all_reduce(SUM)`` (see the module)."""
    sharded = [_shard_dim(p) is not None for p in params]
    one_row = [i for i, x in enumerate(c) if sharded[i] and x.dim() <= 1]
    matrices = [i for i, x in enumerate(c) if sharded[i] and x.dim() >= 2]
    group = _group_of(params)
    dtype = c[0].dtype
    for x in c[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    zero = torch.zeros((), dtype=dtype, device=c[0].device)
    local_max = [r.amax() if r.numel() else zero for r in rows]
    n_h = sum(warm_sharded)
    if group is not None:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        slots = torch.zeros(world, len(matrices), dtype=dtype, device=zero.device)
        if matrices:
            slots[rank] = torch.stack([local_max[i].to(dtype) for i in matrices])
        parts = [x.to(dtype).reshape(1) for x, s in zip(h_local, warm_sharded) if s]
        parts += [rows[i].to(dtype).reshape(1) for i in one_row] + [slots.reshape(-1)]
        buffer = torch.cat(parts)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)  # the one collective of the step
        h_sum = iter(buffer[:n_h].unbind(0))
        h = [next(h_sum) if s else x for x, s in zip(h_local, warm_sharded)]
        for j, i in enumerate(one_row):
            rows[i] = buffer[n_h + j].to(c[i].dtype).reshape(rows[i].shape)
            local_max[i] = rows[i].reshape(())
        maxima = buffer[n_h + len(one_row) :].reshape(world, len(matrices)).amax(0)
        for j, i in enumerate(matrices):
            local_max[i] = maxima[j].to(c[i].dtype)
    else:
        h = h_local
    n = [r + F.NORM_EPS for r in rows]
    return h, n, [m + F.NORM_EPS for m in local_max]


def _project(
    params: list[Tensor],
    states: list[F.State],
    c: list[Tensor],
    n: list[Tensor],
    max_n: list[Tensor],
    move_params: bool,
) -> None:
    """Clip each radius to ``[1e-8, max(n)]``, project the local shards, remember ``c / n`` (spec steps 3-6)."""
    gamma = [s[F.GAMMA] for s in states]
    torch._foreach_clamp_min_(gamma, F.GAMMA_MIN)
    torch._foreach_minimum_(gamma, max_n)
    inv_n = torch._foreach_reciprocal(n)
    scale = torch._foreach_mul(inv_n, gamma)
    torch._foreach_clamp_max_(scale, 1.0)  # gamma, n > 0, so the lower clamp at 0 is a no-op
    for p, s, x, sc, inv in zip(params, states, c, scale, inv_n):
        if move_params:
            local = _local(p)
            if local.dtype == x.dtype:  # p0 + scale c == p' + (scale - 1) c, in place
                local.addcmul_(x, sc - 1.0)
            else:  # low-precision parameter: from the fp32 anchor, then one rounding
                local.copy_(_local(s[F.ANCHOR]) + sc * x)
        _local(s[F.DIRECTION]).copy_(x * inv)
