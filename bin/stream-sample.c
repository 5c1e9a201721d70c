/* stream-sample - a sample of the records of a stream: Bernoulli, 1 in N,
 * or a reservoir (uniform, weighted, per class, time-decayed) emitted at the
 * end of the input, every N records and on SIGUSR1.  '#' lines pass
 * through, in order, as they come.  The program owns the options, the input,
 * the records held and their output; the algorithms (which record is kept,
 * in which slot) are lib/sample.c's. */
#include <config.h>

#include "cli.h"
#include "lines.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LINE ((size_t)64 << 20) /* longest record accepted */

static noreturn void help(void)
{
    printf(
        "Usage: %s MODE [OPTION]... [FILE]\n"
        "Write a sample of the records of FILE (default: stdin) to stdout.  Lines\n"
        "that start with '#' are copied through, in order, as they come.\n"
        "\n"
        "Modes (one of):\n"
        "  -p, --probability P    each record with probability P (0 < P <= 1), as it\n"
        "                         comes (Bernoulli)\n"
        "      --every N          records 1, N+1, 2N+1, ...: one in N, as they come\n"
        "  -k, --reservoir K      a uniform sample of K records (Algorithm L)\n"
        "      --weight-col C     with -k: a weighted sample (A-ExpJ), each record's\n"
        "                         weight in its field C (1-based; the label is field\n"
        "                         1; of an idx:val field, the value)\n"
        "      --decay LAMBDA     with -k: record i weighs exp(LAMBDA * i), so recent\n"
        "                         records are favoured (0 < LAMBDA <= 1000)\n"
        "      --per-class K      a uniform sample of K records of each class\n"
        "                         (labels 0 to 999999)\n"
        "\n"
        "A sample (-k, --per-class) is written in input order at the end of the\n"
        "input, and also:\n"
        "      --emit-every N     after every N records\n"
        "                         and when the process gets SIGUSR1; each of these\n"
        "                         and the final one then follow a line\n"
        "                         '# stream-sample: R of N records'.\n"
        "\n"
        "      --seed S           random seed (default 1): the same input and seed\n"
        "                         give the same sample\n"
        "      --on-error=MODE    fail (default) or skip bad records, counting them\n"
        "  -q, --quiet            only errors on stderr\n"
        "  -v, --verbose          report the records read and written on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Every record's first field (the label) must be a number; --per-class wants\n"
        "a class id, --weight-col a weight >= 0 (0: never drawn).  Features are not\n"
        "parsed here.\n"
        "Exit status: 0 success, 1 data or runtime error, 2 usage error.\n"
        "See stream-sample(1) and mini-nn(7).\n",
        prog);
    out_close();
    exit(EXIT_OK);
}

/* ---- the input ---------------------------------------------------------------- */

static badrec_t bad = {.name = "stdin"};

/* Field c (1-based) as a weight; 0 or -1 (reported). */
static int read_weight(const char *line, size_t len, uint64_t lineno, size_t c, double *w)
{
    const char *p = line, *end = line + len;
    char b[64];
    for (size_t f = 1; f < c; f++) {
        p = label_end(p, end);
        if (p == end)
            return badrec(&bad, lineno, "no field %zu (the weight): the record has %zu", c, f);
        p++;
    }
    const char *q = label_end(p, end), *colon = memchr(p, ':', (size_t)(q - p));
    if (colon) /* idx:val */
        p = colon + 1;
    if (p == q)
        return badrec(&bad, lineno, "field %zu (the weight) is empty", c);
    if (mnn_parse_double(p, q, w) < 0)
        return badrec(&bad, lineno, "weight '%s' (field %zu) is not a finite number",
                      excerpt(p, q, b, sizeof b), c);
    if (*w < 0)
        return badrec(&bad, lineno, "weight %s (field %zu) is negative", excerpt(p, q, b, sizeof b),
                      c);
    return 0;
}

/* ---- samples ------------------------------------------------------------------ */

typedef line_copy_t slot_t; /* rec: its record number, for input order */

/* One reservoir's slots; n of them filled (slots fill from 0 up). */
typedef struct {
    slot_t *slot;
    size_t k, n;
} held_t;

static void hold(held_t *h, long i, const char *line, size_t len, uint64_t rec)
{
    if ((size_t)i >= h->n)
        h->n = (size_t)i + 1;
    line_copy_set(&h->slot[i], line, len, rec);
}

static void held_init(held_t *h, size_t k)
{
    h->k = k;
    h->n = 0;
    h->slot = calloc(k ? k : 1, sizeof *h->slot);
    if (!h->slot)
        die(EXIT_RUNTIME, "out of memory for a sample of %zu", k);
}

static void held_free(held_t *h)
{
    for (size_t i = 0; i < h->k; i++)
        free(h->slot[i].text);
    free(h->slot);
}

static int by_rec(const void *a, const void *b)
{
    const slot_t *x = *(const slot_t *const *)a, *y = *(const slot_t *const *)b;
    return x->rec < y->rec ? -1 : x->rec > y->rec;
}

