/* sample.c - samples of a stream of unknown length: Bernoulli sampling by
 * geometric skips, a uniform reservoir with geometric skips (Li's
 * Algorithm L), a weighted one with exponential jumps (Efraimidis and
 * Spirakis's A-ExpJ), and the top-k heap that both the weighted and the
 * time-decayed samples keep their keys in.
 *
 * The functions only decide which record goes where: each reservoir slot's
 * contents are the caller's. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Uniform in (0, 1), both ends excluded (52 random bits and a half): its
 * logarithm is finite and never 0. */
static double open01(mnn_rng_t *rng)
{
    return ((double)(mnn_rng_next(rng) >> 12) + 0.5) * (1.0 / 4503599627370496.0);
}

/* ---- Bernoulli ---------------------------------------------------------------- */

/* The next record kept, the first at or after from: a geometric number of
 * records, floor(log(u) / log(1 - p)) with u in (0, 1], are passed over. */
static void plan_keep(mnn_bernoulli_t *b, uint64_t from)
{
    b->next = b->p >= 1 ? from
                        : from + (uint64_t)fmin(floor(log(1.0 - mnn_rng_uniform(b->rng)) /
                                                      b->log1mp),
                                                1e18);
}

int mnn_bernoulli_init(mnn_bernoulli_t *b, double p, mnn_rng_t *rng)
{
    if (!(p > 0 && p <= 1))
        return MNN_EINVAL;
    b->p = p;
    b->log1mp = p < 1 ? log1p(-p) : 0;
    b->seen = 0;
    b->rng = rng;
    plan_keep(b, 0);
    return 0;
}

int mnn_bernoulli_offer(mnn_bernoulli_t *b)
{
    const uint64_t i = b->seen++;
    if (i != b->next)
        return 0;
    plan_keep(b, i + 1);
    return 1;
}

/* ---- Algorithm L ------------------------------------------------------------ */

/* The records after the last one taken until the next: floor(log(u) /
 * log(1 - W)), a geometric number of them. */
static void plan_next(mnn_reservoir_t *r)
{
    r->logw += log(open01(r->rng)) / (double)r->k;
    const double w = exp(r->logw);
    const double skip = floor(log(open01(r->rng)) / log1p(-w));
    r->next = skip >= (double)(UINT64_MAX - r->seen) ? UINT64_MAX : r->seen + (uint64_t)skip;
}

void mnn_reservoir_init(mnn_reservoir_t *r, size_t k, mnn_rng_t *rng)
{
    r->k = k;
    r->seen = 0;
    r->next = 0;
    r->logw = 0;
    r->rng = rng;
}

uint64_t mnn_reservoir_skip(const mnn_reservoir_t *r)
{
    return r->seen < r->k || r->k == 0 ? 0 : r->next - r->seen;
}

void mnn_reservoir_skipped(mnn_reservoir_t *r, uint64_t n) { r->seen += n; }

long mnn_reservoir_offer(mnn_reservoir_t *r)
{
    if (r->k == 0)
        return -1;
    const uint64_t i = r->seen++;
    if (i < r->k) {
        if (i + 1 == r->k)
            plan_next(r); /* full: from now on, skips */
        return (long)i;
    }
    if (i < r->next)
        return -1;
    const long slot = (long)(mnn_rng_next(r->rng) % r->k);
    plan_next(r);
    return slot;
}

/* ---- the k largest keys ----------------------------------------------------- */

int mnn_topk_init(mnn_topk_t *t, size_t k)
{
    t->k = k;
    t->n = 0;
    t->key = malloc(k * sizeof *t->key);
    t->slot = malloc(k * sizeof *t->slot);
    if (!t->key || !t->slot) {
        mnn_topk_free(t);
        return MNN_ENOMEM;
    }
    return 0;
}

void mnn_topk_free(mnn_topk_t *t)
{
    free(t->key);
    free(t->slot);
    t->key = NULL;
    t->slot = NULL;
}

static void heap_swap(mnn_topk_t *t, size_t a, size_t b)
{
    double k = t->key[a];
    size_t s = t->slot[a];
    t->key[a] = t->key[b];
    t->slot[a] = t->slot[b];
    t->key[b] = k;
    t->slot[b] = s;
}

