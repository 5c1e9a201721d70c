/* archive-pack.c - a checkpoint directory packed as one .tar.zst with
 * libarchive's tar writer and zstd filter: NAME/, NAME/manifest.yaml, then
 * every file the manifest lists in name order, each checked against its
 * size and XXH3 as it is streamed (a mismatch stops the archive short of its
 * end, so no reader accepts it); owner 0:0, modes 0755/0644, mtime the
 * manifest's created time, so the same checkpoint packs to the same bytes. */
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


/* The manifest's created time, YYYY-MM-DDTHH:MM:SSZ, as seconds since the
 * epoch; -1 if it is not exactly that (or before 1970). */
static int64_t parse_created(const char *s)
{
    static const char pat[] = "dddd-dd-ddTdd:dd:ddZ";
    if (strlen(s) != sizeof pat - 1)
        return -1;
    for (size_t i = 0; pat[i]; i++)
        if (pat[i] == 'd' ? s[i] < '0' || s[i] > '9' : s[i] != pat[i])
            return -1;
    int v[6];
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2dZ", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
        return -1;
    struct tm tm = {.tm_year = v[0] - 1900, .tm_mon = v[1] - 1, .tm_mday = v[2],
                    .tm_hour = v[3], .tm_min = v[4], .tm_sec = v[5]};
    time_t t = timegm(&tm);
    /* timegm normalises 02-30 or 12:60 into the next day or hour: a time
     * that does not come back unchanged did not exist */
    struct tm back;
    if (t < 0 || !gmtime_r(&t, &back) || back.tm_year + 1900 != v[0] || back.tm_mon + 1 != v[1] ||
        back.tm_mday != v[2] || back.tm_hour != v[3] || back.tm_min != v[4] || back.tm_sec != v[5])
        return -1;
    return (int64_t)t;
}

/* ---- packing -------------------------------------------------------------- */

typedef struct {
    int fd;
    int failed;   /* the output is abandoned: write nothing more */
    int err;      /* errno of a failed write, or 0 */
    int canceled; /* a write was interrupted by a signal */
} wr_t;

static la_ssize_t wr_write(struct archive *a, void *ctx, const void *buf, size_t n)
{
    wr_t *w = ctx;
    const char *p = buf;
    size_t left = n;
    if (w->failed) {
        archive_set_error(a, ECANCELED, "output abandoned");
        return -1;
    }
    while (left > 0) {
        ssize_t r = write(w->fd, p, left);
        if (r < 0) {
            if (errno == EINTR)
                w->canceled = 1;
            else
                w->err = errno;
            w->failed = 1;
            archive_set_error(a, errno, "%s", strerror(errno));
            return -1;
        }
        p += r;
        left -= (size_t)r;
    }
    return (la_ssize_t)n;
}

/* The error of a failed libarchive write call. */
static int wr_fail(struct archive *a, const wr_t *w, mnn_diag_t *d)
{
    if (w->canceled)
        return mnn_fail(d, MNN_ECANCELED, "interrupted while writing the archive");
    if (w->err) {
        errno = w->err;
        return mnn_fail(d, MNN_EIO, "cannot write the archive: %s", strerror(w->err));
    }
    const char *m = archive_error_string(a);
    return mnn_fail(d, MNN_EIO, "cannot write the archive: %s", m ? m : "libarchive error");
}

/* Writes an entry header: owner 0:0 root, mode 0755 or 0644, the given
 * mtime, no atime or ctime: nothing of the files' own metadata. */
static int put_header(struct archive *a, struct archive_entry *e, const char *path, int dir,
                      uint64_t size, int64_t mtime)
{
    archive_entry_clear(e);
    archive_entry_copy_pathname(e, path);
    archive_entry_set_filetype(e, dir ? AE_IFDIR : AE_IFREG);
    archive_entry_set_perm(e, dir ? 0755 : 0644);
    archive_entry_set_size(e, dir ? 0 : (la_int64_t)size);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    archive_entry_copy_uname(e, "root");
    archive_entry_copy_gname(e, "root");
    archive_entry_set_mtime(e, (time_t)mtime, 0);
    return archive_write_header(a, e) == ARCHIVE_OK ? 0 : -1;
}

