/* stream-sample - a sample of the records of a stream: Bernoulli, 1 in N,
 * or a reservoir (uniform, weighted, per class, time-decayed) emitted at the
 * end of the input, every N records and on SIGUSR1.  '#' lines pass
 * through, in order, as they come.  The program owns the options, the input,
 * the records held and their output; the algorithms (which record is kept,
 * in which slot) are lib/sample.c's. */
#include <config.h>

#include "cli.h"
#include "lines.h"
#include "stream-sample.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
        "      --resume CKPT      in a pipeline with cuts: go on from this stage's state\n"
        "                         in the cut CKPT (a directory or an archive), the one\n"
        "                         the head of the pipeline resumes from\n"
        "      --ckpt-dir DIR     in a pipeline with cuts: leave this stage's part of\n"
        "                         each cut in DIR/.parts for the last stage, sgd-train\n"
        "                         --ckpt-dir DIR (the same DIR, on this machine), to\n"
        "                         take into the cut, instead of sending it down the\n"
        "                         stream (a stage behind an ssh hop sends it)\n"
        "      --on-error=MODE    fail (default) or skip bad records, counting them\n"
        "  -q, --quiet            only errors on stderr\n"
        "  -v, --verbose          report the records read and written on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "In a pipeline with cuts (its input starts with '#!ckpt-start'), the state goes\n"
        "downstream at every cut, a final cut writes the sample, and a stopped pipeline\n"
        "(a stop cut) writes none: it waits in the cut for the resumed one.  TERM and\n"
        "INT then wait for the head's stop cut.  Without --resume a stage starts afresh.\n"
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

void hold(held_t *h, long i, const char *line, size_t len, uint64_t rec)
{
    if ((size_t)i >= h->n)
        h->n = (size_t)i + 1;
    line_copy_set(&h->slot[i], line, len, rec);
}

void held_init(held_t *h, size_t k)
{
    h->k = k;
    h->n = 0;
    h->slot = calloc(k ? k : 1, sizeof *h->slot);
    if (!h->slot)
        die(EXIT_RUNTIME, "out of memory for a sample of %zu", k);
}

static void held_free(held_t *h)
{
    if (!h->slot)
        return;
    for (size_t i = 0; i < h->k; i++)
        free(h->slot[i].text);
    free(h->slot);
}

void classes_need(sample_t *s, size_t y)
{
    classes_t *c = &s->classes;
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
            mnn_reservoir_init(&c->res[j], s->k, &s->rng);
        }
        c->n = n;
    }
    if (!c->held[y].slot)
        held_init(&c->held[y], s->k);
}

void sample_init(sample_t *s, uint64_t seed)
{
    mnn_rng_seed(&s->rng, seed);
    s->recs = s->written = s->emissions = 0;
    s->emitted_at = UINT64_MAX;
    if (s->mode == M_RESERVOIR) {
        held_init(&s->held, s->k);
        if (s->wcol ? mnn_wres_init(&s->wres, s->k, &s->rng) < 0
                    : s->decay ? mnn_topk_init(&s->top, s->k) < 0
                               : (mnn_reservoir_init(&s->res, s->k, &s->rng), 0))
            die(EXIT_RUNTIME, "out of memory for a sample of %zu", s->k);
    }
    if (s->mode == M_BERNOULLI && mnn_bernoulli_init(&s->bern, s->p, &s->rng) < 0)
        die(EXIT_RUNTIME, "-p %g: not a probability", s->p); /* checked before */
}

void sample_free(sample_t *s)
{
    if (s->mode == M_RESERVOIR) {
        held_free(&s->held);
        if (s->wcol)
            mnn_wres_free(&s->wres);
        else if (s->decay)
            mnn_topk_free(&s->top);
    }
    for (size_t y = 0; y < s->classes.n; y++)
        held_free(&s->classes.held[y]);
    free(s->classes.held);
    free(s->classes.res);
}

