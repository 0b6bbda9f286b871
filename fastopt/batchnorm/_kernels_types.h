/* Instantiates _kernels_impl.h for float and for double at the SIMD level FO_LEVEL that the
 * including file (_kernels.h) has defined; included once per level. No include guard: that is
 * the point. */
#define FO_T float
#define FO_SFX f32
#define FO_IS_F32 1
#include "_kernels_impl.h"
#undef FO_T
#undef FO_SFX
#undef FO_IS_F32
#define FO_T double
#define FO_SFX f64
#define FO_IS_F32 0
#include "_kernels_impl.h"
#undef FO_T
#undef FO_SFX
#undef FO_IS_F32
