/* infer - predictions for the records on stdin, one output line per input
 * record, in order.  '#' lines pass through unchanged.
 *
 * The local answer comes from one model, from a model's early exits, or from
 * an ensemble (averaged, or --anytime: member after member until the running
 * average is confident).  With --forward the records whose local answer is
 * not confident enough go to a co-process (forward.c), and each output line
 * says which tier answered.  --eval scores the labels; --calibrate fits a
 * softmax temperature and writes it into a new checkpoint.  This file holds
 * the options and main; infer.h says where the rest is. */
#include <config.h>

#include "infer.h"

#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static noreturn void help(void)
{
    printf(
        "Usage: %s -m CKPT [-m CKPT]... [OPTION]... < RECORDS\n"
        "Predict the records read from stdin.  One line is written per input\n"
        "record, in order: 'pred,confidence' for a classifier (confidence = the\n"
        "largest class probability), 'pred,confidence,tier' with --forward, the\n"
        "predicted value for a regression model.  '#' lines are copied through.\n"
        "\n"
        "Models:\n"
        "  -m, --model CKPT       checkpoint: a directory (or a root with 'latest'), an\n"
        "                         archive (.tar.zst), or a directory ckpt-ship received\n"
        "                         into; several make an ensemble\n"
        "      --weights W,W,...  ensemble weights (default equal)\n"
        "      --anytime          ask the ensemble's members in order and stop once\n"
        "                         the running average is confident (--exit-threshold)\n"
        "      --exit-threshold T stop at the first early exit (spec 'exits:') or, with\n"
        "                         --anytime, the first member whose answer reaches T\n"
        "      --criterion C      confidence measure: maxprob (default), margin\n"
        "                         (top two probabilities apart) or entropy (1 - H/log K)\n"
        "\n"
        "Tiers:\n"
        "  -f, --forward CMD      start CMD (with sh -c) once and send it the records\n"
        "                         whose local confidence is below the threshold; it\n"
        "                         answers one line per record ('pred,confidence' or\n"
        "                         the probabilities), e.g. 'ssh cloud infer -m big'\n"
        "      --threshold T      forward when the confidence is below T\n"
        "      --forward-fraction F  choose T so that a fraction F of the records of\n"
        "                         --calibration FILE would be forwarded\n"
        "      --calibration FILE records to choose that threshold from\n"
        "      --window N         forwarded records in flight, at most (default 256);\n"
        "                         beyond it the local answer is kept (fallback:shed)\n"
        "      --forwarded FILE   append every record it forwards to FILE, as it came\n"
        "                         (label and all): the traffic of the tier behind\n"
        "      --deadline MS      wait at most MS for a remote answer, then keep the\n"
        "                         local one (fallback:timeout; default 1000); counted\n"
        "                         from when CMD is up (its first line)\n"
        "      --start-timeout SEC  how long CMD may take to come up (ssh connecting,\n"
        "                         a model loading) while records wait (default 10)\n"
        "\n"
        "Evaluation and calibration:\n"
        "      --eval             score the labels: accuracy, per-class accuracy,\n"
        "                         confusion matrix, calibration error, tiers, latency\n"
        "                         and throughput on stderr (stdout unchanged)\n"
        "      --stats-json FILE  with --eval: the same figures as JSON\n"
        "      --coverage-curve FILE  with --eval: accuracy against the fraction\n"
        "                         forwarded, as TSV\n"
        "      --calibrate        fit a softmax temperature on the labelled records\n"
        "                         (minimum NLL) and write a new checkpoint (-o DIR)\n"
        "  -o, --output DIR       the checkpoint --calibrate writes\n"
        "\n"
        "Input and output:\n"
        "      --proba            print all class probabilities instead\n"
        "      --no-label         records carry no label: every field is a feature\n"
        "      --line-buffered    answer each record as soon as it arrives (the\n"
        "                         default when stdout is a terminal)\n"
        "      --batch N          records per batch otherwise (default 256)\n"
        "      --threads N        OpenBLAS threads (default: OPENBLAS_NUM_THREADS)\n"
        "      --on-error=MODE    fail (default) or skip bad records (no output line\n"
        "                         for them), counting them\n"
        "  -q, --quiet            no --eval report; only errors on stderr\n"
        "  -v, --verbose          more detail on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "SIGHUP reloads the models between batches.  A '#!flush' input line makes\n"
        "infer answer the records before it at once.\n"
        "Exit status: 0 success, 1 data or runtime error, 2 usage error.\n"
        "See infer(1) and mini-nn(7).\n",
        prog);
    out_close();
    exit(EXIT_OK);
}


