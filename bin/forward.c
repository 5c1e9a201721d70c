/* forward.c - infer's remote tier.  See forward.h.
 *
 * The co-process reads records, one per line, and answers one line per
 * record, in order: either all class probabilities or 'pred,confidence'
 * (more fields, such as a tier, are ignored).  After each batch of
 * forwarded records, and every min(64, window) of them, infer sends a
 * '#!flush' line; a mini-nn infer answers the records before it at once
 * and passes the line back in its place.  A co-process
 * that does so is checked: the number of answers between two markers must
 * be the number of records sent between them, and a batch's answers are
 * used only once its marker came back.  Whether markers come back is
 * learned from the first line of every new co-process, which answers a
 * marker sent before any record.
 *
 * A full window makes the main thread wait while its oldest record can
 * still be answered in time, then shed: a fast local tier keeps the pace
 * of a remote one that keeps up, and drops work for one that does not.
 *
 * Everything below the mutex is touched by both threads; the forwarding
 * thread drops it only around poll() and while emitting. */
#include <config.h>

#include "forward.h"
#include "cli.h"
#include "coproc.h"
#include "feed.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *const tier_names[TIER_N] = {
    "local", "remote", "fallback:timeout", "fallback:unreachable", "fallback:shed",
    "fallback:bad-answer"};

#define MARK UINT64_MAX         /* a '#!flush' marker in the in-flight list */
#define BACKOFF_MIN 0.1         /* seconds before the first restart */
#define BACKOFF_MAX 10.0
#define MAX_ANSWER (1 << 20)    /* longest answer line */
#define EMIT_CHUNK 256

typedef struct {
    uint64_t seq; /* queue sequence number, or MARK */
    double t;     /* when it was sent */
} flight_t;

struct fwd {
    fwd_opts_t o;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t room; /* the main thread waits here for the queue to shrink */
    int wake[2];         /* a byte wakes the forwarding thread */
    int done;            /* no more entries will come */
    /* the output queue, a ring; hseq is the sequence number of its head */
    fwd_ent_t *q;
    size_t qcap, qhead, qn;
    uint64_t hseq;
    /* what the co-process was sent and has not answered, in order */
    flight_t *fl;
    size_t flcap, flhead, fln, flrec;
    size_t unmarked; /* records sent since the last marker */
    /* answered records waiting for their batch's marker */
    flight_t *held;
    size_t heldn, heldcap;
    double last_heard; /* when the co-process last wrote, or was first owed */
    int wfail;         /* it stopped reading its input ... */
    double wfail_at;   /* ... at this time */
    /* bytes to send */
    char *sb;
    size_t slen, soff, scap;
    /* bytes received, not yet a whole line */
    char *rb;
    size_t rlen, rcap;
    /* the co-process: cp.to its stdin (a socket, for MSG_NOSIGNAL), cp.from
     * its stdout, both non-blocking */
    coproc_t cp;
    int alive, shut, echo; /* echo: -1 unknown, 0 markers do not come back, 1 they do */
    int ready;         /* it has written its first line: deadlines run */
    double started_at; /* when it was started */
    double restart_at, backoff;
    uint64_t restarts;
    int warned;     /* a bad answer of this co-process was reported */
    /* what became of the forwarded records, by tier (emitted ones) */
    uint64_t tiers[TIER_N];
};

/* The co-process's process group, for fwd_kill_child() in a signal
 * handler: set once it runs, cleared before it is reaped. */
static volatile pid_t child_group;

void fwd_kill_child(void)
{
    pid_t g = child_group;
    if (g > 0)
        kill(-g, SIGTERM);
}


static fwd_ent_t *ent(struct fwd *f, uint64_t seq)
{
    if (seq < f->hseq || seq - f->hseq >= f->qn)
        return NULL;
    return &f->q[(f->qhead + (size_t)(seq - f->hseq)) % f->qcap];
}

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    void *np = realloc(*p, nc * size);
    if (!np)
        return -1;
    *p = np;
    *cap = nc;
    return 0;
}

