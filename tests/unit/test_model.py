"""The ST model and how it is built: a set model (bidirectional, order-free), signed residual output, base weights
loaded before LoRA and mHC with a correct report, new perturbation rows, and function preservation."""

import pytest
import torch

from core.config import load_config
from core.errors import CheckpointError, ConfigError
from core.mhc.layer import find_mhc_layers, mhc_parameters
from core.model.build import build_for_checkpoint, build_for_training, plain_model
from core.model.state_transition import StateTransitionModel

D = 10
TINY = ["model.kwargs.hidden_dim=32", "model.kwargs.n_layers=2", "model.kwargs.n_heads=4"]
BASE_PERTS = {"control": 0, "pert_01": 1, "pert_02": 2}
FT_PERTS = {"sham": 0, "burn": 1}


def _randomise_head(model: StateTransitionModel, seed: int = 0) -> None:
    """A trained-looking head: the zero init would hide everything the backbone does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head[-1].weight.copy_(torch.randn(model.head[-1].weight.shape, generator=g) * 0.3)
        model.head[-1].bias.copy_(torch.randn(model.head[-1].bias.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base checkpoint (Lightning layout) of a tiny llama ST model over 3 perturbations, and its model."""
    torch.manual_seed(0)
    cfg = load_config(overrides=TINY + ["model.kwargs.lora.enable=false"])
    model = plain_model(cfg, D, len(BASE_PERTS))
    _randomise_head(model)
    hp = {"config": cfg.to_dict(), "pert_map": BASE_PERTS, "control": "control", "embed_dim": D, "batch_map": {},
          "lora_applied": False}
    path = tmp_path_factory.mktemp("base") / "base.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hp},
               path)
    return path, model.eval()


def _finetune_cfg(path, *extra):
    return load_config(overrides=TINY + [f"model.init_from={path}", *extra])


@pytest.mark.parametrize("backbone", ["llama", "gpt2"])
def test_set_model_is_order_equivariant_and_every_cell_sees_every_other(backbone):
    torch.manual_seed(0)
    model = StateTransitionModel(D, 3, 32, 2, 4, backbone).eval()
    _randomise_head(model)
    z, pert = torch.randn(2, 7, D), torch.tensor([1, 2])
    with torch.no_grad():
        out = model(z, pert)
        perm = torch.randperm(7)
        assert torch.allclose(model(z[:, perm], pert), out[:, perm], atol=1e-5)
        # under a causal mask the first cell could not see the last one
        z_last = z.clone()
        z_last[:, -1] += 1.0
        assert (model(z_last, pert)[:, 0] - out[:, 0]).abs().max() > 1e-4


def test_fresh_model_predicts_no_change():
    model = StateTransitionModel(D, 3, 32, 2, 4).eval()
    z = torch.randn(3, 5, D)
    with torch.no_grad():
        assert torch.equal(model(z, torch.tensor([0, 1, 2])), z)


def test_prediction_is_a_signed_residual_with_no_clamping():
    model = StateTransitionModel(D, 2, 32, 1, 4).eval()
    with torch.no_grad():
        model.head[-1].bias.fill_(-5.0)  # the head asks for a shift of -5 in every dimension
        z = torch.randn(2, 4, D)
        z_pred = model(z, torch.tensor([0, 1]))
    assert (z_pred < 0).float().mean() > 0.9  # Arc State's output ReLU would have clamped these to 0
    assert torch.allclose(z_pred - z, torch.full_like(z, -5.0), atol=1e-5)


def test_batch_covariate_unknown_row_adds_nothing():
    model = StateTransitionModel(D, 2, 32, 1, 4, n_batches=3).eval()
    _randomise_head(model)
    z, pert = torch.randn(1, 4, D), torch.tensor([1])
    unknown = torch.full((1, 4), 3)
    with torch.no_grad():
        assert torch.allclose(model(z, pert, unknown), model(z, pert, None), atol=1e-6)
        assert not torch.allclose(model(z, pert, torch.zeros(1, 4, dtype=torch.long)), model(z, pert), atol=1e-4)


