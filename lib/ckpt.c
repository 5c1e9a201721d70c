/* ckpt.c - a checkpoint's contents: model.safetensors,
 * optimizer.safetensors, state.yaml and manifest.yaml written into a
 * temporary sibling directory, fsynced and renamed into place (never over
 * another unless asked); finite values checked before any is written; and
 * the model, optimizer and counters loaded back, each file checked against
 * the manifest as it is read (manifest.c). */
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
    for (size_t done = 0; s->fd >= 0 && done < n;) { /* fd -1: hash only */
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
    if (o && o->spec.prox > 0 && !o->anchor)
        return mnn_fail(d, MNN_EINVAL, "prox %g without its anchor (mnn_optim_anchor)",
                        (double)o->spec.prox);
    int rc = bad_values(m, m->params, 0, "", d);
    if (rc == 0 && o) {
        const int adam = o->spec.type == MNN_OPT_ADAM;
        if ((rc = bad_values(m, o->m1, 0, adam ? "exp_avg" : "momentum_buffer", d)) == 0 &&
            o->m2)
            rc = bad_values(m, o->m2, 1, "exp_avg_sq", d);
        if (rc == 0 && o->avg)
            rc = bad_values(m, o->avg, 0, "average", d);
        if (rc == 0 && o->anchor)
            rc = bad_values(m, o->anchor, 0, "prox_anchor", d);
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
 * the raw training weights when model.safetensors holds their average, and
 * prox's anchor (mnn_opt_buffers of them). */
#define OPT_BUFS 4
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
    if (o->spec.prox > 0) {
        suffix[k] = "prox_anchor";
        bufs[k++] = o->anchor;
    }
    return k;
}

static int write_optim(FILE *f, const mnn_model_t *m, const mnn_optim_t *o)
{
    /* up to OPT_BUFS buffers, a weight and a bias for every layer and exit head */
    size_t L = m->spec.nlayers, E = m->spec.nexits, n = 2 * OPT_BUFS * (L + E);
    mnn_st_tensor_t *t = calloc(n, sizeof *t);
    char (*names)[64] = calloc(n, sizeof *names);
    char step[32];
    int rc = MNN_ENOMEM;
    if (!t || !names)
        goto out;
    const int adam = o->spec.type == MNN_OPT_ADAM;
    const char *suffix[OPT_BUFS];
    float *bufs[OPT_BUFS];
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
    const char *meta[] = {"format", "pt", "optimizer",
                          mnn_opt_name(adam ? MNN_OPT_ADAM : MNN_OPT_SGD), "step", step, NULL};
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
    /* data-parallel training: written only when there was some, so that a
     * training on one process writes what it always wrote */
    if (st->ranks > 1 || st->shards > 1)
        fprintf(f, "ranks: %u\nshards: %u\n", st->ranks ? st->ranks : 1,
                st->shards ? st->shards : 1);
    return ferror(f) ? MNN_EIO : 0;
}

static const char *const ckpt_files[] = {"model.safetensors", "optimizer.safetensors",
                                         "state.yaml"};
#define PENDING_FILE "pending.safetensors"

/* One file of a checkpoint to write: what goes into it. */
typedef enum { F_MODEL, F_OPTIM, F_STATE, F_PENDING, F_PART, F_SERVER } fkind_t;
typedef struct {
    char name[64];
    fkind_t kind;
    const mnn_stage_part_t *part; /* F_PART */
    uint64_t bytes;
    char hex[17];
} outfile_t;

/* The files of a checkpoint (with a cut's): at most 3 + 1 + its parts,
 * which a manifest must be able to list. */
_Static_assert(3 + 1 + (MNN_CUT_MAX_STAGES - 1) <= MNN_MANIFEST_MAX_FILES,
               "a manifest cannot list the files of the largest cut");
static size_t plan_files(const mnn_cut_ckpt_t *cut, const mnn_ckpt_writer_t *wr,
                         outfile_t *out)
{
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        snprintf(out[n].name, sizeof out[n].name, "%s", ckpt_files[i]);
        out[n++].kind = (fkind_t)i;
    }
    if (wr && wr->server) {
        snprintf(out[n].name, sizeof out[n].name, MNN_SERVER_FILE);
        out[n++].kind = F_SERVER;
    }
    if (cut && cut->pending) {
        snprintf(out[n].name, sizeof out[n].name, PENDING_FILE);
        out[n++].kind = F_PENDING;
    }
    for (uint32_t i = 0; cut && i < cut->self; i++) {
        snprintf(out[n].name, sizeof out[n].name, "stage-%" PRIu32 ".%s", cut->parts[i].index,
                 cut->parts[i].program);
        out[n].part = &cut->parts[i];
        out[n++].kind = F_PART;
    }
    return n;
}

