/* The body of one x86 kernel set, included by src/kernels_x86.c once per
 * instruction set (not a public header; not compiled on its own).
 *
 * The includer defines:
 *   SFX            name suffix of the set (avx2, avxvnni, avx512vnni)
 *   TGT            __attribute__((target(...))) of every function here
 *   V              int32 accumulator vector; v_zero()
 *   WB             weights of one step (BIG values) as the dot wants them
 *   BIG            values per step (32 or 64); when 64, also SMALL steps of 32
 *   ld_q4(p, sgn)  BIG nibbles at p (BIG/2 bytes) as unsigned bytes q (+8 if sgn)
 *   ld_q8(p)       BIG int8 at p
 *   dot_u(a, w, x)  a + sum of w*x, w from ld_q4 (unsigned 0..15), x int8
 *   dot_8(a, w, x)  a + sum of w*x, w from ld_q8
 *   Q8_OFF         what dot_8 adds to every weight (128 for vpdpbusd, else 0)
 *   (BIG == 64:) ld_q4_s / ld_q8_s / dot_u_s / dot_8_s: the same for 32 values
 *   reduce4(a,b,c,d) -> __m128i of the four horizontal sums; reduce1(a) -> int
 *
 * Integer part: one weight step is unpacked once and multiplied with up to
 * TILE tokens' activations, the group sums kept in V accumulators. Q4S nibbles
 * are taken as q + 8 (0..15) so the unsigned x signed byte products apply;
 * isum = dot - 8 * xs (xs = sum of the group's activations, from qact). Q8
 * with vpdpbusd likewise uses w + 128 and subtracts 128 * xs.
 *
 * Float part: exactly the contract of kernels.h, per token in group order,
 * with single-precision mul/add (no fma: see kernels_x86.c), so results are
 * bit-identical to kernels_scalar.
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

#ifndef X86_BODY_COMMON
#define X86_BODY_COMMON
enum { K_Q4S, K_Q4A, K_Q8 };
#define ALWAYS static inline __attribute__((always_inline))
#endif

/* Sum over values [off, off+len) of weight row wq for token row xr, added to a. */
ALWAYS TGT V FN(group_dot)(int kind, V a, const uint8_t *wq, const int8_t *xr, int off, int len) {
    int e = off, end = off + len;
    for (; e + BIG <= end; e += BIG) {
        if (kind == K_Q8) a = dot_8(a, ld_q8((const int8_t *)wq + e), xr + e);
        else a = dot_u(a, ld_q4(wq + e / 2, kind == K_Q4S), xr + e);
    }
#if BIG == 64
    if (e < end) { /* one step of 32 left */
        if (kind == K_Q8) a = dot_8_s(a, ld_q8_s((const int8_t *)wq + e), xr + e);
        else a = dot_u_s(a, ld_q4_s(wq + e / 2, kind == K_Q4S), xr + e);
    }
#endif
    return a;
}

/* The integer correction per group: dot - off * xs. */
ALWAYS int FN(offset_of)(int kind) { return kind == K_Q4S ? 8 : kind == K_Q8 ? Q8_OFF : 0; }

#if BIG == 64
/* 16 accumulators -> one vector, lane i = the horizontal sum of v[i] */
ALWAYS TGT __m512i FN(reduce16)(const __m512i *v) {
    __m512i p[8], q[4];
    for (int j = 0; j < 8; j++)
        p[j] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * j], v[2 * j + 1]),
                                _mm512_unpackhi_epi32(v[2 * j], v[2 * j + 1]));
    for (int j = 0; j < 4; j++) /* each 128-bit lane of q[j]: partial sums of v[4j .. 4j+3] */
        q[j] = _mm512_add_epi32(_mm512_unpacklo_epi64(p[2 * j], p[2 * j + 1]),
                                _mm512_unpackhi_epi64(p[2 * j], p[2 * j + 1]));
    __m512i r0 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[0], q[1], 0x88), _mm512_shuffle_i32x4(q[0], q[1], 0xDD));
    __m512i r1 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[2], q[3], 0x88), _mm512_shuffle_i32x4(q[2], q[3], 0xDD));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(r0, r1, 0x88), _mm512_shuffle_i32x4(r0, r1, 0xDD));
}

