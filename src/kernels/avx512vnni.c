/* The AVX-512 VNNI kernel set (Ice Lake, Zen 4): 64 values per step,
 * vpdpbusd on 512 bits; Q8 weights as w + 128 (xor 0x80), corrected by
 * 128 * xs.
 *
 * Per token (decoding, and the tokens of a prompt past its 16-token tiles):
 * one weight step is unpacked once and dotted with every token of a tile of
 * up to 4; the per-lane partial sums of 16 blocks are reduced together by one
 * tree of blends and shuffles. Int4 reads the activations in nibble order
 * (qact.qp): 128 values unpack with one mask and one shift.
 *
 * Lane t of a vector is token t of a tile of 16 (qact.qt, rq4_interleave_act:
 * block b of the tile as 8 vectors, vector c holding values 4c..4c+3 of each
 * token). A weight row is unpacked once into unsigned bytes (the value plus an
 * offset: 8 for Q4S, 128 for Q8); then vpdpbusd of 4 weight bytes broadcast to
 * every lane (a permute) with a tile vector adds 4 products to each token's
 * lane, so 8 of them give every token's exact block sum in its own lane: no
 * horizontal reduction at all. Each sum starts at -offset * (the token's sum
 * of the block's activations), which takes the offset back out. The
 * contract's 16 float lanes become 16 vectors per (row, tile) (lane j of token
 * t = lane t of L[j]) and its final tree vertical adds, so results stay
 * bit-identical to rq4_kernels_scalar.
 *
 * What limits it is L1: a 64-byte load per vpdpbusd runs at about half the
 * dot-product rate, and so does a permute per vpdpbusd. So each step works on
 * 4 rows x 2 tiles: every tile vector loaded serves 4 rows and every weight
 * broadcast 2 tiles (docs/PERFORMANCE.md has the figures). Rows go in groups of
 * TOK16_ROWS, over column chunks of TOK16_CHUNK blocks (4 tiles' chunk is
 * 32 KiB, read once per row from L1); the lanes wait in memory (L1) between
 * blocks. Used for the tiles of a call (tiled_tokens: the last ones may be
 * zero-padded, and their padding lanes are not written out); the tokens after
 * them go through dot_rows, the per-token kernels above.
 */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include "x86.h"

int rq4_kernels_avx512vnni_supported(void) {
    x86_features f = detect_x86();
    return f.avx2 && f.f16c && f.fma && f.avx512;
}

#define TGT512 __attribute__((target("avx2,f16c,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

static inline __attribute__((always_inline)) TGT512 __m512i v512_dot(__m512i a, __m512i w, const int8_t *x) {
    return _mm512_dpbusd_epi32(a, w, _mm512_loadu_si512((const void *)x));
}

/* a 32-value step: the upper halves are zero, so they add nothing */
static inline __attribute__((always_inline)) TGT512 __m512i v512_dot_s(__m512i a, __m256i w, const int8_t *x) {
    __m256i xv = _mm256_loadu_si256((const __m256i *)x);
    return _mm512_dpbusd_epi32(a, _mm512_zextsi256_si512(w), _mm512_zextsi256_si512(xv));
}

#define TGT TGT512
#define ld_q8(p) _mm512_xor_si512(_mm512_loadu_si512((const void *)(p)), _mm512_set1_epi8((char)0x80))
#define dot_8(a, w, x) v512_dot((a), (w), (x))
#define ld_q8_s(p) _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p)), _mm256_set1_epi8((char)0x80))
#define dot_8_s(a, w, x) v512_dot_s((a), (w), (x))
#define Q8_OFF 128

/* One Q8 integer step of 64 values at value e of the row, for token row xr
 * (int4 goes through qact.qp, below). */
ALWAYS TGT __m512i step8(const uint8_t *wq, const int8_t *xr, int e) {
    return dot_8(_mm512_setzero_si512(), ld_q8((const int8_t *)wq + e), xr + e);
}

/* 8 vectors of two blocks each (block 2j in the low 256 bits of v[j], 2j+1 in
 * the high) -> lane i = the sum of block i. A tree of merges (two blends and
 * one shuffle each) leaves block h in lane bitreverse4(h); one permute fixes it. */