/* x in the fewest digits that read back as x. */
static const char *shortest(double x, char buf[32])
{
    for (int prec = 1; prec < 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, x);
        double y;
        if (opt_number(buf, &y) == 0 && y == x)
            return buf;
    }
    snprintf(buf, 32, "%.17g", x);
    return buf;
}

void sample_options(const sample_t *s, char *buf, size_t size)
{
    char num[32];
    switch (s->mode) {
    case M_BERNOULLI: snprintf(buf, size, "-p %s", shortest(s->p, num)); break;
    case M_EVERY: snprintf(buf, size, "--every %llu", (unsigned long long)s->every); break;
    case M_PERCLASS: snprintf(buf, size, "--per-class %zu", s->k); break;
    case M_RESERVOIR:
        if (s->wcol)
            snprintf(buf, size, "-k %zu --weight-col %zu", s->k, s->wcol);
        else if (s->decay)
            snprintf(buf, size, "-k %zu --decay %s", s->k, shortest(s->decay, num));
        else
            snprintf(buf, size, "-k %zu", s->k);
        break;
    case M_NONE: snprintf(buf, size, "?"); break;
    }
}

int by_rec(const void *a, const void *b)
{
    const slot_t *x = *(const slot_t *const *)a, *y = *(const slot_t *const *)b;
    return x->rec < y->rec ? -1 : x->rec > y->rec;
}

/* Writes the sample as it stands (the reservoir's records and every
 * class's), in input order, after a '# stream-sample: R of N records' line
 * if marked, and counts it. */
static void emit(sample_t *s)
{
    const held_t *held = &s->held;
    const classes_t *c = &s->classes;
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
    if (s->marked) /* several emissions: each says where it starts */
        printf("# stream-sample: %zu of %llu records\n", n, (unsigned long long)s->recs);
    for (size_t j = 0; j < n; j++)
        fwrite(all[j]->text, 1, all[j]->len, stdout);
    free(all);
    s->written += n;
    s->emissions++;
    s->emitted_at = s->recs;
    fflush(stdout);
    out_check();
}

/* The record line (len bytes) offered to the sample: written at once in
 * the modes that keep records as they come; -1 when it is a bad record
 * (reported, not counted). */
static int offer(sample_t *s, const char *line, size_t len, uint64_t lineno)
{
    double label, w = 1;
    if (read_label(&bad, line, len, lineno, &label) < 0)
        return -1;
    const uint64_t i = s->recs;
    long slot = -1;
    switch (s->mode) {
    case M_BERNOULLI: slot = mnn_bernoulli_offer(&s->bern) ? 0 : -1; break;
    case M_EVERY: slot = i % s->every == 0 ? 0 : -1; break;
    case M_RESERVOIR:
        if (s->wcol) {
            if (read_weight(line, len, lineno, s->wcol, &w) < 0)
                return -1;
            slot = mnn_wres_offer(&s->wres, w);
        } else if (s->decay)
            slot = mnn_topk_push(&s->top, mnn_decay_key(&s->rng, s->decay, i));
        else
            slot = mnn_reservoir_offer(&s->res);
        if (slot >= 0)
            hold(&s->held, slot, line, len, i + 1);
        break;
    case M_PERCLASS: {
        if (check_class(&bad, line, len, lineno, label) < 0)
            return -1;
        const size_t y = (size_t)label;
        classes_need(s, y);
        slot = mnn_reservoir_offer(&s->classes.res[y]);
        if (slot >= 0)
            hold(&s->classes.held[y], slot, line, len, i + 1);
        break;
    }
    case M_NONE: break;
    }
    s->recs++;
    if ((s->mode == M_BERNOULLI || s->mode == M_EVERY) && slot >= 0) {
        fwrite(line, 1, len, stdout);
        putchar('\n');
        s->written++;
    }
    return 0;
}

/* ---- pipeline cuts ------------------------------------------------------------ */

