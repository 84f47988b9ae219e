"""Task templates: validation errors, virtual slots, answer boundary, loss masks, truncation."""

import logging
import re

import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlearn.encoding import check_example_fields, encode_dataset, encode_example
from ptlearn.errors import DataError, TemplateError
from ptlearn.templates import TaskTemplate, parse_task_templates


class CharTokenizer:
    """One id per character (ord + 3); 1 is BOS, 2 is EOS; never adds either."""

    bos_id = 1
    eos_id = 2

    def encode(self, text: str) -> list[int]:
        return [ord(c) + 3 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(int(i) - 3) for i in ids)


class WordTokenizer:
    """GPT-2-like pre-tokenisation: a word keeps its leading space; vocabulary grows on use."""

    bos_id = 1
    eos_id = 2

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        words = re.findall(r" ?\w+| ?[^\w\s]+|\s+", text)
        return [self.vocab.setdefault(w, len(self.vocab) + 3) for w in words]

    def words(self, ids) -> list[str]:
        inverse = {v: k for k, v in self.vocab.items()}
        return [inverse[int(i)] for i in ids]


SENTIMENT = {
    "taskname": "sentiment",
    "prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
    "total_virtual_tokens": 4,
    "virtual_token_splits": [4],
    "truncate_field": None,
    "answer_only_loss": True,
    "answer_field": "label",
}
SQUAD = {
    "taskname": "squad",
    "prompt_template": "<|VIRTUAL_PROMPT_0|> Context: {context}\n<|VIRTUAL_PROMPT_1|> "
    "Question: {question}\nAnswer: {answer}.",
    "total_virtual_tokens": 5,
    "virtual_token_splits": [2, 3],
    "truncate_field": "context",
    "answer_only_loss": False,
    "answer_field": "answer",
}


def template(**changes) -> TaskTemplate:
    return parse_task_templates([{**SENTIMENT, **changes}])[changes.get("taskname", "sentiment")]


def encode(t, example, tok=None, **kw):
    kw = {"max_seq_length": 512, "add_eos": False, "add_bos": False, **kw}
    return encode_example(t, example, tok or CharTokenizer(), **kw)


# --- parsing and validation -------------------------------------------------------------------


def test_parse_from_config_dict_and_round_trip():
    config = ml_collections.ConfigDict({"task_templates": [SENTIMENT, SQUAD]})
    templates = parse_task_templates(config.task_templates)
    assert list(templates) == ["sentiment", "squad"]
    squad = templates["squad"]
    assert squad.virtual_token_splits == (2, 3)
    assert squad.field_names == ("context", "question", "answer")
    assert parse_task_templates([squad.to_dict()])["squad"] == squad
    # A ConfigDict entry (not a Mapping) is accepted too.
    entry = ml_collections.ConfigDict(SENTIMENT)
    assert parse_task_templates([entry])["sentiment"] == templates["sentiment"]


