"""training.compile=true: the run's model compiled by torch.compile trains the same numbers as an eager run and
writes checkpoints an eager model loads; without a compiler the run trains eagerly and its log says why."""

import pytest
import torch
from support import SMALL_DEMO_KEYS, TINY_MODEL, assert_compiled_run_matches_eager

from core.config import load_config
from core.training.compile import compile_model, missing_compiler
from core.training.run import train


@pytest.fixture
def no_compiler(monkeypatch):
    import torch._inductor.config

    # inductor's own search (`c++ --version` for each candidate) over compilers that do not exist
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("no-such-c++-compiler-st",))


def test_a_missing_cpp_compiler_is_found_before_training_and_the_model_stays_eager(no_compiler):
    assert "no C++ compiler was found" in missing_compiler("cpu")
    model = torch.nn.Linear(3, 2)
    note = compile_model(model, "cpu")
    assert note.startswith("training.compile: no C++ compiler was found") and "without compiling" in note
    assert model._compiled_call_impl is None  # nothing was wrapped


def _args(small_demo, tmp_path, *extra):
    data = tmp_path / "d.h5ad"
    if not data.exists():
        small_demo.write_h5ad(data)
    return [*TINY_MODEL, f"data.kwargs.path={data}", *SMALL_DEMO_KEYS, "training.max_steps=3", "training.val_freq=3",
            "model.kwargs.lora.enable=false", f"run.root={tmp_path / 'runs'}", *extra]


def test_without_a_compiler_the_run_trains_eagerly_and_says_so(small_demo, tmp_path, no_compiler):
    run = train(load_config(overrides=_args(small_demo, tmp_path, "training.compile=true", "run.name=nocc")))
    log = (run / "log.txt").read_text()
    assert "training.compile: no C++ compiler was found" in log and "completed after 3 steps" in log


@pytest.mark.slow
def test_a_compiled_mhc_run_trains_the_eager_runs_numbers(small_demo, tmp_path):
    if missing_compiler("cpu"):
        pytest.skip(f"inductor cannot compile here: {missing_compiler('cpu')}")
    runs = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        runs[name] = train(load_config(overrides=_args(small_demo, tmp_path, f"training.compile={flag}",
                                                       "model.kwargs.use_mhc=true", f"run.name={name}")))
    assert_compiled_run_matches_eager(runs["eager"], runs["compiled"], steps=3)
