/* archive.c - a checkpoint archive (.tar.zst) read back: verified, extracted
 * (refusing anything hostile: paths out of NAME/, links, devices, entries the
 * manifest does not name, sizes or hashes that disagree) or listed, through
 * two libarchive handles, `zr` (the zstd filter under the "raw" format: the
 * decompressed stream) feeding `tr` (the tar reader).
 *
 * Every decompressed byte passes through pull(), which notes where the last
 * non-zero one was.  Once the tar reader has seen the end-of-archive blocks
 * the rest of the stream is drained: anything but zeros (tar padding), a
 * second frame, or bytes that are not zstd after the frame is an error.
 *
 * Packing is archive-pack.c's.
 *
 * libarchive 3.6's zstd writer sets no content checksum in the frame, so a
 * damaged archive is caught by the zstd decoder, the tar header checksums and
 * the manifest's sizes and XXH3 hashes; a frame that has a checksum (zstd(1),
 * libarchive >= 3.7) is verified by the decoder too.
 *
 * A read or write of the caller's descriptor that a signal interrupts
 * (EINTR: a handler installed without SA_RESTART) stops the work with
 * MNN_ECANCELED, and unpack then removes what it had written: a program's
 * SIGINT handler can stop an unpack blocked on a pipe.
 */
#include "internal.h"
#include "ckpt-archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>


/* ---- shared ----------------------------------------------------------- */

int mnn_archive_plain_name(const char *s, size_t n)
{
    return n > 0 && n <= NAME_MAXLEN && s[0] != '.' && !memchr(s, '/', n) &&
           !memchr(s, '\0', n);
}


/* ---- reading -------------------------------------------------------------- */

typedef struct {
    int fd;
    const char *name;     /* the archive, for messages */
    struct archive *zr;   /* the decompressor: raw format over the zstd filter */
    struct archive *tr;   /* the tar reader, fed by tar_read() */
    unsigned char *raw;   /* IO_BLOCK bytes read from fd */
    unsigned char *blk;   /* IO_BLOCK decompressed bytes handed to tr */
    uint64_t seen;        /* decompressed bytes taken from zr */
    uint64_t nonzero_end; /* offset just past the last non-zero among them */
    int err;              /* errno of a failed read of fd, or 0 */
    int canceled;         /* a read of fd was interrupted by a signal */
    unsigned char head[4];/* the first bytes of the input */
    size_t nhead;
    char zmsg[256];       /* why zr failed, once it has */
} rd_t;

static la_ssize_t fd_read(struct archive *a, void *ctx, const void **out)
{
    rd_t *r = ctx;
    ssize_t n = read(r->fd, r->raw, IO_BLOCK);
    if (n < 0) {
        if (errno == EINTR)
            r->canceled = 1;
        else
            r->err = errno;
        archive_set_error(a, errno, "%s", strerror(errno));
        return -1;
    }
    for (size_t i = 0; r->nhead < sizeof r->head && i < (size_t)n; i++)
        r->head[r->nhead++] = r->raw[i];
    *out = r->raw;
    return n;
}

/* Up to n decompressed bytes into p (fewer only at the end): the count, 0 at
 * the end, -1 on error (r->zmsg says what). */
static la_ssize_t pull(rd_t *r, unsigned char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        la_ssize_t k = archive_read_data(r->zr, p + got, n - got);
        if (k < 0) {
            if (!r->zmsg[0]) {
                const char *m = archive_error_string(r->zr);
                snprintf(r->zmsg, sizeof r->zmsg, "%s", m ? m : "decompression failed");
            }
            return -1;
        }
        if (k == 0)
            break;
        got += (size_t)k;
    }
    for (size_t i = got; i > 0; i--)
        if (p[i - 1]) {
            r->nonzero_end = r->seen + i;
            break;
        }
    r->seen += got;
    return (la_ssize_t)got;
}

