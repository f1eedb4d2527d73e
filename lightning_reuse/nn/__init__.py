"""Plain torch building blocks (no lightning import): prompts, label mappings, side networks, stitches."""

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "get_layer": ".layers",
    "layer_names": ".layers",
    "capture_output": ".layers",
    "InputTransform": ".prompts",
    "PaddingPrompt": ".prompts",
    "FullPrompt": ".prompts",
    "LabelMapping": ".label_mapping",
    "OneToOneLabelMapping": ".label_mapping",
    "RandomLabelMapping": ".label_mapping",
    "FrequencyLabelMapping": ".label_mapping",
    "IterativeLabelMapping": ".label_mapping",
    "LinearLabelMapping": ".label_mapping",
    "count_matrix": ".label_mapping",
    "greedy_one_to_one": ".label_mapping",
    "ReprogrammedModel": ".reprogrammed",
    "ConvStitch": ".stitch",
    "LinearStitch": ".stitch",
    "DownsampleStitch": ".stitch",
    "UpsampleStitch": ".stitch",
    "FlattenLinearStitch": ".stitch",
    "AffineStitch": ".stitch",
    "choose_stitch": ".stitch",
    "make_stitch": ".stitch",
    "StitchedModel": ".stitched",
    "StitchPoint": ".stitched",
    "stitchable_points": ".stitched",
    "layer_output": ".stitched",
    "run_with_replaced_output": ".stitched",
    "SideMLP": ".side_network",
    "SideConv": ".side_network",
    "AdditiveModel": ".side_network",
    "build_side_network": ".side_network",
    "freeze_base": ".side_network",
    "base_fingerprint": ".side_network",
    "ShapeMismatchError": ".side_network",
    "ParameterCount": ".parameter_count",
    "count_parameters": ".parameter_count",
    "format_parameter_count": ".parameter_count",
    "PooledDownsampleStitch": ".stitch",
    "PooledLinearStitch": ".stitch",
    "split_batch": ".batch",
    "module_fingerprint": ".fingerprint",
}

__all__ = list(_NAMES)
# Sample models moved to :mod:`lightning_reuse.samples`; the old names resolve, with a DeprecationWarning, for one release.
_MOVED: dict[str, str] = {
    "SmallCNN": "lightning_reuse.samples.models",
    "load_efficientnet_lite0": "lightning_reuse.samples.efficientnet",
    "Normalization": "lightning_reuse.samples.efficientnet",
}

__getattr__, __dir__ = attach(__name__, _NAMES, moved=_MOVED)
