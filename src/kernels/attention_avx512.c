/*
 * Attention's loops over the KV cache for AVX-512 (attention.h): one zmm
 * register holds a block's 16 keys or 16 columns of a value row, and 32
 * registers keep four key blocks, or a 64-wide head's every column of six
 * rows, in flight. The same operations in the same order as the portable
 * loops and the AVX2 ones (no multiply-add fused: the pragmas below and the
 * builds' -ffp-contract=off; halves converted exactly by vcvtph2ps), so the
 * results are the same bits. rq4_attention_avx512_supported() says whether
 * the CPU runs them: the AVX-512 kernel set's test, the only set they serve.
 */
#include "attention.h"
#include "kernels.h" /* rq4_kernels_avx512vnni_supported: AVX-512 and the OS's zmm state */

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "x86.h" /* tree16: kernels.h's final tree */

#include <immintrin.h>
#include <stdint.h>

#define TGT_ATT512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))
#define ALWAYS_ATT512 static inline __attribute__((always_inline))

/* Key blocks per pass of the scores: ATT_ROWS x this many accumulators,
 * enough independent sums to hide the adds' latency when one row runs. */
#define SCORE_BLOCKS 4

/* Values per column pass: a whole 64-wide head for ATT_ROWS rows. */
#define VALUE_VECTORS 4

/* 16 cache elements at element `at` as floats */
ALWAYS_ATT512 TGT_ATT512 __m512 load16_cache(const void *cache, int f16, size_t at) {
    if (f16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)cache + at)));
    return _mm512_loadu_ps((const float *)cache + at);
}

/* NQ query rows x NB blocks of 16 keys from position p0: lane k of acc[r][b]
 * is key p0 + 16 b + k, each product added in order of i. */
ALWAYS_ATT512 TGT_ATT512 void scores_blocks(const float *const *q, const int NQ, const int NB, int hd,
                                            const void *keys, int f16, float scale, float *const *out, int p0,
                                            int n) {
    __m512 acc[ATT_ROWS][SCORE_BLOCKS];
    for (int r = 0; r < NQ; r++)
        for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_ps();
    size_t at = (size_t)p0 * (size_t)hd;
    for (int i = 0; i < hd; i++) {
        __m512 k[SCORE_BLOCKS];
        for (int b = 0; b < NB; b++) k[b] = load16_cache(keys, f16, at + (size_t)b * 16 * (size_t)hd + 16 * (size_t)i);
        for (int r = 0; r < NQ; r++) {
            __m512 qv = _mm512_set1_ps(q[r][i]);
            for (int b = 0; b < NB; b++) acc[r][b] = _mm512_add_ps(acc[r][b], _mm512_mul_ps(qv, k[b]));
        }
    }
    __m512 sc = _mm512_set1_ps(scale);
    for (int b = 0; b < NB; b++) {
        int first = p0 + 16 * b, nk = n - first < 16 ? n - first : 16;
        __mmask16 keep = (__mmask16)((1u << nk) - 1); /* the last block: keys past n are not the caller's */
        for (int r = 0; r < NQ; r++) _mm512_mask_storeu_ps(out[r] + first, keep, _mm512_mul_ps(acc[r][b], sc));
    }
}

ALWAYS_ATT512 TGT_ATT512 void scores_rows(const float *const *q, const int NQ, int hd, const void *keys, int f16,
                                          float scale, float *const *out, int n) {
    int blocks = (n + 15) / 16, b = 0;
    for (; b + SCORE_BLOCKS <= blocks; b += SCORE_BLOCKS)
        scores_blocks(q, NQ, SCORE_BLOCKS, hd, keys, f16, scale, out, 16 * b, n);
    for (; b < blocks; b++) scores_blocks(q, NQ, 1, hd, keys, f16, scale, out, 16 * b, n);
}

TGT_ATT512 static void scores_avx512(const float *const *q, int nq, int hd, const void *keys, int f16, float scale,
                                     float *const *out, int n) {
    switch (nq) { /* a constant row count: the accumulators stay in registers */
    case 1: scores_rows(q, 1, hd, keys, f16, scale, out, n); break;
    case 2: scores_rows(q, 2, hd, keys, f16, scale, out, n); break;
    case 3: scores_rows(q, 3, hd, keys, f16, scale, out, n); break;
    case 4: scores_rows(q, 4, hd, keys, f16, scale, out, n); break;
    case 5: scores_rows(q, 5, hd, keys, f16, scale, out, n); break;
    default: scores_rows(q, 6, hd, keys, f16, scale, out, n); break;
    }
}

/* Columns c0 .. c0 + 16 * CW - 1 of NR rows' weighted sums over positions
 * [p0, p1), as attention_avx2.c's values_columns: the accumulators stay in
 * registers, each value vector is loaded once and serves every row, row r
 * takes positions below n[r] only and all take those below `common`. */
