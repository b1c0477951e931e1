"""A run whose weights or validation loss are not finite never ends "completed" (issue 12, point 11).

The per-step check (module.NonFiniteLossError) sees the loss of the weights before each update; the last
update can still make them NaN (``learning_rate=inf`` with one step trains a "completed" model of NaNs).
So the end state is checked too: every parameter, and the last validation loss.
"""

from __future__ import annotations

import math

from core.errors import UserError


class NonFiniteResultError(UserError):
    """Training finished, but its result is not a usable model."""


def check_finite_result(module, val_loss, step: int) -> None:
    import torch

    bad = [name for name, p in module.named_parameters() if not torch.isfinite(p.detach()).all()]
    if bad:
        raise NonFiniteResultError(
            f"after step {step} {len(bad)} weight tensors hold NaN or inf (e.g. {bad[0]}); the run is not usable: "
            "lower training.learning_rate or training.grad_clip and train again")
    if val_loss is not None and not math.isfinite(float(val_loss)):
        raise NonFiniteResultError(
            f"the validation loss after step {step} is {float(val_loss)}; the run is not usable: lower "
            "training.learning_rate and train again")
