/* The scalar reference kernels, rq4_kernels_scalar.
 *
 * They define the arithmetic every other kernel set must reproduce bit for
 * bit (see the accumulation contract in kernels.h); they are written for
 * clarity first, then for what the compiler vectorizes well.
 */
#include "kernels.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

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

enum { KIND_Q4S, KIND_Q4A, KIND_Q8, KIND_Q4T };

/* Where block b of row r is and what scales it takes: the layouts of
 * kernels.h. Interleaved rows have their block's 16 bytes gathered from its
 * 4-byte chunks into buf. */
typedef struct row_view {
    const uint8_t *q;     /* row-major: the row's values */
    const uint8_t *group; /* interleaved: the row's group of R4 rows */
    const uint16_t *d, *m; /* scale g at d[g * step], minimum at m[g * step] */
    size_t step;
    int lane;             /* interleaved: the row's place in its group */
} row_view;

static row_view view_row(const qmat *w, int r, int interleaved, int with_mins) {
    row_view v = {0};
    if (interleaved) {
        size_t at = (size_t)(r / R4) * (size_t)w->ngroups * R4 + (size_t)(r % R4);
        v.group = w->q + (size_t)(r / R4) * w->row_bytes;
        v.d = w->d + at;
        v.m = with_mins ? w->m + at : NULL;
        v.step = R4;
        v.lane = r % R4;
    } else {
        v.q = w->q + (size_t)r * w->row_bytes;
        v.d = w->d + (size_t)r * (size_t)w->ngroups;
        v.m = with_mins ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
        v.step = 1;
    }
    return v;
}

/* The 16 packed bytes of int4 block b of the row (buf: room for them). */
static const uint8_t *block_bytes(const row_view *v, int b, uint8_t *buf) {
    if (!v->group) return v->q + (size_t)b * (QK / 2);
    for (int k = 0; k < 4; k++) memcpy(buf + 4 * k, v->group + 64 * (size_t)b + (size_t)(4 * k + v->lane) * 4, 4);
    return buf;
}

/* The one scalar kernel body; `kind` and `interleaved` are compile-time
 * constants at each call site below, so the branches on them disappear after
 * inlining. */
static inline void dot_ref(int kind, int interleaved, const qact *x, const qmat *w, int r0, int r1, float *out,
                           size_t out_stride) {
    const int nb = x->nb, bpg = w->gs / QK;
    for (int r = r0; r < r1; r++) {
        row_view v = view_row(w, r, interleaved, kind == KIND_Q4A);
        for (int t0 = 0; t0 < x->ntok; t0 += TOKEN_TILE) {
            int nt = min_int(TOKEN_TILE, x->ntok - t0);
            float lane[TOKEN_TILE][LANES];
            for (int t = 0; t < nt; t++)
                for (int j = 0; j < LANES; j++) lane[t][j] = -0.0f;
            for (int b = 0; b < nb; b++) {
                int8_t unpacked[QK];
                uint8_t gathered[QK / 2];
                const int8_t *wb = unpacked;
                if (kind == KIND_Q8) wb = (const int8_t *)v.q + b * QK;
                else unpack_block(block_bytes(&v, b, gathered), kind == KIND_Q4S, unpacked);
                if (kind == KIND_Q4T) /* the unsigned nibbles are indices into the table */
                    for (int i = 0; i < QK; i++) unpacked[i] = w->table[unpacked[i]];
                size_t g = (size_t)(b / bpg) * v.step;
                float d = fp16_to_f32(v.d[g]);
                float mn = kind == KIND_Q4A ? fp16_to_f32(v.m[g]) : 0.0f;
                for (int t = 0; t < nt; t++) {
                    size_t row = (size_t)(t0 + t);
                    int32_t isum = dot_block(wb, x->q + row * (size_t)x->n + (size_t)b * QK);
                    float xd = x->d[row * (size_t)nb + (size_t)b];
                    float *l = &lane[t][b % LANES];
                    *l = fmaf(d * xd, (float)isum, *l);
                    if (kind == KIND_Q4A) *l = fmaf(mn * xd, (float)x->s[row * (size_t)nb + (size_t)b], *l);
                }
            }
            for (int t = 0; t < nt; t++) out[(size_t)(t0 + t) * out_stride + (size_t)r] = sum_lanes(lane[t]);
        }
    }
}

static void dot_q4s_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4S, 0, x, w, r0, r1, out, out_stride);
}

static void dot_q4a_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4A, 0, x, w, r0, r1, out, out_stride);
}

static void dot_q8_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q8, 0, x, w, r0, r1, out, out_stride);
}

static void dot_q4s_r4_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4S, 1, x, w, r0, r1, out, out_stride);
}

static void dot_q4a_r4_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4A, 1, x, w, r0, r1, out, out_stride);
}

const kernel_set rq4_kernels_scalar = {
    "scalar", dot_q4s_scalar, dot_q4a_scalar, dot_q8_scalar, dot_q4s_r4_scalar, dot_q4a_r4_scalar,
};

void rq4_dot_q4t_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    dot_ref(KIND_Q4T, 0, x, w, r0, r1, out, out_stride);
}
