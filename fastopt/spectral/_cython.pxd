# C-level API of fastopt's spectra kernels, for other Cython code to cimport:
#
#     from fastopt.spectral._cython cimport wtwv_f32, matvec_f32
#
# with fastopt.get_include() on the include path. W is C-contiguous (n, m); x, t, y are
# contiguous vectors. Sums accumulate in float64 over n_threads fixed row blocks combined in block
# order (the same split as the Python kernels), so results depend on n_threads only. Every
# function is nogil, never raises, and returns 0, or -1 when it could not allocate its scratch
# space (then nothing meaningful was written).

cdef int wtwv_f32(const float* W, Py_ssize_t n, Py_ssize_t m, const float* x, float* t,
                  float* y, int n_threads) noexcept nogil
cdef int wtwv_f64(const double* W, Py_ssize_t n, Py_ssize_t m, const double* x, double* t,
                  double* y, int n_threads) noexcept nogil
cdef int matvec_f32(const float* W, Py_ssize_t n, Py_ssize_t m, const float* x, float* y,
                    int n_threads) noexcept nogil
cdef int matvec_f64(const double* W, Py_ssize_t n, Py_ssize_t m, const double* x, double* y,
                    int n_threads) noexcept nogil
