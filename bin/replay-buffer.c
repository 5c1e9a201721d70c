/* replay-buffer - pass every record through, in order, and mix in replayed
 * old ones from a bounded buffer, so that a model trained downstream on a
 * drifting stream keeps seeing the past.  The buffer keeps a uniform sample
 * of the stream (reservoir), a class-balanced one (Chrysakis and Moens's
 * CBRS) or the latest records (recent), and survives restarts in a state
 * file saved atomically.
 *
 * The program owns the options, the loop over the input, the output, the
 * signals, the state file's lock and every message; the buffer, its
 * policies, the replay draws and the state file's format are lib/replay.c's
 * (mnn_replay_*). */
#include <config.h>

#include "cli.h"
#include "lines.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* check_class (lines.c) lets through the class ids the buffer takes */
_Static_assert(MAX_CLASS == MNN_REPLAY_MAX_CLASS, "class ids of lines.c and lib/replay.c");

static noreturn void help(void)
{
    printf(
        "Usage: %s [OPTION]... [FILE]\n"
        "Copy the records of FILE (default: stdin) to stdout, in order, and after\n"
        "each one write R records replayed from a buffer of earlier ones.  Lines\n"
        "that start with '#' are copied through as they come.\n"
        "\n"
        "  -r, --ratio R          replayed records per record (default 1); a fraction\n"
        "                         spreads them out: 0.5 is one after every other record\n"
        "  -c, --capacity N       records the buffer holds (default 10000, or that of\n"
        "                         the state loaded)\n"
        "      --policy P         what the buffer keeps: reservoir (default: a uniform\n"
        "                         sample of all records so far), class-balanced (as many\n"
        "                         of each class as it can; labels 0 to 999999), recent\n"
        "                         (the latest N)\n"
        "      --state FILE       load the buffer from FILE if it exists; save it there\n"
        "                         atomically at the end of the input, on SIGTERM or\n"
        "                         SIGINT (then exit 0) and every --save-every records\n"
        "                         (one process at a time: FILE.lock is its lock)\n"
        "      --save-every N     also save after every N records\n"
        "      --fresh            start with an empty buffer, even if FILE exists (it\n"
        "                         is replaced at the next save)\n"
        "      --seed S           random seed (default 1) for a new buffer; a loaded\n"
        "                         one goes on with its saved generator\n"
        "      --resume CKPT      in a pipeline with cuts (stream-ingest at its head):\n"
        "                         start from this stage's part of the cut CKPT\n"
        "                         (a directory, a root with latest, or an archive)\n"
        "      --ckpt-dir DIR     in a pipeline with cuts: leave this stage's part of\n"
        "                         each cut in DIR/.parts for the last stage, sgd-train\n"
        "                         --ckpt-dir DIR (the same DIR, on this machine), to\n"
        "                         take into the cut, instead of sending it down the\n"
        "                         stream (a stage behind an ssh hop sends it)\n"
        "      --workdir DIR      where --resume unpacks an archive (default: TMPDIR)\n"
        "      --on-error=MODE    fail (default) or skip bad records, counting them\n"
        "  -q, --quiet            only errors on stderr\n"
        "  -v, --verbose          report loads, saves and counts on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "In a pipeline with cuts, the buffer's whole state goes downstream as this\n"
        "stage's part of every cut; SIGTERM and SIGINT then wait for the head's\n"
        "stop cut (a second one ends it at once).  Without --resume a stage of a\n"
        "resumed pipeline starts afresh.\n"
        "Replayed records are drawn uniformly, with replacement, from the records\n"
        "buffered before the one just passed.  Every record's first field (the\n"
        "label) must be a number.  Memory: the capacity's worth of records.\n"
        "Exit status: 0 success, 1 data or runtime error, 2 usage error.\n"
        "See replay-buffer(1) and mini-nn(7).\n",
        prog);
    out_close();
    exit(EXIT_OK);
}

static volatile sig_atomic_t stop_sig; /* SIGTERM or SIGINT came */

/* the --state file's lock, held from the start to the exit */
static const char *lock_path;
static int lock_fd = -1;
static void unlock_state(void)
{
    mnn_unlock_file(lock_path, lock_fd);
    lock_fd = -1;
}

/* This stage's part of the cut ck replaces the buffer: the one the
 * pipeline's start line says, from the cut its head resumed from. */
static void resume_from(mnn_replay_t *b, mnn_ckpt_t *ck, const cut_stage_t *cs, int cap_given,
                        int verbose)
{
    char *buf;
    size_t len;
    mnn_diag_t d = {""};
    const uint64_t cut = cs->from;
    cut_read_part(ck, cs, &buf, &len);
    char name[PATH_MAX + 64];
    snprintf(name, sizeof name, "%s: stage-%" PRIu32 ".%s", ck->src, cs->index, cs->program);
    if (mnn_replay_parse(b, buf, len, name, cap_given, &d) < 0)
        die(EXIT_RUNTIME, "--resume: %s", d.msg);
    free(buf);
    if (verbose)
        warnx_("resumed from cut %" PRIu64 ": %zu records buffered (%" PRIu64 " seen)", cut, b->n,
               b->seen);
}

