/* The body of the 256-bit x86 kernels, included once each by avx2.c and,
 * through x86_vnni256.h, avxvnni.c and avx512vnni_256.c (not a public
 * header; not compiled on its own). Its functions are static with plain
 * names: each including file is one kernel set's per-token kernels.
 *
 * The includer defines:
 *   TGT            __attribute__((target(...))) of every function here
 *   ld_q8(p)       32 int8 at p as dot_8 wants them
 *   dot_8(a, w, x)  a + sums of 4 products w*x per lane, w from ld_q8, x int8 at x
 *   Q8_OFF         what ld_q8 adds to every weight (128 for vpdpbusd, else 0)
 *   dot_u2(lo, xa, hi, xb): lo . (32 int8 at xa) + hi . (32 int8 at xb),
 *                  lo and hi unsigned nibbles, 4 + 4 products per 32-bit
 *                  lane, as a "part": sums that part_add adds lane by lane
 *                  (up to 4 parts) and part_widen(p, ones) makes int32 lanes of
 *                  (vpmaddubsw leaves 16-bit sums, widened only after the
 *                  reduction's adds); dot_u2_s the same on 128 bits
 *
 * Integer part: each block's exact int32 sum. Q4S nibbles are taken as q + 8
 * (0..15) so the unsigned x signed byte products apply; isum = dot - 8 * xs
 * (xs = the block's sum of activations, from qact). Q8 with vpdpbusd likewise
 * uses w + 128 and subtracts 128 * xs. One weight step is unpacked once and
 * dotted with every token of a tile; the per-lane partial sums of 8 (or 16)
 * blocks are reduced together by one tree of merges (blends and shuffles for
 * Q8, unpacks for int4). Int4 reads
 * the activations in nibble order (qact.qp): 128 values (AVX-512) or 64
 * (256 bits) unpack with one mask and one shift, and the reduction is 4 to 1
 * instead of 8 to 1. Q8 stays in value order (qact.q).
 *
 * Float part: exactly the contract of kernels.h, the 16 lanes of each token
 * in registers, its fmaf as vfmadd, so results are bit-identical to
 * rq4_kernels_scalar. Past the last block the terms are computed from zero
 * sums and zero activation scales, +0.0 or -0.0 by the sign of whatever
 * scale is loaded there; a lane can be -0.0 (its start, or terms of -0.0
 * only) and +0.0 would turn it into +0.0, so a step that covers fewer blocks
 * than lanes keeps the other lanes as they were (fma8's blend).
 */

/* One Q8 integer step of 32 values at value e of the row, for token row xr
 * (int4 goes through qact.qp, below). */
ALWAYS TGT __m256i step8(const uint8_t *wq, const int8_t *xr, int e) {
    return dot_8(_mm256_setzero_si256(), ld_q8((const int8_t *)wq + e), xr + e);
}

/* 8 accumulators -> one vector, lane i = the horizontal sum of v[i]: a tree of
 * merges (two blends and one shuffle each); the tree leaves input j in lane
 * bitreverse3(j), so inputs go in that order. */
#define MERGE8(a, b, imm, SHUF) _mm256_add_epi32(_mm256_blend_epi32((a), (b), (imm)), SHUF(_mm256_blend_epi32((b), (a), (imm))))
#define SWAP128_8(y) _mm256_permute2x128_si256((y), (y), 0x01)
#define SWAP64_8(y) _mm256_shuffle_epi32((y), 0x4E)
#define SWAP32_8(y) _mm256_shuffle_epi32((y), 0xB1)

ALWAYS TGT __m256i reduce8(const __m256i *v) {
    __m256i a0 = MERGE8(v[0], v[4], 0xF0, SWAP128_8), a1 = MERGE8(v[2], v[6], 0xF0, SWAP128_8);
    __m256i a2 = MERGE8(v[1], v[5], 0xF0, SWAP128_8), a3 = MERGE8(v[3], v[7], 0xF0, SWAP128_8);
    __m256i b0 = MERGE8(a0, a1, 0xCC, SWAP64_8), b1 = MERGE8(a2, a3, 0xCC, SWAP64_8);
    return MERGE8(b0, b1, 0xAA, SWAP32_8);
}

/* The contract's steps of 8 blocks on their lanes: lanes + (d * dx) * isum
 * [+ (m * dx) * xs] by fma; only the lanes where `valid` is all ones
 * change (valid NULL: all). */
ALWAYS TGT __m256 fma8(int kind, __m256 lanes, __m256 d8, __m256 m8, __m256 dx, __m256 isum, __m256 xs,
                       const __m256i *valid) {
    __m256 f = _mm256_fmadd_ps(_mm256_mul_ps(d8, dx), isum, lanes);
    if (kind == K_Q4A) f = _mm256_fmadd_ps(_mm256_mul_ps(m8, dx), xs, f);
    return valid ? _mm256_blendv_ps(lanes, f, _mm256_castsi256_ps(*valid)) : f;
}

