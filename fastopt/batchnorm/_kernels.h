/* Batch-norm kernels of the Cython backend: C loops per dtype, compiled once per SIMD level
 * (AVX-512, AVX2, baseline) and picked at run time (fastopt/_simd.h: fo_dispatch_level, which
 * honours FASTOPT_SIMD=avx512|avx2|baseline). The loops are in _kernels_impl.h, the scalar
 * formulas in _scalar.h. fastopt/batchnorm/_cython.pyx calls the fo_bn_* entry points below
 * from its parallel loops; bench/c/ times them without Python.
 *
 * Streaming (non-temporal) output stores exist at the AVX-512 level (64-byte stores) and the
 * AVX2 level (32-byte stores, two per 64-byte line); the baseline writes plain stores only.
 */
#ifndef FASTOPT_BATCHNORM_KERNELS_H
#define FASTOPT_BATCHNORM_KERNELS_H

#include <math.h>
#include <stddef.h>

#include "_simd.h"

#if FO_X86_GNU
#include <immintrin.h>
#endif

typedef ptrdiff_t fo_ssize;

#define FO_ROW_BLOCK 4

/* Values before the first 64-byte boundary of p (at most n): loops start their vector body
   there. numpy puts large arrays 16 bytes past a page start, where every 64-byte load of an
   unpeeled loop straddles two cache lines. */
static inline fo_ssize fo_peel(const void *p, fo_ssize size, fo_ssize n)
{
    fo_ssize k = (fo_ssize)((64 - ((size_t)p & 63)) & 63) / size;
    return k < n ? k : n;
}

/* Order the non-temporal stores before the caller's barrier. */
static inline void fo_stream_fence(void)
{
#if FO_X86_GNU
    _mm_sfence();
#endif
}

/* The row kernels reduce across rows, never across vector lanes, so they need no
   reassociation; without it the peeled head, the vector body and the scalar tail round alike
   and a result does not depend on where the array sits in memory (the run sums vectorize
   through `omp simd reduction`). Unroll-and-jam is off: it turns one-row sums into two-row
   sweeps, which stream from DRAM slower than one row (docs/performance.md). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-associative-math", "no-loop-unroll-and-jam")
#endif

/* the formulas too: evaluated as written, in the order of their Numba and numpy twins */
#include "_scalar.h"

#if FO_HAVE_VARIANTS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define FO_LEVEL 4
#include "_kernels_types.h"
#undef FO_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define FO_LEVEL 3
#include "_kernels_types.h"
#undef FO_LEVEL
#pragma GCC pop_options
#endif

#define FO_LEVEL 0
#include "_kernels_types.h"
#undef FO_LEVEL

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/* ---------------------------------------------------------------- dispatch */

/* The level the kernels run: fo_dispatch_level() on first use; fo_bn_set_level (tests, the C
   harness) overrides it, lowered to what the CPU and this build support. */
static int fo_bn_level_ = -1;

static inline int fo_bn_level(void)
{
    int level = fo_bn_level_;
    if (level < 0) {
        level = fo_dispatch_level();
        fo_bn_level_ = level; /* a benign race: every thread computes the same value */
    }
    return level;
}

/* Run level `level` from now on (lowered to the best supported one); returns the level set. */
static inline int fo_bn_set_level(int level)
{
#if FO_HAVE_VARIANTS && !defined(FO_FORCE_LEVEL)
    int best = fo_cpu_level();
#else
    int best = fo_dispatch_level(); /* one build: nothing to choose */
    level = best;
#endif
    if (level < 0) level = fo_dispatch_level();
    if (level > best) level = best;
    level = level >= FO_LEVEL_AVX512 ? 4 : level >= FO_LEVEL_AVX2 ? 3 : 0;
    fo_bn_level_ = level;
    return level;
}

#define FO_BN_FN_(name, sfx, level) fo_bn_##name##_##sfx##_l##level
#define FO_BN_FN(name, sfx, level) FO_BN_FN_(name, sfx, level)
#if FO_HAVE_VARIANTS
#define FO_BN_PICK(name, sfx, args)                                                              \
    do {                                                                                         \
        int level_ = fo_bn_level();                                                              \
        if (level_ == 4) FO_BN_FN(name, sfx, 4) args;                                            \
        else if (level_ == 3) FO_BN_FN(name, sfx, 3) args;                                       \
        else FO_BN_FN(name, sfx, 0) args;                                                        \
    } while (0)
#else
#define FO_BN_PICK(name, sfx, args) FO_BN_FN(name, sfx, 0) args
#endif

/* Entry points fo_chunk_sums_f32, ..., one per dtype (_kernels_entries.h): called once per
   chunk or channel, so the dispatch costs nothing measurable. */
#define FO_T float
#define FO_SFX f32
#include "_kernels_entries.h"
#undef FO_T
#undef FO_SFX
#define FO_T double
#define FO_SFX f64
#include "_kernels_entries.h"
#undef FO_T
#undef FO_SFX

#endif
