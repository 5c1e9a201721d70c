/* internal.h - helpers shared by libmini-nn's modules; not installed. */
#ifndef MNN_INTERNAL_H
#define MNN_INTERNAL_H

#include <config.h>

#include "mini-nn.h"
#include <yaml.h>

#if defined(__GNUC__)
#define MNN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MNN_PRINTF(a, b)
#endif

/* Fills d (if any) and returns err. */
int mnn_fail(mnn_diag_t *d, int err, const char *fmt, ...) MNN_PRINTF(3, 4);
/* Puts "prefix: " before the message d holds (if any); returns err. */
int mnn_fail_prefix(mnn_diag_t *d, int err, const char *prefix);

/* "dir/name", malloc'd; NULL when out of memory (fs.c). */
char *mnn_path_join(const char *dir, const char *name);

/* ---- checkpoints: what ckpt.c, manifest.c and ckpt-root.c share ---- */
#define CKPT_FORMAT "mini-nn-checkpoint/1"
/* manifest.yaml's last line: the XXH3 of every byte before it */
#define MANIFEST_SEAL "manifest_xxh3: "
#define SEAL_LINE (sizeof MANIFEST_SEAL - 1 + 16 + 1)
#define STATE_MAX ((size_t)64 << 10) /* state.yaml, at most */
/* Reads dir/f->name whole and checks it against the manifest: the bytes
 * handed back (*buf, *len; *path names the file) are the bytes the hash
 * covers, read once (manifest.c). */
int mnn_manifest_read(const char *dir, const mnn_manifest_file_t *f, char **buf, size_t *len,
                      char **path, mnn_diag_t *d);

/* A program name as the cut lines spell it and a manifest holds it: 1 to
 * MNN_CUT_PROGRAM_MAX - 1 of [a-z0-9_-] (manifest.c). */
int mnn_plain_program(const char *s);

/* The optimizer names by mnn_opt_type_t, NULL-terminated (optim.c). */
extern const char *const mnn_opt_names[];

/* ---- YAML document walking (yamlutil.c) ---- */
typedef struct {
    yaml_document_t doc;
    const char *name; /* file name for messages */
    int loaded;
} mnn_yaml_t;

int mnn_yaml_load(mnn_yaml_t *y, const char *text, size_t len,
                  const char *name, mnn_diag_t *d);
/* The same with a node budget of its own (mnn_yaml_load's is 131072). */
int mnn_yaml_load_max(mnn_yaml_t *y, const char *text, size_t len,
                      const char *name, size_t max_nodes, mnn_diag_t *d);
int mnn_yaml_load_file(mnn_yaml_t *y, char **textp, const char *path,
                       mnn_diag_t *d);
void mnn_yaml_free(mnn_yaml_t *y);
yaml_node_t *mnn_yaml_root(mnn_yaml_t *y);
yaml_node_t *mnn_yaml_node(mnn_yaml_t *y, int id);
/* Error at a node: "name:line:col: message". */
int mnn_yaml_fail(mnn_yaml_t *y, const yaml_node_t *n, mnn_diag_t *d, int err,
                  const char *fmt, ...) MNN_PRINTF(5, 6);
/* Node kind checks with messages. */
int mnn_yaml_str(mnn_yaml_t *y, yaml_node_t *n, const char *what,
                 const char **out, mnn_diag_t *d);
int mnn_yaml_u64(mnn_yaml_t *y, yaml_node_t *n, const char *what,
                 uint64_t *out, mnn_diag_t *d);
int mnn_yaml_f64(mnn_yaml_t *y, yaml_node_t *n, const char *what,
                 double *out, mnn_diag_t *d);
int mnn_yaml_expect(mnn_yaml_t *y, yaml_node_t *n, yaml_node_type_t t,
                    const char *what, mnn_diag_t *d);
/* Value of key in a mapping, or NULL. */
yaml_node_t *mnn_yaml_get(mnn_yaml_t *y, yaml_node_t *map, const char *key);


/* Builds a spec from a YAML mapping node (a spec file's root, or the `model`
 * of a manifest) and validates it, errors pointing into the document. */
int mnn_spec_from_node(mnn_spec_t *s, mnn_yaml_t *y, yaml_node_t *root,
                       mnn_diag_t *d);
#endif
