/* rq4_decode: the generation loop of runq4.h ("Decoding") in C, so that a
 * caller in a slower language pays its own cost once per call rather than
 * once per token: draw, store, feed, draw ... into the caller's buffers. */
#include "internal.h"

static int is_eos(const rq4_config *c, int32_t id) {
    for (int32_t i = 0; i < c->n_eos && i < RQ4_MAX_EOS; i++)
        if (c->eos_ids[i] == id) return 1;
    return 0;
}

rq4_status rq4_decode(rq4_model *m, rq4_sampler *s, float *logits, int32_t pending, int32_t max_ids,
                      int32_t *ids, int32_t *n_ids, int32_t *stop, rq4_error *err) {
    if (n_ids) *n_ids = 0;
    if (stop) *stop = RQ4_STOP_COUNT;
    if (!m || !s || !logits || !ids || !n_ids || !stop)
        return rq4_fail(err, RQ4_ERR_ARG, "rq4_decode: no pointer argument may be NULL");
    if (max_ids < 1) return rq4_fail(err, RQ4_ERR_ARG, "rq4_decode: max_ids = %d, need at least 1", max_ids);
    const rq4_config *c = &m->config;
    rq4_status st;
    if (pending >= 0) {
        if (m->pos >= c->n_ctx) {
            *stop = RQ4_STOP_CONTEXT;
            return rq4_succeed(err);
        }
        if ((st = rq4_forward(m, &pending, 1, logits, 0, err))) return st;
    }
    for (;;) {
        int32_t id = rq4_sample(s, logits);
        if (is_eos(c, id)) {
            *stop = RQ4_STOP_EOS;
            break;
        }
        ids[(*n_ids)++] = id;
        rq4_sampler_accept(s, &id, 1);
        if (*n_ids == max_ids) break;
        if (m->pos >= c->n_ctx) {   /* no room to feed it */
            *stop = RQ4_STOP_CONTEXT;
            break;
        }
        if ((st = rq4_forward(m, &id, 1, logits, 0, err))) return st;
    }
    return rq4_succeed(err);
}
