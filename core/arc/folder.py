"""An Arc State run folder, read safely and checked for what `state tx infer` needs.

What `state tx train` writes to ``output_dir/name/`` (arc-state 0.11.1): ``config.yaml`` (the resolved Hydra
config), ``var_dims.pkl`` ({input_dim, output_dim, pert_dim, batch_dim, gene_dim, hvg_dim, gene_names,
pert_names}), ``pert_onehot_map.pt`` (label -> one-hot row, required), ``batch_onehot_map.torch`` and
``cell_type_onehot_map.torch`` (``.pt`` and legacy ``.pkl`` variants too), ``checkpoints/{best,last,final}.ckpt``
(a Lightning checkpoint: ``state_dict`` without a ``model.`` prefix and ``hyper_parameters``). Released folders
on the Hugging Face hub keep the same files, some with the checkpoint at the top level. The checkpoint is, as
for `state tx infer`, ``checkpoints/final.ckpt`` unless one is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.arc.safe_load import load_pickle_file, load_torch_file, plain
from core.errors import CheckpointError

CHECKPOINT_CANDIDATES = ("checkpoints/final.ckpt", "final.ckpt", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                         "last.ckpt", "best.ckpt")
MAP_SUFFIXES = (".torch", ".pt", ".pkl")


@dataclass
class ArcFolder:
    path: Path
    checkpoint: Path
    kind: str  # what produced the folder, for the load report
    config: dict
    var_dims: dict
    hparams: dict
    state_dict: dict
    pert_map: dict[str, int]  # label -> one-hot column
    batch_map: dict[str, int] | None = None
    cell_type_map: dict[str, int] | None = None
    files: dict[str, str] = field(default_factory=dict)  # role -> file name found

    @property
    def control(self) -> str | None:
        return self.hparams.get("control_pert") or ((self.config.get("data") or {}).get("kwargs") or {}).get(
            "control_pert")

    @property
    def embed_key(self) -> str | None:
        return self.hparams.get("embed_key")


def looks_like_arc_folder(path) -> bool:
    """True for a folder with Arc's own files (this project's run folders have pert_map.json instead)."""
    path = Path(path).expanduser()
    return path.is_dir() and any((path / f).exists() for f in ("pert_onehot_map.pt", "var_dims.pkl"))


def _columns(onehot: dict, path: Path) -> dict[str, int]:
    """label -> column of a one-hot map; anything that is not exactly one-hot is refused."""
    import torch

    columns = {}
    for label, row in onehot.items():
        row = torch.as_tensor(row).float()
        if row.ndim != 1 or int((row == 1).sum()) != 1 or int((row != 0).sum()) != 1:
            raise CheckpointError(f"{path}: the entry for '{label}' is not a one-hot row; Arc maps hold one 1 per "
                                  "label")
        columns[str(label)] = int(row.argmax())
    if len(set(columns.values())) != len(columns):
        raise CheckpointError(f"{path}: two labels share a one-hot column")
    return columns


def _find_map(path: Path, basename: str):
    for suffix in MAP_SUFFIXES:
        f = path / f"{basename}{suffix}"
        if f.is_file():
            loader = load_pickle_file if suffix == ".pkl" else load_torch_file
            found = plain(loader(f, basename.replace("_", " ")))
            if not isinstance(found, dict):
                raise CheckpointError(f"{f} holds a {type(found).__name__}, not a map of labels to one-hot rows")
            return _columns(found, f), f.name
    return None, None


def _checkpoint(path: Path, checkpoint) -> Path:
    if checkpoint is not None:
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_file():
            raise CheckpointError(f"no checkpoint at {ckpt}; give a .ckpt file of the Arc folder (--checkpoint)")
        return ckpt
    for name in CHECKPOINT_CANDIDATES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"the Arc State folder {path} has no checkpoints/final.ckpt (nor final, last or best .ckpt); "
                          "give one with --checkpoint")


def _kind(state: dict, hparams: dict) -> str:
    if not any(k.startswith("transformer_backbone.") for k in state) or not any(
            k.startswith("pert_encoder.") for k in state):
        raise CheckpointError("the checkpoint is not an Arc State Transition model (no transformer_backbone.* and "
                              f"pert_encoder.* tensors; it has {sorted(state)[:3]} ...)")
    lora = any(".lora_A." in k for k in state)
    backbone = hparams.get("transformer_backbone_key", "?")
    return (f"Arc State Transition checkpoint ({hparams.get('output_space', '?')} space, {backbone} backbone"
            f"{', LoRA' if lora else ''})")


def read_arc_folder(path, checkpoint=None) -> ArcFolder:
    """Read and check an Arc folder; every problem is one CheckpointError line saying what the folder lacks."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; give an Arc State run folder (--model-dir)")
    expects = "an Arc State run folder holds config.yaml, var_dims.pkl, pert_onehot_map.pt and checkpoints/"
    for required in ("config.yaml", "var_dims.pkl", "pert_onehot_map.pt"):
        if not (path / required).is_file():
            raise CheckpointError(f"{path} has no {required}; {expects}")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except yaml.YAMLError as err:
        raise CheckpointError(f"{path / 'config.yaml'} is not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / 'config.yaml'} must hold a mapping (Arc writes its resolved config there)")
    var_dims = plain(load_pickle_file(path / "var_dims.pkl", "var_dims.pkl"))
    if not isinstance(var_dims, dict) or "pert_dim" not in var_dims:
        raise CheckpointError(f"{path / 'var_dims.pkl'} has no pert_dim; it is not what state tx train writes")
    pert_map, pert_file = _find_map(path, "pert_onehot_map")
    batch_map, batch_file = _find_map(path, "batch_onehot_map")
    cell_type_map, cell_type_file = _find_map(path, "cell_type_onehot_map")

    ckpt_path = _checkpoint(path, checkpoint)
    ckpt = plain(load_torch_file(ckpt_path, "checkpoint"))
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{ckpt_path} has no state_dict and hyper_parameters; it is not a Lightning checkpoint "
                              "written by state tx train")
    state, hparams = dict(ckpt["state_dict"]), dict(ckpt["hyper_parameters"])
    kind = _kind(state, hparams)
    if hparams.get("pert_dim") not in (None, var_dims["pert_dim"]) or max(pert_map.values()) >= var_dims["pert_dim"]:
        raise CheckpointError(f"pert_onehot_map.pt has {len(pert_map)} labels over columns up to "
                              f"{max(pert_map.values())} but the model's pert_dim is {var_dims['pert_dim']}")
    if "batch_encoder.weight" in state and batch_map is None:
        raise CheckpointError(f"{path} has no batch_onehot_map.torch (.pt, .pkl) but the model has a batch encoder "
                              f"of {tuple(state['batch_encoder.weight'].shape)[0]} batches; copy the map from the "
                              "training run")
    files = {"config": "config.yaml", "var_dims": "var_dims.pkl", "pert_map": pert_file,
             "checkpoint": str(ckpt_path.relative_to(path)) if ckpt_path.is_relative_to(path) else str(ckpt_path)}
    files.update({k: v for k, v in (("batch_map", batch_file), ("cell_type_map", cell_type_file)) if v})
    return ArcFolder(path=path, checkpoint=ckpt_path, kind=kind, config=config, var_dims=var_dims, hparams=hparams,
                     state_dict=state, pert_map=pert_map, batch_map=batch_map, cell_type_map=cell_type_map, files=files)
