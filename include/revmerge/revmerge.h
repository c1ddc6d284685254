#ifndef REVMERGE_REVMERGE_H
#define REVMERGE_REVMERGE_H
/* The C interface, for programs that embed revmerge without C++: a serving stack that switches
 * tasks, a binding for another language. It merges PEFT adapters into an RMM bundle, opens a
 * bundle, lists its tasks and modules, rebuilds one task's LoRA factors of a module into the
 * caller's memory, writes a task as a PEFT adapter folder (the arithmetic of `revmerge merge`
 * and `revmerge revert`; the C++ API is revmerge/rmm.hpp), and keeps a bundle resident on a
 * device to rebuild any task into the caller's buffers (revmerge/resident.hpp).
 *
 * Every call that can fail returns a revmerge_status; revmerge_last_error() then gives the
 * message, naming the file, tensor, task or argument (per thread, until the thread's next failing
 * call). No C++ exception crosses this interface.
 *
 * An `overwrite` argument replaces an existing output folder once the new one is complete; an
 * output that is one of the call's inputs (an adapter, the bundle) or a folder holding one is
 * refused all the same (REVMERGE_USAGE_ERROR), and the inputs stay as they were. */
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum revmerge_status {
  REVMERGE_OK = 0,
  REVMERGE_USAGE_ERROR = 1,   /* an argument wrong by itself: null, out of range, unknown task */
  REVMERGE_IO_ERROR = 2,      /* an operating-system call failed (open, write, rename, ...) */
  REVMERGE_FORMAT_ERROR = 3,  /* a file breaks its format (safetensors, JSON, the bundle's) */
  REVMERGE_SHAPE_ERROR = 4,   /* tensors whose shapes do not fit together */
  REVMERGE_UNSUPPORTED = 5,   /* valid input revmerge does not handle */
  REVMERGE_DEVICE_ERROR = 6,  /* a GPU call failed, or a GPU was asked for and none is usable */
  REVMERGE_SOLVER_ERROR = 7,
  REVMERGE_INTERRUPTED = 8,   /* SIGINT / SIGTERM */
  REVMERGE_INTERNAL_ERROR = 9 /* anything else (out of memory, a bug) */
} revmerge_status;

/* Where to compute; passed as an int (any other value is a usage error). */
typedef enum revmerge_device {
  REVMERGE_DEVICE_AUTO = 0, /* a GPU when one is usable, else the CPU */
  REVMERGE_DEVICE_CPU = 1,
  REVMERGE_DEVICE_CUDA = 2
} revmerge_device;

typedef struct revmerge_bundle revmerge_bundle;
typedef struct revmerge_device_bundle revmerge_device_bundle;

/* The element type of rebuilt factors; passed as an int. */
typedef enum revmerge_dtype {
  REVMERGE_DTYPE_F32 = 0,
  REVMERGE_DTYPE_F16 = 1,
  REVMERGE_DTYPE_BF16 = 2
} revmerge_dtype;

typedef struct revmerge_module_info {
  const char* path; /* "model.layers.0.self_attn.q_proj"; valid while the bundle is open */
  int64_t layer;    /* decoder block, -1 outside the numbered blocks */
  int64_t in, out;  /* the base weight is out × in */
  int64_t rank;     /* of the rebuilt factors: A is rank × in, B is out × rank */
} revmerge_module_info;

/* "0.1.0". */
const char* revmerge_version(void);
/* The message of this thread's last failing call ("" when none failed). */
const char* revmerge_last_error(void);

/* Reversible Model Merging of the `n` PEFT adapter folders `adapters` (n ≥ 2) into a bundle
 * folder at `out_dir` with basis size `basis` (1 ≤ basis ≤ n − 1), f32, as `revmerge merge
 * --method rmm`: streamed under the default memory budget, nothing written on failure, an
 * existing folder refused unless `overwrite` is non-zero. `names` gives the tasks' names, or is
 * null for the adapters' folder names. */
revmerge_status revmerge_merge_rmm(const char* const* adapters, const char* const* names,
                                   int64_t n, int64_t basis, const char* out_dir, int overwrite,
                                   int device);

/* The budgeted store, as `revmerge merge --method auto --storage FRACTION` (or `--method rank`
 * when `truncations_only` is non-zero): a bundle of format version 2 storing at most `storage`
 * (0 < storage ≤ 1) of the numbers in all adapters, each module kept as RMM, as every task's
 * own truncation or in bases shared by the tasks, whichever serves it best (the mean task's
 * error lowest); stored in the inputs' dtype. Other arguments as
 * revmerge_merge_rmm. Bundles it writes open, list and revert with the functions below. */
revmerge_status revmerge_merge_auto(const char* const* adapters, const char* const* names,
                                    int64_t n, double storage, int truncations_only,
                                    const char* out_dir, int overwrite, int device);

