/* ckpt-ship - move checkpoint archives to another machine over ssh, or to a
 * local directory: verified end to end, resumable after a broken
 * connection, published atomically, never overwriting.
 *
 * The sender talks to `ckpt-ship --receive DIR` (started through ssh, or as
 * a local child) over the child's stdin and stdout, protocol 1:
 *
 *   R: ckpt-ship 1 ready                  (or REFUSE/ERR MESSAGE, then exit)
 *   S: OFFER SIZE|- XXH3|- NAME|-         (NAME %XX-encoded)
 *   R: HAVE OFFSET | EXISTS | REFUSE MESSAGE | ERR MESSAGE
 *   S: DATA N\n<N bytes> ... END SIZE XXH3
 *   R: OK NAME | REFUSE MESSAGE | ERR MESSAGE
 *   S: the next OFFER, or BYE
 *
 * ERR is worth a retry (I/O, damage in transit); REFUSE is not (a name
 * taken by other bytes, a bad name, an unusable directory). */
#include <config.h>

#include "cli.h"

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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define GREETING "ckpt-ship 1 ready"
#define CHUNK ((size_t)1 << 20)        /* bytes per DATA frame at most */
#define SYNC_EVERY ((uint64_t)8 << 20) /* receiver: start writeback this often */
#define PART_PREFIX ".ckpt-ship-"
#define PART_MAX_AGE (7 * 24 * 3600)   /* stale partial files, seconds */
#define NAME_MAX_ 255

static noreturn void help(void)
{
    printf(
        "Usage: %s [OPTION]... SRC... [USER@]HOST:DIR\n"
        "  or:  %s [OPTION]... SRC... DIR\n"
        "  or:  %s [OPTION]... --files-from=FILE DEST\n"
        "Ship checkpoint archives to DIR on another machine, through ssh, or to a\n"
        "local DIR.  SRC is a checkpoint archive (.tar.zst), a checkpoint directory\n"
        "(packed on the fly; a checkpoint root means its 'latest'), or '-', an\n"
        "archive on stdin.  The receiver writes a partial file, checks its size and\n"
        "XXH3 against the sender's, fsyncs it, renames it into place (never over an\n"
        "existing file), fsyncs DIR and only then acknowledges.  After a broken\n"
        "connection the next attempt sends only the bytes the receiver lacks.\n"
        "Each checkpoint shipped is printed on stdout as DEST/NAME.\n"
        "\n"
        "  -e, --rsh CMD          the ssh command (default $CKPT_SHIP_RSH, else 'ssh'),\n"
        "                         run by /bin/sh as: CMD HOST REMOTE-COMMAND\n"
        "      --receive-path CMD how the far end runs ckpt-ship, for its shell\n"
        "                         (default 'ckpt-ship')\n"
        "      --files-from FILE  ship each checkpoint path read from FILE ('-': stdin)\n"
        "                         as its line arrives, over one connection\n"
        "      --name NAME        the file name under DIR (one SRC only)\n"
        "      --keep N           the receiver keeps the newest N step-*.tar.zst\n"
        "                         (default 0: all)\n"
        "      --level N          zstd level when packing a directory, 1 to 19\n"
        "                         (default 3, as ckpt-pack)\n"
        "      --retries N        attempts after a failed one, each resuming\n"
        "                         (default 3; backoff 1, 2, 4 ... 60 s)\n"
        "      --timeout SEC      drop a connection idle for SEC seconds (default 60;\n"
        "                         0: never)\n"
        "      --bwlimit RATE     at most RATE KiB/s (suffix K, M or G: KiB, MiB, GiB)\n"
        "      --receive          be the receiving end, in DIR (started by the sender)\n"
        "  -q, --quiet            errors only\n"
        "  -v, --verbose          report each step on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Progress is shown on stderr when it is a terminal.  SRC '-' cannot be resumed\n"
        "or retried.\n"
        "Exit status: 0 every checkpoint shipped and verified, 1 one failed after its\n"
        "retries, 2 usage error.  See ckpt-ship(1) and mini-nn(7).\n",
        prog, prog, prog);
    out_close();
    exit(EXIT_OK);
}

static struct {
    const char *rsh, *receive_path, *name;
    size_t keep;
    int level;
    unsigned retries;
    unsigned timeout; /* seconds, 0: none */
    uint64_t bwlimit; /* bytes/s, 0: none */
    int quiet, verbose, progress;
} opt = {.level = 3, .retries = 3, .timeout = 60};


static void sleep_s(double s)
{
    struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&t, &t) < 0 && errno == EINTR)
        ;
}

/* A message into why (cut to fit). */
static void setmsg(char *why, size_t wsize, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void setmsg(char *why, size_t wsize, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, wsize, fmt, ap);
    va_end(ap);
}

static void hex64(char out[17], uint64_t h) { snprintf(out, 17, "%016" PRIx64, h); }

/* ---- names ------------------------------------------------------------------
 * A checkpoint's file name travels %XX-encoded, so that any byte (a space, a
 * newline) survives a line-based protocol.  Accepted names: 1 to 255 bytes,
 * no '/' or NUL, not . or .., not 'latest', not one of our partial files
 * and not .tmp-* (the temporary link that replaces 'latest'). */

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= NAME_MAX_ && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") &&
           strcmp(s, "latest") && strncmp(s, PART_PREFIX, strlen(PART_PREFIX)) &&
           strncmp(s, ".tmp-", 5);
}

static void pct_encode(char *out, size_t size, const char *s)
{
    size_t o = 0;
    for (; *s && o + 4 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || strchr("._-+,=@~", c))
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, size - o, "%%%02X", c);
    }
    out[o] = 0;
}

/* 0, or -1 for a malformed encoding or a NUL. */
static int pct_decode(char *out, size_t size, const char *s)
{
    size_t o = 0;
    for (; *s; s++) {
        if (o + 1 >= size)
            return -1;
        if (*s != '%') {
            out[o++] = *s;
            continue;
        }
        unsigned v;
        if (!isxdigit((unsigned char)s[1]) || !isxdigit((unsigned char)s[2]) ||
            sscanf(s + 1, "%2x", &v) != 1 || v == 0)
            return -1;
        out[o++] = (char)v;
        s += 2;
    }
    out[o] = 0;
    return 0;
}

/* A name for messages: control characters shown as '?'. */
static const char *printable(const char *s)
{
    static char buf[4 * NAME_MAX_ + 1];
    size_t o = 0;
    for (; *s && o + 1 < sizeof buf; s++)
        buf[o++] = iscntrl((unsigned char)*s) ? '?' : *s;
    buf[o] = 0;
    return buf;
}

/* 1 and *step for "step-N.tar.zst" with N as sgd-train writes it. */
static int archive_step(const char *name, uint64_t *step)
{
    const char *ext = ".tar.zst";
    size_t n = strlen(name), e = strlen(ext);
    char base[64], canon[64];
    if (n <= e || n - e >= sizeof base || strcmp(name + n - e, ext))
        return 0;
    memcpy(base, name, n - e);
    base[n - e] = 0;
    if (strncmp(base, "step-", 5) || mnn_parse_u64(base + 5, step) < 0)
        return 0;
    mnn_ckpt_step_name(canon, sizeof canon, *step);
    return strcmp(canon, base) == 0;
}

/* ---- buffered input with a timeout ------------------------------------------ */

typedef struct {
    int fd;
    char *buf;
    size_t cap, pos, len;
    int eof;
    int nonblock; /* fd is O_NONBLOCK */
} input_t;

static int input_init(input_t *in, int fd, size_t cap)
{
    in->fd = fd;
    in->cap = cap;
    in->pos = in->len = 0;
    in->eof = 0;
    int fl = fcntl(fd, F_GETFL);
    in->nonblock = fl >= 0 && (fl & O_NONBLOCK);
    in->buf = malloc(cap);
    return in->buf ? 0 : -1;
}

