/* fuzz.h - what the libFuzzer harnesses of t/fuzz share: a memfd holding an
 * input, scratch directories on /dev/shm, resealing a hashed last line,
 * invariant checks, and a quiet stderr.
 *
 * Every harness is `int LLVMFuzzerTestOneInput(const uint8_t *, size_t)`:
 * it keeps no state from one input to the next (scratch directories are
 * emptied after each), frees what it allocates and prints nothing per
 * input.  A broken invariant (FZ_CHECK) aborts, which libFuzzer reports as
 * a crash with the input saved.  Included by exactly one .c per harness. */
#ifndef MNN_FUZZ_H
#define MNN_FUZZ_H

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mini-nn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A broken invariant: the message straight to fd 2 (stderr the FILE is
 * /dev/null, see fz_quiet), then abort(). */
static inline __attribute__((noreturn)) void fz_fail(const char *what, const char *file, int line)
{
    char msg[512];
    int n = snprintf(msg, sizeof msg, "fuzz: %s:%d: invariant failed: %s\n", file, line, what);
    if (n > 0 && write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1) < 0)
        n = 0;
    abort();
}
#define FZ_CHECK(c) ((c) ? (void)0 : fz_fail(#c, __FILE__, __LINE__))

/* With -DFZ_TRACE (by hand, never in the build), what a harness notes on
 * each input goes to fd 2: e.g. why a seed is refused. */
#ifdef FZ_TRACE
#define FZ_NOTE(...) dprintf(2, "fuzz: " __VA_ARGS__)
#else
#define FZ_NOTE(...) ((void)0)
#endif

/* Out of memory in the harness itself: not a finding. */
static inline void *fz_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fz_fail("malloc in the harness", __FILE__, __LINE__);
    return p;
}

/* The programs' warnings (bin/cli.c's warnx_) go to the stdio stream
 * stderr: point it at /dev/null.  libFuzzer keeps the stream it found at
 * start-up for its own output, and the sanitizers write to fd 2, so their
 * reports still appear. */
static inline void fz_quiet(void)
{
    FILE *null = fopen("/dev/null", "w");
    if (null)
        stderr = null;
}

/* A memfd holding data[0, size), its offset at 0.  A regular file: poll()
 * finds it readable, and a read at its end returns 0. */
static inline int fz_memfd(const void *data, size_t size)
{
    int fd = memfd_create("mnn-fuzz", MFD_CLOEXEC);
    FZ_CHECK(fd >= 0);
    FZ_CHECK(mnn_write_all(fd, data, size) == 0);
    FZ_CHECK(lseek(fd, 0, SEEK_SET) == 0);
    return fd;
}

/* A directory /dev/shm/mnn-fuzz-TAG-PID of this process (made once, removed
 * at exit); the harness empties it after each input. */
static char fz_scratch_path[128];
static inline void fz_scratch_remove(void) { mnn_remove_tree(fz_scratch_path); }
static inline const char *fz_scratch(const char *tag)
{
    if (!fz_scratch_path[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fz_scratch_path, sizeof fz_scratch_path, "%s/mnn-fuzz-%s-%ld", base, tag,
                 (long)getpid());
        mnn_remove_tree(fz_scratch_path);
        FZ_CHECK(mkdir(fz_scratch_path, 0700) == 0);
        atexit(fz_scratch_remove);
    }
    return fz_scratch_path;
}

/* 1 if directory path holds nothing (or is not there). */
static inline int fz_dir_empty(const char *path)
{
    DIR *dp = opendir(path);
    struct dirent *de;
    int empty = 1;
    if (!dp)
        return 1;
    while (empty && (de = readdir(dp)))
        empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    closedir(dp);
    return empty;
}

/* A copy of text[0, len) whose last line is PREFIX followed by the XXH3-64
 * of every byte before that line in 16 hex digits and '\n', as the
 * manifest's seal (PREFIX "manifest_xxh3: ") and the replay-buffer state's
 * end line (PREFIX "end ") are.  A last line that starts with PREFIX is
 * replaced; a last line without its '\n' gets one.  *out_len receives the
 * length; the copy is NUL-terminated (free it). */
static inline char *fz_reseal(const char *text, size_t len, const char *prefix, size_t *out_len)
{
    const size_t np = strlen(prefix);
    size_t body = len;
    /* the start of the last line */
    size_t ls = len;
    while (ls > 0 && text[ls - 1] != '\n')
        ls--;
    if (ls == len && len > 0) { /* ends with '\n': the line before it */
        ls = len - 1;
        while (ls > 0 && text[ls - 1] != '\n')
            ls--;
    }
    if (len - ls >= np && !memcmp(text + ls, prefix, np))
        body = ls;
    const int nl = body > 0 && text[body - 1] != '\n';
    char *out = fz_xmalloc(body + nl + np + 16 + 2);
    memcpy(out, text, body);
    if (nl)
        out[body++] = '\n';
    snprintf(out + body, np + 18, "%s%016llx\n", prefix,
             (unsigned long long)mnn_hash64(out, body));
    *out_len = body + np + 17;
    return out;
}

/* A NUL-terminated copy of data[0, size) (free it). */
static inline char *fz_strndup(const void *data, size_t size)
{
    char *s = fz_xmalloc(size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

#endif
