/* sample-state.c - stream-sample's whole state as the bytes of its part in
 * a pipeline cut, and back: text lines (mnn_state_put's), the samplers'
 * fields in the library's words, the records held as they are:
 *
 *   mini-nn stream-sample state 1
 *   options -k 10 --decay 0.5        the sample's options, one spelling
 *   rng S0 S1 S2 S3
 *   counts RECS WRITTEN EMISSIONS EMITTED_AT MARKED
 *   bernoulli ...                    -p: the sampler (mnn_bernoulli_write)
 *   reservoir ... | wres ... topk ... | topk ...     -k, then its records:
 *   records N                        the slots 0 .. N-1, each
 *   record REC LEN                   its record number, then LEN bytes: the
 *   LINE                             line and its '\n'
 *   classes C                        --per-class: for each class 0 .. C-1
 *   reservoir ...                    its reservoir and its records
 *   records N ...
 *   end HASH                         XXH3-64 of every byte before this line
 *
 * A state is taken only whole: every count is checked against what it
 * bounds before anything is made for it, and against what the samplers and
 * the program would have done. */
#include <config.h>

#include "cli.h"
#include "stream-sample.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_MAGIC "mini-nn stream-sample state 1"
#define SEAL_LEN 21                 /* "end " + 16 hex digits + '\n' */
#define RECS_MAX ((uint64_t)1 << 62) /* records a state may have counted */
#define CLASS_MIN_BYTES 40          /* a class's lines take at least this */

static void put_records(FILE *f, const held_t *h)
{
    mnn_state_put(f, "records", "z", h->n);
    for (size_t i = 0; i < h->n; i++) {
        mnn_state_put(f, "record", "uz", h->slot[i].rec, h->slot[i].len);
        fwrite(h->slot[i].text, 1, h->slot[i].len, f);
    }
}

void state_save(const sample_t *s, membuf_t *m)
{
    char opts[128];
    FILE *f = membuf_open(m);
    sample_options(s, opts, sizeof opts);
    fprintf(f, "%s\noptions %s\n", STATE_MAGIC, opts);
    mnn_state_put(f, "rng", "uuuu", s->rng.s[0], s->rng.s[1], s->rng.s[2], s->rng.s[3]);
    mnn_state_put(f, "counts", "uuuuu", s->recs, s->written, s->emissions, s->emitted_at,
                  (uint64_t)s->marked);
    switch (s->mode) {
    case M_BERNOULLI: mnn_bernoulli_write(&s->bern, f); break;
    case M_RESERVOIR:
        if (s->wcol)
            mnn_wres_write(&s->wres, f);
        else if (s->decay)
            mnn_topk_write(&s->top, f);
        else
            mnn_reservoir_write(&s->res, f);
        put_records(f, &s->held);
        break;
    case M_PERCLASS:
        mnn_state_put(f, "classes", "z", s->classes.n);
        for (size_t j = 0; j < s->classes.n; j++) {
            mnn_reservoir_write(&s->classes.res[j], f);
            put_records(f, &s->classes.held[j]);
        }
        break;
    case M_EVERY:
    case M_NONE: break;
    }
    const int failed = ferror(f);
    if (fclose(f) != 0 || failed)
        die(EXIT_RUNTIME, "out of memory for the sample's state");
    if (m->cap - m->len < SEAL_LEN + 1)
        m->p = xrealloc(m->p, m->cap = m->len + SEAL_LEN + 1, 1);
    snprintf(m->p + m->len, SEAL_LEN + 1, "end %016" PRIx64 "\n", mnn_hash64(m->p, m->len));
    m->len += SEAL_LEN;
}

/* ---- reading it back ------------------------------------------------------------ */

typedef struct {
    const char *p, *end; /* what is left before the seal */
    char *err;           /* what is wrong */
    size_t errsize;
    mnn_diag_t d;        /* the library's word on it */
} reader_t;

static int fail(reader_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(reader_t *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, r->errsize, fmt, ap);
    va_end(ap);
    return -1;
}

/* A library reader's verdict: 0, or -1 with its message. */
static int lib(reader_t *r, int rc)
{
    return rc < 0 ? fail(r, "%s", r->d.msg) : 0;
}

/* The next line, which must be tag followed by exactly what, into buf (its
 * value, NUL-terminated, at most size - 1 bytes). */
