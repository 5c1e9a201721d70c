/* stream-ingest - the head of a pipeline with cuts (mini-nn(7), PIPELINE
 * CHECKPOINTS): copies the lines of its source to stdout and injects the
 * barriers of consistent checkpoints, every N records, every S seconds, on
 * SIGUSR1, one of kind stop on SIGTERM or SIGINT and one of kind final at
 * the end of the source, each with its part: the source position.  With
 * --resume it skips the source to a cut's position, checking the bytes
 * skipped against the cut's hash; with --log it keeps what it read in a log
 * first, for a source that cannot be read again.
 *
 * The program owns the options, the source, the barriers and the signals;
 * the part's format and the source hash are ingest-state.c's, the log
 * ingest-log.c's, the control lines lib/cut.c's. */
#include <config.h>

#include "cli.h"
#include "ingest.h"
#include "lines.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LINE ((size_t)64 << 20) /* longest line accepted */
#define READ_MAX ((size_t)64 << 10) /* bytes read from the source at once */

static noreturn void help(void)
{
    printf(
        "Usage: %s [OPTION]... [FILE]...\n"
        "Copy the lines of the FILEs (default, or '-': stdin), in order, to stdout, as\n"
        "the head of a pipeline with consistent checkpoints (cuts): its output begins\n"
        "with a start line, and barriers (#!ckpt ID) go between the records, each\n"
        "with stream-ingest's part, the source position.  A barrier comes\n"
        "\n"
        "      --every N          after every N records (counted from the source's start;\n"
        "                         at the source's end, the final one stands for it)\n"
        "      --interval S       every S seconds (also while the source is idle)\n"
        "                         when something passed since the last barrier\n"
        "                         on SIGUSR1; one of kind stop on SIGTERM or SIGINT, then\n"
        "                         the output ends (exit 0); one of kind final at the end\n"
        "                         of the source\n"
        "\n"
        "      --resume CKPT      go on from the cut CKPT (a directory, a root, an\n"
        "                         archive): the source is read again from its start\n"
        "                         and checked up to the cut's position, or with --log\n"
        "                         replayed from the log\n"
        "      --log DIR          log what is read, before it is passed on, in segments in\n"
        "                         DIR (locked): for a source that cannot be read again\n"
        "      --ckpt-dir ROOT    with --log: where the pipeline commits its cuts; the\n"
        "                         segments before the newest one's position are removed\n"
        "      --log-segment BYTES  a segment's size (default 16777216)\n"
        "      --on-error=MODE    fail (default) or skip cut lines in the source (they\n"
        "                         would forge cuts), counting them\n"
        "  -q, --quiet            only errors on stderr\n"
        "  -v, --verbose          note every barrier on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Exit status: 0 success (also after a stop), 1 data or runtime error, 2 usage\n"
        "error.\n"
        "See stream-ingest(1) and mini-nn(7).\n",
        prog);
    out_close();
    exit(EXIT_OK);
}

/* ---- the program's state ----------------------------------------------------- */

static struct {
    /* options */
    char **files;        /* the FILEs ("-": stdin) */
    size_t nfiles;
    uint64_t every;      /* --every; 0: none */
    double interval;     /* --interval; 0: none */
    int verbose, quiet;
    badrec_t bad;        /* its name: the current file's */
    /* the source */
    size_t fi;           /* the current file */
    int fd;              /* open on it; -1 before */
    uint64_t file_read;  /* its bytes read */
    unsigned char *frame; /* ILOG_HDR bytes for the log's header, then a chunk */
    size_t rsize;        /* bytes read at once */
    int piped;           /* the current file is a pipe or a FIFO */
    char *buf;           /* read, not yet passed: buf[start, end) */
    size_t cap, start, end;
    /* what passed */
    ingest_state_t pos;  /* its chain and xxh3 are set by state_now */
    srchash_t hash;
    /* --resume */
    const char *ckpt;
    uint64_t from;       /* the cut resumed from; 0: none */
    ingest_state_t want; /* its state */
    int skipping;        /* reading up to want.bytes, hashing only */
    /* cuts */
    uint64_t cut;        /* the last barrier's id */
    uint64_t cut_bytes;  /* pos.bytes at the last barrier */
    int due;             /* --every's barrier, held until another line comes
                          * or the source would wait: at the source's end, the
                          * last barrier stands for it */
    double tick;         /* --interval: when the next one is due */
    int wake;            /* the signal pipe */
    /* --log */
    ilog_t log;
    int logging;
    int replaying;       /* the source's bytes come from the log */
} g = {.fd = -1};

