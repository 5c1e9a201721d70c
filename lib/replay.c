/* replay.c - replay buffers: a bounded buffer of record lines that keeps a
 * uniform sample of a stream (Vitter's Algorithm R), a class-balanced one
 * (Chrysakis and Moens's CBRS) or the latest records (a ring); the replay
 * credit of a fractional ratio and the uniform draw of replayed records;
 * and the buffer's state file, "# mini-nn replay-buffer state 1", sealed by
 * a last line "end HASH" (XXH3-64 of every byte before it) and saved
 * atomically.
 *
 * Out of memory is returned (MNN_ENOMEM), never fatal: every allocation a
 * record needs is made before the buffer changes, so a buffer stays valid,
 * and a state that fails to parse leaves the buffer it was parsed for as it
 * was. */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_MAGIC "# mini-nn replay-buffer state 1"

static const char *const policy_names[] = {"reservoir", "class-balanced", "recent"};

const char *mnn_replay_policy_name(mnn_replay_policy_t p)
{
    return (unsigned)p < 3 ? policy_names[p] : "?";
}

int mnn_replay_policy_parse(const char *name, mnn_replay_policy_t *p)
{
    for (unsigned i = 0; i < 3; i++)
        if (!strcmp(name, policy_names[i])) {
            *p = (mnn_replay_policy_t)i;
            return 0;
        }
    return MNN_EINVAL;
}

int mnn_replay_init(mnn_replay_t *b, mnn_replay_policy_t p, size_t cap, uint64_t seed)
{
    memset(b, 0, sizeof *b);
    if ((unsigned)p >= 3 || cap == 0 || cap > MNN_REPLAY_MAX_CAP)
        return MNN_EINVAL;
    b->policy = p;
    b->cap = cap;
    mnn_rng_seed(&b->rng, seed);
    return 0;
}

void mnn_replay_free(mnn_replay_t *b)
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
    memset(b, 0, sizeof *b);
}

/* ---- memory ------------------------------------------------------------------- */

/* p (of *have elements of size bytes) made to hold at least min(need, max),
 * need >= 1, doubling, the new elements zeroed; NULL when out of memory (p
 * and *have as they were). */
static void *grow_to(void *p, size_t *have, size_t need, size_t max, size_t size)
{
    if (need > max)
        need = max;
    if (need <= *have)
        return p;
    size_t n = *have ? *have : 16, bytes;
    while (n < need)
        n = n > max / 2 ? max : 2 * n;
    if (n > max)
        n = max;
    if (mnn_size_mul(n, size, &bytes) < 0)
        return NULL;
    char *q = realloc(p, bytes);
    if (!q)
        return NULL;
    memset(q + *have * size, 0, (n - *have) * size);
    *have = n;
    return q;
}

/* Slots 0..n-1 allocated (n <= cap). */
static int ensure_slots(mnn_replay_t *b, size_t n, mnn_diag_t *d)
{
    size_t have = b->alloc;
    mnn_replay_rec_t *r = grow_to(b->rec, &have, n, b->cap, sizeof *b->rec);
    if (r) {
        b->rec = r;
        have = b->alloc;
        int32_t *l = grow_to(b->label, &have, n, b->cap, sizeof *b->label);
        if (l) {
            b->label = l;
            b->alloc = have;
            return 0;
        }
    }
    /* a rec array larger than alloc says holds zeroed slots beyond it */
    return mnn_fail(d, MNN_ENOMEM, "out of memory for a buffer of %zu records", n);
}

int mnn_replay_rec_set(mnn_replay_rec_t *r, const char *line, size_t len, uint64_t rec)
{
    if (len > MNN_REPLAY_MAX_LINE)
        return MNN_ELIMIT;
    if (r->cap < len + 1) {
        size_t cap = r->cap ? r->cap : 64;
        while (cap < len + 1)
            cap *= 2;
        char *t = realloc(r->text, cap);
        if (!t)
            return MNN_ENOMEM;
        r->text = t;
        r->cap = cap;
    }
    memcpy(r->text, line, len);
    r->text[len] = '\n';
    r->len = len + 1;
    r->rec = rec;
    return 0;
}

/* A uniform draw in [0, n) (0 when n is 0). */
static uint64_t below(mnn_rng_t *r, uint64_t n) { return n ? mnn_rng_next(r) % n : 0; }

