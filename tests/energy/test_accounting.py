"""FitAccounting without a trainer: warm-up, steady rate, resume offset, prediction, DDP sums, GPU choice.

A simulator on a fake clock gives 1 Wh of CPU (and 1 g CO2e) per reading, so every figure is exact.
"""

from __future__ import annotations

import itertools
import math
import sys
import types

import pytest

from lightning_reuse.energy import (
    EnergyConfig,
    EnergyRecord,
    FitAccounting,
    RunPlan,
    SimulatedBackend,
    make_backend,
    rank_gpu_ids,
)
from lightning_reuse.energy.accounting import sum_records
from lightning_reuse.energy.summary import epoch_metrics, fit_metrics, fit_params


def _tick_backend() -> SimulatedBackend:
    """1 Wh of CPU per clock read: every figure is an exact integer."""
    ticks = itertools.count()
    return SimulatedBackend(
        cpu_w=3600.0, ram_w=0.0, carbon_intensity_g_per_kwh=1000.0, clock=lambda: float(next(ticks))
    )


def _accounting(**options) -> FitAccounting:
    return FitAccounting(EnergyConfig(**options), backend=_tick_backend())


def _epoch(fit: FitAccounting, plan: RunPlan, n_batches: int = 8, validation: bool = False):
    fit.start_epoch(n_batches)
    for batch_idx in range(n_batches):
        fit.end_batch(batch_idx)
    if validation:
        fit.start_validation()
        fit.end_validation()
    return fit.end_epoch(plan)


def test_warmup_is_replaced_by_the_steady_rate_in_the_prediction() -> None:
    fit = _accounting(warmup_batches=2)
    plan = RunPlan(max_epochs=3)
    fit.start_stage("fit")  # start (0 Wh) and codecarbon's initial flush (1)
    # epoch 1 reads: boundary 2, warm-up end 3, validation 4 -> 5, epoch end 6
    epoch, first = _epoch(fit, plan, validation=True)
    assert epoch.energy_wh == 4.0 and fit.windows["fit-validation"].energy_wh == 1.0
    assert fit.cumulative.energy_wh == 6.0  # set-up (2) + the epoch (4)
    # steady first epoch: (4 - 3) Wh / 6 batches x 8 batches + validation (6 - 4) = 10/3
    steady = 1.0 / 6.0 * 8 + 2.0
    assert first.energy_wh == pytest.approx(6.0 + 2 * steady, rel=1e-12)
    assert first.low_wh < first.energy_wh < first.high_wh
    assert (first.epochs_observed, first.epochs_total) == (1, 3.0)
    # epoch 2: one read at its end (7): 1 Wh; samples are the steady first epoch and this one
    epoch, second = _epoch(fit, plan)
    assert epoch.energy_wh == 1.0 and fit.cumulative.energy_wh == 7.0
    assert second.energy_wh == pytest.approx(7.0 + (1.0 + steady) / 2, rel=1e-12)
    fit.end_stage("fit")  # stop: 8
    assert fit.total.energy_wh == fit.stages["fit"].energy_wh == 8.0
    assert fit.outside_epochs.energy_wh == 3.0  # set-up 2 + tear-down 1
    assert sum_records(fit.epochs).energy_wh + fit.outside_epochs.energy_wh == fit.total.energy_wh
    assert fit.total.co2_g == pytest.approx(fit.total.energy_wh, rel=1e-12)  # 1000 g/kWh


def test_short_first_epoch_has_no_warmup_reading() -> None:
    fit = _accounting(warmup_batches=2)
    fit.start_stage("fit")
    _, pred = _epoch(fit, RunPlan(max_epochs=4), n_batches=4)  # 4 <= 2 x 2 warm-up batches
    assert fit.epochs[0].energy_wh == 1.0  # no warm-up read inside the epoch
    assert pred.energy_wh == pytest.approx(fit.cumulative.energy_wh + 3 * 1.0, rel=1e-12)