/* Opens the bundle folder `dir` (manifest.json + bundle.safetensors, mapped, validated). */
revmerge_status revmerge_bundle_open(const char* dir, revmerge_bundle** bundle);
/* Closes it (null is allowed); the strings it gave out go with it. */
void revmerge_bundle_close(revmerge_bundle* bundle);

/* The tasks, in bundle order; a name is null for an index out of range. */
int64_t revmerge_bundle_task_count(const revmerge_bundle* bundle);
const char* revmerge_bundle_task_name(const revmerge_bundle* bundle, int64_t task);
/* The index of the task named `name`, or -1. */
int64_t revmerge_bundle_task_index(const revmerge_bundle* bundle, const char* name);

/* The merged modules, in bundle order. */
int64_t revmerge_bundle_module_count(const revmerge_bundle* bundle);
revmerge_status revmerge_bundle_module(const revmerge_bundle* bundle, int64_t module,
                                       revmerge_module_info* info);

/* Task `task`'s LoRA factors of module `module`, rebuilt (x̂ = μ + V c) with the scale folded
 * into B, so the task's weight delta is B A: A (rank × in) and B (out × rank), row-major f32,
 * written to the caller's host memory `a` and `b`. Each call sets up its compute backend: on
 * a GPU that costs more than rebuilding one module, so the CPU is the device for single
 * modules. */
revmerge_status revmerge_revert_module(const revmerge_bundle* bundle, int64_t module,
                                       int64_t task, int device, float* a, float* b);

/* Task `task` (by name) as a PEFT adapter folder at `out_dir` (f32, lora_alpha = r), as
 * `revmerge revert --task`; an existing folder is refused unless `overwrite` is non-zero, and
 * nothing is left behind on failure. */
revmerge_status revmerge_revert_task(const revmerge_bundle* bundle, const char* task,
                                     const char* out_dir, int overwrite, int device);

/* A bundle resident on a device, for serving: `dir` opened once onto `device`
 * (REVMERGE_DEVICE_CPU: host memory; _CUDA: the first GPU; _AUTO), every stored tensor
 * uploaded once and kept until revmerge_device_bundle_close. */
revmerge_status revmerge_device_bundle_open(const char* dir, int device, revmerge_device_bundle** bundle);
void revmerge_device_bundle_close(revmerge_device_bundle* bundle);
/* Its tasks and modules, as for revmerge_bundle; a module's info gives the sizes to allocate
 * (A: rank × in, B: out × rank elements). */
int64_t revmerge_device_bundle_task_count(const revmerge_device_bundle* bundle);
int64_t revmerge_device_bundle_task_index(const revmerge_device_bundle* bundle, const char* name);
int64_t revmerge_device_bundle_module_count(const revmerge_device_bundle* bundle);
revmerge_status revmerge_device_bundle_module(const revmerge_device_bundle* bundle, int64_t module,
                                              revmerge_module_info* info);
/* Bytes it holds on its device; non-zero when its buffers are host memory (the CPU). */
uint64_t revmerge_device_bundle_memory(const revmerge_device_bundle* bundle);
int revmerge_device_bundle_on_host(const revmerge_device_bundle* bundle);

/* Task `task`'s factors of the `count` modules `modules` (indices; count 0: every module, in
 * order) rebuilt into the caller's buffers: module modules[i]'s A (rank × in) into a[i] and B
 * (out × rank) into b[i], row-major, as `dtype` (a revmerge_dtype), in the device's memory (host
 * memory for the CPU), all modules in one launch, the same bits as revmerge_revert_module on the
 * device for F32. With `fold_scale` non-zero B carries the task's scale, as the bundle stores it
 * (the adapter of lora_alpha = rank that revert writes); with 0, B is divided by the task's scale
 * (alpha / r, or alpha / √r with rslora) before rounding, for a model that applies the task's own
 * scale — REVMERGE_UNSUPPORTED for a bundle written before revmerge recorded the scales. On
 * the CPU the call returns when the factors are written; on a GPU when the work is queued on
 * `stream` (a cudaStream_t; null: revmerge's own), so what the caller queues there next sees
 * them. Several threads may call at once (they take turns). */
revmerge_status revmerge_materialize(revmerge_device_bundle* bundle, int64_t task, const int64_t* modules,
                                     int64_t count, int dtype, int fold_scale, void* const* a,
                                     void* const* b, void* stream);

/* Task `task` (by name) as a PEFT adapter folder at `out_dir`, rebuilt from the resident tensors:
 * the folder revmerge_revert_task writes, byte for byte (f32; a path under /dev/shm keeps it in
 * memory for a server that loads folders). An existing folder is refused unless `overwrite` is
 * non-zero; nothing is left behind on failure. */
revmerge_status revmerge_device_bundle_save(revmerge_device_bundle* bundle, const char* task, const char* out_dir,
                                            int overwrite);

#ifdef __cplusplus
}
#endif

#endif /* REVMERGE_REVMERGE_H */
