/* aarch64 kernel set neon_dotprod: sdot (vdotq_s32), 4 int8 products summed
 * into each int32 lane (Cortex-A55, A76 and later, Neoverse, Apple M1).
 *
 * The file builds with portable flags (-march=armv8-a): every function after
 * the target pragma below carries dotprod, and the set is used only when the
 * CPU says so (getauxval(AT_HWCAP) & HWCAP_ASIMDDP on Linux). Results are
 * bit-identical to rq4_kernels_scalar (kernels.h): the contract's fmaf is
 * fmla (vfmaq_f32), and no other a*b+c may become an fma (kernels.h's
 * pragmas).
 *
 * Int4 blocks are read in nibble order (qact.qp): the low nibbles of a
 * block's 16 bytes are its even values, the high ones its odd values. Q4S
 * takes them as 16 * value, exactly: a shift left by 4 (low nibble) and a mask
 * 0xF0 (high nibble), so each block sums to 16 * isum and scvtf #4 converts
 * that to the float of isum exactly. Q4A nibbles are unsigned (0..15): a mask
 * and a shift right.
 */
#include "kernels.h"

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))

#include <arm_neon.h>

#if defined(__GNUC__) && !defined(__clang__)
/* GCC's scheduling before register allocation hoists the loads of a whole
 * 16-block step and then reloads the activations for each row */
#pragma GCC optimize("no-schedule-insns")
#endif

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

/* compiled for any aarch64 CPU (before the target pragma) */
int rq4_kernels_neon_dotprod_supported(void) {
#if defined(__ARM_FEATURE_DOTPROD)
    return 1; /* the whole build targets a dotprod CPU */
#elif defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    return 1; /* every Apple arm64 CPU (M1 and later) has dotprod */
#else
    return 0;
#endif
}

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif

#define DECODE_ROWS 2 /* rows per step for one token */
#include "arm_body.h"

#include "arm_sdot.h"

/* The low and high nibbles of 16 packed bytes as int8 vectors (Q4S: 16 *
 * value, the nibble in the top half of the byte; Q4A: the unsigned values). */
ALWAYS void unpack_nibbles(int kind, uint8x16_t v, int8x16_t *lo, int8x16_t *hi) {
    if (kind == K_Q4S) {
        *lo = vreinterpretq_s8_u8(vshlq_n_u8(v, 4));
        *hi = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0xF0)));
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
    (void)kind;
    return sdot(sdot(vdupq_n_s32(0), w->lo[k], xlo), w->hi[k], xhi);
}

ALWAYS float32x4_t isum_f32(int kind, int32x4_t s) {
    return kind == K_Q4S ? vcvtq_n_f32_s32(s, 4) : vcvtq_f32_s32(s);
}


/* ---- prompts: the 16-token tiles (qact.qt), tokens in lanes ----
 *
 * Vector c of a tile's block b holds values 4c..4c+3 of each of its 16
 * tokens (rq4_interleave_act), so sdot by element (vdotq_laneq_s32) of 4 tokens'
 * vector with weights 4c..4c+3 of a row adds 4 products to each token's lane:
 * 8 of them give 4 tokens' exact block sums, no horizontal reduction. A step
 * is TILE_ROWS rows x 8 tokens (half a tile), each block unpacked once per
 * step in value order (zips after the shift and mask). Blocks are walked lane
 * by lane of the contract (b = j, j + 16, ... for lane j), so one float32x4
 * per (row, 4 tokens) accumulates a whole lane, in block order, before it is
 * stored; the final tree then adds whole vectors (lane t = token t). */
#define TILE_ROWS 4
#define TILE_MAX_BLOCKS 1024 /* rows up to 32768 values; longer ones take dot_rows */
#define SCALE_LANE(v, s, i) \
    ((i) == 0 ? vmulq_laneq_f32((v), (s), 0) : (i) == 1 ? vmulq_laneq_f32((v), (s), 1) \
     : (i) == 2 ? vmulq_laneq_f32((v), (s), 2) : vmulq_laneq_f32((v), (s), 3))

/* 32 values of block b of a weight row in value order, Q4S as 16 * value */
ALWAYS void unpack_values(int kind, const uint8_t *wq, int b, int8x16_t *w0, int8x16_t *w1) {
    if (kind == K_Q8) {
        *w0 = vld1q_s8((const int8_t *)wq + (size_t)b * QK);
        *w1 = vld1q_s8((const int8_t *)wq + (size_t)b * QK + 16);
        return;
    }
    uint8x16_t v = vld1q_u8(wq + (size_t)b * (QK / 2));
    int8x16_t lo, hi;
    unpack_nibbles(kind, v, &lo, &hi);
    *w0 = vzip1q_s8(lo, hi);
    *w1 = vzip2q_s8(lo, hi);
}

/* acc += 4 products per lane: the tokens' bytes in a, weights 4c..4c+3 of w */
#if defined(__clang__) && __clang_major__ < 16 && !defined(__ARM_FEATURE_DOTPROD)
ALWAYS int32x4_t sdot_lane(int32x4_t acc, int8x16_t a, int8x16_t w, const int c) {
    switch (c) {
    case 0: __asm__("sdot %0.4s, %1.16b, %2.4b[0]" : "+w"(acc) : "w"(a), "w"(w)); break;
    case 1: __asm__("sdot %0.4s, %1.16b, %2.4b[1]" : "+w"(acc) : "w"(a), "w"(w)); break;
    case 2: __asm__("sdot %0.4s, %1.16b, %2.4b[2]" : "+w"(acc) : "w"(a), "w"(w)); break;
    default: __asm__("sdot %0.4s, %1.16b, %2.4b[3]" : "+w"(acc) : "w"(a), "w"(w)); break;
    }
    return acc;
}
#define SDOT_LANE(acc, a, w, c) sdot_lane((acc), (a), (w), (c))
#else
#define SDOT_LANE(acc, a, w, c)                                                                           \
    ((c) == 0 ? vdotq_laneq_s32((acc), (a), (w), 0) : (c) == 1 ? vdotq_laneq_s32((acc), (a), (w), 1) \
     : (c) == 2 ? vdotq_laneq_s32((acc), (a), (w), 2) : vdotq_laneq_s32((acc), (a), (w), 3))
#endif

/* R rows from r, tokens 16k + 8h .. +7 of tile k; dr[b * TILE_ROWS + i] is
 * row r+i's scale (dm its minimum) for block b */
