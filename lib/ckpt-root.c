/* ckpt-root.c - checkpoint roots: step-N names, the root's lock and the
 * crash leftovers removed when it is opened, the `latest` link swapped
 * atomically, the newest step, retention (--keep) that never follows a
 * link out of the root, and a verified copy of a checkpoint directory. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- checkpoint roots ----------------------------------------------------- */

void mnn_ckpt_step_name(char *buf, size_t size, uint64_t step)
{
    snprintf(buf, size, "step-%08" PRIu64, step);
}

void mnn_ckpt_cut_name(char *buf, size_t size, uint64_t step, uint64_t cut)
{
    if (cut)
        snprintf(buf, size, "step-%08" PRIu64 "-c%" PRIu64, step, cut);
    else
        mnn_ckpt_step_name(buf, size, step);
}

int mnn_ckpt_name_parse(const char *s, uint64_t *step, uint64_t *cut)
{
    char num[32], canon[64];
    *cut = 0;
    if (strncmp(s, "step-", 5))
        return -1;
    const char *dash = strchr(s + 5, '-');
    size_t n = dash ? (size_t)(dash - (s + 5)) : strlen(s + 5);
    if (n >= sizeof num)
        return -1;
    memcpy(num, s + 5, n);
    num[n] = 0;
    if (mnn_parse_u64(num, step) < 0 ||
        (dash && (dash[1] != 'c' || mnn_parse_u64(dash + 2, cut) < 0 || *cut == 0)))
        return -1;
    mnn_ckpt_cut_name(canon, sizeof canon, *step, *cut);
    return strcmp(canon, s) ? -1 : 0; /* only names we write */
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
    char *tmp = mnn_path_join(root, tmpname), *latest = mnn_path_join(root, "latest");
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

/* A checkpoint's place in its root's order: by step, then cut. */
typedef struct {
    uint64_t step, cut;
} ckname_t;

static int cmp_name(const void *a, const void *b)
{
    const ckname_t *x = a, *y = b;
    if (x->step != y->step)
        return x->step < y->step ? -1 : 1;
    return x->cut < y->cut ? -1 : x->cut > y->cut;
}

/* The names of root's checkpoint directories (open as fd), sorted: only
 * the names written here, and only directories: a link named step-N (to
 * anywhere) is not one.  *steps is to be freed. */
static int list_steps(int fd, const char *root, ckname_t **steps, size_t *count, mnn_diag_t *d)
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
    ckname_t nm;
    size_t cap = 0;
    struct dirent *de;
    struct stat sb;
    while ((de = readdir(dp))) {
        if (mnn_ckpt_name_parse(de->d_name, &nm.step, &nm.cut) < 0 ||
            fstatat(fd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        if (*count == cap) {
            ckname_t *ns = realloc(*steps, (cap = cap ? 2 * cap : 64) * sizeof *ns);
            if (!ns) {
                closedir(dp);
                free(*steps);
                *steps = NULL;
                return mnn_fail(d, MNN_ENOMEM, "out of memory");
            }
            *steps = ns;
        }
        (*steps)[(*count)++] = nm;
    }
    closedir(dp);
    if (*count > 1)
        qsort(*steps, *count, sizeof **steps, cmp_name);
    return 0;
}

int mnn_ckpt_root_newest(const char *root, uint64_t *step, mnn_diag_t *d)
{
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : mnn_fail(d, MNN_EIO, "%s: %s", root, strerror(errno));
    ckname_t *steps;
    size_t count;
    int rc = list_steps(fd, root, &steps, &count, d);
    close(fd);
    if (rc == 0 && count > 0) {
        *step = steps[count - 1].step;
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
    ckname_t *steps;
    size_t count;
    int rc = list_steps(fd, root, &steps, &count, d);
    for (size_t i = 0; i + keep < count && rc == 0; i++) {
        char name[64], doomed[80];
        mnn_ckpt_cut_name(name, sizeof name, steps[i].step, steps[i].cut);
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
        char *from = mnn_path_join(real, name), *to = mnn_path_join(tmp, name);
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
