/* ckpt-merge - merge checkpoints of one model into one checkpoint: a
 * federated round (FedAvg, weighted by the records each learned since
 * their common base), or a coordinate-wise median or trimmed mean that a
 * bad node cannot drag away.  The inputs are read one tensor at a time,
 * every byte checked against its manifest's hash before the output is
 * committed. */
#include <config.h>

#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        "  -q, --quiet            no notes on stderr\n"
        "  -v, --verbose          each input's records and weight\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Every weight and optimizer moment is merged the same way.  The inputs must\n"
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
    double weight;
} input_t;

typedef struct {
    input_t *in;
    size_t k;
    mnn_merge_t how;
    double *w;
    uint64_t step;
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
    float **x = calloc(K, sizeof *x), *r = NULL;
    int rc = t && x ? 0 : MNN_ENOMEM;
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
    }
    const size_t part = most < PART_BYTES ? (most ? (size_t)most : 4) : PART_BYTES;
    for (size_t k = 0; rc == 0 && k < K; k++)
        if (!(x[k] = malloc(part)))
            rc = MNN_ENOMEM;
    if (rc == 0 && !(r = malloc(part)))
        rc = MNN_ENOMEM;
    if (rc == MNN_ENOMEM)
        warnx_("out of memory for %zu buffers of %zu bytes", K + 1, part);
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
            mnn_merge_bad_t bad = {0, 0};
            if (rc == 0 && (rc = mnn_merge_tensor(&mg->how, (const float *const *)x, mg->w, K,
                                                  want / sizeof(float), r, &bad, &d)) < 0)
                warnx_("%s: %s: tensor '%s', value %" PRIu64 " is not finite: not merged",
                       mg->in[bad.input].arg, files[fi], a.name,
                       at / sizeof(float) + (uint64_t)bad.at);
            if (rc == 0 && want && fwrite(r, 1, want, out) != want) {
                rc = MNN_EIO;
                warnx_("%s: %s", files[fi], strerror(errno));
            }
            at += want;
        } while (rc == 0 && at < a.bytes);
    }
    /* trusted only now: every byte read matched its manifest's hash */
    for (size_t k = 0; rc == 0 && k < K; k++)
        if ((rc = mnn_st_stream_finish(mg->in[k].st[fi], &d)) < 0)
            warnx_("%s: %s", mg->in[k].arg, d.msg);
    for (size_t k = 0; x && k < K; k++)
        free(x[k]);
    free(x);
    free(r);
    free(t);
    return rc;
}

static int write_model(FILE *f, void *ctx) { return merge_file(f, ctx, 0); }
static int write_optim(FILE *f, void *ctx) { return merge_file(f, ctx, 1); }

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
    enum { O_MODE = 256, O_TRIM, O_WEIGHTS, O_ANY };
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        {"mode", required_argument, NULL, O_MODE},
        {"trim", required_argument, NULL, O_TRIM},
        {"weights", required_argument, NULL, O_WEIGHTS},
        {"any-parent", no_argument, NULL, O_ANY},
        CLI_COMMON_LONGOPTS};
    const char *output = NULL;
    static double given[MNN_MERGE_MAX];
    size_t ngiven = 0;
    int quiet = 0, verbose = 0, any_parent = 0, trim_given = 0, c;
    merge_t mg = {.how = {MNN_MERGE_FEDAVG, 0.2}};

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
        default: cli_common(c, &quiet, &verbose, help);
        }
    }
    const size_t K = (size_t)(argc - optind);
    if (!output)
        usage_error("-o DIR is required (the merged checkpoint)");
    if (!*output)
        usage_error("-o: empty directory name");
    if (K < 1)
        usage_error("at least one checkpoint to merge is required");
    if (K > MNN_MERGE_MAX)
        usage_error("%zu checkpoints: at most %d", K, MNN_MERGE_MAX);
    if (trim_given && mg.how.mode != MNN_MERGE_TRIMMED)
        usage_error("--trim is for --mode trimmed-mean");
    if (ngiven && mg.how.mode != MNN_MERGE_FEDAVG)
        usage_error("--weights is for --mode fedavg");
    if (ngiven && ngiven != K)
        usage_error("--weights: %zu weights for %zu checkpoints", ngiven, K);
    mnn_diag_t d = {""};
    if (mnn_merge_check(&mg.how, ngiven ? given : NULL, K, &d) < 0)
        usage_error("%s", d.msg);
    for (int i = optind; i < argc; i++)
        if (!strcmp(argv[i], "-"))
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
        p->arg = argv[optind + (int)k];
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
        if (k && !any_parent && strcmp(mf->base.xxh3, in[0].ck->mf.base.xxh3)) {
            char mine[64] = "none", theirs[64] = "none";
            if (mf->base.round)
                snprintf(mine, sizeof mine, "round %" PRIu32 ", %s", mf->base.round,
                         mf->base.xxh3);
            if (in[0].ck->mf.base.round)
                snprintf(theirs, sizeof theirs, "round %" PRIu32 ", %s",
                         in[0].ck->mf.base.round, in[0].ck->mf.base.xxh3);
            die(EXIT_RUNTIME, "%s: started from another base than %s (%s against %s); "
                "--any-parent merges them anyway", p->arg, in[0].arg, mine, theirs);
        }
        for (int f = 0; f < 2; f++) {
            if (!(p->file[f] = mnn_manifest_find(mf, files[f])))
                die(EXIT_RUNTIME, "%s: its manifest lists no %s", p->arg, files[f]);
            char path[PATH_MAX];
            if (snprintf(path, sizeof path, "%s/%s", p->ck->dir, files[f]) >= (int)sizeof path)
                die(EXIT_RUNTIME, "%s: path too long", p->arg);
            if (mnn_st_stream_open(&p->st[f], path, p->file[f]->bytes, p->file[f]->xxh3, &d) < 0)
                die(EXIT_RUNTIME, "%s: %s", p->arg, d.msg);
        }
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
            warnx_("%s: %" PRIu64 " records since its base, weight %g", in[k].arg,
                   in[k].learned, merged[k].weight);
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
    mnn_ckpt_writer_t wr = {write_model, write_optim, &mg};
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
    free(in);
    free(mg.w);
    free(merged);
    out_close();
    return EXIT_OK;
}
