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
    >>> anchor = opt.ftp_state[model.body.weight]["anchor"]
    >>> row_dist = (model.body.weight - anchor).abs().sum(1)
    >>> bool((row_dist <= opt.ftp_state[model.body.weight]["gamma"] + 1e-6).all())
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_reuse.optim import _ftp_functional as F
from lightning_reuse.optim._ftp_fused import FusedFTPEngine, kernels_available
from lightning_reuse.optim.anchors import (
    AnchorSpec,
    ExcludeSpec,
    ParamSet,
    collect_anchors,
    parameter_names,
    resolve_exclude,
)

__all__ = ["FTP"]

_STATE_KEYS = ("anchor", "direction", "gamma", "exp_avg", "exp_avg_sq")


class FTP(Optimizer):
    """Wrap ``base_optimizer`` so that every non-excluded tensor stays in a learned L1 ball around its anchor.

    FTP shares the base optimizer's ``param_groups`` (LR schedulers, LR monitors and gradient clipping act on
    both) and its ``state``; its own per-parameter state (anchor, radius, radius moments, previous direction)
    is in :attr:`ftp_state`, its global step counter in :attr:`ftp_step`, and both travel in
    :meth:`state_dict` so that a resumed run continues bit-identically. Anchors and FTP state are fp32
    (or wider) whatever the parameter dtype. ``step()`` reads no value on the host by design; on CUDA the
    foreach, flat and fused paths were checked to run without host synchronisation, while the single-tensor
    path (``foreach=False``) synchronised when last measured (a suspected cause was removed since; not
    re-measured).

    Args:
        base_optimizer: any constructed torch optimizer (SGD, Adam, AdamW, ...), used as is.
        k: gradient annealing factor in ``[0, 1]``: positive hyper-gradients (those that shrink the radius)
            are multiplied by ``k``. The paper uses 1.
        mu: learning rate of the radius Adam (the paper hard-codes 1e-2).
        exclude: the parameters with no pre-trained counterpart, which get the plain base update: a module
            name or list of names (``"head"``), parameter objects, a module, or a predicate
            ``(name, param) -> bool`` such as :func:`~lightning_reuse.optim.anchors.missing_from`
            (``name`` is None when names are unknown: build the base optimizer from ``named_parameters()``
            or pass ``model=``, or make the predicate accept None).
        anchors: the pre-trained values: None (the values at construction), a module or a state_dict.
        model: where to read parameter names from when the base optimizer was not built from
            ``named_parameters()`` (names are needed for name rules and state_dict anchors).
        foreach: use a multi-tensor path (default: yes, unless parameters are on several devices);
            ``False`` runs the readable one-tensor-at-a-time path.
        flat: among multi-tensor paths, use the one that concatenates all tensors and reduces rows with
            segment reductions: a fixed number of kernels whatever the number of tensors (default: on CUDA when
            the fused path does not apply; on CPU the per-tensor ``_foreach`` path is faster).
        fused: keep the FTP state in persistent flat buffers and run the step as two row kernels around the
            base step (Triton on CUDA; a ``_foreach`` fallback elsewhere); needs all projected parameters on
            one device. Default: on when Triton is installed and the parameters are fp32 on CUDA (unless
            ``foreach=False`` or ``flat`` is given); ``True`` forces it (the fallback on CPU), ``False`` never.

    Raises:
        TypeError: ``base_optimizer`` is not an optimizer.
        ValueError: a hyper-parameter is out of range, or a name rule cannot be resolved.
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
        foreach: bool | None = None,
        flat: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(
                f"`base_optimizer` must be a constructed torch optimizer, got {type(base_optimizer).__name__}."
                " HINT: `FTP(torch.optim.AdamW(model.named_parameters(), lr=1e-4), exclude='head')`."
            )
        if isinstance(base_optimizer, FTP):
            raise TypeError(
                "`base_optimizer` is already an FTP optimizer. HINT: wrap the plain optimizer once."
            )
        if not 0.0 <= k <= 1.0:
            raise ValueError(f"Invalid `k`: expected a gradient annealing factor in [0, 1], got {k}.")
        if not mu > 0.0:
            raise ValueError(f"Invalid `mu`: expected a positive radius learning rate, got {mu}.")
        self.base_optimizer = base_optimizer
        self.k, self.mu, self.foreach, self.flat, self.fused = float(k), float(mu), foreach, flat, fused
        self._fused_engine = FusedFTPEngine()
        self._layouts: dict[tuple[int, ...], F.FlatLayout] = {}
        self._exclude, self._anchor_spec, self._model = exclude, anchors, model
        super().__init__(base_optimizer.param_groups, {})
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self.defaults = base_optimizer.defaults
        self.ftp_step = 0
        self.ftp_state: dict[Tensor, dict[str, Any]] = {}
        self._excluded = ParamSet()
        self._register(self._all_params(), warn_unmatched=True)

    # --- construction helpers -------------------------------------------------------------------------
    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _register(self, params: list[Tensor], warn_unmatched: bool) -> None:
        names = parameter_names(params, self.param_groups, self._model)
        if warn_unmatched:
            excluded = resolve_exclude(self._exclude, params, names)
        else:  # a later group: only rules that match something in it apply, silently
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                excluded = resolve_exclude(self._exclude, params, names)
        projected = [p for p in params if p not in excluded]
        for p in params:
            if p in excluded:
                self._excluded.add(p)
        anchors = collect_anchors(projected, self._anchor_spec, names)
        for p in projected:
            self.ftp_state[p] = F.init_state(p, anchors[id(p)])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer; its parameters are anchored at their current values."""
        if not hasattr(self, "ftp_state"):  # called by Optimizer.__init__ on the shared groups
            return super().add_param_group(param_group)
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups
        spec, self._anchor_spec = self._anchor_spec, None
        try:
            self._register(list(self.param_groups[-1]["params"]), warn_unmatched=False)
        finally:
            self._anchor_spec = spec

    # --- the step -------------------------------------------------------------------------------------
    def is_projected(self, param: Tensor) -> bool:
        """Whether FTP constrains ``param`` (False for excluded parameters)."""
        return param in self.ftp_state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (if any), update the radii, run the base step, project (no host read)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.ftp_step += 1
        t = self.ftp_step
        if self._fused_wanted() and self._fused_engine.step(self, t):
            return loss
        active = [p for p in self._all_params() if p.grad is not None and p in self.ftp_state]
        states = [self.ftp_state[p] for p in active]
        for p, s in zip(active, states):  # the model was moved after the optimizer was built
            if s["anchor"].device != p.device:
                for key, value in s.items():
                    s[key] = None if value is None else value.to(p.device)
        warm = [(p, s) for p, s in zip(active, states) if t > 1 and s["direction"] is not None]
        for s in states:  # first step of this tensor: radius 1e-8, moments 0
            if t == 1 or s["direction"] is None:
                s["gamma"].fill_(F.GAMMA_MIN)
                s["exp_avg"].zero_()
                s["exp_avg_sq"].zero_()
        impl = self._implementation(active, states)
        warm_params, warm_states = [p for p, _ in warm], [s for _, s in warm]
        if impl == "flat":
            layout = self._layout(warm_params)
            F.ftp_radius_flat([p.grad for p in warm_params], warm_states, layout, t=t, k=self.k, mu=self.mu)
            self.base_optimizer.step()
            F.ftp_project_flat(active, states, self._layout(active))
            return loss
        radius = F.ftp_radius_foreach if impl == "foreach" else F.ftp_radius_single
        project = F.ftp_project_foreach if impl == "foreach" else F.ftp_project_single
        radius([p.grad for p in warm_params], warm_states, t=t, k=self.k, mu=self.mu)
        self.base_optimizer.step()
        project(active, states)
        return loss

    def _fused_wanted(self) -> bool:
        if self.fused is not None:
            return self.fused
        return self.foreach is not False and self.flat is None and kernels_available(self.ftp_state)

    def _implementation(self, params: list[Tensor], states: list[dict[str, Any]]) -> str:
        one_device = len({p.device for p in params}) <= 1
        if self.foreach is False or (self.foreach is None and not one_device):
            return "single"
        one_dtype = len({s["anchor"].dtype for s in states}) <= 1
        flat = self.flat if self.flat is not None else bool(params) and params[0].device.type == "cuda"
        return "flat" if flat and one_device and one_dtype else "foreach"

    def _layout(self, params: list[Tensor]) -> F.FlatLayout:
        key = tuple(id(p) for p in params)
        if key not in self._layouts:
            if len(self._layouts) >= 8:  # the set of parameters with gradients rarely changes
                self._layouts.clear()
            device = params[0].device if params else torch.device("cpu")
            self._layouts[key] = F.FlatLayout(params, device)
        return self._layouts[key]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    # --- persistence ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state_dict plus ``"ftp"``: the step counter, ``k``, ``mu`` and per-index state."""
        sd = self.base_optimizer.state_dict()
        index = {id(p): i for i, p in enumerate(self._all_params())}
        ftp = {
            index[id(p)]: {key: s[key] for key in _STATE_KEYS if s[key] is not None}
            for p, s in self.ftp_state.items()
        }
        sd["ftp"] = {"step": self.ftp_step, "k": self.k, "mu": self.mu, "state": ftp}
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`; FTP tensors go to each parameter's device and keep their dtype."""
        if "ftp" not in state_dict:
            raise ValueError(
                "`state_dict` has no 'ftp' entry: it was not saved from an FTP optimizer. HINT: load it into "
                "the base optimizer (`ftp.base_optimizer.load_state_dict(sd)`) to keep fresh anchors."
            )
        base_sd = {key: value for key, value in state_dict.items() if key != "ftp"}
        self._fused_engine.invalidate()
        self.base_optimizer.load_state_dict(base_sd)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        ftp = state_dict["ftp"]
        params = self._all_params()
        for i, saved in ftp["state"].items():
            i = int(i)
            if i >= len(params) or not self.is_projected(params[i]):
                raise ValueError(
                    f"`state_dict` holds FTP state for parameter #{i}, which this optimizer does not project. "
                    "HINT: build the optimizer with the same parameters and `exclude` as the saved one."
                )
            p = params[i]
            if tuple(saved["anchor"].shape) != tuple(p.shape):
                raise ValueError(
                    f"`state_dict` anchor #{i} has shape {tuple(saved['anchor'].shape)}, the parameter "
                    f"{tuple(p.shape)}. HINT: load the state_dict of the same model."
                )
            state = {key: None for key in _STATE_KEYS}
            state.update({key: v.detach().to(device=p.device, copy=True) for key, v in saved.items()})
            self.ftp_state[p] = state
        self.ftp_step = int(ftp["step"])
        self.k, self.mu = float(ftp.get("k", self.k)), float(ftp.get("mu", self.mu))

    def __repr__(self) -> str:
        n_proj = len(self.ftp_state)
        n_excl = len(self._all_params()) - n_proj
        return (
            f"FTP(k={self.k}, mu={self.mu}, projected={n_proj}, excluded={n_excl},\n"
            f"    base={self.base_optimizer!r})"
        )
