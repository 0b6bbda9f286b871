/* Tiled transpose(-and-add) of the curvature family: the layout changes that put k directions
 * side by side for the matrix products and the products back as (P, k) (mlp.py, k > 1).
 *
 * dst[c * ldd + r] = a[r * lda + c] (+ b[r * ldb + c]) for r < R, c < C. 32 x 32 tiles, so the
 * strided side touches 32 cache lines at a time: numpy's copyto reads such a transpose down
 * columns 4 KiB apart, which conflict in L1. b may be NULL (plain transpose).
 */
#ifndef FASTOPT_CURVATURE_TRANSPOSE_H
#define FASTOPT_CURVATURE_TRANSPOSE_H

#include <stddef.h>

#include "_simd.h"

#define FO_TILE 32

#define FO_TRANSPOSE(NAME, T)                                                                \
    FO_CLONES static void NAME(T *restrict dst, ptrdiff_t ldd, const T *restrict a,          \
                               ptrdiff_t lda, const T *restrict b, ptrdiff_t ldb, ptrdiff_t R, \
                               ptrdiff_t C)                                                  \
    {                                                                                        \
        for (ptrdiff_t r0 = 0; r0 < R; r0 += FO_TILE) {                                      \
            ptrdiff_t r1 = r0 + FO_TILE < R ? r0 + FO_TILE : R;                              \
            for (ptrdiff_t c0 = 0; c0 < C; c0 += FO_TILE) {                                  \
                ptrdiff_t c1 = c0 + FO_TILE < C ? c0 + FO_TILE : C;                          \
                if (b) {                                                                     \
                    for (ptrdiff_t r = r0; r < r1; ++r)                                      \
                        for (ptrdiff_t c = c0; c < c1; ++c)                                  \
                            dst[c * ldd + r] = a[r * lda + c] + b[r * ldb + c];              \
                } else {                                                                     \
                    for (ptrdiff_t r = r0; r < r1; ++r)                                      \
                        for (ptrdiff_t c = c0; c < c1; ++c)                                  \
                            dst[c * ldd + r] = a[r * lda + c];                               \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }

FO_TRANSPOSE(fo_transpose_f, float)
FO_TRANSPOSE(fo_transpose_d, double)

#endif
