/* runq4: int4 inference for Llama 3 models from one mmapped .rq4 file.
 *
 * A port of llama2.c's runq.c to int4 weights (docs/FORMAT.md) and the
 * Llama 3.2 architecture (GQA, head_dim from the config, llama3 RoPE scaling,
 * tied or untied classifier). One struct, rq4_model, owns every piece of
 * state; nothing here prints or exits; every failure is an rq4_status and a
 * one-line message.
 *
 * Layout of this file: errors, the file loader and its validation, memory
 * accounting, the thread pool, the math primitives (rmsnorm, matmul, rope,
 * attention), forward(), and the public API.
 */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64 /* files over 2 GB on 32-bit boards */
#include "runq4.h"
#include "kernels.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* same rounding everywhere (see kernels.c) */
#endif

/* Tokens of a prompt pushed through each layer together: every weight row is
 * read once per chunk instead of once per token. */
#define RQ4_BATCH 64
_Static_assert(RQ4_BATCH % 32 == 0, "the activation tiles (tiled_tokens) must fit in a chunk's buffers");

#define MAX_THREADS 256

/* ---------------------------------------------------------------------------
 * The model */

/* A view of one tensor of the mapping. */
typedef struct tensor {
    const char *name;     /* the entry name (for messages) */
    int type;             /* an rq4_type */
    int gs;               /* group size (quantized) */
    int rows, cols;
    int ngroups;          /* ceil(cols / gs) */
    size_t row_bytes;     /* bytes of one row of values */
    const uint8_t *q;     /* (rows, row_bytes) packed values; F32: the floats */
    const uint16_t *d;    /* (rows, ngroups) fp16 scales */
    const uint16_t *m;    /* (rows, ngroups) fp16 minimums, Q4A only */
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
    int32_t n_entries;
    uint32_t *by_name;    /* (n_entries) entry indices sorted by name */

    /* weights: views into the mapping */
    tensor tok_embeddings;  /* (vocab, dim) */
    tensor output;          /* (vocab, dim): tok_embeddings when tied */
    const float *norm;      /* (dim) */
    layer_weights *layers;  /* (n_layers) */

    const kernel_set *kernels;
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
    float *att;     /* (n_threads, attention_scratch) per thread: scores (kv_mul, n_ctx), 4 rows (4, head_dim) */
    float *row;     /* (n_threads, max cols) a dequantized weight row (float mode) */

    /* kv cache, f32 or f16 */
    void *key_cache;    /* (layer, n_kv_heads, kv_len / 16, head_dim, 16): see key_at */
    void *value_cache;  /* (layer, n_kv_heads, kv_len, head_dim) */
    int pos;            /* tokens in the cache */

    pool *pool;         /* NULL with one thread */
};

/* ---------------------------------------------------------------------------
 * Errors */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static rq4_status fail(rq4_error *err, rq4_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        for (char *c = err->message; *c; c++) /* one line, whatever went in */
            if (*c == '\n' || *c == '\r') *c = ' ';
    }
    return code;
}

static rq4_status succeed(rq4_error *err) {
    if (err) {
        err->code = RQ4_OK;
        err->message[0] = '\0';
    }
    return RQ4_OK;
}

/* A name from the file, made printable for a message. */
static const char *printable(const char *s, char *buf, size_t size) {
    size_t i = 0;
    for (; s[i] && i + 1 < size; i++) buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    buf[i] = '\0';
    return buf;
}

/* ---------------------------------------------------------------------------
 * Reading the file: little-endian fields at fixed offsets */

