/* ckpt.c - checkpoint directories: manifest.yaml, model.safetensors,
 * optimizer.safetensors and state.yaml, written into a temporary sibling
 * directory, fsynced, and renamed into place. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CKPT_FORMAT "mini-nn-checkpoint/1"
/* manifest.yaml's last line: the XXH3 of every byte before it */
#define MANIFEST_SEAL "manifest_xxh3: "
#define SEAL_LINE (sizeof MANIFEST_SEAL - 1 + 16 + 1)
#define STATE_MAX ((size_t)64 << 10) /* state.yaml, at most */

/* ---- writing ------------------------------------------------------------ */

/* A file being written: every byte goes through the XXH3 state on its way
 * to the descriptor, so the manifest's hashes cost no second pass. */
typedef struct {
    int fd;
    mnn_hash_t *h;
    uint64_t bytes;
} hsink_t;

static ssize_t hsink_write(void *cookie, const char *buf, size_t n)
{
    hsink_t *s = cookie;
    mnn_hash_update(s->h, buf, n);
    s->bytes += n;
    for (size_t done = 0; done < n;) {
        ssize_t w = write(s->fd, buf + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        done += (size_t)w;
    }
    return (ssize_t)n;
}

/* Opens path for writing through s; the caller passes the FILE to
 * close_synced(). */
static FILE *create(const char *path, hsink_t *s)
{
    s->bytes = 0;
    s->h = mnn_hash_new();
    s->fd = -1;
    if (!s->h)
        return NULL;
    mnn_hash_reset(s->h);
    if ((s->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0)
        goto fail;
    cookie_io_functions_t io = {.write = hsink_write};
    FILE *f = fopencookie(s, "w", io);
    if (f) {
        setvbuf(f, NULL, _IOFBF, 1 << 20);
        return f;
    }
    close(s->fd);
fail:
    mnn_hash_free(s->h);
    s->h = NULL;
    return NULL;
}

/* fflush, fsync, fclose; hex receives the hash.  0 or MNN_EIO with errno
 * kept. */
static int close_synced(FILE *f, hsink_t *s, int rc, char hex[17])
{
    int e = 0;
    if (rc == 0 && (ferror(f) || fflush(f) != 0 || fsync(s->fd) != 0))
        e = errno ? errno : EIO;
    /* on disk now: its pages need not crowd the cache the training uses */
    if (rc == 0 && !e)
        posix_fadvise(s->fd, 0, 0, POSIX_FADV_DONTNEED);
    if (fclose(f) != 0 && !e)
        e = errno ? errno : EIO;
    if (close(s->fd) != 0 && !e)
        e = errno;
    mnn_hash_hex(mnn_hash_digest(s->h), hex);
    mnn_hash_free(s->h);
    s->h = NULL;
    if (rc < 0)
        return rc;
    errno = e;
    return e ? MNN_EIO : 0;
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int mnn_ckpt_remove(const char *dir) { return mnn_remove_tree(dir); }

/* The i-th (weight, bias) pair of the flat layout: layers.I for i < L, then
 * exits.J, the exit heads.  prefix receives the tensor-name prefix. */
typedef struct {
    char prefix[32];
    size_t shape[2]; /* the weight's [out, in]; the bias is [out] */
    size_t w_off, b_off;
} slot_t;

static void param_slot(const mnn_model_t *m, size_t i, slot_t *s)
{
    const size_t L = m->spec.nlayers;
    if (i < L) {
        snprintf(s->prefix, sizeof s->prefix, "layers.%zu", i);
        s->shape[0] = m->spec.layers[i].units;
        s->shape[1] = m->fan_in[i];
        s->w_off = m->w_off[i];
        s->b_off = m->b_off[i];
    } else {
        size_t j = i - L;
        snprintf(s->prefix, sizeof s->prefix, "exits.%zu", j);
        s->shape[0] = m->spec.outputs;
        s->shape[1] = m->spec.layers[m->spec.exits[j]].units;
        s->w_off = m->ew_off[j];
        s->b_off = m->eb_off[j];
    }
}

/* ---- finite values -------------------------------------------------------- */

/* The index of the first element of p[0, n) that is not finite (or, with
 * nonneg, is negative), or n.  Blocks are screened branch-free first. */
static size_t first_bad(const float *p, size_t n, int nonneg)
{
    const size_t block = 4096;
    for (size_t at = 0; at < n; at += block) {
        size_t end = n - at < block ? n : at + block;
        unsigned bad = 0;
        for (size_t i = at; i < end; i++) {
            uint32_t u;
            memcpy(&u, &p[i], sizeof u);
            bad |= (u & 0x7f800000u) == 0x7f800000u;
            bad |= nonneg & (u > 0x80000000u); /* below -0 */
        }
        if (bad)
            for (size_t i = at; i < end; i++)
                if (!isfinite(p[i]) || (nonneg && p[i] < 0))
                    return i;
    }
    return n;
}

/* Names the tensor that holds flat parameter index k, and k's place in it. */
static void name_param(const mnn_model_t *m, size_t k, char *out, size_t size, size_t *at)
{
    for (size_t i = 0; i < m->spec.nlayers + m->spec.nexits; i++) {
        slot_t sl;
        param_slot(m, i, &sl);
        if (k >= sl.w_off && k < sl.b_off + sl.shape[0]) {
            const int w = k < sl.b_off;
            snprintf(out, size, "%s.%s", sl.prefix, w ? "weight" : "bias");
            *at = k - (w ? sl.w_off : sl.b_off);
            return;
        }
    }
    snprintf(out, size, "parameter");
    *at = k;
}

/* suffix: "" for the weights, else the optimizer buffer's tensor suffix */
static int bad_values(const mnn_model_t *m, const float *p, int nonneg, const char *suffix,
                      mnn_diag_t *d)
{
    size_t k = first_bad(p, m->nparams, nonneg), at;
    if (k == m->nparams)
        return 0;
    char name[64];
    name_param(m, k, name, sizeof name, &at);
    return mnn_fail(d, MNN_ECORRUPT, "%s%s%s[%zu] is %s (%g)", name, *suffix ? "." : "", suffix,
                    at, isfinite(p[k]) ? "negative" : "not finite", (double)p[k]);
}

int mnn_state_check(const mnn_model_t *m, const mnn_optim_t *o, mnn_diag_t *d)
{
    int rc = bad_values(m, m->params, 0, "", d);
    if (rc == 0 && o) {
        const int adam = o->spec.type == MNN_OPT_ADAM;
        if ((rc = bad_values(m, o->m1, 0, adam ? "exp_avg" : "momentum_buffer", d)) == 0 &&
            o->m2)
            rc = bad_values(m, o->m2, 1, "exp_avg_sq", d);
        if (rc == 0 && o->avg)
            rc = bad_values(m, o->avg, 0, "average", d);
    }
    for (size_t c = 0; rc == 0 && m->norm_mean && c < m->spec.input; c++)
        if (!isfinite(m->norm_mean[c]) || !isfinite(m->norm_m2[c]) || m->norm_m2[c] < 0)
            rc = mnn_fail(d, MNN_ECORRUPT, "normalize.%s[%zu] is %s",
                          isfinite(m->norm_mean[c]) ? "m2" : "mean", c,
                          isfinite(m->norm_mean[c]) && isfinite(m->norm_m2[c]) ? "negative"
                                                                                : "not finite");
    return rc;
}

static int write_model(FILE *f, const mnn_model_t *m, const mnn_optim_t *o)
{
    const float *w = mnn_optim_weights(o, m->params);
    size_t L = m->spec.nlayers, E = m->spec.nexits, n = 2 * (L + E) + 2;
    mnn_st_tensor_t *t = calloc(n, sizeof *t);
    char (*names)[48] = calloc(n, sizeof *names);
    char count[32];
    int rc = MNN_ENOMEM;
    if (!t || !names)
        goto out;
    size_t k = 0;
    for (size_t i = 0; i < L + E; i++) {
        slot_t sl;
        param_slot(m, i, &sl);
        snprintf(names[k], sizeof names[k], "%s.weight", sl.prefix);
        t[k] = (mnn_st_tensor_t){names[k], 0, 2, {sl.shape[0], sl.shape[1]}, w + sl.w_off};
        k++;
        snprintf(names[k], sizeof names[k], "%s.bias", sl.prefix);
        t[k] = (mnn_st_tensor_t){names[k], 0, 1, {sl.shape[0], 0}, w + sl.b_off};
        k++;
    }
    if (m->norm_mean) {
        t[k++] = (mnn_st_tensor_t){"normalize.mean", 1, 1, {m->spec.input, 0}, m->norm_mean};
        t[k++] = (mnn_st_tensor_t){"normalize.m2", 1, 1, {m->spec.input, 0}, m->norm_m2};
    }
    snprintf(count, sizeof count, "%" PRIu64, m->norm_count);
    const char *meta[] = {"format", "pt", "normalize_count", count, NULL};
    if (!m->norm_mean)
        meta[2] = NULL;
    rc = mnn_st_write(f, t, k, meta);
out:
    free(t);
    free(names);
    return rc;
}

/* The buffers of optimizer.safetensors, by tensor-name suffix: the moments,
 * and the raw training weights when model.safetensors holds their average. */
static size_t optim_buffers(const mnn_optim_t *o, float **bufs, const char **suffix,
                            float *params)
{
    size_t k = 0;
    const int adam = o->spec.type == MNN_OPT_ADAM;
    suffix[k] = adam ? "exp_avg" : "momentum_buffer";
    bufs[k++] = o->m1;
    if (adam) {
        suffix[k] = "exp_avg_sq";
        bufs[k++] = o->m2;
    }
    if (o->avg) {
        suffix[k] = "param";
        bufs[k++] = params;
    }
    return k;
}

static int write_optim(FILE *f, const mnn_model_t *m, const mnn_optim_t *o)
{
    /* up to 3 buffers, a weight and a bias for every layer and exit head */
    size_t L = m->spec.nlayers, E = m->spec.nexits, n = 6 * (L + E);
    mnn_st_tensor_t *t = calloc(n, sizeof *t);
    char (*names)[64] = calloc(n, sizeof *names);
    char step[32];
    int rc = MNN_ENOMEM;
    if (!t || !names)
        goto out;
    const int adam = o->spec.type == MNN_OPT_ADAM;
    const char *suffix[3];
    float *bufs[3];
    size_t nb = optim_buffers(o, bufs, suffix, m->params), k = 0;
    for (size_t which = 0; which < nb; which++) {
        const float *buf = bufs[which];
        for (size_t i = 0; i < L + E; i++) {
            slot_t sl;
            param_slot(m, i, &sl);
            snprintf(names[k], sizeof names[k], "%s.weight.%s", sl.prefix, suffix[which]);
            t[k] = (mnn_st_tensor_t){names[k], 0, 2, {sl.shape[0], sl.shape[1]},
                                     buf + sl.w_off};
            k++;
            snprintf(names[k], sizeof names[k], "%s.bias.%s", sl.prefix, suffix[which]);
            t[k] = (mnn_st_tensor_t){names[k], 0, 1, {sl.shape[0], 0}, buf + sl.b_off};
            k++;
        }
    }
    snprintf(step, sizeof step, "%" PRIu64, o->step);
    const char *meta[] = {"format", "pt", "optimizer", mnn_opt_name(adam ? MNN_OPT_ADAM : MNN_OPT_SGD), "step", step, NULL};
    rc = mnn_st_write(f, t, k, meta);
out:
    free(t);
    free(names);
    return rc;
}

static int write_state(FILE *f, const mnn_train_state_t *st)
{
    if (st->threads < 1 || st->threads > 1024)
        return MNN_EINVAL; /* as the reader would refuse it */
    fprintf(f, "# mini-nn training state: what bit-exact resumption needs\n");
    fprintf(f, "step: %" PRIu64 "\n", st->step);
    fprintf(f, "records_seen: %" PRIu64 "\n", st->records_seen);
    fprintf(f, "rng: [%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64 "]\n",
            st->rng.s[0], st->rng.s[1], st->rng.s[2], st->rng.s[3]);
    fprintf(f, "progressive: {loss_sum: %.17g, correct: %" PRIu64 "}\n", st->loss_sum,
            st->correct);
    /* the BLAS threads the arithmetic ran on: bit-exactness depends on it */
    fprintf(f, "threads: %u\n", st->threads);
    return ferror(f) ? MNN_EIO : 0;
}

static const char *const ckpt_files[] = {"model.safetensors", "optimizer.safetensors",
                                         "state.yaml"};

static int write_manifest(const char *tmp, const mnn_model_t *m,
                          const mnn_train_state_t *st, const char *parent,
                          int64_t created, const uint64_t *sizes, char (*hashes)[17],
                          mnn_diag_t *d)
{
    char *path = path_join(tmp, "manifest.yaml"), hex[17];
    hsink_t sink;
    FILE *f = path ? create(path, &sink) : NULL;
    if (!f) {
        int rc = mnn_fail(d, MNN_EIO, "%s/manifest.yaml: %s", tmp, strerror(errno));
        free(path);
        return rc;
    }
    time_t t = (time_t)created;
    struct tm tm;
    char when[32] = "1970-01-01T00:00:00Z";
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(f, "format: %s\ntool: %s %s\ncreated: %s\n", CKPT_FORMAT, PACKAGE_NAME,
            PACKAGE_VERSION, when);
    fprintf(f, "step: %" PRIu64 "\nrecords_seen: %" PRIu64 "\n", st->step, st->records_seen);
    if (parent) {
        fputs("parent: \"", f);
        for (const char *p = parent; *p; p++)
            if (*p == '"' || *p == '\\')
                fprintf(f, "\\%c", *p);
            else if ((unsigned char)*p < 0x20)
                fprintf(f, "\\x%02x", (unsigned char)*p);
            else
                fputc(*p, f);
        fputs("\"\n", f);
    } else
        fputs("parent: null\n", f);
    fputs("model:\n", f);
    mnn_spec_write(&m->spec, f, 2);
    fputs("files:\n", f);
    for (size_t i = 0; i < sizeof ckpt_files / sizeof ckpt_files[0]; i++)
        fprintf(f, "  - {name: %s, bytes: %" PRIu64 ", xxh3: %s}\n", ckpt_files[i], sizes[i],
                hashes[i]);
    /* the last line: the hash of every byte before it */
    int rc = fflush(f) == 0 ? 0 : MNN_EIO;
    fprintf(f, MANIFEST_SEAL "%016llx\n", (unsigned long long)mnn_hash_digest(sink.h));
    int crc = close_synced(f, &sink, rc, hex);
    if (rc == 0 && crc < 0)
        rc = mnn_fail(d, MNN_EIO, "%s: %s", path, strerror(errno));
    free(path);
    return rc;
}

int mnn_ckpt_write(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                   const mnn_train_state_t *st, const char *parent,
                   int64_t created, int replace, mnn_diag_t *d)
{
    char *dcopy = strdup(dir), *bcopy = strdup(dir), *tmp = NULL;
    int rc = MNN_ENOMEM;
    struct stat sb;
    if (!dcopy || !bcopy)
        goto out;
    /* no reader accepts a value that is not finite: none is written */
    if ((rc = mnn_state_check(m, o, d)) < 0) {
        char what[PATH_MAX + 16];
        snprintf(what, sizeof what, "%s: not written", dir);
        rc = mnn_fail_prefix(d, MNN_EINVAL, what);
        goto out;
    }
    const char *pdir = dirname(dcopy), *base = basename(bcopy);
    if (!*base || !strcmp(base, "/") || !strcmp(base, ".") || !strcmp(base, "..")) {
        rc = mnn_fail(d, MNN_EINVAL, "%s: not a usable checkpoint name", dir);
        goto out;
    }
    if (lstat(dir, &sb) == 0 && !replace) {
        rc = mnn_fail(d, MNN_EEXIST, "%s: already exists", dir);
        goto out;
    }
    size_t n = strlen(pdir) + strlen(base) + 8;
    if (!(tmp = malloc(n)))
        goto out;
    snprintf(tmp, n, "%s/.tmp-%s", pdir, base);
    /* a leftover from a crashed writer is ours to remove */
    if (mnn_remove_tree(tmp) < 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: cannot remove a stale temporary directory: %s", tmp,
                      strerror(errno));
        goto out;
    }
    if (mkdir(tmp, 0755) != 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    uint64_t sizes[3];
    char hashes[3][17];
    for (int i = 0; i < 3; i++) {
        char *fp = path_join(tmp, ckpt_files[i]);
        hsink_t sink;
        FILE *f = fp ? create(fp, &sink) : NULL;
        if (!f) {
            rc = mnn_fail(d, MNN_EIO, "%s: %s", fp ? fp : tmp, strerror(errno));
            free(fp);
            goto fail;
        }
        rc = i == 0 ? write_model(f, m, o) : i == 1 ? write_optim(f, m, o) : write_state(f, st);
        rc = close_synced(f, &sink, rc, hashes[i]);
        sizes[i] = sink.bytes;
        if (rc < 0) {
            rc = mnn_fail(d, rc, "%s: %s", fp, rc == MNN_EIO ? strerror(errno) : mnn_strerror(rc));
            free(fp);
            goto fail;
        }
        free(fp);
    }
    if ((rc = write_manifest(tmp, m, st, parent, created, sizes, hashes, d)) < 0)
        goto fail;
    if (mnn_fsync_dir(tmp) < 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (lstat(dir, &sb) == 0) {
        /* replace: swap the directories atomically, then drop the old one */
        if (!S_ISDIR(sb.st_mode) || renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) != 0) {
            rc = mnn_fail(d, MNN_EIO, "%s: cannot replace: %s", dir,
                          S_ISDIR(sb.st_mode) ? strerror(errno) : "not a directory");
            goto fail;
        }
        char *probe = path_join(tmp, "manifest.yaml");
        int was_ckpt = probe && access(probe, F_OK) == 0;
        free(probe);
        if (!was_ckpt) {
            /* not a checkpoint we swapped out: put it back, refuse */
            renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE);
            rc = mnn_fail(d, MNN_EEXIST, "%s: exists and is not a checkpoint; not replacing it", dir);
            goto fail;
        }
        mnn_remove_tree(tmp);
    } else if ((rc = mnn_rename_noreplace(AT_FDCWD, tmp, AT_FDCWD, dir)) < 0) {
        rc = mnn_fail(d, rc, "%s: %s", dir, rc == MNN_EEXIST ? "already exists" : strerror(errno));
        goto fail;
    }
    if (mnn_fsync_dir(pdir) < 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: fsync: %s", pdir, strerror(errno));
        goto out;
    }
    rc = 0;
    goto out;
fail:
    {
        int e = errno;
        mnn_remove_tree(tmp);
        errno = e;
    }
out:
    free(tmp);
    free(dcopy);
    free(bcopy);
    return rc;
}

/* ---- reading ------------------------------------------------------------ */

/* ---- manifests ----------------------------------------------------------- */

static int manifest_files(mnn_manifest_t *mf, mnn_yaml_t *y, yaml_node_t *files,
                          mnn_diag_t *d)
{
    int rc;
    if ((rc = mnn_yaml_expect(y, files, YAML_SEQUENCE_NODE, "files", d)) < 0)
        return rc;
    size_t n = (size_t)(files->data.sequence.items.top - files->data.sequence.items.start);
    if (n > MNN_MANIFEST_MAX_FILES)
        return mnn_yaml_fail(y, files, d, MNN_EFORMAT, "%zu files listed, at most %d allowed", n,
                             MNN_MANIFEST_MAX_FILES);
    mf->files = calloc(n ? n : 1, sizeof *mf->files);
    if (!mf->files)
        return MNN_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *e = mnn_yaml_node(y, files->data.sequence.items.start[i]);
        yaml_node_t *nn = mnn_yaml_get(y, e, "name"), *nb = mnn_yaml_get(y, e, "bytes"),
                    *nh = mnn_yaml_get(y, e, "xxh3");
        const char *name = "", *hash = "";
        mnn_manifest_file_t *f = &mf->files[i];
        if (!nn || !nb || !nh)
            return mnn_yaml_fail(y, e, d, MNN_EFORMAT, "a file entry needs name, bytes and xxh3");
        if ((rc = mnn_yaml_str(y, nn, "name", &name, d)) < 0 ||
            (rc = mnn_yaml_u64(y, nb, "bytes", &f->bytes, d)) < 0 ||
            (rc = mnn_yaml_str(y, nh, "xxh3", &hash, d)) < 0)
            return rc;
        if (!*name || strchr(name, '/') || name[0] == '.' || strlen(name) >= sizeof f->name ||
            !strcmp(name, "manifest.yaml"))
            return mnn_yaml_fail(y, nn, d, MNN_EFORMAT, "file name '%s' is not a plain name", name);
        if (strlen(hash) != 16 || strspn(hash, "0123456789abcdef") != 16)
            return mnn_yaml_fail(y, nh, d, MNN_EFORMAT, "xxh3 '%s' is not 16 hex digits", hash);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(mf->files[j].name, name))
                return mnn_yaml_fail(y, nn, d, MNN_EFORMAT, "file '%s' is listed twice", name);
        strcpy(f->name, name);
        strcpy(f->xxh3, hash);
        mf->nfiles++;
    }
    return 0;
}