static int put_data(struct archive *a, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        la_ssize_t r = archive_write_data(a, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Reads dfd/name (a regular file of at most max bytes) into *text. */
static int read_at(int dfd, const char *dir, const char *name, size_t max, char **text,
                   size_t *len, mnn_diag_t *d)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat sb;
    *text = NULL;
    if (fd < 0)
        return mnn_fail(d, MNN_EIO, "%s/%s: %s", dir, name, strerror(errno));
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return mnn_fail(d, MNN_EIO, "%s/%s: %s", dir, name, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return mnn_fail(d, MNN_EFORMAT, "%s/%s: not a regular file", dir, name);
    }
    char what[PATH_MAX];
    snprintf(what, sizeof what, "%s/%s", dir, name);
    int rc = mnn_read_fd(fd, what, max, text, len, d);
    close(fd);
    return rc;
}

/* Streams dfd/f->name into the archive as apath, checking its size and
 * XXH3 against the manifest on the way: the data is read once. */
static int pack_file(struct archive *a, const wr_t *w, struct archive_entry *e, int dfd,
                     const char *dir, const mnn_manifest_file_t *f, const char *apath,
                     int64_t mtime, mnn_hash_t *xs, unsigned char *buf, mnn_diag_t *d)
{
    int fd = openat(dfd, f->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), rc = 0;
    struct stat sb;
    if (fd < 0)
        return mnn_fail(d, errno == ENOENT ? MNN_ECORRUPT : MNN_EIO, "%s/%s: %s", dir, f->name,
                        errno == ENOENT ? "listed in the manifest but missing"
                        : errno == ELOOP ? "not a regular file"
                                          : strerror(errno));
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mnn_fail(d, MNN_ECORRUPT, "%s/%s: not a regular file", dir, f->name);
    }
    if (put_header(a, e, apath, 0, f->bytes, mtime) < 0) {
        close(fd);
        return wr_fail(a, w, d);
    }
    mnn_hash_reset(xs);
    uint64_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf, DATA_BLOCK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = mnn_fail(d, MNN_EIO, "%s/%s: %s", dir, f->name, strerror(errno));
            break;
        }
        if (r == 0)
            break;
        if ((uint64_t)r > f->bytes - got) {
            rc = mnn_fail(d, MNN_ECORRUPT,
                          "%s/%s: larger than the %" PRIu64 " bytes the manifest says", dir,
                          f->name, f->bytes);
            break;
        }
        mnn_hash_update(xs, buf, (size_t)r);
        if (put_data(a, buf, (size_t)r) < 0) {
            rc = wr_fail(a, w, d);
            break;
        }
        got += (uint64_t)r;
    }
    close(fd);
    if (rc < 0)
        return rc;
    char hex[17];
    mnn_hash_hex(mnn_hash_digest(xs), hex);
    if (got != f->bytes)
        return mnn_fail(d, MNN_ECORRUPT, "%s/%s: %" PRIu64 " bytes, the manifest says %" PRIu64,
                        dir, f->name, got, f->bytes);
    if (strcmp(hex, f->xxh3))
        return mnn_fail(d, MNN_ECORRUPT,
                        "%s/%s: hash does not match the manifest (xxh3 %s, manifest says %s)",
                        dir, f->name, hex, f->xxh3);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    const mnn_manifest_file_t *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

