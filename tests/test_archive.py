"""Safe tar extraction: members that would land or point outside the destination are refused."""

import io
import tarfile

import pytest

from ptlearn.checkpoints.archive import extract_tar_safely
from ptlearn.errors import CheckpointError


def make_tar(path, members):
    """members: (name, kind, payload) with kind file | symlink | hardlink | fifo."""
    with tarfile.open(path, "w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = payload or ""
            tar.addfile(info)
    return path


def test_safe_archive_extracts_with_an_inner_symlink(tmp_path):
    archive = make_tar(
        tmp_path / "ok.tar",
        [
            ("./model_config.yaml", "file", "hidden_size: 8\n"),
            ("./sub/weights.txt", "file", "w"),
            ("./sub/alias.txt", "symlink", "weights.txt"),
        ],
    )
    dest = extract_tar_safely(archive, tmp_path / "out")
    assert (dest / "model_config.yaml").read_text() == "hidden_size: 8\n"
    assert (dest / "sub" / "alias.txt").read_text() == "w"


@pytest.mark.parametrize(
    "members, why",
    [
        ([("../evil", "file", "x")], "'..' leads outside"),
        ([("ok/../../evil", "file", "x")], "'..' leads outside"),
        ([("ok/../fine", "file", "x")], "'..' in a member name"),
        ([("ABSOLUTE", "file", "x")], "absolute path"),
        ([("link", "symlink", "../evil")], "symlink"),
        ([("link", "symlink", "ABSOLUTE")], "symlink"),
        ([("link", "symlink", ".."), ("link/evil", "file", "x")], "symlink"),
        # The link is harmless alone; a second link through it would resolve outside.
        ([("a", "symlink", "."), ("a/b", "symlink", ".."), ("a/b/evil", "file", "x")], "under a"),
        ([("hard", "hardlink", "../evil")], "hard link"),
        ([("pipe", "fifo", None)], "device or fifo"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, members, why):
    outside = tmp_path / "evil"
    members = [
        (
            name.replace("ABSOLUTE", str(outside)),
            kind,
            payload.replace("ABSOLUTE", str(outside)) if payload else payload,
        )
        for name, kind, payload in members
    ]
    # A good member first: a refused archive must not be half-extracted.
    archive = make_tar(tmp_path / "bad.tar", [("good.txt", "file", "g"), *members])
    dest = tmp_path / "dest"
    with pytest.raises(CheckpointError, match=why) as err:
        extract_tar_safely(archive, dest)
    message = str(err.value)
    assert str(archive) in message and "refused to extract member" in message
    assert not outside.exists()
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]


def test_unreadable_archive(tmp_path):
    bad = tmp_path / "x.nemo"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable tar archive"):
        extract_tar_safely(bad, tmp_path / "out")
