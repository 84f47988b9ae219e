"""GGUF (llama.cpp) importer: architecture from metadata, dequantised weights, tokenizer."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ptlearn.checkpoints.loading import LoadedModel, check_params, stack_layers, unflatten
from ptlearn.errors import CheckpointError
from ptlearn.gguf_metadata import metadata_value, open_reader
from ptlearn.gpt import GPTConfig

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "gpt2", "gemma3")


def read_config(reader: Any, source: str) -> GPTConfig:
    """GPTConfig from the `{arch}.*` metadata keys."""
    arch = metadata_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{source}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def get(key: str, default: Any = None) -> Any:
        value = metadata_value(reader, f"{arch}.{key}", default)
        if value is None:
            raise CheckpointError(f"{source}: GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    # Layers are preallocated from the metadata's count: it must match the tensors present.
    blocks = {t.name.split(".")[1] for t in reader.tensors if t.name.startswith("blk.")}
    if int(get("block_count")) != len(blocks) or blocks != {str(i) for i in range(len(blocks))}:
        raise CheckpointError(
            f"{source}: {arch}.block_count={get('block_count')} but the file holds the "
            f"tensors of {len(blocks)} blocks; the metadata is damaged"
        )
    embed_dims = [int(d) for t in reader.tensors if t.name == "token_embd.weight" for d in t.shape]
    if not embed_dims or hidden not in embed_dims:
        raise CheckpointError(
            f"{source}: {arch}.embedding_length={hidden} does not match token_embd.weight "
            f"{embed_dims or '(missing)'}; the metadata is damaged"
        )
    embed_shape = next(t.shape for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(metadata_value(reader, f"{arch}.vocab_size", int(embed_shape[-1])))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    # What every architecture reads alike; each adds its own below.
    shared = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=int(get("block_count")),
        num_heads=heads,
        ffn_hidden_size=int(get("feed_forward_length")),
        max_position_embeddings=int(get("context_length")),
        tie_embeddings=not has_output,
    )
    if arch == "gpt2":
        return GPTConfig(
            **shared,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            position_embedding="learned",
            norm="layernorm",
            norm_eps=float(get("attention.layer_norm_epsilon", 1e-5)),
            activation="gelu_tanh",
            use_bias=True,
        )
    if arch == "gemma3":
        from ptlearn.gpt import _GEMMA3

        return GPTConfig(
            **shared,
            num_kv_heads=int(get("attention.head_count_kv", heads)),
            head_dim=int(get("attention.key_length")),
            norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_base=float(get("rope.freq_base", 1e6)),
            embed_scale=float(np.sqrt(hidden)),
            sliding_window=int(get("attention.sliding_window")),
            **_GEMMA3,
        )
    return GPTConfig(
        **shared,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("rope.dimension_count", hidden // heads)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(get("rope.freq_base", 10000.0)),
    )


def dequantize(tensor: Any) -> np.ndarray:
    """A GGUF tensor as float32 in PyTorch layout ([out, in] for matrices)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists the fastest dim first
    kind = GGMLQuantizationType(tensor.tensor_type)
    if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        data = np.asarray(tensor.data)
        if kind == GGMLQuantizationType.BF16:
            data = gguf_dequantize(data, kind)
    else:
        try:
            data = gguf_dequantize(np.asarray(tensor.data), kind)
        except NotImplementedError as err:
            raise CheckpointError(
                f"tensor {tensor.name}: quantisation {kind.name} cannot be dequantised "
                "by the installed gguf package"
            ) from err
    return np.asarray(data, dtype=np.float32).reshape(shape)


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of Q/K rows (back to the half-split layout).

    weight: [num_heads * head_dim, in] -> same shape.
    """
    out_dim, in_dim = weight.shape
    half = out_dim // num_heads // 2
    return weight.reshape(num_heads, half, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def _projections(
    t: dict[str, np.ndarray], c: GPTConfig, q: np.ndarray, k: np.ndarray
) -> dict[str, np.ndarray]:
    """A Llama-style block's attention and gated-MLP kernels, Q / K rows ([out, in]) given."""
    return {
        "attn/query/kernel": q.T.reshape(c.hidden_size, c.num_heads, c.head_dim),
        "attn/key/kernel": k.T.reshape(c.hidden_size, c.num_kv_heads, c.head_dim),
        "attn/value/kernel": t["attn_v.weight"].T.reshape(
            c.hidden_size, c.num_kv_heads, c.head_dim
        ),
        "attn/out/kernel": t["attn_output.weight"].T.reshape(
            c.num_heads, c.head_dim, c.hidden_size
        ),
        "mlp/gate/kernel": t["ffn_gate.weight"].T,
        "mlp/up/kernel": t["ffn_up.weight"].T,
        "mlp/down/kernel": t["ffn_down.weight"].T,
    }