/* Group size 32: each 64-value step holds two groups, one per 256-bit half.
 * reduce8h: 8 such vectors -> 16 sums, lane i = the sum of half i (half 2j
 * = low half of v[j], 2j+1 = its high half). A tree of merges (two blends and
 * one shuffle each) leaves half h in lane bitreverse4(h); one permute fixes it. */
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

/* Group size 32: the exact int32 sums of 16 groups g0 .. g0+15 of one token row
 * (16 full groups), in group order. */
ALWAYS TGT __m512i FN(sums16_g32)(int kind, const uint8_t *wq, const int8_t *xr, int g0) {
    __m512i v[8];
    for (int j = 0; j < 8; j++) {
        int at = g0 * 32 + 64 * j;
        if (kind == K_Q8) v[j] = dot_8(v_zero(), ld_q8((const int8_t *)wq + at), xr + at);
        else v[j] = dot_u(v_zero(), ld_q4(wq + at / 2, kind == K_Q4S), xr + at);
    }
    return FN(reduce8h)(v);
}

/* Four tokens x four full groups g .. g+3 at a time (16 accumulators, one
 * reduction, the float part in the 16 lanes (token t, group g+k) = lane 4t+k),
 * then added to acc (lane t) in group order. Returns the first group left. */
ALWAYS TGT int FN(quad_groups)(int kind, const qact *x, const uint8_t *wq, const uint16_t *wd,
                                const uint16_t *wm, const int8_t *const *xr, const float *const *xd,
                                const int32_t *const *xs, __m128 *accp, int nfull) {
    const int gs = x->gs, off8 = FN(offset_of)(kind);
    __m128 acc = *accp;
    int g = 0;
    for (; g + 4 <= nfull; g += 4) {
        __m512i isum;
        if (gs == 32) { /* 8 steps of two groups: v[2t+p] = token t, groups g+2p, g+2p+1 */
            __m512i v[8];
            for (int p = 0; p < 2; p++) {
                int at = g * 32 + 64 * p;
                if (kind == K_Q8) {
                    WB w = ld_q8((const int8_t *)wq + at);
                    for (int t = 0; t < 4; t++) v[2 * t + p] = dot_8(v_zero(), w, xr[t] + at);
                } else {
                    WB w = ld_q4(wq + at / 2, kind == K_Q4S);
                    for (int t = 0; t < 4; t++) v[2 * t + p] = dot_u(v_zero(), w, xr[t] + at);
                }
            }
            isum = FN(reduce8h)(v); /* half 4t+k = token t, group g+k */
        } else {
        __m512i a[16];
        for (int i = 0; i < 16; i++) a[i] = v_zero();
        int o = g * gs, e = 0;
        for (; e + 64 <= gs; e += 64) {
            for (int k = 0; k < 4; k++) {
                int at = o + k * gs + e;
                if (kind == K_Q8) {
                    WB w = ld_q8((const int8_t *)wq + at);
                    for (int t = 0; t < 4; t++) a[4 * t + k] = dot_8(a[4 * t + k], w, xr[t] + at);
                } else {
                    WB w = ld_q4(wq + at / 2, kind == K_Q4S);
                    for (int t = 0; t < 4; t++) a[4 * t + k] = dot_u(a[4 * t + k], w, xr[t] + at);
                }
            }
        }
        if (e < gs)
            for (int k = 0; k < 4; k++)
                for (int t = 0; t < 4; t++)
                    a[4 * t + k] = FN(group_dot)(kind, a[4 * t + k], wq, xr[t], o + k * gs + e, 32);
        isum = FN(reduce16)(a);
        }
        __m512i s = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(xs[0] + g)));
        s = _mm512_inserti32x4(s, _mm_loadu_si128((const __m128i *)(xs[1] + g)), 1);
        s = _mm512_inserti32x4(s, _mm_loadu_si128((const __m128i *)(xs[2] + g)), 2);
        s = _mm512_inserti32x4(s, _mm_loadu_si128((const __m128i *)(xs[3] + g)), 3);
        if (off8) isum = _mm512_sub_epi32(isum, _mm512_slli_epi32(s, off8 == 8 ? 3 : 7));
        __m512 dx = _mm512_castps128_ps512(_mm_loadu_ps(xd[0] + g));
        dx = _mm512_insertf32x4(dx, _mm_loadu_ps(xd[1] + g), 1);
        dx = _mm512_insertf32x4(dx, _mm_loadu_ps(xd[2] + g), 2);
        dx = _mm512_insertf32x4(dx, _mm_loadu_ps(xd[3] + g), 3);
        __m512 d = _mm512_broadcast_f32x4(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(wd + g))));
        __m512 term = _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(isum));
        if (kind == K_Q4A) {
            __m512 m = _mm512_broadcast_f32x4(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(wm + g))));
            term = _mm512_add_ps(term, _mm512_mul_ps(_mm512_mul_ps(m, dx), _mm512_cvtepi32_ps(s)));
        }
        /* lane t of step k = lane 4t+k of term */
        for (int k = 0; k < 4; k++) {
            __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12),
                                           _mm512_set1_epi32(k));
            acc = _mm_add_ps(acc, _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, term)));
        }
    }
    *accp = acc;
    return g;
}
#endif

