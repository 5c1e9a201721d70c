/* error.c - error codes and diagnostics. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

const char *mnn_strerror(int err)
{
    switch (err) {
    case MNN_OK: return "success";
    case MNN_ENOMEM: return "out of memory";
    case MNN_EINVAL: return "invalid value";
    case MNN_EIO: return "input/output error";
    case MNN_EFORMAT: return "malformed input";
    case MNN_EOVERFLOW: return "size too large";
    case MNN_ECORRUPT: return "data corrupted";
    case MNN_ESHAPE: return "shape mismatch";
    case MNN_EOF: return "end of input";
    case MNN_EEXIST: return "already exists";
    case MNN_ECANCELED: return "canceled";
    case MNN_EBUSY: return "in use by another process";
    case MNN_ELIMIT: return "beyond a limit";
    default: return "unknown error";
    }
}

int mnn_fail(mnn_diag_t *d, int err, const char *fmt, ...)
{
    if (d) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->msg, sizeof d->msg, fmt, ap);
        va_end(ap);
    }
    return err;
}

int mnn_fail_prefix(mnn_diag_t *d, int err, const char *prefix)
{
    if (!d)
        return err;
    char was[sizeof d->msg];
    snprintf(was, sizeof was, "%s", d->msg);
    return mnn_fail(d, err, "%s: %s", prefix, was);
}
