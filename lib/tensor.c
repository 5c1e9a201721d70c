/* tensor.c - aligned allocation with checked sizes. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int mnn_size_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return MNN_EOVERFLOW;
    *out = a * b;
    return 0;
}

void *mnn_calloc_aligned(size_t n, size_t size)
{
    size_t bytes;
    void *p = NULL;
    if (mnn_size_mul(n, size, &bytes) < 0 || bytes > SIZE_MAX - 64)
        return NULL;
    bytes = (bytes + 63) & ~(size_t)63; /* aligned_alloc wants a multiple */
    if (bytes == 0)
        bytes = 64;
    p = aligned_alloc(64, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void mnn_free(void *p) { free(p); }

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
