"""NVMLBackend on GPUs without an energy counter: sampled power integrated over time, or "not measured" once.

This CPU machine has no GPU, and no GPU here lacks the counter, so the NVML library is replaced by a small
fake module (through ``sys.modules``) that answers with the real ``pynvml`` error classes: the fault cannot
be produced for real on this machine. Everything else is real: the meter, the sampler thread, a Trainer.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pynvml
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
from lightning_reuse.energy.backends import NVMLBackend
from lightning_reuse.energy.meter import EnergyMeasurementWarning, EnergyMeter
from lightning_reuse.energy.records import METHODS
from lightning_reuse.energy.report import reuse_report

NOT_SUPPORTED = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # an NVMLError_NotSupported instance


def _raise(err: BaseException) -> Callable[..., int]:
    def query(*_: object) -> int:
        raise err

    return query


class _FakeNVML(types.SimpleNamespace):
    """NVML with per-GPU answers: a counter (mJ) or ``None`` (NotSupported), a power (W) or ``None``.

    Every power query is recorded as ``(perf_counter time, watts)`` so tests know when samples were taken.
    """

    def __init__(self, counters: dict[int, int | None], watts: dict[int, float | None]) -> None:
        super().__init__(
            NVMLError=pynvml.NVMLError,
            NVMLError_NotSupported=pynvml.NVMLError_NotSupported,
            NVMLError_FunctionNotFound=pynvml.NVMLError_FunctionNotFound,
            nvmlInit=lambda: None,
            nvmlShutdown=lambda: None,
            nvmlDeviceGetCount=lambda: len(counters),
            nvmlDeviceGetHandleByIndex=lambda i: i,
        )
        self.counters, self.watts = counters, watts
        self.power_calls: list[tuple[float, float]] = []

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if self.counters[handle] is None:
            raise NOT_SUPPORTED
        return self.counters[handle]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        watts = self.watts[handle]
        if watts is None:
            raise NOT_SUPPORTED
        self.power_calls.append((time.perf_counter(), watts))
        return round(watts * 1000)  # NVML answers in mW


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Callable[..., _FakeNVML]:
    def install(counters: dict[int, int | None], watts: dict[int, float | None]) -> _FakeNVML:
        fake = _FakeNVML(counters, watts)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lightning_reuse-nvml-power"]


def _wait_for_samples(fake: _FakeNVML, n: int) -> None:
    """Let the background thread take at least ``n`` more samples (no timing assumption: it waits)."""
    target = len(fake.power_calls) + n
    while len(fake.power_calls) < target:
        time.sleep(0.005)


def test_constant_power_integrates_exactly(fake_nvml: Callable[..., _FakeNVML]) -> None:
    fake = fake_nvml({0: None}, {0: 250.0})
    backend = NVMLBackend(carbon_intensity_g_per_kwh=1000.0, pue=1.2, min_interval_s=0.0, power_sample_s=0.01)
    backend.start()
    assert len(_sampler_threads()) == 1
    _wait_for_samples(fake, 3)
    first = backend.read()
    _wait_for_samples(fake, 3)
    final = backend.stop()
    for r in (first, final):
        assert r.method == {"gpu": "sampled power", "cpu": "not measured", "ram": "not measured"}
        assert r.gpu_wh == pytest.approx(1.2 * 250.0 * r.duration_s / 3600.0, rel=1e-9)
        assert r.co2_g == pytest.approx(r.gpu_wh, rel=1e-9)  # 1000 g/kWh: 1 g per Wh
    assert 0 < first.duration_s < final.duration_s
    assert _sampler_threads() == [], "the sampler thread is joined at stop"
    assert "sampled power" in METHODS and "x_gpu_wh" in final.metrics("x")


def test_changing_power_within_the_sampling_tolerance(fake_nvml: Callable[..., _FakeNVML]) -> None:
    fake = fake_nvml({0: None}, {0: 100.0})
    backend = NVMLBackend(min_interval_s=0.0, power_sample_s=0.01)
    backend.start()
    _wait_for_samples(fake, 5)
    fake.watts[0] = 300.0
    t_switch = time.perf_counter()
    _wait_for_samples(fake, 5)
    record = backend.stop()
    times = [t for t, _ in fake.power_calls]  # the last one is the stop's sample, where the record ends
    exact_j = 100.0 * record.duration_s + 200.0 * (times[-1] - t_switch)
    widest_gap = max(b - a for a, b in zip(times, times[1:]))
    # one power change of 200 W: the trapezoid rule is off by at most 200 W x the gap around it
    assert record.gpu_wh * 3600.0 == pytest.approx(exact_j, abs=200.0 * widest_gap)
    assert record.gpu_wh * 3600.0 > 100.0 * record.duration_s  # the 300 W phase counted


def test_gpus_with_and_without_counter_add_up(fake_nvml: Callable[..., _FakeNVML]) -> None:
    fake = fake_nvml({0: 1_000_000, 1: None}, {0: 999.0, 1: 40.0})
    backend = NVMLBackend(min_interval_s=0.0)
    backend.start()
    fake.counters[0] += 3_600_000  # 1 Wh on the GPU with a counter
    record = backend.stop()
    assert record.method["gpu"] == "sampled power"  # the least exact method of the GPUs summed
    assert record.gpu_wh == pytest.approx(1.0 + 40.0 * record.duration_s / 3600.0, rel=1e-9)


def test_function_not_found_also_falls_back(fake_nvml: Callable[..., _FakeNVML]) -> None:
    fake = fake_nvml({0: None}, {0: 60.0})  # an old driver without the energy query
    fake.nvmlDeviceGetTotalEnergyConsumption = _raise(pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND))
    backend = NVMLBackend(min_interval_s=0.0)
    backend.start()
    assert backend.stop().method["gpu"] == "sampled power"


def test_another_nvml_error_is_a_failure_not_a_fallback(fake_nvml: Callable[..., _FakeNVML]) -> None:
    fake = fake_nvml({0: None}, {0: 60.0})
    fake.nvmlDeviceGetTotalEnergyConsumption = _raise(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST))
    meter = EnergyMeter(NVMLBackend(min_interval_s=0.0))
    with pytest.warns(EnergyMeasurementWarning, match="failed") as caught:
        meter.start()
        meter.stop()
    assert len(caught) == 1 and meter.status.startswith("failed: NVMLError_GpuIsLost")
    assert _sampler_threads() == []


def test_no_counter_and_no_power_is_not_measured_with_one_warning(
    fake_nvml: Callable[..., _FakeNVML],
) -> None:
    fake = fake_nvml({0: 5_000_000, 1: None}, {0: 100.0, 1: None})
    meter = EnergyMeter(NVMLBackend(cpu_w=10.0, min_interval_s=0.0))
    with pytest.warns(
        EnergyMeasurementWarning, match=r"\['1'\].*not measured.*HINT: pass `device_indices`"
    ) as caught:
        for _ in range(2):  # a backend started again warns no more
            meter.start()
            fake.counters[0] += 3_600_000  # GPU 0's energy is not summed alone: the total would miss GPU 1
            reads = [meter.read() for _ in range(3)]
            final = meter.stop()
    assert len(caught) == 1
    assert meter.status == "ok" and _sampler_threads() == []
    for r in [*reads, final]:
        assert r.method["gpu"] == "not measured" and r.gpu_wh == 0.0 and r.cpu_wh > 0
        assert "x_gpu_wh" not in r.metrics("x") and "gpu not measured" in str(r)
    assert meter.backend.methods["gpu"] == "not measured"


class _Sleepy(BoringModel):
    def training_step(self, batch, batch_idx):
        time.sleep(0.01)  # so the sampler thread takes samples during the fit
        return super().training_step(batch, batch_idx)


def _fit(tmp_path: Path, backend: NVMLBackend) -> tuple[EnergyMonitor, list[str]]:
    pl.seed_everything(0)
    monitor = EnergyMonitor(backend=backend, predict=False)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        callbacks=[monitor],
        logger=CSVLogger(tmp_path, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(_Sleepy())
    header = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    return monitor, header


def test_real_fit_logs_sampled_power(tmp_path: Path, fake_nvml: Callable[..., _FakeNVML]) -> None:
    fake_nvml({0: None}, {0: 200.0})
    monitor, header = _fit(tmp_path, NVMLBackend(min_interval_s=0.0, power_sample_s=0.01))
    total = monitor.total
    assert total.method["gpu"] == "sampled power" and "energy/total_gpu_wh" in header
    assert total.gpu_wh == pytest.approx(200.0 * total.duration_s / 3600.0, rel=1e-6)
    assert json.loads(monitor.totals_path.read_text())["total"]["gpu_wh"] == pytest.approx(total.gpu_wh)
    assert _sampler_threads() == []


def test_real_fit_never_logs_a_zero_for_an_unmeasured_gpu(
    tmp_path: Path, fake_nvml: Callable[..., _FakeNVML]
) -> None:
    fake_nvml({0: None}, {0: None})
    with pytest.warns(EnergyMeasurementWarning, match="not measured") as caught:
        monitor, header = _fit(tmp_path, NVMLBackend(cpu_w=10.0, min_interval_s=0.0))
    assert len([w for w in caught if w.category is EnergyMeasurementWarning]) == 1
    assert monitor.total.method["gpu"] == "not measured" and monitor.status == "ok"
    assert not [k for k in header if "gpu_wh" in k] and "energy/total_cpu_wh" in header
    assert json.loads(monitor.totals_path.read_text())["total"]["gpu_wh"] is None
    assert "gpu not measured" in str(monitor.total)
    row = reuse_report({"reuse": monitor.total}).splitlines()[-1]
    assert " / not measured / " in row and "gpu: not measured" in row


def test_power_sample_interval_is_validated() -> None:
    with pytest.raises(ValueError, match=r"`power_sample_s` must be > 0 seconds, got 0.*HINT:"):
        NVMLBackend(power_sample_s=0.0)
