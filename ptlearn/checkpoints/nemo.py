"""NeMo Megatron GPT checkpoints (`.nemo` tar or its extracted folder) -> ptlearn GPT parameters.

A .nemo holds `model_config.yaml` and `model_weights.ckpt` (a torch.save of the Megatron state
dict, read by `torch_pickle`, which runs no code), or one `mp_rank_NN/model_weights.ckpt` per
tensor-parallel rank, plus tokenizer files the yaml names with a `nemo:` prefix.

Both state-dict namings are read: the legacy one (`model.language_model.encoder.layers.N...`,
`query_key_value`, `dense_h_to_4h`) and Megatron-core's (`model.decoder.layers.N...`,
`linear_qkv`, `linear_fc1`). Tensor-parallel ranks are merged: column-parallel weights (fused
QKV, h_to_4h / fc1, the vocab-parallel embedding and output layer) along their output rows,
row-parallel ones (attention output, 4h_to_h / fc2) along their input columns; their biases
and the norms are replicated. The fused QKV rows are per query group [q heads of the group,
k, v] x head_dim (without GQA: per head [q, k, v]), so each rank's slice is whole groups.
"""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from ptlearn.checkpoints import torch_pickle
from ptlearn.checkpoints.archive import extract_tar_safely
from ptlearn.checkpoints.loading import LoadedModel, ParamTree, check_params, stack_layers
from ptlearn.errors import CheckpointError
from ptlearn.gpt import GPTConfig

PathLike = str | os.PathLike

CONFIG_FILE = "model_config.yaml"
WEIGHTS_FILE = "model_weights.ckpt"

# Layer tensors by name suffix (legacy and Megatron-core) -> canonical name.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "input_layernorm.bias": "attn_norm.bias",
    "self_attention.linear_qkv.layer_norm_weight": "attn_norm.weight",
    "self_attention.linear_qkv.layer_norm_bias": "attn_norm.bias",
    "self_attention.query_key_value.weight": "qkv.weight",
    "self_attention.query_key_value.bias": "qkv.bias",
    "self_attention.linear_qkv.weight": "qkv.weight",
    "self_attention.linear_qkv.bias": "qkv.bias",
    "self_attention.dense.weight": "proj.weight",
    "self_attention.dense.bias": "proj.bias",
    "self_attention.linear_proj.weight": "proj.weight",
    "self_attention.linear_proj.bias": "proj.bias",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "post_attention_layernorm.bias": "mlp_norm.bias",
    "pre_mlp_layernorm.weight": "mlp_norm.weight",
    "pre_mlp_layernorm.bias": "mlp_norm.bias",
    "mlp.linear_fc1.layer_norm_weight": "mlp_norm.weight",
    "mlp.linear_fc1.layer_norm_bias": "mlp_norm.bias",
    "mlp.dense_h_to_4h.weight": "fc1.weight",
    "mlp.dense_h_to_4h.bias": "fc1.bias",
    "mlp.linear_fc1.weight": "fc1.weight",
    "mlp.linear_fc1.bias": "fc1.bias",
    # Legacy GLU models keep the "up" half in a second column-parallel layer.
    "mlp.dense_h_to_4h_2.weight": "fc1_up.weight",
    "mlp.dense_h_to_4h_2.bias": "fc1_up.bias",
    "mlp.dense_4h_to_h.weight": "fc2.weight",
    "mlp.dense_4h_to_h.bias": "fc2.bias",
    "mlp.linear_fc2.weight": "fc2.weight",
    "mlp.linear_fc2.bias": "fc2.bias",
}
_TOP_NAMES = {
    "language_model.embedding.word_embeddings.weight": "embed",
    "language_model.embedding.position_embeddings.weight": "pos_embed",
    "language_model.encoder.final_layernorm.weight": "final_norm.weight",
    "language_model.encoder.final_layernorm.bias": "final_norm.bias",
    "language_model.output_layer.weight": "output",
    "embedding.word_embeddings.weight": "embed",
    "embedding.position_embeddings.weight": "pos_embed",
    "decoder.final_layernorm.weight": "final_norm.weight",
    "decoder.final_layernorm.bias": "final_norm.bias",
    "output_layer.weight": "output",
}
_LAYER_PREFIX = re.compile(r"^(?:language_model\.(?:encoder|transformer)|decoder)\.layers\.(\d+)\.")
# Concatenated across ranks along rows (column-parallel) or columns (row-parallel).
_COLUMN_PARALLEL = ("embed", "output", "qkv.weight", "qkv.bias", "fc1.", "fc1_up.")
_ROW_PARALLEL = ("proj.weight", "fc2.weight")
_GLU = ("swiglu", "fast-swiglu")


