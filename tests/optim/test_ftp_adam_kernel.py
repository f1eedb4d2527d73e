"""The one-pass Adam+FTP kernel (Adam/AdamW base) against the readable single-tensor path.

Runs on CUDA with Triton, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, slow: for
debugging the kernels without a GPU). Elsewhere the module is skipped, with the reason.
"""

from __future__ import annotations

import io

import pytest
import torch

from lightning_reuse.optim import FTP
from lightning_reuse.optim._ftp_kernels import HAS_TRITON, INTERPRET
from tests.optim.ftp_reference import ReferenceFTP
from tests.optim.test_ftp_fused import Mixed

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not (HAS_TRITON and (DEVICE == "cuda" or INTERPRET)),
    reason="the one-pass Adam kernel needs triton and a CUDA device (or TRITON_INTERPRET=1 to run it on CPU)",
)
STEPS = 40 if DEVICE == "cuda" else 8


def _pair(
    base: str, k: float, seed: int = 0, ftp_kw: dict | None = None, one_pass: bool = True, **base_kw: object
) -> tuple[list[Mixed], list[FTP]]:
    """Two identical models; FTP over the same base: single-tensor path and fused (one-pass) path."""
    torch.manual_seed(seed)
    a = Mixed().to(DEVICE)
    b = Mixed().to(DEVICE)
    b.load_state_dict(a.state_dict())
    cls = torch.optim.AdamW if base == "adamw" else torch.optim.Adam
    opts = []
    for model, impl in ((a, "single"), (b, "fused")):
        body = [p for n, p in model.named_parameters() if n not in ("bias", "scale")]
        groups = [  # two groups with their own lr and weight decay (layer-wise schedules)
            {"params": body, "lr": 1e-2, "weight_decay": 0.05},
            {"params": [model.bias, model.scale], "lr": 3e-3, "weight_decay": 0.0},
        ]
        opts.append(
            FTP(
                cls(groups, **base_kw),
                k=k,
                exclude=[model.head.weight, model.head.bias],
                implementation=impl,
                **(ftp_kw or {}),
            )
        )
    opts[1]._fused_engine.one_pass = one_pass
    return [a, b], opts


def _train(models: list[Mixed], opts: list[FTP], steps: int, seed: int = 1) -> None:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    for step in range(steps):
        x = torch.randn(40, 9, device=DEVICE, generator=g)
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model.loss(x).backward()
            if step % 7 == 3:
                model.mid.grad = None  # a tensor without gradient this step
            opt.step()


def _assert_same(models: list[Mixed], opts: list[FTP], atol: float) -> None:
    a, b = models
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=atol), (name, (p - q).abs().max().item())
        sa, sb = opts[0].state[p], opts[1].state[q]
        assert float(sa["step"]) == float(sb["step"]), name  # Adam's counters advanced alike
        for key in ("exp_avg", "exp_avg_sq"):
            # gradients follow parameters that differ by rounding: 1e-8 seen on CUDA
            assert torch.allclose(sa[key], sb[key], rtol=1e-4, atol=1e-7), (name, key)
        if "ftp_gamma" in sa:
            # the radius Adam amplifies the summation order of h (chunks vs whole tensors): 2e-5 seen
            assert torch.allclose(sa["ftp_gamma"], sb["ftp_gamma"], rtol=1e-4, atol=1e-8), name


@pytest.mark.parametrize(("base", "k"), [("adamw", 0.3), ("adam", 1.0)])
def test_one_pass_matches_single_path_fp32(base: str, k: float) -> None:
    models, opts = _pair(base, k, fused=True)
    _train(models, opts, STEPS)
    _assert_same(models, opts, atol=1e-6)
    layout = opts[1]._fused_engine.layout
    assert layout is not None and layout.adam is not None and layout.adam.state_ok  # the kernel really ran
    assert opts[1].state_dict()["param_groups"][0]["ftp_step"] == STEPS


def test_one_pass_keeps_the_projection_invariant_and_matches_the_reference_radius() -> None:
    torch.manual_seed(0)
    model = Mixed().to(DEVICE)
    ref_model = Mixed().to(DEVICE)
    ref_model.load_state_dict(model.state_dict())
    base = torch.optim.AdamW(model.named_parameters(), lr=1e-2, fused=True)
    opt = FTP(base, exclude="head", k=0.5, implementation="fused")
    opt._fused_engine.one_pass = True
    projected = [p for n, p in ref_model.named_parameters() if not n.startswith("head")]
    ref = ReferenceFTP(torch.optim.AdamW(ref_model.parameters(), lr=1e-2), projected, k=0.5)
    _train([model, ref_model], [opt, ref], STEPS)
    assert ref.clipped_rows > 0  # the projection was active
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-5)
    for name, p in model.named_parameters():
        if not name.startswith("head"):
            s = opt.state[p]
            rows = (p - s["ftp_anchor"]).reshape(p.shape[0] if p.dim() >= 2 else 1, -1).abs().sum(1)
            assert bool((rows <= s["ftp_gamma"] * (1 + 1e-5) + 1e-7).all()), name


def test_one_pass_resume_is_bit_identical() -> None:
    models, opts = _pair("adamw", 0.3, fused=True)
    uninterrupted, opt_u = models[1], opts[1]
    _train([uninterrupted], [opt_u], 12)
    buf = io.BytesIO()
    torch.save({"model": uninterrupted.state_dict(), "opt": opt_u.state_dict()}, buf)
    _train([uninterrupted], [opt_u], 6, seed=2)

    buf.seek(0)
    ckpt = torch.load(buf, map_location="cpu")
    (_, resumed), (_, opt_r) = _pair("adamw", 0.3, seed=5, fused=True)
    resumed.load_state_dict(ckpt["model"])
    opt_r.load_state_dict(ckpt["opt"])
    _train([resumed], [opt_r], 6, seed=2)
    for p, q in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt_r._fused_engine.layout.adam is not None


