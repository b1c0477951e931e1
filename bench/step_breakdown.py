"""Where the demo mHC step's extra time goes, timed without torch.profiler.

torch.profiler with input shapes inflates the step's elementwise operations several-fold here (SiLU on
[8, 32, 512]: 795 us a call under it, 62 us timed by wrapping the module), so per-operation profiles mislead.
Two rows time the phases instead:

- breakdown: the demo LoRA step, plain and with dynamic mHC, split into forward, backward and the optimiser
  (gradient clipping and AdamW), and within forward and backward the LLaMA blocks' own time (forward by wrapping
  each block, backward from the gradient reaching a block's output to the gradient leaving its input). What is
  left over, beyond the blocks, is mHC's own work: norm, projection, coefficient kernels, mixing and write-out.
- cache probe: the plain step with one copy of an mHC layer's stream size (N n C floats, 512 KB at the demo
  size) before every block, forward and backward, against the plain step: how much a block slows when that much
  other memory passed through the core's cache since its last use, beyond the copies' own cost.

The breakdown's hooks add a view per block to both of its steps alike, and the probe's two steps carry none;
ratios and differences are read within one row.
Shapes: N tokens, n streams, C hidden size.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from bench.harness import Row, interleaved

N_STREAMS = 4


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The HF LLaMA blocks of ``model``, also inside mHC wrappers (their ``.block``)."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return [m for m in model.modules() if isinstance(m, LlamaDecoderLayer)]


class _Clock:
    """Seconds spent in the blocks' forward and backward since the last ``reset``."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.forward = self.backward = 0.0

    def wrap(self, block: torch.nn.Module) -> None:
        inner = block.forward

        def timed(hidden_states, *args, **kwargs):
            started = {}
            entering = hidden_states.view_as(hidden_states)  # its own tensor, so its hook is this block's
            if entering.requires_grad:
                entering.register_hook(lambda grad: self._add_backward(started))
            start = time.perf_counter()
            output = inner(entering, *args, **kwargs)
            self.forward += time.perf_counter() - start
            leaving = output[0] if isinstance(output, tuple) else output
            if leaving.requires_grad:
                leaving.register_hook(lambda grad: started.__setitem__("t", time.perf_counter()))
            return output

        block.forward = timed

    def _add_backward(self, started: dict) -> None:
        if "t" in started:
            self.backward += time.perf_counter() - started["t"]


class _Touch(torch.autograd.Function):
    """The identity, copying ``source`` into ``target`` once in the forward and once in the backward."""

    @staticmethod
    def forward(ctx, x, source, target):
        ctx.buffers = (source, target)
        target.copy_(source)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        source, target = ctx.buffers
        target.copy_(source)
        return grad, None, None


@dataclasses.dataclass
class _Phased:
    """One demo LoRA step timed by phase: ``phases`` and ``clock`` add up seconds over calls; ``copies`` counts
    the probe's copies; ``tokens`` is the batch's N, ``width`` the blocks' hidden size C."""

    step: object
    phases: dict
    clock: _Clock
    copies: list
    tokens: int
    width: int


def _phased_step(extra: list[str], touch_floats: int = 0, block_clock: bool = True) -> _Phased:
    """bench_training's demo step (its batch and model) with ``extra`` overrides, timed by phase; with
    ``block_clock``, the blocks' own time too; with ``touch_floats``, a copy of that many floats before every block
    in forward and backward."""
    from bench.bench_training import demo_step, demo_step_parts

    module, model, optimizer, batch = demo_step_parts(extra)
    blocks = _blocks(model)
    phases = {"forward": 0.0, "backward": 0.0, "optimiser": 0.0}
    phased = _Phased(demo_step(module, model, optimizer, batch, phases), phases, _Clock(), [0],
                     batch["z_control"].shape[0] * batch["z_control"].shape[1], blocks[0].self_attn.q_proj.in_features)
    if block_clock:
        for block in blocks:
            phased.clock.wrap(block)
    if touch_floats:
        source, target = torch.randn(touch_floats), torch.empty(touch_floats)
        for block in blocks:
            def touched(hidden_states, *args, _inner=block.forward, **kwargs):
                phased.copies[0] += 2
                return _inner(_Touch.apply(hidden_states, source, target), *args, **kwargs)
            block.forward = touched
    return phased


def _sizes(quick: bool) -> tuple[int, int]:
    return (3, 3) if quick else (9, 10)


def breakdown_row(quick: bool) -> Row:
    repeats, per_sample = _sizes(quick)
    parts = {name: _phased_step(extra) for name, extra in (("plain", []), ("mhc", ["model.kwargs.use_mhc=true"]))}
    samples = {name: [] for name in parts}

    def sampled(name):
        part = parts[name]

        def run():
            for key in part.phases:
                part.phases[key] = 0.0
            part.clock.reset()
            part.step()
            samples[name].append({**part.phases, "blocks_forward": part.clock.forward,
                                  "blocks_backward": part.clock.backward})
        return run

    timings = interleaved({name: sampled(name) for name in parts}, repeats=repeats, steps_per_sample=per_sample)
    ms = {}
    for name, calls in samples.items():
        calls = calls[-repeats * per_sample:]  # the timed calls, not the warm-up
        ms[name] = {key: round(1e3 * statistics.median(c[key] for c in calls), 2) for key in calls[0]}
    plain, mhc = ms["plain"], ms["mhc"]

    def in_blocks(m):
        return m["blocks_forward"] + m["blocks_backward"]

    def outside_blocks(m):
        return m["forward"] + m["backward"] - in_blocks(m)

    extra = {"plain_ms": plain, "mhc_ms": mhc,
             "extra_ms_blocks_slower": round(in_blocks(mhc) - in_blocks(plain), 2),
             "extra_ms_mhc_own_work": round(outside_blocks(mhc) - outside_blocks(plain), 2),
             "extra_ms_optimiser": round(mhc["optimiser"] - plain["optimiser"], 2)}
    return Row("training", "demo LoRA step, dynamic mHC: its extra time in the blocks, in mHC's own work and in the "
               "optimiser (median step of each phase)", timings["mhc"], "same step without mHC", timings["plain"],
               extra=extra)


def cache_probe_row(quick: bool) -> Row:
    repeats, per_sample = _sizes(quick)
    plain = _phased_step([], block_clock=False)  # neither arm carries the block clock's hooks
    floats = plain.tokens * N_STREAMS * plain.width
    touched = _phased_step([], touch_floats=floats, block_clock=False)
    timings = interleaved({"plain": plain.step, "touched": touched.step}, repeats=repeats,
                          steps_per_sample=per_sample)
    touched.copies[0] = 0
    touched.step()
    per_step = touched.copies[0]
    source, target = torch.randn(floats), torch.empty(floats)
    start = time.perf_counter()
    for _ in range(200):
        target.copy_(source)
    alone_ms = (time.perf_counter() - start) / 200 * per_step * 1e3
    slower_ms = (timings["touched"].median_s - timings["plain"].median_s) * 1e3
    return Row("training", f"plain demo LoRA step with {floats * 4 // 1024} KB (an mHC layer's streams, N n C "
               "floats) copied before every block, forward and backward", timings["touched"],
               "same step without the copies", timings["plain"],
               extra={"copies_per_step": per_step, "copies_alone_ms": round(alone_ms, 2),
                      "step_slower_ms": round(slower_ms, 2), "beyond_the_copies_ms": round(slower_ms - alone_ms, 2)})


def run(quick: bool) -> list[Row]:
    return [breakdown_row(quick), cache_probe_row(quick)]
