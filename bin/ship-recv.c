/* ship-recv.c - the receiving end of ckpt-ship (--receive DIR): partial
 * files named by what is offered, resumed at the bytes they hold, checked
 * against the sender's size and XXH3, synced and renamed into place under
 * DIR's lock, never over another file. */
#include <config.h>

#include "cli.h"
#include "ship.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


static int out = STDOUT_FILENO; /* where the answers go */

/* ======================================================================
 * The receiving end
 * ====================================================================== */

typedef struct {
    const char *dir;
    int dfd;
    input_t in;
} receiver_t;


/* A listing of the directory dfd, from its start; NULL on error. */
static DIR *list_dir(int dfd)
{
    int fd = dup(dfd);
    DIR *dp = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dp && fd >= 0)
        close(fd);
    if (dp)
        rewinddir(dp); /* the duplicate shares dfd's position */
    return dp;
}

/* Removes partial files nobody has resumed for a week. */
static void drop_stale_parts(int dfd)
{
    DIR *dp = list_dir(dfd);
    struct dirent *de;
    struct stat sb;
    time_t t = time(NULL);
    if (!dp)
        return;
    while ((de = readdir(dp)))
        if (!strncmp(de->d_name, PART_PREFIX, strlen(PART_PREFIX)) &&
            fstatat(dfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode) &&
            t - sb.st_mtime > PART_MAX_AGE)
            unlinkat(dfd, de->d_name, 0);
    closedir(dp);
}

/* The receiver tells a waiting sender it is still at work (long hashes),
 * with the bytes done so far: the sender's --timeout measures time without
 * progress, so a receiver that only says WAIT does not hold it forever. */
static double last_word;
static uint64_t work_done; /* bytes hashed or checked, ever: only grows */

static void keepalive(void)
{
    double t = mono_now();
    if (t - last_word >= 2.0) {
        say(out, "WAIT %" PRIu64, work_done);
        last_word = t;
    }
}

/* XXH3 of fd's first n bytes into st (which the caller has reset). */
static int hash_prefix(int fd, uint64_t n, mnn_hash_t *st)
{
    char *buf = malloc(CHUNK);
    uint64_t off = 0;
    if (!buf)
        return -1;
    last_word = mono_now();
    while (off < n) {
        keepalive();
        size_t want = n - off < CHUNK ? (size_t)(n - off) : CHUNK;
        ssize_t k = pread(fd, buf, want, (off_t)off);
        if (k <= 0) {
            if (k < 0 && errno == EINTR)
                continue;
            free(buf);
            if (k == 0)
                errno = EIO;
            return -1;
        }
        mnn_hash_update(st, buf, (size_t)k);
        off += (uint64_t)k;
        work_done += (uint64_t)k;
    }
    free(buf);
    return 0;
}

/* Hash of the file name in dfd, or -1. */
static int hash_at(int dfd, const char *name, char hex[17], uint64_t *bytes)
{
    struct stat sb;
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return -1;
    mnn_hash_t *st = mnn_hash_new();
    int rc = !st || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) ? -1 : 0;
    if (rc == 0) {
        mnn_hash_reset(st);
        rc = hash_prefix(fd, (uint64_t)sb.st_size, st);
        *bytes = (uint64_t)sb.st_size;
        mnn_hash_hex(mnn_hash_digest(st), hex);
    }
    mnn_hash_free(st);
    close(fd);
    return rc;
}

/* The archive's top directory plus ".tar.zst", for a name-less offer. */
typedef struct {
    char top[NAME_MAX_ + 1];
    int bad;
} first_entry_t;

static int first_entry(void *ctx, const char *path, uint64_t size, char type)
{
    (void)size;
    (void)type;
    first_entry_t *f = ctx;
    size_t n = strcspn(path, "/");
    if (n == 0 || n >= sizeof f->top - 8)
        f->bad = 1;
    else {
        memcpy(f->top, path, n);
        f->top[n] = 0;
    }
    return 1; /* the first entry is enough */
}

/* A stream's end cannot be told from a sender that stopped early, so a
 * stream (no size offered) is published only as a whole checkpoint archive:
 * every file read and checked against its manifest. */