ALWAYS void tile_step(int kind, const int R, const qact *x, const qmat *w, int r, int k, int h,
                      const float *dr, const float *dm, float *out, size_t out_stride) {
    const int nb = x->nb;
    const uint8_t *wq[TILE_ROWS];
    UNROLL
    for (int i = 0; i < R; i++) wq[i] = w->q + (size_t)(r + i) * w->row_bytes;
    float32x4_t L[16][TILE_ROWS][2]; /* lane j of row i, tokens 4g..4g+3 of the half tile */
    for (int j = 0; j < 16; j++) {
        float32x4_t f[TILE_ROWS][2];
        UNROLL
        for (int i = 0; i < R; i++) f[i][0] = f[i][1] = vdupq_n_f32(-0.0f);
        for (int b = j; b < nb; b += 16) {
            const int8_t *xt = x->qt + ((size_t)k * (size_t)nb + (size_t)b) * 512 + 32 * h;
            const size_t at = ((size_t)k * (size_t)nb + (size_t)b) * 16 + 8 * (size_t)h;
            int8x16_t w0[TILE_ROWS], w1[TILE_ROWS];
            int32x4_t a[TILE_ROWS][2];
            UNROLL
            for (int i = 0; i < R; i++) {
                unpack_values(kind, wq[i], b, &w0[i], &w1[i]);
                a[i][0] = a[i][1] = vdupq_n_s32(0);
            }
            UNROLL
            for (int c = 0; c < 8; c++) {
                int8x16_t x0 = vld1q_s8(xt + 64 * c), x1 = vld1q_s8(xt + 64 * c + 16);
                UNROLL
                for (int i = 0; i < R; i++) {
                    int8x16_t wv = c < 4 ? w0[i] : w1[i];
                    a[i][0] = SDOT_LANE(a[i][0], x0, wv, c % 4);
                    a[i][1] = SDOT_LANE(a[i][1], x1, wv, c % 4);
                }
            }
            float32x4_t dx0 = vld1q_f32(x->dt + at), dx1 = vld1q_f32(x->dt + at + 4);
            float32x4_t d4 = vld1q_f32(dr + (size_t)b * TILE_ROWS), m4 = d4, s0 = dx0, s1 = dx1;
            if (kind == K_Q4A) {
                m4 = vld1q_f32(dm + (size_t)b * TILE_ROWS);
                s0 = vcvtq_f32_s32(vld1q_s32(x->st + at));
                s1 = vcvtq_f32_s32(vld1q_s32(x->st + at + 4));
            }
            UNROLL
            for (int i = 0; i < R; i++) {
                f[i][0] = vfmaq_f32(f[i][0], SCALE_LANE(dx0, d4, i), isum_f32(kind, a[i][0]));
                f[i][1] = vfmaq_f32(f[i][1], SCALE_LANE(dx1, d4, i), isum_f32(kind, a[i][1]));
                if (kind == K_Q4A) {
                    f[i][0] = vfmaq_f32(f[i][0], SCALE_LANE(dx0, m4, i), s0);
                    f[i][1] = vfmaq_f32(f[i][1], SCALE_LANE(dx1, m4, i), s1);
                }
            }
        }
        UNROLL
        for (int i = 0; i < R; i++) {
            L[j][i][0] = f[i][0];
            L[j][i][1] = f[i][1];
        }
    }
    for (int i = 0; i < R; i++)
        for (int g = 0; g < 2; g++) {
            for (int wd = 8; wd > 0; wd /= 2) /* the contract's tree, vertically */
                for (int j = 0; j < wd; j++) L[j][i][g] = vaddq_f32(L[j][i][g], L[j + wd][i][g]);
            float v[4];
            vst1q_f32(v, L[0][i][g]);
            for (int t = 0; t < 4; t++) {
                int tok = 16 * k + 8 * h + 4 * g + t;
                if (tok < x->ntok) out[(size_t)tok * out_stride + (size_t)(r + i)] = v[t];
            }
        }
}

/* the rows' scales (and minimums) per block, interleaved by row: no division
 * and no fp16 conversion in the tile loops */
static void tile_scales(const qmat *w, int r, int R, int nb, const uint16_t *h0, float *dst) {
    const int bpg = w->gs / QK;
    for (int i = 0; i < R; i++) {
        const __fp16 *h = (const __fp16 *)(h0 + (size_t)(r + i) * (size_t)w->ngroups);
        for (int b = 0, g = 0, in = 0; b < nb; b++) {
            dst[(size_t)b * TILE_ROWS + (size_t)i] = (float)h[g];
            if (++in == bpg) {
                in = 0;
                g++;
            }
        }
    }
}

ALWAYS void dot_tiles(int kind, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    const int nb = x->nb;
    if (x->ntile == 0 || nb > TILE_MAX_BLOCKS) {
        dot_rows(kind, x, w, r0, r1, 0, x->ntok, out, out_stride);
        return;
    }
    float dr[TILE_MAX_BLOCKS * TILE_ROWS], dm[TILE_MAX_BLOCKS * TILE_ROWS];
    for (int r = r0; r < r1;) {
        int R = r1 - r >= TILE_ROWS ? TILE_ROWS : 1;
        tile_scales(w, r, R, nb, w->d, dr);
        if (kind == K_Q4A) tile_scales(w, r, R, nb, w->m, dm);
        for (int k = 0; k < x->ntile; k++)
            for (int h = 0; h < 2 && 16 * k + 8 * h < x->ntok; h++) {
                if (R == TILE_ROWS) tile_step(kind, TILE_ROWS, x, w, r, k, h, dr, dm, out, out_stride);
                else tile_step(kind, 1, x, w, r, k, h, dr, dm, out, out_stride);
            }
        r += R;
    }
    int done = 16 * x->ntile; /* padding past ntok included */
    if (done < x->ntok) dot_rows(kind, x, w, r0, r1, done, x->ntok, out, out_stride);
}

/* ---- the interleaved types (arm_r4.h): sdot by element, one chunk vector
 * (4 bytes of each of 4 rows) against lane k of the block's activations ---- */
#define R4_DECODE_ROUNDS 0 /* rounds cost the out-of-order N1 model more than they give the A55 */
#include "arm_r4.h"

ALWAYS r4block r4_unpack(int kind, const uint8_t *p) {
    r4block w;
    UNROLL
    for (int k = 0; k < 4; k++) {
        unpack_nibbles(kind, vld1q_u8(p + 16 * k), &w.lo[k], &w.hi[k]);
    }
    return w;
}

/* one chain of 8: the blocks of a step, or the tokens of a prompt, give the
 * out-of-order core independent chains to overlap */
ALWAYS int32x4_t r4_dot(int kind, const r4block *w, const int8_t *pe, const int8_t *po) {
    (void)kind;
    int8x16_t xe = vld1q_s8(pe), xo = vld1q_s8(po);
    int32x4_t a = vdupq_n_s32(0);
    a = SDOT_LANE(a, w->lo[0], xe, 0);
    a = SDOT_LANE(a, w->hi[0], xo, 0);
    a = SDOT_LANE(a, w->lo[1], xe, 1);
    a = SDOT_LANE(a, w->hi[1], xo, 1);
    a = SDOT_LANE(a, w->lo[2], xe, 2);
    a = SDOT_LANE(a, w->hi[2], xo, 2);
    a = SDOT_LANE(a, w->lo[3], xe, 3);
    a = SDOT_LANE(a, w->hi[3], xo, 3);
    return a;
}

