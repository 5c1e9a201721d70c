/* cli.c - what every program shares (see cli.h): messages and exit codes,
 * option values, checked writes to stdout, checkpoint arguments opened
 * through the library (their temporary directories removed at exit),
 * SOURCE_DATE_EPOCH, growing arrays and the one clock. */
#include <config.h>

#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>


const char *prog = "mini-nn";

void cli_init(const char *name) { prog = name; }

void cli_common(int c, int *quiet, int *verbose, void (*help)(void))
{
    switch (c) {
    case 'q': *quiet = 1; return;
    case 'v': *verbose = 1; return;
    case 'h': help(); exit(EXIT_OK); /* help exits */
    case 'V': print_version();
    default: usage_error("unknown option");
    }
}

int cli_hold;
char cli_held[2048];

/* "prog: message\n", written at once: the ranks of an MPI job share a
 * stderr, and their lines must not mix */
static void vmsg(const char *fmt, va_list ap)
{
    fflush(stdout);
    char line[8192];
    int n = snprintf(line, sizeof line, "%s: ", prog);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (cli_hold) { /* kept, the first ones, until told whether to show them */
        size_t o = strlen(cli_held), room = sizeof cli_held - o - 1;
        if (room > 1) {
            size_t len = strlen(line) < room - 1 ? strlen(line) : room - 1;
            memcpy(cli_held + o, line, len);
            cli_held[o + len] = '\n';
            cli_held[o + len + 1] = 0;
        }
        return;
    }
    fprintf(stderr, "%s\n", line);
}

void warnx_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(fmt, ap);
    va_end(ap);
}

int cli_status;

noreturn void die(int status, const char *fmt, ...)
{
    va_list ap;
    cli_status = status;
    va_start(ap, fmt);
    vmsg(fmt, ap);
    va_end(ap);
    exit(status);
}

noreturn void usage_error(const char *fmt, ...)
{
    va_list ap;
    cli_status = EXIT_USAGE;
    va_start(ap, fmt);
    vmsg(fmt, ap);
    va_end(ap);
    if (!cli_hold)
        fprintf(stderr, "Try '%s --help' for more information.\n", prog);
    exit(EXIT_USAGE);
}

noreturn void print_version(void)
{
    printf("%s (%s) %s\n", prog, PACKAGE_NAME, PACKAGE_VERSION);
    out_close();
    exit(EXIT_OK);
}

uint64_t opt_u64(const char *opt, const char *s)
{
    uint64_t v;
    if (!*s)
        usage_error("%s: missing number", opt);
    if (mnn_parse_u64(s, &v) < 0)
        usage_error("%s: '%s' is not a non-negative integer (up to 2^64-1)", opt, s);
    return v;
}

size_t opt_size(const char *opt, const char *s, size_t min, size_t max)
{
    uint64_t v = opt_u64(opt, s);
    if (v < min || v > max)
        usage_error("%s: %s is out of range %zu..%zu", opt, s, min, max);
    return (size_t)v;
}

float opt_float(const char *opt, const char *s)
{
    float v;
    if (mnn_parse_float(s, s + strlen(s), &v) < 0)
        usage_error("%s: '%s' is not a finite number", opt, s);
    return v;
}

int opt_number(const char *s, double *v)
{
    return mnn_parse_double(s, s + strlen(s), v) < 0 ? -1 : 0;
}

int opt_on_error(const char *s)
{
    if (!strcmp(s, "fail"))
        return 0;
    if (!strcmp(s, "skip"))
        return 1;
    usage_error("--on-error: '%s' is not one of fail, skip", s);
}

/* The checkpoints cli_ckpt_open opened and not yet closed, closed at exit
 * so that an archive's temporary directory goes with the program. */
static mnn_ckpt_t *open_ckpts[MNN_MERGE_MAX + 8]; /* ckpt-merge's inputs, and a few */

static void close_ckpts(void)
{
    for (size_t i = 0; i < sizeof open_ckpts / sizeof *open_ckpts; i++)
        if (open_ckpts[i]) {
            mnn_ckpt_close(open_ckpts[i]);
            free(open_ckpts[i]);
            open_ckpts[i] = NULL;
        }
}

