/* infer - predictions for the records on stdin, one output line per input
 * record, in order.  '#' lines pass through unchanged.
 *
 * The local answer comes from one model, from a model's early exits, or from
 * an ensemble (averaged, or --anytime: member after member until the running
 * average is confident).  With --forward the records whose local answer is
 * not confident enough go to a co-process (forward.c), and each output line
 * says which tier answered.  --eval scores the labels; --calibrate fits a
 * softmax temperature and writes it into a new checkpoint. */
#include <config.h>

#include "cli.h"
#include "feed.h"
#include "forward.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_MODELS 16
#define ECE_BINS 15
#define MAX_STAGES 32
#define FWD_MARK_EVERY 64 /* forwarded records per marker, at most */

static noreturn void help(void)
{
    printf(
        "Usage: %s -m CKPT [-m CKPT]... [OPTION]... < RECORDS\n"
        "Predict the records read from stdin.  One line is written per input\n"
        "record, in order: 'pred,confidence' for a classifier (confidence = the\n"
        "largest class probability), 'pred,confidence,tier' with --forward, the\n"
        "predicted value for a regression model.  '#' lines are copied through.\n"
        "\n"
        "Models:\n"
        "  -m, --model CKPT       checkpoint: a directory (or a root with 'latest'), an\n"
        "                         archive (.tar.zst), or a directory ckpt-ship received\n"
        "                         into; several make an ensemble\n"
        "      --weights W,W,...  ensemble weights (default equal)\n"
        "      --anytime          ask the ensemble's members in order and stop once\n"
        "                         the running average is confident (--exit-threshold)\n"
        "      --exit-threshold T stop at the first early exit (spec 'exits:') or, with\n"
        "                         --anytime, the first member whose answer reaches T\n"
        "      --criterion C      confidence measure: maxprob (default), margin\n"
        "                         (top two probabilities apart) or entropy (1 - H/log K)\n"
        "\n"
        "Tiers:\n"
        "  -f, --forward CMD      start CMD (with sh -c) once and send it the records\n"
        "                         whose local confidence is below the threshold; it\n"
        "                         answers one line per record ('pred,confidence' or\n"
        "                         the probabilities), e.g. 'ssh cloud infer -m big'\n"
        "      --threshold T      forward when the confidence is below T\n"
        "      --forward-fraction F  choose T so that a fraction F of the records of\n"
        "                         --calibration FILE would be forwarded\n"
        "      --calibration FILE records to choose that threshold from\n"
        "      --window N         forwarded records in flight, at most (default 256);\n"
        "                         beyond it the local answer is kept (fallback:shed)\n"
        "      --deadline MS      wait at most MS for a remote answer, then keep the\n"
        "                         local one (fallback:timeout; default 1000); counted\n"
        "                         from when CMD is up (its first line)\n"
        "      --start-timeout SEC  how long CMD may take to come up (ssh connecting,\n"
        "                         a model loading) while records wait (default 10)\n"
        "\n"
        "Evaluation and calibration:\n"
        "      --eval             score the labels: accuracy, per-class accuracy,\n"
        "                         confusion matrix, calibration error, tiers, latency\n"
        "                         and throughput on stderr (stdout unchanged)\n"
        "      --stats-json FILE  with --eval: the same figures as JSON\n"
        "      --coverage-curve FILE  with --eval: accuracy against the fraction\n"
        "                         forwarded, as TSV\n"
        "      --calibrate        fit a softmax temperature on the labelled records\n"
        "                         (minimum NLL) and write a new checkpoint (-o DIR)\n"
        "  -o, --output DIR       the checkpoint --calibrate writes\n"
        "\n"
        "Input and output:\n"
        "      --proba            print all class probabilities instead\n"
        "      --no-label         records carry no label: every field is a feature\n"
        "      --line-buffered    answer each record as soon as it arrives (the\n"
        "                         default when stdout is a terminal)\n"
        "      --batch N          records per batch otherwise (default 256)\n"
        "      --threads N        OpenBLAS threads (default: OPENBLAS_NUM_THREADS)\n"
        "      --on-error=MODE    fail (default) or skip bad records (no output line\n"
        "                         for them), counting them\n"
        "  -q, --quiet            no --eval report; only errors on stderr\n"
        "  -v, --verbose          more detail on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "SIGHUP reloads the models between batches.  A '#!flush' input line makes\n"
        "infer answer the records before it at once.\n"
        "Exit status: 0 success, 1 data or runtime error, 2 usage error.\n"
        "See infer(1) and mini-nn(7).\n",
        prog);
    out_close();
    exit(EXIT_OK);
}


/* ---- models ---------------------------------------------------------------- */

typedef struct {
    size_t n;
    const char *path[MAX_MODELS];
    mnn_model_t m[MAX_MODELS];
    float w[MAX_MODELS]; /* weights, summing to 1 */
} models_t;

typedef struct {
    int anytime;
    int exits;      /* use the single model's exit heads */
    float exit_t;
    mnn_crit_t crit;
    size_t batch;
    float *tmp, *xsub, *pbuf;
    size_t *idx;
} local_t;

static void models_free(models_t *ms)
{
    for (size_t j = 0; j < ms->n; j++)
        mnn_model_free(&ms->m[j]);
}