/* lanes i < cnt of an 8-block step whose lane i is block idx[i] (mask8's
 * comparison, which the compiler then shares with the loads') */
ALWAYS TGT __m256i below_cnt(int cnt, __m256i idx) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), idx); }

/* The steps of 8 blocks b0.. (cnt of them) of one token on its lanes, isum
 * not yet corrected; d8, m8: the blocks' weight scales and minimums (scales8). */
ALWAYS TGT __m256 terms8s(int kind, __m256 lanes, __m256 d8, __m256 m8, int b0, int cnt, __m256i isum,
                          const float *xd, const int32_t *xs, int off) {
    __m256i s = load8i(xs + b0, cnt);
    __m256 dx = load8f(xd + b0, cnt);
    if (off) isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(s, off == 8 ? 3 : 7));
    __m256i valid = mask8(cnt);
    return fma8(kind, lanes, d8, m8, dx, _mm256_cvtepi32_ps(isum), _mm256_cvtepi32_ps(s), cnt < 8 ? &valid : NULL);
}

ALWAYS TGT __m256 terms8(int kind, __m256 lanes, const row_view *v, int b0, int cnt, __m256i isum, const float *xd,
                         const int32_t *xs, int off) {
    __m256 d8 = scales8(v, v->d, b0, cnt), m8 = kind == K_Q4A ? scales8(v, v->m, b0, cnt) : d8;
    return terms8s(kind, lanes, d8, m8, b0, cnt, isum, xd, xs, off);
}

/* ---- int4 rows against qp (rq4_permute_act's order) ----
 * 32 bytes of nibbles are 64 values: half a span of 128, or a whole span of
 * 64. A mask gives their even values (the low nibbles), a shift and a mask
 * their odd ones, each dotted with its part of the span in qp: int32 lane L
 * then holds 8 values of block L / 4, so one such "pair vector" holds two
 * blocks, the first in its low 128 bits and the second in its high ones, 4
 * partial sums each. Pair vector j of a span of 128 at value e: weight bytes
 * e/2 + 32j .., evens at qp[e + 32j ..], odds at qp[e + 64 + 32j ..]; of a
 * span of 64: evens at qp[e ..], odds at qp[e + 32 ..]; a span of 32 (one
 * block, 16 bytes) is the same on 128 bits with a zero high half. */

/* T tokens (1..4) of a qact as the int4 kernels read them, and the
 * kernels' constants (tok_consts). */
typedef struct token_rows {
    int T;                /* tokens */
    int nb;               /* blocks per token */
    const int8_t *xp[4];  /* each token's values in nibble order (qact.qp) */
    const float *xd[4];   /* each token's block scales */
    const int32_t *xs[4]; /* each token's block sums */
    __m256i mask, flip;   /* 0x0F and 0x88 in every byte */
    __m256i ones;         /* 1 in every 16-bit lane (part_widen) */
} token_rows;

/* The constants made opaque, so computed once per call: GCC would otherwise
 * make them again before every row (three instructions each). */
ALWAYS TGT void tok_consts(token_rows *x) {
    __m256i mask = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8((char)0x88), ones = _mm256_set1_epi16(1);
    __asm__("" : "+x"(mask), "+x"(flip), "+x"(ones));
    x->mask = mask;
    x->flip = flip;
    x->ones = ones;
}

/* the 64 (or 32) nibbles at p as unsigned bytes (Q4S: q + 8, from xor 8 on
 * both nibbles before the split) */
ALWAYS TGT void nib64(int kind, const token_rows *x, const uint8_t *p, __m256i *lo, __m256i *hi) {
    __m256i w = _mm256_loadu_si256((const __m256i *)p);
    if (kind == K_Q4S) w = _mm256_xor_si256(w, x->flip);
    *lo = _mm256_and_si256(w, x->mask);
    *hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), x->mask);
}

ALWAYS TGT void nib32(int kind, const token_rows *x, const uint8_t *p, __m128i *lo, __m128i *hi) {
    __m128i w = _mm_loadu_si128((const __m128i *)p), m = _mm256_castsi256_si128(x->mask);
    if (kind == K_Q4S) w = _mm_xor_si128(w, _mm256_castsi256_si128(x->flip));
    *lo = _mm_and_si128(w, m);
    *hi = _mm_and_si128(_mm_srli_epi16(w, 4), m);
}

/* The pair vectors of blocks b, b+1 (b even, b < nb) of the row for the
 * tokens, into p[t][j]; full: the pair known to lie in a span of 128
 * (b < nb & ~3). */
