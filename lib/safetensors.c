/* safetensors.c - the safetensors container: an 8-byte little-endian header
 * length, a JSON header (parsed with libyaml: JSON is YAML), then the tensor
 * bytes back to back, contiguous, with nothing after them. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libmini-nn stores tensors little-endian and supports little-endian hosts only"
#endif

/* The safetensors format allows headers of 100 MB; the files this library
 * reads have a few hundred bytes per tensor. */
#define ST_MAX_HEADER ((uint64_t)16 << 20)
#define ST_MAX_TENSORS 65536
#define ST_MAX_DIM 8

static int cmp_names(const void *a, const void *b)
{
    const mnn_st_tensor_t *x = *(const mnn_st_tensor_t *const *)a;
    const mnn_st_tensor_t *y = *(const mnn_st_tensor_t *const *)b;
    return strcmp(x->name, y->name);
}

static size_t tensor_bytes(const mnn_st_tensor_t *t)
{
    size_t n = t->f64 ? 8 : 4;
    for (size_t i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

static int put_all(FILE *f, const void *p, size_t n)
{
    return fwrite(p, 1, n, f) == n ? 0 : MNN_EIO;
}

/* The length and header of t (sorted into order, n of them); with data,
 * their bytes too. */
static int st_write(FILE *f, const mnn_st_tensor_t *t, size_t n, const char *const *meta,
                    int data)
{
    const mnn_st_tensor_t **order = malloc((n ? n : 1) * sizeof *order);
    char *hdr = NULL;
    size_t hlen = 0;
    int rc = MNN_ENOMEM;
    FILE *h = NULL;
    if (!order)
        return rc;
    for (size_t i = 0; i < n; i++)
        order[i] = &t[i];
    qsort(order, n, sizeof *order, cmp_names);
    h = open_memstream(&hdr, &hlen);
    if (!h)
        goto out;
    fputs("{\"__metadata__\":{", h);
    for (size_t i = 0; meta && meta[i]; i += 2)
        fprintf(h, "%s\"%s\":\"%s\"", i ? "," : "", meta[i], meta[i + 1]);
    fputc('}', h);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const mnn_st_tensor_t *x = order[i];
        size_t bytes = tensor_bytes(x);
        fprintf(h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", x->name, x->f64 ? "F64" : "F32");
        for (size_t k = 0; k < x->ndim; k++)
            fprintf(h, "%s%zu", k ? "," : "", x->shape[k]);
        fprintf(h, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    fputc('}', h);
    /* pad with spaces so the data starts 8-byte aligned */
    long pos = ftell(h);
    while (pos >= 0 && (pos % 8) != 0) {
        fputc(' ', h);
        pos++;
    }
    if (fclose(h) != 0) {
        h = NULL;
        goto out;
    }
    h = NULL;
    uint64_t len = hlen;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(len >> (8 * i));
    rc = MNN_EIO;
    if (put_all(f, le, 8) < 0 || put_all(f, hdr, hlen) < 0)
        goto out;
    for (size_t i = 0; data && i < n; i++)
        if (put_all(f, order[i]->data, tensor_bytes(order[i])) < 0)
            goto out;
    rc = 0;
out:
    if (h)
        fclose(h);
    free(hdr);
    free(order);
    return rc;
}

int mnn_st_write(FILE *f, const mnn_st_tensor_t *t, size_t n, const char *const *meta)
{
    return st_write(f, t, n, meta, 1);
}

int mnn_st_write_header(FILE *f, const mnn_st_tensor_t *t, size_t n, const char *const *meta)
{
    return st_write(f, t, n, meta, 0);
}

/* ---- reading ------------------------------------------------------------ */

typedef struct {
    char *name;
    int dtype_size; /* 4 F32, 8 F64, other sizes for known foreign dtypes */
    int f64;
    int f32;
    size_t ndim, shape[ST_MAX_DIM];
    size_t begin, end;
} st_entry_t;

struct mnn_st_file {
    char *path;
    char *buf;          /* the whole file */
    size_t len;
    const char *data;   /* first tensor byte */
    size_t data_len;
    st_entry_t *e;
    size_t n;
    char **meta;        /* key, value, ... */
    size_t nmeta;
};

static int cmp_begin(const void *a, const void *b)
{
    const st_entry_t *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1
         : x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_entry_names(const void *a, const void *b)
{
    return strcmp(((const st_entry_t *)a)->name, ((const st_entry_t *)b)->name);
}

static int dtype_size(const char *s, int *f32, int *f64)
{
    static const struct { const char *n; int sz; } t[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
        {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"U16", 2}, {"U32", 4},
        {"U64", 8}};
    *f32 = !strcmp(s, "F32");
    *f64 = !strcmp(s, "F64");
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].n))
            return t[i].sz;
    return 0;
}

static int parse_entry(mnn_st_file_t *f, mnn_yaml_t *y, yaml_node_t *v,
                       st_entry_t *e, mnn_diag_t *d)
{
    yaml_node_t *dt = mnn_yaml_get(y, v, "dtype"), *sh = mnn_yaml_get(y, v, "shape"),
                *of = mnn_yaml_get(y, v, "data_offsets");
    const char *s;
    if (v->type != YAML_MAPPING_NODE || !dt || !sh || !of)
        return mnn_fail(d, MNN_EFORMAT, "%s: tensor '%s' needs dtype, shape and data_offsets",
                        f->path, e->name);
    if (mnn_yaml_str(y, dt, "dtype", &s, NULL) < 0 ||
        !(e->dtype_size = dtype_size(s, &e->f32, &e->f64)))
        return mnn_fail(d, MNN_EFORMAT, "%s: tensor '%s': unknown dtype", f->path, e->name);
    if (sh->type != YAML_SEQUENCE_NODE || of->type != YAML_SEQUENCE_NODE)
        return mnn_fail(d, MNN_EFORMAT, "%s: tensor '%s': shape and data_offsets must be lists",
                        f->path, e->name);
    size_t nd = (size_t)(sh->data.sequence.items.top - sh->data.sequence.items.start);
    if (nd > ST_MAX_DIM)
        return mnn_fail(d, MNN_EFORMAT, "%s: tensor '%s': %zu dimensions", f->path, e->name, nd);
    e->ndim = nd;
    uint64_t count = 1;
    for (size_t i = 0; i < nd; i++) {
        uint64_t v64;
        if (mnn_yaml_u64(y, mnn_yaml_node(y, sh->data.sequence.items.start[i]), "shape", &v64, NULL) < 0 ||
            v64 > SIZE_MAX || (v64 && count > UINT64_MAX / v64))
            return mnn_fail(d, MNN_EFORMAT, "%s: tensor '%s': bad shape", f->path, e->name);
        e->shape[i] = (size_t)v64;
        count *= v64;
    }
    if (of->data.sequence.items.top - of->data.sequence.items.start != 2)
        return mnn_fail(d, MNN_EFORMAT, "%s: tensor '%s': data_offsets needs 2 numbers",
                        f->path, e->name);
    uint64_t b, en;
    if (mnn_yaml_u64(y, mnn_yaml_node(y, of->data.sequence.items.start[0]), "offset", &b, NULL) < 0 ||
        mnn_yaml_u64(y, mnn_yaml_node(y, of->data.sequence.items.start[1]), "offset", &en, NULL) < 0 ||
        b > en || en > f->data_len)
        return mnn_fail(d, MNN_ECORRUPT, "%s: tensor '%s': data_offsets outside the %zu data bytes",
                        f->path, e->name, f->data_len);
    if (count > UINT64_MAX / (uint64_t)e->dtype_size ||
        en - b != count * (uint64_t)e->dtype_size)
        return mnn_fail(d, MNN_ECORRUPT, "%s: tensor '%s': %llu bytes do not match its shape",
                        f->path, e->name, (unsigned long long)(en - b));
    e->begin = (size_t)b;
    e->end = (size_t)en;
    return 0;
}

static int parse_header(mnn_st_file_t *f, const char *hdr, size_t hlen, mnn_diag_t *d)
{
    mnn_yaml_t y;
    mnn_diag_t yd;
    int rc;
    if (hlen == 0 || hdr[0] != '{')
        return mnn_fail(d, MNN_EFORMAT, "%s: the header is not a JSON object", f->path);
    /* a tensor is at most 12 nodes: name, dtype, shape of up to 8, offsets */
    if ((rc = mnn_yaml_load_max(&y, hdr, hlen, f->path, 16 * (size_t)ST_MAX_TENSORS + 1024,
                                &yd)) < 0)
        return mnn_fail(d, rc == MNN_ELIMIT ? rc : MNN_EFORMAT, "%s: bad JSON header: %s",
                        f->path, yd.msg);
    yaml_node_t *root = mnn_yaml_root(&y);
    rc = MNN_EFORMAT;
    if (root->type != YAML_MAPPING_NODE) {
        mnn_fail(d, rc, "%s: the header is not a JSON object", f->path);
        goto out;
    }
    size_t np = (size_t)(root->data.mapping.pairs.top - root->data.mapping.pairs.start);
    if (np > ST_MAX_TENSORS + 1) {
        rc = mnn_fail(d, MNN_ELIMIT, "%s: %zu tensors, more than the %d this reader takes",
                      f->path, np, ST_MAX_TENSORS);
        goto out;
    }
    f->e = calloc(np ? np : 1, sizeof *f->e);
    if (!f->e) {
        rc = mnn_fail(d, MNN_ENOMEM, "%s: out of memory", f->path);
        goto out;
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = mnn_yaml_node(&y, p->key), *v = mnn_yaml_node(&y, p->value);
        if (k->type != YAML_SCALAR_NODE) {
            mnn_fail(d, rc, "%s: a header key is not a string", f->path);
            goto out;
        }
        const char *key = (const char *)k->data.scalar.value;
        if (!strcmp(key, "__metadata__")) {
            if (v->type != YAML_MAPPING_NODE) {
                mnn_fail(d, rc, "%s: __metadata__ is not an object", f->path);
                goto out;
            }
            size_t nm = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
            if (f->meta) {
                mnn_fail(d, rc, "%s: __metadata__ appears twice", f->path);
                goto out;
            }
            f->meta = calloc(2 * nm + 1, sizeof(char *));
            if (!f->meta) {
                rc = mnn_fail(d, MNN_ENOMEM, "%s: out of memory", f->path);
                goto out;
            }
            for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
                yaml_node_t *mk = mnn_yaml_node(&y, q->key), *mv = mnn_yaml_node(&y, q->value);
                if (mk->type != YAML_SCALAR_NODE || mv->type != YAML_SCALAR_NODE) {
                    mnn_fail(d, rc, "%s: __metadata__ values must be strings", f->path);
                    goto out;
                }
                f->meta[f->nmeta * 2] = strdup((const char *)mk->data.scalar.value);
                f->meta[f->nmeta * 2 + 1] = strdup((const char *)mv->data.scalar.value);
                f->nmeta++;
                if (!f->meta[f->nmeta * 2 - 2] || !f->meta[f->nmeta * 2 - 1]) {
                    rc = mnn_fail(d, MNN_ENOMEM, "%s: out of memory", f->path);
                    goto out;
                }
            }
            continue;
        }
        st_entry_t *e = &f->e[f->n++];
        if (!(e->name = strdup(key))) {
            rc = mnn_fail(d, MNN_ENOMEM, "%s: out of memory", f->path);
            goto out;
        }
        if ((rc = parse_entry(f, &y, v, e, d)) < 0)
            goto out;
        rc = MNN_EFORMAT;
    }
    /* contiguity: sorted by offset, each tensor starts where the last ended
     * and the last ends at the end of the file */
    st_entry_t *s = malloc((f->n ? f->n : 1) * sizeof *s);
    if (!s) {
        rc = mnn_fail(d, MNN_ENOMEM, "%s: out of memory", f->path);
        goto out;
    }
    if (f->n > ST_MAX_TENSORS) {
        rc = mnn_fail(d, MNN_ELIMIT, "%s: %zu tensors, more than the %d this reader takes",
                      f->path, f->n, ST_MAX_TENSORS);
        free(s);
        goto out;
    }
    /* by name, for mnn_st_get's binary search and to find duplicates */
    qsort(f->e, f->n, sizeof *f->e, cmp_entry_names);
    for (size_t i = 1; i < f->n; i++)
        if (!strcmp(f->e[i - 1].name, f->e[i].name)) {
            mnn_fail(d, rc, "%s: tensor '%s' appears twice", f->path, f->e[i].name);
            free(s);
            goto out;
        }
    memcpy(s, f->e, f->n * sizeof *s);
    qsort(s, f->n, sizeof *s, cmp_begin);
    size_t at = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (s[i].begin != at) {
            mnn_fail(d, MNN_ECORRUPT, "%s: tensor '%s' %s", f->path, s[i].name,
                     s[i].begin < at ? "overlaps the one before it" : "leaves a gap before it");
            free(s);
            rc = MNN_ECORRUPT;
            goto out;
        }
        at = s[i].end;
    }
    free(s);
    if (at != f->data_len) {
        rc = mnn_fail(d, MNN_ECORRUPT, "%s: %zu bytes after the last tensor", f->path,
                      f->data_len - at);
        goto out;
    }
    rc = 0;
out:
    mnn_yaml_free(&y);
    return rc;
}

