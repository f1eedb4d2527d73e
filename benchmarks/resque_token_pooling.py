"""Which pooling should RESQUE use by default for ``[B, T, D]`` token outputs? Evidence on two token models.

A ViT-style patch transformer (digits, Gaussian noise on the patches) and a small text encoder (toy topic
sentences, token substitution at a rising rate), both from ``tests/helpers/token_models.py`` and trained
briefly so that they are not random. For each candidate pooling -- ``cls``, the masked ``token_mean`` and
``feature_mean`` (the earlier default: the mean over ``D``, one value per token) -- and for two hooked layers
(the last encoder block and the final LayerNorm), RESQUE_dist of held-out clean data against the same data
shifted, at rising strength, averaged over 3 shift seeds. A good default rises monotonically with the shift
on both models.

``feature_mean`` has one value per token, so its width follows the sequence length: the text features are
computed in one batch padded to the longest sentence (per-batch padding makes it fail). ``token_mean`` is
computed with per-batch padding and its attention mask.

Run: ``OMP_NUM_THREADS=1 python benchmarks/resque_token_pooling.py`` (CPU, 1 thread, about a minute).
Writes ``benchmarks/results/resque_token_pooling.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_reuse.functional import pool_features, resque_dist
from lightning_reuse.nn.layers import capture_output
from tests.helpers import token_models as tm

POOLINGS = ("cls", "token_mean", "feature_mean")
LAYERS = ("encoder", "norm")
NOISE = (0.1, 0.2, 0.4, 0.8, 1.6)
SUBSTITUTION = (0.1, 0.2, 0.4, 0.6, 0.8)
SEEDS = (0, 1, 2)


def _features(model: torch.nn.Module, layer: str, pooling: str, batches: list[dict]) -> torch.Tensor:
    """Pooled features of ``layer`` over dict batches (the mask, when present, reaches the pooling)."""
    out = []
    with torch.no_grad(), capture_output(model, layer) as store:
        for batch in batches:
            model(**batch)
            out.append(pool_features(store["output"], pooling, batch.get("attention_mask")))  # type: ignore[arg-type]
    return torch.cat(out)


def _image_batches(x: torch.Tensor) -> list[dict]:
    return [{"pixel_values": x[i : i + 64]} for i in range(0, len(x), 64)]


def _text_batches(seqs: list[torch.Tensor], pooling: str) -> list[dict]:
    if pooling == "feature_mean":  # one width for every batch: pad to the longest sentence of the set
        ids, mask = tm.pad_batch(seqs)
        return [{"input_ids": ids, "attention_mask": mask}]
    return [
        {k: b[k] for k in ("input_ids", "attention_mask")}
        for b in tm.text_batches(seqs, torch.zeros(len(seqs)))
    ]


def _curve(model, layer, pooling, clean, shifted_at, levels, labels) -> list[float]:
    base = _features(model, layer, pooling, clean)
    scores = []
    for level in levels:
        runs = [
            float(resque_dist(base, labels, _features(model, layer, pooling, shifted_at(level, s)), labels))
            for s in SEEDS
        ]
        scores.append(round(sum(runs) / len(runs), 5))
    return scores


def _vision() -> dict:
    model = tm.trained_patch_transformer()
    x, y = tm.load_digits_tensors()
    x, y = x[600:1200], y[600:1200]
    acc = tm.accuracy(model, [({"pixel_values": x}, y)])
    curves = {
        f"{layer}/{pooling}": _curve(
            model,
            layer,
            pooling,
            _image_batches(x),
            lambda level, s: _image_batches(tm.noisy_pixels(x, level, seed=s)),
            NOISE,
            y,
        )
        for layer in LAYERS
        for pooling in POOLINGS
    }
    return {
        "model": "PatchTransformer (2x2 patches, CLS, 2 blocks, dim 32)",
        "shift": "gaussian noise std",
        "levels": list(NOISE),
        "held_out_accuracy": round(acc, 4),
        "scores": curves,
    }


def _text() -> dict:
    model = tm.trained_text_encoder()
    seqs, y = tm.sentences(seed=7)
    acc = tm.accuracy(
        model,
        [
            ({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"])
            for b in tm.text_batches(seqs, y)
        ],
    )
    curves = {
        f"{layer}/{pooling}": _curve(
            model,
            layer,
            pooling,
            _text_batches(seqs, pooling),
            lambda level, s, p=pooling: _text_batches(tm.substitute_tokens(seqs, level, seed=s), p),
            SUBSTITUTION,
            y,
        )
        for layer in LAYERS
        for pooling in POOLINGS
    }
    return {
        "model": "TextEncoder (CLS id first, per-batch padding, 2 blocks, dim 32)",
        "shift": "token substitution rate",
        "levels": list(SUBSTITUTION),
        "held_out_accuracy": round(acc, 4),
        "scores": curves,
    }


def _monotone(scores: list[float]) -> bool:
    return all(b > a for a, b in zip(scores, scores[1:]))


def main() -> None:
    torch.set_num_threads(1)
    results = {"vision": _vision(), "text": _text()}
    verdict = {}
    for pooling in POOLINGS:
        keys = [f"{layer}/{pooling}" for layer in LAYERS]
        verdict[pooling] = {
            "monotone_everywhere": all(_monotone(r["scores"][k]) for r in results.values() for k in keys),
            "min_range": round(
                min(r["scores"][k][-1] - r["scores"][k][0] for r in results.values() for k in keys), 5
            ),
        }
    out = {
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), 1 thread",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "seeds": list(SEEDS),
        "results": results,
        "verdict": verdict,
    }
    path = Path(__file__).parent / "results" / "resque_token_pooling.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
