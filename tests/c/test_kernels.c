/* Compares every kernel set of rq4_kernels_available() with rq4_kernels_scalar, bit for
 * bit (memcmp of the outputs), on random data of many shapes: row lengths 32 ..
 * 8192 (odd block and group counts, shorter last groups) and 33024 (past the
 * 1024 blocks x86_256.h's one-token kernel takes in one window), group sizes 32 ..
 * 4096 and random multiples of 32 (gs / 32 = 3, 5, ... blocks per group),
 * 1 .. 96 tokens, 1 .. 40 rows per matrix with calls on a sub-range
 * r0 .. r1 (outputs outside it and the gaps of out_stride must stay untouched,
 * every output inside it must be written), out_stride >= rows, padded weight
 * rows (row_bytes > the packed row), unaligned pointers, all-zero activation
 * blocks and weight groups, extreme values (int4 -8/7, int8 -128/127,
 * activations +-127, whole blocks of one sign), Q4A minimums, and
 * activations made by rq4_quantize_act from random floats.
 *
 * Every buffer has its exact size (after a misaligning offset), so that a
 * kernel reading past a row, a token, a scale array or the last output is
 * caught by ASan/valgrind builds of this test (make test-kernels-asan).
 *
 *   test_kernels            run everything; exit 1 on any mismatch
 *   test_kernels -q         quick subset (for emulators)
 * RUNQ4_KERNEL (read by rq4_kernels_select) does not restrict this test: it
 * checks every set the CPU supports. When only the scalar reference is
 * available it is run against itself (the checks of untouched and written
 * outputs still apply).
 */
#include "kernels/kernels.h"

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
static const char *mode_names[N_MODES] = {"random", "extreme", "zero-blocks", "quantize_act"};

/* One test case: a rows x n weight matrix, ntok tokens, a call on rows r0..r1 */
typedef struct shape {
    int n, gs, ntok, rows, r0, r1, mode;
    int touch_pages; /* qmat.touch_pages: the one-token loops' loads a page ahead */
    size_t stride; /* out_stride, >= rows */
    size_t pad;    /* row_bytes = packed row + pad (the last row has none) */
} shape;

typedef struct buffers {
    qact x;
    qmat w4s, w4a, w8; /* Q4S and Q4A read the same bytes and scales; Q4S and Q8 get m = NULL */
    qmat w4s_r4, w4a_r4; /* the same Q4 rows interleaved (kernels.h), random padding rows */
    qmat w4t, w4t_id;  /* Q4T: the same bytes and scales with a random table, and with the table of
                        * Q4S's two's complement (whose outputs must be Q4S's) */
    int8_t table[16], table_id[16];
    float *out_ref, *out;
    size_t out_len;    /* (ntok - 1) * stride + rows: exact */
    void *raw[24];
    int nraw;
} buffers;

static void free_case(buffers *b) {
    for (int i = 0; i < b->nraw; i++) free(b->raw[i]);
    memset(b, 0, sizeof *b);
}

/* bytes from malloc, returned `off` bytes in (deliberately misaligned) */
static void *alloc_off(buffers *b, size_t bytes, size_t off) {
    void *p = malloc(bytes + off);
    if (!p) {
        fprintf(stderr, "test_kernels: out of memory\n");
        exit(2);
    }
    b->raw[b->nraw++] = p;
    return (char *)p + off;
}

