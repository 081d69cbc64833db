/* The scalar reference kernels, activation quantization and kernel dispatch.
 *
 * The scalar kernels define the arithmetic every other kernel set must
 * reproduce bit for bit (see the accumulation contract in kernels.h); they
 * are written for clarity first, then for what the compiler vectorizes well.
 */
#define _POSIX_C_SOURCE 200809L
#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Keep the compiler from fusing a*b+c into one fma: that changes rounding and
 * would break bit-identity between kernel sets and between machines. (GCC does
 * not contract in ISO C mode; clang honours this pragma.) */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__) && !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off") /* GNU C mode (-std=gnu11) contracts by default */
#endif

/* Tokens processed together per weight block: their lanes stay in cache
 * while the block's unpacked weights are reused. */
#define TOKEN_TILE 8

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* Unpacks the 16 bytes of one block into 32 values: byte j holds value 2j in
 * its low nibble and 2j+1 in its high nibble (docs/FORMAT.md). Q4S nibbles
 * are two's complement ((x ^ 8) - 8 maps 0..15 to 0..7, -8..-1), Q4A
 * nibbles unsigned 0..15. */
static void unpack_block(const uint8_t *src, int is_signed, int8_t *w) {
    int off = is_signed ? 8 : 0;
    for (int j = 0; j < QK / 2; j++) {
        uint8_t b = src[j];
        w[2 * j] = (int8_t)(((b & 0x0F) ^ off) - off);
        w[2 * j + 1] = (int8_t)(((b >> 4) ^ off) - off);
    }
}

static inline int32_t dot_block(const int8_t *a, const int8_t *b) {
    int32_t sum = 0;
    for (int i = 0; i < QK; i++) sum += (int32_t)a[i] * (int32_t)b[i];
    return sum;
}

enum { KIND_Q4S, KIND_Q4A, KIND_Q8 };

/* The one scalar kernel body; `kind` is a compile-time constant at each call
 * site below, so the branches on it disappear after inlining. */
static inline void dot_ref(int kind, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    const int nb = x->nb, bpg = w->gs / QK;
    for (int r = r0; r < r1; r++) {
        const uint8_t *wq = w->q + (size_t)r * w->row_bytes;
        const uint16_t *wd = w->d + (size_t)r * (size_t)w->ngroups;
        const uint16_t *wm = kind == KIND_Q4A ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
        for (int t0 = 0; t0 < x->ntok; t0 += TOKEN_TILE) {
            int nt = min_int(TOKEN_TILE, x->ntok - t0);
            float lane[TOKEN_TILE][LANES] = {{0}};
            for (int b = 0; b < nb; b++) {
                int8_t unpacked[QK];
                const int8_t *wb = unpacked;
                if (kind == KIND_Q8) wb = (const int8_t *)wq + b * QK;
                else unpack_block(wq + b * (QK / 2), kind == KIND_Q4S, unpacked);
                int g = b / bpg;
                float d = fp16_to_f32(wd[g]);
                float mn = kind == KIND_Q4A ? fp16_to_f32(wm[g]) : 0.0f;
                for (int t = 0; t < nt; t++) {
                    size_t row = (size_t)(t0 + t);
                    int32_t isum = dot_block(wb, x->q + row * (size_t)x->n + (size_t)b * QK);
                    float xd = x->d[row * (size_t)nb + (size_t)b];
                    float term = (d * xd) * (float)isum;
                    if (kind == KIND_Q4A) term = term + (mn * xd) * (float)x->s[row * (size_t)nb + (size_t)b];
                    lane[t][b % LANES] += term;
                }
            }
            for (int t = 0; t < nt; t++) out[(size_t)(t0 + t) * out_stride + (size_t)r] = sum_lanes(lane[t]);
        }
    }
}

static void dot_q4s_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4S, x, w, r0, r1, out, out_stride);
}

static void dot_q4a_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4A, x, w, r0, r1, out, out_stride);
}

static void dot_q8_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q8, x, w, r0, r1, out, out_stride);
}

const kernel_set kernels_scalar = {
    "scalar", dot_q4s_scalar, dot_q4a_scalar, dot_q8_scalar,
};

