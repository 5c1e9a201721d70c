/* spec.c - the model spec: YAML in (libyaml), validation, YAML out. */
#include "internal.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void mnn_spec_defaults(mnn_spec_t *s)
{
    memset(s, 0, sizeof *s);
    s->input_scale = 1.0f;
    s->normalize = MNN_NORM_NONE;
    s->loss = MNN_LOSS_XENT;
    s->opt.type = MNN_OPT_SGD;
    s->opt.lr = 0.01f;
    s->opt.beta1 = 0.9f;
    s->opt.beta2 = 0.999f;
    s->opt.eps = 1e-8f;
    s->temperature = 1.0f;
    s->batch = 32;
    s->seed = 1;
}

void mnn_spec_free(mnn_spec_t *s)
{
    free(s->layers);
    free(s->exits);
    free(s->exit_weights);
    s->layers = NULL;
    s->exits = NULL;
    s->exit_weights = NULL;
    s->nlayers = s->nexits = 0;
}

int mnn_spec_copy(mnn_spec_t *dst, const mnn_spec_t *src)
{
    *dst = *src;
    dst->exits = NULL;
    dst->exit_weights = NULL;
    dst->layers = calloc(src->nlayers ? src->nlayers : 1, sizeof *dst->layers);
    if (!dst->layers)
        return MNN_ENOMEM;
    if (src->nlayers)
        memcpy(dst->layers, src->layers, src->nlayers * sizeof *dst->layers);
    if (src->nexits == 0)
        return 0;
    /* the copy always has its weights: NULL (all 1) becomes explicit */
    dst->exits = calloc(src->nexits, sizeof *dst->exits);
    dst->exit_weights = calloc(src->nexits, sizeof *dst->exit_weights);
    if (!dst->exits || !dst->exit_weights) {
        mnn_spec_free(dst);
        return MNN_ENOMEM;
    }
    memcpy(dst->exits, src->exits, src->nexits * sizeof *dst->exits);
    for (size_t j = 0; j < src->nexits; j++)
        dst->exit_weights[j] = src->exit_weights ? src->exit_weights[j] : 1.0f;
    return 0;
}

int mnn_spec_params(const mnn_spec_t *s, size_t *out)
{
    size_t n = 0, fan = s->input;
    *out = 0;
    for (size_t i = 0; i < s->nlayers + s->nexits; i++) {
        size_t units = i < s->nlayers ? s->layers[i].units : s->outputs, w;
        if (i >= s->nlayers) {
            if (!s->exits || s->exits[i - s->nlayers] >= s->nlayers)
                return MNN_EINVAL;
            fan = s->layers[s->exits[i - s->nlayers]].units;
        }
        if (mnn_size_mul(units, fan, &w) < 0 || w > SIZE_MAX - n || units > SIZE_MAX - n - w)
            return MNN_EOVERFLOW;
        n += w + units;
        fan = units;
    }
    *out = n;
    return 0;
}

uint64_t mnn_train_memory(const mnn_spec_t *s, size_t batch)
{
    size_t nparams;
    if (mnn_spec_params(s, &nparams) < 0)
        return UINT64_MAX;
    uint64_t per = 2; /* params + grads */
    per += mnn_opt_buffers(&s->opt); /* moments, average, anchor */
    per *= 2;                                                         /* the snapshot */
    uint64_t widest = s->input, acts = s->input;
    for (size_t i = 0; i < s->nlayers; i++) {
        acts += s->layers[i].units;
        if (s->layers[i].units > widest)
            widest = s->layers[i].units;
    }
    return per * 4 * (uint64_t)nparams + 4 * (uint64_t)batch * (acts + 2 * widest + s->outputs) +
           ((uint64_t)16 << 20); /* code, reader buffers (a ring of at most 8 MiB) */
}

/* Fields validation can point at; marks[] keeps where each was read. */
enum { F_ROOT, F_INPUT, F_SCALE, F_OUTPUTS, F_LAYERS, F_EXITS, F_EXIT_W, F_TEMP,
       F_LR, F_MOMENTUM, F_WD, F_BETA1, F_BETA2, F_EPS, F_DECAY, F_AVG, F_PROX, F_BATCH,
       F_NFIELDS };

