/* Attention: the KV cache layout, f16 conversion into it, scores, softmax
 * and the weighted sum of the values, for the query heads of a GQA group
 * together. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* fp32 -> fp16, round to nearest even; overflow -> inf, NaN stays NaN. */
static uint16_t f32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0)); /* inf, nan */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                     /* below the smallest normal half: subnormal */
        if (ax < 0x33000000u) return (uint16_t)sign;            /* < 2^-25: rounds to zero */
        uint32_t man = (ax & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(ax >> 23);                      /* 14..24 */
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((ax >> 13) - (112u << 10)), rem = ax & 0x1fffu; /* rebias exponent 127 -> 15 */
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;       /* may carry into the exponent: fine */
    return (uint16_t)(sign | h);
}

/* 16 keys' value i (one block of key_at's layout) as floats, into *out (not
 * returned: a 64-byte vector return would tie the ABI to AVX-512) */
static inline __attribute__((always_inline)) void key_column(const void *block, int f16, int i, f32x16 *out) {
    if (!f16) {
        memcpy(out, (const float *)block + 16 * i, sizeof *out);
        return;
    }
    const uint16_t *src = (const uint16_t *)block + 16 * i;
    float v[16];
    for (int k = 0; k < 16; k++) v[k] = fp16_to_f32(src[k]);
    memcpy(out, v, sizeof v);
}

/* Scores of nq (1..4) query heads (q: nq rows of hd) against the 16 keys of one
 * block: out[h * stride + k] = (q_h . key k) * scale for the first nk keys. */
static inline __attribute__((always_inline)) void scores16(const float *q, int nq, int hd, const void *block, int f16,
                                                           float scale, float *out, int stride, int nk) {
    f32x16 acc[4] = {{0}};
    for (int i = 0; i < hd; i++) {
        f32x16 kv;
        key_column(block, f16, i, &kv);
        for (int h = 0; h < 4; h++)
            if (h < nq) acc[h] += q[(size_t)h * hd + i] * kv;
    }
    for (int h = 0; h < nq; h++)
        for (int k = 0; k < nk; k++) out[(size_t)h * stride + k] = acc[h][k] * scale;
}

/* inlined into attend's clones, so it is vectorized for their targets too */
static inline __attribute__((always_inline)) void softmax(float *x, int n) {
    /* the maximum, 16 lanes at a time (exact in any order; a NaN loses every
     * comparison), written with vectors: GCC leaves the plain loop scalar */
    f32x16 top;
    for (int j = 0; j < 16; j++) top[j] = x[0];
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        f32x16 v;
        memcpy(&v, x + i, sizeof v);
        i32x16 gt = v > top;
        top = (f32x16)((gt & (i32x16)v) | (~gt & (i32x16)top));
    }
    float max = x[0];
    for (int j = 0; j < 16; j++) max = top[j] > max ? top[j] : max;
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    for (i = 0; i < n; i++) x[i] = exp_nonpositive(x[i] - max); /* vectorizes, as in swiglu_tokens */
    f32x16 part = {0}; /* 16 interleaved partial sums: a fixed order */
    for (i = 0; i + 16 <= n; i += 16) {
        f32x16 v;
        memcpy(&v, x + i, sizeof v);
        part += v;
    }
    float lane[16];
    memcpy(lane, &part, sizeof lane);
    float sum = sum_lanes(lane);
    for (; i < n; i++) sum += x[i];
    float inv = 1.0f / sum;
    for (i = 0; i < n; i++) x[i] *= inv;
}


/* n values of the cache from element `at`, as floats (f16: converted into tmp). */
static inline const float *cache_row(const void *cache, int f16, size_t at, int n, float *tmp) {
    if (!f16) return (const float *)cache + at;
    const uint16_t *src = (const uint16_t *)cache + at;
    for (int i = 0; i < n; i++) tmp[i] = fp16_to_f32(src[i]);
    return tmp;
}

/* out += a * x */
static inline void add_scaled(float *out, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) out[i] += a * x[i];
}

/* out += a[0] * x0 + ... + a[3] * x3, added left to right: the same rounding
 * as four add_scaled calls, with a quarter of the loads and stores of out. */
