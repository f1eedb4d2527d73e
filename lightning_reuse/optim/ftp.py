"""FTP: Fast Trainable Projection, a wrapper around any torch optimizer for robust fine-tuning.

Tian, Liu, Smith, Kira, "Fast Trainable Projection for Robust Fine-Tuning", NeurIPS 2023
(arXiv:2310.19182). Each pre-trained tensor is kept inside a row-wise L1 ball around its pre-trained value
(the anchor); the ball's radius is learned on the fly by a tiny Adam on a one-step-delayed hyper-gradient.
The base optimizer computes its usual update, then FTP projects. New layers (the head) are excluded.

Example:
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential()
    >>> model.add_module("body", torch.nn.Linear(4, 4))
    >>> model.add_module("head", torch.nn.Linear(4, 2))
    >>> opt = FTP(torch.optim.AdamW(model.named_parameters(), lr=1e-2), exclude="head")
    >>> x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     opt.step()
    >>> state = opt.state[model.body.weight]  # the base optimizer's state and FTP's, side by side
    >>> sorted(state)
    ['exp_avg', 'exp_avg_sq', 'ftp_anchor', 'ftp_direction', 'ftp_exp_avg', 'ftp_exp_avg_sq', 'ftp_gamma', 'step']
    >>> row_dist = (model.body.weight - state["ftp_anchor"]).abs().sum(1)
    >>> bool((row_dist <= state["ftp_gamma"] + 1e-6).all())
    True
    >>> opt.param_groups[0]["ftp_k"], opt.param_groups[0]["ftp_step"]
    (1.0, 3)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_reuse.optim import _ftp_functional as F
from lightning_reuse.optim._ftp_fused import FusedFTPEngine, kernels_available
from lightning_reuse.optim._ftp_sharded import check_shardable, init_sharded_state, is_dtensor, sharded_step
from lightning_reuse.optim._ftp_state import check_group, restore_ftp_state, set_aside_ftp_state
from lightning_reuse.optim.anchors import (
    AnchorSpec,
    ExcludeSpec,
    ParamSet,
    anchor_dtype,
    collect_anchors,
    parameter_names,
    resolve_exclude,
)

__all__ = ["FTP", "Implementation"]

Implementation = Literal["auto", "single", "foreach", "flat", "fused"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)
DIRECTION_DTYPES = (None, torch.bfloat16)


class FTP(Optimizer):
    """Wrap ``base_optimizer`` so that every non-excluded tensor stays in a learned L1 ball around its anchor.

    As timm's ``Lookahead``, FTP shares the base optimizer's ``param_groups`` (LR schedulers, LR monitors and
    gradient clipping act on both) and its ``state``. Its hyper-parameters are group entries ``ftp_k`` and
    ``ftp_mu`` (set into each group that lacks them, so a group may carry its own), beside the group's step
    counter ``ftp_step``; its per-parameter tensors are entries of ``state[p]``: ``ftp_anchor``,
    ``ftp_direction`` (previous ``c / n``), ``ftp_gamma`` (the radius) and its moments ``ftp_exp_avg``,
    ``ftp_exp_avg_sq``. A parameter gets them at its first step, after the base optimizer made its own
    (torch optimizers create their state when ``state[p]`` is empty); until then the wrapper holds its
    anchor. So torch's ``state_dict()`` / ``load_state_dict()`` save and restore everything, and moves of
    ``optimizer.state`` (Lightning's) move it. FTP state is fp32 (or wider) whatever the parameter dtype.
    ``step()`` reads no value on the host by design.

    Implementations (``implementation=``; all agree with the literal reference to 1e-9 in float64 and with
    each other to 1e-6 in fp32):

    - ``"single"``: one tensor at a time, the readable reference; about 12 kernels per tensor. Never the
      default; on CUDA it synchronised with the host when last measured. For debugging and tiny models.
    - ``"foreach"``: ``torch._foreach_*`` kernels plus one row-norm and one dot kernel per tensor; no extra
      memory. The default on CPU (and wherever nothing below applies).
    - ``"flat"``: all tensors concatenated, rows reduced by segment reductions: a fixed number of kernels
      whatever the number of tensors, for about 6x the projected size of temporary memory. The CUDA
      default when the fused path does not run (no Triton, parameters not fp32); slow on CPU. Needs one
      device and one state dtype (else foreach).
    - ``"fused"``: the FTP state cached in persistent flat buffers (``state[p]`` holds views into them) and
      the step run as two row kernels around the base step (Triton; a ``_foreach`` fallback elsewhere, e.g.
      on CPU, or when groups differ in ``ftp_k``/``ftp_mu``); about 8 launches, no temporaries beyond two
      floats per row. The default on CUDA for fp32 parameters with Triton installed. A tensor's first step,
      or parameters on several devices, run the per-tensor choice of ``"auto"`` instead.
    - ``"auto"``: fused where its kernels apply; otherwise single when parameters with gradients span
      several devices, flat on CUDA, foreach elsewhere.

    Sharded parameters (FSDP2 ``fully_shard``, DTensor ``Shard(0)``; build FTP after sharding): ``"auto"``,
    ``"foreach"`` and ``"single"`` run the foreach maths on the local shards with one all-reduce per step
    (see :mod:`lightning_reuse.optim._ftp_sharded`); ``"flat"``/``"fused"``, other placements, FSDP1 flat
    parameters and DeepSpeed partitions are refused with a ``ValueError`` naming FSDP2 as the way.

    Args:
        base_optimizer: any constructed torch optimizer (SGD, Adam, AdamW, ...), used as is.
        k: gradient annealing factor in ``[0, 1]`` (default of ``ftp_k``): positive hyper-gradients (those
            that shrink the radius) are multiplied by ``k``. The paper uses 1.
        mu: learning rate of the radius Adam (default of ``ftp_mu``; the paper hard-codes 1e-2).
        exclude: the parameters with no pre-trained counterpart, which get the plain base update: a module
            name or list of names (``"head"``), parameter objects, a module, or a predicate
            ``(name, param) -> bool`` such as :func:`~lightning_reuse.optim.anchors.missing_from`
            (``name`` is None when names are unknown: build the base optimizer from ``named_parameters()``
            or pass ``model=``, or make the predicate accept None).
        anchors: the pre-trained values: None (the values at construction), a module or a state_dict.
        model: where to read parameter names from when the base optimizer was not built from
            ``named_parameters()`` (names are needed for name rules and state_dict anchors).
        implementation: how a step runs, see above; ``"auto"`` picks per step.
        direction_dtype: keep the previous direction ``c / n`` (``ftp_direction``, read only by the next
            step's radius hyper-gradient) in this dtype: ``None`` (default: the state's dtype, the paper's
            maths) or ``torch.bfloat16`` (half its memory, 4 bytes per parameter less traffic per fused
            step, rounded to nearest even on every path; the hyper-gradient is then summed in the state's dtype from the rounded
            direction: docs/ftp.md gives the measured effect on the golden trajectory and on speed).

    Raises:
        TypeError: ``base_optimizer`` is not an optimizer.
        ValueError: a hyper-parameter is out of range (in any group), ``implementation`` is unknown, a
            name rule cannot be resolved, or a parameter is sharded in a way FTP does not take (see above).
    """

    def __init__(
        self,
        base_optimizer: Optimizer,
        *,
        k: float = 1.0,
        mu: float = 1e-2,
        exclude: ExcludeSpec = None,
        anchors: AnchorSpec = None,
        model: nn.Module | None = None,
        implementation: Implementation = "auto",
        direction_dtype: torch.dtype | None = None,
    ) -> None:
        _check_base(base_optimizer)
        if direction_dtype not in DIRECTION_DTYPES:
            raise ValueError(
                f"Invalid `direction_dtype`: expected None (the state's dtype) or torch.bfloat16, got "
                f"{direction_dtype!r}. HINT: torch.bfloat16 saves 4 of the fused step's 44-52 bytes per parameter "
                "(float16 is not offered: its range is too narrow for the entries of long rows); None keeps the "
                "paper's full precision."
            )
        self.direction_dtype = direction_dtype
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"Invalid `implementation`: expected one of {IMPLEMENTATIONS}, got {implementation!r}. "
                "HINT: leave it at 'auto' unless you measure or debug a path."
            )
        self.base_optimizer = base_optimizer
        self.implementation: Implementation = implementation
        super().__init__(base_optimizer.param_groups, {})  # hooks and step patching; groups are shared below
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self.defaults = base_optimizer.defaults
        self.defaults.update(ftp_k=float(k), ftp_mu=float(mu))  # new groups get them as torch defaults
        for i, group in enumerate(self.param_groups):
            group.setdefault("ftp_k", float(k))
            group.setdefault("ftp_mu", float(mu))
            group.setdefault("ftp_step", 0)
            check_group(group, i)
        self._fused_engine = FusedFTPEngine(direction_dtype)
        self._flat_layouts: dict[tuple[int, ...], F.FlatLayout] = {}
        self._exclude, self._anchor_spec, self._model = exclude, anchors, model
        self._projected, self._excluded = ParamSet(), ParamSet()
        self._names: dict[int, str] = {}  # id(p) -> normalized name, where known (for error messages)
        self._pending_anchors: dict[int, Tensor] = {}  # id(p) -> anchor, until p's first step
        self._loading: list[tuple[Tensor, dict[str, Tensor]]] = []  # FTP entries set aside during a load
        self._sharded = False  # DTensor parameters (FSDP2): the sharded path, see _ftp_sharded
        self._register([p for g in self.param_groups for p in g["params"]], warn_unmatched=True)
        self.register_load_state_dict_pre_hook(set_aside_ftp_state)
        self.register_load_state_dict_post_hook(restore_ftp_state)
        self.register_state_dict_pre_hook(_sync_device_counters)

    # --- construction helpers -------------------------------------------------------------------------
    def _register(self, params: list[Tensor], warn_unmatched: bool) -> None:
        names = parameter_names(params, self.param_groups, self._model)
        self._names.update(names)
        check_shardable(params, self._names, self.implementation)
        self._sharded = self._sharded or any(is_dtensor(p) for p in params)
        with warnings.catch_warnings():
            if not warn_unmatched:  # a later group: only rules that match something in it apply, silently
                warnings.simplefilter("ignore")
            excluded = resolve_exclude(self._exclude, params, names)
        projected = [p for p in params if p not in excluded]
        for p in params:
            (self._excluded if p in excluded else self._projected).add(p)
        anchors = collect_anchors(projected, self._anchor_spec, names)
        self._pending_anchors.update((id(p), anchors[id(p)]) for p in projected)

    @torch.no_grad()
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer; its parameters are anchored at their current values."""
        if any(param_group is g for g in self.base_optimizer.param_groups):
            return  # ``Optimizer.__init__`` passing the base's own groups: shared as they are
        self.base_optimizer.add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("ftp_step", self.param_groups[0]["ftp_step"])  # one global t, as before the group
        check_group(group, len(self.param_groups) - 1)
        spec, self._anchor_spec = self._anchor_spec, None
        try:
            self._register(list(group["params"]), warn_unmatched=False)
        finally:
            self._anchor_spec = spec

    def is_projected(self, param: Tensor) -> bool:
        """Whether FTP constrains ``param`` (False for excluded parameters)."""
        return param in self._projected

    # --- the step -------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (if any), update the radii, run the base step, project (no host read)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refuse_sparse_gradients()
        initialising = self._initialising()
        groups = self._advance_groups()
        if self._sharded:
            sharded_step(
                groups, self.base_optimizer.step, self._new_sharded_state, move_params=not initialising
            )
            return loss
        if not initialising and self._fused_wanted() and self._fused_engine.step(groups, self.base_optimizer):
            return loss
        active = [(p, s) for g in groups for p, s in zip(g.params, g.states) if p.grad is not None]
        params, states = [p for p, _ in active], [s for _, s in active]
        impl = self._per_tensor_path(params)
        for g in groups:
            self._update_radii(g, impl)
        self.base_optimizer.step()
        for p, s in active:
            if F.ANCHOR not in s:  # first step of p: its state joins the base optimizer's, radius 1e-8
                s.update(F.init_state(p, self._pending_anchors.pop(id(p))))
        targets = [p.detach().clone() for p in params] if initialising else params  # see _initialising
        kind = self.direction_dtype
        if impl == "flat":
            F.ftp_project_flat(targets, states, self._flat_layout(params), kind)
        else:
            (F.ftp_project_foreach if impl == "foreach" else F.ftp_project_single)(targets, states, kind)
        return loss

    def _initialising(self) -> bool:
        """Whether this step only creates state: the first step of all, with every group's lr at 0.

        ``torch.distributed.checkpoint.state_dict``'s ``get/set_optimizer_state_dict`` run such a step (zero
        gradients, lr 0) on an optimizer without state before loading into it; projecting there would snap
        already loaded weights back onto the construction-time anchors. So that step creates FTP's state
        without writing the parameters (a real first step at lr 0 moves nothing anyway: p' == p == p0).
        """
        return not self.state and all(float(g.get("lr", 1.0)) == 0.0 for g in self.param_groups)

    def _new_sharded_state(self, param: Tensor) -> F.State:
        return init_sharded_state(param, self._pending_anchors.pop(id(param)), self.direction_dtype)

    def _refuse_sparse_gradients(self) -> None:
        """Raise before anything moves when a projected parameter has a sparse gradient (no host read)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse and p in self._projected:
                    name = self._names.get(id(p))
                    what = f"`{name}`" if name else f"a parameter of shape {list(p.shape)} (name unknown)"
                    layer = name.rsplit(".", 1)[0] if name and "." in name else name
                    rule = f"exclude={layer!r}" if layer else "exclude=[that parameter]"
                    raise ValueError(
                        f"FTP cannot project {what}: its gradient is sparse ({p.grad.layout}, e.g. from "
                        "nn.Embedding(sparse=True)); the projection needs a dense gradient. HINT: exclude it "
                        f"from the projection ({rule}), or build the layer with sparse=False."
                    )

    def _advance_groups(self) -> list[F.ProjectedGroup]:
        out = []
        for group in self.param_groups:
            group["ftp_step"] += 1
            params = [p for p in group["params"] if p in self._projected]
            if len(params) + sum(p in self._excluded for p in group["params"]) != len(group["params"]):
                _refuse_unknown(group["params"], self._projected, self._excluded)
            # no state is created for a parameter without gradient (a throwaway empty dict stands for it)
            states = [self.state[p] if p.grad is not None else self.state.get(p, {}) for p in params]
            out.append(F.ProjectedGroup(params, states, group["ftp_step"], group["ftp_k"], group["ftp_mu"]))
        return out

    def _update_radii(self, group: F.ProjectedGroup, impl: str) -> None:
        warm = [(p, s) for p, s in zip(group.params, group.states) if p.grad is not None and F.ANCHOR in s]
        if not warm:
            return
        grads, states = [p.grad for p, _ in warm], [s for _, s in warm]
        hyper = {"t": group.t, "k": group.k, "mu": group.mu}
        if impl == "flat":
            F.ftp_radius_flat(grads, states, self._flat_layout([p for p, _ in warm]), **hyper)
        else:
            (F.ftp_radius_foreach if impl == "foreach" else F.ftp_radius_single)(grads, states, **hyper)

    def _fused_wanted(self) -> bool:
        if self.implementation != "auto":
            return self.implementation == "fused"
        first = next((p for g in self.param_groups for p in g["params"] if p in self._projected), None)
        return kernels_available(first)

    def _per_tensor_path(self, params: list[Tensor]) -> str:
        """The path of this step when the fused one does not run (see the class docstring)."""
        if self.implementation in ("single", "foreach"):
            return self.implementation
        if len({p.device for p in params}) > 1:
            return "single"
        flat = self.implementation == "flat" or (bool(params) and params[0].device.type == "cuda")
        if flat and len({anchor_dtype(p) for p in params}) <= 1:
            return "flat"
        return "foreach"

    def _flat_layout(self, params: list[Tensor]) -> F.FlatLayout:
        key = tuple(id(p) for p in params)
        if key not in self._flat_layouts:
            if len(self._flat_layouts) >= 8:  # the set of parameters with gradients rarely changes
                self._flat_layouts.clear()
            device = params[0].device if params else torch.device("cpu")
            self._flat_layouts[key] = F.FlatLayout(params, device)
        return self._flat_layouts[key]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        n_proj, n_excl = len(self._projected), len(self._excluded)
        ks = sorted({g["ftp_k"] for g in self.param_groups})
        mus = sorted({g["ftp_mu"] for g in self.param_groups})
        k, mu = (ks[0] if len(ks) == 1 else ks), (mus[0] if len(mus) == 1 else mus)
        return (
            f"FTP(k={k}, mu={mu}, projected={n_proj}, excluded={n_excl}, implementation={self.implementation!r},"
            f"\n    base={self.base_optimizer!r})"
        )


def _sync_device_counters(opt: FTP) -> None:
    """Before ``state_dict()``: ``ftp_step`` from the device counter of the one-pass Adam path (graph replays)."""
    opt._fused_engine.sync_host(opt.param_groups)


def _check_base(base_optimizer: object) -> None:
    if not isinstance(base_optimizer, Optimizer):
        raise TypeError(
            f"`base_optimizer` must be a constructed torch optimizer, got {type(base_optimizer).__name__}."
            " HINT: `FTP(torch.optim.AdamW(model.named_parameters(), lr=1e-4), exclude='head')`."
        )
    if isinstance(base_optimizer, FTP):
        raise TypeError("`base_optimizer` is already an FTP optimizer. HINT: wrap the plain optimizer once.")


def _refuse_unknown(params: list[Tensor], projected: ParamSet, excluded: ParamSet) -> None:
    """A group holds tensors FTP never saw: a wrapper (DeepSpeed ZeRO, FSDP1) replaced the parameters."""
    unknown = [p for p in params if p not in projected and p not in excluded]
    shapes = [list(p.shape) for p in unknown[:3]]
    raise ValueError(
        f"FTP's param groups hold {len(unknown)} tensor(s) it was not built with (shapes {shapes}...): a wrapper "
        "such as DeepSpeed ZeRO or FSDP1 replaced the parameters with flat partitions, which have no rows. "
        "HINT: shard with FSDP2 (`torch.distributed.fsdp.fully_shard`, Lightning's `ModelParallelStrategy`) "
        "and build FTP after sharding; to add parameters, use `add_param_group`."
    )
