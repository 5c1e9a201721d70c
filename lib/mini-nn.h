/* mini-nn.h - public interface of libmini-nn.
 *
 * The library never prints and never exits.  Functions that can fail return
 * 0 or a negative MNN_E* code; the ones that can say more fill an mnn_diag_t
 * with a message naming the file, line and column or the field at fault.
 * All sizes are size_t; products of sizes are checked (mnn_size_mul).
 */
#ifndef MINI_NN_H
#define MINI_NN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The public API: what this header declares with MNN_API is all that
 * libmini-nn exports (it is built with -fvisibility=hidden). */
#if defined(__GNUC__)
#define MNN_API __attribute__((visibility("default")))
#else
#define MNN_API
#endif

/* ---- errors ------------------------------------------------------------ */

enum {
    MNN_OK = 0,
    MNN_ENOMEM = -1,    /* out of memory */
    MNN_EINVAL = -2,    /* invalid argument or value */
    MNN_EIO = -3,       /* I/O error; errno tells which */
    MNN_EFORMAT = -4,   /* malformed input (record, YAML, safetensors) */
    MNN_EOVERFLOW = -5, /* a size does not fit */
    MNN_ECORRUPT = -6,  /* hash or size mismatch: data damaged */
    MNN_ESHAPE = -7,    /* shapes do not agree */
    MNN_EOF = -8,       /* end of input (not an error for readers) */
    MNN_EEXIST = -9,    /* target already exists */
    MNN_ECANCELED = -10,/* stopped on request */
    MNN_EBUSY = -11,    /* locked by another process */
    MNN_ELIMIT = -12    /* beyond a bound on size, depth or count */
};

MNN_API const char *mnn_strerror(int err);

/* A diagnostic: a human-readable message, "" when there is none. */
typedef struct {
    char msg[512];
} mnn_diag_t;

/* ---- the file system (fs.c) ----------------------------------------------
 * One home for what every module and program does to files.  MNN_EIO comes
 * with errno set. */

/* All of buf to fd, over short writes and EINTR. */
MNN_API int mnn_write_all(int fd, const void *buf, size_t n);
/* Reads fd to its end into *out (NUL-terminated, free it), at most max
 * bytes: MNN_EOVERFLOW beyond.  `name` is used in messages. */
MNN_API int mnn_read_fd(int fd, const char *name, size_t max, char **out, size_t *len,
                        mnn_diag_t *d);
/* A whole regular file of at most max bytes, its size checked before a
 * byte is read. */
MNN_API int mnn_read_file(const char *path, size_t max, char **out, size_t *len,
                          mnn_diag_t *d);
/* fsync of a directory (by path, or open as dfd): what makes a rename or
 * an unlink in it durable.  A file system that cannot sync directories
 * (EINVAL) has nothing to do: 0. */
MNN_API int mnn_fsync_dir(const char *path);
MNN_API int mnn_fsync_dirfd(int dfd);
/* Removes dirfd/name (dirfd may be AT_FDCWD): a file or a link is
 * unlinked (a link is never followed), a directory is emptied depth-first,
 * at most 16 levels, and removed.  It never enters another file system.
 * 0 also when nothing was there. */
MNN_API int mnn_remove_at(int dirfd, const char *name);
MNN_API int mnn_remove_tree(const char *path);
/* Renames olddirfd/oldname to newdirfd/newname, never replacing anything:
 * MNN_EEXIST if the new name is taken.  Race-free also where the file
 * system lacks RENAME_NOREPLACE. */
MNN_API int mnn_rename_noreplace(int olddirfd, const char *oldname, int newdirfd,
                                 const char *newname);
/* Takes an exclusive lock on directory dir for as long as *fd stays open:
 * MNN_EBUSY at once if another process holds it. */
MNN_API int mnn_lock_dir(const char *dir, int *fd, mnn_diag_t *d);
/* The same for a file that is replaced by renames (so its own inode cannot
 * hold a lock): the lock is on path.lock, created if need be (0666 less the
 * umask), never opened through a link, and removed by mnn_unlock_file (a
 * holder that dies leaves it; the next one takes it over). */
MNN_API int mnn_lock_file(const char *path, int *fd, mnn_diag_t *d);
/* Removes path.lock and closes fd, the lock mnn_lock_file took (nothing
 * when fd < 0). */
MNN_API void mnn_unlock_file(const char *path, int fd);
/* Writes path atomically: fn writes the contents into a new temporary file
 * beside it (opened O_EXCL | O_NOFOLLOW), which is flushed, fsynced, renamed
 * over path, and the directory fsynced; on any error the temporary file is
 * removed and path is untouched.  fn returns 0 or a negative MNN_E* code.
 * A path that exists and is not a regular file (a fifo, /dev/stdout) is
 * written directly. */
typedef int (*mnn_write_fn)(void *ctx, FILE *f);
MNN_API int mnn_write_atomic(const char *path, mnn_write_fn fn, void *ctx,
                             mnn_diag_t *d);
/* The same in steps, for a writer that needs the descriptor (an archive
 * streamed into it) or must remove the temporary file from a signal
 * handler (unlink(a->tmp) is async-signal-safe).  mnn_atomic_open creates
 * a->tmp beside path (O_EXCL | O_NOFOLLOW, mode 0666 less the umask) as
 * a->fd; mnn_atomic_commit
 * fsyncs and closes it, renames it over path and fsyncs the directory;
 * mnn_atomic_abort closes and removes it.  After either, a is empty. */
typedef struct {
    int fd;     /* the temporary file, open for writing; -1 when none */
    char *path; /* the file to replace */
    char *tmp;  /* the temporary file: PATH's dir/.BASE.tmp-PID-N */
    char *dir;  /* path's directory, fsynced after the rename */
} mnn_atomic_t;
MNN_API int mnn_atomic_open(mnn_atomic_t *a, const char *path, mnn_diag_t *d);
MNN_API int mnn_atomic_commit(mnn_atomic_t *a, mnn_diag_t *d);
MNN_API void mnn_atomic_abort(mnn_atomic_t *a);

/* ---- sizes and tensors --------------------------------------------------- */

/* *out = a * b; returns MNN_EOVERFLOW instead of wrapping. */
MNN_API int mnn_size_mul(size_t a, size_t b, size_t *out);
/* n elements of size bytes each, 64-byte aligned, zeroed; NULL on overflow or
 * failure.  Blocks of 8 MiB or more are 2 MiB aligned and advised as
 * transparent huge pages; their pages are mapped when first touched.  Free
 * with mnn_free(). */
MNN_API void *mnn_calloc_aligned(size_t n, size_t size);
MNN_API void mnn_free(void *p);

/* A row-major float32 matrix. */
typedef struct {
    float *data; /* rows*cols floats, 64-byte aligned, owned */
    size_t rows;
    size_t cols;
} mnn_tensor_t;

MNN_API int mnn_tensor_init(mnn_tensor_t *t, size_t rows, size_t cols);
MNN_API void mnn_tensor_free(mnn_tensor_t *t);

/* ---- kernels (ops.c) ------------------------------------------------------
 * Shapes: inp is (B,C), weight is (OC,C) as stored in safetensors, bias (OC),
 * out is (B,OC).  The *_naive twins are plain loops kept as references. */

/* out = inp * weight^T + bias */
MNN_API void mnn_dense_forward(float *out, const float *inp, const float *weight,
                               const float *bias, size_t B, size_t C, size_t OC);
MNN_API void mnn_dense_forward_naive(float *out, const float *inp, const float *weight,
                                     const float *bias, size_t B, size_t C, size_t OC);
/* dweight = dout^T * inp, dbias = sum_b dout, dinp = dout * weight (dinp may
 * be NULL when the input gradient is not needed).  Overwrites, no +=. */
MNN_API void mnn_dense_backward(float *dinp, float *dweight, float *dbias,
                                const float *dout, const float *inp,
                                const float *weight, size_t B, size_t C, size_t OC);
MNN_API void mnn_dense_backward_naive(float *dinp, float *dweight, float *dbias,
                                      const float *dout, const float *inp,
                                      const float *weight, size_t B, size_t C,
                                      size_t OC);

typedef enum {
    MNN_ACT_NONE = 0,
    MNN_ACT_RELU,
    MNN_ACT_TANH,
    MNN_ACT_SIGMOID
} mnn_act_t;

/* Threads the BLAS may use; MNN_EINVAL if this BLAS cannot be told. */
MNN_API int mnn_set_threads(size_t n);
/* Threads the BLAS uses now (1 when it cannot say). */
MNN_API size_t mnn_get_threads(void);

MNN_API const char *mnn_act_name(mnn_act_t a);
/* y = f(x), in place allowed. */
MNN_API void mnn_act_forward(mnn_act_t a, float *y, const float *x, size_t n);
/* dx = f'(x) * dy, computed from the output y = f(x); dx may alias dy. */
MNN_API void mnn_act_backward(mnn_act_t a, float *dx, const float *y, const float *dy,
                              size_t n);

/* Row-wise softmax of logits (B,K) into probs (may alias). */
MNN_API void mnn_softmax(float *probs, const float *logits, size_t B, size_t K);

/* How sure a probability vector p (K entries, summing to 1) is, in [0,1]:
 * maxprob: the largest p; margin: the largest minus the second largest;
 * entropy: 1 - H(p)/log(K), so 1 is certain and 0 uniform (1 when K == 1). */