/* ---- class-balanced bookkeeping ------------------------------------------------ */

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

/* Room for one more slot of class y and, if it has none, one more class
 * present: what class_add needs. */
static int class_reserve(mnn_replay_t *b, size_t y, mnn_diag_t *d)
{
    size_t *m = grow_to(b->members[y], &b->mcap[y], b->class_held[y] + 1, b->cap,
                        sizeof *m);
    if (!m)
        return mnn_fail(d, MNN_ENOMEM, "out of memory for class %zu", y);
    b->members[y] = m;
    if (b->class_held[y] == 0) {
        size_t *pr = grow_to(b->present, &b->pcap, b->npresent + 1, b->cap + 1, sizeof *pr);
        if (!pr)
            return mnn_fail(d, MNN_ENOMEM, "out of memory for class %zu", y);
        b->present = pr;
    }
    return 0;
}

/* Slot `slot` now holds a record of class y (room reserved). */
static void class_add(mnn_replay_t *b, size_t slot, size_t y)
{
    sorted_insert(b->members[y], b->class_held[y]++, slot);
    if (b->class_held[y] == 1)
        sorted_insert(b->present, b->npresent++, y);
}

static void class_remove(mnn_replay_t *b, size_t slot, size_t y)
{
    sorted_remove(b->members[y], b->class_held[y]--, slot);
    if (b->class_held[y] == 0)
        sorted_remove(b->present, b->npresent--, y);
}

/* Makes room for class y's counters (exactly y + 1 of them: a label far
 * above the others costs one allocation, not one per record). */
static int grow_classes(mnn_replay_t *b, size_t y, mnn_diag_t *d)
{
    if (y < b->nclasses)
        return 0;
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
        return mnn_fail(d, MNN_ENOMEM, "out of memory for class %zu", y);
    for (size_t j = b->nclasses; j < n; j++)
        b->class_seen[j] = 0, b->class_held[j] = 0, b->members[j] = NULL, b->mcap[j] = 0;
    b->nclasses = n;
    return 0;
}

/* ---- the policies ---------------------------------------------------------------- */

/* The held record to replace for class y in a full class-balanced buffer
 * (CBRS), or -1 to keep the buffer as it is. */
static long cbrs_victim(mnn_replay_t *b, size_t y)
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

/* Where record i (0-based) of class y goes, by the policy: n while the
 * buffer fills, then a held record's slot (recent: the oldest, at head,
 * which place advances), or -1. */
static long choose_slot(mnn_replay_t *b, uint64_t i, int32_t y)
{
    if (b->n < b->cap)
        return (long)b->n;
    if (b->policy == MNN_REPLAY_RECENT)
        return (long)b->head;
    if (b->policy == MNN_REPLAY_CLASS)
        return cbrs_victim(b, (size_t)y);
    const uint64_t j = below(&b->rng, i + 1); /* Algorithm R */
    return j < b->cap ? (long)j : -1;
}

/* Puts record number rec (class y for class-balanced) into slot at (n, or
 * a held one); the memory first, so that a failure changes nothing. */
static int place(mnn_replay_t *b, size_t at, int32_t y, const char *line, size_t len,
                 uint64_t rec, mnn_diag_t *d)
{
    const int held = at < b->n, cls = b->policy == MNN_REPLAY_CLASS;
    if (!held && ensure_slots(b, at + 1, d) < 0)
        return MNN_ENOMEM;
    if (cls && (!held || b->label[at] != y) && class_reserve(b, (size_t)y, d) < 0)
        return MNN_ENOMEM;
    if (mnn_replay_rec_set(&b->rec[at], line, len, rec) < 0)
        return mnn_fail(d, MNN_ENOMEM, "out of memory holding a record of %zu bytes", len);
    if (cls) {
        if (held)
            class_remove(b, at, (size_t)b->label[at]);
        class_add(b, at, (size_t)y);
    }
    b->label[at] = y;
    if (!held)
        b->n++;
    else if (b->policy == MNN_REPLAY_RECENT) /* the next oldest */
        b->head = (b->head + 1) % b->cap;
    return 0;
}

