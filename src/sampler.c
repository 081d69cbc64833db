/* Choosing the next token from logits (runq4.h, "Sampling"): the repetition
 * penalty, greedy, temperature, top-k, top-p (nucleus) and min-p, with a
 * seeded xorshift RNG so that a seed reproduces a run in the binary and in
 * Python alike (both call this file).
 *
 * Without a cut the draw is over the softmax of the whole vocabulary, as
 * llama2.c's run.c does it. With a cut the candidates are sorted, most likely
 * first (ties in index order), and both cuts are prefixes of that order: the
 * nucleus (the shortest prefix whose mass reaches top_p; tokens below
 * (1 - top_p) / (n - 1) cannot be in it, so they are dropped before sorting)
 * and the min-p set (probability >= min_p times the first's), and the draw is
 * over the shorter one, renormalised. With top_k the candidates are the top_k
 * largest logits, found with a heap, and their softmax is in double. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>

typedef struct prob_index {
    float prob;
    int32_t index;
} prob_index;

struct rq4_sampler {
    int32_t vocab_size;
    rq4_sampling p;
    uint64_t rng_state;     /* xorshift64*, never 0 */
    prob_index *probindex;  /* (n_candidates) scratch for the cuts; NULL without one */
    int32_t n_candidates;   /* top_k when it cuts, else vocab_size */
    int32_t *history;       /* (repeat_last_n) ring of the last accepted ids; NULL without a penalty */
    int32_t *window;        /* (repeat_last_n) scratch: the ring sorted */
    int32_t n_history;      /* ids in the ring, <= repeat_last_n */
    int32_t next;           /* where the next accepted id goes */
};

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

void rq4_default_sampling(rq4_sampling *p) {
    if (!p) return;
    p->temperature = 0.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = RQ4_DEFAULT_REPEAT_LAST_N;
    p->seed = 0;
}

static int is_greedy(const rq4_sampling *p) { return p->temperature == 0.0f || p->top_k == 1; }

static int has_penalty(const rq4_sampling *p) { return p->repeat_penalty != 1.0f && p->repeat_last_n > 0; }

