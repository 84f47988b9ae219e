"""Hugging Face folders written from known parameters load back to the same logits."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch_format
from safetensors.numpy import save_file

from ptlearn import gpt
from ptlearn.checkpoints import hf
from ptlearn.errors import CheckpointError


def random_params(config, seed=0):
    params = nn.unbox(gpt.init_params(config, jax.random.key(seed)))["params"]
    return jax.tree.map(np.array, params)  # writable copies


def logits(config, params, ids):
    return jax.jit(lambda p: gpt.GPT(config).apply({"params": p}, ids)[0])(params)


IDS = np.random.default_rng(0).integers(0, 256, (2, 11)).astype(np.int32)


def gpt2_files(config, params):
    """(config.json dict, {name: array}) in GPT2LMHeadModel's layout (Conv1D [in, out])."""
    layers, e = params["layers"], config.hidden_size
    sd = {
        "transformer.wte.weight": params["embed"]["embedding"],
        "transformer.wpe.weight": params["pos_embed"]["embedding"],
        "transformer.ln_f.weight": params["final_norm"]["scale"],
        "transformer.ln_f.bias": params["final_norm"]["bias"],
        "lm_head.weight": params["embed"]["embedding"],
    }
    attn = layers["attn"]
    for i in range(config.num_layers):
        p = f"transformer.h.{i}."
        qkv = [attn[n]["kernel"][i].reshape(e, -1) for n in ("query", "key", "value")]
        sd |= {
            p + "ln_1.weight": layers["attn_norm"]["scale"][i],
            p + "ln_1.bias": layers["attn_norm"]["bias"][i],
            p + "attn.c_attn.weight": np.concatenate(qkv, axis=1),
            p + "attn.c_attn.bias": np.concatenate(
                [attn[n]["bias"][i].reshape(-1) for n in ("query", "key", "value")]
            ),
            p + "attn.c_proj.weight": attn["out"]["kernel"][i].reshape(-1, e),
            p + "attn.c_proj.bias": attn["out"]["bias"][i],
            # The causal-mask buffer old GPT-2 files carry: not a weight.
            p + "attn.bias": np.tril(np.ones((1, 1, 8, 8), np.float32)),
            p + "ln_2.weight": layers["mlp_norm"]["scale"][i],
            p + "ln_2.bias": layers["mlp_norm"]["bias"][i],
            p + "mlp.c_fc.weight": layers["mlp"]["up"]["kernel"][i],
            p + "mlp.c_fc.bias": layers["mlp"]["up"]["bias"][i],
            p + "mlp.c_proj.weight": layers["mlp"]["down"]["kernel"][i],
            p + "mlp.c_proj.bias": layers["mlp"]["down"]["bias"][i],
        }
    hf_config = {
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_embd": e,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_positions": config.max_position_embeddings,
        "n_inner": config.ffn_hidden_size,
        "layer_norm_epsilon": config.norm_eps,
        "activation_function": "gelu_new",
    }
    return hf_config, sd


