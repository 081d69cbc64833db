/* The loops shared by the two aarch64 kernel sets (included by neon.c and
 * neon_dotprod.c, each a translation unit of its own, so the static names
 * below are defined once here and exist once per set; not compiled alone).
 *
 * The includer defines, for blocks in nibble order (qact.qp) or Q8:
 *   wquad unpack_quad(kind, wq, cnt)   blocks 0 .. cnt-1 (cnt 1..4) of the
 *       16-byte (Q4) or 32-byte (Q8) blocks at wq, as two int8x16 per block
 *   int32x4_t block_dot(kind, w, k, xlo, xhi)   partial sums of block k of w
 *       against the activations xlo (for w->lo[k]) and xhi (for w->hi[k])
 *   float32x4_t isum_f32(kind, s)   the exact float of the int32 sums s as
 *       block_dot scales them (dotprod Q4S: 16 times the sum; scvtf #4 then
 *       divides exactly, |16 * isum| < 2^24)
 *
 * Every kernel here computes kernels.h's contract: the integer sum of each
 * block, then per block lane = fma(d * dx, isum, lane) [then fma(m * dx, xs,
 * lane)] on the float lane b % 16 of its row and token, four lanes per
 * float32x4 (vfmaq_f32: fmla). Rows go in
 * steps of R and tokens in tiles of T, both compile-time constants at each call
 * (so the accumulators stay in registers): each block's unpacked weights serve
 * T tokens and each activation load R rows. The row is walked 16 blocks at a
 * time (one quad into each lane vector), the scales of those 16 blocks
 * converted at once (fcvtl) in the layouts of groups of 1, 2 and 4 blocks
 * (g32, g64, g128); any other group size, and the blocks past the last 16,
 * take a per-quad path whose group index is a running count (no division).
 * Past the last block of a partial quad the lanes are kept as they are (a
 * term of +0.0 there would turn a lane of -0.0, its start, into +0.0).
 */

#include <string.h>

enum { K_Q4S, K_Q4A, K_Q8 };
#define ALWAYS static inline __attribute__((always_inline))
/* Loops over rows, tokens and blocks of a step run a constant, small number
 * of times: fully unrolled, their accumulators stay in registers. */
#ifdef __clang__
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif
#define MAX_R 4 /* rows per step, at most */
#define MAX_T 4 /* tokens per tile, at most */

/* 4 blocks of one row, as 8 int8x16: lo[k] and hi[k] for block k */
typedef struct wquad {
    int8x16_t lo[4], hi[4];
} wquad;

/* the includer's three primitives (defined after this header) */
ALWAYS wquad unpack_quad(int kind, const uint8_t *wq, int cnt);
ALWAYS int32x4_t block_dot(int kind, const wquad *w, int k, int8x16_t xlo, int8x16_t xhi);
ALWAYS float32x4_t isum_f32(int kind, int32x4_t s);

/* The int32 sums of the 4 blocks of w (lane k = block k) against the
 * activations of one token from x: a span of 128 values in nibble order
 * (block k's even values at 16k, its odd ones at 64 + 16k) for int4, plain
 * values (block k at 32k) for Q8. */
ALWAYS int32x4_t quad_sums(int kind, const wquad *w, const int8_t *x) {
    int8x16x4_t a, b;
    UNROLL
    for (int k = 0; k < 4; k++) {
        a.val[k] = vld1q_s8(x + 16 * k);
        b.val[k] = vld1q_s8(x + 64 + 16 * k);
    }
    int32x4_t s[4];
    if (kind == K_Q8) {
        s[0] = block_dot(kind, w, 0, a.val[0], a.val[1]);
        s[1] = block_dot(kind, w, 1, a.val[2], a.val[3]);
        s[2] = block_dot(kind, w, 2, b.val[0], b.val[1]);
        s[3] = block_dot(kind, w, 3, b.val[2], b.val[3]);
    } else {
        UNROLL
        for (int k = 0; k < 4; k++) s[k] = block_dot(kind, w, k, a.val[k], b.val[k]);
    }
    return vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]));
}

/* p[0 .. cnt), zeros after, never reading past p[cnt - 1] */
ALWAYS float32x4_t load_f32(const float *p, int cnt) {
    if (cnt == 4) return vld1q_f32(p);
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k = 0; k < cnt; k++) v[k] = p[k];
    return vld1q_f32(v);
}

ALWAYS int32x4_t load_s32(const int32_t *p, int cnt) {
    if (cnt == 4) return vld1q_s32(p);
    int32_t v[4] = {0, 0, 0, 0};
    for (int k = 0; k < cnt; k++) v[k] = p[k];
    return vld1q_s32(v);
}