/* Waits up to `timeout` seconds (0: forever) for fd; 1 ready, 0 timed out,
 * -1 error. */
static int wait_fd(int fd, short ev, unsigned timeout)
{
    struct pollfd p = {.fd = fd, .events = ev};
    int r;
    while ((r = poll(&p, 1, timeout ? (int)timeout * 1000 : -1)) < 0 && errno == EINTR)
        ;
    return r;
}

/* Reads more bytes after the buffered ones; 1 got some, 0 end of file, -1
 * error or timeout (errno ETIMEDOUT). */
static int input_fill(input_t *in, unsigned timeout)
{
    if (in->pos > 0) {
        memmove(in->buf, in->buf + in->pos, in->len - in->pos);
        in->len -= in->pos;
        in->pos = 0;
    }
    if (in->len == in->cap) {
        errno = ENOBUFS;
        return -1;
    }
    for (int ready = 0;; ready = 0) {
        /* a non-blocking fd is read first and waited for only when empty */
        if (!in->nonblock) {
            ready = wait_fd(in->fd, POLLIN, timeout);
            if (ready == 0)
                errno = ETIMEDOUT;
            if (ready <= 0)
                return -1;
        }
        ssize_t k = read(in->fd, in->buf + in->len, in->cap - in->len);
        if (k < 0 && errno == EAGAIN && in->nonblock) {
            ready = wait_fd(in->fd, POLLIN, timeout);
            if (ready == 0)
                errno = ETIMEDOUT;
            if (ready <= 0)
                return -1;
            continue;
        }
        if (k > 0) {
            in->len += (size_t)k;
            return 1;
        }
        if (k == 0) {
            in->eof = 1;
            return 0;
        }
        if (errno != EINTR && errno != EAGAIN)
            return -1;
    }
}

/* One line without its '\n' into out (at most size-1 bytes, else ENOBUFS);
 * 1 a line, 0 end of file, -1 error. */
static int input_line(input_t *in, char *out, size_t size, unsigned timeout)
{
    for (;;) {
        char *nl = memchr(in->buf + in->pos, '\n', in->len - in->pos);
        if (nl) {
            size_t n = (size_t)(nl - (in->buf + in->pos));
            if (n >= size) {
                errno = ENOBUFS;
                return -1;
            }
            memcpy(out, in->buf + in->pos, n);
            out[n] = 0;
            in->pos += n + 1;
            return 1;
        }
        if (in->len - in->pos >= size) {
            errno = ENOBUFS;
            return -1;
        }
        int r = input_fill(in, timeout);
        if (r <= 0)
            return r;
    }
}

/* Up to max buffered bytes (reading if none): *p and the count, 0 at end of
 * file, -1 error. */
static ssize_t input_take(input_t *in, size_t max, const char **p, unsigned timeout)
{
    if (in->pos == in->len) {
        int r = input_fill(in, timeout);
        if (r <= 0)
            return r;
    }
    size_t n = in->len - in->pos;
    if (n > max)
        n = max;
    *p = in->buf + in->pos;
    in->pos += n;
    return (ssize_t)n;
}

/* Writes all of buf to a non-blocking or blocking fd, waiting up to timeout
 * seconds for each bit of progress; 0 or -1 (errno). */
static int write_all(int fd, const void *buf, size_t n, unsigned timeout)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN)
            return -1;
        int r = wait_fd(fd, POLLOUT, timeout);
        if (r == 0)
            errno = ETIMEDOUT;
        if (r <= 0)
            return -1;
    }
    return 0;
}

static int say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int say(int fd, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    /* one line: a message never breaks the protocol */
    for (int i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    return write_all(fd, line, (size_t)n, opt.timeout);
}

/* ======================================================================
 * The receiving end
 * ====================================================================== */

typedef struct {
    const char *dir;
    int dfd;
    input_t in;
} receiver_t;

static int fsync_fd_dir(int dfd) { return fsync(dfd) == 0 || errno == EINVAL ? 0 : -1; }

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
 * so that the sender's --timeout measures silence, not work. */
static double last_word;

static void keepalive(void)
{
    double t = mono_now();
    if (t - last_word >= 2.0) {
        say(STDOUT_FILENO, "WAIT");
        last_word = t;
    }
}

/* XXH3 of fd's first n bytes into st (which the caller has reset). */
static int hash_prefix(int fd, uint64_t n, XXH3_state_t *st)
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
        XXH3_64bits_update(st, buf, (size_t)k);
        off += (uint64_t)k;
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
    XXH3_state_t *st = XXH3_createState();
    int rc = !st || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) ? -1 : 0;
    if (rc == 0) {
        XXH3_64bits_reset(st);
        rc = hash_prefix(fd, (uint64_t)sb.st_size, st);
        *bytes = (uint64_t)sb.st_size;
        hex64(hex, XXH3_64bits_digest(st));
    }
    XXH3_freeState(st);
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
    say(STDOUT_FILENO, "WAIT");
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

/* Keeps the newest `keep` step-*.tar.zst archives of dfd, `shipped` (the
 * archive just acknowledged, whatever its step) and latest's target. */
