/* Internal to the library: the model struct every source file of src/
 * shares, the buffer table, and the helpers more than one file needs. Not
 * installed, not part of the API (runq4.h is). Functions declared here have
 * external linkage, so they carry the rq4_ prefix too.
 */
#ifndef RUNQ4_INTERNAL_H
#define RUNQ4_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "runq4.h"

/* Tokens of a prompt pushed through each layer together: every weight row is
 * read once per chunk instead of once per token. */
#define RQ4_BATCH 64
_Static_assert(RQ4_BATCH % 32 == 0, "the activation tiles (tiled_tokens) must fit in a chunk's buffers");

/* ---------------------------------------------------------------------------
 * The model */

/* A view of one tensor of the mapping. */
typedef struct tensor {
    const char *name;     /* the entry name (for messages) */
    int type;             /* an rq4_type */
    int gs;               /* group size (quantized) */
    int rows, cols;
    int ngroups;          /* ceil(cols / gs) */
    size_t row_bytes;     /* bytes of one row of values (Q4S_R4, Q4A_R4: of one group of RQ4_INTERLEAVE rows) */
    const uint8_t *q;     /* (rows, row_bytes) packed values; F32: the floats; interleaved: (row groups, row_bytes) */
    const uint16_t *d;    /* (rows, ngroups) fp16 scales; interleaved: (row groups, ngroups, RQ4_INTERLEAVE) */
    const uint16_t *m;    /* minimums as d, Q4A and Q4A_R4 only */
    const int8_t *table;  /* Q4T only: its RQ4_Q4T_LEVELS levels */
} tensor;

typedef struct layer_weights {
    const float *attention_norm; /* (dim) */
    const float *ffn_norm;       /* (dim) */
    tensor wq;  /* (n_heads*head_dim, dim) */
    tensor wk;  /* (n_kv_heads*head_dim, dim) */
    tensor wv;  /* (n_kv_heads*head_dim, dim) */
    tensor wo;  /* (dim, n_heads*head_dim) */
    tensor w1;  /* (hidden_dim, dim) gate */
    tensor w2;  /* (dim, hidden_dim) down */
    tensor w3;  /* (hidden_dim, dim) up */
} layer_weights;

/* The int8 activations of one float input (blocks of QK whatever the
 * weights' group sizes: wq, wk and wv read one copy). */
typedef struct act_cache {
    const float *x;         /* (ntok, n) the input they were quantized from; NULL: none */
    qact a;                 /* q, qp, qt (B, max_cols); d, s, dt, st (B, max_cols/QK) */
} act_cache;

typedef struct pool pool;

struct rq4_model {
    rq4_config config;
    int fd;
    uint8_t *map;         /* the whole file, read-only */
    size_t map_size;
    int small_pages;      /* the mapping is in 4 KiB pages, not 2 MB ones (loader.c's huge_mapped) */
    int32_t n_entries;
    uint32_t *by_name;    /* (n_entries) entry indices sorted by name */

    /* weights: views into the mapping */
    tensor tok_embeddings;  /* (vocab, dim) */
    tensor output;          /* (vocab, dim): tok_embeddings when tied */
    const float *norm;      /* (dim) */
    layer_weights *layers;  /* (n_layers) */
    /* config.ffn_rotation HADAMARD (hadamard.c): views of its entries */
    const float *ffn_signs;   /* (hidden_dim) +1 or -1 */
    const float *ffn_factor;  /* (ffn_factor_order, ffn_factor_order) a Hadamard matrix */
    int ffn_factor_order;

    const kernel_set *kernels;
    const rq4_attention_loops *attention; /* attend()'s SIMD loops (kernels/attention.h); NULL: the portable ones */
    int float_activations;
    int q_dim, kv_dim;      /* n_heads*head_dim, n_kv_heads*head_dim */
    int max_cols;           /* the longest matmul input: max(dim, q_dim, hidden_dim) */
    double *inv_freq;       /* (head_dim/2) RoPE inverse frequencies */