def test_base_tensors_load_before_lora_and_mhc_and_the_report_says_so(base):
    path, base_model = base
    cfg = _finetune_cfg(path, "model.kwargs.use_mhc=true")
    model, report, notes = build_for_training(cfg, D, FT_PERTS, "sham")
    base_state = base_model.state_dict()
    assert sorted(report["loaded"]) == sorted(k for k in base_state if k != "pert_embedding.weight")
    assert report["skipped"] == [] and report["rebuilt"] == ["pert_embedding.weight"]
    assert report["new_perturbations"] == ["burn"] and report["control_mapped"] == {"sham": "control"}
    assert any("lora_A" in k for k in report["initialised"]) and any(".hc." in k for k in report["initialised"])
    # every backbone weight holds the base's value under its LoRA and mHC wrappers
    own = model.state_dict()
    for key, value in base_state.items():
        if key.startswith("backbone.layers."):
            i, rest = key.split(".")[2], ".".join(key.split(".")[3:])
            wrapped = [k for k in own if k.startswith(f"backbone.layers.{i}.block.")
                       and k.endswith(rest.replace(".weight", ".base_layer.weight") if "proj" in rest else rest)]
            assert len(wrapped) == 1, (key, wrapped)
            assert torch.equal(own[wrapped[0]], value), key
    rows = model.pert_embedding.weight.detach()
    assert torch.equal(rows[0], base_state["pert_embedding.weight"][0])  # sham takes the control row
    assert torch.allclose(rows[1], base_state["pert_embedding.weight"][1:].mean(0))  # burn: a new row
    assert any("['burn'] are new" in n for n in notes)


def test_under_lora_only_adapters_mhc_encoders_and_head_train(base):
    path, _ = base
    model, _, _ = build_for_training(_finetune_cfg(path, "model.kwargs.use_mhc=true"), D, FT_PERTS, "sham")
    mhc_ids = {id(p) for p in mhc_parameters(model.backbone)}
    for name, p in model.backbone.named_parameters():
        assert p.requires_grad == ("lora_" in name or id(p) in mhc_ids), name
    assert all(p.requires_grad for p in model.head.parameters()) and model.pert_embedding.weight.requires_grad
    frozen, _, _ = build_for_training(_finetune_cfg(path, "model.kwargs.train_encoders=false"), D, FT_PERTS, "sham")
    assert not any(p.requires_grad for p in frozen.basal_encoder.parameters())
    assert not any(p.requires_grad for p in frozen.head.parameters())
    assert frozen.pert_embedding.weight.requires_grad  # the new burn row must be able to learn


@pytest.mark.parametrize("backbone", ["llama", "gpt2"])
def test_lora_mhc_finetune_starts_with_the_base_models_predictions(tmp_path, backbone):
    torch.manual_seed(1)
    cfg = load_config(overrides=TINY + ["model.kwargs.lora.enable=false", f"model.kwargs.backbone={backbone}",
                                        "model.kwargs.n_layers=3"])
    base_model = plain_model(cfg, D, len(BASE_PERTS)).eval()
    _randomise_head(base_model)
    hp = {"config": cfg.to_dict(), "pert_map": BASE_PERTS, "control": "control", "embed_dim": D, "batch_map": {}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in base_model.state_dict().items()}, "hyper_parameters": hp},
               tmp_path / "base.ckpt")
    perts = {"control": 0, "pert_01": 1, "burn": 2}
    ft_cfg = load_config(overrides=[f"model.init_from={tmp_path / 'base.ckpt'}", "model.kwargs.use_mhc=true",
                                    "model.kwargs.mhc.n_streams=4"])
    finetune, _, _ = build_for_training(ft_cfg, D, perts, "control")
    finetune.eval()
    assert len(find_mhc_layers(finetune)) == 3
    plain, _, _ = build_for_training(_finetune_cfg(tmp_path / "base.ckpt", "model.kwargs.lora.enable=false"), D,
                                     perts, "control")
    plain.eval()
    z = torch.randn(4, 16, D)
    with torch.no_grad():
        for label in ("control", "pert_01"):  # labels the base knows: the base's own predictions
            p = torch.full((4,), perts[label])
            assert torch.allclose(finetune(z, p), base_model(z, torch.full((4,), BASE_PERTS[label])), atol=1e-5)
        p = torch.full((4,), perts["burn"])  # the new label: the same as the loaded model without adapters
        assert torch.allclose(finetune(z, p), plain(z, p), atol=1e-5)
        # and the adapters are in the forward path: moving LoRA's B moves the predictions
        before = finetune(z, p)
        for name, param in finetune.named_parameters():
            if "lora_B" in name:
                param.add_(0.1)
        assert (finetune(z, p) - before).abs().max() > 1e-3


