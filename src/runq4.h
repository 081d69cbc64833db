/* runq4: int4 inference for Llama-family models, in one flat mmapped file.
 *
 * The public API. Everything between the two "cdef" markers below is plain
 * declarations (no #include, no #ifdef, no macros but integer #defines) because
 * pyrunq4/_build.py hands exactly that text to cffi's cdef.
 *
 * Conventions:
 *  - every function that can fail returns an rq4_status and, when `err` is not
 *    NULL, fills it with the code and a one-line message (no trailing newline);
 *  - the library never prints and never exits;
 *  - a model is not safe to use from two threads at once (the Python layer
 *    serialises access with a lock); two models in one process are independent.
 */
#ifndef RUNQ4_H
#define RUNQ4_H

#include <stddef.h>
#include <stdint.h>

/* The version of the library and the package: the one place it is written
 * (setup.py reads it from here). Outside the cdef, as cffi cannot read a
 * string #define: Python asks rq4_version(). */
#define RQ4_VERSION "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- cdef begin ---- */

/* File format (docs/FORMAT.md): this build reads versions
 * RQ4_MIN_FORMAT_VERSION..RQ4_FORMAT_VERSION. Version 2 adds the header field
 * ffn_rotation; a file without it is written as version 1. */
#define RQ4_FORMAT_VERSION 2
#define RQ4_MIN_FORMAT_VERSION 1
#define RQ4_HEADER_SIZE 256
#define RQ4_ENTRY_SIZE 96
#define RQ4_NAME_MAX 64
#define RQ4_ALIGN 64
#define RQ4_MAX_EOS 4
#define RQ4_MIN_GROUP 32
#define RQ4_MAX_GROUP 4096

/* The ranges of the header fields and the table (docs/FORMAT.md): the loader
 * refuses a file outside them, the exporter never writes one. */
#define RQ4_MAX_ENTRIES 65536
#define RQ4_MAX_DIM 65536
#define RQ4_MAX_HIDDEN_DIM 262144
#define RQ4_MAX_LAYERS 1024
#define RQ4_MAX_HEADS 1024
#define RQ4_MAX_HEAD_DIM 1024
#define RQ4_MAX_VOCAB 16777216
#define RQ4_MAX_SEQ_LEN 16777216

/* The most threads a model runs on (rq4_options.n_threads). */
#define RQ4_MAX_THREADS 256

/* The KV cache length when the caller chooses none: not Llama 3.2's 131072
 * positions, whose f32 cache alone would take 8.6 GB. */
#define RQ4_DEFAULT_CTX 4096

/* Tensor and blob types of a table entry. */
enum rq4_type {
    RQ4_TYPE_F32 = 0,  /* float32, row-major */
    RQ4_TYPE_Q4S = 1,  /* symmetric int4: w = d * q, q in [-8, 7], fp16 d per group */
    RQ4_TYPE_Q4A = 2,  /* asymmetric int4: w = d * q + m, q in [0, 15], fp16 d and m per group */
    RQ4_TYPE_Q8 = 3,   /* int8: w = d * q, q in [-128, 127], fp16 d per group */
    RQ4_TYPE_BLOB = 4, /* raw bytes (tokenizer, chat template, ...) */
    RQ4_TYPE_Q4S_R4 = 5, /* Q4S with rows interleaved in groups of RQ4_INTERLEAVE (docs/FORMAT.md) */
    RQ4_TYPE_Q4A_R4 = 6, /* Q4A with rows interleaved in groups of RQ4_INTERLEAVE */
    RQ4_TYPE_Q4T = 7     /* int4 index into the tensor's table of 16 int8 levels: w = d * table[q], fp16 d per group */
};

/* Q4T: the int8 levels of a tensor's table, in strictly increasing order. */
#define RQ4_Q4T_LEVELS 16

/* Rows per group of the interleaved types (Q4S_R4, Q4A_R4): a group's blocks
 * hold its rows side by side, so one vector instruction serves all of them. */
#define RQ4_INTERLEAVE 4

/* Header field ffn_rotation: what the FFN's down-projection (w2) expects its
 * input multiplied by. HADAMARD: Q = kron(F, H_p) diag(s) / sqrt(hidden_dim),
 * s the entry ffn_rotation.signs, F the entry ffn_rotation.factor (a Hadamard
 * matrix of order m), H_p Sylvester's Hadamard matrix of order
 * p = hidden_dim / m, a power of two (docs/FORMAT.md). */
enum rq4_ffn_rotation {
    RQ4_FFN_ROTATION_NONE = 0,
    RQ4_FFN_ROTATION_HADAMARD = 1
};

/* The largest order m of ffn_rotation.factor: the transform costs m
 * additions per value. */
