# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython batch-norm kernels (fused forward, eval forward, backward) over (outer, C, inner) views.

Kernels never validate or allocate beyond their documented outputs: ``fastopt.batchnorm.api``
checks shapes and dtypes and picks the strategy (``_plan.make_plan``). Every loop runs without
the GIL. Statistics accumulate in float64 around a per-channel shift (the channel's first value),
so float32 input with a large offset keeps its variance. Outputs are computed in float64 as
``y = x * scale + shift`` (one fused multiply-add per value; the cancellation in float64 costs
far less than float32's rounding of the result).

For ``inner == 1`` (channels-last, (N, C)) the loops run across channels (C helpers below): the
sums over blocks of 4 rows for cache-resident input, one row at a time for input streamed from
memory (``row_block``), every row loop from the row's first 64-byte boundary. Calls whose
arrays outgrow the cache write their output through non-temporal stores (``stream``, chosen by
``_plan.make_plan``), in the row sweeps and in the runs of inner > 1 layouts alike.

Arguments are marked IN (read), OUT (written) or INOUT.
"""

from cython.parallel cimport prange
from libc.math cimport isfinite, sqrt
from cython cimport floating

import numpy as np

# ---------------------------------------------------------------- contiguous-run helpers (.pxd)

cdef void run_sums(const floating* x, Py_ssize_t n, double shift,
                   double* s1, double* s2) noexcept nogil:
    """s1 += sum(x - shift), s2 += sum((x - shift)**2) over a contiguous run (float64)."""
    cdef double a = 0.0, b = 0.0, v
    cdef Py_ssize_t i
    for i in range(n):
        v = <double>x[i] - shift
        a += v
        b += v * v
    s1[0] += a
    s2[0] += b


cdef void run_normalize(const floating* x, floating* y, Py_ssize_t n,
                        double scale, double shift) noexcept nogil:
    """y = fma(x, scale, shift) over a contiguous run, in float64; y may be x."""
    run_normalize_to(x, y, n, scale, shift, False)


cdef void run_grad_sums(const floating* dy, const floating* x, Py_ssize_t n, double mean,
                        double* s, double* d) noexcept nogil:
    """s += sum(dy), d += sum((x - mean) * dy) over a contiguous run (float64)."""
    cdef double a = 0.0, b = 0.0, g
    cdef Py_ssize_t i
    for i in range(n):
        g = <double>dy[i]
        a += g
        b += (<double>x[i] - mean) * g
    s[0] += a
    d[0] += b


cdef void run_grad_input(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                         double a, double b, double c) noexcept nogil:
    """dx = fma(dy, a, fma(x, b, c)) over a contiguous run, in float64."""
    run_grad_input_to(dy, x, dx, n, a, b, c, False)


cdef inline double channel_shift(double first) noexcept nogil:
    # Shift by a value of the channel for accuracy; a non-finite one must not poison the sums
    # beyond what the data itself does (an Inf channel gets mean Inf, as in PyTorch).
    return first if isfinite(first) else 0.0


cdef inline void finish_stats(double s1, double s2, double shift, double n, double eps,
                              double* mean, double* var, double* invstd) noexcept nogil:
    cdef double m = s1 / n
    cdef double v = s2 / n - m * m
    if v < 0.0:  # rounding; NaN stays NaN
        v = 0.0
    mean[0] = shift + m
    var[0] = v
    invstd[0] = 1.0 / sqrt(v + eps)


cdef inline void sum_partials(const double[:, :, ::1] part, Py_ssize_t c,
                              double* first, double* second) noexcept nogil:
    """Combine the chunks' partial sums of channel c in chunk order (deterministic)."""
    cdef Py_ssize_t k
    first[0] = 0.0
    second[0] = 0.0
    for k in range(part.shape[0]):
        first[0] += part[k, 0, c]
        second[0] += part[k, 1, c]


cdef inline (double, double, double) grad_coefficients(
        double s, double d, double mean, double invstd, double weight, double n,
        bint training) noexcept nogil:
    """(a, b, c) with dx = dy * a + x * b + c from s = sum(dy), d = sum((x - mean) dy).

    PyTorch's dx = (dy - s/n - (x - mean) d invstd^2 / n) invstd weight with the mean folded into
    the constant; in eval mode the statistics are constants (b = 0, c = 0). Mirrors
    ``_scalar.grad_coefficients`` (Numba/CUDA). Returned as a tuple so that prange makes the
    caller's variables thread-private.
    """
    cdef double a = invstd * weight
    cdef double b = -d * invstd * invstd * a / n if training else 0.0
    return a, b, (-s / n * a if training else 0.0) - mean * b


# ---------------------------------------------------------------- channels-last row sweeps
# C helpers, one per dtype from one template: the (rows, C) sweeps of channels-last input and the
# element-wise runs of inner > 1 layouts. On cache-resident input the sums take FO_ROW_BLOCK (4)
# rows per sweep across the channels and keep their partial sums in registers: one row at a time
# loads and stores every float64 accumulator once per value (isolated sums pass on (4096, 1024):
# 0.54 -> 0.29 ms); 8 rows were no faster. Input streamed from memory is summed one row at a time
# (``row_block``, see the C comment below). The `omp simd` pragmas vectorize
# across channels without GCC's runtime overlap checks: within one sweep every channel is
# independent, and an output may alias an input only element for element (in place), which is
# safe. Normalize/dx passes can write through non-temporal stores (``stream``): for arrays larger
# than the cache this skips the read-for-ownership of every output line and keeps the inputs,
# which the pass is still reading, in cache.

cdef extern from *:
    """
    #include <stddef.h>
    #include <math.h>
    #if defined(__AVX512F__)
    #include <immintrin.h>
    #endif
    #define FO_ROW_BLOCK 4

    /* Values before the first 64-byte boundary of row pointer p (at most n): loops start their
       vector body there. numpy puts large arrays 16 bytes past a page start, where every
       64-byte load of an unpeeled loop straddles two cache lines (25% slower, measured). Rows
       of a block share the alignment when the row length is a multiple of 64 bytes. */
    static inline Py_ssize_t fo_peel(const void *p, Py_ssize_t size, Py_ssize_t n) {
        Py_ssize_t k = (Py_ssize_t)((64 - ((size_t)p & 63)) & 63) / size;
        return k < n ? k : n;
    }

    /* The row kernels reduce across rows, never across the vector lanes, so they need no
       reassociation; without it the peeled head, the vector body and the scalar tail round
       alike and a result does not depend on where the array sits in memory. Element-wise
       outputs use explicit fma for the same reason: y = fma(x, scale, shift) and
       dx = fma(dy, a, fma(x, b, c)), in the plain loops and the streaming ones alike.
       Unroll-and-jam is off: it turns the one-row sums into two-row sweeps, and sweeping
       several rows at once streams from DRAM at about 2/3 of the speed of one row (C harness,
       (100352, 256) float32 backward sums: 4-row blocks 10.3 ms, one row 6.7 ms, read floor
       6.5 ms). In cache the 4-row blocks win ((4096, 1024): 0.84 vs 1.08 ms), so the plan picks
       the block (``_plan.Plan.row_block``). */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("no-associative-math", "no-loop-unroll-and-jam")
    #endif

    /* Streaming (non-temporal) output stores, AVX-512 only: the vector body computes and
       stores 64-byte lines directly. Computing into an L1 tile and copying it out (portable
       to AVX and SSE2) lost most of the gain: C harness, float32, 2 threads, dx pass of
       (100352, 256) 6.9 ms direct vs 7.8 tiled vs 8.6 plain; NCHW runs of 784 values,
       backward 12.3 direct vs 13.5 tiled vs 14.2 plain. Without AVX-512, FO_HAVE_STREAM is 0,
       the kernels never stream, and the functions below run their scalar loops only.
       Coefficients are per channel (cs = 1, row sweeps) or one scalar (cs = 0, a run). */
    #define FO_NORM1(T, i) ((T)fma((double)x[i], scale[(i) * cs], shift[(i) * cs]))
    #define FO_GRAD1(T, i) ((T)fma((double)g[i], a[(i) * cs], fma((double)x[i], b[(i) * cs], \
                                                                 c[(i) * cs])))
    #if defined(__AVX512F__)
    #define FO_HAVE_STREAM 1
    #define FO_LANES_f32 16
    #define FO_LANES_f64 8
    static inline __m512d fo_wide_f32(const float *p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
    static inline __m512d fo_wide_f64(const double *p) { return _mm512_loadu_pd(p); }
    static inline __m512d fo_coef(const double *p, Py_ssize_t i, int cs) {
        return cs ? _mm512_loadu_pd(p + i) : _mm512_set1_pd(*p);
    }
    static inline void fo_put_f32(float *d, __m512d lo, __m512d hi) {
        __m512d both = _mm512_insertf64x4(
            _mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo))),
            _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1);
        _mm512_stream_ps(d, _mm512_castpd_ps(both));
    }
    /* 8 float64 results from index i; one streamed 64-byte line of results from index i */
    #define FO_NORM8(W, i) _mm512_fmadd_pd(W(x + (i)), fo_coef(scale, i, cs), fo_coef(shift, i, cs))
    #define FO_GRAD8(W, i) _mm512_fmadd_pd(W(g + (i)), fo_coef(a, i, cs),                        \
                                           _mm512_fmadd_pd(W(x + (i)), fo_coef(b, i, cs),        \
                                                           fo_coef(c, i, cs)))
    #define FO_LINE_f32(dst, i, E) fo_put_f32((dst) + (i), E(fo_wide_f32, i), E(fo_wide_f32, (i) + 8))
    #define FO_LINE_f64(dst, i, E) _mm512_stream_pd((dst) + (i), E(fo_wide_f64, i))
    #define FO_STREAM_BODY(SFX, dst, E)                                                      \
        for (; i + FO_LANES_##SFX <= n; i += FO_LANES_##SFX) FO_LINE_##SFX(dst, i, E);
    #else
    #define FO_HAVE_STREAM 0
    #define FO_STREAM_BODY(SFX, dst, E)
    #endif
    /* Order the non-temporal stores before the caller's barrier. */
    static void fo_stream_fence(void) {
    #if FO_HAVE_STREAM
        _mm_sfence();
    #endif
    }

    #define FO_ROWS(T, SFX)                                                                  \
    static inline void fo_sums_block_##SFX(const T *r, Py_ssize_t C, Py_ssize_t lo,          \
                                           Py_ssize_t hi, const double *shift, double *s1,   \
                                           double *s2) {                                      \
        _Pragma("omp simd")                                                                   \
        for (Py_ssize_t c = lo; c < hi; ++c) {                                                \
            double sh = shift[c], a = 0.0, b = 0.0;                                           \
            for (int j = 0; j < FO_ROW_BLOCK; ++j) {                                          \
                double v = (double)r[j * C + c] - sh;                                         \
                a += v;                                                                       \
                b += v * v;                                                                   \
            }                                                                                 \
            s1[c] += a;                                                                       \
            s2[c] += b;                                                                       \
        }                                                                                     \
    }                                                                                         \
    static inline void fo_sums_row_##SFX(const T *r, Py_ssize_t lo, Py_ssize_t hi,            \
                                         const double *shift, double *s1, double *s2) {       \
        _Pragma("omp simd")                                                                   \
        for (Py_ssize_t c = lo; c < hi; ++c) {                                                \
            double v = (double)r[c] - shift[c];                                               \
            s1[c] += v;                                                                       \
            s2[c] += v * v;                                                                   \
        }                                                                                     \
    }                                                                                         \
    /* s1[c] += sum(x - shift[c]), s2[c] += sum((x - shift[c])^2) over rows [lo, hi), in      \
       blocks of FO_ROW_BLOCK rows when block > 1, else one row at a time */                   \
    static void fo_rows_sums_##SFX(const T *x, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,    \
                                   const double *shift, double *s1, double *s2, int block) {  \
        Py_ssize_t o = lo;                                                                    \
        for (; block > 1 && o + FO_ROW_BLOCK <= hi; o += FO_ROW_BLOCK) {                      \
            const T *r = x + o * C;                                                           \
            Py_ssize_t p = fo_peel(r, sizeof(T), C);                                          \
            fo_sums_block_##SFX(r, C, 0, p, shift, s1, s2);                                   \
            fo_sums_block_##SFX(r, C, p, C, shift, s1, s2);                                   \
        }                                                                                     \
        for (; o < hi; ++o) {                                                                 \
            const T *r = x + o * C;                                                           \
            Py_ssize_t p = fo_peel(r, sizeof(T), C);                                          \
            fo_sums_row_##SFX(r, 0, p, shift, s1, s2);                                        \
            fo_sums_row_##SFX(r, p, C, shift, s1, s2);                                        \
        }                                                                                     \
    }                                                                                         \
    static inline void fo_grad_sums_block_##SFX(const T *gr, const T *xr, Py_ssize_t C,       \
                                                Py_ssize_t lo, Py_ssize_t hi,                 \
                                                const double *mean, double *s, double *d) {   \
        _Pragma("omp simd")                                                                   \
        for (Py_ssize_t c = lo; c < hi; ++c) {                                                \
            double m = mean[c], a = 0.0, b = 0.0;                                             \
            for (int j = 0; j < FO_ROW_BLOCK; ++j) {                                          \
                double gv = (double)gr[j * C + c];                                            \
                a += gv;                                                                      \
                b += ((double)xr[j * C + c] - m) * gv;                                        \
            }                                                                                 \
            s[c] += a;                                                                        \
            d[c] += b;                                                                        \
        }                                                                                     \
    }                                                                                         \
    static inline void fo_grad_sums_row_##SFX(const T *gr, const T *xr, Py_ssize_t lo,        \
                                              Py_ssize_t hi, const double *mean, double *s,   \
                                              double *d) {                                    \
        _Pragma("omp simd")                                                                   \
        for (Py_ssize_t c = lo; c < hi; ++c) {                                                \
            double gv = (double)gr[c];                                                        \
            s[c] += gv;                                                                       \
            d[c] += ((double)xr[c] - mean[c]) * gv;                                           \
        }                                                                                     \
    }                                                                                         \
    /* s[c] += sum(dy), d[c] += sum((x - mean[c]) dy) over rows [lo, hi), blocked as above */ \
    static void fo_rows_grad_sums_##SFX(const T *g, const T *x, Py_ssize_t lo, Py_ssize_t hi, \
                                        Py_ssize_t C, const double *mean, double *s,          \
                                        double *d, int block) {                               \
        Py_ssize_t o = lo;                                                                    \
        for (; block > 1 && o + FO_ROW_BLOCK <= hi; o += FO_ROW_BLOCK) {                      \
            const T *gr = g + o * C, *xr = x + o * C;                                         \
            Py_ssize_t p = fo_peel(xr, sizeof(T), C);                                         \
            fo_grad_sums_block_##SFX(gr, xr, C, 0, p, mean, s, d);                            \
            fo_grad_sums_block_##SFX(gr, xr, C, p, C, mean, s, d);                            \
        }                                                                                     \
        for (; o < hi; ++o) {                                                                 \
            const T *gr = g + o * C, *xr = x + o * C;                                         \
            Py_ssize_t p = fo_peel(xr, sizeof(T), C);                                         \
            fo_grad_sums_row_##SFX(gr, xr, 0, p, mean, s, d);                                 \
            fo_grad_sums_row_##SFX(gr, xr, p, C, mean, s, d);                                 \
        }                                                                                     \
    }                                                                                         \
    /* y[0:n] = x * scale + shift; plain stores, vectorized from x's first 64-byte boundary */ \
    static inline void fo_normalize_plain_##SFX(const T *x, T *y, Py_ssize_t n,               \
                                                const double *scale, const double *shift,     \
                                                int cs) {                                     \
        Py_ssize_t p = fo_peel(x, sizeof(T), n);                                              \
        for (Py_ssize_t i = 0; i < p; ++i) y[i] = FO_NORM1(T, i);                             \
        _Pragma("omp simd")                                                                   \
        for (Py_ssize_t i = p; i < n; ++i) y[i] = FO_NORM1(T, i);                             \
    }                                                                                         \
    /* y[0:n] = x * scale + shift; streaming stores from y's first 64-byte boundary */        \
    static inline void fo_normalize_stream_##SFX(const T *x, T *y, Py_ssize_t n,              \
                                                 const double *scale, const double *shift,    \
                                                 int cs) {                                    \
        Py_ssize_t i = 0, p = fo_peel(y, sizeof(T), n);                                       \
        for (; i < p; ++i) y[i] = FO_NORM1(T, i);                                             \
        FO_STREAM_BODY(SFX, y, FO_NORM8)                                                      \
        for (; i < n; ++i) y[i] = FO_NORM1(T, i);                                             \
    }                                                                                         \
    static inline void fo_grad_input_plain_##SFX(const T *g, const T *x, T *dx, Py_ssize_t n, \
                                                 const double *a, const double *b,            \
                                                 const double *c, int cs) {                   \
        Py_ssize_t p = fo_peel(x, sizeof(T), n);                                              \
        for (Py_ssize_t i = 0; i < p; ++i) dx[i] = FO_GRAD1(T, i);                            \
        _Pragma("omp simd")                                                                   \
        for (Py_ssize_t i = p; i < n; ++i) dx[i] = FO_GRAD1(T, i);                            \
    }                                                                                         \
    static inline void fo_grad_input_stream_##SFX(const T *g, const T *x, T *dx, Py_ssize_t n,\
                                                  const double *a, const double *b,           \
                                                  const double *c, int cs) {                  \
        Py_ssize_t i = 0, p = fo_peel(dx, sizeof(T), n);                                      \
        for (; i < p; ++i) dx[i] = FO_GRAD1(T, i);                                            \
        FO_STREAM_BODY(SFX, dx, FO_GRAD8)                                                     \
        for (; i < n; ++i) dx[i] = FO_GRAD1(T, i);                                            \
    }                                                                                         \
    /* y = x * scale[c] + shift[c] over rows [lo, hi); y may be x */                          \
    static void fo_rows_normalize_##SFX(const T *x, T *y, Py_ssize_t lo, Py_ssize_t hi,       \
                                        Py_ssize_t C, const double *scale,                    \
                                        const double *shift, int stream) {                    \
        stream = stream && FO_HAVE_STREAM;                                                    \
        for (Py_ssize_t o = lo; o < hi; ++o) {                                                \
            if (stream) fo_normalize_stream_##SFX(x + o * C, y + o * C, C, scale, shift, 1);  \
            else fo_normalize_plain_##SFX(x + o * C, y + o * C, C, scale, shift, 1);          \
        }                                                                                     \
        if (stream) fo_stream_fence();                                                        \
    }                                                                                         \
    /* dx = dy * a[c] + x * b[c] + c[c] over rows [lo, hi) */                                 \
    static void fo_rows_grad_input_##SFX(const T *g, const T *x, T *dx, Py_ssize_t lo,        \
                                         Py_ssize_t hi, Py_ssize_t C, const double *a,        \
                                         const double *b, const double *c, int stream) {      \
        stream = stream && FO_HAVE_STREAM;                                                    \
        for (Py_ssize_t o = lo; o < hi; ++o) {                                                \
            Py_ssize_t k = o * C;                                                             \
            if (stream) fo_grad_input_stream_##SFX(g + k, x + k, dx + k, C, a, b, c, 1);      \
            else fo_grad_input_plain_##SFX(g + k, x + k, dx + k, C, a, b, c, 1);              \
        }                                                                                     \
        if (stream) fo_stream_fence();                                                        \
    }                                                                                         \
    /* One contiguous run of an inner > 1 layout (scalar coefficients); the caller fences */  \
    static void fo_run_normalize_##SFX(const T *x, T *y, Py_ssize_t n, double scale,          \
                                       double shift, int stream) {                            \
        if (stream && FO_HAVE_STREAM) fo_normalize_stream_##SFX(x, y, n, &scale, &shift, 0);  \
        else fo_normalize_plain_##SFX(x, y, n, &scale, &shift, 0);                            \
    }                                                                                         \
    static void fo_run_grad_input_##SFX(const T *g, const T *x, T *dx, Py_ssize_t n,          \
                                        double a, double b, double c, int stream) {           \
        if (stream && FO_HAVE_STREAM) fo_grad_input_stream_##SFX(g, x, dx, n, &a, &b, &c, 0); \
        else fo_grad_input_plain_##SFX(g, x, dx, n, &a, &b, &c, 0);                           \
    }
    FO_ROWS(float, f32)
    FO_ROWS(double, f64)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void fo_rows_sums_f32(const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, const double*,
                          double*, double*, int) noexcept nogil
    void fo_rows_sums_f64(const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, const double*,
                          double*, double*, int) noexcept nogil
    void fo_rows_grad_sums_f32(const float*, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                               const double*, double*, double*, int) noexcept nogil
    void fo_rows_grad_sums_f64(const double*, const double*, Py_ssize_t, Py_ssize_t,
                               Py_ssize_t, const double*, double*, double*, int) noexcept nogil
    void fo_rows_normalize_f32(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                               const double*, const double*, int) noexcept nogil
    void fo_rows_normalize_f64(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                               const double*, const double*, int) noexcept nogil
    void fo_rows_grad_input_f32(const float*, const float*, float*, Py_ssize_t, Py_ssize_t,
                                Py_ssize_t, const double*, const double*, const double*,
                                int) noexcept nogil
    void fo_rows_grad_input_f64(const double*, const double*, double*, Py_ssize_t, Py_ssize_t,
                                Py_ssize_t, const double*, const double*, const double*,
                                int) noexcept nogil
    void fo_run_normalize_f32(const float*, float*, Py_ssize_t, double, double,
                              int) noexcept nogil
    void fo_run_normalize_f64(const double*, double*, Py_ssize_t, double, double,
                              int) noexcept nogil
    void fo_run_grad_input_f32(const float*, const float*, float*, Py_ssize_t, double, double,
                               double, int) noexcept nogil
    void fo_run_grad_input_f64(const double*, const double*, double*, Py_ssize_t, double,
                               double, double, int) noexcept nogil
    void fo_stream_fence() noexcept nogil
    int FO_HAVE_STREAM


cdef void rows_sums(const floating* xp, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,
                    const double* shifts, double* s1, double* s2) noexcept nogil:
    """Per-channel shifted sums over rows [lo, hi) of a (rows, C) block (INOUT: s1[C], s2[C])."""
    rows_sums_by(xp, lo, hi, C, shifts, s1, s2, 4)


cdef inline void rows_sums_by(const floating* xp, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,
                              const double* shifts, double* s1, double* s2,
                              int row_block) noexcept nogil:
    """rows_sums in blocks of 4 rows (row_block 4) or one row at a time (1)."""
    if floating is float:
        fo_rows_sums_f32(xp, lo, hi, C, shifts, s1, s2, row_block)
    else:
        fo_rows_sums_f64(xp, lo, hi, C, shifts, s1, s2, row_block)


cdef void rows_normalize(const floating* xp, floating* yp, Py_ssize_t lo, Py_ssize_t hi,
                         Py_ssize_t C, const double* scale, const double* shift) noexcept nogil:
    """y = x * scale[c] + shift[c] over rows [lo, hi) of a (rows, C) block."""
    rows_normalize_to(xp, yp, lo, hi, C, scale, shift, False)


cdef inline void rows_normalize_to(const floating* xp, floating* yp, Py_ssize_t lo,
                                   Py_ssize_t hi, Py_ssize_t C, const double* scale,
                                   const double* shift, bint stream) noexcept nogil:
    """rows_normalize, optionally through non-temporal stores."""
    if floating is float:
        fo_rows_normalize_f32(xp, yp, lo, hi, C, scale, shift, stream)
    else:
        fo_rows_normalize_f64(xp, yp, lo, hi, C, scale, shift, stream)


cdef void rows_grad_sums(const floating* gp, const floating* xp, Py_ssize_t lo, Py_ssize_t hi,
                         Py_ssize_t C, const double* mean, double* s, double* d,
                         int row_block) noexcept nogil:
    """Per-channel sum(dy), sum((x - mean) dy) over rows [lo, hi), in blocks of row_block (4 or
    1) rows (INOUT: s[C], d[C])."""
    if floating is float:
        fo_rows_grad_sums_f32(gp, xp, lo, hi, C, mean, s, d, row_block)
    else:
        fo_rows_grad_sums_f64(gp, xp, lo, hi, C, mean, s, d, row_block)


cdef void rows_grad_input(const floating* gp, const floating* xp, floating* dxp, Py_ssize_t lo,
                          Py_ssize_t hi, Py_ssize_t C, const double* a, const double* b,
                          const double* cc, bint stream) noexcept nogil:
    """dx = dy * a[c] + x * b[c] + cc[c] over rows [lo, hi) of a (rows, C) block."""
    if floating is float:
        fo_rows_grad_input_f32(gp, xp, dxp, lo, hi, C, a, b, cc, stream)
    else:
        fo_rows_grad_input_f64(gp, xp, dxp, lo, hi, C, a, b, cc, stream)


cdef inline void run_normalize_to(const floating* x, floating* y, Py_ssize_t n, double scale,
                                  double shift, bint stream) noexcept nogil:
    """run_normalize, optionally through streaming stores (the caller fences)."""
    if floating is float:
        fo_run_normalize_f32(x, y, n, scale, shift, stream)
    else:
        fo_run_normalize_f64(x, y, n, scale, shift, stream)


cdef inline void run_grad_input_to(const floating* dy, const floating* x, floating* dx,
                                   Py_ssize_t n, double a, double b, double c,
                                   bint stream) noexcept nogil:
    """run_grad_input, optionally through streaming stores (the caller fences)."""
    if floating is float:
        fo_run_grad_input_f32(dy, x, dx, n, a, b, c, stream)
    else:
        fo_run_grad_input_f64(dy, x, dx, n, a, b, c, stream)


# ---------------------------------------------------------------- chunk helpers (any inner)

cdef inline Py_ssize_t chunk_lo(Py_ssize_t k, Py_ssize_t outer, Py_ssize_t n_chunks) noexcept nogil:
    return k * outer // n_chunks


cdef void chunk_sums(const floating* xp, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                     Py_ssize_t k, Py_ssize_t n_chunks, const double* shifts,
                     double* s1, double* s2, int row_block) noexcept nogil:
    """Per-channel shifted sums over the rows of chunk k (OUT: s1[C], s2[C], zero on entry)."""
    cdef Py_ssize_t lo = chunk_lo(k, outer, n_chunks), hi = chunk_lo(k + 1, outer, n_chunks)
    cdef Py_ssize_t o, c
    if inner == 1:
        rows_sums_by(xp, lo, hi, C, shifts, s1, s2, row_block)
        return
    for o in range(lo, hi):
        for c in range(C):
            run_sums(xp + (o * C + c) * inner, inner, shifts[c], &s1[c], &s2[c])


cdef void normalize_chunk(const floating* xp, floating* yp, Py_ssize_t outer, Py_ssize_t C,
                          Py_ssize_t inner, Py_ssize_t k, Py_ssize_t n_chunks,
                          const double* scale, const double* shift, bint stream) noexcept nogil:
    cdef Py_ssize_t lo = chunk_lo(k, outer, n_chunks), hi = chunk_lo(k + 1, outer, n_chunks)
    cdef Py_ssize_t o, c
    if inner == 1:
        rows_normalize_to(xp, yp, lo, hi, C, scale, shift, stream)
        return
    stream = stream and FO_HAVE_STREAM
    for o in range(lo, hi):
        for c in range(C):
            run_normalize_to(xp + (o * C + c) * inner, yp + (o * C + c) * inner, inner,
                             scale[c], shift[c], stream)
    if stream:
        fo_stream_fence()


cdef void chunk_grad_sums(const floating* gp, const floating* xp, Py_ssize_t outer, Py_ssize_t C,
                          Py_ssize_t inner, Py_ssize_t k, Py_ssize_t n_chunks,
                          const double* mean, double* s, double* d, int row_block) noexcept nogil:
    """Per-channel sum(dy), sum((x-mean) dy) over the rows of chunk k (OUT: s[C], d[C])."""
    cdef Py_ssize_t lo = chunk_lo(k, outer, n_chunks), hi = chunk_lo(k + 1, outer, n_chunks)
    cdef Py_ssize_t o, c
    if inner == 1:
        rows_grad_sums(gp, xp, lo, hi, C, mean, s, d, row_block)
        return
    for o in range(lo, hi):
        for c in range(C):
            run_grad_sums(gp + (o * C + c) * inner, xp + (o * C + c) * inner, inner, mean[c],
                          &s[c], &d[c])


cdef void grad_input_chunk(const floating* gp, const floating* xp, floating* dxp,
                           Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t k,
                           Py_ssize_t n_chunks, const double* a, const double* b,
                           const double* cc, bint stream) noexcept nogil:
    cdef Py_ssize_t lo = chunk_lo(k, outer, n_chunks), hi = chunk_lo(k + 1, outer, n_chunks)
    cdef Py_ssize_t o, c, off
    if inner == 1:
        rows_grad_input(gp, xp, dxp, lo, hi, C, a, b, cc, stream)
        return
    stream = stream and FO_HAVE_STREAM
    for o in range(lo, hi):
        for c in range(C):
            off = (o * C + c) * inner
            run_grad_input_to(gp + off, xp + off, dxp + off, inner, a[c], b[c], cc[c], stream)
    if stream:
        fo_stream_fence()


# ---------------------------------------------------------------- training forward

def forward_train(
    const floating[:, :, ::1] x,     # IN  (outer, C, inner)
    const double[::1] weight,        # IN  (C,)
    const double[::1] bias,          # IN  (C,)
    double eps,
    floating[:, :, ::1] y,           # OUT (outer, C, inner); may be x itself
    double[::1] mean,                # OUT (C,) batch mean
    double[::1] var,                 # OUT (C,) biased batch variance
    double[::1] invstd,              # OUT (C,) 1/sqrt(var + eps)
    bint per_channel,
    Py_ssize_t n_chunks,
    int n_threads,
    bint stream=False,
    int row_block=4,
):
    """Training forward: batch statistics, then y = (x - mean) * invstd * weight + bias.

    ``stream``: write y with non-temporal stores; ``row_block``: rows per sweep of the
    channels-last sums (4, or 1 for input streamed from memory). Both come from ``_plan``."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t stride = C * inner, c, o, k
    cdef double n = <double>(outer * inner), s1, s2, shift, scale
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &y[0, 0, 0]
    cdef double[:, :, ::1] part
    cdef double[::1] shifts, scales, offsets
    cdef bint run_stream

    run_stream = stream and FO_HAVE_STREAM
    if per_channel:
        with nogil:
            for c in prange(C, schedule="static", num_threads=n_threads):
                shift = channel_shift(<double>xp[c * inner])
                s1 = 0.0
                s2 = 0.0
                for o in range(outer):
                    run_sums(xp + o * stride + c * inner, inner, shift, &s1, &s2)
                finish_stats(s1, s2, shift, n, eps, &mean[c], &var[c], &invstd[c])
                scale = invstd[c] * weight[c]
                # the slab was just read: this pass hits cache
                for o in range(outer):
                    run_normalize_to(xp + o * stride + c * inner, yp + o * stride + c * inner,
                                     inner, scale, bias[c] - mean[c] * scale, run_stream)
                if run_stream:
                    fo_stream_fence()
        return

    part = np.zeros((n_chunks, 2, C))
    shifts = np.empty(C)
    scales = np.empty(C)
    offsets = np.empty(C)
    for c in range(C):
        shifts[c] = channel_shift(<double>xp[c * inner])
    with nogil:
        for k in prange(n_chunks, schedule="static", num_threads=n_threads):
            chunk_sums(xp, outer, C, inner, k, n_chunks, &shifts[0], &part[k, 0, 0],
                       &part[k, 1, 0], row_block)
    for c in range(C):
        sum_partials(part, c, &s1, &s2)
        finish_stats(s1, s2, shifts[c], n, eps, &mean[c], &var[c], &invstd[c])
        scales[c] = invstd[c] * weight[c]
        offsets[c] = bias[c] - mean[c] * scales[c]
    forward_eval(x, scales, offsets, y, n_chunks, n_threads, stream)


# ---------------------------------------------------------------- eval forward

def forward_eval(
    const floating[:, :, ::1] x,     # IN  (outer, C, inner)
    const double[::1] scale,         # IN  (C,) invstd * weight
    const double[::1] shift,         # IN  (C,) bias - mean * scale
    floating[:, :, ::1] y,           # OUT (outer, C, inner); may be x itself
    Py_ssize_t n_chunks,
    int n_threads,
    bint stream=False,
):
    """Normalize with given statistics: y = x * scale + shift per channel (float64 math)."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2], k
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &y[0, 0, 0]
    with nogil:
        for k in prange(n_chunks, schedule="static", num_threads=n_threads):
            normalize_chunk(xp, yp, outer, C, inner, k, n_chunks, &scale[0], &shift[0],
                            stream)


# ---------------------------------------------------------------- backward

def backward(
    const floating[:, :, ::1] dy,    # IN  (outer, C, inner)
    const floating[:, :, ::1] x,     # IN  (outer, C, inner)
    const double[::1] mean,          # IN  (C,) saved mean (batch or running)
    const double[::1] invstd,        # IN  (C,) saved invstd
    const double[::1] weight,        # IN  (C,)
    bint training,
    floating[:, :, ::1] dx,          # OUT (outer, C, inner); may alias dy or x
    double[::1] dweight,             # OUT (C,) sum((x - mean) * dy) * invstd
    double[::1] dbias,               # OUT (C,) sum(dy)
    bint per_channel,
    Py_ssize_t n_chunks,
    int n_threads,
    bint stream=False,
    int row_block=4,
):
    """Backward of batch norm: one reduction pass (sum dy, sum (x-mean) dy), one dx pass.

    ``stream`` and ``row_block`` as in ``forward_train``."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t stride = C * inner, c, o, k
    cdef double n = <double>(outer * inner), s, d, a, b, e
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* gp = &dy[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef double[:, :, ::1] part
    cdef double[::1] ca, cb, cc
    cdef bint run_stream

    run_stream = stream and FO_HAVE_STREAM
    if per_channel:
        with nogil:
            for c in prange(C, schedule="static", num_threads=n_threads):
                s = 0.0
                d = 0.0
                for o in range(outer):
                    run_grad_sums(gp + o * stride + c * inner, xp + o * stride + c * inner,
                                  inner, mean[c], &s, &d)
                dbias[c] = s
                dweight[c] = d * invstd[c]
                a, b, e = grad_coefficients(s, d, mean[c], invstd[c], weight[c], n, training)
                for o in range(outer):
                    run_grad_input_to(gp + o * stride + c * inner, xp + o * stride + c * inner,
                                      dxp + o * stride + c * inner, inner, a, b, e,
                                      run_stream)
                if run_stream:
                    fo_stream_fence()
        return

    part = np.zeros((n_chunks, 2, C))
    ca = np.empty(C)
    cb = np.empty(C)
    cc = np.empty(C)
    with nogil:
        for k in prange(n_chunks, schedule="static", num_threads=n_threads):
            chunk_grad_sums(gp, xp, outer, C, inner, k, n_chunks, &mean[0], &part[k, 0, 0],
                            &part[k, 1, 0], row_block)
    for c in range(C):
        sum_partials(part, c, &s, &d)
        dbias[c] = s
        dweight[c] = d * invstd[c]
        ca[c], cb[c], cc[c] = grad_coefficients(s, d, mean[c], invstd[c], weight[c], n, training)
    with nogil:
        for k in prange(n_chunks, schedule="static", num_threads=n_threads):
            grad_input_chunk(gp, xp, dxp, outer, C, inner, k, n_chunks, &ca[0], &cb[0], &cc[0],
                             stream)