static inline void add_scaled4(float *out, const float *a, const float *x0, const float *x1, const float *x2,
                               const float *x3, int n) {
    for (int i = 0; i < n; i++) out[i] = out[i] + a[0] * x0[i] + a[1] * x1[i] + a[2] * x2[i] + a[3] * x3[i];
}

/* out (NH rows of 16 * HDV) = the sum over positions p < n of att[h][p] times
 * value row p (rows from `at`, 16 * HDV apart), with the sums in registers:
 * the same operations in the same order as add_scaled4 (then add_scaled for
 * the last n % 4) on a zeroed out, so the same bits. */
static inline __attribute__((always_inline)) void weighted_values(const float *att, int att_stride, const int NH,
                                                                  const int HDV, int n, const void *cache, int f16,
                                                                  size_t at, float *tmp, float *out) {
    const int hd = 16 * HDV;
    f32x16 acc[4][8] = {{{0}}};
    int p = 0;
    for (; p + 4 <= n; p += 4) {
        const float *v[4];
        for (int j = 0; j < 4; j++) v[j] = cache_row(cache, f16, at + (size_t)(p + j) * hd, hd, tmp + j * hd);
        for (int h = 0; h < NH; h++) {
            const float *a = att + (size_t)h * att_stride + p;
            for (int c = 0; c < HDV; c++) {
                f32x16 x[4];
                for (int j = 0; j < 4; j++) memcpy(&x[j], v[j] + 16 * c, sizeof x[j]);
                acc[h][c] = acc[h][c] + a[0] * x[0] + a[1] * x[1] + a[2] * x[2] + a[3] * x[3];
            }
        }
    }
    for (; p < n; p++) {
        const float *v = cache_row(cache, f16, at + (size_t)p * hd, hd, tmp);
        for (int h = 0; h < NH; h++)
            for (int c = 0; c < HDV; c++) {
                f32x16 x;
                memcpy(&x, v + 16 * c, sizeof x);
                acc[h][c] = acc[h][c] + att[(size_t)h * att_stride + p] * x;
            }
    }
    for (int h = 0; h < NH; h++) memcpy(out + (size_t)h * hd, acc[h], (size_t)hd * sizeof(float));
}

/* The key cache holds each head's keys transposed in blocks of 16 positions:
 * value i of position p at key_at(p) + 16 * i, so one vector holds value i of
 * 16 consecutive keys and the scores of 16 positions are 16 lanes. */
static inline size_t key_at(const rq4_model *m, int layer, int kv_head, int pos) {
    return kv_at(m, layer, kv_head, pos / 16 * 16) + (size_t)(pos % 16);
}

/* n values into the cache from element `at`, `stride` elements apart */
static void cache_put(void *cache, int kv_type, size_t at, size_t stride, const float *src, int n) {
    if (kv_type == RQ4_KV_F16) {
        uint16_t *dst = (uint16_t *)cache + at;
        for (int i = 0; i < n; i++) dst[(size_t)i * stride] = f32_to_fp16(src[i]);
    } else {
        float *dst = (float *)cache + at;
        for (int i = 0; i < n; i++) dst[(size_t)i * stride] = src[i];
    }
}

/* whether attend() runs the SIMD loops: a set has them and the heads fit */
static int simd_attention(const rq4_model *m) {
    return m->attention && m->config.head_dim % m->attention->hd_multiple == 0;
}

typedef struct attention_job {
    int layer;
    int pos0;            /* position of the chunk's first token */
    int ntok;            /* tokens in the chunk */
    int heads_per_item;  /* kv_mul (a whole GQA group), or 1 when that leaves threads idle */
    int tile;            /* tokens per item (attention_tile) */
} attention_job;

/* The SIMD path of one item: the rows (token, query head) of tokens t0 ..
 * t0 + nt - 1 and query heads h0 .. h0 + nh - 1, ATT_ROWS at a time over the
 * keys and then over the values, each row with its own causal length. Every
 * row's arithmetic is the portable loops' (attention.h). */