def test_resume_adds_to_the_saved_total_and_predicts_from_the_new_epochs() -> None:
    first = _accounting(warmup_batches=0)
    first.start_stage("fit")  # 0, 1
    for _ in range(2):
        _epoch(first, RunPlan(max_epochs=2))  # boundary 2, ends 3 and 4
    first.end_stage("fit")  # 5
    saved = first.state_dict()
    assert saved["total"]["energy_wh"] == 5.0 and len(saved["epochs"]) == 2

    second = _accounting(warmup_batches=0)
    second.start_stage("fit")  # a trainer sets up before it restores the checkpoint
    second.load_state_dict(saved)
    plan = RunPlan(max_epochs=4)
    _, pred = _epoch(second, plan)
    assert second.cumulative.energy_wh == 5.0 + 2.0 + 1.0  # saved + set-up + the epoch
    assert pred.energy_wh == pytest.approx(8.0 + 1.0)  # one epoch left, of the resumed fit's mean
    assert (pred.epochs_observed, pred.epochs_total) == (3, 4.0)
    _, last = _epoch(second, plan)
    assert last.low_wh == last.energy_wh == last.high_wh == 9.0  # nothing left to predict
    second.end_stage("fit")
    assert len(second.epochs) == 4
    assert [e.energy_wh for e in second.epochs[:2]] == [e["energy_wh"] for e in saved["epochs"]]
    assert second.total.energy_wh == saved["total"]["energy_wh"] + second.stages["fit"].energy_wh == 10.0
    assert sum_records(second.epochs).energy_wh + second.outside_epochs.energy_wh == second.total.energy_wh
    assert second.state_dict()["total"]["energy_wh"] == second.total.energy_wh

    second.start_stage("fit")  # a new fit with the same accounting starts from zero
    assert second.epochs == [] and second.total.energy_wh < 10.0


def test_run_plan_length_and_early_stopping() -> None:
    assert RunPlan(max_epochs=-1, max_steps=40).total_epochs(batches_per_epoch=8) == 5.0
    assert RunPlan(max_epochs=-1, max_steps=40, accumulate_grad_batches=2).total_epochs(8) == 10.0
    assert RunPlan(max_epochs=3, max_steps=40).total_epochs(8) == 3.0
    assert RunPlan(max_epochs=None, max_steps=-1).total_epochs(8) is None
    assert RunPlan(patience_left=3).fewest_epochs(observed=2) == 5.0
    assert RunPlan(patience_left=3, min_epochs=7).fewest_epochs(observed=2) == 7.0
    assert RunPlan().fewest_epochs(observed=2) is None

    fit = _accounting(warmup_batches=0)
    fit.start_stage("fit")
    plan = RunPlan(max_epochs=10, patience_left=1)
    _, pred = _epoch(fit, plan)
    # the lower end stops after 2 epochs (1 observed + patience 1); the point runs all 10
    assert pred.low_wh < fit.cumulative.energy_wh + 1.0 + 1e-9 < pred.energy_wh
    assert _epoch(fit, None)[1] is None  # run length unknown: no prediction
    assert len(fit.predictions) == 1
    off = _accounting(predict=False)
    off.start_stage("fit")
    assert _epoch(off, RunPlan(max_epochs=3))[1] is None and off.predictions == []


def test_reduce_sums_over_ranks_and_scales_the_steady_rate() -> None:
    def two_equal_ranks(records: list[EnergyRecord]) -> None:
        for record in records:
            record.cpu_wh, record.energy_wh, record.co2_g = (
                2 * x for x in (record.cpu_wh, record.energy_wh, record.co2_g)
            )

    fit = _accounting(warmup_batches=2)
    fit.start_stage("fit")
    fit.start_epoch(8)
    for batch_idx in range(8):
        fit.end_batch(batch_idx)  # warm-up end at 3
    epoch, pred = fit.end_epoch(RunPlan(max_epochs=2), reduce=two_equal_ranks)  # end at 4
    steady = 2 * (1.0 / 6.0 * 8)  # this rank's steady epoch, scaled to both ranks
    assert epoch.energy_wh == 4.0 and fit.cumulative.energy_wh == 8.0  # (set-up 2 + epoch 2) x 2 ranks
    assert pred.energy_wh == pytest.approx(8.0 + steady, rel=1e-12)
    assert fit.end_stage("fit", reduce=two_equal_ranks).energy_wh == 10.0  # stop at 5, x 2

    idle = FitAccounting(EnergyConfig(), backend="simulated")  # a rank that measures nothing
    idle.start_stage("fit", measuring=False)
    assert idle.end_stage("fit", reduce=lambda records: None).method == {}