static int verify_archive(int fd, char *why, size_t wsize)
{
    mnn_diag_t d = {""};
    last_word = mono_now();
    say(out, "WAIT %" PRIu64, ++work_done);
    if (lseek(fd, 0, SEEK_SET) < 0 || mnn_ckpt_unpack(fd, "the stream", NULL, NULL, NULL, &d) < 0) {
        setmsg(why, wsize, "not a whole checkpoint archive: %s", d.msg[0] ? d.msg : strerror(errno));
        return -1;
    }
    return 0;
}

static int name_from_archive(int fd, char *name, size_t size, char *why, size_t wsize)
{
    first_entry_t f = {"", 0};
    mnn_diag_t d = {""};
    if (lseek(fd, 0, SEEK_SET) < 0 || mnn_ckpt_list(fd, "the archive", first_entry, &f, &d) < 0) {
        setmsg(why, wsize, "no name given, and the data is not a checkpoint archive (%s)",
                 d.msg[0] ? d.msg : "unreadable");
        return -1;
    }
    snprintf(name, size, "%s.tar.zst", f.top);
    if (f.bad || !f.top[0] || !name_ok(name) || !strcmp(f.top, "..")) {
        setmsg(why, wsize, "no name given, and the archive's first entry gives none");
        return -1;
    }
    return 0;
}

/* An archive's place in the order of checkpoints: by step, then cut. */
typedef struct {
    uint64_t step, cut;
} arname_t;

static int newer(const arname_t *a, const arname_t *b)
{
    return a->step != b->step ? a->step > b->step : a->cut > b->cut;
}

/* Keeps the newest `keep` step-*.tar.zst archives of dfd, `shipped` (the
 * archive just acknowledged, whatever its step) and latest's target. */
static void prune_archives(receiver_t *r, size_t keep, const char *shipped)
{
    DIR *dp = list_dir(r->dfd);
    struct dirent *de;
    arname_t *steps = NULL, s;
    size_t n = 0, cap = 0;
    if (!dp)
        return;
    while ((de = readdir(dp)))
        if (archive_step(de->d_name, &s.step, &s.cut)) {
            if (n == cap) {
                arname_t *ns = realloc(steps, (cap = cap ? 2 * cap : 64) * sizeof *ns);
                if (!ns) { /* a partial list could name new ones as old */
                    closedir(dp);
                    free(steps);
                    return;
                }
                steps = ns;
            }
            steps[n++] = s;
        }
    closedir(dp);
    /* newest first */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && newer(&steps[j], &steps[j - 1]); j--) {
            arname_t t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    char target[NAME_MAX_ + 1] = "";
    ssize_t k = readlinkat(r->dfd, "latest", target, sizeof target - 1);
    target[k > 0 ? k : 0] = 0;
    for (size_t i = keep; i < n; i++) {
        char base[64], name[80];
        mnn_ckpt_cut_name(base, sizeof base, steps[i].step, steps[i].cut);
        snprintf(name, sizeof name, "%s.tar.zst", base);
        if (strcmp(name, shipped) && strcmp(name, target) && unlinkat(r->dfd, name, 0) == 0 &&
            opt.verbose)
            warnx_("%s: removed %s (--keep %zu)", r->dir, name, keep);
    }
    free(steps);
    mnn_fsync_dirfd(r->dfd);
}

/* Points DIR/latest at name if it is the newest step archive there. */
static int update_latest(receiver_t *r, const char *name, char *why, size_t wsize)
{
    arname_t got, cur;
    char target[NAME_MAX_ + 1];
    if (!archive_step(name, &got.step, &got.cut))
        return 0;
    ssize_t k = readlinkat(r->dfd, "latest", target, sizeof target - 1);
    if (k > 0) {
        target[k] = 0;
        if (archive_step(target, &cur.step, &cur.cut) && newer(&cur, &got))
            return 0;
    }
    mnn_diag_t d = {""};
    if (mnn_ckpt_set_latest(r->dir, name, &d) < 0) {
        setmsg(why, wsize, "%s", d.msg);
        return -1;
    }
    return 0;
}

