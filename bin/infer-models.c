/* infer-models.c - infer's models: each -m loaded through mnn_ckpt_open
 * (so a directory, a root, an archive and a received-into directory all
 * work), checked against the first, put into one mnn_ensemble_t, reloaded on
 * SIGHUP, and asked for a batch's answers. */
#include <config.h>

#include "infer.h"

#include <stdio.h>
#include <string.h>

/* Loads the models of paths into m[0..n); 0, or -1 with err filled and
 * nothing left loaded. */
static int load_all(const models_t *ms, mnn_model_t *m, char *err, size_t esize)
{
    for (size_t j = 0; j < ms->n; j++) {
        mnn_diag_t d;
        mnn_ckpt_t ck;
        int rc = mnn_ckpt_open(&ck, ms->path[j], NULL, 0, &d);
        if (rc == 0) {
            rc = mnn_ckpt_load(ck.dir, &m[j], NULL, NULL, &d);
            mnn_ckpt_close(&ck);
        }
        if (rc < 0) {
            snprintf(err, esize, "%s", d.msg);
            for (size_t i = 0; i < j; i++)
                mnn_model_free(&m[i]);
            return -1;
        }
        const mnn_spec_t *a = &m[0].spec, *b = &m[j].spec;
        if (b->input != a->input || b->outputs != a->outputs || b->loss != a->loss) {
            snprintf(err, esize, "%s: %zu inputs and %zu %s, but %s has %zu and %zu",
                     ms->path[j], b->input, b->outputs,
                     b->loss == MNN_LOSS_XENT ? "classes" : "outputs", ms->path[0], a->input,
                     a->outputs);
            for (size_t i = 0; i <= j; i++)
                mnn_model_free(&m[i]);
            return -1;
        }
    }
    return 0;
}

/* The ensemble over ms->m, its workspace for ms->batch records. */
static int attach(models_t *ms, char *err, size_t esize)
{
    mnn_model_t *mp[MAX_MODELS];
    for (size_t j = 0; j < ms->n; j++)
        mp[j] = &ms->m[j];
    int rc = mnn_ensemble_set(&ms->e, mp, ms->weights, ms->n);
    if (rc == 0)
        rc = mnn_ensemble_reserve(&ms->e, ms->batch);
    if (rc < 0)
        snprintf(err, esize, "%s", rc == MNN_ENOMEM ? "out of memory" : mnn_strerror(rc));
    return rc < 0 ? -1 : 0;
}

int models_load(models_t *ms, char *err, size_t esize)
{
    if (load_all(ms, ms->m, err, esize) < 0)
        return -1;
    if (attach(ms, err, esize) < 0) {
        models_free(ms);
        return -1;
    }
    return 0;
}

void models_free(models_t *ms)
{
    for (size_t j = 0; j < ms->n; j++)
        mnn_model_free(&ms->m[j]);
    mnn_ensemble_free(&ms->e);
}

void models_reload(models_t *ms, int verbose)
{
    hup = 0;
    mnn_model_t fresh[MAX_MODELS];
    char err[1024];
    memset(fresh, 0, sizeof fresh);
    if (load_all(ms, fresh, err, sizeof err) < 0) {
        warnx_("SIGHUP: %s; keeping the models loaded before", err);
        return;
    }
    const mnn_spec_t *a = &ms->m[0].spec, *b = &fresh[0].spec;
    if (a->input != b->input || a->outputs != b->outputs || a->loss != b->loss ||
        a->nexits != b->nexits) {
        warnx_("SIGHUP: %s now has another shape; keeping the models loaded before",
               ms->path[0]);
        for (size_t j = 0; j < ms->n; j++)
            mnn_model_free(&fresh[j]);
        return;
    }
    for (size_t j = 0; j < ms->n; j++) {
        mnn_model_free(&ms->m[j]);
        ms->m[j] = fresh[j];
    }
    if (attach(ms, err, sizeof err) < 0)
        die(EXIT_RUNTIME, "SIGHUP: %s", err);
    if (verbose)
        warnx_("SIGHUP: reloaded %zu model%s", ms->n, ms->n == 1 ? "" : "s");
}

int models_predict(models_t *ms, const feed_batch_t *b, int linebuf, float *out,
                   uint8_t *stage)
{
    const size_t C = ms->m[0].spec.input, K = ms->m[0].spec.outputs;
    if (!linebuf)
        return mnn_ensemble_predict(&ms->e, b->x, b->n, out, stage);
    for (size_t i = 0; i < b->n; i++) {
        int rc = mnn_ensemble_predict(&ms->e, b->x + i * C, 1, out + i * K, stage + i);
        if (rc < 0)
            return rc;
    }
    return 0;
}
