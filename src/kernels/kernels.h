/* Internal: the quantized dot-product kernels and their dispatch.
 *
 * Rows r0..r1 of a weight matrix times the int8 activations of `ntok` tokens.
 * Weights are stored as in docs/FORMAT.md (row-major, groups of `gs` along the
 * row, gs a multiple of 32, the last group of a row may be shorter; every row
 * length is a multiple of 32). Activations are quantized in blocks of 32
 * values whatever the weight group size (one scale per 128 values costs
 * perplexity at g128; per 32 it is llama.cpp's Q8_0):
 *     x[i] ~= xd[b] * xq[i],  xq in [-127, 127],  xs[b] = sum of xq over b.
 *
 * Every kernel computes, for each token t and row r, exactly
 *     lane[0..15] = -0.0f
 *     for b in blocks (in order), g = b / (gs / 32) its weight group, l = b % 16:
 *         lane[l] = fmaf(wd[g] * xd[t][b], (float)isum[b], lane[l])       (all kinds)
 *         lane[l] = fmaf(wm[g] * xd[t][b], (float)xs[t][b], lane[l])      (then Q4A)
 *     for w in 8, 4, 2, 1:  lane[i] = lane[i] + lane[i + w]  for i < w
 *     out[t][r] = lane[0]
 * with isum[b] the int32 sum over block b of wq * xq (Q4T: of table[q] * xq),
 * and the scale products wd * xd, wm * xd rounded to float on their own. A
 * lane starts at -0.0f so that its first fmaf is exactly the product (x +
 * -0.0 is x for every x, +0.0 included): a kernel may compute a lane's first
 * term with a multiply and never zero the lane. The fused multiply-add is
 * the one instruction of both NEON (fmla) and x86 with FMA (vfmadd), so the
 * term costs one operation where a multiply and an add cost two. Sixteen
 * lanes map onto one AVX-512 vector, two AVX2 vectors or four NEON vectors,
 * and the final tree onto their halvings, so a SIMD kernel's output is
 * bit-identical to the scalar reference's whenever its integer sums are.
 */
#ifndef RUNQ4_KERNELS_H
#define RUNQ4_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../runq4.h"

/* Keep the compiler from fusing a*b+c into one fma implicitly in every file
 * that includes this one: the contract above fuses exactly where it says
 * (fmaf, or an explicit fma intrinsic or instruction), and an fma the
 * compiler chose elsewhere (the scale products, the final tree's neighbours)
 * would change rounding between kernel sets and between machines. GCC does
 * not contract in ISO C mode (-std=c11); in GNU C mode it does, hence its
 * pragma; clang honours the standard one. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__) && !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

#define QK 32    /* values per activation block */
#define LANES 16 /* float accumulators per output (the contract above) */

/* Activations of ntok tokens, quantized in blocks of QK. */
typedef struct qact {
    int8_t *q;      /* (ntok, n) */
    int8_t *qp;     /* (ntok, n): q in nibble order, see rq4_permute_act */
    float *d;       /* (ntok, nb) */
    int32_t *s;     /* (ntok, nb): sum of q over each block */
    int n;          /* row length, a multiple of QK */
    int nb;         /* n / QK */
    int ntok;
    /* The tokens again, 16 to a vector lane (rq4_interleave_act; ntile = 0 when
     * qt is NULL): tile k, block b is 8 vectors of 64 bytes, vector c holding
     * values 4c..4c+3 of each of the 16 tokens. The tiles cover
     * tiled_tokens(ntok) tokens, padded with zero lanes past ntok. */
    int8_t *qt;     /* (ntile, nb, 8, 16, 4) */
    float *dt;      /* (ntile, nb, 16): d */
    int32_t *st;    /* (ntile, nb, 16): s */
    int ntile;
    /* The tiles' tokens again in octets (filled with the tiles when qo is not
     * NULL; a set that reads them, rq4_kernels_read_octets, needs them
     * whenever ntile > 0): octet o (tokens 8o .. 8o+7), block b is 256
     * bytes, token i's 16 even values of the block in nibble order (qp) at
     * 16 i, its 16 odd ones at 128 + 16 i; zero past ntok. One pointer then
     * reaches the 8 tokens' values of a block at fixed offsets. */
    int8_t *qo;     /* (2 ntile, nb, 2, 8, 16) */
} qact;