/* The header length in le (8 bytes, little-endian), of a file with avail
 * bytes after them: 0, or MNN_EFORMAT (more than there is), MNN_ELIMIT. */
static int header_len(const unsigned char *le, uint64_t avail, const char *name,
                      uint64_t *hlen, mnn_diag_t *d)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | le[i];
    if (n > avail)
        return mnn_fail(d, MNN_EFORMAT, "%s: header claims %llu bytes but the file has %llu "
                        "after the length", name, (unsigned long long)n,
                        (unsigned long long)avail);
    if (n > ST_MAX_HEADER)
        return mnn_fail(d, MNN_ELIMIT, "%s: a header of %llu bytes, more than the %llu this "
                        "reader takes", name, (unsigned long long)n,
                        (unsigned long long)ST_MAX_HEADER);
    *hlen = n;
    return 0;
}

int mnn_st_parse(mnn_st_file_t **out, char *buf, size_t len, const char *name, mnn_diag_t *d)
{
    mnn_st_file_t *f = calloc(1, sizeof *f);
    int rc;
    *out = NULL;
    if (!f || !(f->path = strdup(name))) {
        free(f);
        free(buf);
        return mnn_fail(d, MNN_ENOMEM, "%s: out of memory", name);
    }
    f->buf = buf;
    f->len = len;
    rc = MNN_EFORMAT;
    if (f->len < 8) {
        mnn_fail(d, rc, "%s: truncated (%zu bytes, no header)", name, f->len);
        goto fail;
    }
    uint64_t hlen = 0;
    if ((rc = header_len((const unsigned char *)f->buf, f->len - 8, name, &hlen, d)) < 0)
        goto fail;
    f->data = f->buf + 8 + hlen;
    f->data_len = f->len - 8 - (size_t)hlen;
    if ((rc = parse_header(f, f->buf + 8, (size_t)hlen, d)) < 0)
        goto fail;
    *out = f;
    return 0;
fail:
    mnn_st_close(f);
    return rc;
}

