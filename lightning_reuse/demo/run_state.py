"""The demo's run state: a status per stage, written to ``summary.json`` after every stage, and interrupts.

Every stage of the demo ends ``done``, ``failed`` (with the error text) or ``interrupted`` (Ctrl-C or
SIGTERM); a stage that has not started is ``not run``. :class:`RunState` keeps the summary and the statuses
together and writes them (atomically) after every stage, so an interrupt or a crash loses at most the stage
it stopped. ``lightning-reuse demo --resume RUN_DIR`` reads them back (:func:`load_run`) and runs only what
is not ``done``.

Example:
    >>> import tempfile
    >>> state = RunState.new({"seed": 0}, ["source", "report"], Path(tempfile.mkdtemp()) / "run-x")
    >>> state.status("source"), state.pending()
    ('not run', ['source', 'report'])
    >>> state.finish("source", "done")
    >>> state.pending(), (state.run_dir / "summary.json").exists()
    (['report'], True)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Literal

Status = Literal["done", "failed", "interrupted", "not run"]
STATUSES: tuple[str, ...] = ("done", "failed", "interrupted", "not run")
KIND = "lightning-reuse demo"  # marks a summary.json written by the demo (``--resume`` checks it)


class DemoInterrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM during the demo.

    A ``BaseException`` like ``KeyboardInterrupt``, so that ``except Exception`` (a failed strategy) does not
    catch it; not a ``KeyboardInterrupt``, so that Lightning's trainer re-raises it instead of exiting.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.stage: str | None = None  # the stage it stopped (set by the demo)
        self.run_dir: Path | None = None  # where the finished stages are (None: nothing was written)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`DemoInterrupted` (previous handlers restored after).

    Outside the main thread signal handlers cannot be set; the block then runs unchanged (a Ctrl-C still
    arrives as ``KeyboardInterrupt``, which the demo treats the same way).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise DemoInterrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def interrupts_deferred(reraise: bool = True) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM wait: a signal cannot cut the summary's write in half.

    Args:
        reraise: Raise :class:`DemoInterrupted` after the block for a signal that arrived within it (``False``:
            drop it; the demo is already stopping).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[str] = []

    def _note(signum: int, frame: FrameType | None) -> None:
        arrived.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, _note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if arrived and reraise:
        raise DemoInterrupted(arrived[0])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it): never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class RunState:
    """The summary of one demo run and the status of each of its stages, saved as ``summary.json``.

    Args:
        summary: The summary dictionary (``"stages"`` holds ``{stage: {"status": ..., "error": ...}}``).
        run_dir: The run folder (created on the first :meth:`save`, not before).
    """

    def __init__(self, summary: dict[str, Any], run_dir: Path) -> None:
        self.summary = summary
        self.run_dir = run_dir

    @classmethod
    def new(cls, config: dict[str, Any], stages: list[str], run_dir: Path) -> RunState:
        """A run whose ``stages`` are all ``not run``."""
        summary = {
            "kind": KIND,
            "status": "running",
            "config": config,
            "run_dir": str(run_dir),
            "stages": {name: {"status": "not run"} for name in stages},
        }
        return cls(summary, run_dir)

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.summary["stages"]

    def status(self, stage: str) -> str:
        """The status of ``stage`` (``"not run"`` for a stage this run does not know yet)."""
        return self.stages.get(stage, {}).get("status", "not run")

    def pending(self) -> list[str]:
        """The stages not ``done``, in order."""
        return [name for name, s in self.stages.items() if s["status"] != "done"]

    def add_stage(self, stage: str, before: str) -> None:
        """Add ``stage`` as ``not run`` just before ``before`` (a strategy named on resume)."""
        if stage in self.stages:
            return
        items = list(self.stages.items())
        at = next((i for i, (name, _) in enumerate(items) if name == before), len(items))
        items.insert(at, (stage, {"status": "not run"}))
        self.summary["stages"] = dict(items)

    def finish(self, stage: str, status: Status, error: str | None = None) -> None:
        """Record how ``stage`` ended and save the summary."""
        self.stages[stage] = {"status": status, **({"error": error} if error else {})}
        self.save()

    def save(self) -> None:
        """Write ``summary.json`` into the run folder (creating it)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "summary.json", self.summary)

    def written(self) -> bool:
        """Whether ``summary.json`` exists (anything of this run is on disk)."""
        return (self.run_dir / "summary.json").exists()
