"""Robust fine-tuning on digits: vanilla fine-tuning vs L2-SP vs WiSE-FT vs FTP, in- and out-of-distribution.

Recipe (CPU, minutes, nothing downloaded):
1. Pre-train a ``SmallCNN`` on half of the 8x8 digits with shift augmentation (noise, blur, salt-and-pepper,
   rotation, inversion at random strengths): a "robust" source model.
2. Fine-tune it on a small clean subset of the other half, with a new head (the head is excluded from FTP
   and L2-SP, as in the papers), with an aggressive Adam learning rate, for each method and seed.
3. Evaluate on the held-out clean split (ID) and on shifted copies of it (OOD: each kind at one level).

Methods: ``lp`` (linear probe: head only), ``ft`` (fine-tune everything, Adam), ``lpft`` (LP-FT, Kumar et al.,
ICLR 2022: the linear probe first, then ``ft`` from there), ``l2sp`` (ft + L2-SP penalty), ``wise`` (WiSE-FT
of ``ft`` at alpha = 0.5), ``ftp`` (FTP over the same Adam, k = 1).

Run:  ``nice -n 5 python benchmarks/ftp_robustness.py --seeds 5``  (2-core CPU, 1 thread)
Writes ``benchmarks/results/ftp_robustness.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lightning_reuse.optim import FTP, L2SP, interpolate_state_dicts
from lightning_reuse.samples.digits import apply_shift, load_digits_tensors, split_indices
from lightning_reuse.samples.models import SmallCNN, accuracy

SHIFTS = {"noise": 0.4, "blur": 1.0, "salt_pepper": 0.15, "rotation": 25.0, "inversion": 0.3}
METHODS = ("lp", "ft", "lpft", "l2sp", "wise", "ftp")


def augment(x: torch.Tensor, g: torch.Generator, seed: int) -> torch.Tensor:
    """Random shift kind and strength per batch (the pre-training augmentation)."""
    if torch.rand((), generator=g) < 0.3:
        return x
    kind = list(SHIFTS)[int(torch.randint(0, len(SHIFTS), (), generator=g))]
    level = float(torch.rand((), generator=g)) * SHIFTS[kind]
    return apply_shift(x, kind, level, seed=seed)


def pretrain(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(num_classes=10, width=32, depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            step += 1
            opt.zero_grad()
            nn.functional.cross_entropy(model(augment(x[idx], g, step)), y[idx]).backward()
            opt.step()
    return model.eval()


def finetune(
    source: SmallCNN, method: str, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int
) -> SmallCNN:
    if method == "lpft":  # linear probe first, then fine-tune everything from the probed head
        probed = finetune(source, "lp", x, y, epochs, lr, seed)
        for p in probed.parameters():
            p.requires_grad_(True)
        return _train(probed, "ft", x, y, epochs, lr, seed)
    torch.manual_seed(seed)
    model = copy.deepcopy(source)
    model.head = nn.Linear(model.head.in_features, 10)  # a new head, as for a new task
    return _train(model, method, x, y, epochs, lr, seed)


def _train(
    model: SmallCNN, method: str, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int
) -> SmallCNN:
    if method == "lp":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head."))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    if method == "ftp":
        opt = FTP(opt, exclude="head")
    reg = L2SP(model, alpha=0.1, beta=0.0, exclude="head") if method == "l2sp" else None
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if reg is not None:
                loss = loss + reg()
            loss.backward()
            opt.step()
    return model.eval()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    out = {"id": accuracy(model, x, y)}
    for kind, level in SHIFTS.items():
        out[kind] = accuracy(model, apply_shift(x, kind, level, seed=123), y)
    out["ood_mean"] = statistics.fmean(out[k] for k in SHIFTS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--shots", type=int, default=300, help="fine-tuning examples")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ftp_robustness"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    x, y = load_digits_tensors()
    src_idx, tgt_idx = split_indices(len(x), (0.5, 0.5), seed=0)
    source = pretrain(x[src_idx], y[src_idx], args.pretrain_epochs, seed=0)
    rows: list[dict] = []
    for seed in range(args.seeds):
        train_part, test_part = split_indices(
            len(tgt_idx), (args.shots / len(tgt_idx), 1 - args.shots / len(tgt_idx)), seed=seed + 1
        )
        xt, yt = x[tgt_idx[train_part]], y[tgt_idx[train_part]]
        xe, ye = x[tgt_idx[test_part]], y[tgt_idx[test_part]]
        models = {}
        for method in ("lp", "ft", "lpft", "l2sp", "ftp"):
            models[method] = finetune(source, method, xt, yt, args.finetune_epochs, args.lr, seed)
        wise = copy.deepcopy(models["ft"])
        wise.load_state_dict(interpolate_state_dicts(source.state_dict(), models["ft"].state_dict(), 0.5))
        models["wise"] = wise.eval()
        for method in METHODS:
            rows.append({"seed": seed, "method": method, **evaluate(models[method], xe, ye)})
        print(
            f"seed {seed}: "
            + ", ".join(
                f"{r['method']} id={r['id']:.3f} ood={r['ood_mean']:.3f}" for r in rows[-len(METHODS) :]
            )
        )

    columns = ["id", *SHIFTS, "ood_mean"]
    summary = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            c: {
                "mean": statistics.fmean(r[c] for r in mine),
                "std": statistics.stdev([r[c] for r in mine]) if len(mine) > 1 else 0.0,
            }
            for c in columns
        }
    hardware = f"2-core CPU, 1 thread ({platform.processor() or platform.machine()})"
    result = {
        "hardware": hardware,
        "torch": torch.__version__,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "shifts": SHIFTS,
        "source_clean_acc_on_target_split": accuracy(source, x[tgt_idx], y[tgt_idx]),
        "rows": rows,
        "summary": summary,
        "seconds": time.perf_counter() - start,
    }
    lines = [
        f"FTP robustness on digits ({args.seeds} seeds, {args.shots} fine-tuning examples, Adam lr {args.lr}, "
        f"{args.finetune_epochs} epochs; {hardware}). Accuracy, mean ± std over seeds.",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for method in METHODS:
        cells = [f"{summary[method][c]['mean']:.3f} ± {summary[method][c]['std']:.3f}" for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
