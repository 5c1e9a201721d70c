/* ckptw.c - the checkpoint writer thread of sgd-train. */
#include <config.h>

#include "ckptw.h"
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>

struct ckptw {
    ckptw_opts_t o;
    mnn_model_t snap_m;        /* the snapshot: valid while pending or writing */
    mnn_optim_t snap_o;
    mnn_train_state_t snap_st;
    char parent[4096];         /* lineage of the snapshot, "" for none */
    /* a cut's snapshot: has_cut, its parts' bytes (owned) and pending records */
    int has_cut;
    mnn_cut_ckpt_t cut;
    mnn_stage_part_t parts[MNN_CUT_MAX_STAGES];
    size_t part_cap[MNN_CUT_MAX_STAGES];
    float *px, *py;
    int pending;               /* a snapshot waits for the writer */
    int writing;               /* the writer reads the snapshot */
    int stop;
    int ready;                 /* the snapshot's pages are mapped */
    int taken;                 /* a snapshot was taken */
    uint64_t last_step;        /* newest snapshot taken */
    uint64_t last_cut;
    uint64_t ok_step;          /* newest checkpoint persisted */
    int any_ok;
    int failures;
    int lock_root, lock_local; /* the roots' locks, held until finish */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};


/* Bytes of the files in a directory. */
static uint64_t dir_bytes(const char *dir)
{
    uint64_t total = 0;
    DIR *dp = opendir(dir);
    struct dirent *de;
    struct stat sb;
    if (!dp)
        return 0;
    while ((de = readdir(dp)))
        if (fstatat(dirfd(dp), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode))
            total += (uint64_t)sb.st_size;
    closedir(dp);
    return total;
}

static void note_write(const char *what, const char *path, double secs)
{
    double mib = (double)dir_bytes(path) / 1048576.0;
    warnx_("%s %s: %.1f MiB in %.3f s (%.0f MiB/s)", what, path, mib, secs,
           secs > 0 ? mib / secs : 0.0);
}

static int nomem(mnn_diag_t *d)
{
    snprintf(d->msg, sizeof d->msg, "out of memory");
    return MNN_ENOMEM;
}

/* out = root/name; 0, or -1 (d filled) if it does not fit. */
static int step_path(char out[PATH_MAX], const char *root, const char *name, mnn_diag_t *d)
{
    if (snprintf(out, PATH_MAX, "%s/%s", root, name) < PATH_MAX)
        return 0;
    snprintf(d->msg, sizeof d->msg, "%s: path too long", root);
    return -1;
}

/* Writes the snapshot as the checkpoint directory dir. */
static int persist(ckptw_t *w, const char *dir, mnn_diag_t *d)
{
    int64_t created = cli_created(); /* checked at start: it does not die here */
    return mnn_ckpt_write_cut(dir, &w->snap_m, &w->snap_o, &w->snap_st,
                              w->parent[0] ? w->parent : NULL, created, 0,
                              w->has_cut ? &w->cut : NULL, d);
}

static int publish(ckptw_t *w, const char *root, const char *name, mnn_diag_t *d)
{
    size_t removed;
    int rc = mnn_ckpt_set_latest(root, name, d);
    if (rc == 0)
        rc = mnn_ckpt_prune(root, w->o.keep, &removed, d);
    return rc;
}

/* dir exists: 0 when it is a checkpoint directory whose files verify and
 * hold the snapshot's bytes (mnn_ckpt_same: hashed, not written), else an
 * error. */
static int same_checkpoint(ckptw_t *w, const char *dir, mnn_diag_t *d)
{
    struct stat sb;
    if (lstat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        snprintf(d->msg, sizeof d->msg, "%.400s exists and is not a checkpoint directory; not "
                 "replacing it", dir);
        return MNN_EEXIST;
    }
    return mnn_ckpt_same_cut(dir, &w->snap_m, &w->snap_o, &w->snap_st,
                             w->has_cut ? &w->cut : NULL, d);
}

/* Touches every page of a buffer that calloc() left unmapped. */
static void prefault(void *p, size_t bytes)
{
    const long page = sysconf(_SC_PAGESIZE);
    volatile char *c = p;
    for (size_t i = 0; i < bytes; i += page > 0 ? (size_t)page : 4096)
        c[i] = 0;
}