def test_optional_keys_take_nemo_defaults():
    entry = {k: v for k, v in SENTIMENT.items() if k not in ("truncate_field", "answer_only_loss")}
    t = parse_task_templates([entry])["sentiment"]
    assert t.truncate_field is None and t.answer_only_loss is False


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"virtual_token_splits": [3]}, "sum to 3 but total_virtual_tokens is 4"),
        ({"virtual_token_splits": [2, 2]}, "1 virtual marker(s) but virtual_token_splits"),
        (
            {
                "prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence} <|VIRTUAL_PROMPT_2|> {label}",
                "virtual_token_splits": [2, 2],
            },
            "numbered [0, 2]; number them 0..1",
        ),
        (
            {
                "prompt_template": "<|VIRTUAL_PROMPT_1|> {sentence} <|VIRTUAL_PROMPT_1|> {label}",
                "virtual_token_splits": [2, 2],
            },
            "<|VIRTUAL_PROMPT_1|> appears 2 times",
        ),
        ({"prompt_template": "{sentence} {label}"}, "0 virtual marker(s)"),
        ({"prompt_template": "<|VIRTUAL_PROMPT0|> {sentence} {label}"}, "malformed virtual"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence}"}, "'label' is not in prompt"),
        (
            {"prompt_template": "<|VIRTUAL_PROMPT_0|> {label} {sentence}"},
            "must come last, but {sentence} follows",
        ),
        (
            {"prompt_template": "{label} <|VIRTUAL_PROMPT_0|>"},
            "must come last, but a virtual marker follows",
        ),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {label} {label}"}, "appears 2 times"),
        ({"truncate_field": "context"}, "truncate_field 'context' is not a field"),
        ({"truncate_field": "label"}, "is the answer field"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence {label}"}, "literal brace"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence:>9} {label}"}, "format spec"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {} {label}"}, "empty field"),
        ({"virtual_token_splits": [4, 0]}, "positive integers"),
        ({"total_virtual_tokens": True}, "total_virtual_tokens must be an integer >= 0"),
        ({"total_virtual_tokens": -1}, "total_virtual_tokens must be an integer >= 0"),
        (
            {"total_virtual_tokens": 0, "virtual_token_splits": []},
            "1 virtual marker(s) but virtual_token_splits [] has 0",
        ),
        ({"answer_only_loss": "yes"}, "answer_only_loss must be true or false"),
        ({"answer_field": ""}, "answer_field must be a non-empty string"),
        ({"prompt_templates": "x"}, "unknown key(s) ['prompt_templates']"),
    ],
)
def test_invalid_templates_name_task_and_problem(changes, problem):
    with pytest.raises(TemplateError) as info:
        parse_task_templates([{**SENTIMENT, **changes}])
    assert "'sentiment'" in str(info.value)
    assert problem in str(info.value)


def test_a_template_without_virtual_tokens_is_zero_shot_or_in_context():
    entry = {
        **SENTIMENT,
        "prompt_template": "Profit rose. sentiment: positive\n{sentence} sentiment: {label}",
        "total_virtual_tokens": 0,
        "virtual_token_splits": [],
    }
    (template,) = parse_task_templates([entry]).values()
    assert template.total_virtual_tokens == 0 and template.virtual_token_splits == ()


def test_missing_key_and_duplicate_task():
    entry = {k: v for k, v in SENTIMENT.items() if k != "answer_field"}
    with pytest.raises(TemplateError, match=r"'sentiment': missing key\(s\) \['answer_field'\]"):
        parse_task_templates([entry])
    with pytest.raises(TemplateError, match="'sentiment'.*defined twice"):
        parse_task_templates([SENTIMENT, SQUAD, SENTIMENT])


def test_check_example_fields_locates_the_problem():
    squad = parse_task_templates([SQUAD])["squad"]
    example = {"taskname": "squad", "question": "q?", "answer": "a"}
    with pytest.raises(DataError) as info:
        check_example_fields(squad, example, "file.jsonl line 7")
    assert str(info.value).startswith("file.jsonl line 7: task 'squad' needs field 'context'")
    check_example_fields(squad, {"context": "c", "question": "q"}, "x", for_inference=True)
    with pytest.raises(DataError, match="line 2: task 'squad' needs field 'answer'"):
        check_example_fields(squad, {"context": "c", "question": "q"}, "f line 2")
    with pytest.raises(DataError, match="field 'context' must be a string, got list"):
        check_example_fields(squad, {**example, "context": ["x"]}, "f line 3")


# --- encoding ---------------------------------------------------------------------------------


def test_several_virtual_groups_in_any_order():
    t = template(
        prompt_template="A<|VIRTUAL_PROMPT_1|>{x}<|VIRTUAL_PROMPT_0|>B{label}",
        total_virtual_tokens=5,
        virtual_token_splits=[2, 3],
    )
    enc = encode(t, {"x": "xy", "label": "L"})
    tok = CharTokenizer()
    # A, group 1 (indices 2..4), "xy", group 0 (indices 0, 1), B, L
    np.testing.assert_array_equal(enc.virtual_index, [-1, 2, 3, 4, -1, -1, 0, 1, -1, -1])
    text = enc.virtual_index == -1
    assert tok.decode(enc.ids[text]) == "AxyBL"
    assert enc.ids.dtype == np.int32 and enc.virtual_index.dtype == np.int32
    assert enc.answer_start == 9