/* The seal: the last line holds the XXH3 of every byte before it, so that
 * a manifest edited by hand, or damaged, is refused before it is read. */
static int check_seal(const char *text, size_t len, const char *name, mnn_diag_t *d)
{
    const size_t n = sizeof MANIFEST_SEAL - 1;
    if (len < SEAL_LINE || text[len - 1] != '\n' ||
        (len > SEAL_LINE && text[len - SEAL_LINE - 1] != '\n') ||
        memcmp(text + len - SEAL_LINE, MANIFEST_SEAL, n))
        return mnn_fail(d, MNN_ECORRUPT,
                        "%s: no '%s' line at its end: truncated, or written by an earlier "
                        "mini-nn", name, MANIFEST_SEAL "HASH");
    const char *hex = text + len - SEAL_LINE + n;
    char want[17];
    snprintf(want, sizeof want, "%016llx",
             (unsigned long long)mnn_hash64(text, len - SEAL_LINE));
    if (strspn(hex, "0123456789abcdef") < 16 || memcmp(hex, want, 16))
        return mnn_fail(d, MNN_ECORRUPT,
                        "%s: hash does not match its contents (%.*s, the bytes before "
                        "it hash to %s): edited or damaged", name, (int)(SEAL_LINE - 1),
                        text + len - SEAL_LINE, want);
    return 0;
}

