"""NeMo Megatron GPT checkpoints written from known parameters load back to the same logits."""

import io
import json
import tarfile

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch_format
import yaml

from ptlearn import gpt
from ptlearn.checkpoints import load_model, nemo
from ptlearn.errors import CheckpointError

IDS = np.random.default_rng(0).integers(0, 256, (2, 11)).astype(np.int32)


def random_params(config, seed=0):
    params = nn.unbox(gpt.init_params(config, jax.random.key(seed)))["params"]
    params = jax.tree.map(np.array, params)
    rng = np.random.default_rng(seed)
    # Init leaves biases at 0 and norm scales at 1: randomise them so every mapping is tested.
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if path[-1].key in ("bias", "scale"):
            leaf += 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
    return params


def logits(config, params, ids):
    return jax.jit(lambda p: gpt.GPT(config).apply({"params": p}, ids)[0])(params)


def megatron_ranks(config, params, tp, mcore):
    """Per-rank Megatron state dicts (legacy or Megatron-core names) for `params`."""
    lay, e, k = params["layers"], config.hidden_size, config.num_kv_heads
    attn, mlp = lay["attn"], lay["mlp"]
    g = config.num_heads // k
    top = "model." if mcore else "model.language_model."
    pre = "model.decoder.layers." if mcore else "model.language_model.encoder.layers."
    ranks = [{} for _ in range(tp)]

    def put(name, full, axis):
        """axis 0: column-parallel, 1: row-parallel, None: replicated."""
        parts = [full] * tp if axis is None else np.split(full, tp, axis=axis)
        for rank, part in zip(ranks, parts, strict=True):
            rank[name] = np.ascontiguousarray(part)

    put(top + "embedding.word_embeddings.weight", params["embed"]["embedding"], 0)
    if "pos_embed" in params:
        put(top + "embedding.position_embeddings.weight", params["pos_embed"]["embedding"], None)
    final = "decoder.final_layernorm." if mcore else "encoder.final_layernorm."
    put(top + final + "weight", params["final_norm"]["scale"], None)
    if "bias" in params["final_norm"]:
        put(top + final + "bias", params["final_norm"]["bias"], None)
    if "head" in params:
        put(top + "output_layer.weight", params["head"]["kernel"].T, 0)
    for i in range(config.num_layers):
        p = f"{pre}{i}."
        q = attn["query"]["kernel"][i].transpose(1, 2, 0).reshape(k, g, -1, e)
        kv = [attn[n]["kernel"][i].transpose(1, 2, 0)[:, None] for n in ("key", "value")]
        qkv = np.concatenate([q, *kv], axis=1).reshape(-1, e)  # per group [q.., k, v]
        names = {
            "attn_norm": "self_attention.linear_qkv.layer_norm_" if mcore else "input_layernorm.",
            "mlp_norm": "mlp.linear_fc1.layer_norm_" if mcore else "post_attention_layernorm.",
            "qkv": "self_attention.linear_qkv." if mcore else "self_attention.query_key_value.",
            "proj": "self_attention.linear_proj." if mcore else "self_attention.dense.",
            "fc1": "mlp.linear_fc1." if mcore else "mlp.dense_h_to_4h.",
            "fc2": "mlp.linear_fc2." if mcore else "mlp.dense_4h_to_h.",
        }
        put(p + names["qkv"] + "weight", qkv, 0)
        put(p + names["proj"] + "weight", attn["out"]["kernel"][i].reshape(-1, e).T, 1)
        up = mlp["up"]["kernel"][i].T
        if "gate" in mlp:  # Megatron-core swiglu: each rank's fc1 is [gate shard; up shard]
            gates = np.split(mlp["gate"]["kernel"][i].T, tp)
            put(
                p + names["fc1"] + "weight",
                np.concatenate(
                    [np.concatenate([a, b]) for a, b in zip(gates, np.split(up, tp), strict=True)]
                ),
                0,
            )
        else:
            put(p + names["fc1"] + "weight", up, 0)
        put(p + names["fc2"] + "weight", mlp["down"]["kernel"][i].T, 1)
        for norm in ("attn_norm", "mlp_norm"):
            put(p + names[norm] + "weight", lay[norm]["scale"][i], None)
            if "bias" in lay[norm]:
                put(p + names[norm] + "bias", lay[norm]["bias"][i], None)
        if config.use_bias:
            bq = attn["query"]["bias"][i].reshape(k, g, -1)
            bkv = [attn[n]["bias"][i][:, None] for n in ("key", "value")]
            put(p + names["qkv"] + "bias", np.concatenate([bq, *bkv], axis=1).reshape(-1), 0)
            put(p + names["proj"] + "bias", attn["out"]["bias"][i], None)
            put(p + names["fc1"] + "bias", mlp["up"]["bias"][i], 0)
            put(p + names["fc2"] + "bias", mlp["down"]["bias"][i], None)
        if mcore:
            for rank in ranks:  # Transformer Engine's extra state is not a tensor
                rank[p + "self_attention.core_attention._extra_state"] = None
    return ranks


def model_yaml(config, tp, tokenizer=None):
    cfg = {
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_query_groups": config.num_kv_heads,
        "kv_channels": config.head_dim,
        "ffn_hidden_size": config.ffn_hidden_size,
        "max_position_embeddings": config.max_position_embeddings,
        "encoder_seq_length": config.max_position_embeddings,
        "position_embedding_type": "rope"
        if config.position_embedding == "rope"
        else "learned_absolute",
        "rotary_base": config.rope_base,
        "normalization": config.norm,
        "layernorm_epsilon": config.norm_eps,
        "bias": config.use_bias,
        # Megatron's fused bias-GELU is the tanh approximation, test-gpt2's activation.
        "activation": "swiglu" if config.activation == "swiglu" else "gelu",
        "share_embeddings_and_output_weights": config.tie_embeddings,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": 1,
    }
    if tokenizer:
        cfg["tokenizer"] = tokenizer
    return yaml.safe_dump(cfg)