#define RQ4_MAX_ROTATION_FACTOR 256

enum rq4_rope_scaling {
    RQ4_ROPE_NONE = 0,
    RQ4_ROPE_LLAMA3 = 1
};

/* Element type of the KV cache, chosen at open. */
enum rq4_kv_type {
    RQ4_KV_F32 = 0,
    RQ4_KV_F16 = 1
};

typedef enum rq4_status {
    RQ4_OK = 0,
    RQ4_ERR_IO = 1,           /* cannot open, stat or map the file */
    RQ4_ERR_FORMAT = 2,       /* not an .rq4 file, or a corrupt/truncated one */
    RQ4_ERR_VERSION = 3,      /* an .rq4 file of another format version */
    RQ4_ERR_UNSUPPORTED = 4,  /* valid file, but something this build cannot run */
    RQ4_ERR_NOMEM = 5,        /* allocation failed */
    RQ4_ERR_ARG = 6,          /* bad argument (token id, thread count, NULL ...) */
    RQ4_ERR_CONTEXT_FULL = 7, /* the tokens do not fit in the remaining context */
    RQ4_ERR_MEMORY_LIMIT = 8, /* the requested context exceeds options.max_memory */
    RQ4_ERR_THREAD = 9,       /* a worker thread could not be started */
    RQ4_ERR_MISMATCH = 10     /* a saved state of another model or settings */
} rq4_status;

typedef struct rq4_error {
    int32_t code;       /* an rq4_status */
    char message[256];  /* NUL-terminated, one line */
} rq4_error;

/* Hyper-parameters from the file header, plus the open-time choices. */
typedef struct rq4_config {
    int32_t dim;          /* residual stream width */
    int32_t hidden_dim;   /* FFN inner width */
    int32_t n_layers;
    int32_t n_heads;      /* query heads */
    int32_t n_kv_heads;   /* key/value heads (GQA: divides n_heads) */
    int32_t head_dim;     /* need not equal dim / n_heads */
    int32_t vocab_size;
    int32_t max_seq_len;  /* the model's trained context */
    int32_t tied_embeddings; /* 1: the classifier is tok_embeddings */
    int32_t bos_id;          /* -1 if none */
    int32_t n_eos;
    int32_t eos_ids[4];      /* the first n_eos are end-of-sequence ids */
    int32_t rope_scaling;    /* an rq4_rope_scaling */
    int32_t rope_original_max_pos;
    float norm_eps;
    float rope_theta;
    float rope_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int32_t group_size;   /* the exporter's default group (each tensor has its own) */
    int32_t ffn_rotation; /* an rq4_ffn_rotation */
    /* open-time choices */
    int32_t n_ctx;        /* KV cache length */
    int32_t n_threads;
    int32_t kv_type;      /* an rq4_kv_type */
} rq4_config;

typedef struct rq4_options {
    int32_t n_ctx;            /* 0: min(RQ4_DEFAULT_CTX, max_seq_len) */
    int32_t n_threads;        /* 1..RQ4_MAX_THREADS; 0: min(the CPUs in this
                                 process's affinity mask, RQ4_MAX_THREADS) */
    int32_t kv_type;          /* RQ4_KV_F16 (default) or RQ4_KV_F32 */
    int32_t float_activations;/* 1: reference mode, weights dequantized and
                                 activations kept float (slow; for tests) */
    uint64_t max_memory;      /* bytes; 0: no limit. rq4_open refuses, before
                                 allocating, if weights + KV cache + buffers
                                 would exceed it */
} rq4_options;

typedef struct rq4_model rq4_model;

/* Fills `opts` with the defaults. */
void rq4_default_options(rq4_options *opts);

/* Maps and validates `path`. On success *out owns the model (free it with
 * rq4_close); on failure *out is NULL. `opts` may be NULL for defaults. */
rq4_status rq4_open(const char *path, const rq4_options *opts, rq4_model **out, rq4_error *err);

/* Unmaps and frees everything; NULL is allowed. */
void rq4_close(rq4_model *m);

const rq4_config *rq4_get_config(const rq4_model *m);

/* Runs `n` tokens through the model at positions position()..position()+n-1,
 * appending their keys and values to the cache, and advances the position.
 * logits: NULL (only fill the cache), or vocab_size floats for the last token
 * (all_logits == 0), or n * vocab_size floats, one row per token (all_logits
 * != 0). Fails with RQ4_ERR_CONTEXT_FULL, before computing anything, if the
 * tokens do not fit in n_ctx, and with RQ4_ERR_ARG on an id outside the vocab. */
rq4_status rq4_forward(rq4_model *m, const int32_t *tokens, int32_t n,
                       float *logits, int32_t all_logits, rq4_error *err);

