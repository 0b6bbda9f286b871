# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernels of the spectra family (OpenMP, GIL released).

Kernels never validate (``fastopt.spectral.api`` does) and write only their output arguments.
Shapes: ``W`` is a C-contiguous stack ``(B, n, m)``; ``active`` lists the matrices to process
(int64 indices into the stack), so a batched solver can stop work on converged matrices.
Reductions accumulate in float64. Work is split into a fixed number of chunks that depends only
on ``n_threads`` and the shape, and partial sums are combined in chunk order: results are
deterministic for a given thread count (``n_threads`` fixes the split; ``n_workers``, 0 for
``n_threads``, is how many OS threads execute it, which does not change the result).
The C loops live in ``_spectral_kernels.h`` (run-time SIMD dispatch: ``simd_level()``).
"""

cimport cython
from cython.parallel cimport prange
from libc.math cimport fabs, fmax

from ._plan import n_chunks, work_shape  # one work split for every backend (re-exported)

cdef extern from "_spectral_kernels.h" nogil:
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
    int fo_simd_level() noexcept nogil


def simd_level():
    """SIMD level the hot loops of this module run at: 4 (x86-64-v4, AVX-512), 3 (x86-64-v3,
    AVX2 + FMA) or 0 (baseline): the clone that GCC's run-time dispatch (FO_CLONES) picks."""
    return int(fo_simd_level())


cdef inline int _workers(int n_threads, int n_workers) noexcept nogil:
    """OS threads that run a plan made for ``n_threads`` (0 or more than the plan: the plan's)."""
    if n_workers <= 0 or n_workers > n_threads:
        return max(1, n_threads)
    return n_workers


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
         const long long[::1] active, double[:, ::1] work, int n_threads, int n_workers=0):
    """Fused ``t[b] = W[b] @ x[b]`` and ``y[b] = W[b].T @ t[b]`` for ``b`` in ``active``.

    One row-wise pass over each ``W[b]``: every row is read once and used for both products.
    ``work`` is float64 scratch of shape :func:`work_shape` ``(len(active), n, m, n_threads)``.
    With at least ``n_threads`` active matrices, threads take whole matrices; otherwise each
    matrix is split into ``n_chunks`` row blocks whose partial ``y`` are added in block order.
    ``n_workers`` (0: ``n_threads``) OS threads run that plan: the result depends on
    ``n_threads`` only, so a solver can drop to fewer workers under load and stay deterministic.
    """
    cdef Py_ssize_t nact = active.shape[0], n = W.shape[1], m = W.shape[2]
    cdef Py_ssize_t a, b, c, j, k, nch
    cdef double s
    cdef int nw = _workers(n_threads, n_workers)
    if nact == 0 or n == 0 or m == 0:
        return
    nch = n_chunks(n, n_threads)
    with nogil:
        if nact >= n_threads or nch == 1:
            for a in prange(nact, num_threads=min(nw, nact), schedule="static",
                            chunksize=1):
                b = active[a]
                _wtwv_rows(&W[b, 0, 0], &x[b, 0], &t[b, 0], &work[a, 0], 0, n, m)
                for j in range(m):
                    y[b, j] = <real>work[a, j]
        else:
            for a in range(nact):
                b = active[a]
                for c in prange(nch, num_threads=nw, schedule="static", chunksize=1):
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
           const long long[::1] active, int n_threads, int n_workers=0):
    """``y[b] = W[b] @ x[b]`` for ``b`` in ``active`` (rows in parallel; no cross-thread sums;
    ``n_workers`` as in :func:`wtwv`)."""
    cdef Py_ssize_t nact = active.shape[0], n = W.shape[1], m = W.shape[2]
    cdef Py_ssize_t a, b, c, nch, total
    cdef int nw = _workers(n_threads, n_workers)
    if nact == 0 or n == 0:
        return
    nch = n_chunks(n, n_threads)
    total = nact * nch
    with nogil:
        for c in prange(total, num_threads=nw, schedule="static"):
            a = c // nch
            b = active[a]
            _matvec_rows(&W[b, 0, 0], &x[b, 0], &y[b, 0],
                         ((c % nch) * n) // nch, (((c % nch) + 1) * n) // nch, m)


@cython.boundscheck(False)
@cython.wraparound(False)
def orth_step(real[:, :, ::1] V, Py_ssize_t j, real[:, ::1] w, double[:, ::1] h,
              double[::1] beta, const long long[::1] active, int n_threads, int n_workers=0):
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
    cdef int nw = _workers(n_threads, n_workers)
    if nact == 0:
        return
    with nogil:
        for a in prange(nact, num_threads=min(nw, nact), schedule="static", chunksize=1):
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
                double[:, ::1] scratch, int n_threads, int n_workers=0):
    """Largest eigenvalue and its eigenvector's squared last component, per tridiagonal.

    For ``b`` in ``active``: the symmetric tridiagonal matrix with diagonal ``alpha[b, :k]`` and
    off-diagonal ``beta[b, :k-1]``. ``theta[b]`` is found by bisection on Sturm counts (to a few
    ulps), ``s2[b]`` from the ratio recurrences of the characteristic polynomials
    (``s_last^2 = p_{k-1}(theta) / p_k'(theta)``): O(k) per bisection step, no LAPACK call.
    ``scratch`` is float64 of shape ``(len(active), k)``.
    """
    cdef Py_ssize_t nact = active.shape[0], a, b
    cdef int nw = _workers(n_threads, n_workers)
    if nact == 0 or k == 0:
        return
    with nogil:
        for a in prange(nact, num_threads=min(nw, nact), schedule="static"):
            b = active[a]
            _tridiag_top_one(&alpha[b, 0], &beta[b, 0], k, &scratch[a, 0], &theta[b], &s2[b])


