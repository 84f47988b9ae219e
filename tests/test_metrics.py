"""Task metrics on hand-worked examples."""

import pytest

from ptlearn.errors import DataError
from ptlearn.metrics import (
    accuracy,
    exact_match,
    f1,
    intent_accuracy,
    normalize_answer,
    parse_intent_and_slots,
    slot_counts,
    slot_f1,
    task_metrics,
)

GOLD_ALARM = "\nIntent: alarm_set\nSlots: time(five am), date(this week)"
GOLD_WEATHER = "\nIntent: weather_query\nSlots: place_name(paris)"
GOLD_MUSIC = "\nIntent: play_music\nSlots: None"
# Example 1 exact; 2 right intent, one wrong slot plus an invented one; 3 unparsable.
PREDS = [
    GOLD_ALARM,
    "\nIntent: weather_query\nSlots: place_name(london), date(today)\nextra text",
    "I don't know",
]
GOLDS = [GOLD_ALARM, GOLD_WEATHER, GOLD_MUSIC]


def test_accuracy_strips_whitespace_only():
    preds = ["positive", "negative ", " neutral\n", "Positive"]
    labels = ["positive", "positive", "neutral", "positive"]
    assert accuracy(preds, labels) == pytest.approx(2 / 4)
    assert accuracy([], []) == 0.0


def test_normalize_answer_follows_squad_v11():
    assert normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    assert normalize_answer("An apple a day; THE end.") == "apple day end"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_f1_take_the_best_gold():
    preds = ["the Denver Broncos.", "Denver Broncos", "Carolina", ""]
    golds = [
        ["Denver Broncos"],
        ["Broncos", "Denver Broncos team"],
        ["Panthers"],
        ["x"],
    ]
    assert exact_match(preds, golds) == pytest.approx(1 / 4)
    # F1: 1; max(2/3 vs "Broncos", 0.8 vs "Denver Broncos team"); 0; 0 for an empty prediction.
    assert f1(preds, golds) == pytest.approx((1 + 0.8 + 0 + 0) / 4)


def test_f1_counts_repeated_tokens_once_each():
    # Overlap of "x y y" and "y y y" is two "y"s: precision 2/3, recall 2/3.
    assert f1(["x y y"], [["y y y"]]) == pytest.approx(2 / 3)


def test_parse_intent_and_slots_is_tolerant():
    assert parse_intent_and_slots(GOLD_ALARM) == (
        "alarm_set",
        [("time", "five am"), ("date", "this week")],
    )
    assert parse_intent_and_slots(GOLD_MUSIC) == ("play_music", [])
    assert parse_intent_and_slots("garbage") == (None, [])
    assert parse_intent_and_slots("Intent:\nSlots: time(six") == (None, [])


def test_intent_accuracy_and_micro_slot_f1():
    assert intent_accuracy(PREDS, GOLDS) == pytest.approx(2 / 3)
    assert slot_counts(PREDS, GOLDS) == (2, 4, 3)
    # precision 2/4, recall 2/3 -> F1 = 2 * (1/2) * (2/3) / (1/2 + 2/3) = 4/7.
    assert slot_f1(PREDS, GOLDS) == pytest.approx(4 / 7)


def test_slot_f1_edge_cases():
    assert slot_f1([GOLD_MUSIC], [GOLD_MUSIC]) == 1.0  # nothing to find, nothing invented
    assert slot_f1([], []) == 0.0
    assert slot_f1(["garbage"], [GOLD_ALARM]) == 0.0
    duplicated = "\nIntent: alarm_set\nSlots: time(five am), time(five am)"
    assert slot_counts([duplicated], [GOLD_ALARM]) == (1, 2, 2)


def test_length_mismatch_is_a_data_error():
    with pytest.raises(DataError, match="2 predictions but 1 labels"):
        accuracy(["a", "b"], ["a"])
    with pytest.raises(DataError, match="non-empty list"):
        exact_match(["a"], ["a"])  # a bare string, not a list of golds


def test_task_metrics_are_the_ones_the_template_names():
    sentiment = [
        {"taskname": "sentiment", "sentence": "s", "label": y} for y in ("positive", "neutral")
    ]
    assert task_metrics("accuracy", ["positive", "negative"], sentiment, answer_field="label") == {
        "accuracy": 0.5,
        "n": 2,
    }

    squad = [
        {"taskname": "squad", "answer": "Denver Broncos", "answers": ["Denver Broncos", "Broncos"]},
        {"taskname": "squad", "answer": "Carolina Panthers"},
    ]
    metrics = task_metrics("squad", ["broncos", "panthers"], squad, answer_field="answer")
    assert metrics["exact_match"] == pytest.approx(1 / 2)
    assert metrics["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["n"] == 2
    # Any task can name a metric: the name of the task plays no part.
    assert task_metrics("exact_match", ["the Broncos!", "x"], squad, answer_field="answer") == {
        "exact_match": 0.0,
        "n": 2,
    }
    assert task_metrics("exact_match", ["the  denver broncos!"], squad[:1], answer_field="answer")[
        "exact_match"
    ] == pytest.approx(1.0)

    examples = [{"taskname": "intent_and_slot", "utterance": "u", "label": g} for g in GOLDS]
    metrics = task_metrics("intent_slot", PREDS, examples, answer_field="label")
    assert metrics == pytest.approx(
        {
            "intent_accuracy": 2 / 3,
            "slot_f1": 4 / 7,
            "slots_matched": 2,
            "slots_predicted": 4,
            "slots_gold": 3,
            "n": 3,
        }
    )

    other = [{"taskname": "boolq", "passage": "p", "verdict": v} for v in ("yes", "no")]
    assert task_metrics("accuracy", [" yes", "yes"], other, answer_field="verdict") == {
        "accuracy": 0.5,
        "n": 2,
    }


def test_task_metrics_names_missing_fields():
    with pytest.raises(DataError, match=r"task 'boolq': example 1 has no 'label'"):
        task_metrics(
            "accuracy",
            ["a", "b"],
            [{"label": "a"}, {"answer": "b"}],
            answer_field="label",
            taskname="boolq",
        )
    with pytest.raises(DataError, match=r"example 0 has neither 'answers' nor 'answer'"):
        task_metrics("squad", ["a"], [{"context": "c"}], answer_field="answer", taskname="squad")
    with pytest.raises(DataError, match="1 predictions but 2 examples of task 'sentiment'"):
        task_metrics(
            "accuracy",
            ["a"],
            [{"label": "a"}, {"label": "b"}],
            answer_field="label",
            taskname="sentiment",
        )
