/* What the x86-64 kernel files (avx2.c, avxvnni.c, avx512vnni.c,
 * avx512vnni_256.c) share: CPU detection, the weight-row view and the 256-bit
 * scale and load helpers.
 * Not a public header; each file includes it once.
 *
 * Every function carries its own target attribute, so the files build with
 * portable flags (no -mavx2) and each set is used only when the CPU (and the
 * OS, for the AVX/AVX-512 register state) supports it: dispatch.c asks
 * rq4_kernels_<name>_supported() at run time. Results are bit-identical to
 * rq4_kernels_scalar: exact int32 group sums, then the float steps of
 * kernels.h's contract in its order, its fmaf as an fma intrinsic (every set
 * here requires FMA). The compiler must not fuse any other a*b+c into an fma
 * (GCC does so through the intrinsics when the target has FMA), hence the
 * pragmas in kernels.h; the builds also compile in ISO C mode (-std=c11),
 * where GCC does not contract.
 */
#ifndef RUNQ4_KERNELS_X86_H
#define RUNQ4_KERNELS_X86_H

#include "kernels.h"


#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

/* ---- CPU detection: CPUID feature bits plus the OS-enabled register state
 * (XCR0), as __builtin_cpu_supports lacks avxvnni/f16c on older compilers. */

typedef struct x86_features {
    int avx2, f16c, fma, avxvnni, avx512; /* avx512: F, BW, VL and VNNI */
} x86_features;

static inline unsigned long long read_xcr0(void) {
    unsigned lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0)); /* xgetbv */
    return ((unsigned long long)hi << 32) | lo;
}

static inline x86_features detect_x86(void) {
    x86_features f = {0, 0, 0, 0, 0};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    f.f16c = (c >> 29) & 1;
    f.fma = (c >> 12) & 1;
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

#define TGT256 __attribute__((target("avx2,f16c,fma")))
#define TGT512 __attribute__((target("avx2,f16c,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

enum { K_Q4S, K_Q4A, K_Q8 };

/* avx2.c's prompt kernel for int4 (tok8: the tiles, 8 tokens per vector),
 * also the AVX-VNNI set's: the tiles of x there, the tokens after them by
 * `rest`. AVX2 and F16C only. */
void rq4_avx2_tok8_q4s(dot_fn rest, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);
void rq4_avx2_tok8_q4a(dot_fn rest, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);

/* avx512vnni_256.c's per-token kernels: avx512vnni.c's `rest` */
void rq4_avx512vnni_tokens_q4s(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);
void rq4_avx512vnni_tokens_q4a(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);
void rq4_avx512vnni_tokens_q8(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);

#define ALWAYS static inline __attribute__((always_inline))

/* One weight row as the kernels read it. */
typedef struct row_view {
    const uint8_t *q;
    const uint16_t *d, *m; /* m: Q4A only */
    int ng;                /* groups in the row */
    int avail;             /* scales readable from d (this row's and the next rows') */
    int bpg;               /* blocks per group (gs / QK) */
    int sh;                /* log2(bpg) when bpg is a power of two, else -1 */
} row_view;

ALWAYS void row_of(row_view *v, const qmat *w, int r, int kind) {
    v->q = w->q + (size_t)r * w->row_bytes;
    v->d = w->d + (size_t)r * (size_t)w->ngroups;
    v->m = kind == K_Q4A ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
    v->ng = w->ngroups;
    v->avail = (w->rows - r) * w->ngroups;
    v->bpg = w->gs / QK;
    v->sh = (v->bpg & (v->bpg - 1)) == 0 ? __builtin_ctz((unsigned)v->bpg) : -1;
}

/* Where to load W consecutive scales from so that they include groups g0 ..
 * (the groups a chunk needs): g0 itself, or the row's last W, or -1 when
 * neither is readable (a row of fewer than W groups near the matrix's end). */
ALWAYS int scale_base(const row_view *v, int g0, int W) {
    return g0 + W <= v->avail ? g0 : v->ng >= W ? v->ng - W : -1;
}


/* Decoding reads every weight once, from memory, and the one-token loops
 * walk a matrix's rows in one or a few runs of address order. The hardware
 * prefetchers stop at each 4 KiB boundary and start again behind the loop,
 * so the loops ask for the lines PREFETCH_AHEAD bytes past those they read.
 * A prefetch that misses the TLB is dropped, so where the weights sit in
 * 4 KiB pages (qmat.touch_pages) the loops also load one byte a page ahead
 * once per page (touch_next_page): the walk of the next page's tables
 * (nested ones in a VM) then overlaps this page, and the prefetches find it
 * done. In 2 MB pages that load would be one more wait for memory with no
 * walk to hide. Only for rows of whole steps: with a short tail after each
 * step the same load made decoding slower (docs/PERFORMANCE.md). */
#define PREFETCH_AHEAD 2048
#define TOUCH_PAGE 4096 /* the smallest x86 page */

/* n: the bytes the loop reads now, from p */
ALWAYS void prefetch_ahead(const uint8_t *p, size_t n) {
    uintptr_t a = ((uintptr_t)p + PREFETCH_AHEAD) & ~(uintptr_t)63, e = (uintptr_t)p + PREFETCH_AHEAD + n;
    for (; a < e; a += 64) _mm_prefetch((const char *)a, _MM_HINT_T0);
}

/* The same for one of a run of steps of n bytes each (n a multiple of 64):
 * the n / 64 lines from the one holding p + PREFETCH_AHEAD, at fixed offsets,
 * so no loop and no alignment arithmetic; step by step the run still asks
 * for each line once. */
ALWAYS void prefetch_step(const uint8_t *p, size_t n) {
    for (size_t k = 0; k < n; k += 64) _mm_prefetch((const char *)p + PREFETCH_AHEAD + k, _MM_HINT_T0);
}

/* The one-token loops read a matrix's rows as ROW_STREAMS runs of
 * consecutive rows that take turns row by row: the weights then come as that
 * many sequential streams, which keeps more lines in flight than one stream
 * with the same prefetches. Weights in 4 KiB pages are read as one stream:
 * there each stream's page walks cost more than the streams gain
 * (docs/PERFORMANCE.md). Each row's result is the same in any order. */
#define ROW_STREAMS 3

/* the streams to read a matrix's rows as; small_pages: its weights sit in
 * 4 KiB pages (qmat.touch_pages) */
ALWAYS int row_streams(int small_pages) { return small_pages ? 1 : ROW_STREAMS; }

/* rows per run when rows r0 .. r1 are read as `streams` runs: run k has rows
 * r0 + k * run .. (the last run may be shorter) */
ALWAYS int stream_run(int r0, int r1, int streams) { return (r1 - r0 + streams - 1) / streams; }

/* p: a step of n bytes; end: the end of the matrix's weights */
ALWAYS void touch_next_page(const uint8_t *p, size_t n, const uint8_t *end) {
    if (((uintptr_t)p & (TOUCH_PAGE - 1)) < n && end - p > TOUCH_PAGE)
        (void)*(volatile const uint8_t *)(p + TOUCH_PAGE);
}

/* The integer correction per block: dot - off * xs. */
ALWAYS int offset_of(int kind, int q8_off) { return kind == K_Q4S ? 8 : kind == K_Q8 ? q8_off : 0; }

/* lanes 0..7: all ones below cnt */
ALWAYS __attribute__((target("avx2"))) __m256i mask8(int cnt) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* The fp16 values h[group of b] for blocks b0 .. b0+7 as floats (cnt of them
 * valid, the others any finite value of the row). The 8 scales loaded start
 * at the first group needed, or end at the row's last (the groups needed lie
 * in between). */
