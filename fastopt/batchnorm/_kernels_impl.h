/* Batch-norm loops for one dtype at one SIMD level; included by _kernels.h once per pair with
 * FO_T (float or double), FO_SFX (f32 or f64), FO_IS_F32 (1 or 0) and FO_LEVEL (4 AVX-512,
 * 3 AVX2, 0 baseline or the build's own -march) defined, inside a `#pragma GCC target` region of that level, so that the
 * plain loops are vectorized for the level and the streaming loops use its intrinsics.
 *
 * Arrays are viewed as (outer, C, inner). Rows (inner == 1, channels-last) are swept across
 * channels; runs (inner > 1) are contiguous stretches of one channel. Coefficient pointers are
 * per channel (cs = 1, row sweeps) or one scalar (cs = 0, a run).
 */

#define FO_CAT3_(a, b, c) fo_bn_##a##_##b##_l##c
#define FO_CAT3(a, b, c) FO_CAT3_(a, b, c)
#define FN(name) FO_CAT3(name, FO_SFX, FO_LEVEL)
#define T FO_T

/* ---------------------------------------------------------------- streaming store units */
/* by the ISA macros, which `#pragma GCC target` sets per level (and -march sets for a build
   without variants) */
#if FO_LEVEL != 0 || FO_BUILD_LEVEL != 0
#define FO_STREAMS 1
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define VN 8
#define VSET1 _mm512_set1_pd
#define VLOADD _mm512_loadu_pd
#define VFMA _mm512_fmadd_pd
#if FO_IS_F32
#define VWIDEN(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
#define VSTREAM2(d, lo, hi)                                                                     \
    _mm512_stream_ps((d), _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)),     \
                                             _mm512_cvtpd_ps(hi), 1))
#else
#define VWIDEN(p) _mm512_loadu_pd(p)
#define VSTREAM1(d, v) _mm512_stream_pd((d), (v))
#endif
#else /* AVX2: 32-byte stores, two per 64-byte line */
#define VN 4
#define VSET1 _mm256_set1_pd
#define VLOADD _mm256_loadu_pd
#define VFMA _mm256_fmadd_pd
#if FO_IS_F32
#define VWIDEN(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define VSTREAM2(d, lo, hi) _mm256_stream_ps((d), _mm256_set_m128(_mm256_cvtpd_ps(hi),       \
                                                                  _mm256_cvtpd_ps(lo)))
#else
#define VWIDEN(p) _mm256_loadu_pd(p)
#define VSTREAM1(d, v) _mm256_stream_pd((d), (v))
#endif
#endif
/* one store: 2 * VN float32 results or VN float64 results from index i */
#if FO_IS_F32
#define UNIT (2 * VN)
#define STORE_UNIT(d, i, E) VSTREAM2((d) + (i), E(i), E((i) + VN))
#else
#define UNIT VN
#define STORE_UNIT(d, i, E) VSTREAM1((d) + (i), E(i))
#endif
#define COEF(p, i) (cs ? VLOADD((p) + (i)) : VSET1(*(p)))
#define E_NORM(i) FO_NORMALIZE(VFMA, VWIDEN(x + (i)), COEF(mean, i), COEF(scale, i), COEF(bias, i))
#define E_GRAD(i) FO_GRAD_INPUT(VFMA, VWIDEN(g + (i)), VWIDEN(x + (i)), COEF(mean, i),          \
                                COEF(a, i), COEF(b, i), COEF(c, i))
#define E_NORM_F(i) FO_NORMALIZE_FOLDED(VFMA, VWIDEN(x + (i)), VLOADD(scale + (i)),               \
                                        VLOADD(bias + (i)))
#define E_GRAD_F(i) FO_GRAD_INPUT_FOLDED(VFMA, VWIDEN(g + (i)), VWIDEN(x + (i)), VLOADD(a + (i)), \
                                         VLOADD(b + (i)), VLOADD(c + (i)))
#else
#define FO_STREAMS 0
#endif

