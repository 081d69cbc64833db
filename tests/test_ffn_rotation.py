"""The online rotation of w2's input (header ffn_rotation, --rotate-ffn): the
transform against its dense definition, the rotated model against the
original, the C transform (src/hadamard.c) against the numpy reference, and the
loader refusing rotation entries it cannot apply."""

import types

import numpy as np
import pytest

from fixtures import SENTENCES, make_hf_llama, make_rq4
from pyrunq4 import reference as R
from pyrunq4.errors import FormatError, VersionError
from pyrunq4.export import format as fmt
from pyrunq4.export import rotate
from pyrunq4.export.reader import read_rq4, read_table, weights_from_rq4
from pyrunq4.export.sources import open_source
from pyrunq4.model import Model


def _sylvester(p):
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("n,order", [(64, 1), (96, 12), (160, 20), (1536, 12), (2816, 44)])
def test_transform_is_the_dense_rotation_of_the_format(n, order):
    signs, factor = rotate.ffn_rotation(n, seed=n)
    assert factor.shape == (order, order) and signs.shape == (1, n)
    q = np.kron(factor, _sylvester(n // order)) * signs.reshape(-1)[None, :] / np.sqrt(n)
    assert np.abs(q @ q.T - np.eye(n)).max() < 1e-12
    x = np.random.default_rng(1).standard_normal((5, n))
    assert np.abs(R.rotate_ffn_input(x, signs, factor) - x @ q.T).max() < 1e-12


def test_hidden_dims_without_a_factor_are_refused():
    with pytest.raises(Exception, match="no Hadamard factor"):
        rotate.ffn_rotation(11008)


@pytest.mark.parametrize("hidden", [64, 96, 160])
def test_rotated_source_computes_the_same_float_logits(tmp_path, hidden):
    hf = make_hf_llama(tmp_path / "hf", dtype="fp32", hidden_dim=hidden)
    options = types.SimpleNamespace(group_size=32, embedding_bits=4, method="rtn", requantize=False)
    with open_source(hf.path, options) as src:
        w, cfg = {k: src.read(k) for k in src.tensor_names()}, dict(src.header)
        rs = rotate.FfnRotatedSource(src, seed=4)
        rw, rcfg = dict(rs.tensors()), rs.header
    assert rcfg["ffn_rotation"] == fmt.FFN_ROTATION_HADAMARD
    tokens = np.arange(3, 50)
    a, b = R.forward(w, cfg, tokens), R.forward(rw, rcfg, tokens)
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    # the w2 matrices did change: without the run-time rotation the logits break
    assert np.abs(R.forward(rw, cfg, tokens) - a).max() > 1e-2 * np.abs(a).max()


@pytest.mark.parametrize("hidden,order", [(64, None), (96, None), (160, None), (96, 24), (96, 96)])
def test_engine_applies_the_rotation_the_exporter_folded(tmp_path, monkeypatch, hidden, order):
    """Float exports with and without --rotate-ffn: the engine's float path gives
    the same logits, so src/hadamard.c computes Q where the file holds W2 Q^T.
    order: a larger factor than the exporter's (segments of 4 and of 1 value)."""
    if order:
        def larger(n, seed=0):
            signs, _ = default(n, seed)
            return signs, np.round(rotate.hadamard(order) * np.sqrt(order)).astype(np.float32)
        default = rotate.ffn_rotation
        monkeypatch.setattr(rotate, "ffn_rotation", larger)
    hf = make_hf_llama(tmp_path / "hf", dtype="fp32", hidden_dim=hidden)
    plain = make_rq4(tmp_path / "plain.rq4", hf.path, extra_args=("--float",))
    rotated = make_rq4(tmp_path / "rot.rq4", hf.path, extra_args=("--float", "--rotate-ffn"))
    assert read_table(plain)[0]["version"] == fmt.MIN_FORMAT_VERSION
    h = read_table(rotated)[0]
    assert h["version"] == fmt.FORMAT_VERSION and h["ffn_rotation"] == fmt.FFN_ROTATION_HADAMARD
    logits = []
    if order:
        assert read_rq4(rotated)[1][fmt.FFN_ROTATION_FACTOR].shape == (order, order)
    for path in (plain, rotated):
        with Model(path, n_threads=2, float_activations=True) as m:
            ids = m.tokenize(" ".join(SENTENCES[:3]))
            logits.append(m.logits(ids))
            assert m.config.ffn_rotation == h["ffn_rotation"] * (path == rotated)
    assert np.abs(logits[0] - logits[1]).max() < 1e-4 * np.abs(logits[0]).max()


@pytest.mark.parametrize("method", ["mse", "gptq"])
def test_quantized_rotated_export_matches_the_reference(tmp_path, method):
    """An int4 --rotate-ffn export: the engine against the numpy reference of the
    same file's weights (float activations: the same model, to rounding), and
    with int8 activations close to the float model."""
    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    extra = ("--rotate-ffn", "--method", method) + (("--calib-tokens", "256", "--calib-seq-len", "64")
                                                    if method == "gptq" else ())
    path = make_rq4(tmp_path / "m.rq4", hf.path, group_size=32, extra_args=extra)
    w, cfg = weights_from_rq4(path)
    assert cfg["ffn_rotation"] == fmt.FFN_ROTATION_HADAMARD
    with Model(path, n_threads=1, float_activations=True) as m:
        ids = m.tokenize(" ".join(SENTENCES[:3]))
        exact = m.logits(ids)
    ref = R.forward(w, cfg, ids)
    assert np.abs(exact - ref).max() < 1e-3 * np.abs(ref).max()
    with Model(path, n_threads=2) as m:
        got = m.logits(ids)
    assert np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref ** 2)) < 0.05