int mnn_st_open(mnn_st_file_t **out, const char *path, mnn_diag_t *d)
{
    char *buf;
    size_t len;
    *out = NULL;
    int rc = mnn_read_file(path, SIZE_MAX - 1, &buf, &len, d);
    return rc < 0 ? rc : mnn_st_parse(out, buf, len, path, d);
}

int mnn_st_get(const mnn_st_file_t *f, const char *name, int f64, size_t ndim,
               const size_t *shape, const void **data, mnn_diag_t *d)
{
    st_entry_t key = {.name = (char *)name};
    const st_entry_t *e = bsearch(&key, f->e, f->n, sizeof *f->e, cmp_entry_names);
    if (e) {
        if (f64 ? !e->f64 : !e->f32)
            return mnn_fail(d, MNN_ESHAPE, "%s: tensor '%s' is not %s", f->path, name,
                            f64 ? "F64" : "F32");
        int same = e->ndim == ndim;
        for (size_t k = 0; same && k < ndim; k++)
            same = e->shape[k] == shape[k];
        if (!same) {
            char have[64] = "", need[64] = "";
            for (size_t k = 0; k < e->ndim; k++)
                snprintf(have + strlen(have), sizeof have - strlen(have), "%s%zu", k ? "," : "",
                         e->shape[k]);
            for (size_t k = 0; k < ndim; k++)
                snprintf(need + strlen(need), sizeof need - strlen(need), "%s%zu", k ? "," : "",
                         shape[k]);
            return mnn_fail(d, MNN_ESHAPE, "%s: tensor '%s' has shape [%s] but the model needs [%s]",
                            f->path, name, have, need);
        }
        *data = f->data + e->begin;
        return 0;
    }
    return mnn_fail(d, MNN_ESHAPE, "%s: tensor '%s' is missing", f->path, name);
}

