/* Single-thread kernel benchmark: weight bytes streamed per second for a
 * rows x cols Q4S matrix (default 2048 x 8192, group 128), each available
 * kernel set side by side (runs interleaved round-robin, medians), plus a
 * read-bandwidth loop for the roofline.
 *
 *   bench_kernels [rows cols gs [runs [q4s|q4a|q8|q4t]]]
 *
 * Two weight placements: one matrix re-used (8 MiB: mostly cache resident on
 * big-L3 CPUs) and a rotation through enough copies (>= 256 MiB) that every
 * pass streams from DRAM. ntok=1 is decoding (memory bound); ntok=32 is
 * prompt processing (compute bound), reported as token-rows per second and
 * GOP/s (2 ops per multiply-add). Times are this thread's CPU time
 * (CLOCK_THREAD_CPUTIME_ID), so other load on a shared machine matters less.
 */
#define _POSIX_C_SOURCE 200809L
#include "kernels/kernels.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* CPU time of this thread: the machine may be shared (other processes only
 * steal cycles, they do not count here); the 2-thread bandwidth uses wall time */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

/* ---- read bandwidth: sum 64-bit words with 8 independent accumulators ---- */

typedef struct bw_job {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} bw_job;

static void *bw_read(void *arg) {
    bw_job *j = arg;
    uint64_t s[8] = {0};
    for (size_t i = 0; i + 8 <= j->n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += j->p[i + k];
    j->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    return NULL;
}

static double read_bandwidth(const uint64_t *buf, size_t words, int threads, int runs) {
    double t[16];
    uint64_t sink = 0;
    for (int r = 0; r < runs; r++) {
        bw_job jobs[8];
        pthread_t th[8];
        size_t per = words / (size_t)threads;
        double t0 = threads > 1 ? wall() : now();
        for (int i = 0; i < threads; i++) {
            jobs[i] = (bw_job){buf + (size_t)i * per, per, 0};
            if (i) pthread_create(&th[i], NULL, bw_read, &jobs[i]);
        }
        bw_read(&jobs[0]);
        for (int i = 1; i < threads; i++) pthread_join(th[i], NULL);
        t[r] = (threads > 1 ? wall() : now()) - t0;
        for (int i = 0; i < threads; i++) sink += jobs[i].sum;
    }
    if (sink == 42) printf(" ");
    return (double)(words * 8) / median(t, runs) / 1e9;
}

/* one weight matrix of the benchmarked type: q, scales, Q4A minimums after the scales */
typedef struct matrix {
    uint8_t *wq;
    uint16_t *wd;
    qmat w;
} matrix;

static void dot(const kernel_set *ks, int q8, int q4a, const qact *x, const matrix *mm, int r0, int r1, float *out,
                size_t stride) {
    if (mm->w.table) rq4_kernels_q4t(ks)(x, &mm->w, r0, r1, out, stride);
    else if (q8) ks->dot_q8(x, &mm->w, r0, r1, out, stride);
    else if (q4a) ks->dot_q4a(x, &mm->w, r0, r1, out, stride);
    else ks->dot_q4s(x, &mm->w, r0, r1, out, stride);
}

int main(int argc, char **argv) {
    int rows = argc > 3 ? atoi(argv[1]) : 2048, cols = argc > 3 ? atoi(argv[2]) : 8192;
    int gs = argc > 3 ? atoi(argv[3]) : 128, runs = argc > 4 ? atoi(argv[4]) : 7;
    const char *type = argc > 5 ? argv[5] : "q4s";
    int q8 = strcmp(type, "q8") == 0, q4a = strcmp(type, "q4a") == 0, q4t = strcmp(type, "q4t") == 0;
    /* q4t: NF4's levels rounded to int8 (any increasing table costs the same) */
    static const int8_t table[16] = {-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127};
    if (rows <= 0 || cols <= 0 || cols % 32 || gs <= 0 || gs % 32 || runs <= 0 || runs > 16 ||
        !(q8 || q4a || q4t || strcmp(type, "q4s") == 0)) {
        fprintf(stderr, "usage: bench_kernels [rows cols gs [runs<=16 [q4s|q4a|q8|q4t]]]\n");
        return 2;
    }
    int ng = (cols + gs - 1) / gs;
    size_t row_bytes = q8 ? (size_t)cols : (size_t)cols / 2;
    size_t wbytes = (size_t)rows * row_bytes, sbytes = (size_t)rows * (size_t)ng * 2 * (q4a ? 2 : 1);
    size_t mbytes = wbytes + sbytes;
    int ncopies = (int)((256u << 20) / mbytes) + 1;

    /* weights: ncopies independent random matrices */
    matrix *m = calloc((size_t)ncopies, sizeof *m);
    for (int c = 0; c < ncopies; c++) {
        m[c].wq = aligned_alloc(64, (wbytes + 63) / 64 * 64);
        m[c].wd = aligned_alloc(64, (sbytes + 63) / 64 * 64); /* Q4A: the mins after the scales */
        for (size_t i = 0; i < wbytes; i++) m[c].wq[i] = (uint8_t)rnd();
        for (size_t i = 0; i < sbytes / 2; i++) m[c].wd[i] = (uint16_t)(0x1800 + rnd() % 0x0c00);
        m[c].w = (qmat){m[c].wq, m[c].wd, q4a ? m[c].wd + (size_t)rows * (size_t)ng : NULL, row_bytes, cols, gs, ng, rows, q4t ? table : NULL,
                        1 /* heap memory without MADV_HUGEPAGE: 4 KiB pages */};
    }
    /* activations for up to 32 tokens */
    const int maxtok = 32;
    qact x = {0};
    const int nb = cols / QK;
    x.n = cols;
    x.nb = nb;
    x.q = malloc((size_t)maxtok * cols);
    x.qp = malloc((size_t)maxtok * cols);
    x.d = malloc(sizeof(float) * (size_t)maxtok * nb);
    x.s = malloc(sizeof(int32_t) * (size_t)maxtok * nb);
    float *f = malloc(sizeof(float) * (size_t)cols);
    x.ntok = maxtok;
    for (int t = 0; t < maxtok; t++) {
        for (int i = 0; i < cols; i++) f[i] = (float)((int)(rnd() % 2001) - 1000) * 1e-3f;
        rq4_quantize_act(&x, t, f);
    }
    x.qt = malloc((size_t)maxtok * cols);
    x.qo = malloc((size_t)maxtok * cols);
    x.dt = malloc(sizeof(float) * (size_t)maxtok * nb);
    x.st = malloc(sizeof(int32_t) * (size_t)maxtok * nb);
    rq4_interleave_act(&x);
    float *out = malloc(sizeof(float) * (size_t)rows * maxtok);

    const kernel_set *const *sets = rq4_kernels_available();
    int nsets = 0;
    while (sets[nsets]) nsets++;

    printf("matrix %d x %d %s g%d: %.2f MiB weights+scales; DRAM case rotates %d copies (%.0f MiB)\n", rows,
           cols, type, gs, (double)mbytes / 1048576.0, ncopies, (double)mbytes * ncopies / 1048576.0);

    /* side by side: for each run, each set in turn */
    enum { CASE_HOT1, CASE_DRAM1, CASE_HOT32, CASE_BLOCK32, N_CASES };
    static const char *case_names[N_CASES] = {
        "ntok=1, same matrix (all rows in one call)", "ntok=1, DRAM (all rows in one call)",
        "ntok=32, same matrix (all rows x 32 tokens in one call)",
        "ntok=32, same matrix, blocked (64 rows x 4 tokens per call: x stays in L1)"};
    double t[N_CASES][8][16];
    int rot = 0;
    const int ntile32 = x.ntile; /* one token has no tiles (tiled_tokens(1) = 0), as when decoding */
    for (int r = 0; r < runs; r++) {
        for (int si = 0; si < nsets; si++) {
            const kernel_set *ks = sets[si];
            for (int cs = 0; cs < N_CASES; cs++) {
                x.ntok = cs >= CASE_HOT32 ? maxtok : 1;
                x.ntile = cs >= CASE_HOT32 ? ntile32 : 0;
                int passes = cs >= CASE_HOT32 ? 1 : cs == CASE_HOT1 ? 4 : ncopies;
                if (cs == CASE_HOT1) dot(ks, q8, q4a, &x, &m[0], 0, rows, out, (size_t)rows); /* warm up */
                double t0 = now();
                if (cs == CASE_BLOCK32) {
                    const int rb = 64, tb = 4;
                    for (int r0 = 0; r0 < rows; r0 += rb)
                        for (int tk = 0; tk < maxtok; tk += tb) {
                            qact xv = x;
                            xv.q += (size_t)tk * cols;
                            xv.qp += (size_t)tk * cols;
                            xv.d += (size_t)tk * nb;
                            xv.s += (size_t)tk * nb;
                            xv.ntok = tb;
                            xv.ntile = 0;
                            dot(ks, q8, q4a, &xv, &m[0], r0, r0 + rb < rows ? r0 + rb : rows,
                                out + (size_t)tk * rows, (size_t)rows);
                        }
                    passes = 0;
                }
                for (int p = 0; p < passes; p++) {
                    const matrix *mm = cs == CASE_DRAM1 ? &m[rot++ % ncopies] : &m[0];
                    dot(ks, q8, q4a, &x, mm, 0, rows, out, (size_t)rows);
                }
                t[cs][si][r] = (now() - t0) / (passes ? passes : 1);
            }
        }
    }

    double base[N_CASES] = {0};
    for (int cs = 0; cs < N_CASES; cs++) {
        printf("\n%s\n", case_names[cs]);
        for (int si = 0; si < nsets; si++) {
            double tm = median(t[cs][si], runs);
            if (si == nsets - 1 || base[cs] == 0) base[cs] = 0;
            double gbs = (double)mbytes / tm / 1e9;
            if (cs >= CASE_HOT32) {
                double ops = 2.0 * rows * (double)cols * maxtok;
                printf("  %-12s %8.3f ms  %7.1f tokens/s-equivalent (32 tokens per pass)  %6.1f GOP/s\n",
                       sets[si]->name, tm * 1e3, maxtok / tm, ops / tm / 1e9);
            } else {
                printf("  %-12s %8.3f ms  %6.2f GB/s of weights\n", sets[si]->name, tm * 1e3, gbs);
            }
        }
        double ts = median(t[cs][nsets - 1], runs); /* scalar is last */
        printf("  speed-up vs scalar:");
        for (int si = 0; si < nsets - 1; si++) printf(" %s %.1fx", sets[si]->name, ts / median(t[cs][si], runs));
        printf("\n");
    }

    size_t bw_words = (size_t)(512u << 20) / 8;
    uint64_t *buf = aligned_alloc(64, bw_words * 8);
    for (size_t i = 0; i < bw_words; i++) buf[i] = i;
    printf("\nread bandwidth (512 MiB buffer, medians of %d): 1 thread %.2f GB/s, 2 threads %.2f GB/s\n", runs,
           read_bandwidth(buf, bw_words, 1, runs), read_bandwidth(buf, bw_words, 2, runs));
    free(buf);
    for (int c = 0; c < ncopies; c++) {
        free(m[c].wq);
        free(m[c].wd);
    }
    free(m);
    free(x.q);
    free(x.qp);
    free(x.qt);
    free(x.qo);
    free(x.dt);
    free(x.st);
    free(x.d);
    free(x.s);
    free(f);
    free(out);
    return 0;
}
