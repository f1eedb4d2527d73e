"""Which backend measures, and which GPUs each DDP rank measures: pure functions of the options and rank.

Example:
    >>> from lightning_reuse.energy.config import EnergyConfig
    >>> backend = make_backend("simulated", EnergyConfig(carbon_intensity_g_per_kwh=100.0))
    >>> backend.name, backend.intensity
    ('simulated', 100.0)
    >>> rank_gpu_ids("node", local_rank=1, cuda_index=1) is None  # node mode: every GPU of the machine
    True
    >>> rank_gpu_ids("process", local_rank=1, cuda_index=None)  # off-GPU rank > 0: none
    []
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from lightning_reuse.energy.backends import EnergyBackend, NVMLBackend, SimulatedBackend, physical_gpu_id
from lightning_reuse.energy.codecarbon_backend import CodeCarbonBackend
from lightning_reuse.energy.config import EnergyConfig

#: The backends chosen by name.
BACKENDS = ("codecarbon", "nvml", "simulated")


def check_backend(backend: str | EnergyBackend) -> str | EnergyBackend:
    """Return ``backend`` if it names one of :data:`BACKENDS` or is an :class:`EnergyBackend`; else raise."""
    if isinstance(backend, str) and backend not in BACKENDS:
        raise ValueError(
            f"`backend` must be one of {BACKENDS} or an EnergyBackend instance, got {backend!r}. "
            "HINT: 'simulated' gives deterministic numbers for tests."
        )
    if not isinstance(backend, (str, EnergyBackend)):
        raise TypeError(
            f"`backend` must be a name in {BACKENDS} or an EnergyBackend instance, got "
            f"{type(backend).__name__}. HINT: pass e.g. backend='codecarbon'."
        )
    return backend


def make_backend(
    backend: str | EnergyBackend,
    config: EnergyConfig,
    *,
    measuring: bool = True,
    gpu_ids: Sequence[int | str] | None = None,
) -> EnergyBackend:
    """The backend a rank measures with.

    Args:
        backend: a name in :data:`BACKENDS` (built from ``config``) or an instance (used as given).
        config: the validated options (grid, PUE, sampling interval, DDP mode).
        measuring: ``False`` on a rank that measures nothing (``ddp_mode="node"``, local rank > 0): a
            zero-power simulator whose readings are all 0 ("not measured").
        gpu_ids: the GPUs to measure (physical ids, see :func:`rank_gpu_ids`); ``None``: every GPU.
    """
    if not measuring:
        return SimulatedBackend(cpu_w=0.0, gpu_w=0.0, ram_w=0.0)
    if isinstance(backend, EnergyBackend):
        return backend
    ids = None if gpu_ids is None else list(gpu_ids)
    if backend == "simulated":
        return SimulatedBackend(config=config)
    if backend == "nvml":
        return NVMLBackend(device_indices=ids, config=config)
    mode = "process" if config.ddp_mode == "process" else "machine"
    return CodeCarbonBackend(tracking_mode=mode, gpu_ids=ids, config=config)


def measures(ddp_mode: str, local_rank: int) -> bool:
    """Whether a rank measures: every rank in ``"process"`` mode, local rank 0 in ``"node"`` mode."""
    return ddp_mode == "process" or local_rank == 0


def rank_gpu_ids(ddp_mode: str, local_rank: int, cuda_index: int | None) -> list[int | str] | None:
    """GPUs a rank measures: all (``None``) except in ``ddp_mode="process"``.

    In process mode every rank measures its own GPU (its physical id, read through
    ``CUDA_VISIBLE_DEVICES``), so that summing the ranks counts each GPU once; a rank not on a GPU
    (``cuda_index=None``) leaves the node's GPUs to local rank 0 (``None`` there, ``[]`` elsewhere).

    Args:
        ddp_mode: ``"node"`` or ``"process"``.
        local_rank: the rank's index on its node.
        cuda_index: torch's index of the rank's CUDA device, or ``None`` for a rank off the GPUs.
    """
    if ddp_mode != "process":
        return None
    if cuda_index is not None:
        with contextlib.suppress(ValueError):  # an index CUDA_VISIBLE_DEVICES does not explain
            return [physical_gpu_id(cuda_index)]
    return None if local_rank == 0 else []