    /* activations of one chunk of up to RQ4_BATCH tokens */
    float *x;       /* (B, dim) residual stream */
    float *xb;      /* (B, max(dim, q_dim)) normed input / attention output */
    float *xb2;     /* (B, dim) output of wo and w2 */
    float *q;       /* (B, q_dim) queries */
    float *k;       /* (B, kv_dim) keys before they go to the cache */
    float *v;       /* (B, kv_dim) values */
    float *hb;      /* (B, hidden_dim) gate */
    float *hb2;     /* (B, hidden_dim) up */
    float *rope;    /* (B, head_dim) cos (first half) and sin (second half) per token */
    act_cache acts; /* int8 copy of the current matmul input */
    float *att;     /* (n_threads, attention_scratch) per thread: scores (attention_rows, n_ctx), 4 rows (4, head_dim) */
    float *row;     /* (n_threads, max cols) a dequantized weight row (float mode) */

    /* kv cache, f32 or f16 */
    void *key_cache;    /* (layer, n_kv_heads, kv_len / 16, head_dim, 16): see key_at */
    void *value_cache;  /* (layer, n_kv_heads, kv_len, head_dim) */
    int pos;            /* tokens in the cache */

    pool *pool;         /* NULL with one thread */
};

/* ---- errors (error.c) ----
 * Every failure of the library: fills err (when not NULL) with the code and a
 * message of one line (newlines in what went in become spaces, and none is
 * added: the caller decides how to print it) and returns the code. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
rq4_status rq4_fail(rq4_error *err, rq4_status code, const char *fmt, ...);
rq4_status rq4_succeed(rq4_error *err);

/* ---- the file (loader.c) ---- */

/* Maps the file, checks its header and every table entry, fills m->config
 * from the header and sorts the entries by name. */
rq4_status rq4_load_file(rq4_model *m, const char *path, rq4_error *err);

/* Finds every tensor the forward pass reads (m->layers allocated here), with
 * the shapes m->config and m->q_dim, m->kv_dim say. */
rq4_status rq4_map_weights(rq4_model *m, rq4_error *err);

/* ---- memory (memory.c) ---- */

/* Positions the caches hold per head: n_ctx rounded up to a whole block of 16
 * keys (see key_at in attention.c). */
static inline int64_t kv_len(int n_ctx) { return ((int64_t)n_ctx + 15) / 16 * 16; }

/* Saturating arithmetic for the memory estimate: a context too large for
 * the machine gives UINT64_MAX (refused), never a wrapped small number. */