/* Prompts: 4 rows x R4_TILE_TOKENS tokens per step, rows in lanes as in
 * arm_r4.h, the tokens' activation scales (and sums) read as vectors from
 * qact's tiles (dt, st), the row group's scales converted to float once for
 * all its tokens. Lane by lane of the contract: each block is unpacked once
 * for all the tokens; its int32 sums are taken 4 tokens at a time, chunk by
 * chunk (4 independent sdot chains for the in-order cores), then turned into
 * the 4 tokens' terms. */
#define R4_TILE_TOKENS 8 /* half a tile of qact: dt holds their scales side by side */
#define R4_TILE_MAX_GROUPS 512 /* float scales on the stack; a row of more groups takes r4_tokens */

/* v[0..3] stored at p (one st1; clang's vst1q_f32_x4 is a macro that takes
 * no braced initializer) */
ALWAYS void st1_x4(float *p, const float32x4_t *v) {
    float32x4x4_t r = {{v[0], v[1], v[2], v[3]}};
    vst1q_f32_x4(p, r);
}

/* The 4 rows' sums of one block for 4 tokens: token i's activations (nibble
 * order, the block's even values) at xe + o[i], its odd ones at xo + o[i] */
ALWAYS void r4_sums4(const r4block *w, const int8_t *xe, const int8_t *xo, const size_t *o, int32x4_t a[4]) {
    int8x16_t v[4]; /* the even values, then the odd ones: 4 registers live, not 8 */
    UNROLL
    for (int i = 0; i < 4; i++) {
        v[i] = vld1q_s8(xe + o[i]);
        a[i] = vdupq_n_s32(0);
    }
    UNROLL
    for (int k = 0; k < 4; k++) {
        UNROLL
        for (int i = 0; i < 4; i++) a[i] = SDOT_LANE(a[i], w->lo[k], v[i], k);
        R4_ROUND();
    }
    UNROLL
    for (int i = 0; i < 4; i++) v[i] = vld1q_s8(xo + o[i]);
    UNROLL
    for (int k = 0; k < 4; k++) {
        UNROLL
        for (int i = 0; i < 4; i++) a[i] = SDOT_LANE(a[i], w->hi[k], v[i], k);
        R4_ROUND();
    }
}

/* Q4S lanes, written out: GCC's register allocator, with some 29 vectors
 * live, copies and spills accumulators in C. One asm call runs a range of
 * lanes of the 8 tokens, each lane's blocks in a loop, so no C runs between
 * lanes. Fixed registers: v0-v3 the block's chunk vectors, then their high
 * nibbles; v4-v7 their low nibbles, then the rows' scales (v4) and the
 * tokens' scales (v5, v6); v8-v15 the 8 tokens' lane sums (a lane's
 * first block sets them with fmul, the product the contract's fmaf gives
 * on a lane of -0.0; the next blocks fmla); v16-v23 their
 * int32 sums; 4 tokens' activations in v24-v27 or v28-v31 (the next 4 load
 * while the last 4 are used), then their d * dx in v24-v27. Single-uop
 * instructions interleave with the loads, and the first 4 tokens' terms
 * with the last 4 tokens' sums. The 8 tokens' activations are qact's
 * octets (qo): one pointer, every load at an immediate offset from it
 * (`ldur`, `ld1`: one micro-op each in LLVM's N1 model, which counts `ldr
 * q` as two), one add per block; the int32 sums' zeros and the nibble mask
 * are loads too, which go to the load pipes instead of the two vector
 * pipes that bound the loop, the zeros first, well ahead of their use on
 * the in-order cores. */
#define R4_LD(Y, X, OFF) "ldur q" #Y ", [%x[" #X "], #" #OFF "]\n\t"
#define R4_ZERO(Y) "ldur q" #Y ", [%x[zc], #16]\n\t"
#define R4_SD(A, W, Y, K) "sdot v" #A ".4s, v" #W ".16b, v" #Y ".4b[" #K "]\n\t"
/* chunk K of 4 tokens' sums A0..A3: weights v W, activations v Y0..Y3 */
#define R4_CHUNK(A0, A1, A2, A3, W, Y0, Y1, Y2, Y3, K) \
    R4_SD(A0, W, Y0, K) R4_SD(A1, W, Y1, K) R4_SD(A2, W, Y2, K) R4_SD(A3, W, Y3, K)
/* 4 tokens' sums over the 4 chunks W0..W3, with the instructions I0..I3
 * (the next group's loads) one before each chunk */
#define R4_GROUP(A0, A1, A2, A3, W0, W1, W2, W3, Y0, Y1, Y2, Y3, I0, I1, I2, I3) \
    I0 R4_CHUNK(A0, A1, A2, A3, W0, Y0, Y1, Y2, Y3, 0)                          \
    I1 R4_CHUNK(A0, A1, A2, A3, W1, Y0, Y1, Y2, Y3, 1)                          \
    I2 R4_CHUNK(A0, A1, A2, A3, W2, Y0, Y1, Y2, Y3, 2)                          \
    I3 R4_CHUNK(A0, A1, A2, A3, W3, Y0, Y1, Y2, Y3, 3)
/* token I's scale in v T (rows' scales v4 times lane I of v DX), its int32
 * sum A converted; the contract's step of lane sum v F: R4_FMLA, or R4_FMUL
 * for a lane's first block */
#define R4_SCALE(T, DX, I) "fmul v" #T ".4s, v4.4s, v" #DX ".s[" #I "]\n\t"
#define R4_CVT(A) "scvtf v" #A ".4s, v" #A ".4s, #4\n\t"
#define R4_FMLA(F, T, A) "fmla v" #F ".4s, v" #T ".4s, v" #A ".4s\n\t"
#define R4_FMUL(F, T, A) "fmul v" #F ".4s, v" #T ".4s, v" #A ".4s\n\t"
/* one block into lane sums v8-v15 by ACC (R4_FMLA or R4_FMUL); the rows'
 * scales at x15 */