static void *writer(void *arg)
{
    ckptw_t *w = arg;
    /* the training comes first: this thread yields the CPU to it (Linux
     * gives each thread its own nice value) */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
    /* map the snapshot's pages here, beside the training, rather than in
     * the first snapshot (a few tenths of a second for 800 MB) */
    prefault(w->snap_m.params, w->snap_m.nparams * sizeof(float));
    float *const bufs[] = {w->snap_o.m1, w->snap_o.m2, w->snap_o.avg};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i])
            prefault(bufs[i], w->snap_o.n * sizeof(float));
    pthread_mutex_lock(&w->mu);
    w->ready = 1;
    pthread_cond_broadcast(&w->cv);
    for (;;) {
        while (!w->pending && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->pending)
            break;
        w->pending = 0;
        w->writing = 1;
        const uint64_t step = w->snap_st.step; /* the snapshot changes after writing */
        const uint64_t cut = w->has_cut ? w->cut.id : 0;
        pthread_mutex_unlock(&w->mu);

        char name[64];
        mnn_diag_t d = {""};
        mnn_ckpt_cut_name(name, sizeof name, step, cut);
        const char *first = w->o.local ? w->o.local : w->o.root;
        char durable[PATH_MAX], fast[PATH_MAX];
        double t0 = mono_now();
        struct stat sb;
        int rc = step_path(durable, w->o.root, name, &d) < 0 ||
                         step_path(fast, first, name, &d) < 0
                     ? MNN_EINVAL : 0;
        const int exists = rc == 0 && lstat(durable, &sb) == 0;
        if (exists && step == w->o.first_step && cut == w->o.first_cut && !w->o.fresh) {
            /* the checkpoint training was resumed from: never overwritten,
             * and nothing new to say */
            pthread_mutex_lock(&w->mu);
            w->writing = 0;
            w->ok_step = step;
            w->any_ok = 1;
            pthread_cond_broadcast(&w->cv);
            continue;
        }
        if (exists) {
            /* written before (a resumed training that replays its input
             * reaches the steps it had reached), or by another training */
            rc = same_checkpoint(w, durable, &d);
            if (rc == 0)
                rc = publish(w, w->o.root, name, &d);
        } else {
            if (rc == 0)
                rc = persist(w, fast, &d);
            if (rc == 0 && w->o.verbose)
                note_write("wrote", fast, mono_now() - t0);
            if (rc == 0)
                rc = publish(w, first, name, &d);
        }

        /* the snapshot is on disk: training may take the next one */
        pthread_mutex_lock(&w->mu);
        w->writing = 0;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);

        if (rc == 0 && w->o.local && !exists) {
            t0 = mono_now();
            rc = mnn_ckpt_copy(fast, durable, &d);
            if (rc == 0 && w->o.verbose)
                note_write("copied to", durable, mono_now() - t0);
            if (rc == 0)
                rc = publish(w, w->o.root, name, &d);
        }
        if (rc == 0) {
            printf("%s\n", durable);
            fflush(stdout);
        } else {
            warnx_("checkpoint %s failed: %s", name, d.msg[0] ? d.msg : mnn_strerror(rc));
        }
        pthread_mutex_lock(&w->mu);
        if (rc < 0)
            w->failures++;
        else {
            w->ok_step = step;
            w->any_ok = 1;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* A fresh training's root: its step numbers would meet another
 * training's checkpoints there, and latest would go back and forth. */
static int holds_none(const char *root, const char *opt, mnn_diag_t *d)
{
    uint64_t newest;
    int rc = mnn_ckpt_root_newest(root, &newest, d);
    if (rc > 0) {
        char name[32];
        mnn_ckpt_step_name(name, sizeof name, newest);
        snprintf(d->msg, sizeof d->msg, "%s %s: holds the checkpoints of a training already (the "
                 "newest: %s); go on from them with --resume %s, or remove them, or use another "
                 "%s", opt, root, name, root, opt);
        rc = MNN_EEXIST;
    }
    return rc;
}

static void close_locks(ckptw_t *w)
{
    if (w->lock_root >= 0)
        close(w->lock_root);
    if (w->lock_local >= 0)
        close(w->lock_local);
    w->lock_root = w->lock_local = -1;
}

ckptw_t *ckptw_start(const ckptw_opts_t *o, const mnn_model_t *m,
                     const mnn_optim_t *opt, mnn_diag_t *d)
{
    ckptw_t *w = calloc(1, sizeof *w);
    if (!w) {
        nomem(d);
        return NULL;
    }
    w->o = *o;
    (void)cli_created(); /* a bad SOURCE_DATE_EPOCH stops the program here */
    w->lock_root = w->lock_local = -1;
    if (mnn_ckpt_root_open(o->root, &w->lock_root, d) < 0 ||
        (o->local && mnn_ckpt_root_open(o->local, &w->lock_local, d) < 0) ||
        (o->fresh && (holds_none(o->root, "--ckpt-dir", d) < 0 ||
                      (o->local && holds_none(o->local, "--ckpt-local", d) < 0)))) {
        close_locks(w);
        free(w);
        return NULL;
    }
    int rc = mnn_model_init(&w->snap_m, &m->spec);
    if (rc == 0 && (rc = mnn_optim_init(&w->snap_o, &opt->spec, opt->n)) < 0)
        mnn_model_free(&w->snap_m);
    if (rc < 0) {
        snprintf(d->msg, sizeof d->msg, "cannot allocate the checkpoint snapshot: %s",
                 mnn_strerror(rc));
        close_locks(w);
        free(w);
        return NULL;
    }
    w->px = mnn_calloc_aligned(m->spec.batch, m->spec.input * sizeof(float));
    w->py = mnn_calloc_aligned(m->spec.batch, sizeof(float));
    if (!w->px || !w->py) {
        snprintf(d->msg, sizeof d->msg, "cannot allocate the checkpoint snapshot: %s",
                 mnn_strerror(MNN_ENOMEM));
        mnn_free(w->px);
        mnn_free(w->py);
        mnn_optim_free(&w->snap_o);
        mnn_model_free(&w->snap_m);
        close_locks(w);
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&w->thread, NULL, writer, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(d->msg, sizeof d->msg, "cannot start the checkpoint writer: %s", strerror(rc));
        mnn_free(w->px);
        mnn_free(w->py);
        mnn_optim_free(&w->snap_o);
        mnn_model_free(&w->snap_m);
        close_locks(w);
        free(w);
        return NULL;
    }
    return w;
}

/* Copies a cut into the snapshot (the writer is not reading it). */
static int copy_cut(ckptw_t *w, const mnn_cut_ckpt_t *c, size_t nfeat)
{
    w->has_cut = c != NULL;
    if (!c)
        return 0;
    w->cut = *c;
    w->cut.parts = w->parts;
    for (uint32_t i = 0; i < c->self; i++) {
        mnn_stage_part_t *p = &w->parts[i];
        const uint64_t n = c->parts[i].bytes;
        if (n > w->part_cap[i]) {
            void *nd = realloc((void *)p->data, (size_t)n);
            if (!nd)
                return -1;
            p->data = nd;
            w->part_cap[i] = (size_t)n;
        }
        if (n)
            memcpy((void *)p->data, c->parts[i].data, (size_t)n);
        p->bytes = n;
        p->index = c->parts[i].index;
        snprintf(p->program, sizeof p->program, "%s", c->parts[i].program);
    }
    if (c->pending) {
        memcpy(w->px, c->px, c->pending * nfeat * sizeof(float));
        memcpy(w->py, c->py, c->pending * sizeof(float));
    }
    w->cut.px = w->px;
    w->cut.py = w->py;
    return 0;
}

int ckptw_offer(ckptw_t *w, const mnn_model_t *m, const mnn_optim_t *opt,
                const mnn_train_state_t *st, const char *parent, const mnn_cut_ckpt_t *cut,
                int wait)
{
    pthread_mutex_lock(&w->mu);
    if ((w->pending || w->writing) && !wait) {
        pthread_mutex_unlock(&w->mu);
        if (!w->o.quiet)
            warnx_("checkpoint at step %llu skipped: the previous one is still being written",
                   (unsigned long long)st->step);
        return 0;
    }
    while (w->pending || w->writing || !w->ready)
        pthread_cond_wait(&w->cv, &w->mu);
    /* the writer is not reading the snapshot: refresh it (one memcpy) */
    double t0 = mono_now();
    mnn_model_copy_state(&w->snap_m, m);
    mnn_optim_copy_state(&w->snap_o, opt);
    if (w->o.verbose)
        warnx_("checkpoint at step %llu: snapshot in %.3f s",
               (unsigned long long)st->step, mono_now() - t0);
    w->snap_st = *st;
    snprintf(w->parent, sizeof w->parent, "%s", parent ? parent : "");
    if (copy_cut(w, cut, m->spec.input) < 0) {
        pthread_mutex_unlock(&w->mu);
        warnx_("checkpoint at step %llu skipped: out of memory for the cut's parts",
               (unsigned long long)st->step);
        return 0;
    }
    w->last_step = st->step;
    w->last_cut = cut ? cut->id : 0;
    w->taken = 1;
    w->pending = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 1;
}

int ckptw_any(const ckptw_t *w) { return w->taken; }
uint64_t ckptw_last_step(const ckptw_t *w) { return w->last_step; }
uint64_t ckptw_last_cut(const ckptw_t *w) { return w->last_cut; }

int ckptw_finish(ckptw_t *w, uint64_t *good_step)
{
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    int failures = w->failures;
    if (failures && !(w->any_ok && w->ok_step == w->last_step))
        failures = -failures; /* the newest did not make it */
    if (good_step)
        *good_step = w->any_ok ? w->ok_step : UINT64_MAX;
    close_locks(w);
    for (size_t i = 0; i < MNN_CUT_MAX_STAGES; i++)
        free((void *)w->parts[i].data);
    mnn_free(w->px);
    mnn_free(w->py);
    mnn_optim_free(&w->snap_o);
    mnn_model_free(&w->snap_m);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
    return failures;
}
