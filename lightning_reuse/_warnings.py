"""Warning classes of lightning_reuse (filterable as one family)."""


class LightningReuseWarning(UserWarning):
    """Base class of every warning lightning_reuse emits."""
