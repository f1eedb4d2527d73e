"""EnergyMeter: nested windows add up exactly; a failing backend gives one warning and keeps the numbers."""

from __future__ import annotations

import itertools

import pytest

from lightning_reuse.energy.backends import EnergyBackend, SimulatedBackend
from lightning_reuse.energy.meter import EnergyMeasurementWarning, EnergyMeter
from lightning_reuse.energy.records import EnergyRecord


def _sim() -> SimulatedBackend:
    ticks = itertools.count()
    return SimulatedBackend(
        cpu_w=3600.0, ram_w=0.0, carbon_intensity_g_per_kwh=1000.0, clock=lambda: float(next(ticks))
    )


def test_nested_windows_add_up_exactly() -> None:
    meter = EnergyMeter(_sim())
    meter.start()  # t0
    with meter.window("outer") as outer:  # reads at t1 ... t6
        with meter.window("a") as a:  # t2, t3
            pass
        with meter.window("b") as b:  # t4, t5
            pass
    total = meter.stop()  # t7
    assert (a.cpu_wh, b.cpu_wh, outer.cpu_wh, total.cpu_wh) == (1.0, 1.0, 5.0, 7.0)
    assert outer.co2_g == pytest.approx(5.0)
    assert set(meter.windows) == {"outer", "a", "b"}


def test_repeated_window_name_accumulates() -> None:
    meter = EnergyMeter(_sim())
    meter.start()
    for _ in range(3):
        with meter.window("eval"):
            pass
    assert meter.windows["eval"].cpu_wh == 3.0 and meter.window_counts["eval"] == 3


def test_window_outside_a_run_starts_and_stops_the_backend() -> None:
    meter = EnergyMeter(_sim())
    with meter.window("standalone") as rec:
        assert meter.running
    assert not meter.running and rec.cpu_wh == 1.0 and rec.duration_s == 1.0


def test_window_is_filled_even_when_the_block_raises() -> None:
    meter = EnergyMeter(_sim())
    meter.start()
    with pytest.raises(ZeroDivisionError), meter.window("boom") as rec:
        1 / 0  # noqa: B018
    assert rec.cpu_wh == 1.0
    with pytest.raises(ValueError, match="non-empty string"):
        with meter.window(""):
            pass


class _Flaky(EnergyBackend):
    """A backend whose reads fail after ``ok_reads`` successes (a fault codecarbon swallows internally)."""

    name = "flaky"

    def __init__(self, ok_reads: int) -> None:
        super().__init__()
        self.ok_reads, self.reads = ok_reads, 0

    @property
    def methods(self) -> dict[str, str]:
        return {"cpu": "estimate"}

    def _start(self) -> None:
        self.reads = 0

    def _read(self) -> EnergyRecord | None:
        self.reads += 1
        if self.reads > self.ok_reads:
            self.status = "failed: flush returned None"
            return None
        return EnergyRecord(cpu_wh=float(self.reads), duration_s=float(self.reads))

    def _stop(self) -> EnergyRecord | None:
        return self._read()


def test_failure_warns_once_keeps_numbers_and_sets_status() -> None:
    meter = EnergyMeter(_Flaky(ok_reads=2))
    meter.start()
    assert meter.read().cpu_wh == 1.0
    assert meter.read().cpu_wh == 2.0
    with pytest.warns(EnergyMeasurementWarning, match="flaky") as caught:
        third = meter.read()
        fourth = meter.read()
        final = meter.stop()
    assert len(caught) == 1
    assert third.cpu_wh == fourth.cpu_wh == final.cpu_wh == 2.0  # the last good reading stands
    assert meter.status == "failed: flush returned None" and final.status == meter.status
    assert meter.stop() is final  # idempotent


def test_backend_that_cannot_start_does_not_raise() -> None:
    class _NoStart(_Flaky):
        def _start(self) -> None:
            raise OSError("no counters")

    meter = EnergyMeter(_NoStart(ok_reads=5))
    with pytest.warns(EnergyMeasurementWarning, match="OSError: no counters"):
        meter.start()
    assert meter.stop().energy_wh == 0.0
