/* The NEON kernel set, for every aarch64 core (e.g. the Cortex-A53/A72 of
 * older boards): vmull_s8 + vmlal_high_s8 (two products per int16 lane, at
 * most 2 * 128 * 127, no overflow; four for int4 weights) + vpadalq_s16 into
 * int32. The method is arm_body.h's, shared with neon_dotprod.c. */
#include "kernels.h"

#if defined(__aarch64__) && defined(__GNUC__)

#include <arm_neon.h>

int rq4_kernels_neon_supported(void) { return 1; } /* NEON is part of aarch64 */

static inline __attribute__((always_inline)) int32x4_t neon_dot(int32x4_t a, int8x16_t w, int8x16_t x) {
    int16x8_t p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    p = vmlal_high_s8(p, w, x);
    return vpadalq_s16(a, p);
}

/* int4 weights: |w * x| <= 15 * 127, so four products fit an int16 lane and
 * 32 values take 4 multiplies and one pairwise accumulate instead of 6 ops */
static inline __attribute__((always_inline)) int32x4_t neon_dot32_q4(int32x4_t a, int8x16x2_t w, const int8_t *x) {
    int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    int16x8_t p = vmull_s8(vget_low_s8(w.val[0]), vget_low_s8(x0));
    p = vmlal_high_s8(p, w.val[0], x0);
    p = vmlal_s8(p, vget_low_s8(w.val[1]), vget_low_s8(x1));
    p = vmlal_high_s8(p, w.val[1], x1);
    return vpadalq_s16(a, p);
}

#define TGT
#define DOT(a, w, x) neon_dot((a), (w), (x))
#define DOT32_Q4(a, w, x) neon_dot32_q4((a), (w), (x))
#include "arm_body.h"

const kernel_set rq4_kernels_neon = {"neon", dot_q4s, dot_q4a, dot_q8};

#endif /* __aarch64__ */
