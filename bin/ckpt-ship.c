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
        mnn_hash_t *st = mnn_hash_new();
        char *buf = malloc(CHUNK);
        ssize_t k = -1;
        if (st && buf) {
            mnn_hash_reset(st);
            while ((k = read_some(fd, buf, CHUNK)) > 0) {
                mnn_hash_update(st, buf, (size_t)k);
                s->size += (uint64_t)k;
            }
            mnn_hash_hex(mnn_hash_digest(st), s->hex);
        }
        int e = errno;
        free(buf);
        mnn_hash_free(st);
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
    mnn_hash_t *st = mnn_hash_new();
    if (!buf || !st) {
        free(buf);
        mnn_hash_free(st);
        if (s->kind == SRC_DIR)
            pack_finish(&p, fd, why, wsize);
        else if (s->kind == SRC_FILE)
            close(fd);
        setmsg(why, wsize, "out of memory");
        return SHIP_FATAL;
    }
    mnn_hash_reset(st);
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
            mnn_hash_update(st, buf + HDR, (size_t)k);
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
    mnn_hash_hex(mnn_hash_digest(st), hex);
    mnn_hash_free(st);
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
        return ship_receive(argv[optind], STDIN_FILENO, STDOUT_FILENO);
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
        int fd = strcmp(files_from, "-") ? open(files_from, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
        input_t in;
        if (fd < 0)
            die(EXIT_RUNTIME, "%s: %s", files_from, strerror(errno));
        if (input_init(&in, fd, PATH_MAX + 2) < 0)
            die(EXIT_RUNTIME, "out of memory");
        char line[PATH_MAX + 1];
        unsigned long lineno = 0;
        for (;;) {
            /* while the next path is a long time coming, NOOP keeps the
             * receiver, whose --timeout counts silence, on the line */
            int k = input_line_until(&in, line, sizeof line,
                                     opt.timeout ? mono_now() + opt.timeout / 3.0 : 0);
            if (k < 0 && errno == ETIMEDOUT) {
                if (conn.open && conn.greeted && say(conn.to, "NOOP") < 0)
                    conn_close(&conn, 1); /* the next path reconnects */
                continue;
            }
            if (k < 0) {
                warnx_("%s:%lu: %s", files_from, lineno + 1,
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
                warnx_("%s:%lu: '-' is not a checkpoint path here", files_from, lineno);
                failed++;
                continue;
            }
            failed += ship(&conn, &d, line) < 0;
        }
        free(in.buf);
        if (fd != STDIN_FILENO)
            close(fd);
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
