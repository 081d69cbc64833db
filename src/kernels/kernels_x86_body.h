/* The body of one x86 kernel set, included by src/kernels_x86.c once per
 * instruction set (not a public header; not compiled on its own).
 *
 * The includer defines:
 *   SFX            name suffix of the set (avx2, avxvnni, avx512vnni)
 *   TGT            __attribute__((target(...))) of every function here
 *   BIG            values per integer step: 32 (256-bit sets) or 64 (AVX-512)
 *   V              int32 accumulator vector of BIG/4 lanes; v_zero()
 *   ld_q8(p)       BIG int8 at p as dot_8 wants them
 *   dot_8(a, w, x)  a + sums of 4 products w*x per lane, w from ld_q8, x int8 at x
 *   Q8_OFF         what ld_q8 adds to every weight (128 for vpdpbusd, else 0)
 *   (BIG == 64:) ld_q8_s / dot_8_s: one 32-value Q8 step
 *   (BIG == 32:) dot_u2(lo, xa, hi, xb): int32 lanes of lo . (32 int8 at xa)
 *                  + hi . (32 int8 at xb), 4 + 4 products per lane, lo and hi
 *                  unsigned nibbles; dot_u2_s the same on 128 bits
 *
 * Integer part: each block's exact int32 sum. Q4S nibbles are taken as q + 8
 * (0..15) so the unsigned x signed byte products apply; isum = dot - 8 * xs
 * (xs = the block's sum of activations, from qact). Q8 with vpdpbusd likewise
 * uses w + 128 and subtracts 128 * xs. One weight step is unpacked once and
 * dotted with every token of a tile; the per-lane partial sums of 8 (or 16)
 * blocks are reduced together by one tree of blends and shuffles. Int4 reads
 * the activations in nibble order (qact.qp): 128 values (AVX-512) or 64
 * (256 bits) unpack with one mask and one shift, and the reduction is 4 to 1
 * instead of 8 to 1. Q8 stays in value order (qact.q).
 *
 * Float part: exactly the contract of kernels.h, the 16 lanes of each token
 * in registers, single-precision mul and add (no fma: see kernels_x86.c), so
 * results are bit-identical to kernels_scalar. Past the last block the
 * terms are computed from zero sums and zero activation scales: +-0.0, which
 * leaves any lane unchanged (a lane starts at +0.0 and, rounding to nearest,
 * never becomes -0.0), so no lane needs masking.
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

#ifndef X86_BODY_COMMON
#define X86_BODY_COMMON
enum { K_Q4S, K_Q4A, K_Q8 };
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
#endif

/* One Q8 integer step of BIG values at value e of the row, for token row xr
 * (int4 goes through qact.qp, below). */
ALWAYS TGT V FN(step8)(const uint8_t *wq, const int8_t *xr, int e) {
    return dot_8(v_zero(), ld_q8((const int8_t *)wq + e), xr + e);
}

#if BIG == 64
/* 8 vectors of two blocks each (block 2j in the low 256 bits of v[j], 2j+1 in
 * the high) -> lane i = the sum of block i. A tree of merges (two blends and
 * one shuffle each) leaves block h in lane bitreverse4(h); one permute fixes it. */
#define MERGE16(a, b, mask, SHUF) \
    _mm512_add_epi32(_mm512_mask_blend_epi32((mask), (a), (b)), SHUF(_mm512_mask_blend_epi32((mask), (b), (a))))
#define SWAP128(y) _mm512_shuffle_i64x2((y), (y), 0xB1)
#define SWAP64(y) _mm512_shuffle_epi32((y), 0x4E)
#define SWAP32(y) _mm512_shuffle_epi32((y), 0xB1)

ALWAYS TGT __m512i FN(reduce8h)(const __m512i *v) {
    __m512i a0 = MERGE16(v[0], v[1], 0xF0F0, SWAP128), a1 = MERGE16(v[2], v[3], 0xF0F0, SWAP128);
    __m512i a2 = MERGE16(v[4], v[5], 0xF0F0, SWAP128), a3 = MERGE16(v[6], v[7], 0xF0F0, SWAP128);
    __m512i b0 = MERGE16(a0, a1, 0xCCCC, SWAP64), b1 = MERGE16(a2, a3, 0xCCCC, SWAP64);
    __m512i r = MERGE16(b0, b1, 0xAAAA, SWAP32);
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15), r);
}

