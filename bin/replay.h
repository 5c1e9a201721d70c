/* replay.h - replay-buffer's buffer: the policies that choose which
 * records it keeps (a uniform reservoir, class-balanced CBRS, the latest),
 * and its state file, saved atomically with a hash over every byte. */
#ifndef MNN_REPLAY_H
#define MNN_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "lines.h"
#include "mini-nn.h"

#define STATE_MAGIC "# mini-nn replay-buffer state 1"
#define MAX_LINE ((size_t)64 << 20) /* longest record line */

typedef enum { P_RESERVOIR, P_CLASS, P_RECENT } policy_t;

typedef struct {
    policy_t policy;
    size_t cap, n;      /* capacity, records held */
    size_t alloc;       /* slots allocated in rec and label: n <= alloc <= cap,
                         * grown as records come (a capacity, from the
                         * command line or a state file, costs nothing) */
    line_copy_t *rec;   /* n records; recent: a ring, oldest at head */
    int32_t *label;     /* class-balanced: each held record's class */
    size_t head;
    uint64_t seen;      /* records offered, ever */
    uint64_t *class_seen; /* class-balanced: per class, ever */
    size_t *class_held;   /* class-balanced: per class, held now */
    size_t **members;     /* class-balanced: per class, its slots, ascending */
    size_t *mcap;         /* class-balanced: per class, members allocated */
    size_t nclasses;
    size_t *present;      /* classes held now, ascending */
    size_t npresent, pcap;
    double credit;      /* replays owed (fractional ratio) */
    mnn_rng_t rng;
} buffer_t;

extern const char *const policy_names[];

/* A new empty buffer; dies when out of memory. */
void buf_init(buffer_t *b, policy_t p, size_t cap, uint64_t seed);
void buf_free(buffer_t *b);
/* Offers record line (class y for class-balanced) to the buffer. */
void buf_offer(buffer_t *b, const char *line, size_t len, int32_t y);
/* A uniform draw in [0, n) (0 when n is 0). */
uint64_t below(mnn_rng_t *r, uint64_t n);

/* The state file: save_state writes it atomically; load_state reads path
 * (1 loaded, 0 no such file, -1 error in why) into a buffer made for the
 * command line's policy and capacity; parse_state the same from memory. */
int save_state(const buffer_t *b, const char *path, char *why, size_t wsize);
int load_state(buffer_t *b, const char *path, int cap_given, char *why, size_t wsize);
int parse_state(buffer_t *b, const char *data, size_t size, const char *path, int cap_given,
                char *why, size_t wsize);

#endif
