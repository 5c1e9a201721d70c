/* cut.c - the control lines of a pipeline cut: start lines, barriers, the
 * parts in which every stage sends its state downstream (base64 on '#='
 * lines, the header naming its size and XXH3), and the end of a barrier's
 * block.  Only the lines; what a stage does with them is the program's. */
#include "internal.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const char *mnn_cut_what_name(mnn_cut_what_t what)
{
    return what == MNN_CUT_STOP ? "stop" : what == MNN_CUT_FINAL ? "final" : "";
}

/* The space-separated words of [p, end), at most max of them. */
static size_t split(const char *p, const char *end, const char **w, size_t *wl, size_t max)
{
    size_t n = 0;
    while (p < end) {
        while (p < end && *p == ' ')
            p++;
        if (p == end)
            break;
        const char *q = p;
        while (q < end && *q != ' ')
            q++;
        if (n == max)
            return max + 1;
        w[n] = p;
        wl[n++] = (size_t)(q - p);
        p = q;
    }
    return n;
}

static int word_u64(const char *w, size_t n, uint64_t *v)
{
    char buf[24];
    if (n == 0 || n >= sizeof buf || w[0] == '+' || w[0] == '-')
        return -1;
    memcpy(buf, w, n);
    buf[n] = 0;
    return mnn_parse_u64(buf, v);
}

static int bad(const char *line, size_t len, mnn_diag_t *d, const char *what)
{
    return mnn_fail(d, MNN_EFORMAT, "a malformed cut line (%s): '%.*s%s'", what,
                    (int)(len > 60 ? 60 : len), line, len > 60 ? "..." : "");
}

int mnn_cutline_parse(const char *line, size_t len, mnn_cutline_t *l, mnn_diag_t *d)
{
    memset(l, 0, sizeof *l);
    if (len && line[len - 1] == '\r')
        len--;
    if (len >= 2 && line[0] == '#' && line[1] == '=') {
        l->kind = MNN_CUT_DATA;
        return 1;
    }
    static const struct {
        const char *tag;
        mnn_cut_kind_t kind;
        size_t min, max; /* words after the tag */
    } tags[] = {
        {"#!ckpt-start", MNN_CUT_START, 2, 2},
        {"#!ckpt-end", MNN_CUT_END, 1, 1},
        {"#!ckpt", MNN_CUT_BARRIER, 1, 2},
        {"#!part", MNN_CUT_PART, 5, 6},
    };
    size_t t = 0, tl = 0;
    for (; t < sizeof tags / sizeof tags[0]; t++) {
        tl = strlen(tags[t].tag);
        if (len >= tl && !memcmp(line, tags[t].tag, tl) && (len == tl || line[tl] == ' '))
            break;
    }
    if (t == sizeof tags / sizeof tags[0]) {
        /* #!ckpt-anything-else is nobody's: refused rather than passed on */
        if (len >= 6 && !memcmp(line, "#!ckpt", 6))
            return bad(line, len, d, "unknown");
        return 0;
    }
    const char *w[6];
    size_t wl[6];
    size_t n = split(line + tl, line + len, w, wl, 6); /* 7: too many */
    if (n < tags[t].min || n > tags[t].max)
        return bad(line, len, d, "wrong number of fields");
    l->kind = tags[t].kind;
    if (word_u64(w[0], wl[0], &l->id) < 0)
        return bad(line, len, d, "the cut is not a number");
    uint64_t v;
    switch (l->kind) {
    case MNN_CUT_START:
        if (word_u64(w[1], wl[1], &v) < 0 || v > MNN_CUT_MAX_STAGES)
            return bad(line, len, d, "the stage count");
        l->index = (uint32_t)v;
        break;
    case MNN_CUT_BARRIER:
        if (l->id == 0)
            return bad(line, len, d, "cut 0");
        if (n == 2) {
            if (wl[1] == 4 && !memcmp(w[1], "stop", 4))
                l->what = MNN_CUT_STOP;
            else if (wl[1] == 5 && !memcmp(w[1], "final", 5))
                l->what = MNN_CUT_FINAL;
            else
                return bad(line, len, d, "neither stop nor final");
        }
        break;
    case MNN_CUT_PART:
        if (l->id == 0)
            return bad(line, len, d, "cut 0");
        if (word_u64(w[1], wl[1], &v) < 0 || v >= MNN_CUT_MAX_STAGES)
            return bad(line, len, d, "the stage index");
        l->index = (uint32_t)v;
        if (wl[2] >= MNN_CUT_PROGRAM_MAX || strspn(w[2], "abcdefghijklmnopqrstuvwxyz0123456789-_") < wl[2])
            return bad(line, len, d, "the program name");
        memcpy(l->program, w[2], wl[2]);
        if (word_u64(w[3], wl[3], &l->bytes) < 0)
            return bad(line, len, d, "the size");
        if (l->bytes > MNN_CUT_MAX_PART)
            return mnn_fail(d, MNN_ELIMIT, "a stage's part of %" PRIu64 " bytes: more than %"
                            PRIu64 " are refused", l->bytes, (uint64_t)MNN_CUT_MAX_PART);
        if (wl[4] != 16 || strspn(w[4], "0123456789abcdef") < 16)
            return bad(line, len, d, "the hash");
        memcpy(l->xxh3, w[4], 16);
        if (n == 6 && (wl[5] != 4 || memcmp(w[5], "file", 4)))
            return bad(line, len, d, "neither data lines nor 'file'");
        l->in_file = n == 6;
        break;
    case MNN_CUT_END:
        if (l->id == 0)
            return bad(line, len, d, "cut 0");
        break;
    default: break;
    }
    return 1;
}

