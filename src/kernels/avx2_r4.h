/* The AVX2 kernels of the interleaved types (Q4S_R4, Q4A_R4; kernels.h),
 * included by avx2.c (not compiled alone; x86.h before it).
 *
 * A block of a row group is 64 bytes: two 32-byte vectors, chunks 0-1 and
 * 2-3, each 128-bit half one chunk (4 bytes of each of the 4 rows). Their
 * nibbles, unsigned (Q4S: q + 8, by xor 8), go through vpmaddubsw against the
 * activations of the chunk's lane repeated for the 4 rows, prepared once per
 * call and column chunk (r4_prep: 4 vectors per block and token, then scales
 * and sums replicated 4 times), so the loops only load them. The 4 products
 * vectors of a block add up in 16 bits (4 * 2 * 15 * 127 fits int16) and one
 * vpmaddwd with ones gives, per row, the sums of chunks 0+2 (low half) and
 * 1+3 (high half); two blocks b, b+1 are then folded into one vector, block
 * b's 4 rows in the low half and b+1's in the high half, and Q4S subtracts
 * 8 * xs. The float part is the contract, 8 lanes at once: (d * dx) * isum
 * [+ (m * dx) * xs] for 2 blocks x 4 rows, added into the vector of lanes
 * b % 16, b % 16 + 1 (the final tree: vertical adds, then the two halves).
 *
 * Decoding walks a row group's blocks in order, its 8 lane vectors in
 * registers. Short prompts walk the lane pairs one by one (b = 2j, 2j + 16,
 * ...), R4X_T tokens per step sharing each unpacked block, one vector per
 * token. Rows are taken R4X_RB groups at a time over column chunks, their
 * lanes kept in memory between chunks. Longer prompts, with tiles, go
 * through tok8 (avx2.c) on the rows de-interleaved into a row-major copy,
 * 8 at a time: tok8 unpacks each row once per call anyway.
 */

#define R4X_BLOCKS 256 /* blocks of activations prepared at once, over all tokens of a step */
#define R4X_RB 16      /* row groups per batch */
#define R4X_T 4        /* tokens per prompt step */
#define R4X_DECODE_PAIRS 128 /* decoding takes two row groups per pass past this many blocks */

/* One token's activations for a column chunk, as the kernels load them. */
typedef struct r4x_acts {
    __m256i (*v)[4];   /* block b: evens of lanes 0|1, 2|3, odds of 0|1, 2|3, each lane 4 times */
    float (*dx)[4];    /* the block's scale, 4 times */
    int32_t (*s)[4];   /* Q4S: 8 * its sum; Q4A: its sum; 4 times */
} r4x_acts;

/* Room for R4X_BLOCKS blocks of activations */
typedef struct r4x_room {
    __m256i v[R4X_BLOCKS + R4X_T][4];
    float dx[R4X_BLOCKS + R4X_T][4];
    int32_t s[R4X_BLOCKS + R4X_T][4];
} r4x_room;

/* Blocks c0 .. c0 + cnt of token t into a (zeros up to an even count). */
ALWAYS TGT256 void r4x_prep(int kind, const qact *x, int t, int c0, int cnt, r4x_acts *a) {
    const __m256i rep01 = _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
                                           4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    const __m256i rep23 = _mm256_add_epi8(rep01, _mm256_set1_epi8(8));
    const int nb = x->nb, whole = nb & ~3;
    for (int i = 0; i < cnt; i++) {
        int b = c0 + i;
        size_t at, half;
        if (b < whole) { /* rq4_permute_act's spans of 128, then 64 and 32 */
            at = (size_t)(b >> 2) * 128 + 16 * (size_t)(b & 3);
            half = 64;
        } else if (nb - whole >= 2 && b - whole < 2) {
            at = (size_t)whole * QK + 16 * (size_t)(b - whole);
            half = 32;
        } else {
            at = (size_t)b * QK;
            half = 16;
        }
        const int8_t *xp = x->qp + (size_t)t * (size_t)x->n + at;
        __m256i e = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xp));
        __m256i o = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xp + half)));
        a->v[i][0] = _mm256_shuffle_epi8(e, rep01);
        a->v[i][1] = _mm256_shuffle_epi8(e, rep23);
        a->v[i][2] = _mm256_shuffle_epi8(o, rep01);
        a->v[i][3] = _mm256_shuffle_epi8(o, rep23);
        float d = x->d[(size_t)t * (size_t)nb + (size_t)b];
        int32_t s = x->s[(size_t)t * (size_t)nb + (size_t)b] * (kind == K_Q4S ? 8 : 1);
        for (int k = 0; k < 4; k++) {
            a->dx[i][k] = d;
            a->s[i][k] = s;
        }
    }
    if (cnt & 1) {
        for (int k = 0; k < 4; k++) a->v[cnt][k] = _mm256_setzero_si256();
        memset(a->dx[cnt], 0, sizeof a->dx[cnt]);
        memset(a->s[cnt], 0, sizeof a->s[cnt]);
    }
}

