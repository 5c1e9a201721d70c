/* infer.h - what infer's files share.
 *
 *   infer.c         options, usage, main
 *   infer-models.c  the models: loading, SIGHUP reloads, prediction in
 *                   batches (through the library's mnn_ensemble_t)
 *   infer-run.c     the stream: reading, routing to the forwarder, and the
 *                   one output path every answer and '#' line takes
 *   infer-eval.c    --eval's figures, report, --stats-json, --coverage-curve
 *   infer-calib.c   passes over a labelled stream: --calibrate's
 *                   temperature, --forward-fraction's threshold
 *   forward.c       the forwarder: a co-process for the unsure records */
#ifndef MNN_INFER_H
#define MNN_INFER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "feed.h"
#include "forward.h"

#define MAX_MODELS MNN_ENSEMBLE_MAX
#define MAX_STAGES 32
#define FWD_MARK_EVERY 64 /* forwarded records per marker, at most */

/* ---- models (infer-models.c) ---- */

typedef struct {
    size_t n;                     /* -m given, 1 to MAX_MODELS */
    const char *path[MAX_MODELS]; /* as given */
    mnn_model_t m[MAX_MODELS];    /* loaded: n of them */
    const float *weights;         /* --weights (n), or NULL: equal */
    size_t batch;                 /* records per prediction, at most */
    mnn_ensemble_t e;             /* how they answer together */
} models_t;

/* Loads every model (each checkpoint through mnn_ckpt_open: a directory, a
 * root, an archive, a received-into directory); all must agree on inputs
 * and outputs.  0, or -1 with err filled and nothing loaded. */
int models_load(models_t *ms, char *err, size_t esize);
/* Loads them again (SIGHUP); keeps the old ones, saying why, when a new one
 * fails to load or has another shape. */
void models_reload(models_t *ms, int verbose);
void models_free(models_t *ms);
/* Outputs for a batch.  The last digits of a BLAS product depend on the
 * shape it is given and on a row's place in it: line-buffered, each record
 * is computed alone, so that an answer does not depend on when its record
 * came. */
int models_predict(models_t *ms, const feed_batch_t *b, int linebuf, float *out,
                   uint8_t *stage);

/* ---- --eval (infer-eval.c) ---- */

typedef struct stats stats_t;
stats_t *stats_new(size_t K, int classify, int coverage);
void stats_free(stats_t *s);
/* A classifier's answer e, at monotonic time t. */
void stats_record(stats_t *s, const fwd_ent_t *e, double t);
/* A regression model's value v for target y, at monotonic time t. */
void stats_value(stats_t *s, double v, double y, double t);
void stats_start(stats_t *s, double t); /* the first record came */
uint64_t stats_count(const stats_t *s);
/* The report on stderr, and the files asked for (each written whole). */
void stats_report(const stats_t *s, const models_t *ms);
void stats_write_json(const char *path, const stats_t *s, const models_t *ms,
                      uint64_t restarts);
void stats_write_coverage(const char *path, const stats_t *s);
/* qsort's comparison of floats, ascending */
int cmp_float(const void *a, const void *b);

/* ---- passes over a labelled stream (infer-calib.c) ---- */

/* Fits a temperature on stdin's labelled records and writes the checkpoint
 * src with it as outdir. */
void calibrate(const char *src, const char *outdir, size_t batch, int skip, int quiet);
/* The threshold that forwards a fraction F of the records of file. */
float threshold_for_fraction(const char *file, double F, models_t *ms, const feed_opts_t *fo,
                             float *out, uint8_t *stage, int verbose);

/* ---- the stream (infer-run.c) ---- */

typedef struct {
    int proba, eval, no_label, linebuf, skip, quiet, verbose;
    size_t batch;
    const char *forward;     /* --forward CMD, or NULL */
    float threshold;         /* forward below it */
    const char *caldata;     /* --calibration FILE */
    float fraction;          /* --forward-fraction */
    const char *forwarded;   /* --forwarded FILE, or NULL */
    size_t window, deadline_ms;
    double start_timeout;
    const char *stats_json, *coverage;
} run_opts_t;

/* Answers stdin's records on stdout; the --eval report at the end. */
void run(models_t *ms, run_opts_t *o);

/* Set by SIGHUP: reload the models between batches. */
extern volatile sig_atomic_t hup;

#endif
