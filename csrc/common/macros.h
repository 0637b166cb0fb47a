// Portability macros for arithmetic shared between host and device code.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DSCH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DSCH_HOST_DEVICE inline
#endif

// Loop unrolling hints understood by both nvcc and gcc: full, and by n.
#define DSCH_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__)
#define DSCH_UNROLL _Pragma("unroll")
#define DSCH_UNROLL_BY(n) DSCH_PRAGMA(unroll n)
#else
#define DSCH_UNROLL _Pragma("GCC unroll 16")
#define DSCH_UNROLL_BY(n) DSCH_PRAGMA(GCC unroll n)
#endif

// Vectorised sum reduction on the host (OpenMP SIMD; the kernels are built
// with -fopenmp); nothing on the device, where one thread owns the sum.
#if defined(__CUDA_ARCH__) || !defined(_OPENMP)
#define DSCH_SIMD_SUM(var)
#define DSCH_SIMD_SUM4(a, b, c, d)
#else
#define DSCH_SIMD_SUM_PRAGMA(x) _Pragma(#x)
#define DSCH_SIMD_SUM(var) DSCH_SIMD_SUM_PRAGMA(omp simd reduction(+ : var))
#define DSCH_SIMD_SUM4(a, b, c, d) DSCH_SIMD_SUM_PRAGMA(omp simd reduction(+ : a, b, c, d))
#endif

// Host hot loops compiled three times, for AVX-512 (x86-64-v4), AVX2+FMA
// (x86-64-v3) and the baseline,
// chosen at load time by the CPU (GCC function multi-versioning); flatten
// inlines the templates they call, or the clones would only call one
// baseline copy of them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && !defined(__CUDACC__)
#define DSCH_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define DSCH_CPU_CLONES
#endif

// For host loops with float compares in them (the clamps of fast_expf, fast_exp): under GCC's default
// -ftrapping-math a compare that may raise an FP exception is not if-converted, and the
// loop around it stays scalar. Without traps the results are the same, only the exception
// flags (which nothing here reads) may differ.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define DSCH_NO_TRAPPING_MATH __attribute__((optimize("no-trapping-math")))
#else
#define DSCH_NO_TRAPPING_MATH
#endif

namespace dsch_ext {

// a * b + c rounded once on every build: fma on the device, std::fma on the host (one
// instruction in the FMA clones, a libm call in the baseline one). For sums whose rounding
// the CPU and CUDA ops must share (the exact-tie rechecks) and for the kernels' own
// arithmetic, which the emulation must round as the GPU does.
template <typename T>
DSCH_HOST_DEVICE T fused_multiply_add(T a, T b, T c) {
#if defined(__CUDA_ARCH__)
  return fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// a * b + c as the GPU computes it, for math shared with the host's hot loops: one rounding
// on the device and in the emulated kernels (ptxas fuses the plain expression too, the
// baseline host compiler the emulation is built with does not); in the CPU ops the plain
// expression, which GCC contracts to the same one rounding in the FMA clones and the
// baseline clone rounds twice (a libm call per term there would stop the loop vectorising).
template <typename T>
DSCH_HOST_DEVICE T gpu_multiply_add(T a, T b, T c) {
#if defined(__CUDA_ARCH__) || defined(DSCH_EXT_EMULATION)
  return fused_multiply_add(a, b, c);
#else
  return a * b + c;
#endif
}

// The bits of a float and back, on both compilers.
DSCH_HOST_DEVICE uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  return __builtin_bit_cast(uint32_t, v);
#endif
}

DSCH_HOST_DEVICE float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  return __builtin_bit_cast(float, b);
#endif
}

DSCH_HOST_DEVICE uint64_t double_bits(double v) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(v));
#else
  return __builtin_bit_cast(uint64_t, v);
#endif
}

DSCH_HOST_DEVICE double bits_double(uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  return __builtin_bit_cast(double, b);
#endif
}

}  // namespace dsch_ext