#define MERGE16(a, b, mask, SHUF) \
    _mm512_add_epi32(_mm512_mask_blend_epi32((mask), (a), (b)), SHUF(_mm512_mask_blend_epi32((mask), (b), (a))))
#define SWAP128(y) _mm512_shuffle_i64x2((y), (y), 0xB1)
#define SWAP64(y) _mm512_shuffle_epi32((y), 0x4E)
#define SWAP32(y) _mm512_shuffle_epi32((y), 0xB1)

ALWAYS TGT __m512i reduce8h(const __m512i *v) {
    __m512i a0 = MERGE16(v[0], v[1], 0xF0F0, SWAP128), a1 = MERGE16(v[2], v[3], 0xF0F0, SWAP128);
    __m512i a2 = MERGE16(v[4], v[5], 0xF0F0, SWAP128), a3 = MERGE16(v[6], v[7], 0xF0F0, SWAP128);
    __m512i b0 = MERGE16(a0, a1, 0xCCCC, SWAP64), b1 = MERGE16(a2, a3, 0xCCCC, SWAP64);
    __m512i r = MERGE16(b0, b1, 0xAAAA, SWAP32);
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15), r);
}

/* One 32-value Q8 step (one block) as a 512-bit vector with a zero upper half. */
ALWAYS TGT __m512i step_s(const uint8_t *wq, const int8_t *xr, int e) {
    return dot_8_s(_mm512_setzero_si512(), ld_q8_s((const int8_t *)wq + e), xr + e);
}

/* fp16 values h[group of b] for blocks b0 .. b0+15 (cnt valid) */
ALWAYS TGT __m512 scales16(const row_view *v, const uint16_t *h, int b0, int cnt) {
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

/* ---- int4 rows against qp (rq4_permute_act's order) ----
 * A span of 128 values is 64 bytes of nibbles: a mask gives its even values
 * (the low nibbles), a shift and a mask its odd ones, each dotted with its
 * half of the span in qp. Lane k of 128 bits then holds 4 partial sums of the
 * span's block k. */

/* the nibbles of 32, 64 or 128 values as unsigned bytes (Q4S: q + 8), ternary
 * logic 0x6A = (A & B) ^ C */
#define NIB_LO(AND, TERN, SET1, w) \
    (kind == K_Q4S ? TERN((w), SET1(0x0F), SET1(8), 0x6A) : AND((w), SET1(0x0F)))
#define NIB_HI(AND, TERN, SET1, SRL, w) NIB_LO(AND, TERN, SET1, SRL((w), 4))

ALWAYS TGT void unpack128(int kind, const uint8_t *wq, int e, __m512i *lo, __m512i *hi) {
    __m512i w = _mm512_loadu_si512((const void *)(wq + e / 2));
    *lo = NIB_LO(_mm512_and_si512, _mm512_ternarylogic_epi32, _mm512_set1_epi8, w);
    *hi = NIB_HI(_mm512_and_si512, _mm512_ternarylogic_epi32, _mm512_set1_epi8, _mm512_srli_epi16, w);
}

ALWAYS TGT __m512i span128(__m512i lo, __m512i hi, const int8_t *xp, int e) {
    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512((const void *)(xp + e)));
    return _mm512_dpbusd_epi32(a, hi, _mm512_loadu_si512((const void *)(xp + e + 64)));
}

/* The sums of a span of fewer than 4 blocks (n = 1..3) at value e, its
 * blocks in the first n lanes of 128 bits (n = 3: a span of 64, then one of 32). */
ALWAYS TGT __m512i span_short(int kind, const uint8_t *wq, const int8_t *xp, int e, int n) {
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
ALWAYS TGT __m512i reduce4x4(const __m512i *v) {
    __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
    __m512i b = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
    __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b)); /* 4k+s: block 4s+k */
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), c);
}