static int text_line(reader_t *r, const char *tag, char *buf, size_t size)
{
    const char *nl = memchr(r->p, '\n', (size_t)(r->end - r->p));
    const size_t tl = strlen(tag);
    if (!nl || (size_t)(nl - r->p) < tl || memcmp(r->p, tag, tl) || (size_t)(nl - r->p) - tl >= size)
        return fail(r, "no '%.*s' line where one belongs", (int)strcspn(tag, " "), tag);
    memcpy(buf, r->p + tl, (size_t)(nl - r->p) - tl);
    buf[(size_t)(nl - r->p) - tl] = 0;
    r->p = nl + 1;
    return 0;
}

/* What s says it holds, printable, for a message. */
static const char *printable(char *s)
{
    for (char *c = s; *c; c++)
        if ((unsigned char)*c < ' ' || (unsigned char)*c > '~')
            *c = '?';
    return s;
}

/* The records block of h, want of them, each a record of class y (-1:
 * any label), numbered 1 .. recs. */
static int get_records(reader_t *r, held_t *h, size_t want, long y, uint64_t recs)
{
    size_t n;
    if (lib(r, mnn_state_get(&r->p, r->end, &r->d, "records", "z", &n)) < 0)
        return -1;
    if (n != want)
        return fail(r, "%zu records held where its sampler holds %zu", n, want);
    for (size_t i = 0; i < n; i++) {
        uint64_t rec;
        size_t len;
        double label;
        if (lib(r, mnn_state_get(&r->p, r->end, &r->d, "record", "uz", &rec, &len)) < 0)
            return -1;
        if (len > (size_t)(r->end - r->p) || len > MAX_LINE + 1)
            return fail(r, "a record of %zu bytes, more than what follows", len);
        const char *t = r->p, *last = t + len - 1;
        if (rec == 0 || rec > recs || len < 2 || *last != '\n' || memchr(t, '\n', len - 1) ||
            t[0] == '#' || mnn_parse_double(t, label_end(t, last), &label) < 0 ||
            (y >= 0 && label != (double)y))
            return fail(r, "slot %zu does not hold a record line%s numbered 1 to %llu", i,
                        y >= 0 ? " of its class" : "", (unsigned long long)recs);
        hold(h, (long)i, t, len - 1, rec);
        r->p += len;
    }
    return 0;
}

static int get_perclass(reader_t *r, sample_t *s)
{
    size_t nc;
    uint64_t sum = 0;
    if (lib(r, mnn_state_get(&r->p, r->end, &r->d, "classes", "z", &nc)) < 0)
        return -1;
    /* a count the state cannot hold is refused before anything is made */
    if (nc > MAX_CLASS || nc > (size_t)(r->end - r->p) / CLASS_MIN_BYTES)
        return fail(r, "%zu classes: more than %s", nc,
                    nc > MAX_CLASS ? "there are class ids" : "the state holds");
    if (nc)
        classes_need(s, nc - 1);
    for (size_t j = 0; j < nc; j++) {
        mnn_reservoir_t *res = &s->classes.res[j];
        if (lib(r, mnn_reservoir_read(res, &r->p, r->end, &r->d)) < 0)
            return -1;
        /* its slots exist once it has a record; the last class has one */
        if ((j + 1 == nc && res->seen == 0) || (sum += res->seen) > s->recs)
            return fail(r, "class %zu: counts that do not add up", j);
        if (res->seen && !s->classes.held[j].slot)
            held_init(&s->classes.held[j], s->k);
        if (get_records(r, &s->classes.held[j], res->seen < s->k ? res->seen : s->k, (long)j,
                        s->recs) < 0)
            return -1;
    }
    return sum == s->recs ? 0 : fail(r, "%llu records by class, %llu in all",
                                     (unsigned long long)sum, (unsigned long long)s->recs);
}