const char *mnn_st_meta(const mnn_st_file_t *f, const char *key)
{
    for (size_t i = 0; i < f->nmeta; i++)
        if (!strcmp(f->meta[2 * i], key))
            return f->meta[2 * i + 1];
    return NULL;
}

void mnn_st_close(mnn_st_file_t *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        free(f->e[i].name);
    for (size_t i = 0; i < 2 * f->nmeta; i++)
        free(f->meta[i]);
    free(f->meta);
    free(f->e);
    free(f->buf);
    free(f->path);
    free(f);
}

/* ---- reading one tensor at a time ------------------------------------------
 * The header is read and checked as mnn_st_parse checks it; the tensors then
 * come in file order, every byte hashed on the way, and nothing read is to
 * be trusted before mnn_st_stream_finish compared the hash with the one
 * given (a manifest's). */

struct mnn_st_stream {
    mnn_st_file_t *f;   /* the header: entries by name, no data */
    st_entry_t **order; /* the entries in file order */
    size_t next;
    size_t done;        /* bytes of tensor `next` read already */
    int fd;
    uint64_t bytes;     /* the file's size, as the manifest says */
    char xxh3[17];
    mnn_hash_t *h;
};

/* Reads exactly n bytes at the current offset: 0, MNN_EIO (errno), or
 * MNN_ECORRUPT (the file ended first). */
