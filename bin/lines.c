/* lines.c - held record lines, labels and bad-record reports for the
 * record filters. */
#include <config.h>

#include "lines.h"
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void line_copy_set(line_copy_t *c, const char *line, size_t len, uint64_t rec)
{
    if (mnn_replay_rec_set(c, line, len, rec) < 0)
        die(EXIT_RUNTIME, "out of memory holding a record of %zu bytes", len);
}

const char *label_end(const char *p, const char *end)
{
    while (p < end && *p != ',' && *p != '\t' && *p != ' ')
        p++;
    return p;
}

const char *excerpt(const char *p, const char *end, char *buf, size_t size)
{
    snprintf(buf, size, "%.*s%s", (int)(end - p > 40 ? 40 : end - p), p, end - p > 40 ? "..." : "");
    return buf;
}

int badrec(badrec_t *b, uint64_t lineno, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!b->skip)
        die(EXIT_RUNTIME, "%s:%llu: %s", b->name, (unsigned long long)lineno, msg);
    if (b->count++ == 0)
        snprintf(b->first, sizeof b->first, "%s:%llu: %s", b->name, (unsigned long long)lineno,
                 msg);
    /* the first few one by one, as sgd-train and infer do; then a count */
    if (b->quiet)
        ;
    else if (b->count <= BADREC_SHOWN)
        warnx_("%s:%llu: %s (skipped)", b->name, (unsigned long long)lineno, msg);
    else if (b->count == BADREC_SHOWN + 1)
        warnx_("more bad records are skipped silently; a count follows at the end");
    return -1;
}

void badrec_report(const badrec_t *b)
{
    if (b->count && !b->quiet)
        warnx_("skipped %llu bad record%s (first: %s)", (unsigned long long)b->count,
               b->count == 1 ? "" : "s", b->first);
}

int check_class(badrec_t *b, const char *line, size_t len, uint64_t lineno, double label)
{
    char e[64];
    if (label >= 0 && label < MAX_CLASS && label == (double)(int32_t)label) /* range first */
        return 0;
    return badrec(b, lineno, "label '%s' is not a class id (0 to %d)",
                  excerpt(line, label_end(line, line + len), e, sizeof e), MAX_CLASS - 1);
}

int read_label(badrec_t *b, const char *line, size_t len, uint64_t lineno, double *label)
{
    const char *q = label_end(line, line + len);
    char e[64];
    if (mnn_parse_double(line, q, label) < 0)
        return badrec(b, lineno, "label '%s' is not a number", excerpt(line, q, e, sizeof e));
    return 0;
}

int open_input(int nargs, char **args, badrec_t *b)
{
    b->name = "stdin";
    if (nargs > 1)
        usage_error("one input at most");
    if (nargs == 0 || !strcmp(args[0], "-"))
        return STDIN_FILENO;
    b->name = args[0];
    int fd = open(b->name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(EXIT_RUNTIME, "%s: %s", b->name, strerror(errno));
    return fd;
}

static int sig_pipe_w = -1;
static volatile sig_atomic_t *sig_flag;
static volatile sig_atomic_t sig_came[65]; /* by number: it came (signal_taken) */

static void on_signal(int sig)
{
    int e = errno;
    if (sig_flag)
        *sig_flag = sig;
    if (sig > 0 && sig < 65)
        sig_came[sig] = 1;
    ssize_t w = write(sig_pipe_w, "", 1);
    (void)w; /* a full pipe: a wake-up is pending already */
    errno = e;
}

int signals_to_pipe(const int *sigs, size_t n, volatile sig_atomic_t *flag)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        die(EXIT_RUNTIME, "pipe: %s", strerror(errno));
    sig_pipe_w = p[1];
    sig_flag = flag;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    /* SA_RESTART: a write to a full pipe downstream goes on instead of
     * failing with EINTR (stdio would not retry it); the line reader's
     * poll() on the pipe wakes up anyway, as poll() is never restarted */
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < n; i++)
        sigaction(sigs[i], &sa, NULL);
    return p[0];
}

int signal_taken(int sig)
{
    if (sig <= 0 || sig >= 65 || !sig_came[sig])
        return 0;
    sig_came[sig] = 0;
    return 1;
}

void drain_signal_pipe(int fd)
{
    char drain[64];
    while (read(fd, drain, sizeof drain) > 0)
        ;
}

