/* dist.c - sgd-train on several processes: the shards' summation tree,
 * the steps and the exchanges between ranks (see dist.h). */
#include <config.h>

#include "dist.h"
#include "cli.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_MPI
#include <mpi.h>
#endif

/* T(c) = T(p) + T(c - p), the subtrees summed in place into v[0] and v[p],
 * their sum written to dst (IEEE addition commutes: where it goes does not
 * change the bits). */
void dist_tree_sum(float *dst, float *const *v, size_t c, size_t n)
{
    if (c < 2) {
        if (dst != v[0])
            memcpy(dst, v[0], n * sizeof(float));
        return;
    }
    const size_t p = dist_split(c);
    dist_tree_sum(v[0], v, p, n);
    dist_tree_sum(v[p], v + p, c - p, n);
    const float *a = v[0], *b = v[p];
    for (size_t i = 0; i < n; i++)
        dst[i] = a[i] + b[i];
}

/* The partial sums the local tree over c shards keeps at once. */
static size_t tree_depth(size_t c)
{
    if (c < 2)
        return 1;
    const size_t p = dist_split(c), a = tree_depth(p), b = 1 + tree_depth(c - p);
    return a > b ? a : b;
}

/* What the next exchange is, for the atexit handler: a rank that exits
 * takes its part in it with its status.  PH_START: the first exchange;
 * PH_LOOP: between steps; PH_FINAL: --input's steps are over, rank 0 tells
 * the end as from stdin; PH_BUSY: in a step or an exchange (an exit there
 * leaves the others to mpirun, which ends the job); PH_ENDED: the end was
 * told. */
enum { PH_NONE, PH_START, PH_LOOP, PH_FINAL, PH_BUSY, PH_ENDED, PH_DONE };
#ifdef HAVE_MPI
static int phase = PH_NONE;
static dist_t *the; /* the one training of this process */
#define SET_PHASE(p) (phase = phase == PH_NONE ? PH_NONE : (p)) /* not under mpirun: none */
#else
#define SET_PHASE(p) ((void)0)
#endif

/* The control messages.  st: an exit status, -1 for none. */
typedef struct {
    uint64_t hash, step;
    int32_t st, pad;
} start_msg_t;
typedef struct {
    uint64_t n;
    int32_t op, st; /* op: OP_LEARN, OP_END */
} ctl_msg_t;
typedef struct {
    uint64_t n;
    int32_t end, stop, st, pad;
} part_msg_t;
enum { OP_LEARN = 1, OP_END };

#ifdef HAVE_MPI
static MPI_Comm comm = MPI_COMM_NULL;
static MPI_Datatype rec_type = MPI_DATATYPE_NULL;

static double wall(void) { return MPI_Wtime(); }


/* The chunk of n parameters that rank r of R sums: [off, off + len). */
static void chunk(size_t n, size_t R, size_t r, size_t *off, size_t *len)
{
    *off = (size_t)(((uint64_t)r * n) / R);
    *len = (size_t)(((uint64_t)(r + 1) * n) / R) - *off;
}

#define PIECE ((size_t)1 << 20) /* floats per message: 4 MiB */

/* g (n floats) is this rank's sum of its shards; on return every rank's g
 * holds the sum over all ranks, combined in T's order.  A reduce-scatter in
 * pieces (each rank sums its chunk as the others' pieces of it arrive),
 * then an allgather: each rank sends and receives 2 (R-1)/R n floats.
 * tmp holds chunks.  0, or -1 when MPI failed. */
