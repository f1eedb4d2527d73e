"""A framework-free energy meter: one backend, boundary readings, nested named windows, failure policy.

The fit accounting (:class:`~lightning_reuse.energy.accounting.FitAccounting`, to which the
``EnergyMonitor`` callback routes trainer hooks) reads its epochs, stages and windows through this class.

Example:
    >>> from lightning_reuse.energy.backends import SimulatedBackend
    >>> ticks = iter(range(100))
    >>> meter = EnergyMeter(SimulatedBackend(cpu_w=3600.0, ram_w=0.0, clock=lambda: float(next(ticks))))
    >>> with meter.window("eval") as outer:   # starts the backend for the window, stops it after
    ...     with meter.window("inner") as inner:
    ...         pass
    >>> outer.cpu_wh, inner.cpu_wh, meter.windows["eval"].duration_s
    (3.0, 1.0, 3.0)
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

from lightning_reuse.energy.backends import EnergyBackend
from lightning_reuse.energy.records import EnergyMeasurementWarning, EnergyRecord


def _fill(target: EnergyRecord, source: EnergyRecord) -> None:
    target.__dict__.update(source.__dict__)
    target.method = dict(source.method)


class EnergyMeter:
    """Start/read/stop a backend and keep named windows; never raises on a measurement failure.

    A failed read or stop gives one :class:`EnergyMeasurementWarning` and sets :attr:`status`; the last
    good cumulative reading stands in for the missing one, so what was measured is kept (later deltas are
    zero, not garbage).

    Args:
        backend: the measurement source.
    """

    def __init__(self, backend: EnergyBackend) -> None:
        self.backend = backend
        self.windows: dict[str, EnergyRecord] = {}
        self.window_counts: dict[str, int] = {}
        self.status = "idle"
        self.final: EnergyRecord | None = None
        self._last = EnergyRecord(method=backend.methods, pue=backend.pue)
        self._warned = False
        self._cpu0 = time.process_time()

    @property
    def running(self) -> bool:
        return self.backend.running

    def _failed(self, what: str) -> None:
        self.status = self.backend.status if self.backend.status.startswith("failed") else f"failed: {what}"
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"Energy measurement with the {self.backend.name!r} backend failed ({self.status}). The "
                "numbers measured so far are kept; training continues. HINT: check codecarbon's log, or "
                "use `EnergyMonitor(backend='simulated')` to test the pipeline.",
                EnergyMeasurementWarning,
                stacklevel=3,
            )

    def _cpu_time(self, record: EnergyRecord) -> EnergyRecord:
        """Stamp the process's CPU seconds since :meth:`start` (measured by the OS) on a backend reading."""
        record.cpu_seconds = time.process_time() - self._cpu0
        return record

    def _stamp(self, record: EnergyRecord) -> EnergyRecord:
        if self.status != "ok" and record.status == "ok":
            record.status = self.status
        return record

    def start(self) -> EnergyRecord:
        """Start a fresh measurement; returns the zero reading it starts from."""
        self.final = None
        self._cpu0 = time.process_time()
        try:
            self.backend.start()
        except Exception as err:  # a backend that cannot start must not stop training
            self.backend.status = f"failed: {type(err).__name__}: {err}"
        self.status = self.backend.status
        if self.status.startswith("failed"):
            self._failed("start")
        self._last = EnergyRecord(method=self.backend.methods, pue=self.backend.pue)
        return self._stamp(EnergyRecord(method=self.backend.methods, pue=self.backend.pue))

    def read(self) -> EnergyRecord:
        """Cumulative record since :meth:`start` (after :meth:`stop`: the final one)."""
        if not self.backend.running:
            return self._stamp(EnergyRecord(**{**self._last.to_dict()}))
        record = None
        if not self.status.startswith("failed"):
            try:
                record = self.backend.read()
            except Exception as err:
                self.backend.status = f"failed: {type(err).__name__}: {err}"
        if record is None:
            self._failed("read")
            return self._stamp(EnergyRecord.from_dict(self._last.to_dict()))
        self._last = self._cpu_time(record)
        return self._stamp(EnergyRecord.from_dict(record.to_dict()))

    def stop(self) -> EnergyRecord:
        """Stop the backend (idempotent); the final cumulative record (the last good one on failure)."""
        if self.final is not None and not self.backend.running:
            return self.final
        record = None
        try:
            record = self.backend.stop()
        except Exception as err:
            self.backend.status = f"failed: {type(err).__name__}: {err}"
        if record is None:
            self._failed("stop")
            record = EnergyRecord.from_dict(self._last.to_dict())
        else:
            self._last = record = self._cpu_time(record)
        self.final = self._stamp(record)
        return self.final

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[EnergyRecord]:
        """Measure the block as window ``name``; yields a record filled when the block ends.

        Windows nest; a name used again accumulates in :attr:`windows`. When the meter is not running, it
        is started for the window and stopped afterwards.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string naming the window, got {name!r}.")
        owner = not self.running
        before = self.start() if owner else self.read()
        record = EnergyRecord(method=self.backend.methods, pue=self.backend.pue)
        try:
            yield record
        finally:
            after = self.stop() if owner else self.read()
            _fill(record, after - before)
            record.method = dict(after.method)
            self.add_window(name, record)

    def add_window(self, name: str, record: EnergyRecord) -> None:
        """Accumulate ``record`` into ``windows[name]`` (for windows measured from two hook calls)."""
        self.windows[name] = self.windows[name] + record if name in self.windows else record.scaled(1.0)
        self.window_counts[name] = self.window_counts.get(name, 0) + 1