/* What the command line asks for. */
typedef struct {
    models_t ms;
    run_opts_t r;
    float weights[MAX_MODELS];
    size_t nweights, threads;
    int anytime, calibrate, window_given, deadline_given;
    float exit_t; /* NAN: none given */
    mnn_crit_t crit;
    const char *outdir;
} args_t;

static size_t parse_weights(const char *s, float *w)
{
    size_t n = 0;
    const char *p = s;
    for (;;) {
        const char *c = strchr(p, ',');
        const char *end = c ? c : p + strlen(p);
        double v;
        if (n == MAX_MODELS || mnn_parse_double(p, end, &v) < 0 || !(v >= 0))
            usage_error("--weights: '%s' is not a list of weights >= 0", s);
        w[n++] = (float)v;
        if (!c)
            break;
        p = c + 1;
    }
    double sum = 0;
    for (size_t j = 0; j < n; j++)
        sum += w[j];
    if (!(sum > 0))
        usage_error("--weights: at least one weight must be above 0");
    return n;
}

static void parse_args(int argc, char **argv, args_t *a)
{
    enum {
        O_PROBA = 256, O_EVAL, O_NOLABEL, O_LINEBUF, O_BATCH, O_THREADS, O_ONERR, O_WEIGHTS,
        O_ANYTIME, O_EXIT_T, O_CRIT, O_THRESHOLD, O_FRACTION, O_CALDATA, O_WINDOW,
        O_DEADLINE, O_STATS, O_COVERAGE, O_CALIBRATE, O_START, O_FORWARDED
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"weights", required_argument, NULL, O_WEIGHTS},
        {"anytime", no_argument, NULL, O_ANYTIME},
        {"exit-threshold", required_argument, NULL, O_EXIT_T},
        {"criterion", required_argument, NULL, O_CRIT},
        {"forward", required_argument, NULL, 'f'},
        {"threshold", required_argument, NULL, O_THRESHOLD},
        {"forward-fraction", required_argument, NULL, O_FRACTION},
        {"forwarded", required_argument, NULL, O_FORWARDED},
        {"calibration", required_argument, NULL, O_CALDATA},
        {"window", required_argument, NULL, O_WINDOW},
        {"deadline", required_argument, NULL, O_DEADLINE},
        {"start-timeout", required_argument, NULL, O_START},
        {"stats-json", required_argument, NULL, O_STATS},
        {"coverage-curve", required_argument, NULL, O_COVERAGE},
        {"calibrate", no_argument, NULL, O_CALIBRATE},
        {"output", required_argument, NULL, 'o'},
        {"proba", no_argument, NULL, O_PROBA},
        {"eval", no_argument, NULL, O_EVAL},
        {"no-label", no_argument, NULL, O_NOLABEL},
        {"line-buffered", no_argument, NULL, O_LINEBUF},
        {"batch", required_argument, NULL, O_BATCH},
        {"threads", required_argument, NULL, O_THREADS},
        {"on-error", required_argument, NULL, O_ONERR},
        CLI_COMMON_LONGOPTS};
    int c;
    while ((c = getopt_long(argc, argv, "m:f:o:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (a->ms.n == MAX_MODELS)
                usage_error("-m: at most %d models", MAX_MODELS);
            a->ms.path[a->ms.n++] = optarg;
            break;
        case O_WEIGHTS: a->nweights = parse_weights(optarg, a->weights); break;
        case O_ANYTIME: a->anytime = 1; break;
        case O_EXIT_T: a->exit_t = opt_float("--exit-threshold", optarg); break;
        case O_CRIT:
            if (mnn_crit_parse(optarg, &a->crit) < 0)
                usage_error("--criterion: '%s' is not maxprob, margin or entropy", optarg);
            break;
        case 'f': a->r.forward = optarg; break;
        case O_THRESHOLD: a->r.threshold = opt_float("--threshold", optarg); break;
        case O_FRACTION: a->r.fraction = opt_float("--forward-fraction", optarg); break;
        case O_CALDATA: a->r.caldata = optarg; break;
        case O_FORWARDED: a->r.forwarded = optarg; break;
        case O_WINDOW:
            a->r.window = opt_size("--window", optarg, 1, 1 << 20);
            a->window_given = 1;
            break;
        case O_DEADLINE:
            a->r.deadline_ms = opt_size("--deadline", optarg, 1, 86400000);
            a->deadline_given = 1;
            break;
        case O_START:
            a->r.start_timeout = opt_float("--start-timeout", optarg);
            if (!(a->r.start_timeout > 0 && a->r.start_timeout <= 86400))
                usage_error("--start-timeout: '%s' is not a number of seconds in (0, 86400]",
                            optarg);
            a->deadline_given = 1;
            break;
        case O_STATS: a->r.stats_json = optarg; break;
        case O_COVERAGE: a->r.coverage = optarg; break;
        case O_CALIBRATE: a->calibrate = 1; break;
        case 'o': a->outdir = optarg; break;
        case O_PROBA: a->r.proba = 1; break;
        case O_EVAL: a->r.eval = 1; break;
        case O_NOLABEL: a->r.no_label = 1; break;
        case O_LINEBUF: a->r.linebuf = 1; break;
        case O_BATCH: a->r.batch = opt_size("--batch", optarg, 1, 1 << 20); break;
        case O_THREADS: a->threads = opt_size("--threads", optarg, 1, 1024); break;
        case O_ONERR: a->r.skip = opt_on_error(optarg); break;
        default: cli_common(c, &a->r.quiet, &a->r.verbose, help);
        }
    }
}