/* A block's 4 nibble vectors (lo 0|1, lo 2|3, hi 0|1, hi 2|3), unsigned;
 * zeros when `real` is 0 (past the row's last block) */
typedef struct r4x_block {
    __m256i n[4];
} r4x_block;

ALWAYS TGT256 r4x_block r4x_unpack(int kind, const uint8_t *p, int real) {
    r4x_block w;
    if (!real) {
        for (int k = 0; k < 4; k++) w.n[k] = _mm256_setzero_si256();
        return w;
    }
    const __m256i m = _mm256_set1_epi8(0x0F);
    __m256i a = _mm256_loadu_si256((const __m256i *)p), b = _mm256_loadu_si256((const __m256i *)(p + 32));
    if (kind == K_Q4S) {
        a = _mm256_xor_si256(a, _mm256_set1_epi8((char)0x88));
        b = _mm256_xor_si256(b, _mm256_set1_epi8((char)0x88));
    }
    w.n[0] = _mm256_and_si256(a, m);
    w.n[1] = _mm256_and_si256(b, m);
    w.n[2] = _mm256_and_si256(_mm256_srli_epi16(a, 4), m);
    w.n[3] = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
    return w;
}

/* per row: chunks 0+2 (low half), 1+3 (high half) of one block */
ALWAYS TGT256 __m256i r4x_sums(const r4x_block *w, const __m256i *v) {
    __m256i p = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(w->n[0], v[0]), _mm256_maddubs_epi16(w->n[1], v[1])),
                                 _mm256_add_epi16(_mm256_maddubs_epi16(w->n[2], v[2]), _mm256_maddubs_epi16(w->n[3], v[3])));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* The scales of blocks b, b + 1 of row group G (b + 1 past the row: b's) */
ALWAYS TGT256 __m256 r4x_scales(const uint16_t *h, const qmat *w, int G, int b, int nb) {
    const int bpg = w->gs / QK;
    const uint16_t *base = h + (size_t)G * (size_t)w->ngroups * R4;
    int g0 = b / bpg, g1 = b + 1 < nb ? (b + 1) / bpg : g0;
    __m128i lo = _mm_loadl_epi64((const __m128i *)(base + (size_t)g0 * R4));
    __m128i hi = _mm_loadl_epi64((const __m128i *)(base + (size_t)g1 * R4));
    return _mm256_cvtph_ps(_mm_unpacklo_epi64(lo, hi));
}

/* The steps of blocks b, b+1 (i, i+1 of the chunk) for one token on its
 * lanes f (b's 4 rows low, b+1's high); pair = 0: b + 1 is past the row (its
 * zero partner's term could turn a -0.0 lane into +0.0, so those lanes are
 * kept) */
ALWAYS TGT256 __m256 r4x_term(int kind, __m256 f, const r4x_block *w0, const r4x_block *w1, const r4x_acts *a,
                              int i, __m256 d8, __m256 m8, int pair) {
    __m256i s0 = r4x_sums(w0, a->v[i]), s1 = r4x_sums(w1, a->v[i + 1]);
    __m256i isum = _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20), _mm256_permute2x128_si256(s0, s1, 0x31));
    __m256 dx = _mm256_loadu_ps(a->dx[i]);
    __m256i xs = _mm256_loadu_si256((const __m256i *)a->s[i]);
    if (kind == K_Q4S) isum = _mm256_sub_epi32(isum, xs);
    __m256 g = _mm256_fmadd_ps(_mm256_mul_ps(d8, dx), _mm256_cvtepi32_ps(isum), f);
    if (kind == K_Q4A) g = _mm256_fmadd_ps(_mm256_mul_ps(m8, dx), _mm256_cvtepi32_ps(xs), g);
    return pair ? g : _mm256_blend_ps(g, f, 0xF0);
}

/* Decoding: NG (1, 2) row groups from G, blocks c0 .. c0 + cnt in order,
 * lanes L[g] (8 vectors each): each activation vector serves both groups */
