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

from functools import partial

from cython.parallel cimport prange
from libc.math cimport exp

from fastopt.curvature._formulas cimport (
    ACT_GELU, ACT_IDENTITY, ACT_RELU, ACT_SIGMOID, ACT_SOFTPLUS, ACT_TANH, LOSS_CROSS_ENTROPY,
    LOSS_LOGISTIC, LOSS_MSE, MODE_GNVP, MODE_GRAD, MODE_HVP, MODE_LOSS, act_row, log_sum_exp,
    logistic, real,
)
from fastopt.curvature._rows cimport add_row, backward_row, rforward_row, tanh_row, transpose

from fastopt.curvature._hooks import formula_activation, formula_logistic

cdef extern from "_simd.h":
    int fo_simd_level() noexcept nogil


def simd_level() -> str:
    """The clone of the FO_CLONES loops this CPU runs, named as batch norm's: ``"avx512"``
    (``fo_simd_level()`` 4, x86-64-v4), ``"avx2"`` (3, x86-64-v3) or ``"baseline"`` (0, also a
    build without run-time dispatch)."""
    return {4: "avx512", 3: "avx2"}.get(fo_simd_level(), "baseline")


# activation/loss codes as fastopt._codes (tests/test_formulas.py checks them)
ACTIVATION_CODES = {"IDENTITY": ACT_IDENTITY, "TANH": ACT_TANH, "SIGMOID": ACT_SIGMOID,
                    "RELU": ACT_RELU, "SOFTPLUS": ACT_SOFTPLUS, "GELU": ACT_GELU}
LOSS_CODES = {"CROSS_ENTROPY": LOSS_CROSS_ENTROPY, "MSE": LOSS_MSE, "LOGISTIC": LOSS_LOGISTIC}
MODE_CODES = {"LOSS": MODE_LOSS, "GRAD": MODE_GRAD, "HVP": MODE_HVP, "GNVP": MODE_GNVP}


cdef inline void _act_row(int code, const real* z, const real* b, real* a, real* d1, real* d2,
                          Py_ssize_t n, int need) noexcept nogil:
    """a = act(z + b) and its derivatives: the pre-activation into a, then the shared row."""
    cdef Py_ssize_t o
    for o in range(n):
        a[o] = z[o] + b[o]
    act_row(code, a, d1, d2, n, need)


