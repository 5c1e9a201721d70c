/* replay-buffer - pass every record through, in order, and mix in replayed
 * old ones from a bounded buffer, so that a model trained downstream on a
 * drifting stream keeps seeing the past.  The buffer keeps a uniform sample
 * of the stream (reservoir), a class-balanced one (Chrysakis and Moens's
 * CBRS) or the latest records (recent), and survives restarts in a state
 * file saved atomically. */
#include <config.h>

#include "cli.h"
#include "lines.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define MAX_LINE ((size_t)64 << 20)
#define STATE_MAGIC "# mini-nn replay-buffer state 1"

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
        "      --save-every N     also save after every N records\n"
        "      --fresh            start with an empty buffer, even if FILE exists (it\n"
        "                         is replaced at the next save)\n"
        "      --seed S           random seed (default 1) for a new buffer; a loaded\n"
        "                         one goes on with its saved generator\n"
        "      --on-error=MODE    fail (default) or skip bad records, counting them\n"
        "  -q, --quiet            only errors on stderr\n"
        "  -v, --verbose          report loads, saves and counts on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Replayed records are drawn uniformly, with replacement, from the records\n"
        "buffered before the one just passed.  Every record's first field (the\n"
        "label) must be a number.  Memory: the capacity's worth of records.\n"
        "Exit status: 0 success, 1 data or runtime error, 2 usage error.\n"
        "See replay-buffer(1) and mini-nn(7).\n",
        prog);
    out_close();
    exit(EXIT_OK);
}

typedef enum { P_RESERVOIR, P_CLASS, P_RECENT } policy_t;
static const char *const policy_names[] = {"reservoir", "class-balanced", "recent"};

typedef struct {
    policy_t policy;
    size_t cap, n;      /* capacity, records held */
    line_copy_t *rec;   /* n records; recent: a ring, oldest at head */
    int32_t *label;     /* class-balanced: each held record's class */
    size_t head;
    uint64_t seen;      /* records offered, ever */
    uint64_t *class_seen; /* class-balanced: per class, ever */
    size_t *class_held;   /* class-balanced: per class, held now */
    size_t **members;     /* class-balanced: per class, its slots, ascending */
    size_t nclasses;
    size_t *present;      /* classes held now, ascending */
    size_t npresent;
    double credit;      /* replays owed (fractional ratio) */
    mnn_rng_t rng;
} buffer_t;

static void buf_init(buffer_t *b, policy_t p, size_t cap, uint64_t seed)
{
    memset(b, 0, sizeof *b);
    b->policy = p;
    b->cap = cap;
    b->rec = calloc(cap, sizeof *b->rec);
    b->label = calloc(cap, sizeof *b->label);
    if (!b->rec || !b->label)
        die(EXIT_RUNTIME, "out of memory for a buffer of %zu records", cap);
    mnn_rng_seed(&b->rng, seed);
}

static void buf_free(buffer_t *b)
{
    for (size_t i = 0; i < b->cap; i++)
        free(b->rec[i].text);
    free(b->rec);
    free(b->label);
    for (size_t j = 0; j < b->nclasses; j++)
        free(b->members[j]);
    free(b->members);
    free(b->class_seen);
    free(b->class_held);
    free(b->present);
}

static uint64_t below(mnn_rng_t *r, uint64_t n) { return n ? mnn_rng_next(r) % n : 0; }

/* Sorted arrays of size_t: where v is or would go. */
static size_t lower_bound(const size_t *a, size_t n, size_t v)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void sorted_insert(size_t *a, size_t n, size_t v)
{
    size_t i = lower_bound(a, n, v);
    memmove(a + i + 1, a + i, (n - i) * sizeof *a);
    a[i] = v;
}

static void sorted_remove(size_t *a, size_t n, size_t v)
{
    size_t i = lower_bound(a, n, v);
    if (i < n && a[i] == v)
        memmove(a + i, a + i + 1, (n - i - 1) * sizeof *a);
}

/* Slot `slot` now holds a record of class y (class-balanced). */
static void class_add(buffer_t *b, size_t slot, size_t y)
{
    if (!b->members[y] && !(b->members[y] = malloc(b->cap * sizeof **b->members)))
        die(EXIT_RUNTIME, "out of memory for class %zu", y);
    sorted_insert(b->members[y], b->class_held[y]++, slot);
    if (b->class_held[y] == 1)
        sorted_insert(b->present, b->npresent++, y);
}

static void class_remove(buffer_t *b, size_t slot, size_t y)
{
    sorted_remove(b->members[y], b->class_held[y]--, slot);
    if (b->class_held[y] == 0)
        sorted_remove(b->present, b->npresent--, y);
}

