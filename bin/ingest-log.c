/* ingest-log.c - stream-ingest's ingestion log (--log DIR): every chunk read
 * from the source appended as a hashed frame before any of it is passed on,
 * in segments named by the source offset of their first byte; checked and
 * replayed on resume; the segments behind the newest committed cut removed
 * (see ingest.h for the format). */
#include <config.h>

#include "ingest.h"
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const unsigned char magic[4] = {'M', 'N', 'L', '1'};

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void seg_name(char *buf, size_t size, uint64_t at)
{
    snprintf(buf, size, "seg-%016" PRIx64, at);
}

/* 1 and *at for a segment's name, else 0 */
static int seg_parse(const char *name, uint64_t *at)
{
    if (strncmp(name, "seg-", 4) || strlen(name) != 20 ||
        strspn(name + 4, "0123456789abcdef") != 16)
        return 0;
    *at = strtoull(name + 4, NULL, 16);
    return 1;
}

static int by_offset(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The segments of DIR into l->segs, ascending. */
static void list_segments(ilog_t *l)
{
    int fd = dup(l->dfd);
    DIR *dh = fd < 0 ? NULL : fdopendir(fd);
    if (!dh)
        die(EXIT_RUNTIME, "--log %s: %s", l->dir, strerror(errno));
    rewinddir(dh);
    struct dirent *e;
    uint64_t at;
    while ((e = readdir(dh)))
        if (seg_parse(e->d_name, &at)) {
            if (l->nsegs == l->cap)
                l->segs = xrealloc(l->segs, l->cap = l->cap ? l->cap * 2 : 16, sizeof *l->segs);
            l->segs[l->nsegs++] = at;
        }
    closedir(dh);
    if (l->nsegs > 1) /* none: segs is still NULL, which qsort may not take */
        qsort(l->segs, l->nsegs, sizeof *l->segs, by_offset);
}

/* Reads n bytes at fd's position: n, or fewer at the end of the file. */
static size_t read_full(int fd, void *buf, size_t n, const char *what, const char *dir)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(EXIT_RUNTIME, "--log %s: %s: %s", dir, what, strerror(errno));
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* All n bytes at offset at of fd, over short writes and EINTR: 0 or -1. */
static int pwrite_all(int fd, const void *buf, size_t n, uint64_t at)
{
    while (n) {
        ssize_t w = pwrite(fd, buf, n, (off_t)at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf = (const char *)buf + w, n -= (size_t)w, at += (uint64_t)w;
    }
    return 0;
}

/* A frame's header for the n bytes of data at source offset at. */
static void frame_header(unsigned char *h, const unsigned char *data, size_t n, uint64_t at)
{
    memcpy(h, magic, 4);
    for (int i = 0; i < 4; i++)
        h[4 + i] = (unsigned char)(n >> (8 * i));
    put64(h + 8, at);
    put64(h + 16, mnn_hash64(data, n));
    put64(h + 24, mnn_hash64(h, 24));
}

/* The next frame of segment fd (named name), which should begin at source
 * offset at: 1 and its data in buf (*n bytes), 0 at the segment's clean
 * end, -1 for a torn or damaged frame (*why says what). */
static int frame_read(int fd, const char *name, const char *dir, uint64_t at, unsigned char *buf,
                      size_t *n, const char **why)
{
    unsigned char h[ILOG_HDR];
    size_t got = read_full(fd, h, ILOG_HDR, name, dir);
    if (got == 0)
        return 0;
    *why = "a frame's header cut short";
    if (got < ILOG_HDR)
        return -1;
    *why = "a frame's header damaged";
    if (memcmp(h, magic, 4) || get64(h + 24) != mnn_hash64(h, 24))
        return -1;
    const size_t len = (size_t)(h[4] | h[5] << 8 | h[6] << 16 | (uint32_t)h[7] << 24);
    *why = "a frame that is not where the one before ends";
    if (get64(h + 8) != at || len == 0 || len > ILOG_MAX_FRAME)
        return -1;
    *why = "a frame's data cut short";
    if (read_full(fd, buf, len, name, dir) < len)
        return -1;
    *why = "a frame's data damaged (its hash does not match)";
    if (mnn_hash64(buf, len) != get64(h + 16))
        return -1;
    *n = len;
    return 1;
}

static int open_seg(ilog_t *l, size_t i, int flags, char *name, size_t size)
{
    seg_name(name, size, l->segs[i]);
    int fd = openat(l->dfd, name, flags | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        die(EXIT_RUNTIME, "--log %s: %s: %s", l->dir, name, strerror(errno));
    return fd;
}

/* The last frame of the log, at byte good of segment fd, when its header
 * is not a written one (zeros: a hole; or not its hash: a torn write) and
 * data follows it to the segment's end: the frame ilog_splice was logging
 * when the process died.  Its data was moved there from the source by the
 * kernel, which holds it nowhere else: it is kept, under a header written
 * now.  1 when so, 0 for any other frame (a torn write of ilog_append's,
 * dropped by the caller; the source can be read again). */
static int salvage(ilog_t *l, int fd, const char *name, uint64_t good, uint64_t size,
                   unsigned char *buf)
{
    unsigned char h[ILOG_HDR];
    if (size <= good + ILOG_HDR || size - good - ILOG_HDR > ILOG_MAX_FRAME)
        return 0;
    if (pread(fd, h, ILOG_HDR, (off_t)good) != ILOG_HDR)
        return 0;
    if (!memcmp(h, magic, 4) && get64(h + 24) == mnn_hash64(h, 24))
        return 0; /* a whole header: its data is what is short or damaged */
    const size_t n = (size_t)(size - good - ILOG_HDR);
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(good + ILOG_HDR + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            die(EXIT_RUNTIME, "--log %s: %s: %s", l->dir, name, r < 0 ? strerror(errno) : "short");
        got += (size_t)r;
    }
    frame_header(h, buf, n, l->end);
    if (pwrite_all(fd, h, ILOG_HDR, good) < 0)
        die(EXIT_RUNTIME, "--log %s: %s: %s", l->dir, name, strerror(errno));
    if (!l->quiet)
        warnx_("--log %s: %s: the last frame's header was not written at byte %" PRIu64 " (a "
               "stop while it was logged): its %zu bytes, taken from the source, kept", l->dir,
               name, good, n);
    l->end += n;
    return 1;
}

/* Checks every frame of every segment, sets l->end and l->size, and cuts
 * a torn last frame of the last segment off (a crash while it was
 * written); anything else amiss is fatal. */
static void check_all(ilog_t *l)
{
    unsigned char *buf = xrealloc(NULL, ILOG_MAX_FRAME, 1);
    l->end = l->nsegs ? l->segs[0] : 0;
    for (size_t i = 0; i < l->nsegs; i++) {
        char name[32];
        if (l->segs[i] != l->end)
            die(EXIT_RUNTIME, "--log %s: segment %s begins at byte %" PRIu64 ", where the ones "
                "before end at %" PRIu64 " (a segment lost, or another log's)", l->dir,
                (seg_name(name, sizeof name, l->segs[i]), name), l->segs[i], l->end);
        const int last = i + 1 == l->nsegs;
        int fd = open_seg(l, i, last ? O_RDWR : O_RDONLY, name, sizeof name);
        uint64_t good = 0; /* bytes of the segment checked */
        size_t n;
        const char *why = "";
        int rc;
        while ((rc = frame_read(fd, name, l->dir, l->end, buf, &n, &why)) == 1)
            good += ILOG_HDR + n, l->end += n;
        struct stat sb;
        if (fstat(fd, &sb) != 0)
            die(EXIT_RUNTIME, "--log %s: %s: %s", l->dir, name, strerror(errno));
        if (rc < 0 && !last)
            die(EXIT_RUNTIME, "--log %s: %s, byte %" PRIu64 ": %s (the log is damaged)", l->dir,
                name, good, why);
        if (rc < 0 && salvage(l, fd, name, good, (uint64_t)sb.st_size, buf)) {
            good = (uint64_t)sb.st_size;
            rc = 0;
        }
        if (rc < 0) {
            if (!l->quiet)
                warnx_("--log %s: %s: %s at byte %" PRIu64 ": %" PRIu64 " bytes dropped (a torn "
                       "write: the log's end when it stopped)", l->dir, name, why, good,
                       (uint64_t)sb.st_size - good);
            if (ftruncate(fd, (off_t)good) != 0)
                die(EXIT_RUNTIME, "--log %s: %s: %s", l->dir, name, strerror(errno));
        }
        if (last) /* what a killed process wrote, durable now */
            l->size = good;
        if (last && fsync(fd) != 0)
            die(EXIT_RUNTIME, "--log %s: %s: fsync: %s", l->dir, name, strerror(errno));
        close(fd);
    }
    free(buf);
}

void ilog_open(ilog_t *l, const char *dir, const char *root, uint64_t seg_max, int resume)
{
    int quiet = l->quiet, verbose = l->verbose;
    memset(l, 0, sizeof *l);
    l->quiet = quiet, l->verbose = verbose;
    l->dir = dir, l->root = root, l->seg_max = seg_max;
    l->fd = l->rfd = -1;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        die(EXIT_RUNTIME, "--log %s: %s", dir, strerror(errno));
    mnn_diag_t d = {""};
    int rc = mnn_lock_dir(dir, &l->dfd, &d);
    if (rc == MNN_EBUSY)
        die(EXIT_RUNTIME, "--log %s: another stream-ingest is using it", dir);
    if (rc < 0)
        die(EXIT_RUNTIME, "--log: %s", d.msg);
    list_segments(l);
    if (!resume && l->nsegs)
        die(EXIT_RUNTIME, "--log %s holds the log of another run (%zu segment%s): resume it "
            "(--resume), or empty it", dir, l->nsegs, l->nsegs == 1 ? "" : "s");
    check_all(l);
    if (l->nsegs && l->size < seg_max) { /* the last segment goes on */
        char name[32];
        l->fd = open_seg(l, l->nsegs - 1, O_RDWR, name, sizeof name);
    }
}

/* A new segment, beginning at l->end, open as l->fd; DIR fsynced. */
static void new_segment(ilog_t *l)
{
    char name[32];
    seg_name(name, sizeof name, l->end);
    l->fd = openat(l->dfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                   0666);
    if (l->fd < 0 || mnn_fsync_dirfd(l->dfd) < 0)
        die(EXIT_RUNTIME, "--log %s: %s: %s", l->dir, name, strerror(errno));
    if (l->nsegs == l->cap)
        l->segs = xrealloc(l->segs, l->cap = l->cap ? l->cap * 2 : 16, sizeof *l->segs);
    l->segs[l->nsegs++] = l->end;
    l->size = 0;
    if (l->verbose && !l->quiet)
        warnx_("--log %s: %s begun", l->dir, name);
    ilog_cleanup(l);
}

static void logged(ilog_t *l, size_t n);

void ilog_append(ilog_t *l, unsigned char *frame, size_t n)
{
    if (n == 0 || n > ILOG_MAX_FRAME)
        die(EXIT_RUNTIME, "internal error: a frame of %zu bytes", n);
    if (l->fd < 0)
        new_segment(l);
    frame_header(frame, frame + ILOG_HDR, n, l->end);
    if (pwrite_all(l->fd, frame, ILOG_HDR + n, l->size) < 0)
        die(EXIT_RUNTIME, "--log %s: cannot log what was read: %s", l->dir, strerror(errno));
    logged(l, n);
}

size_t ilog_splice(ilog_t *l, int src, unsigned char *frame, size_t n, const char *name)
{
    if (n == 0 || n > ILOG_MAX_FRAME)
        die(EXIT_RUNTIME, "internal error: a frame of %zu bytes", n);
    if (l->fd < 0)
        new_segment(l);
    /* the data first, behind room for its header (a hole until then) */
    loff_t pos = (loff_t)(l->size + ILOG_HDR);
    ssize_t r;
    do
        r = splice(src, NULL, l->fd, &pos, n, SPLICE_F_MOVE);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EAGAIN)
        return (size_t)-1;
    if (r < 0)
        die(EXIT_RUNTIME, "%s: cannot move what came into --log %s: %s", name, l->dir,
            strerror(errno));
    if (r == 0)
        return 0;
    unsigned char *data = frame + ILOG_HDR;
    size_t got = 0;
    while (got < (size_t)r) { /* a copy to pass on, from the page cache */
        ssize_t k = pread(l->fd, data + got, (size_t)r - got,
                          (off_t)(l->size + ILOG_HDR + got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            die(EXIT_RUNTIME, "--log %s: reading back what was logged: %s", l->dir,
                k < 0 ? strerror(errno) : "short");
        got += (size_t)k;
    }
    frame_header(frame, data, (size_t)r, l->end);
    if (pwrite_all(l->fd, frame, ILOG_HDR, l->size) < 0)
        die(EXIT_RUNTIME, "--log %s: cannot log what was read: %s", l->dir, strerror(errno));
    logged(l, (size_t)r);
    return (size_t)r;
}

/* n bytes of data were logged in a frame: the counts, and a full segment
 * closed. */
static void logged(ilog_t *l, size_t n)
{
    l->size += ILOG_HDR + n;
    l->end += n;
    if (l->size >= l->seg_max) { /* full: durable before the next begins */
        if (fsync(l->fd) != 0)
            die(EXIT_RUNTIME, "--log %s: fsync: %s", l->dir, strerror(errno));
        close(l->fd);
        l->fd = -1;
    }
}

/* Notes trouble met while cleaning up, once for each new message. */
static void note(ilog_t *l, const char *msg) /* msg: 600 bytes at most */
{
    if (!strcmp(l->noted, msg))
        return;
    snprintf(l->noted, sizeof l->noted, "%s", msg);
    if (!l->quiet)
        warnx_("--log %s: %s (no segment removed)", l->dir, msg);
}

void ilog_cleanup(ilog_t *l)
{
    char latest[4096], target[4096];
    if (snprintf(latest, sizeof latest, "%s/latest", l->root) >= (int)sizeof latest)
        return note(l, "--ckpt-dir: name too long");
    ssize_t tl = readlink(latest, target, sizeof target - 1);
    if (tl < 0) {
        if (errno != ENOENT) /* no cut committed yet: nothing to do */
            note(l, strerror(errno));
        return;
    }
    target[tl] = 0;
    if (!strcmp(target, l->seen))
        return; /* cleaned up to that cut already */
    char *buf = NULL, msg[600];
    size_t len;
    uint64_t cut;
    mnn_diag_t d = {""};
    if (mnn_ckpt_stage_read(l->root, 0, INGEST_PROGRAM, &buf, &len, &cut, &d) < 0)
        return note(l, d.msg);
    ingest_state_t s;
    char why[200];
    int rc = state_parse(buf, len, &s, why, sizeof why);
    free(buf);
    if (rc < 0) {
        snprintf(msg, sizeof msg, "%.300s: the part of stage 0 of cut %" PRIu64 ": %s", latest, cut,
                 why);
        return note(l, msg);
    }
    if (s.bytes > l->end) {
        snprintf(msg, sizeof msg, "%.300s: cut %" PRIu64 " lies at byte %" PRIu64 ", beyond the "
                 "log's end (%" PRIu64 "): not this stream's", latest, cut, s.bytes, l->end);
        return note(l, msg);
    }
    snprintf(l->seen, sizeof l->seen, "%s", target);
    /* segment i ends where i + 1 begins; the last one is never removed */
    const uint64_t keep = block_start(s.bytes);
    size_t gone = 0;
    while (gone + 1 < l->nsegs && l->segs[gone + 1] <= keep) {
        char name[32];
        seg_name(name, sizeof name, l->segs[gone]);
        if (unlinkat(l->dfd, name, 0) != 0 && errno != ENOENT) {
            snprintf(msg, sizeof msg, "%s: %s", name, strerror(errno));
            l->seen[0] = 0; /* try again at the next one */
            note(l, msg);
            break;
        }
        if (l->verbose && !l->quiet)
            warnx_("--log %s: %s removed: cut %" PRIu64 " is past it", l->dir, name, cut);
        gone++;
    }
    memmove(l->segs, l->segs + gone, (l->nsegs - gone) * sizeof *l->segs);
    l->nsegs -= gone;
}

void ilog_replay_begin(ilog_t *l, uint64_t from)
{
    l->rat = from;
    l->rseg = 0;
    l->rfd = -1;
    if (from == l->end)
        return;
    if (!l->nsegs || from < l->segs[0] || from > l->end)
        die(EXIT_RUNTIME, "--log %s holds bytes %" PRIu64 " to %" PRIu64 " of the source, not "
            "byte %" PRIu64 " and on (where the resume begins): %s", l->dir,
            l->nsegs ? l->segs[0] : 0, l->end, from,
            from > l->end ? "bytes passed on are missing from it" : "its older segments are gone");
    while (l->rseg + 1 < l->nsegs && l->segs[l->rseg + 1] <= from)
        l->rseg++;
}

size_t ilog_replay_next(ilog_t *l, unsigned char *buf)
{
    while (l->rat < l->end) {
        char name[32];
        if (l->rfd < 0) {
            l->rfd = open_seg(l, l->rseg, O_RDONLY, name, sizeof name);
            l->rframe = l->segs[l->rseg];
        }
        seg_name(name, sizeof name, l->segs[l->rseg]);
        size_t n;
        const char *why = "";
        int rc = frame_read(l->rfd, name, l->dir, l->rframe, buf, &n, &why);
        if (rc < 0)
            die(EXIT_RUNTIME, "--log %s: %s: %s (changed since it was checked)", l->dir, name,
                why);
        if (rc == 0) {
            close(l->rfd);
            l->rfd = -1;
            if (++l->rseg == l->nsegs)
                die(EXIT_RUNTIME, "--log %s: it ends short of byte %" PRIu64 " (changed since "
                    "it was checked)", l->dir, l->end);
            continue;
        }
        l->rframe += n;
        if (l->rframe <= l->rat)
            continue; /* before from */
        size_t skip = (size_t)(n - (l->rframe - l->rat));
        memmove(buf, buf + skip, n - skip);
        l->rat = l->rframe;
        return n - skip;
    }
    if (l->rfd >= 0)
        close(l->rfd);
    l->rfd = -1;
    return 0;
}

void ilog_close(ilog_t *l)
{
    if (l->fd >= 0 && fsync(l->fd) != 0 && !l->quiet)
        warnx_("--log %s: fsync: %s", l->dir, strerror(errno));
    if (l->fd >= 0)
        close(l->fd);
    if (l->rfd >= 0)
        close(l->rfd);
    close(l->dfd);
    free(l->segs);
    l->segs = NULL;
    l->fd = l->rfd = -1;
}