typedef enum { MNN_CRIT_MAXPROB = 0, MNN_CRIT_MARGIN, MNN_CRIT_ENTROPY } mnn_crit_t;
MNN_API float mnn_confidence(const float *p, size_t K, mnn_crit_t c);
/* "maxprob", "margin" or "entropy"; MNN_EINVAL for anything else. */
MNN_API int mnn_crit_parse(const char *name, mnn_crit_t *c);
MNN_API const char *mnn_crit_name(mnn_crit_t c);
/* Softmax cross-entropy.  Returns the summed loss over the batch.  If dlogits
 * is not NULL it receives (softmax - onehot) * grad_scale.  If probs is not
 * NULL it receives the softmax.  Labels are class ids 0..K-1. */
MNN_API double mnn_softmax_xent(float *dlogits, float *probs, const float *logits,
                                const int32_t *labels, size_t B, size_t K,
                                float grad_scale);
/* Mean squared error 0.5*(out-target)^2 summed over the batch; dout (may be
 * NULL) receives (out-target) * grad_scale.  out and target are (B,K). */
MNN_API double mnn_mse(float *dout, const float *out, const float *target, size_t B,
                       size_t K, float grad_scale);

/* ---- random numbers (rng.c): xoshiro256**, state saveable ---------------- */

typedef struct {
    uint64_t s[4];
} mnn_rng_t;

MNN_API void mnn_rng_seed(mnn_rng_t *r, uint64_t seed);
MNN_API uint64_t mnn_rng_next(mnn_rng_t *r);
MNN_API double mnn_rng_uniform(mnn_rng_t *r); /* [0,1) with 53 random bits */
MNN_API double mnn_rng_normal(mnn_rng_t *r);  /* N(0,1), Box-Muller, no cached spare */

/* ---- samples of a stream (sample.c) ---------------------------------------
         * Each function decides which record goes into which slot (0..k-1) of a
         * reservoir; the slots' contents are the caller's. */

/* A uniform sample of k (Li's Algorithm L): after the first k records, only
         * a geometric number of records apart does one enter. */
typedef struct {
            size_t k;
    uint64_t seen;  /* records offered or skipped */
    uint64_t next;  /* the index of the next record to enter */
    double logw;
    mnn_rng_t *rng;
} mnn_reservoir_t;

MNN_API void mnn_reservoir_init(mnn_reservoir_t *r, size_t k, mnn_rng_t *rng); /* k 0: none */
/* Records that can be passed over unread before the next one that enters. */
MNN_API uint64_t mnn_reservoir_skip(const mnn_reservoir_t *r);
/* n records were passed over (n <= mnn_reservoir_skip). */
MNN_API void mnn_reservoir_skipped(mnn_reservoir_t *r, uint64_t n);
/* The next record: the slot it takes, or -1. */
MNN_API long mnn_reservoir_offer(mnn_reservoir_t *r);

/* Each record with probability p, independently (Bernoulli sampling), by
 * geometric skips: one draw per record kept, none for those in between. */
typedef struct {
    double p;       /* the probability, in (0, 1] */
    double log1mp;  /* log(1 - p); 0 when p is 1 */
    uint64_t seen;  /* records offered */
    uint64_t next;  /* the index of the next record kept */
    mnn_rng_t *rng; /* the caller's generator (init draws the first skip) */
} mnn_bernoulli_t;

/* MNN_EINVAL unless 0 < p <= 1. */
MNN_API int mnn_bernoulli_init(mnn_bernoulli_t *b, double p, mnn_rng_t *rng);
/* The next record: 1 if it is kept, else 0. */
MNN_API int mnn_bernoulli_offer(mnn_bernoulli_t *b);

/* The k largest keys seen, a min-heap; each holds a slot. */
typedef struct {
    size_t k, n;
    double *key;
    size_t *slot;
} mnn_topk_t;

MNN_API int mnn_topk_init(mnn_topk_t *t, size_t k);
MNN_API void mnn_topk_free(mnn_topk_t *t);
/* The slot a new key takes (n while filling; then the smallest key's, if
 * key is larger), or -1. */
MNN_API long mnn_topk_push(mnn_topk_t *t, double key);
MNN_API double mnn_topk_min(const mnn_topk_t *t); /* -inf while empty */

/* A weighted sample of k without replacement (Efraimidis and Spirakis,
         * A-ExpJ): a record of weight w enters as if drawn with probability
         * proportional to w among those not yet drawn. */
typedef struct {
            mnn_topk_t top;
    double xw;      /* weight still to pass over before the next entry */
    mnn_rng_t *rng;
} mnn_wres_t;

MNN_API int mnn_wres_init(mnn_wres_t *r, size_t k, mnn_rng_t *rng);
MNN_API void mnn_wres_free(mnn_wres_t *r);
/* A record of weight w (> 0 and finite; anything else never enters).
 * Keys are log(u) / w: exact for weights from 1e-300 to 1e300 (tested);
 * beyond that range they underflow or overflow and favour early records. */
MNN_API long mnn_wres_offer(mnn_wres_t *r, double w);

/* The key of record i (0-based) in a sample where record i weighs
 * exp(lambda * i): keep the k largest (mnn_topk_push). */
MNN_API double mnn_decay_key(mnn_rng_t *rng, double lambda, uint64_t i);

/* The samplers' states as text, for a program that saves its whole state
 * (stream-sample's part in a pipeline cut; mnn_state_put's lines):
 *
 *   bernoulli P SEEN NEXT
 *   reservoir K SEEN NEXT LOGW
 *   topk K N, then N lines "key KEY SLOT": the heap in its order
 *   wres XW, then its topk
 *
 * The writers: 0 or MNN_EIO.  A reader takes the lines at *p (before end)
 * into a sampler just made by its init with the parameters (k, p) and the
 * generator of the one written, and advances *p past them: 0, or
 * MNN_EFORMAT (not such lines), MNN_EINVAL (a sampler of another k or p),
 * MNN_ECORRUPT (fields no sampler can have: counts out of range, a heap out
 * of order, a slot twice), MNN_ENOMEM, d saying which; the sampler then
 * holds no key and is only to be freed. */
MNN_API int mnn_bernoulli_write(const mnn_bernoulli_t *b, FILE *f);
MNN_API int mnn_bernoulli_read(mnn_bernoulli_t *b, const char **p, const char *end,
                               mnn_diag_t *d);
MNN_API int mnn_reservoir_write(const mnn_reservoir_t *r, FILE *f);
MNN_API int mnn_reservoir_read(mnn_reservoir_t *r, const char **p, const char *end,
                               mnn_diag_t *d);
MNN_API int mnn_topk_write(const mnn_topk_t *t, FILE *f);
MNN_API int mnn_topk_read(mnn_topk_t *t, const char **p, const char *end, mnn_diag_t *d);
MNN_API int mnn_wres_write(const mnn_wres_t *r, FILE *f);
MNN_API int mnn_wres_read(mnn_wres_t *r, const char **p, const char *end, mnn_diag_t *d);

/* ---- saved states as text lines (state.c) ---------------------------------
 * A line "TAG W1 W2 ...
": one word per letter of fmt, each written one way
 * only, so that a state has one spelling and comes back exactly:
 *   'u'  a uint64_t, decimal, no leading zeros
 *   'z'  a size_t, the same
 *   'x'  a double as the 16 lowercase hex digits of its bits
 * mnn_state_put takes the values (0, or MNN_EIO on ferror); mnn_state_get
 * pointers to them, reads the line at *p (before end) and advances *p past
 * it: 0, or MNN_EFORMAT when it is no such line (another tag, a word
 * missing, extra or malformed, no '\n' before end), d saying which tag. */
MNN_API int mnn_state_put(FILE *f, const char *tag, const char *fmt, ...);
MNN_API int mnn_state_get(const char **p, const char *end, mnn_diag_t *d, const char *tag,
                          const char *fmt, ...);

/* ---- replay buffers (replay.c) --------------------------------------------
 * A bounded buffer of record lines that a stream passes through: a policy
 * chooses what it keeps, replays are drawn from it uniformly with
 * replacement, and it saves to a state file and loads back bit-exactly:
 *
 *   # mini-nn replay-buffer state 1
 *   policy NAME / capacity N / seen N / credit X / rng S0 S1 S2 S3
 *   classes N, then "class J SEEN" for each (class-balanced only)
 *   records N, then the N record lines (recent: oldest first)
 *   end HASH      XXH3-64 of every byte before this line, 16 hex digits */

/* What a full buffer keeps. */
typedef enum {
    MNN_REPLAY_RESERVOIR = 0, /* a uniform sample of all records offered
                               * (Vitter's Algorithm R) */
    MNN_REPLAY_CLASS,         /* class-balanced (Chrysakis and Moens's CBRS):
                               * a record of a class that is not among the
                               * largest replaces one of a largest class */
    MNN_REPLAY_RECENT         /* the latest records, a ring */
} mnn_replay_policy_t;

#define MNN_REPLAY_MAX_CAP 100000000        /* records a buffer may hold */
#define MNN_REPLAY_MAX_CLASS 1000000        /* class ids: 0 .. MAX_CLASS - 1 */
#define MNN_REPLAY_MAX_LINE ((size_t)64 << 20) /* bytes of a record line */
#define MNN_REPLAY_MAX_RATIO 1000           /* replays per record */

/* A held copy of one record line: a buffer's slot, or any other holder's
 * (a reservoir's slots in stream-sample). */
