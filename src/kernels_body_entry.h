/* The entry points of one SIMD kernel set, shared by src/kernels_x86_body.h
 * and src/kernels_arm_body.h (included at their end, with their FN, TGT and
 * ALWAYS macros and their tile_tokens / one_token): tiles of 4 tokens, then
 * the 3, 2 or 1 left, and one dot_* per weight type (kernels.h). */

ALWAYS TGT void FN(dot_rows)(int kind, const qact *x, const uint8_t *wq, const uint16_t *wd,
                              const uint16_t *wm, float *out, size_t out_stride) {
    int t0 = 0, ntok = x->ntok;
    for (; t0 + 4 <= ntok; t0 += 4) FN(tile_tokens)(kind, 4, x, wq, wd, wm, out, out_stride, t0);
    switch (ntok - t0) {
    case 3: FN(tile_tokens)(kind, 3, x, wq, wd, wm, out, out_stride, t0); break;
    case 2: FN(tile_tokens)(kind, 2, x, wq, wd, wm, out, out_stride, t0); break;
    case 1: FN(one_token)(kind, x, wq, wd, wm, out + (size_t)t0 * out_stride, t0); break;
    default: break;
    }
}

static TGT void FN(dot_q4s)(const qact *x, const uint8_t *wq, const uint16_t *wd,
                            const uint16_t *wm, float *out, size_t out_stride) {
    FN(dot_rows)(K_Q4S, x, wq, wd, wm, out, out_stride);
}

static TGT void FN(dot_q4a)(const qact *x, const uint8_t *wq, const uint16_t *wd,
                            const uint16_t *wm, float *out, size_t out_stride) {
    FN(dot_rows)(K_Q4A, x, wq, wd, wm, out, out_stride);
}

static TGT void FN(dot_q8)(const qact *x, const uint8_t *wq, const uint16_t *wd,
                           const uint16_t *wm, float *out, size_t out_stride) {
    FN(dot_rows)(K_Q8, x, wq, wd, wm, out, out_stride);
}

