"""Mesh, logical-axis rules and shardings on 8 simulated CPU devices; sharded == single device."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ptlearn import gpt, prompt_encoders, prompts, sharding
from ptlearn.errors import ConfigError

# ------------------------------------------------------------------------------------------
# Mesh


@pytest.mark.parametrize(
    "tp, fsdp, count, shape",
    [
        (2, 1, 8, {"data": 4, "fsdp": 1, "model": 2}),
        (4, 1, 8, {"data": 2, "fsdp": 1, "model": 4}),
        (3, 2, 6, {"data": 1, "fsdp": 2, "model": 3}),
        (1, 1, 8, {"data": 8, "fsdp": 1, "model": 1}),
    ],
)
def test_mesh_shapes(tp, fsdp, count, shape):
    devices = jax.devices()[:count]
    mesh = sharding.make_mesh(tp, fsdp, devices=devices)
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert dict(mesh.shape) == shape
    # The model axis is innermost: neighbouring device ids form one tensor-parallel group.
    assert [d.id for d in mesh.devices[0, 0]] == [d.id for d in devices[:tp]]


@pytest.mark.parametrize(
    "tp, fsdp, count, key",
    [
        (3, 1, 8, "model.tensor_model_parallel_size=3"),
        (2, 3, 8, "mesh.fsdp=3"),
        (4, 1, 6, "does not divide the 6"),
        (0, 1, 8, "model.tensor_model_parallel_size=0 must be a positive"),
        (1, 0, 8, "mesh.fsdp=0 must be a positive"),
    ],
)
def test_mesh_errors_name_the_keys(tp, fsdp, count, key):
    with pytest.raises(ConfigError, match=key):
        sharding.make_mesh(tp, fsdp, devices=jax.devices()[:count])


# ------------------------------------------------------------------------------------------
# Rules


def test_rules_table_and_sequence_parallel():
    rules = dict(sharding.rules_for(False))
    assert rules["vocab"] == rules["heads"] == rules["kv_heads"] == rules["mlp"] == "model"
    assert rules["embed"] == "fsdp"
    assert rules["activation_batch"] == ("data", "fsdp")
    assert rules["activation_length"] is None
    assert rules["prompt_mlp"] == "model"
    assert rules["prompt_embed"] is rules["prompt_tokens"] is rules["prompt_hidden"] is None
    assert dict(sharding.rules_for(True))["activation_length"] == "model"
    # Batch before embed: activations never take fsdp twice.
    names = [name for name, _ in sharding.DEFAULT_RULES]
    assert names.index("activation_batch") < names.index("embed")


def test_rules_from_config_overrides_in_place():
    rules = sharding.rules_from_config((("embed", None), ("my_axis", ["data", "model"])))
    as_dict = dict(rules)
    assert as_dict["embed"] is None
    assert as_dict["my_axis"] == ("data", "model")
    assert [n for n, _ in rules][: len(sharding.DEFAULT_RULES)] == [
        n for n, _ in sharding.DEFAULT_RULES
    ]
    # The command-line form is a string; sequence parallel is a base, overrides win over it.
    text = sharding.rules_from_config("(('vocab', None),)", sequence_parallel=True)
    assert dict(text)["vocab"] is None and dict(text)["activation_length"] == "model"
    assert sharding.rules_from_config(()) == sharding.DEFAULT_RULES


@pytest.mark.parametrize(
    "pairs, match",
    [
        ((("embed", "tensor"),), "mesh.rules: logical axis 'embed' maps to 'tensor'"),
        ((("embed",),), "not a \\(logical axis name, mesh axes\\) pair"),
        ("((", "cannot read"),
    ],
)
def test_rules_from_config_errors(pairs, match):
    with pytest.raises(ConfigError, match=match):
        sharding.rules_from_config(pairs)


# ------------------------------------------------------------------------------------------
# Parameter specs: every parameter of the tiny variants


def _flat(tree):
    return {
        sharding._path_str(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


LLAMA_SPECS = {  # "test": 4 heads, 2 KV heads, SwiGLU, tied, no biases
    "params/embed/embedding": P("model", "fsdp"),
    "params/layers/attn_norm/scale": P(None, "fsdp"),
    "params/layers/mlp_norm/scale": P(None, "fsdp"),
    "params/layers/attn/query/kernel": P(None, "fsdp", "model", None),
    "params/layers/attn/key/kernel": P(None, "fsdp", None, None),  # 2 KV heads on TP=4
    "params/layers/attn/value/kernel": P(None, "fsdp", None, None),
    "params/layers/attn/out/kernel": P(None, "model", None, "fsdp"),
    "params/layers/mlp/gate/kernel": P(None, "fsdp", "model"),
    "params/layers/mlp/up/kernel": P(None, "fsdp", "model"),
    "params/layers/mlp/down/kernel": P(None, "model", "fsdp"),
    "params/final_norm/scale": P("fsdp"),
}
GPT2_SPECS = {  # "test-gpt2": 4 heads = 4 KV heads, GELU, learned positions, biases
    "params/embed/embedding": P("model", "fsdp"),
    "params/pos_embed/embedding": P(None, "fsdp"),
    "params/layers/attn_norm/scale": P(None, "fsdp"),
    "params/layers/attn_norm/bias": P(None, "fsdp"),
    "params/layers/mlp_norm/scale": P(None, "fsdp"),
    "params/layers/mlp_norm/bias": P(None, "fsdp"),
    "params/layers/attn/query/kernel": P(None, "fsdp", "model", None),
    "params/layers/attn/query/bias": P(None, "model", None),
    "params/layers/attn/key/kernel": P(None, "fsdp", "model", None),
    "params/layers/attn/key/bias": P(None, "model", None),
    "params/layers/attn/value/kernel": P(None, "fsdp", "model", None),
    "params/layers/attn/value/bias": P(None, "model", None),
    "params/layers/attn/out/kernel": P(None, "model", None, "fsdp"),
    "params/layers/attn/out/bias": P(None, "fsdp"),
    "params/layers/mlp/up/kernel": P(None, "fsdp", "model"),
    "params/layers/mlp/up/bias": P(None, "model"),
    "params/layers/mlp/down/kernel": P(None, "model", "fsdp"),
    "params/layers/mlp/down/bias": P(None, "fsdp"),
    "params/final_norm/scale": P("fsdp"),
    "params/final_norm/bias": P("fsdp"),
}


def _per_device_shape(shape, spec, mesh):
    out = []
    for i, size in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        out.append(size // int(np.prod([mesh.shape[a] for a in axes])))
    return tuple(out)


@pytest.mark.parametrize("variant, expected", [("test", LLAMA_SPECS), ("test-gpt2", GPT2_SPECS)])
@pytest.mark.parametrize("fsdp", [1, 2])
def test_every_parameter_spec_tp4(variant, expected, fsdp, caplog):
    config = gpt.VARIANTS[variant]
    mesh = sharding.make_mesh(4, fsdp)
    boxed = jax.eval_shape(lambda: gpt.init_params(config, jax.random.key(0)))
    with caplog.at_level(logging.WARNING, logger="ptlearn.sharding"):
        specs = _flat(sharding.shardings_for(boxed, mesh, sharding.DEFAULT_RULES))
    for path, named in sorted(specs.items()):
        print(f"{variant} TP=4 FSDP={fsdp} {path}: {named.spec}")
    assert {p: s.spec for p, s in specs.items()} == expected
    # One warning per replicated parameter, naming it (only "test" has too few KV heads).
    warned = [r.getMessage() for r in caplog.records]
    if variant == "test":
        assert len(warned) == 2
        assert "params/layers/attn/key/kernel" in warned[0] + warned[1]
        assert "kv_heads=2 over model (4)" in warned[0]
    else:
        assert warned == []
    # The placed parameters carry exactly these shardings and per-device shapes.
    params = gpt.init_params(config, jax.random.key(0))
    placed = _flat(
        sharding.shard_params(params, sharding.shardings_for(boxed, mesh, sharding.DEFAULT_RULES))
    )
    for path, array in placed.items():
        assert array.sharding.spec == expected[path], path
        assert array.sharding.mesh == mesh
        assert array.addressable_shards[0].data.shape == _per_device_shape(
            array.shape, expected[path], mesh
        ), path


def test_kv_heads_sharded_when_tp_divides_them():
    mesh = sharding.make_mesh(2)
    boxed = jax.eval_shape(lambda: gpt.init_params(gpt.VARIANTS["test"], jax.random.key(0)))
    specs = _flat(sharding.shardings_for(boxed, mesh, sharding.DEFAULT_RULES))
    assert specs["params/layers/attn/key/kernel"].spec == P(None, "fsdp", "model", None)


def test_default_model_shapes_tp3_and_tp2(caplog):
    """SmolLM2-135M (9 heads, 3 KV heads, vocab 49152): TP=3 splits all; TP=2 replicates heads."""
    config = gpt.VARIANTS["smollm2-135m"]
    boxed = jax.eval_shape(lambda: gpt.init_params(config, jax.random.key(0)))
    mesh3 = sharding.make_mesh(3, 2, devices=jax.devices()[:6])
    with caplog.at_level(logging.WARNING, logger="ptlearn.sharding"):
        specs = _flat(sharding.shardings_for(boxed, mesh3, sharding.DEFAULT_RULES))
    assert caplog.records == []
    assert specs["params/layers/attn/key/kernel"].spec == P(None, "fsdp", "model", None)
    assert specs["params/layers/attn/query/kernel"].spec == P(None, "fsdp", "model", None)
    assert specs["params/embed/embedding"].spec == P("model", "fsdp")
    specs = _flat(sharding.shardings_for(boxed, sharding.make_mesh(2), sharding.DEFAULT_RULES))
    assert specs["params/layers/attn/query/kernel"].spec == P(None, "fsdp", None, None)
    assert specs["params/layers/attn/key/kernel"].spec == P(None, "fsdp", None, None)
    assert specs["params/layers/mlp/up/kernel"].spec == P(None, "fsdp", "model")
    assert specs["params/embed/embedding"].spec == P("model", "fsdp")


def test_explicit_axes_tree_for_unboxed_params():
    """Loaded checkpoints are plain arrays: the axes come from a boxed abstract twin."""
    config = gpt.VARIANTS["test"]
    boxed = jax.eval_shape(lambda: gpt.init_params(config, jax.random.key(0)))
    plain = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), nn.meta.unbox(boxed))
    axes = nn.get_partition_spec(boxed)
    mesh = sharding.make_mesh(4)
    from_axes = _flat(sharding.shardings_for(plain, mesh, sharding.DEFAULT_RULES, axes=axes))
    assert {p: s.spec for p, s in from_axes.items()} == LLAMA_SPECS
    # None in the axes tree replicates that leaf.
    tiny = {"a": np.zeros((4, 8)), "b": np.zeros((8,))}
    got = sharding.shardings_for(
        tiny, mesh, sharding.DEFAULT_RULES, axes={"a": ("mlp", "embed"), "b": None}
    )
    assert got["a"].spec == P("model", "fsdp") and got["b"].spec == P(None)


def test_prompt_parameter_specs():
    mesh = sharding.make_mesh(2)
    tp = prompt_encoders.EncoderConfig("tpmlp", 64, encoder_hidden=32)
    boxed = jax.eval_shape(lambda: prompts.init_p_tuning(tp, {"a": 3}, jax.random.key(0)))
    specs = {
        p: s.spec
        for p, s in _flat(sharding.shardings_for(boxed, mesh, sharding.DEFAULT_RULES)).items()
    }
    assert specs == {
        "inputs/a": P(None, None),
        "encoder/first/kernel": P(None, "model"),
        "encoder/first/bias": P("model"),
        "encoder/second/kernel": P("model", None),
        "encoder/second/bias": P(None),
    }
    # Square kernels name one logical axis twice; they stay replicated instead of failing.
    lstm = prompt_encoders.EncoderConfig("lstm", 64, encoder_hidden=32)
    boxed = jax.eval_shape(lambda: prompts.init_p_tuning(lstm, {"a": 3}, jax.random.key(0)))
    specs = _flat(sharding.shardings_for(boxed, mesh, sharding.DEFAULT_RULES))
    assert all(s.spec == P(*([None] * len(s.spec))) for s in specs.values())


# ------------------------------------------------------------------------------------------
# Batches


def test_batch_shardings_and_accumulation():
    mesh = sharding.make_mesh(2)  # data 4
    batch = jax.device_put(np.zeros((8, 5), np.int32), sharding.batch_sharding(mesh))
    assert {s.data.shape for s in batch.addressable_shards} == {(2, 5)}
    micro = sharding.batch_sharding(mesh, micro_batched=True)
    stacked = jax.device_put(np.zeros((3, 8, 5), np.int32), micro)
    assert {s.data.shape for s in stacked.addressable_shards} == {(3, 2, 5)}
    assert sharding.data_parallel_size(sharding.make_mesh(2, 2)) == 4
    assert sharding.accumulation_steps(16, 2, mesh) == 2
    with pytest.raises(ConfigError, match="model.global_batch_size=12 .* data-parallel size 4"):
        sharding.accumulation_steps(12, 2, mesh)


# ------------------------------------------------------------------------------------------
# Sharded forward and gradient == single device


def _setup(variant, tp, fsdp, sequence_parallel):
    config = gpt.VARIANTS[variant]
    boxed = gpt.init_params(config, jax.random.key(0))
    host = jax.device_get(nn.meta.unbox(boxed))
    mesh = sharding.make_mesh(tp, fsdp)
    rules = sharding.rules_for(sequence_parallel)
    shardings = sharding.shardings_for(boxed, mesh, rules)
    return gpt.GPT(config), host, sharding.shard_params(host, shardings), mesh, rules


CASES = [
    ("test", 2, 1, False),
    ("test", 4, 1, False),
    ("test", 2, 1, True),
    ("test", 2, 2, False),
    ("test-gpt2", 4, 1, False),
    ("test-gpt2", 2, 1, True),
]


@pytest.mark.parametrize("variant, tp, fsdp, sequence_parallel", CASES)
def test_sharded_logits_equal_single_device(variant, tp, fsdp, sequence_parallel):
    model, host, placed, mesh, rules = _setup(variant, tp, fsdp, sequence_parallel)
    ids = jax.random.randint(jax.random.key(1), (8, 8), 0, model.config.vocab_size)

    def logits(params, ids):
        return model.apply(params, ids)[0]

    expected = jax.jit(logits)(host, ids)
    with sharding.activate(mesh, rules):
        sharded_ids = jax.device_put(ids, sharding.batch_sharding(mesh, rules))
        step = jax.jit(logits)
        text = step.lower(placed, sharded_ids).as_text()
        got = step(placed, sharded_ids)
    # The block-boundary constraints are in the program, with the sequence split when asked.
    constraints = [line for line in text.splitlines() if "sharding_constraint" in line]
    assert constraints
    length_axis = '{"model"}' if sequence_parallel else "{}"
    assert all(f'[{{"data", "fsdp"}}, {length_axis}, {{}}]' in c for c in constraints), constraints
    assert got.sharding.mesh == mesh
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant, tp, fsdp, sequence_parallel", [CASES[1], CASES[2], CASES[4]])
def test_sharded_gradient_wrt_embeddings(variant, tp, fsdp, sequence_parallel):
    """What prompt training differentiates: the loss w.r.t. the input embeddings."""
    model, host, placed, mesh, rules = _setup(variant, tp, fsdp, sequence_parallel)
    embeddings = 0.02 * jax.random.normal(jax.random.key(2), (8, 8, model.config.hidden_size))
    targets = jax.random.randint(jax.random.key(3), (8, 8), 0, model.config.vocab_size)

    def loss(embeddings, params):
        logits = model.apply(params, embeddings=embeddings)[0]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    expected_loss, expected = jax.jit(jax.value_and_grad(loss))(embeddings, host)
    with sharding.activate(mesh, rules):
        sharded = jax.device_put(embeddings, sharding.batch_sharding(mesh, rules))
        got_loss, got = jax.jit(jax.value_and_grad(loss))(sharded, placed)
    assert got.sharding.mesh == mesh
    assert float(jnp.max(jnp.abs(expected))) > 1e-4  # a gradient that could differ
    np.testing.assert_allclose(float(got_loss), float(expected_loss), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6, rtol=1e-5)
