"""``model.init_from=<Arc State folder>``: fine-tune an imported Arc model on the user's data.

Order, and why: the Arc weights are loaded FIRST into the plain Arc architecture (every tensor, or an error),
then LoRA adapters are injected, then mHC wraps the backbone's blocks. Arc's own ``init_from`` applies LoRA before
loading, so none of its backbone tensors load (ARC_STATE_FORMAT.md §7.1); here the load report lists each one.

Perturbations keep their pretrained one-hot columns: a data label Arc knows uses its column, the data's control
uses Arc's control column (by role: sham <- control), and a label Arc never saw (burn) gets a NEW column after
the pretrained ones, its first-layer weights starting at the mean of Arc's non-control columns, trainable.
Arc instead rebuilds the map from the new data sorted by name, so a new drug takes an old drug's column and
inherits its weights. Batches: known labels keep their rows, new ones get new rows starting at zero.
A gene-space model's decoder trains with Arc's decoder loss (the distributional loss between its decoded
prediction and the perturbed cells' obsm['X_hvg'], weight ``model.kwargs.decoder_weight``, Arc's name; 0 keeps it
frozen); Δz for velocity alignment is latent minus control latent, the space Arc's transformer predicts in.
"""

from __future__ import annotations

import torch

from core.arc.runtime import find_arc_folder, load_arc
from core.errors import CheckpointError


def _columns(folder, pert_map: dict[str, int], control: str, first_new: int) -> tuple[list[int], list[str]]:
    columns, new = [0] * len(pert_map), []
    for label, row in sorted(pert_map.items(), key=lambda kv: kv[1]):
        source = folder.control if label == control else label
        if source in folder.pert_map:
            columns[row] = folder.pert_map[source]
        else:
            columns[row] = first_new + len(new)
            new.append(label)
    return columns, new


def _batch_rows(model, folder, batch_map: dict[str, int], notes: list[str]) -> list[int] | None:
    if not batch_map:
        if model.batch_embedding is not None:
            notes.append("the Arc model has a batch encoder but this run uses no batch covariate "
                         "(model.kwargs.use_batch=false): no batch term")
        return None
    if model.batch_embedding is None:
        notes.append("the Arc model has no batch encoder: the batch covariate is ignored")
        return None
    arc_rows, rows, new = folder.batch_map or {}, [0] * len(batch_map), []
    for label, i in batch_map.items():
        if label in arc_rows:
            rows[i] = arc_rows[label]
        else:
            rows[i] = model.spec.batch_dim + len(new)
            new.append(label)
    if new:
        model.add_batch_rows(len(new))
        notes.append(f"batches {sorted(new)} are new to the Arc model: each has a new batch row, zero at first")
    return rows + [model.spec.batch_dim]  # the data's "unknown batch" index -> no batch term


