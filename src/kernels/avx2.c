/* The AVX2 kernel set: int4 64 values per 32-byte load against qact.qp (and;
 * shift, and), vpmaddubsw + vpmaddwd; Q8 by the abs/sign trick. The method
 * is x86_256.h's, shared with avxvnni.c; prompts' int4 tiles go through
 * tok8 (below), 8 tokens per vector. */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include "x86.h"

int rq4_kernels_avx2_supported(void) {
    x86_features f = detect_x86();
    return f.avx2 && f.f16c && f.fma;
}

/* ---- avx2: vpmaddubsw (u8 x s8 -> s16 pairs, no saturation here: 2*15*127 and
 * 2*128*127 fit) then vpmaddwd with ones -> s32 ---- */

/* signed x signed: |w| (0..128 as u8) times x with w's sign */
static inline __attribute__((always_inline)) TGT256 __m256i avx2_dot_8(__m256i a, __m256i w, const int8_t *x) {
    __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x), w);
    __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), xs);
    return _mm256_add_epi32(a, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* int4 in nibble order (qact.qp): lo . xa + hi . xb as 16-bit sums of 4
 * products (4 * 15 * 128 = 7680), not yet widened: x86_256.h adds up to 4
 * of them (30720 fits int16) before part_widen; _s: 128 bits */
static inline __attribute__((always_inline)) TGT256 __m256i avx2_dot_u2(__m256i lo, const int8_t *xa, __m256i hi,
                                                                        const int8_t *xb) {
    return _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xa)),
                            _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)xb)));
}

static inline __attribute__((always_inline)) TGT256 __m128i avx2_dot_u2_s(__m128i lo, const int8_t *xa, __m128i hi,
                                                                          const int8_t *xb) {
    return _mm_add_epi16(_mm_maddubs_epi16(lo, _mm_loadu_si128((const __m128i *)xa)),
                         _mm_maddubs_epi16(hi, _mm_loadu_si128((const __m128i *)xb)));
}

#define TGT TGT256
#define ld_q8(p) _mm256_loadu_si256((const __m256i *)(p))
#define dot_8(a, w, x) avx2_dot_8((a), (w), (x))
#define dot_u2(lo, xa, hi, xb) avx2_dot_u2((lo), (xa), (hi), (xb))
#define dot_u2_s(lo, xa, hi, xb) avx2_dot_u2_s((lo), (xa), (hi), (xb))
#define part_add(a, b) _mm256_add_epi16((a), (b))
#define part_widen(p, ones) _mm256_madd_epi16((p), (ones))
#define Q8_OFF 0
#include "x86_256.h"

/* ---- tok8: prompts, 8 tokens per vector ----
 * The 256-bit sibling of avx512vnni.c's tok16, for int4 weights (Q4S, Q4A);
 * Q8 and decoding keep x86_256.h's kernels.
 *
 * Lane t of a vector is token t of a group of 8: half of a tile of qact.qt
 * (interleave_act: block b of a tile as 8 vectors of 64 bytes, vector c
 * holding values 4c..4c+3 of each of 16 tokens, so its first 32 bytes are
 * tokens 0-7 and its last 32 tokens 8-15). A weight row is unpacked once
 * into unsigned bytes (Q4S: q + 8, Q4A: q; 0..15), then vpmaddubsw of 4
 * weight bytes broadcast to every lane with a group vector gives each token
 * two 16-bit sums of 2 products in its own lane. The 8 steps of a block add
 * up in 16 bits (8 * 2 * 15 * 127 fits int16), and one vpmaddwd with ones
 * makes each token's exact int32 block sum: no horizontal reduction at all.
 * Q4S then subtracts 8 * (the token's sum of the block's activations).
 * The contract's 16 float lanes become 16 vectors per (row, group) (lane j
 * of token t = lane t of L[j]), kept in memory (L1) between blocks, and its
 * final tree vertical adds: bit-identical to kernels_scalar.
 *
 * Each step works on TOK8_NR rows x TOK8_NG groups (8 int16 accumulators,
 * NG group vectors and NR broadcasts: 14 of the 16 registers), so every
 * group vector loaded serves NR rows and every broadcast NG groups. Rows go
 * in groups of TOK8_ROWS over column chunks of at most TOK8_L1_BLOCKS / (the
 * pass's tiles) blocks, so the tiles' chunk, read once per row group, stays
 * in L1 (a short prompt's rows then go in one chunk). Used for
 * the tiles of a call (tiled_tokens); groups of 8 wholly past ntok (the
 * padding) are skipped, and the tokens after the tiles go through x86_256.h's
 * kernels. */

