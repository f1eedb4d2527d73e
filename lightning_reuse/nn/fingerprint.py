"""One module fingerprint: identifies the exact pre-trained model a checkpoint's trainable part belongs to.

Example:
    >>> import torch
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> b.load_state_dict(a.state_dict())
    <All keys matched successfully>
    >>> module_fingerprint(a) == module_fingerprint(b), len(module_fingerprint(a))
    (True, 64)
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``module.state_dict()`` (parameters and buffers).

    Equal for two modules with the same state whatever their device; any changed value, shape, dtype or
    name gives a different fingerprint.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
