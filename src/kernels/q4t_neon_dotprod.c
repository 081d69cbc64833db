/* The Q4T kernel of the neon_dotprod set, rq4_dot_q4t_neon_dotprod
 * (dispatch.c gives it to rq4_kernels_neon_dotprod, which runs only where the
 * CPU has dotprod): the table lookups and the float steps of q4t_arm.h, the
 * products by sdot. Built with portable flags; the functions after the target
 * pragma carry dotprod (as in neon_dotprod.c). */
#include "kernels.h"

#ifdef RQ4_ARM

#include <arm_neon.h>

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif

#define ALWAYS static inline __attribute__((always_inline))

#include "arm_sdot.h"

ALWAYS int32x4_t block_sums(int8x16_t wl, int8x16_t wh, int8x16_t xe, int8x16_t xo) {
    return sdot(sdot(vdupq_n_s32(0), wl, xe), wh, xo);
}

#include "q4t_arm.h"

void rq4_dot_q4t_neon_dotprod(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    q4t_rows(x, w, r0, r1, out, out_stride);
}

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif /* RQ4_ARM */
