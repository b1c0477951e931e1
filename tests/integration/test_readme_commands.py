"""Every command the README shows is run here, so that the README cannot drift from the code.

The commands are read from the README itself: each line of a ```bash block, each ``$ `` line of a plain block
(with the output lines shown under it, which must appear in what the command prints), and each ```python block.
``HOW`` says how each kind of command is run; a command that matches no entry fails the first test, so a new
README command cannot go untested. Training commands get tiny settings appended (later overrides win), so the
whole README runs in a few minutes; everything else runs as written, in order, in one scratch folder (with
``tests/`` linked in, since the Arc examples name the committed fixtures).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from support import REPO

README = REPO / "README.md"
# few steps, a small validation, few sets: enough to write every file a later command reads
TINY_TRAIN = ["training.max_steps=3", "training.val_freq=3", "training.mhc_snapshot_every=1",
              "training.accelerator=cpu"]
# two seeds show the paired interval; the ladders (8 and 6 arms) run one seed
TINY_EXPERIMENT = {"base,+mhc": ["--seeds", "2", *TINY_TRAIN], "stability": ["--seeds", "1", *TINY_TRAIN],
                   "lambda": ["--seeds", "1", *TINY_TRAIN]}


@dataclass
class Command:
    line: int  # in README.md
    kind: str  # "bash", "shell" (a $ line with its output) or "python"
    text: str
    expected: list[str] = field(default_factory=list)  # output lines shown under a $ line


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    fence, start, body = None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if fence is None:
                fence, start, body = line[3:].strip(), number, []
                continue
            commands += _block_commands(fence, start, body)
            fence = None
        elif fence is not None:
            body.append(line)
    return commands


def _block_commands(fence: str, start: int, body: list[str]) -> list[Command]:
    if fence == "python":
        return [Command(start + 1, "python", "\n".join(body))]
    found: list[Command] = []
    pending, first = "", 0
    for offset, line in enumerate(body, start + 1):
        if fence == "bash":
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            first = first if pending else offset
            pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                found.append(Command(first, "bash", " ".join(shlex.split(pending, comments=True))))
                pending = ""
        elif fence == "":
            if pending:
                pending += " " + line.strip().rstrip("\\").strip()
                if not line.endswith("\\"):
                    found[-1].text, pending = " ".join(pending.split()), ""
            elif line.startswith("$ "):
                found.append(Command(offset, "shell", ""))
                pending = line[2:].rstrip("\\").strip()
                if not line.endswith("\\"):
                    found[-1].text, pending = pending, ""
            elif found and found[-1].kind == "shell":
                found[-1].expected.append(line)
    return found


# How each README command is checked: (pattern, way, detail). "run": as written; "tiny": with the settings above;
# "elsewhere": a command this test cannot run itself, with the file that covers it and a string that file must hold.
HOW = [
    (r"^\./dev app\b", "elsewhere", ("tests/app/test_browser.py", "app/main.py")),
    (r"^\./dev test\b", "elsewhere", (".ci/run", "./dev test")),  # CI runs the suite this test is part of
    (r"^state tx infer\b", "elsewhere", ("tests/integration/test_arc_export.py", "state")),  # needs arc-state
    # needs a Slurm cluster; the test submits through submitit's local executor and stand-in sbatch/srun
    (r"--launcher slurm\b", "elsewhere", ("tests/integration/test_experiment_cluster.py", "--launcher")),
    (r"^\./dev cli (train|experiment)\b", "tiny", None),
    (r"^(\./dev cli|python -m core)\b", "run", None),
    (r"^import core\b", "python", None),
]


def _way(command: Command) -> tuple[str, object]:
    matches = [(way, detail) for pattern, way, detail in HOW if re.search(pattern, command.text)]
    assert matches, f"README line {command.line}: no way to test '{command.text[:80]}'; add it to HOW in {__file__}"
    return matches[0]


def test_the_readme_parser_reads_blocks_continuations_comments_and_outputs():
    text = ("```bash\n./dev cli demo   # build it\n# a comment\n./dev cli train a=1 \\\n    b=2\n```\n"
            "```\n$ python -m core arc X \\\n    --y 1\nfirst output\n... second\n$ python -m core z\n```\n"
            "```python\nimport core\ncore.load('demo')\n```\n")
    got = [(c.line, c.kind, c.text, c.expected) for c in readme_commands(text)]
    assert got == [(2, "bash", "./dev cli demo", []), (4, "bash", "./dev cli train a=1 b=2", []),
                   (8, "shell", "python -m core arc X --y 1", ["first output", "... second"]),
                   (12, "shell", "python -m core z", []),
                   (15, "python", "import core\ncore.load('demo')", [])]


def test_every_readme_command_has_a_way_to_be_tested():
    commands = readme_commands(README.read_text())
    assert len(commands) >= 20  # the quickstart, the CLI block, the API block, the Arc transcripts
    for command in commands:
        way, detail = _way(command)
        if way == "elsewhere":
            path, needle = detail
            assert needle in (REPO / path).read_text(), f"{path} no longer covers README line {command.line}"


def _argv(command: Command, way: str) -> list[str]:
    words = shlex.split(command.text)
    words = words[2:] if words[:2] == ["./dev", "cli"] else words[3:]  # ./dev cli X / python -m core X
    if way == "tiny":
        words += TINY_EXPERIMENT[words[words.index("--arms") + 1]] if words[0] == "experiment" else TINY_TRAIN
    return [sys.executable, "-m", "core", *words]


def _python(command: Command) -> list[str]:
    # the API block trains with the README's settings plus the tiny ones (later overrides win)
    tiny = ", ".join(repr(o) for o in TINY_TRAIN)
    code = re.sub(r"core\.train\(\[(.*?)\]", lambda m: f"core.train([{m.group(1)}, {tiny}]", command.text)
    assert code != command.text, "the README's API block no longer calls core.train([...])"
    return [sys.executable, "-c", code]


def _normalise(line: str) -> str:
    return re.sub(r"\b\d+(\.\d+)? s\b", "<t> s", line.strip())


def _check_output(command: Command, output: str) -> None:
    """Each output line shown under a $ command is printed. "... " at the start elides a line's beginning (a log
    prefix), "..." inside it elides a middle part (a path prefix, a list); "... (" starts a remark, not output."""
    printed = [_normalise(line) for line in output.splitlines()]
    for shown in command.expected:
        text = shown.strip()
        if not text or text.startswith("... ("):
            continue
        elided_start = text.startswith("... ")
        parts = [re.escape(_normalise(part)) for part in (text[4:] if elided_start else text).split("...")]
        if len(parts) == 1 and not elided_start:
            assert _normalise(text) in printed, f"README line {command.line}: '{text}' not printed:\n{output}"
        else:
            pattern = re.compile(".*".join(parts))
            assert any(pattern.search(line) for line in printed), (
                f"README line {command.line}: no printed line matches '{text}':\n{output}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_with_velocity):
    root = tmp_path_factory.mktemp("readme")
    (root / "tests").symlink_to(REPO / "tests")
    # the README's "my.h5ad" is the user's own file: the demo's counts and embedding stand in for it
    demo = demo_with_velocity.copy()
    for key in [k for k in demo.obsm if k.startswith("velocity")]:
        del demo.obsm[key]
    demo.write_h5ad(root / "my.h5ad")
    return root


@pytest.mark.slow
def test_every_readme_command_runs_as_written(workspace):
    env = {**os.environ, "ST_RUNS_DIR": str(workspace / "runs"), "PYTHONUNBUFFERED": "1"}
    for command in readme_commands(README.read_text()):
        way, _ = _way(command)
        if way == "elsewhere":
            continue
        argv = _python(command) if way == "python" else _argv(command, way)
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True)
        print(f"README line {command.line}: {time.perf_counter() - started:.0f} s, exit {done.returncode}", flush=True)
        output = done.stdout + done.stderr
        wants_error = any(line.startswith("error:") for line in command.expected)
        assert done.returncode == (2 if wants_error else 0), (
            f"README line {command.line}: '{command.text}' exited {done.returncode}:\n{output[-3000:]}")
        _check_output(command, output)


def test_the_output_check_follows_elisions_and_fails_on_a_line_not_printed():
    command = Command(1, "shell", "python -m core x", [
        "... completed after 5 steps in 1.6 s; run folder .../runs/a", "wrote a: 3 (b, c)", "  ... (one per tensor)"])
    _check_output(command, "12:00 completed after 5 steps in 2.1 s; run folder /tmp/x/runs/a\nwrote a: 3 (b, c)\n")
    with pytest.raises(AssertionError, match="'wrote a: 3"):
        _check_output(command, "12:00 completed after 5 steps in 2.1 s; run folder /tmp/x/runs/a\nwrote a: 4\n")
    with pytest.raises(AssertionError, match="no printed line matches"):
        _check_output(command, "completed after 6 steps in 2.1 s; run folder /tmp/x/runs/a\nwrote a: 3 (b, c)\n")
