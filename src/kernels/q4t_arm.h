/* The body of the aarch64 Q4T kernels, included once by q4t_neon.c and once
 * by q4t_neon_dotprod.c (not a public header; not compiled on its own).
 *
 * The includer defines, before including it:
 *   ALWAYS            static inline __attribute__((always_inline))
 *   block_sums(wl, wh, xe, xo)  int32x4_t whose lanes sum to wl . xe + wh . xo
 *                     (16 int8 products each, exactly)
 * and gets q4t_rows, the kernel (kernels.h's dot_fn).
 *
 * A block's 16 bytes hold its even values in their low nibbles and its odd
 * ones in their high nibbles (docs/FORMAT.md): vqtbl1q_s8 looks both halves
 * up in the table, vld2q_s8 splits the activations (qact.q, value order) the
 * same way. Four blocks' sums are reduced together (pairwise adds) and take
 * one float step, kernels.h's contract (the Q4S step, fmla) on lanes b % 16,
 * those past the row's last block kept as they are (a term of +0.0 would
 * turn a lane of -0.0 into +0.0), so the outputs are bit-identical to the
 * scalar reference. Prompts take each
 * row's blocks once for up to Q4T_TOKENS tokens.
 */

#define Q4T_TOKENS 4 /* tokens per pass over a row (16 float lanes each: 4 registers) */

/* The contract's final tree over 16 lanes held as 4 vectors (lanes 4i..4i+3 in l[i]). */
ALWAYS float q4t_tree(const float32x4_t *l) {
    float32x4_t a = vaddq_f32(l[0], l[2]), b = vaddq_f32(l[1], l[3]); /* i + (i+8) */
    float32x4_t c = vaddq_f32(a, b);                                     /* i + (i+4) */
    float32x2_t e = vadd_f32(vget_low_f32(c), vget_high_f32(c));       /* i + (i+2) */
    return vget_lane_f32(e, 0) + vget_lane_f32(e, 1);
}

static void q4t_rows(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    const int nb = x->nb, bpg = w->gs / QK;
    const int8x16_t table = vld1q_s8(w->table);
    for (int r = r0; r < r1; r++) {
        const uint8_t *wq = w->q + (size_t)r * w->row_bytes;
        const uint16_t *wd = w->d + (size_t)r * (size_t)w->ngroups;
        for (int t0 = 0; t0 < x->ntok; t0 += Q4T_TOKENS) {
            const int T = x->ntok - t0 < Q4T_TOKENS ? x->ntok - t0 : Q4T_TOKENS;
            float32x4_t lanes[Q4T_TOKENS][4];
            for (int t = 0; t < T; t++)
                for (int i = 0; i < 4; i++) lanes[t][i] = vdupq_n_f32(-0.0f);
            for (int b0 = 0; b0 < nb; b0 += 4) {
                const int cnt = nb - b0 < 4 ? nb - b0 : 4;
                int8x16_t wl[4], wh[4];
                float ds[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int k = 0; k < cnt; k++) {
                    uint8x16_t v = vld1q_u8(wq + (size_t)(b0 + k) * (QK / 2));
                    wl[k] = vqtbl1q_s8(table, vandq_u8(v, vdupq_n_u8(0x0F)));
                    wh[k] = vqtbl1q_s8(table, vshrq_n_u8(v, 4));
                    ds[k] = fp16_to_f32(wd[(b0 + k) / bpg]);
                }
                const float32x4_t d4 = vld1q_f32(ds);
                static const uint32_t index[4] = {0, 1, 2, 3};
                const uint32x4_t valid = vcltq_u32(vld1q_u32(index), vdupq_n_u32((uint32_t)cnt));
                for (int t = 0; t < T; t++) {
                    const size_t row = (size_t)(t0 + t);
                    const int8_t *xr = x->q + row * (size_t)x->n + (size_t)b0 * QK;
                    int32x4_t s[4];
                    float dx[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    for (int k = 0; k < 4; k++) {
                        s[k] = vdupq_n_s32(0);
                        if (k >= cnt) continue;
                        int8x16x2_t xv = vld2q_s8(xr + k * QK); /* even values, odd values */
                        s[k] = block_sums(wl[k], wh[k], xv.val[0], xv.val[1]);
                        dx[k] = x->d[row * (size_t)nb + (size_t)(b0 + k)];
                    }
                    int32x4_t isum = vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]));
                    float32x4_t *lane = &lanes[t][(b0 % LANES) / 4];
                    float32x4_t f = vfmaq_f32(*lane, vmulq_f32(d4, vld1q_f32(dx)), vcvtq_f32_s32(isum));
                    *lane = cnt < 4 ? vbslq_f32(valid, f, *lane) : f;
                }
            }
            for (int t = 0; t < T; t++) out[(size_t)(t0 + t) * out_stride + (size_t)r] = q4t_tree(lanes[t]);
        }
    }
}
