"""How far mHC has acted in a run: its mappings' drift from their init, the streams' divergence, and the size of
the mappings' gradients next to LoRA's.

- ``mapping_drift``: from the run's mHC snapshots (``core.runs.list_mhc_snapshots``; the first is the init, step
  0), per layer and snapshot step, Delta = mapping(step) - mapping(init) for H_res [n, n], H_pre [n], H_post [n],
  and max |Delta| of each. A run whose H_res never leaves its init has mixed nothing it did not mix at the start.
  ``most_moved`` says which of the three moved most (as a fraction of its range).
- ``stream_divergence``: from one forward pass, per wrapped layer, the mean pairwise cosine between the n streams
  entering it (over tokens; 1: parallel, as in a plain residual network in disguise) and their spread about
  their mean relative to its norm. A stack's first layer receives E_i h (E > 0, core/mhc/mappings.py): cosine
  exactly 1, spread rms(p) = 0.29 at n = 4. At init the later layers' streams differ from each other by the
  blocks' outputs written along p, so their cosine falls below 1 only by the square of that.
- ``mapping_gradient_sizes``: after a backward pass, the mean |gradient| of every layer's H_res, H_pre and H_post
  logits (b_res, b_pre, b_post) and of the LoRA parameters, e.g. at step 1 (tests/integration/test_mhc_learns.py).

Shapes: S snapshots, L wrapped layers, n streams, c hidden size.
"""

from __future__ import annotations

import numpy as np

from core.mhc.gradients import GradientProbe, mapping_gradient_sizes  # noqa: F401  (re-exported)

MAPPINGS = ("h_res", "h_pre", "h_post")


def mapping_drift(snapshots: list[dict]) -> dict:
    """``snapshots``: ``core.runs.load_mhc_snapshot`` dicts in step order, the first taken at init.

    Returns {"steps" [S], "layer_indices" [L], "delta_<m>" [S, L, ...] (mapping minus the first snapshot's),
    "max_abs_<m>" [S, L] (max |Delta| per layer), "final_max_abs_<m>" [L]} for m in h_res, h_pre, h_post.
    """
    if not snapshots:
        raise ValueError("mapping_drift needs at least one mHC snapshot (the run has none: was mHC on?)")
    layers = np.asarray(snapshots[0]["layer_indices"])
    for snapshot in snapshots[1:]:
        if not np.array_equal(np.asarray(snapshot["layer_indices"]), layers):
            raise ValueError(f"snapshot at step {snapshot['step']} holds other layers than the first")
    out: dict = {"steps": np.asarray([int(s["step"]) for s in snapshots]), "layer_indices": layers}
    for name in MAPPINGS:
        values = np.stack([np.asarray(s[name], dtype=np.float64) for s in snapshots])  # [S, L, ...]
        delta = values - values[:1]
        out[f"delta_{name}"] = delta
        out[f"max_abs_{name}"] = np.abs(delta).reshape(len(snapshots), len(layers), -1).max(-1)
        out[f"final_max_abs_{name}"] = out[f"max_abs_{name}"][-1]
    return out


# Each mapping's range (H_res doubly stochastic, H_pre = sigmoid, H_post = 2 sigmoid): moves are compared as a
# fraction of it, so H_post's wider range does not make it look as if it moved more.
RANGES = {"h_res": 1.0, "h_pre": 1.0, "h_post": 2.0}
LABELS = {"h_res": "H_res", "h_pre": "H_pre", "h_post": "H_post"}


def most_moved(drift: dict, at: int = -1) -> dict:
    """Which of H_res, H_pre, H_post moved most from the first snapshot to snapshot ``at`` (an index), ranked by
    max |Delta| over layers and entries as a fraction of the mapping's range. Returns {"mapping", "layer" (where
    it moved most), "max_abs" {m: max |Delta|}, "fraction" {m: max |Delta| / range}, "step", "from_step"}."""
    steps = np.asarray(drift["steps"])
    per_layer = {name: np.asarray(drift[f"max_abs_{name}"])[at] for name in MAPPINGS}  # [L] each
    fraction = {name: float(per_layer[name].max()) / RANGES[name] for name in MAPPINGS}
    top = max(MAPPINGS, key=lambda name: fraction[name])
    return {"mapping": top, "layer": int(np.asarray(drift["layer_indices"])[int(per_layer[top].argmax())]),
            "max_abs": {name: float(per_layer[name].max()) for name in MAPPINGS}, "fraction": fraction,
            "step": int(steps[at]), "from_step": int(steps[0])}


def describe_most_moved(moved: dict) -> str:
    """``most_moved``'s answer in one sentence."""
    if max(moved["max_abs"].values()) == 0.0:
        return f"No mapping has moved from its init (step {moved['from_step']}) by step {moved['step']}."
    top = moved["mapping"]
    others = ", ".join(f"{LABELS[m]} {moved['max_abs'][m]:.3g}" for m in MAPPINGS if m != top)
    return (f"From step {moved['from_step']} to step {moved['step']}, {LABELS[top]} moved most: max |Δ| "
            f"{moved['max_abs'][top]:.3g} in layer {moved['layer']} ({moved['fraction'][top]:.1%} of its range), "
            f"against {others}.")


def run_mapping_drift(run_dir) -> dict:
    """``mapping_drift`` of the run folder's snapshots."""
    from core.runs import list_mhc_snapshots, load_mhc_snapshot

    return mapping_drift([load_mhc_snapshot(path) for _, path in list_mhc_snapshots(run_dir)])


