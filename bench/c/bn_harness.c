/* C harness of the batch-norm kernels (fastopt/batchnorm/_kernels.h), without Python: times the
 * training forward and the backward at every SIMD level this CPU runs, beside a bandwidth floor
 * (a read pass plus a read-write pass for the forward; two reads plus a read-read-write for the
 * backward), and checks that every level gives the results of the first (the baseline).
 *
 *   make -C bench/c run                     # the default shapes, 2 threads
 *   bench/c/bn_harness OUTER C INNER [THREADS] [REPS] [STREAM]
 *
 * float32; the chunked work split of fastopt/batchnorm/_plan.py (8 chunks per call). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_kernels.h"

typedef struct {
    fo_ssize outer, C, inner;
    int threads, stream, row_block;
    fo_ssize chunks;
} shape_t;

static fo_ssize lo_of(fo_ssize k, const shape_t *s) { return k * s->outer / s->chunks; }

static void forward(const shape_t *s, const float *x, float *y, double *part, double *shift,
                    double *mean, double *var, double *invstd, double *scale, const double *w,
                    const double *b)
{
    fo_ssize C = s->C;
    memset(part, 0, sizeof(double) * 2 * s->chunks * C);
    for (fo_ssize c = 0; c < C; ++c) shift[c] = fo_channel_shift(x[c * s->inner]);
#pragma omp parallel for schedule(static) num_threads(s->threads)
    for (fo_ssize k = 0; k < s->chunks; ++k)
        fo_chunk_sums_f32(x, lo_of(k, s), lo_of(k + 1, s), C, s->inner, shift, part + 2 * k * C,
                          part + (2 * k + 1) * C, s->row_block);
    for (fo_ssize c = 0; c < C; ++c) {
        double s1 = 0, s2 = 0;
        for (fo_ssize k = 0; k < s->chunks; ++k) {
            s1 += part[2 * k * C + c];
            s2 += part[(2 * k + 1) * C + c];
        }
        fo_finish_stats(s1, s2, shift[c], (double)(s->outer * s->inner), 1e-5, &mean[c], &var[c],
                        &invstd[c]);
        scale[c] = invstd[c] * w[c];
    }
    /* as fastopt/batchnorm/_cython.pyx: rows fold the mean into the constant (ordinary data) */
    const double *centre = mean, *offset = b;
    if (s->inner == 1) {
        for (fo_ssize c = 0; c < C; ++c) shift[c] = b[c] - mean[c] * scale[c];
        centre = NULL;
        offset = shift;
    }
#pragma omp parallel for schedule(static) num_threads(s->threads)
    for (fo_ssize k = 0; k < s->chunks; ++k)
        fo_chunk_normalize_f32(x, y, lo_of(k, s), lo_of(k + 1, s), C, s->inner, centre, scale,
                               offset, s->stream);
}

static void backward(const shape_t *s, const float *g, const float *x, float *dx, double *part,
                     const double *mean, const double *invstd, const double *w, double *ca,
                     double *cb, double *cc)
{
    fo_ssize C = s->C;
    memset(part, 0, sizeof(double) * 2 * s->chunks * C);
#pragma omp parallel for schedule(static) num_threads(s->threads)
    for (fo_ssize k = 0; k < s->chunks; ++k)
        fo_chunk_grad_sums_f32(g, x, lo_of(k, s), lo_of(k + 1, s), C, s->inner, mean,
                               part + 2 * k * C, part + (2 * k + 1) * C, s->row_block);
    for (fo_ssize c = 0; c < C; ++c) {
        double sg = 0, d = 0;
        for (fo_ssize k = 0; k < s->chunks; ++k) {
            sg += part[2 * k * C + c];
            d += part[(2 * k + 1) * C + c];
        }
        fo_grad_coefficients(sg, d, invstd[c], w[c], (double)(s->outer * s->inner), 1, &ca[c],
                             &cb[c], &cc[c]);
        if (s->inner == 1) cc[c] -= mean[c] * cb[c];
    }
#pragma omp parallel for schedule(static) num_threads(s->threads)
    for (fo_ssize k = 0; k < s->chunks; ++k)
        fo_chunk_grad_input_f32(g, x, dx, lo_of(k, s), lo_of(k + 1, s), C, s->inner,
                                s->inner == 1 ? NULL : mean, ca, cb, cc, s->stream);
}

static double floor_forward(const float *x, float *y, fo_ssize n, int threads)
{
    double sum = 0;
#pragma omp parallel for reduction(+ : sum) num_threads(threads)
    for (fo_ssize i = 0; i < n; ++i) sum += x[i];
#pragma omp parallel for num_threads(threads)
    for (fo_ssize i = 0; i < n; ++i) y[i] = 2 * x[i];
    return sum;
}

