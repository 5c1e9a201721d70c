/* infer - predictions for the records on stdin, one output line per input
 * record, in order.  '#' lines pass through unchanged.  With --eval the
 * records' labels are scored and a report goes to stderr. */
#include <config.h>

#include "cli.h"
#include "feed.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static noreturn void help(void)
{
    printf(
        "Usage: %s -m CKPT [OPTION]... < RECORDS\n"
        "Predict the records read from stdin with a trained model.  One line is\n"
        "written per input record, in order: 'pred,confidence' for a classifier\n"
        "(confidence = the largest class probability), the predicted value for a\n"
        "regression model.  '#' lines are copied through in place.\n"
        "\n"
        "  -m, --model CKPT       checkpoint directory (or a directory with a\n"
        "                         'latest' link), as written by sgd-train\n"
        "      --proba            print all class probabilities instead\n"
        "      --eval             score the labels: accuracy, per-class accuracy and\n"
        "                         the confusion matrix on stderr (stdout unchanged)\n"
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
        "Exit status: 0 success, 1 data or runtime error, 2 usage error.\n"
        "See infer(1) and mini-nn(7).\n",
        prog);
    out_close();
    exit(EXIT_OK);
}

typedef struct {
    size_t K;
    uint64_t n, correct;
    uint64_t *confusion; /* K x K: rows label, columns prediction */
    double se, ae;       /* regression: squared and absolute errors */
} eval_t;

static void eval_report(const eval_t *e, int classify)
{
    if (e->n == 0) {
        fprintf(stderr, "%s: eval: no records\n", prog);
        return;
    }
    if (!classify) {
        fprintf(stderr, "%s: eval: %llu records, mse %.6g, rmse %.6g, mae %.6g\n", prog,
                (unsigned long long)e->n, e->se / (double)e->n, sqrt(e->se / (double)e->n),
                e->ae / (double)e->n);
        return;
    }
    const size_t K = e->K;
    fprintf(stderr, "%s: eval: %llu records, accuracy %.4f\n", prog,
            (unsigned long long)e->n, (double)e->correct / (double)e->n);
    fprintf(stderr, "%8s %10s %10s\n", "class", "records", "accuracy");
    for (size_t k = 0; k < K; k++) {
        uint64_t row = 0;
        for (size_t j = 0; j < K; j++)
            row += e->confusion[k * K + j];
        if (row)
            fprintf(stderr, "%8zu %10llu %10.4f\n", k, (unsigned long long)row,
                    (double)e->confusion[k * K + k] / (double)row);
        else
            fprintf(stderr, "%8zu %10d %10s\n", k, 0, "-");
    }
    fprintf(stderr, "confusion matrix (rows: label, columns: prediction)\n%6s", "");
    for (size_t j = 0; j < K; j++)
        fprintf(stderr, " %6zu", j);
    fputc('\n', stderr);
    for (size_t k = 0; k < K; k++) {
        fprintf(stderr, "%6zu", k);
        for (size_t j = 0; j < K; j++)
            fprintf(stderr, " %6llu", (unsigned long long)e->confusion[k * K + j]);
        fputc('\n', stderr);
    }
}

/* The last digits of a BLAS product depend on the shape it is given and on
 * a row's place in it.  So that the output depends on the input alone and
 * not on when it arrives, batches are always full (but the last) unless
 * line-buffered, and then each record is computed alone. */
