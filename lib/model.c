/* model.c - a stack of dense layers over one flat parameter array (llm.c
 * style): layer i's weight (units_i, fan_in_i) then its bias (units_i);
 * after all the layers, exit head j's weight (outputs, units_{exits[j]})
 * then its bias (outputs). */
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
    size_t L = s->nlayers, E = s->nexits, off = 0, fan = s->input;
    m->w_off = calloc(L, sizeof(size_t));
    m->b_off = calloc(L, sizeof(size_t));
    m->fan_in = calloc(L, sizeof(size_t));
    m->acts = calloc(L, sizeof(float *));
    m->ew_off = calloc(E ? E : 1, sizeof(size_t));
    m->eb_off = calloc(E ? E : 1, sizeof(size_t));
    if (!m->w_off || !m->b_off || !m->fan_in || !m->acts || !m->ew_off || !m->eb_off)
        goto nomem;
    /* layers, then exit heads: one table of (weight, bias) sizes */
    for (size_t i = 0; i < L + E; i++) {
        size_t units = i < L ? s->layers[i].units : s->outputs, nw;
        if (i >= L)
            fan = s->layers[s->exits[i - L]].units;
        if (mnn_size_mul(units, fan, &nw) < 0 || nw > SIZE_MAX / 8 - off ||
            units > SIZE_MAX / 8 - off - nw) {
            mnn_model_free(m);
            return MNN_EOVERFLOW;
        }
        if (i < L)
            m->fan_in[i] = fan;
        *(i < L ? &m->w_off[i] : &m->ew_off[i - L]) = off;
        off += nw;
        *(i < L ? &m->b_off[i] : &m->eb_off[i - L]) = off;
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
    /* exit heads are linear layers into logits, like the last one */
    for (size_t j = 0; j < m->spec.nexits; j++) {
        size_t K = m->spec.outputs, fan = m->spec.layers[m->spec.exits[j]].units;
        double std = sqrt(2.0 / (double)(fan + K));
        float *w = m->params + m->ew_off[j];
        for (size_t i = 0; i < K * fan; i++)
            w[i] = (float)(std * mnn_rng_normal(rng));
        memset(m->params + m->eb_off[j], 0, K * sizeof(float));
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
    mnn_free(m->edlogits);
    free(m->labels);
    free(m->rows);
    m->x0 = m->dbuf[0] = m->dbuf[1] = m->probs = m->edlogits = NULL;
    m->labels = NULL;
    m->rows = NULL;
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
    free(m->ew_off);
    free(m->eb_off);
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
    if (ok && m->spec.nexits > 0) {
        m->edlogits = mnn_calloc_aligned(n, m->spec.outputs * sizeof(float));
        m->rows = calloc(n, sizeof(size_t));
        ok = m->edlogits && m->rows;
    }
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
    for (size_t b = 0; b < B; b++)
        hits += mnn_argmax(p + b * K, K) == (size_t)labels[b];
    return hits;
}

/* Exit head j on the B rows of layer exits[j]'s output: the forward pass,
 * its weighted cross-entropy (labels in m->labels; averaged over denom
 * records), the gradients of its weight and bias into g, and dL/d(its
 * input) added into d.  tmp (B, units) is scratch. */
static void exit_backward(mnn_model_t *m, size_t j, float *g, float *d, float *tmp, size_t B,
                          size_t denom)
{
    const size_t K = m->spec.outputs, e = m->spec.exits[j];
    const size_t C = m->spec.layers[e].units;
    const float *in = m->acts[e], *w = m->params + m->ew_off[j];
    const float wj = m->spec.exit_weights[j]; /* mnn_spec_copy filled them */
    /* the final head's probabilities are counted already: m->probs is free */
    float *logits = m->probs, *dz = m->edlogits;
    mnn_dense_forward(logits, in, w, m->params + m->eb_off[j], B, C, K);
    mnn_softmax_xent(dz, NULL, logits, m->labels, B, K, wj / (float)denom);
    /* dW = dz^T * in, db = sum dz, tmp = dz * W;  d += tmp */
    mnn_dense_backward(tmp, g + m->ew_off[j], g + m->eb_off[j], dz, in, w, B, C, K);
    for (size_t i = 0; i < B * C; i++)
        d[i] += tmp[i];
}

/* Forward and backward over x0 (preprocessed): the gradient of the loss
 * summed over the B records and divided by denom, into g. */
static void backprop(mnn_model_t *m, const float *y, size_t B, size_t denom, float *g,
                     mnn_batch_stats_t *st)
{
    const size_t L = m->spec.nlayers, K = m->spec.outputs;
    forward(m, B);

    float *logits = m->acts[L - 1];
    float *d = m->dbuf[0];
    const float scale = 1.0f / (float)denom;
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
     * then the dense layer, into the other buffer.  An exit head after
     * layer i adds its input gradient to d first. */
    int cur = 0;
    size_t j = m->spec.nexits;
    for (size_t i = L; i-- > 0;) {
        size_t units = m->spec.layers[i].units;
        float *dcur = m->dbuf[cur];
        if (j > 0 && m->spec.exits[j - 1] == i)
            exit_backward(m, --j, g, dcur, m->dbuf[!cur], B, denom);
        mnn_act_backward(m->spec.layers[i].act, dcur, m->acts[i], dcur, B * units);
        const float *in = i > 0 ? m->acts[i - 1] : m->x0;
        mnn_dense_backward(i > 0 ? m->dbuf[!cur] : NULL, g + m->w_off[i], g + m->b_off[i],
                           dcur, in, m->params + m->w_off[i], B, m->fan_in[i], units);
        cur = !cur;
    }
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
    preprocess(m, x, B);
    if (m->norm_mean)
        update_norm(m, x, B);
    backprop(m, y, B, B, m->grads, st);
    mnn_optim_step(o, m->params, m->grads);
    return 0;
}

int mnn_model_gradient(mnn_model_t *m, const float *x, const float *y, size_t B,
                       size_t denom, float *grads, mnn_batch_stats_t *st)
{
    st->loss_sum = 0;
    st->correct = 0;
    if (denom < B || m->norm_mean)
        return MNN_EINVAL;
    if (B == 0) {
        memset(grads, 0, m->nparams * sizeof(float));
        return 0;
    }
    int rc = mnn_model_reserve(m, B);
    if (rc < 0)
        return rc;
    preprocess(m, x, B);
    backprop(m, y, B, denom, grads, st);
    return 0;
}

/* probs = softmax(z / T) for n rows; z (workspace) is scaled in place.
 * T == 1 is mnn_softmax alone, bit for bit. */
static void softmax_temp(float *probs, float *z, size_t n, size_t K, float T)
{
    if (T != 1.0f)
        for (size_t i = 0; i < n * K; i++)
            z[i] /= T;
    mnn_softmax(probs, z, n, K);
}

int mnn_model_logits(mnn_model_t *m, const float *x, size_t B, float *out)
{
    if (B == 0)
        return 0;
    int rc = mnn_model_reserve(m, B);
    if (rc < 0)
        return rc;
    preprocess(m, x, B);
    forward(m, B);
    memcpy(out, m->acts[m->spec.nlayers - 1], B * m->spec.outputs * sizeof(float));
    return 0;
}

int mnn_model_predict(mnn_model_t *m, const float *x, size_t B, float *out)
{
    int rc = mnn_model_logits(m, x, B, out);
    if (rc == 0 && B > 0 && m->spec.loss == MNN_LOSS_XENT)
        softmax_temp(out, out, B, m->spec.outputs, m->spec.temperature);
    return rc;
}

/* Early exits, batch-wise: after layer exits[j], head j runs on the n rows
 * still active; the confident ones are answered and the others packed to
 * the front of the layer's output (in order, rows[] remembering whose they
 * are), so the layers after it run on fewer rows. */
int mnn_model_predict_exit(mnn_model_t *m, const float *x, size_t B, float *out,
                           float threshold, mnn_crit_t crit, uint8_t *taken)
{
    const size_t L = m->spec.nlayers, K = m->spec.outputs, E = m->spec.nexits;
    if (E == 0) {
        memset(taken, 0, B);
        return mnn_model_predict(m, x, B, out);
    }
    if (B == 0)
        return 0;
    int rc = mnn_model_reserve(m, B);
    if (rc < 0)
        return rc;
    const float T = m->spec.temperature;
    size_t n = B, j = 0;
    for (size_t b = 0; b < B; b++)
        m->rows[b] = b;
    preprocess(m, x, B);
    const float *in = m->x0;
    for (size_t i = 0; i < L; i++) {
        size_t units = m->spec.layers[i].units;
        mnn_dense_forward(m->acts[i], in, m->params + m->w_off[i], m->params + m->b_off[i], n,
                          m->fan_in[i], units);
        mnn_act_forward(m->spec.layers[i].act, m->acts[i], m->acts[i], n * units);
        in = m->acts[i];
        if (j == E || m->spec.exits[j] != i)
            continue;
        float *p = m->probs, *a = m->acts[i];
        mnn_dense_forward(p, a, m->params + m->ew_off[j], m->params + m->eb_off[j], n, units,
                          K);
        softmax_temp(p, p, n, K, T);
        size_t keep = 0;
        for (size_t r = 0; r < n; r++) {
            size_t b = m->rows[r];
            if (mnn_confidence(p + r * K, K, crit) >= threshold) {
                memcpy(out + b * K, p + r * K, K * sizeof(float));
                taken[b] = (uint8_t)j;
                continue;
            }
            if (keep != r)
                memcpy(a + keep * units, a + r * units, units * sizeof(float));
            m->rows[keep++] = b;
        }
        n = keep;
        j++;
        if (n == 0)
            return 0;
    }
    float *p = m->probs;
    softmax_temp(p, m->acts[L - 1], n, K, T);
    for (size_t r = 0; r < n; r++) {
        memcpy(out + m->rows[r] * K, p + r * K, K * sizeof(float));
        taken[m->rows[r]] = (uint8_t)E;
    }
    return 0;
}