typedef struct {
    char *text;   /* the line and its '\n' (no NUL); kept for reuse */
    size_t len;   /* bytes of text, '\n' included; 0 while empty */
    size_t cap;   /* bytes allocated at text */
    uint64_t rec; /* the record's number, from 1, as the holder counts (a
                   * buffer: among those offered; loaded: its place in the
                   * file); 0: empty */
} mnn_replay_rec_t;

/* Copies line (len bytes, no '\n') and a '\n' into r, numbered rec,
 * reusing r's memory: 0, MNN_ELIMIT beyond MNN_REPLAY_MAX_LINE, or
 * MNN_ENOMEM (r as it was). */
MNN_API int mnn_replay_rec_set(mnn_replay_rec_t *r, const char *line, size_t len, uint64_t rec);

typedef struct {
    mnn_replay_policy_t policy; /* what it keeps */
    size_t cap;             /* records it holds at most: 1 .. MNN_REPLAY_MAX_CAP */
    size_t n;               /* records held: slots 0 .. n-1, n <= cap */
    size_t alloc;           /* slots allocated in rec and label, n <= alloc <=
                             * cap, grown as records come (a capacity costs
                             * nothing until it fills) */
    mnn_replay_rec_t *rec;  /* the slots; recent: a ring, the oldest at head */
    int32_t *label;         /* each held record's class (class-balanced) */
    size_t head;            /* recent: the oldest record's slot, the next to be
                             * replaced (0 until the buffer is full) */
    uint64_t seen;          /* records offered, ever */
    size_t nclasses;        /* class-balanced: classes counted (1 + the largest
                             * label offered); 0 for the other policies */
    uint64_t *class_seen;   /* per class: records offered, ever */
    size_t *class_held;     /* per class: records held now (sum: n) */
    size_t **members;       /* per class: the slots holding it, ascending */
    size_t *mcap;           /* per class: entries allocated at members */
    size_t *present;        /* the classes held now (class_held > 0), ascending */
    size_t npresent;        /* entries of present */
    size_t pcap;            /* entries allocated at present */
    double credit;          /* replays owed, in [0, 1) between records: the
                             * fraction a fractional ratio carries over */
    mnn_rng_t rng;          /* the buffer's generator: evictions and draws */
} mnn_replay_t;

/* "reservoir", "class-balanced", "recent" ("?" for another value), and back
 * (MNN_EINVAL for another name). */
MNN_API const char *mnn_replay_policy_name(mnn_replay_policy_t p);
MNN_API int mnn_replay_policy_parse(const char *name, mnn_replay_policy_t *p);
/* An empty buffer; allocates nothing yet.  MNN_EINVAL for an unknown policy
 * or a capacity of 0 or over MNN_REPLAY_MAX_CAP (b is then empty too, and
 * mnn_replay_free harmless). */
MNN_API int mnn_replay_init(mnn_replay_t *b, mnn_replay_policy_t p, size_t cap, uint64_t seed);
/* Frees what b holds and empties it. */
MNN_API void mnn_replay_free(mnn_replay_t *b);
/* Offers the next record: line (len bytes, no '\n'), of class y for
 * class-balanced (0 .. MNN_REPLAY_MAX_CLASS - 1; ignored otherwise); the
 * policy decides whether it is kept.  0, MNN_EINVAL (a class out of range)
 * or MNN_ELIMIT (a line over MNN_REPLAY_MAX_LINE), b unchanged, or
 * MNN_ENOMEM: the record is counted but not kept, b stays valid. */
MNN_API int mnn_replay_offer(mnn_replay_t *b, const char *line, size_t len, int32_t y,
                             mnn_diag_t *d);
/* The k-th record held (k < n; NULL beyond): for recent by age, the oldest
 * first, otherwise by slot. */
MNN_API const mnn_replay_rec_t *mnn_replay_at(const mnn_replay_t *b, size_t k);
/* Adds ratio (0 .. MNN_REPLAY_MAX_RATIO; anything else adds nothing) to the
 * credit and returns the whole replays it makes due now, keeping the
 * fraction for the next record; while the buffer is empty the credit's
 * whole part is dropped.  Call once per record, before offering it. */
MNN_API uint64_t mnn_replay_due(mnn_replay_t *b, double ratio);
/* A record drawn uniformly from those held, with replacement (NULL when
 * empty). */
MNN_API const mnn_replay_rec_t *mnn_replay_draw(mnn_replay_t *b);
/* Writes the state file's bytes into f: 0, MNN_ENOMEM, or MNN_EIO when f
 * has an error (errno from the failed write). */
MNN_API int mnn_replay_write(const mnn_replay_t *b, FILE *f);
/* Writes the state file at path atomically (mnn_write_atomic). */
MNN_API int mnn_replay_save(const mnn_replay_t *b, const char *path, mnn_diag_t *d);
/* Parses a state file's bytes data[0, size) (no NUL needed); name names it
 * in messages.  The file must hold a buffer of b's policy; it takes the
 * file's capacity, or keeps b's with keep_cap (a smaller one then keeps a
 * random subset, the latest for recent).  1: b holds the file's buffer
 * (what it held is freed); otherwise b is as it was and the return says
 * what is wrong: MNN_ECORRUPT truncated or damaged (no seal, a hash that
 * does not match), MNN_EFORMAT not a state file or an impossible one,
 * MNN_ELIMIT a record over MNN_REPLAY_MAX_LINE, MNN_EINVAL a buffer of
 * another policy ("NAME holds a recent buffer, not reservoir"),
 * MNN_ENOMEM; d's message names the file ("NAME: what is wrong"). */
MNN_API int mnn_replay_parse(mnn_replay_t *b, const char *data, size_t size, const char *name,
                             int keep_cap, mnn_diag_t *d);
/* mnn_replay_parse of the file at path: 1 loaded, 0 no such file (b as it
 * was), or an error: those of mnn_replay_parse and mnn_read_file's (MNN_EIO
 * when it cannot be read, a directory or not a regular file). */
MNN_API int mnn_replay_load(mnn_replay_t *b, const char *path, int keep_cap, mnn_diag_t *d);

/* ---- model spec (spec.c) -------------------------------------------------- */

typedef enum { MNN_LOSS_XENT = 0, MNN_LOSS_MSE } mnn_loss_t;
typedef enum { MNN_OPT_SGD = 0, MNN_OPT_ADAM } mnn_opt_type_t;
/* "sgd" or "adam" (MNN_EINVAL for anything else), and back. */
MNN_API int mnn_opt_parse(const char *name, mnn_opt_type_t *t);
MNN_API const char *mnn_opt_name(mnn_opt_type_t t);
typedef enum { MNN_NORM_NONE = 0, MNN_NORM_RUNNING } mnn_norm_t;

typedef struct {
    size_t units;  /* output width of this dense layer, >= 1 */
    mnn_act_t act; /* activation applied after it */
} mnn_layer_spec_t;

typedef struct {
    mnn_opt_type_t type;
    float lr;           /* learning rate, > 0 */
    float momentum;     /* sgd: 0 <= momentum < 1 */
    float weight_decay; /* L2 coefficient added to the gradient, >= 0 */
    float beta1, beta2; /* adam moments, in [0,1) */
    float eps;          /* adam denominator guard, > 0 */
    float lr_decay;     /* lr_t = lr / (1 + lr_decay * step), >= 0 */
    float average;      /* 0: off; else the decay in [0,1) of an exponential
                         * moving average of the weights, which is the model
                         * written for inference */
    float prox;         /* FedProx's mu, >= 0 (0: off): prox * (w - anchor) is
                         * added to the gradient, the anchor being the weights
                         * the round started from (mnn_optim_anchor) */
} mnn_opt_spec_t;

/* Early-exit heads a spec may have at most. */
#define MNN_MAX_EXITS 16
/* Dense layers, and parameters (weights and biases, exit heads included),
 * a spec may have at most. */
#define MNN_MAX_LAYERS 256
#define MNN_MAX_PARAMS ((uint64_t)1 << 36)

typedef struct {
    size_t input;       /* features per record, >= 1 */
    float input_scale;  /* x * input_scale before anything else; 1 = none */
    mnn_norm_t normalize;
    size_t outputs;     /* classes (xent) or regression outputs (mse) */
    mnn_loss_t loss;
    size_t nlayers;
    mnn_layer_spec_t *layers; /* nlayers entries, owned */
    size_t nexits;      /* early-exit heads, <= MNN_MAX_EXITS; classifiers only */
    size_t *exits;      /* nexits entries, owned: head j reads the output of
                         * dense layer exits[j] (0-based), strictly
                         * increasing, each < nlayers - 1 */
    float *exit_weights;/* nexits entries, owned: the weight of head j's loss
                         * in training, finite >= 0 (the final head's is 1);
                         * NULL means 1 each */
    float temperature;  /* predictions are softmax(logits / temperature), for
                         * the final head and every exit head; finite > 0,
                         * 1 = none; classifiers only; training ignores it */
    mnn_opt_spec_t opt;
    size_t batch;  /* records per SGD step, >= 1 */
    uint64_t seed; /* initialisation seed */
} mnn_spec_t;