static la_ssize_t tar_read(struct archive *a, void *ctx, const void **out)
{
    rd_t *r = ctx;
    la_ssize_t n = pull(r, r->blk, IO_BLOCK);
    if (n < 0) {
        archive_set_error(a, EIO, "%s", r->zmsg);
        return -1;
    }
    *out = r->blk;
    return n;
}

/* The error of a failed read through r; a the handle that failed. */
static int rd_fail(rd_t *r, struct archive *a, mnn_diag_t *d)
{
    if (r->canceled)
        return mnn_fail(d, MNN_ECANCELED, "%s: interrupted", r->name);
    if (r->err) {
        errno = r->err;
        return mnn_fail(d, MNN_EIO, "%s: read error: %s", r->name, strerror(r->err));
    }
    if (r->zmsg[0])
        return mnn_fail(d, MNN_ECORRUPT, "%s: damaged or truncated zstd stream: %s", r->name,
                        r->zmsg);
    const char *m = a ? archive_error_string(a) : NULL;
    return mnn_fail(d, MNN_ECORRUPT, "%s: damaged tar archive: %s", r->name,
                    m ? m : "libarchive error");
}

static void rd_close(rd_t *r)
{
    if (r->tr)
        archive_read_free(r->tr);
    if (r->zr)
        archive_read_free(r->zr);
    free(r->raw);
    free(r->blk);
    r->tr = r->zr = NULL;
    r->raw = r->blk = NULL;
}

static int rd_open(rd_t *r, int fd, const char *name, mnn_diag_t *d)
{
    struct archive_entry *e;
    memset(r, 0, sizeof *r);
    r->fd = fd;
    r->name = name ? name : "archive";
    r->raw = malloc(IO_BLOCK);
    r->blk = malloc(IO_BLOCK);
    r->zr = archive_read_new();
    r->tr = archive_read_new();
    if (!r->raw || !r->blk || !r->zr || !r->tr)
        return mnn_fail(d, MNN_ENOMEM, "out of memory");
    if (archive_read_support_filter_zstd(r->zr) != ARCHIVE_OK ||
        archive_read_support_format_raw(r->zr) != ARCHIVE_OK ||
        archive_read_support_format_tar(r->tr) != ARCHIVE_OK)
        return mnn_fail(d, MNN_EINVAL, "libarchive cannot read tar.zst: %s",
                        archive_error_string(r->zr));
    /* libarchive decompresses the start of the stream as it opens it */
    int rc = archive_read_open(r->zr, r, NULL, fd_read, NULL);
    if (rc == ARCHIVE_OK && (rc = archive_read_next_header(r->zr, &e)) == ARCHIVE_EOF)
        rc = ARCHIVE_FATAL;
    if (r->canceled || r->err)
        return rd_fail(r, NULL, d);
    if (r->nhead == 0)
        return mnn_fail(d, MNN_EFORMAT, "%s: empty input, not a checkpoint archive", r->name);
    if (r->nhead < sizeof r->head && !memcmp(r->head, ZSTD_MAGIC, r->nhead))
        return mnn_fail(d, MNN_ECORRUPT, "%s: truncated zstd stream (%zu bytes)", r->name,
                        r->nhead);
    if (r->nhead < sizeof r->head || memcmp(r->head, ZSTD_MAGIC, sizeof r->head) ||
        (rc == ARCHIVE_OK && archive_filter_code(r->zr, 0) != ARCHIVE_FILTER_ZSTD))
        return mnn_fail(d, MNN_EFORMAT,
                        "%s: not zstd-compressed: a checkpoint archive is a .tar.zst "
                        "(as ckpt-pack writes)",
                        r->name);
    if (rc != ARCHIVE_OK) {
        const char *m = archive_error_string(r->zr);
        return mnn_fail(d, MNN_ECORRUPT, "%s: damaged, truncated or empty zstd stream: %s",
                        r->name, m ? m : "no data");
    }
    if (archive_read_open(r->tr, r, NULL, tar_read, NULL) != ARCHIVE_OK) {
        if (r->canceled || r->err || r->zmsg[0])
            return rd_fail(r, r->tr, d);
        return mnn_fail(d, MNN_EFORMAT, "%s: no tar archive inside the zstd stream (%s)",
                        r->name, r->seen ? archive_error_string(r->tr) : "it is empty");
    }
    return 0;
}

