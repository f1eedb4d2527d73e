"""The fused FTP path on CUDA: correctness against the single-tensor path, then step timings, in one run.

1. Check: on the ResNet-50 and ViT-B/16 parameter sets (head excluded), FTP with ``implementation="fused"``
   (flat state buffers, Triton row kernels) against the readable single-tensor path
   (``implementation="single"``), both over the same fused AdamW, fresh random gradients every step, one
   tensor without gradient in one step; the
   largest parameter difference must stay <= 1e-6 (fp32).
2. Timings (CUDA events, warm-up, median of many steps; see ``benchmarks/ftp_step.py``): fused AdamW,
   FTP flat (the current CUDA default), FTP foreach and FTP fused, with the host time per step and a
   host-synchronisation check; a short kernel profile of the fused step; the end-to-end ViT-B/16
   fine-tuning iteration (bf16 autocast forward + backward + step).

Run:  ``PYTHONPATH=. python3 benchmarks/ftp_step_fused.py --out benchmarks/results/ftp_step_cuda_fused``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch

from benchmarks.ftp_step import SETS, build, e2e, make_params, sync_free, time_steps
from lightning_reuse.optim import FTP, _ftp_fused
from lightning_reuse.optim._ftp_functional import row_l1_norm

TOL = 1e-6
DEVICE = "cuda"


@torch.no_grad()
def check(set_name: str, steps: int = 8, k: float = 0.3) -> dict:
    """Fused vs single-tensor FTP on one parameter set: largest differences after ``steps`` steps."""
    shapes = SETS[set_name]()
    named_a, named_b = make_params(shapes, DEVICE), make_params(shapes, DEVICE)
    opts = [
        FTP(
            torch.optim.AdamW(named, lr=1e-3, weight_decay=0.05, fused=DEVICE == "cuda"),
            exclude="head",
            k=k,
            **kw,
        )
        for named, kw in ((named_a, {"implementation": "single"}), (named_b, {"implementation": "fused"}))
    ]
    g = torch.Generator(device=DEVICE).manual_seed(1)
    drop = len(named_a) // 2
    for step in range(steps):
        for i, ((_, pa), (_, pb)) in enumerate(zip(named_a, named_b)):
            grad = torch.randn(pa.shape, device=DEVICE, generator=g) * 1e-3
            pa.grad, pb.grad = (None, None) if (step == steps // 2 and i == drop) else (grad, grad.clone())
        for opt in opts:
            opt.step()
    param_diff = max(float((pa - pb).abs().max()) for (_, pa), (_, pb) in zip(named_a, named_b))
    pairs = [
        (pa, pb) for (_, pa), (_, pb) in zip(named_a, named_b) if "ftp_anchor" in opts[0].state.get(pa, {})
    ]
    states = [(opts[0].state[pa], opts[1].state[pb]) for pa, pb in pairs]
    gamma_rel = max(
        float(((sa["ftp_gamma"] - sb["ftp_gamma"]).abs() / sa["ftp_gamma"].abs()).max()) for sa, sb in states
    )
    dir_diff = max(float((sa["ftp_direction"] - sb["ftp_direction"]).abs().max()) for sa, sb in states)
    clipped = sum(  # rows whose displacement sits on the radius: the projection was active
        int((row_l1_norm(sa["ftp_anchor"] - pb) >= sa["ftp_gamma"] * (1 - 1e-4)).sum())
        for (sa, _), (_, pb) in zip(states, pairs)
    )
    layout = opts[1]._fused_engine.layout
    kernels = bool(layout is not None and layout.kernel_ok)
    out = {
        "steps": steps,
        "k": k,
        "max_param_abs_diff": param_diff,
        "max_gamma_rel_diff": gamma_rel,
        "max_direction_abs_diff": dir_diff,
        "rows_at_radius": clipped,
        "triton_kernels_used": kernels,
        "passed": param_diff <= TOL and (kernels or DEVICE != "cuda"),
    }
    print(f"check {set_name}: {out}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="resnet50,vit_b16")
    parser.add_argument("--variants", default="adamw-fused,ftp-flat,ftp-foreach,ftp-fused,ftp")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ftp_step_cuda_fused"))
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="exercise the script on CPU (torch fallback)"
    )
    args = parser.parse_args()
    if args.cpu_dry_run:
        global DEVICE
        DEVICE = "cpu"
        result = {"hardware": "cpu", "torch": torch.__version__, "check": {}}
        for set_name in args.sets.split(","):
            result["check"][set_name] = check(set_name, steps=3)
        return
    triton_version = getattr(_ftp_fused.triton, "__version__", None)
    result: dict = {
        "hardware": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton_version,
        "check": {},
        "sets": {},
    }
    variants = args.variants.split(",")

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        lines = [
            f"FTP step time, fused path ({result['hardware']}, torch {result['torch']}, triton {triton_version}; "
            "median ms per `optimizer.step()` from CUDA events, ratio to fused AdamW; host = CPU time per step)",
            "",
            "| parameter set | params | variant | ms/step | ratio | host ms/step | host sync |",
            "|---|---|---|---|---|---|---|",
        ]
        for set_name, r in result["sets"].items():
            base_ms = r["variants"].get("adamw-fused", {}).get("median_ms")
            for v, m in r["variants"].items():
                ratio = f"{m['median_ms'] / base_ms:.2f}x" if base_ms else "-"
                lines.append(
                    f"| {set_name} | {r['params'] / 1e6:.1f}M | {v} | {m['median_ms']:.3f} | {ratio} | "
                    f"{m.get('host_ms', float('nan')):.3f} | {m.get('sync', '-')} |"
                )
        lines += ["", "Check, fused vs single-tensor path (fp32, same gradients):", ""]
        for set_name, c in result["check"].items():
            lines.append(f"- {set_name}: {c}")
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
                f"End-to-end ViT-B/16 iteration (bf16 autocast fwd+bwd+step, batch 64): AdamW fused {base_e:.1f} ms; "
                f"{cells}.",
            ]
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    set_names = [s for s in args.sets.split(",") if s]
    for set_name in set_names:
        try:
            result["check"][set_name] = check(set_name)
        except Exception as err:
            traceback.print_exc()
            result["check"][set_name] = {"passed": False, "error": repr(err)[:500]}
        torch.cuda.empty_cache()
        save()
    for set_name in set_names:
        shapes = SETS[set_name]()
        n_params = sum(torch.Size(s).numel() for _, s in shapes)
        entry = result["sets"][set_name] = {"params": n_params, "tensors": len(shapes), "variants": {}}
        for variant in variants:
            named = make_params(shapes, "cuda")
            try:
                opt = build(variant, named, "cuda")
                times = time_steps(opt, "cuda", args.warmup, args.steps)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(20):
                    opt.step()
                host_ms = (time.perf_counter() - t0) / 20 * 1e3
                torch.cuda.synchronize()
            except Exception as err:
                traceback.print_exc()
                entry["variants"][variant] = {"median_ms": float("nan"), "error": repr(err)[:500]}
                continue
            m = {"median_ms": statistics.median(times), "min_ms": min(times), "steps": args.steps}
            m["host_ms"] = host_ms
            if variant.startswith("ftp"):
                m["sync"] = sync_free(opt)
            entry["variants"][variant] = m
            print(f"{set_name} {variant}: {m}", flush=True)
            if variant == "ftp-fused":
                try:
                    with torch.profiler.profile(
                        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                    ) as prof:
                        for _ in range(5):
                            opt.step()
                        torch.cuda.synchronize()
                    print(
                        prof.key_averages().table(
                            sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=40
                        ),
                        flush=True,
                    )
                except Exception:
                    traceback.print_exc()
            del opt, named
            torch.cuda.empty_cache()
        save()
    if not args.no_e2e:
        try:
            result["e2e"] = e2e("cuda", 5, 20, 64, variants=("adamw-fused", "ftp-flat", "ftp-fused"))
        except Exception:
            traceback.print_exc()
        save()
    print(args.out.with_suffix(".md").read_text(), flush=True)


if __name__ == "__main__":
    main()
