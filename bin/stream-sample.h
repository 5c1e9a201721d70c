/* stream-sample.h - what stream-sample's files share: the sample, whole,
 * as main() runs it (stream-sample.c) and as a pipeline cut saves and
 * resumes it (sample-state.c). */
#ifndef MNN_STREAM_SAMPLE_H
#define MNN_STREAM_SAMPLE_H

#include "lines.h"

#include <stddef.h>
#include <stdint.h>

#define MAX_LINE ((size_t)64 << 20) /* longest record accepted */

typedef line_copy_t slot_t; /* rec: its record number, for input order */

/* One reservoir's slots; n of them filled (slots fill from 0 up). */
typedef struct {
    slot_t *slot; /* k of them; NULL until needed (a class not yet seen) */
    size_t k, n;
} held_t;

/* --per-class: a reservoir of k and its slots for each label seen. */
typedef struct {
    held_t *held;         /* per class; its slots allocated at its first record */
    mnn_reservoir_t *res; /* per class */
    size_t n;             /* classes: 1 + the largest label seen */
} classes_t;

typedef enum { M_NONE, M_BERNOULLI, M_EVERY, M_RESERVOIR, M_PERCLASS } sample_mode_t;

/* Everything a run's output from here on depends on: a cut saves it all,
 * and a run resumed from it goes on as this one would have, byte for byte.
 * Its samplers point at its rng: it stays where sample_init made it. */
typedef struct {
    /* the options that make the sample: a state resumes under the same */
    sample_mode_t mode;
    double p;              /* -p */
    uint64_t every;        /* --every */
    size_t k;              /* -k, --per-class */
    size_t wcol;           /* -k --weight-col C; 0: none */
    double decay;          /* -k --decay LAMBDA; 0: none */
    /* the sampling */
    mnn_rng_t rng;         /* the generator of every draw */
    mnn_bernoulli_t bern;  /* -p */
    mnn_reservoir_t res;   /* -k */
    mnn_wres_t wres;       /* -k --weight-col */
    mnn_topk_t top;        /* -k --decay */
    held_t held;           /* -k: the records in the sample, by slot */
    classes_t classes;     /* --per-class */
    /* counters */
    uint64_t recs;         /* records offered (those skipped as bad are not) */
    uint64_t written;      /* records written, in all emissions */
    uint64_t emissions;    /* emissions of a reservoir's sample */
    uint64_t emitted_at;   /* recs at the last emission; UINT64_MAX: none */
    int marked;            /* emissions follow a '# stream-sample:' line */
} sample_t;

/* The mode's samplers, empty, seeded from seed; dies out of memory. */
void sample_init(sample_t *s, uint64_t seed);
void sample_free(sample_t *s);
/* Record rec's line into slot i of h. */
void hold(held_t *h, long i, const char *line, size_t len, uint64_t rec);
/* h's k slots, empty; dies out of memory. */
void held_init(held_t *h, size_t k);
/* Class y's reservoir and slots, made when y is new. */
void classes_need(sample_t *s, size_t y);
/* qsort's order of slot pointers: by record number. */
int by_rec(const void *a, const void *b);
/* The options of s as a user gives them ("-k 10 --decay 0.5"), one
 * spelling for each sample. */
void sample_options(const sample_t *s, char *buf, size_t size);

/* The whole state of s (sample-state.c): in m (membuf_open's); dies out
 * of memory. */
void state_save(const sample_t *s, membuf_t *m);
/* Restores s (just made by sample_init with the options of the state) from
 * the state data[0, size): 0, or -1 with what is wrong in err. */
int state_load(sample_t *s, const char *data, size_t size, char *err, size_t errsize);

#endif