static void prune_archives(receiver_t *r, size_t keep, const char *shipped)
{
    DIR *dp = list_dir(r->dfd);
    struct dirent *de;
    uint64_t *steps = NULL, s;
    size_t n = 0, cap = 0;
    if (!dp)
        return;
    while ((de = readdir(dp)))
        if (archive_step(de->d_name, &s)) {
            if (n == cap) {
                uint64_t *ns = realloc(steps, (cap = cap ? 2 * cap : 64) * sizeof *ns);
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
        for (size_t j = i; j > 0 && steps[j - 1] < steps[j]; j--) {
            uint64_t t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    char target[NAME_MAX_ + 1] = "";
    ssize_t k = readlinkat(r->dfd, "latest", target, sizeof target - 1);
    target[k > 0 ? k : 0] = 0;
    for (size_t i = keep; i < n; i++) {
        char base[64], name[80];
        mnn_ckpt_step_name(base, sizeof base, steps[i]);
        snprintf(name, sizeof name, "%s.tar.zst", base);
        if (strcmp(name, shipped) && strcmp(name, target) && unlinkat(r->dfd, name, 0) == 0 &&
            opt.verbose)
            warnx_("%s: removed %s (--keep %zu)", r->dir, name, keep);
    }
    free(steps);
    fsync_fd_dir(r->dfd);
}

/* Points DIR/latest at name if it is the newest step archive there. */
static int update_latest(receiver_t *r, const char *name, char *why, size_t wsize)
{
    uint64_t step, cur;
    char target[NAME_MAX_ + 1];
    if (!archive_step(name, &step))
        return 0;
    ssize_t k = readlinkat(r->dfd, "latest", target, sizeof target - 1);
    if (k > 0) {
        target[k] = 0;
        if (archive_step(target, &cur) && cur > step)
            return 0;
    }
    mnn_diag_t d = {""};
    if (mnn_ckpt_set_latest(r->dir, name, &d) < 0) {
        setmsg(why, wsize, "%s", d.msg);
        return -1;
    }
    return 0;
}

/* After name is in DIR (just now or before): latest and --keep, under
 * DIR's lock.  Done again for an archive already there, so that a
 * receiver that died in between leaves nothing undone. */
static int finish(receiver_t *r, const char *name, char *why, size_t wsize)
{
    flock(r->dfd, LOCK_EX);
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
    int rc = renameat2(r->dfd, part, r->dfd, name, RENAME_NOREPLACE);
    if (rc < 0 && (errno == EINVAL || errno == ENOSYS)) {
        /* a file system without RENAME_NOREPLACE: link() never replaces */
        rc = linkat(r->dfd, part, r->dfd, name, 0);
        if (rc == 0)
            unlinkat(r->dfd, part, 0);
    }
    if (rc == 0)
        return 0;
    if (errno != EEXIST) {
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

/* One offer, from OFFER to OK or an error reply.  Returns 0 to go on with the
 * next offer, -1 when the stream is out of step (the receiver stops). */
static int receive_one(receiver_t *r, char *line)
{
    char sz[32], hx[32], enc[1024], name[NAME_MAX_ + 1] = "", why[1024];
    uint64_t size = 0;
    int known;
    if (sscanf(line, "OFFER %31s %31s %1023s", sz, hx, enc) != 3)
        return say(STDOUT_FILENO, "REFUSE malformed offer"), -1;
    known = strcmp(sz, "-") != 0;
    if ((known && mnn_parse_u64(sz, &size) < 0) || (known != (strcmp(hx, "-") != 0)) ||
        (known && (strlen(hx) != 16 || strspn(hx, "0123456789abcdef") != 16)))
        return say(STDOUT_FILENO, "REFUSE malformed offer"), -1;
    if (strcmp(enc, "-") && (pct_decode(name, sizeof name, enc) < 0 || !name_ok(name)))
        return say(STDOUT_FILENO, "REFUSE not an acceptable file name: %s", printable(enc)) < 0
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
                return say(STDOUT_FILENO, "ERR %s", why), -1;
            return say(STDOUT_FILENO, "EXISTS");
        }
        return say(STDOUT_FILENO, "REFUSE %s/%s exists with other contents; not overwritten",
                   r->dir, printable(name));
    }

    /* the partial file: named by what is offered, so only the same offer
     * resumes it */
    char part[64];
    {
        XXH3_state_t *st = XXH3_createState();
        if (!st)
            return say(STDOUT_FILENO, "ERR out of memory"), -1;
        XXH3_64bits_reset(st);
        XXH3_64bits_update(st, enc, strlen(enc) + 1);
        XXH3_64bits_update(st, sz, strlen(sz) + 1);
        XXH3_64bits_update(st, hx, strlen(hx) + 1);
        if (!known) { /* a stream is never resumed: a name of its own */
            long id[2] = {(long)getpid(), (long)time(NULL)};
            XXH3_64bits_update(st, id, sizeof id);
        }
        char h[17];
        hex64(h, XXH3_64bits_digest(st));
        XXH3_freeState(st);
        snprintf(part, sizeof part, PART_PREFIX "%s.part", h);
    }
    int fd = openat(r->dfd, part, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return say(STDOUT_FILENO, "ERR cannot create %s/%s: %s", r->dir, part, strerror(errno)),
               -1;
    /* one transfer per partial file: wait a while for an older receiver
     * whose connection died but who has not noticed yet */
    double give_up = mono_now() + (opt.timeout ? opt.timeout : 60);
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK || mono_now() > give_up) {
            close(fd);
            return say(STDOUT_FILENO, "ERR %s/%s is being received by another ckpt-ship", r->dir,
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
        return say(STDOUT_FILENO, "ERR %s/%s changed while this receiver waited for it; try again",
                   r->dir, part),
               -1;
    }
    uint64_t off = 0;
    if (fstat(fd, &sb) == 0 && known && (uint64_t)sb.st_size <= size)
        off = (uint64_t)sb.st_size;
    XXH3_state_t *st = XXH3_createState();
    int ok = st != NULL;
    if (ok) {
        XXH3_64bits_reset(st);
        if (off && hash_prefix(fd, off, st) < 0)
            off = 0, XXH3_64bits_reset(st);
        ok = ftruncate(fd, (off_t)off) == 0 && lseek(fd, (off_t)off, SEEK_SET) == (off_t)off;
    }
    if (!ok) {
        say(STDOUT_FILENO, "ERR %s/%s: %s", r->dir, part, strerror(errno));
        goto stop;
    }
    if (say(STDOUT_FILENO, "HAVE %" PRIu64, off) < 0)
        goto stop;
    if (opt.verbose && off)
        warnx_("%s: resuming at byte %" PRIu64, printable(name[0] ? name : part), off);

    /* frames */
    uint64_t got = off, synced = off;
    char hdr[128], endsz[32], endhx[32];
    for (;;) {
        int k = input_line(&r->in, hdr, sizeof hdr, opt.timeout);
        if (k <= 0)
            goto broken;
        uint64_t n;
        if (!strncmp(hdr, "DATA ", 5) && mnn_parse_u64(hdr + 5, &n) == 0 && n > 0 && n <= CHUNK) {
            while (n > 0) {
                const char *p;
                ssize_t t = input_take(&r->in, (size_t)n, &p, opt.timeout);
                if (t <= 0)
                    goto broken;
                XXH3_64bits_update(st, p, (size_t)t);
                if (write_all(fd, p, (size_t)t, 0) < 0) {
                    say(STDOUT_FILENO, "ERR cannot write %s/%s: %s", r->dir, part,
                        strerror(errno));
                    goto stop;
                }
                n -= (uint64_t)t;
                got += (uint64_t)t;
            }
            if (got - synced >= SYNC_EVERY) {
                /* start this range's writeback now, not at the end, and
                 * wait for the one before: the final fsync has little left
                 * and a slow disk slows the sender down instead of filling
                 * memory */
                sync_file_range(fd, (off_t)synced, (off_t)(got - synced), SYNC_FILE_RANGE_WRITE);
                if (synced > off)
                    sync_file_range(fd, (off_t)(synced - SYNC_EVERY < off ? off : synced - SYNC_EVERY),
                                    (off_t)SYNC_EVERY,
                                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                        SYNC_FILE_RANGE_WAIT_AFTER);
                synced = got;
            }
            if (known && got > size) {
                say(STDOUT_FILENO, "ERR more bytes than the %" PRIu64 " offered", size);
                goto stop;
            }
            continue;
        }
        if (!strcmp(hdr, "NOOP")) /* the sender is still there */
            continue;
        if (sscanf(hdr, "END %31s %31s", endsz, endhx) == 2)
            break;
        say(STDOUT_FILENO, "ERR malformed frame");
        goto stop;
    }

    /* verify against what the sender declared */
    char hex[17];
    hex64(hex, XXH3_64bits_digest(st));
    uint64_t endsize;
    if (mnn_parse_u64(endsz, &endsize) < 0 || endsize != got || strcmp(endhx, hex) ||
        (known && (size != got || strcmp(hx, hex)))) {
        unlinkat(r->dfd, part, 0); /* damaged: the next attempt starts over */
        close(fd);
        XXH3_freeState(st);
        return say(STDOUT_FILENO,
                   "ERR %s: %" PRIu64 " bytes with XXH3 %s received, %s bytes with XXH3 %s sent:"
                   " damaged in transit; nothing published",
                   printable(name[0] ? name : "the stream"), got, hex, endsz, endhx);
    }
    if (fstat(fd, &sb) < 0 || (uint64_t)sb.st_size != got) {
        unlinkat(r->dfd, part, 0);
        close(fd);
        XXH3_freeState(st);
        return say(STDOUT_FILENO, "ERR %s/%s holds %lld bytes, not the %" PRIu64 " received",
                   r->dir, part, (long long)sb.st_size, got);
    }
    if (fdatasync(fd) < 0) {
        say(STDOUT_FILENO, "ERR %s/%s: fsync: %s", r->dir, part, strerror(errno));
        goto stop;
    }
    if (!known && verify_archive(fd, why, sizeof why) < 0) {
        unlinkat(r->dfd, part, 0);
        close(fd);
        XXH3_freeState(st);
        return say(STDOUT_FILENO, "REFUSE %s", why);
    }
    if (!name[0] && name_from_archive(fd, name, sizeof name, why, sizeof why) < 0) {
        unlinkat(r->dfd, part, 0);
        close(fd);
        XXH3_freeState(st);
        return say(STDOUT_FILENO, "REFUSE %s", why);
    }
    flock(r->dfd, LOCK_EX); /* one receiver at a time publishes in DIR */
    int pub = publish(r, part, name, hex, got, why, sizeof why);
    close(fd); /* the partial file's lock goes with it */
    XXH3_freeState(st);
    if (pub < 0) {
        flock(r->dfd, LOCK_UN);
        return say(STDOUT_FILENO, "%s %s", pub == -2 ? "REFUSE" : "ERR", why);
    }
    if (fsync_fd_dir(r->dfd) < 0) {
        flock(r->dfd, LOCK_UN);
        return say(STDOUT_FILENO, "ERR %s: fsync: %s", r->dir, strerror(errno)), -1;
    }
    flock(r->dfd, LOCK_UN);
    if (finish(r, name, why, sizeof why) < 0)
        return say(STDOUT_FILENO, "ERR %s", why), -1;
    if (opt.verbose)
        warnx_("%s/%s: %s", r->dir, printable(name), pub ? "already there" : "received");
    pct_encode(enc, sizeof enc, name);
    return say(STDOUT_FILENO, "OK %s", enc);

broken:
    /* the sender went away (or went quiet): what came is kept for a resume */
    if (opt.verbose)
        warnx_("%s: the connection ended after %" PRIu64 " bytes%s", printable(name[0] ? name : part),
               got, errno == ETIMEDOUT ? " (timeout)" : "");
    fdatasync(fd);
    if (!known)
        unlinkat(r->dfd, part, 0);
    close(fd);
    XXH3_freeState(st);
    return -1;
stop:
    if (!known)
        unlinkat(r->dfd, part, 0);
    close(fd);
    XXH3_freeState(st);
    return -1;
}

static noreturn void receive_main(const char *dir)
{
    receiver_t r = {.dir = dir, .dfd = -1};
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit: an error from write(), not death */
    if (mkdir(dir, 0777) < 0 && errno != EEXIST) {
        say(STDOUT_FILENO, "REFUSE cannot create %s: %s", dir, strerror(errno));
        exit(EXIT_RUNTIME);
    }
    r.dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (r.dfd < 0) {
        say(STDOUT_FILENO, "REFUSE %s: %s", dir, strerror(errno));
        exit(EXIT_RUNTIME);
    }
    /* the frames come through a pipe (or socket) of our own: larger reads,
     * and no poll() before each (advice only, where it fails) */
    if (fcntl(STDIN_FILENO, F_SETPIPE_SZ, (int)CHUNK) < 0 && errno == EPERM)
        fcntl(STDIN_FILENO, F_SETPIPE_SZ, 256 << 10);
    struct stat in_sb;
    int in_fl = fcntl(STDIN_FILENO, F_GETFL);
    if (fstat(STDIN_FILENO, &in_sb) == 0 && (S_ISFIFO(in_sb.st_mode) || S_ISSOCK(in_sb.st_mode)) &&
        in_fl >= 0)
        fcntl(STDIN_FILENO, F_SETFL, in_fl | O_NONBLOCK);
    if (input_init(&r.in, STDIN_FILENO, 2 * CHUNK) < 0) {
        say(STDOUT_FILENO, "ERR out of memory");
        exit(EXIT_RUNTIME);
    }
    drop_stale_parts(r.dfd);
    if (say(STDOUT_FILENO, GREETING) < 0)
        exit(EXIT_RUNTIME);
    char line[4 * NAME_MAX_ + 128];
    int status = EXIT_OK;
    for (;;) {
        /* between offers, wait as long as the sender likes */
        int k = input_line(&r.in, line, sizeof line, 0);
        if (k < 0) {
            status = EXIT_RUNTIME;
            break;
        }
        if (k == 0 || !strcmp(line, "BYE"))
            break;
        if (strncmp(line, "OFFER ", 6)) {
            say(STDOUT_FILENO, "REFUSE unexpected: %.40s", printable(line));
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
    exit(status);
}

/* ======================================================================
 * The sending end
 * ====================================================================== */

/* Where to: a local directory or [user@]host:dir. */
typedef struct {
    const char *arg;  /* as given, for messages and stdout */
    char *host;       /* NULL: local; else [user@]host as ssh takes it */
    char *label;      /* [user@]host as given, for stdout */
    char *dir;
} dest_t;

static void parse_dest(dest_t *d, const char *arg)
{
    d->arg = arg;
    d->host = NULL;
    const char *colon = NULL, *br = strstr(arg, "@[");
    const size_t user = br && br < arg + strcspn(arg, "/:") ? (size_t)(br - arg) + 1 : 0;
    if (arg[user] == '[') { /* [user@][v6addr]:dir: ssh takes user@v6addr */
        const char *end = strstr(arg + user, "]:");
        if (!end || end == arg + user + 1)
            usage_error("%s: expected [USER@][ADDRESS]:DIR", arg);
        d->host = malloc((size_t)(end - arg));
        if (d->host)
            snprintf(d->host, (size_t)(end - arg), "%.*s%.*s", (int)user, arg,
                     (int)(end - arg - (ptrdiff_t)user - 1), arg + user + 1);
        colon = end + 1;
    } else {
        colon = strchr(arg, ':');
        const char *slash = strchr(arg, '/');
        if (colon && slash && slash < colon)
            colon = NULL;
        if (colon) {
            if (colon == arg)
                usage_error("%s: no host before ':' (write ./%s for a local directory)", arg, arg);
            d->host = strndup(arg, (size_t)(colon - arg));
        }
    }
    if (d->host && d->host[0] == '-')
        usage_error("%s: a host name cannot start with '-'", arg);
    d->label = colon ? strndup(arg, (size_t)(colon - arg)) : NULL; /* as the user wrote it */
    d->dir = strdup(colon ? (colon[1] ? colon + 1 : ".") : arg);
    if (!d->dir || (colon && (!d->host || !d->label)))
        die(EXIT_RUNTIME, "out of memory");
    if (!d->dir[0])
        usage_error("empty destination directory");
}

/* Appends s to the command line, single-quoted for a POSIX shell. */
static int shquote(char *out, size_t size, size_t *o, const char *s)
{
    if (*o + 3 >= size)
        return -1;
    out[(*o)++] = ' ';
    out[(*o)++] = '\'';
    for (; *s; s++) {
        if (*s == '\'') {
            if (*o + 5 >= size)
                return -1;
            memcpy(out + *o, "'\\''", 4);
            *o += 4;
        } else {
            if (*o + 2 >= size)
                return -1;
            out[(*o)++] = *s;
        }
    }
    if (*o + 2 >= size)
        return -1;
    out[(*o)++] = '\'';
    out[*o] = 0;
    return 0;
}

/* The connection: the child's stdin and stdout. */
typedef struct {
    pid_t pid;
    int to;
    input_t from;
    int open;
    int greeted; /* the receiver's greeting was read */
} conn_t;

/* Closes the connection and reaps the child; its wait status, or -1. */
static int conn_close(conn_t *c, int kill_it)
{
    if (!c->open)
        return -1;
    if (c->to >= 0)
        close(c->to);
    close(c->from.fd);
    free(c->from.buf);
    /* end of input first, so that a receiver can clean up; then signals */
    int status = -1, sig = kill_it ? SIGTERM : 0;
    double until = mono_now() + (kill_it ? 2 : 5);
    pid_t w;
    while ((w = waitpid(c->pid, &status, WNOHANG)) == 0) {
        if (mono_now() > until) {
            if (sig == SIGKILL) {
                waitpid(c->pid, &status, 0);
                break;
            }
            sig = sig ? SIGKILL : SIGTERM;
            kill(c->pid, sig);
            until = mono_now() + 3;
        }
        sleep_s(0.002);
    }
    if (w < 0)
        status = -1;
    c->open = 0;
    return status;
}

/* Starts the receiver (through ssh, or locally); conn_greet() then waits for
 * it.  0, or -1 with why; *permanent when retrying cannot help. */
static int conn_open(conn_t *c, const dest_t *d, char *why, size_t wsize, int *permanent)
{
    char cmd[8192], keep[32], tmo[32];
    size_t o = 0;
    snprintf(keep, sizeof keep, "%zu", opt.keep);
    snprintf(tmo, sizeof tmo, "%u", opt.timeout);
    char self[PATH_MAX];
    const char *argv[16];
    int a = 0;
    if (d->host) {
        /* the remote shell parses one string: every word but the
         * user's --receive-path is single-quoted */
        o = (size_t)snprintf(cmd, sizeof cmd, "%s", opt.receive_path);
        if (o >= sizeof cmd || shquote(cmd, sizeof cmd, &o, "--receive") ||
            shquote(cmd, sizeof cmd, &o, "--keep") || shquote(cmd, sizeof cmd, &o, keep) ||
            shquote(cmd, sizeof cmd, &o, "--timeout") || shquote(cmd, sizeof cmd, &o, tmo) ||
            shquote(cmd, sizeof cmd, &o, "--") || shquote(cmd, sizeof cmd, &o, d->dir)) {
            setmsg(why, wsize, "the remote command line is too long");
            *permanent = 1;
            return -1;
        }
        char sh[4096];
        if ((size_t)snprintf(sh, sizeof sh, "%s \"$@\"", opt.rsh) >= sizeof sh) {
            setmsg(why, wsize, "the ssh command is too long");
            *permanent = 1;
            return -1;
        }
        argv[a++] = "/bin/sh";
        argv[a++] = "-c";
        argv[a++] = strdup(sh);
        argv[a++] = "ckpt-ship-rsh";
        argv[a++] = d->host;
        argv[a++] = cmd;
        if (!argv[2]) {
            setmsg(why, wsize, "out of memory");
            return -1;
        }
    } else {
        ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
        if (k <= 0) {
            setmsg(why, wsize, "cannot find this program (/proc/self/exe): %s", strerror(errno));
            *permanent = 1;
            return -1;
        }
        self[k] = 0;
        argv[a++] = self;
        argv[a++] = "--receive";
        argv[a++] = "--keep";
        argv[a++] = keep;
        argv[a++] = "--timeout";
        argv[a++] = tmo;
        argv[a++] = "--";
        argv[a++] = d->dir;
    }
    argv[a] = NULL;
    if (opt.verbose)
        warnx_("connecting: %s", d->host ? cmd : d->dir);

    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) < 0) {
        setmsg(why, wsize, "pipe: %s", strerror(errno));
        if (d->host)
            free((char *)argv[2]);
        return -1;
    }
    if (pipe2(out, O_CLOEXEC) < 0) {
        setmsg(why, wsize, "pipe: %s", strerror(errno));
        close(in[0]), close(in[1]);
        if (d->host)
            free((char *)argv[2]);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        setmsg(why, wsize, "fork: %s", strerror(errno));
        close(in[0]), close(in[1]), close(out[0]), close(out[1]);
        if (d->host)
            free((char *)argv[2]);
        return -1;
    }
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "%s: %s: %s\n", prog, argv[0], strerror(errno));
        _exit(127);
    }
    if (d->host)
        free((char *)argv[2]);
    close(in[0]);
    close(out[1]);
    fcntl(in[1], F_SETPIPE_SZ, (int)CHUNK); /* fewer, larger writes; advice only */
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    c->pid = pid;
    c->to = in[1];
    c->open = 1;
    if (input_init(&c->from, out[0], 8192) < 0) { /* conn_close closes out[0] */
        c->from.buf = NULL;
        conn_close(c, 1);
        setmsg(why, wsize, "out of memory");
        return -1;
    }
    c->greeted = 0;
    return 0;
}

/* Reads the receiver's greeting, once per connection. */
static int conn_greet(conn_t *c, const dest_t *d, char *why, size_t wsize, int *permanent)
{
    char line[1100];
    if (c->greeted)
        return 0;
    int k = input_line(&c->from, line, sizeof line, opt.timeout);
    if (k == 1 && !strcmp(line, GREETING)) {
        c->greeted = 1;
        return 0;
    }
    int e = errno;
    if (k == 1 && (!strncmp(line, "REFUSE ", 7) || !strncmp(line, "ERR ", 4))) {
        *permanent = line[0] == 'R';
        setmsg(why, wsize, "the receiver said: %s", strchr(line, ' ') + 1);
    } else if (k == 1)
        setmsg(why, wsize, "unexpected answer from the receiver: '%.60s' (is %s ckpt-ship 1?)",
               printable(line), d->host ? opt.receive_path : "it");
    else if (k < 0)
        setmsg(why, wsize, "no answer from the receiver: %s", strerror(e));
    if (k != 0) {
        conn_close(c, 1);
        return -1;
    }
    /* the child ended without a word: 126 or 127 is a shell that could not
     * run the command, which no retry mends; ssh's own failures are 255 */
    int status = conn_close(c, 0);
    if (status != -1 && WIFEXITED(status) &&
        (WEXITSTATUS(status) == 126 || WEXITSTATUS(status) == 127)) {
        *permanent = 1;
        setmsg(why, wsize, "the receiver could not be started (exit %d)%s", WEXITSTATUS(status),
               d->host ? ": is ckpt-ship on the remote PATH? (see --receive-path)" : "");
    } else if (status != -1 && WIFEXITED(status))
        setmsg(why, wsize, "the connection closed before the receiver answered (%s exit %d)",
               d->host ? "ssh:" : "receiver:", WEXITSTATUS(status));
    else
        setmsg(why, wsize, "the connection closed before the receiver answered");
    return -1;
}

/* ---- sources ------------------------------------------------------------- */

typedef struct {
    const char *arg;
    enum { SRC_FILE, SRC_DIR, SRC_STDIN } kind;
    char *real;     /* SRC_DIR: the checkpoint directory */
    char name[NAME_MAX_ + 1]; /* "" for an unnamed stream */
    int known;
    uint64_t size;
    char hex[17];
} source_t;

typedef struct {
    pthread_t t;
    const char *dir;
    int fd;
    int rc;
    mnn_diag_t d;
} packer_t;

static void *pack_main(void *arg)
{
    packer_t *p = arg;
    mnn_pack_opts_t o = {.level = opt.level, .threads = 0};
    p->rc = mnn_ckpt_pack(p->dir, p->fd, &o, &p->d);
    close(p->fd);
    return NULL;
}

/* The packed directory as a stream on *fd, from a thread. */
static int pack_start(packer_t *p, const char *dir, int *fd, char *why, size_t wsize)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        setmsg(why, wsize, "pipe: %s", strerror(errno));
        return -1;
    }
    fcntl(pfd[1], F_SETPIPE_SZ, (int)CHUNK);
    p->dir = dir;
    p->fd = pfd[1];
    p->rc = 0;
    p->d.msg[0] = 0;
    if (pthread_create(&p->t, NULL, pack_main, p) != 0) {
        close(pfd[0]);
        close(pfd[1]);
        setmsg(why, wsize, "cannot start packing");
        return -1;
    }
    *fd = pfd[0];
    return 0;
}

