/* The AVX-VNNI kernel set (Alder Lake, Zen 5): the unpacking of avx2.c, with
 * vpdpbusd on 256 bits in its VEX form (x86_vnni256.h). A
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

#define TGT TGTVNNI
#define VNNI256(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#define VNNI128(acc, u, s) _mm_dpbusd_avx_epi32((acc), (u), (s))
#include "x86_vnni256.h"

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
