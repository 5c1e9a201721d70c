/* coproc.h - a child process spoken to through its stdin and stdout: the
 * one way the programs start and end one (infer --forward's `sh -c CMD`,
 * ckpt-ship's ssh or local receiver).
 *
 * The child starts with an empty signal mask and SIGPIPE and SIGCHLD at
 * their defaults, whatever this process does with them; only its stdin
 * and stdout are ours (every descriptor we make is close-on-exec).  It
 * stays in our process group unless COPROC_PGROUP: a terminal's Ctrl-C and
 * a `nohup` reach it as they reach us, and ssh can prompt on the terminal.
 * In a group of its own it is ours alone to stop, so the signals by which
 * we stop programs start at their defaults too, even where we were started
 * with them ignored. */
#ifndef MNN_COPROC_H
#define MNN_COPROC_H

#include <stddef.h>
#include <sys/types.h>

enum {
    /* argv[0] is a command line, run as /bin/sh -c argv[0] argv[1] ...
     * (argv[1], if any, is its $0); else argv[0] is the program's path */
    COPROC_SHELL = 1 << 0,
    /* the child leads a process group of its own, and coproc_reap signals
     * the whole group (sh, and what it started); INT, TERM, HUP, QUIT,
     * USR1 and USR2 start at their defaults */
    COPROC_PGROUP = 1 << 1,
    /* its stdin is a socket (for send(MSG_NOSIGNAL) and shutdown), not a
     * pipe */
    COPROC_SOCKET = 1 << 2,
};

typedef struct {
    pid_t pid;     /* the child; -1 when there is none (not started, reaped) */
    int to;        /* writes reach its stdin; -1 once closed */
    int from;      /* reads its stdout; -1 once closed */
    int flags;     /* as given to coproc_start */
    int status;    /* after coproc_reap: its wait status, -1 unknown */
    int signalled; /* after coproc_reap: a signal of coproc_reap ended it */
} coproc_t;

/* Starts argv as a child with its stdin and stdout on c->to and c->from
 * (blocking; the caller may set O_NONBLOCK).  0, or -1 with errno: the
 * descriptors or the process could not be made, or argv[0] (/bin/sh with
 * COPROC_SHELL) could not be run; c->pid is then -1. */
int coproc_start(coproc_t *c, const char *const argv[], int flags);

/* Ends the child and reaps it.  It is given grace seconds to end on its
 * own (the caller ends its input first, by closing or shutting down c->to,
 * if it is to see an end of input), while what it writes is read and
 * dropped so that a full pipe does not hold it; then SIGTERM and term
 * seconds more (term 0: no SIGTERM); then SIGKILL.  Every wait is bounded
 * but the last, for a child that SIGKILL has ended.  Closes c->to and
 * c->from.  Returns its wait status (also in c->status), or -1 where
 * there was no child or it could not be waited for. */
int coproc_reap(coproc_t *c, double grace, double term);

/* How the reaped child ended, in words for a message ("exited with status
 * 3", "was killed by signal 11"; "was stopped" when coproc_reap's signal
 * ended it, "ended" when its status is unknown); returns buf. */
const char *coproc_how(const coproc_t *c, char *buf, size_t size);

#endif
