/* ckpt-resume - verify a checkpoint (directory, archive or stdin), adapt it
 * to this machine, and continue training on stdin with sgd-train. */
#include <config.h>

#include "cli.h"
#include "dist.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static noreturn void help(void)
{
    printf(
        "Usage: %s [OPTION]... CKPT [SGD-TRAIN-OPTION]...\n"
        "       %s --inspect CKPT\n"
        "Verify the checkpoint CKPT (a directory, a .tar.zst archive from ckpt-pack,\n"
        "or - for an archive on stdin), then continue its training on the records\n"
        "read from stdin, with its stored settings adapted to this machine.  The\n"
        "options after CKPT go to sgd-train (e.g. --ckpt-dir DIR, --skip-seen).\n"
        "\n"
        "      --inspect          print what the checkpoint holds, as YAML, and exit\n"
        "  -w, --workdir DIR      where an archive is unpacked (default: .); the\n"
        "                         checkpoint lands in DIR/NAME (under mpirun, rank N's\n"
        "                         in DIR/rank-N/NAME)\n"
        "      --batch N          train with batches of N records; the learning rate\n"
        "                         is scaled by N / the stored batch (linear scaling)\n"
        "      --threads N        OpenBLAS threads (default: as many as the checkpoint\n"
        "                         was trained on, which keeps the result bit-exact)\n"
        "  -n, --dry-run          print the sgd-train command instead of running it\n"
        "  -q, --quiet            no notes on stderr\n"
        "  -v, --verbose          more detail on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "It refuses to start when the model, its optimizer state and the training\n"
        "buffers would not fit in the memory available.\n"
        "Exit status: that of sgd-train; else 0 success (--inspect), 1 a bad or\n"
        "damaged checkpoint or no room, 2 usage error.  See ckpt-resume(1).\n",
        prog, prog);
    out_close();
    exit(EXIT_OK);
}

/* Bytes this machine has for a training (MemAvailable); what a training
 * needs is mnn_train_memory's. */
static uint64_t memory_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    if (f) {
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
                break;
        fclose(f);
    }
    if (kb)
        return (uint64_t)kb * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : UINT64_MAX;
}

static size_t count_params(const mnn_spec_t *s)
{
    size_t n = 0;
    mnn_spec_params(s, &n); /* the manifest's parser checked that it fits */
    return n;
}

