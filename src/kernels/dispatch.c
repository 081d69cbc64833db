/* Kernel dispatch: the best kernel set this CPU supports, picked at run time.
 * Each SIMD file of src/kernels/ defines one set (declared in kernels.h) and
 * its runtime CPU check, guarded by architecture. */
#define _POSIX_C_SOURCE 200809L
#include "kernels.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct candidate {
    const kernel_set *set;
    int (*supported)(void); /* NULL: always */
    int reads_tiles;        /* its kernels read qact's 16-token tiles (qt, dt, st) */
} candidate;

/* The ladder: the sets best first (add a line per set), the scalar reference last. */
static const candidate candidates[] = {
#ifdef RQ4_X86
    {&rq4_kernels_avx512vnni, rq4_kernels_avx512vnni_supported, 1},
#ifdef RQ4_X86_AVXVNNI_COMPILED
    {&rq4_kernels_avxvnni, rq4_kernels_avxvnni_supported, 0},
#endif
    {&rq4_kernels_avx2, rq4_kernels_avx2_supported, 1},
#endif
#ifdef RQ4_ARM
    {&rq4_kernels_neon_dotprod, rq4_kernels_neon_dotprod_supported, 1},
    {&rq4_kernels_neon, rq4_kernels_neon_supported, 0},
#endif
    {&rq4_kernels_scalar, 0, 0},
};

#define N_CANDIDATES (sizeof candidates / sizeof candidates[0])

/* Filled once (pthread_once), read-only afterwards. */
static const kernel_set *available[N_CANDIDATES + 1];
static pthread_once_t available_once = PTHREAD_ONCE_INIT;

static void find_available(void) {
    size_t n = 0;
    for (size_t i = 0; i < N_CANDIDATES; i++)
        if (!candidates[i].supported || candidates[i].supported()) available[n++] = candidates[i].set;
    available[n] = 0;
}

int rq4_kernels_read_tiles(const kernel_set *ks) {
    for (size_t i = 0; i < N_CANDIDATES; i++)
        if (candidates[i].set == ks) return candidates[i].reads_tiles;
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
