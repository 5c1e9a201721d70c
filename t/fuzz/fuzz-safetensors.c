/* fuzz-safetensors - the safetensors reader (mnn_st_parse, mnn_st_get,
 * mnn_st_meta).
 *
 * Input: a safetensors file.  mnn_st_parse takes over a malloc'd copy.
 * Then every quoted string of the header is tried as a tensor name and as a
 * metadata key, besides the names the library writes: mnn_st_get with a
 * wrong shape first, then, for a tensor found, with the shape its message
 * names, F32 and F64; the bytes of a tensor handed back are all read.
 * Invariants: a tensor's data lies wholly inside the data section of the
 * buffer; a lookup that fails says why; metadata values are strings. */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_quiet();
    return 0;
}

static const char *const known[] = {
    "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
    "exits.0.weight", "exits.0.bias", "normalize.mean", "normalize.m2",
    "layers.0.weight.momentum_buffer", "layers.0.bias.exp_avg", "layers.1.weight.exp_avg_sq",
    "layers.0.weight.param", "format", "normalize_count", "optimizer", "step", "__metadata__"};

typedef struct {
    const mnn_st_file_t *f;
    const char *lo, *hi; /* the data section: [lo, hi) of the buffer */
    volatile unsigned sink;
} ctx_t;

/* The dimensions of the shape that mnn_st_get's message for tensor name
 * names ("NAME: tensor 'T' has shape [A,B] but ..."), 0 to 2, or -1 when it
 * names none (or more). */
static int shape_of(const char *msg, const char *name, size_t shape[2])
{
    static const char fmt[] = "fuzz.safetensors: tensor '%s' has shape [";
    size_t len = strlen(fmt) + strlen(name);
    char *want = fz_xmalloc(len);
    snprintf(want, len, fmt, name);
    int n = strncmp(msg, want, strlen(want)) ? -1 : 0;
    const char *p = msg + strlen(want);
    free(want);
    if (n < 0)
        return -1;
    while (n < 2 && *p >= '0' && *p <= '9') {
        char *end;
        shape[n++] = (size_t)strtoull(p, &end, 10);
        p = end;
        if (*p == ',')
            p++;
    }
    return *p == ']' ? n : -1;
}

static void try_name(ctx_t *c, const char *name)
{
    const char *v = mnn_st_meta(c->f, name);
    if (v)
        c->sink += (unsigned)strlen(v);
    for (int f64 = 0; f64 < 2; f64++) {
        const void *p = NULL;
        mnn_diag_t d = {""};
        size_t shape[2] = {(size_t)-1, (size_t)-1};
        int rc = mnn_st_get(c->f, name, f64, 1, shape, &p, &d), ndim;
        FZ_CHECK(rc == MNN_ESHAPE && d.msg[0]);
        if ((ndim = shape_of(d.msg, name, shape)) < 0)
            continue;
        rc = mnn_st_get(c->f, name, f64, (size_t)ndim, shape, &p, &d);
        FZ_NOTE("%s: %s %d dims: %d\n", name, f64 ? "F64" : "F32", ndim, rc);
        FZ_CHECK(rc == 0);
        size_t bytes = f64 ? 8 : 4;
        for (int k = 0; k < ndim; k++)
            FZ_CHECK(mnn_size_mul(bytes, shape[k], &bytes) == 0);
        const char *b = p;
        FZ_CHECK(b >= c->lo && b <= c->hi && bytes <= (size_t)(c->hi - b));
        unsigned s = 0;
        for (size_t i = 0; i < bytes; i++)
            s += (unsigned char)b[i];
        c->sink += s;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = fz_xmalloc(size);
    memcpy(buf, data, size);
    mnn_st_file_t *f;
    mnn_diag_t d = {""};
    int rc = mnn_st_parse(&f, buf, size, "fuzz.safetensors", &d); /* takes buf */
    FZ_NOTE("mnn_st_parse: %d %s\n", rc, d.msg);
    if (rc < 0) {
        FZ_CHECK(rc >= MNN_ELIMIT && (d.msg[0] || rc == MNN_ENOMEM) && f == NULL);
        return 0;
    }
    FZ_CHECK(rc == 0 && f != NULL && size >= 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | data[i];
    FZ_CHECK(hlen <= size - 8);
    ctx_t c = {.f = f, .lo = buf + 8 + hlen, .hi = buf + size};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        try_name(&c, known[i]);
    /* the header's strings, escapes and all */
    const char *h = (const char *)data + 8, *end = h + hlen;
    size_t tried = 0;
    while (h < end && tried < 256) {
        const char *q = memchr(h, '"', (size_t)(end - h)), *e;
        if (!q || !(e = memchr(q + 1, '"', (size_t)(end - q - 1))))
            break;
        char *name = fz_strndup(q + 1, (size_t)(e - q - 1));
        try_name(&c, name);
        free(name);
        tried++;
        h = e + 1;
    }
    mnn_st_close(f);
    return 0;
}
