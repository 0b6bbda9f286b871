# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython batch-norm kernels (fused forward, eval forward, backward) over (outer, C, inner) views.

The loops are C (``_kernels.h``: one build per SIMD level, picked at run time; the formulas in
``_scalar.h``); this module runs them in parallel and gives them the kernel interface every
backend of the family shares (``forward_train``, ``forward_eval``, ``backward``: same
signatures in ``_numba``, ``_cuda`` and ``fastopt.reference.batchnorm``). Kernels never validate
or allocate beyond scratch space: ``fastopt.batchnorm.api`` checks shapes and dtypes and picks the
work split (``_plan.make_plan``). Statistics accumulate in float64 around a per-channel shift (the
channel's first value); outputs are computed in float64 as ``(x - mean) * scale + bias``.

The ``nogil`` C-level entry points (``forward_train_f32`` and friends) are declared in
``_cython.pxd`` for other Cython code to cimport (``fastopt.get_include()``).
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free


cdef extern from "_kernels.h" nogil:
    int fo_bn_level()
    int fo_bn_set_level(int level)
    int fo_cpu_level()
    const char *fo_level_name(int level)
    double fo_channel_shift(double first)
    double fo_normalize(double x, double mean, double scale, double bias)
    double fo_grad_input(double g, double x, double mean, double a, double b, double c)
    void fo_finish_stats(double s1, double s2, double shift, double n, double eps, double *mean,
                         double *var, double *invstd)
    void fo_grad_coefficients(double s, double d, double invstd, double weight, double n,
                              int training, double *a, double *b, double *c)
    int fo_needs_centring(double mean, double invstd)
    void fo_chunk_sums_f32(const float *x, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,
                           Py_ssize_t inner, const double *shift, double *s1, double *s2,
                           int row_block)
    void fo_chunk_sums_f64(const double *x, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,
                           Py_ssize_t inner, const double *shift, double *s1, double *s2,
                           int row_block)
    void fo_chunk_grad_sums_f32(const float *g, const float *x, Py_ssize_t lo, Py_ssize_t hi,
                                Py_ssize_t C, Py_ssize_t inner, const double *mean, double *s,
                                double *d, int row_block)
    void fo_chunk_grad_sums_f64(const double *g, const double *x, Py_ssize_t lo, Py_ssize_t hi,
                                Py_ssize_t C, Py_ssize_t inner, const double *mean, double *s,
                                double *d, int row_block)
    void fo_chunk_normalize_f32(const float *x, float *y, Py_ssize_t lo, Py_ssize_t hi,
                                Py_ssize_t C, Py_ssize_t inner, const double *mean,
                                const double *scale, const double *bias, int stream)
    void fo_chunk_normalize_f64(const double *x, double *y, Py_ssize_t lo, Py_ssize_t hi,
                                Py_ssize_t C, Py_ssize_t inner, const double *mean,
                                const double *scale, const double *bias, int stream)
    void fo_chunk_grad_input_f32(const float *g, const float *x, float *dx, Py_ssize_t lo,
                                 Py_ssize_t hi, Py_ssize_t C, Py_ssize_t inner,
                                 const double *mean, const double *a, const double *b,
                                 const double *c, int stream)
    void fo_chunk_grad_input_f64(const double *g, const double *x, double *dx, Py_ssize_t lo,
                                 Py_ssize_t hi, Py_ssize_t C, Py_ssize_t inner,
                                 const double *mean, const double *a, const double *b,
                                 const double *c, int stream)
    void fo_channel_forward_f32(const float *x, float *y, Py_ssize_t outer, Py_ssize_t inner,
                                Py_ssize_t stride, double weight, double bias, double eps,
                                double *mean, double *var, double *invstd, int stream)
    void fo_channel_forward_f64(const double *x, double *y, Py_ssize_t outer, Py_ssize_t inner,
                                Py_ssize_t stride, double weight, double bias, double eps,
                                double *mean, double *var, double *invstd, int stream)
    void fo_channel_backward_f32(const float *g, const float *x, float *dx, Py_ssize_t outer,
                                 Py_ssize_t inner, Py_ssize_t stride, double mean, double invstd,
                                 double weight, int training, double *dweight, double *dbias,
                                 int stream)
    void fo_channel_backward_f64(const double *g, const double *x, double *dx, Py_ssize_t outer,
                                 Py_ssize_t inner, Py_ssize_t stride, double mean,
                                 double invstd, double weight, int training, double *dweight,
                                 double *dbias, int stream)


# ---------------------------------------------------------------- dtype switches

cdef inline void chunk_sums(const floating* x, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,
                            Py_ssize_t inner, const double* shift, double* s1, double* s2,
                            int row_block) noexcept nogil:
    if floating is float:
        fo_chunk_sums_f32(x, lo, hi, C, inner, shift, s1, s2, row_block)
    else:
        fo_chunk_sums_f64(x, lo, hi, C, inner, shift, s1, s2, row_block)


cdef inline void chunk_grad_sums(const floating* g, const floating* x, Py_ssize_t lo,
                                 Py_ssize_t hi, Py_ssize_t C, Py_ssize_t inner,
                                 const double* mean, double* s, double* d,
                                 int row_block) noexcept nogil:
    if floating is float:
        fo_chunk_grad_sums_f32(g, x, lo, hi, C, inner, mean, s, d, row_block)
    else:
        fo_chunk_grad_sums_f64(g, x, lo, hi, C, inner, mean, s, d, row_block)


cdef inline void chunk_normalize(const floating* x, floating* y, Py_ssize_t lo, Py_ssize_t hi,
                                 Py_ssize_t C, Py_ssize_t inner, const double* mean,
                                 const double* scale, const double* bias,
                                 bint stream) noexcept nogil:
    if floating is float:
        fo_chunk_normalize_f32(x, y, lo, hi, C, inner, mean, scale, bias, stream)
    else:
        fo_chunk_normalize_f64(x, y, lo, hi, C, inner, mean, scale, bias, stream)


cdef inline void chunk_grad_input(const floating* g, const floating* x, floating* dx,
                                  Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C, Py_ssize_t inner,
                                  const double* mean, const double* a, const double* b,
                                  const double* c, bint stream) noexcept nogil:
    if floating is float:
        fo_chunk_grad_input_f32(g, x, dx, lo, hi, C, inner, mean, a, b, c, stream)
    else:
        fo_chunk_grad_input_f64(g, x, dx, lo, hi, C, inner, mean, a, b, c, stream)


cdef inline void channel_forward(const floating* x, floating* y, Py_ssize_t outer,
                                 Py_ssize_t inner, Py_ssize_t stride, double weight, double bias,
                                 double eps, double* mean, double* var, double* invstd,
                                 bint stream) noexcept nogil:
    if floating is float:
        fo_channel_forward_f32(x, y, outer, inner, stride, weight, bias, eps, mean, var, invstd,
                               stream)
    else:
        fo_channel_forward_f64(x, y, outer, inner, stride, weight, bias, eps, mean, var, invstd,
                               stream)


cdef inline void channel_backward(const floating* g, const floating* x, floating* dx,
                                  Py_ssize_t outer, Py_ssize_t inner, Py_ssize_t stride,
                                  double mean, double invstd, double weight, bint training,
                                  double* dweight, double* dbias, bint stream) noexcept nogil:
    if floating is float:
        fo_channel_backward_f32(g, x, dx, outer, inner, stride, mean, invstd, weight, training,
                                dweight, dbias, stream)
    else:
        fo_channel_backward_f64(g, x, dx, outer, inner, stride, mean, invstd, weight, training,
                                dweight, dbias, stream)


cdef inline Py_ssize_t chunk_lo(Py_ssize_t k, Py_ssize_t outer, Py_ssize_t n_chunks) noexcept nogil:
    return k * outer // n_chunks


# ---------------------------------------------------------------- whole calls (nogil)

cdef bint any_centring(Py_ssize_t C, const double* mean, const double* invstd) noexcept nogil:
    """Whether a channel of the call needs the subtraction (_scalar.h: FO_CENTRE_LIMIT)."""
    cdef Py_ssize_t c
    for c in range(C):
        if fo_needs_centring(mean[c], invstd[c]):
            return True
    return False


cdef int run_forward_eval(const floating* xp, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                          const double* mean, const double* invstd, const double* weight,
                          const double* bias, floating* yp, Py_ssize_t n_chunks, int n_threads,
                          bint stream) noexcept nogil:
    """y = (x - mean) * invstd * weight + bias; the row sweeps fold the mean into the constant
    when no channel needs the subtraction (one coefficient array fewer per value)."""
    cdef Py_ssize_t k, c
    cdef double* scale = <double*>calloc(2 * C, sizeof(double))
    cdef double* shift
    cdef const double* centre = mean
    cdef const double* offset = bias
    if scale == NULL:
        return -1
    shift = scale + C
    for c in range(C):
        scale[c] = invstd[c] * weight[c]
    if inner == 1 and not any_centring(C, mean, invstd):
        for c in range(C):
            shift[c] = bias[c] - mean[c] * scale[c]
        centre = NULL
        offset = shift
    for k in prange(n_chunks, schedule="static", num_threads=n_threads):
        chunk_normalize(xp, yp, chunk_lo(k, outer, n_chunks), chunk_lo(k + 1, outer, n_chunks),
                        C, inner, centre, scale, offset, stream)
    free(scale)
    return 0


cdef int run_forward_train(const floating* xp, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                           const double* weight, const double* bias, double eps, floating* yp,
                           double* mean, double* var, double* invstd, bint per_channel,
                           Py_ssize_t n_chunks, int n_threads, bint stream,
                           int row_block) noexcept nogil:
    cdef Py_ssize_t stride = C * inner, c, k
    cdef double n = <double>(outer * inner), s1, s2
    cdef double* part
    cdef double* shifts
    cdef int status
    if per_channel:
        for c in prange(C, schedule="static", num_threads=n_threads):
            channel_forward(xp + c * inner, yp + c * inner, outer, inner, stride, weight[c],
                            bias[c], eps, &mean[c], &var[c], &invstd[c], stream)
        return 0
    part = <double*>calloc(2 * n_chunks * C + C, sizeof(double))
    if part == NULL:
        return -1
    shifts = part + 2 * n_chunks * C
    for c in range(C):
        shifts[c] = fo_channel_shift(<double>xp[c * inner])
    for k in prange(n_chunks, schedule="static", num_threads=n_threads):
        chunk_sums(xp, chunk_lo(k, outer, n_chunks), chunk_lo(k + 1, outer, n_chunks), C, inner,
                   shifts, part + 2 * k * C, part + (2 * k + 1) * C, row_block)
    for c in range(C):
        s1 = 0.0
        s2 = 0.0
        for k in range(n_chunks):  # chunk order: deterministic
            s1 += part[2 * k * C + c]
            s2 += part[(2 * k + 1) * C + c]
        fo_finish_stats(s1, s2, shifts[c], n, eps, &mean[c], &var[c], &invstd[c])
    free(part)
    return run_forward_eval(xp, outer, C, inner, mean, invstd, weight, bias, yp, n_chunks,
                            n_threads, stream)


cdef int run_backward(const floating* gp, const floating* xp, Py_ssize_t outer, Py_ssize_t C,
                      Py_ssize_t inner, const double* mean, const double* invstd,
                      const double* weight, bint training, floating* dxp, double* dweight,
                      double* dbias, bint per_channel, Py_ssize_t n_chunks, int n_threads,
                      bint stream, int row_block) noexcept nogil:
    cdef Py_ssize_t stride = C * inner, c, k
    cdef double n = <double>(outer * inner), s, d
    cdef double* part
    cdef double* ca
    cdef double* cb
    cdef double* cc
    cdef const double* centre
    if per_channel:
        for c in prange(C, schedule="static", num_threads=n_threads):
            channel_backward(gp + c * inner, xp + c * inner, dxp + c * inner, outer, inner,
                             stride, mean[c], invstd[c], weight[c], training, &dweight[c],
                             &dbias[c], stream)
        return 0
    part = <double*>calloc(2 * n_chunks * C + 3 * C, sizeof(double))
    if part == NULL:
        return -1
    ca = part + 2 * n_chunks * C
    cb = ca + C
    cc = cb + C
    for k in prange(n_chunks, schedule="static", num_threads=n_threads):
        chunk_grad_sums(gp, xp, chunk_lo(k, outer, n_chunks), chunk_lo(k + 1, outer, n_chunks),
                        C, inner, mean, part + 2 * k * C, part + (2 * k + 1) * C, row_block)
    for c in range(C):
        s = 0.0
        d = 0.0
        for k in range(n_chunks):
            s += part[2 * k * C + c]
            d += part[(2 * k + 1) * C + c]
        dbias[c] = s
        dweight[c] = d * invstd[c]
        fo_grad_coefficients(s, d, invstd[c], weight[c], n, training, &ca[c], &cb[c], &cc[c])
    centre = mean
    if inner == 1 and not any_centring(C, mean, invstd):  # fold the mean, as the forward does
        for c in range(C):
            cc[c] = cc[c] - mean[c] * cb[c]
        centre = NULL
    for k in prange(n_chunks, schedule="static", num_threads=n_threads):
        chunk_grad_input(gp, xp, dxp, chunk_lo(k, outer, n_chunks),
                         chunk_lo(k + 1, outer, n_chunks), C, inner, centre, ca, cb, cc, stream)
    free(part)
    return 0


# ---------------------------------------------------------------- C-level API (_cython.pxd)
# Specialized per dtype, so that other Cython modules can cimport them without fused types.

cdef int forward_train_f32(const float* x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                           const double* weight, const double* bias, double eps, float* y,
                           double* mean, double* var, double* invstd,
                           int n_threads) noexcept nogil:
    return run_forward_train(x, outer, C, inner, weight, bias, eps, y, mean, var, invstd, False,
                             _chunks(outer, n_threads), n_threads, False, 4)


cdef int forward_train_f64(const double* x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                           const double* weight, const double* bias, double eps, double* y,
                           double* mean, double* var, double* invstd,
                           int n_threads) noexcept nogil:
    return run_forward_train(x, outer, C, inner, weight, bias, eps, y, mean, var, invstd, False,
                             _chunks(outer, n_threads), n_threads, False, 4)


cdef int backward_f32(const float* dy, const float* x, Py_ssize_t outer, Py_ssize_t C,
                      Py_ssize_t inner, const double* mean, const double* invstd,
                      const double* weight, bint training, float* dx, double* dweight,
                      double* dbias, int n_threads) noexcept nogil:
    return run_backward(dy, x, outer, C, inner, mean, invstd, weight, training, dx, dweight,
                        dbias, False, _chunks(outer, n_threads), n_threads, False, 4)


cdef int backward_f64(const double* dy, const double* x, Py_ssize_t outer, Py_ssize_t C,
                      Py_ssize_t inner, const double* mean, const double* invstd,
                      const double* weight, bint training, double* dx, double* dweight,
                      double* dbias, int n_threads) noexcept nogil:
    return run_backward(dy, x, outer, C, inner, mean, invstd, weight, training, dx, dweight,
                        dbias, False, _chunks(outer, n_threads), n_threads, False, 4)


cdef inline Py_ssize_t _chunks(Py_ssize_t outer, int n_threads) noexcept nogil:
    # as _plan.make_plan: a few chunks per thread
    cdef Py_ssize_t k = 2 * n_threads if 2 * n_threads > 8 else 8
    return k if k < outer else (outer if outer > 0 else 1)


# ---------------------------------------------------------------- the kernel interface

def forward_train(const floating[:, :, ::1] x, const double[::1] weight,
                  const double[::1] bias, double eps, floating[:, :, ::1] y, double[::1] mean,
                  double[::1] var, double[::1] invstd, plan):
    """Training forward: batch statistics (OUT mean, var, invstd: float64 (C,)), then OUT
    ``y = (x - mean) * invstd * weight + bias`` (y may be x itself). ``plan``: a ``_plan.Plan``."""
    cdef bint per_channel = plan.per_channel, stream = plan.stream
    cdef Py_ssize_t n_chunks = plan.n_chunks
    cdef int n_threads = plan.n_threads, row_block = plan.row_block, status
    with nogil:
        status = run_forward_train(&x[0, 0, 0], x.shape[0], x.shape[1], x.shape[2], &weight[0],
                                   &bias[0], eps, &y[0, 0, 0], &mean[0], &var[0], &invstd[0],
                                   per_channel, n_chunks, n_threads, stream, row_block)
    if status:
        raise MemoryError("batch norm: no memory for the partial sums")


def forward_eval(const floating[:, :, ::1] x, const double[::1] mean, const double[::1] invstd,
                 const double[::1] weight, const double[::1] bias, floating[:, :, ::1] y, plan):
    """Normalize with given statistics: OUT ``y = (x - mean) * invstd * weight + bias`` per
    channel (float64 math); y may be x itself."""
    cdef bint stream = plan.stream
    cdef Py_ssize_t n_chunks = plan.n_chunks
    cdef int n_threads = plan.n_threads, status
    with nogil:
        status = run_forward_eval(&x[0, 0, 0], x.shape[0], x.shape[1], x.shape[2], &mean[0],
                                  &invstd[0], &weight[0], &bias[0], &y[0, 0, 0], n_chunks,
                                  n_threads, stream)
    if status:
        raise MemoryError("batch norm: no memory for the coefficients")


def backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const double[::1] mean,
             const double[::1] invstd, const double[::1] weight, bint training,
             floating[:, :, ::1] dx, double[::1] dweight, double[::1] dbias, plan):
    """Backward: one reduction pass (sum dy, sum (x-mean) dy), one dx pass. OUT dx (may alias
    dy or x), dweight = sum((x - mean) dy) invstd, dbias = sum(dy)."""
    cdef bint per_channel = plan.per_channel, stream = plan.stream
    cdef Py_ssize_t n_chunks = plan.n_chunks
    cdef int n_threads = plan.n_threads, row_block = plan.row_block, status
    with nogil:
        status = run_backward(&dy[0, 0, 0], &x[0, 0, 0], x.shape[0], x.shape[1], x.shape[2],
                              &mean[0], &invstd[0], &weight[0], training, &dx[0, 0, 0],
                              &dweight[0], &dbias[0], per_channel, n_chunks, n_threads, stream,
                              row_block)
    if status:
        raise MemoryError("batch norm: no memory for the partial sums")