int dist_allreduce(float *g, size_t n, float *tmp)
{
    int ir, iR;
    MPI_Comm_rank(comm, &ir);
    MPI_Comm_size(comm, &iR);
    const size_t r = (size_t)ir, R = (size_t)iR;
    if (R == 1)
        return 0;
    size_t off, len;
    chunk(n, R, r, &off, &len);
    const size_t pieces_mine = (len + PIECE - 1) / PIECE;
    size_t nreq = 0, cap = 0;
    for (size_t q = 0; q < R; q++) {
        size_t qo, ql;
        chunk(n, R, q, &qo, &ql);
        cap += (ql + PIECE - 1) / PIECE;
    }
    cap = cap + (R - 1) * pieces_mine;
    MPI_Request *req = malloc((cap ? cap : 1) * sizeof *req);
    float **v = malloc(R * sizeof *v);
    if (!req || !v) {
        free(req);
        free(v);
        return -1;
    }
    /* the others' partial sums of my chunk: tmp, one chunk per other rank */
    for (size_t q = 0, k = 0; q < R; q++)
        v[q] = q == r ? g + off : tmp + (k++) * len;
    for (size_t p = 0; p < pieces_mine; p++)
        for (size_t q = 0; q < R; q++)
            if (q != r) {
                size_t po = p * PIECE, pl = len - po < PIECE ? len - po : PIECE;
                MPI_Irecv(v[q] + po, (int)pl, MPI_FLOAT, (int)q, (int)p, comm, &req[nreq++]);
            }
    const size_t nrecv = nreq;
    for (size_t q = 0; q < R; q++) {
        if (q == r)
            continue;
        size_t qo, ql;
        chunk(n, R, q, &qo, &ql);
        for (size_t po = 0, p = 0; po < ql; po += PIECE, p++) {
            size_t pl = ql - po < PIECE ? ql - po : PIECE;
            MPI_Isend(g + qo + po, (int)pl, MPI_FLOAT, (int)q, (int)p, comm, &req[nreq++]);
        }
    }
    int rc = 0;
    /* piece by piece, as the others' pieces come: T's order over the ranks */
    float **pv = malloc(R * sizeof *pv);
    for (size_t p = 0; pv && p < pieces_mine; p++) {
        const size_t per = R - 1, po = p * PIECE;
        const size_t pl = len - po < PIECE ? len - po : PIECE;
        if (MPI_Waitall((int)per, req + p * per, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
            rc = -1;
        for (size_t q = 0; q < R; q++)
            pv[q] = v[q] + po;
        dist_tree_sum(g + off + po, pv, R, pl);
    }
    if (!pv)
        rc = -1;
    if (MPI_Waitall((int)(nreq - nrecv), req + nrecv, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
        rc = -1;
    /* everyone's chunks to everyone */
    int *counts = malloc(R * sizeof *counts), *displs = malloc(R * sizeof *displs);
    if (rc == 0 && counts && displs) {
        for (size_t q = 0; q < R; q++) {
            size_t qo, ql;
            chunk(n, R, q, &qo, &ql);
            counts[q] = (int)ql;
            displs[q] = (int)qo;
        }
        if (MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, g, counts, displs, MPI_FLOAT,
                           comm) != MPI_SUCCESS)
            rc = -1;
    } else
        rc = -1;
    free(counts);
    free(displs);
    free(pv);
    free(v);
    free(req);
    return rc;
}

/* When every rank is on this host, their sums (lev[0]) live in one shared
 * window and each rank reads the others' directly: no copy into messages,
 * and the reduce reads the others' memory as it sums.  MNN_MPI_SHARED=0
 * keeps to messages. */
static MPI_Win win = MPI_WIN_NULL;
static float **peer; /* every rank's sum, in the window */

static float *shared_sums(size_t n, size_t R)
{
    const char *env = getenv("MNN_MPI_SHARED");
    int ok = !(env && !strcmp(env, "0")), all;
    MPI_Comm node;
    int size = 0;
    /* collective: every rank splits, whatever its environment says */
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &size);
        MPI_Comm_free(&node);
    }
    ok = ok && (size_t)size == R;
    /* the same choice on every rank: the allocation is collective */
    if (MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS || !all)
        return NULL;
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    float *base = NULL;
    int rc = MPI_Win_allocate_shared((MPI_Aint)(n * sizeof(float)), (int)sizeof(float), info,
                                     comm, &base, &win);
    MPI_Info_free(&info);
    if (rc != MPI_SUCCESS)
        die(EXIT_RUNTIME, "cannot allocate the gradients' shared window");
    if (!(peer = calloc(R, sizeof *peer)))
        die(EXIT_RUNTIME, "out of memory");
    for (size_t q = 0; q < R; q++) {
        MPI_Aint sz;
        int unit;
        MPI_Win_shared_query(win, (int)q, &sz, &unit, &peer[q]);
    }
    MPI_Win_lock_all(MPI_MODE_NOCHECK, win);
    return base;
}

/* Every rank's stores to the window are seen by every other. */
static int shm_barrier(void)
{
    MPI_Win_sync(win);
    int rc = MPI_Barrier(comm);
    MPI_Win_sync(win);
    return rc == MPI_SUCCESS ? 0 : -1;
}

/* dist_allreduce through the window: each rank sums its chunk of every
 * rank's sum in T's order (the same additions as by messages), then copies
 * the others' chunks. */
static int allreduce_shared(float *g, size_t n, size_t R, size_t r, float **pv)
{
    size_t off, len;
    chunk(n, R, r, &off, &len);
    if (shm_barrier() < 0) /* every rank's sum is there */
        return -1;
    for (size_t q = 0; q < R; q++)
        pv[q] = peer[q] + off;
    dist_tree_sum(g + off, pv, R, len); /* scratch: the others' copies of my chunk */
    if (shm_barrier() < 0) /* every chunk summed */
        return -1;
    for (size_t q = 0; q < R; q++) {
        size_t qo, ql;
        chunk(n, R, q, &qo, &ql);
        if (q != r)
            memcpy(g + qo, peer[q] + qo, ql * sizeof(float));
    }
    return shm_barrier(); /* all copied: the sums may be overwritten */
}

static void check(int rc, const char *what)
{
    if (rc != MPI_SUCCESS) {
        char s[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, s, &len);
        phase = PH_DONE;
        die(EXIT_RUNTIME, "%s: %s", what, s);
    }
}

/* The startup exchange: every rank's weights' hash, or its status. */
static void start_exchange(dist_t *D, start_msg_t *mine, start_msg_t *all)
{
    phase = PH_BUSY;
    check(MPI_Allgather(mine, (int)sizeof *mine, MPI_BYTE, all, (int)sizeof *mine, MPI_BYTE, comm),
          "the ranks' first exchange");
    (void)D;
}

static void ctl_bcast(ctl_msg_t *c)
{
    check(MPI_Bcast(c, (int)sizeof *c, MPI_BYTE, 0, comm), "rank 0's step message");
}

static void part_exchange(const part_msg_t *mine, part_msg_t *all)
{
    check(MPI_Allgather(mine, (int)sizeof *mine, MPI_BYTE, all, (int)sizeof *mine, MPI_BYTE, comm),
          "the ranks' step messages");
}

/* The end of MPI, the same on every rank (freeing the window is
 * collective): every way out goes through here. */
static void finalize(void)
{
    if (rec_type != MPI_DATATYPE_NULL)
        MPI_Type_free(&rec_type);
    if (win != MPI_WIN_NULL) {
        MPI_Win_unlock_all(win);
        MPI_Win_free(&win);
    }
    phase = PH_DONE;
    MPI_Finalize();
}

/* A rank leaving early: its part in the exchange the others wait in. */
static void on_exit_(void)
{
    dist_t *D = the;
    const int st = cli_status;
    if (!D || phase == PH_BUSY || phase == PH_DONE || phase == PH_NONE)
        return;
    if (phase == PH_ENDED) {
        ; /* the others were told the end already */
    } else if (phase == PH_START) {
        start_msg_t mine = {.st = st}, *all = calloc(D->R, sizeof *all);
        if (all)
            MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, comm);
        /* what rank 0 said, when it failed too, is what every rank would say */
        if (cli_hold && (!all || all[0].st < 0 || all[0].st != st))
            fputs(cli_held, stderr);
        cli_hold = 0;
        free(all);
    } else if (D->r == 0 && (phase == PH_FINAL || !D->input)) {
        ctl_msg_t c = {.op = OP_END, .st = st ? st : EXIT_RUNTIME};
        MPI_Bcast(&c, (int)sizeof c, MPI_BYTE, 0, comm);
    } else if (D->input && phase == PH_LOOP) {
        part_msg_t mine = {.st = st ? st : EXIT_RUNTIME}, *all = calloc(D->R, sizeof *all);
        if (all)
            MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, comm);
        free(all);
    } else
        return; /* a follower between steps: rank 0 ends the job */
    finalize();
}

