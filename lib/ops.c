/* ops.c - kernels: dense layers on cblas_sgemm with naive twins, activations,
 * losses.  Shapes follow the llm.c convention: inp (B,C), weight (OC,C),
 * bias (OC), out (B,OC). */
#include "internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* out = inp * weight^T + bias */
void mnn_dense_forward(float *out, const float *inp, const float *weight,
                       const float *bias, size_t B, size_t C, size_t OC)
{
    for (size_t b = 0; b < B; b++)
        memcpy(out + b * OC, bias, OC * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, (int)OC,
                (int)C, 1.0f, inp, (int)C, weight, (int)C, 1.0f, out, (int)OC);
}

void mnn_dense_forward_naive(float *out, const float *inp, const float *weight,
                             const float *bias, size_t B, size_t C, size_t OC)
{
    for (size_t b = 0; b < B; b++)
        for (size_t o = 0; o < OC; o++) {
            float acc = bias[o];
            for (size_t c = 0; c < C; c++)
                acc += inp[b * C + c] * weight[o * C + c];
            out[b * OC + o] = acc;
        }
}

/* dweight = dout^T * inp        (OC,B)x(B,C)
 * dbias   = sum over b of dout
 * dinp    = dout * weight        (B,OC)x(OC,C) */
void mnn_dense_backward(float *dinp, float *dweight, float *dbias,
                        const float *dout, const float *inp,
                        const float *weight, size_t B, size_t C, size_t OC)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)C,
                (int)B, 1.0f, dout, (int)OC, inp, (int)C, 0.0f, dweight,
                (int)C);
    memset(dbias, 0, OC * sizeof(float));
    for (size_t b = 0; b < B; b++) {
        const float *d = dout + b * OC;
        for (size_t o = 0; o < OC; o++)
            dbias[o] += d[o];
    }
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)B, (int)C,
                    (int)OC, 1.0f, dout, (int)OC, weight, (int)C, 0.0f, dinp,
                    (int)C);
}

void mnn_dense_backward_naive(float *dinp, float *dweight, float *dbias,
                              const float *dout, const float *inp,
                              const float *weight, size_t B, size_t C,
                              size_t OC)
{
    for (size_t o = 0; o < OC; o++) {
        float db = 0;
        for (size_t b = 0; b < B; b++)
            db += dout[b * OC + o];
        dbias[o] = db;
        for (size_t c = 0; c < C; c++) {
            float acc = 0;
            for (size_t b = 0; b < B; b++)
                acc += dout[b * OC + o] * inp[b * C + c];
            dweight[o * C + c] = acc;
        }
    }
    if (dinp)
        for (size_t b = 0; b < B; b++)
            for (size_t c = 0; c < C; c++) {
                float acc = 0;
                for (size_t o = 0; o < OC; o++)
                    acc += dout[b * OC + o] * weight[o * C + c];
                dinp[b * C + c] = acc;
            }
}

int mnn_set_threads(size_t n)
{
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    openblas_set_num_threads(n > 1024 ? 1024 : (int)n);
    return 0;
#else
    (void)n;
    return MNN_EINVAL;
#endif
}

size_t mnn_get_threads(void)
{
#ifdef HAVE_OPENBLAS_GET_NUM_THREADS
    int n = openblas_get_num_threads();
    return n > 0 ? (size_t)n : 1;
#else
    return 1;
#endif
}

const char *mnn_act_name(mnn_act_t a)
{
    switch (a) {
    case MNN_ACT_RELU: return "relu";
    case MNN_ACT_TANH: return "tanh";
    case MNN_ACT_SIGMOID: return "sigmoid";
    default: return "none";
    }
}

/* In-place kernels: one pointer each, or restrict, so that they vectorize. */
static void relu_fwd(float *restrict y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = y[i] > 0 ? y[i] : 0.0f;
}

static void relu_bwd(float *restrict d, const float *restrict y, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = d[i];
        d[i] = y[i] > 0 ? g : 0.0f;
    }
}

static void tanh_bwd(float *restrict d, const float *restrict y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] *= 1.0f - y[i] * y[i];
}

static void sigmoid_bwd(float *restrict d, const float *restrict y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] *= y[i] * (1.0f - y[i]);
}

