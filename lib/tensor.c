/* tensor.c - aligned allocation with checked sizes. */
#include "internal.h"

#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

int mnn_size_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return MNN_EOVERFLOW;
    *out = a * b;
    return 0;
}

/* Blocks this large are aligned to, and advised as, transparent huge pages:
 * a 400 MB weight matrix then costs a few hundred page faults instead of
 * 100,000, and copying it (a checkpoint's snapshot) misses the TLB less. */
#define HUGE_ALIGN ((size_t)2 << 20)
#define HUGE_MIN ((size_t)8 << 20)

/* calloc() returns fresh mappings without writing them (the kernel's pages
 * are zero), so a large buffer costs nothing until it is used; the pointer
 * calloc() gave is kept in the word before the aligned block, for
 * mnn_free(). */
void *mnn_calloc_aligned(size_t n, size_t size)
{
    size_t bytes;
    if (mnn_size_mul(n, size, &bytes) < 0)
        return NULL;
    const size_t align = bytes >= HUGE_MIN ? HUGE_ALIGN : 64;
    if (bytes > SIZE_MAX - align - sizeof(void *))
        return NULL;
    char *raw = calloc(1, bytes + align + sizeof(void *));
    if (!raw)
        return NULL;
    uintptr_t a = ((uintptr_t)raw + sizeof(void *) + align - 1) & ~(uintptr_t)(align - 1);
    void **p = (void **)a;
    p[-1] = raw;
#ifdef MADV_HUGEPAGE
    if (align == HUGE_ALIGN)
        (void)madvise(p, bytes & ~(HUGE_ALIGN - 1), MADV_HUGEPAGE); /* advice only */
#endif
    return p;
}

void mnn_free(void *p)
{
    if (p)
        free(((void **)p)[-1]);
}

int mnn_tensor_init(mnn_tensor_t *t, size_t rows, size_t cols)
{
    size_t n;
    t->data = NULL;
    t->rows = t->cols = 0;
    if (mnn_size_mul(rows, cols, &n) < 0)
        return MNN_EOVERFLOW;
    t->data = mnn_calloc_aligned(n, sizeof(float));
    if (!t->data)
        return MNN_ENOMEM;
    t->rows = rows;
    t->cols = cols;
    return 0;
}

void mnn_tensor_free(mnn_tensor_t *t)
{
    mnn_free(t->data);
    t->data = NULL;
    t->rows = t->cols = 0;
}