/* The first exchange: every rank says it came this far, with the hash of
 * what it will compute from (the same on every rank), or why it did not
 * (its exit status: every rank then exits with it). */
static void first_exchange(dist_t *D, uint64_t hash, uint64_t step, const char *name)
{
    start_msg_t mine = {.st = -1, .hash = hash, .step = step}, *all = calloc(D->R, sizeof *all);
    if (!all)
        die(EXIT_RUNTIME, "out of memory");
    start_exchange(D, &mine, all);
    phase = PH_LOOP;
    if (cli_hold && cli_held[0])
        fputs(cli_held, stderr); /* warnings */
    cli_hold = 0;
    int st = -1;
    for (size_t q = 0; q < D->R && st < 0; q++)
        if (all[q].st >= 0)
            st = all[q].st; /* that rank said why */
    for (size_t q = 1; q < D->R && st < 0; q++)
        if (all[q].hash != all[0].hash || all[q].step != all[0].step) {
            if (D->r == 0)
                warnx_("rank %zu starts from other weights or settings than rank 0: %s and the "
                       "options must be the same on every host", q, name);
            st = EXIT_RUNTIME;
        }
    free(all);
    if (st >= 0) {
        finalize();
        exit(st);
    }
}

float *dist_buffers(dist_t *D, size_t n)
{
    D->nparams = n;
    if (D->R > 1 && (D->lev[0] = shared_sums(n, D->R))) {
        D->shared = 1;
        memset(D->lev[0], 0, n * sizeof(float));
    } else if (!(D->lev[0] = mnn_calloc_aligned(n, sizeof(float))))
        die(EXIT_RUNTIME, "out of memory for the gradients' sums");
    if (D->R > 1 && !D->shared &&
        !(D->tmp = mnn_calloc_aligned((n / D->R + 1) * (D->R - 1), sizeof(float))))
        die(EXIT_RUNTIME, "out of memory for the exchange of gradients");
    if (D->R > 1 && !(D->pv = calloc(D->R, sizeof *D->pv)))
        die(EXIT_RUNTIME, "out of memory");
    return D->lev[0];
}