/* *field: what is wrong; *item: which entry of exits or exit_weights, or
 * SIZE_MAX for the whole field. */
static int validate(const mnn_spec_t *s, int *field, size_t *item, mnn_diag_t *d)
{
#define BAD(f, ...) (*field = (f), mnn_fail(d, MNN_EINVAL, __VA_ARGS__))
#define BAD_AT(f, j, ...) (*item = (j), BAD(f, __VA_ARGS__))
    const mnn_opt_spec_t *o = &s->opt;
    *item = SIZE_MAX;
    if (s->input < 1)
        return BAD(F_INPUT, "input must be at least 1");
    if (s->input > (size_t)INT_MAX) /* BLAS takes an int */
        return BAD(F_INPUT, "input %zu is too large (at most %d)", s->input, INT_MAX);
    if (!isfinite(s->input_scale) || s->input_scale == 0)
        return BAD(F_SCALE, "input_scale must be a finite non-zero number");
    if (s->loss == MNN_LOSS_XENT && s->outputs < 2)
        return BAD(F_OUTPUTS, "classes must be at least 2");
    if (s->loss == MNN_LOSS_MSE && s->outputs != 1)
        return BAD(F_OUTPUTS, "outputs must be 1: a record carries one target");
    if (s->nlayers < 1)
        return BAD(F_LAYERS, "layers: at least one layer is needed");
    if (s->nlayers > MNN_MAX_LAYERS)
        return BAD(F_LAYERS, "layers: %zu, more than the %d a model may have", s->nlayers,
                   MNN_MAX_LAYERS);
    for (size_t i = 0; i < s->nlayers; i++)
        if (s->layers[i].units < 1 || s->layers[i].units > (size_t)INT_MAX)
            return BAD(F_LAYERS, "layer %zu: dense must be between 1 and %d (BLAS takes an "
                                 "int)", i, INT_MAX);
    if (s->layers[s->nlayers - 1].units != s->outputs)
        return BAD(F_LAYERS, "the last layer has %zu units but the model has %zu %s",
                   s->layers[s->nlayers - 1].units, s->outputs,
                   s->loss == MNN_LOSS_XENT ? "classes" : "outputs");
    if (s->nexits > 0 && s->loss != MNN_LOSS_XENT)
        return BAD(F_EXITS, "exits: early-exit heads need a classifier ('classes: K', "
                            "not 'outputs: N')");
    if (s->nexits > MNN_MAX_EXITS)
        return BAD(F_EXITS, "exits: at most %d early-exit heads", MNN_MAX_EXITS);
    if (s->nexits > 0 && !s->exits)
        return BAD(F_EXITS, "exits: %zu heads but no list of layers", s->nexits);
    for (size_t j = 0; j < s->nexits; j++) {
        if (s->nlayers == 1)
            return BAD_AT(F_EXITS, j, "exits: a model of one layer has no hidden layer to "
                                      "exit after");
        if (s->exits[j] >= s->nlayers - 1)
            return BAD_AT(F_EXITS, j, "exits: %zu is not a hidden layer (0 to %zu: a head "
                                      "goes after any dense layer but the last)",
                          s->exits[j], s->nlayers - 2);
        if (j > 0 && s->exits[j] <= s->exits[j - 1])
            return BAD_AT(F_EXITS, j, "exits: %zu after %zu: the layers must be strictly "
                                      "increasing", s->exits[j], s->exits[j - 1]);
        if (s->exit_weights && (!(s->exit_weights[j] >= 0) || !isfinite(s->exit_weights[j])))
            return BAD_AT(F_EXIT_W, j, "exit_weights: each must be a finite number >= 0");
    }
    if (!(s->temperature > 0) || !isfinite(s->temperature))
        return BAD(F_TEMP, "temperature must be a finite number > 0");
    if (s->temperature != 1 && s->loss != MNN_LOSS_XENT)
        return BAD(F_TEMP, "temperature applies to a classifier's softmax ('classes: K')");
    if (!(o->lr > 0) || !isfinite(o->lr))
        return BAD(F_LR, "lr must be a finite number > 0");
    if (!(o->momentum >= 0 && o->momentum < 1))
        return BAD(F_MOMENTUM, "momentum must be in [0, 1)");
    if (!(o->weight_decay >= 0) || !isfinite(o->weight_decay))
        return BAD(F_WD, "weight_decay must be a finite number >= 0");
    if (!(o->beta1 >= 0 && o->beta1 < 1))
        return BAD(F_BETA1, "beta1 must be in [0, 1)");
    if (!(o->beta2 >= 0 && o->beta2 < 1))
        return BAD(F_BETA2, "beta2 must be in [0, 1)");
    if (!(o->eps > 0) || !isfinite(o->eps))
        return BAD(F_EPS, "eps must be a finite number > 0");
    if (!(o->lr_decay >= 0) || !isfinite(o->lr_decay))
        return BAD(F_DECAY, "lr_decay must be a finite number >= 0");
    if (!(o->average >= 0 && o->average < 1))
        return BAD(F_AVG, "average must be in [0, 1) (0: off)");
    if (!(o->prox >= 0) || !isfinite(o->prox))
        return BAD(F_PROX, "prox must be a finite number >= 0 (0: off)");
    if (s->batch < 1 || s->batch > (1u << 20))
        return BAD(F_BATCH, "batch must be between 1 and 1048576");
    size_t np;
    if (mnn_spec_params(s, &np) < 0 || np > MNN_MAX_PARAMS)
        return BAD(F_LAYERS, "the model has more than %llu parameters",
                   (unsigned long long)MNN_MAX_PARAMS);
    return 0;
#undef BAD_AT
#undef BAD
}

