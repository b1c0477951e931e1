"""The State Transition model (``state_transition``) and how it is built from scratch or from a base checkpoint,
with LoRA and mHC (``build``). Training the demo base lives in ``core.training.demo_base``: the model package
never trains."""
