/* The C tokenizer: byte-level BPE read from a Hugging Face tokenizer.json,
 * producing exactly the ids of the `tokenizers` library for the pre-tokenizers
 * it knows (Llama 3's regex; GPT-2's, optionally after SmolLM2's single-digit
 * split). Library code: no printing, no exit; every failure is returned.
 *
 * Pipeline of rq4_tokenizer_encode, the same as tokenizers':
 *   1. added tokens (<|begin_of_text|> ...) are matched literally, leftmost then
 *      longest; the text between them is handled segment by segment;
 *   2. the pre-tokenizer regex, implemented by hand over code points with the
 *      Unicode classes of src/tokenizer/unicode_tables.h, cuts a segment into pieces;
 *   3. each piece's bytes are merged by BPE, lowest merge rank first, leftmost
 *      on ties (with ignore_merges a piece that is a whole vocabulary entry is
 *      taken as it is).
 * The vocabulary is kept as raw bytes (the byte-level alphabet decoded), so
 * encoding never builds byte-level strings and decoding is a table lookup.
 *
 * Memory for Llama 3's 128k vocabulary and 280k merges: about 9 MB
 * (rq4_tokenizer_memory). The JSON itself is only read, never copied whole.
 */
#include "tokenizer.h"
#include "internal.h"
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode_tables.h"

#define MAX_TOKEN_BYTES 65536    /* longest token text accepted */

enum { CLS_OTHER = 0, CLS_LETTER = 1, CLS_NUMBER = 2, CLS_SPACE = 3 };

enum { FLAG_PRESENT = 1, FLAG_ADDED = 2, FLAG_SPECIAL = 4 };

typedef struct merge {
    int32_t a, b;   /* the pair of ids, left then right */
    int32_t id;     /* the id of their concatenation */
} merge;

typedef struct added_token {
    uint32_t off, len;  /* content bytes in the text arena */
    int32_t id;
} added_token;

struct rq4_tokenizer {
    int32_t n_ids;          /* 1 + largest id */
    uint8_t *text;          /* arena: every token's bytes */
    uint64_t text_len, text_cap;
    uint32_t *off;          /* (n_ids) offset of the id's bytes in text */
    uint32_t *len;          /* (n_ids) their length */
    uint8_t *flags;         /* (n_ids) FLAG_* */
    int32_t *vhash;         /* (vhash_cap) open addressing: id or -1; keys are
                               the raw bytes of encodable vocabulary entries */
    uint32_t vhash_cap;
    merge *merges;          /* (n_merges) in rank order */
    int32_t n_merges;
    int32_t *mhash;         /* (mhash_cap) index into merges or -1 */
    uint32_t mhash_cap;
    int32_t byte_id[256];   /* id of each single byte, -1 if none */
    added_token *added;     /* (n_added) sorted by content bytes */
    int32_t n_added;
    uint8_t added_first[256];/* 1 if some added token starts with the byte */
    int pretok;             /* an rq4_pretok */
    int ignore_merges;
    uint64_t memory;        /* bytes allocated */
};

/* ------------------------------------------------------------------------ */
/* UTF-8 and Unicode classes                                                */



/* Rust's char::is_numeric, which SmolLM2's Digits pre-tokenizer splits on:
 * \p{N} plus a few code points of a newer Unicode than the regex engine's. */
static int is_numeric_extra(uint32_t c) {
    for (int i = 0; i < RQ4_UNI_NUMERIC_EXTRA; i++)
        if (c >= rq4_uni_numeric_extra[i].first && c <= rq4_uni_numeric_extra[i].last) return 1;
    return 0;
}

static int unicode_class(uint32_t c) {
    int lo = 0, hi = RQ4_UNI_NRANGES - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < rq4_uni_ranges[mid].first) hi = mid - 1;
        else if (c > (rq4_uni_ranges[mid].last_cls >> 2)) lo = mid + 1;
        else return (int)(rq4_uni_ranges[mid].last_cls & 3);
    }
    return CLS_OTHER;
}

/* ------------------------------------------------------------------------ */
/* The byte-level alphabet (GPT-2's bytes_to_unicode): printable Latin-1
 * bytes stand for themselves, the others for U+0100 + n in byte order.      */

static uint32_t byte_to_char(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    int n = 0;
    for (int i = 0; i < b; i++)
        if (!((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF))) n++;
    return 0x100 + (uint32_t)n;
}

/* Turns a byte-level string (UTF-8, s[0..n)) into the bytes it stands for, in
 * place (the result is never longer). Returns 1 when every character is of
 * the alphabet, 0 when some is not (then s is left unchanged). */
static int decode_byte_level(uint8_t *s, size_t n, size_t *out_len, const int16_t *cmap) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint32_t c;
        int k = rq4_utf8_decode(s + i, n - i, &c);
        if (k == 0 || c >= 0x200 || cmap[c] < 0) return 0;
        i += (size_t)k;
        o++;
    }
    i = 0;
    o = 0;
    while (i < n) {
        uint32_t c;
        int k = rq4_utf8_decode(s + i, n - i, &c);
        s[o++] = (uint8_t)cmap[c];
        i += (size_t)k;
    }
    *out_len = o;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Hashing                                                                  */

static uint32_t hash_bytes(const uint8_t *s, size_t n) {
    uint32_t h = 2166136261u;   /* FNV-1a, then murmur3's finalizer to spread it */
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 16777619u; }
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    return h;
}

/* A vocab hash slot holds id | tag << 24 (ids are < 2^24): 7 more bits of the
 * hash, so that most probes of other entries are rejected without reading
 * their bytes. -1 is empty. */
#define SLOT_ID(v) ((v) & 0xFFFFFF)
#define SLOT_TAG(h) ((int32_t)(((h) >> 25) << 24))

static uint32_t hash_pair(int32_t a, int32_t b) {
    uint64_t x = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return (uint32_t)x;
}

