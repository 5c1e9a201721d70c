/* ckpt-archive.h - what archive.c (reading) and archive-pack.c (writing) share;
 * internal to libmini-nn. */
#ifndef MNN_CKPT_ARCHIVE_H
#define MNN_CKPT_ARCHIVE_H

#include <stddef.h>

#define MANIFEST "manifest.yaml"
#define MANIFEST_MAX ((size_t)1 << 20) /* as mnn_manifest_load reads it */
#define IO_BLOCK ((size_t)1 << 16)     /* buffers handed to libarchive */
#define DATA_BLOCK ((size_t)1 << 20)   /* file data per read */
#define NAME_MAXLEN 250                /* NAME, leaving room for ".tmp-" */
#define ZSTD_MAGIC "\x28\xb5\x2f\xfd"  /* a zstd frame's first bytes */


/* NAME: not empty, no '/' or NUL, not starting with '.' (so neither "."
 * nor ".." nor a hidden or temporary name), short enough for ".tmp-NAME". */
int mnn_archive_plain_name(const char *s, size_t n);

#endif
