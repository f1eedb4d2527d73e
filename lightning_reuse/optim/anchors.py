"""Anchor machinery shared by FTP, L2-SP and WiSE-FT: which parameters are pre-trained, and their values.

- Parameter names come from the optimizer (groups built from ``model.named_parameters()`` carry
  ``param_names``) or from a model; :func:`normalize_name` strips the ``module.`` (DDP/DataParallel) and
  ``_orig_mod.`` (``torch.compile``) wrappers so names match across wrapping.
- ``exclude`` selects parameters *without* a pre-trained counterpart (typically the new head): a module
  name or a list of them, matched on whole name segments from the end of a module path (``"head"`` matches
  ``head.weight`` and ``net.head.bias``, not ``myhead.weight``), parameter objects, a module,
  or a predicate ``(name, param) -> bool`` (``name`` is None for a parameter whose name is unknown).
  :func:`missing_from` builds the predicate "not in this pre-trained state_dict (or of another shape)". A
  rule that matches nothing warns. :func:`excluded_state_keys` applies the same rules to a model's
  state_dict (buffers included), for WiSE-FT.
- :func:`interpolate_state_dicts` is WiSE-FT's weight-space ensemble (Wortsman et al., CVPR 2022).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> names = parameter_names(list(net.parameters()), model=net)
    >>> excluded = resolve_exclude("1", list(net.parameters()), names)
    >>> sorted(names[p] for p in net.parameters() if p in excluded)
    ['1.bias', '1.weight']
    >>> normalize_name("module._orig_mod.head.weight")
    'head.weight'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from lightning_reuse._warnings import LightningReuseWarning

Predicate = Callable[[Union[str, None], Tensor], bool]
ExcludeSpec = Union[None, str, nn.Module, Tensor, Predicate, Iterable[Union[str, Tensor, nn.Module]]]
AnchorSpec = Union[None, nn.Module, Mapping[str, Tensor]]


class ParamSet:
    """A set of tensors compared by identity (``Tensor.__eq__`` is element-wise, so ``set`` misbehaves)."""

    def __init__(self, tensors: Iterable[Tensor] = ()) -> None:
        self._ids = {id(t) for t in tensors}

    def add(self, t: Tensor) -> None:
        self._ids.add(id(t))

    def __contains__(self, t: object) -> bool:
        return id(t) in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def normalize_name(name: str) -> str:
    """Drop ``module.`` prefixes and every ``_orig_mod.`` segment (DDP / DataParallel / ``torch.compile``)."""
    parts = [p for p in name.split(".") if p != "_orig_mod"]
    while parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def parameter_names(
    params: Sequence[Tensor], param_groups: Sequence[Mapping[str, Any]] = (), model: nn.Module | None = None
) -> dict[int, str]:
    """Map ``id(param)`` to its normalized name, from ``model`` or the groups' ``param_names`` (torch >= 2.6)."""
    names: dict[int, str] = {}
    for group in param_groups:
        for p, name in zip(group["params"], group.get("param_names", ())):
            names[id(p)] = normalize_name(name)
    if model is not None:
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), normalize_name(name))
    return _IdNames(names, params)


class _IdNames(dict):
    """``names[param]`` -> normalized name or None; indexable by the tensor itself."""

    def __init__(self, by_id: dict[int, str], params: Sequence[Tensor]) -> None:
        super().__init__(by_id)
        self.complete = all(id(p) in by_id for p in params)

    def __getitem__(self, p: Any) -> Any:
        return super().get(id(p)) if isinstance(p, Tensor) else super().__getitem__(p)


def _name_matches(name: str | None, rule: str) -> bool:
    """Whether the module or parameter path ``rule`` names ``name`` or a module that holds it.

    Matched on whole dot-separated segments, from the end of a module path: ``"head"`` matches
    ``head.weight`` and ``net.head.weight`` (a LightningModule holding its network as ``self.net``) and
    ``net.head.0.bias``, never ``myhead.weight``; ``"net.head"`` pins the full path.

    >>> [_name_matches(n, "head") for n in ("head.weight", "net.head.bias", "net.head.0.weight", "myhead.weight")]
    [True, True, True, False]
    """
    if name is None:
        return False
    rule = normalize_name(rule)
    return f".{name}.".find(f".{rule}.") >= 0 if rule else False