/* Per block of x[0..n): d = amax / 127, q = round-half-even(x / d) in
 * [-127, 127], s = sum of q. An all-zero group gets d = 0 and q = 0. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute) && defined(__ELF__)
#if __has_attribute(target_clones)
/* Also compiled for AVX2 and AVX-512 (chosen at load time): the division per
 * value is the cost, and wider vectors divide more at once. Division, the
 * rounding trick and the clamps are exact in every clone: same bits. */
#define QUANTIZE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef QUANTIZE_CLONES
#define QUANTIZE_CLONES
#endif

typedef float f32x16 __attribute__((vector_size(64))); /* GCC/clang vectors: lane-wise ops */
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef int8_t i8x16 __attribute__((vector_size(16)));

/* a ? b : c, lane by lane (a: all ones or zero; a macro, as a function
 * returning a 64-byte vector would tie the ABI to AVX-512) */
#define SELECT16(a, b, c) ((f32x16)(((a) & (i32x16)(b)) | (~(a) & (i32x16)(c))))

/* Lanes 8..15, 4..7 and 2..3 of v moved to lanes 0.. (the rest: don't care) */
#define HIGH_HALF(v) __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15)
#define HIGH_QUARTER(v) __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7)
#define HIGH_EIGHTH(v) __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3)

/* One block of QK values: returns its scale d, writes q and *sum. Written
 * with 16-lane vectors (GCC left the plain loops half scalar): the largest |x|
 * (a maximum is exact in any order, and NaN loses every comparison), then q,
 * then its sum. */
static inline __attribute__((always_inline)) float quantize_block(const float *restrict x, int8_t *restrict q,
                                                                  int32_t *sum) {
    f32x16 v[QK / 16], top = {0};
    memcpy(v, x, sizeof v);
    for (int h = 0; h < QK / 16; h++) {
        f32x16 a = (f32x16)((i32x16)v[h] & 0x7fffffff);
        top = SELECT16(a > top, a, top);
    }
    /* halvings, as vectors (lanes of the upper half onto the lower) */
    top = SELECT16(HIGH_HALF(top) > top, HIGH_HALF(top), top);
    top = SELECT16(HIGH_QUARTER(top) > top, HIGH_QUARTER(top), top);
    top = SELECT16(HIGH_EIGHTH(top) > top, HIGH_EIGHTH(top), top);
    float amax = top[1] > top[0] ? top[1] : top[0];
    float dg = amax / 127.0f;
    i32x16 s = {0};
    for (int h = 0; h < QK / 16; h++) {
        i32x16 qi = {0};
        if (dg > 0.0f) {
            /* round half to even: adding and subtracting 1.5 * 2^23 leaves no
             * fraction bits (|r| <= 127 here); same as nearbyintf */
            f32x16 r = (v[h] / dg + 12582912.0f) - 12582912.0f;
            r = SELECT16(r > 127.0f, (f32x16){0} + 127.0f, r);
            r = SELECT16(r < -127.0f, (f32x16){0} - 127.0f, r);
            r = SELECT16(r == r, r, (f32x16){0}); /* NaN: 0 */
            qi = __builtin_convertvector(r, i32x16);
        }
        i8x16 q8 = __builtin_convertvector(qi, i8x16);
        memcpy(q + 16 * h, &q8, sizeof q8);
        s += qi;
    }
    s += HIGH_HALF(s);
    s += HIGH_QUARTER(s);
    s += HIGH_EIGHTH(s);
    *sum = s[0] + s[1];
    return dg;
}

QUANTIZE_CLONES static void quantize_token(qact *a, int t, const float *x) {
    int8_t *q = a->q + (size_t)t * (size_t)a->n;
    float *d = a->d + (size_t)t * (size_t)a->nb;
    int32_t *s = a->s + (size_t)t * (size_t)a->nb;
    for (int b = 0; b < a->nb; b++) d[b] = quantize_block(x + b * QK, q + b * QK, &s[b]);
}

void permute_act(qact *a, int t) {
    const int8_t *q = a->q + (size_t)t * (size_t)a->n;
    int8_t *p = a->qp + (size_t)t * (size_t)a->n;
    for (int e = 0; e < a->n;) {
        int left = a->n - e, span = left >= 128 ? 128 : left >= 64 ? 64 : 32;
        for (int i = 0; i < span / 2; i++) {
            p[e + i] = q[e + 2 * i];
            p[e + span / 2 + i] = q[e + 2 * i + 1];
        }
        e += span;
    }
}

