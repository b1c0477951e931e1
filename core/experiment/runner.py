"""``run_experiment(spec)``: every (arm, seed) of an experiment trained and evaluated as an ordinary run.

- Each job is ``python -m core train`` started by ``core.runs.launch_run`` into the run folder
  ``<runs root>/<experiment>.<arm>.s<seed>``, then ``python -m core evaluate`` on it. The seed sets
  ``training.seed``, which also seeds the split, so every arm sees the same held-out cells for a seed.
- Up to ``jobs`` jobs run at once: the CPU count on a CPU machine (each training then gets
  cpu_count // jobs torch threads), else one per visible GPU (CUDA_VISIBLE_DEVICES set per job).
- Resumable: a run that completed and was evaluated is skipped, one that completed is only evaluated, one
  that was interrupted or cancelled continues from its last checkpoint (``core.runs.resume_run``), one that
  never got to training is started afresh. A run that failed (e.g. its loss became NaN at a high learning
  rate) is a result, counted as such, and not retried: delete its folder to run it again. The experiment's
  spec is kept in ``<runs root>/experiments/<experiment>/experiment.json``; rerunning with different overrides for an
  existing arm is refused (the paired comparison would mix two settings).
- Ctrl-C cancels the runs in flight (they can be resumed by running the same command again).
- ``launcher="slurm"`` submits one job per run through submitit instead (``core.experiment.cluster``);
  resuming and the results are the same.

The results (``core.experiment.results``) go to the same experiment folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError, UserError
from core.experiment.arms import Arm
from core.progress import ProgressBar
from core.runs import (
    REPO_ROOT,
    TERMINAL_STATES,
    atomic_write_json,
    cancel_run,
    ensure_dir,
    launch_run,
    read_status,
    resume_run,
    runs_root,
    safe_run_name,
)

POLL_S = 0.5
EXPERIMENTS_FOLDER = "experiments"


@dataclass
class ExperimentSpec:
    name: str
    arms: list[Arm]
    seeds: list[int]
    common: list[str] = field(default_factory=list)  # overrides of every arm, applied before the arm's own

    def to_dict(self) -> dict:
        return {"name": self.name, "seeds": list(self.seeds), "common": list(self.common),
                "arms": [{"name": a.name, "overrides": list(a.overrides), "reference": a.reference}
                         for a in self.arms]}


@dataclass
class Job:
    arm: Arm
    seed: int
    run_name: str
    overrides: list[str]
    run_dir: Path
    state: str = "pending"  # pending | training | evaluating | done | failed
    message: str = ""
    process: subprocess.Popen | None = None
    slot: int | None = None


def experiment_dir(name: str, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else runs_root()
    return root / EXPERIMENTS_FOLDER / safe_run_name(name)


def run_name(spec: ExperimentSpec, arm: Arm, seed: int) -> str:
    return safe_run_name(f"{spec.name}.{arm.slug}.s{seed}")


def plan(spec: ExperimentSpec, root: Path) -> list[Job]:
    """Seed-major, so that every arm of the first seed is done first and pairs complete early."""
    jobs = []
    for seed in spec.seeds:
        for arm in spec.arms:
            name = run_name(spec, arm, seed)
            overrides = [*spec.common, *arm.overrides, f"training.seed={seed}", f"run.name={name}"]
            jobs.append(Job(arm, seed, name, overrides, root / name))
    return jobs


def check_overrides(jobs: list[Job]) -> bool:
    """Parse every arm's overrides once here, so a typo is one line now rather than k failed runs; returns
    whether any arm fine-tunes the demo base (which is then built once before the runs start)."""
    from core.config import load_config

    demo_base = False
    for job in jobs:
        try:
            cfg = load_config(overrides=job.overrides)
        except ConfigError as err:
            raise ConfigError(f"arm {job.arm.name}: {err}") from None
        demo_base |= cfg.model.init_from == "demo"
    return demo_base


def check_spec(spec: ExperimentSpec, folder: Path) -> None:
    """Refuse to reuse an experiment folder whose arms of the same name had other overrides."""
    path = folder / "experiment.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    old_arms = {a["name"]: a["overrides"] for a in old.get("arms", [])}
    changed = [a.name for a in spec.arms if a.name in old_arms and list(a.overrides) != old_arms[a.name]]
    if old.get("common") != list(spec.common) or changed:
        what = f"arm {', '.join(changed)}" if changed else "the overrides shared by every arm"
        raise ConfigError(f"experiment {spec.name!r} already exists with other settings for {what}; "
                          "give it another --name, or run it again with the same settings to resume")


def device_slots(jobs: int | None) -> tuple[int, list[dict], int]:
    """(parallel jobs, extra environment per slot, torch threads per training)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        count = min(jobs or gpus, gpus)
        return count, [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(count)], 1
    cpus = os.cpu_count() or 1
    count = max(1, jobs or cpus)
    threads = max(1, cpus // count)
    return count, [{"OMP_NUM_THREADS": str(threads)} for _ in range(count)], threads


def _job_needs(job: Job) -> str:
    """What is left to do for the job's run folder: train | resume | restart | evaluate | nothing | failed."""
    if not job.run_dir.is_dir():
        return "train"
    status = read_status(job.run_dir)
    if status["state"] in ("queued", "running"):
        raise UserError(f"run {job.run_name} is still {status['state']} (another experiment process?); "
                        "wait for it or cancel it with 'python -m core runs cancel'")
    if status["state"] == "completed":
        metrics = job.run_dir / "eval" / "metrics.json"
        final = job.run_dir / "checkpoints" / "final.ckpt"
        fresh = metrics.is_file() and (not final.is_file() or metrics.stat().st_mtime >= final.stat().st_mtime)
        return "nothing" if fresh else "evaluate"
    if not (job.run_dir / "config.yaml").is_file():
        return "restart"
    return "failed" if status["state"] == "failed" else "resume"


class Runner:
    def __init__(self, spec: ExperimentSpec, root: Path | None = None, jobs: int | None = None, log=print,
                 progress: bool | None = None, launcher: str = "local", cluster=None):
        """``progress``: a bar of runs done / total on a terminal or in a notebook (core/progress.py).
        ``launcher``: 'local' (processes of this machine, ``jobs`` at a time), or 'slurm' / 'submitit-local'
        (one submitit job per run, ``core.experiment.cluster``; ``cluster``: its ClusterOptions)."""
        self.spec, self.log, self.progress = spec, log, progress
        self.launcher, self.cluster = launcher, cluster
        self.root = Path(root).expanduser().resolve() if root is not None else runs_root()
        self.folder = experiment_dir(spec.name, self.root)
        self.jobs = plan(spec, self.root)
        self.parallel, self.slot_env, self.threads = device_slots(jobs)
        self.counts = {"skipped": 0, "trained": 0, "resumed": 0, "evaluated": 0, "failed": 0}

    def _start(self, job: Job, slot: int) -> None:
        env = self.slot_env[slot]
        extra = [f"training.num_threads={self.threads}"] if "OMP_NUM_THREADS" in env else []
        need = _job_needs(job)
        job.slot = slot
        if need == "evaluate":
            self._start_evaluation(job)
            return
        if need == "restart":
            shutil.rmtree(job.run_dir)  # made by an earlier attempt that never reached training: nothing to keep
        if need == "resume":
            resume_run(job.run_dir, extra, extra_env=env)
            self.counts["resumed"] += 1
        else:
            made = launch_run([*job.overrides, *extra], job.run_name, root=self.root, extra_env=env)
            if made != job.run_dir:  # another process took the name between the check and the launch
                raise UserError(f"run folder {job.run_dir} appeared while starting it; run the experiment again")
            self.counts["trained"] += 1
        job.state = "training"
        self.log(f"  {'resuming' if need == 'resume' else 'training'} {job.run_name}")

    def _start_evaluation(self, job: Job) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.slot_env[job.slot])
        command = [sys.executable, "-m", "core", "evaluate", str(job.run_dir), "--no-predictions"]
        with open(job.run_dir / "eval_log.txt", "ab") as handle:
            job.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                           stdout=handle, stderr=subprocess.STDOUT)
        job.state = "evaluating"
        self.log(f"  evaluating {job.run_name}")

    def _advance(self, job: Job) -> None:
        """Move a job on when its training or evaluation has ended."""
        if job.state == "training":
            status = read_status(job.run_dir)
            if status["state"] == "completed":
                self._start_evaluation(job)
            elif status["state"] in (*TERMINAL_STATES, "interrupted"):
                self._fail(job, f"training {status['state']}: {status.get('message') or 'see log.txt'}")
        elif job.state == "evaluating" and job.process.poll() is not None:
            code, job.process = job.process.returncode, None
            if code == 0:
                job.state = "done"
                self.counts["evaluated"] += 1
                self.log(f"  done {job.run_name}")
            else:
                self._fail(job, f"evaluation failed (exit {code}): {_last_line(job.run_dir / 'eval_log.txt')}")

    def _fail(self, job: Job, message: str) -> None:
        job.state, job.message = "failed", message
        self.counts["failed"] += 1
        self.log(f"  FAILED {job.run_name}: {message}")

    def run(self) -> list[Job]:
        check_spec(self.spec, self.folder)
        demo_base = check_overrides(self.jobs)
        executor = None
        if self.launcher != "local":
            from core.experiment.cluster import make_executor

            executor = make_executor(self.launcher, self.folder, self.cluster)  # no cluster: one line, nothing run
        ensure_dir(self.folder)
        atomic_write_json(self.folder / "experiment.json", self.spec.to_dict())
        todo = deque()
        for job in self.jobs:
            need = _job_needs(job)
            if need == "nothing":
                job.state = "done"
                self.counts["skipped"] += 1
            elif need == "failed":
                message = read_status(job.run_dir).get("message") or "see its log.txt"
                self._fail(job, f"failed in an earlier attempt (kept as a result; delete the folder to retry): "
                                f"{message}")
            else:
                todo.append(job)
        at_a_time = f"{self.parallel} at a time" if executor is None else f"through {self.launcher}"
        self.log(f"experiment {self.spec.name}: {len(self.jobs)} runs ({len(self.spec.arms)} arms x "
                 f"{len(self.spec.seeds)} seeds), {self.counts['skipped']} already done, {at_a_time}")
        if todo and demo_base:
            self._build_demo_base()
        if executor is not None:
            self._run_submitted(executor, todo)
            return self.jobs
        active: list[Job] = []
        bar = ProgressBar(len(self.jobs), f"experiment {self.spec.name}", unit="run", enabled=self.progress)
        try:
            while todo or active:
                free = [s for s in range(self.parallel) if s not in {j.slot for j in active}]
                while todo and free:
                    job = todo.popleft()
                    self._start(job, free.pop(0))
                    active.append(job)
                for job in list(active):
                    self._advance(job)
                    if job.state in ("done", "failed"):
                        active.remove(job)
                ended = sum(job.state in ("done", "failed") for job in self.jobs)
                bar.update(ended, training=sum(job.state == "training" for job in active),
                           evaluating=sum(job.state == "evaluating" for job in active))
                if active:
                    time.sleep(POLL_S)  # polling run folders for their state, as the app does
        except BaseException:
            self._stop(active)
            raise
        finally:
            bar.close()
        return self.jobs

    def _run_submitted(self, executor, todo) -> None:
        """Submit every job left to do at once (the cluster schedules them), then follow them to their end."""
        from core.experiment.cluster import cluster_job

        submitted = []
        for job in todo:
            need = _job_needs(job)
            handle = executor.submit(cluster_job, need, job.overrides, job.run_name, str(self.root), [])
            if need == "resume":
                self.counts["resumed"] += 1
            elif need != "evaluate":
                self.counts["trained"] += 1
            job.state = "submitted"
            submitted.append((job, handle))
            self.log(f"  submitted {job.run_name} ({need}) as job {handle.job_id}")
        bar = ProgressBar(len(self.jobs), f"experiment {self.spec.name}", unit="run", enabled=self.progress)
        try:
            while any(job.state == "submitted" for job, _ in submitted):
                for job, handle in submitted:
                    if job.state != "submitted" or not handle.done():
                        continue
                    try:
                        outcome = handle.result()
                    except Exception as err:  # the job itself died (node failure, time limit): one line
                        outcome = f"failed: the cluster job {handle.job_id} ended with {type(err).__name__}: " \
                                  f"{str(err).strip().splitlines()[-1][:300] if str(err).strip() else ''}"
                    if outcome == "done":
                        job.state = "done"
                        self.counts["evaluated"] += 1
                        self.log(f"  done {job.run_name}")
                    else:
                        self._fail(job, outcome.removeprefix("failed: "))
                bar.update(sum(job.state in ("done", "failed") for job in self.jobs))
                time.sleep(POLL_S)
        except BaseException:
            for job, handle in submitted:
                if job.state == "submitted":
                    handle.cancel(check=False)
                    if job.run_dir.is_dir():
                        cancel_run(job.run_dir)
            self.log("stopped; the submitted jobs were cancelled: run the same command to resume")
            raise
        finally:
            bar.close()

    def _build_demo_base(self) -> None:
        """Pretrain the demo base once here rather than in every parallel run at the same time."""
        from core.training.demo_base import demo_base_path

        if demo_base_path().exists():
            return
        self.log("  building the demo base model once (about half a minute)")
        build = "from core.training.demo_base import demo_base_checkpoint; from core.training.run import train; " \
                "demo_base_checkpoint(train)"
        code = subprocess.call([sys.executable, "-c", build], cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        if code != 0:
            raise UserError("building the demo base model failed; run 'python -m core train model.init_from=demo' "
                            "once to see why")

    def _stop(self, active: list[Job]) -> None:
        for job in active:
            if job.state == "training":
                cancel_run(job.run_dir)
            elif job.process is not None:
                job.process.terminate()
                job.process.wait()
        if active:
            self.log(f"stopped; {len(active)} runs in flight were cancelled: run the same command to resume")


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def run_experiment(spec: ExperimentSpec, root: Path | None = None, jobs: int | None = None, log=print,
                   progress: bool | None = None, launcher: str = "local", cluster=None) -> dict:
    """Run (or resume) the experiment, then analyse it; returns the results written to its folder.
    ``launcher`` / ``cluster``: see ``Runner``."""
    from core.experiment.results import analyse, write_results

    if not spec.seeds:
        raise ConfigError("an experiment needs at least one seed (--seeds 3)")
    started = time.time()
    runner = Runner(spec, root, jobs, log, progress, launcher, cluster)
    finished = runner.run()
    results = analyse(spec, finished)
    results["seconds"] = round(time.time() - started, 1)
    results["counts"] = runner.counts
    results["parallel"] = runner.parallel
    write_results(runner.folder, results)
    return results
