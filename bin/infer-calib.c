/* infer-calib.c - passes over a whole labelled stream before answering:
 * --calibrate (the logits of every record, the temperature the library
 * fits to them, a new checkpoint with it) and --forward-fraction (the local
 * confidence of every record of --calibration FILE, and the quantile that
 * forwards the fraction asked for). */
#include <config.h>

#include "infer.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void (*scan_fn)(void *ctx, const feed_batch_t *b);

/* Reads every record of fd in batches of fo; fn sees each batch. */
static void scan(int fd, const feed_opts_t *fo, scan_fn fn, void *ctx)
{
    feed_t *feed = feed_start(fd, fo);
    if (!feed)
        die(EXIT_RUNTIME, "cannot start the reader: %s", strerror(errno ? errno : ENOMEM));
    for (;;) {
        feed_batch_t *b = feed_next(feed, NULL);
        if (b->error)
            die(EXIT_RUNTIME, "%s", b->msg);
        fn(ctx, b);
        int end = b->end;
        feed_release(feed, b);
        if (end)
            break;
    }
    feed_stop_report(feed);
}

typedef struct {
    models_t *ms;
    float *out;     /* (batch, K) */
    uint8_t *stage; /* (batch) */
    float *v;       /* the confidences */
    size_t n, cap;
} crits_t;

/* The local confidence of each record, by the routing criterion. */
static void collect_crit(void *ctx, const feed_batch_t *b)
{
    crits_t *c = ctx;
    const size_t K = c->ms->m[0].spec.outputs;
    int rc = models_predict(c->ms, b, 0, c->out, c->stage);
    if (rc < 0)
        die(EXIT_RUNTIME, "inference failed: %s", mnn_strerror(rc));
    if (c->n + b->n > c->cap) {
        c->cap = grow_cap(c->cap, c->n + b->n);
        c->v = xrealloc(c->v, c->cap, sizeof *c->v);
    }
    for (size_t i = 0; i < b->n; i++)
        c->v[c->n++] = mnn_confidence(c->out + i * K, K, c->ms->e.crit);
}

/* The threshold that forwards a fraction F of the calibration records. */
float threshold_for_fraction(const char *file, double F, models_t *ms, const feed_opts_t *fo,
                             float *out, uint8_t *stage, int verbose)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(EXIT_RUNTIME, "%s: %s", file, strerror(errno));
    crits_t c = {.ms = ms, .out = out, .stage = stage};
    feed_opts_t cfo = *fo;
    cfo.name = file;
    cfo.eager = 0;
    cfo.keep_comments = cfo.keep_lines = 0;
    scan(fd, &cfo, collect_crit, &c);
    close(fd);
    if (c.n == 0)
        die(EXIT_RUNTIME, "%s: no records to choose the threshold from", file);
    qsort(c.v, c.n, sizeof *c.v, cmp_float);
    size_t k = (size_t)llround(F * (double)c.n);
    /* forwarded: confidence < t.  Ties at the quantile stay local. */
    float t = k == 0 ? -INFINITY : k >= c.n ? INFINITY : c.v[k];
    size_t below = 0;
    while (below < c.n && c.v[below] < t)
        below++;
    if (verbose)
        warnx_("--forward-fraction %g: threshold %.6g (%s) forwards %zu of the %zu records "
               "of %s",
               F, (double)t, mnn_crit_name(ms->e.crit), below, c.n, file);
    free(c.v);
    return t;
}

typedef struct {
    mnn_model_t *m;
    float *z;   /* (n, K) raw logits */
    int32_t *y; /* (n) labels */
    size_t n, cap;
} logits_t;

static void collect_logits(void *ctx, const feed_batch_t *b)
{
    logits_t *l = ctx;
    const size_t K = l->m->spec.outputs;
    if (l->n + b->n > l->cap) {
        l->cap = grow_cap(l->cap, l->n + b->n);
        l->z = xrealloc(l->z, l->cap * K, sizeof *l->z);
        l->y = xrealloc(l->y, l->cap, sizeof *l->y);
    }
    int rc = mnn_model_logits(l->m, b->x, b->n, l->z + l->n * K);
    if (rc < 0)
        die(EXIT_RUNTIME, "inference failed: %s", mnn_strerror(rc));
    for (size_t i = 0; i < b->n; i++)
        l->y[l->n + i] = (int32_t)b->y[i];
    l->n += b->n;
}

void calibrate(const char *src_arg, const char *outdir, size_t batch, int skip, int quiet)
{
    const int64_t created = cli_created();
    mnn_ckpt_t *ck = cli_ckpt_open(src_arg, NULL, 0);
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    mnn_diag_t d;
    if (mnn_ckpt_load(ck->dir, &m, &o, &st, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    /* the lineage goes on: a calibrated node keeps its round's base */
    mnn_manifest_child_base(&ck->mf, &st.base);
    /* the parent: the checkpoint directory, or the archive it came from */
    char parent[PATH_MAX];
    const char *from = ck->archive ? ck->src : ck->dir;
    if (!realpath(from, parent))
        snprintf(parent, sizeof parent, "%s", from);
    cli_ckpt_close(ck);
    const size_t C = m.spec.input, K = m.spec.outputs;
    if (m.spec.loss != MNN_LOSS_XENT)
        die(EXIT_USAGE, "--calibrate: %s is a regression model; a temperature needs classes",
            src_arg);
    if (mnn_model_reserve(&m, batch) < 0)
        die(EXIT_RUNTIME, "out of memory");
    feed_opts_t fo = {.name = "stdin", .batch = batch, .skip_errors = skip};
    fo.fmt.nfeat = C;
    fo.fmt.has_label = 1;
    fo.fmt.classes = K;
    logits_t lg = {.m = &m};
    scan(STDIN_FILENO, &fo, collect_logits, &lg);
    float *z = lg.z;
    int32_t *y = lg.y;
    const size_t N = lg.n;
    if (N == 0)
        die(EXIT_RUNTIME, "stdin: no records to calibrate on");
    const double T0 = m.spec.temperature, T = mnn_temp_fit(z, y, N, K);
    double nll0 = mnn_temp_nll(z, y, N, K, T0) / (double)N;
    double nll1 = mnn_temp_nll(z, y, N, K, T) / (double)N;
    m.spec.temperature = (float)T;
    if (mnn_ckpt_write(outdir, &m, &o, &st, parent, created, 0, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    if (!quiet)
        warnx_("calibrate: %zu records, temperature %.6g (was %.6g): NLL %.6f -> %.6f, "
               "ECE %.4f -> %.4f",
               N, T, T0, nll0, nll1, mnn_temp_ece(z, y, N, K, T0),
               mnn_temp_ece(z, y, N, K, T));
    printf("%s\n", outdir);
    free(z);
    free(y);
    mnn_optim_free(&o);
    mnn_model_free(&m);
}