/* Defaults for everything optional; no layers, no exits, temperature 1. */
MNN_API void mnn_spec_defaults(mnn_spec_t *s);
/* Load a spec from a YAML file; errors name path:line:column. */
MNN_API int mnn_spec_load_file(mnn_spec_t *s, const char *path, mnn_diag_t *d);
/* Load from a YAML text in memory; `name` is used in messages. */
MNN_API int mnn_spec_load_string(mnn_spec_t *s, const char *text, size_t len,
                                 const char *name, mnn_diag_t *d);
/* *n = the parameters of the model: every layer's and exit head's weights
 * and biases.  MNN_EOVERFLOW if that does not fit. */
MNN_API int mnn_spec_params(const mnn_spec_t *s, size_t *n);
/* About the bytes a training of s needs with batch records per step:
 * parameters, gradients, optimizer moments and weight average, twice
 * (sgd-train's checkpoint snapshot), a batch's activations and gradient
 * buffers, and 16 MiB for code and reader buffers.  UINT64_MAX when the
 * spec's parameters do not fit. */
MNN_API uint64_t mnn_train_memory(const mnn_spec_t *s, size_t batch);
/* Checks ranges and shapes after command-line overrides. */
MNN_API int mnn_spec_validate(const mnn_spec_t *s, mnn_diag_t *d);
/* Writes the spec as a YAML block mapping, each line prefixed by `indent`
 * spaces.  Floats are written so they round-trip. */
MNN_API int mnn_spec_write(const mnn_spec_t *s, FILE *f, int indent);
MNN_API int mnn_spec_copy(mnn_spec_t *dst, const mnn_spec_t *src);
MNN_API void mnn_spec_free(mnn_spec_t *s);

/* ---- model (model.c) ------------------------------------------------------ */

typedef struct {
    mnn_spec_t spec;
    size_t nparams; /* total floats in params (and grads) */
    float *params;  /* all weights and biases, one aligned allocation */
    float *grads;   /* same layout as params; allocated by the first
                     * training step */
    size_t *w_off;  /* nlayers: offset of layer i's weight (units x fan_in) */
    size_t *b_off;  /* nlayers: offset of layer i's bias (units) */
    size_t *fan_in; /* nlayers: input width of layer i */
    size_t *ew_off; /* nexits: offset of exit head j's weight (outputs x
                     * units of layer exits[j]), after all the layers */
    size_t *eb_off; /* nexits: offset of exit head j's bias (outputs) */
    /* normalize: running (Welford, double precision) */
    double *norm_mean; /* input entries, or NULL */
    double *norm_m2;   /* input entries, or NULL */
    uint64_t norm_count;
    /* workspace for up to `cap` records */
    size_t cap;
    float *x0;     /* (cap, input) preprocessed input */
    float **acts;  /* nlayers outputs (cap, units_i), after activation */
    float *dbuf[2];/* two (cap, max units) gradient ping-pong buffers */
    float *probs;  /* (cap, outputs) probabilities; an exit head's logits */
    int32_t *labels; /* (cap) */
    float *edlogits; /* (cap, outputs) an exit head's logit gradient; NULL
                      * without exits */
    size_t *rows;  /* (cap) predict_exit: the record of each active row;
                    * NULL without exits */
} mnn_model_t;

/* Allocates a model for a validated spec, parameters zero. */
MNN_API int mnn_model_init(mnn_model_t *m, const mnn_spec_t *s);
/* He-normal weights (Glorot-normal for tanh/sigmoid/none), zero biases;
 * then the exit heads, Glorot-normal (drawn after the layers, so a spec
 * without exits draws what it always drew). */
MNN_API void mnn_model_init_weights(mnn_model_t *m, mnn_rng_t *rng);
MNN_API void mnn_model_free(mnn_model_t *m);
/* Copies the learned state (weights, normalization statistics) of a model
 * of the same spec: a snapshot costs one memcpy. */
MNN_API int mnn_model_copy_state(mnn_model_t *dst, const mnn_model_t *src);
/* Ensures workspace for batches of up to n records. */
MNN_API int mnn_model_reserve(mnn_model_t *m, size_t n);

/* Per-batch results of a training step or an evaluation. */
typedef struct {
    double loss_sum; /* summed over the records; the final head's only */
    size_t correct;  /* records whose argmax equals the label (xent); the
                      * final head's only */
} mnn_batch_stats_t;

/* Test-then-train on B records: x is (B,input) raw features, y the labels
 * (class ids as floats, or targets).  The forward pass that measures the
 * loss is the one that learns: predictions come before the update.
 * With exit heads the loss learned from is the final head's cross-entropy
 * plus exit_weights[j] times head j's, each averaged over the batch; st
 * still reports the final head alone, so progressive metrics mean the same
 * with or without exits.  The temperature plays no part. */
struct mnn_optim;
MNN_API int mnn_model_train_batch(mnn_model_t *m, struct mnn_optim *o, const float *x,
                                  const float *y, size_t B, mnn_batch_stats_t *st);
/* The gradient of a part of a minibatch, for training on several
 * processes: the loss summed over its B records (x, y as for
 * mnn_model_train_batch) and divided by denom, the records of the whole
 * minibatch, differentiated into grads (nparams floats, overwritten; zeros
 * when B is 0); st receives the part's loss and hits.  The model is not
 * changed: summing the parts' gradients and giving the sum to
 * mnn_optim_step is one training step.  MNN_EINVAL when denom < B, or for a
 * model with running normalization (its statistics would need every
 * record of the minibatch). */
MNN_API int mnn_model_gradient(mnn_model_t *m, const float *x, const float *y, size_t B,
                               size_t denom, float *grads, mnn_batch_stats_t *st);
/* Outputs for B records: class probabilities softmax(logits / temperature)
 * of the final head (xent) or values (mse), into out (B,outputs).  Does not
 * change the model. */
MNN_API int mnn_model_predict(mnn_model_t *m, const float *x, size_t B, float *out);
/* Like mnn_model_predict, but each record stops at the first exit head whose
 * probabilities (temperature applied) have mnn_confidence(crit) >=
 * threshold; taken (B entries) receives that head's index j, or nexits for
 * the final head.  After each exit the records still going on are packed
 * together, so the deeper layers compute only those.  With no exits, or a
 * threshold above 1, out is exactly mnn_model_predict's. */
MNN_API int mnn_model_predict_exit(mnn_model_t *m, const float *x, size_t B, float *out,
                                   float threshold, mnn_crit_t crit, uint8_t *taken);
/* The final head's raw outputs (B,outputs): logits without temperature or
 * softmax (xent), values (mse).  For fitting a temperature. */
MNN_API int mnn_model_logits(mnn_model_t *m, const float *x, size_t B, float *out);

/* ---- calibration (calib.c) ---------------------------------------------- */

/* The index of the largest of K values (the first of equal ones). */
MNN_API size_t mnn_argmax(const float *p, size_t K);

/* Expected calibration error: predictions binned by confidence into
 * MNN_ECE_BINS equal-width bins; the error is the count-weighted mean over
 * bins of |accuracy - mean confidence|.  Zero it before the first add. */
#define MNN_ECE_BINS 15
typedef struct {
    uint64_t n[MNN_ECE_BINS];   /* predictions in each bin */
    uint64_t hit[MNN_ECE_BINS]; /* of which right */
    double conf[MNN_ECE_BINS];  /* their summed confidence */
    uint64_t total;             /* predictions added */
} mnn_ece_t;
MNN_API void mnn_ece_add(mnn_ece_t *e, double conf, int hit);
MNN_API double mnn_ece_value(const mnn_ece_t *e);

/* Temperature scaling of n labelled logit rows z (n, K), labels y in
 * [0, K): the summed NLL of softmax(z / T); the T in [1e-4, 1e4] that
 * minimises it (convex in 1/T, found by a bracketed Newton method); and the
 * ECE of the predictions softmax(z / T) makes. */
MNN_API double mnn_temp_nll(const float *z, const int32_t *y, size_t n, size_t K, double T);
MNN_API double mnn_temp_fit(const float *z, const int32_t *y, size_t n, size_t K);
MNN_API double mnn_temp_ece(const float *z, const int32_t *y, size_t n, size_t K, double T);

/* ---- ensembles (ensemble.c) ------------------------------------------------ */

/* Several models predicting together (they must agree on inputs, outputs
 * and loss).  Plain: the weighted average of their outputs.  anytime: the
 * members in order, each on the records the running average is not yet
 * confident of (mnn_confidence(crit) >= exit_t stops a record).  A single
 * model with exits: its early exits at exit_t (mnn_model_predict_exit). */
#define MNN_ENSEMBLE_MAX 16
typedef struct {
    size_t n;                         /* members, 1 to MNN_ENSEMBLE_MAX */
    mnn_model_t *m[MNN_ENSEMBLE_MAX]; /* the members (not owned) */
    float w[MNN_ENSEMBLE_MAX];        /* their weights, summing to 1 */
    int anytime;                      /* stop at the first confident member */
    int exits;                        /* one model: stop at its early exits */
    float exit_t;                     /* the confidence that stops a record */
    mnn_crit_t crit;                  /* how confidence is measured */
    size_t cap;                       /* records per batch the scratch holds */
    float *tmp, *xsub, *pbuf;         /* scratch: a member's outputs, the
                                       * undecided rows, one running average */
    size_t *idx;                      /* scratch: the undecided records */
} mnn_ensemble_t;

/* Empty, maxprob, no early stop. */
MNN_API void mnn_ensemble_init(mnn_ensemble_t *e);
/* The members and their weights (NULL: equal; else >= 0, summing above 0,
 * normalised): MNN_EINVAL for bad weights or n, MNN_ESHAPE when a member's
 * inputs, outputs or loss differ from the first's. */
