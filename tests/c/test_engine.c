/* The engine's own test, on a model file (tests/c/make_test_model.py writes
 * one with export/writer.py; tests/test_engine_c.py drives both):
 *
 *   build/test_engine MODEL.rq4
 *
 * What the Python tests do not see from outside:
 *  - batched prompts give bit-identical logits to token-by-token decoding,
 *    across chunk boundaries, for 1 and 3 threads, f32 and f16 KV caches, and
 *    in float (reference) mode;
 *  - the thread count never changes a bit of the logits;
 *  - all_logits = 0 gives the last row; logits = NULL only fills the cache;
 *  - rewind then re-forward reproduces the same logits;
 *  - argument and context errors leave the position untouched;
 *  - open errors leave *out NULL;
 *  - rq4_decode, whatever the ids per call, draws the ids of a loop of
 *    rq4_sample and rq4_forward with the same seeded sampler, and stops on a
 *    full context with the last id stored and not fed.
 * Exit status 0 when everything passed. Under valgrind:
 *   valgrind --leak-check=full --error-exitcode=1 build/test_engine MODEL.rq4 -q
 */
#define _POSIX_C_SOURCE 200809L
#include "runq4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (!(cond)) {                                          \
            failures++;                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);         \
            printf(__VA_ARGS__);                                \
            printf("\n");                                       \
        }                                                       \
    } while (0)

static rq4_model *open_or_die(const char *path, int n_threads, int kv_type, int float_act) {
    rq4_options o;
    rq4_default_options(&o);
    o.n_threads = n_threads;
    o.kv_type = kv_type;
    o.float_activations = float_act;
    rq4_model *m = NULL;
    rq4_error err;
    if (rq4_open(path, &o, &m, &err) != RQ4_OK) {
        printf("FAIL: cannot open %s: %s\n", path, err.message);
        exit(1);
    }
    return m;
}

/* Logits (n, vocab) of `tokens` fed in pieces of the given sizes (sum = n). */
static void forward_pieces(rq4_model *m, const int32_t *tokens, int n, const int *pieces, float *logits,
                           int vocab) {
    rq4_error err;
    int done = 0;
    for (int i = 0; done < n; i++) {
        int k = pieces[i] < n - done ? pieces[i] : n - done;
        rq4_status s = rq4_forward(m, tokens + done, k, logits + (size_t)done * vocab, 1, &err);
        CHECK(s == RQ4_OK, "forward of %d tokens at %d: %s", k, done, err.message);
        done += k;
    }
}

static int same_bits(const float *a, const float *b, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            printf("  %s: first difference at %zu: %.9g vs %.9g\n", what, i, a[i], b[i]);
            return 0;
        }
    return 1;
}

/* A seeded sampler with every cut and the penalty. */
static rq4_sampler *new_sampler(int vocab) {
    rq4_sampling p;
    rq4_default_sampling(&p);
    p.temperature = 0.9f;
    p.top_k = 20;
    p.min_p = 0.02f;
    p.repeat_penalty = 1.3f;
    p.repeat_last_n = 8;
    p.seed = 77;
    rq4_sampler *s = NULL;
    rq4_error err;
    CHECK(rq4_sampler_new(vocab, &p, &s, &err) == RQ4_OK, "sampler: %s", err.message);
    return s;
}