/* DIR's lock, which one receiver at a time holds while it publishes: its
 * wait is bounded by --timeout too.  0, or -1 with why. */
static int lock_dir(receiver_t *r, char *why, size_t wsize)
{
    const double until = deadline(opt.timeout ? opt.timeout : 60);
    while (flock(r->dfd, LOCK_EX | LOCK_NB) != 0) {
        if ((errno != EWOULDBLOCK && errno != EINTR) || mono_now() > until) {
            setmsg(why, wsize, "%s: %s", r->dir, errno == EWOULDBLOCK
                       ? "locked by another ckpt-ship for longer than --timeout"
                       : strerror(errno));
            return -1;
        }
        keepalive();
        sleep_s(0.05);
    }
    return 0;
}

/* After name is in DIR (just now or before): latest and --keep, under
 * DIR's lock.  Done again for an archive already there, so that a
 * receiver that died in between leaves nothing undone. */
static int finish(receiver_t *r, const char *name, char *why, size_t wsize)
{
    if (lock_dir(r, why, wsize) < 0)
        return -1;
    int rc = update_latest(r, name, why, wsize);
    if (rc == 0 && opt.keep)
        prune_archives(r, opt.keep, name);
    flock(r->dfd, LOCK_UN);
    return rc;
}

/* Moves the verified partial file to name, never over an existing file.
 * 0 published, 1 already there with the same bytes, -1 an error worth a
 * retry, -2 the name is taken by other bytes (why says which). */
static int publish(receiver_t *r, const char *part, const char *name, const char *hex,
                   uint64_t size, char *why, size_t wsize)
{
    int rc = mnn_rename_noreplace(r->dfd, part, r->dfd, name);
    if (rc == 0)
        return 0;
    if (rc != MNN_EEXIST) {
        setmsg(why, wsize, "cannot publish %s/%s: %s", r->dir, printable(name), strerror(errno));
        return -1;
    }
    char have[17];
    uint64_t bytes;
    unlinkat(r->dfd, part, 0);
    if (hash_at(r->dfd, name, have, &bytes) == 0 && bytes == size && !strcmp(have, hex))
        return 1;
    setmsg(why, wsize, "%s/%s exists with other contents; not overwritten", r->dir,
             printable(name));
    return -2;
}

/* The partial file's name: made from what is offered (the words of the
 * OFFER line), so that only the same offer resumes it; 0 or -1. */
static int part_name(char *part, size_t size, const char *enc, const char *sz, const char *hx,
                     int known)
{
    mnn_hash_t *st = mnn_hash_new();
    if (!st)
        return -1;
    mnn_hash_reset(st);
    mnn_hash_update(st, enc, strlen(enc) + 1);
    mnn_hash_update(st, sz, strlen(sz) + 1);
    mnn_hash_update(st, hx, strlen(hx) + 1);
    if (!known) { /* a stream is never resumed: a name of its own */
        long id[2] = {(long)getpid(), (long)time(NULL)};
        mnn_hash_update(st, id, sizeof id);
    }
    char h[17];
    mnn_hash_hex(mnn_hash_digest(st), h);
    mnn_hash_free(st);
    snprintf(part, size, PART_PREFIX "%s.part", h);
    return 0;
}

/* The frames of one offer, DATA to END, appended to fd (the partial file
 * part) from byte *got on and hashed into st, the END's two words into
 * endsz and endhx (32 bytes each).  size: what was offered (known: the
 * size is).  0 at END; -1 the sender went away or went quiet; -2 an error,
 * answered. */
