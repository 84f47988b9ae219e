"""The lm command's error paths: one clear line naming the file, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from ptlearn import lm
from ptlearn.errors import PtlearnError


def test_missing_model_file(tmp_path):
    with pytest.raises(PtlearnError, match=r"nope\.gguf.*no such file"):
        lm.run("score", model=str(tmp_path / "nope.gguf"), text_file="x.txt")


def test_unrecognised_checkpoint(tmp_path):
    (tmp_path / "text.txt").write_text("hello")
    with pytest.raises(PtlearnError, match="not a recognised checkpoint"):
        lm.run("score", model=str(tmp_path), text_file=str(tmp_path / "text.txt"))


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 7)
    (tmp_path / "t.txt").write_text("hi")
    with pytest.raises(PtlearnError, match=r"broken\.gguf"):
        lm.run("score", model=str(bad), text_file=str(tmp_path / "t.txt"))


def test_commands_and_options_are_checked():
    with pytest.raises(PtlearnError, match="use one of tokenize, score, generate"):
        lm.run("summarise")
    with pytest.raises(PtlearnError, match="generate needs --prompt"):
        lm.run("generate", model="tiny")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ptlearn.lm", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_prints_one_json_line_or_one_error_line(tmp_path):
    (tmp_path / "t.txt").write_text("profit rose")
    ok = _cli("tokenize", "--model=tiny", f"--text_file={tmp_path / 't.txt'}")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["token_ids"]
    bad = _cli("score", f"--model={tmp_path / 'nope.gguf'}", f"--text_file={tmp_path / 't.txt'}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("error:") and "nope.gguf" in line
