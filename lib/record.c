/* record.c - the wire: locale-independent number parsing, a line reader,
 * and the dense (CSV/TSV) and sparse (libsvm) record parsers. */
#include "internal.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---- numbers ----------------------------------------------------------- */

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static void init_c_locale(void) { c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

static const double pow10_exact[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Slow path: strtod in the C locale on a NUL-terminated copy. */
static int parse_slow(const char *s, const char *end, double *out)
{
    char small[128], *tmp = small;
    size_t n = (size_t)(end - s);
    if (n >= sizeof small && !(tmp = malloc(n + 1)))
        return MNN_ENOMEM;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    int rc = MNN_ENOMEM;
    pthread_once(&c_locale_once, init_c_locale);
    if (c_locale) {
        char *stop;
        double v = strtod_l(tmp, &stop, c_locale);
        rc = stop == tmp + n ? 0 : MNN_EFORMAT;
        if (rc == 0)
            *out = v;
    }
    if (tmp != small)
        free(tmp);
    return rc;
}

int mnn_parse_double(const char *s, const char *end, double *out)
{
    const char *p = s;
    int neg = 0;
    if (p < end && (*p == '-' || *p == '+'))
        neg = *p++ == '-';
    /* nan, inf, infinity: numbers, but never valid data */
    size_t rest = (size_t)(end - p);
    if (rest && (*p | 0x20) != 'n' && (*p | 0x20) != 'i')
        ; /* the common case: not a word */
    else if ((rest == 3 && (!strncasecmp(p, "nan", 3) || !strncasecmp(p, "inf", 3))) ||
             (rest == 8 && !strncasecmp(p, "infinity", 8)))
        return MNN_EINVAL;
    uint64_t mant = 0;
    int digits = 0, any = 0;
    int64_t exp10 = 0; /* from the digits: up to their count either way */
    while (p < end && (unsigned)(*p - '0') < 10) {
        if (digits < 19) {
            mant = mant * 10 + (uint64_t)(*p - '0');
            if (mant)
                digits++;
        } else
            exp10++;
        any = 1;
        p++;
    }
    if (p < end && *p == '.') {
        p++;
        while (p < end && (unsigned)(*p - '0') < 10) {
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                if (mant)
                    digits++;
                exp10--;
            }
            any = 1;
            p++;
        }
    }
    if (!any)
        return MNN_EFORMAT;
    if (p < end && (*p == 'e' || *p == 'E')) {
        const char *q = p + 1;
        int eneg = 0, edig = 0;
        int64_t e = 0;
        if (q < end && (*q == '-' || *q == '+'))
            eneg = *q++ == '-';
        /* clamped at 10^17, beyond anything the digits before it can make
         * up for (no string holds 10^17 of them): the value then overflows
         * or underflows, as it would unclamped */
        while (q < end && (unsigned)(*q - '0') < 10) {
            if (e < (int64_t)100000000000000000)
                e = e * 10 + (*q - '0');
            edig++;
            q++;
        }
        if (!edig)
            return MNN_EFORMAT;
        exp10 += eneg ? -e : e;
        p = q;
    }
    if (p != end)
        return MNN_EFORMAT;
    double v;
    if (mant == 0)
        v = 0.0;
    else if (digits <= 15 && exp10 >= -22 && exp10 <= 22) {
        /* Clinger's fast path: both operands exact, one rounding. */
        v = (double)mant;
        v = exp10 < 0 ? v / pow10_exact[-exp10] : v * pow10_exact[exp10];
    } else {
        int rc = parse_slow(s, end, &v);
        if (rc < 0)
            return rc;
        neg = 0; /* strtod saw the sign */
    }
    if (neg)
        v = -v;
    if (!isfinite(v))
        return MNN_EINVAL;
    *out = v;
    return 0;
}

int mnn_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s)
        return MNN_EFORMAT;
    for (; *s; s++) {
        unsigned dgt = (unsigned)(*s - '0');
        if (dgt >= 10)
            return MNN_EFORMAT;
        if (v > (UINT64_MAX - dgt) / 10)
            return MNN_EOVERFLOW;
        v = v * 10 + dgt;
    }
    *out = v;
    return 0;
}

int mnn_parse_float(const char *s, const char *end, float *out)
{
    double v;
    int rc = mnn_parse_double(s, end, &v);
    if (rc < 0)
        return rc;
    float f = (float)v;
    if (!isfinite(f))
        return MNN_EINVAL;
    *out = f;
    return 0;
}

/* ---- line reader ------------------------------------------------------- */

int mnn_lr_init(mnn_linereader_t *lr, int fd, size_t max_line)
{
    memset(lr, 0, sizeof *lr);
    lr->fd = fd;
    lr->cancel_fd = -1;
    lr->max_line = max_line ? max_line : (size_t)64 << 20;
    lr->cap = 1 << 20;
    lr->buf = malloc(lr->cap);
    return lr->buf ? 0 : MNN_ENOMEM;
}