/* The next tar entry: 1, 0 at the end, or an error. */
static int rd_next(rd_t *r, struct archive_entry **e, mnn_diag_t *d)
{
    int rc = archive_read_next_header(r->tr, e);
    if (rc == ARCHIVE_OK)
        return 1;
    if (rc == ARCHIVE_EOF)
        return 0;
    if (rc == ARCHIVE_WARN && !r->zmsg[0] && !r->err && !r->canceled)
        /* e.g. a name not convertible to this locale: the entry is not
         * what its writer meant */
        return mnn_fail(d, MNN_EFORMAT, "%s: %s", r->name, archive_error_string(r->tr));
    return rd_fail(r, r->tr, d);
}

/* After the tar reader's end: the rest of the stream must be zeros and the
 * zstd stream must end cleanly, with nothing after it. */
static int rd_end(rd_t *r, mnn_diag_t *d)
{
    const la_int64_t end = archive_filter_bytes(r->tr, 0);
    for (;;) {
        la_ssize_t n = pull(r, r->blk, IO_BLOCK);
        if (n < 0) {
            if (r->canceled || r->err)
                return rd_fail(r, NULL, d);
            return mnn_fail(d, MNN_ECORRUPT, "%s: damaged data after the end of the archive: %s",
                            r->name, r->zmsg);
        }
        if (n == 0)
            break;
    }
    if (end < 0 || r->nonzero_end > (uint64_t)end)
        return mnn_fail(d, MNN_ECORRUPT, "%s: data after the end of the tar archive", r->name);
    return 0;
}

/* ---- unpacking ------------------------------------------------------------ */

typedef struct {
    rd_t rd;
    const char *target; /* NULL: verify only */
    int tfd;            /* target directory, or -1 */
    int xfd;            /* target/.tmp-NAME while extracting, or -1 */
    char name[NAME_MAXLEN + 1];         /* NAME, "" until the first entry */
    char tmpname[NAME_MAXLEN + 8];      /* ".tmp-NAME" */
    int have_manifest;
    int have_dir;
    uint64_t entries;    /* entries accepted so far */
    mnn_manifest_t mf;   /* valid when have_manifest */
    unsigned char *done; /* mf.nfiles flags: the file has been read */
    mnn_hash_t *xs;
    unsigned char *buf;  /* DATA_BLOCK */
} up_t;

static int has_dotdot(const char *p)
{
    for (;;) {
        const char *s = strchr(p, '/');
        size_t n = s ? (size_t)(s - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 1;
        if (!s)
            return 0;
        p = s + 1;
    }
}

/* Checks an entry's path and type.  *file receives what follows NAME/, or
 * NULL for the NAME/ directory.  The first entry names NAME. */
static int check_entry(up_t *u, struct archive_entry *e, const char **file, mnn_diag_t *d)
{
    const char *an = u->rd.name, *p = archive_entry_pathname(e);
    const mode_t t = archive_entry_filetype(e);
    if (!p || !*p)
        return mnn_fail(d, MNN_EFORMAT, "%s: an entry without a usable path", an);
    if (p[0] == '/')
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: absolute path refused", an, p);
    if (has_dotdot(p))
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: '..' in a path refused", an, p);
    if (archive_entry_hardlink(e))
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: hard link refused", an, p);
    if (t == AE_IFLNK)
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: symbolic link refused", an, p);
    if (t == AE_IFCHR || t == AE_IFBLK)
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: device refused", an, p);
    if (t == AE_IFIFO)
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: fifo refused", an, p);
    if (t != AE_IFREG && t != AE_IFDIR)
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: not a regular file or directory, refused", an,
                        p);
    if (archive_entry_sparse_count(e) > 0)
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: sparse file refused", an, p);
    const char *slash = strchr(p, '/'), *rest = slash ? slash + 1 : "";
    const size_t nlen = slash ? (size_t)(slash - p) : strlen(p);
    if (!u->name[0]) {
        if (!mnn_archive_plain_name(p, nlen) || !(t == AE_IFDIR ? !*rest : !strcmp(rest, MANIFEST)))
            return mnn_fail(d, MNN_EFORMAT,
                            "%s: %s: the first entry must be NAME/ or NAME/%s, NAME a plain "
                            "name not starting with '.'",
                            an, p, MANIFEST);
        memcpy(u->name, p, nlen);
        u->name[nlen] = '\0';
    } else if (nlen != strlen(u->name) || memcmp(p, u->name, nlen) != 0 || !slash)
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: outside %s/, refused", an, p, u->name);
    if (t == AE_IFDIR) {
        if (*rest)
            return mnn_fail(d, MNN_EFORMAT, "%s: %s: a directory inside %s/, refused", an, p,
                            u->name);
        if (u->entries > 0)
            return mnn_fail(d, MNN_EFORMAT, "%s: %s: %s/ again after the first entry, refused",
                            an, p, u->name);
        *file = NULL;
        return 0;
    }
    if (!*rest || strchr(rest, '/') || rest[0] == '.')
        return mnn_fail(d, MNN_EFORMAT, "%s: %s: not a plain file name under %s/, refused", an,
                        p, u->name);
    *file = rest;
    return 0;
}