/* Number of tokens in the KV cache. */
int32_t rq4_position(const rq4_model *m);

/* Keeps the first `pos` cached tokens and forgets the rest (0 resets). */
rq4_status rq4_rewind(rq4_model *m, int32_t pos, rq4_error *err);

/* ---- Saved state (state.c) ----
 * The KV cache up to the position and the ids that filled it, in a file tied
 * to this model file (its size and a hash of its header, its table and
 * windows of its weights) and to n_ctx, kv_type, n_layers, n_kv_heads and
 * head_dim. Format: docs/FORMAT.md. */
#define RQ4_STATE_VERSION 2

/* Writes the n == rq4_position(m) ids `tokens` and the cache they filled to
 * `path`, through a temporary file in the same directory renamed over it:
 * `path` is either the old file or the whole new one. */
rq4_status rq4_save_state(const rq4_model *m, const char *path, const int32_t *tokens, int32_t n,
                          rq4_error *err);

/* Reads a file rq4_save_state wrote: the cache and the position are restored
 * and the ids go to tokens_out (cap >= n_ctx always suffices), *n their
 * count. A missing, truncated or corrupt file, one of another version, or one
 * of another model or settings (RQ4_ERR_MISMATCH) is refused and the model
 * is left as it was. */
rq4_status rq4_load_state(rq4_model *m, const char *path, int32_t *tokens_out, int32_t cap, int32_t *n,
                          rq4_error *err);

/* ---- Sampling (sampler.c) ----
 * The next token from logits, in this order: the repetition penalty over the
 * last repeat_last_n accepted ids (each distinct id once: a positive logit
 * divided by repeat_penalty, a negative one multiplied, as llama.cpp and the
 * CTRL paper); greedy (temperature 0 or top_k 1: the first maximum); else
 * (logit - max) / temperature, the top_k largest (0: all), their softmax, and
 * a draw among the most likely tokens cut twice: the shortest prefix whose
 * mass reaches top_p, and the tokens of probability >= min_p times the
 * largest. The draw uses a xorshift64* stream seeded by `seed`, so the same
 * parameters, history and logits give the same ids wherever they run. */
#define RQ4_DEFAULT_REPEAT_LAST_N 64
#define RQ4_MAX_REPEAT_LAST_N 1048576

typedef struct rq4_sampling {
    float temperature;      /* finite, >= 0; 0: greedy */
    float top_p;            /* (0, 1]; 1: no cut */
    int32_t top_k;          /* >= 0; 0: no cut; 1: greedy */
    float min_p;            /* [0, 1]; 0: no cut */
    float repeat_penalty;   /* finite, > 0; 1: none */
    int32_t repeat_last_n;  /* [0, RQ4_MAX_REPEAT_LAST_N] ids the penalty looks back over */
    uint64_t seed;
} rq4_sampling;

typedef struct rq4_sampler rq4_sampler;

/* Fills `p` with the defaults: greedy, no cuts, no penalty,
 * RQ4_DEFAULT_REPEAT_LAST_N, seed 0. */
void rq4_default_sampling(rq4_sampling *p);

/* A sampler for logits of `vocab_size` floats (free it with
 * rq4_sampler_free); a parameter outside its range is RQ4_ERR_ARG. */
rq4_status rq4_sampler_new(int32_t vocab_size, const rq4_sampling *p, rq4_sampler **out, rq4_error *err);

/* NULL is allowed. */
void rq4_sampler_free(rq4_sampler *s);

/* Bytes the sampler holds allocated. */
uint64_t rq4_sampler_memory(const rq4_sampler *s);

/* Appends ids (the prompt, a fed turn) to the history the penalty reads. */
void rq4_sampler_accept(rq4_sampler *s, const int32_t *ids, int32_t n);

/* The next id for `logits` (vocab_size floats, used as scratch). It does not
 * join the history: accept it when it goes into the context. */
int32_t rq4_sample(rq4_sampler *s, float *logits);

/* Index of the largest value, the lowest index on ties, as numpy's argmax
 * (which also treats NaN as the largest: the first NaN wins). n >= 1. */
int32_t rq4_argmax(const float *x, int32_t n);

/* ---- Decoding (decode.c) ----
 * Several tokens per call: sample, feed, sample ... with no allocation.
 * logits (vocab_size floats) is the caller's reused buffer: on entry the
 * logits of the last token in the cache, unless `pending` >= 0, an id drawn
 * by the previous call and not fed yet, which is fed first. Each step draws
 * an id with `s`; an end-of-sequence id (eos_ids) ends the call with
 * *stop = RQ4_STOP_EOS and is neither stored nor fed; any other id is stored
 * in ids[*n_ids], joins the sampler's history, and then the call ends with
 * RQ4_STOP_COUNT once `max_ids` ids are stored, or with RQ4_STOP_CONTEXT
 * when the context has no room for it; else it is fed and the next step
 * runs. So the last stored id is not in the cache unless the stop is
 * RQ4_STOP_EOS: pass it as `pending` to go on (a pending id the context has
 * no room for ends the call at once with RQ4_STOP_CONTEXT). max_ids >= 1. */
