/* The kernels of the interleaved types (Q4S_R4, Q4A_R4; kernels.h) shared by
 * the two aarch64 kernel sets (included by neon.c and neon_dotprod.c after
 * arm_body.h; not compiled alone). Rows are in the lanes: one float32x4 holds
 * lane j of kernels.h's contract for the 4 rows of a group, so a block's
 * step for 4 rows is one vector: fma(d4 * dx, isum4, lane) [then fma(m4 * dx,
 * xs, lane)].
 *
 * The includer defines, for the 64 bytes of one interleaved block:
 *   r4block r4_unpack(kind, p)   its 4 chunk vectors as lo[k] (low nibbles)
 *       and hi[k] (high nibbles), int8 (Q4S perhaps times 16)
 *   int32x4_t r4_dot(kind, w, xe, xo)   the 4 rows' block sums (as isum_f32
 *       scales them) against the block's even (16 bytes at xe) and odd (at
 *       xo) activations in nibble order: chunk k pairs with bytes 4k..4k+3
 *       of each
 *   int32x4_t r4_dot_bytes(kind, p, xe, xo)   the same from the packed bytes,
 *       each chunk unpacked just before its products (few live registers:
 *       decoding keeps 16 lane vectors live besides)
 *   int r4_decode_whole(kind, x, w, G, t, v)   decoding's fast path: 1
 *       and the contract's result for row group G and token t in v (lane i =
 *       row 4G+i) when it takes the row's shape, else 0 (r4_decode then runs
 *       r4_steps_at and the blocks left one at a time)
 * and R4_DECODE_ROUNDS: 1 to take a decoding step's float work 4 blocks at a
 * time in rounds of independent operations, 0 to take it block by block
 * (r4_steps_at).
 *
 * Decoding walks the blocks in order, the 16 lane vectors of one row group in
 * registers, 16 blocks per step of r4_steps when the group size allows.
 * Prompts walk them lane by lane (b = j, j + 16, ...: one float vector per
 * token accumulates a whole lane, in block order), R4_TOKENS tokens per step,
 * so each unpacked block serves them all.
 */

typedef struct r4block {
    int8x16_t lo[4], hi[4];
} r4block;

ALWAYS r4block r4_unpack(int kind, const uint8_t *p);
ALWAYS int32x4_t r4_dot(int kind, const r4block *w, const int8_t *xe, const int8_t *xo);
ALWAYS int32x4_t r4_dot_bytes(int kind, const uint8_t *p, const int8_t *xe, const int8_t *xo);
ALWAYS int r4_decode_whole(int kind, const qact *x, const qmat *w, int G, int t, float32x4_t *v);

#define R4_TOKENS 8 /* tokens per prompt step: 8 independent sdot chains per block */

/* The weight groups 16 blocks span when groups of bpg blocks divide 16 (a
 * prompt's lane walk steps 16 blocks at a time), else 0: then a running
 * count steps, still without division */
#define R4_GROUP_STEP(bpg) (16 % (bpg) == 0 ? 16 / (bpg) : 0)

/* The 4 scales of weight group g of row group G */
ALWAYS float32x4_t r4_scales(const uint16_t *h, const qmat *w, int G, int g) {
    return f16x4(h + ((size_t)G * (size_t)w->ngroups + (size_t)g) * R4);
}

/* Lane f after the step of block b of row group G for token t: w unpacked,
 * d4 and m4 its scales */
ALWAYS float32x4_t r4_term(int kind, float32x4_t f, const qact *x, const r4block *w, int b, int t, float32x4_t d4,
                           float32x4_t m4) {
    const int nb = x->nb;
    size_t half, at = (size_t)t * (size_t)x->n + qp_block_at(b, nb, &half);
    const int8_t *xe = x->qp + at, *xo = xe + half;
    float xd = x->d[(size_t)t * (size_t)nb + (size_t)b];
    f = vfmaq_f32(f, vmulq_n_f32(d4, xd), isum_f32(kind, r4_dot(kind, w, xe, xo)));
    if (kind == K_Q4A) f = vfmaq_n_f32(f, vmulq_n_f32(m4, xd), (float)x->s[(size_t)t * (size_t)nb + (size_t)b]);
    return f;
}

/* kernels.h's final tree over a row group's 16 lane vectors (overwrites them) */
ALWAYS float32x4_t r4_tree(float32x4_t *L) {
    UNROLL
    for (int wd = 8; wd > 0; wd /= 2)
        UNROLL
        for (int j = 0; j < wd; j++) L[j] = vaddq_f32(L[j], L[j + wd]);
    return L[0];
}