int dist_sum(dist_t *D)
{
    if (D->R < 2)
        return 0;
    return D->shared ? allreduce_shared(D->lev[0], D->nparams, D->R, D->r, D->pv)
                     : dist_allreduce(D->lev[0], D->nparams, D->tmp);
}

void dist_ready(dist_t *D)
{
    if (phase == PH_START)
        first_exchange(D, 0, 0, "");
}

void dist_init(dist_t *D)
{
    memset(D, 0, sizeof *D);
    D->R = 1;
    D->S = D->k = 1;
    size_t env_ranks, env_rank;
    if (!mpirun_rank(&env_ranks, &env_rank))
        return; /* not under mpirun: a plain process */
    int provided, size, rank;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        die(EXIT_RUNTIME, "MPI_Init failed: is this run by mpirun?");
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(comm, &rank);
    D->R = (size_t)size;
    D->r = (size_t)rank;
    D->mpi = 1;
    the = D;
    phase = PH_START;
    atexit(on_exit_);
    if (D->R > 1 && D->r > 0) {
        static char name[64];
        snprintf(name, sizeof name, "%s (rank %zu)", prog, D->r);
        prog = name;
        cli_hold = 1; /* until the first exchange: see on_exit_ */
    }
}
#else
static double wall(void) { return mono_now(); }

float *dist_buffers(dist_t *D, size_t n)
{
    D->nparams = n;
    if (!(D->lev[0] = mnn_calloc_aligned(n, sizeof(float))))
        die(EXIT_RUNTIME, "out of memory for the gradients' sums");
    return D->lev[0];
}

int dist_sum(dist_t *D)
{
    (void)D;
    return 0;
}

void dist_init(dist_t *D)
{
    memset(D, 0, sizeof *D);
    D->R = 1;
    D->S = D->k = 1;
    size_t ranks, rank;
    if (mpirun_rank(&ranks, &rank) && ranks > 1)
        die(EXIT_USAGE, "started by mpirun with %zu ranks, but this sgd-train was built without "
            "MPI (configure --with-mpi, with Debian's openmpi-bin and libopenmpi-dev)", ranks);
}
#endif

