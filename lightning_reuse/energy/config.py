"""One validated configuration of an energy measurement: grid, PUE, sampling, DDP mode and prediction.

:class:`EnergyConfig` checks every option once, in ``__post_init__``, and resolves the carbon intensity
(gCO2e/kWh) of the grid. ``EnergyMonitor`` builds one from its keyword arguments and passes it through to
the fit accounting and the backends, which trust it (they do not check the values again).

Example:
    >>> config = EnergyConfig(country_iso_code="fra", pue=1.2)
    >>> config.country_iso_code, config.intensity, config.pue
    ('FRA', 56.039, 1.2)
    >>> EnergyConfig(carbon_intensity_g_per_kwh=120.0).intensity
    120.0
    >>> EnergyConfig(country_iso_code=None).intensity  # no grid known: the world average
    475.0
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from lightning_reuse.energy.countries import is_iso_alpha3

#: World-average carbon intensity of electricity (gCO2e/kWh; IEA, 2019), used when nothing better is known.
WORLD_AVERAGE_G_PER_KWH = 475.0

DDP_MODES = ("node", "process")
BUDGET_ACTIONS = ("warn", "stop")


@cache
def _energy_mix() -> dict[str, Any]:
    spec = importlib.util.find_spec("codecarbon")  # locate codecarbon's data without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(spec.submodule_search_locations[0]) / "data" / "private_infra" / "global_energy_mix.json"
    return json.loads(path.read_text()) if path.exists() else {}


def carbon_intensity(country_iso_code: str | None = None, fixed_g_per_kwh: float | None = None) -> float:
    """Carbon intensity in gCO2e/kWh: ``fixed_g_per_kwh`` if given, else the country's (codecarbon's
    offline energy-mix table, no network), else :data:`WORLD_AVERAGE_G_PER_KWH`.

    >>> carbon_intensity(fixed_g_per_kwh=50.0)
    50.0
    >>> carbon_intensity(None)
    475.0
    """
    if fixed_g_per_kwh is not None:
        if not fixed_g_per_kwh >= 0:  # NaN too
            raise ValueError(
                f"`carbon_intensity_g_per_kwh` must be >= 0 gCO2e/kWh, got {fixed_g_per_kwh}. "
                "HINT: pass e.g. 56.0 (France) or 369.5 (USA), or leave it None to use `country_iso_code`."
            )
        return float(fixed_g_per_kwh)
    if country_iso_code is None:
        return WORLD_AVERAGE_G_PER_KWH
    mix = _energy_mix()
    if not mix:
        return WORLD_AVERAGE_G_PER_KWH
    code = country_iso_code.upper()
    if code not in mix:
        raise ValueError(
            f"`country_iso_code` must be a 3-letter ISO code known to codecarbon's energy-mix table, got "
            f"{country_iso_code!r}; e.g. {sorted(mix)[:8]}. HINT: or pass `carbon_intensity_g_per_kwh`."
        )
    return float(mix[code]["carbon_intensity"])


def validate_country(country_iso_code: str) -> str:
    """Return the upper-cased code, or raise ``ValueError`` when it is unknown.

    A code must be an assigned ISO 3166-1 alpha-3 code (checked without codecarbon) and, when codecarbon is
    installed, one its offline energy-mix table knows.
    """
    if not isinstance(country_iso_code, str) or len(country_iso_code) != 3:
        raise ValueError(
            f"`country_iso_code` must be a 3-letter ISO 3166 code such as 'USA', 'FRA' or 'DEU', got "
            f"{country_iso_code!r}. HINT: pass e.g. country_iso_code='DEU'."
        )
    if not is_iso_alpha3(country_iso_code):  # checked with or without codecarbon installed
        raise ValueError(
            f"`country_iso_code` must be an ISO 3166-1 alpha-3 code such as 'USA', 'FRA' or 'DEU', got "
            f"{country_iso_code!r}, which is not an assigned code. HINT: look the country up in ISO 3166-1 "
            "(e.g. Germany is 'DEU', the United Kingdom 'GBR'), or pass `carbon_intensity_g_per_kwh`."
        )
    carbon_intensity(country_iso_code)  # raises with a list when codecarbon's table does not know it
    return country_iso_code.upper()


@dataclass(frozen=True)
class EnergyConfig:
    """The options of an energy measurement, validated once (``ValueError`` naming the option).

    Args:
        country_iso_code: 3-letter ISO code of the grid the machine draws from (upper-cased); ``None``: no
            grid known (the world average, unless ``carbon_intensity_g_per_kwh`` is given).
        carbon_intensity_g_per_kwh: a fixed intensity (gCO2e/kWh, >= 0) instead of the country's.
        pue: power usage effectiveness of the data centre (>= 1).
        measure_power_secs: codecarbon's sampling interval in seconds (> 0).
        ddp_mode: ``"node"`` (one machine-wide measurement per node) or ``"process"`` (one per rank).
        predict: predict the fit's total after each epoch.
        confidence: coverage of the prediction interval, in (0, 1).
        prior_rel_sd: epoch-to-epoch relative spread assumed until two steady epochs are observed (>= 0).
        warmup_batches: batches of the first epoch treated as warm-up by the prediction (>= 0).
        measure_validation: keep the ``"fit-validation"`` window (two extra reads per epoch).
        budget_wh: energy budget of the fit in Wh (> 0; ``None``: none).
        budget_co2_g: carbon budget of the fit in g CO2e (> 0; ``None``: none).
        budget_s: wall-clock budget of the fit in seconds (> 0; ``None``: none).
        budget_action: what a budget that is (or will be) exceeded does: ``"warn"`` or ``"stop"``.
        check_every_n_steps: training batches between two checks of the measured total against the
            budgets (>= 1; the overshoot is at most this many batches).

    Attributes:
        intensity: the resolved carbon intensity in gCO2e/kWh.
    """

    country_iso_code: str | None = "USA"
    carbon_intensity_g_per_kwh: float | None = None
    pue: float = 1.0
    measure_power_secs: float = 15.0
    ddp_mode: Literal["node", "process"] = "node"
    predict: bool = True
    confidence: float = 0.9
    prior_rel_sd: float = 0.1
    warmup_batches: int = 2
    measure_validation: bool = True
    budget_wh: float | None = None
    budget_co2_g: float | None = None
    budget_s: float | None = None
    budget_action: Literal["warn", "stop"] = "warn"
    check_every_n_steps: int = 50
    intensity: float = field(init=False)

    def __post_init__(self) -> None:
        self._check_accounting()
        self._check_measurement()
        self._check_budgets()
        country = None if self.country_iso_code is None else validate_country(self.country_iso_code)
        object.__setattr__(self, "country_iso_code", country)
        object.__setattr__(self, "intensity", carbon_intensity(country, self.carbon_intensity_g_per_kwh))

    def _check_accounting(self) -> None:
        if self.ddp_mode not in DDP_MODES:
            raise ValueError(
                f"`ddp_mode` must be 'node' or 'process', got {self.ddp_mode!r}. HINT: 'node' measures each "
                "machine once; 'process' measures every rank's own process and GPU."
            )
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"`confidence` must be in (0, 1), got {self.confidence}. HINT: e.g. 0.9.")
        if not self.prior_rel_sd >= 0:
            raise ValueError(
                f"`prior_rel_sd` must be >= 0 (0.1 = 10% spread), got {self.prior_rel_sd}. HINT: e.g. 0.1."
            )
        if self.warmup_batches < 0:
            raise ValueError(
                f"`warmup_batches` must be >= 0, got {self.warmup_batches}. HINT: 0 turns warm-up off."
            )

    def _check_measurement(self) -> None:
        if not self.pue >= 1.0:
            raise ValueError(
                f"`pue` must be >= 1.0 (1.0 = no data-centre overhead), got {self.pue}. "
                "HINT: typical data centres are 1.1-1.6."
            )
        if not self.measure_power_secs > 0:
            raise ValueError(
                f"`measure_power_secs` must be > 0 seconds, got {self.measure_power_secs}. "
                "HINT: codecarbon's default is 15.0; 1.0 samples estimated components every second."
            )

    @property
    def budgets(self) -> dict[str, float]:
        """The budgets that are set: ``"energy_wh"`` / ``"co2_g"`` / ``"duration_s"`` -> limit.

        >>> EnergyConfig(budget_wh=2.0, budget_s=60.0).budgets
        {'energy_wh': 2.0, 'duration_s': 60.0}
        """
        limits = {"energy_wh": self.budget_wh, "co2_g": self.budget_co2_g, "duration_s": self.budget_s}
        return {k: float(v) for k, v in limits.items() if v is not None}

    def _check_budgets(self) -> None:
        for name in ("budget_wh", "budget_co2_g", "budget_s"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, (int, float)) and value > 0 and value < float("inf")
            ):
                raise ValueError(
                    f"`{name}` must be a finite number > 0 or None, got {value!r}. "
                    "HINT: e.g. budget_wh=50.0 (Wh), budget_co2_g=20.0 (g CO2e), budget_s=3600.0 (s)."
                )
        if self.budget_action not in BUDGET_ACTIONS:
            raise ValueError(
                f"`budget_action` must be 'warn' or 'stop', got {self.budget_action!r}. "
                "HINT: 'stop' ends the fit gracefully through `trainer.should_stop`."
            )
        n = self.check_every_n_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"`check_every_n_steps` must be an integer >= 1 (training batches), got {n!r}. "
                "HINT: e.g. 50; a smaller value bounds the overshoot tighter at a little more cost."
            )