/* The state as it stands: pos with the hash of what passed. */
static ingest_state_t state_now(void)
{
    if (g.skipping) /* nothing passed yet: the cut's own position */
        return g.want;
    ingest_state_t s = g.pos;
    s.chain = g.hash.chain;
    s.xxh3 = mnn_hash_digest(g.hash.h);
    return s;
}

static const char *file_name(size_t i)
{
    return strcmp(g.files[i], "-") ? g.files[i] : "stdin";
}

/* What the source is called in messages: its one file, or "the FILEs". */
static const char *source_name(void)
{
    return g.nfiles == 1 ? file_name(0) : "the FILEs";
}

/* ---- barriers ------------------------------------------------------------------- */

/* A barrier's block, written and flushed at once. */
static void barrier(mnn_cut_what_t what)
{
    const uint64_t id = ++g.cut;
    const ingest_state_t s = state_now();
    char part[INGEST_STATE_MAX];
    const size_t n = state_format(&s, part, sizeof part);
    mnn_cut_put_barrier(stdout, id, what);
    mnn_cut_put_part(stdout, id, 0, INGEST_PROGRAM, part, n);
    mnn_cut_put_end(stdout, id);
    fflush(stdout);
    out_check();
    g.cut_bytes = s.bytes;
    g.due = 0;
    if (g.interval > 0)
        g.tick = mono_now() + g.interval;
    if (g.verbose && !g.quiet)
        warnx_("cut %" PRIu64 " at record %" PRIu64 " (byte %" PRIu64 ")%s%s", id, s.records,
               s.bytes, what ? ", " : "", mnn_cut_what_name(what));
    if (g.logging)
        ilog_cleanup(&g.log);
}

static noreturn void finish(mnn_cut_what_t what)
{
    barrier(what);
    if (g.logging)
        ilog_close(&g.log);
    if (what == MNN_CUT_STOP && !g.quiet)
        warnx_("stopped on a signal at cut %" PRIu64 ", record %" PRIu64, g.cut,
               state_now().records);
    badrec_report(&g.bad);
    out_close();
    exit(EXIT_OK);
}

/* Between records: the signals that came, and the interval. */
static void between(void)
{
    if (signal_taken(SIGTERM) | signal_taken(SIGINT)) {
        if (g.skipping) /* short of the cut's position: a stop at it */
            mnn_cut_put_start(stdout, g.from, 1);
        finish(MNN_CUT_STOP);
    }
    if (g.skipping)
        return; /* no barrier before the start line */
    if (signal_taken(SIGUSR1))
        barrier(MNN_CUT_GO);
    if (g.interval > 0 && mono_now() >= g.tick) {
        if (g.pos.bytes != g.cut_bytes)
            barrier(MNN_CUT_GO);
        else /* nothing new: skipped */
            g.tick = mono_now() + g.interval;
    }
}

/* ---- lines ------------------------------------------------------------------------ */

/* One source line of n bytes at p (its '\n' included when nl). */
static void line(const char *p, size_t n, int nl)
{
    if (g.due)
        barrier(MNN_CUT_GO);
    if (g.pos.file != g.fi) { /* the first line of a new file */
        g.pos.file = g.fi;
        g.pos.offset = g.pos.line = 0;
    }
    g.pos.offset += n, g.pos.bytes += n;
    g.pos.line++, g.pos.lines++;
    srchash_feed(&g.hash, p, n);
    size_t len = n - (nl ? 1 : 0);
    if (len == 0 || (len == 1 && p[0] == '\r'))
        return; /* empty: skipped */
    if (p[0] == '#' && len > 1 && (p[1] == '!' || p[1] == '=')) {
        mnn_cutline_t l;
        mnn_diag_t d = {""};
        int rc = mnn_cutline_parse(p, len, &l, &d);
        char e[64];
        if (rc != 0) {
            badrec(&g.bad, g.pos.line, "a cut line in the source (it would forge a cut): '%s'%s%s",
                   excerpt(p, p + len, e, sizeof e), rc < 0 ? ", and a malformed one: " : "",
                   rc < 0 ? d.msg : "");
            g.pos.skipped++;
            return;
        }
    }
    fwrite(p, 1, n, stdout);
    if (!nl)
        putchar('\n');
    if (p[0] == '#')
        return;
    g.pos.records++;
    if (g.every && g.pos.records % g.every == 0)
        g.due = 1;
}

