"""The size of mHC's gradients beside LoRA's, read after a backward pass: does H_res learn at all? The trainer logs it
at step 1 and with every mHC snapshot; core.evaluation.mhc_drift reports it."""

from __future__ import annotations

import numpy as np


class GradientProbe:
    """Mean |gradient| per element of every mHC layer's H_res, H_pre and H_post logits (b_res, b_pre, b_post) and
    of the LoRA tensors, read after a backward pass. The parameter lists are collected once, and each call is a
    few fused reductions and one transfer to the host, so a trainer can call it every step."""

    def __init__(self, model):
        from core.mhc.layer import find_mhc_layers

        layers = find_mhc_layers(model)
        self.layer_indices = np.asarray([layer.layer_index for layer in layers])
        self.mappings = [p for layer in layers for p in (layer.hc.b_res, layer.hc.b_pre, layer.hc.b_post)]
        self.lora = [p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad]

    def __call__(self) -> dict:
        """{"layer_indices" [L], "h_res" [L], "h_pre" [L], "h_post" [L], "lora"}: LoRA's over the tensors whose
        gradient is not all zero (at init only B's, since B = 0 leaves A none; NaN without LoRA). A parameter
        without a gradient counts as 0."""
        import torch

        params = self.mappings + self.lora
        present = [p for p in params if p.grad is not None]
        if not present:
            n = len(self.layer_indices)
            return {"layer_indices": self.layer_indices, "h_res": np.zeros(n), "h_pre": np.zeros(n),
                    "h_post": np.zeros(n), "lora": float("nan")}
        l1 = torch.stack(torch._foreach_norm([p.grad.detach().float() for p in present], 1)).cpu().numpy()
        by_param = dict(zip(map(id, present), l1.astype(np.float64)))
        mean = [by_param.get(id(p), 0.0) / p.numel() for p in self.mappings]
        per_layer = np.asarray(mean).reshape(len(self.layer_indices), 3)
        sums = np.asarray([by_param.get(id(p), 0.0) for p in self.lora])
        sizes = np.asarray([p.numel() for p in self.lora], dtype=np.float64)
        nonzero = sums > 0
        lora = float(sums[nonzero].sum() / sizes[nonzero].sum()) if nonzero.any() else float("nan")
        return {"layer_indices": self.layer_indices, "h_res": per_layer[:, 0], "h_pre": per_layer[:, 1],
                "h_post": per_layer[:, 2], "lora": lora}


def mapping_gradient_sizes(model) -> dict:
    """``GradientProbe(model)()``: the mappings' and LoRA's mean |gradient| after a backward pass."""
    return GradientProbe(model)()
