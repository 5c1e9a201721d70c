/* ship.h - what the two ends of ckpt-ship share: the options, names on
 * the wire, buffered input with deadlines, whole writes and protocol lines
 * (ship-proto.c), and the receiving end (ship-recv.c).  The protocol itself
 * is described at the top of ckpt-ship.c. */
#ifndef MNN_SHIP_H
#define MNN_SHIP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define GREETING "ckpt-ship 1 ready"
#define CHUNK ((size_t)1 << 20)        /* bytes per DATA frame at most */
#define SYNC_EVERY ((uint64_t)8 << 20) /* receiver: start writeback this often */
#define PART_PREFIX ".ckpt-ship-"
#define PART_MAX_AGE (7 * 24 * 3600)   /* stale partial files, seconds */
#define NAME_MAX_ 255

/* The command line, for both ends. */
typedef struct {
    const char *rsh, *receive_path, *name;
    size_t keep;
    int level;
    unsigned retries;
    unsigned timeout; /* seconds, 0: none */
    uint64_t bwlimit; /* bytes/s, 0: none */
    int quiet, verbose, progress;
} ship_opts_t;

extern ship_opts_t opt;

void sleep_s(double s);
/* A message into why (cut to fit). */
void setmsg(char *why, size_t wsize, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Names on the wire: see ship-proto.c. */
int name_ok(const char *s);
void pct_encode(char *out, size_t size, const char *s);
int pct_decode(char *out, size_t size, const char *s);
const char *printable(const char *s);
int archive_step(const char *name, uint64_t *step);

/* Buffered input with a timeout. */
typedef struct {
    int fd;
    char *buf;
    size_t cap, pos, len;
    int eof;
    int nonblock; /* fd is O_NONBLOCK */
} input_t;

int input_init(input_t *in, int fd, size_t cap);
int wait_until(int fd, short ev, double until);
double deadline(unsigned timeout);
int wait_fd(int fd, short ev, unsigned timeout);
int input_fill(input_t *in, double until);
int input_line(input_t *in, char *out, size_t size, unsigned timeout);
/* The same, whole by the monotonic time until (0: no limit). */
int input_line_until(input_t *in, char *out, size_t size, double until);
ssize_t input_take(input_t *in, size_t max, const char **p, unsigned timeout);
int write_all(int fd, const void *buf, size_t n, unsigned timeout);
/* One protocol line (a newline in the message becomes a space). */
int say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The receiving end in directory dir: reads the sender's lines and frames
 * from in_fd, answers on out_fd, until the sender says BYE or goes away.
 * Returns the exit status. */
int ship_receive(const char *dir, int in_fd, int out_fd);

#endif
