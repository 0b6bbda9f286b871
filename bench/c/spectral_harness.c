/* C harness of the spectra family's hot loops (fastopt/spectral/_spectral_kernels.h): checks
 * each loop against a plain float64 loop and times it, without Python, so a change to a loop
 * can be tuned with perf/objdump on real source lines.
 *
 * Build and run (from the repository root):
 *     make -f bench/c/spectral.mk run            # N=1024 M=1024 REPS=200 by default
 *     make -f bench/c/spectral.mk run ARGS="4096 4096 20"
 * Portable build with run-time dispatch (FO_CLONES); the clone in use is printed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "spectral/_spectral_kernels.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static double rel_err(const double *want, const float *got, fo_idx k)
{
    double num = 0, den = 0;
    for (fo_idx i = 0; i < k; ++i) {
        double d = want[i] - (double)got[i];
        num += d * d;
        den += want[i] * want[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

int main(int argc, char **argv)
{
    fo_idx n = argc > 1 ? atol(argv[1]) : 1024, m = argc > 2 ? atol(argv[2]) : 1024;
    int reps = argc > 3 ? atoi(argv[3]) : 200;
    float *W = malloc(sizeof(float) * n * m), *x = malloc(sizeof(float) * m);
    float *t = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * m);
    double *work = malloc(sizeof(double) * 2 * m), *tr = calloc(n, sizeof(double));
    double *yr = calloc(m, sizeof(double));
    unsigned s = 12345;
    for (fo_idx i = 0; i < n * m; ++i) {
        s = s * 1103515245u + 12345u;
        W[i] = (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
    }
    for (fo_idx j = 0; j < m; ++j) x[j] = (float)(j % 7) - 3.0f;
    for (fo_idx i = 0; i < n; ++i) {
        for (fo_idx j = 0; j < m; ++j) tr[i] += (double)W[i * m + j] * x[j];
        tr[i] = (float)tr[i]; /* the kernel rounds t to the input type before the second use */
        for (fo_idx j = 0; j < m; ++j) yr[j] += tr[i] * (double)W[i * m + j];
    }
    fo_wtwv_rows_f(W, x, t, work, (float *)(work + m), 0, n, m);
    for (fo_idx j = 0; j < m; ++j) y[j] = (float)work[j];
    printf("simd level %d; n=%td m=%td\n", fo_simd_level(), n, m);
    printf("wtwv   rel err t %.2e y %.2e\n", rel_err(tr, t, n), rel_err(yr, y, m));
    double t0 = now();
    for (int r = 0; r < reps; ++r) fo_wtwv_rows_f(W, x, t, work, (float *)(work + m), 0, n, m);
    double dt = (now() - t0) / reps;
    printf("wtwv   %.3f ms  %.1f GB/s\n", 1e3 * dt, n * m * sizeof(float) / dt / 1e9);
    t0 = now();
    for (int r = 0; r < reps; ++r) fo_matvec_rows_f(W, x, t, 0, n, m);
    dt = (now() - t0) / reps;
    printf("matvec %.3f ms  %.1f GB/s\n", 1e3 * dt, n * m * sizeof(float) / dt / 1e9);
    volatile double sink = 0;
    t0 = now();
    for (int r = 0; r < reps; ++r) sink += fo_sum_f(W, 0, n * m);
    dt = (now() - t0) / reps;
    printf("floor  %.3f ms  %.1f GB/s (one read)\n", 1e3 * dt, n * m * sizeof(float) / dt / 1e9);
    /* Gram-Schmidt of a vector against 32 basis rows (the rows of W as a stand-in basis) */
    fo_idx k = n < 32 ? n : 32;
    double h[64];
    for (fo_idx j = 0; j < m; ++j) y[j] = x[j];
    t0 = now();
    for (int r = 0; r < reps; ++r) {
        for (fo_idx i = 0; i < 2 * k; ++i) h[i] = 0;
        sink += fo_orth_f(W, k, m, y, h);
    }
    dt = (now() - t0) / reps;
    printf("orth   %.3f ms (k=%td)\n", 1e3 * dt, k);
    free(W), free(x), free(t), free(y), free(work), free(tr), free(yr);
    return 0;
}
