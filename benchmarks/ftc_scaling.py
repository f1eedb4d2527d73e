"""Fine-tuning capacity scaling (Sohn et al., UAI 2024): m = Theta(N) at depth 2, Theta(sqrt N) at depth 3.

Two tracks:

1. Exact / constructive. K collinear inputs in R^8 (a grid on a random line), a random frozen "pre-trained"
   f, N of the K labels changed to random values. The explicit depth-2 (linear spline) and depth-3 ("W"
   bumps) side networks g from :mod:`lightning_reuse.functional.ftc` are built for each instance and checked
   to give F = f + g == y' on the N changed points and == f on the other K - N (float64). m is the number
   of hidden ReLUs of each construction; log m is regressed on log N (slope, 95% interval). Depth 2 is also
   run on the worst case (isolated changes, two unchanged neighbours each side), where 3N is a lower bound.
2. Empirical. Gradient training (Adam, full batch) of side networks on K random 4-D inputs with
   data-dependent initialisation (first-layer hyperplanes placed at changed points) and restarts; a binary
   search finds the smallest width that fits (|g(x_i) - t_i| < 0.25 on all K points, targets +-1 on the N
   changed, 0 elsewhere). These widths are OPTIMIZER-DEPENDENT UPPER BOUNDS on the FTC, not the FTC.

Run (2-core CPU, 1 thread; about 3 minutes):
    python benchmarks/ftc_scaling.py
    python benchmarks/ftc_scaling.py --quick   # under a minute, smaller grid
    python benchmarks/ftc_scaling.py --empirical-dim 2   # the harder 2-D empirical track
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

from lightning_reuse.functional import (
    depth2_construction,
    depth3_construction,
    fine_tuning_capacity,
    ftc_neurons,
)

RESULTS = Path(__file__).resolve().parent / "results"


def loglog_slope(n: list[int], m: list[float]) -> dict[str, float]:
    """Least-squares slope of log m on log n with a 95% t-interval."""
    fit = stats.linregress(np.log(n), np.log(m))
    half = stats.t.ppf(0.975, len(n) - 2) * fit.stderr if len(n) > 2 else float("nan")
    return {"slope": fit.slope, "low": fit.slope - half, "high": fit.slope + half, "points": len(n)}


# --- track 1: exact constructions -----------------------------------------------------------------
def _random_case_rows(k: int, n: int, seed: int, dim: int) -> list[dict]:
    """N random changes among K collinear points: both constructions, their sizes and exactness."""
    g = torch.Generator().manual_seed(1000 * k + 10 * n + seed)
    direction = torch.randn(dim, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    x = torch.linspace(-1, 1, k, dtype=torch.float64)[:, None] * direction  # collinear
    f = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 1)).double()  # frozen "base"
    y = f(x).squeeze(1).detach()
    changed = torch.randperm(k, generator=g)[:n]
    y_new = y.clone()
    y_new[changed] = torch.randn(n, generator=g, dtype=torch.float64) * 2
    keep = torch.ones(k, dtype=torch.bool)
    keep[changed] = False
    t = y_new - y
    t[keep] = 0.0
    rows = []
    for depth, build in ((2, depth2_construction), (3, depth3_construction)):
        side = build(x, t, direction=direction)
        out = (f(x) + side(x)).squeeze(1).detach()
        err_changed = float((out[changed] - y_new[changed]).abs().max())
        err_kept = float((out[keep] - y[keep]).abs().max()) if keep.any() else 0.0
        rows.append(
            {
                "K": k,
                "N": n,
                "seed": seed,
                "depth": depth,
                "case": "random",
                "m": ftc_neurons(side),
                "bound": fine_tuning_capacity(n, depth, num_samples=k),
                "max_err_changed": err_changed,
                "max_err_kept": err_kept,
                "exact": max(err_changed, err_kept) < 1e-6,
            }
        )
    return rows


def _isolated_row(k: int, n: int) -> dict:
    """Depth-2 worst case: N isolated changes among K points (lower bound 3N)."""
    x = torch.linspace(-1, 1, k, dtype=torch.float64)
    t = torch.zeros(k, dtype=torch.float64)
    t[2 : 4 * n : 4] = torch.linspace(-2, 2, n, dtype=torch.float64) + 0.05
    side = depth2_construction(x, t)
    err = float((side(x[:, None]).squeeze(1) - t).abs().max())
    return {
        "K": k,
        "N": n,
        "seed": 0,
        "depth": 2,
        "case": "isolated",
        "m": ftc_neurons(side),
        "bound": fine_tuning_capacity(n, 2, num_samples=k, bound="lower"),
        "max_err_changed": err,
        "max_err_kept": err,
        "exact": err < 1e-6,
    }


def constructive_track(ks: list[int], ns: list[int], seeds: int, dim: int = 8) -> dict:
    rows = []
    for k in ks:
        for n in [n for n in ns if n <= k]:
            for seed in range(seeds):
                rows += _random_case_rows(k, n, seed, dim)
            if k >= 4 * n + 1:
                rows.append(_isolated_row(k, n))
    slopes = {}
    for depth in (2, 3):
        for k in [*ks, "all"]:
            sel = [r for r in rows if r["depth"] == depth and r["case"] == "random" and k in ("all", r["K"])]
            slopes[f"depth{depth}_K{k}"] = loglog_slope([r["N"] for r in sel], [r["m"] for r in sel])
    iso = [r for r in rows if r["case"] == "isolated"]
    slopes["depth2_isolated"] = loglog_slope([r["N"] for r in iso], [r["m"] for r in iso])
    return {"rows": rows, "slopes": slopes}


# --- track 2: gradient search ------------------------------------------------------------------------
def make_side(dim: int, width: int, depth: int, x: torch.Tensor, changed: torch.Tensor, g: torch.Generator):
    widths = [width] if depth == 2 else [max(1, width // 2), max(1, width - width // 2)]
    layers: list[nn.Module] = []
    prev = dim
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, 1))
    net = nn.Sequential(*layers)
    with torch.no_grad():  # data-dependent init: first-layer hyperplanes just below changed points
        first = net[0]
        v = torch.randn(first.out_features, dim, generator=g)
        v /= v.norm(dim=1, keepdim=True)
        scale = 4.0
        centres = x[changed[torch.arange(first.out_features) % len(changed)]]
        first.weight.copy_(scale * v)
        first.bias.copy_(
            -scale * (v * centres).sum(1) + 0.5 * scale * torch.rand(first.out_features, generator=g)
        )
        net[-1].weight.mul_(0.1)
        net[-1].bias.zero_()
    return net, sum(widths)


def fits_by_gradient(x, t, changed, width, depth, restarts, steps, seed) -> bool:
    mask = torch.zeros(len(x), dtype=torch.bool)
    mask[changed] = True
    for r in range(restarts):
        g = torch.Generator().manual_seed(seed * 7919 + r)
        torch.manual_seed(seed * 7919 + r)
        net, _ = make_side(x.shape[1], width, depth, x, changed, g)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            out = net(x).squeeze(1)
            err = (out - t).pow(2)
            loss = err[mask].mean() + err[~mask].mean()  # balanced: changed and kept points weigh the same
            loss.backward()
            opt.step()
            if step % 100 == 99 and float((out.detach() - t).abs().max()) < 0.25:
                return True
        with torch.no_grad():
            if float((net(x).squeeze(1) - t).abs().max()) < 0.25:
                return True
    return False


def empirical_track(k: int, ns: list[int], seeds: int, restarts: int, steps: int, dim: int = 4) -> dict:
    rows = []
    for n in ns:
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed + 100 * n)
            x = torch.randn(k, dim, generator=g)
            changed = torch.randperm(k, generator=g)[:n]
            t = torch.zeros(k)
            t[changed] = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
            for depth in (2, 3):
                lo, hi = 1, max(4, fine_tuning_capacity(n, depth)) * 4  # search m in [lo, hi]
                if not fits_by_gradient(x, t, changed, hi, depth, restarts, steps, seed):
                    rows.append(
                        {"K": k, "N": n, "seed": seed, "depth": depth, "m": None, "searched_up_to": hi}
                    )
                    continue
                while lo < hi:
                    mid = (lo + hi) // 2
                    if fits_by_gradient(x, t, changed, mid, depth, restarts, steps, seed):
                        hi = mid
                    else:
                        lo = mid + 1
                rows.append({"K": k, "N": n, "seed": seed, "depth": depth, "m": hi})
    slopes = {}
    for depth in (2, 3):
        sel = [r for r in rows if r["depth"] == depth and r["m"] is not None]
        if len({r["N"] for r in sel}) >= 2:
            slopes[f"depth{depth}"] = loglog_slope([r["N"] for r in sel], [r["m"] for r in sel])
    return {"rows": rows, "slopes": slopes, "K": k, "dim": dim, "restarts": restarts, "steps": steps}


# --- report -------------------------------------------------------------------------------------------
def plot(constructive: dict, empirical: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    return [_plot_constructive(constructive, out_dir), _plot_empirical(empirical, out_dir)]


def _plot_constructive(constructive: dict, out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    rows = constructive["rows"]
    markers = {128: "o", 512: "s", 2048: "^"}
    for depth, colour in ((2, "tab:blue"), (3, "tab:orange")):
        for k in sorted({r["K"] for r in rows}):
            sel = [r for r in rows if r["depth"] == depth and r["K"] == k and r["case"] == "random"]
            ns = sorted({r["N"] for r in sel})
            means = [np.mean([r["m"] for r in sel if r["N"] == n]) for n in ns]
            ax.plot(
                ns, means, marker=markers.get(k, "x"), color=colour, alpha=0.8, label=f"depth {depth}, K={k}"
            )
    iso = [r for r in rows if r["case"] == "isolated"]
    ax.plot([r["N"] for r in iso], [r["m"] for r in iso], "k--", label="depth 2, isolated changes (=3N)")
    n_ref = np.array([4, 256])
    ax.plot(n_ref, 3 * n_ref, ":", color="tab:blue", label="slope 1: 3N")
    ax.plot(n_ref, 4 * np.sqrt(2 * n_ref), ":", color="tab:orange", label="slope 1/2: 4 sqrt(2N)")
    ax.set(xscale="log", yscale="log", xlabel="N (labels changed)", ylabel="m (hidden ReLUs)")
    s2, s3 = constructive["slopes"]["depth2_Kall"], constructive["slopes"]["depth3_Kall"]
    s2w = constructive["slopes"]["depth2_isolated"]
    ax.set_title(
        f"Exact constructions, slopes: depth 2 {s2w['slope']:.2f} (worst case), {s2['slope']:.2f} "
        f"(random subsets); depth 3 {s3['slope']:.2f}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "ftc_scaling_constructive.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _plot_empirical(empirical: dict, out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for depth, colour in ((2, "tab:blue"), (3, "tab:orange")):
        sel = [r for r in empirical["rows"] if r["depth"] == depth and r["m"] is not None]
        ax.scatter(
            [r["N"] for r in sel], [r["m"] for r in sel], color=colour, label=f"depth {depth}", alpha=0.7
        )
    ax.set(xscale="log", yscale="log", xlabel="N (labels changed)", ylabel="smallest width found by Adam")
    ax.set_title(f"Empirical (optimizer-dependent upper bound), K={empirical['K']}, d={empirical['dim']}")
    ax.legend()
    fig.tight_layout()
    dim = empirical["dim"]
    path = out_dir / ("ftc_scaling_empirical.png" if dim == 4 else f"ftc_scaling_empirical_d{dim}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def print_constructive(constructive: dict) -> None:
    print(
        "### Track 1: exact constructions (all instances fit exactly: "
        f"{all(r['exact'] for r in constructive['rows'])})\n"
    )
    print("| depth | K | N | m (mean over seeds) | m max | our bound | max error |")
    print("|---|---|---|---|---|---|---|")
    keys = sorted({(r["depth"], r["K"], r["N"]) for r in constructive["rows"] if r["case"] == "random"})
    for depth, k, n in keys:
        sel = [
            r
            for r in constructive["rows"]
            if (r["depth"], r["K"], r["N"]) == (depth, k, n) and r["case"] == "random"
        ]
        err = max(max(r["max_err_changed"], r["max_err_kept"]) for r in sel)
        print(
            f"| {depth} | {k} | {n} | {np.mean([r['m'] for r in sel]):.1f} | {max(r['m'] for r in sel)} | "
            f"{sel[0]['bound']} | {err:.1e} |"
        )
    print("\n| fit | slope of log m on log N | 95% interval | points |\n|---|---|---|---|")
    for name, s in constructive["slopes"].items():
        print(f"| {name} | {s['slope']:.3f} | [{s['low']:.3f}, {s['high']:.3f}] | {s['points']} |")


def print_empirical(empirical: dict) -> None:
    print("\n### Track 2: gradient search (OPTIMIZER-DEPENDENT UPPER BOUND, not the FTC)\n")
    print("| depth | N | smallest width found (per seed) |\n|---|---|---|")
    for depth in (2, 3):
        for n in sorted({r["N"] for r in empirical["rows"]}):
            found = [r["m"] for r in empirical["rows"] if r["depth"] == depth and r["N"] == n]
            print(f"| {depth} | {n} | {found} |")
    for name, s in empirical["slopes"].items():
        print(f"\nempirical {name}: slope {s['slope']:.2f} [{s['low']:.2f}, {s['high']:.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid (a few seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--empirical-dim", type=int, default=4, help="input dimension of the empirical track")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.quick:
        constructive = constructive_track([128, 512], [4, 16, 64], seeds=2)
        empirical = empirical_track(32, [2, 4, 8], seeds=1, restarts=2, steps=1000, dim=args.empirical_dim)
    else:
        constructive = constructive_track([128, 512, 2048], [4, 8, 16, 32, 64, 128, 256], seeds=5)
        empirical = empirical_track(
            48, [2, 4, 8, 16], seeds=2, restarts=2, steps=1500, dim=args.empirical_dim
        )
    t_constructive = time.perf_counter() - start
    pngs = plot(constructive, empirical, args.out)
    hardware = f"{platform.processor() or platform.machine()} CPU, 1 thread"

    print(f"## FTC scaling ({hardware}; {time.perf_counter() - start:.0f} s)\n")
    print_constructive(constructive)
    print_empirical(empirical)
    payload = {
        "hardware": hardware,
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
        "seconds_constructive_and_empirical": t_constructive,
        "quick": args.quick,
        "constructive": constructive,
        "empirical": empirical,
        "plots": [Path(p).name for p in pngs],
    }
    name = "ftc_scaling_quick.json" if args.quick else "ftc_scaling.json"
    if args.empirical_dim != 4:
        name = name.replace(".json", f"_empirical_d{args.empirical_dim}.json")
    (args.out / name).write_text(json.dumps(payload, indent=1, default=float))
    print(f"\nwrote {args.out / name} and {', '.join(Path(p).name for p in pngs)}")


if __name__ == "__main__":
    main()
