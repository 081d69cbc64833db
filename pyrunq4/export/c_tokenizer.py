"""Will the runq4 binary's C tokenizer (src/tokenizer.c) take this tokenizer.json?

The exporter can warn at export time instead of the board finding out: the
C tokenizer implements exactly three pre-tokenizers (Llama 3's split regex,
GPT-2's byte-level regex, and SmolLM2's single-digit split before it) on a
byte-level BPE without normalizer, and refuses everything else. This mirrors
its acceptance rules in Python (tests/test_tokenizer_c.py checks that both
agree on the same variants); pyrunq4 itself uses the `tokenizers` library and
runs any tokenizer.

    from pyrunq4.export.c_tokenizer import c_tokenizer_problem
    problem = c_tokenizer_problem(json_text)   # None when the binary can use it
"""
import json

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(p, use_regex):
    return (isinstance(p, dict) and p.get("type") == "ByteLevel" and p.get("add_prefix_space", True) is False
            and p.get("use_regex", True) is use_regex)


def _pretokenizer_kind(pre):
    """'llama3', 'gpt2', 'gpt2-digits' or None."""
    if _byte_level(pre, True):
        return "gpt2"
    if not isinstance(pre, dict) or pre.get("type") != "Sequence":
        return None
    seq = pre.get("pretokenizers")
    if not isinstance(seq, list) or len(seq) != 2 or not isinstance(seq[0], dict):
        return None
    a, b = seq
    if a.get("type") == "Split" and _byte_level(b, False):
        pattern = a.get("pattern")
        if (isinstance(pattern, dict) and pattern.get("Regex") == LLAMA3_REGEX and a.get("behavior") == "Isolated"
                and a.get("invert", False) is False):
            return "llama3"
        return None
    if a.get("type") == "Digits" and a.get("individual_digits") is True and _byte_level(b, True):
        return "gpt2-digits"
    return None


def c_tokenizer_problem(tokenizer_json):
    """None if the C tokenizer supports this tokenizer.json (str or bytes),
    else a one-line reason. Malformed JSON is a reason too."""
    try:
        tok = json.loads(tokenizer_json)
    except (ValueError, UnicodeDecodeError) as e:
        return "tokenizer.json is not valid JSON (%s)" % e
    if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
        return "tokenizer.json has no model"
    model = tok["model"]
    if model.get("type") != "BPE":
        return "model type %r is not supported by the C tokenizer (BPE only)" % model.get("type")
    if model.get("dropout") is not None:
        return "BPE dropout is not supported by the C tokenizer"
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) not in (None, ""):  # "" adds nothing: the same as none
            return "BPE %s is not supported by the C tokenizer" % key
    if tok.get("normalizer") is not None:
        return "a normalizer is not supported by the C tokenizer"
    if _pretokenizer_kind(tok.get("pre_tokenizer")) is None:
        return ("this tokenizer's pre-tokenizer is not supported by the C tokenizer "
                "(Llama 3 and GPT-2/SmolLM2 byte-level only)")
    for t in tok.get("added_tokens") or []:
        if isinstance(t, dict) and any(t.get(k) for k in ("lstrip", "rstrip", "single_word")):
            return "added token %r uses lstrip/rstrip/single_word, not supported by the C tokenizer" % t.get("content")
    return None