int mnn_replay_offer(mnn_replay_t *b, const char *line, size_t len, int32_t y, mnn_diag_t *d)
{
    if (len > MNN_REPLAY_MAX_LINE)
        return mnn_fail(d, MNN_ELIMIT, "a record of %zu bytes, more than the %zu a line may have",
                        len, MNN_REPLAY_MAX_LINE);
    if (b->policy == MNN_REPLAY_CLASS) {
        if (y < 0 || y >= MNN_REPLAY_MAX_CLASS)
            return mnn_fail(d, MNN_EINVAL, "class %" PRId32 " is not from 0 to %d", y,
                            MNN_REPLAY_MAX_CLASS - 1);
        if (grow_classes(b, (size_t)y, d) < 0)
            return MNN_ENOMEM;
        b->class_seen[y]++;
    }
    const uint64_t i = b->seen++;
    const long at = choose_slot(b, i, y);
    return at < 0 ? 0 : place(b, (size_t)at, y, line, len, i + 1, d);
}

/* ---- replays ---------------------------------------------------------------------- */

const mnn_replay_rec_t *mnn_replay_at(const mnn_replay_t *b, size_t k)
{
    if (k >= b->n)
        return NULL;
    return &b->rec[b->policy == MNN_REPLAY_RECENT ? (b->head + k) % b->n : k];
}

uint64_t mnn_replay_due(mnn_replay_t *b, double ratio)
{
    if (!(ratio >= 0 && ratio <= MNN_REPLAY_MAX_RATIO))
        return 0;
    b->credit += ratio;
    if (b->n == 0)
        b->credit -= floor(b->credit); /* nothing to replay yet */
    uint64_t due = 0;
    while (b->credit >= 1) {
        b->credit -= 1;
        due++;
    }
    return due;
}

const mnn_replay_rec_t *mnn_replay_draw(mnn_replay_t *b)
{
    /* by age (mnn_replay_at) for recent, so that a reloaded ring, stored
     * oldest first, draws the same records */
    return b->n ? mnn_replay_at(b, (size_t)below(&b->rng, b->n)) : NULL;
}

/* ---- the state file: writing ---------------------------------------------------- */

int mnn_replay_write(const mnn_replay_t *b, FILE *f)
{
    mnn_hash_t *h = mnn_hash_new();
    if (!h)
        return MNN_ENOMEM;
    char line[256];
    int n;
    /* each line hashed as it is written: "end HASH" covers every byte */
#define EMIT(...)                                     \
    do {                                              \
        n = snprintf(line, sizeof line, __VA_ARGS__); \
        mnn_hash_update(h, line, (size_t)n);          \
        fwrite(line, 1, (size_t)n, f);                \
    } while (0)
    EMIT("%s\n", STATE_MAGIC);
    EMIT("policy %s\n", mnn_replay_policy_name(b->policy));
    EMIT("capacity %zu\n", b->cap);
    EMIT("seen %" PRIu64 "\n", b->seen);
    EMIT("credit %.17g\n", b->credit);
    EMIT("rng %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", b->rng.s[0], b->rng.s[1],
         b->rng.s[2], b->rng.s[3]);
    if (b->policy == MNN_REPLAY_CLASS) {
        EMIT("classes %zu\n", b->nclasses);
        for (size_t j = 0; j < b->nclasses; j++)
            EMIT("class %zu %" PRIu64 "\n", j, b->class_seen[j]);
    }
    EMIT("records %zu\n", b->n);
#undef EMIT
    /* recent: oldest first, so that a load keeps the order */
    for (size_t k = 0; k < b->n; k++) {
        const mnn_replay_rec_t *r = mnn_replay_at(b, k);
        mnn_hash_update(h, r->text, r->len);
        fwrite(r->text, 1, r->len, f);
    }
    fprintf(f, "end %016" PRIx64 "\n", mnn_hash_digest(h));
    mnn_hash_free(h);
    return ferror(f) ? MNN_EIO : 0;
}

static int write_fn(void *ctx, FILE *f) { return mnn_replay_write(ctx, f); }

int mnn_replay_save(const mnn_replay_t *b, const char *path, mnn_diag_t *d)
{
    return mnn_write_atomic(path, write_fn, (void *)b, d);
}

/* ---- the state file: parsing ---------------------------------------------------- */

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