ALWAYS __attribute__((target("avx2,f16c"))) __m256 spread8(const row_view *v, __m128i raw, int b0, int base) {
    __m256i idx = _mm256_sub_epi32(
        _mm256_srl_epi32(_mm256_add_epi32(_mm256_set1_epi32(b0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                         _mm_cvtsi32_si128(v->sh)),
        _mm256_set1_epi32(base));
    return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(raw), idx);
}

/* group sizes that are not a power of two times 32: one scale at a time */
ALWAYS __attribute__((target("avx2,f16c"))) __m256 scales8_any(const row_view *v, const uint16_t *h, int b0, int cnt) {
    float f[8] = {0};
    for (int k = 0; k < cnt; k++) f[k] = _cvtsh_ss(h[(b0 + k) / v->bpg]);
    return _mm256_loadu_ps(f);
}

ALWAYS __attribute__((target("avx2,f16c"))) __m256 scales8(const row_view *v, const uint16_t *h, int b0, int cnt) {
    int base = v->sh < 0 ? -1 : scale_base(v, b0 >> v->sh, 8);
    if (base < 0) return scales8_any(v, h, b0, cnt);
    return spread8(v, _mm_loadu_si128((const __m128i *)(h + base)), b0, base);
}

/* 16 bytes of packed nibbles -> 32 bytes, value i in byte i (for the prompt
 * kernels' row unpacking: tok16 in avx512vnni.c, tok8 in avx2.c): as 16-bit words,
 * (b | b << 4) & 0x0F0F puts the low nibble in the low byte and the high
 * nibble in the high byte. sgn: xor 8 turns the int4 q into q + 8 (0..15). */
ALWAYS TGT256 __m256i unpack32_256(const uint8_t *p, int sgn) {
    __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
    w = _mm256_and_si256(_mm256_or_si256(w, _mm256_slli_epi16(w, 4)), _mm256_set1_epi16(0x0F0F));
    if (sgn) w = _mm256_xor_si256(w, _mm256_set1_epi8(8));
    return w;
}

/* The final tree of kernels.h over 16 lanes held as two halves. */
ALWAYS __attribute__((target("avx2"))) float tree16(__m256 lo, __m256 hi) {
    __m256 a = _mm256_add_ps(lo, hi);                                             /* i + (i+8) */
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); /* i + (i+4) */
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));                                /* i + (i+2) */
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));                 /* 0 + 1 */
}

/* 8 (or 4) floats / int32 from p, the ones past cnt 0 and not read */
ALWAYS __attribute__((target("avx2"))) __m256 load8f(const float *p, int cnt) {
    return cnt == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask8(cnt));
}
ALWAYS __attribute__((target("avx2"))) __m256i load8i(const int32_t *p, int cnt) {
    return cnt == 8 ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskload_epi32((const int *)p, mask8(cnt));
}
ALWAYS __attribute__((target("avx2"))) __m128 load4f(const float *p, int cnt) {
    return cnt == 4 ? _mm_loadu_ps(p) : _mm_maskload_ps(p, _mm256_castsi256_si128(mask8(cnt)));
}
ALWAYS __attribute__((target("avx2"))) __m128i load4i(const int32_t *p, int cnt) {
    return cnt == 4 ? _mm_loadu_si128((const __m128i *)p)
                    : _mm_maskload_epi32((const int *)p, _mm256_castsi256_si128(mask8(cnt)));
}

#endif /* RUNQ4_KERNELS_X86_H */
