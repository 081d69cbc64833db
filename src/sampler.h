/* Choosing the next token from logits: greedy, temperature, top-k, top-p
 * (nucleus), with a seeded xorshift RNG so that a seed reproduces a run.
 * Library code (no printing, no exit); used by the runq4 binary. Not
 * thread-safe: one sampler per generation. */
#ifndef RUNQ4_SAMPLER_H
#define RUNQ4_SAMPLER_H

#include <stdint.h>

typedef struct rq4_prob_index {
    float prob;
    int32_t index;
} rq4_prob_index;

typedef struct rq4_sampler {
    int32_t vocab_size;
    float temperature;      /* 0: greedy */
    float top_p;            /* (0, 1]; 1: no cut */
    int32_t top_k;          /* >= 0; 0: no cut; 1: greedy */
    uint64_t rng_state;     /* xorshift64*, never 0 */
    rq4_prob_index *probindex; /* (vocab_size) scratch for top-k and top-p */
} rq4_sampler;

/* 0 on success, -1 on a bad argument (vocab_size < 1, temperature not finite
 * or < 0, top_p outside (0, 1], top_k < 0) or when the scratch cannot be
 * allocated. */
int rq4_sampler_init(rq4_sampler *s, int32_t vocab_size, float temperature, float top_p, int32_t top_k,
                     uint64_t seed);

/* Frees the scratch; a zeroed or freed sampler is allowed. */
void rq4_sampler_free(rq4_sampler *s);

/* The next token for `logits` (vocab_size floats; overwritten with
 * probabilities unless greedy). */
int32_t rq4_sample(rq4_sampler *s, float *logits);

/* Index of the largest value, the lowest index on ties, as numpy's argmax
 * (which also treats NaN as the largest: the first NaN wins). n >= 1. */
int32_t rq4_argmax(const float *x, int32_t n);

#endif /* RUNQ4_SAMPLER_H */
