/* model.c - a stack of dense layers over one flat parameter array (llm.c
 * style): layer i's weight (units_i, fan_in_i) then its bias (units_i). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int mnn_model_init(mnn_model_t *m, const mnn_spec_t *s)
{
    memset(m, 0, sizeof *m);
    int rc = mnn_spec_copy(&m->spec, s);
    if (rc < 0)
        return rc;
    size_t L = s->nlayers, off = 0, fan = s->input;
    m->w_off = calloc(L, sizeof(size_t));
    m->b_off = calloc(L, sizeof(size_t));
    m->fan_in = calloc(L, sizeof(size_t));
    m->acts = calloc(L, sizeof(float *));
    if (!m->w_off || !m->b_off || !m->fan_in || !m->acts)
        goto nomem;
    for (size_t i = 0; i < L; i++) {
        size_t units = s->layers[i].units, nw;
        if (mnn_size_mul(units, fan, &nw) < 0 || nw > SIZE_MAX / 8 - off ||
            units > SIZE_MAX / 8 - off - nw) {
            mnn_model_free(m);
            return MNN_EOVERFLOW;
        }
        m->fan_in[i] = fan;
        m->w_off[i] = off;
        off += nw;
        m->b_off[i] = off;
        off += units;
        fan = units;
    }
    m->nparams = off;
    m->params = mnn_calloc_aligned(off, sizeof(float));
    if (!m->params)
        goto nomem;
    if (s->normalize == MNN_NORM_RUNNING) {
        m->norm_mean = calloc(s->input, sizeof(double));
        m->norm_m2 = calloc(s->input, sizeof(double));
        if (!m->norm_mean || !m->norm_m2)
            goto nomem;
    }
    return 0;
nomem:
    mnn_model_free(m);
    return MNN_ENOMEM;
}

void mnn_model_init_weights(mnn_model_t *m, mnn_rng_t *rng)
{
    for (size_t i = 0; i < m->spec.nlayers; i++) {
        size_t units = m->spec.layers[i].units, fan = m->fan_in[i];
        /* He for relu, Glorot otherwise */
        double std = m->spec.layers[i].act == MNN_ACT_RELU
                         ? sqrt(2.0 / (double)fan)
                         : sqrt(2.0 / (double)(fan + units));
        float *w = m->params + m->w_off[i];
        for (size_t j = 0; j < units * fan; j++)
            w[j] = (float)(std * mnn_rng_normal(rng));
        memset(m->params + m->b_off[i], 0, units * sizeof(float));
    }
}

static void free_workspace(mnn_model_t *m)
{
    mnn_free(m->x0);
    if (m->acts)
        for (size_t i = 0; i < m->spec.nlayers; i++) {
            mnn_free(m->acts[i]);
            m->acts[i] = NULL;
        }
    mnn_free(m->dbuf[0]);
    mnn_free(m->dbuf[1]);
    mnn_free(m->probs);
    free(m->labels);
    m->x0 = m->dbuf[0] = m->dbuf[1] = m->probs = NULL;
    m->labels = NULL;
    m->cap = 0;
}

void mnn_model_free(mnn_model_t *m)
{
    free_workspace(m);
    mnn_free(m->params);
    mnn_free(m->grads);
    free(m->w_off);
    free(m->b_off);
    free(m->fan_in);
    free(m->acts);
    free(m->norm_mean);
    free(m->norm_m2);
    mnn_spec_free(&m->spec);
    memset(m, 0, sizeof *m);
}

int mnn_model_copy_state(mnn_model_t *dst, const mnn_model_t *src)
{
    if (dst->nparams != src->nparams || !dst->norm_mean != !src->norm_mean)
        return MNN_ESHAPE;
    memcpy(dst->params, src->params, src->nparams * sizeof(float));
    if (src->norm_mean) {
        memcpy(dst->norm_mean, src->norm_mean, src->spec.input * sizeof(double));
        memcpy(dst->norm_m2, src->norm_m2, src->spec.input * sizeof(double));
    }
    dst->norm_count = src->norm_count;
    return 0;
}

int mnn_model_reserve(mnn_model_t *m, size_t n)
{
    if (n <= m->cap)
        return 0;
    free_workspace(m);
    size_t widest = m->spec.input;
    for (size_t i = 0; i < m->spec.nlayers; i++)
        if (m->spec.layers[i].units > widest)
            widest = m->spec.layers[i].units;
    size_t sz;
    if (mnn_size_mul(n, widest, &sz) < 0)
        return MNN_EOVERFLOW;
    m->x0 = mnn_calloc_aligned(n, m->spec.input * sizeof(float));
    m->dbuf[0] = mnn_calloc_aligned(sz, sizeof(float));
    m->dbuf[1] = mnn_calloc_aligned(sz, sizeof(float));
    m->probs = mnn_calloc_aligned(n, m->spec.outputs * sizeof(float));
    m->labels = calloc(n, sizeof(int32_t));
    int ok = m->x0 && m->dbuf[0] && m->dbuf[1] && m->probs && m->labels;
    for (size_t i = 0; ok && i < m->spec.nlayers; i++) {
        m->acts[i] = mnn_calloc_aligned(n, m->spec.layers[i].units * sizeof(float));
        ok = m->acts[i] != NULL;
    }
    if (!ok) {
        free_workspace(m);
        return MNN_ENOMEM;
    }
    m->cap = n;
    return 0;
}

