/* Kernel dispatch: the best kernel set this CPU supports, picked at run time.
 * Each SIMD file of src/kernels/ defines one set (declared in kernels.h) and
 * its runtime CPU check, guarded by architecture.
 *
 * A set may leave a kernel NULL (a weight type it has no code of its own
 * for, e.g. avxvnni and avx512vnni for the interleaved types): it then runs
 * the kernel of the next available set down the ladder that has one, which
 * the CPU supports too, the scalar reference at the latest. The sets handed
 * out are copies with those gaps filled. */
#define _POSIX_C_SOURCE 200809L
#include "kernels.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct candidate {
    const kernel_set *set;
    int (*supported)(void); /* NULL: always */
    int reads_tiles;        /* its kernels read qact's 16-token tiles (qt, dt, st) */
    int reads_octets;       /* and their octets (qo) */
} candidate;

/* The ladder: the sets best first (add a line per set), the scalar reference last. */
static const candidate candidates[] = {
#ifdef RQ4_X86
    {&rq4_kernels_avx512vnni, rq4_kernels_avx512vnni_supported, 1, 0},
#ifdef RQ4_X86_AVXVNNI_COMPILED
    {&rq4_kernels_avxvnni, rq4_kernels_avxvnni_supported, 1, 0},
#endif
    {&rq4_kernels_avx2, rq4_kernels_avx2_supported, 1, 0},
#endif
#ifdef RQ4_ARM
    {&rq4_kernels_neon_dotprod, rq4_kernels_neon_dotprod_supported, 1, 1},
    {&rq4_kernels_neon, rq4_kernels_neon_supported, 0, 0},
#endif
    {&rq4_kernels_scalar, 0, 0, 0},
};

#define N_CANDIDATES (sizeof candidates / sizeof candidates[0])

/* Filled once (pthread_once), read-only afterwards: the available sets,
 * gaps filled, and the candidate each came from. */
static kernel_set filled[N_CANDIDATES];
static const candidate *filled_from[N_CANDIDATES];
static const kernel_set *available[N_CANDIDATES + 1];
static dot_fn filled_q4t[N_CANDIDATES]; /* the Q4T kernel of each, gaps filled the same way */
static pthread_once_t available_once = PTHREAD_ONCE_INIT;

/* dst's NULL kernels from src */
static void fill_gaps(kernel_set *dst, const kernel_set *src) {
    if (!dst->dot_q4s) dst->dot_q4s = src->dot_q4s;
    if (!dst->dot_q4a) dst->dot_q4a = src->dot_q4a;
    if (!dst->dot_q8) dst->dot_q8 = src->dot_q8;
    if (!dst->dot_q4s_r4) dst->dot_q4s_r4 = src->dot_q4s_r4;
    if (!dst->dot_q4a_r4) dst->dot_q4a_r4 = src->dot_q4a_r4;
}

/* A set's own Q4T kernel (src/kernels/q4t_<set>.c), or NULL. */
static dot_fn q4t_kernel(const kernel_set *set) {
#ifdef RQ4_X86
    if (set == &rq4_kernels_avx2) return rq4_dot_q4t_avx2;
#endif
#ifdef RQ4_ARM
    if (set == &rq4_kernels_neon_dotprod) return rq4_dot_q4t_neon_dotprod;
    if (set == &rq4_kernels_neon) return rq4_dot_q4t_neon;
#endif
    if (set == &rq4_kernels_scalar) return rq4_dot_q4t_scalar;
    return 0;
}

static void find_available(void) {
    size_t n = 0;
    for (size_t i = 0; i < N_CANDIDATES; i++)
        if (!candidates[i].supported || candidates[i].supported()) {
            filled[n] = *candidates[i].set;
            filled_q4t[n] = q4t_kernel(candidates[i].set);
            filled_from[n] = &candidates[i];
            n++;
        }
    /* bottom up: each set takes its gaps from the one below, already whole */
    for (size_t i = n - 1; i-- > 0;) {
        fill_gaps(&filled[i], &filled[i + 1]);
        if (!filled_q4t[i]) filled_q4t[i] = filled_q4t[i + 1];
    }
    for (size_t i = 0; i < n; i++) available[i] = &filled[i];
    available[n] = 0;
}

/* The candidate set ks of rq4_kernels_available() came from, or NULL */
static const candidate *candidate_of(const kernel_set *ks) {
    rq4_kernels_available();
    for (size_t i = 0; available[i]; i++)
        if (available[i] == ks) return filled_from[i];
    return 0;
}

int rq4_kernels_read_tiles(const kernel_set *ks) {
    const candidate *c = candidate_of(ks);
    return c ? c->reads_tiles : 0;
}

int rq4_kernels_read_octets(const kernel_set *ks) {
    const candidate *c = candidate_of(ks);
    return c ? c->reads_octets : 0;
}

dot_fn rq4_kernels_q4t(const kernel_set *ks) {
    rq4_kernels_available();
    for (size_t i = 0; available[i]; i++)
        if (available[i] == ks) return filled_q4t[i];
    return 0;
}

const kernel_set *const *rq4_kernels_available(void) {
    pthread_once(&available_once, find_available);
    return available;
}

/* The best available set, or the one named by the environment variable
 * RUNQ4_KERNEL (scalar, avx2, avxvnni, avx512vnni, neon, neon_dotprod) when
 * this CPU supports it (for benchmarks and tests); an unknown or unsupported
 * name falls back to the best. */
const kernel_set *rq4_kernels_select(void) {
    const kernel_set *const *sets = rq4_kernels_available();
    const char *want = getenv("RUNQ4_KERNEL");
    if (want && *want)
        for (size_t i = 0; sets[i]; i++)
            if (strcmp(sets[i]->name, want) == 0) return sets[i];
    return sets[0];
}
