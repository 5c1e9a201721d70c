/* infer-eval.c - --eval: accuracy, per-class accuracy, the confusion
 * matrix, calibration error (the library's mnn_ece_t), the tiers that
 * answered with their latencies (a histogram of 2% buckets), and where
 * early exits or anytime members stopped; the report on stderr, the same as
 * JSON (--stats-json) and accuracy against the fraction forwarded
 * (--coverage-curve), each file written whole or not at all. */
#include <config.h>

#include "infer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Latency histogram: buckets 2% wide from 1 us to 100 s. */
#define LAT_STEP 1.02
#define LAT_BUCKETS 931

struct stats {
    size_t K;
    int classify;
    uint64_t n, correct;
    uint64_t *confusion; /* K x K: rows label, columns prediction */
    double se, ae;       /* regression: squared and absolute errors */
    mnn_ece_t ece;
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
};

stats_t *stats_new(size_t K, int classify, int coverage)
{
    stats_t *s = calloc(1, sizeof *s);
    if (!s)
        die(EXIT_RUNTIME, "out of memory");
    s->K = K;
    s->classify = classify;
    s->coverage = coverage;
    if (classify && !(s->confusion = calloc(K * K, sizeof(uint64_t))))
        die(EXIT_RUNTIME, "out of memory");
    for (int t = 0; t < TIER_N; t++)
        if (!(s->lat[t] = calloc(LAT_BUCKETS, sizeof(uint32_t))))
            die(EXIT_RUNTIME, "out of memory");
    return s;
}

void stats_free(stats_t *s)
{
    if (!s)
        return;
    free(s->confusion);
    for (int t = 0; t < TIER_N; t++)
        free(s->lat[t]);
    free(s->cov_crit);
    free(s->cov_bits);
    free(s);
}

void stats_start(stats_t *s, double t) { s->t_first = t; }

uint64_t stats_count(const stats_t *s) { return s->n; }

void stats_value(stats_t *s, double v, double y, double t)
{
    double e = v - y;
    s->n++;
    s->tier_n[TIER_LOCAL]++;
    s->se += e * e;
    s->ae += fabs(e);
    s->t_last = t;
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

void stats_record(stats_t *s, const fwd_ent_t *e, double t)
{
    s->n++;
    s->t_last = t;
    s->tier_n[e->tier]++;
    stats_latency(s, e->tier, t - e->t_in);
    s->stage_n[e->stage < MAX_STAGES ? e->stage : MAX_STAGES - 1]++;
    if (e->label < 0)
        return;
    const int hit = e->pred == (uint32_t)e->label;
    s->correct += hit;
    s->tier_hit[e->tier] += hit;
    s->confusion[(size_t)e->label * s->K + e->pred]++;
    mnn_ece_add(&s->ece, e->conf, hit);
    if (s->coverage) {
        if (s->cov_n == s->cov_cap) {
            s->cov_cap = grow_cap(s->cov_cap, s->cov_n + 1);
            s->cov_crit = xrealloc(s->cov_crit, s->cov_cap, sizeof *s->cov_crit);
            s->cov_bits = xrealloc(s->cov_bits, s->cov_cap, 1);
        }
        s->cov_crit[s->cov_n] = e->crit;
        s->cov_bits[s->cov_n++] = (uint8_t)((e->lpred == (uint32_t)e->label) | hit << 1 |
                                            (e->tier == TIER_REMOTE) << 2);
    }
}

static void report_table(const stats_t *s, const models_t *ms)
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
    fprintf(stderr, "expected calibration error %.4f (%d bins)\n", mnn_ece_value(&s->ece),
            MNN_ECE_BINS);
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
    const mnn_ensemble_t *L = &ms->e;
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
    uint64_t restarts;
} json_ctx_t;

static int json_body(void *ctx, FILE *f)
{
    const json_ctx_t *c = ctx;
    const stats_t *s = c->s;
    const models_t *ms = c->ms;
    const mnn_ensemble_t *L = &ms->e;
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
        json_num(f, mnn_ece_value(&s->ece));
        fprintf(f, ", \"ece_bins\": %d", MNN_ECE_BINS);
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

void stats_write_json(const char *path, const stats_t *s, const models_t *ms,
                      uint64_t restarts)
{
    json_ctx_t c = {s, ms, restarts};
    write_report(path, json_body, &c);
}

int cmp_float(const void *a, const void *b)
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

void stats_write_coverage(const char *path, const stats_t *s)
{
    write_report(path, coverage_body, (void *)s);
}


void stats_report(const stats_t *s, const models_t *ms)
{
    report_table(s, ms);
    fprintf(stderr, "throughput %.0f records/s\n", rate(s));
}
