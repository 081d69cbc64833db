/* x86-64 kernel sets: AVX2, AVX-VNNI and AVX-512 VNNI.
 *
 * Every function carries its own target attribute, so this file builds with
 * portable flags (no -mavx2) and each set is used only when the CPU (and the
 * OS, for the AVX/AVX-512 register state) supports it: kernels.c asks
 * kernels_<name>_supported() at run time. The shared body of the three sets is
 * src/kernels_x86_body.h, included once per set; it describes the method.
 *
 *   avx2        int4: 64 values per 32-byte load against qact.qp (and; shift,
 *               and), vpmaddubsw + vpmaddwd; Q8 by the abs/sign trick
 *   avxvnni     the same unpack, vpdpbusd on 256 bits (Alder Lake, Zen 5)
 *   avx512vnni  64 values per step, vpdpbusd on 512 bits (Ice Lake, Zen 4)
 *
 * Results are bit-identical to kernels_scalar: exact int32 group sums, then
 * the float steps of kernels.h's contract in its order. The compiler must
 * not fuse a*b+c into an fma here (GCC does so through the intrinsics when
 * the target has FMA, which AVX-512 implies), hence the pragmas below; the
 * builds also compile in ISO C mode (-std=c11), where GCC does not contract.
 */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
#define RQ4_X86_AVXVNNI_COMPILED 1 /* the compiler knows the avxvnni target */
#endif

#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

/* ---- CPU detection: CPUID feature bits plus the OS-enabled register state
 * (XCR0), as __builtin_cpu_supports lacks avxvnni/f16c on older compilers. */

typedef struct x86_features {
    int avx2, f16c, avxvnni, avx512; /* avx512: F, BW, VL and VNNI */
} x86_features;

static unsigned long long read_xcr0(void) {
    unsigned lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0)); /* xgetbv */
    return ((unsigned long long)hi << 32) | lo;
}