/* The exact sums of blocks b0 .. b0+cnt-1 (cnt <= 16) of one token, in lane order. */
ALWAYS TGT __m512i sums16(int kind, const row_view *v, const int8_t *xr, const int8_t *xp, int b0, int cnt) {
    if (kind == K_Q8) { /* value order: two blocks per 64-value step */
        __m512i p[8];
        for (int j = 0; j < 8; j++) {
            int left = cnt - 2 * j, e = (b0 + 2 * j) * QK;
            p[j] = left >= 2 ? step8(v->q, xr, e) : left == 1 ? step_s(v->q, xr, e) : _mm512_setzero_si512();
        }
        return reduce8h(p);
    }
    __m512i p[4];
    for (int k = 0; k < 4; k++) {
        int left = cnt - 4 * k, e = (b0 + 4 * k) * QK;
        if (left >= 4) {
            __m512i lo, hi;
            unpack128(kind, v->q, e, &lo, &hi);
            p[k] = span128(lo, hi, xp, e);
        } else {
            p[k] = left > 0 ? span_short(kind, v->q, xp, e, left) : _mm512_setzero_si512();
        }
    }
    return reduce4x4(p);
}

/* lanes after the contract's steps of blocks b0 .. b0+cnt-1 of one token;
 * d16, m16: the blocks' weight scales and minimums (scales16). The lanes past
 * cnt are kept as they are (masked fma: a padded term of +0.0 would turn a
 * -0.0 lane into +0.0). */
ALWAYS TGT __m512 float16(int kind, __m512 d16, __m512 m16, const float *xd, const int32_t *xs, int b0, int cnt,
                               __m512i isum, __m512 lanes) {
    __mmask16 valid = (__mmask16)((1u << cnt) - 1); /* for the loads (nothing read past the row) and the lanes */
    __m512i s = cnt == 16 ? _mm512_loadu_si512((const void *)(xs + b0)) : _mm512_maskz_loadu_epi32(valid, xs + b0);
    __m512 dx = cnt == 16 ? _mm512_loadu_ps(xd + b0) : _mm512_maskz_loadu_ps(valid, xd + b0);
    int off = offset_of(kind, Q8_OFF);
    if (off) isum = _mm512_sub_epi32(isum, _mm512_slli_epi32(s, off == 8 ? 3 : 7));
    lanes = _mm512_mask3_fmadd_ps(_mm512_mul_ps(d16, dx), _mm512_cvtepi32_ps(isum), lanes, valid);
    if (kind == K_Q4A) lanes = _mm512_mask3_fmadd_ps(_mm512_mul_ps(m16, dx), _mm512_cvtepi32_ps(s), lanes, valid);
    return lanes;
}

ALWAYS TGT __m512 chunk16(int kind, const row_view *v, const int8_t *xr, const int8_t *xp, const float *xd,
                               const int32_t *xs, int b0, int cnt, __m512 lanes) {
    __m512 d16 = scales16(v, v->d, b0, cnt), m16 = kind == K_Q4A ? scales16(v, v->m, b0, cnt) : d16;
    return float16(kind, d16, m16, xd, xs, b0, cnt, sums16(kind, v, xr, xp, b0, cnt), lanes);
}

/* One token: 16 blocks per reduction, the 16 lanes of the contract in one register. */
ALWAYS TGT void one_token(int kind, const qact *x, const qmat *w, int r, float *out, size_t out_stride, int t) {
    row_view v;
    row_of(&v, w, r, kind);
    const int nb = x->nb;
    const int8_t *xr = x->q + (size_t)t * (size_t)x->n, *xp = x->qp + (size_t)t * (size_t)x->n;
    const float *xd = x->d + (size_t)t * (size_t)nb;
    const int32_t *xs = x->s + (size_t)t * (size_t)nb;
    const size_t block_bytes = kind == K_Q8 ? QK : QK / 2;
    const uint8_t *wend = w->q + (size_t)(w->rows - 1) * w->row_bytes + (size_t)nb * block_bytes;
    const int touch = w->touch_pages && nb % 16 == 0; /* rows of whole steps: touch_next_page */
    __m512 lanes = _mm512_set1_ps(-0.0f);
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16) {
        /* the touch first: its page walk is the longest wait, so it is issued before the step's prefetches */
        if (touch) touch_next_page(v.q + (size_t)b0 * block_bytes, 16 * block_bytes, wend);
        prefetch_ahead(v.q + (size_t)b0 * block_bytes, 16 * block_bytes);
        lanes = chunk16(kind, &v, xr, xp, xd, xs, b0, 16, lanes);
    }
    if (b0 < nb) {
        prefetch_ahead(v.q + (size_t)b0 * block_bytes, (size_t)(nb - b0) * block_bytes);
        lanes = chunk16(kind, &v, xr, xp, xd, xs, b0, nb - b0, lanes);
    }
    out[(size_t)t * out_stride + (size_t)r] = tree16(LO256(lanes), HI256(lanes));
}

