"""NTK screening benchmark: does the screening predict how far model reprogramming gets?

Grid on digits (CPU): sources of graded quality (random weights, few steps, trained, wider, deeper,
MLP, trained on shuffled labels) x targets (digits, inverted, rotated, parity, mod-3, random labels)
x seeds. Each cell: screen (prompt-NTK scores at the initial prompt, n = 512 stratified samples),
then actually reprogram (padding prompt + ILM, Adam) and measure test accuracy; compare every score
and the cheap baselines (zero-step FLM accuracy, linear probe on the source logits) by Spearman /
Kendall and by the AUROC of FAIL for "reprogramming failed"; thresholds calibrated on the grid
(leave-one-seed-out) and checked on a held-out seed. Speed: ``benchmarks/ntk_screening_speed.py``.

Run: ``python benchmarks/ntk_screening.py --seeds 2`` (grid), ``--seeds 1 --first-seed 2`` (held-out),
``--analyze GRID.json --holdout HOLDOUT.json`` (tables). Hardware: 2-core CPU (shared), 1 thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from lightning_reuse.functional.ntk_scores import ScreeningThresholds, decide, screen_reprogramming
from lightning_reuse.nn.label_mapping import IterativeLabelMapping, count_matrix, greedy_one_to_one
from lightning_reuse.nn.prompts import PaddingPrompt
from lightning_reuse.nn.reprogrammed import ReprogrammedModel
from lightning_reuse.samples.digits import load_digits_tensors, split_indices
from lightning_reuse.samples.models import train_classifier

RESULTS = Path(__file__).parent / "results"
SRC_SHAPE, TGT_SHAPE = (1, 16, 16), (1, 8, 8)


class PoolCNN(nn.Module):
    """conv-ReLU-maxpool blocks and a linear head on the flattened map: a decent 16x16 digit classifier."""

    def __init__(self, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = 1, 16
        for i in range(depth):
            layers += [nn.Conv2d(c, width * 2**i, 3, padding=1), nn.ReLU()]
            c = width * 2**i
            if i < 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * size * size, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def canvas(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Digits in the centre of a 16x16 canvas whose border has a random grey level (source data)."""
    g = torch.Generator().manual_seed(seed)
    level = torch.rand(len(x), 1, 1, 1, generator=g)
    out = level.expand(-1, *SRC_SHAPE).clone()
    out[:, :, 4:12, 4:12] = x
    return out


def make_sources(x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, nn.Module]:
    xs = canvas(x, seed)
    torch.manual_seed(seed)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 7))]
    out: dict[str, nn.Module] = {"random": PoolCNN().eval()}
    out["few_steps"] = train_classifier(PoolCNN(), xs, y, epochs=2, lr=2e-3, seed=seed)
    out["trained"] = train_classifier(PoolCNN(), xs, y, epochs=15, lr=3e-3, seed=seed)
    out["wide"] = train_classifier(PoolCNN(width=32), xs, y, epochs=15, lr=3e-3, seed=seed)
    out["deep"] = train_classifier(PoolCNN(depth=3), xs, y, epochs=15, lr=3e-3, seed=seed)
    out["mlp"] = train_classifier(MLP(), xs, y, epochs=15, lr=3e-3, seed=seed)
    out["shuffled"] = train_classifier(PoolCNN(), xs, shuffled, epochs=15, lr=3e-3, seed=seed)
    return out


