"""Reading GGUF files' metadata, shared by the weight importer (checkpoints/gguf.py) and the
tokenizer loader (tokenizers/gguf.py); no model code, so tokenizers can use it."""

from __future__ import annotations

import pathlib
from typing import Any

from ptlearn.errors import CheckpointError


def open_reader(path: str | pathlib.Path) -> Any:
    """A `gguf.GGUFReader` for `path`, or a CheckpointError naming the file."""
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises assorted errors on corrupt files
        raise CheckpointError(f"{path}: not a readable GGUF file ({err})") from err


def metadata_value(reader: Any, key: str, default: Any = None) -> Any:
    """The metadata value under `key` as a Python value, or `default` when absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()