/* Passes every whole line buffered, minding signals between them. */
static void lines(void)
{
    while (g.start < g.end) {
        char *p = g.buf + g.start, *nl = memchr(p, '\n', g.end - g.start);
        if (!nl) {
            if (g.end - g.start > MAX_LINE)
                die(EXIT_RUNTIME, "%s:%" PRIu64 ": a line longer than %zu bytes", g.bad.name,
                    (g.pos.file == g.fi ? g.pos.line : 0) + 1, MAX_LINE);
            return;
        }
        const size_t n = (size_t)(nl - p) + 1;
        g.start += n;
        line(p, n, 1);
        between();
    }
}

/* ---- resuming --------------------------------------------------------------------- */

/* The skip reached the cut's position; the n bytes read after it are still
 * to come. */
static void skipped_to_cut(size_t n)
{
    const char *what = g.replaying ? g.log.dir : source_name();
    if (g.hash.chain != g.want.chain || mnn_hash_digest(g.hash.h) != g.want.xxh3)
        die(EXIT_RUNTIME, "%s%s is not the stream cut %" PRIu64 " was taken on: its %s%"
            PRIu64 " bytes differ", g.replaying ? "--log " : "", what, g.from,
            g.replaying ? "bytes before byte " : "first ", g.want.bytes);
    if (!g.replaying && g.want.bytes > 0 &&
        (g.fi != g.want.file || g.file_read - n != g.want.offset))
        die(EXIT_RUNTIME, "%s are not the ones cut %" PRIu64 " was taken on: its byte %" PRIu64
            " lies at byte %" PRIu64 " of file %" PRIu64 ", and here at byte %" PRIu64
            " of file %zu", source_name(), g.from, g.want.bytes, g.want.offset,
            g.want.file + 1, g.file_read - n, g.fi + 1);
    g.skipping = 0;
    g.pos = g.want;
    g.cut_bytes = g.pos.bytes;
    g.bad.name = file_name(g.fi);
    if (mnn_cut_put_start(stdout, g.from, 1) < 0 || fflush(stdout) != 0)
        out_check();
    if (g.verbose && !g.quiet)
        warnx_("resumed from cut %" PRIu64 " at record %" PRIu64 " (byte %" PRIu64 ")", g.from,
               g.pos.records, g.pos.bytes);
}

/* Reads the cut's state from --resume CKPT and sets up the skip. */
static void resume_setup(void)
{
    mnn_ckpt_t *ck = cli_ckpt_open(g.ckpt, NULL, MNN_OPEN_VERIFY);
    char *buf = NULL, why[300];
    size_t len = 0;
    mnn_diag_t d = {""};
    if (mnn_ckpt_stage_read(ck->dir, 0, INGEST_PROGRAM, &buf, &len, &g.from, &d) < 0)
        die(EXIT_RUNTIME, "--resume %s: %s", g.ckpt, d.msg);
    if (state_parse(buf, len, &g.want, why, sizeof why) < 0)
        die(EXIT_RUNTIME, "--resume %s: the part of stage 0 (%s) of cut %" PRIu64 ": %s",
            g.ckpt, INGEST_PROGRAM, g.from, why);
    free(buf);
    cli_ckpt_close(ck);
    if (g.want.file >= g.nfiles)
        die(EXIT_RUNTIME, "--resume %s: cut %" PRIu64 " lies in file %" PRIu64 " of the source, "
            "and %zu FILE%s given", g.ckpt, g.from, g.want.file + 1, g.nfiles,
            g.nfiles == 1 ? " is" : "s are");
    g.cut = g.from;
    g.skipping = 1;
    if (g.logging && g.log.nsegs) {
        /* the log holds the cut's block and what came after */
        const uint64_t bs = block_start(g.want.bytes);
        ilog_replay_begin(&g.log, bs);
        srchash_at(&g.hash, bs, g.want.chain);
        g.replaying = 1;
    }
    if (g.hash.bytes == g.want.bytes)
        skipped_to_cut(0);
}

/* ---- the source ----------------------------------------------------------------- */

/* n bytes of the source: hashed up to the cut's position while skipping,
 * then buffered. */
static void take(const unsigned char *p, size_t n)
{
    if (g.skipping) {
        uint64_t left = g.want.bytes - g.hash.bytes;
        size_t k = n < left ? n : (size_t)left;
        srchash_feed(&g.hash, p, k);
        p += k, n -= k;
        if (g.hash.bytes == g.want.bytes)
            skipped_to_cut(n);
    }
    if (!n)
        return;
    if (g.start > 0 && g.cap - g.end < n) { /* make room */
        memmove(g.buf, g.buf + g.start, g.end - g.start);
        g.end -= g.start, g.start = 0;
    }
    if (g.cap - g.end < n)
        g.buf = xrealloc(g.buf, g.cap = grow_cap(g.cap, g.end + n), 1);
    memcpy(g.buf + g.end, p, n);
    g.end += n;
}