static double floor_backward(const float *x, const float *g, float *dx, fo_ssize n, int threads)
{
    double sum = 0;
#pragma omp parallel for reduction(+ : sum) num_threads(threads)
    for (fo_ssize i = 0; i < n; ++i) sum += x[i];
#pragma omp parallel for reduction(+ : sum) num_threads(threads)
    for (fo_ssize i = 0; i < n; ++i) sum += g[i];
#pragma omp parallel for num_threads(threads)
    for (fo_ssize i = 0; i < n; ++i) dx[i] = x[i] + g[i];
    return sum;
}

static double best_ms(double *t, int reps)
{
    double best = t[0];
    for (int i = 1; i < reps; ++i) best = t[i] < best ? t[i] : best;
    return best * 1e3;
}

int main(int argc, char **argv)
{
    shape_t s = {128, 256, 784, 2, 1, 1, 8};
    int reps = 10;
    if (argc >= 4) {
        s.outer = atol(argv[1]);
        s.C = atol(argv[2]);
        s.inner = atol(argv[3]);
    }
    if (argc >= 5) s.threads = atoi(argv[4]);
    if (argc >= 6) reps = atoi(argv[5]);
    if (argc >= 7) s.stream = atoi(argv[6]);
    fo_ssize n = s.outer * s.C * s.inner, C = s.C;
    s.chunks = s.outer < 2 * s.threads ? s.outer : (2 * s.threads > 8 ? 2 * s.threads : 8);
    if (s.chunks > s.outer) s.chunks = s.outer;
    float *x = aligned_alloc(64, n * 4 + 64), *g = aligned_alloc(64, n * 4 + 64);
    float *y = aligned_alloc(64, n * 4 + 64), *dx = aligned_alloc(64, n * 4 + 64);
    float *y0 = malloc(n * 4), *dx0 = malloc(n * 4);
    double *part = malloc(sizeof(double) * 2 * s.chunks * C), *v = malloc(sizeof(double) * 9 * C);
    double *shift = v, *mean = v + C, *var = v + 2 * C, *invstd = v + 3 * C, *scale = v + 4 * C;
    double *w = v + 5 * C, *ca = v + 6 * C, *cb = v + 7 * C, *cc = v + 8 * C;
    double *b = malloc(sizeof(double) * C), *t = calloc(reps > 0 ? reps : 1, sizeof(double));
    srand(1);
    for (fo_ssize i = 0; i < n; ++i) {
        x[i] = (float)rand() / RAND_MAX * 4 - 2;
        g[i] = (float)rand() / RAND_MAX - 0.5f;
    }
    for (fo_ssize c = 0; c < C; ++c) {
        w[c] = 1.0 + 0.01 * c;
        b[c] = 0.1 * c;
    }
    printf("shape (%td, %td, %td) float32, %d threads, stream %d, cpu level %s\n", s.outer, s.C,
           s.inner, s.threads, s.stream, fo_level_name(fo_cpu_level()));
    for (int r = 0; r < reps; ++r) {
        double t0 = omp_get_wtime();
        floor_forward(x, y, n, s.threads);
        t[r] = omp_get_wtime() - t0;
    }
    double ff = best_ms(t, reps);
    for (int r = 0; r < reps; ++r) {
        double t0 = omp_get_wtime();
        floor_backward(x, g, dx, n, s.threads);
        t[r] = omp_get_wtime() - t0;
    }
    double fb = best_ms(t, reps);
    printf("floor     forward %8.3f ms  backward %8.3f ms\n", ff, fb);
    int levels[3] = {0, 3, 4}, failures = 0, have_ref = 0;
    for (int li = 0; li < 3; ++li) {
        if (fo_bn_set_level(levels[li]) != levels[li]) continue;
        for (int r = 0; r < reps; ++r) {
            double t0 = omp_get_wtime();
            forward(&s, x, y, part, shift, mean, var, invstd, scale, w, b);
            t[r] = omp_get_wtime() - t0;
        }
        double tf = best_ms(t, reps);
        for (int r = 0; r < reps; ++r) {
            double t0 = omp_get_wtime();
            backward(&s, g, x, dx, part, mean, invstd, w, ca, cb, cc);
            t[r] = omp_get_wtime() - t0;
        }
        double tb = best_ms(t, reps);
        double worst = 0;
        if (!have_ref) { /* the first level that runs is the reference */
            memcpy(y0, y, n * 4);
            memcpy(dx0, dx, n * 4);
            have_ref = 1;
        } else {
            for (fo_ssize i = 0; i < n; ++i) {
                double e = fabs((double)y[i] - y0[i]) + fabs((double)dx[i] - dx0[i]);
                worst = e > worst ? e : worst;
            }
        }
        failures += worst > 1e-4;
        printf("%-9s forward %8.3f ms (%.2fx floor)  backward %8.3f ms (%.2fx floor)  "
               "max |diff| vs the first level %.2g\n",
               fo_level_name(levels[li]), tf, tf / ff, tb, tb / fb, worst);
    }
    return failures != 0;
}