#define R4_Q4S_BLOCK(ACC)                                                                         \
    "ld1 {v0.16b, v1.16b, v2.16b, v3.16b}, [%x[p]]\n\t"                                           \
    "ldur q30, [%x[zc]]\n\t"                                                                      \
    R4_ZERO(16) R4_ZERO(17) R4_ZERO(18) R4_ZERO(19)                                               \
    R4_ZERO(20) R4_ZERO(21) R4_ZERO(22) R4_ZERO(23)                                               \
    R4_LD(24, xq, 0) "shl v4.16b, v0.16b, #4\n\t"                                                 \
    R4_LD(25, xq, 16) "shl v5.16b, v1.16b, #4\n\t"                                                \
    R4_LD(26, xq, 32) "shl v6.16b, v2.16b, #4\n\t"                                                \
    R4_LD(27, xq, 48) "shl v7.16b, v3.16b, #4\n\t"                                                \
    "and v0.16b, v0.16b, v30.16b\n\tand v1.16b, v1.16b, v30.16b\n\t"                              \
    "and v2.16b, v2.16b, v30.16b\n\tand v3.16b, v3.16b, v30.16b\n\t"                              \
    R4_GROUP(16, 17, 18, 19, 4, 5, 6, 7, 24, 25, 26, 27,                                          \
             R4_LD(28, xq, 64), R4_LD(29, xq, 80), R4_LD(30, xq, 96), R4_LD(31, xq, 112))         \
    R4_GROUP(20, 21, 22, 23, 4, 5, 6, 7, 28, 29, 30, 31,                                          \
             R4_LD(24, xq, 128), R4_LD(25, xq, 144), R4_LD(26, xq, 160), R4_LD(27, xq, 176))      \
    R4_GROUP(16, 17, 18, 19, 0, 1, 2, 3, 24, 25, 26, 27,                                          \
             R4_LD(28, xq, 192), R4_LD(29, xq, 208) "ld1 {v4.4s}, [x15]\n\t",                     \
             R4_LD(30, xq, 224) "ld1 {v5.4s, v6.4s}, [%x[dt]]\n\t", R4_LD(31, xq, 240))           \
    R4_GROUP(20, 21, 22, 23, 0, 1, 2, 3, 28, 29, 30, 31,                                          \
             R4_CVT(16) R4_CVT(17) R4_SCALE(24, 5, 0) R4_SCALE(25, 5, 1),                         \
             R4_CVT(18) R4_CVT(19) R4_SCALE(26, 5, 2) R4_SCALE(27, 5, 3),                         \
             ACC(8, 24, 16) ACC(9, 25, 17),                                                       \
             ACC(10, 26, 18) ACC(11, 27, 19))                                                     \
    R4_CVT(20) R4_CVT(21) R4_CVT(22) R4_CVT(23)                                                   \
    R4_SCALE(24, 6, 0) R4_SCALE(25, 6, 1) R4_SCALE(26, 6, 2) R4_SCALE(27, 6, 3)                   \
    ACC(12, 24, 20) ACC(13, 25, 21) ACC(14, 26, 22) ACC(15, 27, 23)
/* to the lane's next block: 16 blocks on in the weights, octets and
 * tokens' scales, sstep bytes in the rows' scales; x9 counts down */
#define R4_Q4S_NEXT                                                                               \
    "add %x[p], %x[p], #1024\n\tadd %x[xq], %x[xq], #4096\n\t"                                   \
    "add %x[dt], %x[dt], #1024\n\tadd x15, x15, %x[ss]\n\tsubs x9, x9, #1\n\t"

/* the nibble mask, then a zeroed register (R4_ZERO) */
static const uint8_t r4_consts[32] __attribute__((aligned(16))) = {
    0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0};

/* Lane sums of lanes j0 .. je-1 of the 8 tokens into lane[0..8 (je - j0)),
 * each lane of cnt >= 1 blocks 16 apart: lane j0's first block's 64 bytes
 * at p, its 256 bytes of the tokens' octet at xq, their scales at dt; lane
 * j's rows' float scales at ds + 4 (j >> sh) (the next block's sstep bytes
 * on). From a lane's last block the pointers go back cnt - 1 blocks, then
 * one block on to the next lane. */
ALWAYS void r4_q4s_lanes(const uint8_t *p, const float *ds, int sh, size_t sstep, int j0, int je,
                         const int8_t *xq, const float *dt, size_t cnt, float32x4_t *lane) {
    __asm__ volatile("lsl x13, %x[cnt], #10\n\tsub x13, x13, #64\n\t"
                     "lsl x12, %x[cnt], #12\n\tsub x12, x12, #256\n\tmov x11, %x[j0]\n"
                     "1:\n\t"
                     "lsr x15, x11, %x[sh]\n\tadd x15, %x[ds], x15, lsl #4\n\tmov x9, %x[cnt]\n\t"
                     R4_Q4S_BLOCK(R4_FMUL) R4_Q4S_NEXT
                     "b.eq 3f\n"
                     "2:\n\t" R4_Q4S_BLOCK(R4_FMLA) R4_Q4S_NEXT
                     "b.ne 2b\n"
                     "3:\n\t"
                     "st1 {v8.4s, v9.4s, v10.4s, v11.4s}, [%x[lane]], #64\n\t"
                     "st1 {v12.4s, v13.4s, v14.4s, v15.4s}, [%x[lane]], #64\n\t"
                     "sub %x[xq], %x[xq], x12\n\tsub %x[p], %x[p], x13\n\tsub %x[dt], %x[dt], x13\n\t"
                     "add x11, x11, #1\n\tcmp x11, %x[je]\n\t"
                     "b.ne 1b\n\t"
                     : [p] "+r"(p), [xq] "+r"(xq), [dt] "+r"(dt), [lane] "+r"(lane)
                     : [ss] "r"(sstep), [zc] "r"(r4_consts), [cnt] "r"(cnt), [ds] "r"(ds), [sh] "r"((size_t)sh),
                       [j0] "r"((size_t)j0), [je] "r"((size_t)je)
                     : "cc", "memory", "x9", "x11", "x12", "x13", "x15", "v0", "v1", "v2", "v3", "v4",
                       "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18",
                       "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31");
}

/* Block b's steps of the R4_TILE_TOKENS tokens' lane sums f: its 64 bytes
 * at p, its rows' float scales at ds (minimums at ms), the tokens' even
 * values at xe + o[i], their scales (sums) at dt (st). FIRST: the lane's
 * first block, its fmaf on -0.0 as a multiply. */
ALWAYS void r4_tile_block(int kind, const int FIRST, const uint8_t *p, const float *ds, const float *ms,
                          const int8_t *xe, const size_t *o, const float *dt, const int32_t *st,
                          float32x4_t *f) {
    uint8x16x4_t pk = vld1q_u8_x4(p);
    r4block wb;
    UNROLL
    for (int k = 0; k < 4; k++) unpack_nibbles(kind, pk.val[k], &wb.lo[k], &wb.hi[k]);
    float32x4_t d4 = vld1q_f32(ds), m4 = kind == K_Q4A ? vld1q_f32(ms) : d4;
    UNROLL
    for (int h = 0; h < R4_TILE_TOKENS; h += 4) {
        int32x4_t a[4];
        r4_sums4(&wb, xe, xe + 64, o + h, a);
        float32x4_t dx = vld1q_f32(dt + h), sx = dx;
        if (kind == K_Q4A) sx = vcvtq_f32_s32(vld1q_s32(st + h));
        float32x4_t sum[4], term[4];
        UNROLL
        for (int i = 0; i < 4; i++) {
            sum[i] = isum_f32(kind, a[i]);
            term[i] = R4_MUL_LANE(d4, dx, i);
        }
        R4_ROUND();
        UNROLL
        for (int i = 0; i < 4; i++) f[h + i] = FIRST ? vmulq_f32(term[i], sum[i]) : vfmaq_f32(f[h + i], term[i], sum[i]);
        if (kind == K_Q4A) {
            UNROLL
            for (int i = 0; i < 4; i++) term[i] = R4_MUL_LANE(m4, dx, i);
            R4_ROUND();
            UNROLL
            for (int i = 0; i < 4; i++) f[h + i] = R4_FMA_LANE(f[h + i], term[i], sx, i);
        }
    }
}