/* The seal: NULL and *tail the start of the "end HASH" line that hashes
 * every byte before it, or what is wrong (*code set). */
static const char *check_seal(const char *data, size_t size, const char **tail, int *code)
{
    const char *last = size >= 2 ? memrchr(data, '\n', size - 1) : NULL;
    *tail = last ? last + 1 : data;
    const size_t tlen = (size_t)(data + size - *tail);
    char t[22], hex[17] = "", have[17];
    *code = MNN_ECORRUPT;
    if (size == 0 || data[size - 1] != '\n' || tlen != 21)
        return "no 'end' line with its hash: truncated?";
    memcpy(t, *tail, tlen); /* a NUL-terminated copy for sscanf */
    t[tlen] = 0;
    if (sscanf(t, "end %16[0-9a-f]", hex) != 1 || strlen(hex) != 16)
        return "no 'end' line with its hash: truncated?";
    mnn_hash_hex(mnn_hash64(data, (size_t)(*tail - data)), have);
    if (strcmp(have, hex))
        return "its hash does not match its contents: damaged";
    return NULL;
}

/* What the header says. */
typedef struct {
    char policy[32]; /* its policy's name, as written */
    size_t cap;      /* capacity */
    uint64_t seen;   /* records offered, ever */
    double credit;   /* replays owed */
    mnn_rng_t rng;   /* the generator's state */
} header_t;

/* The magic line and the header of [*p, end); NULL or what is wrong. */
static const char *parse_header(const char **p, const char *end, header_t *h)
{
    size_t len;
    const char *l = next_line(p, end, &len);
    if (!l || len != strlen(STATE_MAGIC) || memcmp(l, STATE_MAGIC, len))
        return "not a replay-buffer state file (version 1)";
    if (keyline(p, end, "policy %31s", 1, h->policy) < 0 ||
        keyline(p, end, "capacity %zu", 1, &h->cap) < 0 ||
        keyline(p, end, "seen %" SCNu64, 1, &h->seen) < 0 ||
        keyline(p, end, "credit %lf", 1, &h->credit) < 0 ||
        keyline(p, end, "rng %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, 4, &h->rng.s[0],
                &h->rng.s[1], &h->rng.s[2], &h->rng.s[3]) < 0)
        return "a malformed header";
    return NULL;
}

/* Counts a hostile file could make wrap or divide by zero; "-1" reads as a
 * huge number and is refused here too. */
static int header_in_range(const header_t *h)
{
    return h->seen <= (uint64_t)1 << 62 && h->cap > 0 && h->cap <= MNN_REPLAY_MAX_CAP &&
           (h->rng.s[0] | h->rng.s[1] | h->rng.s[2] | h->rng.s[3]);
}

/* Class-balanced: "classes N" and a "class J SEEN" line for each into b;
 * NULL or what is wrong (*code set; out of memory: sub says it). */
static const char *parse_classes(mnn_replay_t *b, const char **p, const char *end,
                                 uint64_t seen, int *code, mnn_diag_t *sub)
{
    size_t ncl;
    uint64_t sum = 0;
    /* a class line has at least 10 bytes: a count the file cannot hold is
     * refused before anything is allocated for it */
    if (keyline(p, end, "classes %zu", 1, &ncl) < 0 || ncl > MNN_REPLAY_MAX_CLASS ||
        ncl > (size_t)(end - *p) / 10)
        return "a malformed class count";
    if (ncl && grow_classes(b, ncl - 1, sub) < 0) {
        *code = MNN_ENOMEM;
        return sub->msg;
    }
    for (size_t j = 0; j < ncl; j++) {
        size_t id;
        if (keyline(p, end, "class %zu %" SCNu64, 2, &id, &b->class_seen[j]) < 0 || id != j ||
            b->class_seen[j] > seen || (sum += b->class_seen[j]) > seen)
            return "a malformed class line";
    }
    return NULL;
}

/* A record's label: its first field (up to ',', tab or space) as a number. */
static int record_label(const char *line, size_t len, double *label)
{
    const char *q = line, *end = line + len;
    while (q < end && *q != ',' && *q != '\t' && *q != ' ')
        q++;
    return mnn_parse_double(line, q, label);
}

/* The nrec records, oldest first, through the policy: a smaller capacity
 * now keeps a random subset (the latest, for recent).  NULL or what is
 * wrong (*code set; out of memory: sub says it). */
