"""The unit of every energy figure: a plain :class:`EnergyRecord` (Wh, g CO2, s, per-component method).

Backends report *cumulative* records (everything since their start); windows, epochs and stages are
differences of two cumulative records, so nested and tiled measurements add up by construction.

Example:
    >>> a = EnergyRecord(cpu_wh=1.0, ram_wh=0.5, co2_g=0.3, duration_s=10.0)
    >>> b = EnergyRecord(cpu_wh=3.0, ram_wh=1.5, co2_g=0.9, duration_s=30.0)
    >>> d = b - a
    >>> d.energy_wh, d.co2_g, d.duration_s
    (3.0, 0.6, 20.0)
    >>> (a + d).energy_wh == b.energy_wh
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from lightning_reuse._warnings import LightningReuseWarning


#: The values a record's ``method`` maps each component to.
class EnergyMeasurementWarning(LightningReuseWarning):
    """An energy backend failed (or could not measure a component); the numbers so far are kept and training
    goes on."""


METHODS = ("RAPL", "NVML", "counter", "sampled power", "estimate", "simulated", "not measured")
COMPONENTS = ("cpu", "gpu", "ram")
_NUMERIC = ("cpu_wh", "gpu_wh", "ram_wh", "energy_wh", "co2_g", "duration_s", "cpu_seconds")
#: What a component that was not measured shows instead of a number (never a silent 0 Wh).
NOT_MEASURED = "not measured"


@dataclass
class EnergyRecord:
    """Energy, carbon and duration of one piece of work.

    Args:
        cpu_wh, gpu_wh, ram_wh: energy of each component in watt-hours, PUE included (as codecarbon does).
        energy_wh: total energy in Wh; ``cpu_wh + gpu_wh + ram_wh`` when left at ``None``.
        co2_g: emissions in grams of CO2-equivalent.
        duration_s: wall-clock seconds.
        cpu_seconds: CPU time (user + system) of the measuring process(es), in seconds: measured by the
            operating system, whatever the energy method (beside a CPU energy "estimate" it is the measured
            figure).
        method: component (``"cpu"``, ``"gpu"``, ``"ram"``) -> how it was measured: ``"RAPL"`` or
            ``"NVML"`` (hardware energy counters), ``"counter"`` (another hardware/OS energy counter, e.g.
            Apple powermetrics or Windows EMI, through codecarbon), ``"sampled power"`` (a GPU without an
            energy counter: its measured power sampled and integrated over time), ``"estimate"`` (a power
            model, e.g. TDP x load), ``"simulated"`` (constant-power simulator) or ``"not measured"``.
        status: ``"ok"``, or why the numbers may be incomplete (``"interrupted"``, ``"failed: ..."``).
        pue: the power usage effectiveness already multiplied into every energy figure.

    Note: Wh rather than kWh because loggers store floats as float32 and sub-kWh values lose digits.
    """

    cpu_wh: float = 0.0
    gpu_wh: float = 0.0
    ram_wh: float = 0.0
    energy_wh: float | None = None
    co2_g: float = 0.0
    duration_s: float = 0.0
    cpu_seconds: float = 0.0
    method: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    pue: float = 1.0

    def __post_init__(self) -> None:
        if self.energy_wh is None:
            self.energy_wh = self.cpu_wh + self.gpu_wh + self.ram_wh

    @property
    def energy_j(self) -> float:
        """Total energy in joules."""
        return float(self.energy_wh) * 3600.0

    @property
    def energy_kwh(self) -> float:
        """Total energy in kWh (for display; log Wh)."""
        return float(self.energy_wh) / 1000.0

    def measured(self, component: str) -> bool:
        """Whether ``component`` (``"cpu"``, ``"gpu"``, ``"ram"``) was measured or estimated.

        ``False`` when its method is ``"not measured"``, or when other components have a method, this one
        has none and its value is 0; a record without any method (unknown) counts every component.

        >>> r = EnergyRecord(cpu_wh=1.0, method={"cpu": "estimate", "gpu": "not measured"})
        >>> r.measured("cpu"), r.measured("gpu"), r.measured("ram"), EnergyRecord().measured("gpu")
        (True, False, False, True)
        """
        method = self.method.get(component)
        if method is not None:
            return method != NOT_MEASURED
        return not self.method or getattr(self, f"{component}_wh") != 0.0

    def component_text(self, component: str, fmt: str = ".3g") -> str:
        """The component's Wh as text, or ``"not measured"`` (never a silent 0)."""
        return format(getattr(self, f"{component}_wh"), fmt) if self.measured(component) else NOT_MEASURED

    def _combine(self, other: EnergyRecord, sign: float) -> EnergyRecord:
        if not isinstance(other, EnergyRecord):
            return NotImplemented
        values = {k: getattr(self, k) + sign * getattr(other, k) for k in _NUMERIC}
        status = self.status if self.status != "ok" else other.status
        pue = max(self.pue, other.pue)  # a zero record (PUE 1) must not mask the measured one's PUE
        return EnergyRecord(**values, method={**other.method, **self.method}, status=status, pue=pue)

    def __add__(self, other: EnergyRecord) -> EnergyRecord:
        return self._combine(other, 1.0)

    def __sub__(self, other: EnergyRecord) -> EnergyRecord:
        return self._combine(other, -1.0)

    def scaled(self, factor: float) -> EnergyRecord:
        """Every numeric field times ``factor`` (duration included)."""
        values = {k: getattr(self, k) * factor for k in _NUMERIC}
        return EnergyRecord(**values, method=dict(self.method), status=self.status, pue=self.pue)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON- and checkpoint-friendly)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["method"] = dict(self.method)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnergyRecord:
        """Inverse of :meth:`to_dict` (unknown keys are ignored, so older checkpoints load)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat float metrics ``{prefix}_wh``, ``{prefix}_cpu_wh``, ... for loggers.

        A component that was not measured (see :meth:`measured`) has no key: never a logged 0 Wh.

        >>> sorted(EnergyRecord(cpu_wh=1.0).metrics("energy/epoch"))[:3]
        ['energy/epoch_co2_g', 'energy/epoch_cpu_seconds', 'energy/epoch_cpu_wh']
        >>> "energy/epoch_gpu_wh" in EnergyRecord(method={"gpu": "not measured"}).metrics("energy/epoch")
        False
        """
        metrics = {f"{prefix}_wh": float(self.energy_wh)}
        for component in COMPONENTS:
            if self.measured(component):
                metrics[f"{prefix}_{component}_wh"] = float(getattr(self, f"{component}_wh"))
        metrics[f"{prefix}_co2_g"] = float(self.co2_g)
        metrics[f"{prefix}_duration_s"] = float(self.duration_s)
        metrics[f"{prefix}_cpu_seconds"] = float(self.cpu_seconds)
        return metrics

    def __str__(self) -> str:
        methods = ", ".join(f"{k}: {v}" for k, v in sorted(self.method.items())) or "unknown"
        return (
            f"{self.energy_wh:.4g} Wh, {self.co2_g:.4g} g CO2e in {self.duration_s:.3g} s "
            f"(cpu {self.component_text('cpu')} / gpu {self.component_text('gpu')} / "
            f"ram {self.component_text('ram')} Wh; {methods})"
        )
