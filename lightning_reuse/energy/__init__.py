"""Framework-free energy and carbon measurement: configuration, records, backends, meter, fit accounting,
prediction and reports.

Nothing here imports Lightning; codecarbon is imported only when its backend starts.
"""

from typing import TYPE_CHECKING

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name; the TYPE_CHECKING block mirrors it.
_NAMES: dict[str, str] = {
    "EnergyConfig": ".config",
    "carbon_intensity": ".config",
    "EnergyRecord": ".records",
    "EnergyBackend": ".backends",
    "SimulatedBackend": ".backends",
    "NVMLBackend": ".backends",
    "physical_gpu_id": ".backends",
    "CodeCarbonBackend": ".codecarbon_backend",
    "make_backend": ".selection",
    "rank_gpu_ids": ".selection",
    "EnergyMeter": ".meter",
    "EnergyMeasurementWarning": ".records",
    "FitAccounting": ".accounting",
    "RunPlan": ".accounting",
    "BudgetGuard": ".budget",
    "BudgetDecision": ".budget",
    "EnergyBudgetWarning": ".budget",
    "measurement_window": ".windows",
    "Prediction": ".predict",
    "predict_total": ".predict",
    "carbontracker_prediction": ".predict",
    "reuse_report": ".report",
    "plot_reuse_report": ".report",
    "RetrainingLedger": ".ledger",
    "CostEstimate": ".ledger",
}

if TYPE_CHECKING:
    from lightning_reuse.energy.accounting import FitAccounting, RunPlan
    from lightning_reuse.energy.backends import EnergyBackend, NVMLBackend, SimulatedBackend, physical_gpu_id
    from lightning_reuse.energy.budget import BudgetDecision, BudgetGuard, EnergyBudgetWarning
    from lightning_reuse.energy.codecarbon_backend import CodeCarbonBackend
    from lightning_reuse.energy.config import EnergyConfig, carbon_intensity
    from lightning_reuse.energy.ledger import CostEstimate, RetrainingLedger
    from lightning_reuse.energy.meter import EnergyMeter
    from lightning_reuse.energy.predict import Prediction, carbontracker_prediction, predict_total
    from lightning_reuse.energy.records import EnergyMeasurementWarning, EnergyRecord
    from lightning_reuse.energy.report import plot_reuse_report, reuse_report
    from lightning_reuse.energy.selection import make_backend, rank_gpu_ids
    from lightning_reuse.energy.windows import measurement_window

__all__ = [
    "EnergyConfig",
    "carbon_intensity",
    "EnergyRecord",
    "EnergyBackend",
    "SimulatedBackend",
    "NVMLBackend",
    "physical_gpu_id",
    "CodeCarbonBackend",
    "make_backend",
    "rank_gpu_ids",
    "EnergyMeter",
    "EnergyMeasurementWarning",
    "FitAccounting",
    "RunPlan",
    "BudgetGuard",
    "BudgetDecision",
    "EnergyBudgetWarning",
    "measurement_window",
    "Prediction",
    "predict_total",
    "carbontracker_prediction",
    "reuse_report",
    "plot_reuse_report",
    "RetrainingLedger",
    "CostEstimate",
]
__getattr__, __dir__ = attach(__name__, _NAMES)
