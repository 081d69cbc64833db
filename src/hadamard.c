/* The online rotation of the FFN down-projection's input (header field
 * ffn_rotation, docs/FORMAT.md): x <- Q x with
 * Q = kron(F, H_p) diag(s) / sqrt(n), n = hidden_dim = m * p. The exporter
 * stored w2 as W2 Q^T, so w2 sees the same product while its int4 weights and
 * its int8 activations have the outliers of x spread over all values.
 *
 * Value i = a*p + b is value b of segment a (a < m): kron(I_m, H_p) is a fast
 * Walsh-Hadamard transform of each segment (Sylvester's order:
 * H_2k = [[H_k, H_k], [H_k, -H_k]]), and kron(F, I_p) makes segment a of the
 * result the sum of the segments j times F[a][j]. Both steps run over
 * contiguous spans, so they vectorize; every value is computed in one fixed
 * order of float operations, so every clone gives the same bits. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* (static: clang makes target clones of a function with internal linkage
 * only, so the exported name below calls this one) */
VECTOR_CLONES static void rotate(const rq4_model *m, float *x, float *scratch) {
    size_t n = (size_t)m->config.hidden_dim, order = (size_t)m->ffn_factor_order, p = n / order;
    const float *s = m->ffn_signs, *f = m->ffn_factor;
    for (size_t i = 0; i < n; i++) x[i] *= s[i];
    /* butterflies at distance h; runs of 2h never cross a segment (p is a
     * power of two). The distances 1, 2 and 4 at once, written out: as
     * loops they are too short to vectorize, and the values see the same
     * additions in the same order. */
    size_t h = 1;
    if (p >= 8) {
        for (size_t at = 0; at < n; at += 8) {
            float *v = x + at;
            float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
            float a4 = v[4] + v[5], a5 = v[4] - v[5], a6 = v[6] + v[7], a7 = v[6] - v[7];
            float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
            float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
            v[0] = b0 + b4, v[1] = b1 + b5, v[2] = b2 + b6, v[3] = b3 + b7;
            v[4] = b0 - b4, v[5] = b1 - b5, v[6] = b2 - b6, v[7] = b3 - b7;
        }
        h = 8;
    }
    for (; h < p; h *= 2)
        for (size_t at = 0; at < n; at += 2 * h) {
            float *lo = x + at, *hi = lo + h;
            for (size_t k = 0; k < h; k++) {
                float u = lo[k], v = hi[k];
                lo[k] = u + v;
                hi[k] = u - v;
            }
        }
    if (order > 1) {
        for (size_t a = 0; a < order; a++) {
            float *out = scratch + a * p;
            const float *row = f + a * order;
            for (size_t b = 0; b < p; b++) out[b] = row[0] * x[b];
            for (size_t j = 1; j < order; j++)
                for (size_t b = 0; b < p; b++) out[b] += row[j] * x[j * p + b];
        }
        memcpy(x, scratch, n * sizeof *x);
    }
    float scale = (float)(1.0 / sqrt((double)n));
    for (size_t i = 0; i < n; i++) x[i] *= scale;
}

void rq4_rotate_ffn_input(const rq4_model *m, float *x, float *scratch) { rotate(m, x, scratch); }

rq4_status rq4_check_ffn_rotation(const float *signs, int n, const float *factor, int order, rq4_error *err) {
    if (order < 1 || order > RQ4_MAX_ROTATION_FACTOR || n % order != 0)
        return rq4_fail(err, RQ4_ERR_FORMAT, "tensor ffn_rotation.factor: order %d does not divide hidden_dim = %d "
                        "in [1, %d]", order, n, RQ4_MAX_ROTATION_FACTOR);
    int p = n / order;
    if (p & (p - 1))
        return rq4_fail(err, RQ4_ERR_FORMAT, "tensor ffn_rotation.factor: hidden_dim / order = %d is not a power of two",
                        p);
    for (int i = 0; i < n; i++)
        if (signs[i] != 1.0f && signs[i] != -1.0f)
            return rq4_fail(err, RQ4_ERR_FORMAT, "tensor ffn_rotation.signs: value %d is %.9g, not +1 or -1", i,
                            (double)signs[i]);
    for (int i = 0; i < order * order; i++)
        if (factor[i] != 1.0f && factor[i] != -1.0f)
            return rq4_fail(err, RQ4_ERR_FORMAT, "tensor ffn_rotation.factor: value %d is %.9g, not +1 or -1", i,
                            (double)factor[i]);
    /* a Hadamard matrix: its rows are orthogonal, F F^T = order I (exact in
     * integers), so Q is a rotation and W2 Q^T Q x = W2 x */
    for (int a = 0; a < order; a++)
        for (int b = a + 1; b < order; b++) {
            int dot = 0;
            for (int j = 0; j < order; j++) dot += (int)factor[a * order + j] * (int)factor[b * order + j];
            if (dot != 0)
                return rq4_fail(err, RQ4_ERR_FORMAT,
                                "tensor ffn_rotation.factor: rows %d and %d are not orthogonal (not a Hadamard matrix)",
                                a, b);
        }
    return RQ4_OK;
}
