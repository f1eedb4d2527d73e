"""FTP from YAML through the ``lightning-reuse`` LightningCLI: the route that names parameters, and the one that cannot.

The module's ``optimizer`` argument receives named parameters, so ``exclude: head`` resolves, also for a
LightningModule that holds its network as ``self.net`` (names ``net.head.*``). LightningCLI's top-level
``optimizer:`` passes ``model.parameters()`` unnamed: a name rule is refused with a fix written in YAML.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_reuse.cli import cli_main
from lightning_reuse.samples import SmallCNN

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


class NetModule(pl.LightningModule):
    """A user module: the network is ``self.net``, the optimizer comes from YAML, named from the module."""

    def __init__(self, optimizer: OptimizerCallable | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = SmallCNN(width=4)
        self.optimizer = optimizer

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        assert self.optimizer is not None
        return self.optimizer(self.named_parameters())


def run_cli(tmp_path: Path, *configs: str, extra: tuple[str, ...] = ()) -> Any:
    args = ["fit", "--config", str(RECIPES / "defaults.yaml")]
    for i, text in enumerate(configs):
        path = tmp_path / f"config{i}.yaml"
        path.write_text(text)
        args += ["--config", str(path)]
    args += ["--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}", *extra]
    return cli_main(args)


def ftp_optimizer(indent: str) -> str:
    return (
        f"{indent}optimizer:\n{indent}  class_path: lightning_reuse.FTPAdamW\n"
        f"{indent}  init_args: {{lr: 0.001, exclude: head}}\n"
    )


def test_recipe_route_excludes_the_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["lightning-reuse"])
    cli = run_cli(tmp_path, (RECIPES / "ftp_finetune.yaml").read_text())
    opt, net = cli.trainer.optimizers[0], cli.model.model
    assert not opt.is_projected(net.head.weight) and not opt.is_projected(net.head.bias)
    assert all(opt.is_projected(p) for n, p in net.named_parameters() if not n.startswith("head."))


def test_module_holding_its_network_as_net_excludes_net_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["lightning-reuse"])
    config = f"model:\n  class_path: {__name__}.NetModule\n  init_args:\n" + ftp_optimizer("    ")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*matches no parameter")  # the rule must match net.head
        cli = run_cli(tmp_path, config)
    opt, net = cli.trainer.optimizers[0], cli.model.net
    assert not opt.is_projected(net.head.weight) and not opt.is_projected(net.head.bias)
    assert opt.is_projected(net.block1[0].weight)
    assert cli.trainer.state.finished


def test_top_level_optimizer_with_a_name_rule_points_to_the_yaml_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["lightning-reuse"])
    config = f"model:\n  class_path: {__name__}.NetModule\n" + ftp_optimizer("")
    with pytest.raises(ValueError, match=r"have no names \(a LightningCLI top-level `optimizer:`") as info:
        run_cli(tmp_path, config)
    message = str(info.value)
    assert (
        "HINT:" in message
        and "model: {init_args: {optimizer: {class_path: lightning_reuse.FTPAdamW" in message
    )
    assert "init_args: {exclude: head}" in message and "recipes/ftp_finetune.yaml" in message