def write_folder(folder, hf_config, sd, fmt):
    """Writes config.json and the weights as `fmt`: safetensors | bin, optionally '-sharded'."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config))
    sd = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    kind, sharded = fmt.split("-")[0], fmt.endswith("-sharded")
    ext, stem = (".safetensors", "model") if kind == "safetensors" else (".bin", "pytorch_model")

    def write(tensors, path):
        if kind == "safetensors":
            save_file(tensors, str(path))
        else:
            torch_format.save(tensors, path, name=path.stem)

    if not sharded:
        write(sd, folder / (stem + ext))
        return
    names = sorted(sd)
    shards = {f"{stem}-0000{j + 1}-of-00002{ext}": names[j::2] for j in range(2)}
    for shard, keys in shards.items():
        write({k: sd[k] for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / f"{stem}{ext}.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_gpt2_folder_gives_same_logits(tmp_path, fmt):
    config = gpt.VARIANTS["test-gpt2"]
    params = random_params(config)
    write_folder(tmp_path / "gpt2", *gpt2_files(config, params), fmt)
    loaded = hf.load(tmp_path / "gpt2")
    assert loaded.config == config
    assert loaded.tokenizer is None
    np.testing.assert_allclose(
        logits(config, loaded.params, IDS), logits(config, params, IDS), atol=1e-5, rtol=0
    )


def test_folder_with_tokenizer_files_loads_the_tokenizer(tmp_path):
    config = gpt.VARIANTS["test-gpt2"]
    folder = tmp_path / "gpt2"
    write_folder(folder, *gpt2_files(config, random_params(config)), "safetensors")
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    tokenizer = hf.load(folder).tokenizer
    assert tokenizer.encode("abab") == [2, 2]
    assert tokenizer.eos_id == 3


@pytest.mark.parametrize("fmt", ["safetensors-sharded", "bin-sharded"])
def test_llama_gqa_sharded_folder_gives_same_logits(tmp_path, fmt):
    config = gpt.VARIANTS["test"]
    assert config.num_kv_heads < config.num_heads
    params = random_params(config, seed=1)
    write_folder(tmp_path / "llama", *hf.llama_state_dict(config, params), fmt)
    loaded = hf.load(tmp_path / "llama")
    assert loaded.config == config
    np.testing.assert_allclose(
        logits(config, loaded.params, IDS), logits(config, params, IDS), atol=1e-5, rtol=0
    )


def test_qwen2_qkv_biases_and_untied_head(tmp_path):
    config = gpt.VARIANTS["test"].replace(use_bias=True, tie_embeddings=False)
    params = random_params(config, seed=2)
    # Qwen2 has q/k/v biases only: the model it is equal to has zero output and MLP biases.
    params["layers"]["attn"]["out"]["bias"][:] = 0
    for name in ("gate", "up", "down"):
        params["layers"]["mlp"][name]["bias"][:] = 0
    for name in ("query", "key", "value"):  # init gives zero biases; make them matter
        bias = params["layers"]["attn"][name]["bias"]
        bias += np.random.default_rng(7).standard_normal(bias.shape).astype(np.float32)
    write_folder(tmp_path / "qwen", *hf.llama_state_dict(config, params, "qwen2"), "safetensors")
    loaded = hf.load(tmp_path / "qwen")
    assert loaded.config == config
    np.testing.assert_allclose(
        logits(config, loaded.params, IDS), logits(config, params, IDS), atol=1e-5, rtol=0
    )


def test_bfloat16_bin_loads_as_float32(tmp_path):
    import ml_dtypes

    config = gpt.VARIANTS["test"]
    params = random_params(config, seed=3)
    hf_config, sd = hf.llama_state_dict(config, params)
    sd = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    write_folder(tmp_path / "bf16", hf_config, sd, "bin")
    loaded = hf.load(tmp_path / "bf16")
    emb = loaded.params["embed"]["embedding"]
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, sd["model.embed_tokens.weight"].astype(np.float32))


def test_unknown_model_type_and_stray_tensors_are_errors(tmp_path):
    config = gpt.VARIANTS["test"]
    hf_config, sd = hf.llama_state_dict(config, random_params(config))
    write_folder(tmp_path / "bert", {**hf_config, "model_type": "bert"}, sd, "safetensors")
    with pytest.raises(CheckpointError, match=r"config\.json.*'bert'.*gpt2, llama"):
        hf.load(tmp_path / "bert")
    sd["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)
    write_folder(tmp_path / "stray", hf_config, sd, "safetensors")
    with pytest.raises(CheckpointError, match="q_norm"):
        hf.load(tmp_path / "stray")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(CheckpointError, match="no weights found"):
        hf.load(tmp_path / "empty")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/hostname", "sub/../../x"])
def test_a_shard_index_pointing_outside_its_folder_is_refused(tmp_path, shard):
    config = gpt.VARIANTS["test"]
    write_folder(
        tmp_path / "llama",
        *hf.llama_state_dict(config, random_params(config)),
        "safetensors-sharded",
    )
    index = tmp_path / "llama" / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    (tmp_path / "outside.safetensors").write_bytes(
        (tmp_path / "llama" / "model-00001-of-00002.safetensors").read_bytes()
    )
    weight_map[next(iter(weight_map))] = shard
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"shard .* lies outside"):
        hf.load(tmp_path / "llama")
