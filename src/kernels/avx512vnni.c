/* The AVX-512 VNNI kernel set (Ice Lake, Zen 4): prompts' tiles of 16
 * tokens, vpdpbusd on 512 bits; Q8 weights as w + 128 (xor 0x80). Decoding,
 * and the tokens of a prompt past its tiles, go through the set's per-token
 * kernels in avx512vnni_256.c.
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
 * zero-padded, and their padding lanes are not written out).
 */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

#include "x86.h"

int rq4_kernels_avx512vnni_supported(void) {
    x86_features f = detect_x86();
    return f.avx2 && f.f16c && f.fma && f.avx512;
}

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
    tok16_dot(K_Q4S, rq4_avx512vnni_tokens_q4s, x, w, r0, r1, out, out_stride);
}

static TGT512 void dot_q4a_tiles(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    tok16_dot(K_Q4A, rq4_avx512vnni_tokens_q4a, x, w, r0, r1, out, out_stride);
}

static TGT512 void dot_q8_tiles(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    tok16_dot(K_Q8, rq4_avx512vnni_tokens_q8, x, w, r0, r1, out, out_stride);
}

/* no interleaved kernels of its own: dispatch.c gives it the next set's (avx2) */
const kernel_set rq4_kernels_avx512vnni = {"avx512vnni", dot_q4s_tiles, dot_q4a_tiles, dot_q8_tiles, NULL, NULL};

#endif /* x86 */
