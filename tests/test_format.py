"""The Python format constants (pyrunq4/export/format.py) against the C library's."""

import struct

import pytest


from pyrunq4.export import format as fmt


def test_header_layout_matches_format_md():
    assert fmt.HEADER_STRUCT.size == 256 and fmt.ENTRY_STRUCT.size == 96
    h = fmt.complete_header(dict(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                                 vocab_size=300, max_seq_len=128, tied_embeddings=1, bos_id=1,
                                 eos_ids=[2, 3], rope_scaling=1, rope_original_max_pos=16, norm_eps=1e-5,
                                 rope_theta=500000.0, rope_factor=8.0, rope_low_freq_factor=1.0,
                                 rope_high_freq_factor=4.0, group_size=128))
    b = fmt.pack_header(h, file_size=12345, n_entries=7)
    # spot-check offsets from the FORMAT.md table
    assert b[:8] == b"RUNQ4\0\0\0"
    assert struct.unpack_from("<IIQ", b, 8) == (1, 256, 12345)
    assert struct.unpack_from("<I", b, 24)[0] == 64 and struct.unpack_from("<I", b, 44)[0] == 32
    assert struct.unpack_from("<iI4i", b, 60) == (1, 2, 2, 3, -1, -1)
    assert struct.unpack_from("<II", b, 84) == (1, 16)
    assert struct.unpack_from("<f", b, 100)[0] == 8.0
    assert struct.unpack_from("<IIQ", b, 112) == (128, 7, 256)
    assert b[128:] == bytes(128)
    u = fmt.unpack_header(b)
    assert u["eos_ids"] == (2, 3, -1, -1) and u["n_eos"] == 2 and u["rope_theta"] == 500000.0
    assert u["ffn_rotation"] == 0
    # version 2: the ffn_rotation field at 128, the rest still reserved
    b2 = fmt.pack_header(dict(h, ffn_rotation=fmt.FFN_ROTATION_HADAMARD), file_size=12345, n_entries=7)
    assert struct.unpack_from("<I", b2, 8)[0] == 2 and struct.unpack_from("<I", b2, 128)[0] == 1
    assert b2[132:] == bytes(124) and fmt.unpack_header(b2)["ffn_rotation"] == 1
    # in version 1 those bytes were reserved: never read
    v1 = b2[:8] + struct.pack("<I", 1) + b2[12:]
    assert fmt.unpack_header(v1)["ffn_rotation"] == 0


def test_constants_match_c_library():
    try:
        from pyrunq4._runq4 import lib
    except Exception:
        pytest.skip("pyrunq4._runq4 is not built")
    assert fmt.FORMAT_VERSION == lib.RQ4_FORMAT_VERSION
    assert fmt.MIN_FORMAT_VERSION == lib.RQ4_MIN_FORMAT_VERSION
    assert fmt.FFN_ROTATION_HADAMARD == lib.RQ4_FFN_ROTATION_HADAMARD
    assert fmt.HEADER_SIZE == lib.RQ4_HEADER_SIZE
    assert fmt.ENTRY_SIZE == lib.RQ4_ENTRY_SIZE
    assert fmt.NAME_MAX == lib.RQ4_NAME_MAX
    assert fmt.ALIGN == lib.RQ4_ALIGN
    assert fmt.MAX_EOS == lib.RQ4_MAX_EOS
    assert fmt.MIN_GROUP == lib.RQ4_MIN_GROUP
    assert (fmt.TYPE_F32, fmt.TYPE_Q4S, fmt.TYPE_Q4A, fmt.TYPE_Q8, fmt.TYPE_BLOB) == (
        lib.RQ4_TYPE_F32, lib.RQ4_TYPE_Q4S, lib.RQ4_TYPE_Q4A, lib.RQ4_TYPE_Q8, lib.RQ4_TYPE_BLOB)
    assert (fmt.ROPE_NONE, fmt.ROPE_LLAMA3) == (lib.RQ4_ROPE_NONE, lib.RQ4_ROPE_LLAMA3)
