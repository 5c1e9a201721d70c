/* calib.c - how far to trust a classifier's probabilities: the index of the
 * largest, the expected calibration error (ECE) over equal-width confidence
 * bins, and the softmax temperature that minimises the negative
 * log-likelihood of labelled logits (Guo et al. 2017's temperature
 * scaling), fitted by Newton's method on 1/T. */
#include "internal.h"

#include <math.h>
#include <string.h>

size_t mnn_argmax(const float *p, size_t K)
{
    size_t best = 0;
    for (size_t k = 1; k < K; k++)
        if (p[k] > p[best])
            best = k;
    return best;
}

void mnn_ece_add(mnn_ece_t *e, double conf, int hit)
{
    int bin = (int)(conf * MNN_ECE_BINS);
    bin = bin < 0 ? 0 : bin >= MNN_ECE_BINS ? MNN_ECE_BINS - 1 : bin;
    e->n[bin]++;
    e->hit[bin] += hit != 0;
    e->conf[bin] += conf;
    e->total++;
}

double mnn_ece_value(const mnn_ece_t *e)
{
    double ece = 0;
    for (int b = 0; b < MNN_ECE_BINS; b++)
        if (e->n[b])
            ece += fabs((double)e->hit[b] - e->conf[b]);
    return e->total ? ece / (double)e->total : 0;
}

/* NLL of softmax(beta z) over n records, with its first two derivatives in
 * beta; it is convex in beta. */
static double nll_beta(const float *z, const int32_t *y, size_t n, size_t K, double beta,
                       double *g, double *h)
{
    double nll = 0;
    *g = *h = 0;
    for (size_t i = 0; i < n; i++) {
        const float *zi = z + i * K;
        double mx = -INFINITY, s = 0, e1 = 0, e2 = 0;
        for (size_t k = 0; k < K; k++)
            mx = fmax(mx, beta * zi[k]);
        for (size_t k = 0; k < K; k++) {
            double e = exp(beta * zi[k] - mx);
            s += e;
            e1 += e * zi[k];
            e2 += e * zi[k] * zi[k];
        }
        e1 /= s;
        e2 /= s;
        nll += mx + log(s) - beta * zi[y[i]];
        *g += e1 - zi[y[i]];
        *h += e2 - e1 * e1;
    }
    return nll;
}

double mnn_temp_nll(const float *z, const int32_t *y, size_t n, size_t K, double T)
{
    double g, h;
    return nll_beta(z, y, n, K, 1 / T, &g, &h);
}

double mnn_temp_fit(const float *z, const int32_t *y, size_t n, size_t K)
{
    /* Newton's method on beta = 1/T, kept inside a shrinking bracket */
    double lo = 1e-4, hi = 1e4, beta = 1, g, h;
    for (int it = 0; it < 100; it++) {
        nll_beta(z, y, n, K, beta, &g, &h);
        if (g < 0)
            lo = beta;
        else
            hi = beta;
        if (fabs(g) <= 1e-9 * (double)n)
            break;
        double next = h > 0 ? beta - g / h : NAN;
        if (!(next > lo && next < hi))
            next = sqrt(lo * hi);
        if (fabs(next - beta) <= 1e-12 * beta)
            break;
        beta = next;
    }
    return 1 / beta;
}

double mnn_temp_ece(const float *z, const int32_t *y, size_t n, size_t K, double T)
{
    mnn_ece_t e;
    memset(&e, 0, sizeof e);
    for (size_t i = 0; i < n; i++) {
        const float *zi = z + i * K;
        size_t best = mnn_argmax(zi, K);
        double s = 0;
        for (size_t k = 0; k < K; k++)
            s += exp((zi[k] - zi[best]) / T);
        mnn_ece_add(&e, 1 / s, best == (size_t)y[i]);
    }
    return mnn_ece_value(&e);
}