def build_from_arc(cfg, embed_dim: int, pert_map: dict[str, int], control: str, batch_map: dict[str, int] | None):
    """(model, load report, notes) for training, as core.model.build.build_for_training returns them."""
    from core.model.build import add_adapters

    folder_path, checkpoint = find_arc_folder(cfg.model.init_from)
    model, folder, arc_report = load_arc(folder_path, checkpoint)
    model.train()  # the importer hands it over in eval mode, for inference
    spec = model.spec
    if embed_dim != spec.input_dim:
        raise CheckpointError(f"the Arc model takes {spec.input_dim}-d input (trained on '{spec.embed_key}') but the "
                              f"data's embedding has {embed_dim} dimensions; choose the embedding it was trained on")
    if spec.output_dim != spec.input_dim:
        raise CheckpointError(f"the Arc model maps {spec.input_dim}-d input to {spec.output_dim}-d output; fine-tuning "
                              "here trains shifts in the input space, so only models with output_dim = input_dim")
    notes = []
    with torch.no_grad():
        columns, new = _columns(folder, pert_map, control, spec.pert_dim)
        if new:
            weight = model.pert_encoder[0].weight
            pretrained = [c for label, c in folder.pert_map.items() if label != folder.control]
            init = weight[:, pretrained].mean(1) if pretrained else torch.zeros(weight.shape[0])
            model.add_perturbation_columns(len(new), init)
            notes.append(f"perturbations {new} are new to the Arc model: each has a new one-hot column "
                         f"({', '.join(str(c) for c in columns if c >= len(folder.pert_map))}) after its "
                         f"{len(folder.pert_map)} pretrained ones, initialised at their mean, trainable")
        model.use_data_labels(columns, _batch_rows(model, folder, batch_map or {}, notes))
    notes.append(f"control '{control}' takes the Arc control column '{folder.control}'")

    m = cfg.model.kwargs
    bk = model.backbone.config
    m.backbone, m.hidden_dim = spec.backbone, spec.hidden_dim
    m.n_layers = int(getattr(bk, "num_hidden_layers", getattr(bk, "n_layer", m.n_layers)))
    m.n_heads = int(getattr(bk, "num_attention_heads", getattr(bk, "n_head", m.n_heads)))
    n_backbone = sum(1 for k in arc_report["loaded"] if k.startswith("transformer_backbone."))
    notes.append(f"Arc folder {folder.path}: {len(arc_report['loaded'])} tensors loaded ({n_backbone} of them the "
                 f"backbone's), {len(arc_report['dropped'])} dropped (the token table)")
    before = set(model.state_dict())
    notes += add_adapters(model, cfg, lora=m.lora.enable)
    if model.gene_decoder is not None:
        train_decoder = m.decoder_weight > 0
        model.gene_decoder.requires_grad_(train_decoder)
        notes.append("the gene decoder trains with Arc's decoder loss (model.kwargs.decoder_weight)" if train_decoder
                     else "the gene decoder is kept frozen (model.kwargs.decoder_weight=0)")
    added = sorted(set(model.state_dict()) - before)
    model.checkpoint_hparams = {"arc_spec": spec.to_dict(), "arc_folder": str(folder.path)}
    report = {"loaded": [arc_report["loaded"][k] for k in arc_report["loaded"]], "skipped": [],
              "rebuilt": (["pert_encoder.0.weight"] if new else []) + ["pert_columns"],
              "initialised": [k for k in added if any(s in k for s in ("lora_", ".hc.", "head_logits"))],
              "new_perturbations": new, "control_mapped": {control: folder.control}, "base": str(folder.path),
              "arc": arc_report}
    return model, report, notes


def rebuild_for_checkpoint(cfg, hp: dict):
    """The fine-tuned Arc model's skeleton (architecture, label buffers, adapters) for load_state_dict."""
    from core.model.arc_transition import ArcSpec, ArcTransitionModel
    from core.model.build import add_adapters

    model = ArcTransitionModel(ArcSpec(**hp["arc_spec"]))
    batch_rows = [0] * (len(hp["batch_map"]) + 1) if hp.get("batch_map") and model.batch_embedding is not None \
        else None
    model.use_data_labels([0] * len(hp["pert_map"]), batch_rows)
    add_adapters(model, cfg, bool(hp.get("lora_applied", False)))
    return model


def build_for_training_any(cfg, embed_dim: int, pert_map: dict[str, int], control: str,
                           batch_map: dict[str, int] | None = None, base_path: str | None = None,
                           embedding: dict | None = None):
    """The trainer's model builder: an Arc State folder as ``model.init_from`` is imported here, anything else
    (no base, a checkpoint of ours, the demo base) is core.model.build's."""
    from core.model.build import build_for_training

    if cfg.model.init_from and find_arc_folder(cfg.model.init_from):
        return build_from_arc(cfg, embed_dim, pert_map, control, batch_map)
    return build_for_training(cfg, embed_dim, pert_map, control, batch_map, base_path=base_path,
                              embedding=embedding)


def skeleton_for(ckpt: dict):
    """The architecture builder for a checkpoint: Arc's for a run fine-tuned from an Arc folder, else None (ours)."""
    return rebuild_for_checkpoint if "arc_spec" in (ckpt.get("hyper_parameters") or {}) else None