int mnn_spec_validate(const mnn_spec_t *s, mnn_diag_t *d)
{
    int field;
    size_t item;
    return validate(s, &field, &item, d);
}

/* ---- reading ------------------------------------------------------------ */

typedef struct {
    mnn_yaml_t *y;
    mnn_diag_t *d;
    yaml_node_t *marks[F_NFIELDS];
    yaml_node_t *exit_marks[MNN_MAX_EXITS];   /* the entries of exits */
    yaml_node_t *weight_marks[MNN_MAX_EXITS]; /* and of exit_weights */
} reader_t;

static int get_size(reader_t *r, yaml_node_t *n, const char *what, size_t *out)
{
    uint64_t v;
    int rc = mnn_yaml_u64(r->y, n, what, &v, r->d);
    if (rc < 0)
        return rc;
    if (v > SIZE_MAX)
        return mnn_yaml_fail(r->y, n, r->d, MNN_EINVAL, "%s is too large", what);
    *out = (size_t)v;
    return 0;
}

static int get_float(reader_t *r, yaml_node_t *n, const char *what, float *out)
{
    double v;
    int rc = mnn_yaml_f64(r->y, n, what, &v, r->d);
    if (rc < 0)
        return rc;
    *out = (float)v;
    if (!isfinite(*out))
        return mnn_yaml_fail(r->y, n, r->d, MNN_EINVAL, "%s: %s is out of float range",
                             what, (const char *)n->data.scalar.value);
    return 0;
}

/* Picks one of names[] for a scalar; index into *out. */
static int get_enum(reader_t *r, yaml_node_t *n, const char *what,
                    const char *const *names, int *out)
{
    const char *s = "";
    int rc = mnn_yaml_str(r->y, n, what, &s, r->d);
    if (rc < 0)
        return rc;
    char list[160] = "";
    for (int i = 0; names[i]; i++) {
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, names[i], sizeof list - strlen(list) - 1);
    }
    return mnn_yaml_fail(r->y, n, r->d, MNN_EINVAL, "%s: unknown value '%s' (one of: %s)",
                         what, s, list);
}

/* Iterates a mapping, rejecting duplicate keys; calls fn for each pair.
 * fn returns 1 when it does not know the key. */
typedef int (*pair_fn)(reader_t *r, void *ctx, const char *key, yaml_node_t *k,
                       yaml_node_t *v);

