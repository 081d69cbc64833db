/* Attention over the KV cache with AVX2 + F16C (src/kernels/attention.h).
 *
 * Every function carries its own target attribute, so the file builds with
 * portable flags; rq4_attention_avx2_supported() says whether the CPU runs
 * them. vcvtph2ps converts every half exactly, as the engine's software
 * conversion does (the cache holds no signalling NaN: the engine stores NaN
 * as a quiet one), and no multiply-add is fused (the pragmas below, and the
 * builds' -ffp-contract=off), so the sums round as the portable loops'.
 */
#include "attention.h"
#include "kernels.h" /* rq4_kernels_avx2_supported: AVX2, F16C and the OS's register state */

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "x86.h" /* tree16: kernels.h's final tree */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define TGT_ATT __attribute__((target("avx2,f16c")))
#define ALWAYS_ATT static inline __attribute__((always_inline))


/* 8 cache elements at element `at` as floats */
ALWAYS_ATT TGT_ATT __m256 load8_cache(const void *cache, int f16, size_t at) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)cache + at)));
    return _mm256_loadu_ps((const float *)cache + at);
}

/* NQ query rows x the 16 keys of one block: the sums of lane k (key k) in
 * acc[r][k / 8], each product added in order of i. */
ALWAYS_ATT TGT_ATT void scores_block(const float *const *q, const int NQ, int hd, const void *keys, int f16,
                                     size_t at, float scale, float *const *out, int p0, int nk) {
    __m256 acc[ATT_ROWS][2];
    for (int r = 0; r < NQ; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int i = 0; i < hd; i++) {
        __m256 k0 = load8_cache(keys, f16, at + 16 * (size_t)i), k1 = load8_cache(keys, f16, at + 16 * (size_t)i + 8);
        for (int r = 0; r < NQ; r++) {
            __m256 qv = _mm256_broadcast_ss(q[r] + i);
            acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_mul_ps(qv, k0));
            acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_mul_ps(qv, k1));
        }
    }
    __m256 sc = _mm256_set1_ps(scale);
    for (int r = 0; r < NQ; r++) {
        float *o = out[r] + p0;
        __m256 lo = _mm256_mul_ps(acc[r][0], sc), hi = _mm256_mul_ps(acc[r][1], sc);
        if (nk == 16) {
            _mm256_storeu_ps(o, lo);
            _mm256_storeu_ps(o + 8, hi);
        } else { /* the last block: keys past n are not the caller's */
            float tmp[16];
            _mm256_storeu_ps(tmp, lo);
            _mm256_storeu_ps(tmp + 8, hi);
            memcpy(o, tmp, sizeof(float) * (size_t)nk);
        }
    }
}

ALWAYS_ATT TGT_ATT void scores_rows(const float *const *q, const int NQ, int hd, const void *keys, int f16,
                                    float scale, float *const *out, int n) {
    for (int p0 = 0; p0 < n; p0 += 16)
        scores_block(q, NQ, hd, keys, f16, (size_t)p0 * (size_t)hd, scale, out, p0, n - p0 < 16 ? n - p0 : 16);
}

TGT_ATT static void scores_avx2(const float *const *q, int nq, int hd, const void *keys, int f16, float scale,
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

/* Columns c0 .. c0 + 8 * CW - 1 of NR rows' weighted sums over positions
 * [p0, p1): the accumulators (NR * CW <= 12 vectors, from out or +0.0f when
 * p0 is 0) stay in registers; each value vector is loaded (and converted)
 * once and serves every row. Row r takes positions below n[r] only; all
 * take those below `common`. */
ALWAYS_ATT TGT_ATT void values_columns(const float *const *att, const int *n, const int NR, const int CW, int hd,
                                       int p0, int common, int p1, const void *values, int f16, int c0,
                                       float *const *out) {
    __m256 acc[ATT_ROWS][8];
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < CW; c++)
            acc[r][c] = p0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(out[r] + c0 + 8 * c);
    int p = p0;
    for (; p < common; p++) {
        size_t at = (size_t)p * (size_t)hd + (size_t)c0;
        __m256 x[8];
        for (int c = 0; c < CW; c++) x[c] = load8_cache(values, f16, at + 8 * (size_t)c);
        for (int r = 0; r < NR; r++) {
            __m256 a = _mm256_broadcast_ss(att[r] + p);
            for (int c = 0; c < CW; c++) acc[r][c] = _mm256_add_ps(acc[r][c], _mm256_mul_ps(a, x[c]));
        }
    }
    for (; p < p1; p++) { /* positions some rows do not see (a tile's later tokens') */
        size_t at = (size_t)p * (size_t)hd + (size_t)c0;
        for (int r = 0; r < NR; r++) {
            if (p >= n[r]) continue;
            __m256 a = _mm256_broadcast_ss(att[r] + p);
            for (int c = 0; c < CW; c++)
                acc[r][c] = _mm256_add_ps(acc[r][c], _mm256_mul_ps(a, load8_cache(values, f16, at + 8 * (size_t)c)));
        }
    }
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < CW; c++) _mm256_storeu_ps(out[r] + c0 + 8 * c, acc[r][c]);
}

