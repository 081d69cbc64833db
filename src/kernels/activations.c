/* The int8 activations the kernels read: quantization of each token in
 * blocks of QK (qact.q, d, s), its nibble-order copy (qact.qp) and the
 * 16-token tiles (qact.qt, dt, st). */
#include "kernels.h"

#include <stdint.h>
#include <string.h>

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

/* 8-lane GCC/clang vectors (lane-wise ops): one AVX2 register; AVX-512
 * and NEON handle them as well, while 16 lanes on AVX2 came out lane by
 * lane, as did a converting cast to int8 (hence NARROW8's shuffle). */
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef int8_t i8x32 __attribute__((vector_size(32)));
typedef int8_t i8x8 __attribute__((vector_size(8)));

/* a ? b : c, lane by lane (a: all ones or zero; a macro, as a function
 * returning a 32-byte vector would tie the ABI to AVX) */
#define SELECT8(a, b, c) ((f32x8)(((a) & (i32x8)(b)) | (~(a) & (i32x8)(c))))

/* Lanes 4..7 and 2..3 of v moved to lanes 0.. (the rest: don't care) */
#define HIGH_HALF(v) __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7)
#define HIGH_QUARTER(v) __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3)

/* The low byte of each int32 lane (exact for values in [-128, 127]) */
#define LOW_BYTE (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__ ? 3 : 0)
#define NARROW8(v)                                                                                              \
    __builtin_shufflevector((i8x32)(v), (i8x32)(v), LOW_BYTE, 4 + LOW_BYTE, 8 + LOW_BYTE, 12 + LOW_BYTE,       \
                            16 + LOW_BYTE, 20 + LOW_BYTE, 24 + LOW_BYTE, 28 + LOW_BYTE)

/* One block of QK values: returns its scale d, writes q and *sum. Written
 * with vectors (GCC left the plain loops half scalar): the largest |x|,
 * then q, then its sum. The largest |x| is taken on the bits as integers (for
 * floats >= 0 their order), NaN counting as 0, so NaN loses to every value
 * as in a float comparison; a float maximum would let clang use fmaxnm,
 * which returns NaN for a signalling NaN. */
static inline __attribute__((always_inline)) float quantize_block(const float *restrict x, int8_t *restrict q,
                                                                  int32_t *sum) {
    f32x8 v[QK / 8];
    i32x8 top = {0};
    memcpy(v, x, sizeof v);
    for (int h = 0; h < QK / 8; h++) {
        i32x8 a = (i32x8)v[h] & 0x7fffffff;
        a &= ~(a > 0x7f800000); /* NaN: 0 */
        i32x8 more = a > top;
        top = (more & a) | (~more & top);
    }
    /* halvings, as vectors (lanes of the upper half onto the lower) */
    i32x8 more = HIGH_HALF(top) > top;
    top = (more & HIGH_HALF(top)) | (~more & top);
    more = HIGH_QUARTER(top) > top;
    top = (more & HIGH_QUARTER(top)) | (~more & top);
    union { int32_t i; float f; } amax_bits = {top[1] > top[0] ? top[1] : top[0]};
    float amax = amax_bits.f;
    float dg = amax / 127.0f;
    i32x8 s = {0};
    for (int h = 0; h < QK / 8; h++) {
        i32x8 qi = {0};
        if (dg > 0.0f) {
            /* round half to even: adding and subtracting 1.5 * 2^23 leaves no
             * fraction bits (|r| <= 127 here); same as nearbyintf */
            f32x8 r = (v[h] / dg + 12582912.0f) - 12582912.0f;
            /* NaN to 0 before the clamps: clang may turn a clamp into
             * fminnm/fmaxnm, which map a NaN to the bound */
            r = SELECT8(r == r, r, (f32x8){0});
            r = SELECT8(r > 127.0f, (f32x8){0} + 127.0f, r);
            r = SELECT8(r < -127.0f, (f32x8){0} - 127.0f, r);
            qi = __builtin_convertvector(r, i32x8);
        }
        i8x8 q8 = NARROW8(qi);
        memcpy(q + 8 * h, &q8, sizeof q8);
        s += qi;
    }
    s += HIGH_HALF(s);
    s += HIGH_QUARTER(s);
    *sum = s[0] + s[1];
    return dg;
}

QUANTIZE_CLONES static void quantize_token(qact *a, int t, const float *x) {
    int8_t *q = a->q + (size_t)t * (size_t)a->n;
    float *d = a->d + (size_t)t * (size_t)a->nb;
    int32_t *s = a->s + (size_t)t * (size_t)a->nb;
    for (int b = 0; b < a->nb; b++) d[b] = quantize_block(x + b * QK, q + b * QK, &s[b]);
}

void rq4_permute_act(qact *a, int t) {
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

/* qo from qp for the 2 ntile octets (kernels.h) */
static void fill_octets(qact *a) {
    const size_t n = (size_t)a->n, nb = (size_t)a->nb;
    for (int o = 0; o < 2 * a->ntile; o++)
        for (size_t b = 0; b < nb; b++) {
            int8_t *dst = a->qo + ((size_t)o * nb + b) * 256;
            size_t half, at = qp_block_at((int)b, a->nb, &half);
            for (int i = 0; i < 8; i++) {
                size_t tok = (size_t)(8 * o + i);
                if (tok >= (size_t)a->ntok) { /* padding: qp has no such row */
                    memset(dst + 16 * i, 0, 16);
                    memset(dst + 128 + 16 * i, 0, 16);
                    continue;
                }
                memcpy(dst + 16 * i, a->qp + tok * n + at, 16);
                memcpy(dst + 128 + 16 * i, a->qp + tok * n + at + half, 16);
            }
        }
}

void rq4_interleave_act(qact *a) {
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
    if (a->qo) fill_octets(a);
}

/* The clones sit behind a plain function: clang (14) gives an external
 * target_clones function no symbol that other files can link to. */
void rq4_quantize_act(qact *a, int t, const float *x) {
    quantize_token(a, t, x);
    rq4_permute_act(a, t);
}
