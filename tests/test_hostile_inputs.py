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