def resolve_exclude(
    exclude: ExcludeSpec,
    params: Sequence[Tensor],
    names: Mapping[Any, Any],
    *,
    consequence: str = "every parameter it was meant for will be projected",
) -> ParamSet:
    """Return the parameters of ``params`` that ``exclude`` selects; warn for every rule that matches nothing.

    A predicate is called as ``rule(name, param)``; ``name`` is None when the parameter's name is unknown (an
    optimizer built from ``model.parameters()`` without ``model=``). ``consequence`` ends the warning.

    Raises:
        ValueError: a name rule is given but parameter names are unknown, or a predicate fails on a
            parameter whose name is None.
        TypeError: ``exclude`` is of an unsupported type.
    """
    out = ParamSet()
    if exclude is None:
        return out
    if isinstance(exclude, (str, Tensor, nn.Module)) or callable(exclude):
        rules: list[Any] = [exclude]
    elif isinstance(exclude, Iterable):
        rules = list(exclude)
    else:
        raise TypeError(
            f"`exclude` must be a module name, a list of names, parameters, a module or a predicate "
            f"`(name, param) -> bool`; got {type(exclude).__name__}. HINT: e.g. `exclude='head'`."
        )
    for rule in rules:
        if isinstance(rule, str):
            if not getattr(names, "complete", False):
                raise ValueError(
                    f"`exclude={rule!r}` names a module, but the optimizer's parameters have no names (a "
                    "LightningCLI top-level `optimizer:` passes them unnamed). HINT: build the base optimizer "
                    "from `model.named_parameters()` or pass `model=`; in a YAML recipe, give the optimizer to "
                    "the module instead of the top-level `optimizer:` (`model: {init_args: {optimizer: "
                    f"{{class_path: lightning_reuse.FTPAdamW, init_args: {{exclude: {rule}}}}}}}}}`, as in "
                    "recipes/ftp_finetune.yaml), which passes named parameters."
                )
            hit = [p for p in params if _name_matches(names[p], rule)]
        elif isinstance(rule, nn.Module):
            ids = ParamSet([*rule.parameters(), *rule.buffers()])
            hit = [p for p in params if p in ids]
        elif isinstance(rule, Tensor):
            hit = [p for p in params if p is rule]
        elif callable(rule):
            hit = [p for p in params if _call_predicate(rule, names[p], p)]
        else:
            raise TypeError(
                f"`exclude` entries must be names, parameters, modules or predicates; got "
                f"{type(rule).__name__}. HINT: e.g. `exclude=['head', model.norm.weight]`."
            )
        if not hit:
            known = sorted({n.rsplit(".", 1)[0] for n in names.values() if n}) if names else []
            warnings.warn(
                f"`exclude` rule {rule!r} matches no parameter; {consequence}. Known modules: {known[:20]}.",
                LightningReuseWarning,
                stacklevel=3,
            )
        for p in hit:
            out.add(p)
    return out


def _call_predicate(rule: Predicate, name: str | None, param: Tensor) -> bool:
    if name is not None:
        return bool(rule(name, param))
    try:
        return bool(rule(name, param))
    except (AttributeError, TypeError) as err:
        raise ValueError(
            f"The `exclude` predicate {rule!r} failed on a parameter without a name (name=None): {err}. "
            "HINT: build the base optimizer from `model.named_parameters()` or pass `model=`, or make the "
            "predicate accept `name=None`."
        ) from err


def excluded_state_keys(exclude: ExcludeSpec, model: nn.Module, consequence: str) -> set[str]:
    """The normalized state_dict keys of ``model`` that ``exclude`` selects, buffers included.

    Same forms as for parameters: a name rule also selects the buffers under that name, a module rule its
    buffers, and a predicate is called on buffers too. A rule that matches nothing warns, ending in
    ``consequence``.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> sorted(excluded_state_keys("1", net, "it is interpolated"))
    ['1.bias', '1.num_batches_tracked', '1.running_mean', '1.running_var', '1.weight']
    """
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    by_id: dict[int, str] = {}
    for name, t in named:
        by_id.setdefault(id(t), normalize_name(name))
    tensors = list({id(t): t for _, t in named}.values())
    selected = resolve_exclude(exclude, tensors, _IdNames(by_id, tensors), consequence=consequence)
    return {normalize_name(n) for n, t in named if t in selected}


