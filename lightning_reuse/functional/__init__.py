"""Pure torch maths (no lightning import): RESQUE statistics, NTK spectra, FTC bounds, ...."""

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "resque_dist": ".resque",
    "resque_task": ".resque",
    "pool_features": ".resque",
    "least_squares_affine": ".stitching",
    "linear_cka": ".stitching",
    "representation_mse": ".stitching",
    "channel_rows": ".stitching",
    "fine_tuning_capacity": ".ftc",
    "max_changed": ".ftc",
    "depth2_construction": ".ftc",
    "depth3_construction": ".ftc",
    "project_to_line": ".ftc",
    "ftc_neurons": ".ftc",
}

__all__ = list(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
