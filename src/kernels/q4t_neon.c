/* The Q4T kernel of the neon set, rq4_dot_q4t_neon (dispatch.c gives it to
 * rq4_kernels_neon): the table lookups and the float steps of q4t_arm.h,
 * the products by vmull_s8 / vmlal_high_s8 into int16 lanes (two products of
 * at most 128 * 127 each fit), then pairwise adds into int32. */
#include "kernels.h"

#ifdef RQ4_ARM

#include <arm_neon.h>

#define ALWAYS static inline __attribute__((always_inline))

ALWAYS int32x4_t block_sums(int8x16_t wl, int8x16_t wh, int8x16_t xe, int8x16_t xo) {
    int16x8_t pe = vmlal_high_s8(vmull_s8(vget_low_s8(wl), vget_low_s8(xe)), wl, xe);
    int16x8_t po = vmlal_high_s8(vmull_s8(vget_low_s8(wh), vget_low_s8(xo)), wh, xo);
    return vpadalq_s16(vpaddlq_s16(pe), po);
}

#include "q4t_arm.h"

void rq4_dot_q4t_neon(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    q4t_rows(x, w, r0, r1, out, out_stride);
}

#endif /* RQ4_ARM */
