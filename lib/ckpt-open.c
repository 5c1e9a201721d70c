/* ckpt-open.c - the one way a program opens a checkpoint it was given: a
 * checkpoint directory, a root whose `latest` names one, a .tar.zst archive
 * (or stdin), or a directory that ckpt-ship received into (its `latest`
 * names an archive).  An archive is unpacked, every file checked as it
 * comes; a directory's manifest is read (its seal checked) and, on request,
 * every file hashed.  The caller gets a checkpoint directory either way. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int mnn_ckpt_resolve(const char *src, char **path, mnn_diag_t *d)
{
    char **archive = path; /* as it is named once it is known to be one */
    struct stat sb;
    *archive = NULL;
    if (!strcmp(src, "-"))
        return (*archive = strdup(src)) ? 1 : MNN_ENOMEM;
    if (stat(src, &sb) != 0)
        return mnn_fail(d, MNN_EIO, "%s: %s", src, strerror(errno));
    /* anything but a directory is read as an archive: a file, a pipe, a
     * device; the archive reader says what is wrong with it */
    if (!S_ISDIR(sb.st_mode))
        return (*archive = strdup(src)) ? 1 : MNN_ENOMEM;
    /* a directory without a manifest whose latest is an archive: what
     * ckpt-ship received */
    char *p;
    if (!(p = mnn_path_join(src, "manifest.yaml")))
        return MNN_ENOMEM;
    int here = access(p, F_OK) == 0;
    free(p);
    if (here)
        return (*archive = strdup(src)) ? 0 : MNN_ENOMEM;
    if (!(p = mnn_path_join(src, "latest")))
        return MNN_ENOMEM;
    if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) {
        *archive = p;
        return 1;
    }
    free(p);
    return (*archive = strdup(src)) ? 0 : MNN_ENOMEM;
}

/* A new directory under base (NULL: $TMPDIR, else /tmp) into *out. */
static int make_tmp(const char *base, char **out, mnn_diag_t *d)
{
    if (!base || !*base)
        base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    int rc = 0;
    if (!(*out = mnn_path_join(base, "mini-nn-ckpt.XXXXXX")))
        return MNN_ENOMEM;
    if (!mkdtemp(*out)) {
        rc = mnn_fail(d, MNN_EIO, "%s: cannot make a directory to unpack into: %s", base,
                      strerror(errno));
        free(*out);
        *out = NULL;
    }
    return rc;
}

static int open_archive(mnn_ckpt_t *ck, const char *workdir, unsigned flags, mnn_diag_t *d)
{
    const char *path = ck->src;
    const int in = !strcmp(path, "-");
    int fd = in ? STDIN_FILENO : open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return mnn_fail(d, MNN_EIO, "%s: %s", path, strerror(errno));
    const char *target = NULL;
    int rc = 0;
    if (flags & MNN_OPEN_KEEP)
        target = workdir && *workdir ? workdir : ".";
    else if (!(flags & MNN_OPEN_NO_EXTRACT) && (rc = make_tmp(workdir, &ck->tmp, d)) == 0)
        target = ck->tmp;
    if (rc == 0)
        rc = mnn_ckpt_unpack(fd, in ? "stdin" : path, target, target ? &ck->dir : NULL, &ck->mf, d);
    if (!in)
        close(fd);
    if (rc == 0)
        ck->have_mf = ck->verified = 1; /* every file was checked as it was unpacked */
    return rc;
}

int mnn_ckpt_open(mnn_ckpt_t *ck, const char *src, const char *workdir, unsigned flags,
                  mnn_diag_t *d)
{
    memset(ck, 0, sizeof *ck);
    int rc = mnn_ckpt_resolve(src, &ck->src, d);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        ck->archive = 1;
        rc = open_archive(ck, workdir, flags, d);
    } else if ((rc = mnn_manifest_load(&ck->mf, src, &ck->dir, d)) == 0) {
        ck->have_mf = 1;
        if (flags & MNN_OPEN_VERIFY)
            rc = mnn_ckpt_verify(ck, d);
    }
    if (rc < 0)
        mnn_ckpt_close(ck);
    return rc;
}

int mnn_ckpt_verify(mnn_ckpt_t *ck, mnn_diag_t *d)
{
    if (ck->verified)
        return 0;
    int rc = mnn_manifest_verify_dir(&ck->mf, ck->dir, d);
    if (rc == 0)
        ck->verified = 1;
    return rc;
}

void mnn_ckpt_close(mnn_ckpt_t *ck)
{
    if (ck->have_mf)
        mnn_manifest_free(&ck->mf);
    if (ck->tmp)
        mnn_remove_tree(ck->tmp);
    free(ck->tmp);
    free(ck->dir);
    free(ck->src);
    memset(ck, 0, sizeof *ck);
}
