/* ship-src.c - what a ckpt-ship SRC is: a checkpoint archive (hashed
 * before it is offered), a checkpoint directory (packed on the fly by a
 * thread, twice: once for its size and XXH3, once to send; a checkpoint
 * root means its 'latest'), or '-', an archive on stdin (hashed as it goes).
 * See ship.h. */
#include <config.h>

#include "cli.h"
#include "ship.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- a directory packed on the fly ---------------------------------------- */

static void *pack_main(void *arg)
{
    packer_t *p = arg;
    mnn_pack_opts_t o = {.level = opt.level, .threads = 0};
    p->rc = mnn_ckpt_pack(p->dir, p->fd, &o, &p->d);
    close(p->fd);
    return NULL;
}

/* The packed directory as a stream on *fd, from a thread. */
int pack_start(packer_t *p, const char *dir, int *fd, char *why, size_t wsize)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        setmsg(why, wsize, "pipe: %s", strerror(errno));
        return -1;
    }
    fcntl(pfd[1], F_SETPIPE_SZ, (int)CHUNK);
    p->dir = dir;
    p->fd = pfd[1];
    p->rc = 0;
    p->d.msg[0] = 0;
    if (pthread_create(&p->t, NULL, pack_main, p) != 0) {
        close(pfd[0]);
        close(pfd[1]);
        setmsg(why, wsize, "cannot start packing");
        return -1;
    }
    *fd = pfd[0];
    return 0;
}

/* Waits for the packer (after closing the reading end); 0 or -1 with why. */
int pack_finish(packer_t *p, int fd, char *why, size_t wsize)
{
    close(fd);
    pthread_join(p->t, NULL);
    if (p->rc < 0) {
        setmsg(why, wsize, "cannot pack: %s", p->d.msg[0] ? p->d.msg : mnn_strerror(p->rc));
        return -1;
    }
    return 0;
}

/* ---- sources --------------------------------------------------------------- */

/* Learns what SRC is, its name, and (unless a stream) its size and XXH3. */
int source_open(source_t *s, const char *arg, char *why, size_t wsize)
{
    struct stat sb;
    memset(s, 0, sizeof *s);
    s->arg = arg;
    if (!strcmp(arg, "-")) {
        s->kind = SRC_STDIN;
        if (opt.name)
            snprintf(s->name, sizeof s->name, "%s", opt.name);
        return 0;
    }
    /* a directory ckpt-ship received into stands for the archive its latest
     * names (mnn_ckpt_resolve): a relay ships what it received */
    mnn_diag_t rd = {""};
    char *path = NULL;
    int kind = mnn_ckpt_resolve(arg, &path, &rd);
    if (kind < 0) {
        setmsg(why, wsize, "%s", kind == MNN_EIO ? strerror(errno) : mnn_strerror(kind));
        return -1;
    }
    if (kind == 1 && strcmp(path, arg)) {
        s->arg = arg = s->resolved = path;
    } else
        free(path);
    if (stat(arg, &sb) < 0) {
        setmsg(why, wsize, "%s", strerror(errno));
        return -1;
    }
    if (S_ISDIR(sb.st_mode)) {
        mnn_manifest_t mf;
        mnn_diag_t d = {""};
        s->kind = SRC_DIR;
        if (mnn_manifest_load(&mf, arg, &s->real, &d) < 0) {
            setmsg(why, wsize, "not a checkpoint directory: %s", d.msg);
            return -1;
        }
        mnn_manifest_free(&mf);
        /* the directory 'latest' points to now: both passes pack it, even if
         * latest moves on meanwhile */
        char *r = realpath(s->real, NULL);
        if (!r) {
            setmsg(why, wsize, "%s: %s", s->real, strerror(errno));
            return -1;
        }
        free(s->real);
        s->real = r;
        const char *base = strrchr(s->real, '/');
        base = base ? base + 1 : s->real;
        if (opt.name)
            snprintf(s->name, sizeof s->name, "%s", opt.name);
        else
            snprintf(s->name, sizeof s->name, "%.246s.tar.zst", base);
        /* pass 1: the archive's size and hash (packing is deterministic) */
        packer_t p;
        int fd;
        double t0 = mono_now();
        if (pack_start(&p, s->real, &fd, why, wsize) < 0)
            return -1;
        mnn_hash_t *st = mnn_hash_new();
        char *buf = malloc(CHUNK);
        ssize_t k = -1;
        if (st && buf) {
            mnn_hash_reset(st);
            while ((k = read_some(fd, buf, CHUNK)) > 0) {
                mnn_hash_update(st, buf, (size_t)k);
                s->size += (uint64_t)k;
            }
            mnn_hash_hex(mnn_hash_digest(st), s->hex);
        }
        int e = errno;
        free(buf);
        mnn_hash_free(st);
        if (pack_finish(&p, fd, why, wsize) < 0)
            return -1;
        if (k < 0) {
            setmsg(why, wsize, "cannot pack: %s", strerror(e));
            return -1;
        }
        if (opt.verbose)
            warnx_("%s: packed %s: %" PRIu64 " bytes, XXH3 %s, in %.3f s", printable(s->name),
                   s->real, s->size, s->hex, mono_now() - t0);
    } else if (S_ISREG(sb.st_mode)) {
        s->kind = SRC_FILE;
        if (!mnn_ckpt_is_archive(arg)) {
            setmsg(why, wsize, "not a checkpoint archive (no zstd frame at its start)");
            return -1;
        }
        /* the name it has: a received-into directory's latest is a link */
        char *real = realpath(arg, NULL);
        const char *r = real ? real : arg, *base = strrchr(r, '/');
        snprintf(s->name, sizeof s->name, "%s", opt.name ? opt.name : base ? base + 1 : r);
        free(real);
        /* read, not mapped: a file cut short meanwhile is an error, not
         * SIGBUS; the time hides behind ssh's handshake */
        if (mnn_hash_file(arg, s->hex, &s->size) < 0) {
            setmsg(why, wsize, "%s", strerror(errno));
            return -1;
        }
    } else {
        setmsg(why, wsize, "not a checkpoint archive or directory");
        return -1;
    }
    s->known = 1;
    if (!name_ok(s->name)) {
        setmsg(why, wsize, "'%s' cannot be a file name under the destination", printable(s->name));
        return -1;
    }
    return 0;
}

void source_free(source_t *s)
{
    free(s->real);
    free(s->resolved);
    s->real = s->resolved = NULL;
}