/* Options that exclude or need each other: usage errors. */
static void check_args(int argc, char **argv, args_t *a)
{
    if (optind < argc)
        usage_error("unexpected argument '%s' (records are read from stdin)", argv[optind]);
    if (!a->ms.n)
        usage_error("a checkpoint is required (-m CKPT)");
    for (size_t j = 0; j < a->ms.n; j++)
        if (!strcmp(a->ms.path[j], "-"))
            usage_error("-m -: stdin carries the records; give the checkpoint as a file or a "
                        "directory");
    if (a->r.eval && a->r.no_label)
        usage_error("--eval needs labels; it cannot be used with --no-label");
    if ((a->r.stats_json || a->r.coverage) && !a->r.eval)
        usage_error("%s needs --eval", a->r.stats_json ? "--stats-json" : "--coverage-curve");
    if (a->nweights && a->nweights != a->ms.n)
        usage_error("--weights: %zu weights for %zu models", a->nweights, a->ms.n);
    if (a->anytime && a->ms.n < 2)
        usage_error("--anytime needs an ensemble (two -m or more)");
    if (a->anytime && isnan(a->exit_t))
        usage_error("--anytime needs --exit-threshold T");
    if (!isnan(a->exit_t) && a->ms.n > 1 && !a->anytime)
        usage_error("--exit-threshold with several models needs --anytime");
    if (!isnan(a->r.threshold) && !isnan(a->r.fraction))
        usage_error("--threshold and --forward-fraction exclude each other");
    if (a->r.caldata && isnan(a->r.fraction))
        usage_error("--calibration is for --forward-fraction");
    if ((a->window_given || a->deadline_given) && !a->r.forward)
        usage_error("%s needs --forward CMD",
                    a->window_given ? "--window" : "--deadline and --start-timeout");
    if ((!isnan(a->r.threshold) || !isnan(a->r.fraction) || a->r.caldata) && !a->r.forward)
        usage_error("%s needs --forward CMD",
                    !isnan(a->r.threshold) ? "--threshold"
                    : !isnan(a->r.fraction) ? "--forward-fraction" : "--calibration");
    if (a->r.forwarded && !a->r.forward)
        usage_error("--forwarded needs --forward CMD");
    if (a->r.forwarded && !a->r.forwarded[0])
        usage_error("--forwarded: an empty file name");
    if (a->r.forwarded && !strcmp(a->r.forwarded, "-"))
        usage_error("--forwarded -: stdout carries the answers; give a file");
    if (a->r.forward && isnan(a->r.threshold) && isnan(a->r.fraction))
        usage_error("--forward needs --threshold T or --forward-fraction F");
    if (!isnan(a->r.fraction) && !(a->r.fraction >= 0 && a->r.fraction <= 1))
        usage_error("--forward-fraction: %g is not between 0 and 1", (double)a->r.fraction);
    if (!isnan(a->r.fraction) && !a->r.caldata)
        usage_error("--forward-fraction needs --calibration FILE (records to choose the "
                    "threshold from)");
    if (a->r.forward && a->r.proba)
        usage_error("--proba cannot be used with --forward (a remote answer may carry "
                    "only 'pred,confidence')");
    if (a->calibrate && (a->ms.n != 1 || a->r.forward || a->r.eval || a->r.proba ||
                         a->r.no_label || !isnan(a->exit_t) || a->nweights))
        usage_error("--calibrate takes one model and a labelled stream, and no --forward, "
                    "--eval, --proba, --no-label, --exit-threshold or --weights");
    if (a->calibrate && !a->outdir)
        usage_error("--calibrate needs -o DIR (the new checkpoint)");
    if (a->outdir && !a->calibrate)
        usage_error("-o is for --calibrate");
    if (isatty(STDOUT_FILENO))
        a->r.linebuf = 1;

}

