"""A checkpoint written before the layout move (d38ca1e: core/mhc.py and core/runs.py as single modules) loads with
today's code and gives the same predictions: state-dict keys follow attribute names, not module paths."""

from pathlib import Path

import numpy as np
import torch

from core.infer import load_model

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


def test_checkpoint_written_before_the_layout_move_loads_and_predicts_the_same():
    model, cfg, _ = load_model(LEGACY / "legacy_lora_mhc.ckpt", "cpu")
    saved = np.load(LEGACY / "legacy_lora_mhc.npz")
    assert cfg.model.kwargs.use_mhc and cfg.model.kwargs.lora.enable
    with torch.no_grad():
        out = model(torch.from_numpy(saved["z"]), torch.from_numpy(saved["pert"])).numpy()
    np.testing.assert_allclose(out, saved["out"], atol=1e-6)