#define TOK8_CHUNK 64     /* blocks per column chunk, at most (a multiple of 8) */
#define TOK8_L1_BLOCKS 64 /* blocks of tiles per chunk: 32 KiB */
#define TOK8_ROWS 8   /* rows unpacked per pass */
#define TOK8_TILES 4  /* tiles (two groups of 8 each) per pass over a row group */
#define TOK8_NR 2     /* rows per step */
#define TOK8_NG 4     /* groups of 8 tokens per step */

/* 32 bytes of packed nibbles (two blocks) -> 64 bytes at o, value i in byte
 * i, as unpack32_256: qwords 0, 2 | 1, 3 so that the in-lane byte
 * interleaves of the low and high nibbles give values 0-31, then 32-63. */
static inline __attribute__((always_inline)) TGT256 void tok8_unpack64(const uint8_t *p, int sgn, uint8_t *o) {
    __m256i w = _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)p), 0xD8), m = _mm256_set1_epi8(0x0F);
    if (sgn) w = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x88));
    __m256i lo = _mm256_and_si256(w, m), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m);
    _mm256_storeu_si256((__m256i *)o, _mm256_unpacklo_epi8(lo, hi));
    _mm256_storeu_si256((__m256i *)(o + 32), _mm256_unpackhi_epi8(lo, hi));
}

/* Blocks [b0, b0 + cnt) of row r as unsigned bytes in value order (Q4S
 * q + 8, Q4A q), and each block's weight scale (and minimum) as a float,
 * indexed from 0. */
static TGT256 void tok8_unpack(int kind, const qmat *w, int r, int b0, int cnt, uint8_t *wb, float *dblk,
                               float *mblk) {
    row_view v;
    row_of(&v, w, r, kind);
    const uint8_t *q = v.q + (size_t)b0 * (QK / 2);
    int i = 0;
    for (; i + 2 <= cnt; i += 2) tok8_unpack64(q + (size_t)i * (QK / 2), kind == K_Q4S, wb + (size_t)i * QK);
    if (i < cnt) _mm256_storeu_si256((__m256i *)(wb + (size_t)i * QK), unpack32_256(q + (size_t)i * (QK / 2), kind == K_Q4S));
    for (int b = 0; b < cnt; b += 8) { /* 8 at a time: dblk and mblk have room up to a multiple of 8 */
        int n = cnt - b < 8 ? cnt - b : 8;
        _mm256_storeu_ps(dblk + b, scales8(&v, v.d, b0 + b, n));
        if (kind == K_Q4A) _mm256_storeu_ps(mblk + b, scales8(&v, v.m, b0 + b, n));
    }
}

/* Blocks [b0, b0 + cnt) of NR rows (unpacked chunks wb[i]) against NG groups
 * of 8 tokens from group g0, into the lanes L[i][gl ..] (16 vectors per row
 * and group). NR and NG are constants at each call, so the accumulators stay
 * in registers. */
