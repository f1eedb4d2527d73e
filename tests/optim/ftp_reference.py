"""A slow, literal transcription of the FTP step pseudo-code (spec "One step"), for the golden tests.

Python scalars and one tensor at a time; the base optimizer is any torch optimizer over the same parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def mars_norm(c: Tensor) -> Tensor:
    """Row-wise L1 norm + 1e-8: ``sum(|c|, dim=1..D-1, keepdim)``; 0-D/1-D tensors are one row."""
    if c.dim() == 0:
        return c.abs() + 1e-8
    if c.dim() == 1:
        return c.abs().sum().reshape(1) + 1e-8
    return torch.sum(torch.abs(c), dim=tuple(range(1, c.dim())), keepdim=True) + 1e-8


class ReferenceFTP:
    """FTP with per-parameter Python state; ``projected`` lists the non-excluded parameters.

    ``k_of`` optionally gives some parameters (by ``id``) their own ``k`` (a param group's ``ftp_k``).
    ``direction_dtype`` optionally rounds the remembered direction ``c / n`` to that dtype (and back).
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        projected: list[Tensor],
        k: float = 1.0,
        mu: float = 1e-2,
        k_of: dict[int, float] | None = None,
        direction_dtype: torch.dtype | None = None,
    ):
        self.base, self.k, self.mu = base, k, mu
        self.direction_dtype = direction_dtype
        self.k_of = k_of or {}
        self.projected = projected
        self.anchor = {id(p): p.detach().clone() for p in projected}
        self.prev: dict[int, dict] = {}
        self.t = 0
        self.clipped_rows = 0  # how many (step, row) pairs were actually projected
        self.free_rows = 0

    def zero_grad(self) -> None:
        self.base.zero_grad()

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        t = self.t
        grads = {id(p): p.grad.detach().clone() for p in self.projected if p.grad is not None}
        self.base.step()
        for p in self.projected:
            if id(p) not in grads:
                continue
            p0 = self.anchor[id(p)]
            c = p.detach().clone() - p0
            n = mars_norm(c)
            prev = self.prev.get(id(p))
            if t == 1 or prev is None:
                gamma, m, v = 1e-8, 0.0, 0.0
            else:
                h = float(torch.sum(grads[id(p)] * prev["d"]))
                if h > 0:
                    h = self.k_of.get(id(p), self.k) * h
                m = 0.9 * prev["m"] + 0.1 * h
                v = 0.999 * prev["v"] + 0.001 * h**2
                m_hat = m / (1 - 0.9**t)
                v_hat = v / (1 - 0.999**t)
                gamma = prev["gamma"] - self.mu * m_hat / (math.sqrt(v_hat) + 1e-8)
                gamma = min(max(gamma, 1e-8), float(n.max()))
            ratio = torch.clamp(gamma / n, 0.0, 1.0)
            self.clipped_rows += int((ratio < 1).sum())
            self.free_rows += int((ratio >= 1).sum())
            p.copy_(p0 + ratio * c)
            d = c * (1.0 / n)
            if self.direction_dtype is not None:
                d = d.to(self.direction_dtype).to(c.dtype)
            self.prev[id(p)] = {"d": d, "gamma": gamma, "m": m, "v": v}