/* One 32-value Q8 step (one block) as a 512-bit vector with a zero upper half. */
ALWAYS TGT __m512i FN(step_s)(const uint8_t *wq, const int8_t *xr, int e) {
    return dot_8_s(v_zero(), ld_q8_s((const int8_t *)wq + e), xr + e);
}

/* fp16 values h[group of b] for blocks b0 .. b0+15 (cnt valid) */
ALWAYS TGT __m512 FN(scales16)(const row_view *v, const uint16_t *h, int b0, int cnt) {
    int base = v->sh < 0 ? -1 : scale_base(v, b0 >> v->sh, 16);
    if (base >= 0) {
        __m512i idx = _mm512_sub_epi32(
            _mm512_srl_epi32(_mm512_add_epi32(_mm512_set1_epi32(b0),
                                              _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
                             _mm_cvtsi32_si128(v->sh)),
            _mm512_set1_epi32(base));
        return _mm512_permutexvar_ps(idx, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + base))));
    }
    float f[16] = {0};
    for (int k = 0; k < cnt; k++) f[k] = _cvtsh_ss(h[(b0 + k) / v->bpg]);
    return _mm512_loadu_ps(f);
}

#define LO256(z) _mm512_castps512_ps256(z)
#define HI256(z) _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1))

/* ---- int4 rows against qp (permute_act's order) ----
 * A span of 128 values is 64 bytes of nibbles: a mask gives its even values
 * (the low nibbles), a shift and a mask its odd ones, each dotted with its
 * half of the span in qp. Lane k of 128 bits then holds 4 partial sums of the
 * span's block k. */

/* the nibbles of 32, 64 or 128 values as unsigned bytes (Q4S: q + 8), ternary
 * logic 0x6A = (A & B) ^ C */
#define NIB_LO(AND, TERN, SET1, w) \
    (kind == K_Q4S ? TERN((w), SET1(0x0F), SET1(8), 0x6A) : AND((w), SET1(0x0F)))
#define NIB_HI(AND, TERN, SET1, SRL, w) NIB_LO(AND, TERN, SET1, SRL((w), 4))

ALWAYS TGT void FN(unpack128)(int kind, const uint8_t *wq, int e, __m512i *lo, __m512i *hi) {
    __m512i w = _mm512_loadu_si512((const void *)(wq + e / 2));
    *lo = NIB_LO(_mm512_and_si512, _mm512_ternarylogic_epi32, _mm512_set1_epi8, w);
    *hi = NIB_HI(_mm512_and_si512, _mm512_ternarylogic_epi32, _mm512_set1_epi8, _mm512_srli_epi16, w);
}

ALWAYS TGT __m512i FN(span128)(__m512i lo, __m512i hi, const int8_t *xp, int e) {
    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512((const void *)(xp + e)));
    return _mm512_dpbusd_epi32(a, hi, _mm512_loadu_si512((const void *)(xp + e + 64)));
}

/* The sums of a span of fewer than 4 blocks (n = 1..3) at value e, its
 * blocks in the first n lanes of 128 bits (n = 3: a span of 64, then one of 32). */
ALWAYS TGT __m512i FN(span_short)(int kind, const uint8_t *wq, const int8_t *xp, int e, int n) {
    __m512i acc = _mm512_setzero_si512();
    if (n >= 2) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(wq + e / 2));
        __m256i lo = NIB_LO(_mm256_and_si256, _mm256_ternarylogic_epi32, _mm256_set1_epi8, w);
        __m256i hi = NIB_HI(_mm256_and_si256, _mm256_ternarylogic_epi32, _mm256_set1_epi8, _mm256_srli_epi16, w);
        __m256i a = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, _mm256_loadu_si256((const __m256i *)(xp + e)));
        acc = _mm512_zextsi256_si512(_mm256_dpbusd_epi32(a, hi, _mm256_loadu_si256((const __m256i *)(xp + e + 32))));
        e += 64;
    }
    if (n & 1) {
        __m128i w = _mm_loadu_si128((const __m128i *)(wq + e / 2));
        __m128i lo = NIB_LO(_mm_and_si128, _mm_ternarylogic_epi32, _mm_set1_epi8, w);
        __m128i hi = NIB_HI(_mm_and_si128, _mm_ternarylogic_epi32, _mm_set1_epi8, _mm_srli_epi16, w);
        __m128i a = _mm_dpbusd_epi32(_mm_setzero_si128(), lo, _mm_loadu_si128((const __m128i *)(xp + e)));
        a = _mm_dpbusd_epi32(a, hi, _mm_loadu_si128((const __m128i *)(xp + e + 16)));
        acc = n == 1 ? _mm512_zextsi128_si512(a) : _mm512_inserti32x4(acc, a, 2);
    }
    return acc;
}

