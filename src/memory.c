/* Memory: the one table of the buffers rq4_open allocates, which gives the
 * estimate behind max_memory (the -M guard), the allocation and the release,
 * so the three cannot drift apart. */
#include "internal.h"

#include <stddef.h>
#include <stdlib.h>

/* The sizes a buffer's length is a product of. */
enum {
    D_ONE, D_BATCH, D_TILED, D_OCTETS, D_DIM, D_MAX_IN, D_Q_DIM, D_KV_DIM, D_HIDDEN, D_HEAD_DIM, D_HALF_HEAD, D_MAX_COLS,
    D_MAX_BLOCKS, D_THREADS, D_ATT_SCRATCH, D_KV_CACHE, D_KV_ELEM, N_DIMS
};

/* A buffer: the rq4_model field that holds it, and its bytes = elem *
 * dims[a] * dims[b] * dims[c]. */
typedef struct buffer {
    size_t field; /* offsetof(rq4_model, ...) of a pointer */
    uint64_t elem;
    int a, b, c;
} buffer;

#define BUF(f, elem, a, b, c) {offsetof(rq4_model, f), (elem), (a), (b), (c)}

static const buffer BUFFERS[] = {
    /* activations of one chunk of up to RQ4_BATCH tokens (the shapes: internal.h) */
    BUF(x, 4, D_BATCH, D_DIM, D_ONE),
    BUF(xb, 4, D_BATCH, D_MAX_IN, D_ONE),
    BUF(xb2, 4, D_BATCH, D_DIM, D_ONE),
    BUF(q, 4, D_BATCH, D_Q_DIM, D_ONE),
    BUF(k, 4, D_BATCH, D_KV_DIM, D_ONE),
    BUF(v, 4, D_BATCH, D_KV_DIM, D_ONE),
    BUF(hb, 4, D_BATCH, D_HIDDEN, D_ONE),
    BUF(hb2, 4, D_BATCH, D_HIDDEN, D_ONE),
    BUF(rope, 4, D_BATCH, D_HEAD_DIM, D_ONE),
    /* the int8 copy of a matmul input: q, qp, qt, qo; d, s, dt, st */
    BUF(acts.a.q, 1, D_BATCH, D_MAX_COLS, D_ONE),
    BUF(acts.a.qp, 1, D_BATCH, D_MAX_COLS, D_ONE),
    BUF(acts.a.qt, 1, D_TILED, D_MAX_COLS, D_ONE),
    BUF(acts.a.qo, 1, D_OCTETS, D_MAX_COLS, D_ONE),
    BUF(acts.a.d, 4, D_BATCH, D_MAX_BLOCKS, D_ONE),
    BUF(acts.a.s, 4, D_BATCH, D_MAX_BLOCKS, D_ONE),
    BUF(acts.a.dt, 4, D_TILED, D_MAX_BLOCKS, D_ONE),
    BUF(acts.a.st, 4, D_TILED, D_MAX_BLOCKS, D_ONE),
    /* per thread: attention scratch, a dequantized weight row */
    BUF(att, 4, D_THREADS, D_ATT_SCRATCH, D_ONE),
    BUF(row, 4, D_THREADS, D_MAX_COLS, D_ONE),
    /* the KV cache */
    BUF(key_cache, 1, D_KV_ELEM, D_KV_CACHE, D_ONE),
    BUF(value_cache, 1, D_KV_ELEM, D_KV_CACHE, D_ONE),
    /* RoPE inverse frequencies */
    BUF(inv_freq, sizeof(double), D_HALF_HEAD, D_ONE, D_ONE),
};

#define N_BUFFERS (sizeof BUFFERS / sizeof BUFFERS[0])