def test_answer_boundary_moves_whitespace_into_answer():
    t = template()
    example = {"sentence": "Profit rose", "label": "positive"}
    tok = CharTokenizer()
    enc = encode(t, example, tok)
    assert tok.decode(enc.ids[enc.answer_start :]) == " positive"
    assert tok.decode(enc.ids[4 : enc.answer_start]) == " Profit rose sentiment:"
    words = WordTokenizer()
    enc = encode(t, example, words)
    assert words.words(enc.ids[enc.answer_start :]) == [" positive"]
    assert words.words(enc.ids[4 : enc.answer_start]) == [" Profit", " rose", " sentiment", ":"]
    # Whitespace from a field value just before the answer moves as well.
    t = template(prompt_template="<|VIRTUAL_PROMPT_0|>{sentence}{label}")
    enc = encode(t, {"sentence": "up \n", "label": "pos"}, tok)
    assert tok.decode(enc.ids[enc.answer_start :]) == " \npos"


def test_marker_text_inside_data_is_plain_text():
    enc = encode(template(), {"sentence": "<|VIRTUAL_PROMPT_0|>", "label": "x"})
    assert (enc.virtual_index >= 0).sum() == 4


def test_numbers_fill_fields_as_text():
    tok = CharTokenizer()
    enc = encode(template(), {"sentence": 12, "label": 3.5}, tok)
    assert tok.decode(enc.ids[enc.answer_start :]) == " 3.5"


@pytest.mark.parametrize("add_eos", [False, True])
@pytest.mark.parametrize("add_bos", [False, True])
def test_answer_only_loss_mask(add_eos, add_bos):
    tok = CharTokenizer()
    enc = encode(
        template(), {"sentence": "s", "label": "pos"}, tok, add_eos=add_eos, add_bos=add_bos
    )
    expected = np.zeros(len(enc.ids), np.float32)
    expected[enc.answer_start :] = 1
    np.testing.assert_array_equal(enc.loss_mask, expected)
    assert enc.loss_mask.dtype == np.float32
    assert tok.decode(enc.ids[enc.answer_start : enc.answer_start + 4]) == " pos"
    assert (enc.ids[-1] == tok.eos_id) == add_eos
    assert (enc.ids[0] == tok.bos_id) == add_bos
    assert len(enc.ids) == add_bos + 4 + len(" s sentiment: pos") + add_eos


@pytest.mark.parametrize("add_eos", [False, True])
@pytest.mark.parametrize("add_bos", [False, True])
def test_full_loss_mask_covers_every_text_token_after_the_first(add_eos, add_bos):
    squad = parse_task_templates([SQUAD])["squad"]
    example = {"context": "ctx", "question": "q?", "answer": "a"}
    enc = encode(squad, example, add_eos=add_eos, add_bos=add_bos)
    expected = (enc.virtual_index == -1).astype(np.float32)
    expected[0] = 0
    np.testing.assert_array_equal(enc.loss_mask, expected)
    # Literal text after the answer field belongs to the answer.
    answer_ids = enc.ids[enc.answer_start : len(enc.ids) - add_eos]
    assert CharTokenizer().decode(answer_ids) == " a."
    assert (enc.ids[-1] == CharTokenizer.eos_id) == add_eos


def test_inference_ids_are_the_training_prompt():
    squad = parse_task_templates([SQUAD])["squad"]
    example = {"context": "some text ", "question": "who?", "answer": "me"}
    train = encode(squad, example, add_eos=True, add_bos=True)
    infer = encode(squad, example, add_eos=True, add_bos=True, for_inference=True)
    np.testing.assert_array_equal(infer.ids, train.ids[: train.answer_start])
    np.testing.assert_array_equal(infer.virtual_index, train.virtual_index[: train.answer_start])
    assert infer.answer_start == len(infer.ids)
    assert not infer.loss_mask.any()
    del example["answer"]  # the answer is not needed at inference
    assert encode(squad, example, for_inference=True) is not None