/* 4 span vectors -> lane j = the sum of block j (block 4s+k in lane k of v[s]) */
ALWAYS TGT __m512i FN(reduce4x4)(const __m512i *v) {
    __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
    __m512i b = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
    __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b)); /* 4k+s: block 4s+k */
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), c);
}

/* The exact sums of blocks b0 .. b0+cnt-1 (cnt <= 16) of one token, in lane order. */
ALWAYS TGT __m512i FN(sums16)(int kind, const row_view *v, const int8_t *xr, const int8_t *xp, int b0, int cnt) {
    if (kind == K_Q8) { /* value order: two blocks per 64-value step */
        __m512i p[8];
        for (int j = 0; j < 8; j++) {
            int left = cnt - 2 * j, e = (b0 + 2 * j) * QK;
            p[j] = left >= 2 ? FN(step8)(v->q, xr, e) : left == 1 ? FN(step_s)(v->q, xr, e) : v_zero();
        }
        return FN(reduce8h)(p);
    }
    __m512i p[4];
    for (int k = 0; k < 4; k++) {
        int left = cnt - 4 * k, e = (b0 + 4 * k) * QK;
        if (left >= 4) {
            __m512i lo, hi;
            FN(unpack128)(kind, v->q, e, &lo, &hi);
            p[k] = FN(span128)(lo, hi, xp, e);
        } else {
            p[k] = left > 0 ? FN(span_short)(kind, v->q, xp, e, left) : v_zero();
        }
    }
    return FN(reduce4x4)(p);
}

/* lanes + the float terms of blocks b0 .. b0+cnt-1 of one token; d16, m16:
 * the blocks' weight scales and minimums (scales16). */
ALWAYS TGT __m512 FN(float16)(int kind, __m512 d16, __m512 m16, const float *xd, const int32_t *xs, int b0, int cnt,
                               __m512i isum, __m512 lanes) {
    __mmask16 valid = (__mmask16)((1u << cnt) - 1); /* for the loads: nothing read past the row */
    __m512i s = cnt == 16 ? _mm512_loadu_si512((const void *)(xs + b0)) : _mm512_maskz_loadu_epi32(valid, xs + b0);
    __m512 dx = cnt == 16 ? _mm512_loadu_ps(xd + b0) : _mm512_maskz_loadu_ps(valid, xd + b0);
    int off = offset_of(kind, Q8_OFF);
    if (off) isum = _mm512_sub_epi32(isum, _mm512_slli_epi32(s, off == 8 ? 3 : 7));
    __m512 term = _mm512_mul_ps(_mm512_mul_ps(d16, dx), _mm512_cvtepi32_ps(isum));
    if (kind == K_Q4A) term = _mm512_add_ps(term, _mm512_mul_ps(_mm512_mul_ps(m16, dx), _mm512_cvtepi32_ps(s)));
    return _mm512_add_ps(lanes, term);
}

ALWAYS TGT __m512 FN(chunk16)(int kind, const row_view *v, const int8_t *xr, const int8_t *xp, const float *xd,
                               const int32_t *xs, int b0, int cnt, __m512 lanes) {
    __m512 d16 = FN(scales16)(v, v->d, b0, cnt), m16 = kind == K_Q4A ? FN(scales16)(v, v->m, b0, cnt) : d16;
    return FN(float16)(kind, d16, m16, xd, xs, b0, cnt, FN(sums16)(kind, v, xr, xp, b0, cnt), lanes);
}

/* One token: 16 blocks per reduction, the 16 lanes of the contract in one register. */
ALWAYS TGT void FN(one_token)(int kind, const qact *x, const qmat *w, int r, float *out, size_t out_stride, int t) {
    row_view v;
    row_of(&v, w, r, kind);
    const int nb = x->nb;
    const int8_t *xr = x->q + (size_t)t * (size_t)x->n, *xp = x->qp + (size_t)t * (size_t)x->n;
    const float *xd = x->d + (size_t)t * (size_t)nb;
    const int32_t *xs = x->s + (size_t)t * (size_t)nb;
    __m512 lanes = _mm512_setzero_ps();
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16)
        lanes = FN(chunk16)(kind, &v, xr, xp, xd, xs, b0, 16, lanes);
    if (b0 < nb) lanes = FN(chunk16)(kind, &v, xr, xp, xd, xs, b0, nb - b0, lanes);
    out[(size_t)t * out_stride + (size_t)r] = tree16(LO256(lanes), HI256(lanes));
}