/* The float scales of row group G, ds[g * R4 + i] for row 4G+i and weight
 * group g (ngroups <= R4_TILE_MAX_GROUPS) */
ALWAYS void r4_tile_scales(const uint16_t *h, const qmat *w, int G, float *ds) {
    const uint16_t *src = h + (size_t)G * (size_t)w->ngroups * R4;
    int g = 0;
    for (; g + 2 <= w->ngroups; g += 2) {
        float16x8_t v = vreinterpretq_f16_u16(vld1q_u16(src + g * R4));
        vst1q_f32(ds + g * R4, vcvt_f32_f16(vget_low_f16(v)));
        vst1q_f32(ds + g * R4 + R4, vcvt_high_f32_f16(v));
    }
    if (g < w->ngroups) vst1q_f32(ds + g * R4, f16x4(src + g * R4));
}

/* A lane's last block b, past the row's whole spans of 128 (rare: kept
 * out of the lanes' code), its terms for the R4_TILE_TOKENS tokens from t
 * added to lane[0..7]; the rows' float scales at ds (minimums at ms) */
static __attribute__((noinline)) void r4_lane_tail(int kind, const qact *x, const uint8_t *q, int b, const float *ds,
                                                   const float *ms, int t, float32x4_t *lane) {
    r4block wb = r4_unpack(kind, q + 64 * (size_t)b);
    float32x4_t d4 = vld1q_f32(ds), m4 = kind == K_Q4A ? vld1q_f32(ms) : d4;
    for (int i = 0; i < R4_TILE_TOKENS; i++) lane[i] = r4_term(kind, lane[i], x, &wb, b, t + i, d4, m4);
}

/* Lane j of the R4_TILE_TOKENS tokens from t into lane[0..7], in C: its
 * first block j in weight group g, the in-th block of it; the row group's
 * weights at q, float scales at ds (minimums at ms); the tokens' even
 * values of block j at xe + o[i], tile offset `tile` of their scales (dt,
 * st); STEPPED as r4_tile's */
ALWAYS void r4_tile_lane(int kind, const int STEPPED, const qact *x, const uint8_t *q, int j, int g, int in,
                         const float *ds, const float *ms, const int8_t *xe, const size_t *o, size_t tile, int t,
                         int bpg, float32x4_t *lane) {
    const int nb = x->nb, whole = nb & ~3, gstep = R4_GROUP_STEP(bpg);
    const size_t sstep = (size_t)gstep * R4; /* STEPPED: scales from a lane's block to its next */
    float32x4_t f[R4_TILE_TOKENS];
    int b = j;
    const float *dp = ds + (size_t)g * R4, *mp = ms + (size_t)g * R4;
    const float *dtp = x->dt + tile + 16 * (size_t)b;
    const int32_t *stp = x->st + tile + 16 * (size_t)b;
    const uint8_t *p = q + 64 * (size_t)b;
    if (b < whole) {
        r4_tile_block(kind, 1, p, dp, mp, xe, o, dtp, stp, f);
        for (;;) {
            b += 16;
            if (STEPPED) {
                g += gstep;
                dp += sstep;
                if (kind == K_Q4A) mp += sstep;
            } else {
                for (in += 16; in >= bpg; in -= bpg) g++; /* to block b, no division */
                dp = ds + (size_t)g * R4;
                if (kind == K_Q4A) mp = ms + (size_t)g * R4;
            }
            if (b >= whole) break;
            xe += 4 * 128;
            p += 16 * 64;
            dtp += 16 * 16;
            if (kind == K_Q4A) stp += 16 * 16;
            R4_OPAQUE(xe); /* one pointer and fixed offsets, not one pointer per token */
            r4_tile_block(kind, 0, p, dp, mp, xe, o, dtp, stp, f);
        }
    } else { /* the lane's only block is past the row's whole spans of 128 */
        UNROLL
        for (int i = 0; i < R4_TILE_TOKENS; i++) f[i] = vdupq_n_f32(-0.0f);
    }
    st1_x4((float *)&lane[0], f);
    st1_x4((float *)&lane[4], f + 4);
    if (b < nb) r4_lane_tail(kind, x, q, b, ds + (size_t)g * R4, ms + (size_t)g * R4, t, lane);
}

/* The contract's tree for tokens h .. h+3 of lanes L, depth first, each
 * lane's 4 tokens read with one ld1 (lanes lie 8 tokens apart), the 4
 * outputs stored at out, out_stride apart */
ALWAYS void r4_tree4(float32x4_t (*L)[R4_TILE_TOKENS], int h, int G, int r0, int r1, float *out,
                     size_t out_stride) {
    float32x4_t R[2][4];
    UNROLL
    for (int r = 0; r < 2; r++) { /* R[r] = lanes r, r+2, ..., r+14 as the tree adds them */
        float32x4_t Q[2][4];
        UNROLL
        for (int qi = 0; qi < 2; qi++) {
            float32x4_t P[2][4];
            UNROLL
            for (int pi = 0; pi < 2; pi++) {
                const int j = r + 2 * qi + 4 * pi;
                float32x4x4_t a = vld1q_f32_x4((const float *)&L[j][h]);
                float32x4x4_t b = vld1q_f32_x4((const float *)&L[j + 8][h]);
                UNROLL
                for (int i = 0; i < 4; i++) P[pi][i] = vaddq_f32(a.val[i], b.val[i]);
            }
            UNROLL
            for (int i = 0; i < 4; i++) Q[qi][i] = vaddq_f32(P[0][i], P[1][i]);
        }
        UNROLL
        for (int i = 0; i < 4; i++) R[r][i] = vaddq_f32(Q[0][i], Q[1][i]);
    }
    for (int i = 0; i < 4; i++) r4_store(vaddq_f32(R[0][i], R[1][i]), G, r0, r1, out + (size_t)i * out_stride);
}

/* Tokens t .. t + R4_TILE_TOKENS - 1 of row group G, t a multiple of
 * R4_TILE_TOKENS below 16 * ntile (their scales in dt), the group's float
 * scales in ds (minimums in ms); STEPPED: the group size's R4_GROUP_STEP is
 * not 0 (a lane's next block is a fixed number of scales further, no
 * branch) */
