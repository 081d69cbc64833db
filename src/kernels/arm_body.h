/* The body of the aarch64 kernel sets, included once by neon.c and once by
 * neon_dotprod.c (not a public header; not compiled on its own). Its
 * functions are static with plain names: each including file is one kernel
 * set.
 *
 * The includer defines TGT (target attribute or nothing) and DOT(acc, w, x):
 * acc (int32x4_t) + the products of 16 int8 pairs; and optionally
 * DOT32_Q4(acc, w, x) for 32 values of int4 weights (|w| <= 15).
 *
 * Per row, the tokens go in tiles of up to 4. Each 32-value block of the row
 * is unpacked once (16 bytes of nibbles into two int8x16 in value order: vzip
 * of the low and high nibbles; Q4S sign-extended with shifts, Q4A as 0..15)
 * and dotted with every token of the tile, into one int32x4 per (token,
 * block); products are signed x signed, so no offset correction is needed.
 * Four consecutive blocks b0..b0+3 (b0 % 4 == 0) of a token reduce with
 * vpaddq to their 4 integer sums in block order, and the float part of
 * kernels.h's contract runs on them as one float32x4:
 *     term = (d4 * dx) * isum  [+ (m4 * dx) * xs  for Q4A]
 * added to the token's lane vector (b0 / 4) % 4 of four (lanes 0-3, 4-7,
 * 8-11, 12-15), that is lane b % 16. A last partial quad (nb % 4 blocks)
 * adds to its valid lanes only. The final tree: v0+v2, v1+v3, their sum,
 * then lane 0+2 and 1+3, then those two: sum_lanes' order. No fma (see the
 * pragmas in kernels.h). Nothing is read past a row, a token or a scale array. The
 * entry points (rows r0..r1, tiles of 4 tokens, the dot_* per weight type)
 * are simd_entry.h, shared with the x86 files.
 */
#include <arm_neon.h>


enum { K_Q4S, K_Q4A, K_Q8 };
#define ALWAYS static inline __attribute__((always_inline))
#define TILE 4 /* tokens per tile */

/* the 32 values of block b of a weight row, in value order */
ALWAYS int8x16x2_t load_block(int kind, const uint8_t *wq, int b) {
    int8x16x2_t w;
    if (kind == K_Q8) {
        w.val[0] = vld1q_s8((const int8_t *)wq + b * QK);
        w.val[1] = vld1q_s8((const int8_t *)wq + b * QK + 16);
        return w;
    }
    uint8x16_t v = vld1q_u8(wq + b * (QK / 2));
    int8x16_t lo, hi;
    if (kind == K_Q4S) { /* arithmetic shifts sign-extend the nibbles */
        lo = vshrq_n_s8(vshlq_n_s8(vreinterpretq_s8_u8(v), 4), 4);
        hi = vshrq_n_s8(vreinterpretq_s8_u8(v), 4);
    } else {
        lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
        hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    }
    w.val[0] = vzip1q_s8(lo, hi); /* values 0..15 */
    w.val[1] = vzip2q_s8(lo, hi); /* values 16..31 */
    return w;
}

/* The fp16 scales (or minimums) of blocks b0 .. b0+cnt-1 of a row (cnt 1..4,
 * bpg blocks per group) as floats, 0 in the lanes past cnt. A full quad
 * inside one group (bpg a multiple of 4) is one broadcast, one group per
 * block (bpg 1) one 4-half load; other sizes convert block by block. */
ALWAYS float32x4_t load_scales(const uint16_t *wd, int b0, int cnt, int bpg) {
    if (cnt == 4 && bpg == 1) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(wd + b0)));
    if (cnt == 4 && bpg % 4 == 0) return vdupq_n_f32(fp16_to_f32(wd[b0 / bpg]));
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k = 0; k < cnt; k++) v[k] = fp16_to_f32(wd[(b0 + k) / bpg]);
    return vld1q_f32(v);
}

/* p[0 .. cnt) (cnt 1..4), zeros after: never reads past p[cnt - 1] */
ALWAYS float32x4_t load_f32(const float *p, int cnt) {
    if (cnt == 4) return vld1q_f32(p);
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k = 0; k < cnt; k++) v[k] = p[k];
    return vld1q_f32(v);
}

