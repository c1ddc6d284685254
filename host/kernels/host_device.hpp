#pragma once
// REVMERGE_HD marks functions compiled for the host and, under nvcc, for the device too.
// REVMERGE_HD_INLINE also inlines them into their caller, so a caller compiled for wider
// vectors (the CPU's target clones) compiles them for those too.
#ifdef __CUDACC__
#define REVMERGE_HD __host__ __device__
#define REVMERGE_HD_INLINE __host__ __device__ __forceinline__
#else
#define REVMERGE_HD
#define REVMERGE_HD_INLINE [[gnu::always_inline]] inline
#endif
