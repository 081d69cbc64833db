/* Compares every kernel set of kernels_available() with kernels_scalar, bit for
 * bit (memcmp of the outputs), on random data of many shapes: row lengths 32 ..
 * 8192 (odd group counts, shorter last groups), group sizes 32 .. 4096, 1 .. 70
 * tokens, output strides > 1, unaligned pointers, all-zero groups, extreme
 * values (int4 -8/7, int8 -128/127, activations +-127), Q4A minimums, and
 * activations made by quantize_act from random floats.
 *
 *   test_kernels            run everything; exit 1 on any mismatch
 *   test_kernels -q         quick subset (for emulators)
 * RUNQ4_KERNEL (read by kernels_select) does not restrict this test: it
 * checks every set the CPU supports.
 */
#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }
static float rnd_unit(void) { return (float)rnd() / 4294967296.0f; }

/* a random finite fp16: normal or subnormal, either sign, sometimes zero */
static uint16_t rnd_half(void) {
    uint32_t r = rnd();
    if (r % 16 == 0) return 0;
    uint16_t exp = (uint16_t)(r % 16 == 1 ? 0 : 1 + (r >> 8) % 30); /* 0 = subnormal; never 31 */
    return (uint16_t)(((r >> 4) & 1) << 15 | exp << 10 | ((r >> 16) & 0x3ff));
}

/* a typical weight scale: around 0.002 .. 0.05 */
static uint16_t rnd_half_small(void) { return (uint16_t)(0x1800 + rnd() % 0x0c00 + ((rnd() & 1) << 15)); }

enum { MODE_RANDOM, MODE_EXTREME, MODE_SPARSE, MODE_QUANTIZED, N_MODES };
static const char *mode_names[N_MODES] = {"random", "extreme", "zero-groups", "quantize_act"};

typedef struct buffers {
    qact x;
    uint8_t *wq_q4, *wq_q8; /* with a 1-byte offset from malloc: unaligned */
    uint16_t *wd, *wm;
    float *out_ref, *out;
    void *raw[4];
} buffers;

static void free_case(buffers *b) {
    for (int i = 0; i < 4; i++) free(b->raw[i]);
    free(b->x.d);
    free(b->x.s);
    free(b->wd);
    free(b->wm);
    free(b->out_ref);
    free(b->out);
    memset(b, 0, sizeof *b);
}

/* Exact sizes (plus the misalignment offset), so that a kernel reading past a
 * row, a token or a scale array is caught by ASan/valgrind builds of this test. */
static void alloc_case(buffers *b, int n, int gs, int ntok, size_t stride) {
    free_case(b);
    int ng = (n + gs - 1) / gs;
    b->raw[0] = malloc((size_t)ntok * n + 1);
    b->x.q = (int8_t *)b->raw[0] + 1; /* deliberately unaligned */
    b->x.d = malloc(sizeof(float) * (size_t)ntok * ng);
    b->x.s = malloc(sizeof(int32_t) * (size_t)ntok * ng);
    b->raw[1] = malloc((size_t)n / 2 + 1);
    b->wq_q4 = (uint8_t *)b->raw[1] + 1;
    b->raw[2] = malloc((size_t)n + 3);
    b->wq_q8 = (uint8_t *)b->raw[2] + 3;
    b->wd = malloc(sizeof(uint16_t) * (size_t)ng);
    b->wm = malloc(sizeof(uint16_t) * (size_t)ng);
    b->out_ref = malloc(sizeof(float) * (size_t)ntok * stride);
    b->out = malloc(sizeof(float) * (size_t)ntok * stride);
}