static uint32_t table_size(uint64_t n) {
    uint32_t cap = 16;
    while (cap < n + n / 2 + 1) cap <<= 1;   /* load factor <= 2/3 */
    return cap;
}

/* id of the encodable vocabulary entry with these bytes, or -1 */
static int32_t vocab_lookup(const rq4_tokenizer *t, const uint8_t *s, size_t n) {
    uint32_t full = hash_bytes(s, n), mask = t->vhash_cap - 1, h = full & mask;
    int32_t tag = SLOT_TAG(full);
    for (;;) {
        int32_t v = t->vhash[h];
        if (v < 0) return -1;
        int32_t id = SLOT_ID(v);
        if ((v & ~0xFFFFFF) == tag && t->len[id] == n && memcmp(t->text + t->off[id], s, n) == 0) return id;
        h = (h + 1) & mask;
    }
}

/* index of the merge of (a, b) or -1 */
static int32_t merge_lookup(const rq4_tokenizer *t, int32_t a, int32_t b) {
    uint32_t mask = t->mhash_cap - 1, h = hash_pair(a, b) & mask;
    for (;;) {
        int32_t k = t->mhash[h];
        if (k < 0) return -1;
        if (t->merges[k].a == a && t->merges[k].b == b) return k;
        h = (h + 1) & mask;
    }
}

/* ------------------------------------------------------------------------ */
/* Recognising the pre-tokenizer                                            */

static const char LLAMA3_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ByteLevel with add_prefix_space false; use_regex as asked (-1: any). */
static int is_byte_level(const jv *v, int use_regex) {
    if (!rq4_jv_is_str(rq4_jv_get(v, "type"), "ByteLevel")) return 0;
    if (rq4_jv_bool(v, "add_prefix_space", 1) != 0) return 0;
    int r = rq4_jv_bool(v, "use_regex", 1);
    return r >= 0 && (use_regex < 0 || r == use_regex);
}

