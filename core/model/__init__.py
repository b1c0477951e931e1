"""The State Transition model and how it is built (scratch, base + LoRA + mHC) and the demo base."""


def demo_base_checkpoint() -> str:
    """Path of the demo base model (pretrained on the demo atlas once, then cached)."""
    from core.model.base import demo_base_checkpoint as _build

    return _build()
