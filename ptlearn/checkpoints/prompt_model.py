"""The prompt-model artifact: per-task prompt tables, templates, and a reference to the base model.

A folder with `prompt_tables.safetensors` (one float32 [P, E] table per task) and
`prompt_model.json` (templates, base-model reference with its SHA-256, tokenizer reference,
encoding options, label sets for rank classification). It never holds base-model weights.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np

from ptlearn.errors import CheckpointError
from ptlearn.files import apply_umask

FORMAT_VERSION = 1
TABLES_FILE = "prompt_tables.safetensors"
META_FILE = "prompt_model.json"


@dataclasses.dataclass
class PromptModel:
    """What inference needs besides the base model."""

    tables: dict[str, np.ndarray]  # task -> [P, E] float32
    templates: list[dict[str, Any]]  # TaskTemplate.to_dict() per task
    base_model: dict[str, Any]  # {"spec", "file", "sha256", "config"}
    tokenizer: dict[str, Any]  # {"source", "vocab_size", "bos_id", "eos_id", "pad_id"}
    encoding: dict[str, Any]  # {"add_eos", "add_bos", "max_seq_length"}
    label_sets: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)  # style, step, metrics
    # What made it (runs.run_record): resolved config, package versions, git commit, data sums.
    run_record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        """Task names in a stable order."""
        return sorted(self.tables)


def base_model_fields(spec: str, loaded: Any) -> dict[str, dict[str, Any]]:
    """The `base_model` and `tokenizer` fields of a prompt model made on `loaded` (a
    LoadedModel read from the checkpoint `spec` names): the checkpoint's checksum and config,
    the tokenizer's special ids."""
    from ptlearn.checkpoints import file_checksum, resolve_model

    path = resolve_model(spec)
    tok = loaded.tokenizer
    return {
        "base_model": {
            "spec": spec,
            "file": path.name,
            "sha256": file_checksum(path),
            "config": dataclasses.asdict(loaded.config),
        },
        "tokenizer": {
            "source": str(path),
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
        },
    }


def check_replaceable(directory: str | pathlib.Path, key: str = "model.nemo_path") -> None:
    """Refuses a destination that holds something other than a prompt model (which would be
    deleted to make room): absent or a ptlearn prompt model only."""
    directory = pathlib.Path(directory)
    if directory.exists() and not (directory.is_dir() and (directory / META_FILE).is_file()):
        raise CheckpointError(
            f"{key}={directory}: it exists and is not a ptlearn prompt model, which would be "
            "replaced; choose a new path (or remove it yourself)"
        )


def save_prompt_model(directory: str | pathlib.Path, model: PromptModel) -> pathlib.Path:
    """Writes the artifact atomically (a temporary folder renamed into place); an existing
    destination is replaced only if it is a prompt model (`check_replaceable`)."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    check_replaceable(directory, "the prompt model's folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tables = {task: np.ascontiguousarray(t, np.float32) for task, t in model.tables.items()}
    for task, table in tables.items():
        if not np.isfinite(table).all():
            raise CheckpointError(
                f"{directory}: the prompt of task {task!r} holds non-finite values; it is not "
                "written (the run diverged: lower model.optim.lr)"
            )
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".prompt_model-", dir=directory.parent))
    save_file(tables, str(staging / TABLES_FILE))
    meta = {"format_version": FORMAT_VERSION, **dataclasses.asdict(model)}
    del meta["tables"]
    meta["table_shapes"] = {task: list(t.shape) for task, t in tables.items()}
    (staging / META_FILE).write_text(json.dumps(meta, indent=1, default=_json_default))
    apply_umask(staging)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return directory


def load_prompt_model(directory: str | pathlib.Path) -> PromptModel:
    """Reads an artifact written by `save_prompt_model`; clear errors for missing/damaged files."""
    from safetensors.numpy import load_file

    directory = pathlib.Path(directory)
    meta_path, tables_path = directory / META_FILE, directory / TABLES_FILE
    for path in (meta_path, tables_path):
        if not path.is_file():
            raise CheckpointError(
                f"{directory}: not a prompt model ({path.name} is missing); give the "
                "prompt_model folder that ptlearn.train wrote"
            )
    try:
        meta = json.loads(meta_path.read_text())
        tables = load_file(str(tables_path))
    except Exception as err:  # json and safetensors raise assorted errors on damaged files
        raise CheckpointError(f"{directory}: the prompt model is damaged ({err})") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format_version {meta.get('format_version')!r} is not "
            f"{FORMAT_VERSION}; it was written by another ptlearn version"
        )
    _check_meta(meta_path, meta)
    for task, shape in meta["table_shapes"].items():
        if task not in tables or list(tables[task].shape) != shape:
            raise CheckpointError(
                f"{tables_path}: the table of task {task!r} is missing or damaged"
            )
    for task, table in tables.items():
        if table.dtype != np.float32 or not np.isfinite(table).all():
            raise CheckpointError(
                f"{tables_path}: the table of task {task!r} is not finite float32 "
                f"({table.dtype}); the file is damaged"
            )
    counts = {t.get("taskname"): t.get("total_virtual_tokens") for t in meta["templates"]}
    for task, table in tables.items():
        if counts.get(task) != table.shape[0]:
            raise CheckpointError(
                f"{meta_path}: task {task!r} has {table.shape[0]} prompt rows but its template "
                f"asks for {counts.get(task)!r} virtual tokens"
            )
    meta["templates"] = [_with_metric(t) for t in meta["templates"]]
    fields = {f.name for f in dataclasses.fields(PromptModel)} - {"tables"}
    return PromptModel(tables=dict(tables), **{k: meta[k] for k in fields if k in meta})


# Prompt models written before templates named their metric were scored by task name.
_LEGACY_METRICS = {"squad": "squad", "intent_and_slot": "intent_slot"}


def _with_metric(template: dict[str, Any]) -> dict[str, Any]:
    """A stored template, with the metric its task was scored by when it names none."""
    if "metric" in template:
        return template
    return {**template, "metric": _LEGACY_METRICS.get(template.get("taskname"), "accuracy")}


def _check_meta(path: pathlib.Path, meta: Any) -> None:
    """The schema of prompt_model.json: each field's type, names in errors."""
    kinds = {
        "table_shapes": dict,
        "templates": list,
        "base_model": dict,
        "tokenizer": dict,
        "encoding": dict,
        "label_sets": dict,
    }
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    for key, kind in kinds.items():
        missing = key not in meta and key != "label_sets"  # older prompt models lack it
        if missing or (key in meta and not isinstance(meta[key], kind)):
            raise CheckpointError(f"{path}: {key!r} is missing or not a {kind.__name__}")
    if not all(isinstance(t, dict) for t in meta["templates"]):
        raise CheckpointError(f"{path}: 'templates' must be a list of template objects")
    if not isinstance(meta["base_model"].get("sha256"), str):
        raise CheckpointError(f"{path}: base_model.sha256 is missing")
    for task, labels in meta.get("label_sets", {}).items():
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CheckpointError(f"{path}: label_sets[{task!r}] must be a list of strings")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