ALWAYS_ATT512 TGT_ATT512 void values_columns(const float *const *att, const int *n, const int NR, const int CW,
                                             int hd, int p0, int common, int p1, const void *values, int f16,
                                             int c0, float *const *out) {
    __m512 acc[ATT_ROWS][VALUE_VECTORS];
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < CW; c++)
            acc[r][c] = p0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(out[r] + c0 + 16 * c);
    int p = p0;
    for (; p < common; p++) {
        size_t at = (size_t)p * (size_t)hd + (size_t)c0;
        __m512 x[VALUE_VECTORS];
        for (int c = 0; c < CW; c++) x[c] = load16_cache(values, f16, at + 16 * (size_t)c);
        for (int r = 0; r < NR; r++) {
            __m512 a = _mm512_set1_ps(att[r][p]);
            for (int c = 0; c < CW; c++) acc[r][c] = _mm512_add_ps(acc[r][c], _mm512_mul_ps(a, x[c]));
        }
    }
    for (; p < p1; p++) { /* positions some rows do not see (a tile's later tokens') */
        size_t at = (size_t)p * (size_t)hd + (size_t)c0;
        for (int r = 0; r < NR; r++) {
            if (p >= n[r]) continue;
            __m512 a = _mm512_set1_ps(att[r][p]);
            for (int c = 0; c < CW; c++)
                acc[r][c] = _mm512_add_ps(acc[r][c], _mm512_mul_ps(a, load16_cache(values, f16, at + 16 * (size_t)c)));
        }
    }
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < CW; c++) _mm512_storeu_ps(out[r] + c0 + 16 * c, acc[r][c]);
}

ALWAYS_ATT512 TGT_ATT512 void values_rows(const float *const *att, const int *n, const int NR, int hd,
                                          const void *values, int f16, float *const *out) {
    int lo, hi;
    if (!attention_values_range(n, NR, hd, out, &lo, &hi)) return;
    for (int p0 = 0; p0 < hi; p0 += VALUES_CHUNK) {
        int p1 = hi - p0 < VALUES_CHUNK ? hi : p0 + VALUES_CHUNK, common = lo < p1 ? (lo > p0 ? lo : p0) : p1;
        int c0 = 0;
        for (; c0 + 16 * VALUE_VECTORS <= hd; c0 += 16 * VALUE_VECTORS)
            values_columns(att, n, NR, VALUE_VECTORS, hd, p0, common, p1, values, f16, c0, out);
        for (; c0 < hd; c0 += 16) values_columns(att, n, NR, 1, hd, p0, common, p1, values, f16, c0, out);
    }
}

TGT_ATT512 static void values_avx512(const float *const *att, const int *n, int nr, int hd, const void *values,
                                     int f16, float *const *out) {
    switch (nr) { /* NR * VALUE_VECTORS accumulators, at most 24 of the 32 registers */
    case 1: values_rows(att, n, 1, hd, values, f16, out); break;
    case 2: values_rows(att, n, 2, hd, values, f16, out); break;
    case 3: values_rows(att, n, 3, hd, values, f16, out); break;
    case 4: values_rows(att, n, 4, hd, values, f16, out); break;
    case 5: values_rows(att, n, 5, hd, values, f16, out); break;
    default: values_rows(att, n, 6, hd, values, f16, out); break;
    }
}

/* exp_nonpositive (attention.h) on 16 lanes */
ALWAYS_ATT512 TGT_ATT512 __m512 exp16_nonpositive(__m512 x) {
    __m512 floor = _mm512_set1_ps(EXP_FLOOR);
    x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, floor, _CMP_GE_OQ), floor, x); /* NaN: the floor */
    __m512 rnd = _mm512_set1_ps(EXP_ROUND);
    __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)), rnd), rnd);
    __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(EXP_LN2_HI))),
                             _mm512_mul_ps(n, _mm512_set1_ps(EXP_LN2_LO)));
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(EXP_P1));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(EXP_P2));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(EXP_P3));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(EXP_P4));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(EXP_P5));
    __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}

TGT_ATT512 static void softmax_avx512(float *x, int n) {
    /* the maximum: a > top ? a : top per lane (a NaN loses), then lane by lane */
    __m512 top = _mm512_set1_ps(x[0]);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 a = _mm512_loadu_ps(x + i);
        top = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, top, _CMP_GT_OQ), top, a);
    }
    float lane[16];
    _mm512_storeu_ps(lane, top);
    float max = x[0];
    for (int j = 0; j < 16; j++) max = lane[j] > max ? lane[j] : max;
    for (int j = i; j < n; j++) max = x[j] > max ? x[j] : max;
    __m512 mx = _mm512_set1_ps(max);
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(x + i), mx)));
    if (i < n) { /* the last n % 16, through masked loads and stores */
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, exp16_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx)));
    }
    __m512 part = _mm512_setzero_ps(); /* 16 interleaved partial sums */
    for (i = 0; i + 16 <= n; i += 16) part = _mm512_add_ps(part, _mm512_loadu_ps(x + i));
    float sum = tree16(_mm512_castps512_ps256(part), _mm512_extractf32x8_ps(part, 1));
    for (; i < n; i++) sum += x[i];
    __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    for (; i < n; i++) x[i] *= 1.0f / sum; /* = the vector lanes' inv */
}

const rq4_attention_loops rq4_attention_avx512 = {16, scores_avx512, values_avx512, softmax_avx512};

int rq4_attention_avx512_supported(void) { return rq4_kernels_avx512vnni_supported(); }

#else

const rq4_attention_loops rq4_attention_avx512 = {16, 0, 0, 0};

int rq4_attention_avx512_supported(void) { return 0; }

#endif