/* int4, T tokens (2..4) x 16 blocks: each span unpacked once for the T tokens
 * (16 accumulators), then per token one reduction and one float step. */
ALWAYS TGT void tile16_q4(int kind, const int T, const row_view *v, const int8_t *const *xp,
                               const float *const *xd, const int32_t *const *xs, int b0, int cnt, __m512 *lanes) {
    __m512i p[4][4]; /* token, span */
    for (int k = 0; k < 4; k++) {
        int left = cnt - 4 * k, e = (b0 + 4 * k) * QK;
        if (left >= 4) {
            __m512i lo, hi;
            unpack128(kind, v->q, e, &lo, &hi);
            for (int t = 0; t < T; t++) p[t][k] = span128(lo, hi, xp[t], e);
        } else {
            for (int t = 0; t < T; t++) p[t][k] = left > 0 ? span_short(kind, v->q, xp[t], e, left) : _mm512_setzero_si512();
        }
    }
    __m512 d16 = scales16(v, v->d, b0, cnt), m16 = kind == K_Q4A ? scales16(v, v->m, b0, cnt) : d16;
    for (int t = 0; t < T; t++)
        lanes[t] = float16(kind, d16, m16, xd[t], xs[t], b0, cnt, reduce4x4(p[t]), lanes[t]);
}

#define JOIN_I(a, b) _mm512_inserti64x4(_mm512_castsi256_si512(a), (b), 1)
#define JOIN_F(a, b) \
    _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1))

/* Q8, T tokens (2..4) x 8 blocks from b0 (cnt valid): each 64-value step loaded
 * once for the T tokens (16 accumulators), one reduction per pair of tokens
 * (lanes 0-7 the pair's first token, 8-15 its second), one float step per
 * pair; acc[pair] gathers lanes b0 % 16 .. +7 of both tokens. */
ALWAYS TGT void tile_chunk(int kind, const int T, const row_view *v, const int8_t *const *xr,
                                const float *const *xd, const int32_t *const *xs, int b0, int cnt, __m512 *acc) {
    __m512i p[2][8]; /* p[t / 2][4 * (t % 2) + j]: token t, step j */
    for (int j = 0; j < 4; j++) {
        int left = cnt - 2 * j, e = (b0 + 2 * j) * QK;
        for (int t = 0; t < 4; t++) p[t / 2][4 * (t % 2) + j] = _mm512_setzero_si512();
        if (left >= 2) {
            __m512i wv = ld_q8((const int8_t *)v->q + e);
            for (int t = 0; t < T; t++) p[t / 2][4 * (t % 2) + j] = dot_8(_mm512_setzero_si512(), wv, xr[t] + e);
        } else if (left == 1) {
            for (int t = 0; t < T; t++) p[t / 2][4 * (t % 2) + j] = step_s(v->q, xr[t], e);
        }
    }
    __m256 d8 = scales8(v, v->d, b0, cnt);
    __m512 dd = JOIN_F(d8, d8);
    int off = offset_of(kind, Q8_OFF);
    __mmask16 valid = (__mmask16)(((1u << cnt) - 1) * 0x101u); /* the lanes of blocks < cnt, both tokens */
    for (int pair = 0; pair < (T + 1) / 2; pair++) {
        int a = 2 * pair, b = a + 1 < T ? a + 1 : a; /* an odd T: the lone token twice (its copy unused) */
        __m512i isum = reduce8h(p[pair]);
        __m512i s = JOIN_I(load8i(xs[a] + b0, cnt), load8i(xs[b] + b0, cnt));
        __m512 dx = JOIN_F(load8f(xd[a] + b0, cnt), load8f(xd[b] + b0, cnt));
        if (off) isum = _mm512_sub_epi32(isum, _mm512_slli_epi32(s, off == 8 ? 3 : 7));
        acc[pair] = _mm512_mask3_fmadd_ps(_mm512_mul_ps(dd, dx), _mm512_cvtepi32_ps(isum), acc[pair], valid);
    }
}