ALWAYS int32x4_t load_s32(const int32_t *p, int cnt) {
    if (cnt == 4) return vld1q_s32(p);
    int32_t v[4] = {0, 0, 0, 0};
    for (int k = 0; k < cnt; k++) v[k] = p[k];
    return vld1q_s32(v);
}

/* kernels.h's final tree over lanes 0-3 (v0), 4-7 (v1), 8-11 (v2), 12-15 (v3):
 * w = 8: v0+v2, v1+v3; w = 4: their sum; w = 2: lanes 0+2, 1+3; w = 1 */
ALWAYS float sum16(float32x4_t v0, float32x4_t v1, float32x4_t v2, float32x4_t v3) {
    float32x4_t s = vaddq_f32(vaddq_f32(v0, v2), vaddq_f32(v1, v3));
    float32x2_t h = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    return vget_lane_f32(h, 0) + vget_lane_f32(h, 1);
}


/* the int32x4 partial sums of one block: w . x[0..32) */
ALWAYS TGT int32x4_t block_dot(int kind, int8x16x2_t w, const int8_t *x) {
    int32x4_t a = vdupq_n_s32(0);
#ifdef DOT32_Q4 /* a cheaper form for the small int4 values */
    if (kind != K_Q8) return DOT32_Q4(a, w, x);
#else
    (void)kind;
#endif
    a = DOT(a, w.val[0], vld1q_s8(x));
    return DOT(a, w.val[1], vld1q_s8(x + 16));
}

/* The terms of blocks b0 .. b0+cnt-1 (b0 % 4 == 0, cnt 1..4) of one row for
 * the T tokens of a tile: term[t] lane k for block b0 + k (0 past cnt). */
ALWAYS TGT void quad(int kind, const int T, const int8_t *const xq[TILE], const float *const xd[TILE],
                         const int32_t *const xs[TILE], const uint8_t *wq, const uint16_t *wd,
                         const uint16_t *wm, int bpg, int b0, int cnt, float32x4_t term[TILE]) {
    /* integer sums: blocks in pairs (one vpaddq per pair halves the live
     * accumulators), then the two pairs: lane k = the sum of block b0 + k */
    int32x4_t pair[2][TILE];
    for (int h = 0; h < 2; h++) {
        int k0 = 2 * h, k1 = k0 + 1; /* blocks b0 + k0, b0 + k1 */
        if (k0 >= cnt) {
            for (int t = 0; t < T; t++) pair[h][t] = vdupq_n_s32(0);
            continue;
        }
        int8x16x2_t w0 = load_block(kind, wq, b0 + k0), w1 = w0;
        if (k1 < cnt) w1 = load_block(kind, wq, b0 + k1);
        for (int t = 0; t < T; t++) {
            int32x4_t a0 = block_dot(kind, w0, xq[t] + (size_t)(b0 + k0) * QK), a1 = vdupq_n_s32(0);
            if (k1 < cnt) a1 = block_dot(kind, w1, xq[t] + (size_t)(b0 + k1) * QK);
            pair[h][t] = vpaddq_s32(a0, a1);
        }
    }
    /* the float part: (d4 * dx) * isum [+ (m4 * dx) * xs] */
    float32x4_t d4 = load_scales(wd, b0, cnt, bpg), m4 = vdupq_n_f32(0.0f);
    if (kind == K_Q4A) m4 = load_scales(wm, b0, cnt, bpg);
    for (int t = 0; t < T; t++) {
        float32x4_t isum = vcvtq_f32_s32(vpaddq_s32(pair[0][t], pair[1][t]));
        float32x4_t dx = load_f32(xd[t] + b0, cnt);
        term[t] = vmulq_f32(vmulq_f32(d4, dx), isum);
        if (kind == K_Q4A)
            term[t] = vaddq_f32(term[t], vmulq_f32(vmulq_f32(m4, dx), vcvtq_f32_s32(load_s32(xs[t] + b0, cnt))));
    }
}