def hidden_forward(const real[:, :, ::1] Z, const real[::1] b, const real[:, :, ::1] AV,
                   const real[:, ::1] C,
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
            if act == ACT_TANH:
                tanh_row(&Z[i, 0, 0], &b[0], &A[i, 0, 0], d1p, d2p, n, need)
            else:
                _act_row(act, &Z[i, 0, 0], &b[0], &A[i, 0, 0], d1p, d2p, n, need)
            for j in range(k):
                rforward_row(&AV[i, j, 0], &C[j, 0], &Z[i, 1 + j, 0] if kz > 1 else NULL,
                             d1p, &RZ[i, j, 0], &A[i, 1 + j, 0], n)


def output_forward(const real[:, :, ::1] Z, const real[::1] b, const real[:, :, ::1] AV,
                   const real[:, ::1] C, int loss, int need, const long long[::1] labels,
                   const real[:, ::1] Y,
                   real[:, :, ::1] D, double[::1] losses, int n_threads):
    """Output layer: bias, per-sample loss, gradient and loss-Hessian on the R-streams.

    loss : 0 softmax cross-entropy (``labels``), 1 mse (``Y`` (N, n)), 2 logistic (``Y`` (N, 1)).
    need : 0 loss only; >= 1 also D[:, 0] = dloss/df / N; 2 also D[:, 1 + j] = H_loss Rf_j / N.
    """
    cdef Py_ssize_t N = Z.shape[0], kz = Z.shape[1], n = Z.shape[2]
    cdef Py_ssize_t k = AV.shape[1] if need == 2 else 0
    cdef Py_ssize_t i, o, j
    cdef double m, ssum, lse, pr, f, rf, dl, d2l, inv_n = 1.0 / N
    cdef real p
    with nogil:
        for i in prange(N, num_threads=n_threads, schedule="static"):
            if loss == LOSS_CROSS_ENTROPY:
                m = 0  # assigned here, so private to each thread
                ssum = 0
                lse = log_sum_exp(&Z[i, 0, 0], &b[0], n, &m, &ssum)
                losses[i] = lse - (<double>Z[i, 0, labels[i]] + b[labels[i]])
                if need >= 1:
                    for o in range(n):  # p, for now
                        D[i, 0, o] = <real>exp(<double>Z[i, 0, o] + b[o] - m)
                        D[i, 0, o] = <real>(D[i, 0, o] / ssum)
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
            elif loss == LOSS_MSE:
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
                dl = 0  # assigned here, so private to each thread
                d2l = 0
                logistic(f, Y[i, 0], &losses[i], &dl, &d2l)  # float64, as the other losses
                if need >= 1:
                    D[i, 0, 0] = <real>(dl * inv_n)
                for j in range(k):
                    rf = AV[i, j, 0] + C[j, 0]
                    if kz > 1:
                        rf = rf + Z[i, 1 + j, 0]
                    D[i, 1 + j, 0] = <real>(d2l * rf * inv_n)


def hidden_backward(const real[:, :, ::1] DA, const real[:, :, ::1] DV, const real[:, ::1] D1,
                    const real[:, ::1] D2, const real[:, :, ::1] RZ, int gn, real[:, :, ::1] D, double[::1] S, int first,
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
                add_row(acc, &D[i, first, 0], M)
        else:
            for i in prange(N, num_threads=n_threads, schedule="static"):
                _backward_one(DA, DV, D1, D2, RZ, gn, D, i)
            if sums:
                _colsum(&D[0, first, 0], kk * n, N, M, &S[0], n_threads)


cdef inline void _backward_one(const real[:, :, ::1] DA, const real[:, :, ::1] DV,
                               const real[:, ::1] D1, const real[:, ::1] D2,
                               const real[:, :, ::1] RZ, int gn,
                               real[:, :, ::1] D, Py_ssize_t i) noexcept nogil:
    """Row i of ``hidden_backward``."""
    cdef Py_ssize_t kk = DA.shape[1], n = DA.shape[2], j
    cdef const real* da0 = &DA[i, 0, 0]
    cdef const real* d1 = &D1[i, 0]
    cdef const real* d2 = NULL  # Gauss-Newton: no second-order terms
    cdef const real* dv = NULL
    cdef const real* rz = NULL
    backward_row(da0, da0, NULL, d1, NULL, NULL, &D[i, 0, 0], n, 1)  # delta = da * act'
    if not gn and kk > 1:
        d2 = &D2[i, 0]
    for j in range(kk - 1):
        if not gn:
            dv = &DV[i, j, 0]
            rz = &RZ[i, j, 0]
        backward_row(da0, &DA[i, 1 + j, 0], dv, d1, d2, rz, &D[i, 1 + j, 0], n, gn)


def colsum(const real[:, :] D, double[::1] out, int n_threads):
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
    nb = (M + B - 1) // B
    for m in range(M):
        out[m] = 0
    for blk in prange(nb, num_threads=n_threads, schedule="static"):
        m0 = blk * B
        w = M - m0 if M - m0 < B else B
        for i in range(N):
            add_row(&out[m0], &D[i * ld + m0], w)


def batched_transpose(const real[:, :, :] a, const real[:, :, :] b, real[:, :, :] dst,
                      int n_threads):
    """dst[i] = a[i].T (+ b[i].T when b is not empty): the layout changes of k directions.

    a, b : (B, R, C), dst : (B, C, R), each with contiguous rows and any other strides (mlp.py
    passes permuted views of V and of the products). Tiled (``_transpose.h``); serial,
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
            transpose(&dst[i, 0, 0], ldd, &a[i, 0, 0], lda, &b[i, 0, 0] if has_b else NULL, ldb,
                      R, C)


# test-only (tests/test_formulas.py): the formulas through this module's row loops
_formula_activation = partial(formula_activation, hidden_forward)
_formula_logistic = partial(formula_logistic, output_forward)