/* scalar element formulas at index i; coefficients per channel (cs = 1) or one scalar */
#define NORM1(i) ((T)fo_normalize((double)x[i], mean[(i) * cs], scale[(i) * cs], bias[(i) * cs]))
#define GRAD1(i) ((T)fo_grad_input((double)g[i], (double)x[i], mean[(i) * cs], a[(i) * cs],     \
                                   b[(i) * cs], c[(i) * cs]))
/* the folded forms (mean == NULL: per-channel coefficients, the mean already folded in) */
#define NORM1_F(i) ((T)FO_NORMALIZE_FOLDED(fma, (double)x[i], scale[i], bias[i]))
#define GRAD1_F(i) ((T)FO_GRAD_INPUT_FOLDED(fma, (double)g[i], (double)x[i], a[i], b[i], c[i]))

/* ---------------------------------------------------------------- sums */

/* s1 += sum(x - shift), s2 += sum((x - shift)^2) over a contiguous run (float64) */
static inline void FN(run_sums)(const T *x, fo_ssize n, double shift, double *s1, double *s2)
{
    double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
    for (fo_ssize i = 0; i < n; ++i) {
        double v = (double)x[i] - shift;
        a += v;
        b += v * v;
    }
    *s1 += a;
    *s2 += b;
}

/* s += sum(dy), d += sum((x - mean) dy) over a contiguous run (float64) */
static inline void FN(run_grad_sums)(const T *g, const T *x, fo_ssize n, double mean, double *s,
                                     double *d)
{
    double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
    for (fo_ssize i = 0; i < n; ++i) {
        double gv = (double)g[i];
        a += gv;
        b += ((double)x[i] - mean) * gv;
    }
    *s += a;
    *d += b;
}

/* FO_ROW_BLOCK rows per sweep: the partial sums stay in registers */
static inline void FN(sums_block)(const T *r, fo_ssize C, fo_ssize lo, fo_ssize hi,
                                  const double *shift, double *s1, double *s2)
{
#pragma omp simd
    for (fo_ssize c = lo; c < hi; ++c) {
        double sh = shift[c], a = 0.0, b = 0.0;
        for (int j = 0; j < FO_ROW_BLOCK; ++j) {
            double v = (double)r[j * C + c] - sh;
            a += v;
            b += v * v;
        }
        s1[c] += a;
        s2[c] += b;
    }
}

static inline void FN(sums_row)(const T *r, fo_ssize lo, fo_ssize hi, const double *shift,
                                double *s1, double *s2)
{
#pragma omp simd
    for (fo_ssize c = lo; c < hi; ++c) {
        double v = (double)r[c] - shift[c];
        s1[c] += v;
        s2[c] += v * v;
    }
}

/* s1[c] += sum(x - shift[c]), s2[c] += sum((x - shift[c])^2) over rows [lo, hi) of (rows, C),
   in blocks of FO_ROW_BLOCK rows when block > 1, else one row at a time */
static void FN(rows_sums)(const T *x, fo_ssize lo, fo_ssize hi, fo_ssize C, const double *shift,
                          double *s1, double *s2, int block)
{
    fo_ssize o = lo;
    for (; block > 1 && o + FO_ROW_BLOCK <= hi; o += FO_ROW_BLOCK) {
        const T *r = x + o * C;
        fo_ssize p = fo_peel(r, sizeof(T), C);
        FN(sums_block)(r, C, 0, p, shift, s1, s2);
        FN(sums_block)(r, C, p, C, shift, s1, s2);
    }
    for (; o < hi; ++o) {
        const T *r = x + o * C;
        fo_ssize p = fo_peel(r, sizeof(T), C);
        FN(sums_row)(r, 0, p, shift, s1, s2);
        FN(sums_row)(r, p, C, shift, s1, s2);
    }
}

static inline void FN(grad_sums_block)(const T *gr, const T *xr, fo_ssize C, fo_ssize lo,
                                       fo_ssize hi, const double *mean, double *s, double *d)
{
#pragma omp simd
    for (fo_ssize c = lo; c < hi; ++c) {
        double m = mean[c], a = 0.0, b = 0.0;
        for (int j = 0; j < FO_ROW_BLOCK; ++j) {
            double gv = (double)gr[j * C + c];
            a += gv;
            b += ((double)xr[j * C + c] - m) * gv;
        }
        s[c] += a;
        d[c] += b;
    }
}