int mnn_ckpt_pack(const char *dir, int fd, const mnn_pack_opts_t *o, mnn_diag_t *d)
{
    const int level = o ? o->level : 0, threads = o ? o->threads : 0;
    mnn_manifest_t mf;
    char *real = NULL, *rp = NULL, *text = NULL, *apath = NULL;
    const mnn_manifest_file_t **order = NULL;
    struct archive *a = NULL;
    struct archive_entry *e = NULL;
    mnn_hash_t *xs = NULL;
    unsigned char *buf = NULL;
    wr_t w = {.fd = fd};
    int dfd = -1, rc;
    size_t len = 0;

    memset(&mf, 0, sizeof mf);
    if (level < 0 || level > 19)
        return mnn_fail(d, MNN_EINVAL, "zstd level %d is out of range 1..19", level);
    if (threads < 0)
        return mnn_fail(d, MNN_EINVAL, "zstd threads: %d is negative", threads);
    /* resolves dir/latest, and says what is wrong with a non-checkpoint */
    if ((rc = mnn_manifest_load(&mf, dir, &real, d)) < 0)
        return rc;
    mnn_manifest_free(&mf);
    if (!(rp = realpath(real, NULL))) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", real, strerror(errno));
        goto out;
    }
    const char *name = strrchr(rp, '/') + 1; /* realpath is absolute */
    if (!mnn_archive_plain_name(name, strlen(name))) {
        rc = mnn_fail(d, MNN_EINVAL,
                      "%s: '%s' cannot name a packed checkpoint (a plain name of at most %d "
                      "bytes, not starting with '.')",
                      real, name, NAME_MAXLEN);
        goto out;
    }
    if ((dfd = open(rp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        rc = mnn_fail(d, MNN_EIO, "%s: %s", real, strerror(errno));
        goto out;
    }
    /* the manifest packed is the one checked: read once, through dfd */
    if ((rc = read_at(dfd, real, MANIFEST, MANIFEST_MAX, &text, &len, d)) < 0)
        goto out;
    size_t plen = strlen(real) + strlen(name) + sizeof MANIFEST + 80;
    if (!(apath = malloc(plen))) {
        rc = mnn_fail(d, MNN_ENOMEM, "out of memory");
        goto out;
    }
    snprintf(apath, plen, "%s/%s", real, MANIFEST);
    if ((rc = mnn_manifest_parse(&mf, text, len, apath, d)) < 0)
        goto out;
    const int64_t mtime = parse_created(mf.created);
    if (mtime < 0) {
        rc = mnn_fail(d, MNN_EFORMAT, "%s: created '%s' is not a UTC time YYYY-MM-DDTHH:MM:SSZ",
                      apath, mf.created);
        goto out;
    }
    if (!(order = calloc(mf.nfiles + 1, sizeof *order))) {
        rc = mnn_fail(d, MNN_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < mf.nfiles; i++)
        order[i] = &mf.files[i];
    qsort(order, mf.nfiles, sizeof *order, by_name);
    /* before a byte is written: every file there, regular, of its size */
    for (size_t i = 0; i < mf.nfiles; i++) {
        struct stat sb;
        const mnn_manifest_file_t *f = order[i];
        if (fstatat(dfd, f->name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
            rc = mnn_fail(d, errno == ENOENT ? MNN_ECORRUPT : MNN_EIO, "%s/%s: %s", real, f->name,
                          errno == ENOENT ? "listed in the manifest but missing" : strerror(errno));
            goto out;
        }
        if (!S_ISREG(sb.st_mode)) {
            rc = mnn_fail(d, MNN_ECORRUPT, "%s/%s: not a regular file", real, f->name);
            goto out;
        }
        if ((uint64_t)sb.st_size != f->bytes) {
            rc = mnn_fail(d, MNN_ECORRUPT,
                          "%s/%s: %lld bytes, the manifest says %" PRIu64, real, f->name,
                          (long long)sb.st_size, f->bytes);
            goto out;
        }
    }

    a = archive_write_new();
    e = archive_entry_new();
    xs = mnn_hash_new();
    buf = malloc(DATA_BLOCK);
    if (!a || !e || !xs || !buf) {
        rc = mnn_fail(d, MNN_ENOMEM, "out of memory");
        goto out;
    }
    char num[16];
    /* pax restricted: plain ustar headers unless a path or size needs more.
     * A name that is not ASCII would be converted to UTF-8 through the
     * locale (which may not know it): store it as raw bytes instead, at the
     * price of a pax header on every entry. */
    int ascii = 1;
    for (const char *p = name; *p; p++)
        ascii &= (unsigned char)*p < 0x80;
    for (size_t i = 0; i < mf.nfiles; i++)
        for (const char *p = mf.files[i].name; *p; p++)
            ascii &= (unsigned char)*p < 0x80;
    if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        (!ascii &&
         archive_write_set_format_option(a, "pax", "hdrcharset", "BINARY") != ARCHIVE_OK) ||
        archive_write_add_filter_zstd(a) != ARCHIVE_OK ||
        archive_write_set_bytes_per_block(a, 0) != ARCHIVE_OK) {
        rc = mnn_fail(d, MNN_EINVAL, "libarchive: %s", archive_error_string(a));
        goto out;
    }
    snprintf(num, sizeof num, "%d", level ? level : 3);
    if (archive_write_set_filter_option(a, "zstd", "compression-level", num) != ARCHIVE_OK) {
        rc = mnn_fail(d, MNN_EINVAL, "zstd level %s: %s", num, archive_error_string(a));
        goto out;
    }
    /* libarchive takes "threads" 0 to mean one worker per CPU: leave it unset
     * for compression in the calling thread */
    snprintf(num, sizeof num, "%d", threads);
    if (threads > 0 && archive_write_set_filter_option(a, "zstd", "threads", num) != ARCHIVE_OK) {
        rc = mnn_fail(d, MNN_EINVAL, "zstd threads: not supported by this libarchive (%s)",
                      archive_error_string(a));
        goto out;
    }
    if (archive_write_open(a, &w, NULL, wr_write, NULL) != ARCHIVE_OK) {
        rc = wr_fail(a, &w, d);
        goto out;
    }
    snprintf(apath, plen, "%s/", name);
    if (put_header(a, e, apath, 1, 0, mtime) < 0) {
        rc = wr_fail(a, &w, d);
        goto out;
    }
    snprintf(apath, plen, "%s/%s", name, MANIFEST);
    if (put_header(a, e, apath, 0, len, mtime) < 0 || put_data(a, text, len) < 0) {
        rc = wr_fail(a, &w, d);
        goto out;
    }
    for (size_t i = 0; i < mf.nfiles; i++) {
        snprintf(apath, plen, "%s/%s", name, order[i]->name);
        if ((rc = pack_file(a, &w, e, dfd, real, order[i], apath, mtime, xs, buf, d)) < 0)
            goto out;
    }
    if (archive_write_close(a) != ARCHIVE_OK) {
        rc = wr_fail(a, &w, d);
        goto out;
    }
    rc = 0;
out:
    if (a) {
        if (rc < 0) {
            /* no end of frame, no end-of-archive blocks: what was written
             * is a truncated archive that no reader accepts */
            w.failed = 1;
            archive_write_fail(a);
        }
        archive_write_free(a);
    }
    if (e)
        archive_entry_free(e);
    if (xs)
        mnn_hash_free(xs);
    if (dfd >= 0)
        close(dfd);
    free(buf);
    free(order);
    free(apath);
    free(text);
    free(rp);
    free(real);
    mnn_manifest_free(&mf);
    return rc;
}

