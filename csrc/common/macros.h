// Portability macros for arithmetic shared between host and device code.
#pragma once

#if defined(__CUDACC__)
#define DSCH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DSCH_HOST_DEVICE inline
#endif

// Loop unrolling hint understood by both nvcc and gcc.
#if defined(__CUDACC__)
#define DSCH_UNROLL _Pragma("unroll")
#else
#define DSCH_UNROLL _Pragma("GCC unroll 16")
#endif