/* The files of a mini-nn-checkpoint/1 and the sizes its spec allows: a
 * hostile manifest cannot make a reader extract or hash more than the model
 * it describes. */
static int check_files(const mnn_manifest_t *mf, const char *name, mnn_diag_t *d)
{
    const mnn_spec_t *s = &mf->spec;
    size_t np;
    if (mnn_spec_params(s, &np) < 0)
        return mnn_fail(d, MNN_EOVERFLOW, "%s: the model is too large", name);
    const uint64_t L = s->nlayers + s->nexits;
    const uint64_t nbuf = 1 + (s->opt.type == MNN_OPT_ADAM) + (s->opt.average > 0);
    /* model: weights, biases and the normalization statistics (F64); the
     * optimizer: each buffer, for each of them.  A header holds at most
     * 256 bytes per tensor and 1 KiB of metadata. */
    const uint64_t tm = 2 * L + 2, to = nbuf * 2 * L;
    const uint64_t dm = 4 * (uint64_t)np + (s->normalize == MNN_NORM_RUNNING ? 16 * (uint64_t)s->input : 0);
    const uint64_t dopt = 4 * (uint64_t)np * nbuf;
    const struct {
        const char *file;
        uint64_t lo, hi;
    } want[] = {
        {"model.safetensors", 8 + dm, 8 + dm + 1024 + 256 * tm},
        {"optimizer.safetensors", 8 + dopt, 8 + dopt + 1024 + 256 * to},
        {"state.yaml", 1, STATE_MAX},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        const mnn_manifest_file_t *f = mnn_manifest_find(mf, want[k].file);
        if (!f)
            return mnn_fail(d, MNN_EFORMAT, "%s: the manifest does not list %s", name,
                            want[k].file);
        if (f->bytes < want[k].lo || f->bytes > want[k].hi)
            return mnn_fail(d, MNN_ECORRUPT,
                            "%s: %s: %" PRIu64 " bytes, but its model spec allows %" PRIu64
                            " to %" PRIu64, name, want[k].file, f->bytes, want[k].lo,
                            want[k].hi);
    }
    if (mf->nfiles != sizeof want / sizeof want[0])
        for (size_t i = 0; i < mf->nfiles; i++) {
            size_t k = 0;
            while (k < sizeof want / sizeof want[0] && strcmp(mf->files[i].name, want[k].file))
                k++;
            if (k == sizeof want / sizeof want[0])
                return mnn_fail(d, MNN_EFORMAT, "%s: lists %s, not a file of a %s", name,
                                mf->files[i].name, CKPT_FORMAT);
        }
    return 0;
}

