/* The C interface through the installed library, from a C compiler: a PEFT adapter folder is
 * not a bundle, and opening it says so with a status and a message naming it. */
#include <stdio.h>
#include <string.h>

#include "revmerge/revmerge.h"

int main(int argc, char** argv) {
  revmerge_bundle* bundle = NULL;
  revmerge_status status;
  if (argc != 2) return 2;
  status = revmerge_bundle_open(argv[1], &bundle);
  printf("c: revmerge %s, status %d: %s\n", revmerge_version(), (int)status, revmerge_last_error());
  revmerge_bundle_close(bundle);
  return status != REVMERGE_OK && bundle == NULL && strstr(revmerge_last_error(), argv[1]) ? 0 : 1;
}
