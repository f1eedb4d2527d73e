"""EnergyRecord arithmetic, the simulator's exact numbers, carbon intensity look-up, the NVML backend's maths."""

from __future__ import annotations

import itertools
import sys
import types

import pytest

from lightning_reuse.energy.backends import (
    WORLD_AVERAGE_G_PER_KWH,
    NVMLBackend,
    SimulatedBackend,
    carbon_intensity,
    validate_country,
)
from lightning_reuse.energy.records import METHODS, EnergyRecord


def _clock(step: float = 1.0):
    ticks = itertools.count()
    return lambda: step * next(ticks)


def test_record_sum_and_difference_round_trip() -> None:
    a = EnergyRecord(cpu_wh=1.5, gpu_wh=2.0, ram_wh=0.25, co2_g=3.0, duration_s=4.0, method={"cpu": "RAPL"})
    b = EnergyRecord(cpu_wh=0.5, gpu_wh=1.0, ram_wh=0.25, co2_g=1.0, duration_s=2.0, method={"gpu": "NVML"})
    assert a.energy_wh == 3.75
    s = a + b
    assert (s.cpu_wh, s.gpu_wh, s.ram_wh, s.energy_wh, s.co2_g, s.duration_s) == (
        2.0,
        3.0,
        0.5,
        5.5,
        4.0,
        6.0,
    )
    assert s.method == {"cpu": "RAPL", "gpu": "NVML"}
    assert (s - b).to_dict() == {**a.to_dict(), "method": s.method}
    assert EnergyRecord.from_dict({**a.to_dict(), "unknown_future_key": 1}) == a
    assert a.energy_j == 3.75 * 3600 and a.energy_kwh == 3.75e-3


def test_record_status_propagates() -> None:
    bad = EnergyRecord(status="interrupted")
    assert (EnergyRecord() + bad).status == "interrupted"
    assert (bad - EnergyRecord()).status == "interrupted"


def test_simulator_exact_energy_co2_and_pue() -> None:
    sim = SimulatedBackend(
        cpu_w=3600.0, gpu_w=7200.0, ram_w=1800.0, carbon_intensity_g_per_kwh=400.0, pue=1.5, clock=_clock(2.0)
    )
    sim.start()  # t = 0
    r = sim.read()  # t = 2 s
    assert (r.cpu_wh, r.gpu_wh, r.ram_wh) == (3.0, 6.0, 1.5)  # 1.5 x W x 2 s / 3600
    assert r.energy_wh == 10.5 and r.duration_s == 2.0
    assert r.co2_g == pytest.approx(10.5 / 1000 * 400.0, rel=1e-15)
    assert r.method == {"cpu": "simulated", "gpu": "simulated", "ram": "simulated"}
    final = sim.stop()  # t = 4 s
    assert final.energy_wh == 21.0 and not sim.running
    assert sim.stop() is None  # stopping twice is harmless


def test_simulator_restart_is_a_fresh_measurement() -> None:
    sim = SimulatedBackend(cpu_w=3600.0, ram_w=0.0, clock=_clock())
    sim.start()
    sim.stop()
    sim.start()
    assert sim.read().cpu_wh == 1.0
    with pytest.raises(RuntimeError, match="before start"):
        SimulatedBackend().read()


def test_simulator_rejects_negative_power_and_bad_pue() -> None:
    with pytest.raises(ValueError, match="cpu_w"):
        SimulatedBackend(cpu_w=-1.0)
    with pytest.raises(ValueError, match="pue"):
        SimulatedBackend(pue=0.9)


def test_carbon_intensity_lookup_offline() -> None:
    assert carbon_intensity(fixed_g_per_kwh=12.5) == 12.5
    assert carbon_intensity("fra") == pytest.approx(56.039)  # codecarbon's offline energy-mix table
    assert carbon_intensity(None) == WORLD_AVERAGE_G_PER_KWH
    with pytest.raises(ValueError, match="known to codecarbon.*'ABW'"):
        carbon_intensity("XYZ")
    with pytest.raises(ValueError, match="must be >= 0"):
        carbon_intensity(fixed_g_per_kwh=-1.0)
    with pytest.raises(ValueError, match="3-letter"):
        validate_country("FR")


class _FakeNVML(types.SimpleNamespace):
    """Stands in for the NVML library, which this CPU machine does not have (no GPU to read)."""


def test_nvml_backend_converts_millijoules(monkeypatch: pytest.MonkeyPatch) -> None:
    counters = {0: 1_000_000, 1: 5_000_000}
    fake = _FakeNVML(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: counters[h],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    backend = NVMLBackend(carbon_intensity_g_per_kwh=1000.0, cpu_w=None, min_interval_s=0.0)
    backend.start()
    counters[0] += 3_600_000  # 3.6 kJ = 1 Wh
    counters[1] += 7_200_000
    r = backend.read()
    assert r.gpu_wh == pytest.approx(3.0) and r.cpu_wh == 0.0
    assert r.co2_g == pytest.approx(3.0)
    assert r.method == {"gpu": "NVML", "cpu": "not measured", "ram": "not measured"}
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: (_ for _ in ()).throw(RuntimeError("gone"))
    assert backend.read() is None and backend.status.startswith("failed: RuntimeError")


def test_nvml_reads_closer_than_min_interval_share_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counter(handle):
        calls.append(handle)
        return 3_600_000 * len(calls)

    fake = _FakeNVML(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=counter,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    backend = NVMLBackend(min_interval_s=3600.0)
    backend.start()  # 1 counter read
    first = backend.read()  # 2
    assert backend.read() is first and len(calls) == 2  # cached: no NVML call
    assert backend.stop().gpu_wh == pytest.approx(2.0) and len(calls) == 3  # stop always reads
    with pytest.raises(ValueError, match="min_interval_s"):
        NVMLBackend(min_interval_s=-1.0)


def test_every_reported_method_is_a_documented_one() -> None:
    from lightning_reuse.energy.codecarbon_backend import _cpu_method

    modes = (
        None,
        "intel_rapl",
        "intel_power_gadget",
        "windows_emi",
        "apple_powermetrics",
        "constant",
        "cpu_load",
    )
    assert {_cpu_method(m) for m in modes} == {"RAPL", "counter", "estimate"}
    assert {_cpu_method(m) for m in modes} <= set(METHODS)
    for backend in (
        SimulatedBackend(gpu_w=1.0),
        SimulatedBackend(),
        NVMLBackend(),
        NVMLBackend(device_indices=[]),
    ):
        assert set(backend.methods.values()) <= set(METHODS)


def test_nvml_backend_selects_gpus_by_index_or_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    counters = {0: 0, 1: 0}
    fake = _FakeNVML(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: ["GPU-aaaa-0000", "GPU-bbbb-1111"][h],
        nvmlDeviceGetTotalEnergyConsumption=lambda h: counters[h],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    backends = [
        NVMLBackend(device_indices=d, min_interval_s=0.0) for d in ([1], ["GPU-bbbb"], ["bbbb"], [0, 1])
    ]
    for b in backends:
        b.start()
    counters[0] += 3_600_000
    counters[1] += 7_200_000
    assert [b.read().gpu_wh for b in backends] == pytest.approx([2.0, 2.0, 2.0, 3.0])
    missing = NVMLBackend(device_indices=["GPU-zzzz"])
    with pytest.raises(ValueError, match="GPU-zzzz.*matches no GPU"):
        missing.start()
