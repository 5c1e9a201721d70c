/* sgd-train - train a neural network by minibatch SGD on a record stream.
 *
 * Records come on stdin; each minibatch is first predicted (progressive
 * validation: test, then train) and then learned from.  At end of input the
 * model is written as a checkpoint directory whose path goes to stdout. */
#include <config.h>

#include "cli.h"
#include "ckptw.h"
#include "dist.h"
#include "feed.h"

#include <errno.h>
#include <math.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

/* The ranks of this training and its shards (one and none without mpirun). */
static dist_t D;

static noreturn void help(void)
{
    printf(
        "Usage: %s -m SPEC [OPTION]... < RECORDS\n"
        "Train a neural network by minibatch SGD on the records read from stdin.\n"
        "Each minibatch is predicted before it is learned from (progressive\n"
        "validation); the metrics go to stderr at doubling intervals.  At end of\n"
        "input the model is written as a checkpoint directory and its path is\n"
        "printed on stdout.\n"
        "\n"
        "  -m, --model SPEC       model spec (YAML), e.g.\n"
        "                         " PKGDATADIR "/models/fmnist-mlp.yaml\n"
        "  -o, --out DIR          checkpoint directory to write at the end (default:\n"
        "                         model.ckpt, or none when --ckpt-dir is given)\n"
        "  -f, --force            replace an existing checkpoint at --out\n"
        "      --resume CKPT      go on from a checkpoint (directory or archive) with\n"
        "                         its model, optimizer and counters, bit for bit\n"
        "      --skip-seen        skip the records_seen records at the start of the\n"
        "                         input (the resumed training replays its input; a\n"
        "                         node of a federation: those since its round)\n"
        "      --workdir DIR      where --resume unpacks an archive (default: TMPDIR)\n"
        "      --ckpt-dir DIR     write checkpoints DIR/step-N, DIR/latest: periodic,\n"
        "                         on SIGUSR1, on SIGTERM/SIGINT and at the end; a\n"
        "                         training from scratch wants a DIR with none yet\n"
        "      --ckpt-every N     a checkpoint every N steps\n"
        "      --ckpt-interval S  a checkpoint every S seconds\n"
        "      --ckpt-local DIR   write each checkpoint to DIR first (fast storage),\n"
        "                         then copy it to --ckpt-dir in the background\n"
        "      --keep N           keep the newest N checkpoints (default: all)\n"
        "      --lr X             learning rate (overrides the spec)\n"
        "      --lr-decay X       lr / (1 + X * step) schedule\n"
        "      --average X        keep a moving average of the weights with decay X\n"
        "                         (0: off) and write it as the model\n"
        "      --momentum X       SGD momentum\n"
        "      --weight-decay X   L2 weight decay\n"
        "      --prox MU          FedProx: add MU/2 ||w - w0||^2 to the loss, w0 the\n"
        "                         weights this round started from (the merge resumed\n"
        "                         from, or the initial weights); 0: off\n"
        "      --optimizer NAME   sgd or adam\n"
        "      --batch N          records per step\n"
        "      --seed N           seed of the weight initialisation\n"
        "      --threads N        OpenBLAS threads (default: OPENBLAS_NUM_THREADS; with\n"
        "                         --resume, the checkpoint's, which keeps it bit-exact)\n"
        "      --shards S         cut each minibatch into S shards whose gradients are\n"
        "                         summed in a fixed tree: the same bytes on any number\n"
        "                         of ranks R that divides S with S/R a power of two\n"
        "                         (default: R; with --resume, the checkpoint's)\n"
        "      --input FILE       under mpirun: every rank reads its own records from\n"
        "                         FILE, %%r in it replaced by the rank (default: rank 0\n"
        "                         reads stdin and hands the others their shards)\n"
        "      --on-error=MODE    fail (default) or skip bad records, counting them\n"
        "  -q, --quiet            no progress table\n"
        "  -v, --verbose          more detail on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Records: 'label,x1,...,xn' (comma or tab) or libsvm 'label idx:val ...';\n"
        "'#' lines and empty lines are ignored.\n"
        "Exit status: 0 success, 1 data or runtime error, 2 usage error, 3 stopped\n"
        "by SIGINT, SIGTERM or SIGUSR2 before the end of the input (0: all of it\n"
        "learned).\n"
        "A training that diverges exits 1 and writes no model.\n"
        "SIGINT, SIGTERM or SIGUSR2 stop at the next step boundary; the model so\n"
        "far is written.  SIGUSR1 takes a checkpoint and goes on.\n"
        "Data-parallel: mpirun -n R %s ...; each rank computes the gradient of its\n"
        "shards of every minibatch, rank 0 writes the checkpoints and stdout.  To stop\n"
        "such a job at a step boundary, send mpirun SIGUSR2 (SIGTERM makes mpirun end\n"
        "rank 0's stdin, then kill the ranks).\n"
        "Each completed checkpoint's path is printed on stdout.\n"
        "See sgd-train(1) and mini-nn(7).\n",
        prog, prog);
    out_close();
    exit(EXIT_OK);
}

/* --out must be free, or with --force a checkpoint we may replace. */
static void check_out(const char *out, int force)
{
    struct stat sb;
    if (lstat(out, &sb) != 0)
        return;
    if (!force)
        die(EXIT_RUNTIME, "%s: already exists (use --force to replace it)", out);
    char *man = malloc(strlen(out) + sizeof "/manifest.yaml");
    if (!man)
        die(EXIT_RUNTIME, "out of memory");
    sprintf(man, "%s/manifest.yaml", out);
    int is_ckpt = S_ISDIR(sb.st_mode) && access(man, F_OK) == 0;
    free(man);
    if (!is_ckpt)
        die(EXIT_RUNTIME, "%s: exists and is not a checkpoint; --force replaces only checkpoints",
            out);
}

