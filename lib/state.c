/* state.c - the lines of a saved state in text: "TAG W1 W2 ...", each
 * word a number written one way only (decimal without leading zeros, or a
 * double as the 16 hex digits of its bits, exact), read back strictly. */
#include "internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

int mnn_state_put(FILE *f, const char *tag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(tag, f);
    for (const char *c = fmt; *c; c++) {
        uint64_t v = 0;
        double x;
        switch (*c) {
        case 'u': v = va_arg(ap, uint64_t); break;
        case 'z': v = va_arg(ap, size_t); break;
        case 'x':
            x = va_arg(ap, double);
            memcpy(&v, &x, sizeof v);
            fprintf(f, " %016" PRIx64, v);
            continue;
        default: va_end(ap); return MNN_EINVAL;
        }
        fprintf(f, " %" PRIu64, v);
    }
    va_end(ap);
    fputc('\n', f);
    return ferror(f) ? MNN_EIO : 0;
}

/* A decimal word: digits, no leading zero but in "0", at most 20. */
static int dec_word(const char *w, size_t n, uint64_t *v)
{
    char buf[24];
    if (n == 0 || n > 20 || (w[0] == '0' && n > 1))
        return -1;
    memcpy(buf, w, n);
    buf[n] = 0;
    return mnn_parse_u64(buf, v) < 0 ? -1 : 0;
}

/* A double's bits: exactly 16 lowercase hex digits. */
static int hex_word(const char *w, size_t n, double *x)
{
    uint64_t v = 0;
    if (n != 16)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const char c = w[i];
        const unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                         : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10) : 16;
        if (d == 16)
            return -1;
        v = v << 4 | d;
    }
    memcpy(x, &v, sizeof v);
    return 0;
}

int mnn_state_get(const char **p, const char *end, mnn_diag_t *d, const char *tag,
                  const char *fmt, ...)
{
    const char *s = *p;
    const char *nl = s < end ? memchr(s, '\n', (size_t)(end - s)) : NULL;
    const size_t tl = strlen(tag);
    if (!nl)
        return mnn_fail(d, MNN_EFORMAT, "no '%s' line where one belongs: truncated?", tag);
    if ((size_t)(nl - s) < tl || memcmp(s, tag, tl) || (s + tl < nl && s[tl] != ' '))
        return mnn_fail(d, MNN_EFORMAT, "no '%s' line where one belongs", tag);
    const char *w = s + tl;
    va_list ap;
    va_start(ap, fmt);
    int bad = 0;
    for (const char *c = fmt; *c && !bad; c++) {
        if (w == nl || *w != ' ') {
            bad = 1;
            break;
        }
        const char *q = ++w;
        while (q < nl && *q != ' ')
            q++;
        uint64_t v;
        switch (*c) {
        case 'u':
            bad = dec_word(w, (size_t)(q - w), &v) < 0;
            if (!bad)
                *va_arg(ap, uint64_t *) = v;
            break;
        case 'z':
            bad = dec_word(w, (size_t)(q - w), &v) < 0 || v > SIZE_MAX;
            if (!bad)
                *va_arg(ap, size_t *) = (size_t)v;
            break;
        case 'x': bad = hex_word(w, (size_t)(q - w), va_arg(ap, double *)) < 0; break;
        default: bad = 1;
        }
        w = q;
    }
    va_end(ap);
    if (bad || w != nl)
        return mnn_fail(d, MNN_EFORMAT, "a malformed '%s' line", tag);
    *p = nl + 1;
    return 0;
}
