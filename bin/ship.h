/* ship.h - the parts of ckpt-ship and what they share.
 *
 *   ckpt-ship.c   options, usage, main()
 *   ship-proto.c  what both ends use: the options, names on the wire,
 *                 buffered input with deadlines, whole writes, protocol lines
 *   ship-recv.c   the receiving end (--receive DIR)
 *   ship-conn.c   the sender's transport: the destination, the receiver
 *                 started through ssh or as a local child, its greeting
 *   ship-src.c    what a SRC is: an archive, a checkpoint directory packed
 *                 on the fly, stdin; its name, size and XXH3
 *   ship-send.c   the sending end: offers, data, resuming, retries
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
 * taken by other bytes, a bad name, an unusable directory).  While it is
 * still hashing or checking, the receiver may answer 'WAIT N' (its bytes
 * done) before its reply; a sender with nothing to send for a while says
 * NOOP. */
#ifndef MNN_SHIP_H
#define MNN_SHIP_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "coproc.h"
#include "mini-nn.h"

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
int archive_step(const char *name, uint64_t *step, uint64_t *cut);

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
/* read(2), again after EINTR. */
ssize_t read_some(int fd, char *buf, size_t n);
/* One protocol line (a newline in the message becomes a space). */
int say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The receiving end in directory dir: reads the sender's lines and frames
 * from in_fd, answers on out_fd, until the sender says BYE or goes away.
 * Returns the exit status. */
int ship_receive(const char *dir, int in_fd, int out_fd);

/* ---- the sending end ------------------------------------------------------ */

/* Where to (ship-conn.c): a local directory or [user@]host:dir. */
typedef struct {
    const char *arg;  /* as given, for messages and stdout */
    char *host;       /* NULL: local; else [user@]host as ssh takes it */
    char *label;      /* [user@]host as given, for stdout */
    char *dir;
} dest_t;

/* A bad DEST is a usage error. */
void dest_parse(dest_t *d, const char *arg);
void dest_free(dest_t *d);

/* The connection: the receiver's stdin and stdout. */
typedef struct {
    coproc_t cp;  /* the child (ssh, or a local receiver); cp.to its stdin */
    input_t from; /* its stdout: from.fd is cp.from */
    int open;
    int greeted;  /* the receiver's greeting was read */
} conn_t;

/* Starts the receiver (through ssh, or locally); conn_greet() then waits for
 * it.  0, or -1 with why; *permanent when retrying cannot help. */
int conn_open(conn_t *c, const dest_t *d, char *why, size_t wsize, int *permanent);
/* Reads the receiver's greeting, once per connection; 0 or -1 as above. */
int conn_greet(conn_t *c, const dest_t *d, char *why, size_t wsize, int *permanent);
/* Closes the connection and reaps the child, more quickly with kill_it (a
 * connection out of step); its wait status, or -1. */
int conn_close(conn_t *c, int kill_it);

/* A SRC (ship-src.c). */
typedef struct {
    const char *arg;
    enum { SRC_FILE, SRC_DIR, SRC_STDIN } kind;
    char *real;     /* SRC_DIR: the checkpoint directory */
    char *resolved; /* the archive a received-into directory's latest names
                     * (arg then points to it), or NULL */
    char name[NAME_MAX_ + 1]; /* "" for an unnamed stream */
    int known;      /* size and hex are known before it is sent */
    uint64_t size;
    char hex[17];
} source_t;

/* Learns what SRC is, its name, and (unless a stream) its size and XXH3;
 * 0, or -1 with why.  source_free() frees it in either case. */
int source_open(source_t *s, const char *arg, char *why, size_t wsize);
void source_free(source_t *s);

/* A checkpoint directory packed by a thread into a pipe. */
typedef struct {
    pthread_t t;
    const char *dir;
    int fd;
    int rc;
    mnn_diag_t d;
} packer_t;

/* The packed directory as a stream on *fd; 0 or -1 with why. */
int pack_start(packer_t *p, const char *dir, int *fd, char *why, size_t wsize);
/* Waits for the packer (after closing the reading end); 0 or -1 with why. */
int pack_finish(packer_t *p, int fd, char *why, size_t wsize);

/* Ships each of srcs[0..n), or each checkpoint path read from files_from
 * when it is not NULL, to d over one connection (ship-send.c).  Returns the
 * number that failed. */
int ship_send(const dest_t *d, char *const srcs[], int n, const char *files_from);

#endif