# ---------------------------------------------------------------- the same on raw addresses
# For a front end that owns its buffers and has checked them (fastopt.torch's op): addresses of
# C-contiguous arrays instead of memoryviews (whose acquisition and fused-type dispatch cost
# more than the kernel on a small input), per-channel vectors in x's dtype, converted here.

cdef double* _widened(size_t p, Py_ssize_t C, bint is_f32, double fill, double* out) noexcept nogil:
    """The x-dtype (C,) vector at p (or fill where p is 0) as float64, into out."""
    cdef Py_ssize_t c
    for c in range(C):
        if p == 0:
            out[c] = fill
        elif is_f32:
            out[c] = (<const float*>p)[c]
        else:
            out[c] = (<const double*>p)[c]
    return out


cdef void _narrowed(const double* v, Py_ssize_t C, bint is_f32, size_t p) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        if is_f32:
            (<float*>p)[c] = <float>v[c]
        else:
            (<double*>p)[c] = v[c]


cdef int forward_addr(size_t x, size_t y, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                      bint is_f32, size_t weight, size_t bias, bint training,
                      size_t running_mean, size_t running_var, double eps, double* stats,
                      size_t mean_out, size_t invstd_out, bint per_channel, Py_ssize_t n_chunks,
                      int n_threads, bint stream, int row_block) noexcept nogil:
    """The body of ``forward_at``, also called from C++ (fastopt/torch/_ops.cpp) through
    ``__pyx_capi__``; returns -1 when out of memory (nothing meaningful written)."""
    cdef Py_ssize_t c
    cdef int status = -1
    cdef double* mean = stats
    cdef double* var = mean + C
    cdef double* invstd = var + C
    cdef double* params = <double*>calloc(2 * C, sizeof(double))
    if params == NULL:
        return -1
    _widened(weight, C, is_f32, 1.0, params)
    _widened(bias, C, is_f32, 0.0, params + C)
    if training:
        if is_f32:
            status = run_forward_train(<const float*>x, outer, C, inner, params, params + C,
                                       eps, <float*>y, mean, var, invstd, per_channel,
                                       n_chunks, n_threads, stream, row_block)
        else:
            status = run_forward_train(<const double*>x, outer, C, inner, params,
                                       params + C, eps, <double*>y, mean, var, invstd,
                                       per_channel, n_chunks, n_threads, stream, row_block)
    else:
        _widened(running_mean, C, is_f32, 0.0, mean)
        _widened(running_var, C, is_f32, 0.0, invstd)
        for c in range(C):
            invstd[c] = 1.0 / sqrt(invstd[c] + eps)
        if is_f32:
            status = run_forward_eval(<const float*>x, outer, C, inner, mean, invstd, params,
                                      params + C, <float*>y, n_chunks, n_threads, stream)
        else:
            status = run_forward_eval(<const double*>x, outer, C, inner, mean, invstd,
                                      params, params + C, <double*>y, n_chunks, n_threads,
                                      stream)
    if status == 0:
        _narrowed(mean, C, is_f32, mean_out)
        _narrowed(invstd, C, is_f32, invstd_out)
    free(params)
    return status


