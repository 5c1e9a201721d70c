/* ckpt-ship - move checkpoint archives to another machine over ssh, or to a
 * local directory: verified end to end, resumable after a broken
 * connection, published atomically, never overwriting.
 *
 * This file holds the options, the usage and main(); ship.h lists the
 * other parts (the protocol, the sender, its sources and transport, the
 * receiver) and describes the protocol. */
#include <config.h>

#include "cli.h"
#include "ship.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static noreturn void help(void)
{
    printf(
        "Usage: %s [OPTION]... SRC... [USER@]HOST:DIR\n"
        "  or:  %s [OPTION]... SRC... DIR\n"
        "  or:  %s [OPTION]... --files-from=FILE DEST\n"
        "Ship checkpoint archives to DIR on another machine, through ssh, or to a\n"
        "local DIR.  SRC is a checkpoint archive (.tar.zst), a checkpoint directory\n"
        "(packed on the fly; a checkpoint root means its 'latest'), or '-', an\n"
        "archive on stdin.  The receiver writes a partial file, checks its size and\n"
        "XXH3 against the sender's, fsyncs it, renames it into place (never over an\n"
        "existing file), fsyncs DIR and only then acknowledges.  After a broken\n"
        "connection the next attempt sends only the bytes the receiver lacks.\n"
        "Each checkpoint shipped is printed on stdout as DEST/NAME.\n"
        "\n"
        "  -e, --rsh CMD          the ssh command (default $CKPT_SHIP_RSH, else 'ssh'),\n"
        "                         run by /bin/sh as: CMD HOST REMOTE-COMMAND\n"
        "      --receive-path CMD how the far end runs ckpt-ship, for its shell\n"
        "                         (default 'ckpt-ship')\n"
        "      --files-from FILE  ship each checkpoint path read from FILE ('-': stdin)\n"
        "                         as its line arrives, over one connection\n"
        "      --name NAME        the file name under DIR (one SRC only)\n"
        "      --keep N           the receiver keeps the newest N step-*.tar.zst\n"
        "                         (default 0: all)\n"
        "      --level N          zstd level when packing a directory, 1 to 19\n"
        "                         (default 3, as ckpt-pack)\n"
        "      --retries N        attempts after a failed one, each resuming\n"
        "                         (default 3; backoff 1, 2, 4 ... 60 s)\n"
        "      --timeout SEC      drop a connection idle for SEC seconds (default 60;\n"
        "                         0: never)\n"
        "      --bwlimit RATE     at most RATE KiB/s (suffix K, M or G: KiB, MiB, GiB)\n"
        "      --receive          be the receiving end, in DIR (started by the sender)\n"
        "  -q, --quiet            errors only\n"
        "  -v, --verbose          report each step on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Progress is shown on stderr when it is a terminal.  SRC '-' cannot be resumed\n"
        "or retried.\n"
        "Exit status: 0 every checkpoint shipped and verified, 1 one failed after its\n"
        "retries, 2 usage error.  See ckpt-ship(1) and mini-nn(7).\n",
        prog, prog, prog);
    out_close();
    exit(EXIT_OK);
}

static uint64_t opt_rate(const char *s)
{
    size_t n = strlen(s);
    double v, mul = 1024;
    if (n > 1) {
        switch (toupper((unsigned char)s[n - 1])) {
        case 'K': mul = 1024, n--; break;
        case 'M': mul = 1024.0 * 1024, n--; break;
        case 'G': mul = 1024.0 * 1024 * 1024, n--; break;
        }
    }
    if (mnn_parse_double(s, s + n, &v) < 0 || !(v > 0) || v * mul > 1e15)
        usage_error("--bwlimit: '%s' is not a rate (KiB/s, or with K, M or G)", s);
    uint64_t r = (uint64_t)(v * mul);
    return r ? r : 1;
}

int main(int argc, char **argv)
{
    enum { O_RECEIVE = 256, O_RPATH, O_FILES, O_NAME, O_KEEP, O_LEVEL, O_RETRIES, O_TIMEOUT,
           O_BWLIMIT };
    static const struct option longopts[] = {
        {"rsh", required_argument, NULL, 'e'},
        {"receive-path", required_argument, NULL, O_RPATH},
        {"files-from", required_argument, NULL, O_FILES},
        {"name", required_argument, NULL, O_NAME},
        {"keep", required_argument, NULL, O_KEEP},
        {"level", required_argument, NULL, O_LEVEL},
        {"retries", required_argument, NULL, O_RETRIES},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"bwlimit", required_argument, NULL, O_BWLIMIT},
        {"receive", no_argument, NULL, O_RECEIVE},
        CLI_COMMON_LONGOPTS};
    const char *files_from = NULL;
    int receive = 0, c;
    cli_init("ckpt-ship");
    out_setup();
    opt.rsh = getenv("CKPT_SHIP_RSH");
    if (!opt.rsh || !*opt.rsh)
        opt.rsh = "ssh";
    opt.receive_path = "ckpt-ship";
    while ((c = getopt_long(argc, argv, "e:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'e':
            if (!*optarg)
                usage_error("-e: empty command");
            opt.rsh = optarg;
            break;
        case O_RPATH:
            if (!*optarg)
                usage_error("--receive-path: empty command");
            opt.receive_path = optarg;
            break;
        case O_FILES: files_from = optarg; break;
        case O_NAME:
            if (!name_ok(optarg))
                usage_error("--name: '%s' cannot be a file name in the destination",
                            printable(optarg));
            opt.name = optarg;
            break;
        case O_KEEP: opt.keep = opt_size("--keep", optarg, 0, 1000000); break;
        case O_LEVEL: opt.level = (int)opt_size("--level", optarg, 1, 19); break;
        case O_RETRIES: opt.retries = (unsigned)opt_size("--retries", optarg, 0, 1000); break;
        case O_TIMEOUT: opt.timeout = (unsigned)opt_size("--timeout", optarg, 0, 86400); break;
        case O_BWLIMIT: opt.bwlimit = opt_rate(optarg); break;
        case O_RECEIVE: receive = 1; break;
        default: cli_common(c, &opt.quiet, &opt.verbose, help);
        }
    }
    int nargs = argc - optind;
    if (receive) {
        if (nargs != 1)
            usage_error("--receive takes one DIR");
        if (files_from || opt.name)
            usage_error("--receive takes no --files-from or --name");
        return ship_receive(argv[optind], STDIN_FILENO, STDOUT_FILENO);
    }
    if (files_from ? nargs != 1 : nargs < 2)
        usage_error(files_from ? "--files-from takes one DEST and no SRC"
                               : "expected SRC... DEST");
    if (opt.name && (files_from || nargs != 2))
        usage_error("--name takes exactly one SRC");
    int dashes = 0;
    for (int i = optind; i < argc - 1; i++)
        dashes += !strcmp(argv[i], "-");
    if (dashes > 1 || (files_from && !strcmp(files_from, "-") && dashes))
        usage_error("stdin can be read only once");
    opt.progress = !opt.quiet && isatty(STDERR_FILENO);
    signal(SIGPIPE, SIG_IGN); /* a dead connection is an error from write() */
    signal(SIGCHLD, SIG_DFL); /* waitpid() must see the children's status */

    dest_t d;
    dest_parse(&d, argv[argc - 1]);
    int failed = ship_send(&d, argv + optind, argc - 1 - optind, files_from);
    dest_free(&d);
    out_close();
    return failed ? EXIT_RUNTIME : EXIT_OK;
}