/* Returns an rq4_pretok, or 0 for anything else. */
static int classify_pretok(const jv *pre) {
    if (!pre || pre->type != JV_OBJ) return 0;
    if (is_byte_level(pre, 1)) return RQ4_PRETOK_GPT2;
    if (!rq4_jv_is_str(rq4_jv_get(pre, "type"), "Sequence")) return 0;
    const jv *seq = rq4_jv_get(pre, "pretokenizers");
    if (!seq || seq->type != JV_ARR || seq->n != 2) return 0;
    const jv *a = &seq->kids[0], *b = &seq->kids[1];
    if (rq4_jv_is_str(rq4_jv_get(a, "type"), "Split") && is_byte_level(b, 0)) {
        const jv *pat = rq4_jv_get(a, "pattern");
        if (!rq4_jv_is_str(rq4_jv_get(pat, "Regex"), LLAMA3_REGEX)) return 0;
        if (!rq4_jv_is_str(rq4_jv_get(a, "behavior"), "Isolated")) return 0;
        if (rq4_jv_bool(a, "invert", 0) != 0) return 0;
        return RQ4_PRETOK_LLAMA3;
    }
    if (rq4_jv_is_str(rq4_jv_get(a, "type"), "Digits") && rq4_jv_bool(a, "individual_digits", 0) == 1 && is_byte_level(b, 1))
        return RQ4_PRETOK_GPT2_DIGITS;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Building                                                                  */

typedef struct builder {
    rq4_tokenizer *t;
    int16_t cmap[0x200];    /* byte-level character -> byte, -1 if not one */
    buf s;                  /* scratch string */
    int nomem;
    rq4_error *err;
} builder;

/* Grows the per-id arrays to hold `id`. */
static int ensure_id(rq4_tokenizer *t, int32_t id) {
    if (id < t->n_ids) return 1;
    int32_t n = t->n_ids ? t->n_ids : 1024;
    while (n <= id) n = n > MAX_TOKEN_ID / 2 ? MAX_TOKEN_ID : n * 2;
    uint32_t *off = realloc(t->off, sizeof(uint32_t) * (size_t)n);
    if (!off) return 0;
    t->off = off;
    uint32_t *len = realloc(t->len, sizeof(uint32_t) * (size_t)n);
    if (!len) return 0;
    t->len = len;
    uint8_t *flags = realloc(t->flags, (size_t)n);
    if (!flags) return 0;
    t->flags = flags;
    memset(t->flags + t->n_ids, 0, (size_t)(n - t->n_ids));
    memset(t->len + t->n_ids, 0, sizeof(uint32_t) * (size_t)(n - t->n_ids));
    memset(t->off + t->n_ids, 0, sizeof(uint32_t) * (size_t)(n - t->n_ids));
    t->n_ids = n;   /* trimmed to the real maximum at the end */
    return 1;
}

static int arena_add(rq4_tokenizer *t, const uint8_t *s, size_t n, uint32_t *off) {
    if (t->text_len + n > UINT32_MAX) return 0;
    if (t->text_len + n > t->text_cap) {
        uint64_t cap = t->text_cap ? t->text_cap : 65536;
        while (cap < t->text_len + n) cap *= 2;
        uint8_t *d = realloc(t->text, (size_t)cap);
        if (!d) return 0;
        t->text = d;
        t->text_cap = cap;
    }
    memcpy(t->text + t->text_len, s, n);
    *off = (uint32_t)t->text_len;
    t->text_len += n;
    return 1;
}

static rq4_status bad(builder *b, const char *what) {
    if (b->nomem) return rq4_fail(b->err, RQ4_ERR_NOMEM, "tokenizer.json: out of memory reading %s", what);
    return rq4_fail(b->err, RQ4_ERR_FORMAT, "tokenizer.json: malformed %s", what);
}

/* model.vocab: {"piece": id, ...} */
static rq4_status read_vocab(builder *b, span sp, int32_t *max_id) {
    rq4_tokenizer *t = b->t;
    jcur j = {sp.start, sp.end, 0};
    if (!rq4_json_eat(&j, '{')) return bad(b, "model.vocab (not an object)");
    if (rq4_json_eat(&j, '}')) return RQ4_OK;
    for (;;) {
        int32_t id;
        if (!rq4_json_string(&j, &b->s, &b->nomem) || !rq4_json_eat(&j, ':') || !rq4_json_id(&j, &id)) return bad(b, "model.vocab");
        if (b->s.len == 0 || b->s.len > MAX_TOKEN_BYTES) return rq4_fail(b->err, RQ4_ERR_FORMAT, "tokenizer.json: vocab entry %d has length %zu", id, b->s.len);
        if (!ensure_id(t, id)) { b->nomem = 1; return bad(b, "model.vocab"); }
        size_t n;
        int encodable = decode_byte_level(b->s.data, b->s.len, &n, b->cmap);
        if (!encodable) n = b->s.len;   /* not byte-level: decodes to its UTF-8, never produced by encode */
        uint32_t off;
        if (!arena_add(t, b->s.data, n, &off)) { b->nomem = 1; return bad(b, "model.vocab"); }
        t->off[id] = off;
        t->len[id] = (uint32_t)n;
        t->flags[id] = FLAG_PRESENT | (encodable ? 0 : 0x80);   /* 0x80: not in the hash */
        if (id > *max_id) *max_id = id;
        if (rq4_json_eat(&j, ',')) continue;
        if (rq4_json_eat(&j, '}')) break;
        return bad(b, "model.vocab");
    }
    return RQ4_OK;
}

static rq4_status build_vocab_hash(builder *b, int32_t max_id) {
    rq4_tokenizer *t = b->t;
    uint64_t count = 0;
    for (int32_t id = 0; id <= max_id; id++)
        if ((t->flags[id] & (FLAG_PRESENT | 0x80)) == FLAG_PRESENT) count++;
    t->vhash_cap = table_size(count);
    t->vhash = malloc(sizeof(int32_t) * t->vhash_cap);
    if (!t->vhash) return rq4_fail(b->err, RQ4_ERR_NOMEM, "tokenizer: out of memory");
    memset(t->vhash, 0xFF, sizeof(int32_t) * t->vhash_cap);
    uint32_t mask = t->vhash_cap - 1;
    for (int32_t id = 0; id <= max_id; id++) {
        if ((t->flags[id] & (FLAG_PRESENT | 0x80)) != FLAG_PRESENT) continue;
        const uint8_t *s = t->text + t->off[id];
        uint32_t full = hash_bytes(s, t->len[id]), h = full & mask;
        for (;;) {
            int32_t v = t->vhash[h];
            if (v < 0) { t->vhash[h] = id | SLOT_TAG(full); break; }
            /* two ids with the same piece: tokenizers keeps the later one in
               the JSON; we keep the larger id (pieces are unique in real files) */
            int32_t o = SLOT_ID(v);
            if (t->len[o] == t->len[id] && memcmp(t->text + t->off[o], s, t->len[id]) == 0) {
                t->vhash[h] = id | SLOT_TAG(full);
                break;
            }
            h = (h + 1) & mask;
        }
    }
    for (int c = 0; c < 256; c++) {
        uint8_t byte = (uint8_t)c;
        t->byte_id[c] = vocab_lookup(t, &byte, 1);
    }
    return RQ4_OK;
}

static rq4_status add_merge(builder *b, size_t alen, size_t bstart, size_t blen, int32_t *count, size_t *cap) {
    rq4_tokenizer *t = b->t;
    uint8_t cat[2 * 4 * 1024];
    int32_t ia = -1, ib = -1, id = -1;
    size_t n1, n2;
    if (alen + blen > sizeof cat) return rq4_fail(b->err, RQ4_ERR_FORMAT, "tokenizer.json: merge %d too long", *count);
    memcpy(cat, b->s.data, alen);
    memcpy(cat + alen, b->s.data + bstart, blen);
    if (decode_byte_level(cat, alen, &n1, b->cmap) && decode_byte_level(cat + alen, blen, &n2, b->cmap)) {
        ia = vocab_lookup(t, cat, n1);
        ib = vocab_lookup(t, cat + alen, n2);
        memmove(cat + n1, cat + alen, n2);
        id = vocab_lookup(t, cat, n1 + n2);
        if (ia < 0 || ib < 0 || id < 0)
            return rq4_fail(b->err, RQ4_ERR_FORMAT, "tokenizer.json: merge %d uses a token missing from the vocab", *count);
    } /* else a side is not a byte-level token: the merge can never apply, but
         it keeps its rank (a placeholder pair of -1s that nothing matches) */
    if ((size_t)*count >= *cap) {
        size_t nc = *cap ? *cap * 2 : 4096;
        merge *m = realloc(t->merges, sizeof(merge) * nc);
        if (!m) { b->nomem = 1; return bad(b, "model.merges"); }
        t->merges = m;
        *cap = nc;
    }
    t->merges[*count].a = ia;
    t->merges[*count].b = ib;
    t->merges[*count].id = id;
    (*count)++;
    return RQ4_OK;
}

/* model.merges: ["a b", ...] or [["a", "b"], ...] */
static rq4_status read_merges(builder *b, span sp) {
    rq4_tokenizer *t = b->t;
    jcur j = {sp.start, sp.end, 0};
    int32_t count = 0;
    size_t cap = 0;
    buf second = {0};
    rq4_status st = RQ4_OK;
    if (!rq4_json_eat(&j, '[')) return bad(b, "model.merges (not an array)");
    if (!rq4_json_eat(&j, ']')) {
        for (;;) {
            if (count >= MAX_TOKEN_ID * 4) { st = bad(b, "model.merges (too many)"); break; }
            if (rq4_json_peek(&j) == '"') {
                if (!rq4_json_string(&j, &b->s, &b->nomem)) { st = bad(b, "model.merges"); break; }
                uint8_t *sp1 = memchr(b->s.data, ' ', b->s.len);
                if (!sp1) { st = rq4_fail(b->err, RQ4_ERR_FORMAT, "tokenizer.json: merge %d has no space", count); break; }
                size_t alen = (size_t)(sp1 - b->s.data);
                st = add_merge(b, alen, alen + 1, b->s.len - alen - 1, &count, &cap);
            } else {
                if (!rq4_json_eat(&j, '[') || !rq4_json_string(&j, &b->s, &b->nomem) || !rq4_json_eat(&j, ',') ||
                    !rq4_json_string(&j, &second, &b->nomem) || !rq4_json_eat(&j, ']')) {
                    st = bad(b, "model.merges");
                    break;
                }
                size_t alen = b->s.len;
                if (!rq4_json_reserve(&b->s, second.len)) { b->nomem = 1; st = bad(b, "model.merges"); break; }
                memcpy(b->s.data + alen, second.data, second.len);
                b->s.len += second.len;
                st = add_merge(b, alen, alen, second.len, &count, &cap);
            }
            if (st != RQ4_OK) break;
            if (rq4_json_eat(&j, ',')) continue;
            if (rq4_json_eat(&j, ']')) break;
            st = bad(b, "model.merges");
            break;
        }
    }
    free(second.data);
    if (st != RQ4_OK) return st;
    t->n_merges = count;
    if (count > 0 && cap > (size_t)count) {   /* trim */
        merge *m = realloc(t->merges, sizeof(merge) * (size_t)count);
        if (m) t->merges = m;
    }
    t->mhash_cap = table_size((uint64_t)count);
    t->mhash = malloc(sizeof(int32_t) * t->mhash_cap);
    if (!t->mhash) return rq4_fail(b->err, RQ4_ERR_NOMEM, "tokenizer: out of memory");
    memset(t->mhash, 0xFF, sizeof(int32_t) * t->mhash_cap);
    uint32_t mask = t->mhash_cap - 1;
    for (int32_t k = 0; k < count; k++) {
        uint32_t h = hash_pair(t->merges[k].a, t->merges[k].b) & mask;
        for (;;) {
            int32_t o = t->mhash[h];
            if (o < 0 || (t->merges[o].a == t->merges[k].a && t->merges[o].b == t->merges[k].b)) {
                t->mhash[h] = k;   /* a repeated pair: the later rank wins, as in tokenizers */
                break;
            }
            h = (h + 1) & mask;
        }
    }
    return RQ4_OK;
}

static int cmp_added(const void *pa, const void *pb, void *arena) {
    const added_token *a = pa, *b = pb;
    const uint8_t *text = arena;
    uint32_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(text + a->off, text + b->off, n);
    if (c) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* qsort without qsort_r (portable): insertion into a sorted array; added
 * tokens are few (hundreds). */
static void sort_added(rq4_tokenizer *t) {
    for (int32_t i = 1; i < t->n_added; i++) {
        added_token x = t->added[i];
        int32_t k = i;
        while (k > 0 && cmp_added(&t->added[k - 1], &x, t->text) > 0) {
            t->added[k] = t->added[k - 1];
            k--;
        }
        t->added[k] = x;
    }
}

/* added_tokens: [{"id": n, "content": "...", "special": b, "lstrip": b, ...}] */
static rq4_status read_added(builder *b, span sp, int32_t *max_id) {
    rq4_tokenizer *t = b->t;
    jcur j = {sp.start, sp.end, 0};
    rq4_status st = RQ4_OK;
    buf tmp = {0};
    if (!rq4_json_eat(&j, '[')) return bad(b, "added_tokens (not an array)");
    if (rq4_json_eat(&j, ']')) return RQ4_OK;
    for (;;) {
        jv v;
        int budget = 64;
        const jv *id, *content;
        if (!rq4_jv_parse(&j, &v, &budget, &tmp, &b->nomem)) { rq4_jv_free(&v); st = bad(b, "added_tokens"); break; }
        id = rq4_jv_get(&v, "id");
        content = rq4_jv_get(&v, "content");
        if (v.type != JV_OBJ || !id || id->type != JV_NUM || !(id->num >= 0 && id->num < MAX_TOKEN_ID) ||
            id->num != (double)(int32_t)id->num || !content || content->type != JV_STR || content->slen == 0 ||
            content->slen > MAX_TOKEN_BYTES) {
            rq4_jv_free(&v);
            st = bad(b, "added_tokens entry");
            break;
        }
        if (rq4_jv_bool(&v, "lstrip", 0) != 0 || rq4_jv_bool(&v, "rstrip", 0) != 0 || rq4_jv_bool(&v, "single_word", 0) != 0) {
            st = rq4_fail(b->err, RQ4_ERR_UNSUPPORTED,
                      "tokenizer.json: added token '%.64s' uses lstrip/rstrip/single_word, not supported by the C tokenizer",
                      content->str);
            rq4_jv_free(&v);
            break;
        }
        int32_t tid = (int32_t)id->num;
        int special = rq4_jv_bool(&v, "special", 0) == 1;
        uint32_t off;
        if (!ensure_id(t, tid) || !arena_add(t, (const uint8_t *)content->str, content->slen, &off)) {
            rq4_jv_free(&v);
            b->nomem = 1;
            st = bad(b, "added_tokens");
            break;
        }
        rq4_jv_free(&v);
        if (t->flags[tid] & FLAG_ADDED) {   /* the same id twice: keep the first */
        } else {
            added_token *a = realloc(t->added, sizeof(added_token) * (size_t)(t->n_added + 1));
            if (!a) { b->nomem = 1; st = bad(b, "added_tokens"); break; }
            t->added = a;
            t->added[t->n_added].off = off;
            t->added[t->n_added].len = t->len[tid] = (uint32_t)(t->text_len - off);
            t->added[t->n_added].id = tid;
            t->n_added++;
            t->off[tid] = off;
            /* an added token is not looked up by encode's vocab hash, but an id
               also in model.vocab keeps its hash entry (set before: flags 0x80 clear) */
            t->flags[tid] |= FLAG_PRESENT | FLAG_ADDED | (special ? FLAG_SPECIAL : 0);
            if (tid > *max_id) *max_id = tid;
        }
        if (rq4_json_eat(&j, ',')) continue;
        if (rq4_json_eat(&j, ']')) break;
        st = bad(b, "added_tokens");
        break;
    }
    free(tmp.data);
    return st;
}

/* Scans an object's members, recording the spans of the wanted keys. */
static int scan_object(const uint8_t *start, const uint8_t *end, const char *const *keys, span *spans, int nkeys,
                       buf *tmp, int *nomem) {
    jcur j = {start, end, 0};
    if (!rq4_json_eat(&j, '{')) return 0;
    if (rq4_json_eat(&j, '}')) return 1;
    for (;;) {
        span s;
        if (!rq4_json_string(&j, tmp, nomem) || !rq4_json_eat(&j, ':') || !rq4_json_span(&j, &s)) return 0;
        for (int k = 0; k < nkeys; k++)
            if (tmp->len == strlen(keys[k]) && memcmp(tmp->data, keys[k], tmp->len) == 0) spans[k] = s;
        if (rq4_json_eat(&j, ',')) continue;
        if (rq4_json_eat(&j, '}')) return 1;
        return 0;
    }
}

/* Parses a small value at span s into a DOM (NULL span: JV_NULL). */
static int parse_small(builder *b, span s, jv *v) {
    memset(v, 0, sizeof *v);
    if (!s.start) return 1;
    jcur j = {s.start, s.end, 0};
    int budget = DOM_MAX_NODES;
    return rq4_jv_parse(&j, v, &budget, &b->s, &b->nomem);
}

static rq4_status build(builder *b, const uint8_t *json, size_t size) {
    rq4_tokenizer *t = b->t;
    static const char *const top_keys[] = {"model", "added_tokens", "normalizer", "pre_tokenizer"};
    static const char *const model_keys[] = {"type", "vocab", "merges", "ignore_merges", "dropout",
                                              "continuing_subword_prefix", "end_of_word_suffix"};
    span top[4] = {{0}}, model[7] = {{0}};
    rq4_status st;
    if (!scan_object(json, json + size, top_keys, top, 4, &b->s, &b->nomem)) return bad(b, "JSON");
    {   /* nothing but whitespace after the top object */
        jcur j = {json, json + size, 0};
        if (!rq4_json_skip(&j) || rq4_json_peek(&j) != -1) return bad(b, "JSON (trailing bytes)");
    }
    if (!top[0].start || !scan_object(top[0].start, top[0].end, model_keys, model, 7, &b->s, &b->nomem))
        return bad(b, "model");

    /* the configuration around the BPE model: what we can do exactly */
    jv mtype, ign, drop, pfx, sfx, norm, pre;
    int ok = parse_small(b, model[0], &mtype) & parse_small(b, model[3], &ign) & parse_small(b, model[4], &drop) &
             parse_small(b, model[5], &pfx) & parse_small(b, model[6], &sfx) & parse_small(b, top[2], &norm) &
             parse_small(b, top[3], &pre);
    st = RQ4_OK;
    if (!ok) st = bad(b, "model settings");
    else if (!rq4_jv_is_str(&mtype, "BPE"))
        st = rq4_fail(b->err, RQ4_ERR_UNSUPPORTED, "tokenizer.json: model type %.40s is not supported by the C tokenizer (BPE only)",
                  mtype.type == JV_STR ? mtype.str : "(missing)");
    else if (drop.type != JV_NULL || !(pfx.type == JV_NULL || rq4_jv_is_str(&pfx, "")) ||
             !(sfx.type == JV_NULL || rq4_jv_is_str(&sfx, "")))   /* "" adds nothing: the same as none */
        st = rq4_fail(b->err, RQ4_ERR_UNSUPPORTED,
                  "tokenizer.json: BPE dropout/continuing_subword_prefix/end_of_word_suffix are not supported by the C tokenizer");
    else if (norm.type != JV_NULL)
        st = rq4_fail(b->err, RQ4_ERR_UNSUPPORTED, "tokenizer.json: a normalizer is not supported by the C tokenizer");
    else if (!(t->pretok = classify_pretok(&pre)))
        st = rq4_fail(b->err, RQ4_ERR_UNSUPPORTED,
                  "this tokenizer's pre-tokenizer is not supported by the C tokenizer (Llama 3 and GPT-2/SmolLM2 byte-level only)");
    else if (ign.type != JV_NULL && ign.type != JV_TRUE && ign.type != JV_FALSE)
        st = bad(b, "model.ignore_merges");
    t->ignore_merges = ign.type == JV_TRUE;
    rq4_jv_free(&mtype); rq4_jv_free(&ign); rq4_jv_free(&drop); rq4_jv_free(&pfx); rq4_jv_free(&sfx); rq4_jv_free(&norm); rq4_jv_free(&pre);
    if (st != RQ4_OK) return st;

    int32_t max_id = -1;
    if (!model[1].start) return bad(b, "model (no vocab)");
    if ((st = read_vocab(b, model[1], &max_id)) != RQ4_OK) return st;
    if ((st = build_vocab_hash(b, max_id)) != RQ4_OK) return st;
    if (model[2].start && (st = read_merges(b, model[2])) != RQ4_OK) return st;
    if (!model[2].start) {   /* no merges: an empty table */
        t->mhash_cap = 16;
        t->mhash = malloc(sizeof(int32_t) * 16);
        if (!t->mhash) return rq4_fail(b->err, RQ4_ERR_NOMEM, "tokenizer: out of memory");
        memset(t->mhash, 0xFF, sizeof(int32_t) * 16);
    }
    if (top[1].start && (st = read_added(b, top[1], &max_id)) != RQ4_OK) return st;
    sort_added(t);
    for (int32_t i = 0; i < t->n_added; i++) t->added_first[t->text[t->added[i].off]] = 1;
    if (max_id < 0) return bad(b, "model.vocab (empty)");
    t->n_ids = max_id + 1;
    {   /* trim the per-id arrays and the arena to what is used */
        uint32_t *o = realloc(t->off, sizeof(uint32_t) * (size_t)t->n_ids);
        uint32_t *l = o ? (t->off = o, realloc(t->len, sizeof(uint32_t) * (size_t)t->n_ids)) : NULL;
        uint8_t *f = l ? (t->len = l, realloc(t->flags, (size_t)t->n_ids)) : NULL;
        uint8_t *x = f ? (t->flags = f, realloc(t->text, t->text_len ? (size_t)t->text_len : 1)) : NULL;
        if (!x) return rq4_fail(b->err, RQ4_ERR_NOMEM, "tokenizer: out of memory");
        t->text = x;
        t->text_cap = t->text_len;
    }
    t->memory = sizeof(rq4_tokenizer) + t->text_cap + (uint64_t)t->n_ids * (2 * sizeof(uint32_t) + 1) +
                sizeof(int32_t) * ((uint64_t)t->vhash_cap + t->mhash_cap) + sizeof(merge) * (uint64_t)t->n_merges +
                sizeof(added_token) * (uint64_t)t->n_added;
    return RQ4_OK;
}

rq4_status rq4_tokenizer_new(const void *json, uint64_t size, rq4_tokenizer **out, rq4_error *err) {
    if (!out) return rq4_fail(err, RQ4_ERR_ARG, "rq4_tokenizer_new: out is NULL");
    *out = NULL;
    if (!json) return rq4_fail(err, RQ4_ERR_ARG, "rq4_tokenizer_new: json is NULL");
    if (size == 0 || size >= ((uint64_t)1 << 32) || size > SIZE_MAX / 4)
        return rq4_fail(err, RQ4_ERR_FORMAT, "tokenizer.json: bad size %llu", (unsigned long long)size);
    builder b;
    memset(&b, 0, sizeof b);
    b.err = err;
    b.t = calloc(1, sizeof(rq4_tokenizer));
    if (!b.t) return rq4_fail(err, RQ4_ERR_NOMEM, "tokenizer: out of memory");
    for (int c = 0; c < 0x200; c++) b.cmap[c] = -1;
    for (int x = 0; x < 256; x++) b.cmap[byte_to_char(x)] = (int16_t)x;
    rq4_status st = build(&b, json, (size_t)size);
    free(b.s.data);
    if (st != RQ4_OK) {
        rq4_tokenizer_free(b.t);
        return st;
    }
    *out = b.t;
    if (err) { err->code = RQ4_OK; err->message[0] = 0; }
    return RQ4_OK;
}

rq4_status rq4_tokenizer_from_model(const rq4_model *m, rq4_tokenizer **out, rq4_error *err) {
    if (out) *out = NULL;
    if (!m) return rq4_fail(err, RQ4_ERR_ARG, "rq4_tokenizer_from_model: model is NULL");
    uint64_t size = 0;
    const void *blob = rq4_blob(m, "tokenizer.json", &size);
    if (!blob) return rq4_fail(err, RQ4_ERR_UNSUPPORTED, "the model file has no tokenizer.json blob");
    return rq4_tokenizer_new(blob, size, out, err);
}

void rq4_tokenizer_free(rq4_tokenizer *t) {
    if (!t) return;
    free(t->text);
    free(t->off);
    free(t->len);
    free(t->flags);
    free(t->vhash);
    free(t->merges);
    free(t->mhash);
    free(t->added);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* Pre-tokenizers: each returns the end (a code point index) of the piece
 * starting at i in the segment [0, n); cl[] are the classes, cp[] the code
 * points. They are the regexes, alternative by alternative, first match wins. */

static uint32_t fold_ascii(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';   /* LATIN SMALL LETTER LONG S case-folds to s */
    return c;
}

static int is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

/* \s+(?!\S) then \s+, from a whitespace code point at i (shared tail) */
static size_t match_spaces(const uint8_t *cl, size_t i, size_t n) {
    size_t w = i;
    while (w < n && cl[w] == CLS_SPACE) w++;
    if (w == n || w - i < 2) return w;
    return w - 1;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_llama3(const uint32_t *cp, const uint8_t *cl, size_t i, size_t n) {
    uint32_t c = cp[i];
    size_t j;
    if (c == '\'' && i + 1 < n) {
        uint32_t a = fold_ascii(cp[i + 1]);
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if (i + 2 < n) {
            uint32_t b = fold_ascii(cp[i + 2]);
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
        }
    }
    j = i;
    if (cl[i] != CLS_LETTER && cl[i] != CLS_NUMBER && !is_crlf(c) && i + 1 < n && cl[i + 1] == CLS_LETTER) j = i + 1;
    if (cl[j] == CLS_LETTER) {
        while (j < n && cl[j] == CLS_LETTER) j++;
        return j;
    }
    if (cl[i] == CLS_NUMBER) {
        j = i + 1;
        while (j < n && j < i + 3 && cl[j] == CLS_NUMBER) j++;
        return j;
    }
    j = i;
    if (c == ' ' && i + 1 < n && cl[i + 1] == CLS_OTHER) j = i + 1;
    if (cl[j] == CLS_OTHER) {
        while (j < n && cl[j] == CLS_OTHER) j++;
        while (j < n && is_crlf(cp[j])) j++;
        return j;
    }
    /* cp[i] is whitespace: \s*[\r\n]+ ends after the run's last \r or \n */
    size_t w = i;
    while (w < n && cl[w] == CLS_SPACE) w++;
    for (size_t k = w; k > i; k--)
        if (is_crlf(cp[k - 1])) return k;
    return match_spaces(cl, i, n);
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const uint32_t *cp, const uint8_t *cl, size_t i, size_t n) {
    uint32_t c = cp[i];
    if (c == '\'' && i + 1 < n) {
        uint32_t a = cp[i + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if (i + 2 < n) {
            uint32_t b = cp[i + 2];
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
        }
    }
    for (int cls = CLS_LETTER; cls <= CLS_NUMBER; cls++) {
        size_t j = (c == ' ' && i + 1 < n && cl[i + 1] == cls) ? i + 1 : i;
        if (cl[j] == cls) {
            while (j < n && cl[j] == cls) j++;
            return j;
        }
    }
    size_t j = (c == ' ' && i + 1 < n && cl[i + 1] == CLS_OTHER) ? i + 1 : i;
    if (cl[j] == CLS_OTHER) {
        while (j < n && cl[j] == CLS_OTHER) j++;
        return j;
    }
    return match_spaces(cl, i, n);
}

/* ------------------------------------------------------------------------ */
/* BPE on one piece                                                          */

typedef struct heap_item {
    uint32_t rank, pos;
} heap_item;

typedef struct scratch {
    int32_t *sym;       /* symbol ids */
    int32_t *prev, *next;
    heap_item *heap;
    size_t nheap, cap;
} scratch;

static int heap_less(heap_item a, heap_item b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(scratch *s, heap_item x) {
    size_t i = s->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(x, s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = x;
}

static heap_item heap_pop(scratch *s) {
    heap_item top = s->heap[0], x = s->heap[--s->nheap];
    size_t i = 0, n = s->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(s->heap[c + 1], s->heap[c])) c++;
        if (!heap_less(s->heap[c], x)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = x;
    return top;
}

/* Pushes the merge of the symbol at pos with its right neighbour, if any. */
static void push_pair(const rq4_tokenizer *t, scratch *s, int32_t pos) {
    int32_t nx = s->next[pos];
    if (nx < 0) return;
    int32_t k = merge_lookup(t, s->sym[pos], s->sym[nx]);
    if (k >= 0) heap_push(s, (heap_item){(uint32_t)k, (uint32_t)pos});
}

/* Encodes bytes p[0..n) (n >= 1) and appends the ids at out[*count...],
 * writing only below cap. */
static void bpe_piece(const rq4_tokenizer *t, scratch *s, const uint8_t *p, size_t n, int32_t *out, int32_t cap,
                      int64_t *count) {
    if (t->ignore_merges || n == 1) {
        int32_t id = vocab_lookup(t, p, n);
        if (id >= 0) {
            if (*count < cap) out[*count] = id;
            (*count)++;
            return;
        }
    }
    /* one symbol per byte; a byte without a token is dropped (tokenizers does
       so when there is no unk_token and no byte_fallback) */
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (t->byte_id[p[i]] >= 0) s->sym[m++] = t->byte_id[p[i]];
    if (m == 0) return;
    for (size_t i = 0; i < m; i++) {
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    s->nheap = 0;
    for (size_t i = 0; i + 1 < m; i++) push_pair(t, s, (int32_t)i);
    /* the lowest rank first, leftmost on ties; an entry is stale when its
       symbol has been absorbed or its pair changed (tokenizers' Word::merge_all) */
    while (s->nheap) {
        heap_item h = heap_pop(s);
        int32_t pos = (int32_t)h.pos, nx = s->next[pos];
        if (s->sym[pos] < 0 || nx < 0) continue;
        const merge *mg = &t->merges[h.rank];
        if (s->sym[pos] != mg->a || s->sym[nx] != mg->b || merge_lookup(t, mg->a, mg->b) != (int32_t)h.rank) continue;
        s->sym[pos] = mg->id;
        s->sym[nx] = -1;
        s->next[pos] = s->next[nx];
        if (s->next[nx] >= 0) s->prev[s->next[nx]] = pos;
        if (s->prev[pos] >= 0) push_pair(t, s, s->prev[pos]);
        push_pair(t, s, pos);
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) {
        if (*count < cap) out[*count] = s->sym[i];
        (*count)++;
    }
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                  */

/* The longest added token starting at text[i], or -1 (its index in added). */
static int32_t match_added(const rq4_tokenizer *t, const uint8_t *text, size_t i, size_t len) {
    if (!t->added_first[text[i]]) return -1;
    /* binary search the first token whose first byte is text[i] */
    int32_t lo = 0, hi = t->n_added;
    while (lo < hi) {
        int32_t mid = (lo + hi) / 2;
        if (t->text[t->added[mid].off] < text[i]) lo = mid + 1;
        else hi = mid;
    }
    int32_t best = -1;
    for (int32_t k = lo; k < t->n_added && t->text[t->added[k].off] == text[i]; k++) {
        const added_token *a = &t->added[k];
        if (a->len <= len - i && memcmp(t->text + a->off, text + i, a->len) == 0 &&
            (best < 0 || a->len > t->added[best].len))
            best = k;
    }
    return best;
}

/* Pre-tokenizes and encodes the segment text[from, to) (no added tokens in it). */
static void encode_segment(const rq4_tokenizer *t, scratch *s, const uint8_t *text, const uint32_t *cp,
                           const uint8_t *cl, const uint32_t *boff, size_t from, size_t to, int32_t *ids,
                           int32_t cap, int64_t *count) {
    /* from/to are code point indices; boff[] maps them to byte offsets */
    size_t i = from;
    while (i < to) {
        size_t end = to;
        if (t->pretok == RQ4_PRETOK_GPT2_DIGITS) {
            /* Digits(individual_digits): every numeric code point (Rust's
               char::is_numeric: \p{N} and a few newer ones) is a piece of
               its own, and the regex runs separately on the text between */
            if (cl[i] == CLS_NUMBER || (cp[i] >= 0x10000 && is_numeric_extra(cp[i]))) {
                bpe_piece(t, s, text + boff[i], boff[i + 1] - boff[i], ids, cap, count);
                i++;
                continue;
            }
            end = i;
            while (end < to && cl[end] != CLS_NUMBER && !(cp[end] >= 0x10000 && is_numeric_extra(cp[end]))) end++;
        }
        /* the regex sees [i, end) as the whole string: offsets relative to i */
        size_t k = i;
        while (k < end) {
            size_t e = t->pretok == RQ4_PRETOK_LLAMA3 ? match_llama3(cp + i, cl + i, k - i, end - i) + i
                                                      : match_gpt2(cp + i, cl + i, k - i, end - i) + i;
            bpe_piece(t, s, text + boff[k], boff[e] - boff[k], ids, cap, count);
            k = e;
        }
        i = end;
    }
}

rq4_status rq4_tokenizer_encode(const rq4_tokenizer *t, const char *text_, uint64_t len, int32_t special,
                                int32_t *ids, int32_t cap, int32_t *n_ids, rq4_error *err) {
    const uint8_t *text = (const uint8_t *)text_;
    if (n_ids) *n_ids = 0;
    if (!t || !n_ids || (!text && len) || (!ids && cap > 0) || cap < 0)
        return rq4_fail(err, RQ4_ERR_ARG, "rq4_tokenizer_encode: bad arguments");
    if (len > (uint64_t)INT32_MAX) return rq4_fail(err, RQ4_ERR_ARG, "rq4_tokenizer_encode: text longer than 2 GB");
    if (len == 0) return RQ4_OK;
    if (len > (SIZE_MAX - 64) / 32)   /* 32-bit: the scratch below would overflow size_t */
        return rq4_fail(err, RQ4_ERR_NOMEM, "rq4_tokenizer_encode: text too long for this machine");
    size_t n = (size_t)len;
    scratch s = {0};
    /* per code point: value, class, byte offset (n+1); per byte: BPE symbols */
    uint32_t *cp = malloc(sizeof(uint32_t) * n);
    uint8_t *cl = malloc(n);
    uint32_t *boff = malloc(sizeof(uint32_t) * (n + 1));
    s.sym = malloc(sizeof(int32_t) * n);
    s.prev = malloc(sizeof(int32_t) * n);
    s.next = malloc(sizeof(int32_t) * n);
    s.heap = malloc(sizeof(heap_item) * (3 * n + 1));   /* at most n-1 initial + 2 per merge */
    rq4_status st = RQ4_OK;
    if (!cp || !cl || !boff || !s.sym || !s.prev || !s.next || !s.heap) {
        st = rq4_fail(err, RQ4_ERR_NOMEM, "rq4_tokenizer_encode: out of memory");
        goto done;
    }
    int64_t count = 0;
    size_t ncp = 0, b = 0, seg = 0;   /* seg: code point index where the current segment starts */
    size_t plain_until = 0;            /* a special token's text taken as plain text ends here */
    while (b < n) {
        int32_t a = t->n_added && b >= plain_until ? match_added(t, text, b, n) : -1;
        if (a >= 0 && !special && (t->flags[t->added[a].id] & FLAG_SPECIAL)) {
            /* tokenizers' encode_special_tokens: the match is dropped and its
               text is ordinary text; matching resumes after it */
            plain_until = b + t->added[a].len;
            a = -1;
        }
        if (a >= 0) {
            encode_segment(t, &s, text, cp, cl, boff, seg, ncp, ids, cap, &count);
            if (count < cap) ids[count] = t->added[a].id;
            count++;
            b += t->added[a].len;
            boff[ncp] = (uint32_t)b;
            seg = ncp;
            continue;
        }
        uint32_t c;
        int k = rq4_utf8_decode(text + b, n - b, &c);
        if (k == 0) {
            st = rq4_fail(err, RQ4_ERR_ARG, "rq4_tokenizer_encode: the text is not valid UTF-8 (byte %zu)", b);
            goto done;
        }
        cp[ncp] = c;
        cl[ncp] = (uint8_t)(c < 128 ? (c == ' ' || (c >= 9 && c <= 13)) ? CLS_SPACE
                                      : ((c | 32) >= 'a' && (c | 32) <= 'z') ? CLS_LETTER
                                      : (c >= '0' && c <= '9') ? CLS_NUMBER : CLS_OTHER
                                    : unicode_class(c));
        boff[ncp] = (uint32_t)b;
        ncp++;
        b += (size_t)k;
        boff[ncp] = (uint32_t)b;
    }
    encode_segment(t, &s, text, cp, cl, boff, seg, ncp, ids, cap, &count);
    *n_ids = count > INT32_MAX ? INT32_MAX : (int32_t)count;
    if (count > cap) st = rq4_fail(err, RQ4_ERR_ARG, "rq4_tokenizer_encode: %lld ids do not fit in %d", (long long)count, cap);
done:
    free(cp);
    free(cl);
    free(boff);
    free(s.sym);
    free(s.prev);
    free(s.next);
    free(s.heap);
    if (st == RQ4_OK && err) { err->code = RQ4_OK; err->message[0] = 0; }
    return st;
}

/* ------------------------------------------------------------------------ */
/* Queries                                                                   */

const char *rq4_tokenizer_piece(const rq4_tokenizer *t, int32_t id, uint32_t *len) {
    if (len) *len = 0;
    if (!t || id < 0 || id >= t->n_ids || !(t->flags[id] & FLAG_PRESENT)) return NULL;
    if (len) *len = t->len[id];
    return (const char *)t->text + t->off[id];
}

int32_t rq4_tokenizer_find(const rq4_tokenizer *t, const char *text, uint64_t len) {
    if (!t || !text || len == 0 || len > MAX_TOKEN_BYTES) return -1;
    for (int32_t k = 0; k < t->n_added; k++)
        if (t->added[k].len == len && memcmp(t->text + t->added[k].off, text, (size_t)len) == 0) return t->added[k].id;
    return vocab_lookup(t, (const uint8_t *)text, (size_t)len);
}

int32_t rq4_tokenizer_is_special(const rq4_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_ids) return 0;
    return (t->flags[id] & FLAG_SPECIAL) != 0;
}

int32_t rq4_tokenizer_size(const rq4_tokenizer *t) { return t ? t->n_ids : 0; }

uint64_t rq4_tokenizer_memory(const rq4_tokenizer *t) { return t ? t->memory : 0; }

int rq4_tokenizer_pretok(const rq4_tokenizer *t) { return t ? t->pretok : 0; }