/* Makes room for class y's counters. */
static void grow_classes(buffer_t *b, size_t y)
{
    if (y < b->nclasses)
        return;
    size_t n = y + 1;
    uint64_t *s = realloc(b->class_seen, n * sizeof *s);
    if (s)
        b->class_seen = s;
    size_t *h = s ? realloc(b->class_held, n * sizeof *h) : NULL;
    if (h)
        b->class_held = h;
    size_t **m = h ? realloc(b->members, n * sizeof *m) : NULL;
    if (m)
        b->members = m;
    if (!b->present)
        b->present = malloc((b->cap + 1) * sizeof *b->present);
    if (!s || !h || !m || !b->present)
        die(EXIT_RUNTIME, "out of memory for class %zu", y);
    for (size_t j = b->nclasses; j < n; j++)
        b->class_seen[j] = 0, b->class_held[j] = 0, b->members[j] = NULL;
    b->nclasses = n;
}

/* The held record to replace for class y in a full class-balanced buffer
 * (CBRS), or -1 to keep the buffer as it is. */
static long cbrs_victim(buffer_t *b, size_t y)
{
    /* the classes held (at most the capacity of them), not every label */
    size_t most = 0, from = 0;
    for (size_t k = 0; k < b->npresent; k++)
        if (b->class_held[b->present[k]] > most)
            most = b->class_held[b->present[k]];
    if (b->class_held[y] < most) {
        /* y is not among the largest: one of the largest classes gives up
         * a random record (the first of them in a random order of ties) */
        size_t ties = 0;
        for (size_t k = 0; k < b->npresent; k++)
            ties += b->class_held[b->present[k]] == most;
        size_t pick = (size_t)below(&b->rng, ties);
        for (size_t k = 0; k < b->npresent; k++)
            if (b->class_held[b->present[k]] == most && pick-- == 0) {
                from = b->present[k];
                break;
            }
    } else {
        /* among the largest: a reservoir within its own class */
        if (below(&b->rng, b->class_seen[y]) >= b->class_held[y])
            return -1;
        from = y;
    }
    /* the which-th of its slots, in slot order */
    return (long)b->members[from][below(&b->rng, b->class_held[from])];
}

/* Puts a record into slot at (class y for class-balanced). */
static void place(buffer_t *b, long at, int32_t y, const char *line, size_t len, uint64_t rec)
{
    if (b->policy == P_CLASS) {
        if (b->rec[at].rec)
            class_remove(b, (size_t)at, (size_t)b->label[at]);
        class_add(b, (size_t)at, (size_t)y);
    }
    b->label[at] = y;
    line_copy_set(&b->rec[at], line, len, rec);
}

/* Where record i (0-based) of class y goes, by the policy, or -1. */
static long choose_slot(buffer_t *b, uint64_t i, int32_t y)
{
    if (b->n < b->cap)
        return (long)b->n++;
    if (b->policy == P_RECENT) {
        const long at = (long)b->head;
        b->head = (b->head + 1) % b->cap;
        return at;
    }
    if (b->policy == P_CLASS)
        return cbrs_victim(b, (size_t)y);
    const uint64_t j = below(&b->rng, i + 1); /* Algorithm R */
    return j < b->cap ? (long)j : -1;
}

/* Offers a record to the buffer. */
static void buf_offer(buffer_t *b, const char *line, size_t len, int32_t y)
{
    const uint64_t i = b->seen++;
    if (b->policy == P_CLASS) {
        grow_classes(b, (size_t)y);
        b->class_seen[y]++;
    }
    const long at = choose_slot(b, i, y);
    if (at >= 0)
        place(b, at, y, line, len, i + 1);
}

/* ---- the state file ------------------------------------------------------------- */

/* Writes the buffer to path through a temporary file in the same directory,
 * fsynced and renamed into place; then the directory is fsynced. */