def make_target(name: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "digits":
        return x, y
    if name == "inverted":
        return 1 - x, y
    if name == "rotated":
        return torch.rot90(x, 1, (2, 3)), y
    if name == "parity":
        return x, y % 2
    if name == "mod3":
        return x, y % 3
    if name == "random":
        return x, torch.randint(0, 10, y.shape, generator=torch.Generator().manual_seed(seed + 99))
    raise ValueError(name)


def reprogram(source: nn.Module, xtr, ytr, xte, yte, epochs: int, seed: int) -> tuple[float, float]:
    """Padding prompt + ILM (re-mapped every epoch), Adam: returns (test accuracy, seconds per epoch)."""
    torch.manual_seed(seed)
    c = int(ytr.max()) + 1
    model = ReprogrammedModel(source, PaddingPrompt(TGT_SHAPE, SRC_SHAPE), IterativeLabelMapping(10, c))
    opt = torch.optim.Adam([model.transform.theta], lr=0.05)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        with torch.no_grad():
            model.mapping.fit(model.source_logits(xtr), ytr)
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            idx = perm[i : i + 64]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    per_epoch = (time.perf_counter() - t0) / max(1, epochs)
    with torch.no_grad():
        acc = float((model(xte).argmax(-1) == yte).float().mean())
    return acc, per_epoch


@torch.no_grad()
def baselines(source: nn.Module, xtr, ytr, xte, yte) -> tuple[float, float]:
    """Zero-step FLM accuracy and a linear probe (logistic regression) on source logits at theta = 0."""
    c = int(ytr.max()) + 1
    prompt = PaddingPrompt(TGT_SHAPE, SRC_SHAPE)
    ltr, lte = source(prompt(xtr)), source(prompt(xte))
    mapping = greedy_one_to_one(count_matrix(ltr.argmax(-1), ytr, 10, c))
    flm = float((lte[:, mapping].argmax(-1) == yte).float().mean())
    probe = LogisticRegression(max_iter=2000).fit(ltr.numpy(), ytr.numpy())
    return flm, float(probe.score(lte.numpy(), yte.numpy()))


def auroc(failed: np.ndarray, score: np.ndarray) -> float:
    if failed.all() or not failed.any():
        return float("nan")
    return float(roc_auc_score(failed, score))


def run_grid(args: argparse.Namespace) -> list[dict]:
    x, y = load_digits_tensors()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        src_idx, tgt_idx = split_indices(len(x), (0.4, 0.6), seed=seed)
        sources = make_sources(x[src_idx], y[src_idx], seed)
        xt, yt = x[tgt_idx], y[tgt_idx]
        ntr = args.train_size
        for sname in args.sources:
            for tname in args.targets:
                tx, ty = make_target(tname, xt, yt, seed)
                xtr, ytr, xte, yte = tx[:ntr], ty[:ntr], tx[ntr:], ty[ntr:]
                src = sources[sname]
                c = int(ytr.max()) + 1
                model = ReprogrammedModel(
                    src, PaddingPrompt(TGT_SHAPE, SRC_SHAPE), IterativeLabelMapping(10, c)
                )
                t0 = time.perf_counter()
                s = screen_reprogramming(model, xtr, ytr, num_samples=args.n, seed=seed)
                t_screen = time.perf_counter() - t0
                flm0, probe = baselines(src, xtr, ytr, xte, yte)
                acc, t_epoch = reprogram(src, xtr, ytr, xte, yte, args.epochs, seed)
                row = dict(
                    seed=seed,
                    source=sname,
                    target=tname,
                    classes=c,
                    acc=acc,
                    acc_norm=(acc - 1 / c) / (1 - 1 / c),
                    flm0=flm0,
                    probe=probe,
                    flm0_norm=(flm0 - 1 / c) / (1 - 1 / c),
                    probe_norm=(probe - 1 / c) / (1 - 1 / c),
                    rho=s.rho,
                    e_tau=s.e_tau,
                    r_eff=s.r_eff,
                    conf=s.guard_confidence,
                    nmi=s.guard_nmi,
                    rho_labels=s.rho_labels,
                    residual=s.residual,
                    predicted_residual=s.predicted_residual,
                    ntk_acc=s.ntk_accuracy,
                    ntk_acc_norm=s.ntk_accuracy_norm,
                    decision=s.decision,
                    reasons=s.reasons,
                    t_screen=t_screen,
                    t_epoch=t_epoch,
                )
                rows.append(row)
                print(
                    f"seed={seed} {sname:9s} {tname:8s} acc={acc:.3f} flm0={flm0:.3f} probe={probe:.3f} "
                    f"rho={s.rho:.3f} rho_y={s.rho_labels:.3f} E={s.e_tau:.3f} res={s.residual:.3f} "
                    f"ntk_acc={s.ntk_accuracy:.3f} reff={s.r_eff:.4f} conf={s.guard_confidence:.2f} "
                    f"nmi={s.guard_nmi:.3f} {s.decision} screen={t_screen:.2f}s epoch={t_epoch:.2f}s",
                    flush=True,
                )
    return rows


FAILED_BELOW = 0.25  # normalised accuracy (acc - 1/C) / (1 - 1/C) below which reprogramming "failed"
SCORES = {  # name -> (row key, sign): sign * value is "higher = predicts higher accuracy"
    "NTK score = NTK accuracy x source gate (default)": ("ntk_score", 1),
    "NTK accuracy (cross-fitted ridge)": ("ntk_acc_norm", 1),
    "rho (spec, residual r0)": ("rho", -1),
    "rho_labels (centred labels)": ("rho_labels", -1),
    "E(100)": ("e_tau", 1),
    "predicted residual r0^2 (1 - E)": ("predicted_residual", -1),
    "r_eff": ("r_eff", 1),
    "guard: confidence": ("conf", 1),
    "guard: FLM NMI": ("nmi", 1),
    "baseline: zero-step FLM accuracy": ("flm0_norm", 1),
    "baseline: linear probe on source logits": ("probe_norm", 1),
}
WARN_MARGIN = 0.2  # WARN band above the FAIL threshold


def best_threshold(values: np.ndarray, failed: np.ndarray) -> float:
    """Threshold t (FAIL iff value < t) maximising balanced accuracy (ties: the midpoint gap)."""
    cand = np.unique(values)
    cuts = np.concatenate([[cand[0] - 1e-9], (cand[1:] + cand[:-1]) / 2, [cand[-1] + 1e-9]])
    bal = [0.5 * ((values[failed] < t).mean() + (values[~failed] >= t).mean()) for t in cuts]
    return float(cuts[int(np.argmax(bal))])


def complete(rows: list[dict]) -> list[dict]:
    """Fill scores that older result files lack (same formulas as the library)."""
    for r in rows:
        gate = min(1.0, max(0.0, (r["conf"] - 1.0) / 0.5))
        r.setdefault("ntk_score", r["ntk_acc_norm"] * gate)
    return rows


def correlations(rows: list[dict]) -> dict:
    acc = np.array([r["acc_norm"] for r in rows])
    failed = acc < FAILED_BELOW
    keep = np.array([r["source"] != "random" for r in rows])
    out = {}
    for name, (key, sign) in SCORES.items():
        v = sign * np.array([r[key] for r in rows], dtype=float)
        out[name] = {
            "spearman": float(spearmanr(v, acc).statistic),
            "kendall": float(kendalltau(v, acc).statistic),
            "spearman_without_random_source": float(spearmanr(v[keep], acc[keep]).statistic),
            "auroc_failed": auroc(failed, -v),
        }
    return out


def decisions(rows: list[dict], key: str, t_fail: float) -> list[str]:
    return [
        "FAIL" if r[key] < t_fail else ("WARN" if r[key] < t_fail + WARN_MARGIN else "PASS") for r in rows
    ]


def rule_summary(rows: list[dict], decided: list[str]) -> dict:
    failed = np.array([r["acc_norm"] < FAILED_BELOW for r in rows])
    fail = np.array([d == "FAIL" for d in decided], dtype=float)
    return {
        "auroc_fail": auroc(failed, fail),
        "decisions": {d: decided.count(d) for d in ("PASS", "WARN", "FAIL")},
        "pass_on_random_labels": sum(d == "PASS" and r["target"] == "random" for d, r in zip(decided, rows)),
        "random_label_cells": sum(r["target"] == "random" for r in rows),
    }


def analyze(rows: list[dict], holdout: list[dict] | None = None) -> dict:
    rows = complete(rows)
    acc = np.array([r["acc_norm"] for r in rows])
    failed = acc < FAILED_BELOW
    out: dict = {"cells": len(rows), "failed": int(failed.sum()), "failed_below": FAILED_BELOW}
    out["scores"] = correlations(rows)
    spec = ScreeningThresholds.spec()
    out["spec_rule"] = rule_summary(
        rows, [decide(r["rho"], r["e_tau"], (r["conf"], r["nmi"]), spec)[0] for r in rows]
    )
    seeds = np.array([r["seed"] for r in rows])
    for key in ("ntk_score", "flm0_norm", "probe_norm"):
        v = np.array([r[key] for r in rows])
        loso = []
        for s_ in np.unique(seeds):
            t = best_threshold(v[seeds != s_], failed[seeds != s_])
            loso += [(i, t) for i in np.nonzero(seeds == s_)[0]]
        decided = ["" for _ in rows]
        for i, t in loso:
            decided[i] = decisions([rows[i]], key, t)[0]
        t_all = best_threshold(v, failed)
        out[f"rule_{key}"] = {
            "t_fail_all_cells": t_all,
            "t_fail_leave_one_seed_out": sorted({t for _, t in loso}),
            "leave_one_seed_out": rule_summary(rows, decided),
            "in_sample": rule_summary(rows, decisions(rows, key, t_all)),
        }
        if holdout:  # the library default for the NTK score, the grid-fitted threshold for the baselines
            t_h = ScreeningThresholds().ntk_accuracy_fail if key == "ntk_score" else t_all
            out[f"rule_{key}"]["t_fail_holdout"] = t_h
            out[f"rule_{key}"]["holdout"] = rule_summary(holdout, decisions(complete(holdout), key, t_h))
    if holdout:
        out["holdout_cells"] = len(holdout)
        out["holdout_scores"] = correlations(complete(holdout))
        out["holdout_spec_rule"] = rule_summary(
            holdout, [decide(r["rho"], r["e_tau"], (r["conf"], r["nmi"]), spec)[0] for r in holdout]
        )
    every = rows + (holdout or [])
    t_s = np.array([r["t_screen"] for r in every])
    t_e = np.array([r["t_epoch"] for r in every])
    out["speed"] = {
        "screen_s_median": float(np.median(t_s)),
        "epoch_s_median": float(np.median(t_e)),
        "screen_over_epoch_median": float(np.median(t_s / t_e)),
    }
    return out


def markdown(res: dict) -> str:
    def table(scores: dict) -> list[str]:
        lines = [
            "| score | Spearman | Kendall | Spearman w/o random source | AUROC(failed) |",
            "|---|---|---|---|---|",
        ]
        for name, m in scores.items():
            lines.append(
                f"| {name} | {m['spearman']:.3f} | {m['kendall']:.3f} | "
                f"{m['spearman_without_random_source']:.3f} | {m['auroc_failed']:.3f} |"
            )
        return lines

    lines = [
        f"Calibration grid: {res['cells']} cells, failed (normalised accuracy < {res['failed_below']}): "
        f"{res['failed']}",
        "",
    ]
    lines += table(res["scores"])
    if "holdout_scores" in res:
        lines += ["", f"Held-out seed ({res['holdout_cells']} cells, not used for any choice):", ""]
        lines += table(res["holdout_scores"])
    lines += [
        "",
        "| decision rule | AUROC of FAIL | PASS/WARN/FAIL | PASS on random labels |",
        "|---|---|---|---|",
    ]

    def row(name: str, r: dict) -> str:
        d = r["decisions"]
        return (
            f"| {name} | {r['auroc_fail']:.3f} | {d['PASS']}/{d['WARN']}/{d['FAIL']} | "
            f"{r['pass_on_random_labels']}/{r['random_label_cells']} |"
        )

    lines.append(row("spec rule (rho/E/guard), calibration grid", res["spec_rule"]))
    if "holdout_spec_rule" in res:
        lines.append(row("spec rule, held-out seed", res["holdout_spec_rule"]))
    for key in ("ntk_score", "flm0_norm", "probe_norm"):
        r = res[f"rule_{key}"]
        lines.append(row(f"{key} < t, leave-one-seed-out t", r["leave_one_seed_out"]))
        if "holdout" in r:
            lines.append(
                row(f"{key} < {r['t_fail_holdout']:.3f} (fixed before), held-out seed", r["holdout"])
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument(
        "--sources", nargs="+", default=["random", "few_steps", "trained", "wide", "deep", "mlp", "shuffled"]
    )
    p.add_argument(
        "--targets", nargs="+", default=["digits", "inverted", "rotated", "parity", "mod3", "random"]
    )
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--train-size", type=int, default=600)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--out", default=str(RESULTS / "ntk_screening.json"))
    p.add_argument("--analyze", default=None, help="only analyse an existing results JSON")
    p.add_argument("--holdout", default=None, help="results JSON of held-out seeds (with --analyze)")
    args = p.parse_args()
    torch.set_num_threads(1)
    holdout = None
    if args.analyze:
        rows = json.loads(Path(args.analyze).read_text())["rows"]
        if args.holdout:
            holdout = json.loads(Path(args.holdout).read_text())["rows"]
    else:
        rows = run_grid(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=1))  # raw rows first
    if len({r["seed"] for r in rows}) < 2:
        print("one seed only: analyse it as --holdout of a calibration grid")
        return
    res = analyze(rows, holdout)
    print(markdown(res))
    print(json.dumps({k: v for k, v in res.items() if k != "scores"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    hw = "2-core CPU (shared), 1 thread"
    Path(args.out).write_text(json.dumps({"hardware": hw, "analysis": res, "rows": rows}, indent=1))
    Path(args.out).with_suffix(".md").write_text(
        f"# NTK screening benchmark ({hw})\n\n" + markdown(res) + "\n"
    )


if __name__ == "__main__":
    main()
