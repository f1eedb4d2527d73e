"""The demo pipeline: source, RESQUE and NTK pre-checks, every candidate strategy with energy tracking,
recommendation, report.

Every number in the report comes from the runs made here; nothing is hard-coded. The stages import one way:
``config`` <- ``data`` <- ``training`` <- ``resque_pass`` <- ``calibration`` <- ``resque_stage``;
``ntk_stage``, ``recommend``, ``plots`` <- ``report``; this module orchestrates them (only the CLI imports it).
"""

from __future__ import annotations

import contextlib
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
from lightning_reuse.demo.prediction_report import print_predictions
from lightning_reuse.demo.predictions import compare, predict
from lightning_reuse.demo.recommend import precheck_reasons, recommend
from lightning_reuse.demo.report import print_summary, write_report, write_report_so_far
from lightning_reuse.demo.resque_stage import resque_precheck
from lightning_reuse.demo.resume import check_same_config, load_run, saved_config
from lightning_reuse.demo.run_state import DemoInterrupted, RunState, interrupts_deferred, interrupts_raise
from lightning_reuse.demo.sources import source_label
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
        r".*does not have a deterministic implementation.*",  # on an accelerator only (deterministic="warn")
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


def stage_names(strategies: list[Strategy]) -> list[str]:
    """The demo's stages, in order: source, the two pre-checks, one per strategy, the report."""
    return ["source", "resque", "ntk", *(strategy_stage(s.name) for s in strategies), "report"]


def strategy_stage(name: str) -> str:
    """The stage name of the strategy ``name`` (``"strategy/<name>"``)."""
    return f"strategy/{name}"


def run_demo(config: DemoConfig | None = None, resume: str | Path | None = None) -> dict[str, Any]:
    """Run the whole demo (or continue the run in ``resume``) and write the report; return the summary.

    After every stage, ``summary.json`` and the report so far are written, with a status per stage
    (``done`` / ``failed`` with its error / ``interrupted`` / ``not run``). A stage that fails is recorded and
    the stages that do not depend on it still run. The run folder is created with the first stage's results.

    Args:
        config: What to run (default: :class:`DemoConfig`). With ``resume``: must equal the run's own
            configuration (``None``: use it).
        resume: A run folder of an earlier (interrupted or failed) run: only its stages that are not ``done``
            run again, then the full report is written.

    Raises:
        DemoInterrupted: SIGINT or SIGTERM arrived; the finished stages are saved, the one it stopped is
            ``interrupted``; ``err.run_dir`` is the folder (``None`` when nothing was written yet).
        ResumeError: ``resume`` is not a demo run, or ``config`` differs from its configuration.
        ValueError: ``config.strategies`` names an unknown strategy.
    """
    state, config, strategies = open_run(config, resume)
    torch.set_num_threads(1)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    quiet_lightning()
    say: Say = print if config.progress else (lambda *a, **k: None)
    say(f"lightning-reuse demo -> {state.run_dir}" + (" (resumed)" if resume is not None else ""))
    with interrupts_raise():
        try:
            run_stages(state, config, strategies, say)
        except DemoInterrupted as err:
            if err.stage is None:  # between two stages: every finished one is saved already
                with interrupts_deferred(reraise=False):
                    _save_interrupted(state)
            err.run_dir = state.run_dir if state.written() else None
            if resume is None and not state.written():
                with contextlib.suppress(OSError):  # only an empty folder: nothing of this run was written
                    state.run_dir.rmdir()
            raise
    return state.summary


def open_run(
    config: DemoConfig | None, resume: str | Path | None
) -> tuple[RunState, DemoConfig, list[Strategy]]:
    """A new run (its folder reserved), or the saved run in ``resume`` checked against ``config``."""
    if resume is None:
        config = config or DemoConfig()
        strategies = select_strategies(config.strategies)  # refused before any folder is made
        return (
            RunState.new(asdict(config), stage_names(strategies), new_run_dir(config.out_dir)),
            config,
            strategies,
        )
    state = load_run(resume)
    if config is None:
        config = saved_config(state)
    else:
        check_same_config(state, config)
        config.out_dir = str(state.run_dir.parent)  # the ledger beside the run, as when it started
    strategies = select_strategies(config.strategies)
    for s in strategies:
        state.add_stage(strategy_stage(s.name), before="report")
    state.summary["status"] = "running"
    return state, config, strategies


def run_stages(state: RunState, config: DemoConfig, strategies: list[Strategy], say: Say) -> None:
    """Run every stage not ``done`` yet, in order, recording each one's status."""
    started = time.perf_counter()
    summary = state.summary
    say(f"[1/5] source model: {source_label(config)}")
    source: list[torch.nn.Module] = []
    if not run_stage(state, "source", lambda: _source_stage(config, state, source, say), say):
        _stop_after_failed_source(state)
        return
    if not source:  # done in the earlier run: the model only (its numbers are in the summary)
        source.append(source_model(config))
    say(
        "[2/5] RESQUE pre-check: how far is the new data from what the source knows, and what will retraining cost?"
    )
    run_stage(
        state,
        "resque",
        lambda: summary.update(resque=resque_precheck(config, source[0], state.run_dir, say)),
        say,
    )
    say("[3/5] NTK screening: will reprogramming (prompt + label mapping, no weight change) work?")
    run_stage(
        state, "ntk", lambda: summary.update(ntk=ntk_precheck(config, source[0], state.run_dir, say)), say
    )
    _predict_before_spending(state, strategies, say)
    say(f"[4/5] running {len(strategies)} strategies for {config.max_epochs} epochs each, energy tracked")
    for strategy in strategies:
        run_stage(
            state,
            strategy_stage(strategy.name),
            lambda s=strategy: _strategy_stage(s, source[0], config, state, say),
            say,
        )
    say("[5/5] writing the report")
    summary["demo_wall_time_s"] = summary.get("demo_wall_time_s", 0.0) + time.perf_counter() - started
    state.stages["report"] = {"status": "not run"}  # written again: the strategies may have changed
    run_stage(state, "report", lambda: write_outputs(summary, state.run_dir, config, say), say)
    failed = [name for name, s in state.stages.items() if s["status"] != "done"]
    summary["status"] = "complete" if not failed else "failed"
    with interrupts_deferred():
        state.save()


