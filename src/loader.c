/* The .rq4 file: mapping it, checking its header and table (every check
 * runq.c never made: sizes, offsets, finite scales, duplicate names), and
 * views of its tensors and blobs. */
#define _DEFAULT_SOURCE /* madvise */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64 /* files over 2 GB on 32-bit boards */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A name from the file, made printable for a message. */
static const char *printable(const char *s, char *buf, size_t size) {
    size_t i = 0;
    for (; s[i] && i + 1 < size; i++) buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    buf[i] = '\0';
    return buf;
}

/* Reading the file: little-endian fields at fixed offsets */

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
    H_GROUP_SIZE = 112, H_N_ENTRIES = 116, H_TABLE_OFFSET = 120, H_FFN_ROTATION = 128
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

static int is_interleaved(int type) { return type == RQ4_TYPE_Q4S_R4 || type == RQ4_TYPE_Q4A_R4; }

/* The rows a quantized tensor stores: the interleaved types pad the last
 * group of RQ4_INTERLEAVE rows with whole rows (docs/FORMAT.md). */
static uint64_t stored_rows(int type, uint64_t rows) {
    return is_interleaved(type) ? (rows + RQ4_INTERLEAVE - 1) / RQ4_INTERLEAVE * RQ4_INTERLEAVE : rows;
}

/* Bytes of a quantized tensor's values, and the offsets of its scales and
 * minimums (Q4T: of its table of levels, in mins_at); 0 on overflow. */
static int quantized_layout(int type, uint64_t rows, uint64_t cols, uint64_t gs, uint64_t *values,
                            uint64_t *scales_at, uint64_t *mins_at, uint64_t *size) {
    uint64_t ngroups = (cols + gs - 1) / gs, row_bytes = type == RQ4_TYPE_Q8 ? cols : cols / 2;
    uint64_t scale_bytes;
    rows = stored_rows(type, rows);
    if (!mul_add_u64(rows, row_bytes, 0, values) || *values > UINT64_MAX - 64) return 0;
    *scales_at = align64(*values);
    if (!mul_add_u64(rows, ngroups * 2, *scales_at, size)) return 0;
    scale_bytes = *size - *scales_at;
    *mins_at = 0;
    if (type == RQ4_TYPE_Q4A || type == RQ4_TYPE_Q4A_R4) {
        if (*size > UINT64_MAX - 64) return 0;
        *mins_at = align64(*size);
        if (*mins_at > UINT64_MAX - scale_bytes) return 0;
        *size = *mins_at + scale_bytes;
    }
    if (type == RQ4_TYPE_Q4T) {
        if (*size > UINT64_MAX - 64 - RQ4_Q4T_LEVELS) return 0;
        *mins_at = align64(*size);
        *size = *mins_at + RQ4_Q4T_LEVELS;
    }
    return 1;
}

static int is_quantized(int type) {
    return type == RQ4_TYPE_Q4S || type == RQ4_TYPE_Q4A || type == RQ4_TYPE_Q8 || type == RQ4_TYPE_Q4T ||
           is_interleaved(type);
}

static const char *type_name(int type) {
    static const char *names[] = {"F32", "Q4S", "Q4A", "Q8", "BLOB", "Q4S_R4", "Q4A_R4", "Q4T"};
    return type >= 0 && type <= RQ4_TYPE_Q4T ? names[type] : "?";
}

static rq4_status read_field(const uint8_t *h, int off, const char *name, uint32_t lo, uint32_t hi, int32_t *dst,
                             rq4_error *err) {
    uint32_t v = read_u32(h + off);
    if (v < lo || v > hi)
        return rq4_fail(err, RQ4_ERR_FORMAT, "header field %s = %u is outside [%u, %u]", name, v, lo, hi);
    *dst = (int32_t)v;
    return RQ4_OK;
}

static int fp16_finite(uint16_t h) { return ((h >> 10) & 0x1f) != 0x1f; }

