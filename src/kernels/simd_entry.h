/* The entry points of one SIMD kernel set, included once by each SIMD file
 * (src/kernels/avx2.c, avxvnni.c, avx512vnni_256.c) after
 * its body, with its TGT and ALWAYS macros. The includer defines
 *   rows_tokens(kind, T, x, w, r0, r1, out, out_stride, t0)
 * for the tokens t0 .. t0+T-1 (T = 1..4) of the rows r0 .. r1.
 * Here: the rows in blocks of ENTRY_ROWS, each block's tokens in tiles of 4,
 * then the 3, 2 or 1 left (one block of all the rows when the tokens make
 * one tile: the includer then walks a whole matrix in one call); and one
 * dot_* per weight type (kernels.h), static in each file. */

#define ENTRY_ROWS 16 /* rows whose weights stay in cache across the token tiles */

ALWAYS TGT void dot_rows(int kind, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    const int ntok = x->ntok, step = ntok <= 4 ? r1 - r0 : ENTRY_ROWS;
    for (int ra = r0; ra < r1; ra += step) {
        int rb = r1 - ra < step ? r1 : ra + step, t0 = 0;
        for (; t0 + 4 <= ntok; t0 += 4) rows_tokens(kind, 4, x, w, ra, rb, out, out_stride, t0);
        switch (ntok - t0) {
        case 3: rows_tokens(kind, 3, x, w, ra, rb, out, out_stride, t0); break;
        case 2: rows_tokens(kind, 2, x, w, ra, rb, out, out_stride, t0); break;
        case 1: rows_tokens(kind, 1, x, w, ra, rb, out, out_stride, t0); break;
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
