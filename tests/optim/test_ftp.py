"""FTP against the literal reference, and the spec's properties (1-7, 9); Lightning/AMP/DDP elsewhere."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.optim import FTP
from lightning_reuse.optim._ftp_functional import row_l1_norm
from lightning_reuse.optim.anchors import missing_from
from tests.optim.ftp_reference import ReferenceFTP


class Net(nn.Module):
    """0-D, 1-D, 2-D and 4-D parameters, plus a new ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.3))
        self.conv = nn.Conv2d(2, 3, 3)
        self.norm = nn.LayerNorm(12)
        self.lin = nn.Linear(12, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.conv(x)).flatten(1)  # [N, 3*2*2]
        z = torch.tanh(self.lin(self.norm(z))) * self.scale
        return self.head(z)


def make_net(dtype: torch.dtype = torch.float64, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().to(dtype)


def batches(
    n: int, dtype: torch.dtype = torch.float64, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 2, 4, 4, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g))
        for _ in range(n)
    ]


def make_base(kind: str, params) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=5e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)
    if kind == "adam":
        return torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=5e-2)


def train_step(model: nn.Module, opt, batch) -> None:
    opt.zero_grad()
    x, y = batch
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def projected_params(model: Net) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if not n.startswith("head.")]


def ftp_state(opt: FTP, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """FTP's entries of ``opt.state[p]`` by their short names (anchor, direction, gamma, exp_avg, exp_avg_sq)."""
    return {key[len("ftp_") :]: v for key, v in opt.state.get(p, {}).items() if key.startswith("ftp_")}


# --- 1. golden ---------------------------------------------------------------------------------------
def train_alongside(ours: Net, opt: FTP, ref: Net, ref_opt: ReferenceFTP, steps: int, atol: float) -> None:
    """Train both on the same batches; after every step every parameter of ``ours`` within ``atol`` of ``ref``."""
    data = batches(10)
    for step in range(steps):
        batch = data[step % len(data)]
        train_step(ours, opt, batch)
        train_step(ref, ref_opt, batch)
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert torch.allclose(a, b, rtol=0, atol=atol), (step, name, (a - b).abs().max().item())


IMPLS = {name: {"implementation": name} for name in ("single", "foreach", "flat")}
GOLDEN = [(b, k, "single") for b in ("sgd", "adam", "adamw") for k in (0.0, 0.3, 1.0)]
GOLDEN += [("sgd", 0.0, "foreach"), ("adam", 0.3, "foreach"), ("adamw", 1.0, "foreach")]
GOLDEN += [("sgd", 0.3, "flat"), ("adam", 1.0, "flat"), ("adamw", 0.0, "flat")]


@pytest.mark.parametrize(("base", "k", "impl"), GOLDEN)
def test_matches_literal_reference_float64_200_steps(base: str, k: float, impl: str) -> None:
    ours, ref = make_net(), make_net()
    opt = FTP(make_base(base, ours.named_parameters()), k=k, exclude="head", **IMPLS[impl])
    ref_opt = ReferenceFTP(make_base(base, ref.parameters()), projected_params(ref), k=k)
    train_alongside(ours, opt, ref, ref_opt, steps=200, atol=1e-9)
    # the run exercised both branches of the projection and moved away from the anchors
    assert ref_opt.clipped_rows > 0 and ref_opt.free_rows > 0
    assert (ours.lin.weight - ftp_state(opt, ours.lin.weight)["anchor"]).abs().sum() > 1e-3


# --- 2. step 1 ----------------------------------------------------------------------------------------
def test_first_step_snaps_projected_back_and_moves_excluded_like_base() -> None:
    model, plain = make_net(), make_net()
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = FTP(torch.optim.AdamW(model.named_parameters(), lr=1e-1), exclude="head")
    base = torch.optim.AdamW(plain.parameters(), lr=1e-1)
    batch = batches(1)[0]
    train_step(model, opt, batch)
    train_step(plain, base, batch)
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        if name.startswith("head."):
            assert torch.equal(p, q) and not torch.equal(p, anchors[name])
        else:
            assert torch.allclose(p, anchors[name], rtol=0, atol=1e-8)
            assert not torch.allclose(q, anchors[name], rtol=0, atol=1e-4)  # the base alone would have moved


# --- 3 and 4. invariant and bounds ------------------------------------------------------------------------
@pytest.mark.parametrize("impl", list(IMPLS))
def test_rows_stay_in_ball_and_gamma_is_bounded(impl: str) -> None:
    model = make_net(torch.float32)
    base = torch.optim.SGD(model.named_parameters(), lr=0.2, momentum=0.9)
    opt = FTP(base, exclude="head", **IMPLS[impl])
    unconstrained: dict = {}  # p' of the base step, captured before the projection
    base.register_step_post_hook(
        lambda *_: unconstrained.update({p: p.detach().clone() for p in projected_params(model)})
    )
    gamma_min = float(torch.tensor(1e-8, dtype=torch.float32))
    for step, batch in enumerate(batches(60, torch.float32)):
        train_step(model, opt, batch)
        for p in projected_params(model):
            s = ftp_state(opt, p)
            gamma = float(s["gamma"])
            n = row_l1_norm(p.detach() - s["anchor"])
            assert (n <= gamma + 1e-5).all(), (step, n.max().item(), gamma)
            max_n = float(row_l1_norm(unconstrained[p] - s["anchor"]).max())
            assert gamma_min <= gamma <= max_n * (1 + 1e-6), (step, gamma, max_n)
    assert max(float(ftp_state(opt, p)["gamma"]) for p in projected_params(model)) > 1e-4  # radii did grow


def test_with_radius_above_every_row_norm_ftp_equals_base() -> None:
    # A pull towards a far target: every hyper-gradient is negative, and with a large radius learning rate
    # gamma outgrows every row norm from step 2 on, so FTP must reproduce the base optimizer exactly.
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
    b = nn.Parameter(torch.randn(5, dtype=torch.float64))
    target_w, target_b = w.detach() + 10.0, b.detach() - 10.0
    opt = FTP(torch.optim.SGD([w, b], lr=1e-2, momentum=0.9), mu=100.0)

    def loss(w_, b_):
        return 0.5 * ((w_ - target_w).pow(2).sum() + (b_ - target_b).pow(2).sum())

    opt.zero_grad()
    loss(w, b).backward()
    opt.step()  # step 1 snaps back onto the anchors
    w2, b2 = nn.Parameter(w.detach().clone()), nn.Parameter(b.detach().clone())
    base = torch.optim.SGD([w2, b2], lr=1e-2, momentum=0.9)
    base.load_state_dict(copy.deepcopy(opt.base_optimizer.state_dict()))
    for _ in range(30):
        for o, args in ((opt, (w, b)), (base, (w2, b2))):
            o.zero_grad()
            loss(*args).backward()
            o.step()
        assert torch.allclose(w, w2, rtol=0, atol=1e-12) and torch.allclose(b, b2, rtol=0, atol=1e-12)
    assert (w - ftp_state(opt, w)["anchor"]).abs().sum() > 1.0  # it really moved far from the anchor


# --- 5. annealing only touches positive hyper-gradients ------------------------------------------------------
def _quadratic_run(
    k: float, come_back: bool, steps: int = 40, mu: float = 1.0
) -> tuple[list[torch.Tensor], list[float]]:
    """Pull towards a far target; with ``come_back`` pull back to the anchor after 5 steps."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
    anchor = w.detach().clone()
    target = anchor + 10.0 * torch.randn(4, 5, dtype=torch.float64).sign()
    opt = FTP(torch.optim.SGD([w], lr=1e-2), k=k, mu=mu)
    hs, trajectory = [], []
    for i in range(steps):
        opt.zero_grad()
        goal = anchor if come_back and i >= 5 else target
        (0.5 * (w - goal).pow(2).sum()).backward()
        d = ftp_state(opt, w).get("direction")
        if d is not None:
            hs.append(float((w.grad * d).sum()))
        opt.step()
        trajectory.append(w.detach().clone())
    return trajectory, hs


def test_k_is_irrelevant_when_every_hypergradient_is_negative() -> None:
    traj0, hs0 = _quadratic_run(k=0.0, come_back=False)
    traj1, hs1 = _quadratic_run(k=1.0, come_back=False)
    assert hs0 and all(h < 0 for h in hs0 + hs1)
    assert all(torch.equal(a, b) for a, b in zip(traj0, traj1))


def test_k_matters_when_some_hypergradient_is_positive() -> None:
    traj0, hs0 = _quadratic_run(k=0.0, come_back=True)
    traj1, _ = _quadratic_run(k=1.0, come_back=True)
    assert any(h > 0 for h in hs0)
    assert not all(torch.equal(a, b) for a, b in zip(traj0, traj1))


# --- 6. resume -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("via_bytes", "impl"),
    [(False, "foreach"), (True, "foreach"), (True, "flat")],
    ids=["in-memory", "saved", "saved-flat"],
)
def test_state_dict_resume_is_bit_identical(via_bytes: bool, impl: str) -> None:
    data = batches(30, torch.float32)
    ref = make_net(torch.float32)
    ref_opt = FTP(torch.optim.AdamW(ref.named_parameters(), lr=1e-2), exclude="head", k=0.3, **IMPLS[impl])
    for batch in data:
        train_step(ref, ref_opt, batch)

    model = make_net(torch.float32)
    opt = FTP(torch.optim.AdamW(model.named_parameters(), lr=1e-2), exclude="head", k=0.3, **IMPLS[impl])
    for batch in data[:12]:
        train_step(model, opt, batch)
    ckpt = {"model": model.state_dict(), "opt": opt.state_dict()}
    if via_bytes:
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        buf.seek(0)
        ckpt = torch.load(buf, map_location="cpu")

    resumed = make_net(torch.float32, seed=123)  # other init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt2 = FTP(torch.optim.AdamW(resumed.named_parameters(), lr=1e-2), exclude="head", k=0.3, **IMPLS[impl])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups[0]["ftp_step"] == 12
    for batch in data[12:]:
        train_step(resumed, opt2, batch)
    for p, q in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_load_state_dict_rejects_plain_optimizer_state() -> None:
    model = make_net()
    opt = FTP(torch.optim.SGD(model.named_parameters(), lr=0.1), exclude="head")
    with pytest.raises(ValueError, match="no 'ftp' entry"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


# --- 7. parameters without gradient -------------------------------------------------------------------------
def test_parameter_without_grad_is_skipped_and_others_unaffected() -> None:
    torch.manual_seed(0)
    x0, y0 = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    tx, ty = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    xa, ya = nn.Parameter(x0.clone()), nn.Parameter(y0.clone())
    yb = nn.Parameter(y0.clone())
    opt_a = FTP(torch.optim.Adam([xa, ya], lr=0.05))
    opt_b = FTP(torch.optim.Adam([yb], lr=0.05))
    for step in range(30):
        skip_x = step % 4 == 2
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss_y = lambda y: (y - ty).pow(2).sum()  # noqa: E731
        (loss_y(ya) + (0 if skip_x else (xa - tx).pow(2).sum())).backward()
        loss_y(yb).backward()
        x_before = xa.detach().clone()
        x_state = {k: (v.clone() if v is not None else None) for k, v in ftp_state(opt_a, xa).items()}
        opt_a.step()
        opt_b.step()
        assert torch.equal(ya, yb), step
        if skip_x:
            assert torch.equal(xa, x_before)
            for key, v in ftp_state(opt_a, xa).items():
                assert (v is None and x_state[key] is None) or torch.equal(v, x_state[key]), key


# --- 9. foreach == single ------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["foreach", "flat"])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_multi_tensor_paths_match_single_tensor_path_fp32(base: str, impl: str) -> None:
    a, b = make_net(torch.float32), make_net(torch.float32)
    opt_a = FTP(make_base(base, a.named_parameters()), k=0.3, exclude="head", implementation="single")
    opt_b = FTP(make_base(base, b.named_parameters()), k=0.3, exclude="head", **IMPLS[impl])
    for batch in batches(100, torch.float32):
        train_step(a, opt_a, batch)
        train_step(b, opt_b, batch)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)


# --- API: exclusion, anchors, dtypes, validation, schedulers ------------------------------------------------
def test_exclude_by_object_module_predicate_and_wrapped_names() -> None:
    model = make_net()
    for exclude in (model.head, [model.head.weight, model.head.bias], lambda n, p: n.startswith("head")):
        opt = FTP(torch.optim.SGD(model.parameters(), lr=0.1), exclude=exclude, model=model)
        assert not opt.is_projected(model.head.weight) and opt.is_projected(model.lin.weight)
    named = [(f"module._orig_mod.{n}", p) for n, p in model.named_parameters()]
    opt = FTP(torch.optim.SGD(named, lr=0.1), exclude="module.head")
    assert not opt.is_projected(model.head.bias) and opt.is_projected(model.scale)
    assert sum(opt.is_projected(p) for p in model.parameters()) == len(list(model.parameters())) - 2


def test_exclude_rule_matching_nothing_warns_and_names_required() -> None:
    model = make_net()
    with pytest.warns(LightningReuseWarning, match="matches no parameter"):
        FTP(torch.optim.SGD(model.named_parameters(), lr=0.1), exclude="classifier")
    with pytest.raises(ValueError, match="have no names"):
        FTP(torch.optim.SGD(model.parameters(), lr=0.1), exclude="head")


def test_predicate_without_names_raises_value_error_with_the_fix() -> None:
    model = make_net()
    with pytest.raises(ValueError, match=r"name=None.*named_parameters\(\)` or pass `model=`") as info:
        FTP(torch.optim.SGD(model.parameters(), lr=0.1), exclude=lambda n, p: n.startswith("head"))
    assert isinstance(info.value.__cause__, AttributeError)
    # a predicate that accepts name=None works without names
    opt = FTP(torch.optim.SGD(model.parameters(), lr=0.1), exclude=lambda n, p: p is model.head.weight)
    assert not opt.is_projected(model.head.weight) and opt.is_projected(model.head.bias)


def test_anchors_from_pretrained_state_dict_and_missing_from() -> None:
    pre = make_net(seed=5)
    pre_sd = {k: v for k, v in pre.state_dict().items() if not k.startswith("head.")}
    model = make_net(seed=6)
    opt = FTP(torch.optim.SGD(model.named_parameters(), lr=0.1), anchors=pre_sd, exclude=missing_from(pre_sd))
    assert not opt.is_projected(model.head.weight)
    train_step(model, opt, batches(1)[0])  # step 1 snaps onto the given anchors
    assert torch.equal(ftp_state(opt, model.lin.weight)["anchor"], pre.lin.weight)
    assert torch.allclose(model.lin.weight, pre.lin.weight, atol=1e-8)
    with pytest.raises(ValueError, match="no entry of the right shape"):
        FTP(torch.optim.SGD(model.named_parameters(), lr=0.1), anchors=pre_sd)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_bf16_parameters_keep_fp32_anchors_and_state(impl: str) -> None:
    model = make_net(torch.bfloat16)
    opt = FTP(torch.optim.SGD(model.named_parameters(), lr=0.1), exclude="head", **IMPLS[impl])
    for batch in batches(3, torch.bfloat16):
        train_step(model, opt, batch)
    for p in projected_params(model):
        s = ftp_state(opt, p)
        assert p.dtype == torch.bfloat16
        assert all(s[key].dtype == torch.float32 for key in ("anchor", "direction", "gamma", "exp_avg"))
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    assert ftp_state(opt, model.lin.weight)["anchor"].dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k": 1.5}, "Invalid `k`"), ({"mu": 0.0}, "Invalid `mu`")],
)
def test_invalid_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FTP(torch.optim.SGD(make_net().parameters(), lr=0.1), **kwargs)


def test_base_must_be_an_optimizer() -> None:
    with pytest.raises(TypeError, match="base_optimizer"):
        FTP(make_net().parameters())  # type: ignore[arg-type]


def test_lr_scheduler_acts_on_shared_param_groups() -> None:
    model = make_net()
    opt = FTP(torch.optim.SGD(model.named_parameters(), lr=0.1), exclude="head")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for batch in batches(3):
        train_step(model, opt, batch)
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert opt.param_groups is opt.base_optimizer.param_groups


def test_add_param_group_anchors_new_parameters() -> None:
    model = make_net()
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = FTP(torch.optim.SGD(body, lr=0.1))
    opt.add_param_group({"params": list(model.head.parameters()), "lr": 0.01})
    head_now = model.head.weight.detach().clone()
    assert opt.is_projected(model.head.weight)
    train_step(model, opt, batches(1)[0])  # the anchor enters state[p] at the first step
    assert torch.equal(ftp_state(opt, model.head.weight)["anchor"], head_now)
