/* mkcut - a test helper: commits cut ID of the pipeline stream on stdin as
 * a cut checkpoint DIR, as the last stage of a pipeline would, with every
 * part that came in the cut's block and an untrained model of SPEC; so that
 * the stages before sgd-train can be resumed from a cut in tests.
 *
 *   mkcut SPEC DIR ID <stream
 *
 * Exit 0, or 1 with a message (a cut missing, a part damaged). */
#include <config.h>

#include "mini-nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *msg)
{
    fprintf(stderr, "mkcut: %s\n", msg);
    return 1;
}

int main(int argc, char **argv)
{
    uint64_t id;
    if (argc != 4 || mnn_parse_u64(argv[3], &id) < 0 || id == 0)
        return fail("usage: mkcut SPEC DIR ID <stream");
    mnn_diag_t d = {""};
    mnn_spec_t spec;
    mnn_model_t m;
    mnn_optim_t o;
    mnn_train_state_t st;
    memset(&st, 0, sizeof st);
    st.threads = 1;
    if (mnn_spec_load_file(&spec, argv[1], &d) < 0 || mnn_model_init(&m, &spec) < 0 ||
        mnn_optim_init(&o, &m.spec.opt, m.nparams) < 0)
        return fail(d.msg[0] ? d.msg : "cannot make the model");
    mnn_rng_seed(&st.rng, spec.seed);
    mnn_model_init_weights(&m, &st.rng);

    mnn_linereader_t lr;
    if (mnn_lr_init(&lr, 0, (size_t)1 << 20) < 0)
        return fail("out of memory");
    mnn_part_t parts[MNN_CUT_MAX_STAGES], *cur = NULL;
    mnn_stage_part_t sp[MNN_CUT_MAX_STAGES];
    memset(parts, 0, sizeof parts);
    uint32_t n = 0;
    int in = 0, done = 0;
    const char *line;
    size_t len;
    while (!done && mnn_lr_next(&lr, &line, &len) == 0) {
        mnn_cutline_t l;
        if (mnn_cutline_parse(line, len, &l, &d) < 0)
            return fail(d.msg);
        if (l.kind == MNN_CUT_BARRIER && l.id == id)
            in = 1;
        else if (in && l.kind == MNN_CUT_PART) {
            if (l.index != n || n + 1 >= MNN_CUT_MAX_STAGES)
                return fail("a part out of place");
            cur = &parts[n++];
            mnn_part_begin(cur, &l);
        } else if (in && l.kind == MNN_CUT_DATA) {
            if (!cur || mnn_part_data(cur, line, len, &d) < 0)
                return fail(cur ? d.msg : "data before a part");
        } else if (in && l.kind == MNN_CUT_END)
            done = 1;
    }
    if (!done)
        return fail("no such cut, or its block did not end");
    for (uint32_t i = 0; i < n; i++) {
        if (mnn_part_finish(&parts[i], &d) < 0)
            return fail(d.msg);
        sp[i].index = i;
        memcpy(sp[i].program, parts[i].head.program, sizeof sp[i].program);
        sp[i].data = parts[i].data ? (const void *)parts[i].data : "";
        sp[i].bytes = parts[i].len;
    }
    mnn_cut_ckpt_t cut = {.id = id, .self = n, .self_program = "mkcut", .parts = sp};
    if (mnn_ckpt_write_cut(argv[2], &m, &o, &st, NULL, 1700000000, 0, &cut, &d) < 0)
        return fail(d.msg);
    for (uint32_t i = 0; i < n; i++)
        mnn_part_free(&parts[i]);
    mnn_lr_free(&lr);
    mnn_optim_free(&o);
    mnn_model_free(&m);
    mnn_spec_free(&spec);
    return 0;
}
