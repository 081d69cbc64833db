/* Internal: attention's two loops over the KV cache written for AVX2 + F16C
 * (src/kernels/attention_avx2.c), used by the engine when any x86 SIMD
 * kernel set runs (AVX2, AVX-VNNI, AVX-512 VNNI). They compute exactly what
 * the engine's portable loops compute, in the same order (multiplies and
 * adds, never fused), so the
 * results are the same bits; only the register use differs (sixteen ymm
 * registers: the portable code's 16-lane accumulators spill there).
 *
 * Cache layouts (the engine's key_at and kv_at):
 *   keys    one head's positions in blocks of 16: value i of position
 *           16 * blk + k at element blk * 16 * hd + 16 * i + k
 *   values  one head's rows: value i of position p at element p * hd + i
 * Elements are float, or IEEE half when f16 (converted exactly).
 */
#ifndef RUNQ4_KERNELS_ATTENTION_H
#define RUNQ4_KERNELS_ATTENTION_H

/* e^x for x <= 0, to about 1 ulp, without a libm call so that loops over it
 * vectorize (the engine's exp_nonpositive and the AVX2 softmax, the same
 * operations in the same order): x clamped below at EXP_FLOOR (NaN too),
 * x = n ln2 + r (Cody-Waite: n = round(x / ln2) by adding and subtracting
 * 1.5 * 2^23, r = (x - n LN2_HI) - n LN2_LO), Cephes' expf polynomial for
 * e^r (p = P0, then p = p r + P1 .. P5; e^r = p r r + r + 1), times 2^n put
 * into the exponent bits. Below the floor (e^x < 2^-125) it saturates near
 * FLT_MIN, negligible next to the softmax's largest term, 1. */
#define EXP_FLOOR (-87.0f)
#define EXP_LOG2E 1.44269504088896341f
#define EXP_ROUND 12582912.0f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO (-2.12194440e-4f)
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

/* 1 when this build has the kernels and the CPU runs AVX2 and F16C. */
int rq4_attention_avx2_supported(void);

/* Query rows (a head of a token) the scores and the weighted sums take per
 * pass over the keys and values: each key or value vector loaded and
 * converted serves that many rows (12 accumulators of the 16 registers). */
#define ATT_ROWS 6

/* Scores of nq (1..ATT_ROWS) query rows q[r] (hd values each) against keys
 * 0 .. n-1: out[r][p] = (sum over i, in order, of q[r][i] * key p [i]) *
 * scale, each sum starting from +0.0f. */
void rq4_attention_scores_avx2(const float *const *q, int nq, int hd, const void *keys, int f16, float scale,
                               float *const *out, int n);

/* out[r] (hd values, hd a multiple of 8) for the nr (1..ATT_ROWS) rows: for
 * each r, starting from +0.0f, out[r] += att[r][p] * value row p for p = 0,
 * 1, .. n[r]-1 in order. */
void rq4_attention_values_avx2(const float *const *att, const int *n, int nr, int hd, const void *values, int f16,
                               float *const *out);

/* x[0..n) = softmax(x), exactly as the engine's portable softmax: the
 * maximum (16 lanes, then lane by lane, then the last n % 16), e^(x - max)
 * (above), the sum as 16 interleaved partial sums over whole 16s reduced by
 * kernels.h's tree, then the last n % 16 in order; each x times 1 / sum. */
void rq4_attention_softmax_avx2(float *x, int n);

#endif /* RUNQ4_KERNELS_ATTENTION_H */
