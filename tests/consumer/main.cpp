// Reads one tensor of a PEFT fixture through the installed library.
#include <cstdio>

#include "revmerge/peft.hpp"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const revmerge::PeftAdapter adapter(argv[1]);
  std::printf("modules=%zu scale=%g\n", adapter.modules().size(), adapter.modules().front().scale);
  return adapter.modules().empty() ? 1 : 0;
}
