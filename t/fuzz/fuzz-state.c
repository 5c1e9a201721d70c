/* fuzz-state - the training state reader (mnn_state_parse: state.yaml).
 *
 * Input: state.yaml's text, handed over without a terminating NUL.
 * Invariants: a state accepted has threads in 1..1024, a generator state
 * that is not all zero, a finite non-negative loss sum and no more hits
 * than records; a refused one says why. */
#include "fuzz.h"

#include <math.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fz_xmalloc(size);
    memcpy(text, data, size);
    mnn_train_state_t st;
    mnn_diag_t d = {""};
    int rc = mnn_state_parse(&st, text, size, "fuzz/state.yaml", &d);
    free(text);
    FZ_NOTE("mnn_state_parse: %d %s\n", rc, d.msg);
    if (rc < 0) {
        FZ_CHECK(rc >= MNN_ELIMIT && (d.msg[0] || rc == MNN_ENOMEM));
        return 0;
    }
    FZ_CHECK(rc == 0);
    FZ_CHECK(st.threads >= 1 && st.threads <= 1024);
    FZ_CHECK(st.rng.s[0] | st.rng.s[1] | st.rng.s[2] | st.rng.s[3]);
    FZ_CHECK(isfinite(st.loss_sum) && st.loss_sum >= 0);
    FZ_CHECK(st.correct <= st.records_seen);
    return 0;
}