ALWAYS float32x4_t f16x4(const uint16_t *h) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h))); }

/* A row's group cursor: block `b` is in group g, the in-th block of it. */
typedef struct cursor {
    int g, in;
} cursor;

/* The scales h[group] of the next cnt blocks (0 past cnt), advancing the
 * cursor by 4 blocks. */
ALWAYS float32x4_t cursor_scales(cursor *c, const uint16_t *h, int bpg, int cnt) {
    uint16_t v[4] = {0, 0, 0, 0};
    int g = c->g, in = c->in;
    for (int k = 0; k < cnt; k++) {
        v[k] = h[g];
        if (++in == bpg) {
            in = 0;
            g++;
        }
    }
    c->g = g;
    c->in = in;
    return f16x4(v);
}

/* kernels.h's final tree over lanes 0-3 (v0), 4-7 (v1), 8-11 (v2), 12-15 (v3) */
ALWAYS float sum16(float32x4_t v0, float32x4_t v1, float32x4_t v2, float32x4_t v3) {
    float32x4_t s = vaddq_f32(vaddq_f32(v0, v2), vaddq_f32(v1, v3));
    float32x2_t h = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    return vget_lane_f32(h, 0) + vget_lane_f32(h, 1);
}

/* One step's rows and tokens: R rows from r, T tokens from t. */
typedef struct step {
    const uint8_t *wq[MAX_R];
    const uint16_t *wd[MAX_R], *wm[MAX_R];
    const int8_t *xq[MAX_T]; /* qp (int4) or q (Q8) */
    const float *xd[MAX_T];
    const int32_t *xs[MAX_T];
} step;

typedef float32x4_t lanes[MAX_R][MAX_T][4]; /* [row][token][lanes 4j .. 4j+3] */

/* The contract's steps of one quad of blocks (4 blocks from b0, cnt of them)
 * on the quad's lanes f[i][t] of every row and token: weights wq[i],
 * activations xq[t], scales d4[i], m4[i], dx[t], xs[t]; the lanes past cnt
 * kept. */
ALWAYS void quad_fma(int kind, const int R, const int T, const uint8_t *const *wq, const int8_t *const *xq,
                     const float32x4_t *d4, const float32x4_t *m4, const float32x4_t *dx, const float32x4_t *xs,
                     int cnt, float32x4_t f[MAX_R][MAX_T]) {
    static const uint32_t index[4] = {0, 1, 2, 3};
    const uint32x4_t valid = vcltq_u32(vld1q_u32(index), vdupq_n_u32((uint32_t)cnt));
    for (int i = 0; i < R; i++) {
        wquad w = unpack_quad(kind, wq[i], 4);
        for (int t = 0; t < T; t++) {
            float32x4_t isum = isum_f32(kind, quad_sums(kind, &w, xq[t]));
            float32x4_t g = vfmaq_f32(f[i][t], vmulq_f32(d4[i], dx[t]), isum);
            if (kind == K_Q4A) g = vfmaq_f32(g, vmulq_f32(m4[i], dx[t]), xs[t]);
            f[i][t] = cnt < 4 ? vbslq_f32(valid, g, f[i][t]) : g;
        }
    }
}

/* Lane vector j of acc += the quad of blocks from b0 (whole, in 128-spans) */
ALWAYS void add_quad(int kind, const int R, const int T, const step *s, int b0, const float32x4_t *d4,
                     const float32x4_t *m4, lanes acc, const int j) {
    const size_t wstep = kind == K_Q8 ? QK : QK / 2;
    const uint8_t *wq[MAX_R];
    const int8_t *xq[MAX_T];
    float32x4_t dx[MAX_T], xs[MAX_T], f[MAX_R][MAX_T];
    for (int i = 0; i < R; i++) wq[i] = s->wq[i] + (size_t)b0 * wstep;
    for (int t = 0; t < T; t++) {
        xq[t] = s->xq[t] + (size_t)b0 * QK;
        dx[t] = vld1q_f32(s->xd[t] + b0);
        xs[t] = kind == K_Q4A ? vcvtq_f32_s32(vld1q_s32(s->xs[t] + b0)) : dx[t];
    }
    for (int i = 0; i < R; i++)
        for (int t = 0; t < T; t++) f[i][t] = acc[i][t][j];
    quad_fma(kind, R, T, wq, xq, d4, m4, dx, xs, 4, f);
    for (int i = 0; i < R; i++)
        for (int t = 0; t < T; t++) acc[i][t][j] = f[i][t];
}

