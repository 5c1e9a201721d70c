/* fuzz-manifest - the checkpoint manifest reader (mnn_manifest_parse): the
 * seal, the YAML, the files list, the embedded model spec and the sizes it
 * allows.
 *
 * Input: one settings byte, then manifest.yaml's text.
 *   byte 0, bit 0: reseal: the harness replaces (or adds) the last line
 *   'manifest_xxh3: HEX' with the hash of the bytes before it, so that
 *   mutations get past the seal to the YAML and the checks behind it.
 * Invariants: a manifest accepted has a valid spec, at most
 * MNN_MANIFEST_MAX_FILES plain, distinct names with 16-hex-digit hashes,
 * each found by mnn_manifest_find; a refused one says why. */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    char *text;
    if (data[0] & 1)
        text = fz_reseal(in, len, "manifest_xxh3: ", &len);
    else {
        text = fz_xmalloc(len); /* no NUL after it */
        memcpy(text, in, len);
    }
    mnn_manifest_t mf;
    mnn_diag_t d = {""};
    int rc = mnn_manifest_parse(&mf, text, len, "fuzz/manifest.yaml", &d);
    free(text);
    FZ_NOTE("mnn_manifest_parse: %d %s\n", rc, d.msg);
    if (rc < 0) {
        FZ_CHECK(rc >= MNN_ELIMIT && (d.msg[0] || rc == MNN_ENOMEM));
        /* nothing left to free */
        FZ_CHECK(mf.files == NULL && mf.parent == NULL && !mf.has_spec);
        return 0;
    }
    FZ_CHECK(rc == 0 && mf.has_spec);
    FZ_CHECK(mnn_spec_validate(&mf.spec, &d) == 0);
    FZ_CHECK(mf.nfiles <= MNN_MANIFEST_MAX_FILES);
    for (size_t i = 0; i < mf.nfiles; i++) {
        const mnn_manifest_file_t *f = &mf.files[i];
        FZ_CHECK(f->name[0] && f->name[0] != '.' && !strchr(f->name, '/'));
        FZ_CHECK(strlen(f->name) < sizeof f->name && strcmp(f->name, "manifest.yaml"));
        FZ_CHECK(strlen(f->xxh3) == 16 && strspn(f->xxh3, "0123456789abcdef") == 16);
        FZ_CHECK(mnn_manifest_find(&mf, f->name) == f);
    }
    FZ_CHECK(mnn_manifest_find(&mf, "model.safetensors") != NULL);
    FZ_CHECK(mnn_manifest_find(&mf, "state.yaml") != NULL);
    FZ_CHECK(strlen(mf.tool) < sizeof mf.tool && strlen(mf.created) < sizeof mf.created);
    if (mf.parent)
        FZ_CHECK(strlen(mf.parent) < ((size_t)1 << 20));
    mnn_manifest_free(&mf);
    return 0;
}