static int receive_frames(receiver_t *r, int fd, const char *part, int known, uint64_t size,
                          mnn_hash_t *st, uint64_t *got, char *endsz, char *endhx)
{
    const uint64_t off = *got;
    uint64_t synced = off;
    char hdr[128];
    for (;;) {
        int k = input_line(&r->in, hdr, sizeof hdr, opt.timeout);
        if (k <= 0)
            return -1;
        uint64_t n;
        if (!strncmp(hdr, "DATA ", 5) && mnn_parse_u64(hdr + 5, &n) == 0 && n > 0 && n <= CHUNK) {
            while (n > 0) {
                const char *p;
                ssize_t t = input_take(&r->in, (size_t)n, &p, opt.timeout);
                if (t <= 0)
                    return -1;
                mnn_hash_update(st, p, (size_t)t);
                if (write_all(fd, p, (size_t)t, 0) < 0) {
                    say(out, "ERR cannot write %s/%s: %s", r->dir, part,
                        strerror(errno));
                    return -2;
                }
                n -= (uint64_t)t;
                *got += (uint64_t)t;
            }
            if (*got - synced >= SYNC_EVERY) {
                /* start this range's writeback now, not at the end, and
                 * wait for the one before: the final fsync has little left
                 * and a slow disk slows the sender down instead of filling
                 * memory */
                sync_file_range(fd, (off_t)synced, (off_t)(*got - synced), SYNC_FILE_RANGE_WRITE);
                if (synced > off)
                    sync_file_range(fd,
                                    (off_t)(synced - SYNC_EVERY < off ? off : synced - SYNC_EVERY),
                                    (off_t)SYNC_EVERY,
                                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                        SYNC_FILE_RANGE_WAIT_AFTER);
                synced = *got;
            }
            if (known && *got > size) {
                say(out, "ERR more bytes than the %" PRIu64 " offered", size);
                return -2;
            }
            continue;
        }
        if (!strcmp(hdr, "NOOP")) /* the sender is still there */
            continue;
        if (sscanf(hdr, "END %31s %31s", endsz, endhx) == 2)
            return 0;
        say(out, "ERR malformed frame");
        return -2;
    }
}

/* One offer, from OFFER to OK or an error reply.  Returns 0 to go on with the
 * next offer, -1 when the stream is out of step (the receiver stops). */
