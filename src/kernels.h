/* Internal: the quantized dot-product kernels and their dispatch.
 *
 * One weight row times the int8 activations of `ntok` tokens. Weights are
 * stored as in docs/FORMAT.md (row-major, groups of `gs` along the row, the
 * last group of a row may be shorter; every row length is a multiple of 32).
 * Activations are quantized per group with the same group size as the weight:
 *     x[i] ~= xd[g] * xq[i],  xq in [-127, 127],  xs[g] = sum of xq over g.
 *
 * Every kernel computes, for each token t, exactly
 *     acc = 0.0f
 *     for g in groups:  acc += (wd[g] * xd[t][g]) * (float)isum[g]     (Q4S, Q8)
 *                       acc += (wd[g] * xd[t][g]) * (float)isum[g]
 *                            + (wm[g] * xd[t][g]) * (float)xs[t][g]   (Q4A)
 * with isum[g] the int32 sum over the group of wq * xq, and the float
 * operations in that order, so a SIMD kernel's output is bit-identical to
 * the scalar reference's whenever its integer sums are.
 */
#ifndef RUNQ4_KERNELS_H
#define RUNQ4_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Activations of ntok tokens, quantized for one group size. */
typedef struct qact {
    int8_t *q;      /* (ntok, n) */
    float *d;       /* (ntok, ngroups) */
    int32_t *s;     /* (ntok, ngroups): sum of q over each group */
    int n;          /* row length, a multiple of 32 */
    int gs;         /* group size, a multiple of 32 */
    int ngroups;    /* ceil(n / gs) */
    int ntok;
} qact;

/* One weight row: packed values, fp16 scales, fp16 minimums (Q4A only). */
typedef void (*dot_fn)(const qact *x, const uint8_t *wq, const uint16_t *wd,
                       const uint16_t *wm, float *out, size_t out_stride);

typedef struct kernel_set {
    const char *name;
    dot_fn dot_q4s;
    dot_fn dot_q4a;
    dot_fn dot_q8;
} kernel_set;

/* The scalar reference, always compiled (src/kernels.c).
 *
 * Adding a kernel set (the hook): define `const kernel_set kernels_<name>` and
 * `int kernels_<name>_supported(void)` (a runtime CPU check) in
 * src/kernels_x86.c or src/kernels_arm.c, guarded by architecture, and add
 * both to the ladder in src/kernels.c (best first). kernels.c compiles that
 * ladder when the file exists (RQ4_HAVE_X86_KERNELS / RQ4_HAVE_ARM_KERNELS,
 * found by __has_include or set by the build). Build everything with
 * -ffp-contract=off (or rely on the FP_CONTRACT pragma), so that no compiler
 * fuses the contract's multiply-adds. */
extern const kernel_set kernels_scalar;

/* The best kernel set compiled in and supported by this CPU. */
const kernel_set *kernels_select(void);

/* Every kernel set compiled in and supported by this CPU, NULL-terminated
 * (for the tests that compare each of them with the scalar reference). */
const kernel_set *const *kernels_available(void);

/* Quantizes one token's activations x[0..n) into row t of `a`. */
void quantize_act(qact *a, int t, const float *x);

/* IEEE half <-> single, exact for every finite half (round-to-nearest-even
 * the other way). */
static inline float fp16_to_f32(uint16_t h) {
    /* the magnitude's bits moved into a float's place, times 2^112 to rebias
     * the exponent: exact for normals and subnormals (unless built with
     * -ffast-math, which flushes subnormals to zero), and branch-free so
     * loops over it vectorize; inf and NaN get the top exponent instead */
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, mag = (uint32_t)(h & 0x7fff) << 13, bits;
    union { uint32_t u; float f; } v = { mag };
    if ((h & 0x7c00) == 0x7c00) {
        bits = sign | 0x7f800000u | mag;                   /* inf, nan */
    } else {
        v.f *= 0x1p112f;                                   /* zero, subnormal, normal */
        bits = sign | v.u;
    }
    v.u = bits;
    return v.f;
}

#endif /* RUNQ4_KERNELS_H */