static int predict(mnn_model_t *m, feed_batch_t *b, int linebuf, float *out)
{
    const size_t C = m->spec.input, K = m->spec.outputs;
    if (linebuf) {
        for (size_t i = 0; i < b->n; i++) {
            int rc = mnn_model_predict(m, b->x + i * C, 1, out + i * K);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    return mnn_model_predict(m, b->x, b->n, out);
}

static void put_comments(const feed_batch_t *b, size_t *ci, size_t before)
{
    while (*ci < b->ncom && b->cpos[*ci] <= before) {
        fputs(b->ctext + b->coff[*ci], stdout);
        fputc('\n', stdout);
        (*ci)++;
    }
}

int main(int argc, char **argv)
{
    enum { O_PROBA = 256, O_EVAL, O_NOLABEL, O_LINEBUF, O_BATCH, O_THREADS, O_ONERR };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"proba", no_argument, NULL, O_PROBA},
        {"eval", no_argument, NULL, O_EVAL},
        {"no-label", no_argument, NULL, O_NOLABEL},
        {"line-buffered", no_argument, NULL, O_LINEBUF},
        {"batch", required_argument, NULL, O_BATCH},
        {"threads", required_argument, NULL, O_THREADS},
        {"on-error", required_argument, NULL, O_ONERR},
        CLI_COMMON_LONGOPTS};
    const char *ckpt = NULL;
    int proba = 0, do_eval = 0, no_label = 0, linebuf = 0, skip = 0, quiet = 0,
        verbose = 0, c;
    size_t batch = 256, threads = 0;

    cli_init("infer");
    out_setup();
    while ((c = getopt_long(argc, argv, "m:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (ckpt)
                usage_error("-m: only one model is supported");
            ckpt = optarg;
            break;
        case O_PROBA: proba = 1; break;
        case O_EVAL: do_eval = 1; break;
        case O_NOLABEL: no_label = 1; break;
        case O_LINEBUF: linebuf = 1; break;
        case O_BATCH: batch = opt_size("--batch", optarg, 1, 1 << 20); break;
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
    if (!ckpt)
        usage_error("a checkpoint is required (-m CKPT)");
    if (do_eval && no_label)
        usage_error("--eval needs labels; it cannot be used with --no-label");
    if (isatty(STDOUT_FILENO))
        linebuf = 1;
    set_threads(threads);

    mnn_model_t m;
    mnn_diag_t d;
    if (mnn_ckpt_load(ckpt, &m, NULL, NULL, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    const int classify = m.spec.loss == MNN_LOSS_XENT;
    const size_t K = m.spec.outputs;
    if (verbose)
        warnx_("%s: %zu inputs, %zu %s, %zu parameters", ckpt, m.spec.input, K,
               classify ? "classes" : "outputs", m.nparams);

    float *out = mnn_calloc_aligned(batch, K * sizeof(float));
    eval_t ev = {.K = K};
    if (do_eval && classify)
        ev.confusion = calloc(K * K, sizeof(uint64_t));
    if (!out || (do_eval && classify && !ev.confusion) || mnn_model_reserve(&m, batch) < 0)
        die(EXIT_RUNTIME, "out of memory");

    feed_opts_t fo = {.name = "stdin", .batch = batch, .skip_errors = skip,
                      .keep_comments = 1, .eager = linebuf, .verbose = verbose};
    fo.fmt.nfeat = m.spec.input;
    fo.fmt.has_label = !no_label;
    fo.fmt.classes = classify ? K : 0;
    feed_t *feed = feed_start(STDIN_FILENO, &fo);
    if (!feed)
        die(EXIT_RUNTIME, "cannot start the reader: %s", strerror(errno ? errno : ENOMEM));

    uint64_t records = 0;
    for (;;) {
        feed_batch_t *b = feed_next(feed, NULL);
        int rc = predict(&m, b, linebuf, out);
        if (rc < 0)
            die(EXIT_RUNTIME, "inference failed: %s", mnn_strerror(rc));
        size_t ci = 0;
        for (size_t i = 0; i < b->n; i++) {
            const float *p = out + i * K;
            put_comments(b, &ci, i);
            size_t best = 0;
            for (size_t k = 1; k < K; k++)
                if (p[k] > p[best])
                    best = k;
            if (!classify)
                printf("%.9g\n", (double)p[0]);
            else if (proba) {
                for (size_t k = 0; k < K; k++)
                    printf(k ? ",%.9g" : "%.9g", (double)p[k]);
                putchar('\n');
            } else
                printf("%zu,%.9g\n", best, (double)p[best]);
            if (do_eval) {
                ev.n++;
                if (classify) {
                    size_t y = (size_t)b->y[i];
                    ev.correct += best == y;
                    ev.confusion[y * K + best]++;
                } else {
                    double e = (double)p[0] - (double)b->y[i];
                    ev.se += e * e;
                    ev.ae += fabs(e);
                }
            }
        }
        put_comments(b, &ci, b->n);
        records += b->n;
        if (linebuf)
            fflush(stdout);
        out_check();
        int end = b->end;
        if (b->error)
            die(EXIT_RUNTIME, "%s", b->msg);
        feed_release(feed, b);
        if (end)
            break;
    }
    char first[700];
    uint64_t skipped;
    feed_stop(feed, &skipped, first, sizeof first);
    out_close();
    if (skipped)
        warnx_("skipped %llu bad record%s (first: %s)", (unsigned long long)skipped,
               skipped == 1 ? "" : "s", first);
    if (do_eval && ev.n == 0)
        die(EXIT_RUNTIME, "stdin: no records to evaluate");
    if (do_eval && !quiet)
        eval_report(&ev, classify);
    if (verbose) {
        warnx_("%llu records", (unsigned long long)records);
        report_peak_rss();
    }
    free(ev.confusion);
    mnn_free(out);
    mnn_model_free(&m);
    return EXIT_OK;
}