def test_interrupt_keeps_the_numbers_so_far() -> None:
    fit = _accounting(warmup_batches=0)
    fit.start_stage("fit")
    _epoch(fit, RunPlan(max_epochs=3))
    fit.start_epoch(8)
    fit.interrupt("fit")
    assert not fit.meter.running and fit.fit_done
    assert fit.status == "interrupted" and fit.total.status == "interrupted"
    assert fit.total.energy_wh > fit.epochs[0].energy_wh
    assert sum_records(fit.epochs).energy_wh + fit.outside_epochs.energy_wh == fit.total.energy_wh


def test_summary_metrics_and_params() -> None:
    fit = _accounting(warmup_batches=0, country_iso_code="FRA")
    fit.start_stage("fit")
    epoch, pred = _epoch(fit, RunPlan(max_epochs=1))
    metrics = epoch_metrics(epoch, fit.cumulative, pred)
    assert metrics["energy/epoch_wh"] == 1.0 and metrics["energy/cumulative_wh"] == 3.0
    assert metrics["energy/predicted_total_wh"] == 3.0
    assert "energy/predicted_total_wh" not in epoch_metrics(epoch, fit.cumulative, None)
    with fit.window("eval"):
        pass
    fit.end_stage("fit")
    totals = fit_metrics(fit)
    assert totals["energy/total_wh"] == fit.total.energy_wh and totals["energy/ok"] == 1.0
    assert totals["energy/window/eval_wh"] == 1.0 and totals["energy/first_prediction_error_pct"] < 0
    params = fit_params(fit)
    assert params["energy/method/cpu"] == "simulated" and params["energy/backend"] == "simulated"
    assert (
        params["energy/country_iso_code"] == "FRA" and params["energy/carbon_intensity_g_per_kwh"] == 56.039
    )


def test_config_is_validated_once_and_passed_through_to_the_backends() -> None:
    config = EnergyConfig(country_iso_code="fra", pue=1.25, measure_power_secs=0.5, ddp_mode="process")
    assert config.country_iso_code == "FRA" and config.intensity == pytest.approx(56.039)
    simulated = make_backend("simulated", config)
    assert (simulated.intensity, simulated.pue, simulated.config) == (config.intensity, 1.25, config)
    codecarbon = make_backend("codecarbon", config, gpu_ids=[1])
    assert codecarbon.tracking_mode == "process" and codecarbon.gpu_ids == [1]
    assert (codecarbon.country_iso_code, codecarbon.measure_power_secs, codecarbon.pue) == ("FRA", 0.5, 1.25)
    idle = make_backend("codecarbon", config, measuring=False)
    assert idle.methods == {"cpu": "not measured", "gpu": "not measured", "ram": "not measured"}
    assert EnergyConfig(country_iso_code=None).intensity == 475.0
    for bad, match in (
        ({"pue": 0.5}, "pue"),
        ({"carbon_intensity_g_per_kwh": math.nan}, r"`carbon_intensity_g_per_kwh` must be >= 0 .*HINT"),
        ({"measure_power_secs": 0.0}, "measure_power_secs"),
        ({"ddp_mode": "rank"}, "ddp_mode"),
        ({"confidence": 1.0}, "confidence"),
        ({"prior_rel_sd": -0.1}, "prior_rel_sd"),
        ({"warmup_batches": -1}, "warmup_batches"),
        ({"country_iso_code": "FR"}, "3-letter"),
    ):
        with pytest.raises(ValueError, match=match):
            EnergyConfig(**bad)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        FitAccounting(config, backend="zeus")


class _FakeNVML(types.SimpleNamespace):
    """Stands in for the NVML library, which this CPU machine does not have (no GPU to read)."""