/* How a checkpoint's manifest names the one it was resumed from: its
 * directory name when it is a sibling in the same checkpoint root (or came
 * out of an archive), else its absolute path.  ck and ck/latest are resolved
 * to the step-N they stand for. */
static void lineage_name(const mnn_ckpt_t *ck, const char *root, char *out, size_t size)
{
    const char *dir = ck->dir;
    char real[PATH_MAX], probe[PATH_MAX + 32], rroot[PATH_MAX];
    if (!realpath(dir, real)) {
        snprintf(out, size, "%s", dir);
        return;
    }
    snprintf(probe, sizeof probe, "%s/manifest.yaml", real);
    if (access(probe, F_OK) != 0) { /* a root: its latest */
        snprintf(probe, sizeof probe, "%s/latest", real);
        if (!realpath(probe, real)) {
            snprintf(out, size, "%s", dir);
            return;
        }
    }
    char *slash = strrchr(real, '/');
    int sibling = ck->archive;
    if (!sibling && root && slash && realpath(root, rroot)) {
        *slash = 0;
        sibling = !strcmp(real, rroot);
        *slash = '/';
    }
    snprintf(out, size, "%s", sibling && slash ? slash + 1 : real);
}

/* Offers a checkpoint (a pipeline's cut when cut is not NULL) unless this
 * one was taken already; the next one names it as its parent.  With wait,
 * waits for the writer instead of skipping. */
static void take_checkpoint(ckptw_t *w, const mnn_model_t *m, const mnn_optim_t *o,
                            const mnn_train_state_t *st, char *parent, size_t size,
                            const mnn_cut_ckpt_t *cut, int wait)
{
    const uint64_t id = cut ? cut->id : 0;
    if (ckptw_any(w) && ckptw_last_step(w) == st->step && ckptw_last_cut(w) == id)
        return;
    if (ckptw_offer(w, m, o, st, parent[0] ? parent : NULL, cut, wait))
        mnn_ckpt_cut_name(parent, size, st->step, id);
}


/* A training that diverged: the checkpoints already offered are written (they
 * hold finite values: the writer refuses any other), the model is not, and
 * the exit status is 1. */
static noreturn void diverged(ckptw_t *w, const char *root, uint64_t step, uint64_t records,
                              const char *why)
{
    uint64_t good = UINT64_MAX;
    if (w)
        ckptw_finish(w, &good);
    if (D.r > 0)
        cli_hold = 1; /* every rank diverged alike: rank 0 says so */
    char last[PATH_MAX + 64] = "";
    if (good != UINT64_MAX) {
        char name[32];
        mnn_ckpt_step_name(name, sizeof name, good);
        snprintf(last, sizeof last, "; the last good checkpoint is %s/%s", root, name);
    }
    die(EXIT_RUNTIME, "training diverged at step %llu (%llu records): %s; no model written%s",
        (unsigned long long)step, (unsigned long long)records, why, last);
}

/* woken interrupts a wait for input; the others say what was asked
 * (stop_requested counts: in a pipeline with cuts, the first one waits for
 * the head's stop cut) */
static volatile sig_atomic_t stop_requested, ckpt_requested, woken;
static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        ckpt_requested = 1;
    else if (stop_requested < 2)
        stop_requested++;
    woken = 1;
}

typedef struct {
    uint64_t records, next_report;
    double loss, loss_since;
    uint64_t correct, records_since, correct_since;
    int classify;
    double t0; /* mono_now() at the start */
} progress_t;

static double elapsed(const double *t0) { return mono_now() - *t0; }

static void report(progress_t *p, const char *tag)
{
    double secs = elapsed(&p->t0);
    fprintf(stderr, "%12llu %11.6f %11.6f", (unsigned long long)p->records,
            p->loss / (double)p->records,
            p->records_since ? p->loss_since / (double)p->records_since : 0.0);
    if (p->classify)
        fprintf(stderr, " %9.4f", (double)p->correct / (double)p->records);
    else
        fprintf(stderr, " %9s", "-");
    fprintf(stderr, " %10.0f%s\n", secs > 0 ? (double)p->records / secs : 0.0, tag);
    p->loss_since = 0;
    p->records_since = p->correct_since = 0;
}

/* The records --skip-seen skips: those the input replayed held, which for
 * a node of a federation are the ones learned since its round (its base). */
static uint64_t seen_since_base(const mnn_train_state_t *st)
{
    return st->base.round && st->base.records_seen <= st->records_seen
               ? st->records_seen - st->base.records_seen
               : st->records_seen;
}

/* What the command line asks for. */
typedef struct {
    const char *spec_path, *out, *resume, *workdir;
    ckptw_opts_t co;            /* the checkpoint writer's options */
    uint64_t ckpt_every;        /* steps between checkpoints; 0: none */
    double ckpt_interval;       /* seconds between checkpoints; 0: none */
    int skip_seen, force, quiet, verbose, skip;
    const char *o_lr, *o_mom, *o_wd, *o_opt, *o_batch, *o_seed, *o_decay, *o_avg, *o_prox;
    size_t threads;             /* --threads; 0: not given */
    size_t shards;              /* --shards; 0: not given */
    const char *input;          /* --input: each rank's file, %r its rank */
} args_t;

/* A training: its model, optimizer and counters, where it came from, and
 * the writer of its checkpoints. */
