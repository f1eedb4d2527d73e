"""``lightning-reuse demo --resume RUN_DIR``: read a run back, and refuse one that cannot be continued.

Example:
    >>> import tempfile
    >>> load_run(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    lightning_reuse.demo.resume.ResumeError: `resume`=... is not a demo run: it has no summary.json. HINT: ...
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.run_state import KIND, STATUSES, RunState

# Keys that may differ between a run and its resumption: where it is written and what is printed.
IGNORED_KEYS = ("out_dir", "progress")


class ResumeError(ValueError):
    """The folder passed to ``--resume`` is not a demo run, or was made with another configuration."""


def _not_a_run(run_dir: Path, why: str) -> ResumeError:
    return ResumeError(
        f"`resume`={str(run_dir)!r} is not a demo run: {why}. HINT: pass a run-* folder written by "
        "`lightning-reuse demo` (its summary.json names its stages), or start a new run without `--resume`."
    )


def load_run(run_dir: str | Path) -> RunState:
    """The saved state of the demo run in ``run_dir``.

    Raises:
        ResumeError: ``run_dir`` is missing, has no ``summary.json``, or its summary is not a demo's.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise _not_a_run(run_dir, "no such folder")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise _not_a_run(run_dir, "it has no summary.json")
    try:
        summary = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise _not_a_run(run_dir, f"its summary.json is not valid JSON ({err})") from err
    if not isinstance(summary, dict) or summary.get("kind") != KIND:
        raise _not_a_run(run_dir, f'its summary.json was not written by the demo (no "kind": {KIND!r})')
    stages = summary.get("stages")
    if not isinstance(stages, dict) or not isinstance(summary.get("config"), dict):
        raise _not_a_run(run_dir, "its summary.json has no stages or no config")
    bad = {k: v.get("status") for k, v in stages.items() if v.get("status") not in STATUSES}
    if bad:
        raise _not_a_run(
            run_dir, f"its stages have unknown statuses {bad} (expected one of {list(STATUSES)})"
        )
    return RunState(summary, run_dir)


def saved_config(state: RunState) -> DemoConfig:
    """The configuration the run was made with (its ``out_dir`` the run folder's parent)."""
    saved = dict(state.summary["config"])
    known = {k: v for k, v in saved.items() if k in DemoConfig.__dataclass_fields__}
    config = DemoConfig.from_saved(known)
    config.out_dir = str(state.run_dir.parent)
    return config


def config_differences(saved: dict[str, Any], config: DemoConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every key where ``config`` differs from the saved one.

    A key the saved run lacks (an option added since it was made) counts as its default value.
    """
    new = asdict(config)
    defaults = asdict(DemoConfig.from_saved({k: v for k, v in saved.items() if k in new}))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    keys = sorted((set(saved) | set(new)) - set(IGNORED_KEYS))
    return {k: (saved.get(k), new.get(k)) for k in keys if saved.get(k) != new.get(k)}


def check_same_config(state: RunState, config: DemoConfig) -> None:
    """Refuse to continue a run with another configuration than the one it was made with.

    Raises:
        ResumeError: naming every key that differs, with both values.
    """
    diff = config_differences(state.summary["config"], config)
    if diff:
        listed = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
        raise ResumeError(
            f"`resume`={str(state.run_dir)!r} was made with another configuration ({listed}): its finished "
            "stages would not match the rest. HINT: resume without these options (the run's own "
            "configuration is used), or start a new run without `--resume`."
        )
