/* ckpt-merge - merge checkpoints of one model into one checkpoint: a
 * federated round (FedAvg, weighted by the records each learned since
 * their common base), or a coordinate-wise median or trimmed mean that a
 * bad node cannot drag away.  The inputs are read one tensor at a time,
 * every byte checked against its manifest's hash before the output is
 * committed. */
#include <config.h>

#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static noreturn void help(void)
{
    printf(
        "Usage: %s [OPTION]... -o DIR CKPT...\n"
        "Merge checkpoints of one model (directories, roots with `latest`, .tar.zst\n"
        "archives, or directories ckpt-ship received into) into the new checkpoint\n"
        "DIR: round R + 1 of a federation whose inputs started from round R.\n"
        "\n"
        "  -o, --output DIR       the merged checkpoint (must not exist)\n"
        "      --mode M           fedavg (default): the mean weighted by the records\n"
        "                         each learned since its base; median; trimmed-mean\n"
        "      --trim F           trimmed-mean: drop the share F of the values at\n"
        "                         each end (0 <= F < 0.5; default 0.2)\n"
        "      --weights W,...    fedavg: these weights, one per CKPT, in order\n"
        "      --any-parent       merge checkpoints that started from other bases\n"
        "      --base CKPT        the round the inputs started from (checked against\n"
        "                         their manifests; needed by the server's options)\n"
        "      --server-lr X      FedOpt: the round is BASE + X * (the merge - BASE)\n"
        "                         (default 1: the merge itself)\n"
        "      --server-momentum B  FedOpt with momentum: m = B * m + (merge - BASE),\n"
        "                         the round BASE + X * m; m kept in the merged\n"
        "                         checkpoint's server.safetensors (0 <= B < 1)\n"
        "      --staleness A      asynchronous rounds: inputs that started from older\n"
        "                         rounds are merged, weighed down by (1 + s)^-A, s the\n"
        "                         rounds they are behind (fedavg)\n"
        "      --from DIR         merge every checkpoint that arrived in DIR too: its\n"
        "                         .tar.zst archives and checkpoint directories (not\n"
        "                         hidden names, partial files or links)\n"
        "  -q, --quiet            no notes on stderr\n"
        "  -v, --verbose          each input's records and weight\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Every weight and optimizer moment is merged the same way (--server-lr and\n"
        "--server-momentum then move the weights from the base's).  The inputs must\n"
        "share the architecture, the shapes and dtypes; the output takes the other\n"
        "settings of the first input in a fixed order, so that the same inputs in\n"
        "any order give the same bytes.\n"
        "Exit status: 0 success, 1 data or runtime error (an input refused: nothing\n"
        "is written), 2 usage error.\n"
        "See ckpt-merge(1).\n",
        prog);
    out_close();
    exit(EXIT_OK);
}

/* One input. */
typedef struct {
    const char *arg;
    char source[PATH_MAX];              /* its real path, for the lineage */
    mnn_ckpt_t *ck;
    const mnn_manifest_file_t *file[2]; /* model.safetensors, optimizer.safetensors */
    mnn_st_stream_t *st[2];
    uint64_t learned;                   /* records since its base */
    uint32_t behind;                    /* rounds its base is behind the merge's */
    double weight;
} input_t;

/* The server's momentum of one tensor (--server-momentum): what the base
 * kept in its server.safetensors, updated by this round. */
typedef struct {
    char name[64];
    size_t n;
    float *v;
    int used;
} moment_t;

typedef struct {
    input_t *in;
    size_t k;
    mnn_merge_t how;
    double *w;
    uint64_t step;
    /* FedOpt (--server-lr, --server-momentum): the round's weights are
     * base + lr * m, m = momentum * m_base + (merge - base); base: the
     * base's model and optimizer files, NULL when the merge is plain */
    double server_lr, server_mom;
    mnn_st_stream_t *base[2];
    const char *base_arg;
    moment_t *mom;
    size_t nmom, capmom;
} merge_t;

static const char *const files[2] = {"model.safetensors", "optimizer.safetensors"};

/* Tensors are merged in parts of at most this many bytes: the memory of a
 * merge is (inputs + 1) parts, whatever the model */
#define PART_BYTES ((size_t)4 << 20)

/* The same network: layers, activations, exits, input handling, loss and
 * the optimizer's kind (its moments); NULL, or what differs. */
static const char *other_architecture(const mnn_spec_t *a, const mnn_spec_t *b)
{
    if (a->input != b->input || a->outputs != b->outputs || a->loss != b->loss)
        return "the inputs, outputs or loss";
    if (a->nlayers != b->nlayers)
        return "the number of layers";
    for (size_t i = 0; i < a->nlayers; i++)
        if (a->layers[i].units != b->layers[i].units ||
            a->layers[i].act != b->layers[i].act)
            return "a layer's units or activation";
    if (a->nexits != b->nexits)
        return "the early exits";
    for (size_t i = 0; i < a->nexits; i++)
        if (a->exits[i] != b->exits[i])
            return "the early exits";
    if (a->input_scale != b->input_scale || a->normalize != b->normalize)
        return "input_scale or normalize";
    if (a->opt.type != b->opt.type || (a->opt.average > 0) != (b->opt.average > 0) ||
        (a->opt.prox > 0) != (b->opt.prox > 0))
        return "the optimizer (its moments)";
    return NULL;
}

