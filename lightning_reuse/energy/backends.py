"""Energy backends: where the joules come from. Each reports cumulative :class:`EnergyRecord` s.

Three backends share one small interface (``start`` / ``read`` / ``stop``):

- :class:`~lightning_reuse.energy.codecarbon_backend.CodeCarbonBackend` (the default): codecarbon's
  ``OfflineEmissionsTracker``: CPU by RAPL when readable, else a TDP x load estimate; RAM by a heuristic;
  GPU by the NVML energy counter. Never online.
- :class:`NVMLBackend`: reads the GPU's own energy counter (``nvmlDeviceGetTotalEnergyConsumption``) at
  boundaries only (a read costs ~3 ms on an H100 and the counter updates every ~100 ms), as Zeus does.
- :class:`SimulatedBackend`: constant power, optionally on a fake clock: exact, deterministic arithmetic
  for tests and examples.

A backend object holds its configuration and can be started again after a stop (a fresh measurement
each time). ``read`` and ``stop`` return ``None`` on failure and set :attr:`EnergyBackend.status`. The grid
and PUE come from the keyword arguments (checked through an :class:`~lightning_reuse.energy.config.EnergyConfig`)
or from ``config=``, an already validated :class:`~lightning_reuse.energy.config.EnergyConfig` that replaces
them (``EnergyMonitor`` passes its own; nothing is checked twice).

Example:
    >>> ticks = iter(range(100))
    >>> sim = SimulatedBackend(cpu_w=3600.0, ram_w=1800.0, carbon_intensity_g_per_kwh=500.0,
    ...                        clock=lambda: float(next(ticks)))
    >>> sim.start()
    >>> r = sim.read()  # one fake second later
    >>> r.cpu_wh, r.ram_wh, r.energy_wh, r.co2_g, r.method["cpu"]
    (1.0, 0.5, 1.5, 0.75, 'simulated')
    >>> sim.stop().duration_s
    2.0
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from lightning_reuse.energy.config import (
    WORLD_AVERAGE_G_PER_KWH,
    EnergyConfig,
    carbon_intensity,
    validate_country,
)
from lightning_reuse.energy.records import EnergyRecord

__all__ = [
    "WORLD_AVERAGE_G_PER_KWH",
    "EnergyBackend",
    "NVMLBackend",
    "SimulatedBackend",
    "carbon_intensity",
    "physical_gpu_id",
    "validate_country",
]


def physical_gpu_id(visible_index: int) -> int | str:
    """The id NVML and codecarbon know a CUDA device by, from torch's index (relative to CUDA_VISIBLE_DEVICES).

    torch numbers the visible devices 0, 1, ...; NVML and codecarbon's ``gpu_ids`` number the physical
    ones. With ``CUDA_VISIBLE_DEVICES`` set, the ``visible_index``-th entry is returned: an ``int`` for an
    index, the string itself for a UUID (``"GPU-..."``, ``"MIG-..."``), which both backends resolve.

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "3,5"}):
    ...     physical_gpu_id(1)
    5
    >>> with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "GPU-8a1f,GPU-77c2"}):
    ...     physical_gpu_id(0)
    'GPU-8a1f'
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return visible_index
    entries = [e.strip() for e in env.split(",") if e.strip()]
    if not 0 <= visible_index < len(entries):
        raise ValueError(
            f"CUDA device index {visible_index} is not visible with CUDA_VISIBLE_DEVICES={env!r} "
            f"({len(entries)} visible). HINT: pass a device index below {len(entries)}."
        )
    entry = entries[visible_index]
    return int(entry) if entry.isdigit() else entry


