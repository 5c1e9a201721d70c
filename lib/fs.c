/* fs.c - the file-system operations every module and program shares: whole
 * writes and capped whole reads, fsync of a directory, removal of a tree that
 * never follows a link, rename without replace, a directory lock, and an
 * atomic file write (temp file, fsync, rename, fsync of the directory, as
 * Redis's rdbSave, with one error path that cleans up). */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

char *mnn_path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int mnn_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return MNN_EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int mnn_read_fd(int fd, const char *name, size_t max, char **out, size_t *len, mnn_diag_t *d)
{
    size_t cap = 0, got = 0;
    char *buf = NULL;
    *out = NULL;
    for (;;) {
        if (got == cap) {
            /* one byte beyond max tells a file of max bytes from a longer one */
            size_t nc = cap ? (cap > SIZE_MAX / 4 ? SIZE_MAX / 2 : 2 * cap) : 4096;
            if (max < SIZE_MAX / 2 && nc > max + 1)
                nc = max + 1;
            if (nc <= got) {
                free(buf);
                return mnn_fail(d, MNN_EOVERFLOW, "%s: more than the %zu bytes allowed", name,
                                max);
            }
            char *nb = realloc(buf, nc + 1);
            if (!nb) {
                free(buf);
                return mnn_fail(d, MNN_ENOMEM, "%s: out of memory", name);
            }
            buf = nb;
            cap = nc;
        }
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            errno = e;
            return mnn_fail(d, MNN_EIO, "%s: %s", name, strerror(e));
        }
        if (r == 0)
            break;
        got += (size_t)r;
        if (got > max) {
            free(buf);
            return mnn_fail(d, MNN_EOVERFLOW, "%s: more than the %zu bytes allowed", name, max);
        }
    }
    buf[got] = 0;
    *out = buf;
    *len = got;
    return 0;
}

int mnn_read_file(const char *path, size_t max, char **out, size_t *len, mnn_diag_t *d)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    *out = NULL;
    if (fd < 0)
        return mnn_fail(d, MNN_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return mnn_fail(d, MNN_EIO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return mnn_fail(d, MNN_EIO, "%s: %s", path,
                        S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    }
    /* the size first: a file that claims more is refused before a byte is
     * read; the read itself is capped too, should the file grow meanwhile */
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return mnn_fail(d, MNN_EOVERFLOW, "%s: %lld bytes, more than the %zu allowed", path,
                        (long long)st.st_size, max);
    }
    int rc = mnn_read_fd(fd, path, max, out, len, d);
    close(fd);
    return rc;
}

int mnn_fsync_dirfd(int dfd)
{
    if (fsync(dfd) == 0 || errno == EINVAL)
        return 0;
    return MNN_EIO;
}