/* A quantized weight matrix (row r at q + r * row_bytes, scales at
 * d + r * ngroups).
 *
 * The interleaved types (Q4S_R4, Q4A_R4 of docs/FORMAT.md; the dot_q4s_r4 and
 * dot_q4a_r4 kernels) hold rows in groups of R4 = 4: group G (rows 4G ..
 * 4G+3) at q + G * row_bytes (row_bytes = 4 * cols / 2), its block b at
 * + 64 * b, where the 16 bytes of row 4G+i's block (the row-major layout's,
 * same nibble order) are cut in 4-byte chunks, chunk k at (4k + i) * 4; the
 * scales of group G and weight group g at d + (G * ngroups + g) * 4, row i at
 * + i (minimums the same in m). Chunk k's low nibbles are values 8k, 8k+2,
 * 8k+4, 8k+6 of the block: lane k of the block's even values in nibble order
 * (qact.qp), its high nibbles lane k of the odd ones, so one sdot by element
 * of a chunk vector serves the 4 rows. The matrix is stored with its rows
 * padded to a multiple of 4: the kernels may read every row of a group whose
 * first row is < rows, and compute rows past r1 of it (never writing them).
 * The contract is the one above, row by row: a Q4S_R4 matrix gives exactly
 * the outputs of the same values as Q4S, so the engine's results do not
 * depend on the layout. */
#define R4 RQ4_INTERLEAVE /* the kernels' short name */
_Static_assert(R4 == 4, "the interleaved kernels are written for groups of 4 rows in 4-byte chunks");
typedef struct qmat {
    const uint8_t *q;    /* (rows, row_bytes) packed values; interleaved: (rows / R4, row_bytes) */
    const uint16_t *d;   /* (rows, ngroups) fp16 scales; interleaved: (rows / R4, ngroups, R4) */
    const uint16_t *m;   /* minimums as d, Q4A only (else NULL) */
    size_t row_bytes;
    int cols;            /* = the activations' n */
    int gs;              /* group size, a multiple of QK */
    int ngroups;         /* ceil(cols / gs) */
    int rows;            /* the kernels may read the scales of any row < rows (interleaved: of its group) */
    const int8_t *table; /* Q4T only (else NULL): the RQ4_Q4T_LEVELS levels, w = d * table[nibble] */
    int touch_pages;     /* the weights sit in 4 KiB pages (rq4_model.small_pages): x86.h's touch_next_page */
} qmat;

/* out[t * out_stride + r] = row r of w . token t of x, for r0 <= r < r1 and
 * every token of x. */
typedef void (*dot_fn)(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);

typedef struct kernel_set {
    const char *name;
    dot_fn dot_q4s;
    dot_fn dot_q4a;
    dot_fn dot_q8;
    dot_fn dot_q4s_r4; /* NULL: the next set down dispatch.c's ladder that has one */
    dot_fn dot_q4a_r4;
} kernel_set;

/* The kernel sets. Adding one: a file src/kernels/<name>.c defining
 * `const kernel_set rq4_kernels_<name>` and `int rq4_kernels_<name>_supported(void)`
 * (a runtime CPU check), guarded by architecture; its declarations here; a
 * line in dispatch.c's ladder (best first). Every set must equal
 * rq4_kernels_scalar bit for bit (tests/c/test_kernels.c). */
extern const kernel_set rq4_kernels_scalar; /* the reference, always compiled: scalar.c */

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define RQ4_X86 1
#if (!defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
#define RQ4_X86_AVXVNNI_COMPILED 1 /* the compiler knows the avxvnni target */
#endif
extern const kernel_set rq4_kernels_avx2;
int rq4_kernels_avx2_supported(void);
#ifdef RQ4_X86_AVXVNNI_COMPILED
extern const kernel_set rq4_kernels_avxvnni;
int rq4_kernels_avxvnni_supported(void);
#endif
extern const kernel_set rq4_kernels_avx512vnni;
int rq4_kernels_avx512vnni_supported(void);
#endif

#if defined(__aarch64__) && defined(__GNUC__)
#define RQ4_ARM 1
extern const kernel_set rq4_kernels_neon;
int rq4_kernels_neon_supported(void);
extern const kernel_set rq4_kernels_neon_dotprod;
int rq4_kernels_neon_dotprod_supported(void);
#endif

/* Q4T (the nibble an index into the tensor's table, w = d * table[q]; the
 * contract's Q4S term with isum = sum of table[q] * xq) has its kernels in
 * files of their own, src/kernels/q4t_<set>.c, one per instruction set, the
 * reference in scalar.c; rq4_kernels_q4t gives a set its own, or the next
 * one down dispatch.c's ladder. */
void rq4_dot_q4t_scalar(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);
#ifdef RQ4_X86
void rq4_dot_q4t_avx2(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);
#endif
#ifdef RQ4_ARM
void rq4_dot_q4t_neon(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);
void rq4_dot_q4t_neon_dotprod(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride);
#endif

/* The Q4T kernel of a set of rq4_kernels_available() (NULL for any other). */
dot_fn rq4_kernels_q4t(const kernel_set *ks);

