/* Batch-norm scalar formulas for the compiled C/Cython side: the one C definition of each.
 *
 * Their twins: fastopt/batchnorm/_scalar.py (Numba and CUDA) and fastopt/reference/batchnorm.py
 * (numpy); tests/test_batchnorm_formulas.py evaluates all of them on one grid of inputs.
 *
 * Element-wise outputs subtract the mean before scaling, y = (x - mean) * scale + bias, so a
 * constant or huge-magnitude channel cancels exactly (x - mean == 0) instead of leaving the
 * rounding error of mean * scale, which x * scale + (bias - mean * scale) does.
 * FO_NORMALIZE and FO_GRAD_INPUT take the fused multiply-add to use (fma for scalars, an
 * intrinsic for vectors), so the vector loops evaluate the very same expression.
 */
#ifndef FASTOPT_BATCHNORM_SCALAR_H
#define FASTOPT_BATCHNORM_SCALAR_H

#include <math.h>

/* y = (x - mean) * scale + bias, with scale = invstd * weight */
#define FO_NORMALIZE(FMA, x, mean, scale, bias) FMA((x) - (mean), (scale), (bias))

/* dx = dy * a + (x - mean) * b + c, with (a, b, c) from fo_grad_coefficients */
#define FO_GRAD_INPUT(FMA, g, x, mean, a, b, c) FMA((g), (a), FMA((x) - (mean), (b), (c)))

/* The same with the mean folded into the constant, one coefficient array fewer for the row
   sweeps: y = x * scale + (bias - mean * scale), dx = dy * a + x * b + (c - mean * b). Rounding
   mean * scale costs about 2^-53 |mean| invstd relative to unit outputs, so the kernels take this
   form only for calls where every channel has |mean| invstd <= FO_CENTRE_LIMIT (2^-43: below
   float64 test tolerances, far below float32 rounding); a constant channel (invstd = 1/sqrt(eps))
   or one with a huge offset keeps the subtraction and cancels exactly. */
#define FO_NORMALIZE_FOLDED(FMA, x, scale, shift) FMA((x), (scale), (shift))
#define FO_GRAD_INPUT_FOLDED(FMA, g, x, a, b, c) FMA((g), (a), FMA((x), (b), (c)))
#define FO_CENTRE_LIMIT 1024.0

/* Whether a channel must keep the subtraction (NaN statistics do too). */
static inline int fo_needs_centring(double mean, double invstd)
{
    return !(fabs(mean) * invstd <= FO_CENTRE_LIMIT);
}

static inline double fo_normalize(double x, double mean, double scale, double bias)
{
    return FO_NORMALIZE(fma, x, mean, scale, bias);
}

static inline double fo_grad_input(double g, double x, double mean, double a, double b, double c)
{
    return FO_GRAD_INPUT(fma, g, x, mean, a, b, c);
}

/* Shift of a channel's float64 sums: its first value, unless that is NaN/Inf (a non-finite
   shift would poison the sums beyond what the data does; an Inf channel gets mean Inf, as in
   PyTorch). */
static inline double fo_channel_shift(double first)
{
    return isfinite(first) ? first : 0.0;
}

/* (mean, biased var, invstd) from shifted sums s1 = sum(x - shift), s2 = sum((x - shift)^2). */
static inline void fo_finish_stats(double s1, double s2, double shift, double n, double eps,
                                   double *mean, double *var, double *invstd)
{
    double m = s1 / n;
    double v = s2 / n - m * m;
    if (v < 0.0) v = 0.0; /* rounding; NaN stays NaN */
    *mean = shift + m;
    *var = v;
    *invstd = 1.0 / sqrt(v + eps);
}

/* (a, b, c) of FO_GRAD_INPUT from s = sum(dy), d = sum((x - mean) dy): PyTorch's
   dx = (dy - s/n - (x - mean) d invstd^2 / n) invstd weight. In eval mode the statistics are
   constants (b = c = 0). */
static inline void fo_grad_coefficients(double s, double d, double invstd, double weight,
                                        double n, int training, double *a, double *b,
                                        double *c)
{
    double scale = invstd * weight;
    *a = scale;
    *b = training ? -d * invstd * invstd * scale / n : 0.0;
    *c = training ? -s / n * scale : 0.0;
}

#endif