int mnn_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return MNN_EIO;
    int rc = mnn_fsync_dirfd(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* ---- removal -------------------------------------------------------------- */

/* Directories nested deeper than this are not ours: removal refuses them. */
#define TREE_DEPTH 16

static int remove_in(int dirfd, const char *name, dev_t dev, int depth)
{
    struct stat sb;
    if (fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : MNN_EIO;
    if (!S_ISDIR(sb.st_mode))
        /* a file, a link (the link itself, never what it names), a fifo */
        return unlinkat(dirfd, name, 0) == 0 || errno == ENOENT ? 0 : MNN_EIO;
    if (depth >= TREE_DEPTH || (depth > 0 && sb.st_dev != dev)) {
        /* too deep, or a mount point: not something we wrote */
        errno = depth >= TREE_DEPTH ? ELOOP : EXDEV;
        return MNN_EIO;
    }
    /* O_NOFOLLOW: if name became a link since fstatat, this fails rather
     * than enter what it points to */
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : MNN_EIO;
    struct stat again;
    if (fstat(fd, &again) != 0 || again.st_dev != sb.st_dev || again.st_ino != sb.st_ino) {
        close(fd);
        errno = EAGAIN;
        return MNN_EIO;
    }
    DIR *dp = fdopendir(fd);
    if (!dp) {
        close(fd);
        return MNN_EIO;
    }
    int rc = 0, e = 0;
    struct dirent *de;
    while ((de = readdir(dp))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (remove_in(fd, de->d_name, sb.st_dev, depth + 1) < 0 && !e) {
            rc = MNN_EIO;
            e = errno;
        }
    }
    closedir(dp);
    if (unlinkat(dirfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT && !e) {
        rc = MNN_EIO;
        e = errno;
    }
    errno = e;
    return rc;
}

int mnn_remove_at(int dirfd, const char *path)
{
    /* "link/" would name what the link points to: the name is taken
     * without its trailing slashes ("/" itself is never removed) */
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n == 1 && path[0] == '/') {
        errno = EBUSY;
        return MNN_EIO;
    }
    char *name = strndup(path, n);
    if (!name)
        return MNN_ENOMEM;
    int rc = remove_in(dirfd, name, 0, 0), e = errno;
    free(name);
    errno = e;
    return rc;
}

int mnn_remove_tree(const char *path) { return mnn_remove_at(AT_FDCWD, path); }

/* ---- rename without replace ---------------------------------------------- */

int mnn_rename_noreplace(int olddirfd, const char *oldname, int newdirfd, const char *newname)
{
    if (renameat2(olddirfd, oldname, newdirfd, newname, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno == EEXIST)
        return MNN_EEXIST;
    if (errno != EINVAL && errno != ENOSYS)
        return MNN_EIO;
    /* a file system without RENAME_NOREPLACE */
    struct stat sb;
    if (fstatat(olddirfd, oldname, &sb, AT_SYMLINK_NOFOLLOW) != 0)
        return MNN_EIO;
    if (!S_ISDIR(sb.st_mode)) {
        /* link() never replaces */
        if (linkat(olddirfd, oldname, newdirfd, newname, 0) != 0)
            return errno == EEXIST ? MNN_EEXIST : MNN_EIO;
        unlinkat(olddirfd, oldname, 0);
        return 0;
    }
    /* a directory: claim the name with mkdir (atomic), then rename over the
     * empty directory just made; whatever another process puts into it
     * meanwhile makes the rename fail (ENOTEMPTY) instead of being lost */
    if (mkdirat(newdirfd, newname, 0700) != 0)
        return errno == EEXIST ? MNN_EEXIST : MNN_EIO;
    if (renameat(olddirfd, oldname, newdirfd, newname) != 0) {
        int e = errno;
        unlinkat(newdirfd, newname, AT_REMOVEDIR);
        errno = e;
        return e == ENOTEMPTY || e == EEXIST ? MNN_EEXIST : MNN_EIO;
    }
    return 0;
}

/* ---- locks ------------------------------------------------------------------ */

/* lock_fd: an exclusive lock on fd (named name, the thing it guards being
 * what), at once or MNN_EBUSY; fd is closed on failure */
static int lock_fd(int fd, const char *name, const char *what, int *fdp, mnn_diag_t *d)
{
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR)
            continue;
        int e = errno;
        close(fd);
        errno = e;
        if (e == EWOULDBLOCK)
            return mnn_fail(d, MNN_EBUSY, "%s: in use by another process (it holds %s)", name,
                            what);
        return mnn_fail(d, MNN_EIO, "%s: cannot lock: %s", name, strerror(e));
    }
    *fdp = fd;
    return 0;
}

int mnn_lock_dir(const char *dir, int *fdp, mnn_diag_t *d)
{
    *fdp = -1;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return mnn_fail(d, MNN_EIO, "%s: %s", dir, strerror(errno));
    return lock_fd(fd, dir, "the directory's lock", fdp, d);
}

static int lock_name(char *buf, size_t n, const char *path)
{
    return snprintf(buf, n, "%s.lock", path) < (int)n ? 0 : -1;
}

int mnn_lock_file(const char *path, int *fdp, mnn_diag_t *d)
{
    *fdp = -1;
    char lock[4096], what[4200];
    if (lock_name(lock, sizeof lock, path) < 0)
        return mnn_fail(d, MNN_EINVAL, "%s: name too long", path);
    snprintf(what, sizeof what, "the lock on %s", lock);
    /* The holder removes the lock file before it lets go (mnn_unlock_file):
     * a lock taken on a file no longer at that name is not the lock, and
     * the name is opened again.  Each round follows a holder that came and
     * went between our open and our flock; a bound all the same. */
    for (int round = 0; round < 1000; round++) {
        /* never through a link, never anything but a plain file */
        int fd = open(lock, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0666);
        if (fd < 0)
            return mnn_fail(d, MNN_EIO, "%s: %s", lock,
                            errno == ELOOP ? "is a symbolic link, refused" : strerror(errno));
        struct stat sb, now;
        if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            close(fd);
            return mnn_fail(d, MNN_EIO, "%s: not a plain file, refused", lock);
        }
        int rc = lock_fd(fd, path, what, fdp, d);
        if (rc < 0)
            return rc;
        if (lstat(lock, &now) == 0 && now.st_dev == sb.st_dev && now.st_ino == sb.st_ino)
            return 0;
        close(fd);
        *fdp = -1;
    }
    return mnn_fail(d, MNN_EBUSY, "%s: %s keeps changing hands", path, lock);
}

void mnn_unlock_file(const char *path, int fd)
{
    char lock[4096];
    if (fd < 0)
        return;
    if (lock_name(lock, sizeof lock, path) == 0)
        unlink(lock); /* while it is held: see mnn_lock_file */
    close(fd);
}