@cython.boundscheck(False)
@cython.wraparound(False)
def read_floor(const real[::1] a, int n_threads, int n_workers=0):
    """Sum of ``a`` read once in parallel: the read-bandwidth floor of a pass over ``W``."""
    cdef Py_ssize_t size = a.shape[0], c, nch = max(1, n_threads)
    cdef double total = 0.0
    cdef int nw = _workers(n_threads, n_workers)
    if size == 0:
        return 0.0
    with nogil:
        for c in prange(nch, num_threads=nw, schedule="static", chunksize=1):
            if real is float:
                total += fo_sum_f(&a[0], (c * size) // nch, ((c + 1) * size) // nch)
            else:
                total += fo_sum_d(&a[0], (c * size) // nch, ((c + 1) * size) // nch)
    return total


# ----------------------------------------------------------------- C-level API (_cython.pxd)
from libc.stdlib cimport calloc, free


cdef inline Py_ssize_t _blocks(Py_ssize_t n, int n_threads) noexcept nogil:
    # one block per thread, never more blocks than rows (the Python kernels' n_chunks for a
    # single matrix)
    if n_threads < 1:
        n_threads = 1
    return min(<Py_ssize_t>n_threads, max(n, <Py_ssize_t>1))


cdef inline int _wtwv_c(const real* W, Py_ssize_t n, Py_ssize_t m, const real* x, real* t,
                        real* y, int n_threads) noexcept nogil:
    cdef Py_ssize_t nch = _blocks(n, n_threads), c, j, k
    cdef double s
    cdef double* work = <double*>calloc(nch * 2 * m + 1, sizeof(double))
    if work == NULL:
        return -1
    for c in prange(nch, num_threads=max(1, n_threads), schedule="static", chunksize=1):
        _wtwv_rows(W, x, t, &work[c * 2 * m], (c * n) // nch, ((c + 1) * n) // nch, m)
    for j in range(m):
        s = 0.0
        for k in range(nch):
            s = s + work[k * 2 * m + j]
        y[j] = <real>s
    free(work)
    return 0


cdef int wtwv_f32(const float* W, Py_ssize_t n, Py_ssize_t m, const float* x, float* t,
                  float* y, int n_threads) noexcept nogil:
    """t = W x and y = W^T t in one pass over W's rows."""
    return _wtwv_c(W, n, m, x, t, y, n_threads)


cdef int wtwv_f64(const double* W, Py_ssize_t n, Py_ssize_t m, const double* x, double* t,
                  double* y, int n_threads) noexcept nogil:
    return _wtwv_c(W, n, m, x, t, y, n_threads)


cdef int matvec_f32(const float* W, Py_ssize_t n, Py_ssize_t m, const float* x, float* y,
                    int n_threads) noexcept nogil:
    """y = W x, rows in parallel."""
    cdef Py_ssize_t nch = _blocks(n, n_threads), c
    for c in prange(nch, num_threads=max(1, n_threads), schedule="static", chunksize=1):
        fo_matvec_rows_f(W, x, y, (c * n) // nch, ((c + 1) * n) // nch, m)
    return 0


cdef int matvec_f64(const double* W, Py_ssize_t n, Py_ssize_t m, const double* x, double* y,
                    int n_threads) noexcept nogil:
    cdef Py_ssize_t nch = _blocks(n, n_threads), c
    for c in prange(nch, num_threads=max(1, n_threads), schedule="static", chunksize=1):
        fo_matvec_rows_d(W, x, y, (c * n) // nch, ((c + 1) * n) // nch, m)
    return 0
