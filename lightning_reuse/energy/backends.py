"""Energy backends: where the joules come from. Each reports cumulative :class:`EnergyRecord` s.

Three backends share one small interface (``start`` / ``read`` / ``stop``):

- :class:`~lightning_reuse.energy.codecarbon_backend.CodeCarbonBackend` (the default): codecarbon's
  ``OfflineEmissionsTracker``: CPU by RAPL when readable, else a TDP x load estimate; RAM by a heuristic;
  GPU by the NVML energy counter. Never online.
- :class:`NVMLBackend`: reads the GPU's own energy counter (``nvmlDeviceGetTotalEnergyConsumption``) at
  boundaries only (a read costs ~3 ms on an H100 and the counter updates every ~100 ms), as Zeus does; a
  GPU without a counter has its power sampled and integrated (``"sampled power"``), or is "not measured".
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
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from lightning_reuse.energy.config import (
    WORLD_AVERAGE_G_PER_KWH,
    EnergyConfig,
    carbon_intensity,
    validate_country,
)
from lightning_reuse.energy.records import EnergyMeasurementWarning, EnergyRecord

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


#: NVML errors meaning "this GPU has no such reading" (pre-Volta GPUs, some vGPU/MIG/Jetson setups), not a
#: transient failure.
_UNSUPPORTED_ERRORS = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")


def _unsupported(nvml: Any, err: BaseException) -> bool:
    """Whether ``err`` (raised by an NVML query) says the GPU does not support that query at all."""
    classes = tuple(c for c in (getattr(nvml, n, None) for n in _UNSUPPORTED_ERRORS) if isinstance(c, type))
    return bool(classes) and isinstance(err, classes)


class _PowerSampler:
    """GPU power (``nvmlDeviceGetPowerUsage``, mW) integrated over time by the trapezoid rule.

    A daemon thread samples every ``interval_s``; :meth:`sample` also samples on demand and returns the
    time of that sample with the energy integrated up to it, so a reading's duration and energy end at the
    same instant. A failed power read holds that GPU's last value (zero-order hold) until one succeeds.

    Args:
        nvml: the ``pynvml`` module.
        handles: the GPUs to sample (their powers are summed).
        interval_s: seconds between background samples.
    """

    def __init__(self, nvml: Any, handles: list[Any], interval_s: float) -> None:
        self.nvml, self.handles, self.interval_s = nvml, handles, interval_s
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._watts = [self._power_w(h, 0.0) for h in handles]
        self._t = time.perf_counter()
        self.joules = 0.0

    def _power_w(self, handle: Any, last: float) -> float:
        try:
            return float(self.nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0
        except Exception:  # hold the last value: one missed sample must not zero the GPU
            return last

    def start(self) -> float:
        """Start the background thread; returns the time integration starts from."""
        self._thread = threading.Thread(target=self._run, name="lightning_reuse-nvml-power", daemon=True)
        self._thread.start()
        return self._t

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.sample()

    def sample(self) -> tuple[float, float]:
        """Sample now; returns ``(time, joules since start)`` (``time`` on ``time.perf_counter``'s clock)."""
        with self._lock:
            watts = [self._power_w(h, w) for h, w in zip(self.handles, self._watts)]
            now = time.perf_counter()
            self.joules += 0.5 * (sum(watts) + sum(self._watts)) * (now - self._t)
            self._t, self._watts = now, watts
            return now, self.joules

    def stop(self) -> None:
        """Stop and join the background thread (idempotent)."""
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


class NVMLBackend(EnergyBackend):
    """GPU energy from NVML's counter, read at boundaries only; CPU/RAM optionally as constant estimates.

    A GPU without an energy counter (NVML answers ``NotSupported``, e.g. before Volta) is measured by
    sampling its power (``nvmlDeviceGetPowerUsage``) every ``power_sample_s`` on a background thread and
    integrating it over time: the GPU's method is then ``"sampled power"``. A selected GPU with neither
    counter nor power reading makes the GPU component ``"not measured"`` (never 0 Wh), with one
    :class:`~lightning_reuse.energy.records.EnergyMeasurementWarning` per backend.

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
        power_sample_s: seconds between power samples of GPUs without an energy counter (unused when
            every GPU has one). The error of the integral is at most the power change times this interval
            per change.
        config: a validated configuration instead of ``carbon_intensity_g_per_kwh``, ``country_iso_code``
            and ``pue``.

    Needs ``nvidia-ml-py`` (``import pynvml``).
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
        power_sample_s: float = 0.1,
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
        if not power_sample_s > 0:
            raise ValueError(
                f"`power_sample_s` must be > 0 seconds, got {power_sample_s}. HINT: 0.1 samples ten times "
                "a second."
            )
        self.min_interval_s = float(min_interval_s)
        self.power_sample_s = float(power_sample_s)
        self._last: EnergyRecord | None = None
        self._last_t = 0.0
        self.device_indices = None if device_indices is None else list(device_indices)
        self.cpu_w, self.ram_w = cpu_w, ram_w
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._mj0: list[int] = []
        self._sampler: _PowerSampler | None = None
        self._gpu_method = "not measured" if self.device_indices == [] else "NVML"
        self._warned = False
        self._t0 = 0.0

    @property
    def methods(self) -> dict[str, str]:
        return {
            "gpu": self._gpu_method,
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
        self._stop_sampler()
        pynvml.nvmlInit()
        self._nvml = pynvml
        indices = self.device_indices
        if indices is None:
            indices = list(range(pynvml.nvmlDeviceGetCount()))
        self._handles, self._mj0, sampled = self._probe({i: self._handle(i) for i in indices})
        self._t0 = time.perf_counter()
        if sampled:
            self._sampler = _PowerSampler(pynvml, sampled, self.power_sample_s)
            self._t0 = self._sampler.start()
        self._last = None

    def _probe(self, handles: dict[int | str, Any]) -> tuple[list[Any], list[int], list[Any]]:
        """Sort GPUs into counter / sampled power / neither; sets the GPU method (and warns once)."""
        counted, mj0, sampled, missing = [], [], [], {}
        for device, handle in handles.items():
            try:
                mj0.append(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))
                counted.append(handle)
                continue
            except Exception as err:
                if not _unsupported(self._nvml, err):
                    raise  # a real failure: the meter reports it
            try:
                self._nvml.nvmlDeviceGetPowerUsage(handle)
                sampled.append(handle)
            except Exception as err:
                missing[device] = f"{type(err).__name__}: {err}"
        if missing:
            self._warn_not_measured(missing)
            self._gpu_method = "not measured"
            return [], [], []
        self._gpu_method = "sampled power" if sampled else ("NVML" if counted else "not measured")
        return counted, mj0, sampled

    def _warn_not_measured(self, missing: dict[int | str, str]) -> None:
        if self._warned:
            return
        self._warned = True

        causes = "; ".join(f"GPU {d}: {cause}" for d, cause in missing.items())
        warnings.warn(
            f"NVML has neither an energy counter nor a power reading for {sorted(map(str, missing))} "
            f"({causes}): the GPU energy is 'not measured' (not 0 Wh) in logs, totals and reports. HINT: "
            "pass `device_indices` without these GPUs to measure the others.",
            EnergyMeasurementWarning,
            stacklevel=4,
        )

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

    def _gpu_mj(self) -> tuple[float, float]:
        """``(time of the reading, GPU millijoules since start)``: counters plus sampled power."""
        now, sampled_j = self._sampler.sample() if self._sampler is not None else (time.perf_counter(), 0.0)
        counted = sum(now_mj - then for now_mj, then in zip(self._counters_mj(), self._mj0))
        return now, counted + 1000.0 * sampled_j

    def _read(self, force: bool = False) -> EnergyRecord | None:
        if not force and self._last is not None and time.perf_counter() - self._last_t < self.min_interval_s:
            return self._last
        try:
            now, gpu_mj = self._gpu_mj()
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

    def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None

    def _stop(self) -> EnergyRecord | None:
        try:
            return self._read(force=True)
        finally:
            self._stop_sampler()
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # already shut down
                pass
