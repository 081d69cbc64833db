"""The command lines as one family: the runq4 binary and pyrunq4-generate take
the same long options with the same meanings and defaults (one argument list
run through both gives the same text, greedy or seeded), and every command answers
--version with the one version number (RQ4_VERSION in src/runq4.h)."""

import os
import subprocess
import sys

import pytest

from test_binary import binary, run  # noqa: F401  (binary is a fixture)

from pyrunq4._lib import MAX_THREADS

pytestmark = pytest.mark.slow  # runs the binary and the Python CLI as processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__import__("pyrunq4").__file__)))

# every long option of the shared table that changes a greedy run's inputs
LONG_OPTIONS = [
    ["--prompt", "The quick brown fox", "--max-new-tokens", "12", "--temperature", "0",
     "--top-p", "0.9", "--top-k", "40", "--seed", "7", "--threads", "2", "--ctx", "64",
     "--kv-type", "f16", "--max-memory", "1024"],
    ["--prompt", "hello", "--max-new-tokens", "-1", "--ctx", "24", "--threads", "1"],
    ["--prompt", "hi", "--max-new-tokens", "0"],
    # seeded sampling: one C sampler behind both, so the same ids
    ["--prompt", "The quick brown fox", "--max-new-tokens", "16", "--temperature", "0.9", "--seed", "11",
     "--top-k", "30", "--top-p", "0.95", "--min-p", "0.02", "--repeat-penalty", "1.3", "--repeat-last-n", "8"],
    ["--chat", "--prompt", "Count to five.", "--max-new-tokens", "12", "--repeat-penalty", "1.5",
     "--ctx", "96", "--temperature", "0.7", "--seed", "3"],
    ["--chat", "--system", "You are terse.", "--prompt", "What is 2+2?", "--max-new-tokens", "10",
     "--ctx", "96", "--kv-type", "f32"],
]


def python_generate(*args, stdin=None):
    env = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pyrunq4.generate", *args], capture_output=True,
                          input=stdin, env=env, timeout=300, cwd=PKG_PARENT)


@pytest.mark.parametrize("args", LONG_OPTIONS, ids=[" ".join(a[:4]) for a in LONG_OPTIONS])
def test_same_long_options_same_output(binary, tiny_tied, args):  # noqa: F811
    c = run(binary, tiny_tied, *args, input=b"")
    py = python_generate(tiny_tied, *args, stdin=b"")
    assert c.returncode == 0, c.stderr
    assert py.returncode == 0, py.stderr
    assert c.stdout == py.stdout, (c.stdout, py.stdout)


@pytest.mark.parametrize("mode", [[], ["--chat", "--system", "You are terse and helpful."]])
def test_prompt_cache_both_clis(binary, tiny_tied, tmp_path, mode):  # noqa: F811
    """--prompt-cache: the same output as without it in both tools, on the run
    that writes the file and on those that reuse it, and one tool reuses the
    cache the other wrote (the same C state file)."""
    args = [*mode, "--prompt", "The quick brown fox jumps over", "--max-new-tokens", "8",
            "--ctx", "96", "--threads", "1"]
    want = run(binary, tiny_tied, *args, input=b"").stdout
    cache = str(tmp_path / "prompt.cache")
    for tool in ("python", "c", "python", "c"):
        withc = [*args, "--prompt-cache", cache]
        r = python_generate(tiny_tied, *withc, stdin=b"") if tool == "python" else \
            run(binary, tiny_tied, *withc, input=b"")
        assert r.returncode == 0, r.stderr
        assert r.stdout == want, (tool, r.stdout, want)
        assert b"prompt cache" in r.stderr and b"not used" not in r.stderr
    assert b" 0 of " not in r.stderr  # the last run reused the file


@pytest.mark.parametrize("bad", [["--threads", str(MAX_THREADS + 1)], ["--top-p", "0"], ["--kv-type", "f8"],
                                 ["--max-new-tokens", "-2"], ["--max-memory", "0"], ["--min-p", "1.5"],
                                 ["--repeat-penalty", "0"], ["--repeat-last-n", "-1"]])
def test_same_long_options_same_refusals(binary, tiny_tied, bad):  # noqa: F811
    c = run(binary, tiny_tied, "--prompt", "hi", *bad)
    py = python_generate(tiny_tied, "--prompt", "hi", *bad)
    for r in (c, py):
        assert r.returncode != 0 and r.stdout == b""
        err = r.stderr.decode("utf-8", "replace")
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_version_everywhere(binary):  # noqa: F811
    from pyrunq4._runq4 import ffi, lib
    import pyrunq4

    version = ffi.string(lib.rq4_version()).decode()
    assert pyrunq4.__version__ == version
    r = run(binary, "--version")
    assert r.returncode == 0 and version in r.stdout.decode(), r
    env = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for mod in ("pyrunq4.generate", "pyrunq4.export", "pyrunq4.eval", "pyrunq4.bench", "pyrunq4.data"):
        r = subprocess.run([sys.executable, "-m", mod, "--version"], capture_output=True, text=True,
                           env=env, cwd=PKG_PARENT, timeout=120)
        assert r.returncode == 0 and r.stdout.strip().endswith(version), (mod, r.stdout, r.stderr)


def test_console_scripts(tiny_tied):
    """pip install gives the commands: runq4 (the binary shipped in the
    package) and pyrunq4-generate agree on one greedy run."""
    bindir = os.path.dirname(sys.executable)
    scripts = {n: os.path.join(bindir, n) for n in
               ("runq4", "pyrunq4-generate", "pyrunq4-export", "pyrunq4-eval", "pyrunq4-bench")}
    missing = [n for n, p in scripts.items() if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"pyrunq4 is not pip-installed in this interpreter's environment ({missing})")
    args = [tiny_tied, "--prompt", "The cat", "--max-new-tokens", "8", "--ctx", "32"]
    c = subprocess.run([scripts["runq4"], *args], capture_output=True, timeout=120)
    py = subprocess.run([scripts["pyrunq4-generate"], *args], capture_output=True, timeout=120)
    assert c.returncode == 0 and py.returncode == 0, (c.stderr, py.stderr)
    assert c.stdout == py.stdout
    r = subprocess.run([scripts["runq4"], tiny_tied, "--bogus"], capture_output=True, timeout=60)
    assert r.returncode != 0  # the binary's own exit status comes through
    for name in ("pyrunq4-export", "pyrunq4-eval", "pyrunq4-bench"):
        r = subprocess.run([scripts[name], "--help"], capture_output=True, timeout=60)
        assert r.returncode == 0 and b"usage" in r.stdout, (name, r.stderr)