def test_truncation_cuts_only_the_truncate_field_from_its_end():
    squad = parse_task_templates([SQUAD])["squad"]
    tok = CharTokenizer()
    example = {"context": "abcdefghij", "question": "q?", "answer": "yes"}
    full = encode(squad, example, tok, add_eos=True)
    assert not full.truncated
    enc = encode(squad, example, tok, add_eos=True, max_seq_length=len(full.ids) - 4)
    assert enc.truncated and len(enc.ids) == len(full.ids) - 4
    text = tok.decode(enc.ids[(enc.virtual_index == -1) & (enc.ids != tok.eos_id)])
    assert text == " Context: abcdef\n Question: q?\nAnswer: yes."
    # Cutting the whole context is allowed; one token more is not enough, so it is dropped.
    shortest = len(full.ids) - len(" abcdefghij")
    assert len(encode(squad, example, tok, add_eos=True, max_seq_length=shortest).ids) == shortest
    assert encode(squad, example, tok, add_eos=True, max_seq_length=shortest - 1) is None


def test_too_long_without_truncate_field_is_dropped():
    t = template()
    example = {"sentence": "long sentence", "label": "neutral"}
    full = encode(t, example)
    assert encode(t, example, max_seq_length=len(full.ids)) is not None
    assert encode(t, example, max_seq_length=len(full.ids) - 1) is None


def test_encode_dataset_counts_and_warns(caplog):
    templates = parse_task_templates([SENTIMENT, SQUAD])
    records = [
        (1, {"taskname": "sentiment", "sentence": "ok", "label": "neutral"}),
        (2, {"taskname": "squad", "context": "c" * 40, "question": "q", "answer": "a"}),
        (3, {"taskname": "sentiment", "sentence": "x" * 40, "label": "neutral"}),
        (4, {"taskname": "squad", "context": "c", "question": "q", "answer": "a"}),
    ]
    with caplog.at_level(logging.WARNING, logger="ptlearn.templates"):
        examples, stats = encode_dataset(
            records,
            templates,
            CharTokenizer(),
            max_seq_length=48,
            add_eos=True,
            add_bos=False,
            source="train.jsonl",
        )
    assert [e.line_no for e in examples] == [1, 2, 4]
    assert [e.taskname for e in examples] == ["sentiment", "squad", "squad"]
    assert all(len(e.ids) <= 48 for e in examples)
    assert stats.encoded == {"sentiment": 1, "squad": 2}
    assert stats.truncated == {"squad": 1, "sentiment": 0}
    assert stats.dropped == {"sentiment": 1} and stats.dropped_lines == [3]
    assert "sentiment: 1 encoded (0 truncated), 1 dropped" in stats.summary()
    assert "train.jsonl: dropped 1 example(s)" in caplog.text and "lines 3" in caplog.text


def test_encode_dataset_rejects_unknown_or_missing_task():
    templates = parse_task_templates([SENTIMENT, SQUAD])
    kw = {"max_seq_length": 64, "add_eos": False, "add_bos": False, "source": "val.jsonl"}
    bad = [(1, {"taskname": "sentiment", "sentence": "s", "label": "l"}), (2, {"taskname": "qa"})]
    with pytest.raises(DataError) as info:
        encode_dataset(bad, templates, CharTokenizer(), **kw)
    assert "val.jsonl:2: unknown taskname 'qa'" in str(info.value)
    assert "sentiment, squad" in str(info.value)
    with pytest.raises(DataError, match="val.jsonl:5: each example needs a 'taskname'"):
        encode_dataset([(5, {"sentence": "s"})], templates, CharTokenizer(), **kw)
    with pytest.raises(DataError, match="val.jsonl:6: task 'squad' needs field 'question'"):
        encode_dataset(
            [(6, {"taskname": "squad", "context": "c"})], templates, CharTokenizer(), **kw
        )