static x86_features detect_x86(void) {
    x86_features f = {0, 0, 0, 0};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    f.f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return f;
    unsigned long long xcr0 = read_xcr0();
    int os_avx = (xcr0 & 0x6) == 0x6, os_avx512 = (xcr0 & 0xe6) == 0xe6;
    if (!os_avx || __get_cpuid_max(0, 0) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    int avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    int avx512vnni = (c >> 11) & 1;
    f.avx512 = os_avx512 && avx512f && avx512bw && avx512vl && avx512vnni;
    __cpuid_count(7, 1, a, b, c, d);
    f.avxvnni = (a >> 4) & 1;
    return f;
}

int kernels_avx2_supported(void) {
    x86_features f = detect_x86();
    return f.avx2 && f.f16c;
}

int kernels_avxvnni_supported(void) {
#ifdef RQ4_X86_AVXVNNI_COMPILED
    x86_features f = detect_x86();
    return f.avx2 && f.f16c && f.avxvnni;
#else
    return 0;
#endif
}

int kernels_avx512vnni_supported(void) {
    x86_features f = detect_x86();
    return f.avx2 && f.f16c && f.avx512;
}

/* ---- 256-bit helpers shared by avx2 and avxvnni ---- */

#define TGT256 __attribute__((target("avx2,f16c")))

/* 16 bytes of packed nibbles -> 32 bytes, value i in byte i (for the 16-token
 * prompt kernel's row unpacking, src/kernels_x86_tok16.h): as 16-bit words,
 * (b | b << 4) & 0x0F0F puts the low nibble in the low byte and the high
 * nibble in the high byte. sgn: xor 8 turns the int4 q into q + 8 (0..15). */
static inline __attribute__((always_inline)) TGT256 __m256i unpack32_256(const uint8_t *p, int sgn) {
    __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
    w = _mm256_and_si256(_mm256_or_si256(w, _mm256_slli_epi16(w, 4)), _mm256_set1_epi16(0x0F0F));
    if (sgn) w = _mm256_xor_si256(w, _mm256_set1_epi8(8));
    return w;
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

#define SFX avx2
#define TGT TGT256
#define V __m256i
#define BIG 32
#define v_zero() _mm256_setzero_si256()
#define ld_q8(p) _mm256_loadu_si256((const __m256i *)(p))
#define dot_8(a, w, x) avx2_dot_8((a), (w), (x))
#define dot_u2(lo, xa, hi, xb) avx2_dot_u2((lo), (xa), (hi), (xb))
#define dot_u2_s(lo, xa, hi, xb) avx2_dot_u2_s((lo), (xa), (hi), (xb))
#define Q8_OFF 0
#include "kernels_x86_body.h"
#undef SFX
#undef TGT
#undef dot_8
#undef dot_u2
#undef dot_u2_s
#undef ld_q8
#undef Q8_OFF

const kernel_set kernels_avx2 = {"avx2", dot_q4s_avx2, dot_q4a_avx2, dot_q8_avx2};

/* ---- avxvnni: vpdpbusd (u8 x s8, 4 products summed into s32) on 256 bits;
 * Q8 weights as w + 128 (xor 0x80), corrected by 128 * xs ---- */

#ifdef RQ4_X86_AVXVNNI_COMPILED
#define TGTVNNI __attribute__((target("avx2,f16c,avxvnni")))

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

#define SFX avxvnni
#define TGT TGTVNNI
#define ld_q8(p) _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p)), _mm256_set1_epi8((char)0x80))
#define dot_8(a, w, x) vnni_dot((a), (w), (x))
#define dot_u2(lo, xa, hi, xb) vnni_dot2((lo), (xa), (hi), (xb))
#define dot_u2_s(lo, xa, hi, xb) vnni_dot2_s((lo), (xa), (hi), (xb))
#define Q8_OFF 128
#include "kernels_x86_body.h"
#undef SFX
#undef TGT
#undef dot_8
#undef dot_u2
#undef dot_u2_s
#undef ld_q8
#undef Q8_OFF

const kernel_set kernels_avxvnni = {"avxvnni", dot_q4s_avxvnni, dot_q4a_avxvnni, dot_q8_avxvnni};
#else
/* a compiler without AVX-VNNI intrinsics: the set exists but is never chosen */
const kernel_set kernels_avxvnni = {"avxvnni", dot_q4s_avx2, dot_q4a_avx2, dot_q8_avx2};
#endif

#undef V
#undef BIG
#undef v_zero

/* ---- avx512vnni: 64 values per step ---- */

#define TGT512 __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

static inline __attribute__((always_inline)) TGT512 __m512i v512_dot(__m512i a, __m512i w, const int8_t *x) {
    return _mm512_dpbusd_epi32(a, w, _mm512_loadu_si512((const void *)x));
}

/* a 32-value step: the upper halves are zero, so they add nothing */
static inline __attribute__((always_inline)) TGT512 __m512i v512_dot_s(__m512i a, __m256i w, const int8_t *x) {
    __m256i xv = _mm256_loadu_si256((const __m256i *)x);
    return _mm512_dpbusd_epi32(a, _mm512_zextsi256_si512(w), _mm512_zextsi256_si512(xv));
}

#define SFX avx512vnni
#define TGT TGT512
#define V __m512i
#define BIG 64
#define v_zero() _mm512_setzero_si512()
#define ld_q8(p) _mm512_xor_si512(_mm512_loadu_si512((const void *)(p)), _mm512_set1_epi8((char)0x80))
#define dot_8(a, w, x) v512_dot((a), (w), (x))
#define ld_q8_s(p) _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p)), _mm256_set1_epi8((char)0x80))
#define dot_8_s(a, w, x) v512_dot_s((a), (w), (x))
#define Q8_OFF 128
#include "kernels_x86_body.h"
#include "kernels_x86_tok16.h"

const kernel_set kernels_avx512vnni = {"avx512vnni", dot_q4s_tok16, dot_q4a_tok16, dot_q8_tok16};

#endif /* x86 */