/* Opens file g.fi. */
static void open_file(void)
{
    g.bad.name = file_name(g.fi);
    g.file_read = 0;
    if (!strcmp(g.files[g.fi], "-"))
        g.fd = STDIN_FILENO;
    else if ((g.fd = open(g.files[g.fi], O_RDONLY | O_CLOEXEC)) < 0)
        die(EXIT_RUNTIME, "%s: %s", g.files[g.fi], strerror(errno));
    struct stat sb;
    g.piped = fstat(g.fd, &sb) == 0 && S_ISFIFO(sb.st_mode);
}

/* After a replay of the log: the live source goes on at the log's end, a
 * file by seeking there, a pipe or a FIFO where the reads stopped. */
static void live_after_log(void)
{
    struct stat sb;
    if (fstat(g.fd, &sb) == 0 && S_ISREG(sb.st_mode) &&
        lseek(g.fd, (off_t)g.log.end, SEEK_SET) < 0)
        die(EXIT_RUNTIME, "%s: cannot seek to byte %" PRIu64 ", the log's end: %s", g.bad.name,
            g.log.end, strerror(errno));
    g.file_read = g.log.end;
}

/* Waits for the source (or a signal, or the interval) and reads a chunk:
 * 1 when bytes came, 0 at the end of the current file, -1 for nothing (a
 * signal, the interval). */
static int get_chunk(void)
{
    unsigned char *data = g.frame + ILOG_HDR;
    if (g.fd < 0)
        open_file();
    if (g.replaying) {
        size_t n = ilog_replay_next(&g.log, data);
        if (n) {
            take(data, n);
            return 1;
        }
        g.replaying = 0;
        live_after_log();
    }
    struct pollfd pf[2] = {{.fd = g.fd, .events = POLLIN}, {.fd = g.wake, .events = POLLIN}};
    int pr = poll(pf, 2, 0);
    if (pr == 0) { /* it would wait: what passed goes on first */
        if (g.due)
            barrier(MNN_CUT_GO);
        fflush(stdout);
        out_check();
        int ms = -1;
        if (g.interval > 0 && !g.skipping) {
            double left = ceil((g.tick - mono_now()) * 1000);
            ms = left <= 0 ? 0 : left > 1e9 ? 1000000000 : (int)left;
        }
        pr = poll(pf, 2, ms);
    }
    if (pr < 0 && errno != EINTR)
        die(EXIT_RUNTIME, "poll: %s", strerror(errno));
    if (pr <= 0)
        return -1;
    if (pf[1].revents) {
        drain_signal_pipe(g.wake);
        return -1;
    }
    ssize_t r;
    if (g.logging && g.piped) {
        /* a pipe's bytes can be read once: out of it and into the log in
         * one step */
        size_t n = ilog_splice(&g.log, g.fd, g.frame, g.rsize, g.bad.name);
        if (n == (size_t)-1)
            return -1;
        r = (ssize_t)n;
    } else {
        r = read(g.fd, data, g.rsize);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            return -1;
        if (r < 0)
            die(EXIT_RUNTIME, "%s: %s", g.bad.name, strerror(errno));
        if (r > 0 && g.logging) /* in the log before any of it is passed on */
            ilog_append(&g.log, g.frame, (size_t)r);
    }
    if (r == 0)
        return 0;
    g.file_read += (uint64_t)r;
    take(data, (size_t)r);
    return 1;
}

/* The end of file g.fi: its last line, and the next file; 0 when none. */
static int next_file(void)
{
    if (g.start < g.end) { /* a last line without '\n' */
        size_t n = g.end - g.start;
        g.start = g.end;
        line(g.buf + g.end - n, n, 0);
        between();
    }
    if (g.fd != STDIN_FILENO)
        close(g.fd);
    g.fd = -1;
    if (g.skipping && g.fi + 1 == g.nfiles)
        die(EXIT_RUNTIME, "%s is not the stream cut %" PRIu64 " was taken on: it has %" PRIu64
            " bytes, and the cut lies at byte %" PRIu64, source_name(), g.from, g.hash.bytes,
            g.want.bytes);
    if (++g.fi == g.nfiles) {
        g.fi--; /* the position stays in the last one */
        return 0;
    }
    return 1;
}

