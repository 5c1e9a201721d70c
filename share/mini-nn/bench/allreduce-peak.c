/* allreduce-peak - under mpirun: sgd-train's sum of gradients over the
 * ranks (dist_allreduce) against the loopback bandwidth a plain
 * MPI_Sendrecv loop measures, on N floats, in alternating pairs.
 *
 *   mpirun -n R allreduce-peak N PAIRS
 *
 * Each pair times one dist_sum of N floats (through a shared window when
 * every rank is on this host, else dist_allreduce's messages;
 * MNN_MPI_SHARED=0 picks the messages) and one exchange of the
 * same bytes by MPI_Sendrecv (each rank sends and receives 2 (R-1)/R N
 * floats, as the allreduce does, to its ring neighbours, in 4 MiB
 * messages).  Rank 0 prints, one per line: the allreduce's seconds, its
 * bus bandwidth (2 (R-1)/R N 4 bytes / s), the Sendrecv's, and the median
 * of the pairs' ratios (Sendrecv time / allreduce time: the share of the
 * loopback bandwidth the allreduce reaches), and MPI_Allreduce's seconds
 * and bus bandwidth for reference.  It checks the sum too. */
#include <config.h>

#include "dist.h"
#include "cli.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    cli_init("allreduce-peak");
    if (argc != 3)
        usage_error("usage: mpirun -n R allreduce-peak N PAIRS");
    const size_t n = opt_size("N", argv[1], 1, (size_t)INT_MAX);
    const size_t pairs = opt_size("PAIRS", argv[2], 1, 1000);
    dist_t D;
    dist_init(&D);
    if (!D.mpi || D.R < 2)
        die(EXIT_USAGE, "run it under mpirun with at least 2 ranks");
    /* the first exchange: as sgd-train's (every rank came this far) */
    dist_ready(&D);
    const size_t R = D.R, r = D.r;
    float *g = dist_buffers(&D, n);
    const size_t moved = 2 * (R - 1) * (n / R); /* floats each rank sends */
    float *sbuf = mnn_calloc_aligned(moved / 2 + 1, sizeof(float));
    float *rbuf = mnn_calloc_aligned(moved / 2 + 1, sizeof(float));
    double *ar = calloc(pairs, sizeof *ar), *sr = calloc(pairs, sizeof *sr);
    double *mr = calloc(pairs, sizeof *mr);
    double *ratio = calloc(pairs, sizeof *ratio);
    if (!sbuf || !rbuf || !ar || !sr || !mr || !ratio)
        die(EXIT_RUNTIME, "out of memory for %zu floats", n);
    const int next = (int)((r + 1) % R), prev = (int)((r + R - 1) % R);
    const size_t piece = (size_t)1 << 20;
    for (size_t p = 0; p < pairs; p++) {
        for (size_t i = 0; i < n; i++)
            g[i] = (float)(r + 1);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        if (dist_sum(&D) < 0)
            die(EXIT_RUNTIME, "dist_sum failed");
        MPI_Barrier(MPI_COMM_WORLD);
        ar[p] = MPI_Wtime() - t0;
        const float want = (float)(R * (R + 1) / 2);
        if (g[0] != want || g[n - 1] != want || g[n / 2] != want)
            die(EXIT_RUNTIME, "the sum is %g, not %g", (double)g[n / 2], (double)want);
        /* the same floats each way: twice moved/2, to the next rank */
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        for (int round = 0; round < 2; round++)
            for (size_t o = 0; o < moved / 2; o += piece) {
                const int len = (int)(moved / 2 - o < piece ? moved / 2 - o : piece);
                MPI_Sendrecv(sbuf + o, len, MPI_FLOAT, next, 7, rbuf + o, len, MPI_FLOAT, prev, 7,
                             MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            }
        MPI_Barrier(MPI_COMM_WORLD);
        sr[p] = MPI_Wtime() - t0;
        ratio[p] = sr[p] / ar[p];
        /* for reference: MPI's own, in the order its algorithm picks */
        t0 = MPI_Wtime();
        MPI_Allreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        MPI_Barrier(MPI_COMM_WORLD);
        mr[p] = MPI_Wtime() - t0;
    }
    if (r == 0) {
        const double bytes = (double)moved * sizeof(float);
        const double a = median(ar, pairs), s = median(sr, pairs);
        const double mpi = median(mr, pairs);
        printf("path %s\n", D.shared ? "shared-window" : "messages");
        printf("allreduce_s %.6f\nallreduce_busbw_gbs %.3f\nsendrecv_s %.6f\n"
               "sendrecv_gbs %.3f\nratio_median %.3f\nmpi_allreduce_s %.6f\n"
               "mpi_allreduce_busbw_gbs %.3f\n",
               a, bytes / a / 1e9, s, bytes / s / 1e9, median(ratio, pairs), mpi,
               bytes / mpi / 1e9);
    }
    free(ar);
    free(sr);
    free(mr);
    free(ratio);
    mnn_free(sbuf);
    mnn_free(rbuf);
    dist_finish(&D);
    dist_free(&D);
    return 0;
}
