/* Hot loops of the spectra family for one element type, FO_T with suffix FO_SUFFIX.
 *
 * Included twice by _spectral_kernels.h (float: _f, double: _d); do not include directly.
 * The FO_CLONES functions are compiled once per SIMD level (see fastopt/_simd.h) and the
 * FO_INLINE helpers are inlined into each clone, so they are vectorized for its target.
 */

/* Dot product a . x: products summed in FO_T in FO_LANES lanes over at most FO_BLOCK
   columns, lanes added into float64 lanes, those summed by a pairwise tree. */
FO_INLINE double FO_FN(fo_dot)(const FO_T *a, const FO_T *x, fo_idx m) {
    double pd[FO_LANES] = {0};
    double s = 0.0;
    fo_idx j = 0;
    while (j + FO_LANES <= m) {
        fo_idx je = (j + FO_BLOCK < m) ? j + FO_BLOCK : m;
        FO_T p[FO_LANES] = {0};
        for (; j + FO_LANES <= je; j += FO_LANES) {
#pragma omp simd
            for (int k = 0; k < FO_LANES; ++k) p[k] += a[j + k] * x[j + k];
        }
#pragma omp simd
        for (int k = 0; k < FO_LANES; ++k) pd[k] += (double)p[k];
    }
    for (; j < m; ++j) s += (double)a[j] * (double)x[j];
    for (int w = FO_LANES / 2; w > 0; w >>= 1)
        for (int k = 0; k < w; ++k) pd[k] += pd[k + w];
    return s + pd[0];
}

/* Four dot products a_r . x sharing the loads of x (same lane scheme as fo_dot). */
FO_INLINE void FO_FN(fo_dot4)(const FO_T *a0, const FO_T *a1, const FO_T *a2, const FO_T *a3,
                        const FO_T *x, fo_idx m, double *o0, double *o1, double *o2,
                        double *o3) {
    double d0[16] = {0}, d1[16] = {0}, d2[16] = {0}, d3[16] = {0};
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    fo_idx j = 0;
    while (j + 16 <= m) {
        fo_idx je = (j + FO_BLOCK < m) ? j + FO_BLOCK : m;
        FO_T p0[16] = {0}, p1[16] = {0}, p2[16] = {0}, p3[16] = {0};
        for (; j + 16 <= je; j += 16) {
            /* the next 4 rows (contiguous after a3) are read next: prefetch them */
            const char *nx = (const char *)(a3 + m + 4 * j);
            for (int q = 0; q < (int)(4 * 16 * sizeof(FO_T)); q += 64)
                FO_PREFETCH_L2(nx + q);
#pragma omp simd
            for (int k = 0; k < 16; ++k) {
            FO_T xj = x[j + k];
            p0[k] += a0[j + k] * xj; p1[k] += a1[j + k] * xj;
            p2[k] += a2[j + k] * xj; p3[k] += a3[j + k] * xj;
            }
        }
#pragma omp simd
        for (int k = 0; k < 16; ++k) {
            d0[k] += (double)p0[k]; d1[k] += (double)p1[k];
            d2[k] += (double)p2[k]; d3[k] += (double)p3[k];
        }
    }
    for (; j < m; ++j) {
        double xj = (double)x[j];
        s0 += (double)a0[j] * xj; s1 += (double)a1[j] * xj;
        s2 += (double)a2[j] * xj; s3 += (double)a3[j] * xj;
    }
    for (int w = 8; w > 0; w >>= 1) {  /* pairwise tree: vectorized, short chains */
        for (int k = 0; k < w; ++k) {
            d0[k] += d0[k + w]; d1[k] += d1[k + w];
            d2[k] += d2[k + w]; d3[k] += d3[k + w];
        }
    }
    s0 += d0[0]; s1 += d1[0]; s2 += d2[0]; s3 += d3[0];
    *o0 = s0; *o1 = s1; *o2 = s2; *o3 = s3;
}

/* acc_t (m values of FO_T) gathers the rows' products in FO_T; it is flushed into the float64
   acc every FO_FLUSH rows, so the float64 sums are touched once per FO_FLUSH rows. */