int mnn_cut_put_start(FILE *f, uint64_t from, uint32_t stages)
{
    fprintf(f, "#!ckpt-start %" PRIu64 " %" PRIu32 "\n", from, stages);
    return ferror(f) ? MNN_EIO : 0;
}

int mnn_cut_put_barrier(FILE *f, uint64_t id, mnn_cut_what_t what)
{
    fprintf(f, "#!ckpt %" PRIu64 "%s%s\n", id, what ? " " : "", mnn_cut_what_name(what));
    return ferror(f) ? MNN_EIO : 0;
}

int mnn_cut_put_end(FILE *f, uint64_t id)
{
    fprintf(f, "#!ckpt-end %" PRIu64 "\n", id);
    return ferror(f) ? MNN_EIO : 0;
}

int mnn_cut_put_part(FILE *f, uint64_t id, uint32_t index, const char *program,
                     const void *data, size_t n)
{
    char hex[17], out[MNN_CUT_LINE + 4];
    mnn_hash_hex(mnn_hash64(data, n), hex);
    fprintf(f, "#!part %" PRIu64 " %" PRIu32 " %s %zu %s\n", id, index, program, n, hex);
    const unsigned char *p = data;
    const size_t per = MNN_CUT_LINE / 4 * 3; /* raw bytes per line */
    for (size_t at = 0; at < n; at += per) {
        size_t k = n - at < per ? n - at : per, o = 0;
        out[o++] = '#';
        out[o++] = '=';
        for (size_t i = 0; i < k; i += 3) {
            uint32_t v = (uint32_t)p[at + i] << 16;
            if (i + 1 < k)
                v |= (uint32_t)p[at + i + 1] << 8;
            if (i + 2 < k)
                v |= p[at + i + 2];
            out[o++] = b64[v >> 18];
            out[o++] = b64[(v >> 12) & 63];
            out[o++] = i + 1 < k ? b64[(v >> 6) & 63] : '=';
            out[o++] = i + 2 < k ? b64[v & 63] : '=';
        }
        out[o++] = '\n';
        fwrite(out, 1, o, f);
    }
    return ferror(f) ? MNN_EIO : 0;
}

void mnn_cut_part_name(char *buf, size_t size, uint64_t id, uint32_t index, const char *program)
{
    snprintf(buf, size, "c%" PRIu64 "-s%" PRIu32 ".%s", id, index, program);
}

/* ROOT/.parts, open (created first when create), or -1 and d filled */
static int parts_dir(const char *root, int create, mnn_diag_t *d)
{
    if (create && mkdir(root, 0777) != 0 && errno != EEXIST) /* the committer may not yet have */
        return mnn_fail(d, MNN_EIO, "%s: %s", root, strerror(errno)), -1;
    int rfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0) {
        int e = errno;
        mnn_fail(d, MNN_EIO, "%s: %s", root, strerror(e));
        errno = e;
        return -1;
    }
    if (create && mkdirat(rfd, MNN_CUT_PARTS, 0777) != 0 && errno != EEXIST) {
        int e = errno;
        close(rfd);
        return mnn_fail(d, MNN_EIO, "%s/%s: %s", root, MNN_CUT_PARTS, strerror(e)), -1;
    }
    int fd = openat(rfd, MNN_CUT_PARTS, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close(rfd);
    if (fd < 0)
        mnn_fail(d, MNN_EIO, "%s/%s: %s", root, MNN_CUT_PARTS, strerror(e));
    errno = e; /* for a caller's own message */
    return fd;
}

