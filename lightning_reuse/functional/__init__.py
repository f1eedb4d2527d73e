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
    "ftc_widths": ".ftc",
    "empirical_ntk": ".ntk",
    "ntk_matrix": ".ntk",
    "ntk_vector_product": ".ntk",
    "prompt_jacobian": ".ntk",
    "PromptJacobian": ".ntk",
    "features_to_kernel": ".ntk",
    "topk_eigh": ".ntk",
    "assert_per_sample": ".ntk",
    "screening_scores": ".ntk_scores",
    "screen_reprogramming": ".ntk_scores",
    "ScreeningScores": ".ntk_scores",
    "ScreeningThresholds": ".ntk_scores",
    "source_guard": ".ntk_scores",
    "stratified_subset": ".ntk_scores",
    "residual_at_init": ".ntk_scores",
    "decide": ".ntk_scores",
}

__all__ = list(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