/* Rows [r0, r1) of row group G, token t's outputs from v (lane i = row 4G+i) */
ALWAYS void r4_store(float32x4_t v, int G, int r0, int r1, float *out) {
    if (4 * G >= r0 && 4 * G + R4 <= r1) {
        vst1q_f32(out + 4 * G, v);
        return;
    }
    float f[R4];
    vst1q_f32(f, v);
    for (int i = 0; i < R4; i++)
        if (4 * G + i >= r0 && 4 * G + i < r1) out[4 * G + i] = f[i];
}

/* v times lane i (a constant) of s */
#define R4_MUL_LANE(v, s, i)                                                                  \
    ((i) == 0 ? vmulq_laneq_f32((v), (s), 0) : (i) == 1 ? vmulq_laneq_f32((v), (s), 1)     \
     : (i) == 2 ? vmulq_laneq_f32((v), (s), 2) : vmulq_laneq_f32((v), (s), 3))

/* a + v times lane i (a constant) of s, fused */
#define R4_FMA_LANE(a, v, s, i)                                                                        \
    ((i) == 0 ? vfmaq_laneq_f32((a), (v), (s), 0) : (i) == 1 ? vfmaq_laneq_f32((a), (v), (s), 1)    \
     : (i) == 2 ? vfmaq_laneq_f32((a), (v), (s), 2) : vfmaq_laneq_f32((a), (v), (s), 3))

/* The end of a round of independent operations: GCC's last scheduling pass
 * would otherwise regroup them into chains, each waiting on its own results
 * on the in-order cores. R4_ROUND orders the rounds' volatile neighbours;
 * R4_DONE(v) also pins vector v's computation before the rounds after it. */
#define R4_ROUND() __asm__ volatile("")
#define R4_DONE(v) __asm__ volatile("" : "+w"(v))

/* Decoding, 16 blocks from b (a multiple of 16, all in whole spans of 128
 * of qp) of row group G for token t into lanes L; groups of BPG blocks, a
 * constant dividing 16, so each scale is loaded once, at a fixed place.
 * Block by block keeps the fewest registers live; in rounds (a span of 4
 * blocks: their integer sums, then each float step for all 4) no step waits
 * on the one just before it, which the in-order cores need. */
ALWAYS void r4_step16(int kind, const int BPG, const uint8_t *q, const uint16_t *dg, const uint16_t *mg,
                      const int8_t *xp, const float *xd, const int32_t *xs, float32x4_t *L) {
    if (!R4_DECODE_ROUNDS) {
        float32x4_t d4 = vdupq_n_f32(0.0f), m4 = d4, dx = d4, sx = d4;
        UNROLL
        for (int j = 0; j < 16; j++) {
            if (j % BPG == 0) {
                d4 = f16x4(dg + (j / BPG) * R4);
                if (kind == K_Q4A) m4 = f16x4(mg + (j / BPG) * R4);
            }
            if (j % 4 == 0) {
                dx = vld1q_f32(xd + j);
                if (kind == K_Q4A) sx = vcvtq_f32_s32(vld1q_s32(xs + j));
            }
            const int8_t *xe = xp + (j / 4) * 128 + 16 * (j % 4);
            float32x4_t isum = isum_f32(kind, r4_dot_bytes(kind, q + 64 * j, xe, xe + 64));
            L[j] = vfmaq_f32(L[j], R4_MUL_LANE(d4, dx, j % 4), isum);
            if (kind == K_Q4A) L[j] = R4_FMA_LANE(L[j], R4_MUL_LANE(m4, dx, j % 4), sx, j % 4);
        }
        return;
    }
    float32x4_t d4[4], m4[4];
    UNROLL
    for (int j = 0; j < 16; j += 4) {
        UNROLL
        for (int i = 0; i < 4; i++) {
            if ((j + i) % BPG == 0) {
                d4[i] = f16x4(dg + ((j + i) / BPG) * R4);
                m4[i] = kind == K_Q4A ? f16x4(mg + ((j + i) / BPG) * R4) : d4[i];
            } else {
                d4[i] = d4[i - 1];
                m4[i] = m4[i - 1];
            }
        }
        const int8_t *xe = xp + (j / 4) * 128;
        float32x4_t dx = vld1q_f32(xd + j), sx = dx, sum[4], term[4];
        if (kind == K_Q4A) sx = vcvtq_f32_s32(vld1q_s32(xs + j));
        UNROLL
        for (int i = 0; i < 4; i++) {
            sum[i] = isum_f32(kind, r4_dot_bytes(kind, q + 64 * (j + i), xe + 16 * i, xe + 64 + 16 * i));
            term[i] = R4_MUL_LANE(d4[i], dx, i);
        }
        UNROLL
        for (int i = 0; i < 4; i++) {
            R4_DONE(sum[i]);
            R4_DONE(term[i]);
        }
        UNROLL
        for (int i = 0; i < 4; i++) L[j + i] = vfmaq_f32(L[j + i], term[i], sum[i]);
        if (kind == K_Q4A) {
            UNROLL
            for (int i = 0; i < 4; i++) term[i] = R4_MUL_LANE(m4[i], dx, i);
            UNROLL
            for (int i = 0; i < 4; i++) R4_DONE(term[i]);
            UNROLL
            for (int i = 0; i < 4; i++) L[j + i] = R4_FMA_LANE(L[j + i], term[i], sx, i);
        }
    }
}

