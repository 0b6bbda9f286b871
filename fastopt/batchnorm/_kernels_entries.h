/* Dispatching entry points for one dtype (FO_T, FO_SFX defined); included by _kernels.h. The
 * arguments are those of the same-named loops in _kernels_impl.h. */

#define FO_E2_(a, b) a##_##b
#define FO_E2(a, b) FO_E2_(a, b)
#define EP(name) FO_E2(fo_##name, FO_SFX)
#define PICK(name, args) FO_BN_PICK(name, FO_SFX, args)
#define T FO_T

static void EP(chunk_sums)(const T *x, fo_ssize lo, fo_ssize hi, fo_ssize C, fo_ssize inner,
                           const double *shift, double *s1, double *s2, int row_block)
{
    PICK(chunk_sums, (x, lo, hi, C, inner, shift, s1, s2, row_block));
}

static void EP(chunk_grad_sums)(const T *g, const T *x, fo_ssize lo, fo_ssize hi, fo_ssize C,
                                fo_ssize inner, const double *mean, double *s, double *d,
                                int row_block)
{
    PICK(chunk_grad_sums, (g, x, lo, hi, C, inner, mean, s, d, row_block));
}

static void EP(chunk_normalize)(const T *x, T *y, fo_ssize lo, fo_ssize hi, fo_ssize C,
                                fo_ssize inner, const double *mean, const double *scale,
                                const double *bias, int stream)
{
    PICK(chunk_normalize, (x, y, lo, hi, C, inner, mean, scale, bias, stream));
}

static void EP(chunk_grad_input)(const T *g, const T *x, T *dx, fo_ssize lo, fo_ssize hi,
                                 fo_ssize C, fo_ssize inner, const double *mean, const double *a,
                                 const double *b, const double *c, int stream)
{
    PICK(chunk_grad_input, (g, x, dx, lo, hi, C, inner, mean, a, b, c, stream));
}

static void EP(channel_forward)(const T *x, T *y, fo_ssize outer, fo_ssize inner,
                                fo_ssize stride, double weight, double bias, double eps,
                                double *mean, double *var, double *invstd, int stream)
{
    PICK(channel_forward, (x, y, outer, inner, stride, weight, bias, eps, mean, var, invstd,
                           stream));
}

static void EP(channel_backward)(const T *g, const T *x, T *dx, fo_ssize outer, fo_ssize inner,
                                 fo_ssize stride, double mean, double invstd, double weight,
                                 int training, double *dweight, double *dbias, int stream)
{
    PICK(channel_backward, (g, x, dx, outer, inner, stride, mean, invstd, weight, training,
                            dweight, dbias, stream));
}

#undef EP
#undef PICK
#undef T