MNN_API int mnn_ensemble_set(mnn_ensemble_t *e, mnn_model_t *const *m, const float *w,
                             size_t n);
/* Workspace for batches of up to batch records, the members' included. */
MNN_API int mnn_ensemble_reserve(mnn_ensemble_t *e, size_t batch);
/* Outputs (B, outputs) for B records x (B, input); stage (B) receives the
 * member (anytime) or exit head each record stopped at. */
MNN_API int mnn_ensemble_predict(mnn_ensemble_t *e, const float *x, size_t B, float *out,
                                 uint8_t *stage);
/* Frees the scratch (not the members). */
MNN_API void mnn_ensemble_free(mnn_ensemble_t *e);

/* ---- merging models (merge.c) ---------------------------------------------
 * K models' tensors combined coordinate by coordinate (ckpt-merge), each a
 * tensor of n floats at a time:
 *   fedavg        sum_k w_k x_k / sum_k w_k, accumulated in double in the
 *                 order given (a caller that wants the same bytes from the
 *                 same inputs in any order puts them in a fixed order)
 *   median        the middle value, the mean of the two middle ones for an
 *                 even K (weights ignored)
 *   trimmed-mean  the mean of what is left when the floor(trim K) smallest
 *                 and as many largest are dropped (weights ignored)
 * Every value is rounded to float once, at the end. */
#define MNN_MERGE_MAX 256
typedef enum { MNN_MERGE_FEDAVG, MNN_MERGE_MEDIAN, MNN_MERGE_TRIMMED } mnn_merge_mode_t;
typedef struct {
    mnn_merge_mode_t mode;
    double trim; /* trimmed-mean: the share dropped at each end, [0, 0.5) */
} mnn_merge_t;
/* where a merge met a value that is not finite: model input, coordinate at */
typedef struct {
    size_t input, at;
} mnn_merge_bad_t;
/* "fedavg", "median", "trimmed-mean"; MNN_EINVAL for any other name. */
MNN_API int mnn_merge_parse(const char *name, mnn_merge_mode_t *mode);
MNN_API const char *mnn_merge_name(mnn_merge_mode_t mode);
/* The values trimmed-mean drops at each end of K. */
MNN_API size_t mnn_merge_trimmed(size_t K, double trim);
/* 0, or MNN_EINVAL (d says why): K outside 1..MNN_MERGE_MAX, a trim outside
 * [0, 0.5) or one that leaves nothing, for fedavg a weight that is negative
 * or not finite, or weights summing to 0 (w NULL: all equal, none checked). */
MNN_API int mnn_merge_check(const mnn_merge_t *o, const double *w, size_t K, mnn_diag_t *d);
/* out[j] = the merge of x[0][j] .. x[K-1][j], j < n (w: K weights, used by
 * fedavg, whose result does not depend on their scale; NULL: all equal).
 * 0, or MNN_EINVAL: mnn_merge_check's refusals, or a value of an input that
 * is not finite, *bad saying where when bad is not NULL.  out may not alias
 * an input. */
MNN_API int mnn_merge_tensor(const mnn_merge_t *o, const float *const *x, const double *w,
                             size_t K, size_t n, float *out, mnn_merge_bad_t *bad,
                             mnn_diag_t *d);

/* ---- optimizers (optim.c) ------------------------------------------------- */

typedef struct mnn_optim {
    mnn_opt_spec_t spec;
    size_t n;     /* parameters */
    float *m1;    /* sgd: velocity; adam: first moment */
    float *m2;    /* adam: second moment; NULL for sgd */
    float *avg;   /* moving average of the weights, NULL unless averaging */
    float *anchor; /* prox's anchor, NULL unless spec.prox > 0 */
    uint64_t step; /* updates applied so far */
} mnn_optim_t;

/* The parameter-sized buffers an optimizer of this spec keeps (and
 * optimizer.safetensors holds): moments, the raw weights when averaging,
 * prox's anchor. */
MNN_API unsigned mnn_opt_buffers(const mnn_opt_spec_t *spec);

MNN_API int mnn_optim_init(mnn_optim_t *o, const mnn_opt_spec_t *spec, size_t n);
MNN_API void mnn_optim_free(mnn_optim_t *o);
/* Copies moments, average and step from an optimizer of the same shape. */
MNN_API int mnn_optim_copy_state(mnn_optim_t *dst, const mnn_optim_t *src);
/* The weights to use for inference: the average when there is one. */
MNN_API const float *mnn_optim_weights(const mnn_optim_t *o, const float *params);
/* The learning rate of the next update (schedule applied). */
MNN_API float mnn_optim_lr(const mnn_optim_t *o);
MNN_API void mnn_optim_step(mnn_optim_t *o, float *params, const float *grads);
/* Makes params the anchor of prox (a new round starts from them), when
 * o->spec.prox > 0; without prox it frees the anchor.  0 or MNN_ENOMEM.
 * mnn_optim_init leaves a prox's anchor at 0 (a pull towards 0): call this
 * once the weights are those the round starts from. */
MNN_API int mnn_optim_anchor(mnn_optim_t *o, const float *params);

/* ---- records (record.c) -------------------------------------------------- */

typedef enum {
    MNN_FMT_UNKNOWN = 0, /* decided by the first data line */
    MNN_FMT_DENSE,       /* label,x1,...,xn (',' or '\t') */
    MNN_FMT_SPARSE       /* label idx:val ... (libsvm, 1-based) */
} mnn_fmt_t;

typedef struct {
    mnn_fmt_t fmt;
    char sep;          /* dense separator once known */
    size_t nfeat;      /* features expected */
    int has_label;     /* first field is the label */
    size_t classes;    /* > 0: labels are integers 0..classes-1; 0: real */
} mnn_record_fmt_t;

/* Parses one line (no '\n') into x (nfeat floats) and *label.  Lines are
 * data lines: the caller skips '#' and empty ones.  The first call decides
 * the format.  On error fills d with what is wrong (without the line
 * number, which the caller knows). */
MNN_API int mnn_record_parse(mnn_record_fmt_t *f, const char *line, size_t len,
                             float *x, float *label, mnn_diag_t *d);

/* Locale-independent number parsing of [s, end): the whole range must be a
 * finite number. */
MNN_API int mnn_parse_float(const char *s, const char *end, float *out);
MNN_API int mnn_parse_double(const char *s, const char *end, double *out);
/* A whole NUL-terminated string of decimal digits, without overflow. */
MNN_API int mnn_parse_u64(const char *s, uint64_t *out);

/* A buffered line reader over a file descriptor. */
typedef struct {
    int fd;
    char *buf;
    size_t cap, start, end; /* unread bytes are buf[start, end) */
    int eof;
    int err;                /* errno of a failed read, or 0 */
    uint64_t lineno;        /* number of the line last returned */
    size_t max_line;        /* longest line accepted */
    int cancel_fd;          /* -1, or a descriptor that, once readable,
                             * makes a waiting read give up */
} mnn_linereader_t;

MNN_API int mnn_lr_init(mnn_linereader_t *lr, int fd, size_t max_line);
MNN_API void mnn_lr_free(mnn_linereader_t *lr);
/* Next line without its '\n' (a final line without one is returned too).
 * Returns 0, MNN_EOF at end, MNN_EIO (lr->err), MNN_EOVERFLOW (line longer
 * than max_line) or MNN_ECANCELED (cancel_fd became readable).  The line
 * stays valid until the next call. */
MNN_API int mnn_lr_next(mnn_linereader_t *lr, const char **line, size_t *len);
/* 1 if a whole line is already buffered (the next mnn_lr_next won't block). */
MNN_API int mnn_lr_ready(const mnn_linereader_t *lr);

/* ---- checkpoints (safetensors.c, ckpt.c) ---------------------------------- */

/* Federated lineage.  A checkpoint that ckpt-merge wrote is round R of a
 * federation (`round: R` in its manifest, with the checkpoints merged);
 * a training resumed from it, and every checkpoint after that, names it as
 * its base (`base:`), so that the next merge knows what each one learned
 * since and whether they started from the same model. */
typedef struct {
    uint32_t round;              /* the base's round; 0: no base */
    char xxh3[17];               /* its manifest_xxh3 */
    uint64_t records_seen, step; /* its counters */
} mnn_base_t;

/* One checkpoint a merge took: its source as given, its manifest_xxh3, the
 * records it learned since its base, and its weight in the merge. */
typedef struct {
    const char *source;
    char xxh3[17];
    uint64_t records;
    double weight;
} mnn_merged_t;

/* The most processes (and logical shards) a data-parallel training has. */
#define MNN_MAX_RANKS 65536

/* Training counters kept in state.yaml (and lineage, in the manifest). */
typedef struct {
    uint64_t step;         /* optimizer updates */
    uint64_t records_seen; /* records learned from */
    double loss_sum;       /* progressive loss so far */
    uint64_t correct;      /* progressive hits so far */
    mnn_rng_t rng;
    uint32_t threads;      /* BLAS threads the training ran on (1..1024):
                            * a resumption is bit-exact on as many */
    uint32_t ranks;        /* processes under mpirun (0 or 1: one) */
    uint32_t shards;       /* logical shards of each minibatch whose gradients
                            * are summed in a fixed tree (0 or 1: none); a
                            * resumption on any ranks owning them whole is
                            * bit-exact */
    /* the manifest's lineage (not in state.yaml) */
    mnn_base_t base;              /* the merge this training descends from */
    uint32_t round;               /* a merge's own round (ckpt-merge), else 0 */
    const mnn_merged_t *merged;   /* with round: the checkpoints merged */
    size_t nmerged;
} mnn_train_state_t;