void dist_setup(dist_t *D, size_t S, const mnn_model_t *m, const mnn_optim_t *o, size_t batch,
                const char *name)
{
    D->S = S;
    D->k = S / D->R;
    D->batch = batch;
    D->nparams = m->nparams;
    D->nfeat = m->spec.input;
    if (!dist_on(D)) {
#ifdef HAVE_MPI
        if (phase == PH_START)
            first_exchange(D, 0, 0, name);
#endif
        return;
    }
    if (D->nparams > INT_MAX || batch > INT_MAX / 2)
        die(EXIT_USAGE, "%zu parameters: more than one exchange between ranks takes", D->nparams);
    /* what this rank allocates alone comes before the first exchange, so
     * that a rank without the memory says so there; the sums, which may
     * be a window allocated together, after it */
    D->nlev = tree_depth(D->k);
    for (size_t i = 1; i < D->nlev; i++)
        if (!(D->lev[i] = mnn_calloc_aligned(D->nparams, sizeof(float))))
            die(EXIT_RUNTIME, "out of memory for the gradients' partial sums");
    D->loss = calloc(S, sizeof *D->loss);
    D->hits = calloc(S, sizeof *D->hits);
    if (!D->loss || !D->hits)
        die(EXIT_RUNTIME, "out of memory");
#ifdef HAVE_MPI
    if (D->R > 1) {
        D->cap = batch;
        D->px = mnn_calloc_aligned(batch ? batch : 1, D->nfeat * sizeof(float));
        D->py = mnn_calloc_aligned(batch ? batch : 1, sizeof(float));
        if (!D->px || !D->py)
            die(EXIT_RUNTIME, "out of memory");
        MPI_Type_contiguous((int)D->nfeat, MPI_FLOAT, &rec_type);
        MPI_Type_commit(&rec_type);
    }
    if (phase == PH_START) {
        /* every rank starts from the same weights, to take the same steps:
         * hyperparameters, batch, shards, input */
        uint64_t h = mnn_hash64(m->params, m->nparams * sizeof(float));
        if (o->m1)
            h ^= mnn_hash64(o->m1, m->nparams * sizeof(float)) * 3;
        const mnn_opt_spec_t *os = &o->spec;
        const double how[] = {os->type, os->lr, os->momentum, os->weight_decay, os->beta1,
                              os->beta2, os->eps, os->lr_decay, os->average, os->prox,
                              (double)batch, (double)S, D->input, (double)m->nparams,
                              (double)D->nfeat, m->spec.temperature};
        h ^= mnn_hash64(how, sizeof how) * 5;
        first_exchange(D, h, o->step, name);
    }
    SET_PHASE(PH_BUSY); /* a failure in a collective allocation: mpirun ends the job */
    dist_buffers(D, D->nparams);
    SET_PHASE(PH_LOOP);
#else
    (void)o;
    (void)batch;
    (void)name;
    dist_buffers(D, D->nparams);
#endif
}

/* The gradient of shards [lo, lo + c) of this rank's records (x, y, shard j
 * holding records [b[j], b[j+1])), summed in T's order into lev[depth];
 * each shard's loss and hits into loss, hits (at S's index). */
static void tree(dist_t *D, mnn_model_t *m, const float *x, const float *y, const size_t *b,
                 size_t lo, size_t c, size_t depth, size_t denom)
{
    if (c == 1) {
        mnn_batch_stats_t bs;
        int rc = mnn_model_gradient(m, x + b[lo] * D->nfeat, y + b[lo], b[lo + 1] - b[lo], denom,
                                    D->lev[depth], &bs);
        if (rc < 0)
            die(EXIT_RUNTIME, "training failed: %s", mnn_strerror(rc));
        D->loss[D->r * D->k + lo] = bs.loss_sum;
        D->hits[D->r * D->k + lo] = bs.correct;
        return;
    }
    const size_t p = dist_split(c);
    tree(D, m, x, y, b, lo, p, depth, denom);
    tree(D, m, x, y, b, lo + p, c - p, depth + 1, denom);
    float *restrict a = D->lev[depth];
    const float *restrict g = D->lev[depth + 1];
    for (size_t i = 0; i < D->nparams; i++)
        a[i] += g[i];
}