static void attend_rows_simd(const rq4_model *m, const attention_job *j, float *att, int t0, int nt, int h0, int nh) {
    const rq4_config *c = &m->config;
    int hd = c->head_dim, kv_mul = c->n_heads / c->n_kv_heads, f16 = c->kv_type == RQ4_KV_F16;
    const size_t elem = f16 ? sizeof(uint16_t) : sizeof(float);
    size_t head_off = kv_at(m, j->layer, h0 / kv_mul, 0) * elem; /* bytes to this kv head's position 0 */
    const char *keys = (const char *)m->key_cache + head_off, *values = (const char *)m->value_cache + head_off;
    float scale = (float)(1.0 / sqrt((double)hd));
    int rows = nt * nh;
    for (int r0 = 0; r0 < rows; r0 += ATT_ROWS) {
        int nr = rows - r0 < ATT_ROWS ? rows - r0 : ATT_ROWS, n[ATT_ROWS], most = 0;
        const float *q[ATT_ROWS];
        float *a[ATT_ROWS], *out[ATT_ROWS];
        for (int i = 0; i < nr; i++) {
            int r = r0 + i, t = t0 + r / nh, h = h0 + r % nh;
            q[i] = m->q + (size_t)t * (size_t)m->q_dim + (size_t)h * (size_t)hd;
            out[i] = m->xb + (size_t)t * (size_t)m->q_dim + (size_t)h * (size_t)hd;
            a[i] = att + (size_t)r * (size_t)c->n_ctx;
            n[i] = j->pos0 + t + 1;
            most = n[i] > most ? n[i] : most;
        }
        /* scores up to the last row's position for every row: the earlier
         * tokens' extra ones are past their n, never read */
        m->attention->scores(q, nr, hd, keys, f16, scale, a, most);
        for (int i = 0; i < nr; i++) m->attention->softmax(a[i], n[i]);
        m->attention->values((const float *const *)a, n, nr, hd, values, f16, out);
    }
}

/* Items [start, end) of (tile of j->tile tokens, group of heads_per_item
 * query heads): causal attention over the cached positions 0..pos, into xb.
 * A group lies within the query heads sharing one kv head (GQA), so each key
 * and value row is read (and converted from f16) once for the group and the
 * tile's tokens; each query head's arithmetic is the same whatever the
 * grouping. */
