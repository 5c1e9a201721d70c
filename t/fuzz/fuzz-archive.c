/* fuzz-archive - the checkpoint archive reader (lib/archive.c: zstd and tar
 * through libarchive, the manifest inside, the files it lists).
 *
 * Input: a .tar.zst, put in a memfd.  Each input is verified
 * (mnn_ckpt_unpack with no target); one in two is listed (mnn_ckpt_list)
 * first and one in four extracted into a scratch directory on /dev/shm,
 * emptied afterwards: which, by the input's XXH3, so that the bytes stay
 * the archive's.  (Each pass through the reader costs AddressSanitizer a
 * few fresh mappings for libarchive's and the reader's buffers: a few
 * milliseconds.)
 * Invariants: a failed extraction leaves nothing behind in the target; a
 * successful one leaves exactly target/NAME, whose manifest loads and whose
 * files verify against it, and verification agrees with extraction; a
 * failure says why.  An extracted checkpoint is loaded too
 * (mnn_ckpt_load). */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_quiet();
    return 0;
}

typedef struct {
    size_t n;
    int bad_path;
} list_t;

static int count(void *ctx, const char *path, uint64_t size, char type)
{
    list_t *l = ctx;
    (void)size;
    FZ_CHECK(path != NULL);
    FZ_CHECK(type == 'f' || type == 'd' || type == 'l' || type == '?');
    l->bad_path |= path[0] == 0;
    return ++l->n >= 4096; /* enough */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = fz_memfd(data, size);
    mnn_diag_t d = {""};
    list_t l = {0, 0};
    const uint64_t pick = mnn_hash64(data, size);
    int listed = 1, rc;
    if (pick & 4) {
        listed = mnn_ckpt_list(fd, "fuzz.tar.zst", count, &l, &d);
        FZ_CHECK(listed == 0 || (listed >= MNN_ELIMIT && d.msg[0]));
    }

    FZ_CHECK(lseek(fd, 0, SEEK_SET) == 0);
    mnn_manifest_t info;
    d.msg[0] = 0;
    int verified = mnn_ckpt_unpack(fd, "fuzz.tar.zst", NULL, NULL, &info, &d);
    FZ_NOTE("list %d, unpack %d: %s\n", listed, verified, d.msg);
    FZ_CHECK(verified == 0 || (verified >= MNN_ELIMIT && d.msg[0]));
    if (verified == 0) {
        FZ_CHECK(listed == 1 || (listed == 0 && !l.bad_path && l.n >= 2));
        FZ_CHECK(info.has_spec);
        mnn_manifest_free(&info);
    }

    if (pick % 4 == 0) {
        const char *target = fz_scratch("archive");
        char *out = NULL;
        FZ_CHECK(lseek(fd, 0, SEEK_SET) == 0);
        d.msg[0] = 0;
        rc = mnn_ckpt_unpack(fd, "fuzz.tar.zst", target, &out, &info, &d);
        FZ_CHECK((rc == 0) == (verified == 0));
        if (rc < 0) {
            FZ_CHECK(d.msg[0] && out == NULL);
            FZ_CHECK(fz_dir_empty(target));
        } else {
            size_t tl = strlen(target);
            FZ_CHECK(out && !strncmp(out, target, tl) && out[tl] == '/');
            FZ_CHECK(!strchr(out + tl + 1, '/') && out[tl + 1] != '.');
            mnn_manifest_t mf;
            char *real = NULL;
            FZ_CHECK(mnn_manifest_load(&mf, out, &real, &d) == 0);
            FZ_CHECK(mnn_manifest_verify_dir(&mf, real, &d) == 0);
            FZ_CHECK(mf.nfiles == info.nfiles);
            mnn_manifest_free(&mf);
            /* and it loads: the model rebuilt from its spec, its weights */
            mnn_model_t m;
            mnn_optim_t o;
            mnn_train_state_t st;
            rc = mnn_ckpt_load(real, &m, &o, &st, &d);
            FZ_CHECK(rc == 0 || (rc >= MNN_ELIMIT && d.msg[0]));
            if (rc == 0) {
                mnn_optim_free(&o);
                mnn_model_free(&m);
            }
            free(real);
            mnn_manifest_free(&info);
            free(out);
            FZ_CHECK(mnn_remove_tree(target) == 0 && mkdir(target, 0700) == 0);
        }
    }
    close(fd);
    return 0;
}