/* The step on this rank's shards (b: k + 1 bounds into x, y) of a
 * minibatch of denom records: the sum over every rank, the update, and
 * the minibatch's loss and hits summed in shard order. */
static void step(dist_t *D, mnn_model_t *m, mnn_optim_t *o, const float *x, const float *y,
                 const size_t *b, size_t denom, mnn_batch_stats_t *bs)
{
    const double t0 = wall();
    double tc = 0;
    SET_PHASE(PH_BUSY);
    tree(D, m, x, y, b, 0, D->k, 0, denom);
#ifdef HAVE_MPI
    if (D->R > 1) {
        const double t1 = wall();
        if (dist_sum(D) < 0)
            die(EXIT_RUNTIME, "the exchange of gradients between ranks failed");
        const int k = (int)D->k;
        check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, D->loss, k, MPI_DOUBLE, comm),
              "the exchange of losses");
        check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, D->hits, k, MPI_UINT64_T, comm),
              "the exchange of hits");
        tc = wall() - t1;
    }
#endif
    bs->loss_sum = 0;
    bs->correct = 0;
    for (size_t s = 0; s < D->S; s++) {
        bs->loss_sum += D->loss[s];
        bs->correct += D->hits[s];
    }
    mnn_optim_step(o, m->params, D->lev[0]);
    SET_PHASE(PH_LOOP);
    D->comm_s += tc;
    D->step_s += wall() - t0;
    D->steps++;
}

void dist_learn(dist_t *D, mnn_model_t *m, mnn_optim_t *o, const float *x, const float *y,
                size_t n, mnn_batch_stats_t *bs)
{
    size_t *all = malloc((D->S + 1) * sizeof *all);
    if (!all)
        die(EXIT_RUNTIME, "out of memory");
    for (size_t s = 0; s <= D->S; s++)
        all[s] = dist_shard_start(n, D->S, s);
#ifdef HAVE_MPI
    if (D->R > 1) {
        phase = PH_BUSY;
        const double t1 = wall();
        ctl_msg_t c = {.n = n, .op = OP_LEARN, .st = -1};
        ctl_bcast(&c);
        int *cnt = malloc(D->R * sizeof *cnt), *dsp = malloc(D->R * sizeof *dsp);
        if (!cnt || !dsp)
            die(EXIT_RUNTIME, "out of memory");
        for (size_t q = 0; q < D->R; q++) {
            dsp[q] = (int)all[q * D->k];
            cnt[q] = (int)(all[(q + 1) * D->k] - all[q * D->k]);
        }
        check(MPI_Scatterv(x, cnt, dsp, rec_type, MPI_IN_PLACE, 0, rec_type, 0, comm),
              "handing out the records");
        check(MPI_Scatterv(y, cnt, dsp, MPI_FLOAT, MPI_IN_PLACE, 0, MPI_FLOAT, 0, comm),
              "handing out the labels");
        free(cnt);
        free(dsp);
        D->comm_s += wall() - t1;
        phase = PH_LOOP;
    }
#endif
    /* rank 0's shards are the first: their bounds are the minibatch's */
    step(D, m, o, x, y, all, n, bs);
    free(all);
}

#ifdef HAVE_MPI
int dist_follow(dist_t *D, mnn_model_t *m, mnn_optim_t *o)
{
    size_t *b = malloc((D->k + 1) * sizeof *b), *all = malloc((D->S + 1) * sizeof *all);
    if (!b || !all)
        die(EXIT_RUNTIME, "out of memory");
    for (;;) {
        ctl_msg_t c;
        phase = PH_BUSY;
        const double t1 = wall();
        ctl_bcast(&c);
        if (c.op != OP_LEARN) {
            free(b);
            free(all);
            phase = PH_LOOP;
            return c.st;
        }
        const size_t n = (size_t)c.n;
        if (n > D->cap)
            die(EXIT_RUNTIME, "rank 0 sent a minibatch of %zu records, more than the batch %zu",
                n, D->cap);
        for (size_t s = 0; s <= D->S; s++)
            all[s] = dist_shard_start(n, D->S, s);
        const size_t first = all[D->r * D->k];
        const int mine = (int)(all[(D->r + 1) * D->k] - first);
        for (size_t j = 0; j <= D->k; j++)
            b[j] = all[D->r * D->k + j] - first;
        check(MPI_Scatterv(NULL, NULL, NULL, rec_type, D->px, mine, rec_type, 0, comm),
              "receiving the records");
        check(MPI_Scatterv(NULL, NULL, NULL, MPI_FLOAT, D->py, mine, MPI_FLOAT, 0, comm),
              "receiving the labels");
        D->comm_s += wall() - t1;
        phase = PH_LOOP;
        mnn_batch_stats_t bs;
        step(D, m, o, D->px, D->py, b, n, &bs);
    }
}

