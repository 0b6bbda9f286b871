# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernels of the spectra family (OpenMP, GIL released).

Kernels never validate (``fastopt.spectral.api`` does) and write only their output arguments.
Shapes: ``W`` is a C-contiguous stack ``(B, n, m)``; ``active`` lists the matrices to process
(int64 indices into the stack), so a batched solver can stop work on converged matrices.
Reductions accumulate in float64. Work is split into a fixed number of chunks that depends only
on ``n_threads`` and the shape, and partial sums are combined in chunk order: results are
deterministic for a given thread count.
"""

cimport cython
from cython.parallel cimport prange
from libc.math cimport fabs, fmax

from ._plan import n_chunks, work_shape  # one work split for every backend (re-exported)

cdef extern from *:
    """
    #include <string.h>
    #include <math.h>
    #if defined(__GNUC__) || defined(__clang__)
    #define FO_PREFETCH_L2(p) __builtin_prefetch((p), 0, 1)
    #else
    #define FO_PREFETCH_L2(p) ((void)0)
    #endif
    /* Reductions: products are summed in the input type T in FO_LANES independent lanes (the
       FMA latency does not bound the loop; float32 runs 16 lanes per AVX-512 register) over at
       most FO_BLOCK columns (FO_BLOCK / FO_LANES products per lane), then the lanes are added
       into float64 lanes (vectorized) and those summed in a fixed order at the end: float64
       accumulation at float32 speed. */
    #define FO_LANES 64
    #define FO_BLOCK 1024
    #define FO_DOT(NAME, T)                                                                 \
    static inline double NAME(const T *a, const T *x, Py_ssize_t m) {                      \
        double pd[FO_LANES] = {0};                                                          \
        double s = 0.0;                                                                     \
        Py_ssize_t j = 0;                                                                   \
        while (j + FO_LANES <= m) {                                                         \
            Py_ssize_t je = (j + FO_BLOCK < m) ? j + FO_BLOCK : m;                          \
            T p[FO_LANES] = {0};                                                            \
            for (; j + FO_LANES <= je; j += FO_LANES) {                                     \
                _Pragma("omp simd")                                                         \
                for (int k = 0; k < FO_LANES; ++k) p[k] += a[j + k] * x[j + k];             \
            }                                                                               \
            _Pragma("omp simd")                                                             \
            for (int k = 0; k < FO_LANES; ++k) pd[k] += (double)p[k];                       \
        }                                                                                   \
        for (; j < m; ++j) s += (double)a[j] * (double)x[j];                                \
        for (int w = FO_LANES / 2; w > 0; w >>= 1)                                          \
            for (int k = 0; k < w; ++k) pd[k] += pd[k + w];                                 \
        return s + pd[0];                                                                   \
    }
    FO_DOT(fo_dot_f, float)
    FO_DOT(fo_dot_d, double)

    /* Four dot products a_r . x sharing the loads of x (same lane scheme as FO_DOT). */
    #define FO_DOT4(NAME, T)                                                                \
    static inline void NAME(const T *a0, const T *a1, const T *a2, const T *a3,            \
                            const T *x, Py_ssize_t m, double *o0, double *o1, double *o2,  \
                            double *o3) {                                                   \
        double d0[16] = {0}, d1[16] = {0}, d2[16] = {0}, d3[16] = {0};              \
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;                          \
        Py_ssize_t j = 0;                                           \
        while (j + 16 <= m) {                                           \
            Py_ssize_t je = (j + FO_BLOCK < m) ? j + FO_BLOCK : m;                  \
            T p0[16] = {0}, p1[16] = {0}, p2[16] = {0}, p3[16] = {0};               \
            for (; j + 16 <= je; j += 16) {                                 \
                /* the next 4 rows (contiguous after a3) are read next: prefetch them */ \
                const char *nx = (const char *)(a3 + m + 4 * j);                       \
                for (int q = 0; q < (int)(4 * 16 * sizeof(T)); q += 64)                 \
                    FO_PREFETCH_L2(nx + q);                                    \
                _Pragma("omp simd")                                     \
                for (int k = 0; k < 16; ++k) {                              \
                T xj = x[j + k];                                    \
                p0[k] += a0[j + k] * xj; p1[k] += a1[j + k] * xj;               \
                p2[k] += a2[j + k] * xj; p3[k] += a3[j + k] * xj;               \
                }                                                   \
            }                                                   \
            _Pragma("omp simd")                                         \
            for (int k = 0; k < 16; ++k) {                                  \
                d0[k] += (double)p0[k]; d1[k] += (double)p1[k];                 \
                d2[k] += (double)p2[k]; d3[k] += (double)p3[k];                 \
            }                                                   \
        }                                                       \
        for (; j < m; ++j) {                                        \
            double xj = (double)x[j];                                   \
            s0 += (double)a0[j] * xj; s1 += (double)a1[j] * xj;                 \
            s2 += (double)a2[j] * xj; s3 += (double)a3[j] * xj;                 \
        }                                                       \
        for (int w = 8; w > 0; w >>= 1) {  /* pairwise tree: vectorized, short chains */ \
            for (int k = 0; k < w; ++k) {                                                   \
                d0[k] += d0[k + w]; d1[k] += d1[k + w];                                     \
                d2[k] += d2[k + w]; d3[k] += d3[k + w];                                     \
            }                                                                               \
        }                                                                                   \
        s0 += d0[0]; s1 += d1[0]; s2 += d2[0]; s3 += d3[0];                                 \
        *o0 = s0; *o1 = s1; *o2 = s2; *o3 = s3;                                             \
    }
    FO_DOT4(fo_dot4_f, float)
    FO_DOT4(fo_dot4_d, double)


    /* One row-wise pass over rows [r0, r1) of a row-major (n, m) matrix W:
       t[i] = W[i, :] . x   and   acc += t[i] * W[i, :]   (acc: float64, zeroed here).
       Rows go 4 at a time: their products are first added in T (4 terms), then into acc, so
       acc is read and written once per 4 rows; the 4 rows are still in L1 for the second use. */
    /* acc_t (m values of T) gathers 4 rows' products in T; it is flushed into the float64
       acc every FO_FLUSH rows, so the float64 sums are touched once per FO_FLUSH rows. */
    #define FO_FLUSH 16
    #define FO_FLUSH_IF_FULL(acc, acc_t, m, pending)                                        \
        do {                                                                                \
            if ((pending) >= FO_FLUSH) {                                                    \
                _Pragma("omp simd")                                                         \
                for (Py_ssize_t jj = 0; jj < (m); ++jj) {                                   \
                    (acc)[jj] += (double)(acc_t)[jj];                                       \
                    (acc_t)[jj] = 0;                                                        \
                }                                                                           \
                (pending) = 0;                                                              \
            }                                                                               \
        } while (0)
    #define FO_WTWV_ROWS(NAME, T, DOT, DOT4)                                                \
    static void NAME(const T *W, const T *x, T *t, double *acc, T *acc_t,                   \
                     Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t m) {                         \
        memset(acc, 0, (size_t)m * sizeof(double));                                         \
        memset(acc_t, 0, (size_t)m * sizeof(T));                                            \
        Py_ssize_t i = r0;                                                                  \
        int pending = 0;                                                                    \
        /* 8 rows at a time (acc_t touched once per 8 rows) while they fit half of L1 */     \
        const Py_ssize_t r8 = (8 * m * (Py_ssize_t)sizeof(T) <= 16384) ? r1 : r0;           \
        for (; i + 8 <= r8; i += 8) {                                                       \
            const T *a0 = W + i * m, *a1 = a0 + m, *a2 = a1 + m, *a3 = a2 + m;              \
            const T *a4 = a3 + m, *a5 = a4 + m, *a6 = a5 + m, *a7 = a6 + m;                 \
            double s0, s1, s2, s3, s4, s5, s6, s7;                                          \
            DOT4(a0, a1, a2, a3, x, m, &s0, &s1, &s2, &s3);                                 \
            DOT4(a4, a5, a6, a7, x, m, &s4, &s5, &s6, &s7);                                 \
            t[i] = (T)s0; t[i + 1] = (T)s1; t[i + 2] = (T)s2; t[i + 3] = (T)s3;             \
            t[i + 4] = (T)s4; t[i + 5] = (T)s5; t[i + 6] = (T)s6; t[i + 7] = (T)s7;         \
            const T c0 = (T)s0, c1 = (T)s1, c2 = (T)s2, c3 = (T)s3;                         \
            const T c4 = (T)s4, c5 = (T)s5, c6 = (T)s6, c7 = (T)s7;                         \
            _Pragma("omp simd")                                                             \
            for (Py_ssize_t jj = 0; jj < m; ++jj)                                           \
                acc_t[jj] += (c0 * a0[jj] + c1 * a1[jj] + c2 * a2[jj] + c3 * a3[jj])        \
                           + (c4 * a4[jj] + c5 * a5[jj] + c6 * a6[jj] + c7 * a7[jj]);      \
            pending += 8;                                                                   \
            FO_FLUSH_IF_FULL(acc, acc_t, m, pending);                                      \
        }                                                                                   \
        for (; i + 4 <= r1; i += 4) {                                                       \
            const T *a0 = W + i * m, *a1 = a0 + m, *a2 = a1 + m, *a3 = a2 + m;              \
            double s0, s1, s2, s3;                                                          \
            DOT4(a0, a1, a2, a3, x, m, &s0, &s1, &s2, &s3);                                 \
            t[i] = (T)s0; t[i + 1] = (T)s1; t[i + 2] = (T)s2; t[i + 3] = (T)s3;             \
            const T c0 = (T)s0, c1 = (T)s1, c2 = (T)s2, c3 = (T)s3;                         \
            /* long rows: keep memory busy while the rows are reused from cache by          \
               prefetching the block after next (DOT4 prefetched the next one) */           \
            const int ahead = (i + 12 <= r1) && (4 * m * (Py_ssize_t)sizeof(T) >= 32768);   \
            Py_ssize_t jj = 0;                                                              \
            for (; jj + 16 <= m; jj += 16) {                                                \
                if (ahead) {                                                                \
                    const char *nx = (const char *)(a0 + 8 * m + 4 * jj);                   \
                    for (int q = 0; q < (int)(4 * 16 * sizeof(T)); q += 64)                 \
                        FO_PREFETCH_L2(nx + q);                                             \
                }                                                                           \
                _Pragma("omp simd")                                                         \
                for (int k = 0; k < 16; ++k)                                                \
                    acc_t[jj + k] += c0 * a0[jj + k] + c1 * a1[jj + k] + c2 * a2[jj + k]    \
                                   + c3 * a3[jj + k];                                       \
            }                                                                               \
            for (; jj < m; ++jj)                                                            \
                acc_t[jj] += c0 * a0[jj] + c1 * a1[jj] + c2 * a2[jj] + c3 * a3[jj];         \
            pending += 4;                                                                   \
            FO_FLUSH_IF_FULL(acc, acc_t, m, pending);                                      \
        }                                                                                   \
        _Pragma("omp simd")                                                                 \
        for (Py_ssize_t jj = 0; jj < m; ++jj) acc[jj] += (double)acc_t[jj];                 \
        for (; i < r1; ++i) {                                                               \
            const T *row = W + i * m;                                                       \
            double s = DOT(row, x, m);                                                      \
            t[i] = (T)s;                                                                    \
            _Pragma("omp simd")                                                             \
            for (Py_ssize_t j = 0; j < m; ++j) acc[j] += s * (double)row[j];                \
        }                                                                                   \
    }
    FO_WTWV_ROWS(fo_wtwv_rows_f, float, fo_dot_f, fo_dot4_f)
    FO_WTWV_ROWS(fo_wtwv_rows_d, double, fo_dot_d, fo_dot4_d)

    /* Two passes of classical Gram-Schmidt of w against the k rows of V (row-major, (k, m)):
       h[0:k] += coefficients (float64); returns ||w|| after (float64). */
    #define FO_ORTH(NAME, T, DOT)                                                           \
    static double NAME(const T *V, Py_ssize_t k, Py_ssize_t m, T *w, double *h) {           \
        for (int pass = 0; pass < 2; ++pass) {                                              \
            for (Py_ssize_t r = 0; r < k; ++r) {                                            \
                double c = DOT(V + r * m, w, m);                                            \
                h[r] += c;                                                                  \
                h[k + r] = c;  /* scratch: this pass's coefficients */                      \
            }                                                                               \
            for (Py_ssize_t r = 0; r < k; ++r) {                                            \
                const T c = (T)h[k + r];                                                    \
                const T *row = V + r * m;                                                   \
                _Pragma("omp simd")                                                         \
                for (Py_ssize_t j = 0; j < m; ++j) w[j] -= c * row[j];                      \
            }                                                                               \
        }                                                                                   \
        return sqrt(DOT(w, w, m));                                                          \
    }
    FO_ORTH(fo_orth_f, float, fo_dot_f)
    FO_ORTH(fo_orth_d, double, fo_dot_d)

    #define FO_MATVEC_ROWS(NAME, T, DOT, DOT4)                                              \
    static void NAME(const T *W, const T *x, T *y, Py_ssize_t r0, Py_ssize_t r1,            \
                     Py_ssize_t m) {                                                        \
        Py_ssize_t i = r0;                                                                  \
        for (; i + 4 <= r1; i += 4) {                                                       \
            double s0, s1, s2, s3;                                                          \
            const T *a0 = W + i * m;                                                        \
            DOT4(a0, a0 + m, a0 + 2 * m, a0 + 3 * m, x, m, &s0, &s1, &s2, &s3);             \
            y[i] = (T)s0; y[i + 1] = (T)s1; y[i + 2] = (T)s2; y[i + 3] = (T)s3;             \
        }                                                                                   \
        for (; i < r1; ++i) y[i] = (T)DOT(W + i * m, x, m);                                 \
    }
    FO_MATVEC_ROWS(fo_matvec_rows_f, float, fo_dot_f, fo_dot4_f)
    FO_MATVEC_ROWS(fo_matvec_rows_d, double, fo_dot_d, fo_dot4_d)

    /* Streaming read floor: sum of all values, same lane scheme as FO_DOT (one read each). */
    #define FO_SUM(NAME, T)                                                                 \
    static double NAME(const T *a, Py_ssize_t r0, Py_ssize_t r1) {                          \
        double pd[FO_LANES] = {0};                                                          \
        double s = 0.0;                                                                     \
        Py_ssize_t j = r0;                                                                  \
        while (j + FO_LANES <= r1) {                                                        \
            Py_ssize_t je = (j + FO_BLOCK < r1) ? j + FO_BLOCK : r1;                        \
            T p[FO_LANES] = {0};                                                            \
            for (; j + FO_LANES <= je; j += FO_LANES) {                                     \
                _Pragma("omp simd")                                                         \
                for (int k = 0; k < FO_LANES; ++k) p[k] += a[j + k];                        \
            }                                                                               \
            _Pragma("omp simd")                                                             \
            for (int k = 0; k < FO_LANES; ++k) pd[k] += (double)p[k];                       \
        }                                                                                   \
        for (; j < r1; ++j) s += (double)a[j];                                              \
        for (int k = 0; k < FO_LANES; ++k) s += pd[k];                                      \
        return s;                                                                           \
    }
    FO_SUM(fo_sum_f, float)
    FO_SUM(fo_sum_d, double)
    """
    void fo_wtwv_rows_f(const float *W, const float *x, float *t, double *acc, float *acc_t,
                        Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t m) noexcept nogil
    void fo_wtwv_rows_d(const double *W, const double *x, double *t, double *acc,
                        double *acc_t, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t m) noexcept nogil
    void fo_matvec_rows_f(const float *W, const float *x, float *y,
                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t m) noexcept nogil
    void fo_matvec_rows_d(const double *W, const double *x, double *y,
                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t m) noexcept nogil
    double fo_orth_f(const float *V, Py_ssize_t k, Py_ssize_t m, float *w,
                     double *h) noexcept nogil
    double fo_orth_d(const double *V, Py_ssize_t k, Py_ssize_t m, double *w,
                     double *h) noexcept nogil
    double fo_sum_f(const float *a, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    double fo_sum_d(const double *a, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil


ctypedef fused real:
    float
    double


cdef inline void _wtwv_rows(const real *W, const real *x, real *t, double *acc,
                            Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t m) noexcept nogil:
    # acc is a row of ``work`` (2 * m float64): [0, m) float64 sums, then m values of real
    if real is float:
        fo_wtwv_rows_f(W, x, t, acc, <float *>(acc + m), r0, r1, m)
    else:
        fo_wtwv_rows_d(W, x, t, acc, <double *>(acc + m), r0, r1, m)


cdef inline void _matvec_rows(const real *W, const real *x, real *y,
                              Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t m) noexcept nogil:
    if real is float:
        fo_matvec_rows_f(W, x, y, r0, r1, m)
    else:
        fo_matvec_rows_d(W, x, y, r0, r1, m)


@cython.boundscheck(False)
@cython.wraparound(False)
def wtwv(const real[:, :, ::1] W, const real[:, ::1] x, real[:, ::1] t, real[:, ::1] y,
         const long long[::1] active, double[:, ::1] work, int n_threads):
    """Fused ``t[b] = W[b] @ x[b]`` and ``y[b] = W[b].T @ t[b]`` for ``b`` in ``active``.

    One row-wise pass over each ``W[b]``: every row is read once and used for both products.
    ``work`` is float64 scratch of shape :func:`work_shape` ``(len(active), n, m, n_threads)``.
    With at least ``n_threads`` active matrices, threads take whole matrices; otherwise each
    matrix is split into ``n_chunks`` row blocks whose partial ``y`` are added in block order.
    """
    cdef Py_ssize_t nact = active.shape[0], n = W.shape[1], m = W.shape[2]
    cdef Py_ssize_t a, b, c, j, k, nch
    cdef double s
    if nact == 0 or n == 0 or m == 0:
        return
    nch = n_chunks(n, n_threads)
    with nogil:
        if nact >= n_threads or nch == 1:
            for a in prange(nact, num_threads=min(n_threads, nact), schedule="static",
                            chunksize=1):
                b = active[a]
                _wtwv_rows(&W[b, 0, 0], &x[b, 0], &t[b, 0], &work[a, 0], 0, n, m)
                for j in range(m):
                    y[b, j] = <real>work[a, j]
        else:
            for a in range(nact):
                b = active[a]
                for c in prange(nch, num_threads=n_threads, schedule="static", chunksize=1):
                    _wtwv_rows(&W[b, 0, 0], &x[b, 0], &t[b, 0], &work[c, 0],
                               (c * n) // nch, ((c + 1) * n) // nch, m)
                for j in range(m):  # serial: a second parallel region costs more than this
                    s = 0.0
                    for k in range(nch):
                        s = s + work[k, j]
                    y[b, j] = <real>s


@cython.boundscheck(False)
@cython.wraparound(False)
def matvec(const real[:, :, ::1] W, const real[:, ::1] x, real[:, ::1] y,
           const long long[::1] active, int n_threads):
    """``y[b] = W[b] @ x[b]`` for ``b`` in ``active`` (rows in parallel; no cross-thread sums)."""
    cdef Py_ssize_t nact = active.shape[0], n = W.shape[1], m = W.shape[2]
    cdef Py_ssize_t a, b, c, nch, total
    if nact == 0 or n == 0:
        return
    nch = n_chunks(n, n_threads)
    total = nact * nch
    with nogil:
        for c in prange(total, num_threads=n_threads, schedule="static"):
            a = c // nch
            b = active[a]
            _matvec_rows(&W[b, 0, 0], &x[b, 0], &y[b, 0],
                         ((c % nch) * n) // nch, (((c % nch) + 1) * n) // nch, m)


@cython.boundscheck(False)
@cython.wraparound(False)
def orth_step(real[:, :, ::1] V, Py_ssize_t j, real[:, ::1] w, double[:, ::1] h,
              double[::1] beta, const long long[::1] active, int n_threads):
    """Full reorthogonalization step of a Lanczos/Arnoldi basis, for ``b`` in ``active``.

    Two classical Gram-Schmidt passes of ``w[b]`` against ``V[b, :j+1]``; ``h[b, :j+1]``
    receives the summed coefficients (``h`` has at least ``2 * (j + 1)`` columns: the rest is
    scratch), ``beta[b] = ||w[b]||`` afterwards and ``V[b, j+1] = w[b] / beta[b]`` (left
    unchanged when ``beta[b] == 0``). Matrices run in parallel; each is serial (deterministic).
    """
    cdef Py_ssize_t nact = active.shape[0], m = V.shape[2], k = j + 1
    cdef Py_ssize_t a, b, i
    cdef double nrm
    cdef real inv
    if nact == 0:
        return
    with nogil:
        for a in prange(nact, num_threads=min(n_threads, nact), schedule="static", chunksize=1):
            b = active[a]
            for i in range(2 * k):
                h[b, i] = 0.0
            if real is float:
                nrm = fo_orth_f(&V[b, 0, 0], k, m, &w[b, 0], &h[b, 0])
            else:
                nrm = fo_orth_d(&V[b, 0, 0], k, m, &w[b, 0], &h[b, 0])
            beta[b] = nrm
            if nrm > 0 and k < V.shape[1]:
                inv = <real>(1.0 / nrm)
                for i in range(m):
                    V[b, k, i] = w[b, i] * inv


cdef inline int _sturm_below(const double *al, const double *b2, Py_ssize_t k,
                            double x) noexcept nogil:
    """Number of eigenvalues < x of the tridiagonal (al, sqrt(b2)) (Sturm sequence)."""
    cdef Py_ssize_t i
    cdef int cnt = 0
    cdef double d = al[0] - x
    if d == 0.0:
        d = -1e-300
    if d < 0:
        cnt += 1
    for i in range(1, k):
        d = (al[i] - x) - b2[i - 1] / d
        if d == 0.0:
            d = -1e-300
        if d < 0:
            cnt += 1
    return cnt


cdef void _tridiag_top_one(const double *al, const double *be, Py_ssize_t k, double *b2,
                           double *theta, double *s2) noexcept nogil:
    cdef Py_ssize_t i
    cdef double lo, hi, mid, r, rprev, g, gprev, gprev2, t, a, bl, br
    for i in range(k - 1):
        b2[i] = be[i] * be[i]
    lo = al[0]
    hi = al[0]
    for i in range(k):  # Gershgorin bounds
        bl = fabs(be[i - 1]) if i > 0 else 0.0
        br = fabs(be[i]) if i < k - 1 else 0.0
        if al[i] - bl - br < lo:
            lo = al[i] - bl - br
        if al[i] + bl + br > hi:
            hi = al[i] + bl + br
    a = fmax(fabs(lo), fabs(hi))
    if a == 0.0:  # the zero matrix
        theta[0] = 0.0
        s2[0] = 1.0
        return
    hi = hi + 1e-15 * a
    for i in range(200):  # bisection for the smallest x with all k eigenvalues below x
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi or hi - lo <= 4e-16 * a:
            break
        if _sturm_below(al, b2, k, mid) == k:
            hi = mid
        else:
            lo = mid
    theta[0] = hi
    if k == 1:
        s2[0] = 1.0
        return
    # last eigenvector component: s^2 = p_{k-2}(t) / p'_{k-1}(t) with ratio recurrences
    t = hi
    rprev = 1.0   # r_{-1} (p_{-1} = 1)
    gprev2 = 0.0  # g_{-2}: unused
    r = t - al[0]
    g = 1.0 / r if r != 0 else 1e300
    gprev = 0.0   # g_{-1} = p'_{-1} / p_{-1} = 0
    for i in range(1, k - 1):
        gprev2 = gprev
        gprev = g
        rprev = r
        r = (t - al[i]) - b2[i - 1] / rprev
        if r == 0.0:
            r = 1e-300
        g = (1.0 + (t - al[i]) * gprev - b2[i - 1] * gprev2 / rprev) / r
    # i = k - 1: D = p'_{k-1} / p_{k-2}
    a = 1.0 + (t - al[k - 1]) * g - b2[k - 2] * gprev / r
    s2[0] = 1.0 / a if a > 1.0 else 1.0


@cython.boundscheck(False)
@cython.wraparound(False)
def tridiag_top(const double[:, ::1] alpha, const double[:, ::1] beta, Py_ssize_t k,
                const long long[::1] active, double[::1] theta, double[::1] s2,
                double[:, ::1] scratch, int n_threads):
    """Largest eigenvalue and its eigenvector's squared last component, per tridiagonal.

    For ``b`` in ``active``: the symmetric tridiagonal matrix with diagonal ``alpha[b, :k]`` and
    off-diagonal ``beta[b, :k-1]``. ``theta[b]`` is found by bisection on Sturm counts (to a few
    ulps), ``s2[b]`` from the ratio recurrences of the characteristic polynomials
    (``s_last^2 = p_{k-1}(theta) / p_k'(theta)``): O(k) per bisection step, no LAPACK call.
    ``scratch`` is float64 of shape ``(len(active), k)``.
    """
    cdef Py_ssize_t nact = active.shape[0], a, b
    if nact == 0 or k == 0:
        return
    with nogil:
        for a in prange(nact, num_threads=min(n_threads, nact), schedule="static"):
            b = active[a]
            _tridiag_top_one(&alpha[b, 0], &beta[b, 0], k, &scratch[a, 0], &theta[b], &s2[b])


@cython.boundscheck(False)
@cython.wraparound(False)
def read_floor(const real[::1] a, int n_threads):
    """Sum of ``a`` read once in parallel: the read-bandwidth floor of a pass over ``W``."""
    cdef Py_ssize_t size = a.shape[0], c, nch = max(1, n_threads)
    cdef double total = 0.0
    if size == 0:
        return 0.0
    with nogil:
        for c in prange(nch, num_threads=n_threads, schedule="static", chunksize=1):
            if real is float:
                total += fo_sum_f(&a[0], (c * size) // nch, ((c + 1) * size) // nch)
            else:
                total += fo_sum_d(&a[0], (c * size) // nch, ((c + 1) * size) // nch)
    return total