cdef int backward_addr(size_t dy, size_t x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                       bint is_f32, size_t mean, size_t invstd, bint stats_f32, size_t weight,
                       bint training, size_t dx, size_t dweight_out, size_t dbias_out,
                       bint per_channel, Py_ssize_t n_chunks, int n_threads, bint stream,
                       int row_block) noexcept nogil:
    """The body of ``backward_at``, also called from C++ (as ``forward_addr``)."""
    cdef int status
    cdef double* work = <double*>calloc(5 * C, sizeof(double))
    if work == NULL:
        return -1
    _widened(mean, C, stats_f32, 0.0, work)
    _widened(invstd, C, stats_f32, 0.0, work + C)
    _widened(weight, C, is_f32, 1.0, work + 2 * C)
    if is_f32:
        status = run_backward(<const float*>dy, <const float*>x, outer, C, inner, work,
                              work + C, work + 2 * C, training, <float*>dx, work + 3 * C,
                              work + 4 * C, per_channel, n_chunks, n_threads, stream,
                              row_block)
    else:
        status = run_backward(<const double*>dy, <const double*>x, outer, C, inner, work,
                              work + C, work + 2 * C, training, <double*>dx, work + 3 * C,
                              work + 4 * C, per_channel, n_chunks, n_threads, stream,
                              row_block)
    if status == 0:
        _narrowed(work + 3 * C, C, is_f32, dweight_out)
        _narrowed(work + 4 * C, C, is_f32, dbias_out)
    free(work)
    return status