/* Waits for the packer (after closing the reading end); 0 or -1 with why. */
static int pack_finish(packer_t *p, int fd, char *why, size_t wsize)
{
    close(fd);
    pthread_join(p->t, NULL);
    if (p->rc < 0) {
        setmsg(why, wsize, "cannot pack: %s", p->d.msg[0] ? p->d.msg : mnn_strerror(p->rc));
        return -1;
    }
    return 0;
}

static ssize_t read_some(int fd, char *buf, size_t n)
{
    ssize_t k;
    while ((k = read(fd, buf, n)) < 0 && errno == EINTR)
        ;
    return k;
}

/* Learns what SRC is, its name, and (unless a stream) its size and XXH3. */
static int source_open(source_t *s, const char *arg, char *why, size_t wsize)
{
    struct stat sb;
    memset(s, 0, sizeof *s);
    s->arg = arg;
    if (!strcmp(arg, "-")) {
        s->kind = SRC_STDIN;
        if (opt.name)
            snprintf(s->name, sizeof s->name, "%s", opt.name);
        return 0;
    }
    if (stat(arg, &sb) < 0) {
        setmsg(why, wsize, "%s", strerror(errno));
        return -1;
    }
    if (S_ISDIR(sb.st_mode)) {
        mnn_manifest_t mf;
        mnn_diag_t d = {""};
        s->kind = SRC_DIR;
        if (mnn_manifest_load(&mf, arg, &s->real, &d) < 0) {
            setmsg(why, wsize, "not a checkpoint directory: %s", d.msg);
            return -1;
        }
        mnn_manifest_free(&mf);
        /* the directory 'latest' points to now: both passes pack it, even if
         * latest moves on meanwhile */
        char *r = realpath(s->real, NULL);
        if (!r) {
            setmsg(why, wsize, "%s: %s", s->real, strerror(errno));
            return -1;
        }
        free(s->real);
        s->real = r;
        const char *base = strrchr(s->real, '/');
        base = base ? base + 1 : s->real;
        if (opt.name)
            snprintf(s->name, sizeof s->name, "%s", opt.name);
        else
            snprintf(s->name, sizeof s->name, "%.246s.tar.zst", base);
        /* pass 1: the archive's size and hash (packing is deterministic) */
        packer_t p;
        int fd;
        double t0 = mono_now();
        if (pack_start(&p, s->real, &fd, why, wsize) < 0)
            return -1;
        XXH3_state_t *st = XXH3_createState();
        char *buf = malloc(CHUNK);
        ssize_t k = -1;
        if (st && buf) {
            XXH3_64bits_reset(st);
            while ((k = read_some(fd, buf, CHUNK)) > 0) {
                XXH3_64bits_update(st, buf, (size_t)k);
                s->size += (uint64_t)k;
            }
            hex64(s->hex, XXH3_64bits_digest(st));
        }
        int e = errno;
        free(buf);
        XXH3_freeState(st);
        if (pack_finish(&p, fd, why, wsize) < 0)
            return -1;
        if (k < 0) {
            setmsg(why, wsize, "cannot pack: %s", strerror(e));
            return -1;
        }
        if (opt.verbose)
            warnx_("%s: packed %s: %" PRIu64 " bytes, XXH3 %s, in %.3f s", printable(s->name),
                   s->real, s->size, s->hex, mono_now() - t0);
    } else if (S_ISREG(sb.st_mode)) {
        s->kind = SRC_FILE;
        if (!mnn_ckpt_is_archive(arg)) {
            setmsg(why, wsize, "not a checkpoint archive (no zstd frame at its start)");
            return -1;
        }
        const char *base = strrchr(arg, '/');
        snprintf(s->name, sizeof s->name, "%s", opt.name ? opt.name : base ? base + 1 : arg);
        /* read, not mapped: a file cut short meanwhile is an error, not
         * SIGBUS; the time hides behind ssh's handshake */
        if (mnn_hash_file(arg, s->hex, &s->size) < 0) {
            setmsg(why, wsize, "%s", strerror(errno));
            return -1;
        }
    } else {
        setmsg(why, wsize, "not a checkpoint archive or directory");
        return -1;
    }
    s->known = 1;
    if (!name_ok(s->name)) {
        setmsg(why, wsize, "'%s' cannot be a file name under the destination", printable(s->name));
        return -1;
    }
    return 0;
}

