/* The public API of runq4.h: open and close, forward, rewind, the
 * configuration and version queries.
 *
 * The engine is a port of llama2.c's runq.c to int4 weights (docs/FORMAT.md)
 * and the Llama 3.2 architecture (GQA, head_dim from the config, llama3 RoPE
 * scaling, tied or untied classifier). One struct, rq4_model (internal.h),
 * owns every piece of state; nothing here prints or exits; every failure is
 * an rq4_status and a one-line message. The other files: loader.c (the file),
 * memory.c (the buffers), threadpool.c, forward.c, attention.c, error.c, and
 * kernels/ and tokenizer/.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE      /* madvise: glibc's posix_madvise ignores POSIX_MADV_DONTNEED */
#define _FILE_OFFSET_BITS 64 /* files over 2 GB on 32-bit boards */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void rq4_default_options(rq4_options *opts) {
    if (!opts) return;
    memset(opts, 0, sizeof *opts);
    opts->kv_type = RQ4_KV_F16;
}

void rq4_close(rq4_model *m) {
    if (!m) return;
    rq4_free_pool(m->pool);
    rq4_free_buffers(m);
    free(m->layers);
    free(m->by_name);
    if (m->map) munmap(m->map, m->map_size);
    if (m->fd >= 0) close(m->fd);
    free(m);
}

static rq4_status open_model(rq4_model *m, const char *path, const rq4_options *o, rq4_error *err) {
    rq4_config *c = &m->config;
    rq4_status s;
    if (o->n_threads < 0 || o->n_threads > RQ4_MAX_THREADS)
        return rq4_fail(err, RQ4_ERR_ARG, "n_threads = %d is outside [1, %d] (0: the default)", o->n_threads,
                        RQ4_MAX_THREADS);
    if (o->kv_type != RQ4_KV_F32 && o->kv_type != RQ4_KV_F16)
        return rq4_fail(err, RQ4_ERR_ARG, "kv_type = %d is neither RQ4_KV_F32 (0) nor RQ4_KV_F16 (1)", o->kv_type);
    if (o->n_ctx < 0) return rq4_fail(err, RQ4_ERR_ARG, "n_ctx = %d is negative", o->n_ctx);
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) /* the tensors are used in place, as little-endian */
        return rq4_fail(err, RQ4_ERR_UNSUPPORTED, "this build runs on little-endian machines only");

    /* the file: map it, check the header and every table entry */
    if ((s = rq4_load_file(m, path, err))) return s;

    /* the open-time choices */
    if (o->n_ctx > c->max_seq_len)
        return rq4_fail(err, RQ4_ERR_ARG, "n_ctx = %d exceeds the model's max_seq_len = %d", o->n_ctx,
                        c->max_seq_len);
    c->n_ctx = o->n_ctx ? o->n_ctx : (c->max_seq_len < RQ4_DEFAULT_CTX ? c->max_seq_len : RQ4_DEFAULT_CTX);
    c->n_threads = o->n_threads ? o->n_threads : rq4_default_threads();
    c->kv_type = o->kv_type;
    m->float_activations = o->float_activations != 0;
    m->q_dim = c->n_heads * c->head_dim;
    m->kv_dim = c->n_kv_heads * c->head_dim;
    m->max_cols = m->q_dim > c->dim ? m->q_dim : c->dim;
    if (c->hidden_dim > m->max_cols) m->max_cols = c->hidden_dim;
    m->kernels = rq4_kernels_select();
    /* with every x86 SIMD set (AVX2 + F16C come with each; the scalar set
     * keeps the portable loops, the reference the others are tested against) */
    m->attention = NULL;
    if (strcmp(m->kernels->name, "avx512vnni") == 0 && rq4_attention_avx512_supported())
        m->attention = &rq4_attention_avx512;
    else if (strcmp(m->kernels->name, "scalar") != 0 && rq4_attention_avx2_supported())
        m->attention = &rq4_attention_avx2;

    /* the weights: every tensor by name, with its shape */
    if ((s = rq4_map_weights(m, err))) return s;

    /* the memory limit, before the big allocations */
    uint64_t need = rq4_memory_for(c, m->n_entries, c->n_ctx, c->kv_type, c->n_threads);
    if (o->max_memory && sat_add_u64((uint64_t)m->map_size, need) > o->max_memory)
        return rq4_fail(err, RQ4_ERR_MEMORY_LIMIT,
                        "needs %llu bytes (file %zu + KV cache and buffers %llu for n_ctx %d), over max_memory %llu",
                        (unsigned long long)sat_add_u64((uint64_t)m->map_size, need), m->map_size, (unsigned long long)need, c->n_ctx,
                        (unsigned long long)o->max_memory);
    if (need > SIZE_MAX / 2)
        return rq4_fail(err, RQ4_ERR_NOMEM, "needs %llu bytes for n_ctx %d, more than this machine can address",
                        (unsigned long long)need, c->n_ctx);
    if ((s = rq4_allocate_buffers(m, err))) return s;
    rq4_compute_inv_freq(c, m->inv_freq);
    if (c->n_threads > 1 && (s = rq4_build_pool(&m->pool, c->n_threads - 1, err))) return s;
    return RQ4_OK;
}

