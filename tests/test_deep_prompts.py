"""Deep prompts (prefix tuning / P-tuning v2): keys and values at every layer through the GPT's
key/value override; the same template, serving, sharding, add-a-task and resume guarantees."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import sharp_attention, tiny_config, write_tiny_data, write_tiny_model

import ptlearn
from ptlearn import deep_prompts, gpt, predict, prompted, training
from ptlearn.checkpoints.prompt_model import load_prompt_model
from ptlearn.data.jsonl import read_jsonl, write_jsonl
from ptlearn.encoding import VIRTUAL_FILL_ID
from ptlearn.errors import ConfigError
from ptlearn.layers import apply_rope


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_deep")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def _deep_config(tiny, projection=False, **changes):
    config = tiny_config(*tiny, style="prefix-tuning")
    config.model.prefix_tuning.projection = projection
    config.model.prefix_tuning.projection_hidden = 32
    config.model.data.validation_metric_examples = 0
    for key, value in changes.items():
        config.update_from_flattened_dict({key: value})
    return config


@pytest.mark.parametrize("variant", ["test", "test-gpt2", "test-gemma"])
def test_a_deep_prompt_in_front_is_a_key_value_prefix(variant):
    """At the front, the override is exactly prefix tuning: the same logits as the text run
    after a KV cache whose first P slots hold the prompt's keys (rotated) and values."""
    config = gpt.VARIANTS[variant]
    params = sharp_attention(nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"])
    model = gpt.GPT(config)
    virtual, length, batch = 3, 7, 2
    rng = np.random.default_rng(0)
    shape = deep_prompts.row_shape(config)
    tables = rng.normal(0, 1, (1, virtual, *shape)).astype(np.float32)
    text = rng.integers(1, config.vocab_size, (batch, length)).astype(np.int32)
    ids = np.concatenate([np.full((batch, virtual), VIRTUAL_FILL_ID, np.int32), text], 1)
    index = np.concatenate(
        [np.tile(np.arange(virtual), (batch, 1)), np.full((batch, length), -1)], 1
    ).astype(np.int32)
    inputs = prompted.prompted_inputs(
        model, params, jnp.asarray(tables), ids, np.zeros(batch, np.int32), index
    )
    logits, _ = model.apply({"params": params}, **inputs)

    keys = np.moveaxis(tables[0, :, :, 0], 1, 0)  # [L, P, K, D]
    values = np.moveaxis(tables[0, :, :, 1], 1, 0)
    if config.position_embedding == "rope":
        slots = jnp.arange(virtual)[None]
        bases = config.layer_rope_bases  # sliding-window layers have their own
        keys = np.stack(
            [apply_rope(k[None], slots, b)[0] for k, b in zip(keys, bases, strict=True)]
        )
    cache = gpt.init_cache(config, batch, virtual + length, jnp.float32)
    cache = {
        name: cache[name].at[:, :, :virtual].set(np.repeat(rows[:, None], batch, axis=1))
        for name, rows in (("k", keys), ("v", values))
    }
    positions = np.tile(virtual + np.arange(length), (batch, 1)).astype(np.int32)
    after_prefix, _ = model.apply(
        {"params": params}, text, positions=positions, cache=cache, cache_index=virtual
    )
    np.testing.assert_allclose(logits[:, virtual:], after_prefix, rtol=2e-5, atol=2e-5)
    # And the override does something: without it the text reads other keys and values.
    plain, _ = model.apply({"params": params}, ids)
    assert not np.allclose(plain[:, virtual:], after_prefix, atol=1e-3)


@pytest.mark.parametrize("variant", ["test", "test-gemma"])
def test_init_tables_are_the_frozen_models_own_keys_and_values(variant):
    """Running the model over a table's init rows and putting their keys and values back as a
    deep prompt gives the same hidden states as the rows as input embeddings."""
    config = gpt.VARIANTS[variant]
    params = nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"]
    model = gpt.GPT(config)
    rows = np.random.default_rng(0).normal(0, 0.02, (4, config.hidden_size)).astype(np.float32)
    deep = deep_prompts.tables_from_embeddings(config, params, rows)
    assert deep.shape == (4, *deep_prompts.row_shape(config))
    text = np.asarray([[5, 9, 11, 2]], np.int32)
    ids = np.concatenate([np.zeros((1, 4), np.int32), text], 1)
    index = np.asarray([[0, 1, 2, 3, -1, -1, -1, -1]], np.int32)
    task = np.zeros(1, np.int32)
    shallow = prompted.prompted_inputs(model, params, jnp.asarray(rows[None]), ids, task, index)
    through_kv = prompted.prompted_inputs(model, params, jnp.asarray(deep[None]), ids, task, index)
    a, _ = model.apply({"params": params}, **shallow)
    b, _ = model.apply({"params": params}, **through_kv)
    np.testing.assert_allclose(a[:, 4:], b[:, 4:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("projection", [False, True], ids=["tables", "projection"])
def test_one_step_trains_only_the_deep_prompt(tiny, projection):
    s = training.setup(_deep_config(tiny, projection))
    state, frozen, tx, _ = training.init_state(s, 6)
    prompt = nn.meta.unbox(state["trainable"]["prompt"])
    if projection:
        assert prompt["encoder"]["layer_1"]["kernel"].shape[-1] == np.prod(
            deep_prompts.row_shape(s.model.config)
        )
    else:
        assert prompt["tables"]["sentiment"].shape == (4, *deep_prompts.row_shape(s.model.config))
    before = jax.tree.map(np.array, prompt)
    # The Setup serves a second run, its tables started from the model's placed copy alike.
    again, _, _, _ = training.init_state(s, 6)
    jax.tree.map(np.testing.assert_array_equal, again["trainable"], state["trainable"])
    new_state, stats = training.make_train_step(s, tx)(state, frozen, training.Batches(s).get(0, 0))
    assert np.isfinite(float(stats["loss"]))
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(np.asarray(a), b), new_state["trainable"]["prompt"], before
    )
    assert all(jax.tree.leaves(changed))


def test_a_group_after_a_field_mixed_with_a_front_task_trains_and_predicts(tiny, tmp_path):
    model, data = tiny
    mid = {}
    for split in ("train", "val", "test"):
        mid[split] = tmp_path / f"mid_{split}.jsonl"
        write_jsonl(mid[split], [{**r, "taskname": "after"} for r in read_jsonl(data[split])])
    config = _deep_config(tiny, **{"trainer.max_steps": 10, "model.optim.lr": 3e-2})
    config.model.new_tasks = ("sentiment", "after")
    config.model.task_templates = (
        *config.model.task_templates,
        dict(
            taskname="after",
            prompt_template="{sentence} <|VIRTUAL_PROMPT_0|> sentiment: {label}",
            total_virtual_tokens=2,
            virtual_token_splits=(2,),
            answer_field="label",
            truncate_field="sentence",
            answer_only_loss=True,
        ),
    )
    config.model.prompt_tuning.new_prompt_init_methods = ("vocab", "random")
    config.model.data.train_ds = (str(data["train"]), str(mid["train"]))
    config.model.data.validation_ds = (str(data["val"]), str(mid["val"]))
    config.model.data.test_ds = (str(data["test"]), str(mid["test"]))
    batches = training.Batches(training.setup(config))
    assert any(len(set(batches.get(0, i)["task_id"].ravel().tolist())) == 2 for i in range(6))
    run = ptlearn.train(config, tmp_path / "run")
    losses = [r["loss"] for r in run.history if "loss" in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert {"test_sentiment/accuracy", "test_after/accuracy"} <= set(run.test)
    artifact = load_prompt_model(run.prompt_model)
    assert artifact.tables["after"].shape[:2] == (2, 2)  # [P, L, 2, K, D]
    lm = ptlearn.load(run.prompt_model)
    records = read_jsonl(mid["test"])[:5] + read_jsonl(data["test"])[:5]
    answers = lm.predict(records)
    assert len(answers) == 10
    # Serving reuses the front task's prefix cache; the whole prompt each time decodes alike.
    assert lm.prefix_caches
    assert lm.predict(records) == answers
    ranked = lm.rank(records)
    assert set(ranked) <= {"positive", "negative", "neutral"}


def test_deep_prompts_on_tp2_dp4_match_one_device(tiny, tmp_path):
    def losses(config, workdir):
        run = training.train_and_evaluate(config, str(workdir))
        return {r["step"]: r["loss"] for r in run.history if "loss" in r}

    changes = {"trainer.max_steps": 4, "model.micro_batch_size": 8}
    single = losses(_deep_config(tiny, **changes), tmp_path / "one")
    mesh_changes = {"trainer.devices": 8, "model.tensor_model_parallel_size": 2}
    config = _deep_config(tiny, **{**changes, **mesh_changes, "model.micro_batch_size": 2})
    s = training.setup(config)
    state, _, _, _ = training.init_state(s, 4)
    table = state["trainable"]["prompt"]["tables"]["sentiment"]
    assert s.model.config.num_kv_heads % 2 == 0
    # The heads axis splits like the model's own keys and values.
    assert tuple(table.sharding.spec) == (None, None, None, "model", None)
    mesh = losses(config, tmp_path / "mesh")
    assert sorted(mesh) == sorted(single)
    for step, loss in mesh.items():
        assert loss == pytest.approx(single[step], rel=1e-4)


def test_adding_a_deep_task_keeps_the_old_one_bit_identical(tiny, tmp_path):
    model, data = tiny
    first = training.train_and_evaluate(_deep_config(tiny), str(tmp_path / "first"))
    topic = tmp_path / "topic.jsonl"
    write_jsonl(
        topic,
        [
            {"taskname": "topic", "text": r["sentence"], "answer": r["sentence"].split()[0]}
            for r in read_jsonl(data["train"])
        ],
    )
    config = _deep_config(tiny)
    config.model.restore_path = first.prompt_model
    config.model.existing_tasks = ("sentiment",)
    config.model.new_tasks = ("topic",)
    config.model.task_templates = (
        dict(
            taskname="topic",
            prompt_template="<|VIRTUAL_PROMPT_0|> {text} first word:{answer}",
            total_virtual_tokens=3,
            virtual_token_splits=(3,),
            answer_field="answer",
            truncate_field=None,
            answer_only_loss=True,
        ),
    )
    config.model.data.train_ds = (str(topic),)
    config.model.data.validation_ds = (str(topic),)
    second = training.train_and_evaluate(config, str(tmp_path / "second"))
    old, new = load_prompt_model(first.prompt_model), load_prompt_model(second.prompt_model)
    assert new.tables["sentiment"].tobytes() == old.tables["sentiment"].tobytes()
    records = [(i + 1, r) for i, r in enumerate(read_jsonl(data["test"]))]
    before, _ = predict.load_prompted_lm(first.prompt_model)
    after, _ = predict.load_prompted_lm(second.prompt_model)
    assert predict.predict_records(before, records, config.inference) == predict.predict_records(
        after, records, config.inference
    )
    # A shallow run cannot take the deep task over: one line says why.
    shallow = tiny_config(model, data, style="prompt-tuning")
    shallow.model.restore_path = first.prompt_model
    shallow.model.existing_tasks = ("sentiment",)
    shallow.model.new_tasks = ("topic",)
    shallow.model.task_templates = config.model.task_templates
    shallow.model.data.train_ds = (str(topic),)
    shallow.model.data.validation_ds = (str(topic),)
    with pytest.raises(ConfigError, match="style the prompt model was trained with"):
        training.train_and_evaluate(shallow, str(tmp_path / "third"))


def test_an_interrupted_deep_run_resumes_to_the_same_tables(tiny, tmp_path, monkeypatch):
    whole = training.train_and_evaluate(_deep_config(tiny, True), str(tmp_path / "whole"))
    real = training.make_train_step

    def stops_at_step_5(s, tx):
        step, calls = real(s, tx), itertools.count(1)

        def run(*args):
            if next(calls) == 5:  # after the checkpoint of step 4
                raise KeyboardInterrupt
            return step(*args)

        return run

    monkeypatch.setattr(training, "make_train_step", stops_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        training.train_and_evaluate(_deep_config(tiny, True), str(tmp_path / "cut"))
    monkeypatch.undo()
    saved = tmp_path / "cut" / "checkpoints" / "last"
    assert [p.name for p in saved.iterdir() if p.name.isdigit()] == ["4"]
    assert not (tmp_path / "cut" / "prompt_model").exists()
    resumed = training.train_and_evaluate(_deep_config(tiny, True), str(tmp_path / "cut"))
    a, b = load_prompt_model(whole.prompt_model), load_prompt_model(resumed.prompt_model)
    np.testing.assert_array_equal(a.tables["sentiment"], b.tables["sentiment"])


def test_p_tuning_v2_is_the_same_style(tiny):
    config = _deep_config(tiny)
    config.model.virtual_prompt_style = "p-tuning-v2"
    s = training.setup(config)
    state, _, _, _ = training.init_state(s, 6)
    assert state["trainable"]["prompt"]["tables"]["sentiment"].ndim == 5
