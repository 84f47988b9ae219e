"""Hugging Face model folders (GPT-2 and the Llama family) -> ptlearn GPT parameters.

A folder holds `config.json`, the weights as `model.safetensors`, a sharded
`model.safetensors.index.json`, `pytorch_model.bin` or a sharded `pytorch_model.bin.index.json`
(torch files are read by `torch_pickle`, which runs no code), and optionally tokenizer files.

Layouts converted: GPT-2's Conv1D weights are [in, out] and its attention is one fused
`c_attn` [E, 3E] (q | k | v, each heads-major); Llama-family `nn.Linear` weights are [out, in].
HF Llama's rotary layout is the half-split one ptlearn uses, so q / k need no permutation.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from ptlearn.checkpoints import torch_pickle
from ptlearn.checkpoints.loading import LoadedModel, ParamTree, check_params, stack_layers
from ptlearn.errors import CheckpointError
from ptlearn.gpt import GPTConfig

PathLike = str | os.PathLike

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
SUPPORTED_MODEL_TYPES = ("gpt2", *LLAMA_FAMILY)

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
    """{name: array} of a .safetensors file, memory-mapped (read-only), bfloat16 via ml_dtypes."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < header_len <= size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(
                f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}"
            )
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        if (
            end - begin != int(np.prod(shape)) * dtype.itemsize
            or not 0 <= begin <= end <= data.size
        ):
            raise CheckpointError(f"{path}: tensor {name} has inconsistent offsets / shape")
        tensors[name] = data[begin:end].view(dtype).reshape(shape)
    return tensors


def _read_index(index_path: pathlib.Path, read: Callable[[PathLike], dict]) -> dict:
    """Tensors of every shard named by a `*.index.json` weight map."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_path}: not a valid shard index ({e!r})") from e
    tensors: dict[str, np.ndarray] = {}
    folder = index_path.parent.resolve()
    for shard in sorted(set(map(str, weight_map.values()))):
        shard_path = index_path.parent / shard
        # A shard is a file of this folder: a name leading out of it could read any file.
        if pathlib.PurePath(shard).is_absolute() or folder not in shard_path.resolve().parents:
            raise CheckpointError(
                f"{index_path}: shard {shard!r} lies outside {folder}; an index names files of "
                "its own folder only"
            )
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard} is missing from the folder")
        tensors.update(read(shard_path))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f"{index_path}: tensors listed but absent from shards: {missing[:5]}")
    return tensors


def read_weights(root: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
    """(tensors by HF name, the file they came from) for the first weights format present."""
    formats = (
        ("model.safetensors", read_safetensors, False),
        ("model.safetensors.index.json", read_safetensors, True),
        ("pytorch_model.bin", torch_pickle.load_torch_file, False),
        ("pytorch_model.bin.index.json", torch_pickle.load_torch_file, True),
    )
    for name, read, sharded in formats:
        path = root / name
        if path.is_file():
            return (_read_index(path, read) if sharded else read(path)), str(path)
    raise CheckpointError(
        f"{root}: no weights found; expected one of {', '.join(n for n, _, _ in formats)}"
    )


def _read_config(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a Hugging Face model folder needs config.json")
    from ptlearn.tokenizers import read_json_object

    return read_json_object(path)


def _need(config: Mapping[str, Any], key: str, source: str) -> Any:
    if config.get(key) is None:
        raise CheckpointError(f"{source}: config key {key!r} is missing")
    return config[key]


def _gpt2_config(hf: Mapping[str, Any], source: str) -> GPTConfig:
    """GPTConfig from a GPT-2 config.json."""
    activations = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    act = hf.get("activation_function", "gelu_new")
    if act not in activations:
        raise CheckpointError(f"{source}: activation_function {act!r} is not one of {activations}")
    # Variants that change the attention maths, which ptlearn's attention does not implement.
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise CheckpointError(
            f"{source}: scale_attn_weights=false / scale_attn_by_inverse_layer_idx=true "
            "are not supported"
        )
    hidden, heads = int(_need(hf, "n_embd", source)), int(_need(hf, "n_head", source))
    return GPTConfig(
        vocab_size=int(_need(hf, "vocab_size", source)),
        hidden_size=hidden,
        num_layers=int(_need(hf, "n_layer", source)),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        ffn_hidden_size=int(hf.get("n_inner") or 4 * hidden),
        max_position_embeddings=int(hf.get("n_positions") or _need(hf, "n_ctx", source)),
        position_embedding="learned",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=activations[act],
        use_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _llama_config(hf: Mapping[str, Any], source: str, use_bias: bool) -> GPTConfig:
    """GPTConfig from a Llama / Mistral / Qwen2 config.json."""
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
    scaling = hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) != "default":
        raise CheckpointError(
            f"{source}: rope_scaling {scaling} is not supported (only plain RoPE with rope_theta)"
        )
    hidden, heads = (
        int(_need(hf, "hidden_size", source)),
        int(_need(hf, "num_attention_heads", source)),
    )
    return GPTConfig(
        vocab_size=int(_need(hf, "vocab_size", source)),
        hidden_size=hidden,
        num_layers=int(_need(hf, "num_hidden_layers", source)),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        ffn_hidden_size=int(_need(hf, "intermediate_size", source)),
        max_position_embeddings=int(_need(hf, "max_position_embeddings", source)),
        position_embedding="rope",
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation="swiglu",
        use_bias=use_bias,
        # LlamaConfig, MistralConfig and Qwen2Config all default to an untied head.
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_base=float(hf.get("rope_theta", 10000.0)),
    )


class _Tensors:
    """The checkpoint's tensors; `take` marks each one used, so leftovers can be reported."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str, ignorable: Callable):
        self._tensors = dict(tensors)
        self._source = source
        self._ignorable = ignorable

    def has(self, name: str) -> bool:
        return name in self._tensors

    def take(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._tensors.pop(name))
        except KeyError:
            raise CheckpointError(f"{self._source}: tensor {name} is missing") from None

    def check_all_used(self) -> None:
        left = sorted(k for k in self._tensors if not self._ignorable(k))
        if left:
            raise CheckpointError(
                f"{self._source}: {len(left)} tensors have no place in the model (e.g. {left[:5]});"
                " the config does not describe these weights"
            )