def test_other_adam_options_use_the_two_pass_kernels() -> None:
    models, opts = _pair("adamw", 0.3, fused=True, amsgrad=True)
    _train(models, opts, 6)
    _assert_same(models, opts, atol=1e-6)
    layout = opts[1]._fused_engine.layout
    assert layout is not None and layout.kernel_ok and layout.adam is None


def test_one_pass_is_the_default_with_a_fused_adam_base_and_two_passes_on_request() -> None:
    models, opts = _pair("adamw", 0.3, fused=True)
    opts[1]._fused_engine = type(opts[1]._fused_engine)()  # a fresh engine: its defaults
    _train(models, opts, 3)
    layout = opts[1]._fused_engine.layout
    assert layout is not None and layout.kernel_ok and layout.adam is not None  # the one-pass kernel ran
    models, opts = _pair("adamw", 0.3, fused=True, one_pass=False)
    _train(models, opts, 6)
    _assert_same(models, opts, atol=1e-6)
    layout = opts[1]._fused_engine.layout
    assert layout is not None and layout.kernel_ok and layout.adam is None


@pytest.mark.parametrize("one_pass", [True, False])
def test_kernels_with_a_bf16_direction_match_the_single_path(one_pass: bool) -> None:
    """Both kernel paths store the direction rounded to bf16 and read it back as the single path does."""
    models, opts = _pair(
        "adamw", 0.3, ftp_kw={"direction_dtype": torch.bfloat16}, one_pass=one_pass, fused=True
    )
    _train(models, opts, STEPS)
    _assert_same(models, opts, atol=1e-6)
    layout = opts[1]._fused_engine.layout
    assert layout is not None and layout.kernel_ok and (layout.adam is not None) == one_pass
    assert layout.direction.dtype == torch.bfloat16
    a, b = models
    d_single = opts[0].state[a.mid]["ftp_direction"]
    d_kernel = opts[1].state[b.mid]["ftp_direction"]
    assert d_kernel.dtype == d_single.dtype == torch.bfloat16
    # the directions come from parameters equal to ~1e-8: most entries round alike
    assert float((d_kernel == d_single).double().mean()) > 0.99


#: one tensor per row-length bucket of the one-pass kernel (<= 128, 512, 1024, 4096, 8192, longer: looping)
WIDE_SHAPES = [(5, 100), (3, 300), (2, 700), (2, 2000), (2, 5000), (2, 9000), (40,)]


@pytest.mark.parametrize("exact", [False, True])
def test_one_pass_covers_every_row_bucket(exact: bool) -> None:
    torch.manual_seed(0)
    sets = [[torch.nn.Parameter(torch.randn(s, device=DEVICE) * 0.1) for s in WIDE_SHAPES] for _ in range(2)]
    for p, q in zip(*sets):
        q.data.copy_(p.data)
    opts = [
        FTP(torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05, fused=True), k=0.3, implementation=impl)
        for params, impl in zip(sets, ("single", "fused"))
    ]
    opts[1]._fused_engine.exact_math = exact
    g = torch.Generator(device=DEVICE).manual_seed(1)
    for _ in range(6 if DEVICE == "cpu" else 20):
        for p, q in zip(*sets):
            grad = torch.randn(p.shape, device=DEVICE, generator=g) * 0.1 + 0.05  # a drift: rows get clipped
            p.grad, q.grad = grad, grad.clone()
        for opt in opts:
            opt.step()
    layout = opts[1]._fused_engine.layout
    assert layout is not None and layout.adam is not None
    assert len(layout.adam.buckets) == 6  # every bucket, the looping one included, was launched
    for shape, p, q in zip(WIDE_SHAPES, *sets):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), (shape, (p - q).abs().max().item())


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("one_pass", [True, False])
def test_kernel_step_replays_in_a_cuda_graph(one_pass: bool) -> None:
    """Capture one step, replay it with new gradients copied in: equal to eager steps; counters follow."""
    torch.manual_seed(0)
    models = [Mixed().to(DEVICE), Mixed().to(DEVICE)]
    models[1].load_state_dict(models[0].state_dict())
    eager, graphed = models
    opts = [
        FTP(
            torch.optim.AdamW(m.named_parameters(), lr=1e-2, fused=True, capturable=True),
            k=0.3,
            exclude="head",
        )
        for m in models
    ]
    opts[1]._fused_engine.one_pass = one_pass
    g = torch.Generator(device=DEVICE).manual_seed(3)
    xs = [torch.randn(40, 9, device=DEVICE, generator=g) for _ in range(12)]
    for model, opt in zip(models, opts):  # the same warm-up steps, eagerly
        for x in xs[:3]:
            opt.zero_grad(set_to_none=False)
            model.loss(x).backward()
            opt.step()
    static_grads = [p.grad for p in graphed.parameters()]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opts[1].step()
    torch.cuda.current_stream().wait_stream(stream)
    # the capture ran no kernel: replay it for steps 4..12 with the eager model's gradients
    for x in xs[3:]:
        opts[0].zero_grad(set_to_none=False)
        eager.loss(x).backward()
        graphed.zero_grad(set_to_none=False)
        graphed.loss(x).backward()
        assert all(p.grad is s for p, s in zip(graphed.parameters(), static_grads))
        opts[0].step()
        graph.replay()
    torch.cuda.synchronize()
    for p, q in zip(eager.parameters(), graphed.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
    sd = opts[1].state_dict()  # the device step counter is copied back
    assert sd["param_groups"][0]["ftp_step"] == opts[0].param_groups[0]["ftp_step"] == 12
    assert float(opts[1].state[graphed.short]["step"]) == 12.0