static int receive_one(receiver_t *r, char *line)
{
    char sz[32], hx[32], enc[1024], name[NAME_MAX_ + 1] = "", why[1024];
    uint64_t size = 0;
    int known;
    if (sscanf(line, "OFFER %31s %31s %1023s", sz, hx, enc) != 3)
        return say(out, "REFUSE malformed offer"), -1;
    known = strcmp(sz, "-") != 0;
    if ((known && mnn_parse_u64(sz, &size) < 0) || (known != (strcmp(hx, "-") != 0)) ||
        (known && (strlen(hx) != 16 || strspn(hx, "0123456789abcdef") != 16)))
        return say(out, "REFUSE malformed offer"), -1;
    if (strcmp(enc, "-") && (pct_decode(name, sizeof name, enc) < 0 || !name_ok(name)))
        return say(out, "REFUSE not an acceptable file name: %s", printable(enc)) < 0
                   ? -1
                   : 0;

    /* already there? */
    struct stat sb;
    if (known && name[0] && fstatat(r->dfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
        char have[17];
        uint64_t bytes;
        if (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == size &&
            hash_at(r->dfd, name, have, &bytes) == 0 && bytes == size && !strcmp(have, hx)) {
            if (opt.verbose)
                warnx_("%s/%s: already there", r->dir, printable(name));
            if (finish(r, name, why, sizeof why) < 0)
                return say(out, "ERR %s", why), -1;
            return say(out, "EXISTS");
        }
        return say(out, "REFUSE %s/%s exists with other contents; not overwritten",
                   r->dir, printable(name));
    }

    char part[64];
    if (part_name(part, sizeof part, enc, sz, hx, known) < 0)
        return say(out, "ERR out of memory"), -1;
    int fd = openat(r->dfd, part, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return say(out, "ERR cannot create %s/%s: %s", r->dir, part, strerror(errno)),
               -1;
    /* one transfer per partial file: wait a while for an older receiver
     * whose connection died but who has not noticed yet */
    double give_up = mono_now() + (opt.timeout ? opt.timeout : 60);
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK || mono_now() > give_up) {
            close(fd);
            return say(out, "ERR %s/%s is being received by another ckpt-ship", r->dir,
                       printable(name[0] ? name : part)),
                   -1;
        }
        sleep_s(0.2);
    }
    struct stat named;
    if (fstat(fd, &sb) < 0 || fstatat(r->dfd, part, &named, AT_SYMLINK_NOFOLLOW) < 0 ||
        sb.st_dev != named.st_dev || sb.st_ino != named.st_ino) {
        /* the receiver we waited for published or removed it meanwhile */
        close(fd);
        return say(out, "ERR %s/%s changed while this receiver waited for it; try again",
                   r->dir, part),
               -1;
    }
    uint64_t off = 0;
    if (fstat(fd, &sb) == 0 && known && (uint64_t)sb.st_size <= size)
        off = (uint64_t)sb.st_size;
    mnn_hash_t *st = mnn_hash_new();
    int ok = st != NULL;
    if (ok) {
        mnn_hash_reset(st);
        if (off && hash_prefix(fd, off, st) < 0)
            off = 0, mnn_hash_reset(st);
        ok = ftruncate(fd, (off_t)off) == 0 && lseek(fd, (off_t)off, SEEK_SET) == (off_t)off;
    }
    if (!ok) {
        say(out, "ERR %s/%s: %s", r->dir, part, strerror(errno));
        goto stop;
    }
    /* room for what is still to come, before a byte of it is taken (a
     * stream of unknown size is bounded by the disk as it comes) */
    struct statvfs vs;
    const uint64_t room = fstatvfs(fd, &vs) == 0 ? (uint64_t)vs.f_bavail * vs.f_frsize : UINT64_MAX;
    if (known && size - off > room) {
        if (off == 0)
            unlinkat(r->dfd, part, 0); /* nothing received to keep */
        close(fd);
        mnn_hash_free(st);
        return say(out, "REFUSE %s: %" PRIu64 " bytes to receive, %" PRIu64 " free in %s",
                   printable(name[0] ? name : part), size - off, room, r->dir) < 0
                   ? -1
                   : 0;
    }
    if (say(out, "HAVE %" PRIu64, off) < 0)
        goto stop;
    if (opt.verbose && off)
        warnx_("%s: resuming at byte %" PRIu64, printable(name[0] ? name : part), off);

    /* frames */
    uint64_t got = off;
    char endsz[32], endhx[32];
    int fr = receive_frames(r, fd, part, known, size, st, &got, endsz, endhx);
    if (fr == -1)
        goto broken;
    if (fr < 0)
        goto stop;

    /* verify against what the sender declared */
    char hex[17];
    mnn_hash_hex(mnn_hash_digest(st), hex);
    uint64_t endsize;
    if (mnn_parse_u64(endsz, &endsize) < 0 || endsize != got || strcmp(endhx, hex) ||
        (known && (size != got || strcmp(hx, hex)))) {
        unlinkat(r->dfd, part, 0); /* damaged: the next attempt starts over */
        close(fd);
        mnn_hash_free(st);
        return say(out,
                   "ERR %s: %" PRIu64 " bytes with XXH3 %s received, %s bytes with XXH3 %s sent:"
                   " damaged in transit; nothing published",
                   printable(name[0] ? name : "the stream"), got, hex, endsz, endhx);
    }
    if (fstat(fd, &sb) < 0 || (uint64_t)sb.st_size != got) {
        unlinkat(r->dfd, part, 0);
        close(fd);
        mnn_hash_free(st);
        return say(out, "ERR %s/%s holds %lld bytes, not the %" PRIu64 " received",
                   r->dir, part, (long long)sb.st_size, got);
    }
    if (fdatasync(fd) < 0) {
        say(out, "ERR %s/%s: fsync: %s", r->dir, part, strerror(errno));
        goto stop;
    }
    if (!known && verify_archive(fd, why, sizeof why) < 0) {
        unlinkat(r->dfd, part, 0);
        close(fd);
        mnn_hash_free(st);
        return say(out, "REFUSE %s", why);
    }
    if (!name[0] && name_from_archive(fd, name, sizeof name, why, sizeof why) < 0) {
        unlinkat(r->dfd, part, 0);
        close(fd);
        mnn_hash_free(st);
        return say(out, "REFUSE %s", why);
    }
    /* one receiver at a time publishes in DIR */
    if (lock_dir(r, why, sizeof why) < 0) {
        close(fd);
        mnn_hash_free(st);
        return say(out, "ERR %s", why), -1;
    }
    int pub = publish(r, part, name, hex, got, why, sizeof why);
    close(fd); /* the partial file's lock goes with it */
    mnn_hash_free(st);
    if (pub < 0) {
        flock(r->dfd, LOCK_UN);
        return say(out, "%s %s", pub == -2 ? "REFUSE" : "ERR", why);
    }
    if (mnn_fsync_dirfd(r->dfd) < 0) {
        flock(r->dfd, LOCK_UN);
        return say(out, "ERR %s: fsync: %s", r->dir, strerror(errno)), -1;
    }
    flock(r->dfd, LOCK_UN);
    if (finish(r, name, why, sizeof why) < 0)
        return say(out, "ERR %s", why), -1;
    if (opt.verbose)
        warnx_("%s/%s: %s", r->dir, printable(name), pub ? "already there" : "received");
    pct_encode(enc, sizeof enc, name);
    return say(out, "OK %s", enc);

broken:
    /* the sender went away (or went quiet): what came is kept for a resume */
    if (opt.verbose)
        warnx_("%s: the connection ended after %" PRIu64 " bytes%s", printable(name[0] ? name : part),
               got, errno == ETIMEDOUT ? " (timeout)" : "");
    fdatasync(fd);
    if (!known)
        unlinkat(r->dfd, part, 0);
    close(fd);
    mnn_hash_free(st);
    return -1;
stop:
    if (!known)
        unlinkat(r->dfd, part, 0);
    close(fd);
    mnn_hash_free(st);
    return -1;
}