/* The start of a pipeline with cuts: from now on TERM and INT wait for the
 * head's stop cut; with --resume, s becomes the state of stage cs->index
 * in the cut ck holds, which must be the one the head resumed from. */
static void cut_start(sample_t *s, const cut_stage_t *cs, const mnn_ckpt_t *ck,
                      const char *resume)
{
    cut_hold_signals();
    if (!ck)
        return;
    char *buf, err[256];
    size_t len;
    const uint64_t cut = cs->from;
    cut_read_part(ck, cs, &buf, &len);
    if (state_load(s, buf, len, err, sizeof err) < 0)
        die(EXIT_RUNTIME, "%s: stage %u (stream-sample) of cut %llu: %s", resume,
            (unsigned)cs->index, (unsigned long long)cut, err);
    free(buf);
}

/* This stage's part of the cut whose block ends: its whole state. */
static void cut_end(const sample_t *s, cut_stage_t *cs)
{
    static membuf_t m; /* kept from cut to cut */
    state_save(s, &m);
    if (m.len > MNN_CUT_MAX_PART)
        die(EXIT_RUNTIME, "cut %llu: the sample's state is %zu bytes, more than the %llu a "
            "stage's part may have", (unsigned long long)cs->id, m.len,
            (unsigned long long)MNN_CUT_MAX_PART);
    cut_pass_end(cs, m.p, m.len);
}

