"""The harness itself: network guard, DDP helper and wandb isolation are real and do what they claim."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from tests.helpers.wandb_read import find_offline_run_dirs, read_offline_run


def test_network_guard_refuses_and_records_non_loopback(network_guard: list[str]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    with pytest.raises(ConnectionRefusedError, match="network guard"):
        sock.connect(("10.255.255.1", 80))
    sock.close()
    assert network_guard == ["connect to ('10.255.255.1', 80)"]
    network_guard.clear()  # provoked on purpose


def test_network_guard_allows_loopback() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=2)
    client.close()
    server.close()


def test_isolation_of_cwd_home_and_env(tmp_path: Path) -> None:
    assert Path.cwd() == tmp_path
    assert os.environ["HOME"] == str(tmp_path / "home")
    assert os.environ["WANDB_MODE"] == "offline"
    assert not [k for k in os.environ if k.startswith("CODECARBON_")]
    assert torch.get_num_threads() == 1


def test_wandb_offline_run_is_isolated_and_readable(wandb_offline, tmp_path: Path) -> None:
    logger = wandb_offline(name="harness")
    logger.log_metrics({"energy_wh": 1.25}, step=0)
    logger.experiment.summary["total_wh"] = 2.5
    import wandb

    wandb.finish()
    runs = find_offline_run_dirs(tmp_path)
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run["history"][0]["energy_wh"] == 1.25
    assert run["summary"]["total_wh"] == 2.5


@pytest.mark.ddp
def test_ddp_runner_real_two_process_fit(ddp_runner) -> None:
    result = ddp_runner(
        """
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset

class M(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)
    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.lin(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

torch.manual_seed(0)
x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
model = M()
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
torch.save({"rank": trainer.global_rank, "world": trainer.world_size, "w": model.lin.weight.detach().clone()},
           f"rank{trainer.global_rank}.pt")
"""
    )
    r0 = torch.load(result.workdir / "rank0.pt")
    r1 = torch.load(result.workdir / "rank1.pt")
    assert (r0["world"], r1["rank"]) == (2, 1)
    assert torch.equal(r0["w"], r1["w"])  # DDP keeps replicas identical


def test_ddp_runner_reports_failures(ddp_runner) -> None:
    with pytest.raises(AssertionError, match="exited with 3"):
        ddp_runner("sys.exit(3)\n", timeout=60)
