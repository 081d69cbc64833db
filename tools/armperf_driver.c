/* The program tools/armperf.py traces: one call of one kernel of one kernel
 * set on Llama-shaped rows, between the markers armperf_begin() and
 * armperf_end().
 *
 *   armperf_driver SET KIND NTOK ROWS COLS GS
 *
 * SET is a kernel set name from rq4_kernels_available() (under qemu -cpu max
 * every aarch64 set is available), KIND q4s, q4a, q8, q4s_r4 or q4a_r4 (the
 * interleaved layout of kernels.h, made from the same rows), NTOK the tokens (1 =
 * decode), ROWS the weight rows of the call, COLS their length, GS the group
 * size. The activations are quantized as the engine does (rq4_quantize_act, and
 * the 16-token tiles), outside the markers. Built statically for aarch64 with
 * the kernel sources (tools/armperf.py); never part of the library. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* the markers: real calls the tracer can see in the executed blocks */
__attribute__((noinline)) void armperf_begin(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void armperf_end(void) { __asm__ volatile("" ::: "memory"); }

static uint32_t seed = 12345;
static uint32_t rnd(void) {
    seed ^= seed << 13;
    seed ^= seed >> 17;
    seed ^= seed << 5;
    return seed;
}

static void *xmalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "armperf_driver: out of memory\n");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s SET KIND NTOK ROWS COLS GS\n", argv[0]);
        return 2;
    }
    const char *kind = argv[2];
    int ntok = atoi(argv[3]), rows = atoi(argv[4]), cols = atoi(argv[5]), gs = atoi(argv[6]);
    const kernel_set *ks = NULL;
    for (const kernel_set *const *s = rq4_kernels_available(); *s; s++)
        if (strcmp((*s)->name, argv[1]) == 0) ks = *s;
    int r4 = !strcmp(kind, "q4s_r4") || !strcmp(kind, "q4a_r4"), asym = !strcmp(kind, "q4a") || !strcmp(kind, "q4a_r4");
    dot_fn fn = !ks ? NULL : !strcmp(kind, "q4s") ? ks->dot_q4s : !strcmp(kind, "q4a") ? ks->dot_q4a
                             : !strcmp(kind, "q8") ? ks->dot_q8 : !strcmp(kind, "q4s_r4") ? ks->dot_q4s_r4
                             : !strcmp(kind, "q4a_r4") ? ks->dot_q4a_r4 : NULL;
    if (r4 && rows % R4) fn = NULL;
    if (!fn || ntok < 1 || rows < 1 || cols < QK || cols % QK || gs < QK || gs % QK) {
        fprintf(stderr, "armperf_driver: unknown or unsupported kernel set or kind, or bad shape\n");
        return 2;
    }
    /* weights: random bytes, fp16 scales and minimums in [2^-7, 2^-6) */
    int ng = (cols + gs - 1) / gs;
    size_t rb = !strcmp(kind, "q8") ? (size_t)cols : (size_t)cols / 2;
    uint8_t *wq = xmalloc(rb * (size_t)rows);
    uint16_t *wd = xmalloc(sizeof(uint16_t) * (size_t)rows * (size_t)ng);
    uint16_t *wm = xmalloc(sizeof(uint16_t) * (size_t)rows * (size_t)ng);
    for (size_t i = 0; i < rb * (size_t)rows; i++) wq[i] = (uint8_t)rnd();
    for (size_t i = 0; i < (size_t)rows * (size_t)ng; i++) {
        wd[i] = (uint16_t)(0x2000 + rnd() % 0x400);
        wm[i] = (uint16_t)(0xa000 + rnd() % 0x400);
    }
    qmat w = {wq, wd, asym ? wm : NULL, rb, cols, gs, ng, rows};
    if (r4) { /* the same rows interleaved (kernels.h) */
        uint8_t *iq = xmalloc(rb * (size_t)rows);
        uint16_t *id = xmalloc(sizeof(uint16_t) * (size_t)rows * (size_t)ng);
        uint16_t *im = xmalloc(sizeof(uint16_t) * (size_t)rows * (size_t)ng);
        for (int r = 0; r < rows; r++) {
            for (int b = 0; b < cols / QK; b++)
                for (int k = 0; k < 4; k++)
                    memcpy(iq + (size_t)(r / R4) * R4 * rb + 64 * (size_t)b + (size_t)(4 * k + r % R4) * 4,
                           wq + (size_t)r * rb + 16 * (size_t)b + 4 * (size_t)k, 4);
            for (int g = 0; g < ng; g++) {
                size_t at = ((size_t)(r / R4) * (size_t)ng + (size_t)g) * R4 + (size_t)(r % R4);
                id[at] = wd[(size_t)r * (size_t)ng + (size_t)g];
                im[at] = wm[(size_t)r * (size_t)ng + (size_t)g];
            }
        }
        w = (qmat){iq, id, asym ? im : NULL, R4 * rb, cols, gs, ng, rows};
    }
    /* activations: random values in [-1, 1], quantized as the engine does */
    qact a;
    memset(&a, 0, sizeof a);
    a.n = cols;
    a.nb = cols / QK;
    a.ntok = ntok;
    a.q = xmalloc((size_t)ntok * (size_t)cols);
    a.qp = xmalloc((size_t)ntok * (size_t)cols);
    a.d = xmalloc(sizeof(float) * (size_t)ntok * (size_t)a.nb);
    a.s = xmalloc(sizeof(int32_t) * (size_t)ntok * (size_t)a.nb);
    size_t tiled = (size_t)tiled_tokens(ntok);
    a.qt = xmalloc(tiled * (size_t)cols);
    a.qo = xmalloc(tiled * (size_t)cols);
    a.dt = xmalloc(sizeof(float) * tiled * (size_t)a.nb);
    a.st = xmalloc(sizeof(int32_t) * tiled * (size_t)a.nb);
    float *x = xmalloc(sizeof(float) * (size_t)cols), *out = xmalloc(sizeof(float) * (size_t)ntok * (size_t)rows);
    for (int t = 0; t < ntok; t++) {
        for (int i = 0; i < cols; i++) x[i] = (float)((int)(rnd() % 2001) - 1000) / 1000.0f;
        rq4_quantize_act(&a, t, x);
    }
    rq4_interleave_act(&a);
    armperf_begin();
    fn(&a, &w, 0, rows, out, (size_t)rows);
    armperf_end();
    double sum = 0;
    for (int i = 0; i < ntok * rows; i++) sum += out[i];
    printf("%s %s: %d x %d g%d, %d token(s), checksum %.9g\n", ks->name, kind, rows, cols, gs, ntok, sum);
    return 0;
}
