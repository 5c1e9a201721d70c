/* manifest.c - manifest.yaml: its parser (bounded, every field checked, the
 * seal on its last line that hashes every byte before it), how a
 * checkpoint directory or a root's latest is found, and the check of every
 * file it lists (a plain file, its size, its XXH3), reading a listed file
 * once for both the check and its use. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int mnn_plain_program(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n < MNN_CUT_PROGRAM_MAX &&
           strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-_") == n;
}

/* cut: {id, stage, program, pending} and stages: [{index, program, file,
 * bytes, xxh3}], each upstream stage once and in order, its file listed in
 * files with the same size and hash. */
static int is_hex16(const char *s)
{
    return strlen(s) == 16 && strspn(s, "0123456789abcdef") == 16;
}

/* A round's number: 1 to UINT32_MAX. */
static int round_number(mnn_yaml_t *y, yaml_node_t *n, yaml_node_t *in, const char *what,
                        uint32_t *out, mnn_diag_t *d)
{
    uint64_t v;
    if (!n || mnn_yaml_u64(y, n, what, &v, NULL) < 0 || v == 0 || v > UINT32_MAX)
        return mnn_yaml_fail(y, n ? n : in, d, MNN_EFORMAT, "%s must be a round from 1 to %" PRIu32,
                             what, UINT32_MAX);
    *out = (uint32_t)v;
    return 0;
}

/* Lineage: `base: {round, manifest_xxh3, records_seen, step}` of a
 * training that descends from a merge; `round: R` and `merged: [...]` of a
 * merge. */
static int manifest_lineage(mnn_manifest_t *mf, mnn_yaml_t *y, yaml_node_t *root,
                            mnn_diag_t *d)
{
    int rc;
    const char *str;
    yaml_node_t *b = mnn_yaml_get(y, root, "base"), *n;
    if (b) {
        if ((rc = mnn_yaml_expect(y, b, YAML_MAPPING_NODE, "base", d)) < 0 ||
            (rc = round_number(y, mnn_yaml_get(y, b, "round"), b, "base: round",
                               &mf->base.round, d)) < 0)
            return rc;
        if (!(n = mnn_yaml_get(y, b, "manifest_xxh3")) ||
            mnn_yaml_str(y, n, "manifest_xxh3", &str, NULL) < 0 || !is_hex16(str))
            return mnn_yaml_fail(y, b, d, MNN_EFORMAT, "base: manifest_xxh3 must be 16 hex "
                                 "digits");
        snprintf(mf->base.xxh3, sizeof mf->base.xxh3, "%s", str);
        if (!(n = mnn_yaml_get(y, b, "records_seen")) ||
            (rc = mnn_yaml_u64(y, n, "records_seen", &mf->base.records_seen, d)) < 0 ||
            !(n = mnn_yaml_get(y, b, "step")) ||
            (rc = mnn_yaml_u64(y, n, "step", &mf->base.step, d)) < 0)
            return mnn_yaml_fail(y, b, d, MNN_EFORMAT, "base: records_seen and step are "
                                 "required");
        if (mf->base.records_seen > mf->records_seen || mf->base.step > mf->step)
            return mnn_yaml_fail(y, b, d, MNN_EFORMAT, "base: more records or steps than the "
                                 "checkpoint's own");
    }
    if (!(n = mnn_yaml_get(y, root, "round"))) {
        if (mnn_yaml_get(y, root, "merged"))
            return mnn_yaml_fail(y, root, d, MNN_EFORMAT, "merged without a round");
        return 0;
    }
    if ((rc = round_number(y, n, root, "round", &mf->round, d)) < 0)
        return rc;
    yaml_node_t *m = mnn_yaml_get(y, root, "merged");
    if (!m || (rc = mnn_yaml_expect(y, m, YAML_SEQUENCE_NODE, "merged", d)) < 0)
        return m ? rc : mnn_yaml_fail(y, root, d, MNN_EFORMAT, "a round without its merged "
                                      "list");
    size_t k = (size_t)(m->data.sequence.items.top - m->data.sequence.items.start);
    if (k < 1 || k > MNN_MERGE_MAX)
        return mnn_yaml_fail(y, m, d, MNN_EFORMAT, "merged: from 1 to %d checkpoints",
                             MNN_MERGE_MAX);
    if (!(mf->merged_xxh3 = calloc(k, sizeof *mf->merged_xxh3)))
        return mnn_yaml_fail(y, m, d, MNN_ENOMEM, "merged: out of memory");
    for (size_t i = 0; i < k; i++) {
        yaml_node_t *e = mnn_yaml_node(y, m->data.sequence.items.start[i]), *x;
        uint64_t records;
        double w;
        if ((rc = mnn_yaml_expect(y, e, YAML_MAPPING_NODE, "merged", d)) < 0)
            return rc;
        if (!(x = mnn_yaml_get(y, e, "source")) || mnn_yaml_str(y, x, "source", &str, NULL) < 0 ||
            !(x = mnn_yaml_get(y, e, "manifest_xxh3")) ||
            mnn_yaml_str(y, x, "manifest_xxh3", &str, NULL) < 0 || !is_hex16(str) ||
            !(x = mnn_yaml_get(y, e, "records")) || mnn_yaml_u64(y, x, "records", &records, NULL) < 0 ||
            !(x = mnn_yaml_get(y, e, "weight")) || mnn_yaml_f64(y, x, "weight", &w, NULL) < 0 ||
            !isfinite(w) || w < 0)
            return mnn_yaml_fail(y, e, d, MNN_EFORMAT, "merged: each needs source, "
                                 "manifest_xxh3 (16 hex digits), records and a weight >= 0");
        /* str: the last string read above, the manifest_xxh3 (16 hex digits) */
        memcpy(mf->merged_xxh3[i], str, 17);
    }
    mf->nmerged = k;
    return 0;
}

