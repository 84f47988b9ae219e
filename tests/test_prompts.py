"""Prompt tables, encoders and `combine` on tiny shapes, under jit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptlearn import prompt_encoders, prompts
from ptlearn.errors import ConfigError

E = 16
V = 64


@pytest.fixture(scope="module")
def embedding_table() -> jax.Array:
    return 0.02 * jax.random.normal(jax.random.key(0), (V, E))


def _config(encoder_type: str, dropout: float = 0.0) -> prompt_encoders.EncoderConfig:
    return prompt_encoders.EncoderConfig(
        encoder_type, E, num_layers=2, encoder_hidden=8, dropout=dropout, init_std=0.5
    )


# ---------------------------------------------------------------------------- combine


def test_combine_writes_rows_of_each_rows_task_and_leaves_the_rest_identical():
    num_tasks, p_max, batch, length = 3, 4, 3, 9
    tables = jax.random.normal(jax.random.key(1), (num_tasks, p_max, E))
    tokens = jax.random.normal(jax.random.key(2), (batch, length, E))
    task_id = jnp.array([2, 0, 1])
    virtual = -np.ones((batch, length), np.int32)
    virtual[0, [1, 2, 3, 4]] = [0, 1, 2, 3]  # task 2: P=4, one group
    virtual[1, [0, 5]] = [0, 1]  # task 0: P=2, split in two groups
    virtual[2, [7, 8, 3]] = [0, 1, 2]  # task 1: P=3, out of order
    out = jax.jit(prompts.combine)(tokens, tables, task_id, jnp.asarray(virtual))
    out, tokens, tables = np.asarray(out), np.asarray(tokens), np.asarray(tables)
    for b in range(batch):
        for t in range(length):
            k = virtual[b, t]
            expected = tables[task_id[b], k] if k >= 0 else tokens[b, t]
            np.testing.assert_array_equal(out[b, t], expected)


def test_combine_keeps_token_dtype():
    tokens = jnp.zeros((1, 3, E), jnp.bfloat16)
    tables = jnp.ones((1, 2, E), jnp.float32)
    out = prompts.combine(tokens, tables, jnp.array([0]), jnp.array([[0, -1, 1]]))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out[0, :, 0], np.float32), [1, 0, 1])


# ---------------------------------------------------------------------------- initialisation


def test_text_init_repeats_token_embeddings_cyclically(embedding_table):
    ids = [5, 9, 11]
    table = prompts.init_prompt_table(
        "text", 7, embedding_table, jax.random.key(0), init_token_ids=ids
    )
    expected = np.asarray(embedding_table)[[5, 9, 11, 5, 9, 11, 5]]
    np.testing.assert_array_equal(np.asarray(table), expected)
    short = prompts.init_prompt_table(
        "text", 2, embedding_table, jax.random.key(0), init_token_ids=ids
    )
    np.testing.assert_array_equal(np.asarray(short), np.asarray(embedding_table)[[5, 9]])


def test_vocab_init_rows_are_distinct_rows_of_the_table(embedding_table):
    table = np.asarray(prompts.init_prompt_table("vocab", 20, embedding_table, jax.random.key(3)))
    emb = np.asarray(embedding_table)
    rows = [int(np.flatnonzero((emb == row).all(axis=1))[0]) for row in table]
    assert len(set(rows)) == 20


def test_vocab_init_prefers_the_first_5000_ids():
    big = jnp.arange(6000, dtype=jnp.float32)[:, None] * jnp.ones((1, 2))
    table = prompts.init_prompt_table("vocab", 50, big, jax.random.key(4))
    ids = np.asarray(table[:, 0])
    assert len(set(ids.tolist())) == 50 and ids.max() < prompts.VOCAB_INIT_TOP


def test_labels_init_starts_with_label_tokens_then_other_vocab_rows(embedding_table):
    labels = [3, 7, 3, 40]  # the repeated id is used once
    table = np.asarray(
        prompts.init_prompt_table(
            "labels", 8, embedding_table, jax.random.key(5), init_token_ids=labels
        )
    )
    emb = np.asarray(embedding_table)
    np.testing.assert_array_equal(table[:3], emb[[3, 7, 40]])
    rest = [int(np.flatnonzero((emb == row).all(axis=1))[0]) for row in table[3:]]
    assert len(set(rest)) == 5 and not set(rest) & {3, 7, 40}


def test_random_init_has_the_table_scale(embedding_table):
    table = prompts.init_prompt_table("random", 500, embedding_table, jax.random.key(6))
    assert table.shape == (500, E)
    np.testing.assert_allclose(float(jnp.std(table)), float(jnp.std(embedding_table)), rtol=0.1)


def test_init_errors_name_the_key(embedding_table):
    with pytest.raises(ConfigError, match="new_prompt_init_methods.*'zeros'"):
        prompts.init_prompt_table("zeros", 4, embedding_table, jax.random.key(0))
    with pytest.raises(ConfigError, match="new_prompt_init_text.*'sentiment'"):
        prompts.init_prompt_table(
            "text", 4, embedding_table, jax.random.key(0), init_token_ids=[], task="sentiment"
        )
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        prompts.init_prompt_table("text", 4, embedding_table, jax.random.key(0), init_token_ids=[V])
    with pytest.raises(ConfigError, match="distinct vocabulary rows"):
        prompts.init_prompt_table("vocab", V + 1, embedding_table, jax.random.key(0))
    with pytest.raises(ConfigError, match="2 entries for 1 model.new_tasks"):
        prompts.init_prompt_tuning(
            ["a"], [4], ["text", "random"], [[1]], embedding_table, jax.random.key(0)
        )


def test_init_prompt_tuning_tables_per_task_with_axes(embedding_table):
    params = prompts.init_prompt_tuning(
        ["sentiment", "intent_and_slot"],
        [3, 5],
        ["text", "random"],
        [[1, 2], None],
        embedding_table,
        jax.random.key(0),
    )
    assert set(params["tables"]) == {"sentiment", "intent_and_slot"}
    assert params["tables"]["sentiment"].names == prompts.TABLE_AXES
    tables = prompts.prompt_tables(params, "prompt-tuning", None, ["intent_and_slot", "sentiment"])
    assert tables.shape == (2, 5, E)
    np.testing.assert_array_equal(np.asarray(tables[1, 3:]), 0.0)  # zero padding
    np.testing.assert_array_equal(np.asarray(tables[1, :3]), np.asarray(embedding_table)[[1, 2, 1]])


# ---------------------------------------------------------------------------- encoders


def test_encoder_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.p_tuning.encoder_type='gru'"):
        prompt_encoders.EncoderConfig("gru", E)
    with pytest.raises(ConfigError, match="model.p_tuning.num_layers"):
        prompt_encoders.EncoderConfig("mlp", E, num_layers=1)
    with pytest.raises(ConfigError, match="model.p_tuning.dropout"):
        prompt_encoders.EncoderConfig("lstm", E, dropout=1.0)


@pytest.mark.parametrize("encoder_type", prompt_encoders.ENCODER_TYPES)
def test_encoder(encoder_type):
    config = _config(encoder_type, dropout=0.3)
    params = prompts.init_p_tuning(config, {"a": 3, "b": 5}, jax.random.key(0))

    # Every parameter carries logical axes, of the prompt's own names.
    boxed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(leaf, nn.Partitioned) for leaf in boxed)
    assert all(name.startswith("prompt_") for leaf in boxed for name in leaf.names)
    mlp_axes = {
        n
        for leaf in jax.tree.leaves(
            params["encoder"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
        )
        for n in leaf.names
    }
    assert ("prompt_mlp" in mlp_axes) == (encoder_type == "tpmlp")

    plain = nn.meta.unbox(params)

    @jax.jit
    def tables(p, rng):
        return prompts.prompt_tables(p, "p-tuning", config, ["a", "b"], train=True, rng=rng)

    @jax.jit
    def eval_tables(p):
        return prompts.prompt_tables(p, "p-tuning", config, ["a", "b"], train=False)

    out = eval_tables(plain)
    assert out.shape == (2, 5, E)
    np.testing.assert_array_equal(np.asarray(out[0, 3:]), 0.0)
    assert not np.allclose(np.asarray(out[0, :3]), np.asarray(out[1, :3]))  # distinct per task

    # Dropout only in training: eval is deterministic, training depends on the key.
    np.testing.assert_array_equal(np.asarray(out), np.asarray(eval_tables(plain)))
    train1 = np.asarray(tables(plain, jax.random.key(1)))
    train2 = np.asarray(tables(plain, jax.random.key(2)))
    assert not np.allclose(train1[:, :3], np.asarray(out)[:, :3])
    assert not np.allclose(train1, train2)

    # The encoder output equals running the module on the task's inputs alone.
    direct = prompt_encoders.PromptEncoder(config).apply(
        {"params": plain["encoder"]}, plain["inputs"]["b"]
    )
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(direct), rtol=1e-6, atol=1e-6)

    # Gradient flows to both tasks' inputs and to every encoder parameter.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(eval_tables(p) ** 2)))(plain)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.max(jnp.abs(g))) > 0, jax.tree_util.keystr(path)

    # Frozen tables equal the eval-mode encoder output.
    frozen = prompts.freeze_to_tables(plain, config)
    assert set(frozen) == {"tables"} and set(frozen["tables"]) == {"a", "b"}
    np.testing.assert_allclose(np.asarray(frozen["tables"]["a"]), np.asarray(out[0, :3]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(frozen["tables"]["b"]), np.asarray(out[1]), atol=1e-6)
    served = prompts.prompt_tables(frozen, "inference", None, ["a", "b"])
    np.testing.assert_allclose(np.asarray(served), np.asarray(out), atol=1e-6)


def test_lstm_reads_both_directions():
    config = _config("lstm")
    params = nn.meta.unbox(prompts.init_p_tuning(config, {"a": 4}, jax.random.key(0)))
    table = jax.jit(lambda p: prompts.task_table(p, "a", config))
    base = table(params)
    # Changing the last input token changes the first output row (backward direction) and
    # changing the first changes the last (forward direction).
    for changed, watched in ((3, 0), (0, 3)):
        inputs = params["inputs"]["a"].at[changed].add(1.0)
        other = {**params, "inputs": {"a": inputs}}
        moved = table(other)
        assert not np.allclose(np.asarray(base[watched]), np.asarray(moved[watched]))


def test_mixed_tree_and_missing_task_errors(embedding_table):
    config = _config("mlp")
    tuned = prompts.init_p_tuning(config, {"new": 2}, jax.random.key(0))
    old = prompts.init_prompt_tuning(
        ["old"], [3], ["vocab"], [None], embedding_table, jax.random.key(1)
    )
    mixed = {**old, **tuned}
    tables = prompts.prompt_tables(mixed, "p-tuning", config, ["old", "new"])
    np.testing.assert_array_equal(
        np.asarray(tables[0]), np.asarray(nn.meta.unbox(old["tables"]["old"]))
    )
    with pytest.raises(ConfigError, match="'missing' has no prompt parameters"):
        prompts.prompt_tables(mixed, "p-tuning", config, ["missing"])
    with pytest.raises(ConfigError, match="virtual_prompt_style='prompt-tuning'"):
        prompts.prompt_tables(mixed, "prompt-tuning", config, ["new"])
    with pytest.raises(ConfigError, match="model.new_tasks"):
        prompts.init_p_tuning(config, {"a/b": 2}, jax.random.key(0))
