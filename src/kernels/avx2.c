/* The AVX2 kernel set: int4 64 values per 32-byte load against qact.qp (and;
 * shift, and), vpmaddubsw + vpmaddwd; Q8 by the abs/sign trick. The method
 * is x86_256.h's, shared with avxvnni.c. */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include "x86.h"

int rq4_kernels_avx2_supported(void) {
    x86_features f = detect_x86();
    return f.avx2 && f.f16c;
}

/* ---- avx2: vpmaddubsw (u8 x s8 -> s16 pairs, no saturation here: 2*15*127 and
 * 2*128*127 fit) then vpmaddwd with ones -> s32 ---- */

/* signed x signed: |w| (0..128 as u8) times x with w's sign */
static inline __attribute__((always_inline)) TGT256 __m256i avx2_dot_8(__m256i a, __m256i w, const int8_t *x) {
    __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x), w);
    __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), xs);
    return _mm256_add_epi32(a, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* int4 in nibble order (qact.qp): lo . xa + hi . xb, the 16-bit pair sums of
 * both added before widening (2 * 2 * 15 * 128 fits int16); _s: 128 bits */
static inline __attribute__((always_inline)) TGT256 __m256i avx2_dot_u2(__m256i lo, const int8_t *xa, __m256i hi,
                                                                        const int8_t *xb) {
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xa)),
                                 _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)xb)));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

static inline __attribute__((always_inline)) TGT256 __m128i avx2_dot_u2_s(__m128i lo, const int8_t *xa, __m128i hi,
                                                                          const int8_t *xb) {
    __m128i p = _mm_add_epi16(_mm_maddubs_epi16(lo, _mm_loadu_si128((const __m128i *)xa)),
                              _mm_maddubs_epi16(hi, _mm_loadu_si128((const __m128i *)xb)));
    return _mm_madd_epi16(p, _mm_set1_epi16(1));
}

#define TGT TGT256
#define ld_q8(p) _mm256_loadu_si256((const __m256i *)(p))
#define dot_8(a, w, x) avx2_dot_8((a), (w), (x))
#define dot_u2(lo, xa, hi, xb) avx2_dot_u2((lo), (xa), (hi), (xb))
#define dot_u2_s(lo, xa, hi, xb) avx2_dot_u2_s((lo), (xa), (hi), (xb))
#define Q8_OFF 0
#include "x86_256.h"

const kernel_set rq4_kernels_avx2 = {"avx2", dot_q4s, dot_q4a, dot_q8};

#endif /* x86 */
