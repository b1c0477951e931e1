"""One training step of Arc State's own model against the same model imported into our engine, in one process.

Run with a Python that has arc-state 0.11.1 (bench/bench_arc.py starts it with $ARC_STATE_PYTHON); prints one
JSON line. Both sides: the same weights (Arc's freshly built model, imported by core/arc), the same batch of
sets, the same energy distance (geomloss), forward + backward + optimiser step; Arc's is its own
``training_step`` with Adam (what its configure_optimizers uses), ours the model's forward, our
distributional loss and AdamW. Steps are timed alternately so a busy machine slows both alike.

``--mhc``: both models get the same dynamic mHC (core/mhc, default settings) around their LLaMA blocks, Arc's
through its own ``transformer_backbone``, and the same mHC weights: whether our step's lead over Arc's holds when a
run uses mHC. The JSON's ``max_abs_diff`` is the largest difference between the two models' predictions on the
batch before any step (eval mode), the check that both arms compute the same function.
"""

from __future__ import annotations

import json
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def arc_model(hidden: int, layers: int, heads: int, dim: int, set_len: int):
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    hp = dict(input_dim=dim, hidden_dim=hidden, output_dim=dim, pert_dim=8, batch_dim=None, dropout=0.0,
              embed_key="X_emb", output_space="embedding", gene_dim=dim, hvg_dim=dim, decoder_cfg=None,
              cell_set_len=set_len, n_encoder_layers=2, n_decoder_layers=2, batch_encoder=False,
              predict_residual=True, distributional_loss="energy", loss="energy", blur=0.05, lr=1e-4,
              control_pert="control", transformer_backbone_key="llama",
              transformer_backbone_kwargs=dict(bidirectional_attention=True, hidden_size=hidden,
                                               intermediate_size=4 * hidden, num_hidden_layers=layers,
                                               num_attention_heads=heads, num_key_value_heads=heads,
                                               head_dim=hidden // heads, max_position_embeddings=set_len,
                                               use_cache=False, attention_dropout=0.0, vocab_size=8))
    return StateTransitionPerturbationModel(**hp), hp


def with_same_mhc(arc, ours, hidden: int) -> None:
    """Wraps both backbones' blocks with default (dynamic) mHC in place and gives ours Arc's mHC weights."""
    from core.config import MhcConfig
    from core.mhc.layer import apply_mhc_to_transformer

    apply_mhc_to_transformer(arc.transformer_backbone, hidden, MhcConfig())
    apply_mhc_to_transformer(ours.backbone, hidden, MhcConfig())
    copy_mhc_weights(arc.transformer_backbone, ours.backbone)


def copy_mhc_weights(source, target) -> None:
    """Every mHC parameter of ``source`` (the mappings and read-outs, not the blocks) into ``target``'s, in
    ``mhc_parameters`` order; both wrapped alike."""
    from core.mhc.layer import mhc_parameters

    with torch.no_grad():
        for theirs, mine in zip(mhc_parameters(source), mhc_parameters(target), strict=True):
            mine.copy_(theirs)


def predictions_differ(arc, ours, arc_batch, control, pert) -> float:
    """Largest |difference| of the two models' predictions on the batch, in eval mode (left so), no gradient."""
    arc.eval(), ours.eval()
    with torch.no_grad():
        theirs = arc(arc_batch).reshape(-1)
        mine = ours(control, pert).reshape(-1)
    return float((theirs - mine).abs().max())


def main() -> None:
    quick = "--quick" in sys.argv
    hidden = int(sys.argv[sys.argv.index("--hidden") + 1]) if "--hidden" in sys.argv else 128
    layers, heads, dim, set_len, n_sets = (2, 4, 32, 16, 4) if quick else (4, 4, 50, 32, 8)
    torch.manual_seed(0)
    arc, hp = arc_model(hidden, layers, heads, dim, set_len)
    arc.train()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "checkpoints").mkdir()
        torch.save({"state_dict": arc.state_dict(), "hyper_parameters": hp}, folder / "checkpoints" / "final.ckpt")
        (folder / "config.yaml").write_text("{}\n")
        (folder / "var_dims.pkl").write_bytes(pickle.dumps({"pert_dim": 8, "batch_dim": None}))
        torch.save({f"p{i}": torch.nn.functional.one_hot(torch.tensor(i), 8).float() for i in range(8)},
                   folder / "pert_onehot_map.pt")
        from core.arc.runtime import load_arc
        from core.training.module import adamw, distributional_loss

        ours, _, _ = load_arc(folder)
    if "--mhc" in sys.argv:
        with_same_mhc(arc, ours, hidden)
    loss_fn = distributional_loss("energy", 0.05)
    control = torch.randn(n_sets, set_len, dim)
    target = torch.randn(n_sets, set_len, dim)
    pert = torch.randint(0, 8, (n_sets,))
    onehot = torch.nn.functional.one_hot(pert, 8).float()[:, None, :].expand(n_sets, set_len, 8)
    arc_batch = {"ctrl_cell_emb": control.reshape(-1, dim), "pert_emb": onehot.reshape(-1, 8),
                 "pert_cell_emb": target.reshape(-1, dim)}
    max_abs_diff = predictions_differ(arc, ours, arc_batch, control, pert)
    arc.train(), ours.train()
    if "--compile" in sys.argv:  # training.compile=true: the same in-place compile a run does
        import atexit
        import os
        import shutil

        from core.training.compile import compile_model

        # a cold compile, as a user's first run has: inductor's on-disk caches would make it a few seconds
        cache = tempfile.mkdtemp(prefix="bench-inductor-")
        atexit.register(shutil.rmtree, cache, True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache

        compile_model(ours, "cpu")
    arc_opt = torch.optim.Adam(arc.parameters(), lr=1e-4)
    our_opt = adamw([p for p in ours.parameters() if p.requires_grad], lr=1e-4)  # what our trainer uses

    def arc_step():
        loss = arc.training_step(arc_batch, 0)
        arc_opt.zero_grad(set_to_none=True)
        loss.backward()
        arc_opt.step()

    def our_step():
        loss = loss_fn(ours(control, pert), target).mean()
        our_opt.zero_grad(set_to_none=True)
        loss.backward()
        our_opt.step()

    import warnings

    warnings.filterwarnings("ignore")  # Arc's self.log outside a Trainer warns on every step
    start = time.perf_counter()
    our_step()  # with --compile: the compile
    compile_s = time.perf_counter() - start if "--compile" in sys.argv else None
    for fn in (arc_step, our_step) * 3:
        fn()
    samples = {"arc": [], "ours": []}
    for _ in range(5 if quick else 15):
        for name, fn in (("arc", arc_step), ("ours", our_step)):
            start = time.perf_counter()
            for _ in range(3):
                fn()
            samples[name].append((time.perf_counter() - start) / 3)
    print(json.dumps({name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "repeats": len(v)}
                      for name, v in samples.items()} | {"size": dict(hidden=hidden, layers=layers, dim=dim,
                                                                      set_len=set_len, sets=n_sets),
                                                          "compile_s": compile_s,
                                                          "max_abs_diff": max_abs_diff}))


if __name__ == "__main__":
    main()