static int write_pending(FILE *f, const mnn_model_t *m, const mnn_cut_ckpt_t *cut)
{
    char count[32];
    snprintf(count, sizeof count, "%zu", cut->pending);
    const mnn_st_tensor_t t[2] = {
        {"x", 0, 2, {cut->pending, m->spec.input}, cut->px},
        {"y", 0, 1, {cut->pending, 0}, cut->py},
    };
    const char *meta[] = {"format", "pt", "records", count, NULL};
    return mnn_st_write(f, t, 2, meta);
}

static int write_file(FILE *f, const outfile_t *of, const mnn_model_t *m, const mnn_optim_t *o,
                      const mnn_train_state_t *st, const mnn_cut_ckpt_t *cut,
                      const mnn_ckpt_writer_t *wr)
{
    switch (of->kind) {
    case F_MODEL: return wr ? wr->model(f, wr->ctx) : write_model(f, m, o);
    case F_OPTIM: return wr ? wr->optim(f, wr->ctx) : write_optim(f, m, o);
    case F_STATE: return write_state(f, st);
    case F_PENDING: return write_pending(f, m, cut);
    case F_SERVER: return wr->server(f, wr->ctx);
    case F_PART:
        if (of->part->bytes && fwrite(of->part->data, 1, of->part->bytes, f) != of->part->bytes)
            return MNN_EIO;
        return 0;
    }
    return MNN_EINVAL;
}

/* A cut that mnn_ckpt_write_cut can write: its parts in stage order, each
 * program a plain name, within the bounds every reader keeps. */
static int check_cut(const mnn_cut_ckpt_t *cut, const mnn_model_t *m, mnn_diag_t *d)
{
    if (!cut)
        return 0;
    if (cut->id == 0 || cut->self >= MNN_CUT_MAX_STAGES || !cut->self_program ||
        !mnn_plain_program(cut->self_program) || cut->pending >= m->spec.batch ||
        (cut->pending && (!cut->px || !cut->py)))
        return mnn_fail(d, MNN_EINVAL, "an impossible cut (id %" PRIu64 ", stage %" PRIu32
                        ", %zu pending records)", cut->id, cut->self, cut->pending);
    for (uint32_t i = 0; i < cut->self; i++) {
        const mnn_stage_part_t *p = &cut->parts[i];
        if (p->index != i || !memchr(p->program, 0, sizeof p->program) ||
            !mnn_plain_program(p->program) || p->bytes > MNN_CUT_MAX_PART)
            return mnn_fail(d, MNN_EINVAL, "cut %" PRIu64 ": stage %" PRIu32 "'s part is not "
                            "one a checkpoint can hold", cut->id, i);
    }
    return 0;
}

static int hex16(const char *s)
{
    return strnlen(s, 17) == 16 && strspn(s, "0123456789abcdef") == 16;
}

/* Lineage a reader takes: a base's hash, a merge's checkpoints. */
static int check_lineage(const mnn_train_state_t *st, mnn_diag_t *d)
{
    if (st->base.round && (!hex16(st->base.xxh3) || st->base.records_seen > st->records_seen ||
                           st->base.step > st->step))
        return mnn_fail(d, MNN_EINVAL, "a base whose manifest_xxh3 is not 16 hex digits, or "
                        "with more records or steps than the checkpoint");
    if (!st->round)
        return st->nmerged ? mnn_fail(d, MNN_EINVAL, "merged checkpoints without a round") : 0;
    if (st->nmerged < 1 || st->nmerged > MNN_MERGE_MAX || !st->merged)
        return mnn_fail(d, MNN_EINVAL, "a round of %zu checkpoints", st->nmerged);
    for (size_t i = 0; i < st->nmerged; i++)
        if (!st->merged[i].source || !hex16(st->merged[i].xxh3) ||
            !isfinite(st->merged[i].weight) || st->merged[i].weight < 0)
            return mnn_fail(d, MNN_EINVAL, "merged checkpoint %zu: no source, no hash or a "
                            "bad weight", i + 1);
    return 0;
}