/* Writes a checkpoint directory `dir` atomically: everything goes into a
 * sibling temporary directory first, each file is fsynced, then it is renamed
 * into place and the parent fsynced.  Fails with MNN_EEXIST if dir exists
 * unless `replace`.  `created` is the UTC time to record (seconds since the
 * epoch). `parent` may be NULL. */
MNN_API int mnn_ckpt_write(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                           const mnn_train_state_t *st, const char *parent,
                           int64_t created, int replace, mnn_diag_t *d);
/* mnn_ckpt_write for a writer that streams its tensors (ckpt-merge): the
 * callbacks write model.safetensors and optimizer.safetensors of spec's
 * model into f (each returns 0, or an error with d-worthy errno or its own
 * code; what they write must hold finite values: nothing checks them
 * after), state.yaml comes from st, and the rest is mnn_ckpt_write's
 * protocol; dir must not exist. */
typedef struct {
    int (*model)(FILE *f, void *ctx);
    int (*optim)(FILE *f, void *ctx);
    void *ctx;
    /* a merge's server momentum (MNN_SERVER_FILE), written after the two
     * others; NULL: none */
    int (*server)(FILE *f, void *ctx);
} mnn_ckpt_writer_t;
/* The file of a merge that keeps ckpt-merge's server momentum. */
#define MNN_SERVER_FILE "server.safetensors"
MNN_API int mnn_ckpt_write_with(const char *dir, const mnn_spec_t *spec,
                                const mnn_ckpt_writer_t *wr, const mnn_train_state_t *st,
                                const char *parent, int64_t created, mnn_diag_t *d);
/* Checkpoint roots: a directory of step-NNNNNNNN checkpoints and a `latest`
 * symbolic link to the newest.  mnn_ckpt_root_open creates root if needed,
 * locks it for the caller, who writes there until it closes *lock_fd
 * (MNN_EBUSY while another process holds it), and removes the .tmp-*
 * leftovers of a writer that crashed (never following a link). */
MNN_API int mnn_ckpt_root_open(const char *root, int *lock_fd, mnn_diag_t *d);
/* "step-%08llu" */
MNN_API void mnn_ckpt_step_name(char *buf, size_t size, uint64_t step);
/* Points root/latest at name atomically (a new link renamed over it), then
 * fsyncs root. */
MNN_API int mnn_ckpt_set_latest(const char *root, const char *name, mnn_diag_t *d);
/* Removes the oldest step-* checkpoint directories beyond the newest keep
 * (0: keep all), never the one latest points to; anything else named step-N
 * (a link) is neither counted nor touched.  *removed counts them. */
MNN_API int mnn_ckpt_prune(const char *root, size_t keep, size_t *removed, mnn_diag_t *d);

/* The newest checkpoint in root: 1 with *step its number, 0 when root
 * holds none (or does not exist), or a negative error.  As for
 * mnn_ckpt_prune, only the step-N directories written here count. */
MNN_API int mnn_ckpt_root_newest(const char *root, uint64_t *step, mnn_diag_t *d);

/* Removes a checkpoint directory: its regular files, then itself. */
MNN_API int mnn_ckpt_remove(const char *dir);

/* Whether the checkpoint directory dir holds exactly the files
 * mnn_ckpt_write would write for this state (its manifest's sizes and
 * hashes, and its files verified against them), computed without writing
 * anything: 0 when it does, MNN_EEXIST when it holds other bytes, another
 * error when it cannot be read. */
MNN_API int mnn_ckpt_same(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                          const mnn_train_state_t *st, mnn_diag_t *d);

/* Copies the checkpoint directory src to dst (which must not exist)
 * through a temporary sibling, verifying every file against the manifest as
 * it goes, fsyncing, and renaming into place. */
MNN_API int mnn_ckpt_copy(const char *src, const char *dst, mnn_diag_t *d);

/* Loads a checkpoint directory (or a directory holding a `latest` link to
 * one): verifies every file against the manifest, rebuilds the model from the
 * stored spec and loads the weights.  o and st may be NULL. */
MNN_API int mnn_ckpt_load(const char *dir, mnn_model_t *m, mnn_optim_t *o,
                          mnn_train_state_t *st, mnn_diag_t *d);

/* A parsed manifest.yaml. */
/* the files of the largest cut: 3, pending.safetensors and the parts of
 * MNN_CUT_MAX_STAGES - 1 upstream stages */
#define MNN_MANIFEST_MAX_FILES 67
typedef struct {
    char name[64];  /* a plain file name in the checkpoint directory */
    uint64_t bytes;
    char xxh3[17];  /* 16 lowercase hex digits */
} mnn_manifest_file_t;

typedef struct {
    char tool[64];
    char created[32];       /* as written: YYYY-MM-DDTHH:MM:SSZ */
    uint64_t step, records_seen;
    char *parent;           /* the parent checkpoint, or NULL */
    char xxh3[17];          /* manifest_xxh3: the hash that names this manifest */
    uint32_t round;         /* a merge's round, 0 for a training's checkpoint */
    size_t nmerged;         /* with round: the checkpoints it merged */
    char (*merged_xxh3)[17]; /* their manifest_xxh3, nmerged of them */
    mnn_base_t base;        /* base.round 0: none */
    mnn_spec_t spec;        /* the model spec (valid when has_spec) */
    int has_spec;
    size_t nfiles;
    mnn_manifest_file_t *files;
    /* a cut (mnn_ckpt_write_cut): id 0 when it is none */
    uint64_t cut;
    uint32_t cut_stage;     /* the committing stage's index */
    char cut_program[32];
    uint64_t pending;       /* records of a partly filled minibatch */
    size_t nstages;         /* the upstream stages' parts, by index */
    struct mnn_manifest_stage {
        uint32_t index;
        char program[32];
        char file[64];
    } *stages;
} mnn_manifest_t;

MNN_API int mnn_manifest_parse(mnn_manifest_t *mf, const char *text, size_t len,
                               const char *name, mnn_diag_t *d);
/* Reads dir/manifest.yaml, following dir/latest when dir is a checkpoint
 * root; *real (if not NULL) receives the checkpoint directory (free it). */
MNN_API int mnn_manifest_load(mnn_manifest_t *mf, const char *dir, char **real,
                              mnn_diag_t *d);
MNN_API const mnn_manifest_file_t *mnn_manifest_find(const mnn_manifest_t *mf,
                                                     const char *name);
/* Every listed file of dir exists as a regular file with its size and hash. */
MNN_API int mnn_manifest_verify_dir(const mnn_manifest_t *mf, const char *dir,
                                    mnn_diag_t *d);
MNN_API void mnn_manifest_free(mnn_manifest_t *mf);
/* The base of a training resumed from mf: mf itself when it is a merge (a
 * round), else mf's own base (none: round 0). */
MNN_API void mnn_manifest_child_base(const mnn_manifest_t *mf, mnn_base_t *base);
/* The state of the checkpoint directory dir whose manifest is mf (parsed,
 * `state.yaml` listed, as mnn_manifest_parse leaves it): state.yaml read
 * and checked against the manifest's size and hash, and its step and
 * records_seen against the manifest's (MNN_ECORRUPT), as mnn_ckpt_load
 * checks it. */
MNN_API int mnn_ckpt_load_state(const char *dir, const mnn_manifest_t *mf,
                                mnn_train_state_t *st, mnn_diag_t *d);

/* ---- pipeline cuts (cut.c) -------------------------------------------------
 * The control lines that carry a consistent checkpoint of a whole pipeline
 * (mini-nn(7), PIPELINE CHECKPOINTS).  stream-ingest, the head, starts its
 * output with a start line and injects barriers; every stateful stage puts
 * its part (its whole state, base64 on '#=' lines) before the barrier's end
 * line; the committing stage writes the cut as one checkpoint:
 *
 *   #!ckpt-start FROM N        FROM: the cut resumed from (0: none); N:
 *                              the stages so far (each adds one)
 *   #!ckpt ID [stop|final]     a barrier: the cut's records end here;
 *                              stop: the pipeline stops after it (the input
 *                              ends, to be resumed); final: the source ended
 *   #!part ID INDEX PROGRAM BYTES XXH3    a stage's part, followed by
 *   #=BASE64                   BYTES bytes in lines of at most
 *                              MNN_CUT_LINE characters
 *   #!part ID INDEX PROGRAM BYTES XXH3 file    a stage's part left in a
 *                              file, ROOT/.parts/cID-sINDEX.PROGRAM, where
 *                              ROOT is the --ckpt-dir the stage and the
 *                              committing stage share (no data lines)
 *   #!ckpt-end ID              the end of the barrier's block
 *
 * A stage trusts a part only when its bytes match the XXH3 of its header. */

#define MNN_CUT_LINE 65536                  /* base64 characters per '#=' line */
#define MNN_CUT_MAX_PART ((uint64_t)1 << 30) /* bytes of one stage's part */
#define MNN_CUT_MAX_STAGES 64
#define MNN_CUT_PROGRAM_MAX 32              /* a program name, NUL included */