def _gpt2_params(t: _Tensors, c: GPTConfig) -> ParamTree:
    """GPT-2 tensors (Conv1D [in, out], names without 'transformer.') -> parameter tree."""
    e, n, d = c.hidden_size, c.num_heads, c.head_dim
    per_layer = []
    for i in range(c.num_layers):
        p = f"h.{i}."
        q, k, v = np.split(t.take(p + "attn.c_attn.weight"), 3, axis=1)  # each [E, N*D]
        qb, kb, vb = np.split(t.take(p + "attn.c_attn.bias"), 3)
        per_layer.append(
            {
                "attn_norm/scale": t.take(p + "ln_1.weight"),
                "attn_norm/bias": t.take(p + "ln_1.bias"),
                "attn/query/kernel": q.reshape(e, n, d),
                "attn/key/kernel": k.reshape(e, n, d),
                "attn/value/kernel": v.reshape(e, n, d),
                "attn/query/bias": qb.reshape(n, d),
                "attn/key/bias": kb.reshape(n, d),
                "attn/value/bias": vb.reshape(n, d),
                "attn/out/kernel": t.take(p + "attn.c_proj.weight").reshape(n, d, e),
                "attn/out/bias": t.take(p + "attn.c_proj.bias"),
                "mlp_norm/scale": t.take(p + "ln_2.weight"),
                "mlp_norm/bias": t.take(p + "ln_2.bias"),
                "mlp/up/kernel": t.take(p + "mlp.c_fc.weight"),
                "mlp/up/bias": t.take(p + "mlp.c_fc.bias"),
                "mlp/down/kernel": t.take(p + "mlp.c_proj.weight"),
                "mlp/down/bias": t.take(p + "mlp.c_proj.bias"),
            }
        )
    params: ParamTree = {
        "embed": {"embedding": t.take("wte.weight")},
        "pos_embed": {"embedding": t.take("wpe.weight")},
        "layers": stack_layers(per_layer),
        "final_norm": {"scale": t.take("ln_f.weight"), "bias": t.take("ln_f.bias")},
    }
    if not c.tie_embeddings:
        params["head"] = {"kernel": t.take("lm_head.weight").T}
    return params


