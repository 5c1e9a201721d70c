/* fuzz-replay - replay-buffer's state file reader (mnn_replay_parse in
 * lib/replay.c).
 *
 * Input: one settings byte, then the state file.
 *   byte 0: policy (b & 3) % 3 (reservoir, class-balanced, recent); 0x04: the
 *   capacity is given (as -c does); 0x08: reseal: the harness replaces (or
 *   adds) the last line 'end HEX' with the hash of the bytes before it, so
 *   that mutations get past it; capacity 1 + (b >> 4).
 * A state file that says capacity N makes the program allocate N slots, as
 * --capacity N would (up to 10^8, by design): above 4096 the harness gives
 * the capacity instead, so that no input is an out-of-memory report and
 * AddressSanitizer's quarantine does not fill with large blocks (whose
 * recycling made a spurious 1 s timeout on a loaded machine).  Likewise
 * "classes N" makes it allocate per-class counters for N classes (up to
 * 10^6) before it reads a class line: 24 MB and 0.3 s under
 * AddressSanitizer for a 100-byte file; inputs that say 4097 to 10^6
 * classes are skipped.
 * Invariants: a buffer loaded holds at most its capacity, each record a
 * line of its own; class-balanced: the per-class counts, slots and the list
 * of classes present agree with the records held.  A state refused says
 * why, naming the file, and leaves the buffer as it was. */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_quiet();
    return 0;
}

/* The largest number a "KEY N" line of the file may say, as mnn_replay_parse
 * reads it (sscanf "KEY %zu": no space needed, "-1" is huge), or 0. */
static size_t file_count(const char *s, const char *key)
{
    char nkey[32], fmt[40];
    size_t most = 0, c;
    snprintf(nkey, sizeof nkey, "\n%s", key);
    snprintf(fmt, sizeof fmt, "%s %%zu", key);
    for (const char *p = s; (p = strstr(p, nkey)); p++)
        if (sscanf(p + 1, fmt, &c) == 1 && c > most)
            most = c;
    return most;
}

static void check_buffer(const mnn_replay_t *b)
{
    FZ_CHECK(b->n <= b->cap && b->cap > 0);
    for (size_t i = 0; i < b->n; i++) {
        const mnn_replay_rec_t *r = &b->rec[i];
        FZ_CHECK(r->text && r->len > 0 && r->len <= r->cap && r->rec > 0);
        FZ_CHECK(r->text[r->len - 1] == '\n' && !memchr(r->text, '\n', r->len - 1));
    }
    if (b->policy == MNN_REPLAY_RECENT)
        FZ_CHECK(b->head < b->cap && (b->n == b->cap || b->head == 0));
    if (b->policy != MNN_REPLAY_CLASS)
        return;
    size_t held = 0, present = 0;
    for (size_t j = 0; j < b->nclasses; j++) {
        held += b->class_held[j];
        FZ_CHECK(b->class_held[j] <= b->class_seen[j]);
        if (!b->class_held[j])
            continue;
        FZ_CHECK(present < b->npresent && b->present[present] == j);
        present++;
        for (size_t k = 0; k < b->class_held[j]; k++) {
            const size_t slot = b->members[j][k];
            FZ_CHECK(slot < b->n && b->label[slot] == (int32_t)j);
            FZ_CHECK(k == 0 || b->members[j][k - 1] < slot);
        }
    }
    FZ_CHECK(held == b->n && present == b->npresent);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const mnn_replay_policy_t policy = (mnn_replay_policy_t)((data[0] & 3) % 3);
    int cap_given = (data[0] >> 2) & 1;
    const size_t cap = 1 + (data[0] >> 4);
    size_t len = size - 1;
    char *text = data[0] & 8 ? fz_reseal((const char *)data + 1, len, "end ", &len)
                             : fz_strndup(data + 1, len); /* data[size] is 0 */
    if (file_count(text, "capacity") > 4096)
        cap_given = 1;
    const size_t ncl = file_count(text, "classes");
    if (ncl > 4096 && ncl <= MNN_REPLAY_MAX_CLASS) {
        free(text);
        return 0;
    }
    mnn_replay_t b;
    mnn_diag_t d = {""};
    FZ_CHECK(mnn_replay_init(&b, policy, cap, 1) == 0);
    /* the bytes alone, no NUL after them: a read past the end is caught */
    char *bytes = fz_xmalloc(len);
    memcpy(bytes, text, len);
    int rc = mnn_replay_parse(&b, bytes, len, "fuzz.state", cap_given, &d);
    free(bytes);
    FZ_NOTE("mnn_replay_parse: %d %s\n", rc, d.msg);
    if (rc == 1) {
        check_buffer(&b);
        FZ_CHECK(b.policy == policy && (!cap_given || b.cap == cap));
    } else {
        FZ_CHECK(rc < 0 && rc >= MNN_ELIMIT && !strncmp(d.msg, "fuzz.state", 10));
        FZ_CHECK(b.policy == policy && b.cap == cap && b.n == 0 && b.seen == 0 && !b.alloc);
    }
    mnn_replay_free(&b);
    free(text);
    return 0;
}