static int read_exact(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n > ((size_t)1 << 30) ? (size_t)1 << 30 : n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return MNN_EIO;
        if (r == 0)
            return MNN_ECORRUPT;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void mnn_st_stream_close(mnn_st_stream_t *s)
{
    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    mnn_hash_free(s->h);
    free(s->order);
    mnn_st_close(s->f);
    free(s);
}

static int cmp_entry_begin(const void *a, const void *b)
{
    return cmp_begin(*(const st_entry_t *const *)a, *(const st_entry_t *const *)b);
}

int mnn_st_stream_open(mnn_st_stream_t **out, const char *path, uint64_t bytes,
                       const char *xxh3, mnn_diag_t *d)
{
    *out = NULL;
    mnn_st_stream_t *s = calloc(1, sizeof *s);
    if (!s || !(s->f = calloc(1, sizeof *s->f)) || !(s->f->path = strdup(path)) ||
        !(s->h = mnn_hash_new())) {
        if (s)
            s->fd = -1;
        mnn_st_stream_close(s);
        return mnn_fail(d, MNN_ENOMEM, "%s: out of memory", path);
    }
    s->bytes = bytes;
    snprintf(s->xxh3, sizeof s->xxh3, "%s", xxh3);
    s->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    struct stat sb;
    int rc;
    if (s->fd < 0 || fstat(s->fd, &sb) != 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != bytes) {
        rc = mnn_fail(d, MNN_ECORRUPT, "%s: %s, and its manifest says %llu bytes", path,
                      S_ISREG(sb.st_mode) ? "another size" : "no regular file",
                      (unsigned long long)bytes);
        goto fail;
    }
    unsigned char le[8];
    if (bytes < 8 || read_exact(s->fd, le, 8) < 0) {
        rc = mnn_fail(d, MNN_EFORMAT, "%s: truncated (no header)", path);
        goto fail;
    }
    uint64_t hlen = 0;
    if ((rc = header_len(le, bytes - 8, path, &hlen, d)) < 0)
        goto fail;
    if (!(s->f->buf = malloc(hlen ? (size_t)hlen : 1))) {
        rc = mnn_fail(d, MNN_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    if ((rc = read_exact(s->fd, s->f->buf, (size_t)hlen)) < 0) {
        rc = mnn_fail(d, rc == MNN_EIO ? MNN_EIO : MNN_ECORRUPT, "%s: %s", path,
                      rc == MNN_EIO ? strerror(errno) : "the file ended inside its header");
        goto fail;
    }
    mnn_hash_update(s->h, le, 8);
    mnn_hash_update(s->h, s->f->buf, (size_t)hlen);
    s->f->len = (size_t)hlen;
    s->f->data_len = (size_t)(bytes - 8 - hlen);
    if ((rc = parse_header(s->f, s->f->buf, (size_t)hlen, d)) < 0)
        goto fail;
    if (!(s->order = malloc((s->f->n ? s->f->n : 1) * sizeof *s->order))) {
        rc = mnn_fail(d, MNN_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < s->f->n; i++)
        s->order[i] = &s->f->e[i];
    qsort(s->order, s->f->n, sizeof *s->order, cmp_entry_begin);
    *out = s;
    return 0;
fail:
    mnn_st_stream_close(s);
    return rc;
}

size_t mnn_st_stream_count(const mnn_st_stream_t *s) { return s->f->n; }

int mnn_st_stream_info(const mnn_st_stream_t *s, size_t i, mnn_st_info_t *info)
{
    if (i >= s->f->n)
        return MNN_EINVAL;
    const st_entry_t *e = s->order[i];
    info->name = e->name;
    info->f32 = e->f32;
    info->f64 = e->f64;
    info->ndim = e->ndim;
    info->shape = e->shape;
    info->bytes = (uint64_t)(e->end - e->begin);
    return 0;
}

const char *mnn_st_stream_meta(const mnn_st_stream_t *s, const char *key)
{
    return mnn_st_meta(s->f, key);
}

int mnn_st_stream_read_part(mnn_st_stream_t *s, void *buf, size_t max, size_t *got,
                            mnn_diag_t *d)
{
    *got = 0;
    if (s->next >= s->f->n)
        return mnn_fail(d, MNN_EOF, "%s: no tensor left", s->f->path);
    const st_entry_t *e = s->order[s->next];
    size_t n = e->end - e->begin - s->done;
    if (n > max)
        n = max;
    int rc = read_exact(s->fd, buf, n);
    if (rc < 0)
        return mnn_fail(d, rc, "%s: tensor '%s': %s", s->f->path, e->name,
                        rc == MNN_EIO ? strerror(errno) : "the file ended inside it");
    mnn_hash_update(s->h, buf, n);
    *got = n;
    if ((s->done += n) == e->end - e->begin) {
        s->next++;
        s->done = 0;
    }
    return 0;
}

int mnn_st_stream_read(mnn_st_stream_t *s, void *buf, mnn_diag_t *d)
{
    if (s->next < s->f->n && s->done)
        return mnn_fail(d, MNN_EINVAL, "%s: tensor '%s' is read in parts", s->f->path,
                        s->order[s->next]->name);
    size_t got;
    return mnn_st_stream_read_part(s, buf, SIZE_MAX, &got, d);
}

int mnn_st_stream_finish(mnn_st_stream_t *s, mnn_diag_t *d)
{
    if (s->next != s->f->n)
        return mnn_fail(d, MNN_EINVAL, "%s: %zu of its %zu tensors read", s->f->path, s->next,
                        s->f->n);
    char c, hex[17];
    ssize_t r = read(s->fd, &c, 1);
    if (r != 0)
        return mnn_fail(d, r < 0 ? MNN_EIO : MNN_ECORRUPT, "%s: %s", s->f->path,
                        r < 0 ? strerror(errno) : "it grew while it was read");
    mnn_hash_hex(mnn_hash_digest(s->h), hex);
    if (strcmp(hex, s->xxh3))
        return mnn_fail(d, MNN_ECORRUPT, "%s: hash %s, but its manifest says %s (damaged)",
                        s->f->path, hex, s->xxh3);
    return 0;
}
