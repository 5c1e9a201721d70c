/* merge.c - combining K models coordinate by coordinate (ckpt-merge):
 * the weighted mean of federated averaging (McMahan et al. 2017), and the
 * coordinate-wise median and trimmed mean, which a few bad inputs cannot
 * move far (Yin et al. 2018).  One tensor at a time, so that a caller
 * streams the models rather than holds them all. */
#include "internal.h"

#include <math.h>
#include <string.h>

static const char *const names[] = {"fedavg", "median", "trimmed-mean"};

int mnn_merge_parse(const char *name, mnn_merge_mode_t *mode)
{
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(name, names[i])) {
            *mode = (mnn_merge_mode_t)i;
            return 0;
        }
    return MNN_EINVAL;
}

const char *mnn_merge_name(mnn_merge_mode_t mode)
{
    return (size_t)mode < sizeof names / sizeof *names ? names[mode] : "?";
}

size_t mnn_merge_trimmed(size_t K, double trim)
{
    return (size_t)floor(trim * (double)K);
}

int mnn_merge_check(const mnn_merge_t *o, const double *w, size_t K, mnn_diag_t *d)
{
    if (K < 1 || K > MNN_MERGE_MAX)
        return mnn_fail(d, MNN_EINVAL, "%zu models to merge: from 1 to %d", K, MNN_MERGE_MAX);
    if (o->mode == MNN_MERGE_TRIMMED) {
        if (!(o->trim >= 0 && o->trim < 0.5))
            return mnn_fail(d, MNN_EINVAL, "trim %g: from 0 to below 0.5", o->trim);
        if (K <= 2 * mnn_merge_trimmed(K, o->trim))
            return mnn_fail(d, MNN_EINVAL, "trim %g of %zu models leaves none", o->trim, K);
    } else if (o->mode != MNN_MERGE_FEDAVG && o->mode != MNN_MERGE_MEDIAN) {
        return mnn_fail(d, MNN_EINVAL, "unknown merge mode %d", (int)o->mode);
    }
    if (o->mode != MNN_MERGE_FEDAVG || !w)
        return 0;
    double sum = 0;
    for (size_t k = 0; k < K; k++) {
        if (!isfinite(w[k]) || w[k] < 0)
            return mnn_fail(d, MNN_EINVAL, "weight %zu is %g: weights are finite and >= 0", k + 1,
                            w[k]);
        sum += w[k];
    }
    if (!(sum > 0) || !isfinite(sum))
        return mnn_fail(d, MNN_EINVAL, "the weights sum to %g: at least one must be above 0", sum);
    return 0;
}

/* Sorts v[0..K) ascending (K is small: insertion sort, no allocation). */
static void sort_small(double *v, size_t K)
{
    for (size_t i = 1; i < K; i++) {
        double x = v[i];
        size_t j = i;
        for (; j > 0 && v[j - 1] > x; j--)
            v[j] = v[j - 1];
        v[j] = x;
    }
}

#define BLOCK 512

/* fedavg, a block of coordinates at a time (the inner loops vectorize):
 * each coordinate's sum still runs over the inputs in the order given. */
static int fedavg(const float *const *x, const double *ws, double sum_w, size_t K, size_t n,
                  float *out, mnn_merge_bad_t *bad, mnn_diag_t *d)
{
    double acc[BLOCK];
    for (size_t j0 = 0; j0 < n; j0 += BLOCK) {
        const size_t m = n - j0 < BLOCK ? n - j0 : BLOCK;
        for (size_t j = 0; j < m; j++)
            acc[j] = 0;
        for (size_t k = 0; k < K; k++) {
            const float *xk = x[k] + j0;
            int finite = 1;
            for (size_t j = 0; j < m; j++)
                finite &= isfinite(xk[j]) != 0;
            if (!finite) {
                /* the first value that is not, by coordinate, then input */
                for (size_t j = 0; j < m; j++)
                    for (size_t i = 0; i < K; i++)
                        if (!isfinite(x[i][j0 + j])) {
                            if (bad)
                                bad->input = i, bad->at = j0 + j;
                            return mnn_fail(d, MNN_EINVAL, "model %zu: value %zu is %g (not "
                                            "finite)", i + 1, j0 + j, x[i][j0 + j]);
                        }
            }
            const double w = ws[k];
            for (size_t j = 0; j < m; j++)
                acc[j] += w * xk[j];
        }
        /* a mean of finite floats with weights >= 0 lies between the
         * smallest and the largest: a float */
        for (size_t j = 0; j < m; j++)
            out[j0 + j] = (float)(acc[j] / sum_w);
    }
    return 0;
}

int mnn_merge_tensor(const mnn_merge_t *o, const float *const *x, const double *w, size_t K,
                     size_t n, float *out, mnn_merge_bad_t *bad, mnn_diag_t *d)
{
    int rc = mnn_merge_check(o, w, K, d);
    if (rc < 0)
        return rc;
    /* fedavg's weights scaled by a power of two (exactly) so that the
     * largest is in [0.5, 1): weights of any size neither overflow nor
     * vanish in the products, and the result is that of the weights given */
    double ws[MNN_MERGE_MAX], sum_w = 0;
    if (o->mode == MNN_MERGE_FEDAVG) {
        double most = 0;
        for (size_t k = 0; k < K; k++)
            if ((w ? w[k] : 1) > most)
                most = w ? w[k] : 1;
        int e;
        (void)frexp(most, &e);
        for (size_t k = 0; k < K; k++)
            sum_w += ws[k] = ldexp(w ? w[k] : 1, -e);
    }
    const size_t cut = o->mode == MNN_MERGE_TRIMMED ? mnn_merge_trimmed(K, o->trim) : 0;
    double v[MNN_MERGE_MAX];
    if (o->mode == MNN_MERGE_FEDAVG)
        return fedavg(x, ws, sum_w, K, n, out, bad, d);
    for (size_t j = 0; j < n; j++) {
        for (size_t k = 0; k < K; k++) {
            v[k] = x[k][j];
            if (!isfinite(v[k])) {
                if (bad)
                    bad->input = k, bad->at = j;
                return mnn_fail(d, MNN_EINVAL, "model %zu: value %zu is %g (not finite)", k + 1,
                                j, v[k]);
            }
        }
        double r = 0;
        sort_small(v, K);
        if (o->mode == MNN_MERGE_MEDIAN) {
            r = K % 2 ? v[K / 2] : (v[K / 2 - 1] + v[K / 2]) / 2;
        } else {
            for (size_t k = cut; k < K - cut; k++)
                r += v[k];
            r /= (double)(K - 2 * cut);
        }
        /* a mean of finite floats with weights >= 0 lies between the
         * smallest and the largest: a float */
        out[j] = (float)r;
    }
    return 0;
}