def _fake_nvml(counters: dict[int, int]) -> _FakeNVML:
    return _FakeNVML(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(counters),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}{h}{h}-uuid".encode(),
        nvmlDeviceGetTotalEnergyConsumption=lambda h: counters[h],
    )


def test_process_mode_counts_each_gpu_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counters = {0: 0, 1: 0, 2: 0}
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(counters))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")  # torch's cuda:0 is physical GPU 2, cuda:1 is GPU 0
    config = EnergyConfig(ddp_mode="process", carbon_intensity_g_per_kwh=0.0)
    meters = []
    for local_rank in (0, 1):  # the rank's root device is cuda:<local_rank>
        accounting = FitAccounting(config, backend="nvml")
        meter = accounting.ensure_meter(True, rank_gpu_ids("process", local_rank=0, cuda_index=local_rank))
        meter.backend.min_interval_s = 0.0
        meter.start()
        meters.append(meter)
    counters[2] += 3_600_000  # 1 Wh on the first rank's GPU
    counters[0] += 7_200_000  # 2 Wh on the second rank's GPU
    counters[1] += 36_000_000  # 10 Wh on a GPU of the machine no rank uses
    per_rank = [m.read().gpu_wh for m in meters]
    assert per_rank == pytest.approx([1.0, 2.0])  # each rank its own GPU: the sum over ranks counts each once
    assert [m.backend.device_indices for m in meters] == [[2], [0]]

    # UUIDs in CUDA_VISIBLE_DEVICES reach NVML as UUIDs; codecarbon gets the same ids.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-111,GPU-222")
    meter = FitAccounting(config, backend="nvml").ensure_meter(True, rank_gpu_ids("process", 0, 1))
    meter.start()
    counters[2] += 3_600_000
    counters[1] += 1_000
    assert meter.stop().gpu_wh == pytest.approx(1.0)
    codecarbon = FitAccounting(EnergyConfig(ddp_mode="process"))
    codecarbon.ensure_meter(True, rank_gpu_ids("process", local_rank=0, cuda_index=0))
    assert codecarbon.meter.backend.gpu_ids == ["GPU-111"]

    # A rank off the GPUs: local rank 0 measures the node's GPUs, the others none; node mode: all.
    cpu_rank1 = FitAccounting(EnergyConfig(ddp_mode="process"), backend="nvml")
    meter = cpu_rank1.ensure_meter(True, rank_gpu_ids("process", local_rank=1, cuda_index=None))
    assert meter.backend.device_indices == [] and meter.backend.methods["gpu"] == "not measured"
    assert rank_gpu_ids("process", local_rank=0, cuda_index=None) is None
    assert rank_gpu_ids("node", local_rank=1, cuda_index=1) is None


def test_a_rank_that_measures_nothing_predicts_the_same_total_as_the_measuring_rank() -> None:
    """ddp_mode="node", local rank > 0: it measures nothing, so its own steady first-epoch estimate is 0. The
    estimate is summed over ranks with the epoch, so both ranks predict the same total (was: the idle rank
    predicted from 0 Wh)."""
    sent: list[list[float]] = []

    def rank0_reduce(records: list[EnergyRecord]) -> None:  # the idle rank adds zeros
        sent.append([r.energy_wh for r in records])

    def rank1_reduce(records: list[EnergyRecord]) -> None:  # receives what rank 0 sent for the same call
        for record, value in zip(records, sent.pop(0)):
            record.energy_wh += value

    plan = RunPlan(max_epochs=4)
    predictions = []
    for measuring, reduce in ((True, rank0_reduce), (False, rank1_reduce)):
        fit = _accounting(warmup_batches=2)
        fit.start_stage("fit", measuring=measuring)
        fit.start_epoch(8)
        for batch_idx in range(8):
            fit.end_batch(batch_idx)
        _, pred = fit.end_epoch(plan, reduce=reduce)
        predictions.append(pred.energy_wh)
    assert predictions[1] == pytest.approx(predictions[0], rel=1e-12) and predictions[0] > 0
