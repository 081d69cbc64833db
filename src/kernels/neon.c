/* aarch64 kernel set neon: every aarch64 core (Cortex-A53/A72 of older
 * boards have no dotprod). Products by vmull_s8 / vmlal_high_s8 into int16
 * lanes, then one pairwise add into int32: int4 values (|w| <= 15) times
 * |x| <= 127 leave room for four products per int16 lane, Q8 for two.
 *
 * Int4 blocks are read in nibble order (qact.qp): the low nibbles of a
 * block's 16 bytes are its even values, the high ones its odd values, so no
 * zip puts them back in order. Results are bit-identical to rq4_kernels_scalar
 * (kernels.h); no a*b+c may become an fma (kernels.h's pragmas).
 */
#include "kernels.h"

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))

#include <arm_neon.h>

#if defined(__GNUC__) && !defined(__clang__)
/* GCC's scheduling before register allocation hoists the loads of a whole
 * 16-block step and then reloads the activations for each row */
#pragma GCC optimize("no-schedule-insns")
#endif

int rq4_kernels_neon_supported(void) { return 1; } /* NEON is part of aarch64 */

#define DECODE_ROWS 2 /* rows per step for one token */
#include "arm_body.h"

/* The low and high nibbles of 16 packed bytes as int8 vectors (Q4S:
 * arithmetic shifts sign-extend the nibbles; Q4A: the unsigned values). */
ALWAYS void unpack_nibbles(int kind, uint8x16_t v, int8x16_t *lo, int8x16_t *hi) {
    if (kind == K_Q4S) {
        *lo = vshrq_n_s8(vshlq_n_s8(vreinterpretq_s8_u8(v), 4), 4);
        *hi = vshrq_n_s8(vreinterpretq_s8_u8(v), 4);
    } else {
        *lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
        *hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    }
}

ALWAYS wquad unpack_quad(int kind, const uint8_t *wq, int cnt) {
    wquad w;
    for (int k = 0; k < 4; k++) {
        if (k >= cnt) {
            w.lo[k] = w.hi[k] = vdupq_n_s8(0);
        } else if (kind == K_Q8) {
            w.lo[k] = vld1q_s8((const int8_t *)wq + 32 * k);
            w.hi[k] = vld1q_s8((const int8_t *)wq + 32 * k + 16);
        } else {
            unpack_nibbles(kind, vld1q_u8(wq + 16 * k), &w.lo[k], &w.hi[k]);
        }
    }
    return w;
}

ALWAYS int32x4_t block_dot(int kind, const wquad *w, int k, int8x16_t xlo, int8x16_t xhi) {
    int8x16_t a = xlo, b = xhi;
    int16x8_t p = vmull_s8(vget_low_s8(w->lo[k]), vget_low_s8(a));
    p = vmlal_high_s8(p, w->lo[k], a);
    if (kind == K_Q8) { /* two products per int16 lane at most */
        int16x8_t q = vmull_s8(vget_low_s8(w->hi[k]), vget_low_s8(b));
        q = vmlal_high_s8(q, w->hi[k], b);
        return vpadalq_s16(vpaddlq_s16(p), q);
    }
    p = vmlal_s8(p, vget_low_s8(w->hi[k]), vget_low_s8(b));
    p = vmlal_high_s8(p, w->hi[k], b);
    return vpaddlq_s16(p);
}

ALWAYS float32x4_t isum_f32(int kind, int32x4_t s) {
    (void)kind;
    return vcvtq_f32_s32(s);
}

/* ---- the interleaved types (arm_r4.h): a chunk vector (4 bytes of each of
 * 4 rows) times lane k of the activations repeated 4 times, vmull_s8 into
 * int16 lanes (rows 0-1 and rows 2-3), 8 products per lane at most (int4
 * values, |w| <= 15), then pairwise adds down to one int32 per row ---- */
#include "arm_r4.h"

ALWAYS r4block r4_unpack(int kind, const uint8_t *p) {
    r4block w;
    UNROLL
    for (int k = 0; k < 4; k++) {
        unpack_nibbles(kind, vld1q_u8(p + 16 * k), &w.lo[k], &w.hi[k]);
    }
    return w;
}

/* lane k (4 bytes) of x in every lane */
#define R4_LANE(x, k) vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(x), (k)))

ALWAYS int32x4_t r4_dot(int kind, const r4block *w, int8x16_t xe, int8x16_t xo) {
    (void)kind;
    int8x16_t e0 = R4_LANE(xe, 0), e1 = R4_LANE(xe, 1), e2 = R4_LANE(xe, 2), e3 = R4_LANE(xe, 3);
    int8x16_t o0 = R4_LANE(xo, 0), o1 = R4_LANE(xo, 1), o2 = R4_LANE(xo, 2), o3 = R4_LANE(xo, 3);
    int16x8_t a = vmull_s8(vget_low_s8(w->lo[0]), vget_low_s8(e0)), b = vmull_high_s8(w->lo[0], e0);
    a = vmlal_s8(a, vget_low_s8(w->lo[1]), vget_low_s8(e1));
    b = vmlal_high_s8(b, w->lo[1], e1);
    a = vmlal_s8(a, vget_low_s8(w->lo[2]), vget_low_s8(e2));
    b = vmlal_high_s8(b, w->lo[2], e2);
    a = vmlal_s8(a, vget_low_s8(w->lo[3]), vget_low_s8(e3));
    b = vmlal_high_s8(b, w->lo[3], e3);
    a = vmlal_s8(a, vget_low_s8(w->hi[0]), vget_low_s8(o0));
    b = vmlal_high_s8(b, w->hi[0], o0);
    a = vmlal_s8(a, vget_low_s8(w->hi[1]), vget_low_s8(o1));
    b = vmlal_high_s8(b, w->hi[1], o1);
    a = vmlal_s8(a, vget_low_s8(w->hi[2]), vget_low_s8(o2));
    b = vmlal_high_s8(b, w->hi[2], o2);
    a = vmlal_s8(a, vget_low_s8(w->hi[3]), vget_low_s8(o3));
    b = vmlal_high_s8(b, w->hi[3], o3);
    return vpaddq_s32(vpaddlq_s16(a), vpaddlq_s16(b)); /* rows 0, 1 | rows 2, 3 */
}

ALWAYS int32x4_t r4_dot_bytes(int kind, const uint8_t *p, int8x16_t xe, int8x16_t xo) {
    r4block w = r4_unpack(kind, p);
    return r4_dot(kind, &w, xe, xo);
}

static void dot_q4s_r4_neon(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_r4(K_Q4S, x, w, r0, r1, out, out_stride);
}

static void dot_q4a_r4_neon(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_r4(K_Q4A, x, w, r0, r1, out, out_stride);
}

static void dot_q4s_neon(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_rows(K_Q4S, x, w, r0, r1, 0, x->ntok, out, out_stride);
}

static void dot_q4a_neon(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_rows(K_Q4A, x, w, r0, r1, 0, x->ntok, out, out_stride);
}

static void dot_q8_neon(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_rows(K_Q8, x, w, r0, r1, 0, x->ntok, out, out_stride);
}

const kernel_set rq4_kernels_neon = {"neon", dot_q4s_neon, dot_q4a_neon, dot_q8_neon, dot_q4s_r4_neon, dot_q4a_r4_neon};

#endif /* __aarch64__ */