ALWAYS TGT void pair_q4(int kind, const token_rows *x, const uint8_t *wq, int b, int full, __m256i p[][4], int j) {
    const int T = x->T, nb = x->nb;
    const int8_t *const *xp = x->xp;
    const size_t e = (size_t)b * QK;
    const uint8_t *wp = wq + (size_t)b * (QK / 2);
    __m256i lo, hi;
    if (full || b < (nb & ~3)) {
        size_t xa = e - (size_t)(b & 2) * 16; /* the second half of a span: 32 values back */
        nib64(kind, x, wp, &lo, &hi);
        for (int t = 0; t < T; t++) p[t][j] = dot_u2(lo, xp[t] + xa, hi, xp[t] + xa + 64);
    } else if (nb - b >= 2) {
        nib64(kind, x, wp, &lo, &hi);
        for (int t = 0; t < T; t++) p[t][j] = dot_u2(lo, xp[t] + e, hi, xp[t] + e + 32);
    } else {
        __m128i l, h;
        nib32(kind, x, wp, &l, &h);
        for (int t = 0; t < T; t++) p[t][j] = _mm256_zextsi128_si256(dot_u2_s(l, xp[t] + e, h, xp[t] + e + 16));
    }
}

/* 4 pair vectors (blocks 2j | 2j+1 in p[j], parts) -> lane i = the sum of
 * block i. Each 32-bit lane of a pair vector holds one block's part, so the
 * merges interleave whole 32-bit lanes of two vectors (one unpack each for
 * the low and high lanes) and add: HALF4P by 32-bit lanes (blocks 0 2 0 2 |
 * 1 3 1 3 from p0, p1), merge4p the two results by 64-bit lanes (blocks 0 2
 * 4 6 | 1 3 5 7), widened; reduce4p then permutes them into block order.
 * Unpacks (two shuffles and an add) cost one instruction less per merge than
 * blends and a shuffle. */
#define HALF4P(p0, p1) part_add(_mm256_unpacklo_epi32((p0), (p1)), _mm256_unpackhi_epi32((p0), (p1)))
#define MERGE_ORDER 0, 2, 4, 6, 1, 3, 5, 7 /* lane L of merge4p's result: block MERGE_ORDER[L] */
#define MERGE_INVERSE 0, 4, 1, 5, 2, 6, 3, 7 /* lane i: the lane of merge4p's result with block i */
ALWAYS TGT __m256i merge4p(const token_rows *x, __m256i a, __m256i b) {
    return part_widen(part_add(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b)), x->ones);
}
ALWAYS TGT __m256i reduce4p(const token_rows *x, __m256i a, __m256i b) {
    return _mm256_permutevar8x32_epi32(merge4p(x, a, b), _mm256_setr_epi32(MERGE_INVERSE));
}

/* One pair vector (blocks 0 | 1, a part) -> the sums of blocks 0, 1 in lanes
 * 0, 4 (merge1p: merge order, as if from merge4p) or 0, 1 (reduce1p); the
 * other lanes: any int32 */
ALWAYS TGT __m256i merge1p(const token_rows *x, __m256i p) {
    __m256i c = part_widen(p, x->ones);
    c = _mm256_add_epi32(c, _mm256_shuffle_epi32(c, 0x4E));
    return _mm256_add_epi32(c, _mm256_shuffle_epi32(c, 0xB1));
}
ALWAYS TGT __m256i reduce1p(const token_rows *x, __m256i p) {
    return _mm256_permutevar8x32_epi32(merge1p(x, p), _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
}

/* T tokens (1..4) x 8 int4 blocks from b0 (cnt valid) of the row at wq,
 * whose weight scales (and minimums) are d8, m8: each pair vector unpacked
 * once for the T tokens, then per token one reduction and one float step
 * added to lanes[t][half]. */
ALWAYS TGT void tile8_q4(int kind, const token_rows *x, const uint8_t *wq, int b0, int cnt, int full, __m256 d8,
                         __m256 m8, __m256 lanes[][2], int half) {
    const int T = x->T;
    __m256i p[4][4], a[4];
    int off = offset_of(kind, Q8_OFF);
    if (cnt <= 2) { /* one pair: lanes past cnt take zero activation scales (terms8s), so any sum */
        pair_q4(kind, x, wq, b0, full, p, 0);
        for (int t = 0; t < T; t++)
            lanes[t][half] = terms8s(kind, lanes[t][half], d8, m8, b0, cnt, reduce1p(x, p[t][0]), x->xd[t], x->xs[t], off);
        return;
    }
    for (int j = 0; j < 4; j++) {
        if (2 * j < cnt) {
            pair_q4(kind, x, wq, b0 + 2 * j, full, p, j);
        } else {
            for (int t = 0; t < T; t++) p[t][j] = _mm256_setzero_si256();
        }
    }
    for (int t = 0; t < T; t++) a[t] = HALF4P(p[t][0], p[t][1]);
    for (int t = 0; t < T; t++) {
        __m256i isum = reduce4p(x, a[t], HALF4P(p[t][2], p[t][3]));
        lanes[t][half] = terms8s(kind, lanes[t][half], d8, m8, b0, cnt, isum, x->xd[t], x->xs[t], off);
    }
}

/* The weight scales (or minimums) h[group of b] of blocks b0 .. b0+7 (b0 a
 * multiple of 8) of a row, as tile8_q4 takes them. fast: the 8 scales from
 * the first group needed are readable, and the group size is 32 << sh: lane
 * i then takes the loaded scale i >> sh (idx). Else scales8's general way. */
ALWAYS TGT __m256 scales8_row(const row_view *v, const uint16_t *h, int b0, int cnt, int fast, __m256i idx) {
    if (!fast) return scales8(v, h, b0, cnt);
    return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + (b0 >> v->sh)))), idx);
}