/* r4_step16 over the first `steps` x 16 blocks of row group G, token t,
 * lanes L: a call of its own, its pointers opaque to the compiler at each
 * step, so that the lanes stay in registers and every address is an offset
 * from them (left to itself, GCC keeps one pointer per block and spills) */
#define R4_OPAQUE(p) __asm__("" : "+r"(p))

ALWAYS void r4_steps(int kind, const int BPG, const uint8_t *q, const uint16_t *dg, const uint16_t *mg,
                     const int8_t *xp, const float *xd, const int32_t *xs, int steps, float32x4_t *L) {
    float32x4_t acc[16];
    for (int j = 0; j < 16; j++) acc[j] = L[j];
    for (int i = 0; i < steps; i++) {
        R4_OPAQUE(q);
        R4_OPAQUE(dg);
        R4_OPAQUE(xp);
        R4_OPAQUE(xd);
        if (kind == K_Q4A) {
            R4_OPAQUE(mg);
            R4_OPAQUE(xs);
        }
        r4_step16(kind, BPG, q, dg, mg, xp, xd, xs, acc);
        q += 16 * 64;
        dg += 16 / BPG * R4;
        if (kind == K_Q4A) {
            mg += 16 / BPG * R4;
            xs += 16;
        }
        xp += 16 * QK;
        xd += 16;
    }
    for (int j = 0; j < 16; j++) L[j] = acc[j];
}

static __attribute__((noinline)) void r4_steps_at(int kind, int bpg, const qact *x, const qmat *w, int G, int steps,
                                                  int t, float32x4_t *L) {
    const int nb = x->nb;
    const uint8_t *q = w->q + (size_t)G * w->row_bytes;
    const size_t sg = (size_t)G * (size_t)w->ngroups * R4;
    const uint16_t *dg = w->d + sg, *mg = kind == K_Q4A ? w->m + sg : NULL;
    const int8_t *xp = x->qp + (size_t)t * (size_t)x->n;
    const float *xd = x->d + (size_t)t * (size_t)nb;
    const int32_t *xs = x->s + (size_t)t * (size_t)nb;
    if (kind == K_Q4S) {
        if (bpg == 1) r4_steps(K_Q4S, 1, q, dg, mg, xp, xd, xs, steps, L);
        else if (bpg == 2) r4_steps(K_Q4S, 2, q, dg, mg, xp, xd, xs, steps, L);
        else r4_steps(K_Q4S, 4, q, dg, mg, xp, xd, xs, steps, L);
    } else {
        if (bpg == 1) r4_steps(K_Q4A, 1, q, dg, mg, xp, xd, xs, steps, L);
        else if (bpg == 2) r4_steps(K_Q4A, 2, q, dg, mg, xp, xd, xs, steps, L);
        else r4_steps(K_Q4A, 4, q, dg, mg, xp, xd, xs, steps, L);
    }
}

/* Blocks b .. nb-1 of row group G for token t added into the lanes L one
 * at a time: any group size, and the last blocks */
static __attribute__((noinline)) void r4_decode_rest(int kind, const qact *x, const qmat *w, int G, int t, int b,
                                                     float32x4_t *L) {
    const int nb = x->nb, bpg = w->gs / QK;
    const uint8_t *q = w->q + (size_t)G * w->row_bytes;
    int g = b / bpg, in = b % bpg; /* block b's weight group, and its place in it */
    float32x4_t d4 = r4_scales(w->d, w, G, g), m4 = kind == K_Q4A ? r4_scales(w->m, w, G, g) : d4;
    for (; b < nb; b++) {
        r4block wb = r4_unpack(kind, q + 64 * (size_t)b);
        L[b % 16] = r4_term(kind, L[b % 16], x, &wb, b, t, d4, m4);
        if (++in == bpg && b + 1 < nb) {
            in = 0;
            g++;
            d4 = r4_scales(w->d, w, G, g);
            if (kind == K_Q4A) m4 = r4_scales(w->m, w, G, g);
        }
    }
}

