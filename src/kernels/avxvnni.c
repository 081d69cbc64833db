/* The AVX-VNNI kernel set (Alder Lake, Zen 5): the unpacking of avx2.c, with
 * vpdpbusd (u8 x s8, 4 products summed into s32) on 256 bits; Q8 weights as
 * w + 128 (xor 0x80), corrected by 128 * xs. The method is x86_256.h's. A
 * compiler without the avxvnni target compiles nothing here, and dispatch.c
 * leaves the set out (RQ4_X86_AVXVNNI_COMPILED, kernels.h). */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && defined(RQ4_X86_AVXVNNI_COMPILED)

#include "x86.h"

int rq4_kernels_avxvnni_supported(void) {
    x86_features f = detect_x86();
    return f.avx2 && f.f16c && f.fma && f.avxvnni;
}

#define TGTVNNI __attribute__((target("avx2,f16c,fma,avxvnni")))

static inline __attribute__((always_inline)) TGTVNNI __m256i vnni_dot(__m256i a, __m256i w, const int8_t *x) {
    return _mm256_dpbusd_avx_epi32(a, w, _mm256_loadu_si256((const __m256i *)x));
}

static inline __attribute__((always_inline)) TGTVNNI __m256i vnni_dot2(__m256i lo, const int8_t *xa, __m256i hi,
                                                                         const int8_t *xb) {
    __m256i a = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, _mm256_loadu_si256((const __m256i *)xa));
    return _mm256_dpbusd_avx_epi32(a, hi, _mm256_loadu_si256((const __m256i *)xb));
}

static inline __attribute__((always_inline)) TGTVNNI __m128i vnni_dot2_s(__m128i lo, const int8_t *xa, __m128i hi,
                                                                           const int8_t *xb) {
    __m128i a = _mm_dpbusd_avx_epi32(_mm_setzero_si128(), lo, _mm_loadu_si128((const __m128i *)xa));
    return _mm_dpbusd_avx_epi32(a, hi, _mm_loadu_si128((const __m128i *)xb));
}

#define TGT TGTVNNI
#define ld_q8(p) _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p)), _mm256_set1_epi8((char)0x80))
#define dot_8(a, w, x) vnni_dot((a), (w), (x))
#define dot_u2(lo, xa, hi, xb) vnni_dot2((lo), (xa), (hi), (xb))
#define dot_u2_s(lo, xa, hi, xb) vnni_dot2_s((lo), (xa), (hi), (xb))
#define part_add(a, b) _mm256_add_epi32((a), (b))
#define part_widen(p, ones) ((void)(ones), (p)) /* the sums are int32 already */
#define Q8_OFF 128
#include "x86_256.h"

/* Prompts' int4 tiles by avx2.c's tok8 (its 8 tokens per vector beat this
 * file's tiles of 4 even with vpdpbusd here), the rest by this file's. */
static TGTVNNI void dot_q4s_prompt(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    rq4_avx2_tok8_q4s(dot_q4s, x, w, r0, r1, out, out_stride);
}

static TGTVNNI void dot_q4a_prompt(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    rq4_avx2_tok8_q4a(dot_q4a, x, w, r0, r1, out, out_stride);
}

/* no interleaved kernels of its own: dispatch.c gives it the next set's (avx2) */
const kernel_set rq4_kernels_avxvnni = {"avxvnni", dot_q4s_prompt, dot_q4a_prompt, dot_q8, NULL, NULL};

#endif /* x86 with AVX-VNNI */