/* The fixed order: by the model's hash, then the optimizer's, then the
 * weight; the same inputs given in any order are merged in this one. */
static int cmp_inputs(const void *pa, const void *pb)
{
    const input_t *a = pa, *b = pb;
    for (int f = 0; f < 2; f++) {
        int c = strcmp(a->file[f]->xxh3, b->file[f]->xxh3);
        if (c)
            return c;
    }
    if (a->weight != b->weight)
        return a->weight < b->weight ? -1 : 1;
    int c = strcmp(a->ck->mf.xxh3, b->ck->mf.xxh3);
    return c ? c : strcmp(a->source, b->source);
}

/* 1 if s is valid UTF-8 (what a manifest, YAML, must be). */
static int utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 && *p >= 0xc2 ? 1
              : (*p & 0xf0) == 0xe0 ? 2 : (*p & 0xf8) == 0xf0 && *p <= 0xf4 ? 3 : -1;
        if (n < 0)
            return 0;
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xc0) != 0x80)
                return 0;
    }
    return 1;
}

/* The input's state.yaml, checked against its manifest's hash and
 * counters (what the weights come from must agree with what was learned). */
static void input_state(const input_t *p, mnn_train_state_t *st)
{
    mnn_diag_t d = {""};
    if (mnn_ckpt_load_state(p->ck->dir, &p->ck->mf, st, &d) < 0)
        die(EXIT_RUNTIME, "%s: %s", p->arg, d.msg);
}

static void add_u64(uint64_t *sum, uint64_t v, const char *what, const char *arg)
{
    if (__builtin_add_overflow(*sum, v, sum))
        die(EXIT_RUNTIME, "%s: its %s overflow the sum of the inputs'", arg, what);
}

/* The stream of the file name of checkpoint ck (given as arg), every byte
 * to be checked against the size and hash its manifest lists (*listed, if
 * not NULL, receives that entry); NULL when the manifest lists none and
 * optional, an error when it is not. */
static mnn_st_stream_t *open_listed(const mnn_ckpt_t *ck, const char *arg, const char *name,
                                    int optional, const mnn_manifest_file_t **listed)
{
    const mnn_manifest_file_t *f = mnn_manifest_find(&ck->mf, name);
    if (listed)
        *listed = f;
    if (!f) {
        if (optional)
            return NULL;
        die(EXIT_RUNTIME, "%s: its manifest lists no %s", arg, name);
    }
    char path[PATH_MAX];
    mnn_diag_t d = {""};
    mnn_st_stream_t *st;
    if (snprintf(path, sizeof path, "%s/%s", ck->dir, f->name) >= (int)sizeof path)
        die(EXIT_RUNTIME, "%s: path too long", arg);
    if (mnn_st_stream_open(&st, path, f->bytes, f->xxh3, &d) < 0)
        die(EXIT_RUNTIME, "%s: %s", arg, d.msg);
    return st;
}

/* The tensors the server's update moves: the weights (model.safetensors)
 * and the raw weights an averaging optimizer keeps (suffix .param); the
 * moments of the nodes' optimizer are merged as they are. */
static int server_moves(int fi, const char *name)
{
    size_t n = strlen(name);
    return fi == 0 || (n > 6 && !strcmp(name + n - 6, ".param"));
}

/* The momentum of tensor name (n floats): the base's, or a new one at 0. */
static moment_t *moment(merge_t *mg, const char *name, size_t n)
{
    for (size_t i = 0; i < mg->nmom; i++)
        if (!strcmp(mg->mom[i].name, name)) {
            mg->mom[i].used++;
            return mg->mom[i].n == n && mg->mom[i].used == 1 ? &mg->mom[i] : NULL;
        }
    if (mg->nmom == mg->capmom) {
        size_t cap = mg->capmom ? 2 * mg->capmom : 16;
        moment_t *m = realloc(mg->mom, cap * sizeof *m);
        if (!m)
            die(EXIT_RUNTIME, "out of memory");
        mg->mom = m;
        mg->capmom = cap;
    }
    moment_t *m = &mg->mom[mg->nmom];
    if (strlen(name) >= sizeof m->name || !(m->v = calloc(n ? n : 1, sizeof(float))))
        die(EXIT_RUNTIME, "out of memory");
    strcpy(m->name, name);
    m->n = n;
    m->used = 1;
    mg->nmom++;
    return m;
}

