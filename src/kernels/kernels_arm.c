/* aarch64 kernel sets: NEON with the dotprod extension, and plain NEON.
 *
 *   neon_dotprod  sdot (vdotq_s32): 4 int8 products summed into each int32
 *                 lane (Cortex-A55/A76 and later, Apple M1, Neoverse)
 *   neon          vmull_s8 + vmlal_high_s8 (two products per int16 lane, at
 *                 most 2 * 128 * 127, no overflow; four for int4 weights)
 *                 + vpadalq_s16 into int32
 *                 (every aarch64 core, e.g. Cortex-A53/A72 of older boards)
 *
 * The dotprod functions carry a target attribute, so the file builds with
 * portable flags (-march=armv8-a) and the set is used only when the CPU says
 * so (getauxval(AT_HWCAP) & HWCAP_ASIMDDP on Linux). The shared body is
 * src/kernels_arm_body.h (per row, tiles of up to 4 tokens; the 16 lanes of
 * kernels.h's contract in four float32x4 per token). Results are
 * bit-identical to kernels_scalar; the
 * compiler must not fuse a*b+c into an fma (aarch64 always has fma), hence
 * the pragmas below, besides the builds' -std=c11 / -ffp-contract=off.
 */
#include "kernels.h"

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <arm_neon.h>

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

#ifdef __clang__
#define TGT_DOTPROD __attribute__((target("dotprod")))
#else
#define TGT_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

int kernels_neon_supported(void) { return 1; } /* NEON is part of aarch64 */

int kernels_neon_dotprod_supported(void) {
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

/* ---- neon ---- */

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

#define SFX neon
#define TGT
#define DOT(a, w, x) neon_dot((a), (w), (x))
#define DOT32_Q4(a, w, x) neon_dot32_q4((a), (w), (x))
#include "kernels_arm_body.h"
#undef SFX
#undef TGT
#undef DOT
#undef DOT32_Q4

const kernel_set kernels_neon = {"neon", dot_q4s_neon, dot_q4a_neon, dot_q8_neon};

/* ---- neon_dotprod ---- */

#if defined(__clang__) && __clang_major__ < 16 && !defined(__ARM_FEATURE_DOTPROD)
/* older clang declares vdotq_s32 only when the whole build targets dotprod */
static inline __attribute__((always_inline)) int32x4_t sdot_asm(int32x4_t a, int8x16_t w, int8x16_t x) {
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(a) : "w"(w), "w"(x));
    return a;
}
#define DOT(a, w, x) sdot_asm((a), (w), (x))
#else
#define DOT(a, w, x) vdotq_s32((a), (w), (x))
#endif
#define SFX neon_dotprod
#define TGT TGT_DOTPROD
#include "kernels_arm_body.h"
#undef SFX
#undef TGT
#undef DOT

const kernel_set kernels_neon_dotprod = {"neon_dotprod", dot_q4s_neon_dotprod, dot_q4a_neon_dotprod,
                                         dot_q8_neon_dotprod};

#endif /* __aarch64__ */
