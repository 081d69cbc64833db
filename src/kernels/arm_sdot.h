/* sdot on 16 int8 pairs into 4 int32 lanes, for the dotprod kernel files
 * (they define ALWAYS and target dotprod before including this). */
#ifndef RQ4_ARM_SDOT_H
#define RQ4_ARM_SDOT_H

#if defined(__clang__) && __clang_major__ < 16 && !defined(__ARM_FEATURE_DOTPROD)
/* older clang declares vdotq_s32 only when the whole build targets dotprod */
ALWAYS int32x4_t sdot(int32x4_t a, int8x16_t w, int8x16_t x) {
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(a) : "w"(w), "w"(x));
    return a;
}
#else
ALWAYS int32x4_t sdot(int32x4_t a, int8x16_t w, int8x16_t x) { return vdotq_s32(a, w, x); }
#endif

#endif
