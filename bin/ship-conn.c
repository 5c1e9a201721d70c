/* ship-conn.c - ckpt-ship's transport: where to (a local DIR or
 * [user@]host:DIR), the receiver started as a child (coproc.h) that is
 * `ckpt-ship --receive` through the ssh command, or this program itself for
 * a local DIR; its greeting; the end of a connection.  See ship.h. */
#include <config.h>

#include "cli.h"
#include "ship.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void dest_parse(dest_t *d, const char *arg)
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

void dest_free(dest_t *d)
{
    free(d->host);
    free(d->label);
    free(d->dir);
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

int conn_close(conn_t *c, int kill_it)
{
    if (!c->open)
        return -1;
    c->open = 0;
    /* end of input first, so that a receiver can clean up; then signals */
    close(c->cp.to);
    c->cp.to = -1;
    free(c->from.buf); /* from.fd is cp.from, closed by coproc_reap */
    c->from.buf = NULL;
    return coproc_reap(&c->cp, kill_it ? 2 : 5, 3);
}

int conn_open(conn_t *c, const dest_t *d, char *why, size_t wsize, int *permanent)
{
    char cmd[8192], keep[32], tmo[32], sh[4096];
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
        if ((size_t)snprintf(sh, sizeof sh, "%s \"$@\"", opt.rsh) >= sizeof sh) {
            setmsg(why, wsize, "the ssh command is too long");
            *permanent = 1;
            return -1;
        }
        /* /bin/sh -c 'RSH "$@"' ckpt-ship-rsh HOST CMD */
        argv[a++] = sh;
        argv[a++] = "ckpt-ship-rsh";
        argv[a++] = d->host;
        argv[a++] = cmd;
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

    if (coproc_start(&c->cp, argv, d->host ? COPROC_SHELL : 0) < 0) {
        int e = errno;
        setmsg(why, wsize, "the receiver could not be started: %s", strerror(e));
        /* out of processes or descriptors may pass; a program that cannot
         * be run does not */
        *permanent = e != EAGAIN && e != ENOMEM && e != EMFILE && e != ENFILE;
        return -1;
    }
    fcntl(c->cp.to, F_SETPIPE_SZ, (int)CHUNK); /* fewer, larger writes; advice only */
    fcntl(c->cp.to, F_SETFL, O_NONBLOCK);
    c->open = 1;
    if (input_init(&c->from, c->cp.from, 8192) < 0) {
        c->from.buf = NULL;
        conn_close(c, 1);
        setmsg(why, wsize, "out of memory");
        return -1;
    }
    c->greeted = 0;
    return 0;
}

int conn_greet(conn_t *c, const dest_t *d, char *why, size_t wsize, int *permanent)
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