ALWAYS void r4_tile(int kind, const int STEPPED, const qact *x, const qmat *w, int G, int t, const float *ds,
                    const float *ms, int r0, int r1, float *out, size_t out_stride) {
    const int nb = x->nb, bpg = w->gs / QK, whole = nb & ~3;
    const int gstep = R4_GROUP_STEP(bpg);
    const uint8_t *q = w->q + (size_t)G * w->row_bytes;
    const int8_t *x0 = x->qp + (size_t)t * (size_t)x->n; /* token t + i at x0 + o[i] */
    size_t o[R4_TILE_TOKENS];
    for (int i = 0; i < R4_TILE_TOKENS; i++) {
        o[i] = (size_t)i * (size_t)x->n;
        R4_OPAQUE(o[i]); /* in registers, not rebuilt by a chain of adds at each block */
    }
    const size_t tile = (size_t)(t / 16) * (size_t)nb * 16 + (size_t)(t % 16); /* dt, st of block 0 */
    float32x4_t L[16][R4_TILE_TOKENS]; /* lane j of each token */
    if (kind == K_Q4S && STEPPED && whole >= 16) { /* every lane has blocks in whole spans */
        const int m = whole % 16, cnt = whole / 16; /* lanes below m have cnt + 1 of them */
        const int sh = __builtin_ctz((unsigned)bpg); /* bpg divides 16 */
        const size_t sstep = (size_t)gstep * R4 * sizeof(float);
        const int8_t *xq = x->qo + (size_t)(t / 8) * (size_t)nb * 256; /* the tokens' octet */
        if (m) r4_q4s_lanes(q, ds, sh, sstep, 0, m, xq, x->dt + tile, (size_t)cnt + 1, L[0]);
        r4_q4s_lanes(q + 64 * (size_t)m, ds, sh, sstep, m, 16, xq + 256 * (size_t)m, x->dt + tile + 16 * (size_t)m,
                     (size_t)cnt, L[m]);
        for (int j = 0; j < nb - whole; j++) { /* blocks past the row's whole spans: lanes m .. */
            const int k = m + j, b = k + 16 * cnt, g = (k >> sh) + gstep * cnt;
            r4_lane_tail(kind, x, q, b, ds + (size_t)g * R4, ms + (size_t)g * R4, t, L[k]);
        }
    } else {
        int gj = 0, inj = 0; /* lane j's first block: in group gj, the inj-th block */
        for (int j = 0; j < 16 && j < nb; j++) {
            const int8_t *xe = x0 + (size_t)(j >> 2) * 128 + 16 * (size_t)(j & 3); /* block j's even values */
            r4_tile_lane(kind, STEPPED, x, q, j, gj, inj, ds, ms, xe, o, tile, t, bpg, L[j]);
            if (++inj == bpg) { /* lane j + 1 */
                inj = 0;
                gj++;
            }
        }
        for (int j = nb; j < 16; j++)
            for (int i = 0; i < R4_TILE_TOKENS; i++) L[j][i] = vdupq_n_f32(-0.0f);
    }
    for (int h = 0; h < R4_TILE_TOKENS; h += 4)
        r4_tree4(L, h, G, r0, r1, out + (size_t)(t + h) * out_stride, out_stride);
}

ALWAYS void dot_r4_tiles(int kind, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    if (r0 >= r1) return;
    const int tiled = 16 * x->ntile < x->ntok ? 16 * x->ntile : x->ntok; /* tokens with scales in dt */
    const int steps = w->ngroups <= R4_TILE_MAX_GROUPS ? tiled / R4_TILE_TOKENS * R4_TILE_TOKENS : 0;
    float ds[R4_TILE_MAX_GROUPS * R4], ms[R4_TILE_MAX_GROUPS * R4];
    for (int G = r0 / R4; G * R4 < r1; G++) {
        if (steps) {
            r4_tile_scales(w->d, w, G, ds);
            if (kind == K_Q4A) r4_tile_scales(w->m, w, G, ms);
        }
        for (int t = 0; t < steps; t += R4_TILE_TOKENS) {
            if (R4_GROUP_STEP(w->gs / QK)) r4_tile(kind, 1, x, w, G, t, ds, ms, r0, r1, out, out_stride);
            else r4_tile(kind, 0, x, w, G, t, ds, ms, r0, r1, out, out_stride);
        }
        r4_tokens(kind, x, w, G, steps, r0, r1, out, out_stride);
    }
}

/* Decoding by spans: the blocks of whole spans of 128 (qact.qp) in 4 lane
 * groups, lanes 4c .. 4c+3 taking the 4 blocks of spans c, c + 4, c + 8, ...
 * (block 4s + k is in lane (4s + k) % 16 = 4 (s % 4) + k), so that a span's
 * activations load whole (8 vectors) and serve its 4 blocks. Written out:
 * the in-order cores complete in order, so an instruction of 1 or 2 cycles
 * issued after a 4-cycle sdot waits for it, and a block's chain of 8 sdot
 * waits on itself; here a span's 4 blocks go chunk by chunk, the 4 blocks'
 * chunk c loaded and unpacked together, then their 8 sdot (4 independent
 * chains, low nibbles then high) while chunk c + 1 loads. Fixed registers:
 * v0-v3 the span's even activations (block k's in v k), v4-v7 its odd ones,
 * then (Q4A) the minimums' m * dx; v8-v11 the 4 blocks' int32 sums, then
 * their floats; v12-v15 the lane sums (from -0.0, the contract's start); v16-v19 and v27-v30 a chunk's bytes,
 * then their high nibbles, alternately; v20-v23 the low nibbles, then the
 * blocks' d * dx; v24 the nibble mask; v25 the activations' scales; v26
 * (and v31) the rows' fp16 scales. Loads are ldur: the same load as ldr,
 * which LLVM's N1 model counts as 2 micro-ops at a scaled offset, 1 at an
 * unscaled one. */
#define R4D_LD(Q, X, OFF) "ldur q" #Q ", [%x[" #X "], #" #OFF "]\n\t"
#define R4D_W(Q, OFF) R4D_LD(Q, p, OFF)
/* the low nibbles of v R into v D, the high ones in place: Q4S as 16 x
 * value (mask 0xF0), Q4A unsigned (mask 0x0F) */
#define R4D_LO_Q4S(D, R) "shl v" #D ".16b, v" #R ".16b, #4\n\t"
#define R4D_HI_Q4S(R) "and v" #R ".16b, v" #R ".16b, v24.16b\n\t"
#define R4D_LO_Q4A(D, R) "and v" #D ".16b, v" #R ".16b, v24.16b\n\t"
#define R4D_HI_Q4A(R) "ushr v" #R ".16b, v" #R ".16b, #4\n\t"
#define R4D_CVT_Q4A(A) "scvtf v" #A ".4s, v" #A ".4s\n\t"
#define R4D_UNPACK(LO, HI, R0, R1, R2, R3) LO(20, R0) LO(21, R1) LO(22, R2) LO(23, R3) HI(R0) HI(R1) HI(R2) HI(R3)
/* chunk K's 8 sdot (high nibbles in v R0..R3), the instructions I0..I3 one
 * after each pair */
#define R4D_SDOTS(R0, R1, R2, R3, K, I0, I1, I2, I3)                                              \
    R4_SD(8, 20, 0, K) R4_SD(9, 21, 1, K) I0 R4_SD(10, 22, 2, K) R4_SD(11, 23, 3, K) I1           \
    R4_SD(8, R0, 4, K) R4_SD(9, R1, 5, K) I2 R4_SD(10, R2, 6, K) R4_SD(11, R3, 7, K) I3
