"""FTP's entries in torch's optimizer state: group validation and the two ``load_state_dict`` hooks.

FTP keeps everything in the standard places (``ftp_k``, ``ftp_mu``, ``ftp_step`` in each param group;
``ftp_anchor``, ``ftp_direction``, ``ftp_gamma``, ``ftp_exp_avg``, ``ftp_exp_avg_sq`` in ``state[p]``), so
torch's own ``Optimizer.state_dict()`` / ``load_state_dict()`` carry it. Two things need a hook, through
torch's documented ``register_load_state_dict_pre_hook`` / ``_post_hook``:

- dtype: torch's ``load_state_dict`` casts every floating state tensor to its parameter's dtype (in
  ``Optimizer._process_value_according_to_param_policy``, which exempts only the key ``"step"``), which
  would round fp32 anchors and radii of bf16/fp16 parameters to bf16/fp16 and break a bit-identical
  resume. The pre-hook sets FTP's entries aside before that cast; the post-hook puts them back on the
  parameter's device in ``anchor_dtype(p)`` (the parameter's dtype, at least fp32: torch's rule with an
  fp32 floor), as copies; the direction in FTP's ``direction_dtype`` where one is set.
- sharing: ``load_state_dict`` gives the wrapper new ``state`` and ``param_groups`` objects; the
  post-hook hands them to the base optimizer through its ``__setstate__`` (what the base's own
  ``load_state_dict`` would call, so its defaults and migrations apply), so both keep sharing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_reuse.optim import _ftp_functional as F
from lightning_reuse.optim.anchors import anchor_dtype

if TYPE_CHECKING:
    from lightning_reuse.optim.ftp import FTP

__all__ = ["check_group", "restore_ftp_state", "set_aside_ftp_state"]

GROUP_KEYS = ("ftp_k", "ftp_mu", "ftp_step")


def check_group(group: dict[str, Any], index: int) -> None:
    """Validate a param group's ``ftp_k`` and ``ftp_mu`` (at construction, when added, after loading)."""
    k, mu = group["ftp_k"], group["ftp_mu"]
    where = "" if index == 0 else f" in param group {index}"
    if not 0.0 <= k <= 1.0:
        raise ValueError(
            f"Invalid `k`{where} (`ftp_k`): expected a gradient annealing factor in [0, 1], got {k}. "
            "HINT: the paper uses 1; 0 never lets a positive hyper-gradient shrink the radius."
        )
    if not mu > 0.0:
        raise ValueError(
            f"Invalid `mu`{where} (`ftp_mu`): expected a positive radius learning rate, got {mu}. "
            "HINT: the paper uses 1e-2."
        )


def set_aside_ftp_state(opt: FTP, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Pre-load hook: check the groups, take FTP's entries out of ``state`` (kept in ``opt``), validate them."""
    if "ftp" in state_dict:
        raise ValueError(
            "`state_dict` holds FTP state in the earlier format (a separate 'ftp' entry), not in `state` and "
            "`param_groups`. HINT: resume from a checkpoint saved by this version, or restart the optimizer."
        )
    saved_groups = state_dict["param_groups"]
    if not all(key in g for g in saved_groups for key in GROUP_KEYS):
        raise ValueError(
            "`state_dict` has no 'ftp' entry (its param groups lack `ftp_k`, `ftp_mu`, `ftp_step`): it was not "
            "saved from an FTP optimizer. HINT: to start FTP from a plain optimizer's state, load it into the "
            "base optimizer first, then wrap: `base.load_state_dict(sd); FTP(base, ...)`."
        )
    params = [p for g in opt.param_groups for p in g["params"]]
    saved_ids = [i for g in saved_groups for i in g["params"]]
    if len(params) != len(saved_ids):
        return state_dict  # torch refuses it with its own message
    by_saved_id = dict(zip(saved_ids, params))
    plain: dict[Any, Any] = {}
    restore: list[tuple[Tensor, dict[str, Tensor]]] = []
    for i, entries in state_dict["state"].items():
        if not isinstance(entries, dict) or i not in by_saved_id:
            plain[i] = entries
            continue
        plain[i] = {key: v for key, v in entries.items() if key not in F.STATE_KEYS}
        ftp = {key: v for key, v in entries.items() if key in F.STATE_KEYS}
        if ftp:
            _check_entries(opt, i, by_saved_id[i], ftp)  # i: an index, or a name (DCP)
            restore.append((by_saved_id[i], ftp))
    _check_anchors_known(opt, params, restore)
    opt._loading = restore
    return {**state_dict, "state": plain}


def _check_entries(opt: FTP, i: Any, p: Tensor, ftp: dict[str, Tensor]) -> None:
    if not opt.is_projected(p):
        raise ValueError(
            f"`state_dict` holds FTP state for parameter #{i}, which this optimizer does not project. "
            "HINT: build the optimizer with the same parameters and `exclude` as the saved one."
        )
    anchor = ftp.get(F.ANCHOR)
    if anchor is None or tuple(anchor.shape) != tuple(p.shape):
        got = None if anchor is None else tuple(anchor.shape)
        raise ValueError(
            f"`state_dict` anchor #{i} has shape {got}, the parameter {tuple(p.shape)}. HINT: load the "
            "state_dict of the same model."
        )


def _check_anchors_known(opt: FTP, params: list[Tensor], restore: list[tuple[Tensor, Any]]) -> None:
    """Every projected parameter must keep an anchor: loaded, or still waiting for its first step."""
    loaded = {id(p) for p, _ in restore}
    for i, p in enumerate(params):
        if opt.is_projected(p) and id(p) not in loaded and id(p) not in opt._pending_anchors:
            raise ValueError(
                f"`state_dict` has no FTP state for parameter #{i}, and this optimizer already used its "
                "anchor. HINT: load it into a freshly built FTP optimizer."
            )


def restore_ftp_state(opt: FTP) -> None:
    """Post-load hook: share the loaded state with the base optimizer, put FTP's entries back, check groups."""
    opt.base_optimizer.__setstate__({"state": opt.state, "param_groups": opt.param_groups})
    restore, opt._loading = opt._loading, []
    for p, ftp in restore:
        dtype = anchor_dtype(p)
        kinds = {key: dtype for key in ftp} | (
            {F.DIRECTION: opt.direction_dtype} if opt.direction_dtype else {}
        )
        opt.state[p].update(
            {key: v.detach().to(device=p.device, dtype=kinds[key], copy=True) for key, v in ftp.items()}
        )
        opt._pending_anchors.pop(id(p), None)
    for i, group in enumerate(opt.param_groups):
        check_group(group, i)
    opt._fused_engine.invalidate()
    opt._flat_layouts.clear()