def _llama_layer(t: dict[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    q = unpermute_rope_rows(t["attn_q.weight"], config.num_heads)
    k = unpermute_rope_rows(t["attn_k.weight"], config.num_kv_heads)
    return {
        "attn_norm/scale": t["attn_norm.weight"],
        "mlp_norm/scale": t["ffn_norm.weight"],
        **_projections(t, config, q, k),
    }


def _gemma3_layer(t: dict[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    """Gemma 3's block. llama.cpp keeps its Q / K rows in the half-split RoPE layout and
    stores every norm weight as 1 + w (Gemma's RMSNorm scales by 1 + w), a plain scale here."""
    return {
        "attn_norm/scale": t["attn_norm.weight"],
        "post_attn_norm/scale": t["post_attention_norm.weight"],
        "mlp_norm/scale": t["ffn_norm.weight"],
        "post_mlp_norm/scale": t["post_ffw_norm.weight"],
        "attn/query_norm/scale": t["attn_q_norm.weight"],
        "attn/key_norm/scale": t["attn_k_norm.weight"],
        **_projections(t, config, t["attn_q.weight"], t["attn_k.weight"]),
    }


def _gpt2_layer(t: dict[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    c = config
    qkv_w = t["attn_qkv.weight"].T  # [E, 3E], q | k | v
    qkv_b = t["attn_qkv.bias"]
    layer = {
        "attn_norm/scale": t["attn_norm.weight"],
        "attn_norm/bias": t["attn_norm.bias"],
        "mlp_norm/scale": t["ffn_norm.weight"],
        "mlp_norm/bias": t["ffn_norm.bias"],
        "attn/out/kernel": t["attn_output.weight"].T.reshape(
            c.num_heads, c.head_dim, c.hidden_size
        ),
        "attn/out/bias": t["attn_output.bias"],
        "mlp/up/kernel": t["ffn_up.weight"].T,
        "mlp/up/bias": t["ffn_up.bias"],
        "mlp/down/kernel": t["ffn_down.weight"].T,
        "mlp/down/bias": t["ffn_down.bias"],
    }
    for i, name in enumerate(("query", "key", "value")):
        cols = slice(i * c.hidden_size, (i + 1) * c.hidden_size)
        layer[f"attn/{name}/kernel"] = qkv_w[:, cols].reshape(
            c.hidden_size, c.num_heads, c.head_dim
        )
        layer[f"attn/{name}/bias"] = qkv_b[cols].reshape(c.num_heads, c.head_dim)
    return layer


def load(
    path: str | pathlib.Path, *, with_tokenizer: bool = True, dtype: Any = np.float32
) -> LoadedModel:
    """Reads a GGUF file: config from metadata, every tensor dequantised and cast to `dtype`
    one layer at a time (peak memory: the `dtype` model plus one float32 layer)."""
    source = str(path)
    reader = open_reader(path)
    config = read_config(reader, source)
    tensors = {t.name: t for t in reader.tensors}
    arch = metadata_value(reader, "general.architecture")
    layer_fn = {"gpt2": _gpt2_layer, "gemma3": _gemma3_layer}.get(arch, _llama_layer)

    def layers() -> Iterator[dict[str, np.ndarray]]:
        for i in range(config.num_layers):
            prefix = f"blk.{i}."
            names = [n for n in tensors if n.startswith(prefix)]
            layer_tensors = {n[len(prefix) :]: dequantize(tensors[n]) for n in names}
            try:
                yield layer_fn(layer_tensors, config)
            except KeyError as err:
                raise CheckpointError(f"{source}: layer {i} lacks tensor {err.args[0]}") from err

    def read(name: str) -> np.ndarray:
        return dequantize(tensors[name]).astype(dtype)

    flat = {"embed/embedding": read("token_embd.weight")}
    flat["final_norm/scale"] = read("output_norm.weight")
    if "output_norm.bias" in tensors:
        flat["final_norm/bias"] = read("output_norm.bias")
    if "position_embd.weight" in tensors:
        flat["pos_embed/embedding"] = read("position_embd.weight")
    if "output.weight" in tensors:
        flat["head/kernel"] = np.ascontiguousarray(read("output.weight").T)
    params = {**unflatten(flat), "layers": stack_layers(layers(), config.num_layers, dtype)}
    params = check_params(config, params, source, dtype)
    tokenizer = None
    if with_tokenizer:
        from ptlearn import tokenizers

        tokenizer = tokenizers.from_gguf(reader)
    return LoadedModel(config=config, params=params, tokenizer=tokenizer, source=source)