static int walk_map(reader_t *r, yaml_node_t *map, const char *what,
                    const char *known, pair_fn fn, void *ctx)
{
    int rc = mnn_yaml_expect(r->y, map, YAML_MAPPING_NODE, what, r->d);
    if (rc < 0)
        return rc;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = mnn_yaml_node(r->y, p->key), *v = mnn_yaml_node(r->y, p->value);
        const char *key;
        if ((rc = mnn_yaml_str(r->y, k, "a key", &key, r->d)) < 0)
            return rc;
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
            yaml_node_t *k2 = mnn_yaml_node(r->y, q->key);
            if (k2->type == YAML_SCALAR_NODE && !strcmp((char *)k2->data.scalar.value, key))
                return mnn_yaml_fail(r->y, k, r->d, MNN_EFORMAT, "duplicate key '%s'", key);
        }
        rc = fn(r, ctx, key, k, v);
        if (rc == 1)
            return mnn_yaml_fail(r->y, k, r->d, MNN_EFORMAT,
                                 "unknown key '%s' in %s (known: %s)", key, what, known);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static const char *const act_names[] = {"none", "relu", "tanh", "sigmoid", NULL};

static int layer_pair(reader_t *r, void *ctx, const char *key, yaml_node_t *k,
                      yaml_node_t *v)
{
    mnn_layer_spec_t *l = ctx;
    (void)k;
    if (!strcmp(key, "dense"))
        return get_size(r, v, "dense", &l->units);
    if (!strcmp(key, "activation")) {
        int a, rc = get_enum(r, v, "activation", act_names, &a);
        l->act = (mnn_act_t)a;
        return rc;
    }
    return 1;
}

typedef struct {
    mnn_spec_t *s;
    int lr_given;
    int type_seen;
} opt_ctx_t;

static int opt_pair(reader_t *r, void *ctx, const char *key, yaml_node_t *k,
                    yaml_node_t *v)
{
    opt_ctx_t *c = ctx;
    mnn_opt_spec_t *o = &c->s->opt;
    (void)k;
    struct { const char *name; float *dst; int field; } fl[] = {
        {"lr", &o->lr, F_LR},           {"momentum", &o->momentum, F_MOMENTUM},
        {"weight_decay", &o->weight_decay, F_WD}, {"beta1", &o->beta1, F_BETA1},
        {"beta2", &o->beta2, F_BETA2},  {"eps", &o->eps, F_EPS},
        {"lr_decay", &o->lr_decay, F_DECAY}, {"average", &o->average, F_AVG},
        {"prox", &o->prox, F_PROX}};
    if (!strcmp(key, "type")) {
        int t, rc = get_enum(r, v, "optimizer type", mnn_opt_names, &t);
        o->type = (mnn_opt_type_t)t;
        c->type_seen = 1;
        return rc;
    }
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        if (!strcmp(key, fl[i].name)) {
            r->marks[fl[i].field] = v;
            c->lr_given |= fl[i].field == F_LR;
            return get_float(r, v, fl[i].name, fl[i].dst);
        }
    return 1;
}

typedef struct {
    mnn_spec_t *s;
    int have_classes, have_outputs, have_loss, have_input, have_layers;
    mnn_loss_t loss;
    yaml_node_t *loss_node;
    opt_ctx_t opt;
    float *weights;     /* exit_weights as read, until exits is known */
    size_t nweights;
    yaml_node_t *weights_node; /* NULL when not given */
} root_ctx_t;

/* A flow or block list of at most MNN_MAX_EXITS entries; *n its length. */
static int get_list(reader_t *r, yaml_node_t *v, const char *what, size_t *n)
{
    int rc = mnn_yaml_expect(r->y, v, YAML_SEQUENCE_NODE, what, r->d);
    if (rc < 0)
        return rc;
    *n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (*n > MNN_MAX_EXITS)
        return mnn_yaml_fail(r->y, v, r->d, MNN_EINVAL, "%s: %zu entries, at most %d exits",
                             what, *n, MNN_MAX_EXITS);
    return 0;
}

