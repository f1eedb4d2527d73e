"""Stitching sweep: matrix, controls, files, resume without recomputation, W&B logging."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_reuse.modules.stitching_sweep import random_like, stitching_sweep
from lightning_reuse.samples.digits import load_digits_tensors
from lightning_reuse.samples.models import SmallCNN, train_classifier
from tests.helpers.wandb_read import find_offline_run_dirs, read_offline_run


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    x, y = load_digits_tensors()
    torch.manual_seed(0)
    net = train_classifier(SmallCNN(width=16, depth=2), x[:500], y[:500], epochs=20, seed=0)
    return net, (x[:500], y[:500]), (x[500:800], y[500:800])


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_sweep_matrix_controls_and_files(setup, tmp_path: Path) -> None:
    net, train, val = setup
    res = stitching_sweep(
        net, net, ["block1", "block2"], ["block2"], train, val, tmp_path, epochs=3, lr=3e-2, batch_size=32,
        progress=False,
    )  # fmt: skip
    acc, rand_s = res.matrix("stitched_acc"), res.matrix("random_sender_acc")
    assert acc.shape == (2, 1) and not np.isnan(acc).any()
    own = float((net(val[0]).argmax(-1) == val[1]).float().mean())
    assert acc[1, 0] > 0.4 and own > 0.55  # far above chance (0.1); short stitch training
    assert (rand_s < acc).all()  # the random-sender control is below the trained sender
    cell = res.cells[1]
    assert cell["cka"] > 0.5 and cell["ls_acc"] == pytest.approx(own, abs=0.02)
    assert cell["random_receiver_acc"] is not None and cell["stitch"] == "ConvStitch"
    assert {p.suffix for p in res.paths.values()} == {".json", ".csv", ".png"}
    assert res.paths["png"].read_bytes()[:4] == b"\x89PNG"
    rows = res.paths["csv"].read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("sender_layer,receiver_layer,stitch,stitched_acc")


def test_resume_does_not_recompute_finished_cells(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallCNN(width=4, depth=2).eval()
    x, y = torch.rand(48, 1, 8, 8), torch.randint(0, 10, (48,))
    kw = {"out_dir": tmp_path, "epochs": 1, "controls": ("random_sender",), "progress": False}
    # an interrupted sweep: the second cell fails (a pooled vector cannot feed a conv layer)
    with pytest.raises(ValueError, match="vector sender"):
        stitching_sweep(net, net, ["block1", "head"], ["block2"], (x, y), (x, y), **kw)
    saved = json.loads((tmp_path / "stitching.json").read_text())
    assert [(c["sender_layer"], c["receiver_layer"]) for c in saved["cells"]] == [("block1", "block2")]

    first = stitching_sweep(net, net, ["block1"], ["block1", "block2"], (x, y), (x, y), **kw)
    assert first.computed == [("block1", "block1")]  # ("block1", "block2") was kept from the failed run
    assert first.cells[1] == saved["cells"][0]

    calls = _count_forwards(net)
    again = stitching_sweep(net, net, ["block1"], ["block1", "block2"], (x, y), (x, y), **kw)
    assert again.computed == [] and calls[0] == 0  # nothing recomputed: the model never ran
    assert again.cells == first.cells

    with pytest.raises(ValueError, match="written with settings"):
        stitching_sweep(net, net, ["block1"], ["block1"], (x, y), (x, y), **{**kw, "epochs": 2})
    with pytest.raises(ValueError, match="subset of"):
        stitching_sweep(net, net, ["block1"], ["block1"], (x, y), (x, y), **{**kw, "controls": ("noise",)})


def test_random_like_reinitialises_every_parameter() -> None:
    net = SmallCNN(width=4)
    rnd = random_like(net, seed=3)
    assert all(not torch.equal(a, b) for a, b in zip(net.parameters(), rnd.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(rnd.parameters(), random_like(net, seed=3).parameters()))


def test_sweep_logs_table_and_heatmap_to_wandb(wandb_offline, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallCNN(width=4, depth=2).eval()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    logger = wandb_offline(name="sweep")
    stitching_sweep(
        net, net, ["block1"], ["block2"], (x, y), (x, y), tmp_path / "out", epochs=1, controls=(),
        progress=False, logger=logger,
    )  # fmt: skip
    import wandb

    wandb.finish()
    (run_dir,) = find_offline_run_dirs(tmp_path)
    run = read_offline_run(run_dir)
    row = next(r for r in run["history"] if "stitching/table/_type" in r)
    assert row["stitching/table/_type"] == "table-file" and row["stitching/table/nrows"] == 1
    assert row["stitching/heatmap/_type"] == "image-file" and row["stitching/heatmap/format"] == "png"


def test_paper_training_matches_a_hand_written_loop() -> None:
    """``train_stitch``'s defaults (SGD 0.01, momentum 0.9, wd 0.01, warm-up + cosine, batch 256) step by step."""
    from lightning_reuse.modules.stitching_sweep import PAPER, train_stitch
    from lightning_reuse.nn import StitchedModel

    torch.manual_seed(0)
    net = SmallCNN(width=4, depth=2).eval()
    x, y = torch.rand(600, 1, 8, 8), torch.randint(0, 10, (600,))
    torch.manual_seed(1)
    a = StitchedModel(net, "block1", net, "block2", example_input=x[:4], adapter="paper")
    b = StitchedModel(net, "block1", net, "block2", stitch=copy.deepcopy(a.stitch))
    train_stitch(a, x, y, epochs=2, seed=3)
    # reference: plain SGD with momentum and coupled weight decay, the lr set by hand each step
    gen, steps, total = torch.Generator().manual_seed(3), 0, 2 * 3
    warm = int(PAPER["warmup_fraction"] * total)
    velocity = {id(p): torch.zeros_like(p) for p in b.stitch.parameters()}
    feats = b.sender_features(x)
    for _ in range(2):
        perm = torch.randperm(600, generator=gen)
        for i in range(0, 600, 256):
            idx = perm[i : i + 256]
            if steps < warm:
                lr = 0.01 * (steps + 1) / (warm + 1)
            else:
                lr = 0.01 * 0.5 * (1 + math.cos(math.pi * min(1.0, (steps - warm) / max(1, total - warm))))
            b.stitch.zero_grad()
            F.cross_entropy(b.receiver_from(b.stitch(feats[idx]), x[idx]), y[idx]).backward()
            with torch.no_grad():
                for p in b.stitch.parameters():
                    g = p.grad + 0.01 * p
                    v = velocity[id(p)]
                    v.copy_(g if steps == 0 else 0.9 * v + g)
                    p -= lr * v
            steps += 1
    for p, q in zip(a.stitch.parameters(), b.stitch.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_pixel_sender_control_and_margins(tmp_path: Path) -> None:
    """The pixel sender reads the input; each margin is stitched minus the control (minus the strongest)."""
    from lightning_reuse.modules.stitching_sweep import CONTROLS, PixelSender

    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(PixelSender()(x), x)
    torch.manual_seed(0)
    net = SmallCNN(width=4, depth=2).eval()
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    res = stitching_sweep(
        net, net, ["block1", "block2"], ["block2"], (x, y), (x, y), tmp_path, epochs=1, progress=False
    )
    a, b = res.cells
    assert (
        a["pixel_sender_acc"] is not None and a["pixel_sender_acc"] == b["pixel_sender_acc"]
    )  # per receiver
    for cell in res.cells:
        controls = [cell[f"{c}_acc"] for c in CONTROLS]
        assert all(v is not None for v in controls)
        assert cell["stitched_minus_control"] == pytest.approx(cell["stitched_acc"] - max(controls), abs=1e-6)
        for c in CONTROLS:
            assert cell[f"stitched_minus_{c}"] == pytest.approx(
                cell["stitched_acc"] - cell[f"{c}_acc"], abs=1e-6
            )
    assert json.loads(res.paths["json"].read_text())["settings"]["optimizer"] == "sgd"