/* The server's momentum kept by the base (its server.safetensors), checked
 * against its manifest's hash. */
static void load_moments(merge_t *mg, const mnn_ckpt_t *base)
{
    mnn_st_stream_t *st = open_listed(base, mg->base_arg, MNN_SERVER_FILE, 1, NULL);
    if (!st)
        return; /* a base without momentum: it starts at 0 */
    mnn_diag_t d = {""};
    for (size_t i = 0; i < mnn_st_stream_count(st); i++) {
        mnn_st_info_t a;
        mnn_st_stream_info(st, i, &a);
        if (!a.f32 || a.bytes % 4)
            die(EXIT_RUNTIME, "%s: %s: tensor '%s' is not F32", mg->base_arg, MNN_SERVER_FILE,
                a.name);
        moment_t *m = moment(mg, a.name, (size_t)(a.bytes / 4));
        if (!m)
            die(EXIT_RUNTIME, "%s: %s: tensor '%s' twice", mg->base_arg, MNN_SERVER_FILE,
                a.name);
        m->used = 0; /* until the merge meets its tensor */
        if (mnn_st_stream_read(st, m->v, &d) < 0)
            die(EXIT_RUNTIME, "%s", d.msg);
    }
    if (mnn_st_stream_finish(st, &d) < 0)
        die(EXIT_RUNTIME, "%s: %s", mg->base_arg, d.msg);
    mnn_st_stream_close(st);
}

/* r (the merge of n values) becomes the server's step from the base's b:
 * m = momentum * m + (r - b), r = b + lr * m, in double, rounded once
 * (m NULL: no momentum);
 * the index of a value that is not finite, or n. */
static size_t server_step(const merge_t *mg, float *r, const float *b, float *m, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        const double mj = (m ? mg->server_mom * (double)m[j] : 0) + ((double)r[j] - (double)b[j]);
        const double w = (double)b[j] + mg->server_lr * mj;
        if (!isfinite((float)mj) || !isfinite((float)w))
            return j;
        if (m)
            m[j] = (float)mj;
        r[j] = (float)w;
    }
    return n;
}

/* Reads the base's tensors *pos .. upto - 1 (through buf, part bytes at a
 * time): what the hash covers but the server's step does not use. */
static int pass_base(const merge_t *mg, mnn_st_stream_t *bs, size_t upto, size_t *pos,
                     void *buf, size_t part)
{
    mnn_diag_t d = {""};
    for (; *pos < upto; (*pos)++) {
        mnn_st_info_t c;
        mnn_st_stream_info(bs, *pos, &c);
        uint64_t at = 0;
        do { /* a tensor of no bytes too: the reader passes it */
            const size_t want = c.bytes - at < part ? (size_t)(c.bytes - at) : part;
            size_t got;
            int rc = mnn_st_stream_read_part(bs, buf, want, &got, &d);
            if (rc < 0 || got != want) {
                warnx_("%s: %s", mg->base_arg,
                       rc < 0 ? d.msg : "a tensor shorter than its header says");
                return rc < 0 ? rc : MNN_ECORRUPT;
            }
            at += want;
        } while (at < c.bytes);
    }
    return 0;
}

/* Writes the merge of file f (0 model, 1 optimizer) of every input into
 * out: the header of the first, then tensor by tensor.  0, or an error
 * (message printed). */