/* int4, T tokens (2..4) x 16 blocks: each span unpacked once for the T tokens
 * (16 accumulators), then per token one reduction and one float step. */
ALWAYS TGT void FN(tile16_q4)(int kind, const int T, const row_view *v, const int8_t *const *xp,
                               const float *const *xd, const int32_t *const *xs, int b0, int cnt, __m512 *lanes) {
    __m512i p[4][4]; /* token, span */
    for (int k = 0; k < 4; k++) {
        int left = cnt - 4 * k, e = (b0 + 4 * k) * QK;
        if (left >= 4) {
            __m512i lo, hi;
            FN(unpack128)(kind, v->q, e, &lo, &hi);
            for (int t = 0; t < T; t++) p[t][k] = FN(span128)(lo, hi, xp[t], e);
        } else {
            for (int t = 0; t < T; t++) p[t][k] = left > 0 ? FN(span_short)(kind, v->q, xp[t], e, left) : v_zero();
        }
    }
    __m512 d16 = FN(scales16)(v, v->d, b0, cnt), m16 = kind == K_Q4A ? FN(scales16)(v, v->m, b0, cnt) : d16;
    for (int t = 0; t < T; t++)
        lanes[t] = FN(float16)(kind, d16, m16, xd[t], xs[t], b0, cnt, FN(reduce4x4)(p[t]), lanes[t]);
}

#define JOIN_I(a, b) _mm512_inserti64x4(_mm512_castsi256_si512(a), (b), 1)
#define JOIN_F(a, b) \
    _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1))

/* Q8, T tokens (2..4) x 8 blocks from b0 (cnt valid): each 64-value step loaded
 * once for the T tokens (16 accumulators), one reduction per pair of tokens
 * (lanes 0-7 the pair's first token, 8-15 its second), one float step per
 * pair; acc[pair] gathers lanes b0 % 16 .. +7 of both tokens. */
ALWAYS TGT void FN(tile_chunk)(int kind, const int T, const row_view *v, const int8_t *const *xr,
                                const float *const *xd, const int32_t *const *xs, int b0, int cnt, __m512 *acc) {
    __m512i p[2][8]; /* p[t / 2][4 * (t % 2) + j]: token t, step j */
    for (int j = 0; j < 4; j++) {
        int left = cnt - 2 * j, e = (b0 + 2 * j) * QK;
        for (int t = 0; t < 4; t++) p[t / 2][4 * (t % 2) + j] = v_zero();
        if (left >= 2) {
            __m512i wv = ld_q8((const int8_t *)v->q + e);
            for (int t = 0; t < T; t++) p[t / 2][4 * (t % 2) + j] = dot_8(v_zero(), wv, xr[t] + e);
        } else if (left == 1) {
            for (int t = 0; t < T; t++) p[t / 2][4 * (t % 2) + j] = FN(step_s)(v->q, xr[t], e);
        }
    }
    __m256 d8 = scales8(v, v->d, b0, cnt);
    __m512 dd = JOIN_F(d8, d8);
    int off = offset_of(kind, Q8_OFF);
    for (int pair = 0; pair < (T + 1) / 2; pair++) {
        int a = 2 * pair, b = a + 1 < T ? a + 1 : a; /* an odd T: the lone token twice (its copy unused) */
        __m512i isum = FN(reduce8h)(p[pair]);
        __m512i s = JOIN_I(load8i(xs[a] + b0, cnt), load8i(xs[b] + b0, cnt));
        __m512 dx = JOIN_F(load8f(xd[a] + b0, cnt), load8f(xd[b] + b0, cnt));
        if (off) isum = _mm512_sub_epi32(isum, _mm512_slli_epi32(s, off == 8 ? 3 : 7));
        __m512 term = _mm512_mul_ps(_mm512_mul_ps(dd, dx), _mm512_cvtepi32_ps(isum));
        acc[pair] = _mm512_add_ps(acc[pair], term);
    }
}

/* Tokens t0 .. t0+T-1 (T = 2..4) of row r, 16 blocks per pass. Q8: lanes 0-7
 * of each pair of tokens in even[pair], lanes 8-15 in odd[pair]. */