static inline void FN(grad_sums_row)(const T *gr, const T *xr, fo_ssize lo, fo_ssize hi,
                                     const double *mean, double *s, double *d)
{
#pragma omp simd
    for (fo_ssize c = lo; c < hi; ++c) {
        double gv = (double)gr[c];
        s[c] += gv;
        d[c] += ((double)xr[c] - mean[c]) * gv;
    }
}

/* s[c] += sum(dy), d[c] += sum((x - mean[c]) dy) over rows [lo, hi), blocked as rows_sums */
static void FN(rows_grad_sums)(const T *g, const T *x, fo_ssize lo, fo_ssize hi, fo_ssize C,
                               const double *mean, double *s, double *d, int block)
{
    fo_ssize o = lo;
    for (; block > 1 && o + FO_ROW_BLOCK <= hi; o += FO_ROW_BLOCK) {
        const T *gr = g + o * C, *xr = x + o * C;
        fo_ssize p = fo_peel(xr, sizeof(T), C);
        FN(grad_sums_block)(gr, xr, C, 0, p, mean, s, d);
        FN(grad_sums_block)(gr, xr, C, p, C, mean, s, d);
    }
    for (; o < hi; ++o) {
        const T *gr = g + o * C, *xr = x + o * C;
        fo_ssize p = fo_peel(xr, sizeof(T), C);
        FN(grad_sums_row)(gr, xr, 0, p, mean, s, d);
        FN(grad_sums_row)(gr, xr, p, C, mean, s, d);
    }
}

/* ---------------------------------------------------------------- element-wise passes */

/* y[0:n] = (x - mean) * scale + bias; plain stores, vectorized from x's first 64-byte line.
   mean == NULL (rows only): bias holds the folded shift bias - mean * scale. */
static inline void FN(normalize_plain)(const T *x, T *y, fo_ssize n, const double *mean,
                                       const double *scale, const double *bias, int cs)
{
    fo_ssize p = fo_peel(x, sizeof(T), n);
    if (mean == NULL) {
        for (fo_ssize i = 0; i < p; ++i) y[i] = NORM1_F(i);
#pragma omp simd
        for (fo_ssize i = p; i < n; ++i) y[i] = NORM1_F(i);
        return;
    }
    for (fo_ssize i = 0; i < p; ++i) y[i] = NORM1(i);
#pragma omp simd
    for (fo_ssize i = p; i < n; ++i) y[i] = NORM1(i);
}

static inline void FN(grad_input_plain)(const T *g, const T *x, T *dx, fo_ssize n,
                                        const double *mean, const double *a, const double *b,
                                        const double *c, int cs)
{
    fo_ssize p = fo_peel(x, sizeof(T), n);
    if (mean == NULL) {
        for (fo_ssize i = 0; i < p; ++i) dx[i] = GRAD1_F(i);
#pragma omp simd
        for (fo_ssize i = p; i < n; ++i) dx[i] = GRAD1_F(i);
        return;
    }
    for (fo_ssize i = 0; i < p; ++i) dx[i] = GRAD1(i);
#pragma omp simd
    for (fo_ssize i = p; i < n; ++i) dx[i] = GRAD1(i);
}

#if FO_STREAMS
/* The same through non-temporal stores from the output's first 64-byte boundary: whole lines
   are written in order, so no line is read for ownership. */
static inline void FN(normalize_stream)(const T *x, T *y, fo_ssize n, const double *mean,
                                        const double *scale, const double *bias, int cs)
{
    fo_ssize i = 0, p = fo_peel(y, sizeof(T), n);
    if (mean == NULL) {
        for (; i < p; ++i) y[i] = NORM1_F(i);
        for (; i + UNIT <= n; i += UNIT) STORE_UNIT(y, i, E_NORM_F);
        for (; i < n; ++i) y[i] = NORM1_F(i);
        return;
    }
    for (; i < p; ++i) y[i] = NORM1(i);
    for (; i + UNIT <= n; i += UNIT) STORE_UNIT(y, i, E_NORM);
    for (; i < n; ++i) y[i] = NORM1(i);
}