/* Quad j of the 16 blocks from b, with their scales d4[row][j] */
ALWAYS void add_quad_j(int kind, const int R, const int T, const step *s, int b, float32x4_t d4[MAX_R][4],
                       float32x4_t m4[MAX_R][4], lanes acc, const int j) {
    float32x4_t dj[MAX_R], mj[MAX_R];
    for (int i = 0; i < R; i++) {
        dj[i] = d4[i][j];
        mj[i] = m4[i][j];
    }
    add_quad(kind, R, T, s, b + 4 * j, dj, mj, acc, j);
}

/* The blocks from b (a multiple of 16) to the row's end, fewer than 16 (any
 * group size; R, T not constants: once per row). The last partial quad is
 * copied into zeroed buffers laid out as a whole quad (its activations from
 * their spans of 64 and 32 values). */
static __attribute__((noinline)) void add_tail(int kind, int R, int T, const step *s, int b, int nb, int bpg,
                                               lanes acc) {
    const size_t wstep = kind == K_Q8 ? QK : QK / 2;
    cursor cur[MAX_R], curm[MAX_R];
    for (int i = 0; i < R; i++) cur[i] = curm[i] = (cursor){b / bpg, b % bpg};
    for (int j = 0; b < nb; j++, b += 4) {
        int cnt = nb - b < 4 ? nb - b : 4;
        uint8_t wbuf[MAX_R][4 * QK] = {{0}};
        int8_t xbuf[MAX_T][4 * QK] = {{0}};
        const uint8_t *wq[MAX_R];
        const int8_t *xq[MAX_T];
        float32x4_t d4[MAX_R], m4[MAX_R], dx[MAX_T], xs[MAX_T], f[MAX_R][MAX_T];
        for (int i = 0; i < R; i++) {
            wq[i] = s->wq[i] + (size_t)b * wstep;
            if (cnt < 4) {
                memcpy(wbuf[i], wq[i], (size_t)cnt * wstep);
                wq[i] = wbuf[i];
            }
            d4[i] = cursor_scales(&cur[i], s->wd[i], bpg, cnt);
            m4[i] = kind == K_Q4A ? cursor_scales(&curm[i], s->wm[i], bpg, cnt) : d4[i];
        }
        for (int t = 0; t < T; t++) {
            xq[t] = s->xq[t] + (size_t)b * QK;
            if (cnt < 4) {
                if (kind == K_Q8) {
                    memcpy(xbuf[t], xq[t], (size_t)cnt * QK);
                } else { /* blocks 0, 1 in a span of 64 (when cnt >= 2), then one of 32 */
                    for (int k = 0; k < cnt; k++) {
                        int first = k < 2 && cnt >= 2 ? 0 : 32 * k, half = k < 2 && cnt >= 2 ? 32 : 16;
                        int in = k - first / 32;
                        memcpy(xbuf[t] + 16 * k, xq[t] + first + 16 * in, 16);
                        memcpy(xbuf[t] + 64 + 16 * k, xq[t] + first + half + 16 * in, 16);
                    }
                }
                xq[t] = xbuf[t];
            }
            dx[t] = load_f32(s->xd[t] + b, cnt);
            xs[t] = vcvtq_f32_s32(load_s32(s->xs[t] + b, cnt));
        }
        for (int i = 0; i < R; i++)
            for (int t = 0; t < T; t++) f[i][t] = acc[i][t][j];
        quad_fma(kind, R, T, wq, xq, d4, m4, dx, xs, cnt, f);
        for (int i = 0; i < R; i++)
            for (int t = 0; t < T; t++) acc[i][t][j] = f[i][t];
    }
}

/* The scales of the 16 blocks from b (a multiple of 16, all inside the row)
 * of one row, as the 4 quads' float32x4, for groups of 1, 2 or 4 blocks. */
ALWAYS void scales16(const uint16_t *h, int b, int bpg, float32x4_t q[4]) {
    if (bpg == 1) {
        float16x8_t a = vreinterpretq_f16_u16(vld1q_u16(h + b)), c = vreinterpretq_f16_u16(vld1q_u16(h + b + 8));
        q[0] = vcvt_f32_f16(vget_low_f16(a));
        q[1] = vcvt_high_f32_f16(a);
        q[2] = vcvt_f32_f16(vget_low_f16(c));
        q[3] = vcvt_high_f32_f16(c);
    } else if (bpg == 2) {
        float16x8_t a = vreinterpretq_f16_u16(vld1q_u16(h + b / 2));
        float32x4_t f0 = vcvt_f32_f16(vget_low_f16(a)), f1 = vcvt_high_f32_f16(a);
        q[0] = vzip1q_f32(f0, f0);
        q[1] = vzip2q_f32(f0, f0);
        q[2] = vzip1q_f32(f1, f1);
        q[3] = vzip2q_f32(f1, f1);
    } else { /* bpg == 4: one group per quad */
        float32x4_t f = f16x4(h + b / 4);
        q[0] = vdupq_laneq_f32(f, 0);
        q[1] = vdupq_laneq_f32(f, 1);
        q[2] = vdupq_laneq_f32(f, 2);
        q[3] = vdupq_laneq_f32(f, 3);
    }
}

