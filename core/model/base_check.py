"""A fine-tune must start from the base it names (issue 12, point 8).

A LLaMA base whose config says gpt2 builds a GPT-2 model, and 38 of its 46 tensors find no place in it: the
backbone starts random and the run still "completes" as a fine-tune. Every weight of the fine-tuning model
except the perturbation and batch tables (rebuilt by label) must come from the base, and every base tensor
must find its place, unless the user opts in with ``model.allow_partial_base=true``.
"""

from __future__ import annotations

from core.errors import CheckpointError

# Rebuilt row by row from labels (load_base_weights), so they may legitimately be new or dropped.
_TABLES = ("pert_embedding.weight", "batch_embedding.weight")


def check_base_coverage(report: dict, path, allow_partial: bool) -> None:
    """CheckpointError when the base did not fill the model, from ``load_base_weights``'s report."""
    skipped = [k for k in report["skipped"] if k not in _TABLES]
    random = [k for k in report["initialised"] if k not in _TABLES]
    if allow_partial or not (skipped or random):
        return
    example = (skipped or random)[0]
    why = report.get("skipped_reasons", {}).get(example, "not in the base")
    raise CheckpointError(
        f"the base {path} does not fit this model: {len(skipped)} of its tensors were skipped and {len(random)} "
        f"of the model's would start random (e.g. {example}: {why}); is its backbone or size what its config "
        "says? Set model.allow_partial_base=true to fine-tune anyway")