/* Tokens t0 .. t0+T-1 (T = 2..4) of row r, 16 blocks per pass. Q8: lanes 0-7
 * of each pair of tokens in even[pair], lanes 8-15 in odd[pair]. */
ALWAYS TGT void tile_tokens(int kind, const int T, const qact *x, const qmat *w, int r, float *out,
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
        __m512 lanes[4] = {_mm512_set1_ps(-0.0f), _mm512_set1_ps(-0.0f), _mm512_set1_ps(-0.0f), _mm512_set1_ps(-0.0f)};
        int b0 = 0;
        for (; b0 + 16 <= nb; b0 += 16) tile16_q4(kind, T, &v, xp, xd, xs, b0, 16, lanes);
        if (b0 < nb) tile16_q4(kind, T, &v, xp, xd, xs, b0, nb - b0, lanes);
        for (int t = 0; t < T; t++)
            out[(size_t)(t0 + t) * out_stride + (size_t)r] = tree16(LO256(lanes[t]), HI256(lanes[t]));
        return;
    }
    __m512 even[2] = {_mm512_set1_ps(-0.0f), _mm512_set1_ps(-0.0f)}, odd[2] = {even[0], even[0]};
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16) {
        tile_chunk(kind, T, &v, xr, xd, xs, b0, 8, even);
        tile_chunk(kind, T, &v, xr, xd, xs, b0 + 8, 8, odd);
    }
    if (b0 < nb) {
        int left = nb - b0;
        tile_chunk(kind, T, &v, xr, xd, xs, b0, left < 8 ? left : 8, even);
        if (left > 8) tile_chunk(kind, T, &v, xr, xd, xs, b0 + 8, left - 8, odd);
    }
    for (int t = 0; t < T; t++) {
        __m512 e = even[t / 2], o = odd[t / 2];
        float y = t % 2 ? tree16(HI256(e), HI256(o)) : tree16(LO256(e), LO256(o));
        out[(size_t)(t0 + t) * out_stride + (size_t)r] = y;
    }
}

/* Tokens t0 .. t0+T-1 (T = 1..4) of rows r0 .. r1 (simd_entry.h) */
ALWAYS TGT void rows_tokens(int kind, const int T, const qact *x, const qmat *w, int r0, int r1, float *out,
                            size_t out_stride, int t0) {
    for (int r = r0; r < r1; r++) {
        if (T == 1) one_token(kind, x, w, r, out, out_stride, t0);
        else tile_tokens(kind, T, x, w, r, out, out_stride, t0);
    }
}

#include "simd_entry.h"

/* ---- prompts: 16 tokens per vector ---- */

#define TOK16_CHUNK 16 /* blocks per column chunk, at most */
#define TOK16_ROWS 8
#define TOK16_TILES 4 /* tiles per pass over a group of rows */

/* Blocks [b0, b0 + cnt) of row r as unsigned bytes, each value plus the
 * kind's offset (Q4S q + 8, Q4A q, Q8 q + 128), and each block's
 * weight scale (and minimum) as a float, indexed from 0. */
static TGT512 void tok16_unpack(int kind, const qmat *w, int r, int b0, int cnt, uint8_t *wb, float *dblk,
                               float *mblk) {
    const int bpg = w->gs / QK;
    const uint8_t *q = w->q + (size_t)r * w->row_bytes + (size_t)b0 * (kind == K_Q8 ? QK : QK / 2);
    const uint16_t *wd = w->d + (size_t)r * (size_t)w->ngroups;
    const uint16_t *wm = kind == K_Q4A ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
    for (int e = 0; e < cnt * QK; e += 32) {
        __m256i v = kind == K_Q8 ? _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q + e)), _mm256_set1_epi8(-128))
                                 : unpack32_256(q + e / 2, kind == K_Q4S); /* 16 bytes -> 32 values in value order */
        _mm256_storeu_si256((__m256i *)(wb + e), v);
    }
    for (int b = 0, g = b0 / bpg, in_group = b0 % bpg; b < cnt; b++) { /* block b0+b is in group g */
        dblk[b] = _cvtsh_ss(wd[g]);
        if (wm) mblk[b] = _cvtsh_ss(wm[g]);
        if (++in_group == bpg) {
            g++;
            in_group = 0;
        }
    }
}

