/* Saved state: the KV cache up to the position and the ids that filled it,
 * written to a file and read back (docs/FORMAT.md, "Saved state").
 *
 * Only the filled positions go to the file: per layer and kv head, the key
 * blocks of 16 positions that hold them (see key_at in attention.c) and the
 * value rows. The file is tied to the model file (its size and a hash of its
 * header, its table and windows spread over the rest: the weights may be
 * gigabytes, and another file of the same shape differs in nearly every
 * window) and to the settings that shape the cache. Loading checks everything before
 * it touches the model, so a refused file leaves it as it was.
 */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char STATE_MAGIC[8] = {'R', 'Q', '4', 'S', 'T', 'A', 'T', 'E'};

/* The header, little-endian, STATE_HEADER_SIZE bytes. */
enum {
    S_MAGIC = 0,        /* STATE_MAGIC */
    S_VERSION = 8,      /* u32 RQ4_STATE_VERSION */
    S_KV_TYPE = 12,     /* u32 an rq4_kv_type */
    S_MODEL_SIZE = 16,  /* u64 bytes of the .rq4 file */
    S_MODEL_HASH = 24,  /* u64 model_hash */
    S_N_CTX = 32,       /* i32 */
    S_N_LAYERS = 36,    /* i32 */
    S_N_KV_HEADS = 40,  /* i32 */
    S_HEAD_DIM = 44,    /* i32 */
    S_N_TOKENS = 48,    /* i32 the position */
    S_RESERVED = 52,    /* u32 0 */
    S_CHECKSUM = 56,    /* u64 hash_bytes of everything after the header */
    STATE_HEADER_SIZE = 64
};

/* FNV-1a over 8-byte words (then the tail bytes): not cryptographic, it
 * catches a corrupt or foreign file, at the speed of memory. */
#define HASH_SEED 0xcbf29ce484222325ULL
#define HASH_PRIME 0x100000001b3ULL
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * HASH_PRIME;
    }
    for (; n; p++, n--) h = (h ^ *p) * HASH_PRIME;
    return h;
}

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* The data after the table enters the model hash as WEIGHT_WINDOWS windows
 * of WINDOW_BYTES, evenly spaced from its start to its end (all of it when it
 * is shorter): 256 KiB read, whatever the size of the file. */
#define WEIGHT_WINDOWS 1024
#define WINDOW_BYTES 256

static uint64_t model_hash(const rq4_model *m) {
    const size_t table = RQ4_HEADER_SIZE + (size_t)m->n_entries * RQ4_ENTRY_SIZE;
    uint64_t h = hash_bytes(HASH_SEED, m->map, table);
    const uint8_t *data = m->map + table;
    const size_t rest = m->map_size - table;
    if (rest <= (size_t)WEIGHT_WINDOWS * WINDOW_BYTES) return hash_bytes(h, data, rest);
    const size_t stride = (rest - WINDOW_BYTES) / (WEIGHT_WINDOWS - 1);
    for (size_t i = 0; i < WEIGHT_WINDOWS; i++) h = hash_bytes(h, data + i * stride, WINDOW_BYTES);
    return h;
}

/* The file's part of one (layer, kv head): key blocks covering n positions,
 * then n value rows; elements of the cache's type. */
static size_t key_elems(const rq4_config *c, int n) { return (size_t)kv_len(n) * (size_t)c->head_dim; }
static size_t value_elems(const rq4_config *c, int n) { return (size_t)n * (size_t)c->head_dim; }
static size_t elem_size(const rq4_config *c) { return c->kv_type == RQ4_KV_F16 ? 2 : 4; }

static uint64_t payload_size(const rq4_config *c, int n) {
    return (uint64_t)n * 4 + (uint64_t)c->n_layers * (uint64_t)c->n_kv_heads *
                                 (uint64_t)(key_elems(c, n) + value_elems(c, n)) * elem_size(c);
}

/* The checksum of a payload in one buffer, chained over the pieces in the
 * order rq4_save_state writes them. */
static uint64_t hash_payload(const rq4_config *c, int n, const uint8_t *p) {
    uint64_t sum = hash_bytes(HASH_SEED, p, (size_t)n * 4);
    p += (size_t)n * 4;
    size_t kb = key_elems(c, n) * elem_size(c), vb = value_elems(c, n) * elem_size(c);
    for (int i = 0; i < c->n_layers * c->n_kv_heads; i++, p += kb + vb)
        sum = hash_bytes(hash_bytes(sum, p, kb), p + kb, vb);
    return sum;
}

