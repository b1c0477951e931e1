"""What a run's held-out cells measure, in words, from its (resolved) ``data.kwargs.split``.

    fraction   held-out cells of the same mice and cell types: interpolation within animals seen in training
    batch      held-out mice (one per condition for test): generalisation to new animals
    cell_type  a held-out cell type (``data.kwargs.holdout``), whose burn cells training never saw: transfer
               of the burn response to a new cell type, predicted from that type's control cells

The split itself is made in ``core.training.data.make_split``; this module only names it (training warns with
it, evaluation reports it, the app shows it).
"""

from __future__ import annotations

DESIGNS = {
    "fraction": "held-out cells (interpolation: the same mice and cell types as training)",
    "batch": "held-out mice (generalisation to animals not seen in training)",
    "cell_type": "held-out cell type (transfer of the burn response to a cell type not seen burned in training)",
}
INTERPOLATION_WARNING = (
    "held-out cells come from the same mice as the training cells, so these numbers measure interpolation, "
    "not generalisation to new mice; train with data.kwargs.split=batch (held-out mice) for that"
)


def describe_design(data_kwargs: dict) -> dict:
    """{"split", "holdout", "description", "warnings"} for a run's data.kwargs (a dict, as in config.yaml)."""
    split = data_kwargs.get("split") or "fraction"
    holdout = data_kwargs.get("holdout")
    description = DESIGNS.get(split, f"split '{split}'")
    if split == "cell_type" and holdout:
        description = f"{description}: {holdout}"
    warnings = [INTERPOLATION_WARNING] if split == "fraction" else []
    return {"split": split, "holdout": holdout, "description": description, "warnings": warnings}