@pytest.fixture(scope="module")
def rotated_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("rot")
    hf = make_hf_llama(d / "hf", dtype="fp32")
    return make_rq4(d / "m.rq4", hf.path, extra_args=("--rotate-ffn",))


def _patched(tmp_path, src, edit):
    data = bytearray(open(src, "rb").read())
    h, entries = read_table(src)
    edit(data, {e["name"]: e for e in entries})
    out = tmp_path / "bad.rq4"
    out.write_bytes(bytes(data))
    return out


def _set_f32(data, e, index, value):
    at = e["offset"] + 4 * index
    data[at:at + 4] = np.float32(value).tobytes()


def _negate_f32(data, e, index):
    at = e["offset"] + 4 * index
    data[at + 3] ^= 0x80          # the sign bit of a little-endian float32


@pytest.mark.parametrize("edit,message", [
    (lambda d, e: _set_f32(d, e[fmt.FFN_ROTATION_SIGNS], 7, 0.5), "ffn_rotation.signs: value"),
    (lambda d, e: _negate_f32(d, e[fmt.FFN_ROTATION_FACTOR], 3), "not a Hadamard matrix|not orthogonal"),
    (lambda d, e: _set_f32(d, e[fmt.FFN_ROTATION_FACTOR], 0, float("nan")), "ffn_rotation.factor: value"),
    (lambda d, e: d.__setitem__(slice(128, 132), (2).to_bytes(4, "little")), "ffn_rotation"),
])
def test_bad_rotation_entries_are_refused(tmp_path, rotated_file, edit, message):
    bad = _patched(tmp_path, rotated_file, edit)
    with pytest.raises(FormatError, match=message) as e:
        Model(bad, n_threads=1)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=message):
        read_rq4(bad)


def test_missing_rotation_entry_is_refused(tmp_path, rotated_file):
    def rename(data, entries):
        table = fmt.HEADER_SIZE + fmt.ENTRY_SIZE * [e["name"] for e in read_table(rotated_file)[1]].index(
            fmt.FFN_ROTATION_FACTOR)
        data[table:table + 19] = b"ffn_rotation.facter"
    bad = _patched(tmp_path, rotated_file, rename)
    with pytest.raises(FormatError, match="ffn_rotation.factor is missing"):
        Model(bad, n_threads=1)
    with pytest.raises(ValueError, match="ffn_rotation.factor"):
        read_rq4(bad)


def test_newer_versions_are_refused(tmp_path, rotated_file):
    bad = _patched(tmp_path, rotated_file,
                   lambda d, e: d.__setitem__(slice(8, 12), (fmt.FORMAT_VERSION + 1).to_bytes(4, "little")))
    with pytest.raises(VersionError, match="version"):
        Model(bad, n_threads=1)
    with pytest.raises(ValueError, match="version"):
        read_rq4(bad)


def _sylvester_f32(order):
    return _sylvester(order).astype(np.float32)


@pytest.mark.parametrize("signs_len,factor,message", [
    (96, _sylvester_f32(4), "not a power of two"),              # 96 / 4 = 24 segments
    (96, np.round(rotate.hadamard(20) * np.sqrt(20)).astype(np.float32), "does not divide|power of two"),
    (96, np.ones((260, 260), np.float32), "outside"),           # above RQ4_MAX_ROTATION_FACTOR
    (64, np.round(rotate.hadamard(12) * np.sqrt(12)).astype(np.float32), "1x96"),   # signs too short
])
def test_rotation_shapes_are_checked(tmp_path, monkeypatch, signs_len, factor, message):
    from conftest import write_random_model
    monkeypatch.setattr(rotate, "ffn_rotation", lambda n, seed=0: (np.ones((1, signs_len), np.float32), factor))
    bad = write_random_model(tmp_path / "bad.rq4", dim=32, hidden_dim=96, n_layers=1, n_heads=1, n_kv_heads=1,
                             head_dim=32, tied=True, rope=False, ffn_rotation=True)
    with pytest.raises(FormatError, match=message) as e:
        Model(bad, n_threads=1)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=message):
        read_rq4(bad)
