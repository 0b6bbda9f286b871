/* Hot C loops of the spectra family (fastopt/spectral/_cython.pyx includes this header).
 *
 * Reductions: products are summed in the input type in FO_LANES independent lanes (the FMA
 * latency does not bound the loop; float32 runs 16 lanes per AVX-512 register) over at most
 * FO_BLOCK columns, then the lanes are added into float64 lanes (vectorized) and those summed
 * in a fixed order at the end: float64 accumulation at float32 speed, deterministic.
 * Build and time these loops without Python: bench/c/spectral_harness.c (see its header).
 */
#ifndef FASTOPT_SPECTRAL_KERNELS_H
#define FASTOPT_SPECTRAL_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "_simd.h"

typedef ptrdiff_t fo_idx; /* Py_ssize_t on every platform CPython supports */

#if defined(__GNUC__) || defined(__clang__)
#define FO_PREFETCH_L2(p) __builtin_prefetch((p), 0, 1)
#define FO_INLINE static inline __attribute__((always_inline))
#else
#define FO_PREFETCH_L2(p) ((void)0)
#define FO_INLINE static inline
#endif

#define FO_LANES 64
#define FO_BLOCK 1024
#define FO_FLUSH 16

#define FO_CAT_(a, b) a##b
#define FO_CAT(a, b) FO_CAT_(a, b)
#define FO_FN(name) FO_CAT(name, FO_SUFFIX)

#define FO_T float
#define FO_SUFFIX _f
#include "_spectral_kernels_t.h"
#undef FO_T
#undef FO_SUFFIX

#define FO_T double
#define FO_SUFFIX _d
#include "_spectral_kernels_t.h"
#undef FO_T
#undef FO_SUFFIX

#endif
