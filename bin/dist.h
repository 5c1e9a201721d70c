/* dist.h - sgd-train on several processes (mpirun): the shards of a
 * minibatch, their fixed summation tree, and the exchanges between ranks.
 *
 * A minibatch of n records is cut into S logical shards, shard s holding
 * records [s*n/S, (s+1)*n/S).  Their gradients are summed in one fixed
 * binary tree T over the shard indices: a node of c > 1 leaves splits after
 * the largest power of two below c.  Rank r of R owns the shards
 * [r*k, (r+1)*k), k = S/R, which are a node of T when R is 1 or k a power of
 * two: it sums them locally in T's order, and the ranks then combine their
 * sums in T's order above those nodes.  The result depends on S alone, not
 * on R: the same bytes for every such R, with mpirun or without.
 *
 * Records come one of two ways.  From stdin (the default), rank 0 reads
 * them and, for every minibatch, tells the others its size and hands each
 * its shards' records; the others follow (dist_follow).  With --input
 * (dist_t.input), every rank reads its own file and brings its part of each
 * minibatch: the ranks agree on every step (dist_agree) and the minibatch
 * is their parts in rank order.
 *
 * A rank that exits early (an error, --help) does so through exit(): an
 * atexit handler takes its part in the exchange the others wait in, with
 * its exit status, so that every rank ends with that status and none waits
 * for ever. */
#ifndef MNN_DIST_H
#define MNN_DIST_H

#include "mini-nn.h"

#include <stddef.h>
#include <stdint.h>

/* The first record of shard s of a minibatch of n records cut into S. */
static inline size_t dist_shard_start(size_t n, size_t S, size_t s)
{
    return (size_t)(((uint64_t)s * n) / S);
}

/* Where T splits a node of c > 1 leaves: the largest power of two < c. */
static inline size_t dist_split(size_t c)
{
    size_t p = 1;
    while (p * 2 < c)
        p *= 2;
    return p;
}

/* Whether R ranks can own S shards so that the result is T's: R divides S
 * and R == 1 or S/R is a power of two. */
static inline int dist_layout_ok(size_t S, size_t R)
{
    if (R == 0 || S == 0 || S % R)
        return 0;
    const size_t k = S / R;
    return R == 1 || (k & (k - 1)) == 0;
}

/* The shards a training of had shards (0: none resumed) goes on with on R
 * ranks without --shards: its own when these ranks can own them whole
 * (bit-exact), else one per rank. */
static inline size_t dist_resume_shards(size_t had, size_t R)
{
    return had > 1 && dist_layout_ok(had, R) ? had : R;
}

/* Sums the vectors v[0..c-1] (each n floats) in T's order into dst, which
 * may be one of them; they are scratch. */
void dist_tree_sum(float *dst, float *const *v, size_t c, size_t n);

typedef struct {
    size_t R, r;        /* ranks, this one (1, 0 without mpirun) */
    int mpi;            /* started by mpirun */
    size_t S, k;        /* shards of a minibatch, this rank's (S = R k) */
    int input;          /* --input: every rank reads its own records */
    size_t nparams, nfeat, batch;
    float *lev[64];     /* the local tree's partial sums, by depth */
    size_t nlev;
    float *tmp;         /* the allreduce's scratch (by messages) */
    int shared;         /* lev[0] is in a window every rank reads */
    float **pv;         /* R pointers, the sum's scratch */
    float *px, *py;     /* this rank's records of a minibatch (from rank 0) */
    size_t cap;
    double *loss;       /* per shard */
    uint64_t *hits;
    double comm_s, step_s; /* seconds in exchanges, in whole steps */
    uint64_t steps;
} dist_t;

/* Joins the job when started by mpirun (MPI_Init), else R = 1.  Dies when
 * mpirun started more than one rank of a build without MPI. */
void dist_init(dist_t *D);
/* Whether the steps are sharded: more than one rank, or shards. */
static inline int dist_on(const dist_t *D) { return D->R > 1 || D->S > 1; }
/* The buffers for S shards of the minibatches of m (batch records at most);
 * then every rank checks that all hold the same weights and optimizer step
 * (what is (name) read on every host must be the same).  Dies on failure. */
void dist_setup(dist_t *D, size_t S, const mnn_model_t *m, const mnn_optim_t *o, size_t batch,
                const char *name);

/* One step on the minibatch (x, y: n records) that rank 0 read from stdin;
 * bs receives the whole minibatch's loss and hits.  Every rank takes it
 * (rank 0 here, the others in dist_follow).  Dies on failure. */
void dist_learn(dist_t *D, mnn_model_t *m, mnn_optim_t *o, const float *x, const float *y,
                size_t n, mnn_batch_stats_t *bs);
/* The other ranks: the steps rank 0 asks for, until it ends the training.
 * Returns the exit status rank 0 ends with. */
int dist_follow(dist_t *D, mnn_model_t *m, mnn_optim_t *o);
/* --input: the steps are over (every rank agreed); the others wait in
 * dist_follow for rank 0's end. */
void dist_final(dist_t *D);
/* Rank 0, once its checkpoints and model are written: the training is
 * over, the others return status from dist_follow. */
void dist_end(dist_t *D, int status);

/* --input: this rank's part of the step (n records, end: its input ended,
 * stop: it was asked to stop); every rank learns the total, whether every
 * rank's input ended and whether any was asked to stop. */
typedef struct {
    uint64_t n;
    int end, stop;
    int fail; /* a rank that failed: its exit status (it said why); else -1 */
} dist_agreed_t;
void dist_agree(dist_t *D, size_t n, int end, int stop, dist_agreed_t *all);
/* --input: one step on the ranks' parts (x, y: this rank's n records;
 * total: all ranks'). */
void dist_learn_parts(dist_t *D, mnn_model_t *m, mnn_optim_t *o, const float *x, const float *y,
                      size_t n, uint64_t total, mnn_batch_stats_t *bs);

/* Under mpirun (after dist_init): g (n floats, n <= INT_MAX) is this
 * rank's sum; on return every rank's g holds the sum over the ranks in T's
 * order, by a reduce-scatter in 4 MiB pieces and an allgather.  tmp holds
 * (n/R + 1)(R - 1) floats.  0, or -1 when MPI failed.  (The benchmark
 * share/mini-nn/bench/allreduce-peak calls it alone.) */
int dist_allreduce(float *g, size_t n, float *tmp);
/* The sum of this rank's gradients, n floats (lev[0]), where dist_sum sums
 * over the ranks: in a window shared by every rank when all are on this
 * host (and MNN_MPI_SHARED is not 0), else for dist_allreduce's messages. */
float *dist_buffers(dist_t *D, size_t n);
/* lev[0] summed over the ranks, the same bytes either way; 0 or -1. */
int dist_sum(dist_t *D);
/* The first exchange without a training (what dist_setup does first). */
void dist_ready(dist_t *D);

/* A clean end: MPI_Finalize.  Every rank calls it once. */
void dist_finish(dist_t *D);
void dist_free(dist_t *D);

#endif