/* ---- atomic writes ------------------------------------------------------------ */

static void atomic_free(mnn_atomic_t *a)
{
    int e = errno;
    free(a->path);
    free(a->tmp);
    free(a->dir);
    a->path = a->tmp = a->dir = NULL;
    a->fd = -1;
    errno = e;
}

int mnn_atomic_open(mnn_atomic_t *a, const char *path, mnn_diag_t *d)
{
    static unsigned long seq;
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path) : 0, n = strlen(path) + 64;
    a->fd = -1;
    a->path = strdup(path);
    a->tmp = malloc(n);
    a->dir = malloc(dlen + 2);
    if (!a->path || !a->tmp || !a->dir) {
        atomic_free(a);
        return mnn_fail(d, MNN_ENOMEM, "%s: out of memory", path);
    }
    if (slash) {
        memcpy(a->dir, path, dlen ? dlen : 1); /* "/x": the root */
        a->dir[dlen ? dlen : 1] = 0;
    } else
        strcpy(a->dir, ".");
    snprintf(a->tmp, n, "%.*s%s.%s.tmp-%ld-%lu", (int)dlen, path, slash ? "/" : "",
             slash ? slash + 1 : path, (long)getpid(),
             __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
    /* O_EXCL | O_NOFOLLOW: never through a link someone left there */
    if ((a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666)) < 0) {
        int rc = mnn_fail(d, MNN_EIO, "%s: %s", path, strerror(errno));
        atomic_free(a); /* the name was not ours to remove */
        return rc;
    }
    return 0;
}

void mnn_atomic_abort(mnn_atomic_t *a)
{
    if (a->fd >= 0)
        close(a->fd);
    if (a->tmp)
        unlink(a->tmp);
    atomic_free(a);
}

int mnn_atomic_commit(mnn_atomic_t *a, mnn_diag_t *d)
{
    const char *step = "fsync";
    int rc = fsync(a->fd);
    if (rc == 0) {
        step = "close";
        rc = close(a->fd);
        a->fd = -1;
    }
    if (rc == 0)
        step = "rename", rc = rename(a->tmp, a->path);
    if (rc != 0) {
        int e = errno;
        rc = mnn_fail(d, MNN_EIO, "%s: %s %s: %s", a->path, step, a->tmp, strerror(e));
        mnn_atomic_abort(a);
        errno = e;
        return rc;
    }
    /* the rename is durable once the directory is */
    rc = mnn_fsync_dir(a->dir) < 0 ? mnn_fail(d, MNN_EIO, "%s: fsync: %s", a->dir, strerror(errno))
                                   : 0;
    atomic_free(a);
    return rc;
}

int mnn_write_atomic(const char *path, mnn_write_fn fn, void *ctx, mnn_diag_t *d)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        /* /dev/stdout, a fifo: nothing to replace, written as it is */
        if (S_ISDIR(sb.st_mode))
            return mnn_fail(d, MNN_EIO, "%s: is a directory", path);
        FILE *f = fopen(path, "we");
        if (!f)
            return mnn_fail(d, MNN_EIO, "%s: %s", path, strerror(errno));
        int rc = fn(ctx, f);
        int e = errno;
        if (rc == 0 && (ferror(f) || fflush(f) != 0))
            rc = MNN_EIO, e = errno ? errno : EIO;
        if (fclose(f) != 0 && rc == 0)
            rc = MNN_EIO, e = errno;
        if (rc < 0)
            return mnn_fail(d, rc, "%s: %s", path, rc == MNN_EIO ? strerror(e) : mnn_strerror(rc));
        return 0;
    }
    mnn_atomic_t a;
    int rc = mnn_atomic_open(&a, path, d);
    if (rc < 0)
        return rc;
    FILE *f = fdopen(dup(a.fd), "w");
    if (!f) {
        rc = mnn_fail(d, MNN_ENOMEM, "%s: %s", a.tmp, strerror(errno));
        mnn_atomic_abort(&a);
        return rc;
    }
    int e = 0;
    if ((rc = fn(ctx, f)) < 0)
        e = errno;
    else if (ferror(f) || fflush(f) != 0)
        rc = MNN_EIO, e = errno ? errno : EIO;
    if (fclose(f) != 0 && rc == 0)
        rc = MNN_EIO, e = errno;
    if (rc < 0) {
        rc = mnn_fail(d, rc, "%s: %s", path, rc == MNN_EIO ? strerror(e) : mnn_strerror(rc));
        mnn_atomic_abort(&a);
        errno = e;
        return rc;
    }
    return mnn_atomic_commit(&a, d);
}
