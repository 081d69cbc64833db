/* The JSON reader of the C tokenizer (json.h). */
#include "json.h"

#include <stdlib.h>
#include <string.h>

/* Decodes one code point at s[0..n); returns its length (1..4) or 0 when the
 * bytes are not valid UTF-8 (overlong, surrogate, > U+10FFFF, truncated). */
int rq4_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    uint32_t c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xC2) return 0;
    if (c < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *cp = ((c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        c = ((c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF)) return 0;
        *cp = c;
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        c = ((c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        if (c < 0x10000 || c > 0x10FFFF) return 0;
        *cp = c;
        return 4;
    }
    return 0;
}

static int encode_utf8(uint32_t c, uint8_t *out) {
    if (c < 0x80) { out[0] = (uint8_t)c; return 1; }
    if (c < 0x800) { out[0] = (uint8_t)(0xC0 | (c >> 6)); out[1] = (uint8_t)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (c >> 12)); out[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (c >> 18)); out[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F)); out[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

int rq4_json_reserve(buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra) {
        if (cap > SIZE_MAX / 4) return 0;
        cap *= 2;
    }
    uint8_t *d = realloc(b->data, cap);
    if (!d) return 0;
    b->data = d;
    b->cap = cap;
    return 1;
}

static void j_ws(jcur *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

int rq4_json_peek(jcur *j) {
    j_ws(j);
    return j->p < j->end ? *j->p : -1;
}

int rq4_json_eat(jcur *j, int c) {
    if (rq4_json_peek(j) != c) return 0;
    j->p++;
    return 1;
}

static int j_literal(jcur *j, const char *lit) {
    size_t n = strlen(lit);
    j_ws(j);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) return 0;
    j->p += n;
    return 1;
}

static int hex4(const uint8_t *p, uint32_t *v) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        x = x * 16 + (uint32_t)d;
    }
    *v = x;
    return 1;
}

/* Reads a JSON string into out (replacing its contents), decoding escapes;
 * the result is valid UTF-8 (not NUL-terminated, may contain NUL). Returns 0
 * on malformed input or allocation failure (*nomem set). */
int rq4_json_string(jcur *j, buf *out, int *nomem) {
    out->len = 0;
    if (!rq4_json_eat(j, '"')) return 0;
    for (;;) {
        if (j->p >= j->end) return 0;
        uint8_t c = *j->p;
        if (c == '"') { j->p++; return 1; }
        if (!rq4_json_reserve(out, 4)) { *nomem = 1; return 0; }
        if (c == '\\') {
            if (j->end - j->p < 2) return 0;
            uint8_t e = j->p[1];
            j->p += 2;
            switch (e) {
            case '"': out->data[out->len++] = '"'; break;
            case '\\': out->data[out->len++] = '\\'; break;
            case '/': out->data[out->len++] = '/'; break;
            case 'b': out->data[out->len++] = '\b'; break;
            case 'f': out->data[out->len++] = '\f'; break;
            case 'n': out->data[out->len++] = '\n'; break;
            case 'r': out->data[out->len++] = '\r'; break;
            case 't': out->data[out->len++] = '\t'; break;
            case 'u': {
                uint32_t u, lo;
                if (j->end - j->p < 4 || !hex4(j->p, &u)) return 0;
                j->p += 4;
                if (u >= 0xDC00 && u <= 0xDFFF) return 0;          /* lone low surrogate */
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || !hex4(j->p + 2, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return 0;                                    /* lone high surrogate */
                    j->p += 6;
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                }
                out->len += (size_t)encode_utf8(u, out->data + out->len);
                break;
            }
            default: return 0;
            }
        } else if (c < 0x20) {
            return 0;                                                /* raw control character */
        } else if (c < 0x80) {
            out->data[out->len++] = c;
            j->p++;
        } else {
            uint32_t cp;
            int k = rq4_utf8_decode(j->p, (size_t)(j->end - j->p), &cp);
            if (k == 0) return 0;
            memcpy(out->data + out->len, j->p, (size_t)k);
            out->len += (size_t)k;
            j->p += k;
        }
    }
}

/* Skips a string without decoding (checks only its framing). */
static int j_skip_string(jcur *j) {
    if (!rq4_json_eat(j, '"')) return 0;
    while (j->p < j->end) {
        if (*j->p == '\\') {
            if (j->end - j->p < 2) return 0;
            j->p += 2;
        } else if (*j->p++ == '"') {
            return 1;
        }
    }
    return 0;
}

static int j_number(jcur *j, double *v) {
    j_ws(j);
    const uint8_t *s = j->p;
    char tmp[64];
    size_t n = 0;
    while (s + n < j->end && n < sizeof tmp - 1 &&
           ((s[n] >= '0' && s[n] <= '9') || s[n] == '-' || s[n] == '+' || s[n] == '.' || s[n] == 'e' || s[n] == 'E'))
        n++;
    if (n == 0 || n == sizeof tmp - 1) return 0;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *endp;
    double x = strtod(tmp, &endp);
    if (endp != tmp + n) return 0;
    j->p += n;
    *v = x;
    return 1;
}

/* A non-negative integer below MAX_TOKEN_ID. */
int rq4_json_id(jcur *j, int32_t *id) {
    double v;
    j_ws(j);
    {   /* fast path: plain digits */
        const uint8_t *p = j->p;
        int32_t x = 0;
        int k = 0;
        while (p + k < j->end && k < 8 && p[k] >= '0' && p[k] <= '9') x = x * 10 + (p[k++] - '0');
        if (k > 0 && (k == 1 || p[0] != '0') && x < MAX_TOKEN_ID &&
            (p + k == j->end || (p[k] != '.' && p[k] != 'e' && p[k] != 'E' && !(p[k] >= '0' && p[k] <= '9')))) {
            j->p += k;
            *id = x;
            return 1;
        }
    }
    if (!j_number(j, &v) || !(v >= 0 && v < MAX_TOKEN_ID) || v != (double)(int32_t)v) return 0;
    *id = (int32_t)v;
    return 1;
}

int rq4_json_skip(jcur *j) {
    int c = rq4_json_peek(j);
    if (c == '"') return j_skip_string(j);
    if (c == '{' || c == '[') {
        int close = c == '{' ? '}' : ']';
        if (++j->depth > JSON_MAX_DEPTH) return 0;
        j->p++;
        if (rq4_json_eat(j, close)) { j->depth--; return 1; }
        for (;;) {
            if (c == '{') {
                if (!j_skip_string(j) || !rq4_json_eat(j, ':')) return 0;
            }
            if (!rq4_json_skip(j)) return 0;
            if (rq4_json_eat(j, ',')) continue;
            if (rq4_json_eat(j, close)) { j->depth--; return 1; }
            return 0;
        }
    }
    if (c == 't') return j_literal(j, "true");
    if (c == 'f') return j_literal(j, "false");
    if (c == 'n') return j_literal(j, "null");
    double v;
    return j_number(j, &v);
}


int rq4_json_span(jcur *j, span *s) {
    j_ws(j);
    s->start = j->p;
    if (!rq4_json_skip(j)) return 0;
    s->end = j->p;
    return 1;
}

/* ---- tiny DOM for small subtrees ---- */


void rq4_jv_free(jv *v) {
    if (!v) return;
    free(v->str);
    for (int i = 0; i < v->n; i++) {
        rq4_jv_free(&v->kids[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->kids);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

static char *buf_cstr(const buf *b) {
    char *s = malloc(b->len + 1);
    if (s) {
        if (b->len) memcpy(s, b->data, b->len); /* an empty string's buffer may be NULL (libFuzzer, UBSan) */
        s[b->len] = 0;
    }
    return s;
}

int rq4_jv_parse(jcur *j, jv *v, int *budget, buf *tmp, int *nomem) {
    memset(v, 0, sizeof *v);
    if (--*budget < 0) return 0;
    int c = rq4_json_peek(j);
    if (c == '"') {
        if (!rq4_json_string(j, tmp, nomem)) return 0;
        v->type = JV_STR;
        v->slen = tmp->len;
        if (!(v->str = buf_cstr(tmp))) { *nomem = 1; return 0; }
        return 1;
    }
    if (c == '{' || c == '[') {
        int close = c == '{' ? '}' : ']';
        if (++j->depth > JSON_MAX_DEPTH) return 0;
        j->p++;
        v->type = c == '{' ? JV_OBJ : JV_ARR;
        if (rq4_json_eat(j, close)) { j->depth--; return 1; }
        for (;;) {
            jv *kids = realloc(v->kids, sizeof(jv) * (size_t)(v->n + 1));
            if (!kids) { *nomem = 1; return 0; }
            v->kids = kids;
            if (c == '{') {
                char **keys = realloc(v->keys, sizeof(char *) * (size_t)(v->n + 1));
                if (!keys) { *nomem = 1; return 0; }
                v->keys = keys;
                v->keys[v->n] = NULL;
            }
            memset(&v->kids[v->n], 0, sizeof(jv));
            v->n++;
            if (c == '{') {
                if (!rq4_json_string(j, tmp, nomem)) return 0;
                if (!(v->keys[v->n - 1] = buf_cstr(tmp))) { *nomem = 1; return 0; }
                if (!rq4_json_eat(j, ':')) return 0;
            }
            if (!rq4_jv_parse(j, &v->kids[v->n - 1], budget, tmp, nomem)) return 0;
            if (rq4_json_eat(j, ',')) continue;
            if (rq4_json_eat(j, close)) { j->depth--; return 1; }
            return 0;
        }
    }
    if (c == 't') { v->type = JV_TRUE; return j_literal(j, "true"); }
    if (c == 'f') { v->type = JV_FALSE; return j_literal(j, "false"); }
    if (c == 'n') { v->type = JV_NULL; return j_literal(j, "null"); }
    v->type = JV_NUM;
    return j_number(j, &v->num);
}

/* The last member named `key` (serde keeps the last of duplicates), or NULL. */
const jv *rq4_jv_get(const jv *o, const char *key) {
    if (!o || o->type != JV_OBJ) return NULL;
    for (int i = o->n - 1; i >= 0; i--)
        if (strcmp(o->keys[i], key) == 0) return &o->kids[i];
    return NULL;
}

int rq4_jv_is_str(const jv *v, const char *s) {
    return v && v->type == JV_STR && v->slen == strlen(s) && strcmp(v->str, s) == 0;
}

/* true/false member; `dflt` when absent; -1 when of another type. */
int rq4_jv_bool(const jv *o, const char *key, int dflt) {
    const jv *v = rq4_jv_get(o, key);
    if (!v) return dflt;
    if (v->type == JV_TRUE) return 1;
    if (v->type == JV_FALSE) return 0;
    return -1;
}
