"""Pure torch maths (no lightning import): RESQUE statistics, NTK spectra, FTC bounds, ...."""

from typing import TYPE_CHECKING

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name; the TYPE_CHECKING block mirrors it.
_NAMES: dict[str, str] = {
    "resque_dist": ".resque",
    "resque_task": ".resque",
    "pool_features": ".resque",
    "class_specificity": ".resque",
    "RESQUEConfig": ".resque_config",
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
    "ScreeningConfig": ".ntk_config",
    "ScreeningThresholds": ".ntk_config",
    "check_inputs": ".ntk_config",
    "check_labels": ".ntk_config",
    "degenerate_reasons": ".ntk_config",
    "screening_scores": ".ntk_scores",
    "screen_reprogramming": ".ntk_scores",
    "ScreeningScores": ".ntk_scores",
    "source_guard": ".ntk_scores",
    "stratified_subset": ".ntk_scores",
    "residual_at_init": ".ntk_scores",
    "decide": ".ntk_scores",
    "logme": ".transferability",
    "leep": ".transferability",
    "nce": ".transferability",
    "h_score": ".transferability",
    "knn_accuracy": ".probe",
    "linear_probe_accuracy": ".probe",
    "probe_folds": ".probe",
}

if TYPE_CHECKING:
    from lightning_reuse.functional.ftc import (
        depth2_construction,
        depth3_construction,
        fine_tuning_capacity,
        ftc_neurons,
        ftc_widths,
        max_changed,
        project_to_line,
    )
    from lightning_reuse.functional.ntk import (
        PromptJacobian,
        assert_per_sample,
        empirical_ntk,
        features_to_kernel,
        ntk_matrix,
        ntk_vector_product,
        prompt_jacobian,
        topk_eigh,
    )
    from lightning_reuse.functional.ntk_config import (
        ScreeningConfig,
        ScreeningThresholds,
        check_inputs,
        check_labels,
        degenerate_reasons,
    )
    from lightning_reuse.functional.ntk_scores import (
        ScreeningScores,
        decide,
        residual_at_init,
        screen_reprogramming,
        screening_scores,
        source_guard,
        stratified_subset,
    )
    from lightning_reuse.functional.probe import knn_accuracy, linear_probe_accuracy, probe_folds
    from lightning_reuse.functional.resque import class_specificity, pool_features, resque_dist, resque_task
    from lightning_reuse.functional.resque_config import RESQUEConfig
    from lightning_reuse.functional.stitching import (
        channel_rows,
        least_squares_affine,
        linear_cka,
        representation_mse,
    )
    from lightning_reuse.functional.transferability import h_score, leep, logme, nce

__all__ = [
    "resque_dist",
    "resque_task",
    "pool_features",
    "class_specificity",
    "RESQUEConfig",
    "least_squares_affine",
    "linear_cka",
    "representation_mse",
    "channel_rows",
    "fine_tuning_capacity",
    "max_changed",
    "depth2_construction",
    "depth3_construction",
    "project_to_line",
    "ftc_neurons",
    "ftc_widths",
    "empirical_ntk",
    "ntk_matrix",
    "ntk_vector_product",
    "prompt_jacobian",
    "PromptJacobian",
    "features_to_kernel",
    "topk_eigh",
    "assert_per_sample",
    "ScreeningConfig",
    "ScreeningThresholds",
    "check_inputs",
    "check_labels",
    "degenerate_reasons",
    "screening_scores",
    "screen_reprogramming",
    "ScreeningScores",
    "source_guard",
    "stratified_subset",
    "residual_at_init",
    "decide",
    "logme",
    "leep",
    "nce",
    "h_score",
    "knn_accuracy",
    "linear_probe_accuracy",
    "probe_folds",
]
__getattr__, __dir__ = attach(__name__, _NAMES)