/* Makes room for one more element in a full ring of n elements of size
 * bytes from *head: its contents move, in order, to the front of an array
 * twice as large. */
static void ring_grow(void **buf, size_t *cap, size_t *head, size_t n, size_t size)
{
    size_t nc = *cap ? 2 * *cap : 256;
    char *nb = malloc(nc * size), *old = *buf;
    if (!nb)
        die(EXIT_RUNTIME, "out of memory");
    size_t first = n < *cap - *head ? n : *cap - *head; /* up to the ring's end */
    if (n) {
        memcpy(nb, old + *head * size, first * size);
        memcpy(nb + first * size, old, (n - first) * size);
    }
    free(old);
    *buf = nb;
    *cap = nc;
    *head = 0;
}

static void q_add(struct fwd *f, const fwd_ent_t *e)
{
    if (f->qn == f->qcap)
        ring_grow((void **)&f->q, &f->qcap, &f->qhead, f->qn, sizeof *f->q);
    f->q[(f->qhead + f->qn++) % f->qcap] = *e;
}

static void fl_add(struct fwd *f, uint64_t seq, double t)
{
    if (f->fln == f->flcap)
        ring_grow((void **)&f->fl, &f->flcap, &f->flhead, f->fln, sizeof *f->fl);
    f->fl[(f->flhead + f->fln++) % f->flcap] = (flight_t){seq, t};
    if (seq != MARK)
        f->flrec++;
}

static flight_t *fl_front(struct fwd *f) { return f->fln ? &f->fl[f->flhead] : NULL; }

static flight_t fl_pop(struct fwd *f)
{
    flight_t x = f->fl[f->flhead];
    f->flhead = (f->flhead + 1) % f->flcap;
    f->fln--;
    if (x.seq != MARK)
        f->flrec--;
    return x;
}

static void send_bytes(struct fwd *f, const char *p, size_t n)
{
    /* sent bytes go once they are half the buffer, so that it holds what
     * is in flight and no more */
    if (f->soff && f->soff >= f->slen / 2) {
        memmove(f->sb, f->sb + f->soff, f->slen - f->soff);
        f->slen -= f->soff;
        f->soff = 0;
    }
    if (grow((void **)&f->sb, &f->scap, f->slen + n, 1) < 0)
        die(EXIT_RUNTIME, "out of memory");
    memcpy(f->sb + f->slen, p, n);
    f->slen += n;
}

static void send_marker(struct fwd *f, double t)
{
    send_bytes(f, FEED_FLUSH "\n", sizeof FEED_FLUSH);
    fl_add(f, MARK, t);
    f->unmarked = 0;
}

/* An entry falls back to its local answer. */
static void fall_back(fwd_ent_t *e, tier_t why)
{
    e->wait = e->got = 0;
    e->pred = e->lpred;
    e->conf = e->lconf;
    e->tier = (uint8_t)why;
}

/* The co-process is gone, or is made to go: what it had not answered falls
 * back, and a restart is scheduled unless the input has ended. */