int ship_receive(const char *dir, int in_fd, int out_fd)
{
    receiver_t r = {.dir = dir, .dfd = -1};
    out = out_fd;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit: an error from write(), not death */
    if (mkdir(dir, 0777) < 0 && errno != EEXIST) {
        say(out, "REFUSE cannot create %s: %s", dir, strerror(errno));
        return EXIT_RUNTIME;
    }
    r.dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (r.dfd < 0) {
        say(out, "REFUSE %s: %s", dir, strerror(errno));
        return EXIT_RUNTIME;
    }
    /* the frames come through a pipe (or socket) of our own: larger reads,
     * and no poll() before each (advice only, where it fails) */
    if (fcntl(in_fd, F_SETPIPE_SZ, (int)CHUNK) < 0 && errno == EPERM)
        fcntl(in_fd, F_SETPIPE_SZ, 256 << 10);
    struct stat in_sb;
    int in_fl = fcntl(in_fd, F_GETFL);
    if (fstat(in_fd, &in_sb) == 0 && (S_ISFIFO(in_sb.st_mode) || S_ISSOCK(in_sb.st_mode)) &&
        in_fl >= 0)
        fcntl(in_fd, F_SETFL, in_fl | O_NONBLOCK);
    if (input_init(&r.in, in_fd, 2 * CHUNK) < 0) {
        say(out, "ERR out of memory");
        return EXIT_RUNTIME;
    }
    drop_stale_parts(r.dfd);
    if (say(out, GREETING) < 0) {
        close(r.dfd);
        free(r.in.buf);
        return EXIT_RUNTIME;
    }
    char line[4 * NAME_MAX_ + 128];
    int status = EXIT_OK;
    for (;;) {
        /* between offers too the sender speaks within --timeout: a sender
         * that waits for its next checkpoint sends NOOP meanwhile */
        int k = input_line(&r.in, line, sizeof line, opt.timeout);
        if (k < 0) {
            if (errno == ETIMEDOUT && opt.verbose)
                warnx_("%s: no word from the sender within --timeout; closing", dir);
            status = EXIT_RUNTIME;
            break;
        }
        if (k == 0 || !strcmp(line, "BYE"))
            break;
        if (!strcmp(line, "NOOP"))
            continue;
        if (strncmp(line, "OFFER ", 6)) {
            say(out, "REFUSE unexpected: %.40s", printable(line));
            status = EXIT_RUNTIME;
            break;
        }
        if (receive_one(&r, line) < 0) {
            status = EXIT_RUNTIME;
            break;
        }
    }
    close(r.dfd);
    free(r.in.buf);
    return status;
}