FO_INLINE void FO_FN(fo_flush_if_full)(double *acc, FO_T *acc_t, fo_idx m, int *pending) {
    if (*pending >= FO_FLUSH) {
#pragma omp simd
        for (fo_idx jj = 0; jj < m; ++jj) {
            acc[jj] += (double)acc_t[jj];
            acc_t[jj] = 0;
        }
        *pending = 0;
    }
}

/* One row-wise pass over rows [r0, r1) of a row-major (n, m) matrix W:
   t[i] = W[i, :] . x   and   acc += t[i] * W[i, :]   (acc: float64, zeroed here).
   Rows go 8 (or 4) at a time: their products are first added in FO_T, then into acc_t; the
   rows are still in L1 for the second use. */
FO_CLONES static void FO_FN(fo_wtwv_rows)(const FO_T *W, const FO_T *x, FO_T *t, double *acc, FO_T *acc_t,
                 fo_idx r0, fo_idx r1, fo_idx m) {
    memset(acc, 0, (size_t)m * sizeof(double));
    memset(acc_t, 0, (size_t)m * sizeof(FO_T));
    fo_idx i = r0;
    int pending = 0;
    /* 8 rows at a time (acc_t touched once per 8 rows) while they fit half of L1 */
    const fo_idx r8 = (8 * m * (fo_idx)sizeof(FO_T) <= 16384) ? r1 : r0;
    for (; i + 8 <= r8; i += 8) {
        const FO_T *a0 = W + i * m, *a1 = a0 + m, *a2 = a1 + m, *a3 = a2 + m;
        const FO_T *a4 = a3 + m, *a5 = a4 + m, *a6 = a5 + m, *a7 = a6 + m;
        double s0, s1, s2, s3, s4, s5, s6, s7;
        FO_FN(fo_dot4)(a0, a1, a2, a3, x, m, &s0, &s1, &s2, &s3);
        FO_FN(fo_dot4)(a4, a5, a6, a7, x, m, &s4, &s5, &s6, &s7);
        t[i] = (FO_T)s0; t[i + 1] = (FO_T)s1; t[i + 2] = (FO_T)s2; t[i + 3] = (FO_T)s3;
        t[i + 4] = (FO_T)s4; t[i + 5] = (FO_T)s5; t[i + 6] = (FO_T)s6; t[i + 7] = (FO_T)s7;
        const FO_T c0 = (FO_T)s0, c1 = (FO_T)s1, c2 = (FO_T)s2, c3 = (FO_T)s3;
        const FO_T c4 = (FO_T)s4, c5 = (FO_T)s5, c6 = (FO_T)s6, c7 = (FO_T)s7;
#pragma omp simd
        for (fo_idx jj = 0; jj < m; ++jj)
            acc_t[jj] += (c0 * a0[jj] + c1 * a1[jj] + c2 * a2[jj] + c3 * a3[jj])
                       + (c4 * a4[jj] + c5 * a5[jj] + c6 * a6[jj] + c7 * a7[jj]);
        pending += 8;
        FO_FN(fo_flush_if_full)(acc, acc_t, m, &pending);
    }
    for (; i + 4 <= r1; i += 4) {
        const FO_T *a0 = W + i * m, *a1 = a0 + m, *a2 = a1 + m, *a3 = a2 + m;
        double s0, s1, s2, s3;
        FO_FN(fo_dot4)(a0, a1, a2, a3, x, m, &s0, &s1, &s2, &s3);
        t[i] = (FO_T)s0; t[i + 1] = (FO_T)s1; t[i + 2] = (FO_T)s2; t[i + 3] = (FO_T)s3;
        const FO_T c0 = (FO_T)s0, c1 = (FO_T)s1, c2 = (FO_T)s2, c3 = (FO_T)s3;
        /* long rows: keep memory busy while the rows are reused from cache by
           prefetching the block after next (fo_dot4 prefetched the next one) */
        const int ahead = (i + 12 <= r1) && (4 * m * (fo_idx)sizeof(FO_T) >= 32768);
        fo_idx jj = 0;
        for (; jj + 16 <= m; jj += 16) {
            if (ahead) {
                const char *nx = (const char *)(a0 + 8 * m + 4 * jj);
                for (int q = 0; q < (int)(4 * 16 * sizeof(FO_T)); q += 64)
                    FO_PREFETCH_L2(nx + q);
            }
#pragma omp simd
            for (int k = 0; k < 16; ++k)
                acc_t[jj + k] += c0 * a0[jj + k] + c1 * a1[jj + k] + c2 * a2[jj + k]
                               + c3 * a3[jj + k];
        }
        for (; jj < m; ++jj)
            acc_t[jj] += c0 * a0[jj] + c1 * a1[jj] + c2 * a2[jj] + c3 * a3[jj];
        pending += 4;
        FO_FN(fo_flush_if_full)(acc, acc_t, m, &pending);
    }
#pragma omp simd
    for (fo_idx jj = 0; jj < m; ++jj) acc[jj] += (double)acc_t[jj];
    for (; i < r1; ++i) {
        const FO_T *row = W + i * m;
        double s = FO_FN(fo_dot)(row, x, m);
        t[i] = (FO_T)s;
#pragma omp simd
        for (fo_idx j = 0; j < m; ++j) acc[j] += s * (double)row[j];
    }
}

