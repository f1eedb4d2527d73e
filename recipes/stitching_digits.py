"""Recipe: the stitching matrix between small residual CNNs of different depths on digits (CPU, minutes).

Reproduces the experiment of Hernandez, Dangovski, Lu, Soljacic, "Model Stitching: Looking For
Functional Similarity Between Representations" (arXiv 2303.11277) at toy scale: train residual CNNs of
two depths on scikit-learn digits (several seeds), stitch every block output of one into every block
output of the other (sender frozen -> trained stitch -> receiver frozen) under the paper's configuration
(bare adapters; SGD 0.01, momentum 0.9, warm-up + cosine, weight decay 0.01, batch 256, 4 epochs), with the
controls (random sender, random receiver, pixel sender: the stitch reads the raw input), MSE and linear
CKA to the receiver's own representation, and the least-squares stitch.

The paper's finding: stitched accuracy is high whenever the sender layer is proportionally later than
the receiver layer (the lower-left triangle of the sender x receiver matrix), and random senders stay
low. This recipe reports, per pair and seed, the mean stitched accuracy and the mean margin over the
strongest control (stitched minus the best of random sender, random receiver and pixel sender) in and out
of that triangle: the triangle holds relative to the controls when the lower-left margin is above 0 and
above the upper-right one.

Run (2-core CPU, 1 thread; ~minutes)::

    python recipes/stitching_digits.py --seeds 0 1 2             # the paper's configuration
    python recipes/stitching_digits.py --seeds 0 1 2 --adapter hernandez --optimizer adam --lr 1e-2 \
        --batch-size 64                                          # the earlier BN-wrapped Adam setting
    python recipes/stitching_digits.py --seeds 0 --quick         # a smoke run

A larger sweep for one GPU (deeper nets on a harder target built offline: digits upsampled to 32 px with
the corruption suite at random levels)::

    python recipes/stitching_digits.py --seeds 0 1 2 --device cuda --upsample 32 --corrupt \
        --depths 2 4 --width 32 --model-epochs 30

Writes ``benchmarks/results/stitching_<tag><pair>_seed<s>.{json,csv,png}`` (per-cell tables and heatmaps)
and ``benchmarks/results/stitching_<tag>summary.json`` (the tag names any non-paper setting); prints
markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_reuse import stitching_sweep
from lightning_reuse.modules.stitching_sweep import SweepResult, plot_sweep
from lightning_reuse.samples import (
    accuracy,
    apply_shift,
    load_digits_tensors,
    split_indices,
    train_classifier,
)


class ResidualBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is a strided 1x1 conv when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResidualCNN(nn.Module):
    """Stem, three stages of ``blocks_per_stage`` residual blocks (8x8, 4x4, 2x2 maps), pool, linear head.

    Cut points (block outputs): ``stem``, ``block1`` ... ``block{3 * blocks_per_stage}``.
    """

    def __init__(
        self, blocks_per_stage: int = 1, width: int = 16, num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        c, k = width, 0
        for stage in range(3):
            for b in range(blocks_per_stage):
                k += 1
                c_out = width * 2**stage
                self.add_module(f"block{k}", ResidualBlock(c, c_out, stride=2 if stage > 0 and b == 0 else 1))
                c = c_out
        self.num_blocks = k
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    @property
    def cut_points(self) -> list[str]:
        return ["stem", *[f"block{i + 1}" for i in range(self.num_blocks)]]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(self.num_blocks):
            x = getattr(self, f"block{i + 1}")(x)
        return self.head(self.pool(x).flatten(1))


TRIANGLE_KEYS = (
    "lower_left_acc",
    "upper_right_acc",
    "lower_left_margin",
    "upper_right_margin",
    "random_sender_lower_left_acc",
    "pixel_sender_mean_acc",
)
METRICS = (
    "stitched_acc",
    "random_sender_acc",
    "random_receiver_acc",
    "pixel_sender_acc",
    "stitched_minus_control",
    "ls_acc",
    "cka",
)


def lower_left_mask(shape: tuple[int, int]) -> np.ndarray:
    """True where the sender layer is proportionally at least as deep as the receiver layer."""
    n_s, n_r = shape
    p_s = np.arange(n_s)[:, None] / max(1, n_s - 1)
    p_r = np.arange(n_r)[None, :] / max(1, n_r - 1)
    return np.broadcast_to(p_s >= p_r - 1e-9, shape)


def triangle_summary(matrices: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean stitched accuracy and margin over the strongest control in the lower-left triangle and elsewhere."""
    acc, margin = matrices["stitched_acc"], matrices["stitched_minus_control"]
    lower = lower_left_mask(acc.shape)
    return {
        "lower_left_acc": float(np.nanmean(acc[lower])),
        "upper_right_acc": float(np.nanmean(acc[~lower])),
        "lower_left_margin": float(np.nanmean(margin[lower])),
        "upper_right_margin": float(np.nanmean(margin[~lower])),
        "random_sender_lower_left_acc": float(np.nanmean(matrices["random_sender_acc"][lower])),
        "random_sender_mean_acc": float(np.nanmean(matrices["random_sender_acc"])),
        "pixel_sender_mean_acc": float(np.nanmean(matrices["pixel_sender_acc"])),
        "triangle_holds_over_controls": bool(
            np.nanmean(margin[lower]) > 0 and np.nanmean(margin[lower]) > np.nanmean(margin[~lower])
        ),
    }