/* A cut line: what the stage keeps track of, and whether it is in place. */
static int cut_line(mnn_linereader_t *lr, const badrec_t *b, cut_stage_t *cs, const char *line,
                    size_t len)
{
    mnn_cutline_t l;
    mnn_diag_t d = {""};
    const unsigned long long no = (unsigned long long)lr->lineno;
    int rc = mnn_cutline_parse(line, len, &l, &d);
    if (rc < 0 && cs->active)
        die(EXIT_RUNTIME, "%s:%llu: %s", b->name, no, d.msg);
    if (rc == 0 || (rc < 0 && !cs->active))
        return 0;
    if (l.kind != MNN_CUT_START && !cs->active) {
        /* no pipeline with cuts: a '#' line like any other */
        static int noted;
        if (!noted++ && !b->quiet)
            warnx_("%s:%llu: a cut line before any pipeline's start line: passed on, no part "
                   "taken (the head of a pipeline with cuts is stream-ingest)", b->name, no);
        return 0;
    }
    switch (l.kind) {
    case MNN_CUT_START:
        if (cs->active)
            die(EXIT_RUNTIME, "%s:%llu: a second start line", b->name, no);
        if (l.index >= MNN_CUT_MAX_STAGES - 1)
            die(EXIT_RUNTIME, "%s:%llu: more than %d stages take part in the cuts", b->name, no,
                MNN_CUT_MAX_STAGES - 1);
        cs->active = 1;
        cs->index = l.index;
        cs->from = cs->id = l.id;
        mnn_cut_put_start(stdout, l.id, l.index + 1);
        fflush(stdout);
        pipe_widen(STDOUT_FILENO);
        return NR_START;
    case MNN_CUT_BARRIER:
        if (cs->in_block || l.id <= cs->id)
            die(EXIT_RUNTIME, "%s:%llu: barrier %llu %s", b->name, no, (unsigned long long)l.id,
                cs->in_block ? "inside the block of another" : "out of order");
        cs->id = l.id;
        cs->what = l.what;
        cs->in_block = 1;
        cs->ended = 0;
        cs->after = 0;
        return NR_BARRIER;
    case MNN_CUT_END:
        if (!cs->in_block || l.id != cs->id)
            die(EXIT_RUNTIME, "%s:%llu: the end of cut %llu, which is not the one open", b->name,
                no, (unsigned long long)l.id);
        return NR_END;
    case MNN_CUT_PART:
        if (!cs->in_block || l.id != cs->id || l.index >= cs->index)
            die(EXIT_RUNTIME, "%s:%llu: a part out of place (cut %llu, stage %u)", b->name, no,
                (unsigned long long)l.id, (unsigned)l.index);
        break;
    default: /* data lines: checked where the cut is committed */
        if (!cs->in_block)
            die(EXIT_RUNTIME, "%s:%llu: a part's data outside a barrier's block", b->name, no);
        break;
    }
    return 0;
}

int next_record(mnn_linereader_t *lr, const badrec_t *b, cut_stage_t *cs, const char **line,
                size_t *len)
{
    for (;;) {
        int rc = mnn_lr_next(lr, line, len);
        if (rc == MNN_EOF)
            return 0;
        if (rc == MNN_ECANCELED)
            return rc;
        if (rc == MNN_EOVERFLOW)
            die(EXIT_RUNTIME, "%s:%llu: a line longer than %zu bytes", b->name,
                (unsigned long long)lr->lineno, lr->max_line);
        if (rc < 0)
            die(EXIT_RUNTIME, "%s: %s", b->name,
                rc == MNN_EIO ? strerror(lr->err) : mnn_strerror(rc));
        if (*len && (*line)[*len - 1] == '\r')
            (*len)--;
        if (*len == 0)
            continue;
        if ((*line)[0] != '#') {
            if (cs && cs->in_block)
                die(EXIT_RUNTIME, "%s:%llu: a record inside the block of cut %llu", b->name,
                    (unsigned long long)lr->lineno, (unsigned long long)cs->id);
            if (cs)
                cs->after++, cs->ended = 0;
            return 1;
        }
        if (cs && *len > 1 && ((*line)[1] == '!' || (*line)[1] == '=')) {
            int k = cut_line(lr, b, cs, *line, *len);
            if (k)
                return k;
        }
        /* as it comes: a #!ckpt barrier must not wait behind the data */
        fwrite(*line, 1, *len, stdout);
        putchar('\n');
        fflush(stdout);
    }
}

void cut_read_part(const mnn_ckpt_t *ck, const cut_stage_t *cs, char **buf, size_t *len)
{
    uint64_t cut = 0;
    mnn_diag_t d = {""};
    if (mnn_ckpt_stage_read(ck->dir, cs->index, cs->program, buf, len, &cut, &d) < 0)
        die(EXIT_RUNTIME, "--resume: %s", d.msg);
    if (cut != cs->from) {
        free(*buf);
        if (cs->from)
            die(EXIT_RUNTIME, "--resume %s is cut %llu, but the head of the pipeline resumed from "
                "cut %llu: resume every stage from the same cut", ck->src,
                (unsigned long long)cut, (unsigned long long)cs->from);
        die(EXIT_RUNTIME, "--resume %s is cut %llu, but the head of the pipeline started afresh: "
            "resume it from the same cut", ck->src, (unsigned long long)cut);
    }
}

static volatile sig_atomic_t held_signals;

static void on_held_signal(int sig)
{
    if (held_signals++) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

void cut_hold_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_held_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

void cut_pass_barrier(const cut_stage_t *cs)
{
    mnn_cut_put_barrier(stdout, cs->id, cs->what);
    fflush(stdout);
}

void cut_pass_end(cut_stage_t *cs, const void *data, size_t n)
{
    mnn_diag_t d = {""};
    if (!cs->root)
        mnn_cut_put_part(stdout, cs->id, cs->index, cs->program, data, n);
    else if (mnn_cut_part_save(cs->root, cs->id, cs->index, cs->program, data, n, &d) < 0)
        die(EXIT_RUNTIME, "cut %llu: --ckpt-dir %s: %s", (unsigned long long)cs->id, cs->root,
            d.msg);
    else
        mnn_cut_put_part_ref(stdout, cs->id, cs->index, cs->program, data, n);
    mnn_cut_put_end(stdout, cs->id);
    fflush(stdout);
    out_check();
    cs->in_block = 0;
    cs->ended = cs->what != MNN_CUT_GO;
}

int cut_input_ended(const cut_stage_t *cs, const badrec_t *b)
{
    if (!cs->active)
        return 0;
    if (cs->in_block)
        die(EXIT_RUNTIME, "%s: the input ended inside the block of cut %llu: the stages before "
            "this one went away mid-cut", b->name, (unsigned long long)cs->id);
    if (!cs->ended)
        die(EXIT_RUNTIME, "%s: the input ended %llu records after cut %llu, without the "
            "pipeline's stop or final cut: the head went away (resume the pipeline from its "
            "last committed cut)", b->name, (unsigned long long)cs->after,
            (unsigned long long)cs->id);
    return 1;
}