static void fill_case(buffers *b, const shape *s) {
    free_case(b);
    const int n = s->n, nb = n / QK, ntok = s->ntok, rows = s->rows, gs = s->gs, mode = s->mode;
    const int ng = (n + gs - 1) / gs;
    const size_t rb4 = (size_t)n / 2 + s->pad, rb8 = (size_t)n + s->pad;

    qact *x = &b->x;
    x->n = n;
    x->nb = nb;
    x->ntok = ntok;
    x->q = alloc_off(b, (size_t)ntok * (size_t)n, 1);
    x->qp = alloc_off(b, (size_t)ntok * (size_t)n, 3);
    x->d = alloc_off(b, sizeof(float) * (size_t)ntok * (size_t)nb, sizeof(float));
    x->s = alloc_off(b, sizeof(int32_t) * (size_t)ntok * (size_t)nb, sizeof(int32_t));
    uint8_t *q4 = alloc_off(b, (size_t)(rows - 1) * rb4 + (size_t)n / 2, 1);
    uint8_t *q8 = alloc_off(b, (size_t)(rows - 1) * rb8 + (size_t)n, 3);
    uint16_t *wd = alloc_off(b, sizeof(uint16_t) * (size_t)rows * (size_t)ng, sizeof(uint16_t));
    uint16_t *wm = alloc_off(b, sizeof(uint16_t) * (size_t)rows * (size_t)ng, sizeof(uint16_t));
    b->out_len = (size_t)(ntok - 1) * s->stride + (size_t)rows;
    b->out_ref = alloc_off(b, sizeof(float) * b->out_len, sizeof(float));
    b->out = alloc_off(b, sizeof(float) * b->out_len, sizeof(float));
    b->w4s = (qmat){q4, wd, NULL, rb4, n, gs, ng, rows, NULL, s->touch_pages};
    b->w4a = (qmat){q4, wd, wm, rb4, n, gs, ng, rows, NULL, s->touch_pages};
    b->w8 = (qmat){q8, wd, NULL, rb8, n, gs, ng, rows, NULL, s->touch_pages};
    /* a random table (the kernels assume no order), extreme: -128 and 127 for
     * the extreme bytes' nibbles 8, 7 and 15; and the two's complement of Q4S */
    for (int i = 0; i < 16; i++) {
        b->table[i] = (int8_t)(mode == MODE_EXTREME ? (i % 2 ? 127 : -128) : rnd_int(-128, 127));
        b->table_id[i] = (int8_t)((i ^ 8) - 8);
    }
    b->w4t = (qmat){q4, wd, NULL, rb4, n, gs, ng, rows, b->table, s->touch_pages};
    b->w4t_id = (qmat){q4, wd, NULL, rb4, n, gs, ng, rows, b->table_id, s->touch_pages};

    /* activations: per token, blocks of QK */
    if (mode == MODE_QUANTIZED) {
        float *f = malloc(sizeof(float) * (size_t)n);
        if (!f) exit(2);
        for (int t = 0; t < ntok; t++) {
            float scale = rnd() % 8 == 0 ? 0.0f : (float)pow(10.0, rnd_int(-4, 3));
            for (int i = 0; i < n; i++) f[i] = (rnd_unit() * 2.0f - 1.0f) * scale;
            for (int k = 0; k < nb; k++)
                if (rnd() % 8 == 0) memset(f + k * QK, 0, sizeof(float) * QK); /* d = 0 blocks */
            rq4_quantize_act(x, t, f);
        }
        free(f);
    } else {
        for (int t = 0; t < ntok; t++) {
            for (int k = 0; k < nb; k++) {
                int zero = mode == MODE_SPARSE && rnd() % 3 == 0;
                int sign = mode == MODE_EXTREME ? rnd_int(-1, 1) : 0; /* a whole block of +-127: the sums' extremes */
                int32_t sum = 0;
                for (int i = k * QK; i < (k + 1) * QK; i++) {
                    int v;
                    if (zero) v = 0;
                    else if (sign) v = 127 * sign;
                    else if (mode == MODE_EXTREME) v = rnd() % 2 ? 127 : -127;
                    else v = rnd_int(-127, 127);
                    x->q[(size_t)t * n + i] = (int8_t)v;
                    sum += v;
                }
                x->s[(size_t)t * nb + k] = sum;
                float dk = zero ? 0.0f : rnd_unit() * 0.1f;
                if (mode == MODE_EXTREME) dk = rnd() % 2 ? 1e-3f : 65504.0f * (rnd_unit() + 0.5f);
                x->d[(size_t)t * nb + k] = dk;
            }
            rq4_permute_act(x, t);
        }
    }

    /* the 16-token tiles again, interleaved, and their octets (exact sizes,
     * padding included) */
    size_t tiled = (size_t)tiled_tokens(ntok);
    x->qt = alloc_off(b, tiled * (size_t)n, 1);
    x->qo = alloc_off(b, tiled * (size_t)n, 1);
    x->dt = alloc_off(b, sizeof(float) * tiled * (size_t)nb, sizeof(float));
    x->st = alloc_off(b, sizeof(int32_t) * tiled * (size_t)nb, sizeof(int32_t));
    rq4_interleave_act(x);

    /* weights: rows of Q4 (one byte = two values) and of Q8, padding bytes random */
    for (int r = 0; r < rows; r++) {
        uint8_t *row4 = q4 + (size_t)r * rb4, *row8 = q8 + (size_t)r * rb8;
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
                row4[i / 2] = byte;
            }
            for (int i = start; i < end; i++) {
                int v;
                if (zero) v = 0;
                else if (ext == 0) v = -128;
                else if (ext == 1) v = 127;
                else if (ext == 2) v = rnd() % 2 ? -128 : 127;
                else v = rnd_int(-128, 127);
                row8[i] = (uint8_t)(int8_t)v;
            }
            size_t k = (size_t)r * (size_t)ng + (size_t)g;
            wd[k] = zero ? 0 : mode == MODE_RANDOM ? rnd_half() : rnd_half_small();
            wm[k] = zero ? 0 : mode == MODE_RANDOM ? rnd_half() : rnd_half_small();
        }
        if (r < rows - 1)
            for (size_t i = 0; i < s->pad; i++) {
                row4[(size_t)n / 2 + i] = (uint8_t)rnd();
                row8[(size_t)n + i] = (uint8_t)rnd();
            }
    }

    /* the Q4 rows interleaved, rows padded to a multiple of R4 with random
     * values and scales (the kernels compute them, never write them) */
    const int groups = (rows + R4 - 1) / R4;
    const size_t grow = (size_t)R4 * (size_t)n / 2;
    uint8_t *qi = alloc_off(b, (size_t)groups * grow, 1);
    uint16_t *di = alloc_off(b, sizeof(uint16_t) * (size_t)groups * (size_t)ng * R4, sizeof(uint16_t));
    uint16_t *mi = alloc_off(b, sizeof(uint16_t) * (size_t)groups * (size_t)ng * R4, sizeof(uint16_t));
    for (int r = 0; r < groups * R4; r++) {
        uint8_t *dst = qi + (size_t)(r / R4) * grow;
        for (int blk = 0; blk < nb; blk++)
            for (int k = 0; k < 4; k++)
                for (int j = 0; j < 4; j++) {
                    uint8_t v = r < rows ? q4[(size_t)r * rb4 + (size_t)blk * 16 + (size_t)(4 * k + j)] : (uint8_t)rnd();
                    dst[(size_t)blk * 64 + (size_t)(4 * k + r % R4) * 4 + (size_t)j] = v;
                }
        for (int g = 0; g < ng; g++) {
            size_t at = ((size_t)(r / R4) * (size_t)ng + (size_t)g) * R4 + (size_t)(r % R4);
            di[at] = r < rows ? wd[(size_t)r * (size_t)ng + (size_t)g] : rnd_half_small();
            mi[at] = r < rows ? wm[(size_t)r * (size_t)ng + (size_t)g] : rnd_half_small();
        }
    }
    b->w4s_r4 = (qmat){qi, di, NULL, grow, n, gs, ng, rows, NULL, s->touch_pages};
    b->w4a_r4 = (qmat){qi, di, mi, grow, n, gs, ng, rows, NULL, s->touch_pages};
}

