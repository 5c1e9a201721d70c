/* feed.c - the reader thread: a ring of batches between one producer
 * (parsing) and one consumer (training or inference). */
#include <config.h>

#include "feed.h"
#include "cli.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#define MIN_SLOTS 3
#define MAX_SKIP_WARNINGS 5
/* the most features a ring read ahead may hold (mnn_train_memory counts
 * 16 MiB for the reader) */
#define AHEAD_BYTES ((size_t)8 << 20)
/* filled batches that may hold upstream parts at once: the ring reads on
 * behind them, but not past a third cut (parts can be large) */
#define PART_SLOTS 2

struct feed {
    feed_opts_t o;
    mnn_linereader_t lr;
    feed_batch_t *slot;
    size_t nslots;
    size_t part_slots; /* filled slots that hold parts */
    /* a buffer handed back for each stage, for that stage's next part */
    unsigned char *spare[MNN_CUT_MAX_STAGES];
    size_t spare_cap[MNN_CUT_MAX_STAGES];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t head;   /* next slot the consumer takes */
    size_t filled; /* slots ready for the consumer */
    int stop;
    int started;
    int wake[2]; /* a byte written to wake[1] interrupts a waiting read */
    size_t gpos;   /* records of the minibatch under way handed over already */
    /* cuts: the start line came; the block open (its barrier) */
    int started_cuts, in_block, noted_stray;
    uint32_t index;
    uint64_t last_id;
    mnn_cut_what_t what;
    uint64_t skipped;
    char first_skip[700];
};

static int add_comment(feed_batch_t *b, const char *line, size_t len)
{
    if (b->ncom == b->comcap) {
        size_t nc = b->comcap ? 2 * b->comcap : 16;
        size_t *p = realloc(b->cpos, nc * sizeof *p), *q;
        if (!p)
            return -1;
        b->cpos = p;
        if (!(q = realloc(b->coff, nc * sizeof *q)))
            return -1;
        b->coff = q;
        b->comcap = nc;
    }
    if (b->ctext_len + len + 1 > b->ctext_cap) {
        size_t nc = (b->ctext_len + len + 1) * 2;
        char *t = realloc(b->ctext, nc);
        if (!t)
            return -1;
        b->ctext = t;
        b->ctext_cap = nc;
    }
    b->cpos[b->ncom] = b->n;
    b->coff[b->ncom] = b->ctext_len;
    memcpy(b->ctext + b->ctext_len, line, len);
    b->ctext[b->ctext_len + len] = 0;
    b->ctext_len += len + 1;
    b->ncom++;
    return 0;
}

static int keep_line(feed_batch_t *b, const char *line, size_t len)
{
    if (b->ltext_len + len > b->ltext_cap) {
        size_t nc = (b->ltext_len + len) * 2;
        char *t = realloc(b->ltext, nc);
        if (!t)
            return -1;
        b->ltext = t;
        b->ltext_cap = nc;
    }
    memcpy(b->ltext + b->ltext_len, line, len);
    b->loff[b->n] = b->ltext_len;
    b->llen[b->n] = len;
    b->ltext_len += len;
    return 0;
}

static int is_flush(const char *line, size_t len)
{
    const size_t n = sizeof FEED_FLUSH - 1;
    if (len > n && line[len - 1] == '\r')
        len--;
    return len == n && !memcmp(line, FEED_FLUSH, n);
}

/* Fails the stream at the current line: 1 (ended). */
static int stream_error(struct feed *f, feed_batch_t *b, const char *msg)
{
    snprintf(b->msg, sizeof b->msg, "%s:%llu: %s", f->o.name, (unsigned long long)f->lr.lineno,
             msg);
    b->end = b->error = 1;
    return 1;
}

/* A cut line, as the last stage of the cuts sees it: -1 not one (an
 * ordinary '#' line), 0 taken, 1 the block ended (the batch ends here), 2
 * an error (b filled). */
