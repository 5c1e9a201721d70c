/* ship-proto.c - what both ends of ckpt-ship use: the options, names on
 * the wire, buffered input with deadlines, whole writes, protocol lines. */
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


ship_opts_t opt = {.level = 3, .retries = 3, .timeout = 60};

void sleep_s(double s)
{
    struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&t, &t) < 0 && errno == EINTR)
        ;
}

/* A message into why (cut to fit). */
void setmsg(char *why, size_t wsize, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, wsize, fmt, ap);
    va_end(ap);
}


/* ---- names ------------------------------------------------------------------
 * A checkpoint's file name travels %XX-encoded, so that any byte (a space, a
 * newline) survives a line-based protocol.  Accepted names: 1 to 255 bytes,
 * no '/' or NUL, not . or .., not 'latest', not one of our partial files
 * and not .tmp-* (the temporary link that replaces 'latest'). */

int name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= NAME_MAX_ && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") &&
           strcmp(s, "latest") && strncmp(s, PART_PREFIX, strlen(PART_PREFIX)) &&
           strncmp(s, ".tmp-", 5);
}

void pct_encode(char *out, size_t size, const char *s)
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
int pct_decode(char *out, size_t size, const char *s)
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
const char *printable(const char *s)
{
    static char buf[4 * NAME_MAX_ + 1];
    size_t o = 0;
    for (; *s && o + 1 < sizeof buf; s++)
        buf[o++] = iscntrl((unsigned char)*s) ? '?' : *s;
    buf[o] = 0;
    return buf;
}

/* 1 and *step, *cut for "step-N.tar.zst" or "step-N-cID.tar.zst" (a
 * pipeline's cut) with N and ID as sgd-train writes them. */
int archive_step(const char *name, uint64_t *step, uint64_t *cut)
{
    const char *ext = ".tar.zst";
    size_t n = strlen(name), e = strlen(ext);
    char base[64];
    if (n <= e || n - e >= sizeof base || strcmp(name + n - e, ext))
        return 0;
    memcpy(base, name, n - e);
    base[n - e] = 0;
    return mnn_ckpt_name_parse(base, step, cut) == 0;
}

/* ---- buffered input with a timeout ------------------------------------------ */


int input_init(input_t *in, int fd, size_t cap)
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

/* Waits until the monotonic time `until` (0: forever) for fd; 1 ready, 0
 * timed out, -1 error. */
int wait_until(int fd, short ev, double until)
{
    struct pollfd p = {.fd = fd, .events = ev};
    for (;;) {
        int ms = -1;
        if (until > 0) {
            double left = until - mono_now();
            if (left <= 0)
                return 0;
            ms = (int)(left * 1000) + 1;
        }
        int r = poll(&p, 1, ms);
        if (r >= 0 || errno != EINTR)
            return r;
    }
}

/* The deadline `timeout` seconds from now, 0 for none. */
double deadline(unsigned timeout) { return timeout ? mono_now() + timeout : 0; }

/* Waits up to `timeout` seconds (0: forever) for fd; 1 ready, 0 timed out,
 * -1 error. */
int wait_fd(int fd, short ev, unsigned timeout)
{
    return wait_until(fd, ev, deadline(timeout));
}

/* Reads more bytes after the buffered ones, waiting until the monotonic
 * time `until` (0: forever); 1 got some, 0 end of file, -1 error or
 * timeout (errno ETIMEDOUT). */
int input_fill(input_t *in, double until)
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
            ready = wait_until(in->fd, POLLIN, until);
            if (ready == 0)
                errno = ETIMEDOUT;
            if (ready <= 0)
                return -1;
        }
        ssize_t k = read(in->fd, in->buf + in->len, in->cap - in->len);
        if (k < 0 && errno == EAGAIN && in->nonblock) {
            ready = wait_until(in->fd, POLLIN, until);
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

/* One line without its '\n' into out (at most size-1 bytes, else ENOBUFS),
 * whole within `timeout` seconds (0: no limit): a peer that trickles a line
 * a byte at a time does not hold the reader longer.  1 a line, 0 end of
 * file, -1 error or timeout (ETIMEDOUT). */
int input_line(input_t *in, char *out, size_t size, unsigned timeout)
{
    return input_line_until(in, out, size, deadline(timeout));
}

int input_line_until(input_t *in, char *out, size_t size, double until)
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
        int r = input_fill(in, until);
        if (r <= 0)
            return r;
    }
}

/* Up to max buffered bytes (reading if none): *p and the count, 0 at end of
 * file, -1 error. */
ssize_t input_take(input_t *in, size_t max, const char **p, unsigned timeout)
{
    if (in->pos == in->len) {
        int r = input_fill(in, deadline(timeout));
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
int write_all(int fd, const void *buf, size_t n, unsigned timeout)
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

ssize_t read_some(int fd, char *buf, size_t n)
{
    ssize_t k;
    while ((k = read(fd, buf, n)) < 0 && errno == EINTR)
        ;
    return k;
}

int say(int fd, const char *fmt, ...)
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
