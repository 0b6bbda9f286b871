/* The one C formula of the curvature family that the row loops of _rows.h and the Cython
 * formulas (_formulas.pxd) share: tanh in float32 without a libm call, so that loops over it
 * vectorize. The Numba copy is _scalar.py's tanh_fast (same coefficients).
 *
 * A 13/6 rational approximation on [-7.905, 7.905] (outside, tanh rounds to +-1 in float32 to
 * 3 ulp); max relative error 3.5e-7 (about 3 ulp), checked against float64 tanh on a fine grid.
 */
#ifndef FASTOPT_CURVATURE_FORMULAS_H
#define FASTOPT_CURVATURE_FORMULAS_H

/* OUT = tanh(IN) for float IN, as a statement: the loops of _rows.h expand it in place, so
   each SIMD clone gets its own vectorized copy (a call into a function compiled for another
   target is not inlined). */
#define FO_TANH_FAST(OUT, IN)                                                                \
    do {                                                                                     \
        const float c_ = 7.90531110763549805f;                                               \
        float x_ = (IN), x2_, p_, q_;                                                        \
        x_ = x_ > c_ ? c_ : x_;                                                              \
        x_ = x_ < -c_ ? -c_ : x_;                                                            \
        x2_ = x_ * x_;                                                                       \
        p_ = x2_ * -2.76076847742355e-16f + 2.00018790482477e-13f;                           \
        p_ = p_ * x2_ + -8.60467152213735e-11f;                                              \
        p_ = p_ * x2_ + 5.12229709037114e-08f;                                               \
        p_ = p_ * x2_ + 1.48572235717979e-05f;                                               \
        p_ = p_ * x2_ + 6.37261928875436e-04f;                                               \
        p_ = p_ * x2_ + 4.89352455891786e-03f;                                               \
        p_ = p_ * x_;                                                                        \
        q_ = x2_ * 1.19825839466702e-06f + 1.18534705686654e-04f;                            \
        q_ = q_ * x2_ + 2.26843463243900e-03f;                                               \
        q_ = q_ * x2_ + 4.89352518554385e-03f;                                               \
        (OUT) = p_ / q_;                                                                     \
    } while (0)

static inline float fo_tanh_fast(float x)
{
    float t;
    FO_TANH_FAST(t, x);
    return t;
}

#endif