void mnn_lr_free(mnn_linereader_t *lr)
{
    free(lr->buf);
    lr->buf = NULL;
}

int mnn_lr_ready(const mnn_linereader_t *lr)
{
    if (lr->start < lr->end &&
        memchr(lr->buf + lr->start, '\n', lr->end - lr->start))
        return 1;
    return lr->eof || lr->err;
}

int mnn_lr_next(mnn_linereader_t *lr, const char **line, size_t *len)
{
    size_t scanned = lr->start; /* bytes before this have no '\n' */
    for (;;) {
        char *nl = memchr(lr->buf + scanned, '\n', lr->end - scanned);
        if (nl) {
            *line = lr->buf + lr->start;
            *len = (size_t)(nl - *line);
            lr->start = (size_t)(nl - lr->buf) + 1;
            lr->lineno++;
            if (*len > lr->max_line)
                return MNN_EOVERFLOW;
            return 0;
        }
        if (lr->end - lr->start > lr->max_line) {
            lr->lineno++;
            return MNN_EOVERFLOW;
        }
        if (lr->eof) {
            if (lr->start == lr->end)
                return MNN_EOF;
            *line = lr->buf + lr->start;
            *len = lr->end - lr->start;
            lr->start = lr->end;
            lr->lineno++;
            return 0;
        }
        if (lr->err)
            return MNN_EIO;
        /* make room: slide the partial line to the front, grow if full */
        if (lr->start > 0) {
            memmove(lr->buf, lr->buf + lr->start, lr->end - lr->start);
            lr->end -= lr->start;
            lr->start = 0;
        }
        scanned = lr->end;
        if (lr->end == lr->cap) {
            size_t ncap = lr->cap * 2;
            char *nb = realloc(lr->buf, ncap);
            if (!nb)
                return MNN_ENOMEM;
            lr->buf = nb;
            lr->cap = ncap;
        }
        if (lr->cancel_fd >= 0) {
            struct pollfd pfd[2] = {{.fd = lr->fd, .events = POLLIN},
                                    {.fd = lr->cancel_fd, .events = POLLIN}};
            int pr;
            do
                pr = poll(pfd, 2, -1);
            while (pr < 0 && errno == EINTR);
            if (pr > 0 && pfd[1].revents)
                return MNN_ECANCELED;
        }
        ssize_t got;
        do
            got = read(lr->fd, lr->buf + lr->end, lr->cap - lr->end);
        while (got < 0 && errno == EINTR);
        if (got < 0) {
            lr->err = errno;
            return MNN_EIO;
        }
        if (got == 0)
            lr->eof = 1;
        lr->end += (size_t)got;
    }
}

/* ---- records ----------------------------------------------------------- */

static int field_error(mnn_diag_t *d, int rc, const char *what, size_t field,
                       const char *s, const char *e)
{
    int n = (int)(e - s > 40 ? 40 : e - s);
    if (rc == MNN_EINVAL)
        return mnn_fail(d, MNN_EFORMAT, "%s %zu: '%.*s' is not finite (NaN/Inf)",
                        what, field, n, s);
    return mnn_fail(d, MNN_EFORMAT, "%s %zu: '%.*s' is not a number", what,
                    field, n, s);
}

static int parse_label(const mnn_record_fmt_t *f, const char *s, const char *e,
                       float *label, mnn_diag_t *d)
{
    double v;
    int n = (int)(e - s > 40 ? 40 : e - s);
    int rc = mnn_parse_double(s, e, &v);
    if (rc == MNN_EINVAL)
        return mnn_fail(d, MNN_EFORMAT, "label '%.*s' is not finite (NaN/Inf)", n, s);
    if (rc < 0)
        return mnn_fail(d, MNN_EFORMAT, "label '%.*s' is not a number", n, s);
    if (f->classes) {
        if (v != floor(v))
            return mnn_fail(d, MNN_EFORMAT, "label '%.*s' is not a class id (an integer)", n, s);
        if (v < 0 || v >= (double)f->classes)
            return mnn_fail(d, MNN_EFORMAT, "label %.*s out of range 0..%zu", n, s,
                            f->classes - 1);
    }
    *label = (float)v;
    if (!isfinite(*label))
        return mnn_fail(d, MNN_EFORMAT, "label '%.*s' is not finite (NaN/Inf)", n, s);
    return 0;
}

