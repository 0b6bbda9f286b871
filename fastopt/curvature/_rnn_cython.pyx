# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernels of the Elman RNN: the fused element-wise work of one time step.

The matrix products run through BLAS in ``fastopt.curvature.rnn``; these kernels do everything
between them, one pass over the step's rows, in the input's dtype (float32 or float64); losses
and the bias sums accumulate in float64. Same signatures and semantics as
``fastopt.reference.rnn`` (the docstrings there say what each array holds):

- ``forward_step``: pre-activation, activation and its first/second derivatives, and the
  R-forward ``Rz = Rh_prev W + h_prev W' + x U' + b'``, ``Rh = act'(z) Rz`` for k directions;
- ``output``: per-row loss, its gradient and the loss Hessian applied to the R-outputs;
- ``backward_step``: ``delta = g act'(z)`` and the R-backward
  ``R delta = Rg act'(z) + g act''(z) Rz`` (Gauss-Newton: ``Rg act'(z)``), with the column sums
  of the bias products accumulated while each row is in L1.

Modes: 0 loss, 1 gradient, 2 Hessian-vector product, 3 Gauss-Newton-vector product. The kernels
are serial and release the GIL: a step holds ``N (1 + k) n_hidden`` values, far too few for a
thread team to pay off next to the BLAS calls around it. No kernel validates its input
(``rnn.py`` does).
"""

from fastopt.curvature._formulas cimport (
    LOSS_CROSS_ENTROPY, MODE_GNVP, MODE_GRAD, MODE_HVP, MODE_LOSS, act_row, log_sum_exp, real,
)
from fastopt.curvature._rows cimport add_row
from libc.math cimport exp


def forward_step(const real[:, :, ::1] ZZ, const real[:, :, ::1] RZW, const real[:, :, ::1] XUU,
                 const real[::1] b, const real[:, ::1] Cb, int act, int mode, bint has_rec,
                 real[:, :] H, real[:, ::1] D1, real[:, ::1] D2, real[:, :, ::1] RZ,
                 real[:, :, ::1] RH):
    """One forward + R-forward step (see ``fastopt.reference.rnn.forward_step``).

    ZZ (N, 1 + k, n), RZW (N, k, n), XUU (N, 1 + k, n), b (n,), Cb (k, n); writes H (N, n) (rows
    may have any stride), D1, D2 (N, n), RZ (mode 2), RH (N, k, n).
    """
    cdef Py_ssize_t N = XUU.shape[0], n = XUU.shape[2]
    cdef Py_ssize_t k = XUU.shape[1] - 1 if mode >= MODE_HVP else 0
    cdef Py_ssize_t i, j, o
    cdef int need = 2 if mode == MODE_HVP else (1 if mode >= MODE_GRAD else 0)
    cdef real* h
    cdef real* d1
    cdef real* d2
    cdef real* r
    cdef real* rh
    cdef const real* x
    cdef const real* zz
    cdef const real* rw
    cdef const real* cb
    if n > 1 and H.strides[1] != sizeof(real):
        raise ValueError("forward_step: rows of H must be contiguous")
    with nogil:
        for i in range(N):
            h = &H[i, 0]
            x = &XUU[i, 0, 0]
            if has_rec:
                zz = &ZZ[i, 0, 0]
                for o in range(n):
                    h[o] = zz[o] + x[o] + b[o]
            else:
                for o in range(n):
                    h[o] = x[o] + b[o]
            d1 = &D1[i, 0] if need >= 1 else NULL
            d2 = &D2[i, 0] if need == 2 else NULL
            act_row(act, h, d1, d2, n, need)
            for j in range(k):
                rh = &RH[i, j, 0]
                r = &RZ[i, j, 0] if mode == MODE_HVP else rh
                x = &XUU[i, 1 + j, 0]
                cb = &Cb[j, 0]
                if has_rec:
                    zz = &ZZ[i, 1 + j, 0]
                    rw = &RZW[i, j, 0]
                    for o in range(n):
                        r[o] = zz[o] + rw[o] + x[o] + cb[o]
                else:
                    for o in range(n):
                        r[o] = x[o] + cb[o]
                for o in range(n):
                    rh[o] = d1[o] * r[o]


def output(const real[:, :, ::1] FF, const real[:, :, ::1] RFV, const real[::1] c,
           const real[:, ::1] Cc, int loss, int mode, const long long[::1] labels,
           const real[:, ::1] Y, real[:, ::1] E, real[:, :, ::1] RE, double[::1] losses,
           double[:, ::1] Sc, double scale):
    """Output rows (see ``fastopt.reference.rnn.output``): loss 0 softmax cross-entropy, 1 mse."""
    cdef Py_ssize_t M = FF.shape[0], no = FF.shape[2]
    cdef Py_ssize_t k = FF.shape[1] - 1 if mode >= MODE_HVP else 0
    cdef Py_ssize_t i, j, q, lab
    cdef double lse, mx, f, ssum, pr, rf, val
    with nogil:
        for j in range(Sc.shape[0]):
            for q in range(no):
                Sc[j, q] = 0
        for i in range(M):
            if loss == LOSS_CROSS_ENTROPY:
                lse = log_sum_exp(&FF[i, 0, 0], &c[0], no, &mx, &ssum)
                lab = labels[i]
                losses[i] = lse - (<double>FF[i, 0, lab] + c[lab])
                if mode == MODE_LOSS:
                    continue
                for q in range(no):  # p, for now
                    E[i, q] = <real>(exp(<double>FF[i, 0, q] + c[q] - mx) / ssum)
                for j in range(k):
                    pr = 0
                    for q in range(no):
                        pr = pr + E[i, q] * (<double>FF[i, 1 + j, q] + RFV[i, j, q] + Cc[j, q])
                    for q in range(no):
                        rf = <double>FF[i, 1 + j, q] + RFV[i, j, q] + Cc[j, q]
                        RE[i, j, q] = <real>(E[i, q] * (rf - pr) * scale)
                        Sc[1 + j, q] += RE[i, j, q]
                for q in range(no):
                    val = E[i, q]
                    if q == lab:
                        val = val - 1.0
                    E[i, q] = <real>(val * scale)
                    Sc[0, q] += E[i, q]
            else:
                ssum = 0
                for q in range(no):
                    f = <double>FF[i, 0, q] + c[q] - Y[i, q]
                    ssum = ssum + f * f
                    if mode >= MODE_GRAD:
                        E[i, q] = <real>(f * scale)
                        Sc[0, q] += E[i, q]
                losses[i] = 0.5 * ssum
                for j in range(k):
                    for q in range(no):
                        rf = <double>FF[i, 1 + j, q] + RFV[i, j, q] + Cc[j, q]
                        RE[i, j, q] = <real>(rf * scale)
                        Sc[1 + j, q] += RE[i, j, q]


cdef inline void _sum2(real* out, const real* a, const real* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t o
    for o in range(n):
        out[o] = a[o] + b[o]


cdef inline void _sum4(real* out, const real* a, const real* b, const real* c, const real* d,
                       Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t o
    for o in range(n):
        out[o] = a[o] + b[o] + c[o] + d[o]


def backward_step(const real[:, :, ::1] A, const real[:, :, ::1] B, const real[:, :, ::1] EA,
                  const real[:, :, ::1] EB, const real[:, ::1] D1, const real[:, ::1] D2,
                  const real[:, :, ::1] RZ, int mode, bint has_rec, bint has_out,
                  real[:, ::1] Dl, real[:, :, ::1] RDl, real[:, ::1] G, double[:, ::1] S):
    """One backward + R-backward step (see ``fastopt.reference.rnn.backward_step``).

    A (N, 1 + k, n), B (N, k, n): the recurrence; EA (N, 1 + k, n), EB (N, k, n): this step's
    output; D1, D2, RZ from the forward; writes Dl (N, n), RDl (N, k, n), G (N, n) when not
    empty, and adds the column sums to S (float64).
    """
    cdef Py_ssize_t N = D1.shape[0], n = D1.shape[1]
    cdef Py_ssize_t k = RDl.shape[1] if mode >= MODE_HVP else 0
    cdef Py_ssize_t i, j, o
    cdef bint store_g = G.shape[0] != 0
    cdef real* g
    cdef real* r
    cdef const real* d1
    cdef const real* d2
    cdef const real* rz
    with nogil:
        for i in range(N):
            d1 = &D1[i, 0]
            if mode == MODE_GNVP:
                for j in range(k):
                    r = &RDl[i, j, 0]
                    if has_rec and has_out:
                        _sum2(r, &B[i, j, 0], &EB[i, j, 0], n)
                    elif has_rec:
                        for o in range(n):
                            r[o] = B[i, j, o]
                    else:
                        for o in range(n):
                            r[o] = EB[i, j, o]
                    for o in range(n):
                        r[o] = r[o] * d1[o]
                    add_row(&S[j, 0], r, n)
                continue
            g = &Dl[i, 0]  # holds g until the end of the row, then delta = g act'
            if has_rec and has_out:
                _sum2(g, &A[i, 0, 0], &EA[i, 0, 0], n)
            elif has_rec:
                for o in range(n):
                    g[o] = A[i, 0, o]
            else:
                for o in range(n):
                    g[o] = EA[i, 0, o]
            if store_g:
                for o in range(n):
                    G[i, o] = g[o]
            if mode == MODE_HVP:
                d2 = &D2[i, 0]
                for j in range(k):
                    r = &RDl[i, j, 0]
                    rz = &RZ[i, j, 0]
                    if has_rec and has_out:
                        _sum4(r, &A[i, 1 + j, 0], &B[i, j, 0], &EA[i, 1 + j, 0], &EB[i, j, 0], n)
                    elif has_rec:
                        _sum2(r, &A[i, 1 + j, 0], &B[i, j, 0], n)
                    else:
                        _sum2(r, &EA[i, 1 + j, 0], &EB[i, j, 0], n)
                    for o in range(n):
                        r[o] = r[o] * d1[o] + g[o] * d2[o] * rz[o]
                    add_row(&S[j, 0], r, n)
            for o in range(n):
                g[o] = g[o] * d1[o]
            if mode == MODE_GRAD:
                add_row(&S[0, 0], g, n)