ALWAYS TGT void FN(tile_tokens)(int kind, const int T, const qact *x, const qmat *w, int r, float *out,
                                 size_t out_stride, int t0) {
    row_view v;
    row_of(&v, w, r, kind);
    const int nb = x->nb;
    const int8_t *xr[4], *xp[4];
    const float *xd[4];
    const int32_t *xs[4];
    for (int t = 0; t < T; t++) {
        size_t row = (size_t)(t0 + t);
        xr[t] = x->q + row * (size_t)x->n;
        xp[t] = x->qp + row * (size_t)x->n;
        xd[t] = x->d + row * (size_t)nb;
        xs[t] = x->s + row * (size_t)nb;
    }
    if (kind != K_Q8) {
        __m512 lanes[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int b0 = 0;
        for (; b0 + 16 <= nb; b0 += 16) FN(tile16_q4)(kind, T, &v, xp, xd, xs, b0, 16, lanes);
        if (b0 < nb) FN(tile16_q4)(kind, T, &v, xp, xd, xs, b0, nb - b0, lanes);
        for (int t = 0; t < T; t++)
            out[(size_t)(t0 + t) * out_stride + (size_t)r] = tree16(LO256(lanes[t]), HI256(lanes[t]));
        return;
    }
    __m512 even[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, odd[2] = {even[0], even[0]};
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16) {
        FN(tile_chunk)(kind, T, &v, xr, xd, xs, b0, 8, even);
        FN(tile_chunk)(kind, T, &v, xr, xd, xs, b0 + 8, 8, odd);
    }
    if (b0 < nb) {
        int left = nb - b0;
        FN(tile_chunk)(kind, T, &v, xr, xd, xs, b0, left < 8 ? left : 8, even);
        if (left > 8) FN(tile_chunk)(kind, T, &v, xr, xd, xs, b0 + 8, left - 8, odd);
    }
    for (int t = 0; t < T; t++) {
        __m512 e = even[t / 2], o = odd[t / 2];
        float y = t % 2 ? tree16(HI256(e), HI256(o)) : tree16(LO256(e), LO256(o));
        out[(size_t)(t0 + t) * out_stride + (size_t)r] = y;
    }
}
#else
/* 8 accumulators -> one vector, lane i = the horizontal sum of v[i]: a tree of
 * merges (two blends and one shuffle each); the tree leaves input j in lane
 * bitreverse3(j), so inputs go in that order. */
#define MERGE8(a, b, imm, SHUF) _mm256_add_epi32(_mm256_blend_epi32((a), (b), (imm)), SHUF(_mm256_blend_epi32((b), (a), (imm))))
#define SWAP128_8(y) _mm256_permute2x128_si256((y), (y), 0x01)
#define SWAP64_8(y) _mm256_shuffle_epi32((y), 0x4E)
#define SWAP32_8(y) _mm256_shuffle_epi32((y), 0xB1)

ALWAYS TGT __m256i FN(reduce8)(const __m256i *v) {
    __m256i a0 = MERGE8(v[0], v[4], 0xF0, SWAP128_8), a1 = MERGE8(v[2], v[6], 0xF0, SWAP128_8);
    __m256i a2 = MERGE8(v[1], v[5], 0xF0, SWAP128_8), a3 = MERGE8(v[3], v[7], 0xF0, SWAP128_8);
    __m256i b0 = MERGE8(a0, a1, 0xCC, SWAP64_8), b1 = MERGE8(a2, a3, 0xCC, SWAP64_8);
    return MERGE8(b0, b1, 0xAA, SWAP32_8);
}

/* The float terms of 8 blocks b0.. of one token: (d * dx) * isum [+ (m * dx) * xs],
 * isum not yet corrected; d8, m8: the blocks' weight scales and minimums (scales8). */
ALWAYS TGT __m256 FN(terms8s)(int kind, __m256 d8, __m256 m8, int b0, int cnt, __m256i isum, const float *xd,
                               const int32_t *xs, int off) {
    __m256i s = load8i(xs + b0, cnt);
    __m256 dx = load8f(xd + b0, cnt);
    if (off) isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(s, off == 8 ? 3 : 7));
    __m256 term = _mm256_mul_ps(_mm256_mul_ps(d8, dx), _mm256_cvtepi32_ps(isum));
    if (kind == K_Q4A) term = _mm256_add_ps(term, _mm256_mul_ps(_mm256_mul_ps(m8, dx), _mm256_cvtepi32_ps(s)));
    return term;
}