static inline __attribute__((always_inline)) TGT256 void tok8_blocks(int kind, const qact *x, int g0, int b0, int cnt,
                                                                     const uint8_t (*wb)[TOK8_CHUNK * QK],
                                                                     const float (*dblk)[TOK8_CHUNK],
                                                                     const float (*mblk)[TOK8_CHUNK],
                                                                     __m256 (*L)[2 * TOK8_TILES][16], int gl,
                                                                     const int NR, const int NG) {
    const size_t nb = (size_t)x->nb;
    for (int i = 0; i < cnt; i++) {
        size_t b = (size_t)(b0 + i);
        const int8_t *xg[TOK8_NG]; /* group g's 8 tokens: the (g % 2) half of tile g / 2 */
        for (int g = 0; g < NG; g++) xg[g] = x->qt + ((size_t)((g0 + g) / 2) * nb + b) * 512 + 32 * (size_t)((g0 + g) % 2);
        __m256i acc[TOK8_NR][TOK8_NG];
        for (int r = 0; r < NR; r++)
            for (int g = 0; g < NG; g++) acc[r][g] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            __m256i xv[TOK8_NG], wv[TOK8_NR];
            for (int g = 0; g < NG; g++) xv[g] = _mm256_loadu_si256((const __m256i *)(xg[g] + 64 * c));
            for (int r = 0; r < NR; r++) {
                int32_t w4;
                memcpy(&w4, wb[r] + i * QK + 4 * c, sizeof w4);
                wv[r] = _mm256_set1_epi32(w4);
            }
            for (int r = 0; r < NR; r++)
                for (int g = 0; g < NG; g++) acc[r][g] = _mm256_add_epi16(acc[r][g], _mm256_maddubs_epi16(wv[r], xv[g]));
            /* the sums step by step: GCC would otherwise reassociate the
             * integer adds into a tree over all 8 steps and spill */
            for (int r = 0; r < NR; r++)
                for (int g = 0; g < NG; g++) __asm__("" : "+x"(acc[r][g]));
        }
        for (int g = 0; g < NG; g++) {
            int k = (g0 + g) / 2, h = (g0 + g) % 2;
            size_t at = ((size_t)k * nb + b) * 16 + 8 * (size_t)h;
            __m256 dx = _mm256_loadu_ps(x->dt + at);
            __m256i st = _mm256_loadu_si256((const __m256i *)(x->st + at));
            for (int r = 0; r < NR; r++) {
                __m256i isum = _mm256_madd_epi16(acc[r][g], _mm256_set1_epi16(1));
                if (kind == K_Q4S) isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(st, 3)); /* the weights' + 8 */
                /* lane b % 16 starts at -0.0f (the contract) when block b is its first */
                __m256 *lane = &L[r][gl + g][b % 16];
                __m256 f = b < 16 ? _mm256_set1_ps(-0.0f) : *lane;
                f = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(dblk[r][i]), dx), _mm256_cvtepi32_ps(isum), f);
                if (kind == K_Q4A)
                    f = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(mblk[r][i]), dx), _mm256_cvtepi32_ps(st), f);
                *lane = f;
            }
        }
    }
}

/* The contract's final tree over L: lane t of the result is token t's output.
 * In a local copy, which stays in registers (L itself would be stored back at
 * every step). */
static inline __attribute__((always_inline)) TGT256 __m256 tok8_finish(const __m256 *L) {
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_add_ps(L[i], L[i + 8]);
    for (int w = 4; w > 0; w /= 2)
        for (int i = 0; i < w; i++) a[i] = _mm256_add_ps(a[i], a[i + w]);
    return a[0];
}