# --- properties -------------------------------------------------------------------------------

# Any text a data file can hold: whitespace of every kind, braces, marker look-alikes, emoji.
field_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["{label}", "<|VIRTUAL_PROMPT_0|>", " \t\n", "\u2028x\u00a0"]
)


@settings(max_examples=150, deadline=None)
@given(
    context=field_text,
    question=field_text,
    answer=field_text,
    max_seq_length=st.integers(30, 80),
    add_eos=st.booleans(),
    add_bos=st.booleans(),
)
def test_inference_prefix_and_length_properties(
    context, question, answer, max_seq_length, add_eos, add_bos
):
    squad = parse_task_templates([SQUAD])["squad"]
    tok = CharTokenizer()
    example = {"context": context, "question": question, "answer": answer}
    kw = {"max_seq_length": max_seq_length, "add_eos": add_eos, "add_bos": add_bos}
    train = encode(squad, example, tok, **kw)
    infer = encode(squad, example, tok, for_inference=True, **kw)
    for enc in (train, infer):
        if enc is not None:
            assert len(enc.ids) <= max_seq_length
            # Every virtual token of the task appears exactly once.
            assert sorted(enc.virtual_index[enc.virtual_index >= 0]) == list(range(5))
    if train is None:
        return
    assert infer is not None  # the prompt alone is never longer than prompt + answer
    # The answer is never cut, even when the context is.
    answer_ids = train.ids[train.answer_start : len(train.ids) - add_eos]
    assert tok.decode(answer_ids) == f" {answer}."
    if not train.truncated:
        np.testing.assert_array_equal(infer.ids, train.ids[: train.answer_start])
        # Moving whitespace between pieces never adds, loses or reorders text.
        filled = f" Context: {context}\n Question: {question}\nAnswer: {answer}."
        text_ids = train.ids[(train.virtual_index == -1)]
        text_ids = text_ids[add_bos : len(text_ids) - add_eos]
        assert tok.decode(text_ids) == filled


def test_a_field_far_longer_than_the_context_never_reaches_the_tokenizer():
    seen = []

    class Counting(CharTokenizer):
        def encode(self, text):
            seen.append(len(text))
            return super().encode(text)

    huge = "x" * 5_000_000  # a 5 MB field for a 64-token context
    sentiment = template()
    assert (
        encode(sentiment, {"sentence": huge, "label": "pos"}, Counting(), max_seq_length=64) is None
    )
    assert max(seen, default=0) < 100  # dropped before its text was tokenised
    squad = parse_task_templates([SQUAD])["squad"]
    seen.clear()
    example = encode(
        squad, {"context": huge, "question": "q", "answer": "a"}, Counting(), max_seq_length=64
    )
    assert example is not None and example.truncated and len(example.ids) == 64
    assert max(seen) == 16 * 64  # the truncate field's head, cut before tokenising


def test_special_token_names_in_data_stay_text():
    from ptlearn.checkpoints import load_model

    tok = load_model("tiny").tokenizer
    name = tok.id_to_token(tok.eos_id)  # "<|endoftext|>"
    assert tok.encode(name) == [tok.eos_id]  # raw text (lm generate) may name it
    example = encode(template(), {"sentence": f"a {name} b", "label": "pos"}, tok, add_eos=True)
    ids = example.ids.tolist()
    assert ids[4:].count(tok.eos_id) == 1  # only the EOS ptlearn adds (0-3: virtual slots)
    assert tok.decode(ids[4:]).startswith(f" a {name} b")


def test_a_template_names_its_metric():
    assert template().metric == "accuracy"
    squad = template(metric="squad")
    assert squad.metric == "squad" and parse_task_templates([squad.to_dict()])["sentiment"] == squad
    with pytest.raises(TemplateError, match=r"metric='sqaud': use one of .*did you mean 'squad'"):
        template(metric="sqaud")