static inline uint64_t sat_add_u64(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
static inline uint64_t sat_mul_u64(uint64_t a, uint64_t b) { return a != 0 && b > UINT64_MAX / a ? UINT64_MAX : a * b; }

/* Element offset of (layer, kv head, position) in the value cache (and of
 * position pos / 16 * 16's block in the key cache, see key_at in attention.c): head-major,
 * so attention streams each head's rows from one contiguous block (a row-major
 * (position, kv_dim) cache made it read head_dim of every kv_dim values, and
 * decoding spent more time there than in the matmuls). */
static inline size_t kv_at(const rq4_model *m, int layer, int kv_head, int pos) {
    const rq4_config *c = &m->config;
    return (((size_t)layer * (size_t)c->n_kv_heads + (size_t)kv_head) * (size_t)kv_len(c->n_ctx) + (size_t)pos) *
           (size_t)c->head_dim;
}

/* Tokens per attention item when items take nh query heads each and the
 * AVX2 loops run: enough for ATT_ROWS rows (kernels/attention.h), so every
 * pass over a kv head's keys and values serves that many. */
static inline int attention_tile(int nh) { return (ATT_ROWS + nh - 1) / nh; }

/* Rows of scores a thread holds at once: a tile of a whole GQA group (at
 * least the ATT_ROWS of a tile of one head). */
static inline size_t attention_rows(const rq4_config *c) {
    int kv_mul = c->n_heads / c->n_kv_heads;
    return (size_t)kv_mul * (size_t)attention_tile(kv_mul);
}

/* Floats of attention scratch per thread: the scores, (attention_rows,
 * n_ctx), then 4 value rows (4, head_dim). */
static inline size_t attention_scratch(const rq4_config *c, int n_ctx) {
    return attention_rows(c) * (size_t)n_ctx + 4 * (size_t)c->head_dim;
}

/* Bytes rq4_open allocates besides the mapping, for this context length, KV
 * type and thread count. */
uint64_t rq4_memory_for(const rq4_config *c, int n_entries, int n_ctx, int kv_type, int n_threads);

/* Allocates every buffer of the table (memory.c) for m->config; frees them. */
rq4_status rq4_allocate_buffers(rq4_model *m, rq4_error *err);
void rq4_free_buffers(rq4_model *m);

/* ---- threads (threadpool.c) ---- */

/* A job over the items [start, end) on thread `thread` (0: the caller). */
typedef void (*job_fn)(const rq4_model *m, void *arg, int thread, int start, int end);

/* min(CPUs this process may run on, RQ4_MAX_THREADS): n_threads = 0. */
int rq4_default_threads(void);
rq4_status rq4_build_pool(pool **out, int n_workers, rq4_error *err);
void rq4_free_pool(pool *p);

/* Runs fn over the items [0, count) on all threads, in about `per_thread`
 * chunks per thread, and returns when all are done. */
void rq4_run_parallel_chunks(const rq4_model *m, job_fn fn, void *arg, int count, int per_thread);

/* About 4 chunks per thread: small enough to even out, big enough to be cheap. */
static inline void rq4_run_parallel(const rq4_model *m, job_fn fn, void *arg, int count) {
    rq4_run_parallel_chunks(m, fn, arg, count, 4);
}

/* ---- attention (attention.c) ---- */

/* Token t's keys and values (kv_dim each, after RoPE) into the cache of
 * `layer` at position pos. */
void rq4_store_kv(rq4_model *m, int layer, int pos, const float *k, const float *v);

/* Causal grouped-query attention of the chunk's ntok queries (m->q) at
 * positions pos0.. over the cache of `layer`, into m->xb (ntok, q_dim). */
void rq4_attention(rq4_model *m, int layer, int pos0, int ntok);

/* ---- the FFN down-projection's input rotation (hadamard.c) ---- */

/* x (hidden_dim) <- Q x for the model's ffn_rotation HADAMARD; scratch:
 * hidden_dim floats it may overwrite. */
void rq4_rotate_ffn_input(const rq4_model *m, float *x, float *scratch);

/* Checks the entries of an ffn_rotation HADAMARD: signs (n) all +1 or -1;
 * factor (order, order) a Hadamard matrix whose order divides n with a power
 * of two as the quotient. */
rq4_status rq4_check_ffn_rotation(const float *signs, int n, const float *factor, int order, rq4_error *err);

/* ---- forward pass (forward.c) ---- */

/* RoPE inverse frequencies (head_dim / 2 of them). */
void rq4_compute_inv_freq(const rq4_config *c, double *inv_freq);

/* The forward pass of one chunk of ntok <= RQ4_BATCH tokens at positions
 * pos0 .. pos0+ntok-1. logits: NULL, or (n_out, vocab) where n_out is ntok
 * (all_logits) or 1 (the chunk's last token). */
void rq4_forward_chunk(rq4_model *m, const int32_t *tokens, int ntok, int pos0, float *logits, int all_logits);

/* ---- math shared by attention.c and forward.c ---- */

typedef float f32x16 __attribute__((vector_size(64)));    /* GCC/clang vectors: lane-wise ops */
typedef int32_t i32x16 __attribute__((vector_size(64)));

#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute) && defined(__ELF__)
#if __has_attribute(target_clones)
/* Compiled also for AVX2 and AVX-512 (chosen at load time), for the
 * compute-bound loops: prompt attention, the SwiGLU product and the rotation
 * of w2's input (static functions: clang clones no others). No fma is formed (-ffp-contract=off /
 * ISO C mode), so every clone computes the same lane-wise operations in the
 * same order: same bits. */
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef VECTOR_CLONES
#define VECTOR_CLONES
#endif

/* e^x for x <= 0: the method and its constants in kernels/attention.h. */
static inline float exp_nonpositive(float x) {
    x = x >= EXP_FLOOR ? x : EXP_FLOOR; /* also NaN -> the floor: (int32_t)n of a NaN is UB (a fuzzer found it) */
    float n = (x * EXP_LOG2E + EXP_ROUND) - EXP_ROUND; /* round(x / ln 2) */
    float r = (x - n * EXP_LN2_HI) - n * EXP_LN2_LO;
    float p = EXP_P0;
    p = p * r + EXP_P1;
    p = p * r + EXP_P2;
    p = p * r + EXP_P3;
    p = p * r + EXP_P4;
    p = p * r + EXP_P5;
    float y = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23); /* 2^n, n in [-126, 0] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

#endif /* RUNQ4_INTERNAL_H */