typedef struct tally {
    long cases, mismatches;
} tally;

/* a signalling NaN: no arithmetic produces it, so an output still holding it
 * was not written */
static const uint32_t SENTINEL = 0x7fbadbadu;

static int is_sentinel(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u == SENTINEL;
}

static void print_case(const char *what, const char *set_name, const char *kind, const shape *s) {
    fprintf(stderr, "%s %s %s mode=%s n=%d gs=%d ntok=%d rows=%d r0=%d r1=%d stride=%zu pad=%zu", what, set_name,
            kind, mode_names[s->mode], s->n, s->gs, s->ntok, s->rows, s->r0, s->r1, s->stride, s->pad);
}

/* The first output of `out` (ntok x stride) that breaks the rules: written
 * outside [r0, r1), or not written inside; -1 if none. */
static long check_written(const float *out, const buffers *b, const shape *s) {
    for (size_t i = 0; i < b->out_len; i++) {
        int r = (int)(i % s->stride);
        int inside = r >= s->r0 && r < s->r1;
        if (inside == is_sentinel(out[i])) return (long)i;
    }
    return -1;
}

/* runs one kernel of `set` (on w) and of the scalar reference (on wref: the
 * same values, perhaps in another layout), compares the bytes */
static void compare(const char *set_name, const char *kind, dot_fn ref, const qmat *wref, dot_fn fn, buffers *b,
                    const qmat *w, const shape *s, tally *t) {
    float sentinel;
    memcpy(&sentinel, &SENTINEL, sizeof sentinel);
    for (size_t i = 0; i < b->out_len; i++) b->out_ref[i] = b->out[i] = sentinel;
    ref(&b->x, wref, s->r0, s->r1, b->out_ref, s->stride);
    fn(&b->x, w, s->r0, s->r1, b->out, s->stride);
    t->cases++;
    long bad_ref = check_written(b->out_ref, b, s), bad = check_written(b->out, b, s);
    if (memcmp(b->out_ref, b->out, b->out_len * sizeof(float)) == 0 && bad_ref < 0 && bad < 0) return;
    if (t->mismatches < 10) {
        if (bad_ref >= 0 || bad >= 0) {
            long i = bad_ref >= 0 ? bad_ref : bad;
            print_case("BAD OUTPUT RANGE", bad_ref >= 0 ? "scalar" : set_name, kind, s);
            fprintf(stderr, ": out[%ld] (token %ld, row %ld) %s\n", i, i / (long)s->stride, i % (long)s->stride,
                    (i % (long)s->stride >= s->r0 && i % (long)s->stride < s->r1) ? "not written" : "written");
        } else {
            for (size_t i = 0; i < b->out_len; i++) {
                float r = b->out_ref[i], o = b->out[i];
                uint32_t ur, uo;
                memcpy(&ur, &r, sizeof ur);
                memcpy(&uo, &o, sizeof uo);
                if (ur != uo) {
                    print_case("MISMATCH", set_name, kind, s);
                    fprintf(stderr, " token=%zu row=%zu: ref %.9g (0x%08x) got %.9g (0x%08x)\n", i / s->stride,
                            i % s->stride, r, (unsigned)ur, o, (unsigned)uo);
                    break;
                }
            }
        }
    }
    t->mismatches++;
}