ALWAYS TGT256 void r4x_decode(int kind, const int NG, const qmat *w, int G, int nb, int c0, int cnt,
                              const r4x_acts *a, __m256 L[][R4X_T][8]) {
    __m256 acc[2][8];
    for (int g = 0; g < NG; g++)
        for (int j = 0; j < 8; j++) acc[g][j] = L[g][0][j];
    for (int i = 0; i < cnt; i += 2) {
        int b = c0 + i, j = (b & 15) >> 1;
        for (int g = 0; g < NG; g++) {
            const uint8_t *q = w->q + (size_t)(G + g) * w->row_bytes;
            r4x_block w0 = r4x_unpack(kind, q + 64 * (size_t)b, 1);
            r4x_block w1 = r4x_unpack(kind, q + 64 * (size_t)(b + 1), b + 1 < nb);
            __m256 d8 = r4x_scales(w->d, w, G + g, b, nb), m8 = kind == K_Q4A ? r4x_scales(w->m, w, G + g, b, nb) : d8;
            acc[g][j] = r4x_term(kind, acc[g][j], &w0, &w1, a, i, d8, m8, b + 1 < nb);
        }
    }
    for (int g = 0; g < NG; g++)
        for (int j = 0; j < 8; j++) L[g][0][j] = acc[g][j];
}

/* Prompts: T tokens (a[0 .. T)), row group G, blocks c0 .. c0 + cnt lane pair
 * by lane pair, lanes L[t] (8 vectors each) */
ALWAYS TGT256 void r4x_prompt(int kind, const int T, const qmat *w, int G, int nb, int c0, int cnt,
                              const r4x_acts *a, __m256 L[][8]) {
    const uint8_t *q = w->q + (size_t)G * w->row_bytes;
    for (int j = 0; j < 8; j++) {
        __m256 f[R4X_T];
        for (int t = 0; t < T; t++) f[t] = L[t][j];
        for (int i = 2 * j; i < cnt; i += 16) {
            int b = c0 + i;
            r4x_block w0 = r4x_unpack(kind, q + 64 * (size_t)b, 1);
            r4x_block w1 = r4x_unpack(kind, q + 64 * (size_t)(b + 1), b + 1 < nb);
            __m256 d8 = r4x_scales(w->d, w, G, b, nb), m8 = kind == K_Q4A ? r4x_scales(w->m, w, G, b, nb) : d8;
            for (int t = 0; t < T; t++) f[t] = r4x_term(kind, f[t], &w0, &w1, &a[t], i, d8, m8, b + 1 < nb);
        }
        for (int t = 0; t < T; t++) L[t][j] = f[t];
    }
}

/* the contract's tree over a row group's lanes; out[i] = row 4G + i for
 * rows in [r0, r1) */
ALWAYS TGT256 void r4x_finish(__m256 *L, int G, int r0, int r1, float *out) {
    for (int wd = 4; wd > 0; wd /= 2)
        for (int j = 0; j < wd; j++) L[j] = _mm256_add_ps(L[j], L[j + wd]);
    float v[R4];
    _mm_storeu_ps(v, _mm_add_ps(_mm256_castps256_ps128(L[0]), _mm256_extractf128_ps(L[0], 1)));
    for (int i = 0; i < R4; i++)
        if (4 * G + i >= r0 && 4 * G + i < r1) out[4 * G + i] = v[i];
}

/* T tokens from t0 (T = 1: decoding), rows r0 .. r1. The column chunks
 * share R4X_BLOCKS blocks of room among the T tokens (a whole row of up to
 * 8192 values when decoding: the weights are then read in order). */
ALWAYS TGT256 void r4x_tokens(int kind, const int T, const qact *x, const qmat *w, int t0, int r0, int r1,
                              float *out, size_t out_stride) {
    const int nb = x->nb, G1 = (r1 + R4 - 1) / R4, cb = R4X_BLOCKS / T / 16 * 16;
    r4x_room room;
    r4x_acts a[R4X_T];
    for (int t = 0; t < T; t++) { /* token t's cb + 1 blocks (the last: an odd chunk's zero partner) */
        a[t].v = room.v + t * (cb + 1);
        a[t].dx = room.dx + t * (cb + 1);
        a[t].s = room.s + t * (cb + 1);
    }
    __m256 L[R4X_RB][R4X_T][8];
    for (int Gb = r0 / R4; Gb < G1; Gb += R4X_RB) {
        int Gn = G1 - Gb < R4X_RB ? G1 - Gb : R4X_RB;
        for (int g = 0; g < Gn; g++)
            for (int t = 0; t < T; t++)
                for (int j = 0; j < 8; j++) L[g][t][j] = _mm256_set1_ps(-0.0f);
        for (int c0 = 0; c0 < nb; c0 += cb) {
            int cnt = nb - c0 < cb ? nb - c0 : cb;
            for (int t = 0; t < T; t++) r4x_prep(kind, x, t0 + t, c0, cnt, &a[t]);
            if (T == 1) { /* two groups per pass when the prepared activations outgrow L1 */
                int g = 0;
                if (cnt > R4X_DECODE_PAIRS)
                    for (; g + 2 <= Gn; g += 2) r4x_decode(kind, 2, w, Gb + g, nb, c0, cnt, a, L + g);
                for (; g < Gn; g++) r4x_decode(kind, 1, w, Gb + g, nb, c0, cnt, a, L + g);
            } else {
                for (int g = 0; g < Gn; g++) r4x_prompt(kind, T, w, Gb + g, nb, c0, cnt, a, L[g]);
            }
        }
        for (int g = 0; g < Gn; g++)
            for (int t = 0; t < T; t++) r4x_finish(L[g][t], Gb + g, r0, r1, out + (size_t)(t0 + t) * out_stride);
    }
}

