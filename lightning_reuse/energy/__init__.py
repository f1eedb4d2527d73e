"""Framework-free energy and carbon measurement: records, backends, meter, prediction and reports.

Nothing here imports Lightning; codecarbon is imported only when its backend starts.
"""

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "EnergyRecord": ".records",
    "EnergyBackend": ".backends",
    "SimulatedBackend": ".backends",
    "NVMLBackend": ".backends",
    "carbon_intensity": ".backends",
    "CodeCarbonBackend": ".codecarbon_backend",
    "EnergyMeter": ".meter",
    "EnergyMeasurementWarning": ".meter",
    "Prediction": ".predict",
    "predict_total": ".predict",
    "carbontracker_prediction": ".predict",
    "reuse_report": ".report",
    "plot_reuse_report": ".report",
}

__all__ = list(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