def _ignorable(name: str) -> bool:
    # Transformer Engine state, rotary caches, and the PP>1 copy of the tied head.
    return name.endswith(("_extra_state", "inv_freq", "word_embeddings_for_head.weight"))


def canonical_names(state: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """A Megatron state dict -> {canonical name: tensor}: 'embed', 'layers.3.qkv.weight', ...

    Unknown tensors are an error (never silently dropped); TE extra state is skipped.
    """
    out: dict[str, np.ndarray] = {}
    unknown = []
    for key, tensor in state.items():
        name = key
        while name.startswith(("model.", "module.")):
            name = name.split(".", 1)[1]
        match = _LAYER_PREFIX.match(name)
        if match and name[match.end() :] in _LAYER_NAMES:
            out[f"layers.{match.group(1)}.{_LAYER_NAMES[name[match.end() :]]}"] = tensor
        elif name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = tensor
        elif not _ignorable(name):
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} tensors are not part of a Megatron GPT (e.g. {unknown[:5]})"
        )
    return out


def merge_tensor_parallel(ranks: list[dict[str, np.ndarray]], source: str) -> dict:
    """Canonical tensors of each TP rank -> the unsplit canonical tensors."""
    names = sorted(ranks[0])
    for r, rank in enumerate(ranks[1:], start=1):
        if sorted(rank) != names:
            diff = sorted(set(names) ^ set(rank))
            raise CheckpointError(f"{source}: rank {r} holds different tensors from rank 0: {diff}")
    merged = {}
    for name in names:
        parts = [np.asarray(rank[name]) for rank in ranks]
        layer_part = name.split(".", 2)[-1] if name.startswith("layers.") else name
        if layer_part.startswith(_COLUMN_PARALLEL):
            merged[name] = np.concatenate(parts, axis=0)
        elif layer_part in _ROW_PARALLEL:
            merged[name] = np.concatenate(parts, axis=1)
        else:
            merged[name] = parts[0]
    return merged


def _split_fused_glu(rank: dict[str, np.ndarray]) -> None:
    """Megatron-core / fast-swiglu keep [gate; up] in one fc1 per rank: split it in place."""
    for name in [n for n in rank if n.endswith(".fc1.weight") or n.endswith(".fc1.bias")]:
        up_name = name.replace(".fc1.", ".fc1_up.")
        if up_name not in rank:
            rank[name], rank[up_name] = np.split(np.asarray(rank[name]), 2, axis=0)


def _get(cfg: Mapping[str, Any], key: str, source: str) -> Any:
    if cfg.get(key) is None:
        raise CheckpointError(f"{source}: key {key!r} is missing")
    return cfg[key]


