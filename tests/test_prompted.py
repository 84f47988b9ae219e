"""The prompted forward: logits at loss targets only give the same loss as full logits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import gpt, prompted
from ptlearn.data import batching
from ptlearn.encoding import EncodedExample
from ptlearn.losses import token_nll


def _example(task, length, virtual, answer, rng):
    ids = rng.integers(1, 256, length).astype(np.int32)
    virtual_index = np.full(length, -1, np.int32)
    virtual_index[1 : 1 + virtual] = np.arange(virtual)
    loss_mask = np.zeros(length, np.float32)
    loss_mask[length - answer :] = 1.0
    return EncodedExample(task, ids, virtual_index, loss_mask, length - answer)


def test_target_gather_equals_full_logits():
    config = gpt.VARIANTS["test"]
    params = nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"]
    model = gpt.GPT(config)
    rng = np.random.default_rng(0)
    examples = [
        _example("a", 20, 3, 2, rng),
        _example("b", 33, 5, 11, rng),
        _example("a", 9, 3, 4, rng),
    ]
    batch = batching.collate(examples, {"a": 0, "b": 1}, batch_size=4, max_length=64, pad_id=0)
    assert batch["target_index"].shape == (4, 16)
    tables = jax.random.normal(jax.random.key(1), (2, 5, config.hidden_size))
    nll, mask = jax.jit(lambda p, t, b: prompted.answer_nll(model, p, t, b))(params, tables, batch)

    inputs = prompted.prompted_inputs(
        model, params, tables, batch["ids"], batch["task_id"], batch["virtual_index"]
    )
    logits, _ = model.apply(
        {"params": params},
        **inputs,
        positions=batch["positions"],
        attention_mask=batch["attention_mask"],
    )
    full = token_nll(logits[:, :-1], batch["ids"][:, 1:]) * batch["loss_mask"][:, 1:]
    np.testing.assert_allclose(jnp.sum(nll, 1), jnp.sum(full, 1), rtol=1e-5)
    np.testing.assert_array_equal(jnp.sum(mask, 1), [2, 11, 4, 0])
