# The C row loops of the curvature family (_rows.h, _transpose.h: FO_CLONES, compiled per SIMD
# level), declared once for every model's Cython kernels (MLP, Network, ElmanRNN), with one
# fused wrapper each that picks the float or double loop.
from fastopt.curvature._formulas cimport real

cdef extern from "_transpose.h":
    void fo_transpose_f(float* dst, Py_ssize_t ldd, const float* a, Py_ssize_t lda,
                        const float* b, Py_ssize_t ldb, Py_ssize_t R, Py_ssize_t C) noexcept nogil
    void fo_transpose_d(double* dst, Py_ssize_t ldd, const double* a, Py_ssize_t lda,
                        const double* b, Py_ssize_t ldb, Py_ssize_t R,
                        Py_ssize_t C) noexcept nogil

cdef extern from "_rows.h":
    void fo_tanh_row_f(const float* z, const float* b, float* a, float* d1, float* d2,
                       Py_ssize_t n, int need) noexcept nogil
    void fo_tanh_row_d(const double* z, const double* b, double* a, double* d1, double* d2,
                       Py_ssize_t n, int need) noexcept nogil
    void fo_rforward_row_f(const float* av, const float* c, const float* zr, const float* d1,
                           float* rz, float* ra, Py_ssize_t n) noexcept nogil
    void fo_rforward_row_d(const double* av, const double* c, const double* zr,
                           const double* d1, double* rz, double* ra, Py_ssize_t n) noexcept nogil
    void fo_backward_row_f(const float* da0, const float* dar, const float* dv, const float* d1,
                           const float* d2, const float* rz, float* out, Py_ssize_t n,
                           int gn) noexcept nogil
    void fo_backward_row_d(const double* da0, const double* dar, const double* dv,
                           const double* d1, const double* d2, const double* rz, double* out,
                           Py_ssize_t n, int gn) noexcept nogil
    void fo_add_row_f(double* acc, const float* row, Py_ssize_t n) noexcept nogil
    void fo_add_row_d(double* acc, const double* row, Py_ssize_t n) noexcept nogil


cdef inline void tanh_row(const real* z, const real* b, real* a, real* d1, real* d2,
                          Py_ssize_t n, int need) noexcept nogil:
    """a = tanh(z + b); need >= 1: d1 = 1 - a^2; need == 2: d2 = -2 a d1 (no aliasing)."""
    if real is float:
        fo_tanh_row_f(z, b, a, d1, d2, n, need)
    else:
        fo_tanh_row_d(z, b, a, d1, d2, n, need)


cdef inline void rforward_row(const real* av, const real* c, const real* zr, const real* d1,
                              real* rz, real* ra, Py_ssize_t n) noexcept nogil:
    """rz = av + c (+ zr when not NULL), ra = d1 rz."""
    if real is float:
        fo_rforward_row_f(av, c, zr, d1, rz, ra, n)
    else:
        fo_rforward_row_d(av, c, zr, d1, rz, ra, n)


cdef inline void backward_row(const real* da0, const real* dar, const real* dv,
                              const real* d1, const real* d2, const real* rz, real* out,
                              Py_ssize_t n, bint gn) noexcept nogil:
    """out = (dar + dv) d1 + da0 d2 rz, or dar d1 when gn."""
    if real is float:
        fo_backward_row_f(da0, dar, dv, d1, d2, rz, out, n, gn)
    else:
        fo_backward_row_d(da0, dar, dv, d1, d2, rz, out, n, gn)


cdef inline void add_row(double* acc, const real* row, Py_ssize_t n) noexcept nogil:
    """acc += row, in float64 (column sums)."""
    if real is float:
        fo_add_row_f(acc, row, n)
    else:
        fo_add_row_d(acc, row, n)


cdef inline void transpose(real* dst, Py_ssize_t ldd, const real* a, Py_ssize_t lda,
                           const real* b, Py_ssize_t ldb, Py_ssize_t R,
                           Py_ssize_t C) noexcept nogil:
    """dst[c, r] = a[r, c] (+ b[r, c] when b is not NULL), tiled."""
    if real is float:
        fo_transpose_f(dst, ldd, a, lda, b, ldb, R, C)
    else:
        fo_transpose_d(dst, ldd, a, lda, b, ldb, R, C)