static void buffer_dims(const rq4_config *c, int n_ctx, int kv_type, int n_threads, uint64_t dims[N_DIMS]) {
    uint64_t dim = (uint64_t)c->dim, hidden = (uint64_t)c->hidden_dim;
    uint64_t q_dim = (uint64_t)c->n_heads * (uint64_t)c->head_dim;
    uint64_t kv_dim = (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim;
    uint64_t max_in = dim > q_dim ? dim : q_dim, max_cols = max_in > hidden ? max_in : hidden;
    dims[D_ONE] = 1;
    dims[D_BATCH] = RQ4_BATCH;
    /* the 16-token tiles, only where the kernel set this process runs reads
     * them (rq4_open picks the same set) */
    dims[D_TILED] = rq4_kernels_read_tiles(rq4_kernels_select()) ? RQ4_BATCH : 0;
    dims[D_OCTETS] = rq4_kernels_read_octets(rq4_kernels_select()) ? RQ4_BATCH : 0;
    dims[D_DIM] = dim;
    dims[D_MAX_IN] = max_in;
    dims[D_Q_DIM] = q_dim;
    dims[D_KV_DIM] = kv_dim;
    dims[D_HIDDEN] = hidden;
    dims[D_HEAD_DIM] = (uint64_t)c->head_dim;
    dims[D_HALF_HEAD] = (uint64_t)(c->head_dim / 2);
    dims[D_MAX_COLS] = max_cols;
    dims[D_MAX_BLOCKS] = max_cols / QK;
    dims[D_THREADS] = (uint64_t)n_threads;
    /* attention_scratch and the KV cache grow with n_ctx: computed saturating */
    dims[D_ATT_SCRATCH] = sat_add_u64(sat_mul_u64((uint64_t)attention_rows(c), (uint64_t)n_ctx),
                                      4 * (uint64_t)c->head_dim);
    dims[D_KV_CACHE] = sat_mul_u64(sat_mul_u64((uint64_t)c->n_layers, (uint64_t)kv_len(n_ctx)), kv_dim);
    dims[D_KV_ELEM] = kv_type == RQ4_KV_F16 ? 2 : 4;
}

static uint64_t buffer_bytes(const buffer *b, const uint64_t dims[N_DIMS]) {
    return sat_mul_u64(sat_mul_u64(sat_mul_u64(b->elem, dims[b->a]), dims[b->b]), dims[b->c]);
}

static void **buffer_slot(rq4_model *m, const buffer *b) { return (void **)((char *)m + b->field); }

uint64_t rq4_memory_for(const rq4_config *c, int n_entries, int n_ctx, int kv_type, int n_threads) {
    uint64_t dims[N_DIMS], bytes = sizeof(rq4_model);
    buffer_dims(c, n_ctx, kv_type, n_threads, dims);
    for (size_t i = 0; i < N_BUFFERS; i++) bytes = sat_add_u64(bytes, buffer_bytes(&BUFFERS[i], dims));
    bytes += (uint64_t)n_entries * sizeof(uint32_t);         /* by_name (loader.c) */
    bytes += (uint64_t)c->n_layers * sizeof(layer_weights); /* layers (loader.c) */
    bytes += (uint64_t)n_threads * 256;                     /* thread pool */
    return bytes;
}

/* Zeroed (calloc also keeps valgrind quiet about reading never-written
 * padding); an empty buffer (the tiles or octets of a set that reads
 * none) stays NULL, which tells rq4_interleave_act to leave it out. */
rq4_status rq4_allocate_buffers(rq4_model *m, rq4_error *err) {
    const rq4_config *c = &m->config;
    uint64_t dims[N_DIMS];
    buffer_dims(c, c->n_ctx, c->kv_type, c->n_threads, dims);
    for (size_t i = 0; i < N_BUFFERS; i++) {
        uint64_t n = buffer_bytes(&BUFFERS[i], dims);
        void **slot = buffer_slot(m, &BUFFERS[i]);
        *slot = n == 0 ? NULL : n <= SIZE_MAX ? calloc(1, (size_t)n) : NULL;
        if (n && !*slot)
            return rq4_fail(err, RQ4_ERR_NOMEM, "out of memory for the buffers and the %llu-byte KV cache",
                            (unsigned long long)(2 * dims[D_KV_ELEM] * dims[D_KV_CACHE]));
    }
    return RQ4_OK;
}

void rq4_free_buffers(rq4_model *m) {
    for (size_t i = 0; i < N_BUFFERS; i++) {
        void **slot = buffer_slot(m, &BUFFERS[i]);
        free(*slot);
        *slot = NULL;
    }
}
