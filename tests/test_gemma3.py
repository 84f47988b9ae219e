"""Gemma 3: the block's pieces on a tiny random model, and the 270M GGUF file against
transformers' outputs in ../shared/reference/gemma3_270m (skipped when it is not installed)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptlearn import generate as gen
from ptlearn import gpt, lm
from ptlearn.errors import CheckpointError


def test_sliding_window_layers_see_only_their_window():
    # All three layers local, window 4: position t reads back at most 3 x 3 tokens.
    config = gpt.VARIANTS["test-gemma"].replace(global_every=100)
    assert config.local_layers.tolist() == [True, True, True]
    params = nn.unbox(gpt.init_params(config, jax.random.key(0)))
    model = gpt.GPT(config)
    ids = jax.random.randint(jax.random.key(1), (1, 14), 1, config.vocab_size)
    base, _ = model.apply(params, ids)
    changed, _ = model.apply(params, ids.at[0, 0].set((ids[0, 0] + 1) % config.vocab_size))
    np.testing.assert_allclose(changed[0, 10:], base[0, 10:], atol=1e-6)
    assert np.abs(changed[0, :9] - base[0, :9]).max() > 1e-4
    # With its global layer (every third), the first token reaches every position.
    full = gpt.VARIANTS["test-gemma"]
    assert full.local_layers.tolist() == [True, True, False]
    params = nn.unbox(gpt.init_params(full, jax.random.key(0)))
    model = gpt.GPT(full)
    base, _ = model.apply(params, ids)
    changed, _ = model.apply(params, ids.at[0, 0].set((ids[0, 0] + 1) % full.vocab_size))
    assert np.abs(changed[0, 10:] - base[0, 10:]).max() > 1e-4


def test_gemma_parameters_and_scaled_embeddings():
    config = gpt.VARIANTS["test-gemma"]
    params = nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"]
    layer = params["layers"]
    assert set(layer) >= {"attn_norm", "post_attn_norm", "mlp_norm", "post_mlp_norm"}
    assert layer["attn"]["query_norm"]["scale"].shape == (config.num_layers, config.head_dim)
    assert set(layer["mlp"]) == {"gate", "up", "down"}
    model = gpt.GPT(config)
    ids = jnp.asarray([[5, 7, 9]])
    raw = model.apply({"params": params}, ids, method=gpt.GPT.embed_tokens)
    # Input embeddings are scaled inside the model, so prompt rows live in the table's space.
    a, _ = model.apply({"params": params}, ids)
    b, _ = model.apply({"params": params}, embeddings=raw)
    np.testing.assert_allclose(a, b, atol=1e-6)
    unscaled, _ = gpt.GPT(config.replace(embed_scale=1.0)).apply({"params": params}, ids)
    assert np.abs(unscaled - a).max() > 1e-3


@pytest.fixture(scope="module")
def gemma():
    from ptlearn.checkpoints import load_model

    try:
        return load_model("gemma3-270m")
    except CheckpointError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def reference(shared_dir):
    folder = shared_dir / "reference" / "gemma3_270m"
    return {
        "logits": json.loads((folder / "reference_logits.json").read_text()),
        "nll": json.loads((folder / "reference_nll_and_greedy.json").read_text()),
        "eval_text": shared_dir / "reference" / "eval_text.txt",
    }


def test_gemma3_config_read_from_gguf(gemma):
    c = gemma.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (
        18,
        640,
        4,
        1,
        256,
    )
    assert c.vocab_size == 262144 and c.sliding_window == 512 and c.rope_base == 1e6
    assert c.local_layers.sum() == 15 and c.embed_scale == pytest.approx(640**0.5)
    assert gemma.tokenizer.bos_id == 2 and gemma.tokenizer.eos_id == 1


def test_gemma3_token_ids_and_last_logits(gemma, reference):
    model = gpt.GPT(gemma.config)
    forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids)[0][0, -1])
    bos = [gemma.tokenizer.bos_id] if gemma.tokenizer.add_bos else []
    for item in reference["logits"]["strings"]:
        assert bos + gemma.tokenizer.encode(item["text"]) == item["token_ids"]
        logits = np.asarray(forward(gemma.params, jnp.asarray([item["token_ids"]])))
        np.testing.assert_allclose(logits[:5], item["last_logits_first5"], atol=2e-3)
        assert np.argsort(-logits)[:5].tolist() == item["last_top5_ids"]
        np.testing.assert_allclose(
            logits[item["last_top5_ids"]], item["last_top5_logits"], atol=2e-3
        )
        assert abs(float(jax.nn.logsumexp(logits)) - item["last_logsumexp"]) < 2e-3
        assert abs(float(logits.mean()) - item["last_logits_mean"]) < 2e-3
        assert abs(float(logits.std()) - item["last_logits_std"]) < 2e-3


def test_gemma3_nll_of_the_eval_text(gemma, reference):
    result = lm.run("score", model="gemma3-270m", text_file=str(reference["eval_text"]))
    expected = reference["nll"]["eval_text_whole_file"]
    assert result["n_tokens"] == expected["input_tokens"]
    assert abs(result["nats_per_token"] - expected["nats_per_token"]) < 1e-3


def test_gemma3_greedy_continuations(gemma, reference):
    items = reference["nll"]["greedy_30"]
    prompts = [[gemma.tokenizer.bos_id, *gemma.tokenizer.encode(item["prompt"])] for item in items]
    assert prompts == [item["prompt_ids"] for item in items]
    outputs = gen.generate(
        gemma.config, gemma.params, prompts, tokens_to_generate=30, eos_ids=[gemma.tokenizer.eos_id]
    )
    for out, item in zip(outputs, items, strict=True):
        assert out == item["new_ids"]


@pytest.mark.integration
def test_prompt_tuning_gemma3_on_fpb_lowers_the_validation_loss(gemma, shared_dir, tmp_path):
    import ptlearn
    from ptlearn.data.jsonl import read_jsonl, write_jsonl
    from ptlearn.data.prepare import prepare

    prepare("financial_phrasebank", shared_dir / "data", tmp_path / "fpb")
    # 64 validation examples scored at the end, as the untrained prompt is too.
    held_out = tmp_path / "fpb" / "val64.jsonl"
    write_jsonl(held_out, read_jsonl(tmp_path / "fpb" / "val.jsonl")[:64])
    config = ptlearn.load_config(
        "sentiment_prompt_tuning",
        f"model=gemma3-270m,data={tmp_path / 'fpb'},steps=15",
        **{
            "trainer.val_check_interval": 15,
            "model.optim.sched.warmup_steps": 3,
            "model.data.validation_metric_examples": 0,
            "model.data.validation_ds": (str(held_out),),
            "model.data.test_ds": (str(held_out),),
        },
    )
    with config.unlocked():
        config.trainer.max_steps = 0  # the initial prompt
    before = ptlearn.train(config, tmp_path / "before").test["test_loss"]
    with config.unlocked():
        config.trainer.max_steps = 15
    run = ptlearn.train(config, tmp_path / "after")
    print(f"gemma3 FPB validation loss: {before:.4f} -> {run.test['test_loss']:.4f}")
    assert run.final_step == 15 and run.test["test_loss"] < before


@pytest.mark.integration
# Deep prompts (the style that touches most of the model) here; prompt tuning trains on FPB
# above; p-tuning shares prompt tuning's path into the model (the tiny Gemma-shaped tests).
@pytest.mark.parametrize("config_name", ["sentiment_prefix_tuning"])
def test_every_prompt_style_trains_and_predicts_on_gemma3(gemma, tmp_path, config_name):
    from tiny_model import write_tiny_data

    import ptlearn
    from ptlearn.data import toy

    write_tiny_data(tmp_path / "toy")
    config = ptlearn.load_config(
        config_name,
        f"model=gemma3-270m,data={tmp_path / 'toy'},steps=3,virtual=4",
        **{
            "trainer.val_check_interval": 3,
            "model.optim.sched.warmup_steps": 1,
            "model.data.validation_metric_examples": 0,
            "model.data.test_ds": (),
        },
    )
    run = ptlearn.train(config, tmp_path / "run")
    losses = [r["loss"] for r in run.history if "loss" in r]
    assert run.final_step == 3 and all(np.isfinite(losses))
    assert set(ptlearn.load(run.prompt_model).rank(toy.sentences(3, 5))) <= set(toy.LABELS)
