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
 * 4 rows) times bytes 4k..4k+3 of the activations repeated 4 times, vmull_s8 into
 * int16 lanes (rows 0-1 and rows 2-3), 8 products per lane (int4 values,
 * |w| <= 15), then pairwise adds down to one int32 per row, the first in
 * int16 (16 products, |sum| <= 30480) ---- */
#define R4_DECODE_ROUNDS 1 /* the A53 in order; the A72 model gains too */
#include "arm_r4.h"

ALWAYS r4block r4_unpack(int kind, const uint8_t *p) {
    r4block w;
    UNROLL
    for (int k = 0; k < 4; k++) {
        unpack_nibbles(kind, vld1q_u8(p + 16 * k), &w.lo[k], &w.hi[k]);
    }
    return w;
}

/* The 4 rows' sums from the unpacked block w and e.val[k], o.val[k]: the
 * activations' bytes 4k..4k+3 repeated in every lane */
ALWAYS int32x4_t r4_dot_lanes(const r4block *w, int8x16x4_t e, int8x16x4_t o) {
    int16x8_t a = vmull_s8(vget_low_s8(w->lo[0]), vget_low_s8(e.val[0])), b = vmull_high_s8(w->lo[0], e.val[0]);
    UNROLL
    for (int k = 1; k < 4; k++) {
        a = vmlal_s8(a, vget_low_s8(w->lo[k]), vget_low_s8(e.val[k]));
        b = vmlal_high_s8(b, w->lo[k], e.val[k]);
    }
    UNROLL
    for (int k = 0; k < 4; k++) {
        a = vmlal_s8(a, vget_low_s8(w->hi[k]), vget_low_s8(o.val[k]));
        b = vmlal_high_s8(b, w->hi[k], o.val[k]);
    }
    return vpaddlq_s16(vpaddq_s16(a, b)); /* rows 0, 0, 1, 1, 2, 2, 3, 3, then 0, 1, 2, 3 */
}

/* Prompts: a dup per lane on the vector pipes (ld4r would add work to the
 * Cortex-A72's one multiply pipe, the prompt loop's limit) */
ALWAYS int32x4_t r4_dot(int kind, const r4block *w, const int8_t *xe, const int8_t *xo) {
    (void)kind;
    int8x16_t ve = vld1q_s8(xe), vo = vld1q_s8(xo);
    int8x16x4_t e, o;
    e.val[0] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(ve), 0));
    e.val[1] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(ve), 1));
    e.val[2] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(ve), 2));
    e.val[3] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(ve), 3));
    o.val[0] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(vo), 0));
    o.val[1] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(vo), 1));
    o.val[2] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(vo), 2));
    o.val[3] = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(vo), 3));
    return r4_dot_lanes(w, e, o);
}

/* the 16 bytes at p as 4 vectors, bytes 4k..4k+3 repeated in vector k: one
 * ld4r, no dup on the vector pipes */
ALWAYS int8x16x4_t r4_load_lanes(const int8_t *p) {
    int32x4x4_t v = vld4q_dup_s32((const int32_t *)(const void *)p);
    int8x16x4_t r;
    UNROLL
    for (int k = 0; k < 4; k++) r.val[k] = vreinterpretq_s8_s32(v.val[k]);
    return r;
}

/* Decoding */
ALWAYS int r4_decode_whole(int kind, const qact *x, const qmat *w, int G, int t, float32x4_t *v) {
    (void)kind, (void)x, (void)w, (void)G, (void)t, (void)v;
    return 0; /* r4_steps_at */
}

ALWAYS int32x4_t r4_dot_bytes(int kind, const uint8_t *p, const int8_t *xe, const int8_t *xo) {
    r4block w = r4_unpack(kind, p);
    return r4_dot_lanes(&w, r4_load_lanes(xe), r4_load_lanes(xo));
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
