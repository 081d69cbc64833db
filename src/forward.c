/* The forward pass: embeddings, rmsnorm, the matmuls (int8 activations
 * against the int4/int8 kernels, or the float path), RoPE, attention
 * (attention.c), SwiGLU and the classifier. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* RoPE frequencies, as Hugging Face's _compute_default_rope_parameters and
 * _compute_llama3_parameters (in double). */

void rq4_compute_inv_freq(const rq4_config *c, double *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim);
        if (c->rope_scaling == RQ4_ROPE_LLAMA3) {
            double factor = c->rope_factor, low = c->rope_low_freq_factor, high = c->rope_high_freq_factor;
            double old_len = c->rope_original_max_pos;
            double low_wavelen = old_len / low, high_wavelen = old_len / high;
            double wavelen = 2.0 * 3.14159265358979323846 / f;
            if (wavelen > low_wavelen) {
                f = f / factor;                      /* low frequencies: scaled */
            } else if (wavelen >= high_wavelen) {   /* medium: interpolated */
                double smooth = (old_len / wavelen - low) / (high - low);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }                                        /* high frequencies: kept */
        }
        inv_freq[i] = f;
    }
}

static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + (double)eps));
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * scale);
}

/* One row of a weight matrix as floats. */
static void dequantize_row(const tensor *w, int r, float *out) {
    const uint8_t *q = w->q + (size_t)r * w->row_bytes;
    if (w->type == RQ4_TYPE_F32) {
        memcpy(out, q, (size_t)w->cols * sizeof(float));
        return;
    }
    int interleaved = w->type == RQ4_TYPE_Q4S_R4 || w->type == RQ4_TYPE_Q4A_R4;
    int is_signed = w->type == RQ4_TYPE_Q4S || w->type == RQ4_TYPE_Q4S_R4;
    const uint16_t *d = w->d + (size_t)r * (size_t)w->ngroups;
    const uint16_t *mn = w->m ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
    size_t step = 1; /* between a row's scales */
    if (interleaved) { /* kernels.h: groups of R4 rows, blocks in 4-byte chunks */
        size_t at = (size_t)(r / R4) * (size_t)w->ngroups * R4 + (size_t)(r % R4);
        q = w->q + (size_t)(r / R4) * w->row_bytes;
        d = w->d + at;
        mn = w->m ? w->m + at : NULL;
        step = R4;
    }
    for (int i = 0; i < w->cols; i++) {
        int g = i / w->gs, v;
        size_t byte = (size_t)i / 2;
        if (interleaved) /* byte j of block b: chunk j / 4, byte j % 4 of it */
            byte = (size_t)(i / QK) * 64 + (size_t)((byte % 16) / 4 * R4 + (size_t)(r % R4)) * 4 + byte % 4;
        if (w->type == RQ4_TYPE_Q8) v = (int8_t)q[i];
        else if (w->table) v = w->table[(q[byte] >> (4 * (i & 1))) & 0x0F];
        else if (is_signed) v = (int)(((q[byte] >> (4 * (i & 1))) & 0x0F) ^ 8) - 8;
        else v = (q[byte] >> (4 * (i & 1))) & 0x0F;
        out[i] = fp16_to_f32(d[(size_t)g * step]) * (float)v;
        if (mn) out[i] += fp16_to_f32(mn[(size_t)g * step]);
    }
}

typedef struct quantize_job {
    qact *a;
    const float *x; /* (ntok, n) */
} quantize_job;

/* Tokens [start, end) of a quantize_job. */
static void quantize_tokens(const rq4_model *m, void *arg, int thread, int start, int end) {
    const quantize_job *j = arg;
    (void)m;
    (void)thread;
    for (int t = start; t < end; t++) rq4_quantize_act(j->a, t, j->x + (size_t)t * (size_t)j->a->n);
}

/* The input of a matmul as int8 blocks (cached per input), the tokens of a
 * prompt chunk quantized on all threads. */
static const qact *quantized_input(rq4_model *m, const float *x, int n, int ntok) {
    act_cache *c = &m->acts;
    qact *a = &c->a;
    if (c->x == x && a->n == n && a->ntok == ntok) return a;
    c->x = x;
    a->n = n;
    a->nb = n / QK;
    a->ntok = ntok;
    quantize_job j = {a, x};
    rq4_run_parallel(m, quantize_tokens, &j, ntok);
    if (rq4_kernels_read_tiles(m->kernels)) rq4_interleave_act(a);
    else a->ntile = 0; /* no kernel of this set reads them, nor are they allocated (memory.c) */
    return a;
}

/* Forgets the cached int8 copy of x (its floats are about to change). */
static void forget_input(act_cache *a) { a->x = NULL; }

/* Up to three matrices reading the same input, computed in one parallel job
 * (q, k, v; gate and up): fewer hand-offs between the threads. */
#define MAX_PARTS 3

