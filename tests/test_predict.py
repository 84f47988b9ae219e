"""Serving: the per-task virtual-prompt prefix is computed once and decodes like the whole prompt."""

import dataclasses
import importlib.util
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from tiny_model import sharp_attention, tiny_config, write_tiny_data, write_tiny_model

from ptlearn import (
    answers,
    config_lib,
    deep_prompts,
    evaluation,
    gpt,
    predict,
    prefix_caches,
    serving,
    training,
)
from ptlearn.data.jsonl import read_jsonl
from ptlearn.encoding import VIRTUAL_FILL_ID, EncodedExample


class _Digits:
    """Decodes ids as space-separated numbers (enough to compare generated tokens)."""

    eos_id = None
    pad_id = fill_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def _example(task, head, virtual, tail):
    """head text ids, then `virtual` virtual tokens, then tail text ids."""
    ids = [*head, *[VIRTUAL_FILL_ID] * virtual, *tail]
    index = [-1] * len(head) + list(range(virtual)) + [-1] * len(tail)
    return EncodedExample(
        taskname=task,
        ids=np.asarray(ids, np.int32),
        virtual_index=np.asarray(index, np.int32),
        loss_mask=np.zeros(len(ids), np.float32),
        answer_start=len(ids),
    )


def test_shared_prefix_ends_at_the_last_shared_virtual_token():
    a = _example("t", [1, 2], 3, [9, 9, 5])
    b = _example("t", [1, 2], 3, [9, 9, 6, 7])
    assert prefix_caches.shared_prefix_length([a, b]) == 5  # [1, 2, v0, v1, v2]; "9 9" is data
    assert prefix_caches.shared_prefix_length([a, _example("t", [1, 3], 3, [9])]) == 0
    assert prefix_caches.shared_prefix_length([_example("t", [], 2, [4])]) == 2
    # At least one token stays after the prefix.
    assert prefix_caches.shared_prefix_length([_example("t", [1], 2, [])]) == 2
    assert prefix_caches.shared_prefix_length([_example("t", [], 2, [])]) == 1
    assert prefix_caches.shared_prefix_length([_example("t", [4, 5], 0, [6])]) == 0


