"""Decoding: batched prompts of different lengths equal each alone; sampling filters; EOS."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import sharp_attention

from ptlearn import generate as gen
from ptlearn import gpt, serving


@pytest.fixture(scope="module")
def tiny():
    config = gpt.VARIANTS["test"]
    return config, nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"]


def test_batched_equals_alone(tiny):
    config, params = tiny
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 256, n).tolist() for n in (3, 11, 7, 1)]
    batched = gen.generate(config, params, prompts, tokens_to_generate=12)
    for prompt, out in zip(prompts, batched, strict=True):
        assert gen.generate(config, params, [prompt], tokens_to_generate=12)[0] == out
        assert len(out) == 12


def test_greedy_matches_argmax_of_full_forward(tiny):
    config, params = tiny
    model = gpt.GPT(config)
    prompt = [5, 17, 42, 9]
    out = gen.generate(config, params, [prompt], tokens_to_generate=6)[0]
    seq = list(prompt)
    for _ in range(6):
        logits, _ = model.apply({"params": params}, jnp.asarray([seq]))
        seq.append(int(jnp.argmax(logits[0, -1])))
    assert out == seq[len(prompt) :]


def test_stops_at_eos_per_row(tiny):
    config, params = tiny
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    free = gen.generate(config, params, prompts, tokens_to_generate=8)
    eos = free[0][2]  # make row 0's third token the EOS
    out = gen.generate(config, params, prompts, tokens_to_generate=8, eos_ids=[eos])
    for row in range(2):
        cut = free[row].index(eos) + 1 if eos in free[row] else 8
        assert out[row] == free[row][:cut]
    assert len(out[0]) <= 3


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 400)
    draw = jax.vmap(lambda k, s: gen.choose_tokens(logits, k, s)[0], in_axes=(0, None))
    top_k = set(np.asarray(draw(keys, gen.Sampling(greedy=False, top_k=2))).tolist())
    assert top_k == {0, 1}
    top_p = set(np.asarray(draw(keys, gen.Sampling(greedy=False, top_p=0.7))).tolist())
    assert top_p == {0, 1}
    every = set(np.asarray(draw(keys, gen.Sampling(greedy=False))).tolist())
    assert every == {0, 1, 2, 3}
    cold = set(np.asarray(draw(keys, gen.Sampling(greedy=False, temperature=1e-3))).tolist())
    assert cold == {0}


def test_sampling_is_seeded(tiny):
    config, params = tiny
    sampling = gen.Sampling(greedy=False, temperature=1.5, top_p=0.9)
    a = gen.generate(config, params, [[3, 4]], tokens_to_generate=10, sampling=sampling, seed=1)
    b = gen.generate(config, params, [[3, 4]], tokens_to_generate=10, sampling=sampling, seed=1)
    assert a == b


def test_bad_options():
    with pytest.raises(ValueError, match="top_p"):
        gen.Sampling(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        gen.Sampling(greedy=False, temperature=0)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_prefix_cache_continues_like_the_whole_prompt(tiny, scan_layers):
    config, params = tiny[0], sharp_attention(tiny[1])
    config, params = (config, params) if scan_layers else serving.unstack_layers(config, params)
    rng = np.random.default_rng(3)
    prefixes = [rng.integers(1, 256, n).tolist() for n in (4, 6)]  # two "tasks"
    rows = [(0, [7, 8, 9]), (1, [10, 11, 12, 13, 14]), (0, [15]), (1, [16, 17])]
    whole = gen.generate(
        config, params, [prefixes[t] + rest for t, rest in rows], tokens_to_generate=7
    )
    # The tasks' prefixes computed once, right-padded to 6 slots, then gathered per row.
    table = np.zeros((2, 6), np.int32)
    for t, p in enumerate(prefixes):
        table[t, : len(p)] = p
    embed = gpt.GPT(config).apply(
        {"params": params}, jnp.asarray(table), method=gpt.GPT.embed_tokens
    )
    task_caches = gen.prefix_cache(
        {"params": params}, embed, jnp.asarray([4, 6], jnp.int32), config=config
    )
    task_of = jnp.asarray([t for t, _ in rows], jnp.int32)
    ids, mask = gen.left_pad([rest for _, rest in rows], 0)
    tokens, lengths = gen.decode(
        {"params": params},
        jnp.asarray(ids),
        jnp.asarray(mask),
        jax.random.key(0),
        None,
        gen.gather_rows(task_caches, task_of),
        jnp.asarray([len(prefixes[t]) for t, _ in rows], jnp.int32),
        config=config,
        tokens_to_generate=7,
        sampling=gen.Sampling(),
        eos_ids=(),
    )
    assert np.asarray(lengths).tolist() == [7] * 4
    assert np.asarray(tokens).tolist() == whole
