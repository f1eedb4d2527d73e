"""Plain torch building blocks (no lightning import): prompts, label mappings, side networks, stitches."""

from typing import TYPE_CHECKING

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
    "read_batch": ".batch",
    "Batch": ".batch",
    "forward_inputs": ".batch",
    "move_to_device": ".batch",
    "output_tensor": ".batch",
    "check_side_input": ".side_network",
    "module_fingerprint": ".fingerprint",
}

if TYPE_CHECKING:
    from lightning_reuse.nn.batch import (
        Batch,
        forward_inputs,
        move_to_device,
        output_tensor,
        read_batch,
        split_batch,
    )
    from lightning_reuse.nn.fingerprint import module_fingerprint
    from lightning_reuse.nn.label_mapping import (
        FrequencyLabelMapping,
        IterativeLabelMapping,
        LabelMapping,
        LinearLabelMapping,
        OneToOneLabelMapping,
        RandomLabelMapping,
        count_matrix,
        greedy_one_to_one,
    )
    from lightning_reuse.nn.layers import capture_output, get_layer, layer_names
    from lightning_reuse.nn.parameter_count import ParameterCount, count_parameters, format_parameter_count
    from lightning_reuse.nn.prompts import FullPrompt, InputTransform, PaddingPrompt
    from lightning_reuse.nn.reprogrammed import ReprogrammedModel
    from lightning_reuse.nn.side_network import (
        AdditiveModel,
        ShapeMismatchError,
        SideConv,
        SideMLP,
        base_fingerprint,
        build_side_network,
        check_side_input,
        freeze_base,
    )
    from lightning_reuse.nn.stitch import (
        AffineStitch,
        ConvStitch,
        DownsampleStitch,
        FlattenLinearStitch,
        LinearStitch,
        PooledDownsampleStitch,
        PooledLinearStitch,
        UpsampleStitch,
        choose_stitch,
        make_stitch,
    )
    from lightning_reuse.nn.stitched import (
        StitchedModel,
        StitchPoint,
        layer_output,
        run_with_replaced_output,
        stitchable_points,
    )

__all__ = [
    "get_layer",
    "layer_names",
    "capture_output",
    "InputTransform",
    "PaddingPrompt",
    "FullPrompt",
    "LabelMapping",
    "OneToOneLabelMapping",
    "RandomLabelMapping",
    "FrequencyLabelMapping",
    "IterativeLabelMapping",
    "LinearLabelMapping",
    "count_matrix",
    "greedy_one_to_one",
    "ReprogrammedModel",
    "ConvStitch",
    "LinearStitch",
    "DownsampleStitch",
    "UpsampleStitch",
    "FlattenLinearStitch",
    "AffineStitch",
    "choose_stitch",
    "make_stitch",
    "StitchedModel",
    "StitchPoint",
    "stitchable_points",
    "layer_output",
    "run_with_replaced_output",
    "SideMLP",
    "SideConv",
    "AdditiveModel",
    "build_side_network",
    "freeze_base",
    "base_fingerprint",
    "ShapeMismatchError",
    "ParameterCount",
    "count_parameters",
    "format_parameter_count",
    "PooledDownsampleStitch",
    "PooledLinearStitch",
    "split_batch",
    "read_batch",
    "Batch",
    "forward_inputs",
    "move_to_device",
    "output_tensor",
    "check_side_input",
    "module_fingerprint",
]
# Sample models moved to :mod:`lightning_reuse.samples`; the old names resolve, with a DeprecationWarning, for one release.
_MOVED: dict[str, str] = {
    "SmallCNN": "lightning_reuse.samples.models",
    "load_efficientnet_lite0": "lightning_reuse.samples.efficientnet",
    "Normalization": "lightning_reuse.samples.efficientnet",
}

__getattr__, __dir__ = attach(__name__, _NAMES, moved=_MOVED)
