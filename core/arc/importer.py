"""Building our ``ArcTransitionModel`` from an Arc State folder and loading every tensor, with a load report.

The architecture comes from the checkpoint's own hyper-parameters, as arc-state's ``load_from_checkpoint``
builds it; then every tensor must fit: a checkpoint key the architecture does not have, a missing one, or a
shape other than the hyper-parameters give is an error naming the tensor (nothing partially loaded is used,
unlike Arc's fine-tuning loader, which skips such tensors silently). The report lists every Arc tensor as
loaded (with our name), dropped (with why) or merged (LoRA), and every tensor of ours that Arc has not as
rebuilt (with why).
"""

from __future__ import annotations

import torch

from core.arc import keys
from core.arc.folder import ArcFolder
from core.errors import CheckpointError
from core.model.arc_transition import ArcSpec, ArcTransitionModel


def spec_from_hparams(hp: dict, var_dims: dict) -> ArcSpec:
    """Arc's own rules for what its hyper-parameters build (StateTransitionPerturbationModel.__init__)."""
    try:
        backbone_key = str(hp.get("transformer_backbone_key", "GPT2"))
        backbone_kwargs = {k: v for k, v in dict(hp.get("transformer_backbone_kwargs") or {}).items()}
        if legacy_llama(hp):
            backbone_kwargs["bidirectional_attention"] = True
        batch_dim = hp.get("batch_dim", var_dims.get("batch_dim"))
        return ArcSpec(
            input_dim=int(hp["input_dim"]), hidden_dim=int(hp["hidden_dim"]), output_dim=int(hp["output_dim"]),
            pert_dim=int(hp["pert_dim"]),
            batch_dim=int(batch_dim) if hp.get("batch_encoder", False) and batch_dim is not None else None,
            n_encoder_layers=int(hp.get("n_encoder_layers", 2)), n_decoder_layers=int(hp.get("n_decoder_layers", 2)),
            activation=str(hp.get("activation", "gelu")),
            use_basal_projection=bool(hp.get("use_basal_projection", True)),
            predict_residual=bool(hp.get("predict_residual", True)), output_space=str(hp.get("output_space", "gene")),
            embed_key=hp["embed_key"], backbone="gpt2" if backbone_key == "GPT2" else backbone_key,
            backbone_kwargs=backbone_kwargs,
            decoder_cfg=dict(hp["decoder_cfg"]) if hp.get("decoder_cfg") and hp.get("gene_decoder_bool", True)
            else None,
            dropout=float(hp.get("dropout", 0.1)), cell_set_len=int(hp.get("cell_set_len", 256)))
    except KeyError as err:
        raise CheckpointError(f"the checkpoint's hyper_parameters lack {err}; arc-state needs it to rebuild the model"
                              ) from err
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint's hyper_parameters cannot describe a model ({err})") from err


LEGACY_NOTE = ("transformer_backbone_kwargs have no bidirectional_attention: written by arc-state before the flag "
               "existed (0.9 and older, PertSetsPerturbationModel), which always built a bidirectional llama without "
               "positions; built that way, as it was trained (arc-state 0.11.1 would build a causal llama with RoPE "
               "for this checkpoint, so its state tx infer differs from what the model learned)")


def legacy_llama(hp: dict) -> bool:
    """A llama checkpoint from before arc-state's bidirectional_attention flag (read from the July 2025 source,
    commit c8253cb^: get_transformer_backbone always built LlamaBidirectionalModel)."""
    return hp.get("transformer_backbone_key") == "llama" and "bidirectional_attention" not in dict(
        hp.get("transformer_backbone_kwargs") or {})


def _unsupported(hp: dict) -> None:
    for flag in ("confidence_token", "use_batch_token", "batch_predictor", "mask_attn", "finetune_vci_decoder"):
        if hp.get(flag):
            raise CheckpointError(f"the checkpoint uses Arc's {flag}, which this importer does not rebuild; only "
                                  "models without it can be imported")
    if hp.get("transformer_backbone_key", "GPT2") not in ("llama", "GPT2"):
        raise CheckpointError(f"unknown Arc backbone {hp.get('transformer_backbone_key')!r}; arc-state has llama and "
                              "GPT2")


def import_arc_model(folder: ArcFolder) -> tuple[ArcTransitionModel, dict]:
    """(model in eval mode with every Arc tensor loaded, load report)."""
    hp = folder.hparams
    _unsupported(hp)
    spec = spec_from_hparams(hp, folder.var_dims)
    state, merged = dict(folder.state_dict), {}
    origin = {k: k for k in state}
    if any(".lora_A." in k for k in state):
        # peft's scaling alpha / r, as Arc's apply_lora configures it (no rsLoRA)
        lora = dict(hp.get("lora") or {})
        state, origin, merged = keys.merge_lora(state, float(lora.get("alpha", 32)), int(lora.get("r", 16)))
    model = ArcTransitionModel(spec)
    own = model.state_dict()
    shown = (f"input_dim={spec.input_dim}, hidden_dim={spec.hidden_dim}, output_dim={spec.output_dim}, "
             f"pert_dim={spec.pert_dim}")
    report = {"folder": str(folder.path), "kind": folder.kind, "checkpoint": str(folder.checkpoint),
              "files": folder.files, "loaded": {}, "dropped": {}, "merged": merged, "rebuilt": {},
              "notes": [LEGACY_NOTE] if legacy_llama(hp) else []}
    new_state = {}
    for key, value in state.items():
        if keys.is_token_table(key):
            zero = not torch.count_nonzero(value)
            report["dropped"][origin[key]] = (f"token table {tuple(value.shape)}, "
                                              f"{'all zero' if zero else 'NOT all zero'}; never read (inputs are "
                                              "embeddings)")
            continue
        ours = keys.arc_to_ours(key)
        if ours is None or ours not in own:
            raise CheckpointError(f"checkpoint tensor {key} is not part of the model its hyper-parameters describe "
                                  f"({shown}, {spec.backbone}); the checkpoint does not match its own hparams")
        if tuple(own[ours].shape) != tuple(value.shape):
            raise CheckpointError(f"checkpoint tensor {key} has shape {tuple(value.shape)} but its hyper-parameters "
                                  f"({shown}) give {tuple(own[ours].shape)}")
        new_state[ours] = value
        report["loaded"][origin[key]] = ours
    for ours in own:
        if ours in new_state:
            continue
        arc = keys.ours_to_arc(ours)
        if arc is not None and keys.is_token_table(arc):
            report["rebuilt"][ours] = "one-row token table (never read)"
            new_state[ours] = own[ours]
        else:
            raise CheckpointError(f"the checkpoint has no tensor {arc or ours}, which its hyper-parameters ({shown}) "
                                  "require")
    model.load_state_dict(new_state, strict=True)
    return model.eval(), report


def summary(report: dict) -> str:
    return (f"{report['kind']}: {len(report['loaded'])} tensors loaded, {len(report['dropped'])} dropped "
            f"({', '.join(report['dropped']) or 'none'}), {len(report['merged'])} LoRA merged, "
            f"{len(report['rebuilt'])} rebuilt")