/* YAML double-quoted string */
static void put_quoted(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void inspect(const char *path, const mnn_manifest_t *mf, const char *dir)
{
    const mnn_spec_t *s = &mf->spec;
    printf("checkpoint: ");
    put_quoted(path);
    printf("\nformat: mini-nn-checkpoint/1\ntool: ");
    put_quoted(mf->tool);
    printf("\ncreated: %s\nstep: %" PRIu64 "\nrecords_seen: %" PRIu64 "\n",
           mf->created[0] ? mf->created : "null", mf->step, mf->records_seen);
    printf("parameters: %zu\ninput: %zu\n%s: %zu\n", count_params(s), s->input,
           s->loss == MNN_LOSS_XENT ? "classes" : "outputs", s->outputs);
    printf("layers:\n");
    size_t fan = s->input;
    for (size_t i = 0; i < s->nlayers; i++) {
        printf("  - {weight: [%zu, %zu], bias: [%zu], activation: %s}\n", s->layers[i].units, fan,
               s->layers[i].units, mnn_act_name(s->layers[i].act));
        fan = s->layers[i].units;
    }
    if (s->nexits) {
        printf("exits:\n");
        for (size_t j = 0; j < s->nexits; j++)
            printf("  - {after: %zu, weight: [%zu, %zu], bias: [%zu], loss_weight: %.9g}\n",
                   s->exits[j], s->outputs, s->layers[s->exits[j]].units, s->outputs,
                   (double)(s->exit_weights ? s->exit_weights[j] : 1.0f));
    }
    if (s->temperature != 1.0f)
        printf("temperature: %.9g\n", (double)s->temperature);
    printf("optimizer: %s\nbatch: %zu\n", mnn_opt_name(s->opt.type), s->batch);
    if (mf->cut) {
        /* a pipeline's cut: the stage that committed it, and those before it */
        printf("cut: {id: %" PRIu64 ", stage: %" PRIu32 ", program: %s, pending: %" PRIu64 "}\n",
               mf->cut, mf->cut_stage, mf->cut_program, mf->pending);
        printf(mf->nstages ? "stages:\n" : "stages: []\n");
        for (size_t i = 0; i < mf->nstages; i++) {
            const mnn_manifest_file_t *f = mnn_manifest_find(mf, mf->stages[i].file);
            printf("  - {index: %" PRIu32 ", program: %s, file: %s, bytes: %" PRIu64 "}\n",
                   mf->stages[i].index, mf->stages[i].program, mf->stages[i].file,
                   f ? f->bytes : 0);
        }
    }
    /* lineage: this checkpoint, then each parent found beside it */
    printf("lineage:\n  - ");
    put_quoted(path);
    putchar('\n');
    mnn_manifest_t cur = {0}, next;
    const char *parent = mf->parent;
    char *dcopy = dir ? strdup(dir) : NULL;
    const char *root = dcopy ? dirname(dcopy) : NULL;
    for (int depth = 0; parent && depth < 1000; depth++) {
        printf("  - ");
        put_quoted(parent);
        putchar('\n');
        char p[PATH_MAX];
        if (parent[0] == '/')
            snprintf(p, sizeof p, "%s", parent);
        else if (!root || snprintf(p, sizeof p, "%s/%s", root, parent) >= (int)sizeof p)
            break;
        mnn_diag_t d;
        if (mnn_manifest_load(&next, p, NULL, &d) < 0)
            break; /* the ancestors are not here */
        mnn_manifest_free(&cur);
        cur = next;
        parent = cur.parent;
    }
    mnn_manifest_free(&cur);
    free(dcopy);
    printf("files:\n");
    for (size_t i = 0; i < mf->nfiles; i++)
        printf("  - {name: %s, bytes: %" PRIu64 ", xxh3: %s}\n", mf->files[i].name,
               mf->files[i].bytes, mf->files[i].xxh3);
    out_close();
}

/* Which ranks the training goes on on (mpirun's, or one process) and with
 * which shards, said by rank 0: the same shards are bit-exact. */
static void note_ranks(const char *ckpt, const char *dir, const mnn_manifest_t *mf, int argc,
                       char **argv, int quiet)
{
    size_t R = 1, rank = 0;
    mpirun_rank(&R, &rank);
    mnn_train_state_t st;
    mnn_diag_t d;
    if (mnn_ckpt_load_state(dir, mf, &st, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    const size_t had_R = st.ranks ? st.ranks : 1, had_S = st.shards ? st.shards : 1;
    if (quiet || rank != 0 || (had_R == 1 && had_S == 1 && R == 1))
        return;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--shards") || !strncmp(argv[i], "--shards=", 9)) {
            warnx_("%s was trained on %zu rank%s with %zu shard%s; going on on %zu with the "
                   "shards given", ckpt, had_R, had_R == 1 ? "" : "s", had_S,
                   had_S == 1 ? "" : "s", R);
            return;
        }
    const size_t S = dist_resume_shards(had_S, R);
    warnx_("%s was trained on %zu rank%s with %zu shard%s; going on on %zu rank%s with %zu: %s",
           ckpt, had_R, had_R == 1 ? "" : "s", had_S, had_S == 1 ? "" : "s", R,
           R == 1 ? "" : "s", S,
           S == had_S ? "bit-exact" : "not bit-exact, the sums round otherwise (--shards picks)");
}

/* The sgd-train to run: $MNN_SGD_TRAIN, the one beside this program, or
 * the first on PATH. */
static const char *find_sgd_train(char *buf, size_t size)
{
    const char *env = getenv("MNN_SGD_TRAIN");
    if (env && *env)
        return env;
    ssize_t n = readlink("/proc/self/exe", buf, size - 1);
    if (n > 0) {
        buf[n] = 0;
        char *slash = strrchr(buf, '/');
        if (slash && (size_t)(slash - buf) + sizeof "/sgd-train" <= size) {
            strcpy(slash, "/sgd-train");
            if (access(buf, X_OK) == 0)
                return buf;
        }
    }
    return "sgd-train";
}

int main(int argc, char **argv)
{
    enum { O_INSPECT = 256, O_BATCH, O_THREADS };
    static const struct option longopts[] = {
        {"inspect", no_argument, NULL, O_INSPECT},
        {"workdir", required_argument, NULL, 'w'},
        {"batch", required_argument, NULL, O_BATCH},
        {"threads", required_argument, NULL, O_THREADS},
        {"dry-run", no_argument, NULL, 'n'},
        CLI_COMMON_LONGOPTS};
    const char *workdir = ".";
    int do_inspect = 0, dry = 0, quiet = 0, verbose = 0, c;
    size_t batch = 0, threads = 0;

    cli_init("ckpt-resume");
    out_setup();
    /* '+': stop at CKPT; what follows it belongs to sgd-train */
    while ((c = getopt_long(argc, argv, "+w:nqvhV", longopts, NULL)) != -1) {
        switch (c) {
        case O_INSPECT: do_inspect = 1; break;
        case 'w': workdir = optarg; break;
        case O_BATCH: batch = opt_size("--batch", optarg, 1, 1 << 20); break;
        case O_THREADS: threads = opt_size("--threads", optarg, 1, 1024); break;
        case 'n': dry = 1; break;
        default: cli_common(c, &quiet, &verbose, help);
        }
    }
    if (optind >= argc)
        usage_error("a checkpoint is required (a directory, an archive, or -)");
    const char *ckpt = argv[optind++];
    if (do_inspect && optind < argc)
        usage_error("--inspect takes no sgd-train options");
    if (!strcmp(ckpt, "-") && !do_inspect)
        usage_error("-: stdin carries the records to train on; give the archive as a "
                    "file, or use --inspect");

    /* an archive is unpacked into the work directory and kept (sgd-train
     * resumes from it); a directory's files are hashed once the spec is
     * known to fit, or at once for --inspect */
    const unsigned how = do_inspect ? MNN_OPEN_VERIFY | MNN_OPEN_NO_EXTRACT : MNN_OPEN_KEEP;
    /* under mpirun every rank unpacks an archive: each into its own place */
    char rankdir[PATH_MAX];
    size_t ranks, rank;
    if (!do_inspect && mpirun_rank(&ranks, &rank) && ranks > 1) {
        if (snprintf(rankdir, sizeof rankdir, "%s/rank-%zu", workdir, rank) >= (int)sizeof rankdir)
            die(EXIT_USAGE, "--workdir %s: too long a name", workdir);
        if (mkdir(rankdir, 0777) != 0 && errno != EEXIST)
            die(EXIT_RUNTIME, "%s: %s", rankdir, strerror(errno));
        workdir = rankdir;
    }
    mnn_ckpt_t *ck = cli_ckpt_open(ckpt, workdir, how);
    mnn_diag_t d;
    const mnn_manifest_t *mf = &ck->mf;
    char *dir = ck->dir;
    if (ck->archive && !do_inspect && !quiet)
        warnx_("%s: unpacked into %s", ck->src, dir);
    if (do_inspect) {
        inspect(ck->src, mf, dir);
        cli_ckpt_close(ck);
        return EXIT_OK;
    }

    /* adapt to this machine */
    const mnn_spec_t *s = &mf->spec;
    size_t use_batch = batch ? batch : s->batch;
    uint64_t need = mnn_train_memory(s, use_batch), have = memory_available();
    if (need > have)
        die(EXIT_RUNTIME,
            "%s: the model (%zu parameters) and its training buffers need about %" PRIu64
            " MiB, but only %" PRIu64 " MiB are available here",
            ckpt, count_params(s), need >> 20, have >> 20);
    if (mnn_ckpt_verify(ck, &d) < 0)
        die(EXIT_RUNTIME, "%s", d.msg);
    char lr[64] = "", bs[32] = "", th[32];
    if (batch && batch != s->batch) {
        /* linear scaling rule: the learning rate follows the batch size */
        snprintf(lr, sizeof lr, "%.9g", (double)s->opt.lr * (double)batch / (double)s->batch);
        snprintf(bs, sizeof bs, "%zu", batch);
        if (!quiet)
            warnx_("batch %zu instead of %zu: learning rate %s instead of %.9g", batch, s->batch,
                   lr, (double)s->opt.lr);
    }
    snprintf(th, sizeof th, "%zu", threads);
    note_ranks(ckpt, dir, mf, argc - optind, argv + optind, quiet);

    char self[PATH_MAX];
    const char *sgd = find_sgd_train(self, sizeof self);
    size_t extra = (size_t)(argc - optind);
    char **av = calloc(extra + 12, sizeof *av);
    if (!av)
        die(EXIT_RUNTIME, "out of memory");
    size_t k = 0;
    av[k++] = (char *)sgd;
    av[k++] = "--resume";
    av[k++] = dir;
    if (threads) { /* else sgd-train takes the checkpoint's count */
        av[k++] = "--threads";
        av[k++] = th;
    }
    if (bs[0]) {
        av[k++] = "--batch";
        av[k++] = bs;
        av[k++] = "--lr";
        av[k++] = lr;
    }
    for (int i = optind; i < argc; i++)
        av[k++] = argv[i];
    av[k] = NULL;
    if (verbose || dry) {
        FILE *f = dry ? stdout : stderr;
        if (!dry)
            fprintf(f, "%s: running", prog);
        for (size_t i = 0; i < k; i++)
            fprintf(f, i || !dry ? " %s" : "%s", av[i]);
        fputc('\n', f);
    }
    if (dry) {
        out_close();
        free(av);
        cli_ckpt_close(ck);
        return EXIT_OK;
    }
    fflush(stdout);
    execvp(sgd, av);
    die(EXIT_RUNTIME, "cannot run %s: %s", sgd, strerror(errno));
}