/* Blocks [b0, b0 + cnt) of NR rows (4 or 1; unpacked chunks wb[i]) against
 * NT tiles (2 or 1) from tile k0, into the lanes L[i][kl ..] (16 vectors per
 * row and tile). NR and NT are constants at each call, so the accumulators
 * stay in registers. */
static inline __attribute__((always_inline)) TGT512 void tok16_blocks(int kind, const qact *x, int k0, int b0, int cnt,
                                                                      const uint8_t (*wb)[TOK16_CHUNK * QK],
                                                                      const float (*dblk)[TOK16_CHUNK],
                                                                      const float (*mblk)[TOK16_CHUNK],
                                                                      __m512 (*L)[TOK16_TILES][16], int kl, const int NR, const int NT) {
    const size_t nb = (size_t)x->nb;
    for (int i = 0; i < cnt; i++) {
        size_t b = (size_t)(b0 + i);
        __m512i w32[4], acc[4][2];
        for (int r = 0; r < NR; r++) w32[r] = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(wb[r] + i * QK)));
        /* each sum starts at -offset * (the token's sum of activations), which
         * takes the weights' offset back out */
        for (int k = 0; k < NT; k++) {
            __m512i init = _mm512_setzero_si512();
            if (kind != K_Q4A)
                init = _mm512_sub_epi32(init, _mm512_slli_epi32(_mm512_loadu_si512((const void *)(x->st + ((size_t)(k0 + k) * nb + b) * 16)),
                                                                kind == K_Q8 ? 7 : 3));
            for (int r = 0; r < NR; r++) acc[r][k] = init;
        }
        for (int c = 0; c < 8; c++) {
            __m512i xv[2], wv[4];
            for (int k = 0; k < NT; k++)
                xv[k] = _mm512_loadu_si512((const void *)(x->qt + ((size_t)(k0 + k) * nb + b) * 512 + 64 * c));
            /* in a register: GCC would otherwise load xv again for the second row */
            for (int k = 0; k < NT; k++) __asm__("" : "+v"(xv[k]));
            /* one tile: each broadcast serves a single vpdpbusd, so half of them
             * come from memory (a load) and half from a permute, which would
             * otherwise be the bottleneck */
            for (int r = 0; r < NR; r++) {
                int32_t w4;
                memcpy(&w4, wb[r] + i * QK + 4 * c, sizeof w4);
                wv[r] = NT == 1 && r % 2 ? _mm512_set1_epi32(w4)
                                         : _mm512_permutexvar_epi32(_mm512_set1_epi32(c), w32[r]);
            }
            for (int r = 0; r < NR; r++)
                for (int k = 0; k < NT; k++) acc[r][k] = _mm512_dpbusd_epi32(acc[r][k], wv[r], xv[k]);
        }
        for (int k = 0; k < NT; k++) {
            size_t at = ((size_t)(k0 + k) * nb + b) * 16;
            __m512 dx = _mm512_loadu_ps(x->dt + at);
            for (int r = 0; r < NR; r++) {
                /* lane b % 16 starts at -0.0f (the contract) when block b is its first */
                __m512 *lane = &L[r][kl + k][b % 16];
                __m512 f = b < 16 ? _mm512_set1_ps(-0.0f) : *lane;
                f = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(dblk[r][i]), dx), _mm512_cvtepi32_ps(acc[r][k]), f);
                if (kind == K_Q4A) {
                    __m512 s = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(x->st + at)));
                    f = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(mblk[r][i]), dx), s, f);
                }
                *lane = f;
            }
        }
    }
}

/* The contract's final tree over L: lane t of the result is token t's output. */
static inline __attribute__((always_inline)) TGT512 __m512 tok16_finish(__m512 *L) {
    for (int w = 8; w > 0; w /= 2)
        for (int i = 0; i < w; i++) L[i] = _mm512_add_ps(L[i], L[i + w]);
    return L[0];
}