def nemo_config(cfg: Mapping[str, Any], vocab_size: int, source: str) -> GPTConfig:
    """GPTConfig from a Megatron GPT model_config.yaml (vocab size from the embedding tensor)."""
    hidden = int(_get(cfg, "hidden_size", source))
    heads = int(_get(cfg, "num_attention_heads", source))
    positions = cfg.get("position_embedding_type", "learned_absolute")
    if positions not in ("learned_absolute", "rope"):
        raise CheckpointError(
            f"{source}: position_embedding_type {positions!r} is not supported "
            "(learned_absolute or rope)"
        )
    if positions == "rope" and float(cfg.get("rotary_percentage", 1.0)) != 1.0:
        raise CheckpointError(f"{source}: rotary_percentage != 1.0 is not supported")
    norm = cfg.get("normalization", "layernorm")
    if norm not in ("layernorm", "layernorm1p", "rmsnorm"):
        raise CheckpointError(f"{source}: normalization {norm!r} is not supported")
    for key, ok in (
        ("transformer_block_type", "pre_ln"),
        ("apply_residual_connection_post_layernorm", False),
    ):
        if cfg.get(key, ok) != ok:
            raise CheckpointError(f"{source}: {key}={cfg[key]!r} is not supported ({ok!r} only)")
    bias = bool(cfg.get("bias", True))
    act = cfg.get("activation", "gelu")
    if act == "gelu":
        # Megatron's fused bias-GELU kernel (on by default) is the tanh approximation.
        fused = bool(cfg.get("bias_activation_fusion", True)) and bias
        activation = "gelu_tanh" if fused or cfg.get("openai_gelu", False) else "gelu"
    elif act in _GLU:
        activation = "swiglu"
    else:
        raise CheckpointError(f"{source}: activation {act!r} is not supported (gelu, swiglu)")
    return GPTConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_layers=int(_get(cfg, "num_layers", source)),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_query_groups") or heads),
        head_dim=int(cfg.get("kv_channels") or hidden // heads),
        ffn_hidden_size=int(cfg.get("ffn_hidden_size") or 4 * hidden),
        max_position_embeddings=int(
            cfg.get("max_position_embeddings") or _get(cfg, "encoder_seq_length", source)
        ),
        position_embedding="rope" if positions == "rope" else "learned",
        norm="rmsnorm" if norm == "rmsnorm" else "layernorm",
        norm_eps=float(cfg.get("layernorm_epsilon", 1e-5)),
        activation=activation,
        use_bias=bias,
        tie_embeddings=bool(cfg.get("share_embeddings_and_output_weights", True)),
        rope_base=float(cfg.get("rotary_base", 10000.0)),
    )


def _layer_params(t: dict[str, np.ndarray], i: int, c: GPTConfig, norm1p: bool) -> dict:
    """One layer's canonical Megatron tensors ([out, in] weights) -> block parameters."""
    e, n, k, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    per_group = n // k
    p = f"layers.{i}."

    def take(name: str) -> np.ndarray:
        try:
            return np.asarray(t.pop(p + name))
        except KeyError:
            raise CheckpointError(f"layer {i}: tensor {name} is missing") from None

    qkv = take("qkv.weight").reshape(k, per_group + 2, d, e)
    out = {
        "attn/query/kernel": qkv[:, :per_group].reshape(n, d, e).transpose(2, 0, 1),
        "attn/key/kernel": qkv[:, per_group].transpose(2, 0, 1),
        "attn/value/kernel": qkv[:, per_group + 1].transpose(2, 0, 1),
        "attn/out/kernel": take("proj.weight").T.reshape(n, d, e),
        "mlp/up/kernel": take("fc1.weight").T,
        "mlp/down/kernel": take("fc2.weight").T,
    }
    if c.activation == "swiglu":
        out["mlp/gate/kernel"] = out.pop("mlp/up/kernel")
        out["mlp/up/kernel"] = take("fc1_up.weight").T
    if c.use_bias:
        qkv_bias = take("qkv.bias").reshape(k, per_group + 2, d)
        out |= {
            "attn/query/bias": qkv_bias[:, :per_group].reshape(n, d),
            "attn/key/bias": qkv_bias[:, per_group],
            "attn/value/bias": qkv_bias[:, per_group + 1],
            "attn/out/bias": take("proj.bias"),
            "mlp/up/bias": take("fc1.bias"),
            "mlp/down/bias": take("fc2.bias"),
        }
        if c.activation == "swiglu":
            out["mlp/gate/bias"] = out.pop("mlp/up/bias")
            out["mlp/up/bias"] = take("fc1_up.bias")
    # layernorm1p stores scale - 1 (zero-centred gamma).
    shift = 1.0 if norm1p else 0.0
    for norm in ("attn_norm", "mlp_norm"):
        out[f"{norm}/scale"] = take(f"{norm}.weight") + shift
        if c.norm == "layernorm":
            out[f"{norm}/bias"] = take(f"{norm}.bias")
    return out