static void put_quoted(FILE *f, const char *s)
{
    fputc('"', f);
    for (const char *p = s; *p; p++)
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            fprintf(f, "\\x%02x", (unsigned char)*p);
        else
            fputc(*p, f);
    fputc('"', f);
}

static int write_manifest(const char *tmp, const mnn_spec_t *spec,
                          const mnn_train_state_t *st, const char *parent,
                          int64_t created, const outfile_t *files, size_t nfiles,
                          const mnn_cut_ckpt_t *cut, mnn_diag_t *d)
{
    char *path = mnn_path_join(tmp, "manifest.yaml"), hex[17];
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
        fputs("parent: ", f);
        put_quoted(f, parent);
        fputc('\n', f);
    } else
        fputs("parent: null\n", f);
    if (st->base.round)
        fprintf(f, "base: {round: %" PRIu32 ", manifest_xxh3: %s, records_seen: %" PRIu64
                ", step: %" PRIu64 "}\n", st->base.round, st->base.xxh3,
                st->base.records_seen, st->base.step);
    if (st->round) {
        /* a merge: its round and every checkpoint it took, with its weight */
        fprintf(f, "round: %" PRIu32 "\nmerged:\n", st->round);
        for (size_t i = 0; i < st->nmerged; i++) {
            const mnn_merged_t *p = &st->merged[i];
            fputs("  - {source: ", f);
            put_quoted(f, p->source);
            fprintf(f, ", manifest_xxh3: %s, records: %" PRIu64 ", weight: %.17g}\n", p->xxh3,
                    p->records, p->weight);
        }
    }
    if (cut) {
        /* a pipeline's cut: this stage, and every stage before it */
        fprintf(f, "cut: {id: %" PRIu64 ", stage: %" PRIu32 ", program: %s, pending: %zu}\n",
                cut->id, cut->self, cut->self_program, cut->pending);
        fputs(cut->self ? "stages:\n" : "stages: []\n", f);
        for (size_t i = 0; i < nfiles; i++)
            if (files[i].kind == F_PART)
                fprintf(f, "  - {index: %" PRIu32 ", program: %s, file: %s, bytes: %" PRIu64
                        ", xxh3: %s}\n", files[i].part->index, files[i].part->program,
                        files[i].name, files[i].bytes, files[i].hex);
    }
    fputs("model:\n", f);
    mnn_spec_write(spec, f, 2);
    fputs("files:\n", f);
    for (size_t i = 0; i < nfiles; i++)
        fprintf(f, "  - {name: %s, bytes: %" PRIu64 ", xxh3: %s}\n", files[i].name,
                files[i].bytes, files[i].hex);
    /* the last line: the hash of every byte before it */
    int rc = fflush(f) == 0 ? 0 : MNN_EIO;
    fprintf(f, MANIFEST_SEAL "%016llx\n", (unsigned long long)mnn_hash_digest(sink.h));
    int crc = close_synced(f, &sink, rc, hex);
    if (rc == 0 && crc < 0)
        rc = mnn_fail(d, MNN_EIO, "%s: %s", path, strerror(errno));
    free(path);
    return rc;
}

