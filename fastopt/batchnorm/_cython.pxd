# Run helpers of the Cython batch-norm kernels, for other Cython code to cimport.
# IN: const pointers; OUT/INOUT: plain pointers. All are nogil and never raise.
from cython cimport floating

cdef void run_sums(const floating* x, Py_ssize_t n, double shift,
                   double* s1, double* s2) noexcept nogil
cdef void run_normalize(const floating* x, floating* y, Py_ssize_t n,
                        double scale, double shift) noexcept nogil
cdef void run_grad_sums(const floating* dy, const floating* x, Py_ssize_t n, double mean,
                        double* s, double* d) noexcept nogil
cdef void run_grad_input(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                         double a, double b, double c) noexcept nogil
cdef void rows_sums(const floating* xp, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,
                    const double* shifts, double* s1, double* s2) noexcept nogil
cdef void rows_normalize(const floating* xp, floating* yp, Py_ssize_t lo, Py_ssize_t hi,
                         Py_ssize_t C, const double* scale, const double* shift) noexcept nogil