VECTOR_CLONES static void attend(const rq4_model *m, void *arg, int thread, int start, int end) {
    const attention_job *j = arg;
    const rq4_config *c = &m->config;
    int hd = c->head_dim, kv_mul = c->n_heads / c->n_kv_heads, f16 = c->kv_type == RQ4_KV_F16;
    int nh = j->heads_per_item, items_per_tile = c->n_heads / nh;
    float *att = m->att + (size_t)thread * attention_scratch(c, c->n_ctx); /* (rows, n_ctx) scores */
    float *tmp = att + attention_rows(c) * (size_t)c->n_ctx;       /* (4, head_dim) f16 rows as floats */
    float scale = (float)(1.0 / sqrt((double)hd));
    for (int item = start; item < end; item++) {
        int t0 = item / items_per_tile * j->tile, h0 = item % items_per_tile * nh;
        int nt = j->ntok - t0 < j->tile ? j->ntok - t0 : j->tile;
        if (simd_attention(m)) {
            attend_rows_simd(m, j, att, t0, nt, h0, nh);
            continue;
        }
        for (int t = t0; t < t0 + nt; t++) {
            int pos = j->pos0 + t;
            const float *q = m->q + (size_t)t * (size_t)m->q_dim + (size_t)h0 * (size_t)hd;
            float *out = m->xb + (size_t)t * (size_t)m->q_dim + (size_t)h0 * (size_t)hd;
            size_t head_off = kv_at(m, j->layer, h0 / kv_mul, 0), row = (size_t)hd; /* position p at head_off + p*row */
            /* scores of each query head against every key up to this position, 16
             * keys at a time: lane k of a vector is key p0 + k (see key_at), and each
             * score is its products added in order of i */
            for (int p0 = 0; p0 <= pos; p0 += 16) {
                int nk = pos + 1 - p0 < 16 ? pos + 1 - p0 : 16;
                const void *kb = f16 ? (const void *)((const uint16_t *)m->key_cache + head_off + (size_t)p0 * row)
                                     : (const void *)((const float *)m->key_cache + head_off + (size_t)p0 * row);
                for (int h = 0; h < nh; h += 4) {
                    const float *qh = q + (size_t)h * hd;
                    float *ah = att + (size_t)h * c->n_ctx + p0;
                    switch (nh - h) { /* a constant head count: no test per head and dimension */
                    case 1: scores16(qh, 1, hd, kb, f16, scale, ah, c->n_ctx, nk); break;
                    case 2: scores16(qh, 2, hd, kb, f16, scale, ah, c->n_ctx, nk); break;
                    case 3: scores16(qh, 3, hd, kb, f16, scale, ah, c->n_ctx, nk); break;
                    default: scores16(qh, 4, hd, kb, f16, scale, ah, c->n_ctx, nk); break;
                    }
                }
            }
            for (int h = 0; h < nh; h++) softmax(att + (size_t)h * c->n_ctx, pos + 1);
            /* weighted sums of the values, four positions per pass */
            const void *vc = m->value_cache;
            if (hd == 64) { /* the Llama 3.2 and SmolLM2 heads: sums in registers */
                switch (nh) {
                case 1: weighted_values(att, c->n_ctx, 1, 4, pos + 1, vc, f16, head_off, tmp, out); continue;
                case 2: weighted_values(att, c->n_ctx, 2, 4, pos + 1, vc, f16, head_off, tmp, out); continue;
                case 3: weighted_values(att, c->n_ctx, 3, 4, pos + 1, vc, f16, head_off, tmp, out); continue;
                case 4: weighted_values(att, c->n_ctx, 4, 4, pos + 1, vc, f16, head_off, tmp, out); continue;
                }
            }
            memset(out, 0, (size_t)nh * (size_t)hd * sizeof(float));
            int p = 0;
            for (; p + 4 <= pos + 1; p += 4) {
                size_t v = head_off + (size_t)p * row;
                const float *v0 = cache_row(m->value_cache, f16, v, hd, tmp);
                const float *v1 = cache_row(m->value_cache, f16, v + row, hd, tmp + hd);
                const float *v2 = cache_row(m->value_cache, f16, v + 2 * row, hd, tmp + 2 * hd);
                const float *v3 = cache_row(m->value_cache, f16, v + 3 * row, hd, tmp + 3 * hd);
                for (int h = 0; h < nh; h++)
                    add_scaled4(out + (size_t)h * hd, att + (size_t)h * c->n_ctx + p, v0, v1, v2, v3, hd);
            }
            for (; p <= pos; p++) {
                const float *v = cache_row(m->value_cache, f16, head_off + (size_t)p * row, hd, tmp);
                for (int h = 0; h < nh; h++) add_scaled(out + (size_t)h * hd, att[(size_t)h * c->n_ctx + p], v, hd);
            }
        }
    }
}

void rq4_store_kv(rq4_model *m, int layer, int pos, const float *k, const float *v) {
    const rq4_config *c = &m->config;
    int hd = c->head_dim;
    for (int h = 0; h < c->n_kv_heads; h++) {
        size_t src = (size_t)h * (size_t)hd;
        cache_put(m->key_cache, c->kv_type, key_at(m, layer, h, pos), 16, k + src, hd);
        cache_put(m->value_cache, c->kv_type, kv_at(m, layer, h, pos), 1, v + src, hd);
    }
}

void rq4_attention(rq4_model *m, int layer, int pos0, int ntok) {
    const rq4_config *c = &m->config;
    attention_job aj = {layer, pos0, ntok, c->n_heads / c->n_kv_heads, 1};
    if (ntok * c->n_kv_heads < 2 * c->n_threads) aj.heads_per_item = 1; /* decoding: one head per item */
    if (simd_attention(m)) aj.tile = attention_tile(aj.heads_per_item);
    int tiles = (ntok + aj.tile - 1) / aj.tile;
    rq4_run_parallel(m, attend, &aj, tiles * (c->n_heads / aj.heads_per_item));
}