/* Checks the fixed header and fills m->config. */
static rq4_status check_header(rq4_model *m, rq4_error *err) {
    const uint8_t *h = m->map;
    rq4_config *c = &m->config;
    if (m->map_size < RQ4_HEADER_SIZE)
        return rq4_fail(err, RQ4_ERR_FORMAT, "not an .rq4 file: %zu bytes, shorter than the %d-byte header",
                    m->map_size, RQ4_HEADER_SIZE);
    if (memcmp(h, RQ4_MAGIC, 8) != 0) {
        if (memcmp(h, "GGUF", 4) == 0)
            return rq4_fail(err, RQ4_ERR_FORMAT, "not an .rq4 file but a GGUF file (convert it with the exporter)");
        return rq4_fail(err, RQ4_ERR_FORMAT, "not an .rq4 file (bad magic)");
    }
    uint32_t version = read_u32(h + H_VERSION);
    if (version < RQ4_MIN_FORMAT_VERSION || version > RQ4_FORMAT_VERSION)
        return rq4_fail(err, RQ4_ERR_VERSION, "the file is .rq4 format version %u; this build reads versions %d to %d",
                    version, RQ4_MIN_FORMAT_VERSION, RQ4_FORMAT_VERSION);
    if (read_u32(h + H_HEADER_SIZE) != RQ4_HEADER_SIZE)
        return rq4_fail(err, RQ4_ERR_FORMAT, "header_size is %u, expected %d", read_u32(h + H_HEADER_SIZE),
                    RQ4_HEADER_SIZE);
    uint64_t file_size = read_u64(h + H_FILE_SIZE);
    if (file_size != m->map_size)
        return rq4_fail(err, RQ4_ERR_FORMAT, "file is %zu bytes but its header says %llu (truncated or padded copy?)",
                    m->map_size, (unsigned long long)file_size);

/* Reads an unsigned field into dst and checks lo <= value <= hi. */
#define FIELD(dst, off, name, lo, hi)                                             \
    do {                                                                        \
        rq4_status s_ = read_field(h, (off), (name), (lo), (hi), &(dst), err); \
        if (s_ != RQ4_OK) return s_;                                            \
    } while (0)

    FIELD(c->dim, H_DIM, "dim", 1, RQ4_MAX_DIM);
    FIELD(c->hidden_dim, H_HIDDEN_DIM, "hidden_dim", 1, RQ4_MAX_HIDDEN_DIM);
    FIELD(c->n_layers, H_N_LAYERS, "n_layers", 1, RQ4_MAX_LAYERS);
    FIELD(c->n_heads, H_N_HEADS, "n_heads", 1, RQ4_MAX_HEADS);
    FIELD(c->n_kv_heads, H_N_KV_HEADS, "n_kv_heads", 1, (uint32_t)c->n_heads);
    FIELD(c->head_dim, H_HEAD_DIM, "head_dim", 2, RQ4_MAX_HEAD_DIM);
    FIELD(c->vocab_size, H_VOCAB_SIZE, "vocab_size", 1, RQ4_MAX_VOCAB);
    FIELD(c->max_seq_len, H_MAX_SEQ_LEN, "max_seq_len", 1, RQ4_MAX_SEQ_LEN);
    FIELD(c->tied_embeddings, H_TIED, "tied_embeddings", 0, 1);
    FIELD(c->n_eos, H_N_EOS, "n_eos", 0, RQ4_MAX_EOS);
    FIELD(c->rope_scaling, H_ROPE_SCALING, "rope_scaling", RQ4_ROPE_NONE, RQ4_ROPE_LLAMA3);
    FIELD(m->n_entries, H_N_ENTRIES, "n_entries", 1, RQ4_MAX_ENTRIES);
    /* version 1 has no ffn_rotation (its bytes were reserved, never read) */
    if (version >= 2) FIELD(c->ffn_rotation, H_FFN_ROTATION, "ffn_rotation", RQ4_FFN_ROTATION_NONE,
                            RQ4_FFN_ROTATION_HADAMARD);
#undef FIELD
    if (c->dim % 32 != 0) return rq4_fail(err, RQ4_ERR_FORMAT, "header field dim = %d is not a multiple of 32", c->dim);
    if (c->hidden_dim % 32 != 0)
        return rq4_fail(err, RQ4_ERR_FORMAT, "header field hidden_dim = %d is not a multiple of 32", c->hidden_dim);
    if (c->n_heads % c->n_kv_heads != 0)
        return rq4_fail(err, RQ4_ERR_FORMAT, "n_kv_heads = %d does not divide n_heads = %d", c->n_kv_heads, c->n_heads);
    if (c->head_dim % 2 != 0)
        return rq4_fail(err, RQ4_ERR_FORMAT, "header field head_dim = %d is odd", c->head_dim);
    if ((c->n_heads * c->head_dim) % 32 != 0 || (c->n_kv_heads * c->head_dim) % 32 != 0)
        return rq4_fail(err, RQ4_ERR_FORMAT, "n_heads*head_dim = %d and n_kv_heads*head_dim = %d must be multiples of 32",
                    c->n_heads * c->head_dim, c->n_kv_heads * c->head_dim);
    c->bos_id = read_i32(h + H_BOS_ID);
    if (c->bos_id < -1 || c->bos_id >= c->vocab_size)
        return rq4_fail(err, RQ4_ERR_FORMAT, "header field bos_id = %d is outside [-1, %d)", c->bos_id, c->vocab_size);
    for (int i = 0; i < RQ4_MAX_EOS; i++) {
        c->eos_ids[i] = read_i32(h + H_EOS_IDS + 4 * i);
        if (i < c->n_eos && (c->eos_ids[i] < 0 || c->eos_ids[i] >= c->vocab_size))
            return rq4_fail(err, RQ4_ERR_FORMAT, "header field eos_ids[%d] = %d is outside [0, %d)", i, c->eos_ids[i],
                        c->vocab_size);
        if (i >= c->n_eos && c->eos_ids[i] != -1)
            return rq4_fail(err, RQ4_ERR_FORMAT, "header field eos_ids[%d] = %d beyond n_eos = %d must be -1", i,
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
        return rq4_fail(err, RQ4_ERR_FORMAT, "header field norm_eps = %g must be finite and > 0", c->norm_eps);
    if (!(isfinite(c->rope_theta) && c->rope_theta > 0))
        return rq4_fail(err, RQ4_ERR_FORMAT, "header field rope_theta = %g must be finite and > 0", c->rope_theta);
    if (c->rope_scaling == RQ4_ROPE_LLAMA3) {
        if (read_u32(h + H_ROPE_ORIG_MAX_POS) < 1 || read_u32(h + H_ROPE_ORIG_MAX_POS) > INT32_MAX)
            return rq4_fail(err, RQ4_ERR_FORMAT, "header field rope_original_max_pos = %u must be >= 1 for llama3 RoPE",
                        read_u32(h + H_ROPE_ORIG_MAX_POS));
        if (!(isfinite(c->rope_factor) && c->rope_factor >= 1))
            return rq4_fail(err, RQ4_ERR_FORMAT, "header field rope_factor = %g must be finite and >= 1", c->rope_factor);
        if (!(isfinite(c->rope_low_freq_factor) && c->rope_low_freq_factor > 0))
            return rq4_fail(err, RQ4_ERR_FORMAT, "header field rope_low_freq_factor = %g must be finite and > 0",
                        c->rope_low_freq_factor);
        if (!(isfinite(c->rope_high_freq_factor) && c->rope_high_freq_factor > c->rope_low_freq_factor))
            return rq4_fail(err, RQ4_ERR_FORMAT,
                        "header field rope_high_freq_factor = %g must be finite and > rope_low_freq_factor = %g",
                        c->rope_high_freq_factor, c->rope_low_freq_factor);
    }
    if (read_u64(h + H_TABLE_OFFSET) != RQ4_HEADER_SIZE)
        return rq4_fail(err, RQ4_ERR_FORMAT, "table_offset is %llu, expected %d",
                    (unsigned long long)read_u64(h + H_TABLE_OFFSET), RQ4_HEADER_SIZE);
    if ((uint64_t)RQ4_HEADER_SIZE + (uint64_t)m->n_entries * RQ4_ENTRY_SIZE > m->map_size)
        return rq4_fail(err, RQ4_ERR_FORMAT, "the table of %d entries runs past the end of the %zu-byte file",
                    m->n_entries, m->map_size);
    return RQ4_OK;
}

/* Checks one table entry on its own: name, type, shape, placement, size. */
static rq4_status check_entry(const rq4_model *m, uint32_t i, rq4_error *err) {
    const uint8_t *e = entry_at(m, i);
    char buf[RQ4_NAME_MAX + 1];
    if (memchr(e + E_NAME, 0, RQ4_NAME_MAX) == NULL)
        return rq4_fail(err, RQ4_ERR_FORMAT, "entry %u: name is not NUL-terminated", i);
    const char *name = printable((const char *)e + E_NAME, buf, sizeof buf);
    if (name[0] == '\0') return rq4_fail(err, RQ4_ERR_FORMAT, "entry %u has an empty name", i);
    uint32_t type = read_u32(e + E_TYPE), gs = read_u32(e + E_GROUP_SIZE);
    uint32_t rows = read_u32(e + E_ROWS), cols = read_u32(e + E_COLS);
    uint64_t offset = read_u64(e + E_OFFSET), size = read_u64(e + E_SIZE), expected = 0;
    if (type > RQ4_TYPE_Q4T) return rq4_fail(err, RQ4_ERR_FORMAT, "entry %s: unknown type %u", name, type);
    if (is_quantized((int)type)) {
        if (gs < RQ4_MIN_GROUP || gs > RQ4_MAX_GROUP || gs % 32 != 0)
            return rq4_fail(err, RQ4_ERR_FORMAT, "entry %s: group_size %u is not a multiple of 32 in [%d, %d]", name, gs,
                           RQ4_MIN_GROUP, RQ4_MAX_GROUP);
        if (cols % 32 != 0)
            return rq4_fail(err, RQ4_ERR_FORMAT, "entry %s: %u columns, not a multiple of 32", name, cols);
    } else if (gs != 0) {
        return rq4_fail(err, RQ4_ERR_FORMAT, "entry %s: group_size %u for an unquantized %s entry", name, gs,
                    type_name((int)type));
    }
    if (type != RQ4_TYPE_BLOB && (rows == 0 || cols == 0))
        return rq4_fail(err, RQ4_ERR_FORMAT, "entry %s: empty shape %ux%u", name, rows, cols);
    if (offset % RQ4_ALIGN != 0)
        return rq4_fail(err, RQ4_ERR_FORMAT, "entry %s: offset %llu is not a multiple of %d", name,
                    (unsigned long long)offset, RQ4_ALIGN);
    uint64_t table_end = RQ4_HEADER_SIZE + (uint64_t)m->n_entries * RQ4_ENTRY_SIZE;
    if (offset < table_end || offset > m->map_size || size > m->map_size - offset)
        return rq4_fail(err, RQ4_ERR_FORMAT, "entry %s: bytes [%llu, +%llu) are not inside the data area [%llu, %zu)",
                    name, (unsigned long long)offset, (unsigned long long)size, (unsigned long long)table_end,
                    m->map_size);
    if (type == RQ4_TYPE_BLOB) return RQ4_OK;
    uint64_t values, scales_at, mins_at;
    int ok = type == RQ4_TYPE_F32 ? mul_add_u64((uint64_t)rows * cols, 4, 0, &expected)
                                  : quantized_layout((int)type, rows, cols, gs, &values, &scales_at, &mins_at, &expected);
    if (!ok || size != expected)
        return rq4_fail(err, RQ4_ERR_FORMAT, "entry %s: %s %ux%u (group %u) takes %llu bytes, the table says %llu", name,
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

enum { WANT_MATRIX, WANT_F32 }; /* any tensor type but BLOB / F32 */

/* A Q4T table: RQ4_Q4T_LEVELS int8 levels in strictly increasing order (each
 * level one index: the exporter's nearest-level rounding and the reader's
 * inverse mapping rely on it). */
static rq4_status check_table(const int8_t *table, const char *name, rq4_error *err) {
    for (int i = 1; i < RQ4_Q4T_LEVELS; i++)
        if (table[i] <= table[i - 1])
            return rq4_fail(err, RQ4_ERR_FORMAT,
                            "tensor %s: the Q4T table is not strictly increasing (level %d = %d after %d)", name, i,
                            table[i], table[i - 1]);
    return RQ4_OK;
}

/* Looks up a required tensor with its expected shape and makes a view of it. */
static rq4_status map_tensor(rq4_model *m, const char *name, int want, int rows, int cols, tensor *t,
                             rq4_error *err) {
    int64_t i = find_entry(m, name);
    if (i < 0) return rq4_fail(err, RQ4_ERR_FORMAT, "tensor %s is missing", name);
    const uint8_t *e = entry_at(m, (uint32_t)i);
    int type = (int)read_u32(e + E_TYPE);
    uint32_t frows = read_u32(e + E_ROWS), fcols = read_u32(e + E_COLS);
    if (type == RQ4_TYPE_BLOB) return rq4_fail(err, RQ4_ERR_FORMAT, "tensor %s: is a BLOB entry", name);
    if (want == WANT_F32 && type != RQ4_TYPE_F32)
        return rq4_fail(err, RQ4_ERR_FORMAT, "tensor %s: expected F32, file has %s", name, type_name(type));
    if (frows != (uint32_t)rows || fcols != (uint32_t)cols)
        return rq4_fail(err, RQ4_ERR_FORMAT, "tensor %s: expected %dx%d, file has %ux%u", name, rows, cols, frows, fcols);
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
    if (is_interleaved(type)) t->row_bytes *= RQ4_INTERLEAVE; /* a group of rows */
    quantized_layout(type, (uint64_t)rows, (uint64_t)cols, (uint64_t)t->gs, &values, &scales_at, &mins_at, &size);
    t->d = (const uint16_t *)(base + scales_at);
    if (type == RQ4_TYPE_Q4T) {
        t->table = (const int8_t *)(base + mins_at);
        rq4_status s = check_table(t->table, name, err);
        if (s != RQ4_OK) return s;
    } else {
        t->m = mins_at ? (const uint16_t *)(base + mins_at) : NULL;
    }
    /* every stored scale must be finite (the padding rows' too: the kernels
     * compute them): one linear pass over the scales only */
    size_t n = (size_t)stored_rows(type, (uint64_t)rows) * (size_t)t->ngroups;
    for (size_t j = 0; j < n; j++)
        if (!fp16_finite(t->d[j]) || (t->m && !fp16_finite(t->m[j]))) {
            size_t row = j / (size_t)t->ngroups, group = j % (size_t)t->ngroups;
            if (is_interleaved(type)) { /* (row groups, ngroups, RQ4_INTERLEAVE) */
                row = j / ((size_t)t->ngroups * RQ4_INTERLEAVE) * RQ4_INTERLEAVE + j % RQ4_INTERLEAVE;
                group = j / RQ4_INTERLEAVE % (size_t)t->ngroups;
            }
            return rq4_fail(err, RQ4_ERR_FORMAT, "tensor %s: row %zu, group %zu has a non-finite %s", name, row,
                            group, fp16_finite(t->d[j]) ? "minimum" : "scale");
        }
    return RQ4_OK;
}

/* A norm weight: F32 values, every one finite (a NaN or Inf weight makes
 * every activation after it NaN). */
static rq4_status map_norm(rq4_model *m, const char *name, const float **out, rq4_error *err) {
    tensor t;
    rq4_status s = map_tensor(m, name, WANT_F32, 1, m->config.dim, &t, err);
    if (s != RQ4_OK) return s;
    for (int i = 0; i < m->config.dim; i++) {
        float v = read_f32(t.q + 4 * (size_t)i);
        if (!isfinite(v))
            return rq4_fail(err, RQ4_ERR_FORMAT, "tensor %s: value %d is not finite (%g)", name, i, (double)v);
    }
    *out = (const float *)t.q;
    return RQ4_OK;
}

/* The entries of ffn_rotation HADAMARD: the factor's order is its row count. */
static rq4_status map_ffn_rotation(rq4_model *m, rq4_error *err) {
    tensor signs, factor;
    rq4_status s;
    int64_t i = find_entry(m, "ffn_rotation.factor");
    if (i < 0) return rq4_fail(err, RQ4_ERR_FORMAT, "tensor ffn_rotation.factor is missing (header ffn_rotation = 1)");
    uint32_t order = read_u32(entry_at(m, (uint32_t)i) + E_ROWS);
    if (order < 1 || order > RQ4_MAX_ROTATION_FACTOR)
        return rq4_fail(err, RQ4_ERR_FORMAT, "tensor ffn_rotation.factor: order %u is outside [1, %d]", order,
                        RQ4_MAX_ROTATION_FACTOR);
    if ((s = map_tensor(m, "ffn_rotation.factor", WANT_F32, (int)order, (int)order, &factor, err))) return s;
    if ((s = map_tensor(m, "ffn_rotation.signs", WANT_F32, 1, m->config.hidden_dim, &signs, err))) return s;
    m->ffn_signs = (const float *)signs.q;
    m->ffn_factor = (const float *)factor.q;
    m->ffn_factor_order = (int)order;
    return rq4_check_ffn_rotation(m->ffn_signs, m->config.hidden_dim, m->ffn_factor, m->ffn_factor_order, err);
}

rq4_status rq4_map_weights(rq4_model *m, rq4_error *err) {
    const rq4_config *c = &m->config;
    char name[RQ4_NAME_MAX];
    rq4_status s;
    m->layers = calloc((size_t)c->n_layers, sizeof(layer_weights));
    if (!m->layers) return rq4_fail(err, RQ4_ERR_NOMEM, "out of memory");
    if ((s = map_tensor(m, "tok_embeddings", WANT_MATRIX, c->vocab_size, c->dim, &m->tok_embeddings, err))) return s;
    if (c->tied_embeddings) m->output = m->tok_embeddings;
    else if ((s = map_tensor(m, "output", WANT_MATRIX, c->vocab_size, c->dim, &m->output, err))) return s;
    if ((s = map_norm(m, "norm", &m->norm, err))) return s;
    if (c->ffn_rotation == RQ4_FFN_ROTATION_HADAMARD && (s = map_ffn_rotation(m, err))) return s;
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

#define HUGE_PAGE ((size_t)2 << 20) /* a page-table leaf one level up: x86-64, and arm64 with 4 KiB pages */

/* Whether the kernel maps the file in huge pages (one TLB entry per 2 MB):
 * reads the byte at the mapping's first huge-page boundary and asks how that
 * region is mapped (FilePmdMapped in /proc/self/smaps, Linux). Page-cache
 * pages that came in small stay small, so one region speaks for the file.
 * What cannot be told counts as small pages. */
static int huge_mapped(const uint8_t *map, size_t size) {
    uintptr_t at = ((uintptr_t)map + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    if (at + HUGE_PAGE > (uintptr_t)map + size) return 0;
    (void)*(volatile const uint8_t *)at;
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f) return 0;
    char line[512];
    int ours = 0;
    unsigned long kb = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) ours = lo <= at && at < hi;
        else if (ours && sscanf(line, "FilePmdMapped: %lu kB", &kb) == 1) break;
    }
    fclose(f);
    return kb > 0;
}

/* Maps the file read-only. */
static rq4_status map_file(rq4_model *m, const char *path, rq4_error *err) {
    struct stat st;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (`runq4 fifo`
     * would hang); fstat then refuses it. No effect on regular files and mmap. */
    m->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (m->fd < 0) return rq4_fail(err, RQ4_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    if (fstat(m->fd, &st) != 0) return rq4_fail(err, RQ4_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return rq4_fail(err, RQ4_ERR_IO, "%s is a directory, not an .rq4 file", path);
    if (!S_ISREG(st.st_mode)) return rq4_fail(err, RQ4_ERR_IO, "%s is not a regular file", path);
    if (st.st_size == 0) return rq4_fail(err, RQ4_ERR_FORMAT, "%s is empty, not an .rq4 file", path);
    if ((uint64_t)st.st_size > SIZE_MAX) return rq4_fail(err, RQ4_ERR_IO, "%s is too large to map", path);
    m->map_size = (size_t)st.st_size;
    void *p = mmap(NULL, m->map_size, PROT_READ, MAP_PRIVATE, m->fd, 0);
    if (p == MAP_FAILED) return rq4_fail(err, RQ4_ERR_IO, "cannot map %s: %s", path, strerror(errno));
#ifdef MADV_HUGEPAGE
    /* Before the first read: pages that enter the page cache through a
     * huge-page mapping come in 2 MB folios (where the kernel and file system
     * support them) and are mapped with one TLB entry each, so decoding
     * streams the weights at the speed of anonymous memory. The same pages,
     * no second copy; failure only costs that speed. */
    (void)madvise(p, m->map_size, MADV_HUGEPAGE);
#endif
    m->map = p;
    m->small_pages = !huge_mapped(m->map, m->map_size);
    return RQ4_OK;
}

rq4_status rq4_load_file(rq4_model *m, const char *path, rq4_error *err) {
    rq4_status s;
    if ((s = map_file(m, path, err))) return s;
    if ((s = check_header(m, err))) return s;
    for (uint32_t i = 0; i < (uint32_t)m->n_entries; i++)
        if ((s = check_entry(m, i, err))) return s;
    m->by_name = calloc((size_t)m->n_entries, sizeof(uint32_t));
    if (!m->by_name) return rq4_fail(err, RQ4_ERR_NOMEM, "out of memory");
    sort_entries(m);
    for (int i = 1; i < m->n_entries; i++)
        if (strcmp(entry_name(m, m->by_name[i - 1]), entry_name(m, m->by_name[i])) == 0) {
            char buf[RQ4_NAME_MAX + 1];
            return rq4_fail(err, RQ4_ERR_FORMAT, "two entries are named %s",
                            printable(entry_name(m, m->by_name[i]), buf, sizeof buf));
        }
    return RQ4_OK;
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