mnn_ckpt_t *cli_ckpt_open(const char *arg, const char *workdir, unsigned flags)
{
    static int registered;
    size_t slot = 0, n = sizeof open_ckpts / sizeof *open_ckpts;
    while (slot < n && open_ckpts[slot])
        slot++;
    if (slot == n)
        die(EXIT_RUNTIME, "%s: too many checkpoints open", arg);
    mnn_ckpt_t *ck = malloc(sizeof *ck);
    if (!ck)
        die(EXIT_RUNTIME, "out of memory");
    if (!registered && atexit(close_ckpts) == 0)
        registered = 1;
    if (!strcmp(arg, "-") && isatty(STDIN_FILENO))
        die(EXIT_RUNTIME, "refusing to read an archive from a terminal");
    mnn_diag_t d;
    if (mnn_ckpt_open(ck, arg, workdir, flags, &d) < 0) {
        free(ck);
        die(EXIT_RUNTIME, "%s", d.msg);
    }
    return open_ckpts[slot] = ck;
}

void cli_ckpt_close(mnn_ckpt_t *ck)
{
    for (size_t i = 0; i < sizeof open_ckpts / sizeof *open_ckpts; i++)
        if (open_ckpts[i] == ck)
            open_ckpts[i] = NULL;
    mnn_ckpt_close(ck);
    free(ck);
}

int64_t cli_created(void)
{
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    uint64_t v;
    if (!sde || !*sde)
        return (int64_t)time(NULL);
    if (mnn_parse_u64(sde, &v) < 0 || v > INT64_MAX)
        die(EXIT_USAGE, "SOURCE_DATE_EPOCH: '%s' is not a number of seconds", sde);
    return (int64_t)v;
}

size_t grow_cap(size_t cap, size_t need)
{
    size_t nc = cap ? cap : 4096;
    while (nc < need) {
        if (nc > SIZE_MAX / 2)
            die(EXIT_RUNTIME, "out of memory");
        nc *= 2;
    }
    return nc;
}

void *xrealloc(void *p, size_t n, size_t size)
{
    size_t bytes;
    void *q = mnn_size_mul(n, size, &bytes) < 0 ? NULL : realloc(p, bytes ? bytes : 1);
    if (!q)
        die(EXIT_RUNTIME, "out of memory");
    return q;
}

static ssize_t membuf_write(void *cookie, const char *buf, size_t n)
{
    membuf_t *m = cookie;
    if (m->cap - m->len < n)
        m->p = xrealloc(m->p, m->cap = grow_cap(m->cap, m->len + n), 1);
    memcpy(m->p + m->len, buf, n);
    m->len += n;
    return (ssize_t)n;
}

void pipe_widen(int fd)
{
    struct stat sb;
    if (fstat(fd, &sb) == 0 && S_ISFIFO(sb.st_mode))
        (void)fcntl(fd, F_SETPIPE_SZ, 1 << 20);
}

FILE *membuf_open(membuf_t *m)
{
    m->len = 0;
    FILE *f = fopencookie(m, "w", (cookie_io_functions_t){.write = membuf_write});
    if (!f)
        die(EXIT_RUNTIME, "out of memory");
    return f;
}

int mpirun_rank(size_t *ranks, size_t *rank)
{
    static const char *const sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"};
    static const char *const ranks_[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    const char *n = NULL, *r = NULL;
    for (size_t i = 0; i < 3 && !n; i++)
        n = getenv(sizes[i]);
    for (size_t i = 0; i < 3 && !r; i++)
        r = getenv(ranks_[i]);
    if (!n && !r)
        return 0;
    long nv = n ? strtol(n, NULL, 10) : 1, rv = r ? strtol(r, NULL, 10) : 0;
    *ranks = nv > 0 ? (size_t)nv : 1;
    *rank = rv > 0 ? (size_t)rv : 0;
    return 1;
}

double mono_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void report_peak_rss(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        warnx_("peak resident memory %ld KiB", ru.ru_maxrss);
}

void set_threads(size_t n)
{
    if (n && mnn_set_threads(n) < 0)
        warnx_("--threads: this BLAS cannot set its thread count; ignored");
}

static char out_buf[1 << 16];

void out_setup(void) { setvbuf(stdout, out_buf, _IOFBF, sizeof out_buf); }

void out_check(void)
{
    if (ferror(stdout))
        die(EXIT_RUNTIME, "write error on stdout: %s", strerror(errno ? errno : EIO));
}

void out_close(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        int e = errno ? errno : EIO;
        die(EXIT_RUNTIME, "write error on stdout: %s", strerror(e));
    }
    if (fclose(stdout) != 0 && errno != EBADF)
        die(EXIT_RUNTIME, "write error on stdout: %s", strerror(errno));
}