def forward_at(size_t x, size_t y, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
               bint is_f32, size_t weight, size_t bias, bint training, size_t running_mean,
               size_t running_var, double eps, size_t stats, size_t mean_out, size_t invstd_out,
               plan):
    """``forward_train`` (training) or ``forward_eval`` on addresses. IN x, weight, bias,
    running_mean, running_var: x's dtype (float32 if is_f32, else float64), a 0 weight/bias
    meaning ones/zeros, the running statistics read only in eval. OUT y; stats: float64 (3, C)
    mean, var, invstd (var unset in eval); mean_out, invstd_out: x's dtype (C,)."""
    cdef bint per_channel = plan.per_channel, stream = plan.stream
    cdef Py_ssize_t n_chunks = plan.n_chunks
    cdef int n_threads = plan.n_threads, row_block = plan.row_block, status
    with nogil:
        status = forward_addr(x, y, outer, C, inner, is_f32, weight, bias, training,
                              running_mean, running_var, eps, <double*>stats, mean_out,
                              invstd_out, per_channel, n_chunks, n_threads, stream, row_block)
    if status:
        raise MemoryError("batch norm: no memory for the partial sums")


def backward_at(size_t dy, size_t x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                bint is_f32, size_t mean, size_t invstd, bint stats_f32, size_t weight,
                bint training, size_t dx, size_t dweight_out, size_t dbias_out, plan):
    """``backward`` on addresses. IN dy, x, weight (0: ones): x's dtype; mean, invstd: float32
    if stats_f32, else float64. OUT dx; dweight_out, dbias_out: x's dtype (C,)."""
    cdef bint per_channel = plan.per_channel, stream = plan.stream
    cdef Py_ssize_t n_chunks = plan.n_chunks
    cdef int n_threads = plan.n_threads, row_block = plan.row_block, status
    with nogil:
        status = backward_addr(dy, x, outer, C, inner, is_f32, mean, invstd, stats_f32, weight,
                               training, dx, dweight_out, dbias_out, per_channel, n_chunks,
                               n_threads, stream, row_block)
    if status:
        raise MemoryError("batch norm: no memory for the partial sums")


