"""The GPT on tiny random models: cache, embeddings input, dtypes, remat, logical axes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptlearn import gpt, serving


def _model(name, **changes):
    config = gpt.VARIANTS[name].replace(**changes)
    params = nn.unbox(gpt.init_params(config, jax.random.key(0)))
    return config, gpt.GPT(config), params


@pytest.mark.parametrize("name", ["test", "test-gpt2", "test-gemma"])
def test_incremental_decoding_matches_full_forward(name):
    config, model, params = _model(name)
    ids = jax.random.randint(jax.random.key(1), (2, 12), 0, config.vocab_size)
    full, _ = jax.jit(model.apply)(params, ids)
    cache = gpt.init_cache(config, 2, 16)
    mask = jnp.ones((2, 16), bool)
    step = jax.jit(
        lambda p, i, pos, c, idx: model.apply(
            p, i, positions=pos, cache=c, cache_index=idx, attention_mask=mask
        )
    )
    first, cache = step(params, ids[:, :7], jnp.broadcast_to(jnp.arange(7), (2, 7)), cache, 0)
    pieces = [first]
    for t in range(7, 12):
        logits, cache = step(params, ids[:, t : t + 1], jnp.full((2, 1), t), cache, t)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)


@pytest.mark.parametrize("name", ["test", "test-gpt2", "test-gemma"])
def test_embeddings_input_is_the_injection_point(name):
    config, model, params = _model(name)
    ids = jax.random.randint(jax.random.key(2), (3, 9), 0, config.vocab_size)
    from_ids, _ = model.apply(params, ids)
    embeddings = model.apply(params, ids, method=gpt.GPT.embed_tokens)
    assert embeddings.shape == (3, 9, config.hidden_size)
    from_embeddings, _ = model.apply(params, embeddings=embeddings)
    np.testing.assert_allclose(from_embeddings, from_ids, atol=1e-6)
    # A changed row of embeddings changes the logits from that position on, never before.
    # (a random direction: a constant shift would vanish under LayerNorm's mean subtraction)
    changed = embeddings.at[:, 4].add(jax.random.normal(jax.random.key(9), (config.hidden_size,)))
    out, _ = model.apply(params, embeddings=changed)
    np.testing.assert_allclose(out[:, :4], from_ids[:, :4], atol=1e-6)
    assert np.abs(out[:, 4:] - from_ids[:, 4:]).max() > 1e-3


def test_padding_mask_and_positions_isolate_left_padding():
    config, model, params = _model("test")
    ids = jax.random.randint(jax.random.key(3), (1, 6), 0, config.vocab_size)
    alone, _ = model.apply(params, ids)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), ids], 1)
    mask = jnp.array([[False] * 3 + [True] * 6])
    positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
    out, _ = model.apply(params, padded, positions=positions, attention_mask=mask)
    np.testing.assert_allclose(out[:, 3:], alone, atol=1e-5)


def test_bfloat16_compute_and_params():
    config, model, params = _model("test", dtype="bfloat16")
    ids = jnp.arange(10)[None] % config.vocab_size
    out32, _ = gpt.GPT(config.replace(dtype="float32")).apply(params, ids)
    out16, _ = model.apply(params, ids)
    assert out16.dtype == jnp.float32  # logits are returned in float32
    np.testing.assert_allclose(out16, out32, atol=0.1)
    bf16_params = nn.unbox(
        gpt.init_params(config.replace(param_dtype="bfloat16"), jax.random.key(0))
    )
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(bf16_params))


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_activation_checkpointing_keeps_gradients(policy):
    config, model, params = _model("test")
    remat_model = gpt.GPT(config.replace(remat_policy=policy))
    ids = jax.random.randint(jax.random.key(4), (2, 8), 0, config.vocab_size)

    def loss(m):
        def fn(embeddings):
            logits, _ = m.apply(params, embeddings=embeddings)
            return jnp.mean(jax.nn.logsumexp(logits, -1))

        return fn

    embeddings = model.apply(params, ids, method=gpt.GPT.embed_tokens)
    plain = jax.jit(jax.grad(loss(model)))(embeddings)
    checkpointed = jax.jit(jax.grad(loss(remat_model)))(embeddings)
    np.testing.assert_allclose(checkpointed, plain, atol=1e-6)


def test_every_parameter_has_logical_axes():
    for name in ["test", "test-gpt2", "test-gemma"]:
        boxed = gpt.init_params(gpt.VARIANTS[name], jax.random.key(0))
        leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        for leaf in leaves:
            assert isinstance(leaf, nn.Partitioned)
            assert len(leaf.names) == leaf.value.ndim
            assert set(leaf.names) <= {
                "vocab",
                "embed",
                "heads",
                "kv_heads",
                "head_dim",
                "mlp",
                "positions",
                "layers",
            }


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="norm"):
        gpt.VARIANTS["test"].replace(norm="batchnorm")
    with pytest.raises(ValueError, match="multiple"):
        gpt.VARIANTS["test"].replace(num_kv_heads=3)


def test_variants_parameter_counts():
    assert abs(gpt.VARIANTS["smollm2-135m"].num_params - 134.5e6) < 1e6
    assert abs(gpt.VARIANTS["gpt-345m"].num_params - 355e6) < 10e6
    assert abs(gpt.VARIANTS["test-1b"].num_params - 1.0e9) < 0.2e9


def test_packed_bfloat16_blocks_give_the_same_logits_as_unpacked():
    config = gpt.VARIANTS["test"].replace(param_dtype="bfloat16", matmul_dtype="bfloat16")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 9)))
    model = gpt.GPT(config)
    params = jax.device_get(model.init(jax.random.key(0), ids)["params"])
    packed = gpt.pack_params(params)
    assert {x.dtype for x in jax.tree.leaves(packed["layers"])} == {np.dtype("uint16")}
    plain = model.apply({"params": params}, ids)[0]
    np.testing.assert_array_equal(model.apply({"params": packed}, ids)[0], plain)
    # And the model in float32 storage with the same (bf16-rounded) values agrees.
    wide = gpt.GPT(config.replace(param_dtype="float32"))
    as_f32 = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    np.testing.assert_allclose(wide.apply({"params": as_f32}, ids)[0], plain, atol=1e-5)


@pytest.mark.parametrize("variant", ["test", "test-gpt2", "test-gemma"])
def test_serving_layout_computes_what_the_training_layout_computes(variant):
    # test-gpt2 with an untied head: every kernel, biases and the head move to [*out, *in].
    # bf16 storage (out-first is for 16-bit weights), float32 compute: the same logits.
    config = gpt.VARIANTS[variant].replace(tie_embeddings=variant == "test", param_dtype="bfloat16")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 9)))
    params = jax.device_get(nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"])
    serving_config, served = serving.serving_layout(config, gpt.pack_params(params))
    assert serving_config.kernels_out_first and not serving_config.scan_layers
    # The served model's own init has the same shapes, so a fresh served tree loads as is.
    fresh = nn.unbox(gpt.init_params(serving_config, jax.random.key(0)))["params"]
    assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, served)
    out = served["blocks_1"]["attn"]["out"]["kernel"]
    assert out.shape == (config.hidden_size, config.num_heads, config.head_dim)
    np.testing.assert_array_equal(
        out, params["layers"]["attn"]["out"]["kernel"][1].transpose(2, 0, 1)
    )
    np.testing.assert_allclose(
        gpt.GPT(serving_config).apply({"params": served}, ids)[0],
        gpt.GPT(config).apply({"params": params}, ids)[0],
        atol=1e-5,
    )
    assert serving.serving_layout(serving_config, served)[1] is served  # already served
    # float32 weights stay in-first (XLA:CPU's float32 few-row dots are slower out-first).
    wide_config, _ = serving.serving_layout(config.replace(param_dtype="float32"), params)
    assert not wide_config.kernels_out_first and not wide_config.scan_layers


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_unrolled_layers_compute_what_the_scan_computes(param_dtype):
    config = gpt.VARIANTS["test"].replace(param_dtype=param_dtype)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 9)))
    params = jax.device_get(nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"])
    stacked = gpt.pack_params(params) if param_dtype == "bfloat16" else params
    flat_config, flat = serving.unstack_layers(config, stacked)
    assert not flat_config.scan_layers and "layers" not in flat
    assert sorted(k for k in flat if k.startswith("blocks_")) == ["blocks_0", "blocks_1"]
    assert {x.dtype for x in jax.tree.leaves(flat["blocks_1"])} == {np.dtype(param_dtype)}
    # The unrolled model's own init has the same tree as the unstacked parameters.
    fresh = nn.unbox(gpt.init_params(flat_config, jax.random.key(0)))["params"]
    assert jax.tree.structure(fresh) == jax.tree.structure(flat)
    scanned, unrolled = gpt.GPT(config), gpt.GPT(flat_config)
    np.testing.assert_allclose(
        unrolled.apply({"params": flat}, ids)[0],
        scanned.apply({"params": params}, ids)[0],
        atol=1e-5 if param_dtype == "float32" else 0.05,
    )
    # Incremental decoding with the per-layer cache list matches the stacked cache.
    caches = []
    for c, model, p in ((config, scanned, params), (flat_config, unrolled, flat)):
        cache = gpt.init_cache(c, 2, 12)
        logits, cache = model.apply({"params": p}, ids, cache=cache, cache_index=0)
        assert gpt.cache_length(cache) == 12
        caches.append(cache)
    assert isinstance(caches[1], list) and len(caches[1]) == config.num_layers
    np.testing.assert_allclose(
        caches[1][1]["k"], caches[0]["k"][1], atol=1e-5 if param_dtype == "float32" else 0.05
    )


def test_batch_chains_compute_what_one_chain_computes():
    config, model, params = _model("test")
    chained = gpt.GPT(config.replace(batch_chains=2))
    ids = jax.random.randint(jax.random.key(2), (4, 10), 0, config.vocab_size)
    mask = jnp.arange(10)[None, :] >= jnp.asarray([0, 3, 0, 5])[:, None]  # left padding

    def loss(p, m):
        logits, _ = m.apply(p, ids, attention_mask=mask)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 7])

    (value, grads), (value2, grads2) = (
        jax.value_and_grad(loss)(params, m) for m in (model, chained)
    )
    np.testing.assert_allclose(value2, value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads2, grads)
    # With a cache (decoding) the block runs the batch whole; odd batches too.
    cache = gpt.init_cache(config, 4, 12)
    out, _ = chained.apply(params, ids, cache=cache, cache_index=0)
    np.testing.assert_allclose(
        out, model.apply(params, ids, cache=cache, cache_index=0)[0], atol=1e-5
    )
    odd = ids[:3]
    np.testing.assert_allclose(
        chained.apply(params, odd)[0], model.apply(params, odd)[0], atol=1e-5
    )
    with pytest.raises(ValueError, match="batch_chains"):
        config.replace(batch_chains=0)


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_selective_checkpointing_saves_the_weight_matmuls(matmul_dtype):
    # The bf16 matmul is a custom VJP, whose dot the dot-based policies cannot see: its output
    # carries a checkpoint name instead. Either way "dots" recomputes fewer products than "full".
    config, _, params = _model("test", matmul_dtype=matmul_dtype)
    embeddings = jnp.ones((2, 8, config.hidden_size), jnp.float32)

    def dots_in_gradient(policy):
        model = gpt.GPT(config.replace(remat_policy=policy))

        def loss(e):
            return jnp.sum(model.apply(params, embeddings=e)[0] ** 2)

        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(embeddings))
        return jaxpr.count("dot_general")

    # The block's weight matmuls are saved rather than recomputed (q, k, v, out, gate, up; the
    # down projection's output is not needed by the backward pass).
    assert dots_in_gradient("full") - dots_in_gradient("dots") >= 6