/* Loads every model; all must agree on inputs and outputs. */
static int models_load(models_t *ms, const float *w, size_t batch, char *err, size_t esize)
{
    const size_t n = ms->n;
    double sum = 0;
    for (size_t j = 0; j < n; j++)
        sum += w ? w[j] : 1;
    for (size_t j = 0; j < n; j++) {
        mnn_diag_t d;
        mnn_ckpt_t ck;
        int rc = mnn_ckpt_open(&ck, ms->path[j], NULL, 0, &d);
        if (rc == 0) {
            rc = mnn_ckpt_load(ck.dir, &ms->m[j], NULL, NULL, &d);
            mnn_ckpt_close(&ck);
        }
        if (rc < 0) {
            snprintf(err, esize, "%s", d.msg);
            ms->n = j;
            models_free(ms);
            ms->n = n;
            return -1;
        }
        ms->w[j] = (float)((w ? w[j] : 1) / sum);
        const mnn_spec_t *a = &ms->m[0].spec, *b = &ms->m[j].spec;
        if (b->input != a->input || b->outputs != a->outputs || b->loss != a->loss) {
            snprintf(err, esize, "%s: %zu inputs and %zu %s, but %s has %zu and %zu",
                     ms->path[j], b->input, b->outputs,
                     b->loss == MNN_LOSS_XENT ? "classes" : "outputs", ms->path[0], a->input,
                     a->outputs);
            ms->n = j + 1;
            models_free(ms);
            ms->n = n;
            return -1;
        }
        if (mnn_model_reserve(&ms->m[j], batch) < 0) {
            snprintf(err, esize, "out of memory");
            ms->n = j + 1;
            models_free(ms);
            ms->n = n;
            return -1;
        }
    }
    return 0;
}

/* Ensemble members in order, each on the records still undecided. */
static int predict_anytime(models_t *ms, local_t *L, const float *x, size_t B, float *out,
                           uint8_t *stage)
{
    const size_t C = ms->m[0].spec.input, K = ms->m[0].spec.outputs;
    size_t nact = B;
    double wsum = 0;
    memset(out, 0, B * K * sizeof(float));
    for (size_t i = 0; i < B; i++)
        L->idx[i] = i;
    for (size_t j = 0; j < ms->n && nact; j++) {
        const float *xs = x;
        if (nact < B) {
            for (size_t a = 0; a < nact; a++)
                memcpy(L->xsub + a * C, x + L->idx[a] * C, C * sizeof(float));
            xs = L->xsub;
        }
        int rc = mnn_model_predict(&ms->m[j], xs, nact, L->tmp);
        if (rc < 0)
            return rc;
        wsum += ms->w[j];
        size_t keep = 0;
        for (size_t a = 0; a < nact; a++) {
            size_t r = L->idx[a];
            float *o = out + r * K;
            for (size_t k = 0; k < K; k++) {
                o[k] += ms->w[j] * L->tmp[a * K + k];
                L->pbuf[k] = (float)(o[k] / wsum);
            }
            if (j + 1 == ms->n || mnn_confidence(L->pbuf, K, L->crit) >= L->exit_t) {
                memcpy(o, L->pbuf, K * sizeof(float));
                stage[r] = (uint8_t)j;
            } else
                L->idx[keep++] = r;
        }
        nact = keep;
    }
    return 0;
}

static int predict_batch(models_t *ms, local_t *L, const float *x, size_t B, float *out,
                         uint8_t *stage)
{
    const size_t K = ms->m[0].spec.outputs;
    if (ms->n == 1 && L->exits)
        return mnn_model_predict_exit(&ms->m[0], x, B, out, L->exit_t, L->crit, stage);
    memset(stage, 0, B);
    if (ms->n == 1)
        return mnn_model_predict(&ms->m[0], x, B, out);
    if (L->anytime)
        return predict_anytime(ms, L, x, B, out, stage);
    memset(out, 0, B * K * sizeof(float));
    for (size_t j = 0; j < ms->n; j++) {
        int rc = mnn_model_predict(&ms->m[j], x, B, L->tmp);
        if (rc < 0)
            return rc;
        for (size_t i = 0; i < B * K; i++)
            out[i] += ms->w[j] * L->tmp[i];
    }
    memset(stage, (int)(ms->n - 1), B);
    return 0;
}

/* The last digits of a BLAS product depend on the shape it is given and on
 * a row's place in it.  So that the output depends on the input alone and
 * not on when it arrives, batches are full (but the last, or one a
 * '#!flush' line ends) unless line-buffered, and then each record is
 * computed alone. */