static inline void FN(grad_input_stream)(const T *g, const T *x, T *dx, fo_ssize n,
                                         const double *mean, const double *a, const double *b,
                                         const double *c, int cs)
{
    fo_ssize i = 0, p = fo_peel(dx, sizeof(T), n);
    if (mean == NULL) {
        for (; i < p; ++i) dx[i] = GRAD1_F(i);
        for (; i + UNIT <= n; i += UNIT) STORE_UNIT(dx, i, E_GRAD_F);
        for (; i < n; ++i) dx[i] = GRAD1_F(i);
        return;
    }
    for (; i < p; ++i) dx[i] = GRAD1(i);
    for (; i + UNIT <= n; i += UNIT) STORE_UNIT(dx, i, E_GRAD);
    for (; i < n; ++i) dx[i] = GRAD1(i);
}
#endif

static inline void FN(run_normalize)(const T *x, T *y, fo_ssize n, double mean, double scale,
                                     double bias, int stream)
{
#if FO_STREAMS
    if (stream) {
        FN(normalize_stream)(x, y, n, &mean, &scale, &bias, 0);
        return;
    }
#endif
    (void)stream;
    FN(normalize_plain)(x, y, n, &mean, &scale, &bias, 0);
}

static inline void FN(run_grad_input)(const T *g, const T *x, T *dx, fo_ssize n, double mean,
                                      double a, double b, double c, int stream)
{
#if FO_STREAMS
    if (stream) {
        FN(grad_input_stream)(g, x, dx, n, &mean, &a, &b, &c, 0);
        return;
    }
#endif
    (void)stream;
    FN(grad_input_plain)(g, x, dx, n, &mean, &a, &b, &c, 0);
}

/* ---------------------------------------------------------------- entry points (table) */

/* Per-channel shifted sums over rows [lo, hi) of (outer, C, inner) (INOUT: s1[C], s2[C]). */
static void FN(chunk_sums)(const T *x, fo_ssize lo, fo_ssize hi, fo_ssize C, fo_ssize inner,
                           const double *shift, double *s1, double *s2, int row_block)
{
    if (inner == 1) {
        FN(rows_sums)(x, lo, hi, C, shift, s1, s2, row_block);
        return;
    }
    for (fo_ssize o = lo; o < hi; ++o)
        for (fo_ssize c = 0; c < C; ++c)
            FN(run_sums)(x + (o * C + c) * inner, inner, shift[c], &s1[c], &s2[c]);
}

/* Per-channel sum(dy), sum((x - mean) dy) over rows [lo, hi) (INOUT: s[C], d[C]). */
static void FN(chunk_grad_sums)(const T *g, const T *x, fo_ssize lo, fo_ssize hi, fo_ssize C,
                                fo_ssize inner, const double *mean, double *s, double *d,
                                int row_block)
{
    if (inner == 1) {
        FN(rows_grad_sums)(g, x, lo, hi, C, mean, s, d, row_block);
        return;
    }
    for (fo_ssize o = lo; o < hi; ++o)
        for (fo_ssize c = 0; c < C; ++c) {
            fo_ssize k = (o * C + c) * inner;
            FN(run_grad_sums)(g + k, x + k, inner, mean[c], &s[c], &d[c]);
        }
}

/* y = (x - mean[c]) * scale[c] + bias[c] over rows [lo, hi); y may be x. For rows
   (inner == 1) mean may be NULL: bias then holds the folded shift (FO_NORMALIZE_FOLDED). */
static void FN(chunk_normalize)(const T *x, T *y, fo_ssize lo, fo_ssize hi, fo_ssize C,
                                fo_ssize inner, const double *mean, const double *scale,
                                const double *bias, int stream)
{
    stream = stream && FO_STREAMS;
    for (fo_ssize o = lo; o < hi; ++o) {
        if (inner == 1) {
            fo_ssize k = o * C;
#if FO_STREAMS
            if (stream) FN(normalize_stream)(x + k, y + k, C, mean, scale, bias, 1);
            else
#endif
                FN(normalize_plain)(x + k, y + k, C, mean, scale, bias, 1);
            continue;
        }
        for (fo_ssize c = 0; c < C; ++c) {
            fo_ssize k = (o * C + c) * inner;
            FN(run_normalize)(x + k, y + k, inner, mean[c], scale[c], bias[c], stream);
        }
    }
    if (stream) fo_stream_fence();
}