def _llama_params(t: _Tensors, c: GPTConfig) -> ParamTree:
    """Llama-family tensors (nn.Linear [out, in]) -> parameter tree; absent biases are zero."""
    e, n, k, d, f = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.ffn_hidden_size

    def bias(name: str, shape: tuple[int, ...]) -> np.ndarray:
        # Qwen2 has q/k/v biases only: the others are exact zeros in ptlearn's all-bias layout.
        return t.take(name).reshape(shape) if t.has(name) else np.zeros(shape, np.float32)

    per_layer = []
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        layer = {
            "attn_norm/scale": t.take(p + "input_layernorm.weight"),
            "mlp_norm/scale": t.take(p + "post_attention_layernorm.weight"),
            "attn/query/kernel": t.take(a + "q_proj.weight").T.reshape(e, n, d),
            "attn/key/kernel": t.take(a + "k_proj.weight").T.reshape(e, k, d),
            "attn/value/kernel": t.take(a + "v_proj.weight").T.reshape(e, k, d),
            "attn/out/kernel": t.take(a + "o_proj.weight").T.reshape(n, d, e),
            "mlp/gate/kernel": t.take(m + "gate_proj.weight").T,
            "mlp/up/kernel": t.take(m + "up_proj.weight").T,
            "mlp/down/kernel": t.take(m + "down_proj.weight").T,
        }
        if c.use_bias:
            layer |= {
                "attn/query/bias": bias(a + "q_proj.bias", (n, d)),
                "attn/key/bias": bias(a + "k_proj.bias", (k, d)),
                "attn/value/bias": bias(a + "v_proj.bias", (k, d)),
                "attn/out/bias": bias(a + "o_proj.bias", (e,)),
                "mlp/gate/bias": bias(m + "gate_proj.bias", (f,)),
                "mlp/up/bias": bias(m + "up_proj.bias", (f,)),
                "mlp/down/bias": bias(m + "down_proj.bias", (e,)),
            }
        per_layer.append(layer)
    params: ParamTree = {
        "embed": {"embedding": t.take("model.embed_tokens.weight")},
        "layers": stack_layers(per_layer),
        "final_norm": {"scale": t.take("model.norm.weight")},
    }
    if not c.tie_embeddings:
        params["head"] = {"kernel": t.take("lm_head.weight").T}
    return params


def _gpt2_ignorable(name: str) -> bool:
    # Causal-mask buffers of old GPT-2 files, and a head saved beside the tied embedding.
    return name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight"


def _llama_ignorable(name: str) -> bool:
    return name.endswith("rotary_emb.inv_freq") or name == "lm_head.weight"


def _has_tokenizer(root: pathlib.Path) -> bool:
    return any(all((root / f).is_file() for f in files) for files in _TOKENIZER_FILES)


def load(folder: PathLike, dtype: Any = np.float32) -> LoadedModel:
    """A Hugging Face folder -> LoadedModel (`dtype` numpy params, tokenizer or None).

    Supported `model_type`s: gpt2, llama, mistral, qwen2. The tokenizer is read when the folder
    has tokenizer.json, vocab.json + merges.txt or tokenizer.model; otherwise it is None.
    """
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder; give a Hugging Face model folder")
    config_path = root / "config.json"
    hf = _read_config(config_path)
    source = str(config_path)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    tensors, weights_file = read_weights(root)
    if model_type == "gpt2":
        config = _gpt2_config(hf, source)
        # GPT2LMHeadModel prefixes the trunk with 'transformer.', GPT2Model does not.
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        t = _Tensors(tensors, weights_file, _gpt2_ignorable)
        params = _gpt2_params(t, config)
    else:
        has_bias = any(k.endswith("_proj.bias") for k in tensors)
        config = _llama_config(hf, source, use_bias=has_bias)
        t = _Tensors(tensors, weights_file, _llama_ignorable)
        params = _llama_params(t, config)
    t.check_all_used()
    params = check_params(config, params, weights_file, dtype)
    tokenizer = None
    if _has_tokenizer(root):
        from ptlearn import tokenizers  # lazily: importers need no tokenizer machinery otherwise

        tokenizer = tokenizers.from_hf_folder(root)
    return LoadedModel(config=config, params=params, tokenizer=tokenizer, source=str(root))


def llama_state_dict(
    config: GPTConfig, params: ParamTree, model_type: str = "llama"
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The inverse of `load` for a Llama-family ptlearn model: (config.json dict, {HF tensor
    name: array}) in LlamaForCausalLM's layout (nn.Linear [out, in]; no biases)."""
    layers, e = params["layers"], config.hidden_size
    attn, mlp = layers["attn"], layers["mlp"]
    tensors = {
        "model.embed_tokens.weight": params["embed"]["embedding"],
        "model.norm.weight": params["final_norm"]["scale"],
    }
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = params["head"]["kernel"].T
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": layers["attn_norm"]["scale"][i],
            p + "post_attention_layernorm.weight": layers["mlp_norm"]["scale"][i],
            p + "self_attn.o_proj.weight": attn["out"]["kernel"][i].reshape(-1, e).T,
            p + "mlp.gate_proj.weight": mlp["gate"]["kernel"][i].T,
            p + "mlp.up_proj.weight": mlp["up"]["kernel"][i].T,
            p + "mlp.down_proj.weight": mlp["down"]["kernel"][i].T,
        }
        for hf_name, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            tensors[p + f"self_attn.{hf_name}.weight"] = attn[name]["kernel"][i].reshape(e, -1).T
            if config.use_bias:
                tensors[p + f"self_attn.{hf_name}.bias"] = attn[name]["bias"][i].reshape(-1)
    hf_config = {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": e,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.ffn_hidden_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
    }
    return hf_config, tensors
