/* The body of one aarch64 kernel set, included by src/kernels_arm.c once per
 * set (not a public header; not compiled on its own).
 *
 * The includer defines SFX (name suffix), TGT (target attribute or nothing)
 * and DOT(acc, w, x): acc (int32x4_t) + the products of 16 int8 pairs; and
 * optionally DOT32_Q4(acc, w, x) for 32 values of int4 weights (|w| <= 15).
 *
 * Each step is 32 values: 16 bytes of nibbles unpacked once into two int8x16
 * in value order (vzip of the low and high nibbles; Q4S sign-extended with
 * shifts, Q4A as 0..15), then DOT with the activations of up to 4 tokens.
 * Products are signed x signed, so no offset correction is needed. The float
 * part follows kernels.h's contract step by step (no fma; see kernels_arm.c).
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

#ifndef ARM_BODY_COMMON
#define ARM_BODY_COMMON
enum { K_Q4S, K_Q4A, K_Q8 };
#define ALWAYS static inline __attribute__((always_inline))

/* 32 values of a weight row starting at value e, in value order */
ALWAYS int8x16x2_t load_step(int kind, const uint8_t *wq, int e) {
    int8x16x2_t w;
    if (kind == K_Q8) {
        w.val[0] = vld1q_s8((const int8_t *)wq + e);
        w.val[1] = vld1q_s8((const int8_t *)wq + e + 16);
        return w;
    }
    uint8x16_t b = vld1q_u8(wq + e / 2);
    int8x16_t lo, hi;
    if (kind == K_Q4S) { /* arithmetic shifts sign-extend the nibbles */
        lo = vshrq_n_s8(vshlq_n_s8(vreinterpretq_s8_u8(b), 4), 4);
        hi = vshrq_n_s8(vreinterpretq_s8_u8(b), 4);
    } else {
        lo = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F)));
        hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
    }
    w.val[0] = vzip1q_s8(lo, hi); /* values 0..15 */
    w.val[1] = vzip2q_s8(lo, hi); /* values 16..31 */
    return w;
}

ALWAYS int32x4_t reduce4(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    return vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d));
}
#endif

ALWAYS TGT int32x4_t FN(step_dot)(int kind, int32x4_t a, int8x16x2_t w, const int8_t *x) {
#ifdef DOT32_Q4 /* a cheaper form for the small int4 values */
    if (kind != K_Q8) return DOT32_Q4(a, w, x);
#else
    (void)kind;
#endif
    a = DOT(a, w.val[0], vld1q_s8(x));
    return DOT(a, w.val[1], vld1q_s8(x + 16));
}

/* Tokens t0 .. t0+T-1 (T = 2..4), all groups; the float part in 4 lanes. */
ALWAYS TGT void FN(tile_tokens)(int kind, const int T, const qact *x, const uint8_t *wq,
                                 const uint16_t *wd, const uint16_t *wm, float *out,
                                 size_t out_stride, int t0) {
    const int n = x->n, gs = x->gs, ng = x->ngroups;
    const int8_t *xr[4];
    const float *xd[4];
    const int32_t *xs[4];
    for (int t = 0; t < 4; t++) { /* lanes past T repeat token t0 (valid memory, unused) */
        size_t row = (size_t)(t0 + (t < T ? t : 0));
        xr[t] = x->q + row * (size_t)n;
        xd[t] = x->d + row * (size_t)ng;
        xs[t] = x->s + row * (size_t)ng;
    }
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int off = g * gs, end = off + gs < n ? off + gs : n;
        int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
        for (int e = off; e < end; e += 32) {
            int8x16x2_t w = load_step(kind, wq, e);
            a0 = FN(step_dot)(kind, a0, w, xr[0] + e);
            a1 = FN(step_dot)(kind, a1, w, xr[1] + e);
            if (T > 2) a2 = FN(step_dot)(kind, a2, w, xr[2] + e);
            if (T > 3) a3 = FN(step_dot)(kind, a3, w, xr[3] + e);
        }
        float32x4_t isum = vcvtq_f32_s32(reduce4(a0, a1, a2, a3));
        float dxa[4] = {xd[0][g], xd[1][g], xd[2][g], xd[3][g]};
        float32x4_t dx = vld1q_f32(dxa);
        float32x4_t term = vmulq_f32(vmulq_n_f32(dx, fp16_to_f32(wd[g])), isum);
        if (kind == K_Q4A) {
            int32_t sa[4] = {xs[0][g], xs[1][g], xs[2][g], xs[3][g]};
            float32x4_t s = vcvtq_f32_s32(vld1q_s32(sa));
            term = vaddq_f32(term, vmulq_f32(vmulq_n_f32(dx, fp16_to_f32(wm[g])), s));
        }
        acc = vaddq_f32(acc, term);
    }
    float r[4];
    vst1q_f32(r, acc);
    for (int t = 0; t < T; t++) out[(size_t)(t0 + t) * out_stride] = r[t];
}

/* One token t: four full groups at a time share one reduction and one vector
 * float step; their terms are then added in group order. */
ALWAYS TGT void FN(one_token)(int kind, const qact *x, const uint8_t *wq, const uint16_t *wd,
                               const uint16_t *wm, float *out, int t) {
    const int n = x->n, gs = x->gs, ng = x->ngroups;
    const int8_t *xr = x->q + (size_t)t * (size_t)n;
    const float *xd = x->d + (size_t)t * (size_t)ng;
    const int32_t *xs = x->s + (size_t)t * (size_t)ng;
    int nfull = n / gs, g = 0;
    float acc = 0.0f;
    for (; g + 4 <= nfull; g += 4) {
        int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
        int o = g * gs;
        for (int e = 0; e < gs; e += 32) {
            a0 = FN(step_dot)(kind, a0, load_step(kind, wq, o + e), xr + o + e);
            a1 = FN(step_dot)(kind, a1, load_step(kind, wq, o + gs + e), xr + o + gs + e);
            a2 = FN(step_dot)(kind, a2, load_step(kind, wq, o + 2 * gs + e), xr + o + 2 * gs + e);
            a3 = FN(step_dot)(kind, a3, load_step(kind, wq, o + 3 * gs + e), xr + o + 3 * gs + e);
        }
        float32x4_t isum = vcvtq_f32_s32(reduce4(a0, a1, a2, a3));
        float32x4_t dx = vld1q_f32(xd + g);
        float32x4_t d = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(wd + g)));
        float32x4_t term = vmulq_f32(vmulq_f32(d, dx), isum);
        if (kind == K_Q4A) {
            float32x4_t m = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(wm + g)));
            term = vaddq_f32(term, vmulq_f32(vmulq_f32(m, dx), vcvtq_f32_s32(vld1q_s32(xs + g))));
        }
        acc += vgetq_lane_f32(term, 0);
        acc += vgetq_lane_f32(term, 1);
        acc += vgetq_lane_f32(term, 2);
        acc += vgetq_lane_f32(term, 3);
    }
    for (; g < ng; g++) {
        int off = g * gs, end = off + gs < n ? off + gs : n;
        int32x4_t a = vdupq_n_s32(0);
        for (int e = off; e < end; e += 32) a = FN(step_dot)(kind, a, load_step(kind, wq, e), xr + e);
        int32_t isum = vaddvq_s32(a);
        float dx = xd[g];
        float term = (fp16_to_f32(wd[g]) * dx) * (float)isum;
        if (kind == K_Q4A) term = term + (fp16_to_f32(wm[g]) * dx) * (float)xs[g];
        acc += term;
    }
    *out = acc;
}

#include "kernels_body_entry.h"

#undef FN
