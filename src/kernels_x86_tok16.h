/* AVX-512 VNNI for prompts: 16 tokens per vector (included by
 * src/kernels_x86.c after the avx512vnni body; not compiled on its own).
 *
 * Lane t of a vector is token t of a tile of 16 (qact.qt, interleave_act:
 * block b of the tile as 8 vectors, vector c holding values 4c..4c+3 of each
 * token, as q + 128). One weight row is unpacked once into signed bytes; then
 * vpdpbusd of a tile vector with 4 weight bytes broadcast from memory adds
 * 4 products to each token's lane, so 8 of them give every token's exact
 * block sum in its own lane: no horizontal reduction at all. The + 128 is
 * taken back out as 128 * (the block's sum of weights). The contract's 16
 * float lanes become 16 vectors (lane j of token t = lane t of L[j]) and its
 * final tree vertical adds, so results stay bit-identical to kernels_scalar.
 *
 * Rows are taken in column chunks of TOK16_CHUNK blocks (16 KiB of a tile's
 * activations, which then stay in L1 across a group of TOK16_ROWS rows); the
 * lanes of each (row, tile) wait in memory between chunks. A row of at most
 * one chunk (SmolLM2's 576 and 1536 columns) keeps them in registers. Used
 * for the full tiles of a call; the other tokens go through the body's
 * dot_rows.
 */

#define TOK16_CHUNK 32 /* blocks: a multiple of 16, so chunks keep the lane of block b at b % 16 */
#define TOK16_ROWS 8
#define TOK16_TILES 4  /* tiles per pass over a group of rows */

/* Blocks [b0, b0 + cnt) of row r as signed bytes (Q4S -8..7, Q4A 0..15, Q8 as
 * stored), each block's sum of weights and its weight scale (and minimum) as a
 * float, indexed from 0. */
static TGT512 void tok16_unpack(int kind, const qmat *w, int r, int b0, int cnt, int8_t *wb, int32_t *wsum,
                               float *dblk, float *mblk) {
    const int bpg = w->gs / QK;
    const uint8_t *q = w->q + (size_t)r * w->row_bytes + (size_t)b0 * (kind == K_Q8 ? QK : QK / 2);
    const uint16_t *wd = w->d + (size_t)r * (size_t)w->ngroups;
    const uint16_t *wm = kind == K_Q4A ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
    if (kind == K_Q8) {
        memcpy(wb, q, (size_t)cnt * QK);
    } else {
        for (int e = 0; e < cnt * QK; e += 32) { /* 16 bytes -> 32 values in value order */
            __m256i v = unpack32_256(q + e / 2, kind == K_Q4S); /* Q4S: q + 8 */
            if (kind == K_Q4S) v = _mm256_sub_epi8(v, _mm256_set1_epi8(8));
            _mm256_storeu_si256((__m256i *)(wb + e), v);
        }
    }
    for (int b = 0, g = b0 / bpg, in_group = b0 % bpg; b < cnt; b++) { /* block b0+b is in group g */
        __m256i v = _mm256_loadu_si256((const __m256i *)(wb + b * QK));
        __m256i s16 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s16), _mm256_extracti128_si256(s16, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
        wsum[b] = _mm_cvtsi128_si32(s);
        dblk[b] = _cvtsh_ss(wd[g]);
        if (wm) mblk[b] = _cvtsh_ss(wm[g]);
        if (++in_group == bpg) {
            g++;
            in_group = 0;
        }
    }
}

/* Blocks [b0, b0 + cnt) of tile k against one row's unpacked chunk (wb ..
 * indexed from 0), added to its 16 lane vectors L. */
static inline __attribute__((always_inline)) TGT512 void tok16_blocks(int kind, const qact *x, int k, int b0, int cnt,
                                                                      const int8_t *wb, const int32_t *wsum,
                                                                      const float *dblk, const float *mblk,
                                                                      __m512 *L) {
    const int nb = x->nb;
    const uint8_t *xt = x->qt + (size_t)k * (size_t)nb * 512;
    const float *xd = x->dt + (size_t)k * (size_t)nb * 16;
    const int32_t *xs = x->st + (size_t)k * (size_t)nb * 16;
    for (int i0 = 0; i0 < cnt; i0 += 16) {
#pragma GCC unroll 16 /* L[j] in registers */
        for (int j = 0; j < 16; j++) {
            int i = i0 + j, b = b0 + i;
            if (i >= cnt) break;
            const uint8_t *xb = xt + (size_t)b * 512;
            __m512i acc[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}; /* two chains */
            /* the block's 32 weights in one register, 4 of them broadcast per step by a
             * permute (broadcast loads and 64-byte loads would share the load ports) */
            __m512i w32 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(wb + i * QK)));
            for (int c = 0; c < 8; c++)
                acc[c & 1] = _mm512_dpbusd_epi32(acc[c & 1], _mm512_loadu_si512((const void *)(xb + 64 * c)),
                                                 _mm512_permutexvar_epi32(_mm512_set1_epi32(c), w32));
            __m512i isum = _mm512_sub_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_set1_epi32(128 * wsum[i]));
            __m512 dx = _mm512_loadu_ps(xd + (size_t)b * 16);
            __m512 term = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(dblk[i]), dx), _mm512_cvtepi32_ps(isum));
            if (kind == K_Q4A) {
                __m512 s = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(xs + (size_t)b * 16)));
                term = _mm512_add_ps(term, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(mblk[i]), dx), s));
            }
            L[j] = _mm512_add_ps(L[j], term);
        }
    }
}