static inline __attribute__((always_inline)) TGT512 void tok16_rows(int kind, const qact *x, const qmat *w, int tiles,
                                                                    int r0, int r1, float *out, size_t out_stride) {
    uint8_t wb[TOK16_ROWS][TOK16_CHUNK * QK] __attribute__((aligned(64)));
    float dblk[TOK16_ROWS][TOK16_CHUNK], mblk[TOK16_ROWS][TOK16_CHUNK];
    __m512 lanes[TOK16_ROWS][TOK16_TILES][16]; /* across chunks */
    const int nb = x->nb, chunks = (nb + TOK16_CHUNK - 1) / TOK16_CHUNK;
    const int chunk = (nb + chunks - 1) / chunks; /* even chunks: no short one at the end */
    for (int kg = 0; kg < tiles; kg += TOK16_TILES) {
        int ntg = tiles - kg < TOK16_TILES ? tiles - kg : TOK16_TILES;
        for (int rg = r0; rg < r1; rg += TOK16_ROWS) {
            int nr = r1 - rg < TOK16_ROWS ? r1 - rg : TOK16_ROWS;
            for (int i = 0; i < nr; i++) /* the lanes no block starts (nb < 16) */
                for (int k = 0; k < ntg; k++)
                    for (int j = nb; j < 16; j++) lanes[i][k][j] = _mm512_set1_ps(-0.0f);
            for (int c0 = 0; c0 < nb; c0 += chunk) {
                int cnt = nb - c0 < chunk ? nb - c0 : chunk;
                for (int i = 0; i < nr; i++) tok16_unpack(kind, w, rg + i, c0, cnt, wb[i], dblk[i], mblk[i]);
                for (int kl = 0; kl < ntg; kl += 2) /* constant counts: the accumulators stay in registers */
                    for (int i = 0; i < nr; i += nr - i >= 4 ? 4 : 1) {
#define TOK16_BLOCKS(NR, NT) \
    tok16_blocks(kind, x, kg + kl, c0, cnt, wb + i, dblk + i, mblk + i, lanes + i, kl, NR, NT)
                        int four = nr - i >= 4, two = ntg - kl >= 2;
                        if (four && two) TOK16_BLOCKS(4, 2);
                        else if (four) TOK16_BLOCKS(4, 1);
                        else if (two) TOK16_BLOCKS(1, 2);
                        else TOK16_BLOCKS(1, 1);
#undef TOK16_BLOCKS
                    }
            }
            /* outputs gathered per token first: out's rows lie a row length apart,
             * often a multiple of 4 KiB, so scattered stores would thrash L1 sets */
            float y[TOK16_TILES * 16][TOK16_ROWS];
            for (int i = 0; i < nr; i++)
                for (int k = 0; k < ntg; k++) {
                    float v[16];
                    _mm512_storeu_ps(v, tok16_finish(lanes[i][k]));
                    for (int t = 0; t < 16; t++) y[16 * k + t][i] = v[t];
                }
            for (int t = 0; t < 16 * ntg && 16 * kg + t < x->ntok; t++) /* not the padding's */
                memcpy(out + (size_t)(16 * kg + t) * out_stride + (size_t)rg, y[t], sizeof(float) * (size_t)nr);
        }
    }
}

/* The tiles here, the tokens after them by the body's kernel `rest`. */
static inline __attribute__((always_inline)) TGT512 void tok16_dot(int kind, dot_fn rest, const qact *x,
                                                                   const qmat *w, int r0, int r1, float *out,
                                                                   size_t out_stride) {
    int tiles = x->ntile;
    if (tiles == 0) {
        rest(x, w, r0, r1, out, out_stride);
        return;
    }
    tok16_rows(kind, x, w, tiles, r0, r1, out, out_stride);
    int done = 16 * tiles; /* padding past ntok included */
    if (done < x->ntok) {
        qact left = rq4_qact_tail(x, done);
        rest(&left, w, r0, r1, out + (size_t)done * out_stride, out_stride);
    }
}

static TGT512 void dot_q4s_tiles(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    tok16_dot(K_Q4S, dot_q4s, x, w, r0, r1, out, out_stride);
}

static TGT512 void dot_q4a_tiles(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    tok16_dot(K_Q4A, dot_q4a, x, w, r0, r1, out, out_stride);
}

static TGT512 void dot_q8_tiles(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    tok16_dot(K_Q8, dot_q8, x, w, r0, r1, out, out_stride);
}

/* no interleaved kernels of its own: dispatch.c gives it the next set's (avx2) */
const kernel_set rq4_kernels_avx512vnni = {"avx512vnni", dot_q4s_tiles, dot_q4a_tiles, dot_q8_tiles, NULL, NULL};

#endif /* x86 */