ALWAYS TGT __m256 FN(terms8)(int kind, const row_view *v, int b0, int cnt, __m256i isum, const float *xd,
                              const int32_t *xs, int off) {
    __m256 d8 = scales8(v, v->d, b0, cnt), m8 = kind == K_Q4A ? scales8(v, v->m, b0, cnt) : d8;
    return FN(terms8s)(kind, d8, m8, b0, cnt, isum, xd, xs, off);
}

/* ---- int4 rows against qp (permute_act's order) ----
 * 32 bytes of nibbles are 64 values: half a span of 128, or a whole span of
 * 64. A mask gives their even values (the low nibbles), a shift and a mask
 * their odd ones, each dotted with its part of the span in qp: int32 lane L
 * then holds 8 values of block L / 4, so one such "pair vector" holds two
 * blocks, the first in its low 128 bits and the second in its high ones, 4
 * partial sums each. Pair vector j of a span of 128 at value e: weight bytes
 * e/2 + 32j .., evens at qp[e + 32j ..], odds at qp[e + 64 + 32j ..]; of a
 * span of 64: evens at qp[e ..], odds at qp[e + 32 ..]; a span of 32 (one
 * block, 16 bytes) is the same on 128 bits with a zero high half. */

/* the 64 (or 32) nibbles at p as unsigned bytes (Q4S: q + 8, from xor 8 on
 * both nibbles before the split) */
ALWAYS TGT void FN(nib64)(int kind, const uint8_t *p, __m256i *lo, __m256i *hi) {
    __m256i w = _mm256_loadu_si256((const __m256i *)p), m = _mm256_set1_epi8(0x0F);
    if (kind == K_Q4S) w = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x88));
    *lo = _mm256_and_si256(w, m);
    *hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m);
}

ALWAYS TGT void FN(nib32)(int kind, const uint8_t *p, __m128i *lo, __m128i *hi) {
    __m128i w = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(0x0F);
    if (kind == K_Q4S) w = _mm_xor_si128(w, _mm_set1_epi8((char)0x88));
    *lo = _mm_and_si128(w, m);
    *hi = _mm_and_si128(_mm_srli_epi16(w, 4), m);
}

/* The pair vectors of blocks b, b+1 (b even, b < nb) of the row for T tokens,
 * into p[t][j]; full: the pair known to lie in a span of 128 (b < nb & ~3). */
ALWAYS TGT void FN(pair_q4)(int kind, const int T, const uint8_t *wq, const int8_t *const *xp, int nb, int b,
                             int full, __m256i p[][4], int j) {
    int e = b * QK;
    __m256i lo, hi;
    if (full || b < (nb & ~3)) {
        int xa = e - (b & 2) * 16; /* the second half of a span: 32 values back */
        FN(nib64)(kind, wq + e / 2, &lo, &hi);
        for (int t = 0; t < T; t++) p[t][j] = dot_u2(lo, xp[t] + xa, hi, xp[t] + xa + 64);
    } else if (nb - b >= 2) {
        FN(nib64)(kind, wq + e / 2, &lo, &hi);
        for (int t = 0; t < T; t++) p[t][j] = dot_u2(lo, xp[t] + e, hi, xp[t] + e + 32);
    } else {
        __m128i l, h;
        FN(nib32)(kind, wq + e / 2, &l, &h);
        for (int t = 0; t < T; t++) p[t][j] = _mm256_zextsi128_si256(dot_u2_s(l, xp[t] + e, h, xp[t] + e + 16));
    }
}

/* 4 pair vectors (blocks 2j | 2j+1 in p[j]) -> lane i = the sum of block i:
 * HALF4P merges p0, p1 (and p2, p3) by 64-bit pairs, reduce4p the two results
 * by 32-bit lanes (blocks 0 4 2 6 | 1 5 3 7), then one permute. */
#define HALF4P(p0, p1) MERGE8((p0), (p1), 0xCC, SWAP64_8) /* blocks 0 0 2 2 | 1 1 3 3 */
ALWAYS TGT __m256i FN(reduce4p)(__m256i a, __m256i b) {
    __m256i c = MERGE8(a, b, 0xAA, SWAP32_8);
    return _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7));
}

/* T tokens (1..4) x 8 int4 blocks from b0 (cnt valid): each pair vector
 * unpacked once for the T tokens, then per token one reduction and one float
 * step added to lanes[t][half]. */