static void sift_down(mnn_topk_t *t, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < t->n && t->key[l] < t->key[m])
            m = l;
        if (l + 1 < t->n && t->key[l + 1] < t->key[m])
            m = l + 1;
        if (m == i)
            return;
        heap_swap(t, i, m);
        i = m;
    }
}

double mnn_topk_min(const mnn_topk_t *t) { return t->n ? t->key[0] : -INFINITY; }

long mnn_topk_push(mnn_topk_t *t, double key)
{
    if (t->n < t->k) { /* filling: slot n */
        size_t i = t->n++;
        t->key[i] = key;
        t->slot[i] = i;
        while (i > 0 && t->key[(i - 1) / 2] > t->key[i]) {
            heap_swap(t, i, (i - 1) / 2);
            i = (i - 1) / 2;
        }
        return (long)(t->n - 1);
    }
    if (t->k == 0 || !(key > t->key[0]))
        return -1;
    t->key[0] = key; /* the smallest leaves; its slot is reused */
    const size_t slot = t->slot[0];
    sift_down(t, 0);
    return (long)slot;
}

/* ---- A-ExpJ ---------------------------------------------------------------------
 * Keys are kept as logarithms, log(u) / w, so that neither a tiny nor a huge
 * weight underflows them.  Once the reservoir is full, the weight to pass
 * over before the next record enters is log(u) / log(T), T the smallest key;
 * the record that crosses it gets a key drawn from (T^w, 1). */

int mnn_wres_init(mnn_wres_t *r, size_t k, mnn_rng_t *rng)
{
    r->rng = rng;
    r->xw = 0;
    return mnn_topk_init(&r->top, k);
}

void mnn_wres_free(mnn_wres_t *r) { mnn_topk_free(&r->top); }

static void plan_jump(mnn_wres_t *r)
{
    r->xw = log(open01(r->rng)) / mnn_topk_min(&r->top);
}

long mnn_wres_offer(mnn_wres_t *r, double w)
{
    if (!(w > 0) || !isfinite(w) || r->top.k == 0)
        return -1; /* a weight of 0 is never drawn */
    if (r->top.n < r->top.k) {
        long slot = mnn_topk_push(&r->top, log(open01(r->rng)) / w);
        if (r->top.n == r->top.k)
            plan_jump(r);
        return slot;
    }
    r->xw -= w;
    if (r->xw > 0)
        return -1;
    const double tw = exp(w * mnn_topk_min(&r->top)); /* T^w */
    const double u = tw + (1.0 - tw) * open01(r->rng);
    double key = log(u) / w;
    if (!(key > mnn_topk_min(&r->top))) /* rounding at the edge of (T^w, 1) */
        key = nextafter(mnn_topk_min(&r->top), 0.0);
    const long slot = mnn_topk_push(&r->top, key);
    plan_jump(r);
    return slot;
}

/* ---- decay ------------------------------------------------------------------------
 * Record i weighs exp(lambda * i).  A-Res keeps the k largest u^(1/w), that
 * is the k smallest E / w with E = -log(u) exponential, that is the k
 * largest lambda * i - log(E): a key that stays finite however long the
 * stream. */

double mnn_decay_key(mnn_rng_t *rng, double lambda, uint64_t i)
{
    return lambda * (double)i - log(-log(open01(rng)));
}

/* ---- the samplers' states as text -------------------------------------------
 * Each reader checks what the writer's sampler must have had: counts in
 * range, a heap in order, every field as the sampler's own functions leave
 * it, so that a state read back goes on as the one written would have. */

#define SEEN_MAX ((uint64_t)1 << 62) /* records a state may say were offered */

/* x in the fewest digits that read back as x, for a message. */
static const char *shortest(double x, char buf[32])
{
    for (int prec = 1; prec < 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            return buf;
    }
    snprintf(buf, 32, "%.17g", x);
    return buf;
}

int mnn_bernoulli_write(const mnn_bernoulli_t *b, FILE *f)
{
    return mnn_state_put(f, "bernoulli", "xuu", b->p, b->seen, b->next);
}

int mnn_bernoulli_read(mnn_bernoulli_t *b, const char **p, const char *end, mnn_diag_t *d)
{
    double prob;
    uint64_t seen, next;
    int rc = mnn_state_get(p, end, d, "bernoulli", "xuu", &prob, &seen, &next);
    if (rc < 0)
        return rc;
    if (memcmp(&prob, &b->p, sizeof prob)) {
        char was[32], is[32];
        return mnn_fail(d, MNN_EINVAL, "a sample with probability %s, not %s",
                        shortest(prob, was), shortest(b->p, is));
    }
    if (seen > SEEN_MAX || next < seen || (b->p >= 1 && next != seen))
        return mnn_fail(d, MNN_ECORRUPT, "a Bernoulli sample's counts out of range");
    b->seen = seen;
    b->next = next;
    return 0;
}