def mean_pairwise_cosine(streams) -> float:
    """Mean over tokens and over stream pairs i < j of cos(x_i, x_j), for ``streams`` [..., n, c]."""
    x = np.asarray(streams, dtype=np.float64)
    x = x.reshape(-1, x.shape[-2], x.shape[-1])
    unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    gram = unit @ unit.transpose(0, 2, 1)  # [tokens, n, n]
    n = x.shape[1]
    upper = np.triu_indices(n, k=1)
    return float(gram[:, upper[0], upper[1]].mean())


def relative_spread(streams) -> float:
    """Mean over tokens of rms_i ||x_i - mean_j x_j|| / ||mean_j x_j||, for ``streams`` [..., n, c]: how far the
    streams lie from their mean, in units of its norm. Streams that differ only in scale have cosine 1 but a
    spread above 0 (a stack's first layer: 0.5 / sqrt(3) = 0.29 at n = 4)."""
    x = np.asarray(streams, dtype=np.float64)
    x = x.reshape(-1, x.shape[-2], x.shape[-1])
    mean = x.mean(1, keepdims=True)
    deviation = np.sqrt(np.square(x - mean).sum(-1).mean(-1))
    return float((deviation / np.maximum(np.linalg.norm(mean[:, 0], axis=-1), 1e-12)).mean())


def stream_divergence(model, *inputs, **kwargs) -> dict:
    """Run ``model(*inputs, **kwargs)`` without gradients and return {"layer_indices" [L], "mean_cosine" [L],
    "relative_spread" [L]} of the streams entering each mHC layer of ``model``."""
    import torch

    from core.mhc.layer import find_mhc_layers

    layers = find_mhc_layers(model)
    if not layers:
        raise ValueError("the model has no mHC layers")
    captured: dict[int, tuple[float, float]] = {}

    def hook(layer):
        def capture(module, args):
            hidden = args[0].detach().float()
            n, c = module.n_streams, module.hidden_dim
            if module.expand:  # the streams are E h
                streams = hidden.unsqueeze(-2) * module.hc.expansion.float().view(n, 1)
            else:
                streams = hidden.unflatten(-1, (n, c))
            streams = streams.reshape(-1, n, c).cpu().numpy()
            captured[module.layer_index] = (mean_pairwise_cosine(streams), relative_spread(streams))
        return layer.register_forward_pre_hook(capture)

    handles = [hook(layer) for layer in layers]
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    indices = [layer.layer_index for layer in layers]
    return {"layer_indices": np.asarray(indices), "mean_cosine": np.asarray([captured[i][0] for i in indices]),
            "relative_spread": np.asarray([captured[i][1] for i in indices])}


def _control_sets(adata, cfg, split_of, pert_index: int, n_sets: int, seed: int):
    """(z [B, S, D], pert [B]) from the run's validation control cells (else its training ones), each set of one
    cell type, predicting perturbation row ``pert_index``."""
    import torch

    from core.infer import run_mapping

    mapping = run_mapping(cfg)
    obs = adata.obs
    in_split = obs.index.to_series().map(split_of).fillna("").to_numpy()
    control = (obs[mapping.pert_col].astype(str) == str(mapping.control_pert)).to_numpy()
    kind = obs[mapping.cell_type_key].astype(str).to_numpy()
    set_len, rng = cfg.model.kwargs.cell_set_len, np.random.default_rng(seed)
    z = np.asarray(adata.obsm[mapping.embed_key], dtype=np.float32)
    for part in ("val", "train"):
        groups = [np.flatnonzero(control & (in_split == part) & (kind == k)) for k in sorted(set(kind))]
        groups = [g for g in groups if len(g) >= set_len]
        if groups:
            break
    else:
        raise ValueError(f"no cell type has {set_len} control cells in the run's validation or training split")
    sets = [z[rng.choice(groups[b % len(groups)], set_len, replace=False)] for b in range(n_sets)]
    return torch.tensor(np.stack(sets)), torch.full((n_sets,), pert_index, dtype=torch.long)


def run_stream_divergence(run_dir, checkpoint=None, n_sets: int = 8, seed: int = 0, adata=None) -> dict:
    """``stream_divergence`` of a run's model at its checkpoint (default best, else final, else last) and at
    init (the same config built afresh: its base with LoRA and mHC at init), on ``n_sets`` sets of its
    validation control cells. Returns {"init": ..., "trained": ...}; "init" is left out when the base the run
    started from is gone. Raises ValueError for a run without mHC."""
    from pathlib import Path

    import torch

    from core.errors import UserError
    from core.evaluation.evaluate import read_split, run_data
    from core.infer import load_model, resolve_checkpoint
    from core.model.build import build_for_training

    run_dir = Path(run_dir)
    model, cfg, hp = load_model(resolve_checkpoint(checkpoint or run_dir), device="cpu")
    if not cfg.model.kwargs.use_mhc:
        raise ValueError(f"run {run_dir.name} has no mHC layers (model.kwargs.use_mhc=false)")
    if adata is None:
        adata = run_data(cfg)
    perturbed = [i for label, i in hp["pert_map"].items() if label != hp["control"]]
    z, pert = _control_sets(adata, cfg, read_split(run_dir), perturbed[0], n_sets, seed)
    out = {}
    try:
        torch.manual_seed(0)
        init, _, _ = build_for_training(cfg, hp["embed_dim"], hp["pert_map"], hp["control"], hp["batch_map"])
        out["init"] = stream_divergence(init.eval(), z, pert)
    except (UserError, OSError):
        pass  # the base checkpoint was moved or deleted: only the trained model can be measured
    out["trained"] = stream_divergence(model.eval(), z, pert)
    return out
