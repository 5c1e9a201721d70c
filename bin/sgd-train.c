/* sgd-train - train a neural network by minibatch SGD on a record stream.
 *
 * Records come on stdin; each minibatch is first predicted (progressive
 * validation: test, then train) and then learned from.  At end of input the
 * model is written as a checkpoint directory whose path goes to stdout. */
#include <config.h>

#include "cli.h"
#include "feed.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

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
        "  -o, --out DIR          checkpoint directory to write (default: model.ckpt)\n"
        "  -f, --force            replace an existing checkpoint at --out\n"
        "      --lr X             learning rate (overrides the spec)\n"
        "      --lr-decay X       lr / (1 + X * step) schedule\n"
        "      --average X        keep a moving average of the weights with decay X\n"
        "                         (0: off) and write it as the model\n"
        "      --momentum X       SGD momentum\n"
        "      --weight-decay X   L2 weight decay\n"
        "      --optimizer NAME   sgd or adam\n"
        "      --batch N          records per step\n"
        "      --seed N           seed of the weight initialisation\n"
        "      --threads N        OpenBLAS threads (default: OPENBLAS_NUM_THREADS)\n"
        "      --on-error=MODE    fail (default) or skip bad records, counting them\n"
        "  -q, --quiet            no progress table\n"
        "  -v, --verbose          more detail on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Records: 'label,x1,...,xn' (comma or tab) or libsvm 'label idx:val ...';\n"
        "'#' lines and empty lines are ignored.\n"
        "Exit status: 0 success, 1 data or runtime error, 2 usage error.\n"
        "SIGINT or SIGTERM stop at the next step boundary; the model so far is\n"
        "written and the exit status is 0.  See sgd-train(1) and mini-nn(7).\n",
        prog);
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

static volatile sig_atomic_t stop_requested;
static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

typedef struct {
    uint64_t records, next_report;
    double loss, loss_since;
    uint64_t correct, records_since, correct_since;
    int classify;
    struct timespec t0;
} progress_t;

