/* Internal: attention's loops over the KV cache for x86 SIMD, AVX2 + F16C
 * (src/kernels/attention_avx2.c) and AVX-512 (src/kernels/attention_avx512.c),
 * used by the engine when an x86 SIMD kernel set runs (the AVX-512 ones with
 * the AVX-512 set). They compute exactly what the engine's portable loops
 * compute, in the same order (multiplies and adds, never fused), so the
 * results are the same bits; only the register use differs (the portable
 * code's 16-lane accumulators spill on sixteen ymm registers).
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
 * vectorize (the engine's exp_nonpositive and the SIMD softmaxes, the same
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

/* Query rows (a head of a token) the scores and the weighted sums take per
 * pass over the keys and values: each key or value vector loaded and
 * converted serves that many rows. */
#define ATT_ROWS 6

/* Positions per chunk of the SIMD weighted sums: every column pass over a
 * chunk after the first finds its value rows in L1 (64 rows of 64 halves:
 * 8 KiB), where passes over all positions would read each row from memory
 * or L2 again per pass. */
#define VALUES_CHUNK 64

/* The weighted sums' range for rows with n[0..nr) positions: *lo the fewest,
 * *hi the most. With no position at all every out row is +0.0f, written
 * here, and the result is 0. */
static inline int attention_values_range(const int *n, int nr, int hd, float *const *out, int *lo, int *hi) {
    *lo = *hi = n[0];
    for (int r = 1; r < nr; r++) {
        *lo = n[r] < *lo ? n[r] : *lo;
        *hi = n[r] > *hi ? n[r] : *hi;
    }
    if (*hi > 0) return 1;
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < hd; i++) out[r][i] = 0.0f;
    return 0;
}

/* One instruction set's loops. Each computes what the portable loops do, in
 * their order:
 *   scores   nq (1..ATT_ROWS) query rows q[r] (hd values each) against keys
 *            0 .. n-1: out[r][p] = (sum over i, in order, of q[r][i] * key
 *            p [i]) * scale, each sum starting from +0.0f
 *   values   out[r] (hd values) for the nr (1..ATT_ROWS) rows: for each r,
 *            starting from +0.0f, out[r] += att[r][p] * value row p for p =
 *            0, 1, .. n[r]-1 in order
 *   softmax  x[0..n) = softmax(x), exactly as the engine's portable softmax:
 *            the maximum (16 lanes, then lane by lane, then the last n % 16),
 *            e^(x - max) (above), the sum as 16 interleaved partial sums over
 *            whole 16s reduced by kernels.h's tree, then the last n % 16 in
 *            order; each x times 1 / sum
 * `values` needs hd to be a multiple of hd_multiple. */
typedef struct rq4_attention_loops {
    int hd_multiple;
    void (*scores)(const float *const *q, int nq, int hd, const void *keys, int f16, float scale, float *const *out,
                   int n);
    void (*values)(const float *const *att, const int *n, int nr, int hd, const void *values, int f16,
                   float *const *out);
    void (*softmax)(float *x, int n);
} rq4_attention_loops;

/* AVX2 + F16C (src/kernels/attention_avx2.c): 16 ymm registers */
extern const rq4_attention_loops rq4_attention_avx2;
int rq4_attention_avx2_supported(void);

/* AVX-512 (src/kernels/attention_avx512.c): 32 zmm registers, 16 lanes */
extern const rq4_attention_loops rq4_attention_avx512;
int rq4_attention_avx512_supported(void);

#endif /* RUNQ4_KERNELS_ATTENTION_H */