static int merge_file(FILE *out, merge_t *mg, int fi)
{
    mnn_diag_t d = {""};
    const size_t K = mg->k;
    mnn_st_stream_t *s0 = mg->in[0].st[fi];
    const size_t n = mnn_st_stream_count(s0);
    mnn_st_tensor_t *t = calloc(n ? n : 1, sizeof *t);
    float **x = calloc(K, sizeof *x), *r = NULL, *bx = NULL;
    mnn_st_stream_t *bs = mg->base[fi];
    size_t *bidx = calloc(n ? n : 1, sizeof *bidx), cur = 0, bpos = 0;
    int rc = t && x && bidx ? 0 : MNN_ENOMEM;
    uint64_t most = 0;
    /* every input's tensors: the same names, dtypes and shapes, in the
     * order of their names (as mini-nn writes them) */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        mnn_st_info_t a;
        mnn_st_stream_info(s0, i, &a);
        if (!a.f32 || a.ndim < 1 || a.ndim > 2 ||
            (i && strcmp(t[i - 1].name, a.name) >= 0)) {
            warnx_("%s: %s: tensor '%s' is not an F32 matrix or vector in name order, as "
                   "mini-nn writes them", mg->in[0].arg, files[fi], a.name);
            rc = MNN_EFORMAT;
            break;
        }
        t[i] = (mnn_st_tensor_t){a.name, 0, a.ndim, {a.shape[0], a.ndim > 1 ? a.shape[1] : 0},
                                 NULL};
        if (a.bytes > most)
            most = a.bytes;
        for (size_t k = 1; k < K; k++) {
            mnn_st_info_t b;
            if (mnn_st_stream_count(mg->in[k].st[fi]) != n ||
                mnn_st_stream_info(mg->in[k].st[fi], i, &b) < 0 || strcmp(a.name, b.name) ||
                !b.f32 || b.ndim != a.ndim || b.shape[0] != a.shape[0] ||
                (a.ndim > 1 && b.shape[1] != a.shape[1])) {
                warnx_("%s: %s: its tensors are not those of %s (tensor '%s': another name, "
                       "dtype or shape)", mg->in[k].arg, files[fi], mg->in[0].arg, a.name);
                rc = MNN_ESHAPE;
                break;
            }
        }
        /* the base's tensor of each that the server's step moves, found by
         * name (both in name order; its others, a prox anchor, are passed) */
        mnn_st_info_t c;
        if (rc == 0 && bs && server_moves(fi, a.name)) {
            while (cur < mnn_st_stream_count(bs) && mnn_st_stream_info(bs, cur, &c) == 0 &&
                   strcmp(c.name, a.name) < 0)
                cur++;
            if (cur == mnn_st_stream_count(bs) || strcmp(c.name, a.name) || !c.f32 ||
                c.ndim != a.ndim || c.bytes != a.bytes) {
                warnx_("%s: %s: no tensor '%s' of the shape of %s's", mg->base_arg, files[fi],
                       a.name, mg->in[0].arg);
                rc = MNN_ESHAPE;
            }
            bidx[i] = cur++;
        }
    }
    const size_t part = most < PART_BYTES ? (most ? (size_t)most : 4) : PART_BYTES;
    for (size_t k = 0; rc == 0 && k < K; k++)
        if (!(x[k] = malloc(part)))
            rc = MNN_ENOMEM;
    if (rc == 0 && (!(r = malloc(part)) || (bs && !(bx = malloc(part)))))
        rc = MNN_ENOMEM;
    if (rc == MNN_ENOMEM)
        warnx_("out of memory for %zu buffers of %zu bytes", K + 2, part);
    char step[32];
    snprintf(step, sizeof step, "%" PRIu64, mg->step);
    const char *opt = mnn_st_stream_meta(s0, "optimizer");
    const char *meta_m[] = {"format", "pt", NULL};
    const char *meta_o[] = {"format", "pt", "optimizer", opt ? opt : "sgd", "step", step, NULL};
    if (rc == 0 && (rc = mnn_st_write_header(out, t, n, fi ? meta_o : meta_m)) < 0)
        warnx_("%s: %s", files[fi], strerror(errno));
    for (size_t i = 0; rc == 0 && i < n; i++) {
        mnn_st_info_t a;
        mnn_st_stream_info(s0, i, &a);
        const int moves = bs && server_moves(fi, a.name), keep = moves && mg->server_mom > 0;
        moment_t *m = keep ? moment(mg, a.name, a.bytes / 4) : NULL;
        if (keep && !m) {
            warnx_("%s: server.safetensors: tensor '%s' is not the shape of the model's",
                   mg->base_arg, a.name);
            rc = MNN_ESHAPE;
            break;
        }
        /* the base's tensors before the one this moves: read (hashed), passed */
        if (moves && (rc = pass_base(mg, bs, bidx[i], &bpos, bx, part)) < 0)
            break;
        /* part by part (a tensor of no bytes too: the readers pass it) */
        uint64_t at = 0;
        do {
            const size_t want = a.bytes - at < part ? (size_t)(a.bytes - at) : part;
            for (size_t k = 0; rc == 0 && k < K; k++) {
                size_t got;
                if ((rc = mnn_st_stream_read_part(mg->in[k].st[fi], x[k], want, &got, &d)) < 0)
                    warnx_("%s", d.msg);
                else if (got != want) /* the tensors' sizes were checked alike */
                    rc = MNN_ESHAPE;
            }
            size_t got;
            if (rc == 0 && moves && (rc = mnn_st_stream_read_part(bs, bx, want, &got, &d)) < 0)
                warnx_("%s", d.msg);
            else if (rc == 0 && moves && got != want)
                rc = MNN_ESHAPE;
            mnn_merge_bad_t bad = {0, 0};
            if (rc == 0 && (rc = mnn_merge_tensor(&mg->how, (const float *const *)x, mg->w, K,
                                                  want / sizeof(float), r, &bad, &d)) < 0)
                warnx_("%s: %s: tensor '%s', value %" PRIu64 " is not finite: not merged",
                       mg->in[bad.input].arg, files[fi], a.name,
                       at / sizeof(float) + (uint64_t)bad.at);
            const size_t nf = want / sizeof(float);
            size_t j;
            if (rc == 0 && moves &&
                (j = server_step(mg, r, bx, m ? m->v + at / sizeof(float) : NULL, nf)) < nf) {
                warnx_("%s: tensor '%s', value %" PRIu64 ": the server's step (--server-lr %g, "
                       "--server-momentum %g) is not finite: not merged", files[fi], a.name,
                       at / sizeof(float) + (uint64_t)j, mg->server_lr, mg->server_mom);
                rc = MNN_EINVAL;
            }
            if (rc == 0 && want && fwrite(r, 1, want, out) != want) {
                rc = MNN_EIO;
                warnx_("%s: %s", files[fi], strerror(errno));
            }
            at += want;
        } while (rc == 0 && at < a.bytes);
        bpos += moves;
    }
    if (rc == 0 && bs)
        rc = pass_base(mg, bs, mnn_st_stream_count(bs), &bpos, bx, part);
    /* trusted only now: every byte read matched its manifest's hash */
    for (size_t k = 0; rc == 0 && k < K; k++)
        if ((rc = mnn_st_stream_finish(mg->in[k].st[fi], &d)) < 0)
            warnx_("%s: %s", mg->in[k].arg, d.msg);
    if (rc == 0 && bs && (rc = mnn_st_stream_finish(bs, &d)) < 0)
        warnx_("%s: %s", mg->base_arg, d.msg);
    for (size_t k = 0; x && k < K; k++)
        free(x[k]);
    free(x);
    free(r);
    free(bx);
    free(bidx);
    free(t);
    return rc;
}