def _markdown_matrix(m: np.ndarray, rows: list[str], cols: list[str]) -> str:
    lines = ["| sender \\ receiver | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {r} | " + " | ".join(f"{v:.3f}" for v in m[i]) + " |" for i, r in enumerate(rows)]
    return "\n".join(lines)


def _matrix(out: Path, name: str, rows: list[str], cols: list[str], metric: str) -> np.ndarray:
    """A metric's matrix, read back from the sweep's own JSON (the per-cell record)."""
    cells = json.loads((out / f"{name}.json").read_text())["cells"]
    return SweepResult(rows, cols, cells).matrix(metric)


def report(summary: dict, out: Path, tag: str) -> None:
    """Print per-run and seed-averaged results; write mean heatmaps and the summary JSON."""
    runs = summary["runs"]
    print("\n| pair (blocks) | seed | sender acc | receiver acc | stitched: lower-left | upper-right "
          "| margin over strongest control: lower-left | upper-right | holds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['sender_blocks']}->{r['receiver_blocks']} | {r['seed']} | {r['sender_acc']:.3f} | "
            f"{r['receiver_acc']:.3f} | {r['lower_left_acc']:.3f} | {r['upper_right_acc']:.3f} | "
            f"{r['lower_left_margin']:+.3f} | {r['upper_right_margin']:+.3f} | "
            f"{r['triangle_holds_over_controls']} |"
        )
    summary["mean"] = {}
    for pair in sorted({(r["sender_blocks"], r["receiver_blocks"]) for r in runs}):
        group = [r for r in runs if (r["sender_blocks"], r["receiver_blocks"]) == pair]
        rows, cols = group[0]["sender_layers"], group[0]["receiver_layers"]
        mean = {k: np.mean([_matrix(out, r["name"], rows, cols, k) for r in group], axis=0) for k in METRICS}
        key = f"d{pair[0]}_to_d{pair[1]}"
        tri = triangle_summary(mean)
        summary["mean"][key] = {"seeds": [r["seed"] for r in group], **tri,
                                **{k: v.round(4).tolist() for k, v in mean.items()}}  # fmt: skip
        cells = [
            {"sender_layer": s, "receiver_layer": c, **{k: float(mean[k][i, j]) for k in METRICS}}
            for i, s in enumerate(rows)
            for j, c in enumerate(cols)
        ]
        setting = tag.rstrip("_").replace("_", ", ") or "paper configuration"
        title = f"{pair[0]}-block sender -> {pair[1]}-block receiver, mean of {len(group)} seeds ({setting})"
        plot_sweep(SweepResult(rows, cols, cells), out / f"stitching_{tag}mean_{key}.png", title=title)
        print(f"\n{title}: {tri}")
        for k in ("stitched_acc", "stitched_minus_control", "random_sender_acc", "pixel_sender_acc",
                  "random_receiver_acc", "cka"):  # fmt: skip
            print(f"\n{k}:\n" + _markdown_matrix(mean[k], rows, cols))
    (out / f"stitching_{tag}summary.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\nwall time {summary.get('wall_s')} s on {summary.get('hardware')} (finished cells are not recomputed)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--depths", type=int, nargs=2, default=[1, 2], help="blocks per stage of the two models"
    )
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--model-epochs", type=int, default=15)
    parser.add_argument("--stitch-epochs", type=int, default=4, help="the paper: 4")
    parser.add_argument(
        "--adapter",
        choices=["paper", "hernandez", "pooled"],
        default="paper",
        help="paper: bare adapters; hernandez: BN-wrapped; pooled: fixed pooling + channel-only stitch",
    )
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="the paper: sgd")
    parser.add_argument("--lr", type=float, default=1e-2, help="the paper: 0.01")
    parser.add_argument("--batch-size", type=int, default=256, help="the paper: 256")
    parser.add_argument(
        "--noise", type=float, default=0.0, help="Gaussian pixel noise std on all images (a harder task)"
    )
    parser.add_argument("--upsample", type=int, default=0, help="resize the 8x8 digits to this size")
    parser.add_argument(
        "--corrupt",
        action="store_true",
        help="each image corrupted by a random kind of shift at a random level",
    )
    parser.add_argument("--device", default="cpu", help="where models and data live (e.g. cuda)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="one direction, fewer epochs (smoke run)")
    parser.add_argument("--report-only", action="store_true", help="re-print and re-plot a finished run")
    return parser.parse_args()


def sweep_pair(
    sender: ResidualCNN,
    receiver: ResidualCNN,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    name: str,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, object]:
    """Sweep every block output of ``sender`` into every block output of ``receiver``; one summary run."""
    res = stitching_sweep(
        sender,
        receiver,
        sender.cut_points,
        receiver.cut_points,
        train,
        val,
        out_dir=Path(args.out),
        name=name,
        epochs=2 if args.quick else args.stitch_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=seed,
        adapter=args.adapter,
        optimizer=args.optimizer,
    )
    tri = triangle_summary({k: res.matrix(k) for k in METRICS})
    return {
        "name": name,
        "seed": seed,
        "sender_blocks": sender.num_blocks,
        "receiver_blocks": receiver.num_blocks,
        "sender_acc": accuracy(sender, *val),
        "receiver_acc": accuracy(receiver, *val),
        "sender_layers": res.sender_layers,
        "receiver_layers": res.receiver_layers,
        **{k: res.matrix(k).round(4).tolist() for k in METRICS},
        **tri,
    }


CORRUPTIONS = {"noise": 0.4, "blur": 1.0, "salt_pepper": 0.15, "rotation": 25.0, "inversion": 0.3}


def load_data(args: argparse.Namespace) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Digits, optionally noised, upsampled and corrupted (one random kind and level per image); split 70/30."""
    x, y = load_digits_tensors()
    x = apply_shift(x, "noise", args.noise, seed=0) if args.noise > 0 else x
    if args.upsample:
        x = F.interpolate(x, size=(args.upsample, args.upsample), mode="bilinear", align_corners=False)
    if args.corrupt:
        g = torch.Generator().manual_seed(0)
        kinds = torch.randint(0, len(CORRUPTIONS), (len(x),), generator=g)
        levels = torch.rand(len(x), generator=g)
        for k, (kind, top) in enumerate(CORRUPTIONS.items()):
            for i in (kinds == k).nonzero().flatten().tolist():
                x[i : i + 1] = apply_shift(x[i : i + 1], kind, float(levels[i]) * top, seed=i)
    tr, va = split_indices(len(x), (0.7, 0.3), seed=0)
    dev = torch.device(args.device)
    return (x[tr].to(dev), y[tr].to(dev)), (x[va].to(dev), y[va].to(dev))


def run_tag(args: argparse.Namespace) -> str:
    """The file-name tag: empty for the paper's configuration on clean digits, else the settings that differ."""
    tag = "" if args.adapter == "paper" else f"{args.adapter}_"
    tag += "adam_" if args.optimizer == "adam" else ""
    tag += f"noise{args.noise:g}_" if args.noise > 0 else ""
    tag += f"up{args.upsample}_" if args.upsample else ""
    tag += "corrupt_" if args.corrupt else ""
    return tag


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    tag = run_tag(args)
    if args.report_only:
        path = Path(args.out) / f"stitching_{tag}summary.json"
        report(json.loads(path.read_text()), Path(args.out), tag)
        return
    train, val = load_data(args)
    out = Path(args.out)
    hardware = (
        "2-core CPU, 1 thread" if args.device == "cpu" else f"{args.device} ({torch.cuda.get_device_name()})"
    )
    summary: dict[str, object] = {"hardware": hardware, "args": vars(args), "runs": []}
    t0 = time.perf_counter()
    for seed in args.seeds:
        models = {}
        for depth in args.depths:
            torch.manual_seed(1000 * seed + depth)
            net = ResidualCNN(blocks_per_stage=depth, width=args.width).to(args.device)
            models[depth] = train_classifier(net, *train, epochs=args.model_epochs, lr=3e-3, seed=seed)
        d_small, d_big = args.depths
        pairs = [(d_big, d_small)] if args.quick else [(d_big, d_small), (d_small, d_big)]
        for d_s, d_r in pairs:
            name = f"stitching_{tag}d{3 * d_s}_to_d{3 * d_r}_seed{seed}"
            run = sweep_pair(models[d_s], models[d_r], train, val, name, seed, args)
            summary["runs"].append(run)  # type: ignore[union-attr]
            print(f"{name}: { {k: run[k] for k in TRIANGLE_KEYS} }", flush=True)
            summary["wall_s"] = round(time.perf_counter() - t0, 1)
            (out / f"stitching_{tag}summary.json").write_text(json.dumps(summary, indent=1))
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    report(summary, out, tag)


if __name__ == "__main__":
    main()
