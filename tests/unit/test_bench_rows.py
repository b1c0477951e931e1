"""The benchmark rows of issue 15 run (``--quick``) and say what they measured; no timing is checked here."""

import shutil
import subprocess
import sys

import pytest
import torch

from bench import bench_arc, bench_scale
from bench.gpu_rows import gpu_rows
from bench.scale_worker import make_step


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_bench_without_cuda_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "bench", "--gpu", "--quick"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "CUDA" in out.stderr and "Traceback" not in out.stderr


def test_the_gpu_step_code_trains_on_the_cpu_under_bf16_autocast():
    step, cells, model = make_step(hidden=32, layers=2, heads=4, dim=12, set_len=8, sets=2, mhc=True,
                                   device="cpu", autocast=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = [step() for _ in range(3)]
    assert cells == 16 and all(torch.isfinite(torch.tensor(losses)))
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_" in n for n in moved) and any(".hc." in n for n in moved)
    frozen = [p for n, p in model.named_parameters() if "backbone" in n and "lora_" not in n and ".hc." not in n
              and "head_logits" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_gpu_rows_run_on_the_cpu_with_the_same_code():
    rows = gpu_rows(quick=True, device="cpu", compile=False)
    assert [r.name.split(",")[0] for r in rows] == [
        "demo LoRA step with dynamic mHC", "demo LoRA step with static mHC (mhc.dynamic=false)", "ST LoRA step",
        "ST-Tahoe-sized step", "ST-Tahoe-sized step"]
    assert all(r.ratio > 0 and r.met in (True, False) and r.baseline is rows[0].baseline for r in rows[:2])
    assert all(r.extra["cells_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_the_gpu_benchs_compiled_rows_compile_on_the_cpu(monkeypatch):
    """The compiled rows' code (training.compile's in-place compile, timed against the same step eager) on the
    CPU; CUDA needs Triton instead of a C++ compiler, and says so in the row when it is missing. Only the mHC
    row is compiled: its model holds the plain one's LoRA LLaMA too, and each cold compile takes minutes under
    load."""
    from bench import gpu_rows as module
    from core.training.compile import missing_compiler

    if missing_compiler("cpu"):
        pytest.skip(f"inductor cannot compile here: {missing_compiler('cpu')}")
    from torch._dynamo.utils import counters

    tiny = dict(hidden=32, layers=2, heads=4, dim=12, set_len=8, sets=2)
    counters.clear()
    rows = module._compiled_rows(tiny, repeats=2, device="cpu", sync=lambda: None, variants=(True,))
    assert counters["stats"]["unique_graphs"] >= 1  # the row's model was compiled, not run eagerly
    assert [r.name.split(" step")[0] for r in rows] == ["demo LoRA + mHC"]
    assert all(r.ratio > 0 and r.baseline_name == "the same step eager" for r in rows)
    assert all(r.extra["compile_s"] > 10 * r.baseline.median_s for r in rows)  # the compile is in the first call
    monkeypatch.setattr("core.training.compile.missing_compiler", lambda device: "Triton is not installed")
    skipped = module._compiled_rows(tiny, repeats=2, device="cpu", sync=lambda: None)
    assert [r.timing for r in skipped] == [None, None] and skipped[0].extra["skipped"] == "Triton is not installed"


def test_arc_rows_are_skipped_without_peers(monkeypatch):
    monkeypatch.delenv("ARC_STATE_PYTHON", raising=False)
    rows = bench_arc.run(quick=True)
    assert rows and all(r.timing is None and "--peers" in r.extra["skipped"] for r in rows)


@pytest.mark.slow
def test_scale_rows_run_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_DATA_CACHE", str(tmp_path))
    rows = bench_scale.run(quick=True)
    names = [r.name for r in rows]
    assert len(rows) == 5 and "2400 cells x 200 genes" in names[1]
    velocity = rows[1]
    assert velocity.met in (True, False) and velocity.extra["peak_mb"] > 0
    assert rows[2].extra["steps"] > 0 and rows[2].extra["train_cells_per_s"] > 0
    assert rows[4].baseline is rows[3].timing or rows[4].baseline == rows[3].timing


def test_app_large_file_rows_use_the_cached_file_or_quick_builds_a_small_one(tmp_path, monkeypatch):
    import anndata as ad

    from bench.bench_app import large_file
    from bench.bench_scale import FULL, cache_name

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("ST_DATA_CACHE", str(cache))
    small = large_file(quick=True, scratch=tmp_path)  # no large file built: the 2,400 x 200 one, in scratch
    assert small.parent == tmp_path and small.name == cache_name(bench_scale.QUICK)
    assert ad.read_h5ad(small, backed="r").shape == (2400, 200)
    full = cache / cache_name(FULL)
    assert full.name.startswith("bench_burn_sham_100008x2000_")
    full.write_bytes(b"")  # the cached file and the record of its build: taken as they are, never rebuilt
    full.with_suffix(".build.json").write_text('{"seconds": 1}')
    assert large_file(quick=True, scratch=tmp_path) == full
    assert large_file(quick=False, scratch=tmp_path) == full


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium")
def test_app_large_file_rows_run_in_the_browser_on_the_quick_file(tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    from app import serve
    from bench.bench_app import large_file, large_file_rows

    monkeypatch.setenv("ST_DATA_CACHE", str(tmp_path / "cache"))
    path = large_file(quick=True, scratch=tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=serve.chromium_path(), args=serve.CHROMIUM_ARGS)
        try:  # an empty runs folder: Train and Inspect draw no run figures
            rows = large_file_rows(browser, {"ST_RUNS_DIR": str(tmp_path)}, path, repeats=1,
                                   charts={"Data": 1, "Train": 0, "Inspect": 0})
        finally:
            browser.close()
    assert [r.name.split(" with ")[0] for r in rows] == [
        "load a 2,400 x 200 file from the sidebar (server path) to the Data page drawn (browser)",
        "page switch Data -> Inspect", "page switch Inspect -> Train", "page switch Train -> Data"]
    assert all(r.timing.repeats == 1 and r.timing.median_s > 0 and r.met in (True, False) for r in rows)
    assert rows[0].extra["file_mb"] >= 0


@pytest.mark.slow
def test_the_mhc_step_breakdown_rows_run_quick_and_their_parts_add_up(demo_adata):
    from bench import step_breakdown

    breakdown, probe = step_breakdown.run(quick=True)
    plain, mhc = breakdown.extra["plain_ms"], breakdown.extra["mhc_ms"]
    for phases in (plain, mhc):
        # the blocks' clock sits inside forward and backward, and measures something in each
        assert 0 < phases["blocks_forward"] < phases["forward"]
        assert 0 < phases["blocks_backward"] < phases["backward"]
        assert phases["optimiser"] > 0
    # the three parts of mHC's extra time are the phase medians' differences, nothing dropped
    parts = sum(breakdown.extra[k] for k in ("extra_ms_blocks_slower", "extra_ms_mhc_own_work", "extra_ms_optimiser"))
    whole = sum(mhc[k] for k in ("forward", "backward", "optimiser")) - sum(plain[k] for k in
                                                                            ("forward", "backward", "optimiser"))
    assert parts == pytest.approx(whole, abs=0.05)
    assert breakdown.baseline is not None and breakdown.timing is not None
    # the probe copies the demo's streams (256 tokens x 4 streams x 128 floats) before each of the 4 blocks, twice
    assert "512 KB" in probe.name and probe.extra["copies_per_step"] == 8
    assert probe.extra["beyond_the_copies_ms"] == pytest.approx(
        probe.extra["step_slower_ms"] - probe.extra["copies_alone_ms"], abs=0.02)
