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

/* The next record of lr: 1 and the line (no '\n', no '\r'); '#' lines are
 * copied to stdout and flushed on the way, empty ones skipped.  0 at the
 * end of the input, MNN_ECANCELED when the cancel pipe has a byte; read
 * errors and over-long lines are fatal. */
int next_record(mnn_linereader_t *lr, const badrec_t *b, const char **line, size_t *len);

/* The label of a record as a number; -1 (reported) if it is not one. */
int read_label(badrec_t *b, const char *line, size_t len, uint64_t lineno, double *label);

/* Class ids a filter keeps per class: 0 .. MAX_CLASS - 1. */
#define MAX_CLASS 1000000
/* 0 if label (of that record) is a class id, else -1 (reported). */
int check_class(badrec_t *b, const char *line, size_t len, uint64_t lineno, double label);

#endif
