"""tools/self_calibration.py: the default text's slices, then the model's own text."""
import os

import pytest

from pyrunq4.export import methods


@pytest.fixture(scope="module")
def tool():
    from fixtures import load_checkout_module
    return load_checkout_module("self_calibration", os.path.join("tools", "self_calibration.py"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from fixtures import make_rq4
    return make_rq4(tmp_path_factory.mktemp("selfcal") / "m.rq4")


def test_default_text_slices(tool):
    text = "".join(chr(ord("a") + i % 26) for i in range(100_000))
    parts = tool.default_text_slices(text, n=5, width=100)
    assert [len(p) for p in parts] == [100] * 5
    assert parts[0] == text[:100] and parts[-1] == text[-100:]
    assert tool.default_text_slices("short", n=5, width=100) == ["short"]


def test_writes_default_slices_then_generated_text(tool, model, tmp_path):
    out, again, other = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    assert tool.main([model, str(out), "--tokens", "40", "--seq-len", "16", "--seed", "1", "--threads", "1"]) == 0
    assert tool.main([model, str(again), "--tokens", "40", "--seq-len", "16", "--seed", "1", "--threads", "1"]) == 0
    assert tool.main([model, str(other), "--tokens", "40", "--seq-len", "16", "--seed", "2", "--threads", "1"]) == 0
    text = out.read_text(encoding="utf-8")
    prefix = "\n\n".join(tool.default_text_slices(methods.default_calibration_text()))
    assert text.startswith(prefix + "\n\n")
    generated = text[len(prefix) + 2:].split("\n\n")
    assert len(generated) >= 2 and all(g.strip() for g in generated)  # 40 tokens, 16 at most per sequence
    assert again.read_text(encoding="utf-8") == text
    assert other.read_text(encoding="utf-8") != text


def test_bad_model_one_line_and_no_file(tool, tmp_path, capsys):
    junk = tmp_path / "junk.rq4"
    junk.write_bytes(os.urandom(4096))
    out = tmp_path / "out.txt"
    out.write_text("kept")
    assert tool.main([str(junk), str(out), "--tokens", "8"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err, err
    assert out.read_text() == "kept"
    assert not os.path.exists(str(out) + ".tmp")


def test_bad_counts_one_line(tool, model, tmp_path, capsys):
    out = tmp_path / "out.txt"
    assert tool.main([model, str(out), "--tokens", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tokens" in err, err
    assert not out.exists()


def test_unwritable_output_fails_before_generating(tool, model, tmp_path, capsys):
    out = tmp_path / "missing" / "out.txt"
    assert tool.main([model, str(out), "--tokens", "100000"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err, err