typedef enum {
    MNN_CUT_NONE = 0, /* a '#' line that is not a cut line */
    MNN_CUT_START,    /* #!ckpt-start */
    MNN_CUT_BARRIER,  /* #!ckpt */
    MNN_CUT_PART,     /* #!part */
    MNN_CUT_DATA,     /* #= */
    MNN_CUT_END       /* #!ckpt-end */
} mnn_cut_kind_t;

typedef enum { MNN_CUT_GO = 0, MNN_CUT_STOP, MNN_CUT_FINAL } mnn_cut_what_t;

typedef struct {
    mnn_cut_kind_t kind;
    uint64_t id;          /* START: the cut resumed from; the others: the cut */
    mnn_cut_what_t what;  /* BARRIER */
    uint32_t index;       /* START: the stages so far; PART: the stage's index */
    char program[MNN_CUT_PROGRAM_MAX]; /* PART */
    uint64_t bytes;       /* PART */
    char xxh3[17];        /* PART */
    int in_file;          /* PART: its data is in a file (mnn_part_load) */
} mnn_cutline_t;

/* Classifies a line (len bytes, no '\n'): 1 and *l filled for a cut line,
 * 0 for any other line, MNN_EFORMAT (d says what is wrong) for a line that
 * starts like a cut line but is not a well-formed one. */
MNN_API int mnn_cutline_parse(const char *line, size_t len, mnn_cutline_t *l, mnn_diag_t *d);

/* Writes the lines: a start line, a barrier, a part (header and data
 * lines), the end of a block.  0 or MNN_EIO (ferror). */
MNN_API int mnn_cut_put_start(FILE *f, uint64_t from, uint32_t stages);
MNN_API int mnn_cut_put_barrier(FILE *f, uint64_t id, mnn_cut_what_t what);
MNN_API int mnn_cut_put_part(FILE *f, uint64_t id, uint32_t index, const char *program,
                             const void *data, size_t n);
MNN_API int mnn_cut_put_end(FILE *f, uint64_t id);
/* A part left in a file: mnn_cut_part_save writes the n bytes as
 * ROOT/.parts/cID-sINDEX.PROGRAM (ROOT and ROOT/.parts created when missing; a
 * temporary name, then a rename, but no fsync: the committing stage
 * copies the bytes into the cut, which it makes durable); then
 * mnn_cut_put_part_ref writes the header line that points at it. */
#define MNN_CUT_PARTS ".parts"
MNN_API void mnn_cut_part_name(char *buf, size_t size, uint64_t id, uint32_t index,
                               const char *program);
MNN_API int mnn_cut_part_save(const char *root, uint64_t id, uint32_t index, const char *program,
                              const void *data, size_t n, mnn_diag_t *d);
MNN_API int mnn_cut_put_part_ref(FILE *f, uint64_t id, uint32_t index, const char *program,
                                 const void *data, size_t n);
MNN_API const char *mnn_cut_what_name(mnn_cut_what_t what); /* "", "stop", "final" */

/* A part being received: header, then data lines, then done. */
typedef struct {
    mnn_cutline_t head;
    unsigned char *data;  /* head.bytes when complete */
    size_t len, cap;
    int pad;              /* a '=' was met: no more data may follow */
} mnn_part_t;

/* Starts p on a PART line (p's memory is reused). */
MNN_API void mnn_part_begin(mnn_part_t *p, const mnn_cutline_t *head);
/* Adds a '#=' line (the whole line, '#=' included): 0, or MNN_EFORMAT (not
 * base64, data after the end), MNN_ELIMIT (more than the header said), or
 * MNN_ENOMEM, d saying which. */
MNN_API int mnn_part_data(mnn_part_t *p, const char *line, size_t len, mnn_diag_t *d);
/* The part is complete: its size and hash match the header, else
 * MNN_ECORRUPT. */
MNN_API int mnn_part_finish(const mnn_part_t *p, mnn_diag_t *d);
/* For a part in a file (head.in_file): reads ROOT/.parts/NAME (a regular
 * file, no link, of exactly the header's size), checks it (mnn_part_finish)
 * and then removes it.  0, or MNN_EIO (missing, unreadable), MNN_ECORRUPT
 * (another size, another hash: the file is kept), MNN_ENOMEM. */
MNN_API int mnn_part_load(mnn_part_t *p, const char *root, mnn_diag_t *d);
MNN_API void mnn_part_free(mnn_part_t *p);

/* ---- cuts as checkpoints (ckpt.c) -----------------------------------------
 * A cut is an ordinary checkpoint directory, named step-N-cID (the step of
 * the committing training, the cut), that also holds every upstream
 * stage's part as stage-I.PROGRAM and, when the cut fell inside a
 * minibatch, its records so far as pending.safetensors (x [n, input], y
 * [n], F32); manifest.yaml lists them in `files` like the others and says
 * `cut: {id: ID, stage: K, program: P, pending: n}` and `stages:` (index,
 * program, file, bytes, xxh3 of each upstream part). */

typedef struct {
    uint32_t index;                    /* 0 .. the committing stage's - 1 */
    char program[MNN_CUT_PROGRAM_MAX];
    const void *data;
    uint64_t bytes;
} mnn_stage_part_t;

typedef struct {
    uint64_t id;                  /* the cut (> 0) */
    uint32_t self;                /* the committing stage's index: parts has
                                   * stages 0 .. self - 1, in order */
    const char *self_program;
    const mnn_stage_part_t *parts;
    size_t pending;               /* records of a partly filled minibatch */
    const float *px, *py;         /* their features (pending x input) and labels */
} mnn_cut_ckpt_t;

/* step-N (cut 0) or step-N-cID, and back: 0 for a name written so (no
 * other spelling), -1 otherwise. */
MNN_API void mnn_ckpt_cut_name(char *buf, size_t size, uint64_t step, uint64_t cut);
MNN_API int mnn_ckpt_name_parse(const char *name, uint64_t *step, uint64_t *cut);

/* mnn_ckpt_write with a cut's parts and pending records (cut NULL: the
 * same as mnn_ckpt_write). */
MNN_API int mnn_ckpt_write_cut(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                               const mnn_train_state_t *st, const char *parent,
                               int64_t created, int replace, const mnn_cut_ckpt_t *cut,
                               mnn_diag_t *d);
/* The part of stage `index` of the cut checkpoint dir (a directory or a
 * root), which must be `program`'s: its bytes, checked against the
 * manifest, in *buf (free it) and *len, the cut's id in *cut.  A checkpoint
 * that is no cut, or whose stage `index` is another program's or missing, is
 * MNN_ESHAPE, d naming dir, the stage and what it holds. */
MNN_API int mnn_ckpt_stage_read(const char *dir, uint32_t index, const char *program,
                                char **buf, size_t *len, uint64_t *cut, mnn_diag_t *d);
/* mnn_ckpt_same for a cut: the same files, parts and pending records too. */
MNN_API int mnn_ckpt_same_cut(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                              const mnn_train_state_t *st, const mnn_cut_ckpt_t *cut,
                              mnn_diag_t *d);
/* The pending records of a cut (none: *n 0, *x and *y NULL), each nfeat
 * features; free *x and *y with mnn_free. */
MNN_API int mnn_ckpt_pending_read(const char *dir, size_t nfeat, float **x, float **y,
                                  size_t *n, mnn_diag_t *d);

/* ---- opening a checkpoint (ckpt-open.c) ----------------------------------- */

/* A checkpoint as a program was given it, opened by mnn_ckpt_open. */
typedef struct {
    char *src;          /* what was opened: the argument, "-" (stdin), or the
                         * archive that a received-into directory's latest
                         * names */
    char *dir;          /* the checkpoint directory (NULL for an archive
                         * opened with MNN_OPEN_NO_EXTRACT) */
    char *tmp;          /* the directory an archive was unpacked into,
                         * removed by mnn_ckpt_close; NULL when none */
    int archive;        /* 1 when src is an archive */
    int verified;       /* every file was checked against the manifest */
    int have_mf;        /* mf is valid */
    mnn_manifest_t mf;  /* the manifest (its seal checked) */
} mnn_ckpt_t;

enum {
    MNN_OPEN_VERIFY = 1,     /* hash every file of a directory now (an
                              * archive's are checked as it is unpacked) */
    MNN_OPEN_KEEP = 2,       /* unpack an archive into workdir itself (default
                              * "."), as workdir/NAME, kept after close */
    MNN_OPEN_NO_EXTRACT = 4  /* an archive is read and checked, not unpacked:
                              * dir is NULL */
};

/* Opens the checkpoint src names: a checkpoint directory, a root whose
 * `latest` link names one, a .tar.zst archive ("-": stdin) or a directory
 * without a manifest whose `latest` names an archive (what ckpt-ship
 * --receive writes).  An archive is unpacked into a new temporary directory
 * under workdir (NULL: $TMPDIR, else /tmp), removed by mnn_ckpt_close, with
 * every file checked against the manifest; a directory's manifest is read
 * and, with MNN_OPEN_VERIFY, every file hashed.  On success ck->dir is a
 * checkpoint directory; on failure ck is empty (mnn_ckpt_close is harmless)
 * and d says why, naming src. */
MNN_API int mnn_ckpt_open(mnn_ckpt_t *ck, const char *src, const char *workdir, unsigned flags,
                          mnn_diag_t *d);