static void compare_all(const kernel_set *ks, buffers *b, const shape *s, tally *t) {
    fill_case(b, s);
    const kernel_set *ref = &rq4_kernels_scalar;
    compare(ks->name, "q4s", ref->dot_q4s, &b->w4s, ks->dot_q4s, b, &b->w4s, s, t);
    compare(ks->name, "q4a", ref->dot_q4a, &b->w4a, ks->dot_q4a, b, &b->w4a, s, t);
    compare(ks->name, "q8", ref->dot_q8, &b->w8, ks->dot_q8, b, &b->w8, s, t);
    /* the interleaved layout against the row-major reference: the contract
     * is the same, so are the outputs */
    compare(ks->name, "q4s_r4", ref->dot_q4s, &b->w4s, ks->dot_q4s_r4, b, &b->w4s_r4, s, t);
    compare(ks->name, "q4a_r4", ref->dot_q4a, &b->w4a, ks->dot_q4a_r4, b, &b->w4a_r4, s, t);
    compare(ks->name, "q4t", rq4_dot_q4t_scalar, &b->w4t, rq4_kernels_q4t(ks), b, &b->w4t, s, t);
    /* the reference itself: Q4T through the two's complement table is Q4S */
    compare(ks->name, "q4t=q4s", ref->dot_q4s, &b->w4s, rq4_kernels_q4t(ks), b, &b->w4t_id, s, t);
}

