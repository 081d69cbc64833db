/* The Q4T kernel of the avx2 set, rq4_dot_q4t_avx2 (dispatch.c gives it to
 * rq4_kernels_avx2; avxvnni and avx512vnni take it from there down the
 * ladder).
 *
 * A block's 16 bytes unpack to its 32 nibbles in value order (unpack32_256);
 * vpshufb looks each up in the table (16 levels fill one 128-bit lane, held
 * in both); the signed x signed products go through vpmaddubsw as
 * |w| * (x with w's sign) (vpsignb; 2 * 128 * 127 fits int16), then vpmaddwd
 * with ones: each block's exact int32 sum, 8 blocks reduced into one vector.
 * The float steps are kernels.h's contract (the Q4S term), so the outputs
 * are bit-identical to the scalar reference. Prompts take a row's blocks
 * once for up to Q4T_TOKENS tokens.
 */
#include "kernels.h"

#ifdef RQ4_X86

/* x86.h's CPU detection is for the kernel set files, not used here */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "x86.h"
#pragma GCC diagnostic pop

#define Q4T_CHUNK 8  /* blocks per reduction: one vector of 8 block sums */
#define Q4T_TOKENS 4 /* tokens per pass over a row (their 16 lanes each in 2 registers) */

/* The 32 weights of the block at p as int8, value order. */
ALWAYS TGT256 __m256i lookup_block(const uint8_t *p, __m256i table) {
    return _mm256_shuffle_epi8(table, unpack32_256(p, 0));
}

/* 8 int32 partial sums of w * (32 int8 at x); wabs = |w|. */
ALWAYS TGT256 __m256i dot_block(__m256i w, __m256i wabs, const int8_t *x) {
    __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x), w);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xs), _mm256_set1_epi16(1));
}

/* lane k = the sum of the 8 lanes of p[k] */
ALWAYS TGT256 __m256i reduce_blocks(const __m256i *p) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    /* a: the first halves of p[0..3] | their second halves; b the same of p[4..7] */
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* Row r against tokens t0 .. t0+T-1 (T <= Q4T_TOKENS): chunk by chunk of 8
 * blocks, the lookups once for the T tokens; the chunk from block b0 adds to
 * lanes b0 % 16 .. +7 (half (b0 / 8) % 2). Past the last block the lanes
 * are kept as they are (x86_256.h says why). */
static TGT256 void row_tokens(const qact *x, const qmat *w, int r, int t0, int T, float *out, size_t out_stride) {
    const int nb = x->nb;
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)w->table));
    row_view v;
    row_of(&v, w, r, K_Q4S); /* scales only, as Q4S */
    __m256 lanes[Q4T_TOKENS][2];
    for (int t = 0; t < T; t++) lanes[t][0] = lanes[t][1] = _mm256_set1_ps(-0.0f);
    for (int b0 = 0, half = 0; b0 < nb; b0 += Q4T_CHUNK, half ^= 1) {
        int cnt = nb - b0 < Q4T_CHUNK ? nb - b0 : Q4T_CHUNK;
        __m256i wv[Q4T_CHUNK], wabs[Q4T_CHUNK];
        prefetch_ahead(v.q + (size_t)b0 * (QK / 2), (size_t)cnt * (QK / 2));
        for (int k = 0; k < Q4T_CHUNK; k++) {
            wv[k] = k < cnt ? lookup_block(v.q + (size_t)(b0 + k) * (QK / 2), table) : _mm256_setzero_si256();
            wabs[k] = _mm256_abs_epi8(wv[k]);
        }
        __m256 d8 = scales8(&v, v.d, b0, cnt);
        const __m256i valid = mask8(cnt);
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)(t0 + t);
            const int8_t *xr = x->q + row * (size_t)x->n + (size_t)b0 * QK;
            __m256i p[Q4T_CHUNK];
            for (int k = 0; k < Q4T_CHUNK; k++)
                p[k] = k < cnt ? dot_block(wv[k], wabs[k], xr + k * QK) : _mm256_setzero_si256();
            __m256 dx = load8f(x->d + row * (size_t)nb + (size_t)b0, cnt);
            __m256 f = _mm256_fmadd_ps(_mm256_mul_ps(d8, dx), _mm256_cvtepi32_ps(reduce_blocks(p)), lanes[t][half]);
            lanes[t][half] = cnt < Q4T_CHUNK ? _mm256_blendv_ps(lanes[t][half], f, _mm256_castsi256_ps(valid)) : f;
        }
    }
    for (int t = 0; t < T; t++) out[(size_t)(t0 + t) * out_stride + (size_t)r] = tree16(lanes[t][0], lanes[t][1]);
}

void rq4_dot_q4t_avx2(const qact *x, const qmat *w, int r0, int r1, float *out, size_t out_stride) {
    const int run = stream_run(r0, r1, row_streams(w->touch_pages));
    for (int i = 0; i < run; i++)
        for (int r = r0 + i; r < r1; r += run)
            for (int t0 = 0; t0 < x->ntok; t0 += Q4T_TOKENS)
                row_tokens(x, w, r, t0, x->ntok - t0 < Q4T_TOKENS ? x->ntok - t0 : Q4T_TOKENS, out, out_stride);
}

#endif /* RQ4_X86 */