/* Knowing NAME: refuses an existing target/NAME, replaces a stale
 * target/.tmp-NAME by a new empty one. */
static int tmp_make(up_t *u, mnn_diag_t *d)
{
    struct stat sb;
    snprintf(u->tmpname, sizeof u->tmpname, ".tmp-%s", u->name);
    if (fstatat(u->tfd, u->name, &sb, AT_SYMLINK_NOFOLLOW) == 0)
        return mnn_fail(d, MNN_EEXIST, "%s/%s: already exists", u->target, u->name);
    if (errno != ENOENT)
        return mnn_fail(d, MNN_EIO, "%s/%s: %s", u->target, u->name, strerror(errno));
    if (mnn_remove_at(u->tfd, u->tmpname) < 0)
        return mnn_fail(d, MNN_EIO, "%s/%s: cannot remove a stale temporary directory: %s",
                        u->target, u->tmpname, strerror(errno));
    if (mkdirat(u->tfd, u->tmpname, 0755) != 0)
        return mnn_fail(d, MNN_EIO, "%s/%s: %s", u->target, u->tmpname, strerror(errno));
    u->xfd = openat(u->tfd, u->tmpname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (u->xfd < 0) {
        int e = errno;
        unlinkat(u->tfd, u->tmpname, AT_REMOVEDIR);
        return mnn_fail(d, MNN_EIO, "%s/%s: %s", u->target, u->tmpname, strerror(e));
    }
    return 0;
}

/* fsync and close a file written in the temporary directory. */
static int close_synced(int fd, up_t *u, const char *file, mnn_diag_t *d)
{
    int e = fsync(fd) != 0 ? errno : 0;
    if (close(fd) != 0 && !e)
        e = errno;
    if (e)
        return mnn_fail(d, MNN_EIO, "%s/%s/%s: %s", u->target, u->tmpname, file, strerror(e));
    return 0;
}

/* The manifest entry: read whole (it is small), parsed, written. */
static int take_manifest(up_t *u, struct archive_entry *e, mnn_diag_t *d)
{
    const char *an = u->rd.name;
    const la_int64_t size = archive_entry_size(e);
    char *text = NULL, *mname = NULL;
    size_t got = 0;
    int rc;
    if (size < 0 || (uint64_t)size > MANIFEST_MAX)
        return mnn_fail(d, MNN_EOVERFLOW, "%s: %s/%s: %lld bytes, more than the %zu allowed", an,
                        u->name, MANIFEST, (long long)size, MANIFEST_MAX);
    size_t mlen = strlen(an) + strlen(u->name) + sizeof MANIFEST + 2;
    if (!(text = malloc((size_t)size + 1)) || !(mname = malloc(mlen))) {
        free(text);
        return mnn_fail(d, MNN_ENOMEM, "out of memory");
    }
    snprintf(mname, mlen, "%s:%s/%s", an, u->name, MANIFEST);
    for (;;) {
        la_ssize_t n = archive_read_data(u->rd.tr, text + got, (size_t)size - got);
        if (n < 0) {
            rc = rd_fail(&u->rd, u->rd.tr, d);
            goto out;
        }
        if (n == 0 || (got += (size_t)n) == (size_t)size)
            break;
    }
    if (got != (size_t)size) {
        rc = mnn_fail(d, MNN_ECORRUPT, "%s: truncated", mname);
        goto out;
    }
    text[got] = '\0';
    if ((rc = mnn_manifest_parse(&u->mf, text, got, mname, d)) < 0)
        goto out;
    u->have_manifest = 1;
    /* the sizes it declares fit its model spec (mnn_manifest_parse); and
     * the target's file system must hold them all, or nothing is begun */
    if (u->tfd >= 0) {
        uint64_t total = got;
        for (size_t i = 0; i < u->mf.nfiles; i++)
            total += u->mf.files[i].bytes;
        struct statvfs vs;
        if (fstatvfs(u->tfd, &vs) == 0 && vs.f_frsize > 0 &&
            total / vs.f_frsize + 1 > (uint64_t)vs.f_bavail) {
            rc = mnn_fail(d, MNN_EOVERFLOW, "%s: %s/: %" PRIu64 " bytes to extract, but %s has "
                          "only %llu free", an, u->name, total, u->target,
                          (unsigned long long)vs.f_bavail * vs.f_frsize);
            goto out;
        }
    }
    if (!(u->done = calloc(u->mf.nfiles + 1, 1))) {
        rc = mnn_fail(d, MNN_ENOMEM, "out of memory");
        goto out;
    }
    if (u->xfd >= 0) {
        int fd = openat(u->xfd, MANIFEST, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        0644);
        if (fd < 0) {
            rc = mnn_fail(d, MNN_EIO, "%s/%s/%s: %s", u->target, u->tmpname, MANIFEST,
                          strerror(errno));
            goto out;
        }
        if (mnn_write_all(fd, text, got) < 0) {
            rc = mnn_fail(d, MNN_EIO, "%s/%s/%s: %s", u->target, u->tmpname, MANIFEST,
                          strerror(errno));
            close(fd);
            goto out;
        }
        if ((rc = close_synced(fd, u, MANIFEST, d)) < 0)
            goto out;
    }
    rc = 0;
out:
    free(text);
    free(mname);
    return rc;
}

/* A listed file: its size checked before any byte is written, its data
 * hashed as it is written, the hash checked at the end. */
static int take_file(up_t *u, struct archive_entry *e, const char *file, mnn_diag_t *d)
{
    const char *an = u->rd.name;
    const mnn_manifest_file_t *f = mnn_manifest_find(&u->mf, file);
    if (!strcmp(file, MANIFEST))
        return mnn_fail(d, MNN_EFORMAT, "%s: %s/%s: appears twice, refused", an, u->name, file);
    if (!f)
        return mnn_fail(d, MNN_EFORMAT, "%s: %s/%s: not listed in the manifest, refused", an,
                        u->name, file);
    const size_t idx = (size_t)(f - u->mf.files);
    if (u->done[idx])
        return mnn_fail(d, MNN_EFORMAT, "%s: %s/%s: appears twice, refused", an, u->name, file);
    u->done[idx] = 1;
    const la_int64_t size = archive_entry_size_is_set(e) ? archive_entry_size(e) : -1;
    if (size < 0 || (uint64_t)size != f->bytes)
        return mnn_fail(d, MNN_ECORRUPT, "%s: %s/%s: %lld bytes, %s the %" PRIu64
                        " the manifest says, refused", an, u->name, file, (long long)size,
                        size >= 0 && (uint64_t)size > f->bytes ? "more than" : "not", f->bytes);
    int fd = -1, rc = 0;
    if (u->xfd >= 0 &&
        (fd = openat(u->xfd, file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     0644)) < 0)
        return mnn_fail(d, MNN_EIO, "%s/%s/%s: %s", u->target, u->tmpname, file,
                        strerror(errno));
    mnn_hash_reset(u->xs);
    uint64_t got = 0;
    for (;;) {
        la_ssize_t n = archive_read_data(u->rd.tr, u->buf, DATA_BLOCK);
        if (n < 0) {
            rc = rd_fail(&u->rd, u->rd.tr, d);
            break;
        }
        if (n == 0)
            break;
        if ((uint64_t)n > f->bytes - got) {
            rc = mnn_fail(d, MNN_ECORRUPT,
                          "%s: %s/%s: more than the %" PRIu64 " bytes the manifest says, refused",
                          an, u->name, file, f->bytes);
            break;
        }
        mnn_hash_update(u->xs, u->buf, (size_t)n);
        if (fd >= 0 && mnn_write_all(fd, u->buf, (size_t)n) < 0) {
            rc = mnn_fail(d, MNN_EIO, "%s/%s/%s: %s", u->target, u->tmpname, file,
                          strerror(errno));
            break;
        }
        got += (uint64_t)n;
    }
    if (rc == 0 && got != f->bytes)
        rc = mnn_fail(d, MNN_ECORRUPT, "%s: %s/%s: %" PRIu64 " bytes, the manifest says %" PRIu64,
                      an, u->name, file, got, f->bytes);
    if (rc == 0) {
        char hex[17];
        mnn_hash_hex(mnn_hash_digest(u->xs), hex);
        if (strcmp(hex, f->xxh3))
            rc = mnn_fail(d, MNN_ECORRUPT,
                          "%s: %s/%s: hash does not match the manifest (xxh3 %s, manifest says "
                          "%s)",
                          an, u->name, file, hex, f->xxh3);
    }
    if (fd >= 0) {
        if (rc == 0)
            rc = close_synced(fd, u, file, d);
        else
            close(fd);
    }
    return rc;
}

/* Everything read and checked: the temporary directory becomes
 * target/NAME, never replacing anything. */
static int publish(up_t *u, char **out, mnn_diag_t *d)
{
    if (mnn_fsync_dirfd(u->xfd) < 0)
        return mnn_fail(d, MNN_EIO, "%s/%s: fsync: %s", u->target, u->tmpname, strerror(errno));
    int rc = mnn_rename_noreplace(u->tfd, u->tmpname, u->tfd, u->name);
    if (rc < 0)
        return mnn_fail(d, rc, "%s/%s: %s", u->target, u->name,
                        rc == MNN_EEXIST ? "already exists" : strerror(errno));
    if (mnn_fsync_dirfd(u->tfd) < 0) {
        int e = errno;
        /* not known to be on disk: take it back rather than leave it */
        mnn_remove_at(u->tfd, u->name);
        return mnn_fail(d, MNN_EIO, "%s: fsync: %s", u->target, strerror(e));
    }
    if (out) {
        size_t n = strlen(u->target), len = n + strlen(u->name) + 2;
        if (!(*out = malloc(len)))
            return mnn_fail(d, MNN_ENOMEM, "out of memory");
        snprintf(*out, len, "%s%s%s", u->target, n && u->target[n - 1] == '/' ? "" : "/",
                 u->name);
    }
    return 0;
}

static int unpack_entries(up_t *u, mnn_diag_t *d)
{
    const char *an = u->rd.name;
    struct archive_entry *e;
    int rc;
    while ((rc = rd_next(&u->rd, &e, d)) > 0) {
        const char *file = NULL;
        if ((rc = check_entry(u, e, &file, d)) < 0)
            return rc;
        if (u->target && u->xfd < 0 && (rc = tmp_make(u, d)) < 0)
            return rc;
        if (!file)
            u->have_dir = 1;
        else if (u->have_manifest)
            rc = take_file(u, e, file, d);
        else if (!strcmp(file, MANIFEST))
            rc = take_manifest(u, e, d);
        else
            rc = mnn_fail(d, MNN_EFORMAT, "%s: %s/%s: before %s/%s, which must come first", an,
                          u->name, file, u->name, MANIFEST);
        if (rc < 0)
            return rc;
        u->entries++;
    }
    if (rc < 0)
        return rc;
    if (!u->name[0])
        return mnn_fail(d, MNN_EFORMAT, "%s: no entries: not a checkpoint archive", an);
    if (!u->have_manifest)
        return mnn_fail(d, MNN_EFORMAT, "%s: no %s/%s: not a checkpoint archive", an, u->name,
                        MANIFEST);
    for (size_t i = 0; i < u->mf.nfiles; i++)
        if (!u->done[i])
            return mnn_fail(d, MNN_ECORRUPT, "%s: %s/%s: listed in the manifest but missing", an,
                            u->name, u->mf.files[i].name);
    return rd_end(&u->rd, d);
}

int mnn_ckpt_unpack(int fd, const char *name, const char *target, char **out,
                    mnn_manifest_t *info, mnn_diag_t *d)
{
    up_t u;
    int rc;
    memset(&u, 0, sizeof u);
    u.tfd = u.xfd = -1;
    u.target = target;
    if (out)
        *out = NULL;
    if (info)
        memset(info, 0, sizeof *info);
    if (!name)
        name = "archive";
    if (target && (u.tfd = open(target, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return mnn_fail(d, MNN_EIO, "%s: %s", target, strerror(errno));
    u.xs = mnn_hash_new();
    u.buf = malloc(DATA_BLOCK);
    if (!u.xs || !u.buf)
        rc = mnn_fail(d, MNN_ENOMEM, "out of memory");
    else if ((rc = rd_open(&u.rd, fd, name, d)) == 0 && (rc = unpack_entries(&u, d)) == 0 &&
             target)
        rc = publish(&u, out, d);
    if (u.xfd >= 0) {
        close(u.xfd);
        if (rc < 0) {
            int e = errno;
            mnn_remove_at(u.tfd, u.tmpname);
            errno = e;
        }
    }
    if (u.tfd >= 0)
        close(u.tfd);
    rd_close(&u.rd);
    if (u.xs)
        mnn_hash_free(u.xs);
    free(u.buf);
    free(u.done);
    if (rc == 0 && info)
        *info = u.mf;
    else
        mnn_manifest_free(&u.mf);
    return rc;
}

/* ---- listing -------------------------------------------------------------- */

int mnn_ckpt_list(int fd, const char *name, mnn_list_fn fn, void *ctx, mnn_diag_t *d)
{
    rd_t r;
    struct archive_entry *e;
    int rc = rd_open(&r, fd, name, d);
    while (rc == 0) {
        if ((rc = rd_next(&r, &e, d)) <= 0) {
            if (rc == 0)
                rc = rd_end(&r, d);
            break;
        }
        const mode_t t = archive_entry_filetype(e);
        const char *p = archive_entry_pathname(e);
        const la_int64_t size = archive_entry_size(e);
        const char type = archive_entry_hardlink(e) || t == AE_IFLNK ? 'l'
                          : t == AE_IFREG                             ? 'f'
                          : t == AE_IFDIR                             ? 'd'
                                                                      : '?';
        if (fn(ctx, p ? p : "", size > 0 ? (uint64_t)size : 0, type)) {
            rc = 0;
            break;
        }
        rc = archive_read_data_skip(r.tr) == ARCHIVE_OK ? 0 : rd_fail(&r, r.tr, d);
    }
    rd_close(&r);
    return rc;
}

int mnn_ckpt_is_archive(const char *path)
{
    unsigned char head[4];
    struct stat sb;
    size_t got = 0;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode))
        while (got < sizeof head) {
            ssize_t r = read(fd, head + got, sizeof head - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            got += (size_t)r;
        }
    close(fd);
    return got == sizeof head && !memcmp(head, ZSTD_MAGIC, sizeof head);
}
