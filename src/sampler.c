/* Greedy, temperature, top-k and top-p sampling, as llama2.c's run.c does
 * it: softmax of logits/temperature, then either a draw from the whole
 * distribution or from the nucleus (the most likely tokens whose mass first
 * reaches top_p; tokens below (1 - top_p) / (n - 1) cannot be in it, so they
 * are dropped before sorting). With top_k, the rule of pyrunq4's numpy
 * sampler (pyrunq4/sampling.py): the top_k largest logits/temperature, their
 * softmax, then the top_p prefix of those, renormalised; top_k 1 is greedy
 * whatever the temperature. The kept sets are the ones pyrunq4 keeps (stable
 * order, mass >= top_p); the random draws differ (its RNG is numpy's), so
 * only greedy runs are comparable across the two. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

static uint32_t random_u32(uint64_t *state) {
    /* xorshift64* (Marsaglia; Vigna's multiplier), as llama2.c */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}

static float random_f32(uint64_t *state) {
    return (float)(random_u32(state) >> 8) / 16777216.0f;   /* [0, 1) */
}

int32_t rq4_argmax(const float *x, int32_t n) {
    int32_t best = 0;
    float v = x[0];
    if (v != v) return 0;
    for (int32_t i = 1; i < n; i++) {
        if (x[i] != x[i]) return i;   /* NaN: numpy's argmax picks the first */
        if (x[i] > v) {
            v = x[i];
            best = i;
        }
    }
    return best;
}

int rq4_sampler_init(rq4_sampler *s, int32_t vocab_size, float temperature, float top_p, int32_t top_k,
                     uint64_t seed) {
    s->probindex = NULL;
    if (vocab_size < 1 || !isfinite(temperature) || temperature < 0.0f || !(top_p > 0.0f && top_p <= 1.0f) ||
        top_k < 0)
        return -1;
    s->vocab_size = vocab_size;
    s->temperature = temperature;
    s->top_p = top_p;
    s->top_k = top_k;
    /* mix the seed so that small seeds give unrelated streams; never 0 */
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    s->rng_state = z ? z : 0x9E3779B97F4A7C15ULL;
    if (temperature > 0.0f && (top_p < 1.0f || (top_k > 1 && top_k < vocab_size))) {
        s->probindex = malloc(sizeof(rq4_prob_index) * (size_t)vocab_size);
        if (!s->probindex) return -1;
    }
    return 0;
}

void rq4_sampler_free(rq4_sampler *s) {
    if (!s) return;
    free(s->probindex);
    s->probindex = NULL;
}

/* softmax in place, in double for the sum */
static void softmax(float *x, int32_t n) {
    float mx = x[0];
    for (int32_t i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    for (int32_t i = 0; i < n; i++) x[i] = (float)(x[i] / sum);
}

static int32_t sample_mult(const float *p, int32_t n, float coin) {
    float cdf = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        cdf += p[i];
        if (coin < cdf) return i;
    }
    return n - 1;   /* rounding */
}

/* descending probability, ascending index on ties (a stable order) */
static int compare_desc(const void *a, const void *b) {
    const rq4_prob_index *x = a, *y = b;
    if (x->prob > y->prob) return -1;
    if (x->prob < y->prob) return 1;
    return (x->index > y->index) - (x->index < y->index);
}

static int32_t sample_top_p(const float *p, int32_t n, float top_p, rq4_prob_index *pi, float coin) {
    int32_t m = 0;
    const float cutoff = n > 1 ? (1.0f - top_p) / (float)(n - 1) : 0.0f;
    for (int32_t i = 0; i < n; i++)
        if (p[i] >= cutoff) {
            pi[m].prob = p[i];
            pi[m].index = i;
            m++;
        }
    if (m == 0) return rq4_argmax(p, n);
    qsort(pi, (size_t)m, sizeof(rq4_prob_index), compare_desc);
    /* the shortest prefix whose mass reaches top_p */
    float cum = 0.0f;
    int32_t last = m - 1;
    for (int32_t i = 0; i < m; i++) {
        cum += pi[i].prob;
        if (cum >= top_p) {
            last = i;
            break;
        }
    }
    float r = coin * cum, cdf = 0.0f;
    for (int32_t i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf) return pi[i].index;
    }
    return pi[last].index;
}

/* The top_k largest of x[0..n) (k < n) with their indices, most likely
 * first, ties in index order, then the draw of sample_top_p over their
 * softmax (in double, as numpy). */
static int32_t sample_top_k(const float *x, int32_t n, int32_t k, float top_p, rq4_prob_index *pi, float coin) {
    for (int32_t i = 0; i < n; i++) {
        pi[i].prob = x[i];
        pi[i].index = i;
    }
    qsort(pi, (size_t)n, sizeof(rq4_prob_index), compare_desc);
    double sum = 0.0, top = pi[0].prob;
    for (int32_t i = 0; i < k; i++) sum += exp((double)pi[i].prob - top);
    for (int32_t i = 0; i < k; i++) pi[i].prob = (float)(exp((double)pi[i].prob - top) / sum);
    /* the shortest prefix whose mass reaches top_p (all k when top_p is 1) */
    float cum = 0.0f;
    int32_t last = k - 1;
    for (int32_t i = 0; i < k && top_p < 1.0f; i++) {
        cum += pi[i].prob;
        if (cum >= top_p) {
            last = i;
            break;
        }
    }
    cum = 0.0f;
    for (int32_t i = 0; i <= last; i++) cum += pi[i].prob;
    float r = coin * cum, cdf = 0.0f;
    for (int32_t i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf) return pi[i].index;
    }
    return pi[last].index;
}

/* logits -> (x - max) / T in place, not x / T: the quotient is <= 0 (-inf
 * at worst, exp 0) however small T is, where x / T overflows to inf and
 * inf - inf is NaN. The maximum itself gives 0 (also when it is +inf: those
 * logits share the draw); a NaN logit is never drawn. Returns 0, leaving
 * the logits as they were, when nothing can be drawn (all NaN or -inf). */
static int scale_logits(float *logits, int32_t n, float temperature) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (logits[i] > mx) mx = logits[i];
    if (mx == -INFINITY) return 0;
    for (int32_t i = 0; i < n; i++) {
        float x = logits[i];
        logits[i] = x == mx ? 0.0f : x == x ? (x - mx) / temperature : -INFINITY;
    }
    return 1;
}

int32_t rq4_sample(rq4_sampler *s, float *logits) {
    int32_t n = s->vocab_size;
    if (s->temperature == 0.0f || s->top_k == 1) return rq4_argmax(logits, n);
    if (!scale_logits(logits, n, s->temperature)) return rq4_argmax(logits, n);
    if (s->top_k > 1 && s->top_k < n && s->probindex)
        return sample_top_k(logits, n, s->top_k, s->top_p, s->probindex, random_f32(&s->rng_state));
    softmax(logits, n);
    float coin = random_f32(&s->rng_state);
    if (s->top_p >= 1.0f || !s->probindex) return sample_mult(logits, n, coin);
    return sample_top_p(logits, n, s->top_p, s->probindex, coin);
}
