"""Small filesystem helpers shared by every writer: atomic replacement, the user's umask, and
the lock that keeps one run per workdir."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import TextIO

from ptlearn.errors import ConfigError


def apply_umask(path: str | pathlib.Path) -> None:
    """Gives `path` (and, for a folder, everything in it) the mode a new file would get under
    the user's umask: tempfile's and safetensors' files are owner-only otherwise."""
    umask = os.umask(0)
    os.umask(umask)
    path = pathlib.Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_writer(path: str | pathlib.Path) -> Iterator[TextIO]:
    """A text handle on a temporary file beside `path`, synced and renamed into place (with
    the user's umask) when the block ends; removed if it raises. A reader, or a run killed
    mid-write, never sees half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        apply_umask(temp_name)
        os.replace(temp_name, path)
    except BaseException:
        pathlib.Path(temp_name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | pathlib.Path, text: str) -> pathlib.Path:
    """Writes `text` to `path` through `atomic_writer`."""
    with atomic_writer(path) as handle:
        handle.write(text)
    return pathlib.Path(path)


@contextlib.contextmanager
def exclusive(folder: str | pathlib.Path, what: str) -> Iterator[None]:
    """Holds an exclusive lock on `folder/.lock` (created) while the block runs; one already
    held by another process is a user error naming the folder. The OS drops the lock when its
    process dies, even by kill -9, so a rerun after a crash never finds a stale lock."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "?"
            raise ConfigError(
                f"{folder} is in use by pid {holder}, another ptlearn process (one {what} per "
                "folder); wait for it to end, or use another folder"
            ) from None
        # Who holds it, for the message above (the lock itself is the flock, not the text).
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)