static uint32_t read_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t read_u64(const uint8_t *p) { return read_u32(p) | (uint64_t)read_u32(p + 4) << 32; }
static int32_t read_i32(const uint8_t *p) {
    uint32_t u = read_u32(p);
    int32_t i;
    memcpy(&i, &u, 4);
    return i;
}
static float read_f32(const uint8_t *p) {
    uint32_t u = read_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Header field offsets (docs/FORMAT.md). */
enum {
    H_MAGIC = 0, H_VERSION = 8, H_HEADER_SIZE = 12, H_FILE_SIZE = 16, H_DIM = 24,
    H_HIDDEN_DIM = 28, H_N_LAYERS = 32, H_N_HEADS = 36, H_N_KV_HEADS = 40, H_HEAD_DIM = 44,
    H_VOCAB_SIZE = 48, H_MAX_SEQ_LEN = 52, H_TIED = 56, H_BOS_ID = 60, H_N_EOS = 64,
    H_EOS_IDS = 68, H_ROPE_SCALING = 84, H_ROPE_ORIG_MAX_POS = 88, H_NORM_EPS = 92,
    H_ROPE_THETA = 96, H_ROPE_FACTOR = 100, H_ROPE_LOW = 104, H_ROPE_HIGH = 108,
    H_GROUP_SIZE = 112, H_N_ENTRIES = 116, H_TABLE_OFFSET = 120
};
/* Entry field offsets. */
enum { E_NAME = 0, E_TYPE = 64, E_GROUP_SIZE = 68, E_ROWS = 72, E_COLS = 76, E_OFFSET = 80, E_SIZE = 88 };

static const uint8_t RQ4_MAGIC[8] = {'R', 'U', 'N', 'Q', '4', 0, 0, 0};

static const uint8_t *entry_at(const rq4_model *m, uint32_t i) {
    return m->map + RQ4_HEADER_SIZE + (size_t)i * RQ4_ENTRY_SIZE;
}

static size_t align64(uint64_t n) { return (size_t)((n + 63) & ~(uint64_t)63); }

/* a * b + c in 64 bits; 0 on overflow. */
static int mul_add_u64(uint64_t a, uint64_t b, uint64_t c, uint64_t *out) {
    if (a != 0 && b > (UINT64_MAX - c) / a) return 0;
    *out = a * b + c;
    return 1;
}

/* Bytes of a quantized tensor's values, and the offsets of its scales and
 * minimums; 0 on overflow. */
static int quantized_layout(int type, uint64_t rows, uint64_t cols, uint64_t gs, uint64_t *values,
                            uint64_t *scales_at, uint64_t *mins_at, uint64_t *size) {
    uint64_t ngroups = (cols + gs - 1) / gs, row_bytes = type == RQ4_TYPE_Q8 ? cols : cols / 2;
    uint64_t scale_bytes;
    if (!mul_add_u64(rows, row_bytes, 0, values) || *values > UINT64_MAX - 64) return 0;
    *scales_at = align64(*values);
    if (!mul_add_u64(rows, ngroups * 2, *scales_at, size)) return 0;
    scale_bytes = *size - *scales_at;
    *mins_at = 0;
    if (type == RQ4_TYPE_Q4A) {
        if (*size > UINT64_MAX - 64) return 0;
        *mins_at = align64(*size);
        if (*mins_at > UINT64_MAX - scale_bytes) return 0;
        *size = *mins_at + scale_bytes;
    }
    return 1;
}

static int is_quantized(int type) { return type == RQ4_TYPE_Q4S || type == RQ4_TYPE_Q4A || type == RQ4_TYPE_Q8; }

static const char *type_name(int type) {
    static const char *names[] = {"F32", "Q4S", "Q4A", "Q8", "BLOB"};
    return type >= 0 && type <= 4 ? names[type] : "?";
}

static rq4_status read_field(const uint8_t *h, int off, const char *name, uint32_t lo, uint32_t hi, int32_t *dst,
                             rq4_error *err) {
    uint32_t v = read_u32(h + off);
    if (v < lo || v > hi)
        return fail(err, RQ4_ERR_FORMAT, "header field %s = %u is outside [%u, %u]", name, v, lo, hi);
    *dst = (int32_t)v;
    return RQ4_OK;
}

static int fp16_finite(uint16_t h) { return ((h >> 10) & 0x1f) != 0x1f; }

/* Checks the fixed header and fills m->config. */
static rq4_status check_header(rq4_model *m, rq4_error *err) {
    const uint8_t *h = m->map;
    rq4_config *c = &m->config;
    if (m->map_size < RQ4_HEADER_SIZE)
        return fail(err, RQ4_ERR_FORMAT, "not an .rq4 file: %zu bytes, shorter than the %d-byte header",
                    m->map_size, RQ4_HEADER_SIZE);
    if (memcmp(h, RQ4_MAGIC, 8) != 0) {
        if (memcmp(h, "GGUF", 4) == 0)
            return fail(err, RQ4_ERR_FORMAT, "not an .rq4 file but a GGUF file (convert it with the exporter)");
        return fail(err, RQ4_ERR_FORMAT, "not an .rq4 file (bad magic)");
    }
    uint32_t version = read_u32(h + H_VERSION);
    if (version != RQ4_FORMAT_VERSION)
        return fail(err, RQ4_ERR_VERSION, "the file is .rq4 format version %u; this build reads version %d",
                    version, RQ4_FORMAT_VERSION);
    if (read_u32(h + H_HEADER_SIZE) != RQ4_HEADER_SIZE)
        return fail(err, RQ4_ERR_FORMAT, "header_size is %u, expected %d", read_u32(h + H_HEADER_SIZE),
                    RQ4_HEADER_SIZE);
    uint64_t file_size = read_u64(h + H_FILE_SIZE);
    if (file_size != m->map_size)
        return fail(err, RQ4_ERR_FORMAT, "file is %zu bytes but its header says %llu (truncated or padded copy?)",
                    m->map_size, (unsigned long long)file_size);

/* Reads an unsigned field into dst and checks lo <= value <= hi. */
#define FIELD(dst, off, name, lo, hi)                                             \
    do {                                                                        \
        rq4_status s_ = read_field(h, (off), (name), (lo), (hi), &(dst), err); \
        if (s_ != RQ4_OK) return s_;                                            \
    } while (0)

    FIELD(c->dim, H_DIM, "dim", 1, 65536);
    FIELD(c->hidden_dim, H_HIDDEN_DIM, "hidden_dim", 1, 262144);
    FIELD(c->n_layers, H_N_LAYERS, "n_layers", 1, 1024);
    FIELD(c->n_heads, H_N_HEADS, "n_heads", 1, 1024);
    FIELD(c->n_kv_heads, H_N_KV_HEADS, "n_kv_heads", 1, (uint32_t)c->n_heads);
    FIELD(c->head_dim, H_HEAD_DIM, "head_dim", 2, 1024);
    FIELD(c->vocab_size, H_VOCAB_SIZE, "vocab_size", 1, 1u << 24);
    FIELD(c->max_seq_len, H_MAX_SEQ_LEN, "max_seq_len", 1, 1u << 24);
    FIELD(c->tied_embeddings, H_TIED, "tied_embeddings", 0, 1);
    FIELD(c->n_eos, H_N_EOS, "n_eos", 0, RQ4_MAX_EOS);
    FIELD(c->rope_scaling, H_ROPE_SCALING, "rope_scaling", RQ4_ROPE_NONE, RQ4_ROPE_LLAMA3);
    FIELD(m->n_entries, H_N_ENTRIES, "n_entries", 1, 65536);
#undef FIELD
    if (c->dim % 32 != 0) return fail(err, RQ4_ERR_FORMAT, "header field dim = %d is not a multiple of 32", c->dim);
    if (c->hidden_dim % 32 != 0)
        return fail(err, RQ4_ERR_FORMAT, "header field hidden_dim = %d is not a multiple of 32", c->hidden_dim);
    if (c->n_heads % c->n_kv_heads != 0)
        return fail(err, RQ4_ERR_FORMAT, "n_kv_heads = %d does not divide n_heads = %d", c->n_kv_heads, c->n_heads);
    if (c->head_dim % 2 != 0)
        return fail(err, RQ4_ERR_FORMAT, "header field head_dim = %d is odd", c->head_dim);
    if ((c->n_heads * c->head_dim) % 32 != 0 || (c->n_kv_heads * c->head_dim) % 32 != 0)
        return fail(err, RQ4_ERR_FORMAT, "n_heads*head_dim = %d and n_kv_heads*head_dim = %d must be multiples of 32",
                    c->n_heads * c->head_dim, c->n_kv_heads * c->head_dim);
    c->bos_id = read_i32(h + H_BOS_ID);
    if (c->bos_id < -1 || c->bos_id >= c->vocab_size)
        return fail(err, RQ4_ERR_FORMAT, "header field bos_id = %d is outside [-1, %d)", c->bos_id, c->vocab_size);
    for (int i = 0; i < RQ4_MAX_EOS; i++) {
        c->eos_ids[i] = read_i32(h + H_EOS_IDS + 4 * i);
        if (i < c->n_eos && (c->eos_ids[i] < 0 || c->eos_ids[i] >= c->vocab_size))
            return fail(err, RQ4_ERR_FORMAT, "header field eos_ids[%d] = %d is outside [0, %d)", i, c->eos_ids[i],
                        c->vocab_size);
        if (i >= c->n_eos && c->eos_ids[i] != -1)
            return fail(err, RQ4_ERR_FORMAT, "header field eos_ids[%d] = %d beyond n_eos = %d must be -1", i,
                        c->eos_ids[i], c->n_eos);
    }
    c->rope_original_max_pos = (int32_t)read_u32(h + H_ROPE_ORIG_MAX_POS);
    c->norm_eps = read_f32(h + H_NORM_EPS);
    c->rope_theta = read_f32(h + H_ROPE_THETA);
    c->rope_factor = read_f32(h + H_ROPE_FACTOR);
    c->rope_low_freq_factor = read_f32(h + H_ROPE_LOW);
    c->rope_high_freq_factor = read_f32(h + H_ROPE_HIGH);
    c->group_size = (int32_t)read_u32(h + H_GROUP_SIZE);
    if (!(isfinite(c->norm_eps) && c->norm_eps > 0))
        return fail(err, RQ4_ERR_FORMAT, "header field norm_eps = %g must be finite and > 0", c->norm_eps);
    if (!(isfinite(c->rope_theta) && c->rope_theta > 0))
        return fail(err, RQ4_ERR_FORMAT, "header field rope_theta = %g must be finite and > 0", c->rope_theta);
    if (c->rope_scaling == RQ4_ROPE_LLAMA3) {
        if (read_u32(h + H_ROPE_ORIG_MAX_POS) < 1 || read_u32(h + H_ROPE_ORIG_MAX_POS) > INT32_MAX)
            return fail(err, RQ4_ERR_FORMAT, "header field rope_original_max_pos = %u must be >= 1 for llama3 RoPE",
                        read_u32(h + H_ROPE_ORIG_MAX_POS));
        if (!(isfinite(c->rope_factor) && c->rope_factor >= 1))
            return fail(err, RQ4_ERR_FORMAT, "header field rope_factor = %g must be finite and >= 1", c->rope_factor);
        if (!(isfinite(c->rope_low_freq_factor) && c->rope_low_freq_factor > 0))
            return fail(err, RQ4_ERR_FORMAT, "header field rope_low_freq_factor = %g must be finite and > 0",
                        c->rope_low_freq_factor);
        if (!(isfinite(c->rope_high_freq_factor) && c->rope_high_freq_factor > c->rope_low_freq_factor))
            return fail(err, RQ4_ERR_FORMAT,
                        "header field rope_high_freq_factor = %g must be finite and > rope_low_freq_factor = %g",
                        c->rope_high_freq_factor, c->rope_low_freq_factor);
    }
    if (read_u64(h + H_TABLE_OFFSET) != RQ4_HEADER_SIZE)
        return fail(err, RQ4_ERR_FORMAT, "table_offset is %llu, expected %d",
                    (unsigned long long)read_u64(h + H_TABLE_OFFSET), RQ4_HEADER_SIZE);
    if ((uint64_t)RQ4_HEADER_SIZE + (uint64_t)m->n_entries * RQ4_ENTRY_SIZE > m->map_size)
        return fail(err, RQ4_ERR_FORMAT, "the table of %d entries runs past the end of the %zu-byte file",
                    m->n_entries, m->map_size);
    return RQ4_OK;
}

/* Checks one table entry on its own: name, type, shape, placement, size. */
static rq4_status check_entry(const rq4_model *m, uint32_t i, rq4_error *err) {
    const uint8_t *e = entry_at(m, i);
    char buf[RQ4_NAME_MAX + 1];
    if (memchr(e + E_NAME, 0, RQ4_NAME_MAX) == NULL)
        return fail(err, RQ4_ERR_FORMAT, "entry %u: name is not NUL-terminated", i);
    const char *name = printable((const char *)e + E_NAME, buf, sizeof buf);
    if (name[0] == '\0') return fail(err, RQ4_ERR_FORMAT, "entry %u has an empty name", i);
    uint32_t type = read_u32(e + E_TYPE), gs = read_u32(e + E_GROUP_SIZE);
    uint32_t rows = read_u32(e + E_ROWS), cols = read_u32(e + E_COLS);
    uint64_t offset = read_u64(e + E_OFFSET), size = read_u64(e + E_SIZE), expected = 0;
    if (type > RQ4_TYPE_BLOB) return fail(err, RQ4_ERR_FORMAT, "entry %s: unknown type %u", name, type);
    if (is_quantized((int)type)) {
        if (gs < RQ4_MIN_GROUP || gs > 4096 || gs % 32 != 0)
            return fail(err, RQ4_ERR_FORMAT, "entry %s: group_size %u is not a multiple of 32 in [32, 4096]", name, gs);
        if (cols % 32 != 0)
            return fail(err, RQ4_ERR_FORMAT, "entry %s: %u columns, not a multiple of 32", name, cols);
    } else if (gs != 0) {
        return fail(err, RQ4_ERR_FORMAT, "entry %s: group_size %u for an unquantized %s entry", name, gs,
                    type_name((int)type));
    }
    if (type != RQ4_TYPE_BLOB && (rows == 0 || cols == 0))
        return fail(err, RQ4_ERR_FORMAT, "entry %s: empty shape %ux%u", name, rows, cols);
    if (offset % RQ4_ALIGN != 0)
        return fail(err, RQ4_ERR_FORMAT, "entry %s: offset %llu is not a multiple of %d", name,
                    (unsigned long long)offset, RQ4_ALIGN);
    uint64_t table_end = RQ4_HEADER_SIZE + (uint64_t)m->n_entries * RQ4_ENTRY_SIZE;
    if (offset < table_end || offset > m->map_size || size > m->map_size - offset)
        return fail(err, RQ4_ERR_FORMAT, "entry %s: bytes [%llu, +%llu) are not inside the data area [%llu, %zu)",
                    name, (unsigned long long)offset, (unsigned long long)size, (unsigned long long)table_end,
                    m->map_size);
    if (type == RQ4_TYPE_BLOB) return RQ4_OK;
    uint64_t values, scales_at, mins_at;
    int ok = type == RQ4_TYPE_F32 ? mul_add_u64((uint64_t)rows * cols, 4, 0, &expected)
                                  : quantized_layout((int)type, rows, cols, gs, &values, &scales_at, &mins_at, &expected);
    if (!ok || size != expected)
        return fail(err, RQ4_ERR_FORMAT, "entry %s: %s %ux%u (group %u) takes %llu bytes, the table says %llu", name,
                    type_name((int)type), rows, cols, gs, (unsigned long long)expected, (unsigned long long)size);
    return RQ4_OK;
}

static const char *entry_name(const rq4_model *m, uint32_t i) { return (const char *)entry_at(m, i) + E_NAME; }

static int name_less(const rq4_model *m, uint32_t a, uint32_t b) {
    return strcmp(entry_name(m, a), entry_name(m, b)) < 0;
}

/* Moves the heap root at i down to its place (max-heap by name, n items). */
static void sift_down(const rq4_model *m, uint32_t *a, int i, int n) {
    for (int child; (child = 2 * i + 1) < n; i = child) {
        if (child + 1 < n && name_less(m, a[child], a[child + 1])) child++;
        if (!name_less(m, a[i], a[child])) return;
        uint32_t tmp = a[i];
        a[i] = a[child];
        a[child] = tmp;
    }
}

/* Sorts the entry indices by name (for lookups and to find duplicates): a
 * heapsort, since qsort has no context argument for the mapping. */
static void sort_entries(rq4_model *m) {
    uint32_t *a = m->by_name;
    int n = m->n_entries;
    for (int i = 0; i < n; i++) a[i] = (uint32_t)i;
    for (int i = n / 2 - 1; i >= 0; i--) sift_down(m, a, i, n);
    for (int end = n - 1; end > 0; end--) {
        uint32_t tmp = a[0];
        a[0] = a[end];
        a[end] = tmp;
        sift_down(m, a, 0, end);
    }
}

/* The entry named `name`, or -1. */
static int64_t find_entry(const rq4_model *m, const char *name) {
    int lo = 0, hi = m->n_entries - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, entry_name(m, m->by_name[mid]));
        if (c == 0) return m->by_name[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return -1;
}

enum { WANT_MATRIX, WANT_NORM }; /* any tensor type but BLOB / a 1 x dim F32 */

/* Looks up a required tensor with its expected shape and makes a view of it. */
static rq4_status map_tensor(rq4_model *m, const char *name, int want, int rows, int cols, tensor *t,
                             rq4_error *err) {
    int64_t i = find_entry(m, name);
    if (i < 0) return fail(err, RQ4_ERR_FORMAT, "tensor %s is missing", name);
    const uint8_t *e = entry_at(m, (uint32_t)i);
    int type = (int)read_u32(e + E_TYPE);
    uint32_t frows = read_u32(e + E_ROWS), fcols = read_u32(e + E_COLS);
    if (type == RQ4_TYPE_BLOB) return fail(err, RQ4_ERR_FORMAT, "tensor %s: is a BLOB entry", name);
    if (want == WANT_NORM && type != RQ4_TYPE_F32)
        return fail(err, RQ4_ERR_FORMAT, "tensor %s: expected F32, file has %s", name, type_name(type));
    if (frows != (uint32_t)rows || fcols != (uint32_t)cols)
        return fail(err, RQ4_ERR_FORMAT, "tensor %s: expected %dx%d, file has %ux%u", name, rows, cols, frows, fcols);
    const uint8_t *base = m->map + read_u64(e + E_OFFSET);
    memset(t, 0, sizeof *t);
    t->name = entry_name(m, (uint32_t)i);
    t->type = type;
    t->rows = rows;
    t->cols = cols;
    t->q = base;
    if (type == RQ4_TYPE_F32) {
        t->row_bytes = (size_t)cols * 4;
        return RQ4_OK;
    }
    uint64_t values = 0, scales_at = 0, mins_at = 0, size = 0;
    t->gs = (int)read_u32(e + E_GROUP_SIZE);
    t->ngroups = (cols + t->gs - 1) / t->gs;
    t->row_bytes = type == RQ4_TYPE_Q8 ? (size_t)cols : (size_t)cols / 2;
    quantized_layout(type, (uint64_t)rows, (uint64_t)cols, (uint64_t)t->gs, &values, &scales_at, &mins_at, &size);
    t->d = (const uint16_t *)(base + scales_at);
    t->m = type == RQ4_TYPE_Q4A ? (const uint16_t *)(base + mins_at) : NULL;
    /* every scale must be finite: one linear pass over the scales only */
    size_t n = (size_t)rows * (size_t)t->ngroups;
    for (size_t j = 0; j < n; j++)
        if (!fp16_finite(t->d[j]) || (t->m && !fp16_finite(t->m[j])))
            return fail(err, RQ4_ERR_FORMAT, "tensor %s: row %zu, group %zu has a non-finite %s", name,
                        j / (size_t)t->ngroups, j % (size_t)t->ngroups, fp16_finite(t->d[j]) ? "minimum" : "scale");
    return RQ4_OK;
}

/* A norm weight: F32 values, every one finite (a NaN or Inf weight makes
 * every activation after it NaN). */
static rq4_status map_norm(rq4_model *m, const char *name, const float **out, rq4_error *err) {
    tensor t;
    rq4_status s = map_tensor(m, name, WANT_NORM, 1, m->config.dim, &t, err);
    if (s != RQ4_OK) return s;
    for (int i = 0; i < m->config.dim; i++) {
        float v = read_f32(t.q + 4 * (size_t)i);
        if (!isfinite(v))
            return fail(err, RQ4_ERR_FORMAT, "tensor %s: value %d is not finite (%g)", name, i, (double)v);
    }
    *out = (const float *)t.q;
    return RQ4_OK;
}

/* Finds every tensor the forward pass reads. */
static rq4_status map_weights(rq4_model *m, rq4_error *err) {
    const rq4_config *c = &m->config;
    char name[RQ4_NAME_MAX];
    rq4_status s;
    if ((s = map_tensor(m, "tok_embeddings", WANT_MATRIX, c->vocab_size, c->dim, &m->tok_embeddings, err))) return s;
    if (c->tied_embeddings) m->output = m->tok_embeddings;
    else if ((s = map_tensor(m, "output", WANT_MATRIX, c->vocab_size, c->dim, &m->output, err))) return s;
    if ((s = map_norm(m, "norm", &m->norm, err))) return s;
    for (int l = 0; l < c->n_layers; l++) {
        layer_weights *w = &m->layers[l];
        struct { const char *suffix; tensor *t; int rows, cols; } mats[] = {
            {"wq", &w->wq, m->q_dim, c->dim},       {"wk", &w->wk, m->kv_dim, c->dim},
            {"wv", &w->wv, m->kv_dim, c->dim},      {"wo", &w->wo, c->dim, m->q_dim},
            {"w1", &w->w1, c->hidden_dim, c->dim},  {"w2", &w->w2, c->dim, c->hidden_dim},
            {"w3", &w->w3, c->hidden_dim, c->dim},
        };
        snprintf(name, sizeof name, "layers.%d.attention_norm", l);
        if ((s = map_norm(m, name, &w->attention_norm, err))) return s;
        snprintf(name, sizeof name, "layers.%d.ffn_norm", l);
        if ((s = map_norm(m, name, &w->ffn_norm, err))) return s;
        for (size_t j = 0; j < sizeof mats / sizeof mats[0]; j++) {
            snprintf(name, sizeof name, "layers.%d.%s", l, mats[j].suffix);
            if ((s = map_tensor(m, name, WANT_MATRIX, mats[j].rows, mats[j].cols, mats[j].t, err))) return s;
        }
    }
    return RQ4_OK;
}

/* ---------------------------------------------------------------------------
 * RoPE frequencies, as Hugging Face's _compute_default_rope_parameters and
 * _compute_llama3_parameters (in double). */

static void compute_inv_freq(const rq4_config *c, double *inv_freq) {
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

/* Floats of attention scratch per thread: the scores of the kv_mul query
 * heads sharing a kv head, (kv_mul, n_ctx), then 4 value rows (4, head_dim). */
static size_t attention_scratch(const rq4_config *c) {
    return (size_t)(c->n_heads / c->n_kv_heads) * (size_t)c->n_ctx + 4 * (size_t)c->head_dim;
}

/* ---------------------------------------------------------------------------
 * Memory accounting: everything rq4_open allocates besides the mapping */

static uint64_t max3(uint64_t a, uint64_t b, uint64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* Positions the caches hold per head: n_ctx rounded up to a whole block of 16
 * keys (see key_at). */
static inline int64_t kv_len(int n_ctx) { return ((int64_t)n_ctx + 15) / 16 * 16; }

/* Saturating arithmetic for the estimate: a context too large for the
 * machine gives UINT64_MAX (refused), never a wrapped small number. */
static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
static uint64_t sat_mul(uint64_t a, uint64_t b) { return a != 0 && b > UINT64_MAX / a ? UINT64_MAX : a * b; }

static uint64_t memory_needed(const rq4_config *c, int n_entries, int n_ctx, int kv_type, int n_threads) {
    uint64_t B = RQ4_BATCH, dim = (uint64_t)c->dim, hidden = (uint64_t)c->hidden_dim;
    uint64_t q_dim = (uint64_t)c->n_heads * (uint64_t)c->head_dim, kv_dim = (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim;
    uint64_t max_cols = max3(dim, q_dim, hidden), max_in = dim > q_dim ? dim : q_dim;
    uint64_t kv_elem = kv_type == RQ4_KV_F16 ? 2 : 4;
    uint64_t bytes = sizeof(rq4_model);
    bytes += (uint64_t)n_entries * sizeof(uint32_t);                       /* by_name */
    bytes += (uint64_t)c->n_layers * sizeof(layer_weights);               /* layers */
    bytes += (uint64_t)(c->head_dim / 2) * sizeof(double);               /* inv_freq */
    bytes += 4 * B * (dim + max_in + dim + q_dim + 2 * kv_dim + 2 * hidden + (uint64_t)c->head_dim); /* x .. rope */
    bytes += B * (3 * max_cols + 4 * (max_cols / QK) * 4); /* acts: q, qp, qt; d, s, dt, st */
    /* the terms that grow with n_ctx, saturating */
    uint64_t per_thread = sat_add(sat_mul((uint64_t)(c->n_heads / c->n_kv_heads), (uint64_t)n_ctx),
                                  4 * (uint64_t)c->head_dim + max_cols);
    bytes = sat_add(bytes, sat_mul(4 * (uint64_t)n_threads, per_thread));                     /* att, row */
    bytes = sat_add(bytes, sat_mul(sat_mul(2 * kv_elem * (uint64_t)c->n_layers, (uint64_t)kv_len(n_ctx)),
                                   kv_dim));                                                    /* kv cache */
    bytes = sat_add(bytes, (uint64_t)n_threads * 256);                                          /* thread pool */
    return bytes;
}

/* ---------------------------------------------------------------------------
 * Thread pool: n_threads - 1 workers plus the calling thread. A job is a
 * function over the items [0, count) (matrix rows, attention heads), cut into
 * contiguous chunks that the threads take in turn from a shared counter; the
 * caller takes chunks too. So when a worker is slow to wake (a loaded
 * machine) the others do its share instead of waiting for it. Which thread
 * computes an item never changes its result. Workers spin briefly for the
 * next job, then sleep on a condition variable. */

typedef void (*job_fn)(const rq4_model *m, void *arg, int thread, int start, int end);

struct pool {
    pthread_t *threads;       /* (n_workers) */
    int n_workers, n_started;
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* a new job (or stop) */
    pthread_cond_t done;      /* the last chunk finished */
    int stop;
    /* the current job: written under `lock`, before `ticket` moves to it */
    job_fn fn;
    const rq4_model *model;
    void *arg;
    int count, chunk, n_chunks;
    /* (job number << 32) | next chunk to take: one atomic word, so a thread
     * can only take a chunk of the job whose parameters it read */
    atomic_uint_fast64_t ticket;
    atomic_int chunks_done;   /* chunks of the current job finished */
};

typedef struct worker_arg {
    pool *p;
    int thread;
} worker_arg;

#define SPIN_ITERATIONS 2000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Takes and runs chunks of job `job` (whose parameters the caller copied)
 * until none is left. */
static void run_chunks(pool *p, uint64_t job, job_fn fn, const rq4_model *m, void *arg, int count, int chunk,
                       int n_chunks, int thread) {
    for (;;) {
        uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
        if ((t >> 32) != job || (int)(t & 0xffffffffu) >= n_chunks) return;
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        int c = (int)(t & 0xffffffffu), start = c * chunk, end = start + chunk < count ? start + chunk : count;
        fn(m, arg, thread, start, end);
        if (atomic_fetch_add_explicit(&p->chunks_done, 1, memory_order_acq_rel) + 1 == n_chunks) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
}

static void *worker_main(void *varg) {
    pool *p = ((worker_arg *)varg)->p;
    int thread = ((worker_arg *)varg)->thread;
    free(varg);
    uint64_t seen = 0;
    for (;;) {
        /* wait for the next job: spin, then sleep */
        for (int spins = 0; spins < SPIN_ITERATIONS; spins++) {
            if ((atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32) != seen) break;
            cpu_relax();
        }
        pthread_mutex_lock(&p->lock);
        while ((atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32) == seen && !p->stop)
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->stop) {
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        seen = atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32;
        job_fn fn = p->fn;
        const rq4_model *m = p->model;
        void *arg = p->arg;
        int count = p->count, chunk = p->chunk, n_chunks = p->n_chunks;
        pthread_mutex_unlock(&p->lock);
        run_chunks(p, seen, fn, m, arg, count, chunk, n_chunks, thread);
    }
}

static void free_pool(pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->threads);
    free(p);
}

static rq4_status build_pool(pool **out, int n_workers, rq4_error *err) {
    pool *p = calloc(1, sizeof *p);
    if (!p) return fail(err, RQ4_ERR_NOMEM, "out of memory for the thread pool");
    p->threads = calloc((size_t)n_workers, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return fail(err, RQ4_ERR_NOMEM, "out of memory for the thread pool");
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->ticket, 0);
    atomic_init(&p->chunks_done, 0);
    p->n_workers = n_workers;
    for (int i = 0; i < n_workers; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (a) *a = (worker_arg){p, i + 1};
        int rc = a ? pthread_create(&p->threads[i], NULL, worker_main, a) : ENOMEM;
        if (rc != 0) {
            free(a);
            free_pool(p);
            return fail(err, RQ4_ERR_THREAD, "cannot start worker thread %d of %d: %s", i + 1, n_workers,
                        strerror(rc));
        }
        p->n_started++;
    }
    *out = p;
    return RQ4_OK;
}

/* Runs fn over the items [0, count) on all threads, in about `per_thread`
 * chunks per thread, and returns when all are done. */
static void run_parallel_chunks(const rq4_model *m, job_fn fn, void *arg, int count, int per_thread) {
    pool *p = m->pool;
    if (!p || count <= 1) {
        if (count > 0) fn(m, arg, 0, 0, count);
        return;
    }
    int n_threads = p->n_workers + 1, chunk = (count + per_thread * n_threads - 1) / (per_thread * n_threads);
    int n_chunks = (count + chunk - 1) / chunk;
    pthread_mutex_lock(&p->lock);
    uint64_t job = (atomic_load_explicit(&p->ticket, memory_order_relaxed) >> 32) + 1;
    p->fn = fn;
    p->model = m;
    p->arg = arg;
    p->count = count;
    p->chunk = chunk;
    p->n_chunks = n_chunks;
    atomic_store_explicit(&p->chunks_done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->ticket, job << 32, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    run_chunks(p, job, fn, m, arg, count, chunk, n_chunks, 0);
    for (int spins = 0; spins < SPIN_ITERATIONS; spins++) {
        if (atomic_load_explicit(&p->chunks_done, memory_order_acquire) == n_chunks) return;
        cpu_relax();
    }
    pthread_mutex_lock(&p->lock);
    while (atomic_load_explicit(&p->chunks_done, memory_order_acquire) != n_chunks)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

/* About 4 chunks per thread: small enough to even out, big enough to be cheap. */
static void run_parallel(const rq4_model *m, job_fn fn, void *arg, int count) {
    run_parallel_chunks(m, fn, arg, count, 4);
}

/* ---------------------------------------------------------------------------
 * Math primitives */

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

static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + (double)eps));
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * scale);
}

/* e^x for x <= 0, to about 1 ulp, without a libm call so the softmax loop
 * vectorizes: x = n ln2 + r (Cody-Waite), Cephes' expf polynomial for e^r,
 * and 2^n put into the exponent bits. Below -87 (e^x < 2^-125) it saturates
 * near FLT_MIN, negligible next to the softmax's largest term, 1. */
static inline float exp_nonpositive(float x) {
    x = x >= -87.0f ? x : -87.0f; /* also NaN -> -87: (int32_t)n of a NaN is UB (fuzz_loader found it, issue 8) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23); /* 2^n, n in [-126, 0] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

typedef float f32x16 __attribute__((vector_size(64)));    /* GCC/clang vectors: lane-wise ops */
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

/* 16 keys' value i (one block of key_at's layout) as floats, into *out (not
 * returned: a 64-byte vector return would tie the ABI to AVX-512) */
static inline __attribute__((always_inline)) void key_column(const void *block, int f16, int i, f32x16 *out) {
    f32x16 v;
    if (!f16) {
        memcpy(out, (const float *)block + 16 * i, sizeof v);
        return;
    }
    const uint16_t *src = (const uint16_t *)block + 16 * i;
    u32x16 h, mag, bits;
    for (int k = 0; k < 16; k++) h[k] = src[k];
    /* fp16_to_f32 as lane-wise selects (cache_row's method): the same exact values */
    mag = (h & 0x7fffu) << 13;
    memcpy(&v, &mag, sizeof v);
    v *= 0x1p112f;
    u32x16 finite, special = (u32x16)((h & 0x7c00u) == 0x7c00u); /* all ones for inf, nan */
    memcpy(&finite, &v, sizeof v);
    bits = ((h & 0x8000u) << 16) | (special & (0x7f800000u | mag)) | (~special & finite);
    memcpy(out, &bits, sizeof v);
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

/* One row of a weight matrix as floats. */
static void dequantize_row(const tensor *w, int r, float *out) {
    const uint8_t *q = w->q + (size_t)r * w->row_bytes;
    if (w->type == RQ4_TYPE_F32) {
        memcpy(out, q, (size_t)w->cols * sizeof(float));
        return;
    }
    const uint16_t *d = w->d + (size_t)r * (size_t)w->ngroups;
    const uint16_t *mn = w->m ? w->m + (size_t)r * (size_t)w->ngroups : NULL;
    for (int i = 0; i < w->cols; i++) {
        int g = i / w->gs, v;
        if (w->type == RQ4_TYPE_Q8) v = (int8_t)q[i];
        else if (w->type == RQ4_TYPE_Q4S) v = (int)(((q[i / 2] >> (4 * (i & 1))) & 0x0F) ^ 8) - 8;
        else v = (q[i / 2] >> (4 * (i & 1))) & 0x0F;
        out[i] = fp16_to_f32(d[g]) * (float)v;
        if (mn) out[i] += fp16_to_f32(mn[g]);
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
    for (int t = start; t < end; t++) quantize_act(j->a, t, j->x + (size_t)t * (size_t)j->a->n);
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
    run_parallel(m, quantize_tokens, &j, ntok);
    interleave_act(a);
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
} matmul_job;

/* Rows [start, end) of one matrix: out = x W^T. */
static void matmul_part(const rq4_model *m, const matmul_job *j, int part, int thread, int start, int end) {
    const tensor *w = j->w[part];
    float *out = j->out[part];
    size_t stride = (size_t)w->rows;
    if (w->type != RQ4_TYPE_F32 && j->xq) {
        dot_fn dot = w->type == RQ4_TYPE_Q4S ? m->kernels->dot_q4s
                   : w->type == RQ4_TYPE_Q4A ? m->kernels->dot_q4a : m->kernels->dot_q8;
        qmat mat = {w->q, w->d, w->m, w->row_bytes, w->cols, w->gs, w->ngroups, w->rows};
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
    for (int p = 0, base = 0; p < j->n_parts; base += j->w[p]->rows, p++) {
        int lo = start > base ? start : base, hi = end < base + j->w[p]->rows ? end : base + j->w[p]->rows;
        if (lo < hi) matmul_part(m, j, p, thread, lo - base, hi - base);
    }
}

/* out[i] (ntok, w[i]->rows) = x (ntok, cols) times w[i]^T for i < n, every
 * weight row read once for all ntok tokens, the rows spread over the threads. */
static void matmul_n(rq4_model *m, const float *x, int ntok, int n, const tensor *const *w, float *const *out) {
    matmul_job j = {x, ntok, n, {0}, {0}, NULL};
    int rows = 0;
    for (int i = 0; i < n; i++) {
        j.w[i] = w[i];
        j.out[i] = out[i];
        if (!m->float_activations && w[i]->type != RQ4_TYPE_F32 && !j.xq)
            j.xq = quantized_input(m, x, w[i]->cols, ntok);
        rows += w[i]->rows;
    }
    /* a prompt chunk's matmul: 8 chunks per thread, as each chunk of rows is
     * long and an uneven end costs more than the extra hand-offs; decoding
     * keeps 4 (its chunks are short) */
    run_parallel_chunks(m, matmul_rows, &j, rows, ntok > 1 ? 8 : 4);
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

/* n values of the cache from element `at`, as floats (f16: converted into tmp). */
static inline const float *cache_row(const void *cache, int f16, size_t at, int n, float *tmp) {
    if (!f16) return (const float *)cache + at;
    const uint16_t *src = (const uint16_t *)cache + at;
    uint32_t *bits = (uint32_t *)(void *)tmp;
    /* fp16_to_f32 written as selects rather than a branch, so it vectorizes:
     * the same exact values */
    for (int i = 0; i < n; i++) {
        uint32_t h = src[i], mag = (h & 0x7fffu) << 13;
        float f;
        memcpy(&f, &mag, sizeof f);
        f *= 0x1p112f;
        uint32_t finite;
        memcpy(&finite, &f, sizeof finite);
        uint32_t special = 0u - (uint32_t)((h & 0x7c00u) == 0x7c00u); /* all ones for inf, nan */
        bits[i] = ((h & 0x8000u) << 16) | (special & (0x7f800000u | mag)) | (~special & finite);
    }
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

/* Element offset of (layer, kv head, position) in the value cache: head-major,
 * so attention streams each head's rows from one contiguous block (a row-major
 * (position, kv_dim) cache made it read head_dim of every kv_dim values, and
 * decoding spent more time there than in the matmuls). */
static inline size_t kv_at(const rq4_model *m, int layer, int kv_head, int pos) {
    const rq4_config *c = &m->config;
    return (((size_t)layer * (size_t)c->n_kv_heads + (size_t)kv_head) * (size_t)kv_len(c->n_ctx) + (size_t)pos) *
           (size_t)c->head_dim;
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

typedef struct attention_job {
    int layer;
    int pos0;            /* position of the chunk's first token */
    int heads_per_item;  /* kv_mul (a whole GQA group), or 1 when that leaves threads idle */
} attention_job;

/* Items [start, end) of (token, group of heads_per_item query heads): causal
 * attention over the cached positions 0..pos, into xb. A group lies within the
 * query heads sharing one kv head (GQA), so each key and value row is read
 * (and converted from f16) once for the group; each query head's arithmetic is
 * the same whatever the grouping. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute) && defined(__ELF__)
#if __has_attribute(target_clones)
/* Compiled also for AVX2 and AVX-512 (chosen at load time): prompt attention
 * and the SwiGLU product are compute-bound. No fma is formed (-ffp-contract=off /
 * ISO C mode), so every clone computes the same lane-wise operations in the
 * same order: same bits. */
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef VECTOR_CLONES
#define VECTOR_CLONES
#endif

VECTOR_CLONES static void attend(const rq4_model *m, void *arg, int thread, int start, int end) {
    const attention_job *j = arg;
    const rq4_config *c = &m->config;
    int hd = c->head_dim, kv_mul = c->n_heads / c->n_kv_heads, f16 = c->kv_type == RQ4_KV_F16;
    int nh = j->heads_per_item, items_per_token = c->n_heads / nh;
    float *att = m->att + (size_t)thread * attention_scratch(c); /* (kv_mul, n_ctx) scores */
    float *tmp = att + (size_t)kv_mul * (size_t)c->n_ctx;         /* (4, head_dim) f16 rows as floats */
    float scale = (float)(1.0 / sqrt((double)hd));
    for (int item = start; item < end; item++) {
        int t = item / items_per_token, h0 = item % items_per_token * nh, pos = j->pos0 + t;
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

/* Tokens [start, end) of the SwiGLU product: hb = silu(hb) * hb2, with
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
}

/* Token row r of the embedding table, dequantized (no float copy of the table). */
static void embed(const rq4_model *m, int token, float *out) { dequantize_row(&m->tok_embeddings, token, out); }

/* ---------------------------------------------------------------------------
 * The forward pass of one chunk of ntok tokens at positions pos0 .. pos0+ntok-1.
 * logits: NULL, or (n_out, vocab) where n_out is ntok (all_logits) or 1 (the
 * chunk's last token). */

static void forward_chunk(rq4_model *m, const int32_t *tokens, int ntok, int pos0, float *logits, int all_logits) {
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
            for (int h = 0; h < c->n_kv_heads; h++) {
                size_t at = kv_at(m, l, h, pos0 + t), src = (size_t)t * m->kv_dim + (size_t)h * (size_t)hd;
                cache_put(m->key_cache, c->kv_type, key_at(m, l, h, pos0 + t), 16, m->k + src, hd);
                cache_put(m->value_cache, c->kv_type, at, 1, m->v + src, hd);
            }
        }

        /* multi-head (grouped-query) causal attention, into xb (ntok, q_dim) */
        attention_job aj = {l, pos0, c->n_heads / c->n_kv_heads};
        if (ntok * c->n_kv_heads < 2 * c->n_threads) aj.heads_per_item = 1; /* decoding: one head per item */
        run_parallel(m, attend, &aj, ntok * (c->n_heads / aj.heads_per_item));
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
        run_parallel(m, swiglu_tokens, NULL, ntok);
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

/* ---------------------------------------------------------------------------
 * Public API */

void rq4_default_options(rq4_options *opts) {
    if (!opts) return;
    memset(opts, 0, sizeof *opts);
    opts->kv_type = RQ4_KV_F32;
}

void rq4_close(rq4_model *m) {
    if (!m) return;
    free_pool(m->pool);
    free(m->key_cache);
    free(m->value_cache);
    free(m->x);
    free(m->xb);
    free(m->xb2);
    free(m->q);
    free(m->k);
    free(m->v);
    free(m->hb);
    free(m->hb2);
    free(m->rope);
    free(m->acts.a.q);
    free(m->acts.a.qp);
    free(m->acts.a.qt);
    free(m->acts.a.dt);
    free(m->acts.a.st);
    free(m->acts.a.d);
    free(m->acts.a.s);
    free(m->att);
    free(m->row);
    free(m->inv_freq);
    free(m->layers);
    free(m->by_name);
    if (m->map) munmap(m->map, m->map_size);
    if (m->fd >= 0) close(m->fd);
    free(m);
}

/* Maps the file read-only. */
static rq4_status map_file(rq4_model *m, const char *path, rq4_error *err) {
    struct stat st;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (issue 8: `runq4 fifo`
     * hung); fstat then refuses it. No effect on regular files and mmap. */
    m->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (m->fd < 0) return fail(err, RQ4_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    if (fstat(m->fd, &st) != 0) return fail(err, RQ4_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return fail(err, RQ4_ERR_IO, "%s is a directory, not an .rq4 file", path);
    if (!S_ISREG(st.st_mode)) return fail(err, RQ4_ERR_IO, "%s is not a regular file", path);
    if (st.st_size == 0) return fail(err, RQ4_ERR_FORMAT, "%s is empty, not an .rq4 file", path);
    if ((uint64_t)st.st_size > SIZE_MAX) return fail(err, RQ4_ERR_IO, "%s is too large to map", path);
    m->map_size = (size_t)st.st_size;
    void *p = mmap(NULL, m->map_size, PROT_READ, MAP_PRIVATE, m->fd, 0);
    if (p == MAP_FAILED) return fail(err, RQ4_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    m->map = p;
    return RQ4_OK;
}

/* Allocates n zeroed bytes into *p (calloc also keeps valgrind quiet about
 * reading never-written padding). */
static int alloc(void *p, size_t n) {
    void **pp = p;
    *pp = calloc(1, n ? n : 1);
    return *pp != NULL;
}

static rq4_status allocate_buffers(rq4_model *m, rq4_error *err) {
    const rq4_config *c = &m->config;
    size_t B = RQ4_BATCH, dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t q_dim = (size_t)m->q_dim, kv_dim = (size_t)m->kv_dim, hd = (size_t)c->head_dim;
    size_t max_in = dim > q_dim ? dim : q_dim, max_cols = max_in > hidden ? max_in : hidden;
    size_t kv_elem = c->kv_type == RQ4_KV_F16 ? 2 : 4, nt = (size_t)c->n_threads;
    size_t kv_bytes = (size_t)c->n_layers * (size_t)kv_len(c->n_ctx) * kv_dim * kv_elem;
    int ok = alloc(&m->x, B * dim * 4) && alloc(&m->xb, B * max_in * 4) && alloc(&m->xb2, B * dim * 4) &&
             alloc(&m->q, B * q_dim * 4) && alloc(&m->k, B * kv_dim * 4) && alloc(&m->v, B * kv_dim * 4) &&
             alloc(&m->hb, B * hidden * 4) && alloc(&m->hb2, B * hidden * 4) && alloc(&m->rope, B * hd * 4) &&
             alloc(&m->att, nt * attention_scratch(c) * 4) && alloc(&m->row, nt * max_cols * 4) &&
             alloc(&m->key_cache, kv_bytes) && alloc(&m->value_cache, kv_bytes) &&
             alloc(&m->acts.a.q, B * max_cols) && alloc(&m->acts.a.qp, B * max_cols) &&
             alloc(&m->acts.a.d, B * (max_cols / QK) * 4) && alloc(&m->acts.a.s, B * (max_cols / QK) * 4) &&
             alloc(&m->acts.a.qt, B * max_cols) && alloc(&m->acts.a.dt, B * (max_cols / QK) * 4) &&
             alloc(&m->acts.a.st, B * (max_cols / QK) * 4);
    if (!ok)
        return fail(err, RQ4_ERR_NOMEM, "out of memory for the buffers and the %zu-byte KV cache", 2 * kv_bytes);
    return RQ4_OK;
}

static rq4_status open_model(rq4_model *m, const char *path, const rq4_options *o, rq4_error *err) {
    rq4_config *c = &m->config;
    rq4_status s;
    if (o->n_threads < 0 || o->n_threads > MAX_THREADS)
        return fail(err, RQ4_ERR_ARG, "n_threads = %d is outside [0, %d]", o->n_threads, MAX_THREADS);
    if (o->kv_type != RQ4_KV_F32 && o->kv_type != RQ4_KV_F16)
        return fail(err, RQ4_ERR_ARG, "kv_type = %d is neither RQ4_KV_F32 (0) nor RQ4_KV_F16 (1)", o->kv_type);
    if (o->n_ctx < 0) return fail(err, RQ4_ERR_ARG, "n_ctx = %d is negative", o->n_ctx);
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) /* the tensors are used in place, as little-endian */
        return fail(err, RQ4_ERR_UNSUPPORTED, "this build runs on little-endian machines only");

    /* the file: map it, check the header and every table entry */
    if ((s = map_file(m, path, err))) return s;
    if ((s = check_header(m, err))) return s;
    for (uint32_t i = 0; i < (uint32_t)m->n_entries; i++)
        if ((s = check_entry(m, i, err))) return s;
    if (!alloc(&m->by_name, (size_t)m->n_entries * sizeof(uint32_t)))
        return fail(err, RQ4_ERR_NOMEM, "out of memory");
    sort_entries(m);
    for (int i = 1; i < m->n_entries; i++)
        if (strcmp(entry_name(m, m->by_name[i - 1]), entry_name(m, m->by_name[i])) == 0) {
            char buf[RQ4_NAME_MAX + 1];
            return fail(err, RQ4_ERR_FORMAT, "two entries are named %s",
                        printable(entry_name(m, m->by_name[i]), buf, sizeof buf));
        }

    /* the open-time choices */
    if (o->n_ctx > c->max_seq_len)
        return fail(err, RQ4_ERR_ARG, "n_ctx = %d exceeds the model's max_seq_len = %d", o->n_ctx, c->max_seq_len);
    c->n_ctx = o->n_ctx ? o->n_ctx : (c->max_seq_len < RQ4_DEFAULT_CTX ? c->max_seq_len : RQ4_DEFAULT_CTX);
    c->n_threads = o->n_threads ? o->n_threads : 1;
    c->kv_type = o->kv_type;
    m->float_activations = o->float_activations != 0;
    m->q_dim = c->n_heads * c->head_dim;
    m->kv_dim = c->n_kv_heads * c->head_dim;
    m->max_cols = (int)max3((uint64_t)c->dim, (uint64_t)m->q_dim, (uint64_t)c->hidden_dim);
    m->kernels = kernels_select();

    /* the weights: every tensor by name, with its shape */
    if (!alloc(&m->layers, (size_t)c->n_layers * sizeof(layer_weights)))
        return fail(err, RQ4_ERR_NOMEM, "out of memory");
    if ((s = map_weights(m, err))) return s;

    /* the memory limit, before the big allocations */
    uint64_t need = memory_needed(c, m->n_entries, c->n_ctx, c->kv_type, c->n_threads);
    if (o->max_memory && sat_add((uint64_t)m->map_size, need) > o->max_memory)
        return fail(err, RQ4_ERR_MEMORY_LIMIT,
                    "needs %llu bytes (file %zu + KV cache and buffers %llu for n_ctx %d), over max_memory %llu",
                    (unsigned long long)sat_add((uint64_t)m->map_size, need), m->map_size, (unsigned long long)need, c->n_ctx,
                    (unsigned long long)o->max_memory);
    if (need > SIZE_MAX / 2)
        return fail(err, RQ4_ERR_NOMEM, "needs %llu bytes for n_ctx %d, more than this machine can address",
                    (unsigned long long)need, c->n_ctx);
    if (!alloc(&m->inv_freq, (size_t)(c->head_dim / 2) * sizeof(double)))
        return fail(err, RQ4_ERR_NOMEM, "out of memory");
    compute_inv_freq(c, m->inv_freq);
    if ((s = allocate_buffers(m, err))) return s;
    if (c->n_threads > 1 && (s = build_pool(&m->pool, c->n_threads - 1, err))) return s;
    return RQ4_OK;
}

rq4_status rq4_open(const char *path, const rq4_options *opts, rq4_model **out, rq4_error *err) {
    rq4_options defaults;
    rq4_status s;
    if (out) *out = NULL;
    if (!path || !out) return fail(err, RQ4_ERR_ARG, "rq4_open: path and out must not be NULL");
    if (!opts) {
        rq4_default_options(&defaults);
        opts = &defaults;
    }
    rq4_model *m = calloc(1, sizeof *m);
    if (!m) return fail(err, RQ4_ERR_NOMEM, "out of memory");
    m->fd = -1;
    if ((s = open_model(m, path, opts, err)) != RQ4_OK) {
        rq4_close(m);
        return s;
    }
    *out = m;
    return succeed(err);
}

const rq4_config *rq4_get_config(const rq4_model *m) { return m ? &m->config : NULL; }

rq4_status rq4_forward(rq4_model *m, const int32_t *tokens, int32_t n, float *logits, int32_t all_logits,
                       rq4_error *err) {
    if (!m || !tokens) return fail(err, RQ4_ERR_ARG, "rq4_forward: model and tokens must not be NULL");
    if (n <= 0) return fail(err, RQ4_ERR_ARG, "rq4_forward: n = %d, need at least one token", n);
    const rq4_config *c = &m->config;
    if (n > c->n_ctx - m->pos)
        return fail(err, RQ4_ERR_CONTEXT_FULL, "%d tokens at position %d do not fit in the context of %d", n, m->pos,
                    c->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return fail(err, RQ4_ERR_ARG, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i,
                        c->vocab_size);
    for (int32_t start = 0; start < n; start += RQ4_BATCH) {
        int ntok = n - start < RQ4_BATCH ? n - start : RQ4_BATCH;
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)start * (size_t)c->vocab_size;
        else if (logits && start + ntok == n) out = logits;
        forward_chunk(m, tokens + start, ntok, m->pos, out, all_logits);
        m->pos += ntok;
    }
    return succeed(err);
}

int32_t rq4_position(const rq4_model *m) { return m ? m->pos : 0; }

rq4_status rq4_rewind(rq4_model *m, int32_t pos, rq4_error *err) {
    if (!m) return fail(err, RQ4_ERR_ARG, "rq4_rewind: model must not be NULL");
    if (pos < 0 || pos > m->pos)
        return fail(err, RQ4_ERR_ARG, "rq4_rewind: position %d is outside [0, %d]", pos, m->pos);
    m->pos = pos; /* the cache beyond pos is simply overwritten later */
    return succeed(err);
}

const void *rq4_blob(const rq4_model *m, const char *name, uint64_t *size) {
    if (size) *size = 0;
    if (!m || !name) return NULL;
    int64_t i = find_entry(m, name);
    if (i < 0) return NULL;
    const uint8_t *e = entry_at(m, (uint32_t)i);
    if (read_u32(e + E_TYPE) != RQ4_TYPE_BLOB) return NULL;
    if (size) *size = read_u64(e + E_SIZE);
    return m->map + read_u64(e + E_OFFSET);
}

uint64_t rq4_memory_needed(const rq4_model *m, int32_t n_ctx, int32_t kv_type) {
    if (!m) return 0;
    if (n_ctx <= 0) n_ctx = m->config.max_seq_len;
    return memory_needed(&m->config, m->n_entries, n_ctx, kv_type, m->config.n_threads);
}

const char *rq4_kernel_name(void) { return kernels_select()->name; }

const char *rq4_strerror(int32_t code) {
    switch (code) {
    case RQ4_OK: return "success";
    case RQ4_ERR_IO: return "cannot open, stat or map the file";
    case RQ4_ERR_FORMAT: return "not an .rq4 file, or a corrupt or truncated one";
    case RQ4_ERR_VERSION: return "an .rq4 file of another format version";
    case RQ4_ERR_UNSUPPORTED: return "a valid file this build cannot run";
    case RQ4_ERR_NOMEM: return "out of memory";
    case RQ4_ERR_ARG: return "bad argument";
    case RQ4_ERR_CONTEXT_FULL: return "the tokens do not fit in the remaining context";
    case RQ4_ERR_MEMORY_LIMIT: return "the model and context exceed the memory limit";
    case RQ4_ERR_THREAD: return "a worker thread could not be started";
    default: return "unknown error";
    }
}
