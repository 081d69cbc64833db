"""A corpus of hostile model files, made from one valid .rq4.

bad_files(data) yields (name, bytes) for: the empty file, truncations (every
1/64 of the file, every byte of the header and table, each also with the
header's file_size patched to match so the deeper checks run), every header
field set to 0 / -1 / huge (floats also NaN / Inf / tiny / negative), every
field of every table entry likewise (names too: empty, unterminated, a
duplicate), seeded random bit flips (in the header+table and anywhere), and
files of other kinds (GGUF and safetensors headers, JSON, zeros, a file
"still being written": its header promises more bytes than there are).

Used by tests/test_reliability_files.py (through pyrunq4 and the runq4
binary), by the sanitizer test (the binary built with ASan/UBSan) and by
tests/fuzz/make_seeds.py (the fuzzers' seed corpus). Nothing is committed:
the corpus is rebuilt from the tiny test model each time.
"""

import json
import random
import struct

HEADER_SIZE, ENTRY_SIZE = 256, 96

# (offset, struct code, name) of every header field, as docs/FORMAT.md
HEADER_FIELDS = [
    (8, "I", "version"), (12, "I", "header_size"), (16, "Q", "file_size"), (24, "I", "dim"),
    (28, "I", "hidden_dim"), (32, "I", "n_layers"), (36, "I", "n_heads"), (40, "I", "n_kv_heads"),
    (44, "I", "head_dim"), (48, "I", "vocab_size"), (52, "I", "max_seq_len"), (56, "I", "tied_embeddings"),
    (60, "i", "bos_id"), (64, "I", "n_eos"), (68, "i", "eos_ids[0]"), (72, "i", "eos_ids[1]"),
    (76, "i", "eos_ids[2]"), (80, "i", "eos_ids[3]"), (84, "I", "rope_scaling"),
    (88, "I", "rope_original_max_pos"), (92, "f", "norm_eps"), (96, "f", "rope_theta"),
    (100, "f", "rope_factor"), (104, "f", "rope_low_freq_factor"), (108, "f", "rope_high_freq_factor"),
    (112, "I", "group_size"), (116, "I", "n_entries"), (120, "Q", "table_offset"),
]
# (offset inside an entry, struct code, name)
ENTRY_FIELDS = [(64, "I", "type"), (68, "I", "group_size"), (72, "I", "rows"), (76, "I", "cols"),
                (80, "Q", "offset"), (88, "Q", "size")]

U32_VALUES = [0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x10000, 0x1000001, 33]
U64_VALUES = [0, 1, 2 ** 64 - 1, 2 ** 63, 2 ** 32, 2 ** 64 - 64, 2 ** 63 - 64]
F32_VALUES = [0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e38, 1e-45, -0.0]


def _put(b, off, code, value):
    if code == "f":
        struct.pack_into("<f", b, off, value)
    elif code == "i":
        struct.pack_into("<I", b, off, value & 0xFFFFFFFF)
    else:
        struct.pack_into("<" + code, b, off, value)


def _values(code):
    return F32_VALUES if code == "f" else U64_VALUES if code == "Q" else U32_VALUES


def _with_size(b):
    """b with its header's file_size set to its length (when it has a header)."""
    b = bytearray(b)
    if len(b) >= 24:
        struct.pack_into("<Q", b, 16, len(b))
    return bytes(b)


def table_end(data):
    n = struct.unpack_from("<I", data, 116)[0]
    return HEADER_SIZE + n * ENTRY_SIZE


