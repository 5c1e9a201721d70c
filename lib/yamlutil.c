/* yamlutil.c - loading YAML documents with libyaml and reading typed values
 * from their nodes, with errors that name file:line:column. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bounds on every document read: libyaml's parse time grows with the
 * square of the nesting, and its node table with the node count. */
#define YAML_MAX_DEPTH 32
#define YAML_MAX_NODES (1 << 17)

static int parser_fail(yaml_parser_t *p, const char *name, mnn_diag_t *d)
{
    yaml_mark_t mk = p->problem_mark.line || p->problem_mark.column ? p->problem_mark
                                                                    : p->context_mark;
    return mnn_fail(d, MNN_EFORMAT, "%s:%zu:%zu: invalid YAML: %s%s%s", name, mk.line + 1,
                    mk.column + 1, p->problem ? p->problem : "syntax error",
                    p->context ? " " : "", p->context ? p->context : "");
}

/* One pass over the events, before the document is built: the depth, the
 * node count, one document, and no aliases (a few bytes of aliases can
 * stand for a huge document to whoever walks it). */
static int prescan(const char *text, size_t len, const char *name, size_t max_nodes,
                   mnn_diag_t *d)
{
    yaml_parser_t p;
    yaml_event_t ev;
    if (!yaml_parser_initialize(&p))
        return mnn_fail(d, MNN_ENOMEM, "%s: out of memory", name);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int rc = 0, depth = 0, docs = 0, done = 0;
    size_t nodes = 0;
    while (!done && rc == 0) {
        if (!yaml_parser_parse(&p, &ev)) {
            rc = parser_fail(&p, name, d);
            break;
        }
        const yaml_mark_t mk = ev.start_mark;
        switch (ev.type) {
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            nodes++;
            if (++depth > YAML_MAX_DEPTH)
                rc = mnn_fail(d, MNN_ELIMIT, "%s:%zu:%zu: nested deeper than %d levels", name,
                              mk.line + 1, mk.column + 1, YAML_MAX_DEPTH);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: depth--; break;
        case YAML_SCALAR_EVENT: nodes++; break;
        case YAML_ALIAS_EVENT:
            rc = mnn_fail(d, MNN_EFORMAT, "%s:%zu:%zu: aliases (*name) are not accepted", name,
                          mk.line + 1, mk.column + 1);
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                rc = mnn_fail(d, MNN_EFORMAT, "%s:%zu:%zu: a second document ('---')", name,
                              mk.line + 1, mk.column + 1);
            break;
        case YAML_STREAM_END_EVENT: done = 1; break;
        default: break;
        }
        if (rc == 0 && nodes > max_nodes)
            rc = mnn_fail(d, MNN_ELIMIT, "%s:%zu:%zu: more than %zu nodes", name, mk.line + 1,
                          mk.column + 1, max_nodes);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return rc;
}

int mnn_yaml_load(mnn_yaml_t *y, const char *text, size_t len,
                  const char *name, mnn_diag_t *d)
{
    return mnn_yaml_load_max(y, text, len, name, YAML_MAX_NODES, d);
}

int mnn_yaml_load_max(mnn_yaml_t *y, const char *text, size_t len,
                      const char *name, size_t max_nodes, mnn_diag_t *d)
{
    yaml_parser_t p;
    memset(y, 0, sizeof *y);
    y->name = name;
    int rc = prescan(text, len, name, max_nodes, d);
    if (rc < 0)
        return rc;
    if (!yaml_parser_initialize(&p))
        return mnn_fail(d, MNN_ENOMEM, "%s: out of memory", name);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, &y->doc)) {
        rc = parser_fail(&p, name, d);
        yaml_parser_delete(&p);
        return rc;
    }
    yaml_parser_delete(&p);
    y->loaded = 1;
    if (!yaml_document_get_root_node(&y->doc)) {
        mnn_yaml_free(y);
        return mnn_fail(d, MNN_EFORMAT, "%s:1:1: empty document", name);
    }
    return 0;
}

int mnn_yaml_load_file(mnn_yaml_t *y, char **textp, const char *path,
                       mnn_diag_t *d)
{
    size_t len;
    int rc = mnn_read_file(path, (size_t)1 << 20, textp, &len, d);
    if (rc < 0)
        return rc;
    rc = mnn_yaml_load(y, *textp, len, path, d);
    if (rc < 0) {
        free(*textp);
        *textp = NULL;
    }
    return rc;
}

void mnn_yaml_free(mnn_yaml_t *y)
{
    if (y->loaded)
        yaml_document_delete(&y->doc);
    y->loaded = 0;
}

yaml_node_t *mnn_yaml_root(mnn_yaml_t *y) { return yaml_document_get_root_node(&y->doc); }
yaml_node_t *mnn_yaml_node(mnn_yaml_t *y, int id) { return yaml_document_get_node(&y->doc, id); }

int mnn_yaml_fail(mnn_yaml_t *y, const yaml_node_t *n, mnn_diag_t *d, int err,
                  const char *fmt, ...)
{
    if (d) {
        int k = snprintf(d->msg, sizeof d->msg, "%s:%zu:%zu: ", y->name,
                         n->start_mark.line + 1, n->start_mark.column + 1);
        if (k < 0 || (size_t)k >= sizeof d->msg)
            k = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->msg + k, sizeof d->msg - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return err;
}

static const char *kind_name(yaml_node_type_t t)
{
    return t == YAML_SCALAR_NODE ? "a scalar"
           : t == YAML_SEQUENCE_NODE ? "a list" : "a mapping";
}

int mnn_yaml_expect(mnn_yaml_t *y, yaml_node_t *n, yaml_node_type_t t,
                    const char *what, mnn_diag_t *d)
{
    if (n->type != t)
        return mnn_yaml_fail(y, n, d, MNN_EFORMAT, "%s must be %s, not %s", what,
                             kind_name(t), kind_name(n->type));
    return 0;
}

int mnn_yaml_str(mnn_yaml_t *y, yaml_node_t *n, const char *what,
                 const char **out, mnn_diag_t *d)
{
    int rc = mnn_yaml_expect(y, n, YAML_SCALAR_NODE, what, d);
    if (rc == 0)
        *out = (const char *)n->data.scalar.value;
    return rc;
}

int mnn_yaml_u64(mnn_yaml_t *y, yaml_node_t *n, const char *what,
                 uint64_t *out, mnn_diag_t *d)
{
    const char *s = "";
    int rc = mnn_yaml_str(y, n, what, &s, d);
    if (rc < 0)
        return rc;
    if (mnn_parse_u64(s, out) == 0)
        return 0;
    return mnn_yaml_fail(y, n, d, MNN_EFORMAT, "%s: '%s' is not a non-negative integer",
                         what, s);
}

int mnn_yaml_f64(mnn_yaml_t *y, yaml_node_t *n, const char *what,
                 double *out, mnn_diag_t *d)
{
    const char *s = "";
    int rc = mnn_yaml_str(y, n, what, &s, d);
    if (rc < 0)
        return rc;
    if (mnn_parse_double(s, s + strlen(s), out) < 0)
        return mnn_yaml_fail(y, n, d, MNN_EFORMAT, "%s: '%s' is not a finite number",
                             what, s);
    return 0;
}

yaml_node_t *mnn_yaml_get(mnn_yaml_t *y, yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = mnn_yaml_node(y, p->key);
        if (k && k->type == YAML_SCALAR_NODE &&
            !strcmp((const char *)k->data.scalar.value, key))
            return mnn_yaml_node(y, p->value);
    }
    return NULL;
}
