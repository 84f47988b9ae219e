"""Run every arm of a config's sweep (`get_hyper(h)`, see `ptlearn.hyper`), then report.

  python -m ptlearn.sweep --config=FILE_OR_NAME[:arg] --workdir=W [--config.a.b=v ...] \
      [--sweep.NAME=v1,v2 ...] [--parallel=N [--arms_per_gpu=K]]

Each arm trains in its own workdir `W/<name=value,...>` as its own `python -m ptlearn.train`
process, so an arm is exactly the command recorded for it in `W/sweep.json`. A rerun skips arms
that finished, resumes an interrupted arm from its checkpoint, and retries failed ones; a
failing arm is recorded and the others go on. `--sweep.NAME=v1,v2` replaces (or narrows) the
declared values of axis NAME, or adds it. At the end `ptlearn.report` writes W/results.{csv,md}
and plots.

Several arms at once (`--parallel=N`): on a machine with N or more GPUs each running arm gets
its own disjoint share of them (CUDA_VISIBLE_DEVICES), so arms never contend for a device. On
CPU the arms would share the cores and slow each other (and their timings) down, so there
`--parallel` above 1 is refused: one arm after another. `--arms_per_gpu=K` puts up to K arms on
each GPU, each with 0.9/K of its memory (XLA_PYTHON_CLIENT_MEM_FRACTION), K counting the arms of
every sweep sharing the GPU (experiments/gpu_sweeps.sh): a small model leaves a large GPU mostly
idle, but the arms' host work (loading, encoding, compiling) contends for the host's cores, and
their wall times measure the sharing, not the recipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ptlearn import config_lib, files, hyper, runs
from ptlearn.errors import ConfigError

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
# Keys that name one run's own folder: shared by all arms they would overwrite each other.
PER_RUN_KEYS = ("model.nemo_path", "exp_manager.explicit_log_dir")
ARM_LOG = "train.log"
SWEEP_FLAG = "--sweep."


@dataclasses.dataclass
class Arm:
    """One arm: its workdir name, its settings, and the train command that runs it."""

    name: str
    settings: dict[str, Any]
    command: list[str]
    record: dict[str, Any]  # its runs.run_record, to check the run already in its workdir
    status: str = "pending"  # pending | running | finished | failed
    error: str = ""


def split_sweep_flags(argv: Sequence[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """Pulls `--sweep.NAME=v1,v2` out of argv -> ({NAME: values}, the other arguments)."""
    replaced: dict[str, list[Any]] = {}
    rest = []
    for item in argv:
        if item.startswith(SWEEP_FLAG):
            name, sep, values = item[len(SWEEP_FLAG) :].partition("=")
            if not name or not sep:
                raise ConfigError(f"{item}: write --sweep.NAME=v1,v2")
            replaced[name] = hyper.parse_values(values)
        else:
            rest.append(item)
    return replaced, rest


def arm_name(settings: Mapping[str, Any]) -> str:
    """`{"virtual": 5, "model.seed": 0}` -> "virtual=5,seed=0" (a folder name; past 120
    characters, or when a value needed escaping, a hash of the settings keeps it unique)."""
    short = {k: k.removeprefix("model.") for k in settings}
    if len(set(short.values())) < len(short):
        short = {k: k for k in settings}
    parts = [f"{short[k]}={_flag_value(v)}" for k, v in settings.items()]
    raw = ",".join(parts)
    name = raw.replace("/", "_").replace(" ", "")
    if name != raw or len(name) > 120:
        digest = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:10]
        name = f"{name[:100]}~{digest}"
    return name or "run"


def _flag_value(value: Any) -> str:
    """A value as config_flags reads it back."""
    return value if isinstance(value, str) else repr(value)


def _merged_arg(base: str | None, settings: Mapping[str, Any]) -> str:
    """The config argument with the arm's argument settings put in (`key` alone, a flag,
    stays as written)."""
    items = [item for item in (base or "").split(",") if item]
    pairs = {item.partition("=")[0]: item for item in items}
    for key, value in settings.items():
        if "." in key:
            continue
        text = _flag_value(value)
        if "," in text:
            raise ConfigError(f"sweep axis {key!r}: the value {text!r} holds a ','")
        pairs[key] = f"{key}={text}"
    return ",".join(pairs.values())


def plan(
    config_spec: str,
    workdir: pathlib.Path,
    overrides: Mapping[str, Any],
    replaced: Mapping[str, Sequence[Any]],
) -> list[Arm]:
    """The arms of `config_spec`'s sweep, each config resolved (a bad axis fails here)."""
    name, _, base_arg = config_spec.partition(":")
    path = config_lib.config_file(name)
    arms = []
    for settings in hyper.expand(config_lib.load_config_module(name), dict(replaced)):
        keys = {k: v for k, v in settings.items() if "." in k}
        both = sorted(set(keys) & set(overrides))
        if both:
            raise ConfigError(
                f"--config.{both[0]} is also a sweep axis; fix it with --sweep.{both[0]}=VALUE"
            )
        for key in PER_RUN_KEYS:
            if {**overrides, **keys}.get(key):
                raise ConfigError(
                    f"--config.{key} would put every arm in one place; leave it empty"
                )
        arg = _merged_arg(base_arg, settings)
        try:
            config = config_lib.load_config(str(path), arg or None, **overrides, **keys)
        except ConfigError as err:
            raise ConfigError(f"sweep arm {arm_name(settings)}: {err}") from None
        folder = workdir / arm_name(settings)
        command = [
            sys.executable,
            "-m",
            "ptlearn.train",
            f"--config={path}" + (f":{arg}" if arg else ""),
            f"--workdir={folder}",
            *(f"--config.{k}={_flag_value(v)}" for k, v in {**overrides, **keys}.items()),
        ]
        arms.append(Arm(arm_name(settings), dict(settings), command, runs.run_record(config)))
    return arms


