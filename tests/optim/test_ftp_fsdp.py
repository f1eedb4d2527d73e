"""FTP on FSDP2-sharded parameters (``fully_shard``, DTensor): 2 real CPU processes (gloo) against one process."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_reuse import FTP
from tests.helpers.fsdp import run_fsdp_script

STEPS = 24

# Shared by the script and the single-process reference: dim 0 of 5 and 1 split 3/2 and 1/0 over 2 ranks,
# so rank 1 holds an empty shard of `body.3`; LayerNorm gives sharded 1-D tensors; `head` is excluded.
MODEL = """
def build(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module("body", nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 1), nn.Tanh()))
    net.add_module("head", nn.Linear(1, 3))
    return net

def optimizer(net, **kw):
    base = torch.optim.AdamW(net.named_parameters(), lr=0.05, weight_decay=0.01)
    return FTP(base, k=0.5, exclude="head", **kw)

def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 16, 6, generator=g), torch.randint(0, 3, (STEPS, 16), generator=g)
"""

SCRIPT = (
    f"STEPS = {STEPS}\n"
    + """
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from lightning_reuse import FTP
"""
    + MODEL
    + """
def shard(net):
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))  # CPU ranks also where CUDA is present
    for m in [*net.body, net.head]:
        if any(True for _ in m.parameters()):
            fully_shard(m, mesh=mesh)
    return fully_shard(net, mesh=mesh)

def train(net, opt, steps, rank):
    x, y = data()
    out = []
    for i in steps:
        opt.zero_grad()
        xb, yb = x[i, rank * 8:(rank + 1) * 8], y[i, rank * 8:(rank + 1) * 8]  # half of the batch of 16
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
        out.append(torch.cat([p.full_tensor().flatten() for p in net.parameters()]))
    return out

def ftp_scalars(net, opt):
    return torch.stack([opt.state[p][k] for p in net.parameters() if opt.is_projected(p)
                        for k in ("ftp_gamma", "ftp_exp_avg", "ftp_exp_avg_sq")])

