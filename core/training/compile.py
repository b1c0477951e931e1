"""``training.compile=true``: the model's forward compiled by ``torch.compile`` (inductor) for the run.

A compiled step fuses the many small elementwise ops around the matrix products (norms, activations, residual
adds, mHC's stream mixing): at the bench's ST size on a CPU it takes a step to about 0.7x arc-state's, against
about 0.9x eager, after a cold compile of about 25 s (the latest run's figures: README, Performance). The compile
happens in the first steps (and again for the first validation set of another size), so it pays off in long runs
and on GPUs, not in a demo fine-tune of a few seconds: off by default.

The model is compiled in place (``nn.Module.compile``), so its ``state_dict`` keys, checkpoints and LoRA/mHC
modules are those of an eager run. Inductor needs a C++ compiler on the CPU and Triton on CUDA; without one the
run trains eagerly and says so in its log rather than failing, and a graph that cannot be compiled runs eagerly
too (dynamo's ``suppress_errors``, set only while the run's fit lasts: a notebook's own compiles keep their
setting).
"""

from __future__ import annotations

import contextlib

import torch


def missing_compiler(device: str) -> str | None:
    """Why inductor cannot compile for ``device`` ("cpu", "cuda", "mps"), or None when it can."""
    if device.startswith("cuda"):
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (inductor needs it on CUDA)"
    if device.startswith("mps"):
        return "torch.compile's inductor backend does not support MPS in this setup"
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # noqa: BLE001 - inductor raises its own error types for a missing or broken compiler
        return "no C++ compiler was found (inductor needs one on the CPU: install g++ or set CXX)"
    return None


def compile_model(model: torch.nn.Module, device: str) -> str:
    """Compile ``model``'s forward in place for ``device`` when inductor can; returns the run log's note."""
    reason = missing_compiler(device)
    if reason:
        return f"training.compile: {reason}, so this run trains without compiling"
    model.compile()
    return "compiled with torch.compile (inductor): the first steps include the compile"


@contextlib.contextmanager
def eager_on_compile_errors():
    """While the fit runs: a graph inductor fails on runs eagerly (with dynamo's warning) instead of ending the
    run."""
    import torch._dynamo

    with torch._dynamo.config.patch(suppress_errors=True):
        yield