/* The buffer's whole state as this stage's part of the cut cs is in. */
static void pass_part(const mnn_replay_t *b, cut_stage_t *cs)
{
    static membuf_t m; /* kept from cut to cut */
    FILE *f = membuf_open(&m);
    if (mnn_replay_write(b, f) < 0 || fclose(f) != 0)
        die(EXIT_RUNTIME, "cut %" PRIu64 ": cannot write the buffer's state: out of memory",
            cs->id);
    cut_pass_end(cs, m.p, m.len);
}

int main(int argc, char **argv)
{
    enum { O_POLICY = 256, O_STATE, O_SAVE, O_FRESH, O_SEED, O_ONERR, O_RESUME, O_WORKDIR,
           O_CKDIR };
    static const struct option longopts[] = {
        {"ratio", required_argument, NULL, 'r'},
        {"capacity", required_argument, NULL, 'c'},
        {"policy", required_argument, NULL, O_POLICY},
        {"state", required_argument, NULL, O_STATE},
        {"save-every", required_argument, NULL, O_SAVE},
        {"fresh", no_argument, NULL, O_FRESH},
        {"seed", required_argument, NULL, O_SEED},
        {"on-error", required_argument, NULL, O_ONERR},
        {"resume", required_argument, NULL, O_RESUME},
        {"workdir", required_argument, NULL, O_WORKDIR},
        {"ckpt-dir", required_argument, NULL, O_CKDIR},
        CLI_COMMON_LONGOPTS};
    double ratio = 1;
    size_t cap = 10000;
    uint64_t seed = 1, save_every = 0;
    mnn_replay_policy_t policy = MNN_REPLAY_RESERVOIR;
    const char *state = NULL, *resume = NULL, *workdir = NULL, *ckdir = NULL;
    int fresh = 0, quiet = 0, verbose = 0, cap_given = 0, c;
    badrec_t bad = {.name = "stdin"};
    cli_init("replay-buffer");
    out_setup();
    while ((c = getopt_long(argc, argv, "r:c:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (opt_number(optarg, &ratio) < 0 || !(ratio >= 0 && ratio <= MNN_REPLAY_MAX_RATIO))
                usage_error("--ratio: '%s' is not a number from 0 to %d", optarg,
                            MNN_REPLAY_MAX_RATIO);
            break;
        case 'c':
            cap = opt_size("--capacity", optarg, 1, MNN_REPLAY_MAX_CAP), cap_given = 1;
            break;
        case O_POLICY:
            if (mnn_replay_policy_parse(optarg, &policy) < 0)
                usage_error("--policy: '%s' is not one of reservoir, class-balanced, recent", optarg);
            break;
        case O_STATE:
            if (!*optarg)
                usage_error("--state: empty file name");
            state = optarg;
            break;
        case O_SAVE: save_every = opt_size("--save-every", optarg, 1, SIZE_MAX); break;
        case O_FRESH: fresh = 1; break;
        case O_SEED: seed = opt_u64("--seed", optarg); break;
        case O_ONERR: bad.skip = opt_on_error(optarg); break;
        case O_RESUME: resume = optarg; break;
        case O_WORKDIR: workdir = optarg; break;
        case O_CKDIR:
            if (!*optarg)
                usage_error("--ckpt-dir: empty directory name");
            ckdir = optarg;
            break;
        case 'q': quiet = bad.quiet = 1; break;
        default: cli_common(c, &quiet, &verbose, help);
        }
    }
    if ((save_every || fresh) && !state)
        usage_error("%s goes with --state", save_every ? "--save-every" : "--fresh");
    if (resume && fresh)
        usage_error("--resume and --fresh exclude each other");
    /* the cut, opened and every file of it verified (a damaged part of any
     * stage refuses the cut) before any record goes by */
    mnn_ckpt_t *ck = resume ? cli_ckpt_open(resume, workdir, MNN_OPEN_VERIFY) : NULL;
    /* SIGTERM, SIGINT: save and stop between records, even while a read
     * waits; caught from now on, while a FIFO opens or the state loads */
    static const int stops[] = {SIGTERM, SIGINT};
    const int stop_fd = signals_to_pipe(stops, 2, &stop_sig);
    const int fd = open_input(argc - optind, argv + optind, &bad);

    /* one process at a time on a state file: a second one would replace
     * what the first saves (a fifo or /dev/stdout is nobody's to lock);
     * the lock file goes at any exit but a fatal signal's */
    struct stat sb;
    if (state && (stat(state, &sb) != 0 || S_ISREG(sb.st_mode))) {
        mnn_diag_t d = {""};
        lock_path = state;
        int rc = mnn_lock_file(state, &lock_fd, &d);
        if (rc == MNN_EBUSY)
            die(EXIT_RUNTIME, "--state %s: another process is using it (it holds %s.lock)", state,
                state);
        if (rc < 0)
            die(EXIT_RUNTIME, "--state: %s", d.msg);
        atexit(unlock_state);
    }

    mnn_replay_t b;
    mnn_diag_t d = {""};
    if (mnn_replay_init(&b, policy, cap, seed) < 0)
        die(EXIT_RUNTIME, "a buffer of %zu records: %s", cap, mnn_strerror(MNN_EINVAL));
    if (state && !fresh && !resume) {
        int rc = mnn_replay_load(&b, state, cap_given, &d);
        if (rc == MNN_EINVAL) /* another policy's buffer */
            die(EXIT_RUNTIME, "%s (--fresh starts a new one)", d.msg);
        if (rc == MNN_ECORRUPT || rc == MNN_EFORMAT || rc == MNN_ELIMIT)
            die(EXIT_RUNTIME, "%s (--fresh starts a new buffer)", d.msg);
        if (rc < 0) /* it cannot be read, or out of memory */
            die(EXIT_RUNTIME, "%s", d.msg);
        if (rc > 0 && verbose)
            warnx_("loaded %zu records from %s (%" PRIu64 " seen)", b.n, state, b.seen);
    }

    mnn_linereader_t lr;
    if (mnn_lr_init(&lr, fd, MNN_REPLAY_MAX_LINE) < 0)
        die(EXIT_RUNTIME, "out of memory");
    lr.cancel_fd = stop_fd;
    uint64_t recs = 0, replayed = 0;
    const char *line;
    size_t len;
    cut_stage_t cs = {.program = "replay-buffer", .root = ckdir};
    int stopped_by_cut = 0;
    for (;;) {
        if (stop_sig)
            break;
        int rc = next_record(&lr, &bad, &cs, &line, &len);
        if (rc == NR_START) {
            cut_hold_signals();
            if (ck)
                resume_from(&b, ck, &cs, cap_given, verbose);
            continue;
        }
        if (rc == NR_BARRIER) {
            cut_pass_barrier(&cs);
            continue;
        }
        if (rc == NR_END) {
            pass_part(&b, &cs);
            continue;
        }
        if (rc == 1 && ck && !cs.active)
            die(EXIT_RUNTIME, "--resume %s: the input does not start with a pipeline's start "
                "line: resume its head too (stream-ingest --resume)", resume);
        if (rc != 1) {
            if (rc == 0)
                stopped_by_cut = cut_input_ended(&cs, &bad);
            break; /* the end, or a signal */
        }
        double label;
        if (read_label(&bad, line, len, lr.lineno, &label) < 0)
            continue;
        if (policy == MNN_REPLAY_CLASS && check_class(&bad, line, len, lr.lineno, label) < 0)
            continue;
        fwrite(line, 1, len, stdout);
        putchar('\n');
        recs++;
        /* replays: from what was buffered before this record */
        for (uint64_t k = mnn_replay_due(&b, ratio); k > 0; k--) {
            const mnn_replay_rec_t *r = mnn_replay_draw(&b);
            fwrite(r->text, 1, r->len, stdout);
            replayed++;
        }
        if (mnn_replay_offer(&b, line, len, policy == MNN_REPLAY_CLASS ? (int32_t)label : 0,
                             &d) < 0)
            die(EXIT_RUNTIME, "%s", d.msg);
        if (save_every && recs % save_every == 0) {
            fflush(stdout); /* what the state counts has been written */
            out_check();
            if (mnn_replay_save(&b, state, &d) < 0)
                die(EXIT_RUNTIME, "cannot save the buffer: %s", d.msg);
        }
    }
    mnn_lr_free(&lr);
    if (fd != STDIN_FILENO)
        close(fd);
    fflush(stdout);
    out_check();
    if (ck && !cs.active)
        die(EXIT_RUNTIME, "--resume %s: the input ended without a pipeline's start line: "
            "resume its head too (stream-ingest --resume)", resume);
    if (stop_sig && !quiet)
        warnx_("stopping on a signal after %" PRIu64 " records", recs);
    if (stopped_by_cut && verbose)
        warnx_("the pipeline %s with cut %" PRIu64, cs.what == MNN_CUT_FINAL ? "ended" : "stopped",
               cs.id);
    if (state) {
        if (mnn_replay_save(&b, state, &d) < 0)
            die(EXIT_RUNTIME, "cannot save the buffer: %s", d.msg);
        if (verbose)
            warnx_("saved %zu records to %s", b.n, state);
    }
    badrec_report(&bad);
    if (verbose)
        warnx_("%" PRIu64 " records passed, %" PRIu64 " replayed; the buffer holds %zu", recs,
               replayed, b.n);
    mnn_replay_free(&b);
    if (ck)
        cli_ckpt_close(ck);
    out_close();
    return EXIT_OK;
}