static int root_pair(reader_t *r, void *ctx, const char *key, yaml_node_t *k,
                     yaml_node_t *v)
{
    root_ctx_t *c = ctx;
    mnn_spec_t *s = c->s;
    int rc;
    (void)k;
    if (!strcmp(key, "input")) {
        r->marks[F_INPUT] = v;
        c->have_input = 1;
        return get_size(r, v, "input", &s->input);
    }
    if (!strcmp(key, "input_scale")) {
        r->marks[F_SCALE] = v;
        return get_float(r, v, "input_scale", &s->input_scale);
    }
    if (!strcmp(key, "normalize")) {
        static const char *const n[] = {"none", "running", NULL};
        int t;
        rc = get_enum(r, v, "normalize", n, &t);
        s->normalize = (mnn_norm_t)t;
        return rc;
    }
    if (!strcmp(key, "classes") || !strcmp(key, "outputs")) {
        int cls = key[0] == 'c';
        if (cls ? c->have_outputs : c->have_classes)
            return mnn_yaml_fail(r->y, k, r->d, MNN_EFORMAT,
                                 "give either classes or outputs, not both");
        if (cls)
            c->have_classes = 1;
        else
            c->have_outputs = 1;
        r->marks[F_OUTPUTS] = v;
        return get_size(r, v, key, &s->outputs);
    }
    if (!strcmp(key, "loss")) {
        static const char *const n[] = {"xent", "mse", NULL};
        int t;
        rc = get_enum(r, v, "loss", n, &t);
        c->loss = (mnn_loss_t)t;
        c->have_loss = 1;
        c->loss_node = v;
        return rc;
    }
    if (!strcmp(key, "layers")) {
        if ((rc = mnn_yaml_expect(r->y, v, YAML_SEQUENCE_NODE, "layers", r->d)) < 0)
            return rc;
        r->marks[F_LAYERS] = v;
        c->have_layers = 1;
        size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
        if (n > MNN_MAX_LAYERS)
            return mnn_yaml_fail(r->y, v, r->d, MNN_EINVAL,
                                 "layers: %zu, more than the %d a model may have", n,
                                 MNN_MAX_LAYERS);
        free(s->layers);
        s->layers = calloc(n ? n : 1, sizeof *s->layers);
        if (!s->layers)
            return MNN_ENOMEM;
        s->nlayers = n;
        for (size_t i = 0; i < n; i++) {
            yaml_node_t *ln = mnn_yaml_node(r->y, v->data.sequence.items.start[i]);
            s->layers[i].act = MNN_ACT_NONE;
            s->layers[i].units = 0;
            if ((rc = walk_map(r, ln, "a layer", "dense, activation", layer_pair,
                               &s->layers[i])) < 0)
                return rc;
            if (s->layers[i].units == 0)
                return mnn_yaml_fail(r->y, ln, r->d, MNN_EINVAL,
                                     "layer %zu: 'dense: UNITS' (at least 1) is required", i);
        }
        return 0;
    }
    if (!strcmp(key, "exits")) {
        size_t n;
        if ((rc = get_list(r, v, "exits", &n)) < 0)
            return rc;
        r->marks[F_EXITS] = v;
        free(s->exits);
        s->exits = NULL;
        if (n && !(s->exits = calloc(n, sizeof *s->exits)))
            return MNN_ENOMEM;
        s->nexits = n;
        for (size_t j = 0; j < n; j++) {
            yaml_node_t *e = mnn_yaml_node(r->y, v->data.sequence.items.start[j]);
            r->exit_marks[j] = e;
            if ((rc = get_size(r, e, "exits", &s->exits[j])) < 0)
                return rc;
        }
        return 0;
    }
    if (!strcmp(key, "exit_weights")) {
        size_t n;
        if ((rc = get_list(r, v, "exit_weights", &n)) < 0)
            return rc;
        r->marks[F_EXIT_W] = v;
        c->weights_node = v;
        if (!(c->weights = calloc(n ? n : 1, sizeof *c->weights)))
            return MNN_ENOMEM;
        c->nweights = n;
        for (size_t j = 0; j < n; j++) {
            yaml_node_t *e = mnn_yaml_node(r->y, v->data.sequence.items.start[j]);
            r->weight_marks[j] = e;
            if ((rc = get_float(r, e, "exit_weights", &c->weights[j])) < 0)
                return rc;
        }
        return 0;
    }
    if (!strcmp(key, "temperature")) {
        r->marks[F_TEMP] = v;
        return get_float(r, v, "temperature", &s->temperature);
    }
    if (!strcmp(key, "optimizer")) {
        r->marks[F_LR] = v;
        return walk_map(r, v, "optimizer",
                        "type, lr, momentum, weight_decay, beta1, beta2, eps, lr_decay, average, "
                        "prox",
                        opt_pair, &c->opt);
    }
    if (!strcmp(key, "batch")) {
        r->marks[F_BATCH] = v;
        return get_size(r, v, "batch", &s->batch);
    }
    if (!strcmp(key, "seed"))
        return mnn_yaml_u64(r->y, v, "seed", &s->seed, r->d);
    return 1;
}

