/* memcpy-peak - how long one memcpy of N bytes takes here: the yardstick of
 * a checkpoint's training stall.
 *
 *   memcpy-peak BYTES      prints "memcpy_s S" (median of 5, warm buffers) */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
    char *a, *b;
    if (!n || !(a = malloc(n)) || !(b = malloc(n))) {
        fprintf(stderr, "usage: memcpy-peak BYTES (and enough memory for two copies)\n");
        return 2;
    }
    memset(a, 1, n);
    memset(b, 2, n);
    double t[5];
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        memcpy(b, a, n);
        t[r] = now() - t0;
        a[r] = b[n - 1 - (size_t)r]; /* keep the copies */
    }
    qsort(t, 5, sizeof t[0], cmp);
    printf("memcpy_s %.6f\n", t[2]);
    return 0;
}