/* The bytes mnn_ckpt_write_cut would write into one file: hashed, dropped. */
static int hash_file(const outfile_t *of, const mnn_model_t *m, const mnn_optim_t *o,
                     const mnn_train_state_t *st, const mnn_cut_ckpt_t *cut, char hex[17],
                     uint64_t *bytes)
{
    hsink_t sink = {.fd = -1, .h = mnn_hash_new()};
    cookie_io_functions_t io = {.write = hsink_write};
    FILE *f = sink.h ? fopencookie(&sink, "w", io) : NULL;
    if (!f) {
        mnn_hash_free(sink.h);
        return MNN_ENOMEM;
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    int rc = write_file(f, of, m, o, st, cut, NULL);
    if (fclose(f) != 0 && rc == 0)
        rc = MNN_EIO;
    mnn_hash_hex(mnn_hash_digest(sink.h), hex);
    *bytes = sink.bytes;
    mnn_hash_free(sink.h);
    return rc;
}

int mnn_ckpt_same_cut(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                      const mnn_train_state_t *st, const mnn_cut_ckpt_t *cut, mnn_diag_t *d)
{
    mnn_manifest_t theirs = {0};
    outfile_t *files = NULL;
    int rc = mnn_manifest_load(&theirs, dir, NULL, d);
    if (rc < 0)
        return rc;
    if ((rc = mnn_manifest_verify_dir(&theirs, dir, d)) < 0)
        goto out;
    if (!(files = calloc(4 + (cut ? cut->self : 0), sizeof *files))) {
        rc = mnn_fail(d, MNN_ENOMEM, "%s: out of memory", dir);
        goto out;
    }
    size_t n = plan_files(cut, NULL, files);
    /* a cut: committed by the same stage, too (the manifest says which) */
    int same = theirs.nfiles == n && theirs.cut == (cut ? cut->id : 0) &&
               (!cut || (theirs.cut_stage == cut->self && cut->self_program &&
                         !strcmp(theirs.cut_program, cut->self_program) &&
                         theirs.pending == cut->pending));
    for (size_t i = 0; i < n && same; i++) {
        char hex[17];
        uint64_t bytes;
        if ((rc = hash_file(&files[i], m, o, st, cut, hex, &bytes)) < 0) {
            rc = mnn_fail(d, rc, "%s: %s", dir, mnn_strerror(rc));
            goto out;
        }
        const mnn_manifest_file_t *fl = mnn_manifest_find(&theirs, files[i].name);
        same = fl && fl->bytes == bytes && !strcmp(fl->xxh3, hex);
    }
    if (!same)
        rc = mnn_fail(d, MNN_EEXIST, "%s exists and holds another training's state; not "
                      "replacing it", dir);
out:
    free(files);
    mnn_manifest_free(&theirs);
    return rc;
}

int mnn_ckpt_same(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                  const mnn_train_state_t *st, mnn_diag_t *d)
{
    return mnn_ckpt_same_cut(dir, m, o, st, NULL, d);
}

int mnn_ckpt_write(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                   const mnn_train_state_t *st, const char *parent,
                   int64_t created, int replace, mnn_diag_t *d)
{
    return mnn_ckpt_write_cut(dir, m, o, st, parent, created, replace, NULL, d);
}

/* The checkpoint dir: its model and optimizer from m and o, or written by
 * wr (m, o and cut NULL), its state, a cut's files, the manifest. */
static int write_ckpt(const char *dir, const mnn_spec_t *spec, const mnn_model_t *m,
                      const mnn_optim_t *o, const mnn_ckpt_writer_t *wr,
                      const mnn_train_state_t *st, const char *parent, int64_t created,
                      int replace, const mnn_cut_ckpt_t *cut, mnn_diag_t *d)
{
    char *dcopy = strdup(dir), *bcopy = strdup(dir), *tmp = NULL;
    outfile_t *files = calloc(4 + (cut ? cut->self : 0), sizeof *files);
    int rc = MNN_ENOMEM;
    struct stat sb;
    if (!dcopy || !bcopy || !files)
        goto out;
    if ((rc = check_cut(cut, m, d)) < 0 || (rc = check_lineage(st, d)) < 0)
        goto out;
    /* no reader accepts a value that is not finite: none is written (a
     * writer's files are its own to check) */
    if (m && (rc = mnn_state_check(m, o, d)) < 0) {
        char what[PATH_MAX + 16];
        snprintf(what, sizeof what, "%s: not written", dir);
        rc = mnn_fail_prefix(d, MNN_EINVAL, what);
        goto out;
    }
    for (size_t i = 0; cut && i < cut->pending * (m->spec.input + 1); i++) {
        const int label = i >= cut->pending * m->spec.input;
        const float v = label ? cut->py[i - cut->pending * m->spec.input] : cut->px[i];
        if (!isfinite(v)) {
            rc = mnn_fail(d, MNN_EINVAL, "%s: not written: a pending record's %s is not "
                          "finite", dir, label ? "label" : "feature");
            goto out;
        }
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
    rc = MNN_ENOMEM;
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
    const size_t nfiles = plan_files(cut, wr, files);
    for (size_t i = 0; i < nfiles; i++) {
        char *fp = mnn_path_join(tmp, files[i].name);
        hsink_t sink;
        FILE *f = fp ? create(fp, &sink) : NULL;
        if (!f) {
            rc = mnn_fail(d, MNN_EIO, "%s: %s", fp ? fp : tmp, strerror(errno));
            free(fp);
            goto fail;
        }
        rc = write_file(f, &files[i], m, o, st, cut, wr);
        rc = close_synced(f, &sink, rc, files[i].hex);
        files[i].bytes = sink.bytes;
        if (rc < 0) {
            rc = mnn_fail(d, rc, "%s: %s", fp, rc == MNN_EIO ? strerror(errno) : mnn_strerror(rc));
            free(fp);
            goto fail;
        }
        free(fp);
    }
    if ((rc = write_manifest(tmp, spec, st, parent, created, files, nfiles, cut, d)) < 0)
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
        char *probe = mnn_path_join(tmp, "manifest.yaml");
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
    free(files);
    free(tmp);
    free(dcopy);
    free(bcopy);
    return rc;
}

int mnn_ckpt_write_cut(const char *dir, const mnn_model_t *m, const mnn_optim_t *o,
                       const mnn_train_state_t *st, const char *parent,
                       int64_t created, int replace, const mnn_cut_ckpt_t *cut, mnn_diag_t *d)
{
    return write_ckpt(dir, &m->spec, m, o, NULL, st, parent, created, replace, cut, d);
}

int mnn_ckpt_write_with(const char *dir, const mnn_spec_t *spec, const mnn_ckpt_writer_t *wr,
                        const mnn_train_state_t *st, const char *parent, int64_t created,
                        mnn_diag_t *d)
{
    if (!wr || !wr->model || !wr->optim)
        return mnn_fail(d, MNN_EINVAL, "%s: no writer of its tensors", dir);
    if (wr->server && !st->round)
        return mnn_fail(d, MNN_EINVAL, "%s: %s is a merge's: a checkpoint with no round has "
                        "none", dir, MNN_SERVER_FILE);
    return write_ckpt(dir, spec, NULL, NULL, wr, st, parent, created, 0, NULL, d);
}

/* ---- reading ------------------------------------------------------------ */

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
    const char *suffix[OPT_BUFS];
    float *bufs[OPT_BUFS];
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
    /* optional: absent for a training on one process */
    const char *const par[] = {"ranks", "shards"};
    uint32_t *const pv[] = {&st->ranks, &st->shards};
    for (int i = 0; i < 2; i++) {
        uint64_t v = 1;
        if ((n = mnn_yaml_get(&y, r, par[i])) && mnn_yaml_u64(&y, n, par[i], &v, d) < 0)
            goto bad;
        if (v < 1 || v > MNN_MAX_RANKS) {
            rc = mnn_yaml_fail(&y, n, d, MNN_EFORMAT, "%s: %" PRIu64 " is not in 1..%u", par[i], v,
                               (unsigned)MNN_MAX_RANKS);
            goto bad;
        }
        *pv[i] = (uint32_t)v;
    }
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

int mnn_ckpt_load_state(const char *dir, const mnn_manifest_t *mf, mnn_train_state_t *st,
                        mnn_diag_t *d)
{
    char *buf = NULL, *path = NULL;
    size_t len;
    int rc = mnn_manifest_read(dir, mnn_manifest_find(mf, ckpt_files[2]), &buf, &len, &path, d);
    if (rc == 0)
        rc = mnn_state_parse(st, buf, len, path, d);
    if (rc == 0 && (st->step != mf->step || st->records_seen != mf->records_seen))
        rc = mnn_fail(d, MNN_ECORRUPT, "%s: state.yaml (step %" PRIu64 ", records_seen %" PRIu64
                      ") and the manifest (step %" PRIu64 ", records_seen %" PRIu64
                      ") disagree", dir, st->step, st->records_seen, mf->step,
                      mf->records_seen);
    free(buf);
    free(path);
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
    if ((rc = mnn_manifest_read(real, mnn_manifest_find(&mf, ckpt_files[0]), &buf, &len, &path, d)) < 0)
        goto out;
    rc = load_weights(m, buf, len, path, d);
    buf = NULL; /* the parser owns it */
    free(path);
    path = NULL;
    if (rc < 0)
        goto out;
    if (o) {
        if ((rc = mnn_manifest_read(real, mnn_manifest_find(&mf, ckpt_files[1]), &buf, &len, &path,
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
    if (st && (rc = mnn_ckpt_load_state(real, &mf, st, d)) < 0)
        goto out;
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


/* ---- cuts ------------------------------------------------------------------ */

int mnn_ckpt_stage_read(const char *dir, uint32_t index, const char *program, char **buf,
                        size_t *len, uint64_t *cut, mnn_diag_t *d)
{
    mnn_manifest_t mf;
    char *real = NULL, *path = NULL;
    *buf = NULL;
    *len = 0;
    int rc = mnn_manifest_load(&mf, dir, &real, d);
    if (rc < 0)
        return rc;
    if (!mf.cut)
        rc = mnn_fail(d, MNN_ESHAPE, "%s: not a pipeline's cut (a checkpoint of sgd-train "
                      "alone): it holds no state of %s", real, program);
    else if (index == mf.cut_stage)
        rc = mnn_fail(d, MNN_ESHAPE, "%s: stage %" PRIu32 " of cut %" PRIu64 " is %s, the one "
                      "that committed it, not %s: a pipeline of another shape", real, index,
                      mf.cut, mf.cut_program, program);
    else if (index > mf.cut_stage)
        rc = mnn_fail(d, MNN_ESHAPE, "%s: cut %" PRIu64 " has stages 0 to %" PRIu32 " (%s last); "
                      "%s is stage %" PRIu32 " here: a pipeline of another shape", real, mf.cut,
                      mf.cut_stage, mf.cut_program, program, index);
    else if (strcmp(mf.stages[index].program, program))
        rc = mnn_fail(d, MNN_ESHAPE, "%s: stage %" PRIu32 " of cut %" PRIu64 " is %s, not %s: "
                      "a pipeline of another shape", real, index, mf.cut,
                      mf.stages[index].program, program);
    else {
        rc = mnn_manifest_read(real, mnn_manifest_find(&mf, mf.stages[index].file), buf, len,
                               &path, d);
        *cut = mf.cut;
    }
    free(path);
    free(real);
    mnn_manifest_free(&mf);
    return rc;
}

int mnn_ckpt_pending_read(const char *dir, size_t nfeat, float **x, float **y, size_t *n,
                          mnn_diag_t *d)
{
    mnn_manifest_t mf;
    char *real = NULL, *path = NULL, *buf = NULL;
    size_t len;
    *x = *y = NULL;
    *n = 0;
    int rc = mnn_manifest_load(&mf, dir, &real, d);
    if (rc < 0)
        return rc;
    if (!mf.pending)
        goto out;
    if (nfeat != mf.spec.input) {
        rc = mnn_fail(d, MNN_ESHAPE, "%s: pending records of %zu features, not %zu", real,
                      mf.spec.input, nfeat);
        goto out;
    }
    mnn_st_file_t *f;
    if ((rc = mnn_manifest_read(real, mnn_manifest_find(&mf, PENDING_FILE), &buf, &len, &path,
                                d)) < 0)
        goto out;
    rc = mnn_st_parse(&f, buf, len, path, d);
    buf = NULL; /* the parser owns it, also on error */
    if (rc < 0)
        goto out;
    const size_t k = (size_t)mf.pending, sx[2] = {k, nfeat}, sy[1] = {k};
    const void *px, *py;
    if ((rc = mnn_st_get(f, "x", 0, 2, sx, &px, d)) == 0 &&
        (rc = mnn_st_get(f, "y", 0, 1, sy, &py, d)) == 0) {
        *x = mnn_calloc_aligned(k * nfeat, sizeof(float));
        *y = mnn_calloc_aligned(k, sizeof(float));
        if (!*x || !*y) {
            rc = mnn_fail(d, MNN_ENOMEM, "out of memory");
        } else {
            memcpy(*x, px, k * nfeat * sizeof(float));
            memcpy(*y, py, k * sizeof(float));
            *n = k;
            for (size_t i = 0; i < k * nfeat && rc == 0; i++)
                if (!isfinite((*x)[i]))
                    rc = mnn_fail(d, MNN_ECORRUPT, "%s: x[%zu] is not finite", path, i);
            for (size_t i = 0; i < k && rc == 0; i++)
                if (!isfinite((*y)[i]))
                    rc = mnn_fail(d, MNN_ECORRUPT, "%s: y[%zu] is not finite", path, i);
        }
    }
    mnn_st_close(f);
    if (rc < 0) {
        mnn_free(*x);
        mnn_free(*y);
        *x = *y = NULL;
        *n = 0;
    }
out:
    free(buf);
    free(path);
    free(real);
    mnn_manifest_free(&mf);
    return rc;
}
