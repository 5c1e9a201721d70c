/* cli.h - what every mini-nn program shares: messages, exit codes, option
 * value parsing, checked output. */
#ifndef MNN_CLI_H
#define MNN_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdnoreturn.h>

#include "mini-nn.h"

/* EXIT_STOPPED: sgd-train stopped by SIGINT or SIGTERM before the end of its
 * input, its checkpoint written */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_STOPPED = 3 };

extern const char *prog; /* program name for messages */

/* The options every program has, last in its getopt_long table. */
#define CLI_COMMON_LONGOPTS                          \
    {"quiet", no_argument, NULL, 'q'},               \
    {"verbose", no_argument, NULL, 'v'},             \
    {"help", no_argument, NULL, 'h'},                \
    {"version", no_argument, NULL, 'V'},             \
    {NULL, 0, NULL, 0}

void cli_init(const char *name);
/* The options every program has, for the end of its getopt switch
 * (default: cli_common(c, &quiet, &verbose, help)): -q and -v set their
 * flag, -h calls help, -V prints the version; anything else is a usage
 * error. */
void cli_common(int c, int *quiet, int *verbose, void (*help)(void));
/* "prog: message" on stderr */
void warnx_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* when set, messages are appended to cli_held instead of going to stderr
 * (the ranks of an MPI job that fail alike: rank 0 alone says why) */
extern int cli_hold;
extern char cli_held[2048];
/* the status die() or usage_error() exits with (0 before either): for an
 * atexit handler */
extern int cli_status;
noreturn void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* a usage error: message, a hint to --help, exit 2 */
noreturn void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
noreturn void print_version(void);

/* Option values; a bad one is a usage error naming the option. */
size_t opt_size(const char *opt, const char *s, size_t min, size_t max);
uint64_t opt_u64(const char *opt, const char *s);
float opt_float(const char *opt, const char *s);
/* s as a finite number in the wire format's syntax (no locale, no hex, no
 * inf or nan), for an option that words its own range: 0, or -1. */
int opt_number(const char *s, double *v);
/* --on-error=fail|skip: returns 1 for skip */
int opt_on_error(const char *s);

/* A checkpoint argument opened with mnn_ckpt_open (a directory, a root with
 * `latest`, an archive, "-", a directory ckpt-ship received into); dies
 * with the library's message when it cannot be.  An archive's temporary
 * directory is removed by cli_ckpt_close or at exit. */
mnn_ckpt_t *cli_ckpt_open(const char *arg, const char *workdir, unsigned flags);
void cli_ckpt_close(mnn_ckpt_t *ck);

/* The time a checkpoint records as its creation: SOURCE_DATE_EPOCH when
 * set (the reproducible-builds convention), else now.  A value that is not
 * a number of seconds is a usage error: call it once at start. */
int64_t cli_created(void);

/* Growing arrays: the capacity, doubled from 4096, that holds need
 * elements; and realloc of n elements of size bytes that dies when out of
 * memory (or when n * size does not fit). */
size_t grow_cap(size_t cap, size_t need);
void *xrealloc(void *p, size_t n, size_t size);

/* A FILE that writes into memory kept from one use to the next:
 * membuf_open starts m over (m->len = 0); after fclose, m->p holds m->len
 * bytes.  Unlike open_memstream's, the memory is not given back and grown
 * again at every use: a state written at every cut faults no page in anew.
 * Dies when out of memory. */
typedef struct {
    char *p;
    size_t len, cap;
} membuf_t;
FILE *membuf_open(membuf_t *m);

/* In a pipeline with cuts, a stage holds the records back while it
 * snapshots its state at a barrier: pipe_widen makes the pipe on fd (if it
 * is one) hold 1 MiB, so that the stages after it go on meanwhile with
 * what was sent before.  Best effort: a limit (pipe-max-size) or another
 * kind of file leaves it as it is. */
void pipe_widen(int fd);

/* Seconds on the monotonic clock. */
double mono_now(void);
/* Under mpirun (its environment says so): 1, with the job's ranks and this
 * process's rank; else 0. */
int mpirun_rank(size_t *ranks, size_t *rank);

/* "prog: peak resident memory N KiB" on stderr. */
void report_peak_rss(void);

/* Sets OpenBLAS's thread count (0: leave it). */
void set_threads(size_t n);

/* stdout: checked writes.  A write error is fatal (exit 1); a reader that
 * went away (EPIPE) ends the program quietly through SIGPIPE. */
void out_setup(void);
void out_check(void);          /* dies if a write to stdout has failed */
void out_close(void);          /* flush, close, die on error */

#endif