static int save_state(const buffer_t *b, const char *path, char *why, size_t wsize)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid()) >= sizeof tmp) {
        snprintf(why, wsize, "%s: path too long", path);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        snprintf(why, wsize, "%s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    XXH3_state_t *h = XXH3_createState();
    if (!h) {
        fclose(f);
        unlink(tmp);
        snprintf(why, wsize, "out of memory");
        return -1;
    }
    XXH3_64bits_reset(h);
    char line[256];
    int n;
#define EMIT(...)                                        \
    do {                                                 \
        n = snprintf(line, sizeof line, __VA_ARGS__);    \
        XXH3_64bits_update(h, line, (size_t)n);          \
        fwrite(line, 1, (size_t)n, f);                   \
    } while (0)
    EMIT("%s\n", STATE_MAGIC);
    EMIT("policy %s\n", policy_names[b->policy]);
    EMIT("capacity %zu\n", b->cap);
    EMIT("seen %" PRIu64 "\n", b->seen);
    EMIT("credit %.17g\n", b->credit);
    EMIT("rng %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", b->rng.s[0], b->rng.s[1],
         b->rng.s[2], b->rng.s[3]);
    if (b->policy == P_CLASS) {
        EMIT("classes %zu\n", b->nclasses);
        for (size_t j = 0; j < b->nclasses; j++)
            EMIT("class %zu %" PRIu64 "\n", j, b->class_seen[j]);
    }
    EMIT("records %zu\n", b->n);
    /* recent: oldest first, so that a load keeps the order */
    for (size_t k = 0; k < b->n; k++) {
        const line_copy_t *r = &b->rec[b->policy == P_RECENT ? (b->head + k) % b->n : k];
        XXH3_64bits_update(h, r->text, r->len);
        fwrite(r->text, 1, r->len, f);
    }
#undef EMIT
    fprintf(f, "end %016" PRIx64 "\n", (uint64_t)XXH3_64bits_digest(h));
    XXH3_freeState(h);
    int rc = fflush(f) == 0 && !ferror(f) && fsync(fd) == 0 ? 0 : -1;
    int e = errno;
    if (fclose(f) != 0 && rc == 0)
        rc = -1, e = errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -1, e = errno;
    if (rc < 0) {
        unlink(tmp);
        snprintf(why, wsize, "%s: %s", path, strerror(e));
        return -1;
    }
    /* the rename itself is durable once the directory is */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = 0;
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* A line of the state file: [*p, nl) advanced past it; NULL at the end. */
static const char *next_line(const char **p, const char *end, size_t *len)
{
    if (*p >= end)
        return NULL;
    const char *s = *p, *nl = memchr(s, '\n', (size_t)(end - s));
    if (!nl)
        return NULL;
    *len = (size_t)(nl - s);
    *p = nl + 1;
    return s;
}

/* Reads "KEY VALUE..." into fmt's arguments; 0 or -1. */
static int keyline(const char **p, const char *end, const char *fmt, int want, ...)
    __attribute__((format(scanf, 3, 5)));
static int keyline(const char **p, const char *end, const char *fmt, int want, ...)
{
    size_t len;
    const char *s = next_line(p, end, &len);
    char buf[256];
    if (!s || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = 0;
    va_list ap;
    va_start(ap, want);
    int got = vsscanf(buf, fmt, ap);
    va_end(ap);
    return got == want ? 0 : -1;
}

/* Loads path into b (a new buffer of the command line's policy and
 * capacity).  1 loaded, 0 no such file, -1 error (why). */
static int load_state(buffer_t *b, const char *path, int cap_given, char *why, size_t wsize)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(why, wsize, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb = {0};
    char *data = NULL;
    size_t size = 0;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size <= SIZE_MAX / 2) {
        size = (size_t)sb.st_size;
        data = malloc(size + 1); /* NUL-terminated for the scans below */
    }
    size_t got = 0;
    while (data && got < size) {
        ssize_t k = read(fd, data + got, size - got);
        if (k <= 0) {
            if (k < 0 && errno == EINTR)
                continue;
            break;
        }
        got += (size_t)k;
    }
    close(fd);
    if (data)
        data[got] = 0;
    if (!data || got != size) {
        free(data);
        snprintf(why, wsize, "%s: cannot read it (%s)", path,
                 data ? "short read" : S_ISREG(sb.st_mode) ? "out of memory" : "not a regular file");
        return -1;
    }
    const char *p = data, *end = data + size, *fail = NULL;
    char pol[32], hex[17] = "";
    size_t cap, nrec, ncl = 0;
    uint64_t seen, sum = 0;
    double credit;
    mnn_rng_t rng;
    /* the trailer first: everything before "end HASH\n" is hashed */
    const char *last = size >= 2 ? memrchr(data, '\n', size - 1) : NULL;
    const char *tail = last ? last + 1 : data;
    if (size == 0 || data[size - 1] != '\n' || (size_t)(end - tail) != 21 ||
        sscanf(tail, "end %16[0-9a-f]", hex) != 1 || strlen(hex) != 16) {
        fail = "no 'end' line with its hash: truncated?";
        goto bad;
    }
    char have[17];
    snprintf(have, sizeof have, "%016" PRIx64, (uint64_t)XXH3_64bits(data, (size_t)(tail - data)));
    if (strcmp(have, hex)) {
        fail = "its hash does not match its contents: damaged";
        goto bad;
    }
    end = tail;
    size_t len;
    const char *l = next_line(&p, end, &len);
    if (!l || len != strlen(STATE_MAGIC) || memcmp(l, STATE_MAGIC, len)) {
        fail = "not a replay-buffer state file (version 1)";
        goto bad;
    }
    if (keyline(&p, end, "policy %31s", 1, pol) < 0 || keyline(&p, end, "capacity %zu", 1, &cap) < 0 ||
        keyline(&p, end, "seen %" SCNu64, 1, &seen) < 0 ||
        keyline(&p, end, "credit %lf", 1, &credit) < 0 ||
        keyline(&p, end, "rng %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, 4, &rng.s[0],
                &rng.s[1], &rng.s[2], &rng.s[3]) < 0) {
        fail = "a malformed header";
        goto bad;
    }
    if (strcmp(pol, policy_names[b->policy])) {
        snprintf(why, wsize, "%s holds a %s buffer, not %s (--fresh starts a new one)", path, pol,
                 policy_names[b->policy]);
        free(data);
        return -1;
    }
    /* counts a hostile file could make wrap or divide by zero; "-1" reads
     * as a huge number and is refused here too */
    if (seen > (uint64_t)1 << 62 || cap == 0 || cap > 100000000 ||
        !(rng.s[0] | rng.s[1] | rng.s[2] | rng.s[3])) {
        fail = "a count or generator state out of range";
        goto bad;
    }
    if (!cap_given && cap != b->cap) { /* the file's capacity, unless -c says */
        const policy_t pl = b->policy;
        buf_free(b);
        buf_init(b, pl, cap, 1);
    }
    if (b->policy == P_CLASS) {
        if (keyline(&p, end, "classes %zu", 1, &ncl) < 0 || ncl > MAX_CLASS) {
            fail = "a malformed class count";
            goto bad;
        }
        if (ncl)
            grow_classes(b, ncl - 1);
        for (size_t j = 0; j < ncl; j++) {
            size_t id;
            if (keyline(&p, end, "class %zu %" SCNu64, 2, &id, &b->class_seen[j]) < 0 || id != j ||
                b->class_seen[j] > seen || (sum += b->class_seen[j]) > seen) {
                fail = "a malformed class line";
                goto bad;
            }
        }
    }
    if (keyline(&p, end, "records %zu", 1, &nrec) < 0 || nrec > cap || nrec > seen ||
        !(credit >= 0 && credit < 1e9)) {
        fail = "a malformed record count";
        goto bad;
    }
    b->seen = seen;
    b->credit = credit;
    b->rng = rng;
    /* the records, oldest first; a smaller capacity now keeps a random
     * subset (the latest, for recent) */
    for (size_t k = 0; k < nrec; k++) {
        const char *r = next_line(&p, end, &len);
        double label;
        if (!r) {
            fail = "fewer records than it says";
            goto bad;
        }
        badrec_t strict = {.name = path, .skip = 1};
        if (read_label(&strict, r, len, 0, &label) < 0 ||
            (b->policy == P_CLASS && (label != floor(label) || label < 0 || label >= (double)ncl))) {
            fail = "a record without a valid label";
            goto bad;
        }
        int32_t y = b->policy == P_CLASS ? (int32_t)label : 0;
        const long at = choose_slot(b, k, y);
        if (at >= 0)
            place(b, at, y, r, len, k + 1);
    }
    if (p != end) {
        fail = "more lines than it says";
        goto bad;
    }
    for (size_t j = 0; j < b->nclasses; j++)
        if (b->class_held[j] > b->class_seen[j]) {
            fail = "more records of a class than it has seen";
            goto bad;
        }
    free(data);
    return 1;
bad:
    snprintf(why, wsize, "%s: %s (--fresh starts a new buffer)", path, fail);
    free(data);
    return -1;
}

static volatile sig_atomic_t stop_sig; /* SIGTERM or SIGINT came */

int main(int argc, char **argv)
{
    enum { O_POLICY = 256, O_STATE, O_SAVE, O_FRESH, O_SEED, O_ONERR };
    static const struct option longopts[] = {
        {"ratio", required_argument, NULL, 'r'},
        {"capacity", required_argument, NULL, 'c'},
        {"policy", required_argument, NULL, O_POLICY},
        {"state", required_argument, NULL, O_STATE},
        {"save-every", required_argument, NULL, O_SAVE},
        {"fresh", no_argument, NULL, O_FRESH},
        {"seed", required_argument, NULL, O_SEED},
        {"on-error", required_argument, NULL, O_ONERR},
        CLI_COMMON_LONGOPTS};
    double ratio = 1;
    size_t cap = 10000;
    uint64_t seed = 1, save_every = 0;
    policy_t policy = P_RESERVOIR;
    const char *state = NULL;
    int fresh = 0, quiet = 0, verbose = 0, cap_given = 0, c;
    badrec_t bad = {.name = "stdin"};
    cli_init("replay-buffer");
    out_setup();
    while ((c = getopt_long(argc, argv, "r:c:qvhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'r': {
            char *e;
            errno = 0;
            ratio = strtod(optarg, &e);
            if (e == optarg || *e || errno || !(ratio >= 0 && ratio <= 1000))
                usage_error("--ratio: '%s' is not a number from 0 to 1000", optarg);
            break;
        }
        case 'c': cap = opt_size("--capacity", optarg, 1, 100000000), cap_given = 1; break;
        case O_POLICY:
            for (policy = 0; policy < 3 && strcmp(optarg, policy_names[policy]); policy++)
                ;
            if (policy == 3)
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
        case 'q': quiet = bad.quiet = 1; break;
        case 'v': verbose = 1; break;
        case 'h': help();
        case 'V': print_version();
        default: usage_error("unknown option");
        }
    }
    if ((save_every || fresh) && !state)
        usage_error("%s goes with --state", save_every ? "--save-every" : "--fresh");
    /* SIGTERM, SIGINT: save and stop between records, even while a read
     * waits; caught from now on, while a FIFO opens or the state loads */
    static const int stops[] = {SIGTERM, SIGINT};
    const int stop_fd = signals_to_pipe(stops, 2, &stop_sig);
    const int fd = open_input(argc - optind, argv + optind, &bad);

    buffer_t b;
    buf_init(&b, policy, cap, seed);
    char why[PATH_MAX + 256];
    if (state && !fresh) {
        int rc = load_state(&b, state, cap_given, why, sizeof why);
        if (rc < 0)
            die(EXIT_RUNTIME, "%s", why);
        if (rc > 0 && verbose)
            warnx_("loaded %zu records from %s (%" PRIu64 " seen)", b.n, state, b.seen);
    }

    mnn_linereader_t lr;
    if (mnn_lr_init(&lr, fd, MAX_LINE) < 0)
        die(EXIT_RUNTIME, "out of memory");
    lr.cancel_fd = stop_fd;
    uint64_t recs = 0, replayed = 0;
    const char *line;
    size_t len;
    for (;;) {
        if (stop_sig)
            break;
        if (next_record(&lr, &bad, &line, &len) != 1)
            break; /* the end, or a signal */
        double label;
        if (read_label(&bad, line, len, lr.lineno, &label) < 0)
            continue;
        if (policy == P_CLASS && check_class(&bad, line, len, lr.lineno, label) < 0)
            continue;
        fwrite(line, 1, len, stdout);
        putchar('\n');
        recs++;
        /* replays: from what was buffered before this record */
        b.credit += ratio;
        if (b.n == 0)
            b.credit -= floor(b.credit); /* nothing to replay yet */
        while (b.credit >= 1) {
            /* by age for recent (oldest first), so that a reloaded ring,
             * stored oldest first, draws the same records */
            const size_t j = (size_t)below(&b.rng, b.n);
            const line_copy_t *r = &b.rec[policy == P_RECENT ? (b.head + j) % b.n : j];
            fwrite(r->text, 1, r->len, stdout);
            b.credit -= 1;
            replayed++;
        }
        buf_offer(&b, line, len, policy == P_CLASS ? (int32_t)label : 0);
        if (save_every && recs % save_every == 0) {
            fflush(stdout); /* what the state counts has been written */
            out_check();
            if (save_state(&b, state, why, sizeof why) < 0)
                die(EXIT_RUNTIME, "cannot save the buffer: %s", why);
        }
    }
    mnn_lr_free(&lr);
    if (fd != STDIN_FILENO)
        close(fd);
    fflush(stdout);
    out_check();
    if (stop_sig && !quiet)
        warnx_("stopping on a signal after %" PRIu64 " records", recs);
    if (state) {
        if (save_state(&b, state, why, sizeof why) < 0)
            die(EXIT_RUNTIME, "cannot save the buffer: %s", why);
        if (verbose)
            warnx_("saved %zu records to %s", b.n, state);
    }
    badrec_report(&bad);
    if (verbose)
        warnx_("%" PRIu64 " records passed, %" PRIu64 " replayed; the buffer holds %zu", recs,
               replayed, b.n);
    buf_free(&b);
    out_close();
    return EXIT_OK;
}