static void fill_header(const rq4_model *m, int n, uint64_t checksum, uint8_t *h) {
    const rq4_config *c = &m->config;
    memset(h, 0, STATE_HEADER_SIZE);
    memcpy(h + S_MAGIC, STATE_MAGIC, sizeof STATE_MAGIC);
    put_u32(h + S_VERSION, RQ4_STATE_VERSION);
    put_u32(h + S_KV_TYPE, (uint32_t)c->kv_type);
    put_u64(h + S_MODEL_SIZE, (uint64_t)m->map_size);
    put_u64(h + S_MODEL_HASH, model_hash(m));
    put_u32(h + S_N_CTX, (uint32_t)c->n_ctx);
    put_u32(h + S_N_LAYERS, (uint32_t)c->n_layers);
    put_u32(h + S_N_KV_HEADS, (uint32_t)c->n_kv_heads);
    put_u32(h + S_HEAD_DIM, (uint32_t)c->head_dim);
    put_u32(h + S_N_TOKENS, (uint32_t)n);
    put_u64(h + S_CHECKSUM, checksum);
}

/* ---- saving ---- */

static int write_all(int fd, const void *data, size_t n) {
    const uint8_t *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The payload after a placeholder header, then the header with its checksum. */
static int write_state(int fd, const rq4_model *m, const int32_t *tokens, int n) {
    const rq4_config *c = &m->config;
    uint8_t h[STATE_HEADER_SIZE];
    fill_header(m, n, 0, h);
    if (write_all(fd, h, sizeof h)) return -1;
    uint64_t sum = hash_bytes(HASH_SEED, tokens, (size_t)n * 4);
    if (write_all(fd, tokens, (size_t)n * 4)) return -1;
    size_t es = elem_size(c), kb = key_elems(c, n) * es, vb = value_elems(c, n) * es;
    for (int l = 0; l < c->n_layers; l++)
        for (int kh = 0; kh < c->n_kv_heads; kh++) {
            const uint8_t *k = (const uint8_t *)m->key_cache + kv_at(m, l, kh, 0) * es;
            const uint8_t *v = (const uint8_t *)m->value_cache + kv_at(m, l, kh, 0) * es;
            sum = hash_bytes(sum, k, kb);
            sum = hash_bytes(sum, v, vb);
            if (write_all(fd, k, kb) || write_all(fd, v, vb)) return -1;
        }
    fill_header(m, n, sum, h);
    if (pwrite(fd, h, sizeof h, 0) != (ssize_t)sizeof h) return -1;
    return fsync(fd);
}

rq4_status rq4_save_state(const rq4_model *m, const char *path, const int32_t *tokens, int32_t n,
                          rq4_error *err) {
    if (!m || !path) return rq4_fail(err, RQ4_ERR_ARG, "rq4_save_state: model and path must not be NULL");
    if (n != m->pos)
        return rq4_fail(err, RQ4_ERR_ARG, "rq4_save_state: %d ids given, the cache holds %d", n, m->pos);
    if (n > 0 && !tokens) return rq4_fail(err, RQ4_ERR_ARG, "rq4_save_state: tokens must not be NULL");
    size_t len = strlen(path);
    char *tmp = malloc(len + sizeof ".tmp.XXXXXX");
    if (!tmp) return rq4_fail(err, RQ4_ERR_NOMEM, "rq4_save_state: out of memory");
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return rq4_fail(err, RQ4_ERR_IO, "cannot write %s: %s", path, strerror(e));
    }
    int failed = write_state(fd, m, tokens, n);
    int e = errno;
    if (close(fd) && !failed) failed = 1, e = errno;
    if (!failed && rename(tmp, path)) failed = 1, e = errno;
    if (failed) unlink(tmp);
    free(tmp);
    if (failed) return rq4_fail(err, RQ4_ERR_IO, "cannot write %s: %s", path, strerror(e));
    return rq4_succeed(err);
}

/* ---- loading ---- */

static int read_all(int fd, void *data, size_t n) {
    uint8_t *p = data;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The header against this model: which setting differs, or RQ4_OK. */
static rq4_status check_header(const rq4_model *m, const uint8_t *h, const char *path, rq4_error *err) {
    const rq4_config *c = &m->config;
    if (memcmp(h + S_MAGIC, STATE_MAGIC, sizeof STATE_MAGIC))
        return rq4_fail(err, RQ4_ERR_FORMAT, "%s is not a runq4 saved state (bad magic)", path);
    if (get_u32(h + S_VERSION) != RQ4_STATE_VERSION)
        return rq4_fail(err, RQ4_ERR_VERSION, "%s is a saved state of version %u, this build reads version %d",
                        path, get_u32(h + S_VERSION), RQ4_STATE_VERSION);
    if (get_u64(h + S_MODEL_SIZE) != (uint64_t)m->map_size || get_u64(h + S_MODEL_HASH) != model_hash(m))
        return rq4_fail(err, RQ4_ERR_MISMATCH, "%s was saved with another model file", path);
    static const struct { int at; const char *name; } fields[] = {
        {S_KV_TYPE, "kv_type"}, {S_N_CTX, "n_ctx"}, {S_N_LAYERS, "n_layers"},
        {S_N_KV_HEADS, "n_kv_heads"}, {S_HEAD_DIM, "head_dim"},
    };
    const int32_t mine[] = {c->kv_type, c->n_ctx, c->n_layers, c->n_kv_heads, c->head_dim};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        int32_t theirs = (int32_t)get_u32(h + fields[i].at);
        if (theirs != mine[i])
            return rq4_fail(err, RQ4_ERR_MISMATCH, "%s was saved with %s = %d, this model has %s = %d", path,
                            fields[i].name, theirs, fields[i].name, mine[i]);
    }
    int32_t n = (int32_t)get_u32(h + S_N_TOKENS);
    if (n < 0 || n > c->n_ctx)
        return rq4_fail(err, RQ4_ERR_FORMAT, "%s holds %d tokens, outside [0, n_ctx = %d]", path, n, c->n_ctx);
    if (get_u32(h + S_RESERVED) != 0)
        return rq4_fail(err, RQ4_ERR_FORMAT, "%s: reserved header bytes are not zero", path);
    return RQ4_OK;
}

