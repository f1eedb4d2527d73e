"""The demo loses nothing on interrupt: real SIGINT / SIGTERM in a subprocess, then ``--resume`` in process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from lightning_reuse.cli import main
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.pipeline import select_strategies, stage_names
from lightning_reuse.demo.run_state import RunState

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = ["full fine-tuning", "linear probe"]
# the quick configuration of test_demo.py, with epochs enough that the second strategy's fit lasts a while
DEMO_ARGS = ["--quick", "--no-wandb", "--seed", "1", "--epochs", "20", "--strategies", *STRATEGIES]

START_UP_SCRIPT = """
import sys
from lightning_reuse.cli import interrupted_message
from lightning_reuse.demo import DemoConfig, run_demo
from lightning_reuse.demo import DemoInterrupted

config = DemoConfig(out_dir=sys.argv[1], quick=True, wandb=False, strategies=["linear probe"])
config.source_epochs = 200  # the source is pre-trained at start-up: long enough to be interrupted in
try:
    run_demo(config)
except DemoInterrupted as err:
    print(interrupted_message(err), file=sys.stderr)
    sys.exit(130)
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _interrupt_when(
    cmd: list[str], line_start: str, sig: int, cwd: Path, env: dict[str, str]
) -> tuple[int, str, str]:
    """Run ``cmd``, send ``sig`` once a stdout line starts with ``line_start``; return (rc, stdout, stderr)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(line_start):
            proc.send_signal(sig)
            break
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, "".join(seen) + out, err


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_in_second_strategy_keeps_the_first_and_resume_finishes(
    sig: signal.Signals, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "reports"
    cmd = [sys.executable, "-m", "lightning_reuse.cli", "demo", "--out", str(out_dir), *DEMO_ARGS]
    rc, stdout, stderr = _interrupt_when(cmd, "  - linear probe:", sig, REPO, _env())
    assert rc == 128 + sig.value, stdout + stderr
    (run_dir,) = out_dir.glob("run-*")
    message = stderr.strip().splitlines()[-1]  # one line: the run folder and the resume command
    assert f"({sig.name})" in message and f"lightning-reuse demo --resume {run_dir}" in message
    before = _summary(run_dir)
    stages = {name: s["status"] for name, s in before["stages"].items()}
    assert stages == {
        "source": "done",
        "resque": "done",
        "ntk": "done",
        "strategy/full fine-tuning": "done",
        "strategy/linear probe": "interrupted",
        "report": "not run",
    }
    (first,) = before["strategies"]  # the finished strategy's numbers are on disk
    assert first["name"] == "full fine-tuning" and first["energy_wh"] > 0 and first["epochs"] == 20
    assert before["resque"]["ledger_runs"] and before["ntk"]["decision"] in ("PASS", "WARN", "FAIL")
    assert "| strategy/linear probe | interrupted |" in (run_dir / "report.md").read_text()

    assert main(["demo", "--resume", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    after = _summary(run_dir)
    assert all(s["status"] == "done" for s in after["stages"].values()) and after["status"] == "complete"
    assert after["strategies"][0] == first  # kept as measured, not fitted again
    assert [r["name"] for r in after["strategies"]] == STRATEGIES and after["strategies"][1]["epochs"] == 20
    assert "strategy/full fine-tuning: done in the earlier run (skipped)" in printed
    assert "  - full fine-tuning:" not in printed and "  - linear probe:" in printed
    assert [p.name for p in (run_dir / "logs" / "full_fine-tuning").iterdir()] == ["version_0"]
    assert after["recommendation"]["strategy"] in STRATEGIES and (run_dir / "accuracy_vs_energy.png").exists()


def test_interrupt_during_start_up_leaves_no_folder(tmp_path: Path) -> None:
    out_dir = tmp_path / "reports"
    cmd = [sys.executable, "-c", START_UP_SCRIPT, str(out_dir)]
    env = _env(LIGHTNING_REUSE_CACHE=str(tmp_path / "fresh_cache"))  # the source is trained, not loaded
    rc, stdout, stderr = _interrupt_when(cmd, "[1/5] source model", signal.SIGINT, REPO, env)
    assert rc == 130, stdout + stderr
    assert "during start-up, before anything was written" in stderr.strip().splitlines()[-1]
    assert list(out_dir.glob("run-*")) == []


def test_resume_refuses_a_folder_that_is_not_a_demo_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: `resume`={str(tmp_path)!r} is not a demo run: it has no summary.json")
    assert "HINT: pass a run-* folder" in err
    (tmp_path / "summary.json").write_text(json.dumps({"accuracy": 0.9}))
    assert main(["demo", "--resume", str(tmp_path)]) == 2
    assert "was not written by the demo" in capsys.readouterr().err


def test_resume_refuses_another_configuration_and_names_the_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = DemoConfig(out_dir=str(tmp_path), quick=True, wandb=False, seed=1)
    run_dir = tmp_path / "run-x"
    RunState.new(asdict(config), stage_names(select_strategies(None)), run_dir).save()
    assert main(["demo", "--resume", str(run_dir), "--seed", "2", "--level", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "was made with another configuration" in err
    assert "level: run has 1.0, now 0.5" in err and "seed: run has 1, now 2" in err and "HINT:" in err
    assert not (run_dir / "logs").exists()  # refused before anything ran
