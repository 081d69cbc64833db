/* The thread pool and the default thread count. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int rq4_default_threads(void) {
    long n = 0;
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
#endif
    if (n < 1) n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    return n > RQ4_MAX_THREADS ? RQ4_MAX_THREADS : (int)n;
}

/* Thread pool: n_threads - 1 workers plus the calling thread. A job is a
 * function over the items [0, count) (matrix rows, attention heads), cut into
 * contiguous chunks that the threads take in turn from a shared counter; the
 * caller takes chunks too. So when a worker is slow to wake (a loaded
 * machine) the others do its share instead of waiting for it. Which thread
 * computes an item never changes its result. Workers spin for the next
 * job, and the caller for the last chunk, for a while, then sleep on a
 * condition variable. */

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

/* How long a thread spins before it sleeps, in time, not iterations (a
 * pause instruction takes 10 to 140 cycles on x86, ARM's yield about one).
 * A worker waits for the caller's serial work between jobs: on a machine
 * with more runnable threads than cores a longer spin would keep the caller
 * from a core, so it stays short. The caller waits for chunks that running
 * workers are finishing: sleeping there would add a wake-up to most jobs
 * of a decoded token, so it spins longer than most chunks take. */
#define WORKER_SPIN_NANOSECONDS 20000
#define CALLER_SPIN_NANOSECONDS 200000
#define SPINS_PER_CLOCK 64 /* spins between two readings of the clock */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One spin of a wait that began at *since (0: not yet read); 0 once
 * `limit` nanoseconds have passed. */
static int spin(int spins, uint64_t *since, uint64_t limit) {
    cpu_relax();
    if (spins % SPINS_PER_CLOCK) return 1;
    uint64_t now = monotonic_ns();
    if (!*since) *since = now;
    return now - *since < limit;
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
        uint64_t since = 0;
        for (int spins = 0; (atomic_load_explicit(&p->ticket, memory_order_acquire) >> 32) == seen; spins++)
            if (!spin(spins, &since, WORKER_SPIN_NANOSECONDS)) break;
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

void rq4_free_pool(pool *p) {
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

rq4_status rq4_build_pool(pool **out, int n_workers, rq4_error *err) {
    pool *p = calloc(1, sizeof *p);
    if (!p) return rq4_fail(err, RQ4_ERR_NOMEM, "out of memory for the thread pool");
    p->threads = calloc((size_t)n_workers, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return rq4_fail(err, RQ4_ERR_NOMEM, "out of memory for the thread pool");
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
            rq4_free_pool(p);
            return rq4_fail(err, RQ4_ERR_THREAD, "cannot start worker thread %d of %d: %s", i + 1, n_workers,
                        strerror(rc));
        }
        p->n_started++;
    }
    *out = p;
    return RQ4_OK;
}

void rq4_run_parallel_chunks(const rq4_model *m, job_fn fn, void *arg, int count, int per_thread) {
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
    uint64_t since = 0;
    for (int spins = 0; atomic_load_explicit(&p->chunks_done, memory_order_acquire) != n_chunks; spins++)
        if (!spin(spins, &since, CALLER_SPIN_NANOSECONDS)) break;
    pthread_mutex_lock(&p->lock);
    while (atomic_load_explicit(&p->chunks_done, memory_order_acquire) != n_chunks)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}