int mnn_manifest_parse(mnn_manifest_t *mf, const char *text, size_t len,
                       const char *name, mnn_diag_t *d)
{
    mnn_yaml_t y;
    int rc;
    memset(mf, 0, sizeof *mf);
    if ((rc = check_seal(text, len, name, d)) < 0)
        return rc;
    if ((rc = mnn_yaml_load(&y, text, len, name, d)) < 0)
        return rc;
    yaml_node_t *root = mnn_yaml_root(&y), *n;
    const char *str;
    rc = MNN_EFORMAT;
    if (root->type != YAML_MAPPING_NODE || !(n = mnn_yaml_get(&y, root, "format")) ||
        mnn_yaml_str(&y, n, "format", &str, NULL) < 0 || strcmp(str, CKPT_FORMAT)) {
        mnn_fail(d, rc, "%s: not a %s manifest", name, CKPT_FORMAT);
        goto fail;
    }
    if ((n = mnn_yaml_get(&y, root, "tool")) && mnn_yaml_str(&y, n, "tool", &str, NULL) == 0)
        snprintf(mf->tool, sizeof mf->tool, "%s", str);
    if ((n = mnn_yaml_get(&y, root, "created")) && mnn_yaml_str(&y, n, "created", &str, NULL) == 0)
        snprintf(mf->created, sizeof mf->created, "%s", str);
    const char *const counts[] = {"step", "records_seen"};
    uint64_t *const dst[] = {&mf->step, &mf->records_seen};
    for (int i = 0; i < 2; i++) {
        if (!(n = mnn_yaml_get(&y, root, counts[i]))) {
            rc = mnn_yaml_fail(&y, root, d, MNN_EFORMAT, "step and records_seen are required");
            goto fail;
        }
        if ((rc = mnn_yaml_u64(&y, n, counts[i], dst[i], d)) < 0)
            goto fail;
    }
    n = mnn_yaml_get(&y, root, "parent");
    if (n && n->type == YAML_SCALAR_NODE && n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE &&
        !(mf->parent = strdup((const char *)n->data.scalar.value))) {
        rc = MNN_ENOMEM;
        goto fail;
    }
    if (!(n = mnn_yaml_get(&y, root, "files"))) {
        rc = mnn_yaml_fail(&y, root, d, MNN_EFORMAT, "the files list is missing");
        goto fail;
    }
    if ((rc = manifest_files(mf, &y, n, d)) < 0)
        goto fail;
    if (!(n = mnn_yaml_get(&y, root, "model"))) {
        rc = mnn_yaml_fail(&y, root, d, MNN_EFORMAT, "the model spec is missing");
        goto fail;
    }
    if ((rc = mnn_spec_from_node(&mf->spec, &y, n, d)) < 0)
        goto fail;
    mf->has_spec = 1;
    if ((rc = check_files(mf, name, d)) < 0)
        goto fail;
    mnn_yaml_free(&y);
    return 0;
fail:
    mnn_yaml_free(&y);
    mnn_manifest_free(mf);
    return rc;
}

