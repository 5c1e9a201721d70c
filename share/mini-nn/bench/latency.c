/* latency - per-record latency of a line-buffered filter.
 *
 *   latency N FILE CMD [ARG]...
 *
 * Starts CMD with pipes, then for each of the first N lines of FILE writes
 * the line, waits for one line back, and times it.  Prints p50, p95, p99
 * and max in microseconds and the records per second of this ping-pong. */
#include <config.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            perror("latency: write");
            exit(1);
        }
        p += w, n -= (size_t)w;
    }
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: latency N FILE CMD [ARG]...\n");
        return 2;
    }
    long n = strtol(argv[1], NULL, 10);
    FILE *in = fopen(argv[2], "r");
    if (n <= 0 || !in) {
        fprintf(stderr, "latency: bad N or cannot open %s\n", argv[2]);
        return 2;
    }
    int to[2], from[2];
    if (pipe(to) || pipe(from))
        return perror("latency: pipe"), 1;
    signal(SIGPIPE, SIG_IGN);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[0]), close(to[1]), close(from[0]), close(from[1]);
        execvp(argv[3], argv + 3);
        perror("latency: exec");
        _exit(127);
    }
    close(to[0]), close(from[1]);
    double *lat = malloc((size_t)n * sizeof *lat);
    char *line = NULL, buf[65536];
    size_t cap = 0;
    long done = 0;
    double t_start = now();
    while (done < n && getline(&line, &cap, in) > 0) {
        double t0 = now();
        write_all(to[1], line, strlen(line));
        for (;;) { /* read up to and including one '\n' */
            ssize_t r = read(from[0], buf, 1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                fprintf(stderr, "latency: the filter stopped answering\n");
                return 1;
            }
            if (buf[0] == '\n')
                break;
        }
        lat[done++] = (now() - t0) * 1e6;
    }
    double total = now() - t_start;
    close(to[1]);
    int status;
    waitpid(pid, &status, 0);
    if (done == 0)
        return fprintf(stderr, "latency: no records\n"), 1;
    qsort(lat, (size_t)done, sizeof *lat, cmp);
    printf("records %ld\np50_us %.1f\np95_us %.1f\np99_us %.1f\nmax_us %.1f\nrecords_per_s %.0f\n",
           done, lat[done / 2], lat[(size_t)(done * 95 / 100)], lat[(size_t)(done * 99 / 100)],
           lat[done - 1], (double)done / total);
    return 0;
}