/* v T0..T3 times lane k of v S into v D..D+3 */
#define R4D_LANES(D0, D1, D2, D3, T0, T1, T2, T3, S)                                              \
    "fmul v" #D0 ".4s, v" #T0 ".4s, v" #S ".s[0]\n\tfmul v" #D1 ".4s, v" #T1 ".4s, v" #S ".s[1]\n\t" \
    "fmul v" #D2 ".4s, v" #T2 ".4s, v" #S ".s[2]\n\tfmul v" #D3 ".4s, v" #T3 ".4s, v" #S ".s[3]\n\t"
/* A span's blocks into lane sums v12-v15: LO, HI and CVT the kind's
 * unpacking and conversion, SLOAD loads the rows' scales and SCALE makes
 * v20-v23 the 4 blocks' d * dx (among the last chunk's sdot, once its low
 * nibbles are read), MIN the minimums' steps after the sums' (Q4A); DSTEP
 * bytes of fp16 scales from one span of the lane group to its next */
#define R4D_SPAN(LO, HI, CVT, SLOAD, SCALE, MIN, DSTEP)                                           \
    R4D_W(16, 0) R4D_W(17, 64) R4D_W(18, 128) R4D_W(19, 192) "ldur q25, [%x[dx]]\n\t" SLOAD       \
    R4D_LD(0, xe, 0) LO(20, 16) R4D_LD(1, xe, 16) LO(21, 17)                                      \
    R4D_LD(2, xe, 32) LO(22, 18) R4D_LD(3, xe, 48) LO(23, 19)                                     \
    R4D_LD(4, xe, 64) HI(16) R4D_LD(5, xe, 80) HI(17) R4D_LD(6, xe, 96) HI(18) R4D_LD(7, xe, 112) HI(19) \
    "movi v8.4s, #0\n\tmovi v9.4s, #0\n\tmovi v10.4s, #0\n\tmovi v11.4s, #0\n\t"                  \
    R4D_SDOTS(16, 17, 18, 19, 0, R4D_W(27, 16), R4D_W(28, 80), R4D_W(29, 144), R4D_W(30, 208))    \
    R4D_UNPACK(LO, HI, 27, 28, 29, 30)                                                            \
    R4D_SDOTS(27, 28, 29, 30, 1, R4D_W(16, 32), R4D_W(17, 96), R4D_W(18, 160), R4D_W(19, 224))    \
    R4D_UNPACK(LO, HI, 16, 17, 18, 19)                                                            \
    R4D_SDOTS(16, 17, 18, 19, 2, R4D_W(27, 48), R4D_W(28, 112), R4D_W(29, 176), R4D_W(30, 240))   \
    R4D_UNPACK(LO, HI, 27, 28, 29, 30)                                                            \
    R4D_SDOTS(27, 28, 29, 30, 3, "", SCALE, "", "")                                               \
    CVT(8) CVT(9) CVT(10) CVT(11)                                                                 \
    R4_FMLA(12, 20, 8) R4_FMLA(13, 21, 9) R4_FMLA(14, 22, 10) R4_FMLA(15, 23, 11) MIN             \
    "add %x[p], %x[p], #1024\n\tadd %x[xe], %x[xe], #512\n\tadd %x[dx], %x[dx], #64\n\t"         \
    "add %x[dp], %x[dp], #" #DSTEP "\n\tsubs %x[cnt], %x[cnt], #1\n\t"
/* Q4A's minimums' steps, fma(m * dx, xs, lane) on the lane sums v12-v15:
 * the activations' sums at %[xs] into v2, the rows' minimums (at %[mp],
 * loaded and converted by MLOAD and MCVT as the scales) times lane k of dx
 * into v4-v7, then fused times lane k of v2 */
#define R4D_MIN(MLOAD, MCVT, DSTEP)                                                               \
    MLOAD "ldur q2, [%x[xs]]\n\tscvtf v2.4s, v2.4s\n\t" MCVT                                      \
    "fmla v12.4s, v4.4s, v2.s[0]\n\tfmla v13.4s, v5.4s, v2.s[1]\n\t"                              \
    "fmla v14.4s, v6.4s, v2.s[2]\n\tfmla v15.4s, v7.4s, v2.s[3]\n\t"                              \
    "add %x[mp], %x[mp], #" #DSTEP "\n\tadd %x[xs], %x[xs], #64\n\t"
/* By weight groups of 4 blocks (one a span), 2 and 1: the span's rows'
 * scales loaded (into v26, v31) and times lane k of dx into v20-v23; its
 * minimums loaded (into v0, v1) and times lane k of dx into v4-v7 */
#define R4D_SLOAD_G4 "ldur d26, [%x[dp]]\n\t"
#define R4D_SCALE_G4 "fcvtl v26.4s, v26.4h\n\t" R4D_LANES(20, 21, 22, 23, 26, 26, 26, 26, 25)
#define R4D_MLOAD_G4 "ldur d0, [%x[mp]]\n\t"
#define R4D_MCVT_G4 "fcvtl v0.4s, v0.4h\n\t" R4D_LANES(4, 5, 6, 7, 0, 0, 0, 0, 25)
#define R4D_SLOAD_G2 "ldur q26, [%x[dp]]\n\t"
#define R4D_SCALE_G2 "fcvtl v31.4s, v26.4h\n\tfcvtl2 v26.4s, v26.8h\n\t" R4D_LANES(20, 21, 22, 23, 31, 31, 26, 26, 25)
#define R4D_MLOAD_G2 "ldur q0, [%x[mp]]\n\t"
#define R4D_MCVT_G2 "fcvtl v1.4s, v0.4h\n\tfcvtl2 v0.4s, v0.8h\n\t" R4D_LANES(4, 5, 6, 7, 1, 1, 0, 0, 25)
#define R4D_SLOAD_G1 "ldur q26, [%x[dp]]\n\tldur q31, [%x[dp], #16]\n\t"
#define R4D_SCALE_G1                                                                              \
    "fcvtl v20.4s, v26.4h\n\tfcvtl2 v21.4s, v26.8h\n\tfcvtl v22.4s, v31.4h\n\tfcvtl2 v23.4s, v31.8h\n\t" \
    R4D_LANES(20, 21, 22, 23, 20, 21, 22, 23, 25)
#define R4D_MLOAD_G1 "ldur q0, [%x[mp]]\n\tldur q1, [%x[mp], #16]\n\t"
#define R4D_MCVT_G1                                                                               \
    "fcvtl v4.4s, v0.4h\n\tfcvtl2 v5.4s, v0.8h\n\tfcvtl v6.4s, v1.4h\n\tfcvtl2 v7.4s, v1.8h\n\t"     \
    R4D_LANES(4, 5, 6, 7, 4, 5, 6, 7, 25)
