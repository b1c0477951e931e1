"""Building an ST model from a config: from scratch, or from a base checkpoint, then LoRA, then mHC.

Order matters and is the point of this file: the base weights are loaded FIRST into the plain model, then
LoRA adapters are injected (peft), then mHC wraps the backbone's blocks. Arc State applies LoRA before loading,
so the wrapped names no longer match and none of its backbone tensors load. Every tensor's fate goes into a
load report: loaded, skipped (with the reason), rebuilt (a perturbation table that gained new labels), or
initialised (LoRA and mHC parameters, which the base never had).

Checkpoint hyper-parameters (``hparams``, saved by Lightning in every checkpoint; plain values only so that
``torch.load(weights_only=True)`` reads them): config (the resolved config as a dict), pert_map (label -> row),
control (the control label), embed_dim, batch_map (label -> row, {} without a batch covariate), lora_applied,
embedding (the embedding's fingerprint, ``core.data.fingerprint``; absent in older checkpoints).
"""

from __future__ import annotations

import torch

from core.config import Config, config_from_dict
from core.config_limits import check_model_memory
from core.errors import CheckpointError, ConfigError
from core.model.base_check import check_base_coverage
from core.model.state_transition import StateTransitionModel

LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
# Parameter-name pieces that only exist once LoRA or mHC has been added.
ADAPTER_MARKERS = ("lora_", ".hc.", "head_logits", ".block.")
SIZE_KEYS = ("hidden_dim", "n_layers", "n_heads", "backbone")


def plain_model(cfg: Config, embed_dim: int, n_perts: int, n_batches: int = 0) -> StateTransitionModel:
    m = cfg.model.kwargs
    return StateTransitionModel(embed_dim, n_perts, m.hidden_dim, m.n_layers, m.n_heads, m.backbone, n_batches)


def add_adapters(model: StateTransitionModel, cfg: Config, lora: bool) -> list[str]:
    """Inject LoRA (when ``lora``) then mHC into the backbone, in place; returns notes for the log.

    Under LoRA the backbone's own weights are frozen; the encoders and head stay trainable when
    ``model.kwargs.train_encoders`` (the perturbation table always, so new labels can learn); mHC's mapping
    parameters always train.
    """
    from core.mhc.layer import apply_mhc_to_transformer, mhc_parameters

    m, notes = cfg.model.kwargs, []
    if lora:
        from peft import LoraConfig, inject_adapter_in_model

        targets = m.lora.target_modules or LORA_TARGETS[m.backbone]
        present = {name.rsplit(".", 1)[-1] for name, _ in model.backbone.named_modules()}
        missing = [t for t in targets if t not in present]
        if missing:
            raise ConfigError(f"model.kwargs.lora.target_modules {missing} are not modules of the {m.backbone} "
                              f"backbone; choose from {LORA_TARGETS[m.backbone]}")
        lora_cfg = LoraConfig(r=m.lora.r, lora_alpha=m.lora.alpha, lora_dropout=m.lora.dropout,
                              target_modules=targets, fan_in_fan_out=(m.backbone == "gpt2"))
        inject_adapter_in_model(lora_cfg, model.backbone)
        for name, p in model.backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        heads = [model.basal_encoder, model.head] + ([model.batch_embedding] if model.batch_embedding else [])
        for module in heads:
            module.requires_grad_(m.train_encoders)
        # the perturbation table (an Arc model's one-hot encoder) always trains, so new labels can learn
        (model.pert_embedding if hasattr(model, "pert_embedding") else model.pert_encoder).requires_grad_(True)
        notes.append(f"LoRA r={m.lora.r} alpha={m.lora.alpha} on {targets}; backbone weights frozen, encoders and "
                     f"head {'trainable' if m.train_encoders else 'frozen'}")
    if m.use_mhc:
        apply_mhc_to_transformer(model.backbone, m.hidden_dim, m.mhc)
        for p in mhc_parameters(model.backbone):
            p.requires_grad_(True)
        notes.append(f"mHC n={m.mhc.n_streams} ({m.mhc.projection}, {'dynamic' if m.mhc.dynamic else 'static'}) "
                     f"on layers {m.mhc.layer_indices if m.mhc.layer_indices is not None else 'all'}")
    return notes


