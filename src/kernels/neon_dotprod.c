/* The NEON dot-product kernel set: sdot (vdotq_s32), 4 int8 products summed
 * into each int32 lane (Cortex-A55/A76 and later, Apple M1, Neoverse). The
 * functions carry a target attribute, so the file builds with portable flags
 * (-march=armv8-a) and the set is used only when the CPU says so
 * (getauxval(AT_HWCAP) & HWCAP_ASIMDDP on Linux). The method is arm_body.h's,
 * shared with neon.c. */
#include "kernels.h"

#if defined(__aarch64__) && defined(__GNUC__)

#include <arm_neon.h>

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

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
#define TGT __attribute__((target("dotprod")))
#else
#define TGT __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

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
#include "arm_body.h"

const kernel_set rq4_kernels_neon_dotprod = {"neon_dotprod", dot_q4s, dot_q4a, dot_q8};

#endif /* __aarch64__ */