static int predict(models_t *ms, local_t *L, const feed_batch_t *b, int linebuf, float *out,
                   uint8_t *stage)
{
    const size_t C = ms->m[0].spec.input, K = ms->m[0].spec.outputs;
    if (!linebuf)
        return predict_batch(ms, L, b->x, b->n, out, stage);
    for (size_t i = 0; i < b->n; i++) {
        int rc = predict_batch(ms, L, b->x + i * C, 1, out + i * K, stage + i);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static size_t argmax(const float *p, size_t K)
{
    size_t best = 0;
    for (size_t k = 1; k < K; k++)
        if (p[k] > p[best])
            best = k;
    return best;
}

/* ---- statistics ---------------------------------------------------------- */

/* Latency histogram: buckets 2% wide from 1 us to 100 s. */
#define LAT_STEP 1.02
#define LAT_BUCKETS 931

typedef struct {
    size_t K;
    int classify, labels;
    uint64_t n, correct;
    uint64_t *confusion; /* K x K: rows label, columns prediction */
    double se, ae;       /* regression: squared and absolute errors */
    uint64_t ece_n[ECE_BINS], ece_hit[ECE_BINS];
    double ece_conf[ECE_BINS];
    uint64_t tier_n[TIER_N], tier_hit[TIER_N];
    uint32_t *lat[TIER_N];
    uint64_t stage_n[MAX_STAGES];
    /* per record, for --coverage-curve: local confidence by the criterion,
     * and bits 1 local right, 2 final right, 4 answered remotely */
    int coverage;
    float *cov_crit;
    uint8_t *cov_bits;
    size_t cov_n, cov_cap;
    double t_first, t_last;
} stats_t;

static void stats_init(stats_t *s, size_t K, int classify, int labels, int coverage)
{
    memset(s, 0, sizeof *s);
    s->K = K;
    s->classify = classify;
    s->labels = labels;
    s->coverage = coverage;
    if ((labels && classify && !(s->confusion = calloc(K * K, sizeof(uint64_t)))))
        die(EXIT_RUNTIME, "out of memory");
    for (int t = 0; t < TIER_N; t++)
        if (!(s->lat[t] = calloc(LAT_BUCKETS, sizeof(uint32_t))))
            die(EXIT_RUNTIME, "out of memory");
}

static void stats_free(stats_t *s)
{
    free(s->confusion);
    for (int t = 0; t < TIER_N; t++)
        free(s->lat[t]);
    free(s->cov_crit);
    free(s->cov_bits);
}

static void stats_latency(stats_t *s, int tier, double seconds)
{
    double us = seconds * 1e6;
    int i = us <= 1 ? 0 : (int)(log(us) / log(LAT_STEP));
    if (i >= LAT_BUCKETS)
        i = LAT_BUCKETS - 1;
    if (s->lat[tier][i] < UINT32_MAX)
        s->lat[tier][i]++;
}

/* The q-quantile of a tier's latencies in milliseconds (the bucket's middle). */
static double stats_quantile(const stats_t *s, int tier, double q)
{
    uint64_t total = 0, acc = 0;
    for (int i = 0; i < LAT_BUCKETS; i++)
        total += s->lat[tier][i];
    if (!total)
        return NAN;
    uint64_t want = (uint64_t)ceil(q * (double)total);
    if (want < 1)
        want = 1;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        acc += s->lat[tier][i];
        if (acc >= want)
            return pow(LAT_STEP, i + 0.5) / 1000;
    }
    return NAN;
}

static void stats_record(stats_t *s, const fwd_ent_t *e, double t)
{
    s->n++;
    s->t_last = t;
    s->tier_n[e->tier]++;
    stats_latency(s, e->tier, t - e->t_in);
    s->stage_n[e->stage < MAX_STAGES ? e->stage : MAX_STAGES - 1]++;
    if (!s->labels || e->label < 0)
        return;
    const int hit = e->pred == (uint32_t)e->label;
    s->correct += hit;
    s->tier_hit[e->tier] += hit;
    s->confusion[(size_t)e->label * s->K + e->pred]++;
    int bin = (int)(e->conf * ECE_BINS);
    bin = bin < 0 ? 0 : bin >= ECE_BINS ? ECE_BINS - 1 : bin;
    s->ece_n[bin]++;
    s->ece_hit[bin] += hit;
    s->ece_conf[bin] += e->conf;
    if (s->coverage) {
        if (s->cov_n == s->cov_cap) {
            size_t nc = s->cov_cap ? 2 * s->cov_cap : 4096;
            float *c = realloc(s->cov_crit, nc * sizeof *c);
            uint8_t *bits = c ? realloc(s->cov_bits, nc) : NULL;
            if (c)
                s->cov_crit = c;
            if (!bits)
                die(EXIT_RUNTIME, "out of memory");
            s->cov_bits = bits;
            s->cov_cap = nc;
        }
        s->cov_crit[s->cov_n] = e->crit;
        s->cov_bits[s->cov_n++] = (uint8_t)((e->lpred == (uint32_t)e->label) | hit << 1 |
                                            (e->tier == TIER_REMOTE) << 2);
    }
}

static double stats_ece(const stats_t *s)
{
    double ece = 0;
    for (int i = 0; i < ECE_BINS; i++)
        if (s->ece_n[i])
            ece += fabs((double)s->ece_hit[i] - s->ece_conf[i]);
    return s->n ? ece / (double)s->n : 0;
}

static void report_table(const stats_t *s, const models_t *ms, const local_t *L)
{
    const size_t K = s->K;
    if (!s->classify) {
        fprintf(stderr, "%s: eval: %llu records, mse %.6g, rmse %.6g, mae %.6g\n", prog,
                (unsigned long long)s->n, s->se / (double)s->n, sqrt(s->se / (double)s->n),
                s->ae / (double)s->n);
        return;
    }
    fprintf(stderr, "%s: eval: %llu records, accuracy %.4f\n", prog,
            (unsigned long long)s->n, (double)s->correct / (double)s->n);
    fprintf(stderr, "%8s %10s %10s\n", "class", "records", "accuracy");
    for (size_t k = 0; k < K; k++) {
        uint64_t row = 0;
        for (size_t j = 0; j < K; j++)
            row += s->confusion[k * K + j];
        if (row)
            fprintf(stderr, "%8zu %10llu %10.4f\n", k, (unsigned long long)row,
                    (double)s->confusion[k * K + k] / (double)row);
        else
            fprintf(stderr, "%8zu %10d %10s\n", k, 0, "-");
    }
    fprintf(stderr, "confusion matrix (rows: label, columns: prediction)\n%6s", "");
    for (size_t j = 0; j < K; j++)
        fprintf(stderr, " %6zu", j);
    fputc('\n', stderr);
    for (size_t k = 0; k < K; k++) {
        fprintf(stderr, "%6zu", k);
        for (size_t j = 0; j < K; j++)
            fprintf(stderr, " %6llu", (unsigned long long)s->confusion[k * K + j]);
        fputc('\n', stderr);
    }
    fprintf(stderr, "expected calibration error %.4f (%d bins)\n", stats_ece(s), ECE_BINS);
    fprintf(stderr, "%-20s %8s %8s %8s %8s %8s %8s\n", "tier", "records", "fraction",
            "accuracy", "p50 ms", "p95 ms", "p99 ms");
    for (int t = 0; t < TIER_N; t++) {
        if (!s->tier_n[t] && t != TIER_LOCAL)
            continue;
        fprintf(stderr, "%-20s %8llu %8.4f %8.4f %8.3f %8.3f %8.3f\n", tier_names[t],
                (unsigned long long)s->tier_n[t], (double)s->tier_n[t] / (double)s->n,
                s->tier_n[t] ? (double)s->tier_hit[t] / (double)s->tier_n[t] : 0.0,
                stats_quantile(s, t, 0.50), stats_quantile(s, t, 0.95),
                stats_quantile(s, t, 0.99));
    }
    if (L->exits || L->anytime) {
        size_t ns = L->exits ? ms->m[0].spec.nexits + 1 : ms->n;
        fprintf(stderr, "answered at");
        for (size_t j = 0; j < ns && j < MAX_STAGES; j++) {
            if (L->exits && j + 1 < ns)
                fprintf(stderr, "%s exit %zu (layer %zu) %.2f%%", j ? "," : "", j,
                        ms->m[0].spec.exits[j], 100.0 * (double)s->stage_n[j] / (double)s->n);
            else if (L->exits)
                fprintf(stderr, ", final %.2f%%", 100.0 * (double)s->stage_n[j] / (double)s->n);
            else
                fprintf(stderr, "%s model %zu %.2f%%", j ? "," : "", j + 1,
                        100.0 * (double)s->stage_n[j] / (double)s->n);
        }
        fputc('\n', stderr);
    }
}

static double rate(const stats_t *s)
{
    double dt = s->t_last - s->t_first;
    return dt > 0 ? (double)s->n / dt : 0;
}

static void json_num(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.9g", v);
    else
        fputs("null", f);
}

typedef struct {
    const stats_t *s;
    const models_t *ms;
    const local_t *L;
    uint64_t restarts;
} json_ctx_t;

static int json_body(void *ctx, FILE *f)
{
    const json_ctx_t *c = ctx;
    const stats_t *s = c->s;
    const models_t *ms = c->ms;
    const local_t *L = c->L;
    fprintf(f, "{\"records\": %llu", (unsigned long long)s->n);
    if (!s->classify) {
        fprintf(f, ", \"mse\": ");
        json_num(f, s->se / (double)s->n);
        fprintf(f, ", \"rmse\": ");
        json_num(f, sqrt(s->se / (double)s->n));
        fprintf(f, ", \"mae\": ");
        json_num(f, s->ae / (double)s->n);
    } else {
        fprintf(f, ", \"accuracy\": ");
        json_num(f, (double)s->correct / (double)s->n);
        fprintf(f, ", \"ece\": ");
        json_num(f, stats_ece(s));
        fprintf(f, ", \"ece_bins\": %d", ECE_BINS);
    }
    fprintf(f, ", \"records_per_s\": ");
    json_num(f, rate(s));
    fprintf(f, ", \"tiers\": {");
    int first = 1;
    for (int t = 0; t < TIER_N; t++) {
        if (!s->tier_n[t] && t != TIER_LOCAL)
            continue;
        fprintf(f, "%s\"%s\": {\"records\": %llu, \"fraction\": ", first ? "" : ", ",
                tier_names[t], (unsigned long long)s->tier_n[t]);
        first = 0;
        json_num(f, (double)s->tier_n[t] / (double)s->n);
        if (s->classify) {
            fprintf(f, ", \"accuracy\": ");
            json_num(f, s->tier_n[t] ? (double)s->tier_hit[t] / (double)s->tier_n[t] : NAN);
        }
        fprintf(f, ", \"latency_ms\": {\"p50\": ");
        json_num(f, stats_quantile(s, t, 0.50));
        fprintf(f, ", \"p95\": ");
        json_num(f, stats_quantile(s, t, 0.95));
        fprintf(f, ", \"p99\": ");
        json_num(f, stats_quantile(s, t, 0.99));
        fprintf(f, "}}");
    }
    fprintf(f, "}");
    if (L->exits || L->anytime) {
        size_t ns = L->exits ? ms->m[0].spec.nexits + 1 : ms->n;
        fprintf(f, ", \"%s\": [", L->exits ? "exits" : "members");
        for (size_t j = 0; j < ns && j < MAX_STAGES; j++)
            fprintf(f, "%s%llu", j ? ", " : "", (unsigned long long)s->stage_n[j]);
        fprintf(f, "]");
    }
    fprintf(f, ", \"restarts\": %llu}\n", (unsigned long long)c->restarts);
    return 0;
}

/* A report: written whole or not at all (a FILE that is not a regular file,
 * /dev/stdout or a fifo, is written directly). */
static void write_report(const char *path, mnn_write_fn body, void *ctx)
{
    mnn_diag_t d;
    if (mnn_write_atomic(path, body, ctx, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
}

static void write_json(const char *path, const stats_t *s, const models_t *ms,
                       const local_t *L, uint64_t restarts)
{
    json_ctx_t c = {s, ms, L, restarts};
    write_report(path, json_body, &c);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef struct {
    float crit;
    uint8_t bits;
} cov_t;

static int cmp_cov(const void *a, const void *b) { return cmp_float(a, b); }

/* Accuracy if the least confident fraction f were forwarded, f = 0, 0.01,
 * ..., 1.  A forwarded record counts its remote answer where this run got
 * one, else its local one. */
static int coverage_body(void *ctx, FILE *f)
{
    const stats_t *s = ctx;
    size_t N = s->cov_n;
    cov_t *c = malloc((N ? N : 1) * sizeof *c);
    if (!c)
        die(EXIT_RUNTIME, "out of memory");
    for (size_t i = 0; i < N; i++)
        c[i] = (cov_t){s->cov_crit[i], s->cov_bits[i]};
    qsort(c, N, sizeof *c, cmp_cov);
    /* prefix counts over the sorted records */
    uint64_t local_kept = 0, fwd_final = 0, fwd_remote = 0;
    for (size_t i = 0; i < N; i++)
        local_kept += c[i].bits & 1;
    fprintf(f, "fraction_forwarded\tthreshold\taccuracy\tlocal_accuracy\tremote_answered\n");
    size_t m = 0;
    for (int step = 0; step <= 100; step++) {
        size_t want = (size_t)llround((double)N * step / 100.0);
        for (; m < want; m++) {
            local_kept -= c[m].bits & 1;
            fwd_final += (c[m].bits & 4) ? (c[m].bits >> 1 & 1) : (c[m].bits & 1);
            fwd_remote += (c[m].bits >> 2) & 1;
        }
        double thr = m < N ? (double)c[m].crit : INFINITY;
        fprintf(f, "%.2f\t%.6g\t%.6f\t", step / 100.0, thr,
                N ? (double)(local_kept + fwd_final) / (double)N : 0.0);
        if (m < N)
            fprintf(f, "%.6f", (double)local_kept / (double)(N - m));
        else
            fprintf(f, "nan");
        fprintf(f, "\t%.6f\n", m ? (double)fwd_remote / (double)m : 1.0);
    }
    free(c);
    return 0;
}

static void write_coverage(const char *path, const stats_t *s)
{
    write_report(path, coverage_body, (void *)s);
}

/* ---- reading a labelled stream whole ---------------------------------------- */

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
    local_t *L;
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
    int rc = predict(c->ms, c->L, b, 0, c->out, c->stage);
    if (rc < 0)
        die(EXIT_RUNTIME, "inference failed: %s", mnn_strerror(rc));
    if (c->n + b->n > c->cap) {
        size_t nc = c->cap ? c->cap : 4096;
        while (nc < c->n + b->n)
            nc *= 2;
        float *v = realloc(c->v, nc * sizeof *v);
        if (!v)
            die(EXIT_RUNTIME, "out of memory");
        c->v = v;
        c->cap = nc;
    }
    for (size_t i = 0; i < b->n; i++)
        c->v[c->n++] = mnn_confidence(c->out + i * K, K, c->L->crit);
}

/* The threshold that forwards a fraction F of the calibration records. */
static float threshold_for_fraction(const char *file, double F, models_t *ms, local_t *L,
                                    const feed_opts_t *fo, float *out, uint8_t *stage,
                                    int verbose)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(EXIT_RUNTIME, "%s: %s", file, strerror(errno));
    crits_t c = {.ms = ms, .L = L, .out = out, .stage = stage};
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
               F, (double)t, mnn_crit_name(L->crit), below, c.n, file);
    free(c.v);
    return t;
}

/* ---- --calibrate ---------------------------------------------------------- */

/* NLL of softmax(beta z) over N records, with its first two derivatives in
 * beta; it is convex in beta. */
static double temp_nll(const float *z, const int32_t *y, size_t N, size_t K, double beta,
                       double *g, double *h)
{
    double nll = 0;
    *g = *h = 0;
    for (size_t i = 0; i < N; i++) {
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

/* Newton's method on beta = 1/T, kept inside a shrinking bracket. */
static double fit_temperature(const float *z, const int32_t *y, size_t N, size_t K)
{
    double lo = 1e-4, hi = 1e4, beta = 1, g, h;
    for (int it = 0; it < 100; it++) {
        temp_nll(z, y, N, K, beta, &g, &h);
        if (g < 0)
            lo = beta;
        else
            hi = beta;
        if (fabs(g) <= 1e-9 * (double)N)
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

static double ece_of(const float *z, const int32_t *y, size_t N, size_t K, double T)
{
    uint64_t n[ECE_BINS] = {0}, hit[ECE_BINS] = {0};
    double conf[ECE_BINS] = {0}, ece = 0;
    for (size_t i = 0; i < N; i++) {
        const float *zi = z + i * K;
        size_t best = argmax(zi, K);
        double s = 0;
        for (size_t k = 0; k < K; k++)
            s += exp((zi[k] - zi[best]) / T);
        double c = 1 / s;
        int bin = (int)(c * ECE_BINS);
        bin = bin >= ECE_BINS ? ECE_BINS - 1 : bin;
        n[bin]++;
        hit[bin] += best == (size_t)y[i];
        conf[bin] += c;
    }
    for (int b = 0; b < ECE_BINS; b++)
        ece += fabs((double)hit[b] - conf[b]);
    return N ? ece / (double)N : 0;
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
        size_t cap = l->cap ? 2 * l->cap : 4096;
        while (cap < l->n + b->n)
            cap *= 2;
        float *nz = realloc(l->z, cap * K * sizeof *nz);
        int32_t *ny = nz ? realloc(l->y, cap * sizeof *ny) : NULL;
        if (nz)
            l->z = nz;
        if (!ny)
            die(EXIT_RUNTIME, "out of memory");
        l->y = ny;
        l->cap = cap;
    }
    int rc = mnn_model_logits(l->m, b->x, b->n, l->z + l->n * K);
    if (rc < 0)
        die(EXIT_RUNTIME, "inference failed: %s", mnn_strerror(rc));
    for (size_t i = 0; i < b->n; i++)
        l->y[l->n + i] = (int32_t)b->y[i];
    l->n += b->n;
}

static void calibrate(const char *src_arg, const char *outdir, size_t batch, int skip,
                      int quiet)
{
    const int64_t created = cli_created();
    mnn_ckpt_t *ck = cli_ckpt_open(src_arg, NULL, 0);
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    mnn_diag_t d;
    if (mnn_ckpt_load(ck->dir, &m, &o, &st, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
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
    const double T0 = m.spec.temperature, T = fit_temperature(z, y, N, K);
    double g, h;
    double nll0 = temp_nll(z, y, N, K, 1 / T0, &g, &h) / (double)N;
    double nll1 = temp_nll(z, y, N, K, 1 / T, &g, &h) / (double)N;
    m.spec.temperature = (float)T;
    if (mnn_ckpt_write(outdir, &m, &o, &st, parent, created, 0, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    if (!quiet)
        warnx_("calibrate: %zu records, temperature %.6g (was %.6g): NLL %.6f -> %.6f, "
               "ECE %.4f -> %.4f",
               N, T, T0, nll0, nll1, ece_of(z, y, N, K, T0), ece_of(z, y, N, K, T));
    printf("%s\n", outdir);
    free(z);
    free(y);
    mnn_optim_free(&o);
    mnn_model_free(&m);
}

/* ---- output ----------------------------------------------------------------- */

typedef struct {
    stats_t *st; /* NULL: no --eval */
    int tiers;   /* print the tier column */
    int linebuf;
} emit_ctx_t;

static void put_record(const emit_ctx_t *c, const fwd_ent_t *e)
{
    if (c->tiers)
        printf("%u,%.9g,%s\n", e->pred, (double)e->conf, tier_names[e->tier]);
    else
        printf("%u,%.9g\n", e->pred, (double)e->conf);
}

/* The forwarding thread's output, in input order. */
static void emit(void *ctx, const fwd_ent_t *e)
{
    emit_ctx_t *c = ctx;
    if (e->comment) {
        fputs(e->comment, stdout);
        fputc('\n', stdout);
        if (e->flush)
            fflush(stdout);
    } else {
        put_record(c, e);
        if (c->st)
            stats_record(c->st, e, mono_now());
    }
    if (c->linebuf)
        fflush(stdout);
    out_check();
}

static int is_flush_line(const char *s)
{
    size_t n = strlen(s);
    if (n && s[n - 1] == '\r')
        n--;
    return n == sizeof FEED_FLUSH - 1 && !memcmp(s, FEED_FLUSH, n);
}

/* ---- main ---------------------------------------------------------------- */

static volatile sig_atomic_t hup;

static void on_hup(int sig)
{
    (void)sig;
    hup = 1;
}

/* A fatal signal while forwarding: the co-process goes too, then infer
 * ends as the signal would have ended it. */
static void on_fatal(int sig)
{
    fwd_kill_child();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void reload(models_t *ms, const float *weights, size_t batch, int verbose)
{
    hup = 0;
    models_t fresh = *ms;
    memset(fresh.m, 0, sizeof fresh.m);
    char err[1024];
    if (models_load(&fresh, weights, batch, err, sizeof err) < 0) {
        warnx_("SIGHUP: %s; keeping the models loaded before", err);
        return;
    }
    const mnn_spec_t *a = &ms->m[0].spec, *b = &fresh.m[0].spec;
    if (a->input != b->input || a->outputs != b->outputs || a->loss != b->loss ||
        a->nexits != b->nexits) {
        warnx_("SIGHUP: %s now has another shape; keeping the models loaded before",
               ms->path[0]);
        models_free(&fresh);
        return;
    }
    models_free(ms);
    *ms = fresh;
    if (verbose)
        warnx_("SIGHUP: reloaded %zu model%s", ms->n, ms->n == 1 ? "" : "s");
}

static size_t parse_weights(const char *s, float *w)
{
    size_t n = 0;
    const char *p = s;
    for (;;) {
        const char *c = strchr(p, ',');
        const char *end = c ? c : p + strlen(p);
        double v;
        if (n == MAX_MODELS || mnn_parse_double(p, end, &v) < 0 || !(v >= 0))
            usage_error("--weights: '%s' is not a list of weights >= 0", s);
        w[n++] = (float)v;
        if (!c)
            break;
        p = c + 1;
    }
    double sum = 0;
    for (size_t j = 0; j < n; j++)
        sum += w[j];
    if (!(sum > 0))
        usage_error("--weights: at least one weight must be above 0");
    return n;
}

int main(int argc, char **argv)
{
    enum {
        O_PROBA = 256, O_EVAL, O_NOLABEL, O_LINEBUF, O_BATCH, O_THREADS, O_ONERR, O_WEIGHTS,
        O_ANYTIME, O_EXIT_T, O_CRIT, O_THRESHOLD, O_FRACTION, O_CALDATA, O_WINDOW,
        O_DEADLINE, O_STATS, O_COVERAGE, O_CALIBRATE, O_START
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"weights", required_argument, NULL, O_WEIGHTS},
        {"anytime", no_argument, NULL, O_ANYTIME},
        {"exit-threshold", required_argument, NULL, O_EXIT_T},
        {"criterion", required_argument, NULL, O_CRIT},
        {"forward", required_argument, NULL, 'f'},
        {"threshold", required_argument, NULL, O_THRESHOLD},
        {"forward-fraction", required_argument, NULL, O_FRACTION},
        {"calibration", required_argument, NULL, O_CALDATA},
        {"window", required_argument, NULL, O_WINDOW},
        {"deadline", required_argument, NULL, O_DEADLINE},
        {"start-timeout", required_argument, NULL, O_START},
        {"stats-json", required_argument, NULL, O_STATS},
        {"coverage-curve", required_argument, NULL, O_COVERAGE},
        {"calibrate", no_argument, NULL, O_CALIBRATE},
        {"output", required_argument, NULL, 'o'},
        {"proba", no_argument, NULL, O_PROBA},
        {"eval", no_argument, NULL, O_EVAL},
        {"no-label", no_argument, NULL, O_NOLABEL},
        {"line-buffered", no_argument, NULL, O_LINEBUF},
        {"batch", required_argument, NULL, O_BATCH},
        {"threads", required_argument, NULL, O_THREADS},
        {"on-error", required_argument, NULL, O_ONERR},
        CLI_COMMON_LONGOPTS};
    models_t ms = {0};
    local_t L = {.crit = MNN_CRIT_MAXPROB, .exit_t = NAN};
    float weights[MAX_MODELS];
    size_t nweights = 0;
    const char *forward = NULL, *caldata = NULL, *stats_json = NULL, *coverage = NULL,
               *outdir = NULL;
    float threshold = NAN, fraction = NAN;
    int proba = 0, do_eval = 0, no_label = 0, linebuf = 0, skip = 0, quiet = 0,
        verbose = 0, do_calibrate = 0, window_given = 0, deadline_given = 0, c;
    size_t batch = 256, threads = 0, window = 256, deadline_ms = 1000;
    double start_timeout = 10;

    cli_init("infer");
    out_setup();
    while ((c = getopt_long(argc, argv, "m:f:o:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (ms.n == MAX_MODELS)
                usage_error("-m: at most %d models", MAX_MODELS);
            ms.path[ms.n++] = optarg;
            break;
        case O_WEIGHTS: nweights = parse_weights(optarg, weights); break;
        case O_ANYTIME: L.anytime = 1; break;
        case O_EXIT_T: L.exit_t = opt_float("--exit-threshold", optarg); break;
        case O_CRIT:
            if (mnn_crit_parse(optarg, &L.crit) < 0)
                usage_error("--criterion: '%s' is not maxprob, margin or entropy", optarg);
            break;
        case 'f': forward = optarg; break;
        case O_THRESHOLD: threshold = opt_float("--threshold", optarg); break;
        case O_FRACTION: fraction = opt_float("--forward-fraction", optarg); break;
        case O_CALDATA: caldata = optarg; break;
        case O_WINDOW:
            window = opt_size("--window", optarg, 1, 1 << 20);
            window_given = 1;
            break;
        case O_DEADLINE:
            deadline_ms = opt_size("--deadline", optarg, 1, 86400000);
            deadline_given = 1;
            break;
        case O_START:
            start_timeout = opt_float("--start-timeout", optarg);
            if (!(start_timeout > 0 && start_timeout <= 86400))
                usage_error("--start-timeout: '%s' is not a number of seconds in (0, 86400]",
                            optarg);
            deadline_given = 1;
            break;
        case O_STATS: stats_json = optarg; break;
        case O_COVERAGE: coverage = optarg; break;
        case O_CALIBRATE: do_calibrate = 1; break;
        case 'o': outdir = optarg; break;
        case O_PROBA: proba = 1; break;
        case O_EVAL: do_eval = 1; break;
        case O_NOLABEL: no_label = 1; break;
        case O_LINEBUF: linebuf = 1; break;
        case O_BATCH: batch = opt_size("--batch", optarg, 1, 1 << 20); break;
        case O_THREADS: threads = opt_size("--threads", optarg, 1, 1024); break;
        case O_ONERR: skip = opt_on_error(optarg); break;
        case 'q': quiet = 1; break;
        case 'v': verbose = 1; break;
        case 'h': help();
        case 'V': print_version();
        default: usage_error("unknown option");
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s' (records are read from stdin)", argv[optind]);
    if (!ms.n)
        usage_error("a checkpoint is required (-m CKPT)");
    for (size_t j = 0; j < ms.n; j++)
        if (!strcmp(ms.path[j], "-"))
            usage_error("-m -: stdin carries the records; give the checkpoint as a file or a "
                        "directory");
    if (do_eval && no_label)
        usage_error("--eval needs labels; it cannot be used with --no-label");
    if ((stats_json || coverage) && !do_eval)
        usage_error("%s needs --eval", stats_json ? "--stats-json" : "--coverage-curve");
    if (nweights && nweights != ms.n)
        usage_error("--weights: %zu weights for %zu models", nweights, ms.n);
    if (L.anytime && ms.n < 2)
        usage_error("--anytime needs an ensemble (two -m or more)");
    if (L.anytime && isnan(L.exit_t))
        usage_error("--anytime needs --exit-threshold T");
    if (!isnan(L.exit_t) && ms.n > 1 && !L.anytime)
        usage_error("--exit-threshold with several models needs --anytime");
    if (!isnan(threshold) && !isnan(fraction))
        usage_error("--threshold and --forward-fraction exclude each other");
    if (caldata && isnan(fraction))
        usage_error("--calibration is for --forward-fraction");
    if ((window_given || deadline_given) && !forward)
        usage_error("%s needs --forward CMD",
                    window_given ? "--window" : "--deadline and --start-timeout");
    if ((!isnan(threshold) || !isnan(fraction) || caldata) && !forward)
        usage_error("%s needs --forward CMD",
                    !isnan(threshold) ? "--threshold"
                    : !isnan(fraction) ? "--forward-fraction" : "--calibration");
    if (forward && isnan(threshold) && isnan(fraction))
        usage_error("--forward needs --threshold T or --forward-fraction F");
    if (!isnan(fraction) && !(fraction >= 0 && fraction <= 1))
        usage_error("--forward-fraction: %g is not between 0 and 1", (double)fraction);
    if (!isnan(fraction) && !caldata)
        usage_error("--forward-fraction needs --calibration FILE (records to choose the "
                    "threshold from)");
    if (forward && proba)
        usage_error("--proba cannot be used with --forward (a remote answer may carry "
                    "only 'pred,confidence')");
    if (do_calibrate && (ms.n != 1 || forward || do_eval || proba || no_label ||
                         !isnan(L.exit_t) || nweights))
        usage_error("--calibrate takes one model and a labelled stream, and no --forward, "
                    "--eval, --proba, --no-label, --exit-threshold or --weights");
    if (do_calibrate && !outdir)
        usage_error("--calibrate needs -o DIR (the new checkpoint)");
    if (outdir && !do_calibrate)
        usage_error("-o is for --calibrate");
    if (isatty(STDOUT_FILENO))
        linebuf = 1;
    set_threads(threads);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &sa, NULL);

    if (do_calibrate) {
        calibrate(ms.path[0], outdir, batch, skip, quiet);
        out_close();
        return EXIT_OK;
    }

    char err[1024];
    if (models_load(&ms, nweights ? weights : NULL, batch, err, sizeof err) < 0)
        die(EXIT_RUNTIME, "%s", err);
    const mnn_spec_t *s0 = &ms.m[0].spec;
    const int classify = s0->loss == MNN_LOSS_XENT;
    const size_t C = s0->input, K = s0->outputs;
    if (!classify && (forward || !isnan(L.exit_t) || coverage))
        usage_error("%s needs a classifier; %s is a regression model",
                    forward ? "--forward" : coverage ? "--coverage-curve" : "--exit-threshold",
                    ms.path[0]);
    if (!isnan(L.exit_t) && ms.n == 1) {
        if (s0->nexits == 0)
            usage_error("--exit-threshold: %s has no early exits (spec 'exits: [...]')",
                        ms.path[0]);
        L.exits = 1;
    }
    if (verbose)
        for (size_t j = 0; j < ms.n; j++)
            warnx_("%s: %zu inputs, %zu %s, %zu parameters, %zu exits, temperature %g",
                   ms.path[j], C, K, classify ? "classes" : "outputs", ms.m[j].nparams,
                   ms.m[j].spec.nexits, (double)ms.m[j].spec.temperature);

    float *out = mnn_calloc_aligned(batch, K * sizeof(float));
    uint8_t *stage = calloc(batch, 1);
    L.tmp = mnn_calloc_aligned(batch, K * sizeof(float));
    L.xsub = mnn_calloc_aligned(batch, C * sizeof(float));
    L.pbuf = calloc(K, sizeof(float));
    L.idx = calloc(batch, sizeof(size_t));
    if (!out || !stage || !L.tmp || !L.xsub || !L.pbuf || !L.idx)
        die(EXIT_RUNTIME, "out of memory");

    feed_opts_t fo = {.name = "stdin", .batch = batch, .skip_errors = skip,
                      .keep_comments = 1, .eager = linebuf, .verbose = verbose,
                      .keep_lines = forward != NULL};
    fo.fmt.nfeat = C;
    fo.fmt.has_label = !no_label;
    fo.fmt.classes = classify ? K : 0;

    if (!isnan(fraction))
        threshold = threshold_for_fraction(caldata, fraction, &ms, &L, &fo, out, stage, verbose);

    stats_t st;
    stats_init(&st, K, classify, do_eval, coverage != NULL);
    emit_ctx_t ec = {.st = do_eval ? &st : NULL, .tiers = forward != NULL, .linebuf = linebuf};
    fwd_t *fw = NULL;
    if (forward) {
        fwd_opts_t fwo = {.cmd = forward, .window = window, .deadline = deadline_ms / 1000.0,
                          .start_timeout = start_timeout,
                          .classes = K, .queue = 4 * batch + 4 * window,
                          .mark_every = FWD_MARK_EVERY, .verbose = verbose, .emit = emit,
                          .ctx = &ec};
        if (!(fw = fwd_start(&fwo)))
            die(EXIT_RUNTIME, "--forward: cannot start: %s", strerror(errno));
        atexit(fwd_kill_child); /* an exit on an error does not orphan it */
        sa.sa_handler = on_fatal;
        sa.sa_flags = 0;
        const int fatal[] = {SIGINT, SIGTERM, SIGPIPE, SIGQUIT};
        for (size_t i = 0; i < sizeof fatal / sizeof *fatal; i++) {
            struct sigaction old;
            /* a signal ignored on purpose stays ignored */
            if (sigaction(fatal[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
                sigaction(fatal[i], &sa, NULL);
        }
    }

    feed_t *feed = feed_start(STDIN_FILENO, &fo);
    if (!feed)
        die(EXIT_RUNTIME, "cannot start the reader: %s", strerror(errno ? errno : ENOMEM));

    uint64_t records = 0;
    for (;;) {
        if (hup)
            reload(&ms, nweights ? weights : NULL, batch, verbose);
        feed_batch_t *b = feed_next(feed, &hup);
        if (!b)
            continue;
        if (hup) /* it came while the batch was read: answer it with the new models */
            reload(&ms, nweights ? weights : NULL, batch, verbose);
        const double t_in = mono_now();
        if (!records)
            st.t_first = t_in;
        int rc = predict(&ms, &L, b, linebuf, out, stage);
        if (rc < 0)
            die(EXIT_RUNTIME, "inference failed: %s", mnn_strerror(rc));
        size_t ci = 0;
        for (size_t i = 0; i <= b->n; i++) {
            for (; ci < b->ncom && b->cpos[ci] <= i; ci++) {
                const char *text = b->ctext + b->coff[ci];
                if (fw) {
                    fwd_ent_t e = {.comment = strdup(text), .flush = is_flush_line(text)};
                    if (!e.comment)
                        die(EXIT_RUNTIME, "out of memory");
                    fwd_push(fw, &e, NULL, 0);
                } else {
                    fputs(text, stdout);
                    fputc('\n', stdout);
                }
            }
            if (i == b->n)
                break;
            const float *p = out + i * K;
            if (!classify) {
                printf("%.9g\n", (double)p[0]);
                if (do_eval) {
                    double e = (double)p[0] - (double)b->y[i];
                    st.n++;
                    st.tier_n[TIER_LOCAL]++;
                    st.se += e * e;
                    st.ae += fabs(e);
                }
                continue;
            }
            const size_t best = argmax(p, K);
            fwd_ent_t e = {.pred = (uint32_t)best, .conf = p[best], .lpred = (uint32_t)best,
                           .lconf = p[best],
                           .crit = fw || coverage ? mnn_confidence(p, K, L.crit) : 0,
                           .label = no_label ? -1 : (int32_t)b->y[i], .tier = TIER_LOCAL,
                           .stage = stage[i], .t_in = t_in};
            if (fw) {
                int send = e.crit < threshold;
                fwd_push(fw, &e, send ? b->ltext + b->loff[i] : NULL, send ? b->llen[i] : 0);
                continue;
            }
            if (proba) {
                for (size_t k = 0; k < K; k++)
                    printf(k ? ",%.9g" : "%.9g", (double)p[k]);
                putchar('\n');
            } else
                put_record(&ec, &e);
            if (do_eval)
                stats_record(&st, &e, mono_now());
        }
        records += b->n;
        if (fw)
            fwd_batch_end(fw);
        else {
            if (!classify)
                st.t_last = mono_now();
            if (linebuf || b->flush)
                fflush(stdout);
            out_check();
        }
        int end = b->end;
        if (b->error) {
            /* the lines of the records before it are written first */
            if (fw)
                fwd_finish(fw, NULL);
            out_check();
            fflush(stdout);
            die(EXIT_RUNTIME, "%s", b->msg);
        }
        feed_release(feed, b);
        if (end)
            break;
    }
    uint64_t restarts = 0;
    if (fw)
        fwd_finish(fw, &restarts);
    out_close();
    feed_stop_report(feed);
    if (do_eval && st.n == 0)
        die(EXIT_RUNTIME, "stdin: no records to evaluate");
    if (do_eval && !quiet) {
        report_table(&st, &ms, &L);
        fprintf(stderr, "throughput %.0f records/s\n", rate(&st));
    }
    if (stats_json)
        write_json(stats_json, &st, &ms, &L, restarts);
    if (coverage)
        write_coverage(coverage, &st);
    if (verbose) {
        warnx_("%llu records", (unsigned long long)records);
        if (fw)
            warnx_("forward: %llu restart%s", (unsigned long long)restarts,
                   restarts == 1 ? "" : "s");
        report_peak_rss();
    }
    stats_free(&st);
    mnn_free(out);
    mnn_free(L.tmp);
    mnn_free(L.xsub);
    free(L.pbuf);
    free(L.idx);
    free(stage);
    models_free(&ms);
    return EXIT_OK;
}