static void fill_case(buffers *b, int n, int gs, int ntok, int mode, size_t stride) {
    alloc_case(b, n, gs, ntok, stride);
    qact *x = &b->x;
    x->n = n;
    x->gs = gs;
    x->ngroups = (n + gs - 1) / gs;
    x->ntok = ntok;
    int ng = x->ngroups;
    /* activations */
    if (mode == MODE_QUANTIZED) {
        float *f = malloc(sizeof(float) * (size_t)n);
        for (int t = 0; t < ntok; t++) {
            float scale = rnd() % 8 == 0 ? 0.0f : (float)pow(10.0, rnd_int(-4, 3));
            for (int i = 0; i < n; i++) f[i] = (rnd_unit() * 2.0f - 1.0f) * scale;
            quantize_act(x, t, f);
        }
        free(f);
    } else {
        for (int t = 0; t < ntok; t++) {
            for (int g = 0; g < ng; g++) {
                int start = g * gs, end = start + gs < n ? start + gs : n;
                int zero = mode == MODE_SPARSE && rnd() % 3 == 0;
                int32_t s = 0;
                for (int i = start; i < end; i++) {
                    int v;
                    if (zero) v = 0;
                    else if (mode == MODE_EXTREME) v = rnd() % 2 ? 127 : -127;
                    else v = rnd_int(-127, 127);
                    x->q[(size_t)t * n + i] = (int8_t)v;
                    s += v;
                }
                x->s[(size_t)t * ng + g] = s;
                float dg = zero ? 0.0f : rnd_unit() * 0.1f;
                if (mode == MODE_EXTREME) dg = rnd() % 2 ? 1e-3f : 65504.0f * (rnd_unit() + 0.5f);
                x->d[(size_t)t * ng + g] = dg;
            }
        }
    }
    /* weights: one row each of Q4 (Q4S and Q4A read the same bytes) and Q8 */
    for (int g = 0; g < ng; g++) {
        int start = g * gs, end = start + gs < n ? start + gs : n;
        int zero = mode == MODE_SPARSE && rnd() % 3 == 0;
        int ext = mode == MODE_EXTREME ? rnd_int(0, 3) : -1;
        for (int i = start; i < end; i += 2) {
            uint8_t byte;
            if (zero) byte = 0;
            else if (ext == 0) byte = 0x88;        /* -8, -8 (Q4A: 8, 8) */
            else if (ext == 1) byte = 0x77;        /* 7, 7 */
            else if (ext == 2) byte = 0xff;        /* -1 / 15 */
            else byte = (uint8_t)rnd();
            b->wq_q4[i / 2] = byte;
        }
        for (int i = start; i < end; i++) {
            int v;
            if (zero) v = 0;
            else if (ext == 0) v = -128;
            else if (ext == 1) v = 127;
            else if (ext == 2) v = rnd() % 2 ? -128 : 127;
            else v = rnd_int(-128, 127);
            b->wq_q8[i] = (uint8_t)(int8_t)v;
        }
        b->wd[g] = zero ? 0 : mode == MODE_RANDOM ? rnd_half() : rnd_half_small();
        b->wm[g] = zero ? 0 : mode == MODE_RANDOM ? rnd_half() : rnd_half_small();
    }
}

typedef struct tally {
    long cases, mismatches;
} tally;