/* ---- progress ------------------------------------------------------------- */

typedef struct {
    const source_t *s;
    uint64_t off, sent;
    double t0, last;
} progress_t;

static void human(char *out, size_t size, double b)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4)
        b /= 1024, i++;
    snprintf(out, size, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void progress_show(progress_t *p, int done)
{
    double t = mono_now();
    if (!opt.progress || (!done && t - p->last < 0.25))
        return;
    p->last = t;
    char a[32], b[32], r[32];
    uint64_t at = p->off + p->sent;
    human(a, sizeof a, (double)at);
    human(r, sizeof r, t > p->t0 ? (double)p->sent / (t - p->t0) : 0);
    if (p->s->known) {
        human(b, sizeof b, (double)p->s->size);
        fprintf(stderr, "\r%s  %s / %s  %3.0f%%  %s/s \033[K", printable(p->s->name), a, b,
                p->s->size ? 100.0 * (double)at / (double)p->s->size : 100.0, r);
    } else
        fprintf(stderr, "\r%s  %s  %s/s \033[K", p->s->name[0] ? printable(p->s->name) : "-", a, r);
    if (done)
        fputc('\n', stderr);
}

/* ---- one transfer ---------------------------------------------------------- */

enum { SHIP_OK = 0, SHIP_RETRY = -1, SHIP_FATAL = -2 };

/* Reads one reply line; SHIP_OK, or an error with why. */
static int reply(conn_t *c, char *line, size_t size, char *why, size_t wsize)
{
    int k;
    /* WAIT: the receiver is still hashing or syncing */
    while ((k = input_line(&c->from, line, size, opt.timeout)) == 1 && !strcmp(line, "WAIT"))
        ;
    if (k == 1) {
        if (!strncmp(line, "ERR ", 4) || !strncmp(line, "REFUSE ", 7)) {
            setmsg(why, wsize, "the receiver said: %s", strchr(line, ' ') + 1);
            return line[0] == 'R' ? SHIP_FATAL : SHIP_RETRY;
        }
        return SHIP_OK;
    }
    setmsg(why, wsize, "%s", k == 0 ? "the connection closed" : errno == ETIMEDOUT
        ? "no answer within --timeout" : strerror(errno));
    return SHIP_RETRY;
}

/* After a failed write: the receiver may have said why before it hung up. */
static int write_failed(conn_t *c, char *why, size_t wsize)
{
    int e = errno;
    char line[1100];
    if (e == EPIPE || e == ECONNRESET) {
        int rc = reply(c, line, sizeof line, why, wsize);
        if (rc != SHIP_OK)
            return rc;
    }
    setmsg(why, wsize, "%s", e == ETIMEDOUT ? "no progress within --timeout"
                               : e == EPIPE   ? "the connection closed"
                                              : strerror(e));
    return SHIP_RETRY;
}

static int ship_one(conn_t *c, source_t *s, const dest_t *d, char *why, size_t wsize)
{
    char enc[4 * NAME_MAX_ + 2] = "-", line[1100];
    if (s->name[0])
        pct_encode(enc, sizeof enc, s->name);
    if (s->known) {
        if (say(c->to, "OFFER %" PRIu64 " %s %s", s->size, s->hex, enc) < 0)
            return write_failed(c, why, wsize);
    } else if (say(c->to, "OFFER - - %s", enc) < 0)
        return write_failed(c, why, wsize);
    int rc = reply(c, line, sizeof line, why, wsize);
    if (rc != SHIP_OK)
        return rc;
    uint64_t off;
    if (!strcmp(line, "EXISTS")) {
        if (opt.verbose)
            warnx_("%s: already there", printable(s->name));
        goto done;
    }
    if (strncmp(line, "HAVE ", 5) || mnn_parse_u64(line + 5, &off) < 0 ||
        (s->known ? off > s->size : off != 0)) {
        setmsg(why, wsize, "unexpected answer from the receiver: '%.60s'", printable(line));
        return SHIP_FATAL;
    }
    if (off && opt.verbose)
        warnx_("%s: resuming at byte %" PRIu64 " of %" PRIu64, printable(s->name), off, s->size);

    /* the bytes from off on */
    int fd = -1;
    packer_t p;
    if (s->kind == SRC_FILE) {
        fd = open(s->arg, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || lseek(fd, (off_t)off, SEEK_SET) < 0) {
            setmsg(why, wsize, "%s: %s", s->arg, strerror(errno));
            if (fd >= 0)
                close(fd);
            return SHIP_FATAL;
        }
    } else if (s->kind == SRC_DIR) {
        if (pack_start(&p, s->real, &fd, why, wsize) < 0)
            return SHIP_FATAL;
    } else
        fd = STDIN_FILENO;

    enum { HDR = 32 };
    char *buf = malloc(HDR + CHUNK);
    XXH3_state_t *st = XXH3_createState();
    if (!buf || !st) {
        free(buf);
        XXH3_freeState(st);
        if (s->kind == SRC_DIR)
            pack_finish(&p, fd, why, wsize);
        else if (s->kind == SRC_FILE)
            close(fd);
        setmsg(why, wsize, "out of memory");
        return SHIP_FATAL;
    }
    XXH3_64bits_reset(st);
    progress_t pr = {s, off, 0, mono_now(), 0};
    uint64_t skip = s->kind == SRC_DIR ? off : 0, total = off;
    size_t chunk = CHUNK;
    if (opt.bwlimit && opt.bwlimit / 8 < chunk) /* smooth at low rates */
        chunk = opt.bwlimit / 8 > 4096 ? (size_t)(opt.bwlimit / 8) : 4096;
    if (opt.bwlimit && opt.timeout && (double)chunk > (double)opt.bwlimit * opt.timeout / 2)
        chunk = opt.bwlimit * opt.timeout / 2 > 512 ? (size_t)(opt.bwlimit * opt.timeout / 2) : 512;
    rc = SHIP_OK;
    for (int splicing = s->kind == SRC_FILE; splicing;) {
        /* a file: its pages go from the page cache into the pipe to ssh
         * without being copied here (splice) */
        uint64_t left = s->size - total;
        size_t n = left < chunk ? (size_t)left : chunk, moved = 0;
        if (n == 0)
            break;
        char h[HDR];
        int hl = snprintf(h, sizeof h, "DATA %zu\n", n);
        if (write_all(c->to, h, (size_t)hl, opt.timeout) < 0) {
            rc = write_failed(c, why, wsize);
            break;
        }
        while (moved < n && rc == SHIP_OK) {
            ssize_t k = splice(fd, NULL, c->to, NULL, n - moved, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (k < 0 && errno == EINVAL && moved == 0) {
                /* no splice here: the same bytes by read and write */
                size_t got = 0;
                while (got < n && (k = read_some(fd, buf + HDR + got, n - got)) > 0)
                    got += (size_t)k;
                if (got == n && write_all(c->to, buf + HDR, n, opt.timeout) < 0)
                    rc = write_failed(c, why, wsize);
                k = got == n ? (ssize_t)n : k;
                splicing = 0;
            }
            if (k > 0) {
                moved += (size_t)k;
                continue;
            }
            if (k < 0 && (errno == EPIPE || errno == ECONNRESET))
                rc = write_failed(c, why, wsize); /* the connection, not the file */
            else if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN)) {
                setmsg(why, wsize, "%s: %s", s->arg, k == 0 ? "shorter than it was" : strerror(errno));
                rc = SHIP_FATAL;
            } else if (k < 0 && errno == EAGAIN) {
                int r = wait_fd(c->to, POLLOUT, opt.timeout);
                if (r <= 0) {
                    errno = r == 0 ? ETIMEDOUT : errno;
                    rc = write_failed(c, why, wsize);
                }
            }
        }
        if (rc != SHIP_OK)
            break;
        pr.sent += n;
        total += n;
        if (opt.bwlimit) {
            double ahead = (double)pr.sent / (double)opt.bwlimit - (mono_now() - pr.t0);
            if (ahead > 0)
                sleep_s(ahead);
        }
        progress_show(&pr, 0);
    }
    double last_sent = mono_now();
    for (; rc == SHIP_OK && !(s->kind == SRC_FILE && total == s->size);) {
        /* nothing to send for a while (bytes the receiver has, or a source
         * that is slow to come): tell the receiver, whose --timeout would
         * otherwise drop the connection */
        if (opt.timeout && s->kind != SRC_FILE) {
            const int quiet_ms = (int)(opt.timeout * 1000 / 3);
            struct pollfd pf = {.fd = fd, .events = POLLIN};
            if (mono_now() - last_sent > quiet_ms / 1000.0 ||
                (poll(&pf, 1, quiet_ms) == 0 && !skip)) {
                if (say(c->to, "NOOP") < 0) {
                    rc = write_failed(c, why, wsize);
                    break;
                }
                last_sent = mono_now();
                continue;
            }
        }
        ssize_t k = read_some(fd, buf + HDR, skip && skip < chunk ? (size_t)skip : chunk);
        if (k < 0) {
            setmsg(why, wsize, "%s: %s", s->kind == SRC_STDIN ? "stdin" : s->arg, strerror(errno));
            rc = SHIP_FATAL;
            break;
        }
        if (k == 0)
            break;
        if (skip) { /* a repacked directory: the receiver has these */
            skip -= (uint64_t)k;
            continue;
        }
        if (!s->known)
            XXH3_64bits_update(st, buf + HDR, (size_t)k);
        char h[HDR];
        int hl = snprintf(h, sizeof h, "DATA %zd\n", k);
        memcpy(buf + HDR - hl, h, (size_t)hl);
        if (write_all(c->to, buf + HDR - hl, (size_t)hl + (size_t)k, opt.timeout) < 0) {
            rc = write_failed(c, why, wsize);
            break;
        }
        pr.sent += (uint64_t)k;
        total += (uint64_t)k;
        last_sent = mono_now();
        if (opt.bwlimit) {
            double ahead = (double)pr.sent / (double)opt.bwlimit - (mono_now() - pr.t0);
            if (ahead > 0)
                sleep_s(ahead);
        }
        progress_show(&pr, 0);
    }
    if (s->kind == SRC_DIR) {
        if (pack_finish(&p, fd, rc == SHIP_OK ? why : line, rc == SHIP_OK ? wsize : sizeof line) < 0 &&
            rc == SHIP_OK)
            rc = SHIP_FATAL;
    } else if (s->kind == SRC_FILE)
        close(fd);
    free(buf);
    char hex[17];
    hex64(hex, XXH3_64bits_digest(st));
    XXH3_freeState(st);
    if (rc != SHIP_OK)
        return rc;
    if (s->known && total != s->size) {
        setmsg(why, wsize, "%s changed while it was shipped (%" PRIu64 " bytes, not %" PRIu64 ")",
                 s->arg, total, s->size);
        return SHIP_FATAL;
    }
    if (s->kind == SRC_STDIN)
        memcpy(s->hex, hex, sizeof hex), s->size = total;
    if (say(c->to, "END %" PRIu64 " %s", s->known ? s->size : total, s->hex) < 0)
        return write_failed(c, why, wsize);
    progress_show(&pr, 1);
    const double t_end = mono_now();
    if ((rc = reply(c, line, sizeof line, why, wsize)) != SHIP_OK)
        return rc;
    char got[NAME_MAX_ + 1];
    if (strncmp(line, "OK ", 3) || pct_decode(got, sizeof got, line + 3) < 0 || !name_ok(got)) {
        setmsg(why, wsize, "unexpected answer from the receiver: '%.60s'", printable(line));
        return SHIP_RETRY;
    }
    if (!s->name[0])
        snprintf(s->name, sizeof s->name, "%s", got);
    if (opt.verbose) {
        double t = mono_now() - pr.t0;
        warnx_("%s: sent %" PRIu64 " bytes in %.3f s (%.1f MiB/s); checked and synced by the"
               " receiver in the last %.3f s", printable(s->name), pr.sent, t,
               t > 0 ? (double)pr.sent / 1048576.0 / t : 0.0, mono_now() - t_end);
    }
done:
    if (d->host)
        printf("%s:%s/%s\n", d->label, d->dir, s->name);
    else
        printf("%s/%s\n", d->dir, s->name);
    fflush(stdout);
    out_check();
    return SHIP_OK;
}