int mnn_reservoir_write(const mnn_reservoir_t *r, FILE *f)
{
    return mnn_state_put(f, "reservoir", "zuux", r->k, r->seen, r->next, r->logw);
}

int mnn_reservoir_read(mnn_reservoir_t *r, const char **p, const char *end, mnn_diag_t *d)
{
    size_t k;
    uint64_t seen, next;
    double logw;
    int rc = mnn_state_get(p, end, d, "reservoir", "zuux", &k, &seen, &next, &logw);
    if (rc < 0)
        return rc;
    if (k != r->k)
        return mnn_fail(d, MNN_EINVAL, "a reservoir of %zu, not %zu", k, r->k);
    /* while it fills (and for k 0, forever) nothing is drawn yet */
    const int filling = seen < k || k == 0;
    if (seen > SEEN_MAX || (k == 0 && seen) ||
        (filling ? next != 0 || memcmp(&logw, &(double){0}, sizeof logw)
                 : next < seen || !isfinite(logw) || logw > 0))
        return mnn_fail(d, MNN_ECORRUPT, "a reservoir's counts or weight out of range");
    r->seen = seen;
    r->next = next;
    r->logw = logw;
    return 0;
}

int mnn_topk_write(const mnn_topk_t *t, FILE *f)
{
    int rc = mnn_state_put(f, "topk", "zz", t->k, t->n);
    for (size_t i = 0; i < t->n && rc == 0; i++)
        rc = mnn_state_put(f, "key", "xz", t->key[i], t->slot[i]);
    return rc;
}

int mnn_topk_read(mnn_topk_t *t, const char **p, const char *end, mnn_diag_t *d)
{
    size_t k, n;
    int rc = mnn_state_get(p, end, d, "topk", "zz", &k, &n);
    if (rc < 0)
        return rc;
    if (k != t->k)
        return mnn_fail(d, MNN_EINVAL, "a sample of the %zu largest keys, not %zu", k, t->k);
    if (n > k)
        return mnn_fail(d, MNN_ECORRUPT, "%zu keys of the %zu largest", n, k);
    /* the slots are 0 .. n-1, each once (marked in used) */
    unsigned char *used = calloc(n ? n : 1, 1);
    if (!used)
        return mnn_fail(d, MNN_ENOMEM, "out of memory for %zu keys", n);
    t->n = 0;
    for (size_t i = 0; i < n; i++) {
        double key;
        size_t slot;
        if ((rc = mnn_state_get(p, end, d, "key", "xz", &key, &slot)) < 0)
            break;
        if (isnan(key) || slot >= n || used[slot] || (i && t->key[(i - 1) / 2] > key)) {
            rc = mnn_fail(d, MNN_ECORRUPT, "key %zu of %zu: %s", i, n,
                          isnan(key) ? "not a number" : slot >= n || used[slot]
                          ? "a slot out of range or taken" : "the heap out of order");
            break;
        }
        used[slot] = 1;
        t->key[i] = key;
        t->slot[i] = slot;
    }
    free(used);
    if (rc < 0)
        return rc;
    t->n = n;
    return 0;
}

int mnn_wres_write(const mnn_wres_t *r, FILE *f)
{
    int rc = mnn_state_put(f, "wres", "x", r->xw);
    return rc < 0 ? rc : mnn_topk_write(&r->top, f);
}

int mnn_wres_read(mnn_wres_t *r, const char **p, const char *end, mnn_diag_t *d)
{
    double xw;
    int rc = mnn_state_get(p, end, d, "wres", "x", &xw);
    if (rc < 0 || (rc = mnn_topk_read(&r->top, p, end, d)) < 0)
        return rc;
    /* nothing to pass over until it is full */
    if (isnan(xw) || (r->top.n < r->top.k && memcmp(&xw, &(double){0}, sizeof xw))) {
        r->top.n = 0;
        return mnn_fail(d, MNN_ECORRUPT, "a weighted sample's jump out of range");
    }
    r->xw = xw;
    return 0;
}