#if BIG == 32
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

/* Four tokens x two full groups g, g+1 at a time (8 accumulators, lane 2t+k =
 * token t, group g+k), one reduction and one float step for the 8, then added
 * to acc (lane t) in group order. Returns the first group left. */
ALWAYS TGT int FN(pair_groups)(int kind, const qact *x, const uint8_t *wq, const uint16_t *wd,
                                const uint16_t *wm, const int8_t *const *xr, const float *const *xd,
                                const int32_t *const *xs, __m128 *accp, int nfull) {
    const int gs = x->gs, off8 = FN(offset_of)(kind);
    __m128 acc = *accp;
    int g = 0;
    for (; g + 2 <= nfull; g += 2) {
        __m256i a[8];
        for (int i = 0; i < 8; i++) a[i] = v_zero();
        int o = g * gs;
        for (int e = 0; e < gs; e += 32) {
            for (int k = 0; k < 2; k++) {
                int at = o + k * gs + e;
                if (kind == K_Q8) {
                    WB w = ld_q8((const int8_t *)wq + at);
                    for (int t = 0; t < 4; t++) a[2 * t + k] = dot_8(a[2 * t + k], w, xr[t] + at);
                } else {
                    WB w = ld_q4(wq + at / 2, kind == K_Q4S);
                    for (int t = 0; t < 4; t++) a[2 * t + k] = dot_u(a[2 * t + k], w, xr[t] + at);
                }
            }
        }
        __m256i isum = FN(reduce8)(a);
        __m256i s = _mm256_set_m128i(
            _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(xs[2] + g)), _mm_loadl_epi64((const __m128i *)(xs[3] + g))),
            _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(xs[0] + g)), _mm_loadl_epi64((const __m128i *)(xs[1] + g))));
        if (off8) isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(s, off8 == 8 ? 3 : 7));
        __m256 dx = _mm256_castsi256_ps(_mm256_set_m128i(
            _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(xd[2] + g)), _mm_loadl_epi64((const __m128i *)(xd[3] + g))),
            _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(xd[0] + g)), _mm_loadl_epi64((const __m128i *)(xd[1] + g)))));
        uint32_t dpair, mpair;
        memcpy(&dpair, wd + g, 4);
        __m128 d4 = _mm_cvtph_ps(_mm_set1_epi32((int)dpair)); /* d[g], d[g+1], d[g], d[g+1] */
        __m256 term = _mm256_mul_ps(_mm256_mul_ps(_mm256_set_m128(d4, d4), dx), _mm256_cvtepi32_ps(isum));
        if (kind == K_Q4A) {
            memcpy(&mpair, wm + g, 4);
            __m128 m4 = _mm_cvtph_ps(_mm_set1_epi32((int)mpair));
            term = _mm256_add_ps(term, _mm256_mul_ps(_mm256_mul_ps(_mm256_set_m128(m4, m4), dx), _mm256_cvtepi32_ps(s)));
        }
        /* lane t of group g (then g+1) = lane 2t (2t+1) of term */
        __m256 even = _mm256_permutevar8x32_ps(term, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
        __m256 odd = _mm256_permutevar8x32_ps(term, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7));
        acc = _mm_add_ps(acc, _mm256_castps256_ps128(even));
        acc = _mm_add_ps(acc, _mm256_castps256_ps128(odd));
    }
    *accp = acc;
    return g;
}
#endif

