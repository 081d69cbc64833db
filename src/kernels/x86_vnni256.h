/* x86_256.h with vpdpbusd (u8 x s8, 4 products summed into s32) on 256
 * bits, included once by avxvnni.c (the VEX form of AVX-VNNI) and once by
 * avx512vnni_256.c (the EVEX form of AVX-512 VNNI): the same kernels, two
 * encodings, for CPUs that have one and not the other. Q8 weights as w + 128
 * (xor 0x80), corrected by 128 * xs. Not a public header; not compiled on its
 * own. The includer defines
 *   TGT                  the target attribute of every function
 *   VNNI256(acc, u, s)   vpdpbusd on __m256i
 *   VNNI128(acc, u, s)   vpdpbusd on __m128i */

static inline __attribute__((always_inline)) TGT __m256i vnni_dot(__m256i a, __m256i w, const int8_t *x) {
    return VNNI256(a, w, _mm256_loadu_si256((const __m256i *)x));
}

static inline __attribute__((always_inline)) TGT __m256i vnni_dot2(__m256i lo, const int8_t *xa, __m256i hi,
                                                                    const int8_t *xb) {
    __m256i a = VNNI256(_mm256_setzero_si256(), lo, _mm256_loadu_si256((const __m256i *)xa));
    return VNNI256(a, hi, _mm256_loadu_si256((const __m256i *)xb));
}

static inline __attribute__((always_inline)) TGT __m128i vnni_dot2_s(__m128i lo, const int8_t *xa, __m128i hi,
                                                                      const int8_t *xb) {
    __m128i a = VNNI128(_mm_setzero_si128(), lo, _mm_loadu_si128((const __m128i *)xa));
    return VNNI128(a, hi, _mm_loadu_si128((const __m128i *)xb));
}

#define ld_q8(p) _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p)), _mm256_set1_epi8((char)0x80))
#define dot_8(a, w, x) vnni_dot((a), (w), (x))
#define dot_u2(lo, xa, hi, xb) vnni_dot2((lo), (xa), (hi), (xb))
#define dot_u2_s(lo, xa, hi, xb) vnni_dot2_s((lo), (xa), (hi), (xb))
#define part_add(a, b) _mm256_add_epi32((a), (b))
#define part_widen(p, ones) ((void)(ones), (p)) /* the sums are int32 already */
#define Q8_OFF 128
#include "x86_256.h"
