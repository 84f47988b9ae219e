"""Freezing rules, split / merge, and gradients only for the trainable partition."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptlearn import gpt, masking
from ptlearn.errors import ConfigError


def _params() -> dict:
    return {
        "lm": {
            "embed": {"embedding": jnp.ones((8, 4))},
            "layers": {"attn": {"query": {"kernel": jnp.ones((2, 4, 4))}}},
        },
        "prompt": {"tables": {"sentiment": jnp.full((3, 4), 2.0), "squad": jnp.zeros((2, 4))}},
    }


def test_first_match_wins_and_whole_name_match():
    rules = [
        ("prompt/tables/squad", "frozen"),
        ("prompt/.*", "trainable"),
        ("lm/.*", "frozen"),
    ]
    labels = masking.param_labels(_params(), rules)
    assert labels["prompt"]["tables"] == {"squad": "frozen", "sentiment": "trainable"}
    assert labels["lm"]["embed"]["embedding"] == "frozen"
    # "prompt" alone would match only as a prefix (re.match); fullmatch needs the whole path.
    with pytest.raises(ConfigError, match="'prompt/tables/sentiment'"):
        masking.param_labels(_params(), [("prompt", "trainable"), ("lm/.*", "frozen")])


def test_unmatched_parameter_error_names_it():
    with pytest.raises(ConfigError, match=r"'lm/layers/attn/query/kernel'.*model.freeze_rules"):
        masking.param_labels(_params(), [("prompt/.*", "trainable"), ("lm/embed/.*", "frozen")])


def test_bad_rules_are_config_errors():
    with pytest.raises(ConfigError, match="'train'"):
        masking.param_labels(_params(), [(".*", "train")])
    with pytest.raises(ConfigError, match="bad regex"):
        masking.param_labels(_params(), [("(", "frozen")])


def test_each_rule_logged_once_with_its_count(caplog):
    with caplog.at_level(logging.INFO):
        masking.param_labels(_params(), masking.PROMPT_ONLY_RULES + (("unused/.*", "frozen"),))
    lines = [r.getMessage() for r in caplog.records if "model.freeze_rules" in r.getMessage()]
    assert len(lines) == 3
    assert "'prompt/.*' -> trainable: 2 parameters (20 values)" in lines[0]
    assert "'lm/.*' -> frozen: 2 parameters (64 values)" in lines[1]
    assert "0 parameters" in lines[2]


def test_split_merge_round_trip_and_counts():
    params = _params()
    labels = masking.param_labels(params, masking.PROMPT_ONLY_RULES)
    trainable, frozen = masking.split(params, labels)
    assert trainable["lm"]["embed"]["embedding"] is None
    assert frozen["prompt"]["tables"]["squad"] is None
    assert masking.count(trainable) == 20 and masking.count(frozen) == 64
    assert masking.count_by_label(params, labels) == {"trainable": 20, "frozen": 64}
    merged = masking.merge(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params), strict=True):
        assert a is b
    with pytest.raises(ValueError, match="both partitions"):
        masking.merge(params, frozen)


def test_boxed_parameters_are_one_leaf_each():
    boxed = gpt.init_params(gpt.VARIANTS["test"], jax.random.key(0))["params"]
    tree = {"lm": boxed, "prompt": {"tables": {"t": nn.Partitioned(jnp.ones((2, 64)), ("a", "b"))}}}
    labels = masking.param_labels(tree, masking.PROMPT_ONLY_RULES)
    assert labels["lm"]["layers"]["attn"]["query"]["kernel"] == "frozen"
    trainable, frozen = masking.split(tree, labels)
    assert isinstance(trainable["prompt"]["tables"]["t"], nn.Partitioned)
    assert masking.count(trainable) == 128
    names = [name for name, _ in masking.named_leaves(frozen)]
    assert "lm/embed/embedding" in names and all(not n.endswith("/value") for n in names)


def test_grad_wrt_trainable_partition_has_no_frozen_leaves():
    params = _params()
    labels = masking.param_labels(params, masking.PROMPT_ONLY_RULES)
    trainable, frozen = masking.split(params, labels)

    def loss(t, f):
        p = masking.merge(t, f)
        emb = p["lm"]["embed"]["embedding"]
        return jnp.sum(p["prompt"]["tables"]["sentiment"] @ emb.T) + jnp.sum(
            p["prompt"]["tables"]["squad"] ** 2
        )

    grads = jax.jit(jax.grad(loss))(trainable, frozen)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    assert grads["lm"]["embed"]["embedding"] is None
    assert len(jax.tree.leaves(grads)) == 2
    np.testing.assert_array_equal(np.asarray(grads["prompt"]["tables"]["sentiment"]), 8.0)
