/* rng.c - xoshiro256** seeded through splitmix64.  The whole state is the
 * four words of mnn_rng_t, so saving it is copying it. */
#include "internal.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void mnn_rng_seed(mnn_rng_t *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t mnn_rng_next(mnn_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double mnn_rng_uniform(mnn_rng_t *r)
{
    return (double)(mnn_rng_next(r) >> 11) * 0x1.0p-53;
}

double mnn_rng_normal(mnn_rng_t *r)
{
    /* Box-Muller with u1 in (0,1]: log(u1) is finite. */
    double u1 = 1.0 - mnn_rng_uniform(r);
    double u2 = mnn_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