static void on_hup(int sig)
{
    (void)sig;
    hup = 1;
}

int main(int argc, char **argv)
{
    args_t a = {.r = {.batch = 256, .window = 256, .deadline_ms = 1000, .start_timeout = 10,
                      .threshold = NAN, .fraction = NAN},
                .exit_t = NAN, .crit = MNN_CRIT_MAXPROB};
    cli_init("infer");
    out_setup();
    parse_args(argc, argv, &a);
    check_args(argc, argv, &a);
    set_threads(a.threads);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &sa, NULL);

    if (a.calibrate) {
        calibrate(a.ms.path[0], a.outdir, a.r.batch, a.r.skip, a.r.quiet);
        out_close();
        return EXIT_OK;
    }

    models_t *ms = &a.ms;
    mnn_ensemble_init(&ms->e);
    ms->e.anytime = a.anytime;
    ms->e.crit = a.crit;
    if (!isnan(a.exit_t))
        ms->e.exit_t = a.exit_t;
    ms->weights = a.nweights ? a.weights : NULL;
    ms->batch = a.r.batch;
    char err[1024];
    if (models_load(ms, err, sizeof err) < 0)
        die(EXIT_RUNTIME, "%s", err);
    const mnn_spec_t *s0 = &ms->m[0].spec;
    const int classify = s0->loss == MNN_LOSS_XENT;
    if (!classify && (a.r.forward || !isnan(a.exit_t) || a.r.coverage))
        usage_error("%s needs a classifier; %s is a regression model",
                    a.r.forward ? "--forward" : a.r.coverage ? "--coverage-curve"
                                                             : "--exit-threshold",
                    ms->path[0]);
    if (!isnan(a.exit_t) && ms->n == 1) {
        if (s0->nexits == 0)
            usage_error("--exit-threshold: %s has no early exits (spec 'exits: [...]')",
                        ms->path[0]);
        ms->e.exits = 1;
    }
    if (a.r.verbose)
        for (size_t j = 0; j < ms->n; j++)
            warnx_("%s: %zu inputs, %zu %s, %zu parameters, %zu exits, temperature %g",
                   ms->path[j], s0->input, s0->outputs, classify ? "classes" : "outputs",
                   ms->m[j].nparams, ms->m[j].spec.nexits, (double)ms->m[j].spec.temperature);
    run(ms, &a.r);
    models_free(ms);
    return EXIT_OK;
}