@pytest.mark.parametrize(
    "variant,scan_layers",
    [("test", True), ("test", False), ("test-gemma", True), ("test-gpt2", True)],
)
@pytest.mark.parametrize("deep", [False, True], ids=["input-prompts", "deep-prompts"])
def test_answers_with_prefix_caches_equal_the_whole_prompt(monkeypatch, variant, scan_layers, deep):
    # test-gemma's window of 4 tokens: the padding between a prefix and a prompt must not count.
    config = gpt.VARIANTS[variant]
    params = jax.device_get(nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"])
    params = sharp_attention(params)
    row = deep_prompts.row_shape(config) if deep else (config.hidden_size,)
    if not scan_layers:
        config, params = serving.unstack_layers(config, params)
    tables = np.random.default_rng(0).normal(0, 1, (2, 4, *row)).astype(np.float32)
    lm = predict.PromptedLM(
        config=config,
        lm_params=params,
        tables=tables,
        task_names=["a", "b"],
        templates={},
        tokenizer=_Digits(),
        max_seq_length=64,
        add_bos=False,
        add_eos=False,
    )
    rng = np.random.default_rng(1)
    examples = [
        _example(task, head, virtual, rng.integers(1, 256, n).tolist())
        for task, head, virtual, n in [
            ("a", [3], 4, 5),
            ("b", [], 2, 3),
            ("a", [3], 4, 2),
            ("b", [], 2, 7),
            ("a", [3], 4, 1),
        ]
    ]
    inference = config_lib.inference_config()
    inference.update(greedy=True, tokens_to_generate=6, batch_size=2)
    cached = answers.generate_answers(lm, examples, inference)
    assert len(lm.prefix_caches) == 2  # one per task, reused by all three batches
    answers.generate_answers(lm, examples, inference)
    assert len(lm.prefix_caches) == 2
    # A bounded store drops its oldest prefix and recomputes it when needed.
    monkeypatch.setattr(prefix_caches, "MAX_PREFIX_CACHES", 1)
    small = dataclasses.replace(lm, prefix_caches={})
    assert answers.generate_answers(small, examples, inference) == cached
    assert len(small.prefix_caches) == 1
    monkeypatch.setattr(prefix_caches, "shared_prefix_length", lambda examples: 0)
    whole = answers.generate_answers(dataclasses.replace(lm, prefix_caches={}), examples, inference)
    assert cached == whole
    assert all(len(a.split()) == 6 for a in cached)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """The tiny model's training Setup with two tasks: the prompt in front, and a virtual group
    after a truncatable field with literal text after the answer."""
    root = tmp_path_factory.mktemp("tiny_rank")
    config = tiny_config(write_tiny_model(root / "model"), write_tiny_data(root / "data"))
    config.model.new_tasks = ("sentiment", "after")
    config.model.task_templates = (
        *config.model.task_templates,
        config_lib.task_template(
            "after",
            "{sentence} <|VIRTUAL_PROMPT_0|> so: {label}.",
            total_virtual_tokens=2,
            virtual_token_splits=(2,),
            answer_field="label",
            truncate_field="sentence",
        ),
    )
    config.model.max_seq_length = 32
    return training.setup(config)


@pytest.mark.parametrize("layout", ["scanned", "unrolled", "sliding-window"])
@pytest.mark.parametrize("deep", [False, True], ids=["input-prompts", "deep-prompts"])
def test_rank_scores_on_a_shared_prompt_cache_equal_whole_examples(tiny_setup, deep, layout):
    s = tiny_setup
    config, params = s.model.config, sharp_attention(s.loaded.params)
    if layout == "unrolled":
        config, params = serving.unstack_layers(config, params)
    if layout == "sliding-window":  # Gemma 3's layers, a 4-token window, the tiny vocabulary
        config = dataclasses.replace(gpt.VARIANTS["test-gemma"], vocab_size=config.vocab_size)
        params = sharp_attention(nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"])
    row = deep_prompts.row_shape(config) if deep else (config.hidden_size,)
    rng = np.random.default_rng(0)
    tables = {t: rng.normal(0, 1, (4, *row)).astype(np.float32) for t in s.task_names}
    lm = dataclasses.replace(evaluation.prompted_lm(s, params, tables), config=config)
    label_sets = {"sentiment": ["negative", "neutral", "positive"], "after": ["no", "yes sir"]}
    long_sentence = " ".join(["word"] * 40)  # cut to fit, by more for the longer label
    records = [
        (i + 1, {"taskname": task, "sentence": sentence})
        for i, (task, sentence) in enumerate(
            [
                ("sentiment", "the film was fine"),
                ("after", "it rained all day"),
                ("sentiment", "bad"),
                ("after", long_sentence),
                ("after", "ok"),
                ("sentiment", "a long and winding sentence about nothing at all"),  # no fit
            ]
        )
    ]
    candidates = answers._candidates(lm, records, label_sets)
    shared = [bool(answers._prompt_split(c)) for c in candidates]
    # Record 4's prompt is cut differently per label; record 6 fits with no label.
    assert shared == [True, True, True, False, True, False]
    cached = answers.label_nlls(lm, records, label_sets, batch_size=2)
    whole = answers.label_nlls(lm, records, label_sets, batch_size=2, share_prompts=False)
    assert [sorted(c) for c in cached[:5]] == [
        sorted(label_sets[r["taskname"]]) for _, r in records[:5]
    ]
    assert cached[5] == {} == whole[5]
    for a, b in zip(cached, whole, strict=True):
        np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], rtol=1e-5)
    assert len({round(v, 3) for v in cached[0].values()}) == 3  # labels really score apart
    ranked = answers.rank_answers(lm, records, label_sets, batch_size=2)
    assert ranked == [min(c, key=c.get) for c in whole[:5]] + [""]


def test_experiments_rank_cache_check_runs_on_the_tiny_model(tmp_path):
    """experiments/rank_cache_check.py's measurement, on the tiny model's config."""
    model, data = write_tiny_model(tmp_path / "model"), write_tiny_data(tmp_path / "data")
    config = tmp_path / "tiny_rank_config.py"
    config.write_text(
        f"import sys\nsys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n"
        "import pathlib\nfrom tiny_model import tiny_config\n\n\ndef get_config(arg=None):\n"
        f"    data = {{k: pathlib.Path(v) for k, v in { ({k: str(v) for k, v in data.items()})!r}.items()}}\n"
        f"    return tiny_config(pathlib.Path({str(model)!r}), data)\n"
    )
    script = pathlib.Path(__file__).parents[1] / "experiments" / "rank_cache_check.py"
    spec = importlib.util.spec_from_file_location("rank_cache_check", script)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    result = check.main(str(config), 1)
    assert result["records"] == len(read_jsonl(data["val"])) == result["same_ranked_label"]
    assert result["labels"] == {"sentiment": 3} and result["max_abs_nll_gap"] < 1e-3
    assert result["shared_prompt_median_s"] > 0 and result["whole_examples_median_s"] > 0
