/* Run-time dispatch of fastopt's hot C loops to the CPU that runs them.
 *
 * The extensions are compiled for a portable baseline (x86-64); a function marked FO_CLONES is
 * compiled three more times, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline,
 * and the loader picks one clone per process from the CPU's features (GCC/Clang ifunc).
 * fo_simd_level() repeats the loader's choice so `python -m fastopt info` can report it.
 * Inside a clone, the usual predefined macros (__AVX512F__, __AVX2__) are NOT set per clone:
 * use FO_TARGET_IS_* helpers via __builtin_cpu_supports at run time, or write the loop so the
 * compiler vectorizes it for each target.
 *
 * Families that need intrinsics (streaming stores) or a level chosen at run time compile their
 * loops once per level inside `#pragma GCC target` regions (where __AVX512F__ / __AVX2__ ARE
 * defined; FO_HAVE_VARIANTS says whether this compiler can) and pick a variant with
 * fo_dispatch_level(): the CPU's level, lowered (never raised) by the environment variable
 * FASTOPT_SIMD=avx512|avx2|baseline, read on first use, so every variant can be tested on one
 * machine. Build with -DFO_FORCE_LEVEL=0|3|4 to compile a single level (FO_CLONES included).
 * A build for one explicit CPU (setup.py's FASTOPT_MARCH=native) defines FO_NO_CLONES: no clones,
 * no variants, and the levels report what the flags target (FO_BUILD_LEVEL).
 */
#ifndef FASTOPT_SIMD_H
#define FASTOPT_SIMD_H

#include <stdlib.h>
#include <string.h>

#define FO_LEVEL_BASELINE 0
#define FO_LEVEL_AVX2 3
#define FO_LEVEL_AVX512 4

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define FO_X86_GNU 1
#else
#define FO_X86_GNU 0
#endif

#if defined(FO_FORCE_LEVEL)
#define FO_HAVE_CLONES 0
#if FO_FORCE_LEVEL == 4
#define FO_CLONES __attribute__((target("arch=x86-64-v4")))
#elif FO_FORCE_LEVEL == 3
#define FO_CLONES __attribute__((target("arch=x86-64-v3")))
#else
#define FO_CLONES
#endif
#elif FO_X86_GNU && !defined(FO_NO_CLONES)
#define FO_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FO_HAVE_CLONES 1
#else
#define FO_CLONES
#define FO_HAVE_CLONES 0
#endif

/* `#pragma GCC target` regions per level: GCC only (Clang has no such pragma). */
#if FO_X86_GNU && defined(__GNUC__) && !defined(__clang__) && !defined(FO_NO_CLONES)
#define FO_HAVE_VARIANTS 1
#else
#define FO_HAVE_VARIANTS 0
#endif

/* The level the compiler flags of this translation unit target (-march=...). */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FO_BUILD_LEVEL FO_LEVEL_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define FO_BUILD_LEVEL FO_LEVEL_AVX2
#else
#define FO_BUILD_LEVEL FO_LEVEL_BASELINE
#endif

/* The level this CPU supports: 4 x86-64-v4 (AVX-512), 3 x86-64-v3 (AVX2), 0 baseline. */
static inline int fo_cpu_level(void)
{
#if FO_X86_GNU
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return FO_LEVEL_AVX512;
    if (__builtin_cpu_supports("x86-64-v3")) return FO_LEVEL_AVX2;
#endif
    return FO_LEVEL_BASELINE;
}

/* 4: x86-64-v4 (AVX-512), 3: x86-64-v3 (AVX2), 0: baseline; the clone FO_CLONES selects. */
static inline int fo_simd_level(void)
{
#if defined(FO_FORCE_LEVEL)
    return FO_FORCE_LEVEL;
#elif FO_HAVE_CLONES
    return fo_cpu_level();
#else
    return FO_BUILD_LEVEL;
#endif
}

/* Level named by FASTOPT_SIMD (avx512, avx2, baseline), or -1 when unset or unknown. */
static inline int fo_env_level(void)
{
    const char *s = getenv("FASTOPT_SIMD");
    if (s == NULL || *s == '\0') return -1;
    if (strcmp(s, "avx512") == 0 || strcmp(s, "x86-64-v4") == 0) return FO_LEVEL_AVX512;
    if (strcmp(s, "avx2") == 0 || strcmp(s, "x86-64-v3") == 0) return FO_LEVEL_AVX2;
    if (strcmp(s, "baseline") == 0 || strcmp(s, "none") == 0) return FO_LEVEL_BASELINE;
    return -1;
}

/* Level for explicitly dispatched variants: the CPU's (or the forced one), lowered by
   FASTOPT_SIMD, and FO_BUILD_LEVEL where this build has no variants. */
static inline int fo_dispatch_level(void)
{
#if defined(FO_FORCE_LEVEL)
    return FO_FORCE_LEVEL;
#elif FO_HAVE_VARIANTS
    int level = fo_cpu_level(), env = fo_env_level();
    return env >= 0 && env < level ? env : level;
#else
    return FO_BUILD_LEVEL;
#endif
}

static inline const char *fo_level_name(int level)
{
    return level == FO_LEVEL_AVX512 ? "avx512" : level == FO_LEVEL_AVX2 ? "avx2" : "baseline";
}

#endif