int main(int argc, char **argv)
{
    enum { O_EVERY = 256, O_WCOL, O_DECAY, O_PERCLASS, O_EMIT, O_SEED, O_ONERR, O_RESUME,
           O_CKDIR };
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
        {"resume", required_argument, NULL, O_RESUME},
        {"ckpt-dir", required_argument, NULL, O_CKDIR},
        CLI_COMMON_LONGOPTS};
    static sample_t s = {.mode = M_NONE}; /* its samplers point at its rng */
    uint64_t emit_every = 0, seed = 1;
    const char *resume = NULL, *ckdir = NULL;
    int verbose = 0, modes = 0, c;
    cli_init("stream-sample");
    out_setup();
    while ((c = getopt_long(argc, argv, "p:k:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (opt_number(optarg, &s.p) < 0 || !(s.p > 0 && s.p <= 1))
                usage_error("-p: '%s' is not a probability in (0, 1]", optarg);
            s.mode = M_BERNOULLI, modes++;
            break;
        case O_EVERY:
            s.every = opt_size("--every", optarg, 1, SIZE_MAX), s.mode = M_EVERY, modes++;
            break;
        case 'k': s.k = opt_size("-k", optarg, 1, 100000000), s.mode = M_RESERVOIR, modes++; break;
        case O_PERCLASS:
            s.k = opt_size("--per-class", optarg, 1, 100000000), s.mode = M_PERCLASS, modes++;
            break;
        case O_WCOL: s.wcol = opt_size("--weight-col", optarg, 1, 1000000000); break;
        case O_DECAY:
            if (opt_number(optarg, &s.decay) < 0 || !(s.decay > 0) || s.decay > 1000)
                usage_error("--decay: '%s' is not a rate in (0, 1000]", optarg);
            break;
        case O_EMIT: emit_every = opt_size("--emit-every", optarg, 1, SIZE_MAX); break;
        case O_SEED: seed = opt_u64("--seed", optarg); break;
        case O_ONERR: bad.skip = opt_on_error(optarg); break;
        case O_RESUME:
            if (!*optarg || !strcmp(optarg, "-"))
                usage_error("--resume: a checkpoint directory or archive, not stdin");
            resume = optarg;
            break;
        case O_CKDIR:
            if (!*optarg)
                usage_error("--ckpt-dir: empty directory name");
            ckdir = optarg;
            break;
        default: cli_common(c, &bad.quiet, &verbose, help);
        }
    }
    if (modes != 1)
        usage_error(modes ? "give one of -p, --every, -k, --per-class"
                          : "a mode is required: -p, --every, -k or --per-class");
    if ((s.wcol || s.decay) && s.mode != M_RESERVOIR)
        usage_error("%s goes with -k", s.wcol ? "--weight-col" : "--decay");
    if (s.wcol && s.decay)
        usage_error("--weight-col and --decay do not go together");
    if (emit_every && s.mode != M_RESERVOIR && s.mode != M_PERCLASS)
        usage_error("--emit-every goes with -k or --per-class");
    /* SIGUSR1 wakes a read that waits and asks for an emission; caught
     * before the input opens (a FIFO waits for its writer) */
    const int sampling = s.mode == M_RESERVOIR || s.mode == M_PERCLASS;
    int usr1_fd = -1;
    if (sampling) {
        static const int usr1[] = {SIGUSR1};
        usr1_fd = signals_to_pipe(usr1, 1, NULL);
    } else {
        signal(SIGUSR1, SIG_IGN); /* nothing is held back to emit */
    }
    /* a checkpoint that cannot be opened is an error before any input */
    const mnn_ckpt_t *ck = resume ? cli_ckpt_open(resume, NULL, MNN_OPEN_VERIFY) : NULL;
    const int fd = open_input(argc - optind, argv + optind, &bad);

    sample_init(&s, seed);
    s.marked = emit_every != 0; /* emissions carry a '#' line */
    mnn_linereader_t lr;
    if (mnn_lr_init(&lr, fd, MAX_LINE) < 0)
        die(EXIT_RUNTIME, "out of memory");
    lr.cancel_fd = usr1_fd;

    cut_stage_t cs = {.program = "stream-sample", .root = ckdir};
    const char *line;
    size_t len;
    int usr1_held = 0; /* a SIGUSR1 inside a cut's block: the emission after it */
    for (int done = 0; !done;) {
        int rc = next_record(&lr, &bad, &cs, &line, &len), emit_now = 0;
        switch (rc) {
        case MNN_ECANCELED:
            drain_signal_pipe(lr.cancel_fd);
            if (cs.in_block) /* no record may go inside it */
                usr1_held = 1;
            else
                emit_now = s.marked = 1;
            break;
        case NR_START: cut_start(&s, &cs, ck, resume); break;
        case NR_BARRIER:
            /* the source ended: the sample goes before the final cut, as at
             * the end of the input */
            if (cs.what == MNN_CUT_FINAL && sampling && s.emitted_at != s.recs)
                emit(&s);
            cut_pass_barrier(&cs);
            break;
        case NR_END:
            cut_end(&s, &cs);
            if (usr1_held)
                emit_now = s.marked = 1;
            usr1_held = 0;
            break;
        case 0:
            done = 1;
            if (resume && !cs.active)
                die(EXIT_RUNTIME, "%s: the input ended without a pipeline's start line: with "
                    "--resume the head must be stream-ingest, resumed from the same cut",
                    bad.name);
            /* a pipeline that stopped with a cut: the sample waits for the
             * resumed one; one that ended with its final cut emitted it */
            emit_now = !cut_input_ended(&cs, &bad) && sampling && s.emitted_at != s.recs;
            break;
        default:
            if (resume && !cs.active)
                die(EXIT_RUNTIME, "%s:%llu: a record before the pipeline's start line: with "
                    "--resume the head must be stream-ingest, resumed from the same cut",
                    bad.name, (unsigned long long)lr.lineno);
            if (offer(&s, line, len, lr.lineno) == 0 && emit_every && s.recs % emit_every == 0)
                emit_now = 1;
        }
        if (emit_now)
            emit(&s);
    }
    mnn_lr_free(&lr);
    sample_free(&s);
    if (fd != STDIN_FILENO)
        close(fd);
    out_check();
    badrec_report(&bad);
    if (verbose)
        warnx_("%llu records read, %llu written", (unsigned long long)s.recs,
               (unsigned long long)s.written);
    out_close();
    return EXIT_OK;
}
