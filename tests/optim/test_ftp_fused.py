"""The fused FTP path (flat state buffers; Triton kernels on CUDA, a torch fallback elsewhere) == single path."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lightning_reuse.optim import FTP
from lightning_reuse.optim._ftp_fused import HAS_TRITON
from tests.optim.ftp_reference import ReferenceFTP
from tests.optim.test_ftp import batches, ftp_state, make_base, make_net, projected_params, train_step

CUDA_TRITON = torch.cuda.is_available() and HAS_TRITON
needs_cuda_triton = pytest.mark.skipif(
    not CUDA_TRITON, reason="the Triton kernels need a CUDA device and triton installed"
)


@pytest.mark.parametrize(("base", "k"), [("sgd", 0.3), ("adam", 0.0), ("adamw", 1.0)])
def test_fused_fallback_matches_literal_reference_float64(base: str, k: float) -> None:
    ours, ref = make_net(), make_net()
    opt = FTP(make_base(base, ours.named_parameters()), k=k, exclude="head", implementation="fused")
    ref_opt = ReferenceFTP(make_base(base, ref.parameters()), projected_params(ref), k=k)
    data = batches(10)
    for step in range(200):
        train_step(ours, opt, data[step % len(data)])
        train_step(ref, ref_opt, data[step % len(data)])
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert torch.allclose(a, b, rtol=0, atol=1e-9), (step, name, (a - b).abs().max().item())
    assert ref_opt.clipped_rows > 0 and ref_opt.free_rows > 0
    assert opt._fused_engine.layout is not None  # the fused path really ran


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_fused_fallback_matches_single_fp32_and_state_lives_in_flat_buffers(base: str) -> None:
    a, b = make_net(torch.float32), make_net(torch.float32)
    opt_a = FTP(make_base(base, a.named_parameters()), k=0.3, exclude="head", implementation="single")
    opt_b = FTP(make_base(base, b.named_parameters()), k=0.3, exclude="head", implementation="fused")
    for batch in batches(100, torch.float32):
        train_step(a, opt_a, batch)
        train_step(b, opt_b, batch)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
    for p, q in zip(projected_params(a), projected_params(b)):
        sa, sb = ftp_state(opt_a, p), ftp_state(opt_b, q)
        for key in ("anchor", "direction", "gamma", "exp_avg", "exp_avg_sq"):
            assert torch.allclose(sa[key], sb[key], rtol=1e-5, atol=1e-6), key
    layout = opt_b._fused_engine.layout
    assert layout is not None
    buffers = (layout.anchor, layout.direction, layout.gamma)
    for q in projected_params(b):  # views into the flat buffers, not copies
        s = ftp_state(opt_b, q)
        assert any(
            s["anchor"].untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in buffers
        )
        assert s["direction"].untyped_storage().data_ptr() == layout.direction.untyped_storage().data_ptr()


def test_fused_resume_rebuilds_buffers_and_is_bit_identical() -> None:
    data = batches(30, torch.float32)
    ref = make_net(torch.float32)
    ref_opt = FTP(
        torch.optim.AdamW(ref.named_parameters(), lr=1e-2), exclude="head", k=0.3, implementation="fused"
    )
    for batch in data:
        train_step(ref, ref_opt, batch)
    model = make_net(torch.float32)
    opt = FTP(
        torch.optim.AdamW(model.named_parameters(), lr=1e-2), exclude="head", k=0.3, implementation="fused"
    )
    for batch in data[:12]:
        train_step(model, opt, batch)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, map_location="cpu")
    resumed = make_net(torch.float32, seed=123)
    resumed.load_state_dict(ckpt["model"])
    opt2 = FTP(
        torch.optim.AdamW(resumed.named_parameters(), lr=1e-2), exclude="head", k=0.3, implementation="fused"
    )
    for batch in data[12:14]:  # build buffers first, so loading must replace linked state
        train_step(resumed, opt2, batch)
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    for batch in data[12:]:
        train_step(resumed, opt2, batch)
    for p, q in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    # the same state also loads into the other paths (state_dict holds plain per-parameter tensors)
    opt3 = FTP(torch.optim.AdamW(make_net(torch.float32).named_parameters(), lr=1e-2), exclude="head")
    opt3.load_state_dict(opt2.state_dict())


def test_fused_parameter_without_grad_is_untouched() -> None:
    torch.manual_seed(0)
    x, y = nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(5))
    y2 = nn.Parameter(y.detach().clone())
    opt = FTP(torch.optim.Adam([x, y], lr=0.05), implementation="fused")
    opt_y = FTP(torch.optim.Adam([y2], lr=0.05), implementation="single")
    for step in range(20):
        skip_x = step % 4 == 2 or step == 0  # also: x gets its first gradient at step 2
        opt.zero_grad()
        opt_y.zero_grad()
        ((y - 1).pow(2).sum() + (0 if skip_x else (x + 1).pow(2).sum())).backward()
        (y2 - 1).pow(2).sum().backward()
        before = {k: None if v is None else v.clone() for k, v in ftp_state(opt, x).items()}
        x_before = x.detach().clone()
        opt.step()
        opt_y.step()
        assert torch.allclose(y, y2, rtol=0, atol=1e-6), step
        if skip_x:
            assert torch.equal(x, x_before)
            for key, v in ftp_state(opt, x).items():
                assert (v is None and before[key] is None) or torch.equal(v, before[key]), key
    assert (x - ftp_state(opt, x)["anchor"]).abs().sum() > 0  # x did move once it had gradients


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_fallback_low_precision_parameters(dtype: torch.dtype) -> None:
    a, b = make_net(dtype), make_net(dtype)
    opt_a = FTP(torch.optim.SGD(a.named_parameters(), lr=0.1), exclude="head", implementation="single")
    opt_b = FTP(torch.optim.SGD(b.named_parameters(), lr=0.1), exclude="head", implementation="fused")
    for batch in batches(5, dtype):
        train_step(a, opt_a, batch)
        train_step(b, opt_b, batch)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p.float(), q.float(), rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    assert ftp_state(opt_b, b.lin.weight)["anchor"].dtype == torch.float32


# --- CUDA: the Triton kernels --------------------------------------------------------------------------------
class Mixed(nn.Module):
    """0-D, 1-D, 2-D, 4-D tensors, rows in every kernel bucket (one longer than a block), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.bias = nn.Parameter(torch.randn(300) * 0.1)
        self.short = nn.Parameter(torch.randn(40, 9) * 0.1)
        self.mid = nn.Parameter(torch.randn(8, 3, 5, 50) * 0.1)  # rows of 750
        self.long = nn.Parameter(torch.randn(3, 9000) * 0.01)  # rows longer than the widest block
        self.pos = nn.Parameter(torch.randn(1, 50, 300) * 0.01)  # one row of 15000
        self.head = nn.Linear(9, 3)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.scale * x.sum(), (self.bias * x[:1].repeat(1, 300 // 9 + 1)[0, :300]).sum()]
        parts += [(self.short * x).sum().sin(), self.mid.tanh().mean(), self.long.cos().sum() * 1e-2]
        parts += [self.pos.pow(2).sum(), self.head(x).logsumexp(1).sum()]
        return sum(parts) * x.mean().abs()


@needs_cuda_triton
@pytest.mark.parametrize("k", [0.3, 1.0])
def test_triton_kernels_match_single_path_fp32(k: float) -> None:
    torch.manual_seed(0)
    a = Mixed().cuda()
    b = Mixed().cuda()
    b.load_state_dict(a.state_dict())
    opt_a = FTP(
        torch.optim.AdamW(a.named_parameters(), lr=1e-2), k=k, exclude="head", implementation="single"
    )
    opt_b = FTP(torch.optim.AdamW(b.named_parameters(), lr=1e-2), k=k, exclude="head", implementation="fused")
    g = torch.Generator(device="cuda").manual_seed(1)
    for step in range(60):
        x = torch.randn(40, 9, device="cuda", generator=g)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model.loss(x).backward()
            if step % 7 == 3:
                model.mid.grad = None  # a tensor without gradient this step
            opt.step()
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, rtol=0, atol=1e-6), (step, name, (p - q).abs().max().item())
    layout = opt_b._fused_engine.layout
    assert layout is not None and layout.kernel_ok
    for p, q in zip(projected_params(a), projected_params(b)):
        ga, gb = ftp_state(opt_a, p)["gamma"], ftp_state(opt_b, q)["gamma"]
        assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-8)


def test_fused_is_off_by_default_on_cpu_and_can_be_forced() -> None:
    model = make_net(torch.float32)
    assert not FTP(torch.optim.SGD(model.parameters(), lr=0.1))._fused_wanted()
    assert FTP(torch.optim.SGD(model.parameters(), lr=0.1), implementation="fused")._fused_wanted()


@needs_cuda_triton
def test_fused_is_the_cuda_default_for_fp32_and_not_for_bf16() -> None:
    model = Mixed().cuda()
    assert FTP(torch.optim.AdamW(model.parameters(), lr=1e-3))._fused_wanted()
    assert not FTP(torch.optim.AdamW(model.parameters(), lr=1e-3), implementation="flat")._fused_wanted()
    assert not FTP(torch.optim.AdamW(model.to(torch.bfloat16).parameters(), lr=1e-3))._fused_wanted()