int mnn_spec_from_node(mnn_spec_t *s, mnn_yaml_t *y, yaml_node_t *root,
                       mnn_diag_t *d)
{
    reader_t r = {.y = y, .d = d};
    root_ctx_t c = {.s = s};
    mnn_spec_defaults(s);
    c.opt.s = s;
    for (int i = 0; i < F_NFIELDS; i++)
        r.marks[i] = root;
    int rc = walk_map(&r, root, "the model spec",
                      "input, input_scale, normalize, classes, outputs, loss, "
                      "layers, exits, exit_weights, temperature, optimizer, batch, seed",
                      root_pair, &c);
    if (rc < 0)
        goto fail;
    rc = MNN_EINVAL;
    if (c.weights_node && c.nweights != s->nexits) {
        rc = mnn_yaml_fail(y, c.weights_node, d, rc,
                           "exit_weights has %zu entries but exits has %zu: one weight per exit",
                           c.nweights, s->nexits);
        goto fail;
    }
    if (s->nexits > 0) {
        if (!c.weights && !(c.weights = calloc(s->nexits, sizeof *c.weights))) {
            rc = MNN_ENOMEM;
            goto fail;
        }
        for (size_t j = 0; !c.weights_node && j < s->nexits; j++)
            c.weights[j] = 1.0f;
        s->exit_weights = c.weights;
        c.weights = NULL;
    }
    free(c.weights); /* an empty exit_weights: [] */
    c.weights = NULL;
    if (!c.have_input) {
        rc = mnn_yaml_fail(y, root, d, rc, "'input: N' is required");
        goto fail;
    }
    if (!c.have_layers) {
        rc = mnn_yaml_fail(y, root, d, rc, "'layers: [...]' is required");
        goto fail;
    }
    if (!c.have_classes && !c.have_outputs) {
        rc = mnn_yaml_fail(y, root, d, rc, "'classes: K' or 'outputs: N' is required");
        goto fail;
    }
    s->loss = c.have_outputs ? MNN_LOSS_MSE : MNN_LOSS_XENT;
    if (c.have_loss && c.loss != s->loss) {
        rc = mnn_yaml_fail(y, c.loss_node, d, rc, "loss %s needs %s",
                           c.loss == MNN_LOSS_MSE ? "mse" : "xent",
                           c.loss == MNN_LOSS_MSE ? "'outputs: N'" : "'classes: K'");
        goto fail;
    }
    if (!c.opt.lr_given && s->opt.type == MNN_OPT_ADAM)
        s->opt.lr = 0.001f;
    int field;
    size_t item;
    mnn_diag_t tmp;
    if ((rc = validate(s, &field, &item, &tmp)) < 0) {
        yaml_node_t *at = r.marks[field];
        if (item < MNN_MAX_EXITS && field == F_EXITS && r.exit_marks[item])
            at = r.exit_marks[item];
        if (item < MNN_MAX_EXITS && field == F_EXIT_W && r.weight_marks[item])
            at = r.weight_marks[item];
        rc = mnn_yaml_fail(y, at, d, rc, "%s", tmp.msg);
        goto fail;
    }
    return 0;
fail:
    free(c.weights);
    mnn_spec_free(s);
    return rc;
}