int mnn_cut_part_save(const char *root, uint64_t id, uint32_t index, const char *program,
                      const void *data, size_t n, mnn_diag_t *d)
{
    char name[MNN_CUT_PROGRAM_MAX + 48], tmp[sizeof name + 32];
    mnn_cut_part_name(name, sizeof name, id, index, program);
    snprintf(tmp, sizeof tmp, ".%s.tmp-%ld", name, (long)getpid());
    int dfd = parts_dir(root, 1, d);
    if (dfd < 0)
        return MNN_EIO;
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
    int rc = fd < 0 || mnn_write_all(fd, data, n) < 0 ? -1 : 0;
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && rc == 0)
        rc = -1, e = errno;
    if (rc == 0 && renameat(dfd, tmp, dfd, name) != 0)
        rc = -1, e = errno;
    if (rc < 0)
        unlinkat(dfd, tmp, 0);
    close(dfd);
    if (rc < 0)
        return mnn_fail(d, MNN_EIO, "%s/%s/%s: %s", root, MNN_CUT_PARTS, name, strerror(e));
    return 0;
}

int mnn_cut_put_part_ref(FILE *f, uint64_t id, uint32_t index, const char *program,
                         const void *data, size_t n)
{
    char hex[17];
    mnn_hash_hex(mnn_hash64(n ? data : "", n), hex);
    fprintf(f, "#!part %" PRIu64 " %" PRIu32 " %s %zu %s file\n", id, index, program, n, hex);
    return ferror(f) ? MNN_EIO : 0;
}

int mnn_part_load(mnn_part_t *p, const char *root, mnn_diag_t *d)
{
    char name[MNN_CUT_PROGRAM_MAX + 48];
    mnn_cut_part_name(name, sizeof name, p->head.id, p->head.index, p->head.program);
    int dfd = parts_dir(root, 0, d);
    int fd = dfd < 0 ? -1 : openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat sb;
    int rc = 0;
    if (fd < 0 || fstat(fd, &sb) != 0)
        rc = mnn_fail(d, MNN_EIO, "the part of stage %" PRIu32 " (%s) of cut %" PRIu64 ": %s/%s/%s: "
                      "%s%s", p->head.index, p->head.program, p->head.id, root, MNN_CUT_PARTS,
                      name, strerror(errno), errno == ENOENT ? " (the stage and this one must "
                      "share one --ckpt-dir)" : "");
    else if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != p->head.bytes)
        rc = mnn_fail(d, MNN_ECORRUPT, "the part of stage %" PRIu32 " (%s) of cut %" PRIu64
                      ": %s/%s/%s is %s, and its header says %" PRIu64 " bytes", p->head.index,
                      p->head.program, p->head.id, root, MNN_CUT_PARTS, name,
                      S_ISREG(sb.st_mode) ? "another size" : "no regular file", p->head.bytes);
    if (rc == 0 && p->cap < p->head.bytes) {
        unsigned char *nd = realloc(p->data, p->head.bytes ? (size_t)p->head.bytes : 1);
        if (!nd)
            rc = mnn_fail(d, MNN_ENOMEM, "out of memory for a part of %" PRIu64 " bytes",
                          p->head.bytes);
        else
            p->data = nd, p->cap = (size_t)p->head.bytes;
    }
    p->len = 0;
    while (rc == 0 && p->len < p->head.bytes) {
        ssize_t r = read(fd, p->data + p->len, (size_t)p->head.bytes - p->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            rc = mnn_fail(d, MNN_EIO, "%s/%s/%s: %s", root, MNN_CUT_PARTS, name,
                          r < 0 ? strerror(errno) : "shorter than it was");
        else
            p->len += (size_t)r;
    }
    if (fd >= 0)
        close(fd);
    p->pad = 1; /* no data lines may follow */
    if (rc == 0)
        rc = mnn_part_finish(p, d);
    if (rc == 0 && unlinkat(dfd, name, 0) != 0)
        rc = mnn_fail(d, MNN_EIO, "%s/%s/%s: %s", root, MNN_CUT_PARTS, name, strerror(errno));
    if (dfd >= 0)
        close(dfd);
    return rc;
}