class EnergyBackend(ABC):
    """Interface of a measurement source. Subclasses implement ``_start``, ``_read`` and ``_stop``.

    Args:
        pue: power usage effectiveness (>= 1) multiplied into every energy figure (and so into CO2).
        config: a validated configuration instead of ``pue`` (its ``pue`` and ``intensity`` are used).
    """

    name = "base"

    def __init__(self, pue: float = 1.0, *, config: EnergyConfig | None = None) -> None:
        self.config = config if config is not None else EnergyConfig(country_iso_code=None, pue=pue)
        self.pue = float(self.config.pue)
        self.intensity = self.config.intensity
        self.status = "idle"
        self.running = False

    @property
    @abstractmethod
    def methods(self) -> dict[str, str]:
        """Component -> measurement method (see :data:`~lightning_reuse.energy.records.METHODS`)."""

    def start(self) -> None:
        """Begin a fresh measurement (cumulative readings restart at zero)."""
        self._start()
        self.running = True
        self.status = "ok"

    def read(self) -> EnergyRecord | None:
        """Cumulative record since :meth:`start`, or ``None`` (and ``status`` set) when the read failed."""
        if not self.running:
            raise RuntimeError(f"{type(self).__name__}.read() before start(); call start() first.")
        return self._read()

    def stop(self) -> EnergyRecord | None:
        """Final cumulative record; releases threads and handles. ``None`` when the backend failed."""
        if not self.running:
            return None
        try:
            return self._stop()
        finally:
            self.running = False

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _read(self) -> EnergyRecord | None: ...

    @abstractmethod
    def _stop(self) -> EnergyRecord | None: ...


class SimulatedBackend(EnergyBackend):
    """Constant power on a (possibly fake) clock: ``energy = power x elapsed``; deterministic.

    Args:
        cpu_w, gpu_w, ram_w: constant power of each component, in W.
        carbon_intensity_g_per_kwh: gCO2e per kWh (default: world average).
        clock: seconds as a float; ``time.perf_counter`` by default. A fake clock gives exact numbers.
        pue: power usage effectiveness.
        config: a validated configuration instead of ``carbon_intensity_g_per_kwh`` and ``pue``.
    """

    name = "simulated"

    def __init__(
        self,
        cpu_w: float = 10.0,
        gpu_w: float = 0.0,
        ram_w: float = 5.0,
        carbon_intensity_g_per_kwh: float | None = None,
        clock: Callable[[], float] | None = None,
        pue: float = 1.0,
        *,
        config: EnergyConfig | None = None,
    ) -> None:
        if config is None:
            config = EnergyConfig(None, carbon_intensity_g_per_kwh=carbon_intensity_g_per_kwh, pue=pue)
        super().__init__(config=config)
        for arg, value in (("cpu_w", cpu_w), ("gpu_w", gpu_w), ("ram_w", ram_w)):
            if value < 0:
                raise ValueError(f"`{arg}` must be a power >= 0 W, got {value}. HINT: pass 0.0 for none.")
        self.power_w = {"cpu": float(cpu_w), "gpu": float(gpu_w), "ram": float(ram_w)}
        self.clock = clock or time.perf_counter
        self._t0 = 0.0

    @property
    def methods(self) -> dict[str, str]:
        return {c: ("simulated" if w > 0 else "not measured") for c, w in self.power_w.items()}

    def _start(self) -> None:
        self._t0 = self.clock()

    def _read(self) -> EnergyRecord:
        seconds = self.clock() - self._t0
        wh = {c: self.pue * w * seconds / 3600.0 for c, w in self.power_w.items()}
        energy = wh["cpu"] + wh["gpu"] + wh["ram"]
        return EnergyRecord(
            cpu_wh=wh["cpu"],
            gpu_wh=wh["gpu"],
            ram_wh=wh["ram"],
            energy_wh=energy,
            co2_g=energy / 1000.0 * self.intensity,
            duration_s=seconds,
            method=self.methods,
            pue=self.pue,
        )

    def _stop(self) -> EnergyRecord:
        return self._read()