rq4_status rq4_sampler_new(int32_t vocab_size, const rq4_sampling *p, rq4_sampler **out, rq4_error *err) {
    if (out) *out = NULL;
    if (!p || !out) return rq4_fail(err, RQ4_ERR_ARG, "rq4_sampler_new: parameters and out must not be NULL");
    if (vocab_size < 1) return rq4_fail(err, RQ4_ERR_ARG, "vocab_size = %d, need at least 1", vocab_size);
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return rq4_fail(err, RQ4_ERR_ARG, "temperature = %g must be finite and >= 0", (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return rq4_fail(err, RQ4_ERR_ARG, "top_p = %g is outside (0, 1]", (double)p->top_p);
    if (p->top_k < 0) return rq4_fail(err, RQ4_ERR_ARG, "top_k = %d is negative", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return rq4_fail(err, RQ4_ERR_ARG, "min_p = %g is outside [0, 1]", (double)p->min_p);
    if (!isfinite(p->repeat_penalty) || !(p->repeat_penalty > 0.0f))
        return rq4_fail(err, RQ4_ERR_ARG, "repeat_penalty = %g must be finite and > 0", (double)p->repeat_penalty);
    if (p->repeat_last_n < 0 || p->repeat_last_n > RQ4_MAX_REPEAT_LAST_N)
        return rq4_fail(err, RQ4_ERR_ARG, "repeat_last_n = %d is outside [0, %d]", p->repeat_last_n,
                        RQ4_MAX_REPEAT_LAST_N);
    rq4_sampler *s = calloc(1, sizeof *s);
    if (!s) return rq4_fail(err, RQ4_ERR_NOMEM, "out of memory for the sampler");
    s->vocab_size = vocab_size;
    s->p = *p;
    /* mix the seed so that small seeds give unrelated streams; never 0 */
    uint64_t z = p->seed + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    s->rng_state = z ? z : 0x9E3779B97F4A7C15ULL;
    int top_k_cuts = p->top_k > 1 && p->top_k < vocab_size;
    s->n_candidates = top_k_cuts ? p->top_k : vocab_size;
    if (!is_greedy(p) && (p->top_p < 1.0f || p->min_p > 0.0f || top_k_cuts)) {
        s->probindex = malloc(sizeof(prob_index) * (size_t)s->n_candidates);
        if (!s->probindex) goto nomem;
    }
    if (has_penalty(p)) {
        s->history = malloc(sizeof(int32_t) * (size_t)p->repeat_last_n);
        s->window = malloc(sizeof(int32_t) * (size_t)p->repeat_last_n);
        if (!s->history || !s->window) goto nomem;
    }
    *out = s;
    return rq4_succeed(err);
nomem:
    rq4_sampler_free(s);
    return rq4_fail(err, RQ4_ERR_NOMEM, "out of memory for the sampler's scratch");
}

void rq4_sampler_free(rq4_sampler *s) {
    if (!s) return;
    free(s->probindex);
    free(s->history);
    free(s->window);
    free(s);
}

uint64_t rq4_sampler_memory(const rq4_sampler *s) {
    if (!s) return 0;
    uint64_t bytes = sizeof *s;
    if (s->probindex) bytes += sizeof(prob_index) * (uint64_t)s->n_candidates;
    if (s->history) bytes += 2 * sizeof(int32_t) * (uint64_t)s->p.repeat_last_n;
    return bytes;
}

void rq4_sampler_accept(rq4_sampler *s, const int32_t *ids, int32_t n) {
    if (!s || !s->history || !ids) return;
    const int32_t cap = s->p.repeat_last_n;
    for (int32_t i = n > cap ? n - cap : 0; i < n; i++) {   /* only the last cap can stay */
        s->history[s->next] = ids[i];
        s->next = s->next + 1 == cap ? 0 : s->next + 1;
        if (s->n_history < cap) s->n_history++;
    }
}

static int compare_id(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Each distinct id of the history once: logit / penalty when positive, else
 * logit * penalty (so a penalty > 1 always makes the id less likely). */
static void apply_penalty(rq4_sampler *s, float *logits) {
    int32_t n = s->n_history;
    if (n == 0) return;
    for (int32_t i = 0; i < n; i++) s->window[i] = s->history[i];
    qsort(s->window, (size_t)n, sizeof(int32_t), compare_id);
    const float penalty = s->p.repeat_penalty;
    for (int32_t i = 0; i < n; i++) {
        int32_t id = s->window[i];
        if ((i > 0 && id == s->window[i - 1]) || id < 0 || id >= s->vocab_size) continue;
        float x = logits[id];
        logits[id] = x > 0.0f ? x / penalty : x * penalty;
    }
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
    const prob_index *x = a, *y = b;
    if (x->prob > y->prob) return -1;
    if (x->prob < y->prob) return 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* The draw among pi[0..m) (sorted by compare_desc, m >= 1): the shorter of
 * the min-p set and the top-p prefix, renormalised. */
static int32_t draw_sorted(const prob_index *pi, int32_t m, float top_p, float min_p, float coin) {
    int32_t last = m - 1;
    if (min_p > 0.0f) {
        const float floor = min_p * pi[0].prob;
        for (int32_t i = 1; i <= last; i++)
            if (pi[i].prob < floor) {
                last = i - 1;
                break;
            }
    }
    if (top_p < 1.0f) {
        float cum = 0.0f;
        for (int32_t i = 0; i <= last; i++) {
            cum += pi[i].prob;
            if (cum >= top_p) {
                last = i;
                break;
            }
        }
    }
    float cum = 0.0f;
    for (int32_t i = 0; i <= last; i++) cum += pi[i].prob;
    float r = coin * cum, cdf = 0.0f;
    for (int32_t i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf) return pi[i].index;
    }
    return pi[last].index;
}

/* The whole softmax (in place), its candidates above both cuts' floors, and
 * the draw among them. */
static int32_t sample_cut(rq4_sampler *s, float *p, int32_t n, float coin) {
    softmax(p, n);
    float cutoff = s->p.top_p < 1.0f && n > 1 ? (1.0f - s->p.top_p) / (float)(n - 1) : 0.0f;
    if (s->p.min_p > 0.0f) {
        float mx = p[0];
        for (int32_t i = 1; i < n; i++)
            if (p[i] > mx) mx = p[i];
        if (s->p.min_p * mx > cutoff) cutoff = s->p.min_p * mx;
    }
    prob_index *pi = s->probindex;
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++)
        if (p[i] >= cutoff) {
            pi[m].prob = p[i];
            pi[m].index = i;
            m++;
        }
    if (m == 0) return rq4_argmax(p, n);
    qsort(pi, (size_t)m, sizeof(prob_index), compare_desc);
    return draw_sorted(pi, m, s->p.top_p, s->p.min_p, coin);
}

/* a ranks below b: a smaller value, or the same value at a larger index */
static int ranks_below(const prob_index *a, const prob_index *b) {
    return a->prob < b->prob || (a->prob == b->prob && a->index > b->index);
}

/* restores the heap property (the lowest ranked at the root) below i */
static void sift_down(prob_index *h, int32_t k, int32_t i) {
    for (;;) {
        int32_t low = i, l = 2 * i + 1, r = l + 1;
        if (l < k && ranks_below(&h[l], &h[low])) low = l;
        if (r < k && ranks_below(&h[r], &h[low])) low = r;
        if (low == i) return;
        prob_index t = h[i];
        h[i] = h[low];
        h[low] = t;
        i = low;
    }
}

/* The top_k largest of x[0..n) (k < n), found with a heap of k, sorted most
 * likely first, their softmax in double, and the draw among them. */
static int32_t sample_top_k(rq4_sampler *s, const float *x, int32_t n, float coin) {
    const int32_t k = s->p.top_k;
    prob_index *pi = s->probindex;
    for (int32_t i = 0; i < k; i++) {
        pi[i].prob = x[i];
        pi[i].index = i;
    }
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(pi, k, i);
    for (int32_t i = k; i < n; i++)
        if (x[i] > pi[0].prob) {   /* a later index never wins a tie */
            pi[0].prob = x[i];
            pi[0].index = i;
            sift_down(pi, k, 0);
        }
    qsort(pi, (size_t)k, sizeof(prob_index), compare_desc);
    double sum = 0.0, top = pi[0].prob;
    for (int32_t i = 0; i < k; i++) sum += exp((double)pi[i].prob - top);
    for (int32_t i = 0; i < k; i++) pi[i].prob = (float)(exp((double)pi[i].prob - top) / sum);
    return draw_sorted(pi, k, s->p.top_p, s->p.min_p, coin);
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
    const int32_t n = s->vocab_size;
    if (s->history) apply_penalty(s, logits);
    if (is_greedy(&s->p)) return rq4_argmax(logits, n);
    if (!scale_logits(logits, n, s->p.temperature)) return rq4_argmax(logits, n);
    float coin = random_f32(&s->rng_state);
    if (s->probindex && s->n_candidates < n) return sample_top_k(s, logits, n, coin);
    if (s->probindex) return sample_cut(s, logits, n, coin);
    softmax(logits, n);
    return sample_mult(logits, n, coin);
}