static int cut_line(struct feed *f, feed_batch_t *b, const char *line, size_t len)
{
    mnn_cutline_t l;
    mnn_diag_t d = {""};
    int rc = mnn_cutline_parse(line, len, &l, &d);
    if (rc < 0 && f->started_cuts)
        return stream_error(f, b, d.msg) + 1;
    if (rc == 0 || (rc < 0 && !f->started_cuts))
        return -1;
    char msg[200];
    mnn_part_t *cur = b->nparts ? &b->parts[b->nparts - 1] : NULL;
    if (l.kind != MNN_CUT_START && !f->started_cuts) {
        /* no pipeline with cuts: a '#' line like any other */
        if (!f->noted_stray++ && !f->o.quiet)
            warnx_("%s:%llu: a cut line before any pipeline's start line: ignored (the head "
                   "of a pipeline with cuts is stream-ingest)", f->o.name,
                   (unsigned long long)f->lr.lineno);
        return -1;
    }
    /* a part ends where the next cut line begins */
    if (f->in_block && cur && l.kind != MNN_CUT_DATA && !cur->head.in_file &&
        mnn_part_finish(cur, &d) < 0)
        return stream_error(f, b, d.msg) + 1;
    switch (l.kind) {
    case MNN_CUT_START:
        if (f->started_cuts)
            return stream_error(f, b, "a second start line") + 1;
        f->started_cuts = 1;
        pipe_widen(f->lr.fd);
        f->index = l.index;
        f->last_id = l.id;
        b->start = 1;
        b->start_from = l.id;
        b->start_index = l.index;
        return 0;
    case MNN_CUT_BARRIER:
        if (f->in_block || l.id <= f->last_id) {
            snprintf(msg, sizeof msg, "barrier %llu %s", (unsigned long long)l.id,
                     f->in_block ? "inside the block of another" : "out of order");
            return stream_error(f, b, msg) + 1;
        }
        f->in_block = 1;
        f->last_id = l.id;
        f->what = l.what;
        b->nparts = 0;
        return 0;
    case MNN_CUT_PART:
        if (!f->in_block || l.id != f->last_id || l.index != b->nparts || l.index >= f->index) {
            snprintf(msg, sizeof msg, "a part out of place (cut %llu, stage %u; stage %zu of "
                     "cut %llu was due)", (unsigned long long)l.id, (unsigned)l.index, b->nparts,
                     (unsigned long long)f->last_id);
            return stream_error(f, b, msg) + 1;
        }
        mnn_part_t *p = &b->parts[b->nparts++];
        if (!p->data) {
            pthread_mutex_lock(&f->mu);
            p->data = f->spare[l.index];
            p->cap = f->spare_cap[l.index];
            f->spare[l.index] = NULL;
            f->spare_cap[l.index] = 0;
            pthread_mutex_unlock(&f->mu);
        }
        mnn_part_begin(p, &l);
        if (!l.in_file)
            return 0;
        if (!f->o.parts_root) {
            snprintf(msg, sizeof msg, "the part of stage %u of cut %llu is in a file (its "
                     "--ckpt-dir), and this stage has no --ckpt-dir to find it in",
                     (unsigned)l.index, (unsigned long long)l.id);
            return stream_error(f, b, msg) + 1;
        }
        if (mnn_part_load(&b->parts[b->nparts - 1], f->o.parts_root, &d) < 0)
            return stream_error(f, b, d.msg) + 1;
        return 0;
    case MNN_CUT_DATA:
        if (!cur || !f->in_block)
            return stream_error(f, b, "a part's data outside a part") + 1;
        if (mnn_part_data(cur, line, len, &d) < 0)
            return stream_error(f, b, d.msg) + 1;
        return 0;
    case MNN_CUT_END:
        if (!f->in_block || l.id != f->last_id) {
            snprintf(msg, sizeof msg, "the end of cut %llu, which is not the one open",
                     (unsigned long long)l.id);
            return stream_error(f, b, msg) + 1;
        }
        if (b->nparts != f->index) {
            snprintf(msg, sizeof msg, "cut %llu came with the parts of %zu stages, not of the "
                     "%u before this one: a stage did not take part", (unsigned long long)l.id,
                     b->nparts, (unsigned)f->index);
            return stream_error(f, b, msg) + 1;
        }
        f->in_block = 0;
        b->cut = 1;
        b->cut_id = l.id;
        b->cut_what = f->what;
        return 1;
    default: return -1;
    }
}