/* A full quad of blocks from b0 into lane vector j of every token */
#define ADD_QUAD(j, b0)                                                                          \
    do {                                                                                         \
        float32x4_t term_[TILE];                                                                 \
        quad(kind, T, xq, xd, xs, wq, wd, wm, bpg, (b0), 4, term_);                          \
        for (int t_ = 0; t_ < T; t_++) acc[t_][j] = vaddq_f32(acc[t_][j], term_[t_]);             \
    } while (0)

/* Row r times tokens t0 .. t0+T-1 (T = 1..4): out[t * out_stride] for the
 * tile's token t (out points at token t0's output of row r). */
ALWAYS TGT void tile(int kind, const int T, const qact *x, const qmat *w, int r, float *out,
                         size_t out_stride, int t0) {
    const int n = x->n, nb = x->nb, bpg = w->gs / QK;
    const uint8_t *wq = w->q + (size_t)r * w->row_bytes;
    const uint16_t *wd = w->d + (size_t)r * (size_t)w->ngroups;
    const uint16_t *wm = kind == K_Q4A ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
    const int8_t *xq[TILE] = {0};
    const float *xd[TILE] = {0};
    const int32_t *xs[TILE] = {0};
    float32x4_t acc[TILE][4]; /* [token][lanes 0-3, 4-7, 8-11, 12-15] */
    for (int t = 0; t < T; t++) {
        size_t row = (size_t)(t0 + t);
        xq[t] = x->q + row * (size_t)n;
        xd[t] = x->d + row * (size_t)nb;
        xs[t] = x->s + row * (size_t)nb;
        for (int j = 0; j < 4; j++) acc[t][j] = vdupq_n_f32(0.0f);
    }
    int b = 0;
    for (; b + 16 <= nb; b += 16) { /* 16 blocks: a quad into each lane vector */
        ADD_QUAD(0, b);
        ADD_QUAD(1, b + 4);
        ADD_QUAD(2, b + 8);
        ADD_QUAD(3, b + 12);
    }
    int rest = nb - b; /* 0 .. 15 blocks: up to 3 full quads, then a partial one */
    if (rest >= 4) ADD_QUAD(0, b);
    if (rest >= 8) ADD_QUAD(1, b + 4);
    if (rest >= 12) ADD_QUAD(2, b + 8);
    if (rest % 4) {
        int j = rest / 4, cnt = rest % 4;
        float32x4_t term[TILE];
        quad(kind, T, xq, xd, xs, wq, wd, wm, bpg, b + 4 * j, cnt, term);
        /* the missing lanes get nothing (not even +0.0) */
        static const uint32_t lane_index[4] = {0, 1, 2, 3};
        uint32x4_t valid = vcltq_u32(vld1q_u32(lane_index), vdupq_n_u32((uint32_t)cnt));
        for (int t = 0; t < T; t++) {
            switch (j) { /* constant indexes keep acc in registers */
            case 0: acc[t][0] = vbslq_f32(valid, vaddq_f32(acc[t][0], term[t]), acc[t][0]); break;
            case 1: acc[t][1] = vbslq_f32(valid, vaddq_f32(acc[t][1], term[t]), acc[t][1]); break;
            case 2: acc[t][2] = vbslq_f32(valid, vaddq_f32(acc[t][2], term[t]), acc[t][2]); break;
            default: acc[t][3] = vbslq_f32(valid, vaddq_f32(acc[t][3], term[t]), acc[t][3]); break;
            }
        }
    }
    for (int t = 0; t < T; t++) out[(size_t)t * out_stride] = sum16(acc[t][0], acc[t][1], acc[t][2], acc[t][3]);
}

#undef ADD_QUAD

/* The hooks of simd_entry.h (row r; out is the dot_fn's out): */
ALWAYS TGT void tile_tokens(int kind, const int T, const qact *x, const qmat *w, int r, float *out,
                                size_t out_stride, int t0) {
    tile(kind, T, x, w, r, out + (size_t)t0 * out_stride + (size_t)r, out_stride, t0);
}

ALWAYS TGT void one_token(int kind, const qact *x, const qmat *w, int r, float *out, size_t out_stride,
                              int t) {
    tile(kind, 1, x, w, r, out + (size_t)t * out_stride + (size_t)r, out_stride, t);
}

#include "simd_entry.h"