class NVMLBackend(EnergyBackend):
    """GPU energy from NVML's counter, read at boundaries only; CPU/RAM optionally as constant estimates.

    Args:
        device_indices: GPUs to sum, as physical NVML indices or UUID (prefix) strings as in
            ``CUDA_VISIBLE_DEVICES`` (see :func:`physical_gpu_id`); default: every GPU of the machine;
            ``[]``: none (GPU "not measured").
        cpu_w, ram_w: optional constant power estimates in W (method ``"estimate"``); else "not measured".
        carbon_intensity_g_per_kwh, country_iso_code: intensity (see :func:`carbon_intensity`).
        pue: power usage effectiveness.
        min_interval_s: reads closer than this to the previous one return it again: the counter only
            updates every ~100 ms and a read costs ~3.5 ms on an H100, so e.g. the end of validation and
            the end of the epoch share one read. Nothing is lost: the energy lands in the next window.
        config: a validated configuration instead of ``carbon_intensity_g_per_kwh``, ``country_iso_code``
            and ``pue``.

    Needs ``nvidia-ml-py`` (``import pynvml``) and a Volta-or-newer GPU.
    """

    name = "nvml"

    def __init__(
        self,
        device_indices: Sequence[int | str] | None = None,
        cpu_w: float | None = None,
        ram_w: float | None = None,
        carbon_intensity_g_per_kwh: float | None = None,
        country_iso_code: str | None = None,
        pue: float = 1.0,
        min_interval_s: float = 0.1,
        *,
        config: EnergyConfig | None = None,
    ) -> None:
        if config is None:
            config = EnergyConfig(
                country_iso_code, carbon_intensity_g_per_kwh=carbon_intensity_g_per_kwh, pue=pue
            )
        super().__init__(config=config)
        if min_interval_s < 0:
            raise ValueError(
                f"`min_interval_s` must be >= 0 seconds, got {min_interval_s}. HINT: 0.0 reads every time."
            )
        self.min_interval_s = float(min_interval_s)
        self._last: EnergyRecord | None = None
        self._last_t = 0.0
        self.device_indices = None if device_indices is None else list(device_indices)
        self.cpu_w, self.ram_w = cpu_w, ram_w
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._mj0: list[int] = []
        self._t0 = 0.0

    @property
    def methods(self) -> dict[str, str]:
        return {
            "gpu": "not measured" if self.device_indices == [] else "NVML",
            "cpu": "estimate" if self.cpu_w is not None else "not measured",
            "ram": "estimate" if self.ram_w is not None else "not measured",
        }

    def _counters_mj(self) -> list[int]:
        return [int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles]

    def _start(self) -> None:
        try:
            import pynvml
        except ImportError as err:  # pragma: no cover - depends on the machine
            raise ImportError(
                "NVMLBackend needs NVIDIA's NVML bindings: `pip install nvidia-ml-py`."
            ) from err
        pynvml.nvmlInit()
        self._nvml = pynvml
        indices = self.device_indices
        if indices is None:
            indices = list(range(pynvml.nvmlDeviceGetCount()))
        self._handles = [self._handle(i) for i in indices]
        self._mj0 = self._counters_mj()
        self._t0 = time.perf_counter()
        self._last = None

    def _handle(self, device: int | str) -> Any:
        nvml = self._nvml
        if isinstance(device, int) or str(device).isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(device))
        wanted = str(device).removeprefix("MIG-")
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            if uuid.startswith(wanted) or uuid.removeprefix("GPU-").startswith(wanted):
                return handle
        raise ValueError(
            f"`device_indices` entry {device!r} matches no GPU's UUID. HINT: use an NVML index (int) or a UUID "
            "from `nvidia-smi -L`."
        )

    def _read(self, force: bool = False) -> EnergyRecord | None:
        now = time.perf_counter()
        if not force and self._last is not None and now - self._last_t < self.min_interval_s:
            return self._last
        try:
            gpu_mj = sum(now - then for now, then in zip(self._counters_mj(), self._mj0))
        except Exception as err:  # NVML errors are not fatal to training
            self.status = f"failed: {type(err).__name__}: {err}"
            return None
        seconds = now - self._t0
        gpu_wh = self.pue * gpu_mj / 3.6e6
        cpu_wh = self.pue * (self.cpu_w or 0.0) * seconds / 3600.0
        ram_wh = self.pue * (self.ram_w or 0.0) * seconds / 3600.0
        energy = cpu_wh + gpu_wh + ram_wh
        self._last_t = now
        self._last = EnergyRecord(
            cpu_wh=cpu_wh,
            gpu_wh=gpu_wh,
            ram_wh=ram_wh,
            energy_wh=energy,
            co2_g=energy / 1000.0 * self.intensity,
            duration_s=seconds,
            method=self.methods,
            pue=self.pue,
        )
        return self._last

    def _stop(self) -> EnergyRecord | None:
        record = self._read(force=True)
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # already shut down
            pass
        return record