ALWAYS TGT void FN(tile8_q4)(int kind, const int T, const row_view *v, const int8_t *const *xp,
                              const float *const *xd, const int32_t *const *xs, int nb, int b0, int cnt, int full,
                              __m256 lanes[][2], int half) {
    __m256i p[4][4], a[4];
    for (int j = 0; j < 4; j++) {
        if (2 * j < cnt) {
            FN(pair_q4)(kind, T, v->q, xp, nb, b0 + 2 * j, full, p, j);
        } else {
            for (int t = 0; t < T; t++) p[t][j] = v_zero();
        }
    }
    for (int t = 0; t < T; t++) a[t] = HALF4P(p[t][0], p[t][1]);
    __m256 d8 = scales8(v, v->d, b0, cnt), m8 = kind == K_Q4A ? scales8(v, v->m, b0, cnt) : d8;
    int off = offset_of(kind, Q8_OFF);
    for (int t = 0; t < T; t++) {
        __m256i isum = FN(reduce4p)(a[t], HALF4P(p[t][2], p[t][3]));
        lanes[t][half] = _mm256_add_ps(lanes[t][half], FN(terms8s)(kind, d8, m8, b0, cnt, isum, xd[t], xs[t], off));
    }
}

/* int4, T tokens (1..4) of row r: 16 blocks per pass (lanes[t][0]: lanes
 * 0-7, lanes[t][1]: 8-15). */
ALWAYS TGT void FN(tokens_q4)(int kind, const int T, const qact *x, const row_view *v, int r, float *out,
                               size_t out_stride, int t0) {
    const int nb = x->nb;
    const int8_t *xp[4];
    const float *xd[4];
    const int32_t *xs[4];
    for (int t = 0; t < T; t++) {
        size_t row = (size_t)(t0 + t);
        xp[t] = x->qp + row * (size_t)x->n;
        xd[t] = x->d + row * (size_t)nb;
        xs[t] = x->s + row * (size_t)nb;
    }
    __m256 lanes[4][2];
    for (int t = 0; t < T; t++) lanes[t][0] = lanes[t][1] = _mm256_setzero_ps();
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16) {
        FN(tile8_q4)(kind, T, v, xp, xd, xs, nb, b0, 8, 1, lanes, 0);
        FN(tile8_q4)(kind, T, v, xp, xd, xs, nb, b0 + 8, 8, 1, lanes, 1);
    }
    if (b0 < nb) {
        int left = nb - b0;
        FN(tile8_q4)(kind, T, v, xp, xd, xs, nb, b0, left < 8 ? left : 8, 0, lanes, 0);
        if (left > 8) FN(tile8_q4)(kind, T, v, xp, xd, xs, nb, b0 + 8, left - 8, 0, lanes, 1);
    }
    for (int t = 0; t < T; t++) out[(size_t)(t0 + t) * out_stride + (size_t)r] = tree16(lanes[t][0], lanes[t][1]);
}

/* Q8, one token, 8 blocks per reduction; the 16 lanes as two registers. */
ALWAYS TGT __m256 FN(chunk8)(int kind, const row_view *v, const int8_t *xr, const float *xd, const int32_t *xs,
                              int b0, int cnt, __m256 lanes) {
    __m256i p[8];
    for (int k = 0; k < 8; k++) p[k] = k < cnt ? FN(step8)(v->q, xr, (b0 + k) * QK) : v_zero();
    __m256 term = FN(terms8)(kind, v, b0, cnt, FN(reduce8)(p), xd, xs, offset_of(kind, Q8_OFF));
    return _mm256_add_ps(lanes, term);
}

ALWAYS TGT void FN(one_token)(int kind, const qact *x, const qmat *w, int r, float *out, size_t out_stride, int t) {
    row_view v;
    row_of(&v, w, r, kind);
    if (kind != K_Q8) {
        FN(tokens_q4)(kind, 1, x, &v, r, out, out_stride, t);
        return;
    }
    const int nb = x->nb;
    const int8_t *xr = x->q + (size_t)t * (size_t)x->n;
    const float *xd = x->d + (size_t)t * (size_t)nb;
    const int32_t *xs = x->s + (size_t)t * (size_t)nb;
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps(); /* lanes 0-7, 8-15 */
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16) {
        lo = FN(chunk8)(kind, &v, xr, xd, xs, b0, 8, lo);
        hi = FN(chunk8)(kind, &v, xr, xd, xs, b0 + 8, 8, hi);
    }
    if (b0 < nb) {
        int left = nb - b0;
        lo = FN(chunk8)(kind, &v, xr, xd, xs, b0, left < 8 ? left : 8, lo);
        if (left > 8) hi = FN(chunk8)(kind, &v, xr, xd, xs, b0 + 8, left - 8, hi);
    }
    out[(size_t)t * out_stride + (size_t)r] = tree16(lo, hi);
}

