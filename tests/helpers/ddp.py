"""Run a real multi-process CPU DDP script (gloo) from a test, in a subprocess, with a timeout.

The script is run as ``python script.py`` in ``workdir``; Lightning's ``strategy="ddp"`` re-launches the
same script for the other ranks. The harness environment travels: 1 torch thread, offline wandb, HOME in
``workdir``, and the network guard (any non-loopback connect in any rank fails the run).

Script convention: build ``Trainer(accelerator="cpu", devices=2, strategy="ddp", ...)`` and write what the
test should check into files under the cwd (e.g. ``torch.save(..., f"rank{trainer.global_rank}.pt")``).
Write the script body at column 0; ``SCRIPT_PRELUDE`` is prepended (imports torch, sets 1 thread, and destroys
a process group still alive at exit: seen once under load, a rank aborted in teardown with "terminate called
without an active exception").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT_PRELUDE = """\
import os, sys, atexit
import torch
torch.set_num_threads(1)

def _destroy_process_group():  # a live gloo group at interpreter exit can abort the rank (SIGABRT)
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

atexit.register(_destroy_process_group)
"""


@dataclass
class DDPResult:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path


def run_ddp_script(script: str, workdir: Path, timeout: float = 240.0, nprocs: int = 2) -> DDPResult:
    """Run ``script`` under the harness environment; raise ``AssertionError`` (with the output) on failure.

    ``nprocs`` is exported as ``LIGHTNING_REUSE_TEST_NPROCS`` for the script to use as ``devices``.
    """
    workdir = Path(workdir)
    path = workdir / "ddp_script.py"
    path.write_text(SCRIPT_PRELUDE + textwrap.dedent(script))
    guard_log = workdir / "netguard.log"
    home = workdir / "ddp_home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT / "tests" / "helpers" / "netguard"), str(REPO_ROOT), env.get("PYTHONPATH", "")]
            ),
            "LIGHTNING_REUSE_NETGUARD_LOG": str(guard_log),
            "LIGHTNING_REUSE_TEST_NPROCS": str(nprocs),
            "HOME": str(home),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so the whole process group (all ranks) can be killed on timeout
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"DDP script timed out after {timeout:.0f} s.\n--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-4000:]}"
        ) from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leave no straggler rank behind
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        raise AssertionError(
            f"DDP script exited with {proc.returncode}.\n--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-6000:]}"
        )
    if guard_log.exists() and guard_log.read_text().strip():
        raise AssertionError(
            f"network guard: the DDP script attempted network access:\n{guard_log.read_text()}"
        )
    return DDPResult(proc.returncode, out, err, workdir)
