"""The lm CLI's error paths: one clear line, exit code 2, no traceback."""

from ptlearn import lm


def test_missing_text_file(tmp_path, capsys):
    code = lm.main(["score", f"--model={tmp_path / 'nope.gguf'}", "--text_file=x.txt"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope.gguf" in err and "no such file" in err
    assert "Traceback" not in err


def test_unrecognised_checkpoint(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("hello")
    code = lm.main(["score", f"--model={tmp_path}", f"--text_file={tmp_path / 'text.txt'}"])
    err = capsys.readouterr().err
    assert code == 2 and "not a recognised checkpoint" in err


def test_corrupt_gguf(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 7)
    (tmp_path / "t.txt").write_text("hi")
    code = lm.main(["score", f"--model={bad}", f"--text_file={tmp_path / 't.txt'}"])
    err = capsys.readouterr().err
    assert code == 2 and "broken.gguf" in err