/* One token, row group G: lane b % 16 */
ALWAYS void r4_decode(int kind, const qact *x, const qmat *w, int G, int t, int r0, int r1, float *out,
                      size_t out_stride) {
    float32x4_t v;
    if (r4_decode_whole(kind, x, w, G, t, &v)) {
        r4_store(v, G, r0, r1, out + (size_t)t * out_stride);
        return;
    }
    const int bpg = w->gs / QK;
    float32x4_t L[16];
    for (int j = 0; j < 16; j++) L[j] = vdupq_n_f32(-0.0f);
    int b = 0;
    if (bpg == 1 || bpg == 2 || bpg == 4) {
        r4_steps_at(kind, bpg, x, w, G, x->nb / 16, t, L);
        b = x->nb / 16 * 16;
    }
    if (b < x->nb) r4_decode_rest(kind, x, w, G, t, b, L);
    r4_store(r4_tree(L), G, r0, r1, out + (size_t)t * out_stride);
}

/* T tokens from t, row group G: lane by lane; blocks in whole spans of 128
 * of qp (b < nb & ~3) take their activations at a fixed place */
ALWAYS void r4_prompt(int kind, const int T, const qact *x, const qmat *w, int G, int t, int r0, int r1,
                      float *out, size_t out_stride) {
    const int nb = x->nb, bpg = w->gs / QK, whole = nb & ~3;
    const int gstep = R4_GROUP_STEP(bpg);
    const uint8_t *q = w->q + (size_t)G * w->row_bytes;
    float32x4_t L[R4_TOKENS][16];
    for (int j = 0; j < 16 && j < nb; j++) {
        float32x4_t f[R4_TOKENS];
        UNROLL
        for (int k = 0; k < T; k++) f[k] = vdupq_n_f32(-0.0f);
        for (int b = j, g = j / bpg, in = j % bpg; b < nb; b += 16) { /* block b in group g, the in-th block */
            r4block wb = r4_unpack(kind, q + 64 * (size_t)b);
            float32x4_t d4 = r4_scales(w->d, w, G, g), m4 = kind == K_Q4A ? r4_scales(w->m, w, G, g) : d4;
            if (b < whole) {
                const size_t at = (size_t)(b >> 2) * 128 + 16 * (size_t)(b & 3);
                UNROLL
                for (int k = 0; k < T; k++) {
                    const size_t tok = (size_t)(t + k);
                    const int8_t *xe = x->qp + tok * (size_t)x->n + at;
                    float xd = x->d[tok * (size_t)nb + (size_t)b];
                    f[k] = vfmaq_f32(f[k], vmulq_n_f32(d4, xd), isum_f32(kind, r4_dot(kind, &wb, xe, xe + 64)));
                    if (kind == K_Q4A)
                        f[k] = vfmaq_n_f32(f[k], vmulq_n_f32(m4, xd), (float)x->s[tok * (size_t)nb + (size_t)b]);
                }
            } else {
                UNROLL
                for (int k = 0; k < T; k++) f[k] = r4_term(kind, f[k], x, &wb, b, t + k, d4, m4);
            }
            if (gstep) {
                g += gstep;
            } else {
                for (in += 16; in >= bpg; in -= bpg) g++; /* to block b + 16, no division */
            }
        }
        UNROLL
        for (int k = 0; k < T; k++) L[k][j] = f[k];
    }
    for (int k = 0; k < T; k++) {
        for (int j = nb; j < 16; j++) L[k][j] = vdupq_n_f32(-0.0f);
        r4_store(r4_tree(L[k]), G, r0, r1, out + (size_t)(t + k) * out_stride);
    }
}

/* Tokens t .. ntok-1 of row group G: R4_TOKENS at a time, then 4, 2, 1 */
ALWAYS void r4_tokens(int kind, const qact *x, const qmat *w, int G, int t, int r0, int r1, float *out,
                      size_t out_stride) {
    for (; t + R4_TOKENS <= x->ntok; t += R4_TOKENS) r4_prompt(kind, R4_TOKENS, x, w, G, t, r0, r1, out, out_stride);
    if (x->ntok - t >= 4) {
        r4_prompt(kind, 4, x, w, G, t, r0, r1, out, out_stride);
        t += 4;
    }
    if (x->ntok - t >= 2) {
        r4_prompt(kind, 2, x, w, G, t, r0, r1, out, out_stride);
        t += 2;
    }
    if (t < x->ntok) r4_decode(kind, x, w, G, t, r0, r1, out, out_stride);
}

ALWAYS void dot_r4(int kind, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    if (r0 >= r1) return;
    for (int G = r0 / R4; G * R4 < r1; G++) r4_tokens(kind, x, w, G, 0, r0, r1, out, out_stride);
}
