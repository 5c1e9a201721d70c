/* ckpt-pack - a checkpoint directory as one .tar.zst archive, and back:
 * pack (to stdout or -o FILE), --list, --verify, --extract.  The archive
 * format and every check live in lib/archive.c; this file parses the
 * command line and owns the output files. */
#include <config.h>

#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static noreturn void help(void)
{
    printf(
        "Usage: %s [OPTION]... CKPT\n"
        "  or:  %s --list [OPTION]... ARCHIVE\n"
        "  or:  %s --verify [OPTION]... ARCHIVE|CKPT\n"
        "  or:  %s --extract DIR [OPTION]... ARCHIVE\n"
        "Pack the checkpoint directory CKPT (or the one its 'latest' link points to)\n"
        "into one tar archive compressed with zstd, written to stdout or to FILE;\n"
        "CKPT may also be an archive, or a directory ckpt-ship received into\n"
        "(repacked, e.g. at another --level).\n"
        "Every file is checked against the manifest as it is packed, and the same\n"
        "checkpoint always packs to the same bytes.  ARCHIVE may be '-' (stdin).\n"
        "\n"
        "  -o, --output FILE      write the archive to FILE (through a temporary file\n"
        "                         renamed into place) instead of stdout\n"
        "      --level N          zstd compression level, 1 to 19 (default 3)\n"
        "      --threads N        zstd worker threads, 1 to 256 (default: compress in\n"
        "                         the calling thread)\n"
        "      --list             list the entries of ARCHIVE: type, size, path\n"
        "      --verify           check ARCHIVE, or a checkpoint directory, against\n"
        "                         its manifest; report 'ok' on stderr\n"
        "      --extract DIR      unpack ARCHIVE into DIR/NAME (which must not exist)\n"
        "                         and print that path\n"
        "  -q, --quiet            no 'ok' report from --verify\n"
        "  -v, --verbose          more detail on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Exit status: 0 success, 1 data or runtime error, 2 usage error.\n"
        "See ckpt-pack(1) and mini-nn(7).\n",
        prog, prog, prog, prog);
    out_close();
    exit(EXIT_OK);
}

/* ---- signals -------------------------------------------------------------- */

/* -o FILE: the temporary file a signal removes before the program dies. */
/* -o FILE's temporary file, named where a signal handler can read it */
static char tmp_name[PATH_MAX + 64];
static volatile sig_atomic_t tmp_active;
/* --extract: the signal that asked to stop, once one has; the archive's
 * descriptor, and /dev/null to put in its place. */
static volatile sig_atomic_t stop_sig;
static int in_fd = -1, null_fd = -1;

static void on_signal_pack(int sig)
{
    if (tmp_active)
        unlink(tmp_name); /* once renamed, that name is gone: nothing happens */
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Cuts the input off: a read blocked on a pipe fails with EINTR (no
 * SA_RESTART), and any later read finds /dev/null's end of file, so the
 * library stops and removes what it wrote, wherever it was. */
static void on_signal_extract(int sig)
{
    int e = errno;
    stop_sig = sig;
    if (in_fd >= 0 && null_fd >= 0)
        dup2(null_fd, in_fd);
    errno = e;
}

static const int stop_signals[] = {SIGINT, SIGTERM, SIGHUP};

static void catch_signals(void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
        sigaddset(&sa.sa_mask, stop_signals[i]);
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
        sigaction(stop_signals[i], &sa, NULL);
}

static void block_signals(int block, sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
        sigaddset(&set, stop_signals[i]);
    sigprocmask(block ? SIG_BLOCK : SIG_SETMASK, block ? &set : old, block ? old : NULL);
}

/* Dies of the signal that asked to stop. */
static noreturn void die_of_signal(int sig)
{
    signal(sig, SIG_DFL);
    raise(sig);
    exit(EXIT_RUNTIME);
}

/* ---- helpers ------------------------------------------------------------ */

/* ARCHIVE as a descriptor; *name is how messages call it. */
static int open_input(const char *arg, const char **name, const char *what)
{
    struct stat sb;
    if (!strcmp(arg, "-")) {
        *name = "stdin";
        if (isatty(STDIN_FILENO))
            die(EXIT_RUNTIME, "refusing to read an archive from a terminal");
        return STDIN_FILENO;
    }
    *name = arg;
    int fd = open(arg, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(EXIT_RUNTIME, "%s: %s", arg, strerror(errno));
    if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode))
        die(EXIT_RUNTIME, "%s: is a directory (%s reads an archive)", arg, what);
    return fd;
}

