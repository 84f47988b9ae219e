"""Small hostile inputs that would allocate without bound end in one located error, at once,
in a process whose peak RSS is measured: files claiming huge sizes (stride-0 tensors, shared
dicts, 10^9 layers in GGUF or NeMo metadata), archives that inflate (torch zip, .nemo) or
outgrow the disk, encoder and generation sizes beyond any machine."""

import re
import subprocess
import sys
import time

import gguf
import numpy as np
import pytest
from tiny_model import tiny_config, tiny_subprocess_env, write_tiny_data, write_tiny_model

from ptlearn import config_checks, training
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


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big test worker
# would report the worker's peak.
_PEAK = (
    "int(__import__('re').search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024"
)
# A jax process with the tiny model sits near 600 MB; a refused size must add nothing to it.
CLI_RSS_BOUND_MB = 1500
_CLI_PEAK_RSS = (
    """
import atexit, runpy, sys
atexit.register(lambda: print("PEAK_MB", """
    + _PEAK
    + """, file=sys.stderr))
sys.argv = {argv!r}
runpy.run_module({module!r}, run_name="__main__")
"""
)


def _cli_in_subprocess(module: str, argv: list[str]) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in MB) of `python -m module argv...`."""
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_PEAK_RSS.format(module=module, argv=[module, *argv])],
        capture_output=True,
        text=True,
        timeout=300,
        env=tiny_subprocess_env(),
    )
    return proc.returncode, proc.stderr, int(proc.stderr.rsplit("PEAK_MB", 1)[1])


def test_an_encoder_beyond_the_machine_is_refused_before_allocating(tiny, tmp_path):
    from test_train import _write_config

    started = time.time()
    code, stderr, peak_mb = _cli_in_subprocess(
        "ptlearn.train",
        [
            f"--config={_write_config(tmp_path, *tiny)}",
            f"--workdir={tmp_path / 'w'}",
            "--config.model.p_tuning.encoder_hidden=1000000000",
        ],
    )
    assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert re.search(r"model.p_tuning.encoder_hidden=1000000000: .* GiB", stderr), stderr
    assert peak_mb < CLI_RSS_BOUND_MB, peak_mb
    assert time.time() - started < 60
    config = tiny_config(*tiny)
    config.model.p_tuning.encoder_hidden = 10**9
    with pytest.raises(ConfigError, match=r"model.p_tuning.encoder_hidden=1000000000: .* GiB"):
        training.train_and_evaluate(config, str(tmp_path / "w2"))


def test_generation_longer_than_the_context_is_refused(tiny):
    model, _ = tiny
    started = time.time()
    code, stderr, peak_mb = _cli_in_subprocess(
        "ptlearn.lm",
        ["generate", f"--model={model}", "--prompt=hello", "--tokens_to_generate=1000000000"],
    )
    assert code == 2 and "Traceback" not in stderr
    assert "--tokens_to_generate=1000000000" in stderr and "context" in stderr
    assert peak_mb < CLI_RSS_BOUND_MB, peak_mb
    assert time.time() - started < 60
    config = tiny_config(*tiny)
    config.inference.tokens_to_generate = 10**9
    with pytest.raises(ConfigError, match="inference.tokens_to_generate"):
        config_checks.validate(config)


# Python, numpy and the importer's modules; a file that got read whole would add its size.
RSS_BOUND_MB = 400
_PEAK_RSS = (
    """
import sys
from ptlearn.errors import CheckpointError
try:
    {call}
except CheckpointError as err:
    print("ERROR", err)
print("PEAK_MB", """
    + _PEAK
    + """)
"""
)


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


def _stride_zero(path):
    import torch_format

    one = np.ones(1, np.float32)
    tensor = torch_format.StridedTensor(one, 0, (1000, 1000, 1000), (0, 0, 0))
    torch_format.save({"w": tensor}, path / "stride0.bin")
    return "torch_pickle.load_torch_file", path / "stride0.bin", "1000000000 elements"


def _shared_dicts(path):
    import pickle

    import torch_format

    node = {"step": 1}
    for _ in range(40):
        node = {"a": node, "b": node}  # 2^40 paths; pickle's memo writes each dict once
    torch_format.write_torch_zip(path / "shared.bin", pickle.dumps(node, protocol=2), {})
    return "torch_pickle.load_torch_file", path / "shared.bin", "appears twice"


def _gguf_blocks(path):
    return "load_model", _gguf(path / "liar.gguf", 10**9), "block_count=1000000000"


def _nemo_layers(path):
    import yaml
    from test_nemo_import import random_params, write_checkpoint

    from ptlearn import gpt

    config = gpt.VARIANTS["test"]
    write_checkpoint(path / "ckpt", config, random_params(config), tp=1, mcore=True)
    cfg = yaml.safe_load((path / "ckpt" / "model_config.yaml").read_text())
    cfg["num_layers"] = 10**9
    (path / "ckpt" / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    return "load_model", path / "ckpt", "num_layers=1000000000"


@pytest.mark.parametrize("build", [_stride_zero, _shared_dicts, _gguf_blocks, _nemo_layers])
def test_a_small_file_claiming_huge_sizes_fails_in_bounded_memory(tmp_path, build):
    """Each file is under 1 MB: the error is located, the loading process's peak RSS stays
    under the bound and the time under seconds."""
    function, path, says = build(tmp_path)
    assert sum(f.stat().st_size for f in [path, *path.rglob("*")] if f.is_file()) < 2**20
    module = "torch_pickle" if function.startswith("torch_pickle") else None
    call = (
        f"from ptlearn.checkpoints import torch_pickle; {function}({str(path)!r})"
        if module
        else f"from ptlearn.checkpoints import load_model; load_model({str(path)!r})"
    )
    started = time.time()
    # load_model imports jax (about 300 MB resident on its own).
    error, peak_mb = _load_in_subprocess(call)
    assert says in error and str(path) in error, error
    assert peak_mb < RSS_BOUND_MB + (0 if module else 600), peak_mb
    assert time.time() - started < 30