def test_a_finetuned_checkpoint_rebuilds_exactly(base):
    path, _ = base
    cfg = _finetune_cfg(path, "model.kwargs.use_mhc=true")
    model, _, _ = build_for_training(cfg, D, FT_PERTS, "sham")
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    hp = {"config": cfg.to_dict(), "pert_map": FT_PERTS, "control": "sham", "embed_dim": D, "batch_map": {},
          "lora_applied": True}
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hp}
    rebuilt, _, _ = build_for_checkpoint(ckpt, "in-memory")
    z = torch.randn(2, 8, D)
    with torch.no_grad():
        assert torch.equal(rebuilt(z, torch.tensor([0, 1])), model.eval()(z, torch.tensor([0, 1])))


def test_an_mhc_checkpoint_of_the_earlier_copies_init_loads_with_the_copies_it_was_trained_with(base):
    # the earlier init spread a run's input as n copies and saved no expansion; it must load with expansion 1,
    # not (1 + p), which would silently change its predictions (tests/unit/test_checkpoint_compat.py checks them)
    path, _ = base
    cfg = _finetune_cfg(path, "model.kwargs.use_mhc=true")
    model, _, _ = build_for_training(cfg, D, FT_PERTS, "sham")
    state = {f"model.{k}": v for k, v in model.state_dict().items() if not k.endswith("hc.expansion")}
    assert len(state) < len(model.state_dict())
    hp = {"config": cfg.to_dict(), "pert_map": FT_PERTS, "control": "sham", "embed_dim": D, "batch_map": {},
          "lora_applied": True}
    rebuilt, _, hp_out = build_for_checkpoint({"state_dict": state, "hyper_parameters": hp}, "old.ckpt")
    expansions = [v for k, v in rebuilt.state_dict().items() if k.endswith("hc.expansion")]
    assert expansions and all(torch.equal(e, torch.ones_like(e)) for e in expansions)
    assert hp_out["legacy_copies_expansion"] is True


def test_a_base_that_already_has_adapters_is_refused(base, tmp_path):
    path, _ = base
    cfg = _finetune_cfg(path)
    model, _, _ = build_for_training(cfg, D, FT_PERTS, "sham")
    hp = {"config": cfg.to_dict(), "pert_map": FT_PERTS, "control": "sham", "embed_dim": D, "batch_map": {}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hp},
               tmp_path / "finetuned.ckpt")
    with pytest.raises(CheckpointError, match="already contains LoRA or mHC"):
        build_for_training(_finetune_cfg(tmp_path / "finetuned.ckpt"), D, FT_PERTS, "sham")


def test_base_embedding_size_and_depth_mismatches_are_one_line_errors(base):
    path, _ = base
    with pytest.raises(CheckpointError, match="10-d embeddings but the data's embedding has 50"):
        build_for_training(_finetune_cfg(path), 50, FT_PERTS, "sham")
    deeper = load_config(overrides=[f"model.init_from={path}", "model.kwargs.use_mhc=true",
                                    "model.kwargs.mhc.layer_indices=[3]"])  # valid for 4 layers, the base has 2
    with pytest.raises(ConfigError, match="the base model has 2 layers"):
        build_for_training(deeper, D, FT_PERTS, "sham")
