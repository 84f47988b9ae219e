"""Every command of the README runs, so none can drift from the code.

Each bash block's commands run in order in a sandbox folder (with `../shared` beside it), made
quick by one rule per kind of command: training runs (train, sweep, the Python block) get the
shipped tiny model and two steps; benchmarks the tiny model and one or two steps; the two-host
command runs as its two processes on localhost. Everything else runs as written. The two
set-up commands (the main job, the test command) are checked by test_readme.py.
"""

import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys

import pytest
from tiny_model import FAST_COMPILE, tiny_subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETUP_COMMANDS = ("python3 -m venv",)  # the main job and the test command: test_readme.py

# Appended to every training command: the tiny model, two steps, little validation.
TINY_RUN = [
    "--config.model.language_model_path=tiny",
    "--config.trainer.max_steps=2",
    "--config.trainer.val_check_interval=2",
    "--config.trainer.limit_val_batches=1",
    "--config.trainer.limit_test_batches=1",
    "--config.model.data.validation_metric_examples=2",
    "--config.model.optim.sched.warmup_steps=1",
]


def readme_commands() -> list[str]:
    """Every command of the README's bash blocks: continuation lines joined, comments out."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)\n```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = " ".join(command.split())
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def python_block() -> str:
    (block,) = [
        b
        for b in re.findall(r"```python\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
        if "ptlearn.train(" in b
    ]
    return block


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke(command: str, previous: list[str]) -> list[tuple[dict, list[str]]]:
    """The (environment, argv) pairs that run `command` quickly; `previous` commands come
    first in the README (for `...`, which repeats the previous command's arguments)."""
    words = shlex.split(command, comments=True)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[:2] == ["python", "-m"], command
    if "..." in words:  # the previous command of this module, with these extra arguments
        prefix = " ".join(words[:3])
        earlier = shlex.split(
            next(c for c in reversed(previous) if c.startswith(prefix)), comments=True
        )
        words = [*words[:3], *earlier[3:], *words[4:]]
    words[0] = sys.executable
    module = words[2]
    if module in ("ptlearn.train", "ptlearn.sweep"):
        words += TINY_RUN
        if module == "ptlearn.sweep":
            words = [w if not w.startswith("--sweep.seed") else "--sweep.seed=0" for w in words]
    if module == "ptlearn.bench":
        words = [w for w in words if not w.startswith("--model=")] + ["--model=tiny"]
        words = [re.sub(r"^--steps=\d+$", "--steps=2", w) for w in words]
        words = [re.sub(r"^--(batch|seq)=\d+$", r"--\1=8", w) for w in words]
    # `ptlearn.lm` runs a real model's weights; the others run the tiny model, or none.
    flags = ([] if module == "ptlearn.lm" else [FAST_COMPILE]) + env.get("XLA_FLAGS", "").split()
    if any(w.startswith("--config.distributed.process_id=") for w in words):
        port = _free_port()
        words = [
            f"--config.distributed.coordinator_address=127.0.0.1:{port}"
            if w.startswith("--config.distributed.coordinator_address=")
            else w
            for w in words
        ]
        env["XLA_FLAGS"] = " ".join([*flags, "--xla_force_host_platform_device_count=2"])
        return [
            (env, [re.sub(r"process_id=\d+$", f"process_id={i}", w) for w in words])
            for i in range(2)
        ]
    if module == "ptlearn.train" and "tensor_model_parallel_size=4" in command:
        # the GPU example, on simulated devices
        flags.append("--xla_force_host_platform_device_count=8")
    env["XLA_FLAGS"] = " ".join(flags)
    return [(env, words)]


def _sandbox(tmp_path: pathlib.Path, shared: pathlib.Path) -> pathlib.Path:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared)
    for name in ("configs", "experiments"):
        (work / name).symlink_to(ROOT / name)
    (work / "notes.txt").write_text("The quick brown fox jumps over the lazy dog.\n")
    return work


@pytest.mark.integration
def test_every_readme_command_runs(shared_dir, default_model, tmp_path):
    work = _sandbox(tmp_path, shared_dir)
    shared_root = pathlib.Path("/shared/runs")
    base_env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # smoke() gives each its XLA_FLAGS
    done: list[str] = []
    for command in readme_commands():
        if command.startswith(SETUP_COMMANDS):
            continue
        command = command.replace(str(shared_root), str(tmp_path / "runs"))
        processes = []
        for env, argv in smoke(command, done):
            processes.append(
                subprocess.Popen(
                    argv,
                    cwd=work,
                    env={**base_env, **env},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for process in processes:
            try:
                out, err = process.communicate(timeout=600)
            finally:
                if process.poll() is None:
                    process.kill()
            assert process.returncode == 0, f"{command}\n{err[-3000:]}"
            assert out.strip(), command
        done.append(command)
    assert len(done) >= 20

    block = python_block().replace('"encoder=lstm"', '"encoder=lstm,model=tiny,steps=2"')
    block = block.replace(
        '**{"model.optim.lr": 3e-3})',
        '**{"model.optim.lr": 3e-3, "model.optim.sched.warmup_steps": 1,'
        ' "trainer.val_check_interval": 2, "model.data.validation_metric_examples": 2})',
    )
    script = work / "readme_block.py"
    script.write_text(block)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=tiny_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_readme_has_the_commands_this_test_runs():
    commands = readme_commands()
    modules = {c.split(" -m ")[1].split()[0] for c in commands if " -m ptlearn." in c}
    assert {"ptlearn.train", "ptlearn.sweep", "ptlearn.report", "ptlearn.predict"} <= modules
    assert {"ptlearn.bench", "ptlearn.lm", "ptlearn.data.prepare"} <= modules
    for command in commands:
        if not command.startswith(SETUP_COMMANDS):
            assert smoke(command, commands), command
