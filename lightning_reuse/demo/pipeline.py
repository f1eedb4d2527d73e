"""The demo pipeline: source, RESQUE and NTK pre-checks, every candidate strategy with energy tracking,
recommendation, report.

Every number in the report comes from the runs made here; nothing is hard-coded. The stages import one way:
``config`` <- ``data`` <- ``training`` <- ``resque_pass`` <- ``calibration`` <- ``resque_stage``;
``ntk_stage``, ``recommend``, ``plots`` <- ``report``; this module orchestrates them (only the CLI imports it).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_reuse.demo.config import DemoConfig, new_run_dir
from lightning_reuse.demo.data import clean_data, new_data, source_model
from lightning_reuse.demo.ntk_stage import ntk_precheck
from lightning_reuse.demo.recommend import precheck_reasons, recommend
from lightning_reuse.demo.report import print_summary, write_report
from lightning_reuse.demo.resque_stage import resque_precheck
from lightning_reuse.demo.strategies import Strategy, available_strategies
from lightning_reuse.demo.training import StrategyResult, run_strategy
from lightning_reuse.samples import accuracy

Say = Callable[..., Any]


def quiet_lightning() -> None:
    """Keep the demo's output to its own progress lines (Lightning's banners and known notices hidden)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        r".*module\(s\) in eval mode at the start of training.*",  # frozen parts are in eval on purpose
        r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
        r".*smaller than the logging interval.*",
        r".*does not have many workers.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def select_strategies(names: list[str] | None) -> list[Strategy]:
    """The available strategies named in ``names`` (all of them for ``None``), in the demo's order."""
    strategies = available_strategies()
    if names is None:
        return strategies
    known = {s.name for s in strategies}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(
            f"Unknown strategies {unknown} in `strategies`; available: {sorted(known)}. "
            "HINT: pass names from the available list (quoted, e.g. --strategies 'linear probe')."
        )
    return [s for s in strategies if s.name in names]


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the whole demo and write the report; return the summary dictionary (also saved as JSON)."""
    config = config or DemoConfig()
    torch.set_num_threads(1)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    quiet_lightning()
    strategies = select_strategies(config.strategies)
    run_dir = new_run_dir(config.out_dir)
    say: Say = print if config.progress else (lambda *a, **k: None)
    started = time.perf_counter()
    say(f"lightning-reuse demo -> {run_dir}")
    say(f"[1/5] source model: SmallCNN(width={config.source_width}) pre-trained on clean digits")
    source = source_model(config)
    summary = source_summary(config, source, run_dir, say)
    say(
        "[2/5] RESQUE pre-check: how far is the new data from what the source knows, and what will retraining cost?"
    )
    summary["resque"] = resque_precheck(config, source, run_dir, say)
    say("[3/5] NTK screening: will reprogramming (prompt + label mapping, no weight change) work?")
    summary["ntk"] = ntk_precheck(config, source, run_dir, say)
    say(f"[4/5] running {len(strategies)} strategies for {config.max_epochs} epochs each, energy tracked")
    results = run_strategies(strategies, source, config, run_dir, say)
    pick, reasons = recommend(results)
    summary["strategies"] = [asdict(r) for r in results]
    summary["recommendation"] = {"strategy": pick, "reasons": reasons + precheck_reasons(summary, results)}
    summary["demo_wall_time_s"] = time.perf_counter() - started
    say("[5/5] writing the report")
    write_outputs(summary, run_dir, config, say)
    return summary


def source_summary(config: DemoConfig, source: torch.nn.Module, run_dir: Path, say: Say) -> dict[str, Any]:
    """The summary's start: the configuration, and the source's accuracy on clean and on new test data."""
    x_te, y_te = new_data(config).test_set.tensors
    summary: dict[str, Any] = {"config": asdict(config), "run_dir": str(run_dir), "sections": []}
    summary["source_acc_on_new_data"] = accuracy(source, x_te, y_te)
    summary["source_acc_on_clean_data"] = accuracy(source, *clean_data(config).test_set.tensors)
    summary["target_acc"] = config.target_acc
    say(
        f"      source accuracy: {summary['source_acc_on_clean_data']:.3f} on clean test digits, "
        f"{summary['source_acc_on_new_data']:.3f} on the new ({config.shift} {config.level}) test digits"
    )
    return summary


def run_strategies(
    strategies: list[Strategy], source: torch.nn.Module, config: DemoConfig, run_dir: Path, say: Say
) -> list[StrategyResult]:
    """Fit every strategy; one that fails is kept with its error (it must not lose the others' results)."""
    results = []
    for strategy in strategies:
        say(f"  - {strategy.name}: {strategy.description}")
        try:
            results.append(run_strategy(strategy, source, config, run_dir, config.target_acc))
        except Exception as err:
            say(f"    [{strategy.name}] FAILED: {type(err).__name__}: {err}")
            results.append(StrategyResult.failed(strategy, err))
    return results


def write_outputs(summary: dict[str, Any], run_dir: Path, config: DemoConfig, say: Say) -> None:
    """``summary.json``, ``report.md`` with its PNGs, the offline W&B run (if asked), and the printed table."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["report"] = str(write_report(summary, run_dir, use_wandb=config.wandb))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary, printer=say)