/* Q8, two tokens A, B x 4 blocks from b0 (cnt valid): each block loaded once
 * for both, one reduction (lanes 0-3 A's blocks, 4-7 B's), one float step. */
ALWAYS TGT __m256 FN(pair_chunk)(int kind, const row_view *v, const int8_t *xra, const int8_t *xrb,
                                  const float *xda, const float *xdb, const int32_t *xsa, const int32_t *xsb,
                                  int b0, int cnt) {
    __m256i p[8];
    for (int k = 0; k < 4; k++) {
        int e = (b0 + k) * QK;
        p[k] = p[4 + k] = v_zero();
        if (k >= cnt) continue;
        __m256i wv = ld_q8((const int8_t *)v->q + e);
        p[k] = dot_8(v_zero(), wv, xra + e);
        p[4 + k] = dot_8(v_zero(), wv, xrb + e);
    }
    __m256i isum = FN(reduce8)(p);
    __m256i s = _mm256_set_m128i(load4i(xsb + b0, cnt), load4i(xsa + b0, cnt));
    __m256 dx = _mm256_set_m128(load4f(xdb + b0, cnt), load4f(xda + b0, cnt));
    int off = offset_of(kind, Q8_OFF);
    if (off) isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(s, off == 8 ? 3 : 7));
    __m256 d4 = scales8(v, v->d, b0, cnt);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_permute2f128_ps(d4, d4, 0), dx), _mm256_cvtepi32_ps(isum));
}

/* Tokens t0 .. t0+T-1 (T = 2..4) of row r: int4 all T at once (tokens_q4);
 * Q8 two at a time (16 accumulators would not fit 16 registers): per pair, lanes 4q .. 4q+3 of its two tokens
 * in acc[q] (the first token in the low half). */
ALWAYS TGT void FN(tile_tokens)(int kind, const int T, const qact *x, const qmat *w, int r, float *out,
                                 size_t out_stride, int t0) {
    row_view v;
    row_of(&v, w, r, kind);
    if (kind != K_Q8) {
        FN(tokens_q4)(kind, T, x, &v, r, out, out_stride, t0);
        return;
    }
    const int nb = x->nb;
    for (int a = 0; a < T; a += 2) {
        int b = a + 1 < T ? a + 1 : a; /* an odd T: the lone token twice (its copy unused) */
        const int8_t *xra = x->q + (size_t)(t0 + a) * (size_t)x->n, *xrb = x->q + (size_t)(t0 + b) * (size_t)x->n;
        const float *xda = x->d + (size_t)(t0 + a) * (size_t)nb, *xdb = x->d + (size_t)(t0 + b) * (size_t)nb;
        const int32_t *xsa = x->s + (size_t)(t0 + a) * (size_t)nb, *xsb = x->s + (size_t)(t0 + b) * (size_t)nb;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int b0 = 0;
        for (; b0 + 16 <= nb; b0 += 16)
            for (int q = 0; q < 4; q++)
                acc[q] = _mm256_add_ps(acc[q], FN(pair_chunk)(kind, &v, xra, xrb, xda, xdb, xsa, xsb, b0 + 4 * q, 4));
        for (int q = 0; b0 + 4 * q < nb; q++) {
            int left = nb - b0 - 4 * q;
            acc[q] = _mm256_add_ps(acc[q], FN(pair_chunk)(kind, &v, xra, xrb, xda, xdb, xsa, xsb, b0 + 4 * q,
                                                          left < 4 ? left : 4));
        }
        out[(size_t)(t0 + a) * out_stride + (size_t)r] =
            tree16(_mm256_permute2f128_ps(acc[0], acc[1], 0x20), _mm256_permute2f128_ps(acc[2], acc[3], 0x20));
        if (a + 1 < T)
            out[(size_t)(t0 + a + 1) * out_stride + (size_t)r] =
                tree16(_mm256_permute2f128_ps(acc[0], acc[1], 0x31), _mm256_permute2f128_ps(acc[2], acc[3], 0x31));
    }
}
#endif

#include "kernels_body_entry.h"

#undef FN
