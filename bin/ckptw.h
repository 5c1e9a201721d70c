/* ckptw.h - asynchronous checkpoints for sgd-train.
 *
 * Training blocks only for an in-memory snapshot (one memcpy of the state);
 * a writer thread persists it as root/step-N, swaps root/latest and prunes.
 * With a local level, the snapshot is written to the local root first (fast,
 * e.g. /dev/shm) and then copied to the durable root in the background.  One
 * snapshot at most waits: a checkpoint asked for while the writer is still
 * busy is skipped, not queued.  The roots are locked from start to finish:
 * a second writer on one of them is refused at its start. */
#ifndef MNN_CKPTW_H
#define MNN_CKPTW_H

#include "mini-nn.h"

typedef struct ckptw ckptw_t;

typedef struct {
    const char *root;  /* durable checkpoint root (--ckpt-dir) */
    const char *local; /* fast first level (--ckpt-local), or NULL */
    size_t keep;       /* checkpoints kept in each root; 0: all */
    int quiet;         /* no notes on stderr (errors still) */
    int verbose;       /* time each snapshot and each write on stderr */
    int fresh;         /* a training from scratch: the roots must hold no
                        * checkpoint yet (another training's) */
    uint64_t first_step; /* the step it starts from (the resumed one's) */
    uint64_t first_cut;  /* and its cut (0: none) */
} ckptw_opts_t;

/* Opens the roots (removing crash leftovers) and starts the writer for a
 * model and optimizer of this shape.  NULL with d filled on failure,
 * among them a fresh training on a root that holds checkpoints.  A step
 * whose checkpoint exists already is not written again: it is published
 * when it holds the same bytes, and fails when it holds others. */
ckptw_t *ckptw_start(const ckptw_opts_t *o, const mnn_model_t *m,
                     const mnn_optim_t *opt, mnn_diag_t *d);
/* Takes a snapshot and hands it to the writer.  If the writer is busy:
 * with wait, waits for it; without, skips and returns 0.  Returns 1 when
 * taken.  parent names the previous checkpoint of the lineage (may be NULL);
 * cut (may be NULL) makes it a pipeline's cut, step-N-cID (its parts and
 * pending records are copied). */
int ckptw_offer(ckptw_t *w, const mnn_model_t *m, const mnn_optim_t *opt,
                const mnn_train_state_t *st, const char *parent, const mnn_cut_ckpt_t *cut,
                int wait);
/* Whether a checkpoint was taken, and the step and cut of the newest. */
int ckptw_any(const ckptw_t *w);
uint64_t ckptw_last_step(const ckptw_t *w);
uint64_t ckptw_last_cut(const ckptw_t *w);
/* Waits until everything offered is written; stops the writer and
 * unlocks the roots.  Returns the number of checkpoints that failed,
 * negated if the newest is among them; *good_step (may be NULL) receives
 * the step of the newest written, UINT64_MAX if none was. */
int ckptw_finish(ckptw_t *w, uint64_t *good_step);

#endif