/* Ships one SRC with retries; 0 or -1. */
static int ship(conn_t *c, const dest_t *d, const char *arg)
{
    source_t s;
    int opened = 0, rc = SHIP_RETRY;
    char why[2048] = "";
    memset(&s, 0, sizeof s);
    for (unsigned attempt = 0;; attempt++) {
        int permanent = 0;
        rc = SHIP_OK;
        if (!c->open && conn_open(c, d, why, sizeof why, &permanent) < 0)
            rc = permanent ? SHIP_FATAL : SHIP_RETRY;
        if (!opened) { /* hashing the source overlaps ssh's handshake */
            char swhy[2048];
            if (source_open(&s, arg, swhy, sizeof swhy) < 0) {
                warnx_("%s: %s", printable(arg), swhy);
                free(s.real);
                return -1;
            }
            opened = 1;
        }
        if (rc == SHIP_OK && conn_greet(c, d, why, sizeof why, &permanent) < 0)
            rc = permanent ? SHIP_FATAL : SHIP_RETRY;
        if (rc == SHIP_OK)
            rc = ship_one(c, &s, d, why, sizeof why);
        if (rc == SHIP_OK)
            break;
        /* a connection that failed mid-transfer is out of step */
        conn_close(c, 1);
        if (rc == SHIP_FATAL || attempt >= opt.retries || s.kind == SRC_STDIN)
            break;
        unsigned wait = attempt < 6 ? 1u << attempt : 60;
        if (!opt.quiet)
            warnx_("%s: attempt %u failed: %s; retrying in %u s",
                   printable(s.name[0] ? s.name : arg), attempt + 1, why, wait);
        sleep_s(wait);
    }
    if (rc != SHIP_OK)
        warnx_("%s: %s", printable(s.name[0] ? s.name : arg), why);
    free(s.real);
    return rc == SHIP_OK ? 0 : -1;
}