/* runs one kernel of `set` and of the scalar reference, compares the bytes */
static void compare(const char *set_name, const char *kind, dot_fn ref, dot_fn fn, buffers *b,
                    const uint8_t *wq, int mode, size_t stride, tally *t) {
    size_t len = (size_t)b->x.ntok * stride;
    for (size_t i = 0; i < len; i++) b->out_ref[i] = b->out[i] = -12345.0f; /* untouched gaps */
    ref(&b->x, wq, b->wd, b->wm, b->out_ref, stride);
    fn(&b->x, wq, b->wd, b->wm, b->out, stride);
    t->cases++;
    if (memcmp(b->out_ref, b->out, len * sizeof(float)) != 0) {
        if (t->mismatches < 10) {
            for (int k = 0; k < b->x.ntok; k++) {
                float r = b->out_ref[(size_t)k * stride], o = b->out[(size_t)k * stride];
                if (memcmp(&r, &o, sizeof r) != 0) {
                    fprintf(stderr, "MISMATCH %s %s mode=%s n=%d gs=%d ntok=%d stride=%zu tok=%d: ref %.9g got %.9g\n",
                            set_name, kind, mode_names[mode], b->x.n, b->x.gs, b->x.ntok, stride, k, r, o);
                    break;
                }
            }
        }
        t->mismatches++;
    }
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "-q") == 0;
    const int max_n = 8192, max_tok = 70, max_stride = 3;
    buffers b;
    memset(&b, 0, sizeof b);

    static const int ns[] = {32, 64, 96, 160, 224, 576, 1000 / 32 * 32, 1536, 2048, 2080, 4096, 5632, 8192};
    static const int gss[] = {32, 64, 96, 128, 256, 4096};
    static const int ntoks[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33, 64, 70};
    const int n_ns = sizeof ns / sizeof ns[0], n_gss = sizeof gss / sizeof gss[0];
    const int n_ntoks = sizeof ntoks / sizeof ntoks[0];

    const kernel_set *const *sets = kernels_available();
    int n_sets = 0;
    printf("kernel sets available:");
    for (int i = 0; sets[i]; i++, n_sets++) printf(" %s", sets[i]->name);
    printf("  (selected: %s)\n", kernels_select()->name);

    long total_mismatches = 0;
    for (int si = 0; sets[si]; si++) {
        const kernel_set *ks = sets[si];
        if (ks == &kernels_scalar) continue;
        tally t = {0, 0};
        long shapes = 0;
        for (int ni = 0; ni < n_ns; ni++) {
            for (int gi = 0; gi < n_gss; gi++) {
                for (int ti = 0; ti < n_ntoks; ti++) {
                    int n = ns[ni], gs = gss[gi], ntok = ntoks[ti];
                    /* keep the run short: long rows with many tokens only sometimes */
                    if ((long)n * ntok > (quick ? 40000L : 200000L) && (ni + gi + ti) % 3) continue;
                    if (quick && (ni + gi + ti) % 4) continue;
                    shapes++;
                    for (int mode = 0; mode < N_MODES; mode++) {
                        size_t stride = (size_t)1 + (size_t)((ni + ti + mode) % max_stride);
                        fill_case(&b, n, gs, ntok, mode, stride);
                        compare(ks->name, "q4s", kernels_scalar.dot_q4s, ks->dot_q4s, &b, b.wq_q4, mode, stride, &t);
                        compare(ks->name, "q4a", kernels_scalar.dot_q4a, ks->dot_q4a, &b, b.wq_q4, mode, stride, &t);
                        compare(ks->name, "q8", kernels_scalar.dot_q8, ks->dot_q8, &b, b.wq_q8, mode, stride, &t);
                    }
                }
            }
        }
        /* random shapes: any multiple of 32 up to 8192, any group size */
        for (int r = 0; r < (quick ? 40 : 300); r++) {
            int n = 32 * rnd_int(1, max_n / 32), gs = 32 * rnd_int(1, 20), ntok = rnd_int(1, max_tok);
            if ((long)n * ntok > 150000L) ntok = 1 + (int)(150000L / n);
            int mode = rnd_int(0, N_MODES - 1);
            size_t stride = (size_t)rnd_int(1, max_stride);
            shapes++;
            fill_case(&b, n, gs, ntok, mode, stride);
            compare(ks->name, "q4s", kernels_scalar.dot_q4s, ks->dot_q4s, &b, b.wq_q4, mode, stride, &t);
            compare(ks->name, "q4a", kernels_scalar.dot_q4a, ks->dot_q4a, &b, b.wq_q4, mode, stride, &t);
            compare(ks->name, "q8", kernels_scalar.dot_q8, ks->dot_q8, &b, b.wq_q8, mode, stride, &t);
        }
        printf("%-12s %ld shapes, %ld comparisons, %ld mismatches\n", ks->name, shapes, t.cases, t.mismatches);
        total_mismatches += t.mismatches;
    }
    if (n_sets <= 1) printf("only the scalar reference is available on this CPU: nothing to compare\n");
    printf(total_mismatches ? "FAIL: %ld mismatches\n" : "OK: all kernel sets bit-identical to scalar\n",
           total_mismatches);
    free_case(&b);
    return total_mismatches ? 1 : 0;
}
