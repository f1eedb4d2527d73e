"""FTP step on one GPU: the one-pass Adam+FTP kernel against fused AdamW, with CUDA-graph replay and plain calls.

All in one process, on the ViT-B/16 and ResNet-50 parameter sets (``benchmarks/ftp_step.py``; head excluded):

Variants: ``ftp-2pass`` (the projection after the base optimizer's own step), ``ftp-1pass`` (the default with a
fused or capturable Adam/AdamW base: Adam and the projection in one kernel, fast math, rows of up to 1024 one
per program), ``-exact`` (IEEE square root and divisions), ``-4rows`` (the earlier layout: rows of 129-1024 four
to a 2-D block), ``-bf16dir`` (``direction_dtype=torch.bfloat16``).

1. check: each FTP variant against the readable single-tensor path (with the same direction dtype) after 8 steps (fp32, fresh gradients,
   a tensor without gradient in one step): largest parameter difference, <= 1e-6 to pass; whether the
   one-pass kernel ran; for the graph mode, 10 replayed steps against 10 eager steps;
2. timings, ``rounds`` rounds over all variants (alternating order) so drift hits every variant alike:
   - ``graph``: ``GRAPH_STEPS`` steps captured in one CUDA graph, replayed (CUDA events around each replay);
     GPU time per step with no launch gaps. Bases are built with ``capturable=True``;
   - ``eager``: plain ``step()`` calls timed with CUDA events (what a training loop without graphs sees),
     and the host (CPU) time per step;
   - the authors' per-tensor algorithm (``reference``: one host read per tensor), eager only: it cannot be
     captured;
3. ``ratio_vs_fused_adamw``: a variant's median GPU time over fused AdamW's, same set, same mode;
   ``bytes_per_param`` is the design's device-memory traffic per fp32 parameter and ``gbps`` the rate it
   implies at the measured time; ``copy_gbps`` is a device-to-device copy measured in the same process;
4. end to end: the ViT-B/16 fine-tuning iteration (batch 64, bf16 autocast forward + backward + step, plain
   calls), ``repeats`` repeats of the median of 20 iterations per variant, in alternating order.

Run:  ``PYTHONPATH=. python3 benchmarks/ftp_step_graphs.py --out benchmarks/results/ftp_step_h200``
Writes ``<out>.json`` (a ``rows`` list: set, variant, mode, gpu_ms, ratio_vs_fused_adamw, ...) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch

from benchmarks.ftp_step import SETS, ViTB16, _Iteration, make_params
from lightning_reuse.optim import FTP
from lightning_reuse.optim import _ftp_kernels as K
from lightning_reuse.optim._ftp_fused import _ADAM_BUCKETS as ADAM_BUCKETS

GRAPH_STEPS = 10


def _four_rows(buckets: tuple) -> tuple:
    """The earlier layout: rows of 129-1024 four to a 2-D block (8 warps for 513-1024), for comparison."""
    return tuple((u, b, 4 if u in (512, 1024) else r, 8 if u == 1024 else w) for u, b, r, w in buckets)


#: FTP variants: (one pass, exact math, the one-pass buckets, direction dtype, device bytes per fp32 parameter)
FTP_VARIANTS = {
    "ftp-2pass": (False, False, ADAM_BUCKETS, None, 52),
    "ftp-2pass-bf16dir": (False, False, ADAM_BUCKETS, torch.bfloat16, 48),
    "ftp-1pass": (True, False, ADAM_BUCKETS, None, 44),
    "ftp-1pass-exact": (True, True, ADAM_BUCKETS, None, 44),
    "ftp-1pass-4rows": (True, False, _four_rows(ADAM_BUCKETS), None, 44),
    "ftp-1pass-bf16dir": (True, False, ADAM_BUCKETS, torch.bfloat16, 40),
}
BYTES = {"adamw-fused": 28} | {name: spec[4] for name, spec in FTP_VARIANTS.items()}
VARIANTS = ("adamw-fused", *FTP_VARIANTS, "reference")
E2E_VARIANTS = ("adamw-fused", "ftp-2pass", "ftp-1pass", "ftp-1pass-bf16dir")


def variant_spec(variant: str) -> tuple:
    """A variant's spec; ``name@1024w2+4096w16`` = ``name`` with 2 warps for the 1024 bucket, 16 for the 4096 one."""
    name, _, mods = variant.partition("@")
    one_pass, exact, buckets, direction_dtype, nbytes = FTP_VARIANTS[name]
    for mod in filter(None, mods.split("+")):
        upper, warps = (int(x) for x in mod.split("w"))
        buckets = tuple((u, b, r, warps if u == upper else w) for u, b, r, w in buckets)
    return one_pass, exact, buckets, direction_dtype, nbytes