def to_params(tensors: dict[str, np.ndarray], c: GPTConfig, norm1p: bool, source: str) -> dict:
    """Merged canonical tensors -> the GPT parameter tree (unchecked)."""
    t = dict(tensors)
    layer_ids = {int(name.split(".")[1]) for name in t if name.startswith("layers.")}
    # Counted before any range over num_layers: a yaml may claim 10^9 layers.
    if len(layer_ids) != c.num_layers or layer_ids != set(range(len(layer_ids))):
        raise CheckpointError(
            f"{source}: holds layers {sorted(layer_ids)[:3]}...{sorted(layer_ids)[-1:]} "
            f"({len(layer_ids)}), the config says num_layers={c.num_layers}"
        )
    try:
        per_layer = [_layer_params(t, i, c, norm1p) for i in range(c.num_layers)]
        params: ParamTree = {
            "embed": {"embedding": t.pop("embed")},
            "layers": stack_layers(per_layer),
            "final_norm": {"scale": t.pop("final_norm.weight") + (1.0 if norm1p else 0.0)},
        }
        if c.norm == "layernorm":
            params["final_norm"]["bias"] = t.pop("final_norm.bias")
        if c.position_embedding == "learned":
            params["pos_embed"] = {"embedding": t.pop("pos_embed")}
        if not c.tie_embeddings:
            params["head"] = {"kernel": t.pop("output").T}
    except (KeyError, CheckpointError) as e:
        raise CheckpointError(f"{source}: a tensor the config needs is missing ({e})") from e
    except ValueError as e:  # a reshape that does not fit: the yaml and the tensors disagree
        raise CheckpointError(f"{source}: tensor shapes do not match the config ({e})") from e
    # The output layer of a tied model is the embedding again; anything else is unexplained.
    left = sorted(n for n in t if not (n == "output" and c.tie_embeddings))
    if left:
        raise CheckpointError(f"{source}: tensors not used by the config: {left[:5]}")
    return params


def _weight_files(folder: pathlib.Path, cfg: Mapping[str, Any], source: str) -> list:
    """The model_weights.ckpt of each tensor-parallel rank, in rank order."""
    if int(cfg.get("pipeline_model_parallel_size", 1) or 1) > 1:
        raise CheckpointError(
            f"{source}: pipeline_model_parallel_size > 1 is not supported; merge the pipeline "
            "stages first (NeMo's megatron_change_num_partitions.py --target_pipeline_model_"
            "parallel_size=1)"
        )
    if (folder / WEIGHTS_FILE).is_file():
        files = [folder / WEIGHTS_FILE]
    else:
        rank_dir = re.compile(r"^(?:mp_rank_(\d+)|tp_rank_(\d+)_pp_rank_0+)$")
        ranks = {}
        for d in folder.iterdir():
            m = rank_dir.match(d.name)
            if m and (d / WEIGHTS_FILE).is_file():
                ranks[int(m.group(1) or m.group(2))] = d / WEIGHTS_FILE
        if not ranks:
            hint = (
                " (a 'model_weights/' distributed checkpoint, which ptlearn does not read)"
                if (folder / "model_weights").is_dir()
                else ""
            )
            raise CheckpointError(
                f"{source}: no {WEIGHTS_FILE} nor mp_rank_NN/{WEIGHTS_FILE} found{hint}"
            )
        if sorted(ranks) != list(range(len(ranks))):
            raise CheckpointError(f"{source}: tensor-parallel ranks {sorted(ranks)} have gaps")
        files = [ranks[r] for r in range(len(ranks))]
    tp = int(cfg.get("tensor_model_parallel_size", 1) or 1)
    if tp != len(files):
        raise CheckpointError(
            f"{source}: tensor_model_parallel_size={tp} in {CONFIG_FILE} but {len(files)} "
            "rank checkpoint(s) found"
        )
    return files


