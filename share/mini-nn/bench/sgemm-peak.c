/* sgemm-peak - what this machine's BLAS can do, for the training benchmark:
 * the single-thread sgemm rate on a large square product, and the rate of
 * the GEMMs one training step of an MLP performs, measured alone.
 *
 *   sgemm-peak [BATCH IN H1 H2 ... OUT]      (default 64 784 256 128 10)
 *
 * Prints "peak_gflops X", "flops_per_record Y" and "gemm_only_records_per_s Z".
 * Run it with OPENBLAS_NUM_THREADS=1 for a single-core figure. */
#include <config.h>

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static float *randv(size_t n)
{
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "sgemm-peak: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(rand() % 1000) / 1000.0f - 0.5f;
    return p;
}

/* median of 5 timings of f over `reps` calls */
static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    size_t dims[32] = {64, 784, 256, 128, 10}, nd = 5;
    if (argc > 1) {
        nd = (size_t)argc - 1;
        if (nd < 3 || nd > 32) {
            fprintf(stderr, "usage: sgemm-peak [BATCH IN HIDDEN... OUT]\n");
            return 2;
        }
        for (size_t i = 0; i < nd; i++)
            dims[i] = strtoul(argv[i + 1], NULL, 10);
    }
    /* 1. large square product */
    const int n = 1024;
    float *a = randv((size_t)n * n), *b = randv((size_t)n * n), *c = randv((size_t)n * n);
    double t[5];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        for (int k = 0; k < 3; k++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        t[r] = (now() - t0) / 3;
    }
    qsort(t, 5, sizeof t[0], cmp);
    double peak = 2.0 * n * n * n / t[2] / 1e9;
    free(a), free(b), free(c);

    /* 2. one training step: forward, weight gradient, input gradient but
     * for the first layer */
    size_t B = dims[0], L = nd - 2;
    float *x[32], *w[32], *dw[32], *dx[32];
    double flops = 0;
    for (size_t i = 0; i <= L; i++)
        x[i] = randv(B * dims[i + 1]), dx[i] = randv(B * dims[i + 1]);
    for (size_t i = 0; i < L; i++) {
        size_t in = dims[i + 1], out = dims[i + 2];
        w[i] = randv(in * out), dw[i] = randv(in * out);
        flops += 2.0 * in * out * (i == 0 ? 2 : 3);
    }
    for (int r = 0; r < 5; r++) {
        int steps = 200;
        double t0 = now();
        for (int s = 0; s < steps; s++)
            for (size_t i = 0; i < L; i++) {
                int in = (int)dims[i + 1], out = (int)dims[i + 2];
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, out, in, 1,
                            x[i], in, w[i], in, 0, x[i + 1], out);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, (int)B, 1,
                            dx[i + 1], out, x[i], in, 0, dw[i], in);
                if (i > 0)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)B, in, out, 1,
                                dx[i + 1], out, w[i], in, 0, dx[i], in);
            }
        t[r] = (now() - t0) / steps;
    }
    qsort(t, 5, sizeof t[0], cmp);
    printf("peak_gflops %.1f\n", peak);
    printf("flops_per_record %.0f\n", flops);
    printf("bound_records_per_s %.0f\n", peak * 1e9 / flops);
    printf("gemm_only_records_per_s %.0f\n", (double)B / t[2]);
    return 0;
}