/* x0 = x * input_scale, then (x0 - mean) / std with the statistics of the
 * records seen before this batch.  std of a constant feature counts as 1. */
static void preprocess(mnn_model_t *m, const float *x, size_t B)
{
    const size_t C = m->spec.input;
    const float scale = m->spec.input_scale;
    for (size_t i = 0; i < B * C; i++)
        m->x0[i] = x[i] * scale;
    if (!m->norm_mean || m->norm_count == 0)
        return;
    const double n = (double)m->norm_count;
    for (size_t c = 0; c < C; c++) {
        double var = m->norm_m2[c] / n;
        float mean = (float)m->norm_mean[c];
        float inv = var > 1e-12 ? (float)(1.0 / sqrt(var)) : 1.0f;
        for (size_t b = 0; b < B; b++)
            m->x0[b * C + c] = (m->x0[b * C + c] - mean) * inv;
    }
}

/* Welford's update with the scaled (not normalized) features. */
static void update_norm(mnn_model_t *m, const float *x, size_t B)
{
    const size_t C = m->spec.input;
    const double scale = m->spec.input_scale;
    for (size_t b = 0; b < B; b++) {
        double n = (double)++m->norm_count;
        for (size_t c = 0; c < C; c++) {
            double v = (double)(x[b * C + c] * (float)scale);
            double delta = v - m->norm_mean[c];
            m->norm_mean[c] += delta / n;
            m->norm_m2[c] += delta * (v - m->norm_mean[c]);
        }
    }
}

static void forward(mnn_model_t *m, size_t B)
{
    const float *in = m->x0;
    for (size_t i = 0; i < m->spec.nlayers; i++) {
        size_t units = m->spec.layers[i].units;
        mnn_dense_forward(m->acts[i], in, m->params + m->w_off[i],
                          m->params + m->b_off[i], B, m->fan_in[i], units);
        mnn_act_forward(m->spec.layers[i].act, m->acts[i], m->acts[i], B * units);
        in = m->acts[i];
    }
}

static size_t count_correct(const float *p, const int32_t *labels, size_t B,
                            size_t K)
{
    size_t hits = 0;
    for (size_t b = 0; b < B; b++) {
        size_t best = 0;
        for (size_t k = 1; k < K; k++)
            if (p[b * K + k] > p[b * K + best])
                best = k;
        hits += best == (size_t)labels[b];
    }
    return hits;
}

int mnn_model_train_batch(mnn_model_t *m, mnn_optim_t *o, const float *x,
                          const float *y, size_t B, mnn_batch_stats_t *st)
{
    if (B == 0)
        return 0;
    int rc = mnn_model_reserve(m, B);
    if (rc < 0)
        return rc;
    if (!m->grads && !(m->grads = mnn_calloc_aligned(m->nparams, sizeof(float))))
        return MNN_ENOMEM;
    const size_t L = m->spec.nlayers, K = m->spec.outputs;
    preprocess(m, x, B);
    if (m->norm_mean)
        update_norm(m, x, B);
    forward(m, B);

    float *logits = m->acts[L - 1];
    float *d = m->dbuf[0];
    const float scale = 1.0f / (float)B;
    if (m->spec.loss == MNN_LOSS_XENT) {
        for (size_t b = 0; b < B; b++)
            m->labels[b] = (int32_t)y[b];
        st->loss_sum = mnn_softmax_xent(d, m->probs, logits, m->labels, B, K, scale);
        st->correct = count_correct(m->probs, m->labels, B, K);
    } else {
        st->loss_sum = mnn_mse(d, logits, y, B, K, scale);
        st->correct = 0;
    }

    /* Backward: d holds dL/d(output of layer i); through the activation,
     * then the dense layer, into the other buffer. */
    int cur = 0;
    for (size_t i = L; i-- > 0;) {
        size_t units = m->spec.layers[i].units;
        float *dcur = m->dbuf[cur];
        mnn_act_backward(m->spec.layers[i].act, dcur, m->acts[i], dcur, B * units);
        const float *in = i > 0 ? m->acts[i - 1] : m->x0;
        mnn_dense_backward(i > 0 ? m->dbuf[!cur] : NULL, m->grads + m->w_off[i],
                           m->grads + m->b_off[i], dcur, in,
                           m->params + m->w_off[i], B, m->fan_in[i], units);
        cur = !cur;
    }
    mnn_optim_step(o, m->params, m->grads);
    return 0;
}

int mnn_model_predict(mnn_model_t *m, const float *x, size_t B, float *out)
{
    if (B == 0)
        return 0;
    int rc = mnn_model_reserve(m, B);
    if (rc < 0)
        return rc;
    const size_t L = m->spec.nlayers, K = m->spec.outputs;
    preprocess(m, x, B);
    forward(m, B);
    if (m->spec.loss == MNN_LOSS_XENT)
        mnn_softmax(out, m->acts[L - 1], B, K);
    else
        memcpy(out, m->acts[L - 1], B * K * sizeof(float));
    return 0;
}