/* Every column of NR rows, chunk by chunk of positions, CW vectors of 8 per
 * pass (then single ones). */
ALWAYS_ATT TGT_ATT void values_rows(const float *const *att, const int *n, const int NR, const int CW, int hd,
                                    const void *values, int f16, float *const *out) {
    int lo, hi;
    if (!attention_values_range(n, NR, hd, out, &lo, &hi)) return;
    for (int p0 = 0; p0 < hi; p0 += VALUES_CHUNK) {
        int p1 = hi - p0 < VALUES_CHUNK ? hi : p0 + VALUES_CHUNK, common = lo < p1 ? (lo > p0 ? lo : p0) : p1;
        int c0 = 0;
        for (; c0 + 8 * CW <= hd; c0 += 8 * CW)
            values_columns(att, n, NR, CW, hd, p0, common, p1, values, f16, c0, out);
        for (; c0 < hd; c0 += 8) values_columns(att, n, NR, 1, hd, p0, common, p1, values, f16, c0, out);
    }
}

TGT_ATT static void values_avx2(const float *const *att, const int *n, int nr, int hd, const void *values, int f16,
                                float *const *out) {
    switch (nr) { /* NR * CW accumulators, at most 12 of the 16 registers */
    case 1: values_rows(att, n, 1, 8, hd, values, f16, out); break;
    case 2: values_rows(att, n, 2, 4, hd, values, f16, out); break;
    case 3: values_rows(att, n, 3, 2, hd, values, f16, out); break;
    case 4: values_rows(att, n, 4, 2, hd, values, f16, out); break;
    case 5: values_rows(att, n, 5, 2, hd, values, f16, out); break;
    default: values_rows(att, n, 6, 2, hd, values, f16, out); break;
    }
}

/* exp_nonpositive (attention.h) on 8 lanes */
ALWAYS_ATT TGT_ATT __m256 exp8_nonpositive(__m256 x) {
    __m256 floor = _mm256_set1_ps(EXP_FLOOR);
    x = _mm256_blendv_ps(floor, x, _mm256_cmp_ps(x, floor, _CMP_GE_OQ)); /* NaN: the floor */
    __m256 rnd = _mm256_set1_ps(EXP_ROUND);
    __m256 n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)), rnd), rnd);
    __m256 r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2_HI))),
                             _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2_LO)));
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P1));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P2));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P4));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P5));
    __m256 y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

/* lanes 0..7: all ones below cnt */
ALWAYS_ATT TGT_ATT __m256i first_lanes(int cnt) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

TGT_ATT static void softmax_avx2(float *x, int n) {
    /* the maximum: a > top ? a : top per lane (a NaN loses), then lane by lane */
    __m256 top0 = _mm256_set1_ps(x[0]), top1 = top0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        top0 = _mm256_blendv_ps(top0, a, _mm256_cmp_ps(a, top0, _CMP_GT_OQ));
        top1 = _mm256_blendv_ps(top1, b, _mm256_cmp_ps(b, top1, _CMP_GT_OQ));
    }
    float lane[16];
    _mm256_storeu_ps(lane, top0);
    _mm256_storeu_ps(lane + 8, top1);
    float max = x[0];
    for (int j = 0; j < 16; j++) max = lane[j] > max ? lane[j] : max;
    for (int j = i; j < n; j++) max = x[j] > max ? x[j] : max;
    __m256 mx = _mm256_set1_ps(max);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx)));
    if (i < n) { /* the last n % 8, through masked loads and stores */
        __m256i m = first_lanes(n - i);
        _mm256_maskstore_ps(x + i, m, exp8_nonpositive(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), mx)));
    }
    __m256 part0 = _mm256_setzero_ps(), part1 = part0; /* 16 interleaved partial sums */
    for (i = 0; i + 16 <= n; i += 16) {
        part0 = _mm256_add_ps(part0, _mm256_loadu_ps(x + i));
        part1 = _mm256_add_ps(part1, _mm256_loadu_ps(x + i + 8));
    }
    float sum = tree16(part0, part1);
    for (; i < n; i++) sum += x[i];
    __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++) x[i] *= 1.0f / sum; /* = the vector lanes' inv */
}

const rq4_attention_loops rq4_attention_avx2 = {8, scores_avx2, values_avx2, softmax_avx2};

int rq4_attention_avx2_supported(void) { return rq4_kernels_avx2_supported(); }

#else

const rq4_attention_loops rq4_attention_avx2 = {8, 0, 0, 0};

int rq4_attention_avx2_supported(void) { return 0; }

#endif