static double elapsed(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

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

int main(int argc, char **argv)
{
    enum { O_LR = 256, O_MOMENTUM, O_WD, O_OPT, O_BATCH, O_SEED, O_THREADS, O_ONERR,
           O_DECAY, O_AVG };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"out", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {"lr", required_argument, NULL, O_LR},
        {"lr-decay", required_argument, NULL, O_DECAY},
        {"average", required_argument, NULL, O_AVG},
        {"momentum", required_argument, NULL, O_MOMENTUM},
        {"weight-decay", required_argument, NULL, O_WD},
        {"optimizer", required_argument, NULL, O_OPT},
        {"batch", required_argument, NULL, O_BATCH},
        {"seed", required_argument, NULL, O_SEED},
        {"threads", required_argument, NULL, O_THREADS},
        {"on-error", required_argument, NULL, O_ONERR},
        CLI_COMMON_LONGOPTS};
    const char *spec_path = NULL, *out = "model.ckpt";
    const char *o_lr = NULL, *o_mom = NULL, *o_wd = NULL, *o_opt = NULL, *o_batch = NULL,
               *o_seed = NULL, *o_decay = NULL, *o_avg = NULL;
    int force = 0, quiet = 0, verbose = 0, skip = 0, c;
    size_t threads = 0;

    cli_init("sgd-train");
    out_setup();
    while ((c = getopt_long(argc, argv, "m:o:fqvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': spec_path = optarg; break;
        case 'o': out = optarg; break;
        case 'f': force = 1; break;
        case O_LR: o_lr = optarg; break;
        case O_DECAY: o_decay = optarg; break;
        case O_AVG: o_avg = optarg; break;
        case O_MOMENTUM: o_mom = optarg; break;
        case O_WD: o_wd = optarg; break;
        case O_OPT: o_opt = optarg; break;
        case O_BATCH: o_batch = optarg; break;
        case O_SEED: o_seed = optarg; break;
        case O_THREADS: threads = opt_size("--threads", optarg, 1, 1024); break;
        case O_ONERR: skip = opt_on_error(optarg); break;
        case 'q': quiet = 1; break;
        case 'v': verbose = 1; break;
        case 'h': help();
        case 'V': print_version();
        default: usage_error("unknown option");
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s' (records are read from stdin)", argv[optind]);
    if (!spec_path)
        usage_error("a model spec is required (-m SPEC)");
    if (!*out)
        usage_error("--out: empty directory name");

    mnn_diag_t d;
    mnn_spec_t spec;
    if (mnn_spec_load_file(&spec, spec_path, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    if (o_lr)
        spec.opt.lr = opt_float("--lr", o_lr);
    if (o_decay)
        spec.opt.lr_decay = opt_float("--lr-decay", o_decay);
    if (o_avg)
        spec.opt.average = opt_float("--average", o_avg);
    if (o_mom)
        spec.opt.momentum = opt_float("--momentum", o_mom);
    if (o_wd)
        spec.opt.weight_decay = opt_float("--weight-decay", o_wd);
    if (o_opt) {
        if (!strcmp(o_opt, "sgd"))
            spec.opt.type = MNN_OPT_SGD;
        else if (!strcmp(o_opt, "adam"))
            spec.opt.type = MNN_OPT_ADAM;
        else
            usage_error("--optimizer: '%s' is not one of sgd, adam", o_opt);
    }
    if (o_batch)
        spec.batch = opt_size("--batch", o_batch, 1, 1 << 20);
    if (o_seed)
        spec.seed = opt_u64("--seed", o_seed);
    if (mnn_spec_validate(&spec, &d) < 0)
        usage_error("%s", d.msg);
    /* everything that can stop the run is checked before the training */
    check_out(out, force);
    /* SOURCE_DATE_EPOCH fixes the manifest's time: the whole checkpoint is
     * then reproducible */
    int64_t created = 0;
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    if (sde && *sde) {
        uint64_t v;
        if (mnn_parse_u64(sde, &v) < 0 || v > INT64_MAX)
            die(EXIT_USAGE, "SOURCE_DATE_EPOCH: '%s' is not a number of seconds", sde);
        created = (int64_t)v;
    }
    set_threads(threads);

    mnn_model_t model;
    mnn_optim_t opt;
    mnn_train_state_t st = {0};
    int rc;
    if ((rc = mnn_model_init(&model, &spec)) < 0 ||
        (rc = mnn_model_reserve(&model, spec.batch)) < 0 ||
        (rc = mnn_optim_init(&opt, &spec.opt, model.nparams)) < 0)
        die(EXIT_RUNTIME, "cannot allocate the model: %s", mnn_strerror(rc));
    mnn_rng_seed(&st.rng, spec.seed);
    mnn_model_init_weights(&model, &st.rng);
    if (verbose)
        warnx_("%zu parameters, %zu layers, batch %zu, %s lr %g", model.nparams,
               spec.nlayers, spec.batch, spec.opt.type == MNN_OPT_ADAM ? "adam" : "sgd",
               (double)spec.opt.lr);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    feed_opts_t fo = {.name = "stdin", .batch = spec.batch, .skip_errors = skip,
                      .verbose = verbose};
    fo.fmt.nfeat = spec.input;
    fo.fmt.has_label = 1;
    fo.fmt.classes = spec.loss == MNN_LOSS_XENT ? spec.outputs : 0;
    feed_t *feed = feed_start(STDIN_FILENO, &fo);
    if (!feed)
        die(EXIT_RUNTIME, "cannot start the reader: %s", strerror(errno ? errno : ENOMEM));

    progress_t p = {.next_report = spec.batch, .classify = spec.loss == MNN_LOSS_XENT};
    clock_gettime(CLOCK_MONOTONIC, &p.t0);
    if (!quiet)
        fprintf(stderr, "%12s %11s %11s %9s %10s\n", "records", "avg_loss", "since_last",
                p.classify ? "prog_acc" : "", "rec/s");
    for (;;) {
        feed_batch_t *b = feed_next(feed, &stop_requested);
        if (!b)
            break; /* a signal while waiting for input */
        if (b->n) {
            mnn_batch_stats_t bs;
            if ((rc = mnn_model_train_batch(&model, &opt, b->x, b->y, b->n, &bs)) < 0)
                die(EXIT_RUNTIME, "training failed: %s", mnn_strerror(rc));
            p.records += b->n;
            p.records_since += b->n;
            p.loss += bs.loss_sum;
            p.loss_since += bs.loss_sum;
            p.correct += bs.correct;
            st.records_seen += b->n;
            if (!quiet && p.records >= p.next_report) {
                report(&p, "");
                while (p.next_report <= p.records)
                    p.next_report *= 2;
            }
        }
        int end = b->end, error = b->error;
        if (error)
            die(EXIT_RUNTIME, "%s", b->msg);
        feed_release(feed, b);
        if (end || stop_requested)
            break;
    }
    if (stop_requested && !quiet)
        warnx_("stopping on a signal after %llu records", (unsigned long long)p.records);
    char first[700];
    uint64_t skipped;
    feed_stop(feed, &skipped, first, sizeof first);
    if (p.records == 0 && !stop_requested)
        die(EXIT_RUNTIME, "stdin: no records to learn from%s",
            skipped ? " (all were skipped as bad)" : "");
    if (!quiet && p.records_since)
        report(&p, "");
    if (!quiet && p.records) {
        fprintf(stderr, "%s: %llu records, %llu steps, average loss %.6f", prog,
                (unsigned long long)p.records, (unsigned long long)opt.step,
                p.loss / (double)p.records);
        if (p.classify)
            fprintf(stderr, ", progressive accuracy %.4f",
                    (double)p.correct / (double)p.records);
        fputc('\n', stderr);
    }
    if (skipped)
        warnx_("skipped %llu bad record%s (first: %s)", (unsigned long long)skipped,
               skipped == 1 ? "" : "s", first);

    st.step = opt.step;
    st.loss_sum = p.loss;
    st.correct = p.correct;
    if (!sde || !*sde)
        created = (int64_t)time(NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (mnn_ckpt_write(out, &model, &opt, &st, NULL, created, force, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    printf("%s\n", out);
    out_close();
    if (verbose)
        report_peak_rss();
    mnn_optim_free(&opt);
    mnn_model_free(&model);
    mnn_spec_free(&spec);
    return EXIT_OK;
}