static void test_decode(const char *path) {
    enum { PROMPT = 5, STEPS = 12, CTX = 16 };
    const int32_t prompt[PROMPT] = {1, 2, 3, 4, 5};
    rq4_model *m = open_or_die(path, 1, RQ4_KV_F32, 0);
    const int vocab = rq4_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    int32_t want[STEPS], got[STEPS];
    int n_want = 0;
    rq4_error err;
    /* the reference loop */
    rq4_sampler *s = new_sampler(vocab);
    rq4_sampler_accept(s, prompt, PROMPT);
    CHECK(rq4_forward(m, prompt, PROMPT, logits, 0, &err) == RQ4_OK, "%s", err.message);
    const rq4_config *c = rq4_get_config(m);
    for (; n_want < STEPS; n_want++) {
        int32_t id = rq4_sample(s, logits);
        int eos = 0;
        for (int e = 0; e < c->n_eos; e++) eos |= c->eos_ids[e] == id;
        if (eos) break;
        want[n_want] = id;
        rq4_sampler_accept(s, &id, 1);
        if (n_want + 1 < STEPS) CHECK(rq4_forward(m, &id, 1, logits, 0, &err) == RQ4_OK, "%s", err.message);
    }
    rq4_sampler_free(s);
    for (int per_call = 1; per_call <= 5; per_call += 2) {
        CHECK(rq4_rewind(m, 0, &err) == RQ4_OK, "%s", err.message);
        s = new_sampler(vocab);
        rq4_sampler_accept(s, prompt, PROMPT);
        CHECK(rq4_forward(m, prompt, PROMPT, logits, 0, &err) == RQ4_OK, "%s", err.message);
        int n_got = 0, pending = -1, n = 0, stop = RQ4_STOP_COUNT;
        while (n_got < STEPS) {
            int want_n = STEPS - n_got < per_call ? STEPS - n_got : per_call;
            CHECK(rq4_decode(m, s, logits, pending, want_n, got + n_got, &n, &stop, &err) == RQ4_OK, "%s",
                  err.message);
            n_got += n;
            if (stop != RQ4_STOP_COUNT || n == 0) break;
            pending = got[n_got - 1];
        }
        CHECK(n_got == n_want && memcmp(got, want, sizeof(int32_t) * (size_t)n_want) == 0,
              "decode %d per call: %d ids, want %d", per_call, n_got, n_want);
        if (stop != RQ4_STOP_EOS)
            CHECK(rq4_position(m) == PROMPT + n_got - 1, "decode %d per call: position %d", per_call,
                  rq4_position(m));
        rq4_sampler_free(s);
    }
    rq4_close(m);
    /* a full context: the last id is stored, not fed */
    rq4_options o;
    rq4_default_options(&o);
    o.n_ctx = CTX;
    o.n_threads = 1;
    CHECK(rq4_open(path, &o, &m, &err) == RQ4_OK, "%s", err.message);
    s = new_sampler(vocab);
    CHECK(rq4_forward(m, prompt, PROMPT, logits, 0, &err) == RQ4_OK, "%s", err.message);
    int n = 0, stop = RQ4_STOP_COUNT;
    CHECK(rq4_decode(m, s, logits, -1, 100, got, &n, &stop, &err) == RQ4_OK, "%s", err.message);
    CHECK(stop == RQ4_STOP_CONTEXT && n == CTX - PROMPT + 1 && rq4_position(m) == CTX,
          "context: stop %d, %d ids, position %d", stop, n, rq4_position(m));
    if (n > 0)
        CHECK(rq4_decode(m, s, logits, got[n - 1], 100, got, &n, &stop, &err) == RQ4_OK && n == 0 &&
                  stop == RQ4_STOP_CONTEXT, "a pending id with no room");
    CHECK(rq4_decode(m, s, logits, -1, 0, got, &n, &stop, &err) == RQ4_ERR_ARG, "max_ids 0");
    CHECK(rq4_decode(m, NULL, logits, -1, 1, got, &n, &stop, &err) == RQ4_ERR_ARG, "no sampler");
    rq4_sampler_free(s);
    rq4_close(m);
    free(logits);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.rq4 [-q]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int quick = argc > 2 && strcmp(argv[2], "-q") == 0;
    rq4_error err;

    rq4_model *probe = open_or_die(path, 1, RQ4_KV_F32, 0);
    int vocab = rq4_get_config(probe)->vocab_size, n_ctx = rq4_get_config(probe)->n_ctx;
    rq4_close(probe);
    int n = quick ? 40 : 75; /* over two chunks of RQ4's batch (32) */
    if (n > n_ctx) n = n_ctx;
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) tokens[i] = (int32_t)((i * 7919 + 13) % vocab);
    size_t size = (size_t)n * (size_t)vocab;
    float *batched = malloc(sizeof(float) * size), *stepped = malloc(sizeof(float) * size);
    float *other = malloc(sizeof(float) * size), *last = malloc(sizeof(float) * (size_t)vocab);
    const int whole[] = {n}, ones[] = {1}, mixed[] = {33, 1, 5, 64};
    float *one_thread = malloc(sizeof(float) * size); /* the 1-thread logits of the current mode */

    printf("kernel %s, vocab %d, %d tokens\n", rq4_kernel_name(), vocab, n);
    for (int float_act = 0; float_act <= 1; float_act++) {
        for (int kv = RQ4_KV_F32; kv <= RQ4_KV_F16; kv++) {
            for (int threads = 1; threads <= 3; threads += 2) {
                if (quick && threads == 3 && kv == RQ4_KV_F16) continue;
                char what[96];
                snprintf(what, sizeof what, "float_activations %d, kv %s, %d thread(s)", float_act,
                         kv == RQ4_KV_F16 ? "f16" : "f32", threads);

                /* all at once vs one token at a time vs uneven pieces */
                rq4_model *m = open_or_die(path, threads, kv, float_act);
                forward_pieces(m, tokens, n, whole, batched, vocab);
                CHECK(rq4_position(m) == n, "%s: position %d after %d tokens", what, rq4_position(m), n);
                rq4_close(m);
                m = open_or_die(path, threads, kv, float_act);
                for (int i = 0; i < n; i++) forward_pieces(m, tokens + i, 1, ones, stepped + (size_t)i * vocab, vocab);
                CHECK(same_bits(batched, stepped, size, what), "%s: batched != token by token", what);
                rq4_close(m);
                m = open_or_die(path, threads, kv, float_act);
                forward_pieces(m, tokens, n, mixed, other, vocab);
                CHECK(same_bits(batched, other, size, what), "%s: batched != pieces 33+1+5+...", what);

                /* rewind to 20 and redo the rest: the same logits */
                CHECK(rq4_rewind(m, 20, &err) == RQ4_OK && rq4_position(m) == 20, "%s: rewind", what);
                forward_pieces(m, tokens + 20, n - 20, whole, other, vocab);
                CHECK(same_bits(batched + (size_t)20 * vocab, other, (size_t)(n - 20) * vocab, what),
                      "%s: logits after rewind differ", what);

                /* no logits, then only the last row */
                CHECK(rq4_rewind(m, 0, &err) == RQ4_OK, "%s: rewind 0", what);
                CHECK(rq4_forward(m, tokens, n - 3, NULL, 0, &err) == RQ4_OK, "%s: logits NULL", what);
                CHECK(rq4_forward(m, tokens + n - 3, 3, last, 0, &err) == RQ4_OK, "%s: last only", what);
                CHECK(same_bits(batched + (size_t)(n - 1) * vocab, last, (size_t)vocab, what),
                      "%s: all_logits=0 is not the last row", what);
                rq4_close(m);

                /* the thread count never changes a bit */
                if (threads == 1) memcpy(one_thread, batched, sizeof(float) * size);
                else CHECK(same_bits(one_thread, batched, size, what), "%s: differs from 1 thread", what);
                printf("%-48s ok\n", what);
            }
        }
    }

    /* errors: checked before computing anything, position unchanged */
    rq4_model *m = open_or_die(path, 2, RQ4_KV_F32, 0);
    CHECK(rq4_forward(m, tokens, 5, NULL, 0, &err) == RQ4_OK, "forward 5");
    int32_t bad[3] = {0, vocab, 1};
    CHECK(rq4_forward(m, bad, 3, last, 0, &err) == RQ4_ERR_ARG && err.code == RQ4_ERR_ARG, "token id = vocab");
    CHECK(strstr(err.message, "index 1") != NULL, "message names the index: %s", err.message);
    bad[1] = -1;
    CHECK(rq4_forward(m, bad, 3, last, 0, &err) == RQ4_ERR_ARG, "negative token id");
    CHECK(rq4_forward(m, tokens, 0, last, 0, &err) == RQ4_ERR_ARG, "n = 0");
    CHECK(rq4_forward(m, NULL, 1, last, 0, &err) == RQ4_ERR_ARG, "tokens NULL");
    CHECK(rq4_forward(NULL, tokens, 1, last, 0, &err) == RQ4_ERR_ARG, "model NULL");
    int32_t *many = calloc((size_t)n_ctx, sizeof(int32_t));
    CHECK(rq4_forward(m, many, n_ctx - 4, NULL, 0, &err) == RQ4_ERR_CONTEXT_FULL, "context full");
    CHECK(rq4_position(m) == 5, "position after errors: %d", rq4_position(m));
    CHECK(rq4_rewind(m, 6, &err) == RQ4_ERR_ARG, "rewind past the position");
    CHECK(rq4_rewind(m, -1, &err) == RQ4_ERR_ARG, "rewind to -1");
    CHECK(rq4_forward(m, many, n_ctx - 5, NULL, 0, &err) == RQ4_OK, "fill the context exactly: %s", err.message);
    CHECK(rq4_forward(m, many, 1, NULL, 0, &err) == RQ4_ERR_CONTEXT_FULL, "one more than the context");
    CHECK(rq4_memory_needed(m, 0, RQ4_KV_F16) < rq4_memory_needed(m, 0, RQ4_KV_F32), "f16 cache is smaller");
    rq4_close(m);
    free(many);

    rq4_model *none = (rq4_model *)&err; /* must be set to NULL on failure */
    CHECK(rq4_open("/nonexistent/model.rq4", NULL, &none, &err) == RQ4_ERR_IO && none == NULL, "missing file");
    CHECK(rq4_open(".", NULL, &none, &err) == RQ4_ERR_IO && none == NULL, "a directory");
    rq4_options o;
    rq4_default_options(&o);
    o.n_threads = -1;
    CHECK(rq4_open(path, &o, &none, &err) == RQ4_ERR_ARG && none == NULL, "n_threads -1");
    rq4_default_options(&o);
    o.max_memory = 1000;
    CHECK(rq4_open(path, &o, &none, &err) == RQ4_ERR_MEMORY_LIMIT && none == NULL, "max_memory");
    rq4_close(NULL);
    for (int code = 0; code <= 9; code++) CHECK(rq4_strerror(code)[0] != '\0', "strerror %d", code);
    test_decode(path);

    free(one_thread);
    free(tokens);
    free(batched);
    free(stepped);
    free(other);
    free(last);
    if (failures) {
        printf("%d FAILURES\n", failures);
        return 1;
    }
    printf("OK: engine tests passed\n");
    return 0;
}