/* The contract's final tree over L, then the 16 tokens' outputs of row r. */
static inline __attribute__((always_inline)) TGT512 void tok16_finish(__m512 *L, int k, int r, float *out,
                                                                      size_t out_stride) {
    for (int w = 8; w > 0; w /= 2)
        for (int i = 0; i < w; i++) L[i] = _mm512_add_ps(L[i], L[i + w]);
    float y[16];
    _mm512_storeu_ps(y, L[0]);
    for (int t = 0; t < 16; t++) out[(size_t)(16 * k + t) * out_stride + (size_t)r] = y[t];
}

static inline __attribute__((always_inline)) TGT512 void tok16_rows(int kind, const qact *x, const qmat *w, int tiles,
                                                                    int r0, int r1, float *out, size_t out_stride) {
    int8_t wb[TOK16_ROWS][TOK16_CHUNK * QK] __attribute__((aligned(64)));
    int32_t wsum[TOK16_ROWS][TOK16_CHUNK];
    float dblk[TOK16_ROWS][TOK16_CHUNK], mblk[TOK16_ROWS][TOK16_CHUNK];
    __m512 lanes[TOK16_ROWS][TOK16_TILES][16]; /* between chunks */
    const int nb = x->nb;
    for (int k0 = 0; k0 < tiles; k0 += TOK16_TILES) {
        int nt = tiles - k0 < TOK16_TILES ? tiles - k0 : TOK16_TILES;
        for (int rg = r0; rg < r1; rg += TOK16_ROWS) {
            int nr = r1 - rg < TOK16_ROWS ? r1 - rg : TOK16_ROWS;
            for (int c0 = 0; c0 < nb; c0 += TOK16_CHUNK) {
                int cnt = nb - c0 < TOK16_CHUNK ? nb - c0 : TOK16_CHUNK, last = c0 + cnt == nb;
                for (int i = 0; i < nr; i++) tok16_unpack(kind, w, rg + i, c0, cnt, wb[i], wsum[i], dblk[i], mblk[i]);
                for (int k = 0; k < nt; k++)
                    for (int i = 0; i < nr; i++) {
                        __m512 L[16];
                        for (int j = 0; j < 16; j++) L[j] = c0 == 0 ? _mm512_setzero_ps() : lanes[i][k][j];
                        tok16_blocks(kind, x, k0 + k, c0, cnt, wb[i], wsum[i], dblk[i], mblk[i], L);
                        if (last) tok16_finish(L, k0 + k, rg + i, out, out_stride);
                        else
                            for (int j = 0; j < 16; j++) lanes[i][k][j] = L[j];
                    }
            }
        }
    }
}

/* The full tiles here, the other tokens by the body's kernel `rest`. */
static inline __attribute__((always_inline)) TGT512 void tok16_dot(int kind, dot_fn rest, const qact *x,
                                                                   const qmat *w, int r0, int r1, float *out,
                                                                   size_t out_stride) {
    int tiles = x->ntile < x->ntok / 16 ? x->ntile : x->ntok / 16;
    if (tiles == 0) {
        rest(x, w, r0, r1, out, out_stride);
        return;
    }
    tok16_rows(kind, x, w, tiles, r0, r1, out, out_stride);
    int done = 16 * tiles;
    if (done < x->ntok) {
        qact left = *x;
        left.q += (size_t)done * (size_t)x->n;
        left.qp += (size_t)done * (size_t)x->n;
        left.d += (size_t)done * (size_t)x->nb;
        left.s += (size_t)done * (size_t)x->nb;
        left.ntok -= done;
        left.ntile = 0;
        rest(&left, w, r0, r1, out + (size_t)done * out_stride, out_stride);
    }
}

static TGT512 void dot_q4s_tok16(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    tok16_dot(K_Q4S, dot_q4s_avx512vnni, x, w, r0, r1, out, out_stride);
}

static TGT512 void dot_q4a_tok16(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    tok16_dot(K_Q4A, dot_q4a_avx512vnni, x, w, r0, r1, out, out_stride);
}

static TGT512 void dot_q8_tok16(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    tok16_dot(K_Q8, dot_q8_avx512vnni, x, w, r0, r1, out, out_stride);
}
