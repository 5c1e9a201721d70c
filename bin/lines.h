/* lines.h - what the record filters (stream-sample, replay-buffer) share:
 * held copies of record lines, the label field, and bad-record reports. */
#ifndef MNN_LINES_H
#define MNN_LINES_H

#include <stddef.h>
#include <signal.h>
#include <stdint.h>

#include "mini-nn.h"

/* A copy of one record line, '\n' included; its buffer is reused. */
typedef mnn_replay_rec_t line_copy_t;

/* Copies line (len bytes, no '\n') into c and records its number
 * (mnn_replay_rec_set); dies when out of memory. */
void line_copy_set(line_copy_t *c, const char *line, size_t len, uint64_t rec);

/* The end of a record's first field (the label): the first ',', tab or
 * space. */
const char *label_end(const char *line, const char *end);
/* At most 40 bytes of [p, end) for a message. */
const char *excerpt(const char *p, const char *end, char *buf, size_t size);

/* Bad records: fatal (exit 1, "prog: NAME:LINE: what"), or with
 * --on-error=skip reported one by one up to BADREC_SHOWN, counted, and the
 * first one kept for the report at the end. */
#define BADREC_SHOWN 5
typedef struct {
    const char *name; /* the input, for messages */
    int skip;
    int quiet;        /* -q: the count only, not the first few */
    uint64_t count;
    char first[512];
} badrec_t;

/* Reports a bad record; returns -1 (the caller drops the record) unless it
 * dies. */
int badrec(badrec_t *b, uint64_t lineno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "skipped N bad records (first: ...)" on stderr, if any and not quiet. */
void badrec_report(const badrec_t *b);

/* The input: argv's one FILE or '-' / none (stdin), opened; b->name set for
 * messages.  Usage error for more than one; exit 1 if it cannot be opened. */
int open_input(int nargs, char **args, badrec_t *b);

/* Makes each of sigs write a byte to a new non-blocking pipe (and set
 * *flag to its number, if flag is not NULL); returns the reading end, for a
 * line reader's cancel_fd, so that a waiting read wakes up. */
int signals_to_pipe(const int *sigs, size_t n, volatile sig_atomic_t *flag);
/* Empties that pipe. */
void drain_signal_pipe(int fd);
/* 1 when signal sig (one of those) came since the last call for it
 * (several times count as one), else 0: for a program that tells them
 * apart. */
int signal_taken(int sig);

/* A record filter's part in pipeline cuts (mini-nn(7), PIPELINE
 * CHECKPOINTS), kept by next_record as the cut lines pass. */
typedef struct {
    const char *program; /* this stage's name in its parts */
    const char *root;    /* --ckpt-dir: parts left in ROOT/.parts (NULL: in
                          * the stream) */
    int active;          /* a start line came: the stage takes part */
    uint32_t index;      /* its index in the pipeline (from the start line) */
    uint64_t from;       /* the cut the head resumed from; 0: none */
    uint64_t id;         /* the newest barrier */
    mnn_cut_what_t what; /* its kind */
    int in_block;        /* between that barrier and its end line */
    int ended;           /* its block ended and it was a stop or the final
                          * cut: the input ends here */
    uint64_t after;      /* records since the newest barrier */
} cut_stage_t;

/* What next_record returns besides a record (1), the end (0) and
 * MNN_ECANCELED. */
enum {
    NR_START = 2,   /* a start line: cs->index and cs->from set, the line
                     * with one stage more written */
    NR_BARRIER = 3, /* a barrier: cs->id and cs->what set; the caller writes
                     * it (cut_pass_barrier) when it has done what comes
                     * before it (a final emission) */
    NR_END = 4      /* the end of the barrier's block: the caller writes its
                     * part and the end line (cut_pass_end) */
};

/* The next record of lr: 1 and the line (no '\n', no '\r'); '#' lines are
 * copied to stdout and flushed on the way, empty ones skipped; cut lines
 * as said above (cs may be NULL: they are then copied like any '#' line).
 * 0 at the end of the input, MNN_ECANCELED when the cancel pipe has a
 * byte; read errors, over-long lines and cut lines out of place are
 * fatal. */
int next_record(mnn_linereader_t *lr, const badrec_t *b, cut_stage_t *cs, const char **line,
                size_t *len);
/* Writes the barrier cs->id; and this stage's part (n bytes of its state:
 * in the stream, or with cs->root in a file there and a line pointing at
 * it) then the block's end line, flushed. */
void cut_pass_barrier(const cut_stage_t *cs);
void cut_pass_end(cut_stage_t *cs, const void *data, size_t n);
/* At the end of the input: 1 when it is a pipeline's that stopped (or
 * ended) with a cut, 0 when no cut took place; dies (exit 1) when the
 * input of a pipeline with cuts ended without its stop or final cut: the
 * head went away, and the stage's state since the last cut is in no cut. */
int cut_input_ended(const cut_stage_t *cs, const badrec_t *b);

/* This stage's part of the cut ck (opened by cli_ckpt_open) for the start
 * line cs->from and cs->index came with: its bytes in *buf (free it), *len.
 * Dies naming ck when the cut is not the one the head resumed from, or
 * holds no part of this program at this index. */
void cut_read_part(const mnn_ckpt_t *ck, const cut_stage_t *cs, char **buf, size_t *len);

/* From a pipeline's start line on, SIGTERM and SIGINT do not stop a stage
 * that is not the head: the head's stop cut comes through it, and then the
 * end of its input.  A second one ends the program at once, by the signal
 * (its state since the last cut is in no cut). */
void cut_hold_signals(void);

/* The label of a record as a number; -1 (reported) if it is not one. */
int read_label(badrec_t *b, const char *line, size_t len, uint64_t lineno, double *label);

/* Class ids a filter keeps per class: 0 .. MAX_CLASS - 1. */
#define MAX_CLASS 1000000
/* 0 if label (of that record) is a class id, else -1 (reported). */
int check_class(badrec_t *b, const char *line, size_t len, uint64_t lineno, double label);

#endif
