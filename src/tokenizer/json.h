/* A small JSON reader for tokenizer.json (internal to the C tokenizer):
 * the big arrays (vocab, merges, added_tokens) are read in a streaming way
 * from a cursor; small subtrees become a tiny DOM. Nothing here allocates
 * more than DOM_MAX_NODES nodes or nests deeper than JSON_MAX_DEPTH. */
#ifndef RUNQ4_TOKENIZER_JSON_H
#define RUNQ4_TOKENIZER_JSON_H

#include <stddef.h>
#include <stdint.h>

#define MAX_TOKEN_ID (1 << 24)   /* ids are < 2^24, as vocab_size in FORMAT.md */
#define JSON_MAX_DEPTH 64
#define DOM_MAX_NODES 4096       /* small subtrees only (pre_tokenizer, normalizer) */

typedef struct jcur {
    const uint8_t *p, *end;
    int depth;
} jcur;

typedef struct buf {
    uint8_t *data;
    size_t len, cap;
} buf;

/* A value's extent [start, end), to come back to later. */
typedef struct span {
    const uint8_t *start, *end;
} span;

/* ---- a tiny DOM for small subtrees ---- */
enum { JV_NULL, JV_FALSE, JV_TRUE, JV_NUM, JV_STR, JV_ARR, JV_OBJ };

typedef struct jv {
    int type;
    double num;
    char *str;          /* JV_STR: NUL-terminated (a NUL inside ends it early) */
    size_t slen;
    int n;              /* JV_ARR/JV_OBJ: children */
    struct jv *kids;
    char **keys;        /* JV_OBJ */
} jv;

/* Decodes one code point at s[0..n); returns its length (1..4) or 0 when the
 * bytes are not valid UTF-8 (overlong, surrogate, > U+10FFFF, truncated). */
int rq4_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);

/* Room for `extra` more bytes in b; 0 when out of memory. */
int rq4_json_reserve(buf *b, size_t extra);

int rq4_json_eat(jcur *j, int c);

/* A non-negative integer below MAX_TOKEN_ID. */
int rq4_json_id(jcur *j, int32_t *id);

int rq4_json_peek(jcur *j);

int rq4_json_skip(jcur *j);

int rq4_json_span(jcur *j, span *s);

/* Reads a JSON string into out (replacing its contents), decoding escapes;
 * the result is valid UTF-8 (not NUL-terminated, may contain NUL). Returns 0
 * on malformed input or allocation failure (*nomem set). */
int rq4_json_string(jcur *j, buf *out, int *nomem);

/* true/false member; `dflt` when absent; -1 when of another type. */
int rq4_jv_bool(const jv *o, const char *key, int dflt);

void rq4_jv_free(jv *v);

/* The last member named `key` (serde keeps the last of duplicates), or NULL. */
const jv *rq4_jv_get(const jv *o, const char *key);

int rq4_jv_is_str(const jv *v, const char *s);

int rq4_jv_parse(jcur *j, jv *v, int *budget, buf *tmp, int *nomem);

#endif /* RUNQ4_TOKENIZER_JSON_H */
