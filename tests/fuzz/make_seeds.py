"""Seeds and test models for `make fuzz` / `make sanitize`.

    python tests/fuzz/make_seeds.py OUTDIR

writes, made fresh with the exporter's writer (nothing binary is committed):
  OUTDIR/micro.rq4          one layer, dim 32, tied, llama3 RoPE, q4s/q4a (15 KB)
  OUTDIR/micro_untied.rq4   one layer, untied q4s classifier, q8 embeddings
  OUTDIR/micro_q4t.rq4      the first with a q4t FFN (tables the loader checks)
  OUTDIR/micro_rotated.rq4  the first with the rotation of w2's input (entries the loader checks)
  OUTDIR/tokenizer.json     their byte-level BPE tokenizer (fuzz_tokenizer's real tokenizer)
  OUTDIR/seeds_loader/      the two models and a few damaged copies (tests/badfiles.py)
  OUTDIR/seeds_tokenizer/   0x00 + tokenizer.json blobs (ours and hostile variants),
                            0x01 + texts (ASCII, digits, added tokens, UTF-8, bad UTF-8)
"""

import json
import re
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
sys.path[:0] = [TESTS, ROOT]

import badfiles  # noqa: E402
from conftest import make_tokenizer_json  # noqa: E402

TEXTS = [
    "Hello, world!", "The cat sat on the mat. 12345 67", "<|im_start|>user\nhi<|im_end|>\n",
    "caf\u00e9 cr\u00e8me \U0001F600 \u4e2d\u6587 \u0645\u0631\u062d\u0628\u0627", "   \n\n\t x  y ",
    "don't we'll I'M 3.14159 1,000,000", "<|begin_of_text|><|im_end|><|im_end", "a" * 300,
]
BAD_TEXTS = [b"\xff\xfe", b"abc\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main(out):
    os.makedirs(os.path.join(out, "seeds_loader"), exist_ok=True)
    os.makedirs(os.path.join(out, "seeds_tokenizer"), exist_ok=True)
    micro = badfiles.make_micro_model(os.path.join(out, "micro.rq4"))
    untied = badfiles.make_micro_untied(os.path.join(out, "micro_untied.rq4"))
    q4t = badfiles.make_micro_q4t(os.path.join(out, "micro_q4t.rq4"))
    rotated = badfiles.make_micro_rotated(os.path.join(out, "micro_rotated.rq4"))
    for p in (micro, untied, q4t, rotated):
        write(os.path.join(out, "seeds_loader", os.path.basename(str(p))), open(p, "rb").read())
    data = open(micro, "rb").read()
    for name, b in badfiles.bad_files(data, flips=8):
        if name in ("header.n_layers=0", "entry2(layers.0.wq).size=0", "bitflip3", "padded+size") \
                or name.startswith(("gguf", "safetensors")):
            write(os.path.join(out, "seeds_loader", re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)), b)

    tok_json, _, _ = make_tokenizer_json()
    write(os.path.join(out, "tokenizer.json"), tok_json.encode())
    seeds = os.path.join(out, "seeds_tokenizer")
    write(os.path.join(seeds, "json_ours"), b"\0" + tok_json.encode())
    j = json.loads(tok_json)
    variants = {
        "json_no_merges": dict(j, model=dict(j["model"], merges=[])),
        "json_no_added": dict(j, added_tokens=[]),
        "json_null_pre": dict(j, pre_tokenizer=None),
        "json_big_ids": dict(j, model=dict(j["model"], vocab={k: v * 1000 for k, v in j["model"]["vocab"].items()})),
    }
    for name, v in variants.items():
        write(os.path.join(seeds, name), b"\0" + json.dumps(v).encode())
    write(os.path.join(seeds, "json_empty"), b"\0{}")
    for i, t in enumerate(TEXTS):
        write(os.path.join(seeds, "text%d" % i), b"\1" + t.encode())
    for i, t in enumerate(BAD_TEXTS):
        write(os.path.join(seeds, "badtext%d" % i), b"\1" + t)
    print("seeds in %s: %d loader, %d tokenizer" % (out, len(os.listdir(os.path.join(out, "seeds_loader"))),
                                                   len(os.listdir(seeds))))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_seeds.py OUTDIR")
    main(sys.argv[1])
