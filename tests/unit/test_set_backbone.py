"""The set backbone (core/model/set_backbone.py) computes what HF's own forward does with an all-zero mask and
zero position ids, for the LLaMA and GPT-2 backbones and under LoRA and mHC, in value and in gradient."""

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from core.mhc.layer import apply_mhc_to_transformer
from core.model.set_backbone import run_set_backbone
from core.model.state_transition import make_backbone


def _hf_forward(backbone, h):
    b, s, _ = h.shape
    mask = torch.zeros(b, 1, s, s, dtype=h.dtype)
    return backbone(inputs_embeds=h, attention_mask=mask, position_ids=torch.zeros(b, s, dtype=torch.long)
                    ).last_hidden_state


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("wrap", ["none", "lora", "mhc"])
def test_set_backbone_matches_hf_forward_with_zero_mask_and_positions(kind, wrap):
    torch.manual_seed(0)
    backbone = make_backbone(kind, 32, 2, 4)
    if wrap == "lora":
        targets = ["q_proj", "v_proj"] if kind == "llama" else ["c_attn"]
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
                                backbone)
    elif wrap == "mhc":
        apply_mhc_to_transformer(backbone, 32)
    h = torch.randn(3, 7, 32)
    reference = copy.deepcopy(backbone)
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    ours, theirs = run_set_backbone(backbone, h1), _hf_forward(reference, h2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(backbone.named_parameters(), reference.parameters()):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_every_cell_sees_every_other_cell_and_order_does_not_matter():
    torch.manual_seed(0)
    backbone = make_backbone("llama", 32, 2, 4).eval()
    h = torch.randn(2, 5, 32)
    out = run_set_backbone(backbone, h)
    order = torch.randperm(5)
    torch.testing.assert_close(run_set_backbone(backbone, h[:, order]), out[:, order], rtol=1e-5, atol=1e-6)
    changed = h.clone()
    changed[:, -1] += 1.0  # the last cell moves: under a causal mask the first cell would not notice
    assert (run_set_backbone(backbone, changed)[:, 0] - out[:, 0]).abs().max() > 1e-3