def _predict_before_spending(state: RunState, strategies: list[Strategy], say: Say) -> None:
    """The pre-checks' predicted ranking and cost, printed and saved before any strategy is fitted."""
    state.summary["predictions"] = predict(
        state.summary, [s.name for s in strategies], state.summary["config"]
    )
    print_predictions(state.summary, say)
    with interrupts_deferred():
        if state.written():
            state.save()
            write_progress(state)


def run_stage(state: RunState, name: str, fn: Callable[[], Any], say: Say) -> bool:
    """Run ``fn`` as the stage ``name`` unless it is done; record ``done`` / ``failed`` / ``interrupted``.

    Returns:
        Whether the stage is done.
    """
    if state.status(name) == "done":
        say(f"      {name}: done in the earlier run (skipped)")
        return True
    try:
        fn()
    except Exception as err:  # recorded; the stages that do not need this one still run
        error = f"{type(err).__name__}: {err}"
        say(f"    [{name}] FAILED: {error}")
        with interrupts_deferred():
            state.finish(name, "failed", error)
            write_progress(state)
        return False
    except (DemoInterrupted, KeyboardInterrupt) as err:
        interrupted = err if isinstance(err, DemoInterrupted) else DemoInterrupted("SIGINT")
        interrupted.stage = name
        with interrupts_deferred(reraise=False):  # a second Ctrl-C must not cut the write
            state.stages[name] = {"status": "interrupted"}
            _save_interrupted(state)
        raise interrupted from None
    with interrupts_deferred():
        state.finish(name, "done")
        write_progress(state)
    return True


def _save_interrupted(state: RunState) -> None:
    """Mark the run interrupted and save it, if anything of it is on disk (a start-up leaves nothing)."""
    state.summary["status"] = "interrupted"
    if state.written():
        state.save()
        write_progress(state)


def _stop_after_failed_source(state: RunState) -> None:
    """Every later stage needs the source: leave them ``not run`` and close the run as failed."""
    state.summary["status"] = "failed"
    with interrupts_deferred():
        state.save()
        write_progress(state)


def write_progress(state: RunState) -> None:
    """The report so far (``report.md`` without plots) beside ``summary.json``."""
    if state.written() and state.status("report") != "done":
        write_report_so_far(state.summary, state.run_dir)


def _source_stage(config: DemoConfig, state: RunState, out: list[torch.nn.Module], say: Say) -> None:
    source = source_model(config)
    state.summary.update(source_summary(config, source, say))
    out.append(source)


def _strategy_stage(
    strategy: Strategy, source: torch.nn.Module, config: DemoConfig, state: RunState, say: Say
) -> None:
    """Fit one strategy; its result (also a failed one) replaces any earlier one in the summary."""
    say(f"  - {strategy.name}: {strategy.description}")
    try:
        result = run_strategy(strategy, source, config, state.run_dir, config.target_acc, budget=True)
    except Exception as err:
        _put_result(state, StrategyResult.failed(strategy, err))
        raise
    _put_result(state, result)


def _put_result(state: RunState, result: StrategyResult) -> None:
    """Put ``result`` in the summary's strategies, in the demo's order, replacing an earlier one."""
    order = [name.removeprefix("strategy/") for name in state.stages if name.startswith("strategy/")]
    results = {r["name"]: r for r in state.summary.get("strategies", [])}
    results[result.name] = asdict(result)
    state.summary["strategies"] = [results[n] for n in order if n in results]


def source_summary(config: DemoConfig, source: torch.nn.Module, say: Say) -> dict[str, Any]:
    """The source's accuracy on clean and on new test data, and the target."""
    x_te, y_te = new_data(config).test_set.tensors
    summary: dict[str, Any] = {"sections": []}
    summary["source_acc_on_new_data"] = accuracy(source, x_te, y_te)
    summary["source_acc_on_clean_data"] = accuracy(source, *clean_data(config).test_set.tensors)
    summary["target_acc"] = config.target_acc
    say(
        f"      source accuracy: {summary['source_acc_on_clean_data']:.3f} on clean test digits, "
        f"{summary['source_acc_on_new_data']:.3f} on the new ({config.shift} {config.level}) test digits"
    )
    return summary


def write_outputs(summary: dict[str, Any], run_dir: Path, config: DemoConfig, say: Say) -> None:
    """The recommendation, ``report.md`` with its PNGs, the offline W&B run (if asked), and the printed table."""
    results = [StrategyResult(**r) for r in summary.get("strategies", [])]
    pick, reasons = recommend(results)
    summary["recommendation"] = {"strategy": pick, "reasons": reasons + precheck_reasons(summary, results)}
    summary["predicted_vs_measured"] = compare(summary)
    summary["report"] = str(write_report(summary, run_dir, use_wandb=config.wandb))
    print_summary(summary, printer=say)
