# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernels of the curvature family: the element-wise fused passes of the R-operator.

The matrix products run through BLAS in ``fastopt.curvature.mlp``; these kernels do everything
between them, one pass over memory each, in the input's dtype (float32 or float64):

- ``hidden_forward``: bias, activation and its first/second derivatives on the forward stream, and
  the R-forward stream Rz = (Ra W) + a V + c, Ra' = act'(z) Rz, for k directions at once;
- ``output_forward``: bias, per-sample loss (accumulated in float64), the loss gradient and the
  loss Hessian applied to the k R-streams (softmax cross-entropy, mse, logistic);
- ``hidden_backward``: delta = da * act'(z) and the R-backward
  R(delta) = (R(da) + delta_next V^T) * act'(z) + da * act''(z) * Rz (Gauss-Newton drops the
  second-order terms);
- ``colsum``: column sums in float64 (bias gradients), deterministic for any thread count;
- ``batched_transpose``: the tiled transpose(-and-add) that lays k directions out for the
  products and the products out as ``(P, k)`` (``mlp.py``, k > 1).

Layouts: streams are stored interleaved, ``(N, 1 + k, n)``: slot 0 is the forward value, slot
``1 + j`` the R-stream of direction ``j``. Reshaped to ``(N * (1 + k), n)`` this is one matrix, so
the next product runs as one large GEMM. Every kernel releases the GIL and runs ``prange`` with
``n_threads`` threads; no kernel validates its input (``mlp.py`` does).
"""

from cython.parallel cimport prange
from libc.math cimport exp, expf, fabs, fabsf, log, log1p, log1pf, tanh, tanhf

cdef extern from *:
    """
    /* dst[c * ldd + r] = a[r * lda + c] (+ b[r * ldb + c]) for r < R, c < C: a transpose
       (and add), in 32 x 32 tiles so that the strided side touches 32 cache lines at a time
       (numpy's copyto read a 128 x 1024 transpose down columns 4 KiB apart: L1 set
       conflicts, ~2.8 ns per value). */
    #define FO_TILE 32
    #define FO_TRANSPOSE(NAME, T)                                                           \
    static void NAME(T *restrict dst, Py_ssize_t ldd, const T *restrict a, Py_ssize_t lda,  \
                     const T *restrict b, Py_ssize_t ldb, Py_ssize_t R, Py_ssize_t C) {     \
        for (Py_ssize_t r0 = 0; r0 < R; r0 += FO_TILE) {                                    \
            Py_ssize_t r1 = r0 + FO_TILE < R ? r0 + FO_TILE : R;                            \
            for (Py_ssize_t c0 = 0; c0 < C; c0 += FO_TILE) {                                \
                Py_ssize_t c1 = c0 + FO_TILE < C ? c0 + FO_TILE : C;                        \
                if (b) {                                                                    \
                    for (Py_ssize_t r = r0; r < r1; ++r)                                    \
                        for (Py_ssize_t c = c0; c < c1; ++c)                                \
                            dst[c * ldd + r] = a[r * lda + c] + b[r * ldb + c];             \
                } else {                                                                    \
                    for (Py_ssize_t r = r0; r < r1; ++r)                                    \
                        for (Py_ssize_t c = c0; c < c1; ++c)                                \
                            dst[c * ldd + r] = a[r * lda + c];                              \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }
    FO_TRANSPOSE(fo_transpose_f, float)
    FO_TRANSPOSE(fo_transpose_d, double)
    """
    void fo_transpose_f(float* dst, Py_ssize_t ldd, const float* a, Py_ssize_t lda,
                        const float* b, Py_ssize_t ldb, Py_ssize_t R, Py_ssize_t C) noexcept nogil
    void fo_transpose_d(double* dst, Py_ssize_t ldd, const double* a, Py_ssize_t lda,
                        const double* b, Py_ssize_t ldb, Py_ssize_t R,
                        Py_ssize_t C) noexcept nogil


ctypedef fused real:
    float
    double

cdef double SQRT_2_OVER_PI = 0.7978845608028654
cdef double GELU_A = 0.044715

# activation codes (mlp.ACTIVATIONS order)
cdef enum:
    IDENTITY = 0
    TANH = 1
    SIGMOID = 2
    RELU = 3
    SOFTPLUS = 4
    GELU = 5


cdef inline float _tanh_fast(float x) noexcept nogil:
    """tanh in float32 without a libm call, so that loops over it vectorize: a 13/6 rational
    approximation on [-7.905, 7.905] (outside, tanh rounds to +-1 in float32); max relative
    error 3.5e-7 (about 3 ulp), checked against float64 tanh on a fine grid."""
    cdef float x2, p, q, c = <float>7.90531110763549805
    x = c if x > c else x
    x = -c if x < -c else x
    x2 = x * x
    p = x2 * <float>-2.76076847742355e-16 + <float>2.00018790482477e-13
    p = p * x2 + <float>-8.60467152213735e-11
    p = p * x2 + <float>5.12229709037114e-08
    p = p * x2 + <float>1.48572235717979e-05
    p = p * x2 + <float>6.37261928875436e-04
    p = p * x2 + <float>4.89352455891786e-03
    p = p * x
    q = x2 * <float>1.19825839466702e-06 + <float>1.18534705686654e-04
    q = q * x2 + <float>2.26843463243900e-03
    q = q * x2 + <float>4.89352518554385e-03
    return p / q


cdef inline real _tanh(real z) noexcept nogil:
    if real is float:
        return _tanh_fast(z)
    else:
        return tanh(z)


cdef inline real _sigmoid(real z) noexcept nogil:
    cdef real e
    if real is float:
        if z >= 0:
            return 1.0 / (1.0 + expf(-z))
        e = expf(z)
        return e / (1.0 + e)
    else:
        if z >= 0:
            return 1.0 / (1.0 + exp(-z))
        e = exp(z)
        return e / (1.0 + e)


cdef inline real _softplus(real z) noexcept nogil:
    cdef real m = z if z > 0 else 0
    if real is float:
        return m + log1pf(expf(-fabsf(z)))
    else:
        return m + log1p(exp(-fabs(z)))


cdef inline void _act(int code, real z, real* s, real* d1, real* d2) noexcept nogil:
    """Activation value and its first and second derivatives at z."""
    cdef real t, u1, sg, z2
    if code == TANH:
        t = _tanh(z)
        s[0] = t
        d1[0] = 1 - t * t
        d2[0] = -2 * t * d1[0]
    elif code == SIGMOID:
        sg = _sigmoid(z)
        s[0] = sg
        d1[0] = sg * (1 - sg)
        d2[0] = d1[0] * (1 - 2 * sg)
    elif code == RELU:
        if z > 0:
            s[0] = z
            d1[0] = 1
        else:
            s[0] = 0
            d1[0] = 0
        d2[0] = 0
    elif code == SOFTPLUS:
        sg = _sigmoid(z)
        s[0] = _softplus(z)
        d1[0] = sg
        d2[0] = sg * (1 - sg)
    elif code == GELU:
        z2 = z * z
        t = _tanh(<real>SQRT_2_OVER_PI * (z + <real>GELU_A * z2 * z))
        u1 = <real>SQRT_2_OVER_PI * (1 + 3 * <real>GELU_A * z2)
        s[0] = <real>0.5 * z * (1 + t)
        d1[0] = <real>0.5 * (1 + t) + <real>0.5 * z * (1 - t * t) * u1
        d2[0] = (1 - t * t) * (u1 - z * t * u1 * u1
                               + <real>0.5 * z * <real>(6 * SQRT_2_OVER_PI * GELU_A) * z)
    else:  # identity
        s[0] = z
        d1[0] = 1
        d2[0] = 0


cdef inline void _tanh_row(const real* z, const real* b, real* a, real* d1, real* d2,
                           Py_ssize_t n, int need) noexcept nogil:
    cdef Py_ssize_t o
    cdef real t
    # few pointers per loop: gcc gives up vectorizing when too many runtime alias checks
    # would be needed (a loop writing a, d1 and d2 ran 9x slower)
    if need >= 1:
        for o in range(n):
            t = _tanh(z[o] + b[o])
            a[o] = t
            d1[o] = 1 - t * t
        if need == 2:
            for o in range(n):
                d2[o] = -2 * a[o] * d1[o]
    else:
        for o in range(n):
            a[o] = _tanh(z[o] + b[o])


cdef inline void _act_row(int act, const real* z, const real* b, real* a, real* d1, real* d2,
                          Py_ssize_t n, int need) noexcept nogil:
    cdef Py_ssize_t o
    cdef real s, g1, g2
    for o in range(n):
        _act(act, z[o] + b[o], &s, &g1, &g2)
        a[o] = s
        if need >= 1:
            d1[o] = g1
        if need == 2:
            d2[o] = g2


cdef inline void _rforward_row(const real* av, const real* c, const real* zr, const real* d1,
                               real* rz, real* ra, Py_ssize_t n, bint has_zr) noexcept nogil:
    cdef Py_ssize_t o
    cdef real r
    if has_zr:
        for o in range(n):
            r = av[o] + c[o] + zr[o]
            rz[o] = r
            ra[o] = d1[o] * r
    else:
        for o in range(n):
            r = av[o] + c[o]
            rz[o] = r
            ra[o] = d1[o] * r


def hidden_forward(real[:, :, ::1] Z, real[::1] b, real[:, :, ::1] AV, real[:, ::1] C,
                   int act, int need, real[:, :, ::1] A, real[:, ::1] D1, real[:, ::1] D2,
                   real[:, :, ::1] RZ, int n_threads):
    """Fused bias + activation (+ derivatives, + R-forward) of one hidden layer.

    Z : (N, kz, n) = A_prev @ W, kz = 1 + k when the previous layer carries R-streams, else 1.
    AV : (N, k, n) = a_prev @ [V_1 .. V_k]; C : (k, n) bias directions.
    need : 0 forward only; 1 also act' in D1; 2 also act'' in D2 and the R-streams.
    Writes A (N, 1 + k, n), D1, D2 (N, n), RZ (N, k, n).
    Inner loops run over the contiguous feature axis of one row through raw pointers, without
    branches, so that they vectorize (tanh in float32: the rational ``_tanh_fast``).
    """
    cdef Py_ssize_t N = Z.shape[0], kz = Z.shape[1], n = Z.shape[2]
    cdef Py_ssize_t k = AV.shape[1] if need == 2 else 0
    cdef Py_ssize_t i, j
    cdef real* d1p
    cdef real* d2p
    with nogil:
        for i in prange(N, num_threads=n_threads, schedule="static"):
            d1p = &D1[i, 0] if need >= 1 else NULL
            d2p = &D2[i, 0] if need == 2 else NULL
            if act == TANH:
                _tanh_row(&Z[i, 0, 0], &b[0], &A[i, 0, 0], d1p, d2p, n, need)
            else:
                _act_row(act, &Z[i, 0, 0], &b[0], &A[i, 0, 0], d1p, d2p, n, need)
            for j in range(k):
                _rforward_row(&AV[i, j, 0], &C[j, 0], &Z[i, 1 + j, 0] if kz > 1 else NULL,
                              d1p, &RZ[i, j, 0], &A[i, 1 + j, 0], n, kz > 1)


def output_forward(real[:, :, ::1] Z, real[::1] b, real[:, :, ::1] AV, real[:, ::1] C,
                   int loss, int need, long long[::1] labels, real[:, ::1] Y,
                   real[:, :, ::1] D, double[::1] losses, int n_threads):
    """Output layer: bias, per-sample loss, gradient and loss-Hessian on the R-streams.

    loss : 0 softmax cross-entropy (``labels``), 1 mse (``Y`` (N, n)), 2 logistic (``Y`` (N, 1)).
    need : 0 loss only; >= 1 also D[:, 0] = dloss/df / N; 2 also D[:, 1 + j] = H_loss Rf_j / N.
    """
    cdef Py_ssize_t N = Z.shape[0], kz = Z.shape[1], n = Z.shape[2]
    cdef Py_ssize_t k = AV.shape[1] if need == 2 else 0
    cdef Py_ssize_t i, o, j
    cdef double m, ssum, lse, pr, f, rf, sg, inv_n = 1.0 / N
    cdef real p
    with nogil:
        for i in prange(N, num_threads=n_threads, schedule="static"):
            if loss == 0:
                m = Z[i, 0, 0] + b[0]
                for o in range(1, n):
                    f = Z[i, 0, o] + b[o]
                    if f > m:
                        m = f
                ssum = 0
                for o in range(n):
                    pr = exp(Z[i, 0, o] + b[o] - m)
                    ssum = ssum + pr
                    if need >= 1:
                        D[i, 0, o] = <real>pr  # exp(f - max), normalized below
                lse = m + log(ssum)
                losses[i] = lse - (Z[i, 0, labels[i]] + b[labels[i]])
                if need >= 1:
                    for o in range(n):
                        D[i, 0, o] = <real>(D[i, 0, o] / ssum)  # p, for now
                    for j in range(k):
                        pr = 0
                        for o in range(n):
                            rf = AV[i, j, o] + C[j, o]
                            if kz > 1:
                                rf = rf + Z[i, 1 + j, o]
                            pr = pr + D[i, 0, o] * rf
                        for o in range(n):
                            rf = AV[i, j, o] + C[j, o]
                            if kz > 1:
                                rf = rf + Z[i, 1 + j, o]
                            D[i, 1 + j, o] = <real>(D[i, 0, o] * (rf - pr) * inv_n)
                    for o in range(n):
                        p = D[i, 0, o]
                        if o == labels[i]:
                            D[i, 0, o] = <real>((p - 1.0) * inv_n)
                        else:
                            D[i, 0, o] = <real>(p * inv_n)
            elif loss == 1:
                ssum = 0
                for o in range(n):
                    f = Z[i, 0, o] + b[o] - Y[i, o]
                    ssum = ssum + f * f
                    if need >= 1:
                        D[i, 0, o] = <real>(f * inv_n)
                    for j in range(k):
                        rf = AV[i, j, o] + C[j, o]
                        if kz > 1:
                            rf = rf + Z[i, 1 + j, o]
                        D[i, 1 + j, o] = <real>(rf * inv_n)
                losses[i] = 0.5 * ssum
            else:
                f = Z[i, 0, 0] + b[0]
                losses[i] = _softplus(f) - Y[i, 0] * f  # float64, as the other losses
                sg = _sigmoid(f)
                if need >= 1:
                    D[i, 0, 0] = <real>((sg - Y[i, 0]) * inv_n)
                for j in range(k):
                    rf = AV[i, j, 0] + C[j, 0]
                    if kz > 1:
                        rf = rf + Z[i, 1 + j, 0]
                    D[i, 1 + j, 0] = <real>(sg * (1 - sg) * rf * inv_n)


cdef inline void _backward_row(const real* da0, const real* dar, const real* dv,
                               const real* d1, const real* d2, const real* rz, real* out,
                               Py_ssize_t n, bint gn) noexcept nogil:
    cdef Py_ssize_t o
    if gn:
        for o in range(n):
            out[o] = dar[o] * d1[o]
    else:
        for o in range(n):
            out[o] = (dar[o] + dv[o]) * d1[o] + da0[o] * d2[o] * rz[o]


def hidden_backward(real[:, :, ::1] DA, real[:, :, ::1] DV, real[:, ::1] D1, real[:, ::1] D2,
                    real[:, :, ::1] RZ, int gn, real[:, :, ::1] D, double[::1] S, int first,
                    int n_threads):
    """delta and R(delta) of one hidden layer from DA = D_next @ W^T (N, 1 + k, n).

    DV : (N, k, n) = delta_next @ [V_1^T .. V_k^T] (unused when gn); D1, D2 : act', act'';
    RZ : (N, k, n) the R-forward pre-activations. gn != 0: Gauss-Newton (no second-order terms).
    S : empty, or ``((1 + k - first) * n,)``: also the column sums of ``D[:, first:]`` (the bias
    products of the layer below), bit for bit what ``colsum`` gives (float64, row order).
    On one thread they accumulate in the same pass, while each row is still in L1 (a separate
    ``colsum`` pass re-reads D from L2/L3); on more, in a ``colsum`` pass after it.
    """
    cdef Py_ssize_t N = DA.shape[0], kk = DA.shape[1], n = DA.shape[2]
    cdef Py_ssize_t M = (kk - first) * n
    cdef bint sums = S.shape[0] != 0
    cdef Py_ssize_t i, o
    cdef const real* row
    cdef double* acc
    if sums and (first < 0 or first > kk):
        raise ValueError(f"hidden_backward: first must lie in [0, {kk}], got {first}")
    if sums and S.shape[0] != M:
        raise ValueError(f"hidden_backward: S must have {M} entries, got {S.shape[0]}")
    with nogil:
        if sums and n_threads <= 1:
            acc = &S[0]
            for o in range(M):
                acc[o] = 0
            for i in range(N):
                _backward_one(DA, DV, D1, D2, RZ, gn, D, i)
                row = &D[i, first, 0]
                for o in range(M):
                    acc[o] = acc[o] + row[o]
        else:
            for i in prange(N, num_threads=n_threads, schedule="static"):
                _backward_one(DA, DV, D1, D2, RZ, gn, D, i)
            if sums:
                _colsum(&D[0, first, 0], kk * n, N, M, &S[0], n_threads)


cdef inline void _backward_one(real[:, :, ::1] DA, real[:, :, ::1] DV, real[:, ::1] D1,
                               real[:, ::1] D2, real[:, :, ::1] RZ, int gn,
                               real[:, :, ::1] D, Py_ssize_t i) noexcept nogil:
    """Row i of ``hidden_backward``."""
    cdef Py_ssize_t kk = DA.shape[1], n = DA.shape[2], o, j
    cdef const real* da0 = &DA[i, 0, 0]
    cdef const real* d1 = &D1[i, 0]
    cdef real* out = &D[i, 0, 0]
    for o in range(n):
        out[o] = da0[o] * d1[o]
    for j in range(kk - 1):
        _backward_row(da0, &DA[i, 1 + j, 0], NULL if gn else &DV[i, j, 0], d1,
                      NULL if gn else &D2[i, 0], NULL if gn else &RZ[i, j, 0],
                      &D[i, 1 + j, 0], n, gn)


def colsum(real[:, :] D, double[::1] out, int n_threads):
    """out[m] = sum_i D[i, m], accumulated in float64 in row order (deterministic).

    D may have any row stride (a slice of the interleaved streams) but contiguous rows.
    """
    cdef Py_ssize_t N = D.shape[0], M = D.shape[1]
    if M > 1 and D.strides[1] != sizeof(real):
        raise ValueError("colsum: rows of D must be contiguous")
    if N == 0 or M == 0:
        out[:] = 0
        return
    with nogil:
        _colsum(&D[0, 0], D.strides[0] // <Py_ssize_t>sizeof(real), N, M, &out[0], n_threads)


cdef void _colsum(const real* D, Py_ssize_t ld, Py_ssize_t N, Py_ssize_t M, double* out,
                  int n_threads) noexcept nogil:
    """Column sums of the N x M matrix at D (row stride ld) in blocks of 256 columns."""
    cdef Py_ssize_t blk, nb, i, m, m0, w, B = 256
    cdef const real* row
    cdef double* acc
    nb = (M + B - 1) // B
    for m in range(M):
        out[m] = 0
    for blk in prange(nb, num_threads=n_threads, schedule="static"):
        m0 = blk * B
        w = M - m0 if M - m0 < B else B
        acc = &out[m0]
        for i in range(N):
            row = &D[i * ld + m0]
            for m in range(w):
                acc[m] = acc[m] + row[m]


def batched_transpose(real[:, :, :] a, real[:, :, :] b, real[:, :, :] dst, int n_threads):
    """dst[i] = a[i].T (+ b[i].T when b is not empty): the layout changes of k directions.

    a, b : (B, R, C), dst : (B, C, R), each with contiguous rows and any other strides (mlp.py
    passes permuted views of V and of the products). Tiled (see ``fo_transpose``); serial,
    ``n_threads`` is accepted for a uniform kernel signature.
    """
    cdef Py_ssize_t B = a.shape[0], R = a.shape[1], C = a.shape[2], i
    cdef bint has_b = b.shape[0] != 0
    if (C > 1 and (a.strides[2] != sizeof(real) or has_b and b.strides[2] != sizeof(real))
            or R > 1 and dst.strides[2] != sizeof(real)):
        raise ValueError("batched_transpose: rows of a, b and dst must be contiguous")
    cdef Py_ssize_t lda = a.strides[1] // sizeof(real), ldd = dst.strides[1] // sizeof(real)
    cdef Py_ssize_t ldb = b.strides[1] // sizeof(real) if has_b else 0
    if R <= 1:  # a row stride may be anything (even 0) when there is one row
        lda = C
    if C <= 1:
        ldd = R
    if has_b and R <= 1:
        ldb = C
    if R == 0 or C == 0:
        return
    with nogil:
        for i in range(B):
            if real is float:
                fo_transpose_f(&dst[i, 0, 0], ldd, &a[i, 0, 0], lda,
                               &b[i, 0, 0] if has_b else NULL, ldb, R, C)
            else:
                fo_transpose_d(&dst[i, 0, 0], ldd, &a[i, 0, 0], lda,
                               &b[i, 0, 0] if has_b else NULL, ldb, R, C)