/* R rows from r times T tokens from t */
ALWAYS void dot_step(int kind, const int R, const int T, const qact *x, const qmat *w, int r, int t, float *out,
                     size_t out_stride) {
    const int nb = x->nb, bpg = w->gs / QK, fast = bpg == 1 || bpg == 2 || bpg == 4;
    const size_t n = (size_t)x->n;
    step s;
    lanes acc;
    for (int i = 0; i < R; i++) {
        s.wq[i] = w->q + (size_t)(r + i) * w->row_bytes;
        s.wd[i] = w->d + (size_t)(r + i) * (size_t)w->ngroups;
        s.wm[i] = kind == K_Q4A ? w->m + (size_t)(r + i) * (size_t)w->ngroups : NULL;
        for (int k = 0; k < T; k++)
            for (int j = 0; j < 4; j++) acc[i][k][j] = vdupq_n_f32(-0.0f);
    }
    for (int k = 0; k < T; k++) {
        size_t tok = (size_t)(t + k);
        s.xq[k] = (kind == K_Q8 ? x->q : x->qp) + tok * n;
        s.xd[k] = x->d + tok * (size_t)nb;
        s.xs[k] = x->s + tok * (size_t)nb;
    }
    cursor cur[MAX_R] = {{0, 0}}, curm[MAX_R] = {{0, 0}};
    int b = 0;
    for (; b + 16 <= nb; b += 16) {
        float32x4_t d4[MAX_R][4], m4[MAX_R][4];
        for (int i = 0; i < R; i++) {
            for (int j = 0; j < 4; j++) {
                if (fast) {
                    if (j == 0) {
                        scales16(s.wd[i], b, bpg, d4[i]);
                        if (kind == K_Q4A) scales16(s.wm[i], b, bpg, m4[i]);
                    }
                } else {
                    d4[i][j] = cursor_scales(&cur[i], s.wd[i], bpg, 4);
                    if (kind == K_Q4A) m4[i][j] = cursor_scales(&curm[i], s.wm[i], bpg, 4);
                }
                if (kind != K_Q4A) m4[i][j] = d4[i][j];
            }
        }
        add_quad_j(kind, R, T, &s, b, d4, m4, acc, 0);
        add_quad_j(kind, R, T, &s, b, d4, m4, acc, 1);
        add_quad_j(kind, R, T, &s, b, d4, m4, acc, 2);
        add_quad_j(kind, R, T, &s, b, d4, m4, acc, 3);
    }
    if (b < nb) {
        lanes tail;
        memcpy(tail, acc, sizeof tail);
        add_tail(kind, R, T, &s, b, nb, bpg, tail);
        memcpy(acc, tail, sizeof tail);
    }
    for (int i = 0; i < R; i++)
        for (int k = 0; k < T; k++)
            out[(size_t)(t + k) * out_stride + (size_t)(r + i)] =
                sum16(acc[i][k][0], acc[i][k][1], acc[i][k][2], acc[i][k][3]);
}

/* Rows r0..r1, tokens t0..t1 of x: one token in steps of DECODE_ROWS rows;
 * several in tiles of 4 (then 2, 1) per row. */
ALWAYS void dot_rows(int kind, const qact *x, const qmat *w, int r0, int r1, int t0, int t1, float *out,
                     size_t out_stride) {
    if (t1 - t0 == 1) {
        int r = r0;
        for (; r + DECODE_ROWS <= r1; r += DECODE_ROWS) dot_step(kind, DECODE_ROWS, 1, x, w, r, t0, out, out_stride);
        for (; r < r1; r++) dot_step(kind, 1, 1, x, w, r, t0, out, out_stride);
        return;
    }
    for (int r = r0; r < r1; r++) {
        int t = t0;
        for (; t + 4 <= t1; t += 4) dot_step(kind, 1, 4, x, w, r, t, out, out_stride);
        if (t1 - t >= 2) {
            dot_step(kind, 1, 2, x, w, r, t, out, out_stride);
            t += 2;
        }
        if (t < t1) dot_step(kind, 1, 1, x, w, r, t, out, out_stride);
    }
}