/* Fills b; returns 1 when the stream has ended (EOF or error). */
static int fill(struct feed *f, feed_batch_t *b)
{
    const size_t nfeat = f->o.fmt.nfeat;
    b->n = b->ncom = b->ctext_len = b->ltext_len = 0;
    b->end = b->error = b->flush = 0;
    b->start = b->cut = 0;
    b->nparts = 0;
    b->msg[0] = 0;
    /* with cuts, the rest of the minibatch a cut divided */
    const size_t want = f->o.batch - f->gpos;
    for (;;) {
        if (b->n >= want) {
            f->gpos = 0;
            return 0;
        }
        const char *line;
        size_t len;
        if (f->o.eager && (b->n > 0 || b->ncom > 0) && !mnn_lr_ready(&f->lr))
            return 0;
        int rc = mnn_lr_next(&f->lr, &line, &len);
        if (rc == MNN_EOF || rc == MNN_ECANCELED) {
            if (f->in_block)
                return stream_error(f, b, "the input ended inside a barrier's block: a stage "
                                    "before this one went away mid-cut");
            b->end = 1;
            return 1;
        }
        if (rc == MNN_EIO) {
            snprintf(b->msg, sizeof b->msg, "%s: read error: %s", f->o.name,
                     strerror(f->lr.err));
            b->end = b->error = 1;
            return 1;
        }
        if (rc == MNN_ENOMEM) {
            snprintf(b->msg, sizeof b->msg, "%s: out of memory", f->o.name);
            b->end = b->error = 1;
            return 1;
        }
        mnn_diag_t d;
        if (rc == MNN_EOVERFLOW) {
            /* a line too long cannot be skipped safely: we lost its end */
            snprintf(b->msg, sizeof b->msg, "%s:%llu: line longer than %zu bytes", f->o.name,
                     (unsigned long long)f->lr.lineno, f->lr.max_line);
            b->end = b->error = 1;
            return 1;
        }
        if (len == 0 || (len == 1 && line[0] == '\r'))
            continue;
        if (line[0] == '#' && f->o.cuts && len > 1 && (line[1] == '!' || line[1] == '=')) {
            int k = cut_line(f, b, line, len);
            if (k == 2)
                return 1;
            if (k == 1) { /* the batch ends at the cut, the minibatch goes on */
                f->gpos = (f->gpos + b->n) % f->o.batch;
                return 0;
            }
            if (k == 0)
                continue;
        }
        if (line[0] == '#') {
            if (f->o.keep_comments && add_comment(b, line, len) < 0) {
                snprintf(b->msg, sizeof b->msg, "%s: out of memory", f->o.name);
                b->end = b->error = 1;
                return 1;
            }
            if (is_flush(line, len) && !f->in_block) {
                b->flush = 1;
                f->gpos = 0;
                return 0;
            }
            continue;
        }
        if (f->in_block)
            return stream_error(f, b, "a record inside a barrier's block");
        rc = mnn_record_parse(&f->o.fmt, line, len, b->x + b->n * nfeat, &b->y[b->n], &d);
        if (rc < 0) {
            char msg[700];
            snprintf(msg, sizeof msg, "%s:%llu: %s", f->o.name,
                     (unsigned long long)f->lr.lineno, d.msg);
            if (!f->o.skip_errors) {
                memcpy(b->msg, msg, sizeof msg);
                b->end = b->error = 1;
                return 1;
            }
            if (f->skipped++ == 0)
                memcpy(f->first_skip, msg, sizeof msg);
            if (f->o.verbose || f->skipped <= MAX_SKIP_WARNINGS)
                warnx_("%s (skipped)", msg);
            else if (f->skipped == MAX_SKIP_WARNINGS + 1)
                warnx_("more bad records are skipped silently; a count follows at the end");
            continue;
        }
        if (f->o.skip_records) {
            f->o.skip_records--;
            continue;
        }
        if (f->o.keep_lines && keep_line(b, line, len) < 0) {
            snprintf(b->msg, sizeof b->msg, "%s: out of memory", f->o.name);
            b->end = b->error = 1;
            return 1;
        }
        b->n++;
    }
}

static void *reader(void *arg)
{
    struct feed *f = arg;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        while ((f->filled == f->nslots || f->part_slots >= PART_SLOTS) && !f->stop)
            pthread_cond_wait(&f->cv, &f->mu);
        if (f->stop) {
            pthread_mutex_unlock(&f->mu);
            return NULL;
        }
        feed_batch_t *b = &f->slot[(f->head + f->filled) % f->nslots];
        pthread_mutex_unlock(&f->mu);
        int done = fill(f, b);
        pthread_mutex_lock(&f->mu);
        f->filled++;
        f->part_slots += b->nparts > 0;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        if (done)
            return NULL;
    }
}