void mnn_manifest_free(mnn_manifest_t *mf)
{
    free(mf->files);
    free(mf->parent);
    if (mf->has_spec)
        mnn_spec_free(&mf->spec);
    memset(mf, 0, sizeof *mf);
}

const mnn_manifest_file_t *mnn_manifest_find(const mnn_manifest_t *mf, const char *name)
{
    for (size_t i = 0; i < mf->nfiles; i++)
        if (!strcmp(mf->files[i].name, name))
            return &mf->files[i];
    return NULL;
}

/* *out = dir, or its `latest` link when dir is a checkpoint root. */
static int resolve_ckpt_dir(const char *dir, char **out, mnn_diag_t *d)
{
    struct stat sb;
    *out = NULL;
    if (stat(dir, &sb) != 0)
        return mnn_fail(d, MNN_EIO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return mnn_fail(d, MNN_EFORMAT, "%s: not a checkpoint directory", dir);
    char *mpath = path_join(dir, "manifest.yaml");
    if (!mpath)
        return MNN_ENOMEM;
    int here = access(mpath, F_OK) == 0;
    free(mpath);
    if (here)
        return (*out = strdup(dir)) ? 0 : MNN_ENOMEM;
    char *latest = path_join(dir, "latest");
    if (!latest)
        return MNN_ENOMEM;
    if (access(latest, F_OK) != 0) {
        free(latest);
        return mnn_fail(d, MNN_EFORMAT, "%s: not a checkpoint (no manifest.yaml, no latest)", dir);
    }
    *out = latest;
    return 0;
}

int mnn_manifest_load(mnn_manifest_t *mf, const char *dir, char **real, mnn_diag_t *d)
{
    char *rdir, *mpath = NULL, *text = NULL;
    size_t len;
    if (real)
        *real = NULL;
    int rc = resolve_ckpt_dir(dir, &rdir, d);
    if (rc < 0)
        return rc;
    rc = MNN_ENOMEM;
    if ((mpath = path_join(rdir, "manifest.yaml")) &&
        (rc = mnn_read_file(mpath, (size_t)1 << 20, &text, &len, d)) == 0)
        rc = mnn_manifest_parse(mf, text, len, mpath, d);
    free(text);
    free(mpath);
    if (rc == 0 && real)
        *real = rdir;
    else
        free(rdir);
    return rc;
}

/* Opens fp, a regular file (a link is not followed) of the size the
 * manifest says, into *fd; 0 or an error with d filled. */
static int open_listed(const char *fp, const mnn_manifest_file_t *f, int *fd, mnn_diag_t *d)
{
    struct stat sb;
    if ((*fd = open(fp, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)) < 0) {
        if (errno == ENOENT)
            return mnn_fail(d, MNN_ECORRUPT, "%s: missing", fp);
        if (errno == ELOOP)
            return mnn_fail(d, MNN_ECORRUPT, "%s: not a regular file", fp);
        return mnn_fail(d, MNN_EIO, "%s: %s", fp, strerror(errno));
    }
    int rc = 0;
    if (fstat(*fd, &sb) != 0)
        rc = mnn_fail(d, MNN_EIO, "%s: %s", fp, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        rc = mnn_fail(d, MNN_ECORRUPT, "%s: not a regular file", fp);
    else if ((uint64_t)sb.st_size != f->bytes)
        rc = mnn_fail(d, MNN_ECORRUPT, "%s: size does not match the manifest (%lld bytes; the "
                      "manifest says %" PRIu64 ")", fp, (long long)sb.st_size, f->bytes);
    if (rc < 0) {
        close(*fd);
        *fd = -1;
    }
    return rc;
}

static int hash_mismatch(const char *fp, const mnn_manifest_file_t *f, const char *hex,
                         mnn_diag_t *d)
{
    return mnn_fail(d, MNN_ECORRUPT,
                    "%s: hash does not match the manifest (xxh3 %s; the manifest says %s)", fp,
                    hex, f->xxh3);
}

int mnn_manifest_verify_dir(const mnn_manifest_t *mf, const char *dir, mnn_diag_t *d)
{
    int rc = 0;
    for (size_t i = 0; i < mf->nfiles && rc == 0; i++) {
        const mnn_manifest_file_t *f = &mf->files[i];
        char *fp = path_join(dir, f->name), hex[17];
        uint64_t got;
        if (!fp)
            return mnn_fail(d, MNN_ENOMEM, "out of memory");
        int fd;
        if ((rc = open_listed(fp, f, &fd, d)) < 0)
            ;
        else if (mnn_hash_fd(fd, hex, &got) < 0)
            rc = mnn_fail(d, MNN_EIO, "%s: %s", fp, strerror(errno));
        else if (got != f->bytes)
            rc = mnn_fail(d, MNN_ECORRUPT, "%s: size does not match the manifest (%" PRIu64
                          " bytes read; the manifest says %" PRIu64 ")", fp, got, f->bytes);
        else if (strcmp(hex, f->xxh3))
            rc = hash_mismatch(fp, f, hex, d);
        if (fd >= 0)
            close(fd);
        free(fp);
    }
    return rc;
}

/* Copies the (weight, bias) tensors of every layer and exit head, named
 * PREFIX.weight[.SUFFIX] and PREFIX.bias[.SUFFIX], from f into buf. */
static int get_params(const mnn_model_t *m, const mnn_st_file_t *f, const char *suffix,
                      float *buf, mnn_diag_t *d)
{
    int rc = 0;
    for (size_t i = 0; i < m->spec.nlayers + m->spec.nexits && rc == 0; i++) {
        char name[64];
        const void *p;
        slot_t sl;
        param_slot(m, i, &sl);
        snprintf(name, sizeof name, "%s.weight%s%s", sl.prefix, suffix ? "." : "",
                 suffix ? suffix : "");
        if ((rc = mnn_st_get(f, name, 0, 2, sl.shape, &p, d)) < 0)
            break;
        memcpy(buf + sl.w_off, p, sl.shape[0] * sl.shape[1] * sizeof(float));
        snprintf(name, sizeof name, "%s.bias%s%s", sl.prefix, suffix ? "." : "",
                 suffix ? suffix : "");
        if ((rc = mnn_st_get(f, name, 0, 1, sl.shape, &p, d)) < 0)
            break;
        memcpy(buf + sl.b_off, p, sl.shape[0] * sizeof(float));
    }
    return rc;
}

/* A metadata value that must be a whole number. */
static int meta_u64(const mnn_st_file_t *f, const char *path, const char *key, uint64_t *v,
                    mnn_diag_t *d)
{
    const char *s = mnn_st_meta(f, key);
    if (!s || mnn_parse_u64(s, v) < 0)
        return mnn_fail(d, MNN_EFORMAT, "%s: %s metadata %s", path, key,
                        s ? "is not a whole number" : "missing");
    return 0;
}

static int load_weights(mnn_model_t *m, char *buf, size_t len, const char *path,
                        mnn_diag_t *d)
{
    mnn_st_file_t *f;
    int rc = mnn_st_parse(&f, buf, len, path, d);
    if (rc < 0)
        return rc;
    rc = get_params(m, f, NULL, m->params, d);
    if (rc == 0 && m->norm_mean) {
        const void *p;
        size_t shape[1] = {m->spec.input};
        if ((rc = meta_u64(f, path, "normalize_count", &m->norm_count, d)) == 0 &&
            (rc = mnn_st_get(f, "normalize.mean", 1, 1, shape, &p, d)) == 0) {
            memcpy(m->norm_mean, p, shape[0] * sizeof(double));
            if ((rc = mnn_st_get(f, "normalize.m2", 1, 1, shape, &p, d)) == 0)
                memcpy(m->norm_m2, p, shape[0] * sizeof(double));
        }
    }
    mnn_st_close(f);
    return rc;
}

static int load_optim(mnn_model_t *m, mnn_optim_t *o, char *buf, size_t len,
                      const char *path, mnn_diag_t *d)
{
    mnn_st_file_t *f;
    int rc = mnn_st_parse(&f, buf, len, path, d);
    if (rc < 0)
        return rc;
    if ((rc = mnn_optim_init(o, &m->spec.opt, m->nparams)) < 0) {
        mnn_st_close(f);
        return mnn_fail(d, rc, "%s: %s", path, mnn_strerror(rc));
    }
    /* model.safetensors gave the averaged weights: keep them as the average
     * and read the raw ones back into the model */
    if (o->avg)
        memcpy(o->avg, m->params, m->nparams * sizeof(float));
    const char *suffix[3];
    float *bufs[3];
    size_t nb = optim_buffers(o, bufs, suffix, m->params);
    for (size_t which = 0; which < nb && rc == 0; which++)
        rc = get_params(m, f, suffix[which], bufs[which], d);
    if (rc == 0)
        rc = meta_u64(f, path, "step", &o->step, d);
    if (rc < 0)
        mnn_optim_free(o);
    mnn_st_close(f);
    return rc;
}

int mnn_state_parse(mnn_train_state_t *st, const char *text, size_t len, const char *path,
                    mnn_diag_t *d)
{
    mnn_yaml_t y;
    memset(st, 0, sizeof *st);
    if (d)
        d->msg[0] = 0;
    int rc = mnn_yaml_load(&y, text, len, path, d);
    if (rc < 0)
        return rc;
    yaml_node_t *r = mnn_yaml_root(&y), *n;
    memset(st, 0, sizeof *st);
    rc = MNN_EFORMAT;
    if (!(n = mnn_yaml_get(&y, r, "step")) || mnn_yaml_u64(&y, n, "step", &st->step, d) < 0)
        goto bad;
    if (!(n = mnn_yaml_get(&y, r, "records_seen")) ||
        mnn_yaml_u64(&y, n, "records_seen", &st->records_seen, d) < 0)
        goto bad;
    n = mnn_yaml_get(&y, r, "rng");
    if (!n || n->type != YAML_SEQUENCE_NODE ||
        n->data.sequence.items.top - n->data.sequence.items.start != 4)
        goto bad;
    for (int i = 0; i < 4; i++)
        if (mnn_yaml_u64(&y, mnn_yaml_node(&y, n->data.sequence.items.start[i]), "rng",
                         &st->rng.s[i], d) < 0)
            goto bad;
    if (!(st->rng.s[0] | st->rng.s[1] | st->rng.s[2] | st->rng.s[3])) {
        rc = mnn_yaml_fail(&y, n, d, MNN_EFORMAT, "rng: an all-zero generator state");
        goto bad;
    }
    n = mnn_yaml_get(&y, r, "progressive");
    yaml_node_t *ls = mnn_yaml_get(&y, n, "loss_sum"), *co = mnn_yaml_get(&y, n, "correct");
    if (!ls || !co || mnn_yaml_f64(&y, ls, "loss_sum", &st->loss_sum, d) < 0 ||
        mnn_yaml_u64(&y, co, "correct", &st->correct, d) < 0)
        goto bad;
    uint64_t th;
    if (!(n = mnn_yaml_get(&y, r, "threads")) || mnn_yaml_u64(&y, n, "threads", &th, d) < 0)
        goto bad;
    if (th < 1 || th > 1024) {
        rc = mnn_yaml_fail(&y, n, d, MNN_EFORMAT, "threads: %" PRIu64 " is not in 1..1024", th);
        goto bad;
    }
    st->threads = (uint32_t)th;
    if (st->correct > st->records_seen || st->loss_sum < 0) {
        rc = mnn_fail(d, MNN_EFORMAT, "%s: progressive counts out of range", path);
        goto bad;
    }
    rc = 0;
    goto out;
bad:
    if (d && !d->msg[0])
        mnn_fail(d, rc, "%s: incomplete training state", path);
out:
    mnn_yaml_free(&y);
    return rc;
}

/* Reads dir/f->name whole and checks it against the manifest: the bytes
 * handed back are the bytes the hash covers, read once. */
static int read_listed(const char *dir, const mnn_manifest_file_t *f, char **buf, size_t *len,
                       char **path, mnn_diag_t *d)
{
    *buf = NULL;
    if (!(*path = path_join(dir, f->name)))
        return mnn_fail(d, MNN_ENOMEM, "out of memory");
    int fd, rc = open_listed(*path, f, &fd, d);
    if (rc < 0)
        return rc;
    rc = mnn_read_fd(fd, *path, f->bytes > SIZE_MAX - 1 ? SIZE_MAX - 1 : (size_t)f->bytes, buf,
                         len, d);
    close(fd);
    if (rc == MNN_EOVERFLOW || (rc == 0 && *len != f->bytes))
        rc = mnn_fail(d, MNN_ECORRUPT, "%s: size does not match the manifest (it changed while "
                      "read; the manifest says %" PRIu64 ")", *path, f->bytes);
    if (rc == 0) {
        char hex[17];
        mnn_hash_hex(mnn_hash64(*buf, *len), hex);
        if (strcmp(hex, f->xxh3))
            rc = hash_mismatch(*path, f, hex, d);
    }
    if (rc < 0) {
        free(*buf);
        *buf = NULL;
    }
    return rc;
}

int mnn_ckpt_load(const char *dir, mnn_model_t *m, mnn_optim_t *o,
                  mnn_train_state_t *st, mnn_diag_t *d)
{
    mnn_manifest_t mf;
    char *real = NULL, *buf = NULL, *path = NULL;
    size_t len;
    int rc = mnn_manifest_load(&mf, dir, &real, d), have_m = 0, have_o = 0;
    if (rc < 0)
        return rc;
    if ((rc = mnn_model_init(m, &mf.spec)) < 0) {
        rc = mnn_fail(d, rc, "%s: %s", real, mnn_strerror(rc));
        goto out;
    }
    have_m = 1;
    /* every file read is checked against the manifest as it is read; the
     * manifest lists all three (mnn_manifest_parse) */
    if ((rc = read_listed(real, mnn_manifest_find(&mf, ckpt_files[0]), &buf, &len, &path, d)) < 0)
        goto out;
    rc = load_weights(m, buf, len, path, d);
    buf = NULL; /* the parser owns it */
    free(path);
    path = NULL;
    if (rc < 0)
        goto out;
    if (o) {
        if ((rc = read_listed(real, mnn_manifest_find(&mf, ckpt_files[1]), &buf, &len, &path,
                              d)) < 0)
            goto out;
        rc = load_optim(m, o, buf, len, path, d);
        buf = NULL;
        free(path);
        path = NULL;
        if (rc < 0)
            goto out;
        have_o = 1;
        if (o->step != mf.step) {
            rc = mnn_fail(d, MNN_ECORRUPT, "%s: the optimizer is at step %" PRIu64
                          " but the manifest says %" PRIu64, real, o->step, mf.step);
            goto out;
        }
    }
    if (st) {
        if ((rc = read_listed(real, mnn_manifest_find(&mf, ckpt_files[2]), &buf, &len, &path,
                              d)) < 0 ||
            (rc = mnn_state_parse(st, buf, len, path, d)) < 0)
            goto out;
        if (st->step != mf.step || st->records_seen != mf.records_seen) {
            rc = mnn_fail(d, MNN_ECORRUPT, "%s: state.yaml (step %" PRIu64 ", records_seen %"
                          PRIu64 ") and the manifest (step %" PRIu64 ", records_seen %" PRIu64
                          ") disagree", real, st->step, st->records_seen, mf.step,
                          mf.records_seen);
            goto out;
        }
    }
    /* no reader accepts a value that is not finite */
    if ((rc = mnn_state_check(m, o, d)) < 0)
        rc = mnn_fail_prefix(d, MNN_ECORRUPT, real);
out:
    if (rc < 0) {
        if (have_o)
            mnn_optim_free(o);
        if (have_m)
            mnn_model_free(m);
    }
    free(buf);
    free(path);
    mnn_manifest_free(&mf);
    free(real);
    return rc;
}

/* ---- checkpoint roots ----------------------------------------------------- */

void mnn_ckpt_step_name(char *buf, size_t size, uint64_t step)
{
    snprintf(buf, size, "step-%08" PRIu64, step);
}

int mnn_ckpt_root_open(const char *root, int *lock_fd, mnn_diag_t *d)
{
    *lock_fd = -1;
    if (mkdir(root, 0755) != 0 && errno != EEXIST)
        return mnn_fail(d, MNN_EIO, "%s: %s", root, strerror(errno));
    /* one writer per root: a second one would remove the first one's
     * temporary directories, and both would write the same step-N */
    int fd, rc = mnn_lock_dir(root, &fd, d);
    if (rc == MNN_EBUSY)
        return mnn_fail(d, rc, "%s: another process is writing checkpoints here (the root "
                               "is locked); use another --ckpt-dir", root);
    if (rc < 0)
        return rc;
    int dfd = dup(fd);
    DIR *dp = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!dp) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", root, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        close(fd);
        return rc;
    }
    struct dirent *de;
    while ((de = readdir(dp)) && rc == 0)
        /* a crashed writer's leftovers: removed without following links */
        if (!strncmp(de->d_name, ".tmp-", 5) && mnn_remove_at(fd, de->d_name) < 0)
            rc = mnn_fail(d, MNN_EIO, "%s/%s: cannot remove this leftover of an interrupted "
                                      "checkpoint: %s", root, de->d_name, strerror(errno));
    closedir(dp);
    if (rc < 0)
        close(fd);
    else
        *lock_fd = fd;
    return rc;
}

