#!/usr/bin/env python3
"""Generate src/tokenizer/unicode_tables.h: the code point classes the C tokenizer's
pre-tokenizers need, as compact sorted range tables.

    python3.13 tools/gen_unicode_tables.py --tokenizers > src/tokenizer/unicode_tables.h

Classes of the regex (one per code point, disjoint), from Python's unicodedata:
  1 = letter      \\p{L}: General_Category Lu Ll Lt Lm Lo
  2 = number      \\p{N}: General_Category Nd Nl No
  3 = whitespace  \\s: White_Space = U+0009..U+000D, U+0085 and categories Zs Zl Zp
  0 = anything else
plus one set for SmolLM2's Digits pre-tokenizer, which splits on Rust's
char::is_numeric (the same N categories, possibly of a newer Unicode).

The `tokenizers` library we must match exactly runs its regexes with
Oniguruma and its Digits with Rust's char::is_numeric, whose Unicode tables
are usually newer than the Python at hand (tokenizers 0.23: Unicode 16 and 17;
Python 3.13: Unicode 15.1). With --tokenizers the installed tokenizers is
probed for its \\p{L}, \\p{N}, \\s and numeric sets, and the code points it
classifies that unicodedata leaves unassigned are added (never removed: a
code point unicodedata classifies must agree, or the script stops). Run it
with the newest Python available; the header records what was used.
"""
import argparse
import sys
import unicodedata

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
NAMES = {LETTER: "letter", NUMBER: "number", SPACE: "whitespace"}


def classify(cp):
    if 0x09 <= cp <= 0x0D or cp == 0x85:
        return SPACE
    cat = unicodedata.category(chr(cp))
    if cat in ("Zs", "Zl", "Zp"):
        return SPACE
    if cat[0] == "L":
        return LETTER
    if cat[0] == "N":
        return NUMBER
    return OTHER


def all_code_points():
    return [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def probe_tokenizers():
    """{class: set of code points} of the installed tokenizers' regex engine,
    and the set its Digits pre-tokenizer splits on."""
    from tokenizers import Regex, pre_tokenizers
    cps = all_code_points()
    text = "".join(map(chr, cps))
    sets = {}
    for cls, pattern in ((LETTER, r"\p{L}"), (NUMBER, r"\p{N}"), (SPACE, r"\s")):
        split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
        remaining = {ord(ch) for piece, _ in split.pre_tokenize_str(text) for ch in piece}
        sets[cls] = set(cps) - remaining
    # Digits(individual_digits) isolates each numeric code point: interleave a
    # letter so that every numeric one comes out as a piece of its own
    digits = pre_tokenizers.Digits(individual_digits=True)
    pieces = digits.pre_tokenize_str("".join(chr(c) + "a" for c in cps))
    numeric = {ord(p) for p, _ in pieces if len(p) == 1 and p != "a"}
    import tokenizers
    return sets, numeric, tokenizers.__version__


def ranges(cls_of):
    """Sorted (first, last, class) of the non-zero classes, runs merged."""
    out = []
    start, cls = 0, cls_of(0)
    for cp in range(1, 0x110000):
        c = cls_of(cp)
        if c != cls:
            if cls:
                out.append((start, cp - 1, cls))
            start, cls = cp, c
    if cls:
        out.append((start, 0x10FFFF, cls))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizers", action="store_true",
                    help="add the newer code points of the installed tokenizers library")
    args = ap.parse_args()

    table = {cp: classify(cp) for cp in all_code_points() if classify(cp)}
    numeric_extra = set()
    note = "no tokenizers probe"
    if args.tokenizers:
        sets, numeric, version = probe_tokenizers()
        added = {LETTER: 0, NUMBER: 0, SPACE: 0}
        for cls, cps in sets.items():
            for cp in cps:
                have = table.get(cp, OTHER)
                if have == OTHER and unicodedata.category(chr(cp)) == "Cn":
                    table[cp] = cls
                    added[cls] += 1
                elif have != cls:
                    sys.exit("U+%04X: unicodedata says %s, tokenizers %s" % (cp, NAMES.get(have, "other"),
                                                                               NAMES[cls]))
        for cls in (LETTER, NUMBER, SPACE):   # and nothing unicodedata has is missing there
            mine = {cp for cp, c in table.items() if c == cls}
            if mine - sets[cls]:
                sys.exit("%d %s code points of unicodedata are not in tokenizers' class"
                         % (len(mine - sets[cls]), NAMES[cls]))
        numeric_extra = {cp for cp in numeric if table.get(cp) != NUMBER}
        if {cp for cp, c in table.items() if c == NUMBER} - numeric:
            sys.exit("some \\p{N} code points are not numeric for tokenizers' Digits")
        note = ("plus, from tokenizers %s's regex engine,\n * %d letters, %d numbers, %d spaces that this "
                "unicodedata leaves unassigned;\n * %d more code points are numeric only for its Digits"
                % (version, added[LETTER], added[NUMBER], added[SPACE], len(numeric_extra)))

    rs = ranges(lambda cp: table.get(cp, OTHER))
    extra = ranges(lambda cp: 1 if cp in numeric_extra else 0)
    w = sys.stdout.write
    w("/* Generated by tools/gen_unicode_tables.py%s from Python %s's unicodedata\n"
      " * (Unicode %s), %s.\n"
      " * Do not edit: regenerate.\n"
      " * rq4_uni_ranges: sorted {first, last << 2 | class}: class 1 letter (\\p{L}),\n"
      " * 2 number (\\p{N}), 3 whitespace (\\s, White_Space); code points not listed are\n"
      " * class 0. rq4_uni_numeric_extra: code points that are not \\p{N} but that\n"
      " * Digits(individual_digits) splits on (Rust's char::is_numeric), {first, last}. */\n"
      % (" --tokenizers" if args.tokenizers else "", sys.version.split()[0], unicodedata.unidata_version,
         note))
    w("#define RQ4_UNICODE_VERSION \"%s\"\n" % unicodedata.unidata_version)
    w("#define RQ4_UNI_NRANGES %d\n" % len(rs))
    w("static const struct { uint32_t first, last_cls; } rq4_uni_ranges[RQ4_UNI_NRANGES] = {\n")
    for i in range(0, len(rs), 4):
        w("    " + " ".join("{0x%05X, 0x%05X<<2|%d}," % r for r in rs[i:i + 4]) + "\n")
    w("};\n")
    w("#define RQ4_UNI_NUMERIC_EXTRA %d\n" % len(extra))
    w("static const struct { uint32_t first, last; } rq4_uni_numeric_extra[RQ4_UNI_NUMERIC_EXTRA + 1] = {\n")
    for a, b, _ in extra:
        w("    {0x%05X, 0x%05X},\n" % (a, b))
    w("    {0xFFFFFFFF, 0xFFFFFFFF} /* sentinel */\n};\n")


if __name__ == "__main__":
    main()