/* The same for blocks b0 .. b0+15 (b0 a multiple of 16) into lo and hi:
 * from one load of 8 scales when they span the 16 blocks (groups of 64 or
 * more: lane i of hi takes scale (8 + i) >> sh, idx8) */
ALWAYS TGT void scales16_row(const row_view *v, const uint16_t *h, int b0, int fast, __m256i idx, __m256i idx8,
                             __m256 *lo, __m256 *hi) {
    if (!fast || v->sh == 0) {
        *lo = scales8_row(v, h, b0, 8, fast, idx);
        *hi = scales8_row(v, h, b0 + 8, 8, fast, idx);
        return;
    }
    __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + (b0 >> v->sh))));
    *lo = _mm256_permutevar8x32_ps(f, idx);
    *hi = _mm256_permutevar8x32_ps(f, idx8);
}

/* int4, T tokens (1..4) from t0, rows r0 .. r1: 16 blocks per pass
 * (lanes[t][0]: lanes 0-7, lanes[t][1]: 8-15). What does not depend on the
 * row (the tokens, the scale indices, which rows may load their scales 8 at
 * a time) is worked out once per call: decoding runs this for every row of
 * a matrix, most of them a few blocks long. */
ALWAYS TGT void rows_q4(int kind, const int T, const qact *x, const qmat *w, int r0, int r1, float *out,
                        size_t out_stride, int t0) {
    const int nb = x->nb;
    token_rows tok;
    tok.T = T;
    tok.nb = nb;
    tok_consts(&tok);
    for (int t = 0; t < T; t++) {
        size_t row = (size_t)(t0 + t);
        tok.xp[t] = x->qp + row * (size_t)x->n;
        tok.xd[t] = x->d + row * (size_t)nb;
        tok.xs[t] = x->s + row * (size_t)nb;
    }
    row_view v;
    row_of(&v, w, r0, kind);
    /* a row reads its scales 8 at a time from group b0 >> sh, b0 <= nb - 1:
     * readable while fast_groups scales remain from the row's first on */
    const int fast_groups = v.sh < 0 ? INT32_MAX : ((nb - 1) >> v.sh) + 8;
    const __m128i sh = _mm_cvtsi32_si128(v.sh);
    const __m256i idx = _mm256_srl_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), sh);
    const __m256i idx8 = _mm256_srl_epi32(_mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15), sh);
    const int left = nb % 16, whole = nb - left;
    for (int r = r0; r < r1; r++) {
        const int fast = fast_groups <= v.avail;
        __m256 lanes[4][2];
        for (int t = 0; t < T; t++) lanes[t][0] = lanes[t][1] = _mm256_set1_ps(-0.0f);
        /* halves written out: a loop over them would keep the lanes in memory */
        for (int b0 = 0; b0 < whole; b0 += 16) {
            __m256 d8, e8, m8, n8;
            scales16_row(&v, v.d, b0, fast, idx, idx8, &d8, &e8);
            if (kind == K_Q4A) scales16_row(&v, v.m, b0, fast, idx, idx8, &m8, &n8);
            else m8 = d8, n8 = e8;
            tile8_q4(kind, &tok, v.q, b0, 8, 1, d8, m8, lanes, 0);
            tile8_q4(kind, &tok, v.q, b0 + 8, 8, 1, e8, n8, lanes, 1);
        }
        if (left) {
            int cnt = left < 8 ? left : 8;
            __m256 d8 = scales8_row(&v, v.d, whole, cnt, fast, idx);
            __m256 m8 = kind == K_Q4A ? scales8_row(&v, v.m, whole, cnt, fast, idx) : d8;
            tile8_q4(kind, &tok, v.q, whole, cnt, 0, d8, m8, lanes, 0);
        }
        if (left > 8) {
            __m256 d8 = scales8_row(&v, v.d, whole + 8, left - 8, fast, idx);
            __m256 m8 = kind == K_Q4A ? scales8_row(&v, v.m, whole + 8, left - 8, fast, idx) : d8;
            tile8_q4(kind, &tok, v.q, whole + 8, left - 8, 0, d8, m8, lanes, 1);
        }
        for (int t = 0; t < T; t++) out[(size_t)(t0 + t) * out_stride + (size_t)r] = tree16(lanes[t][0], lanes[t][1]);
        v.q += w->row_bytes;
        v.d += v.ng;
        if (kind == K_Q4A) v.m += v.ng;
        v.avail -= v.ng;
    }
}

