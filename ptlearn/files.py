"""Small filesystem helpers shared by every writer: atomic replacement and the user's umask."""

from __future__ import annotations

import os
import pathlib
import tempfile


def apply_umask(path: str | pathlib.Path) -> None:
    """Gives `path` (and, for a folder, everything in it) the mode a new file would get under
    the user's umask: tempfile's and safetensors' files are owner-only otherwise."""
    umask = os.umask(0)
    os.umask(umask)
    path = pathlib.Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def write_text_atomic(path: str | pathlib.Path, text: str) -> pathlib.Path:
    """Writes `text` to a temporary file beside `path`, then renames it into place: a reader
    (or a run killed mid-write) never sees half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        apply_umask(temp_name)
        os.replace(temp_name, path)
    except BaseException:
        pathlib.Path(temp_name).unlink(missing_ok=True)
        raise
    return path
