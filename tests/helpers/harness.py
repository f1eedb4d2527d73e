"""The lightning_reuse test harness (a pytest plugin loaded by the root conftest).

What every test gets, automatically:
- 1 torch thread (the CI machines have 2 shared cores; 2 threads was 10x slower);
- its own cwd and HOME under ``tmp_path`` (codecarbon and wandb read config files from both);
- WANDB_* / CODECARBON_* set or cleared before wandb or codecarbon can be imported, per-test wandb dirs,
  and ``wandb.finish()`` afterwards (otherwise the next Trainer reuses the run);
- the torch.distributed process group destroyed and ``os.environ`` restored afterwards;
- a network guard: a connection to any non-loopback address (or a DNS lookup) is refused and fails the test.

Fixtures: ``network_guard`` (the recorded violations, to assert on), ``wandb_offline`` (an offline
``WandbLogger`` factory), ``ddp_runner`` (run a real 2-process CPU DDP script with a timeout).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# --- before anything imports wandb / codecarbon -------------------------------------------------
for _key in list(os.environ):
    if _key.startswith(("WANDB_", "CODECARBON_")):
        del os.environ[_key]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="lightning_reuse_tests_"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
os.environ.update(
    {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB__DISABLE_STATS": "true",
        "WANDB_DIR": str(_SESSION_DIR / "wandb"),
        "WANDB_CACHE_DIR": str(_SESSION_DIR / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(_SESSION_DIR / "wandb_config"),
        "WANDB_DATA_DIR": str(_SESSION_DIR / "wandb_data"),
        "HF_HUB_OFFLINE": "1",
        # pre-trained digits sources are trained once per test session, not once per test
        "LIGHTNING_REUSE_CACHE": str(_SESSION_DIR / "model_cache"),
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
    }
)

import torch  # noqa: E402

from tests.helpers import netguard_impl  # noqa: E402

torch.set_num_threads(1)
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    env_before = dict(os.environ)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("WANDB_DIR", "wandb"),
        ("WANDB_CACHE_DIR", "wandb_cache"),
        ("WANDB_CONFIG_DIR", "wandb_config"),
        ("WANDB_DATA_DIR", "wandb_data"),
    ):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    yield
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(env_before)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def network_guard() -> Iterator[list[str]]:
    """Refuse and record non-loopback connections; the test fails if any was attempted.

    A test that provokes one on purpose clears the list it receives before returning.
    """
    netguard_impl.VIOLATIONS.clear()
    netguard_impl.install()
    try:
        yield netguard_impl.VIOLATIONS
    finally:
        netguard_impl.uninstall()
    found = list(netguard_impl.VIOLATIONS)
    netguard_impl.VIOLATIONS.clear()
    if found:
        pytest.fail(f"network guard: the test attempted non-loopback network access: {found}")


@pytest.fixture
def wandb_offline(tmp_path: Path) -> Any:
    """Return a factory of offline ``WandbLogger`` s writing under ``tmp_path/wandb``.

    Read the run back with :func:`tests.helpers.wandb_read.read_offline_run`.
    """
    from lightning.pytorch.loggers import WandbLogger

    def make(**kwargs: Any) -> WandbLogger:
        kwargs.setdefault("project", "lightning-reuse-tests")
        kwargs.setdefault("save_dir", str(tmp_path))
        return WandbLogger(mode="offline", **kwargs)

    return make


@pytest.fixture
def ddp_runner(tmp_path: Path) -> Any:
    """Return :func:`tests.helpers.ddp.run_ddp_script` bound to this test's ``tmp_path``."""
    from tests.helpers.ddp import run_ddp_script

    def run(script: str, timeout: float = 240.0, nprocs: int = 2) -> Any:
        return run_ddp_script(script, workdir=tmp_path, timeout=timeout, nprocs=nprocs)

    return run
