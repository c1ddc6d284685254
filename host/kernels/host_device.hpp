#pragma once
// REVMERGE_HD marks functions compiled for the host and, under nvcc, for the device too.
#ifdef __CUDACC__
#define REVMERGE_HD __host__ __device__
#else
#define REVMERGE_HD
#endif