/* ---- main ------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    enum { O_EVERY = 256, O_INTERVAL, O_RESUME, O_LOG, O_CKPTDIR, O_SEGMENT, O_ONERR };
    static const struct option longopts[] = {
        {"every", required_argument, NULL, O_EVERY},
        {"interval", required_argument, NULL, O_INTERVAL},
        {"resume", required_argument, NULL, O_RESUME},
        {"log", required_argument, NULL, O_LOG},
        {"ckpt-dir", required_argument, NULL, O_CKPTDIR},
        {"log-segment", required_argument, NULL, O_SEGMENT},
        {"on-error", required_argument, NULL, O_ONERR},
        CLI_COMMON_LONGOPTS};
    const char *log_dir = NULL, *root = NULL;
    uint64_t seg_max = (uint64_t)16 << 20;
    int seg_given = 0, c;
    cli_init("stream-ingest");
    out_setup();
    pipe_widen(STDOUT_FILENO); /* its output always carries cuts */
    while ((c = getopt_long(argc, argv, "qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case O_EVERY: g.every = opt_size("--every", optarg, 1, SIZE_MAX); break;
        case O_INTERVAL:
            if (opt_number(optarg, &g.interval) < 0 || !(g.interval >= 0.001 && g.interval <= 1e6))
                usage_error("--interval: '%s' is not a number of seconds from 0.001 to 1000000",
                            optarg);
            break;
        case O_RESUME:
            if (!*optarg)
                usage_error("--resume: empty name");
            g.ckpt = optarg;
            break;
        case O_LOG:
            if (!*optarg)
                usage_error("--log: empty name");
            log_dir = optarg;
            break;
        case O_CKPTDIR:
            if (!*optarg)
                usage_error("--ckpt-dir: empty name");
            root = optarg;
            break;
        case O_SEGMENT:
            seg_max = opt_size("--log-segment", optarg, 64, (size_t)1 << 40), seg_given = 1;
            break;
        case O_ONERR: g.bad.skip = opt_on_error(optarg); break;
        case 'q': g.quiet = g.bad.quiet = 1; break;
        default: cli_common(c, &g.quiet, &g.verbose, help);
        }
    }
    static char *dash[] = {"-"};
    g.files = optind < argc ? argv + optind : dash;
    g.nfiles = optind < argc ? (size_t)(argc - optind) : 1;
    if (log_dir && !root)
        usage_error("--log needs --ckpt-dir ROOT, where the pipeline commits its cuts");
    if (root && !log_dir)
        usage_error("--ckpt-dir goes with --log");
    if (seg_given && !log_dir)
        usage_error("--log-segment goes with --log");
    if (log_dir && g.nfiles > 1)
        usage_error("--log takes one source, not %zu FILEs", g.nfiles);
    for (size_t i = 0; i < g.nfiles; i++)
        if (!strcmp(g.files[i], "-") && g.ckpt && !strcmp(g.ckpt, "-"))
            usage_error("--resume - and the source cannot both be stdin");

    /* the signals, before anything waits (a FIFO's open waits for its
     * writer); SIGPIPE stays as it is: a reader gone ends the program */
    static const int sigs[] = {SIGUSR1, SIGTERM, SIGINT};
    g.wake = signals_to_pipe(sigs, sizeof sigs / sizeof sigs[0], NULL);

    struct stat sb;
    for (size_t i = 0; i < g.nfiles; i++) /* a missing FILE is found now */
        if (strcmp(g.files[i], "-") && stat(g.files[i], &sb) != 0)
            die(EXIT_RUNTIME, "%s: %s", g.files[i], strerror(errno));
    g.bad.name = file_name(0);
    g.rsize = READ_MAX;
    if (log_dir) {
        g.log.quiet = g.quiet;
        g.log.verbose = g.verbose;
        ilog_open(&g.log, log_dir, root, seg_max, g.ckpt != NULL);
        g.logging = 1;
        if (seg_max < g.rsize) /* frames no larger than a segment */
            g.rsize = (size_t)seg_max;
    }
    g.frame = xrealloc(NULL, ILOG_HDR + ILOG_MAX_FRAME, 1);
    srchash_init(&g.hash);
    if (g.ckpt) {
        resume_setup();
    } else {
        mnn_cut_put_start(stdout, 0, 1);
        fflush(stdout);
        out_check();
    }
    if (g.interval > 0)
        g.tick = mono_now() + g.interval;

    for (;;) {
        lines();
        between();
        int rc = get_chunk();
        if (rc == 0 && !next_file())
            break;
    }
    finish(MNN_CUT_FINAL);
}
