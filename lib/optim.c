/* optim.c - SGD with momentum and weight decay, and Adam, over one flat
 * parameter array.  Weight decay is L2: it is added to the gradient. */
#include "internal.h"

#include <math.h>
#include <string.h>

const char *const mnn_opt_names[] = {"sgd", "adam", NULL};

int mnn_opt_parse(const char *name, mnn_opt_type_t *t)
{
    for (int i = 0; mnn_opt_names[i]; i++)
        if (!strcmp(name, mnn_opt_names[i])) {
            *t = (mnn_opt_type_t)i;
            return 0;
        }
    return MNN_EINVAL;
}

const char *mnn_opt_name(mnn_opt_type_t t)
{
    return (unsigned)t <= MNN_OPT_ADAM ? mnn_opt_names[t] : "?";
}

unsigned mnn_opt_buffers(const mnn_opt_spec_t *spec)
{
    return 1u + (spec->type == MNN_OPT_ADAM) + (spec->average > 0) + (spec->prox > 0);
}

int mnn_optim_init(mnn_optim_t *o, const mnn_opt_spec_t *spec, size_t n)
{
    o->spec = *spec;
    o->n = n;
    o->step = 0;
    o->m2 = o->avg = o->anchor = NULL;
    o->m1 = mnn_calloc_aligned(n, sizeof(float));
    if (spec->type == MNN_OPT_ADAM)
        o->m2 = mnn_calloc_aligned(n, sizeof(float));
    if (spec->average > 0)
        o->avg = mnn_calloc_aligned(n, sizeof(float));
    if (spec->prox > 0)
        o->anchor = mnn_calloc_aligned(n, sizeof(float));
    if (!o->m1 || (spec->type == MNN_OPT_ADAM && !o->m2) || (spec->average > 0 && !o->avg) ||
        (spec->prox > 0 && !o->anchor)) {
        mnn_optim_free(o);
        return MNN_ENOMEM;
    }
    return 0;
}

void mnn_optim_free(mnn_optim_t *o)
{
    mnn_free(o->m1);
    mnn_free(o->m2);
    mnn_free(o->avg);
    mnn_free(o->anchor);
    o->m1 = o->m2 = o->avg = o->anchor = NULL;
}

int mnn_optim_copy_state(mnn_optim_t *dst, const mnn_optim_t *src)
{
    if (dst->n != src->n || !dst->m2 != !src->m2 || !dst->avg != !src->avg ||
        !dst->anchor != !src->anchor)
        return MNN_ESHAPE;
    memcpy(dst->m1, src->m1, src->n * sizeof(float));
    if (src->m2)
        memcpy(dst->m2, src->m2, src->n * sizeof(float));
    if (src->avg)
        memcpy(dst->avg, src->avg, src->n * sizeof(float));
    if (src->anchor)
        memcpy(dst->anchor, src->anchor, src->n * sizeof(float));
    dst->step = src->step;
    dst->spec = src->spec;
    return 0;
}

int mnn_optim_anchor(mnn_optim_t *o, const float *params)
{
    if (!(o->spec.prox > 0)) {
        mnn_free(o->anchor);
        o->anchor = NULL;
        return 0;
    }
    if (!o->anchor && !(o->anchor = mnn_calloc_aligned(o->n, sizeof(float))))
        return MNN_ENOMEM;
    memcpy(o->anchor, params, o->n * sizeof(float));
    return 0;
}

const float *mnn_optim_weights(const mnn_optim_t *o, const float *params)
{
    return o && o->avg ? o->avg : params;
}

/* avg = d*avg + (1-d)*w with d = min(average, (1+t)/(10+t)): the average
 * follows the weights closely at first, so a short run is not dominated by
 * the random initialisation (TensorFlow's ExponentialMovingAverage). */
static void update_average(mnn_optim_t *o, const float *restrict w)
{
    float *restrict avg = o->avg;
    if (o->step == 1) {
        memcpy(avg, w, o->n * sizeof(float));
        return;
    }
    double ramp = (1.0 + (double)o->step) / (10.0 + (double)o->step);
    const float d = (float)(ramp < o->spec.average ? ramp : o->spec.average);
    for (size_t i = 0; i < o->n; i++)
        avg[i] = d * avg[i] + (1.0f - d) * w[i];
}

float mnn_optim_lr(const mnn_optim_t *o)
{
    return (float)(o->spec.lr / (1.0 + (double)o->spec.lr_decay * (double)o->step));
}

/* The update of every parameter; with prox, its gradient
 * prox * (w - anchor) joins g (prox is a constant where this is inlined:
 * the loop without it is the one it was). */
static inline void update(mnn_optim_t *o, float *restrict w, const float *restrict g,
                          const float lr, const int prox)
{
    const float wd = o->spec.weight_decay, pm = o->spec.prox;
    const size_t n = o->n;
    const float *restrict a = o->anchor;
    float *restrict m1 = o->m1;
    if (o->spec.type == MNN_OPT_SGD) {
        /* v = mu*v + (g + wd*w);  w -= lr*v */
        const float mu = o->spec.momentum;
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] + wd * w[i];
            if (prox)
                gi += pm * (w[i] - a[i]);
            float v = mu * m1[i] + gi;
            m1[i] = v;
            w[i] -= lr * v;
        }
    } else {
        /* Adam: m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
         * w -= lr * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) */
        const float b1 = o->spec.beta1, b2 = o->spec.beta2, eps = o->spec.eps;
        const float c1 = (float)(1.0 / (1.0 - pow(b1, (double)o->step)));
        const float c2 = (float)(1.0 / (1.0 - pow(b2, (double)o->step)));
        float *restrict m2 = o->m2;
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] + wd * w[i];
            if (prox)
                gi += pm * (w[i] - a[i]);
            float m = b1 * m1[i] + (1.0f - b1) * gi;
            float v = b2 * m2[i] + (1.0f - b2) * gi * gi;
            m1[i] = m;
            m2[i] = v;
            w[i] -= lr * (m * c1) / (sqrtf(v * c2) + eps);
        }
    }
}

void mnn_optim_step(mnn_optim_t *o, float *restrict w, const float *restrict g)
{
    const float lr = mnn_optim_lr(o); /* the rate of this update: before the count */
    o->step++;
    if (o->anchor && o->spec.prox > 0)
        update(o, w, g, lr, 1);
    else
        update(o, w, g, lr, 0);
    if (o->avg)
        update_average(o, w);
}
