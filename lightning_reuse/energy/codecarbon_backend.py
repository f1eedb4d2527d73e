"""The default backend: codecarbon's ``OfflineEmissionsTracker``, configured so it can never go online.

Facts this module is built around (codecarbon 3.3):

- the online tracker probes cloud metadata and geolocation hosts: only the offline tracker is used, with an
  explicit country (or a fixed gCO2e/kWh), no API/HTTP/Prometheus/Logfire output and no Electricity Maps
  token, whatever ``~/.codecarbon.config`` or ``CODECARBON_*`` variables say;
- per-window numbers come from ``flush()``: a custom output handler receives the cumulative
  ``EmissionsData``; differences are taken by the caller (``start_task`` would corrupt durations);
- a fresh tracker per measurement (``start()`` after ``stop()`` keeps energy but restarts duration); the
  first ``start()`` in a process costs ~1.3 s (hardware detection), later ones ~2 ms;
- errors inside ``start/flush/stop`` are logged and swallowed, and ``stop()`` may return ``None`` (e.g. a
  stale lock file with ``allow_multiple_runs=False``): this backend reports that as ``None`` and a status;
- ``stop()`` cancels the sampler timers without joining them: this backend joins them, so no thread is
  left behind;
- a GPU without an energy counter: codecarbon before its power fallback reports 0 kWh for it (codecarbon
  issue #1316); codecarbon 3.3 averages its sampled power instead, but still counts 0 while the power
  cannot be read either. This backend labels the GPU ``"sampled power"`` in the first case of the fallback
  and ``"not measured"`` (never 0 Wh, one :class:`~lightning_reuse.energy.records.EnergyMeasurementWarning`)
  whenever codecarbon counted a selected GPU as 0 without measuring it.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

from lightning_reuse.energy.backends import EnergyBackend
from lightning_reuse.energy.config import EnergyConfig
from lightning_reuse.energy.records import NOT_MEASURED, EnergyMeasurementWarning, EnergyRecord

#: GPU methods from the most to the least exact: a GPU summed with others gives the sum the least exact one.
_GPU_RANK = ("NVML", "sampled power", NOT_MEASURED)


def _make_capture() -> Any:
    from codecarbon.output_methods.base_output import BaseOutput

    class _Capture(BaseOutput):
        """Keeps the last cumulative EmissionsData that codecarbon hands to its outputs."""

        def __init__(self) -> None:
            self.total: Any = None

        def out(self, total: Any, delta: Any) -> None:
            self.total = total

        def live_out(self, total: Any, delta: Any) -> None:
            pass

    return _Capture()


def _cpu_method(mode: str | None) -> str:
    """codecarbon's CPU mode -> a :data:`~lightning_reuse.energy.records.METHODS` value: ``"RAPL"``,
    ``"counter"`` (another hardware/OS energy counter: Intel Power Gadget, Windows EMI, Apple powermetrics)
    or ``"estimate"``.

    >>> _cpu_method("intel_rapl"), _cpu_method("apple_powermetrics"), _cpu_method("constant")
    ('RAPL', 'counter', 'estimate')
    """
    if mode and "rapl" in mode:
        return "RAPL"
    if mode in ("intel_power_gadget", "windows_emi", "apple_powermetrics"):
        return "counter"
    return "estimate"


def _reads_counter(device: Any) -> bool:
    """Whether a codecarbon GPU device answers its energy counter (codecarbon returns ``None`` or raises)."""
    try:
        return device._get_total_energy_consumption() is not None
    except Exception:
        return False


def _device_method(device: Any) -> str:
    """How codecarbon measured one GPU device during the last interval: ``"NVML"`` (its energy counter),
    ``"sampled power"`` (codecarbon >= 3.3's fallback: averaged power x time) or ``"not measured"``
    (codecarbon counted 0: no counter before the fallback existed, or no power reading, or 0 W).

    >>> from types import SimpleNamespace as Device
    >>> fallback = dict(_use_power_fallback=True, _has_counter=False, _warned_zero_power=False)
    >>> _device_method(Device(**fallback, _warned_power_failure=False))
    'sampled power'
    >>> _device_method(Device(**fallback, _warned_power_failure=True))
    'not measured'
    >>> _device_method(Device(_get_total_energy_consumption=lambda: None))  # codecarbon without fallback
    'not measured'
    """
    if not hasattr(device, "_use_power_fallback"):  # codecarbon without the power fallback: 0 kWh
        return "NVML" if _reads_counter(device) else NOT_MEASURED
    if getattr(device, "_warned_zero_power", False):
        return NOT_MEASURED
    if device._use_power_fallback or not getattr(device, "_has_counter", True):
        return NOT_MEASURED if getattr(device, "_warned_power_failure", False) else "sampled power"
    return "NVML"


def _least_exact(methods: list[str]) -> str:
    """The least exact of the GPU methods (``"not measured"`` when there is none)."""
    return max(methods, key=_GPU_RANK.index, default=NOT_MEASURED)


def _require_country(country_iso_code: str | None) -> str:
    """codecarbon's offline tracker needs a country: ``None`` (no grid known) is refused here."""
    if country_iso_code is None:
        raise ValueError(
            "`country_iso_code` must be a 3-letter ISO 3166 code for the codecarbon backend, got None. "
            "HINT: pass e.g. country_iso_code='USA' (with `carbon_intensity_g_per_kwh` to fix the intensity)."
        )
    return country_iso_code


class CodeCarbonBackend(EnergyBackend):
    """codecarbon ``OfflineEmissionsTracker`` (a fresh one per :meth:`start`), never online.

    Args:
        country_iso_code: 3-letter ISO code of where the machine runs (carbon intensity of its grid).
        carbon_intensity_g_per_kwh: a fixed intensity in gCO2e/kWh instead of the country's.
        pue: power usage effectiveness of the data centre.
        measure_power_secs: codecarbon's background sampling interval (power of estimated components is
            sampled at this interval; the counters are also read at every boundary).
        tracking_mode: ``"machine"`` (whole machine) or ``"process"`` (this process and its children).
        gpu_ids: GPUs to measure, as physical indices or UUIDs (codecarbon's ``gpu_ids``; see
            :func:`~lightning_reuse.energy.backends.physical_gpu_id`). Default: codecarbon's (the entries of
            ``CUDA_VISIBLE_DEVICES`` when set, else every GPU); ``[]``: none (GPU "not measured").
        allow_multiple_runs: codecarbon's lock: ``False`` refuses to run beside another tracker (and
            installs codecarbon's own SIGINT/SIGTERM handlers). Default ``True``.
        log_level: level of the ``codecarbon`` logger (set before the tracker is built).
        config: a validated configuration instead of ``country_iso_code``, ``carbon_intensity_g_per_kwh``,
            ``pue`` and ``measure_power_secs`` (``EnergyMonitor`` passes its own).

    Example:
        >>> backend = CodeCarbonBackend(country_iso_code="FRA", measure_power_secs=1.0)
        >>> backend.name, backend.intensity
        ('codecarbon', 56.039)
    """

    name = "codecarbon"

    def __init__(
        self,
        country_iso_code: str = "USA",
        carbon_intensity_g_per_kwh: float | None = None,
        pue: float = 1.0,
        measure_power_secs: float = 15.0,
        tracking_mode: str = "machine",
        gpu_ids: list[int | str] | None = None,
        allow_multiple_runs: bool = True,
        log_level: str = "error",
        *,
        config: EnergyConfig | None = None,
    ) -> None:
        if config is None:
            config = EnergyConfig(
                country_iso_code,
                carbon_intensity_g_per_kwh=carbon_intensity_g_per_kwh,
                pue=pue,
                measure_power_secs=measure_power_secs,
            )
        super().__init__(config=config)
        self.country_iso_code = _require_country(config.country_iso_code)
        self.fixed_intensity = config.carbon_intensity_g_per_kwh
        if tracking_mode not in ("machine", "process"):
            raise ValueError(
                f"`tracking_mode` must be 'machine' or 'process', got {tracking_mode!r}. HINT: 'process' "
                "measures this process and its children only."
            )
        self.measure_power_secs = float(config.measure_power_secs)
        self.tracking_mode = tracking_mode
        self.gpu_ids = gpu_ids
        self.allow_multiple_runs = allow_multiple_runs
        self.log_level = log_level
        self.tracker: Any = None
        self._capture: Any = None
        self._methods: dict[str, str] = {"cpu": "estimate", "gpu": "not measured", "ram": "estimate"}
        self._warned = False

    @property
    def methods(self) -> dict[str, str]:
        return dict(self._methods)

    def _start(self) -> None:
        from codecarbon import OfflineEmissionsTracker

        # One warning is emitted before codecarbon applies `log_level`: set the logger level first.
        logging.getLogger("codecarbon").setLevel(self.log_level.upper())
        self._capture = _make_capture()
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=self.country_iso_code,
            force_carbon_intensity_g_co2e_kwh=self.fixed_intensity,
            pue=self.pue,
            measure_power_secs=self.measure_power_secs,
            tracking_mode=self.tracking_mode,
            gpu_ids=self.gpu_ids,
            allow_multiple_runs=self.allow_multiple_runs,
            log_level=self.log_level,
            # Everything that could reach the network is off, whatever the config files say.
            output_methods=[],
            output_handlers=[self._capture],
            emissions_endpoint=None,
            electricitymaps_api_token=None,
            api_call_interval=-1,
            cloud_provider=None,
            cloud_region=None,
            project_name="lightning_reuse",
        )
        self.tracker.start()
        started = getattr(self.tracker, "_start_time", None) is not None
        if not started:
            self.status = "failed: codecarbon start() did not start (see codecarbon's log)"
        self._methods = self._detect_methods()

    def _detect_methods(self) -> dict[str, str]:
        methods = {"cpu": "estimate", "gpu": "not measured", "ram": "estimate"}
        for hw in getattr(self.tracker, "_hardware", None) or []:
            if type(hw).__name__ == "CPU":
                methods["cpu"] = _cpu_method(getattr(hw, "_mode", None))
        gpu = self._gpu_method()
        if gpu is not None:
            methods["gpu"] = gpu
        return methods

    def _gpu_devices(self) -> list[Any] | None:
        """codecarbon's devices of the GPUs this tracker sums; ``None`` when it tracks no GPU."""
        if self.gpu_ids == []:
            return None
        for hw in getattr(self.tracker, "_hardware", None) or []:
            if type(hw).__name__ == "GPU":
                devices = list(getattr(getattr(hw, "devices", None), "devices", None) or [])
                try:
                    ids = set(hw._get_gpu_ids())
                except Exception:  # another codecarbon version: every device
                    return devices
                return [d for d in devices if getattr(d, "gpu_index", None) in ids]
        return None

    def _gpu_method(self) -> str | None:
        """The GPU's method for the last interval (``None``: no GPU tracked); warns once if not measured."""
        devices = self._gpu_devices()
        if devices is None:
            return None
        methods = {getattr(d, "gpu_index", i): _device_method(d) for i, d in enumerate(devices)}
        missing = sorted(str(i) for i, m in methods.items() if m == NOT_MEASURED)
        if (missing or not methods) and not self._warned:
            self._warned = True
            warnings.warn(
                f"codecarbon tracks GPU(s) {missing or self.gpu_ids} but measured neither an energy counter "
                "nor a power reading (it counts them as 0 kWh): the GPU energy is 'not measured' (not 0 Wh) "
                "in logs, totals and reports. HINT: pass `gpu_ids` without these GPUs to measure the "
                "others, or use `backend='nvml'`.",
                EnergyMeasurementWarning,
                stacklevel=2,
            )
        return _least_exact(list(methods.values()))

    def _update_gpu_method(self) -> None:
        """After a flush or stop: the least exact GPU method seen since :meth:`start` (it never improves:
        a cumulative figure that missed a GPU's energy once stays incomplete)."""
        gpu = self._gpu_method()
        if gpu is not None:
            self._methods["gpu"] = _least_exact([self._methods["gpu"], gpu])

    def _to_record(self, data: Any) -> EnergyRecord:
        return EnergyRecord(
            cpu_wh=float(data.cpu_energy) * 1000.0,
            gpu_wh=float(data.gpu_energy) * 1000.0,
            ram_wh=float(data.ram_energy) * 1000.0,
            energy_wh=float(data.energy_consumed) * 1000.0,
            co2_g=float(data.emissions) * 1000.0,
            duration_s=float(data.duration),
            method=self.methods,
            pue=self.pue,
        )

    def _read(self) -> EnergyRecord | None:
        self._capture.total = None
        result = self.tracker.flush()
        if result is None or self._capture.total is None:
            self.status = "failed: codecarbon flush() returned None (see codecarbon's log)"
            return None
        self._update_gpu_method()
        return self._to_record(self._capture.total)

    def _sampler_timers(self) -> list[threading.Thread]:
        timers = []
        for attr in ("_scheduler", "_scheduler_monitor_power"):
            scheduler = getattr(self.tracker, attr, None)
            timer = getattr(scheduler, "_timer", None)
            if timer is not None:
                timers.append((scheduler, timer))
        return timers

    def _stop(self) -> EnergyRecord | None:
        schedulers = self._sampler_timers()
        self._capture.total = None
        result = self.tracker.stop()
        for scheduler, _ in schedulers:  # stop() may have failed half-way: stop the samplers anyway
            try:
                scheduler.stop()
            except Exception:
                pass
        for scheduler, _ in schedulers:
            timer = getattr(scheduler, "_timer", None)  # the scheduler may have re-armed a new timer
            for t in {timer, _}:
                if t is not None and t is not threading.current_thread():
                    t.cancel()
                    t.join(timeout=5.0)
        data = getattr(self.tracker, "final_emissions_data", None) or self._capture.total
        if result is None or data is None:
            self.status = "failed: codecarbon stop() returned None (see codecarbon's log)"
            return None
        self._update_gpu_method()
        return self._to_record(data)
