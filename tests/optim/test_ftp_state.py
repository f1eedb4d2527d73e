"""FTP's state the torch.optim way: torch's state_dict round trip, per-group ``ftp_k``, moves of ``optimizer.state``."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.fabric.utilities.optimizer import _optimizer_to_device
from torch import nn

from lightning_reuse.optim import FTP
from tests.optim.ftp_reference import ReferenceFTP
from tests.optim.test_ftp import batches, ftp_state, make_net, projected_params, train_step

IMPLEMENTATIONS = ["single", "foreach", "flat", "fused"]


def _adamw_ftp(model: nn.Module, implementation: str) -> FTP:
    base = torch.optim.AdamW(model.named_parameters(), lr=1e-2, weight_decay=1e-2)
    return FTP(base, exclude="head", k=0.3, implementation=implementation)  # type: ignore[arg-type]


def _assert_same_state(a: FTP, b: FTP, model_a: nn.Module, model_b: nn.Module) -> None:
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)
        sa, sb = a.state.get(p, {}), b.state.get(q, {})
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_state_dict_round_trip_into_a_fresh_ftp(implementation: str) -> None:
    data = batches(20, torch.float32)
    model = make_net(torch.float32)
    opt = _adamw_ftp(model, implementation)
    for batch in data[:8]:
        train_step(model, opt, batch)
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd) == {"state", "param_groups"}  # torch's own format, nothing beside it
    assert all({"ftp_k", "ftp_mu", "ftp_step"} <= set(g) for g in sd["param_groups"])

    model2 = make_net(torch.float32, seed=7)
    model2.load_state_dict(model.state_dict())
    opt2 = _adamw_ftp(model2, implementation)
    opt2.load_state_dict(sd)
    assert opt2.state is opt2.base_optimizer.state and opt2.param_groups is opt2.base_optimizer.param_groups
    for batch in data[8:]:
        train_step(model, opt, batch)
        train_step(model2, opt2, batch)
    _assert_same_state(opt, opt2, model, model2)


@pytest.mark.parametrize("implementation", ["single", "foreach", "fused"])
def test_k_is_in_every_group_and_a_per_group_k_is_honoured(implementation: str) -> None:
    ours, ref = make_net(), make_net()
    groups = []
    for net in (ours, ref):
        body = [p for n, p in net.named_parameters() if n.startswith(("scale", "conv", "norm"))]
        rest = [p for n, p in net.named_parameters() if n.startswith(("lin", "head"))]
        groups.append([{"params": body, "ftp_k": 0.0}, {"params": rest}])
    base = torch.optim.SGD(groups[0], lr=5e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)
    opt = FTP(base, k=0.3, exclude="head", model=ours, implementation=implementation)  # type: ignore[arg-type]
    assert [g["ftp_k"] for g in opt.param_groups] == [0.0, 0.3]
    assert all(g["ftp_mu"] == 1e-2 and g["ftp_step"] == 0 for g in opt.param_groups)
    ref_base = torch.optim.SGD(groups[1], lr=5e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)
    k_of = {id(p): 0.0 for p in groups[1][0]["params"]}
    ref_opt = ReferenceFTP(ref_base, projected_params(ref), k=0.3, k_of=k_of)
    data = batches(10)
    for step in range(200):
        train_step(ours, opt, data[step % len(data)])
        train_step(ref, ref_opt, data[step % len(data)])
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert torch.allclose(a, b, rtol=0, atol=1e-9), (step, name, (a - b).abs().max().item())
    assert ref_opt.clipped_rows > 0 and ref_opt.free_rows > 0
    assert [g["ftp_step"] for g in opt.param_groups] == [200, 200]


def test_a_group_k_out_of_range_is_refused_naming_the_group() -> None:
    model = make_net()
    groups = [
        {"params": list(model.conv.parameters())},
        {"params": list(model.lin.parameters()), "ftp_k": 2.0},
    ]
    with pytest.raises(ValueError, match=r"Invalid `k` in param group 1 \(`ftp_k`\).*got 2.0.*HINT"):
        FTP(torch.optim.SGD(groups, lr=0.1))


def _move_state_like_lightning(opt: FTP, device: torch.device) -> None:
    """Lightning's ``_optimizer_to_device`` moves ``optimizer.state`` only; on one CPU that is a no-op, so the
    tensors are then replaced by copies, as a move to another device replaces them."""
    _optimizer_to_device(opt, device)
    for state in opt.state.values():
        for key, value in state.items():
            if key != "step" and isinstance(value, torch.Tensor):
                state[key] = value.to(device, copy=True)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_steps_correctly_after_optimizer_state_is_moved(implementation: str) -> None:
    data = batches(16, torch.float32)
    ref, moved = make_net(torch.float32), make_net(torch.float32)
    ref_opt, opt = _adamw_ftp(ref, implementation), _adamw_ftp(moved, implementation)
    for i, batch in enumerate(data):
        if i in (1, 6):  # after the first step, and again once the fused cache (if any) was built
            _move_state_like_lightning(opt, torch.device("cpu"))
        train_step(ref, ref_opt, batch)
        train_step(moved, opt, batch)
    _assert_same_state(ref_opt, opt, ref, moved)
    if implementation == "fused":  # the cache was rebuilt from the moved state[p], which it now backs
        s = ftp_state(opt, moved.lin.weight)
        layout = opt._fused_engine.layout
        assert layout is not None
        assert s["anchor"].untyped_storage().data_ptr() == layout.anchor.untyped_storage().data_ptr()
