/* The entry points of one SIMD kernel set, included once by each SIMD file
 * (src/kernels/avx2.c, avxvnni.c, avx512vnni.c) after
 * its body, with its TGT and ALWAYS macros. The includer defines, for one
 * weight row r:
 *   tile_tokens(kind, T, x, w, r, out, out_stride, t0)   tokens t0 .. t0+T-1, T = 2..4
 *   one_token(kind, x, w, r, out, out_stride, t)         token t alone
 * Here: every row of [r0, r1), its tokens in tiles of 4, then the 3, 2 or 1
 * left; and one dot_* per weight type (kernels.h), static in each file. */

ALWAYS TGT void dot_rows(int kind, const qact *x, const qmat *w, int r0, int r1, float *out,
                              size_t out_stride) {
    const int ntok = x->ntok;
    for (int r = r0; r < r1; r++) {
        int t0 = 0;
        for (; t0 + 4 <= ntok; t0 += 4) tile_tokens(kind, 4, x, w, r, out, out_stride, t0);
        switch (ntok - t0) {
        case 3: tile_tokens(kind, 3, x, w, r, out, out_stride, t0); break;
        case 2: tile_tokens(kind, 2, x, w, r, out, out_stride, t0); break;
        case 1: one_token(kind, x, w, r, out, out_stride, t0); break;
        default: break;
        }
    }
}

static TGT void dot_q4s(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_rows(K_Q4S, x, w, r0, r1, out, out_stride);
}

static TGT void dot_q4a(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_rows(K_Q4A, x, w, r0, r1, out, out_stride);
}

static TGT void dot_q8(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_rows(K_Q8, x, w, r0, r1, out, out_stride);
}
