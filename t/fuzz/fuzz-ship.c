/* fuzz-ship - ckpt-ship --receive: the receiving end of protocol 1
 * (ship_receive in bin/ship-recv.c; the protocol is described in
 * bin/ship.h).
 *
 * Input: one settings byte, then the sender's byte stream.
 *   byte 0: --keep (b % 4), 0 keeping all.
 * The stream comes from a memfd (a regular file: poll() finds it readable,
 * its end is the sender going away), --timeout is 1 s, the answers go to
 * /dev/null, DIR is a scratch directory on /dev/shm removed after each
 * input.  A stream (OFFER - - -) is checked as a whole archive by
 * mnn_ckpt_unpack and named by mnn_ckpt_list, so archives get here too.
 * Invariants: the exit status is 0 or 1; nothing is written beside DIR;
 * what DIR holds is regular files (published archives and partial files)
 * and at most a 'latest' link naming one of the files. */
#include "fuzz.h"

#include <dirent.h>

#include "cli.h"
#include "ship.h"

static int devnull = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_quiet();
    devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    FZ_CHECK(devnull >= 0);
    return 0;
}

static void check_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    struct dirent *de;
    FZ_CHECK(dp != NULL);
    while ((de = readdir(dp))) {
        struct stat sb;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        FZ_CHECK(fstatat(dirfd(dp), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0);
        if (!strcmp(de->d_name, "latest")) {
            char t[NAME_MAX_ + 1];
            ssize_t k = readlinkat(dirfd(dp), "latest", t, sizeof t - 1);
            FZ_CHECK(S_ISLNK(sb.st_mode) && k > 0);
            t[k] = 0;
            FZ_CHECK(name_ok(t) && !strchr(t, '/'));
            struct stat tb;
            FZ_CHECK(fstatat(dirfd(dp), t, &tb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(tb.st_mode));
        } else
            FZ_CHECK(S_ISREG(sb.st_mode));
    }
    closedir(dp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *top = fz_scratch("ship");
    char dir[256];
    snprintf(dir, sizeof dir, "%s/d", top);
    opt.timeout = 1;
    opt.keep = data[0] % 4;
    opt.verbose = 0;
    opt.quiet = 1;
    int in = fz_memfd(data + 1, size - 1);
    int status = ship_receive(dir, in, devnull);
    close(in);
    FZ_NOTE("ship_receive: %d\n", status);
    FZ_CHECK(status == EXIT_OK || status == EXIT_RUNTIME);
    check_dir(dir);
    FZ_CHECK(mnn_remove_tree(dir) == 0);
    FZ_CHECK(fz_dir_empty(top));
    return 0;
}
