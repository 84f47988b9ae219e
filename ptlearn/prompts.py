"""Virtual prompts: per-task prompt tables (prompt tuning) and the trees p-tuning trains (its encoders: prompt_encoders.py).

Prompt parameters live in their own tree, one leaf group per task so that tasks can be frozen or
added independently:

  prompt tuning:  {"tables": {task: [P_task, E]}}
  p-tuning:       {"inputs": {task: [P_task, E_in]}, "encoder": {...}}
  deep prompts:   {"tables": {task: [P_task, L, 2, K, D]}} (keys and values at every layer),
                  or p-tuning's tree whose encoder output is reshaped to [P_task, L, 2, K, D]

A row of a table is what one virtual token contributes: an input embedding [E], or for deep
prompts (prefix tuning / P-tuning v2) a key and a value per layer [L, 2, K, D] that the frozen
GPT takes as its key/value override (`prompted.prompted_inputs`).

One encoder is shared by all tasks trained together; each task feeds it its own learned inputs,
so tasks get distinct prompts. A tree may hold both groups (old tasks frozen into tables, new
tasks still being p-tuned). `prompt_tables` turns the tree into one [num_tasks, P_max, E] array
per step and `combine` writes its rows into the virtual-token slots of the token embeddings.

Logical axes: `prompt_tokens` (the P virtual tokens), `prompt_embed` (E or E_in),
`prompt_hidden` / `prompt_hidden_out` (encoder hidden, the input and output side of square
kernels, both replicated) and `prompt_mlp` (tpmlp's hidden, which the
sharding rules map to the model axis). Init functions return parameters boxed with these axes
(as `gpt.init_params` does); every other function also accepts plain (unboxed) arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import config_lib
from ptlearn.errors import ConfigError
from ptlearn.prompt_encoders import EncoderConfig, PromptEncoder, init_encoder

PROMPT_STYLES = config_lib.VIRTUAL_PROMPT_STYLES
INIT_METHODS = ("text", "random", "vocab", "labels")
TABLE_AXES = ("prompt_tokens", "prompt_embed")
# Deep tables split over the heads like the model's own keys and values.
DEEP_TABLE_AXES = ("prompt_tokens", "layers", "prompt_kv", "kv_heads", "head_dim")
# Low ids are the most frequent tokens in BPE vocabularies (merges are learned by frequency).
VOCAB_INIT_TOP = 5000

PromptParams = dict[str, Any]


def _check_task_name(task: str) -> None:
    if not isinstance(task, str) or not task or "/" in task:
        raise ConfigError(
            f"model.new_tasks: task name {task!r} must be a non-empty string without '/' "
            "(it becomes a parameter path component)"
        )


def box_table(table: jax.Array) -> nn.Partitioned:
    """A table [P, E] or deep [P, L, 2, K, D] boxed with its logical axes."""
    return nn.Partitioned(table, names=TABLE_AXES if table.ndim == 2 else DEEP_TABLE_AXES)


# --------------------------------------------------------------------------------------------
# Prompt tuning: initial tables


def _sample_vocab_ids(
    rng: jax.Array, vocab_size: int, count: int, exclude: set[int], task: str
) -> np.ndarray:
    """`count` distinct ids, from the first VOCAB_INIT_TOP ids first, none of them in `exclude`."""
    top = min(vocab_size, VOCAB_INIT_TOP)
    first, rest = jax.random.split(rng)
    order = np.asarray(jax.random.permutation(first, top))
    picked = [int(i) for i in order if int(i) not in exclude][:count]
    if len(picked) < count and top < vocab_size:
        # The frequent ids ran out (P close to 5000, or many label ids): draw from the rest.
        others = top + np.asarray(jax.random.permutation(rest, vocab_size - top))
        picked += [int(i) for i in others if int(i) not in exclude][: count - len(picked)]
    if len(picked) < count:
        raise ConfigError(
            f"task {task!r}: {count} distinct vocabulary rows are needed to initialise the prompt "
            f"but the vocabulary has only {vocab_size - len(exclude)} to offer; use fewer virtual "
            "tokens or model.prompt_tuning.new_prompt_init_methods=random"
        )
    return np.asarray(picked, np.int32)


def _checked_ids(
    init_token_ids: Sequence[int] | np.ndarray | None, vocab_size: int, method: str, task: str
) -> np.ndarray:
    key = (
        "model.prompt_tuning.new_prompt_init_text"
        if method == "text"
        else "model.prompt_tuning.new_prompt_init_methods"
    )
    what = "the init text's token ids" if method == "text" else "the class labels' token ids"
    if init_token_ids is None or len(init_token_ids) == 0:
        raise ConfigError(
            f"{key}: task {task!r} uses init method {method!r} but {what} are empty; give a "
            "non-empty text / labels or choose init method 'random' or 'vocab'"
        )
    ids = np.asarray(init_token_ids, np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise ConfigError(
            f"{key}: task {task!r}: token id {int(bad[0])} is outside the model's vocabulary "
            f"[0, {vocab_size}); was the text tokenised with the base model's tokenizer?"
        )
    return ids.astype(np.int32)


def init_prompt_table(
    method: str,
    num_tokens: int,
    embedding_table: jax.Array,
    rng: jax.Array,
    *,
    init_token_ids: Sequence[int] | np.ndarray | None = None,
    task: str = "?",
) -> jax.Array:
    """A task's initial prompt table [P, E] float32 (pure; call outside Flax).

    method: `text` (embeddings of `init_token_ids`, the tokenised init text, repeated cyclically
    to fill P or cut to P, as NeMo and Lester et al.); `random` (normal with mean 0 and the
    embedding table's standard deviation: the LM sees inputs of the scale it was trained on,
    where Lester's uniform [-0.5, 0.5] would be ~25x too large for a std-0.02 table); `vocab`
    (P distinct rows sampled from ids < 5000, the most frequent in BPE vocabularies); `labels`
    (the embeddings of `init_token_ids`, the class labels' token ids, deduplicated in order, then
    distinct sampled vocab rows for the rest, as Lester et al.).
    num_tokens: P. embedding_table: the LM's [V, E] token embeddings. task: for messages.
    """
    if method not in INIT_METHODS:
        raise ConfigError(
            f"model.prompt_tuning.new_prompt_init_methods: task {task!r} has unknown init method "
            f"{method!r}; use one of {', '.join(INIT_METHODS)}"
        )
    if num_tokens < 0:
        raise ConfigError(f"task {task!r}: total_virtual_tokens={num_tokens} must be >= 0")
    table = jnp.asarray(nn.meta.unbox(embedding_table), jnp.float32)
    vocab_size = table.shape[0]
    if num_tokens == 0:  # no virtual prompt: the frozen model zero-shot or in-context
        return jnp.zeros((0, table.shape[1]), jnp.float32)
    if method == "random":
        std = jnp.std(table)
        return std * jax.random.normal(rng, (num_tokens, table.shape[1]), jnp.float32)
    if method == "text":
        ids = _checked_ids(init_token_ids, vocab_size, method, task)
        return table[np.resize(ids, num_tokens)]
    if method == "vocab":
        return table[_sample_vocab_ids(rng, vocab_size, num_tokens, set(), task)]
    label_ids = list(dict.fromkeys(_checked_ids(init_token_ids, vocab_size, method, task).tolist()))
    if len(label_ids) > num_tokens:
        logging.warning(
            "task %r: %d label token ids but only %d virtual tokens; the prompt starts from the "
            "first %d",
            task,
            len(label_ids),
            num_tokens,
            num_tokens,
        )
        label_ids = label_ids[:num_tokens]
    fill = _sample_vocab_ids(rng, vocab_size, num_tokens - len(label_ids), set(label_ids), task)
    return table[np.concatenate([np.asarray(label_ids, np.int32), fill])]


def init_prompt_tuning(
    new_tasks: Sequence[str],
    num_tokens: Sequence[int],
    init_methods: Sequence[str],
    init_token_ids: Sequence[Sequence[int] | np.ndarray | None],
    embedding_table: jax.Array,
    rng: jax.Array,
) -> PromptParams:
    """{"tables": {task: [P_task, E]}} for the new tasks, boxed with TABLE_AXES.

    The sequences are aligned with `new_tasks` (model.new_tasks, the templates'
    total_virtual_tokens, model.prompt_tuning.new_prompt_init_methods, and the tokenised
    model.prompt_tuning.new_prompt_init_text or class labels; None where the method needs none).
    """
    lists = {
        "total_virtual_tokens (from model.task_templates)": num_tokens,
        "model.prompt_tuning.new_prompt_init_methods": init_methods,
        "model.prompt_tuning.new_prompt_init_text": init_token_ids,
    }
    for key, values in lists.items():
        if len(values) != len(new_tasks):
            raise ConfigError(
                f"{key} has {len(values)} entries for {len(new_tasks)} model.new_tasks "
                f"{list(new_tasks)}; give one per new task"
            )
    tables = {}
    for i, task in enumerate(new_tasks):
        _check_task_name(task)
        table = init_prompt_table(
            init_methods[i],
            num_tokens[i],
            embedding_table,
            jax.random.fold_in(rng, i),
            init_token_ids=init_token_ids[i],
            task=task,
        )
        tables[task] = box_table(table)
    return {"tables": tables}


def init_p_tuning(
    config: EncoderConfig, task_num_tokens: Mapping[str, int], rng: jax.Array
) -> PromptParams:
    """{"inputs": {task: [P_task, E_in] ~ N(0, init_std)}, "encoder": {...}}, boxed.

    task_num_tokens: task -> P (its template's total_virtual_tokens), in model.new_tasks order.
    """
    enc_rng, inputs_rng = jax.random.split(rng)
    inputs = {}
    for i, (task, num_tokens) in enumerate(task_num_tokens.items()):
        _check_task_name(task)
        if num_tokens < 1:
            raise ConfigError(
                f"task {task!r}: total_virtual_tokens={num_tokens}: p-tuning needs >= 1 (a "
                "run without virtual tokens is virtual_prompt_style='prompt-tuning')"
            )
        shape = (num_tokens, config.in_dim)
        values = config.init_std * jax.random.normal(jax.random.fold_in(inputs_rng, i), shape)
        inputs[task] = box_table(values)
    return {"inputs": inputs, "encoder": init_encoder(config, enc_rng)}


# --------------------------------------------------------------------------------------------
# From parameters to tables, and into the token embeddings


def task_table(
    prompt_params: PromptParams,
    task: str,
    encoder_config: EncoderConfig | None,
    *,
    style: str = "p-tuning",
    train: bool = False,
    rng: jax.Array | None = None,
) -> jax.Array:
    """One task's prompt table [P, E]: its stored table, or the encoder run on its inputs.

    rng: dropout randomness, needed only when `train` and the encoder has dropout.
    """
    params = nn.meta.unbox(prompt_params)
    in_tables = task in params.get("tables", {})
    in_inputs = task in params.get("inputs", {})
    if in_tables and in_inputs:
        raise ConfigError(f"task {task!r} has both a prompt table and p-tuning inputs; keep one")
    if in_tables:
        return params["tables"][task]
    if not in_inputs:
        known = sorted([*params.get("tables", {}), *params.get("inputs", {})])
        raise ConfigError(
            f"task {task!r} has no prompt parameters (known tasks: {known}); add it to "
            "model.new_tasks or restore a prompt model that holds it"
        )
    encoded_styles = ("p-tuning", *config_lib.DEEP_PROMPT_STYLES)
    if style not in encoded_styles or encoder_config is None or "encoder" not in params:
        raise ConfigError(
            f"task {task!r} has encoder inputs but model.virtual_prompt_style={style!r} (or no "
            "encoder is given); use p-tuning or freeze the encoder with freeze_to_tables"
        )
    deterministic = not train or encoder_config.dropout == 0.0
    if not deterministic and rng is None:
        raise ValueError("task_table: training with encoder dropout needs an rng")
    rngs = {} if deterministic else {"dropout": rng}
    table = PromptEncoder(encoder_config).apply(
        {"params": params["encoder"]},
        params["inputs"][task],
        deterministic=deterministic,
        rngs=rngs,
    )
    if encoder_config.table_shape:
        table = table.reshape(*table.shape[:-1], *encoder_config.table_shape)
    return table


def prompt_tables(
    prompt_params: PromptParams,
    style: str,
    encoder_config: EncoderConfig | None,
    task_names: Sequence[str],
    *,
    train: bool = False,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Every task's table in one array [num_tasks, P_max, *row] float32 (what a train step
    calls; row is [E], or [L, 2, K, D] for deep prompts).

    Rows follow `task_names` (row i is task id i); shorter tables are zero-padded to P_max.
    style: model.virtual_prompt_style. The encoder runs once per p-tuned task, with a
    per-task dropout key folded from `rng`.
    """
    if style not in PROMPT_STYLES:
        raise ConfigError(
            f"model.virtual_prompt_style={style!r}: use one of {', '.join(PROMPT_STYLES)}"
        )
    if not task_names:
        raise ConfigError("prompt_tables: no tasks given; name them in model.new_tasks")
    tables = []
    for i, task in enumerate(task_names):
        task_rng = None if rng is None else jax.random.fold_in(rng, i)
        table = task_table(
            prompt_params, task, encoder_config, style=style, train=train, rng=task_rng
        )
        tables.append(table.astype(jnp.float32))
    return pad_stack(tables)


def pad_stack(tables: Sequence[Any]) -> Any:
    """[P_task, *row] per task -> [num_tasks, P_max, *row], zero-padded along P (numpy in,
    numpy out; jax in, jax out)."""
    p_max = max(t.shape[0] for t in tables)
    xp = np if all(isinstance(t, np.ndarray) for t in tables) else jnp
    widths = [((0, p_max - t.shape[0]),) + ((0, 0),) * (t.ndim - 1) for t in tables]
    return xp.stack([xp.pad(t, w) for t, w in zip(tables, widths, strict=True)])


def freeze_to_tables(
    prompt_params: PromptParams,
    encoder_config: EncoderConfig | None,
    task_names: Sequence[str] | None = None,
) -> dict[str, dict[str, jax.Array]]:
    """{"tables": {task: [P, *row]}} for serving: encoded tasks get the encoder's eval-mode
    output (deep prompts: per-layer key/value tables [P, L, 2, K, D]).

    Tasks that already have tables are passed through unchanged; task_names defaults to every
    task in the tree. Returns plain (unboxed) float32 arrays; TABLE_AXES gives their axes.
    """
    params = nn.meta.unbox(prompt_params)
    if task_names is None:
        task_names = [*params.get("tables", {}), *params.get("inputs", {})]
    return {
        "tables": {
            task: task_table(params, task, encoder_config, style="p-tuning").astype(jnp.float32)
            for task in task_names
        }
    }


def combine(
    token_embeddings: jax.Array,
    tables: jax.Array,
    task_id: jax.Array,
    virtual_index: jax.Array,
) -> jax.Array:
    """Writes prompt rows into the virtual-token slots.

    token_embeddings: [B, T, E]; tables: [num_tasks, P_max, E]; task_id: [B] int (row of
    `tables`); virtual_index: [B, T] int, which virtual token sits there, -1 elsewhere.
    Returns [B, T, E] in token_embeddings' dtype; non-virtual positions are left untouched.
    """
    if tables.shape[1] == 0:  # no task has virtual tokens (zero-shot, in-context): nothing to write
        return token_embeddings
    safe_index = jnp.maximum(virtual_index, 0)
    rows = tables[task_id[:, None], safe_index]  # [B, T, E]: one gather
    is_virtual = (virtual_index >= 0)[..., None]
    return jnp.where(is_virtual, rows.astype(token_embeddings.dtype), token_embeddings)