def build(variant: str, named: list, capturable: bool) -> object:
    base = torch.optim.AdamW(named, lr=1e-4, weight_decay=0.05, fused=True, capturable=capturable)
    if variant == "adamw-fused":
        return base
    if variant == "reference":
        from tests.optim.ftp_reference import ReferenceFTP

        return ReferenceFTP(base, [p for n, p in named if not n.startswith("head")])
    one_pass, exact, buckets, direction_dtype, _ = variant_spec(variant)
    opt = FTP(base, exclude="head", implementation="fused", direction_dtype=direction_dtype)
    opt._fused_engine.one_pass = one_pass
    opt._fused_engine.exact_math = exact  # else approximate sqrt / division (the default)
    opt._fused_engine.adam_buckets = buckets
    return opt


def new_grads(named: list, g: torch.Generator) -> None:
    for _, p in named:
        p.grad.copy_(torch.randn(p.shape, device="cuda", generator=g) * 1e-3)


@torch.no_grad()
def check(set_name: str, steps: int = 8) -> dict:
    """Every FTP variant against the single-tensor path; graph replay against eager steps."""
    shapes = SETS[set_name]()
    out: dict = {}
    checks = [(v, False) for v in FTP_VARIANTS] + [("ftp-1pass-graph", True), ("ftp-2pass-graph", True)]
    for variant, capturable in checks:
        ref_named, named = make_params(shapes, "cuda"), make_params(shapes, "cuda")
        ref = FTP(
            torch.optim.AdamW(ref_named, lr=1e-3, weight_decay=0.05, fused=True), exclude="head", k=0.3,
            implementation="single", direction_dtype=FTP_VARIANTS[variant.replace("-graph", "")][3],
        )  # fmt: skip
        opt = build(variant.replace("-graph", ""), named, capturable)
        opt.param_groups[0]["lr"], opt.param_groups[0]["ftp_k"] = 1e-3, 0.3
        g = torch.Generator(device="cuda").manual_seed(1)
        drop = len(named) // 2
        graph = None
        for step in range(steps + (GRAPH_STEPS if capturable else 0)):
            grads = [torch.randn(p.shape, device="cuda", generator=g) * 1e-3 for _, p in named]
            for i, ((_, p), (_, q)) in enumerate(zip(ref_named, named)):
                if step == steps // 2 and i == drop and not capturable:
                    p.grad = q.grad = None
                else:
                    p.grad = grads[i]
                    if q.grad is None:
                        q.grad = grads[i].clone()
                    else:
                        q.grad.copy_(grads[i])
            ref.step()
            if capturable and step >= 3:  # warm-up steps eagerly, then one captured step, replayed
                if graph is None:
                    graph = capture(opt, 1)
                graph.replay()
            else:
                opt.step()
        torch.cuda.synchronize()
        layout = opt._fused_engine.layout
        out[variant] = {
            "steps": steps + (GRAPH_STEPS if capturable else 0),
            "max_param_abs_diff": max(float((p - q).abs().max()) for (_, p), (_, q) in zip(ref_named, named)),
            "one_pass_kernel": bool(layout is not None and layout.adam is not None),
            "two_pass_kernels": bool(layout is not None and layout.kernel_ok),
        }
        out[variant]["passed"] = out[variant]["max_param_abs_diff"] <= 1e-6
        print(f"check {set_name} {variant}: {out[variant]}", flush=True)
        del ref, opt, named, ref_named
        torch.cuda.empty_cache()
    return out


