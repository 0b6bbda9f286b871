# C-level API of fastopt's batch-norm kernels, for other Cython code to cimport:
#
#     from fastopt.batchnorm._cython cimport forward_train_f32
#
# with fastopt.get_include() on the include path. Arrays are C-contiguous and viewed as
# (outer, C, inner): x[o, c, i] at x + (o * C + c) * inner + i. Outputs are written, never
# allocated (y may be x; dx may be dy or x); mean, var, invstd, dweight, dbias are float64 (C,).
# Every function is nogil, never raises, and returns 0, or -1 when it could not allocate its
# scratch space (then nothing meaningful was written).

cdef int forward_train_f32(const float* x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                           const double* weight, const double* bias, double eps, float* y,
                           double* mean, double* var, double* invstd,
                           int n_threads) noexcept nogil
cdef int forward_train_f64(const double* x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                           const double* weight, const double* bias, double eps, double* y,
                           double* mean, double* var, double* invstd,
                           int n_threads) noexcept nogil
cdef int backward_f32(const float* dy, const float* x, Py_ssize_t outer, Py_ssize_t C,
                      Py_ssize_t inner, const double* mean, const double* invstd,
                      const double* weight, bint training, float* dx, double* dweight,
                      double* dbias, int n_threads) noexcept nogil
cdef int backward_f64(const double* dy, const double* x, Py_ssize_t outer, Py_ssize_t C,
                      Py_ssize_t inner, const double* mean, const double* invstd,
                      const double* weight, bint training, double* dx, double* dweight,
                      double* dbias, int n_threads) noexcept nogil

# The address entry points behind forward_at / backward_at (x, y, weight, ... are addresses of
# C-contiguous buffers, 0 for an absent weight, bias or running statistic; stats: float64 (3, C);
# the plan's fields spelled out). fastopt.torch's C++ kernels call them through __pyx_capi__.
cdef int forward_addr(size_t x, size_t y, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                      bint is_f32, size_t weight, size_t bias, bint training,
                      size_t running_mean, size_t running_var, double eps, double* stats,
                      size_t mean_out, size_t invstd_out, bint per_channel, Py_ssize_t n_chunks,
                      int n_threads, bint stream, int row_block) noexcept nogil
cdef int backward_addr(size_t dy, size_t x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                       bint is_f32, size_t mean, size_t invstd, bint stats_f32, size_t weight,
                       bint training, size_t dx, size_t dweight_out, size_t dbias_out,
                       bint per_channel, Py_ssize_t n_chunks, int n_threads, bint stream,
                       int row_block) noexcept nogil