static void child_down(struct fwd *f, double t, const char *why)
{
    /* at the end of the input, a co-process that owed nothing and exited
     * well has just finished first */
    const int owed = f->flrec > 0 || f->heldn > 0;
    while (f->fln) {
        flight_t x = fl_pop(f);
        fwd_ent_t *e = x.seq == MARK ? NULL : ent(f, x.seq);
        if (e && e->wait)
            fall_back(e, TIER_UNREACHABLE);
    }
    for (size_t i = 0; i < f->heldn; i++) {
        fwd_ent_t *e = ent(f, f->held[i].seq);
        if (e && e->wait)
            fall_back(e, TIER_UNREACHABLE);
    }
    f->heldn = f->unmarked = 0;
    f->slen = f->soff = f->rlen = 0;
    char status[64] = "could not be started";
    int clean = 0;
    if (f->cp.pid > 0) {
        child_group = 0;
        /* at once (SIGKILL), the whole process group: sh, ssh and what
         * they started */
        int st = coproc_reap(&f->cp, 0, 0);
        coproc_how(&f->cp, status, sizeof status);
        clean = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    f->alive = 0;
    f->restart_at = t + f->backoff;
    if (!f->done)
        warnx_("forward: '%s' %s (%s); restarting in %.1f s", f->o.cmd, status, why,
               f->backoff);
    else if (owed || !clean || f->o.verbose)
        warnx_("forward: '%s' %s (%s)", f->o.cmd, status, why);
    f->backoff = fmin(2 * f->backoff, BACKOFF_MAX);
}

static void child_start(struct fwd *f, double t)
{
    /* its stdin a socket: send(MSG_NOSIGNAL) to a co-process that went
     * away fails, not kills */
    const char *argv[] = {f->o.cmd, NULL};
    if (coproc_start(&f->cp, argv, COPROC_SHELL | COPROC_PGROUP | COPROC_SOCKET) < 0) {
        child_down(f, t, strerror(errno));
        return;
    }
    fcntl(f->cp.to, F_SETFL, fcntl(f->cp.to, F_GETFL) | O_NONBLOCK);
    fcntl(f->cp.from, F_SETFL, fcntl(f->cp.from, F_GETFL) | O_NONBLOCK);
    child_group = f->cp.pid;
    f->alive = 1;
    f->shut = f->wfail = 0;
    f->echo = -1;
    f->warned = 0;
    f->ready = 0;
    f->started_at = t;
    send_marker(f, t); /* the probe: does this co-process pass markers back? */
}

/* The co-process wrote its first line (the probe's marker, or an answer):
 * it is up.  What was sent while it started (ssh connecting, a model
 * loading) is owed from now on, not from when it was sent. */
static void now_ready(struct fwd *f, double t)
{
    if (f->ready)
        return;
    f->ready = 1;
    for (size_t i = 0; i < f->fln; i++) {
        flight_t *x = &f->fl[(f->flhead + i) % f->flcap];
        if (x->t < t)
            x->t = t;
    }
    for (size_t i = 0; i < f->heldn; i++)
        if (f->held[i].t < t)
            f->held[i].t = t;
    f->last_heard = t;
    if (f->o.verbose)
        warnx_("forward: '%s' answered after %.3f s", f->o.cmd, t - f->started_at);
}

/* An answer: all K probabilities, or 'pred,confidence[,...]'. */
static int parse_answer(const char *s, size_t len, size_t K, uint32_t *pred, float *conf)
{
    const char *end = s + len, *p = s;
    float v[2] = {0, 0}, best = -1, sum = 0;
    size_t nf = 0, arg = 0;
    int all = 1;
    while (p <= end) {
        const char *c = memchr(p, ',', (size_t)(end - p));
        if (!c)
            c = end;
        float x;
        if (mnn_parse_float(p, c, &x) < 0) {
            if (nf < 2)
                return -1;
            all = 0; /* a tier or another annotation */
        } else {
            if (nf < 2)
                v[nf] = x;
            if (!(x >= 0 && x <= 1))
                all = 0;
            if (x > best) {
                best = x;
                arg = nf;
            }
            sum += x;
        }
        nf++;
        p = c + 1;
    }
    /* 'pred,confidence' first: with two classes '0,1' is that, not the
     * probabilities (0, 1); infer prints it so by default */
    const int pc = nf >= 2 && v[0] == floorf(v[0]) && v[0] >= 0 && v[0] < (float)K &&
                   v[1] >= 0 && v[1] <= 1;
    const int probs = all && nf == K && K >= 2 && fabsf(sum - 1) < 1e-3f;
    if (probs && !(pc && nf == 2)) {
        *pred = (uint32_t)arg;
        *conf = best;
        return 0;
    }
    if (!pc)
        return -1;
    *pred = (uint32_t)v[0];
    *conf = v[1];
    return 0;
}

static void hold(struct fwd *f, flight_t x)
{
    if (grow((void **)&f->held, &f->heldcap, f->heldn + 1, sizeof *f->held) < 0)
        die(EXIT_RUNTIME, "out of memory");
    f->held[f->heldn++] = x;
}

static void on_marker(struct fwd *f, double t)
{
    (void)t;
    if (f->echo == 0)
        return;
    f->echo = 1;
    /* records still before the marker were not answered: the batch is out
     * of step, and none of its answers can be trusted */
    int short_batch = 0;
    while (fl_front(f) && fl_front(f)->seq != MARK) {
        flight_t x = fl_pop(f);
        fwd_ent_t *e = ent(f, x.seq);
        if (e && e->wait)
            fall_back(e, TIER_BADANSWER);
        short_batch = 1;
    }
    if (fl_front(f))
        fl_pop(f);
    for (size_t i = 0; i < f->heldn; i++) {
        fwd_ent_t *e = ent(f, f->held[i].seq);
        if (!e || !e->wait)
            continue;
        if (short_batch)
            fall_back(e, TIER_BADANSWER);
        else {
            e->wait = e->got = 0;
            e->tier = TIER_REMOTE;
        }
    }
    f->heldn = 0;
    if (short_batch && (f->o.verbose || !f->warned++))
        warnx_("forward: '%s' answered fewer lines than it was sent records", f->o.cmd);
}

/* One line from the co-process.  Returns -1 when it is out of step. */
static int on_line(struct fwd *f, char *line, size_t len, double t)
{
    now_ready(f, t);
    if (len && line[len - 1] == '\r')
        len--;
    if (len && line[0] == '#') {
        if (len == sizeof FEED_FLUSH - 1 && !memcmp(line, FEED_FLUSH, len))
            on_marker(f, t);
        return 0;
    }
    if (f->echo < 0)
        f->echo = 0;
    if (!f->flrec)
        return -1; /* an answer to nothing: to a '#' line, or unasked */
    if (!f->echo)
        while (fl_front(f) && fl_front(f)->seq == MARK)
            fl_pop(f);
    if (!fl_front(f) || fl_front(f)->seq == MARK)
        return -1; /* more answers than records */
    flight_t x = fl_pop(f);
    fwd_ent_t *e = ent(f, x.seq);
    if (!e || !e->wait)
        return 0; /* it timed out */
    uint32_t pred;
    float conf;
    if (parse_answer(line, len, f->o.classes, &pred, &conf) < 0) {
        fall_back(e, TIER_BADANSWER);
        if (f->o.verbose || !f->warned++)
            warnx_("forward: '%s' answered '%.*s', not 'pred,confidence' or %zu "
                   "probabilities",
                   f->o.cmd, (int)(len > 60 ? 60 : len), line, f->o.classes);
        return 0;
    }
    e->pred = pred;
    e->conf = conf;
    f->backoff = BACKOFF_MIN;
    if (f->echo) {
        e->got = 1;
        hold(f, x);
    } else {
        e->wait = 0;
        e->tier = TIER_REMOTE;
    }
    return 0;
}

/* Reads what the co-process has written; 0 while it lives. */
static int child_read(struct fwd *f, double t)
{
    /* a bounded share of work per call, so that a chatty co-process cannot
     * keep this thread from its other duties */
    for (int reads = 0; reads < 16; reads++) {
        if (grow((void **)&f->rb, &f->rcap, f->rlen + 65536, 1) < 0)
            die(EXIT_RUNTIME, "out of memory");
        ssize_t r = read(f->cp.from, f->rb + f->rlen, f->rcap - f->rlen);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 0;
        if (r <= 0) {
            child_down(f, t, r == 0 ? "its output ended" : strerror(errno));
            return -1;
        }
        f->last_heard = t;
        size_t start = 0, scan = f->rlen;
        f->rlen += (size_t)r;
        char *nl;
        while ((nl = memchr(f->rb + scan, '\n', f->rlen - scan))) {
            size_t end = (size_t)(nl - f->rb);
            if (on_line(f, f->rb + start, end - start, t) < 0) {
                child_down(f, t, "it answered more lines than it was sent records");
                return -1;
            }
            start = scan = end + 1;
        }
        memmove(f->rb, f->rb + start, f->rlen - start);
        f->rlen -= start;
        if (f->rlen > MAX_ANSWER) {
            child_down(f, t, "it answered a line longer than 1 MiB");
            return -1;
        }
    }
    return 0;
}

static int child_write(struct fwd *f, double t)
{
    while (f->soff < f->slen) {
        ssize_t w = send(f->cp.to, f->sb + f->soff, f->slen - f->soff,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return 0;
        if (w < 0) {
            /* it stopped reading: what it had read may still be answered,
             * until its output ends */
            if (f->o.verbose)
                warnx_("forward: '%s' stopped reading (%s)", f->o.cmd, strerror(errno));
            f->shut = f->wfail = 1;
            f->wfail_at = t;
            f->slen = f->soff = 0;
            return -1;
        }
        f->soff += (size_t)w;
    }
    return 0;
}

/* Deadlines, in the order records were sent.  Returns the next one.  They
 * run once the co-process is up; until then its start timeout does. */
static double expire(struct fwd *f, double t)
{
    if (f->alive && !f->ready)
        return f->started_at + f->o.start_timeout;
    /* answered, waiting for their marker: sent before those in flight */
    for (size_t i = 0; i < f->heldn; i++) {
        fwd_ent_t *e = ent(f, f->held[i].seq);
        if (!e || !e->wait)
            continue;
        if (t < f->held[i].t + f->o.deadline)
            return f->held[i].t + f->o.deadline;
        fall_back(e, TIER_TIMEOUT);
    }
    for (size_t i = 0; i < f->fln; i++) {
        flight_t *x = &f->fl[(f->flhead + i) % f->flcap];
        fwd_ent_t *e = x->seq == MARK ? NULL : ent(f, x->seq);
        if (!e || !e->wait)
            continue;
        if (t < x->t + f->o.deadline)
            return x->t + f->o.deadline;
        fall_back(e, TIER_TIMEOUT);
    }
    return INFINITY;
}

/* A co-process that has written nothing for this long while it owed
 * answers is restarted. */
static double hang_after(const struct fwd *f) { return fmax(10 * f->o.deadline, 2.0); }

/* The oldest record the co-process has not answered. */
static double oldest_record(struct fwd *f)
{
    for (size_t i = 0; i < f->fln; i++) {
        flight_t *x = &f->fl[(f->flhead + i) % f->flcap];
        if (x->seq != MARK)
            return x->t;
    }
    return INFINITY;
}

static void emit_ready(struct fwd *f)
{
    fwd_ent_t out[EMIT_CHUNK];
    for (;;) {
        size_t n = 0;
        while (n < EMIT_CHUNK && f->qn && !f->q[f->qhead].wait) {
            out[n++] = f->q[f->qhead];
            f->qhead = (f->qhead + 1) % f->qcap;
            f->qn--;
            f->hseq++;
        }
        if (!n)
            return;
        pthread_cond_broadcast(&f->room);
        for (size_t i = 0; i < n; i++)
            if (!out[i].comment)
                f->tiers[out[i].tier]++;
        pthread_mutex_unlock(&f->mu);
        for (size_t i = 0; i < n; i++) {
            f->o.emit(f->o.ctx, &out[i]);
            free(out[i].comment);
        }
        pthread_mutex_lock(&f->mu);
    }
}

/* After the input: let the co-process finish on its own, then stop it. */
static void child_stop(struct fwd *f)
{
    if (!f->alive)
        return;
    /* from here on a fatal signal leaves it to its end of input: it may be
     * reaped below, and its group must not be signalled after that */
    child_group = 0;
    /* an end of input in the middle of a record would be a bad record */
    const int whole = f->soff == f->slen;
    if (!f->shut && whole)
        shutdown(f->cp.to, SHUT_WR);
    /* what it writes meanwhile is read and dropped */
    int st = coproc_reap(&f->cp, whole && !f->flrec && !f->heldn ? 2.0 : 0.2, 0.5);
    if (f->o.verbose && st != -1) {
        char status[64];
        warnx_("forward: '%s' %s", f->o.cmd, coproc_how(&f->cp, status, sizeof status));
    }
    f->alive = 0;
}

static void *run(void *arg)
{
    struct fwd *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        double t = mono_now();
        if (!f->alive && !f->done && t >= f->restart_at) {
            f->restarts++;
            child_start(f, t);
        }
        /* (answers that came while this thread was writing stdout were
         * read after the poll below, before this) */
        const int owed = f->flrec || f->heldn;
        if (f->alive && !f->ready && t >= f->started_at + f->o.start_timeout) {
            /* records owed: it did not come up; none: it had its time (a
             * co-process that does not pass markers back says nothing
             * until it is sent a record) */
            char why[96];
            snprintf(why, sizeof why, "no first answer within --start-timeout %g s",
                     f->o.start_timeout);
            if (owed)
                child_down(f, t, why);
            else
                now_ready(f, t);
        }
        double next = expire(f, t);
        if (f->alive && f->ready && owed && t - f->last_heard > hang_after(f)) {
            char why[64];
            snprintf(why, sizeof why, "no answer for %.1f s", hang_after(f));
            child_down(f, t, why);
        }
        /* what it read may still be answered, for a deadline */
        if (f->alive && f->wfail && (!f->flrec || t - f->wfail_at > f->o.deadline))
            child_down(f, t, "it stopped reading");
        if (f->alive && f->done && !f->shut && f->soff == f->slen) {
            shutdown(f->cp.to, SHUT_WR);
            f->shut = 1;
        }
        double t_emit = mono_now();
        emit_ready(f);
        /* time spent writing stdout is not the co-process's silence */
        f->last_heard += mono_now() - t_emit;
        if (f->done && f->qn == 0)
            break;
        struct pollfd pf[3];
        int n = 0;
        pf[n++] = (struct pollfd){.fd = f->wake[0], .events = POLLIN};
        int ifrom = -1;
        if (f->alive) {
            ifrom = n;
            pf[n++] = (struct pollfd){.fd = f->cp.from, .events = POLLIN};
            if (f->soff < f->slen)
                pf[n++] = (struct pollfd){.fd = f->cp.to, .events = POLLOUT};
        }
        if (f->alive && f->ready && (f->flrec || f->heldn))
            next = fmin(next, f->last_heard + hang_after(f));
        if (!f->alive && !f->done)
            next = fmin(next, f->restart_at);
        int ms = -1;
        if (next < INFINITY)
            ms = (int)fmin(ceil((next - t) * 1000), 60000);
        pthread_mutex_unlock(&f->mu);
        int pr = poll(pf, (nfds_t)n, ms < 0 ? -1 : ms);
        pthread_mutex_lock(&f->mu);
        if (pr < 0)
            continue;
        t = mono_now();
        if (pf[0].revents) {
            char junk[64];
            while (read(f->wake[0], junk, sizeof junk) > 0)
                ;
        }
        if (ifrom >= 0 && pf[ifrom].revents && f->alive)
            child_read(f, t);
        pthread_cond_broadcast(&f->room); /* the window may have room */
        /* a write that would block costs one system call */
        if (f->alive && f->soff < f->slen)
            child_write(f, t);
    }
    child_stop(f);
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static void wake(struct fwd *f)
{
    /* a full (non-blocking) pipe has a byte waiting already */
    (void)mnn_write_all(f->wake[1], "", 1);
}

fwd_t *fwd_start(const fwd_opts_t *o)
{
    struct fwd *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->o = *o;
    if (f->o.mark_every > f->o.window)
        f->o.mark_every = f->o.window;
    f->cp.to = f->cp.from = f->wake[0] = f->wake[1] = -1;
    f->cp.pid = -1;
    f->backoff = BACKOFF_MIN;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->room, &ca);
    pthread_condattr_destroy(&ca);
    if (pipe2(f->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        free(f);
        return NULL;
    }
    child_start(f, mono_now());
    /* the thread writes stdout: a reader that went away ends infer
     * quietly through SIGPIPE, as it does without --forward */
    sigset_t all, old;
    sigfillset(&all);
    sigdelset(&all, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&f->thread, NULL, run, f);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        f->done = 1;
        child_stop(f);
        errno = rc;
        return NULL;
    }
    return f;
}

/* A full window: while its oldest record may still be answered in time,
 * wait for room (so that a fast local tier does not shed what a remote one
 * that keeps up would answer); once that record is late, shed. */
static void wait_for_room(struct fwd *f)
{
    /* markers come at least every window records (mark_every), so the
     * co-process can answer all that fills the window */
    wake(f);
    while (f->alive && !f->shut && f->flrec >= f->o.window) {
        /* a co-process still starting: its records' clocks have not begun */
        double limit = f->ready ? oldest_record(f) + f->o.deadline
                                : f->started_at + f->o.start_timeout + f->o.deadline;
        if (mono_now() >= limit)
            break;
        struct timespec ts = {.tv_sec = (time_t)limit,
                              .tv_nsec = (long)((limit - floor(limit)) * 1e9)};
        pthread_cond_timedwait(&f->room, &f->mu, &ts);
    }
}

void fwd_push(fwd_t *f, fwd_ent_t *e, const char *line, size_t len)
{
    pthread_mutex_lock(&f->mu);
    e->wait = e->got = 0;
    if (line && f->alive && !f->shut && f->flrec >= f->o.window)
        wait_for_room(f);
    if (line) {
        if (!f->alive || f->shut)
            fall_back(e, TIER_UNREACHABLE);
        else if (f->flrec >= f->o.window)
            fall_back(e, TIER_SHED);
        else {
            double t = mono_now();
            if (!f->flrec && !f->heldn)
                f->last_heard = t; /* owed from now on */
            send_bytes(f, line, len);
            send_bytes(f, "\n", 1);
            e->wait = 1;
            e->t_fwd = t;
            fl_add(f, f->hseq + f->qn, t);
            if (++f->unmarked >= f->o.mark_every && f->echo != 0)
                send_marker(f, t);
        }
    }
    q_add(f, e);
    pthread_mutex_unlock(&f->mu);
}

void fwd_batch_end(fwd_t *f)
{
    pthread_mutex_lock(&f->mu);
    if (f->alive && f->unmarked && f->echo != 0)
        send_marker(f, mono_now());
    wake(f);
    while (f->qn > f->o.queue)
        pthread_cond_wait(&f->room, &f->mu);
    pthread_mutex_unlock(&f->mu);
}

void fwd_finish(fwd_t *f, uint64_t *restarts)
{
    pthread_mutex_lock(&f->mu);
    if (f->alive && f->unmarked && f->echo != 0)
        send_marker(f, mono_now());
    f->done = 1;
    pthread_mutex_unlock(&f->mu);
    wake(f);
    pthread_join(f->thread, NULL);
    if (restarts)
        *restarts = f->restarts;
    /* a run that answered most forwarded records locally says so */
    uint64_t sent = 0, back = 0;
    for (int t = TIER_REMOTE; t < TIER_N; t++) {
        sent += f->tiers[t];
        back += t == TIER_REMOTE ? 0 : f->tiers[t];
    }
    if (back && (2 * back > sent || f->o.verbose))
        warnx_("forward: %llu of %llu forwarded records fell back to the local answer "
               "(%llu timed out, %llu unreachable, %llu shed, %llu bad answers)%s",
               (unsigned long long)back, (unsigned long long)sent,
               (unsigned long long)f->tiers[TIER_TIMEOUT],
               (unsigned long long)f->tiers[TIER_UNREACHABLE],
               (unsigned long long)f->tiers[TIER_SHED],
               (unsigned long long)f->tiers[TIER_BADANSWER],
               f->tiers[TIER_TIMEOUT] + f->tiers[TIER_SHED] > back / 2
                   ? "; a longer --deadline or a larger --window may help" : "");
    close(f->wake[0]);
    close(f->wake[1]);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->room);
    free(f->q);
    free(f->fl);
    free(f->held);
    free(f->sb);
    free(f->rb);
    free(f);
}
