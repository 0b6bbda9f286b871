/* Row loops of the curvature kernels (_cython.pyx's hidden_forward, hidden_backward, colsum):
 * one contiguous feature row at a time, branch-free inner loops that the compiler vectorizes,
 * compiled per SIMD level (FO_CLONES: AVX-512, AVX2, baseline, picked when the module loads).
 * Outputs never alias inputs (restrict); the loops compute what the numpy reference does, in
 * the row's dtype.
 */
#ifndef FASTOPT_CURVATURE_ROWS_H
#define FASTOPT_CURVATURE_ROWS_H

#include <math.h>
#include <stddef.h>

#include "_formulas.h"
#include "_simd.h"

#define FO_TANH_LIBM(OUT, IN) ((OUT) = tanh(IN))

/* a = tanh(z + b); need >= 1: d1 = 1 - a^2; need == 2: d2 = -2 a d1. Few pointers per loop: gcc
   gives up vectorizing when too many run-time alias checks would be needed. */
#define FO_TANH_ROW(NAME, T, TANH)                                                           \
    FO_CLONES static void NAME(const T *restrict z, const T *restrict b, T *restrict a,      \
                               T *restrict d1, T *restrict d2, ptrdiff_t n, int need)        \
    {                                                                                        \
        if (need >= 1) {                                                                     \
            for (ptrdiff_t o = 0; o < n; ++o) {                                              \
                T t;                                                                         \
                TANH(t, z[o] + b[o]);                                                        \
                a[o] = t;                                                                    \
                d1[o] = 1 - t * t;                                                           \
            }                                                                                \
            if (need == 2)                                                                   \
                for (ptrdiff_t o = 0; o < n; ++o)                                            \
                    d2[o] = -2 * a[o] * d1[o];                                               \
        } else {                                                                             \
            for (ptrdiff_t o = 0; o < n; ++o)                                                \
                TANH(a[o], z[o] + b[o]);                                                     \
        }                                                                                    \
    }

/* R-forward: rz = av + c (+ zr when zr is not NULL), ra = d1 * rz. */
#define FO_RFORWARD_ROW(NAME, T)                                                             \
    FO_CLONES static void NAME(const T *restrict av, const T *restrict c,                    \
                               const T *restrict zr, const T *restrict d1, T *restrict rz,   \
                               T *restrict ra, ptrdiff_t n)                                  \
    {                                                                                        \
        if (zr) {                                                                            \
            for (ptrdiff_t o = 0; o < n; ++o) {                                              \
                T r = av[o] + c[o] + zr[o];                                                  \
                rz[o] = r;                                                                   \
                ra[o] = d1[o] * r;                                                           \
            }                                                                                \
        } else {                                                                             \
            for (ptrdiff_t o = 0; o < n; ++o) {                                              \
                T r = av[o] + c[o];                                                          \
                rz[o] = r;                                                                   \
                ra[o] = d1[o] * r;                                                           \
            }                                                                                \
        }                                                                                    \
    }

/* R-backward: out = (dar + dv) d1 + da0 d2 rz, or dar d1 when gn (Gauss-Newton: dv, d2, rz
   unused and may be NULL). */
#define FO_BACKWARD_ROW(NAME, T)                                                             \
    FO_CLONES static void NAME(const T *restrict da0, const T *restrict dar,                 \
                               const T *restrict dv, const T *restrict d1,                   \
                               const T *restrict d2, const T *restrict rz, T *restrict out,  \
                               ptrdiff_t n, int gn)                                          \
    {                                                                                        \
        if (gn) {                                                                            \
            for (ptrdiff_t o = 0; o < n; ++o)                                                \
                out[o] = dar[o] * d1[o];                                                     \
        } else {                                                                             \
            for (ptrdiff_t o = 0; o < n; ++o)                                                \
                out[o] = (dar[o] + dv[o]) * d1[o] + da0[o] * d2[o] * rz[o];                  \
        }                                                                                    \
    }

/* acc += row in float64 (the column sums of the bias terms). */
#define FO_ADD_ROW(NAME, T)                                                                  \
    FO_CLONES static void NAME(double *restrict acc, const T *restrict row, ptrdiff_t n)     \
    {                                                                                        \
        for (ptrdiff_t o = 0; o < n; ++o)                                                    \
            acc[o] = acc[o] + row[o];                                                        \
    }

FO_TANH_ROW(fo_tanh_row_f, float, FO_TANH_FAST)
FO_TANH_ROW(fo_tanh_row_d, double, FO_TANH_LIBM)
FO_RFORWARD_ROW(fo_rforward_row_f, float)
FO_RFORWARD_ROW(fo_rforward_row_d, double)
FO_BACKWARD_ROW(fo_backward_row_f, float)
FO_BACKWARD_ROW(fo_backward_row_d, double)
FO_ADD_ROW(fo_add_row_f, float)
FO_ADD_ROW(fo_add_row_d, double)

#endif