/* Two passes of classical Gram-Schmidt of w against the k rows of V (row-major, (k, m)):
   h[0:k] += coefficients (float64), h[k:2k] scratch; returns ||w|| after (float64). */
FO_CLONES static double FO_FN(fo_orth)(const FO_T *V, fo_idx k, fo_idx m, FO_T *w, double *h) {
    for (int pass = 0; pass < 2; ++pass) {
        for (fo_idx r = 0; r < k; ++r) {
            double c = FO_FN(fo_dot)(V + r * m, w, m);
            h[r] += c;
            h[k + r] = c;  /* scratch: this pass's coefficients */
        }
        for (fo_idx r = 0; r < k; ++r) {
            const FO_T c = (FO_T)h[k + r];
            const FO_T *row = V + r * m;
#pragma omp simd
            for (fo_idx j = 0; j < m; ++j) w[j] -= c * row[j];
        }
    }
    return sqrt(FO_FN(fo_dot)(w, w, m));
}

/* y[i] = W[i, :] . x for rows [r0, r1), 4 rows per pass over x. */
FO_CLONES static void FO_FN(fo_matvec_rows)(const FO_T *W, const FO_T *x, FO_T *y, fo_idx r0, fo_idx r1,
                 fo_idx m) {
    fo_idx i = r0;
    for (; i + 4 <= r1; i += 4) {
        double s0, s1, s2, s3;
        const FO_T *a0 = W + i * m;
        FO_FN(fo_dot4)(a0, a0 + m, a0 + 2 * m, a0 + 3 * m, x, m, &s0, &s1, &s2, &s3);
        y[i] = (FO_T)s0; y[i + 1] = (FO_T)s1; y[i + 2] = (FO_T)s2; y[i + 3] = (FO_T)s3;
    }
    for (; i < r1; ++i) y[i] = (FO_T)FO_FN(fo_dot)(W + i * m, x, m);
}

/* Streaming read floor: sum of a[r0:r1], same lane scheme as fo_dot (one read each). */
FO_CLONES static double FO_FN(fo_sum)(const FO_T *a, fo_idx r0, fo_idx r1) {
    double pd[FO_LANES] = {0};
    double s = 0.0;
    fo_idx j = r0;
    while (j + FO_LANES <= r1) {
        fo_idx je = (j + FO_BLOCK < r1) ? j + FO_BLOCK : r1;
        FO_T p[FO_LANES] = {0};
        for (; j + FO_LANES <= je; j += FO_LANES) {
#pragma omp simd
            for (int k = 0; k < FO_LANES; ++k) p[k] += a[j + k];
        }
#pragma omp simd
        for (int k = 0; k < FO_LANES; ++k) pd[k] += (double)p[k];
    }
    for (; j < r1; ++j) s += (double)a[j];
    for (int k = 0; k < FO_LANES; ++k) s += pd[k];
    return s;
}
