/* fuzz-spec - the model spec reader (mnn_spec_load_string over libyaml,
 * with lib/yamlutil.c's bounds on depth, nodes and aliases).
 *
 * Input: a spec's YAML text, handed over without a terminating NUL.
 * Invariants: a spec accepted validates; mnn_spec_params agrees; the spec
 * written by mnn_spec_write (as a manifest embeds it, indented, and at the
 * top level) reads back to the same spec; mnn_spec_copy copies it. */
#include "fuzz.h"

#include <math.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_quiet();
    return 0;
}

static int same_float(float a, float b) { return a == b && signbit(a) == signbit(b); }

/* a and b mean the same model and training (what mnn_spec_write keeps) */
static void check_same(const mnn_spec_t *a, const mnn_spec_t *b)
{
    FZ_CHECK(a->input == b->input && same_float(a->input_scale, b->input_scale));
    FZ_CHECK(a->normalize == b->normalize && a->outputs == b->outputs && a->loss == b->loss);
    FZ_CHECK(a->nlayers == b->nlayers);
    for (size_t i = 0; i < a->nlayers; i++)
        FZ_CHECK(a->layers[i].units == b->layers[i].units && a->layers[i].act == b->layers[i].act);
    FZ_CHECK(a->nexits == b->nexits);
    for (size_t j = 0; j < a->nexits; j++) {
        FZ_CHECK(a->exits[j] == b->exits[j]);
        FZ_CHECK(same_float(a->exit_weights ? a->exit_weights[j] : 1.0f,
                            b->exit_weights ? b->exit_weights[j] : 1.0f));
    }
    FZ_CHECK(same_float(a->temperature, b->temperature));
    const mnn_opt_spec_t *o = &a->opt, *p = &b->opt;
    FZ_CHECK(o->type == p->type && same_float(o->lr, p->lr));
    FZ_CHECK(same_float(o->weight_decay, p->weight_decay) && same_float(o->lr_decay, p->lr_decay));
    FZ_CHECK(same_float(o->average, p->average) && same_float(o->prox, p->prox));
    if (o->type == MNN_OPT_SGD)
        FZ_CHECK(same_float(o->momentum, p->momentum));
    else
        FZ_CHECK(same_float(o->beta1, p->beta1) && same_float(o->beta2, p->beta2) &&
                 same_float(o->eps, p->eps));
    FZ_CHECK(a->batch == b->batch && a->seed == b->seed);
}

/* s written (under `model:` when indent) and read back */
static void check_roundtrip(const mnn_spec_t *s, int indent)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    FZ_CHECK(f != NULL);
    if (indent)
        fputs("model:\n", f);
    FZ_CHECK(mnn_spec_write(s, f, indent) == 0);
    FZ_CHECK(fclose(f) == 0);
    mnn_spec_t back;
    mnn_diag_t d = {""};
    if (indent) {
        /* the body of the mapping, as a document of its own */
        char *body = fz_xmalloc(len);
        size_t n = 0;
        for (const char *p = text + strlen("model:\n"); p < text + len;) {
            const char *nl = memchr(p, '\n', (size_t)(text + len - p));
            size_t l = nl ? (size_t)(nl - p) + 1 : (size_t)(text + len - p);
            FZ_CHECK(l > (size_t)indent && !memcmp(p, "    ", (size_t)indent));
            memcpy(body + n, p + indent, l - (size_t)indent);
            n += l - (size_t)indent;
            p += l;
        }
        FZ_CHECK(mnn_spec_load_string(&back, body, n, "written", &d) == 0);
        free(body);
    } else
        FZ_CHECK(mnn_spec_load_string(&back, text, len, "written", &d) == 0);
    check_same(s, &back);
    mnn_spec_free(&back);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* no NUL after the text: a read past len is seen */
    char *text = fz_xmalloc(size);
    memcpy(text, data, size);
    mnn_spec_t s;
    mnn_diag_t d = {""};
    int rc = mnn_spec_load_string(&s, text, size, "fuzz.yaml", &d);
    free(text);
    FZ_NOTE("mnn_spec_load_string: %d %s\n", rc, d.msg);
    if (rc < 0) {
        FZ_CHECK(rc >= MNN_ELIMIT);
        FZ_CHECK(d.msg[0] != 0 || rc == MNN_ENOMEM);
        return 0;
    }
    FZ_CHECK(rc == 0);
    FZ_CHECK(mnn_spec_validate(&s, &d) == 0);
    size_t np;
    FZ_CHECK(mnn_spec_params(&s, &np) == 0 && np > 0 && np <= MNN_MAX_PARAMS);
    check_roundtrip(&s, 0);
    check_roundtrip(&s, 2);
    mnn_spec_t c;
    FZ_CHECK(mnn_spec_copy(&c, &s) == 0);
    check_same(&s, &c);
    mnn_spec_free(&c);
    mnn_spec_free(&s);
    return 0;
}
