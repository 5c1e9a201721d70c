/* ship-send.c - the sending end of ckpt-ship: for each SRC an offer, the
 * bytes the receiver lacks (resuming where a broken connection left off),
 * the end and the receiver's word that the checkpoint is in place; retries
 * with backoff; --files-from's paths as they arrive; progress.  See ship.h
 * for the protocol. */
#include <config.h>

#include "cli.h"
#include "ship.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* SHIP_EXISTS: the receiver has the checkpoint already (offer() only) */
enum { SHIP_OK = 0, SHIP_RETRY = -1, SHIP_FATAL = -2, SHIP_EXISTS = 1 };

/* Reads one reply line; SHIP_OK, or an error with why.  'WAIT N' says the
 * receiver is still hashing or checking, N its bytes done: only a WAIT
 * whose N grew gives it another --timeout. */
static int reply(conn_t *c, char *line, size_t size, char *why, size_t wsize)
{
    int k;
    uint64_t done = 0, n;
    double until = deadline(opt.timeout);
    for (;;) {
        unsigned left = 0;
        if (until > 0) {
            double l = until - mono_now();
            if (l <= 0) {
                setmsg(why, wsize, "the receiver made no progress within --timeout");
                return SHIP_RETRY;
            }
            left = (unsigned)l + 1;
        }
        k = input_line(&c->from, line, size, left);
        if (k != 1 || strncmp(line, "WAIT", 4) || (line[4] && line[4] != ' '))
            break;
        if (line[4] == ' ' && mnn_parse_u64(line + 5, &n) == 0 && n > done) {
            done = n;
            until = deadline(opt.timeout);
        }
    }
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

/* OFFER, and the receiver's answer: SHIP_OK with the bytes it holds in
 * *off, SHIP_EXISTS, or an error with why. */
static int offer(conn_t *c, const source_t *s, uint64_t *off, char *why, size_t wsize)
{
    char enc[4 * NAME_MAX_ + 2] = "-", line[1100];
    if (s->name[0])
        pct_encode(enc, sizeof enc, s->name);
    if (s->known) {
        if (say(c->cp.to, "OFFER %" PRIu64 " %s %s", s->size, s->hex, enc) < 0)
            return write_failed(c, why, wsize);
    } else if (say(c->cp.to, "OFFER - - %s", enc) < 0)
        return write_failed(c, why, wsize);
    int rc = reply(c, line, sizeof line, why, wsize);
    if (rc != SHIP_OK)
        return rc;
    if (!strcmp(line, "EXISTS"))
        return SHIP_EXISTS;
    if (strncmp(line, "HAVE ", 5) || mnn_parse_u64(line + 5, off) < 0 ||
        (s->known ? *off > s->size : *off != 0)) {
        setmsg(why, wsize, "unexpected answer from the receiver: '%.60s'", printable(line));
        return SHIP_FATAL;
    }
    return SHIP_OK;
}

enum { HDR = 32 }; /* room for a DATA header before a frame's bytes */

/* The bytes of one transfer on their way. */
typedef struct {
    conn_t *c;
    source_t *s;
    int fd;         /* the source: the file, the packer's pipe, or stdin */
    packer_t p;     /* SRC_DIR: the packer */
    char *buf;      /* HDR + CHUNK bytes: a DATA header, then its bytes */
    mnn_hash_t *st; /* the bytes read (an unnamed stream's XXH3) */
    progress_t pr;
    uint64_t skip;  /* a repacked directory's first bytes, which the receiver has */
    uint64_t total; /* the source's bytes so far, counted from its start */
    size_t chunk;   /* bytes per DATA frame at most */
} xfer_t;

/* Ends reading the source: rc, or SHIP_FATAL where the packer failed (why
 * says so unless rc had failed already); the XXH3 of what was read into hex. */
static int xfer_end(xfer_t *x, int rc, char hex[17], char *why, size_t wsize)
{
    char scratch[1100];
    if (x->s->kind == SRC_DIR) {
        if (pack_finish(&x->p, x->fd, rc == SHIP_OK ? why : scratch,
                        rc == SHIP_OK ? wsize : sizeof scratch) < 0 && rc == SHIP_OK)
            rc = SHIP_FATAL;
    } else if (x->s->kind == SRC_FILE)
        close(x->fd);
    free(x->buf);
    if (x->st)
        mnn_hash_hex(mnn_hash_digest(x->st), hex);
    mnn_hash_free(x->st);
    return rc;
}

/* The source from byte off on; SHIP_OK, or SHIP_FATAL with why. */
static int xfer_start(xfer_t *x, conn_t *c, source_t *s, uint64_t off, char *why, size_t wsize)
{
    memset(x, 0, sizeof *x);
    x->c = c;
    x->s = s;
    x->fd = -1;
    if (s->kind == SRC_FILE) {
        x->fd = open(s->arg, O_RDONLY | O_CLOEXEC);
        if (x->fd < 0 || lseek(x->fd, (off_t)off, SEEK_SET) < 0) {
            setmsg(why, wsize, "%s: %s", s->arg, strerror(errno));
            if (x->fd >= 0)
                close(x->fd);
            return SHIP_FATAL;
        }
    } else if (s->kind == SRC_DIR) {
        if (pack_start(&x->p, s->real, &x->fd, why, wsize) < 0)
            return SHIP_FATAL;
    } else
        x->fd = STDIN_FILENO;
    x->buf = malloc(HDR + CHUNK);
    x->st = mnn_hash_new();
    if (!x->buf || !x->st) {
        char hex[17];
        xfer_end(x, SHIP_FATAL, hex, why, wsize);
        setmsg(why, wsize, "out of memory");
        return SHIP_FATAL;
    }
    mnn_hash_reset(x->st);
    x->pr = (progress_t){s, off, 0, mono_now(), 0};
    x->skip = s->kind == SRC_DIR ? off : 0;
    x->total = off;
    x->chunk = CHUNK;
    if (opt.bwlimit && opt.bwlimit / 8 < x->chunk) /* smooth at low rates */
        x->chunk = opt.bwlimit / 8 > 4096 ? (size_t)(opt.bwlimit / 8) : 4096;
    if (opt.bwlimit && opt.timeout && (double)x->chunk > (double)opt.bwlimit * opt.timeout / 2)
        x->chunk = opt.bwlimit * opt.timeout / 2 > 512 ? (size_t)(opt.bwlimit * opt.timeout / 2)
                                                       : 512;
    return SHIP_OK;
}

/* n more bytes sent: counted, paced to --bwlimit, shown. */
static void xfer_sent(xfer_t *x, uint64_t n)
{
    x->pr.sent += n;
    x->total += n;
    if (opt.bwlimit) {
        double ahead = (double)x->pr.sent / (double)opt.bwlimit - (mono_now() - x->pr.t0);
        if (ahead > 0)
            sleep_s(ahead);
    }
    progress_show(&x->pr, 0);
}

/* A file: its pages go from the page cache into the pipe to the receiver
 * without being copied here (splice).  Where splice cannot, one frame goes
 * by read and write, and send_read() sends the rest. */
static int send_spliced(xfer_t *x, char *why, size_t wsize)
{
    conn_t *c = x->c;
    const int fd = x->fd;
    int rc = SHIP_OK;
    for (int splicing = 1; splicing;) {
        uint64_t left = x->s->size - x->total;
        size_t n = left < x->chunk ? (size_t)left : x->chunk, moved = 0;
        if (n == 0)
            break;
        char h[HDR];
        int hl = snprintf(h, sizeof h, "DATA %zu\n", n);
        if (write_all(c->cp.to, h, (size_t)hl, opt.timeout) < 0) {
            rc = write_failed(c, why, wsize);
            break;
        }
        while (moved < n && rc == SHIP_OK) {
            ssize_t k = splice(fd, NULL, c->cp.to, NULL, n - moved,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (k < 0 && errno == EINVAL && moved == 0) {
                /* no splice here: the same bytes by read and write */
                size_t got = 0;
                while (got < n && (k = read_some(fd, x->buf + HDR + got, n - got)) > 0)
                    got += (size_t)k;
                if (got == n && write_all(c->cp.to, x->buf + HDR, n, opt.timeout) < 0)
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
                setmsg(why, wsize, "%s: %s", x->s->arg,
                       k == 0 ? "shorter than it was" : strerror(errno));
                rc = SHIP_FATAL;
            } else if (k < 0 && errno == EAGAIN) {
                int r = wait_fd(c->cp.to, POLLOUT, opt.timeout);
                if (r <= 0) {
                    errno = r == 0 ? ETIMEDOUT : errno;
                    rc = write_failed(c, why, wsize);
                }
            }
        }
        if (rc != SHIP_OK)
            break;
        xfer_sent(x, n);
    }
    return rc;
}

/* The rest of the source by read and write, to its end (a file: to its
 * size); a directory's first x->skip bytes are read and dropped. */
static int send_read(xfer_t *x, char *why, size_t wsize)
{
    conn_t *c = x->c;
    const source_t *s = x->s;
    double last_sent = mono_now();
    while (!(s->kind == SRC_FILE && x->total == s->size)) {
        /* nothing to send for a while (bytes the receiver has, or a source
         * that is slow to come): tell the receiver, whose --timeout would
         * otherwise drop the connection */
        if (opt.timeout && s->kind != SRC_FILE) {
            const int quiet_ms = (int)(opt.timeout * 1000 / 3);
            struct pollfd pf = {.fd = x->fd, .events = POLLIN};
            if (mono_now() - last_sent > quiet_ms / 1000.0 ||
                (poll(&pf, 1, quiet_ms) == 0 && !x->skip)) {
                if (say(c->cp.to, "NOOP") < 0)
                    return write_failed(c, why, wsize);
                last_sent = mono_now();
                continue;
            }
        }
        ssize_t k = read_some(x->fd, x->buf + HDR,
                              x->skip && x->skip < x->chunk ? (size_t)x->skip : x->chunk);
        if (k < 0) {
            setmsg(why, wsize, "%s: %s", s->kind == SRC_STDIN ? "stdin" : s->arg, strerror(errno));
            return SHIP_FATAL;
        }
        if (k == 0)
            break;
        if (x->skip) { /* a repacked directory: the receiver has these */
            x->skip -= (uint64_t)k;
            continue;
        }
        if (!s->known)
            mnn_hash_update(x->st, x->buf + HDR, (size_t)k);
        char h[HDR];
        int hl = snprintf(h, sizeof h, "DATA %zd\n", k);
        memcpy(x->buf + HDR - hl, h, (size_t)hl);
        if (write_all(c->cp.to, x->buf + HDR - hl, (size_t)hl + (size_t)k, opt.timeout) < 0)
            return write_failed(c, why, wsize);
        last_sent = mono_now();
        xfer_sent(x, (uint64_t)k);
    }
    return SHIP_OK;
}

/* END, and the receiver's OK with the name it published under (an unnamed
 * stream's name from then on). */
static int conclude(conn_t *c, source_t *s, progress_t *pr, uint64_t total, char *why,
                    size_t wsize)
{
    char line[1100];
    if (say(c->cp.to, "END %" PRIu64 " %s", s->known ? s->size : total, s->hex) < 0)
        return write_failed(c, why, wsize);
    progress_show(pr, 1);
    const double t_end = mono_now();
    int rc = reply(c, line, sizeof line, why, wsize);
    if (rc != SHIP_OK)
        return rc;
    char got[NAME_MAX_ + 1];
    if (strncmp(line, "OK ", 3) || pct_decode(got, sizeof got, line + 3) < 0 || !name_ok(got)) {
        setmsg(why, wsize, "unexpected answer from the receiver: '%.60s'", printable(line));
        return SHIP_RETRY;
    }
    if (!s->name[0])
        snprintf(s->name, sizeof s->name, "%s", got);
    if (opt.verbose) {
        double t = mono_now() - pr->t0;
        warnx_("%s: sent %" PRIu64 " bytes in %.3f s (%.1f MiB/s); checked and synced by the"
               " receiver in the last %.3f s", printable(s->name), pr->sent, t,
               t > 0 ? (double)pr->sent / 1048576.0 / t : 0.0, mono_now() - t_end);
    }
    return SHIP_OK;
}

/* A checkpoint in place: DEST/NAME on stdout. */
static void shipped(const dest_t *d, const source_t *s)
{
    if (d->host)
        printf("%s:%s/%s\n", d->label, d->dir, s->name);
    else
        printf("%s/%s\n", d->dir, s->name);
    fflush(stdout);
    out_check();
}

static int ship_one(conn_t *c, source_t *s, const dest_t *d, char *why, size_t wsize)
{
    uint64_t off = 0;
    int rc = offer(c, s, &off, why, wsize);
    if (rc == SHIP_EXISTS) {
        if (opt.verbose)
            warnx_("%s: already there", printable(s->name));
        shipped(d, s);
        return SHIP_OK;
    }
    if (rc != SHIP_OK)
        return rc;
    if (off && opt.verbose)
        warnx_("%s: resuming at byte %" PRIu64 " of %" PRIu64, printable(s->name), off, s->size);
    xfer_t x;
    if ((rc = xfer_start(&x, c, s, off, why, wsize)) != SHIP_OK)
        return rc;
    if (s->kind == SRC_FILE)
        rc = send_spliced(&x, why, wsize);
    if (rc == SHIP_OK)
        rc = send_read(&x, why, wsize);
    char hex[17];
    if ((rc = xfer_end(&x, rc, hex, why, wsize)) != SHIP_OK)
        return rc;
    if (s->known && x.total != s->size) {
        setmsg(why, wsize, "%s changed while it was shipped (%" PRIu64 " bytes, not %" PRIu64 ")",
               s->arg, x.total, s->size);
        return SHIP_FATAL;
    }
    if (s->kind == SRC_STDIN)
        memcpy(s->hex, hex, sizeof hex), s->size = x.total;
    if ((rc = conclude(c, s, &x.pr, x.total, why, wsize)) != SHIP_OK)
        return rc;
    shipped(d, s);
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
                source_free(&s);
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
    source_free(&s);
    return rc == SHIP_OK ? 0 : -1;
}

/* --files-from: ships each path read from file as its line arrives; the
 * number that failed. */
static int ship_lines(conn_t *conn, const dest_t *d, const char *file)
{
    int fd = strcmp(file, "-") ? open(file, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
    input_t in;
    if (fd < 0)
        die(EXIT_RUNTIME, "%s: %s", file, strerror(errno));
    if (input_init(&in, fd, PATH_MAX + 2) < 0)
        die(EXIT_RUNTIME, "out of memory");
    char line[PATH_MAX + 1];
    unsigned long lineno = 0;
    int failed = 0;
    for (;;) {
        /* while the next path is a long time coming, NOOP keeps the
         * receiver, whose --timeout counts silence, on the line */
        int k = input_line_until(&in, line, sizeof line,
                                 opt.timeout ? mono_now() + opt.timeout / 3.0 : 0);
        if (k < 0 && errno == ETIMEDOUT) {
            if (conn->open && conn->greeted && say(conn->cp.to, "NOOP") < 0)
                conn_close(conn, 1); /* the next path reconnects */
            continue;
        }
        if (k < 0) {
            warnx_("%s:%lu: %s", file, lineno + 1,
                   errno == ENOBUFS ? "a line longer than PATH_MAX" : strerror(errno));
            failed++;
            break;
        }
        if (k == 0 && in.len > in.pos && in.len - in.pos < sizeof line) {
            /* a last line without its newline */
            memcpy(line, in.buf + in.pos, in.len - in.pos);
            line[in.len - in.pos] = 0;
            in.pos = in.len;
            k = 1;
        }
        if (k == 0)
            break;
        lineno++;
        if (!line[0])
            continue;
        if (!strcmp(line, "-")) {
            warnx_("%s:%lu: '-' is not a checkpoint path here", file, lineno);
            failed++;
            continue;
        }
        failed += ship(conn, d, line) < 0;
    }
    free(in.buf);
    if (fd != STDIN_FILENO)
        close(fd);
    return failed;
}

int ship_send(const dest_t *d, char *const srcs[], int n, const char *files_from)
{
    conn_t conn = {.open = 0};
    int failed = 0;
    if (files_from)
        failed = ship_lines(&conn, d, files_from);
    else
        for (int i = 0; i < n; i++)
            failed += ship(&conn, d, srcs[i]) < 0;
    if (conn.open) {
        say(conn.cp.to, "BYE");
        conn_close(&conn, 0);
    }
    return failed;
}
