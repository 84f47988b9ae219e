"""What a training run leaves in its workdir: the record of what made it, and what it gave.

Before the first step `check_record` refuses a workdir that holds a run under a different config
or changed data (one line naming what changed), then `write_record` writes `config.json` (the
resolved config), `config.txt` (the same, readable) and `run_record.json` (package versions,
the git commit of ptlearn's checkout when there is one, SHA-256 of every data file). At the end
`finish` writes `result.json`; `Run.from_workdir` reads everything back (the sweep and the
report use it).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import pathlib
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from ptlearn import config_lib
from ptlearn.errors import ConfigError
from ptlearn.files import write_text_atomic
from ptlearn.run_log import read_metrics

CONFIG_FILE = "config.json"
CONFIG_TEXT = "config.txt"
RECORD_FILE = "run_record.json"
RESULT_FILE = "result.json"
TEST_METRICS_FILE = "test_metrics.json"

# Keys that say where and how fast a run computes, not what it computes: a workdir may resume
# under other values (checkpoints restore onto any mesh).
PLACEMENT_KEYS = (
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.log_every_n_steps",
    "model.tensor_model_parallel_size",
    "model.batch_chains",
    "model.data.num_workers",
    "inference.batch_size",
    "exp_manager.explicit_log_dir",
    "mesh.",
    "distributed.",
)
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "ml-collections",
    "numpy",
    "tokenizers",
    "sentencepiece",
    "gguf",
    "safetensors",
)
ALLOW_FLAG = "--allow_config_change (allow_config_change=True in ptlearn.train)"


def _plain(value: Any) -> Any:
    # to_dict() leaves the ConfigDicts inside tuples (task_templates): record their contents.
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    return list(value)


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON values (tuples become lists, templates dicts)."""
    return json.loads(json.dumps(config.to_dict(), default=_plain))


def _unrecorded(old: Any, new: Any) -> bool:
    """Whether `old` is how ptlearn up to 1974ef4 recorded the list of dicts `new`: each
    dict as its sorted keys only. Such a record cannot say what changed, so it strands no run."""
    return (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(
            isinstance(n, dict) and isinstance(o, list) and o == sorted(n)
            for o, n in zip(old, new, strict=True)
        )
    )


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, placement keys left out.

    A key the old config lacks is no change while the new one holds its `base_config()`
    default: an option added by a later ptlearn, at the value that keeps what the old run did,
    must not strand a run (or a sweep's arms) started before the upgrade; nor may templates
    that an older ptlearn recorded by their keys only (`_unrecorded`).
    """
    a, b = flatten(old), flatten(new)
    defaults = flatten(config_dict(config_lib.base_config()))
    keys = sorted(set(a) | set(b))
    return [
        k
        for k in keys
        if a.get(k) != b.get(k)
        and not k.startswith(PLACEMENT_KEYS)
        and not (k not in a and k in defaults and b[k] == defaults[k])
        and not _unrecorded(a.get(k), b.get(k))
    ]


def versions() -> dict[str, str]:
    """Python, ptlearn and the numeric stack's package versions."""
    found = {"python": platform.python_version()}
    for name in ("ptlearn", *PACKAGES):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_state() -> dict[str, Any]:
    """{"commit", "dirty"} of the git checkout ptlearn runs from; {} when it is not one."""
    source = pathlib.Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        # Only ptlearn's own checkout: an installed copy inside some other repository is not.
        if top.returncode != 0 or pathlib.Path(top.stdout.split()[0]) != source.parent:
            return {}
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"commit": top.stdout.split()[1], "dirty": bool(status.stdout.strip())}


def data_files(config: ml_collections.ConfigDict) -> list[str]:
    """Every data file the config reads (train, validation, test), in order, once each."""
    d = config.model.data
    names = [*config_lib.as_tuple(d.train_ds), *config_lib.as_tuple(d.validation_ds)]
    names += config_lib.as_tuple(d.test_ds)
    return list(dict.fromkeys(str(n) for n in names))


def data_checksums(files: Sequence[str], tasks: Sequence[str] = ()) -> dict[str, str]:
    """{data set: its fingerprint} (a file's SHA-256, in-memory records' digest, a TFDS name;
    data/sources.py) of those that exist: a missing one is reported when it is read.
    tasks: the names a `TASK=` prefix may take."""
    from ptlearn.data import sources

    found = {f: sources.fingerprint(f, tasks) for f in files}
    return {f: v for f, v in found.items() if v is not None}