def refusals(net, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.fsdp import FullyShardedDataParallel
    cases = {
        "shard1": lambda: FTP(torch.optim.SGD([nn.Parameter(distribute_tensor(
            torch.randn(4, 6), init_device_mesh("cpu", (world,)), [Shard(1)]))], lr=0.1)),
        "fused": lambda: FTP(torch.optim.SGD(net.parameters(), lr=0.1), implementation="fused"),
        "fsdp1": lambda: FTP(torch.optim.SGD(FullyShardedDataParallel(
            nn.Linear(4, 4), device_id=torch.device("cpu")).parameters(), lr=0.1)),
    }
    errors = {}
    for key, make in cases.items():
        try:
            make()
        except ValueError as err:
            errors[key] = str(err)
    return errors

def worker(rank, world):
    net = shard(build())
    opt = optimizer(net)
    history = train(net, opt, range(STEPS), rank)
    s = opt.state[net.body[0].weight]
    placements = [str(s[k].placements) for k in ("ftp_anchor", "ftp_direction")]
    local_rows = {n: p.to_local().shape[0] if p.dim() else -1 for n, p in net.named_parameters()}
    # save after half of the steps, then a fresh model (other weights, other anchors at construction) loads
    net2 = shard(build())
    opt2 = optimizer(net2)
    train(net2, opt2, range(STEPS // 2), rank)
    model_sd, optim_sd = get_state_dict(net2, opt2)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id="ckpt")
    net3 = shard(build(seed=5))
    opt3 = optimizer(net3)
    model_sd, optim_sd = get_state_dict(net3, opt3)
    sd = {"model": model_sd, "optim": optim_sd}
    dcp.load(sd, checkpoint_id="ckpt")
    set_state_dict(net3, opt3, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    resumed = train(net3, opt3, range(STEPS // 2, STEPS), rank)
    errors = refusals(net, world)
    net4 = shard(build())
    opt4 = optimizer(net4, direction_dtype=torch.bfloat16)
    history_bf16 = train(net4, opt4, range(STEPS), rank)
    dir_dtype = str(opt4.state[net4.body[0].weight]["ftp_direction"].to_local().dtype)
    torch.save({"history": torch.stack(history), "errors": errors, "resumed": torch.stack(resumed), "scalars": ftp_scalars(net, opt),
                "placements": placements, "local_rows": local_rows,
                "step": opt3.param_groups[0]["ftp_step"], "history_bf16": torch.stack(history_bf16),
                "dir_dtype": dir_dtype}, f"rank{rank}.pt")

if __name__ == "__main__":
    launch(worker, 2)
"""
)

namespace: dict = {"torch": torch, "nn": nn, "FTP": FTP, "STEPS": STEPS}
exec(MODEL, namespace)  # the same model, optimizer and data as the script


def single_process_history(**ftp_kw: object) -> torch.Tensor:
    net = namespace["build"]()
    opt = namespace["optimizer"](net, **ftp_kw)
    x, y = namespace["data"]()
    out = []
    for i in range(STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()
        out.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    workdir = tmp_path_factory.mktemp("ftp_fsdp")
    result = run_fsdp_script(SCRIPT, workdir, timeout=90)
    return torch.load(result.workdir / "rank0.pt"), torch.load(result.workdir / "rank1.pt")


@pytest.mark.ddp
@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_whole_batch(two_ranks: tuple[dict, dict]) -> None:
    r0, r1 = two_ranks
    assert r0["local_rows"]["body.0.weight"] == 3 and r1["local_rows"]["body.0.weight"] == 2  # uneven dim 0
    assert r1["local_rows"]["body.3.weight"] == 0 and r1["local_rows"]["body.3.bias"] == 0  # empty shards
    assert r0["placements"] == ["(Shard(dim=0),)", "(Shard(dim=0),)"]  # anchors/directions stay sharded
    reference = single_process_history()
    assert reference.shape == r0["history"].shape and len(reference) >= 20
    assert torch.equal(r0["history"], r1["history"])
    torch.testing.assert_close(r0["history"], reference, atol=1e-5, rtol=0)
    # the radius and its Adam moments are the same on every rank (one all-reduce feeds both)
    assert torch.equal(r0["scalars"], r1["scalars"])
    # the projection is active: the reference is not plain AdamW
    net = namespace["build"]()
    base = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.01)
    x, y = namespace["data"]()
    for i in range(STEPS):
        base.zero_grad()
        nn.functional.cross_entropy(net(x[i]), y[i]).backward()
        base.step()
    assert not torch.allclose(
        torch.cat([p.detach().flatten() for p in net.parameters()]), reference[-1], atol=1e-3
    )


@pytest.mark.ddp
@pytest.mark.slow
def test_two_ranks_with_a_bf16_direction_equal_one_process(two_ranks: tuple[dict, dict]) -> None:
    r0, r1 = two_ranks
    assert r0["dir_dtype"] == r1["dir_dtype"] == "torch.bfloat16"
    reference = single_process_history(direction_dtype=torch.bfloat16)
    assert torch.equal(r0["history_bf16"], r1["history_bf16"])
    torch.testing.assert_close(r0["history_bf16"], reference, atol=1e-5, rtol=0)
    assert not torch.equal(reference, single_process_history())  # the rounding is not a no-op


@pytest.mark.ddp
@pytest.mark.slow
def test_distributed_checkpoint_save_load_continue_equals_uninterrupted(two_ranks: tuple[dict, dict]) -> None:
    r0, r1 = two_ranks
    assert r0["step"] == STEPS
    uninterrupted = r0["history"][STEPS // 2 :]
    torch.testing.assert_close(r0["resumed"], uninterrupted, atol=1e-6, rtol=0)
    assert torch.equal(r0["resumed"], r1["resumed"])


@pytest.mark.ddp
@pytest.mark.slow
def test_other_placements_fsdp1_and_the_fused_path_are_refused_naming_the_way(
    two_ranks: tuple[dict, dict],
) -> None:
    errors = two_ranks[0]["errors"]
    assert "Shard(dim=1)" in errors["shard1"] and "HINT:" in errors["shard1"]
    assert "FSDP1" in errors["fsdp1"] and "fully_shard" in errors["fsdp1"]
    assert "'fused'" in errors["fused"] and "implementation='auto'" in errors["fused"]


def test_flat_partitions_replacing_the_parameters_are_refused_at_step() -> None:
    """DeepSpeed ZeRO (and FSDP1) swap the optimizer's parameters for flat partitions FTP never saw."""
    net = namespace["build"]()
    opt = namespace["optimizer"](net)
    flat = nn.Parameter(torch.cat([p.detach().flatten() for p in net.parameters()]))
    opt.param_groups[0]["params"] = [flat]
    flat.grad = torch.zeros_like(flat)
    with pytest.raises(ValueError, match="flat partitions.*fully_shard"):
        opt.step()


def test_dcp_state_dict_helpers_load_into_a_fresh_optimizer_after_the_model() -> None:
    """``set_optimizer_state_dict`` runs an lr-0 step on a fresh optimizer: it must not move loaded weights."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    x, y = namespace["data"]()

    def train(net: nn.Module, opt: FTP, steps: range) -> None:
        for i in steps:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()

    net = namespace["build"]()
    opt = namespace["optimizer"](net)
    train(net, opt, range(6))
    model_sd = {k: v.clone() for k, v in net.state_dict().items()}
    optim_sd = copy.deepcopy(get_optimizer_state_dict(net, opt))  # it holds the live state tensors
    train(net, opt, range(6, 12))
    fresh = namespace["build"](seed=5)
    fresh_opt = namespace["optimizer"](fresh)
    fresh.load_state_dict(model_sd)  # the model first: the helper's lr-0 step must leave it where it is
    set_optimizer_state_dict(fresh, fresh_opt, optim_sd)
    assert all(torch.equal(model_sd[k], v) for k, v in fresh.state_dict().items())
    train(fresh, fresh_opt, range(6, 12))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), fresh.parameters()))


# --- through Lightning: ModelParallelStrategy runs FSDP2 on CPU (gloo) ------------------------------------
LIGHTNING_SCRIPT = """
import lightning.pytorch as pl
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset
from lightning_reuse import FTP

class M(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential()
        self.net.add_module("body", nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Tanh()))
        self.net.add_module("head", nn.Linear(5, 3))
        self.history = []
    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        for m in [self.net.body[0], self.net.body[1], self.net.head]:
            fully_shard(m, mesh=mesh)
        fully_shard(self.net, mesh=mesh)
    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)
    def on_train_batch_end(self, *args):
        self.history.append(torch.cat([p.full_tensor().flatten() for p in self.net.parameters()]))
    def configure_optimizers(self):
        return FTP(torch.optim.AdamW(self.net.named_parameters(), lr=0.05), exclude="head")

g = torch.Generator().manual_seed(7)
x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
rank = int(os.environ.get("LOCAL_RANK", 0))  # rank r takes rows r, r + 2, ...: 4 + 4 rows = 8 consecutive ones
strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=3, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     use_distributed_sampler=False)
model = M()
trainer.fit(model, DataLoader(TensorDataset(x[rank::2], y[rank::2]), batch_size=4, shuffle=False))
torch.save({"history": torch.stack(model.history), "x": x, "y": y}, f"rank{trainer.global_rank}.pt")
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_lightning_model_parallel_strategy_equals_one_process(tmp_path) -> None:
    from tests.helpers.ddp import run_ddp_script

    result = run_ddp_script(LIGHTNING_SCRIPT, tmp_path, timeout=120)
    r0, r1 = torch.load(result.workdir / "rank0.pt"), torch.load(result.workdir / "rank1.pt")
    assert torch.equal(r0["history"], r1["history"])
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("body", nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Tanh()))
    net.add_module("head", nn.Linear(5, 3))
    opt = FTP(torch.optim.AdamW(net.named_parameters(), lr=0.05), exclude="head")
    history = []
    for _ in range(3):
        for i in range(0, 32, 8):
            opt.zero_grad()
            nn.functional.cross_entropy(net(r0["x"][i : i + 8]), r0["y"][i : i + 8]).backward()
            opt.step()
            history.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert len(history) == len(r0["history"]) == 12
    torch.testing.assert_close(r0["history"], torch.stack(history), atol=1e-5, rtol=0)
