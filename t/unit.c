/* unit.c - unit tests of libmini-nn through its public API, as TAP.
 *
 * Every `check` prints one "ok N - what" or "not ok N - what" line; checks
 * inside loops are aggregated into one line with the first failures shown as
 * "# " diagnostics.  The plan "1..N" comes last (a trailing plan is valid
 * TAP).  The program exits 0: the TAP driver judges by the lines.
 *
 * Test data comes from a local splitmix64 generator, not from the library's
 * rng, so a broken mnn_rng cannot hide other failures.  Scratch files live
 * in a mkdtemp directory under /tmp, removed at the end. */
#include <config.h>

#include "mini-nn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <ftw.h>
#include <limits.h>
#include <malloc.h>
#include <sched.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PRINTF_LIKE(a, b) __attribute__((format(printf, a, b)))
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---- TAP harness ----------------------------------------------------------- */

static unsigned n_tests, n_failed;

static void diag(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void diag(const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fputs("# ", stdout);
    for (const char *p = buf; *p; p++) {
        putchar(*p);
        if (*p == '\n' && p[1])
            fputs("# ", stdout);
    }
    putchar('\n');
}

static int check(int cond, const char *fmt, ...) PRINTF_LIKE(2, 3);
static int check(int cond, const char *fmt, ...)
{
    va_list ap;
    n_tests++;
    if (!cond)
        n_failed++;
    printf("%sok %u - ", cond ? "" : "not ", n_tests);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    return cond;
}

/* Counts failures inside a loop; shows the first few. */
typedef struct {
    size_t bad, shown;
} fails_t;

static void fail_at(fails_t *f, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void fail_at(fails_t *f, const char *fmt, ...)
{
    f->bad++;
    if (f->shown >= 5)
        return;
    f->shown++;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    diag("%s", buf);
}

static int close_to(double a, double b, double rel, double abs_tol)
{
    return fabs(a - b) <= abs_tol + rel * fmax(fabs(a), fabs(b));
}

static int contains(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* ---- test data ----------------------------------------------------------- */

static uint64_t trng_state = 0x5eed1234abcdULL;

static uint64_t trng(void)
{
    uint64_t z = (trng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double tunif(void) { return (double)(trng() >> 11) * 0x1.0p-53; }

/* uniform in [-a, a) */
static float tsym(double a) { return (float)((2.0 * tunif() - 1.0) * a); }

static void fill_sym(float *x, size_t n, double a)
{
    for (size_t i = 0; i < n; i++)
        x[i] = tsym(a);
}

static float *xalloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(99);
    }
    return p;
}

/* ---- scratch directory ------------------------------------------------------ */

static char tmpdir[64];

static char *tpath(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", tmpdir, name);
    return buf;
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (type == FTW_DP)
        return rmdir(path);
    return unlink(path);
}

static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(p, 1, n, f);
    int rc = fclose(f);
    return w == n && rc == 0 ? 0 : -1;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = n;
    }
    return buf;
}

/* ---- sizes and allocation ----------------------------------------------- */

static void test_sizes(void)
{
    size_t r = 12345;
    const size_t half = (size_t)1 << (sizeof(size_t) * 4);
    check(mnn_size_mul(3, 5, &r) == 0 && r == 15, "mnn_size_mul: 3*5 = 15");
    r = 1;
    check(mnn_size_mul(0, SIZE_MAX, &r) == 0 && r == 0, "mnn_size_mul: 0*SIZE_MAX = 0");
    check(mnn_size_mul(SIZE_MAX, 1, &r) == 0 && r == SIZE_MAX,
          "mnn_size_mul: SIZE_MAX*1 = SIZE_MAX");
    check(mnn_size_mul(half - 1, half + 1, &r) == 0 && r == SIZE_MAX,
          "mnn_size_mul: (2^k-1)*(2^k+1) = SIZE_MAX fits");
    check(mnn_size_mul(SIZE_MAX / 2 + 1, 2, &r) == MNN_EOVERFLOW,
          "mnn_size_mul: (SIZE_MAX/2+1)*2 is MNN_EOVERFLOW");
    check(mnn_size_mul(half, half, &r) == MNN_EOVERFLOW,
          "mnn_size_mul: 2^k*2^k (k = half the bits) is MNN_EOVERFLOW");
    check(mnn_size_mul(3, SIZE_MAX / 3 + 1, &r) == MNN_EOVERFLOW,
          "mnn_size_mul: 3*(SIZE_MAX/3+1) is MNN_EOVERFLOW");

    static const size_t counts[] = {1, 3, 17, 64, 100, 4097, 2200000}; /* the last: huge pages */
    static const size_t sizes[] = {1, 4, 8, 12};
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(counts); i++)
        for (size_t j = 0; j < NELEM(sizes); j++) {
            unsigned char *p = mnn_calloc_aligned(counts[i], sizes[j]);
            size_t n = counts[i] * sizes[j];
            if (!p) {
                fail_at(&f, "mnn_calloc_aligned(%zu, %zu) = NULL", counts[i], sizes[j]);
                continue;
            }
            if ((uintptr_t)p % 64 != 0)
                fail_at(&f, "mnn_calloc_aligned(%zu, %zu) = %p not 64-byte aligned",
                        counts[i], sizes[j], (void *)p);
            for (size_t k = 0; k < n; k++)
                if (p[k] != 0) {
                    fail_at(&f, "mnn_calloc_aligned(%zu, %zu): byte %zu not zero",
                            counts[i], sizes[j], k);
                    break;
                }
            memset(p, 0xa5, n); /* the whole block is usable (ASan checks) */
            mnn_free(p);
        }
    check(f.bad == 0, "mnn_calloc_aligned: 64-byte aligned and zeroed for 28 shapes");
    check(mnn_calloc_aligned(SIZE_MAX / 2 + 1, 2) == NULL,
          "mnn_calloc_aligned: NULL when n*size overflows");
    check(mnn_calloc_aligned(2, SIZE_MAX / 2 + 1) == NULL,
          "mnn_calloc_aligned: NULL when size*n overflows (other order)");
    check(mnn_calloc_aligned(SIZE_MAX, 1) == NULL,
          "mnn_calloc_aligned: NULL when rounding up to 64 would overflow");
    mnn_free(NULL);

    mnn_tensor_t t;
    int rc = mnn_tensor_init(&t, 3, 5);
    int good = rc == 0 && t.data && t.rows == 3 && t.cols == 5 &&
               (uintptr_t)t.data % 64 == 0;
    for (size_t i = 0; good && i < 15; i++)
        good = t.data[i] == 0.0f;
    check(good, "mnn_tensor_init(3,5): rows, cols, aligned zeroed data");
    if (rc == 0) {
        mnn_tensor_free(&t);
        check(t.data == NULL && t.rows == 0 && t.cols == 0,
              "mnn_tensor_free resets the tensor");
    } else
        check(0, "mnn_tensor_free resets the tensor (init failed)");
    rc = mnn_tensor_init(&t, SIZE_MAX / 2, 3);
    check(rc == MNN_EOVERFLOW && t.data == NULL && t.rows == 0 && t.cols == 0,
          "mnn_tensor_init(SIZE_MAX/2, 3): MNN_EOVERFLOW, empty tensor (rc %d)", rc);
    rc = mnn_tensor_init(&t, SIZE_MAX / 8, 2);
    check(rc < 0 && t.data == NULL,
          "mnn_tensor_init: rows*cols*4 overflowing bytes fails (rc %d)", rc);
}

/* ---- kernels: BLAS against naive -------------------------------------------- */

static double rms(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return n ? sqrt(s / (double)n) : 0;
}

/* a and ref agree to rel times max(|ref_i|, rms(ref)). */
static size_t compare_arrays(const float *a, const float *ref, size_t n, double rel,
                             const char *what, fails_t *f)
{
    double scale = rms(ref, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double tol = rel * fmax(fabs((double)ref[i]), scale) + 1e-30;
        if (!(fabs((double)a[i] - ref[i]) <= tol)) {
            if (bad++ == 0)
                fail_at(f, "%s[%zu] = %.9g, naive %.9g", what, i, (double)a[i],
                        (double)ref[i]);
        }
    }
    return bad;
}

static void test_kernels(void)
{
    size_t shapes[15][3] = {{1, 1, 1},    {1, 7, 3},    {1, 257, 1},
                            {2, 3, 5},    {5, 13, 11},  {3, 1, 9},
                            {17, 33, 65}, {64, 100, 37}, {31, 129, 10}};
    for (size_t s = 9; s < NELEM(shapes); s++) { /* and a few random ones */
        shapes[s][0] = s == 9 ? 1 : 1 + trng() % 40;
        shapes[s][1] = 1 + trng() % 150;
        shapes[s][2] = 1 + trng() % 70;
    }
    for (size_t s = 0; s < NELEM(shapes); s++) {
        const size_t B = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
        float *inp = xalloc(B * C), *w = xalloc(OC * C), *bias = xalloc(OC);
        float *out1 = xalloc(B * OC), *out2 = xalloc(B * OC), *dout = xalloc(B * OC);
        float *dinp1 = xalloc(B * C), *dinp2 = xalloc(B * C);
        float *dw1 = xalloc(OC * C), *dw2 = xalloc(OC * C), *dw3 = xalloc(OC * C),
              *dw4 = xalloc(OC * C);
        float *db1 = xalloc(OC), *db2 = xalloc(OC), *db3 = xalloc(OC), *db4 = xalloc(OC);
        fill_sym(inp, B * C, 1);
        fill_sym(w, OC * C, 1);
        fill_sym(bias, OC, 1);
        fill_sym(dout, B * OC, 1);
        /* garbage in the outputs: the kernels overwrite, never accumulate */
        for (size_t i = 0; i < B * OC; i++)
            out1[i] = out2[i] = 777.0f;
        for (size_t i = 0; i < B * C; i++)
            dinp1[i] = dinp2[i] = 555.0f;
        for (size_t i = 0; i < OC * C; i++)
            dw1[i] = dw2[i] = dw3[i] = dw4[i] = -333.0f;
        for (size_t i = 0; i < OC; i++)
            db1[i] = db2[i] = db3[i] = db4[i] = 444.0f;

        fails_t f = {0, 0};
        mnn_dense_forward(out1, inp, w, bias, B, C, OC);
        mnn_dense_forward_naive(out2, inp, w, bias, B, C, OC);
        compare_arrays(out1, out2, B * OC, 1e-4, "out", &f);
        check(f.bad == 0, "mnn_dense_forward == naive (B=%zu C=%zu OC=%zu)", B, C, OC);

        f = (fails_t){0, 0};
        mnn_dense_backward(dinp1, dw1, db1, dout, inp, w, B, C, OC);
        mnn_dense_backward_naive(dinp2, dw2, db2, dout, inp, w, B, C, OC);
        compare_arrays(dinp1, dinp2, B * C, 1e-4, "dinp", &f);
        compare_arrays(dw1, dw2, OC * C, 1e-4, "dweight", &f);
        compare_arrays(db1, db2, OC, 1e-4, "dbias", &f);
        check(f.bad == 0, "mnn_dense_backward == naive with dinp (B=%zu C=%zu OC=%zu)",
              B, C, OC);

        f = (fails_t){0, 0};
        mnn_dense_backward(NULL, dw3, db3, dout, inp, w, B, C, OC);
        mnn_dense_backward_naive(NULL, dw4, db4, dout, inp, w, B, C, OC);
        compare_arrays(dw3, dw2, OC * C, 1e-4, "dweight (dinp NULL)", &f);
        compare_arrays(db3, db2, OC, 1e-4, "dbias (dinp NULL)", &f);
        compare_arrays(dw4, dw2, OC * C, 1e-6, "naive dweight (dinp NULL)", &f);
        compare_arrays(db4, db2, OC, 1e-6, "naive dbias (dinp NULL)", &f);
        check(f.bad == 0, "mnn_dense_backward == naive without dinp (B=%zu C=%zu OC=%zu)",
              B, C, OC);

        free(inp), free(w), free(bias), free(out1), free(out2), free(dout);
        free(dinp1), free(dinp2), free(dw1), free(dw2), free(dw3), free(dw4);
        free(db1), free(db2), free(db3), free(db4);
    }
}

/* ---- finite differences ------------------------------------------------------ */

#define FD_H 1e-3f

/* Compares an analytic gradient with a central difference; fills f. */
static void fd_compare(fails_t *f, const char *what, size_t i, double analytic,
                       double numeric, double rel, double abs_tol)
{
    if (!close_to(analytic, numeric, rel, abs_tol))
        fail_at(f, "%s[%zu]: analytic %.7g, finite difference %.7g", what, i, analytic,
                numeric);
}

/* L = sum(r .* dense_forward(inp, w, b)) in double */
static double dense_loss(const float *inp, const float *w, const float *b, const float *r,
                         float *out, size_t B, size_t C, size_t OC)
{
    mnn_dense_forward(out, inp, w, b, B, C, OC);
    double L = 0;
    for (size_t i = 0; i < B * OC; i++)
        L += (double)r[i] * out[i];
    return L;
}

/* Central difference of dense_loss with respect to x[i] (x is one of the
 * arguments, perturbed in place). */
static double dense_fd(float *x, size_t i, const float *inp, const float *w, const float *b,
                       const float *r, float *out, size_t B, size_t C, size_t OC)
{
    float x0 = x[i], xp = x0 + FD_H, xm = x0 - FD_H;
    x[i] = xp;
    double lp = dense_loss(inp, w, b, r, out, B, C, OC);
    x[i] = xm;
    double lm = dense_loss(inp, w, b, r, out, B, C, OC);
    x[i] = x0;
    return (lp - lm) / ((double)xp - (double)xm);
}

static void test_fd_dense(void)
{
    const size_t B = 3, C = 4, OC = 5;
    float *inp = xalloc(B * C), *w = xalloc(OC * C), *b = xalloc(OC), *r = xalloc(B * OC);
    float *out = xalloc(B * OC), *dinp = xalloc(B * C), *dw = xalloc(OC * C), *db = xalloc(OC);
    fill_sym(inp, B * C, 1);
    fill_sym(w, OC * C, 1);
    fill_sym(b, OC, 1);
    fill_sym(r, B * OC, 1);
    mnn_dense_backward(dinp, dw, db, r, inp, w, B, C, OC);
    fails_t fw = {0, 0}, fb = {0, 0}, fi = {0, 0};
    for (size_t i = 0; i < OC * C; i++)
        fd_compare(&fw, "dweight", i, dw[i], dense_fd(w, i, inp, w, b, r, out, B, C, OC),
                   1e-2, 1e-3);
    for (size_t i = 0; i < OC; i++)
        fd_compare(&fb, "dbias", i, db[i], dense_fd(b, i, inp, w, b, r, out, B, C, OC),
                   1e-2, 1e-3);
    for (size_t i = 0; i < B * C; i++)
        fd_compare(&fi, "dinp", i, dinp[i], dense_fd(inp, i, inp, w, b, r, out, B, C, OC),
                   1e-2, 1e-3);
    check(fw.bad == 0, "dense layer: dweight matches finite differences");
    check(fb.bad == 0, "dense layer: dbias matches finite differences");
    check(fi.bad == 0, "dense layer: dinp matches finite differences");
    free(inp), free(w), free(b), free(r), free(out), free(dinp), free(dw), free(db);
}

static float act1(mnn_act_t a, float x)
{
    float y;
    mnn_act_forward(a, &y, &x, 1);
    return y;
}

static void test_fd_act(void)
{
    static const mnn_act_t acts[] = {MNN_ACT_NONE, MNN_ACT_RELU, MNN_ACT_TANH,
                                     MNN_ACT_SIGMOID};
    static const char *const names[] = {"none", "relu", "tanh", "sigmoid"};
    enum { N = 64 };
    float x[N], y[N], yin[N], dy[N], dx[N], alias[N];
    for (size_t k = 0; k < NELEM(acts); k++) {
        const mnn_act_t a = acts[k];
        check(!strcmp(mnn_act_name(a), names[k]), "mnn_act_name(%s)", names[k]);
        for (size_t i = 0; i < N; i++) {
            do
                x[i] = tsym(3);
            while (a == MNN_ACT_RELU && fabsf(x[i]) < 0.05f); /* away from the kink */
            dy[i] = tsym(1);
        }
        mnn_act_forward(a, y, x, N);
        memcpy(yin, x, sizeof x);
        mnn_act_forward(a, yin, yin, N);
        check(!memcmp(y, yin, sizeof y), "mnn_act_forward(%s) in place == out of place",
              names[k]);
        /* the values themselves */
        fails_t fv = {0, 0};
        for (size_t i = 0; i < N; i++) {
            double ref = a == MNN_ACT_RELU ? fmax(x[i], 0)
                       : a == MNN_ACT_TANH ? tanh(x[i])
                       : a == MNN_ACT_SIGMOID ? 1 / (1 + exp(-(double)x[i]))
                       : x[i];
            if (!close_to(y[i], ref, 1e-6, 1e-7))
                fail_at(&fv, "%s(%g) = %.9g, expected %.9g", names[k], (double)x[i],
                        (double)y[i], ref);
        }
        check(fv.bad == 0, "mnn_act_forward(%s) values", names[k]);

        mnn_act_backward(a, dx, y, dy, N);
        fails_t f = {0, 0};
        for (size_t i = 0; i < N; i++) {
            float xp = x[i] + FD_H, xm = x[i] - FD_H;
            double num = ((double)act1(a, xp) - act1(a, xm)) / ((double)xp - xm) * dy[i];
            fd_compare(&f, names[k], i, dx[i], num, 1e-2, 1e-4);
        }
        check(f.bad == 0, "mnn_act_backward(%s) matches finite differences", names[k]);
        memcpy(alias, dy, sizeof dy);
        mnn_act_backward(a, alias, y, alias, N);
        check(!memcmp(alias, dx, sizeof dx), "mnn_act_backward(%s) with dx aliasing dy",
              names[k]);
    }
}

static void test_fd_losses(void)
{
    enum { B = 4, K = 6 };
    float z[B * K], dz[B * K], dz2[B * K], probs[B * K], sm[B * K];
    int32_t labels[B];
    const float scale = 0.25f;
    fill_sym(z, B * K, 3);
    for (size_t b = 0; b < B; b++)
        labels[b] = (int32_t)(trng() % K);
    double L = mnn_softmax_xent(dz, probs, z, labels, B, K, scale);
    double ref = 0;
    for (size_t b = 0; b < B; b++) {
        double s = 0;
        for (size_t k = 0; k < K; k++)
            s += exp((double)z[b * K + k]);
        ref += log(s) - z[b * K + (size_t)labels[b]];
    }
    check(close_to(L, ref, 1e-6, 0), "mnn_softmax_xent: summed loss %.9g, expected %.9g", L,
          ref);
    mnn_softmax(sm, z, B, K);
    fails_t fp = {0, 0};
    for (size_t i = 0; i < B * K; i++)
        if (!close_to(probs[i], sm[i], 1e-5, 1e-7))
            fail_at(&fp, "probs[%zu] = %.9g, mnn_softmax %.9g", i, (double)probs[i],
                    (double)sm[i]);
    check(fp.bad == 0, "mnn_softmax_xent: probs == mnn_softmax");
    fails_t f = {0, 0};
    for (size_t i = 0; i < B * K; i++) {
        float z0 = z[i], zp = z0 + FD_H, zm = z0 - FD_H;
        z[i] = zp;
        double lp = scale * mnn_softmax_xent(NULL, NULL, z, labels, B, K, scale);
        z[i] = zm;
        double lm = scale * mnn_softmax_xent(NULL, NULL, z, labels, B, K, scale);
        z[i] = z0;
        fd_compare(&f, "dlogits", i, dz[i], (lp - lm) / ((double)zp - zm), 1e-2, 1e-5);
    }
    check(f.bad == 0, "mnn_softmax_xent: dlogits (grad_scale 0.25) match finite differences");
    double L2 = mnn_softmax_xent(dz2, NULL, z, labels, B, K, 1.0f);
    fails_t fs = {0, 0};
    for (size_t i = 0; i < B * K; i++)
        if (!close_to(dz2[i] * scale, dz[i], 1e-6, 1e-9))
            fail_at(&fs, "dlogits[%zu]: scale 1 gives %.9g, scale 0.25 gives %.9g", i,
                    (double)dz2[i], (double)dz[i]);
    check(fs.bad == 0 && L2 == L,
          "mnn_softmax_xent: grad_scale scales only the gradient, probs may be NULL");

    enum { MB = 3, MK = 2 };
    float out[MB * MK], tgt[MB * MK], dout[MB * MK];
    const float mscale = 1.0f / 3.0f;
    fill_sym(out, MB * MK, 2);
    fill_sym(tgt, MB * MK, 2);
    double M = mnn_mse(dout, out, tgt, MB, MK, mscale);
    double mref = 0;
    for (size_t i = 0; i < MB * MK; i++)
        mref += 0.5 * ((double)out[i] - tgt[i]) * ((double)out[i] - tgt[i]);
    check(close_to(M, mref, 1e-6, 0), "mnn_mse: loss %.9g, expected %.9g", M, mref);
    check(mnn_mse(NULL, out, tgt, MB, MK, mscale) == M, "mnn_mse: dout may be NULL");
    fails_t fm = {0, 0};
    for (size_t i = 0; i < MB * MK; i++) {
        float o0 = out[i], op = o0 + FD_H, om = o0 - FD_H;
        out[i] = op;
        double lp = mscale * mnn_mse(NULL, out, tgt, MB, MK, 1);
        out[i] = om;
        double lm = mscale * mnn_mse(NULL, out, tgt, MB, MK, 1);
        out[i] = o0;
        fd_compare(&fm, "dout", i, dout[i], (lp - lm) / ((double)op - om), 1e-2, 1e-5);
    }
    check(fm.bad == 0, "mnn_mse: dout (grad_scale 1/3) matches finite differences");
}

/* Mean loss of the model on a batch, through mnn_model_predict: -log p[y]
 * for xent, 0.5*(out-y)^2 for mse.  *correct counts argmax hits. */
static double model_loss(mnn_model_t *m, const float *x, const float *y, size_t B,
                         float *out, size_t *correct)
{
    const size_t K = m->spec.outputs;
    if (mnn_model_predict(m, x, B, out) != 0)
        return NAN;
    double L = 0;
    size_t hits = 0;
    for (size_t b = 0; b < B; b++) {
        if (m->spec.loss == MNN_LOSS_XENT) {
            size_t lab = (size_t)y[b], best = 0;
            L -= log((double)out[b * K + lab]);
            for (size_t k = 1; k < K; k++)
                if (out[b * K + k] > out[b * K + best])
                    best = k;
            hits += best == lab;
        } else
            for (size_t k = 0; k < K; k++) {
                double e = (double)out[b * K + k] - y[b * K + k];
                L += 0.5 * e * e;
            }
    }
    if (correct)
        *correct = hits;
    return L / (double)B;
}

/* The model's output for x, composed by hand in double from the public
 * fields: input_scale, the running normalization, the layers, softmax.
 * *relu_margin (if not NULL) gets the smallest |input| of a relu. */
static void ref_forward(const mnn_model_t *m, const float *x, size_t B, double *out,
                        double *relu_margin)
{
    size_t widest = m->spec.input;
    for (size_t i = 0; i < m->spec.nlayers; i++)
        widest = m->spec.layers[i].units > widest ? m->spec.layers[i].units : widest;
    double *a = calloc(widest, sizeof(double)), *z = calloc(widest, sizeof(double));
    if (!a || !z)
        exit(99);
    if (relu_margin)
        *relu_margin = INFINITY;
    for (size_t b = 0; b < B; b++) {
        size_t width = m->spec.input;
        for (size_t c = 0; c < width; c++) {
            a[c] = (double)x[b * width + c] * m->spec.input_scale;
            if (m->norm_mean && m->norm_count > 0) {
                double var = m->norm_m2[c] / (double)m->norm_count;
                a[c] = (a[c] - m->norm_mean[c]) / (var > 1e-12 ? sqrt(var) : 1.0);
            }
        }
        for (size_t i = 0; i < m->spec.nlayers; i++) {
            const size_t units = m->spec.layers[i].units, fan = m->fan_in[i];
            const float *w = m->params + m->w_off[i], *bias = m->params + m->b_off[i];
            for (size_t o = 0; o < units; o++) {
                double acc = bias[o];
                for (size_t c = 0; c < fan; c++)
                    acc += (double)w[o * fan + c] * a[c];
                switch (m->spec.layers[i].act) {
                case MNN_ACT_RELU:
                    if (relu_margin)
                        *relu_margin = fmin(*relu_margin, fabs(acc));
                    acc = acc > 0 ? acc : 0;
                    break;
                case MNN_ACT_TANH: acc = tanh(acc); break;
                case MNN_ACT_SIGMOID: acc = 1 / (1 + exp(-acc)); break;
                default: break;
                }
                z[o] = acc;
            }
            memcpy(a, z, units * sizeof(double));
            width = units;
        }
        if (m->spec.loss == MNN_LOSS_XENT) {
            double mx = a[0], sum = 0;
            for (size_t k = 1; k < width; k++)
                mx = fmax(mx, a[k]);
            for (size_t k = 0; k < width; k++)
                sum += (a[k] = exp(a[k] - mx));
            for (size_t k = 0; k < width; k++)
                a[k] /= sum;
        }
        memcpy(out + b * width, a, width * sizeof(double));
    }
    free(a);
    free(z);
}

/* Builds a model from layers, checks m->grads from one train_batch against
 * finite differences of the loss at the pre-step parameters, and the SGD
 * update against -lr*grads. */
static void model_grad_check(const char *name, size_t input, size_t outputs,
                             mnn_loss_t loss, mnn_norm_t norm, float input_scale,
                             mnn_layer_spec_t *layers, size_t nlayers, size_t B)
{
    mnn_spec_t s;
    mnn_diag_t d = {""};
    mnn_spec_defaults(&s);
    s.input = input;
    s.outputs = outputs;
    s.loss = loss;
    s.normalize = norm;
    s.input_scale = input_scale;
    s.layers = layers; /* not owned: never mnn_spec_free(&s) */
    s.nlayers = nlayers;
    s.opt.type = MNN_OPT_SGD;
    s.opt.lr = 0.125f;
    s.opt.momentum = 0;
    s.opt.weight_decay = 0;
    s.batch = B;
    int rc = mnn_spec_validate(&s, &d);
    if (!check(rc == 0, "%s: hand-built spec validates", name)) {
        diag("%s", d.msg);
        return;
    }
    mnn_model_t m;
    rc = mnn_model_init(&m, &s);
    if (!check(rc == 0, "%s: mnn_model_init", name))
        return;
    /* the documented parameter layout */
    size_t off = 0, fan = input;
    int layout = m.spec.nlayers == nlayers && m.spec.layers != layers;
    for (size_t i = 0; layout && i < nlayers; i++) {
        layout = m.w_off[i] == off && m.fan_in[i] == fan &&
                 m.b_off[i] == off + layers[i].units * fan;
        off = m.b_off[i] + layers[i].units;
        fan = layers[i].units;
    }
    check(layout && m.nparams == off,
          "%s: w_off/b_off/fan_in/nparams follow the flat layout (nparams %zu)", name,
          m.nparams);
    mnn_rng_t rng;
    mnn_rng_seed(&rng, 7);
    mnn_model_init_weights(&m, &rng);
    int wok = 1;
    for (size_t i = 0; i < nlayers; i++) {
        size_t nz = 0;
        for (size_t j = 0; j < layers[i].units * m.fan_in[i]; j++)
            nz += m.params[m.w_off[i] + j] != 0 && isfinite(m.params[m.w_off[i] + j]);
        for (size_t j = 0; j < layers[i].units; j++)
            wok &= m.params[m.b_off[i] + j] == 0;
        wok &= nz == layers[i].units * m.fan_in[i];
    }
    check(wok, "%s: mnn_model_init_weights: finite non-zero weights, zero biases", name);

    mnn_optim_t o;
    if (!check(mnn_optim_init(&o, &m.spec.opt, m.nparams) == 0, "%s: mnn_optim_init", name)) {
        mnn_model_free(&m);
        return;
    }
    const size_t K = outputs, ylen = loss == MNN_LOSS_XENT ? B : B * K;
    float *x = xalloc(B * input), *y = xalloc(ylen), *out = xalloc(B * K);
    mnn_batch_stats_t st = {0, 0};
    if (norm == MNN_NORM_RUNNING) {
        /* warm the running statistics so the gradient goes through them */
        float *wx = xalloc(5 * input), *wy = xalloc(5 * K);
        for (size_t i = 0; i < 5 * input; i++)
            wx[i] = (float)(3.0 + 2.0 * (i % input) + tsym(1.5));
        fill_sym(wy, 5 * K, 1);
        rc = mnn_model_train_batch(&m, &o, wx, wy, 5, &st);
        check(rc == 0 && m.norm_count == 5, "%s: warm-up batch counted by normalize",
              name);
        int welford = m.norm_mean && m.norm_m2;
        for (size_t c = 0; welford && c < input; c++) {
            double mean = 0, m2 = 0;
            for (size_t b = 0; b < 5; b++)
                mean += (double)(wx[b * input + c] * input_scale) / 5;
            for (size_t b = 0; b < 5; b++)
                m2 += ((double)(wx[b * input + c] * input_scale) - mean) *
                      ((double)(wx[b * input + c] * input_scale) - mean);
            welford = close_to(m.norm_mean[c], mean, 1e-12, 1e-12) &&
                      close_to(m.norm_m2[c], m2, 1e-9, 1e-12);
            if (!welford)
                diag("feature %zu: mean %.17g m2 %.17g, expected %.17g %.17g", c,
                     m.norm_mean[c], m.norm_m2[c], mean, m2);
        }
        check(welford, "%s: running mean and M2 of the scaled inputs after one batch", name);
        free(wx), free(wy);
    }
    /* inputs that keep every relu at least 0.01 from its kink, so that the
     * finite differences (step 1e-3) never cross it */
    double margin = 0;
    double *tmp = calloc(B * K, sizeof(double));
    if (!tmp)
        exit(99);
    for (int tries = 0; tries < 1000 && margin < 0.01; tries++) {
        for (size_t i = 0; i < B * input; i++)
            x[i] = norm == MNN_NORM_RUNNING ? (float)(3.0 + 2.0 * (i % input) + tsym(2))
                                            : tsym(2);
        ref_forward(&m, x, B, tmp, &margin);
    }
    free(tmp);
    for (size_t i = 0; i < ylen; i++)
        y[i] = loss == MNN_LOSS_XENT ? (float)(trng() % K) : tsym(1);

    const size_t P = m.nparams;
    float *p0 = xalloc(P);
    double *fdd = calloc(P ? P : 1, sizeof(double));
    if (!fdd)
        exit(99);
    memcpy(p0, m.params, P * sizeof(float));
    size_t correct0 = 0;
    uint64_t count0 = m.norm_count;
    double L0 = model_loss(&m, x, y, B, out, &correct0);
    check(!memcmp(p0, m.params, P * sizeof(float)) && m.norm_count == count0 && isfinite(L0),
          "%s: mnn_model_predict leaves the model alone", name);
    {
        double *ref = calloc(B * K, sizeof(double));
        if (!ref)
            exit(99);
        fails_t fr = {0, 0};
        ref_forward(&m, x, B, ref, NULL);
        for (size_t i = 0; i < B * K; i++)
            if (!close_to(out[i], ref[i], 1e-5, 1e-6))
                fail_at(&fr, "output[%zu] = %.9g, by hand %.9g", i, (double)out[i], ref[i]);
        check(fr.bad == 0, "%s: mnn_model_predict == the forward pass composed by hand", name);
        free(ref);
    }
    for (size_t j = 0; j < P; j++) {
        float pp = p0[j] + FD_H, pm = p0[j] - FD_H;
        m.params[j] = pp;
        double lp = model_loss(&m, x, y, B, out, NULL);
        m.params[j] = pm;
        double lm = model_loss(&m, x, y, B, out, NULL);
        m.params[j] = p0[j];
        fdd[j] = (lp - lm) / ((double)pp - pm);
    }
    rc = mnn_model_train_batch(&m, &o, x, y, B, &st);
    check(rc == 0 && o.step == (norm == MNN_NORM_RUNNING ? 2u : 1u),
          "%s: mnn_model_train_batch (rc %d)", name, rc);
    fails_t f = {0, 0};
    double maxdiff = 0, maxg = 0;
    for (size_t j = 0; j < P; j++) {
        maxdiff = fmax(maxdiff, fabs(m.grads[j] - fdd[j]));
        maxg = fmax(maxg, fabs(m.grads[j]));
        fd_compare(&f, "grads", j, m.grads[j], fdd[j], 2e-2, 2e-4);
    }
    check(f.bad == 0, "%s: model gradient matches finite differences of the loss (%zu params)",
          name, P);
    if (norm == MNN_NORM_RUNNING) {
        /* a part's gradient would need the whole minibatch's statistics */
        mnn_batch_stats_t ps;
        float *pg = xalloc(P);
        check(mnn_model_gradient(&m, x, y, 1, B, pg, &ps) == MNN_EINVAL &&
                  mnn_model_gradient(&m, x, y, 0, B, pg, &ps) == MNN_EINVAL,
              "%s: mnn_model_gradient refuses a model with running normalization", name);
        free(pg);
    }
    diag("%zu of %zu differ; largest |grad - fd| %.3g, largest |grad| %.3g", f.bad, P, maxdiff,
         maxg);
    check(close_to(st.loss_sum, L0 * (double)B, 1e-5, 1e-6),
          "%s: train_batch loss_sum %.9g == predicted loss %.9g", name, st.loss_sum,
          L0 * (double)B);
    if (loss == MNN_LOSS_XENT)
        check(st.correct == correct0, "%s: train_batch correct %zu == argmax hits %zu", name,
              st.correct, correct0);
    fails_t fu = {0, 0};
    for (size_t j = 0; j < P; j++) {
        float want = p0[j] - s.opt.lr * m.grads[j];
        if (!close_to(m.params[j], want, 1e-6, 1e-9))
            fail_at(&fu, "params[%zu] = %.9g after the step, p0 - lr*g = %.9g", j,
                    (double)m.params[j], (double)want);
    }
    check(fu.bad == 0, "%s: plain SGD step moved params by -lr*grads", name);
    free(x), free(y), free(out), free(p0), free(fdd);
    mnn_optim_free(&o);
    mnn_model_free(&m);
}

static void test_fd_model(void)
{
    mnn_layer_spec_t l1[] = {{7, MNN_ACT_RELU}, {6, MNN_ACT_TANH}, {5, MNN_ACT_SIGMOID},
                             {3, MNN_ACT_NONE}};
    model_grad_check("xent model", 5, 3, MNN_LOSS_XENT, MNN_NORM_NONE, 0.5f, l1, NELEM(l1), 8);
    mnn_layer_spec_t l2[] = {{6, MNN_ACT_TANH}, {4, MNN_ACT_SIGMOID}, {1, MNN_ACT_NONE}};
    model_grad_check("mse model, normalize running", 4, 1, MNN_LOSS_MSE, MNN_NORM_RUNNING,
                     0.5f, l2, NELEM(l2), 6);
    mnn_layer_spec_t l3[] = {{2, MNN_ACT_NONE}};
    model_grad_check("one-layer B=1 model", 3, 2, MNN_LOSS_XENT, MNN_NORM_NONE, 1.0f, l3,
                     NELEM(l3), 1);
}

/* ---- softmax ----------------------------------------------------------- */

static void test_softmax(void)
{
    enum { B = 5, K = 10 };
    float z[B * K], p[B * K];
    fill_sym(z, B * K, 20);
    mnn_softmax(p, z, B, K);
    fails_t f = {0, 0};
    for (size_t b = 0; b < B; b++) {
        double s = 0;
        for (size_t k = 0; k < K; k++) {
            if (!(p[b * K + k] >= 0 && p[b * K + k] <= 1))
                fail_at(&f, "p[%zu][%zu] = %g", b, k, (double)p[b * K + k]);
            s += p[b * K + k];
        }
        if (!close_to(s, 1, 0, 1e-5))
            fail_at(&f, "row %zu sums to %.9g", b, s);
    }
    check(f.bad == 0, "mnn_softmax: rows are in [0,1] and sum to 1");
    memcpy(p, z, sizeof z);
    mnn_softmax(p, p, B, K);
    float p2[B * K];
    mnn_softmax(p2, z, B, K);
    check(!memcmp(p, p2, sizeof p), "mnn_softmax: in place (probs aliasing logits)");

    const float big[4][4] = {{1000, -1000, 0, 999},
                             {-1000, -1000, -1000, -1000},
                             {1000, 1000, 1000, 1000},
                             {-1000, 1000, -1000, -1000}};
    const double e1 = 1 / (1 + exp(-1.0));
    const double want[4][4] = {{e1, 0, 0, 1 - e1},
                               {.25, .25, .25, .25},
                               {.25, .25, .25, .25},
                               {0, 1, 0, 0}};
    float bp[16];
    mnn_softmax(bp, &big[0][0], 4, 4);
    fails_t fb = {0, 0};
    for (size_t i = 0; i < 16; i++)
        if (!isfinite(bp[i]) || !close_to(bp[i], want[i / 4][i % 4], 1e-6, 1e-7))
            fail_at(&fb, "softmax of large logits: p[%zu] = %.9g, expected %.9g", i,
                    (double)bp[i], want[i / 4][i % 4]);
    check(fb.bad == 0, "mnn_softmax: stable for logits of +-1000");

    float dz[2], pr[2];
    const float zz[2] = {1000, -1000};
    int32_t lab = 1;
    double L = mnn_softmax_xent(dz, pr, zz, &lab, 1, 2, 1.0f);
    check(L == 2000 && dz[0] == 1 && dz[1] == -1 && pr[0] == 1 && pr[1] == 0,
          "mnn_softmax_xent: logits (1000,-1000), label 1: loss %.9g (2000), dz (%g,%g)", L,
          (double)dz[0], (double)dz[1]);
    lab = 0;
    L = mnn_softmax_xent(dz, pr, zz, &lab, 1, 2, 0.5f);
    check(L == 0 && dz[0] == 0 && dz[1] == 0,
          "mnn_softmax_xent: logits (1000,-1000), label 0: loss %.9g (0)", L);
}

/* ---- early exits, confidence, temperature ------------------------------- */

/* softmax(z / T) in double */
static void ref_softmax_t(double *p, const double *z, size_t K, double T)
{
    double mx = z[0] / T, sum = 0;
    for (size_t k = 1; k < K; k++)
        mx = fmax(mx, z[k] / T);
    for (size_t k = 0; k < K; k++)
        sum += (p[k] = exp(z[k] / T - mx));
    for (size_t k = 0; k < K; k++)
        p[k] /= sum;
}

/* One record through the model by hand, in double, from the public fields:
 * probs[h*K ...] receives softmax(logits / T) of head h: the exit heads
 * h = 0..nexits-1, then the final head h = nexits. */
static void ref_heads(const mnn_model_t *m, const float *x, double T, double *probs)
{
    const mnn_spec_t *s = &m->spec;
    const size_t K = s->outputs;
    size_t widest = s->input, j = 0;
    for (size_t i = 0; i < s->nlayers; i++)
        widest = s->layers[i].units > widest ? s->layers[i].units : widest;
    double *a = calloc(widest, sizeof(double)), *z = calloc(widest, sizeof(double));
    if (!a || !z)
        exit(99);
    for (size_t c = 0; c < s->input; c++)
        a[c] = (double)x[c] * s->input_scale;
    for (size_t i = 0; i < s->nlayers; i++) {
        const size_t units = s->layers[i].units, fan = m->fan_in[i];
        const float *w = m->params + m->w_off[i], *bias = m->params + m->b_off[i];
        for (size_t o = 0; o < units; o++) {
            double acc = bias[o];
            for (size_t c = 0; c < fan; c++)
                acc += (double)w[o * fan + c] * a[c];
            switch (s->layers[i].act) {
            case MNN_ACT_RELU: acc = acc > 0 ? acc : 0; break;
            case MNN_ACT_TANH: acc = tanh(acc); break;
            case MNN_ACT_SIGMOID: acc = 1 / (1 + exp(-acc)); break;
            default: break;
            }
            z[o] = acc;
        }
        memcpy(a, z, units * sizeof(double));
        if (j < s->nexits && s->exits[j] == i) {
            const float *hw = m->params + m->ew_off[j], *hb = m->params + m->eb_off[j];
            double logits[16];
            for (size_t k = 0; k < K; k++) {
                double acc = hb[k];
                for (size_t c = 0; c < units; c++)
                    acc += (double)hw[k * units + c] * a[c];
                logits[k] = acc;
            }
            ref_softmax_t(probs + j * K, logits, K, T);
            j++;
        }
    }
    ref_softmax_t(probs + s->nexits * K, a, K, T);
    free(a);
    free(z);
}

/* The loss train_batch learns from, by hand: the mean over the batch of the
 * final head's cross-entropy plus exit_weights[j] times head j's.  The
 * temperature plays no part.  *final_sum gets the final head's summed loss. */
static double ref_exit_loss(const mnn_model_t *m, const float *x, const float *y, size_t B,
                            double *final_sum)
{
    const size_t K = m->spec.outputs, E = m->spec.nexits;
    double *p = calloc((E + 1) * K, sizeof(double)), L = 0, F = 0;
    if (!p)
        exit(99);
    for (size_t b = 0; b < B; b++) {
        size_t lab = (size_t)y[b];
        ref_heads(m, x + b * m->spec.input, 1.0, p);
        F -= log(p[E * K + lab]);
        L -= log(p[E * K + lab]);
        for (size_t j = 0; j < E; j++)
            L -= (double)m->spec.exit_weights[j] * log(p[j * K + lab]);
    }
    free(p);
    if (final_sum)
        *final_sum = F;
    return L / (double)B;
}

/* A classifier spec over caller-owned arrays (never mnn_spec_free it). */
static void exit_spec(mnn_spec_t *s, size_t input, size_t K, mnn_layer_spec_t *layers,
                      size_t nlayers, size_t *exits, float *weights, size_t nexits, float T)
{
    mnn_spec_defaults(s);
    s->input = input;
    s->outputs = K;
    s->layers = layers;
    s->nlayers = nlayers;
    s->exits = exits;
    s->exit_weights = weights;
    s->nexits = nexits;
    s->temperature = T;
    s->opt.lr = 0.125f;
    s->batch = 6;
}

static void test_fd_exits(void)
{
    mnn_layer_spec_t layers[] = {{5, MNN_ACT_TANH}, {4, MNN_ACT_SIGMOID}, {3, MNN_ACT_NONE}};
    size_t exits[] = {0, 1};
    float weights[] = {0.75f, 0.5f}, zero[] = {0, 0};
    enum { B = 6, IN = 4, K = 3 };
    mnn_spec_t s;
    mnn_diag_t d = {""};
    /* temperature 3: training must not see it */
    exit_spec(&s, IN, K, layers, NELEM(layers), exits, weights, NELEM(exits), 3.0f);
    if (!check(mnn_spec_validate(&s, &d) == 0, "exits: a hand-built 4-5-4-3 spec with exits "
                                               "[0, 1] validates")) {
        diag("%s", d.msg);
        return;
    }
    mnn_model_t m, mn, m0;
    mnn_spec_t sn = s, s0 = s;
    sn.nexits = 0;
    sn.exits = NULL;
    sn.exit_weights = NULL;
    s0.exit_weights = zero;
    if (!check(mnn_model_init(&m, &s) == 0 && mnn_model_init(&mn, &sn) == 0 &&
                   mnn_model_init(&m0, &s0) == 0,
               "exits: mnn_model_init with and without exit heads"))
        return;
    /* exit heads come after the layers, weight then bias */
    size_t main_p = mn.nparams;
    check(m.ew_off[0] == main_p && m.eb_off[0] == main_p + K * 5 &&
              m.ew_off[1] == m.eb_off[0] + K && m.eb_off[1] == m.ew_off[1] + K * 4 &&
              m.nparams == m.eb_off[1] + K && m.w_off[2] == mn.w_off[2],
          "exits: ew_off/eb_off follow the layers in the flat array (nparams %zu + %zu)",
          main_p, m.nparams - main_p);
    mnn_rng_t r1, r2;
    mnn_rng_seed(&r1, 11);
    mnn_rng_seed(&r2, 11);
    mnn_model_init_weights(&m, &r1);
    mnn_model_init_weights(&mn, &r2);
    int heads_ok = 1;
    for (size_t j = 0; j < 2; j++) {
        size_t C = layers[exits[j]].units;
        for (size_t i = 0; i < K * C; i++)
            heads_ok &= m.params[m.ew_off[j] + i] != 0 && isfinite(m.params[m.ew_off[j] + i]);
        for (size_t i = 0; i < K; i++)
            heads_ok &= m.params[m.eb_off[j] + i] == 0;
    }
    check(!memcmp(m.params, mn.params, main_p * sizeof(float)) && heads_ok,
          "exits: init_weights draws the layers as without exits, then non-zero head "
          "weights and zero head biases");

    float x[B * IN], y[B];
    for (size_t i = 0; i < NELEM(x); i++)
        x[i] = tsym(2);
    for (size_t b = 0; b < B; b++)
        y[b] = (float)(trng() % K);
    const size_t P = m.nparams;
    float *p0 = xalloc(P);
    double *fdd = calloc(P, sizeof(double)), F0;
    if (!fdd)
        exit(99);
    memcpy(p0, m.params, P * sizeof(float));
    ref_exit_loss(&m, x, y, B, &F0);
    for (size_t j = 0; j < P; j++) {
        float pp = p0[j] + FD_H, pm = p0[j] - FD_H;
        m.params[j] = pp;
        double lp = ref_exit_loss(&m, x, y, B, NULL);
        m.params[j] = pm;
        double lm = ref_exit_loss(&m, x, y, B, NULL);
        m.params[j] = p0[j];
        fdd[j] = (lp - lm) / ((double)pp - pm);
    }
    /* plain SGD so that the update shows the gradient too */
    mnn_optim_t o;
    mnn_batch_stats_t st = {0, 0};
    int rc = mnn_optim_init(&o, &m.spec.opt, m.nparams);
    if (rc == 0)
        rc = mnn_model_train_batch(&m, &o, x, y, B, &st);
    check(rc == 0, "exits: mnn_model_train_batch (rc %d)", rc);
    fails_t f = {0, 0};
    double maxdiff = 0;
    for (size_t j = 0; j < P; j++) {
        maxdiff = fmax(maxdiff, fabs(m.grads[j] - fdd[j]));
        fd_compare(&f, "grads", j, m.grads[j], fdd[j], 2e-2, 2e-4);
    }
    check(f.bad == 0, "exits: the gradient of the final loss + 0.75 exit 0 + 0.5 exit 1 "
                      "matches finite differences (%zu params, worst %.3g)", P, maxdiff);
    check(close_to(st.loss_sum, F0, 1e-5, 1e-6),
          "exits: train_batch loss_sum %.9g is the final head's alone (%.9g)", st.loss_sum, F0);
    int moved = 1;
    for (size_t j = 0; j < P; j++)
        moved &= close_to(m.params[j], p0[j] - 0.125f * m.grads[j], 1e-6, 1e-9);
    check(moved, "exits: the SGD step moves the exit heads too");
    mnn_optim_free(&o);

    /* the gradient of parts of the minibatch (data-parallel training): the
     * whole as one part is train_batch's gradient bit for bit, two parts
     * over the whole's count sum to it, an empty part is zeros */
    {
        float *saved = xalloc(P), *g = xalloc(P), *g2 = xalloc(P);
        memcpy(saved, m.params, P * sizeof(float));
        memcpy(m.params, p0, P * sizeof(float));
        mnn_batch_stats_t a = {0, 0}, b2 = {0, 0};
        rc = mnn_model_gradient(&m, x, y, B, B, g, &a);
        check(rc == 0 && !memcmp(g, m.grads, P * sizeof(float)) && a.loss_sum == st.loss_sum,
              "gradient: one part of %zu records is train_batch's gradient and loss, bit for "
              "bit (rc %d)", (size_t)B, rc);
        const size_t h = B / 3;
        rc = mnn_model_gradient(&m, x, y, h, B, g, &a);
        if (rc == 0)
            rc = mnn_model_gradient(&m, x + h * IN, y + h, B - h, B, g2, &b2);
        int sums = rc == 0 && close_to(a.loss_sum + b2.loss_sum, st.loss_sum, 1e-6, 1e-9);
        for (size_t j = 0; j < P; j++)
            sums &= close_to(g[j] + g2[j], m.grads[j], 1e-5, 1e-7);
        check(sums, "gradient: parts of %zu and %zu records over %zu sum to the whole's "
              "gradient and loss", h, (size_t)B - h, (size_t)B);
        for (size_t j = 0; j < P; j++)
            g[j] = 1;
        rc = mnn_model_gradient(&m, x, y, 0, B, g, &a);
        int zeros = rc == 0 && a.loss_sum == 0 && a.correct == 0;
        for (size_t j = 0; j < P; j++)
            zeros &= g[j] == 0;
        check(zeros, "gradient: an empty part is zeros");
        rc = mnn_model_gradient(&m, x, y, B, B - 1, g, &a);
        check(rc == MNN_EINVAL, "gradient: a part larger than its minibatch is refused (rc %d)",
              rc);
        check(!memcmp(m.params, p0, P * sizeof(float)), "gradient: the weights are unchanged");
        memcpy(m.params, saved, P * sizeof(float));
        free(saved);
        free(g);
        free(g2);
    }

    /* heads of weight 0 leave the layers' gradients as without exits */
    mnn_batch_stats_t s0st = {0, 0}, snst = {0, 0};
    memcpy(m0.params, p0, P * sizeof(float));
    memcpy(mn.params, p0, main_p * sizeof(float));
    mnn_optim_t o0, on;
    rc = mnn_optim_init(&o0, &m0.spec.opt, m0.nparams);
    if (rc == 0)
        rc = mnn_optim_init(&on, &mn.spec.opt, mn.nparams);
    if (rc == 0) {
        mnn_model_train_batch(&m0, &o0, x, y, B, &s0st);
        mnn_model_train_batch(&mn, &on, x, y, B, &snst);
        int same = s0st.loss_sum == snst.loss_sum && s0st.correct == snst.correct;
        for (size_t j = 0; j < main_p; j++)
            same &= m0.grads[j] == mn.grads[j];
        for (size_t j = main_p; j < P; j++)
            same &= m0.grads[j] == 0;
        check(same, "exits: exit_weights [0, 0]: the layers' gradients and the stats equal "
                    "those of the model without exits; the heads' are 0");
        mnn_optim_free(&o0);
        mnn_optim_free(&on);
    } else
        check(0, "exits: mnn_optim_init");
    free(p0);
    free(fdd);
    mnn_model_free(&m);
    mnn_model_free(&mn);
    mnn_model_free(&m0);
}

static void test_confidence(void)
{
    const float a[] = {0.7f, 0.2f, 0.1f}, u[] = {0.25f, 0.25f, 0.25f, 0.25f},
                hot[] = {0, 1, 0}, one[] = {1}, tie[] = {0.4f, 0.4f, 0.2f},
                late[] = {0.1f, 0.6f, 0.3f};
    double ha = -(0.7 * log(0.7) + 0.2 * log(0.2) + 0.1 * log(0.1));
    check(close_to(mnn_confidence(a, 3, MNN_CRIT_MAXPROB), 0.7, 1e-6, 0) &&
              close_to(mnn_confidence(a, 3, MNN_CRIT_MARGIN), 0.5, 1e-6, 0) &&
              close_to(mnn_confidence(a, 3, MNN_CRIT_ENTROPY), 1 - ha / log(3.0), 1e-5, 0),
          "mnn_confidence (0.7, 0.2, 0.1): maxprob 0.7, margin 0.5, entropy %.6f (%.6f)",
          (double)mnn_confidence(a, 3, MNN_CRIT_ENTROPY), 1 - ha / log(3.0));
    check(mnn_confidence(u, 4, MNN_CRIT_MAXPROB) == 0.25f &&
              mnn_confidence(u, 4, MNN_CRIT_MARGIN) == 0 &&
              fabs(mnn_confidence(u, 4, MNN_CRIT_ENTROPY)) < 1e-6,
          "mnn_confidence uniform over 4: maxprob 0.25, margin 0, entropy 0");
    check(mnn_confidence(hot, 3, MNN_CRIT_MAXPROB) == 1 &&
              mnn_confidence(hot, 3, MNN_CRIT_MARGIN) == 1 &&
              mnn_confidence(hot, 3, MNN_CRIT_ENTROPY) == 1,
          "mnn_confidence one-hot: 1 by every criterion");
    check(mnn_confidence(one, 1, MNN_CRIT_ENTROPY) == 1 &&
              mnn_confidence(one, 1, MNN_CRIT_MAXPROB) == 1,
          "mnn_confidence K = 1: entropy 1, maxprob 1");
    check(mnn_confidence(tie, 3, MNN_CRIT_MARGIN) == 0 &&
              close_to(mnn_confidence(late, 3, MNN_CRIT_MARGIN), 0.3, 1e-6, 0),
          "mnn_confidence margin: a tie at the top is 0; (0.1, 0.6, 0.3) is 0.3");
    mnn_crit_t c = MNN_CRIT_MAXPROB;
    int names = 1;
    for (int i = 0; i < 3; i++)
        names &= mnn_crit_parse(mnn_crit_name((mnn_crit_t)i), &c) == 0 && c == (mnn_crit_t)i;
    check(names && !strcmp(mnn_crit_name(MNN_CRIT_MARGIN), "margin") &&
              mnn_crit_parse("entropy", &c) == 0 && c == MNN_CRIT_ENTROPY &&
              mnn_crit_parse("Maxprob", &c) == MNN_EINVAL && mnn_crit_parse("", &c) == MNN_EINVAL,
          "mnn_crit_parse/mnn_crit_name: maxprob, margin, entropy; anything else MNN_EINVAL");
}

static void test_temperature(void)
{
    mnn_layer_spec_t layers[] = {{6, MNN_ACT_RELU}, {4, MNN_ACT_NONE}};
    enum { B = 5, IN = 3, K = 4 };
    mnn_spec_t s;
    exit_spec(&s, IN, K, layers, NELEM(layers), NULL, NULL, 0, 2.5f);
    mnn_model_t m, m1;
    mnn_spec_t s1 = s;
    s1.temperature = 1;
    if (!check(mnn_model_init(&m, &s) == 0 && mnn_model_init(&m1, &s1) == 0,
               "temperature: models of T 2.5 and 1"))
        return;
    mnn_rng_t rng;
    mnn_rng_seed(&rng, 5);
    mnn_model_init_weights(&m, &rng);
    mnn_model_copy_state(&m1, &m);
    float x[B * IN], z[B * K], p[B * K], p1[B * K], q[B * K];
    fill_sym(x, NELEM(x), 3);
    mnn_model_logits(&m, x, B, z);
    mnn_model_predict(&m, x, B, p);
    mnn_model_predict(&m1, x, B, p1);
    mnn_softmax(q, z, B, K);
    check(!memcmp(p1, q, sizeof q), "temperature 1: predict is mnn_softmax of "
                                    "mnn_model_logits, bit for bit");
    fails_t f = {0, 0};
    double ref[K];
    for (size_t b = 0; b < B; b++) {
        double zd[K];
        for (size_t k = 0; k < K; k++)
            zd[k] = z[b * K + k];
        ref_softmax_t(ref, zd, K, 2.5);
        for (size_t k = 0; k < K; k++)
            if (!close_to(p[b * K + k], ref[k], 1e-5, 1e-7))
                fail_at(&f, "p[%zu][%zu] = %.9g, softmax(z/T) = %.9g", b, k,
                        (double)p[b * K + k], ref[k]);
    }
    check(f.bad == 0, "temperature 2.5: predict is softmax(logits / 2.5)");
    int flatter = 1;
    for (size_t b = 0; b < B; b++)
        flatter &= mnn_confidence(p + b * K, K, MNN_CRIT_MAXPROB) <
                   mnn_confidence(p1 + b * K, K, MNN_CRIT_MAXPROB);
    check(flatter, "temperature 2.5: every maximum probability is lower than at 1");
    mnn_model_free(&m);
    mnn_model_free(&m1);
}

/* predict_exit against predict and against each record by hand */
static void exit_mixed(mnn_model_t *m, const float *x, size_t B, mnn_crit_t crit)
{
    const size_t K = m->spec.outputs, E = m->spec.nexits, IN = m->spec.input;
    const double T = m->spec.temperature;
    double *ref = calloc(B * (E + 1) * K, sizeof(double));
    float *out = xalloc(B * K), *out2 = xalloc(B * K), *conf = xalloc(B);
    uint8_t *taken = calloc(B, 1), *taken2 = calloc(B, 1);
    if (!ref || !taken || !taken2)
        exit(99);
    for (size_t b = 0; b < B; b++) {
        ref_heads(m, x + b * IN, T, ref + b * (E + 1) * K);
        float pf[16];
        for (size_t k = 0; k < K; k++)
            pf[k] = (float)ref[b * (E + 1) * K + k];
        conf[b] = mnn_confidence(pf, K, crit);
    }
    /* the median confidence of exit 0: about half the records leave there */
    float *sorted = xalloc(B);
    memcpy(sorted, conf, B * sizeof(float));
    for (size_t i = 1; i < B; i++)
        for (size_t k = i; k > 0 && sorted[k - 1] > sorted[k]; k--) {
            float t = sorted[k];
            sorted[k] = sorted[k - 1];
            sorted[k - 1] = t;
        }
    float thr = (sorted[B / 2] + sorted[B / 2 - 1]) / 2;
    int rc = mnn_model_predict_exit(m, x, B, out, thr, crit, taken);
    size_t count[MNN_MAX_EXITS + 1] = {0};
    fails_t f = {0, 0};
    const double eps = 1e-5;
    for (size_t b = 0; b < B; b++) {
        size_t t = taken[b];
        if (t > E) {
            fail_at(&f, "record %zu: taken %zu > nexits", b, t);
            continue;
        }
        count[t]++;
        const double *rb = ref + b * (E + 1) * K;
        for (size_t k = 0; k < K; k++)
            if (!close_to(out[b * K + k], rb[t * K + k], 1e-5, 1e-6))
                fail_at(&f, "record %zu, head %zu: p[%zu] %.9g, by hand %.9g", b, t, k,
                        (double)out[b * K + k], rb[t * K + k]);
        /* heads before the one taken were not sure enough; the exit taken was */
        for (size_t h = 0; h <= t && h < E; h++) {
            float pf[16];
            for (size_t k = 0; k < K; k++)
                pf[k] = (float)rb[h * K + k];
            double c = mnn_confidence(pf, K, crit);
            if (h < t ? c >= thr + eps : c < thr - eps)
                fail_at(&f, "record %zu: head %zu has confidence %.9g against threshold %.9g "
                            "but the record left at %zu", b, h, c, (double)thr, t);
        }
    }
    check(rc == 0 && f.bad == 0 && count[0] > 0 && count[1] > 0 && count[E] > 0,
          "predict_exit, %s, threshold %.4f (median of exit 0): each record gets the head "
          "it leaves at, to 1e-5 (exit 0: %zu, exit 1: %zu, final: %zu)", mnn_crit_name(crit),
          (double)thr, count[0], count[1], count[E]);
    mnn_model_predict_exit(m, x, B, out2, thr, crit, taken2);
    check(!memcmp(out, out2, B * K * sizeof(float)) && !memcmp(taken, taken2, B),
          "predict_exit, %s: the same inputs give the same bytes", mnn_crit_name(crit));
    free(ref), free(out), free(out2), free(conf), free(taken), free(taken2), free(sorted);
}

/* calib.c: argmax, ECE, temperature scaling */
static void test_calib(void)
{
    const float tie[] = {0.25f, 0.5f, 0.5f, 0.1f};
    check(mnn_argmax(tie, 4) == 1 && mnn_argmax(tie, 1) == 0,
          "mnn_argmax: the first of equal largest; K 1 gives 0");

    /* hand-computed: two at 0.95 (one right), one at 1 (clamped into the
     * last bin, right), one at 0.05 (wrong), one below 0 (into bin 0) */
    mnn_ece_t e;
    memset(&e, 0, sizeof e);
    check(mnn_ece_value(&e) == 0, "ECE of nothing is 0");
    mnn_ece_add(&e, 0.95, 1);
    mnn_ece_add(&e, 0.95, 0);
    mnn_ece_add(&e, 1.0, 1);
    mnn_ece_add(&e, 0.05, 0);
    mnn_ece_add(&e, -0.5, 0);
    /* last bin: |2 - 2.9| = 0.9; bin 0: |0 - (0.05 - 0.5)| = 0.45 */
    double want = (0.9 + 0.45) / 5;
    check(e.n[MNN_ECE_BINS - 1] == 3 && e.n[0] == 2 && e.total == 5 &&
              fabs(mnn_ece_value(&e) - want) < 1e-12,
          "mnn_ece: bins, clamping and value (%.12f, want %.12f)", mnn_ece_value(&e), want);

    /* labels drawn from softmax(z / 2): the fitted temperature is near 2,
     * the NLL is lowest there, and the ECE improves on T = 1 */
    enum { N = 20000, K = 4 };
    float *z = xalloc((size_t)N * K);
    int32_t *y = malloc(N * sizeof *y);
    if (!y)
        exit(99);
    for (size_t i = 0; i < N; i++) {
        double p[K], sum = 0;
        for (size_t k = 0; k < K; k++) {
            z[i * K + k] = tsym(4);
            p[k] = exp(z[i * K + k] / 2.0);
            sum += p[k];
        }
        double u = tunif() * sum;
        size_t k = 0;
        while (k + 1 < K && (u -= p[k]) > 0)
            k++;
        y[i] = (int32_t)k;
    }
    double T = mnn_temp_fit(z, y, N, K);
    check(fabs(T - 2) < 0.1, "mnn_temp_fit recovers the temperature of the labels (%.4f, want 2)",
          T);
    double at = mnn_temp_nll(z, y, N, K, T);
    check(at <= mnn_temp_nll(z, y, N, K, T * 1.05) && at <= mnn_temp_nll(z, y, N, K, T / 1.05),
          "mnn_temp_nll is lowest at the fitted temperature");
    double e1 = mnn_temp_ece(z, y, N, K, 1), eT = mnn_temp_ece(z, y, N, K, T);
    check(eT < e1 && eT < 0.02, "mnn_temp_ece: %.4f at T = 1, %.4f at the fitted T", e1, eT);
    /* the NLL at T by hand for one record */
    double nll = 0, mx = -INFINITY, s = 0;
    for (size_t k = 0; k < K; k++)
        mx = fmax(mx, z[k] / 3.0);
    for (size_t k = 0; k < K; k++)
        s += exp(z[k] / 3.0 - mx);
    nll = mx + log(s) - z[y[0]] / 3.0;
    check(fabs(mnn_temp_nll(z, y, 1, K, 3) - nll) < 1e-9, "mnn_temp_nll of one record");
    free(z);
    free(y);
}

/* merge.c: fedavg, median, trimmed mean, refusals */
static void test_merge(void)
{
    mnn_diag_t d;
    mnn_merge_mode_t mode;
    check(mnn_merge_parse("fedavg", &mode) == 0 && mode == MNN_MERGE_FEDAVG &&
              mnn_merge_parse("median", &mode) == 0 && mode == MNN_MERGE_MEDIAN &&
              mnn_merge_parse("trimmed-mean", &mode) == 0 && mode == MNN_MERGE_TRIMMED &&
              mnn_merge_parse("mean", &mode) == MNN_EINVAL &&
              !strcmp(mnn_merge_name(MNN_MERGE_TRIMMED), "trimmed-mean"),
          "merge modes: fedavg, median, trimmed-mean by name, nothing else");
    /* five models of three values; the fifth is a bad node's (x 100) */
    const float a[] = {1, -2, 0.5f}, b[] = {2, -1, 0.25f}, c[] = {3, 0, 0},
                e[] = {4, 1, -0.25f}, bad[] = {100, 200, 50};
    const float *const x[] = {a, b, c, e, bad};
    float out[3];
    const double w[] = {1, 1, 2, 0, 0};
    mnn_merge_t avg = {MNN_MERGE_FEDAVG, 0}, med = {MNN_MERGE_MEDIAN, 0},
                tm = {MNN_MERGE_TRIMMED, 0.2};
    int rc = mnn_merge_tensor(&avg, x, w, 5, 3, out, NULL, &d);
    /* (1 + 2 + 2 * 3) / 4, (-2 - 1 + 0) / 4, (0.5 + 0.25) / 4 */
    check(rc == 0 && out[0] == 2.25f && out[1] == -0.75f && out[2] == 0.1875f,
          "fedavg: the weighted mean, a weight of 0 leaves a model out (%g %g %g)", out[0],
          out[1], out[2]);
    rc = mnn_merge_tensor(&avg, x, NULL, 4, 3, out, NULL, &d);
    check(rc == 0 && out[0] == 2.5f && out[1] == -0.5f && out[2] == 0.125f,
          "fedavg without weights: the plain mean (%g %g %g)", out[0], out[1], out[2]);
    rc = mnn_merge_tensor(&med, x, NULL, 5, 3, out, NULL, &d);
    check(rc == 0 && out[0] == 3 && out[1] == 0 && out[2] == 0.25f,
          "median of 5 with a model x 100: the middle value (%g %g %g)", out[0], out[1],
          out[2]);
    const float *const shuf[] = {e, a, c, b};
    rc = mnn_merge_tensor(&med, shuf, NULL, 4, 3, out, NULL, &d);
    check(rc == 0 && out[0] == 2.5f && out[1] == -0.5f && out[2] == 0.125f,
          "median of 4 out of order: the mean of the two middle values (%g %g %g)", out[0],
          out[1], out[2]);
    rc = mnn_merge_tensor(&tm, x, NULL, 1, 3, out, NULL, &d);
    int one_ok = rc == 0 && !memcmp(out, a, sizeof out);
    one_ok &= mnn_merge_tensor(&med, x, NULL, 1, 3, out, NULL, &d) == 0 && !memcmp(out, a, sizeof out);
    one_ok &= mnn_merge_tensor(&avg, x, w, 1, 3, out, NULL, &d) == 0 && !memcmp(out, a, sizeof out);
    check(one_ok, "one model merges into itself in every mode");
    /* trimmed-mean of 6 uneven values, trim 0.2: one dropped at each end,
     * the mean of the middle four, which is not their median */
    const float u0[] = {-50}, u1[] = {1}, u2[] = {2}, u3[] = {4}, u4[] = {9}, u5[] = {1000};
    const float *const tx[] = {u3, u5, u0, u2, u4, u1};
    rc = mnn_merge_tensor(&tm, tx, NULL, 6, 1, out, NULL, &d);
    check(rc == 0 && out[0] == 4 && mnn_merge_trimmed(6, 0.2) == 1,
          "trimmed-mean 0.2 of 6: (1 + 2 + 4 + 9) / 4 = 4 (%g)", out[0]);
    mnn_merge_t tm34 = {MNN_MERGE_TRIMMED, 0.34};
    rc = mnn_merge_tensor(&tm34, tx, NULL, 6, 1, out, NULL, &d);
    check(rc == 0 && out[0] == 3 && mnn_merge_trimmed(6, 0.34) == 2,
          "trimmed-mean 0.34 of 6: two dropped at each end, (2 + 4) / 2 = 3 (%g)", out[0]);
    /* the weights' scale does not matter: tiny, huge, ordinary */
    const double wt[] = {5e-324, 1.5e-323}, wh[] = {1e300, 3e300}, wo[] = {1, 3};
    float r1[3], r2[3], r3[3];
    rc = mnn_merge_tensor(&avg, x, wt, 2, 3, r1, NULL, &d);
    rc |= mnn_merge_tensor(&avg, x, wh, 2, 3, r2, NULL, &d);
    rc |= mnn_merge_tensor(&avg, x, wo, 2, 3, r3, NULL, &d);
    check(rc == 0 && r3[0] == 1.75f && !memcmp(r1, r3, sizeof r1) && !memcmp(r2, r3, sizeof r2),
          "fedavg weights 1:3 as denormals, near 1e300 or small integers: the same bytes "
          "(%g %g %g)", r1[0], r2[0], r3[0]);
    rc = mnn_merge_tensor(&tm, x, NULL, 5, 3, out, NULL, &d);
    /* trim 0.2 of 5: one dropped at each end, the mean of the middle three */
    check(rc == 0 && out[0] == 3 && out[1] == 0 && out[2] == 0.25f && mnn_merge_trimmed(5, 0.2) == 1,
          "trimmed-mean 0.2 of 5: the bad model dropped (%g %g %g)", out[0], out[1], out[2]);
    rc = mnn_merge_tensor(&avg, x, NULL, 5, 3, out, NULL, &d);
    check(rc == 0 && out[0] > 20, "fedavg is moved by the bad model (%g), as documented", out[0]);
    /* the order of the inputs: median and trimmed-mean do not depend on it */
    const float *const rev[] = {bad, e, c, b, a};
    float o2[3];
    int same = 1;
    for (int m = 0; m < 2; m++) {
        const mnn_merge_t *o = m ? &tm : &med;
        same &= mnn_merge_tensor(o, x, NULL, 5, 3, out, NULL, &d) == 0 &&
                mnn_merge_tensor(o, rev, NULL, 5, 3, o2, NULL, &d) == 0 &&
                !memcmp(out, o2, sizeof out);
    }
    check(same, "median and trimmed-mean: the same bytes whatever the order of the inputs");
    /* refusals */
    const float nan_v[] = {1, NAN, 0}, inf_v[] = {INFINITY, 0, 0};
    const float *const xn[] = {a, nan_v}, *const xi[] = {inf_v, a};
    mnn_merge_bad_t where = {99, 99};
    rc = mnn_merge_tensor(&med, xn, NULL, 2, 3, out, &where, &d);
    check(rc == MNN_EINVAL && where.input == 1 && where.at == 1 && strstr(d.msg, "model 2") &&
              strstr(d.msg, "not finite"),
          "a NaN in model 2: refused, naming it and where (%s)", d.msg);
    rc = mnn_merge_tensor(&avg, xi, NULL, 2, 3, out, &where, &d);
    check(rc == MNN_EINVAL && where.input == 0 && where.at == 0,
          "an infinity in model 1: refused (%s)", d.msg);
    const float big[] = {3e38f, 0, 0};
    const float *const xb[] = {big, big};
    const double wb[] = {1, 1};
    float res[3];
    rc = mnn_merge_tensor(&avg, xb, wb, 2, 3, res, &where, &d);
    check(rc == 0 && res[0] == 3e38f, "fedavg of two values near the float limit: no overflow "
          "(accumulated in double)");
    const double wneg[] = {1, -1}, wnan[] = {NAN, 1}, wzero[] = {0, 0};
    check(mnn_merge_check(&avg, wneg, 2, &d) == MNN_EINVAL &&
              mnn_merge_check(&avg, wnan, 2, &d) == MNN_EINVAL &&
              mnn_merge_check(&avg, wzero, 2, &d) == MNN_EINVAL &&
              strstr(d.msg, "sum to 0"),
          "fedavg weights that are negative, NaN or all 0: refused (%s)", d.msg);
    mnn_merge_t t5 = {MNN_MERGE_TRIMMED, 0.5}, t4 = {MNN_MERGE_TRIMMED, 0.4},
                tneg = {MNN_MERGE_TRIMMED, -0.1};
    check(mnn_merge_check(&t5, NULL, 5, &d) == MNN_EINVAL &&
              mnn_merge_check(&tneg, NULL, 5, &d) == MNN_EINVAL &&
              mnn_merge_check(&t4, NULL, 4, &d) == 0 &&
              mnn_merge_check(&t4, NULL, 2, &d) == 0 && mnn_merge_trimmed(2, 0.4) == 0 &&
              mnn_merge_check(&avg, NULL, 0, &d) == MNN_EINVAL &&
              mnn_merge_check(&avg, NULL, MNN_MERGE_MAX + 1, &d) == MNN_EINVAL,
          "trims of 0.5 or below 0, and 0 or too many models: refused");
    mnn_merge_t t3 = {MNN_MERGE_TRIMMED, 0.34};
    check(mnn_merge_check(&t3, NULL, 3, &d) == 0 && mnn_merge_trimmed(3, 0.34) == 1,
          "trimmed-mean 0.34 of 3: one dropped at each end, the median left");
    /* many inputs: fedavg of K copies of one tensor is that tensor */
    enum { KMANY = MNN_MERGE_MAX, N = 1000 };
    float *one = xalloc(N), *got = xalloc(N);
    const float **xs = calloc(KMANY, sizeof *xs);
    double *ws = calloc(KMANY, sizeof *ws);
    if (!xs || !ws)
        exit(99);
    for (size_t j = 0; j < N; j++)
        one[j] = (float)j / 7.0f - 50.0f;
    for (size_t k = 0; k < KMANY; k++)
        xs[k] = one, ws[k] = (double)(k % 5 + 1);
    int ok = 1;
    for (int m = 0; m < 3; m++) {
        mnn_merge_t o = {(mnn_merge_mode_t)m, 0.1};
        ok &= mnn_merge_tensor(&o, xs, ws, KMANY, N, got, NULL, &d) == 0 &&
              !memcmp(got, one, N * sizeof(float));
    }
    check(ok, "%d copies of one tensor merge into it in every mode", KMANY);
    free(one);
    free(got);
    free(xs);
    free(ws);
}

/* ensemble.c: averages, anytime, a single model's exits */
static void test_ensemble(void)
{
    mnn_layer_spec_t layers[] = {{6, MNN_ACT_RELU}, {3, MNN_ACT_NONE}};
    mnn_layer_spec_t other[] = {{6, MNN_ACT_RELU}, {2, MNN_ACT_NONE}};
    enum { B = 40, IN = 5, K = 3 };
    mnn_spec_t s, s2;
    exit_spec(&s, IN, K, layers, NELEM(layers), NULL, NULL, 0, 1.0f);
    exit_spec(&s2, IN, 2, other, NELEM(other), NULL, NULL, 0, 1.0f);
    mnn_model_t m[3], bad;
    mnn_rng_t rng;
    mnn_rng_seed(&rng, 17);
    for (int j = 0; j < 3; j++) {
        if (!check(mnn_model_init(&m[j], &s) == 0 && mnn_model_reserve(&m[j], B) == 0,
                   "ensemble: member %d", j))
            return;
        mnn_model_init_weights(&m[j], &rng);
    }
    if (!check(mnn_model_init(&bad, &s2) == 0, "ensemble: a model of other outputs"))
        return;
    float x[B * IN], p[3][B * K], out[B * K];
    uint8_t stage[B];
    fill_sym(x, NELEM(x), 2);
    for (int j = 0; j < 3; j++)
        mnn_model_predict(&m[j], x, B, p[j]);

    mnn_ensemble_t e;
    mnn_ensemble_init(&e);
    mnn_model_t *mp[] = {&m[0], &m[1], &m[2], &bad};
    const float w[] = {2, 1, 1}, neg[] = {1, -1, 1}, zero[] = {0, 0, 0};
    check(mnn_ensemble_set(&e, mp, w, 0) == MNN_EINVAL &&
              mnn_ensemble_set(&e, mp, w, MNN_ENSEMBLE_MAX + 1) == MNN_EINVAL &&
              mnn_ensemble_set(&e, mp, neg, 3) == MNN_EINVAL &&
              mnn_ensemble_set(&e, mp, zero, 3) == MNN_EINVAL &&
              mnn_ensemble_set(&e, mp + 1, NULL, 3) == MNN_ESHAPE,
          "mnn_ensemble_set refuses no members, too many, a negative or all-zero weighting, "
          "a member of other outputs");
    int rc = mnn_ensemble_set(&e, mp, w, 3);
    check(rc == 0 && fabs(e.w[0] - 0.5f) < 1e-7 && fabs(e.w[1] - 0.25f) < 1e-7,
          "mnn_ensemble_set normalises the weights (%g %g %g)", (double)e.w[0], (double)e.w[1],
          (double)e.w[2]);
    check(mnn_ensemble_predict(&e, x, B, out, stage) == MNN_EINVAL,
          "mnn_ensemble_predict before a reserve: MNN_EINVAL");
    check(mnn_ensemble_reserve(&e, B) == 0, "mnn_ensemble_reserve");
    check(mnn_ensemble_predict(&e, x, B + 1, out, stage) == MNN_EINVAL,
          "mnn_ensemble_predict of more records than reserved: MNN_EINVAL");

    /* plain: the weighted average, every record at the last member */
    rc = mnn_ensemble_predict(&e, x, B, out, stage);
    double err = 0;
    int st_ok = 1;
    for (size_t i = 0; i < B * K; i++) {
        double want = 0.5 * p[0][i] + 0.25 * p[1][i] + 0.25 * p[2][i];
        err = fmax(err, fabs(out[i] - want));
    }
    for (size_t i = 0; i < B; i++)
        st_ok &= stage[i] == 2;
    check(rc == 0 && err < 1e-6 && st_ok, "a plain ensemble averages by weight (max error %g)",
          err);

    /* anytime, threshold 0: everyone stops at the first member, its answer */
    e.anytime = 1;
    e.exit_t = 0;
    rc = mnn_ensemble_predict(&e, x, B, out, stage);
    st_ok = 1;
    for (size_t i = 0; i < B; i++)
        st_ok &= stage[i] == 0;
    check(rc == 0 && !memcmp(out, p[0], sizeof out) && st_ok,
          "anytime at threshold 0: the first member's answers, exactly");
    /* above any confidence: everyone goes to the end, the average */
    e.exit_t = 2;
    rc = mnn_ensemble_predict(&e, x, B, out, stage);
    err = 0;
    for (size_t i = 0; i < B * K; i++)
        err = fmax(err, fabs(out[i] - (0.5 * p[0][i] + 0.25 * p[1][i] + 0.25 * p[2][i])));
    check(rc == 0 && err < 1e-6, "anytime above any confidence: the full average (%g)", err);
    /* in between: a record stops at the first member whose running average
     * reaches the threshold, and its answer is that average */
    e.exit_t = 0.6f;
    e.crit = MNN_CRIT_MAXPROB;
    rc = mnn_ensemble_predict(&e, x, B, out, stage);
    int ok = rc == 0, stops[3] = {0, 0, 0};
    for (size_t i = 0; i < B && ok; i++) {
        double run[K] = {0}, ws = 0;
        const double wj[3] = {0.5, 0.25, 0.25};
        size_t j = 0;
        for (;; j++) {
            float avg[K];
            ws += wj[j];
            for (size_t k = 0; k < K; k++) {
                run[k] += wj[j] * p[j][i * K + k];
                avg[k] = (float)(run[k] / ws);
            }
            if (j == 2 || mnn_confidence(avg, K, MNN_CRIT_MAXPROB) >= 0.6f) {
                for (size_t k = 0; k < K; k++)
                    ok &= fabs(out[i * K + k] - avg[k]) < 1e-6;
                break;
            }
        }
        ok &= stage[i] == j;
        stops[j]++;
    }
    check(ok, "anytime at 0.6: each record stops where its running average is confident "
              "(%d, %d, %d at members 1, 2, 3)", stops[0], stops[1], stops[2]);
    check(stops[0] > 0 && stops[0] < B, "the threshold splits the records (a test that can "
                                        "tell the cases apart)");
    /* one member: the model itself */
    check(mnn_ensemble_set(&e, mp, NULL, 1) == 0 &&
              mnn_ensemble_predict(&e, x, B, out, stage) == 0 &&
              !memcmp(out, p[0], sizeof out),
          "an ensemble of one is the model");
    mnn_ensemble_free(&e);
    mnn_ensemble_free(&e); /* twice: harmless */
    for (int j = 0; j < 3; j++)
        mnn_model_free(&m[j]);
    mnn_model_free(&bad);
}

static void test_predict_exit(void)
{
    mnn_layer_spec_t layers[] = {{12, MNN_ACT_RELU}, {10, MNN_ACT_TANH},
                                 {9, MNN_ACT_RELU}, {5, MNN_ACT_NONE}};
    size_t exits[] = {0, 2};
    float weights[] = {1, 1};
    enum { B = 41, IN = 7, K = 5 };
    mnn_spec_t s;
    exit_spec(&s, IN, K, layers, NELEM(layers), exits, weights, NELEM(exits), 1.5f);
    s.input_scale = 0.5f;
    mnn_model_t m;
    if (!check(mnn_model_init(&m, &s) == 0, "predict_exit: a 7-12-10-9-5 model, exits "
                                            "[0, 2], temperature 1.5"))
        return;
    mnn_rng_t rng;
    mnn_rng_seed(&rng, 99);
    mnn_model_init_weights(&m, &rng);
    /* larger head weights: confidences spread over (0, 1), and exit 1 is
     * sure of some records exit 0 was not sure of */
    for (size_t j = 0; j < 2; j++)
        for (size_t i = 0; i < K * layers[exits[j]].units; i++)
            m.params[m.ew_off[j] + i] *= j ? 12 : 4;
    float x[B * IN], out[B * K], want[B * K];
    uint8_t taken[B];
    fill_sym(x, NELEM(x), 4);
    float *p0 = xalloc(m.nparams);
    memcpy(p0, m.params, m.nparams * sizeof(float));

    memset(taken, 0xff, sizeof taken);
    int rc = mnn_model_predict_exit(&m, x, B, out, 0, MNN_CRIT_MAXPROB, taken);
    fails_t f = {0, 0};
    double *ref = calloc(3 * K, sizeof(double));
    if (!ref)
        exit(99);
    for (size_t b = 0; b < B; b++) {
        if (taken[b] != 0)
            fail_at(&f, "record %zu: taken %u", b, taken[b]);
        ref_heads(&m, x + b * IN, 1.5, ref);
        for (size_t k = 0; k < K; k++)
            if (!close_to(out[b * K + k], ref[k], 1e-5, 1e-6))
                fail_at(&f, "record %zu: p[%zu] %.9g, exit 0 by hand %.9g", b, k,
                        (double)out[b * K + k], ref[k]);
    }
    check(rc == 0 && f.bad == 0, "predict_exit threshold 0: every record leaves at exit 0 "
                                 "with its probabilities (temperature applied)");
    free(ref);

    mnn_model_predict(&m, x, B, want);
    int all_final = 1;
    for (mnn_crit_t c = MNN_CRIT_MAXPROB; c <= MNN_CRIT_ENTROPY; c++) {
        memset(taken, 0, sizeof taken);
        rc = mnn_model_predict_exit(&m, x, B, out, 1.5f, c, taken);
        all_final &= rc == 0 && !memcmp(out, want, sizeof out);
        for (size_t b = 0; b < B; b++)
            all_final &= taken[b] == 2;
    }
    check(all_final, "predict_exit threshold 1.5: exactly mnn_model_predict's bytes, taken == "
                     "nexits, for every criterion");
    for (mnn_crit_t c = MNN_CRIT_MAXPROB; c <= MNN_CRIT_ENTROPY; c++)
        exit_mixed(&m, x, B, c);
    check(!memcmp(p0, m.params, m.nparams * sizeof(float)),
          "predict_exit leaves the parameters alone");

    /* a batch of 1 and a batch after a larger one reuse the workspace */
    rc = mnn_model_predict_exit(&m, x + 3 * IN, 1, out, 1.5f, MNN_CRIT_MARGIN, taken);
    check(rc == 0 && taken[0] == 2 && close_to(out[0], want[3 * K], 1e-5, 1e-7),
          "predict_exit of one record matches its row of the batch");

    /* without exits it is mnn_model_predict */
    mnn_model_t mn;
    mnn_spec_t sn = s;
    sn.nexits = 0;
    if (mnn_model_init(&mn, &sn) == 0) {
        memcpy(mn.params, m.params, mn.nparams * sizeof(float));
        memset(taken, 0xff, sizeof taken);
        rc = mnn_model_predict_exit(&mn, x, B, out, 0, MNN_CRIT_MAXPROB, taken);
        int same = rc == 0 && !memcmp(out, want, sizeof out);
        for (size_t b = 0; b < B; b++)
            same &= taken[b] == 0;
        check(same, "predict_exit without exits: mnn_model_predict's bytes, taken 0 == nexits");
        mnn_model_free(&mn);
    } else
        check(0, "predict_exit: model without exits");
    free(p0);
    mnn_model_free(&m);
}

/* ---- optimizers --------------------------------------------------------------- */

static int near3(const float *a, const double *b, double tol)
{
    for (int i = 0; i < 3; i++)
        if (!(fabs(a[i] - b[i]) <= tol)) {
            diag("[%d]: %.9g, expected %.9g", i, (double)a[i], b[i]);
            return 0;
        }
    return 1;
}

static void test_opt_names(void)
{
    mnn_opt_type_t t = MNN_OPT_ADAM;
    check(mnn_opt_parse("sgd", &t) == 0 && t == MNN_OPT_SGD && mnn_opt_parse("adam", &t) == 0 &&
              t == MNN_OPT_ADAM,
          "mnn_opt_parse: sgd and adam");
    check(mnn_opt_parse("Adam", &t) == MNN_EINVAL && mnn_opt_parse("", &t) == MNN_EINVAL &&
              mnn_opt_parse("sgd ", &t) == MNN_EINVAL && t == MNN_OPT_ADAM,
          "mnn_opt_parse refuses other spellings and leaves the type alone");
    check(!strcmp(mnn_opt_name(MNN_OPT_SGD), "sgd") && !strcmp(mnn_opt_name(MNN_OPT_ADAM), "adam") &&
              !strcmp(mnn_opt_name((mnn_opt_type_t)7), "?"),
          "mnn_opt_name names each type, '?' for none");
}

static void test_optim(void)
{
    /* expected values computed by hand (in double, see the formulas in
     * mini-nn.h) for w = (1, -2, 0.5), g1 = (0.5, 0.25, -1), g2 = (-0.1, 0.3, 2) */
    const float g1[3] = {0.5f, 0.25f, -1}, g2[3] = {-0.1f, 0.3f, 2};
    mnn_spec_t s;
    mnn_spec_defaults(&s);
    mnn_opt_spec_t os = s.opt;
    mnn_optim_t o;
    float w[3];

    os.type = MNN_OPT_SGD;
    os.lr = 0.1f;
    os.momentum = 0.9f;
    os.weight_decay = 0;
    memcpy(w, (float[3]){1, -2, 0.5f}, sizeof w);
    if (check(mnn_optim_init(&o, &os, 3) == 0 && o.m2 == NULL && o.step == 0 &&
                  o.m1[0] == 0 && o.m1[2] == 0,
              "mnn_optim_init(sgd): zero velocity, no second moment")) {
        mnn_optim_step(&o, w, g1);
        check(near3(w, (double[3]){0.95, -2.025, 0.6}, 1e-6) &&
                  near3(o.m1, (double[3]){0.5, 0.25, -1}, 1e-7),
              "sgd momentum 0.9, step 1: w -= lr*g");
        mnn_optim_step(&o, w, g2);
        check(near3(w, (double[3]){0.915, -2.0775, 0.49}, 1e-6) &&
                  near3(o.m1, (double[3]){0.35, 0.525, 1.1}, 1e-6) && o.step == 2,
              "sgd momentum 0.9, step 2: v = 0.9 v + g, w -= lr*v");
        mnn_optim_free(&o);
    }

    /* FedProx: prox * (w - anchor) joins the gradient; the anchor is the
     * weights at the round's start, so the first step is the plain one */
    os.prox = 0.5f;
    memcpy(w, (float[3]){1, -2, 0.5f}, sizeof w);
    if (check(mnn_optim_init(&o, &os, 3) == 0 && o.anchor && mnn_opt_buffers(&os) == 2,
              "mnn_optim_init(sgd, prox): an anchor, two buffers")) {
        check(mnn_optim_anchor(&o, w) == 0 && o.anchor[1] == -2, "mnn_optim_anchor copies w");
        mnn_optim_step(&o, w, g1);
        check(near3(w, (double[3]){0.95, -2.025, 0.6}, 1e-6), "sgd prox 0.5, step 1 at the "
              "anchor: the plain step");
        mnn_optim_step(&o, w, g2);
        check(near3(o.m1, (double[3]){0.325, 0.5125, 1.15}, 1e-6) &&
                  near3(w, (double[3]){0.9175, -2.07625, 0.485}, 1e-6),
              "sgd prox 0.5, step 2: v = 0.9 v + g + 0.5 (w - anchor)");
        mnn_optim_t c;
        mnn_opt_spec_t plain = os;
        plain.prox = 0;
        if (check(mnn_optim_init(&c, &plain, 3) == 0, "mnn_optim_init(sgd)")) {
            check(mnn_optim_copy_state(&c, &o) == MNN_ESHAPE, "copy_state: an anchor into an "
                  "optimizer without one is refused");
            mnn_optim_free(&c);
        }
        o.spec.prox = 0;
        check(mnn_optim_anchor(&o, w) == 0 && !o.anchor, "mnn_optim_anchor without prox frees "
              "the anchor");
        mnn_optim_free(&o);
    }
    os.prox = 0;

    os.weight_decay = 0.01f;
    memcpy(w, (float[3]){1, -2, 0.5f}, sizeof w);
    if (check(mnn_optim_init(&o, &os, 3) == 0, "mnn_optim_init(sgd, weight_decay)")) {
        mnn_optim_step(&o, w, g1);
        mnn_optim_step(&o, w, g2);
        check(near3(w, (double[3]){0.912151, -2.071677, 0.4884505}, 1e-6),
              "sgd momentum 0.9, weight_decay 0.01: two steps");
        mnn_optim_free(&o);
    }

    os.type = MNN_OPT_ADAM;
    os.lr = 0.01f;
    os.beta1 = 0.9f;
    os.beta2 = 0.999f;
    os.eps = 1e-8f;
    os.weight_decay = 0;
    os.momentum = 0;
    memcpy(w, (float[3]){1, -2, 0.5f}, sizeof w);
    if (check(mnn_optim_init(&o, &os, 3) == 0 && o.m1 && o.m2 && o.m2[0] == 0 && o.m2[2] == 0,
              "mnn_optim_init(adam): zero moments")) {
        mnn_optim_step(&o, w, g1);
        check(near3(w, (double[3]){0.9900000002, -2.0099999996, 0.5099999999}, 1e-6) &&
                  near3(o.m1, (double[3]){0.05, 0.025, -0.1}, 1e-7) &&
                  near3(o.m2, (double[3]){0.00025, 6.25e-05, 0.001}, 2e-8),
              "adam step 1: bias-corrected update of about lr*sign(g)");
        mnn_optim_step(&o, w, g2);
        check(near3(w, (double[3]){0.98488973957, -2.02000613038, 0.506338964653}, 1e-6) &&
                  near3(o.m1, (double[3]){0.035, 0.0525, 0.11}, 1e-7) &&
                  near3(o.m2, (double[3]){0.00025975, 0.0001524375, 0.004999}, 2e-7),
              "adam step 2 against hand-computed values");
        mnn_optim_free(&o);
    }
    os.weight_decay = 0.1f;
    memcpy(w, (float[3]){1, -2, 0.5f}, sizeof w);
    if (check(mnn_optim_init(&o, &os, 3) == 0, "mnn_optim_init(adam, weight_decay)")) {
        mnn_optim_step(&o, w, g1);
        mnn_optim_step(&o, w, g2);
        check(near3(w, (double[3]){0.983311835567, -2.01966249028, 0.506062232212}, 1e-6) &&
                  near3(o.m1, (double[3]){0.0539, 0.0144, 0.1196}, 1e-7),
              "adam weight_decay 0.1 (L2 added to the gradient): two steps");
        mnn_optim_free(&o);
    }

    /* lr_t = lr / (1 + lr_decay * t), t = updates so far */
    os = s.opt;
    os.type = MNN_OPT_SGD;
    os.lr = 0.1f;
    os.momentum = 0;
    os.lr_decay = 0.5f;
    float v = 0;
    const float one = 1;
    if (check(mnn_optim_init(&o, &os, 1) == 0, "mnn_optim_init(sgd, lr_decay)")) {
        static const double want[] = {0.1, 0.1 / 1.5, 0.1 / 2, 0.1 / 2.5, 0.1 / 3};
        int good = 1;
        for (int t = 0; t < 5; t++) {
            float lr = mnn_optim_lr(&o), before = v;
            if (!close_to(lr, want[t], 1e-6, 0)) {
                diag("mnn_optim_lr after %d steps = %.9g, expected %.9g", t, (double)lr,
                     want[t]);
                good = 0;
            }
            mnn_optim_step(&o, &v, &one);
            if (!close_to(before - v, want[t], 1e-5, 0)) {
                diag("update %d moved w by %.9g, expected %.9g", t, (double)(before - v),
                     want[t]);
                good = 0;
            }
        }
        check(good, "lr_decay 0.5: mnn_optim_lr and the steps follow lr/(1+0.5t)");
        mnn_optim_free(&o);
    }
    os.type = MNN_OPT_ADAM;
    os.lr = 0.01f;
    os.lr_decay = 1;
    os.beta1 = 0.9f;
    os.beta2 = 0.999f;
    os.eps = 1e-8f;
    v = 1;
    if (check(mnn_optim_init(&o, &os, 1) == 0, "mnn_optim_init(adam, lr_decay)")) {
        mnn_optim_step(&o, &v, &one);
        mnn_optim_step(&o, &v, &one);
        check(close_to(v, 1 - 0.01 - 0.005, 0, 1e-6) && close_to(mnn_optim_lr(&o), 0.01 / 3, 1e-6, 0),
              "adam lr_decay 1: constant gradient moves by lr, then lr/2 (w = %.9g)",
              (double)v);
        mnn_optim_free(&o);
    }
}

/* ---- rng ----------------------------------------------------------------- */

static void test_rng(void)
{
    mnn_rng_t a, b;
    /* known answers: splitmix64 seeding and xoshiro256** as published
     * (computed independently; splitmix64(0) starts 0xe220a8397b1dcdaf) */
    mnn_rng_seed(&a, 0);
    check(a.s[0] == 0xe220a8397b1dcdafULL && a.s[1] == 0x6e789e6aa1b965f4ULL &&
              a.s[2] == 0x06c45d188009454fULL && a.s[3] == 0xf88bb8a8724c81ecULL,
          "mnn_rng_seed(0): splitmix64 state");
    static const uint64_t k0[] = {0x99ec5f36cb75f2b4ULL, 0xbf6e1f784956452aULL,
                                  0x1a5f849d4933e6e0ULL, 0x6aa594f1262d2d2cULL};
    static const uint64_t k42[] = {0x15780b2e0c2ec716ULL, 0x6104d9866d113a7eULL,
                                   0xae17533239e499a1ULL, 0xecb8ad4703b360a1ULL};
    int kat = 1;
    for (int i = 0; i < 4; i++)
        kat &= mnn_rng_next(&a) == k0[i];
    mnn_rng_seed(&a, 42);
    for (int i = 0; i < 4; i++)
        kat &= mnn_rng_next(&a) == k42[i];
    check(kat, "mnn_rng_next: xoshiro256** known answers for seeds 0 and 42");

    mnn_rng_seed(&a, 12345);
    mnn_rng_seed(&b, 12345);
    int same = 1;
    for (int i = 0; i < 1000; i++)
        same &= mnn_rng_next(&a) == mnn_rng_next(&b);
    check(same, "same seed, same 1000 numbers");
    mnn_rng_t c = a; /* the state is the struct */
    same = 1;
    for (int i = 0; i < 100; i++)
        same &= mnn_rng_uniform(&a) == mnn_rng_uniform(&c);
    check(same, "a copied state continues the same sequence");
    mnn_rng_seed(&a, 1);
    mnn_rng_seed(&b, 2);
    int equal = 0;
    for (int i = 0; i < 1000; i++)
        equal += mnn_rng_next(&a) == mnn_rng_next(&b);
    check(equal == 0, "seeds 1 and 2 give different sequences (%d equal of 1000)", equal);

    enum { N = 100000 };
    mnn_rng_seed(&a, 99);
    double lo = 1, hi = 0, sum = 0, sum2 = 0;
    for (int i = 0; i < N; i++) {
        double u = mnn_rng_uniform(&a);
        lo = fmin(lo, u);
        hi = fmax(hi, u);
        sum += u;
        sum2 += u * u;
    }
    double mean = sum / N, var = sum2 / N - mean * mean;
    check(lo >= 0 && hi < 1, "mnn_rng_uniform: 100k draws in [0,1) (min %.3g, max %.17g)", lo,
          hi);
    check(fabs(mean - 0.5) < 0.005 && fabs(var - 1.0 / 12) < 0.002,
          "mnn_rng_uniform: mean %.4f (0.5), variance %.4f (0.0833)", mean, var);
    sum = sum2 = 0;
    int finite = 1;
    for (int i = 0; i < N; i++) {
        double z = mnn_rng_normal(&a);
        finite &= isfinite(z);
        sum += z;
        sum2 += z * z;
    }
    mean = sum / N;
    var = sum2 / N - mean * mean;
    check(finite && fabs(mean) < 0.02 && fabs(var - 1) < 0.03,
          "mnn_rng_normal: 100k draws, mean %.4f (0), variance %.4f (1)", mean, var);
}

/* ---- number parsing ---------------------------------------------------- */

static int pd(const char *s, double *out) { return mnn_parse_double(s, s + strlen(s), out); }
static int pf(const char *s, float *out) { return mnn_parse_float(s, s + strlen(s), out); }

static void test_parse_numbers(void)
{
    static const struct {
        const char *s;
        double v;
    } good[] = {
        {"0", 0},           {"42", 42},           {"-7", -7},
        {"+3.5", 3.5},      {"1e3", 1e3},         {"1E-2", 1e-2},
        {"-2.5e+2", -250},  {".5", .5},           {"5.", 5},
        {"007", 7},         {"0.1", 0.1},         {"-0.000123", -0.000123},
        {"123456789012345678901234567890", 123456789012345678901234567890.0},
        {"1e308", 1e308},   {"1.7976931348623157e308", 1.7976931348623157e308},
        {"4.9e-324", 4.9e-324}, {"2.2250738585072014e-308", 2.2250738585072014e-308},
        {"0.30000000000000004", 0.30000000000000004}, {"9007199254740993", 9007199254740993.0},
        {"1e22", 1e22},     {"1e23", 1e23},       {"123.456e-7", 123.456e-7},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(good); i++) {
        double v = -12345;
        int rc = pd(good[i].s, &v);
        if (rc != 0 || memcmp(&v, &good[i].v, sizeof v))
            fail_at(&f, "mnn_parse_double(\"%s\") = %d, %.17g; expected %.17g", good[i].s, rc,
                    v, good[i].v);
    }
    check(f.bad == 0, "mnn_parse_double: integers, decimals, exponents, signs, leading +");
    double nz = 1;
    check(pd("-0", &nz) == 0 && nz == 0 && signbit(nz), "mnn_parse_double(\"-0\") = -0.0");

    static const char *const bad[] = {
        "1e999", "-1e999", "1e400", "nan", "NaN", "-nan", "inf", "-inf", "+Infinity",
        "infinity", "", "1.2.3", "1e", "1e+", "1e-", " 1", "1 ", "+", "-", ".", "e5",
        "0x10", "1,5", "--1", "+-1", "1..2", "1e5.5", "12a", "1\n", "\t1", "1f", "0b1"};
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(bad); i++) {
        double v = 0;
        float fv = 0;
        int rc = pd(bad[i], &v), rcf = pf(bad[i], &fv);
        if (rc >= 0 || rcf >= 0)
            fail_at(&f, "\"%s\" accepted: double rc %d (%.17g), float rc %d (%.9g)", bad[i],
                    rc, v, rcf, (double)fv);
    }
    check(f.bad == 0, "mnn_parse_double/float reject nan, inf, 1e999, \"\", 1.2.3, 1e, \" 1\" and "
                      "other garbage (%zu strings)", NELEM(bad));

    float fv = 0;
    double dv = 0;
    check(pf("1e39", &fv) < 0 && pd("1e39", &dv) == 0 && dv == 1e39,
          "1e39: a double, but out of float range for mnn_parse_float");
    check(pf("-1e39", &fv) < 0, "mnn_parse_float rejects -1e39");
    check(pf("3.4028234e38", &fv) == 0 && fv == FLT_MAX, "mnn_parse_float(\"3.4028234e38\") = FLT_MAX");
    check(pf("0.1", &fv) == 0 && fv == 0.1f && pf("-2.5e-3", &fv) == 0 && fv == -2.5e-3f,
          "mnn_parse_float: 0.1 and -2.5e-3");

    /* [s, end) is the whole input: nothing past end is looked at */
    const char *s1 = "1.5e3xyz", *s2 = "123456", *s3 = "2e5", *s4 = "1e999",
               *s5 = "12345678901234567890123456789";
    check(mnn_parse_double(s1, s1 + 5, &dv) == 0 && dv == 1500, "range [s,end): \"1.5e3\"xyz");
    check(mnn_parse_double(s2, s2 + 3, &dv) == 0 && dv == 123, "range [s,end): \"123\"456");
    check(mnn_parse_double(s3, s3 + 2, &dv) < 0, "range [s,end): \"2e\"5 rejected");
    check(mnn_parse_double(s4, s4 + 3, &dv) == 0 && dv == 1e9, "range [s,end): \"1e9\"99");
    check(mnn_parse_double(s5, s5 + 20, &dv) == 0 && dv == 12345678901234567890.0,
          "range [s,end) on the slow path: 20 of 29 digits");
    check(mnn_parse_double(s2, s2, &dv) < 0, "empty range rejected");

    /* a finite number printed with %f can be long; it is still a number */
    char longnum[400];
    snprintf(longnum, sizeof longnum, "%f", 1e150);
    int rc = pd(longnum, &dv);
    check(rc == 0 && dv == 1e150, "mnn_parse_double: %zu-character \"%%f\" rendering of 1e150 "
                                  "(rc %d)", strlen(longnum), rc);
}

/* One random decimal string in buf. */
static void random_number(char *buf, size_t n)
{
    int kind = (int)(trng() % 6);
    if (kind == 0) { /* %.17g of a random double over the whole range */
        double d;
        do {
            uint64_t bits = trng();
            memcpy(&d, &bits, sizeof d);
        } while (!isfinite(d));
        snprintf(buf, n, "%.17g", d);
    } else if (kind == 1) { /* %.9g of a random float */
        float fl;
        do {
            uint32_t bits = (uint32_t)trng();
            memcpy(&fl, &bits, sizeof fl);
        } while (!isfinite(fl));
        snprintf(buf, n, "%.9g", (double)fl);
    } else if (kind == 2) { /* short %g: the fast path */
        double d = (tunif() - 0.5) * pow(10, (double)(int)(trng() % 61) - 30);
        snprintf(buf, n, "%.*g", 1 + (int)(trng() % 15), d);
    } else if (kind == 3) { /* pixel-like values */
        snprintf(buf, n, "%.*f", (int)(trng() % 8), tunif() * 255);
    } else { /* random digit strings with a point and an exponent */
        size_t k = 0;
        int digits = 1 + (int)(trng() % 25), point = (int)(trng() % (unsigned)(digits + 2)) - 1;
        if (trng() % 3 == 0)
            buf[k++] = trng() % 2 ? '-' : '+';
        for (int i = 0; i < digits; i++) {
            if (i == point)
                buf[k++] = '.';
            buf[k++] = (char)('0' + trng() % 10);
        }
        if (trng() % 2)
            k += (size_t)snprintf(buf + k, n - k, "%c%d", trng() % 2 ? 'e' : 'E',
                                  (int)(trng() % 81) - 40);
        buf[k] = 0;
    }
}

static void test_parse_exact(void)
{
    enum { N = 100000 };
    fails_t f = {0, 0}, ff = {0, 0};
    char buf[128];
    for (int i = 0; i < N; i++) {
        random_number(buf, sizeof buf);
        char *end;
        errno = 0;
        double ref = strtod(buf, &end);
        if (*end) {
            fail_at(&f, "test bug: strtod stopped early on \"%s\"", buf);
            continue;
        }
        double v = 0;
        int rc = pd(buf, &v);
        if (!isfinite(ref)) {
            if (rc >= 0)
                fail_at(&f, "\"%s\": strtod overflows, mnn_parse_double gives %.17g", buf, v);
        } else if (rc != 0 || memcmp(&v, &ref, sizeof v))
            fail_at(&f, "\"%s\": mnn_parse_double rc %d, %.17g (%a); strtod %.17g (%a)", buf,
                    rc, v, v, ref, ref);
        float fref = strtof(buf, NULL), fl = 0;
        rc = pf(buf, &fl);
        if (!isfinite(fref)) {
            if (rc >= 0)
                fail_at(&ff, "\"%s\": strtof overflows, mnn_parse_float gives %.9g", buf,
                        (double)fl);
        } else if (rc != 0 || memcmp(&fl, &fref, sizeof fl))
            fail_at(&ff, "\"%s\": mnn_parse_float rc %d, %.9g; strtof %.9g", buf, rc,
                    (double)fl, (double)fref);
    }
    check(f.bad == 0, "mnn_parse_double == strtod (C locale), bit for bit, on %d random "
                      "decimal strings (%zu differ)", N, f.bad);
    check(ff.bad == 0, "mnn_parse_float == strtof on the same strings (%zu differ)", ff.bad);
}

/* ---- records ------------------------------------------------------------- */

static int parse_rec(mnn_record_fmt_t *fmt, const char *line, float *x, float *label,
                     mnn_diag_t *d)
{
    d->msg[0] = 0;
    return mnn_record_parse(fmt, line, strlen(line), x, label, d);
}

static int same_floats(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* s with control characters as C escapes, for TAP lines. */
static const char *printable(char *buf, size_t n, const char *s)
{
    size_t k = 0;
    for (; *s && k + 5 < n; s++) {
        if (*s == '\r' || *s == '\t' || *s == '\n') {
            buf[k++] = '\\';
            buf[k++] = *s == '\r' ? 'r' : *s == '\t' ? 't' : 'n';
        } else
            buf[k++] = *s;
    }
    buf[k] = 0;
    return buf;
}

/* Expects an error whose message contains `want`. */
static void rec_error(mnn_record_fmt_t fmt, const char *line, const char *want)
{
    float x[8], label = 0;
    mnn_diag_t d;
    char pl[128], pw[128], pm[600];
    int rc = parse_rec(&fmt, line, x, &label, &d);
    if (!check(rc < 0 && contains(d.msg, want), "mnn_record_parse(\"%s\") fails: \"%s\"",
               printable(pl, sizeof pl, line), printable(pw, sizeof pw, want)))
        diag("rc %d, message \"%s\"", rc, printable(pm, sizeof pm, d.msg));
}

static void test_records(void)
{
    const mnn_record_fmt_t base = {MNN_FMT_UNKNOWN, 0, 3, 1, 4};
    mnn_record_fmt_t fmt = base;
    float x[8], label = -1;
    mnn_diag_t d;

    int rc = parse_rec(&fmt, "2,0.5,-1,3e2", x, &label, &d);
    check(rc == 0 && fmt.fmt == MNN_FMT_DENSE && fmt.sep == ',' && label == 2 &&
              same_floats(x, (float[3]){0.5f, -1, 300}, 3),
          "dense comma record: label and features; format decided");
    rc = parse_rec(&fmt, "3,1,2,3\r", x, &label, &d);
    check(rc == 0 && label == 3 && same_floats(x, (float[3]){1, 2, 3}, 3),
          "dense: a trailing \\r is accepted");
    fmt = base;
    rc = parse_rec(&fmt, "1\t2.5\t-0\t4", x, &label, &d);
    check(rc == 0 && fmt.fmt == MNN_FMT_DENSE && fmt.sep == '\t' && label == 1 &&
              same_floats(x, (float[3]){2.5f, 0, 4}, 3),
          "dense tab record");
    rc = parse_rec(&fmt, "0\t7\t8\t9\r", x, &label, &d);
    check(rc == 0 && label == 0 && same_floats(x, (float[3]){7, 8, 9}, 3),
          "dense tab record with a trailing \\r");

    fmt = base;
    fmt.has_label = 0;
    rc = parse_rec(&fmt, "1,2,3", x, &label, &d);
    check(rc == 0 && same_floats(x, (float[3]){1, 2, 3}, 3), "dense record without a label");
    fmt = base;
    fmt.classes = 0;
    rc = parse_rec(&fmt, "-1.5,1,2,3", x, &label, &d);
    check(rc == 0 && label == -1.5f, "dense record with a real label (classes 0)");

    fmt = base;
    rc = parse_rec(&fmt, "1 1:0.5 3:2", x, &label, &d);
    check(rc == 0 && fmt.fmt == MNN_FMT_SPARSE && label == 1 &&
              same_floats(x, (float[3]){0.5f, 0, 2}, 3),
          "sparse libsvm record with a label");
    x[0] = x[1] = x[2] = 99;
    rc = parse_rec(&fmt, "0 2:7", x, &label, &d);
    check(rc == 0 && label == 0 && same_floats(x, (float[3]){0, 7, 0}, 3),
          "sparse: absent features are zero");
    rc = parse_rec(&fmt, "3  1:1\t3:-3 \r", x, &label, &d);
    check(rc == 0 && label == 3 && same_floats(x, (float[3]){1, 0, -3}, 3),
          "sparse: extra blanks and a trailing \\r");
    rc = parse_rec(&fmt, "2", x, &label, &d);
    check(rc == 0 && label == 2 && same_floats(x, (float[3]){0, 0, 0}, 3),
          "sparse: a record with no pairs in a sparse stream");
    fmt = base;
    fmt.has_label = 0;
    rc = parse_rec(&fmt, "1:1 3:3", x, &label, &d);
    check(rc == 0 && fmt.fmt == MNN_FMT_SPARSE && same_floats(x, (float[3]){1, 0, 3}, 3),
          "sparse record without a label");

    /* errors */
    mnn_record_fmt_t sparse = base, dense = base;
    sparse.fmt = MNN_FMT_SPARSE;
    dense.fmt = MNN_FMT_DENSE;
    dense.sep = ',';
    rec_error(base, "1 0:1", "index 0");
    rec_error(base, "1 2:1 2:3", "not ascending");
    rec_error(base, "1 3:1 2:1", "not ascending");
    rec_error(base, "1 4:1", "exceeds");
    rec_error(base, "1 x:1", "not a positive integer");
    rec_error(base, "1 1:abc", "pair 1: 'abc' is not a number");
    rec_error(base, "1 1:1 2:nan", "pair 2: 'nan' is not finite");
    rec_error(sparse, "7 1:1", "out of range 0..3");
    rec_error(sparse, "1,2,3,4", "dense (comma-separated) record in a sparse stream");
    rec_error(base, "1,2,3", "3 fields, expected 4");
    rec_error(base, "1,2,3,4,5", "5 fields, expected 4");
    rec_error(base, "1,2,3,4,5,6", "6 fields, expected 4");
    rec_error(base, "1,2,,4", "field 3: '' is not a number");
    rec_error(base, "1,abc,2,3", "field 2: 'abc' is not a number");
    rec_error(base, "1,2,inf,3", "field 3: 'inf' is not finite");
    rec_error(base, "4,1,2,3", "out of range 0..3");
    rec_error(base, "-1,1,2,3", "out of range 0..3");
    rec_error(base, "1.5,1,2,3", "not a class id");
    rec_error(base, "nan,1,2,3", "not finite");
    rec_error(dense, "1 1:2 2:3", "sparse (idx:value) record in a dense stream");
    rec_error(base, "1,2,3,4\r\r", "field 4: '4\r' is not a number");

    /* lines are [line, line+len), not strings: parse copies without a NUL
     * in buffers of exactly len bytes (ASan sees any read past the end) */
    static const struct {
        const char *line;
        size_t len;
        float x[3], label;
    } raw[] = {{"1,2,3,4999", 7, {2, 3, 4}, 1},
               {"2,0.5,-1.25,123456789012345678901234\r", 37, {0.5f, -1.25f, 1.23456789e23f}, 2},
               {"3 1:1 3:0.12345678901234567890123", 31, {1, 0, 0.123456789f}, 3},
               {"0 2:5e-3\r", 9, {0, 5e-3f, 0}, 0}};
    fails_t fr = {0, 0};
    for (size_t i = 0; i < NELEM(raw); i++) {
        char *buf = malloc(raw[i].len);
        if (!buf)
            exit(99);
        memcpy(buf, raw[i].line, raw[i].len);
        mnn_record_fmt_t rf = base;
        float rx[3] = {9, 9, 9}, rl = 9;
        rc = mnn_record_parse(&rf, buf, raw[i].len, rx, &rl, &d);
        if (rc != 0 || rl != raw[i].label || !same_floats(rx, raw[i].x, 3))
            fail_at(&fr, "record %zu: rc %d, label %g, x %.9g %.9g %.9g", i, rc, (double)rl,
                    (double)rx[0], (double)rx[1], (double)rx[2]);
        free(buf);
    }
    check(fr.bad == 0, "mnn_record_parse reads only [line, line+len) (exact-size buffers)");
    static const char *const nums[] = {"7", "-0.5", "1e-3", "12345678901234567890.5", "nan",
                                       "inf", "1e999", "0.000000000000000000000000001"};
    fr = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(nums); i++) {
        size_t n = strlen(nums[i]);
        char *buf = malloc(n);
        if (!buf)
            exit(99);
        memcpy(buf, nums[i], n);
        double v1 = 0, v2 = 0;
        int r1 = mnn_parse_double(buf, buf + n, &v1), r2 = pd(nums[i], &v2);
        if (r1 != r2 || (r1 == 0 && v1 != v2))
            fail_at(&fr, "\"%s\" without a NUL: rc %d, %.17g; with: rc %d, %.17g", nums[i], r1,
                    v1, r2, v2);
        free(buf);
    }
    check(fr.bad == 0, "mnn_parse_double reads only [s, end) (exact-size buffers)");
}

/* ---- line reader ---------------------------------------------------------- */

/* Reads all lines of fd and compares them with the lines of data[0,len). */
static int lr_compare(int fd, const char *data, size_t len, size_t max_line, const char *what)
{
    mnn_linereader_t lr;
    if (mnn_lr_init(&lr, fd, max_line) != 0)
        return check(0, "%s: mnn_lr_init", what);
    size_t pos = 0, nlines = 0;
    int good = 1;
    for (;;) {
        const char *line;
        size_t n;
        int rc = mnn_lr_next(&lr, &line, &n);
        if (rc == MNN_EOF)
            break;
        if (rc != 0) {
            diag("%s: line %zu: mnn_lr_next = %d", what, nlines + 1, rc);
            good = 0;
            break;
        }
        nlines++;
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t want = nl ? (size_t)(nl - (data + pos)) : len - pos;
        if (pos >= len || n != want || memcmp(line, data + pos, n)) {
            diag("%s: line %zu differs (length %zu, expected %zu)", what, nlines, n, want);
            good = 0;
            break;
        }
        pos += want + (nl ? 1 : 0);
        if (lr.lineno != nlines) {
            diag("%s: lineno %llu after %zu lines", what, (unsigned long long)lr.lineno,
                 nlines);
            good = 0;
            break;
        }
    }
    if (good && pos != len) {
        diag("%s: stopped at byte %zu of %zu", what, pos, len);
        good = 0;
    }
    const char *line;
    size_t n;
    if (good && mnn_lr_next(&lr, &line, &n) != MNN_EOF) {
        diag("%s: a second MNN_EOF expected", what);
        good = 0;
    }
    mnn_lr_free(&lr);
    return check(good, "%s: %zu lines, %zu bytes read back exactly", what, nlines, len);
}

/* A child process writes data into a pipe in random chunks. */
static int pipe_feed(const char *data, size_t len, pid_t *pid)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    *pid = fork();
    if (*pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (*pid == 0) {
        close(fds[0]);
        size_t at = 0;
        while (at < len) {
            size_t chunk = 1 + trng() % 70000;
            if (chunk > len - at)
                chunk = len - at;
            ssize_t w = write(fds[1], data + at, chunk);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                _exit(1);
            at += (size_t)w;
        }
        _exit(0);
    }
    close(fds[1]);
    return fds[0];
}

static void test_linereader(void)
{
    /* > 3 MiB with lines longer than the 1 MiB buffer, empty lines, \r, and
     * a last line without '\n' */
    size_t cap = 8u << 20, len = 0;
    char *data = malloc(cap);
    if (!data)
        exit(99);
    for (size_t i = 0; len < (3u << 20) + 500000; i++) {
        size_t L = i % 50 == 7 ? 300000 : i % 50 == 23 ? 1200000 : i % 50 == 41 ? 0
                                                                                : trng() % 300;
        for (size_t k = 0; k < L; k++)
            data[len++] = (char)('!' + (i + k) % 90);
        if (L && i % 5 == 0)
            data[len - 1] = '\r';
        data[len++] = '\n';
    }
    const char *last = "the last line has no newline";
    memcpy(data + len, last, strlen(last));
    len += strlen(last);

    char path[128];
    tpath(path, sizeof path, "lines.txt");
    if (write_bytes(path, data, len) == 0) {
        int fd = open(path, O_RDONLY);
        lr_compare(fd, data, len, 0, "mnn_lr_next on a file");
        close(fd);
    } else
        check(0, "write %s", path);
    pid_t pid;
    int fd = pipe_feed(data, len, &pid);
    if (fd >= 0) {
        lr_compare(fd, data, len, 2u << 20, "mnn_lr_next on a pipe fed in random chunks");
        close(fd);
        int status = 0;
        waitpid(pid, &status, 0);
    } else
        check(0, "pipe and fork");

    /* readiness */
    tpath(path, sizeof path, "ab.txt");
    write_bytes(path, "a\nb\n", 4);
    fd = open(path, O_RDONLY);
    mnn_linereader_t lr;
    const char *line = NULL;
    size_t n = 0;
    if (fd >= 0 && mnn_lr_init(&lr, fd, 0) == 0) {
        int r0 = mnn_lr_ready(&lr);
        int rc1 = mnn_lr_next(&lr, &line, &n);
        int ok1 = rc1 == 0 && n == 1 && line[0] == 'a';
        int r1 = mnn_lr_ready(&lr);
        int rc2 = mnn_lr_next(&lr, &line, &n);
        int ok2 = rc2 == 0 && n == 1 && line[0] == 'b';
        int rc3 = mnn_lr_next(&lr, &line, &n);
        int r3 = mnn_lr_ready(&lr);
        check(r0 == 0 && ok1 && r1 == 1 && ok2 && rc3 == MNN_EOF && r3 == 1,
              "mnn_lr_ready: 0 before reading, 1 with a whole line buffered, 1 at end "
              "(%d %d %d)", r0, r1, r3);
        mnn_lr_free(&lr);
    } else
        check(0, "mnn_lr_init on %s", path);
    if (fd >= 0)
        close(fd);

    /* max_line */
    struct {
        const char *what;
        size_t len100; /* a line of this many x's */
        int newline;
        int want;
    } cases[] = {{"a line of exactly max_line bytes is accepted", 100, 1, 0},
                 {"a last line (no \\n) of exactly max_line bytes is accepted", 100, 0, 0},
                 {"a line of max_line+1 bytes is MNN_EOVERFLOW", 101, 1, MNN_EOVERFLOW},
                 {"a 200-byte last line without \\n is MNN_EOVERFLOW", 200, 0, MNN_EOVERFLOW}};
    for (size_t c = 0; c < NELEM(cases); c++) {
        char buf[512];
        size_t k = (size_t)snprintf(buf, sizeof buf, "short\n");
        memset(buf + k, 'x', cases[c].len100);
        k += cases[c].len100;
        if (cases[c].newline)
            buf[k++] = '\n';
        tpath(path, sizeof path, "max.txt");
        write_bytes(path, buf, k);
        fd = open(path, O_RDONLY);
        if (fd < 0 || mnn_lr_init(&lr, fd, 100) != 0) {
            check(0, "max_line: %s (setup)", cases[c].what);
            continue;
        }
        int rc1 = mnn_lr_next(&lr, &line, &n);
        int rc2 = mnn_lr_next(&lr, &line, &n);
        check(rc1 == 0 && rc2 == cases[c].want && (rc2 != 0 || n == cases[c].len100) &&
                  lr.lineno == 2,
              "max_line 100: %s (rc %d, lineno %llu)", cases[c].what, rc2,
              (unsigned long long)lr.lineno);
        mnn_lr_free(&lr);
        close(fd);
    }
    /* a long line still incomplete when the limit is passed */
    {
        size_t big = 3u << 20;
        memset(data, 'y', big);
        data[big] = '\n';
        memcpy(data + big + 1, "z\n", 2);
        tpath(path, sizeof path, "long.txt");
        write_bytes(path, data, big + 3);
        fd = open(path, O_RDONLY);
        if (fd >= 0 && mnn_lr_init(&lr, fd, (3u << 20) / 2) == 0) {
            int rc = mnn_lr_next(&lr, &line, &n);
            check(rc == MNN_EOVERFLOW, "max_line 1.5 MiB: a 3 MiB line is MNN_EOVERFLOW (rc %d)",
                  rc);
            mnn_lr_free(&lr);
        } else
            check(0, "max_line 1.5 MiB: setup");
        if (fd >= 0)
            close(fd);
    }
    /* read errors */
    fd = open(tmpdir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0 && mnn_lr_init(&lr, fd, 0) == 0) {
        int rc = mnn_lr_next(&lr, &line, &n);
        check(rc == MNN_EIO && lr.err == EISDIR,
              "mnn_lr_next on a directory: MNN_EIO with lr.err = EISDIR (rc %d, err %d)", rc,
              lr.err);
        mnn_lr_free(&lr);
    } else
        check(0, "open a directory");
    if (fd >= 0)
        close(fd);
    free(data);
}

/* ---- the file system (fs.c) ------------------------------------------------- */

static int exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

static int is_regular(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* 1 if path is a regular file (or what it links to) holding exactly text */
static int file_is(const char *path, const char *text)
{
    size_t n = 0;
    char *buf = slurp(path, &n);
    int same = buf && n == strlen(text) && !memcmp(buf, text, n);
    free(buf);
    return same;
}

static int not_dots(const struct dirent *de)
{
    return strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
}

/* The names in dir (without . and ..), sorted, joined by ' '; "?" if dir
 * cannot be read. */
static const char *dir_list(const char *dir, char *buf, size_t size)
{
    struct dirent **nl;
    int n = scandir(dir, &nl, not_dots, alphasort);
    snprintf(buf, size, "%s", n < 0 ? "?" : "");
    for (int i = 0; i < n; i++) {
        size_t at = strlen(buf);
        snprintf(buf + at, size - at, "%s%s", i ? " " : "", nl[i]->d_name);
        free(nl[i]);
    }
    if (n >= 0)
        free(nl);
    return buf;
}

/* Removes path and everything below it with nftw, for cleaning up. */
static void rm_rf(const char *path)
{
    if (exists(path))
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Runs fn(ctx) in a child process, which an alarm ends should it block:
 * the child's exit status, or -1 when it did not exit (killed, or fork
 * failed). */
static int in_child(int (*fn)(void *), void *ctx)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        alarm(30); /* a guard against blocking, not a delay */
        _exit(fn(ctx) & 0x7f);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int child_read_fifo(void *ctx)
{
    char *out = (char *)1;
    size_t len;
    mnn_diag_t d = {""};
    errno = EACCES; /* left over from an earlier call: not what the message is about */
    int rc = mnn_read_file(ctx, 100, &out, &len, &d);
    if (rc < 0 && out == NULL && contains(d.msg, ctx) && !contains(d.msg, strerror(EACCES)))
        return 0;
    diag("mnn_read_file of a fifo: rc %d, \"%s\"", rc, d.msg);
    return 1;
}

static void test_fs_read(void)
{
    const size_t maxes[] = {0, 1, 100, 4095, 4096, 4097, 8191, 8192, 12289, 100000};
    const size_t biggest = 100001;
    char path[128];
    unsigned char *data = malloc(biggest);
    if (!data) {
        check(0, "test_fs_read: out of memory");
        return;
    }
    /* no zero byte: the terminating NUL is the one mnn_read_* adds */
    for (size_t i = 0; i < biggest; i++)
        data[i] = (unsigned char)(1 + (i * 31 + i / 251) % 255);
    tpath(path, sizeof path, "read.bin");
    fails_t fails[3] = {{0, 0}, {0, 0}, {0, 0}};
    const char *how_name[3] = {"mnn_read_file", "mnn_read_fd of the file", "mnn_read_fd of a pipe"};
    size_t cases = 0;
    for (size_t k = 0; k < NELEM(maxes); k++)
        for (int delta = -1; delta <= 1; delta++) {
            const size_t max = maxes[k];
            if (delta < 0 && max == 0)
                continue;
            const size_t n = delta < 0 ? max - 1 : max + (size_t)delta;
            cases++;
            if (write_bytes(path, data, n) < 0) {
                fail_at(&fails[0], "write %zu bytes", n);
                continue;
            }
            for (int how = 0; how < 3; how++) {
                char *out = (char *)1;
                size_t len = 12345;
                mnn_diag_t d = {""};
                int rc = MNN_EIO, fd;
                pid_t pid = -1;
                if (how == 0)
                    rc = mnn_read_file(path, max, &out, &len, &d);
                else if (how == 1 && (fd = open(path, O_RDONLY | O_CLOEXEC)) >= 0) {
                    rc = mnn_read_fd(fd, "read.bin", max, &out, &len, &d);
                    close(fd);
                } else if (how == 2 && (fd = pipe_feed((const char *)data, n, &pid)) >= 0) {
                    rc = mnn_read_fd(fd, "pipe", max, &out, &len, &d);
                    close(fd); /* the writer may die of SIGPIPE: it was told to stop */
                    waitpid(pid, NULL, 0);
                }
                if (n <= max) {
                    if (rc != 0 || out == NULL || out == (char *)1 || len != n ||
                        memcmp(out, data, n) || out[n] != 0)
                        fail_at(&fails[how], "%s: %zu bytes, max %zu: rc %d, len %zu (\"%s\")",
                                how_name[how], n, max, rc, len, d.msg);
                } else if (rc != MNN_EOVERFLOW || out != NULL || !d.msg[0])
                    fail_at(&fails[how], "%s: %zu bytes, max %zu: rc %d, out %p (\"%s\")",
                            how_name[how], n, max, rc, (void *)out, d.msg);
                if (rc == 0 && out != (char *)1)
                    free(out);
            }
        }
    for (int how = 0; how < 3; how++)
        check(fails[how].bad == 0,
              "%s: max-1 and max bytes read whole and NUL-terminated, max+1 MNN_EOVERFLOW and "
              "no buffer (%zu sizes, max 0 to 100000)", how_name[how], cases);

    /* SIZE_MAX: no cap at all */
    {
        char *out = NULL;
        size_t len = 0;
        mnn_diag_t d = {""};
        write_bytes(path, data, 10);
        int rc = mnn_read_file(path, SIZE_MAX, &out, &len, &d);
        if (!check(rc == 0 && out && len == 10 && !memcmp(out, data, 10) && out[10] == 0,
                   "mnn_read_file with max SIZE_MAX reads a 10-byte file"))
            diag("rc %d, len %zu, \"%s\"", rc, len, d.msg);
        if (rc == 0)
            free(out);
        pid_t pid;
        int fd = pipe_feed((const char *)data, 5000, &pid);
        out = NULL;
        d.msg[0] = 0;
        rc = fd >= 0 ? mnn_read_fd(fd, "pipe", SIZE_MAX, &out, &len, &d) : -1;
        if (fd >= 0) {
            close(fd);
            waitpid(pid, NULL, 0);
        }
        if (!check(rc == 0 && out && len == 5000 && !memcmp(out, data, 5000),
                   "mnn_read_fd with max SIZE_MAX reads 5000 bytes from a pipe"))
            diag("rc %d, \"%s\"", rc, d.msg);
        if (rc == 0)
            free(out);
    }
    free(data);

    /* what mnn_read_file refuses */
    {
        char *out = (char *)1;
        size_t len;
        mnn_diag_t d = {""};
        errno = EACCES; /* left over from an earlier call, as it often is */
        int rc = mnn_read_file(tmpdir, 1 << 20, &out, &len, &d);
        check(rc == MNN_EIO && out == NULL && contains(d.msg, tmpdir) &&
                  contains(d.msg, "directory") && !contains(d.msg, strerror(EACCES)),
              "mnn_read_file refuses a directory, saying so, not with a stale errno (rc %d, \"%s\")", rc, d.msg);
        if (rc == 0)
            free(out);
        char fifo[128];
        tpath(fifo, sizeof fifo, "read.fifo");
        if (mkfifo(fifo, 0600) == 0) {
            check(in_child(child_read_fifo, fifo) == 0,
                  "mnn_read_file refuses a fifo at once (no writer, nothing read), naming it, not with a "
                  "stale errno");
            unlink(fifo);
        } else
            check(0, "mkfifo %s", fifo);
        char missing[128];
        tpath(missing, sizeof missing, "no-such-file");
        out = (char *)1;
        rc = mnn_read_file(missing, 100, &out, &len, &d);
        check(rc == MNN_EIO && out == NULL && contains(d.msg, missing),
              "mnn_read_file of a missing file: MNN_EIO naming it (\"%s\")", d.msg);
    }
}

static volatile sig_atomic_t usr1_seen;
static int usr1_ack = -1;

/* counts, and tells the process that sent it that it was handled */
static void on_usr1(int sig)
{
    (void)sig;
    usr1_seen++;
    if (usr1_ack >= 0) {
        const char c = 1;
        ssize_t r = write(usr1_ack, &c, 1);
        (void)r;
    }
}

static void test_fs_write_all(void)
{
    const size_t n = (size_t)3 << 20;
    unsigned char *data = malloc(n);
    int fds[2], ack[2];
    if (!data || pipe(fds) != 0 || pipe(ack) != 0) {
        check(0, "test_fs_write_all: setup");
        free(data);
        return;
    }
    for (size_t i = 0; i < n; i++)
        data[i] = (unsigned char)(i * 7 + (i >> 13));
    /* Without SA_RESTART, a signal cuts a write short once it has moved
     * bytes, and fails it with EINTR before.  The reader stops reading,
     * so that the writer blocks on a full pipe, and sends two signals,
     * each once the one before was handled: the first ends a write that
     * filled the pipe, the second mostly lands on the write after it,
     * which has moved nothing; then it reads 64 KiB, and so on. */
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGUSR1, &sa, &old);
    usr1_seen = 0;
    usr1_ack = ack[1];
    const pid_t parent = getpid();
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[1]);
        close(ack[1]);
        unsigned char buf[8192];
        size_t got = 0;
        int good = 1;
        for (;;) {
            for (int s = 0; s < 2; s++) {
                char c;
                kill(parent, SIGUSR1);
                while (read(ack[0], &c, 1) < 0 && errno == EINTR)
                    ;
            }
            size_t chunk = 0;
            ssize_t r = 1;
            while (chunk < ((size_t)64 << 10)) {
                r = read(fds[0], buf, 1 + (got * 13) % sizeof buf);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    break;
                for (ssize_t i = 0; i < r; i++)
                    if (got + (size_t)i >= n || buf[i] != data[got + (size_t)i])
                        good = 0;
                got += (size_t)r;
                chunk += (size_t)r;
            }
            if (r <= 0)
                break;
        }
        _exit(good && got == n ? 0 : 1);
    }
    close(fds[0]);
    close(ack[0]);
    int rc = pid > 0 ? mnn_write_all(fds[1], data, n) : MNN_EIO;
    int e = errno;
    close(fds[1]);
    int status = -1;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    sigaction(SIGUSR1, &old, NULL);
    usr1_ack = -1;
    close(ack[1]);
    if (!check(rc == 0 && pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
               "mnn_write_all: 3 MiB into a pipe, the writer interrupted by signals while it "
               "blocks (short writes, EINTR): every byte arrives, in order (%d signals)",
               (int)usr1_seen))
        diag("rc %d (%s), reader status %d", rc, strerror(e), status);

    int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        errno = 0;
        rc = mnn_write_all(fd, data, 100);
        e = errno;
        close(fd);
        check(rc == MNN_EIO && e == ENOSPC, "mnn_write_all to /dev/full: MNN_EIO, errno ENOSPC "
                                            "(rc %d, %s)", rc, strerror(e));
    } else
        printf("ok %u - mnn_write_all to /dev/full # SKIP no /dev/full\n", ++n_tests);
    if (pipe(fds) == 0) {
        struct sigaction ign, oldp;
        memset(&ign, 0, sizeof ign);
        ign.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &ign, &oldp);
        close(fds[0]);
        errno = 0;
        rc = mnn_write_all(fds[1], data, 100);
        e = errno;
        close(fds[1]);
        sigaction(SIGPIPE, &oldp, NULL);
        check(rc == MNN_EIO && e == EPIPE,
              "mnn_write_all into a pipe nobody reads: MNN_EIO, errno EPIPE (rc %d)", rc);
    }
    free(data);
}

/* out/{f1, f2, sub/f3}: what a link points to, which must survive */
static void make_outside(const char *out)
{
    char p[256];
    mkdir(out, 0755);
    snprintf(p, sizeof p, "%s/f1", out);
    write_bytes(p, "one", 3);
    snprintf(p, sizeof p, "%s/f2", out);
    write_bytes(p, "two", 3);
    snprintf(p, sizeof p, "%s/sub", out);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/sub/f3", out);
    write_bytes(p, "three", 5);
}

static int outside_intact(const char *out)
{
    char p[256], l[128];
    snprintf(p, sizeof p, "%s/sub", out);
    if (strcmp(dir_list(out, l, sizeof l), "f1 f2 sub") || strcmp(dir_list(p, l, sizeof l), "f3"))
        return 0;
    snprintf(p, sizeof p, "%s/f1", out);
    int good = file_is(p, "one");
    snprintf(p, sizeof p, "%s/f2", out);
    good &= file_is(p, "two");
    snprintf(p, sizeof p, "%s/sub/f3", out);
    return good & file_is(p, "three");
}

/* base, base/d, base/d/d, ...: `levels` directories, each with a file f;
 * deepest receives the last. */
static int make_chain(const char *base, int levels, char *deepest, size_t size)
{
    char f[512];
    snprintf(deepest, size, "%s", base);
    for (int i = 0; i < levels; i++) {
        if (i) {
            size_t at = strlen(deepest);
            snprintf(deepest + at, size - at, "/d");
        }
        snprintf(f, sizeof f, "%s/f", deepest);
        if (mkdir(deepest, 0755) != 0 || write_bytes(f, "x", 1) != 0)
            return -1;
    }
    return 0;
}

static void test_fs_remove(void)
{
    char root[128], out[160], t[200], p[600], l[256];
    tpath(root, sizeof root, "rm");
    mkdir(root, 0755);
    snprintf(out, sizeof out, "%s/out", root);
    make_outside(out);

    /* a nested tree of files, directories, a fifo, an empty directory */
    snprintf(t, sizeof t, "%s/tree", root);
    int setup = mkdir(t, 0755);
    const char *dirs[] = {"a", "a/b", "a/b/c", "a/empty", "e"};
    for (size_t i = 0; i < NELEM(dirs); i++) {
        snprintf(p, sizeof p, "%s/%s", t, dirs[i]);
        setup |= mkdir(p, 0755);
        snprintf(p, sizeof p, "%s/%s.file", t, dirs[i]);
        setup |= write_bytes(p, "data", 4);
    }
    snprintf(p, sizeof p, "%s/a/b/c/fifo", t);
    setup |= mkfifo(p, 0600);
    int rc = mnn_remove_tree(t);
    check(setup == 0 && rc == 0 && !exists(t),
          "mnn_remove_tree removes a nested tree of files, directories and a fifo (rc %d)", rc);

    /* a tree holding links to the outside: links go, the outside stays */
    setup = mkdir(t, 0755);
    snprintf(p, sizeof p, "%s/sub", t);
    setup |= mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/dirlink", t);
    setup |= symlink(out, p);
    snprintf(p, sizeof p, "%s/sub/rel-dirlink", t);
    setup |= symlink("../../out", p);
    snprintf(p, sizeof p, "%s/sub/filelink", t);
    snprintf(l, sizeof l, "%s/f1", out);
    setup |= symlink(l, p);
    snprintf(p, sizeof p, "%s/dangling", t);
    setup |= symlink("no/such/place", p);
    rc = mnn_remove_tree(t);
    check(setup == 0 && rc == 0 && !exists(t) && outside_intact(out),
          "mnn_remove_tree of a tree with links to outside files and directories: the tree "
          "goes, what the links name stays (rc %d)", rc);

    /* the path itself a link to a directory */
    snprintf(t, sizeof t, "%s/toplink", root);
    setup = symlink(out, t);
    rc = mnn_remove_tree(t);
    check(setup == 0 && rc == 0 && !exists(t) && outside_intact(out),
          "mnn_remove_tree of a link to a directory: only the link goes (rc %d)", rc);
    snprintf(t, sizeof t, "%s/filelink", root);
    snprintf(l, sizeof l, "%s/f2", out);
    setup = symlink(l, t);
    rc = mnn_remove_tree(t);
    check(setup == 0 && rc == 0 && !exists(t) && outside_intact(out),
          "mnn_remove_tree of a link to a file: only the link goes (rc %d)", rc);
    snprintf(t, sizeof t, "%s/plain", root);
    write_bytes(t, "x", 1);
    rc = mnn_remove_tree(t);
    check(rc == 0 && !exists(t), "mnn_remove_tree of a regular file unlinks it");

    snprintf(t, sizeof t, "%s/absent", root);
    check(mnn_remove_tree(t) == 0, "mnn_remove_tree of a missing path: 0");
    snprintf(t, sizeof t, "%s/absent/below/it", root);
    check(mnn_remove_tree(t) == 0, "mnn_remove_tree of a path below a missing directory: 0");

    /* mnn_remove_at, relative to a directory descriptor */
    int dfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    snprintf(t, sizeof t, "%s/at", root);
    snprintf(p, sizeof p, "%s/at/x", root);
    setup = mkdir(t, 0755) | mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/at/x/y", root);
    setup |= write_bytes(p, "y", 1);
    snprintf(p, sizeof p, "%s/at/x/link", root);
    setup |= symlink(out, p);
    snprintf(p, sizeof p, "%s/atlink", root);
    setup |= symlink("out", p);
    rc = dfd >= 0 ? mnn_remove_at(dfd, "at") : -1;
    int rc2 = dfd >= 0 ? mnn_remove_at(dfd, "atlink") : -1;
    int rc3 = dfd >= 0 ? mnn_remove_at(dfd, "never-was") : -1;
    check(setup == 0 && rc == 0 && rc2 == 0 && rc3 == 0 && !exists(t) && !exists(p) &&
              outside_intact(out),
          "mnn_remove_at: a tree and a link to a directory go, the outside stays, a missing "
          "name is 0 (rc %d, %d, %d)", rc, rc2, rc3);
    if (dfd >= 0)
        close(dfd);

    /* depth: 16 levels are removed, 17 are refused and the deepest stays */
    char deepest[512];
    snprintf(t, sizeof t, "%s/deep16", root);
    setup = make_chain(t, 16, deepest, sizeof deepest);
    rc = mnn_remove_tree(t);
    check(setup == 0 && rc == 0 && !exists(t),
          "mnn_remove_tree removes a tree 16 directories deep (rc %d)", rc);
    snprintf(t, sizeof t, "%s/deep17", root);
    setup = make_chain(t, 17, deepest, sizeof deepest);
    snprintf(p, sizeof p, "%s/f", deepest);
    rc = mnn_remove_tree(t);
    check(setup == 0 && rc == MNN_EIO && exists(t) && exists(deepest) && file_is(p, "x"),
          "mnn_remove_tree of a tree 17 directories deep: MNN_EIO, and the 17th directory "
          "with its file stays (rc %d)", rc);
    rm_rf(t);
    snprintf(t, sizeof t, "%s/deep100", root);
    setup = make_chain(t, 100, deepest, sizeof deepest);
    rc = mnn_remove_tree(t);
    check(setup == 0 && rc == MNN_EIO && exists(deepest),
          "mnn_remove_tree of a tree 100 directories deep: MNN_EIO (rc %d)", rc);
    rm_rf(t);

    /* a trailing slash resolves a link: still it must not be followed */
    char out2[160];
    snprintf(out2, sizeof out2, "%s/out2", root);
    make_outside(out2);
    snprintf(t, sizeof t, "%s/slashlink", root);
    setup = symlink(out2, t);
    size_t tl = strlen(t);
    snprintf(t + tl, sizeof t - tl, "/");
    rc = mnn_remove_tree(t);
    if (!check(setup == 0 && outside_intact(out2),
               "mnn_remove_tree(\"LINK/\"), a link to a directory with a trailing slash: what the "
               "link names stays (rc %d)", rc))
        diag("left in the directory the link names: \"%s\"", dir_list(out2, l, sizeof l));
    rm_rf(root);
}

static void test_fs_rename(void)
{
    char dir[128], p[256], q[256], link[256], l[128];
    tpath(dir, sizeof dir, "rn");
    int setup = mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/a", dir);
    setup |= write_bytes(p, "A", 1);
    snprintf(p, sizeof p, "%s/b", dir);
    setup |= write_bytes(p, "B", 1);
    snprintf(p, sizeof p, "%s/da", dir);
    setup |= mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/da/inside", dir);
    setup |= write_bytes(p, "I", 1);
    snprintf(p, sizeof p, "%s/db", dir); /* empty: rename(2) would replace it */
    setup |= mkdir(p, 0755);
    snprintf(link, sizeof link, "%s/dl", dir);
    setup |= symlink("nowhere", link);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!check(setup == 0 && dfd >= 0, "mnn_rename_noreplace: setup"))
        return;

    int rc = mnn_rename_noreplace(dfd, "a", dfd, "a2");
    snprintf(p, sizeof p, "%s/a", dir);
    snprintf(q, sizeof q, "%s/a2", dir);
    check(rc == 0 && !exists(p) && file_is(q, "A"), "mnn_rename_noreplace: a file onto a free "
                                                      "name (rc %d)", rc);
    rc = mnn_rename_noreplace(dfd, "da", dfd, "da2");
    snprintf(p, sizeof p, "%s/da", dir);
    snprintf(q, sizeof q, "%s/da2/inside", dir);
    check(rc == 0 && !exists(p) && file_is(q, "I"),
          "mnn_rename_noreplace: a directory onto a free name (rc %d)", rc);

    static const struct {
        const char *from, *to, *what;
    } taken[] = {
        {"a2", "b", "a file onto a file"},
        {"a2", "db", "a file onto an empty directory"},
        {"da2", "db", "a directory onto an empty directory"},
        {"da2", "b", "a directory onto a file"},
        {"a2", "dl", "a file onto a dangling link"},
        {"da2", "dl", "a directory onto a dangling link"},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(taken); i++) {
        rc = mnn_rename_noreplace(dfd, taken[i].from, dfd, taken[i].to);
        char target[64] = "";
        ssize_t tn = readlink(link, target, sizeof target - 1);
        if (tn > 0)
            target[tn] = 0;
        snprintf(p, sizeof p, "%s/a2", dir);
        snprintf(q, sizeof q, "%s/b", dir);
        int intact = file_is(p, "A") && file_is(q, "B") && !strcmp(target, "nowhere");
        snprintf(p, sizeof p, "%s/da2", dir);
        intact &= !strcmp(dir_list(p, l, sizeof l), "inside");
        snprintf(p, sizeof p, "%s/db", dir);
        intact &= !strcmp(dir_list(p, l, sizeof l), "");
        if (rc != MNN_EEXIST || !intact)
            fail_at(&f, "%s: rc %d, %s", taken[i].what, rc, intact ? "intact" : "changed");
    }
    check(f.bad == 0 && !strcmp(dir_list(dir, l, sizeof l), "a2 b da2 db dl"),
          "mnn_rename_noreplace onto a file, a directory or a dangling link: MNN_EEXIST, "
          "both untouched (%zu cases)", NELEM(taken));
    /* across directories, and with AT_FDCWD */
    snprintf(p, sizeof p, "%s/da2/inside", dir);
    snprintf(q, sizeof q, "%s/moved", dir);
    rc = mnn_rename_noreplace(AT_FDCWD, p, dfd, "moved");
    check(rc == 0 && file_is(q, "I") && !exists(p),
          "mnn_rename_noreplace from AT_FDCWD and a path to a directory descriptor (rc %d)", rc);
    close(dfd);
    rm_rf(dir);
}

static int child_lock(void *ctx)
{
    int fd = 12345;
    mnn_diag_t d = {""};
    int rc = mnn_lock_dir(ctx, &fd, &d);
    if (rc == 0)
        return fd >= 0 ? 0 : 3;
    if (rc == MNN_EBUSY && fd == -1 && contains(d.msg, ctx))
        return 1;
    diag("child: mnn_lock_dir rc %d, fd %d, \"%s\"", rc, fd, d.msg);
    return 2;
}

static void test_fs_lock(void)
{
    char dir[128], missing[160];
    mnn_diag_t d = {""};
    tpath(dir, sizeof dir, "lockme");
    mkdir(dir, 0755);
    int fd = -1;
    int rc = mnn_lock_dir(dir, &fd, &d);
    if (!check(rc == 0 && fd >= 0, "mnn_lock_dir takes the lock (rc %d)", rc)) {
        diag("%s", d.msg);
        return;
    }
    int child = in_child(child_lock, dir);
    check(child == 1, "mnn_lock_dir from another process while it is held: MNN_EBUSY at once, "
                      "naming the directory (child %d)", child);
    close(fd);
    child = in_child(child_lock, dir);
    check(child == 0, "mnn_lock_dir from another process once the holder closed its fd: 0 "
                      "(child %d)", child);
    rc = mnn_lock_dir(dir, &fd, &d);
    check(rc == 0 && fd >= 0, "mnn_lock_dir again in this process (rc %d)", rc);
    if (rc == 0)
        close(fd);
    snprintf(missing, sizeof missing, "%s/absent", dir);
    fd = 12345;
    d.msg[0] = 0;
    rc = mnn_lock_dir(missing, &fd, &d);
    check(rc == MNN_EIO && fd == -1 && contains(d.msg, missing),
          "mnn_lock_dir of a missing directory: MNN_EIO, fd -1 (\"%s\")", d.msg);
    rmdir(dir);
}

static int child_lock_file(void *ctx)
{
    int fd = 12345;
    mnn_diag_t d = {""};
    int rc = mnn_lock_file(ctx, &fd, &d);
    if (rc == 0) {
        mnn_unlock_file(ctx, fd);
        return fd >= 0 ? 0 : 3;
    }
    if (rc == MNN_EBUSY && fd == -1 && contains(d.msg, ctx) && contains(d.msg, ".lock"))
        return 1;
    diag("child: mnn_lock_file rc %d, fd %d, \"%s\"", rc, fd, d.msg);
    return 2;
}

/* contend: take and give back the lock `rounds` times, counting in the
 * shared holders[0] how many hold it at once; 0, or 1 if two ever did */
static int contend(const char *path, volatile int *holders, int rounds)
{
    long spins = 0;
    for (int i = 0; i < rounds;) {
        int fd;
        mnn_diag_t d = {""};
        int rc = mnn_lock_file(path, &fd, &d);
        if (rc == MNN_EBUSY) {
            if (++spins > 100000000L) /* a bound, not a time */
                return 2;
            continue;
        }
        if (rc < 0) {
            diag("contend: rc %d \"%s\"", rc, d.msg);
            return 3;
        }
        int now = __atomic_add_fetch(holders, 1, __ATOMIC_SEQ_CST);
        sched_yield(); /* a chance for another holder to show */
        int later = __atomic_load_n(holders, __ATOMIC_SEQ_CST);
        __atomic_sub_fetch(holders, 1, __ATOMIC_SEQ_CST);
        mnn_unlock_file(path, fd);
        if (now != 1 || later != 1)
            return 1;
        i++;
    }
    return 0;
}

static void test_fs_lock_file(void)
{
    char dir[128], path[160], lock[170], p[200];
    mnn_diag_t d = {""};
    tpath(dir, sizeof dir, "lockfile");
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/s", dir);
    snprintf(lock, sizeof lock, "%s.lock", path);
    int fd = -1;
    int rc = mnn_lock_file(path, &fd, &d);
    if (!check(rc == 0 && fd >= 0 && exists(lock) && !exists(path),
               "mnn_lock_file takes the lock on path.lock, and leaves path alone (rc %d)", rc)) {
        diag("%s", d.msg);
        rm_rf(dir);
        return;
    }
    int child = in_child(child_lock_file, path);
    check(child == 1, "mnn_lock_file from another process while it is held: MNN_EBUSY at once, "
                      "naming the file and its lock (child %d)", child);
    mnn_unlock_file(path, fd);
    check(!exists(lock), "mnn_unlock_file removes path.lock");
    child = in_child(child_lock_file, path);
    check(child == 0 && !exists(lock), "mnn_lock_file from another process once it was given "
                                       "back: 0, and its own lock file gone again (child %d)",
          child);
    /* a lock file left by a holder that died: taken over */
    close(open(lock, O_WRONLY | O_CREAT, 0644));
    rc = mnn_lock_file(path, &fd, &d);
    check(rc == 0, "a lock file nobody holds (its holder died) is taken over (rc %d)", rc);
    if (rc == 0)
        mnn_unlock_file(path, fd);
    /* never through a link, never anything but a plain file */
    static const char *const odd[] = {"link", "dir", "fifo"};
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(odd); i++) {
        snprintf(p, sizeof p, "%s/outside", dir);
        close(open(p, O_WRONLY | O_CREAT, 0644));
        int made = i == 0 ? symlink(p, lock) : i == 1 ? mkdir(lock, 0755) : mkfifo(lock, 0644);
        fd = 12345;
        d.msg[0] = 0;
        rc = made == 0 ? mnn_lock_file(path, &fd, &d) : 99;
        struct stat sb;
        int intact = lstat(p, &sb) == 0 && sb.st_size == 0 && lstat(lock, &sb) == 0;
        if (rc != MNN_EIO || fd != -1 || !contains(d.msg, lock) || !intact)
            fail_at(&f, "%s: rc %d, fd %d, \"%s\"", odd[i], rc, fd, d.msg);
        if (i == 1)
            rmdir(lock);
        else
            unlink(lock);
    }
    check(f.bad == 0, "a link, a directory or a fifo at path.lock: MNN_EIO naming it, left as "
                      "it is, nothing written through it (%zu cases)", NELEM(odd));
    /* four processes taking and giving back the lock: never two at once, so
     * a lock taken on a file its holder removed is never trusted */
    volatile int *holders =
        mmap(NULL, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!check(holders != MAP_FAILED, "mmap a shared counter"))
        return;
    *holders = 0;
    enum { KIDS = 4, ROUNDS = 500 };
    pid_t kids[KIDS];
    fflush(stdout);
    for (int i = 0; i < KIDS; i++)
        if ((kids[i] = fork()) == 0) {
            alarm(120); /* a guard against a hang, not a delay */
            _exit(contend(path, holders, ROUNDS));
        }
    int bad = 0, st;
    for (int i = 0; i < KIDS; i++) {
        if (kids[i] < 0 || waitpid(kids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
            bad++;
    }
    check(bad == 0 && !exists(lock), "%d processes x %d rounds of mnn_lock_file / "
                                     "mnn_unlock_file: never two holders at once, no lock file "
                                     "left (%d failed)", KIDS, ROUNDS, bad);
    munmap((void *)holders, sizeof(int));
    rm_rf(dir);
}

typedef struct {
    const char *text;
    int rc;
} wctx_t;

static int put_text(void *ctx, FILE *f)
{
    const wctx_t *w = ctx;
    fputs(w->text, f);
    return w->rc;
}

static void test_fs_atomic(void)
{
    char dir[128], f[200], p[256], outside[160], l[256];
    mnn_diag_t d = {""};
    tpath(dir, sizeof dir, "at");
    mkdir(dir, 0755);
    snprintf(f, sizeof f, "%s/f", dir);
    wctx_t w = {"hello\n", 0};
    int rc = mnn_write_atomic(f, put_text, &w, &d);
    check(rc == 0 && file_is(f, "hello\n") && !strcmp(dir_list(dir, l, sizeof l), "f"),
          "mnn_write_atomic writes a new file, nothing else is left (rc %d, dir: %s)", rc, l);
    w.text = "world\n";
    rc = mnn_write_atomic(f, put_text, &w, &d);
    check(rc == 0 && file_is(f, "world\n"), "mnn_write_atomic replaces a file (rc %d)", rc);
    w = (wctx_t){"half a line", MNN_ECANCELED};
    d.msg[0] = 0;
    rc = mnn_write_atomic(f, put_text, &w, &d);
    check(rc == MNN_ECANCELED && file_is(f, "world\n") && !strcmp(dir_list(dir, l, sizeof l), "f") &&
              contains(d.msg, f),
          "mnn_write_atomic: a callback error is returned, the old file is untouched, no "
          "temporary is left (rc %d, dir: %s, \"%s\")", rc, l, d.msg);
    char big[8192];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = 0;
    w = (wctx_t){big, MNN_EINVAL};
    rc = mnn_write_atomic(f, put_text, &w, &d);
    check(rc == MNN_EINVAL && file_is(f, "world\n") && !strcmp(dir_list(dir, l, sizeof l), "f"),
          "mnn_write_atomic: a callback that fails after 8 KiB leaves no temporary (rc %d, "
          "dir: %s)", rc, l);

    /* a link planted at the target: replaced, never written through */
    tpath(outside, sizeof outside, "at-outside.txt");
    write_bytes(outside, "outside\n", 8);
    snprintf(p, sizeof p, "%s/lnk", dir);
    int setup = symlink(outside, p);
    w = (wctx_t){"new\n", 0};
    rc = mnn_write_atomic(p, put_text, &w, &d);
    check(setup == 0 && rc == 0 && is_regular(p) && file_is(p, "new\n") &&
              file_is(outside, "outside\n"),
          "mnn_write_atomic over a link to a file: a regular file replaces the link, its old "
          "target is untouched (rc %d)", rc);
    char never[160];
    tpath(never, sizeof never, "at-never.txt");
    snprintf(p, sizeof p, "%s/dangling", dir);
    setup = symlink(never, p);
    rc = mnn_write_atomic(p, put_text, &w, &d);
    check(setup == 0 && rc == 0 && is_regular(p) && file_is(p, "new\n") && !exists(never),
          "mnn_write_atomic over a dangling link: a regular file replaces it, nothing is "
          "created where it pointed (rc %d)", rc);

    w = (wctx_t){"into the void\n", 0};
    rc = mnn_write_atomic("/dev/null", put_text, &w, &d);
    struct stat sb;
    check(rc == 0 && stat("/dev/null", &sb) == 0 && S_ISCHR(sb.st_mode),
          "mnn_write_atomic to /dev/null (not a regular file) writes it directly (rc %d)", rc);
    w.rc = MNN_ECANCELED;
    rc = mnn_write_atomic("/dev/null", put_text, &w, &d);
    check(rc == MNN_ECANCELED, "mnn_write_atomic to /dev/null returns a callback error (rc %d)",
          rc);

    w.rc = 0;
    d.msg[0] = 0;
    rc = mnn_write_atomic("/dev/full", put_text, &w, &d);
    check(rc == MNN_EIO && contains(d.msg, "/dev/full"),
          "mnn_write_atomic to /dev/full: MNN_EIO naming it (rc %d, \"%s\")", rc, d.msg);

    w = (wctx_t){"x\n", 0};
    snprintf(p, sizeof p, "%s/no-such-dir/file", dir);
    d.msg[0] = 0;
    rc = mnn_write_atomic(p, put_text, &w, &d);
    check(rc < 0 && contains(d.msg, p) && !strcmp(dir_list(dir, l, sizeof l), "dangling f lnk"),
          "mnn_write_atomic into a missing directory: an error naming the path (rc %d, \"%s\")",
          rc, d.msg);
    snprintf(p, sizeof p, "%s/f/below-a-file", dir);
    d.msg[0] = 0;
    rc = mnn_write_atomic(p, put_text, &w, &d);
    check(rc < 0 && contains(d.msg, p) && file_is(f, "world\n"),
          "mnn_write_atomic below a regular file: an error naming the path (rc %d, \"%s\")", rc,
          d.msg);
    d.msg[0] = 0;
    rc = mnn_write_atomic(dir, put_text, &w, &d);
    check(rc < 0 && contains(d.msg, dir) && !strcmp(dir_list(dir, l, sizeof l), "dangling f lnk"),
          "mnn_write_atomic of a directory: an error, the directory untouched (rc %d, \"%s\")",
          rc, d.msg);

    /* a bare name: the temporary goes into the current directory */
    int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cwd >= 0 && chdir(dir) == 0) {
        w = (wctx_t){"here\n", 0};
        rc = mnn_write_atomic("bare.txt", put_text, &w, &d);
        int ok = rc == 0 && file_is("bare.txt", "here\n");
        w.rc = MNN_ECANCELED;
        int rc2 = mnn_write_atomic("bare.txt", put_text, &w, &d);
        ok &= rc2 == MNN_ECANCELED && file_is("bare.txt", "here\n");
        if (fchdir(cwd) != 0)
            diag("fchdir back: %s", strerror(errno));
        check(ok && !strcmp(dir_list(dir, l, sizeof l), "bare.txt dangling f lnk"),
              "mnn_write_atomic of a bare name in the current directory (rc %d, %d, dir: %s)",
              rc, rc2, l);
    } else
        check(0, "chdir %s", dir);
    if (cwd >= 0)
        close(cwd);
    unlink(outside);
    rm_rf(dir);
}

/* ---- spec --------------------------------------------------------------- */

static int spec_equal(const mnn_spec_t *a, const mnn_spec_t *b)
{
#define SAME(field)                                                                      \
    if (a->field != b->field) {                                                          \
        diag("spec field %s differs", #field);                                           \
        return 0;                                                                        \
    }
    SAME(input) SAME(input_scale) SAME(normalize) SAME(outputs) SAME(loss) SAME(nlayers)
    for (size_t i = 0; i < a->nlayers; i++) {
        SAME(layers[i].units) SAME(layers[i].act)
    }
    SAME(nexits) SAME(temperature)
    for (size_t j = 0; j < a->nexits; j++) {
        SAME(exits[j])
        if ((a->exit_weights ? a->exit_weights[j] : 1) != (b->exit_weights ? b->exit_weights[j] : 1)) {
            diag("spec field exit_weights[%zu] differs", j);
            return 0;
        }
    }
    SAME(opt.type) SAME(opt.lr) SAME(opt.momentum) SAME(opt.weight_decay) SAME(opt.beta1)
    SAME(opt.beta2) SAME(opt.eps) SAME(opt.lr_decay) SAME(batch) SAME(seed)
#undef SAME
    return 1;
}

static int load_str(mnn_spec_t *s, const char *text, mnn_diag_t *d)
{
    d->msg[0] = 0;
    return mnn_spec_load_string(s, text, strlen(text), "spec.yaml", d);
}

static void spec_roundtrip(const char *what, const char *text)
{
    mnn_spec_t s, s2, s3;
    mnn_diag_t d;
    int rc = load_str(&s, text, &d);
    if (!check(rc == 0, "%s: loads", what)) {
        diag("%s", d.msg);
        return;
    }
    for (int ind = 0; ind <= 4; ind += 4) {
        char *buf = NULL;
        size_t blen = 0;
        FILE *f = open_memstream(&buf, &blen);
        rc = f ? mnn_spec_write(&s, f, ind) : -1;
        if (f)
            fclose(f);
        int lrc = rc == 0 ? mnn_spec_load_string(&s2, buf, blen, "written.yaml", &d) : -1;
        if (check(rc == 0 && lrc == 0 && spec_equal(&s, &s2),
                  "%s: mnn_spec_write (indent %d) and load again: same spec", what, ind))
            mnn_spec_free(&s2);
        else
            diag("rc %d, load %d %s\n%s", rc, lrc, lrc ? d.msg : "", buf ? buf : "");
        free(buf);
    }
    rc = mnn_spec_copy(&s3, &s);
    if (check(rc == 0 && s3.layers != s.layers && spec_equal(&s, &s3), "%s: mnn_spec_copy",
              what))
        mnn_spec_free(&s3);
    mnn_spec_free(&s);
}

static void spec_error(const char *text, const char *where, const char *want)
{
    mnn_spec_t s;
    mnn_diag_t d;
    int rc = load_str(&s, text, &d);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "spec.yaml:%s: ", where);
    if (!check(rc < 0 && !strncmp(d.msg, prefix, strlen(prefix)) && contains(d.msg, want),
               "spec error at %s: %s", where, want))
        diag("rc %d, message \"%s\"", rc, d.msg);
    if (rc == 0)
        mnn_spec_free(&s);
}

/* exits, exit_weights, temperature */
/* mnn_atomic_*: the steps of an atomic write */
static void test_fs_atomic_steps(void)
{
    char dir[128], f[200], l[256];
    mnn_diag_t d = {""};
    mnn_atomic_t a;
    tpath(dir, sizeof dir, "atsteps");
    mkdir(dir, 0755);
    snprintf(f, sizeof f, "%s/out", dir);
    int rc = mnn_atomic_open(&a, f, &d);
    int ok = rc == 0 && a.fd >= 0 && a.tmp && !strcmp(a.dir, dir) &&
             !strncmp(a.tmp, dir, strlen(dir)) && access(f, F_OK) != 0 && access(a.tmp, F_OK) == 0;
    check(ok, "mnn_atomic_open: a temporary file beside the target, the target not there yet "
              "(rc %d, tmp %s)", rc, rc == 0 ? a.tmp : "-");
    if (rc == 0) {
        ok = mnn_write_all(a.fd, "one\n", 4) == 0;
        rc = mnn_atomic_commit(&a, &d);
        check(ok && rc == 0 && file_is(f, "one\n") && !strcmp(dir_list(dir, l, sizeof l), "out") &&
                  a.fd == -1 && !a.tmp,
              "mnn_atomic_commit renames it into place, nothing else left (rc %d, dir: %s)", rc,
              l);
    }
    rc = mnn_atomic_open(&a, f, &d);
    if (check(rc == 0, "mnn_atomic_open over an existing file (rc %d)", rc)) {
        mnn_write_all(a.fd, "two\n", 4);
        mnn_atomic_abort(&a);
        check(file_is(f, "one\n") && !strcmp(dir_list(dir, l, sizeof l), "out") && !a.tmp,
              "mnn_atomic_abort removes the temporary file, the old one untouched (dir: %s)", l);
    }
    /* two at once: each its own temporary name */
    mnn_atomic_t b;
    rc = mnn_atomic_open(&a, f, &d);
    int rc2 = mnn_atomic_open(&b, f, &d);
    if (check(rc == 0 && rc2 == 0 && strcmp(a.tmp, b.tmp), "two writers get two temporary names")) {
        mnn_write_all(a.fd, "A\n", 2);
        mnn_write_all(b.fd, "B\n", 2);
        rc = mnn_atomic_commit(&a, &d);
        rc2 = mnn_atomic_commit(&b, &d);
        check(rc == 0 && rc2 == 0 && file_is(f, "B\n") && !strcmp(dir_list(dir, l, sizeof l), "out"),
              "the last commit wins whole, nothing is left (dir: %s)", l);
    }
    /* where it cannot be */
    snprintf(f, sizeof f, "%s/no-such-dir/out", dir);
    rc = mnn_atomic_open(&a, f, &d);
    check(rc == MNN_EIO && contains(d.msg, f) && a.fd == -1 && !a.tmp,
          "mnn_atomic_open in a missing directory: MNN_EIO naming the path (\"%s\")", d.msg);
    /* a name in the current directory: its directory is "." */
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd) && chdir(dir) == 0) {
        rc = mnn_atomic_open(&a, "bare", &d);
        if (check(rc == 0 && !strcmp(a.dir, "."), "a bare name's directory is . (rc %d)", rc))
            check(mnn_atomic_commit(&a, &d) == 0 && file_is("bare", ""), "and it commits");
        if (chdir(cwd) != 0)
            diag("chdir back: %s", strerror(errno));
    }
}

/* mnn_hash: XXH3-64, streamed or at once */
static void test_hash(void)
{
    char hex[17];
    /* XXH3-64 of the empty input, from the xxHash reference */
    mnn_hash_hex(mnn_hash64("", 0), hex);
    check(!strcmp(hex, "2d06800538d394c2"), "mnn_hash64 of nothing is XXH3's (%s)", hex);
    mnn_hash_hex(0xabcULL, hex);
    check(!strcmp(hex, "0000000000000abc"), "mnn_hash_hex: 16 lowercase digits (%s)", hex);
    unsigned char buf[5000];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(trng() >> 56);
    const uint64_t whole = mnn_hash64(buf, sizeof buf);
    mnn_hash_t *h = mnn_hash_new();
    if (!check(h != NULL, "mnn_hash_new"))
        return;
    int same = 1;
    /* any split, 0-byte pieces included, gives the one-shot hash */
    for (size_t step = 1; step <= 4096; step *= 4) {
        mnn_hash_reset(h);
        for (size_t i = 0; i < sizeof buf; i += step) {
            mnn_hash_update(h, buf + i, i + step <= sizeof buf ? step : sizeof buf - i);
            mnn_hash_update(h, buf, 0);
        }
        same &= mnn_hash_digest(h) == whole;
    }
    check(same, "mnn_hash_update in pieces of 1 to 4096 bytes equals mnn_hash64");
    mnn_hash_reset(h);
    mnn_hash_update(h, buf, 100);
    uint64_t mid = mnn_hash_digest(h);
    mnn_hash_update(h, buf + 100, sizeof buf - 100);
    check(mid == mnn_hash64(buf, 100) && mnn_hash_digest(h) == whole,
          "mnn_hash_digest does not end the stream");
    mnn_hash_free(h);
    mnn_hash_free(NULL);
    /* mnn_hash_fd agrees */
    char p[200];
    uint64_t n = 0;
    tpath(p, sizeof p, "hashme");
    write_bytes(p, buf, sizeof buf);
    char want[17];
    mnn_hash_hex(whole, want);
    int rc = mnn_hash_file(p, hex, &n);
    check(rc == 0 && n == sizeof buf && !strcmp(hex, want), "mnn_hash_file: %s over %llu bytes",
          hex, (unsigned long long)n);
}

static void test_spec_exits(void)
{
#define H3 "input: 4\nclasses: 3\n" \
           "layers: [{dense: 5, activation: relu}, {dense: 4, activation: tanh}, {dense: 3}]\n"
    mnn_spec_t s;
    mnn_diag_t d;
    int rc = load_str(&s, H3 "exits: [0, 1]\nexit_weights: [0.5, 0]\ntemperature: 2.5\n", &d);
    if (check(rc == 0 && s.nexits == 2 && s.exits[0] == 0 && s.exits[1] == 1 &&
                  s.exit_weights[0] == 0.5f && s.exit_weights[1] == 0 && s.temperature == 2.5f,
              "spec: exits [0, 1], exit_weights [0.5, 0], temperature 2.5"))
        mnn_spec_free(&s);
    else
        diag("rc %d: %s", rc, d.msg);
    rc = load_str(&s, H3 "exits:\n  - 1\n", &d);
    if (check(rc == 0 && s.nexits == 1 && s.exits[0] == 1 && s.exit_weights &&
                  s.exit_weights[0] == 1 && s.temperature == 1,
              "spec: exit_weights default to 1, temperature to 1"))
        mnn_spec_free(&s);
    else
        diag("rc %d: %s", rc, d.msg);
    rc = load_str(&s, H3 "exits: []\nexit_weights: []\n", &d);
    if (check(rc == 0 && s.nexits == 0 && s.exits == NULL && s.exit_weights == NULL,
              "spec: exits: [] and exit_weights: [] are no exits"))
        mnn_spec_free(&s);
    mnn_spec_t def;
    mnn_spec_defaults(&def);
    check(def.nexits == 0 && !def.exits && !def.exit_weights && def.temperature == 1,
          "mnn_spec_defaults: no exits, temperature 1");

    spec_roundtrip("spec with exits and a temperature",
                   H3 "exits: [0, 1]\nexit_weights: [0.25, 3]\ntemperature: 0.7\n");
    spec_roundtrip("spec with exits, default weights", H3 "exits: [1]\n");
    /* what gets written: nothing new without exits or a temperature */
    const char *texts[] = {H3, H3 "exits: [0, 1]\nexit_weights: [0.25, 3]\ntemperature: 0.7\n"};
    const char *want[] = {"exits: []\noptimizer", "exits: [0, 1]\nexit_weights: [0.25, 3]\n"
                                                  "temperature: 0.699999988\noptimizer"};
    for (size_t i = 0; i < 2; i++) {
        char *buf = NULL;
        size_t blen = 0;
        FILE *f = open_memstream(&buf, &blen);
        rc = load_str(&s, texts[i], &d);
        if (rc == 0 && f) {
            mnn_spec_write(&s, f, 0);
            mnn_spec_free(&s);
        }
        if (f)
            fclose(f);
        if (!check(rc == 0 && buf && contains(buf, want[i]) &&
                       (i || (!contains(buf, "exit_weights") && !contains(buf, "temperature"))),
                   "mnn_spec_write %s", i ? "writes exits, exit_weights and temperature"
                                          : "without exits writes exits: [] and nothing more"))
            diag("%s", buf ? buf : "");
        free(buf);
    }
    /* a hand-built spec: NULL exit_weights are 1; the copy owns its own */
    {
        mnn_layer_spec_t layers[] = {{5, MNN_ACT_RELU}, {3, MNN_ACT_NONE}};
        size_t ex[] = {0};
        mnn_spec_t h, c;
        mnn_spec_defaults(&h);
        h.input = 2;
        h.outputs = 3;
        h.layers = layers;
        h.nlayers = 2;
        h.exits = ex;
        h.nexits = 1;
        rc = mnn_spec_validate(&h, &d);
        int crc = rc == 0 ? mnn_spec_copy(&c, &h) : -1;
        if (check(rc == 0 && crc == 0 && c.exits != ex && c.exits[0] == 0 && c.exit_weights &&
                      c.exit_weights[0] == 1,
                  "mnn_spec_copy: exits copied, NULL exit_weights become 1"))
            mnn_spec_free(&c);
        h.temperature = 0;
        check(mnn_spec_validate(&h, &d) == MNN_EINVAL && contains(d.msg, "temperature"),
              "mnn_spec_validate: temperature 0 (\"%s\")", d.msg);
        h.temperature = 1;
        h.nexits = MNN_MAX_EXITS + 1;
        check(mnn_spec_validate(&h, &d) == MNN_EINVAL && contains(d.msg, "at most 16"),
              "mnn_spec_validate: %d exits (\"%s\")", MNN_MAX_EXITS + 1, d.msg);
    }

    spec_error(H3 "exits: [2]\n", "4:9", "exits: 2 is not a hidden layer (0 to 1");
    spec_error(H3 "exits: [0, 7]\n", "4:12", "exits: 7 is not a hidden layer");
    spec_error(H3 "exits: [1, 0]\n", "4:12", "strictly increasing");
    spec_error(H3 "exits: [0, 0]\n", "4:12", "strictly increasing");
    spec_error(H3 "exits: [0, 1]\nexit_weights: [1]\n", "5:15",
               "exit_weights has 1 entries but exits has 2");
    spec_error(H3 "exit_weights: [1]\n", "4:15", "exit_weights has 1 entries but exits has 0");
    spec_error(H3 "exits: [0, 1]\nexit_weights: [1, -0.5]\n", "5:19",
               "exit_weights: each must be a finite number >= 0");
    spec_error(H3 "exits: [0]\nexit_weights: [.inf]\n", "5:16", "exit_weights");
    spec_error(H3 "exits: [x]\n", "4:9", "exits: 'x' is not a non-negative integer");
    spec_error(H3 "exits: 1\n", "4:8", "exits must be a list");
    spec_error(H3 "exits: [0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1,0]\n", "4:8", "at most 16 exits");
    spec_error("input: 2\noutputs: 1\nloss: mse\nlayers: [{dense: 3}, {dense: 1}]\nexits: [0]\n",
               "5:8", "early-exit heads need a classifier");
    spec_error("input: 2\nclasses: 2\nlayers: [{dense: 2}]\nexits: [0]\n", "4:9",
               "no hidden layer");
    spec_error(H3 "temperature: 0\n", "4:14", "temperature must be a finite number > 0");
    spec_error(H3 "temperature: -2\n", "4:14", "temperature must be a finite number > 0");
    spec_error(H3 "temperature: hot\n", "4:14", "temperature: 'hot' is not a finite number");
    spec_error(H3 "temperature: .nan\n", "4:14", "temperature");
    spec_error("input: 2\noutputs: 1\nlayers: [{dense: 3}, {dense: 1}]\ntemperature: 2\n", "4:14",
               "temperature applies to a classifier");
    spec_error(H3 "exit_weight: [1]\n", "4:1", "known: input, input_scale, normalize, classes, "
               "outputs, loss, layers, exits, exit_weights, temperature, optimizer, batch, seed");
#undef H3
}

static void test_spec(void)
{
    const char *full =
        "# a comment\n"
        "input: 12\n"
        "input_scale: 0.00392156863\n"
        "normalize: running\n"
        "classes: 3\n"
        "layers:\n"
        "  - {dense: 8, activation: relu}\n"
        "  - {dense: 5, activation: tanh}\n"
        "  - dense: 4\n"
        "    activation: sigmoid\n"
        "  - {dense: 3}\n"
        "exits: []\n"
        "optimizer: {type: adam, lr: 0.002, beta1: 0.8, beta2: 0.99, eps: 1e-7,\n"
        "            weight_decay: 0.0001, lr_decay: 0.01}\n"
        "batch: 16\n"
        "seed: 12345678901234567890\n";
    mnn_spec_t s;
    mnn_diag_t d;
    int rc = load_str(&s, full, &d);
    if (check(rc == 0, "mnn_spec_load_string: a full spec")) {
        check(s.input == 12 && s.input_scale == 0.00392156863f && s.normalize == MNN_NORM_RUNNING &&
                  s.outputs == 3 && s.loss == MNN_LOSS_XENT && s.nlayers == 4 &&
                  s.layers[0].units == 8 && s.layers[0].act == MNN_ACT_RELU &&
                  s.layers[1].units == 5 && s.layers[1].act == MNN_ACT_TANH &&
                  s.layers[2].units == 4 && s.layers[2].act == MNN_ACT_SIGMOID &&
                  s.layers[3].units == 3 && s.layers[3].act == MNN_ACT_NONE &&
                  s.opt.type == MNN_OPT_ADAM && s.opt.lr == 0.002f && s.opt.beta1 == 0.8f &&
                  s.opt.beta2 == 0.99f && s.opt.eps == 1e-7f && s.opt.weight_decay == 0.0001f &&
                  s.opt.lr_decay == 0.01f && s.batch == 16 && s.seed == 12345678901234567890ULL,
              "full spec: every field as written");
        mnn_spec_free(&s);
    } else
        diag("%s", d.msg);
    const char *minimal = "input: 2\nclasses: 2\nlayers: [{dense: 2}]\n";
    rc = load_str(&s, minimal, &d);
    mnn_spec_t def;
    mnn_spec_defaults(&def);
    if (check(rc == 0 && s.input_scale == 1 && s.normalize == MNN_NORM_NONE &&
                  s.opt.type == MNN_OPT_SGD && s.opt.lr == def.opt.lr && s.batch == def.batch &&
                  s.seed == def.seed && s.opt.momentum == def.opt.momentum,
              "minimal spec: defaults for what is not given"))
        mnn_spec_free(&s);
    rc = load_str(&s, "input: 2\nclasses: 2\nlayers: [{dense: 2}]\noptimizer: {type: adam}\n", &d);
    if (check(rc == 0 && s.opt.lr == 0.001f, "adam without lr gets lr 0.001"))
        mnn_spec_free(&s);

    spec_roundtrip("adam spec", full);
    spec_roundtrip("sgd spec",
                   "input: 784\ninput_scale: 0.1\nclasses: 10\n"
                   "layers: [{dense: 256, activation: relu}, {dense: 10}]\n"
                   "optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005, "
                   "lr_decay: 0.001}\nbatch: 64\nseed: 1\n");
    spec_roundtrip("mse spec",
                   "input: 3\noutputs: 1\nloss: mse\n"
                   "layers: [{dense: 4, activation: tanh}, {dense: 1}]\nseed: 0\n");

    /* every u64 is a seed: mnn_spec_write writes it, it must load */
    rc = load_str(&s, "input: 2\nclasses: 2\nlayers: [{dense: 2}]\nseed: 18446744073709551615\n", &d);
    if (!check(rc == 0 && s.seed == UINT64_MAX, "seed 18446744073709551615 (UINT64_MAX) loads"))
        diag("rc %d: %s", rc, d.msg);
    if (rc == 0)
        mnn_spec_free(&s);
    rc = load_str(&s, "input: 2\nclasses: 2\nlayers: [{dense: 2}]\nseed: 18446744073709551616\n", &d);
    check(rc < 0 && contains(d.msg, "spec.yaml:4:7:"), "seed 2^64 is rejected (\"%s\")", d.msg);
    if (rc == 0)
        mnn_spec_free(&s);

    spec_error("input: 4\nclasses: 2\n  batch: 3\n", "3:8", "invalid YAML");
    spec_error("input: 4\n\tclasses: 2\n", "2:1", "invalid YAML");
    spec_error("input: 4\nclases: 2\nlayers: [{dense: 2}]\n", "2:1", "unknown key 'clases'");
    spec_error("input: 4\nclasses: 2\nlayers:\n  - {dense: 2, activaton: relu}\n", "4:16",
               "unknown key 'activaton'");
    spec_error("input: 4\nclasses: 2\nlayers: [{dense: 2}]\noptimizer: {type: sgd, nesterov: 1}\n",
               "4:24", "unknown key 'nesterov'");
    spec_error("input: four\nclasses: 2\nlayers: [{dense: 2}]\n", "1:8",
               "input: 'four' is not a non-negative integer");
    spec_error("input: 4\nclasses: 2\nlayers: 3\n", "3:9", "layers must be a list");
    spec_error("input: 4\nclasses: 2\nlayers: [{dense: 2}]\noptimizer: {type: sgd, lr: fast}\n",
               "4:28", "lr: 'fast' is not a finite number");
    spec_error("input: 4\nclasses: 2\nlayers: [{dense: 2}]\nbatch: -3\n", "4:8",
               "batch: '-3' is not a non-negative integer");
    spec_error("input: 4\nclasses: 2\nlayers: [{dense: 2, activation: gelu}]\n", "3:33",
               "unknown value 'gelu'");
    spec_error("input: 4\nclasses: 3\nlayers:\n  - {dense: 5, activation: relu}\n  - {dense: 2}\n",
               "4:3", "the last layer has 2 units but the model has 3 classes");
    spec_error("input: 4\nclasses: 2\nlayers: [{dense: 2}]\noptimizer: {type: sgd, momentum: 1.5}\n",
               "4:34", "momentum must be in [0, 1)");
    spec_error("input: 4\nclasses: 2\nclasses: 2\nlayers: [{dense: 2}]\n", "3:1", "duplicate key");
    spec_error("classes: 2\nlayers: [{dense: 2}]\n", "1:1", "'input: N' is required");
    test_spec_exits();
}

/* YAML bounds (yamlutil.c), through mnn_spec_load_string */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* prefix, open n times, close n times, suffix: malloc'd */
static char *nest_text(const char *prefix, const char *open, const char *close, size_t n,
                       const char *suffix)
{
    size_t lo = strlen(open), lc = strlen(close), lp = strlen(prefix);
    char *s = malloc(lp + n * (lo + lc) + strlen(suffix) + 1);
    if (!s)
        return NULL;
    char *p = s;
    memcpy(p, prefix, lp);
    p += lp;
    for (size_t i = 0; i < n; i++, p += lo)
        memcpy(p, open, lo);
    for (size_t i = 0; i < n; i++, p += lc)
        memcpy(p, close, lc);
    strcpy(p, suffix);
    return s;
}

static void test_yaml_limits(void)
{
    mnn_spec_t s;
    mnn_diag_t d;
    /* the boundary: 32 levels are read (and refused for what they are), 33
     * are too deep, and the message points at the 33rd */
    char *t32 = nest_text("input: ", "[", "]", 31, "\nclasses: 2\nlayers: [{dense: 2}]\n");
    char *t33 = nest_text("input: ", "[", "]", 32, "\nclasses: 2\nlayers: [{dense: 2}]\n");
    char *s32 = nest_text("", "[", "]", 32, "\n");
    char *s33 = nest_text("", "[", "]", 33, "\n");
    if (t32 && t33 && s32 && s33) {
        int rc = load_str(&s, t32, &d);
        check(rc < 0 && rc != MNN_ELIMIT && !contains(d.msg, "deeper"),
              "a mapping holding 31 nested lists (32 levels) is read: refused as a spec, not "
              "for its depth (rc %d, \"%s\")", rc, d.msg);
        if (rc == 0)
            mnn_spec_free(&s);
        rc = load_str(&s, t33, &d);
        check(rc == MNN_ELIMIT && !strncmp(d.msg, "spec.yaml:1:39: ", 16) &&
                  contains(d.msg, "deeper than 32"),
              "33 levels (a mapping holding 32 nested lists): MNN_ELIMIT at the 33rd (rc %d, "
              "\"%s\")", rc, d.msg);
        if (rc == 0)
            mnn_spec_free(&s);
        rc = load_str(&s, s32, &d);
        check(rc < 0 && rc != MNN_ELIMIT, "32 nested lists: not refused for depth (rc %d, \"%s\")",
              rc, d.msg);
        if (rc == 0)
            mnn_spec_free(&s);
        rc = load_str(&s, s33, &d);
        check(rc == MNN_ELIMIT && !strncmp(d.msg, "spec.yaml:1:33: ", 16),
              "33 nested lists: MNN_ELIMIT at 1:33 (rc %d, \"%s\")", rc, d.msg);
        if (rc == 0)
            mnn_spec_free(&s);
    } else
        check(0, "test_yaml_limits: out of memory");
    free(t32);
    free(t33);
    free(s32);
    free(s33);

    /* very deep: refused fast, whatever the kind of nesting */
    static const struct {
        const char *what, *prefix, *open, *close, *suffix;
        size_t n;
    } deep[] = {
        {"10000 nested flow lists", "", "[", "]", "\n", 10000},
        {"10000 nested flow mappings", "", "{a: ", "}", "\n", 10000},
        {"10000 nested block lists on one line", "", "- ", "", "x\n", 10000},
        {"10000 unclosed flow lists", "", "[", "", "", 10000},
        {"a key whose value is 10000 nested lists", "input: ", "[", "]", "\n", 10000},
        {"1000000 unclosed flow lists", "", "[", "", "", 1000000},
    };
    fails_t f = {0, 0};
    double worst = 0;
    for (size_t i = 0; i < NELEM(deep); i++) {
        char *text = nest_text(deep[i].prefix, deep[i].open, deep[i].close, deep[i].n,
                               deep[i].suffix);
        if (!text) {
            fail_at(&f, "%s: out of memory", deep[i].what);
            continue;
        }
        d.msg[0] = 0;
        double t0 = now_s();
        int rc = mnn_spec_load_string(&s, text, strlen(text), "spec.yaml", &d);
        double dt = now_s() - t0;
        worst = fmax(worst, dt);
        if (rc != MNN_ELIMIT || strncmp(d.msg, "spec.yaml:1:", 12) ||
            !contains(d.msg, "deeper than 32") || dt >= 1.0)
            fail_at(&f, "%s: rc %d in %.3f s, \"%s\"", deep[i].what, rc, dt, d.msg);
        if (rc == 0)
            mnn_spec_free(&s);
        free(text);
    }
    check(f.bad == 0, "deep nesting (flow and block, closed and not, up to 1000000 levels): "
                      "MNN_ELIMIT naming 1:COLUMN, each under 1 s (slowest %.3f s)", worst);

    /* aliases, second documents */
    int rc = load_str(&s, "input: &n 4\nclasses: *n\nlayers: [{dense: 2}]\n", &d);
    check(rc < 0 && !strncmp(d.msg, "spec.yaml:2:10: ", 16) && contains(d.msg, "alias"),
          "an alias (*n) is refused, naming 2:10 and aliases (rc %d, \"%s\")", rc, d.msg);
    if (rc == 0)
        mnn_spec_free(&s);
    rc = load_str(&s, "input: 4\nclasses: 2\nlayers: [{dense: 2}]\nx: &a [1]\ny: *a\n", &d);
    check(rc < 0 && contains(d.msg, "spec.yaml:5:4:") && contains(d.msg, "alias"),
          "an alias of a list is refused before the spec is read (rc %d, \"%s\")", rc, d.msg);
    if (rc == 0)
        mnn_spec_free(&s);
    rc = load_str(&s, "input: 4\nclasses: 2\nlayers: [{dense: 2}]\n---\ninput: 5\n", &d);
    check(rc < 0 && !strncmp(d.msg, "spec.yaml:4:1: ", 15) && contains(d.msg, "second document"),
          "a second document ('---') is refused (rc %d, \"%s\")", rc, d.msg);
    if (rc == 0)
        mnn_spec_free(&s);
    rc = load_str(&s, "input: 4\nclasses: 2\nlayers: [{dense: 2}]\n...\n---\n", &d);
    check(rc < 0 && contains(d.msg, "second document"),
          "an empty second document is refused (rc %d, \"%s\")", rc, d.msg);
    if (rc == 0)
        mnn_spec_free(&s);
    rc = load_str(&s, "---\ninput: 4\nclasses: 2\nlayers: [{dense: 2}]\n...\n", &d);
    if (check(rc == 0, "one document with '---' and '...' markers loads (rc %d, \"%s\")", rc,
              d.msg))
        mnn_spec_free(&s);

    /* nodes: the mapping, the key, the list and its entries */
    const size_t max_nodes = (size_t)1 << 17;
    for (int over = 0; over <= 1; over++) {
        size_t entries = max_nodes - 3 + (size_t)over;
        char *text = malloc(8 + 3 * entries);
        if (!text) {
            check(0, "test_yaml_limits: out of memory");
            break;
        }
        char *p = text;
        p += sprintf(p, "x: [");
        for (size_t i = 0; i < entries; i++)
            p += sprintf(p, i ? ",0" : "0");
        strcpy(p, "]\n");
        d.msg[0] = 0;
        rc = mnn_spec_load_string(&s, text, strlen(text), "spec.yaml", &d);
        if (over)
            check(rc == MNN_ELIMIT && !strncmp(d.msg, "spec.yaml:1:", 12) &&
                      contains(d.msg, "131072 nodes"),
                  "131073 YAML nodes: MNN_ELIMIT (rc %d, \"%s\")", rc, d.msg);
        else
            check(rc < 0 && rc != MNN_ELIMIT && contains(d.msg, "unknown key 'x'"),
                  "131072 YAML nodes are read (and refused for the unknown key) (rc %d, \"%s\")",
                  rc, d.msg);
        if (rc == 0)
            mnn_spec_free(&s);
        free(text);
    }

    /* mnn_spec_load_file: at most 1 MiB */
    char path[128];
    tpath(path, sizeof path, "big-spec.yaml");
    const char *spec = "input: 2\nclasses: 2\nlayers: [{dense: 2}]\n";
    const size_t mib = (size_t)1 << 20;
    char *text = malloc(mib + 2);
    if (text) {
        for (int over = 0; over <= 1; over++) {
            size_t n = mib + (size_t)over, at = strlen(spec);
            memcpy(text, spec, at);
            while (at < n) {
                /* comment lines of up to 1000 bytes */
                size_t line = n - at < 1000 ? n - at : 1000;
                text[at] = '#';
                memset(text + at + 1, 'c', line - 1);
                text[at + line - 1] = '\n';
                if (line == 1)
                    text[at] = '\n';
                at += line;
            }
            write_bytes(path, text, n);
            d.msg[0] = 0;
            rc = mnn_spec_load_file(&s, path, &d);
            if (over)
                check(rc == MNN_EOVERFLOW && contains(d.msg, path),
                      "mnn_spec_load_file refuses a file of 1 MiB + 1 byte: MNN_EOVERFLOW (rc %d, "
                      "\"%s\")", rc, d.msg);
            else
                check(rc == 0 && s.input == 2, "mnn_spec_load_file reads a spec of exactly 1 MiB "
                                               "(rc %d, \"%s\")", rc, d.msg);
            if (rc == 0)
                mnn_spec_free(&s);
        }
        free(text);
        unlink(path);
    } else
        check(0, "test_yaml_limits: out of memory");
}

/* mnn_spec_params; MNN_MAX_LAYERS and MNN_MAX_PARAMS */
static void test_spec_limits(void)
{
    mnn_spec_t s;
    mnn_diag_t d;
    size_t n = 12345;
    int rc = load_str(&s, "input: 3\nclasses: 2\nlayers: [{dense: 5}, {dense: 4}, {dense: 2}]\n"
                          "exits: [0, 1]\n", &d);
    if (check(rc == 0, "a spec with two exit heads loads (rc %d)", rc)) {
        /* layers: 5*3+5, 4*5+4, 2*4+2; heads: 2*5+2 after layer 0, 2*4+2 after layer 1 */
        rc = mnn_spec_params(&s, &n);
        mnn_model_t m;
        int mrc = mnn_model_init(&m, &s);
        check(rc == 0 && n == 20 + 24 + 10 + 12 + 10 && mrc == 0 && m.nparams == n,
              "mnn_spec_params: 76 for 3-5-4-2 with heads after layers 0 and 1, as "
              "mnn_model_init allocates (got %zu, model %zu)", n, mrc == 0 ? m.nparams : 0);
        if (mrc == 0)
            mnn_model_free(&m);
        s.nexits = 0;
        rc = mnn_spec_params(&s, &n);
        check(rc == 0 && n == 54, "mnn_spec_params without the heads: 54 (got %zu)", n);
        s.nexits = 2;
        mnn_spec_free(&s);
    }

    /* overflow, by hand (mnn_spec_params does not validate) */
    {
        mnn_layer_spec_t big[4];
        size_t ex[1] = {0};
        mnn_spec_t h;
        mnn_spec_defaults(&h);
        h.layers = big;
        h.nlayers = 2;
        h.input = (size_t)1 << 40;
        big[0] = (mnn_layer_spec_t){(size_t)1 << 30, MNN_ACT_RELU};
        big[1] = (mnn_layer_spec_t){2, MNN_ACT_NONE};
        h.outputs = 2;
        n = 12345;
        rc = mnn_spec_params(&h, &n);
        check(rc == MNN_EOVERFLOW, "mnn_spec_params: 2^40 inputs times 2^30 units is "
                                   "MNN_EOVERFLOW (rc %d)", rc);
        /* each product fits, their sum does not */
        h.input = (size_t)1 << 32;
        big[0].units = (size_t)1 << 31;
        big[1].units = (size_t)1 << 32;
        h.outputs = big[1].units;
        rc = mnn_spec_params(&h, &n);
        check(rc == MNN_EOVERFLOW, "mnn_spec_params: 2^63 + 2^63 weights is MNN_EOVERFLOW "
                                   "(rc %d)", rc);
        /* the layers fit, an exit head does not */
        h.input = 1;
        big[0].units = (size_t)1 << 33;
        big[1].units = 2;
        big[2] = (mnn_layer_spec_t){(size_t)1 << 31, MNN_ACT_NONE};
        h.nlayers = 3;
        h.outputs = big[2].units;
        rc = mnn_spec_params(&h, &n);
        int rc_noexit = rc;
        h.exits = ex;
        h.nexits = 1;
        rc = mnn_spec_params(&h, &n);
        check(rc_noexit == 0 && rc == MNN_EOVERFLOW,
              "mnn_spec_params: an exit head of 2^31 outputs after 2^33 units is MNN_EOVERFLOW "
              "(rc %d; without it %d)", rc, rc_noexit);
        /* and validation refuses what does not fit, in the ranges it allows */
        h.exits = NULL;
        h.nexits = 0;
        h.input = INT_MAX;
        big[3] = (mnn_layer_spec_t){INT_MAX, MNN_ACT_NONE};
        big[0].units = big[1].units = big[2].units = INT_MAX;
        h.nlayers = 4;
        h.outputs = big[3].units;
        d.msg[0] = 0;
        rc = mnn_spec_validate(&h, &d);
        check(rc == MNN_EINVAL && contains(d.msg, "parameters"),
              "mnn_spec_validate: 4 layers of 2^31-1 units on 2^31-1 inputs (2^64 weights) is "
              "refused (rc %d, \"%s\")", rc, d.msg);
        /* a size BLAS cannot take as an int: 2^31 inputs, or units */
        h.nlayers = 1;
        h.outputs = big[0].units = 32;
        h.input = (size_t)INT_MAX + 1;
        d.msg[0] = 0;
        rc = mnn_spec_validate(&h, &d);
        check(rc == MNN_EINVAL && contains(d.msg, "input 2147483648 is too large"),
              "mnn_spec_validate: 2^31 inputs are refused (rc %d, \"%s\")", rc, d.msg);
        h.input = 4;
        h.nlayers = 2;
        big[0].units = (size_t)INT_MAX + 1;
        big[1].units = 32;
        d.msg[0] = 0;
        rc = mnn_spec_validate(&h, &d);
        check(rc == MNN_EINVAL && contains(d.msg, "layer 0: dense must be between 1 and 2147483647"),
              "mnn_spec_validate: a layer of 2^31 units is refused (rc %d, \"%s\")", rc, d.msg);
    }

    /* MNN_MAX_PARAMS = 2^36: 32 classes on 2^31-1 inputs have exactly that */
    rc = load_str(&s, "input: 2147483647\nclasses: 32\nlayers: [{dense: 32}]\n", &d);
    if (check(rc == 0 && mnn_spec_params(&s, &n) == 0 && n == MNN_MAX_PARAMS,
              "a spec of exactly MNN_MAX_PARAMS (2^36) parameters loads (rc %d, \"%s\")", rc, d.msg))
        mnn_spec_free(&s);
    rc = load_str(&s, "input: 2147483647\nclasses: 33\nlayers: [{dense: 33}]\n", &d);
    check(rc == MNN_EINVAL && !strncmp(d.msg, "spec.yaml:", 10) &&
              contains(d.msg, "more than 68719476736 parameters"),
          "a spec of 2^36 + 2^31 + 1 parameters is refused (rc %d, \"%s\")", rc, d.msg);
    if (rc == 0)
        mnn_spec_free(&s);
    /* 2^36 - 30 without the head, 2^36 + 36 with it */
    rc = load_str(&s, "input: 2147483644\nclasses: 2\nlayers: [{dense: 32}, {dense: 2}]\n", &d);
    if (check(rc == 0, "2^36 - 30 parameters load (rc %d, \"%s\")", rc, d.msg))
        mnn_spec_free(&s);
    rc = load_str(&s, "input: 2147483644\nclasses: 2\nlayers: [{dense: 32}, {dense: 2}]\n"
                      "exits: [0]\n", &d);
    check(rc == MNN_EINVAL && contains(d.msg, "parameters"),
          "... and an exit head that brings them to 2^36 + 36 is refused: heads count (rc %d, "
          "\"%s\")", rc, d.msg);
    if (rc == 0)
        mnn_spec_free(&s);

    /* MNN_MAX_LAYERS */
    for (size_t layers = MNN_MAX_LAYERS; layers <= MNN_MAX_LAYERS + 1; layers++) {
        char *text = malloc(64 + 12 * layers), *p = text;
        if (!text)
            break;
        p += sprintf(p, "input: 2\nclasses: 2\nlayers: [");
        for (size_t i = 0; i < layers; i++)
            p += sprintf(p, "%s{dense: 2}", i ? ", " : "");
        strcpy(p, "]\n");
        rc = load_str(&s, text, &d);
        if (layers == MNN_MAX_LAYERS) {
            if (check(rc == 0 && s.nlayers == layers, "a spec of %zu layers loads (rc %d, \"%s\")",
                      layers, rc, d.msg))
                mnn_spec_free(&s);
        } else {
            check(rc == MNN_EINVAL && !strncmp(d.msg, "spec.yaml:3:9: ", 15) &&
                      contains(d.msg, "257") && contains(d.msg, "256"),
                  "a spec of %zu layers is refused (rc %d, \"%s\")", layers, rc, d.msg);
            if (rc == 0)
                mnn_spec_free(&s);
        }
        free(text);
    }
    {
        mnn_layer_spec_t *ls = calloc(MNN_MAX_LAYERS + 1, sizeof *ls);
        if (ls) {
            mnn_spec_t h;
            mnn_spec_defaults(&h);
            for (size_t i = 0; i <= MNN_MAX_LAYERS; i++)
                ls[i] = (mnn_layer_spec_t){2, MNN_ACT_RELU};
            h.input = 2;
            h.outputs = 2;
            h.layers = ls;
            h.nlayers = MNN_MAX_LAYERS;
            rc = mnn_spec_validate(&h, &d);
            h.nlayers = MNN_MAX_LAYERS + 1;
            d.msg[0] = 0;
            int rc2 = mnn_spec_validate(&h, &d);
            check(rc == 0 && rc2 == MNN_EINVAL && contains(d.msg, "layers"),
                  "mnn_spec_validate: %d layers pass, %d are refused (rc %d, %d, \"%s\")",
                  MNN_MAX_LAYERS, MNN_MAX_LAYERS + 1, rc, rc2, d.msg);
            h.nlayers = 1;
            h.input = 2147483647;
            h.outputs = ls[0].units = 32;
            rc = mnn_spec_validate(&h, &d);
            h.outputs = ls[0].units = 33;
            d.msg[0] = 0;
            rc2 = mnn_spec_validate(&h, &d);
            check(rc == 0 && rc2 == MNN_EINVAL && contains(d.msg, "parameters"),
                  "mnn_spec_validate: 2^36 parameters pass, 2^36 + 2^31 + 1 are refused (rc %d, "
                  "%d, \"%s\")", rc, rc2, d.msg);
            free(ls);
        }
    }
}

/* ---- safetensors ------------------------------------------------------- */

/* Writes a safetensors file by hand: length, header, data_len bytes. */
static int write_st_raw(const char *path, uint64_t hlen, const char *hdr, size_t data_len)
{
    size_t n = strlen(hdr);
    unsigned char *buf = calloc(8 + n + data_len + 1, 1);
    if (!buf)
        return -1;
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, hdr, n);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + n + i] = (unsigned char)i;
    int rc = write_bytes(path, buf, 8 + n + data_len);
    free(buf);
    return rc;
}

/* hlen 0: the true header length */
static void st_bad(const char *what, uint64_t hlen, const char *hdr, size_t data_len,
                   int want_rc, const char *want_msg)
{
    char path[128];
    mnn_st_file_t *f = NULL;
    mnn_diag_t d = {""};
    tpath(path, sizeof path, "bad.safetensors");
    if (write_st_raw(path, hlen ? hlen : strlen(hdr), hdr, data_len) < 0) {
        check(0, "mnn_st_open rejects %s (setup)", what);
        return;
    }
    int rc = mnn_st_open(&f, path, &d);
    if (!check(rc < 0 && f == NULL && (!want_rc || rc == want_rc) && contains(d.msg, want_msg),
               "mnn_st_open rejects %s", what))
        diag("rc %d, message \"%s\"", rc, d.msg);
    if (rc == 0)
        mnn_st_close(f);
}

/* st_stream_err: mnn_st_stream_open of path with (bytes, xxh3), read to
 * the end and finished; the first error (0 if none) */
static int st_stream_err(const char *path, uint64_t bytes, const char *xxh3, mnn_diag_t *d)
{
    mnn_st_stream_t *s;
    int rc = mnn_st_stream_open(&s, path, bytes, xxh3, d);
    if (rc < 0)
        return rc;
    char buf[256];
    for (size_t i = 0; rc == 0 && i < mnn_st_stream_count(s); i++) {
        mnn_st_info_t in;
        rc = mnn_st_stream_info(s, i, &in);
        if (rc == 0 && in.bytes > sizeof buf)
            rc = MNN_ELIMIT;
        if (rc == 0)
            rc = mnn_st_stream_read(s, buf, d);
    }
    if (rc == 0)
        rc = mnn_st_stream_finish(s, d);
    mnn_st_stream_close(s);
    return rc;
}

static void test_st_stream(void)
{
    float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {-1, 0.5f, 1e-30f};
    double c[2] = {1.0 / 3, -2};
    const mnn_st_tensor_t t[] = {
        {"layers.1.bias", 0, 1, {3, 0}, b},
        {"layers.0.weight", 0, 2, {2, 3}, a},
        {"normalize.mean", 1, 1, {2, 0}, c},
    };
    const char *meta[] = {"format", "pt", NULL};
    char path[128], hex[17], bad[128];
    uint64_t bytes = 0;
    tpath(path, sizeof path, "stream.safetensors");
    FILE *fp = fopen(path, "wb");
    int rc = fp ? mnn_st_write(fp, t, NELEM(t), meta) : -1;
    if (fp)
        fclose(fp);
    rc |= mnn_hash_file(path, hex, &bytes);
    mnn_diag_t d = {""};
    mnn_st_stream_t *s = NULL;
    if (rc == 0)
        rc = mnn_st_stream_open(&s, path, bytes, hex, &d);
    if (!check(rc == 0 && s && mnn_st_stream_count(s) == 3, "mnn_st_stream_open (%s)", d.msg))
        return;
    /* in file order (by name, as mnn_st_write puts them), the bytes written */
    mnn_st_info_t in[3];
    float ra[6], rb[3];
    double rcv[2];
    void *bufs[] = {ra, rb, rcv};
    int ok = 1;
    for (size_t i = 0; i < 3; i++)
        ok &= mnn_st_stream_info(s, i, &in[i]) == 0 && mnn_st_stream_read(s, bufs[i], &d) == 0;
    ok &= !strcmp(in[0].name, "layers.0.weight") && in[0].f32 && in[0].ndim == 2 &&
          in[0].shape[0] == 2 && in[0].shape[1] == 3 && in[0].bytes == 24 &&
          !strcmp(in[1].name, "layers.1.bias") && in[1].bytes == 12 &&
          !strcmp(in[2].name, "normalize.mean") && in[2].f64 && in[2].bytes == 16 &&
          !memcmp(ra, a, sizeof a) && !memcmp(rb, b, sizeof b) && !memcmp(rcv, c, sizeof c);
    mnn_st_info_t none;
    ok &= mnn_st_stream_info(s, 3, &none) == MNN_EINVAL &&
          mnn_st_stream_read(s, ra, &d) == MNN_EOF &&
          mnn_st_stream_meta(s, "format") && !strcmp(mnn_st_stream_meta(s, "format"), "pt");
    check(ok && mnn_st_stream_finish(s, &d) == 0,
          "mnn_st_stream: the tensors in file order, their shapes and bytes, then the hash (%s)",
          d.msg);
    mnn_st_stream_close(s);
    /* in parts: 8 bytes at a time, then a part that straddles nothing
     * (a tensor's rest), the same bytes and the same hash */
    if (mnn_st_stream_open(&s, path, bytes, hex, &d) == 0) {
        unsigned char got[24 + 12 + 16], *p = got;
        size_t n, total = 0;
        int prc = 0;
        for (int i = 0; prc == 0 && total < sizeof got; i++) {
            prc = mnn_st_stream_read_part(s, p, 8, &n, &d);
            p += n, total += n;
        }
        float ga[6], gb[3];
        double gc[2];
        memcpy(ga, got, 24);
        memcpy(gb, got + 24, 12);
        memcpy(gc, got + 36, 16);
        check(prc == 0 && total == sizeof got && !memcmp(ga, a, 24) && !memcmp(gb, b, 12) &&
                  !memcmp(gc, c, 16) && mnn_st_stream_read_part(s, p, 8, &n, &d) == MNN_EOF &&
                  mnn_st_stream_finish(s, &d) == 0,
              "mnn_st_stream_read_part: tensors read 8 bytes at a time, the same bytes and "
              "hash (%s)", d.msg);
        mnn_st_stream_close(s);
    }
    if (mnn_st_stream_open(&s, path, bytes, hex, &d) == 0) {
        size_t n;
        check(mnn_st_stream_read_part(s, ra, 4, &n, &d) == 0 && n == 4 &&
                  mnn_st_stream_read(s, ra, &d) == MNN_EINVAL,
              "mnn_st_stream_read of a tensor begun in parts: MNN_EINVAL (%s)", d.msg);
        mnn_st_stream_close(s);
    }
    /* refusals: another hash, another size, tensors left unread */
    char other[17];
    snprintf(other, sizeof other, "%s", hex);
    other[0] = other[0] == '0' ? '1' : '0';
    rc = st_stream_err(path, bytes, other, &d);
    check(rc == MNN_ECORRUPT && strstr(d.msg, "manifest says"),
          "mnn_st_stream: another hash than the manifest's: MNN_ECORRUPT at the end (%s)", d.msg);
    rc = st_stream_err(path, bytes + 1, hex, &d);
    check(rc == MNN_ECORRUPT && strstr(d.msg, "another size"),
          "mnn_st_stream: another size than the manifest's: refused at open (%s)", d.msg);
    if (mnn_st_stream_open(&s, path, bytes, hex, &d) == 0) {
        rc = mnn_st_stream_read(s, ra, &d);
        rc = rc == 0 ? mnn_st_stream_finish(s, &d) : rc;
        check(rc == MNN_EINVAL, "mnn_st_stream_finish with tensors left: MNN_EINVAL (%s)", d.msg);
        mnn_st_stream_close(s);
    }
    /* a data byte changed after the manifest was written: found at the end */
    size_t len;
    char *raw = slurp(path, &len);
    if (raw) {
        tpath(bad, sizeof bad, "stream-bad.safetensors");
        raw[len - 3] ^= 0x40;
        write_bytes(bad, raw, len);
        rc = st_stream_err(bad, bytes, hex, &d);
        check(rc == MNN_ECORRUPT, "mnn_st_stream: a changed tensor byte: MNN_ECORRUPT (%s)", d.msg);
        raw[len - 3] ^= 0x40;
        /* a header that claims 4 GiB, its hash "right" */
        char h4[17];
        uint64_t b4;
        memcpy(raw, "\x00\x00\x00\x00\x01\x00\x00\x00", 8);
        write_bytes(bad, raw, len);
        mnn_hash_file(bad, h4, &b4);
        rc = st_stream_err(bad, b4, h4, &d);
        check(rc == MNN_EFORMAT && strstr(d.msg, "header claims"),
              "mnn_st_stream: a header claiming 4 GiB: MNN_EFORMAT (%s)", d.msg);
        /* cut short, with a hash of what is left: its tensors do not fit */
        memcpy(raw, (char[8]){0}, 8);
        free(raw);
        raw = slurp(path, &len);
        if (raw) {
            write_bytes(bad, raw, len - 4);
            mnn_hash_file(bad, h4, &b4);
            rc = st_stream_err(bad, b4, h4, &d);
            check(rc == MNN_ECORRUPT, "mnn_st_stream: a file cut short: refused at open (%s)",
                  d.msg);
        }
        free(raw);
        /* a link to the right bytes: not followed; a directory */
        tpath(bad, sizeof bad, "stream-link.safetensors");
        rc = symlink(path, bad) == 0 ? st_stream_err(bad, bytes, hex, &d) : 0;
        check(rc == MNN_EIO, "mnn_st_stream: a symbolic link is not followed (%s)", d.msg);
        rc = st_stream_err(tmpdir, bytes, hex, &d);
        check(rc == MNN_ECORRUPT && strstr(d.msg, "no regular file"),
              "mnn_st_stream: a directory is no regular file (%s)", d.msg);
    }
}

static void test_safetensors(void)
{
    float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {-1, 0.5f, 1e-30f};
    double c[4] = {1.0 / 3, -2, 1e300, 0};
    const mnn_st_tensor_t t[] = {
        {"layers.1.bias", 0, 1, {3, 0}, b},
        {"layers.0.weight", 0, 2, {2, 3}, a},
        {"normalize.mean", 1, 1, {4, 0}, c},
        {"empty", 0, 1, {0, 0}, b},
    };
    const char *meta[] = {"format", "pt", "note", "hello", NULL};
    char path[128];
    tpath(path, sizeof path, "rt.safetensors");
    FILE *fp = fopen(path, "wb");
    int rc = fp ? mnn_st_write(fp, t, NELEM(t), meta) : -1;
    int crc = fp ? fclose(fp) : -1;
    check(rc == 0 && crc == 0, "mnn_st_write (rc %d)", rc);

    size_t flen = 0;
    char *raw = slurp(path, &flen);
    if (raw && flen >= 8) {
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
            hlen = hlen << 8 | (unsigned char)raw[i];
        check(hlen % 8 == 0 && 8 + hlen + 24 + 12 + 32 == flen && raw[8] == '{',
              "written file: little-endian header length, JSON header, data 8-byte aligned, "
              "nothing after the tensors");
        char *hdr = strndup(raw + 8, (size_t)hlen);
        check(hdr && contains(hdr, "\"__metadata__\":{\"format\":\"pt\",\"note\":\"hello\"}") &&
                  contains(hdr, "\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                                "\"data_offsets\":[0,24]}"),
              "written header: metadata and tensors sorted by name, offsets from 0");
        free(hdr);
    } else
        check(0, "read back %s", path);
    free(raw);

    mnn_st_file_t *f = NULL;
    mnn_diag_t d = {""};
    rc = mnn_st_open(&f, path, &d);
    if (check(rc == 0 && f, "mnn_st_open of what mnn_st_write wrote")) {
        const void *pa = NULL, *pb = NULL, *pc = NULL, *pe = NULL;
        int r1 = mnn_st_get(f, "layers.0.weight", 0, 2, (size_t[2]){2, 3}, &pa, &d);
        int r2 = mnn_st_get(f, "layers.1.bias", 0, 1, (size_t[1]){3}, &pb, &d);
        int r3 = mnn_st_get(f, "normalize.mean", 1, 1, (size_t[1]){4}, &pc, &d);
        int r4 = mnn_st_get(f, "empty", 0, 1, (size_t[1]){0}, &pe, &d);
        check(r1 == 0 && r2 == 0 && r3 == 0 && r4 == 0 && !memcmp(pa, a, sizeof a) &&
                  !memcmp(pb, b, sizeof b) && !memcmp(pc, c, sizeof c),
              "mnn_st_get: F32 and F64 tensors round-trip bit for bit");
        const char *m1 = mnn_st_meta(f, "format"), *m2 = mnn_st_meta(f, "note");
        check(m1 && !strcmp(m1, "pt") && m2 && !strcmp(m2, "hello") &&
                  mnn_st_meta(f, "nothing") == NULL,
              "mnn_st_meta: metadata round-trips");
        d.msg[0] = 0;
        rc = mnn_st_get(f, "layers.0.weight", 1, 2, (size_t[2]){2, 3}, &pa, &d);
        check(rc == MNN_ESHAPE && contains(d.msg, "layers.0.weight"),
              "mnn_st_get: F64 asked of an F32 tensor is MNN_ESHAPE (\"%s\")", d.msg);
        d.msg[0] = 0;
        rc = mnn_st_get(f, "normalize.mean", 0, 1, (size_t[1]){4}, &pa, &d);
        check(rc == MNN_ESHAPE, "mnn_st_get: F32 asked of an F64 tensor is MNN_ESHAPE");
        d.msg[0] = 0;
        rc = mnn_st_get(f, "layers.0.weight", 0, 2, (size_t[2]){3, 2}, &pa, &d);
        check(rc == MNN_ESHAPE && contains(d.msg, "shape"),
              "mnn_st_get: shape [3,2] asked of a [2,3] tensor is MNN_ESHAPE (\"%s\")", d.msg);
        rc = mnn_st_get(f, "layers.0.weight", 0, 1, (size_t[1]){6}, &pa, &d);
        check(rc == MNN_ESHAPE, "mnn_st_get: 1-d asked of a 2-d tensor is MNN_ESHAPE");
        rc = mnn_st_get(f, "layers.1.bias", 0, 1, (size_t[1]){4}, &pa, &d);
        check(rc == MNN_ESHAPE, "mnn_st_get: [4] asked of a [3] tensor is MNN_ESHAPE");
        d.msg[0] = 0;
        rc = mnn_st_get(f, "layers.2.weight", 0, 2, (size_t[2]){2, 3}, &pa, &d);
        check(rc == MNN_ESHAPE && contains(d.msg, "missing"),
              "mnn_st_get: a missing tensor is MNN_ESHAPE, \"missing\"");
        mnn_st_close(f);
    } else
        diag("rc %d: %s", rc, d.msg);

    /* no tensors at all */
    tpath(path, sizeof path, "none.safetensors");
    fp = fopen(path, "wb");
    rc = fp ? mnn_st_write(fp, NULL, 0, NULL) : -1;
    crc = fp ? fclose(fp) : -1;
    f = NULL;
    if (check(rc == 0 && crc == 0 && mnn_st_open(&f, path, &d) == 0 && f,
              "mnn_st_write/mnn_st_open: a file with no tensors and no metadata")) {
        const void *p;
        check(mnn_st_get(f, "x", 0, 1, (size_t[1]){1}, &p, &d) == MNN_ESHAPE &&
                  mnn_st_meta(f, "format") == NULL,
              "an empty file: no tensor, no metadata");
        mnn_st_close(f);
    } else
        diag("rc %d: %s", rc, d.msg);
    fp = fopen("/dev/full", "wb");
    if (fp) {
        float *big = xalloc(1 << 18);
        const mnn_st_tensor_t bt = {"big", 0, 1, {1 << 18, 0}, big};
        rc = mnn_st_write(fp, &bt, 1, NULL);
        check(rc == MNN_EIO, "mnn_st_write of 1 MiB to /dev/full is MNN_EIO (rc %d)", rc);
        fclose(fp);
        free(big);
    } else
        printf("ok %u - mnn_st_write to /dev/full # SKIP no /dev/full\n", ++n_tests);

    /* a file as Python's safetensors writes it (no padding, no metadata) */
    const char *py = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    tpath(path, sizeof path, "py.safetensors");
    write_st_raw(path, strlen(py), py, 16);
    f = NULL;
    rc = mnn_st_open(&f, path, &d);
    if (check(rc == 0, "mnn_st_open: a hand-written file without metadata or padding")) {
        const void *p;
        check(mnn_st_get(f, "w", 0, 2, (size_t[2]){2, 2}, &p, &d) == 0 &&
                  ((const unsigned char *)p)[0] == 0 && ((const unsigned char *)p)[15] == 15,
              "mnn_st_get on the hand-written file points at its data");
        mnn_st_close(f);
    } else
        diag("rc %d: %s", rc, d.msg);

    /* crafted bad files */
    tpath(path, sizeof path, "short.safetensors");
    write_bytes(path, "\x10\0\0\0\0", 5);
    f = NULL;
    d.msg[0] = 0;
    rc = mnn_st_open(&f, path, &d);
    check(rc < 0 && f == NULL && d.msg[0], "mnn_st_open rejects a 5-byte file (\"%s\")", d.msg);
    tpath(path, sizeof path, "empty.safetensors");
    write_bytes(path, "", 0);
    rc = mnn_st_open(&f, path, &d);
    check(rc < 0 && f == NULL, "mnn_st_open rejects an empty file");

    const char *one = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    st_bad("a header length claiming 4 GiB", (uint64_t)1 << 32, one, 8, 0, "header claims");
    st_bad("a header length past the end of the file", strlen(one) + 9, one, 8, 0,
           "header claims");
    st_bad("a header length of 2^64-1", UINT64_MAX, one, 8, 0, "header claims");
    st_bad("overlapping offsets", 0,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
           12, MNN_ECORRUPT, "overlaps");
    st_bad("a gap between tensors", 0,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
           20, MNN_ECORRUPT, "gap");
    st_bad("a gap before the first tensor", 0,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, MNN_ECORRUPT,
           "gap");
    st_bad("trailing bytes after the last tensor", 0, one, 12, MNN_ECORRUPT,
           "4 bytes after the last tensor");
    st_bad("offsets past the end of the data", 0,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, MNN_ECORRUPT,
           "outside");
    st_bad("a byte count that does not match the shape", 0,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, MNN_ECORRUPT,
           "do not match its shape");
    st_bad("an unknown dtype", 0,
           "{\"a\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, MNN_EFORMAT,
           "unknown dtype");
    st_bad("a header that is not a JSON object", 0, "[1, 2, 3]", 0, MNN_EFORMAT,
           "not a JSON object");
    st_bad("a header that is not JSON", 0, "{\"a\": [", 0, MNN_EFORMAT, "bad JSON header");
    st_bad("a tensor without data_offsets", 0, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8,
           MNN_EFORMAT, "needs dtype, shape and data_offsets");
    st_bad("a tensor named twice", 0,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
           8, MNN_EFORMAT, "twice");
}

/* A malloc'd safetensors image: the length, hdr, then data_len bytes i%251. */
static char *st_image(const char *hdr, size_t data_len, size_t *len)
{
    size_t n = strlen(hdr);
    char *buf = malloc(8 + n + data_len + 1);
    if (!buf)
        return NULL;
    for (int i = 0; i < 8; i++)
        buf[i] = (char)(unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, hdr, n);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + n + i] = (char)(i % 251);
    *len = 8 + n + data_len;
    return buf;
}

/* mnn_st_parse of hdr (and data_len bytes): its rc, message in d */
static int st_parse_hdr(const char *hdr, size_t data_len, mnn_diag_t *d, mnn_st_file_t **out)
{
    size_t len;
    char *buf = st_image(hdr, data_len, &len);
    mnn_st_file_t *f = NULL;
    if (!buf)
        return MNN_ENOMEM;
    d->msg[0] = 0;
    int rc = mnn_st_parse(&f, buf, len, "x.safetensors", d); /* buf is f's now */
    if (out)
        *out = f;
    else
        mnn_st_close(f);
    return rc;
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifdef UNDER_ASAN
#include <sanitizer/lsan_interface.h>
#endif

#ifdef UNDER_ASAN
/* from sanitizer/allocator_interface.h, which gcc does not ship */
size_t __sanitizer_get_current_allocated_bytes(void);
static size_t heap_bytes(void) { return __sanitizer_get_current_allocated_bytes(); }
#else
static size_t heap_bytes(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}
#endif

/* mnn_train_memory against what a training really allocates: the model,
 * its workspace and gradients after one step, the optimizer, and the
 * checkpoint writer's snapshot (a second model and optimizer) */
static void test_train_memory(void)
{
    static const struct {
        mnn_opt_type_t type;
        float average;
        size_t batch;
    } cases[] = {{MNN_OPT_SGD, 0, 64}, {MNN_OPT_ADAM, 0.99f, 64}, {MNN_OPT_SGD, 0, 2048}};
    mnn_layer_spec_t layers[] = {{300, MNN_ACT_RELU}, {120, MNN_ACT_TANH}, {10, MNN_ACT_NONE}};
    for (size_t c = 0; c < NELEM(cases); c++) {
        mnn_spec_t s;
        exit_spec(&s, 200, 10, layers, NELEM(layers), NULL, NULL, 0, 1.0f);
        s.opt.type = cases[c].type;
        s.opt.average = cases[c].average;
        const size_t B = cases[c].batch;
        float *x = xalloc(B * 200), *y = xalloc(B);
        fill_sym(x, B * 200, 1);
        for (size_t i = 0; i < B; i++)
            y[i] = (float)(i % 10);
        mnn_model_t m, snap;
        mnn_optim_t o, snap_o;
        mnn_batch_stats_t bs;
        size_t before = heap_bytes();
        int rc = mnn_model_init(&m, &s);
        if (rc == 0)
            rc = mnn_model_reserve(&m, B);
        if (rc == 0)
            rc = mnn_optim_init(&o, &s.opt, m.nparams);
        if (rc == 0)
            rc = mnn_model_train_batch(&m, &o, x, y, B, &bs);
        if (rc == 0 && (rc = mnn_model_init(&snap, &s)) == 0)
            rc = mnn_optim_init(&snap_o, &s.opt, m.nparams);
        size_t used = heap_bytes() - before;
        uint64_t est = mnn_train_memory(&s, B);
        check(rc == 0 && est >= used && est <= used + used / 4 + ((uint64_t)16 << 20),
              "mnn_train_memory (%s%s, batch %zu): %llu bytes estimated, %zu allocated",
              cases[c].type == MNN_OPT_ADAM ? "adam" : "sgd", cases[c].average ? ", average" : "",
              B, (unsigned long long)est, used);
        if (rc == 0) {
            mnn_optim_free(&snap_o);
            mnn_model_free(&snap);
            mnn_optim_free(&o);
            mnn_model_free(&m);
        }
        free(x);
        free(y);
    }
    mnn_spec_t s;
    mnn_layer_spec_t huge[] = {{(size_t)1 << 40, MNN_ACT_RELU}, {(size_t)1 << 40, MNN_ACT_NONE}};
    exit_spec(&s, (size_t)1 << 40, 10, huge, NELEM(huge), NULL, NULL, 0, 1.0f);
    check(mnn_train_memory(&s, 1) == UINT64_MAX,
          "mnn_train_memory of a spec whose parameters overflow: UINT64_MAX");
}

static void test_st_limits(void)
{
    mnn_diag_t d;
    mnn_st_file_t *f;
    /* ownership: every path frees the buffer exactly once (a double free
     * aborts; a leak shows in the heap here, and to LeakSanitizer) */
    {
        const char *one = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        const size_t big = 64 << 10;
        struct mallinfo2 before = mallinfo2();
        int rcs[6] = {0};
        for (int rep = 0; rep < 32; rep++)
            for (int kind = 0; kind < 6; kind++) {
                char *buf = malloc(big);
                if (!buf)
                    continue;
                memset(buf, ' ', big);
                size_t len = big;
                uint64_t hlen = big - 8 - 8; /* the header, 8 data bytes */
                if (kind == 0)
                    len = 5; /* shorter than the length field */
                else if (kind == 1)
                    hlen = big; /* past the end */
                else if (kind == 2)
                    memcpy(buf + 8, "{\"a\": [", 7); /* not JSON */
                else if (kind == 3)
                    memcpy(buf + 8, "[1]", 3); /* not an object */
                if (kind >= 4)
                    memcpy(buf + 8, one, strlen(one));
                if (kind == 5)
                    hlen = big - 8 - 4; /* data short of the tensor */
                for (int i = 0; i < 8; i++)
                    buf[i] = (char)(unsigned char)(hlen >> (8 * i));
                f = NULL;
                rcs[kind] = mnn_st_parse(&f, buf, len, "own.safetensors", NULL);
                mnn_st_close(f);
            }
        struct mallinfo2 after = mallinfo2();
        size_t grew = after.uordblks > before.uordblks ? after.uordblks - before.uordblks : 0;
        check(rcs[0] < 0 && rcs[1] < 0 && rcs[2] < 0 && rcs[3] < 0 && rcs[4] == 0 && rcs[5] < 0,
              "mnn_st_parse: short, too long a header, bad JSON, not an object, good, data "
              "short: rc %d %d %d %d %d %d", rcs[0], rcs[1], rcs[2], rcs[3], rcs[4], rcs[5]);
#ifdef UNDER_ASAN
        /* ASan's heap does not show in mallinfo2: LeakSanitizer looks now */
        (void)grew;
        check(__lsan_do_recoverable_leak_check() == 0,
              "mnn_st_parse frees the buffer it takes over, on success and on every error "
              "(LeakSanitizer finds no leak after 192 buffers of 64 KiB)");
#else
        check(grew < ((size_t)1 << 20),
              "mnn_st_parse frees the buffer it takes over, on success and on every error "
              "(heap grew by %zu bytes over 192 buffers of 64 KiB)", grew);
#endif
        f = (mnn_st_file_t *)1;
        int rc = mnn_st_parse(&f, NULL, 0, "empty.safetensors", &d);
        check(rc < 0 && f == NULL, "mnn_st_parse of no bytes (a NULL buffer): an error, *out "
                                   "NULL (rc %d)", rc);
    }

    /* a header over 16 MiB: refused before it is parsed */
    {
        const size_t lim = (size_t)16 << 20;
        size_t len = 8 + lim + 1;
        char *buf = malloc(len);
        if (buf) {
            memset(buf, ' ', len);
            for (int i = 0; i < 8; i++)
                buf[i] = (char)(unsigned char)((uint64_t)(lim + 1) >> (8 * i));
            memcpy(buf + 8, "{}", 2);
            f = NULL;
            double t0 = now_s();
            int rc = mnn_st_parse(&f, buf, len, "huge.safetensors", &d);
            double dt = now_s() - t0;
            check(rc == MNN_ELIMIT && f == NULL && contains(d.msg, "huge.safetensors"),
                  "mnn_st_parse: a header of 16 MiB + 1 byte is MNN_ELIMIT (rc %d, %.3f s, \"%s\")",
                  rc, dt, d.msg);
            mnn_st_close(f);
        }
        len = 8 + lim;
        buf = malloc(len);
        if (buf) {
            memset(buf, ' ', len);
            for (int i = 0; i < 8; i++)
                buf[i] = (char)(unsigned char)((uint64_t)lim >> (8 * i));
            memcpy(buf + 8, "{\"__metadata__\":{\"k\":\"v\"}}", 26);
            f = NULL;
            int rc = mnn_st_parse(&f, buf, len, "16mib.safetensors", &d);
            const char *v = rc == 0 ? mnn_st_meta(f, "k") : NULL;
            check(rc == 0 && v && !strcmp(v, "v"),
                  "mnn_st_parse: a header of exactly 16 MiB is read (rc %d, \"%s\")", rc,
                  rc ? d.msg : "");
            mnn_st_close(f);
        }
    }

    /* the tensor count: 65536 at most */
    for (int over = 0; over <= 1; over++) {
        const size_t nt = 65536 + (size_t)over;
        char *hdr = malloc(64 * nt + 64), *p = hdr;
        if (!hdr)
            break;
        /* 65536 with __metadata__ (which is no tensor); 65537 without */
        p += sprintf(p, over ? "{" : "{\"__metadata__\":{\"k\":\"v\"},");
        for (size_t i = 0; i < nt; i++)
            p += sprintf(p, "%s\"t%zu\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                         i ? "," : "", i);
        strcpy(p, "}");
        int rc = st_parse_hdr(hdr, 0, &d, NULL);
        if (over)
            check(rc == MNN_ELIMIT && contains(d.msg, "65536"),
                  "mnn_st_parse: 65537 tensors are MNN_ELIMIT (rc %d, \"%s\")", rc, d.msg);
        else
            check(rc == 0, "mnn_st_parse: 65536 tensors (and __metadata__) are read (rc %d, "
                           "\"%s\")", rc, d.msg);
        free(hdr);
    }

    /* many tensors: mnn_st_get finds each (a binary search over the names) */
    {
        const size_t nt = 5000;
        char *hdr = malloc(96 * nt + 64), *p = hdr;
        size_t *where = malloc(nt * sizeof *where);
        if (!hdr || !where) {
            free(hdr);
            free(where);
            check(0, "test_st_limits: out of memory");
            return;
        }
        /* tensor i holds 1 + i%7 floats, all of value i; names in an order
         * that is neither numeric nor sorted; data in yet another order */
        size_t total = 0;
        for (size_t k = 0; k < nt; k++) {
            size_t i = (k * 2999) % nt; /* the k-th tensor in the data */
            where[i] = total;
            total += 4 * (1 + i % 7);
        }
        float *data = malloc(total);
        p += sprintf(p, "{");
        for (size_t j = 0; j < nt; j++) {
            size_t i = (j * 1237 + 11) % nt; /* the j-th in the header */
            p += sprintf(p, "%s\"w.%zu\":{\"dtype\":\"F32\",\"shape\":[%zu],"
                            "\"data_offsets\":[%zu,%zu]}", j ? "," : "", i, 1 + i % 7,
                         where[i], where[i] + 4 * (1 + i % 7));
            for (size_t e = 0; data && e < 1 + i % 7; e++)
                data[where[i] / 4 + e] = (float)i;
        }
        p += sprintf(p, ",\"__metadata__\":{\"format\":\"pt\"}}");
        size_t hl = strlen(hdr), len = 8 + hl + total;
        char *buf = data ? malloc(len) : NULL;
        if (buf) {
            for (int i = 0; i < 8; i++)
                buf[i] = (char)(unsigned char)((uint64_t)hl >> (8 * i));
            memcpy(buf + 8, hdr, hl);
            memcpy(buf + 8 + hl, data, total);
            f = NULL;
            d.msg[0] = 0;
            int rc = mnn_st_parse(&f, buf, len, "many.safetensors", &d);
            if (check(rc == 0, "mnn_st_parse: 5000 tensors (rc %d, \"%s\")", rc, d.msg)) {
                fails_t ff = {0, 0};
                for (size_t i = 0; i < nt; i++) {
                    char name[32];
                    const void *ptr = NULL;
                    snprintf(name, sizeof name, "w.%zu", i);
                    rc = mnn_st_get(f, name, 0, 1, (size_t[1]){1 + i % 7}, &ptr, &d);
                    const float *v = ptr;
                    if (rc != 0 || !v || v[0] != (float)i || v[i % 7] != (float)i)
                        fail_at(&ff, "%s: rc %d, \"%s\"", name, rc, d.msg);
                    else if (mnn_st_get(f, name, 0, 1, (size_t[1]){2 + i % 7}, &ptr, NULL) !=
                             MNN_ESHAPE)
                        fail_at(&ff, "%s: a wrong shape is not MNN_ESHAPE", name);
                }
                check(ff.bad == 0, "mnn_st_get finds each of 5000 tensors, with its shape and "
                                   "data");
                static const char *const absent[] = {"w.", "w.5000", "w.-1", "w.0 ", "w",
                                                     "", "w.49999", "x.1", "v.1", "w.1000a"};
                ff = (fails_t){0, 0};
                for (size_t k = 0; k < NELEM(absent); k++) {
                    const void *ptr;
                    d.msg[0] = 0;
                    rc = mnn_st_get(f, absent[k], 0, 1, (size_t[1]){1}, &ptr, &d);
                    if (rc != MNN_ESHAPE || !contains(d.msg, "missing"))
                        fail_at(&ff, "'%s': rc %d, \"%s\"", absent[k], rc, d.msg);
                }
                check(ff.bad == 0, "mnn_st_get: names between, before and after the 5000 are "
                                   "missing (%zu names)", NELEM(absent));
                const char *m = mnn_st_meta(f, "format");
                check(m && !strcmp(m, "pt"), "__metadata__ after 5000 tensors is read");
            }
            mnn_st_close(f);
        } else
            check(0, "test_st_limits: out of memory");
        free(data);

        /* the same names with one repeated far from the first */
        p = hdr;
        p += sprintf(p, "{");
        for (size_t i = 0; i < nt; i++)
            p += sprintf(p, "%s\"w.%zu\":{\"dtype\":\"F32\",\"shape\":[1],"
                            "\"data_offsets\":[%zu,%zu]}", i ? "," : "",
                         i == nt - 1 ? (size_t)17 : i, 4 * i, 4 * i + 4);
        strcpy(p, "}");
        int rc = st_parse_hdr(hdr, 4 * nt, &d, NULL);
        check(rc == MNN_EFORMAT && contains(d.msg, "'w.17' appears twice"),
              "mnn_st_parse: a name given twice among 5000, far apart, is refused (rc %d, \"%s\")",
              rc, d.msg);
        free(hdr);
        free(where);
    }

    /* __metadata__ twice */
    int rc = st_parse_hdr("{\"__metadata__\":{\"a\":\"1\"},\"t\":{\"dtype\":\"F32\",\"shape\":[1],"
                          "\"data_offsets\":[0,4]},\"__metadata__\":{\"b\":\"2\"}}", 4, &d, NULL);
    check(rc == MNN_EFORMAT && contains(d.msg, "__metadata__ appears twice"),
          "mnn_st_parse: __metadata__ twice is refused (rc %d, \"%s\")", rc, d.msg);
    rc = st_parse_hdr("{\"__metadata__\":{},\"__metadata__\":{\"b\":\"2\"}}", 0, &d, NULL);
    check(rc == MNN_EFORMAT && contains(d.msg, "__metadata__ appears twice"),
          "mnn_st_parse: __metadata__ twice, the first empty, is refused (rc %d, \"%s\")", rc,
          d.msg);
    rc = st_parse_hdr("{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                      12, &d, NULL);
    check(rc == MNN_EFORMAT && contains(d.msg, "'b' appears twice"),
          "mnn_st_parse: a duplicate name with another between them is refused (rc %d, \"%s\")",
          rc, d.msg);
}

/* ---- checkpoints ------------------------------------------------------- */

static int same_state(const mnn_train_state_t *a, const mnn_train_state_t *b)
{
    return a->step == b->step && a->records_seen == b->records_seen &&
           !memcmp(&a->loss_sum, &b->loss_sum, sizeof a->loss_sum) && a->correct == b->correct &&
           !memcmp(a->rng.s, b->rng.s, sizeof a->rng.s) && a->threads == b->threads;
}

/* Trains a small model a few steps; fills m, o and st. */
static int make_trained(mnn_model_t *m, mnn_optim_t *o, mnn_train_state_t *st,
                        mnn_opt_type_t type, mnn_norm_t norm, int with_exits)
{
    mnn_spec_t s;
    mnn_layer_spec_t layers[] = {{5, MNN_ACT_RELU}, {4, MNN_ACT_TANH}, {3, MNN_ACT_NONE}};
    size_t exits[] = {0, 1};
    float exit_weights[] = {0.5f, 2};
    mnn_spec_defaults(&s);
    if (with_exits) {
        /* both hidden layers have a head; averaging adds the raw weights
         * to optimizer.safetensors */
        s.nexits = NELEM(exits);
        s.exits = exits;
        s.exit_weights = exit_weights;
        s.temperature = 1.25f;
        s.opt.average = 0.9f;
    }
    s.input = 6;
    s.outputs = 3;
    s.normalize = norm;
    s.input_scale = 0.25f;
    s.layers = layers;
    s.nlayers = NELEM(layers);
    s.opt.type = type;
    s.opt.lr = type == MNN_OPT_ADAM ? 0.01f : 0.05f;
    s.opt.momentum = type == MNN_OPT_SGD ? 0.9f : 0;
    s.opt.weight_decay = 1e-4f;
    s.opt.lr_decay = 0.01f;
    s.batch = 4;
    s.seed = 77;
    if (mnn_model_init(m, &s) < 0)
        return -1;
    if (mnn_optim_init(o, &m->spec.opt, m->nparams) < 0) {
        mnn_model_free(m);
        return -1;
    }
    memset(st, 0, sizeof *st);
    st->threads = 3; /* as recorded, whatever this machine has */
    mnn_rng_seed(&st->rng, s.seed);
    mnn_model_init_weights(m, &st->rng);
    float x[4 * 6], y[4];
    for (int step = 0; step < 5; step++) {
        for (size_t i = 0; i < NELEM(x); i++)
            x[i] = (float)(mnn_rng_uniform(&st->rng) * 8 + (double)(i % 6));
        for (size_t i = 0; i < NELEM(y); i++)
            y[i] = (float)(mnn_rng_next(&st->rng) % 3);
        mnn_batch_stats_t bs;
        if (mnn_model_train_batch(m, o, x, y, 4, &bs) < 0)
            return -1;
        st->step++;
        st->records_seen += 4;
        st->loss_sum += bs.loss_sum;
        st->correct += bs.correct;
    }
    st->loss_sum += 1e-13; /* digits that only %.17g keeps */
    return 0;
}

static void ckpt_roundtrip(const char *what, mnn_opt_type_t type, mnn_norm_t norm,
                           const char *name, int with_exits)
{
    mnn_model_t m, m2;
    mnn_optim_t o, o2;
    mnn_train_state_t st, st2;
    mnn_diag_t d = {""};
    char dir[256], root[128];
    if (!check(make_trained(&m, &o, &st, type, norm, with_exits) == 0, "%s: build and train a model", what))
        return;
    tpath(root, sizeof root, "ck");
    mkdir(root, 0755);
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    int rc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d);
    if (!check(rc == 0, "%s: mnn_ckpt_write", what)) {
        diag("rc %d: %s", rc, d.msg);
        goto out;
    }
    memset(&m2, 0, sizeof m2);
    memset(&o2, 0, sizeof o2);
    memset(&st2, 0xff, sizeof st2);
    rc = mnn_ckpt_load(dir, &m2, &o2, &st2, &d);
    if (!check(rc == 0, "%s: mnn_ckpt_load", what)) {
        diag("rc %d: %s", rc, d.msg);
        goto out;
    }
    check(spec_equal(&m.spec, &m2.spec), "%s: the spec comes back", what);
    check(m2.nparams == m.nparams && !memcmp(m.params, m2.params, m.nparams * sizeof(float)),
          "%s: identical parameters", what);
    int norm_same = m.norm_count == m2.norm_count;
    if (norm == MNN_NORM_RUNNING)
        norm_same = norm_same && m2.norm_mean && m2.norm_m2 &&
                    !memcmp(m.norm_mean, m2.norm_mean, m.spec.input * sizeof(double)) &&
                    !memcmp(m.norm_m2, m2.norm_m2, m.spec.input * sizeof(double));
    else
        norm_same = norm_same && m2.norm_mean == NULL;
    check(norm_same, "%s: identical normalization state (count %llu)", what,
          (unsigned long long)m2.norm_count);
    int opt_same = o2.step == o.step && o2.spec.type == o.spec.type && o2.n == o.n &&
                   !memcmp(o.m1, o2.m1, o.n * sizeof(float));
    if (type == MNN_OPT_ADAM)
        opt_same = opt_same && o2.m2 && !memcmp(o.m2, o2.m2, o.n * sizeof(float));
    if (o.avg)
        opt_same = opt_same && o2.avg && !memcmp(o.avg, o2.avg, o.n * sizeof(float));
    check(opt_same, "%s: identical optimizer moments and step (%llu)", what,
          (unsigned long long)o2.step);
    check(same_state(&st, &st2), "%s: identical training state (step, records, loss_sum, "
                                 "correct, rng)", what);
    {
        float x[2 * 6], p1[2 * 3], p2[2 * 3];
        uint8_t t1[2], t2[2];
        fill_sym(x, NELEM(x), 5);
        mnn_model_predict(&m, x, 2, p1);
        mnn_model_predict(&m2, x, 2, p2);
        check(!memcmp(p1, p2, sizeof p1), "%s: the loaded model predicts the same", what);
        mnn_model_predict_exit(&m, x, 2, p1, 0.5f, MNN_CRIT_MAXPROB, t1);
        mnn_model_predict_exit(&m2, x, 2, p2, 0.5f, MNN_CRIT_MAXPROB, t2);
        check(!memcmp(p1, p2, sizeof p1) && !memcmp(t1, t2, sizeof t1),
              "%s: ... and through mnn_model_predict_exit", what);
    }
    /* the weights file is plain safetensors, layers.I.weight [out,in] */
    {
        char fp[320];
        mnn_st_file_t *f;
        snprintf(fp, sizeof fp, "%s/model.safetensors", dir);
        rc = mnn_st_open(&f, fp, &d);
        if (check(rc == 0, "%s: model.safetensors opens", what)) {
            const void *p;
            const float *w = mnn_optim_weights(&o, m.params);
            int good = 1;
            for (size_t i = 0; i < m.spec.nlayers; i++) {
                char nm[48];
                snprintf(nm, sizeof nm, "layers.%zu.weight", i);
                good &= mnn_st_get(f, nm, 0, 2, (size_t[2]){m.spec.layers[i].units, m.fan_in[i]},
                                   &p, NULL) == 0 &&
                        !memcmp(p, w + m.w_off[i],
                                m.spec.layers[i].units * m.fan_in[i] * sizeof(float));
                snprintf(nm, sizeof nm, "layers.%zu.bias", i);
                good &= mnn_st_get(f, nm, 0, 1, (size_t[1]){m.spec.layers[i].units}, &p, NULL) ==
                        0;
            }
            const char *fm = mnn_st_meta(f, "format");
            check(good && fm && !strcmp(fm, "pt"),
                  "%s: model.safetensors holds layers.I.weight [out,in], layers.I.bias, "
                  "format pt", what);
            int heads = 1;
            for (size_t j = 0; j < m.spec.nexits; j++) {
                char nm[48];
                size_t K = m.spec.outputs, C = m.spec.layers[m.spec.exits[j]].units;
                snprintf(nm, sizeof nm, "exits.%zu.weight", j);
                heads &= mnn_st_get(f, nm, 0, 2, (size_t[2]){K, C}, &p, NULL) == 0 &&
                         !memcmp(p, w + m.ew_off[j], K * C * sizeof(float));
                snprintf(nm, sizeof nm, "exits.%zu.bias", j);
                heads &= mnn_st_get(f, nm, 0, 1, (size_t[1]){K}, &p, NULL) == 0 &&
                         !memcmp(p, w + m.eb_off[j], K * sizeof(float));
            }
            heads &= mnn_st_get(f, "exits.0.weight", 0, 2, (size_t[2]){3, 5}, &p, NULL) ==
                     (m.spec.nexits ? 0 : MNN_ESHAPE);
            check(heads, "%s: model.safetensors holds exits.J.weight [outputs,units] and "
                         "exits.J.bias for the %zu exit heads, and none without", what,
                  m.spec.nexits);
            mnn_st_close(f);
        }
        snprintf(fp, sizeof fp, "%s/optimizer.safetensors", dir);
        rc = mnn_st_open(&f, fp, &d);
        if (check(rc == 0, "%s: optimizer.safetensors opens", what)) {
            const void *p;
            int good = 1;
            const char *sfx = type == MNN_OPT_ADAM ? "exp_avg" : "momentum_buffer";
            for (size_t j = 0; j < m.spec.nexits; j++) {
                char nm[64];
                size_t K = m.spec.outputs, C = m.spec.layers[m.spec.exits[j]].units;
                snprintf(nm, sizeof nm, "exits.%zu.weight.%s", j, sfx);
                good &= mnn_st_get(f, nm, 0, 2, (size_t[2]){K, C}, &p, NULL) == 0 &&
                        !memcmp(p, o.m1 + m.ew_off[j], K * C * sizeof(float));
                snprintf(nm, sizeof nm, "exits.%zu.bias.param", j);
                good &= mnn_st_get(f, nm, 0, 1, (size_t[1]){K}, &p, NULL) == 0 &&
                        !memcmp(p, m.params + m.eb_off[j], K * sizeof(float));
            }
            check(good, "%s: optimizer.safetensors holds exits.J.weight.%s and "
                        "exits.J.bias.param", what, sfx);
            mnn_st_close(f);
        }
    }
    mnn_optim_free(&o2);
    mnn_model_free(&m2);

    d.msg[0] = 0;
    rc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000001, 0, &d);
    check(rc == MNN_EEXIST, "%s: writing again without replace is MNN_EEXIST (rc %d, \"%s\")",
          what, rc, d.msg);
    memset(&m2, 0, sizeof m2);
    rc = mnn_ckpt_load(dir, &m2, NULL, NULL, &d);
    /* without the optimizer, the weights are those for inference */
    if (check(rc == 0 && !memcmp(mnn_optim_weights(&o, m.params), m2.params,
                                 m.nparams * sizeof(float)),
              "%s: the first checkpoint is intact after the refused write", what))
        mnn_model_free(&m2);
    rc = mnn_ckpt_write(dir, &m, &o, &st, "step-0", 1700000002, 1, &d);
    check(rc == 0, "%s: writing again with replace succeeds (rc %d)", what, rc);

out:
    mnn_optim_free(&o);
    mnn_model_free(&m);
}

static void flip_byte(const char *path, long where)
{
    size_t n = 0;
    char *buf = slurp(path, &n);
    if (!buf || n == 0) {
        free(buf);
        return;
    }
    size_t at = where < 0 ? n - (size_t)(-where) : (size_t)where;
    buf[at] ^= 0x01;
    write_bytes(path, buf, n);
    free(buf);
}

static void test_ckpt(void)
{
    ckpt_roundtrip("adam checkpoint, normalize running", MNN_OPT_ADAM, MNN_NORM_RUNNING,
                   "step-00000005", 0);
    ckpt_roundtrip("sgd checkpoint", MNN_OPT_SGD, MNN_NORM_NONE, "step-00000006", 0);
    ckpt_roundtrip("sgd checkpoint, two exit heads, averaging", MNN_OPT_SGD, MNN_NORM_NONE,
                   "step-00000007", 1);
    ckpt_roundtrip("adam checkpoint, two exit heads, averaging", MNN_OPT_ADAM,
                   MNN_NORM_RUNNING, "step-00000008", 1);

    char root[128], dir[200], link[200], fp[240];
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    mnn_diag_t d = {""};
    tpath(root, sizeof root, "ck");
    snprintf(dir, sizeof dir, "%s/step-00000005", root);
    snprintf(link, sizeof link, "%s/latest", root);
    if (symlink("step-00000005", link) == 0) {
        memset(&m, 0, sizeof m);
        int rc = mnn_ckpt_load(root, &m, &o, &st, &d);
        if (check(rc == 0 && st.step == 5, "mnn_ckpt_load follows ck/latest (rc %d)", rc)) {
            mnn_optim_free(&o);
            mnn_model_free(&m);
        } else
            diag("%s", d.msg);
    } else
        check(0, "symlink %s", link);

    /* a model whose seed is UINT64_MAX (sgd-train --seed 18446744073709551615) */
    if (make_trained(&m, &o, &st, MNN_OPT_SGD, MNN_NORM_NONE, 0) == 0) {
        mnn_model_t m2;
        m.spec.seed = UINT64_MAX;
        snprintf(dir, sizeof dir, "%s/seed-max", root);
        int rc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d);
        memset(&m2, 0, sizeof m2);
        if (rc == 0)
            rc = mnn_ckpt_load(dir, &m2, NULL, NULL, &d);
        if (check(rc == 0 && m2.spec.seed == UINT64_MAX,
                  "a checkpoint of a model with seed UINT64_MAX loads (rc %d)", rc))
            mnn_model_free(&m2);
        else
            diag("%s", d.msg);
        mnn_optim_free(&o);
        mnn_model_free(&m);
    } else
        check(0, "build a model for the seed UINT64_MAX checkpoint");
    snprintf(dir, sizeof dir, "%s/step-00000005", root);

    /* where a checkpoint cannot go */
    if (make_trained(&m, &o, &st, MNN_OPT_SGD, MNN_NORM_NONE, 0) == 0) {
        char other[240], keep[260], tmpname[260];
        struct stat sb;
        snprintf(other, sizeof other, "%s/no/such/dir/step-1", root);
        d.msg[0] = 0;
        int rc = mnn_ckpt_write(other, &m, &o, &st, NULL, 0, 0, &d);
        check(rc < 0 && d.msg[0], "mnn_ckpt_write into a missing directory fails (rc %d, \"%s\")",
              rc, d.msg);
        snprintf(other, sizeof other, "%s/notckpt", root);
        snprintf(keep, sizeof keep, "%s/keep.txt", other);
        snprintf(tmpname, sizeof tmpname, "%s/.tmp-notckpt", root);
        mkdir(other, 0755);
        write_bytes(keep, "precious\n", 9);
        d.msg[0] = 0;
        rc = mnn_ckpt_write(other, &m, &o, &st, NULL, 0, 1, &d);
        check(rc == MNN_EEXIST && stat(keep, &sb) == 0 && lstat(tmpname, &sb) != 0,
              "replace refuses a directory that is not a checkpoint, keeps it, leaves no "
              "temporary (rc %d, \"%s\")", rc, d.msg);
        snprintf(other, sizeof other, "%s/afile", root);
        write_bytes(other, "x", 1);
        rc = mnn_ckpt_write(other, &m, &o, &st, NULL, 0, 0, &d);
        check(rc == MNN_EEXIST, "mnn_ckpt_write over a regular file without replace: MNN_EEXIST");
        rc = mnn_ckpt_write(other, &m, &o, &st, NULL, 0, 1, &d);
        check(rc < 0 && stat(other, &sb) == 0 && S_ISREG(sb.st_mode),
              "mnn_ckpt_write over a regular file with replace fails and keeps it (rc %d)", rc);
        mnn_optim_free(&o);
        mnn_model_free(&m);
    } else
        check(0, "build a model for the write-error checks");
    {
        char nodir[240];
        snprintf(nodir, sizeof nodir, "%s/absent", root);
        memset(&m, 0, sizeof m);
        int rc = mnn_ckpt_load(nodir, &m, NULL, NULL, &d);
        check(rc < 0, "mnn_ckpt_load of a missing directory fails (rc %d)", rc);
        memset(&m, 0, sizeof m);
        rc = mnn_ckpt_load(tmpdir, &m, NULL, NULL, &d);
        check(rc == MNN_EFORMAT, "mnn_ckpt_load of a directory without manifest or latest: "
                                 "MNN_EFORMAT (rc %d)", rc);
    }

    /* damage: one flipped bit in the weights, a truncated state */
    snprintf(fp, sizeof fp, "%s/model.safetensors", dir);
    flip_byte(fp, -3);
    memset(&m, 0, sizeof m);
    d.msg[0] = 0;
    int rc = mnn_ckpt_load(dir, &m, &o, &st, &d);
    check(rc == MNN_ECORRUPT && contains(d.msg, "model.safetensors"),
          "a flipped byte in model.safetensors: MNN_ECORRUPT naming the file (rc %d, \"%s\")",
          rc, d.msg);
    if (rc == 0) {
        mnn_optim_free(&o);
        mnn_model_free(&m);
    }
    flip_byte(fp, -3); /* repaired */
    memset(&m, 0, sizeof m);
    rc = mnn_ckpt_load(dir, &m, NULL, NULL, &d);
    if (check(rc == 0, "flipped back: loads again (rc %d)", rc))
        mnn_model_free(&m);
    snprintf(fp, sizeof fp, "%s/step-00000006/state.yaml", root);
    size_t n = 0;
    char *text = slurp(fp, &n);
    if (text && n > 10)
        write_bytes(fp, text, n - 10);
    free(text);
    memset(&m, 0, sizeof m);
    d.msg[0] = 0;
    snprintf(dir, sizeof dir, "%s/step-00000006", root);
    rc = mnn_ckpt_load(dir, &m, &o, &st, &d);
    check(rc == MNN_ECORRUPT && contains(d.msg, "state.yaml"),
          "a truncated state.yaml: MNN_ECORRUPT (rc %d, \"%s\")", rc, d.msg);
    if (rc == 0) {
        mnn_optim_free(&o);
        mnn_model_free(&m);
    }
}

/* ---- checkpoints: finite values, tampering, roots ------------------------- */

/* Expects mnn_state_check to fail naming want (NULL: to pass). */
static void state_bad(fails_t *f, const char *what, const mnn_model_t *m, const mnn_optim_t *o,
                      const char *want)
{
    mnn_diag_t d = {""};
    int rc = mnn_state_check(m, o, &d);
    if (want ? rc != MNN_ECORRUPT || !contains(d.msg, want) : rc != 0)
        fail_at(f, "%s: rc %d, \"%s\"%s%s", what, rc, d.msg, want ? ", want " : "",
                want ? want : "");
}

static void test_state_check(void)
{
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    if (!check(make_trained(&m, &o, &st, MNN_OPT_ADAM, MNN_NORM_RUNNING, 1) == 0 && o.m2 &&
                   o.avg && m.norm_mean,
               "mnn_state_check: an adam model with exit heads, averaging and normalization"))
        return;
    mnn_diag_t d = {""};
    int rc = mnn_state_check(&m, &o, &d);
    check(rc == 0 && mnn_state_check(&m, NULL, &d) == 0, "mnn_state_check of a trained state: 0 "
                                                         "(rc %d, \"%s\")", rc, d.msg);
    const float fnan = NAN, finf = INFINITY;
    const struct {
        int buf; /* 0 params, 1 exp_avg, 2 exp_avg_sq, 3 average */
        size_t at;
        float v;
        const char *want;
    } cases[] = {
        {0, m.w_off[0] + 23, fnan, "layers.0.weight[23] is not finite (nan)"},
        {0, m.w_off[0], fnan, "layers.0.weight[0] is not finite (nan)"},
        {0, m.w_off[1] + 7, finf, "layers.1.weight[7] is not finite (inf)"},
        {0, m.b_off[1], fnan, "layers.1.bias[0] is not finite (nan)"},
        {0, m.b_off[2] + 2, -finf, "layers.2.bias[2] is not finite (-inf)"},
        {0, m.ew_off[0] + 14, fnan, "exits.0.weight[14] is not finite (nan)"},
        {0, m.ew_off[1] + 5, finf, "exits.1.weight[5] is not finite (inf)"},
        {0, m.nparams - 1, fnan, "exits.1.bias[2] is not finite (nan)"},
        {1, m.b_off[0] + 2, fnan, "layers.0.bias.exp_avg[2] is not finite (nan)"},
        {1, m.ew_off[0] + 1, -finf, "exits.0.weight.exp_avg[1] is not finite (-inf)"},
        {2, m.b_off[0] + 2, -1, "layers.0.bias.exp_avg_sq[2] is negative (-1)"},
        {2, m.w_off[2], fnan, "layers.2.weight.exp_avg_sq[0] is not finite (nan)"},
        {2, m.eb_off[0], -1e-30f, "exits.0.bias.exp_avg_sq[0] is negative (-1e-30)"},
        {2, m.w_off[1] + 3, finf, "layers.1.weight.exp_avg_sq[3] is not finite (inf)"},
        {3, m.w_off[1] + 3, fnan, "layers.1.weight"},
        {3, m.eb_off[1], -finf, "exits.1.bias"},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(cases); i++) {
        float *buf = cases[i].buf == 0 ? m.params : cases[i].buf == 1 ? o.m1
                   : cases[i].buf == 2 ? o.m2 : o.avg;
        const float keep = buf[cases[i].at];
        buf[cases[i].at] = cases[i].v;
        state_bad(&f, cases[i].want, &m, &o, cases[i].want);
        if (cases[i].buf == 3) {
            d.msg[0] = 0;
            mnn_state_check(&m, &o, &d);
            if (!contains(d.msg, "average") || !contains(d.msg, "is not finite"))
                fail_at(&f, "the average: \"%s\" does not say average, not finite", d.msg);
        }
        if (cases[i].buf > 0)
            state_bad(&f, "the optimizer not given", &m, NULL, NULL);
        buf[cases[i].at] = keep;
    }
    check(f.bad == 0, "mnn_state_check: NaN, +Inf, -Inf in weights, exp_avg, exp_avg_sq and "
                      "the average, a negative exp_avg_sq: MNN_ECORRUPT naming the tensor and "
                      "index (%zu cases)", NELEM(cases));

    f = (fails_t){0, 0};
    const size_t last = m.spec.input - 1;
    const struct {
        int m2;
        size_t at;
        double v;
        const char *want;
    } norm[] = {
        {1, 2, NAN, "normalize.m2[2] is not finite"},
        {1, last, -0.5, "normalize.m2[5] is negative"},
        {1, 0, -INFINITY, "normalize.m2[0] is not finite"},
        {0, 1, NAN, "normalize.mean[1] is not finite"},
        {0, last, INFINITY, "normalize.mean[5] is not finite"},
    };
    for (size_t i = 0; i < NELEM(norm); i++) {
        double *buf = norm[i].m2 ? m.norm_m2 : m.norm_mean;
        const double keep = buf[norm[i].at];
        buf[norm[i].at] = norm[i].v;
        state_bad(&f, norm[i].want, &m, &o, norm[i].want);
        state_bad(&f, norm[i].want, &m, NULL, norm[i].want);
        buf[norm[i].at] = keep;
    }
    check(f.bad == 0, "mnn_state_check: a NaN or negative normalize m2, a NaN or Inf mean: "
                      "MNN_ECORRUPT naming it (%zu cases)", NELEM(norm));

    /* what is allowed: any finite weight or moment, a negative exp_avg, -0 */
    f = (fails_t){0, 0};
    const float keep0 = m.params[0], keep1 = m.params[1], keep2 = m.params[2];
    const float km1 = o.m1[4], km2 = o.m2[4];
    const double kmean = m.norm_mean[0], km2n = m.norm_m2[0];
    m.params[0] = FLT_MAX;
    m.params[1] = -FLT_MAX;
    m.params[2] = 1e-45f; /* subnormal */
    o.m1[4] = -3;
    o.m2[4] = -0.0f;
    m.norm_mean[0] = -1e300;
    m.norm_m2[0] = 0;
    state_bad(&f, "extreme finite values, a negative exp_avg, an exp_avg_sq of -0", &m, &o, NULL);
    /* the first bad value in the order of the parameters is the one named */
    m.params[m.w_off[2]] = fnan;
    m.params[m.w_off[0] + 3] = finf;
    state_bad(&f, "two bad weights", &m, &o, "layers.0.weight[3] is not finite (inf)");
    m.params[m.w_off[2]] = 0;
    m.params[m.w_off[0] + 3] = 0;
    m.params[0] = keep0;
    m.params[1] = keep1;
    m.params[2] = keep2;
    o.m1[4] = km1;
    o.m2[4] = km2;
    m.norm_mean[0] = kmean;
    m.norm_m2[0] = km2n;
    check(f.bad == 0, "mnn_state_check accepts extreme finite values, a negative exp_avg and "
                      "-0; of two bad weights it names the first");
    mnn_optim_free(&o);
    mnn_model_free(&m);

    /* a model of more than one 4096-value block */
    mnn_spec_t s;
    mnn_layer_spec_t layers[] = {{64, MNN_ACT_RELU}, {3, MNN_ACT_NONE}};
    mnn_spec_defaults(&s);
    s.input = 100;
    s.outputs = 3;
    s.layers = layers;
    s.nlayers = 2;
    s.opt.type = MNN_OPT_ADAM;
    if (!check(mnn_model_init(&m, &s) == 0, "mnn_state_check: a model of 6659 parameters"))
        return;
    if (mnn_optim_init(&o, &m.spec.opt, m.nparams) < 0) {
        mnn_model_free(&m);
        check(0, "mnn_optim_init");
        return;
    }
    const size_t at[] = {0, 1, 4094, 4095, 4096, 4097, 5000, 6399, 6400, 6463, 6464, 6655, 6658};
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(at); i++)
        for (int which = 0; which < 2; which++) {
            const size_t k = at[i];
            char want[96];
            size_t layer = k < m.b_off[0] + 64 ? 0 : 1;
            int w = k < m.b_off[layer];
            snprintf(want, sizeof want, "layers.%zu.%s%s[%zu] is %s", layer, w ? "weight" : "bias",
                     which ? ".exp_avg_sq" : "", k - (w ? m.w_off[layer] : m.b_off[layer]),
                     which ? "negative (-2)" : "not finite (nan)");
            float *buf = which ? o.m2 : m.params;
            buf[k] = which ? -2.0f : fnan;
            state_bad(&f, want, &m, &o, want);
            buf[k] = 0;
        }
    check(f.bad == 0, "mnn_state_check over 6659 parameters: a bad value at any place, at "
                      "and around the 4096 block edges, is found and named (%zu places)",
          NELEM(at));
    mnn_optim_free(&o);
    mnn_model_free(&m);
}

/* "" if no entry of dir starts with .tmp-, else the listing */
static const char *tmp_left(const char *dir, char *buf, size_t size)
{
    dir_list(dir, buf, size);
    return contains(buf, ".tmp-") || !strcmp(buf, "?") ? buf : "";
}

static void test_ckpt_write_refuses(void)
{
    mnn_model_t m, m2;
    mnn_optim_t o;
    mnn_train_state_t st, st2;
    char root[128], dir[200], l[1024];
    if (!check(make_trained(&m, &o, &st, MNN_OPT_ADAM, MNN_NORM_RUNNING, 1) == 0,
               "mnn_ckpt_write refusals: a model"))
        return;
    tpath(root, sizeof root, "refuse");
    mkdir(root, 0755);
    snprintf(dir, sizeof dir, "%s/step-00000005", root);
    const struct {
        int buf; /* 0 params, 1 exp_avg, 2 exp_avg_sq, 3 average, 4 norm m2, 5 norm mean */
        size_t at;
        float v;
        const char *want;
    } cases[] = {
        {0, m.w_off[1] + 2, NAN, "layers.1.weight[2]"},
        {0, m.nparams - 1, INFINITY, "exits.1.bias[2]"},
        {1, 3, -INFINITY, "layers.0.weight.exp_avg[3]"},
        {2, m.b_off[2], -1, "layers.2.bias.exp_avg_sq[0] is negative"},
        {3, 0, NAN, "average"},
        {4, 1, -1, "normalize.m2[1]"},
        {5, 2, NAN, "normalize.mean[2]"},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(cases); i++) {
        float *buf = cases[i].buf == 0 ? m.params : cases[i].buf == 1 ? o.m1
                   : cases[i].buf == 2 ? o.m2 : cases[i].buf == 3 ? o.avg : NULL;
        double *dbuf = cases[i].buf == 4 ? m.norm_m2 : m.norm_mean;
        const float keep = buf ? buf[cases[i].at] : 0;
        const double dkeep = buf ? 0 : dbuf[cases[i].at];
        if (buf)
            buf[cases[i].at] = cases[i].v;
        else
            dbuf[cases[i].at] = cases[i].v;
        mnn_diag_t d = {""};
        int rc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d);
        if (rc != MNN_EINVAL || !contains(d.msg, cases[i].want) || !contains(d.msg, dir) ||
            exists(dir) || tmp_left(root, l, sizeof l)[0])
            fail_at(&f, "%s: rc %d, \"%s\", %s, left: %s", cases[i].want, rc, d.msg,
                    exists(dir) ? "written" : "not written", tmp_left(root, l, sizeof l));
        if (buf)
            buf[cases[i].at] = keep;
        else
            dbuf[cases[i].at] = dkeep;
    }
    check(f.bad == 0, "mnn_ckpt_write of a state with a value that is not finite (or a "
                      "negative second moment or variance): MNN_EINVAL naming it, nothing "
                      "written, no .tmp-* left (%zu cases)", NELEM(cases));

    const uint32_t bad_threads[] = {0, 1025, UINT32_MAX};
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(bad_threads); i++) {
        mnn_diag_t d = {""};
        st.threads = bad_threads[i];
        int rc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d);
        if (rc != MNN_EINVAL || exists(dir) || tmp_left(root, l, sizeof l)[0])
            fail_at(&f, "threads %u: rc %d, \"%s\", %s, left: %s", bad_threads[i], rc, d.msg,
                    exists(dir) ? "written" : "not written", tmp_left(root, l, sizeof l));
    }
    check(f.bad == 0, "mnn_ckpt_write refuses threads 0, 1025 and 2^32-1: MNN_EINVAL, nothing "
                      "written, no .tmp-* left");
    /* with replace, a refused write leaves the checkpoint there as it was */
    {
        mnn_diag_t d = {""};
        st.threads = 2;
        int rc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d);
        st.threads = 0;
        int rc1 = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000001, 1, &d);
        st.threads = 2;
        const float keep = m.params[3];
        m.params[3] = NAN;
        int rc2 = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000002, 1, &d);
        m.params[3] = keep;
        memset(&m2, 0, sizeof m2);
        int lrc = mnn_ckpt_load(dir, &m2, NULL, &st2, &d);
        if (check(rc == 0 && rc1 == MNN_EINVAL && rc2 == MNN_EINVAL && lrc == 0 &&
                      st2.threads == 2 && !tmp_left(root, l, sizeof l)[0],
                  "mnn_ckpt_write with replace, of threads 0 and of a NaN: MNN_EINVAL, the "
                  "checkpoint there still loads, no .tmp-* left (rc %d, %d, %d, %d)", rc, rc1,
                  rc2, lrc))
            mnn_model_free(&m2);
        mnn_remove_tree(dir);
    }
    const uint32_t good_threads[] = {1, 1024};
    for (size_t i = 0; i < NELEM(good_threads); i++) {
        mnn_diag_t d = {""};
        st.threads = good_threads[i];
        snprintf(dir, sizeof dir, "%s/threads-%u", root, good_threads[i]);
        int rc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d);
        memset(&m2, 0, sizeof m2);
        memset(&st2, 0, sizeof st2);
        int lrc = rc == 0 ? mnn_ckpt_load(dir, &m2, NULL, &st2, &d) : -1;
        if (check(rc == 0 && lrc == 0 && st2.threads == good_threads[i],
                  "mnn_ckpt_write and mnn_ckpt_load with threads %u (rc %d, %d, \"%s\")",
                  good_threads[i], rc, lrc, d.msg))
            mnn_model_free(&m2);
    }
    mnn_optim_free(&o);
    mnn_model_free(&m);
    rm_rf(root);
}

/* The XXH3-64 of p[0, n) as 16 hex digits, by way of mnn_hash_file. */
static int hash_bytes(const char *p, size_t n, char hex[17])
{
    char tmp[128];
    uint64_t got = 0;
    tpath(tmp, sizeof tmp, "hash-me.tmp");
    int rc = write_bytes(tmp, p, n) == 0 ? mnn_hash_file(tmp, hex, &got) : -1;
    unlink(tmp);
    return rc == 0 && got == n ? 0 : -1;
}

/* Replaces the line of path that starts with prefix by repl (which
 * brings its own '\n', or is "" to delete it): 0, or -1 if there is none. */
static int edit_line(const char *path, const char *prefix, const char *repl)
{
    size_t n = 0;
    char *buf = slurp(path, &n), *at = NULL;
    if (buf && !strncmp(buf, prefix, strlen(prefix)))
        at = buf;
    for (char *p = buf; !at && p && (p = strchr(p, '\n')); p++)
        if (!strncmp(p + 1, prefix, strlen(prefix)))
            at = p + 1;
    if (!at) {
        free(buf);
        return -1;
    }
    char *end = strchr(at, '\n');
    end = end ? end + 1 : buf + n;
    size_t pre = (size_t)(at - buf), post = n - (size_t)(end - buf), lr = strlen(repl);
    char *out = malloc(pre + lr + post + 1);
    int rc = -1;
    if (out) {
        memcpy(out, buf, pre);
        memcpy(out + pre, repl, lr);
        memcpy(out + pre + lr, end, post);
        rc = write_bytes(path, out, pre + lr + post);
    }
    free(out);
    free(buf);
    return rc;
}

/* Rewrites manifest.yaml's last line, 'manifest_xxh3: HEX', from the bytes
 * before it (appending one if there is none). */
static int reseal(const char *dir)
{
    char mp[300], hex[17];
    size_t n = 0;
    snprintf(mp, sizeof mp, "%s/manifest.yaml", dir);
    char *buf = slurp(mp, &n);
    if (!buf)
        return -1;
    char *seal = strstr(buf, "\nmanifest_xxh3: ");
    size_t keep = seal ? (size_t)(seal + 1 - buf) : n;
    int rc = -1;
    char *out = malloc(keep + 40);
    if (out && hash_bytes(buf, keep, hex) == 0) {
        memcpy(out, buf, keep);
        int k = snprintf(out + keep, 40, "manifest_xxh3: %s\n", hex);
        rc = write_bytes(mp, out, keep + (size_t)k);
    }
    free(out);
    free(buf);
    return rc;
}

/* Sets the manifest's entry for name (bytes: given, or the file's size when
 * NULL; xxh3: the file's), then reseals. */
static int set_entry(const char *dir, const char *name, const char *bytes)
{
    char fp[300], mp[300], prefix[96], line[160], hex[17];
    uint64_t got;
    snprintf(fp, sizeof fp, "%s/%s", dir, name);
    snprintf(mp, sizeof mp, "%s/manifest.yaml", dir);
    if (mnn_hash_file(fp, hex, &got) < 0)
        return -1;
    snprintf(prefix, sizeof prefix, "  - {name: %s,", name);
    if (bytes)
        snprintf(line, sizeof line, "  - {name: %s, bytes: %s, xxh3: %s}\n", name, bytes, hex);
    else
        snprintf(line, sizeof line, "  - {name: %s, bytes: %llu, xxh3: %s}\n", name,
                 (unsigned long long)got, hex);
    return edit_line(mp, prefix, line) == 0 ? reseal(dir) : -1;
}

static int load_ckpt(const char *dir, mnn_diag_t *d)
{
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    memset(&m, 0, sizeof m);
    d->msg[0] = 0;
    int rc = mnn_ckpt_load(dir, &m, &o, &st, d);
    if (rc == 0) {
        mnn_optim_free(&o);
        mnn_model_free(&m);
    }
    return rc;
}

static void test_ckpt_tamper(void)
{
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    char root[128], dir[200], fp[300], mp[300];
    mnn_diag_t d = {""};
    if (!check(make_trained(&m, &o, &st, MNN_OPT_SGD, MNN_NORM_NONE, 0) == 0 && st.step == 5 &&
                   st.records_seen == 20 && m.spec.nlayers == 3,
               "tampered checkpoints: a model at step 5, 20 records seen"))
        return;
    tpath(root, sizeof root, "tamper");
    mkdir(root, 0755);
    int n = 0;
#define FRESH()                                                                              \
    (snprintf(dir, sizeof dir, "%s/ck%d", root, n++),                                        \
     snprintf(fp, sizeof fp, "%s/state.yaml", dir),                                          \
     snprintf(mp, sizeof mp, "%s/manifest.yaml", dir),                                       \
     mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d))
    /* the helpers themselves: rehashing and resealing what did not change,
     * or changed harmlessly, loads */
    int rc = FRESH(), e = 0;
    e |= set_entry(dir, "state.yaml", NULL);
    e |= edit_line(fp, "# ", "# edited by hand, harmlessly\n");
    e |= set_entry(dir, "state.yaml", NULL);
    e |= edit_line(mp, "tool: ", "tool: somebody else\n");
    e |= reseal(dir);
    int lrc = load_ckpt(dir, &d);
    if (!check(rc == 0 && e == 0 && lrc == 0,
               "a checkpoint with state.yaml's comment and the manifest's tool edited, rehashed "
               "and resealed, loads (rc %d, %d, \"%s\")", rc, lrc, d.msg))
        goto out;

    rc = FRESH();
    e = edit_line(fp, "step: ", "step: 6\n") | set_entry(dir, "state.yaml", NULL);
    lrc = load_ckpt(dir, &d);
    check(rc == 0 && e == 0 && lrc == MNN_ECORRUPT && contains(d.msg, "disagree"),
          "state.yaml's step edited (and rehashed): MNN_ECORRUPT, state and manifest disagree "
          "(rc %d, \"%s\")", lrc, d.msg);
    rc = FRESH();
    e = edit_line(fp, "records_seen: ", "records_seen: 24\n") | set_entry(dir, "state.yaml", NULL);
    lrc = load_ckpt(dir, &d);
    check(rc == 0 && e == 0 && lrc == MNN_ECORRUPT && contains(d.msg, "disagree"),
          "state.yaml's records_seen edited (and rehashed): MNN_ECORRUPT (rc %d, \"%s\")", lrc,
          d.msg);
    rc = FRESH();
    e = edit_line(fp, "step: ", "step: 6\n");
    lrc = load_ckpt(dir, &d);
    check(rc == 0 && e == 0 && lrc == MNN_ECORRUPT && contains(d.msg, "state.yaml") &&
              contains(d.msg, "hash does not match the manifest"),
          "state.yaml's step edited, not rehashed: MNN_ECORRUPT, its hash (rc %d, \"%s\")", lrc,
          d.msg);

    rc = FRESH();
    e = edit_line(mp, "records_seen: ", "records_seen: 21\n");
    lrc = load_ckpt(dir, &d);
    check(rc == 0 && e == 0 && lrc == MNN_ECORRUPT && contains(d.msg, "manifest.yaml") &&
              contains(d.msg, "hash does not match its contents"),
          "the manifest edited without resealing: MNN_ECORRUPT (rc %d, \"%s\")", lrc, d.msg);
    e = reseal(dir);
    lrc = load_ckpt(dir, &d);
    check(e == 0 && lrc == MNN_ECORRUPT && contains(d.msg, "disagree"),
          "... and resealed: the state disagrees with it (rc %d, \"%s\")", lrc, d.msg);
    rc = FRESH();
    e = edit_line(mp, "manifest_xxh3: ", "");
    lrc = load_ckpt(dir, &d);
    check(rc == 0 && e == 0 && lrc == MNN_ECORRUPT && contains(d.msg, "no 'manifest_xxh3: "),
          "the manifest's seal line removed: MNN_ECORRUPT (rc %d, \"%s\")", lrc, d.msg);
    rc = FRESH();
    e = edit_line(mp, "manifest_xxh3: ", "manifest_xxh3: 0123456789abcdef\n");
    lrc = load_ckpt(dir, &d);
    check(rc == 0 && e == 0 && lrc == MNN_ECORRUPT &&
              contains(d.msg, "hash does not match its contents"),
          "a wrong seal: MNN_ECORRUPT (rc %d, \"%s\")", lrc, d.msg);

    /* sizes the spec does not allow, with the manifest resealed */
    static const struct {
        const char *file, *bytes;
    } sizes[] = {
        {"model.safetensors", "1"},
        {"model.safetensors", "1000000000000"},
        {"optimizer.safetensors", "8"},
        {"optimizer.safetensors", "18446744073709551615"},
        {"state.yaml", "0"},
        {"state.yaml", "65537"},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(sizes); i++) {
        rc = FRESH();
        e = set_entry(dir, sizes[i].file, sizes[i].bytes);
        lrc = load_ckpt(dir, &d);
        if (rc || e || lrc != MNN_ECORRUPT || !contains(d.msg, sizes[i].file) ||
            !contains(d.msg, "bytes, but its model spec allows"))
            fail_at(&f, "%s listed with %s bytes: rc %d, \"%s\"", sizes[i].file, sizes[i].bytes,
                    lrc, d.msg);
    }
    check(f.bad == 0, "a manifest listing a size the model spec does not allow (too small, too "
                      "large, for each file): MNN_ECORRUPT (%zu cases)", NELEM(sizes));

    /* an extra file, listed with its true size and hash */
    rc = FRESH();
    snprintf(fp, sizeof fp, "%s/extra.bin", dir);
    e = write_bytes(fp, "abc", 3);
    char hex[17] = "";
    uint64_t got;
    e |= mnn_hash_file(fp, hex, &got);
    char line[128];
    snprintf(line, sizeof line, "files:\n  - {name: extra.bin, bytes: 3, xxh3: %s}\n", hex);
    e |= edit_line(mp, "files:", line) | reseal(dir);
    lrc = load_ckpt(dir, &d);
    check(rc == 0 && e == 0 && lrc == MNN_EFORMAT && contains(d.msg, "lists extra.bin"),
          "a manifest listing an unknown extra file: MNN_EFORMAT (rc %d, \"%s\")", lrc, d.msg);

    /* state.yaml's content, rehashed */
    static const struct {
        const char *prefix, *repl, *want, *what;
    } states[] = {
        {"threads: ", "", "state.yaml", "the threads line missing"},
        {"threads: ", "threads: 0\n", "threads", "threads: 0"},
        {"threads: ", "threads: 1025\n", "threads", "threads: 1025"},
        {"threads: ", "threads: -1\n", "threads", "threads: -1"},
        {"rng: ", "rng: [0, 0, 0, 0]\n", "all-zero", "an all-zero rng"},
        {"rng: ", "rng: [1, 2, 3]\n", "state.yaml", "an rng of 3 words"},
        {"progressive: ", "progressive: {loss_sum: -1, correct: 3}\n", "state.yaml",
         "a negative loss_sum"},
        {"progressive: ", "progressive: {loss_sum: 1, correct: 21}\n", "state.yaml",
         "more correct than seen"},
    };
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(states); i++) {
        rc = FRESH();
        e = edit_line(fp, states[i].prefix, states[i].repl) | set_entry(dir, "state.yaml", NULL);
        lrc = load_ckpt(dir, &d);
        if (rc || e || lrc >= 0 || !contains(d.msg, "state.yaml") || !contains(d.msg, states[i].want))
            fail_at(&f, "%s: rc %d, \"%s\"", states[i].what, lrc, d.msg);
    }
    check(f.bad == 0, "state.yaml (rehashed) without threads, threads 0, 1025 or -1, an all-zero "
                      "or short rng, bad progressive counts: refused (%zu cases)", NELEM(states));
    rc = FRESH();
    e = edit_line(fp, "threads: ", "threads: 1024\n") | set_entry(dir, "state.yaml", NULL);
    lrc = load_ckpt(dir, &d);
    check(rc == 0 && e == 0 && lrc == 0, "state.yaml with threads: 1024 (rehashed) loads (rc %d, "
                                         "\"%s\")", lrc, d.msg);

    /* a NaN written into the weights and the momentum, rehashed: the loader's
     * own check */
    static const struct {
        const char *file, *want;
    } nans[] = {
        {"model.safetensors", "layers.2.weight[11] is not finite"},
        {"optimizer.safetensors", "layers.2.weight.momentum_buffer[11] is not finite"},
    };
    for (size_t i = 0; i < NELEM(nans); i++) {
        rc = FRESH();
        snprintf(fp, sizeof fp, "%s/%s", dir, nans[i].file);
        size_t len = 0;
        char *buf = slurp(fp, &len);
        e = -1;
        if (buf && len > 4) {
            /* the last tensor in name order is the last in the file */
            const float v = NAN;
            memcpy(buf + len - 4, &v, 4);
            e = write_bytes(fp, buf, len) | set_entry(dir, nans[i].file, NULL);
        }
        free(buf);
        lrc = load_ckpt(dir, &d);
        check(rc == 0 && e == 0 && lrc == MNN_ECORRUPT && contains(d.msg, nans[i].want),
              "a NaN in %s (rehashed): mnn_ckpt_load says MNN_ECORRUPT, naming it (rc %d, "
              "\"%s\")", nans[i].file, lrc, d.msg);
    }
#undef FRESH
out:
    mnn_optim_free(&o);
    mnn_model_free(&m);
    rm_rf(root);
}

static void test_state_parse(void)
{
    const char *good = "# comment\nstep: 5\nrecords_seen: 20\n"
                       "rng: [1, 18446744073709551615, 0, 4]\n"
                       "progressive: {loss_sum: 12.5, correct: 7}\nthreads: 2\n";
    mnn_train_state_t st;
    mnn_diag_t d = {""};
    int rc = mnn_state_parse(&st, good, strlen(good), "state.yaml", &d);
    check(rc == 0 && st.step == 5 && st.records_seen == 20 && st.rng.s[0] == 1 &&
              st.rng.s[1] == UINT64_MAX && st.rng.s[2] == 0 && st.rng.s[3] == 4 &&
              st.loss_sum == 12.5 && st.correct == 7 && st.threads == 2,
          "mnn_state_parse: every field (rc %d, \"%s\")", rc, d.msg);
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: 1, correct: 7}\n",
         "state.yaml"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: 0\n", "state.yaml:5:10: threads: 0 is not in 1..1024"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: 1025\n", "threads: 1025 is not in 1..1024"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: 18446744073709551616\n", "state.yaml:5:10:"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: two\n", "state.yaml:5:10:"},
        {"step: 5\nrecords_seen: 20\nrng: [0, 0, 0, 0]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: 1\n", "state.yaml:3:6: rng: an all-zero generator state"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: 1\n", "state.yaml"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4, 5]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: 1\n", "state.yaml"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, x, 4]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: 1\n", "state.yaml:3:13:"},
        {"records_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: 1, correct: 7}\n"
         "threads: 1\n", "state.yaml"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nthreads: 1\n", "state.yaml"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: 1, correct: 21}\n"
         "threads: 1\n", "progressive counts out of range"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: -1, correct: 7}\n"
         "threads: 1\n", "progressive counts out of range"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: .nan, correct: 7}\n"
         "threads: 1\n", "state.yaml:4:25:"},
        {"step: 5\nrecords_seen: 20\nrng: [1, 2, 3, 4]\nprogressive: {loss_sum: .inf, correct: 7}\n"
         "threads: 1\n", "state.yaml:4:25:"},
        {"[1, 2]\n", "state.yaml"},
        {"", "state.yaml"},
        {"step: &s 5\nrecords_seen: *s\n", "alias"},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(bad); i++) {
        d.msg[0] = 0;
        rc = mnn_state_parse(&st, bad[i].text, strlen(bad[i].text), "state.yaml", &d);
        if (rc != MNN_EFORMAT || !contains(d.msg, bad[i].want))
            fail_at(&f, "text %zu: rc %d, \"%s\", want \"%s\"", i, rc, d.msg, bad[i].want);
    }
    check(f.bad == 0, "mnn_state_parse refuses: no threads, threads 0, 1025, 2^64, 'two', an "
                      "all-zero, short, long or bad rng, no step, no progressive, more correct "
                      "than seen, a negative, NaN or Inf loss_sum, a list, nothing, an alias: "
                      "MNN_EFORMAT naming the place (%zu texts)", NELEM(bad));
    const char *edge = "step: 0\nrecords_seen: 0\nrng: [0, 0, 0, 1]\n"
                       "progressive: {loss_sum: 0, correct: 0}\nthreads: 1024\n";
    rc = mnn_state_parse(&st, edge, strlen(edge), "state.yaml", &d);
    check(rc == 0 && st.threads == 1024 && st.rng.s[3] == 1 && st.step == 0,
          "mnn_state_parse: step 0, one non-zero rng word, threads 1024 (rc %d, \"%s\")", rc,
          d.msg);
}

static int child_root_open(void *ctx)
{
    int fd = 12345;
    mnn_diag_t d = {""};
    int rc = mnn_ckpt_root_open(ctx, &fd, &d);
    if (rc == 0) {
        close(fd);
        return 0;
    }
    if (rc == MNN_EBUSY && fd == -1 && contains(d.msg, ctx))
        return 1;
    diag("child: mnn_ckpt_root_open rc %d, fd %d, \"%s\"", rc, fd, d.msg);
    return 2;
}

static void test_ckpt_root(void)
{
    char root[128], out[160], p[256], l[512];
    mnn_diag_t d = {""};
    tpath(root, sizeof root, "root");
    tpath(out, sizeof out, "root-outside");
    make_outside(out);
    int fd = -1;
    int rc = mnn_ckpt_root_open(root, &fd, &d);
    struct stat sb;
    if (!check(rc == 0 && fd >= 0 && stat(root, &sb) == 0 && S_ISDIR(sb.st_mode),
               "mnn_ckpt_root_open creates a missing root and locks it (rc %d, \"%s\")", rc, d.msg))
        return;
    int child = in_child(child_root_open, root);
    check(child == 1, "mnn_ckpt_root_open from another process while it is open: MNN_EBUSY "
                      "(child %d)", child);
    close(fd);
    child = in_child(child_root_open, root);
    check(child == 0, "mnn_ckpt_root_open from another process once it was closed: 0 (child %d)",
          child);

    /* a crashed writer's leftovers, and links among them */
    int setup = 0;
    snprintf(p, sizeof p, "%s/.tmp-step-00000009", root);
    setup |= mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/.tmp-step-00000009/model.safetensors", root);
    setup |= write_bytes(p, "partial", 7);
    snprintf(p, sizeof p, "%s/.tmp-step-00000009/sub", root);
    setup |= mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/.tmp-step-00000009/sub/link", root);
    setup |= symlink(out, p);
    snprintf(p, sizeof p, "%s/.tmp-latest.123", root);
    setup |= symlink("step-00000009", p);
    snprintf(p, sizeof p, "%s/.tmp-dirlink", root);
    setup |= symlink(out, p);
    snprintf(p, sizeof p, "%s/.tmp-filelink", root);
    snprintf(l, sizeof l, "%s/f1", out);
    setup |= symlink(l, p);
    snprintf(p, sizeof p, "%s/.tmp-file", root);
    setup |= write_bytes(p, "x", 1);
    snprintf(p, sizeof p, "%s/step-00000001", root);
    setup |= mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/step-00000001/keep", root);
    setup |= write_bytes(p, "keep", 4);
    snprintf(p, sizeof p, "%s/.tmpnot", root);
    setup |= write_bytes(p, "x", 1);
    rc = mnn_ckpt_root_open(root, &fd, &d);
    snprintf(p, sizeof p, "%s/step-00000001/keep", root);
    check(setup == 0 && rc == 0 && !strcmp(dir_list(root, l, sizeof l), ".tmpnot step-00000001") &&
              file_is(p, "keep") && outside_intact(out),
          "mnn_ckpt_root_open removes .tmp-* leftovers (a tree, files, links to a directory "
          "and a file) without following links, and nothing else (rc %d, left: %s)", rc, l);
    if (rc == 0)
        close(fd);
    rm_rf(root);
    rm_rf(out);
}

static void test_ckpt_prune(void)
{
    char root[128], out[160], p[256], l[512];
    mnn_diag_t d = {""};
    tpath(root, sizeof root, "prune");
    tpath(out, sizeof out, "prune-outside");
    make_outside(out);
    int setup = mkdir(root, 0755);
    for (int s = 2; s <= 7; s++) {
        snprintf(p, sizeof p, "%s/step-%08d", root, s);
        setup |= mkdir(p, 0755);
        snprintf(p, sizeof p, "%s/step-%08d/model.safetensors", root, s);
        setup |= write_bytes(p, "m", 1);
    }
    /* a link named like the oldest checkpoint, to a directory full of files */
    snprintf(p, sizeof p, "%s/step-00000001", root);
    setup |= symlink(out, p);
    setup |= mnn_ckpt_set_latest(root, "step-00000003", &d);
    /* the newest: the highest step-N directory, whatever latest says; a
     * link named step-99999999 does not count */
    uint64_t newest = 0;
    snprintf(p, sizeof p, "%s/step-99999999", root);
    setup |= symlink(out, p);
    int rc = mnn_ckpt_root_newest(root, &newest, &d);
    setup |= unlink(p);
    check(setup == 0 && rc == 1 && newest == 7,
          "mnn_ckpt_root_newest: 1, step 7, not the link step-99999999 (rc %d, %llu, \"%s\")",
          rc, (unsigned long long)newest, d.msg);
    snprintf(p, sizeof p, "%s/none", root);
    rc = mnn_ckpt_root_newest(p, &newest, &d);
    check(rc == 0, "mnn_ckpt_root_newest of a root that does not exist: 0 (rc %d)", rc);
    setup = mkdir(p, 0755);
    rc = mnn_ckpt_root_newest(p, &newest, &d);
    setup |= rmdir(p);
    check(setup == 0 && rc == 0, "mnn_ckpt_root_newest of an empty root: 0 (rc %d)", rc);
    size_t removed = 99;
    rc = mnn_ckpt_prune(root, 0, &removed, &d);
    check(setup == 0 && rc == 0 && removed == 0 &&
              !strcmp(dir_list(root, l, sizeof l), "latest step-00000001 step-00000002 "
                      "step-00000003 step-00000004 step-00000005 step-00000006 step-00000007"),
          "mnn_ckpt_prune keep 0: nothing is removed (rc %d, %s)", rc, l);
    rc = mnn_ckpt_prune(root, 2, &removed, &d);
    check(rc == 0 && removed == 3 &&
              !strcmp(dir_list(root, l, sizeof l), "latest step-00000001 step-00000003 "
                                                   "step-00000006 step-00000007") &&
              outside_intact(out),
          "mnn_ckpt_prune keep 2: the newest 2 stay, and the one latest names, and the link "
          "step-00000001 (not counted, not followed) (rc %d, removed %zu, left: %s)", rc, removed,
          l);
    rc = mnn_ckpt_prune(root, 2, &removed, &d);
    check(rc == 0 && removed == 0, "mnn_ckpt_prune keep 2 again: nothing more (removed %zu)",
          removed);
    rc = mnn_ckpt_prune(root, 1, &removed, &d);
    char target[64] = "";
    snprintf(p, sizeof p, "%s/latest", root);
    ssize_t tn = readlink(p, target, sizeof target - 1);
    if (tn > 0)
        target[tn] = 0;
    check(rc == 0 && removed == 1 &&
              !strcmp(dir_list(root, l, sizeof l), "latest step-00000001 step-00000003 "
                                                   "step-00000007") &&
              !strcmp(target, "step-00000003") && outside_intact(out),
          "mnn_ckpt_prune keep 1: the newest and latest's stay (rc %d, removed %zu, left: %s)", rc,
          removed, l);
    /* latest among the newest: it counts as one of them */
    int lrc = mnn_ckpt_set_latest(root, "step-00000007", &d);
    rc = mnn_ckpt_prune(root, 1, &removed, &d);
    check(lrc == 0 && rc == 0 && removed == 1 &&
              !strcmp(dir_list(root, l, sizeof l), "latest step-00000001 step-00000007") &&
              outside_intact(out),
          "mnn_ckpt_prune keep 1 with latest the newest: exactly 1 stays (rc %d, removed %zu, "
          "left: %s)", rc, removed, l);
    rm_rf(root);
    rm_rf(out);
}

/* ---- samples of a stream ------------------------------------------------- */

/* The chi-square value that a statistic with df degrees of freedom exceeds
 * with probability 0.001 (Wilson-Hilferty; 148.3 for 99 df, exact 148.23). */
static double chi2_crit_001(double df)
{
    const double a = 2.0 / (9.0 * df);
    return df * pow(1.0 - a + 3.0902 * sqrt(a), 3.0);
}

/* Exact inclusion probabilities of k draws without replacement, each in
 * proportion to weight among the records not yet drawn (successive
 * sampling), by enumerating the ordered draws: p[i] += the probability of
 * each sequence that contains i.  Records of weight 0 are never drawn; fewer
 * than k positive ones are all drawn.  n <= 16. */
static void succ_rec(const double *w, size_t n, size_t left, unsigned taken, double prob, double *p)
{
    double rem = 0;
    for (size_t i = 0; i < n; i++)
        if (!(taken >> i & 1))
            rem += w[i];
    if (left == 0 || !(rem > 0)) {
        for (size_t i = 0; i < n; i++)
            if (taken >> i & 1)
                p[i] += prob;
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (!(taken >> i & 1) && w[i] > 0)
            succ_rec(w, n, left - 1, taken | 1u << i, prob * w[i] / rem, p);
}

static void succ_incl(const double *w, size_t n, size_t k, double *p)
{
    for (size_t i = 0; i < n; i++)
        p[i] = 0;
    succ_rec(w, n, k, 0, 1.0, p);
}

/* Frequencies cnt[i] / trials against probabilities p[i]: the largest
 * |freq - p| in standard errors sqrt(p (1 - p) / trials) (a p of 0 or 1 must
 * be met exactly).  *worst gets the record. */
static double worst_se(const long *cnt, const double *p, size_t n, long trials, size_t *worst)
{
    double z = 0;
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double f = (double)cnt[i] / (double)trials;
        const double se = sqrt(p[i] * (1 - p[i]) / (double)trials);
        const double zi = se > 0 ? fabs(f - p[i]) / se : (fabs(f - p[i]) > 1e-12 ? INFINITY : 0);
        if (zi > z || (isnan(zi) && !isnan(z))) {
            z = zi;
            *worst = i;
        }
    }
    return z;
}

/* One pass of Algorithm L over n records: held[slot] gets the record that
 * went there (UINT64_MAX: none).  With skip, the records that
 * mnn_reservoir_skip says may be passed over are not offered, and every
 * record offered after the first k must enter.  Returns 0 when a slot
 * broke the contract (reported through f). */
static int run_alg_l(mnn_reservoir_t *r, size_t k, uint64_t n, int skip, uint64_t *held,
                     fails_t *f)
{
    int ok = 1;
    for (size_t j = 0; j < k; j++)
        held[j] = UINT64_MAX;
    for (uint64_t i = 0; i < n;) {
        const uint64_t s = mnn_reservoir_skip(r);
        if (i < k && s != 0) {
            fail_at(f, "record %llu (filling): skip %llu, not 0", (unsigned long long)i,
                    (unsigned long long)s);
            ok = 0;
        }
        if (skip && s) {
            const uint64_t m = s < n - i ? s : n - i;
            mnn_reservoir_skipped(r, m);
            i += m;
            continue;
        }
        const long slot = mnn_reservoir_offer(r);
        if (i < k ? slot != (long)i : slot < -1 || slot >= (long)k || (skip && slot < 0)) {
            fail_at(f, "k %zu, record %llu of %llu%s: slot %ld", k, (unsigned long long)i,
                    (unsigned long long)n, skip ? " (with skips)" : "", slot);
            ok = 0;
        }
        if (slot >= 0 && slot < (long)k)
            held[slot] = i;
        i++;
    }
    return ok;
}

/* trials of Algorithm L, k of n (n <= 1000): inclusion counts in cnt[n];
 * each sample must hold min(k, n) distinct records of 0..n-1 in slots
 * 0..min(k,n)-1.  Returns the number of broken samples. */
static size_t alg_l_counts(size_t k, size_t n, int skip, long trials, uint64_t seed, long *cnt,
                           const char *what)
{
    mnn_rng_t rng;
    mnn_rng_seed(&rng, seed);
    uint64_t *held = calloc(k, sizeof *held);
    unsigned char seen[1000];
    fails_t f = {0, 0};
    size_t broken = 0;
    for (size_t i = 0; i < n; i++)
        cnt[i] = 0;
    for (long t = 0; t < trials; t++) {
        mnn_reservoir_t r;
        mnn_reservoir_init(&r, k, &rng);
        int ok = run_alg_l(&r, k, n, skip, held, &f);
        memset(seen, 0, n);
        const size_t full = k < n ? k : n;
        for (size_t j = 0; j < k; j++) {
            if (j < full ? held[j] >= n || seen[held[j]] : held[j] != UINT64_MAX) {
                if (ok)
                    fail_at(&f, "%s: trial %ld: slot %zu holds %lld", what, t, j,
                            held[j] == UINT64_MAX ? -1LL : (long long)held[j]);
                ok = 0;
                continue;
            }
            if (j < full) {
                seen[held[j]] = 1;
                cnt[held[j]]++;
            }
        }
        broken += !ok;
    }
    free(held);
    return broken;
}

/* ---- replay buffers ---------------------------------------------------------- */

/* Offers record i (0-based) of class y as the line "Y,I,0.5": every line
 * distinct, its number in it.  Returns what mnn_replay_offer does. */
static int replay_put(mnn_replay_t *b, int32_t y, uint64_t i)
{
    char line[64];
    int n = snprintf(line, sizeof line, "%d,%llu,0.5", (int)y, (unsigned long long)i);
    return mnn_replay_offer(b, line, (size_t)n, y, NULL);
}

/* The record number I and class Y that a held line "Y,I,..." says; -1 if
 * it is not such a line, with its '\n', and no other. */
static int replay_parse_line(const mnn_replay_rec_t *r, long long *i, int *y)
{
    char buf[64];
    if (!r || !r->text || r->len == 0 || r->len >= sizeof buf || r->text[r->len - 1] != '\n' ||
        memchr(r->text, '\n', r->len - 1))
        return -1;
    memcpy(buf, r->text, r->len);
    buf[r->len] = 0;
    return sscanf(buf, "%d,%lld,", y, i) == 2 ? 0 : -1;
}

/* Any buffer's invariants: n <= cap, every record held a line of its own
 * and distinct (*seen_rec marks the record numbers, n of them); for
 * class-balanced the per-class counts, slots and classes present agree
 * with the labels held.  1 if they hold, else 0 (reported through f). */
static int replay_sane(const mnn_replay_t *b, fails_t *f, const char *what)
{
    size_t held = 0, present = 0;
    if (b->n > b->cap || b->n > b->alloc || b->alloc > b->cap) {
        fail_at(f, "%s: n %zu, alloc %zu, cap %zu", what, b->n, b->alloc, b->cap);
        return 0;
    }
    for (size_t k = 0; k < b->n; k++) {
        long long i;
        int y;
        const mnn_replay_rec_t *r = mnn_replay_at(b, k);
        if (replay_parse_line(r, &i, &y) < 0 || r->rec == 0 ||
            (b->policy == MNN_REPLAY_CLASS && b->label[r - b->rec] != y)) {
            fail_at(f, "%s: record %zu held is not a record line of its label", what, k);
            return 0;
        }
    }
    if (mnn_replay_at(b, b->n) != NULL) {
        fail_at(f, "%s: a record beyond the %zu held", what, b->n);
        return 0;
    }
    if (b->policy != MNN_REPLAY_CLASS)
        return 1;
    for (size_t j = 0; j < b->nclasses; j++) {
        held += b->class_held[j];
        int ok = b->class_held[j] <= b->class_seen[j];
        if (b->class_held[j])
            ok &= present < b->npresent && b->present[present++] == j;
        for (size_t k = 0; ok && k < b->class_held[j]; k++) {
            const size_t s = b->members[j][k];
            ok &= s < b->n && b->label[s] == (int32_t)j && (k == 0 || b->members[j][k - 1] < s);
        }
        if (!ok) {
            fail_at(f, "%s: class %zu's counts or slots do not agree with the labels", what, j);
            return 0;
        }
    }
    if (held != b->n || present != b->npresent) {
        fail_at(f, "%s: %zu held by class, %zu in all; %zu classes present, %zu listed", what,
                held, b->n, present, b->npresent);
        return 0;
    }
    return 1;
}

/* Algorithm R: a uniform sample, and the first records all kept while the
 * buffer fills; capacities 0, 1 and the bounds. */
static void replay_reservoir_checks(void)
{
    enum { N = 100, K = 10, T = 20000 };
    long cnt[N] = {0};
    fails_t f = {0, 0};
    int filled = 1;
    for (long t = 0; t < T; t++) {
        mnn_replay_t b;
        mnn_replay_init(&b, MNN_REPLAY_RESERVOIR, K, 1000 + (uint64_t)t);
        for (uint64_t i = 0; i < N; i++) {
            replay_put(&b, 0, i);
            if (i + 1 == K) /* full: records 0..K-1, in slots 0..K-1 */
                for (size_t k = 0; k < K; k++) {
                    long long r;
                    int y;
                    filled &= replay_parse_line(mnn_replay_at(&b, k), &r, &y) == 0 && r == (long long)k;
                }
        }
        unsigned char in[N] = {0};
        if (replay_sane(&b, &f, "reservoir") && b.n == K && b.seen == N)
            for (size_t k = 0; k < K; k++) {
                long long i;
                int y;
                replay_parse_line(mnn_replay_at(&b, k), &i, &y);
                if (i < 0 || i >= N || in[i]++)
                    fail_at(&f, "trial %ld: record %lld held twice or out of range", t, i);
                else
                    cnt[i]++;
            }
        else
            fail_at(&f, "trial %ld: %zu held of %llu seen", t, b.n, (unsigned long long)b.seen);
        mnn_replay_free(&b);
    }
    /* inclusion counts, as for Algorithm L (test_reservoir): chi-square
     * with N - 1 df; the bound is its mean plus 4 sd */
    const double e = (double)T * K / N, v = e * (N - K) / (N - 1.0), df = N - 1;
    double chi = 0;
    for (size_t i = 0; i < N; i++)
        chi += (cnt[i] - e) * (cnt[i] - e) / v;
    check(f.bad == 0 && filled, "replay reservoir, %d of %d, %d trials: %d distinct records held, "
                                "the first %d while filling (%zu broken)",
          K, N, T, K, K, f.bad);
    check(chi < df + 4 * sqrt(2 * df),
          "replay reservoir (Algorithm R): inclusion counts uniform, chi-square %.1f < %.1f "
          "(99 df, mean + 4 sd)",
          chi, df + 4 * sqrt(2 * df));

    /* capacity 1: each of 10 records with probability 1/10 */
    enum { N1 = 10, T1 = 20000 };
    long c1[N1] = {0};
    int one = 1;
    for (long t = 0; t < T1; t++) {
        mnn_replay_t b;
        mnn_replay_init(&b, MNN_REPLAY_RESERVOIR, 1, 7 + (uint64_t)t);
        for (uint64_t i = 0; i < N1; i++)
            replay_put(&b, 0, i);
        long long i;
        int y;
        one &= b.n == 1 && replay_parse_line(mnn_replay_at(&b, 0), &i, &y) == 0;
        if (one && i >= 0 && i < N1)
            c1[i]++;
        mnn_replay_free(&b);
    }
    double worst = 0;
    for (size_t i = 0; i < N1; i++) {
        const double z = fabs(c1[i] - (double)T1 / N1) / sqrt(T1 * 0.1 * 0.9);
        worst = z > worst ? z : worst;
    }
    check(one && worst < 4, "replay reservoir of 1: each of %d records held with probability "
                            "1/%d, worst %.2f sd (< 4)",
          N1, N1, worst);

    /* capacities out of range, an unknown policy: refused, the buffer empty */
    mnn_replay_t b;
    int refused = 1;
    const size_t caps[] = {0, (size_t)MNN_REPLAY_MAX_CAP + 1};
    for (size_t j = 0; j < NELEM(caps); j++) {
        refused &= mnn_replay_init(&b, MNN_REPLAY_RESERVOIR, caps[j], 1) == MNN_EINVAL;
        refused &= b.n == 0 && b.cap == 0 && b.rec == NULL;
        mnn_replay_free(&b);
    }
    refused &= mnn_replay_init(&b, (mnn_replay_policy_t)3, 10, 1) == MNN_EINVAL;
    mnn_replay_free(&b);
    refused &= mnn_replay_init(&b, MNN_REPLAY_RECENT, MNN_REPLAY_MAX_CAP, 1) == 0 &&
               b.alloc == 0 && replay_put(&b, 0, 0) == 0 && b.alloc < 100;
    mnn_replay_free(&b);
    check(refused, "replay buffer: capacity 0, %d + 1 and an unknown policy are refused "
                   "(MNN_EINVAL); a capacity of %d allocates as records come",
          MNN_REPLAY_MAX_CAP, MNN_REPLAY_MAX_CAP);
}

/* Class-balanced (CBRS): a record of a class that is not among the largest
 * takes the place of one of a largest class; one of a largest class enters
 * only as a reservoir within its class, the counts unchanged. */
static void replay_class_checks(void)
{
    enum { CAP = 12, N = 6000 };
    mnn_replay_t b;
    mnn_replay_init(&b, MNN_REPLAY_CLASS, CAP, 99);
    fails_t f = {0, 0};
    size_t before[8];
    int rule = 1;
    for (uint64_t i = 0; i < N && rule; i++) {
        /* skewed classes: 0 mostly, 3 seldom, 5 twice */
        const uint64_t u = trng() % 100;
        const int32_t y = i == 1000 || i == 4000 ? 5 : u < 60 ? 0 : u < 85 ? 1 : u < 97 ? 2 : 3;
        size_t most = 0, full = b.n == b.cap;
        for (size_t j = 0; j < 8; j++) {
            before[j] = j < b.nclasses ? b.class_held[j] : 0;
            most = before[j] > most ? before[j] : most;
        }
        replay_put(&b, y, i);
        size_t changed = 0, from = 8;
        for (size_t j = 0; j < 8; j++) {
            const size_t now = j < b.nclasses ? b.class_held[j] : 0;
            if (now != before[j] && (size_t)y != j)
                changed++, from = j;
        }
        const size_t ny = b.class_held[y];
        if (!full)
            rule = ny == before[y] + 1 && changed == 0;
        else if (before[y] < most) /* one of a largest class gives way */
            rule = ny == before[y] + 1 && changed == 1 && before[from] == most &&
                   b.class_held[from] == most - 1;
        else /* among the largest: counts unchanged */
            rule = ny == before[y] && changed == 0;
        if (!rule)
            fail_at(&f, "record %llu of class %d: held %zu -> %zu, %zu other classes changed "
                        "(the largest held %zu)",
                    (unsigned long long)i, (int)y, before[y], ny, changed, most);
        rule &= replay_sane(&b, &f, "class-balanced");
    }
    check(rule, "replay class-balanced: each record of a smaller class evicts one of a largest "
                "class; one of a largest class leaves the counts as they are");
    /* 5 classes in 12 slots: at most 3 each, however skewed the stream;
     * the 2 records of class 5 never among the largest, both kept */
    int balanced = b.n == CAP && b.npresent == 5 && b.class_held[5] == 2;
    for (size_t j = 0; j < b.nclasses; j++)
        balanced &= b.class_held[j] <= 3;
    check(balanced, "replay class-balanced: %zu classes (60%% of the records class 0) in %d "
                    "slots, at most 3 each; the rare class's 2 records kept",
          b.npresent, CAP);
    /* classes out of range: refused, nothing counted */
    const uint64_t seen = b.seen;
    int bad = replay_put(&b, -1, 0) == MNN_EINVAL &&
              replay_put(&b, MNN_REPLAY_MAX_CLASS, 0) == MNN_EINVAL && b.seen == seen;
    mnn_replay_free(&b);
    /* capacity 1: the record of a new class always takes the slot */
    mnn_replay_init(&b, MNN_REPLAY_CLASS, 1, 5);
    int one = 1;
    for (uint64_t i = 0; i < 50; i++) {
        long long r;
        int y;
        replay_put(&b, (int32_t)(i % 3), i);
        one &= b.n == 1 && replay_parse_line(mnn_replay_at(&b, 0), &r, &y) == 0 && r == (long long)i;
    }
    one &= replay_sane(&b, &f, "class-balanced of 1");
    mnn_replay_free(&b);
    check(bad && one, "replay class-balanced: classes -1 and %d refused (MNN_EINVAL, nothing "
                      "counted); of 1, a record of another class always takes the slot",
          MNN_REPLAY_MAX_CLASS);
}

/* Recent: the newest cap records, oldest first; a buffer of 1. */
static void replay_recent_checks(void)
{
    int order = 1;
    for (size_t cap = 1; cap <= 7; cap += 3) {
        mnn_replay_t b;
        mnn_replay_init(&b, MNN_REPLAY_RECENT, cap, 1);
        for (uint64_t i = 0; i < 40; i++) {
            replay_put(&b, 0, i);
            const size_t n = i + 1 < cap ? (size_t)i + 1 : cap;
            order &= b.n == n;
            for (size_t k = 0; k < n; k++) {
                long long r;
                int y;
                order &= replay_parse_line(mnn_replay_at(&b, k), &r, &y) == 0 &&
                         r == (long long)(i + 1 - n + k);
            }
        }
        mnn_replay_free(&b);
    }
    check(order, "replay recent (capacities 1, 4, 7): after each of 40 records, the newest "
                 "ones held, oldest first");
}

/* Replays: the credit of a fractional ratio, and uniform draws with
 * replacement. */
static void replay_draw_checks(void)
{
    mnn_replay_t b;
    mnn_replay_init(&b, MNN_REPLAY_RESERVOIR, 10, 3);
    /* empty: nothing due, the whole part of the credit dropped */
    int credit = mnn_replay_due(&b, 2.5) == 0 && b.credit == 0.5 && mnn_replay_draw(&b) == NULL;
    for (uint64_t i = 0; i < 10; i++)
        replay_put(&b, 0, i);
    b.credit = 0;
    uint64_t pattern[6];
    for (int k = 0; k < 6; k++)
        pattern[k] = mnn_replay_due(&b, k < 4 ? 0.5 : 1.5);
    credit &= pattern[0] == 0 && pattern[1] == 1 && pattern[2] == 0 && pattern[3] == 1 &&
              pattern[4] == 1 && pattern[5] == 2 && b.credit == 0;
    /* a ratio out of range adds nothing */
    credit &= mnn_replay_due(&b, -1) == 0 && mnn_replay_due(&b, NAN) == 0 &&
              mnn_replay_due(&b, MNN_REPLAY_MAX_RATIO + 1) == 0 && b.credit == 0 &&
              mnn_replay_due(&b, MNN_REPLAY_MAX_RATIO) == MNN_REPLAY_MAX_RATIO;
    check(credit, "replay credit: ratio 0.5 replays after every other record, 1.5 one then two; "
                  "none while empty; a ratio out of [0, %d] adds nothing",
          MNN_REPLAY_MAX_RATIO);
    enum { D = 100000 };
    long cnt[10] = {0};
    int ok = 1;
    for (long t = 0; t < D; t++) {
        long long i;
        int y;
        ok &= replay_parse_line(mnn_replay_draw(&b), &i, &y) == 0 && i >= 0 && i < 10;
        if (ok)
            cnt[i]++;
    }
    double worst = 0;
    for (int i = 0; i < 10; i++) {
        const double z = fabs(cnt[i] - D / 10.0) / sqrt(D * 0.1 * 0.9);
        worst = z > worst ? z : worst;
    }
    check(ok && worst < 4, "replay draws: %d draws from 10 records, each within %.2f sd of a "
                           "tenth (< 4)",
          D, worst);
    mnn_replay_free(&b);
}

/* b's state file, in memory (free it); NULL on failure. */
static char *replay_image(const mnn_replay_t *b, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f)
        return NULL;
    int rc = mnn_replay_write(b, f);
    if (fclose(f) != 0 || rc < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* The same buffer: policy, counts, generator, credit, class counts and the
 * records by age (their numbers aside: a load numbers them anew). */
static int replay_same(const mnn_replay_t *a, const mnn_replay_t *b)
{
    if (a->policy != b->policy || a->cap != b->cap || a->n != b->n || a->seen != b->seen ||
        a->credit != b->credit || memcmp(&a->rng, &b->rng, sizeof a->rng) ||
        a->nclasses != b->nclasses)
        return 0;
    for (size_t j = 0; j < a->nclasses; j++)
        if (a->class_seen[j] != b->class_seen[j] || a->class_held[j] != b->class_held[j])
            return 0;
    for (size_t k = 0; k < a->n; k++) {
        const mnn_replay_rec_t *x = mnn_replay_at(a, k), *y = mnn_replay_at(b, k);
        if (x->len != y->len || memcmp(x->text, y->text, x->len))
            return 0;
    }
    return 1;
}

/* A buffer of policy p, capacity cap, after n records of 4 classes with
 * replays at ratio 0.7 drawn between them. */
static void replay_fill(mnn_replay_t *b, mnn_replay_policy_t p, size_t cap, uint64_t n)
{
    mnn_replay_init(b, p, cap, 11);
    for (uint64_t i = 0; i < n; i++) {
        for (uint64_t k = mnn_replay_due(b, 0.7); k > 0; k--)
            mnn_replay_draw(b);
        replay_put(b, (int32_t)(trng() % 4), i);
    }
}

/* Save, parse, the same buffer and the same next draws, for every policy;
 * a file, and a capacity kept or taken from the file. */
static void replay_roundtrip_checks(void)
{
    const mnn_replay_policy_t pols[] = {MNN_REPLAY_RESERVOIR, MNN_REPLAY_CLASS,
                                        MNN_REPLAY_RECENT};
    for (size_t j = 0; j < NELEM(pols); j++) {
        const char *name = mnn_replay_policy_name(pols[j]);
        mnn_replay_t a, b;
        mnn_diag_t d = {""};
        replay_fill(&a, pols[j], 20, 137);
        size_t len = 0, len2 = 0;
        char *img = replay_image(&a, &len);
        mnn_replay_init(&b, pols[j], 5, 1); /* its capacity gives way to the file's */
        int rc = img ? mnn_replay_parse(&b, img, len, "mem.state", 0, &d) : -99;
        char *img2 = rc == 1 ? replay_image(&b, &len2) : NULL;
        int same = rc == 1 && replay_same(&a, &b) && img2 && len2 == len && !memcmp(img, img2, len);
        /* the next replays and records, the same on both */
        for (uint64_t i = 137; same && i < 400; i++) {
            for (uint64_t k = mnn_replay_due(&a, 0.7), kb = mnn_replay_due(&b, 0.7); k > 0 || kb > 0;
                 k--, kb--) {
                const mnn_replay_rec_t *x = mnn_replay_draw(&a), *y = mnn_replay_draw(&b);
                same &= k == kb && x->len == y->len && !memcmp(x->text, y->text, x->len);
                if (!same)
                    break;
            }
            const int32_t y = (int32_t)(trng() % 4);
            replay_put(&a, y, i);
            replay_put(&b, y, i);
        }
        same &= replay_same(&a, &b);
        check(same, "replay %s state: written, parsed: the same buffer and bytes (rc %d %s), "
                    "the same draws and choices for 263 more records",
              name, rc, d.msg);
        /* through a file; a smaller capacity kept: a subset, the latest for
         * recent; a missing file: 0, the buffer untouched */
        char path[128];
        mnn_replay_t c;
        tpath(path, sizeof path, "replay.state");
        mnn_replay_init(&c, pols[j], 6, 1);
        int ok = mnn_replay_save(&a, path, &d) == 0 && mnn_replay_load(&c, path, 1, &d) == 1 &&
                 c.cap == 6 && c.n == 6 && c.seen == a.seen && replay_sane(&c, &(fails_t){0, 0}, name);
        for (size_t k = 0; ok && pols[j] == MNN_REPLAY_RECENT && k < 6; k++) {
            const mnn_replay_rec_t *x = mnn_replay_at(&a, 14 + k), *y = mnn_replay_at(&c, k);
            ok &= x->len == y->len && !memcmp(x->text, y->text, x->len);
        }
        unlink(path);
        ok &= mnn_replay_load(&c, path, 1, &d) == 0 && c.n == 6;
        check(ok, "replay %s state: saved to a file and loaded into a buffer of 6 with the "
                  "capacity kept: 6 of its records%s; a missing file: 0, the buffer kept (%s)",
              name, pols[j] == MNN_REPLAY_RECENT ? ", the latest, oldest first" : "", d.msg);
        mnn_replay_free(&c);
        mnn_replay_free(&a);
        mnn_replay_free(&b);
        free(img);
        free(img2);
    }
}

/* A copy of text[0, len) whose last line "end HASH" is made to match what
 * comes before it (len updated; free it). */
static char *replay_reseal(const char *text, size_t *len)
{
    size_t body = *len;
    if (body >= 21 && !memcmp(text + body - 21, "end ", 4))
        body -= 21;
    char *out = malloc(body + 22);
    if (!out)
        return NULL;
    memcpy(out, text, body);
    snprintf(out + body, 22, "end %016llx\n", (unsigned long long)mnn_hash64(out, body));
    *len = body + 21;
    return out;
}

/* Parses text[0, len) (resealed first if reseal) into a buffer of policy p
 * (capacity 20, 3 records held): the error must be want, the message name
 * the file and say why, and the buffer stay as it was. */
static void replay_refuse(const char *what, const char *text, size_t len, int reseal,
                          mnn_replay_policy_t p, int want, const char *why)
{
    mnn_replay_t b;
    mnn_diag_t d = {""};
    mnn_replay_init(&b, p, 20, 1);
    for (uint64_t i = 0; i < 3; i++)
        replay_put(&b, 0, i);
    char *t = reseal ? replay_reseal(text, &len) : NULL;
    const mnn_rng_t rng = b.rng;
    int rc = mnn_replay_parse(&b, t ? t : text, len, "bad.state", 0, &d);
    check(rc == want && contains(d.msg, "bad.state") && contains(d.msg, why) && b.n == 3 &&
              b.seen == 3 && b.cap == 20 && !memcmp(&rng, &b.rng, sizeof rng),
          "replay state %s: refused (%d, want %d), '%s' names the file and says '%s', the "
          "buffer as it was",
          what, rc, want, d.msg, why);
    mnn_replay_free(&b);
    free(t);
}

/* Refusals: truncated, a flipped bit, oversized, another policy's. */
static void replay_refusal_checks(void)
{
    mnn_replay_t a;
    replay_fill(&a, MNN_REPLAY_RESERVOIR, 20, 100);
    size_t len = 0;
    char *img = replay_image(&a, &len);
    mnn_replay_free(&a);
    if (!check(img != NULL, "replay state: a reservoir's image for the refusals"))
        return;
    const size_t cut[] = {0, 1, len / 2, len - 22, len - 5, len - 1};
    for (size_t j = 0; j < NELEM(cut); j++) {
        char what[64];
        snprintf(what, sizeof what, "cut to %zu of %zu bytes", cut[j], len);
        replay_refuse(what, img, cut[j], 0, MNN_REPLAY_RESERVOIR, MNN_ECORRUPT, "truncated");
    }
    char *flip = malloc(len);
    memcpy(flip, img, len);
    flip[len - 40] ^= 0x01; /* in the last record */
    replay_refuse("with a bit flipped in a record", flip, len, 0, MNN_REPLAY_RESERVOIR,
                  MNN_ECORRUPT, "hash does not match");
    memcpy(flip, img, len);
    flip[len - 3] ^= 0x01; /* in the hash itself */
    replay_refuse("with a bit flipped in its hash", flip, len, 0, MNN_REPLAY_RESERVOIR,
                  MNN_ECORRUPT, "hash does not match");
    free(flip);
    replay_refuse("of another policy", img, len, 0, MNN_REPLAY_RECENT, MNN_EINVAL,
                  "holds a reservoir buffer, not recent");
    replay_refuse("of another policy", img, len, 0, MNN_REPLAY_CLASS, MNN_EINVAL,
                  "holds a reservoir buffer, not class-balanced");
    free(img);
    /* oversized, with a right hash: a capacity, a record count, a record */
    const char *head = "# mini-nn replay-buffer state 1\npolicy reservoir\n";
    char buf[512];
    snprintf(buf, sizeof buf, "%scapacity %d\nseen 5\ncredit 0\nrng 1 2 3 4\nrecords 1\n0,1\n",
             head, MNN_REPLAY_MAX_CAP + 1);
    replay_refuse("of capacity 10^8 + 1", buf, strlen(buf), 1, MNN_REPLAY_RESERVOIR, MNN_EFORMAT,
                  "out of range");
    snprintf(buf, sizeof buf, "%scapacity 2\nseen 5\ncredit 0\nrng 1 2 3 4\nrecords 3\n0,1\n0,2\n0,3\n",
             head);
    replay_refuse("of 3 records in 2 slots", buf, strlen(buf), 1, MNN_REPLAY_RESERVOIR,
                  MNN_EFORMAT, "a malformed record count");
    snprintf(buf, sizeof buf, "%scapacity 2\nseen 5\ncredit 0\nrng 1 2 3 4\nrecords 2\n0,1\n", head);
    replay_refuse("with a record missing", buf, strlen(buf), 1, MNN_REPLAY_RESERVOIR, MNN_EFORMAT,
                  "fewer records than it says");
    const size_t big = MNN_REPLAY_MAX_LINE + 1, hl = strlen(buf) - strlen("records 2\n0,1\n");
    char *huge = malloc(hl + 64 + big);
    if (huge) {
        memcpy(huge, buf, hl);
        size_t n = hl + (size_t)sprintf(huge + hl, "records 1\n0,");
        memset(huge + n, '7', big - 2);
        n += big - 2;
        huge[n++] = '\n';
        replay_refuse("with a record of 64 MiB + 1 bytes", huge, n, 1, MNN_REPLAY_RESERVOIR,
                      MNN_ELIMIT, "a record longer than the 64 MiB");
        free(huge);
    }
}

/* Writing into a stream that fails: MNN_EIO. */
static void replay_write_error_check(void)
{
    mnn_replay_t a;
    replay_fill(&a, MNN_REPLAY_RECENT, 5, 9);
    FILE *f = fopen("/dev/full", "w");
    int rc = 1;
    if (f) {
        setvbuf(f, NULL, _IONBF, 0);
        rc = mnn_replay_write(&a, f);
        fclose(f);
    }
    check(!f || rc == MNN_EIO, "replay state written into /dev/full: MNN_EIO (%d)", rc);
    mnn_replay_free(&a);
}

#ifndef UNDER_ASAN /* the test that runs it is not built under ASan */
/* In a child whose address space is capped a little above what it uses
 * (the heap trimmed first, so that what a copy of 40 MiB needs is new
 * address space): a record too large to copy is MNN_ENOMEM, and a buffer
 * filling (reservoir), full (class-balanced) or a ring (recent) stays
 * whole and goes on.  Exit 0 when all held, else the step that failed. */
static int child_replay_oom(void *ctx)
{
    (void)ctx;
    enum { BIG = 40 << 20 };
    const mnn_replay_policy_t pols[] = {MNN_REPLAY_RESERVOIR, MNN_REPLAY_CLASS,
                                        MNN_REPLAY_RECENT};
    const size_t caps[] = {10, 3, 3};
    mnn_replay_t b[3];
    char *big = malloc(BIG);
    if (!big)
        return 10;
    memset(big, '1', BIG);
    for (size_t j = 0; j < 3; j++) {
        mnn_replay_init(&b[j], pols[j], caps[j], 1);
        for (uint64_t i = 0; i < 5; i++)
            if (replay_put(&b[j], (int32_t)(i % 2), i) < 0)
                return 11;
    }
    malloc_trim(0);
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (!f || fscanf(f, "%lu", &pages) != 1)
        return 12;
    fclose(f);
    const struct rlimit lim = {pages * (unsigned long)sysconf(_SC_PAGESIZE) + (16 << 20),
                               RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &lim) != 0)
        return 13;
    for (size_t j = 0; j < 3; j++) {
        mnn_diag_t d = {""};
        const size_t n = b[j].n, head = b[j].head;
        const uint64_t seen = b[j].seen, cseen = j == 1 ? b[j].class_seen[1] : 0;
        if (mnn_replay_offer(&b[j], big, BIG, 1, &d) != MNN_ENOMEM ||
            !contains(d.msg, "out of memory"))
            return 20 + (int)j;
        /* counted, not kept: the records held, their order and classes */
        if (b[j].n != n || b[j].head != head || b[j].seen != seen + 1 ||
            (j == 1 && b[j].class_seen[1] != cseen + 1) ||
            !replay_sane(&b[j], &(fails_t){0, 0}, "out of memory"))
            return 30 + (int)j;
        long long r;
        int y;
        for (size_t k = 0; j == 2 && k < 3; k++)
            if (replay_parse_line(mnn_replay_at(&b[j], k), &r, &y) < 0 || r != (long long)(2 + k))
                return 40;
        /* and on: the next record enters as it would have */
        if (replay_put(&b[j], 0, 9) != 0 || !replay_sane(&b[j], &(fails_t){0, 0}, "after"))
            return 50 + (int)j;
        if (j == 0 && (b[j].n != n + 1 ||
                       replay_parse_line(mnn_replay_at(&b[j], n), &r, &y) < 0 || r != 9))
            return 60;
        if (j == 2 && (replay_parse_line(mnn_replay_at(&b[j], 2), &r, &y) < 0 || r != 9 ||
                       replay_parse_line(mnn_replay_at(&b[j], 0), &r, &y) < 0 || r != 3))
            return 62;
        mnn_replay_free(&b[j]);
    }
    free(big);
    return 0;
}
#endif

static void test_replay(void)
{
    mnn_replay_policy_t p;
    check(mnn_replay_policy_parse("class-balanced", &p) == 0 && p == MNN_REPLAY_CLASS &&
              mnn_replay_policy_parse("recent", &p) == 0 && p == MNN_REPLAY_RECENT &&
              mnn_replay_policy_parse("Recent", &p) == MNN_EINVAL &&
              !strcmp(mnn_replay_policy_name(MNN_REPLAY_RESERVOIR), "reservoir") &&
              !strcmp(mnn_replay_policy_name((mnn_replay_policy_t)7), "?"),
          "replay policies: names to values and back, an unknown one refused");
    /* a held line: '\n' added, memory reused, a line too long refused */
    mnn_replay_rec_t r = {0};
    int set = mnn_replay_rec_set(&r, "1,2,3", 5, 7) == 0 && r.len == 6 &&
              !memcmp(r.text, "1,2,3\n", 6) && r.rec == 7;
    const char *text = r.text;
    const size_t cap = r.cap;
    set &= mnn_replay_rec_set(&r, "4", 1, 8) == 0 && r.text == text && r.cap == cap &&
           r.len == 2 && !memcmp(r.text, "4\n", 2) &&
           mnn_replay_rec_set(&r, "x", MNN_REPLAY_MAX_LINE + 1, 9) == MNN_ELIMIT && r.rec == 8;
    free(r.text);
    check(set, "replay record copies: the line and its '\\n', the memory reused, over 64 MiB "
               "refused (MNN_ELIMIT)");
    replay_reservoir_checks();
    replay_class_checks();
    replay_recent_checks();
    replay_draw_checks();
    replay_roundtrip_checks();
    replay_refusal_checks();
    replay_write_error_check();
#ifndef UNDER_ASAN /* its shadow memory does not fit under RLIMIT_AS */
    const int oom = in_child(child_replay_oom, NULL);
    check(oom == 0, "replay buffer out of memory (RLIMIT_AS): a record that cannot be copied "
                    "is MNN_ENOMEM, counted, not kept; every policy's buffer whole and going on "
                    "(child: %d)",
          oom);
#endif
}

/* ---- Bernoulli sampling -------------------------------------------------------- */

static void test_bernoulli(void)
{
    mnn_rng_t rng;
    mnn_bernoulli_t b;
    mnn_rng_seed(&rng, 1);
    check(mnn_bernoulli_init(&b, 0, &rng) == MNN_EINVAL &&
              mnn_bernoulli_init(&b, -0.5, &rng) == MNN_EINVAL &&
              mnn_bernoulli_init(&b, 1.0000001, &rng) == MNN_EINVAL &&
              mnn_bernoulli_init(&b, NAN, &rng) == MNN_EINVAL,
          "Bernoulli: probabilities 0, -0.5, 1.0000001 and NaN refused");
    /* p = 1: every record */
    int all = mnn_bernoulli_init(&b, 1, &rng) == 0;
    for (int i = 0; i < 1000; i++)
        all &= mnn_bernoulli_offer(&b) == 1;
    check(all, "Bernoulli p 1: every record kept");
    /* the rate, within 4 sd; pairs of neighbours kept as often as p^2 */
    const double ps[] = {0.5, 0.3, 0.01, 0.0001};
    for (size_t j = 0; j < NELEM(ps); j++) {
        const double p = ps[j];
        const uint64_t n = 2000000;
        uint64_t kept = 0, pairs = 0, draws = 0;
        int last = 0;
        mnn_rng_seed(&rng, 42 + j);
        mnn_rng_t count = rng;
        mnn_bernoulli_init(&b, p, &rng);
        for (uint64_t i = 0; i < n; i++) {
            const int k = mnn_bernoulli_offer(&b);
            kept += (uint64_t)k;
            pairs += (uint64_t)(k && last);
            last = k;
        }
        /* one draw at init and one per record kept */
        while (memcmp(&count, &rng, sizeof rng) && draws <= kept + 1) {
            mnn_rng_next(&count);
            draws++;
        }
        const double sd = sqrt((double)n * p * (1 - p)), z = ((double)kept - (double)n * p) / sd;
        /* pairs: Var = (n - 1) p^2 (1 - p) (1 + 3p), overlapping pairs
         * included; too few to judge at p 0.0001 (0.02 expected) */
        const double p2 = p * p, sd2 = sqrt((double)(n - 1) * p2 * (1 - p) * (1 + 3 * p)),
                     z2 = p < 0.01 ? 0 : ((double)pairs - (double)(n - 1) * p2) / sd2;
        check(fabs(z) < 4 && fabs(z2) < 4 && draws == kept + 1,
              "Bernoulli p %g over %llu records: %llu kept (%.2f sd), %llu neighbours both "
              "kept (%.2f sd), %llu draws for %llu kept",
              p, (unsigned long long)n, (unsigned long long)kept, z, (unsigned long long)pairs,
              z2, (unsigned long long)draws, (unsigned long long)kept);
    }
    /* the same seed, the same records; another seed, others */
    uint64_t a[64] = {0}, c[64] = {0}, o[64] = {0};
    mnn_rng_t r1, r2, r3;
    mnn_bernoulli_t b1, b2, b3;
    mnn_rng_seed(&r1, 5);
    mnn_rng_seed(&r2, 5);
    mnn_rng_seed(&r3, 6);
    mnn_bernoulli_init(&b1, 0.3, &r1);
    mnn_bernoulli_init(&b2, 0.3, &r2);
    mnn_bernoulli_init(&b3, 0.3, &r3);
    for (uint64_t i = 0; i < 64 * 64; i++) {
        a[i / 64] |= (uint64_t)mnn_bernoulli_offer(&b1) << (i % 64);
        c[i / 64] |= (uint64_t)mnn_bernoulli_offer(&b2) << (i % 64);
        o[i / 64] |= (uint64_t)mnn_bernoulli_offer(&b3) << (i % 64);
    }
    check(!memcmp(a, c, sizeof a) && memcmp(a, o, sizeof a),
          "Bernoulli p 0.3: the same seed keeps the same records, another seed others");
}

static void test_reservoir(void)
{
    enum { N = 100, K = 10, T = 20000 };
    long cnt[N], cnt2[N];
    /* inclusion counts: Var = T p (1 - p), covariances -T p (1 - p) / (n - 1),
     * so sum (O - E)^2 / (E (n - k) / (n - 1)) is chi-square with n - 1 df */
    for (int skip = 0; skip <= 1; skip++) {
        long *c = skip ? cnt2 : cnt;
        size_t broken = alg_l_counts(K, N, skip, T, 20240601 + (uint64_t)skip, c, "alg L");
        const double e = (double)T * K / N, v = e * (N - K) / (N - 1.0);
        double chi = 0;
        for (size_t i = 0; i < N; i++)
            chi += (c[i] - e) * (c[i] - e) / v;
        check(broken == 0, "Algorithm L%s, k %d of %d, %d trials: each sample %d distinct "
                           "records in slots 0..%d (%zu broken)",
              skip ? " with skips" : "", K, N, T, K, K - 1, broken);
        check(chi < chi2_crit_001(N - 1),
              "Algorithm L%s, k %d of %d, %d trials: inclusion counts uniform, chi-square "
              "%.1f < %.1f (99 df, p = 0.001)",
              skip ? " with skips" : "", K, N, T, chi, chi2_crit_001(N - 1));
    }
    /* with the same rng state, passing over what skip allows changes nothing:
     * offer returns -1 without drawing for the records skip counts */
    {
        mnn_rng_t a, b;
        mnn_rng_seed(&a, 77);
        b = a;
        uint64_t ha[K], hb[K];
        fails_t f = {0, 0};
        int same = 1;
        for (int t = 0; t < 2000; t++) {
            mnn_reservoir_t ra, rb;
            const uint64_t n = 1 + (uint64_t)t * 37 % 5000;
            mnn_reservoir_init(&ra, K, &a);
            mnn_reservoir_init(&rb, K, &b);
            run_alg_l(&ra, K, n, 0, ha, &f);
            run_alg_l(&rb, K, n, 1, hb, &f);
            if (memcmp(ha, hb, sizeof ha) || memcmp(&a, &b, sizeof a) || ra.seen != rb.seen) {
                if (same)
                    fail_at(&f, "n %llu: samples or rng states differ", (unsigned long long)n);
                same = 0;
            }
        }
        check(same && f.bad == 0,
              "Algorithm L: 2000 streams (1 to 5000 records), the same sample and rng state "
              "with and without skips");
    }
    /* k = 1: each of 50 records with probability 1/50 */
    {
        enum { N1 = 50, T1 = 20000 };
        size_t broken = alg_l_counts(1, N1, 1, T1, 4242, cnt, "k 1");
        const double e = (double)T1 / N1, v = e * (N1 - 1) / (N1 - 1.0);
        double chi = 0;
        for (size_t i = 0; i < N1; i++)
            chi += (cnt[i] - e) * (cnt[i] - e) / v;
        check(broken == 0 && chi < chi2_crit_001(N1 - 1),
              "Algorithm L, k 1 of %d, %d trials (with skips): chi-square %.1f < %.1f "
              "(49 df, p = 0.001), %zu broken",
              N1, T1, chi, chi2_crit_001(N1 - 1), broken);
    }
    /* fewer records than k, and exactly k: all of them, slots in order */
    {
        size_t broken = alg_l_counts(10, 4, 0, 100, 5, cnt, "n < k");
        broken += alg_l_counts(10, 4, 1, 100, 5, cnt, "n < k, skips");
        int all = cnt[0] == 100 && cnt[1] == 100 && cnt[2] == 100 && cnt[3] == 100;
        broken += alg_l_counts(10, 10, 1, 100, 6, cnt, "n = k");
        for (size_t i = 0; i < 10; i++)
            all &= cnt[i] == 100;
        broken += alg_l_counts(3, 0, 1, 10, 7, cnt, "n = 0");
        check(broken == 0 && all,
              "Algorithm L: 4 records, k 10: all 4, in slots 0..3; 10 records, k 10: all; "
              "none: none");
    }
    /* a long stream, with skips: 2000 samples of 10 of 10^9 records, in
     * deciles (without replacement from 10^9, as good as independent) */
    {
        enum { T2 = 2000, BINS = 10 };
        const uint64_t n = 1000000000;
        mnn_rng_t rng;
        mnn_rng_seed(&rng, 31337);
        long bin[BINS] = {0};
        uint64_t held[K];
        fails_t f = {0, 0};
        int ok = 1;
        for (int t = 0; t < T2; t++) {
            mnn_reservoir_t r;
            mnn_reservoir_init(&r, K, &rng);
            ok &= run_alg_l(&r, K, n, 1, held, &f);
            ok &= r.seen == n;
            for (int j = 0; j < K; j++) {
                if (held[j] >= n) {
                    ok = 0;
                    continue;
                }
                bin[held[j] / (n / BINS)]++;
            }
        }
        const double e = (double)T2 * K / BINS;
        double chi = 0;
        for (int b = 0; b < BINS; b++)
            chi += (bin[b] - e) * (bin[b] - e) / e;
        check(ok && chi < chi2_crit_001(BINS - 1),
              "Algorithm L with skips over 10^9 records, k %d, %d trials: deciles of the "
              "records drawn, chi-square %.1f < %.1f (9 df, p = 0.001)",
              K, T2, chi, chi2_crit_001(BINS - 1));
    }
}

/* ---- samplers' states ----------------------------------------------------------- */

/* A state's lines, written by fn into a memory stream; *len its bytes. */
#define STATE_TEXT(buf, len, call)                       \
    do {                                                 \
        FILE *mf_ = open_memstream(&(buf), &(len));      \
        int rc_ = mf_ ? (call) : MNN_ENOMEM;             \
        if (mf_ && fclose(mf_) != 0)                     \
            rc_ = MNN_EIO;                               \
        check(rc_ == 0, "state written: %s", #call);     \
    } while (0)

/* mnn_state_get on one line: its return, and whether all of it was taken. */
static int state_line(const char *line, const char *tag, const char *fmt, void *a, void *b)
{
    const char *p = line, *end = line + strlen(line);
    mnn_diag_t d = {""};
    int rc = mnn_state_get(&p, end, &d, tag, fmt, a, b);
    return rc == 0 && p != end ? -100 : rc;
}

static void state_lines_checks(void)
{
    uint64_t u = 0;
    double x = 0;
    size_t z = 0;
    char *buf = NULL;
    size_t len = 0;
    STATE_TEXT(buf, len, mnn_state_put(mf_, "t", "uxz", (uint64_t)UINT64_MAX, -0.1, (size_t)7));
    check(buf && !strcmp(buf, "t 18446744073709551615 bfb999999999999a 7\n"),
          "mnn_state_put: decimal words and a double's bits: '%.*s'", len ? (int)len - 1 : 0,
          buf ? buf : "");
    const char *p = buf, *end = buf + len;
    mnn_diag_t d = {""};
    check(mnn_state_get(&p, end, &d, "t", "uxz", &u, &x, &z) == 0 && p == end &&
              u == UINT64_MAX && x == -0.1 && z == 7,
          "mnn_state_get reads back what mnn_state_put wrote, exactly");
    free(buf);
    double nz = -0.0;
    STATE_TEXT(buf, len, mnn_state_put(mf_, "t", "x", nz));
    p = buf;
    check(mnn_state_get(&p, buf + len, &d, "t", "x", &x) == 0 && x == 0 && signbit(x),
          "a double's bits: -0 stays -0");
    free(buf);
    static const struct {
        const char *line, *tag, *fmt;
    } bad[] = {
        {"t 01 5\n", "t", "uu"},    /* a leading zero */
        {"t 1  5\n", "t", "uu"},    /* two spaces */
        {"t 1 5 \n", "t", "uu"},    /* a trailing space */
        {"t 1\n", "t", "uu"},       /* a word missing */
        {"t 1 5 6\n", "t", "uu"},   /* a word too many */
        {"t -1 5\n", "t", "uu"},    /* a sign */
        {"t +1 5\n", "t", "uu"},
        {"t 18446744073709551616 5\n", "t", "uu"}, /* 2^64 */
        {"t 1 5", "t", "uu"},       /* no newline: truncated */
        {"tt 1 5\n", "t", "uu"},    /* another tag */
        {"u 1 5\n", "t", "uu"},
        {"t 1 3FF0000000000000\n", "t", "ux"}, /* upper case */
        {"t 1 3ff000000000000\n", "t", "ux"},  /* 15 digits */
        {"t 1 3ff00000000000000\n", "t", "ux"},/* 17 digits */
        {"t 1 0x3ff0000000000000\n", "t", "ux"},
        {"t 1 1.5\n", "t", "ux"},
        {"", "t", "u"},
    };
    int refused = 1;
    for (size_t i = 0; i < NELEM(bad); i++) {
        uint64_t a = 0;
        double b = 0;
        int rc = state_line(bad[i].line, bad[i].tag, bad[i].fmt, &a, &b);
        if (rc != MNN_EFORMAT) {
            diag("'%s' read as '%s %s': %d", bad[i].line, bad[i].tag, bad[i].fmt, rc);
            refused = 0;
        }
    }
    check(refused, "mnn_state_get refuses every other spelling (%zu of them) with MNN_EFORMAT",
          NELEM(bad));
}

/* Reads text into a sampler with rd; returns its code and d's message. */
#define STATE_READ(rc, d, rd, s, text)                       \
    do {                                                     \
        const char *p_ = (text), *e_ = p_ + strlen(p_);      \
        (rc) = rd((s), &p_, e_, &(d));                       \
        if ((rc) == 0 && p_ != e_)                           \
            (rc) = -100;                                     \
    } while (0)

static void state_reservoir_checks(void)
{
    enum { K = 5, N1 = 40, N2 = 500 };
    mnn_rng_t ra, rb;
    mnn_rng_seed(&ra, 17);
    mnn_reservoir_t a, b;
    mnn_reservoir_init(&a, K, &ra);
    for (int i = 0; i < N1; i++)
        mnn_reservoir_offer(&a);
    char *buf = NULL;
    size_t len = 0;
    STATE_TEXT(buf, len, mnn_reservoir_write(&a, mf_));
    rb = ra;
    mnn_reservoir_init(&b, K, &rb);
    mnn_diag_t d = {""};
    int rc;
    STATE_READ(rc, d, mnn_reservoir_read, &b, buf);
    check(rc == 0, "a reservoir's state read back: %s", rc ? d.msg : "ok");
    int same = 1;
    for (int i = 0; i < N2; i++)
        same &= mnn_reservoir_offer(&a) == mnn_reservoir_offer(&b);
    check(same && a.seen == b.seen && a.next == b.next && !memcmp(&a.logw, &b.logw, sizeof a.logw),
          "a reservoir read back goes on as the one written (%d more records)", N2);
    mnn_reservoir_init(&b, K + 1, &rb);
    STATE_READ(rc, d, mnn_reservoir_read, &b, buf);
    check(rc == MNN_EINVAL && contains(d.msg, "a reservoir of 5, not 6"),
          "a reservoir of another k: refused (%s)", d.msg);
    free(buf);
    static const char *const bad[] = {
        "reservoir 5 3 7 0000000000000000\n",            /* filling, but a next drawn */
        "reservoir 5 3 0 bfe0000000000000\n",            /* filling, but a weight */
        "reservoir 5 9 8 bfe0000000000000\n",            /* next behind seen */
        "reservoir 5 9 12 3fe0000000000000\n",           /* log w > 0 */
        "reservoir 5 9 12 7ff8000000000000\n",           /* NaN */
        "reservoir 5 9 12 fff0000000000000\n",           /* -inf */
        "reservoir 5 4611686018427387905 4611686018427387906 bfe0000000000000\n", /* 2^62 + 1 */
    };
    int refused = 1;
    for (size_t i = 0; i < NELEM(bad); i++) {
        mnn_reservoir_init(&b, K, &rb);
        STATE_READ(rc, d, mnn_reservoir_read, &b, bad[i]);
        if (rc != MNN_ECORRUPT) {
            diag("'%s': %d %s", bad[i], rc, d.msg);
            refused = 0;
        }
    }
    check(refused, "reservoir states no reservoir has (%zu of them): MNN_ECORRUPT", NELEM(bad));
}

static void state_bernoulli_checks(void)
{
    mnn_rng_t ra, rb;
    mnn_rng_seed(&ra, 5);
    mnn_bernoulli_t a, b;
    mnn_bernoulli_init(&a, 0.3, &ra);
    for (int i = 0; i < 77; i++)
        mnn_bernoulli_offer(&a);
    char *buf = NULL;
    size_t len = 0;
    STATE_TEXT(buf, len, mnn_bernoulli_write(&a, mf_));
    mnn_bernoulli_init(&b, 0.3, &rb); /* it draws its first skip: the state comes after */
    rb = ra;
    mnn_diag_t d = {""};
    int rc;
    STATE_READ(rc, d, mnn_bernoulli_read, &b, buf);
    int same = rc == 0;
    for (int i = 0; i < 1000 && same; i++)
        same &= mnn_bernoulli_offer(&a) == mnn_bernoulli_offer(&b);
    check(same, "a Bernoulli sample read back goes on as the one written");
    mnn_bernoulli_init(&b, nextafter(0.3, 1), &rb);
    STATE_READ(rc, d, mnn_bernoulli_read, &b, buf);
    check(rc == MNN_EINVAL, "a Bernoulli sample of a p one bit away: refused (%s)", d.msg);
    free(buf);
    mnn_bernoulli_init(&b, 0.3, &rb);
    STATE_READ(rc, d, mnn_bernoulli_read, &b, "bernoulli 3fd3333333333333 9 8\n");
    check(rc == MNN_ECORRUPT, "a Bernoulli sample's next behind its count: refused (%s)", d.msg);
}

static void state_topk_checks(void)
{
    enum { K = 6 };
    mnn_rng_t ra, rb;
    mnn_rng_seed(&ra, 99);
    mnn_wres_t a, b;
    mnn_wres_init(&a, K, &ra);
    for (int i = 0; i < 300; i++)
        mnn_wres_offer(&a, 0.5 + (i % 7));
    char *buf = NULL;
    size_t len = 0;
    STATE_TEXT(buf, len, mnn_wres_write(&a, mf_));
    rb = ra;
    mnn_wres_init(&b, K, &rb);
    mnn_diag_t d = {""};
    int rc;
    STATE_READ(rc, d, mnn_wres_read, &b, buf);
    check(rc == 0, "a weighted sample's state read back: %s", rc ? d.msg : "ok");
    int same = rc == 0;
    for (int i = 0; i < 3000 && same; i++) {
        const double w = 0.25 * (1 + i % 11);
        same &= mnn_wres_offer(&a, w) == mnn_wres_offer(&b, w);
    }
    same &= !memcmp(a.top.key, b.top.key, K * sizeof *a.top.key) &&
            !memcmp(a.top.slot, b.top.slot, K * sizeof *a.top.slot);
    check(same, "a weighted sample read back goes on as the one written, keys and slots");
    /* truncated anywhere: refused, never a half state taken */
    int refused = 1;
    for (size_t cut = 0; cut + 1 < len; cut++) {
        char *t = strndup(buf, cut);
        mnn_wres_free(&b);
        mnn_wres_init(&b, K, &rb);
        STATE_READ(rc, d, mnn_wres_read, &b, t);
        if (rc != MNN_EFORMAT || b.top.n != 0) {
            diag("cut to %zu of %zu bytes: %d, %zu keys", cut, len, rc, b.top.n);
            refused = 0;
        }
        free(t);
    }
    check(refused, "a weighted sample's state cut anywhere (%zu places): MNN_EFORMAT, no keys",
          len - 1);
    free(buf);
    mnn_wres_free(&a);
    mnn_wres_free(&b);

    mnn_topk_t t;
    mnn_topk_init(&t, 3);
    static const struct {
        const char *text;
        int code;
        const char *msg;
    } bad[] = {
        {"topk 3 1099511627776\n", MNN_ECORRUPT, "1099511627776 keys of the 3"}, /* 2^40 */
        {"topk 4 1\nkey 3ff0000000000000 0\n", MNN_EINVAL, "not 3"},
        {"topk 3 2\nkey 4000000000000000 0\nkey 3ff0000000000000 1\n", MNN_ECORRUPT,
         "out of order"},
        {"topk 3 2\nkey 3ff0000000000000 1\nkey 4000000000000000 1\n", MNN_ECORRUPT, "taken"},
        {"topk 3 2\nkey 3ff0000000000000 0\nkey 4000000000000000 2\n", MNN_ECORRUPT,
         "out of range"},
        {"topk 3 1\nkey 7ff8000000000000 0\n", MNN_ECORRUPT, "not a number"},
        {"topk 3 2\nkey 3ff0000000000000 0\n", MNN_EFORMAT, "no 'key' line"},
    };
    int ok = 1;
    for (size_t i = 0; i < NELEM(bad); i++) {
        STATE_READ(rc, d, mnn_topk_read, &t, bad[i].text);
        if (rc != bad[i].code || !contains(d.msg, bad[i].msg) || t.n != 0) {
            diag("'%s': %d '%s', %zu keys", bad[i].text, rc, d.msg, t.n);
            ok = 0;
        }
    }
    check(ok, "top-k states no heap has (a count of 2^40, another k, out of order, a slot "
              "twice or beyond, NaN, a key missing): refused, nothing allocated or taken");
    mnn_topk_free(&t);
    mnn_wres_init(&b, 3, &rb);
    STATE_READ(rc, d, mnn_wres_read, &b, "wres 3ff0000000000000\ntopk 3 1\nkey bff0000000000000 0\n");
    check(rc == MNN_ECORRUPT && b.top.n == 0, "a weighted sample that jumps before it is full: "
          "refused (%s)", d.msg);
    mnn_wres_free(&b);
}

static void test_sample_state(void)
{
    state_lines_checks();
    state_reservoir_checks();
    state_bernoulli_checks();
    state_topk_checks();
}

static void test_topk(void)
{
    enum { K = 7, N = 2000 };
    mnn_topk_t t;
    check(mnn_topk_init(&t, K) == 0, "mnn_topk_init(%d)", K);
    check(mnn_topk_min(&t) == -INFINITY, "mnn_topk_min of an empty heap: -inf");
    double shadow[K], all[N];
    int used[K] = {0};
    fails_t f = {0, 0};
    for (int i = 0; i < N; i++) {
        /* some repeated keys, so that ties are met */
        const double key = i % 5 == 4 ? all[i - 3] : tunif() * 100 - 50;
        all[i] = key;
        double mn = INFINITY;
        int at = -1;
        for (int j = 0; j < (i < K ? i : K); j++)
            if (shadow[j] < mn)
                mn = shadow[j], at = j;
        const long s = mnn_topk_push(&t, key);
        if (i < K) {
            if (s != i || used[i]++)
                fail_at(&f, "push %d while filling: slot %ld, not %d", i, s, i);
            else
                shadow[s] = key;
        } else if (key > mn) {
            if (s < 0 || s >= K || shadow[s] != mn)
                fail_at(&f, "push %d (key %g > min %g): slot %ld, not the min's (%d)", i, key,
                        mn, s, at);
            else
                shadow[s] = key;
        } else if (s != -1) {
            fail_at(&f, "push %d (key %g <= min %g): slot %ld, not -1", i, key, mn, s);
        }
        mn = INFINITY;
        for (int j = 0; j < (i + 1 < K ? i + 1 : K); j++)
            mn = fmin(mn, shadow[j]);
        if (mnn_topk_min(&t) != mn)
            fail_at(&f, "after push %d: min %g, not %g", i, mnn_topk_min(&t), mn);
    }
    check(f.bad == 0, "mnn_topk_push, k %d, %d keys with ties: slots 0..%d once while filling, "
                      "then the smallest key's slot or -1; mnn_topk_min the smallest (%zu wrong)",
          K, N, K - 1, f.bad);
    /* the slots hold the K largest keys */
    double top[K];
    memcpy(top, shadow, sizeof top);
    for (int i = 0; i < K; i++) /* sort descending */
        for (int j = i + 1; j < K; j++)
            if (top[j] > top[i]) {
                double x = top[i];
                top[i] = top[j];
                top[j] = x;
            }
    int larger = 0;
    for (int i = 0; i < N; i++)
        larger += all[i] > top[K - 1];
    int found = 1; /* each of the top K in all[], counting multiplicity */
    for (int j = 0; j < K; j++) {
        int in = 0, dup = 0;
        for (int i = 0; i < N; i++)
            in += all[i] == top[j];
        for (int i = 0; i < K; i++)
            dup += top[i] == top[j];
        found &= in >= dup;
    }
    check(found && larger <= K - 1, "mnn_topk: the slots hold the %d largest of %d keys "
                                    "(%d keys larger than the smallest kept)",
          K, N, larger);
    mnn_topk_free(&t);
    mnn_topk_free(&t); /* idempotent */

    check(mnn_topk_init(&t, 0) == 0 && mnn_topk_push(&t, 1) == -1 && mnn_topk_push(&t, 2) == -1 &&
              mnn_topk_min(&t) == -INFINITY,
          "mnn_topk, k 0: every push -1");
    mnn_topk_free(&t);
    check(mnn_topk_init(&t, 1) == 0 && mnn_topk_push(&t, 1) == 0 && mnn_topk_push(&t, 0) == -1 &&
              mnn_topk_push(&t, 1) == -1 && mnn_topk_push(&t, 3) == 0 && mnn_topk_min(&t) == 3,
          "mnn_topk, k 1: 1 -> slot 0; 0 and an equal 1: -1; 3 -> slot 0; min 3");
    mnn_topk_free(&t);
}

/* A-ExpJ over the weights w[n], trials times (a new reservoir each):
 * inclusion counts in cnt[n].  Checks the slots (0, 1, ... for positive
 * weights while filling; the other weights -1) and that the keys and the
 * jump stay numbers.  Returns the number of broken trials. */
static size_t wres_counts(const double *w, size_t n, size_t k, long trials, uint64_t seed,
                          long *cnt)
{
    mnn_rng_t rng;
    mnn_rng_seed(&rng, seed);
    long held[16];
    size_t broken = 0;
    for (size_t i = 0; i < n; i++)
        cnt[i] = 0;
    for (long t = 0; t < trials; t++) {
        mnn_wres_t r;
        if (mnn_wres_init(&r, k, &rng) < 0) {
            broken++;
            continue;
        }
        int ok = 1;
        size_t pos = 0;
        for (size_t j = 0; j < k; j++)
            held[j] = -1;
        for (size_t i = 0; i < n; i++) {
            const long s = mnn_wres_offer(&r, w[i]);
            const int takes = w[i] > 0 && isfinite(w[i]);
            if (!takes)
                ok &= s == -1;
            else if (pos < k)
                ok &= s == (long)pos++;
            else
                ok &= s >= -1 && s < (long)k;
            if (s >= 0 && s < (long)k)
                held[s] = (long)i;
            ok &= !isnan(r.xw);
            for (size_t j = 0; j < r.top.n; j++)
                ok &= !isnan(r.top.key[j]);
        }
        for (size_t j = 0; j < k; j++)
            if (held[j] >= 0)
                cnt[held[j]]++;
            else
                ok &= j >= pos; /* empty only when fewer records than k */
        broken += !ok;
        mnn_wres_free(&r);
    }
    return broken;
}

static void wres_against_theory(const char *what, const double *w, const double *wtheory, size_t n,
                                size_t k, long trials, uint64_t seed)
{
    long cnt[16];
    double p[16];
    succ_incl(wtheory, n, k, p);
    size_t broken = wres_counts(w, n, k, trials, seed, cnt);
    size_t worst;
    const double z = worst_se(cnt, p, n, trials, &worst);
    check(broken == 0 && z <= 4,
          "A-ExpJ, %s, k %zu, %ld trials: inclusion frequencies within 4 standard errors of "
          "successive sampling's exact probabilities (worst: record %zu, %.4f against %.4f, "
          "%.2f SE); %zu broken trials",
          what, k, trials, worst, (double)cnt[worst] / (double)trials, p[worst], z, broken);
}

static void test_wres(void)
{
    static const double w5[] = {1, 2, 3, 4, 10}, w5r[] = {10, 4, 3, 2, 1};
    wres_against_theory("weights 1 2 3 4 10", w5, w5, 5, 2, 200000, 11);
    wres_against_theory("weights 10 4 3 2 1", w5r, w5r, 5, 2, 200000, 12);
    static const double w8[] = {5, 1, 1, 0.5, 1, 2, 1, 8};
    wres_against_theory("weights 5 1 1 0.5 1 2 1 8", w8, w8, 8, 3, 100000, 13);
    /* only ratios matter, down to 1e-300 and up to 1e300 */
    static const double tiny[] = {1e-300, 2e-300, 3e-300, 4e-300, 1e-299};
    static const double huge[] = {1e300, 2e300, 3e300, 4e300, 1e301};
    wres_against_theory("weights 1e-300 x (1 2 3 4 10)", tiny, w5, 5, 2, 100000, 14);
    wres_against_theory("weights 1e300 x (1 2 3 4 10)", huge, w5, 5, 2, 100000, 15);
    /* 1e300 against 1e-300: the huge ones are always in, the tiny never
     * (unless there are fewer others than k) */
    {
        static const double mix[] = {1e-300, 1, 1e300, 1e-300, 1, 1e300, 1e-300};
        static const double p[] = {0, 0, 1, 0, 0, 1, 0};
        long cnt[7];
        size_t broken = wres_counts(mix, 7, 2, 20000, 16, cnt), worst;
        check(broken == 0 && worst_se(cnt, p, 7, 20000, &worst) == 0,
              "A-ExpJ, weights 1e-300 1 1e300 1e-300 1 1e300 1e-300, k 2: the two 1e300 "
              "always, no NaN (%zu broken)", broken);
        static const double p3[] = {0, 0.5, 1, 0, 0.5, 1, 0};
        broken = wres_counts(mix, 7, 3, 40000, 17, cnt);
        const double z = worst_se(cnt, p3, 7, 40000, &worst);
        check(broken == 0 && z <= 4 && cnt[0] + cnt[3] + cnt[6] == 0,
              "A-ExpJ, the same, k 3: both 1e300, one of the 1s (each 0.5 within 4 SE: worst "
              "%.2f SE), never a 1e-300 (%ld times); %zu broken",
              z, cnt[0] + cnt[3] + cnt[6], broken);
    }
    /* k = 1 over 200 records of weights 1..200: record i with probability
     * w_i / sum w; long jumps between entries */
    {
        enum { N = 200, T = 40000 };
        double w[N], sum = 0;
        long cnt[N];
        for (int i = 0; i < N; i++)
            sum += w[i] = i + 1;
        mnn_rng_t rng;
        mnn_rng_seed(&rng, 18);
        for (int i = 0; i < N; i++)
            cnt[i] = 0;
        int ok = 1;
        for (int t = 0; t < T; t++) {
            mnn_wres_t r;
            ok &= mnn_wres_init(&r, 1, &rng) == 0;
            long at = -1;
            for (int i = 0; i < N; i++)
                if (mnn_wres_offer(&r, w[i]) == 0)
                    at = i;
            ok &= at >= 0;
            if (at >= 0)
                cnt[at]++;
            mnn_wres_free(&r);
        }
        double chi = 0;
        for (int i = 0; i < N; i++) {
            const double e = T * w[i] / sum;
            chi += (cnt[i] - e) * (cnt[i] - e) / e;
        }
        check(ok && chi < chi2_crit_001(N - 1),
              "A-ExpJ, k 1 of %d records weighing 1..%d, %d trials: proportional to weight, "
              "chi-square %.1f < %.1f (199 df, p = 0.001)",
              N, N, T, chi, chi2_crit_001(N - 1));
    }
    /* weights 0, negative, NaN, inf: never drawn, even while filling; fewer
     * positive records than k: all of them */
    {
        static const double w[] = {0, 3, 0, -1, 1, NAN, 2, INFINITY, 0};
        static const double p[] = {0, 1, 0, 0, 1, 0, 1, 0, 0};
        long cnt[12];
        size_t worst, broken = wres_counts(w, 9, 5, 1000, 19, cnt);
        check(broken == 0 && worst_se(cnt, p, 9, 1000, &worst) == 0,
              "A-ExpJ, k 5, weights 0 3 0 -1 1 NaN 2 inf 0: the 3 positive finite ones, in "
              "slots 0..2, always; the others never (%zu broken)", broken);
        static const double w0[] = {1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1};
        static const double p0[] = {0.4, 0, 0.4, 0, 0, 0.4, 0, 0.4, 0, 0, 0, 0.4};
        broken = wres_counts(w0, 12, 2, 50000, 20, cnt);
        const double z = worst_se(cnt, p0, 12, 50000, &worst);
        check(broken == 0 && z <= 4,
              "A-ExpJ, k 2, five records of weight 1 among weights 0: each 0.4 within 4 SE "
              "(worst %.2f), weight 0 never; %zu broken", z, broken);
    }
    {
        mnn_rng_t rng;
        mnn_rng_seed(&rng, 1);
        mnn_wres_t r;
        int ok = mnn_wres_init(&r, 0, &rng) == 0;
        ok &= mnn_wres_offer(&r, 1) == -1 && mnn_wres_offer(&r, 5) == -1;
        mnn_wres_free(&r);
        check(ok, "A-ExpJ, k 0: every record -1");
    }
}

static void test_decay(void)
{
    /* record i weighs exp(lambda i): the k largest keys are successive
     * sampling with those weights, wherever the stream starts */
    enum { N = 6, K = 2 };
    const double lambda = 0.5;
    double w[N], p[N];
    for (int i = 0; i < N; i++)
        w[i] = exp(lambda * i);
    succ_incl(w, N, K, p);
    static const uint64_t start[] = {0, 1000000000000ULL};
    static const long trials[] = {200000, 50000};
    for (int s = 0; s < 2; s++) {
        mnn_rng_t rng;
        mnn_rng_seed(&rng, 21 + (uint64_t)s);
        long cnt[N] = {0};
        fails_t f = {0, 0};
        for (long t = 0; t < trials[s]; t++) {
            mnn_topk_t top;
            if (mnn_topk_init(&top, K) < 0) {
                fail_at(&f, "mnn_topk_init");
                break;
            }
            int held[K] = {-1, -1};
            for (int i = 0; i < N; i++) {
                const double key = mnn_decay_key(&rng, lambda, start[s] + (uint64_t)i);
                if (!isfinite(key))
                    fail_at(&f, "record %d: key %g", i, key);
                const long slot = mnn_topk_push(&top, key);
                if (slot >= 0 && slot < K)
                    held[slot] = i;
            }
            for (int j = 0; j < K; j++)
                if (held[j] >= 0)
                    cnt[held[j]]++;
            mnn_topk_free(&top);
        }
        size_t worst;
        const double z = worst_se(cnt, p, N, trials[s], &worst);
        check(f.bad == 0 && z <= 4,
              "decay, lambda %.1f, records %llu.., k %d of %d, %ld trials: inclusion within 4 SE "
              "of successive sampling with weights exp(lambda i) (worst: record %zu, %.4f against "
              "%.4f, %.2f SE)",
              lambda, (unsigned long long)start[s], K, N, trials[s], worst,
              (double)cnt[worst] / (double)trials[s], p[worst], z);
    }
    /* lambda 20: an older record outweighed e^20 times; the last 5 of 100 are
     * the sample (the chance of another, about 5 e^-20 a trial) */
    {
        enum { N2 = 100, K2 = 5, T = 5000 };
        mnn_rng_t rng;
        mnn_rng_seed(&rng, 23);
        long last = 0;
        for (int t = 0; t < T; t++) {
            mnn_topk_t top;
            if (mnn_topk_init(&top, K2) < 0)
                break;
            int held[K2];
            for (int i = 0; i < N2; i++) {
                const long slot = mnn_topk_push(&top, mnn_decay_key(&rng, 20, (uint64_t)i));
                if (slot >= 0 && slot < K2)
                    held[slot] = i;
            }
            int mn = N2;
            for (int j = 0; j < K2; j++)
                mn = held[j] < mn ? held[j] : mn;
            last += mn == N2 - K2;
            mnn_topk_free(&top);
        }
        check(last == T, "decay, lambda 20, k %d of %d: the last %d records, %ld of %d trials", K2,
              N2, K2, last, T);
    }
}

/* ---- main ---------------------------------------------------------------- */

/* mnn_ckpt_same: a checkpoint compared with a state, nothing written */
static void test_ckpt_same(void)
{
    char dir[200], fp[260], l[256];
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    mnn_diag_t d = {""};
    tpath(dir, sizeof dir, "same");
    if (make_trained(&m, &o, &st, MNN_OPT_ADAM, MNN_NORM_NONE, 1) != 0 ||
        mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d) != 0) {
        check(0, "mnn_ckpt_same: set-up: %s", d.msg);
        return;
    }
    int rc = mnn_ckpt_same(dir, &m, &o, &st, &d);
    check(rc == 0 && !strcmp(dir_list(dir, l, sizeof l),
                             "manifest.yaml model.safetensors optimizer.safetensors state.yaml"),
          "mnn_ckpt_same: the state it was written from is the same; nothing is added "
          "(rc %d, \"%s\"; dir: %s)", rc, d.msg, l);
    m.params[m.nparams / 2] += 1e-3f;
    rc = mnn_ckpt_same(dir, &m, &o, &st, &d);
    check(rc == MNN_EEXIST && contains(d.msg, "another training's state"),
          "one weight changed: MNN_EEXIST (rc %d, \"%s\")", rc, d.msg);
    m.params[m.nparams / 2] -= 1e-3f;
    st.records_seen++;
    rc = mnn_ckpt_same(dir, &m, &o, &st, &d);
    check(rc == MNN_EEXIST, "a counter changed: MNN_EEXIST (rc %d)", rc);
    st.records_seen--;
    o.m1[0] += 1;
    rc = mnn_ckpt_same(dir, &m, &o, &st, &d);
    check(rc == MNN_EEXIST, "a moment changed: MNN_EEXIST (rc %d)", rc);
    o.m1[0] -= 1;
    snprintf(fp, sizeof fp, "%s/optimizer.safetensors", dir);
    FILE *f = fopen(fp, "r+");
    if (f) {
        fseek(f, -3, SEEK_END);
        fputc(0x55, f);
        fclose(f);
    }
    rc = mnn_ckpt_same(dir, &m, &o, &st, &d);
    check(rc == MNN_ECORRUPT && contains(d.msg, "optimizer.safetensors"),
          "a damaged file is not taken for the same (rc %d, \"%s\")", rc, d.msg);
    rc = mnn_ckpt_same(tmpdir, &m, &o, &st, &d);
    check(rc < 0 && rc != MNN_EEXIST, "a directory that is no checkpoint: an error (rc %d)", rc);
    mnn_optim_free(&o);
    mnn_model_free(&m);
}

/* entries in dir other than . and .. */
static int count_entries(const char *dir)
{
    DIR *dp = opendir(dir);
    int n = 0;
    if (!dp)
        return -1;
    for (struct dirent *de; (de = readdir(dp));)
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(dp);
    return n;
}

/* mnn_ckpt_open: every form a checkpoint argument takes ends as a directory */
static void test_ckpt_open(void)
{
    char root[128], dir[200], link[200], arc[240], recv[128], rlink[240], work[128], fp[300];
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    mnn_diag_t d = {""};
    mnn_ckpt_t ck;
    tpath(root, sizeof root, "open");
    tpath(work, sizeof work, "open-work");
    tpath(recv, sizeof recv, "open-recv");
    snprintf(dir, sizeof dir, "%s/step-00000009", root);
    snprintf(link, sizeof link, "%s/latest", root);
    snprintf(arc, sizeof arc, "%s/step-00000009.tar.zst", recv);
    snprintf(rlink, sizeof rlink, "%s/latest", recv);
    if (mkdir(root, 0755) != 0 || mkdir(work, 0755) != 0 || mkdir(recv, 0755) != 0 ||
        make_trained(&m, &o, &st, MNN_OPT_SGD, MNN_NORM_NONE, 0) != 0) {
        check(0, "mnn_ckpt_open: set-up");
        return;
    }
    st.step = 9;
    int rc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d);
    mnn_optim_free(&o);
    mnn_model_free(&m);
    int fd = open(arc, O_WRONLY | O_CREAT | O_EXCL, 0644);
    mnn_pack_opts_t po = {0, 0};
    if (rc < 0 || fd < 0 || mnn_ckpt_pack(dir, fd, &po, &d) < 0 || close(fd) != 0 ||
        symlink("step-00000009", link) != 0 || symlink("step-00000009.tar.zst", rlink) != 0) {
        check(0, "mnn_ckpt_open: set-up: %s", d.msg);
        return;
    }

    /* a directory: its manifest read, the files not hashed unless asked */
    rc = mnn_ckpt_open(&ck, dir, work, 0, &d);
    check(rc == 0 && !strcmp(ck.dir, dir) && !ck.archive && !ck.tmp && !ck.verified &&
              ck.mf.step == 9 && !strcmp(ck.src, dir),
          "mnn_ckpt_open of a directory gives it back, manifest read (rc %d)", rc);
    check(rc == 0 && mnn_ckpt_verify(&ck, &d) == 0 && ck.verified,
          "mnn_ckpt_verify hashes a directory's files");
    mnn_ckpt_close(&ck);
    check(ck.dir == NULL && ck.src == NULL, "mnn_ckpt_close empties it");
    mnn_ckpt_close(&ck); /* twice: harmless */

    /* a root: its latest */
    rc = mnn_ckpt_open(&ck, root, work, MNN_OPEN_VERIFY, &d);
    check(rc == 0 && !strcmp(ck.dir, link) && ck.verified && ck.mf.step == 9,
          "mnn_ckpt_open of a root follows latest and verifies (rc %d: %s)", rc, d.msg);
    mnn_ckpt_close(&ck);

    /* an archive: unpacked under workdir, checked, removed at close */
    rc = mnn_ckpt_open(&ck, arc, work, 0, &d);
    int ok = rc == 0 && ck.archive && ck.verified && ck.tmp && ck.dir &&
             !strncmp(ck.tmp, work, strlen(work)) && !strncmp(ck.dir, ck.tmp, strlen(ck.tmp)) &&
             ck.mf.step == 9 && !strcmp(ck.src, arc);
    if (ok) {
        snprintf(fp, sizeof fp, "%s/model.safetensors", ck.dir);
        ok = access(fp, F_OK) == 0;
    }
    check(ok, "mnn_ckpt_open of an archive unpacks it under workdir (rc %d: %s)", rc, d.msg);
    mnn_model_t m2;
    memset(&m2, 0, sizeof m2);
    if (check(rc == 0 && mnn_ckpt_load(ck.dir, &m2, NULL, NULL, &d) == 0,
              "the unpacked archive loads: %s", d.msg))
        mnn_model_free(&m2);
    mnn_ckpt_close(&ck);
    check(count_entries(work) == 0, "mnn_ckpt_close removes the unpacked archive (%d left)",
          count_entries(work));

    /* mnn_ckpt_resolve: what each names, nothing opened */
    {
        char *path = NULL;
        int k1 = mnn_ckpt_resolve(dir, &path, &d), ok1 = k1 == 0 && path && !strcmp(path, dir);
        free(path);
        int k2 = mnn_ckpt_resolve(recv, &path, &d), ok2 = k2 == 1 && path && !strcmp(path, rlink);
        free(path);
        int k3 = mnn_ckpt_resolve(arc, &path, &d), ok3 = k3 == 1 && path && !strcmp(path, arc);
        free(path);
        int k4 = mnn_ckpt_resolve(root, &path, &d), ok4 = k4 == 0 && path && !strcmp(path, root);
        free(path);
        check(ok1 && ok2 && ok3 && ok4 && count_entries(work) == 0,
              "mnn_ckpt_resolve: a directory, a received-into directory, an archive, a root "
              "(%d %d %d %d)", k1, k2, k3, k4);
    }

    /* a directory ckpt-ship received into: the archive its latest names */
    rc = mnn_ckpt_open(&ck, recv, work, 0, &d);
    check(rc == 0 && ck.archive && !strcmp(ck.src, rlink) && ck.dir && ck.mf.step == 9,
          "mnn_ckpt_open of a received-into directory opens the archive latest names (rc %d: "
          "%s)", rc, d.msg);
    mnn_ckpt_close(&ck);
    check(count_entries(work) == 0, "and removes it at close");

    /* checked, not extracted */
    rc = mnn_ckpt_open(&ck, arc, work, MNN_OPEN_NO_EXTRACT, &d);
    check(rc == 0 && !ck.dir && ck.verified && count_entries(work) == 0,
          "MNN_OPEN_NO_EXTRACT reads and checks an archive, unpacks nothing (rc %d)", rc);
    mnn_ckpt_close(&ck);

    /* kept: workdir/NAME */
    rc = mnn_ckpt_open(&ck, arc, work, MNN_OPEN_KEEP, &d);
    snprintf(fp, sizeof fp, "%s/step-00000009", work);
    check(rc == 0 && ck.dir && !strcmp(ck.dir, fp) && !ck.tmp,
          "MNN_OPEN_KEEP unpacks into workdir/NAME (rc %d: %s)", rc, d.msg);
    mnn_ckpt_close(&ck);
    snprintf(fp, sizeof fp, "%s/step-00000009/manifest.yaml", work);
    check(access(fp, F_OK) == 0, "and keeps it after close");
    snprintf(fp, sizeof fp, "%s/step-00000009", work);
    mnn_remove_tree(fp);

    /* what is not a checkpoint, named in the message */
    snprintf(fp, sizeof fp, "%s/open-not.txt", tmpdir);
    write_bytes(fp, "hello\n", 6);
    rc = mnn_ckpt_open(&ck, fp, work, 0, &d);
    check(rc == MNN_EFORMAT && contains(d.msg, fp) && contains(d.msg, "not zstd-compressed") &&
              !ck.dir && !ck.src && count_entries(work) == 0,
          "a plain file is not a checkpoint (rc %d: %s; %d left in workdir)", rc, d.msg,
          count_entries(work));
    snprintf(fp, sizeof fp, "%s/open-none", tmpdir);
    rc = mnn_ckpt_open(&ck, fp, work, 0, &d);
    check(rc == MNN_EIO && contains(d.msg, fp), "a missing path (rc %d: %s)", rc, d.msg);
    rc = mnn_ckpt_open(&ck, tmpdir, work, 0, &d);
    check(rc < 0 && contains(d.msg, "no manifest.yaml, no latest"),
          "a directory that holds no checkpoint (rc %d: %s)", rc, d.msg);

    /* damage: a file of the directory, and the archive */
    snprintf(fp, sizeof fp, "%s/state.yaml", dir);
    FILE *f = fopen(fp, "r+");
    if (f) {
        fputc('X', f); /* the same size, another hash */
        fclose(f);
    }
    rc = mnn_ckpt_open(&ck, dir, work, MNN_OPEN_VERIFY, &d);
    check(rc == MNN_ECORRUPT && contains(d.msg, "state.yaml") && !ck.dir,
          "MNN_OPEN_VERIFY refuses a damaged file (rc %d: %s)", rc, d.msg);
    struct stat sb;
    if (stat(arc, &sb) == 0 && truncate(arc, sb.st_size / 2) == 0) {
        rc = mnn_ckpt_open(&ck, arc, work, 0, &d);
        check(rc < 0 && contains(d.msg, arc) && count_entries(work) == 0,
              "a truncated archive is refused, nothing left in workdir (rc %d: %s; %d left)",
              rc, d.msg, count_entries(work));
    } else
        check(0, "truncate %s", arc);
}

/* ---- pipeline cuts: the lines -------------------------------------------- */

static int cut_parse(const char *s, mnn_cutline_t *l, mnn_diag_t *d)
{
    d->msg[0] = 0;
    return mnn_cutline_parse(s, strlen(s), l, d);
}

static void test_cutline(void)
{
    mnn_cutline_t l;
    mnn_diag_t d = {""};
    static const struct {
        const char *line;
        mnn_cut_kind_t kind;
        uint64_t id;
        mnn_cut_what_t what;
        uint32_t index;
        const char *program;
        uint64_t bytes;
        const char *xxh3;
    } good[] = {
        {"#!ckpt-start 0 0", MNN_CUT_START, 0, MNN_CUT_GO, 0, "", 0, ""},
        {"#!ckpt-start 7 3", MNN_CUT_START, 7, MNN_CUT_GO, 3, "", 0, ""},
        {"#!ckpt-start 18446744073709551615 64", MNN_CUT_START, UINT64_MAX, MNN_CUT_GO, 64, "",
         0, ""},
        {"#!ckpt 1", MNN_CUT_BARRIER, 1, MNN_CUT_GO, 0, "", 0, ""},
        {"#!ckpt 42 stop", MNN_CUT_BARRIER, 42, MNN_CUT_STOP, 0, "", 0, ""},
        {"#!ckpt 9 final", MNN_CUT_BARRIER, 9, MNN_CUT_FINAL, 0, "", 0, ""},
        {"#!ckpt  5   stop ", MNN_CUT_BARRIER, 5, MNN_CUT_STOP, 0, "", 0, ""},
        {"#!part 3 0 replay-buffer 1234 0123456789abcdef", MNN_CUT_PART, 3, MNN_CUT_GO, 0,
         "replay-buffer", 1234, "0123456789abcdef"},
        {"#!part 18446744073709551615 63 a_b-9 0 ffffffffffffffff", MNN_CUT_PART, UINT64_MAX,
         MNN_CUT_GO, 63, "a_b-9", 0, "ffffffffffffffff"},
        {"#!part 2 1 abcdefghijklmnopqrstuvwxyz01234 1073741824 00000000000000a0",
         MNN_CUT_PART, 2, MNN_CUT_GO, 1, "abcdefghijklmnopqrstuvwxyz01234",
         (uint64_t)1 << 30, "00000000000000a0"},
        {"#!ckpt-end 5", MNN_CUT_END, 5, MNN_CUT_GO, 0, "", 0, ""},
        {"#=", MNN_CUT_DATA, 0, MNN_CUT_GO, 0, "", 0, ""},
        {"#=QUJD", MNN_CUT_DATA, 0, MNN_CUT_GO, 0, "", 0, ""},
        {"#!ckpt-start 1 2\r", MNN_CUT_START, 1, MNN_CUT_GO, 2, "", 0, ""},
        {"#!ckpt 8 stop\r", MNN_CUT_BARRIER, 8, MNN_CUT_STOP, 0, "", 0, ""},
        {"#!ckpt 8\r", MNN_CUT_BARRIER, 8, MNN_CUT_GO, 0, "", 0, ""},
        {"#!part 4 2 sgd 7 0123456789abcdef\r", MNN_CUT_PART, 4, MNN_CUT_GO, 2, "sgd", 7,
         "0123456789abcdef"},
        {"#!ckpt-end 8\r", MNN_CUT_END, 8, MNN_CUT_GO, 0, "", 0, ""},
        {"#=QUJD\r", MNN_CUT_DATA, 0, MNN_CUT_GO, 0, "", 0, ""},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(good); i++) {
        memset(&l, 0x5a, sizeof l); /* every field is set, not left over */
        int rc = cut_parse(good[i].line, &l, &d);
        if (rc != 1 || l.kind != good[i].kind || l.id != good[i].id || l.what != good[i].what ||
            l.index != good[i].index || strcmp(l.program, good[i].program) ||
            l.bytes != good[i].bytes || strcmp(l.xxh3, good[i].xxh3))
            fail_at(&f, "'%s': rc %d, kind %d, id %llu, what %d, index %u, program '%.32s', "
                    "bytes %llu, xxh3 '%.17s' (\"%s\")", good[i].line, rc, (int)l.kind,
                    (unsigned long long)l.id, (int)l.what, (unsigned)l.index, l.program,
                    (unsigned long long)l.bytes, l.xxh3, d.msg);
    }
    check(f.bad == 0, "mnn_cutline_parse: start, barriers (plain, stop, final), parts (the "
                      "largest cut, index, name and size), end and data lines, also with a "
                      "trailing '\\r': 1 and every field (%zu lines)", NELEM(good));
    {
        mnn_cutline_t a, b;
        int ra = cut_parse("#!part 3 1 replay-buffer 12 0123456789abcdef file\r", &a, &d);
        int rb = cut_parse("#!part 3 1 replay-buffer 12 0123456789abcdef", &b, &d);
        check(ra == 1 && a.kind == MNN_CUT_PART && a.in_file == 1 && a.bytes == 12 &&
                  a.index == 1 && !strcmp(a.program, "replay-buffer") && rb == 1 &&
                  b.in_file == 0,
              "mnn_cutline_parse: a part's header with 'file' says its data is in a file; "
              "without, in the stream");
    }

    static const char *const plain[] = {
        "", "#", "# a comment", "#!flush", "#!note 1 2 3", "#!partial 1 0 p 0 0123456789abcdef",
        "#!par 1", "#ckpt 1", " #!ckpt 1", "#-QUJD", "1,2,3", "#\r", "#!flush\r", "#!",
    };
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(plain); i++) {
        memset(&l, 0x5a, sizeof l);
        int rc = cut_parse(plain[i], &l, &d);
        if (rc != 0 || l.kind != MNN_CUT_NONE)
            fail_at(&f, "'%s': rc %d, kind %d (\"%s\")", plain[i], rc, (int)l.kind, d.msg);
    }
    check(f.bad == 0, "mnn_cutline_parse: '#' comments, '#!flush', '#!note', '#!partial', "
                      "records and other lines that are no cut line: 0, kind NONE (%zu lines)",
                      NELEM(plain));

    char longname[128], longline[200];
    memset(longname, 'a', 32);
    longname[32] = 0;
    snprintf(longline, sizeof longline, "#!part 1 0 %s 5 0123456789abcdef", longname);
    const struct {
        const char *line, *why;
    } bad[] = {
        /* wrong field counts */
        {"#!ckpt-start", "wrong number of fields"},
        {"#!ckpt-start 1", "wrong number of fields"},
        {"#!ckpt-start 1 2 3", "wrong number of fields"},
        {"#!ckpt", "wrong number of fields"},
        {"#!ckpt ", "wrong number of fields"},
        {"#!ckpt 1 stop 2", "wrong number of fields"},
        {"#!ckpt-end", "wrong number of fields"},
        {"#!ckpt-end 1 2", "wrong number of fields"},
        {"#!part 1 0 prog 5", "wrong number of fields"},
        {"#!part 1 0 prog 5 0123456789abcdef file x", "wrong number of fields"},
        {"#!part 1 0 prog 5 0123456789abcdef x y z", "wrong number of fields"},
        /* a part in a file: the word 'file', nothing else */
        {"#!part 1 0 prog 5 0123456789abcdef x", "neither data lines nor 'file'"},
        {"#!part 1 0 prog 5 0123456789abcdef File", "neither data lines nor 'file'"},
        {"#!part 1 0 prog 5 0123456789abcdef files", "neither data lines nor 'file'"},
        {"#!part 1 0 prog 5 0123456789abcdef fil", "neither data lines nor 'file'"},
        {"#!part 1 0 prog 5 0123456789abcdef ../file", "neither data lines nor 'file'"},
        /* numbers */
        {"#!ckpt x", "the cut is not a number"},
        {"#!ckpt 1x", "the cut is not a number"},
        {"#!ckpt 1.5", "the cut is not a number"},
        {"#!ckpt 0x10", "the cut is not a number"},
        {"#!ckpt +1", "the cut is not a number"},
        {"#!ckpt -1", "the cut is not a number"},
        {"#!ckpt-end -1", "the cut is not a number"},
        {"#!ckpt-start +0 1", "the cut is not a number"},
        {"#!ckpt-start a 1", "the cut is not a number"},
        {"#!part +1 0 p 5 0123456789abcdef", "the cut is not a number"},
        {"#!ckpt 18446744073709551616", "the cut is not a number"},
        {"#!ckpt 99999999999999999999", "the cut is not a number"},
        {"#!ckpt 1000000000000000000000000000", "the cut is not a number"},
        {"#!ckpt-end 18446744073709551616", "the cut is not a number"},
        {"#!ckpt 1\r\r", "the cut is not a number"},
        {"#!ckpt-start 0 b", "the stage count"},
        {"#!ckpt-start 0 +1", "the stage count"},
        {"#!ckpt-start 0 -1", "the stage count"},
        {"#!ckpt-start 0 65", "the stage count"},
        {"#!ckpt-start 0 4294967360", "the stage count"},
        {"#!ckpt-start 0 18446744073709551616", "the stage count"},
        {"#!part 1 z p 5 0123456789abcdef", "the stage index"},
        {"#!part 1 -1 p 5 0123456789abcdef", "the stage index"},
        {"#!part 1 +1 p 5 0123456789abcdef", "the stage index"},
        {"#!part 1 64 p 5 0123456789abcdef", "the stage index"},
        {"#!part 1 4294967296 p 5 0123456789abcdef", "the stage index"},
        {"#!part 1 0 p 5k 0123456789abcdef", "the size"},
        {"#!part 1 0 p +5 0123456789abcdef", "the size"},
        {"#!part 1 0 p -5 0123456789abcdef", "the size"},
        {"#!part 1 0 p 99999999999999999999 0123456789abcdef", "the size"},
        /* cut 0 */
        {"#!ckpt 0", "cut 0"},
        {"#!ckpt 0 stop", "cut 0"},
        {"#!ckpt 00", "cut 0"},
        {"#!part 0 0 p 5 0123456789abcdef", "cut 0"},
        {"#!ckpt-end 0", "cut 0"},
        /* program names */
        {"#!part 1 0 Replay 5 0123456789abcdef", "the program name"},
        {"#!part 1 0 a/b 5 0123456789abcdef", "the program name"},
        {"#!part 1 0 ../x 5 0123456789abcdef", "the program name"},
        {"#!part 1 0 'a' 5 0123456789abcdef", "the program name"},
        {"#!part 1 0 \"a\" 5 0123456789abcdef", "the program name"},
        {"#!part 1 0 $(x) 5 0123456789abcdef", "the program name"},
        {"#!part 1 0 a.b 5 0123456789abcdef", "the program name"},
        {"#!part 1 0 a\tb 5 0123456789abcdef", "the program name"},
        {longline, "the program name"},
        /* hashes */
        {"#!part 1 0 p 5 0123456789abcde", "the hash"},
        {"#!part 1 0 p 5 0123456789abcdef0", "the hash"},
        {"#!part 1 0 p 5 0123456789ABCDEF", "the hash"},
        {"#!part 1 0 p 5 0123456789abcdeg", "the hash"},
        {"#!part 1 0 p 5 0x23456789abcdef", "the hash"},
        /* barriers' word */
        {"#!ckpt 1 stop2", "neither stop nor final"},
        {"#!ckpt 1 STOP", "neither stop nor final"},
        {"#!ckpt 1 Final", "neither stop nor final"},
        {"#!ckpt 1 go", "neither stop nor final"},
        {"#!ckpt 1 sto", "neither stop nor final"},
        /* tags nobody knows */
        {"#!ckptfoo", "unknown"},
        {"#!ckpt-other 1", "unknown"},
        {"#!ckpt-", "unknown"},
        {"#!ckpt-startx 1 2", "unknown"},
        {"#!ckpt_end 1", "unknown"},
        {"#!ckpt\t1", "unknown"},
    };
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(bad); i++) {
        int rc = cut_parse(bad[i].line, &l, &d);
        if (rc != MNN_EFORMAT || !contains(d.msg, "a malformed cut line") ||
            !contains(d.msg, bad[i].why))
            fail_at(&f, "'%s': rc %d, \"%s\", want \"%s\"", bad[i].line, rc, d.msg, bad[i].why);
    }
    check(f.bad == 0, "mnn_cutline_parse refuses wrong field counts, non-numbers, '+1', '-1', "
                      "20 digits, cut 0, a stage index of 64, a count of 65, program names "
                      "with uppercase, '/', quotes, '$(x)' or 32 characters, hashes of 15 or 17 "
                      "digits or uppercase, 'stop2', 'STOP', unknown #!ckpt tags: MNN_EFORMAT "
                      "saying why (%zu lines)", NELEM(bad));
    int rc = cut_parse(longline, &l, &d);
    check(rc == MNN_EFORMAT && contains(d.msg, "...") && strlen(d.msg) < 200,
          "a long malformed line is shown cut short in the message (\"%s\")", d.msg);

    static const struct {
        const char *line, *bytes;
    } huge[] = {
        {"#!part 1 0 p 1073741825 0123456789abcdef", "1073741825"},
        {"#!part 1 0 p 4294967296 0123456789abcdef", "4294967296"},
        {"#!part 1 0 p 18446744073709551615 0123456789abcdef", "18446744073709551615"},
    };
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(huge); i++) {
        rc = cut_parse(huge[i].line, &l, &d);
        if (rc != MNN_ELIMIT || !contains(d.msg, huge[i].bytes))
            fail_at(&f, "'%s': rc %d, \"%s\"", huge[i].line, rc, d.msg);
    }
    check(f.bad == 0, "a part claiming more than MNN_CUT_MAX_PART bytes (1 GiB + 1, 4 GiB, "
                      "2^64 - 1): MNN_ELIMIT naming the size (%zu lines)", NELEM(huge));

    /* what the writers put is what the parser reads */
    char *buf = NULL;
    size_t sz = 0;
    FILE *mf = open_memstream(&buf, &sz);
    int wrc = -1;
    if (mf) {
        wrc = mnn_cut_put_start(mf, 12, 2) | mnn_cut_put_barrier(mf, 13, MNN_CUT_GO) |
              mnn_cut_put_barrier(mf, 14, MNN_CUT_STOP) |
              mnn_cut_put_barrier(mf, 15, MNN_CUT_FINAL) | mnn_cut_put_end(mf, 15);
        wrc |= fclose(mf);
    }
    check(wrc == 0 && buf && !strcmp(buf, "#!ckpt-start 12 2\n#!ckpt 13\n#!ckpt 14 stop\n"
                                          "#!ckpt 15 final\n#!ckpt-end 15\n"),
          "mnn_cut_put_start, _barrier (plain, stop, final) and _end write the lines "
          "(rc %d: \"%s\")", wrc, buf ? buf : "");
    free(buf);
    check(!strcmp(mnn_cut_what_name(MNN_CUT_GO), "") &&
              !strcmp(mnn_cut_what_name(MNN_CUT_STOP), "stop") &&
              !strcmp(mnn_cut_what_name(MNN_CUT_FINAL), "final"),
          "mnn_cut_what_name: \"\", stop, final");
}

/* ---- pipeline cuts: parts ------------------------------------------------- */

/* A part as mnn_cut_put_part writes it, in memory (free it); NULL on failure. */
static char *part_text(uint64_t id, uint32_t index, const char *program, const void *data,
                       size_t n, size_t *len)
{
    char *buf = NULL;
    size_t sz = 0;
    FILE *f = open_memstream(&buf, &sz);
    if (!f)
        return NULL;
    int rc = mnn_cut_put_part(f, id, index, program, data, n);
    if (fclose(f) != 0 || rc != 0) {
        free(buf);
        return NULL;
    }
    *len = sz;
    return buf;
}

/* Reads text line by line as a stage does (the part's header, then its
 * data lines): 0 and the bytes in p (mnn_part_free it), or the first error;
 * *maxcap: the largest p->cap seen; -1000: a line that is not a part's. */
static int part_read(const char *text, size_t len, mnn_part_t *p, size_t *maxcap, mnn_diag_t *d)
{
    const char *s = text, *end = text + len;
    int begun = 0, rc = 0;
    memset(p, 0, sizeof *p);
    *maxcap = 0;
    d->msg[0] = 0;
    while (s < end && rc == 0) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t n = nl ? (size_t)(nl - s) : (size_t)(end - s);
        mnn_cutline_t l;
        rc = mnn_cutline_parse(s, n, &l, d);
        if (rc == 1 && l.kind == MNN_CUT_PART && !begun) {
            mnn_part_begin(p, &l);
            begun = 1;
            rc = 0;
        } else if (rc == 1 && l.kind == MNN_CUT_DATA && begun) {
            rc = mnn_part_data(p, s, n, d);
            if (p->cap > *maxcap)
                *maxcap = p->cap;
        } else if (rc >= 0)
            rc = -1000;
        s = nl ? nl + 1 : end;
    }
    if (rc == 0 && !begun)
        rc = -1000;
    return rc == 0 ? mnn_part_finish(p, d) : rc;
}

/* The starts of text's lines in at[0, *n), at[*n] its end. */
static void line_starts(const char *text, size_t len, size_t *at, size_t max, size_t *n)
{
    *n = 0;
    for (size_t i = 0; i < len && *n < max; i++)
        if (i == 0 || text[i - 1] == '\n')
            at[(*n)++] = i;
    at[*n] = len;
}

/* The lines of text in the order given (indices into at), into out. */
static size_t join_lines(const char *text, const size_t *at, const int *order, size_t k, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < k; i++) {
        size_t a = at[order[i]], b = at[order[i] + 1];
        memcpy(out + o, text + a, b - a);
        o += b - a;
    }
    return o;
}

static void test_cut_part(void)
{
    const size_t per = MNN_CUT_LINE / 4 * 3; /* raw bytes per data line */
    const size_t sizes[] = {0, 1, 2, 3, 4, 5, 47, 48, per - 1, per, per + 1, 2 * per, 200000};
    unsigned char *data = malloc(200000);
    char *crlf = malloc(2 * 300000);
    mnn_diag_t d = {""};
    if (!check(data && crlf && per == 49152, "cut parts: buffers, %zu raw bytes a line", per)) {
        free(data);
        free(crlf);
        return;
    }
    for (size_t i = 0; i < 200000; i++)
        data[i] = (unsigned char)trng();
    fails_t f = {0, 0}, fl = {0, 0}, fc = {0, 0};
    for (size_t k = 0; k < NELEM(sizes); k++) {
        const size_t n = sizes[k];
        size_t len = 0, maxcap = 0, nlines = 0, longest = 0;
        char *text = part_text(7, 2, "replay-buffer", data, n, &len), hex[17], head[128];
        if (!text) {
            fail_at(&f, "%zu bytes: mnn_cut_put_part failed", n);
            continue;
        }
        mnn_hash_hex(mnn_hash64(data, n), hex);
        int hl = snprintf(head, sizeof head, "#!part 7 2 replay-buffer %zu %s\n", n, hex);
        for (const char *s = text + hl; s < text + len; nlines++) {
            const char *nl = memchr(s, '\n', (size_t)(text + len - s));
            size_t ln = nl ? (size_t)(nl - s) : (size_t)(text + len - s);
            if (ln > longest)
                longest = ln;
            if (ln < 2 || memcmp(s, "#=", 2) || !nl)
                fail_at(&fl, "%zu bytes: line %zu is no data line", n, nlines + 2);
            s = nl ? nl + 1 : text + len;
        }
        if ((size_t)hl > len || memcmp(text, head, (size_t)hl) || nlines != (n + per - 1) / per ||
            longest > MNN_CUT_LINE + 2)
            fail_at(&fl, "%zu bytes: header '%.*s', %zu data lines (want %zu), the longest %zu",
                    n, (int)strcspn(text, "\n"), text, nlines, (n + per - 1) / per, longest);
        mnn_part_t p;
        int rc = part_read(text, len, &p, &maxcap, &d);
        if (rc != 0 || p.len != n || (n && memcmp(p.data, data, n)))
            fail_at(&f, "%zu bytes: rc %d, %zu bytes back (\"%s\")", n, rc, p.len, d.msg);
        if (maxcap > n + per)
            fail_at(&fc, "%zu bytes: a buffer of %zu bytes (more than %zu + one line)", n,
                    maxcap, n);
        mnn_part_free(&p);
        /* the same lines ending in "\r\n" */
        size_t c = 0;
        for (size_t i = 0; i < len; i++) {
            if (text[i] == '\n')
                crlf[c++] = '\r';
            crlf[c++] = text[i];
        }
        rc = part_read(crlf, c, &p, &maxcap, &d);
        if (rc != 0 || p.len != n || (n && memcmp(p.data, data, n)))
            fail_at(&f, "%zu bytes with CRLF: rc %d, %zu bytes back (\"%s\")", n, rc, p.len,
                    d.msg);
        mnn_part_free(&p);
        free(text);
    }
    check(fl.bad == 0, "mnn_cut_put_part: the header names the size and XXH3; ceil(n / %zu) "
                       "data lines of at most MNN_CUT_LINE + 2 characters (%zu sizes)", per,
          NELEM(sizes));
    check(f.bad == 0, "a part read back line by line (mnn_cutline_parse, mnn_part_begin, "
                      "_data, _finish) is the bytes written, with '\\n' and with '\\r\\n' "
                      "(sizes 0 to 4, 47, 48, a line's -1, +0, +1, two lines, 200000)");
    check(fc.bad == 0, "reading a part, the buffer never holds more than its bytes and one "
                       "line (%zu sizes)", NELEM(sizes));

    /* damage to a part of 100000 bytes: lines 0 (header), 1 and 2 (full), 3 (short) */
    const size_t n = 100000;
    size_t len = 0, at[8], nl = 0, maxcap;
    char *text = part_text(7, 2, "replay-buffer", data, n, &len);
    char *bad = malloc(len + 4 * MNN_CUT_LINE);
    if (text)
        line_starts(text, len, at, 7, &nl);
    if (!check(text && bad && nl == 4, "a part of 100000 bytes in 4 lines (%zu)", nl)) {
        free(text);
        free(bad);
        free(data);
        free(crlf);
        return;
    }
    char head[128], hex[17];
    mnn_hash_hex(mnn_hash64(data, n), hex);
    static const struct {
        const char *what;
        int order[6];
        size_t k;
        int edit;        /* 0 none; 1 flip a char of line 2; 2 '*' in line 1; 3 '=' in line 1;
                          * 4 drop the last char of line 3; 5 '==' ending line 1; 6 "AAAA"
                          * added to line 1; 7 line 1 cut to 1000 characters */
        int rc1, rc2;    /* the error (either of two) */
        const char *want;
    } dmg[] = {
        {"one base64 character changed", {0, 1, 2, 3}, 4, 1, MNN_ECORRUPT, 0, "hash"},
        {"the middle data line dropped", {0, 1, 3}, 3, 0, MNN_ECORRUPT, 0, "truncated"},
        {"the first data line dropped", {0, 2, 3}, 3, 0, MNN_ECORRUPT, 0, "truncated"},
        {"the last data line dropped", {0, 1, 2}, 3, 0, MNN_ECORRUPT, 0, "truncated"},
        {"no data line", {0}, 1, 0, MNN_ECORRUPT, 0, "truncated"},
        {"a full data line twice", {0, 1, 1, 2, 3}, 5, 0, MNN_ELIMIT, MNN_EFORMAT, "stage 2"},
        {"the last data line twice", {0, 1, 2, 3, 3}, 5, 0, MNN_EFORMAT, MNN_ELIMIT, "stage 2"},
        {"the lines out of order", {0, 2, 1, 3}, 4, 0, MNN_ECORRUPT, 0, "hash"},
        {"the short line first", {0, 3, 1, 2}, 4, 0, MNN_EFORMAT, 0, "data after its end"},
        {"a character that is not base64", {0, 1, 2, 3}, 4, 2, MNN_EFORMAT, 0, "not base64"},
        {"'=' in the middle of a line", {0, 1, 2, 3}, 4, 3, MNN_EFORMAT, 0, "not base64"},
        {"a line of a length not a multiple of 4", {0, 1, 2, 3}, 4, 4, MNN_EFORMAT, 0,
         "wrong length"},
        {"'==' ending a full line, data after it", {0, 1, 2, 3}, 4, 5, MNN_EFORMAT, 0,
         "data after its end"},
        {"a line longer than MNN_CUT_LINE", {0, 1, 2, 3}, 4, 6, MNN_EFORMAT, 0, "wrong length"},
        {"data after a short line", {0, 1, 2, 3}, 4, 7, MNN_EFORMAT, 0, "data after its end"},
    };
    fails_t fd = {0, 0};
    for (size_t i = 0; i < NELEM(dmg); i++) {
        size_t bl = join_lines(text, at, dmg[i].order, dmg[i].k, bad);
        /* the data lines' places in bad */
        size_t l1 = at[1] - at[0], l2 = l1 + (at[2] - at[1]), l3 = l2 + (at[3] - at[2]);
        switch (dmg[i].edit) {
        case 1: bad[l2 + 1000] = bad[l2 + 1000] == 'A' ? 'B' : 'A'; break;
        case 2: bad[l1 + 2 + 4000] = '*'; break;
        case 3: bad[l1 + 2 + 4002] = '='; bad[l1 + 2 + 4003] = '='; break;
        case 4: memmove(bad + bl - 2, bad + bl - 1, 1); bl--; break;
        case 5: bad[l2 - 2] = '='; bad[l2 - 3] = '='; break;
        case 6:
            memmove(bad + l2 + 3, bad + l2 - 1, bl - (l2 - 1));
            memcpy(bad + l2 - 1, "AAAA", 4);
            bl += 4;
            break;
        case 7:
            memmove(bad + l1 + 1002, bad + l2 - 1, bl - (l2 - 1));
            bl -= l2 - 1 - (l1 + 1002);
            break;
        }
        (void)l3;
        mnn_part_t p;
        int rc = part_read(bad, bl, &p, &maxcap, &d);
        if ((rc != dmg[i].rc1 && (!dmg[i].rc2 || rc != dmg[i].rc2)) ||
            !contains(d.msg, dmg[i].want) || !contains(d.msg, "stage 2 (replay-buffer) of cut 7"))
            fail_at(&fd, "%s: rc %d, \"%s\"", dmg[i].what, rc, d.msg);
        else if (maxcap > n + per)
            fail_at(&fd, "%s: a buffer of %zu bytes", dmg[i].what, maxcap);
        mnn_part_free(&p);
    }
    check(fd.bad == 0, "a damaged part is refused, naming its stage, program and cut: a "
                       "character changed, lines dropped, twice or out of order, not base64, "
                       "'=' inside, a wrong length, data after its end (%zu cases)", NELEM(dmg));

    /* more data than the header says */
    static const struct {
        size_t claim, lines; /* the header's bytes; full data lines sent */
    } more[] = {{0, 1}, {1, 1}, {1000, 1}, {per - 1, 1}, {per, 2}, {per + 1, 3}, {100000, 10}};
    fails_t fm = {0, 0};
    for (size_t i = 0; i < NELEM(more); i++) {
        mnn_hash_hex(mnn_hash64(data, more[i].claim), hex);
        int hl = snprintf(head, sizeof head, "#!part 7 2 replay-buffer %zu %s\n", more[i].claim,
                          hex);
        char *t = malloc((size_t)hl + more[i].lines * (MNN_CUT_LINE + 3));
        if (!t)
            continue;
        memcpy(t, head, (size_t)hl);
        size_t tl = (size_t)hl;
        for (size_t k = 0; k < more[i].lines; k++) {
            size_t a = at[1 + k % 2], b = at[2 + k % 2];
            memcpy(t + tl, text + a, b - a);
            tl += b - a;
        }
        mnn_part_t p;
        int rc = part_read(t, tl, &p, &maxcap, &d);
        if (rc != MNN_ELIMIT || !contains(d.msg, "more data than") || maxcap > more[i].claim + per)
            fail_at(&fm, "%zu bytes claimed, %zu lines sent: rc %d, a buffer of %zu (\"%s\")",
                    more[i].claim, more[i].lines, rc, maxcap, d.msg);
        mnn_part_free(&p);
        free(t);
    }
    /* a short line decoding to one byte more than claimed */
    {
        mnn_hash_hex(mnn_hash64("", 0), hex);
        char t[256];
        int tl = snprintf(t, sizeof t, "#!part 7 2 replay-buffer 1 %s\n#=AAA=\n", hex);
        mnn_part_t p;
        int rc = part_read(t, (size_t)tl, &p, &maxcap, &d);
        if (rc != MNN_ELIMIT || !contains(d.msg, "more data than"))
            fail_at(&fm, "2 bytes sent for 1: rc %d (\"%s\")", rc, d.msg);
        mnn_part_free(&p);
    }
    check(fm.bad == 0, "more data than the header's bytes (0, 1, 1000, a line's +-1, 100000 "
                       "claimed; up to 10 lines sent; 2 bytes for 1): MNN_ELIMIT, the buffer "
                       "never past the claim and one line (%zu cases)", NELEM(more) + 1);

    /* an empty data line; a header whose hash is not the data's */
    {
        char t[256];
        mnn_part_t p;
        mnn_hash_hex(mnn_hash64("abc", 3), hex);
        int tl = snprintf(t, sizeof t, "#!part 7 2 replay-buffer 3 %s\n#=\n", hex);
        int rc = part_read(t, (size_t)tl, &p, &maxcap, &d);
        check(rc == MNN_EFORMAT && contains(d.msg, "wrong length"),
              "an empty data line '#=': MNN_EFORMAT (rc %d, \"%s\")", rc, d.msg);
        mnn_part_free(&p);
        tl = snprintf(t, sizeof t, "#!part 7 2 replay-buffer 3 %s\n#=YWJj\n", hex);
        rc = part_read(t, (size_t)tl, &p, &maxcap, &d);
        int ok = rc == 0 && p.len == 3 && !memcmp(p.data, "abc", 3);
        mnn_part_free(&p);
        tl = snprintf(t, sizeof t, "#!part 7 2 replay-buffer 3 %s\n#=YWJk\n", hex);
        rc = part_read(t, (size_t)tl, &p, &maxcap, &d);
        check(ok && rc == MNN_ECORRUPT && contains(d.msg, "damaged on the way") &&
                  contains(d.msg, hex),
              "'abc' read back; 'abd' under abc's hash: MNN_ECORRUPT naming the hashes (rc %d, "
              "\"%s\")", rc, d.msg);
        mnn_part_free(&p);
    }
    free(bad);
    free(text);
    free(data);
    free(crlf);
}

/* A part left in a file: saved, pointed at, loaded (and then removed);
 * missing, shorter, other bytes, a link, a directory: refused, a damaged
 * file kept for a look. */
static void test_cut_part_file(void)
{
    char root[128], path[256], line[256];
    snprintf(root, sizeof root, "%s/parts-root", tmpdir); /* made by the save */
    static const char data[] = "the state of a stage\n";
    const size_t n = sizeof data - 1;
    mnn_diag_t d = {""};
    int rc = mnn_cut_part_save(root, 9, 1, "replay-buffer", data, n, &d);
    snprintf(path, sizeof path, "%s/.parts/c9-s1.replay-buffer", root);
    struct stat sb;
    check(rc == 0 && stat(path, &sb) == 0 && (size_t)sb.st_size == n,
          "mnn_cut_part_save: ROOT and ROOT/.parts made, ROOT/.parts/c9-s1.replay-buffer "
          "written (rc %d, \"%s\")", rc, d.msg);
    FILE *f = fmemopen(line, sizeof line, "w");
    rc = f ? mnn_cut_put_part_ref(f, 9, 1, "replay-buffer", data, n) : MNN_EIO;
    if (f)
        fclose(f);
    char hex[17];
    mnn_hash_hex(mnn_hash64(data, n), hex);
    char want[128];
    snprintf(want, sizeof want, "#!part 9 1 replay-buffer %zu %s file\n", n, hex);
    check(rc == 0 && !strcmp(line, want), "mnn_cut_put_part_ref: the header with 'file', no data "
          "lines (%s)", rc == 0 && !strcmp(line, want) ? "as wanted" : line);
    mnn_cutline_t l;
    mnn_part_t p = {0};
    int pr = mnn_cutline_parse(line, strlen(line) - 1, &l, &d);
    mnn_part_begin(&p, &l);
    rc = mnn_part_load(&p, root, &d);
    check(pr == 1 && l.in_file && rc == 0 && p.len == n && !memcmp(p.data, data, n) &&
              stat(path, &sb) != 0 && errno == ENOENT,
          "mnn_part_load: the bytes back, checked, and the file removed (rc %d, \"%s\")", rc,
          d.msg);
    /* the file gone (or never written): a clear error naming it */
    mnn_part_begin(&p, &l);
    rc = mnn_part_load(&p, root, &d);
    check(rc == MNN_EIO && contains(d.msg, "c9-s1.replay-buffer") &&
              contains(d.msg, "share one --ckpt-dir"),
          "mnn_part_load: no file: MNN_EIO naming it and saying why (rc %d, \"%s\")", rc,
          d.msg);
    /* one byte other under the same size: the hash; one byte short: the size */
    static const char other[] = "the state of a stagE\n";
    const char *const bodies[] = {other, "the state of a stage"};
    const char *const says[] = {"damaged on the way", "another size"};
    for (int i = 0; i < 2; i++) {
        mnn_cut_part_save(root, 9, 1, "replay-buffer", bodies[i], strlen(bodies[i]), &d);
        mnn_part_begin(&p, &l);
        rc = mnn_part_load(&p, root, &d);
        check(rc == MNN_ECORRUPT && contains(d.msg, says[i]) && stat(path, &sb) == 0,
              "mnn_part_load: %s: MNN_ECORRUPT, the file kept (rc %d, \"%s\")",
              i ? "one byte short" : "another byte", rc, d.msg);
        unlink(path);
    }
    /* a link to the right bytes, and a directory by the name: refused */
    char target[256];
    snprintf(target, sizeof target, "%s/elsewhere", tmpdir);
    f = fopen(target, "w");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
    int setup = symlink(target, path);
    mnn_part_begin(&p, &l);
    rc = mnn_part_load(&p, root, &d);
    struct stat tb;
    check(setup == 0 && rc == MNN_EIO && lstat(path, &sb) == 0 && stat(target, &tb) == 0,
          "mnn_part_load: a link by the name is not followed; both stay (rc %d, \"%s\")", rc,
          d.msg);
    unlink(path);
    setup = mkdir(path, 0700);
    mnn_part_begin(&p, &l);
    rc = mnn_part_load(&p, root, &d);
    check(setup == 0 && rc == MNN_ECORRUPT && contains(d.msg, "no regular file"),
          "mnn_part_load: a directory by the name: MNN_ECORRUPT (rc %d, \"%s\")", rc, d.msg);
    rmdir(path);
    /* ROOT/.parts a link out of ROOT: not followed */
    char parts[256];
    snprintf(parts, sizeof parts, "%s/.parts", root);
    rmdir(parts);
    setup = symlink(tmpdir, parts);
    rc = mnn_cut_part_save(root, 9, 1, "replay-buffer", data, n, &d);
    int rc2 = mnn_part_load(&p, root, &d);
    check(setup == 0 && rc == MNN_EIO && rc2 == MNN_EIO,
          "ROOT/.parts a link elsewhere: neither saved nor loaded through it (rc %d, %d)", rc,
          rc2);
    unlink(parts);
    unlink(target);
    rmdir(root);
    mnn_part_free(&p);
}

/* ---- pipeline cuts: checkpoints ------------------------------------------ */

/* The fixture of a cut: stage 0 replay-buffer (1000 bytes), 1 stream-sample
 * (0 bytes), 2 filter_x (100000 bytes); 3 pending records of 6 features. */
static unsigned char cut_d0[1000], cut_d2[100000];
static float cut_px[3 * 6], cut_py[3];
static mnn_stage_part_t cut_parts[3];
static char cut_hex[3][17];

static void cut_fixture(void)
{
    for (size_t i = 0; i < sizeof cut_d0; i++)
        cut_d0[i] = (unsigned char)trng();
    for (size_t i = 0; i < sizeof cut_d2; i++)
        cut_d2[i] = (unsigned char)trng();
    fill_sym(cut_px, NELEM(cut_px), 3);
    for (size_t i = 0; i < NELEM(cut_py); i++)
        cut_py[i] = (float)(i % 3);
    cut_parts[0] = (mnn_stage_part_t){0, "replay-buffer", cut_d0, sizeof cut_d0};
    cut_parts[1] = (mnn_stage_part_t){1, "stream-sample", "", 0};
    cut_parts[2] = (mnn_stage_part_t){2, "filter_x", cut_d2, sizeof cut_d2};
    for (int i = 0; i < 3; i++)
        mnn_hash_hex(mnn_hash64(cut_parts[i].data, cut_parts[i].bytes), cut_hex[i]);
}

static mnn_cut_ckpt_t cut_of(uint64_t id, uint32_t self, size_t pending)
{
    return (mnn_cut_ckpt_t){id, self, "sgd-train", cut_parts, pending, cut_px, cut_py};
}

/* The checks of a cut dir written from cut: its manifest's fields, every
 * part's bytes, the pending records, the refusals of stage_read; the
 * failures into f. */
static void cut_read_back(fails_t *f, const char *dir, const mnn_cut_ckpt_t *cut)
{
    mnn_manifest_t mf;
    mnn_diag_t d = {""};
    int rc = mnn_manifest_load(&mf, dir, NULL, &d);
    if (rc != 0 || mf.cut != cut->id || mf.cut_stage != cut->self ||
        strcmp(mf.cut_program, cut->self_program) || mf.pending != cut->pending ||
        mf.nstages != cut->self) {
        fail_at(f, "%s: manifest rc %d, cut %llu, stage %u, program %s, pending %llu, "
                "%zu stages (\"%s\")", dir, rc, (unsigned long long)mf.cut, (unsigned)mf.cut_stage,
                mf.cut_program, (unsigned long long)mf.pending, mf.nstages, d.msg);
        if (rc == 0)
            mnn_manifest_free(&mf);
        return;
    }
    for (uint32_t i = 0; i < cut->self; i++) {
        char want[64];
        snprintf(want, sizeof want, "stage-%u.%s", (unsigned)i, cut->parts[i].program);
        if (mf.stages[i].index != i || strcmp(mf.stages[i].program, cut->parts[i].program) ||
            strcmp(mf.stages[i].file, want))
            fail_at(f, "%s: stage %u: index %u, program %s, file %s", dir, (unsigned)i,
                    (unsigned)mf.stages[i].index, mf.stages[i].program, mf.stages[i].file);
    }
    if ((rc = mnn_manifest_verify_dir(&mf, dir, &d)) != 0)
        fail_at(f, "%s: mnn_manifest_verify_dir rc %d (\"%s\")", dir, rc, d.msg);
    mnn_manifest_free(&mf);
    for (uint32_t i = 0; i < cut->self; i++) {
        char *buf = NULL;
        size_t len = 99;
        uint64_t id = 0;
        rc = mnn_ckpt_stage_read(dir, i, cut->parts[i].program, &buf, &len, &id, &d);
        if (rc != 0 || len != cut->parts[i].bytes || id != cut->id ||
            (len && memcmp(buf, cut->parts[i].data, len)))
            fail_at(f, "%s: stage %u: rc %d, %zu bytes, cut %llu (\"%s\")", dir, (unsigned)i, rc,
                    len, (unsigned long long)id, d.msg);
        free(buf);
        /* another program than the part's */
        buf = NULL;
        d.msg[0] = 0;
        rc = mnn_ckpt_stage_read(dir, i, "other", &buf, &len, &id, &d);
        char st_i[32];
        snprintf(st_i, sizeof st_i, "stage %u ", (unsigned)i);
        if (rc != MNN_ESHAPE || buf || len || !contains(d.msg, dir) || !contains(d.msg, st_i) ||
            !contains(d.msg, cut->parts[i].program) || !contains(d.msg, "not other"))
            fail_at(f, "%s: stage %u as 'other': rc %d, \"%s\"", dir, (unsigned)i, rc, d.msg);
        free(buf);
    }
    /* the committing stage's index, and indices past it */
    const uint32_t past[] = {cut->self, cut->self + 1, MNN_CUT_MAX_STAGES - 1, UINT32_MAX};
    for (size_t k = 0; k < NELEM(past); k++) {
        char *buf = NULL, st_i[32];
        size_t len = 99;
        uint64_t id = 0;
        d.msg[0] = 0;
        rc = mnn_ckpt_stage_read(dir, past[k], "replay-buffer", &buf, &len, &id, &d);
        if (past[k] == cut->self)
            snprintf(st_i, sizeof st_i, "stage %u of cut %llu is %s, the one", (unsigned)cut->self,
                     (unsigned long long)cut->id, cut->self_program);
        else
            snprintf(st_i, sizeof st_i, "stages 0 to %u (%s last)", (unsigned)cut->self,
                     cut->self_program);
        if (rc != MNN_ESHAPE || buf || len || !contains(d.msg, dir) || !contains(d.msg, st_i) ||
            !contains(d.msg, "replay-buffer"))
            fail_at(f, "%s: stage %u: rc %d, \"%s\", want \"%s\"", dir, (unsigned)past[k], rc,
                    d.msg, st_i);
        free(buf);
    }
    float *x = (float *)1, *y = (float *)1;
    size_t n = 99;
    rc = mnn_ckpt_pending_read(dir, 6, &x, &y, &n, &d);
    if (rc != 0 || n != cut->pending || (n == 0 && (x || y)) ||
        (n && (!x || !y || memcmp(x, cut->px, n * 6 * sizeof *x) ||
               memcmp(y, cut->py, n * sizeof *y))))
        fail_at(f, "%s: pending: rc %d, %zu records (\"%s\")", dir, rc, n, d.msg);
    if (rc == 0) {
        mnn_free(x);
        mnn_free(y);
    }
    d.msg[0] = 0;
    rc = mnn_ckpt_pending_read(dir, 5, &x, &y, &n, &d);
    if (cut->pending ? rc != MNN_ESHAPE || x || y || n || !contains(d.msg, "6 features, not 5")
                     : rc != 0 || n != 0 || x || y)
        fail_at(f, "%s: pending of 5 features: rc %d, %zu records (\"%s\")", dir, rc, n, d.msg);
    if (rc == 0 && n) {
        mnn_free(x);
        mnn_free(y);
    }
}

static void test_ckpt_cut(void)
{
    mnn_model_t m, m2;
    mnn_optim_t o, o2;
    mnn_train_state_t st, st2;
    mnn_diag_t d = {""};
    char root[128], dir[200], name[64], l[512];
    if (!check(make_trained(&m, &o, &st, MNN_OPT_ADAM, MNN_NORM_RUNNING, 0) == 0 &&
                   m.spec.batch == 4 && m.spec.input == 6,
               "cut checkpoints: a model of 6 inputs, batch 4"))
        return;
    cut_fixture();
    tpath(root, sizeof root, "cuts");
    mkdir(root, 0755);
    static const struct {
        uint64_t id;
        uint32_t self;
        size_t pending;
        const char *files;
    } shapes[] = {
        {1, 0, 0, "manifest.yaml model.safetensors optimizer.safetensors state.yaml"},
        {2, 1, 0, "manifest.yaml model.safetensors optimizer.safetensors stage-0.replay-buffer "
                  "state.yaml"},
        {3, 3, 3, "manifest.yaml model.safetensors optimizer.safetensors pending.safetensors "
                  "stage-0.replay-buffer stage-1.stream-sample stage-2.filter_x state.yaml"},
        {4, 0, 1, "manifest.yaml model.safetensors optimizer.safetensors pending.safetensors "
                  "state.yaml"},
        {5, 3, 0, "manifest.yaml model.safetensors optimizer.safetensors stage-0.replay-buffer "
                  "stage-1.stream-sample stage-2.filter_x state.yaml"},
        {18446744073709551615ULL, 1, 2, "manifest.yaml model.safetensors optimizer.safetensors "
                  "pending.safetensors stage-0.replay-buffer state.yaml"},
    };
    fails_t fw = {0, 0}, fr = {0, 0};
    for (size_t i = 0; i < NELEM(shapes); i++) {
        mnn_cut_ckpt_t cut = cut_of(shapes[i].id, shapes[i].self, shapes[i].pending);
        mnn_ckpt_cut_name(name, sizeof name, st.step, cut.id);
        snprintf(dir, sizeof dir, "%s/%s", root, name);
        int rc = mnn_ckpt_write_cut(dir, &m, &o, &st, NULL, 1700000000, 0, &cut, &d);
        if (rc != 0 || strcmp(dir_list(dir, l, sizeof l), shapes[i].files)) {
            fail_at(&fw, "cut %llu: rc %d (\"%s\"), files %s", (unsigned long long)cut.id, rc,
                    d.msg, l);
            continue;
        }
        memset(&m2, 0, sizeof m2);
        rc = mnn_ckpt_load(dir, &m2, &o2, &st2, &d);
        if (rc != 0 || !same_state(&st, &st2) || m2.nparams != m.nparams ||
            memcmp(m2.params, m.params, m.nparams * sizeof *m.params))
            fail_at(&fw, "cut %llu: mnn_ckpt_load rc %d (\"%s\")", (unsigned long long)cut.id, rc,
                    d.msg);
        if (rc == 0) {
            mnn_optim_free(&o2);
            mnn_model_free(&m2);
        }
        cut_read_back(&fr, dir, &cut);
    }
    check(fw.bad == 0, "mnn_ckpt_write_cut with 0, 1 and 3 upstream parts (one of 0 bytes), "
                       "pending 0, 1, 2 and 3: exactly the files expected (stage-I.PROGRAM, "
                       "pending.safetensors only when pending), and mnn_ckpt_load loads it "
                       "(%zu cuts)", NELEM(shapes));
    check(fr.bad == 0, "... mnn_manifest_load gives cut, stage, program, pending and the "
                       "stages; mnn_ckpt_stage_read each part's exact bytes and the cut, and "
                       "MNN_ESHAPE (naming the checkpoint, the stage and what it holds) for "
                       "another program, the committing stage's index and indices past it; "
                       "mnn_ckpt_pending_read the exact records, none for pending 0, "
                       "MNN_ESHAPE for 5 features (%zu cuts)", NELEM(shapes));

    /* through the root's latest */
    {
        int lrc = mnn_ckpt_set_latest(root, "step-00000005-c3", &d);
        char *buf = NULL;
        size_t len = 0, n = 0;
        uint64_t id = 0;
        float *x = NULL, *y = NULL;
        int rc = mnn_ckpt_stage_read(root, 2, "filter_x", &buf, &len, &id, &d);
        int prc = mnn_ckpt_pending_read(root, 6, &x, &y, &n, &d);
        check(lrc == 0 && rc == 0 && id == 3 && len == sizeof cut_d2 &&
                  !memcmp(buf, cut_d2, len) && prc == 0 && n == 3 &&
                  !memcmp(x, cut_px, sizeof cut_px),
              "mnn_ckpt_stage_read and mnn_ckpt_pending_read of a root: its latest's (rc %d, "
              "%d, \"%s\")", rc, prc, d.msg);
        free(buf);
        mnn_free(x);
        mnn_free(y);
    }

    /* a checkpoint that is no cut */
    {
        snprintf(dir, sizeof dir, "%s/step-00000005", root);
        int wrc = mnn_ckpt_write(dir, &m, &o, &st, NULL, 1700000000, 0, &d);
        char *buf = NULL;
        size_t len = 7, n = 7;
        uint64_t id = 7;
        float *x = NULL, *y = NULL;
        mnn_manifest_t mf;
        int mrc = mnn_manifest_load(&mf, dir, NULL, &d);
        int nocut = mrc == 0 && mf.cut == 0 && mf.nstages == 0 && mf.pending == 0;
        if (mrc == 0)
            mnn_manifest_free(&mf);
        d.msg[0] = 0;
        int rc = mnn_ckpt_stage_read(dir, 0, "replay-buffer", &buf, &len, &id, &d);
        int prc = mnn_ckpt_pending_read(dir, 6, &x, &y, &n, NULL);
        check(wrc == 0 && nocut && rc == MNN_ESHAPE && !buf && len == 0 && contains(d.msg, dir) &&
                  contains(d.msg, "not a pipeline's cut") && contains(d.msg, "replay-buffer") &&
                  prc == 0 && n == 0 && !x && !y,
              "a checkpoint of mnn_ckpt_write is no cut (cut 0): mnn_ckpt_stage_read says "
              "MNN_ESHAPE naming it, mnn_ckpt_pending_read no records (rc %d, %d, \"%s\")", rc,
              prc, d.msg);
        free(buf);
    }

    /* impossible cuts */
    snprintf(dir, sizeof dir, "%s/step-00000005-c9", root);
    mnn_stage_part_t bad_parts[3];
    float bad_px[NELEM(cut_px)], bad_py[NELEM(cut_py)];
    enum { P_SWAP = 1, P_DUP, P_SLASH, P_EMPTY, P_UPPER, P_HUGE, X_NAN, X_INF, Y_NAN };
    static const struct {
        const char *what;
        uint64_t id;
        uint32_t self;
        const char *self_program;
        size_t pending;
        int nopx, nopy, edit;
    } imp[] = {
        {"cut 0", 0, 3, "sgd-train", 3, 0, 0, 0},
        {"parts out of index order", 9, 3, "sgd-train", 3, 0, 0, P_SWAP},
        {"two parts of index 0", 9, 3, "sgd-train", 3, 0, 0, P_DUP},
        {"a part's program with '/'", 9, 3, "sgd-train", 3, 0, 0, P_SLASH},
        {"a part's program empty", 9, 3, "sgd-train", 3, 0, 0, P_EMPTY},
        {"a part's program in uppercase", 9, 3, "sgd-train", 3, 0, 0, P_UPPER},
        {"a part of MNN_CUT_MAX_PART + 1 bytes", 9, 3, "sgd-train", 3, 0, 0, P_HUGE},
        {"the committing program with '/'", 9, 3, "sgd/train", 3, 0, 0, 0},
        {"the committing program empty", 9, 3, "", 3, 0, 0, 0},
        {"the committing program NULL", 9, 3, NULL, 3, 0, 0, 0},
        {"the committing program with a newline", 9, 3, "sgd\nstep: 9", 3, 0, 0, 0},
        {"the committing program of 32 characters", 9, 3, "abcdefghijklmnopqrstuvwxyz012345",
         3, 0, 0, 0},
        {"pending as many as the batch", 9, 3, "sgd-train", 4, 0, 0, 0},
        {"pending more than the batch", 9, 3, "sgd-train", 5, 0, 0, 0},
        {"pending without features", 9, 3, "sgd-train", 3, 1, 0, 0},
        {"pending without labels", 9, 3, "sgd-train", 3, 0, 1, 0},
        {"a pending feature NaN", 9, 3, "sgd-train", 3, 0, 0, X_NAN},
        {"a pending feature +Inf", 9, 3, "sgd-train", 3, 0, 0, X_INF},
        {"a pending label NaN", 9, 3, "sgd-train", 3, 0, 0, Y_NAN},
        {"the committing stage 64", 9, MNN_CUT_MAX_STAGES, "sgd-train", 3, 0, 0, 0},
    };
    fails_t fi = {0, 0};
    for (size_t i = 0; i < NELEM(imp); i++) {
        memcpy(bad_parts, cut_parts, sizeof bad_parts);
        memcpy(bad_px, cut_px, sizeof bad_px);
        memcpy(bad_py, cut_py, sizeof bad_py);
        switch (imp[i].edit) {
        case P_SWAP:
            bad_parts[0] = cut_parts[1];
            bad_parts[1] = cut_parts[0];
            break;
        case P_DUP: bad_parts[1].index = 0; break;
        case P_SLASH: snprintf(bad_parts[2].program, sizeof bad_parts[2].program, "a/b"); break;
        case P_EMPTY: bad_parts[1].program[0] = 0; break;
        case P_UPPER: snprintf(bad_parts[0].program, sizeof bad_parts[0].program, "Replay"); break;
        case P_HUGE: bad_parts[0].bytes = MNN_CUT_MAX_PART + 1; break;
        case X_NAN: bad_px[7] = NAN; break;
        case X_INF: bad_px[0] = INFINITY; break;
        case Y_NAN: bad_py[1] = NAN; break;
        }
        mnn_cut_ckpt_t cut = {imp[i].id, imp[i].self, imp[i].self_program, bad_parts,
                              imp[i].pending, imp[i].nopx ? NULL : bad_px,
                              imp[i].nopy ? NULL : bad_py};
        d.msg[0] = 0;
        int rc = mnn_ckpt_write_cut(dir, &m, &o, &st, NULL, 1700000000, 0, &cut, &d);
        if (rc != MNN_EINVAL || !d.msg[0] || exists(dir) || tmp_left(root, l, sizeof l)[0]) {
            fail_at(&fi, "%s: rc %d, \"%s\", %s, left: %s", imp[i].what, rc, d.msg,
                    exists(dir) ? "written" : "not written", tmp_left(root, l, sizeof l));
            rm_rf(dir);
        }
    }
    check(fi.bad == 0, "mnn_ckpt_write_cut refuses impossible cuts (cut 0; parts out of order, "
                       "twice, of a program with '/', empty or uppercase, too large; a "
                       "committing program with '/', empty, NULL, a newline, too long; pending "
                       ">= batch, without its data, a NaN or Inf feature, a NaN label; stage 64): "
                       "MNN_EINVAL, nothing written, no .tmp-* left (%zu cases)", NELEM(imp));

    /* the most stages a pipeline has: 63 upstream parts, pending records */
    {
        static mnn_stage_part_t many[MNN_CUT_MAX_STAGES - 1];
        for (uint32_t i = 0; i < NELEM(many); i++) {
            many[i] = (mnn_stage_part_t){i, "", cut_d0 + i, 1 + i};
            snprintf(many[i].program, sizeof many[i].program, "stage%u", (unsigned)i);
        }
        mnn_cut_ckpt_t cut = {77, MNN_CUT_MAX_STAGES - 1, "sgd-train", many, 3, cut_px, cut_py};
        snprintf(dir, sizeof dir, "%s/step-00000005-c77", root);
        int rc = mnn_ckpt_write_cut(dir, &m, &o, &st, NULL, 1700000000, 0, &cut, &d);
        fails_t fmany = {0, 0};
        if (rc == 0)
            cut_read_back(&fmany, dir, &cut);
        check(rc == 0 && fmany.bad == 0,
              "a cut of %d upstream parts (the most) and 3 pending records: written, and "
              "read back (rc %d, \"%s\"; %zu failures)", MNN_CUT_MAX_STAGES - 1, rc, d.msg,
              fmany.bad);
    }

    /* mnn_ckpt_same_cut */
    {
        snprintf(dir, sizeof dir, "%s/step-00000005-c3", root);
        mnn_cut_ckpt_t cut = cut_of(3, 3, 3);
        int rc = mnn_ckpt_same_cut(dir, &m, &o, &st, &cut, &d);
        check(rc == 0, "mnn_ckpt_same_cut of the cut it was written from: 0 (rc %d, \"%s\")",
              rc, d.msg);
        fails_t fs = {0, 0};
        const char *what[] = {"a part's byte changed",  "a part's first byte changed",
                              "another pending label",  "another pending feature",
                              "one pending record fewer", "another cut id",
                              "no cut",                 "another committing program",
                              "one part fewer"};
        for (size_t k = 0; k < NELEM(what); k++) {
            cut = cut_of(3, 3, 3);
            const mnn_cut_ckpt_t *cp = &cut;
            switch (k) {
            case 0: cut_d2[50000] ^= 1; break;
            case 1: cut_d0[0] ^= 0x80; break;
            case 2: cut_py[2] = 0.5f * (cut_py[2] + 1); break;
            case 3: cut_px[17] += 1; break;
            case 4: cut.pending = 2; break;
            case 5: cut.id = 4; break;
            case 6: cp = NULL; break;
            case 7: cut.self_program = "other-train"; break;
            case 8: cut.self = 2; break;
            }
            d.msg[0] = 0;
            rc = mnn_ckpt_same_cut(dir, &m, &o, &st, cp, &d);
            if (rc != MNN_EEXIST || !contains(d.msg, "another training's state"))
                fail_at(&fs, "%s: rc %d, \"%s\"", what[k], rc, d.msg);
            switch (k) {
            case 0: cut_d2[50000] ^= 1; break;
            case 1: cut_d0[0] ^= 0x80; break;
            case 2: cut_py[2] = (float)(2 % 3); break;
            case 3: cut_px[17] -= 1; break;
            }
        }
        cut = cut_of(3, 3, 3);
        rc = mnn_ckpt_same_cut(dir, &m, &o, &st, &cut, &d);
        check(fs.bad == 0 && rc == 0,
              "mnn_ckpt_same_cut: a part's byte, a pending record, the pending count, the cut "
              "id, no cut, the committing program, a part fewer: MNN_EEXIST; restored: 0 "
              "(%zu cases; rc %d)", NELEM(what), rc);
        snprintf(dir, sizeof dir, "%s/step-00000005", root);
        rc = mnn_ckpt_same_cut(dir, &m, &o, &st, &cut, &d);
        int rc2 = mnn_ckpt_same(dir, &m, &o, &st, &d);
        check(rc == MNN_EEXIST && rc2 == 0,
              "a checkpoint that is no cut: not the same as a cut (MNN_EEXIST), the same as "
              "its state (rc %d, %d)", rc, rc2);
        /* a refused write over a cut leaves it as it was */
        snprintf(dir, sizeof dir, "%s/step-00000005-c3", root);
        cut = cut_of(0, 3, 3);
        rc = mnn_ckpt_write_cut(dir, &m, &o, &st, NULL, 1700000001, 1, &cut, &d);
        cut = cut_of(3, 3, 3);
        rc2 = mnn_ckpt_same_cut(dir, &m, &o, &st, &cut, &d);
        check(rc == MNN_EINVAL && rc2 == 0 && !tmp_left(root, l, sizeof l)[0],
              "an impossible cut written with replace over a cut: MNN_EINVAL, the cut there "
              "unchanged (rc %d, %d)", rc, rc2);
    }
    mnn_optim_free(&o);
    mnn_model_free(&m);
    rm_rf(root);
}

/* tmpl with @0, @1, @2 replaced by the fixture parts' hashes, into out */
static const char *with_hashes(const char *tmpl, char *out, size_t size)
{
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 17 < size; p++)
        if (p[0] == '@' && p[1] >= '0' && p[1] <= '2') {
            memcpy(out + o, cut_hex[p[1] - '0'], 16);
            o += 16;
            p++;
        } else
            out[o++] = *p;
    out[o] = 0;
    return out;
}

static void test_ckpt_cut_tamper(void)
{
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    mnn_diag_t d = {""};
    mnn_manifest_t mf;
    char root[128], dir[200], mp[300], fp[300], l[512];
    if (!check(make_trained(&m, &o, &st, MNN_OPT_SGD, MNN_NORM_NONE, 0) == 0,
               "tampered cuts: a model"))
        return;
    cut_fixture();
    const mnn_cut_ckpt_t cut = cut_of(3, 3, 3);
    tpath(root, sizeof root, "cut-tamper");
    mkdir(root, 0755);
    int n = 0;
#define FRESH()                                                                              \
    (snprintf(dir, sizeof dir, "%s/step-00000005-c%d", root, ++n),                           \
     snprintf(mp, sizeof mp, "%s/manifest.yaml", dir),                                       \
     mnn_ckpt_write_cut(dir, &m, &o, &st, NULL, 1700000000, 0, &cut, &d))
#define S0 "  - {index: 0, program: replay-buffer, file: stage-0.replay-buffer, bytes: 1000, xxh3: @0}\n"
#define S1 "  - {index: 1, program: stream-sample, file: stage-1.stream-sample, bytes: 0, xxh3: @1}\n"
#define S2 "  - {index: 2, program: filter_x, file: stage-2.filter_x, bytes: 100000, xxh3: @2}\n"
    /* the helpers: a harmless edit, resealed, loads; the lines edited are
     * the lines written */
    int rc = FRESH(), e = 0;
    char t[1024];
    size_t before_len = 0, after_len = 0;
    char *before = slurp(mp, &before_len), *after;
    e |= edit_line(mp, "  - {index: 0,", with_hashes(S0, t, sizeof t));
    e |= edit_line(mp, "  - {index: 1,", with_hashes(S1, t, sizeof t));
    e |= edit_line(mp, "  - {index: 2,", with_hashes(S2, t, sizeof t));
    e |= edit_line(mp, "cut: ", "cut: {id: 3, stage: 3, program: sgd-train, pending: 3}\n");
    after = slurp(mp, &after_len);
    int same = before && after && before_len == after_len && !memcmp(before, after, after_len);
    free(before);
    free(after);
    e |= edit_line(mp, "tool: ", "tool: somebody else\n") | reseal(dir);
    int lrc = mnn_manifest_load(&mf, dir, NULL, &d);
    if (lrc == 0)
        mnn_manifest_free(&mf);
    if (!check(rc == 0 && e == 0 && same && lrc == 0,
               "a cut's cut and stages lines written again as the tests spell them: the same "
               "bytes; its tool edited and resealed, it loads (rc %d, %d, same %d, %d, \"%s\")",
               rc, e, same, lrc, d.msg))
        goto out;

    static const struct {
        const char *what;
        const char *prefix[4], *repl[4];
        int rc;
        const char *want;
    } eds[] = {
        {"a stage's file ../x", {"  - {index: 0,"},
         {"  - {index: 0, program: replay-buffer, file: ../x, bytes: 1000, xxh3: @0}\n"},
         MNN_EFORMAT, "its file must be stage-0.replay-buffer"},
        {"a stage's file /etc/passwd", {"  - {index: 0,"},
         {"  - {index: 0, program: replay-buffer, file: /etc/passwd, bytes: 1000, xxh3: @0}\n"},
         MNN_EFORMAT, "its file must be stage-0.replay-buffer"},
        {"a stage's file stage-0.other", {"  - {index: 0,"},
         {"  - {index: 0, program: replay-buffer, file: stage-0.other, bytes: 1000, xxh3: @0}\n"},
         MNN_EFORMAT, "its file must be stage-0.replay-buffer"},
        {"a stage's file another stage's", {"  - {index: 0,"},
         {"  - {index: 0, program: replay-buffer, file: stage-2.filter_x, bytes: 100000, "
          "xxh3: @2}\n"},
         MNN_EFORMAT, "its file must be stage-0.replay-buffer"},
        {"a stage's file stage-0.other, listed so in files too",
         {"  - {index: 0,", "  - {name: stage-0.replay-buffer,"},
         {"  - {index: 0, program: replay-buffer, file: stage-0.other, bytes: 1000, xxh3: @0}\n",
          "  - {name: stage-0.other, bytes: 1000, xxh3: @0}\n"},
         MNN_EFORMAT, "its file must be stage-0.replay-buffer"},
        {"a files entry ../x for a stage", {"  - {name: stage-0.replay-buffer,"},
         {"  - {name: ../x, bytes: 1000, xxh3: @0}\n"}, MNN_EFORMAT, "not a plain name"},
        {"stages 0 and 1 swapped", {"  - {index: 1,", "  - {index: 0,"},
         {S0, S1}, MNN_EFORMAT, "stage 1 where stage 0 belongs"},
        {"stage 1 missing", {"  - {index: 1,"}, {""}, MNN_EFORMAT,
         "2 stages listed before stage 3"},
        {"stage 1 missing, its file unlisted", {"  - {index: 1,",
         "  - {name: stage-1.stream-sample,"}, {"", ""}, MNN_EFORMAT,
         "2 stages listed before stage 3"},
        {"stage 0 listed twice", {"  - {index: 1,"}, {S0}, MNN_EFORMAT,
         "stage 0 where stage 1 belongs"},
        {"stage 1 numbered 3", {"  - {index: 1,"},
         {"  - {index: 3, program: stream-sample, file: stage-1.stream-sample, bytes: 0, xxh3: "
          "@1}\n"}, MNN_EFORMAT, "stage 3 where stage 1 belongs"},
        {"a fourth stage", {"  - {index: 2,"},
         {S2 "  - {index: 3, program: evil, file: stage-3.evil, bytes: 0, xxh3: @1}\n"},
         MNN_EFORMAT, "4 stages listed before stage 3"},
        {"a stage's index not a number", {"  - {index: 0,"},
         {"  - {index: x, program: replay-buffer, file: stage-0.replay-buffer, bytes: 1000, "
          "xxh3: @0}\n"}, MNN_EFORMAT, "index"},
        {"a stage without its xxh3", {"  - {index: 0,"},
         {"  - {index: 0, program: replay-buffer, file: stage-0.replay-buffer, bytes: 1000}\n"},
         MNN_EFORMAT, "a stage needs index, program, file, bytes and xxh3"},
        {"a stage's bytes unlike its files entry", {"  - {index: 0,"},
         {"  - {index: 0, program: replay-buffer, file: stage-0.replay-buffer, bytes: 1001, "
          "xxh3: @0}\n"}, MNN_EFORMAT, "same bytes and xxh3"},
        {"a stage's xxh3 unlike its files entry", {"  - {index: 0,"},
         {"  - {index: 0, program: replay-buffer, file: stage-0.replay-buffer, bytes: 1000, "
          "xxh3: @1}\n"}, MNN_EFORMAT, "same bytes and xxh3"},
        {"a stage's program in uppercase", {"  - {index: 0,", "  - {name: stage-0.replay-buffer,"},
         {"  - {index: 0, program: Replay, file: stage-0.Replay, bytes: 1000, xxh3: @0}\n",
          "  - {name: stage-0.Replay, bytes: 1000, xxh3: @0}\n"},
         MNN_EFORMAT, "program 'Replay' is not a plain name"},
        {"a stage's program ../x", {"  - {index: 0,"},
         {"  - {index: 0, program: ../x, file: stage-0.../x, bytes: 1000, xxh3: @0}\n"},
         MNN_EFORMAT, "program '../x' is not a plain name"},
        {"no stages list", {"stages:", "  - {index: 0,", "  - {index: 1,", "  - {index: 2,"},
         {"", "", "", ""}, MNN_EFORMAT, "a cut without its stages list"},
        {"pending 4, the batch", {"cut: "},
         {"cut: {id: 3, stage: 3, program: sgd-train, pending: 4}\n"}, MNN_EFORMAT,
         "below the batch (4)"},
        {"pending 5", {"cut: "}, {"cut: {id: 3, stage: 3, program: sgd-train, pending: 5}\n"},
         MNN_EFORMAT, "below the batch (4)"},
        {"pending -1", {"cut: "}, {"cut: {id: 3, stage: 3, program: sgd-train, pending: -1}\n"},
         MNN_EFORMAT, "pending"},
        {"no pending", {"cut: "}, {"cut: {id: 3, stage: 3, program: sgd-train}\n"},
         MNN_EFORMAT, "pending must be"},
        {"pending 3 without pending.safetensors", {"  - {name: pending.safetensors,"}, {""},
         MNN_EFORMAT, "a cut of 3 pending records without pending.safetensors"},
        {"pending 0 with pending.safetensors", {"cut: "},
         {"cut: {id: 3, stage: 3, program: sgd-train, pending: 0}\n"}, MNN_ECORRUPT,
         "pending.safetensors: "},
        {"pending.safetensors claiming 4 GiB", {"  - {name: pending.safetensors,"},
         {"  - {name: pending.safetensors, bytes: 4294967296, xxh3: @0}\n"}, MNN_ECORRUPT,
         "pending.safetensors: 4294967296 bytes"},
        {"a stage's file claiming 4 GiB", {"  - {index: 2,", "  - {name: stage-2.filter_x,"},
         {"  - {index: 2, program: filter_x, file: stage-2.filter_x, bytes: 4294967296, "
          "xxh3: @2}\n", "  - {name: stage-2.filter_x, bytes: 4294967296, xxh3: @2}\n"},
         MNN_ELIMIT, "stage-2.filter_x: 4294967296 bytes, more than a stage's part may hold"},
        {"a stage's file claiming 2^64 - 1", {"  - {index: 2,", "  - {name: stage-2.filter_x,"},
         {"  - {index: 2, program: filter_x, file: stage-2.filter_x, bytes: "
          "18446744073709551615, xxh3: @2}\n",
          "  - {name: stage-2.filter_x, bytes: 18446744073709551615, xxh3: @2}\n"},
         MNN_ELIMIT, "more than a stage's part may hold"},
        {"files listing stage-3.evil", {"  - {name: stage-2.filter_x,"},
         {"  - {name: stage-2.filter_x, bytes: 100000, xxh3: @2}\n"
          "  - {name: stage-3.evil, bytes: 0, xxh3: @1}\n"},
         MNN_EFORMAT, "lists stage-3.evil"},
        {"cut 0", {"cut: "}, {"cut: {id: 0, stage: 3, program: sgd-train, pending: 3}\n"},
         MNN_EFORMAT, "cut: an id > 0 is required"},
        {"cut -1", {"cut: "}, {"cut: {id: -1, stage: 3, program: sgd-train, pending: 3}\n"},
         MNN_EFORMAT, "cut: an id > 0 is required"},
        {"no cut id", {"cut: "}, {"cut: {stage: 3, program: sgd-train, pending: 3}\n"},
         MNN_EFORMAT, "cut: an id > 0 is required"},
        {"the cut's stage 64", {"cut: "},
         {"cut: {id: 3, stage: 64, program: sgd-train, pending: 3}\n"}, MNN_EFORMAT,
         "a stage below 64"},
        {"the cut's stage 2 with 3 stages", {"cut: "},
         {"cut: {id: 3, stage: 2, program: sgd-train, pending: 3}\n"}, MNN_EFORMAT,
         "3 stages listed before stage 2"},
        {"the cut's program with '/'", {"cut: "},
         {"cut: {id: 3, stage: 3, program: sgd/train, pending: 3}\n"}, MNN_EFORMAT,
         "a program name is required"},
        {"the cut a number", {"cut: "}, {"cut: 3\n"}, MNN_EFORMAT, "cut"},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(eds); i++) {
        rc = FRESH();
        e = 0;
        for (size_t k = 0; k < 4 && eds[i].prefix[k]; k++)
            e |= edit_line(mp, eds[i].prefix[k], with_hashes(eds[i].repl[k], t, sizeof t));
        e |= reseal(dir);
        d.msg[0] = 0;
        lrc = mnn_manifest_load(&mf, dir, NULL, &d);
        if (lrc == 0)
            mnn_manifest_free(&mf);
        if (rc || e || lrc != eds[i].rc || !contains(d.msg, eds[i].want) ||
            !contains(d.msg, "manifest.yaml"))
            fail_at(&f, "%s: rc %d, edits %d, load %d, \"%s\", want %d \"%s\"", eds[i].what, rc,
                    e, lrc, d.msg, eds[i].rc, eds[i].want);
        rm_rf(dir);
    }
    check(f.bad == 0, "a cut's manifest edited and resealed: a stage's file ../x, elsewhere, "
                      "another program's or another stage's, stages swapped, missing, twice, "
                      "renumbered or extra, a stage's bytes or xxh3 unlike its files entry, "
                      "bad program names, no stages, pending >= batch or missing, pending "
                      "without its file or a file without pending, 4 GiB files, an unknown "
                      "stage file, cut 0, a bad cut stage or program: each refused by "
                      "mnn_manifest_load with a message (%zu cases)", NELEM(eds));

    /* a stage another program's, consistently so: it loads, and is that program's */
    {
        rc = FRESH();
        char from[300], to[300], *buf = NULL;
        snprintf(from, sizeof from, "%s/stage-0.replay-buffer", dir);
        snprintf(to, sizeof to, "%s/stage-0.other", dir);
        e = rename(from, to);
        e |= edit_line(mp, "  - {index: 0,", with_hashes("  - {index: 0, program: other, file: "
                                                         "stage-0.other, bytes: 1000, xxh3: @0}\n",
                                                         t, sizeof t));
        e |= edit_line(mp, "  - {name: stage-0.replay-buffer,",
                       with_hashes("  - {name: stage-0.other, bytes: 1000, xxh3: @0}\n", t,
                                   sizeof t));
        e |= reseal(dir);
        size_t len = 0;
        uint64_t id = 0;
        int rc1 = mnn_ckpt_stage_read(dir, 0, "replay-buffer", &buf, &len, &id, &d);
        int ok1 = rc1 == MNN_ESHAPE && contains(d.msg, "is other, not replay-buffer");
        free(buf);
        buf = NULL;
        int rc2 = mnn_ckpt_stage_read(dir, 0, "other", &buf, &len, &id, &d);
        check(rc == 0 && e == 0 && ok1 && rc2 == 0 && len == sizeof cut_d0 &&
                  !memcmp(buf, cut_d0, len),
              "a cut whose stage 0 is, consistently, program 'other': replay-buffer is refused "
              "(MNN_ESHAPE), 'other' gets the bytes (rc %d, %d, \"%s\")", rc1, rc2, d.msg);
        free(buf);
    }

    /* the files themselves */
    static const struct {
        const char *what, *file;
        int how; /* 0 a byte flipped, 1 removed, 2 truncated, 3 a link to a copy, 4 a directory */
        const char *want;
    } dam[] = {
        {"stage 0's file with a byte flipped", "stage-0.replay-buffer", 0, "hash does not match"},
        {"stage 2's file with a byte flipped", "stage-2.filter_x", 0, "hash does not match"},
        {"stage 0's file removed", "stage-0.replay-buffer", 1, "missing"},
        {"stage 1's file (0 bytes) removed", "stage-1.stream-sample", 1, "missing"},
        {"stage 0's file truncated", "stage-0.replay-buffer", 2, "size does not match"},
        {"stage 0's file a link to a copy", "stage-0.replay-buffer", 3, "not a regular file"},
        {"stage 1's file a directory", "stage-1.stream-sample", 4, "not a regular file"},
    };
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(dam); i++) {
        rc = FRESH();
        snprintf(fp, sizeof fp, "%s/%s", dir, dam[i].file);
        uint32_t index = (uint32_t)(dam[i].file[6] - '0');
        const char *prog = strchr(dam[i].file, '.') + 1;
        e = 0;
        if (dam[i].how == 0)
            flip_byte(fp, 500);
        else if (dam[i].how == 1 || dam[i].how == 4)
            e = unlink(fp) | (dam[i].how == 4 ? mkdir(fp, 0755) : 0);
        else if (dam[i].how == 2)
            e = truncate(fp, 999);
        else {
            char copy[300];
            snprintf(copy, sizeof copy, "%s/copy-%zu", root, i);
            e = rename(fp, copy) | symlink(copy, fp);
        }
        char *buf = NULL;
        size_t len = 0;
        uint64_t id = 0;
        d.msg[0] = 0;
        int src = mnn_ckpt_stage_read(dir, index, prog, &buf, &len, &id, &d);
        int ok = src == MNN_ECORRUPT && !buf && contains(d.msg, fp) && contains(d.msg, dam[i].want);
        free(buf);
        char msg[sizeof d.msg];
        snprintf(msg, sizeof msg, "%s", d.msg);
        lrc = mnn_manifest_load(&mf, dir, NULL, &d);
        int vrc = lrc == 0 ? mnn_manifest_verify_dir(&mf, dir, &d) : lrc;
        if (lrc == 0)
            mnn_manifest_free(&mf);
        ok = ok && vrc == MNN_ECORRUPT && contains(d.msg, fp) && contains(d.msg, dam[i].want);
        int src2 = mnn_ckpt_same_cut(dir, &m, &o, &st, &cut, NULL);
        if (rc || e || !ok || src2 != MNN_ECORRUPT)
            fail_at(&f, "%s: stage_read %d \"%s\"; verify_dir %d \"%s\"; same_cut %d", dam[i].what,
                    src, msg, vrc, d.msg, src2);
        rm_rf(dir);
    }
    check(f.bad == 0, "a cut's stage file with a byte flipped, removed, truncated, a link to a "
                      "copy or a directory: mnn_ckpt_stage_read and mnn_manifest_verify_dir "
                      "say MNN_ECORRUPT naming the file, mnn_ckpt_same_cut refuses (%zu cases)",
          NELEM(dam));

    /* the pending records damaged, or fewer than the file holds */
    {
        float *x = NULL, *y = NULL;
        size_t np = 0;
        rc = FRESH();
        snprintf(fp, sizeof fp, "%s/pending.safetensors", dir);
        flip_byte(fp, -5);
        d.msg[0] = 0;
        int prc = mnn_ckpt_pending_read(dir, 6, &x, &y, &np, &d);
        check(rc == 0 && prc == MNN_ECORRUPT && !x && !y && np == 0 && contains(d.msg, fp) &&
                  contains(d.msg, "hash does not match"),
              "pending.safetensors with a byte flipped: MNN_ECORRUPT naming it (rc %d, \"%s\")",
              prc, d.msg);
        rc = FRESH();
        e = edit_line(mp, "cut: ", "cut: {id: 3, stage: 3, program: sgd-train, pending: 2}\n") |
            reseal(dir);
        d.msg[0] = 0;
        prc = mnn_ckpt_pending_read(dir, 6, &x, &y, &np, &d);
        check(rc == 0 && e == 0 && prc < 0 && !x && !y && np == 0 &&
                  contains(d.msg, "pending.safetensors"),
              "a cut's pending edited to 2 (resealed) while its file holds 3: "
              "mnn_ckpt_pending_read refuses (rc %d, \"%s\")", prc, d.msg);
        /* a NaN feature in the file, rehashed */
        rc = FRESH();
        snprintf(fp, sizeof fp, "%s/pending.safetensors", dir);
        size_t len = 0;
        char *buf = slurp(fp, &len);
        e = -1;
        if (buf && len > 40) {
            /* x precedes y in the data: x's last feature sits 3 labels before the end */
            const float v = NAN;
            memcpy(buf + len - 16, &v, 4);
            e = write_bytes(fp, buf, len) | set_entry(dir, "pending.safetensors", NULL);
        }
        free(buf);
        d.msg[0] = 0;
        prc = mnn_ckpt_pending_read(dir, 6, &x, &y, &np, &d);
        check(rc == 0 && e == 0 && prc == MNN_ECORRUPT && !x && !y && np == 0 &&
                  contains(d.msg, "is not finite"),
              "a NaN among the pending features (rehashed): MNN_ECORRUPT (rc %d, \"%s\")", prc,
              d.msg);
    }

    /* files nobody listed: not read, not trusted, not copied */
    {
        mnn_cut_ckpt_t c1 = cut_of(3, 1, 0);
        snprintf(dir, sizeof dir, "%s/step-00000005-c100", root);
        rc = mnn_ckpt_write_cut(dir, &m, &o, &st, NULL, 1700000000, 0, &c1, &d);
        char src[300];
        rc |= FRESH(); /* a cut with pending records, whose file is put into the other */
        snprintf(src, sizeof src, "%s/pending.safetensors", dir);
        size_t len = 0;
        char *pend = slurp(src, &len);
        snprintf(dir, sizeof dir, "%s/step-00000005-c100", root);
        e = !pend;
        snprintf(fp, sizeof fp, "%s/pending.safetensors", dir);
        e |= pend ? write_bytes(fp, pend, len) : -1;
        snprintf(fp, sizeof fp, "%s/stage-1.evil", dir);
        e |= write_bytes(fp, "evil", 4);
        snprintf(fp, sizeof fp, "%s/stage-0.replay-buffer.orig", dir);
        e |= write_bytes(fp, "orig", 4);
        free(pend);
        lrc = mnn_manifest_load(&mf, dir, NULL, &d);
        int vrc = -1;
        size_t nf = 0;
        if (lrc == 0) {
            nf = mf.nfiles;
            vrc = mnn_manifest_verify_dir(&mf, dir, &d);
            mnn_manifest_free(&mf);
        }
        float *x = NULL, *y = NULL;
        size_t np = 9;
        int prc = mnn_ckpt_pending_read(dir, 6, &x, &y, &np, &d);
        char *buf = NULL;
        size_t blen = 0;
        uint64_t id = 0;
        int src1 = mnn_ckpt_stage_read(dir, 1, "evil", &buf, &blen, &id, &d);
        free(buf);
        buf = NULL;
        int src0 = mnn_ckpt_stage_read(dir, 0, "replay-buffer", &buf, &blen, &id, &d);
        int part_ok = src0 == 0 && blen == sizeof cut_d0 && !memcmp(buf, cut_d0, blen);
        free(buf);
        char dst[300];
        snprintf(dst, sizeof dst, "%s/copied", root);
        int crc = mnn_ckpt_copy(dir, dst, &d);
        check(rc == 0 && e == 0 && lrc == 0 && nf == 4 && vrc == 0 && prc == 0 && np == 0 &&
                  !x && !y && src1 == MNN_ESHAPE && part_ok && crc == 0 &&
                  !strcmp(dir_list(dst, l, sizeof l), "manifest.yaml model.safetensors "
                          "optimizer.safetensors stage-0.replay-buffer state.yaml"),
              "a cut (1 stage, pending 0) given an unlisted pending.safetensors, stage-1.evil "
              "and a stray file: none is read (no pending records, stage 1 refused, stage 0 "
              "its listed bytes) or copied (rc %d, %d, %d, %d, %d, %d; copy: %s)", lrc, vrc, prc,
              src1, src0, crc, l);
    }
#undef S0
#undef S1
#undef S2
#undef FRESH
out:
    mnn_optim_free(&o);
    mnn_model_free(&m);
    rm_rf(root);
}

/* ---- pipeline cuts: names and roots ---------------------------------------- */

static void test_ckpt_cut_names(void)
{
    static const struct {
        uint64_t step, cut;
        const char *name;
    } names[] = {
        {12, 0, "step-00000012"},
        {12, 3, "step-00000012-c3"},
        {0, 1, "step-00000000-c1"},
        {12, 10, "step-00000012-c10"},
        {123456789, 0, "step-123456789"},
        {UINT64_MAX, UINT64_MAX, "step-18446744073709551615-c18446744073709551615"},
    };
    fails_t f = {0, 0};
    for (size_t i = 0; i < NELEM(names); i++) {
        char buf[64];
        uint64_t s = 99, c = 99;
        mnn_ckpt_cut_name(buf, sizeof buf, names[i].step, names[i].cut);
        int rc = mnn_ckpt_name_parse(names[i].name, &s, &c);
        if (strcmp(buf, names[i].name) || rc != 0 || s != names[i].step || c != names[i].cut)
            fail_at(&f, "%s: written %s, parsed rc %d, step %llu, cut %llu", names[i].name, buf,
                    rc, (unsigned long long)s, (unsigned long long)c);
    }
    check(f.bad == 0, "mnn_ckpt_cut_name and mnn_ckpt_name_parse: step-N and step-N-cID both "
                      "ways (%zu names)", NELEM(names));
    static const char *const refused[] = {
        "step-12", "step-0000012", "step-000000012", "step-00000012-c0", "step-00000012-c03",
        "step-00000012-x3", "step-00000012-C3", "step-00000012-c", "step-00000012-",
        "step-00000012-c3-c4", "step-00000012-c3-", "step-00000012x", "step-00000012-c3x",
        "step-00000012 ", "step-00000012-c3 ", "step-00000012-c+3", "step-00000012-c-3",
        "step-+0000012", "step--00000012", "step-", "step", "", "Step-00000012",
        "latest", ".tmp-step-00000012", "step-00000012/", "step-00000012-c3/",
        "step-00000012-c18446744073709551616", "step-18446744073709551616",
        "step-00000012--c3", "step-00000012-cc3", " step-00000012",
    };
    f = (fails_t){0, 0};
    for (size_t i = 0; i < NELEM(refused); i++) {
        uint64_t s, c;
        int rc = mnn_ckpt_name_parse(refused[i], &s, &c);
        if (rc != -1)
            fail_at(&f, "'%s': rc %d", refused[i], rc);
    }
    check(f.bad == 0, "mnn_ckpt_name_parse refuses every other spelling: step-12, -c0, -c03, "
                      "-x3, -c, -c3-c4, trailing junk, signs, overflow (%zu names)",
          NELEM(refused));

    /* a root of steps and cuts: ordered by step, then cut (as numbers) */
    char root[128], p[256], l[512];
    mnn_diag_t d = {""};
    tpath(root, sizeof root, "cut-prune");
    int setup = mkdir(root, 0755);
    static const char *const dirs[] = {
        "step-00000004",    "step-00000005-c9", "step-00000006", "step-00000006-c1",
        "step-00000006-c2", "step-00000006-c10",
        /* not names written here: never counted, never removed */
        "step-00000006-c02", "step-00000009-c0", "step-9",
    };
    for (size_t i = 0; i < NELEM(dirs); i++) {
        snprintf(p, sizeof p, "%s/%s", root, dirs[i]);
        setup |= mkdir(p, 0755);
        snprintf(p, sizeof p, "%s/%s/manifest.yaml", root, dirs[i]);
        setup |= write_bytes(p, "m", 1);
    }
    setup |= mnn_ckpt_set_latest(root, "step-00000005-c9", &d);
    uint64_t newest = 0;
    int rc = mnn_ckpt_root_newest(root, &newest, &d);
    check(setup == 0 && rc == 1 && newest == 6,
          "mnn_ckpt_root_newest of a root of steps and cuts: step 6, not the unwritten "
          "spellings step-00000009-c0 and step-9 (rc %d, %llu)", rc, (unsigned long long)newest);
    size_t removed = 0;
    rc = mnn_ckpt_prune(root, 2, &removed, &d);
    check(rc == 0 && removed == 3 &&
              !strcmp(dir_list(root, l, sizeof l), "latest step-00000005-c9 step-00000006-c02 "
                      "step-00000006-c10 step-00000006-c2 step-00000009-c0 step-9"),
          "mnn_ckpt_prune keep 2: step-00000006-c10 and -c2 (cut 10 after cut 2) stay, and "
          "step-00000005-c9 that latest names; step-00000004, step-00000006 and -c1 go; other "
          "spellings stay (rc %d, removed %zu, left: %s)", rc, removed, l);
    rc = mnn_ckpt_prune(root, 1, &removed, &d);
    check(rc == 0 && removed == 1 &&
              !strcmp(dir_list(root, l, sizeof l), "latest step-00000005-c9 step-00000006-c02 "
                      "step-00000006-c10 step-00000009-c0 step-9"),
          "mnn_ckpt_prune keep 1: the newest (step-00000006-c10) and latest's stay (rc %d, "
          "removed %zu, left: %s)", rc, removed, l);
    int lrc = mnn_ckpt_set_latest(root, "step-00000006-c10", &d);
    rc = mnn_ckpt_prune(root, 1, &removed, &d);
    check(lrc == 0 && rc == 0 && removed == 1 &&
              !strcmp(dir_list(root, l, sizeof l), "latest step-00000006-c02 step-00000006-c10 "
                      "step-00000009-c0 step-9"),
          "mnn_ckpt_prune keep 1 with latest the newest: step-00000005-c9 goes, older than "
          "step 6's cuts (rc %d, removed %zu, left: %s)", rc, removed, l);
    /* step-N is older than step-N-c1; step-N-c9 older than step-(N+1) */
    rm_rf(root);
    setup = mkdir(root, 0755);
    static const char *const two[][2] = {
        {"step-00000007", "step-00000007-c1"},
        {"step-00000007-c9", "step-00000008"},
        {"step-00000007-c2", "step-00000007-c11"},
        {"step-00000099", "step-00000100-c1"},
    };
    fails_t fp = {0, 0};
    for (size_t i = 0; i < NELEM(two); i++) {
        for (int k = 1; k >= 0; k--) {
            snprintf(p, sizeof p, "%s/%s", root, two[i][k]);
            setup |= mkdir(p, 0755);
        }
        setup |= mnn_ckpt_set_latest(root, two[i][1], &d);
        rc = mnn_ckpt_prune(root, 1, &removed, &d);
        char want[128];
        snprintf(want, sizeof want, "latest %s", two[i][1]);
        if (setup || rc || removed != 1 || strcmp(dir_list(root, l, sizeof l), want))
            fail_at(&fp, "%s and %s: rc %d, removed %zu, left: %s", two[i][0], two[i][1], rc,
                    removed, l);
        snprintf(p, sizeof p, "%s/%s", root, two[i][1]);
        rm_rf(p);
    }
    check(fp.bad == 0, "mnn_ckpt_prune keep 1 of two: step-N before step-N-c1, step-N-c9 "
                       "before step-(N+1), -c2 before -c11 (%zu pairs)", NELEM(two));
    rm_rf(root);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mnn-unit-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 0;
    }
    test_sizes();
    test_kernels();
    test_fd_dense();
    test_fd_act();
    test_fd_losses();
    test_fd_model();
    test_softmax();
    test_fd_exits();
    test_confidence();
    test_temperature();
    test_calib();
    test_ensemble();
    test_predict_exit();
    test_optim();
    test_opt_names();
    test_rng();
    test_parse_numbers();
    test_parse_exact();
    test_records();
    test_linereader();
    test_fs_read();
    test_fs_write_all();
    test_fs_remove();
    test_fs_rename();
    test_fs_lock();
    test_fs_lock_file();
    test_fs_atomic();
    test_fs_atomic_steps();
    test_hash();
    test_spec();
    test_merge();
    test_train_memory();
    test_yaml_limits();
    test_spec_limits();
    test_safetensors();
    test_st_stream();
    test_st_limits();
    test_ckpt();
    test_state_check();
    test_ckpt_write_refuses();
    test_ckpt_tamper();
    test_state_parse();
    test_ckpt_root();
    test_ckpt_prune();
    test_ckpt_open();
    test_ckpt_same();
    test_cutline();
    test_cut_part();
    test_cut_part_file();
    test_ckpt_cut();
    test_ckpt_cut_tamper();
    test_ckpt_cut_names();
    test_reservoir();
    test_replay();
    test_bernoulli();
    test_topk();
    test_wres();
    test_decay();
    test_sample_state();
    if (nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        diag("could not remove %s", tmpdir);
    if (n_failed)
        diag("%u of %u checks failed", n_failed, n_tests);
    printf("1..%u\n", n_tests);
    return 0;
}