def truncations(data):
    """Every 1/64 of the file and every byte of the header and table."""
    cuts = set(range(0, min(table_end(data) + 1, len(data))))
    cuts |= {len(data) * k // 64 for k in range(64)}
    cuts |= {len(data) - 1, len(data) - 64}
    return sorted(c for c in cuts if 0 <= c < len(data))


def header_mutations(data):
    for off, code, name in HEADER_FIELDS:
        for v in _values(code):
            b = bytearray(data)
            _put(b, off, code, v)
            if bytes(b) != data:
                yield "header.%s=%r" % (name, v), bytes(b)
    b = bytearray(data)
    b[0:4] = b"XUNQ"
    yield "header.magic", bytes(b)
    b = bytearray(data)
    b[128] = 1
    yield "header.reserved", bytes(b)


def entry_mutations(data):
    n = struct.unpack_from("<I", data, 116)[0]
    names = [data[HEADER_SIZE + i * ENTRY_SIZE:HEADER_SIZE + i * ENTRY_SIZE + 64].split(b"\0")[0] for i in range(n)]
    for i in range(n):
        base = HEADER_SIZE + i * ENTRY_SIZE
        tag = "entry%d(%s)" % (i, names[i].decode("ascii", "replace"))
        for off, code, name in ENTRY_FIELDS:
            old = struct.unpack_from("<" + code, data, base + off)[0]
            vals = set(_values(code)) | {old + 1, max(old - 1, 0), old + 64, max(old - 64, 0), old * 2}
            if name == "type":
                vals |= {0, 1, 2, 3, 4, 5}
            for v in sorted(vals):
                v &= (1 << (8 * struct.calcsize(code))) - 1
                if v == old:
                    continue
                b = bytearray(data)
                _put(b, base + off, code, v)
                yield "%s.%s=%d" % (tag, name, v), bytes(b)
        b = bytearray(data)
        b[base:base + 64] = b"A" * 64  # no terminating NUL
        yield tag + ".name=unterminated", bytes(b)
        b = bytearray(data)
        b[base:base + 64] = bytes(64)
        yield tag + ".name=empty", bytes(b)
        b = bytearray(data)
        b[base:base + 64] = b"\xff\x01\n" + bytes(61)
        yield tag + ".name=binary", bytes(b)
        other = names[(i + 1) % n]
        b = bytearray(data)
        b[base:base + 64] = other.ljust(64, b"\0")
        yield tag + ".name=duplicate", bytes(b)


def bit_flips(data, count, seed=8):
    """count files with 1..8 random bits flipped: half inside the header and
    table (where the loader looks first), half anywhere."""
    rnd = random.Random(seed)
    end = table_end(data)
    for k in range(count):
        b = bytearray(data)
        hi = end if k % 2 == 0 else len(data)
        for _ in range(rnd.randrange(1, 9)):
            j = rnd.randrange(hi)
            b[j] ^= 1 << rnd.randrange(8)
        yield "bitflip%d" % k, bytes(b)


def other_formats():
    gguf = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 1, 1))
    key = b"general.architecture"
    gguf += struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, 5) + b"llama"
    yield "gguf_tiny", bytes(gguf)  # shorter than our header
    yield "gguf", bytes(gguf) + bytes(512)
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    yield "safetensors", struct.pack("<Q", len(hdr)) + hdr + bytes(16)
    yield "json", json.dumps({"hello": "world"}).encode() * 20
    yield "zeros4k", bytes(4096)
    yield "magic_only", b"RUNQ4\0\0\0"
    yield "header_only", b"RUNQ4\0\0\0" + struct.pack("<IIQ", 1, 256, 256) + bytes(232)


def bad_files(data, flips=300):
    """(name, bytes) of the whole corpus. Every file differs from data."""
    yield "empty", b""
    for c in truncations(data):
        yield "trunc%d" % c, data[:c]
        if c >= 24:
            yield "trunc%d+size" % c, _with_size(data[:c])
    # still being written: the header says the final size, the bytes are not all there
    yield "being_written", data[:len(data) // 2]
    yield "being_written_zero_tail", data[:len(data) // 2] + bytes(len(data) - len(data) // 2 - 1)
    yield "padded", data + bytes(64)
    yield "padded+size", _with_size(data + bytes(64))
    yield from header_mutations(data)
    yield from entry_mutations(data)
    yield from bit_flips(data, flips)
    yield from other_formats()


def make_micro_model(path):
    """The smallest useful model (one layer, dim 32, context 64), written by the
    exporter's writer via tests/conftest.py: about 15 KB, most of it the tokenizer."""
    from conftest import write_random_model
    return write_random_model(path, dim=32, hidden_dim=32, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=32,
                              tied=True, rope=True, ffn_type="q4a", ffn_group=32, max_seq_len=64, seed=1)


def make_micro_q4t(path):
    """The micro model with a q4t FFN (a table per matrix, docs/FORMAT.md)."""
    from conftest import write_random_model
    return write_random_model(path, dim=32, hidden_dim=32, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=32,
                              tied=True, rope=True, ffn_type="q4t", ffn_group=32, max_seq_len=64, seed=3)


def make_micro_untied(path):
    """The same with an untied q4s classifier ("output"), q8 embeddings, GQA 2/1, no RoPE scaling."""
    from conftest import write_random_model
    return write_random_model(path, dim=32, hidden_dim=64, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=32,
                              tied=False, rope=False, emb_type="q8", max_seq_len=64, seed=2)


def make_micro_rotated(path):
    """The micro model with the rotation of w2's input (header ffn_rotation, a
    Hadamard factor of order 12 and 8 chunks: the entries the loader checks)."""
    from conftest import write_random_model
    return write_random_model(path, dim=32, hidden_dim=96, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=32,
                              tied=True, rope=True, ffn_type="q4a", ffn_group=32, max_seq_len=64, seed=4,
                              ffn_rotation=True)
