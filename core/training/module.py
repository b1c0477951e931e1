"""The Lightning module: the ST model's losses, one optimisation step, validation.

    total    = dist_loss(z_pred set, perturbed set) + lambda_t * velocity_lambda * L_vel(delta_z, v_z, confidence)
    lambda_t = min(1, t / warm-up),   t = 1, 2, ... the number of the optimisation step
    warm-up  = velocity_warmup_fraction * (the run's optimisation steps) when that is set, else velocity_warmup_steps

dist_loss is geomloss's energy distance (default) or Sinkhorn divergence (with ``blur``) between each predicted
set and its real perturbed set, averaged over the sets of a batch. L_vel is core.velocity.loss's alignment
(1 - cos + beta * magnitude gap) or L2 loss over every control cell of the batch. The warm-up lets the
distributional loss place delta_z first, so the velocity term does not pull an untrained shift around.
Validation reports the distributional loss (``val_loss``, what "best" checkpoints are chosen on, so runs with
and without the velocity term are selected alike) and, with velocities, the velocity loss and its metrics.
Devices, precision, checkpoints and files belong to the Trainer and the callbacks, not here.
"""

from __future__ import annotations

import lightning as L
import torch
from geomloss import SamplesLoss

from core.errors import UserError
from core.velocity.loss import VelocityAlignmentLoss, VelocityRegularizationLoss

# velocity_loss metric name -> metrics.jsonl column (the run-folder contract)
VELOCITY_COLUMNS = {"direction": "vel_direction", "magnitude": "vel_magnitude", "regularization": "vel_l2",
                    "cos_similarity": "cos_similarity", "magnitude_st": "magnitude_st", "magnitude_v": "magnitude_v",
                    "avg_confidence": "avg_confidence"}


class NonFiniteLossError(UserError):
    def __init__(self, step: int, term: str):
        super().__init__(f"the {term} became NaN or infinite at step {step}; lower training.learning_rate or check "
                         "the data for extreme values")
        self.step, self.term = step, term


def distributional_loss(kind: str, blur: float) -> SamplesLoss:
    # tensorized: exact on the small sets used here, and needs no KeOps compiler
    if kind == "energy":
        return SamplesLoss("energy", backend="tensorized")
    return SamplesLoss("sinkhorn", p=2, blur=blur, backend="tensorized")


def velocity_loss(kw: dict):
    if not kw["use_velocity_alignment"]:
        return None
    if kw["velocity_loss"] == "alignment":
        return VelocityAlignmentLoss(kw["velocity_beta"], True, kw["velocity_min_confidence"])
    return VelocityRegularizationLoss(kw["velocity_min_confidence"])


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has the kernel (float parameters on CPU or CUDA): one pass over every tensor
    instead of about ten small ops per tensor, which was 11% of a demo-sized step on a CPU
    (bench/README.md). The update is AdamW's either way (tests/unit/test_optimizer.py)."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


class STModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, hparams: dict):
        super().__init__()
        self.model = model
        self.save_hyperparameters(hparams)
        self.kw = hparams["config"]["model"]["kwargs"]
        training = hparams["config"]["training"]
        self.lr, self.weight_decay = training["learning_rate"], training["weight_decay"]
        self.dist = distributional_loss(self.kw["dist_loss"], self.kw["blur"])
        self.velocity_loss = velocity_loss(self.kw)
        from core.mhc.gradients import GradientProbe
        from core.mhc.layer import find_mhc_layers

        self._gradient_probe = GradientProbe(model) if find_mhc_layers(model) else None
        self._probe_every = training.get("mhc_snapshot_every", 10)
        self.total_steps: int | None = None  # the run's optimisation steps, known once training starts
        self.step_metrics: dict = {}  # the last training step's row (see training_step)
        self.val_summary: dict = {}  # the last validation's means (the trainer picks best.ckpt from val_loss)
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_sets = 0

    def forward(self, z_control, pert, batch_idx=None):
        return self.model(z_control, pert, batch_idx)

    def lambda_t(self, step: int) -> float:
        """Warm-up weight of the velocity term at optimisation step ``step`` (1-based)."""
        warmup = self.warmup_steps()
        return 1.0 if warmup <= 0 else min(1.0, step / warmup)

    def warmup_steps(self) -> float:
        """velocity_warmup_fraction of the run's steps when set (steps before the run's length is known, e.g. in
        the validation pass before training: there the velocity term is only reported), else the step count."""
        fraction = self.kw.get("velocity_warmup_fraction")
        if fraction is None or not self.total_steps:
            return self.kw["velocity_warmup_steps"]
        return fraction * self.total_steps

    def on_train_start(self):
        total = self.trainer.estimated_stepping_batches
        self.total_steps = int(total) if total != float("inf") else None

    def losses(self, batch: dict, step: int) -> tuple[torch.Tensor, dict, dict]:
        """(total, {dist_loss, vel_loss}, velocity metrics) for one batch of sets."""
        z_control = batch["z_control"]
        z_pred = self(z_control, batch["pert"], batch.get("batch_idx"))
        dist = self.dist(z_pred.float(), batch["z_perturbed"].float()).mean()
        named, velocity_metrics, total = {"dist_loss": dist}, {}, dist
        if "genes_perturbed" in batch and self.kw.get("decoder_weight", 0.0) > 0:
            # Arc State's decoder loss: the decoded prediction against the same perturbed cells' HVG expression,
            # with the same distributional loss, weighted by decoder_weight (state_transition.py, training_step)
            counts = self.model.decode_genes(z_pred)
            decoder = self.dist(counts.float(), batch["genes_perturbed"].float()).mean()
            total = total + self.kw["decoder_weight"] * decoder
            named["decoder_loss"] = decoder
        if self.velocity_loss is not None:
            d = z_control.shape[-1]
            delta_z = (z_pred.float() - z_control.float()).reshape(-1, d)
            vel, raw = self.velocity_loss(delta_z, batch["v_z"].reshape(-1, d).float(),
                                          batch["confidence"].reshape(-1).float())
            lam = self.lambda_t(step)
            total = total + lam * self.kw["velocity_lambda"] * vel
            named["vel_loss"] = vel
            velocity_metrics = {VELOCITY_COLUMNS[k]: v for k, v in raw.items() if k in VELOCITY_COLUMNS}
            velocity_metrics["lambda_t"] = lam
        return total, named, velocity_metrics

    def training_step(self, batch, batch_idx):
        step = self.global_step + 1
        total, named, velocity_metrics = self.losses(batch, step)
        values = torch.stack([total.detach()] + [v.detach() for v in named.values()]).float().tolist()
        names = ["loss"] + list(named)
        # name the term that broke, not the total that inherits it: terms first, the total last
        for name, value in sorted(zip(names, values), key=lambda pair: pair[0] == "loss"):
            if value != value or abs(value) == float("inf"):
                raise NonFiniteLossError(step, "training loss" if name == "loss" else name.replace("_", " "))
        # cells this step trained on, over all DDP ranks: each rank's batch has the same size (DistributedSampler
        # gives every rank the same number of sets)
        cells = int(batch["z_control"].shape[0] * batch["z_control"].shape[1]) * self.trainer.world_size
        # This step's metrics row, written by the run-folder callback once the step is done (with its grad_norm
        # and step_time). Not self.log: Lightning's per-call bookkeeping of ~15 values cost 6-13% of a demo-sized
        # step (bench/README.md), and these values need no reduction across steps or devices.
        self.step_metrics = {**dict(zip(names, values)), **velocity_metrics, "cells": cells,
                             "epoch": self.current_epoch, "lr": self.trainer.optimizers[0].param_groups[0]["lr"]}
        return total

    def on_validation_epoch_start(self):
        self._val_sums, self._val_sets = {}, 0

    def validation_step(self, batch, batch_idx):
        _, named, velocity_metrics = self.losses(batch, max(self.global_step, 1))
        n = batch["z_control"].shape[0]
        values = {f"val_{k}": v.detach().float() for k, v in named.items()}
        values.update({f"val_{k}": torch.tensor(float(v)) for k, v in velocity_metrics.items() if k != "lambda_t"})
        for key, value in values.items():
            self._val_sums[key] = self._val_sums.get(key, 0.0) + value.cpu() * n
        self._val_sets += n

    def on_validation_epoch_end(self):
        # mean over validation sets (of every DDP rank); the fixed sets make successive values comparable
        keys = sorted(self._val_sums)
        totals = torch.stack([torch.as_tensor(self._val_sums[k], dtype=torch.float64) for k in keys]
                             + [torch.tensor(float(self._val_sets), dtype=torch.float64)])
        if self.trainer is not None and self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals.to(self.device), reduce_op="sum").cpu()
        summary = {k: float(v) / max(float(totals[-1]), 1.0) for k, v in zip(keys, totals[:-1])}
        summary["val_loss"] = summary.get("val_dist_loss", float("nan"))
        self.val_summary = summary
        self.log_dict({**summary, "step": float(self.global_step), "epoch": float(self.current_epoch)},
                      batch_size=max(self._val_sets, 1))
        if self.trainer.sanity_checking and self.logger is not None:
            # Lightning logs nothing in the sanity pass; its numbers are the step-0 starting point (the base model)
            self.logger.log_metrics({**summary, "epoch": 0}, step=0)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's hook, with the Trainer's gradient_clip_val; we clip by norm ourselves only to log the norm
        # before clipping, which tells a stable run from an unstable one (the Trainer's own clipping hides it)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        step = self.global_step + 1
        if self._gradient_probe is not None and (step == 1 or step % self._probe_every == 0):
            # does H_res learn beside LoRA? per layer, before clipping; at step 1 and with every mHC snapshot
            # (about 2 ms a call on a busy 2-core CPU: every step would add 6% to a demo step)
            sizes = self._gradient_probe()
            probes = {f"grad_h_res_{i}": float(g) for i, g in zip(sizes["layer_indices"], sizes["h_res"])}
            if hasattr(self.logger, "add_to_next_row"):  # the run folder's logger (core/training/logger.py)
                self.logger.add_to_next_row({**probes, "grad_lora": float(sizes["lora"])})
        clip = gradient_clip_val if gradient_clip_val else float("inf")
        self.step_metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip))

    def configure_optimizers(self):
        # mHC's mappings take their own learning rate (model.kwargs.mhc.lr_scale times the rest's): a few logits
        # per layer that start where they change nothing, beside LoRA matrices that start at zero
        from core.mhc.layer import mhc_parameters

        mhc_ids = {id(p) for p in mhc_parameters(self.model)}
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in mhc_ids]
        mhc = [p for p in mhc_parameters(self.model) if p.requires_grad]
        groups = [{"params": params}]
        if mhc:
            groups.append({"params": mhc, "lr": self.lr * self.kw["mhc"]["lr_scale"]})
        return adamw(groups, lr=self.lr, weight_decay=self.weight_decay)