/* The samplers of s's mode and their records. */
static int get_samplers(reader_t *r, sample_t *s)
{
    const uint64_t filled = s->recs < s->k ? s->recs : s->k;
    switch (s->mode) {
    case M_BERNOULLI:
        if (lib(r, mnn_bernoulli_read(&s->bern, &r->p, r->end, &r->d)) < 0)
            return -1;
        return s->bern.seen == s->recs ? 0 : fail(r, "the sampler's count is not the records'");
    case M_RESERVOIR:
        if (s->wcol) {
            if (lib(r, mnn_wres_read(&s->wres, &r->p, r->end, &r->d)) < 0)
                return -1;
            if (s->wres.top.n > s->recs)
                return fail(r, "more records held than counted");
            return get_records(r, &s->held, s->wres.top.n, -1, s->recs);
        }
        if (s->decay) {
            if (lib(r, mnn_topk_read(&s->top, &r->p, r->end, &r->d)) < 0)
                return -1;
            if (s->top.n != filled)
                return fail(r, "%zu records held of %llu", s->top.n,
                            (unsigned long long)s->recs);
            return get_records(r, &s->held, s->top.n, -1, s->recs);
        }
        if (lib(r, mnn_reservoir_read(&s->res, &r->p, r->end, &r->d)) < 0)
            return -1;
        if (s->res.seen != s->recs)
            return fail(r, "the sampler's count is not the records'");
        return get_records(r, &s->held, (size_t)filled, -1, s->recs);
    case M_PERCLASS: return get_perclass(r, s);
    case M_EVERY:
    case M_NONE: break;
    }
    return 0;
}

/* No record is held twice. */
static int distinct(reader_t *r, const sample_t *s)
{
    size_t n = s->held.n;
    for (size_t j = 0; j < s->classes.n; j++)
        n += s->classes.held[j].n;
    const slot_t **all = malloc((n ? n : 1) * sizeof *all);
    if (!all)
        die(EXIT_RUNTIME, "out of memory");
    size_t m = 0;
    for (size_t i = 0; i < s->held.n; i++)
        all[m++] = &s->held.slot[i];
    for (size_t j = 0; j < s->classes.n; j++)
        for (size_t i = 0; i < s->classes.held[j].n; i++)
            all[m++] = &s->classes.held[j].slot[i];
    qsort(all, m, sizeof *all, by_rec);
    int rc = 0;
    for (size_t i = 1; i < m && rc == 0; i++)
        if (all[i]->rec == all[i - 1]->rec)
            rc = fail(r, "record %llu held twice", (unsigned long long)all[i]->rec);
    free(all);
    return rc;
}

int state_load(sample_t *s, const char *data, size_t size, char *err, size_t errsize)
{
    reader_t r = {.p = data, .end = data, .err = err, .errsize = errsize};
    char buf[160], want[128], hex[17];
    /* the seal first: nothing of a damaged state is read */
    const char *tail = size >= SEAL_LEN ? data + size - SEAL_LEN : data;
    if (size < SEAL_LEN + 1 || tail[-1] != '\n' || memcmp(tail, "end ", 4) ||
        data[size - 1] != '\n' || strspn(tail + 4, "0123456789abcdef") != 16)
        return fail(&r, "no 'end' line with its hash: truncated?");
    mnn_hash_hex(mnn_hash64(data, (size_t)(tail - data)), hex);
    if (memcmp(hex, tail + 4, 16))
        return fail(&r, "its hash does not match its contents: damaged");
    r.end = tail;
    if (text_line(&r, "", buf, sizeof buf) < 0 || strcmp(buf, STATE_MAGIC))
        return fail(&r, "not a stream-sample state (version 1)");
    sample_options(s, want, sizeof want);
    if (text_line(&r, "options ", buf, sizeof buf) < 0)
        return -1;
    if (strcmp(buf, want))
        return fail(&r, "the state of stream-sample %.60s, not of %s: resume a stage with "
                    "the options it had", printable(buf), want);
    uint64_t marked;
    if (lib(&r, mnn_state_get(&r.p, r.end, &r.d, "rng", "uuuu", &s->rng.s[0], &s->rng.s[1],
                              &s->rng.s[2], &s->rng.s[3])) < 0 ||
        lib(&r, mnn_state_get(&r.p, r.end, &r.d, "counts", "uuuuu", &s->recs, &s->written,
                              &s->emissions, &s->emitted_at, &marked)) < 0)
        return -1;
    if (!(s->rng.s[0] | s->rng.s[1] | s->rng.s[2] | s->rng.s[3]))
        return fail(&r, "a generator state of zeros");
    if (s->recs > RECS_MAX || marked > 1 ||
        (s->emitted_at != UINT64_MAX && (s->emitted_at > s->recs || s->emissions == 0)))
        return fail(&r, "counts out of range");
    s->marked |= (int)marked; /* --emit-every given now marks them too */
    if (get_samplers(&r, s) < 0 || distinct(&r, s) < 0)
        return -1;
    if (r.p != r.end)
        return fail(&r, "more lines than its sample holds");
    return 0;
}