def _read_yaml(path: pathlib.Path, source: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{source}: {CONFIG_FILE} not found; is this a .nemo model?")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{source}: {CONFIG_FILE} is not valid YAML ({e})") from e
    if isinstance(cfg, dict) and "hidden_size" not in cfg and isinstance(cfg.get("model"), dict):
        cfg = cfg["model"]  # a full training config rather than the model section
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: {CONFIG_FILE} is not a mapping")
    return cfg


def _tokenizer_file(folder: pathlib.Path, value: Any) -> pathlib.Path | None:
    """A tokenizer file the yaml names ('nemo:abc_vocab.json'), if the archive carries it."""
    if not isinstance(value, str) or not value:
        return None
    path = folder / pathlib.PurePath(value.removeprefix("nemo:")).name
    return path if path.is_file() else None


def load_tokenizer(folder: pathlib.Path, cfg: Mapping[str, Any]) -> Any:
    """The tokenizer shipped in the archive (SentencePiece or GPT-2 BPE), or None."""
    tok_cfg = cfg.get("tokenizer") or {}
    model = _tokenizer_file(folder, tok_cfg.get("model"))
    vocab = _tokenizer_file(folder, tok_cfg.get("vocab_file"))
    merges = _tokenizer_file(folder, tok_cfg.get("merge_file"))
    if model is None and not (vocab and merges):
        return None
    from ptlearn import tokenizers  # lazily: importers need no tokenizer machinery otherwise

    if model is not None:
        return tokenizers.from_sentencepiece(model)
    tok = tokenizers.from_byte_level_bpe(vocab, merges)
    # Megatron's GPT-2 BPE uses <|endoftext|> as its end-of-document (and start) token.
    eod = tok.token_to_id("<|endoftext|>")
    if eod is not None:
        tok.eos_id = tok.bos_id = eod
    return tok


def _load_folder(folder: pathlib.Path, source: str, dtype: Any) -> LoadedModel:
    cfg = _read_yaml(folder / CONFIG_FILE, source)
    ranks = []
    for path in _weight_files(folder, cfg, source):
        rank = canonical_names(torch_pickle.load_torch_file(path), str(path))
        if cfg.get("activation", "gelu") in _GLU:
            _split_fused_glu(rank)
        ranks.append(rank)
    tensors = merge_tensor_parallel(ranks, source)
    if "embed" not in tensors:
        raise CheckpointError(f"{source}: no word embeddings in {WEIGHTS_FILE}")
    config = nemo_config(cfg, int(tensors["embed"].shape[0]), f"{source}: {CONFIG_FILE}")
    norm1p = cfg.get("normalization") == "layernorm1p"
    params = check_params(config, to_params(tensors, config, norm1p, source), source, dtype)
    return LoadedModel(config, params, load_tokenizer(folder, cfg), source)


def load(path: PathLike, dtype: Any = np.float32) -> LoadedModel:
    """A `.nemo` file (tar, plain or gzip) or its extracted folder -> LoadedModel (`dtype`
    numpy params).

    Tensor-parallel checkpoints (mp_rank_NN/) are merged; pipeline-parallel ones are refused.
    The tokenizer is read when the archive carries the files its yaml names, else it is None.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        return _load_folder(path, str(path), dtype)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; give a .nemo file or its extracted folder")
    with tempfile.TemporaryDirectory(prefix="ptlearn-nemo-") as tmp:
        return _load_folder(extract_tar_safely(path, tmp), str(path), dtype)
