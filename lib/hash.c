/* hash.c - XXH3-64, the one hash of mini-nn (manifests, archives, the
 * replay-buffer state, ckpt-ship's transfers), behind an API of its own so
 * that no other module or program includes xxhash.h. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <xxhash.h>

/* An mnn_hash_t is libxxhash's own state, which only it allocates and knows
 * the layout of. */
#define ST(h) ((XXH3_state_t *)(void *)(h))

mnn_hash_t *mnn_hash_new(void)
{
    XXH3_state_t *st = XXH3_createState();
    if (st)
        XXH3_64bits_reset(st);
    return (mnn_hash_t *)(void *)st;
}

void mnn_hash_reset(mnn_hash_t *h) { XXH3_64bits_reset(ST(h)); }

void mnn_hash_update(mnn_hash_t *h, const void *p, size_t n)
{
    if (n)
        XXH3_64bits_update(ST(h), p, n);
}

uint64_t mnn_hash_digest(const mnn_hash_t *h)
{
    return XXH3_64bits_digest((const XXH3_state_t *)(const void *)h);
}

void mnn_hash_free(mnn_hash_t *h)
{
    if (h)
        XXH3_freeState(ST(h));
}

uint64_t mnn_hash64(const void *p, size_t n) { return XXH3_64bits(p, n); }

void mnn_hash_hex(uint64_t v, char hex[17]) { snprintf(hex, 17, "%016llx", (unsigned long long)v); }

int mnn_hash_fd(int fd, char hex[17], uint64_t *bytes)
{
    mnn_hash_t *h = mnn_hash_new();
    char *buf = malloc(1 << 20);
    int rc = MNN_ENOMEM;
    uint64_t total = 0;
    if (!h || !buf)
        goto out;
    rc = MNN_EIO;
    for (;;) {
        ssize_t r = read(fd, buf, 1 << 20);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out;
        if (r == 0)
            break;
        mnn_hash_update(h, buf, (size_t)r);
        total += (uint64_t)r;
    }
    mnn_hash_hex(mnn_hash_digest(h), hex);
    *bytes = total;
    rc = 0;
out:;
    int e = errno;
    free(buf);
    mnn_hash_free(h);
    errno = e;
    return rc;
}

int mnn_hash_file(const char *path, char hex[17], uint64_t *bytes)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return MNN_EIO;
    int rc = mnn_hash_fd(fd, hex, bytes), e = errno;
    close(fd);
    errno = e;
    return rc;
}
