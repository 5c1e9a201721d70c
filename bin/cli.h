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
/* "prog: message" on stderr */
void warnx_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
noreturn void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* a usage error: message, a hint to --help, exit 2 */
noreturn void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
noreturn void print_version(void);

/* Option values; a bad one is a usage error naming the option. */
size_t opt_size(const char *opt, const char *s, size_t min, size_t max);
uint64_t opt_u64(const char *opt, const char *s);
float opt_float(const char *opt, const char *s);
/* --on-error=fail|skip: returns 1 for skip */
int opt_on_error(const char *s);

/* A checkpoint argument as the programs read it: a directory with no
 * manifest whose `latest` link names an archive (a directory that
 * ckpt-ship receives into) means that archive, spelled into buf; anything
 * else is returned as it is. */
const char *ckpt_source(const char *arg, char *buf, size_t size);

/* Seconds on the monotonic clock. */
double mono_now(void);

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