feed_t *feed_start(int fd, const feed_opts_t *o)
{
    struct feed *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->o = *o;
    f->gpos = o->first_fill < o->batch ? o->first_fill : 0;
    f->wake[0] = f->wake[1] = -1;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    if (mnn_lr_init(&f->lr, fd, 0) < 0 || pipe2(f->wake, O_CLOEXEC) != 0)
        goto fail;
    f->lr.cancel_fd = f->wake[0];
    /* three batches, or, where asked, o->ahead records if their features
     * and the slots fit in AHEAD_BYTES */
    const size_t per = o->batch * o->fmt.nfeat * sizeof(float) + sizeof(feed_batch_t);
    f->nslots = MIN_SLOTS;
    if (o->ahead > MIN_SLOTS * o->batch) {
        size_t want = (o->ahead + o->batch - 1) / o->batch, most = AHEAD_BYTES / per;
        f->nslots = want < most ? want : most;
        if (f->nslots < MIN_SLOTS)
            f->nslots = MIN_SLOTS;
    }
    if (!(f->slot = calloc(f->nslots, sizeof *f->slot)))
        goto fail;
    for (size_t i = 0; i < f->nslots; i++) {
        f->slot[i].x = mnn_calloc_aligned(o->batch, o->fmt.nfeat * sizeof(float));
        f->slot[i].y = mnn_calloc_aligned(o->batch, sizeof(float));
        if (!f->slot[i].x || !f->slot[i].y)
            goto fail;
        if (o->keep_lines && (!(f->slot[i].loff = calloc(o->batch, sizeof(size_t))) ||
                              !(f->slot[i].llen = calloc(o->batch, sizeof(size_t)))))
            goto fail;
    }
    /* signals are for the main thread: the reader runs with them blocked */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int prc = pthread_create(&f->thread, NULL, reader, f);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc != 0)
        goto fail;
    f->started = 1;
    return f;
fail:
    feed_stop(f, NULL, NULL, 0);
    return NULL;
}

feed_batch_t *feed_next(feed_t *f, volatile sig_atomic_t *interrupt)
{
    pthread_mutex_lock(&f->mu);
    while (f->filled == 0) {
        if (interrupt && *interrupt) {
            pthread_mutex_unlock(&f->mu);
            return NULL;
        }
        /* wake up now and then to notice a signal */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    }
    feed_batch_t *b = &f->slot[f->head];
    pthread_mutex_unlock(&f->mu);
    return b;
}

void feed_release(feed_t *f, feed_batch_t *b)
{
    pthread_mutex_lock(&f->mu);
    /* a cut's parts were taken (copied): their buffers serve the next cut,
     * so that only the batches in flight hold parts */
    if (b->nparts)
        f->part_slots--;
    for (size_t k = 0; k < MNN_CUT_MAX_STAGES; k++) {
        mnn_part_t *p = &b->parts[k];
        if (!p->data)
            continue;
        if (!f->spare[k] || f->spare_cap[k] < p->cap) { /* the larger one stays */
            free(f->spare[k]);
            f->spare[k] = p->data;
            f->spare_cap[k] = p->cap;
        } else {
            free(p->data);
        }
        p->data = NULL;
        p->cap = 0;
    }
    f->head = (f->head + 1) % f->nslots;
    f->filled--;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

void feed_stop(feed_t *f, uint64_t *skipped, char *first, size_t firstlen)
{
    if (!f)
        return;
    if (f->started) {
        pthread_mutex_lock(&f->mu);
        f->stop = 1;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        /* wake the reader if it waits for input */
        (void)mnn_write_all(f->wake[1], "x", 1);
        pthread_join(f->thread, NULL);
    }
    if (skipped) {
        *skipped = f->skipped;
        snprintf(first, firstlen, "%s", f->first_skip);
    }
    for (size_t i = 0; f->slot && i < f->nslots; i++) {
        mnn_free(f->slot[i].x);
        mnn_free(f->slot[i].y);
        free(f->slot[i].cpos);
        free(f->slot[i].coff);
        free(f->slot[i].ctext);
        free(f->slot[i].ltext);
        free(f->slot[i].loff);
        free(f->slot[i].llen);
        for (size_t k = 0; k < MNN_CUT_MAX_STAGES; k++)
            mnn_part_free(&f->slot[i].parts[k]);
    }
    free(f->slot);
    for (size_t k = 0; k < MNN_CUT_MAX_STAGES; k++)
        free(f->spare[k]);
    mnn_lr_free(&f->lr);
    if (f->wake[0] >= 0) {
        close(f->wake[0]);
        close(f->wake[1]);
    }
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

void feed_stop_report(feed_t *f)
{
    char first[700];
    uint64_t skipped;
    feed_stop(f, &skipped, first, sizeof first);
    if (skipped)
        warnx_("skipped %llu bad record%s (first: %s)", (unsigned long long)skipped,
               skipped == 1 ? "" : "s", first);
}
