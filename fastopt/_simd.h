/* Run-time dispatch of fastopt's hot C loops to the CPU that runs them.
 *
 * The extensions are compiled for a portable baseline (x86-64); a function marked FO_CLONES is
 * compiled three more times, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline,
 * and the loader picks one clone per process from the CPU's features (GCC/Clang ifunc).
 * fo_simd_level() repeats the loader's choice so `python -m fastopt info` can report it.
 * Inside a clone, the usual predefined macros (__AVX512F__, __AVX2__) are NOT set per clone:
 * use FO_TARGET_IS_* helpers via __builtin_cpu_supports at run time, or write the loop so the
 * compiler vectorizes it for each target.
 */
#ifndef FASTOPT_SIMD_H
#define FASTOPT_SIMD_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__) \
    && !defined(FO_NO_CLONES)
#define FO_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FO_HAVE_CLONES 1
#else
#define FO_CLONES
#define FO_HAVE_CLONES 0
#endif

/* 4: x86-64-v4 (AVX-512), 3: x86-64-v3 (AVX2), 0: baseline; the clone FO_CLONES selects. */
static inline int fo_simd_level(void)
{
#if FO_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
#endif
    return 0;
}

#endif
