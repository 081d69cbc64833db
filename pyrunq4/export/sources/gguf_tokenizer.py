"""Rebuild a Hugging Face `tokenizers` tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.

A GGUF carries no tokenizer.json, only llama.cpp's description of one:

    tokenizer.ggml.model       "gpt2" = byte-level BPE (the only kind supported here)
    tokenizer.ggml.pre         the pre-tokenizer's name: how text is split before BPE
    tokenizer.ggml.tokens      id -> token, already in the byte-level alphabet ("Ġthe")
    tokenizer.ggml.merges      "a b" strings, best first
    tokenizer.ggml.token_type  1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    tokenizer.ggml.{bos,eos,eot,eom,unknown,padding}_token_id, add_bos_token
    tokenizer.chat_template    Jinja

The pre-tokenizer name says which split the merges were learned with; llama.cpp's llama-vocab.cpp
maps each name to regexes, and the model's own tokenizer.json says the same in `tokenizers` terms.
We rebuild exactly that tokenizer.json shape for the names below and refuse any other name (a wrong
split still produces token ids, only different ones from the model's own, so guessing is worse than
failing):

    llama-bpe (llama3, llama-v3, ...): Split(the Llama 3 regex, isolated) + ByteLevel(no regex),
                   BPE with ignore_merges (a whole word already in the vocab is one token): Llama 3.x
    smollm:        Digits(individual) + ByteLevel(GPT-2 regex): SmolLM/SmolLM2 (StarCoder layout);
                   llama.cpp: "\\p{N}" then the GPT-2 regex
    gpt-2:         ByteLevel(GPT-2 regex)

Control tokens (type 3) become added special tokens (matched whole in the text, `<|im_end|>`),
user-defined ones (type 4) added non-special tokens. The decoder is byte-level.

BOS: the tokenizer.json adds nothing by itself (no post-processor template); whether a BOS is
prepended is said by the .rq4 header's bos_id, which is the GGUF's bos id when add_bos_token is
true and -1 otherwise (SmolLM2: add_bos_token false, so its bos id 1 = <|im_start|> is not
prepended, as with the model's own tokenizer).
"""
import json
from dataclasses import dataclass, field

from ...errors import TokenizerError

# llama.cpp token types (llama-vocab.h / gguf TokenType)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# The Llama 3 split, as in Llama 3's tokenizer.json (llama.cpp spells the (?i:...) part out by hand
# because its regex engine lacks it; same meaning).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


# pre name -> (pre_tokenizer JSON, BPE ignore_merges); names as in llama.cpp's llama-vocab.cpp
_LLAMA3 = ({"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
    _byte_level(False)]}, True)
_SMOLLM = ({"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True}, _byte_level(True)]}, False)
_GPT2 = (_byte_level(True), False)

PRE_TOKENIZERS = {
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3,
    "smollm": _SMOLLM,
    "gpt-2": _GPT2,
}


@dataclass
class GGUFTokenizer:
    json: str                   # the tokenizers JSON (blob "tokenizer.json")
    chat_template: str = None   # Jinja (blob "chat_template"), None when the GGUF has none
    bos_id: int = -1            # id to prepend, -1 when the model adds no BOS
    eos_ids: list = field(default_factory=list)   # end-of-generation ids (eos, eot, eom), at most 4
    vocab_size: int = 0
    pre: str = ""


def _get(meta, key, default=None):
    return meta[key] if key in meta else default


def build_tokenizer(meta):
    """GGUFTokenizer from a dict of GGUF metadata (key -> Python value, arrays as lists)."""
    model = _get(meta, "tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("the GGUF has no tokenizer (tokenizer.ggml.model missing)")
    if model != "gpt2":
        raise TokenizerError("tokenizer.ggml.model %r is not supported: only byte-level BPE ('gpt2', as in "
                             "Llama 3 and SmolLM2) can be rebuilt exactly" % model)
    pre = _get(meta, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError("tokenizer.ggml.pre %r is not supported (known: %s); a guessed split would encode "
                             "differently from the model's own tokenizer" % (pre, ", ".join(sorted(PRE_TOKENIZERS))))
    pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]
    tokens = list(_get(meta, "tokenizer.ggml.tokens") or [])
    merges = list(_get(meta, "tokenizer.ggml.merges") or [])
    if not tokens or not merges:
        raise TokenizerError("the GGUF's tokenizer has no tokens or no merges")
    types = list(_get(meta, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise TokenizerError("tokenizer.ggml.token_type has %d entries for %d tokens" % (len(types), len(tokens)))

    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)      # a duplicate spelling keeps its first id, as llama.cpp's text_to_token
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": ty == TOKEN_CONTROL}
             for i, (t, ty) in enumerate(zip(tokens, types))
             if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED) and vocab[t] == i]
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    }
    add_bos = bool(_get(meta, "tokenizer.ggml.add_bos_token", False))
    bos = _get(meta, "tokenizer.ggml.bos_token_id")
    eos_ids = []
    for key in ("eos", "eot", "eom"):
        i = _get(meta, "tokenizer.ggml.%s_token_id" % key)
        if i is not None and 0 <= int(i) < len(tokens) and int(i) not in eos_ids:
            eos_ids.append(int(i))
    return GGUFTokenizer(
        json=json.dumps(tok, ensure_ascii=False),
        chat_template=_get(meta, "tokenizer.chat_template"),
        bos_id=int(bos) if (add_bos and bos is not None) else -1,
        eos_ids=eos_ids[:4], vocab_size=len(tokens), pre=pre)


def to_tokenizers(gt):
    """The rebuilt tokenizer as a tokenizers.Tokenizer (for tests and tools)."""
    from tokenizers import Tokenizer
    return Tokenizer.from_str(gt.json)
