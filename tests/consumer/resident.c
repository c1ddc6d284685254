/* A serving loop through the installed C interface: two example adapters merged into a bundle,
 * the bundle opened resident on the CPU, every task rebuilt into the program's own buffers in one
 * call, and each module compared bit for bit with revmerge_revert_module. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "revmerge/revmerge.h"

static int fail(const char* what) {
  printf("c resident: %s failed: %s\n", what, revmerge_last_error());
  return 1;
}

int main(int argc, char** argv) {
  const char* adapters[2];
  revmerge_bundle* bundle = NULL;
  revmerge_device_bundle* resident = NULL;
  int64_t modules, m, task;
  void **a, **b;
  int equal = 1;
  if (argc != 4) return 2;
  adapters[0] = argv[1];
  adapters[1] = argv[2];
  if (revmerge_merge_rmm(adapters, NULL, 2, 1, argv[3], 1, REVMERGE_DEVICE_CPU) != REVMERGE_OK)
    return fail("merge");
  if (revmerge_bundle_open(argv[3], &bundle) != REVMERGE_OK) return fail("bundle_open");
  if (revmerge_device_bundle_open(argv[3], REVMERGE_DEVICE_CPU, &resident) != REVMERGE_OK)
    return fail("device_bundle_open");
  modules = revmerge_device_bundle_module_count(resident);
  a = calloc((size_t)modules, sizeof(void*));
  b = calloc((size_t)modules, sizeof(void*));
  for (m = 0; m < modules; ++m) {
    revmerge_module_info info;
    if (revmerge_device_bundle_module(resident, m, &info) != REVMERGE_OK) return fail("module");
    a[m] = malloc((size_t)(info.rank * info.in) * sizeof(float));
    b[m] = malloc((size_t)(info.out * info.rank) * sizeof(float));
  }
  for (task = 0; task < revmerge_device_bundle_task_count(resident); ++task) {
    if (revmerge_materialize(resident, task, NULL, 0, REVMERGE_DTYPE_F32, 1, a, b, NULL) != REVMERGE_OK)
      return fail("materialize");
    for (m = 0; m < modules; ++m) {
      revmerge_module_info info;
      size_t na, nb;
      float *ra, *rb;
      revmerge_device_bundle_module(resident, m, &info);
      na = (size_t)(info.rank * info.in);
      nb = (size_t)(info.out * info.rank);
      ra = malloc(na * sizeof(float));
      rb = malloc(nb * sizeof(float));
      if (revmerge_revert_module(bundle, m, task, REVMERGE_DEVICE_CPU, ra, rb) != REVMERGE_OK) return fail("revert");
      equal = equal && memcmp(ra, a[m], na * sizeof(float)) == 0 && memcmp(rb, b[m], nb * sizeof(float)) == 0;
      free(ra);
      free(rb);
    }
  }
  printf("c resident: %lld tasks x %lld modules materialized, %llu bytes resident, %s revert\n",
         (long long)revmerge_device_bundle_task_count(resident), (long long)modules,
         (unsigned long long)revmerge_device_bundle_memory(resident), equal ? "equal to" : "DIFFERENT FROM");
  for (m = 0; m < modules; ++m) free(a[m]), free(b[m]);
  free(a);
  free(b);
  revmerge_device_bundle_close(resident);
  revmerge_bundle_close(bundle);
  return equal ? 0 : 1;
}
