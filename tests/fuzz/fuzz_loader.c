/* libFuzzer harness for the .rq4 loader.
 *
 * Each input is a whole model file. It goes into a memfd (no disk writes),
 * gets its header's file_size set to the input's length (otherwise almost
 * every mutation would stop at that first check; the exact-size check has its
 * own tests in tests/test_reliability_files.py), and is opened with small
 * options. An input that opens runs one forward pass of two tokens (all
 * logits), its tokenizer blob is built and encodes a short text, and it is
 * closed. Any crash, sanitizer report or leak is a bug; a refused file must
 * come with a one-line message.
 *
 *   make fuzz FUZZ_SECONDS=60       (builds build-fuzz/fuzz_loader, seeds, runs)
 *   build-fuzz/fuzz_loader -max_total_time=60 build-fuzz/corpus_loader build-fuzz/seeds_loader
 */
#define _GNU_SOURCE
#include "runq4.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int fd = -1;
static char path[64];

static void check_message(const rq4_error *err, rq4_status s) {
    size_t n = strnlen(err->message, sizeof err->message);
    if (err->code != (int32_t)s || n == 0 || n >= sizeof err->message || strchr(err->message, '\n')) {
        fprintf(stderr, "bad error report: status %d, code %d, message '%.256s'\n", s, err->code, err->message);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fd < 0) {
        fd = memfd_create("rq4fuzz", 0);
        if (fd < 0) abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    uint8_t *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    if (size >= 24) /* header field file_size (u64 at offset 16) = the real size */
        for (int i = 0; i < 8; i++) copy[16 + i] = (uint8_t)((uint64_t)size >> (8 * i));
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, copy, size, 0) != (ssize_t)size)) abort();
    free(copy);

    rq4_options o;
    rq4_default_options(&o);
    o.n_ctx = 8;
    o.n_threads = 1;
    o.max_memory = 256u << 20; /* a header may ask for a huge context: refuse, don't allocate */
    o.kv_type = size > 200 && (data[size - 1] & 1) ? RQ4_KV_F16 : RQ4_KV_F32;
    o.float_activations = size > 200 && (data[size - 1] & 2);
    rq4_model *m = NULL;
    rq4_error err;
    rq4_status s = rq4_open(path, &o, &m, &err);
    if (s != RQ4_OK) {
        check_message(&err, s);
        if (m) abort();
        return 0;
    }
    const rq4_config *c = rq4_get_config(m);
    int32_t tokens[2] = {0, c->vocab_size - 1};
    float *logits = malloc(2 * (size_t)c->vocab_size * sizeof(float));
    if (!logits) abort();
    s = rq4_forward(m, tokens, 2, logits, 1, &err);
    if (s != RQ4_OK) check_message(&err, s);
    free(logits);
    uint64_t blob_size = 0;
    (void)rq4_blob(m, "chat_template", &blob_size);
    rq4_tokenizer *t = NULL;
    s = rq4_tokenizer_from_model(m, &t, &err);
    if (s == RQ4_OK) {
        static const char text[] = "Hello, world 123 <|im_end|> caf\xc3\xa9";
        int32_t ids[64], n = 0;
        if (rq4_tokenizer_encode(t, text, sizeof text - 1, 1, ids, 64, &n, &err) == RQ4_OK)
            for (int32_t i = 0; i < n; i++) {
                uint32_t len;
                (void)rq4_tokenizer_piece(t, ids[i], &len);
            }
        rq4_tokenizer_free(t);
    } else {
        check_message(&err, s);
    }
    rq4_close(m);
    return 0;
}