def read_checkpoint(ckpt: dict, path) -> tuple[Config, dict, dict]:
    """(config, hyper-parameters, model state dict without the Lightning ``model.`` prefix)."""
    try:
        hp = dict(ckpt["hyper_parameters"])
        cfg = config_from_dict(hp["config"])
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        hp["pert_map"], hp["control"], hp["embed_dim"] = dict(hp["pert_map"]), hp["control"], int(hp["embed_dim"])
        hp.setdefault("batch_map", {})
    except (KeyError, TypeError, AttributeError, ValueError) as err:  # missing or malformed metadata
        raise CheckpointError(f"{path} is not a State Transition checkpoint of this project "
                              f"({type(err).__name__}: {str(err)[:120]})") from err
    except ConfigError as err:
        raise CheckpointError(f"{path} has a config this version cannot read ({err})") from err
    return cfg, hp, state


def load_base_weights(model: StateTransitionModel, base_state: dict, base_hp: dict, pert_map: dict[str, int],
                      control: str, batch_map: dict[str, int] | None = None) -> dict:
    """Copy the base's tensors into the plain ``model`` (before any adapter) and report each one's fate.

    Perturbation rows are matched by label, the control by role (the data's control label takes the base's
    control row, e.g. sham <- control). A label the base never saw (burn for a base trained on other
    perturbations) gets a new row, initialised at the mean of the base's perturbation rows and trained: it
    never silently falls back to the control row. Batch rows are matched by label; new batches start at zero.
    """
    if any(marker in k for k in base_state for marker in ADAPTER_MARKERS):
        raise CheckpointError("the base checkpoint already contains LoRA or mHC; fine-tune from a pretrained base "
                              "(a run trained from scratch), not from a fine-tuned run")
    own = model.state_dict()
    report = {"loaded": [], "skipped": [], "skipped_reasons": {}, "rebuilt": [], "initialised": [],
              "new_perturbations": [], "control_mapped": {}, "new_batches": []}
    tables = {"pert_embedding.weight", "batch_embedding.weight"}
    with torch.no_grad():
        for key, value in base_state.items():
            if key in tables:
                continue
            if key not in own:
                report["skipped"].append(key)
                report["skipped_reasons"][key] = "not in the fine-tuning model"
            elif own[key].shape != value.shape:
                report["skipped"].append(key)
                report["skipped_reasons"][key] = f"shape {tuple(value.shape)} in the base, {tuple(own[key].shape)} here"
            else:
                own[key].copy_(value)
                report["loaded"].append(key)

        rows, base_map, base_control = base_state["pert_embedding.weight"], base_hp["pert_map"], base_hp["control"]
        perturbed_rows = [i for label, i in base_map.items() if label != base_control]
        mean_row = rows[perturbed_rows].mean(0) if perturbed_rows else torch.zeros_like(rows[0])
        for label, i in pert_map.items():
            source = base_control if label == control else label
            if source in base_map:
                own["pert_embedding.weight"][i] = rows[base_map[source]]
            else:
                own["pert_embedding.weight"][i] = mean_row
                report["new_perturbations"].append(label)
        report["control_mapped"] = {control: base_control}
        (report["rebuilt"] if report["new_perturbations"] else report["loaded"]).append("pert_embedding.weight")

        if "batch_embedding.weight" in own:
            base_batches = base_hp.get("batch_map") or {}
            if "batch_embedding.weight" in base_state and base_batches:
                for label, i in (batch_map or {}).items():
                    if label in base_batches:
                        own["batch_embedding.weight"][i] = base_state["batch_embedding.weight"][base_batches[label]]
                    else:
                        report["new_batches"].append(label)
                report["rebuilt"].append("batch_embedding.weight")
            else:
                report["initialised"].append("batch_embedding.weight")
        elif "batch_embedding.weight" in base_state:
            report["skipped"].append("batch_embedding.weight")
            report["skipped_reasons"]["batch_embedding.weight"] = "no batch covariate in this run"
    for key in sorted(set(own) - set(base_state)):
        if key not in report["initialised"]:
            report["initialised"].append(key)
    model.load_state_dict(own)
    return report