void dist_final(dist_t *D)
{
    if (D->input && phase == PH_LOOP)
        phase = PH_FINAL;
}

void dist_end(dist_t *D, int status)
{
    if (D->R < 2)
        return;
    phase = PH_BUSY;
    ctl_msg_t c = {.op = OP_END, .st = status};
    ctl_bcast(&c);
    phase = PH_ENDED;
}

void dist_agree(dist_t *D, size_t n, int end, int stop, dist_agreed_t *a)
{
    a->n = n;
    a->end = end;
    a->stop = stop;
    a->fail = -1;
    if (D->R < 2)
        return;
    part_msg_t mine = {.n = n, .end = end, .stop = stop, .st = -1};
    part_msg_t *all = malloc(D->R * sizeof *all);
    if (!all)
        die(EXIT_RUNTIME, "out of memory");
    phase = PH_BUSY;
    const double t1 = wall();
    part_exchange(&mine, all);
    D->comm_s += wall() - t1;
    phase = PH_LOOP;
    a->n = 0;
    for (size_t q = 0; q < D->R; q++) {
        a->n += all[q].n;
        a->end &= all[q].end;
        a->stop |= all[q].stop;
        if (all[q].st >= 0 && a->fail < 0)
            a->fail = all[q].st;
    }
    free(all);
}
#else
int dist_follow(dist_t *D, mnn_model_t *m, mnn_optim_t *o)
{
    (void)D, (void)m, (void)o;
    return 0;
}
void dist_final(dist_t *D) { (void)D; }
void dist_end(dist_t *D, int status) { (void)D, (void)status; }
void dist_agree(dist_t *D, size_t n, int end, int stop, dist_agreed_t *a)
{
    (void)D;
    a->n = n;
    a->end = end;
    a->stop = stop;
    a->fail = -1;
}
#endif

void dist_learn_parts(dist_t *D, mnn_model_t *m, mnn_optim_t *o, const float *x, const float *y,
                      size_t n, uint64_t total, mnn_batch_stats_t *bs)
{
    size_t *b = malloc((D->k + 1) * sizeof *b);
    if (!b)
        die(EXIT_RUNTIME, "out of memory");
    /* a whole part: its shards as the minibatch from stdin would have them;
     * a short one fills them in order */
    const size_t first = dist_shard_start(D->batch, D->S, D->r * D->k);
    for (size_t j = 0; j <= D->k; j++) {
        const size_t e = dist_shard_start(D->batch, D->S, D->r * D->k + j) - first;
        b[j] = e < n ? e : n;
    }
    b[D->k] = n;
    step(D, m, o, x, y, b, (size_t)total, bs);
    free(b);
}

void dist_finish(dist_t *D)
{
    (void)D;
#ifdef HAVE_MPI
    if (phase != PH_NONE && phase != PH_DONE) {
        finalize();
        if (D->shared)
            D->lev[0] = NULL; /* it went with the window */
    }
#endif
}

void dist_free(dist_t *D)
{
    for (size_t i = D->shared ? 1 : 0; i < D->nlev; i++)
        mnn_free(D->lev[i]);
    free(D->pv);
#ifdef HAVE_MPI
    free(peer);
    peer = NULL;
#endif
    mnn_free(D->tmp);
    mnn_free(D->px);
    mnn_free(D->py);
    free(D->loss);
    free(D->hits);
    memset(D, 0, sizeof *D);
}
