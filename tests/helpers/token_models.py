"""Two small token models written in torch, trained briefly on toy tasks, and the data and shifts they see.

- :class:`PatchTransformer`: a ViT-style patch transformer over 8x8 digits (2x2 patches, a CLS token), called
  as ``model(pixel_values)``; shift: Gaussian noise on the patches (:func:`noisy_pixels`).
- :class:`TextEncoder`: a sentence encoder over token ids with a CLS id first and padding to the longest
  sequence of each batch, called as ``model(input_ids=..., attention_mask=...)``; shift: token substitution
  at a rising rate (:func:`substitute_tokens`).

Both return a :class:`TokenModelOutput` (``last_hidden_state`` ``[B, T, D]``, ``logits`` ``[B, K]``), like a
Hugging Face ``ModelOutput``, and their final ``norm`` (a LayerNorm) is the hooked layer. Everything is
seeded; training takes a few seconds on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_reuse.samples.digits import load_digits_tensors

PAD, CLS, FIRST_WORD = 0, 1, 2
VOCAB, TEXT_CLASSES, WORDS_PER_CLASS = 42, 4, 10


@dataclass
class TokenModelOutput:
    """What the token models return, shaped like a Hugging Face ``ModelOutput``."""

    last_hidden_state: Tensor
    logits: Tensor


def _encoder(dim: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class PatchTransformer(nn.Module):
    """ViT-style: 2x2 patches of a ``[B, 1, 8, 8]`` image, a CLS token, learned positions, 2 blocks."""

    def __init__(self, num_classes: int = 10, dim: int = 32, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + (8 // patch) ** 2, dim) * 0.02)
        self.encoder = _encoder(dim, 2)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, pixel_values: Tensor) -> TokenModelOutput:
        p = self.patch
        patches = pixel_values.unfold(2, p, p).unfold(3, p, p).reshape(pixel_values.shape[0], -1, p * p)
        tokens = torch.cat([self.cls.expand(len(patches), -1, -1), self.embed(patches)], 1) + self.pos
        hidden = self.norm(self.encoder(tokens))
        return TokenModelOutput(hidden, self.head(hidden[:, 0]))


class TextEncoder(nn.Module):
    """Sentence encoder: token + position embeddings, 2 blocks, final LayerNorm, masked-mean classifier."""

    def __init__(self, num_classes: int = TEXT_CLASSES, dim: int = 32, max_len: int = 32) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.encoder = _encoder(dim, 2)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> TokenModelOutput:
        if attention_mask is None:
            attention_mask = (input_ids != PAD).long()
        h = self.tokens(input_ids) + self.pos[:, : input_ids.shape[1]]
        hidden = self.norm(self.encoder(h, src_key_padding_mask=attention_mask == 0))
        keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return TokenModelOutput(hidden, self.head((hidden * keep).sum(1) / keep.sum(1)))


def digit_images(n: int = 600) -> tuple[Tensor, Tensor]:
    """``[n, 1, 8, 8]`` digits (normalised) and their labels."""
    x, y = load_digits_tensors()
    return x[:n], y[:n]


def noisy_pixels(x: Tensor, level: float, seed: int = 0) -> Tensor:
    """``x`` plus Gaussian noise of standard deviation ``level`` on every patch."""
    return x + level * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def sentences(n: int = 600, seed: int = 0) -> tuple[list[Tensor], Tensor]:
    """``n`` token-id sequences (CLS first, 5..15 words) and their class: each class draws 80% of its words
    from its own 10-word topic and the rest from the whole vocabulary."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % TEXT_CLASSES
    seqs = []
    for c in labels.tolist():
        length = int(torch.randint(5, 16, (1,), generator=g))
        topic = FIRST_WORD + c * WORDS_PER_CLASS + torch.randint(WORDS_PER_CLASS, (length,), generator=g)
        anywhere = torch.randint(FIRST_WORD, VOCAB, (length,), generator=g)
        words = torch.where(torch.rand(length, generator=g) < 0.8, topic, anywhere)
        seqs.append(torch.cat([torch.tensor([CLS]), words]))
    return seqs, labels


def substitute_tokens(seqs: list[Tensor], rate: float, seed: int = 0) -> list[Tensor]:
    """Each word (not the CLS id) replaced by a uniformly drawn word with probability ``rate``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in seqs:
        swap = torch.rand(len(s), generator=g) < rate
        swap[0] = False
        out.append(torch.where(swap, torch.randint(FIRST_WORD, VOCAB, (len(s),), generator=g), s))
    return out


def pad_batch(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``input_ids`` and ``attention_mask`` padded to the longest sequence of this batch (per-batch padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return ids, (ids != PAD).long()


def text_batches(seqs: list[Tensor], labels: Tensor, batch_size: int = 32) -> Iterator[dict[str, Tensor]]:
    """Hugging-Face-style dict batches ``{"input_ids", "attention_mask", "labels"}``, padded per batch."""
    for i in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[i : i + batch_size])
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels[i : i + batch_size]}


def text_loader(seqs: list[Tensor], labels: Tensor, batch_size: int = 32) -> DataLoader:
    """A DataLoader of Hugging-Face-style dict batches whose collate pads each batch to its longest sentence."""

    def collate(items: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        ids, mask = pad_batch([s for s, _ in items])
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([y for _, y in items])}

    return DataLoader(list(zip(seqs, labels)), batch_size=batch_size, collate_fn=collate)


def image_loader(x: Tensor, y: Tensor, batch_size: int = 64) -> DataLoader:
    """A DataLoader of ``{"pixel_values", "labels"}`` dict batches."""
    pairs = list(zip(x, y))
    return DataLoader(
        pairs,
        batch_size=batch_size,
        collate_fn=lambda items: {
            "pixel_values": torch.stack([a for a, _ in items]),
            "labels": torch.stack([b for _, b in items]),
        },
    )


def _train(model: nn.Module, batches: list[tuple[dict[str, Tensor], Tensor]], epochs: int) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for inputs, y in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(model(**inputs).logits, y).backward()
            opt.step()
    return model.eval()


def trained_patch_transformer(seed: int = 0, epochs: int = 6) -> PatchTransformer:
    """A :class:`PatchTransformer` trained for a few epochs on the first 600 digits (not random)."""
    torch.manual_seed(seed)
    x, y = digit_images()
    batches = [({"pixel_values": x[i : i + 32]}, y[i : i + 32]) for i in range(0, len(x), 32)]
    return _train(PatchTransformer(), batches, epochs)


def trained_text_encoder(seed: int = 0, epochs: int = 4) -> TextEncoder:
    """A :class:`TextEncoder` trained for a few epochs on :func:`sentences` (not random)."""
    torch.manual_seed(seed)
    seqs, labels = sentences(seed=seed + 100)
    batches = [
        ({k: b[k] for k in ("input_ids", "attention_mask")}, b["labels"]) for b in text_batches(seqs, labels)
    ]
    return _train(TextEncoder(), batches, epochs)


def accuracy(model: nn.Module, batches: list[tuple[dict[str, Tensor], Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over ``(inputs, labels)`` pairs."""
    with torch.no_grad():
        hits = [(model(**inputs).logits.argmax(-1) == y).float() for inputs, y in batches]
    return float(torch.cat(hits).mean())
