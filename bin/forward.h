/* forward.h - infer's remote tier: a co-process that answers the records
 * the local model is not confident about, and the ordered output queue
 * that waits for its answers.
 *
 * The main thread pushes every output entry in input order: '#' lines,
 * local answers, and records to forward (with their raw line).  A thread
 * owns the co-process and stdout: it sends forwarded lines, matches the
 * answers, enforces deadlines, restarts a co-process that died, and hands
 * the entries back, in order, to an emit function. */
#ifndef MNN_FORWARD_H
#define MNN_FORWARD_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TIER_LOCAL = 0,
    TIER_REMOTE,
    TIER_TIMEOUT,     /* no answer within --deadline */
    TIER_UNREACHABLE, /* the co-process died or could not start */
    TIER_SHED,        /* the window was full */
    TIER_BADANSWER,   /* the answer could not be read, or was out of step */
    TIER_N
} tier_t;

/* "local", "remote", "fallback:timeout", ... */
extern const char *const tier_names[TIER_N];

typedef struct {
    char *comment;  /* a '#' line to pass on (owned), or NULL for a record */
    uint32_t pred;  /* the answer: the local one until a remote one comes */
    float conf;     /* its confidence (largest class probability) */
    uint32_t lpred; /* the local answer */
    float lconf;
    float crit;     /* the local confidence by the routing criterion */
    int32_t label;  /* the record's class, or -1 */
    uint8_t tier;   /* tier_t */
    uint8_t stage;  /* the exit or ensemble member that answered locally */
    uint8_t flush;  /* a '#!flush' line: flush stdout after it */
    uint8_t wait;   /* private: forwarded, not answered yet */
    uint8_t got;    /* private: answered, waiting for its batch's marker */
    double t_in;    /* when infer had the record (monotonic seconds) */
    double t_fwd;   /* private: when it was forwarded */
} fwd_ent_t;

/* Called on the forwarding thread, once per entry, in input order. */
typedef void (*fwd_emit_fn)(void *ctx, const fwd_ent_t *e);

typedef struct {
    const char *cmd;  /* run with /bin/sh -c */
    size_t window;    /* forwarded records in flight, at most */
    double deadline;  /* seconds a forwarded record may wait, from when the
                       * co-process is up (has written its first line) */
    double start_timeout; /* seconds a new co-process may take to come up */
    size_t classes;
    size_t queue;     /* entries queued before the main thread waits */
    size_t mark_every; /* forwarded records between two markers, at most */
    int verbose;
    fwd_emit_fn emit;
    void *ctx;
} fwd_opts_t;

typedef struct fwd fwd_t;

/* Starts the forwarding thread (which starts the co-process).  NULL on
 * failure, with errno set. */
fwd_t *fwd_start(const fwd_opts_t *o);
/* Queues e.  With line != NULL the record is to be forwarded: it is sent
 * if the co-process is up and the window has room, else e gets a fallback
 * tier.  Takes ownership of e->comment. */
void fwd_push(fwd_t *f, fwd_ent_t *e, const char *line, size_t len);
/* Ends a batch: sends what was pushed, and waits while the queue is
 * longer than opts.queue. */
void fwd_batch_end(fwd_t *f);
/* Waits until every entry has been emitted, stops the co-process and the
 * thread, and frees f.  Counts: restarts of the co-process. */
void fwd_finish(fwd_t *f, uint64_t *restarts);

/* For a handler of a fatal signal: SIGTERM to the co-process's process
 * group, which would otherwise outlive infer (async-signal-safe). */
void fwd_kill_child(void);

#endif