void mnn_act_forward(mnn_act_t a, float *y, const float *x, size_t n)
{
    if (y != x)
        memmove(y, x, n * sizeof(float));
    switch (a) {
    case MNN_ACT_RELU:
        relu_fwd(y, n);
        break;
    case MNN_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            y[i] = tanhf(y[i]);
        break;
    case MNN_ACT_SIGMOID:
        for (size_t i = 0; i < n; i++)
            y[i] = 1.0f / (1.0f + expf(-y[i]));
        break;
    default:
        break;
    }
}

/* relu: dx = dy * [y > 0]; tanh: dx = dy * (1 - y^2);
 * sigmoid: dx = dy * y * (1 - y) */
void mnn_act_backward(mnn_act_t a, float *dx, const float *y, const float *dy,
                      size_t n)
{
    if (dx != dy)
        memmove(dx, dy, n * sizeof(float));
    switch (a) {
    case MNN_ACT_RELU:
        relu_bwd(dx, y, n);
        break;
    case MNN_ACT_TANH:
        tanh_bwd(dx, y, n);
        break;
    case MNN_ACT_SIGMOID:
        sigmoid_bwd(dx, y, n);
        break;
    default:
        break;
    }
}

void mnn_softmax(float *probs, const float *logits, size_t B, size_t K)
{
    for (size_t b = 0; b < B; b++) {
        const float *z = logits + b * K;
        float *p = probs + b * K;
        float mx = z[0], sum = 0;
        for (size_t k = 1; k < K; k++)
            if (z[k] > mx)
                mx = z[k];
        for (size_t k = 0; k < K; k++) {
            p[k] = expf(z[k] - mx);
            sum += p[k];
        }
        float inv = 1.0f / sum;
        for (size_t k = 0; k < K; k++)
            p[k] *= inv;
    }
}

float mnn_confidence(const float *p, size_t K, mnn_crit_t c)
{
    if (c == MNN_CRIT_ENTROPY) {
        /* 1 - H(p)/log K, in double; rounding may leave H a hair past log K */
        if (K < 2)
            return 1.0f;
        double h = 0;
        for (size_t k = 0; k < K; k++)
            if (p[k] > 0)
                h -= (double)p[k] * log((double)p[k]);
        double conf = 1.0 - h / log((double)K);
        return (float)(conf < 0 ? 0 : conf > 1 ? 1 : conf);
    }
    float first = K ? p[0] : 0, second = 0;
    for (size_t k = 1; k < K; k++)
        if (p[k] > first) {
            second = first;
            first = p[k];
        } else if (p[k] > second)
            second = p[k];
    return c == MNN_CRIT_MARGIN ? first - second : first;
}

static const char *const crit_names[] = {"maxprob", "margin", "entropy"};

int mnn_crit_parse(const char *name, mnn_crit_t *c)
{
    for (size_t i = 0; i < sizeof crit_names / sizeof crit_names[0]; i++)
        if (!strcmp(name, crit_names[i])) {
            *c = (mnn_crit_t)i;
            return 0;
        }
    return MNN_EINVAL;
}

const char *mnn_crit_name(mnn_crit_t c)
{
    return (unsigned)c < sizeof crit_names / sizeof crit_names[0] ? crit_names[c] : "?";
}

/* loss_b = logsumexp(z) - z[y];  dz = (softmax(z) - onehot(y)) * scale */
double mnn_softmax_xent(float *dlogits, float *probs, const float *logits,
                        const int32_t *labels, size_t B, size_t K,
                        float grad_scale)
{
    double total = 0;
    for (size_t b = 0; b < B; b++) {
        const float *z = logits + b * K;
        float mx = z[0];
        double sum = 0;
        for (size_t k = 1; k < K; k++)
            if (z[k] > mx)
                mx = z[k];
        for (size_t k = 0; k < K; k++)
            sum += exp((double)z[k] - mx);
        size_t y = (size_t)labels[b];
        total += log(sum) + mx - z[y];
        float inv = (float)(1.0 / sum);
        for (size_t k = 0; k < K; k++) {
            float p = expf(z[k] - mx) * inv;
            if (probs)
                probs[b * K + k] = p;
            if (dlogits)
                dlogits[b * K + k] = (p - (k == y ? 1.0f : 0.0f)) * grad_scale;
        }
    }
    return total;
}

double mnn_mse(float *dout, const float *out, const float *target, size_t B,
               size_t K, float grad_scale)
{
    double total = 0;
    for (size_t i = 0; i < B * K; i++) {
        float e = out[i] - target[i];
        total += 0.5 * (double)e * e;
        if (dout)
            dout[i] = e * grad_scale;
    }
    return total;
}