def _task_names(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    return [*config_lib.as_tuple(m.existing_tasks), *config_lib.as_tuple(m.new_tasks)]


def run_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What made a run: resolved config, versions, git state, data checksums, start time."""
    return {
        "config": config_dict(config),
        "versions": versions(),
        "git": git_state(),
        "data": data_checksums(data_files(config), _task_names(config)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def conflicts(workdir: pathlib.Path, record: Mapping[str, Any]) -> list[str]:
    """What differs between `record` and the run already in `workdir` ([] for none): one
    `key: old -> new` per changed config key (placement keys aside), one per changed data file.
    """
    config_path = workdir / CONFIG_FILE
    if not config_path.is_file():
        return []
    try:
        old = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{config_path}: damaged ({err}); move the workdir aside") from None
    changes = [_describe(k, old, record["config"]) for k in changed_keys(old, record["config"])]
    old_data = read_json(workdir / RECORD_FILE).get("data", {})
    return changes + [
        f"data file {name} changed"
        for name, digest in record["data"].items()
        if name in old_data and old_data[name] != digest
    ]


def check_record(
    workdir: pathlib.Path, record: Mapping[str, Any], *, allow_config_change: bool = False
) -> list[str]:
    """Refuses a workdir that holds a run under another config (one line naming what
    changed, and the flag that allows it); returns the changes it allows."""
    changes = conflicts(workdir, record)
    if changes and not allow_config_change:
        shown = ", ".join(changes[:6]) + (
            f" and {len(changes) - 6} more" if len(changes) > 6 else ""
        )
        raise ConfigError(
            f"{workdir} holds a run under another config ({shown}); use a new workdir, or "
            f"pass {ALLOW_FLAG} to continue this one under the new config"
        )
    return changes


def write_record(workdir: pathlib.Path, record: Mapping[str, Any], *, changed: bool) -> None:
    """Writes config.json, config.txt and run_record.json. After an allowed change the old
    record, config and results are kept beside as `<name>.<time>.json`, so the workdir's
    result is never the old run's under the new config."""
    workdir.mkdir(parents=True, exist_ok=True)
    if changed:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in (CONFIG_FILE, RECORD_FILE, RESULT_FILE, TEST_METRICS_FILE):
            if (workdir / name).is_file():
                (workdir / name).rename(workdir / f"{pathlib.Path(name).stem}.{stamp}.json")
    write_text_atomic(workdir / CONFIG_FILE, json.dumps(record["config"], indent=1) + "\n")
    write_text_atomic(workdir / CONFIG_TEXT, _readable(record["config"]))
    write_text_atomic(workdir / RECORD_FILE, json.dumps(record, indent=1) + "\n")


def _describe(key: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    a, b = flatten(old), flatten(new)
    return f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}"


def _readable(config: Mapping[str, Any]) -> str:
    return "".join(f"{k} = {v!r}\n" for k, v in flatten(config).items())


def read_json(path: pathlib.Path) -> dict[str, Any]:
    """A JSON object file's contents; {} when it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


@dataclasses.dataclass
class Run:
    """A finished training run, as `ptlearn.train` returns it and `result.json` stores it.

    `history` holds every logged row (train rows have `loss`, validation rows `val_loss`);
    `final` is the last train row merged with the last validation; `best` the validation row
    of `best_step` (the checkpoint the prompt model comes from); `test` the test split's
    metrics; `stopped` says why training ended before max_steps (or None).
    """

    workdir: str
    prompt_model: str
    final_step: int
    best_step: int | None
    final: dict[str, Any]
    best: dict[str, Any]
    test: dict[str, Any]
    wall_time_s: float
    trainable_parameters: int
    stopped: str | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """Everything but the history: what the CLI prints and result.json holds."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "history"}

    @classmethod
    def from_workdir(cls, workdir: str | pathlib.Path) -> Run:
        """The finished run in `workdir` (its result.json and metrics.jsonl)."""
        path = pathlib.Path(workdir) / RESULT_FILE
        summary = read_json(path)
        if not summary:
            raise ConfigError(f"{path}: missing or damaged; the run in {workdir} did not finish")
        fields = {f.name for f in dataclasses.fields(cls)} - {"history"}
        return cls(**{k: summary[k] for k in fields if k in summary}, history=read_metrics(workdir))


def is_finished(workdir: str | pathlib.Path) -> bool:
    """True once the run in `workdir` wrote its result."""
    return bool(read_json(pathlib.Path(workdir) / RESULT_FILE))


def summarise(
    workdir: pathlib.Path,
    *,
    prompt_model: str,
    final_step: int,
    best_step: int | None,
    test: Mapping[str, Any],
    wall_time_s: float,
    trainable_parameters: int,
    stopped: str | None,
) -> Run:
    """The Run of a workdir whose training just ended (reads its metrics.jsonl)."""
    history = read_metrics(workdir)
    train_rows = [r for r in history if "loss" in r]
    val_rows = [r for r in history if "val_loss" in r]
    final = {**(train_rows[-1] if train_rows else {}), **(val_rows[-1] if val_rows else {})}
    best = next((r for r in reversed(val_rows) if r["step"] == best_step), {})
    return Run(
        workdir=str(workdir),
        prompt_model=prompt_model,
        final_step=final_step,
        best_step=best_step,
        final=final,
        best=best,
        test=dict(test),
        wall_time_s=wall_time_s,
        trainable_parameters=trainable_parameters,
        stopped=stopped,
        history=history,
    )


def finish(run: Run) -> None:
    """Writes `result.json` (atomically: a sweep counts the run finished once it exists)."""
    write_text_atomic(
        pathlib.Path(run.workdir) / RESULT_FILE, json.dumps(run.summary(), indent=1) + "\n"
    )
