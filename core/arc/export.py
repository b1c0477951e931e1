"""``python -m core export RUN --format arc --out DIR``: a run fine-tuned from an Arc folder, as an Arc folder.

What arc-state 0.11.1's ``state tx infer`` needs (ARC_STATE_FORMAT.md section 4, and the Lightning version key,
measured here): a checkpoint with ``state_dict`` (Arc's names, the token table included),
``pytorch-lightning_version`` and ``hyper_parameters`` (plain Python values only, so it also loads
weights-only), ``config.yaml``, ``var_dims.pkl`` with pert_dim and batch_dim, and one-hot maps with plain-str
keys. LoRA is merged into the weights (W + scale B A, peft's own delta). The training data's labels become map
entries at their columns; Arc labels the data did not have keep theirs; the data's control takes the place of
Arc's control label (one label per column). mHC has no counterpart in Arc's architecture, and our own ST model
computes differently (z_control + head, a learned row per label): both are refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import yaml

from core.arc import keys
from core.errors import CheckpointError, DataError


def _merged_state(model) -> dict:
    """Our state dict with LoRA merged and peft's names undone; the label buffers left out."""
    from peft.tuners.lora import LoraLayer

    state = {k: v.detach().clone() for k, v in model.state_dict().items()
             if "lora_" not in k and k not in ("pert_columns", "batch_rows")}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            base = f"{name}.base_layer.weight"
            state[base] = state[base] + module.get_delta_weight("default").detach()
    return {k.replace(".base_layer.", "."): v for k, v in state.items()}


def _maps(model, hp: dict, arc_folder: dict | None):
    """(perturbation label -> column, batch label -> row) for the exported folder."""
    columns = model.pert_columns.tolist()
    pert = {label: columns[row] for label, row in hp["pert_map"].items()}
    taken = set(pert.values())
    for label, column in (arc_folder or {}).get("pert_map", {}).items():
        if column not in taken:
            pert[label] = column
    batches = {}
    if model.batch_embedding is not None:
        rows = model.batch_rows.tolist() if model.batch_rows is not None else []
        batches = {label: rows[i] for label, i in hp.get("batch_map", {}).items() if rows}
        taken = set(batches.values())
        for label, row in (arc_folder or {}).get("batch_map", {}).items():
            if row not in taken:
                batches[label] = row
    return pert, batches


def _onehot(columns: dict[str, int], dim: int) -> dict[str, torch.Tensor]:
    return {label: torch.nn.functional.one_hot(torch.tensor(c), dim).float() for label, c in sorted(columns.items())}


def _hparams(spec, embed_key: str | None, control: str) -> dict:
    backbone_kwargs = dict(spec.backbone_kwargs)
    vocab = int(backbone_kwargs.get("vocab_size", 32000))
    gene_dim = int(spec.decoder_cfg["gene_dim"]) if spec.decoder_cfg else spec.output_dim
    return {"input_dim": spec.input_dim, "hidden_dim": spec.hidden_dim, "output_dim": spec.output_dim,
            "pert_dim": spec.pert_dim, "batch_dim": spec.batch_dim, "gene_dim": gene_dim, "hvg_dim": gene_dim,
            "embed_key": embed_key, "output_space": spec.output_space,
            "transformer_backbone_key": "GPT2" if spec.backbone == "gpt2" else spec.backbone,
            "transformer_backbone_kwargs": backbone_kwargs, "cell_set_len": spec.cell_set_len,
            "n_encoder_layers": spec.n_encoder_layers, "n_decoder_layers": spec.n_decoder_layers,
            "activation": spec.activation, "use_basal_projection": spec.use_basal_projection,
            "batch_encoder": spec.batch_dim is not None, "decoder_cfg": spec.decoder_cfg,
            "gene_decoder_bool": spec.decoder_cfg is not None, "predict_residual": spec.predict_residual,
            "dropout": spec.dropout, "control_pert": control, "lora": {"enable": False}}, vocab


def export_arc(run_dir, out) -> dict:
    """Write the Arc folder; returns what was written. Refuses mHC runs and runs not fine-tuned from Arc."""
    from core.infer import load_model, resolve_checkpoint

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} exists and is not an empty folder; give a new folder (nothing is overwritten)")
    model, cfg, hp = load_model(run_dir, "cpu")
    if cfg.model.kwargs.use_mhc:
        raise CheckpointError("this run uses mHC, which Arc State's architecture cannot express (it has one residual "
                              "stream); export a run trained without mHC")
    if "arc_spec" not in hp:
        raise CheckpointError("this run is our own ST model (z_control + head, a learned row per label), which Arc "
                              "State's architecture cannot express; export a run fine-tuned from an Arc folder")
    spec = model.spec
    embed_key = cfg.data.kwargs.embed_key
    if (embed_key in (None, "X_hvg")) != (spec.embed_key in (None, "X_hvg")):
        embed_key = spec.embed_key  # Arc's output ReLU follows embed_key; keep the rule the model trained with
    arc_folder = None
    if hp.get("arc_folder") and Path(hp["arc_folder"]).is_dir():
        from core.arc.folder import read_arc_folder

        source = read_arc_folder(hp["arc_folder"])
        arc_folder = {"pert_map": {k: v for k, v in source.pert_map.items() if k != source.control},
                      "batch_map": source.batch_map or {}}
    pert, batches = _maps(model, hp, arc_folder)
    hparams, vocab = _hparams(spec, embed_key, hp["control"])
    state = {}
    for ours, value in _merged_state(model).items():
        arc = keys.ours_to_arc(ours)
        if arc is None or keys.is_token_table(arc):
            continue
        state[arc] = value
    table = "transformer_backbone.wte.weight" if spec.backbone == "gpt2" else "transformer_backbone.embed_tokens.weight"
    state[table] = keys.zero_token_table(spec.hidden_dim, vocab)

    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    import lightning

    # Lightning's load_from_checkpoint reads the version key (a KeyError without it, measured with 0.11.1)
    torch.save({"state_dict": state, "hyper_parameters": hparams, "pytorch-lightning_version": lightning.__version__},
               out / "checkpoints" / "final.ckpt")
    data_kwargs = {"embed_key": embed_key, "pert_col": cfg.data.kwargs.pert_col, "control_pert": hp["control"],
                   "cell_type_key": cfg.data.kwargs.cell_type_key, "batch_col": cfg.data.kwargs.batch_col,
                   "output_space": spec.output_space}
    (out / "config.yaml").write_text(yaml.safe_dump({"data": {"kwargs": data_kwargs}}, sort_keys=False))
    with (out / "var_dims.pkl").open("wb") as fh:
        pickle.dump({"input_dim": spec.input_dim, "output_dim": spec.output_dim, "pert_dim": spec.pert_dim,
                     "batch_dim": spec.batch_dim, "pert_names": sorted(pert)}, fh)
    torch.save(_onehot(pert, spec.pert_dim), out / "pert_onehot_map.pt")
    if batches:
        torch.save(_onehot(batches, spec.batch_dim), out / "batch_onehot_map.torch")
    return {"folder": str(out), "checkpoint": str(resolve_checkpoint(run_dir)), "perturbations": pert,
            "batches": batches, "tensors": len(state)}