enum rq4_stop {
    RQ4_STOP_COUNT = 0,
    RQ4_STOP_EOS = 1,
    RQ4_STOP_CONTEXT = 2
};

rq4_status rq4_decode(rq4_model *m, rq4_sampler *s, float *logits, int32_t pending, int32_t max_ids,
                      int32_t *ids, int32_t *n_ids, int32_t *stop, rq4_error *err);

/* A blob of the file by name ("tokenizer.json", "chat_template", ...): a
 * pointer into the mapping, valid until rq4_close, and its size; NULL when the
 * file has no such blob. */
const void *rq4_blob(const rq4_model *m, const char *name, uint64_t *size);

/* Gives the pages of the named blob back to the page cache, so they stop
 * counting in the process's resident memory until the blob is read again
 * (the mapping is read-only: the bytes come back from the file unchanged).
 * For a blob read once, as tokenizer.json by rq4_tokenizer_from_model. */
void rq4_release_blob(const rq4_model *m, const char *name);

/* Bytes rq4_open would need, besides the mapped file, for this context. */
uint64_t rq4_memory_needed(const rq4_model *m, int32_t n_ctx, int32_t kv_type);

/* The matmul kernel this process uses ("scalar", "avx2", "neon-dotprod", ...). */
const char *rq4_kernel_name(void);

/* The library's version, RQ4_VERSION (e.g. "0.1.0"). */
const char *rq4_version(void);

/* A static description of a status code. */
const char *rq4_strerror(int32_t code);

/* ---- Tokenizer (src/tokenizer/) ----
 * Byte-level BPE read from a Hugging Face tokenizer.json: the Llama 3
 * pre-tokenizer and GPT-2's (optionally after SmolLM2's single-digit split),
 * added tokens matched literally. Any other tokenizer is refused with
 * RQ4_ERR_UNSUPPORTED. Read-only after creation: encode may run from several
 * threads at once. */
typedef struct rq4_tokenizer rq4_tokenizer;

/* Parses `size` bytes of tokenizer.json (copied: the bytes may go afterwards). */
rq4_status rq4_tokenizer_new(const void *json, uint64_t size, rq4_tokenizer **out, rq4_error *err);

/* The same, from the model's "tokenizer.json" blob. */
rq4_status rq4_tokenizer_from_model(const rq4_model *m, rq4_tokenizer **out, rq4_error *err);

/* NULL is allowed. */
void rq4_tokenizer_free(rq4_tokenizer *t);

/* Encodes `len` bytes of UTF-8 `text` (invalid UTF-8: RQ4_ERR_ARG) into ids,
 * without adding BOS. special != 0: the text of special added tokens
 * ("<|eot_id|>") becomes those tokens (as tokenizers does by default);
 * special == 0: it is plain text (tokenizers' encode_special_tokens = True);
 * non-special added tokens are matched either way. At most `len` ids come
 * out, so cap >= len always suffices; *n_ids receives the count, and when it
 * exceeds cap only the first cap ids are written and RQ4_ERR_ARG is returned. */
rq4_status rq4_tokenizer_encode(const rq4_tokenizer *t, const char *text, uint64_t len, int32_t special,
                                int32_t *ids, int32_t cap, int32_t *n_ids, rq4_error *err);

/* The bytes a token id decodes to (byte-level pieces turned back into bytes,
 * an added token's text as it is), *len their count; NULL for an unknown id. */
const char *rq4_tokenizer_piece(const rq4_tokenizer *t, int32_t id, uint32_t *len);

/* The id of the added token whose text is exactly these bytes, or else of the
 * vocabulary token that decodes to them; -1 if none. */
int32_t rq4_tokenizer_find(const rq4_tokenizer *t, const char *text, uint64_t len);

/* 1 for an added token marked special (<|eot_id|> ...), else 0. */
int32_t rq4_tokenizer_is_special(const rq4_tokenizer *t, int32_t id);

/* 1 + the largest token id. */
int32_t rq4_tokenizer_size(const rq4_tokenizer *t);

/* Bytes the tokenizer holds allocated. */
uint64_t rq4_tokenizer_memory(const rq4_tokenizer *t);

/* ---- cdef end ---- */

#ifdef __cplusplus
}
#endif
#endif /* RUNQ4_H */