static int parse_dense(mnn_record_fmt_t *f, const char *p, const char *end,
                       float *x, float *label, mnn_diag_t *d)
{
    const char sep = f->sep;
    size_t want = f->nfeat + (f->has_label ? 1 : 0), field = 0;
    for (;;) {
        /* fast path: a feature that is a small unsigned integer, as pixels
         * are; anything else goes through mnn_parse_float */
        if (field > 0 || !f->has_label) {
            const char *r = p;
            uint32_t v = 0;
            while (r < end && (unsigned)(*r - '0') < 10 && r - p < 9)
                v = v * 10 + (uint32_t)(*r++ - '0');
            if (r > p && (r == end || *r == sep) && field < want) {
                x[field - (f->has_label ? 1 : 0)] = (float)v;
                field++;
                if (r == end)
                    break;
                p = r + 1;
                continue;
            }
        }
        const char *q = memchr(p, sep, (size_t)(end - p));
        if (!q)
            q = end;
        if (field >= want) {
            /* count the rest for the message */
            size_t n = field + 1;
            for (const char *r = q; r < end; r++)
                n += *r == sep;
            return mnn_fail(d, MNN_EFORMAT, "%zu fields, expected %zu (%s%zu features)",
                            n, want, f->has_label ? "label + " : "", f->nfeat);
        }
        if (f->has_label && field == 0) {
            int rc = parse_label(f, p, q, label, d);
            if (rc < 0)
                return rc;
        } else {
            size_t i = field - (f->has_label ? 1 : 0);
            int rc = mnn_parse_float(p, q, &x[i]);
            if (rc < 0)
                return field_error(d, rc, "field", field + 1, p, q);
        }
        field++;
        if (q == end)
            break;
        p = q + 1;
    }
    if (field != want)
        return mnn_fail(d, MNN_EFORMAT, "%zu fields, expected %zu (%s%zu features)",
                        field, want, f->has_label ? "label + " : "", f->nfeat);
    return 0;
}

static int is_space(char c) { return c == ' ' || c == '\t'; }

static int parse_sparse(mnn_record_fmt_t *f, const char *p, const char *end,
                        float *x, float *label, mnn_diag_t *d)
{
    memset(x, 0, f->nfeat * sizeof(float));
    while (p < end && is_space(*p))
        p++;
    if (f->has_label) {
        const char *q = p;
        while (q < end && !is_space(*q))
            q++;
        int rc = parse_label(f, p, q, label, d);
        if (rc < 0)
            return rc;
        p = q;
    }
    uint64_t prev = 0;
    size_t pair = 0;
    for (;;) {
        while (p < end && is_space(*p))
            p++;
        if (p == end)
            break;
        const char *q = p, *colon = NULL;
        while (q < end && !is_space(*q)) {
            if (*q == ':' && !colon)
                colon = q;
            q++;
        }
        pair++;
        int n = (int)(q - p > 40 ? 40 : q - p);
        if (!colon)
            return mnn_fail(d, MNN_EFORMAT, "pair %zu: '%.*s' is not idx:value", pair, n, p);
        uint64_t idx = 0;
        const char *r = p;
        for (; r < colon && (unsigned)(*r - '0') < 10 && idx < (1ULL << 40); r++)
            idx = idx * 10 + (uint64_t)(*r - '0');
        if (r != colon || colon == p)
            return mnn_fail(d, MNN_EFORMAT, "pair %zu: index in '%.*s' is not a positive integer", pair, n, p);
        if (idx == 0)
            return mnn_fail(d, MNN_EFORMAT, "pair %zu: index 0 (indices are 1-based)", pair);
        if (idx > f->nfeat)
            return mnn_fail(d, MNN_EFORMAT, "pair %zu: index %llu exceeds the %zu features", pair,
                            (unsigned long long)idx, f->nfeat);
        if (idx <= prev)
            return mnn_fail(d, MNN_EFORMAT, "pair %zu: index %llu not ascending", pair,
                            (unsigned long long)idx);
        prev = idx;
        int rc = mnn_parse_float(colon + 1, q, &x[idx - 1]);
        if (rc < 0)
            return field_error(d, rc, "pair", pair, colon + 1, q);
        p = q;
    }
    return 0;
}

int mnn_record_parse(mnn_record_fmt_t *f, const char *line, size_t len,
                     float *x, float *label, mnn_diag_t *d)
{
    const char *end = line + len;
    if (end > line && end[-1] == '\r')
        end--;
    if (f->fmt == MNN_FMT_UNKNOWN) {
        if (memchr(line, ':', (size_t)(end - line)))
            f->fmt = MNN_FMT_SPARSE;
        else {
            f->fmt = MNN_FMT_DENSE;
            f->sep = memchr(line, ',', (size_t)(end - line)) ? ','
                     : memchr(line, '\t', (size_t)(end - line)) ? '\t' : ',';
        }
    }
    if (f->fmt == MNN_FMT_SPARSE) {
        if (!memchr(line, ':', (size_t)(end - line)) &&
            memchr(line, ',', (size_t)(end - line)))
            return mnn_fail(d, MNN_EFORMAT, "dense (comma-separated) record in a sparse stream");
        return parse_sparse(f, line, end, x, label, d);
    }
    if (memchr(line, ':', (size_t)(end - line)))
        return mnn_fail(d, MNN_EFORMAT, "sparse (idx:value) record in a dense stream");
    return parse_dense(f, line, end, x, label, d);
}
