/* feed.h - a reader thread that turns the record stream on a file
 * descriptor into batches, so that parsing overlaps the arithmetic.
 * Batches come out in input order; '#' lines ride along at their places. */
#ifndef MNN_FEED_H
#define MNN_FEED_H

#include "mini-nn.h"

#include <signal.h>

typedef struct {
    size_t n;          /* records in this batch */
    float *x;          /* (cap, nfeat) features */
    float *y;          /* (cap) labels */
    /* '#' lines (kept only when asked): text of comment i is
     * ctext + coff[i], placed before record cpos[i] of this batch */
    size_t ncom;
    size_t *cpos, *coff;
    char *ctext;
    size_t ctext_len;
    /* raw record lines (kept only when asked): record i is
     * ltext + loff[i], llen[i] bytes, not terminated */
    char *ltext;
    size_t *loff, *llen;
    int flush;         /* a '#!flush' line ended this batch early */
    /* pipeline cuts (feed_opts_t.cuts): a start line before this batch's
     * records, and a barrier's block that ended it */
    int start;         /* start_from, start_index: the start line's */
    uint64_t start_from;
    uint32_t start_index;
    int cut;           /* a block ended this batch after its n records */
    uint64_t cut_id;
    mnn_cut_what_t cut_what;
    size_t nparts;     /* the upstream stages' parts, verified, in order */
    mnn_part_t parts[MNN_CUT_MAX_STAGES];
    int end;           /* no batch follows this one */
    int error;         /* the stream stopped on an error: see msg */
    char msg[700];     /* "stdin:LINE: what is wrong" */
    /* private */
    size_t comcap, ctext_cap, ltext_len, ltext_cap;
} feed_batch_t;

typedef struct {
    const char *name;  /* input name for messages, e.g. "stdin" */
    mnn_record_fmt_t fmt;
    size_t batch;      /* records per batch */
    int skip_errors;   /* --on-error=skip */
    int keep_comments; /* pass '#' lines on */
    int eager;         /* hand over a partial batch when input would block */
    int keep_lines;    /* keep each record's line as it was read */
    int verbose;       /* report every skipped line */
    int quiet;         /* no notes (errors still) */
    uint64_t skip_records; /* drop this many valid records first (--skip-seen) */
    const char *parts_root; /* --ckpt-dir: where upstream parts left in
                             * files are (NULL: none may be) */
    int cuts;          /* take part in pipeline cuts as their last stage: check
                        * the cut lines, decode the parts, end a batch at a
                        * block's end, and keep batches whole across it */
    size_t first_fill; /* records already in the first batch (a cut's
                        * pending ones): the first batch brings the rest */
    size_t ahead;      /* records to read ahead of the consumer (0: three
                        * batches); at most 8 MiB of features and slots, at least
                        * three batches */
} feed_opts_t;

typedef struct feed feed_t;

/* Starts the reader on fd; NULL on allocation failure. */
feed_t *feed_start(int fd, const feed_opts_t *o);
/* The next batch, in order; blocks.  Hand it back with feed_release.
 * Returns NULL if *interrupt (may be NULL) becomes non-zero while waiting. */
feed_batch_t *feed_next(feed_t *f, volatile sig_atomic_t *interrupt);
void feed_release(feed_t *f, feed_batch_t *b);
/* Stops the reader (even while it waits for input) and frees everything.
 * If skipped is not NULL it receives the count of records skipped under
 * --on-error=skip, and first (size firstlen) the first reason. */
void feed_stop(feed_t *f, uint64_t *skipped, char *first, size_t firstlen);
/* feed_stop, then "prog: skipped N bad records (first: ...)" on stderr if
 * there were any. */
void feed_stop_report(feed_t *f);

/* With cuts, the batch after one that a cut ended brings the rest of the
 * minibatch only (batch - the records the cut left pending), so that
 * minibatches are the same with cuts or without. */

/* A '#!flush' control line (passed on like any '#' line) ends the batch it
 * is in, so that a program feeding records through a pipe gets its answers
 * without waiting for a full batch, at places the input itself fixes. */
#define FEED_FLUSH "#!flush"
/* sgd-train's read-ahead: at a cut every stateful stage before it holds its
 * output back while it writes its part (replay-buffer's 2,000 records of
 * Fashion-MNIST: some 10 ms), and the training goes on meanwhile with the
 * records read ahead of it (2,048 of them: about 40 ms of fmnist-mlp.yaml)
 * instead of waiting for the stream (t/130, share/mini-nn/bench/cuts) */
#define FEED_CUT_AHEAD 2048

#endif