void interleave_act(qact *a) {
    a->ntile = a->qt ? tiled_tokens(a->ntok) / 16 : 0;
    const size_t n = (size_t)a->n, nb = (size_t)a->nb;
    for (int k = 0; k < a->ntile; k++)
        for (size_t b = 0; b < nb; b++) {
            int8_t *dst = a->qt + ((size_t)k * nb + b) * 512;
            for (int t = 0; t < 16; t++) {
                size_t tok = (size_t)(16 * k + t), at = ((size_t)k * nb + b) * 16 + (size_t)t;
                if (tok >= (size_t)a->ntok) { /* padding: q has no such row */
                    for (int c = 0; c < 8; c++) memset(dst + 64 * c + 4 * t, 0, 4);
                    a->dt[at] = 0.0f;
                    a->st[at] = 0;
                    continue;
                }
                const int8_t *src = a->q + tok * n + b * QK;
                for (int c = 0; c < 8; c++) memcpy(dst + 64 * c + 4 * t, src + 4 * c, 4);
                a->dt[at] = a->d[tok * nb + b];
                a->st[at] = a->s[tok * nb + b];
            }
        }
}

/* The clones sit behind a plain function: clang (14) gives an external
 * target_clones function no symbol that other files can link to. */
void quantize_act(qact *a, int t, const float *x) {
    quantize_token(a, t, x);
    permute_act(a, t);
}

/* ---- dispatch ----
 * Each SIMD file under src/kernels/ defines its kernel set and a runtime CPU
 * check, guarded by architecture. The ladder lists the sets best first (add a
 * line per set), the scalar reference last. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define RQ4_X86 1
extern const kernel_set kernels_avx512vnni;
int kernels_avx512vnni_supported(void);
extern const kernel_set kernels_avxvnni;
int kernels_avxvnni_supported(void);
extern const kernel_set kernels_avx2;
int kernels_avx2_supported(void);
#endif
#if defined(__aarch64__) && defined(__GNUC__)
#define RQ4_ARM 1
extern const kernel_set kernels_neon_dotprod;
int kernels_neon_dotprod_supported(void);
extern const kernel_set kernels_neon;
int kernels_neon_supported(void);
#endif

typedef struct candidate {
    const kernel_set *set;
    int (*supported)(void); /* NULL: always */
} candidate;

static const candidate candidates[] = {
#ifdef RQ4_X86
    {&kernels_avx512vnni, kernels_avx512vnni_supported},
    {&kernels_avxvnni, kernels_avxvnni_supported},
    {&kernels_avx2, kernels_avx2_supported},
#endif
#ifdef RQ4_ARM
    {&kernels_neon_dotprod, kernels_neon_dotprod_supported},
    {&kernels_neon, kernels_neon_supported},
#endif
    {&kernels_scalar, 0},
};

#define N_CANDIDATES (sizeof candidates / sizeof candidates[0])

/* Filled once (pthread_once), read-only afterwards. */
static const kernel_set *available[N_CANDIDATES + 1];
static pthread_once_t available_once = PTHREAD_ONCE_INIT;

static void find_available(void) {
    size_t n = 0;
    for (size_t i = 0; i < N_CANDIDATES; i++)
        if (!candidates[i].supported || candidates[i].supported()) available[n++] = candidates[i].set;
    available[n] = 0;
}

const kernel_set *const *kernels_available(void) {
    pthread_once(&available_once, find_available);
    return available;
}

/* The best available set, or the one named by the environment variable
 * RUNQ4_KERNEL (scalar, avx2, avxvnni, avx512vnni, neon, neon_dotprod) when
 * this CPU supports it (for benchmarks and tests); an unknown or unsupported
 * name falls back to the best. */
const kernel_set *kernels_select(void) {
    const kernel_set *const *sets = kernels_available();
    const char *want = getenv("RUNQ4_KERNEL");
    if (want && *want)
        for (size_t i = 0; sets[i]; i++)
            if (strcmp(sets[i]->name, want) == 0) return sets[i];
    return sets[0];
}
