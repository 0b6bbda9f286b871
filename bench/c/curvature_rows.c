/* Timing harness for the curvature row loops of fastopt/curvature/_rows.h (the hot C of the
 * element-wise passes between the HVP's matrix products), per SIMD clone the loader picks.
 *
 * Build and run (portable baseline + run-time clones, as setup.py's default build):
 *   gcc -O3 -fno-math-errno -fassociative-math -fno-signed-zeros -fno-trapping-math \
 *       -Ifastopt -Ifastopt/curvature bench/c/curvature_rows.c -lm -o /tmp/curvature_rows \
 *       && /tmp/curvature_rows [n_rows] [n_features] [repeats]
 * Prints ns per value for each loop and the SIMD level (fo_simd_level()).
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "_rows.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static float *filled(size_t n, unsigned seed)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; ++i) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 8) * (1.0 / 16777216.0) * 6.0 - 3.0);
    }
    return p;
}

int main(int argc, char **argv)
{
    ptrdiff_t N = argc > 1 ? atol(argv[1]) : 512, n = argc > 2 ? atol(argv[2]) : 128;
    int reps = argc > 3 ? atoi(argv[3]) : 200;
    size_t total = (size_t)N * n;
    float *z = filled(total, 1), *b = filled(n, 2), *av = filled(total, 3), *c = filled(n, 4);
    float *a = filled(total, 5), *d1 = filled(total, 6), *d2 = filled(total, 7);
    float *rz = filled(total, 8), *ra = filled(total, 9), *out = filled(total, 10);
    double *acc = calloc(n, sizeof *acc), t, sink = 0;

    printf("simd level %d, %td x %td float32, %d repeats\n", fo_simd_level(), N, n, reps);
    t = now();
    for (int r = 0; r < reps; ++r)
        for (ptrdiff_t i = 0; i < N; ++i)
            fo_tanh_row_f(z + i * n, b, a + i * n, d1 + i * n, d2 + i * n, n, 2);
    printf("tanh row (a, d1, d2)  %.3f ns/value\n", (now() - t) / reps / total * 1e9);
    t = now();
    for (int r = 0; r < reps; ++r)
        for (ptrdiff_t i = 0; i < N; ++i)
            fo_rforward_row_f(av + i * n, c, z + i * n, d1 + i * n, rz + i * n, ra + i * n, n);
    printf("R-forward row         %.3f ns/value\n", (now() - t) / reps / total * 1e9);
    t = now();
    for (int r = 0; r < reps; ++r)
        for (ptrdiff_t i = 0; i < N; ++i)
            fo_backward_row_f(a + i * n, av + i * n, rz + i * n, d1 + i * n, d2 + i * n,
                              ra + i * n, out + i * n, n, 0);
    printf("R-backward row        %.3f ns/value\n", (now() - t) / reps / total * 1e9);
    t = now();
    for (int r = 0; r < reps; ++r)
        for (ptrdiff_t i = 0; i < N; ++i)
            fo_add_row_f(acc, out + i * n, n);
    printf("float64 column sums   %.3f ns/value\n", (now() - t) / reps / total * 1e9);
    for (ptrdiff_t o = 0; o < n; ++o)
        sink += acc[o] + a[o] + ra[o];
    printf("(checksum %g)\n", sink);
    return 0;
}