static inline __attribute__((always_inline)) TGT256 void tok8_rows(int kind, const qact *x, const qmat *w, int groups,
                                                                   int r0, int r1, float *out, size_t out_stride) {
    uint8_t wb[TOK8_ROWS][TOK8_CHUNK * QK] __attribute__((aligned(32)));
    float dblk[TOK8_ROWS][TOK8_CHUNK], mblk[TOK8_ROWS][TOK8_CHUNK];
    __m256 lanes[TOK8_ROWS][2 * TOK8_TILES][16]; /* across chunks */
    const int nb = x->nb;
    for (int gg = 0; gg < groups; gg += 2 * TOK8_TILES) {
        int ngg = groups - gg < 2 * TOK8_TILES ? groups - gg : 2 * TOK8_TILES;
        int most = TOK8_L1_BLOCKS / ((ngg + 1) / 2) < TOK8_CHUNK ? TOK8_L1_BLOCKS / ((ngg + 1) / 2) : TOK8_CHUNK;
        int chunks = (nb + most - 1) / most, chunk = (nb + chunks - 1) / chunks; /* even chunks: no short one at the end */
        for (int rg = r0; rg < r1; rg += TOK8_ROWS) {
            int nr = r1 - rg < TOK8_ROWS ? r1 - rg : TOK8_ROWS;
            for (int i = 0; i < nr; i++) /* the lanes no block starts (nb < 16) */
                for (int g = 0; g < ngg; g++)
                    for (int j = nb; j < 16; j++) lanes[i][g][j] = _mm256_set1_ps(-0.0f);
            for (int c0 = 0; c0 < nb; c0 += chunk) {
                int cnt = nb - c0 < chunk ? nb - c0 : chunk;
                for (int i = 0; i < nr; i++) tok8_unpack(kind, w, rg + i, c0, cnt, wb[i], dblk[i], mblk[i]);
                for (int gl = 0; gl < ngg;) { /* constant counts: the accumulators stay in registers */
                    int ng = ngg - gl >= TOK8_NG ? TOK8_NG : ngg - gl >= 2 ? 2 : 1;
                    for (int i = 0; i < nr; i += nr - i >= TOK8_NR ? TOK8_NR : 1) {
#define TOK8_BLOCKS(NR, NG) tok8_blocks(kind, x, gg + gl, c0, cnt, wb + i, dblk + i, mblk + i, lanes + i, gl, NR, NG)
                        int two = nr - i >= TOK8_NR;
                        if (two && ng == TOK8_NG) TOK8_BLOCKS(TOK8_NR, TOK8_NG);
                        else if (two && ng == 2) TOK8_BLOCKS(TOK8_NR, 2);
                        else if (two) TOK8_BLOCKS(TOK8_NR, 1);
                        else if (ng == TOK8_NG) TOK8_BLOCKS(1, TOK8_NG);
                        else if (ng == 2) TOK8_BLOCKS(1, 2);
                        else TOK8_BLOCKS(1, 1);
#undef TOK8_BLOCKS
                    }
                    gl += ng;
                }
            }
            /* outputs gathered per token first: out's rows lie a row length apart,
             * often a multiple of 4 KiB, so scattered stores would thrash L1 sets */
            float y[2 * TOK8_TILES * 8][TOK8_ROWS];
            for (int i = 0; i < nr; i++)
                for (int g = 0; g < ngg; g++) {
                    float v[8];
                    _mm256_storeu_ps(v, tok8_finish(lanes[i][g]));
                    for (int t = 0; t < 8; t++) y[8 * g + t][i] = v[t];
                }
            for (int t = 0; t < 8 * ngg && 8 * gg + t < x->ntok; t++) /* not the padding's */
                memcpy(out + (size_t)(8 * gg + t) * out_stride + (size_t)rg, y[t], sizeof(float) * (size_t)nr);
        }
    }
}

/* The tiles' groups of 8 that hold a token here, the tokens after the tiles
 * by x86_256.h's kernel `rest`. */
static inline __attribute__((always_inline)) TGT256 void tok8_dot(int kind, dot_fn rest, const qact *x, const qmat *w,
                                                                  int r0, int r1, float *out, size_t out_stride) {
    int tiled = 16 * x->ntile, real = tiled < x->ntok ? tiled : x->ntok;
    if (real == 0) {
        rest(x, w, r0, r1, out, out_stride);
        return;
    }
    tok8_rows(kind, x, w, (real + 7) / 8, r0, r1, out, out_stride);
    if (tiled < x->ntok) {
        qact left = rq4_qact_tail(x, tiled);
        rest(&left, w, r0, r1, out + (size_t)tiled * out_stride, out_stride);
    }
}

TGT256 void rq4_avx2_tok8_q4s(dot_fn rest, const qact *x, const qmat *w, int r0, int r1, float *out,
                              size_t out_stride) {
    tok8_dot(K_Q4S, rest, x, w, r0, r1, out, out_stride);
}

TGT256 void rq4_avx2_tok8_q4a(dot_fn rest, const qact *x, const qmat *w, int r0, int r1, float *out,
                              size_t out_stride) {
    tok8_dot(K_Q4A, rest, x, w, r0, r1, out, out_stride);
}

static TGT256 void dot_q4s_tok8(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    rq4_avx2_tok8_q4s(dot_q4s, x, w, r0, r1, out, out_stride);
}

static TGT256 void dot_q4a_tok8(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    rq4_avx2_tok8_q4a(dot_q4a, x, w, r0, r1, out, out_stride);
}

#include "avx2_r4.h"

const kernel_set rq4_kernels_avx2 = {"avx2", dot_q4s_tok8, dot_q4a_tok8, dot_q8, dot_q4s_r4_avx2, dot_q4a_r4_avx2};

#endif /* x86 */