int mnn_ckpt_set_latest(const char *root, const char *name, mnn_diag_t *d)
{
    char tmpname[64];
    snprintf(tmpname, sizeof tmpname, ".tmp-latest.%ld", (long)getpid());
    char *tmp = path_join(root, tmpname), *latest = path_join(root, "latest");
    int rc = MNN_ENOMEM;
    if (!tmp || !latest)
        goto out;
    unlink(tmp);
    if (symlink(name, tmp) != 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, latest) != 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", latest, strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = mnn_fsync_dir(root) < 0 ? mnn_fail(d, MNN_EIO, "%s: fsync: %s", root, strerror(errno)) : 0;
out:
    free(tmp);
    free(latest);
    return rc;
}

static int parse_step_name(const char *s, uint64_t *step)
{
    char canon[32];
    if (strncmp(s, "step-", 5) || mnn_parse_u64(s + 5, step) < 0)
        return -1;
    mnn_ckpt_step_name(canon, sizeof canon, *step);
    return strcmp(canon, s) ? -1 : 0; /* only names we write */
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The step numbers of root's checkpoint directories (open as fd), sorted:
 * only the names written here, and only directories: a link named step-N
 * (to anywhere) is not one.  *steps is to be freed. */
static int list_steps(int fd, const char *root, uint64_t **steps, size_t *count, mnn_diag_t *d)
{
    *steps = NULL;
    *count = 0;
    int dfd = dup(fd);
    DIR *dp = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!dp) {
        int rc = mnn_fail(d, MNN_EIO, "%s: %s", root, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        return rc;
    }
    uint64_t step;
    size_t cap = 0;
    struct dirent *de;
    struct stat sb;
    while ((de = readdir(dp))) {
        if (parse_step_name(de->d_name, &step) < 0 ||
            fstatat(fd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        if (*count == cap) {
            uint64_t *ns = realloc(*steps, (cap = cap ? 2 * cap : 64) * sizeof *ns);
            if (!ns) {
                closedir(dp);
                free(*steps);
                *steps = NULL;
                return mnn_fail(d, MNN_ENOMEM, "out of memory");
            }
            *steps = ns;
        }
        (*steps)[(*count)++] = step;
    }
    closedir(dp);
    if (*count > 1)
        qsort(*steps, *count, sizeof **steps, cmp_u64);
    return 0;
}

int mnn_ckpt_root_newest(const char *root, uint64_t *step, mnn_diag_t *d)
{
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : mnn_fail(d, MNN_EIO, "%s: %s", root, strerror(errno));
    uint64_t *steps;
    size_t count;
    int rc = list_steps(fd, root, &steps, &count, d);
    close(fd);
    if (rc == 0 && count > 0) {
        *step = steps[count - 1];
        rc = 1;
    }
    free(steps);
    return rc;
}

int mnn_ckpt_prune(const char *root, size_t keep, size_t *removed, mnn_diag_t *d)
{
    *removed = 0;
    if (keep == 0)
        return 0;
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return mnn_fail(d, MNN_EIO, "%s: %s", root, strerror(errno));
    char target[256] = "";
    ssize_t n = readlinkat(fd, "latest", target, sizeof target - 1);
    if (n > 0)
        target[n] = 0;
    uint64_t *steps;
    size_t count;
    int rc = list_steps(fd, root, &steps, &count, d);
    for (size_t i = 0; i + keep < count && rc == 0; i++) {
        char name[32], doomed[48];
        mnn_ckpt_step_name(name, sizeof name, steps[i]);
        if (!strcmp(name, target))
            continue;
        /* renamed out of the way first: a crash halfway through the removal
         * leaves a .tmp- leftover, never a damaged step-N */
        snprintf(doomed, sizeof doomed, ".tmp-del-%s", name);
        if (renameat(fd, name, fd, doomed) != 0 || mnn_remove_at(fd, doomed) < 0)
            rc = mnn_fail(d, MNN_EIO, "%s/%s: cannot remove: %s", root, name, strerror(errno));
        else
            ++*removed;
    }
    free(steps);
    close(fd);
    return rc;
}

/* Copies one file, hashing what it reads; fsyncs the copy. */
static int copy_file(const char *from, const char *to, const mnn_manifest_file_t *want,
                     mnn_diag_t *d)
{
    int in = open(from, O_RDONLY | O_CLOEXEC), out = -1, rc = MNN_EIO;
    char *buf = malloc(1 << 20);
    mnn_hash_t *h = mnn_hash_new();
    uint64_t total = 0;
    if (!buf || !h) {
        rc = MNN_ENOMEM;
        goto out;
    }
    if (in < 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", from, strerror(errno));
        goto out;
    }
    if ((out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", to, strerror(errno));
        goto out;
    }
    mnn_hash_reset(h);
    for (;;) {
        ssize_t r = read(in, buf, 1 << 20);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = mnn_fail(d, MNN_EIO, "%s: %s", from, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        if (want)
            mnn_hash_update(h, buf, (size_t)r);
        total += (uint64_t)r;
        for (ssize_t done = 0; done < r;) {
            ssize_t w = write(out, buf + done, (size_t)(r - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = mnn_fail(d, MNN_EIO, "%s: %s", to, strerror(errno));
                goto out;
            }
            done += w;
        }
    }
    if (want) {
        char hex[17];
        mnn_hash_hex(mnn_hash_digest(h), hex);
        if (total != want->bytes || strcmp(hex, want->xxh3)) {
            rc = mnn_fail(d, MNN_ECORRUPT, "%s: does not match the manifest", from);
            goto out;
        }
    }
    if (fsync(out) != 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: fsync: %s", to, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (out >= 0 && close(out) != 0 && rc == 0)
        rc = mnn_fail(d, MNN_EIO, "%s: %s", to, strerror(errno));
    if (in >= 0)
        close(in);
    free(buf);
    if (h)
        mnn_hash_free(h);
    return rc;
}

int mnn_ckpt_copy(const char *src, const char *dst, mnn_diag_t *d)
{
    mnn_manifest_t mf;
    char *real = NULL, *dcopy = strdup(dst), *bcopy = strdup(dst), *tmp = NULL;
    int rc = MNN_ENOMEM;
    struct stat sb;
    if (!dcopy || !bcopy)
        goto out_nomf;
    if (lstat(dst, &sb) == 0) {
        rc = mnn_fail(d, MNN_EEXIST, "%s: already exists", dst);
        goto out_nomf;
    }
    if ((rc = mnn_manifest_load(&mf, src, &real, d)) < 0)
        goto out_nomf;
    const char *pdir = dirname(dcopy), *base = basename(bcopy);
    size_t n = strlen(pdir) + strlen(base) + 8;
    rc = MNN_ENOMEM;
    if (!(tmp = malloc(n)))
        goto out;
    snprintf(tmp, n, "%s/.tmp-%s", pdir, base);
    mnn_remove_tree(tmp);
    if (mkdir(tmp, 0755) != 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    rc = 0;
    for (size_t i = 0; i <= mf.nfiles && rc == 0; i++) {
        const char *name = i < mf.nfiles ? mf.files[i].name : "manifest.yaml";
        char *from = path_join(real, name), *to = path_join(tmp, name);
        rc = from && to ? copy_file(from, to, i < mf.nfiles ? &mf.files[i] : NULL, d) : MNN_ENOMEM;
        free(from);
        free(to);
    }
    if (rc == 0 && mnn_fsync_dir(tmp) < 0)
        rc = mnn_fail(d, MNN_EIO, "%s: fsync: %s", tmp, strerror(errno));
    if (rc == 0 && (rc = mnn_rename_noreplace(AT_FDCWD, tmp, AT_FDCWD, dst)) < 0)
        rc = mnn_fail(d, rc, "%s: %s", dst, rc == MNN_EEXIST ? "already exists" : strerror(errno));
    if (rc == 0 && mnn_fsync_dir(pdir) < 0)
        rc = mnn_fail(d, MNN_EIO, "%s: fsync: %s", pdir, strerror(errno));
    if (rc < 0)
        mnn_remove_tree(tmp);
out:
    mnn_manifest_free(&mf);
out_nomf:
    free(real);
    free(tmp);
    free(dcopy);
    free(bcopy);
    return rc;
}
