/* ensemble.c - predictions of several models at once: a weighted average of
 * their probabilities, or, anytime, the members asked in order on the
 * records still undecided until the running average is confident enough;
 * and a single model's early exits.  Each record's answer is the same
 * whatever else is in its batch but for the last digits BLAS gives a row by
 * its place (see infer's batching). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

void mnn_ensemble_init(mnn_ensemble_t *e)
{
    memset(e, 0, sizeof *e);
    e->crit = MNN_CRIT_MAXPROB;
    e->exit_t = 2; /* above any confidence: no early stop */
}

void mnn_ensemble_free(mnn_ensemble_t *e)
{
    mnn_free(e->tmp);
    mnn_free(e->xsub);
    free(e->pbuf);
    free(e->idx);
    e->tmp = e->xsub = e->pbuf = NULL;
    e->idx = NULL;
    e->cap = 0;
}

int mnn_ensemble_set(mnn_ensemble_t *e, mnn_model_t *const *m, const float *w, size_t n)
{
    if (n == 0 || n > MNN_ENSEMBLE_MAX)
        return MNN_EINVAL;
    double sum = 0;
    for (size_t j = 0; j < n; j++) {
        if (w && !(w[j] >= 0))
            return MNN_EINVAL;
        sum += w ? w[j] : 1;
    }
    if (!(sum > 0))
        return MNN_EINVAL;
    for (size_t j = 0; j < n; j++) {
        const mnn_spec_t *a = &m[0]->spec, *b = &m[j]->spec;
        if (b->input != a->input || b->outputs != a->outputs || b->loss != a->loss)
            return MNN_ESHAPE;
        e->m[j] = m[j];
        e->w[j] = (float)((w ? w[j] : 1) / sum);
    }
    e->n = n;
    return 0;
}

int mnn_ensemble_reserve(mnn_ensemble_t *e, size_t batch)
{
    if (!e->n)
        return MNN_EINVAL;
    const size_t C = e->m[0]->spec.input, K = e->m[0]->spec.outputs;
    for (size_t j = 0; j < e->n; j++) {
        int rc = mnn_model_reserve(e->m[j], batch);
        if (rc < 0)
            return rc;
    }
    if (batch <= e->cap && e->pbuf)
        return 0;
    mnn_ensemble_free(e);
    e->tmp = mnn_calloc_aligned(batch, K * sizeof(float));
    e->xsub = mnn_calloc_aligned(batch, C * sizeof(float));
    e->pbuf = calloc(K, sizeof(float));
    e->idx = calloc(batch, sizeof(size_t));
    if (!e->tmp || !e->xsub || !e->pbuf || !e->idx) {
        mnn_ensemble_free(e);
        return MNN_ENOMEM;
    }
    e->cap = batch;
    return 0;
}

/* Members in order, each on the records still undecided. */
static int predict_anytime(mnn_ensemble_t *e, const float *x, size_t B, float *out,
                           uint8_t *stage)
{
    const size_t C = e->m[0]->spec.input, K = e->m[0]->spec.outputs;
    size_t nact = B;
    double wsum = 0;
    memset(out, 0, B * K * sizeof(float));
    for (size_t i = 0; i < B; i++)
        e->idx[i] = i;
    for (size_t j = 0; j < e->n && nact; j++) {
        const float *xs = x;
        if (nact < B) {
            for (size_t a = 0; a < nact; a++)
                memcpy(e->xsub + a * C, x + e->idx[a] * C, C * sizeof(float));
            xs = e->xsub;
        }
        int rc = mnn_model_predict(e->m[j], xs, nact, e->tmp);
        if (rc < 0)
            return rc;
        wsum += e->w[j];
        size_t keep = 0;
        for (size_t a = 0; a < nact; a++) {
            size_t r = e->idx[a];
            float *o = out + r * K;
            for (size_t k = 0; k < K; k++) {
                o[k] += e->w[j] * e->tmp[a * K + k];
                e->pbuf[k] = (float)(o[k] / wsum);
            }
            if (j + 1 == e->n || mnn_confidence(e->pbuf, K, e->crit) >= e->exit_t) {
                memcpy(o, e->pbuf, K * sizeof(float));
                stage[r] = (uint8_t)j;
            } else
                e->idx[keep++] = r;
        }
        nact = keep;
    }
    return 0;
}

int mnn_ensemble_predict(mnn_ensemble_t *e, const float *x, size_t B, float *out,
                         uint8_t *stage)
{
    if (!e->n || B > e->cap)
        return MNN_EINVAL;
    const size_t K = e->m[0]->spec.outputs;
    if (e->n == 1 && e->exits)
        return mnn_model_predict_exit(e->m[0], x, B, out, e->exit_t, e->crit, stage);
    memset(stage, 0, B);
    if (e->n == 1)
        return mnn_model_predict(e->m[0], x, B, out);
    if (e->anytime)
        return predict_anytime(e, x, B, out, stage);
    memset(out, 0, B * K * sizeof(float));
    for (size_t j = 0; j < e->n; j++) {
        int rc = mnn_model_predict(e->m[j], x, B, e->tmp);
        if (rc < 0)
            return rc;
        for (size_t i = 0; i < B * K; i++)
            out[i] += e->w[j] * e->tmp[i];
    }
    memset(stage, (int)(e->n - 1), B);
    return 0;
}