typedef struct matmul_job {
    const float *x;                 /* (ntok, cols) */
    int ntok, n_parts;
    const tensor *w[MAX_PARTS];     /* (rows, cols) each */
    float *out[MAX_PARTS];          /* (ntok, rows) each */
    const qact *xq;                 /* x as int8 blocks, or NULL (float path) */
    int unit;                       /* rows per item: R4 when every part is interleaved */
} matmul_job;

/* Rows [start, end) of one matrix: out = x W^T. */
static void matmul_part(const rq4_model *m, const matmul_job *j, int part, int thread, int start, int end) {
    const tensor *w = j->w[part];
    float *out = j->out[part];
    size_t stride = (size_t)w->rows;
    if (w->type != RQ4_TYPE_F32 && j->xq) {
        const kernel_set *k = m->kernels;
        dot_fn dot = w->type == RQ4_TYPE_Q4S ? k->dot_q4s : w->type == RQ4_TYPE_Q4A ? k->dot_q4a
                   : w->type == RQ4_TYPE_Q4S_R4 ? k->dot_q4s_r4 : w->type == RQ4_TYPE_Q4A_R4 ? k->dot_q4a_r4
                   : w->type == RQ4_TYPE_Q4T ? rq4_kernels_q4t(k) : k->dot_q8;
        qmat mat = {w->q, w->d, w->m, w->row_bytes, w->cols, w->gs, w->ngroups, w->rows, w->table,
                    m->small_pages};
        dot(j->xq, &mat, start, end, out, stride);
        return;
    }
    /* float path (reference mode, or F32 weights): the row in float, dotted in double */
    float *row = w->type == RQ4_TYPE_F32 ? NULL : m->row + (size_t)thread * (size_t)m->max_cols;
    for (int r = start; r < end; r++) {
        const float *wr = (const float *)(w->q + (size_t)r * w->row_bytes);
        if (row) {
            dequantize_row(w, r, row);
            wr = row;
        }
        for (int t = 0; t < j->ntok; t++) {
            const float *xt = j->x + (size_t)t * (size_t)w->cols;
            double sum = 0.0;
            for (int i = 0; i < w->cols; i++) sum += (double)wr[i] * xt[i];
            out[(size_t)t * stride + (size_t)r] = (float)sum;
        }
    }
}

/* Items [start, end) of the job: the rows of its matrices, one after the other. */
static void matmul_rows(const rq4_model *m, void *arg, int thread, int start, int end) {
    const matmul_job *j = arg;
    start *= j->unit;
    end *= j->unit;
    for (int p = 0, base = 0; p < j->n_parts; base += j->w[p]->rows, p++) {
        int lo = start > base ? start : base, hi = end < base + j->w[p]->rows ? end : base + j->w[p]->rows;
        if (lo < hi) matmul_part(m, j, p, thread, lo - base, hi - base);
    }
}

/* out[i] (ntok, w[i]->rows) = x (ntok, cols) times w[i]^T for i < n, every
 * weight row read once for all ntok tokens, the rows spread over the threads. */
static void matmul_n(rq4_model *m, const float *x, int ntok, int n, const tensor *const *w, float *const *out) {
    matmul_job j = {x, ntok, n, {0}, {0}, NULL, R4};
    int rows = 0;
    for (int i = 0; i < n; i++) {
        j.w[i] = w[i];
        j.out[i] = out[i];
        if (!m->float_activations && w[i]->type != RQ4_TYPE_F32 && !j.xq)
            j.xq = quantized_input(m, x, w[i]->cols, ntok);
        rows += w[i]->rows;
        /* the interleaved kernels compute whole groups of R4 rows: a chunk
         * boundary inside one would have two threads compute it */
        if ((w[i]->type != RQ4_TYPE_Q4S_R4 && w[i]->type != RQ4_TYPE_Q4A_R4) || w[i]->rows % R4) j.unit = 1;
    }
    rows /= j.unit;
    /* a prompt chunk's matmul: 8 chunks per thread, as each chunk of rows is
     * long and an uneven end costs more than the extra hand-offs; decoding
     * keeps 4 (its chunks are short) */
    rq4_run_parallel_chunks(m, matmul_rows, &j, rows, ntok > 1 ? 8 : 4);
}

static void matmul(rq4_model *m, float *out, const float *x, const tensor *w, int ntok) {
    matmul_n(m, x, ntok, 1, &w, &out);
}

/* Rotate-half RoPE on every head of vec (n_heads_here, head_dim) at one
 * position: value i pairs with value i + head_dim/2. cs = cos (half), sin (half). */
static void apply_rope(float *vec, int n_heads_here, int head_dim, const float *cs) {
    int half = head_dim / 2;
    const float *sn = cs + half;
    for (int h = 0; h < n_heads_here; h++) {
        float *v = vec + (size_t)h * (size_t)head_dim;
        for (int i = 0; i < half; i++) {
            float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * cs[i] - x1 * sn[i];
            v[i + half] = x1 * cs[i] + x0 * sn[i];
        }
    }
}