static const char *parse_records(mnn_replay_t *b, const char **p, const char *end, size_t nrec,
                                 int *code, mnn_diag_t *sub)
{
    for (size_t k = 0; k < nrec; k++) {
        size_t len;
        const char *r = next_line(p, end, &len);
        double label;
        if (!r)
            return "fewer records than it says";
        if (len > MNN_REPLAY_MAX_LINE) {
            *code = MNN_ELIMIT;
            return "a record longer than the 64 MiB a line may have";
        }
        if (record_label(r, len, &label) < 0 ||
            (b->policy == MNN_REPLAY_CLASS &&
             (label != floor(label) || label < 0 || label >= (double)b->nclasses)))
            return "a record without a valid label";
        const int32_t y = b->policy == MNN_REPLAY_CLASS ? (int32_t)label : 0;
        const long at = choose_slot(b, k, y);
        if (at >= 0 && place(b, (size_t)at, y, r, len, k + 1, sub) < 0) {
            *code = MNN_ENOMEM;
            return sub->msg;
        }
    }
    if (*p != end)
        return "more lines than it says";
    for (size_t j = 0; j < b->nclasses; j++)
        if (b->class_held[j] > b->class_seen[j])
            return "more records of a class than it has seen";
    return NULL;
}

/* The body of the file, [p, end) before its seal, into nb (made for the
 * file's capacity or b's); NULL or what is wrong (*code set; sub holds
 * what is not a constant). */
static const char *parse_body(mnn_replay_t *nb, const mnn_replay_t *b, const char *p,
                              const char *end, int keep_cap, int *code, mnn_diag_t *sub)
{
    header_t h;
    size_t nrec;
    const char *fail = parse_header(&p, end, &h);
    *code = MNN_EFORMAT;
    if (fail)
        return fail;
    if (strcmp(h.policy, mnn_replay_policy_name(b->policy))) {
        *code = mnn_fail(sub, MNN_EINVAL, "holds a %s buffer, not %s", h.policy,
                         mnn_replay_policy_name(b->policy));
        return sub->msg;
    }
    if (!header_in_range(&h))
        return "a count or generator state out of range";
    mnn_replay_init(nb, b->policy, keep_cap ? b->cap : h.cap, 1);
    if (b->policy == MNN_REPLAY_CLASS && (fail = parse_classes(nb, &p, end, h.seen, code, sub)))
        return fail;
    if (keyline(&p, end, "records %zu", 1, &nrec) < 0 || nrec > h.cap || nrec > h.seen ||
        !(h.credit >= 0 && h.credit < 1e9))
        return "a malformed record count";
    nb->seen = h.seen;
    nb->credit = h.credit;
    nb->rng = h.rng;
    return parse_records(nb, &p, end, nrec, code, sub);
}

int mnn_replay_parse(mnn_replay_t *b, const char *data, size_t size, const char *name,
                     int keep_cap, mnn_diag_t *d)
{
    const char *tail;
    int code;
    mnn_diag_t sub = {""};
    mnn_replay_t nb;
    memset(&nb, 0, sizeof nb);
    const char *fail = check_seal(data, size, &tail, &code);
    if (!fail)
        fail = parse_body(&nb, b, data, tail, keep_cap, &code, &sub);
    if (fail) {
        mnn_replay_free(&nb);
        /* "NAME holds a reservoir buffer, not recent"; else "NAME: what" */
        return mnn_fail(d, code, code == MNN_EINVAL ? "%s %s" : "%s: %s", name, fail);
    }
    mnn_replay_free(b);
    *b = nb;
    return 1;
}

int mnn_replay_load(mnn_replay_t *b, const char *path, int keep_cap, mnn_diag_t *d)
{
    char *data;
    size_t size;
    /* its size is bounded by what it says: a capacity and records of at
     * most MNN_REPLAY_MAX_LINE bytes, checked as it is parsed */
    int rc = mnn_read_file(path, SIZE_MAX / 2, &data, &size, d);
    if (rc == MNN_EIO && errno == ENOENT)
        return 0;
    if (rc < 0)
        return rc;
    rc = mnn_replay_parse(b, data, size, path, keep_cap, d);
    free(data);
    return rc;
}
