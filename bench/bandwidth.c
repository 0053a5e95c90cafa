/* Read bandwidth per cache level: each of THREADS threads sums its own buffer of BYTES
 * with 8 independent AVX-512 accumulators (so the loop is bound by loads, not by adds);
 * the best of REPS passes. BYTES picks the level: 512 KiB L2, 4 MiB L3, 256 MiB DRAM on
 * this machine. The figures in docs/performance.md ("Issue 22: the staged depthwise
 * plan") come from it.
 *
 *     gcc -O3 -march=native -fopenmp -o /tmp/bandwidth bench/bandwidth.c
 *     /tmp/bandwidth BYTES THREADS REPS
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s BYTES THREADS REPS\n", argv[0]);
        return 2;
    }
    const long bytes = atol(argv[1]) / 512 * 512;  /* whole 8 x 64-byte steps */
    const int threads = atoi(argv[2]);
    const long reps = atol(argv[3]);
    if (bytes <= 0 || threads < 1 || threads > 64 || reps < 1) {
        fprintf(stderr, "BYTES >= 512, THREADS in [1, 64] and REPS >= 1\n");
        return 2;
    }
    float *buffers[64];
    for (int t = 0; t < threads; ++t) {
        buffers[t] = aligned_alloc(64, bytes);
        if (!buffers[t])
            return 1;
        for (long i = 0; i < bytes / 4; ++i)
            buffers[t][i] = 1.0f;
    }
    double best = 1e30;
    float sink = 0;
    for (long r = 0; r < reps; ++r) {
        const double start = now();
        #pragma omp parallel num_threads(threads) reduction(+:sink)
        {
            const float *b = buffers[omp_get_thread_num()];
            __m512 a[8];
            for (int k = 0; k < 8; ++k)
                a[k] = _mm512_setzero_ps();
            for (long i = 0; i < bytes / 4; i += 128)
                for (int k = 0; k < 8; ++k)
                    a[k] = _mm512_add_ps(a[k], _mm512_load_ps(b + i + 16 * k));
            for (int k = 1; k < 8; ++k)
                a[0] = _mm512_add_ps(a[0], a[k]);
            sink += _mm512_reduce_add_ps(a[0]);
        }
        const double seconds = now() - start;
        best = seconds < best ? seconds : best;
    }
    /* the sum is printed so that the compiler keeps the loads */
    printf("%ld bytes x %d thread(s): %.1f GB/s (sum %g)\n", bytes, threads,
           (double)bytes * threads / best / 1e9, sink);
    return 0;
}
