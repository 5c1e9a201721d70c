/* fuzz-records - the record parser (mnn_record_parse, dense and libsvm),
 * the line reader (mnn_lr_init, mnn_lr_next) and the number parsers.
 *
 * Input: three settings bytes, then the stream.
 *   byte 0: features, 1 + b % 64
 *   byte 1: classes (b & 0x1f) % 21 (0: real labels); 0x80: no label;
 *           0x20: the lines come from the line reader over a memfd (else
 *           the input is split at each '\n' in memory); 0x40: with the
 *           line reader, a cancel pipe that never becomes readable (the
 *           poll path)
 *   byte 2: line reader: 0: as mnn_lr_init makes it; else its buffer shrunk
 *           to 2^(b & 15) bytes (when b & 15) and lines limited to
 *           2^(b >> 4) bytes (when b >> 4), so that short buffers slide and
 *           grow.
 * Each line is parsed as sgd-train's feed does (empty and '#' lines
 * skipped), all with one format, which the first line decides; the number
 * parsers are also checked on each line against strtod_l and strtoull.
 * (The line reader's 1 MiB buffer costs AddressSanitizer a fresh mapping
 * per input, hence it is used for half the inputs only.)
 *
 * Invariants: the lines are the input's, in order, split at each '\n'; a
 * parsed record has nfeat finite features and a finite label, a class id
 * in range when classes are given; a refused one says why; the number
 * parsers agree with the C library wherever they accept. */
#include "fuzz.h"

#include <locale.h>
#include <math.h>

static locale_t c_loc;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_quiet();
    c_loc = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    return 0;
}

/* mnn_parse_double/float/u64 against the C library on one string. */
static void check_number(const char *s, size_t n)
{
    if (memchr(s, 0, n))
        return;
    char *z = fz_strndup(s, n);
    double v;
    int rc = mnn_parse_double(s, s + n, &v);
    FZ_CHECK(rc == 0 || rc == MNN_EFORMAT || rc == MNN_EINVAL);
    if (rc == 0) {
        char *stop;
        errno = 0;
        double w = strtod_l(z, &stop, c_loc);
        FZ_CHECK(isfinite(v));
        FZ_CHECK(stop == z + n);
        FZ_CHECK(v == w && signbit(v) == signbit(w));
        float f;
        if (isfinite((float)v)) {
            FZ_CHECK(mnn_parse_float(s, s + n, &f) == 0);
            FZ_CHECK(f == (float)v);
        } else
            FZ_CHECK(mnn_parse_float(s, s + n, &f) == MNN_EINVAL);
    }
    uint64_t u;
    rc = mnn_parse_u64(z, &u);
    FZ_CHECK(rc == 0 || rc == MNN_EFORMAT || rc == MNN_EOVERFLOW);
    if (rc == 0 || rc == MNN_EOVERFLOW) {
        char *stop;
        errno = 0;
        unsigned long long w = strtoull(z, &stop, 10);
        FZ_CHECK(z[0] >= '0' && z[0] <= '9');
        if (rc == 0)
            FZ_CHECK(stop == z + n && errno == 0 && w == u);
        else /* said as soon as the digits overflow, whatever follows them */
            FZ_CHECK(errno == ERANGE);
    }
    free(z);
}

/* The same on each field of a line: between ',', '\t', ' ' and ':'. */
static void check_numbers(const char *s, size_t n)
{
    const char *end = s + n;
    for (const char *p = s;;) {
        const char *q = p;
        while (q < end && *q != ',' && *q != '\t' && *q != ' ' && *q != ':')
            q++;
        check_number(p, (size_t)(q - p));
        if (q == end)
            break;
        p = q + 1;
    }
}

/* One line of the stream, checked (a broken invariant aborts). */
static void take_line(mnn_record_fmt_t *f, const char *line, size_t n, float *x)
{
    check_numbers(line, n);
    if (n == 0 || (n == 1 && line[0] == '\r') || line[0] == '#')
        return;
    mnn_diag_t d = {""};
    float label = NAN;
    int rc = mnn_record_parse(f, line, n, x, &label, &d);
    FZ_CHECK(f->fmt == MNN_FMT_DENSE || f->fmt == MNN_FMT_SPARSE);
    if (rc < 0) {
        FZ_CHECK(rc == MNN_EFORMAT);
        FZ_CHECK(d.msg[0] != 0);
        return;
    }
    FZ_CHECK(rc == 0);
    for (size_t i = 0; i < f->nfeat; i++)
        FZ_CHECK(isfinite(x[i]));
    if (f->has_label) {
        FZ_CHECK(isfinite(label));
        if (f->classes)
            FZ_CHECK(label >= 0 && label < (float)f->classes && label == floorf(label));
    }
}

/* The stream through mnn_lr_next; each line checked against text. */
static void read_lines(mnn_record_fmt_t *f, const char *text, size_t len, float *x, int cancel,
                       unsigned cap_log, unsigned max_log)
{
    int fd = fz_memfd(text, len), cp[2] = {-1, -1};
    mnn_linereader_t lr;
    FZ_CHECK(mnn_lr_init(&lr, fd, max_log ? (size_t)1 << max_log : 0) == 0);
    if (cap_log) {
        char *nb = realloc(lr.buf, (size_t)1 << cap_log);
        FZ_CHECK(nb != NULL);
        lr.buf = nb;
        lr.cap = (size_t)1 << cap_log;
    }
    if (cancel) {
        FZ_CHECK(pipe(cp) == 0);
        lr.cancel_fd = cp[0];
    }
    size_t pos = 0; /* where the next line starts in text */
    for (;;) {
        const char *line;
        size_t n;
        int rc = mnn_lr_next(&lr, &line, &n);
        if (rc == MNN_EOF) {
            FZ_CHECK(pos >= len);
            break;
        }
        if (rc == MNN_EOVERFLOW) {
            FZ_CHECK(max_log != 0);
            break; /* fatal in the programs: the line's end is lost */
        }
        FZ_CHECK(rc == 0);
        /* the line is the next one of the input */
        FZ_CHECK(pos + n <= len && !memcmp(line, text + pos, n));
        FZ_CHECK(pos + n == len || text[pos + n] == '\n');
        FZ_CHECK(!memchr(line, '\n', n));
        pos += n + 1;
        take_line(f, line, n, x);
    }
    mnn_lr_free(&lr);
    close(fd);
    if (cancel) {
        close(cp[0]);
        close(cp[1]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    mnn_record_fmt_t f = {.fmt = MNN_FMT_UNKNOWN};
    f.nfeat = 1 + data[0] % 64;
    f.classes = (size_t)(data[1] & 0x1f) % 21;
    f.has_label = !(data[1] & 0x80);
    const char *text = (const char *)data + 3;
    const size_t len = size - 3;
    /* exactly nfeat floats: AddressSanitizer sees a write beyond them */
    float *x = fz_xmalloc(f.nfeat * sizeof *x);
    if (data[1] & 0x20)
        read_lines(&f, text, len, x, data[1] & 0x40, data[2] & 15, data[2] >> 4);
    else
        for (const char *p = text, *end = text + len; p < end;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
            /* a copy of its own: a read beyond the line is seen */
            char *line = fz_xmalloc(n);
            memcpy(line, p, n);
            take_line(&f, line, n, x);
            free(line);
            p += n + 1;
        }
    free(x);
    return 0;
}