/* a random call range inside `rows`: often all of them, often a strict part */
static void pick_range(shape *s) {
    int k = rnd() % 3;
    if (k == 0 || s->rows == 1) {
        s->r0 = 0;
        s->r1 = s->rows;
    } else if (k == 1 && s->rows >= 3) { /* r0 > 0 and r1 < rows */
        s->r0 = rnd_int(1, s->rows - 2);
        s->r1 = rnd_int(s->r0 + 1, s->rows - 1);
    } else {
        s->r0 = rnd_int(0, s->rows - 1);
        s->r1 = rnd_int(s->r0 + 1, s->rows);
    }
}

/* rq4_quantize_act (vectors, compiled per CPU) against the plain per-value rule
 * of kernels.h, bit for bit: d = amax / 127, q = round-half-even(x / d)
 * clamped to [-127, 127], NaN -> 0, s = sum of q, on random, huge, tiny,
 * subnormal, zero, infinite and NaN values. Returns the mismatches. */
static long check_quantize(void) {
    enum { N = 1024, NB = N / QK };
    static int8_t q[N], qp[N], q_ref[N];
    static float x[N], d[NB];
    static int32_t s[NB];
    qact a = {.q = q, .qp = qp, .d = d, .s = s, .n = N, .nb = NB, .ntok = 1};
    long bad = 0;
    for (int it = 0; it < 2000; it++) {
        for (int i = 0; i < N; i++) {
            uint32_t u = rnd();
            float v;
            switch ((it + i / QK) % 7) {
            case 0: v = (float)((int)(u % 2001) - 1000) * 1e-3f; break;
            case 1: memcpy(&v, &u, sizeof v); break; /* any bits */
            case 2: v = 0.0f; break;
            case 3: v = u % 3 == 0 ? NAN : u % 3 == 1 ? -INFINITY : -1e-40f; break;
            case 4: v = (float)((int)(u % 255) - 127) * 0.5f; break; /* ties */
            case 5: v = (float)((int)(u % 2001) - 1000) * 1e30f; break;
            default: v = (float)((int)(u % 2001) - 1000) * 1e-42f; break;
            }
            x[i] = v;
        }
        rq4_quantize_act(&a, 0, x);
        for (int b = 0; b < NB; b++) {
            /* the largest |x|, NaN skipped; on the bits, so that no compiler
             * makes it an fmaxnm (which returns NaN for a signalling NaN) */
            uint32_t top = 0;
            for (int i = 0; i < QK; i++) {
                uint32_t u;
                memcpy(&u, &x[b * QK + i], sizeof u);
                u &= 0x7fffffffu;
                if (u <= 0x7f800000u && u > top) top = u;
            }
            float amax;
            memcpy(&amax, &top, sizeof amax);
            float dr = amax / 127.0f;
            int32_t sr = 0;
            for (int i = 0; i < QK; i++) {
                float r = dr > 0.0f ? nearbyintf(x[b * QK + i] / dr) : 0.0f;
                r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r == r ? r : 0.0f;
                q_ref[b * QK + i] = (int8_t)r;
                sr += (int8_t)r;
            }
            if (memcmp(&dr, &d[b], sizeof dr) || sr != s[b] || memcmp(q_ref + b * QK, q + b * QK, QK)) bad++;
        }
    }
    printf("quantize_act  %d blocks, %ld mismatches with the per-value rule\n", 2000 * NB, bad);
    return bad;
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "-q") == 0;
    const int max_n = 8192, max_tok = 96;
    buffers b;
    memset(&b, 0, sizeof b);

    static const int ns[] = {32, 64, 96, 160, 224, 576, 1000 / 32 * 32, 1536, 2048, 2080, 4096, 5632, 8192, 33024};
    static const int gss[] = {32, 64, 96, 128, 160, 256, 4096};
    static const int ntoks[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 24, 31, 32, 33, 48, 64, 70, 96};
    const int n_ns = sizeof ns / sizeof ns[0], n_gss = sizeof gss / sizeof gss[0];
    const int n_ntoks = sizeof ntoks / sizeof ntoks[0];

    const kernel_set *const *sets = rq4_kernels_available();
    int n_sets = 0;
    printf("kernel sets available:");
    for (int i = 0; sets[i]; i++, n_sets++) printf(" %s", sets[i]->name);
    printf("  (selected: %s)\n", rq4_kernels_select()->name);
    if (n_sets <= 1) printf("only the scalar reference is available on this CPU: it is checked against itself\n");

    long total_mismatches = 0;
    for (int si = 0; sets[si]; si++) {
        const kernel_set *ks = sets[si];
        if (strcmp(ks->name, rq4_kernels_scalar.name) == 0 && n_sets > 1) continue;
        tally t = {0, 0};
        long shapes = 0;
        /* the table: every row length x group size x token count (the long
         * ones only sometimes), 1 .. 9 rows, each data mode */
        for (int ni = 0; ni < n_ns; ni++) {
            for (int gi = 0; gi < n_gss; gi++) {
                for (int ti = 0; ti < n_ntoks; ti++) {
                    int n = ns[ni], gs = gss[gi], ntok = ntoks[ti];
                    if ((long)n * ntok > (quick ? 40000L : 200000L) && (ni + gi + ti) % 3) continue;
                    if (quick && (ni + gi + ti) % 4) continue;
                    shapes++;
                    for (int mode = 0; mode < N_MODES; mode++) {
                        shape s = {0};
                        s.n = n;
                        s.gs = gs;
                        s.ntok = ntok;
                        s.mode = mode;
                        s.rows = 1 + (ni + 2 * gi + 3 * ti + mode) % 9;
                        if ((long)n * ntok * s.rows > 1000000L) s.rows = 1 + s.rows % 3;
                        pick_range(&s);
                        s.stride = (size_t)s.rows + (size_t)((ni + ti + mode) % 3);
                        s.pad = (ni + gi + mode) % 4 == 3 ? (size_t)rnd_int(1, 40) : 0;
                        s.touch_pages = (ni + ti + mode) % 2;
                        compare_all(ks, &b, &s, &t);
                    }
                }
            }
        }
        /* random shapes: any multiple of 32 up to 8192, any group size up to
         * 640 or >= the row, few tokens and many rows (decoding) or many
         * tokens and few rows, now and then an empty range r0 == r1 */
        for (int r = 0; r < (quick ? 60 : 600); r++) {
            shape s = {0};
            s.n = 32 * rnd_int(1, max_n / 32);
            s.gs = rnd() % 8 ? 32 * rnd_int(1, 20) : 32 * rnd_int(s.n / 32, s.n / 32 + 3);
            int decode = rnd() % 2;
            s.ntok = decode ? rnd_int(1, 4) : rnd_int(1, max_tok);
            s.rows = decode ? rnd_int(1, 40) : rnd_int(1, 9);
            if ((long)s.n * s.ntok * s.rows > 300000L) s.ntok = 1 + (int)(300000L / ((long)s.n * s.rows));
            s.mode = rnd_int(0, N_MODES - 1);
            pick_range(&s);
            if (r % 50 == 7) s.r1 = s.r0; /* nothing to do, nothing written */
            s.stride = (size_t)s.rows + (size_t)(rnd() % 4 ? rnd_int(0, 2) : rnd_int(3, 100));
            s.pad = rnd() % 4 ? 0 : (size_t)rnd_int(1, 70);
            s.touch_pages = rnd() % 2;
            shapes++;
            compare_all(ks, &b, &s, &t);
        }
        printf("%-12s %ld shapes, %ld comparisons, %ld mismatches\n", ks->name, shapes, t.cases, t.mismatches);
        total_mismatches += t.mismatches;
    }
    total_mismatches += check_quantize();
    printf(total_mismatches ? "FAIL: %ld mismatches\n" : "OK: all kernel sets bit-identical to scalar\n",
           total_mismatches);
    free_case(&b);
    return total_mismatches ? 1 : 0;
}