#define R4D_Q4S(G, DSTEP) R4D_SPAN(R4D_LO_Q4S, R4D_HI_Q4S, R4_CVT, R4D_SLOAD_##G, R4D_SCALE_##G, "", DSTEP)
#define R4D_Q4A(G, DSTEP)                                                                         \
    R4D_SPAN(R4D_LO_Q4A, R4D_HI_Q4A, R4D_CVT_Q4A, R4D_SLOAD_##G, R4D_SCALE_##G,                  \
             R4D_MIN(R4D_MLOAD_##G, R4D_MCVT_##G, DSTEP), DSTEP)

/* The lane sums of cnt >= 1 spans, 4 apart, into lane[0..15]: the first
 * span's weights at p, its rows' fp16 scales at dp (minimums at mp),
 * activations at xe, their scales at dx (sums at xs); MASK the nibble mask */
#define R4D_ASM(MASK, BODY)                                                                       \
    __asm__ volatile("movi v24.16b, #" MASK "\n\tmovi v12.4s, #0x80, lsl #24\n\t"                   \
                     "mov v13.16b, v12.16b\n\tmov v14.16b, v12.16b\n\tmov v15.16b, v12.16b\n"        \
                     "1:\n\t" BODY "b.ne 1b\n\t"                                                  \
                     "st1 {v12.4s, v13.4s, v14.4s, v15.4s}, [%x[lane]]\n\t"                      \
                     : [p] "+r"(p), [dp] "+r"(dp), [mp] "+r"(mp), [xe] "+r"(xe), [dx] "+r"(dx),   \
                       [xs] "+r"(xs), [cnt] "+r"(cnt)                                             \
                     : [lane] "r"(lane)                                                           \
                     : "cc", "memory", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9",  \
                       "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19", "v20", \
                       "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31")
/* BPG blocks per weight group: 1, 2 or 4 */
ALWAYS void r4_spans(int kind, const int BPG, const uint8_t *p, const uint16_t *dp, const uint16_t *mp,
                     const int8_t *xe, const float *dx, const int32_t *xs, size_t cnt, float *lane) {
    if (kind == K_Q4S) {
        if (BPG == 4) R4D_ASM("0xf0", R4D_Q4S(G4, 32));
        else if (BPG == 2) R4D_ASM("0xf0", R4D_Q4S(G2, 64));
        else R4D_ASM("0xf0", R4D_Q4S(G1, 128));
    } else {
        if (BPG == 4) R4D_ASM("0x0f", R4D_Q4A(G4, 32));
        else if (BPG == 2) R4D_ASM("0x0f", R4D_Q4A(G2, 64));
        else R4D_ASM("0x0f", R4D_Q4A(G1, 128));
    }
}

/* r4_spans over the 4 lane groups, then the contract's tree */
ALWAYS float32x4_t r4_spans_tree(int kind, const int BPG, const uint8_t *q, const uint16_t *dg,
                                 const uint16_t *mg, const int8_t *xp, const float *xd, const int32_t *xs,
                                 int spans) {
    float lane_mem[16 * 4]; /* written by r4_spans */
    UNROLL
    for (int c = 0; c < 4; c++) {
        if (c < spans) {
            const size_t sc = (size_t)(4 * c / BPG * R4);
            r4_spans(kind, BPG, q + 256 * c, dg + sc, kind == K_Q4A ? mg + sc : NULL, xp + 128 * c, xd + 4 * c,
                     xs + 4 * c, (size_t)((spans - 1 - c) / 4 + 1), lane_mem + 16 * c);
        } else {
            for (int k = 0; k < 16; k++) lane_mem[16 * c + k] = -0.0f; /* rows of fewer than 4 spans */
        }
    }
    float32x4_t L[16];
    UNROLL
    for (int c = 0; c < 4; c++) {
        float32x4x4_t v = vld1q_f32_x4(lane_mem + 16 * c);
        UNROLL
        for (int k = 0; k < 4; k++) L[4 * c + k] = v.val[k];
    }
    return r4_tree(L);
}

/* Decoding a whole row of spans (nb a multiple of 4) for groups of 1, 2 or
 * 4 blocks: r4_spans_tree */
ALWAYS int r4_decode_whole(int kind, const qact *x, const qmat *w, int G, int t, float32x4_t *v) {
    const int bpg = w->gs / QK, spans = x->nb / 4;
    if ((bpg != 1 && bpg != 2 && bpg != 4) || x->nb % 4) return 0;
    const uint8_t *q = w->q + (size_t)G * w->row_bytes;
    const size_t sg = (size_t)G * (size_t)w->ngroups * R4;
    const uint16_t *dg = w->d + sg, *mg = kind == K_Q4A ? w->m + sg : NULL;
    const int8_t *xp = x->qp + (size_t)t * (size_t)x->n;
    const float *xd = x->d + (size_t)t * (size_t)x->nb;
    const int32_t *xs = x->s + (size_t)t * (size_t)x->nb;
    if (bpg == 1) *v = r4_spans_tree(kind, 1, q, dg, mg, xp, xd, xs, spans);
    else if (bpg == 2) *v = r4_spans_tree(kind, 2, q, dg, mg, xp, xd, xs, spans);
    else *v = r4_spans_tree(kind, 4, q, dg, mg, xp, xd, xs, spans);
    return 1;
}

ALWAYS int32x4_t r4_dot_bytes(int kind, const uint8_t *p, const int8_t *pe, const int8_t *po) {
    int8x16_t xe = vld1q_s8(pe), xo = vld1q_s8(po);
    int32x4_t a = vdupq_n_s32(0);
    UNROLL
    for (int k = 0; k < 4; k++) {
        uint8x16_t v = vld1q_u8(p + 16 * k);
        int8x16_t lo, hi;
        unpack_nibbles(kind, v, &lo, &hi);
        a = SDOT_LANE(a, lo, xe, k);
        a = SDOT_LANE(a, hi, xo, k);
    }
    return a;
}

static void dot_q4s_r4_neon_dotprod(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_r4_tiles(K_Q4S, x, w, r0, r1, out, out_stride);
}

static void dot_q4a_r4_neon_dotprod(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_r4_tiles(K_Q4A, x, w, r0, r1, out, out_stride);
}

static void dot_q4s_neon_dotprod(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_tiles(K_Q4S, x, w, r0, r1, out, out_stride);
}

static void dot_q4a_neon_dotprod(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_tiles(K_Q4A, x, w, r0, r1, out, out_stride);
}

static void dot_q8_neon_dotprod(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_tiles(K_Q8, x, w, r0, r1, out, out_stride);
}

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const kernel_set rq4_kernels_neon_dotprod = {"neon_dotprod",          dot_q4s_neon_dotprod,
                                             dot_q4a_neon_dotprod,    dot_q8_neon_dotprod,
                                             dot_q4s_r4_neon_dotprod, dot_q4a_r4_neon_dotprod};

#endif /* __aarch64__ */
