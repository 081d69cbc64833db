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
 * Used for the full tiles of a call when the row fits the stack buffer
 * (TOK16_MAX_COLS); the other tokens go through the body's dot_rows.
 */

#define TOK16_MAX_COLS 16384

/* Row r as signed bytes (Q4S -8..7, Q4A 0..15, Q8 as stored), each block's
 * sum of weights, and each block's weight scale (and minimum) as a float. */
static TGT512 void tok16_unpack_row(int kind, const qmat *w, int r, int8_t *wb, int32_t *wsum, float *dblk,
                                   float *mblk) {
    const int n = w->cols, nb = n / QK, bpg = w->gs / QK;
    const uint8_t *q = w->q + (size_t)r * w->row_bytes;
    const uint16_t *wd = w->d + (size_t)r * (size_t)w->ngroups;
    const uint16_t *wm = kind == K_Q4A ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
    if (kind == K_Q8) {
        memcpy(wb, q, (size_t)n);
    } else {
        for (int e = 0; e < n; e += 32) { /* 16 bytes -> 32 values in value order */
            __m256i v = unpack32_256(q + e / 2, kind == K_Q4S); /* Q4S: q + 8 */
            if (kind == K_Q4S) v = _mm256_sub_epi8(v, _mm256_set1_epi8(8));
            _mm256_storeu_si256((__m256i *)(wb + e), v);
        }
    }
    for (int b = 0, g = 0, in_group = 0; b < nb; b++) { /* block b is in group g (no division) */
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

/* Tile k (tokens 16k .. 16k+15) of row r. */
static inline __attribute__((always_inline)) TGT512 void tok16_tile(int kind, const qact *x, int k, const int8_t *wb,
                                                                    const int32_t *wsum, const float *dblk,
                                                                    const float *mblk, int r, float *out,
                                                                    size_t out_stride) {
    const int nb = x->nb;
    const uint8_t *xt = x->qt + (size_t)k * (size_t)nb * 512;
    const float *xd = x->dt + (size_t)k * (size_t)nb * 16;
    const int32_t *xs = x->st + (size_t)k * (size_t)nb * 16;
    __m512 L[16];
    for (int j = 0; j < 16; j++) L[j] = _mm512_setzero_ps();
    for (int b0 = 0; b0 < nb; b0 += 16) {
#pragma GCC unroll 16 /* L[j] in registers */
        for (int j = 0; j < 16; j++) {
            int b = b0 + j;
            if (b >= nb) break;
            const uint8_t *xb = xt + (size_t)b * 512;
            const int8_t *wv = wb + b * QK;
            __m512i acc[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}; /* two chains */
            /* the block's 32 weights in one register, 4 of them broadcast per step by a
             * permute (broadcast loads and 64-byte loads would share the load ports) */
            __m512i w32 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)wv));
            for (int c = 0; c < 8; c++)
                acc[c & 1] = _mm512_dpbusd_epi32(acc[c & 1], _mm512_loadu_si512((const void *)(xb + 64 * c)),
                                                 _mm512_permutexvar_epi32(_mm512_set1_epi32(c), w32));
            __m512i isum = _mm512_sub_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_set1_epi32(128 * wsum[b]));
            __m512 dx = _mm512_loadu_ps(xd + (size_t)b * 16);
            __m512 term = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(dblk[b]), dx), _mm512_cvtepi32_ps(isum));
            if (kind == K_Q4A) {
                __m512 s = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(xs + (size_t)b * 16)));
                term = _mm512_add_ps(term, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(mblk[b]), dx), s));
            }
            L[j] = _mm512_add_ps(L[j], term);
        }
    }
    for (int w = 8; w > 0; w /= 2)
        for (int i = 0; i < w; i++) L[i] = _mm512_add_ps(L[i], L[i + w]);
    float y[16];
    _mm512_storeu_ps(y, L[0]);
    for (int t = 0; t < 16; t++) out[(size_t)(16 * k + t) * out_stride + (size_t)r] = y[t];
}

static inline __attribute__((always_inline)) TGT512 void tok16_rows(int kind, const qact *x, const qmat *w, int tiles,
                                                                    int r0, int r1, float *out, size_t out_stride) {
    int8_t wb[TOK16_MAX_COLS] __attribute__((aligned(64)));
    int32_t wsum[TOK16_MAX_COLS / QK];
    float dblk[TOK16_MAX_COLS / QK], mblk[TOK16_MAX_COLS / QK];
    for (int r = r0; r < r1; r++) {
        tok16_unpack_row(kind, w, r, wb, wsum, dblk, mblk);
        for (int k = 0; k < tiles; k++) tok16_tile(kind, x, k, wb, wsum, dblk, mblk, r, out, out_stride);
    }
}

/* The full tiles here, the other tokens (and rows too long for the buffer) by
 * the body's kernel `rest`. */
static inline __attribute__((always_inline)) TGT512 void tok16_dot(int kind, dot_fn rest, const qact *x,
                                                                   const qmat *w, int r0, int r1, float *out,
                                                                   size_t out_stride) {
    int tiles = x->ntile < x->ntok / 16 ? x->ntile : x->ntok / 16;
    if (tiles == 0 || x->n > TOK16_MAX_COLS) {
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
