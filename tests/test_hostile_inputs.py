"""Small hostile inputs that would allocate without bound end in one located error, at once:
a GGUF whose metadata claims 10^9 layers, encoder and generation sizes beyond any machine."""

import subprocess
import sys
import time

import gguf
import numpy as np
import pytest
from tiny_model import tiny_config, write_tiny_data, write_tiny_model

from ptlearn import config_lib, training
from ptlearn.checkpoints import gguf as gguf_import
from ptlearn.errors import CheckpointError, ConfigError


def _gguf(path, block_count, blocks=1):
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(block_count)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_feed_forward_length(16)
    writer.add_context_length(32)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    for i in range(blocks):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_layer_count_must_match_its_tensors(tmp_path):
    path = _gguf(tmp_path / "liar.gguf", 10**9)
    assert path.stat().st_size < 10_000
    started = time.time()
    with pytest.raises(
        CheckpointError, match=r"block_count=1000000000 but the file holds the tensors of 1 blocks"
    ):
        gguf_import.load(path, with_tokenizer=False)
    assert time.time() - started < 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_hostile")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def test_an_encoder_beyond_the_machine_is_refused_before_allocating(tiny, tmp_path):
    config = tiny_config(*tiny)
    config.model.p_tuning.encoder_hidden = 10**9
    started = time.time()
    with pytest.raises(ConfigError, match=r"model.p_tuning.encoder_hidden=1000000000: .* GiB"):
        training.train_and_evaluate(config, str(tmp_path / "w"))
    assert time.time() - started < 30


def test_generation_longer_than_the_context_is_refused(tiny):
    model, _ = tiny
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptlearn.lm",
            "generate",
            f"--model={model}",
            "--prompt=hello",
            "--tokens_to_generate=1000000000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--tokens_to_generate=1000000000" in proc.stderr and "context" in proc.stderr
    config = tiny_config(*tiny)
    config.inference.tokens_to_generate = 10**9
    with pytest.raises(ConfigError, match="inference.tokens_to_generate"):
        config_lib.validate(config)


# Python, numpy and the importer's modules; a file that got read whole would add its size.
RSS_BOUND_MB = 400
_PEAK_RSS = """
import resource, sys
from ptlearn.errors import CheckpointError
try:
    {call}
except CheckpointError as err:
    print("ERROR", err)
print("PEAK_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _load_in_subprocess(call: str, timeout: float = 60) -> tuple[str, int]:
    """(the CheckpointError's message, peak RSS in MB) of `call` run in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS.format(call=call)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout
    error = next((line[6:] for line in out.splitlines() if line.startswith("ERROR ")), "")
    return error, int(out.rsplit("PEAK_MB", 1)[1])


class _Zeros:
    """A file object of `n` zero bytes, so a test writes a bomb without holding it."""

    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def test_a_deflated_torch_storage_that_inflates_is_refused_unread(tmp_path):
    """A torch zip of under 1 MB whose storage member inflates to 512 MiB."""
    import zipfile

    import torch_format

    numel = 2**27  # float32: 512 MiB
    tensor = torch_format.StridedTensor(np.zeros(1, np.float32), 0, (numel,), (1,), numel)
    data_pkl, _ = torch_format.torch_pickle_bytes({"w": tensor})
    path = tmp_path / "bomb.bin"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("archive/data.pkl", data_pkl)
        with z.open("archive/data/0", "w") as member:
            zeros = _Zeros(numel * 4)
            while chunk := zeros.read(2**24):
                member.write(chunk)
    assert path.stat().st_size < 2**20
    started = time.time()
    error, peak_mb = _load_in_subprocess(
        f"from ptlearn.checkpoints import torch_pickle; torch_pickle.load_torch_file({str(path)!r})"
    )
    assert "inflates" in error and str(path) in error, error
    assert peak_mb < RSS_BOUND_MB, peak_mb
    assert time.time() - started < 30


def test_a_nemo_archive_that_inflates_or_outgrows_the_disk_is_refused_unextracted(
    tmp_path, monkeypatch
):
    """A .nemo (tar.gz) of under 1 MB holding a 512 MiB member; then a plain one on a disk
    that is (made to look) full. Nothing is extracted in either case."""
    import tarfile

    from ptlearn.checkpoints import archive

    path = tmp_path / "bomb.nemo"
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        info = tarfile.TarInfo("model_weights.ckpt")
        info.size = 2**29
        tar.addfile(info, _Zeros(info.size))
    assert path.stat().st_size < 2**20
    started = time.time()
    error, peak_mb = _load_in_subprocess(
        "from ptlearn.checkpoints import archive; "
        f"archive.extract_tar_safely({str(path)!r}, {str(tmp_path / 'out')!r})"
    )
    assert "built to fill the disk" in error and str(path) in error, error
    assert peak_mb < RSS_BOUND_MB, peak_mb
    assert time.time() - started < 30
    assert not (tmp_path / "out").exists()

    plain = tmp_path / "plain.nemo"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo("model_config.yaml")
        info.size = 1000
        tar.addfile(info, _Zeros(info.size))
    monkeypatch.setattr(archive.shutil, "disk_usage", lambda _: shutil_usage(free=10**6))
    with pytest.raises(CheckpointError, match=r"plain.nemo: extracting needs .* free; free some"):
        archive.extract_tar_safely(plain, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(total=10 * free, used=9 * free, free=free)