/* dx = dy * a[c] + (x - mean[c]) * b[c] + c[c] over rows [lo, hi); dx may be dy or x. For rows
   mean may be NULL: c then holds c - mean * b (FO_GRAD_INPUT_FOLDED). */
static void FN(chunk_grad_input)(const T *g, const T *x, T *dx, fo_ssize lo, fo_ssize hi,
                                 fo_ssize C, fo_ssize inner, const double *mean, const double *a,
                                 const double *b, const double *c, int stream)
{
    stream = stream && FO_STREAMS;
    for (fo_ssize o = lo; o < hi; ++o) {
        if (inner == 1) {
            fo_ssize k = o * C;
#if FO_STREAMS
            if (stream) FN(grad_input_stream)(g + k, x + k, dx + k, C, mean, a, b, c, 1);
            else
#endif
                FN(grad_input_plain)(g + k, x + k, dx + k, C, mean, a, b, c, 1);
            continue;
        }
        for (fo_ssize ch = 0; ch < C; ++ch) {
            fo_ssize k = (o * C + ch) * inner;
            FN(run_grad_input)(g + k, x + k, dx + k, inner, mean[ch], a[ch], b[ch], c[ch],
                               stream);
        }
    }
    if (stream) fo_stream_fence();
}

/* Training forward of one channel's slab (outer runs of inner values, `stride` apart): the
   statistics, then the normalize pass while the slab is still in cache. */
static void FN(channel_forward)(const T *x, T *y, fo_ssize outer, fo_ssize inner,
                                fo_ssize stride, double weight, double bias, double eps,
                                double *mean, double *var, double *invstd, int stream)
{
    double shift = fo_channel_shift((double)x[0]), s1 = 0.0, s2 = 0.0;
    stream = stream && FO_STREAMS;
    for (fo_ssize o = 0; o < outer; ++o) FN(run_sums)(x + o * stride, inner, shift, &s1, &s2);
    fo_finish_stats(s1, s2, shift, (double)(outer * inner), eps, mean, var, invstd);
    double scale = *invstd * weight;
    for (fo_ssize o = 0; o < outer; ++o)
        FN(run_normalize)(x + o * stride, y + o * stride, inner, *mean, scale, bias, stream);
    if (stream) fo_stream_fence();
}

/* Backward of one channel's slab: the two sums, then the dx pass from cache. */
static void FN(channel_backward)(const T *g, const T *x, T *dx, fo_ssize outer, fo_ssize inner,
                                 fo_ssize stride, double mean, double invstd, double weight,
                                 int training, double *dweight, double *dbias, int stream)
{
    double s = 0.0, d = 0.0, a, b, c;
    stream = stream && FO_STREAMS;
    for (fo_ssize o = 0; o < outer; ++o)
        FN(run_grad_sums)(g + o * stride, x + o * stride, inner, mean, &s, &d);
    *dbias = s;
    *dweight = d * invstd;
    fo_grad_coefficients(s, d, invstd, weight, (double)(outer * inner), training, &a, &b, &c);
    for (fo_ssize o = 0; o < outer; ++o)
        FN(run_grad_input)(g + o * stride, x + o * stride, dx + o * stride, inner, mean, a, b, c,
                           stream);
    if (stream) fo_stream_fence();
}

#undef FN
#undef T
#undef FO_STREAMS
#undef VN
#undef VSET1
#undef VLOADD
#undef VFMA
#undef VWIDEN
#undef VSTREAM1
#undef VSTREAM2
#undef UNIT
#undef STORE_UNIT
#undef COEF
#undef E_NORM
#undef E_GRAD
#undef E_NORM_F
#undef E_GRAD_F
#undef NORM1
#undef GRAD1
#undef NORM1_F
#undef GRAD1_F