typedef struct {
    mnn_spec_t spec;
    mnn_model_t model;
    mnn_optim_t opt;
    mnn_train_state_t st;
    mnn_ckpt_t *resumed;  /* the checkpoint resumed from, or NULL */
    ckptw_t *writer;      /* NULL without --ckpt-dir */
    char parent[4096];    /* lineage: the checkpoint before the next one */
    uint64_t first_step;
    /* pipeline cuts: this stage's index (from the start line), the records
     * of a minibatch that a cut divided (px, py: batch x input), and how
     * the last cut ended the input (stop or final) */
    int cut_mode;
    uint32_t stage;
    float *px, *py;
    size_t pn;
    int cut_ended;
    uint64_t last_cut;
} run_t;

static void parse_args(int argc, char **argv, args_t *a)
{
    enum { O_LR = 256, O_MOMENTUM, O_WD, O_OPT, O_BATCH, O_SEED, O_THREADS, O_ONERR,
           O_DECAY, O_AVG, O_RESUME, O_SKIPSEEN, O_WORKDIR, O_CKDIR, O_CKEVERY, O_CKINT,
           O_CKLOCAL, O_KEEP, O_PROX, O_SHARDS, O_INPUT };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"out", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {"lr", required_argument, NULL, O_LR},
        {"lr-decay", required_argument, NULL, O_DECAY},
        {"average", required_argument, NULL, O_AVG},
        {"resume", required_argument, NULL, O_RESUME},
        {"skip-seen", no_argument, NULL, O_SKIPSEEN},
        {"workdir", required_argument, NULL, O_WORKDIR},
        {"ckpt-dir", required_argument, NULL, O_CKDIR},
        {"ckpt-every", required_argument, NULL, O_CKEVERY},
        {"ckpt-interval", required_argument, NULL, O_CKINT},
        {"ckpt-local", required_argument, NULL, O_CKLOCAL},
        {"keep", required_argument, NULL, O_KEEP},
        {"momentum", required_argument, NULL, O_MOMENTUM},
        {"weight-decay", required_argument, NULL, O_WD},
        {"prox", required_argument, NULL, O_PROX},
        {"optimizer", required_argument, NULL, O_OPT},
        {"batch", required_argument, NULL, O_BATCH},
        {"seed", required_argument, NULL, O_SEED},
        {"threads", required_argument, NULL, O_THREADS},
        {"on-error", required_argument, NULL, O_ONERR},
        {"shards", required_argument, NULL, O_SHARDS},
        {"input", required_argument, NULL, O_INPUT},
        CLI_COMMON_LONGOPTS};
    int c;
    while ((c = getopt_long(argc, argv, "m:o:fqvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': a->spec_path = optarg; break;
        case 'o': a->out = optarg; break;
        case 'f': a->force = 1; break;
        case O_LR: a->o_lr = optarg; break;
        case O_DECAY: a->o_decay = optarg; break;
        case O_AVG: a->o_avg = optarg; break;
        case O_RESUME: a->resume = optarg; break;
        case O_SKIPSEEN: a->skip_seen = 1; break;
        case O_WORKDIR: a->workdir = optarg; break;
        case O_CKDIR: a->co.root = optarg; break;
        case O_CKEVERY: a->ckpt_every = opt_size("--ckpt-every", optarg, 1, SIZE_MAX); break;
        case O_CKINT:
            a->ckpt_interval = opt_float("--ckpt-interval", optarg);
            if (!(a->ckpt_interval > 0))
                usage_error("--ckpt-interval: '%s' is not a number of seconds > 0", optarg);
            break;
        case O_CKLOCAL: a->co.local = optarg; break;
        case O_KEEP: a->co.keep = opt_size("--keep", optarg, 1, SIZE_MAX); break;
        case O_MOMENTUM: a->o_mom = optarg; break;
        case O_WD: a->o_wd = optarg; break;
        case O_PROX: a->o_prox = optarg; break;
        case O_OPT: a->o_opt = optarg; break;
        case O_BATCH: a->o_batch = optarg; break;
        case O_SEED: a->o_seed = optarg; break;
        case O_THREADS: a->threads = opt_size("--threads", optarg, 1, 1024); break;
        case O_ONERR: a->skip = opt_on_error(optarg); break;
        case O_SHARDS: a->shards = opt_size("--shards", optarg, 1, MNN_MAX_RANKS); break;
        case O_INPUT:
            if (!*optarg)
                usage_error("--input: empty file name");
            a->input = optarg;
            break;
        default: cli_common(c, &a->quiet, &a->verbose, help);
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s' (records are read from stdin)", argv[optind]);
    if (!a->spec_path == !a->resume)
        usage_error(a->resume ? "-m and --resume exclude each other: the checkpoint holds the spec"
                           : "a model spec (-m SPEC) or a checkpoint (--resume CKPT) is required");
    if (a->resume && (a->o_opt || a->o_avg || a->o_seed))
        usage_error("--optimizer, --average and --seed cannot change on --resume");
    if (a->skip_seen && !a->resume)
        usage_error("--skip-seen needs --resume");
    if (a->skip_seen && a->input)
        usage_error("--skip-seen reads stdin again; with --input every rank's file starts anew");
    if ((a->ckpt_every || a->ckpt_interval || a->co.local || a->co.keep) && !a->co.root)
        usage_error("--ckpt-every, --ckpt-interval, --ckpt-local and --keep need --ckpt-dir");
    if (!a->out && !a->co.root)
        a->out = "model.ckpt";
    if (a->out && !*a->out)
        usage_error("--out: empty directory name");
    a->co.quiet = a->quiet;
    a->co.verbose = a->verbose;
}

/* The model to train (from the spec, or the checkpoint resumed from), its
 * hyperparameters overridden, its threads, and the checkpoint writer. */
static void prepare(args_t *a, run_t *r)
{
    mnn_diag_t d;
    if (a->resume) {
        if (!strcmp(a->resume, "-"))
            usage_error("--resume -: stdin carries the records to train on; give the "
                        "checkpoint as a file or a directory");
        r->resumed = cli_ckpt_open(a->resume, a->workdir, 0);
        if (a->input && r->resumed->mf.cut)
            usage_error("--resume %s is a pipeline's cut, which goes on from stdin: --input "
                        "reads no cut lines", a->resume);
        /* a pipeline's cut is refused whole when any stage's part is damaged */
        if (r->resumed->mf.cut && mnn_ckpt_verify(r->resumed, &d) < 0)
            die(EXIT_RUNTIME, "%s", d.msg);
        if (mnn_ckpt_load(r->resumed->dir, &r->model, &r->opt, &r->st, &d) < 0)
            die(EXIT_RUNTIME, "%s", d.msg);
        /* lineage: the merge this training descends from goes on in every
         * checkpoint it writes (ckpt-merge weighs by what was learned since) */
        mnn_manifest_child_base(&r->resumed->mf, &r->st.base);
        if (mnn_spec_copy(&r->spec, &r->model.spec) < 0)
            die(EXIT_RUNTIME, "out of memory");
    } else if (mnn_spec_load_file(&r->spec, a->spec_path, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    if (a->o_lr)
        r->spec.opt.lr = opt_float("--lr", a->o_lr);
    if (a->o_decay)
        r->spec.opt.lr_decay = opt_float("--lr-decay", a->o_decay);
    if (a->o_avg)
        r->spec.opt.average = opt_float("--average", a->o_avg);
    if (a->o_mom)
        r->spec.opt.momentum = opt_float("--momentum", a->o_mom);
    if (a->o_wd)
        r->spec.opt.weight_decay = opt_float("--weight-decay", a->o_wd);
    if (a->o_prox)
        r->spec.opt.prox = opt_float("--prox", a->o_prox);
    if (a->o_opt && mnn_opt_parse(a->o_opt, &r->spec.opt.type) < 0)
        usage_error("--optimizer: '%s' is not one of sgd, adam", a->o_opt);
    if (a->o_batch)
        r->spec.batch = opt_size("--batch", a->o_batch, 1, 1 << 20);
    if (a->o_seed)
        r->spec.seed = opt_u64("--seed", a->o_seed);
    if (mnn_spec_validate(&r->spec, &d) < 0)
        usage_error("%s", d.msg);
    /* everything that can stop the run is checked before the training */
    if (a->out)
        check_out(a->out, a->force);
    /* SOURCE_DATE_EPOCH fixes the manifest's time: the whole checkpoint is
     * then reproducible (checked here, read again when it is written) */
    (void)cli_created();
    /* the BLAS threads: those the checkpoint was trained on, which keeps
     * a resumption bit-exact, unless --threads says otherwise */
    if (a->resume && !a->threads)
        a->threads = r->st.threads;
    else if (a->resume && a->threads != r->st.threads && !a->quiet)
        warnx_("--threads %zu: %s was trained on %u BLAS thread%s; on another count the "
               "result is not bit-exact with a training that never stopped", a->threads, a->resume,
               r->st.threads, r->st.threads == 1 ? "" : "s");
    set_threads(a->threads);
    r->st.threads = (uint32_t)mnn_get_threads();

    int rc;
    if (a->resume) {
        /* overrides of the hyperparameters (ckpt-resume's --batch) */
        r->model.spec.opt = r->opt.spec = r->spec.opt;
        r->model.spec.batch = r->spec.batch;
        if ((rc = mnn_model_reserve(&r->model, r->spec.batch)) < 0)
            die(EXIT_RUNTIME, "cannot allocate the model: %s", mnn_strerror(rc));
    } else {
        if ((rc = mnn_model_init(&r->model, &r->spec)) < 0 ||
            (rc = mnn_model_reserve(&r->model, r->spec.batch)) < 0 ||
            (rc = mnn_optim_init(&r->opt, &r->spec.opt, r->model.nparams)) < 0)
            die(EXIT_RUNTIME, "cannot allocate the model: %s", mnn_strerror(rc));
        mnn_rng_seed(&r->st.rng, r->spec.seed);
        mnn_model_init_weights(&r->model, &r->st.rng);
    }
    /* prox's anchor: the weights a round starts from (a merge resumed from,
     * or the first weights), kept in the checkpoints of the round, so that
     * a round resumed part-way goes on towards the same one */
    const int mid_round = a->resume && !r->resumed->mf.round; /* not from a merge */
    if (!(r->opt.spec.prox > 0 && mid_round && r->opt.anchor)) {
        if (r->opt.spec.prox > 0 && mid_round && r->st.base.round && !a->quiet)
            warnx_("--prox: %s keeps no anchor: the anchor is its weights, not those of round "
                   "%" PRIu32 " it descends from", a->resume, r->st.base.round);
        if ((rc = mnn_optim_anchor(&r->opt, r->model.params)) < 0)
            die(EXIT_RUNTIME, "cannot allocate the model: %s", mnn_strerror(rc));
    }
    a->co.fresh = !a->resume;
    a->co.first_step = r->opt.step;
    r->px = mnn_calloc_aligned(r->spec.batch, r->spec.input * sizeof(float));
    r->py = mnn_calloc_aligned(r->spec.batch, sizeof(float));
    if (!r->px || !r->py)
        die(EXIT_RUNTIME, "out of memory");
    if (r->resumed && r->resumed->mf.cut) {
        /* a pipeline's cut: go on with its minibatch where the cut divided it */
        float *x, *y;
        if (mnn_ckpt_pending_read(r->resumed->dir, r->spec.input, &x, &y, &r->pn, &d) < 0)
            die(EXIT_RUNTIME, "%s", d.msg);
        if (r->pn >= r->spec.batch)
            die(EXIT_RUNTIME, "%s: %zu pending records: the cut was taken with a larger batch "
                "than %zu; resume it with its batch", a->resume, r->pn, r->spec.batch);
        if (r->pn) {
            memcpy(r->px, x, r->pn * r->spec.input * sizeof(float));
            memcpy(r->py, y, r->pn * sizeof(float));
        }
        mnn_free(x);
        mnn_free(y);
        r->cut_mode = 1;
        r->last_cut = a->co.first_cut = r->resumed->mf.cut;
        r->stage = r->resumed->mf.cut_stage;
    }
    if (a->co.root && !(r->writer = ckptw_start(&a->co, &r->model, &r->opt, &d)))
        die(EXIT_RUNTIME, "%s", d.msg);
    /* lineage: each checkpoint names the one before it */
    if (r->resumed)
        lineage_name(r->resumed, a->co.root, r->parent, sizeof r->parent);
    r->first_step = r->opt.step;
    if (a->verbose)
        warnx_("%zu parameters, %zu layers, batch %zu, %s lr %g", r->model.nparams,
               r->spec.nlayers, r->spec.batch, mnn_opt_name(r->spec.opt.type),
               (double)r->spec.opt.lr);

}

/* One minibatch (x, y: n records): test, then train; the progress and
 * the counters.  With --input, x and y are this rank's part, and the
 * minibatch the ranks' parts (total records). */
static void learn(const args_t *a, run_t *r, progress_t *p, const float *x, const float *y,
                  size_t n, uint64_t total)
{
    mnn_batch_stats_t bs;
    int rc;
    if (a->input && dist_on(&D))
        dist_learn_parts(&D, &r->model, &r->opt, x, y, n, total, &bs);
    else if (dist_on(&D))
        dist_learn(&D, &r->model, &r->opt, x, y, n, &bs);
    else if ((rc = mnn_model_train_batch(&r->model, &r->opt, x, y, n, &bs)) < 0)
        die(EXIT_RUNTIME, "training failed: %s", mnn_strerror(rc));
    n = (size_t)total;
    if (!isfinite(bs.loss_sum))
        diverged(r->writer, a->co.root, r->opt.step, r->st.records_seen + n,
                 "the loss is not finite");
    p->records += n;
    p->records_since += n;
    p->loss += bs.loss_sum;
    p->loss_since += bs.loss_sum;
    p->correct += bs.correct;
    r->st.records_seen += n;
    r->st.loss_sum += bs.loss_sum;
    r->st.correct += bs.correct;
    r->st.step = r->opt.step;
    if (!a->quiet && p->records >= p->next_report) {
        report(p, "");
        while (p->next_report <= p->records)
            p->next_report *= 2;
    }
}

/* The records of a batch: learned as a minibatch, or, where a cut divided
 * one, kept with its first records until the rest comes. */
static void take_records(const args_t *a, run_t *r, progress_t *p, const feed_batch_t *b)
{
    const size_t nf = r->spec.input, batch = r->spec.batch;
    if (!b->n)
        return;
    if (r->pn == 0 && (b->n == batch || !b->cut)) {
        learn(a, r, p, b->x, b->y, b->n, b->n);
        return;
    }
    /* the feed brings at most the rest of the divided minibatch */
    memcpy(r->px + r->pn * nf, b->x, b->n * nf * sizeof(float));
    memcpy(r->py + r->pn, b->y, b->n * sizeof(float));
    r->pn += b->n;
    if (r->pn == batch || !b->cut) { /* whole, or cut short by a flush or the end */
        learn(a, r, p, r->px, r->py, r->pn, r->pn);
        r->pn = 0;
    }
}

/* The start line of a pipeline with cuts: this stage's index, and the cut
 * the head resumed from, which must be the one this training resumed from. */
static void cut_start(const args_t *a, run_t *r, const feed_batch_t *b)
{
    const mnn_ckpt_t *ck = r->resumed;
    const uint64_t from = ck ? ck->mf.cut : 0;
    if (b->start_from != from) {
        if (from)
            die(EXIT_RUNTIME, "--resume %s is cut %llu, but the head of the pipeline resumed "
                "from %s%llu: resume every stage from the same cut", a->resume,
                (unsigned long long)from, b->start_from ? "cut " : "none (",
                (unsigned long long)b->start_from);
        die(EXIT_RUNTIME, "the head of the pipeline resumed from cut %llu, but %s: resume "
            "sgd-train from the same cut (--resume)", (unsigned long long)b->start_from,
            ck ? "--resume names a checkpoint of sgd-train alone" : "this training starts afresh");
    }
    if (from && b->start_index != ck->mf.cut_stage)
        die(EXIT_RUNTIME, "%s: cut %llu was committed by stage %u, but %u stages take part "
            "before this one: a pipeline of another shape", a->resume, (unsigned long long)from,
            (unsigned)ck->mf.cut_stage, (unsigned)b->start_index);
    r->cut_mode = 1;
    r->stage = b->start_index;
    if (!r->writer && !a->quiet)
        warnx_("the pipeline takes cuts, but without --ckpt-dir they are not committed");
    else if ((a->ckpt_every || a->ckpt_interval) && !a->quiet)
        warnx_("in a pipeline with cuts the checkpoints are its cuts: --ckpt-every and "
               "--ckpt-interval are not used (give stream-ingest --every or --interval)");
}

/* A barrier's block ended the batch: commit the cut, this training's state
 * with the records of its divided minibatch and every upstream part. */
static void cut_commit(const args_t *a, run_t *r, progress_t *p, const feed_batch_t *b)
{
    if (b->cut_what == MNN_CUT_FINAL && r->pn) {
        /* the source ended: its last records are a short minibatch */
        learn(a, r, p, r->px, r->py, r->pn, r->pn);
        r->pn = 0;
    }
    r->last_cut = b->cut_id;
    r->cut_ended = b->cut_what != MNN_CUT_GO;
    if (!r->writer)
        return;
    mnn_stage_part_t parts[MNN_CUT_MAX_STAGES];
    for (size_t i = 0; i < b->nparts; i++) {
        parts[i].index = b->parts[i].head.index;
        snprintf(parts[i].program, sizeof parts[i].program, "%s", b->parts[i].head.program);
        parts[i].data = b->parts[i].data;
        parts[i].bytes = b->parts[i].len;
    }
    mnn_cut_ckpt_t cut = {.id = b->cut_id, .self = r->stage, .self_program = "sgd-train",
                          .parts = parts, .pending = r->pn, .px = r->px, .py = r->py};
    r->st.step = r->opt.step;
    /* every barrier is a cut: when the writer is still busy with the one
     * before, the pipeline waits for it (barriers faster than the disk slow
     * it down rather than go uncommitted) */
    take_checkpoint(r->writer, &r->model, &r->opt, &r->st, r->parent, sizeof r->parent, &cut, 1);
}

/* SIGINT, SIGTERM, SIGUSR2: stop at the next step boundary; SIGUSR1: a
 * checkpoint (see on_signal). */
static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL); /* the stop mpirun forwards (it ends stdin on SIGTERM) */
}

/* --input's file for this rank: every %r replaced by the rank, %% by %. */
static void input_path(const char *tmpl, size_t rank, char *out, size_t size)
{
    size_t o = 0;
    for (const char *c = tmpl; *c && o + 1 < size; c++) {
        if (c[0] == '%' && (c[1] == 'r' || c[1] == '%')) {
            o += (size_t)snprintf(out + o, size - o, c[1] == 'r' ? "%zu" : "%%", rank);
            c++;
        } else
            out[o++] = *c;
    }
    if (o + 1 >= size)
        die(EXIT_USAGE, "--input: '%s' is too long a file name", tmpl);
    out[o] = 0;
}

/* Learns from stdin's batches (or --input's file) until their end or a
 * signal, taking the checkpoints asked for; reports the progress.  Returns
 * 1 when a signal stopped it before the end of the input. */
static int train(const args_t *a, run_t *r)
{
    catch_signals();
    /* where the records come from: stdin (rank 0), or this rank's file,
     * which brings this rank's part of every minibatch */
    int fd = STDIN_FILENO;
    char inpath[PATH_MAX];
    size_t part = r->spec.batch;
    if (a->input) {
        input_path(a->input, D.r, inpath, sizeof inpath);
        if ((fd = open(inpath, O_RDONLY | O_CLOEXEC)) < 0)
            die(EXIT_RUNTIME, "--input %s: %s", inpath, strerror(errno));
        part = dist_shard_start(r->spec.batch, D.S, (D.r + 1) * D.k) -
               dist_shard_start(r->spec.batch, D.S, D.r * D.k);
    }
    feed_opts_t fo = {.name = a->input ? inpath : "stdin", .batch = part, .skip_errors = a->skip,
                      .verbose = a->verbose, .skip_records = a->skip_seen ? seen_since_base(&r->st) : 0,
                      .cuts = !a->input, .first_fill = r->pn, .quiet = a->quiet,
                      .parts_root = a->co.root, .ahead = a->input ? 0 : FEED_CUT_AHEAD};
    fo.fmt.nfeat = r->spec.input;
    fo.fmt.has_label = 1;
    fo.fmt.classes = r->spec.loss == MNN_LOSS_XENT ? r->spec.outputs : 0;
    feed_t *feed = feed_start(fd, &fo);
    if (!feed)
        die(EXIT_RUNTIME, "cannot start the reader: %s", strerror(errno ? errno : ENOMEM));

    progress_t p = {.next_report = r->spec.batch, .classify = r->spec.loss == MNN_LOSS_XENT};
    int input_ended = 0, first = 1, noted_term = 0, noted_usr1 = 0;
    int mine_ended = 0; /* --input: this rank's file ended (the others' go on) */
    int agreed_stop = 0; /* --input: the ranks agreed to stop (a signal may come later) */
    p.t0 = mono_now();
    double last_ckpt = 0;
    if (!a->quiet)
        fprintf(stderr, "%12s %11s %11s %9s %10s\n", "records", "avg_loss", "since_last",
                p.classify ? "prog_acc" : "", "rec/s");
    for (;;) {
        /* a pipeline with cuts stops at its head's stop cut: a first signal
         * waits for it, a second one stops at once (no checkpoint) */
        const int must_stop = stop_requested >= (r->cut_mode ? 2 : 1);
        if (r->cut_mode && stop_requested == 1 && !noted_term && !a->quiet) {
            warnx_("a signal: this pipeline stops at its head's stop cut (SIGTERM to "
                   "stream-ingest); going on until it comes (another signal stops now, without "
                   "a checkpoint)");
            noted_term = 1;
        }
        if (must_stop && !a->input)
            break;
        if (r->cut_mode && ckpt_requested) {
            ckpt_requested = 0;
            if (!noted_usr1++ && !a->quiet)
                warnx_("SIGUSR1: the checkpoints of this pipeline are its cuts; send SIGUSR1 to "
                       "its head (stream-ingest)");
        }
        feed_batch_t *b = must_stop || mine_ended ? NULL : feed_next(feed, &woken);
        if (a->input && (b || must_stop || mine_ended)) {
            /* every rank's part of this step, or its stop; a rank whose file
             * ended brings nothing until every file has */
            if (b && b->error)
                die(EXIT_RUNTIME, "%s", b->msg); /* the others learn it at the agreement */
            if (b && b->end)
                mine_ended = 1;
            dist_agreed_t ag;
            dist_agree(&D, b ? b->n : 0, mine_ended, must_stop, &ag);
            if (ag.fail >= 0) {
                if (r->writer)
                    ckptw_finish(r->writer, NULL);
                dist_finish(&D);
                exit(ag.fail); /* the rank that failed said why */
            }
            if (ag.stop) {
                if (b)
                    feed_release(feed, b);
                agreed_stop = 1;
                break;
            }
            if (ag.n)
                learn(a, r, &p, b ? b->x : r->px, b ? b->y : r->py, b ? b->n : 0, ag.n);
            if (b)
                feed_release(feed, b);
            input_ended = ag.end;
            if (ag.end)
                break;
            goto periodic;
        }
        if (!b) { /* a signal while waiting for input */
            woken = 0;
            if (ckpt_requested && r->writer && !r->cut_mode) {
                ckpt_requested = 0;
                take_checkpoint(r->writer, &r->model, &r->opt, &r->st, r->parent,
                                sizeof r->parent, NULL, 0);
            }
            continue;
        }
        if (b->error) {
            /* what was committed before the bad line stays: its writes end first */
            if (r->writer)
                ckptw_finish(r->writer, NULL);
            die(EXIT_RUNTIME, "%s", b->msg);
        }
        if (b->start)
            cut_start(a, r, b);
        else if (first && r->cut_mode)
            die(EXIT_RUNTIME, "--resume %s is a pipeline's cut, but stdin does not start with the "
                "pipeline's start line: resume its head too (stream-ingest --resume)", a->resume);
        first = 0;
        if (b->n)
            r->cut_ended = 0;
        take_records(a, r, &p, b);
        if (b->cut)
            cut_commit(a, r, &p, b);
        int end = b->end;
        feed_release(feed, b);
        input_ended = end;
        if (end)
            break;
    periodic:
        if (r->writer && !r->cut_mode) {
            double t = elapsed(&p.t0);
            if (ckpt_requested || (a->ckpt_every && r->opt.step % a->ckpt_every == 0) ||
                (a->ckpt_interval && t - last_ckpt >= a->ckpt_interval)) {
                ckpt_requested = 0;
                last_ckpt = t;
                take_checkpoint(r->writer, &r->model, &r->opt, &r->st, r->parent,
                                sizeof r->parent, NULL, 0);
            }
        }
    }
    /* with --input, what every rank agreed on: the same on all */
    const int stopped = a->input ? agreed_stop : stop_requested != 0;
    const int stopped_early = stopped && !input_ended;
    if (stopped_early && !a->quiet)
        warnx_("stopping on a signal after %llu records, before the end of the input (exit "
               "status %d)%s", (unsigned long long)p.records, EXIT_STOPPED,
               r->cut_mode ? "; no checkpoint: the pipeline's last committed cut is the one to "
                             "resume from" : "");
    char first_bad[700];
    uint64_t skipped;
    feed_stop(feed, &skipped, first_bad, sizeof first_bad);
    if (input_ended && r->cut_mode && !r->cut_ended && r->writer)
        ckptw_finish(r->writer, NULL); /* the cuts so far are written whole */
    if (input_ended && r->cut_mode && !r->cut_ended)
        die(EXIT_RUNTIME, "stdin ended %s cut %llu without the pipeline's stop or final cut: the "
            "head went away; nothing since that cut is committed (resume the pipeline from it)",
            r->pn || p.records ? "after" : "at", (unsigned long long)r->last_cut);
    if (p.records == 0 && !stopped && !r->cut_mode)
        die(EXIT_RUNTIME, "%s: no records to learn from%s", a->input ? "--input" : "stdin",
            skipped ? " (all were skipped as bad)" : "");
    if (!a->quiet && p.records_since)
        report(&p, "");
    if (!a->quiet && p.records) {
        fprintf(stderr, "%s: %llu records, %llu steps, average loss %.6f", prog,
                (unsigned long long)p.records, (unsigned long long)(r->opt.step - r->first_step),
                p.loss / (double)p.records);
        if (p.classify)
            fprintf(stderr, ", progressive accuracy %.4f",
                    (double)p.correct / (double)p.records);
        fputc('\n', stderr);
    }
    if (a->verbose && p.records) {
        double secs = elapsed(&p.t0);
        warnx_("trained for %.3f s: %.2f records/s", secs,
               secs > 0 ? (double)p.records / secs : 0.0);
    }
    if (D.R > 1 && !a->quiet && D.steps)
        warnx_("%zu ranks, %zu shards: exchanges took %.1f%% of the step time (%.3f of %.3f ms "
               "per step)", D.R, D.S, D.step_s > 0 ? 100.0 * D.comm_s / D.step_s : 0.0,
               1e3 * D.comm_s / (double)D.steps, 1e3 * D.step_s / (double)D.steps);
    if (skipped)
        warnx_("skipped %llu bad record%s (first: %s)", (unsigned long long)skipped,
               skipped == 1 ? "" : "s", first_bad);

    return stopped_early;
}

/* What a training holds, and the ranks' buffers, freed (after dist_finish). */
static void run_free(run_t *r)
{
    dist_free(&D);
    if (r->resumed)
        cli_ckpt_close(r->resumed);
    mnn_free(r->px);
    mnn_free(r->py);
    mnn_optim_free(&r->opt);
    mnn_model_free(&r->model);
    mnn_spec_free(&r->spec);
}

/* A rank other than 0: its steps (from stdin, those rank 0 hands out) until
 * rank 0 ends the training; its exit status is rank 0's. */
static int follower_end(run_t *r)
{
    const int st = dist_follow(&D, &r->model, &r->opt);
    dist_finish(&D);
    run_free(r);
    return st;
}

/* The shards of every minibatch: --shards, else those of the training
 * resumed when these ranks can own them whole (bit-exact), else one per
 * rank; recorded in the checkpoints. */
static void choose_shards(const args_t *a, run_t *r)
{
    const size_t R = D.R;
    const size_t had = r->resumed ? (r->st.shards ? r->st.shards : 1) : 0;
    const size_t had_ranks = r->resumed ? (r->st.ranks ? r->st.ranks : 1) : 0;
    size_t S;
    if (a->shards) {
        S = a->shards;
        if (!dist_layout_ok(S, R))
            usage_error("--shards %zu on %zu ranks: every rank owns S/R whole shards, so R must "
                        "divide S, and S/R be a power of two (or R be 1)", S, R);
    } else
        S = dist_resume_shards(had, R);
    if (had && had != S && !a->quiet)
        warnx_("%s was trained with %zu shard%s, this training has %zu%s: its sums round "
               "otherwise, the result is not bit-exact with a training that never stopped%s",
               a->resume, had, had == 1 ? "" : "s", S, a->shards ? " (--shards)" : "",
               a->shards ? "" : " (--shards picks them)");
    if (S > r->spec.batch)
        usage_error("%zu shards (--shards, or one per rank) but a batch of %zu records: every "
                    "shard needs one", S, r->spec.batch);
    if (S > 1 && r->spec.normalize == MNN_NORM_RUNNING)
        usage_error("the spec's running normalization learns from every record of a minibatch "
                    "at once: it cannot be split into shards or ranks (train it in one process, "
                    "without --shards)");
    if (a->verbose && r->resumed && had_ranks != R)
        warnx_("%s was trained on %zu rank%s; going on on %zu with %zu shards", a->resume,
               had_ranks, had_ranks == 1 ? "" : "s", R, S);
    r->st.ranks = (uint32_t)R;
    r->st.shards = (uint32_t)S;
}

int main(int argc, char **argv)
{
    static args_t a;
    static run_t r;
    cli_init("sgd-train");
    out_setup();
    dist_init(&D);
    if (D.mpi)
        catch_signals(); /* mpirun forwards SIGUSR1, SIGUSR2 at any time */
    if (D.r > 0) {
        /* rank 0 writes stdout (--help too) and says what is wrong with
         * the options */
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null >= 0 && dup2(null, STDOUT_FILENO) >= 0 && null != STDOUT_FILENO)
            close(null);
        opterr = 0;
    }
    parse_args(argc, argv, &a);
    if (D.r > 0) {
        /* rank 0 writes the checkpoints and the model, and reports */
        a.out = NULL;
        a.co.root = NULL;
        a.force = 0;
        a.quiet = 1;
        a.verbose = 0;
    }
    D.input = a.input != NULL;
    prepare(&a, &r);
    choose_shards(&a, &r);
    dist_setup(&D, r.st.shards, &r.model, &r.opt, r.spec.batch,
               a.resume ? a.resume : a.spec_path);
    if (D.r > 0 && !a.input) {
        /* the others follow rank 0's steps */
        catch_signals(); /* mpirun's SIGTERM: rank 0 decides where to stop */
        return follower_end(&r);
    }
    const int stopped_early = train(&a, &r);
    dist_final(&D);
    if (D.r > 0) /* --input: rank 0 writes what all computed */
        return follower_end(&r);
    mnn_diag_t d;
    r.st.step = r.opt.step;
    /* the last update may have been the one that diverged */
    if (mnn_state_check(&r.model, &r.opt, &d) < 0)
        diverged(r.writer, a.co.root, r.opt.step, r.st.records_seen, d.msg);
    /* a pipeline's last cut is being written: a signal (the whole job
     * told to stop) must not end it halfway, nor, under mpirun, the SIGTERM
     * that follows the end of stdin when mpirun is told to stop (it kills
     * after odls_base_sigkill_timeout); otherwise these signals have their
     * default action again while the last checkpoint is written */
    if (!r.cut_mode && !D.mpi) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
    }
    if (r.writer) {
        /* a pipeline's checkpoints are its cuts, the last one taken already */
        if (!r.cut_mode)
            take_checkpoint(r.writer, &r.model, &r.opt, &r.st, r.parent, sizeof r.parent, NULL,
                            1);
        if (ckptw_finish(r.writer, NULL) < 0)
            die(EXIT_RUNTIME, "the final checkpoint could not be written");
    }
    if (a.out) {
        char from[PATH_MAX] = "";
        if (r.resumed)
            lineage_name(r.resumed, NULL, from, sizeof from);
        if (mnn_ckpt_write(a.out, &r.model, &r.opt, &r.st, from[0] ? from : NULL, cli_created(),
                           a.force, &d) < 0)
            die(EXIT_RUNTIME, "%s", d.msg);
        printf("%s\n", a.out);
    }
    out_close();
    /* the others end with rank 0's status, once all is written */
    dist_end(&D, stopped_early ? EXIT_STOPPED : EXIT_OK);
    if (a.verbose)
        report_peak_rss();
    dist_finish(&D);
    run_free(&r);
    /* a cron job tells a training stopped part-way from one that learned
     * all its input */
    return stopped_early ? EXIT_STOPPED : EXIT_OK;
}