/* Tokens t0 .. t0+T-1 (T = 2..4), all groups. Each weight step is unpacked once
 * for the T tokens; the float part runs in the lanes of one __m128. */
ALWAYS TGT void FN(tile_tokens)(int kind, const int T, const qact *x, const uint8_t *wq,
                                 const uint16_t *wd, const uint16_t *wm, float *out,
                                 size_t out_stride, int t0) {
    const int n = x->n, gs = x->gs, ng = x->ngroups, off8 = FN(offset_of)(kind);
    const int8_t *xr[4];
    const float *xd[4];
    const int32_t *xs[4];
    for (int t = 0; t < 4; t++) { /* lanes past T repeat token t0 (valid memory, unused) */
        size_t row = (size_t)(t0 + (t < T ? t : 0));
        xr[t] = x->q + row * (size_t)n;
        xd[t] = x->d + row * (size_t)ng;
        xs[t] = x->s + row * (size_t)ng;
    }
    __m128 acc = _mm_setzero_ps();
    int g = 0;
#if BIG == 64
    if (T == 4) g = FN(quad_groups)(kind, x, wq, wd, wm, xr, xd, xs, &acc, ng - (ng * gs != n));
#else
    if (T == 4) g = FN(pair_groups)(kind, x, wq, wd, wm, xr, xd, xs, &acc, ng - (ng * gs != n));
#endif
    for (; g < ng; g++) {
        int off = g * gs, len = n - off < gs ? n - off : gs;
        V a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
        int e = off, end = off + len;
        for (; e + BIG <= end; e += BIG) {
            if (kind == K_Q8) {
                WB w = ld_q8((const int8_t *)wq + e);
                a0 = dot_8(a0, w, xr[0] + e);
                a1 = dot_8(a1, w, xr[1] + e);
                if (T > 2) a2 = dot_8(a2, w, xr[2] + e);
                if (T > 3) a3 = dot_8(a3, w, xr[3] + e);
            } else {
                WB w = ld_q4(wq + e / 2, kind == K_Q4S);
                a0 = dot_u(a0, w, xr[0] + e);
                a1 = dot_u(a1, w, xr[1] + e);
                if (T > 2) a2 = dot_u(a2, w, xr[2] + e);
                if (T > 3) a3 = dot_u(a3, w, xr[3] + e);
            }
        }
#if BIG == 64
        if (e < end) {
            a0 = FN(group_dot)(kind, a0, wq, xr[0], e, 32);
            a1 = FN(group_dot)(kind, a1, wq, xr[1], e, 32);
            if (T > 2) a2 = FN(group_dot)(kind, a2, wq, xr[2], e, 32);
            if (T > 3) a3 = FN(group_dot)(kind, a3, wq, xr[3], e, 32);
        }
#endif
        __m128i isum = reduce4(a0, a1, a2, a3);
        __m128i s = _mm_setr_epi32(xs[0][g], xs[1][g], xs[2][g], xs[3][g]);
        if (off8) isum = _mm_sub_epi32(isum, _mm_mullo_epi32(s, _mm_set1_epi32(off8)));
        __m128 dx = _mm_setr_ps(xd[0][g], xd[1][g], xd[2][g], xd[3][g]);
        __m128 term = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(_cvtsh_ss(wd[g])), dx), _mm_cvtepi32_ps(isum));
        if (kind == K_Q4A) {
            __m128 mterm = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(_cvtsh_ss(wm[g])), dx), _mm_cvtepi32_ps(s));
            term = _mm_add_ps(term, mterm);
        }
        acc = _mm_add_ps(acc, term);
    }
    float r[4];
    _mm_storeu_ps(r, acc);
    for (int t = 0; t < T; t++) out[(size_t)(t0 + t) * out_stride] = r[t];
}

/* One token t, all groups: four full groups at a time share one reduction and
 * one vector float step; the four terms are then added in group order. */