/* Checks the open file whole, into *payload (malloc'ed) and *n. */
static rq4_status read_state(const rq4_model *m, int fd, const char *path, int32_t cap, uint8_t **payload,
                             int32_t *n, rq4_error *err) {
    const rq4_config *c = &m->config;
    struct stat st;
    if (fstat(fd, &st)) return rq4_fail(err, RQ4_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
    uint8_t h[STATE_HEADER_SIZE];
    if ((uint64_t)st.st_size < STATE_HEADER_SIZE)
        return rq4_fail(err, RQ4_ERR_FORMAT, "%s is truncated: %lld bytes, shorter than a saved state's header",
                        path, (long long)st.st_size);
    if (read_all(fd, h, sizeof h)) return rq4_fail(err, RQ4_ERR_IO, "cannot read %s", path);
    rq4_status s = check_header(m, h, path, err);
    if (s) return s;
    int32_t count = (int32_t)get_u32(h + S_N_TOKENS);
    uint64_t size = payload_size(c, count);
    if ((uint64_t)st.st_size != STATE_HEADER_SIZE + size)
        return rq4_fail(err, RQ4_ERR_FORMAT, "%s is %s: %lld bytes, %llu expected for %d tokens", path,
                        (uint64_t)st.st_size < STATE_HEADER_SIZE + size ? "truncated" : "too long",
                        (long long)st.st_size, (unsigned long long)(STATE_HEADER_SIZE + size), count);
    if (count > cap)
        return rq4_fail(err, RQ4_ERR_ARG, "rq4_load_state: %s holds %d ids, room for %d given", path, count, cap);
    uint8_t *p = malloc(size ? (size_t)size : 1);
    if (!p) return rq4_fail(err, RQ4_ERR_NOMEM, "cannot allocate %llu bytes to read %s", (unsigned long long)size, path);
    if (read_all(fd, p, (size_t)size)) {
        free(p);
        return rq4_fail(err, RQ4_ERR_IO, "cannot read %s", path);
    }
    if (hash_payload(c, count, p) != get_u64(h + S_CHECKSUM)) {
        free(p);
        return rq4_fail(err, RQ4_ERR_FORMAT, "%s is corrupt (checksum mismatch)", path);
    }
    for (int32_t i = 0; i < count; i++) {
        int32_t id = (int32_t)get_u32(p + (size_t)i * 4);
        if (id < 0 || id >= c->vocab_size) {
            free(p);
            return rq4_fail(err, RQ4_ERR_FORMAT, "%s holds token id %d, outside the vocabulary [0, %d)", path, id,
                            c->vocab_size);
        }
    }
    *payload = p;
    *n = count;
    return RQ4_OK;
}

rq4_status rq4_load_state(rq4_model *m, const char *path, int32_t *tokens_out, int32_t cap, int32_t *n,
                          rq4_error *err) {
    if (!m || !path || !n || (cap > 0 && !tokens_out))
        return rq4_fail(err, RQ4_ERR_ARG, "rq4_load_state: model, path, tokens_out and n must not be NULL");
    if (cap < 0) return rq4_fail(err, RQ4_ERR_ARG, "rq4_load_state: cap = %d is negative", cap);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return rq4_fail(err, RQ4_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    uint8_t *p = NULL;
    int32_t count = 0;
    rq4_status s = read_state(m, fd, path, cap, &p, &count, err);
    close(fd);
    if (s) return s;

    /* everything checked: now the model changes */
    const rq4_config *c = &m->config;
    if (count) memcpy(tokens_out, p, (size_t)count * 4);
    const uint8_t *src = p + (size_t)count * 4;
    size_t es = elem_size(c), kb = key_elems(c, count) * es, vb = value_elems(c, count) * es;
    for (int l = 0; l < c->n_layers; l++)
        for (int kh = 0; kh < c->n_kv_heads; kh++) {
            memcpy((uint8_t *)m->key_cache + kv_at(m, l, kh, 0) * es, src, kb);
            memcpy((uint8_t *)m->value_cache + kv_at(m, l, kh, 0) * es, src + kb, vb);
            src += kb + vb;
        }
    m->pos = count;
    *n = count;
    free(p);
    return rq4_succeed(err);
}