static int manifest_cut(mnn_manifest_t *mf, mnn_yaml_t *y, yaml_node_t *root, yaml_node_t *cut,
                        mnn_diag_t *d)
{
    int rc;
    uint64_t v;
    const char *str;
    yaml_node_t *n;
    if ((rc = mnn_yaml_expect(y, cut, YAML_MAPPING_NODE, "cut", d)) < 0)
        return rc;
    if (!(n = mnn_yaml_get(y, cut, "id")) || mnn_yaml_u64(y, n, "cut id", &mf->cut, d) < 0 ||
        mf->cut == 0)
        return mnn_yaml_fail(y, cut, d, MNN_EFORMAT, "cut: an id > 0 is required");
    if (!(n = mnn_yaml_get(y, cut, "stage")) || mnn_yaml_u64(y, n, "cut stage", &v, d) < 0 ||
        v >= MNN_CUT_MAX_STAGES)
        return mnn_yaml_fail(y, cut, d, MNN_EFORMAT, "cut: a stage below %d is required",
                             MNN_CUT_MAX_STAGES);
    mf->cut_stage = (uint32_t)v;
    if (!(n = mnn_yaml_get(y, cut, "program")) || mnn_yaml_str(y, n, "program", &str, d) < 0 ||
        !mnn_plain_program(str))
        return mnn_yaml_fail(y, cut, d, MNN_EFORMAT, "cut: a program name is required");
    snprintf(mf->cut_program, sizeof mf->cut_program, "%s", str);
    if (!(n = mnn_yaml_get(y, cut, "pending")) ||
        mnn_yaml_u64(y, n, "pending", &mf->pending, d) < 0 || mf->pending >= mf->spec.batch)
        return mnn_yaml_fail(y, cut, d, MNN_EFORMAT, "cut: pending must be a count of records "
                             "below the batch (%zu)", mf->spec.batch);
    yaml_node_t *st = mnn_yaml_get(y, root, "stages");
    if (!st || (rc = mnn_yaml_expect(y, st, YAML_SEQUENCE_NODE, "stages", d)) < 0)
        return st ? rc : mnn_yaml_fail(y, root, d, MNN_EFORMAT, "a cut without its stages list");
    size_t k = (size_t)(st->data.sequence.items.top - st->data.sequence.items.start);
    if (k != mf->cut_stage)
        return mnn_yaml_fail(y, st, d, MNN_EFORMAT, "%zu stages listed before stage %" PRIu32
                             " (stages 0 to %" PRIu32 " are required)", k, mf->cut_stage,
                             mf->cut_stage ? mf->cut_stage - 1 : 0);
    if (!(mf->stages = calloc(k ? k : 1, sizeof *mf->stages)))
        return MNN_ENOMEM;
    for (size_t i = 0; i < k; i++) {
        yaml_node_t *e = mnn_yaml_node(y, st->data.sequence.items.start[i]);
        struct mnn_manifest_stage *s = &mf->stages[i];
        const char *prog = "", *file = "", *hash = "";
        uint64_t bytes;
        yaml_node_t *ni = mnn_yaml_get(y, e, "index"), *np = mnn_yaml_get(y, e, "program"),
                    *nf = mnn_yaml_get(y, e, "file"), *nb = mnn_yaml_get(y, e, "bytes"),
                    *nh = mnn_yaml_get(y, e, "xxh3");
        if (!ni || !np || !nf || !nb || !nh)
            return mnn_yaml_fail(y, e, d, MNN_EFORMAT, "a stage needs index, program, file, "
                                 "bytes and xxh3");
        if ((rc = mnn_yaml_u64(y, ni, "index", &v, d)) < 0 ||
            (rc = mnn_yaml_str(y, np, "program", &prog, d)) < 0 ||
            (rc = mnn_yaml_str(y, nf, "file", &file, d)) < 0 ||
            (rc = mnn_yaml_u64(y, nb, "bytes", &bytes, d)) < 0 ||
            (rc = mnn_yaml_str(y, nh, "xxh3", &hash, d)) < 0)
            return rc;
        if (v != i)
            return mnn_yaml_fail(y, ni, d, MNN_EFORMAT, "stage %" PRIu64 " where stage %zu "
                                 "belongs", v, i);
        if (!mnn_plain_program(prog))
            return mnn_yaml_fail(y, np, d, MNN_EFORMAT, "program '%s' is not a plain name", prog);
        char want[64];
        snprintf(want, sizeof want, "stage-%zu.%s", i, prog);
        const mnn_manifest_file_t *f = mnn_manifest_find(mf, file);
        if (strcmp(file, want) || !f || f->bytes != bytes || strcmp(f->xxh3, hash))
            return mnn_yaml_fail(y, nf, d, MNN_EFORMAT, "stage %zu: its file must be %s, listed "
                                 "in files with the same bytes and xxh3", i, want);
        s->index = (uint32_t)i;
        snprintf(s->program, sizeof s->program, "%s", prog);
        snprintf(s->file, sizeof s->file, "%s", file);
    }
    mf->nstages = k;
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
    const uint64_t nbuf = mnn_opt_buffers(&s->opt);
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
    /* a cut's: its pending records, F32 (x, y), and the parts of its stages */
    const uint64_t dp = 4 * mf->pending * ((uint64_t)s->input + 1);
    const mnn_manifest_file_t *pf = mnn_manifest_find(mf, "pending.safetensors");
    if (mf->pending && !pf)
        return mnn_fail(d, MNN_EFORMAT, "%s: a cut of %" PRIu64 " pending records without "
                        "pending.safetensors", name, mf->pending);
    if (pf && (!mf->pending || pf->bytes < 8 + dp || pf->bytes > 8 + dp + 1024 + 512))
        return mnn_fail(d, MNN_ECORRUPT, "%s: pending.safetensors: %" PRIu64 " bytes, but the "
                        "cut's %" PRIu64 " pending records take %" PRIu64 " to %" PRIu64, name,
                        pf->bytes, mf->pending, 8 + dp, 8 + dp + 1536);
    /* a merge's: the server's momentum (ckpt-merge --server-momentum), one F32
     * vector for each weight, bias and raw weight of an averaging optimizer */
    const mnn_manifest_file_t *sf = mnn_manifest_find(mf, MNN_SERVER_FILE);
    const uint64_t nmoved = 1 + (s->opt.average > 0), ds = 4 * (uint64_t)np * nmoved;
    if (sf && (!mf->round || sf->bytes < 8 + ds || sf->bytes > 8 + ds + 1024 + 256 * 2 * L * nmoved))
        return mnn_fail(d, MNN_ECORRUPT, "%s: %s: %s", name, MNN_SERVER_FILE, !mf->round
                        ? "only a merge (a round) has one"
                        : "not the size of a momentum for each of the model's weights");
    for (size_t i = 0; i < mf->nfiles; i++) {
        const char *fn = mf->files[i].name;
        size_t k = 0;
        while (k < sizeof want / sizeof want[0] && strcmp(fn, want[k].file))
            k++;
        if (k < sizeof want / sizeof want[0] || (pf && !strcmp(fn, "pending.safetensors")) ||
            (sf && !strcmp(fn, MNN_SERVER_FILE)))
            continue;
        size_t j = 0;
        while (j < mf->nstages && strcmp(fn, mf->stages[j].file))
            j++;
        if (j == mf->nstages)
            return mnn_fail(d, MNN_EFORMAT, "%s: lists %s, not a file of a %s", name, fn,
                            CKPT_FORMAT);
        if (mf->files[i].bytes > MNN_CUT_MAX_PART)
            return mnn_fail(d, MNN_ELIMIT, "%s: %s: %" PRIu64 " bytes, more than a stage's "
                            "part may hold (%" PRIu64 ")", name, fn, mf->files[i].bytes,
                            (uint64_t)MNN_CUT_MAX_PART);
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
    if ((n = mnn_yaml_get(&y, root, "cut")) && (rc = manifest_cut(mf, &y, root, n, d)) < 0)
        goto fail;
    if ((rc = manifest_lineage(mf, &y, root, d)) < 0)
        goto fail;
    snprintf(mf->xxh3, sizeof mf->xxh3, "%.16s", text + len - SEAL_LINE + sizeof MANIFEST_SEAL - 1);
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
    free(mf->merged_xxh3);
    free(mf->files);
    free(mf->stages);
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
    char *mpath = mnn_path_join(dir, "manifest.yaml");
    if (!mpath)
        return MNN_ENOMEM;
    int here = access(mpath, F_OK) == 0;
    free(mpath);
    if (here)
        return (*out = strdup(dir)) ? 0 : MNN_ENOMEM;
    char *latest = mnn_path_join(dir, "latest");
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
    if ((mpath = mnn_path_join(rdir, "manifest.yaml")) &&
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
        char *fp = mnn_path_join(dir, f->name), hex[17];
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

/* Reads dir/f->name whole and checks it against the manifest: the bytes
 * handed back are the bytes the hash covers, read once. */
int mnn_manifest_read(const char *dir, const mnn_manifest_file_t *f, char **buf, size_t *len,
                      char **path, mnn_diag_t *d)
{
    *buf = NULL;
    if (!(*path = mnn_path_join(dir, f->name)))
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


void mnn_manifest_child_base(const mnn_manifest_t *mf, mnn_base_t *base)
{
    if (!mf->round) {
        *base = mf->base;
        return;
    }
    memset(base, 0, sizeof *base);
    base->round = mf->round;
    snprintf(base->xxh3, sizeof base->xxh3, "%s", mf->xxh3);
    base->records_seen = mf->records_seen;
    base->step = mf->step;
}