/* ---- int4, one token (decoding) ----
 * reduce4p's last step, a permute of the block sums into block order, is left
 * out: the sums stay in merge order, and what they meet is put in that order
 * instead: the weight scales by the index of the permute that spreads them
 * (free), the token's activation scales and sums once per call (token1). The
 * contract's 16 lanes are then held in merge order in both halves, and
 * tree16m adds the same pairs as its final tree. The token is prepared
 * ROW1_BLOCKS blocks at a time; a longer row is walked in windows of that
 * many blocks, ROW1_ROWS rows per window, their lanes kept in between. */
#define ROW1_BLOCKS 1024 /* a multiple of 16; 8 KiB of token1 */
#define ROW1_ROWS 32

/* One window of the token in merge order, zero past the row's end: per 8
 * blocks the activation scales and (Q4S) 8 x the block sums, to subtract
 * from the q + 8 products, or (Q4A) the block sums as floats. */
typedef struct token1 {
    __m256 dx[ROW1_BLOCKS / 8];
    __m256i cs[ROW1_BLOCKS / 8];
} token1;

ALWAYS TGT void token1_fill(int kind, token1 *tk, const float *xd, const int32_t *xs, int b0, int nb) {
    const __m256i order = _mm256_setr_epi32(MERGE_ORDER);
    for (int g = 0; g < ROW1_BLOCKS / 8 && b0 + 8 * g < nb; g++) {
        int b = b0 + 8 * g, cnt = nb - b < 8 ? nb - b : 8;
        tk->dx[g] = _mm256_permutevar8x32_ps(load8f(xd + b, cnt), order);
        __m256i s = _mm256_permutevar8x32_epi32(load8i(xs + b, cnt), order);
        tk->cs[g] = kind == K_Q4S ? _mm256_slli_epi32(s, 3) : _mm256_castps_si256(_mm256_cvtepi32_ps(s));
    }
}

/* The sums of blocks b0 .. b0+7 (cnt of them) of the row at wq, merge order */
ALWAYS TGT __m256i sums8m(int kind, const token_rows *tok, const uint8_t *wq, int b0, int cnt, int full) {
    __m256i p[1][4];
    if (cnt <= 2) { /* lanes past cnt meet zero activation scales (token1), so any sum */
        pair_q4(kind, tok, wq, b0, full, p, 0);
        return merge1p(tok, p[0][0]);
    }
    for (int j = 0; j < 4; j++) {
        if (2 * j < cnt) pair_q4(kind, tok, wq, b0 + 2 * j, full, p, j);
        else p[0][j] = _mm256_setzero_si256();
    }
    return merge4p(tok, HALF4P(p[0][0], p[0][1]), HALF4P(p[0][2], p[0][3]));
}

/* The steps of 8 blocks (cnt of them), group g of the window (d8, m8 in
 * merge order), on their lanes; the lanes past cnt kept by a comparison
 * against cnt - 1 (the form for which GCC emits the fewest instructions in
 * rows1_q4's tail) */
ALWAYS TGT __m256 terms8m(int kind, __m256 lanes, __m256 d8, __m256 m8, __m256i isum, const token1 *tk, int g,
                          int cnt) {
    if (kind == K_Q4S) isum = _mm256_sub_epi32(isum, tk->cs[g]);
    __m256 f = fma8(kind, lanes, d8, m8, tk->dx[g], _mm256_cvtepi32_ps(isum), _mm256_castsi256_ps(tk->cs[g]), NULL);
    if (cnt == 8) return f;
    __m256i past = _mm256_cmpgt_epi32(_mm256_setr_epi32(MERGE_ORDER), _mm256_set1_epi32(cnt - 1));
    return _mm256_blendv_ps(f, lanes, _mm256_castsi256_ps(past));
}

/* The weight scales (or minimums) of blocks b0 .. b0+7 (b0 .. b0+15 into lo,
 * hi) of a row in merge order: fast, by the permutes' indices (oidx, oidx8:
 * scales8_row's idx, idx8 taken in merge order), else reordered. */
ALWAYS TGT __m256 scales8m(const row_view *v, const uint16_t *h, int b0, int cnt, int fast, __m256i oidx) {
    if (fast) return scales8_row(v, h, b0, cnt, 1, oidx);
    return _mm256_permutevar8x32_ps(scales8(v, h, b0, cnt), _mm256_setr_epi32(MERGE_ORDER));
}

ALWAYS TGT void scales16m(const row_view *v, const uint16_t *h, int b0, int fast, __m256i oidx, __m256i oidx8,
                          __m256 *lo, __m256 *hi) {
    if (fast) {
        scales16_row(v, h, b0, 1, oidx, oidx8, lo, hi);
        return;
    }
    *lo = scales8m(v, h, b0, 8, 0, oidx);
    *hi = scales8m(v, h, b0 + 8, 8, 0, oidx);
}

/* The contract's final tree over 16 lanes held in merge order (lane L of
 * each half is lane MERGE_ORDER[L] of its 8): i + (i+8), then i + (i+4) two
 * positions apart, i + (i+2) at neighbouring positions, 0 + 1 at positions 0
 * and 4. */
