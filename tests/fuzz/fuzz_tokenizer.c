/* libFuzzer harness for the C tokenizer, two targets in one:
 *
 *  - first byte even: the rest is a tokenizer.json blob for rq4_tokenizer_new;
 *    if it is accepted, a fixed text (ASCII, digits, an added token, UTF-8)
 *    is encoded and every id's piece looked up;
 *  - first byte odd: the rest is text, encoded (with and without special
 *    tokens) by a real tokenizer read once at start-up from the file named by
 *    RQ4_FUZZ_TOKENIZER (default build-fuzz/tokenizer.json, written by
 *    tests/fuzz/make_seeds.py). Invalid UTF-8 must be refused with
 *    RQ4_ERR_ARG; valid text must encode, and the pieces of its ids must
 *    give the text back byte for byte (byte-level BPE loses nothing).
 *
 *   make fuzz FUZZ_SECONDS=60
 */
#include "runq4.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static rq4_tokenizer *real;

static void *read_file(const char *name, size_t *size) {
    FILE *f = fopen(name, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(n > 0 ? (size_t)n : 1);
    *size = fread(p, 1, n > 0 ? (size_t)n : 0, f);
    fclose(f);
    return p;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *name = getenv("RQ4_FUZZ_TOKENIZER");
    size_t size = 0;
    void *json = read_file(name ? name : "build-fuzz/tokenizer.json", &size);
    rq4_error err;
    if (!json || rq4_tokenizer_new(json, size, &real, &err) != RQ4_OK) {
        fprintf(stderr, "fuzz_tokenizer: cannot load %s (set RQ4_FUZZ_TOKENIZER)\n",
                name ? name : "build-fuzz/tokenizer.json");
        exit(2);
    }
    free(json);
    return 0;
}

/* 1 if s[0..n) is valid UTF-8 (no surrogates, no overlongs, <= U+10FFFF). */
static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : c & (0x7f >> len);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

static void encode_checked(const rq4_tokenizer *t, const uint8_t *text, size_t n, int special, int roundtrip) {
    int32_t cap = (int32_t)n + 1, got = 0;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    rq4_error err;
    rq4_status s = rq4_tokenizer_encode(t, (const char *)text, n, special, ids, cap, &got, &err);
    int ok_text = valid_utf8(text, n);
    if ((s == RQ4_OK) != ok_text || (s != RQ4_OK && s != RQ4_ERR_ARG) || got > cap) {
        fprintf(stderr, "encode: status %d for %s UTF-8, %d ids (%s)\n", s, ok_text ? "valid" : "invalid", got,
                err.message);
        abort();
    }
    if (s == RQ4_OK) {
        size_t at = 0;
        for (int32_t i = 0; i < got; i++) {
            uint32_t len = 0;
            const char *p = rq4_tokenizer_piece(t, ids[i], &len);
            if (!p || ids[i] < 0 || ids[i] >= rq4_tokenizer_size(t)) abort();
            if (roundtrip && (at + len > n || memcmp(text + at, p, len) != 0)) {
                fprintf(stderr, "encode: piece %d of id %d does not match the text at byte %zu\n", i, ids[i], at);
                abort();
            }
            at += len;
        }
        if (roundtrip && at != n) {
            fprintf(stderr, "encode: pieces give %zu bytes, the text has %zu\n", at, n);
            abort();
        }
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    if (data[0] & 1) {
        encode_checked(real, data + 1, size - 1, 0, 1);
        encode_checked(real, data + 1, size - 1, 1, 1);
        return 0;
    }
    rq4_tokenizer *t = NULL;
    rq4_error err;
    rq4_status s = rq4_tokenizer_new(data + 1, size - 1, &t, &err);
    if (s != RQ4_OK) {
        if (t || err.code != (int32_t)s || !err.message[0] || strchr(err.message, '\n')) abort();
        return 0;
    }
    static const char text[] = "Hello, world 12345 <|im_end|> caf\xc3\xa9 \xf0\x9f\x98\x80  \n\n x";
    encode_checked(t, (const uint8_t *)text, sizeof text - 1, 1, 0);
    encode_checked(t, (const uint8_t *)text, sizeof text - 1, 0, 0);
    for (int32_t id = -1; id <= rq4_tokenizer_size(t) && id < 4096; id++) {
        uint32_t len;
        (void)rq4_tokenizer_piece(t, id, &len);
        (void)rq4_tokenizer_is_special(t, id);
    }
    (void)rq4_tokenizer_find(t, "a", 1);
    (void)rq4_tokenizer_memory(t);
    rq4_tokenizer_free(t);
    return 0;
}