void mnn_part_begin(mnn_part_t *p, const mnn_cutline_t *head)
{
    p->head = *head;
    p->len = 0;
    p->pad = 0;
}

static int unb64(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

int mnn_part_data(mnn_part_t *p, const char *line, size_t len, mnn_diag_t *d)
{
    if (len && line[len - 1] == '\r')
        len--;
    const char *s = line + 2;
    size_t n = len - 2;
    const char *who = p->head.program;
    if (n == 0 || n % 4 || n > MNN_CUT_LINE || p->pad)
        return mnn_fail(d, MNN_EFORMAT, "the part of stage %" PRIu32 " (%s) of cut %" PRIu64
                        ": %s", p->head.index, who, p->head.id,
                        p->pad ? "data after its end" : "a data line of a wrong length");
    size_t most = n / 4 * 3;
    if (p->len + most > p->head.bytes + 2) /* a line decodes to most - (0 to 2) */
        return mnn_fail(d, MNN_ELIMIT, "the part of stage %" PRIu32 " (%s) of cut %" PRIu64
                        ": more data than the %" PRIu64 " bytes its header says",
                        p->head.index, who, p->head.id, p->head.bytes);
    if (p->cap < p->len + most) {
        /* doubling, but never past the most the header allows (bytes + 2,
         * which the check above keeps len + most within) */
        size_t cap = p->cap * 2, most_ever = (size_t)p->head.bytes + 2;
        if (cap > most_ever)
            cap = most_ever;
        if (cap < p->len + most)
            cap = p->len + most;
        unsigned char *nd = realloc(p->data, cap);
        if (!nd)
            return mnn_fail(d, MNN_ENOMEM, "out of memory for a part of %" PRIu64 " bytes",
                            p->head.bytes);
        p->data = nd;
        p->cap = cap;
    }
    for (size_t i = 0; i < n; i += 4) {
        int a = unb64((unsigned char)s[i]), b = unb64((unsigned char)s[i + 1]);
        int c = s[i + 2] == '=' ? -2 : unb64((unsigned char)s[i + 2]);
        int e = s[i + 3] == '=' ? -2 : unb64((unsigned char)s[i + 3]);
        int last = i + 4 == n;
        if (a < 0 || b < 0 || c == -1 || e == -1 || (c == -2 && e != -2) ||
            ((c == -2 || e == -2) && !last))
            return mnn_fail(d, MNN_EFORMAT, "the part of stage %" PRIu32 " (%s) of cut %" PRIu64
                            ": not base64", p->head.index, who, p->head.id);
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)(c < 0 ? 0 : c) << 6 |
                     (uint32_t)(e < 0 ? 0 : e);
        p->data[p->len++] = (unsigned char)(v >> 16);
        if (c >= 0)
            p->data[p->len++] = (unsigned char)(v >> 8);
        if (e >= 0)
            p->data[p->len++] = (unsigned char)v;
        if (e < 0)
            p->pad = 1;
    }
    if (p->len > p->head.bytes)
        return mnn_fail(d, MNN_ELIMIT, "the part of stage %" PRIu32 " (%s) of cut %" PRIu64
                        ": more data than the %" PRIu64 " bytes its header says",
                        p->head.index, who, p->head.id, p->head.bytes);
    /* a line shorter than a full one ends the part */
    if (n < MNN_CUT_LINE)
        p->pad = 1;
    return 0;
}

int mnn_part_finish(const mnn_part_t *p, mnn_diag_t *d)
{
    char hex[17];
    if (p->len != p->head.bytes)
        return mnn_fail(d, MNN_ECORRUPT, "the part of stage %" PRIu32 " (%s) of cut %" PRIu64
                        ": %zu bytes of the %" PRIu64 " its header says (truncated)",
                        p->head.index, p->head.program, p->head.id, p->len, p->head.bytes);
    mnn_hash_hex(mnn_hash64(p->data ? (const void *)p->data : "", p->len), hex);
    if (strcmp(hex, p->head.xxh3))
        return mnn_fail(d, MNN_ECORRUPT, "the part of stage %" PRIu32 " (%s) of cut %" PRIu64
                        ": hash %s, but its header says %s (damaged on the way)",
                        p->head.index, p->head.program, p->head.id, hex, p->head.xxh3);
    return 0;
}

void mnn_part_free(mnn_part_t *p)
{
    free(p->data);
    memset(p, 0, sizeof *p);
}