ALWAYS TGT float tree16m(__m256 lo, __m256 hi) {
    __m256 a = _mm256_add_ps(lo, hi);
    a = _mm256_add_ps(a, _mm256_permute_ps(a, 0x4E));
    a = _mm256_add_ps(a, _mm256_permute_ps(a, 0xB1));
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)));
}

/* The whole steps of 16 blocks [wb0, whole) of the row v (window group g
 * from 0) on lo, hi; fast: scales16m's */
ALWAYS TGT void steps16m(int kind, const token_rows *tok, const row_view *v, const token1 *tk, int wb0, int whole,
                         int fast, int touch, const uint8_t *wend, __m256i oidx, __m256i oidx8, __m256 *lo,
                         __m256 *hi) {
    for (int b0 = wb0, g = 0; b0 < whole; b0 += 16, g += 2) {
        __m256 d8, e8, m8, n8;
        prefetch_step(v->q + (size_t)b0 * (QK / 2), 16 * (QK / 2));
        if (touch) touch_next_page(v->q + (size_t)b0 * (QK / 2), 16 * (QK / 2), wend);
        scales16m(v, v->d, b0, fast, oidx, oidx8, &d8, &e8);
        if (kind == K_Q4A) scales16m(v, v->m, b0, fast, oidx, oidx8, &m8, &n8);
        else m8 = d8, n8 = e8;
        *lo = terms8m(kind, *lo, d8, m8, sums8m(kind, tok, v->q, b0, 8, 1), tk, g, 8);
        *hi = terms8m(kind, *hi, e8, n8, sums8m(kind, tok, v->q, b0 + 8, 8, 1), tk, g + 1, 8);
    }
}

/* What rows1_q4 works out once per call, for window1 */
typedef struct row1_consts {
    int fast_groups;    /* scales a row needs readable from its first to load them the fast way */
    __m256i oidx, oidx8; /* scales8_row's indices in merge order */
    const uint8_t *wend; /* the end of the matrix's weights (touch_next_page) */
} row1_consts;

/* Row r (its view v) over the window of blocks [wb0, wb1); out: the token's
 * outputs; kept: the lanes of rows ra.. between windows. FAST: the row loads
 * its scales the fast way (else it is asked); TOUCH: touch_next_page. Both
 * are constants at each call, so the common case (fast scales, 2 MB pages)
 * is a loop of its own without their branches. */
ALWAYS TGT void row1(int kind, const token_rows *tok, const token1 *tk, const row1_consts *c, const row_view *v,
                     int r, int ra, int wb0, int wb1, __m256 (*kept)[2], float *out, const int FAST,
                     const int TOUCH) {
    const int nb = tok->nb, whole = wb0 + (wb1 - wb0) / 16 * 16;
    const int fast = FAST || c->fast_groups <= v->avail;
    __m256 lo = _mm256_set1_ps(-0.0f), hi = lo;
    if (wb0 > 0) lo = kept[r - ra][0], hi = kept[r - ra][1];
    steps16m(kind, tok, v, tk, wb0, whole, fast, TOUCH, c->wend, c->oidx, c->oidx8, &lo, &hi);
    if (whole < wb1) { /* the row's last blocks */
        int left = wb1 - whole, cnt = left < 8 ? left : 8, g = (whole - wb0) >> 3;
        prefetch_ahead(v->q + (size_t)whole * (QK / 2), (size_t)left * (QK / 2));
        __m256 d8 = scales8m(v, v->d, whole, cnt, fast, c->oidx);
        __m256 m8 = kind == K_Q4A ? scales8m(v, v->m, whole, cnt, fast, c->oidx) : d8;
        lo = terms8m(kind, lo, d8, m8, sums8m(kind, tok, v->q, whole, cnt, 0), tk, g, cnt);
        if (left > 8) {
            d8 = scales8m(v, v->d, whole + 8, left - 8, fast, c->oidx);
            m8 = kind == K_Q4A ? scales8m(v, v->m, whole + 8, left - 8, fast, c->oidx) : d8;
            hi = terms8m(kind, hi, d8, m8, sums8m(kind, tok, v->q, whole + 8, left - 8, 0), tk, g + 1, left - 8);
        }
    }
    if (wb1 == nb) out[r] = tree16m(lo, hi);
    else kept[r - ra][0] = lo, kept[r - ra][1] = hi;
}

/* Rows ra .. rb over the window [wb0, wb1), as row1 (FAST, TOUCH: row1's),
 * read as row_streams runs of consecutive rows (x86.h) */
ALWAYS TGT void window1(int kind, const token_rows *tok, const token1 *tk, const row1_consts *c, const qmat *w,
                        int ra, int rb, int wb0, int wb1, __m256 (*kept)[2], float *out, const int FAST,
                        const int TOUCH) {
    const int run = stream_run(ra, rb, row_streams(w->touch_pages));
    for (int i = 0; i < run; i++)
        for (int r = ra + i; r < rb; r += run) {
            row_view v;
            row_of(&v, w, r, kind);
            row1(kind, tok, tk, c, &v, r, ra, wb0, wb1, kept, out, FAST, TOUCH);
        }
}