def missing_from(pretrained: Mapping[str, Tensor] | nn.Module) -> Predicate:
    """Predicate for ``exclude``: parameters with no pre-trained counterpart (absent or of another shape).

    >>> import torch
    >>> pre = {"body.weight": torch.zeros(2, 2)}
    >>> pred = missing_from(pre)
    >>> pred("body.weight", torch.zeros(2, 2)), pred("head.weight", torch.zeros(3, 2))
    (False, True)
    """
    sd = pretrained.state_dict() if isinstance(pretrained, nn.Module) else pretrained
    shapes = {normalize_name(k): tuple(v.shape) for k, v in sd.items()}

    def predicate(name: str | None, param: Tensor) -> bool:
        if name is None:
            raise ValueError(
                "`missing_from(...)` needs parameter names. HINT: build the base optimizer from "
                "`model.named_parameters()` or pass `model=`."
            )
        return shapes.get(name) != tuple(param.shape)

    return predicate


def anchor_dtype(param: Tensor) -> torch.dtype:
    """Anchors and FTP state are at least fp32 (bf16/fp16 parameters keep fp32 anchors)."""
    return torch.promote_types(param.dtype, torch.float32)


def collect_anchors(
    params: Sequence[Tensor], anchors: AnchorSpec, names: Mapping[Any, Any]
) -> dict[int, Tensor]:
    """Return ``id(param) -> anchor`` (a detached copy on the parameter's device, fp32 or wider).

    ``anchors=None`` takes the current values; a module or a state_dict is matched by normalized name.

    Raises:
        ValueError: a parameter has no counterpart in ``anchors`` (the message says how to exclude it).
    """
    if anchors is None:
        return {id(p): p.detach().to(dtype=anchor_dtype(p), copy=True) for p in params}
    if isinstance(anchors, nn.Module):
        anchors = anchors.state_dict()
    if not isinstance(anchors, Mapping):
        raise TypeError(
            f"`anchors` must be None, a module or a state_dict; got {type(anchors).__name__}. "
            "HINT: `anchors=pretrained_model.state_dict()`."
        )
    if not getattr(names, "complete", False):
        raise ValueError(
            "`anchors` is a state_dict, but the optimizer's parameters have no names. HINT: build the base "
            "optimizer from `model.named_parameters()` or pass `model=`."
        )
    by_name = {normalize_name(k): v for k, v in anchors.items()}
    out, missing = {}, []
    for p in params:
        value = by_name.get(names[p])
        if value is None or tuple(value.shape) != tuple(p.shape):
            missing.append(names[p])
            continue
        out[id(p)] = value.detach().to(device=p.device, dtype=anchor_dtype(p), copy=True)
    if missing:
        raise ValueError(
            f"`anchors` has no entry of the right shape for {missing[:10]}. HINT: exclude them, e.g. "
            "`exclude=missing_from(anchors)` or `exclude='head'`."
        )
    return out


@torch.no_grad()
def interpolate_state_dicts(
    pretrained: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """WiSE-FT: ``(1 - alpha) * w0 + alpha * w_ft`` for every floating entry (buffers included).

    Entries missing from ``pretrained`` or of another shape (a new head) and non-floating entries (counters)
    keep the fine-tuned value. ``alpha=0`` is the pre-trained model (where it exists), ``alpha=1`` fine-tuned.

    >>> import torch
    >>> interpolate_state_dicts({"w": torch.zeros(2)}, {"w": torch.ones(2), "h": torch.ones(1)}, 0.25)
    {'w': tensor([0.2500, 0.2500]), 'h': tensor([1.])}
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}. HINT: sweep e.g. (0, 0.25, 0.5, 0.75, 1).")
    by_name = {normalize_name(k): v for k, v in pretrained.items()}
    out = {}
    for key, ft in finetuned.items():
        w0 = by_name.get(normalize_name(key))
        if w0 is None or w0.shape != ft.shape or not ft.is_floating_point():
            out[key] = ft.clone()
        else:
            w0 = w0.to(device=ft.device, dtype=torch.promote_types(ft.dtype, torch.float32))
            out[key] = torch.lerp(w0, ft.to(w0.dtype), alpha).to(ft.dtype)
    return out
