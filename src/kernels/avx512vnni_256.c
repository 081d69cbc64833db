/* The per-token kernels of the avx512vnni set (decoding, and the tokens a
 * prompt leaves past its 16-token tiles, which avx512vnni.c computes):
 * x86_256.h's body with vpdpbusd on 256-bit vectors in its EVEX form
 * (x86_vnni256.h; AVX-512 VL), which every AVX-512 VNNI CPU has. A 512-bit loop
 * does half the steps per row, yet decodes slower when the weights stream
 * from memory (docs/PERFORMANCE.md). */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include "x86.h"

#define TGT TGT512
#define VNNI256(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define VNNI128(acc, u, s) _mm_dpbusd_epi32((acc), (u), (s))
#include "x86_vnni256.h"

TGT512 void rq4_avx512vnni_tokens_q4s(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_q4s(x, w, r0, r1, out, out_stride);
}

TGT512 void rq4_avx512vnni_tokens_q4a(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_q4a(x, w, r0, r1, out, out_stride);
}

TGT512 void rq4_avx512vnni_tokens_q8(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_q8(x, w, r0, r1, out, out_stride);
}

#endif /* x86 */
