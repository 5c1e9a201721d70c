/* coproc.c - starting a child process we talk to through pipes, and ending
 * it within a bound.  See coproc.h. */
#include <config.h>

#include "coproc.h"
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Moves both descriptors of fd above stdin, stdout and stderr (where this
 * process was started with one of them closed), so that the child's dup2
 * onto 0 and 1 cannot overwrite one with the other; 0 or -1. */
static int above_stdio(int fd[2])
{
    for (int i = 0; i < 2; i++) {
        if (fd[i] > STDERR_FILENO)
            continue;
        int n = fcntl(fd[i], F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
        if (n < 0)
            return -1;
        close(fd[i]);
        fd[i] = n;
    }
    return 0;
}

static void close_pair(int fd[2])
{
    for (int i = 0; i < 2; i++)
        if (fd[i] >= 0)
            close(fd[i]);
}

/* posix_spawn with the child's stdin on in, its stdout on out, its signals
 * as coproc.h says; 0 or an error number. */
static int spawn(pid_t *pid, const char *path, char *const av[], int in, int out, int flags)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc)
        return rc;
    if ((rc = posix_spawnattr_init(&at))) {
        posix_spawn_file_actions_destroy(&fa);
        return rc;
    }
    sigset_t none, def;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGCHLD);
    short sf = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (flags & COPROC_PGROUP) {
        const int stop[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
        for (size_t i = 0; i < sizeof stop / sizeof *stop; i++)
            sigaddset(&def, stop[i]);
        posix_spawnattr_setpgroup(&at, 0);
        sf |= POSIX_SPAWN_SETPGROUP;
    }
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setflags(&at, sf);
    if (!(rc = posix_spawn_file_actions_adddup2(&fa, in, STDIN_FILENO)) &&
        !(rc = posix_spawn_file_actions_adddup2(&fa, out, STDOUT_FILENO)))
        rc = posix_spawn(pid, path, &fa, &at, av, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    return rc;
}

int coproc_start(coproc_t *c, const char *const argv[], int flags)
{
    /* in[0] becomes its stdin and out[1] its stdout; we keep in[1], out[0] */
    int in[2] = {-1, -1}, out[2] = {-1, -1}, rc = 0;
    c->pid = -1;
    c->to = c->from = -1;
    c->flags = flags;
    c->status = -1;
    c->signalled = 0;
    if (((flags & COPROC_SOCKET) ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in)
                                 : pipe2(in, O_CLOEXEC)) < 0 ||
        pipe2(out, O_CLOEXEC) < 0 || above_stdio(in) < 0 || above_stdio(out) < 0) {
        rc = errno;
        goto fail;
    }
    size_t n = 0;
    while (argv[n])
        n++;
    const char **av = malloc((n + 3) * sizeof *av);
    if (!av) {
        rc = ENOMEM;
        goto fail;
    }
    const char *path = argv[0];
    if (flags & COPROC_SHELL) {
        path = "/bin/sh";
        av[0] = "sh";
        av[1] = "-c";
        for (size_t i = 0; i <= n; i++)
            av[2 + i] = argv[i];
    } else
        for (size_t i = 0; i <= n; i++)
            av[i] = argv[i];
    pid_t pid;
    rc = spawn(&pid, path, (char *const *)av, in[0], out[1], flags);
    free(av);
    if (rc)
        goto fail;
    close(in[0]);
    close(out[1]);
    c->pid = pid;
    c->to = in[1];
    c->from = out[0];
    return 0;
fail:
    close_pair(in);
    close_pair(out);
    errno = rc;
    return -1;
}

/* SIGTERM or SIGKILL to the child, and to its group where it leads one. */
static void signal_child(const coproc_t *c, int sig)
{
    if (c->flags & COPROC_PGROUP)
        kill(-c->pid, sig);
    kill(c->pid, sig); /* also where it left the group */
}

/* Waits for the child until the monotonic time until (< 0: for as long as
 * it takes), reading and dropping its output meanwhile.  1 reaped, with
 * its wait status in *st; 0 not by then; -1 it cannot be waited for. */
static int wait_child(coproc_t *c, int *st, double until)
{
    for (;;) {
        pid_t r = waitpid(c->pid, st, until < 0 ? 0 : WNOHANG);
        if (r > 0)
            return 1;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (mono_now() >= until)
            return 0;
        /* a short nap, cut short by its output */
        struct pollfd p = {.fd = c->from, .events = POLLIN};
        if (poll(&p, c->from >= 0, 2) > 0) {
            char junk[4096];
            ssize_t k = read(c->from, junk, sizeof junk);
            if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN)) {
                close(c->from);
                c->from = -1;
            }
        }
    }
}

int coproc_reap(coproc_t *c, double grace, double term)
{
    int st = 0, r = -1, sent = 0;
    if (c->pid > 0) {
        r = wait_child(c, &st, mono_now() + grace);
        if (r == 0 && term > 0) {
            signal_child(c, sent = SIGTERM);
            r = wait_child(c, &st, mono_now() + term);
        }
        if (r == 0) {
            signal_child(c, sent = SIGKILL);
            r = wait_child(c, &st, -1);
        }
    }
    if (c->to >= 0)
        close(c->to);
    if (c->from >= 0)
        close(c->from);
    c->to = c->from = -1;
    c->pid = -1;
    c->status = r > 0 ? st : -1;
    c->signalled = r > 0 && sent && WIFSIGNALED(st) &&
                   (WTERMSIG(st) == SIGKILL || WTERMSIG(st) == sent);
    return c->status;
}

const char *coproc_how(const coproc_t *c, char *buf, size_t size)
{
    if (c->status == -1)
        snprintf(buf, size, "ended");
    else if (c->signalled)
        snprintf(buf, size, "was stopped");
    else if (WIFEXITED(c->status))
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(c->status));
    else if (WIFSIGNALED(c->status))
        snprintf(buf, size, "was killed by signal %d", WTERMSIG(c->status));
    else
        snprintf(buf, size, "ended");
    return buf;
}
