"""Training epochs: batch order a pure function of (seed, epoch), and task mixtures that give
each task its share of an epoch (model.data.train_task_weights)."""

import copy
import json

import numpy as np
import pytest
from tiny_model import tiny_config, write_tiny_data, write_tiny_model

from ptlearn import config_checks, config_lib, training
from ptlearn.data import batching
from ptlearn.errors import ConfigError, DataError


def test_no_pool_is_every_example_once_and_a_pool_of_all_is_the_same_order():
    lengths = np.random.default_rng(0).integers(3, 60, 100)
    plain = batching.epoch_batches(lengths, 8, seed=3, epoch=1)
    pooled = batching.epoch_batches(lengths, 8, seed=3, epoch=1, pool=np.arange(100))
    assert len(plain) == 12  # 100 // 8, the short last batch dropped
    for a, b in zip(plain, pooled, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(np.unique(np.concatenate(plain))) == 96


def test_mixture_gives_each_task_its_share_repeating_a_small_task_only_after_all_of_it():
    task_of = np.array([0] * 10 + [1] * 90)
    pool = batching.mixture_pool(task_of, (1, 1), seed=0, epoch=0)
    assert len(pool) == 100
    counts = np.bincount(task_of[pool])
    assert counts.tolist() == [50, 50]
    small = pool[task_of[pool] == 0]
    # Five passes over the 10 examples of task 0, each a permutation of all of them.
    for k in range(5):
        assert sorted(small[10 * k : 10 * (k + 1)].tolist()) == list(range(10))
    large = pool[task_of[pool] == 1]
    assert len(set(large.tolist())) == 50  # a subset of task 1, no repeats
    other_epoch = batching.mixture_pool(task_of, (1, 1), seed=0, epoch=1)
    assert set(other_epoch[task_of[other_epoch] == 1]) != set(large)
    np.testing.assert_array_equal(pool, batching.mixture_pool(task_of, (1, 1), seed=0, epoch=0))


def test_mixture_rounds_to_exactly_n_places_and_a_zero_weight_task_is_left_out():
    task_of = np.array([0] * 7 + [1] * 5 + [2] * 1)
    pool = batching.mixture_pool(task_of, (1, 1, 1), seed=5, epoch=2)
    assert sorted(np.bincount(task_of[pool]).tolist()) == [4, 4, 5]
    pool = batching.mixture_pool(task_of, (0, 2.5, 0), seed=5, epoch=2)
    assert len(pool) == 13 and set(task_of[pool].tolist()) == {1}


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    """A config of the tiny model and toy data, with a second task 'echo' (a tenth as many examples)."""
    root = tmp_path_factory.mktemp("mix")
    data = write_tiny_data(root / "data")
    records = [json.loads(line) for line in data["train"].read_text().splitlines()]
    echo = root / "data" / "echo.jsonl"
    echo.write_text(
        "".join(
            json.dumps({"taskname": "echo", "sentence": r["sentence"], "label": r["label"]}) + "\n"
            for r in records[: len(records) // 10]
        )
    )
    config = tiny_config(write_tiny_model(root / "model"), data)
    config.model.new_tasks = ("sentiment", "echo")
    echo_template = config_lib.task_template(
        "echo",
        "<|VIRTUAL_PROMPT_0|> {sentence} again: {label}",
        total_virtual_tokens=2,
        virtual_token_splits=(2,),
        answer_field="label",
        answer_only_loss=True,
    )
    config.model.task_templates = (*config.model.task_templates, echo_template)
    config.model.data.train_ds = (str(data["train"]), str(echo))
    return config


def _task_counts(config) -> np.ndarray:
    batches = training.Batches(training.setup(config))
    ids = [np.asarray(batches.get(0, i)["task_id"]).reshape(-1) for i in range(batches.per_epoch)]
    return np.bincount(np.concatenate(ids), minlength=2)


def test_train_task_weights_set_the_tasks_shares_of_an_epoch(two_tasks):
    config = copy.deepcopy(two_tasks)
    by_count = _task_counts(config)
    with config.unlocked():
        config.model.data.train_task_weights = (1, 1)
    even = _task_counts(config)
    assert even.sum() == by_count.sum()  # the epoch keeps its length
    assert by_count[1] / by_count.sum() < 0.15  # echo by its example count: about 1/11
    assert abs(even[1] / even.sum() - 0.5) < 0.1


def test_bad_train_task_weights_name_the_key(two_tasks):
    config = copy.deepcopy(two_tasks)
    for weights in ((1,), (1, -1), (0, 0), (1, float("nan")), (True, 1)):
        with config.unlocked():
            config.model.data.train_task_weights = weights
        with pytest.raises(ConfigError, match="model.data.train_task_weights"):
            config_checks.validate(config)
    with config.unlocked():
        config.model.data.train_task_weights = (1, 1)
        config.model.data.train_ds = config.model.data.train_ds[:1]  # no echo examples
    with pytest.raises(DataError, match="task 'echo' weight 1 but model.data.train_ds"):
        training.Batches(training.setup(config))


def test_length_chunks_cover_sorted_items_and_split_a_long_tail():
    lengths = sorted([20] * 40 + [40] * 20 + [200, 300])
    chunks = batching.length_chunks(lengths, 16, 512)
    covered = [i for part, _ in chunks for i in range(len(lengths))[part]]
    assert covered == list(range(len(lengths)))
    budget = 16 * batching.bucket_length(20, 512)  # 16 rows at the median's bucket
    for part, rows in chunks:
        items = lengths[part]
        assert rows in (1, 2, 4, 8, 16) and 0 < len(items) <= rows
        assert rows == 1 or rows * batching.bucket_length(max(items), 512) <= budget
    assert chunks[0][1] == 16  # short rows keep the full batch
    assert [rows for part, rows in chunks if 300 in lengths[part]] == [1]
    assert batching.length_chunks([], 16, 512) == []