/* What src names, without opening it (mnn_ckpt_open's first step): 1 an
 * archive, *path being the file to read ("-": stdin; for a received-into
 * directory, the archive its latest names), or 0 a directory (a checkpoint
 * or a root), *path a copy of src; or an error (src missing).  Free *path. */
MNN_API int mnn_ckpt_resolve(const char *src, char **path, mnn_diag_t *d);
/* Hashes every file of ck->dir against the manifest, unless already done. */
MNN_API int mnn_ckpt_verify(mnn_ckpt_t *ck, mnn_diag_t *d);
/* Frees ck and removes the temporary directory it unpacked into. */
MNN_API void mnn_ckpt_close(mnn_ckpt_t *ck);

/* ---- archives (archive.c): a checkpoint as one .tar.zst ------------------ */

typedef struct {
    int level;   /* zstd level 1..19; 0: the default (3) */
    int threads; /* zstd worker threads; 0: compress in the calling thread */
} mnn_pack_opts_t;

/* Packs the checkpoint directory dir (or dir/latest) into fd as tar + zstd.
 * Entries: NAME/ then NAME/manifest.yaml then every file the manifest lists,
 * in name order, where NAME is the checkpoint directory's base name.  Owner
 * 0:0 (root), modes 0755/0644, mtime the manifest's created time: the same
 * checkpoint always packs to the same bytes.  Each file's size is checked
 * against the manifest first and its hash as it is streamed; a mismatch
 * stops the archive short of its end, so no reader accepts it.
 * A signal that interrupts a read or write of fd (a handler installed
 * without SA_RESTART) stops pack and unpack with MNN_ECANCELED. */
MNN_API int mnn_ckpt_pack(const char *dir, int fd, const mnn_pack_opts_t *o,
                          mnn_diag_t *d);

/* Reads a checkpoint archive from fd (`name` is used in messages).  With
 * target NULL it verifies only.  Otherwise it extracts into target/NAME,
 * which must not exist yet, through a temporary sibling renamed into place
 * at the end: nothing is left behind on error.  It refuses absolute paths,
 * '..', links, devices and anything but regular files and NAME/, entries
 * outside NAME/, a first entry other than NAME/ or NAME/manifest.yaml,
 * entries the manifest does not name or names twice, entries larger than the
 * manifest says, and any size or XXH3 mismatch.  *out (may be NULL) receives
 * the path of the extracted checkpoint (free it); info (may be NULL) its
 * manifest (free with mnn_manifest_free). */
MNN_API int mnn_ckpt_unpack(int fd, const char *name, const char *target, char **out,
                            mnn_manifest_t *info, mnn_diag_t *d);

/* Calls fn for every entry: its path, size and type ('f' file, 'd'
 * directory, 'l' link, '?' other).  fn returns non-zero to stop. */
typedef int (*mnn_list_fn)(void *ctx, const char *path, uint64_t size, char type);
MNN_API int mnn_ckpt_list(int fd, const char *name, mnn_list_fn fn, void *ctx,
                          mnn_diag_t *d);

/* 1 if path is a regular file that starts like a zstd frame, else 0. */
MNN_API int mnn_ckpt_is_archive(const char *path);

/* Safetensors: a little-endian u64 header length, a JSON header, then the
 * tensors back to back.  Tensors are F32 (or F64) and contiguous. */
typedef struct {
    const char *name;
    int f64;            /* 0: F32, 1: F64 */
    size_t ndim;        /* 1 or 2 */
    size_t shape[2];
    const void *data;   /* little-endian on disk; native here (x86, arm LE) */
} mnn_st_tensor_t;

/* Writes tensors sorted by name, with the given metadata pairs (NULL
 * terminated, key/value alternating).  Returns 0 or an error with errno. */
MNN_API int mnn_st_write(FILE *f, const mnn_st_tensor_t *t, size_t n,
                         const char *const *meta);
/* mnn_st_write's length and header only (data unused): the caller writes
 * the tensors' bytes after it, sorted by name. */
MNN_API int mnn_st_write_header(FILE *f, const mnn_st_tensor_t *t, size_t n,
                                const char *const *meta);

typedef struct mnn_st_file mnn_st_file_t;
/* Reads and validates a whole safetensors file in memory. */
MNN_API int mnn_st_open(mnn_st_file_t **out, const char *path, mnn_diag_t *d);
/* Validates the safetensors bytes buf[0, len) (malloc'd: the file takes
 * them over, and frees them also on error); `name` is used in messages.
 * Headers over 16 MiB or of more than 65536 tensors: MNN_ELIMIT. */
MNN_API int mnn_st_parse(mnn_st_file_t **out, char *buf, size_t len, const char *name,
                         mnn_diag_t *d);
/* Finds a tensor; checks dtype and shape.  *data points into the file
 * buffer. Returns MNN_ESHAPE with a message on mismatch. */
MNN_API int mnn_st_get(const mnn_st_file_t *f, const char *name, int f64, size_t ndim,
                       const size_t *shape, const void **data, mnn_diag_t *d);
/* Metadata value or NULL. */
MNN_API const char *mnn_st_meta(const mnn_st_file_t *f, const char *key);
MNN_API void mnn_st_close(mnn_st_file_t *f);

/* A safetensors file read one tensor at a time, in file order, so that a
 * reader holds one tensor rather than the file (ckpt-merge).  Open checks
 * the size and the header as mnn_st_parse does; every byte is hashed as it
 * is read, and what was read is to be trusted only once mnn_st_stream_finish
 * returned 0: every tensor read, nothing after them, XXH3 as given. */
typedef struct mnn_st_stream mnn_st_stream_t;
typedef struct {
    const char *name;
    int f32, f64;        /* the dtype: F32, F64, or another (both 0) */
    size_t ndim;
    const size_t *shape; /* ndim sizes */
    uint64_t bytes;
} mnn_st_info_t;
/* path: a regular file (no link followed) of exactly `bytes` bytes whose
 * XXH3 should be xxh3 (16 hex digits: its manifest's).  0, or MNN_EIO,
 * MNN_ECORRUPT (another size), MNN_EFORMAT, MNN_ELIMIT, MNN_ENOMEM. */
MNN_API int mnn_st_stream_open(mnn_st_stream_t **out, const char *path, uint64_t bytes,
                               const char *xxh3, mnn_diag_t *d);
/* The tensors, and the i-th in file order (MNN_EINVAL past the last). */
MNN_API size_t mnn_st_stream_count(const mnn_st_stream_t *s);
MNN_API int mnn_st_stream_info(const mnn_st_stream_t *s, size_t i, mnn_st_info_t *info);
MNN_API const char *mnn_st_stream_meta(const mnn_st_stream_t *s, const char *key);
/* The next tensor's bytes into buf (its info's bytes long): 0, MNN_EOF (none
 * left), MNN_EIO, MNN_ECORRUPT (the file ended inside it). */
MNN_API int mnn_st_stream_read(mnn_st_stream_t *s, void *buf, mnn_diag_t *d);
/* The next at most max bytes of the tensor under way (the next one when
 * the last was read whole), *got of them: a tensor read in parts, so that
 * a reader holds max bytes of it.  Errors as mnn_st_stream_read. */
MNN_API int mnn_st_stream_read_part(mnn_st_stream_t *s, void *buf, size_t max, size_t *got,
                                    mnn_diag_t *d);
/* 0 when every tensor was read and the file's hash is the one given;
 * MNN_EINVAL (tensors left), MNN_ECORRUPT (another hash, the file grew),
 * MNN_EIO. */
MNN_API int mnn_st_stream_finish(mnn_st_stream_t *s, mnn_diag_t *d);
MNN_API void mnn_st_stream_close(mnn_st_stream_t *s);

/* Checks every weight, optimizer moment and normalization statistic (o may
 * be NULL): MNN_ECORRUPT naming the first that is not finite, or a second
 * moment or variance that is negative. */
MNN_API int mnn_state_check(const mnn_model_t *m, const mnn_optim_t *o, mnn_diag_t *d);
/* Parses state.yaml's text; `name` is used in messages. */
MNN_API int mnn_state_parse(mnn_train_state_t *st, const char *text, size_t len,
                            const char *name, mnn_diag_t *d);

/* ---- hashing (hash.c): XXH3-64, the hash of every manifest and transfer -- */

typedef struct mnn_hash mnn_hash_t;
/* A new streaming hash, reset; NULL when out of memory. */
MNN_API mnn_hash_t *mnn_hash_new(void);
MNN_API void mnn_hash_reset(mnn_hash_t *h);
MNN_API void mnn_hash_update(mnn_hash_t *h, const void *p, size_t n);
/* The hash of everything given since the last reset (h goes on). */
MNN_API uint64_t mnn_hash_digest(const mnn_hash_t *h);
MNN_API void mnn_hash_free(mnn_hash_t *h);
/* The hash of n bytes at p, at once. */
MNN_API uint64_t mnn_hash64(const void *p, size_t n);
/* v as the 16 lowercase hex digits manifests and protocols write. */
MNN_API void mnn_hash_hex(uint64_t v, char hex[17]);
/* XXH3-64 of a whole file, or of fd read from where it is to its end, as
 * 16 hex digits; *bytes receives the length. */
MNN_API int mnn_hash_file(const char *path, char hex[17], uint64_t *bytes);
MNN_API int mnn_hash_fd(int fd, char hex[17], uint64_t *bytes);

#ifdef __cplusplus
}
#endif
#endif /* MINI_NN_H */
