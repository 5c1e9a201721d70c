/* infer-run.c - infer's stream: batches from the reader (feed.c), the
 * models' answers, the unsure records routed to the forwarder (forward.c),
 * and the one output path that every answer and every '#' line takes, in
 * input order, whichever tier answered. */
#include <config.h>

#include "infer.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

volatile sig_atomic_t hup;

/* ---- the output path ------------------------------------------------------- */

typedef struct {
    stats_t *st;  /* NULL: no --eval */
    int tiers;    /* 'pred,confidence,tier' (--forward) */
    int proba;    /* every class probability */
    int classify; /* else one value per record */
    int linebuf;
    size_t K;
} out_t;

/* A '#' line, in its place. */
static void out_comment(const out_t *o, const char *text, int flush)
{
    fputs(text, stdout);
    fputc('\n', stdout);
    if (flush || o->linebuf)
        fflush(stdout);
}

/* A record's answer: e (a classifier's, perhaps a remote one), p its
 * probabilities or its value (NULL when it was forwarded: --proba and
 * regression never are), y its target (regression). */
static void out_record(const out_t *o, const fwd_ent_t *e, const float *p, float y)
{
    if (!o->classify) {
        printf("%.9g\n", (double)p[0]);
        if (o->st)
            stats_value(o->st, (double)p[0], (double)y, mono_now());
    } else {
        if (o->proba && p)
            for (size_t k = 0; k < o->K; k++)
                printf(k ? ",%.9g" : "%.9g", (double)p[k]);
        else
            printf("%u,%.9g", e->pred, (double)e->conf);
        if (o->tiers)
            printf(",%s", tier_names[e->tier]);
        putchar('\n');
        if (o->st)
            stats_record(o->st, e, mono_now());
    }
    if (o->linebuf)
        fflush(stdout);
}

/* The forwarding thread's output, in input order. */
static void emit(void *ctx, const fwd_ent_t *e)
{
    const out_t *o = ctx;
    if (e->comment)
        out_comment(o, e->comment, e->flush);
    else
        out_record(o, e, NULL, 0);
    out_check();
}

static int is_flush_line(const char *s)
{
    size_t n = strlen(s);
    if (n && s[n - 1] == '\r')
        n--;
    return n == sizeof FEED_FLUSH - 1 && !memcmp(s, FEED_FLUSH, n);
}

/* ---- the forwarder ----------------------------------------------------------- */

/* A fatal signal while forwarding: the co-process goes too, then infer
 * ends as the signal would have ended it. */
static void on_fatal(int sig)
{
    fwd_kill_child();
    signal(sig, SIG_DFL);
    raise(sig);
}