/* int4, token t0 of rows r0 .. r1 */
ALWAYS TGT void rows1_q4(int kind, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride,
                         int t0) {
    const int nb = x->nb;
    token_rows tok = {.T = 1, .nb = nb, .xp = {x->qp + (size_t)t0 * (size_t)x->n}};
    tok_consts(&tok);
    const float *xd = x->d + (size_t)t0 * (size_t)nb;
    const int32_t *xs = x->s + (size_t)t0 * (size_t)nb;
    row_view v;
    row_of(&v, w, r0, kind);
    row1_consts c;
    c.fast_groups = v.sh < 0 ? INT32_MAX : ((nb - 1) >> v.sh) + 8; /* as in rows_q4 */
    const __m128i sh = _mm_cvtsi32_si128(v.sh);
    c.oidx = _mm256_srl_epi32(_mm256_setr_epi32(MERGE_ORDER), sh);
    c.oidx8 = _mm256_srl_epi32(_mm256_add_epi32(_mm256_setr_epi32(MERGE_ORDER), _mm256_set1_epi32(8)), sh);
    c.wend = w->q + (size_t)(w->rows - 1) * w->row_bytes + (size_t)nb * (QK / 2);
    /* the rows before rslow have fast_groups scales from their first on */
    const int rslow = v.sh < 0 ? r0 : w->rows - (c.fast_groups + v.ng - 1) / v.ng + 1;
    const int step = nb <= ROW1_BLOCKS ? r1 - r0 : ROW1_ROWS; /* one window: no lanes kept */
    const int touch = w->touch_pages && nb % 16 == 0; /* rows of whole steps: touch_next_page */
    token1 tk;
    __m256 kept[ROW1_ROWS][2];
    float *o = out + (size_t)t0 * out_stride;
    for (int ra = r0; ra < r1; ra += step) {
        const int rb = r1 - ra < step ? r1 : ra + step, rm = rslow < ra ? ra : rslow > rb ? rb : rslow;
        for (int wb0 = 0; wb0 < nb; wb0 += ROW1_BLOCKS) {
            const int wb1 = nb - wb0 < ROW1_BLOCKS ? nb : wb0 + ROW1_BLOCKS;
            token1_fill(kind, &tk, xd, xs, wb0, nb);
            if (touch) {
                window1(kind, &tok, &tk, &c, w, ra, rb, wb0, wb1, kept, o, 0, 1);
            } else {
                window1(kind, &tok, &tk, &c, w, ra, rm, wb0, wb1, kept, o, 1, 0);
                window1(kind, &tok, &tk, &c, w, rm, rb, wb0, wb1, kept + (rm - ra), o, 0, 0);
            }
        }
    }
}

/* Q8, one token, 8 blocks per reduction; the 16 lanes as two registers. */
ALWAYS TGT __m256 chunk8(int kind, const row_view *v, const int8_t *xr, const float *xd, const int32_t *xs,
                              int b0, int cnt, __m256 lanes) {
    __m256i p[8];
    for (int k = 0; k < 8; k++) p[k] = k < cnt ? step8(v->q, xr, (b0 + k) * QK) : _mm256_setzero_si256();
    return terms8(kind, lanes, v, b0, cnt, reduce8(p), xd, xs, offset_of(kind, Q8_OFF));
}

/* Q8, token t of row r */
ALWAYS TGT void one_token_q8(int kind, const qact *x, const qmat *w, int r, float *out, size_t out_stride, int t) {
    row_view v;
    row_of(&v, w, r, kind);
    const int nb = x->nb;
    const int8_t *xr = x->q + (size_t)t * (size_t)x->n;
    const float *xd = x->d + (size_t)t * (size_t)nb;
    const int32_t *xs = x->s + (size_t)t * (size_t)nb;
    __m256 lo = _mm256_set1_ps(-0.0f), hi = lo; /* lanes 0-7, 8-15 */
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16) {
        prefetch_step(v.q + (size_t)b0 * QK, 16 * QK);
        lo = chunk8(kind, &v, xr, xd, xs, b0, 8, lo);
        hi = chunk8(kind, &v, xr, xd, xs, b0 + 8, 8, hi);
    }
    if (b0 < nb) {
        int left = nb - b0;
        prefetch_ahead(v.q + (size_t)b0 * QK, (size_t)left * QK);
        lo = chunk8(kind, &v, xr, xd, xs, b0, left < 8 ? left : 8, lo);
        if (left > 8) hi = chunk8(kind, &v, xr, xd, xs, b0 + 8, left - 8, hi);
    }
    out[(size_t)t * out_stride + (size_t)r] = tree16(lo, hi);
}

/* Q8, two tokens A, B x 4 blocks from b0 (cnt valid): each block loaded once
 * for both, one reduction (lanes 0-3 A's blocks, 4-7 B's), one float step on
 * acc. */