/* ---- modes ---------------------------------------------------------------- */

static void pack_stdout(const char *ckpt, const mnn_pack_opts_t *po)
{
    mnn_diag_t d;
    if (isatty(STDOUT_FILENO))
        die(EXIT_RUNTIME, "refusing to write an archive to a terminal "
                          "(use -o FILE or redirect stdout)");
    if (mnn_ckpt_pack(ckpt, STDOUT_FILENO, po, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    out_close();
}

/* Through a temporary file beside FILE, fsynced, renamed over FILE, the
 * directory fsynced (mnn_atomic_*); the temporary file is removed on error
 * and on SIGINT, SIGTERM, SIGHUP. */
static void pack_file(const char *ckpt, const char *out, const mnn_pack_opts_t *po)
{
    mnn_diag_t d;
    mnn_atomic_t a;
    sigset_t old;
    catch_signals(on_signal_pack);
    block_signals(1, &old);
    int rc = mnn_atomic_open(&a, out, &d);
    if (rc == 0 && (size_t)snprintf(tmp_name, sizeof tmp_name, "%s", a.tmp) < sizeof tmp_name)
        tmp_active = 1;
    block_signals(0, &old);
    if (rc < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    if ((rc = mnn_ckpt_pack(ckpt, a.fd, po, &d)) < 0)
        mnn_atomic_abort(&a);
    else
        rc = mnn_atomic_commit(&a, &d);
    tmp_active = 0;
    if (rc < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
}

static int list_one(void *ctx, const char *path, uint64_t size, char type)
{
    (void)ctx;
    printf("%c\t%" PRIu64 "\t", type, size);
    /* one line per entry whatever the name holds: escape controls and '\' */
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", stdout);
        else if (*p == '\t')
            fputs("\\t", stdout);
        else if (*p == '\n')
            fputs("\\n", stdout);
        else if (*p < 0x20 || *p == 0x7f)
            printf("\\%03o", *p);
        else
            putchar(*p);
    }
    putchar('\n');
    out_check();
    return 0;
}

static void do_list(const char *arg)
{
    const char *name;
    mnn_diag_t d;
    int fd = open_input(arg, &name, "--list");
    if (mnn_ckpt_list(fd, name, list_one, NULL, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    out_close();
}

static void report(const char *name, const char *real, const mnn_manifest_t *mf, int verbose)
{
    if (!verbose) {
        warnx_("%s: ok", name);
        return;
    }
    uint64_t bytes = 0;
    for (size_t i = 0; i < mf->nfiles; i++)
        bytes += mf->files[i].bytes;
    warnx_("%s: ok (%s%sstep %" PRIu64 ", %" PRIu64 " records seen, created %s, %zu files, "
           "%" PRIu64 " bytes)",
           name, real ? real : "", real ? ": " : "", mf->step, mf->records_seen,
           mf->created[0] ? mf->created : "?", mf->nfiles, bytes);
}

static void do_verify(const char *arg, int quiet, int verbose)
{
    mnn_ckpt_t *ck = cli_ckpt_open(arg, NULL, MNN_OPEN_VERIFY | MNN_OPEN_NO_EXTRACT);
    if (!quiet)
        report(ck->archive && !strcmp(ck->src, "-") ? "stdin" : ck->src, ck->dir, &ck->mf,
               verbose);
    cli_ckpt_close(ck);
    out_close();
}

static void do_extract(const char *dir, const char *arg, int verbose)
{
    const char *name;
    mnn_diag_t d;
    mnn_manifest_t mf;
    char *path;
    int fd = open_input(arg, &name, "--extract");
    if ((null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
        die(EXIT_RUNTIME, "/dev/null: %s", strerror(errno));
    in_fd = fd;
    catch_signals(on_signal_extract);
    int rc = mnn_ckpt_unpack(fd, name, dir, &path, &mf, &d);
    if (rc < 0) {
        if (stop_sig) /* the input cut off by on_signal_extract */
            die_of_signal(stop_sig);
        die(EXIT_RUNTIME, "%s", d.msg);
    }
    if (verbose)
        report(name, path, &mf, 1);
    printf("%s\n", path);
    out_close();
    free(path);
    mnn_manifest_free(&mf);
    /* the checkpoint was whole before the signal could stop it: it stays */
    if (stop_sig)
        die_of_signal(stop_sig);
}

int main(int argc, char **argv)
{
    enum { O_LEVEL = 256, O_THREADS, O_LIST, O_VERIFY, O_EXTRACT };
    enum { M_PACK, M_LIST, M_VERIFY, M_EXTRACT };
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        {"level", required_argument, NULL, O_LEVEL},
        {"threads", required_argument, NULL, O_THREADS},
        {"list", no_argument, NULL, O_LIST},
        {"verify", no_argument, NULL, O_VERIFY},
        {"extract", required_argument, NULL, O_EXTRACT},
        CLI_COMMON_LONGOPTS};
    const char *output = NULL, *xdir = NULL;
    mnn_pack_opts_t po = {0, 0};
    int mode = M_PACK, pack_opts = 0, quiet = 0, verbose = 0, c;

    cli_init("ckpt-pack");
    out_setup();
    while ((c = getopt_long(argc, argv, "o:qvhV", longopts, NULL)) != -1) {
        int m = -1;
        switch (c) {
        case 'o': output = optarg; pack_opts = 1; break;
        case O_LEVEL: po.level = (int)opt_size("--level", optarg, 1, 19); pack_opts = 1; break;
        case O_THREADS:
            po.threads = (int)opt_size("--threads", optarg, 1, 256);
            pack_opts = 1;
            break;
        case O_LIST: m = M_LIST; break;
        case O_VERIFY: m = M_VERIFY; break;
        case O_EXTRACT: m = M_EXTRACT; xdir = optarg; break;
        default: cli_common(c, &quiet, &verbose, help);
        }
        if (m >= 0) {
            if (mode != M_PACK && mode != m)
                usage_error("--list, --verify and --extract exclude each other");
            mode = m;
        }
    }
    if (optind == argc)
        usage_error(mode == M_PACK ? "a checkpoint directory is required"
                                   : "an archive is required ('-' for stdin)");
    if (optind < argc - 1)
        usage_error("unexpected argument '%s' (one checkpoint or archive at a time)",
                    argv[optind + 1]);
    if (mode != M_PACK && pack_opts)
        usage_error("-o, --level and --threads are for packing only");
    if (mode == M_EXTRACT && !*xdir)
        usage_error("--extract: empty directory name");
    const char *arg = argv[optind];

    switch (mode) {
    case M_LIST: do_list(arg); break;
    case M_VERIFY: do_verify(arg, quiet, verbose); break;
    case M_EXTRACT: do_extract(xdir, arg, verbose); break;
    default: {
        /* a directory, a root, or an archive (repacked, at another level) */
        mnn_ckpt_t *ck = cli_ckpt_open(arg, NULL, 0);
        if (verbose)
            warnx_("packing %s (zstd level %d, %s)", arg, po.level ? po.level : 3,
                   po.threads ? "worker threads" : "one thread");
        if (!output || !strcmp(output, "-"))
            pack_stdout(ck->dir, &po);
        else
            pack_file(ck->dir, output, &po);
        cli_ckpt_close(ck);
    }
    }
    return EXIT_OK;
}