static fwd_t *start_forward(const run_opts_t *o, size_t K, out_t *out)
{
    fwd_opts_t fwo = {.cmd = o->forward, .window = o->window,
                      .deadline = (double)o->deadline_ms / 1000.0,
                      .start_timeout = o->start_timeout, .classes = K,
                      .queue = 4 * o->batch + 4 * o->window, .mark_every = FWD_MARK_EVERY,
                      .verbose = o->verbose, .emit = emit, .ctx = out};
    fwd_t *fw = fwd_start(&fwo);
    if (!fw)
        die(EXIT_RUNTIME, "--forward: cannot start: %s", strerror(errno));
    atexit(fwd_kill_child); /* an exit on an error does not orphan it */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sigemptyset(&sa.sa_mask);
    const int fatal[] = {SIGINT, SIGTERM, SIGPIPE, SIGQUIT};
    for (size_t i = 0; i < sizeof fatal / sizeof *fatal; i++) {
        struct sigaction old;
        /* a signal ignored on purpose stays ignored */
        if (sigaction(fatal[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(fatal[i], &sa, NULL);
    }
    return fw;
}

/* ---- the loop ----------------------------------------------------------------- */

/* --forwarded FILE: the records forwarded, appended as they came, one
 * write(2) of whole lines per batch. */
typedef struct {
    const char *path;
    int fd;
    char *buf;
    size_t len, cap;
} fwdlog_t;

/* Opens FILE for appending (created 0666 & ~umask); a last line that an
 * earlier run left without its newline (killed mid-write) is ended first,
 * so that no record is glued to it.  A FIFO must have its reader already
 * (no waiting for one before the first record). */
static void fwdlog_open(fwdlog_t *l, const char *path, int quiet)
{
    l->path = path;
    l->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0666);
    if (l->fd < 0 && errno == ENXIO)
        die(EXIT_RUNTIME, "--forwarded %s: a FIFO that nothing reads", path);
    struct stat sb;
    if (l->fd < 0 || fstat(l->fd, &sb) != 0 ||
        fcntl(l->fd, F_SETFL, fcntl(l->fd, F_GETFL) & ~O_NONBLOCK) != 0)
        die(EXIT_RUNTIME, "--forwarded %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return; /* a FIFO, a terminal: written as it is */
    char last = '\n';
    if (sb.st_size > 0) {
        /* the same file (not one put in its place), its last byte */
        struct stat rb;
        int rfd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (rfd < 0 || fstat(rfd, &rb) != 0)
            die(EXIT_RUNTIME, "--forwarded %s: %s", path, strerror(errno));
        if (rb.st_dev != sb.st_dev || rb.st_ino != sb.st_ino ||
            pread(rfd, &last, 1, sb.st_size - 1) != 1)
            die(EXIT_RUNTIME, "--forwarded %s: changed while it was opened", path);
        close(rfd);
    }
    if (last != '\n') {
        if (!quiet)
            warnx_("--forwarded %s: its last line had no newline (a run cut short): ended "
                   "before the records of this one", path);
        if (mnn_write_all(l->fd, "\n", 1) < 0)
            die(EXIT_RUNTIME, "--forwarded %s: %s", path, strerror(errno));
    }
}

static void fwdlog_add(fwdlog_t *l, const char *line, size_t len)
{
    if (l->len + len + 1 > l->cap) {
        l->cap = grow_cap(l->cap, l->len + len + 1);
        l->buf = xrealloc(l->buf, l->cap, 1);
    }
    memcpy(l->buf + l->len, line, len);
    l->buf[l->len + len] = '\n';
    l->len += len + 1;
}

static void fwdlog_flush(fwdlog_t *l)
{
    if (l->fd < 0 || !l->len)
        return;
    if (mnn_write_all(l->fd, l->buf, l->len) < 0)
        die(EXIT_RUNTIME, "--forwarded %s: %s", l->path, strerror(errno));
    l->len = 0;
}

static void fwdlog_close(fwdlog_t *l)
{
    fwdlog_flush(l);
    if (l->fd >= 0 && close(l->fd) != 0)
        die(EXIT_RUNTIME, "--forwarded %s: %s", l->path, strerror(errno));
    l->fd = -1;
    free(l->buf);
}

/* One batch: its '#' lines and answers in order, each to the forwarder
 * (which emits them in order once the remote answers are in) or straight
 * to the output path. */
static void answer(const run_opts_t *o, models_t *ms, fwd_t *fw, const out_t *out,
                   const feed_batch_t *b, const float *probs, const uint8_t *stage,
                   double t_in, fwdlog_t *log)
{
    const size_t K = out->K;
    size_t ci = 0;
    for (size_t i = 0; i <= b->n; i++) {
        for (; ci < b->ncom && b->cpos[ci] <= i; ci++) {
            const char *text = b->ctext + b->coff[ci];
            if (fw) {
                fwd_ent_t e = {.comment = strdup(text), .flush = is_flush_line(text)};
                if (!e.comment)
                    die(EXIT_RUNTIME, "out of memory");
                fwd_push(fw, &e, NULL, 0);
            } else
                out_comment(out, text, 0);
        }
        if (i == b->n)
            break;
        const float *p = probs + i * K;
        fwd_ent_t e = {.label = -1, .tier = TIER_LOCAL, .stage = stage[i], .t_in = t_in};
        if (out->classify) {
            if (!o->no_label)
                e.label = (int32_t)b->y[i]; /* a class id: the reader checked it */
            const size_t best = mnn_argmax(p, K);
            e.pred = e.lpred = (uint32_t)best;
            e.conf = e.lconf = p[best];
            e.crit = fw || o->coverage ? mnn_confidence(p, K, ms->e.crit) : 0;
        }
        if (fw) {
            int send = e.crit < o->threshold;
            if (send && log->fd >= 0)
                fwdlog_add(log, b->ltext + b->loff[i], b->llen[i]);
            fwd_push(fw, &e, send ? b->ltext + b->loff[i] : NULL, send ? b->llen[i] : 0);
        } else
            out_record(out, &e, p, b->y[i]);
    }
}

void run(models_t *ms, run_opts_t *o)
{
    const mnn_spec_t *s0 = &ms->m[0].spec;
    const size_t C = s0->input, K = s0->outputs, batch = o->batch;
    float *probs = mnn_calloc_aligned(batch, K * sizeof(float));
    uint8_t *stage = calloc(batch, 1);
    if (!probs || !stage)
        die(EXIT_RUNTIME, "out of memory");
    out_t out = {.tiers = o->forward != NULL, .proba = o->proba,
                 .classify = s0->loss == MNN_LOSS_XENT, .linebuf = o->linebuf, .K = K};
    feed_opts_t fo = {.name = "stdin", .batch = batch, .skip_errors = o->skip,
                      .keep_comments = 1, .eager = o->linebuf, .verbose = o->verbose,
                      .keep_lines = o->forward != NULL};
    fo.fmt.nfeat = C;
    fo.fmt.has_label = !o->no_label;
    fo.fmt.classes = out.classify ? K : 0;
    if (!isnan(o->fraction))
        o->threshold = threshold_for_fraction(o->caldata, o->fraction, ms, &fo, probs, stage,
                                              o->verbose);
    if (o->eval)
        out.st = stats_new(K, out.classify, o->coverage != NULL);
    fwdlog_t log = {.fd = -1};
    if (o->forwarded)
        fwdlog_open(&log, o->forwarded, o->quiet);
    fwd_t *fw = o->forward ? start_forward(o, K, &out) : NULL;
    feed_t *feed = feed_start(STDIN_FILENO, &fo);
    if (!feed)
        die(EXIT_RUNTIME, "cannot start the reader: %s", strerror(errno ? errno : ENOMEM));

    uint64_t records = 0;
    for (;;) {
        if (hup)
            models_reload(ms, o->verbose);
        feed_batch_t *b = feed_next(feed, &hup);
        if (!b)
            continue;
        if (hup) /* it came while the batch was read: answer it with the new models */
            models_reload(ms, o->verbose);
        const double t_in = mono_now();
        if (!records && out.st)
            stats_start(out.st, t_in);
        int rc = models_predict(ms, b, o->linebuf, probs, stage);
        if (rc < 0)
            die(EXIT_RUNTIME, "inference failed: %s", mnn_strerror(rc));
        answer(o, ms, fw, &out, b, probs, stage, t_in, &log);
        fwdlog_flush(&log);
        records += b->n;
        if (fw)
            fwd_batch_end(fw);
        else {
            if (b->flush)
                fflush(stdout);
            out_check();
        }
        int end = b->end;
        if (b->error) {
            /* the lines of the records before it are written first */
            if (fw)
                fwd_finish(fw, NULL);
            fwdlog_close(&log);
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
    fwdlog_close(&log);
    out_close();
    feed_stop_report(feed);
    if (out.st && stats_count(out.st) == 0)
        die(EXIT_RUNTIME, "stdin: no records to evaluate");
    if (out.st && !o->quiet)
        stats_report(out.st, ms);
    if (o->stats_json)
        stats_write_json(o->stats_json, out.st, ms, restarts);
    if (o->coverage)
        stats_write_coverage(o->coverage, out.st);
    if (o->verbose) {
        warnx_("%llu records", (unsigned long long)records);
        if (fw)
            warnx_("forward: %llu restart%s", (unsigned long long)restarts,
                   restarts == 1 ? "" : "s");
        report_peak_rss();
    }
    stats_free(out.st);
    mnn_free(probs);
    free(stage);
}