rq4_status rq4_open(const char *path, const rq4_options *opts, rq4_model **out, rq4_error *err) {
    rq4_options defaults;
    rq4_status s;
    if (out) *out = NULL;
    if (!path || !out) return rq4_fail(err, RQ4_ERR_ARG, "rq4_open: path and out must not be NULL");
    if (!opts) {
        rq4_default_options(&defaults);
        opts = &defaults;
    }
    rq4_model *m = calloc(1, sizeof *m);
    if (!m) return rq4_fail(err, RQ4_ERR_NOMEM, "out of memory");
    m->fd = -1;
    if ((s = open_model(m, path, opts, err)) != RQ4_OK) {
        rq4_close(m);
        return s;
    }
    *out = m;
    return rq4_succeed(err);
}

const rq4_config *rq4_get_config(const rq4_model *m) { return m ? &m->config : NULL; }

rq4_status rq4_forward(rq4_model *m, const int32_t *tokens, int32_t n, float *logits, int32_t all_logits,
                       rq4_error *err) {
    if (!m || !tokens) return rq4_fail(err, RQ4_ERR_ARG, "rq4_forward: model and tokens must not be NULL");
    if (n <= 0) return rq4_fail(err, RQ4_ERR_ARG, "rq4_forward: n = %d, need at least one token", n);
    const rq4_config *c = &m->config;
    if (n > c->n_ctx - m->pos)
        return rq4_fail(err, RQ4_ERR_CONTEXT_FULL, "%d tokens at position %d do not fit in the context of %d", n, m->pos,
                    c->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return rq4_fail(err, RQ4_ERR_ARG, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i,
                        c->vocab_size);
    for (int32_t start = 0; start < n; start += RQ4_BATCH) {
        int ntok = n - start < RQ4_BATCH ? n - start : RQ4_BATCH;
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)start * (size_t)c->vocab_size;
        else if (logits && start + ntok == n) out = logits;
        rq4_forward_chunk(m, tokens + start, ntok, m->pos, out, all_logits);
        m->pos += ntok;
    }
    return rq4_succeed(err);
}

int32_t rq4_position(const rq4_model *m) { return m ? m->pos : 0; }

rq4_status rq4_rewind(rq4_model *m, int32_t pos, rq4_error *err) {
    if (!m) return rq4_fail(err, RQ4_ERR_ARG, "rq4_rewind: model must not be NULL");
    if (pos < 0 || pos > m->pos)
        return rq4_fail(err, RQ4_ERR_ARG, "rq4_rewind: position %d is outside [0, %d]", pos, m->pos);
    m->pos = pos; /* the cache beyond pos is simply overwritten later */
    return rq4_succeed(err);
}

void rq4_release_blob(const rq4_model *m, const char *name) {
    uint64_t size = 0;
    const char *p = m && name ? rq4_blob(m, name, &size) : NULL;
    long page = sysconf(_SC_PAGESIZE);
    if (!p || page <= 0) return;
    /* the whole pages inside the blob: its neighbours' pages stay */
    uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t b = ((uintptr_t)p + (uintptr_t)size) & ~((uintptr_t)page - 1);
    if (b > a) madvise((void *)a, (size_t)(b - a), MADV_DONTNEED);
}

uint64_t rq4_memory_needed(const rq4_model *m, int32_t n_ctx, int32_t kv_type) {
    if (!m) return 0;
    if (n_ctx <= 0) n_ctx = m->config.max_seq_len;
    return rq4_memory_for(&m->config, m->n_entries, n_ctx, kv_type, m->config.n_threads);
}

const char *rq4_version(void) { return RQ4_VERSION; }

const char *rq4_kernel_name(void) { return rq4_kernels_select()->name; }
