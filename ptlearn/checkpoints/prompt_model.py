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


def save_prompt_model(directory: str | pathlib.Path, model: PromptModel) -> pathlib.Path:
    """Writes the artifact atomically (a temporary folder renamed into place)."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".prompt_model-", dir=directory.parent))
    tables = {task: np.ascontiguousarray(t, np.float32) for task, t in model.tables.items()}
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
    for task, shape in meta["table_shapes"].items():
        if task not in tables or list(tables[task].shape) != shape:
            raise CheckpointError(
                f"{tables_path}: the table of task {task!r} is missing or damaged"
            )
    fields = {f.name for f in dataclasses.fields(PromptModel)} - {"tables"}
    return PromptModel(tables=dict(tables), **{k: meta[k] for k in fields if k in meta})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
