"""The default model against transformers' outputs in ../shared/reference (integration)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptlearn import generate as gen
from ptlearn import lm
from ptlearn.gpt import GPT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference(shared_dir):
    ref = shared_dir / "reference"
    return {
        "logits": json.loads((ref / "reference_logits.json").read_text()),
        "nll": json.loads((ref / "reference_nll_and_greedy.json").read_text()),
        "eval_text": ref / "eval_text.txt",
    }


def test_config_read_from_gguf(default_model):
    c = default_model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (
        30,
        576,
        9,
        3,
        49152,
    )
    assert c.rope_base == 100000.0 and c.tie_embeddings


def test_token_ids_and_last_logits(default_model, reference):
    model = GPT(default_model.config)
    forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids)[0][0, -1])
    for item in reference["logits"]["strings"]:
        assert default_model.tokenizer.encode(item["text"]) == item["token_ids"]
        logits = np.asarray(forward(default_model.params, jnp.asarray([item["token_ids"]])))
        np.testing.assert_allclose(logits[:5], item["last_logits_first5"], atol=2e-3)
        assert np.argsort(-logits)[:5].tolist() == item["last_top5_ids"]
        np.testing.assert_allclose(
            logits[item["last_top5_ids"]], item["last_top5_logits"], atol=2e-3
        )
        assert abs(float(jax.nn.logsumexp(logits)) - item["last_logsumexp"]) < 2e-3
        assert abs(float(logits.mean()) - item["last_logits_mean"]) < 2e-3
        assert abs(float(logits.std()) - item["last_logits_std"]) < 2e-3


def test_score_command_matches_reference_nll(default_model, reference):
    result = lm.run("score", model="default", text_file=str(reference["eval_text"]))
    expected = reference["nll"]["eval_text_whole_file"]
    assert result["n_tokens"] == expected["input_tokens"]
    assert abs(result["nats_per_token"] - expected["nats_per_token"]) < 1e-3


def test_greedy_continuations_batched_and_alone(default_model, reference):
    items = reference["nll"]["greedy_30"]
    prompts = [default_model.tokenizer.encode(item["prompt"]) for item in items]
    assert prompts == [item["prompt_ids"] for item in items]
    eos = [default_model.tokenizer.eos_id]
    batched = gen.generate(
        default_model.config, default_model.params, prompts, tokens_to_generate=30, eos_ids=eos
    )
    for prompt, out, item in zip(prompts, batched, items, strict=True):
        assert out == item["new_ids"]
        alone = gen.generate(
            default_model.config, default_model.params, [prompt], tokens_to_generate=30, eos_ids=eos
        )
        assert alone[0] == out


def test_generate_command(default_model):
    out = lm.run("generate", model="default", prompt="The capital of France is", greedy=True)
    assert out["text"].startswith(" Paris.")
    assert out["token_ids"][0] == 7042
