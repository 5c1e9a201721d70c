/* ingest-state.c - stream-ingest's part in a cut: the source position as a
 * small text document, written and read back strictly, and the chained
 * XXH3 of the source bytes passed (see ingest.h). */
#include <config.h>

#include "ingest.h"
#include "cli.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the source hash ------------------------------------------------------------ */

void srchash_init(srchash_t *s) { srchash_at(s, 0, 0); }

void srchash_at(srchash_t *s, uint64_t bytes, uint64_t chain)
{
    if (!s->h && !(s->h = mnn_hash_new()))
        die(EXIT_RUNTIME, "out of memory");
    mnn_hash_reset(s->h);
    s->bytes = bytes;
    s->chain = chain;
}

static void le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

void srchash_feed(srchash_t *s, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n) {
        uint64_t room = INGEST_BLOCK - s->bytes % INGEST_BLOCK;
        size_t k = n < room ? n : (size_t)room;
        mnn_hash_update(s->h, c, k);
        s->bytes += k, c += k, n -= k;
        if (s->bytes % INGEST_BLOCK == 0) { /* a block complete: chained */
            unsigned char b[16];
            le64(b, s->chain);
            le64(b + 8, mnn_hash_digest(s->h));
            s->chain = mnn_hash64(b, sizeof b);
            mnn_hash_reset(s->h);
        }
    }
}

void srchash_free(srchash_t *s)
{
    mnn_hash_free(s->h);
    s->h = NULL;
}

/* ---- the document ---------------------------------------------------------------- */

#define FORMAT "stream-ingest-state/1"

/* The keys, in their order; hex: a hash in 16 hex digits, else a number. */
static const struct {
    const char *key;
    size_t at; /* offsetof the field */
    int hex;
} keys[] = {
    {"file", offsetof(ingest_state_t, file), 0},
    {"offset", offsetof(ingest_state_t, offset), 0},
    {"line", offsetof(ingest_state_t, line), 0},
    {"bytes", offsetof(ingest_state_t, bytes), 0},
    {"lines", offsetof(ingest_state_t, lines), 0},
    {"records", offsetof(ingest_state_t, records), 0},
    {"skipped", offsetof(ingest_state_t, skipped), 0},
    {"chain", offsetof(ingest_state_t, chain), 1},
    {"xxh3", offsetof(ingest_state_t, xxh3), 1},
};
#define NKEYS (sizeof keys / sizeof keys[0])

static uint64_t *field(ingest_state_t *s, size_t k) { return (uint64_t *)((char *)s + keys[k].at); }

size_t state_format(const ingest_state_t *s, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "format: " FORMAT "\n");
    for (size_t k = 0; k < NKEYS && n < size; k++) {
        const uint64_t v = *field((ingest_state_t *)s, k);
        n += (size_t)snprintf(buf + n, size - n, keys[k].hex ? "%s: %016" PRIx64 "\n"
                              : "%s: %" PRIu64 "\n", keys[k].key, v);
    }
    if (n >= size)
        die(EXIT_RUNTIME, "internal error: the state does not fit %zu bytes", size);
    return n;
}

static int fail(char *why, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return -1;
}

/* v from the n characters at p: decimal (no sign, no leading zero) or 16
 * lowercase hex digits. */
static int value(const char *p, size_t n, int hex, uint64_t *v)
{
    char b[24];
    if (n == 0 || n >= sizeof b)
        return -1;
    memcpy(b, p, n);
    b[n] = 0;
    if (!hex)
        return strspn(b, "0123456789") == n && (n == 1 || b[0] != '0') ? mnn_parse_u64(b, v)
                                                                       : -1;
    if (n != 16 || strspn(b, "0123456789abcdef") != n)
        return -1;
    *v = strtoull(b, NULL, 16);
    return 0;
}

int state_parse(const char *buf, size_t len, ingest_state_t *s, char *why, size_t whysize)
{
    memset(s, 0, sizeof *s);
    const char *p = buf, *end = buf + len;
    for (size_t no = 1; no <= NKEYS + 1; no++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return fail(why, whysize, p == end ? "it ends before line %zu ('%s')"
                        : "line %zu is not a whole line", no,
                        no == 1 ? "format" : keys[no - 2].key);
        const char *colon = memchr(p, ':', (size_t)(nl - p));
        if (!colon || colon + 1 == nl || colon[1] != ' ')
            return fail(why, whysize, "line %zu is not 'key: value'", no);
        const size_t kl = (size_t)(colon - p);
        const char *v = colon + 2;
        const size_t vl = (size_t)(nl - v);
        if (no == 1) {
            if (kl != 6 || memcmp(p, "format", 6))
                return fail(why, whysize, "line 1 is not its format");
            if (vl != strlen(FORMAT) || memcmp(v, FORMAT, vl))
                return fail(why, whysize, "format '%.*s', not " FORMAT, (int)(vl > 40 ? 40 : vl),
                            v);
        } else {
            size_t k = 0;
            while (k < NKEYS && (strlen(keys[k].key) != kl || memcmp(keys[k].key, p, kl)))
                k++;
            if (k == NKEYS)
                return fail(why, whysize, "line %zu: unknown key '%.*s'", no,
                            (int)(kl > 40 ? 40 : kl), p);
            if (k != no - 2)
                return fail(why, whysize, "line %zu: '%s' out of place (expected '%s')", no,
                            keys[k].key, keys[no - 2].key);
            if (value(v, vl, keys[k].hex, field(s, k)) < 0)
                return fail(why, whysize, "line %zu: %s '%.*s' is not %s", no, keys[k].key,
                            (int)(vl > 40 ? 40 : vl), v,
                            keys[k].hex ? "16 lowercase hex digits" : "a decimal number");
        }
        p = nl + 1;
    }
    if (p != end)
        return fail(why, whysize, "more than its %zu lines", NKEYS + 1);
    if (s->offset > s->bytes || (s->file == 0 && s->offset != s->bytes))
        return fail(why, whysize, "offset %" PRIu64 " in file %" PRIu64 " does not fit %" PRIu64
                    " bytes", s->offset, s->file, s->bytes);
    if (s->line > s->lines || s->records + s->skipped > s->lines || s->lines > s->bytes)
        return fail(why, whysize, "its line and record counts do not fit together");
    if (s->bytes < INGEST_BLOCK && s->chain != 0)
        return fail(why, whysize, "a chain over no whole block");
    return 0;
}