def _last_error(log: pathlib.Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    errors = [x for x in lines if x.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:500]


def _die_with_parent() -> None:
    """In the arm's process: SIGTERM when the sweep dies (even by kill -9), so an orphan
    never trains on while a rerun of the sweep resumes the same workdir."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def device_groups(parallel: int, arms_per_gpu: int = 1) -> list[dict[str, str]]:
    """Per concurrent arm, the environment that gives it its share of the GPUs: a disjoint set
    of whole GPUs, or with `arms_per_gpu` K > 1 one GPU and 1/K of its memory."""
    if parallel <= 1 and arms_per_gpu <= 1:
        return [{}]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [d for d in visible.split(",") if d.strip()]
    elif shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        gpus = [str(i) for i, x in enumerate(listing.stdout.splitlines()) if x.startswith("GPU")]
    else:
        gpus = []
    if arms_per_gpu > 1:
        if len(gpus) * arms_per_gpu < parallel:
            raise ConfigError(
                f"--parallel={parallel} with --arms_per_gpu={arms_per_gpu}: this machine shows "
                f"{len(gpus)} GPUs, room for {len(gpus) * arms_per_gpu} arms at once"
            )
        # 0.9 of the GPU to the arms together (one JAX process alone takes 0.75).
        fraction = f"{0.9 / arms_per_gpu:.4f}"
        return [
            {
                "CUDA_VISIBLE_DEVICES": gpus[i // arms_per_gpu],
                "XLA_PYTHON_CLIENT_MEM_FRACTION": fraction,
            }
            for i in range(parallel)
        ]
    if len(gpus) < parallel:
        raise ConfigError(
            f"--parallel={parallel}: this machine shows {len(gpus)} GPUs; arms running at once "
            "each need their own (on CPU they would share the cores), so use --parallel=1"
        )
    share = len(gpus) // parallel
    return [
        {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * share : (i + 1) * share])}
        for i in range(parallel)
    ]


def _write_state(workdir: pathlib.Path, header: Mapping[str, Any], arms: list[Arm]) -> None:
    body = {
        **header,
        "arms": [{k: v for k, v in dataclasses.asdict(a).items() if k != "record"} for a in arms],
    }
    files.write_text_atomic(workdir / SWEEP_FILE, json.dumps(body, indent=1) + "\n")


def run_sweep(
    config_spec: str,
    workdir: str | pathlib.Path,
    overrides: Mapping[str, Any] | None = None,
    replaced: Mapping[str, Sequence[Any]] | None = None,
    *,
    parallel: int = 1,
    arms_per_gpu: int = 1,
    report: bool = True,
    command: str = "",
) -> list[Arm]:
    """Runs the arms that have not finished (`parallel` at a time), records each arm's status
    in W/sweep.json, then writes the report. Returns the arms."""
    workdir = pathlib.Path(workdir)
    with files.exclusive(workdir, "sweep"):
        return _run_sweep(
            config_spec,
            workdir,
            dict(overrides or {}),
            dict(replaced or {}),
            device_groups(parallel, arms_per_gpu),
            report,
            command,
        )


def _run_sweep(config_spec, workdir, overrides, replaced, groups, report, command) -> list[Arm]:
    arms = plan(config_spec, workdir, overrides, replaced)
    workdir.mkdir(parents=True, exist_ok=True)
    header = {
        "command": command,
        "config": config_spec,
        "overrides": overrides,
        "axes": list(dict.fromkeys(k for a in arms for k in a.settings)),
    }
    todo = []
    for arm in arms:
        folder = workdir / arm.name
        try:
            conflict = runs.check_record(folder, arm.record)
        except ConfigError as err:
            conflict = str(err)
        if conflict:
            arm.status, arm.error = "failed", conflict
        elif runs.is_finished(folder):
            arm.status = "finished"
        else:
            todo.append(arm)
    logger.info(
        "sweep %s: %d arms, %d finished, %d to run",
        config_spec,
        len(arms),
        len(arms) - len(todo),
        len(todo),
    )
    _write_state(workdir, header, arms)
    running: dict[int, tuple[Arm, subprocess.Popen, Any]] = {}
    free = list(range(len(groups)))
    while todo or running:
        while todo and free:
            arm, slot = todo.pop(0), free.pop(0)
            folder = workdir / arm.name
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / ARM_LOG, "a", encoding="utf-8")  # noqa: SIM115
            logger.info("arm %s: running (log %s)", arm.name, folder / ARM_LOG)
            process = subprocess.Popen(
                arm.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **groups[slot]},
                preexec_fn=_die_with_parent,
            )
            arm.status = "running"
            running[slot] = (arm, process, log)
            _write_state(workdir, header, arms)
        time.sleep(0.2)
        for slot, (arm, process, log) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[slot]
            free.append(slot)
            if process.returncode == 0 and runs.is_finished(workdir / arm.name):
                arm.status, arm.error = "finished", ""
                logger.info("arm %s: finished", arm.name)
            else:
                arm.status = "failed"
                arm.error = _last_error(workdir / arm.name / ARM_LOG)
                logger.warning(
                    "arm %s failed (exit %s): %s", arm.name, process.returncode, arm.error
                )
            _write_state(workdir, header, arms)
    if report:
        from ptlearn import report as report_lib

        report_lib.write_report(workdir)
    return arms


def main(argv: Sequence[str]) -> None:
    """Runs the flags' sweep; prints {arm: status} as one JSON line."""
    del argv
    from absl import flags
    from ml_collections import config_flags

    from ptlearn import cli

    config_flag = flags.FLAGS["config"]
    arms = run_sweep(
        config_flags.get_config_filename(config_flag),
        flags.FLAGS.workdir,
        config_flags.get_override_values(config_flag),
        REPLACED,
        parallel=flags.FLAGS.parallel,
        arms_per_gpu=flags.FLAGS.arms_per_gpu,
        report=flags.FLAGS.report,
        command=COMMAND,
    )
    cli.print_json({a.name: a.status for a in arms})
    if any(a.status == "failed" for a in arms):
        sys.exit(1)


REPLACED: dict[str, list[Any]] = {}
COMMAND = ""

if __name__ == "__main__":
    from absl import flags

    from ptlearn import cli

    cli.define_config()
    flags.DEFINE_string("workdir", None, "the sweep's folder: one workdir per arm inside")
    flags.DEFINE_integer("parallel", 1, "arms at once (each with its own GPUs)", lower_bound=1)
    flags.DEFINE_integer(
        "arms_per_gpu",
        1,
        "arms sharing one GPU, this sweep's and others' (each 0.9/K of its memory)",
        lower_bound=1,
    )
    flags.DEFINE_bool("report", True, "write results.csv / results.md / plots at the end")
    flags.mark_flag_as_required("workdir")
    COMMAND = shlex.join(["python", "-m", "ptlearn.sweep", *sys.argv[1:]])
    try:
        REPLACED, sys.argv = split_sweep_flags(sys.argv)
    except ConfigError as err:
        cli.fail(str(err))
    cli.run(main)