int mnn_spec_load_string(mnn_spec_t *s, const char *text, size_t len,
                         const char *name, mnn_diag_t *d)
{
    mnn_yaml_t y;
    int rc = mnn_yaml_load(&y, text, len, name, d);
    if (rc < 0)
        return rc;
    rc = mnn_spec_from_node(s, &y, mnn_yaml_root(&y), d);
    mnn_yaml_free(&y);
    return rc;
}

int mnn_spec_load_file(mnn_spec_t *s, const char *path, mnn_diag_t *d)
{
    char *text = NULL;
    mnn_yaml_t y;
    int rc = mnn_yaml_load_file(&y, &text, path, d);
    if (rc < 0)
        return rc;
    rc = mnn_spec_from_node(s, &y, mnn_yaml_root(&y), d);
    mnn_yaml_free(&y);
    free(text);
    return rc;
}

/* ---- writing ------------------------------------------------------------ */

int mnn_spec_write(const mnn_spec_t *s, FILE *f, int ind)
{
    const mnn_opt_spec_t *o = &s->opt;
    fprintf(f, "%*sinput: %zu\n", ind, "", s->input);
    fprintf(f, "%*sinput_scale: %.9g\n", ind, "", (double)s->input_scale);
    fprintf(f, "%*snormalize: %s\n", ind, "",
            s->normalize == MNN_NORM_RUNNING ? "running" : "none");
    if (s->loss == MNN_LOSS_XENT)
        fprintf(f, "%*sclasses: %zu\n", ind, "", s->outputs);
    else
        fprintf(f, "%*soutputs: %zu\n%*sloss: mse\n", ind, "", s->outputs, ind, "");
    fprintf(f, "%*slayers:\n", ind, "");
    for (size_t i = 0; i < s->nlayers; i++)
        fprintf(f, "%*s  - {dense: %zu, activation: %s}\n", ind, "",
                s->layers[i].units, mnn_act_name(s->layers[i].act));
    /* a spec without exits writes what it always wrote */
    fprintf(f, "%*sexits: [", ind, "");
    for (size_t j = 0; j < s->nexits; j++)
        fprintf(f, "%s%zu", j ? ", " : "", s->exits[j]);
    fputs("]\n", f);
    if (s->nexits > 0) {
        fprintf(f, "%*sexit_weights: [", ind, "");
        for (size_t j = 0; j < s->nexits; j++)
            fprintf(f, "%s%.9g", j ? ", " : "",
                    s->exit_weights ? (double)s->exit_weights[j] : 1.0);
        fputs("]\n", f);
    }
    if (s->temperature != 1)
        fprintf(f, "%*stemperature: %.9g\n", ind, "", (double)s->temperature);
    if (o->type == MNN_OPT_SGD)
        fprintf(f, "%*soptimizer: {type: sgd, lr: %.9g, momentum: %.9g, "
                   "weight_decay: %.9g, lr_decay: %.9g, average: %.9g",
                ind, "", (double)o->lr, (double)o->momentum,
                (double)o->weight_decay, (double)o->lr_decay, (double)o->average);
    else
        fprintf(f, "%*soptimizer: {type: adam, lr: %.9g, beta1: %.9g, beta2: %.9g, "
                   "eps: %.9g, weight_decay: %.9g, lr_decay: %.9g, average: %.9g",
                ind, "", (double)o->lr, (double)o->beta1, (double)o->beta2,
                (double)o->eps, (double)o->weight_decay, (double)o->lr_decay,
                (double)o->average);
    /* written only when on: the specs written before it existed stay as they were */
    if (o->prox > 0)
        fprintf(f, ", prox: %.9g", (double)o->prox);
    fputs("}\n", f);
    fprintf(f, "%*sbatch: %zu\n", ind, "", s->batch);
    fprintf(f, "%*sseed: %llu\n", ind, "", (unsigned long long)s->seed);
    return ferror(f) ? MNN_EIO : 0;
}