/* ---- main -------------------------------------------------------------------- */

static uint64_t opt_rate(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mul = 1024;
    if (end != s && *end && !end[1]) {
        switch (toupper((unsigned char)*end)) {
        case 'K': mul = 1024; end++; break;
        case 'M': mul = 1024.0 * 1024; end++; break;
        case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
        }
    }
    if (end == s || *end || errno || !(v > 0) || v * mul > 1e15)
        usage_error("--bwlimit: '%s' is not a rate (KiB/s, or with K, M or G)", s);
    uint64_t r = (uint64_t)(v * mul);
    return r ? r : 1;
}

int main(int argc, char **argv)
{
    enum { O_RECEIVE = 256, O_RPATH, O_FILES, O_NAME, O_KEEP, O_LEVEL, O_RETRIES, O_TIMEOUT,
           O_BWLIMIT };
    static const struct option longopts[] = {
        {"rsh", required_argument, NULL, 'e'},
        {"receive-path", required_argument, NULL, O_RPATH},
        {"files-from", required_argument, NULL, O_FILES},
        {"name", required_argument, NULL, O_NAME},
        {"keep", required_argument, NULL, O_KEEP},
        {"level", required_argument, NULL, O_LEVEL},
        {"retries", required_argument, NULL, O_RETRIES},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"bwlimit", required_argument, NULL, O_BWLIMIT},
        {"receive", no_argument, NULL, O_RECEIVE},
        CLI_COMMON_LONGOPTS};
    const char *files_from = NULL;
    int receive = 0, c;
    cli_init("ckpt-ship");
    out_setup();
    opt.rsh = getenv("CKPT_SHIP_RSH");
    if (!opt.rsh || !*opt.rsh)
        opt.rsh = "ssh";
    opt.receive_path = "ckpt-ship";
    while ((c = getopt_long(argc, argv, "e:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'e':
            if (!*optarg)
                usage_error("-e: empty command");
            opt.rsh = optarg;
            break;
        case O_RPATH:
            if (!*optarg)
                usage_error("--receive-path: empty command");
            opt.receive_path = optarg;
            break;
        case O_FILES: files_from = optarg; break;
        case O_NAME:
            if (!name_ok(optarg))
                usage_error("--name: '%s' cannot be a file name in the destination", printable(optarg));
            opt.name = optarg;
            break;
        case O_KEEP: opt.keep = opt_size("--keep", optarg, 0, 1000000); break;
        case O_LEVEL: opt.level = (int)opt_size("--level", optarg, 1, 19); break;
        case O_RETRIES: opt.retries = (unsigned)opt_size("--retries", optarg, 0, 1000); break;
        case O_TIMEOUT: opt.timeout = (unsigned)opt_size("--timeout", optarg, 0, 86400); break;
        case O_BWLIMIT: opt.bwlimit = opt_rate(optarg); break;
        case O_RECEIVE: receive = 1; break;
        case 'q': opt.quiet = 1; break;
        case 'v': opt.verbose = 1; break;
        case 'h': help();
        case 'V': print_version();
        default: usage_error("unknown option");
        }
    }
    int nargs = argc - optind;
    if (receive) {
        if (nargs != 1)
            usage_error("--receive takes one DIR");
        if (files_from || opt.name)
            usage_error("--receive takes no --files-from or --name");
        receive_main(argv[optind]);
    }
    if (files_from ? nargs != 1 : nargs < 2)
        usage_error(files_from ? "--files-from takes one DEST and no SRC"
                               : "expected SRC... DEST");
    if (opt.name && (files_from || nargs != 2))
        usage_error("--name takes exactly one SRC");
    int dashes = 0;
    for (int i = optind; i < argc - 1; i++)
        dashes += !strcmp(argv[i], "-");
    if (dashes > 1 || (files_from && !strcmp(files_from, "-") && dashes))
        usage_error("stdin can be read only once");
    opt.progress = !opt.quiet && isatty(STDERR_FILENO);
    signal(SIGPIPE, SIG_IGN); /* a dead connection is an error from write() */
    signal(SIGCHLD, SIG_DFL); /* waitpid() must see the children's status */

    dest_t d;
    parse_dest(&d, argv[argc - 1]);
    conn_t conn = {.open = 0};
    int failed = 0;
    if (files_from) {
        FILE *f = strcmp(files_from, "-") ? fopen(files_from, "re") : stdin;
        if (!f)
            die(EXIT_RUNTIME, "%s: %s", files_from, strerror(errno));
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        unsigned long lineno = 0;
        while ((n = getline(&line, &cap, f)) > 0) {
            lineno++;
            if (line[n - 1] == '\n')
                line[--n] = 0;
            if (n == 0)
                continue;
            if (!strcmp(line, "-")) {
                warnx_("%s:%lu: '-' is not a checkpoint path here", files_from, lineno);
                failed++;
                continue;
            }
            failed += ship(&conn, &d, line) < 0;
        }
        if (ferror(f))
            warnx_("%s: %s", files_from, strerror(errno)), failed++;
        free(line);
        if (f != stdin)
            fclose(f);
    } else {
        for (int i = optind; i < argc - 1; i++)
            failed += ship(&conn, &d, argv[i]) < 0;
    }
    if (conn.open) {
        say(conn.to, "BYE");
        conn_close(&conn, 0);
    }
    free(d.host);
    free(d.label);
    free(d.dir);
    out_close();
    return failed ? EXIT_RUNTIME : EXIT_OK;
}
