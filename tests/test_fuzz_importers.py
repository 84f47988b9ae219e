"""Mutated checkpoints never crash, hang or allocate without bound: each small valid file of
every importer (GGUF, safetensors, torch .bin, .nemo), with random byte flips or cut short,
either loads or raises one CheckpointError naming it."""

import json
import re
import shutil
import time

import gguf
import numpy as np
import pytest
import torch_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from test_nemo_import import random_params, tar_folder, write_checkpoint

from ptlearn import gpt
from ptlearn.checkpoints import hf, load_model
from ptlearn.errors import CheckpointError

CONFIG = gpt.GPTConfig(
    vocab_size=64,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    ffn_hidden_size=32,
    max_position_embeddings=32,
)
EXAMPLES = 30  # per format: the suite stays within a minute
SECONDS_PER_LOAD = 10
# Growth of peak RSS over one load: these files are a few KB, a lying header must not pay.
RSS_GROWTH_MB = 256


def _peak_rss_mb() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) // 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _gguf_file(folder, params):
    writer = gguf.GGUFWriter(str(folder / "m.gguf"), arch="llama")
    c = CONFIG
    writer.add_block_count(c.num_layers)
    writer.add_embedding_length(c.hidden_size)
    writer.add_head_count(c.num_heads)
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_feed_forward_length(c.ffn_hidden_size)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_tensor("token_embd.weight", params["embed"]["embedding"])
    writer.add_tensor("output_norm.weight", params["final_norm"]["scale"])
    lay, e = params["layers"], c.hidden_size
    names = {"attn_q": "query", "attn_k": "key", "attn_v": "value"}
    for i in range(c.num_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", lay["attn_norm"]["scale"][i])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", lay["mlp_norm"]["scale"][i])
        for name, key in names.items():
            kernel = np.ascontiguousarray(lay["attn"][key]["kernel"][i].reshape(e, -1).T)
            writer.add_tensor(f"blk.{i}.{name}.weight", kernel)
        out = lay["attn"]["out"]["kernel"][i].reshape(-1, e).T
        writer.add_tensor(f"blk.{i}.attn_output.weight", np.ascontiguousarray(out))
        for name in ("gate", "up", "down"):
            kernel = np.ascontiguousarray(lay["mlp"][name]["kernel"][i].T)
            writer.add_tensor(f"blk.{i}.ffn_{name}.weight", kernel)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return folder / "m.gguf", folder / "m.gguf"


def _hf_folder(folder, params, fmt):
    hf_config, tensors = hf.llama_state_dict(CONFIG, params)
    model = folder / "hf"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(hf_config))
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if fmt == "safetensors":
        save_file(tensors, str(model / "model.safetensors"))
        return model, model / "model.safetensors"
    torch_format.save(tensors, model / "pytorch_model.bin")
    return model, model / "pytorch_model.bin"


def _nemo_file(folder, params):
    write_checkpoint(folder / "ckpt", CONFIG, params, tp=1, mcore=True)
    out = tar_folder(folder / "ckpt", folder / "m.nemo", "w")
    return out, out


FORMATS = {
    "gguf": _gguf_file,
    "safetensors": lambda f, p: _hf_folder(f, p, "safetensors"),
    "torch-bin": lambda f, p: _hf_folder(f, p, "bin"),
    "nemo": _nemo_file,
}


@pytest.fixture(scope="module", params=sorted(FORMATS))
def valid_file(request, tmp_path_factory):
    """(what to load, the file to mutate, its valid bytes), checked to load unmutated."""
    folder = tmp_path_factory.mktemp(request.param)
    params = random_params(CONFIG)
    spec, target = FORMATS[request.param](folder, params)
    load_model(str(spec), with_tokenizer=False)
    return spec, target, target.read_bytes()


def _mutate(data: bytes, draw) -> bytes:
    """Truncation, or 1-8 byte overwrites biased to the header (where lies do harm)."""
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        end = min(len(out), 4096) if draw(st.booleans()) else len(out)
        out[draw(st.integers(0, end - 1))] = draw(st.integers(0, 255))
    return bytes(out)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same files every run: CI failures reproduce
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_mutated_file_loads_or_raises_one_checkpoint_error(valid_file, data, tmp_path):
    spec, target, valid = valid_file
    mutated = _mutate(valid, data.draw)
    work = tmp_path / "m"
    shutil.rmtree(work, ignore_errors=True)
    if spec.is_dir():
        shutil.copytree(spec, work)
        load_from, write_to = work, work / target.name
    else:
        work.mkdir()
        load_from = write_to = work / target.name
    write_to.write_bytes(mutated)
    measured = _reset_peak_rss()
    before = _peak_rss_mb()
    started = time.time()
    try:
        load_model(str(load_from), with_tokenizer=False)
    except CheckpointError as err:
        assert str(load_from) in str(err) or str(write_to) in str(err), str(err)
    assert time.time() - started < SECONDS_PER_LOAD
    if measured:
        assert _peak_rss_mb() - before < RSS_GROWTH_MB