def build_for_training(cfg: Config, embed_dim: int, pert_map: dict[str, int], control: str,
                       batch_map: dict[str, int] | None = None, base_path: str | None = None,
                       embedding: dict | None = None) -> tuple[StateTransitionModel, dict, list[str]]:
    """The model to train: from scratch, or from the base checkpoint ``base_path`` (``model.init_from`` resolved
    by the caller: "demo" is a checkpoint the trainer builds), base weights first, then LoRA, then mHC.
    Returns the model, the load report and notes for the log. Sizes come from the base when there is one.
    ``embedding``: the data's embedding fingerprint (``core.data.fingerprint``); a base trained in another
    space gets a WARNING note."""
    from core.io.checkpoint import load_checkpoint

    batch_map = batch_map or {}
    m, notes = cfg.model.kwargs, []
    if not cfg.model.init_from:
        model = plain_model(cfg, embed_dim, len(pert_map), len(batch_map))
        report = {"loaded": [], "skipped": [], "rebuilt": [], "initialised": sorted(model.state_dict()),
                  "new_perturbations": [], "base": None}
        if m.lora.enable:
            notes.append("no base model (model.init_from is empty): LoRA needs one, so every weight trains from "
                         "scratch")
        notes += add_adapters(model, cfg, lora=False)
        return model, report, notes

    path = base_path or cfg.model.init_from
    base_cfg, base_hp, base_state = read_checkpoint(load_checkpoint(path), path)
    if base_hp["embed_dim"] != embed_dim:
        raise CheckpointError(f"the base model was trained on {base_hp['embed_dim']}-d embeddings but the data's "
                              f"embedding has {embed_dim} dimensions; choose the embedding the base was trained on")
    if embedding is not None:
        from core.data.fingerprint import same_space_warnings

        notes += [f"WARNING: {w}" for w in same_space_warnings(base_hp.get("embedding"), embedding)]
    for key in SIZE_KEYS:
        base_value = getattr(base_cfg.model.kwargs, key)
        if getattr(m, key) != base_value:
            notes.append(f"model.kwargs.{key}={getattr(m, key)} replaced by the base's {base_value}")
            setattr(m, key, base_value)
    if m.mhc.layer_indices is not None and max(m.mhc.layer_indices) >= m.n_layers:
        raise ConfigError(f"model.kwargs.mhc.layer_indices {m.mhc.layer_indices} must lie in 0..{m.n_layers - 1}: "
                          f"the base model has {m.n_layers} layers")
    check_model_memory(cfg, embed_dim)  # the base's sizes replaced ours: estimate again before building
    model = plain_model(cfg, embed_dim, len(pert_map), len(batch_map))
    try:
        report = load_base_weights(model, base_state, base_hp, pert_map, control, batch_map)
    except (KeyError, IndexError, RuntimeError) as err:  # tensors named or shaped unlike its own metadata
        raise CheckpointError(f"the tensors of {path} do not match its own metadata (names or sizes differ) "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from err
    check_base_coverage(report, path, cfg.model.allow_partial_base)
    report["base"] = str(path)
    notes.append(f"base {path}: {len(report['loaded'])} tensors loaded, {len(report['skipped'])} skipped, "
                 f"rebuilt {report['rebuilt'] or 'none'}")
    if report["new_perturbations"]:
        notes.append(f"perturbations {report['new_perturbations']} are new to the base: each has a new trainable "
                     "row, initialised at the mean of the base's perturbation rows")
    notes.append(f"control '{control}' takes the base's control row '{base_hp['control']}'")
    before = set(model.state_dict())
    notes += add_adapters(model, cfg, lora=m.lora.enable)
    added = sorted(set(model.state_dict()) - before)
    report["initialised"] += [k for k in added if any(marker in k for marker in ("lora_", ".hc.", "head_logits"))]
    return model, report, notes


def build_for_checkpoint(ckpt: dict, path, skeleton=None) -> tuple[StateTransitionModel, Config, dict]:
    """Rebuild a trained model (with its LoRA and mHC) and load its weights exactly; eval mode. ``skeleton(cfg,
    hp)`` builds the untrained model for another architecture (a fine-tuned Arc State model, core/arc/)."""
    cfg, hp, state = read_checkpoint(ckpt, path)
    if skeleton is not None:
        model = skeleton(cfg, hp)
    else:
        check_model_memory(cfg, hp["embed_dim"])
        model = plain_model(cfg, hp["embed_dim"], len(hp["pert_map"]), len(hp["batch_map"]))
        add_adapters(model, cfg, bool(hp.get("lora_applied", False)))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a size in the config that the weights do not have
        raise CheckpointError(f"{path} has tensors of other sizes than its own config says "
                              f"({str(err).splitlines()[-1].strip()[:160]}); was it edited or written by another "
                              "version of this project?") from err
    legacy = [key for key in missing if key.endswith("hc.expansion")]
    if legacy:
        # Written before the stream expansion was saved (up to d38ca1e): those runs spread a run's input over the
        # streams as n identical copies, so the expansion they were trained with is all ones.
        state_dict = model.state_dict()
        for key in legacy:
            state_dict[key].fill_(1.0)
        missing = [key for key in missing if key not in legacy]
        hp["legacy_copies_expansion"] = True
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its own config ({len(missing)} missing, {len(unexpected)} "
                              "unexpected tensors); was it written by another version of this project?")
    return model.eval(), cfg, hp