def write_checkpoint(folder, config, params, tp, mcore, files=None):
    folder.mkdir()
    (folder / "model_config.yaml").write_text(
        model_yaml(config, tp, {k: f"nemo:{v}" for k, v in (files or {}).get("cfg", {}).items()})
    )
    for name, content in (files or {}).get("data", {}).items():
        (folder / name).write_text(content)
    ranks = megatron_ranks(config, params, tp, mcore)
    for r, state in enumerate(ranks):
        sub = folder if tp == 1 else folder / f"mp_rank_{r:02d}"
        sub.mkdir(exist_ok=True)
        torch_format.save(state, sub / "model_weights.ckpt", name="model_weights")


def tar_folder(folder, out, mode):
    with tarfile.open(out, mode) as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname="./" + path.relative_to(folder).as_posix(), recursive=False)
    return out


TOKENIZER = {
    "cfg": {"vocab_file": "a1b2_vocab.json", "merge_file": "c3d4_merges.txt"},
    "data": {
        "a1b2_vocab.json": json.dumps({"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}),
        "c3d4_merges.txt": "#version: 0.2\na b\n",
    },
}


def check_same_logits(loaded, config, params):
    assert loaded.config == config
    np.testing.assert_allclose(
        logits(config, loaded.params, IDS), logits(config, params, IDS), atol=1e-5, rtol=0
    )


def test_legacy_megatron_tp1_nemo_targz_with_tokenizer(tmp_path):
    config = gpt.VARIANTS["test-gpt2"]
    params = random_params(config)
    write_checkpoint(tmp_path / "ckpt", config, params, tp=1, mcore=False, files=TOKENIZER)
    archive = tar_folder(tmp_path / "ckpt", tmp_path / "model.nemo", "w:gz")
    loaded = nemo.load(archive)
    check_same_logits(loaded, config, params)
    assert loaded.source == str(archive)
    assert loaded.tokenizer.encode("abab") == [2, 2]
    assert loaded.tokenizer.eos_id == 3


def test_legacy_megatron_tp2_untied_plain_tar(tmp_path):
    config = gpt.VARIANTS["test-gpt2"].replace(tie_embeddings=False)
    params = random_params(config, seed=1)
    write_checkpoint(tmp_path / "ckpt", config, params, tp=2, mcore=False)
    archive = tar_folder(tmp_path / "ckpt", tmp_path / "model.nemo", "w")
    loaded = nemo.load(archive)
    check_same_logits(loaded, config, params)
    assert loaded.tokenizer is None


def test_mcore_llama_style_gqa_swiglu_tp2_folder(tmp_path):
    config = gpt.VARIANTS["test"]
    assert config.num_kv_heads < config.num_heads
    params = random_params(config, seed=2)
    write_checkpoint(tmp_path / "ckpt", config, params, tp=2, mcore=True)
    check_same_logits(nemo.load(tmp_path / "ckpt"), config, params)


def test_mismatched_tp_and_stray_tensors_are_errors(tmp_path):
    config = gpt.VARIANTS["test"]
    params = random_params(config)
    write_checkpoint(tmp_path / "ckpt", config, params, tp=2, mcore=True)
    cfg = yaml.safe_load((tmp_path / "ckpt" / "model_config.yaml").read_text())
    (tmp_path / "ckpt" / "model_config.yaml").write_text(
        yaml.safe_dump({**cfg, "tensor_model_parallel_size": 4})
    )
    with pytest.raises(CheckpointError, match="tensor_model_parallel_size=4"):
        nemo.load(tmp_path / "ckpt")

    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "model_config.yaml").write_text(model_yaml(config, 1))
    state = megatron_ranks(config, params, 1, True)[0]
    state["model.decoder.layers.0.mlp.router.weight"] = np.ones((2, 64), np.float32)
    torch_format.save(state, tmp_path / "one" / "model_weights.ckpt")
    with pytest.raises(CheckpointError, match="router"):
        nemo.load(tmp_path / "one")


def test_not_a_nemo_file(tmp_path):
    bad = tmp_path / "model.nemo"
    bad.write_bytes(io.BytesIO(b"not a tar").getvalue())
    with pytest.raises(CheckpointError, match="tar"):
        nemo.load(bad)
    with pytest.raises(CheckpointError, match="not found"):
        nemo.load(tmp_path / "absent.nemo")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("num_layers", 10**9, "the config says num_layers=1000000000"),
        ("hidden_size", 10**9, "tensor shapes do not match the config"),
        ("num_attention_heads", 0, "tensor shapes do not match the config"),
    ],
)
def test_yaml_sizes_are_checked_against_the_tensors_before_allocating(tmp_path, key, value, says):
    """A yaml claiming 10^9 layers (or a hidden size no tensor has) fails at once, naming it."""
    import time

    config = gpt.VARIANTS["test"]
    write_checkpoint(tmp_path / "ckpt", config, random_params(config), tp=1, mcore=True)
    cfg = yaml.safe_load((tmp_path / "ckpt" / "model_config.yaml").read_text())
    (tmp_path / "ckpt" / "model_config.yaml").write_text(yaml.safe_dump({**cfg, key: value}))
    started = time.time()
    with pytest.raises(CheckpointError, match=says):
        load_model(str(tmp_path / "ckpt"))
    assert time.time() - started < 10