/* --per-class: a reservoir of k and its slots for each label seen. */
typedef struct {
    held_t *held;         /* per class; its slots allocated at its first record */
    mnn_reservoir_t *res; /* per class */
    size_t n;             /* classes: 1 + the largest label seen */
} classes_t;

/* Class y's reservoir and slots, made when y is new. */
static void classes_need(classes_t *c, size_t y, size_t k, mnn_rng_t *rng)
{
    if (y >= c->n) {
        size_t n = y + 1;
        held_t *nh = realloc(c->held, n * sizeof *nh);
        if (nh)
            c->held = nh;
        mnn_reservoir_t *nr = nh ? realloc(c->res, n * sizeof *nr) : NULL;
        if (!nh || !nr)
            die(EXIT_RUNTIME, "out of memory for class %zu", y);
        c->res = nr;
        for (size_t j = c->n; j < n; j++) {
            c->held[j].slot = NULL;
            c->held[j].k = c->held[j].n = 0;
            mnn_reservoir_init(&c->res[j], k, rng);
        }
        c->n = n;
    }
    if (!c->held[y].slot)
        held_init(&c->held[y], k);
}

/* Writes the sample as it stands (held's records and every class's), in
 * input order, after a '# stream-sample: R of N records' line if marked;
 * returns the records written. */
static size_t emit(const held_t *held, const classes_t *c, int marked, uint64_t recs)
{
    size_t total = held->n;
    for (size_t j = 0; j < c->n; j++)
        total += c->held[j].n;
    const slot_t **all = malloc((total ? total : 1) * sizeof *all);
    if (!all)
        die(EXIT_RUNTIME, "out of memory");
    size_t n = 0;
    for (size_t j = 0; j < held->n; j++)
        all[n++] = &held->slot[j];
    for (size_t y = 0; y < c->n; y++)
        for (size_t j = 0; j < c->held[y].n; j++)
            all[n++] = &c->held[y].slot[j];
    qsort(all, n, sizeof *all, by_rec);
    if (marked) /* several emissions: each says where it starts */
        printf("# stream-sample: %zu of %llu records\n", n, (unsigned long long)recs);
    for (size_t j = 0; j < n; j++)
        fwrite(all[j]->text, 1, all[j]->len, stdout);
    free(all);
    return n;
}

