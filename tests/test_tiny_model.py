"""The tiny model shipped as package data is what `checkpoints.tiny` writes, and loads by name."""

import json

import numpy as np

from ptlearn.checkpoints import hf, load_model, resolve_model, tiny_model_path
from ptlearn.checkpoints.tiny import write_tiny_model


def test_shipped_tiny_model_is_what_the_writer_writes(tmp_path):
    fresh = write_tiny_model(tmp_path / "tiny")
    shipped = tiny_model_path()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert json.loads((fresh / name).read_text()) == json.loads((shipped / name).read_text())
    new, old = (hf.read_safetensors(f / "model.safetensors") for f in (fresh, shipped))
    assert sorted(new) == sorted(old)
    for name in new:
        np.testing.assert_allclose(new[name], old[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_tiny_loads_by_name_with_its_tokenizer():
    assert resolve_model("tiny") == tiny_model_path()
    loaded = load_model("tiny")
    assert loaded.config.vocab_size == 320 and loaded.config.num_layers == 2
    ids = loaded.tokenizer.encode("profit rose sentiment: positive")
    assert loaded.tokenizer.decode(ids) == "profit rose sentiment: positive"