/* Tokens [start, end) of the SwiGLU product: hb = silu(hb) * hb2 (then
 * rotated for w2 when the file asks, hadamard.c), with
 * silu(g) = g / (1 + e^-g) written through e^-|g| (exp_nonpositive), so the
 * loop vectorizes: g >= 0: g / (1 + e^-g); g < 0: g e^g / (1 + e^g). */
VECTOR_CLONES static void swiglu_tokens(const rq4_model *m, void *arg, int thread, int start, int end) {
    (void)arg;
    (void)thread;
    size_t hidden = (size_t)m->config.hidden_dim;
    float *hb = m->hb;
    const float *hb2 = m->hb2;
    for (size_t i = (size_t)start * hidden; i < (size_t)end * hidden; i++) {
        float g = hb[i], e = exp_nonpositive(g < 0.0f ? g : -g);
        hb[i] = (g < 0.0f ? g * e : g) / (1.0f + e) * hb2[i];
    }
    if (m->config.ffn_rotation == RQ4_FFN_ROTATION_HADAMARD) /* hb2's row is spent: the scratch */
        for (int t = start; t < end; t++) rq4_rotate_ffn_input(m, hb + (size_t)t * hidden, m->hb2 + (size_t)t * hidden);
}

/* Token row r of the embedding table, dequantized (no float copy of the table). */
static void embed(const rq4_model *m, int token, float *out) { dequantize_row(&m->tok_embeddings, token, out); }

/* The forward pass of one chunk (internal.h). */
void rq4_forward_chunk(rq4_model *m, const int32_t *tokens, int ntok, int pos0, float *logits, int all_logits) {
    const rq4_config *c = &m->config;
    int dim = c->dim, hd = c->head_dim, half = hd / 2;
    float *x = m->x;
    forget_input(&m->acts);

    /* token embeddings into the residual stream */
    for (int t = 0; t < ntok; t++) embed(m, tokens[t], x + (size_t)t * (size_t)dim);

    /* cos and sin of every RoPE angle of each token's position */
    for (int t = 0; t < ntok; t++) {
        float *cs = m->rope + (size_t)t * (size_t)hd;
        for (int i = 0; i < half; i++) {
            double angle = (double)(pos0 + t) * m->inv_freq[i];
            cs[i] = (float)cos(angle);
            cs[half + i] = (float)sin(angle);
        }
    }

    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *w = &m->layers[l];

        /* attention rmsnorm */
        for (int t = 0; t < ntok; t++)
            rmsnorm(m->xb + (size_t)t * dim, x + (size_t)t * dim, w->attention_norm, dim, c->norm_eps);
        forget_input(&m->acts);

        /* q, k, v projections */
        const tensor *qkv[] = {&w->wq, &w->wk, &w->wv};
        float *qkv_out[] = {m->q, m->k, m->v};
        matmul_n(m, m->xb, ntok, 3, qkv, qkv_out);

        /* RoPE on q and k, then k and v into the cache at their positions */
        for (int t = 0; t < ntok; t++) {
            const float *cs = m->rope + (size_t)t * (size_t)hd;
            apply_rope(m->q + (size_t)t * m->q_dim, c->n_heads, hd, cs);
            apply_rope(m->k + (size_t)t * m->kv_dim, c->n_kv_heads, hd, cs);
            rq4_store_kv(m, l, pos0 + t, m->k + (size_t)t * m->kv_dim, m->v + (size_t)t * m->kv_dim);
        }

        /* multi-head (grouped-query) causal attention, into xb (ntok, q_dim) */
        rq4_attention(m, l, pos0, ntok);
        forget_input(&m->acts);

        /* output projection and residual */
        matmul(m, m->xb2, m->xb, &w->wo, ntok);
        for (size_t i = 0; i < (size_t)ntok * dim; i++) x[i] += m->xb2[i];

        /* ffn rmsnorm */
        for (int t = 0; t < ntok; t++)
            rmsnorm(m->xb + (size_t)t * dim, x + (size_t)t * dim, w->ffn_norm, dim, c->norm_eps);
        forget_input(&m->acts);

        /* SwiGLU: w2(silu(w1 x) * w3 x) */
        const tensor *gate_up[] = {&w->w1, &w->w3};
        float *gate_up_out[] = {m->hb, m->hb2};
        matmul_n(m, m->xb, ntok, 2, gate_up, gate_up_out);
        rq4_run_parallel(m, swiglu_tokens, NULL, ntok);
        forget_input(&m->acts);
        matmul(m, m->xb2, m->hb, &w->w2, ntok);
        for (size_t i = 0; i < (size_t)ntok * dim; i++) x[i] += m->xb2[i];
    }

    if (!logits) return;
    /* final rmsnorm and the classifier, for every token or the last one */
    int first = all_logits ? 0 : ntok - 1, n_out = ntok - first;
    for (int t = first; t < ntok; t++)
        rmsnorm(m->xb + (size_t)(t - first) * dim, x + (size_t)t * dim, m->norm, dim, c->norm_eps);
    forget_input(&m->acts);
    matmul(m, logits, m->xb, &m->output, n_out);
}