int main(int argc, char **argv)
{
    enum { O_EVERY = 256, O_WCOL, O_DECAY, O_PERCLASS, O_EMIT, O_SEED, O_ONERR };
    static const struct option longopts[] = {
        {"probability", required_argument, NULL, 'p'},
        {"every", required_argument, NULL, O_EVERY},
        {"reservoir", required_argument, NULL, 'k'},
        {"weight-col", required_argument, NULL, O_WCOL},
        {"decay", required_argument, NULL, O_DECAY},
        {"per-class", required_argument, NULL, O_PERCLASS},
        {"emit-every", required_argument, NULL, O_EMIT},
        {"seed", required_argument, NULL, O_SEED},
        {"on-error", required_argument, NULL, O_ONERR},
        CLI_COMMON_LONGOPTS};
    enum { M_NONE, M_BERNOULLI, M_EVERY, M_RESERVOIR, M_PERCLASS } mode = M_NONE;
    double p = 0, decay = 0;
    uint64_t every = 0, emit_every = 0, seed = 1;
    size_t k = 0, wcol = 0;
    int verbose = 0, modes = 0, c;
    cli_init("stream-sample");
    out_setup();
    while ((c = getopt_long(argc, argv, "p:k:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (opt_number(optarg, &p) < 0 || !(p > 0 && p <= 1))
                usage_error("-p: '%s' is not a probability in (0, 1]", optarg);
            mode = M_BERNOULLI, modes++;
            break;
        case O_EVERY: every = opt_size("--every", optarg, 1, SIZE_MAX), mode = M_EVERY, modes++; break;
        case 'k': k = opt_size("-k", optarg, 1, 100000000), mode = M_RESERVOIR, modes++; break;
        case O_PERCLASS:
            k = opt_size("--per-class", optarg, 1, 100000000), mode = M_PERCLASS, modes++;
            break;
        case O_WCOL: wcol = opt_size("--weight-col", optarg, 1, 1000000000); break;
        case O_DECAY:
            if (opt_number(optarg, &decay) < 0 || !(decay > 0) || decay > 1000)
                usage_error("--decay: '%s' is not a rate in (0, 1000]", optarg);
            break;
        case O_EMIT: emit_every = opt_size("--emit-every", optarg, 1, SIZE_MAX); break;
        case O_SEED: seed = opt_u64("--seed", optarg); break;
        case O_ONERR: bad.skip = opt_on_error(optarg); break;
        default: cli_common(c, &bad.quiet, &verbose, help);
        }
    }
    if (modes != 1)
        usage_error(modes ? "give one of -p, --every, -k, --per-class"
                          : "a mode is required: -p, --every, -k or --per-class");
    if ((wcol || decay) && mode != M_RESERVOIR)
        usage_error("%s goes with -k", wcol ? "--weight-col" : "--decay");
    if (wcol && decay)
        usage_error("--weight-col and --decay do not go together");
    if (emit_every && mode != M_RESERVOIR && mode != M_PERCLASS)
        usage_error("--emit-every goes with -k or --per-class");
    /* SIGUSR1 wakes a read that waits and asks for an emission; caught
     * before the input opens (a FIFO waits for its writer) */
    const int sampling = mode == M_RESERVOIR || mode == M_PERCLASS;
    int usr1_fd = -1;
    if (sampling) {
        static const int usr1[] = {SIGUSR1};
        usr1_fd = signals_to_pipe(usr1, 1, NULL);
    } else {
        signal(SIGUSR1, SIG_IGN); /* nothing is held back to emit */
    }
    const int fd = open_input(argc - optind, argv + optind, &bad);

    mnn_rng_t rng;
    mnn_rng_seed(&rng, seed);
    mnn_linereader_t lr;
    if (mnn_lr_init(&lr, fd, MAX_LINE) < 0)
        die(EXIT_RUNTIME, "out of memory");
    lr.cancel_fd = usr1_fd;

    /* the samples */
    mnn_reservoir_t res;
    mnn_wres_t wres;
    mnn_topk_t top;
    held_t held = {0};
    classes_t classes = {0};
    if (mode == M_RESERVOIR) {
        held_init(&held, k);
        if (wcol ? mnn_wres_init(&wres, k, &rng) < 0
                 : decay ? mnn_topk_init(&top, k) < 0 : (mnn_reservoir_init(&res, k, &rng), 0))
            die(EXIT_RUNTIME, "out of memory for a sample of %zu", k);
    }
    mnn_bernoulli_t bern;
    if (mode == M_BERNOULLI && mnn_bernoulli_init(&bern, p, &rng) < 0)
        die(EXIT_RUNTIME, "-p %g: not a probability", p); /* checked above */

    uint64_t recs = 0, written = 0, emissions = 0, emitted_at = UINT64_MAX;
    int marked = emit_every != 0; /* emissions carry a '#' line */
    const char *line;
    size_t len;
    for (int done = 0; !done;) {
        int rc = next_record(&lr, &bad, NULL, &line, &len);
        int emit_now = 0;
        if (rc == MNN_ECANCELED) {
            drain_signal_pipe(lr.cancel_fd);
            emit_now = 1;
            marked = 1;
        } else if (rc == 0) {
            done = 1;
            emit_now = sampling; /* the sample, at the end of the input */
        } else {
            double label, w = 1;
            if (read_label(&bad, line, len, lr.lineno, &label) < 0)
                continue;
            const uint64_t i = recs++;
            long s = -1;
            switch (mode) {
            case M_BERNOULLI:
                s = mnn_bernoulli_offer(&bern) ? 0 : -1;
                break;
            case M_EVERY:
                s = i % every == 0 ? 0 : -1;
                break;
            case M_RESERVOIR:
                if (wcol) {
                    if (read_weight(line, len, lr.lineno, wcol, &w) < 0) {
                        recs--;
                        continue;
                    }
                    s = mnn_wres_offer(&wres, w);
                } else if (decay)
                    s = mnn_topk_push(&top, mnn_decay_key(&rng, decay, i));
                else
                    s = mnn_reservoir_offer(&res);
                if (s >= 0)
                    hold(&held, s, line, len, i + 1);
                break;
            case M_PERCLASS: {
                if (check_class(&bad, line, len, lr.lineno, label) < 0) {
                    recs--;
                    continue;
                }
                const size_t y = (size_t)label;
                classes_need(&classes, y, k, &rng);
                s = mnn_reservoir_offer(&classes.res[y]);
                if (s >= 0)
                    hold(&classes.held[y], s, line, len, i + 1);
                break;
            }
            case M_NONE: break;
            }
            if (!sampling && s >= 0) {
                fwrite(line, 1, len, stdout);
                putchar('\n');
                written++;
            }
            if (emit_every && recs % emit_every == 0)
                emit_now = 1;
        }
        if (!emit_now || (done && emitted_at == recs)) /* the end adds nothing new */
            continue;
        written += emit(&held, &classes, marked, recs);
        emissions++;
        emitted_at = recs;
        fflush(stdout);
        out_check();
    }
    mnn_lr_free(&lr);
    if (mode == M_RESERVOIR) {
        held_free(&held);
        if (wcol)
            mnn_wres_free(&wres);
        else if (decay)
            mnn_topk_free(&top);
    }
    for (size_t y = 0; y < classes.n; y++)
        if (classes.held[y].slot)
            held_free(&classes.held[y]);
    free(classes.held);
    free(classes.res);
    if (fd != STDIN_FILENO)
        close(fd);
    out_check();
    badrec_report(&bad);
    if (verbose)
        warnx_("%llu records read, %llu written", (unsigned long long)recs,
               (unsigned long long)written);
    out_close();
    return EXIT_OK;
}
