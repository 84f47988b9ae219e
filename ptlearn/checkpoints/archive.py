"""Safe extraction of tar archives (.nemo files): no member may land or point outside `dest`.

Every member is checked before anything is written, so a refused archive leaves no files behind:
absolute names, names with a `..` component, links whose target lies outside
it, members reached through a link (a link could re-point them anywhere), and devices / fifos
are refused. tarfile's own "data" filter is applied on top when Python has it.

Sizes are checked before anything is written too: the members' declared sizes against the file
(a tar stores its members whole, so they cannot add up to more than it; a compressed one gets a
ratio no checkpoint reaches, as weights barely compress) and against the free disk under `dest`.
"""

from __future__ import annotations

import os
import pathlib
import posixpath
import shutil
import tarfile

from ptlearn.errors import CheckpointError

PathLike = str | os.PathLike

# Weights barely compress (gzip takes float tensors to ~90%); 50x is an archive built to inflate.
MAX_COMPRESSION_RATIO = 50
# Below this, any ratio is harmless (a yaml and a tokenizer of zeros compress well).
RATIO_FREE_BYTES = 64 * 2**20
# Left free on the disk after extracting, so the run that follows can still write checkpoints.
DISK_RESERVE_BYTES = 256 * 2**20


def _inside(relative: str) -> bool:
    """Whether a '/'-separated path relative to the destination stays inside it."""
    normal = posixpath.normpath(relative)
    return not (normal == ".." or normal.startswith("../") or posixpath.isabs(normal))


def _check_member(member: tarfile.TarInfo, links: set[str], archive: str) -> None:
    """Raises CheckpointError when `member` could write or point outside the destination."""
    name = member.name

    def refuse(why: str) -> None:
        raise CheckpointError(
            f"{archive}: refused to extract member {name!r}: {why}; the archive is unsafe or "
            "corrupt, so nothing was extracted"
        )

    if posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):
        refuse("absolute path")
    if not _inside(name):
        refuse("its '..' leads outside the destination")
    if ".." in name.split("/"):
        # Harmless ones too: no checkpoint needs them and tarfile cannot create them anyway.
        refuse("'..' in a member name")
    parts = posixpath.normpath(name).split("/")
    if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
        refuse("it lies under a link, which could send it anywhere")
    if member.isdev():  # character / block device or fifo
        refuse("device or fifo")
    if member.issym():
        target = member.linkname
        if posixpath.isabs(target) or not _inside(posixpath.join(posixpath.dirname(name), target)):
            refuse(f"symlink to {target!r} points outside the destination")
    if member.islnk():
        target = member.linkname
        # Hard link targets are archive member names, relative to the archive root.
        if posixpath.isabs(target) or not _inside(target):
            refuse(f"hard link to {target!r} points outside the destination")
    if member.issym() or member.islnk():
        links.add(posixpath.normpath(name))


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _check_sizes(members: list[tarfile.TarInfo], archive: str, dest: pathlib.Path) -> None:
    """Raises CheckpointError when the members declare more bytes than the file can hold or
    than the disk under `dest` has free."""
    for member in members:
        if member.issparse():  # declares a real size unrelated to the bytes it stores
            raise CheckpointError(
                f"{archive}: refused to extract member {member.name!r}: a sparse file, which "
                "no checkpoint needs; nothing was extracted"
            )
    total = sum(m.size for m in members if m.isfile())
    file_size = os.path.getsize(archive)
    if total > RATIO_FREE_BYTES and total > MAX_COMPRESSION_RATIO * file_size:
        raise CheckpointError(
            f"{archive}: its members declare {_gib(total)} from a {_gib(file_size)} file (more "
            f"than {MAX_COMPRESSION_RATIO}x): an archive built to fill the disk, not a "
            "checkpoint; nothing was extracted"
        )
    probe = dest
    while not probe.exists():  # the nearest existing folder is the disk `dest` will be on
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if total + DISK_RESERVE_BYTES > free:
        raise CheckpointError(
            f"{archive}: extracting needs {_gib(total)} and {probe} has {_gib(free)} free; "
            "free some space (or set TMPDIR to a larger disk), or extract the archive yourself "
            "and give its folder"
        )


def extract_tar_safely(tar_path: PathLike, dest: PathLike) -> pathlib.Path:
    """Extracts a tar (plain, gzip, bz2 or xz) into `dest` (created) and returns `dest` resolved.

    Raises CheckpointError, naming the archive and the member, for any unsafe member and for
    sizes beyond the file or the free disk; in those cases nothing is extracted.
    """
    archive = os.fspath(tar_path)
    dest_path = pathlib.Path(dest).resolve()
    # Newer Pythons also apply tarfile's own "data" filter (no links out, no devices, safe modes).
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            links: set[str] = set()
            for member in members:
                _check_member(member, links, archive)
            _check_sizes(members, archive, dest_path)
            dest_path.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest_path, members=members, **kwargs)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CheckpointError(f"{archive}: not a readable tar archive, or corrupt ({e})") from e
    return dest_path
