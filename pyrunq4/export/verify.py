"""What the exporter checks so that an export that succeeds is a file that works.

- input_identities(source): the files an export reads (a GGUF file, or every
  file at the top of a Hugging Face directory), so the writer never replaces
  one of them (hard links included: identities are device and inode);
- check_blobs(blobs, header): the tokenizer.json loads in the tokenizers
  library and encodes text; the chat template compiles and renders a short
  conversation within pyrunq4's limits (pyrunq4.chat_template);
- verify_file(path): the finished file, before the rename: pyrunq4 opens it,
  tokenizes a text and runs one token, and the logits are finite;
- binary_tokenizer_problem(blobs): why the runq4 binary's C tokenizer cannot
  use this tokenizer.json (None when it can), for a note at export time.
"""

import os

import numpy as np

from .c_tokenizer import c_tokenizer_problem
from ..errors import ExportError
from .writer import file_identity

SAMPLE_TEXT = "Hello, world! 123 caf\u00e9 \U0001F600\n  tabs\tand <b>tags</b>"
SAMPLE_CHAT = [{"role": "system", "content": "You are helpful."},
               {"role": "user", "content": "Hi!"},
               {"role": "assistant", "content": "Hello."},
               {"role": "user", "content": "How are you?"}]


def input_identities(source):
    """file_identity() of every file the export of `source` may read."""
    paths = [source]
    if os.path.isdir(source):
        try:
            paths = [os.path.join(source, n) for n in os.listdir(source)]
        except OSError:
            paths = []
    return {i for i in map(file_identity, paths) if i is not None}


def _tokenizer(tokenizer_json):
    """The tokenizers object pyrunq4 will make of this blob, or ExportError."""
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        tok.no_truncation()
        tok.no_padding()
        tok.encode(SAMPLE_TEXT, add_special_tokens=False)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:  # noqa: B902 (the tokenizers library may panic: a BaseException)
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"tokenizer.json does not work in the tokenizers library: {msg}") from None
    return tok


def check_blobs(blobs, header):
    """ExportError if the tokenizer or the chat template would fail at run time."""
    tok = None
    if "tokenizer.json" in blobs:
        tok = _tokenizer(blobs["tokenizer.json"])
    template = blobs.get("chat_template")
    if template is None:
        return
    from ..chat_template import ChatTemplate, ChatTemplateError
    try:
        text = template.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExportError(f"the chat template is not UTF-8 text: {e}") from None

    def token_text(i):
        return (tok.id_to_token(int(i)) if tok is not None and i is not None and i >= 0 else None) or ""
    eos = (header.get("eos_ids") or [-1])[0]
    try:
        ChatTemplate(text).render(SAMPLE_CHAT, True, bos_token=token_text(header.get("bos_id", -1)),
                                  eos_token=token_text(eos))
    except ChatTemplateError as e:
        raise ExportError(f"the chat template does not render a simple conversation: {e}") from None


def verify_file(path):
    """ExportError unless pyrunq4 opens the written file, tokenizes and runs a token."""
    from .. import Model, Runq4Error
    try:
        with Model(path, n_ctx=8, n_threads=1) as m:
            ids = m.tokenize(SAMPLE_TEXT, add_bos=True) if m.tokenizer is not None else [0]
            if not ids:
                raise ExportError("the written file's tokenizer gives no ids for a sample text")
            logits = m.logits(ids[:1])
            if not np.isfinite(logits).all():
                raise ExportError("the written file gives non-finite logits")
    except Runq4Error as e:
        raise ExportError(f"the written file does not work, so it was not kept: {e}") from None


def binary_tokenizer_problem(blobs):
    """None if the runq4 binary can tokenize with this file's tokenizer.json, else why not."""
    data = blobs.get("tokenizer.json")
    return None if data is None else c_tokenizer_problem(data)