static int write_model(FILE *f, void *ctx) { return merge_file(f, ctx, 0); }
static int write_optim(FILE *f, void *ctx) { return merge_file(f, ctx, 1); }

/* server.safetensors: the server's momentum of every tensor it moves. */
static int write_server(FILE *f, void *ctx)
{
    const merge_t *mg = ctx;
    for (size_t i = 0; i < mg->nmom; i++)
        if (!mg->mom[i].used) {
            warnx_("%s: server.safetensors: tensor '%s' is none of the model's", mg->base_arg,
                   mg->mom[i].name);
            return MNN_ESHAPE;
        }
    mnn_st_tensor_t *t = calloc(mg->nmom ? mg->nmom : 1, sizeof *t);
    if (!t)
        return MNN_ENOMEM;
    for (size_t i = 0; i < mg->nmom; i++)
        t[i] = (mnn_st_tensor_t){mg->mom[i].name, 0, 1, {mg->mom[i].n, 0}, mg->mom[i].v};
    char lr[32], mom[32];
    snprintf(lr, sizeof lr, "%.17g", mg->server_lr);
    snprintf(mom, sizeof mom, "%.17g", mg->server_mom);
    const char *meta[] = {"format", "pt", "server_lr", lr, "server_momentum", mom, NULL};
    int rc = mnn_st_write(f, t, mg->nmom, meta);
    free(t);
    return rc;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* "a/b", malloc'd. */
static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (!p)
        die(EXIT_RUNTIME, "out of memory");
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* What arrived in dir (--from): the paths of its checkpoint archives and
 * checkpoint directories, in name order, after the n already in args (at
 * most max in all); hidden names (a receiver's partial file, a writer's
 * temporary directory) and links (`latest`, or one out of the directory)
 * are passed over.  The new count. */
static size_t arrivals(const char *dir, char **args, size_t n, size_t max, int quiet)
{
    struct dirent **e;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int k = fd < 0 ? -1 : scandir(dir, &e, NULL, by_name);
    if (k < 0)
        die(EXIT_RUNTIME, "--from %s: %s", dir, strerror(errno));
    for (int i = 0; i < k; i++) {
        const char *name = e[i]->d_name;
        const size_t len = strlen(name);
        struct stat sb, mb;
        int take = 0;
        if (name[0] != '.' && fstatat(fd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
            if (S_ISREG(sb.st_mode))
                take = len > 8 && !strcmp(name + len - 8, ".tar.zst");
            else if (S_ISDIR(sb.st_mode)) {
                char *man = join(name, "manifest.yaml");
                take = fstatat(fd, man, &mb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(mb.st_mode);
                free(man);
            } else if (S_ISLNK(sb.st_mode) && strcmp(name, "latest") && !quiet)
                warnx_("--from %s: %s is a link: not followed", dir, name);
        }
        if (take) {
            if (n == max)
                die(EXIT_RUNTIME, "--from %s: more than %zu checkpoints to merge", dir, max);
            args[n++] = join(dir, name);
        }
        free(e[i]);
    }
    free(e);
    close(fd);
    return n;
}

/* Parses "W,W,..." into w (at most max): the count. */
static size_t parse_weights(const char *s, double *w, size_t max)
{
    size_t n = 0;
    char *copy = strdup(s);
    if (!copy)
        die(EXIT_RUNTIME, "out of memory");
    for (char *p = copy, *next; p; p = next) {
        if ((next = strchr(p, ',')))
            *next++ = 0;
        if (!*p)
            usage_error("--weights: an empty weight in '%s'", s);
        if (n == max)
            usage_error("--weights: more than %zu", max);
        if (opt_number(p, &w[n]) < 0)
            usage_error("--weights: '%s' is not a number", p);
        n++;
    }
    free(copy);
    if (!n)
        usage_error("--weights: no weight given");
    return n;
}

int main(int argc, char **argv)
{
    enum { O_MODE = 256, O_TRIM, O_WEIGHTS, O_ANY, O_BASE, O_SLR, O_SMOM, O_STALE, O_FROM };
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        {"mode", required_argument, NULL, O_MODE},
        {"trim", required_argument, NULL, O_TRIM},
        {"weights", required_argument, NULL, O_WEIGHTS},
        {"any-parent", no_argument, NULL, O_ANY},
        {"base", required_argument, NULL, O_BASE},
        {"server-lr", required_argument, NULL, O_SLR},
        {"server-momentum", required_argument, NULL, O_SMOM},
        {"staleness", required_argument, NULL, O_STALE},
        {"from", required_argument, NULL, O_FROM},
        CLI_COMMON_LONGOPTS};
    const char *output = NULL;
    static double given[MNN_MERGE_MAX];
    size_t ngiven = 0;
    int quiet = 0, verbose = 0, any_parent = 0, trim_given = 0, c;
    merge_t mg = {.how = {MNN_MERGE_FEDAVG, 0.2}, .server_lr = 1};
    double stale = -1; /* --staleness; < 0: not given */
    const char *from = NULL;

    cli_init("ckpt-merge");
    out_setup();
    while ((c = getopt_long(argc, argv, "o:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': output = optarg; break;
        case O_MODE:
            if (mnn_merge_parse(optarg, &mg.how.mode) < 0)
                usage_error("--mode %s: fedavg, median or trimmed-mean", optarg);
            break;
        case O_TRIM:
            if (opt_number(optarg, &mg.how.trim) < 0)
                usage_error("--trim: '%s' is not a number", optarg);
            trim_given = 1;
            break;
        case O_WEIGHTS: ngiven = parse_weights(optarg, given, MNN_MERGE_MAX); break;
        case O_ANY: any_parent = 1; break;
        case O_BASE: mg.base_arg = optarg; break;
        case O_SLR:
            if (opt_number(optarg, &mg.server_lr) < 0 || !(mg.server_lr > 0) ||
                !isfinite(mg.server_lr))
                usage_error("--server-lr: '%s' is not a finite number > 0", optarg);
            break;
        case O_SMOM:
            if (opt_number(optarg, &mg.server_mom) < 0 || !(mg.server_mom >= 0 &&
                                                            mg.server_mom < 1))
                usage_error("--server-momentum: '%s' is not a number in [0, 1)", optarg);
            break;
        case O_FROM: from = optarg; break;
        case O_STALE:
            if (opt_number(optarg, &stale) < 0 || !(stale >= 0) || !isfinite(stale))
                usage_error("--staleness: '%s' is not a finite number >= 0", optarg);
            break;
        default: cli_common(c, &quiet, &verbose, help);
        }
    }
    if (!output)
        usage_error("-o DIR is required (the merged checkpoint)");
    if (!*output)
        usage_error("-o: empty directory name");
    if (argc - optind < 1 && !from)
        usage_error("at least one checkpoint to merge is required (or --from DIR)");
    if (argc - optind > MNN_MERGE_MAX)
        usage_error("%d checkpoints: at most %d", argc - optind, MNN_MERGE_MAX);
    if (from && ngiven)
        usage_error("--weights and --from: the weights would not know their checkpoints");
    /* the inputs: those named, then what arrived in --from */
    static char *args[MNN_MERGE_MAX];
    size_t K = 0;
    for (int i = optind; i < argc; i++)
        args[K++] = argv[i];
    if (from && (K = arrivals(from, args, K, MNN_MERGE_MAX, quiet)) == 0)
        die(EXIT_RUNTIME, "--from %s: no checkpoint arrived there: nothing to merge", from);
    if (trim_given && mg.how.mode != MNN_MERGE_TRIMMED)
        usage_error("--trim is for --mode trimmed-mean");
    if (ngiven && mg.how.mode != MNN_MERGE_FEDAVG)
        usage_error("--weights is for --mode fedavg");
    if (ngiven && ngiven != K)
        usage_error("--weights: %zu weights for %zu checkpoints", ngiven, K);
    const int server = mg.server_lr != 1 || mg.server_mom > 0;
    if (server && !mg.base_arg)
        usage_error("--server-lr and --server-momentum need --base CKPT (the round the inputs "
                    "started from)");
    if (stale >= 0 && mg.how.mode != MNN_MERGE_FEDAVG)
        usage_error("--staleness is for --mode fedavg (it weighs the inputs)");
    if (mg.base_arg && !strcmp(mg.base_arg, "-"))
        usage_error("--base -: give the checkpoint as a file or a directory");
    mnn_diag_t d = {""};
    if (mnn_merge_check(&mg.how, ngiven ? given : NULL, K, &d) < 0)
        usage_error("%s", d.msg);
    for (size_t i = 0; i < K; i++)
        if (!strcmp(args[i], "-"))
            usage_error("-: give each checkpoint as a file or a directory");

    input_t *in = calloc(K, sizeof *in);
    mg.w = calloc(K, sizeof *mg.w);
    mnn_merged_t *merged = calloc(K, sizeof *merged);
    if (!in || !mg.w || !merged)
        die(EXIT_RUNTIME, "out of memory");
    uint32_t round = 0;
    uint64_t base_records = 0, base_step = 0, learned = 0, steps = 0;
    for (size_t k = 0; k < K; k++) {
        input_t *p = &in[k];
        p->arg = args[k];
        p->ck = cli_ckpt_open(p->arg, NULL, 0);
        const mnn_manifest_t *mf = &p->ck->mf;
        if (!realpath(p->arg, p->source))
            snprintf(p->source, sizeof p->source, "%s", p->arg);
        if (!utf8(p->source))
            die(EXIT_RUNTIME, "%s: its name is not UTF-8, which the manifest's lineage must be",
                p->arg);
        mnn_train_state_t pst;
        input_state(p, &pst);
        if (mf->base.round == UINT32_MAX)
            die(EXIT_RUNTIME, "%s: round %" PRIu32 " is the last there can be", p->arg,
                mf->base.round);
        if (mf->cut && !quiet)
            warnx_("%s: a pipeline's cut: only its model is merged (the stages' parts are "
                   "not)", p->arg);
        const char *why = k ? other_architecture(&in[0].ck->mf.spec, &mf->spec) : NULL;
        if (why)
            die(EXIT_RUNTIME, "%s: another architecture than %s (%s)", p->arg, in[0].arg, why);
        if (mf->spec.normalize == MNN_NORM_RUNNING)
            die(EXIT_RUNTIME, "%s: normalize: running is not merged (its statistics are no "
                "mean of the nodes')", p->arg);
        for (int f = 0; f < 2; f++)
            p->st[f] = open_listed(p->ck, p->arg, files[f], 0, &p->file[f]);
        /* the optimizer's step (the learning rate's schedule) is the manifest's */
        const char *ostep = mnn_st_stream_meta(p->st[1], "step");
        char want[32];
        snprintf(want, sizeof want, "%" PRIu64, mf->step);
        if (!ostep || strcmp(ostep, want))
            die(EXIT_RUNTIME, "%s: optimizer.safetensors says step %s, its manifest %s", p->arg,
                ostep ? ostep : "none", want);
        p->learned = mf->records_seen - mf->base.records_seen;
        p->weight = ngiven ? given[k] : (double)p->learned;
        if (mf->base.round > round)
            round = mf->base.round;
        if (mf->base.records_seen > base_records)
            base_records = mf->base.records_seen;
        if (mf->base.step > base_step)
            base_step = mf->base.step;
        add_u64(&learned, p->learned, "records", p->arg);
        add_u64(&steps, mf->step - mf->base.step, "steps", p->arg);
    }
    /* the round the merge follows: --base's, else the newest the inputs
     * started from; the base every input must have started from */
    mnn_ckpt_t *bck = NULL;
    const char *ref = NULL, *ref_arg = NULL;
    if (mg.base_arg) {
        bck = cli_ckpt_open(mg.base_arg, NULL, 0);
        /* the same network; a prox anchor in the inputs' optimizers or not
         * (a round's nodes may train with sgd-train --prox, the round not) */
        mnn_spec_t bspec = bck->mf.spec;
        bspec.opt.prox = in[0].ck->mf.spec.opt.prox;
        const char *why = other_architecture(&in[0].ck->mf.spec, &bspec);
        if (why)
            die(EXIT_RUNTIME, "%s: another architecture than %s (%s)", mg.base_arg, in[0].arg,
                why);
        if (!bck->mf.round)
            die(EXIT_RUNTIME, "%s: not a round (a checkpoint ckpt-merge wrote): no base of a "
                "federation", mg.base_arg);
        round = bck->mf.round;
        base_records = bck->mf.records_seen;
        base_step = bck->mf.step;
        ref = bck->mf.xxh3;
        ref_arg = mg.base_arg;
    } else {
        for (size_t k = 0; k < K && !ref; k++)
            if (in[k].ck->mf.base.round == round) {
                ref = in[k].ck->mf.base.xxh3;
                ref_arg = in[k].arg;
            }
    }
    if (round == UINT32_MAX)
        die(EXIT_RUNTIME, "%s: round %" PRIu32 " is the last there can be", ref_arg, round);
    for (size_t k = 0; k < K; k++) {
        input_t *p = &in[k];
        const mnn_base_t *b = &p->ck->mf.base;
        for (size_t i = 0; bck && i < bck->mf.nmerged; i++)
            if (!strcmp(bck->mf.merged_xxh3[i], p->ck->mf.xxh3))
                die(EXIT_RUNTIME, "%s: already merged into %s (round %" PRIu32 ")", p->arg,
                    mg.base_arg, round);
        if (b->round > round)
            die(EXIT_RUNTIME, "%s: started from round %" PRIu32 ", after %s (round %" PRIu32
                ")", p->arg, b->round, mg.base_arg, round);
        uint32_t behind = 0;
        if (strcmp(b->xxh3, ref)) {
            /* an older round of the federation, not a training from none */
            if ((stale >= 0 && b->round && b->round < round) || any_parent) {
                behind = round - b->round;
            } else {
                char mine[64] = "none", theirs[64] = "none";
                if (b->round)
                    snprintf(mine, sizeof mine, "round %" PRIu32 ", %s", b->round, b->xxh3);
                if (round)
                    snprintf(theirs, sizeof theirs, "round %" PRIu32 ", %s", round, ref);
                die(EXIT_RUNTIME, "%s: started from another base than %s (%s against %s); %s",
                    p->arg, ref_arg, mine, theirs, b->round && b->round < round
                    ? "--staleness merges older rounds, --any-parent any"
                    : "--any-parent merges them anyway");
            }
        }
        p->behind = behind;
        if (stale > 0 && behind)
            p->weight *= pow(1.0 + behind, -stale);
    }
    if (mg.how.mode == MNN_MERGE_FEDAVG) {
        double sum = 0;
        for (size_t k = 0; k < K; k++)
            sum += in[k].weight;
        if (!(sum > 0))
            die(EXIT_RUNTIME, "%s: nothing to weigh by: no input learned a record since its "
                "base (give --weights)", in[0].arg);
    }
    qsort(in, K, sizeof *in, cmp_inputs);
    for (size_t k = 0; k < K; k++) {
        mg.w[k] = in[k].weight;
        merged[k] = (mnn_merged_t){.source = in[k].source, .records = in[k].learned,
                                   .weight = mg.how.mode == MNN_MERGE_FEDAVG ? in[k].weight : 1};
        snprintf(merged[k].xxh3, sizeof merged[k].xxh3, "%s", in[k].ck->mf.xxh3);
        if (verbose)
            warnx_("%s: %" PRIu64 " records since its base (%" PRIu32 " round%s behind), "
                   "weight %g", in[k].arg, in[k].learned, in[k].behind,
                   in[k].behind == 1 ? "" : "s", merged[k].weight);
    }
    mg.in = in;
    mg.k = K;
    mg.step = base_step;
    add_u64(&mg.step, steps, "steps", in[0].arg);
    uint64_t records = base_records;
    add_u64(&records, learned, "records", in[0].arg);

    /* the state: the first input's random numbers and threads, the counters
     * of everything the inputs learned since their bases */
    mnn_train_state_t st;
    input_state(&in[0], &st);
    st.step = mg.step;
    st.records_seen = records;
    st.loss_sum = 0;
    st.correct = 0;
    memset(&st.base, 0, sizeof st.base);
    st.round = round + 1;
    st.merged = merged;
    st.nmerged = K;
    for (int f = 0; server && f < 2; f++)
        mg.base[f] = open_listed(bck, mg.base_arg, files[f], 0, NULL);
    if (server && mg.server_mom > 0)
        load_moments(&mg, bck);
    mnn_ckpt_writer_t wr = {write_model, write_optim, &mg,
                            server && mg.server_mom > 0 ? write_server : NULL};
    if (mnn_ckpt_write_with(output, &in[0].ck->mf.spec, &wr, &st, NULL, cli_created(), &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg[0] ? d.msg : "not merged");
    if (!quiet)
        warnx_("%s: round %" PRIu32 ", %s of %zu checkpoint%s, %" PRIu64 " records learned "
               "since their base", output, st.round, mnn_merge_name(mg.how.mode), K,
               K == 1 ? "" : "s", learned);
    for (size_t k = 0; k < K; k++) {
        for (int f = 0; f < 2; f++)
            mnn_st_stream_close(in[k].st[f]);
        cli_ckpt_close(in[k].ck);
    }
    for (int f = 0; f < 2; f++)
        mnn_st_stream_close(mg.base[f]);
    if (bck)
        cli_ckpt_close(bck);
    for (size_t i = 0; i < mg.nmom; i++)
        free(mg.mom[i].v);
    free(mg.mom);
    for (size_t k = (size_t)(argc - optind); k < K; k++)
        free(args[k]);
    free(in);
    free(mg.w);
    free(merged);
    out_close();
    return EXIT_OK;
}
