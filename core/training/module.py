"""The Lightning module: the ST model's losses, one optimisation step, validation.

    total = dist_loss(z_pred set, perturbed set) + lambda_t * velocity_lambda * L_vel(delta_z, v_z, confidence)
    lambda_t = min(1, step / velocity_warmup_steps)

dist_loss is geomloss's energy distance (default) or Sinkhorn divergence between the predicted and the real
perturbed set of each pair. L_vel is core.velocity_loss's alignment or L2 loss over the control cells.
Devices, precision, checkpoints and files belong to the Trainer and the callbacks, not here.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from geomloss import SamplesLoss

from core.velocity_loss import VelocityAlignmentLoss, VelocityRegularizationLoss


class NonFiniteLossError(RuntimeError):
    def __init__(self, step: int, term: str):
        super().__init__(f"the {term} loss became NaN or infinite at step {step}; lower training.learning_rate "
                         "or check the data for extreme values")
        self.step, self.term = step, term


class STModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, hparams: dict):
        super().__init__()
        self.model = model
        self.save_hyperparameters(hparams)
        m = hparams["config"]["model"]["kwargs"]
        self.kw = m
        self.lr = hparams["config"]["training"]["learning_rate"]
        self.weight_decay = hparams["config"]["training"]["weight_decay"]
        self.grad_clip = hparams["config"]["training"]["grad_clip"]
        loss = "energy" if m["dist_loss"] == "energy" else "sinkhorn"
        self.dist = SamplesLoss(loss, blur=m["blur"], backend="tensorized") if loss == "sinkhorn" else \
            SamplesLoss("energy", backend="tensorized")
        self.velocity_loss = None
        if m["use_velocity_alignment"]:
            self.velocity_loss = (VelocityAlignmentLoss(m["velocity_beta"], True, m["velocity_min_confidence"])
                                  if m["velocity_loss"] == "alignment"
                                  else VelocityRegularizationLoss(m["velocity_min_confidence"]))
        self.last_metrics: dict = {}
        self.last_grad_norm = float("nan")
        self._step_started = time.perf_counter()

    def forward(self, z_control, pert):
        return self.model(z_control, pert)

    def lambda_t(self, step: int) -> float:
        warmup = self.kw["velocity_warmup_steps"]
        return 1.0 if warmup <= 0 else min(1.0, step / warmup)

    def _losses(self, batch, step: int):
        z_control = batch["z_control"]
        z_pred = self(z_control, batch["pert"])
        dist = self.dist(z_pred.float(), batch["z_perturbed"].float()).mean()
        named = {"dist_loss": dist}
        total = dist
        velocity_metrics = {}
        if self.velocity_loss is not None and "v_z" in batch:
            d = z_control.shape[-1]
            delta_z = (z_pred - z_control).reshape(-1, d)
            vel, velocity_metrics = self.velocity_loss(delta_z, batch["v_z"].reshape(-1, d),
                                                       batch["confidence"].reshape(-1))
            lam = self.lambda_t(step)
            named["vel_loss"] = vel
            total = total + lam * self.kw["velocity_lambda"] * vel
            velocity_metrics["lambda_t"] = lam
        return total, named, velocity_metrics

    def training_step(self, batch, batch_idx):
        step = self.global_step
        total, named, vel = self._losses(batch, step)
        values = torch.stack([total.detach()] + [v.detach() for v in named.values()]).float().tolist()
        if not all(map(_finite, values)):
            bad = [name for name, v in zip(["total"] + list(named), values) if not _finite(v)]
            raise NonFiniteLossError(step, bad[-1] if len(bad) > 1 else bad[0])
        metrics = dict(zip(["loss"] + list(named), values))
        for key, value in vel.items():
            metrics["vel_" + key if key in ("direction", "magnitude", "regularization") else key] = value
        metrics["cells"] = int(batch["z_control"].shape[0] * batch["z_control"].shape[1])
        self.last_metrics = metrics
        return total

    def validation_step(self, batch, batch_idx):
        total, named, vel = self._losses(batch, self.global_step)
        n = batch["z_control"].shape[0]
        self.log("val_loss", named["dist_loss"], batch_size=n, prog_bar=False)
        self.log("val_dist_loss", named["dist_loss"], batch_size=n)
        if "cos_similarity" in vel:
            self.log("val_cos_similarity", vel["cos_similarity"], batch_size=n)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # the norm before clipping is what tells a stable run from an unstable one
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        clip = self.grad_clip if self.grad_clip > 0 else float("inf")
        self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