ALWAYS TGT __m256 pair_chunk(int kind, __m256 acc, const row_view *v, const int8_t *xra, const int8_t *xrb,
                                  const float *xda, const float *xdb, const int32_t *xsa, const int32_t *xsb,
                                  int b0, int cnt) {
    __m256i p[8];
    for (int k = 0; k < 4; k++) {
        int e = (b0 + k) * QK;
        p[k] = p[4 + k] = _mm256_setzero_si256();
        if (k >= cnt) continue;
        __m256i wv = ld_q8((const int8_t *)v->q + e);
        p[k] = dot_8(_mm256_setzero_si256(), wv, xra + e);
        p[4 + k] = dot_8(_mm256_setzero_si256(), wv, xrb + e);
    }
    __m256i isum = reduce8(p);
    __m256i s = _mm256_set_m128i(load4i(xsb + b0, cnt), load4i(xsa + b0, cnt));
    __m256 dx = _mm256_set_m128(load4f(xdb + b0, cnt), load4f(xda + b0, cnt));
    int off = offset_of(kind, Q8_OFF);
    if (off) isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(s, off == 8 ? 3 : 7));
    __m256 d4 = scales8(v, v->d, b0, cnt);
    d4 = _mm256_permute2f128_ps(d4, d4, 0);
    __m256i valid = below_cnt(cnt, _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3));
    return fma8(kind, acc, d4, d4, dx, _mm256_cvtepi32_ps(isum), dx, cnt < 4 ? &valid : NULL);
}

/* Q8, tokens t0 .. t0+T-1 (T = 2..4) of row r, two at a time (16
 * accumulators would not fit 16 registers): per pair, lanes 4q .. 4q+3 of its
 * two tokens in acc[q] (the first token in the low half). */
ALWAYS TGT void tile_tokens_q8(int kind, const int T, const qact *x, const qmat *w, int r, float *out,
                               size_t out_stride, int t0) {
    row_view v;
    row_of(&v, w, r, kind);
    const int nb = x->nb;
    for (int a = 0; a < T; a += 2) {
        int b = a + 1 < T ? a + 1 : a; /* an odd T: the lone token twice (its copy unused) */
        const int8_t *xra = x->q + (size_t)(t0 + a) * (size_t)x->n, *xrb = x->q + (size_t)(t0 + b) * (size_t)x->n;
        const float *xda = x->d + (size_t)(t0 + a) * (size_t)nb, *xdb = x->d + (size_t)(t0 + b) * (size_t)nb;
        const int32_t *xsa = x->s + (size_t)(t0 + a) * (size_t)nb, *xsb = x->s + (size_t)(t0 + b) * (size_t)nb;
        __m256 acc[4] = {_mm256_set1_ps(-0.0f), _mm256_set1_ps(-0.0f), _mm256_set1_ps(-0.0f), _mm256_set1_ps(-0.0f)};
        int b0 = 0;
        for (; b0 + 16 <= nb; b0 += 16)
            for (int q = 0; q < 4; q++)
                acc[q] = pair_chunk(kind, acc[q], &v, xra, xrb, xda, xdb, xsa, xsb, b0 + 4 * q, 4);
        for (int q = 0; b0 + 4 * q < nb; q++) {
            int left = nb - b0 - 4 * q;
            acc[q] = pair_chunk(kind, acc[q], &v, xra, xrb, xda, xdb, xsa, xsb, b0 + 4 * q, left < 4 ? left : 4);
        }
        out[(size_t)(t0 + a) * out_stride + (size_t)r] =
            tree16(_mm256_permute2f128_ps(acc[0], acc[1], 0x20), _mm256_permute2f128_ps(acc[2], acc[3], 0x20));
        if (a + 1 < T)
            out[(size_t)(t0 + a + 1) * out_stride + (size_t)r] =
                tree16(_mm256_permute2f128_ps(acc[0], acc[1], 0x31), _mm256_permute2f128_ps(acc[2], acc[3], 0x31));
    }
}

/* Tokens t0 .. t0+T-1 (T = 1..4) of rows r0 .. r1 (simd_entry.h) */
ALWAYS TGT void rows_tokens(int kind, const int T, const qact *x, const qmat *w, int r0, int r1, float *out,
                            size_t out_stride, int t0) {
    if (kind != K_Q8) {
        if (T == 1) rows1_q4(kind, x, w, r0, r1, out, out_stride, t0);
        else rows_q4(kind, T, x, w, r0, r1, out, out_stride, t0);
        return;
    }
    const int run = stream_run(r0, r1, row_streams(w->touch_pages));
    for (int i = 0; i < run; i++)
        for (int r = r0 + i; r < r1; r += run) {
            if (T == 1) one_token_q8(kind, x, w, r, out, out_stride, t0);
            else tile_tokens_q8(kind, T, x, w, r, out, out_stride, t0);
        }
}

#include "simd_entry.h"