def capture(opt: object, steps: int) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        for _ in range(steps):
            opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    return graph


def time_graph(graph: torch.cuda.CUDAGraph, replays: int) -> list[float]:
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(replays)
    ]
    graph.replay()
    torch.cuda.synchronize()
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / GRAPH_STEPS for s, e in events]


def time_eager(opt: object, steps: int) -> tuple[list[float], float]:
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)
    ]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start, end in events:
        start.record()
        opt.step()
        end.record()
    host_ms = (time.perf_counter() - t0) / steps * 1e3
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events], host_ms


def copy_gbps() -> float:
    x = torch.empty(1 << 28, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    return 2 * x.numel() * 4 * 20 / (start.elapsed_time(end) * 1e-3) / 1e9


def measure_set(
    set_name: str, rounds: int, replays: int, eager_steps: int, variants: tuple, modes: tuple
) -> list[dict]:
    shapes = SETS[set_name]()
    n_params = sum(torch.Size(s).numel() for _, s in shapes)
    times: dict[tuple[str, str], list[float]] = {}
    host: dict[str, list[float]] = {}
    g = torch.Generator(device="cuda").manual_seed(0)
    for r in range(rounds):
        order = variants if r % 2 == 0 else tuple(reversed(variants))
        for variant in order:
            for mode in modes:
                if variant == "reference" and (mode == "graph" or r > 0):
                    continue  # host reads: not capturable; ~100 ms a step, one round is enough
                named = make_params(shapes, "cuda")
                try:
                    opt = build(variant, named, capturable=mode == "graph")
                    for _ in range(3):  # creates the state, compiles the kernels
                        new_grads(named, g)
                        opt.step()
                    if mode == "graph":
                        ms = time_graph(capture(opt, GRAPH_STEPS), replays)
                    else:
                        n = 5 if variant == "reference" else eager_steps
                        ms, host_ms = time_eager(opt, n)
                        host.setdefault(variant, []).append(host_ms)
                    times.setdefault((variant, mode), []).extend(ms)
                except Exception as err:
                    traceback.print_exc()
                    times.setdefault((variant, mode), [])
                    print(f"{set_name} {variant} {mode}: FAILED {err!r}"[:300], flush=True)
                del named
                torch.cuda.empty_cache()
    rows = []
    for (variant, mode), ms in times.items():
        if not ms:
            continue
        base = times.get(("adamw-fused", mode)) or [float("nan")]
        row = {
            "set": set_name,
            "params": n_params,
            "tensors": len(shapes),
            "variant": variant,
            "mode": mode,
            "gpu_ms": statistics.median(ms),
            "gpu_ms_min": min(ms),
            "samples": len(ms),
            "ratio_vs_fused_adamw": statistics.median(ms) / statistics.median(base),
        }
        if mode == "eager":
            row["host_ms"] = statistics.median(host[variant])
        nbytes = BYTES["adamw-fused"] if variant == "adamw-fused" else None
        if variant.partition("@")[0] in FTP_VARIANTS:
            nbytes = variant_spec(variant)[4]
        if nbytes:
            row["bytes_per_param"] = nbytes
            row["gbps"] = nbytes * n_params / (row["gpu_ms"] * 1e-3) / 1e9
        rows.append(row)
        print(f"{set_name} {variant} {mode}: {row}", flush=True)
    return rows


def end_to_end(repeats: int, batch: int = 64) -> dict:
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    variants = E2E_VARIANTS
    runs: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(repeats):
        for variant in variants if r % 2 == 0 else tuple(reversed(variants)):
            torch.manual_seed(0)
            model = ViTB16().cuda()
            it = _Iteration(model, variant, x, y, opt=build(variant, list(model.named_parameters()), False))
            for _ in range(5):
                it.step()
            torch.cuda.synchronize()
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                for _ in range(20)
            ]
            for start, end in events:
                start.record()
                it.step()
                end.record()
            torch.cuda.synchronize()
            runs[variant].append(statistics.median(s.elapsed_time(e) for s, e in events))
            del it, model
            torch.cuda.empty_cache()
    base = statistics.mean(runs["adamw-fused"])
    out = {"batch": batch, "repeats": repeats, "iterations_per_repeat": 20, "ms": runs, "variants": {}}
    for variant, ms in runs.items():
        overheads = [m / b - 1 for m, b in zip(ms, runs["adamw-fused"])]
        out["variants"][variant] = {
            "mean_ms": statistics.mean(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "overhead_vs_adamw_mean": statistics.mean(ms) / base - 1,
            "overhead_paired_min": min(overheads),
            "overhead_paired_max": max(overheads),
        }
    print(f"e2e: {out['variants']}", flush=True)
    return out


def markdown(result: dict) -> str:
    lines = [
        f"# FTP step, one {result['hardware']} (torch {result['torch']}, triton {result['triton']})",
        "",
        f"GPU time per `step()`: `graph` = {GRAPH_STEPS} steps captured in one CUDA graph and replayed; `eager` = "
        "plain calls (CUDA events); host = CPU time per eager call. Ratios are to fused AdamW in the same mode, "
        f"same process. Copy ceiling measured here: {result['copy_gbps']:.0f} GB/s.",
        "",
        "| set | variant | mode | GPU ms/step | ratio vs fused AdamW | bytes/param | GB/s | host ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        gbps = f"{r['gbps']:.0f}" if "gbps" in r else "-"
        host = f"{r['host_ms']:.3f}" if "host_ms" in r else "-"
        lines.append(
            f"| {r['set']} | {r['variant']} | {r['mode']} | {r['gpu_ms']:.3f} | {r['ratio_vs_fused_adamw']:.2f}x | "
            f"{r.get('bytes_per_param', '-')} | {gbps} | {host} |"
        )
    if "e2e" in result:
        e = result["e2e"]
        lines += ["", f"End to end, ViT-B/16 iteration (batch {e['batch']}, bf16 autocast, plain calls), "
                  f"{e['repeats']} repeats x median of {e['iterations_per_repeat']}:", ""]  # fmt: skip
        lines += [
            "| variant | mean ms | min-max ms | overhead vs AdamW (mean) | paired range |",
            "|---|---|---|---|---|",
        ]
        for v, m in e["variants"].items():
            lines.append(
                f"| {v} | {m['mean_ms']:.1f} | {m['min_ms']:.1f}-{m['max_ms']:.1f} | "
                f"{m['overhead_vs_adamw_mean'] * 100:+.1f}% | {m['overhead_paired_min'] * 100:+.1f}% to "
                f"{m['overhead_paired_max'] * 100:+.1f}% |"
            )
    lines += ["", "Checks (largest parameter difference to the single-tensor path, fp32):", ""]
    for set_name, c in result["check"].items():
        for variant, v in c.items():
            lines.append(f"- {set_name} {variant}: {v}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="vit_b16,resnet50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replays", type=int, default=30)
    parser.add_argument("--eager-steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--no-check", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="adamw-fused is always measured")
    parser.add_argument("--modes", default="graph,eager")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ftp_step_h200"))
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    result: dict = {
        "hardware": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": getattr(K.triton, "__version__", None),
        "copy_gbps": copy_gbps(),
        "check": {},
        "rows": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(markdown(result))

    sets = [s for s in args.sets.split(",") if s]
    for set_name in [] if args.no_check else sets:
        try:
            result["check"][set_name] = check(set_name)
        except Exception as err:
            traceback.print_exc()
            result["check"][set_name] = {"error": {"passed": False, "error": repr(err)[:300]}}
        save()
    for set_name in sets:
        variants = ("adamw-fused", *[v for v in args.variants.split(",") if v and v != "adamw-fused"])
        modes = tuple(m for m in args.modes.split(",") if m)
        result["rows"] += measure_set(set_name, args.rounds, args.replays, args.eager_steps, variants, modes)
        save()
    if not args.no_e2e:
        try:
            result["e2e"] = end_to_end(args.repeats)
        except Exception:
            traceback.print_exc()
        save()
    print(args.out.with_suffix(".md").read_text(), flush=True)


if __name__ == "__main__":
    main()