ALWAYS TGT256 void dot_r4x(int kind, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    if (r0 >= r1) return;
    int t = 0;
    for (; t + R4X_T <= x->ntok; t += R4X_T) r4x_tokens(kind, R4X_T, x, w, t, r0, r1, out, out_stride);
    switch (x->ntok - t) {
    case 3: r4x_tokens(kind, 3, x, w, t, r0, r1, out, out_stride); break;
    case 2: r4x_tokens(kind, 2, x, w, t, r0, r1, out, out_stride); break;
    case 1: r4x_tokens(kind, 1, x, w, t, r0, r1, out, out_stride); break;
    default: break;
    }
}

/* Prompts from R4X_TOK8_MIN tiled tokens go through tok8, rows up to
 * R4X_TOK8_COLS values (the row-major copy's room) */
#define R4X_TOK8_MIN 16
#define R4X_TOK8_COLS 8192

/* Rows 4G .. 4G + 8 (two row groups, the second perhaps padding past the
 * matrix: then not read) as a row-major qmat in q, d, m */
static TGT256 qmat r4x_rowmajor(const qmat *w, int G, int groups, uint8_t (*q)[R4X_TOK8_COLS / 2], uint16_t *d,
                                uint16_t *m) {
    const int nb = w->cols / QK, ng = w->ngroups;
    for (int i = 0; i < R4 * groups; i++) {
        const uint8_t *src = w->q + (size_t)(G + i / R4) * w->row_bytes;
        const size_t at = (size_t)(G + i / R4) * (size_t)ng * R4 + (size_t)(i % R4);
        for (int b = 0; b < nb; b++) {
            uint32_t c[4];
            for (int k = 0; k < 4; k++) memcpy(&c[k], src + 64 * (size_t)b + (size_t)(4 * k + i % R4) * 4, 4);
            memcpy(q[i] + 16 * (size_t)b, c, 16);
        }
        for (int g = 0; g < ng; g++) {
            d[i * ng + g] = w->d[at + (size_t)g * R4];
            if (w->m) m[i * ng + g] = w->m[at + (size_t)g * R4];
        }
    }
    return (qmat){q[0], d, w->m ? m : NULL, R4X_TOK8_COLS / 2, w->cols, w->gs, ng, R4 * groups, NULL, 0};
}

ALWAYS TGT256 void dot_r4x_prompt(int kind, const qact *x, const qmat *w, int r0, int r1, float *out,
                                  size_t out_stride) {
    int tiled = 16 * x->ntile, real = tiled < x->ntok ? tiled : x->ntok;
    if (real < R4X_TOK8_MIN || w->cols > R4X_TOK8_COLS || w->ngroups > R4X_TOK8_COLS / QK) {
        dot_r4x(kind, x, w, r0, r1, out, out_stride);
        return;
    }
    uint8_t q[TOK8_ROWS][R4X_TOK8_COLS / 2] __attribute__((aligned(32)));
    uint16_t d[TOK8_ROWS * (R4X_TOK8_COLS / QK)], m[TOK8_ROWS * (R4X_TOK8_COLS / QK)];
    _Static_assert(TOK8_ROWS == 2 * R4, "tok8 takes two row groups at a time");
    const int G1 = (r1 + R4 - 1) / R4;
    for (int G = r0 / R4; G < G1; G += 2) {
        int groups = G1 - G < 2 ? G1 - G : 2, lo = 4 * G > r0 ? 4 * G : r0, hi = 4 * (G + groups) < r1 ? 4 * (G + groups) : r1;
        qmat rm = r4x_rowmajor(w, G, groups, q, d, m);
        tok8_rows(kind, x, &rm, (real + 7) / 8, lo - 4 * G, hi - 4 * G, out + 4 * (size_t)G, out_stride);
    }
    if (tiled < x->ntok) {
        qact left = rq4_qact_tail(x, tiled);
        dot_r4x(kind, &left, w, r0, r1, out + (size_t)tiled * out_stride, out_stride);
    }
}

static TGT256 void dot_q4s_r4_avx2(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_r4x_prompt(K_Q4S, x, w, r0, r1, out, out_stride);
}

static TGT256 void dot_q4a_r4_avx2(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_r4x_prompt(K_Q4A, x, w, r0, r1, out, out_stride);
}