/* The best kernel set compiled in and supported by this CPU. */
const kernel_set *rq4_kernels_select(void);

/* Every kernel set compiled in and supported by this CPU, NULL-terminated
 * (for the tests that compare each of them with the scalar reference), each
 * with its missing kernels filled in from the sets below it (dispatch.c). */
const kernel_set *const *rq4_kernels_available(void);

/* Whether the kernels of set ks read the 16-token tiles (qt, dt, st): only
 * then are they worth filling (rq4_interleave_act); a set that does not
 * read them runs the same with ntile = 0. */
int rq4_kernels_read_tiles(const kernel_set *ks);

/* Whether the kernels of set ks read the tiles' octets (qo) too: only then
 * are they allocated (memory.c) and filled. */
int rq4_kernels_read_octets(const kernel_set *ks);

/* Quantizes one token's activations x[0..a->n) into row t of `a` (q, d, s
 * and qp). */
void rq4_quantize_act(qact *a, int t, const float *x);

/* Row t of a->qp from row t of a->q: the row in spans of 128 values (then 64
 * and 32 at its end), each span stored as its even-indexed values, then its
 * odd ones. That is the order in which a span's packed nibbles come out of
 * one mask (low nibbles) and one shift (high nibbles), so the int4 SIMD
 * kernels can skip interleaving them; a span of 128 holds 4 whole blocks. */
void rq4_permute_act(qact *a, int t);

/* Offset of block b's even values in a row of qp (its odd ones follow at
 * + half), of a row of nb blocks: spans of 128 values, then 64 and 32. */
static inline size_t qp_block_at(int b, int nb, size_t *half) {
    int whole = nb & ~3;
    if (b < whole) {
        *half = 64;
        return (size_t)(b >> 2) * 128 + 16 * (size_t)(b & 3);
    }
    int k = b - whole;
    if (nb - whole >= 2 && k < 2) {
        *half = 32;
        return (size_t)whole * QK + 16 * (size_t)k;
    }
    *half = 16;
    return (size_t)b * QK;
}

/* The tokens a qact's tiles cover: whole pairs of tiles (the prompt kernel
 * takes them two at a time), then, for the last ntok % 32 tokens, another
 * pair when there are 22 or more, one tile when there are 10 or more, padded
 * past ntok (what was cheapest on SmolLM2's matrices, against the per-token
 * kernels, which take the tokens left over). The room qt, dt and st need. */
static inline int tiled_tokens(int ntok) {
    int last = ntok % 32;
    return 32 * (ntok / 32) + (last >= 22 ? 32 : last >= 10 ? 16 : 0);
}

/* Fills qt, dt and st (and qo when not NULL) from the quantized tokens,
 * zero past ntok, and sets ntile: tiled_tokens(ntok) / 16 when qt is not
 * NULL, else 0. */
void rq4_interleave_act(qact *a);

/* The tokens of x from `first` on, as a qact without tiles: what a prompt
 * kernel hands to the per-token kernels after its tiles. */
static inline qact rq4_qact_tail(const qact *x, int first) {
    qact t = *x;
    t.q += (size_t)first * (size_t)x->n;
    t.qp += (size_t)first * (size_t)x->n;
    t.d += (size_t)first * (size_t)x->nb;
    t.s += (size_t)first * (size_t)x->nb;
    t.ntok -= first;
    t.ntile = 0;
    return t;
}

/* The contract's final tree over the 16 lanes (overwrites them). */
static inline float sum_lanes(float lane[LANES]) {
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++) lane[i] = lane[i] + lane[i + w];
    return lane[0];
}

/* IEEE half -> single, exact for every half: the magnitude's bits moved into
 * a float's place, times 2^112 to rebias the exponent (exact for normals and
 * subnormals, unless built with -ffast-math, which flushes subnormals to
 * zero); inf and NaN get the top exponent instead. Written as selects, not a
 * branch, so loops over it vectorize. The one definition: the kernels, the
 * f16 KV cache and the float path all convert through it. */
static inline float fp16_to_f32(uint16_t h) {
    uint32_t mag = (uint32_t)(h & 0x7fffu) << 13, finite, bits;
    float f;
    memcpy(&f, &mag, sizeof f);
    f *= 0x1p112f;
    memcpy(&finite, &f, sizeof finite);
    uint32_t special = 0u - (uint32_t)((h & 0x7c00u) == 0x7c00u); /* all ones for inf, nan */
    bits = ((uint32_t)(h & 0x8000u) << 16) | (special & (0x7f800000u | mag)) | (~special & finite);
    memcpy(&f, &bits, sizeof f);
    return f;
}

#endif /* RUNQ4_KERNELS_H */
