"""Plain torch building blocks (no lightning import): prompts, label mappings, side networks, stitches."""

from lightning_reuse._lazy import attach

# Public name -> defining module (relative). Add one line per public name.
_NAMES: dict[str, str] = {
    "SmallCNN": ".small_cnn",
    "get_layer": ".layers",
    "layer_names": ".layers",
    "capture_output": ".layers",
}

__all__ = list(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
