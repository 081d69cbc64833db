/* The scalar reference kernels, rq4_kernels_scalar.
 *
 * They define the arithmetic every other kernel set must reproduce bit for
 * bit (see the accumulation contract in kernels.h); they are written for
 * clarity first, then for what the compiler vectorizes well.
 */
#include "kernels.h"

#include <stdint.h>
#include <stddef.h>

/* Tokens processed together per weight block: their lanes stay in cache
 * while the block's unpacked weights are reused. */
#define TOKEN_TILE 8

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* Unpacks the 16 bytes of one block into 32 values: byte j holds value 2j in
 * its low nibble and 2j+1 in its high nibble (docs/FORMAT.md). Q4S nibbles
 * are two's complement ((x ^ 8) - 8 maps 0..15 to 0..7, -8..-1), Q4A
 * nibbles unsigned 0..15. */
static void unpack_block(const uint8_t *src, int is_signed, int8_t *w) {
    int off = is_signed ? 8 : 0;
    for (int j = 0; j < QK / 2; j++) {
        uint8_t b = src[j];
        w[2 * j] = (int8_t)(((b & 0x0F) ^ off) - off);
        w[2 * j + 1] = (int8_t)(((b >> 4) ^ off) - off);
    }
}

static inline int32_t dot_block(const int8_t *a, const int8_t *b) {
    int32_t sum = 0;
    for (int i = 0; i < QK; i++) sum += (int32_t)a[i] * (int32_t)b[i];
    return sum;
}

enum { KIND_Q4S, KIND_Q4A, KIND_Q8 };

/* The one scalar kernel body; `kind` is a compile-time constant at each call
 * site below, so the branches on it disappear after inlining. */
static inline void dot_ref(int kind, const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    const int nb = x->nb, bpg = w->gs / QK;
    for (int r = r0; r < r1; r++) {
        const uint8_t *wq = w->q + (size_t)r * w->row_bytes;
        const uint16_t *wd = w->d + (size_t)r * (size_t)w->ngroups;
        const uint16_t *wm = kind == KIND_Q4A ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
        for (int t0 = 0; t0 < x->ntok; t0 += TOKEN_TILE) {
            int nt = min_int(TOKEN_TILE, x->ntok - t0);
            float lane[TOKEN_TILE][LANES] = {{0}};
            for (int b = 0; b < nb; b++) {
                int8_t unpacked[QK];
                const int8_t *wb = unpacked;
                if (kind == KIND_Q8) wb = (const int8_t *)wq + b * QK;
                else unpack_block(wq + b * (QK / 2), kind == KIND_Q4S, unpacked);
                int g = b / bpg;
                float d = fp16_to_f32(wd[g]);
                float mn = kind == KIND_Q4A ? fp16_to_f32(wm[g]) : 0.0f;
                for (int t = 0; t < nt; t++) {
                    size_t row = (size_t)(t0 + t);
                    int32_t isum = dot_block(wb, x->q + row * (size_t)x->n + (size_t)b * QK);
                    float xd = x->d[row * (size_t)nb + (size_t)b];
                    float term = (d * xd) * (float)isum;
                    if (kind == KIND_Q4A) term = term + (mn * xd) * (float)x->s[row * (size_t)nb + (size_t)b];
                    lane[t][b % LANES] += term;
                }
            }
            for (int t = 0; t < nt; t++) out[(size_t)(t0 + t) * out_stride + (size_t)r] = sum_lanes(lane[t]);
        }
    }
}

static void dot_q4s_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4S, x, w, r0, r1, out, out_stride);
}

static void dot_q4a_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4A, x, w, r0, r1, out, out_stride);
}

static void dot_q8_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q8, x, w, r0, r1, out, out_stride);
}

const kernel_set rq4_kernels_scalar = {
    "scalar", dot_q4s_scalar, dot_q4a_scalar, dot_q8_scalar,
};
