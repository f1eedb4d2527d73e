"""Cost of one FTP ``optimizer.step()`` against the plain base optimizer, on realistic parameter sets.

Parameter sets are built from the architectures' shapes (no torchvision): ResNet-18 (11.7M parameters),
ResNet-50 (25.6M) and ViT-B/16 (86.6M); the classification head is excluded from FTP, as in fine-tuning.
Gradients are fixed random tensors; only ``step()`` is timed.

- CPU (``--device cpu``): 1 thread, ``time.perf_counter`` per step, the variants interleaved step by step
  (shared machines drift), median; baseline foreach AdamW.
- CUDA (``--device cuda``): CUDA events around every step after a warm-up, median; baseline fused AdamW.
  Also checks that an FTP step makes no host synchronisation (``torch.cuda.set_sync_debug_mode("error")``),
  and (``--e2e``) times a whole ViT-B/16 fine-tuning iteration (bf16 autocast forward + backward + step).

Variants: ``ftp-fused`` (``FTP(..., implementation="fused")``: state in flat buffers, Triton row kernels on CUDA; see
``benchmarks/ftp_step_fused.py`` for its check and timings), ``ftp-flat`` (the CUDA default before the fused path: all tensors concatenated, rows reduced with segment
reductions, a fixed number of kernels), ``ftp-foreach`` (the default on CPU: ``torch._foreach_*`` kernels plus
one row-norm and one dot kernel per tensor), ``ftp-single`` (the readable per-tensor path),
``ftp-compiled`` (experimental, CUDA only: both FTP phases through ``torch.compile``; not shipped), and
``reference`` (CUDA only: the literal per-tensor transcription of the paper's step with one host read per
tensor, from the tests).

Run:  ``python benchmarks/ftp_step.py --device cpu --sets resnet18``  (writes benchmarks/results/ftp_step_cpu.*)
      ``python benchmarks/ftp_step.py --device cuda --sets resnet50,vit_b16 --e2e``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lightning_reuse.optim import FTP
from lightning_reuse.optim import _ftp_functional as F

Shapes = list[tuple[str, tuple[int, ...]]]


def resnet_shapes(blocks: tuple[int, ...], bottleneck: bool, num_classes: int = 1000) -> Shapes:
    shapes: Shapes = [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    in_c = 64
    for s, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        out = width * 4 if bottleneck else width
        for b in range(n):
            pre = f"layer{s + 1}.{b}"
            convs = (
                [(width, in_c, 1, 1), (width, width, 3, 3), (out, width, 1, 1)]
                if bottleneck
                else [(width, in_c, 3, 3), (width, width, 3, 3)]
            )
            for i, shape in enumerate(convs):
                shapes += [(f"{pre}.conv{i + 1}.weight", shape)]
                shapes += [(f"{pre}.bn{i + 1}.weight", (shape[0],)), (f"{pre}.bn{i + 1}.bias", (shape[0],))]
            if b == 0 and in_c != out:
                shapes += [(f"{pre}.downsample.0.weight", (out, in_c, 1, 1))]
                shapes += [(f"{pre}.downsample.1.weight", (out,)), (f"{pre}.downsample.1.bias", (out,))]
            in_c = out
    return [*shapes, ("head.weight", (num_classes, in_c)), ("head.bias", (num_classes,))]


def vit_shapes(
    dim: int = 768, depth: int = 12, mlp: int = 3072, patch: int = 16, tokens: int = 197
) -> Shapes:
    shapes: Shapes = [
        ("patch_embed.weight", (dim, 3, patch, patch)),
        ("patch_embed.bias", (dim,)),
        ("cls_token", (1, 1, dim)),
        ("pos_embed", (1, tokens, dim)),
    ]
    for b in range(depth):
        p = f"blocks.{b}"
        shapes += [(f"{p}.norm1.weight", (dim,)), (f"{p}.norm1.bias", (dim,))]
        shapes += [(f"{p}.attn.qkv.weight", (3 * dim, dim)), (f"{p}.attn.qkv.bias", (3 * dim,))]
        shapes += [(f"{p}.attn.proj.weight", (dim, dim)), (f"{p}.attn.proj.bias", (dim,))]
        shapes += [(f"{p}.norm2.weight", (dim,)), (f"{p}.norm2.bias", (dim,))]
        shapes += [(f"{p}.mlp.fc1.weight", (mlp, dim)), (f"{p}.mlp.fc1.bias", (mlp,))]
        shapes += [(f"{p}.mlp.fc2.weight", (dim, mlp)), (f"{p}.mlp.fc2.bias", (dim,))]
    return [
        *shapes,
        ("norm.weight", (dim,)),
        ("norm.bias", (dim,)),
        ("head.weight", (1000, dim)),
        ("head.bias", (1000,)),
    ]


SETS: dict[str, Callable[[], Shapes]] = {
    "resnet18": lambda: resnet_shapes((2, 2, 2, 2), bottleneck=False),
    "resnet50": lambda: resnet_shapes((3, 4, 6, 3), bottleneck=True),
    "vit_b16": vit_shapes,
}


def make_params(shapes: Shapes, device: str, seed: int = 0) -> list[tuple[str, nn.Parameter]]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for name, shape in shapes:
        p = nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(device))
        p.grad = (torch.randn(shape, generator=g) * 1e-3).to(device)
        out.append((name, p))
    return out


# --- experimental compiled FTP (CUDA): both phases as torch.compile'd functions --------------------------
def _dots(grads: list[torch.Tensor], dirs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.sum(g * d) for g, d in zip(grads, dirs)]


def _project(
    params: list[torch.Tensor], anchors: list[torch.Tensor], gammas: list[torch.Tensor]
) -> list[torch.Tensor]:
    dirs = []
    for p, a, gm in zip(params, anchors, gammas):
        c = p - a
        n = F.row_l1_norm(c)
        g = torch.minimum(torch.clamp(gm, min=F.GAMMA_MIN), n.max())
        gm.copy_(g)
        p.copy_(a + torch.clamp(g / n, max=1.0) * c)
        dirs.append(c / n)
    return dirs


class CompiledFTP(FTP):
    """FTP whose two phases run through ``torch.compile`` (same maths; an experiment, not shipped)."""

    _dots_c = None
    _project_c = None

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if CompiledFTP._dots_c is None:
            CompiledFTP._dots_c = torch.compile(_dots, dynamic=False)
            CompiledFTP._project_c = torch.compile(_project, dynamic=False)
        group = self.param_groups[0]  # one param group in these benchmarks
        if group["ftp_step"] == 0:  # the first step creates FTP's state in state[p]: the shipped step
            return super().step(closure)
        group["ftp_step"] += 1
        t, k, mu = group["ftp_step"], group["ftp_k"], group["ftp_mu"]
        active = [p for p in group["params"] if p.grad is not None and self.is_projected(p)]
        states = [self.state[p] for p in active]
        h = CompiledFTP._dots_c([p.grad for p in active], [s[F.DIRECTION] for s in states])
        bc1, bc2 = 1 - 0.9**t, 1 - 0.999**t
        m, v, gm = ([s[key] for s in states] for key in (F.EXP_AVG, F.EXP_AVG_SQ, F.GAMMA))
        if k != 1.0:
            h_pos = torch._foreach_clamp_min(h, 0.0)
            h = torch._foreach_clamp_max(h, 0.0)
            torch._foreach_add_(h, h_pos, alpha=k)
        torch._foreach_lerp_(m, h, 0.1)
        torch._foreach_mul_(v, 0.999)
        torch._foreach_addcmul_(v, h, h, value=0.001)
        denom = torch._foreach_div(v, bc2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, 1e-8)
        torch._foreach_addcdiv_(gm, m, denom, value=-mu / bc1)
        self.base_optimizer.step()
        dirs = CompiledFTP._project_c(active, [s[F.ANCHOR] for s in states], [s[F.GAMMA] for s in states])
        for s, d in zip(states, dirs):
            s[F.DIRECTION] = d


def build(variant: str, named: list[tuple[str, nn.Parameter]], device: str) -> object:
    fused = device == "cuda"
    base = lambda: torch.optim.AdamW(  # noqa: E731
        named, lr=1e-4, weight_decay=0.05, fused=fused or None, foreach=None if fused else True
    )
    if variant in ("adamw-fused", "adamw-foreach"):
        return base()
    if variant == "ftp-foreach":
        return FTP(base(), exclude="head", implementation="foreach")
    if variant == "ftp-flat":
        return FTP(base(), exclude="head", implementation="flat")
    if variant == "ftp-fused":
        return FTP(base(), exclude="head", implementation="fused")
    if variant == "ftp":  # implementation="auto": fused on CUDA (with Triton), foreach on CPU
        return FTP(base(), exclude="head")
    if variant == "ftp-single":
        return FTP(base(), exclude="head", implementation="single")
    if variant == "ftp-compiled":
        return CompiledFTP(base(), exclude="head")
    if variant == "reference":
        from tests.optim.ftp_reference import ReferenceFTP

        return ReferenceFTP(base(), [p for n, p in named if not n.startswith("head")])
    raise ValueError(variant)


def time_steps(opt: object, device: str, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        opt.step()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)
        ]
        for start, end in events:
            start.record()
            opt.step()
            end.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for _ in range(steps):
            t0 = time.perf_counter()
            opt.step()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_interleaved(variants: list[str], shapes: Shapes, warmup: int, steps: int) -> dict[str, dict]:
    """CPU timing: one step of each variant in turn, ``steps`` rounds; medians per variant."""
    opts = {v: build(v, make_params(shapes, "cpu"), "cpu") for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(warmup + steps):
        for v, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            if i >= warmup:
                times[v].append((time.perf_counter() - t0) * 1e3)
    out = {v: {"median_ms": statistics.median(t), "min_ms": min(t), "steps": steps} for v, t in times.items()}
    for v, m in out.items():
        print(f"{v}: {m}", flush=True)
    return out


def sync_free(opt: object) -> str:
    try:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        opt.step()
        return "no sync"
    except RuntimeError as err:
        return f"SYNC: {str(err).splitlines()[0][:120]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)


class ViTB16(nn.Module):
    """ViT-B/16 from torch modules (224 px, 1000 classes): the end-to-end model of the FTP benchmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 768, 16, 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 768))
        self.pos_embed = nn.Parameter(torch.randn(1, 197, 768) * 0.02)
        layer = nn.TransformerEncoderLayer(
            768, 12, 3072, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(768)
        self.head = nn.Linear(768, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.patch_embed(x).flatten(2).transpose(1, 2)
        z = torch.cat([self.cls_token.expand(len(z), -1, -1), z], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(z))[:, 0])


class _Iteration:
    """One fine-tuning iteration (bf16 autocast forward, backward, optimizer step) with a ``step()`` method."""

    def __init__(
        self, model: nn.Module, variant: str, x: torch.Tensor, y: torch.Tensor, opt: object = None
    ) -> None:
        self.model, self.x, self.y = model, x, y
        self.opt = opt if opt is not None else build(variant, list(model.named_parameters()), "cuda")

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


def e2e(
    device: str,
    warmup: int,
    steps: int,
    batch: int,
    variants: tuple[str, ...] = ("adamw-fused", "ftp-flat", "ftp-foreach"),
) -> dict[str, float]:
    out = {}
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    for variant in variants:
        torch.manual_seed(0)
        model = ViTB16().to(device)
        try:
            out[variant] = statistics.median(
                time_steps(_Iteration(model, variant, x, y), device, warmup, steps)
            )
        except Exception as err:
            print(f"e2e {variant}: FAILED {err!r}"[:400], flush=True)
        del model
        torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sets", default="resnet18")
    parser.add_argument("--variants", default=None, help="comma list; default depends on the device")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--e2e", action="store_true")
    parser.add_argument("--e2e-batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--profile", default=None, help="set:variant to profile 5 steps of (prints the top ops)"
    )
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    warmup = args.warmup or (10 if cuda else 3)
    steps = args.steps or (100 if cuda else 15)
    default = (
        "adamw-fused,ftp-flat,ftp-foreach,ftp-single,reference"
        if cuda
        else "adamw-foreach,ftp-foreach,ftp-flat,ftp-single"
    )
    variants = (args.variants or default).split(",")
    hardware = (
        torch.cuda.get_device_name()
        if cuda
        else f"{os.cpu_count()}-core CPU ({platform.machine()}), 1 thread"
    )
    out = args.out or Path(f"benchmarks/results/ftp_step_{args.device}")
    result: dict = {"hardware": hardware, "torch": torch.__version__, "sets": {}}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        lines = [f"FTP step time ({hardware}; median ms per `optimizer.step()`, ratio to the baseline)", ""]
        lines += [
            "| parameter set | params | variant | ms/step | ratio | host sync |",
            "|---|---|---|---|---|---|",
        ]
        for set_name, r in result["sets"].items():
            base_ms = r["variants"].get(variants[0], {}).get("median_ms")
            for v, m in r["variants"].items():
                ratio = f"{m['median_ms'] / base_ms:.2f}x" if base_ms else "-"
                lines.append(
                    f"| {set_name} | {r['params'] / 1e6:.1f}M | {v} | {m['median_ms']:.2f} | {ratio} | {m.get('sync', '-')} |"
                )
        if "e2e" in result:
            e = result["e2e"]
            base_e = e.get("adamw-fused", float("nan"))
            cells = ", ".join(
                f"{v} {ms:.1f} ms ({(ms / base_e - 1) * 100:+.1f}%)"
                for v, ms in e.items()
                if v != "adamw-fused"
            )
            lines += [
                "",
                f"End-to-end ViT-B/16 iteration (bf16 autocast fwd+bwd+step, batch {args.e2e_batch}): "
                f"AdamW fused {base_e:.1f} ms; {cells}.",
            ]
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    for set_name in [x for x in args.sets.split(",") if x and x != "none"]:
        shapes = SETS[set_name]()
        n_params = sum(torch.Size(s).numel() for _, s in shapes)
        entry = result["sets"][set_name] = {"params": n_params, "tensors": len(shapes), "variants": {}}
        if not cuda:  # shared CPUs: interleave the variants step by step so load drifts hit all alike
            entry["variants"] = time_interleaved(variants, shapes, warmup, steps)
            save()
            continue
        for variant in variants:
            named = make_params(shapes, args.device)
            t0 = time.perf_counter()
            try:
                opt = build(variant, named, args.device)
                n = 10 if variant == "reference" else steps
                times = time_steps(opt, args.device, 2 if variant == "reference" else warmup, n)
            except Exception as err:  # an experimental variant may fail to compile: record, go on
                entry["variants"][variant] = {"median_ms": float("nan"), "error": repr(err)[:300]}
                print(f"{set_name} {variant}: FAILED {err!r}"[:400], flush=True)
                continue
            m = {
                "median_ms": statistics.median(times),
                "min_ms": min(times),
                "steps": n,
                "wall_s": time.perf_counter() - t0,
            }
            if variant.startswith("ftp"):
                m["sync"] = sync_free(opt)
            entry["variants"][variant] = m
            print(f"{set_name} {variant}: {m}", flush=True)
            del opt, named
            torch.cuda.empty_cache()
        save()
    if args.profile:
        set_name, variant = args.profile.split(":")
        opt = build(variant, make_params(SETS[set_name](), args.device), args.device)
        time_steps(opt, args.device, 3, 1)
        acts = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if cuda else []
        )
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(5):
                opt.step()
            if cuda:
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=50))
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50)
        )
        del opt
    if args.e2e and cuda:
        result["e2e"] = e2e(args.device, 5, 20, args.e2e_batch)
        save()


if __name__ == "__main__":
    main()
