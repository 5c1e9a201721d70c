/* replay.c - replay-buffer's buffer and its state file (see replay.h). */
#include <config.h>

#include "cli.h"
#include "replay.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const policy_names[] = {"reservoir", "class-balanced", "recent"};

void buf_init(buffer_t *b, policy_t p, size_t cap, uint64_t seed)
{
    memset(b, 0, sizeof *b);
    b->policy = p;
    b->cap = cap;
    mnn_rng_seed(&b->rng, seed);
}

void buf_free(buffer_t *b)
{
    for (size_t i = 0; i < b->alloc; i++)
        free(b->rec[i].text);
    free(b->rec);
    free(b->label);
    for (size_t j = 0; j < b->nclasses; j++)
        free(b->members[j]);
    free(b->members);
    free(b->mcap);
    free(b->class_seen);
    free(b->class_held);
    free(b->present);
}

/* Makes *p (of *have elements of size bytes, zeroed) hold at least need,
 * doubling, at most max; dies when out of memory. */
static void *grow_to(void *p, size_t *have, size_t need, size_t max, size_t size)
{
    if (need <= *have)
        return p;
    size_t n = *have ? *have : 16;
    while (n < need)
        n = n > max / 2 ? max : 2 * n;
    if (n > max)
        n = max;
    char *q = realloc(p, n * size);
    if (!q)
        die(EXIT_RUNTIME, "out of memory for a buffer of %zu records", n);
    memset(q + *have * size, 0, (n - *have) * size);
    *have = n;
    return q;
}

/* Slots 0..n-1 allocated (n <= cap). */
static void ensure_slots(buffer_t *b, size_t n)
{
    size_t have = b->alloc;
    b->rec = grow_to(b->rec, &have, n, b->cap, sizeof *b->rec);
    have = b->alloc;
    b->label = grow_to(b->label, &have, n, b->cap, sizeof *b->label);
    b->alloc = have;
}

uint64_t below(mnn_rng_t *r, uint64_t n) { return n ? mnn_rng_next(r) % n : 0; }

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
    b->members[y] = grow_to(b->members[y], &b->mcap[y], b->class_held[y] + 1, b->cap,
                            sizeof **b->members);
    sorted_insert(b->members[y], b->class_held[y]++, slot);
    if (b->class_held[y] == 1) {
        b->present = grow_to(b->present, &b->pcap, b->npresent + 1, b->cap + 1,
                             sizeof *b->present);
        sorted_insert(b->present, b->npresent++, y);
    }
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
    size_t *mc = m ? realloc(b->mcap, n * sizeof *mc) : NULL;
    if (mc)
        b->mcap = mc;
    if (!s || !h || !m || !mc)
        die(EXIT_RUNTIME, "out of memory for class %zu", y);
    for (size_t j = b->nclasses; j < n; j++)
        b->class_seen[j] = 0, b->class_held[j] = 0, b->members[j] = NULL, b->mcap[j] = 0;
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
    if (b->n < b->cap) {
        ensure_slots(b, b->n + 1);
        return (long)b->n++;
    }
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
void buf_offer(buffer_t *b, const char *line, size_t len, int32_t y)
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

/* The state file's contents, hashed as they are written: the last line,
 * "end HASH", covers every byte before it. */
static int write_state(void *ctx, FILE *f)
{
    const buffer_t *b = ctx;
    mnn_hash_t *h = mnn_hash_new();
    if (!h)
        return MNN_ENOMEM;
    mnn_hash_reset(h);
    char line[256];
    int n;
#define EMIT(...)                                        \
    do {                                                 \
        n = snprintf(line, sizeof line, __VA_ARGS__);    \
        mnn_hash_update(h, line, (size_t)n);          \
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
        mnn_hash_update(h, r->text, r->len);
        fwrite(r->text, 1, r->len, f);
    }
#undef EMIT
    fprintf(f, "end %016" PRIx64 "\n", mnn_hash_digest(h));
    mnn_hash_free(h);
    return ferror(f) ? MNN_EIO : 0;
}

/* Writes the buffer to path atomically (mnn_write_atomic: a temporary file
 * beside it, fsynced, renamed into place, the directory fsynced). */
int save_state(const buffer_t *b, const char *path, char *why, size_t wsize)
{
    mnn_diag_t d;
    if (mnn_write_atomic(path, write_state, (void *)b, &d) < 0) {
        snprintf(why, wsize, "%s", d.msg);
        return -1;
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
int load_state(buffer_t *b, const char *path, int cap_given, char *why, size_t wsize)
{
    char *data;
    size_t size;
    mnn_diag_t d;
    /* its size is bounded by what it says: a capacity and records of at
     * most MAX_LINE bytes, checked as it is parsed */
    int rc = mnn_read_file(path, SIZE_MAX / 2, &data, &size, &d);
    if (rc == MNN_EIO && errno == ENOENT)
        return 0;
    if (rc < 0) {
        snprintf(why, wsize, "%s", d.msg);
        return -1;
    }
    rc = parse_state(b, data, size, path, cap_given, why, wsize);
    free(data);
    return rc;
}

/* Parses a state file's bytes data[0, size) (data[size] is 0) into b, as
 * load_state.  1 loaded, -1 error (why).  path names it in messages. */
int parse_state(buffer_t *b, const char *data, size_t size, const char *path, int cap_given,
                char *why, size_t wsize)
{
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
    mnn_hash_hex(mnn_hash64(data, (size_t)(tail - data)), have);
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
        /* a "class J N" line for each, at least 10 bytes: a count the
         * file cannot hold is refused before anything is allocated for it */
        if (keyline(&p, end, "classes %zu", 1, &ncl) < 0 || ncl > MAX_CLASS ||
            ncl > (size_t)(end - p) / 10) {
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
        if (len > MAX_LINE) {
            fail = "a record longer than the 64 MiB a line may have";
            goto bad;
        }
        /* counted, not reported: the whole file is refused below */
        badrec_t strict = {.name = path, .skip = 1, .quiet = 1};
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
    return 1;
bad:
    snprintf(why, wsize, "%s: %s (--fresh starts a new buffer)", path, fail);
    return -1;
}