# ---------------------------------------------------------------- SIMD level, formulas

_LEVELS = {"avx512": 4, "avx2": 3, "baseline": 0}


def simd_level():
    """The SIMD variant the kernels run: ``"avx512"``, ``"avx2"`` or ``"baseline"``."""
    return fo_level_name(fo_bn_level()).decode()


def set_simd_level(name):
    """Run the ``name`` variant from now on (lowered to what the CPU supports); returns the
    variant set. For tests and benchmarks; the default is the CPU's best, or ``FASTOPT_SIMD``."""
    if name not in _LEVELS:
        raise ValueError(f"name: expected one of {sorted(_LEVELS)}, got {name!r}")
    return fo_level_name(fo_bn_set_level(_LEVELS[name])).decode()


def formulas():
    """The C scalar formulas as Python callables (for tests/test_batchnorm_formulas.py)."""
    return {
        "channel_shift": _channel_shift,
        "finish_stats": _finish_stats,
        "grad_coefficients": _grad_coefficients,
        "normalize": _normalize,
        "grad_input": _grad_input,
    }


def _channel_shift(double first):
    return fo_channel_shift(first)


def _finish_stats(double s1, double s2, double shift, double n, double eps):
    cdef double mean, var, invstd
    fo_finish_stats(s1, s2, shift, n, eps, &mean, &var, &invstd)
    return mean, var, invstd


def _grad_coefficients(double s, double d, double invstd, double weight, double n,
                       bint training):
    cdef double a, b, c
    fo_grad_coefficients(s, d, invstd, weight, n, training, &a, &b, &c)
    return a, b, c


def _normalize(double x, double mean, double scale, double bias):
    return fo_normalize(x, mean, scale, bias)


def _grad_input(double g, double x, double mean, double a, double b, double c):
    return fo_grad_input(g, x, mean, a, b, c)
