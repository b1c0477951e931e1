"""The State Transition model (``state_transition``), how it is built from scratch or from a base with LoRA and
mHC (``build``), and the demo base model pretrained on the demo atlas (``base``)."""


def demo_base_checkpoint() -> str:
    """Path of the demo base model (pretrained on the demo atlas once, then cached in data/cache/)."""
    from core.model.base import demo_base_checkpoint as _build

    return _build()