ALWAYS TGT void FN(one_token)(int kind, const qact *x, const uint8_t *wq, const uint16_t *wd,
                               const uint16_t *wm, float *out, int t) {
    const int n = x->n, gs = x->gs, ng = x->ngroups, off8 = FN(offset_of)(kind);
    const int8_t *xr = x->q + (size_t)t * (size_t)n;
    const float *xd = x->d + (size_t)t * (size_t)ng;
    const int32_t *xs = x->s + (size_t)t * (size_t)ng;
    int nfull = ng - (ng * gs != n); /* groups of full length (no division) */
    float acc = 0.0f;
    int g = 0;
#if BIG == 64
    if (gs == 32)
        for (; g + 16 <= nfull; g += 16) {
            __m512i isum = FN(sums16_g32)(kind, wq, xr, g);
            __m512i s = _mm512_loadu_si512((const void *)(xs + g));
            if (off8) isum = _mm512_sub_epi32(isum, _mm512_slli_epi32(s, off8 == 8 ? 3 : 7));
            __m512 dx = _mm512_loadu_ps(xd + g);
            __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wd + g)));
            __m512 term = _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(isum));
            if (kind == K_Q4A) {
                __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wm + g)));
                term = _mm512_add_ps(term, _mm512_mul_ps(_mm512_mul_ps(m, dx), _mm512_cvtepi32_ps(s)));
            }
            float r[16];
            _mm512_storeu_ps(r, term);
            for (int k = 0; k < 16; k++) acc += r[k]; /* in group order */
        }
#endif
    for (; g + 4 <= nfull; g += 4) {
        V a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
        int o0 = g * gs;
        int e = 0;
        for (; e + BIG <= gs; e += BIG) {
            if (kind == K_Q8) {
                const int8_t *w8 = (const int8_t *)wq + o0 + e;
                a0 = dot_8(a0, ld_q8(w8), xr + o0 + e);
                a1 = dot_8(a1, ld_q8(w8 + gs), xr + o0 + gs + e);
                a2 = dot_8(a2, ld_q8(w8 + 2 * gs), xr + o0 + 2 * gs + e);
                a3 = dot_8(a3, ld_q8(w8 + 3 * gs), xr + o0 + 3 * gs + e);
            } else {
                const uint8_t *w4 = wq + (o0 + e) / 2;
                int sg = kind == K_Q4S;
                a0 = dot_u(a0, ld_q4(w4, sg), xr + o0 + e);
                a1 = dot_u(a1, ld_q4(w4 + gs / 2, sg), xr + o0 + gs + e);
                a2 = dot_u(a2, ld_q4(w4 + gs, sg), xr + o0 + 2 * gs + e);
                a3 = dot_u(a3, ld_q4(w4 + 3 * gs / 2, sg), xr + o0 + 3 * gs + e);
            }
        }
#if BIG == 64
        if (e < gs) {
            a0 = FN(group_dot)(kind, a0, wq, xr, o0 + e, 32);
            a1 = FN(group_dot)(kind, a1, wq, xr, o0 + gs + e, 32);
            a2 = FN(group_dot)(kind, a2, wq, xr, o0 + 2 * gs + e, 32);
            a3 = FN(group_dot)(kind, a3, wq, xr, o0 + 3 * gs + e, 32);
        }
#endif
        __m128i isum = reduce4(a0, a1, a2, a3);
        __m128i s = _mm_loadu_si128((const __m128i *)(xs + g));
        if (off8) isum = _mm_sub_epi32(isum, _mm_mullo_epi32(s, _mm_set1_epi32(off8)));
        __m128 dx = _mm_loadu_ps(xd + g);
        __m128 d = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(wd + g)));
        __m128 term = _mm_mul_ps(_mm_mul_ps(d, dx), _mm_cvtepi32_ps(isum));
        if (kind == K_Q4A) {
            __m128 m = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(wm + g)));
            term = _mm_add_ps(term, _mm_mul_ps(_mm_mul_ps(m, dx), _mm_cvtepi32_ps(s)));
        }
        float r[4];
        _mm_storeu_ps(r, term);
        acc += r[0];
        acc += r[1];
        acc += r[2];
        acc += r[3];
    }
    for (; g < ng; g++) {
        int off = g * gs, len = n - off < gs ? n - off : gs;
        int32_t isum = reduce1(FN(group_dot)(kind, v_zero(), wq, xr, off, len)) - off8 * xs[g];
        float dx = xd[g];
        float term = (_cvtsh_ss(wd[g]) * dx) * (float)isum;
        if (kind == K_Q4A) term = term + (_cvtsh_ss(wm[g]) * dx) * (float)xs[g];
        acc += term;
    }
    *out = acc;
}

#include "kernels_body_entry.h"

#undef FN
