/* ingest.h - stream-ingest's state (its part in every cut: the source
 * position, in a small text document, and the hash of the source so far)
 * and its ingestion log (--log DIR: what a live source cannot replay).
 * stream-ingest.c owns the options, the source, the barriers and the
 * signals; ingest-state.c the part's format; ingest-log.c the log. */
#ifndef MNN_INGEST_H
#define MNN_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "mini-nn.h"

#define INGEST_PROGRAM "stream-ingest" /* the program's name in its parts */

/* ---- the hash of the source (ingest-state.c) ----------------------------------
 * XXH3-64 over blocks of INGEST_BLOCK source bytes, chained: when a block
 * is complete, chain = XXH3-64(chain, the block's XXH3-64), both as 8
 * bytes little-endian, from chain 0.  So a resumed stream-ingest needs only
 * the chain and the bytes of the block it is in, which the log keeps; for a
 * source shorter than a block the block's hash is the source's XXH3-64. */
#define INGEST_BLOCK ((uint64_t)1 << 16)

typedef struct {
    uint64_t bytes;  /* source bytes hashed */
    uint64_t chain;  /* the chain over the blocks before bytes' block */
    mnn_hash_t *h;   /* the bytes of that block so far */
} srchash_t;

/* A hash of no bytes; dies when out of memory. */
void srchash_init(srchash_t *s);
/* A hash that goes on from a block boundary: bytes (a multiple of
 * INGEST_BLOCK) hashed, with that chain. */
void srchash_at(srchash_t *s, uint64_t bytes, uint64_t chain);
void srchash_feed(srchash_t *s, const void *p, size_t n);
void srchash_free(srchash_t *s);
/* The start of the block that source offset `at` is in: at rounded down to
 * a multiple of INGEST_BLOCK. */
static inline uint64_t block_start(uint64_t at) { return at & ~(INGEST_BLOCK - 1); }

/* ---- the part: stream-ingest's state at a cut (ingest-state.c) ------------- */

/* Where the cut lies in the source, and what passed before it.  Nothing in
 * it depends on the cut's id, the time, or on stops and resumes: a stream
 * stopped and resumed ends with the same part as one that was not. */
typedef struct {
    uint64_t file;    /* index of the FILE the last byte passed is in */
    uint64_t offset;  /* bytes passed of that file */
    uint64_t line;    /* its lines passed */
    uint64_t bytes;   /* source bytes passed in all */
    uint64_t lines;   /* source lines passed (empty ones too) */
    uint64_t records; /* records passed ('#' lines and bad records not) */
    uint64_t skipped; /* bad records dropped (--on-error=skip) */
    uint64_t chain;   /* the source hash (srchash_t) at bytes */
    uint64_t xxh3;
} ingest_state_t;

#define INGEST_STATE_MAX 512 /* bytes of a formatted state, at most */

/* The document: "format: stream-ingest-state/1\n" then one "key: value"
 * line per field, in that order.  Returns its length. */
size_t state_format(const ingest_state_t *s, char *buf, size_t size);
/* Parses one back, strictly (every key once, in order; no other; numbers
 * in decimal without sign or leading zeros; hashes 16 lowercase hex
 * digits; the numbers consistent): 0, or -1 with why (naming the line). */
int state_parse(const char *buf, size_t len, ingest_state_t *s, char *why, size_t whysize);

/* ---- the ingestion log (ingest-log.c) ---------------------------------------
 * DIR holds segments seg-%016llx (the source offset of their first byte,
 * lowercase hex), each a sequence of frames: a header of ILOG_HDR bytes
 * (magic "MNL1", length of the data u32, its source offset u64, its XXH3-64
 * u64, the XXH3-64 of the header's first 24 bytes u64; little-endian) and
 * the data.  A reader trusts only frames whose hashes match, but for one:
 * the last frame of the log, when its header was never written whole and
 * data follows it (ilog_splice moves the data in first: that data is the
 * source's, and only there); it is given its header when the log opens. */
#define ILOG_HDR 32
#define ILOG_MAX_FRAME ((size_t)1 << 20) /* data bytes of one frame, at most */

typedef struct {
    const char *dir;     /* --log DIR, for messages */
    const char *root;    /* --ckpt-dir ROOT, where the committed cuts are */
    int dfd;             /* DIR, open; it holds DIR's lock */
    uint64_t seg_max;    /* a segment is full at this many bytes */
    uint64_t *segs;      /* first offsets of the segments, ascending */
    size_t nsegs, cap;
    int fd;              /* the last segment, open for appending; -1 when
                          * it is full (the next frame starts a new one) */
    uint64_t size;       /* the last segment's bytes */
    uint64_t end;        /* the source offset after the last byte logged */
    int quiet;           /* no notes */
    int verbose;         /* a note for every segment made or removed */
    char seen[4096];     /* ROOT/latest's target when last cleaned up to */
    char noted[640];     /* the last trouble noted while cleaning up */
    /* replay (ilog_replay_*) */
    size_t rseg;         /* the segment being read */
    int rfd;
    uint64_t rframe;     /* the source offset of rfd's next frame */
    uint64_t rat;        /* the source offset of the next byte returned */
} ilog_t;

/* Opens (making it if need be) and locks DIR.  Without resume a DIR that
 * holds segments is refused; with it, every frame is checked, a torn last
 * frame (a crash while it was written) dropped with a note, and l->end is
 * the log's end.  Dies on error. */
void ilog_open(ilog_t *l, const char *dir, const char *root, uint64_t seg_max, int resume);
/* Appends a frame: frame holds ILOG_HDR bytes for the header and then the
 * n bytes of data, the source's from l->end on; one write(2), before any
 * of it is passed on.  A full segment is fsynced, and the next one made
 * (its directory fsynced).  Dies on error. */
void ilog_append(ilog_t *l, unsigned char *frame, size_t n);
/* For a source that is a pipe or a FIFO, whose bytes nothing can read
 * again: moves up to n bytes from src into a new frame with splice(2), so
 * that what leaves the pipe is in the log in the same step (a kill cannot
 * come between), then writes the frame's header; the data, read back, in
 * frame + ILOG_HDR.  Returns the bytes, 0 at the end of src, (size_t)-1
 * when src has nothing now (EAGAIN).  A header that a stop kept from being
 * written is written when the log is opened again (the data kept).  name:
 * src's, for messages.  Dies on error. */
size_t ilog_splice(ilog_t *l, int src, unsigned char *frame, size_t n, const char *name);
/* Removes the segments whose bytes all lie before the block of the newest
 * committed cut's position (ROOT/latest, stage 0); trouble is only noted. */
void ilog_cleanup(ilog_t *l);
/* Reads the log's bytes from source offset `from` (l->end: none) to its
 * end, frame by frame, checking each: ilog_replay_next returns the bytes
 * put into buf (at most ILOG_MAX_FRAME), 0 at the end.  Dies on error. */
void ilog_replay_begin(ilog_t *l, uint64_t from);
size_t ilog_replay_next(ilog_t *l, unsigned char *buf);
/* fsync of the last segment (and its data), then closes the log. */
void ilog_close(ilog_t *l);

#endif
